//! uWSGI's option table, and what imperium does with each option an
//! emperor config can carry.
//!
//! Every option falls in one of three classes (docs/migrating.md lists
//! them all):
//! - [`Class::Imperium`]: the same meaning in imperium (a `clap` argument of
//!   [`crate::cli::Cli`]);
//! - [`Class::Ignored`]: meaningless for an emperor that runs no workers and
//!   no application: accepted, with one info line saying why;
//! - [`Class::Unsupported`]: refused at start-up, with why and what to use
//!   instead.
//!
//! An option in none of them behaves as uWSGI treats an unknown key: a
//! warning naming it and where it was set, and start-up goes on (`--strict`
//! makes it an error).

use std::collections::HashMap;
use std::sync::OnceLock;

/// Whether an option takes a value on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// A flag (`--master`).
    None,
    /// Always a value (`--emperor DIR`).
    Required,
    /// A value only in the `--name=value` form (`--chmod-socket`).
    Optional,
}

/// One row of uWSGI 2.0.21's option table.
#[derive(Debug, Clone, Copy)]
pub struct UwsgiOption {
    /// The long name.
    pub name: &'static str,
    /// Whether it takes a value.
    pub arity: Arity,
    /// Its one-letter form, if it has one.
    pub short: Option<char>,
}

const TABLE: &str = include_str!("uwsgi-2.0.21.tsv");

/// uWSGI 2.0.21's options (core, python and http plugins), by name.
pub fn uwsgi_options() -> &'static HashMap<&'static str, UwsgiOption> {
    static MAP: OnceLock<HashMap<&'static str, UwsgiOption>> = OnceLock::new();
    MAP.get_or_init(|| {
        TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let mut f = l.split('\t');
                let name = f.next()?;
                let arity = match f.next()? {
                    "no" => Arity::None,
                    "optional" => Arity::Optional,
                    _ => Arity::Required,
                };
                let short = f.next().and_then(|s| {
                    let mut c = s.chars();
                    match (c.next(), c.next()) {
                        (Some(ch), None) if ch != '0' => Some(ch),
                        _ => None,
                    }
                });
                Some((name, UwsgiOption { name, arity, short }))
            })
            .collect()
    })
}

/// The options uWSGI 2.0.21 runs while it parses (`UWSGI_OPT_IMMEDIATE`)
/// and that are not config language: their values are not expanded by
/// the placeholder passes.
const IMMEDIATE: &[&str] = &[
    "fallback-config",
    "stop",
    "reload",
    "pause",
    "suspend",
    "resume",
    "connect-and-read",
    "extract",
    "listen",
    "umask",
    "help",
    "usage",
    "print-sym",
    "print-symbol",
    "spooler-processes",
    "signal",
    "flock",
    "flock-wait",
    "flock2",
    "flock-wait2",
    "immediate-uid",
    "immediate-gid",
    "command-mode",
    "pcre-jit",
    "early-envdir",
    "plugins",
    "plugin",
    "need-plugins",
    "need-plugin",
    "plugins-dir",
    "plugin-dir",
    "autoload",
    "dlopen",
    "binary-append-data",
    "iprint",
    "exit",
    "cflags",
    "dot-h",
    "config-py",
    "build-plugin",
];

/// Whether uWSGI runs `name` while parsing (see [`IMMEDIATE`]).
pub fn is_immediate(name: &str) -> bool {
    IMMEDIATE.contains(&name)
}

