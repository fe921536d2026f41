//! What a monitor says about its source: vassal specs and changes.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::name::VassalName;

/// Where a vassal's config comes from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ConfigSource {
    /// A config file. The vassal is started as `uwsgi --ini <path>`; `path`
    /// is passed as given (relative paths resolve against the vassal's
    /// working directory, see [`VassalSpec::workdir`]).
    File(PathBuf),
    /// Config text from a database or a message, passed over the config
    /// pipe; the vassal is started as `uwsgi --ini emperor://<name>`.
    Inline(Arc<str>),
    /// A URL the vassal fetches itself (`uwsgi --ini http://...`).
    Url(String),
}

impl fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "File({})", p.display()),
            ConfigSource::Inline(t) => write!(f, "Inline({} bytes)", t.len()),
            ConfigSource::Url(u) => write!(f, "Url({u})"),
        }
    }
}

/// The change key of a spec: when it moves, the vassal is reloaded.
///
/// * [`ChangeKey::File`]: any difference reloads (so an mtime that goes
///   backwards, or two edits within one second, both reload).
/// * [`ChangeKey::Stamp`]: only a larger stamp reloads, as uWSGI's
///   `ts > last_mod` rule for databases and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKey {
    /// A file's identity and contents marker.
    File {
        /// Modification time, in nanoseconds since the epoch.
        mtime_ns: i128,
        /// Inode number.
        ino: u64,
        /// Size in bytes.
        size: u64,
    },
    /// A timestamp in nanoseconds since the epoch, a revision or a counter.
    Stamp(i128),
}

impl ChangeKey {
    /// True when moving from `old` to `self` means "reload".
    pub fn is_newer_than(&self, old: &ChangeKey) -> bool {
        match (self, old) {
            (ChangeKey::Stamp(new), ChangeKey::Stamp(old)) => new > old,
            (a, b) => a != b,
        }
    }

    /// A stamp from seconds since the epoch (possibly fractional).
    pub fn from_secs_f64(secs: f64) -> ChangeKey {
        ChangeKey::Stamp((secs * 1e9) as i128)
    }

    /// Seconds since the epoch of this key, for display (`last_mod` in stats).
    pub fn as_secs(&self) -> i64 {
        match self {
            ChangeKey::File { mtime_ns, .. } => (mtime_ns / 1_000_000_000) as i64,
            ChangeKey::Stamp(ns) => (ns / 1_000_000_000) as i64,
        }
    }
}

/// `file:MTIME_NS:INO:SIZE` or `stamp:N`: exact, and read back by
/// [`ChangeKey::from_str`](std::str::FromStr) (`imperium plan` compares
/// a running emperor's keys with what the sources say now).
///
/// ```
/// use emperor::ChangeKey;
/// let k = ChangeKey::File { mtime_ns: 1_700_000_000_123, ino: 42, size: 9 };
/// assert_eq!(k.to_string(), "file:1700000000123:42:9");
/// assert_eq!("file:1700000000123:42:9".parse::<ChangeKey>(), Ok(k));
/// assert_eq!("stamp:-5".parse::<ChangeKey>(), Ok(ChangeKey::Stamp(-5)));
/// assert!("stamp:x".parse::<ChangeKey>().is_err());
/// ```
impl std::fmt::Display for ChangeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeKey::File {
                mtime_ns,
                ino,
                size,
            } => write!(f, "file:{mtime_ns}:{ino}:{size}"),
            ChangeKey::Stamp(n) => write!(f, "stamp:{n}"),
        }
    }
}

impl std::str::FromStr for ChangeKey {
    type Err = String;

    fn from_str(s: &str) -> Result<ChangeKey, String> {
        let bad = || format!("{s:?} is not a change key (file:MTIME_NS:INO:SIZE or stamp:N)");
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["stamp", n] => n.parse().map(ChangeKey::Stamp).map_err(|_| bad()),
            ["file", m, i, z] => Ok(ChangeKey::File {
                mtime_ns: m.parse().map_err(|_| bad())?,
                ino: i.parse().map_err(|_| bad())?,
                size: z.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }
}

/// The owner a vassal runs as in tyrant mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

/// One vassal as its monitor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VassalSpec {
    /// The vassal id (a basename for dir://, a path for glob://, the name
    /// column or field for databases).
    pub name: VassalName,
    /// Where the config comes from.
    pub config: ConfigSource,
    /// The change key; a newer key reloads the vassal.
    pub key: ChangeKey,
    /// The uid/gid the source gives (file owner, database columns). Used
    /// only in tyrant mode.
    pub owner: Option<Owner>,
    /// The on-demand socket, if any (`None` = a normal vassal).
    pub socket: Option<String>,
    /// The working directory of the vassal process (the monitored directory
    /// for dir://, so relative config names resolve where they were found).
    /// `None` means the emperor's own working directory.
    pub workdir: Option<PathBuf>,
    /// Limits the source's record sets for this vassal (fields beside the
    /// config, where the source can carry them: pg:// columns, mongodb://
    /// fields); each replaces the vassal's `[imperium]` section's and the
    /// emperor-wide one. `None` for most vassals (boxed: most specs carry
    /// none).
    pub limits: Option<Box<crate::cgroup::limits::Limits>>,
}

impl VassalSpec {
    /// A spec for config text passed over the config pipe.
    pub fn inline(name: VassalName, text: impl Into<Arc<str>>, key: ChangeKey) -> VassalSpec {
        VassalSpec {
            name,
            config: ConfigSource::Inline(text.into()),
            key,
            owner: None,
            socket: None,
            workdir: None,
            limits: None,
        }
    }
}

/// The health of one monitor, as shown in logs and stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorHealth {
    /// Reading the source works.
    Connected,
    /// The source could not be read for now; running vassals are kept and
    /// the monitor retries by itself.
    Degraded(String),
    /// The monitor gave up (its task ended). Running vassals are kept.
    Failed(String),
}

/// What a monitor tells the emperor.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The full set of vassals this monitor owns now: anything it owned
    /// before and is not in the set is stopped.
    Snapshot(Vec<VassalSpec>),
    /// One vassal added or changed.
    Upsert(VassalSpec),
    /// One vassal removed.
    Remove(VassalName),
    /// The monitor's state changed. Never implies removals.
    Health(MonitorHealth),
}
