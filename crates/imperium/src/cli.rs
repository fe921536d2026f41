//! The command line: uWSGI's option names and meanings, so that
//! `uwsgi --emperor ...` becomes `imperium --emperor ...`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, CommandFactory, Parser};

use crate::config::Setting;

/// imperium: a drop-in replacement for the uWSGI Emperor.
///
/// It watches config sources (one monitor per --emperor value) and keeps one
/// vassal process per config running, starting, gracefully reloading and
/// stopping vassals as configs appear, change and disappear. Vassals are
/// real uWSGI instances (uWSGI 2.0 gives a vassal a master of its own
/// accord) or any program that speaks the emperor protocol.
///
/// Options can also come from an ini file: `imperium --ini emperor.ini`
/// reads the [uwsgi] section (or `--ini file.ini:section`), one option per
/// line (`emperor = /etc/uwsgi/vassals`).
///
/// Signals: HUP reloads every vassal, INT/TERM/QUIT stop every vassal and
/// exit, URG clears the blacklist, USR1 logs the vassal table, WINCH rescans.
#[derive(Debug, Parser)]
#[command(
    name = "imperium",
    version,
    max_term_width = 100,
    args_override_self = true,
    args_conflicts_with_subcommands = true,
    after_long_help = crate::options::help_text()
)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "uWSGI's command line has that many flags"
)]
pub struct Cli {
    /// `imperium ctl ...`: steer a running emperor through its control socket.
    #[command(subcommand)]
    pub command: Option<Sub>,

    /// A config source (repeatable): dir://DIR, glob://PATTERN, a bare
    /// directory or glob pattern, pg://CONNINFO;QUERY, mongodb://...,
    /// amqp://HOST, zmq://ENDPOINT, zoo://HOST/PATH, ldap://HOST/DN,
    /// etcd://HOST/PREFIX. See docs/monitors.md.
    #[arg(long, value_name = "URL")]
    pub emperor: Vec<String>,

    /// Seconds between safety rescans / polls of every monitor.
    #[arg(long, value_name = "SECONDS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub emperor_freq: u64,

    /// Blacklist step in milliseconds: each further death of a vassal that
    /// never became loyal delays its respawn by this much more.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub emperor_throttle: u64,

    /// Blacklist cap in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 180_000)]
    pub emperor_max_throttle: u64,

    /// Never throttle respawns of non-loyal vassals.
    #[arg(long)]
    pub emperor_no_blacklist: bool,

    /// Seconds without a heartbeat (after the first) before a vassal is
    /// killed and respawned.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub emperor_required_heartbeat: u64,

    /// Seconds a vassal told to stop may take before it is SIGKILLed
    /// (repeated every as many seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub emperor_curse_tolerance: u64,

    /// Seconds to wait for vassals at shutdown before SIGKILL (0 = 30).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub reload_mercy: u64,

    /// Stop vassals gracefully (byte 2) instead of brutally (byte 0).
    #[arg(long)]
    pub emperor_graceful_shutdown: bool,

    /// The vassal program.
    #[arg(long, value_name = "PATH", default_value = "uwsgi")]
    pub binary_path: OsString,

    /// Run vassals through this program (it becomes argv[0]).
    #[arg(long, value_name = "PATH")]
    pub emperor_wrapper: Option<OsString>,

    /// Programs tried before the binary (repeatable).
    #[arg(long, value_name = "PATH")]
    pub emperor_wrapper_override: Vec<OsString>,

    /// Programs tried when the binary cannot be executed (repeatable).
    #[arg(long, value_name = "PATH")]
    pub emperor_wrapper_fallback: Vec<OsString>,

    /// Another accepted config extension, launched with --config (repeatable).
    #[arg(long, visible_alias = "emperor-extra-ext", value_name = "EXT")]
    pub emperor_extra_extension: Vec<String>,

    /// Pass `--set KEY=VALUE` to every vassal (repeatable).
    #[arg(long, visible_alias = "vassals-set", value_name = "KEY=VALUE")]
    pub vassal_set: Vec<String>,

    /// Pass `--include FILE` after the vassal config (repeatable).
    #[arg(long, value_name = "FILE")]
    pub vassals_include: Vec<String>,

    /// Pass `--inherit FILE` after the vassal config (repeatable).
    #[arg(long, value_name = "FILE")]
    pub vassals_inherit: Vec<String>,

    /// Pass `--include FILE` before the vassal config (repeatable).
    #[arg(long, value_name = "FILE")]
    pub vassals_include_before: Vec<String>,

    /// Pass `--inherit FILE` before the vassal config (repeatable).
    #[arg(long, value_name = "FILE")]
    pub vassals_inherit_before: Vec<String>,

    /// Use lstat: accept symlinked configs and watch the link's own mtime.
    #[arg(long)]
    pub emperor_nofollow: bool,

    /// Launch executable config files as exec://FILE.
    #[arg(long)]
    pub emperor_magic_exec: bool,

    /// Write the emperor's pid to this file (removed at a clean exit).
    #[arg(long, value_name = "FILE")]
    pub emperor_pidfile: Option<PathBuf>,