/// What imperium does with an option that is not one of its own (those
/// have the same meaning as in uWSGI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Accepted and ignored, for the reason given.
    Ignored(&'static str),
    /// Refused, for the reason given (which says what to use instead).
    Unsupported(&'static str),
}

const NO_WORKERS: &str = "imperium runs no workers and no application: the emperor is the whole process (the option still works in a vassal's config)";
const NO_ORPHANS: &str = "imperium has no workers to orphan, and its vassals always die with it (PR_SET_PDEATHSIG=SIGKILL)";
const VACUUM: &str =
    "imperium always removes the UNIX sockets and pidfiles it created when it exits cleanly";
const VASSAL_SIDE: &str =
    "an option of a uWSGI instance run by an emperor (a vassal), not of the emperor";
const REQUEST_LOG: &str = "imperium serves no requests, so there is no request log";
const PYTHON: &str = "concerns the Python plugin, which only vassals load";
const STARTUP: &str = "a uWSGI start-up detail with no counterpart in imperium";

const SERVES: &str = "imperium is the emperor alone and serves no requests: move the socket and the application into a vassal config";
const APP: &str = "imperium loads no application: put it in a vassal config";
const PAUSE: &str = "SIGTSTP would stop the emperor itself: use `imperium ctl pause NAME` / `imperium ctl resume NAME`";
const MASTER_FIFO: &str = "use --emperor-control-socket and `imperium ctl` instead";
const CONFINE: &str = "imperium does not confine itself; vassals can be (--emperor-use-clone, --emperor-tyrant, or the vassal's own chroot/namespace options), and the emperor can be by its service manager (systemd's RootDirectory=, PrivateNetwork=, ...)";
const LOGGERS: &str = "imperium logs to stderr, or to a file with logto/daemonize: pipe stderr to logger(1) or let the service manager collect it";
const MASTER_FEATURE: &str = "a feature of uWSGI's master (for an application), which imperium does not have: run it in a vassal";
const DAEMONS: &str = "imperium runs vassals only: run the program as a vassal (any program that speaks the emperor protocol), or under its own service";
const HOOKS: &str = "uWSGI's generic hooks are not supported: use --vassals-start-hook / --vassals-stop-hook, or the service manager's ExecStartPre=";
const CGROUP: &str = "not supported: give the emperor a cgroup through its service manager (systemd's Slice=, MemoryMax=, ...)";
const TOUCH: &str = "not supported: imperium reacts to --touch-reload only (and to signals: HUP reloads every vassal)";
const CHROOT_DROP: &str =
    "not supported: imperium drops privileges once, after binding its sockets (uid, gid, cap)";

/// Exact names.
const NAMED: &[(&str, Class)] = &[
    ("master", Class::Ignored(NO_WORKERS)),
    ("workers", Class::Ignored(NO_WORKERS)),
    ("processes", Class::Ignored(NO_WORKERS)),
    ("threads", Class::Ignored(NO_WORKERS)),
    ("enable-threads", Class::Ignored(NO_WORKERS)),
    ("thunder-lock", Class::Ignored(NO_WORKERS)),
    ("lazy", Class::Ignored(NO_WORKERS)),
    ("lazy-apps", Class::Ignored(NO_WORKERS)),
    ("max-requests", Class::Ignored(NO_WORKERS)),
    ("reload-on-as", Class::Ignored(NO_WORKERS)),
    ("reload-on-rss", Class::Ignored(NO_WORKERS)),
    ("evil-reload-on-as", Class::Ignored(NO_WORKERS)),
    ("evil-reload-on-rss", Class::Ignored(NO_WORKERS)),
    ("limit-as", Class::Ignored(NO_WORKERS)),
    ("limit-post", Class::Ignored(NO_WORKERS)),
    ("buffer-size", Class::Ignored(NO_WORKERS)),
    ("post-buffering", Class::Ignored(NO_WORKERS)),
    ("single-interpreter", Class::Ignored(NO_WORKERS)),
    ("offload-threads", Class::Ignored(NO_WORKERS)),
    ("offload-thread", Class::Ignored(NO_WORKERS)),
    ("memory-report", Class::Ignored(NO_WORKERS)),
    ("need-app", Class::Ignored(NO_WORKERS)),
    ("no-default-app", Class::Ignored(NO_WORKERS)),
    ("autoload", Class::Ignored(NO_WORKERS)),
    ("vhost", Class::Ignored(NO_WORKERS)),
    ("vhost-host", Class::Ignored(NO_WORKERS)),
    ("auto-procname", Class::Ignored(NO_WORKERS)),
    ("procname", Class::Ignored(NO_WORKERS)),
    ("procname-prefix", Class::Ignored(NO_WORKERS)),
    ("procname-prefix-spaced", Class::Ignored(NO_WORKERS)),
    ("procname-append", Class::Ignored(NO_WORKERS)),
    ("procname-master", Class::Ignored(NO_WORKERS)),
    ("reaper", Class::Ignored(NO_WORKERS)),
    ("max-apps", Class::Ignored(NO_WORKERS)),
    ("max-vars", Class::Ignored(NO_WORKERS)),
    ("async", Class::Ignored(NO_WORKERS)),
    ("worker-reload-mercy", Class::Ignored(NO_WORKERS)),
    ("max-worker-lifetime", Class::Ignored(NO_WORKERS)),
    ("min-worker-lifetime", Class::Ignored(NO_WORKERS)),
    ("cpu-affinity", Class::Ignored(NO_WORKERS)),
    ("idle", Class::Ignored(NO_WORKERS)),
    ("die-on-idle", Class::Ignored(NO_WORKERS)),
    ("ksm", Class::Ignored(NO_WORKERS)),
    ("never-swap", Class::Ignored(NO_WORKERS)),
    ("disable-sendfile", Class::Ignored(NO_WORKERS)),
    ("catch-exceptions", Class::Ignored(NO_WORKERS)),
    ("touch-workers-reload", Class::Ignored(NO_WORKERS)),
    ("touch-chain-reload", Class::Ignored(NO_WORKERS)),
    ("no-orphans", Class::Ignored(NO_ORPHANS)),
    ("vacuum", Class::Ignored(VACUUM)),
    ("emperor-proxy-socket", Class::Ignored(VASSAL_SIDE)),
    ("vassal-sos", Class::Ignored(VASSAL_SIDE)),
    ("vassal-sos-backlog", Class::Ignored(VASSAL_SIDE)),
    ("heartbeat", Class::Ignored(VASSAL_SIDE)),
    ("hook-emperor-stop", Class::Ignored(VASSAL_SIDE)),
    ("hook-emperor-reload", Class::Ignored(VASSAL_SIDE)),
    ("hook-emperor-lost", Class::Ignored(VASSAL_SIDE)),
    ("disable-logging", Class::Ignored(REQUEST_LOG)),
    ("log-4xx", Class::Ignored(REQUEST_LOG)),
    ("log-5xx", Class::Ignored(REQUEST_LOG)),
    ("log-big", Class::Ignored(REQUEST_LOG)),
    ("log-slow", Class::Ignored(REQUEST_LOG)),
    ("log-zero", Class::Ignored(REQUEST_LOG)),
    ("log-sendfile", Class::Ignored(REQUEST_LOG)),
    ("log-ioerror", Class::Ignored(REQUEST_LOG)),
    ("log-micros", Class::Ignored(REQUEST_LOG)),
    ("log-x-forwarded-for", Class::Ignored(REQUEST_LOG)),
    ("logformat", Class::Ignored(REQUEST_LOG)),
    ("log-format", Class::Ignored(REQUEST_LOG)),
    ("logformat-strftime", Class::Ignored(REQUEST_LOG)),
    ("log-format-strftime", Class::Ignored(REQUEST_LOG)),
    ("home", Class::Ignored(PYTHON)),
    ("virtualenv", Class::Ignored(PYTHON)),
    ("venv", Class::Ignored(PYTHON)),
    ("pyhome", Class::Ignored(PYTHON)),
    ("pythonpath", Class::Ignored(PYTHON)),
    ("python-path", Class::Ignored(PYTHON)),
    ("pp", Class::Ignored(PYTHON)),
    ("optimize", Class::Ignored(PYTHON)),
    ("py-autoreload", Class::Ignored(PYTHON)),
    ("python-autoreload", Class::Ignored(PYTHON)),
    ("skip-zero", Class::Ignored(STARTUP)),
    ("skip-atexit", Class::Ignored(STARTUP)),
    ("skip-atexit-teardown", Class::Ignored(STARTUP)),
    ("pcre-jit", Class::Ignored(STARTUP)),
    ("clock", Class::Ignored(STARTUP)),
    ("show-config", Class::Ignored(STARTUP)),
    ("lock-engine", Class::Ignored(STARTUP)),
    ("use-abort", Class::Ignored(STARTUP)),
    ("socket", Class::Unsupported(SERVES)),
    ("uwsgi-socket", Class::Unsupported(SERVES)),
    ("suwsgi-socket", Class::Unsupported(SERVES)),
    ("puwsgi-socket", Class::Unsupported(SERVES)),
    ("http", Class::Unsupported(SERVES)),
    ("http-to", Class::Unsupported(SERVES)),
    ("https", Class::Unsupported(SERVES)),
    ("http-socket", Class::Unsupported(SERVES)),
    ("http11-socket", Class::Unsupported(SERVES)),
    ("https-socket", Class::Unsupported(SERVES)),
    ("fastcgi-socket", Class::Unsupported(SERVES)),
    ("fastcgi-nph-socket", Class::Unsupported(SERVES)),
    ("scgi-socket", Class::Unsupported(SERVES)),
    ("scgi-nph-socket", Class::Unsupported(SERVES)),
    ("raw-socket", Class::Unsupported(SERVES)),
    ("ssl-socket", Class::Unsupported(SERVES)),
    ("shared-socket", Class::Unsupported(SERVES)),
    ("undeferred-shared-socket", Class::Unsupported(SERVES)),
    ("zerg", Class::Unsupported(SERVES)),
    ("zerg-server", Class::Unsupported(SERVES)),
    ("udp", Class::Unsupported(SERVES)),
    ("module", Class::Unsupported(APP)),
    ("wsgi", Class::Unsupported(APP)),
    ("wsgi-file", Class::Unsupported(APP)),
    ("file", Class::Unsupported(APP)),
    ("callable", Class::Unsupported(APP)),
    ("mount", Class::Unsupported(APP)),
    ("eval", Class::Unsupported(APP)),
    ("pyrun", Class::Unsupported(APP)),
    ("master-fifo", Class::Unsupported(MASTER_FIFO)),
    ("pause", Class::Unsupported(PAUSE)),
    ("suspend", Class::Unsupported(PAUSE)),
    ("resume", Class::Unsupported(PAUSE)),
    ("chroot", Class::Unsupported(CONFINE)),
    ("pivot-root", Class::Unsupported(CONFINE)),
    ("pivot_root", Class::Unsupported(CONFINE)),
    ("namespace", Class::Unsupported(CONFINE)),
    ("ns", Class::Unsupported(CONFINE)),
    ("namespace-net", Class::Unsupported(CONFINE)),
    ("ns-net", Class::Unsupported(CONFINE)),
    ("unshare", Class::Unsupported(CONFINE)),
    ("unshare2", Class::Unsupported(CONFINE)),
    ("setns", Class::Unsupported(CONFINE)),
    ("jail", Class::Unsupported(CONFINE)),
    ("logger", Class::Unsupported(LOGGERS)),
    ("log-socket", Class::Unsupported(LOGGERS)),
    ("log-syslog", Class::Unsupported(LOGGERS)),
    ("log-master", Class::Unsupported(LOGGERS)),
    ("log-encoder", Class::Unsupported(LOGGERS)),
    ("log-route", Class::Unsupported(LOGGERS)),
    ("log-filter", Class::Unsupported(LOGGERS)),
    ("log-drain", Class::Unsupported(LOGGERS)),
    ("log-maxsize", Class::Unsupported(LOGGERS)),
    ("threaded-logger", Class::Unsupported(LOGGERS)),
    ("req-logger", Class::Unsupported(LOGGERS)),
    ("logger-req", Class::Unsupported(LOGGERS)),
    ("attach-daemon", Class::Unsupported(DAEMONS)),
    ("attach-daemon2", Class::Unsupported(DAEMONS)),
    ("attach-control-daemon", Class::Unsupported(DAEMONS)),
    ("smart-attach-daemon", Class::Unsupported(DAEMONS)),
    ("smart-attach-daemon2", Class::Unsupported(DAEMONS)),
    ("cgroup", Class::Unsupported(CGROUP)),
    ("cgroup-opt", Class::Unsupported(CGROUP)),
    ("cgroup-dir-mode", Class::Unsupported(CGROUP)),
    ("touch-exec", Class::Unsupported(TOUCH)),
    ("touch-signal", Class::Unsupported(TOUCH)),
    ("touch-logreopen", Class::Unsupported(TOUCH)),
    ("touch-logrotate", Class::Unsupported(TOUCH)),
    ("fs-reload", Class::Unsupported(TOUCH)),
    ("fs-brutal-reload", Class::Unsupported(TOUCH)),
    ("fs-signal", Class::Unsupported(TOUCH)),
    ("master-as-root", Class::Unsupported(CHROOT_DROP)),
    ("drop-after-init", Class::Unsupported(CHROOT_DROP)),
    ("drop-after-apps", Class::Unsupported(CHROOT_DROP)),
    ("immediate-uid", Class::Unsupported(CHROOT_DROP)),
    ("immediate-gid", Class::Unsupported(CHROOT_DROP)),
];

/// Name prefixes, for the families of options that share one answer.
const PREFIXES: &[(&str, Class)] = &[
    ("cheaper", Class::Ignored(NO_WORKERS)),
    ("harakiri", Class::Ignored(NO_WORKERS)),
    ("thread-stack", Class::Ignored(NO_WORKERS)),
    ("threads-stack", Class::Ignored(NO_WORKERS)),
    ("wsgi-", Class::Ignored(NO_WORKERS)),
    ("py-", Class::Ignored(PYTHON)),
    ("python-", Class::Ignored(PYTHON)),
    ("hook-", Class::Unsupported(HOOKS)),
    ("exec-", Class::Unsupported(HOOKS)),
    ("call-", Class::Unsupported(HOOKS)),
    ("mount-", Class::Unsupported(HOOKS)),
    ("umount-", Class::Unsupported(HOOKS)),
    ("legion", Class::Unsupported(MASTER_FEATURE)),
    ("cron", Class::Unsupported(MASTER_FEATURE)),
    ("unique-cron", Class::Unsupported(MASTER_FEATURE)),
    ("spooler", Class::Unsupported(MASTER_FEATURE)),
    ("mule", Class::Unsupported(MASTER_FEATURE)),
    ("cache", Class::Unsupported(MASTER_FEATURE)),
    ("route", Class::Unsupported(MASTER_FEATURE)),
    ("final-route", Class::Unsupported(MASTER_FEATURE)),
    ("error-route", Class::Unsupported(MASTER_FEATURE)),
    ("response-route", Class::Unsupported(MASTER_FEATURE)),
    ("static-", Class::Unsupported(MASTER_FEATURE)),
    ("ssl-", Class::Unsupported(MASTER_FEATURE)),
    ("subscribe", Class::Unsupported(MASTER_FEATURE)),
    ("subscription", Class::Unsupported(MASTER_FEATURE)),
    ("alarm", Class::Unsupported(MASTER_FEATURE)),
    ("metric", Class::Unsupported(MASTER_FEATURE)),
    ("stats-push", Class::Unsupported(MASTER_FEATURE)),
    ("signal", Class::Unsupported(MASTER_FEATURE)),
    ("timer", Class::Unsupported(MASTER_FEATURE)),
    ("rbtimer", Class::Unsupported(MASTER_FEATURE)),
    ("sharedarea", Class::Unsupported(MASTER_FEATURE)),
    ("queue", Class::Unsupported(MASTER_FEATURE)),
    ("snmp", Class::Unsupported(MASTER_FEATURE)),
    ("websocket", Class::Unsupported(MASTER_FEATURE)),
];

/// The class of `name` when it is not an imperium option itself (the
/// caller looks those up in the command-line table first).
pub fn classify(name: &str) -> Option<Class> {
    if let Some((_, c)) = NAMED.iter().find(|(n, _)| *n == name) {
        return Some(*c);
    }
    PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, c)| *c)
}

