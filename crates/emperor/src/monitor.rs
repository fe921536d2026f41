//! The seam between monitors and the emperor.
//!
//! A monitor is a task that watches one source and sends [`Change`]s through
//! its [`MonitorContext`]. It never touches processes. The emperor owns the
//! vassal table and turns changes into spawns, reloads and stops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use crate::name::Extensions;
use crate::spec::{Change, MonitorHealth, VassalSpec};

/// Index of a monitor in the order of the `--emperor` options.
pub type MonitorId = usize;

/// Settings every monitor may read. Options of one monitor only (the pg
/// channel, the LDAP bind) are not here: each monitor declares its own, and
/// the command line hands them over through the monitors crate.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// `--emperor-freq`: the period of the safety rescan / poll.
    pub freq: Duration,
    /// Accepted config extensions.
    pub extensions: Extensions,
    /// `--emperor-nofollow`: lstat instead of stat, accept symlinks.
    pub nofollow: bool,
    /// `--emperor-tyrant-nofollow`: file owner from lstat.
    pub tyrant_nofollow: bool,
    /// The emperor's working directory at start-up (glob patterns and
    /// relative config paths resolve against it).
    pub cwd: PathBuf,
    /// Where file monitors (dir, glob) find the on-demand socket of a vassal.
    pub on_demand: OnDemandSource,
}

/// A password or other secret: its `Debug` and `Display` never show it, so
/// it cannot leak into logs through `{:?}` of a struct that holds it.
///
/// ```
/// let pw = emperor::Secret::new("hunter2");
/// assert_eq!(format!("{pw:?}"), "Secret(***)");
/// assert_eq!(pw.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one call that needs it (a bind).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where file monitors find on-demand sockets (docs/on-demand.md); database and
/// message monitors carry the socket in their records instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OnDemandSource {
    /// No file vassal is on demand.
    #[default]
    None,
    /// `--emperor-on-demand-extension EXT`: the first line of the file
    /// `NAME` + `EXT` next to the config (`app.ini.socket`).
    Extension(String),
    /// `--emperor-on-demand-directory DIR`: `DIR/<name without its last
    /// extension>.socket` (a UNIX socket).
    Directory(PathBuf),
    /// `--emperor-on-demand-exec CMD`: the first line `CMD NAME` prints
    /// (run through `/bin/sh`, the name passed as a separate argument).
    Exec(String),
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            freq: Duration::from_secs(3),
            extensions: Extensions::default(),
            nofollow: false,
            tyrant_nofollow: false,
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            on_demand: OnDemandSource::None,
        }
    }
}

/// A change tagged with the monitor that sent it.
#[derive(Debug)]
pub struct MonitorMessage {
    /// The monitor that sent it.
    pub monitor: MonitorId,
    /// The change.
    pub change: Change,
    /// When the monitor sent it (the start of the reaction latency).
    pub seen: std::time::Instant,
}

/// What a monitor task gets to talk to the emperor.
#[derive(Debug, Clone)]
pub struct MonitorContext {
    /// This monitor's id.
    pub id: MonitorId,
    /// Shared settings.
    pub options: Arc<MonitorOptions>,
    tx: mpsc::Sender<MonitorMessage>,
    rescan: watch::Receiver<u64>,
    /// Shared by clones: they speak for the same source.
    sync: Arc<std::sync::Mutex<SnapshotSync>>,
}

/// Whether the emperor already has what a snapshot would tell it.
#[derive(Debug, Default)]
struct SnapshotSync {
    /// Randomly keyed, so names in a source cannot be chosen to collide.
    hasher: std::hash::RandomState,
    /// The fingerprint of the last snapshot sent by `send_if_changed`, while
    /// nothing sent since (another snapshot, a targeted change, a degraded
    /// health) has changed the emperor's view.
    last: Option<u64>,
    /// A rescan was requested: the next snapshot is sent even if unchanged.
    forced: bool,
}

impl SnapshotSync {
    /// True when `specs` differs from the last snapshot sent through
    /// [`MonitorContext::send_if_changed`] (or a rescan was requested);
    /// remembers it.
    fn changed(&mut self, specs: &[VassalSpec]) -> bool {
        let print = std::hash::BuildHasher::hash_one(&self.hasher, specs);
        let unchanged = self.last == Some(print) && !self.forced;
        self.last = Some(print);
        self.forced = false;
        !unchanged
    }

    /// Forgets the fingerprint when `change` moves the emperor's view away
    /// from the last snapshot (a plain "connected" does not).
    fn note(&mut self, change: &Change) {
        if !matches!(change, Change::Health(MonitorHealth::Connected)) {
            self.last = None;
        }
    }
}

impl MonitorContext {
    /// Builds a context; `rescan` is bumped when a full rescan is wanted
    /// (SIGWINCH, a control command).
    pub fn new(
        id: MonitorId,
        options: Arc<MonitorOptions>,
        tx: mpsc::Sender<MonitorMessage>,
        rescan: watch::Receiver<u64>,
    ) -> Self {
        MonitorContext {
            id,
            options,
            tx,
            rescan,
            sync: Arc::default(),
        }
    }

    /// Sends a change to the emperor. Returns false once the emperor is
    /// gone; the monitor should then return.
    pub async fn send(&self, change: Change) -> bool {
        self.sync().note(&change);
        self.tx
            .send(MonitorMessage {
                monitor: self.id,
                change,
                seen: std::time::Instant::now(),
            })
            .await
            .is_ok()
    }

