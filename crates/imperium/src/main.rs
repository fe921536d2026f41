//! The `imperium` binary: command line, logging, signals and wiring.

mod cli;
mod ctl;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use emperor::argv::LaunchOptions;
use emperor::lifecycle::SdNotify;
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
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imperium: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main() -> Result<()> {
    let args = cli::expand_ini(std::env::args_os().collect())?;
    let mut cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Some(cli::Sub::Ctl(args)) = cli.command.take() {
        return ctl::run(args);
    }
    if cli.imperial_monitor_list {
        println!("*** uWSGI loaded imperial monitors ***");
        for s in monitors::schemes() {
            println!("{s}");
        }
        println!("*** end of the imperial monitors list ***");
        return Ok(());
    }
    init_logging(&cli.log_format);
    if cli.emperor.is_empty() {
        bail!("no config source: give at least one --emperor URL (a directory, a glob pattern or a scheme://; see --help)");
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let extensions = Extensions::new(cli.emperor_extra_extension.clone());
    let monitor_opts = MonitorOptions {
        freq: Duration::from_secs(cli.emperor_freq),
        extensions: extensions.clone(),
        nofollow: cli.emperor_nofollow,
        tyrant_nofollow: cli.emperor_tyrant_nofollow,
        on_demand: on_demand_source(&cli)?,
        cwd: cwd.clone(),
        pg_channel: cli.emperor_pg_channel.clone(),
        ldap_bind_dn: cli.emperor_ldap_binddn.clone(),
        ldap_bind_password: ldap_bind_password(&cli)?,
    };
    let mut mons = Vec::new();
    for (i, url) in cli.emperor.iter().enumerate() {
        // the monitor's error names the URL with any password masked; the
        // raw value must not be repeated here
        mons.push(
            monitors::build(url, &monitor_opts)
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
    };
    if let Some(name) = &cli.emperor_procname {
        set_procname(name);
    }
    let pidfile = cli.emperor_pidfile.clone();
    if let Some(p) = &pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("--emperor-pidfile {}", p.display()))?;
    }
    match emperor::spawn::raise_nofile_limit() {
        Ok(Some((old, new))) => tracing::info!(
            "raised the open-file limit from {old} to {new} (vassals start with {old})"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async move {
        let (tx, rx) = mpsc::channel(64);
        install_signals(tx.clone())?;
        start_observers(&cli, &tx).await?;
        tracing::info!(
            pid = std::process::id(),
            "*** starting imperium, the uWSGI-compatible Emperor ***"
        );
        let mut emperor = Emperor::new(cfg, mons);
        if let Some(n) = SdNotify::from_env() {
            emperor = emperor.with_lifecycle(Box::new(n));
        }
        emperor.run(rx).await;
        anyhow::Ok(())
    });
    remove_pidfile(pidfile);
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

/// The ldap:// bind password: `--emperor-ldap-bindpw-file`, else the
/// environment variable `IMPERIUM_LDAP_BINDPW` (kept out of argv and logs).
fn ldap_bind_password(cli: &Cli) -> Result<Option<emperor::Secret>> {
    if let Some(p) = &cli.emperor_ldap_bindpw_file {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("--emperor-ldap-bindpw-file {}", p.display()))?;
        return Ok(Some(emperor::Secret::new(
            text.trim_end_matches(['\r', '\n']),
        )));
    }
    Ok(std::env::var("IMPERIUM_LDAP_BINDPW")
        .ok()
        .filter(|s| !s.is_empty())
        .map(emperor::Secret::new))
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
async fn start_observers(cli: &Cli, tx: &mpsc::Sender<Command>) -> Result<()> {
    use emperor::stats::{Listener, StatsOptions};
    let timeout = Duration::from_secs(cli.socket_timeout);
    if let Some(addr) = &cli.emperor_stats {
        let l = Listener::bind(addr, cli.chmod_socket)
            .await
            .context("--emperor-stats")?;
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
    }
    if let Some(addr) = &cli.emperor_metrics {
        let l = Listener::bind(addr, cli.chmod_socket)
            .await
            .context("--emperor-metrics")?;
        tracing::info!("*** Prometheus metrics on {addr} (GET /metrics) ***");
        tokio::spawn(emperor::metrics::serve(l, timeout, tx.clone()));
    }
    if let Some(path) = &cli.emperor_control_socket {
        let addr = path.to_string_lossy();
        if addr.contains(':') {
            bail!("--emperor-control-socket {addr}: must be a UNIX socket path (no colon)");
        }
        let l = Listener::bind(&addr, Some(cli.emperor_control_socket_mode))
            .await
            .context("--emperor-control-socket")?;
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
    if let Some(addr) = &cli.emperor_command_socket {
        let s = emperor::control::CommandSocket::bind(addr, 0o600)
            .await
            .context("--emperor-command-socket")?;
        tracing::info!("*** Emperor command socket on {addr} ***");
        tokio::spawn(s.serve(tx.clone()));
    }
    Ok(())
}

fn remove_pidfile(p: Option<PathBuf>) {
    if let Some(p) = p {
        let _ = std::fs::remove_file(p);
    }
}

fn set_procname(name: &str) {
    match std::ffi::CString::new(name) {
        Ok(c) => {
            if let Err(e) = nix::sys::prctl::set_name(&c) {
                tracing::warn!(error = %e, "cannot set the process name");
            }
        }
        Err(_) => tracing::warn!("--emperor-procname contains a NUL byte; ignored"),
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMPERIUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        use std::io::IsTerminal;
        b.with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
}

fn install_signals(tx: mpsc::Sender<Command>) -> Result<()> {
    // SIGPIPE stays ignored (Rust's default, and uWSGI's).
    let table: [(SignalKind, fn() -> Command); 7] = [
        (SignalKind::hangup(), || Command::ReloadAll),
        (SignalKind::interrupt(), || Command::Shutdown),
        (SignalKind::terminate(), || Command::Shutdown),
        (SignalKind::quit(), || Command::Shutdown),
        (SignalKind::from_raw(nix::libc::SIGURG), || {
            Command::ClearBlacklist
        }),
        (SignalKind::user_defined1(), || Command::LogVassals),
        (SignalKind::window_change(), || Command::Rescan),
    ];
    // a blocked signal is inherited across exec: a parent that left SIGTERM
    // blocked would make the emperor deaf to it. Unblock what is handled
    // (the runtime has this one thread; threads started later inherit it).
    let mut handled = nix::sys::signal::SigSet::empty();
    for (kind, _) in &table {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(kind.as_raw_value()) {
            handled.add(sig);
        }
    }
    handled
        .thread_unblock()
        .context("cannot unblock the signals the emperor handles")?;
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
    Ok(())
}