/// Every option named in the classification, with its class (prefix
/// families are shown as `prefix*`).
pub fn classified() -> impl Iterator<Item = (String, Class)> {
    NAMED
        .iter()
        .map(|(n, c)| (n.to_string(), *c))
        .chain(PREFIXES.iter().map(|(p, c)| (format!("{p}*"), *c)))
}

/// The end of `imperium --help`: the uWSGI options imperium accepts and
/// ignores, and those it refuses (docs/migrating.md says why for each).
pub fn help_text() -> String {
    let mut ignored = Vec::new();
    let mut refused = Vec::new();
    for (n, c) in classified() {
        match c {
            Class::Ignored(_) => ignored.push(n),
            Class::Unsupported(_) => refused.push(n),
        }
    }
    let wrap = |names: Vec<String>| {
        let mut out = String::new();
        let mut line = String::from("  ");
        for n in names {
            if line.len() + n.len() > 96 {
                out.push_str(line.trim_end());
                out.push('\n');
                line = String::from("  ");
            }
            line.push_str(&n);
            line.push(' ');
        }
        out.push_str(line.trim_end());
        out
    };
    format!(
        "uWSGI options accepted and ignored, with one info line at start-up (meaningless for an emperor that runs no workers and no application):\n{}\n\nuWSGI options refused at start-up, with why and what to use instead:\n{}\n\nAny other option in a config file is ignored with a warning naming the file and line, as uWSGI ignores unknown keys; --strict makes it an error. docs/migrating.md explains each class.",
        wrap(ignored),
        wrap(refused)
    )
}