    /// Sends `specs` as a snapshot unless it equals the last one sent this
    /// way and nothing else was sent in between, so that a source polled
    /// every `--emperor-freq` costs an idle emperor nothing. After
    /// [`MonitorContext::rescan_requested`] the next one is always sent.
    /// Returns false once the emperor is gone.
    pub async fn send_if_changed(&self, specs: Vec<VassalSpec>) -> bool {
        if !self.sync().changed(&specs) {
            return !self.is_closed();
        }
        self.tx
            .send(MonitorMessage {
                monitor: self.id,
                change: Change::Snapshot(specs),
                seen: std::time::Instant::now(),
            })
            .await
            .is_ok()
    }

    /// The fingerprint of the last snapshot sent through
    /// [`MonitorContext::send_if_changed`] while it is still the emperor's
    /// view of this source: `None` once anything else was sent or a rescan
    /// was requested. A source that can tell cheaply that it holds what it
    /// held at that snapshot may then skip building the next one.
    pub fn current_snapshot(&self) -> Option<u64> {
        let s = self.sync();
        if s.forced {
            None
        } else {
            s.last
        }
    }

    fn sync(&self) -> std::sync::MutexGuard<'_, SnapshotSync> {
        // a poisoned lock only means a panic elsewhere mid-update of two
        // plain fields
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports the monitor's health (logged by the emperor on changes).
    pub async fn health(&self, health: MonitorHealth) -> bool {
        self.send(Change::Health(health)).await
    }

    /// Waits until a rescan is requested; the next snapshot is then sent
    /// even if unchanged. Cancel-safe.
    pub async fn rescan_requested(&mut self) {
        if self.rescan.changed().await.is_err() {
            // the sender is gone: never resolve again
            std::future::pending::<()>().await;
        }
        self.sync().forced = true;
    }

    /// True when the emperor has stopped listening.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the emperor has stopped listening, so that a monitor
    /// waiting for its source needs no timer to notice. Cancel-safe.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Waits for a rescan request (as [`MonitorContext::rescan_requested`])
    /// or for the emperor to stop listening: true for a rescan, false once
    /// the emperor is gone. Cancel-safe.
    pub async fn rescan_or_closed(&mut self) -> bool {
        let rescan = async {
            if self.rescan.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = rescan => {}
            _ = self.tx.closed() => return false,
        }
        self.sync().forced = true;
        true
    }
}

/// One configured source of vassals (one `--emperor` value).
pub trait Monitor: Send + 'static {
    /// The URL as shown in logs and stats, with any password removed.
    fn describe(&self) -> String;

    /// Watches the source until the emperor goes away.
    ///
    /// Rules (see docs/architecture.md): an error reading the source is a
    /// [`MonitorHealth::Degraded`] change, never an empty snapshot; the
    /// monitor reconnects by itself with capped backoff; bad records are
    /// logged with the reason and skipped.
    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()>;
}

/// Errors from building a monitor out of its URL (start-up errors).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{url}: {reason}")]
    /// The `--emperor` value cannot be used.
    BadUrl {
        /// The URL, as shown (passwords masked).
        url: String,
        /// Why.
        reason: String,
    },
    #[error("{url}: scheme {scheme}:// is not built into this binary (enable the cargo feature \"{scheme}\")")]
    /// The scheme's cargo feature was off when this binary was built.
    NotBuilt {
        /// The URL, as shown (passwords masked).
        url: String,
        /// The scheme.
        scheme: String,
    },
    #[error("{url}: {source}")]
    /// The source cannot be read at start-up.
    Io {
        /// The URL, as shown (passwords masked).
        url: String,
        #[source]
        /// The error.
        source: std::io::Error,
    },
    /// A monitor-specific option (`--OPTION`) has a value its monitor refuses.
    #[error("--{option}: {reason}")]
    BadOption {
        /// The option, without its dashes.
        option: String,
        /// Why.
        reason: String,
    },
    /// The file a monitor-specific option names cannot be read.
    #[error("--{option} {}: {error}", path.display())]
    OptionFile {
        /// The option, without its dashes.
        option: String,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        error: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{NamePolicy, VassalName};
    use crate::spec::{ChangeKey, VassalSpec};

    fn specs(ts: i128) -> Vec<VassalSpec> {
        let name = VassalName::parse("a.ini", &Extensions::default(), NamePolicy::Plain).unwrap();
        vec![VassalSpec::inline(name, "[uwsgi]", ChangeKey::Stamp(ts))]
    }

    #[test]
    fn an_unchanged_snapshot_is_not_resent_unless_something_came_between() {
        let mut s = SnapshotSync::default();
        assert!(s.changed(&specs(1)), "the first one");
        assert!(!s.changed(&specs(1)));
        assert!(s.changed(&specs(2)), "a change");
        assert!(!s.changed(&specs(2)));
        // a targeted change moved the emperor's view: the next one is sent
        s.note(&Change::Remove(
            VassalName::parse("b.ini", &Extensions::default(), NamePolicy::Plain).unwrap(),
        ));
        assert!(s.changed(&specs(2)));
        // an outage: the resync is sent; a plain "connected" changes nothing
        s.note(&Change::Health(MonitorHealth::Degraded("down".into())));
        assert!(s.changed(&specs(2)));
        s.note(&Change::Health(MonitorHealth::Connected));
        assert!(!s.changed(&specs(2)));
        // a requested rescan is always sent, once
        s.forced = true;
        assert!(s.changed(&specs(2)));
        assert!(!s.changed(&specs(2)));
    }
}