    /// The emperor's process name.
    #[arg(long, value_name = "NAME")]
    pub emperor_procname: Option<String>,

    /// Tyrant mode: run each vassal as the owner of its config file (dir,
    /// glob) or as the uid/gid its database or message gives. Privileges
    /// are dropped before exec; root-owned vassals are refused.
    #[arg(long)]
    pub emperor_tyrant: bool,

    /// Tyrant mode: take the owner of a symlinked config from the link
    /// itself (lstat), not from its target.
    #[arg(long)]
    pub emperor_tyrant_nofollow: bool,

    /// Tyrant mode: give vassals their owner's supplementary groups
    /// (initgroups) instead of none.
    #[arg(long)]
    pub emperor_tyrant_initgroups: bool,

    /// Tyrant mode: the lowest uid a vassal may run as (0 is never allowed).
    #[arg(long, value_name = "UID", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub emperor_tyrant_min_uid: u32,

    /// Tyrant mode: the lowest gid a vassal may run as (0 is never allowed).
    #[arg(long, value_name = "GID", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub emperor_tyrant_min_gid: u32,

    /// On demand: a config file NAME with a file NAME+EXT next to it is an
    /// on-demand vassal whose socket is the first line of that file.
    #[arg(long, visible_alias = "emperor-on-demand-ext", value_name = "EXT")]
    pub emperor_on_demand_extension: Option<String>,

    /// On demand: the socket of vassal NAME.EXT is DIR/NAME.socket.
    #[arg(long, visible_alias = "emperor-on-demand-dir", value_name = "DIR")]
    pub emperor_on_demand_directory: Option<PathBuf>,

    /// On demand: run `CMD NAME` through /bin/sh; the first line it prints is
    /// the socket (empty: not on demand).
    #[arg(long, value_name = "CMD")]
    pub emperor_on_demand_exec: Option<String>,

    /// On demand: the mode (octal) of UNIX on-demand sockets.
    #[arg(long, value_name = "MODE", default_value = "666", value_parser = parse_mode)]
    pub emperor_on_demand_socket_mode: u32,

    /// The listen backlog of on-demand sockets.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..))]
    pub listen: i32,

    /// Broodlord: the most zergs alive at once; a vassal's SOS (byte 30)
    /// adds a zerg NAME:zerg:N launched with the [zerg] section of its config.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub emperor_broodlord: usize,

    /// The LISTEN channel of pg:// monitors.
    #[arg(long, value_name = "CHANNEL", default_value = "imperium")]
    pub emperor_pg_channel: String,

    /// The DN ldap:// monitors bind as when their URL has no bindname=
    /// extension (anonymous when neither is given).
    #[arg(long, value_name = "DN")]
    pub emperor_ldap_binddn: Option<String>,

    /// A file holding the bind password of ldap:// monitors (one line).
    /// The environment variable IMPERIUM_LDAP_BINDPW is the alternative.
    /// The password is never logged.
    #[arg(long, value_name = "PATH")]
    pub emperor_ldap_bindpw_file: Option<PathBuf>,

    /// Print the monitors (URL schemes) built into this binary and exit.
    #[arg(long, visible_alias = "imperial-monitors-list", action = ArgAction::SetTrue)]
    pub imperial_monitor_list: bool,

    /// Log format: `human` or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,

    /// Where each vassal's stdout and stderr go: `inherit` (the emperor's
    /// own fds, as uWSGI), `prefix` (each line into the emperor's log,
    /// tagged with the vassal's name), `dir:DIR` (one file per vassal,
    /// DIR/<name>.log, rotated), `journal` (a journald stream per vassal,
    /// identifier = its name). See docs/logs.md.
    #[arg(long, value_name = "MODE", default_value = "inherit", value_parser = parse_vassal_logs)]
    pub vassal_logs: emperor::logs::LogMode,

    /// `--vassal-logs dir:`: rotate a vassal's file when it would grow past
    /// this size (bytes, or with a K, M or G suffix).
    #[arg(long, value_name = "SIZE", default_value = "10M", value_parser = parse_log_size)]
    pub vassal_logs_max_size: u64,

    /// `--vassal-logs dir:`: how many rotated files to keep per vassal
    /// (<name>.log.1 ... <name>.log.N; 0 keeps none).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub vassal_logs_keep: u32,

    /// A cgroup per vassal process, so that a stop kills everything the
    /// vassal started: `auto` (under the emperor's own cgroup of the
    /// unified hierarchy when it can be written; off, with one line saying
    /// why, otherwise), `off`, or a directory inside a cgroup2 mount. See
    /// docs/resources.md.
    #[arg(long, value_name = "auto|off|PATH", default_value = "auto", value_parser = parse_vassal_cgroup)]
    pub vassal_cgroup: emperor::cgroup::CgroupMode,

    /// The most memory each vassal process (with everything it starts) may
    /// use (bytes, or with a K, M or G suffix); over it, the kernel's OOM
    /// killer kills it, which is reported as such and respawned through
    /// the throttling. Needs cgroups (--vassal-cgroup). See
    /// docs/resources.md.
    #[arg(long, value_name = "SIZE", value_parser = parse_log_size)]
    pub vassal_memory_max: Option<u64>,

