//! The `imperium` binary: command line, logging, signals and wiring.

mod cli;
mod config;
mod ctl;
mod options;
mod plan;
mod process;
mod top;
mod touch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use emperor::argv::LaunchOptions;
use emperor::lifecycle::SdNotify;
use emperor::logs::{LogMode, LogOptions};
use emperor::monitor::OnDemandSource;
use emperor::ondemand::OnDemandOptions;
use emperor::reconciler::{ReconcilerConfig, TyrantConfig};
use emperor::runtime::{Command, Emperor, EmperorConfig};
use emperor::throttle::ThrottleConfig;
use emperor::{Extensions, MonitorOptions};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::cli::Cli;

fn main() -> ExitCode {
    // the reload check's sandbox (--emperor-reload-mode checked)
    let args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some(emperor::sandbox::SANDBOX_ARG) => {
            std::process::exit(emperor::sandbox::run(&args[2..]))
        }
        Some(emperor::sandbox::INIT_ARG) => std::process::exit(emperor::sandbox::init(&args[2..])),
        Some(emperor::upgrade::CHECK_ARG) => {
            return check_upgrade(args.get(2).and_then(|a| a.to_str()).unwrap_or("-"));
        }
        Some("plan") => {
            let mut argv = vec![args[0].clone()];
            argv.extend(args[2..].iter().cloned());
            return plan::main(&argv);
        }
        _ => {}
    }
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imperium: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// `imperium --check-upgrade STATE` (`-`: stdin): whether this binary can
/// adopt the emperor whose state it is (a hot upgrade runs it before the
/// exec). Reads the state, parses its command line and config files as a
/// start would, and compares the sources; touches nothing. Prints one line;
/// exits 0 when it can.
fn check_upgrade(path: &str) -> ExitCode {
    let fail = |msg: String| {
        println!(
            "imperium {}: cannot adopt this emperor: {msg}",
            env!("CARGO_PKG_VERSION")
        );
        ExitCode::from(1)
    };
    let state = match emperor::upgrade::check_main(path) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = std::env::set_current_dir(&state.cwd) {
        return fail(format!("its directory {}: {e}", state.cwd));
    }
    let args: Vec<OsString> = state.argv.iter().map(OsString::from).collect();
    let (cli, expanded) = match parse_command_line_for(&args) {
        Ok(Ok((cli, _, expanded))) => (cli, expanded),
        Ok(Err(e)) => return fail(format!("its command line: {}", e.render())),
        Err(e) => return fail(format!("its command line: {}", error_chain(&e))),
    };
    // built as the new image builds them: a setting it would refuse is
    // refused here, before the exec
    let drops = match process::Drop::from_cli(&cli) {
        Ok(d) => d.is_some() && !cli.early_emperor,
        Err(e) => return fail(format!("its settings: {}", error_chain(&e))),
    };
    let urls: Vec<String> = match emperor_parts(&cli, Purpose::Check { drops })
        .and_then(|(mons, cfg)| new_image_steps(&cli, &cfg).map(|()| mons))
    {
        Ok(mons) => source_ids(
            &cli.emperor,
            &mons.iter().map(|m| m.describe()).collect::<Vec<_>>(),
        ),
        Err(e) => return fail(format!("its settings: {}", error_chain(&e))),
    };
    // the table must go back whole: on a throwaway reconciler first
    let mut rec = emperor::reconciler::Reconciler::new(
        emperor::reconciler::ReconcilerConfig::default(),
        state.monitors.clone(),
    );
    let all: Vec<Option<usize>> = (0..state.monitors.len()).map(Some).collect();
    if let Err(e) = rec.restore_table(
        &state.vassals,
        &state.blacklist,
        (state.next_instance, &all),
        &state.counters,
        std::time::Instant::now(),
    ) {
        return fail(format!("its vassal table: {e}"));
    }
    let changes = ConfigChanges::between(state.source_ids(), &state.settings, &urls, &expanded);
    // what needs a restart is kept either way: only a change that would
    // apply needs --reread-config
    if !state.reread_config && changes.applies() {
        return fail(format!(
            "the emperor's config changed since it started ({changes}); `imperium ctl upgrade --reread-config` applies it"
        ));
    }
    let applied = if state.reread_config {
        format!("; --reread-config: {changes}")
    } else if !changes.is_empty() {
        format!("; {changes}")
    } else {
        String::new()
    };
    println!(
        "{}: imperium {} can adopt {}{applied}",
        emperor::runtime::CHECK_OK,
        env!("CARGO_PKG_VERSION"),
        state.summary()
    );
    ExitCode::SUCCESS
}

/// What the new image of a hot upgrade does at start-up that could fail,
/// done here first (the check runs as the same user, and is thrown away).
fn new_image_steps(cli: &Cli, cfg: &EmperorConfig) -> Result<()> {
    process::apply_env_and_umask(cli)?;
    if let Some(dir) = &cli.chdir {
        std::fs::read_dir(dir).with_context(|| format!("--chdir {}", dir.display()))?;
    }
    if let Some(p) = &cli.emperor_control_socket {
        if p.to_string_lossy().contains(':') {
            bail!(
                "--emperor-control-socket {}: must be a UNIX socket path (no colon)",
                p.display()
            );
        }
    }
    if let LogMode::Journal(socket) = &cfg.logs.mode {
        emperor::logs::journal::check(socket)?;
    }
    emperor::logs::Capture::start(&cfg.logs).context("--vassal-logs")?;
    Ok(())
}

/// Options a running emperor cannot change: a `--reread-config` keeps them
/// as they are (they need a real restart).
const RESTART_ONLY: &[&str] = &[
    "uid",
    "gid",
    "cap",
    "chroot",
    "daemonize",
    "daemonize2",
    "pidfile",
    "pidfile2",
    "emperor-pidfile",
    "emperor-stats",
    "emperor-stats-server",
    "emperor-metrics",
    "emperor-control-socket",
    "emperor-control-socket-mode",
    "emperor-command-socket",
    "chmod-socket",
    "abstract-socket",
    "vassal-cgroup",
    "early-emperor",
    // the reconciler's cluster mode and the engine's lease
    "emperor-cluster",
    "emperor-cluster-node",
    "emperor-replicas",
    "emperor-cluster-ttl",
    "emperor-cluster-claim-delay",
];

