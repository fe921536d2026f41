//! The vassal's argv and environment, built exactly as uWSGI builds them
//! (docs/protocol.md: argv and environment).

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::name::Extensions;
use crate::spec::ConfigSource;

/// How vassals are launched (the `--binary-path`, `--emperor-wrapper*` and
/// `--vassal*` options).
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// `--binary-path`: the vassal program (default `uwsgi`, from PATH).
    pub binary: OsString,
    /// `--emperor-wrapper`: replaces argv\[0\] and the program.
    pub wrapper: Option<OsString>,
    /// `--emperor-wrapper-override`: programs tried before the binary.
    pub wrapper_override: Vec<OsString>,
    /// `--emperor-wrapper-fallback`: programs tried when the binary fails.
    pub wrapper_fallback: Vec<OsString>,
    /// Accepted extensions (the config flag depends on them).
    pub extensions: Extensions,
    /// `--vassal-set K=V`, in order.
    pub set: Vec<String>,
    /// `--vassals-inherit-before`.
    pub inherit_before: Vec<String>,
    /// `--vassals-include-before`.
    pub include_before: Vec<String>,
    /// `--vassals-inherit`.
    pub inherit: Vec<String>,
    /// `--vassals-include`.
    pub include: Vec<String>,
    /// `--emperor-magic-exec`.
    pub magic_exec: bool,
    /// `--emperor-tyrant-initgroups`: a tyrant vassal gets its owner's
    /// supplementary groups (initgroups) instead of none.
    pub tyrant_initgroups: bool,
    /// `--emperor-use-clone`, `--emperor-cap`, `--safe-fd`.
    pub confine: std::sync::Arc<crate::spawn::Confinement>,
    /// `--vassals-start-hook`: run `HOOK NAME` before each vassal starts.
    pub start_hook: Option<OsString>,
    /// `--vassals-stop-hook`: run `HOOK NAME` once a vassal is gone.
    pub stop_hook: Option<OsString>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            binary: OsString::from("uwsgi"),
            wrapper: None,
            wrapper_override: Vec::new(),
            wrapper_fallback: Vec::new(),
            extensions: Extensions::default(),
            set: Vec::new(),
            inherit_before: Vec::new(),
            include_before: Vec::new(),
            inherit: Vec::new(),
            include: Vec::new(),
            magic_exec: false,
            tyrant_initgroups: false,
            confine: Default::default(),
            start_hook: None,
            stop_hook: None,
        }
    }
}

impl LaunchOptions {
    /// argv\[0\]: the wrapper if set, else the binary.
    pub fn argv0(&self) -> &OsStr {
        self.wrapper.as_deref().unwrap_or(&self.binary)
    }

    /// The programs to try in order: overrides, argv\[0\], fallbacks.
    pub fn programs(&self) -> Vec<OsString> {
        let mut v = self.wrapper_override.clone();
        v.push(self.argv0().to_os_string());
        v.extend(self.wrapper_fallback.iter().cloned());
        v
    }
}

/// The config reference after the flag: the file name, `emperor://NAME`,
/// `exec://FILE` or a URL.
pub fn config_ref(name: &str, config: &ConfigSource, magic_exec_ok: bool) -> OsString {
    match config {
        ConfigSource::Inline(_) => OsString::from(format!("emperor://{name}")),
        ConfigSource::File(path) if magic_exec_ok => {
            let mut s = OsString::from("exec://");
            s.push(path);
            s
        }
        ConfigSource::File(path) => path.clone().into_os_string(),
        ConfigSource::Url(url) => OsString::from(url),
    }
}

/// The full argv for vassal `name` (argv\[0\] included).
///
/// `magic_exec_ok` is true when `--emperor-magic-exec` is on and the config
/// file is readable and executable (the caller checks the file).
///
/// ```
/// use emperor::argv::{build_argv, LaunchOptions};
/// use emperor::ConfigSource;
/// let mut o = LaunchOptions::default();
/// o.set.push("processes=8".into());
/// o.include.push("/etc/uwsgi/defaults.ini".into());
/// let argv = build_argv("app.ini", &ConfigSource::File("app.ini".into()), &o, false);
/// assert_eq!(argv, ["uwsgi", "--set", "processes=8", "--ini", "app.ini", "--include", "/etc/uwsgi/defaults.ini"]);
/// ```
pub fn build_argv(
    name: &str,
    config: &ConfigSource,
    opts: &LaunchOptions,
    magic_exec_ok: bool,
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![opts.argv0().to_os_string()];
    let pairs = |flag: &str, values: &[String], argv: &mut Vec<OsString>| {
        for v in values {
            argv.push(flag.into());
            argv.push(v.into());
        }
    };
    pairs("--inherit", &opts.inherit_before, &mut argv);
    pairs("--include", &opts.include_before, &mut argv);
    pairs("--set", &opts.set, &mut argv);
    argv.push(opts.extensions.config_flag(name).into());
    argv.push(config_ref(name, config, magic_exec_ok && opts.magic_exec));
    pairs("--inherit", &opts.inherit, &mut argv);
    pairs("--include", &opts.include, &mut argv);
    argv
}

