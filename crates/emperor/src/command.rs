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
}

/// The closure of [`Command::Apply`].
pub type ApplyFn = Box<dyn FnOnce(&mut Reconciler, std::time::Instant) -> Vec<Action> + Send>;
