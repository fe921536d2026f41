//! What zoo:// and etcd:// share: one node or key per vassal, whose value is
//! the config text, optionally preceded by one `#!imperium` header line that
//! carries the uid, gid and on-demand socket.
//!
//! ```text
//! #!imperium uid=1000 gid=1000 socket=127.0.0.1:3031
//! [uwsgi]
//! module = app
//! ```
//!
//! The header is the whole first line when (and only when) the value starts
//! with `#!imperium` followed by a space, a tab or the end of the line. It
//! holds `key=value` words separated by blanks; the keys are `uid`, `gid`
//! (decimal, given together) and `socket` (empty means "no socket"). The
//! header line is removed before the config goes over the config pipe, so it
//! works the same for `.ini`, `.xml`, `.yaml` and `.json` configs.
//!
//! Why a header and not child znodes or sibling keys: one atomic write sets
//! config and owner together; the change key stays the node's own `mzxid`
//! (or the key's `mod_revision`), so a change of uid or socket reloads like
//! a change of config; a reader needs one read and one event per change; and
//! ZooKeeper and etcd get the same convention. See docs/monitors/zoo.md.

use crate::session::{mask_userinfo, Userinfo};
use emperor::{
    ChangeKey, MonitorError, MonitorOptions, NameError, NamePolicy, Owner, VassalName, VassalSpec,
};

/// The marker that starts a header line.
pub const HEADER_MARKER: &str = "#!imperium";

/// Why a record was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The value is not UTF-8.
    #[error("the value is not valid UTF-8 (config text must be UTF-8)")]
    NotUtf8,
    /// Nothing but blanks after the header.
    #[error("the config is empty (after the header line, if any)")]
    EmptyConfig,
    /// A header word without `=` (the word).
    #[error("header word {0:?} is not key=value")]
    NotKeyValue(String),
    /// A header key other than uid, gid, socket (the key).
    #[error("header key {0:?} is unknown (known keys: uid, gid, socket)")]
    UnknownKey(String),
    /// A header key given twice (the key).
    #[error("header key {0:?} is given twice")]
    Duplicate(String),
    #[error("header {key}={value:?} is not a decimal number from 0 to 4294967295")]
    /// uid or gid is not a number from 0 to 2^32-1.
    BadId {
        /// `uid` or `gid`.
        key: &'static str,
        /// The text given.
        value: String,
    },
    /// uid without gid or gid without uid (the one given, the one missing).
    #[error("header gives {0} without {1}: uid and gid go together")]
    HalfOwner(&'static str, &'static str),
}

/// A parsed value: the config text to send, and the header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The config text, header line removed.
    pub config: String,
    /// uid and gid, when the header gives them.
    pub owner: Option<Owner>,
    /// The on-demand socket, when the header gives a non-empty one.
    pub socket: Option<String>,
}

/// Parses a node's data or a key's value.
pub fn parse_value(value: &[u8]) -> Result<Record, RecordError> {
    let text = std::str::from_utf8(value).map_err(|_| RecordError::NotUtf8)?;
    let (header, config) = split_header(text);
    let mut uid = None;
    let mut gid = None;
    let mut socket: Option<String> = None;
    if let Some(header) = header {
        let mut seen_socket = false;
        for word in header.split([' ', '\t']).filter(|w| !w.is_empty()) {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| RecordError::NotKeyValue(word.to_string()))?;
            match key {
                "uid" => set_id(&mut uid, "uid", value)?,
                "gid" => set_id(&mut gid, "gid", value)?,
                "socket" => {
                    if seen_socket {
                        return Err(RecordError::Duplicate(key.to_string()));
                    }
                    seen_socket = true;
                    if !value.is_empty() {
                        socket = Some(value.to_string());
                    }
                }
                _ => return Err(RecordError::UnknownKey(key.to_string())),
            }
        }
    }
    let owner = match (uid, gid) {
        (Some(uid), Some(gid)) => Some(Owner { uid, gid }),
        (None, None) => None,
        (Some(_), None) => return Err(RecordError::HalfOwner("uid", "gid")),
        (None, Some(_)) => return Err(RecordError::HalfOwner("gid", "uid")),
    };
    if config.trim().is_empty() {
        return Err(RecordError::EmptyConfig);
    }
    Ok(Record {
        config: config.to_string(),
        owner,
        socket,
    })
}

/// Splits off the header line, if the text starts with one.
fn split_header(text: &str) -> (Option<&str>, &str) {
    let Some(after) = text.strip_prefix(HEADER_MARKER) else {
        return (None, text);
    };
    if !(after.is_empty() || after.starts_with([' ', '\t', '\n', '\r'])) {
        // `#!imperiumX`: not our marker, an ordinary first line
        return (None, text);
    }
    let (line, rest) = after.split_once('\n').unwrap_or((after, ""));
    (Some(line.trim_end_matches('\r')), rest)
}