    /// Above this much memory (bytes, or with a K, M or G suffix) each
    /// vassal process (with everything it starts) is throttled and its
    /// memory reclaimed hard, but not killed: cgroup v2's `memory.high`.
    /// Needs cgroup v2's memory controller (cgroup v1 has no such limit: a
    /// start-up error there). See docs/resources.md.
    #[arg(long, value_name = "SIZE", value_parser = parse_log_size)]
    pub vassal_memory_high: Option<u64>,

    /// The most CPU each vassal process (with everything it starts) may
    /// use, in cores (`0.5` is half of one core, `2` two cores). Needs
    /// cgroups (--vassal-cgroup).
    #[arg(long, value_name = "CORES", value_parser = parse_cores)]
    pub vassal_cpu_max: Option<f64>,

    /// The most processes and threads each vassal process (with
    /// everything it starts) may have; a fork beyond it fails (EAGAIN).
    /// Needs cgroups (--vassal-cgroup).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub vassal_pids_max: Option<u64>,

    /// Tell systemd READY=1 only once every vassal of the initial scan
    /// serves (it said it accepts requests, byte 5, and passed its health
    /// check when it has one) or cannot without outside action (exiled,
    /// refused, stopped, on demand), instead of once each is spawned. A
    /// vassal that keeps crashing holds READY=1 back (until systemd's
    /// TimeoutStartSec).
    #[arg(long)]
    pub emperor_ready_wait: bool,

    /// Check the health of every vassal: http://HOST:PORT/PATH (a 2xx or
    /// 3xx answer is healthy), tcp://HOST:PORT or unix:PATH (a connection
    /// is healthy), exec:COMMAND (exit code 0 is healthy; run by /bin/sh
    /// in the vassal's directory). {name} is replaced by the vassal's name,
    /// {stem} by its name without the extension. A vassal that fails it
    /// --vassal-health-failures times in a row, after its grace period, is
    /// killed and respawned through the throttling. A vassal's own
    /// [imperium] section may set health = ... (or off). See docs/health.md.
    #[arg(long, value_name = "CHECK", value_parser = |v: &str| health_value("health", v))]
    pub vassal_health: Option<String>,

    /// Time between two health probes of a vassal [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = |v: &str| health_value("health-interval", v))]
    pub vassal_health_interval: Option<String>,

    /// How long one health probe may take [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = |v: &str| health_value("health-timeout", v))]
    pub vassal_health_timeout: Option<String>,

    /// Failed health probes in a row that restart a vassal [default: 3].
    #[arg(long, value_name = "N", value_parser = |v: &str| health_value("health-failures", v))]
    pub vassal_health_failures: Option<String>,