/// What a `--plugin` name is to imperium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// An emperor plugin: the monitor scheme it provides.
    Emperor(&'static str),
    /// Another uWSGI plugin (a language, a router, a logger): it concerns
    /// vassals.
    Other,
    /// Not a uWSGI plugin.
    Unknown,
}

/// uWSGI 2.0.21's plugins (the directories of its plugins/ tree), and the
/// names distributions build them under (`python3`, `python311`, ...).
const PLUGINS: &[&str] = &[
    "airbrake",
    "alarm_curl",
    "alarm_speech",
    "alarm_xmpp",
    "asyncio",
    "cache",
    "carbon",
    "cgi",
    "cheaper_backlog2",
    "cheaper_busyness",
    "clock_monotonic",
    "clock_realtime",
    "corerouter",
    "coroae",
    "cplusplus",
    "curl_cron",
    "dumbloop",
    "dummy",
    "echo",
    "example",
    "exception_log",
    "fastrouter",
    "fiber",
    "forkptyrouter",
    "gccgo",
    "geoip",
    "gevent",
    "glusterfs",
    "graylog2",
    "greenlet",
    "gridfs",
    "http",
    "jvm",
    "jwsgi",
    "ldap",
    "legion_cache_fetch",
    "libffi",
    "libtcc",
    "logcrypto",
    "logfile",
    "logpipe",
    "logsocket",
    "logzmq",
    "lua",
    "matheval",
    "mongodb",
    "mongodblog",
    "mongrel2",
    "mono",
    "msgpack",
    "nagios",
    "notfound",
    "objc_gc",
    "pam",
    "php",
    "ping",
    "psgi",
    "pty",
    "pypy",
    "python",
    "pyuwsgi",
    "rack",
    "rados",
    "rawrouter",
    "rbthreads",
    "redislog",
    "ring",
    "router_access",
    "router_basicauth",
    "router_cache",
    "router_expires",
    "router_hash",
    "router_http",
    "router_memcached",
    "router_metrics",
    "router_radius",
    "router_redirect",
    "router_redis",
    "router_rewrite",
    "router_spnego",
    "router_static",
    "router_uwsgi",
    "router_xmldir",
    "rpc",
    "rrdtool",
    "rsyslog",
    "ruby19",
    "servlet",
    "signal",
    "spooler",
    "sqlite3",
    "ssi",
    "sslrouter",
    "stackless",
    "stats_pusher_file",
    "stats_pusher_mongodb",
    "stats_pusher_socket",
    "stats_pusher_statsd",
    "symcall",
    "syslog",
    "systemd_logger",
    "tornado",
    "transformation_chunked",
    "transformation_gzip",
    "transformation_offload",
    "transformation_template",
    "transformation_tofile",
    "transformation_toupper",
    "tuntap",
    "ugreen",
    "v8",
    "webdav",
    "xattr",
    "xslt",
    "zabbix",
    "zergpool",
];

