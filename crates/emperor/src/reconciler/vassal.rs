//! One entry of the vassal table: what its source wants, the phase its
//! process is in (one enum whose variants carry their own data), and the
//! operator's overlays (stopped by an operator, reloads paused), kept apart
//! from the phase.

use std::time::{Instant, SystemTime};

use super::{InstanceId, StopReason};
use crate::events::ExitStatus;
use crate::monitor::MonitorId;
use crate::name::VassalName;
use crate::spec::{ChangeKey, VassalSpec};

/// One process of a vassal, from the spawn request on.
#[derive(Debug, Clone)]
pub struct Proc {
    /// The instance id the runtime reports it by.
    pub instance: InstanceId,
    /// When the spawn was asked for.
    pub started: Instant,
    /// The same, as wall-clock time (stats).
    pub started_wall: SystemTime,
    /// It sent byte 1 (ready) since its last (re)load.
    pub ready: bool,
    /// It sent byte 5 (accepting requests) since its last (re)load.
    pub accepting: bool,
    /// It sent byte 17 (loyal).
    pub loyal: bool,
    /// Its last heartbeat (byte 26), once it sent one.
    pub last_heartbeat: Option<Instant>,
    /// Its health check's state, when it has one (boxed: most vassals
    /// have none).
    pub health: Option<Box<ProcHealth>>,
}

/// The health of one process, as its probes found it.
#[derive(Debug, Clone)]
pub struct ProcHealth {
    /// The check, as shown.
    pub check: String,
    /// Failures in a row that restart it.
    pub allowed: u32,
    /// How long failures do not count after a start or reload.
    pub grace: std::time::Duration,
    /// Failures do not count before this instant (`None` after a reload:
    /// the grace period starts again with the next result).
    pub grace_until: Option<Instant>,
    /// It passed once since its start or last reload.
    pub passed: bool,
    /// Failures in a row now.
    pub failures: u32,
    /// The reason of the last failure, while the last probe failed.
    pub last_error: Option<String>,
    /// When the last probe ended (wall clock).
    pub last_check: Option<SystemTime>,
    /// It stayed unhealthy and was killed: further results are ignored.
    pub condemned: bool,
}

/// The health of a vassal as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Not probed since its start or reload.
    Unknown,
    /// Its last probe passed.
    Passing,
    /// Its last probe failed (within the failures allowed, or in grace).
    Failing,
    /// It failed too often and is being restarted.
    Unhealthy,
}

impl ProcHealth {
    /// Its state as a label.
    pub fn state(&self) -> HealthState {
        if self.condemned {
            HealthState::Unhealthy
        } else if self.last_check.is_none() {
            HealthState::Unknown
        } else if self.last_error.is_some() {
            HealthState::Failing
        } else {
            HealthState::Passing
        }
    }
}

impl Proc {
    /// A process of instance `instance` asked for at `started` (`wall` on
    /// the wall clock), with nothing heard from it yet.
    pub(super) fn new(instance: InstanceId, started: Instant, wall: SystemTime) -> Proc {
        Proc {
            instance,
            started,
            started_wall: wall,
            ready: false,
            accepting: false,
            loyal: false,
            last_heartbeat: None,
            health: None,
        }
    }

    /// It serves: it said it accepts requests (byte 5) since its last
    /// (re)load and, when it has a health check, passed it since.
    pub fn serving(&self) -> bool {
        self.accepting
            && self
                .health
                .as_ref()
                .is_none_or(|h| h.passed && !h.condemned)
    }
}