/// What differs between the settings an emperor started with and the ones
/// its command line and config files give now.
#[derive(Debug, Default, PartialEq, Eq)]
struct ConfigChanges {
    /// Sources now given that were not.
    added: Vec<String>,
    /// Sources no longer given.
    removed: Vec<String>,
    /// Other options that changed and apply live (to what starts next).
    live: Vec<String>,
    /// Options that changed and need a real restart.
    restart: Vec<String>,
}

impl ConfigChanges {
    /// `old_settings` empty: a state that carries none (nothing compared).
    fn between(
        old_sources: &[String],
        old_settings: &[String],
        sources: &[String],
        settings: &[String],
    ) -> ConfigChanges {
        let mut c = ConfigChanges {
            added: sources
                .iter()
                .filter(|s| !old_sources.contains(s))
                .cloned()
                .collect(),
            removed: old_sources
                .iter()
                .filter(|s| !sources.contains(s))
                .cloned()
                .collect(),
            ..ConfigChanges::default()
        };
        if old_settings.is_empty() {
            return c;
        }
        let (old, new) = (options_of(old_settings), options_of(settings));
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for k in keys {
            if k == "emperor" || old.get(k) == new.get(k) {
                continue;
            }
            // a socket no longer configured is closed by the new image:
            // that applies
            let closed = !new.contains_key(k)
                && matches!(
                    k.as_str(),
                    "emperor-stats"
                        | "emperor-stats-server"
                        | "emperor-metrics"
                        | "emperor-control-socket"
                        | "emperor-command-socket"
                );
            if RESTART_ONLY.contains(&k.as_str()) && !closed {
                c.restart.push(format!("--{k}"));
            } else {
                c.live.push(format!("--{k}"));
            }
        }
        c
    }

    fn is_empty(&self) -> bool {
        *self == ConfigChanges::default()
    }

    /// A change the new image would make (not only options kept as they
    /// are).
    fn applies(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.live.is_empty())
    }
}

impl std::fmt::Display for ConfigChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing changed");
        }
        let mut parts = Vec::new();
        for (what, list) in [
            ("sources added", &self.added),
            ("sources removed", &self.removed),
            ("applied live", &self.live),
            ("need a restart, kept as they are", &self.restart),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(" ")));
            }
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// The settings a hot upgrade's new image runs with, for the next
/// upgrade's comparison: its own (`new`), but the options that need a
/// restart as the previous image had them (`old`), since they were kept.
fn effective_settings(old: &[String], new: &[String]) -> Vec<String> {
    if old.is_empty() {
        return new.to_vec();
    }
    let (old_opts, mut opts) = (options_of(old), options_of(new));
    for k in RESTART_ONLY {
        match old_opts.get(*k) {
            Some(v) => opts.insert(k.to_string(), v.clone()),
            None => opts.remove(*k),
        };
    }
    let mut out = vec![new.first().cloned().unwrap_or_default()];
    for (k, values) in opts {
        for v in values {
            out.push(format!("--{k}"));
            out.extend(v.split('\u{1}').filter(|p| !p.is_empty()).map(String::from));
        }
    }
    out
}

/// The expanded arguments as option name -> values, in order.
fn options_of(args: &[String]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut key: Option<String> = None;
    for a in args.iter().skip(1) {
        if let Some(name) = a.strip_prefix("--") {
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (name.to_string(), None),
            };
            let e = m.entry(name.clone()).or_default();
            e.push(value.unwrap_or_default());
            key = Some(name);
        } else if let Some(k) = &key {
            if let Some(last) = m.get_mut(k).and_then(|v| v.last_mut()) {
                if !last.is_empty() {
                    last.push('\u{1}');
                }
                last.push_str(a);
            }
        }
    }
    m
}

/// An error and its causes on one line, each cause once (many errors
/// already quote their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if !msg.contains(&t) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&t);
        }
    }
    msg
}

