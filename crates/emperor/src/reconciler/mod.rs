//! The reconciler: the vassal table and every lifecycle decision, with no
//! I/O. Feed it inputs (monitor changes, vassal messages, exits, timer
//! ticks, operator commands) with the current time; it returns the
//! [`Action`]s to carry out. The runtime does the I/O.
//!
//! The per-vassal state machine follows uWSGI (docs/architecture.md, "The vassal state machine"), made
//! deterministic: each exit is seen once, by instance id; exit code 26 exiles
//! the vassal until its config changes; any other unexpected exit respawns,
//! throttled by the blacklist (non-loyal) or the loyal backoff; a refused
//! respawn is scheduled on a timer, never lost.

//!
//! The code is split along its concerns: the vassal model
//! (`vassal.rs`: [`Vassal`], its [`Phase`] and the operator's overlays),
//! monitor changes (`changes.rs`), process control and the runtime's reports
//! (`process.rs`), timers (`timers.rs`) and operator commands
//! (`operator.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::{Counters, Event};
use crate::monitor::MonitorId;
use crate::name::VassalName;
use crate::spec::{ConfigSource, MonitorHealth, Owner, VassalSpec};
use crate::throttle::{Blacklist, ThrottleConfig};

mod adopt;
mod changes;
mod check;
mod health;
mod operator;
mod placement;
mod process;
mod swap;
mod timers;
mod upgrade;
mod vassal;

pub use adopt::Adopted;
pub use operator::OperatorError;
pub use swap::Successor;
pub use upgrade::{busy_reason, restore_exit, save_exit};
pub use vassal::{HealthState, Phase, Proc, ProcHealth, Rejection, Vassal, VassalState};

/// The shortest wait before a vassal that could not be started is tried
/// again (uWSGI tries again at its next scan, every `--emperor-freq`).
pub const SPAWN_RETRY_MIN: Duration = Duration::from_secs(1);

/// The first wait before a spawn deferred by a resource that ran out
/// (EMFILE, ENFILE, EAGAIN, ENOMEM) is tried again; each deferral in a row
/// doubles it, up to [`SPAWN_DEFER_MAX`], and a spawn that succeeds resets
/// it.
pub const SPAWN_DEFER_MIN: Duration = Duration::from_millis(100);
/// The longest wait before a deferred spawn is tried again.
pub const SPAWN_DEFER_MAX: Duration = Duration::from_secs(5);

/// Spawns deferred by resource errors since the last spawn that
/// succeeded: one warning per burst, and the backoff they share.
#[derive(Debug)]
struct DeferBurst {
    /// Deferrals in this burst (0: no burst).
    count: u64,
    /// The wait the next deferral gets.
    backoff: Duration,
}

impl Default for DeferBurst {
    fn default() -> Self {
        DeferBurst {
            count: 0,
            backoff: SPAWN_DEFER_MIN,
        }
    }
}

/// Identifies one process of a vassal; never reused.
pub type InstanceId = u64;

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// The blacklist and loyal backoff settings.
    pub throttle: ThrottleConfig,
    /// `--emperor-graceful-shutdown`: stop with byte 2 instead of 0.
    pub graceful_shutdown: bool,
    /// `--emperor-curse-tolerance` (30 s).
    pub curse_tolerance: Duration,
    /// `--emperor-required-heartbeat` (30 s).
    pub required_heartbeat: Duration,
    /// `--emperor-tyrant`: run every vassal as the owner its source gives
    /// (`None`: tyrant mode off, vassals run as the emperor's user).
    pub tyrant: Option<TyrantConfig>,
    /// `--emperor-broodlord N`: the most zergs alive at once (0: off).
    pub broodlord: usize,
    /// `--vassals-stop-hook` is set: emit [`Action::StopHook`] for each
    /// vassal that leaves the table.
    pub stop_hook: bool,
    /// `--emperor-reload-mode`: how a changed config reaches a running
    /// vassal.
    pub reload_mode: ReloadMode,
    /// `--emperor-swap-timeout`: how long a successor may take to serve.
    pub swap_timeout: Duration,
    /// `--emperor-cluster`: a vassal runs only once the cluster placed it
    /// here ([`Reconciler::place`]); the cluster is told what the table
    /// wants ([`Reconciler::take_cluster_notes`]).
    pub cluster: bool,
}