/// Classifies a plugin name (without path, `_plugin` or `.so`).
pub fn plugin_class(name: &str) -> Plugin {
    match name {
        "emperor_pg" => return Plugin::Emperor("pg"),
        "emperor_mongodb" => return Plugin::Emperor("mongodb"),
        "emperor_amqp" => return Plugin::Emperor("amqp"),
        "emperor_zeromq" => return Plugin::Emperor("zmq"),
        _ => {}
    }
    // versioned builds: python3, python311, ruby30, php81, lua51, ...
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if PLUGINS.contains(&name)
        || ["python", "ruby", "php", "lua", "psgi", "rack", "pypy"].contains(&stem)
    {
        Plugin::Other
    } else {
        Plugin::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn table_has_uwsgi_options_with_their_arity_and_short_forms() {
        let t = uwsgi_options();
        assert!(t.len() > 800, "{}", t.len());
        let m = t["master"];
        assert_eq!((m.arity, m.short), (Arity::None, Some('M')));
        let d = t["daemonize"];
        assert_eq!((d.arity, d.short), (Arity::Required, Some('d')));
        assert_eq!(t["chmod-socket"].arity, Arity::Optional);
        assert_eq!(t["emperor"].short, None);
        assert_eq!(t["module"].short, Some('w'));
    }

    #[test]
    fn classes_of_common_emperor_config_keys() {
        assert!(matches!(classify("master"), Some(Class::Ignored(_))));
        assert!(matches!(classify("no-orphans"), Some(Class::Ignored(_))));
        assert!(matches!(
            classify("harakiri-verbose"),
            Some(Class::Ignored(_))
        ));
        assert!(matches!(classify("socket"), Some(Class::Unsupported(_))));
        assert!(matches!(
            classify("hook-as-root"),
            Some(Class::Unsupported(_))
        ));
        assert_eq!(classify("emperor-frobnicate"), None);
    }

    #[test]
    fn plugin_names() {
        assert_eq!(plugin_class("emperor_pg"), Plugin::Emperor("pg"));
        assert_eq!(plugin_class("emperor_zeromq"), Plugin::Emperor("zmq"));
        assert_eq!(plugin_class("python3"), Plugin::Other);
        assert_eq!(plugin_class("python311"), Plugin::Other);
        assert_eq!(plugin_class("router_static"), Plugin::Other);
        assert_eq!(plugin_class("frobnicator"), Plugin::Unknown);
    }

    #[test]
    fn docs_list_every_classified_option() {
        let doc = include_str!("../../../../docs/migrating.md");
        for (n, _) in classified() {
            assert!(
                doc.contains(&format!("`{n}`")),
                "docs/migrating.md does not list {n}"
            );
        }
        let cli = crate::cli::Cli::command();
        let options = include_str!("../../../../docs/options.md");
        for a in cli.get_arguments() {
            if let Some(l) = a.get_long() {
                if l == "help" || l == "version" {
                    continue;
                }
                assert!(
                    options.contains(&format!("--{l}")),
                    "docs/options.md does not list --{l}"
                );
            }
        }
    }

    #[test]
    fn every_classified_name_is_a_uwsgi_option_or_family() {
        let t = uwsgi_options();
        for (n, _) in NAMED {
            assert!(t.contains_key(n), "{n} is not in uWSGI 2.0.21's table");
        }
        for (p, _) in PREFIXES {
            assert!(
                t.keys().any(|k| k.starts_with(p)),
                "no uWSGI option starts with {p}"
            );
        }
    }
}
