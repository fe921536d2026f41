//! Reading a config source the way `uwsgi_open_and_read` does: plain files,
//! and the `scheme://` forms uWSGI registers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Limits, Origin};

/// The schemes uWSGI 2.0.21 registers (`uwsgi_setup_schemes`).
const SCHEMES: &[&str] = &[
    "emperor", "http", "data", "sym", "section", "fd", "exec", "call", "callint",
];

/// `uwsgi_check_scheme`: the scheme name if `s` starts with `name://`.
pub(crate) fn scheme_of(s: &str) -> Option<&'static str> {
    SCHEMES.iter().copied().find(|name| {
        s.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with("://"))
    })
}

/// Splits `name[:section]` like the readers do: at the last `:`, but for a
/// scheme only after its last `/` (so `exec://cmd` keeps its `://`).
pub(crate) fn split_section(spec: &str) -> (&str, Option<&str>) {
    let search_from = if scheme_of(spec).is_some() {
        spec.rfind('/').unwrap_or(0)
    } else {
        0
    };
    match spec[search_from..].rfind(':') {
        Some(i) => {
            let i = search_from + i;
            (&spec[..i], Some(&spec[i + 1..]))
        }
        None => (spec, None),
    }
}

/// A path relative to the context's working directory.
pub(crate) fn resolve(cwd: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    }
}

/// Opens the file at `path`; with `limits.files_only`, only a regular file
/// (checked before opening, so a FIFO is never opened and waited on).
pub(crate) fn open_file(path: &Path, limits: &Limits) -> std::io::Result<std::fs::File> {
    if limits.files_only && !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (only files are read here)",
        ));
    }
    std::fs::File::open(path)
}

/// Reads at most `limit` bytes: `None` when there is more.
pub(crate) fn read_limited(mut r: impl Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    r.by_ref().take(limit as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > limit {
        return Ok(None);
    }
    Ok(Some(buf))
}

/// Reads `url` (a path or `scheme://...`), as uWSGI's `uwsgi_open_and_read`,
/// at most `limits.max_file_size` bytes; with `limits.files_only`, only
/// files.
pub(crate) fn read(
    url: &str,
    cwd: &Path,
    origin: &Origin,
    limits: &Limits,
) -> Result<Vec<u8>, Error> {
    let limit = limits.max_file_size;
    let too_large = || Error::TooLarge {
        what: format!("config source {url}"),
        origin: origin.clone(),
        limit,
    };
    let unsupported = |reason| Error::UnsupportedSource {
        source_name: url.to_string(),
        origin: origin.clone(),
        reason,
    };
    if url == "-" {
        return Err(unsupported(
            "reading the config from standard input is not supported",
        ));
    }
    let scheme = scheme_of(url);
    if limits.files_only && matches!(scheme, Some("exec" | "fd")) {
        return Err(unsupported(
            "only files are read here (exec:// and fd:// are turned off)",
        ));
    }
    match scheme {
        Some("exec") => {
            let cmd = &url["exec://".len()..];
            let exec_err = |source| Error::Exec {
                command: cmd.to_string(),
                origin: origin.clone(),
                source,
            };
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(cwd)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(exec_err)?;
            let out = child.stdout.take().expect("piped stdout");
            let data = read_limited(out, limit);
            // uWSGI ignores the exit status; reap the child either way
            if data.as_ref().map(|d| d.is_none()).unwrap_or(true) {
                let _ = child.kill();
            }
            let _ = child.wait();
            data.map_err(exec_err)?.ok_or_else(too_large)
        }
        Some("fd") => {
            // uWSGI: atoi(), so garbage is fd 0
            let n = atoi(&url["fd://".len()..]);
            let path = format!("/dev/fd/{n}");
            let f = std::fs::File::open(&path).map_err(|source| Error::Read {
                path: url.to_string(),
                origin: origin.clone(),
                source,
            })?;
            read_limited(f, limit)
                .map_err(|source| Error::Read {
                    path: url.to_string(),
                    origin: origin.clone(),
                    source,
                })?
                .ok_or_else(too_large)
        }
        Some("http") => Err(unsupported("loading config over HTTP needs the network; it is not supported")),
        Some("emperor") => Err(unsupported("emperor:// is only meaningful in a vassal")),
        Some(_) => Err(unsupported(
            "this scheme reads from the uWSGI binary (data://, sym://, section://, call://, callint://)",
        )),
        None => {
            let f = open_file(&resolve(cwd, url), limits).map_err(|source| Error::Read {
                path: url.to_string(),
                origin: origin.clone(),
                source,
            })?;
            read_limited(f, limit)
                .map_err(|source| Error::Read {
                    path: url.to_string(),
                    origin: origin.clone(),
                    source,
                })?
                .ok_or_else(too_large)
        }
    }
}

/// C `atoi`: leading blanks, optional sign, digits; anything else stops.
pub(crate) fn atoi(s: &str) -> i64 {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i64 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.saturating_mul(10).saturating_add((b - b'0') as i64);
    }
    if neg {
        -n
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections() {
        assert_eq!(split_section("a.ini"), ("a.ini", None));
        assert_eq!(split_section("a.ini:x"), ("a.ini", Some("x")));
        assert_eq!(split_section(":x"), ("", Some("x")));
        assert_eq!(split_section("a.ini:"), ("a.ini", Some("")));
        assert_eq!(split_section("exec://echo a"), ("exec://echo a", None));
        assert_eq!(
            split_section("exec://cat /x/a.ini:s"),
            ("exec://cat /x/a.ini", Some("s"))
        );
    }

    #[test]
    fn atoi_like_c() {
        assert_eq!(atoi(" 12x"), 12);
        assert_eq!(atoi("-3"), -3);
        assert_eq!(atoi("x"), 0);
    }
}