/// How a changed config reaches a running vassal (`--emperor-reload-mode`,
/// docs/reloads.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReloadMode {
    /// Send the reload at once (uWSGI's behaviour).
    #[default]
    Inplace,
    /// Check the new config first ([`Action::Check`]); a change that fails
    /// its check is rejected and the running instance keeps its config.
    Checked,
    /// Start a second process with the new config beside the running one
    /// and stop the old one once the new one serves; a new one that does
    /// not serve in time is stopped and the change rejected.
    Swap,
}

/// Tyrant mode settings (docs/tyrant.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TyrantConfig {
    /// `--emperor-tyrant-min-uid` (1): owners with a smaller uid are refused.
    pub min_uid: u32,
    /// `--emperor-tyrant-min-gid` (1): owners with a smaller gid are refused.
    pub min_gid: u32,
}

impl Default for TyrantConfig {
    fn default() -> Self {
        TyrantConfig {
            min_uid: 1,
            min_gid: 1,
        }
    }
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            throttle: ThrottleConfig::default(),
            graceful_shutdown: false,
            curse_tolerance: Duration::from_secs(30),
            required_heartbeat: Duration::from_secs(30),
            tyrant: None,
            broodlord: 0,
            stop_hook: false,
            reload_mode: ReloadMode::Inplace,
            swap_timeout: Duration::from_secs(60),
            cluster: false,
        }
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a process for `spec` as instance `instance`; then report
    /// [`Reconciler::spawned`], [`Reconciler::spawn_failed`] or
    /// [`Reconciler::spawn_deferred`]. For inline
    /// configs the runtime pushes the config right after the spawn.
    ///
    /// `spec.owner` is set only in tyrant mode: the process runs as that
    /// user. When `spec.socket` is set, the on-demand socket of the vassal
    /// (see [`Action::Listen`]) goes on fd 0. A zerg (`NAME:zerg:N`, see
    /// [`VassalName::zerg_parts`]) is launched as `NAME:zerg`.
    Spawn {
        /// The instance.
        instance: InstanceId,
        /// What to run.
        spec: VassalSpec,
    },
    /// Write one protocol byte to the instance's control socket.
    Send {
        /// The instance.
        instance: InstanceId,
        /// The byte.
        byte: u8,
    },
    /// Write a config packet to the instance's config socket.
    PushConfig {
        /// The instance.
        instance: InstanceId,
        /// The config text.
        config: Arc<str>,
    },
    /// SIGKILL the instance (never a pid ≤ 0: the runtime kills by handle).
    Kill {
        /// The instance.
        instance: InstanceId,
    },
    /// Make sure the on-demand socket of `name` is bound at `address` (keep
    /// it when it already is, so queued connections survive) and watch it
    /// for one pending connection, then report
    /// [`Reconciler::on_demand_connection`] (or
    /// [`Reconciler::listen_failed`]). The runtime never accepts.
    /// A relative UNIX path resolves against `workdir` (the emperor's
    /// directory when `None`), like the vassal's own relative paths.
    Listen {
        /// The vassal.
        name: VassalName,
        /// The socket address.
        address: String,
        /// The directory a relative UNIX path resolves against.
        workdir: Option<std::path::PathBuf>,
    },
    /// Close the on-demand socket of `name` (removed, or no longer on demand).
    Unlisten {
        /// The vassal.
        name: VassalName,
    },
    /// `--vassals-stop-hook`: `name` has left the table (removed, or at
    /// shutdown); run the hook for it.
    StopHook {
        /// The vassal.
        name: VassalName,
    },
    /// `--emperor-reload-mode checked`: check the changed config of a
    /// running vassal (`spec.key` names the change), then report
    /// [`Reconciler::check_done`]. Nothing is sent to the vassal meanwhile.
    Check {
        /// What it should run now.
        spec: VassalSpec,
    },
}