    /// After a start or a reload, failed probes do not count for this long
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = |v: &str| health_value("health-grace", v))]
    pub vassal_health_grace: Option<String>,

    /// How a changed config reaches a running vassal: inplace sends the
    /// reload at once (uWSGI's behaviour); checked first loads the new
    /// config with the vassal binary in a throwaway sandbox (and runs
    /// --emperor-reload-check), and a change that fails is rejected: the
    /// running instance keeps its config; swap starts a new instance beside
    /// the running one and stops the old one once the new one serves (for
    /// vassals on an on-demand socket, or with reuse-port). See
    /// docs/reloads.md.
    #[arg(long, value_name = "MODE", default_value = "inplace", value_parser = ["inplace", "checked", "swap"])]
    pub emperor_reload_mode: String,

    /// swap mode: how long the new instance may take to serve (byte 5 and
    /// its health check) before it is stopped and the change rejected
    /// [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = emperor::health::parse_duration)]
    pub emperor_swap_timeout: Option<std::time::Duration>,

    /// Spread the vassals over the emperors that share their sources: each
    /// vassal runs on --emperor-replicas of the members registered at
    /// etcd://HOST:PORT[,HOST:PORT...]/PREFIX (off: every emperor runs
    /// every vassal, as uWSGI's do). See docs/cluster.md.
    #[arg(long, value_name = "URL")]
    pub emperor_cluster: Option<String>,

    /// This emperor's name in the cluster, unique per emperor [default: the
    /// host name].
    #[arg(long, value_name = "NAME")]
    pub emperor_cluster_node: Option<String>,

    /// How many cluster members run each vassal (a vassal's `replicas` in
    /// its [imperium] section overrides it; `all` runs it everywhere)
    /// [default: 1].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub emperor_replicas: Option<u32>,

    /// The cluster lease time, in seconds: a member silent this long is
    /// presumed dead and its vassals move [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub emperor_cluster_ttl: Option<u64>,

    /// After a member left, how long no new claim is made (so a member that
    /// lost its lease finishes stopping its vassals first), in seconds
    /// [default: 2].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub emperor_cluster_claim_delay: Option<u64>,

    /// checked mode: run this command (by /bin/sh, in the vassal's
    /// directory) before the reload; an exit code other than 0 rejects the
    /// change. {name} is replaced by the vassal's name and {config} by the
    /// path of its new config (a file of its own for a config from a
    /// database or a message).
    #[arg(long, value_name = "COMMAND")]
    pub emperor_reload_check: Option<String>,

    /// checked mode: how long each check may take before the change is
    /// rejected [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = emperor::health::parse_duration)]
    pub emperor_reload_check_timeout: Option<std::time::Duration>,

    /// checked mode: do not load the new config in a sandbox (which needs
    /// root and a uWSGI vassal binary); only --emperor-reload-check runs.
    #[arg(long)]
    pub emperor_reload_check_no_sandbox: bool,

    /// Serve uWSGI's emperor stats JSON here: HOST:PORT (TCP, when it has a
    /// colon) or a UNIX socket path.
    #[arg(long, visible_aliases = ["emperor-stats-server", "stats", "stats-server"], value_name = "ADDR")]
    pub emperor_stats: Option<String>,

    /// Stats server: read an HTTP request and answer with HTTP headers.
    #[arg(long)]
    pub stats_http: bool,

    /// Stats server: compact JSON instead of tab-indented.
    #[arg(long)]
    pub stats_minified: bool,

    /// Seconds a stats, metrics or control client may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub socket_timeout: u64,

    /// Mode of the stats and metrics UNIX sockets, in octal (666 when given
    /// without a value; the umask applies when absent).
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "666", value_parser = parse_mode)]
    pub chmod_socket: Option<u32>,

    /// Serve Prometheus metrics (GET /metrics) here: HOST:PORT or a UNIX
    /// socket path. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub emperor_metrics: Option<String>,

    /// The control socket `imperium ctl` talks to (a UNIX socket path).
    #[arg(long, value_name = "PATH")]
    pub emperor_control_socket: Option<std::path::PathBuf>,

    /// Mode of the control socket file, in octal.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    pub emperor_control_socket_mode: u32,

    /// Also allow this uid on the control socket (root and the emperor's
    /// own uid always are; repeatable).
    #[arg(long, value_name = "UID")]
    pub emperor_control_allow_uid: Vec<u32>,

    /// Also allow peers whose primary gid is this one (repeatable).
    #[arg(long, value_name = "GID")]
    pub emperor_control_allow_gid: Vec<u32>,

    /// uWSGI 2.1's datagram command socket (UDP HOST:PORT, or a UNIX
    /// datagram socket path, mode 600): cmd=spawn|respawn|stop|log.
    #[arg(long, value_name = "ADDR")]
    pub emperor_command_socket: Option<String>,

    /// Drop the emperor's privileges to this user (a name or a uid) once it
    /// has bound its sockets and written its pidfile, as uWSGI does.
    /// Vassals inherit it, unless tyrant mode runs them as their owners.
    #[arg(long, value_name = "USER")]
    pub uid: Option<String>,

    /// Drop the emperor's group to this one (a name or a gid).
    #[arg(long, value_name = "GROUP")]
    pub gid: Option<String>,

    /// A supplementary group to keep after the drop (repeatable).
    #[arg(long, value_name = "GROUP")]
    pub add_gid: Vec<String>,

    /// Do not give the emperor the --uid user's supplementary groups.
    #[arg(long)]
    pub no_initgroups: bool,

    /// Capabilities the emperor keeps across the --uid drop (comma-separated,
    /// e.g. `setgid,setuid`, so that tyrant mode works from an unprivileged
    /// emperor). Vassals never inherit them.
    #[arg(long, value_name = "CAPS")]
    pub cap: Vec<String>,

    /// The capability bounding set of vassals (comma-separated): every other
    /// capability is dropped from it before exec.
    #[arg(long, visible_aliases = ["vassals-cap", "vassal-cap"], value_name = "CAPS")]
    pub emperor_cap: Vec<String>,

    /// Start vassals in new Linux namespaces: a comma-separated list of
    /// net, ipc, pid, uts, mount (ns, fs, mnt), user, sysvsem, io.
    #[arg(long, value_name = "FLAGS")]
    pub emperor_use_clone: Option<String>,

    /// Start the emperor before the privilege drop, as uWSGI's
    /// early-emperor does: --uid, --gid and --cap are then not applied.
    #[arg(long)]
    pub early_emperor: bool,

    /// Append the emperor's output (and the vassals', which inherit it) to
    /// this file, opened before the privilege drop.
    #[arg(long, value_name = "FILE")]
    pub logto: Option<PathBuf>,

    /// Like --logto, but opened after the privilege drop.
    #[arg(long, value_name = "FILE")]
    pub logto2: Option<PathBuf>,

    /// Run in the background (detached from the terminal), logging to FILE.
    #[arg(long, value_name = "FILE")]
    pub daemonize: Option<PathBuf>,

    /// Like --daemonize, but the log file is opened after the privilege drop.
    #[arg(long, value_name = "FILE")]
    pub daemonize2: Option<PathBuf>,

    /// Give the log file (--logto, --daemonize) to the --uid/--gid user.
    #[arg(long)]
    pub logfile_chown: bool,

    /// Truncate the log file at start-up instead of appending.
    #[arg(long)]
    pub log_truncate: bool,

    /// Prefix the emperor's log lines with the local date, uWSGI style
    /// (`Wed Dec  2 04:40:37 2026 - `), or with a strftime FORMAT.
    #[arg(long, visible_alias = "logdate", value_name = "FORMAT", num_args = 0..=1, default_missing_value = "")]
    pub log_date: Option<String>,

    /// Reopen the log file at every SIGHUP (for logrotate).
    #[arg(long)]
    pub log_reopen: bool,

    /// Write the emperor's pid here, before the privilege drop (removed at
    /// a clean exit when the emperor may still remove it: not from a
    /// root-owned directory after a --uid drop, as with uWSGI).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,

    /// Write the emperor's pid here, after the privilege drop.
    #[arg(long, value_name = "FILE")]
    pub pidfile2: Option<PathBuf>,

    /// Change to this directory after the privilege drop.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// The emperor's umask (octal), which vassals inherit.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub umask: Option<u32>,

    /// Set an environment variable (KEY=VALUE) for the emperor and its
    /// vassals (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Remove an environment variable before vassals start (repeatable).
    #[arg(long, value_name = "KEY")]
    pub unenv: Vec<String>,

    /// SIGTERM stops the emperor (imperium always does this; accepted for
    /// uWSGI configs, where it keeps a master from reloading on SIGTERM).
    #[arg(long)]
    pub die_on_term: bool,

    /// Restart the emperor when this file is touched: every vassal is
    /// stopped, and the emperor re-executes itself with the same command
    /// line, re-reading its config (repeatable).
    #[arg(long, value_name = "FILE")]
    pub touch_reload: Vec<PathBuf>,

    /// A uWSGI plugin to load (repeatable, comma-separated): the emperor
    /// plugins built into this binary are accepted, language plugins are
    /// accepted and ignored (they concern vassals), others are warned about.
    #[arg(long, visible_alias = "plugins", value_name = "NAMES")]
    pub plugin: Vec<String>,

    /// Run `COMMAND NAME` (no shell) before each vassal starts; its exit
    /// code is logged.
    #[arg(long, value_name = "COMMAND")]
    pub vassals_start_hook: Option<String>,

    /// Run `COMMAND NAME` (no shell) after a vassal is removed or at
    /// shutdown; its exit code is logged.
    #[arg(long, value_name = "COMMAND")]
    pub vassals_stop_hook: Option<String>,

    /// Keep this inherited file descriptor open in vassals (repeatable).
    #[arg(long, visible_alias = "fd-safe", value_name = "FD")]
    pub safe_fd: Vec<i32>,

    /// Bind the stats and metrics UNIX sockets in the abstract namespace
    /// (a path starting with `@` always is).
    #[arg(long)]
    pub abstract_socket: bool,

    /// Make every unknown or unsupported option an error instead of a
    /// warning.
    #[arg(long)]
    pub strict: bool,

    /// Send SIGINT (stop every vassal and exit) to the emperor whose pid is
    /// in PIDFILE, and exit (uWSGI's `--stop`, as in `ExecStop=`).
    #[arg(long, value_name = "PIDFILE")]
    pub stop: Option<PathBuf>,

    /// Send SIGHUP (reload every vassal) to the emperor whose pid is in
    /// PIDFILE, and exit (uWSGI's `--reload`, as in `ExecReload=`).
    #[arg(long, value_name = "PIDFILE")]
    pub reload: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Steer a running emperor through its control socket.
    Ctl(crate::ctl::CtlArgs),
    /// Print what an emperor with these options would do now, without doing it.
    ///
    /// `imperium plan --emperor ... [--emperor-control-socket PATH]` reads
    /// every source once and prints each spawn, reload, stop and refusal
    /// (with the reason) of the emperor on that control socket, or of a
    /// new one. Exit 0: nothing to do, 2: changes, 1: an error. See
    /// docs/plan.md.
    Plan {
        /// The emperor's options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        options: Vec<OsString>,
    },
}

