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
use crate::spec::{Change, MonitorHealth};

/// Index of a monitor in the order of the `--emperor` options.
pub type MonitorId = usize;

/// Settings every monitor may read.
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
    /// `--emperor-pg-channel`: the LISTEN channel of pg:// monitors.
    pub pg_channel: String,
    /// The DN ldap:// monitors bind as when their URL names none
    /// (`bindname=` extension); `None` binds anonymously.
    pub ldap_bind_dn: Option<String>,
    /// The password for [`MonitorOptions::ldap_bind_dn`] when the URL gives
    /// none (`x-bindpw=` / `x-bindpw-file=` extensions).
    pub ldap_bind_password: Option<Secret>,
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

/// Where file monitors find on-demand sockets (reference §11); database and
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
            pg_channel: "imperium".to_string(),
            ldap_bind_dn: None,
            ldap_bind_password: None,
            on_demand: OnDemandSource::None,
        }
    }
}

/// A change tagged with the monitor that sent it.
#[derive(Debug)]
pub struct MonitorMessage {
    pub monitor: MonitorId,
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
        }
    }

    /// Sends a change to the emperor. Returns false once the emperor is
    /// gone; the monitor should then return.
    pub async fn send(&self, change: Change) -> bool {
        self.tx
            .send(MonitorMessage {
                monitor: self.id,
                change,
                seen: std::time::Instant::now(),
            })
            .await
            .is_ok()
    }

    /// Reports the monitor's health (logged by the emperor on changes).
    pub async fn health(&self, health: MonitorHealth) -> bool {
        self.send(Change::Health(health)).await
    }

    /// Waits until a rescan is requested. Cancel-safe.
    pub async fn rescan_requested(&mut self) {
        if self.rescan.changed().await.is_err() {
            // the sender is gone: never resolve again
            std::future::pending::<()>().await;
        }
    }

    /// True when the emperor has stopped listening.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
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
    BadUrl { url: String, reason: String },
    #[error("{url}: scheme {scheme}:// is not built into this binary (enable the cargo feature \"{scheme}\")")]
    NotBuilt { url: String, scheme: String },
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
}