fn set_id(slot: &mut Option<u32>, key: &'static str, value: &str) -> Result<(), RecordError> {
    if slot.is_some() {
        return Err(RecordError::Duplicate(key.to_string()));
    }
    let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    let id = ok.then(|| value.parse::<u32>().ok()).flatten();
    *slot = Some(id.ok_or_else(|| RecordError::BadId {
        key,
        value: value.to_string(),
    })?);
    Ok(())
}

/// What a child name (a znode name, or a key with the prefix removed) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameKind {
    /// A vassal.
    Vassal(VassalName),
    /// Not a vassal and not worth a warning (no config extension, a nested
    /// node or key).
    Ignored,
    /// Looks like a vassal but is refused; the reason is logged.
    Refused(String),
}

/// Classifies one child name. A name with a `/` is nested: refused when it
/// ends with a config extension (someone expected recursion), ignored
/// otherwise.
pub fn classify_name(name: &str, opts: &MonitorOptions) -> NameKind {
    if name.contains('/') {
        return if opts.extensions.accepts(name) {
            NameKind::Refused(
                "nested names are not vassals: only direct children of the watched path count"
                    .to_string(),
            )
        } else {
            NameKind::Ignored
        };
    }
    match VassalName::parse(name, &opts.extensions, NamePolicy::Plain) {
        Ok(n) => NameKind::Vassal(n),
        Err(NameError::BadExtension(_)) => NameKind::Ignored,
        Err(e) => NameKind::Refused(e.to_string()),
    }
}

/// Builds the spec of one vassal from its value, or says why not.
pub fn spec(name: VassalName, value: &[u8], stamp: i64) -> Result<VassalSpec, RecordError> {
    let rec = parse_value(value)?;
    let mut spec = VassalSpec::inline(name, rec.config, ChangeKey::Stamp(stamp as i128));
    spec.owner = rec.owner;
    spec.socket = rec.socket;
    Ok(spec)
}

/// Splits `user:password@rest` off a URL body. The user part ends at the
/// last `@` before the first `/`.
pub fn split_userinfo(rest: &str) -> (Option<(String, String)>, &str) {
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let info = &rest[..at];
            let (user, pass) = info.split_once(':').unwrap_or((info, ""));
            (Some((user.to_string(), pass.to_string())), &rest[at + 1..])
        }
        None => (None, rest),
    }
}

/// The URL with the password of its `user:password@` part replaced by `***`
/// (for error messages and logs).
pub fn redact_url(url: &str) -> String {
    mask_userinfo(url, Userinfo::KeepUser)
}

/// Adds `default_port` to each host of a comma-separated list that has none
/// (`[::1]` and `host` get one, `host:1` and `[::1]:1` do not).
pub fn hosts_with_port(list: &str, default_port: u16) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for h in list.split(',') {
        let h = h.trim();
        if h.is_empty() {
            return Err("empty host in the host list".to_string());
        }
        let has_port = match h.rfind(']') {
            Some(close) => h[close..].contains(':'),
            None => h.contains(':'),
        };
        if has_port {
            let port = &h[h.rfind(':').unwrap_or(0) + 1..];
            if port.parse::<u16>().is_err() {
                return Err(format!("bad port in {h:?}"));
            }
            out.push(h.to_string());
        } else {
            out.push(format!("{h}:{default_port}"));
        }
    }
    Ok(out)
}

/// What follows `scheme://` in a zoo:// or etcd:// URL,
/// `[user:password@]host:port[,host:port...]/path`, split.
#[derive(Debug)]
pub struct UrlParts<'a> {
    /// `user:password`, when given.
    pub auth: Option<(String, String)>,
    /// Each host with its port (`default_port` when it has none).
    pub hosts: Vec<String>,
    /// Everything from the first `/` on.
    pub path: &'a str,
}

/// The `BadUrl` error for `url` (the whole `--emperor` value), with its
/// password hidden.
pub fn bad_url(url: &str, reason: String) -> MonitorError {
    MonitorError::BadUrl {
        url: redact_url(url),
        reason,
    }
}