fn parse_cores(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && c >= 0.01 => Ok(c),
        _ => Err(format!(
            "{v:?}: a number of cores of at least 0.01 (0.5 is half of one core)"
        )),
    }
}

fn parse_vassal_cgroup(v: &str) -> Result<emperor::cgroup::CgroupMode, String> {
    v.parse()
}

/// A value of a `--vassal-health*` option, checked as its `[imperium]`
/// key would be.
fn health_value(key: &str, v: &str) -> Result<String, String> {
    emperor::health::HealthSettings::default().set(key, v)?;
    Ok(v.to_string())
}

impl Cli {
    /// The emperor-wide health check settings.
    pub fn health(&self) -> emperor::health::HealthSettings {
        let mut h = emperor::health::HealthSettings::default();
        for (key, v) in [
            ("health", &self.vassal_health),
            ("health-interval", &self.vassal_health_interval),
            ("health-timeout", &self.vassal_health_timeout),
            ("health-failures", &self.vassal_health_failures),
            ("health-grace", &self.vassal_health_grace),
        ] {
            if let Some(v) = v {
                // checked when parsed
                let _ = h.set(key, v);
            }
        }
        h
    }
}

fn parse_vassal_logs(v: &str) -> Result<emperor::logs::LogMode, String> {
    v.parse()
}