/// The lifecycle phase of a vassal.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Its process is being started: the runtime has not reported a pid yet.
    Starting(Proc),
    /// Its process runs.
    Running {
        /// The process.
        proc: Proc,
        /// Its pid (always > 0).
        pid: u32,
    },
    /// The emperor told its process to stop (uWSGI's "cursed").
    Stopping {
        /// The process.
        proc: Proc,
        /// Its pid, if the spawn had been reported.
        pid: Option<u32>,
        /// Why it is stopped (what happens at its exit).
        reason: StopReason,
        /// When it was told (uWSGI's `cursed_at`).
        since: Instant,
        /// When the next SIGKILL is due.
        kill_at: Instant,
    },
    /// No process; a (re)spawn is scheduled.
    Throttled {
        /// When it starts.
        respawn_at: Instant,
        /// On demand: a connection came and the spawn is waiting for the
        /// blacklist (it must not go back to listening).
        activated: bool,
    },
    /// On demand: its socket is held, waiting for a connection.
    OnDemand,
    /// Exit code 26 (uWSGI's "do not respawn"): waits for a config change.
    Exiled,
    /// Stopped on its own request (byte 22): waits for a config change.
    Idle,
    /// Refused (a config too large for the pipe, a root owner in tyrant
    /// mode, an on-demand socket that cannot be bound): waits for a change.
    Refused(String),
    /// No process and nothing scheduled: stopped by an operator.
    Stopped,
}

/// The phase of a vassal as a label, for logs, stats and `imperium ctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VassalState {
    /// [`Phase::Starting`].
    Starting,
    /// [`Phase::Running`].
    Running,
    /// [`Phase::Stopping`].
    Stopping,
    /// [`Phase::Throttled`]: waiting for a throttled respawn.
    Throttled,
    /// [`Phase::Exiled`].
    Exiled,
    /// [`Phase::Idle`].
    Idle,
    /// [`Phase::Refused`].
    Refused,
    /// [`Phase::OnDemand`]: waiting for a connection on its socket.
    OnDemand,
    /// [`Phase::Stopped`]: stopped by an operator, waits for `imperium ctl
    /// start`.
    Stopped,
}

impl Phase {
    /// The label of this phase.
    pub fn state(&self) -> VassalState {
        match self {
            Phase::Starting(_) => VassalState::Starting,
            Phase::Running { .. } => VassalState::Running,
            Phase::Stopping { .. } => VassalState::Stopping,
            Phase::Throttled { .. } => VassalState::Throttled,
            Phase::OnDemand => VassalState::OnDemand,
            Phase::Exiled => VassalState::Exiled,
            Phase::Idle => VassalState::Idle,
            Phase::Refused(_) => VassalState::Refused,
            Phase::Stopped => VassalState::Stopped,
        }
    }

    /// The process, in the phases that have one.
    pub fn proc(&self) -> Option<&Proc> {
        match self {
            Phase::Starting(p)
            | Phase::Running { proc: p, .. }
            | Phase::Stopping { proc: p, .. } => Some(p),
            _ => None,
        }
    }

    /// The process, mutably.
    pub(super) fn proc_mut(&mut self) -> Option<&mut Proc> {
        match self {
            Phase::Starting(p)
            | Phase::Running { proc: p, .. }
            | Phase::Stopping { proc: p, .. } => Some(p),
            _ => None,
        }
    }

