//! The operators' and observers' way into the running emperor: signals,
//! the control socket, the stats and metrics servers send a [`Command`] to
//! the runtime's loop, which owns the reconciler.

use crate::reconciler::{Action, Reconciler};

/// Operator commands (signals, control socket).
pub enum Command {
    /// SIGHUP: reload every vassal gracefully.
    ReloadAll,
    /// SIGINT/SIGTERM/SIGQUIT: Ragnarok.
    Shutdown,
    /// SIGURG: clear the blacklist.
    ClearBlacklist,
    /// SIGUSR1: log one line per vassal.
    LogVassals,
    /// SIGWINCH: rescan every monitor.
    Rescan,
    /// Read the table (stats, control socket).
    Inspect(Box<dyn FnOnce(&Reconciler) + Send>),
    /// Change the table (control socket): the closure calls one reconciler
    /// method with the current time and returns its actions, which the
    /// runtime carries out.
    Apply(ApplyFn),
    /// Find the captured output of a vassal (`imperium ctl logs`).
    Logs {
        /// The vassal.
        vassal: String,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<crate::logs::LogLookup>,
    },
    /// Close and open again every vassal log file (`imperium ctl logs
    /// --reopen`, after an external logrotate).
    ReopenLogs,
    /// Re-execute the emperor from a new binary, keeping every vassal
    /// (`imperium ctl upgrade`, SIGUSR2; docs/upgrade.md).
    Upgrade(UpgradeRequest),
}

/// A hot upgrade asked for.
pub struct UpgradeRequest {
    /// The binary to run (`None`: the one the emperor was started from).
    pub binary: Option<std::path::PathBuf>,
    /// The connection to answer once the new image has adopted every
    /// vassal (a duplicate of the control client's socket).
    pub answer: Option<std::os::fd::OwnedFd>,
    /// Told why, when the upgrade is refused (the running emperor carries
    /// on).
    pub refused: Option<tokio::sync::oneshot::Sender<String>>,
    /// Apply what changed in the emperor's config files (`ctl upgrade
    /// --reread-config`) instead of refusing a changed config.
    pub reread_config: bool,
}

/// The closure of [`Command::Apply`].
pub type ApplyFn = Box<dyn FnOnce(&mut Reconciler, std::time::Instant) -> Vec<Action> + Send>;