/// Variables the emperor never passes on as they are.
const DROPPED: &[&str] = &[
    "UWSGI_RELOADS",
    "NOTIFY_SOCKET",
    "UWSGI_EMPEROR_FD",
    "UWSGI_EMPEROR_FD_CONFIG",
    "UWSGI_BROODLORD_NUM",
];

/// The vassal's environment from the emperor's `base` environment:
/// `UWSGI_RELOADS` and `NOTIFY_SOCKET` removed, `UWSGI_VASSAL_X=v` renamed
/// to `UWSGI_X=v`, and `UWSGI_EMPEROR_FD` (plus `UWSGI_EMPEROR_FD_CONFIG`
/// and `UWSGI_BROODLORD_NUM` when given) set.
pub fn build_env(
    base: &[(OsString, OsString)],
    ctrl_fd: i32,
    config_fd: Option<i32>,
    broodlord_num: Option<u64>,
) -> Vec<(Cow<'_, OsStr>, Cow<'_, OsStr>)> {
    // borrowed from `base` where unchanged: this runs once per spawn
    let mut out: Vec<(Cow<'_, OsStr>, Cow<'_, OsStr>)> = Vec::with_capacity(base.len() + 3);
    let mut renamed: Vec<(Cow<'_, OsStr>, Cow<'_, OsStr>)> = Vec::new();
    for (k, v) in base {
        let kb = k.as_bytes();
        if DROPPED.iter().any(|d| d.as_bytes() == kb) {
            continue;
        }
        if let Some(rest) = kb.strip_prefix(b"UWSGI_VASSAL_") {
            if !rest.is_empty() {
                let mut nk = b"UWSGI_".to_vec();
                nk.extend_from_slice(rest);
                renamed.push((Cow::Owned(OsString::from_vec(nk)), Cow::Borrowed(v)));
            }
            continue;
        }
        out.push((Cow::Borrowed(k), Cow::Borrowed(v)));
    }
    // a renamed variable wins over one of the same name (uWSGI uses setenv)
    for (k, v) in renamed {
        out.retain(|(ok, _)| ok != &k);
        out.push((k, v));
    }
    let owned = |k: &str, v: String| (Cow::Owned(k.into()), Cow::Owned(v.into()));
    out.push(owned("UWSGI_EMPEROR_FD", ctrl_fd.to_string()));
    if let Some(fd) = config_fd {
        out.push(owned("UWSGI_EMPEROR_FD_CONFIG", fd.to_string()));
    }
    if let Some(n) = broodlord_num {
        out.push(owned("UWSGI_BROODLORD_NUM", n.to_string()));
    }
    out
}

