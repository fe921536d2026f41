//! Ctrl-C (SIGINT), SIGTERM or SIGHUP in the middle of a run: stop
//! everything the harness started (emperors, their vassals, the floor's
//! vassals, PostgreSQL and psql), then exit with 130.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::emperor::signal;
use crate::procfs;

/// Handles the three signals on a thread of its own (signal-hook: a
/// handler that wakes the thread). Not by blocking them and waiting: a
/// blocked mask is inherited across exec, and the emperors started
/// afterwards would not see their own SIGINT.
pub fn install() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("install handlers for SIGINT/SIGTERM/SIGHUP")?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let Some(sig) = signals.forever().next() else {
                return;
            };
            let name = Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("signal");
            eprintln!("\nimperium-bench: {name}: stopping every process it started");
            stop_all(Duration::from_secs(5));
            std::process::exit(130);
        })
        .context("start the signal thread")?;
    Ok(())
}

/// Every process below this one, parents before children.
fn descendants() -> Vec<u32> {
    let mut out = Vec::new();
    let mut next = vec![std::process::id()];
    while let Some(p) = next.pop() {
        for c in procfs::children(p) {
            out.push(c);
            next.push(c);
        }
    }
    out
}

/// SIGINT to the whole tree (Ragnarok for the emperors, a fast shutdown
/// for PostgreSQL), `grace` to finish, then SIGKILL to what is left.
fn stop_all(grace: Duration) {
    let tree = descendants();
    for &p in &tree {
        signal(p, Signal::SIGINT);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && tree.iter().any(|&p| procfs::alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in descendants() {
        if procfs::alive(p) {
            signal(p, Signal::SIGKILL);
        }
    }
}