/// Splits `rest`, what follows `scheme://` in `url`, into its user info,
/// hosts and path; `no_path` is the reason given when there is no `/`.
pub fn split_url<'a>(
    url: &str,
    rest: &'a str,
    default_port: u16,
    no_path: &str,
) -> Result<UrlParts<'a>, MonitorError> {
    let (auth, rest) = split_userinfo(rest);
    let slash = rest
        .find('/')
        .ok_or_else(|| bad_url(url, no_path.to_string()))?;
    let (hosts, path) = rest.split_at(slash);
    let hosts = hosts_with_port(hosts, default_port).map_err(|r| bad_url(url, r))?;
    Ok(UrlParts { auth, hosts, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_value_is_the_config() {
        let r = parse_value(b"[uwsgi]\nmodule = app\n").unwrap();
        assert_eq!(r.config, "[uwsgi]\nmodule = app\n");
        assert_eq!(r.owner, None);
        assert_eq!(r.socket, None);
    }

    #[test]
    fn header_is_parsed_and_removed() {
        let r = parse_value(b"#!imperium uid=1000  gid=1001\tsocket=127.0.0.1:3031\r\n[uwsgi]\n")
            .unwrap();
        assert_eq!(r.config, "[uwsgi]\n");
        assert_eq!(
            r.owner,
            Some(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(r.socket.as_deref(), Some("127.0.0.1:3031"));
    }

    #[test]
    fn empty_socket_means_none_and_empty_header_is_fine() {
        let r = parse_value(b"#!imperium socket=\n<uwsgi/>").unwrap();
        assert_eq!(r.socket, None);
        assert_eq!(r.config, "<uwsgi/>");
        assert_eq!(parse_value(b"#!imperium\n{}").unwrap().config, "{}");
    }

    #[test]
    fn a_lookalike_first_line_is_config() {
        let r = parse_value(b"#!imperiumx uid=1\n[uwsgi]\n").unwrap();
        assert_eq!(r.config, "#!imperiumx uid=1\n[uwsgi]\n");
        let r = parse_value(b"# a comment\n[uwsgi]\n").unwrap();
        assert_eq!(r.owner, None);
    }

    #[test]
    fn bad_headers_are_refused_with_the_reason() {
        let e = |v: &[u8]| parse_value(v).unwrap_err();
        assert_eq!(
            e(b"#!imperium uid=x gid=1\n[uwsgi]\n"),
            RecordError::BadId {
                key: "uid",
                value: "x".into()
            }
        );
        assert_eq!(
            e(b"#!imperium uid=-1 gid=1\n[uwsgi]\n"),
            RecordError::BadId {
                key: "uid",
                value: "-1".into()
            }
        );
        assert_eq!(
            e(b"#!imperium uid=4294967296 gid=1\nx"),
            RecordError::BadId {
                key: "uid",
                value: "4294967296".into()
            }
        );
        assert_eq!(
            e(b"#!imperium uid=1\n[uwsgi]\n"),
            RecordError::HalfOwner("uid", "gid")
        );
        assert_eq!(
            e(b"#!imperium gid=1\n[uwsgi]\n"),
            RecordError::HalfOwner("gid", "uid")
        );
        assert_eq!(
            e(b"#!imperium user=1\n[uwsgi]\n"),
            RecordError::UnknownKey("user".into())
        );
        assert_eq!(
            e(b"#!imperium uid\n[uwsgi]\n"),
            RecordError::NotKeyValue("uid".into())
        );
        assert_eq!(
            e(b"#!imperium socket=a socket=b\nx"),
            RecordError::Duplicate("socket".into())
        );
        assert_eq!(
            e(b"#!imperium uid=1 uid=2 gid=1\nx"),
            RecordError::Duplicate("uid".into())
        );
        assert_eq!(e(b"#!imperium uid=1 gid=1\n"), RecordError::EmptyConfig);
        assert_eq!(e(b"  \n"), RecordError::EmptyConfig);
        assert_eq!(e(b"[uwsgi]\n\xff"), RecordError::NotUtf8);
    }

    #[test]
    fn names_are_classified() {
        let opts = MonitorOptions::default();
        assert!(matches!(classify_name("a.ini", &opts), NameKind::Vassal(_)));
        assert_eq!(classify_name("README", &opts), NameKind::Ignored);
        assert_eq!(classify_name("sub/x", &opts), NameKind::Ignored);
        assert!(matches!(
            classify_name("sub/a.ini", &opts),
            NameKind::Refused(_)
        ));
        assert!(matches!(
            classify_name("-x.ini", &opts),
            NameKind::Refused(_)
        ));
    }

    #[test]
    fn spec_carries_key_owner_socket() {
        let name = VassalName::parse("a.ini", &Default::default(), NamePolicy::Plain).unwrap();
        let s = spec(
            name,
            b"#!imperium uid=5 gid=6 socket=/tmp/a.sock\n[uwsgi]\n",
            42,
        )
        .unwrap();
        assert_eq!(s.key, ChangeKey::Stamp(42));
        assert_eq!(s.owner, Some(Owner { uid: 5, gid: 6 }));
        assert_eq!(s.socket.as_deref(), Some("/tmp/a.sock"));
        assert_eq!(s.config, emperor::ConfigSource::Inline("[uwsgi]\n".into()));
    }

    #[test]
    fn userinfo_and_ports() {
        assert_eq!(split_userinfo("h:1/p"), (None, "h:1/p"));
        assert_eq!(
            split_userinfo("u:p@ss@h:1/a@b"),
            (Some(("u".to_string(), "p@ss".to_string())), "h:1/a@b")
        );
        assert_eq!(
            hosts_with_port("a,b:1,[::1],[::1]:5", 9).unwrap(),
            vec!["a:9", "b:1", "[::1]:9", "[::1]:5"]
        );
        assert!(hosts_with_port("a,,b", 9).is_err());
        assert!(hosts_with_port("a:x", 9).is_err());
        assert_eq!(redact_url("zoo://u:pw@h/p"), "zoo://u:***@h/p");
        assert_eq!(redact_url("etcd://h/p@x"), "etcd://h/p@x");
    }
}