/// The environment of a config check (`--emperor-reload-mode checked`):
/// the vassal's, without the emperor's descriptors (the throwaway start
/// runs on its own, as uWSGI started by hand).
pub fn check_env(base: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    build_env(base, -1, None, None)
        .into_iter()
        .filter(|(k, _)| &**k != OsStr::new("UWSGI_EMPEROR_FD"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[OsString]) -> Vec<String> {
        v.iter().map(|x| x.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn ordering_of_set_include_inherit() {
        let o = LaunchOptions {
            binary: "/usr/bin/uwsgi".into(),
            set: vec!["a=1".into(), "b=2".into()],
            inherit_before: vec!["ib.ini".into()],
            include_before: vec!["cb.ini".into()],
            inherit: vec!["ia.ini".into()],
            include: vec!["ca.ini".into()],
            ..Default::default()
        };
        let argv = build_argv("x.xml", &ConfigSource::File("x.xml".into()), &o, false);
        assert_eq!(
            s(&argv),
            [
                "/usr/bin/uwsgi",
                "--inherit",
                "ib.ini",
                "--include",
                "cb.ini",
                "--set",
                "a=1",
                "--set",
                "b=2",
                "--xml",
                "x.xml",
                "--inherit",
                "ia.ini",
                "--include",
                "ca.ini"
            ]
        );
    }

    #[test]
    fn inline_config_uses_emperor_scheme_even_with_magic_exec() {
        let o = LaunchOptions {
            magic_exec: true,
            ..Default::default()
        };
        let argv = build_argv("db.ini", &ConfigSource::Inline("[uwsgi]".into()), &o, true);
        assert_eq!(s(&argv), ["uwsgi", "--ini", "emperor://db.ini"]);
    }

    #[test]
    fn magic_exec_and_url_and_wrapper() {
        let o = LaunchOptions {
            magic_exec: true,
            wrapper: Some("/usr/local/bin/wrap".into()),
            ..Default::default()
        };
        let argv = build_argv("a.ini", &ConfigSource::File("a.ini".into()), &o, true);
        assert_eq!(s(&argv), ["/usr/local/bin/wrap", "--ini", "exec://a.ini"]);
        let argv = build_argv("a.ini", &ConfigSource::File("a.ini".into()), &o, false);
        assert_eq!(s(&argv), ["/usr/local/bin/wrap", "--ini", "a.ini"]);
        let argv = build_argv(
            "http://127.0.0.1/a.ini",
            &ConfigSource::Url("http://127.0.0.1/a.ini".into()),
            &LaunchOptions::default(),
            false,
        );
        assert_eq!(s(&argv), ["uwsgi", "--ini", "http://127.0.0.1/a.ini"]);
    }

    #[test]
    fn zerg_name_uses_base_extension() {
        let argv = build_argv(
            "foo.yaml:zerg",
            &ConfigSource::File("foo.yaml:zerg".into()),
            &LaunchOptions::default(),
            false,
        );
        assert_eq!(s(&argv), ["uwsgi", "--yaml", "foo.yaml:zerg"]);
    }

    #[test]
    fn program_order_is_overrides_binary_fallbacks() {
        let o = LaunchOptions {
            binary: "b".into(),
            wrapper_override: vec!["o1".into(), "o2".into()],
            wrapper_fallback: vec!["f1".into()],
            ..Default::default()
        };
        assert_eq!(s(&o.programs()), ["o1", "o2", "b", "f1"]);
    }

    #[test]
    fn environment_rules() {
        let base: Vec<(OsString, OsString)> = [
            ("PATH", "/bin"),
            ("UWSGI_RELOADS", "3"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("UWSGI_VASSAL_SOCKET", "/tmp/x.sock"),
            ("UWSGI_SOCKET", "/tmp/old.sock"),
            ("UWSGI_EMPEROR_FD", "9"),
            ("UWSGI_PROCESSES", "4"),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
        let env = build_env(&base, 5, Some(6), None);
        let get = |k: &str| {
            env.iter()
                .find(|(ek, _)| **ek == *k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("PATH").as_deref(), Some("/bin"));
        assert_eq!(get("UWSGI_RELOADS"), None);
        assert_eq!(get("NOTIFY_SOCKET"), None);
        assert_eq!(get("UWSGI_VASSAL_SOCKET"), None);
        assert_eq!(get("UWSGI_SOCKET").as_deref(), Some("/tmp/x.sock"));
        assert_eq!(get("UWSGI_PROCESSES").as_deref(), Some("4"));
        assert_eq!(get("UWSGI_EMPEROR_FD").as_deref(), Some("5"));
        assert_eq!(get("UWSGI_EMPEROR_FD_CONFIG").as_deref(), Some("6"));
        assert_eq!(
            env.iter().filter(|(k, _)| **k == *"UWSGI_SOCKET").count(),
            1
        );
        assert_eq!(
            env.iter()
                .filter(|(k, _)| **k == *"UWSGI_EMPEROR_FD")
                .count(),
            1
        );
        let env = build_env(&base, 5, None, Some(7));
        assert!(!env.iter().any(|(k, _)| **k == *"UWSGI_EMPEROR_FD_CONFIG"));
        assert!(env
            .iter()
            .any(|(k, v)| **k == *"UWSGI_BROODLORD_NUM" && **v == *"7"));
    }
}
