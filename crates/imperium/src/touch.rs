//! `--touch-reload`: when one of the files is touched (its modification
//! time changes), the emperor stops every vassal and re-executes itself
//! with its original command line, which re-reads its config files, as
//! uWSGI's master reloads itself. The files are checked once a second
//! (as uWSGI's master checks them); without the option nothing runs.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emperor::runtime::Command;
use tokio::sync::mpsc;

/// Set in the re-executed image's environment: the number of reloads so
/// far (uWSGI's `UWSGI_RELOADS`). Pidfiles are not written again and the
/// process does not daemonize again when it is set.
pub const RELOADS_VAR: &str = "IMPERIUM_RELOADS";

fn stamp(p: &PathBuf) -> Option<(i64, i64, u64)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.mtime(), m.mtime_nsec(), m.ino()))
}

/// Watches `files`; on the first change sets `reexec` and asks the emperor
/// to shut down (which stops every vassal).
pub fn watch(files: Vec<PathBuf>, tx: mpsc::Sender<Command>, reexec: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut last: Vec<_> = files.iter().map(stamp).collect();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (i, f) in files.iter().enumerate() {
                let now = stamp(f);
                if now != last[i] && now.is_some() {
                    tracing::info!(
                        "*** {} has been touched... reloading the emperor (every vassal is stopped and started again) ***",
                        f.display()
                    );
                    reexec.store(true, Ordering::SeqCst);
                    let _ = tx.send(Command::Shutdown).await;
                    return;
                }
                last[i] = now;
            }
        }
    });
}

/// The path the emperor's binary was started from. A binary replaced by a
/// package upgrade shows as "PATH (deleted)": PATH now holds the new one.
pub fn own_binary() -> std::io::Result<PathBuf> {
    let p = std::env::current_exe()?;
    Ok(match p.to_string_lossy().strip_suffix(" (deleted)") {
        Some(x) => PathBuf::from(x),
        None => p,
    })
}

/// Re-executes the emperor's own binary with `args` from `cwd` (the
/// directory it was started in, so relative config paths still resolve).
/// Returns only on failure.
pub fn reexec(args: &[OsString], cwd: &std::path::Path) -> anyhow::Error {
    let exe = match own_binary() {
        Ok(p) => p,
        Err(e) => return anyhow::anyhow!("--touch-reload: cannot find the emperor's binary: {e}"),
    };
    let reloads: u64 = std::env::var(RELOADS_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(args.iter().skip(1))
        .current_dir(cwd)
        .env(RELOADS_VAR, (reloads + 1).to_string());
    if let Some(a0) = args.first() {
        cmd.arg0(a0);
    }
    let e = cmd.exec();
    anyhow::anyhow!("--touch-reload: cannot re-execute {}: {e}", exe.display())
}