/// Why a running instance is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StopReason {
    /// Its config disappeared from the source.
    Removed,
    /// It must start again (a change that a reload cannot apply).
    Restart,
    /// It closed its control pipe.
    PipeClosed,
    /// It asked to be stopped (byte 22).
    Idle,
    /// The emperor is shutting down.
    Shutdown,
    /// An operator stopped it (`imperium ctl stop`): it stays down.
    Operator,
    /// `--emperor-cluster`: this emperor holds no claim on it any more.
    Unplaced,
}

/// Health of one monitor as the emperor knows it.
#[derive(Debug, Clone)]
pub struct MonitorState {
    /// The monitor's URL, as shown.
    pub url: String,
    /// Its last reported health (`None`: nothing reported yet).
    pub health: Option<MonitorHealth>,
}

/// The vassal table and its decisions.
pub struct Reconciler {
    cfg: ReconcilerConfig,
    /// Boxed: a B-tree node holds eleven values inline and splits half
    /// empty on in-order inserts, which doubled the table's memory.
    vassals: BTreeMap<VassalName, Box<Vassal>>,
    by_instance: HashMap<InstanceId, VassalName>,
    blacklist: Blacklist,
    monitors: Vec<MonitorState>,
    next_instance: InstanceId,
    shutting_down: bool,
    counters: Counters,
    conflicts_reported: HashSet<(VassalName, MonitorId)>,
    /// A name another monitor also wanted became free: that monitor must
    /// say again what it has (monitors do not resend unchanged sources).
    rescan_wanted: bool,
    /// Wall-clock time is derived from the `now` every input carries: this
    /// instant was this wall time (see [`Reconciler::set_wall_anchor`]).
    wall_anchor: (Instant, std::time::SystemTime),
    deferred: DeferBurst,
    /// `--emperor-reload-mode swap`: each successor process, by instance.
    swaps: HashMap<InstanceId, VassalName>,
    /// Old processes told to stop after a swap, by instance.
    retiring: HashMap<InstanceId, swap::Retiring>,
    /// `--emperor-cluster`: what the cluster must be told.
    cluster_notes: Vec<crate::cluster::ClusterInput>,
    /// `--emperor-cluster`: the cluster as its engine sees it.
    cluster_view: Option<crate::cluster::SharedView>,
}

/// The wall-clock time of `now`, from an anchor pair.
fn wall_at(anchor: (Instant, std::time::SystemTime), now: Instant) -> std::time::SystemTime {
    match now.checked_duration_since(anchor.0) {
        Some(d) => anchor.1 + d,
        None => anchor.1 - anchor.0.duration_since(now),
    }
}

impl Reconciler {
    /// A reconciler for monitors whose URLs (as shown) are `monitors`.
    pub fn new(cfg: ReconcilerConfig, monitors: Vec<String>) -> Self {
        Reconciler {
            cfg,
            vassals: BTreeMap::new(),
            by_instance: HashMap::new(),
            blacklist: Blacklist::default(),
            monitors: monitors
                .into_iter()
                .map(|url| MonitorState { url, health: None })
                .collect(),
            next_instance: 1,
            shutting_down: false,
            counters: Counters::default(),
            conflicts_reported: HashSet::new(),
            rescan_wanted: false,
            wall_anchor: (Instant::now(), std::time::SystemTime::now()),
            deferred: DeferBurst::default(),
            swaps: HashMap::new(),
            retiring: HashMap::new(),
            cluster_notes: Vec::new(),
            cluster_view: None,
        }
    }

    /// Sets which wall-clock time the instant `at` is. The reconciler never
    /// reads the wall clock itself: every time it records for the stats
    /// (when a vassal was born, started, last said it was ready) is the
    /// `now` of the input, placed on the wall clock through this anchor,
    /// which [`Reconciler::new`] takes from the system once. Tests set it to
    /// get exact stats times.
    pub fn set_wall_anchor(&mut self, at: Instant, wall: std::time::SystemTime) {
        self.wall_anchor = (at, wall);
    }

    /// The vassal table.
    pub fn vassals(&self) -> impl Iterator<Item = &Vassal> {
        self.vassals.values().map(|v| &**v)
    }