#[allow(
    clippy::too_many_lines,
    reason = "start-up in uWSGI's order (env, log, daemonize, pidfiles, sockets, drop), one step after another"
)]
fn real_main() -> Result<()> {
    let original_args: Vec<OsString> = std::env::args_os().collect();
    // the new image of a hot upgrade (docs/upgrade.md): the state and
    // every descriptor it names, taken before anything else opens a file
    let mut restored = emperor::runtime::Restored::take().context("the hot upgrade's state")?;
    if let Some(r) = &restored {
        // the directory the emperor was started in, not the one it is in
        std::env::set_current_dir(&r.state.cwd)
            .with_context(|| format!("the emperor's directory {}", r.state.cwd))?;
    }
    let original_cwd = std::env::current_dir().context("cannot read the current directory")?;
    let exe = touch::own_binary().ok();
    // a re-exec after --touch-reload or a hot upgrade: the pidfiles stay,
    // no second daemonize
    let reloaded = std::env::var_os(touch::RELOADS_VAR).is_some() || restored.is_some();
    std::env::remove_var(touch::RELOADS_VAR);
    let mut cli = parse_command_line(&original_args)?;
    match cli.0.command.take() {
        Some(cli::Sub::Ctl(args)) => return ctl::run(args),
        // main() runs plan before any parsing
        Some(cli::Sub::Plan { .. }) => bail!("imperium plan: give it as the first argument"),
        None => {}
    }
    let (cli, notes, expanded) = cli;
    if cli.imperial_monitor_list {
        println!("*** uWSGI loaded imperial monitors ***");
        for s in monitors::schemes() {
            println!("{s}");
        }
        println!("*** end of the imperial monitors list ***");
        return Ok(());
    }
    for (file, sig, what) in [
        (&cli.stop, nix::sys::signal::Signal::SIGINT, "--stop"),
        (&cli.reload, nix::sys::signal::Signal::SIGHUP, "--reload"),
    ] {
        if let Some(f) = file {
            return signal_pidfile(f, sig).with_context(|| format!("{what} {}", f.display()));
        }
    }
    process::apply_env_and_umask(&cli)?;
    // the log file: daemonize first (the parent exits), then the file
    // opened now (logto, daemonize) or after the privilege drop (logto2,
    // daemonize2), as uWSGI does
    let log_file = process::log_file(&cli);
    if (cli.daemonize.is_some() || cli.daemonize2.is_some()) && !reloaded {
        process::daemonize()?;
        if cli.umask.is_none() {
            // uWSGI's daemonize clears the umask unless --umask is given
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        }
    }
    let drop = if cli.early_emperor {
        None
    } else {
        process::Drop::from_cli(&cli)?
    };
    // the new image of a hot upgrade must not fail where the old one had
    // succeeded as root: its output already goes to the log file
    let upgraded = restored.is_some();
    if let Some(l) = log_file.as_ref().filter(|l| !l.after_drop) {
        match process::redirect_output(&l.path, cli.log_truncate && !reloaded) {
            Ok(f) if cli.logfile_chown && !upgraded => process::chown_log(&f, drop.as_ref())?,
            Ok(_) => {}
            Err(e) if upgraded => eprintln!(
                "imperium: hot upgrade: {}: {}; the log stays where it was",
                l.path.display(),
                error_chain(&e)
            ),
            Err(e) => return Err(e),
        }
    }
    init_logging(&cli.log_format, cli.log_date.as_deref());
    for n in &notes {
        match n {
            config::Note::Ignored { .. } => tracing::info!("{n}"),
            config::Note::Unknown { .. } | config::Note::Config(_) => tracing::warn!("{n}"),
        }
    }
    if cli.early_emperor && (cli.uid.is_some() || cli.gid.is_some()) {
        tracing::info!("--early-emperor: the emperor keeps its privileges; --uid/--gid/--cap are not applied to it (as in uWSGI, where they apply to a master the emperor started before)");
    }
    check_plugins(&cli.plugin);
    if cli.emperor.is_empty() {
        bail!("no config source: give at least one --emperor URL (a directory, a glob pattern or a scheme://; see --help)");
    }
    let (mons, cfg) = emperor_parts(
        &cli,
        Purpose::Run {
            drops: drop.is_some(),
        },
    )?;
    let sources = source_ids(
        &cli.emperor,
        &mons.iter().map(|m| m.describe()).collect::<Vec<_>>(),
    );
    if let Some(r) = restored.as_mut().filter(|r| r.state.reread_config) {
        let changes =
            ConfigChanges::between(r.state.source_ids(), &r.state.settings, &sources, &expanded);
        tracing::info!("[emperor] hot upgrade with --reread-config: {changes}");
        r.note = Some(format!("--reread-config: {changes}"));
    }
    // the log directory is opened (and journald checked) before any drop
    // of privileges, and a bad one stops the emperor here
    if let LogMode::Journal(socket) = &cfg.logs.mode {
        emperor::logs::journal::check(socket)?;
    }
    let capture = emperor::logs::Capture::start(&cfg.logs).context("--vassal-logs")?;
    let cgroups = match restored.as_ref().map(|r| &r.state) {
        // the groups stay where the previous image made them
        Some(s) => match &s.cgroup_root {
            Some(root) => Some(
                emperor::cgroup::Cgroups::adopt(root.into(), s.cgroup_owned_root)
                    .context("--vassal-cgroup")?,
            ),
            None => None,
        },
        None => emperor::cgroup::Cgroups::setup(
            &cli.vassal_cgroup,
            drop.as_ref().map(process::Drop::target),
        )
        .context("--vassal-cgroup")?,
    };
    if let Some(c) = &cgroups {
        tracing::info!(
            "[emperor] each vassal process starts in a cgroup of its own under {}",
            c.root().display()
        );
    }
    let limits = emperor::cgroup::limits::Limits {
        memory_max: cli.vassal_memory_max,
        memory_high: cli.vassal_memory_high,
        cpu_max: cli.vassal_cpu_max,
        pids_max: cli.vassal_pids_max,
    };
    // with cgroups, a vassal's own [imperium] section may set limits too
    let limits = match vassal_limits(&cli, limits, cgroups.as_ref(), drop.as_ref()) {
        Ok(l) => l,
        // the new image of a hot upgrade does not stop the fleet for it
        Err(e) if upgraded => {
            tracing::error!(
                "hot upgrade: {}; processes started from now on are not limited until a restart",
                error_chain(&e)
            );
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(name) = &cli.emperor_procname {
        set_procname(name);
    }
    // pidfiles written before the drop (pidfile, emperor-pidfile) and after
    // it (pidfile2); all are removed at a clean exit
    let mut pidfiles = Vec::new();
    for (p, what) in [
        (&cli.emperor_pidfile, "--emperor-pidfile"),
        (&cli.pidfile, "--pidfile"),
    ] {
        if let Some(p) = p {
            if !reloaded {
                process::write_pidfile(p, what)?;
            }
            pidfiles.push(p.clone());
        }
    }
    match emperor::spawn::raise_nofile_limit() {
        Ok(Some((old, new))) => tracing::info!(
            "raised the open-file limit from {old} to {new} (vassals start with {old})"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    // low fd numbers for spawning without copying the fd table, taken
    // while few fds are open
    emperor::spawn::reserve_spawn_slots();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // signals reach only the loop's thread (see docs/upgrade.md)
        .on_thread_start(emperor::spawn::block_signals_in_this_thread)
        .build()
        .context("cannot start the async runtime")?;
    let reexec = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = rt.block_on({
        let reexec = reexec.clone();
        let pidfiles = &mut pidfiles;
        let (original_args, original_cwd) = (&original_args, &original_cwd);
        async move {
            let (tx, rx) = mpsc::channel(64);
            install_signals(tx.clone())?;
            let restored_settings = restored.as_ref().map(|r| r.state.settings.clone());
            let observers = start_observers(
                &cli,
                &tx,
                drop.as_ref().map(process::Drop::target),
                restored.as_mut(),
            )
            .await?;
            // everything that needs the emperor's privileges is bound: drop
            // them, then what uWSGI does after the drop (a hot upgrade's new
            // image has the identity the old one dropped to)
            if let Some(d) = drop.as_ref().filter(|_| restored.is_none()) {
                d.apply()?;
            }
            if let Some(l) = log_file.as_ref().filter(|l| l.after_drop) {
                match process::redirect_output(&l.path, cli.log_truncate && !reloaded) {
                    Ok(_) => {}
                    Err(e) if upgraded => tracing::error!(
                        "hot upgrade: {}: {}; the log stays where it was",
                        l.path.display(),
                        error_chain(&e)
                    ),
                    Err(e) => return Err(e),
                }
            }
            if let Some(p) = &cli.pidfile2 {
                if !reloaded {
                    process::write_pidfile(p, "--pidfile2")?;
                }
                pidfiles.push(p.clone());
            }
            if let Some(dir) = &cli.chdir {
                tracing::info!("chdir() to {}", dir.display());
                std::env::set_current_dir(dir)
                    .with_context(|| format!("--chdir {}", dir.display()))?;
            }
            if cli.log_reopen {
                if let Some(l) = &log_file {
                    reopen_log_on_hup(l.path.clone())?;
                }
            }
            if !cli.touch_reload.is_empty() {
                touch::watch(cli.touch_reload.clone(), tx.clone(), reexec.clone());
            }
            tracing::info!(
                pid = std::process::id(),
                "*** starting imperium, the uWSGI-compatible Emperor ***"
            );
            let mut emperor = Emperor::new(cfg, mons)
                .with_cluster(cluster_engine(&cli)?)
                .with_capture(capture)
                .with_cgroups(cgroups)
                .with_limits(limits)
                .with_restored(restored);
            if let Some(exe) = exe {
                emperor = emperor.with_upgrade(emperor::runtime::UpgradeSetup {
                    exe,
                    argv: original_args.clone(),
                    cwd: original_cwd.clone(),
                    observers,
                    sources,
                    settings: match restored_settings {
                        Some(old) => effective_settings(&old, &expanded),
                        None => expanded,
                    },
                });
            }
            if let Some(n) = SdNotify::from_env() {
                emperor = emperor.with_lifecycle(Box::new(n));
            }
            emperor.run(rx).await;
            anyhow::Ok(())
        }
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    if result.is_ok() && reexec.load(std::sync::atomic::Ordering::SeqCst) {
        // --touch-reload: every vassal is stopped; start again from the
        // same command line, which re-reads the config files
        tracing::info!("--touch-reload: re-executing the emperor");
        let err = touch::reexec(&original_args, &original_cwd);
        remove_pidfiles(pidfiles);
        return Err(err);
    }
    remove_pidfiles(pidfiles);
    result
}

/// The command line and the config files it names, through uWSGI's config
/// language, into imperium's options; `imperium ctl ...` is parsed as it is.
fn parse_command_line(args: &[OsString]) -> Result<(Cli, Vec<config::Note>, Vec<String>)> {
    if args.get(1).is_some_and(|a| a == "ctl") {
        return match Cli::try_parse_from(args) {
            Ok(c) => Ok((c, Vec::new(), Vec::new())),
            Err(e) => e.exit(),
        };
    }
    match parse_command_line_for(args)? {
        Ok(c) => Ok(c),
        Err(e) => e.exit(),
    }
}

/// The options, their notes, and the expanded arguments they came from.
type Parsed = (Cli, Vec<config::Note>, Vec<String>);

/// The emperor's command line with its config files expanded (the options,
/// their notes, and the expanded arguments they were parsed from); a clap
/// error (or help) is returned, not printed.
fn parse_command_line_for(args: &[OsString]) -> Result<std::result::Result<Parsed, clap::Error>> {
    let (settings, warnings) = cli::settings_from_args(args)?;
    let mut prepared = config::prepare(
        args.first().cloned().unwrap_or_else(|| "imperium".into()),
        &settings,
    )?;
    prepared
        .notes
        .splice(0..0, warnings.into_iter().map(config::Note::Config));
    let expanded = prepared
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Ok(Cli::try_parse_from(&prepared.args).map(|c| (c, prepared.notes, expanded)))
}

/// What the emperor's settings are built for.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    /// A real run; `drops`: the emperor gives up its privileges after
    /// start-up.
    Run { drops: bool },
    /// `imperium plan`: nothing is started, so nothing needs root.
    Plan,
    /// `imperium --check-upgrade`: as the new image's real run, but no
    /// monitor that binds a socket at once (zmq://: the running emperor
    /// holds it) is built.
    Check {
        /// As in [`Purpose::Run`].
        drops: bool,
    },
}

/// Each source's identity across a hot upgrade, in `--emperor` order: what
/// its monitor shows (passwords masked), but the URL itself for zmq://,
/// whose monitor shows the port it bound (`tcp://*:*` binds a new one).
/// `shown` holds the monitors built, those of zmq:// left out or not.
fn source_ids(urls: &[String], shown: &[String]) -> Vec<String> {
    let skip_zmq = shown.len() < urls.len();
    let mut shown = shown.iter();
    urls.iter()
        .map(|u| {
            let zmq = u.starts_with("zmq://");
            let s = if zmq && skip_zmq { None } else { shown.next() };
            if zmq {
                u.clone()
            } else {
                s.cloned().unwrap_or_default()
            }
        })
        .collect()
}

/// The monitors (one per `--emperor` URL) and the emperor's settings, from
/// the command line. Nothing is started: `imperium plan` uses the same.
fn emperor_parts(
    cli: &Cli,
    purpose: Purpose,
) -> Result<(Vec<Box<dyn emperor::Monitor>>, EmperorConfig)> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let extensions = Extensions::new(cli.emperor_extra_extension.clone());
    let monitor_opts = MonitorOptions {
        freq: Duration::from_secs(cli.emperor_freq),
        extensions: extensions.clone(),
        nofollow: cli.emperor_nofollow,
        tyrant_nofollow: cli.emperor_tyrant_nofollow,
        on_demand: on_demand_source(cli)?,
        cwd: cwd.clone(),
    };
    // the options of one monitor each, passed through by name: the monitors
    // crate knows which monitor reads them (and reads the password file now)
    let mut monitor_args = monitors::MonitorArgs::default();
    monitor_args.set("emperor-pg-channel", &cli.emperor_pg_channel)?;
    if let Some(dn) = &cli.emperor_ldap_binddn {
        monitor_args.set("emperor-ldap-binddn", dn)?;
    }
    if let Some(path) = &cli.emperor_ldap_bindpw_file {
        monitor_args.set("emperor-ldap-bindpw-file", path)?;
    }
    let mut mons = Vec::new();
    for (i, url) in cli.emperor.iter().enumerate() {
        if matches!(purpose, Purpose::Check { .. }) && url.starts_with("zmq://") {
            continue;
        }
        // the monitor's error names the URL with any password masked; the
        // raw value must not be repeated here
        mons.push(
            monitors::build_with(url, &monitor_opts, &monitor_args)
                .with_context(|| format!("--emperor value #{}", i + 1))?,
        );
    }
    let cfg = EmperorConfig {
        reconciler: ReconcilerConfig {
            throttle: ThrottleConfig {
                throttle: Duration::from_millis(cli.emperor_throttle),
                max_throttle: Duration::from_millis(
                    cli.emperor_max_throttle.max(cli.emperor_throttle),
                ),
                no_blacklist: cli.emperor_no_blacklist,
                ..ThrottleConfig::default()
            },
            graceful_shutdown: cli.emperor_graceful_shutdown,
            curse_tolerance: Duration::from_secs(cli.emperor_curse_tolerance),
            required_heartbeat: Duration::from_secs(cli.emperor_required_heartbeat),
            tyrant: cli.emperor_tyrant.then_some(TyrantConfig {
                min_uid: cli.emperor_tyrant_min_uid,
                min_gid: cli.emperor_tyrant_min_gid,
            }),
            broodlord: cli.emperor_broodlord,
            stop_hook: cli.vassals_stop_hook.is_some(),
            reload_mode: reload_mode(cli, purpose)?,
            swap_timeout: cli.emperor_swap_timeout.unwrap_or(Duration::from_secs(60)),
            cluster: cli.emperor_cluster.is_some(),
        },
        launch: LaunchOptions {
            binary: cli.binary_path.clone(),
            wrapper: cli.emperor_wrapper.clone(),
            wrapper_override: cli.emperor_wrapper_override.clone(),
            wrapper_fallback: cli.emperor_wrapper_fallback.clone(),
            extensions,
            set: cli.vassal_set.clone(),
            inherit_before: cli.vassals_inherit_before.clone(),
            include_before: cli.vassals_include_before.clone(),
            inherit: cli.vassals_inherit.clone(),
            include: cli.vassals_include.clone(),
            magic_exec: cli.emperor_magic_exec,
            tyrant_initgroups: cli.emperor_tyrant_initgroups,
            confine: std::sync::Arc::new(confinement(cli)?),
            start_hook: cli.vassals_start_hook.clone().map(OsString::from),
            stop_hook: cli.vassals_stop_hook.clone().map(OsString::from),
        },
        monitor: monitor_opts,
        reload_mercy: Duration::from_secs(if cli.reload_mercy == 0 {
            30
        } else {
            cli.reload_mercy
        }),
        on_demand: OnDemandOptions {
            backlog: cli.listen,
            unix_mode: cli.emperor_on_demand_socket_mode,
        },
        logs: LogOptions {
            mode: cli.vassal_logs.clone(),
            max_size: cli.vassal_logs_max_size,
            keep: cli.vassal_logs_keep,
            json: cli.log_format == "json",
        },
        health: cli.health(),
        ready_wait: cli.emperor_ready_wait,
        check: emperor::runtime::CheckOptions {
            sandbox: !cli.emperor_reload_check_no_sandbox,
            command: cli.emperor_reload_check.clone(),
            timeout: cli
                .emperor_reload_check_timeout
                .unwrap_or(Duration::from_secs(30)),
        },
    };
    Ok((mons, cfg))
}

/// The `--emperor-cluster` engine, with its options checked.
fn cluster_engine(cli: &Cli) -> Result<Option<Box<dyn emperor::cluster::ClusterEngine>>> {
    let Some(url) = &cli.emperor_cluster else {
        if cli.emperor_cluster_node.is_some()
            || cli.emperor_replicas.is_some()
            || cli.emperor_cluster_ttl.is_some()
            || cli.emperor_cluster_claim_delay.is_some()
        {
            bail!("--emperor-cluster-node, --emperor-replicas, --emperor-cluster-ttl and --emperor-cluster-claim-delay need --emperor-cluster");
        }
        return Ok(None);
    };
    let node = match &cli.emperor_cluster_node {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("--emperor-cluster: cannot read the host name for the node name (give --emperor-cluster-node)")?
            .trim()
            .to_string(),
    };
    #[cfg(not(any(feature = "etcd", feature = "zoo")))]
    {
        let _ = (url, node);
        bail!("--emperor-cluster: this imperium was built without the etcd and zoo features");
    }
    #[cfg(any(feature = "etcd", feature = "zoo"))]
    let settings = monitors::cluster::ClusterSettings {
        node,
        replicas: cli.emperor_replicas.unwrap_or(1),
        ttl: Duration::from_secs(cli.emperor_cluster_ttl.unwrap_or(10)),
        claim_delay: Duration::from_secs(cli.emperor_cluster_claim_delay.unwrap_or(2)),
    };
    #[cfg(any(feature = "etcd", feature = "zoo"))]
    Ok(Some(
        monitors::cluster::build(url, settings).context("--emperor-cluster")?,
    ))
}

/// `--emperor-reload-mode`, with its options checked: the sandbox of the
/// checked mode needs an emperor that stays root (not for a plan).
fn reload_mode(cli: &Cli, purpose: Purpose) -> Result<emperor::reconciler::ReloadMode> {
    use emperor::reconciler::ReloadMode;
    if cli.emperor_swap_timeout.is_some() && cli.emperor_reload_mode != "swap" {
        bail!("--emperor-swap-timeout applies to --emperor-reload-mode swap only");
    }
    let checked = cli.emperor_reload_mode == "checked";
    if !checked {
        if cli.emperor_reload_check.is_some()
            || cli.emperor_reload_check_timeout.is_some()
            || cli.emperor_reload_check_no_sandbox
        {
            bail!("--emperor-reload-check, --emperor-reload-check-timeout and --emperor-reload-check-no-sandbox apply to --emperor-reload-mode checked only");
        }
        return Ok(if cli.emperor_reload_mode == "swap" {
            let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req");
            if matches!(purpose, Purpose::Run { .. }) && migrate.is_ok_and(|v| v.trim() == "0") {
                tracing::warn!("[emperor] --emperor-reload-mode swap: net.ipv4.tcp_migrate_req is 0, so a vassal swapped through reuse-port can lose the connections queued on its old instance's socket when that one closes (set it to 1; vassals on an on-demand socket lose none; docs/reloads.md)");
            }
            ReloadMode::Swap
        } else {
            ReloadMode::Inplace
        });
    }
    if cli.emperor_reload_check_no_sandbox {
        if cli.emperor_reload_check.is_none() {
            bail!("--emperor-reload-mode checked with --emperor-reload-check-no-sandbox checks nothing: give --emperor-reload-check COMMAND");
        }
    } else if let Purpose::Run { drops } | Purpose::Check { drops } = purpose {
        if !nix::unistd::geteuid().is_root() || drops {
            bail!("--emperor-reload-mode checked loads each changed config in a sandbox (namespaces and mounts), which needs an emperor that stays root; without root, give --emperor-reload-check COMMAND with --emperor-reload-check-no-sandbox");
        }
    }
    Ok(ReloadMode::Checked)
}

/// The emperor-wide limits of every vassal process (`--vassal-memory-max`,
/// `-memory-high`, `-cpu-max`, `-pids-max`), set up; an error where
/// vassals get no cgroup, or where a limit cannot be applied here.
fn vassal_limits(
    cli: &Cli,
    limits: emperor::cgroup::limits::Limits,
    cgroups: Option<&emperor::cgroup::Cgroups>,
    drop: Option<&process::Drop>,
) -> Result<Option<emperor::cgroup::limits::LimitGroups>> {
    let Some(cgroups) = cgroups else {
        if !limits.any() {
            return Ok(None);
        }
        bail!(
            "--vassal-memory-max, --vassal-memory-high, --vassal-cpu-max and --vassal-pids-max need a cgroup per vassal, and vassals get none here (--vassal-cgroup {}; see the warning above)",
            match &cli.vassal_cgroup {
                emperor::cgroup::CgroupMode::Off => "off".to_string(),
                emperor::cgroup::CgroupMode::Auto => "auto".to_string(),
                emperor::cgroup::CgroupMode::Path(p) => p.display().to_string(),
            }
        );
    };
    let l = emperor::cgroup::limits::LimitGroups::setup(
        limits,
        drop.map(process::Drop::target),
        cgroups,
    )
    .context("--vassal-memory-max/--vassal-memory-high/--vassal-cpu-max/--vassal-pids-max")?;
    let how = |controller: &'static str| {
        l.backend(cgroups, controller)
            .map(|b| b.describe())
            .unwrap_or("?")
    };
    if let Some(m) = limits.memory_max {
        tracing::info!(
            "[emperor] each vassal process may use at most {} MiB of memory ({} memory controller)",
            m >> 20,
            how("memory")
        );
    }
    if let Some(m) = limits.memory_high {
        tracing::info!("[emperor] each vassal process is throttled and reclaimed above {} MiB of memory ({} memory.high)", m >> 20, how("memory"));
    }
    if let Some(c) = limits.cpu_max {
        tracing::info!(
            "[emperor] each vassal process may use at most {c} cores ({} cpu controller)",
            how("cpu")
        );
    }
    if let Some(p) = limits.pids_max {
        tracing::info!(
            "[emperor] each vassal process may have at most {p} processes and threads ({} pids controller)",
            how("pids")
        );
    }
    Ok(Some(l))
}

/// `--stop PIDFILE`, `--reload PIDFILE`: signal the emperor whose pid the
/// file holds, as uWSGI does.
fn signal_pidfile(path: &std::path::Path, sig: nix::sys::signal::Signal) -> Result<()> {
    let text = std::fs::read_to_string(path).context("cannot read the pidfile")?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("the pidfile holds {:?}, not a pid", text.trim()))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .with_context(|| format!("cannot send {sig} to pid {pid}"))
}

/// `--emperor-use-clone`, `--emperor-cap` and `--safe-fd`.
fn confinement(cli: &Cli) -> Result<emperor::spawn::Confinement> {
    let clone_flags = match &cli.emperor_use_clone {
        Some(list) => emperor::spawn::parse_clone_flags(list)
            .map_err(|e| anyhow::anyhow!("--emperor-use-clone {list}: {e}"))?,
        None => 0,
    };
    let bounding_set = if cli.emperor_cap.is_empty() {
        None
    } else {
        let caps = process::parse_caps("emperor-cap", &cli.emperor_cap)?;
        Some(caps.iter().map(|c| u32::from(c.index())).collect())
    };
    for fd in &cli.safe_fd {
        let open = std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok();
        if *fd < 3 || !open {
            bail!("--safe-fd {fd}: not an open file descriptor above 2 of the emperor");
        }
    }
    Ok(emperor::spawn::Confinement {
        clone_flags,
        bounding_set,
        safe_fds: cli.safe_fd.clone(),
    })
}

/// `--plugin`: emperor plugins built in are accepted, language plugins are
/// ignored (they concern vassals), anything else gets a warning.
fn check_plugins(values: &[String]) {
    for name in values
        .iter()
        .flat_map(|v| v.split([',', ' ']))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let base = name.rsplit('/').next().unwrap_or(name);
        let base = base.strip_suffix(".so").unwrap_or(base);
        let base = base.strip_suffix("_plugin").unwrap_or(base);
        match options::plugin_class(base) {
            options::Plugin::Emperor(scheme) if monitors::schemes().contains(&scheme) => {
                tracing::info!("plugin {name}: the {scheme}:// monitor is built into imperium")
            }
            options::Plugin::Emperor(scheme) => tracing::warn!(
                "plugin {name}: this imperium binary was built without the {scheme}:// monitor"
            ),
            options::Plugin::Other => {
                tracing::info!(
                    "plugin {name} ignored: it concerns vassals, which load their own plugins"
                )
            }
            options::Plugin::Unknown => {
                tracing::warn!("plugin {name}: not a uWSGI plugin imperium knows; ignored")
            }
        }
    }
}

/// `--log-reopen`: SIGHUP (which also reloads every vassal) reopens the log
/// file, so a logrotate that moved it gets a new one.
fn reopen_log_on_hup(path: PathBuf) -> Result<()> {
    let mut s = signal(SignalKind::hangup()).context("cannot install a handler for SIGHUP")?;
    tokio::spawn(async move {
        while s.recv().await.is_some() {
            match process::reopen_output(&path) {
                Ok(()) => tracing::info!("log file {} reopened", path.display()),
                Err(e) => tracing::error!("{e:#}"),
            }
        }
    });
    Ok(())
}

/// Where file monitors find on-demand sockets: the first of
/// `--emperor-on-demand-extension`, `-directory`, `-exec` given (as uWSGI).
fn on_demand_source(cli: &Cli) -> Result<OnDemandSource> {
    let given = [
        cli.emperor_on_demand_extension.is_some(),
        cli.emperor_on_demand_directory.is_some(),
        cli.emperor_on_demand_exec.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        tracing::warn!("more than one --emperor-on-demand-* option: using the first of extension, directory, exec");
    }
    Ok(if let Some(ext) = &cli.emperor_on_demand_extension {
        if ext.is_empty() || ext.contains('/') {
            bail!("--emperor-on-demand-extension {ext:?}: give a suffix such as .socket");
        }
        OnDemandSource::Extension(ext.clone())
    } else if let Some(dir) = &cli.emperor_on_demand_directory {
        OnDemandSource::Directory(dir.clone())
    } else if let Some(cmd) = &cli.emperor_on_demand_exec {
        OnDemandSource::Exec(cmd.clone())
    } else {
        OnDemandSource::None
    })
}

/// Binds the stats, metrics, control and command sockets and starts their
/// tasks. A socket that cannot be bound is a start-up error.
#[allow(
    clippy::too_many_lines,
    reason = "each observer socket in turn: inherited or bound, then served"
)]
async fn start_observers(
    cli: &Cli,
    tx: &mpsc::Sender<Command>,
    owner: Option<(Option<u32>, Option<u32>)>,
    mut restored: Option<&mut emperor::runtime::Restored>,
) -> Result<Vec<(String, String, std::os::fd::OwnedFd)>> {
    use emperor::stats::{Listener, StatsOptions};
    // each socket: the one the previous image held (a hot upgrade: never
    // bound again, so no connection is refused meanwhile), or a new one;
    // a duplicate of each is kept for the next upgrade
    let mut kept = Vec::new();
    let upgraded = restored.is_some();
    let mut inherited = |what: &str, flag: &str, addr: &str| {
        let (old, fd) = restored.as_mut()?.observer(what)?;
        if old != addr {
            tracing::warn!("{flag} is {addr} in the config now, but a hot upgrade keeps the socket on {old}: restart the emperor to move it");
        }
        Some((old, fd))
    };
    // a socket the new image of a hot upgrade cannot bind is not worth
    // the fleet: it is logged and left out
    let new_bind = |flag: &str, e: anyhow::Error| -> Result<()> {
        if upgraded {
            tracing::error!("{flag}: {}; left out until a restart", error_chain(&e));
            Ok(())
        } else {
            Err(e)
        }
    };
    let timeout = Duration::from_secs(cli.socket_timeout);
    // --abstract-socket: UNIX paths of the stats and metrics servers go in
    // the abstract namespace (`@name`, which Listener::bind understands)
    let abstract_addr = |a: &String| {
        if cli.abstract_socket && !a.contains(':') && !a.starts_with('@') {
            format!("@{a}")
        } else {
            a.clone()
        }
    };
    for (what, flag, addr) in [
        ("stats", "--emperor-stats", cli.emperor_stats.as_ref()),
        ("metrics", "--emperor-metrics", cli.emperor_metrics.as_ref()),
    ] {
        let Some(addr) = addr.map(abstract_addr) else {
            continue;
        };
        let (addr, l) = match inherited(what, flag, &addr) {
            Some((old, fd)) => {
                let l = Listener::adopt(&old, fd).context(flag)?;
                (old, l)
            }
            None => match Listener::bind(&addr, cli.chmod_socket).await {
                Ok(l) => {
                    chown_socket(flag, &addr, owner)?;
                    (addr, l)
                }
                Err(e) => {
                    new_bind(flag, anyhow::Error::from(e).context(flag))?;
                    continue;
                }
            },
        };
        kept.push((what.to_string(), addr.clone(), l.dup_fd()?));
        if what == "stats" {
            let opts = StatsOptions {
                addr: addr.clone(),
                http: cli.stats_http,
                minified: cli.stats_minified,
                timeout,
                mode: cli.chmod_socket,
                tyrant: cli.emperor_tyrant,
            };
            tracing::info!("*** Emperor stats server enabled on {addr} ***");
            tokio::spawn(emperor::stats::serve(l, opts, tx.clone()));
        } else {
            tracing::info!("*** Prometheus metrics on {addr} (GET /metrics) ***");
            tokio::spawn(emperor::metrics::serve(l, timeout, tx.clone()));
        }
    }
    if let Some(path) = &cli.emperor_control_socket {
        let flag = "--emperor-control-socket";
        let addr = path.to_string_lossy().into_owned();
        if addr.contains(':') {
            bail!("--emperor-control-socket {addr}: must be a UNIX socket path (no colon)");
        }
        let got = match inherited("control", flag, &addr) {
            Some((old, fd)) => Some((Listener::adopt(&old, fd).context(flag)?, old)),
            None => match Listener::bind(&addr, Some(cli.emperor_control_socket_mode)).await {
                Ok(l) => {
                    // the emperor's own uid is always allowed: after the
                    // drop that is the --uid user, who must be able to
                    // connect to the socket file
                    chown_socket(flag, &addr, owner)?;
                    Some((l, addr))
                }
                Err(e) => {
                    new_bind(flag, anyhow::Error::from(e).context(flag))?;
                    None
                }
            },
        };
        if let Some((l, addr)) = got {
            kept.push(("control".to_string(), addr.clone(), l.dup_fd()?));
            let access = emperor::control::Access {
                uids: cli.emperor_control_allow_uid.clone(),
                gids: cli.emperor_control_allow_gid.clone(),
            };
            tracing::info!(
                "*** control socket on {addr} (mode {:o}) ***",
                cli.emperor_control_socket_mode
            );
            tokio::spawn(emperor::control::serve(l, access, tx.clone()));
        }
    }
    if let Some(addr) = &cli.emperor_command_socket {
        let flag = "--emperor-command-socket";
        let got = match inherited("command", flag, addr) {
            Some((old, fd)) => Some((
                emperor::control::CommandSocket::adopt(&old, fd).context(flag)?,
                old,
            )),
            None => match emperor::control::CommandSocket::bind(addr, 0o600).await {
                Ok(s) => {
                    chown_socket(flag, addr, owner)?;
                    Some((s, addr.clone()))
                }
                Err(e) => {
                    new_bind(flag, anyhow::Error::from(e).context(flag))?;
                    None
                }
            },
        };
        if let Some((s, addr)) = got {
            kept.push(("command".to_string(), addr.clone(), s.dup_fd()?));
            tracing::info!("*** Emperor command socket on {addr} ***");
            tokio::spawn(s.serve(tx.clone()));
        }
    }
    Ok(kept)
}