    /// The pid, once the spawn has been reported.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Phase::Running { pid, .. } => Some(*pid),
            Phase::Stopping { pid, .. } => *pid,
            _ => None,
        }
    }

    /// Why and since when it is being stopped.
    pub fn stopping(&self) -> Option<(StopReason, Instant)> {
        match self {
            Phase::Stopping { reason, since, .. } => Some((*reason, *since)),
            _ => None,
        }
    }

    /// When a scheduled respawn is due.
    pub fn respawn_at(&self) -> Option<Instant> {
        match self {
            Phase::Throttled { respawn_at, .. } => Some(*respawn_at),
            _ => None,
        }
    }

    /// Why it is refused.
    pub fn refused(&self) -> Option<&str> {
        match self {
            Phase::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// One entry of the vassal table.
#[derive(Debug, Clone)]
pub struct Vassal {
    /// Its name.
    pub name: VassalName,
    /// The monitor that owns it.
    pub monitor: MonitorId,
    /// What the source wants now (`None`: removed, being stopped).
    pub desired: Option<VassalSpec>,
    /// The change key last acted on (uWSGI's `last_mod`).
    pub applied_key: ChangeKey,
    /// What its process is doing.
    pub phase: Phase,
    /// Consecutive crashes of a loyal vassal (for its backoff).
    pub crash_streak: u32,
    /// Emperor-initiated reloads (uWSGI's `respawns`).
    pub reloads: u64,
    /// Restarts after a death.
    pub restarts: u64,
    /// When it entered the table.
    pub born: SystemTime,
    /// How its last process ended.
    pub last_exit: Option<ExitStatus>,
    /// The last lines its last process wrote before it ended
    /// (`--vassal-logs` prefix or dir; empty otherwise).
    pub last_output: Vec<String>,
    /// Its last process was killed by the kernel's OOM killer
    /// (`--vassal-memory-max`).
    pub last_oom: bool,
    /// Its captured output (`--vassal-logs` prefix or dir), shared with its
    /// zergs; kept while the vassal is in the table.
    pub log: Option<std::sync::Arc<crate::logs::LogHandle>>,
    /// Its cgroup (`--vassal-cgroup`), once it has been started.
    pub cgroup: Option<std::sync::Arc<std::path::Path>>,
    /// When it last said it was loyal (byte 17).
    pub last_loyal: Option<SystemTime>,
    /// When it last said it was ready (byte 1).
    pub last_ready: Option<SystemTime>,
    /// When it last said it accepted requests (byte 5).
    pub last_accepting: Option<SystemTime>,
    /// For a broodlord zerg: its base vassal.
    pub zerg_of: Option<VassalName>,
    /// Zergs started for this (base) vassal so far (numbers its zergs).
    pub zergs_started: u64,
    /// The address the runtime holds the on-demand socket at (kept while
    /// the vassal runs, so queued connections survive a respawn).
    pub listening: Option<String>,
    /// Overlay: stopped by an operator (`imperium ctl stop`): not started
    /// again, whatever its source says, until `imperium ctl start`.
    pub stopped_by_operator: bool,
    /// Overlay (`--emperor-cluster`): this emperor holds no claim on it, so
    /// it is not started here (and is stopped if it runs); the epoch of the
    /// cluster's unplace (0 before it was ever placed). `None`: it may run.
    pub unplaced: Option<u64>,
    /// Overlay: automatic reloads are paused (`imperium ctl pause`): config
    /// changes are held in [`Vassal::held_change`] until resumed.
    pub paused: bool,
    /// The newest config change that arrived while paused.
    pub held_change: Option<Box<VassalSpec>>,
    /// `--emperor-reload-mode checked`: the change whose check runs.
    pub checking: Option<ChangeKey>,
    /// The last change whose check failed, while its process keeps the
    /// config it had (boxed: most vassals have none).
    pub rejected: Option<Box<Rejection>>,
    /// `--emperor-reload-mode swap`: the process started with the changed
    /// config beside the running one, until it serves.
    pub successor: Option<Box<super::Successor>>,
}

/// A change whose check failed: the vassal was not reloaded with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The change.
    pub key: ChangeKey,
    /// Why: the check's exit and the last lines it wrote.
    pub reason: String,
    /// When it was rejected (wall clock).
    pub at: SystemTime,
}

impl Vassal {
    pub(super) fn new(
        name: VassalName,
        monitor: MonitorId,
        spec: VassalSpec,
        born: SystemTime,
    ) -> Vassal {
        Vassal {
            name,
            monitor,
            applied_key: spec.key,
            desired: Some(spec),
            // a new entry is started (or refused, or listens) at once
            phase: Phase::Stopped,
            crash_streak: 0,
            reloads: 0,
            restarts: 0,
            born,
            last_exit: None,
            last_output: Vec::new(),
            last_oom: false,
            log: None,
            cgroup: None,
            last_loyal: None,
            last_ready: None,
            last_accepting: None,
            zerg_of: None,
            zergs_started: 0,
            listening: None,
            stopped_by_operator: false,
            unplaced: None,
            paused: false,
            held_change: None,
            checking: None,
            rejected: None,
            successor: None,
        }
    }

    /// True for a broodlord zerg.
    pub fn is_zerg(&self) -> bool {
        self.zerg_of.is_some()
    }

    /// The pid of its process, once the spawn has been reported.
    pub fn pid(&self) -> Option<u32> {
        self.phase.pid()
    }

    /// Its process, if it has one (starting, running or stopping).
    pub fn proc(&self) -> Option<&Proc> {
        self.phase.proc()
    }
}