    /// One vassal.
    pub fn vassal(&self, name: &str) -> Option<&Vassal> {
        self.vassals.get(name).map(|v| &**v)
    }

    /// The blacklist.
    pub fn blacklist(&self) -> &Blacklist {
        &self.blacklist
    }

    /// The monitors and their health.
    pub fn monitors(&self) -> &[MonitorState] {
        &self.monitors
    }

    /// The event counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// True once [`Reconciler::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Number of vassal processes alive (or starting).
    pub fn running(&self) -> usize {
        self.vassals.values().filter(|v| v.proc().is_some()).count() + self.swap_processes()
    }

    /// Number of broodlord zergs in the table (what `--emperor-broodlord`
    /// limits).
    pub fn zergs(&self) -> usize {
        self.vassals.values().filter(|v| v.is_zerg()).count()
    }

    /// What the cluster must be told since the last call
    /// (`--emperor-cluster`): vassals wanted and gone, processes running
    /// and stopped after an unplace.
    pub fn take_cluster_notes(&mut self) -> Vec<crate::cluster::ClusterInput> {
        std::mem::take(&mut self.cluster_notes)
    }

    /// The cluster view observers see (`--emperor-cluster`).
    pub fn set_cluster_view(&mut self, view: crate::cluster::SharedView) {
        self.cluster_view = Some(view);
    }

    /// The cluster as its engine sees it now, with `--emperor-cluster`.
    pub fn cluster_view(&self) -> Option<crate::cluster::ClusterView> {
        self.cluster_view.as_ref().map(|v| {
            v.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }

    fn note_cluster(&mut self, zerg: bool, input: crate::cluster::ClusterInput) {
        if self.cfg.cluster && !zerg {
            self.cluster_notes.push(input);
        }
    }

    fn emit(&mut self, e: Event<'_>) {
        e.record(&mut self.counters);
    }

    /// Records an event seen outside the reconciler (for example the
    /// reaction latency measured by the runtime), so that it is logged and
    /// counted in the same place as every other event.
    pub fn note(&mut self, e: Event<'_>) {
        self.emit(e);
    }
}

/// Why tyrant mode refuses `owner`, or `None` when it may run.
fn tyrant_refusal(t: &TyrantConfig, owner: Option<Owner>) -> Option<String> {
    let Some(o) = owner else {
        return Some(
            "tyrant mode needs an owner, but its source gives no uid/gid (give the uid and gid columns, fields or message parts)"
                .to_string(),
        );
    };
    if o.uid >= t.min_uid && o.gid >= t.min_gid {
        return None;
    }
    let what = if o.uid == 0 || o.gid == 0 {
        "tyrant mode never runs a vassal as root".to_string()
    } else {
        format!(
            "the lowest allowed uid/gid is {}/{} (--emperor-tyrant-min-uid, --emperor-tyrant-min-gid)",
            t.min_uid, t.min_gid
        )
    };
    Some(format!(
        "it is owned by uid {} gid {} and {what}; give it an unprivileged owner (for a file: chown USER:GROUP FILE; for a database or message: its uid and gid values)",
        o.uid, o.gid
    ))
}

/// The spec of a zerg of `base`: the base config's `[zerg]` section
/// (uWSGI's `file:section` syntax; for config text, the runtime launches
/// `emperor://NAME:zerg` and pushes the whole text), the base's owner and
/// directory, never on demand.
fn zerg_spec(base: &VassalSpec, name: VassalName) -> VassalSpec {
    let config = match &base.config {
        ConfigSource::File(p) => {
            let mut s = p.clone().into_os_string();
            s.push(":zerg");
            ConfigSource::File(s.into())
        }
        ConfigSource::Url(u) => ConfigSource::Url(format!("{u}:zerg")),
        ConfigSource::Inline(t) => ConfigSource::Inline(t.clone()),
    };
    VassalSpec {
        name,
        config,
        key: base.key,
        owner: base.owner,
        socket: None,
        workdir: base.workdir.clone(),
        limits: None,
    }
}

#[cfg(test)]
mod tests;