/// A stats, metrics, control or command UNIX socket is bound before the
/// privilege drop: give it to the --uid/--gid user, as uWSGI leaves it (its
/// master binds the stats socket after dropping privileges), so that
/// --chmod-socket 660 lets that user and group in, not root alone, and the
/// control socket (mode 600) still lets the emperor's own user in.
fn chown_socket(what: &str, addr: &str, owner: Option<(Option<u32>, Option<u32>)>) -> Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    if addr.contains(':') || addr.starts_with('@') || !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    nix::unistd::chown(
        addr,
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
    )
    .with_context(|| format!("{what} {addr}: cannot give the socket to the --uid/--gid user"))
}

fn remove_pidfiles(p: Vec<PathBuf>) {
    for p in p {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::info!(
                "pidfile {} left in place: {e} (written before the privilege drop; use --pidfile2 in a directory the --uid user owns)",
                p.display()
            ),
        }
    }
}

/// `--emperor-procname`: the command line (`ps -f`, `pgrep -f`) and the
/// process name (`ps -o comm`, 15 bytes), as uWSGI sets them.
fn set_procname(name: &str) {
    if let Err(e) = emperor::spawn::set_cmdline(name) {
        tracing::warn!(error = %e, "--emperor-procname: cannot set the process title");
    }
}