fn parse_log_size(v: &str) -> Result<u64, String> {
    match emperor::logs::parse_size(v)? {
        0 => Err("the size must be above 0".into()),
        n => Ok(n),
    }
}

fn parse_mode(v: &str) -> Result<u32, String> {
    u32::from_str_radix(v.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{v:?} is not an octal file mode such as 666 or 660"))
}

/// Errors on the command line or in a config file.
#[derive(Debug, thiserror::Error)]
pub enum IniError {
    #[error(transparent)]
    Config(#[from] uwsgi_config::Error),
    #[error("{0:?}: unexpected argument after --emperor {1:?} (an unquoted glob pattern that the shell expanded gives several arguments: quote it, e.g. --emperor '/srv/*/uwsgi.ini')")]
    Positional(String, String),
}

/// imperium's options and uWSGI 2.0.21's, for the command line's arities,
/// one-letter forms and abbreviations.
struct Table {
    cmd: clap::Command,
    shorts: std::collections::HashMap<char, &'static str>,
    names: Vec<String>,
}

impl Table {
    fn new() -> Table {
        let cmd = Cli::command();
        // several uWSGI options share a letter (-p: processes, workers);
        // they are aliases, so any is right: take the first by name
        let mut shorts: std::collections::HashMap<char, &'static str> =
            std::collections::HashMap::new();
        for o in crate::options::uwsgi_options().values() {
            if let Some(c) = o.short {
                let e = shorts.entry(c).or_insert(o.name);
                if o.name < *e {
                    *e = o.name;
                }
            }
        }
        let mut names: Vec<String> = cmd
            .get_arguments()
            .flat_map(|a| {
                a.get_long()
                    .into_iter()
                    .chain(a.get_all_aliases().into_iter().flatten())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut uwsgi: Vec<&str> = crate::options::uwsgi_options().keys().copied().collect();
        uwsgi.sort_unstable();
        names.extend(uwsgi.into_iter().map(str::to_string));
        names.push("help".into());
        names.push("version".into());
        names.dedup();
        Table { cmd, shorts, names }
    }
}

impl uwsgi_config::OptionTable for Table {
    fn arity(&self, long: &str) -> Option<uwsgi_config::Arity> {
        use uwsgi_config::Arity;
        if long == "help" || long == "version" {
            return Some(Arity::None);
        }
        if let Some(a) = self.cmd.get_arguments().find(|a| {
            a.get_long() == Some(long)
                || a.get_all_aliases()
                    .into_iter()
                    .flatten()
                    .any(|al| al == long)
        }) {
            let n = a.get_num_args().unwrap_or_default();
            return Some(if !a.get_action().takes_values() {
                Arity::None
            } else if n.min_values() == 0 {
                Arity::Optional
            } else {
                Arity::Required
            });
        }
        crate::options::uwsgi_options()
            .get(long)
            .map(|o| match o.arity {
                crate::options::Arity::None => Arity::None,
                crate::options::Arity::Required => Arity::Required,
                crate::options::Arity::Optional => Arity::Optional,
            })
    }

    fn long_of_short(&self, short: char) -> Option<&str> {
        match short {
            'h' => Some("help"),
            'V' => Some("version"),
            c => self.shorts.get(&c).copied(),
        }
    }

    fn long_names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    fn is_immediate(&self, long: &str) -> bool {
        crate::options::is_immediate(long)
    }
}

fn origin(o: &uwsgi_config::Origin) -> String {
    match o {
        uwsgi_config::Origin::CommandLine { .. } => "the command line".into(),
        uwsgi_config::Origin::Env { var } => format!("${var}"),
        uwsgi_config::Origin::File {
            path,
            line: Some(l),
        } => format!("{path}:{l}"),
        uwsgi_config::Origin::File { path, line: None } => path.clone(),
    }
}

/// The command line, the `UWSGI_*` variables and every config file they
/// name, read with uWSGI's config language (crate `uwsgi-config`: magic
/// variables, placeholders, includes, `if-*`/`for` logic, ini/xml/yaml/json),
/// as one ordered list of settings, and the warnings uWSGI would print.
pub fn settings_from_args(args: &[OsString]) -> Result<(Vec<Setting>, Vec<String>), IniError> {
    let strs: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // `--emperor /srv/*/uwsgi.ini` unquoted: the shell expanded the pattern
    // into files; the first became the value and uWSGI would load the
    // others as config files
    for w in strs.windows(3) {
        if (w[0] == "--emperor") && std::path::Path::new(&w[1]).is_file() && !w[2].starts_with('-')
        {
            return Err(IniError::Positional(w[2].clone(), w[1].clone()));
        }
    }
    let ctx = uwsgi_config::Context::from_system();
    let cfg = uwsgi_config::parse(&strs, &Table::new(), &ctx)?;
    // `strict` is config language, but imperium applies it to every option,
    // wherever it stands (uWSGI's applies from its own position on)
    let settings = cfg
        .entries
        .iter()
        .filter(|e| !uwsgi_config::is_config_language(&e.key) || e.key == "strict")
        .map(|e| Setting {
            // uWSGI matches file keys as written; imperium also takes `_`
            key: e.key.replace('_', "-"),
            value: e.value.clone(),
            origin: origin(&e.origin),
        })
        .collect();
    Ok((
        settings,
        cfg.warnings.iter().map(ToString::to_string).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("imperium").chain(args.iter().copied()))
    }

    #[test]
    fn ctl_subcommand_beside_the_uwsgi_options() {
        let c = parse(&[
            "--emperor",
            "/v",
            "--emperor-stats",
            "127.0.0.1:9191",
            "--stats-http",
            "--chmod-socket",
            "--emperor-control-socket-mode",
            "0660",
        ])
        .unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.emperor_stats.as_deref(), Some("127.0.0.1:9191"));
        assert_eq!(c.chmod_socket, Some(0o666));
        assert_eq!(c.emperor_control_socket_mode, 0o660);
        let c = parse(&["ctl", "--socket", "/run/c.sock", "--json", "pause", "a.ini"]).unwrap();
        let Some(Sub::Ctl(a)) = c.command else {
            panic!("no ctl")
        };
        assert!(a.json);
        assert!(matches!(a.action, crate::ctl::Action::Pause { ref vassal } if vassal == "a.ini"));
        let c = parse(&["ctl", "-s", "/c", "clear-blacklist"]).unwrap();
        let Some(Sub::Ctl(a)) = c.command else {
            panic!("no ctl")
        };
        assert!(matches!(
            a.action,
            crate::ctl::Action::ClearBlacklist { vassal: None }
        ));
        // emperor options and ctl do not mix
        assert!(parse(&["--emperor", "/v", "ctl", "-s", "/c", "list"]).is_err());
        let e = parse(&["--emperor-control-socket-mode", "999"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("octal"), "{e}");
    }

    #[test]
    fn uwsgi_option_names_parse() {
        let c = parse(&[
            "--emperor",
            "/etc/uwsgi/vassals",
            "--emperor",
            "glob:///srv/*/uwsgi.ini",
            "--emperor-freq",
            "1",
            "--emperor-throttle=500",
            "--emperor-no-blacklist",
            "--vassals-set",
            "processes=4",
            "--vassal-set",
            "master=true",
            "--emperor-extra-extension",
            ".foo",
            "--reload-mercy",
            "5",
        ])
        .unwrap();
        assert_eq!(c.emperor.len(), 2);
        assert_eq!(c.emperor_freq, 1);
        assert_eq!(c.emperor_throttle, 500);
        assert!(c.emperor_no_blacklist);
        assert_eq!(c.vassal_set, ["processes=4", "master=true"]);
        assert_eq!(c.emperor_extra_extension, [".foo"]);
    }

    #[test]
    fn tyrant_on_demand_and_broodlord_options_parse() {
        let c = parse(&[
            "--emperor",
            "/v",
            "--emperor-tyrant",
            "--emperor-tyrant-nofollow",
            "--emperor-tyrant-initgroups",
            "--emperor-tyrant-min-uid",
            "1000",
            "--emperor-on-demand-ext",
            ".socket",
            "--emperor-on-demand-socket-mode",
            "660",
            "--emperor-broodlord",
            "4",
        ])
        .unwrap();
        assert!(c.emperor_tyrant && c.emperor_tyrant_nofollow && c.emperor_tyrant_initgroups);
        assert_eq!(
            (c.emperor_tyrant_min_uid, c.emperor_tyrant_min_gid),
            (1000, 1)
        );
        assert_eq!(c.emperor_on_demand_extension.as_deref(), Some(".socket"));
        assert_eq!(c.emperor_on_demand_socket_mode, 0o660);
        assert_eq!(c.emperor_broodlord, 4);
        assert_eq!(c.listen, 100);
        let e = parse(&["--emperor-tyrant-min-uid", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--emperor-tyrant-min-uid"), "{e}");
        let e = parse(&["--emperor-on-demand-socket-mode", "999"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("octal"), "{e}");
    }

    #[test]
    fn unknown_option_and_bad_value_name_the_option() {
        let e = parse(&["--emperor-frek", "3"]).unwrap_err().to_string();
        assert!(e.contains("--emperor-frek"), "{e}");
        let e = parse(&["--emperor-freq", "soon"]).unwrap_err().to_string();
        assert!(e.contains("--emperor-freq"), "{e}");
        let e = parse(&["--emperor-freq", "0"]).unwrap_err().to_string();
        assert!(e.contains("--emperor-freq"), "{e}");
    }

    fn full(args: &[&str]) -> anyhow::Result<(Cli, Vec<crate::config::Note>)> {
        let args: Vec<OsString> = std::iter::once("imperium")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let (settings, _) = settings_from_args(&args)?;
        let p = crate::config::prepare("imperium".into(), &settings)?;
        Ok((Cli::try_parse_from(&p.args)?, p.notes))
    }

    #[test]
    fn ini_file_expands_to_options() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("emperor.ini");
        std::fs::write(
            &p,
            "[other]\nemperor = /nope\n[uwsgi]\n; comment\nemperor = /etc/uwsgi/vassals\nemperor_freq = 2\nemperor-nofollow = true\nemperor-no-blacklist = false\nvassal-set = a=1\n",
        )
        .unwrap();
        let ps = p.to_string_lossy().into_owned();
        let (c, _) = full(&["--ini", &ps, "--emperor-freq", "5"]).unwrap();
        assert_eq!(c.emperor, ["/etc/uwsgi/vassals"]);
        assert_eq!(c.emperor_freq, 5, "the command line after --ini wins");
        assert!(c.emperor_nofollow);
        assert!(!c.emperor_no_blacklist);
        assert_eq!(c.vassal_set, ["a=1"]);
        let (c, _) = full(&[&format!("--ini={ps}:other")]).unwrap();
        assert_eq!(c.emperor, ["/nope"]);
        // a positional config file, as `uwsgi emperor.ini`
        let (c, _) = full(&[&ps]).unwrap();
        assert_eq!(c.emperor, ["/etc/uwsgi/vassals"]);
    }

    #[test]
    fn uwsgi_short_forms_and_generic_options() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("e.log");
        let ls = log.to_string_lossy().into_owned();
        let (c, notes) = full(&[
            "-M",
            "-d",
            &ls,
            "--emperor",
            "/v",
            "--uid",
            "www-data",
            "--plugin",
            "emperor_pg",
            "-p",
            "4",
        ])
        .unwrap();
        assert_eq!(c.daemonize.as_deref(), Some(log.as_path()));
        assert_eq!(c.uid.as_deref(), Some("www-data"));
        assert_eq!(c.plugin, ["emperor_pg"]);
        let ignored: Vec<String> = notes
            .iter()
            .map(|n| match n {
                crate::config::Note::Ignored { key, .. } => key.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ignored, ["master", "processes"]);
    }

    #[test]
    fn config_language_in_the_emperor_config() {
        // the forms of the issue: %d, placeholders, $(ENV), if-exists
        let dir = tempfile::tempdir().unwrap();
        let d = format!("{}/", dir.path().display());
        let p = dir.path().join("emperor.ini");
        std::fs::write(
            &p,
            "[uwsgi]\nemperor = %dvassals\nlogto = %d/logs/x.log\nvassals-include = %dapps-include.ini\nbase = /srv\nchdir = %(base)/app\nif-exists = %demperor.ini\nvassal-set = home=$(HOME)\nendif =\n",
        )
        .unwrap();
        let ps = p.to_string_lossy().into_owned();
        let (c, notes) = full(&[&ps]).unwrap();
        assert_eq!(c.emperor, [format!("{d}vassals")]);
        assert_eq!(c.logto, Some(format!("{d}/logs/x.log").into()));
        assert_eq!(c.vassals_include, [format!("{d}apps-include.ini")]);
        assert_eq!(c.chdir, Some("/srv/app".into()));
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(c.vassal_set, [format!("home={home}")]);
        // `base` is a placeholder-only key: unknown, so a warning
        assert!(
            notes.iter().any(|n| n.to_string().contains("'base'")),
            "{notes:?}"
        );
    }

    #[test]
    fn ini_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.ini");
        let ps = p.to_string_lossy().into_owned();
        std::fs::write(&p, "[uwsgi]\nemperor-bogus = 1\n").unwrap();
        let (_, notes) = full(&["--ini", &ps]).unwrap();
        let w = notes[0].to_string();
        assert!(
            w.contains("unknown option 'emperor-bogus'") && w.contains(":2:"),
            "{w}"
        );
        std::fs::write(&p, "[uwsgi]\nstrict = true\nemperor-bogus = 1\n").unwrap();
        let e = full(&["--ini", &ps]).unwrap_err().to_string();
        assert!(
            e.contains("emperor-bogus") && e.contains("strict") && e.contains("line 3"),
            "{e}"
        );
        std::fs::write(&p, "[uwsgi]\nemperor-nofollow = maybe\n").unwrap();
        let e = full(&["--ini", &ps]).unwrap_err().to_string();
        assert!(e.contains("emperor-nofollow") && e.contains("flag"), "{e}");
        std::fs::write(&p, "[x]\n").unwrap();
        let args: Vec<OsString> = ["imperium", "--ini", &ps]
            .iter()
            .map(OsString::from)
            .collect();
        let (_, warnings) = settings_from_args(&args).unwrap();
        assert!(
            warnings.iter().any(|w| w.contains("uwsgi")),
            "a missing [uwsgi] section is reported: {warnings:?}"
        );
        let e = full(&["--ini", "/nonexistent/e.ini"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/e.ini"), "{e}");
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        let a = dir.path().join("a/x.ini");
        let b = dir.path().join("b/x.ini");
        std::fs::write(&a, "[uwsgi]\n").unwrap();
        std::fs::write(&b, "[uwsgi]\n").unwrap();
        let e = full(&["--emperor", &a.to_string_lossy(), &b.to_string_lossy()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("quote it"), "{e}");
        let e = full(&["--emperor-frek", "3"]).unwrap_err().to_string();
        assert!(e.contains("--emperor-frek"), "{e}");
    }
}