/// The emperor's log: tracing's format, or with `--log-date` uWSGI's
/// local-time prefix (`Wed Dec  2 04:40:37 2026 -`) or a strftime format.
fn init_logging(format: &str, log_date: Option<&str>) {
    use tracing_subscriber::fmt::time::ChronoLocal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMPERIUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
        return;
    }
    use std::io::IsTerminal;
    let b = b
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match log_date {
        Some(f) => {
            let f = match f.to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => "%a %b %e %H:%M:%S %Y -".to_string(),
                _ => f.to_string(),
            };
            b.with_timer(ChronoLocal::new(f)).init()
        }
        None => b.init(),
    }
}

fn install_signals(tx: mpsc::Sender<Command>) -> Result<()> {
    // SIGPIPE stays ignored (Rust's default, and uWSGI's).
    let table: [(SignalKind, fn() -> Command); 8] = [
        (SignalKind::hangup(), || Command::ReloadAll),
        (SignalKind::interrupt(), || Command::Shutdown),
        (SignalKind::terminate(), || Command::Shutdown),
        (SignalKind::quit(), || Command::Shutdown),
        (SignalKind::from_raw(nix::libc::SIGURG), || {
            Command::ClearBlacklist
        }),
        (SignalKind::user_defined1(), || Command::LogVassals),
        (SignalKind::window_change(), || Command::Rescan),
        // a hot upgrade from the binary the emperor was started from
        // (uWSGI's emperor gives SIGUSR2 no meaning; docs/upgrade.md)
        (SignalKind::user_defined2(), || {
            Command::Upgrade(emperor::command::UpgradeRequest {
                binary: None,
                answer: None,
                refused: None,
                reread_config: false,
            })
        }),
    ];
    for (kind, make) in table {
        let mut s =
            signal(kind).with_context(|| format!("cannot install a handler for {kind:?}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(make()).await.is_err() {
                    break;
                }
            }
        });
    }
    // a blocked signal is inherited across exec: a parent that left SIGTERM
    // blocked would make the emperor deaf to it, and a hot upgrade's old
    // image leaves what arrived during the exec pending. Unblock what is
    // handled once every handler is in place (so a pending SIGTERM is
    // handled, not fatal), in this thread only: every other thread blocks
    // them (emperor::spawn::block_signals_in_this_thread).
    emperor::spawn::handled_signals()
        .thread_unblock()
        .context("cannot unblock the signals the emperor handles")?;
    Ok(())
}
