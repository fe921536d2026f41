//! The reconciler: the vassal table and every lifecycle decision, with no
//! I/O. Feed it inputs (monitor changes, vassal messages, exits, timer
//! ticks, operator commands) with the current time; it returns the
//! [`Action`]s to carry out. The runtime does the I/O.
//!
//! The per-vassal state machine follows uWSGI (reference §8), made
//! deterministic: each exit is seen once, by instance id; exit code 26 exiles
//! the vassal until its config changes; any other unexpected exit respawns,
//! throttled by the blacklist (non-loyal) or the loyal backoff; a refused
//! respawn is scheduled on a timer, never lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::events::{Counters, Event, ExitStatus};
use crate::monitor::MonitorId;
use crate::name::VassalName;
use crate::protocol::{self, VassalMessage, MSG_GRACEFUL_STOP, MSG_RELOAD, MSG_STOP};
use crate::spec::{Change, ChangeKey, ConfigSource, MonitorHealth, Owner, VassalSpec};
use crate::throttle::{loyal_delay, Blacklist, ThrottleConfig};

/// The shortest wait before a vassal that could not be started is tried
/// again (uWSGI tries again at its next scan, every `--emperor-freq`).
pub const SPAWN_RETRY_MIN: Duration = Duration::from_secs(1);

/// Identifies one process of a vassal; never reused.
pub type InstanceId = u64;

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
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
}

/// Tyrant mode settings (reference §10).
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
        }
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a process for `spec` as instance `instance`; then report
    /// [`Reconciler::spawned`] or [`Reconciler::spawn_failed`]. For inline
    /// configs the runtime pushes the config right after the spawn.
    ///
    /// `spec.owner` is set only in tyrant mode: the process runs as that
    /// user. When `spec.socket` is set, the on-demand socket of the vassal
    /// (see [`Action::Listen`]) goes on fd 0. A zerg (`NAME:zerg:N`, see
    /// [`VassalName::zerg_parts`]) is launched as `NAME:zerg`.
    Spawn {
        instance: InstanceId,
        spec: VassalSpec,
    },
    /// Write one protocol byte to the instance's control socket.
    Send { instance: InstanceId, byte: u8 },
    /// Write a config packet to the instance's config socket.
    PushConfig {
        instance: InstanceId,
        config: Arc<str>,
    },
    /// SIGKILL the instance (never a pid ≤ 0: the runtime kills by handle).
    Kill { instance: InstanceId },
    /// Make sure the on-demand socket of `name` is bound at `address` (keep
    /// it when it already is, so queued connections survive) and watch it
    /// for one pending connection, then report
    /// [`Reconciler::on_demand_connection`] (or
    /// [`Reconciler::listen_failed`]). The runtime never accepts.
    /// A relative UNIX path resolves against `workdir` (the emperor's
    /// directory when `None`), like the vassal's own relative paths.
    Listen {
        name: VassalName,
        address: String,
        workdir: Option<std::path::PathBuf>,
    },
    /// Close the on-demand socket of `name` (removed, or no longer on demand).
    Unlisten { name: VassalName },
    /// `--vassals-stop-hook`: `name` has left the table (removed, or at
    /// shutdown); run the hook for it.
    StopHook { name: VassalName },
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
}

/// One running (or starting) process of a vassal.
#[derive(Debug, Clone)]
pub struct Proc {
    pub instance: InstanceId,
    /// Known once the spawn succeeded.
    pub pid: Option<u32>,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub ready: bool,
    pub accepting: bool,
    pub loyal: bool,
    pub last_heartbeat: Option<Instant>,
    /// Set when the emperor decided to stop it (uWSGI's `cursed_at`).
    pub stopping: Option<(StopReason, Instant)>,
    /// When the next SIGKILL is due while stopping.
    pub kill_at: Option<Instant>,
}

/// The state of a vassal, for logs, stats and `imperium ctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VassalState {
    Starting,
    Running,
    Stopping,
    /// Waiting for a throttled respawn.
    Throttled,
    /// Exited with code 26 (or exec failed): waits for a config change.
    Exiled,
    /// Stopped on its own request (byte 22): waits for a config change.
    Idle,
    /// Refused (for example a config too large for the pipe, or a root
    /// owner in tyrant mode).
    Refused,
    /// On demand: waiting for a connection on its socket.
    OnDemand,
    /// Stopped by an operator: waits for `imperium ctl start`.
    Stopped,
}

/// One entry of the vassal table.
#[derive(Debug, Clone)]
pub struct Vassal {
    pub name: VassalName,
    /// The monitor that owns it.
    pub monitor: MonitorId,
    /// What the source wants now (`None`: removed, being stopped).
    pub desired: Option<VassalSpec>,
    /// The change key last acted on (uWSGI's `last_mod`).
    pub applied_key: ChangeKey,
    pub proc: Option<Proc>,
    pub respawn_at: Option<Instant>,
    pub exiled: bool,
    pub idle: bool,
    pub refused: Option<String>,
    /// Consecutive crashes of a loyal vassal (for its backoff).
    pub crash_streak: u32,
    /// Emperor-initiated reloads (uWSGI's `respawns`).
    pub reloads: u64,
    /// Restarts after a death.
    pub restarts: u64,
    pub born: SystemTime,
    pub last_exit: Option<ExitStatus>,
    pub last_loyal: Option<SystemTime>,
    pub last_ready: Option<SystemTime>,
    pub last_accepting: Option<SystemTime>,
    /// For a broodlord zerg: its base vassal.
    pub zerg_of: Option<VassalName>,
    /// Zergs started for this (base) vassal so far (numbers its zergs).
    pub zergs_started: u64,
    /// The address the runtime holds the on-demand socket at.
    pub listening: Option<String>,
    /// On demand: waiting for a connection, no process.
    pub waiting: bool,
    /// On demand: a connection arrived; the spawn is due (it may wait for
    /// the blacklist).
    pub activated: bool,
    /// Automatic reloads are paused (`imperium ctl pause`): config
    /// changes are held in [`Vassal::held_change`] until resumed.
    pub paused: bool,
    /// The newest config change that arrived while paused.
    pub held_change: Option<Box<VassalSpec>>,
    /// Stopped by an operator (`imperium ctl stop`): not started again
    /// until `imperium ctl start`.
    pub held: bool,
}

impl Vassal {
    fn new(name: VassalName, monitor: MonitorId, spec: VassalSpec) -> Vassal {
        Vassal {
            name,
            monitor,
            applied_key: spec.key,
            desired: Some(spec),
            proc: None,
            respawn_at: None,
            exiled: false,
            idle: false,
            refused: None,
            crash_streak: 0,
            reloads: 0,
            restarts: 0,
            born: SystemTime::now(),
            last_exit: None,
            last_loyal: None,
            last_ready: None,
            last_accepting: None,
            zerg_of: None,
            zergs_started: 0,
            listening: None,
            waiting: false,
            activated: false,
            paused: false,
            held_change: None,
            held: false,
        }
    }

    /// True for a broodlord zerg.
    pub fn is_zerg(&self) -> bool {
        self.zerg_of.is_some()
    }

    /// The state, derived from the fields.
    pub fn state(&self) -> VassalState {
        match &self.proc {
            Some(p) if p.stopping.is_some() => VassalState::Stopping,
            Some(p) if p.pid.is_some() => VassalState::Running,
            Some(_) => VassalState::Starting,
            None if self.held => VassalState::Stopped,
            None if self.refused.is_some() => VassalState::Refused,
            None if self.exiled => VassalState::Exiled,
            None if self.idle => VassalState::Idle,
            None if self.waiting => VassalState::OnDemand,
            None => VassalState::Throttled,
        }
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid)
    }
}

/// Health of one monitor as the emperor knows it.
#[derive(Debug, Clone)]
pub struct MonitorState {
    pub url: String,
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
        }
    }

    /// The vassal table.
    pub fn vassals(&self) -> impl Iterator<Item = &Vassal> {
        self.vassals.values().map(|v| &**v)
    }

    /// One vassal.
    pub fn vassal(&self, name: &str) -> Option<&Vassal> {
        self.vassals
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| &**v)
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
        self.vassals.values().filter(|v| v.proc.is_some()).count()
    }

    /// Number of broodlord zergs in the table (what `--emperor-broodlord`
    /// limits).
    pub fn zergs(&self) -> usize {
        self.vassals.values().filter(|v| v.is_zerg()).count()
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

    // ----- monitor changes -------------------------------------------------

    /// Applies a change from `monitor`.
    pub fn monitor_change(
        &mut self,
        monitor: MonitorId,
        change: Change,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match change {
            Change::Snapshot(specs) => {
                let names: HashSet<VassalName> = specs.iter().map(|s| s.name.clone()).collect();
                for spec in specs {
                    self.upsert(monitor, spec, now, &mut out);
                }
                let gone: Vec<VassalName> = self
                    .vassals
                    .values()
                    .filter(|v| {
                        v.monitor == monitor
                            && v.desired.is_some()
                            && !v.is_zerg()
                            && !names.contains(&v.name)
                    })
                    .map(|v| v.name.clone())
                    .collect();
                for name in gone {
                    self.remove(monitor, &name, now, &mut out);
                }
            }
            Change::Upsert(spec) => self.upsert(monitor, spec, now, &mut out),
            Change::Remove(name) => self.remove(monitor, &name, now, &mut out),
            Change::Health(h) => self.set_health(monitor, h),
        }
        out
    }

    fn set_health(&mut self, monitor: MonitorId, h: MonitorHealth) {
        let running = self
            .vassals
            .values()
            .filter(|v| v.monitor == monitor)
            .count();
        let Some(m) = self.monitors.get_mut(monitor) else {
            return;
        };
        if m.health.as_ref() == Some(&h) {
            return;
        }
        m.health = Some(h.clone());
        let url = m.url.clone();
        let state = match &h {
            MonitorHealth::Connected => "connected".to_string(),
            MonitorHealth::Degraded(r) => format!("degraded ({r})"),
            MonitorHealth::Failed(r) => format!("failed ({r})"),
        };
        self.emit(Event::MonitorHealth {
            monitor,
            url: &url,
            state: &state,
            running,
        });
    }

    fn upsert(
        &mut self,
        monitor: MonitorId,
        mut spec: VassalSpec,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.shutting_down {
            return;
        }
        // an empty socket value means "not on demand" (reference §4.5 bug)
        spec.socket = spec
            .socket
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let name = spec.name.clone();
        let tyrant = self.cfg.tyrant.is_some();
        let Some(v) = self.vassals.get_mut(&name) else {
            self.vassals.insert(
                name.clone(),
                Box::new(Vassal::new(name.clone(), monitor, spec)),
            );
            self.start(&name, now, out);
            return;
        };
        if v.is_zerg() {
            // a monitor never names a zerg (names end with an extension)
            return;
        }
        if v.monitor != monitor {
            if v.desired.is_some() {
                let owner = v.monitor;
                if self.conflicts_reported.insert((name.clone(), monitor)) {
                    self.emit(Event::Conflict {
                        name: &name,
                        owner,
                        other: monitor,
                    });
                }
                return;
            }
            // the old owner removed it: the new monitor takes it over
            v.monitor = monitor;
        }
        let was_removed = v.desired.is_none();
        let newer = spec.key.is_newer_than(&v.applied_key);
        let old = v.desired.as_ref();
        let owner_changed = tyrant && old.is_some_and(|d| d.owner != spec.owner);
        let socket_changed = old.is_some_and(|d| d.socket != spec.socket);
        if !newer && !was_removed && !owner_changed && !socket_changed {
            return;
        }
        if v.paused && !was_removed && !owner_changed {
            let first = !matches!(&v.held_change, Some(h) if h.key == spec.key);
            v.held_change = Some(Box::new(spec));
            if first {
                self.emit(Event::ChangeHeld { name: &name });
            }
            return;
        }
        let restart_needed =
            owner_changed || socket_changed || old.is_some_and(|d| d.workdir != spec.workdir);
        if owner_changed {
            let from = old.and_then(|d| d.owner);
            let to = spec.owner;
            let running = v.proc.is_some();
            self.emit(Event::OwnerChanged {
                name: &name,
                from,
                to,
                running,
            });
        }
        let Some(v) = self.vassals.get_mut(&name) else {
            return;
        };
        v.applied_key = spec.key;
        v.desired = Some(spec);
        v.exiled = false;
        v.idle = false;
        v.refused = None;
        if v.held {
            // stays down with the new config until an operator starts it
            if let Some(p) = v.proc.as_mut() {
                if let Some((StopReason::Removed | StopReason::Idle, at)) = p.stopping {
                    p.stopping = Some((StopReason::Operator, at));
                }
            }
            return;
        }
        match &v.proc {
            Some(p) if p.stopping.is_some() => {
                // it is going down; it starts again with the new spec when
                // its exit is seen, because `desired` is set again
                if let Some(p) = v.proc.as_mut() {
                    if let Some((reason, at)) = p.stopping {
                        if matches!(reason, StopReason::Removed | StopReason::Idle) {
                            p.stopping = Some((StopReason::Restart, at));
                        }
                    }
                }
            }
            Some(_) if restart_needed => {
                self.stop(&name, StopReason::Restart, now, out);
            }
            Some(p) => {
                let instance = p.instance;
                let pid = p.pid.unwrap_or(0);
                self.reload(&name, instance, pid, out);
            }
            None if v.respawn_at.is_some() => {} // the timer starts it with the new spec
            None => self.start(&name, now, out),
        }
        self.update_zergs(&name, restart_needed, now, out);
    }

    /// The zergs of `base` follow its spec: a reload reloads them with the
    /// new config; a restart (new owner, socket or directory) stops them
    /// (the base asks for new ones when it needs them).
    fn update_zergs(
        &mut self,
        base: &VassalName,
        restart: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(base_spec) = self.vassals.get(base).and_then(|v| v.desired.clone()) else {
            return;
        };
        for z in self.zergs_of(base) {
            let Some(v) = self.vassals.get_mut(&z) else {
                continue;
            };
            if v.desired.is_none() {
                continue;
            }
            if restart {
                v.desired = None;
                v.respawn_at = None;
                if v.proc.is_some() {
                    self.stop(&z, StopReason::Removed, now, out);
                } else {
                    self.delete(&z, out);
                }
                continue;
            }
            let spec = zerg_spec(&base_spec, z.clone());
            if !spec.key.is_newer_than(&v.applied_key) {
                continue;
            }
            v.applied_key = spec.key;
            v.desired = Some(spec);
            if let Some(p) = v.proc.as_ref().filter(|p| p.stopping.is_none()) {
                let (instance, pid) = (p.instance, p.pid.unwrap_or(0));
                self.reload(&z, instance, pid, out);
            }
        }
    }

    fn zergs_of(&self, base: &VassalName) -> Vec<VassalName> {
        self.vassals
            .values()
            .filter(|v| v.zerg_of.as_ref() == Some(base))
            .map(|v| v.name.clone())
            .collect()
    }

    fn remove(
        &mut self,
        monitor: MonitorId,
        name: &VassalName,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        if v.monitor != monitor || v.desired.is_none() || v.is_zerg() {
            return;
        }
        // its zergs go with it
        for z in self.zergs_of(name) {
            self.drop_vassal(&z, now, out);
        }
        self.drop_vassal(name, now, out);
    }

    /// Forgets what `name` should run: stops its process (deleted when the
    /// exit is seen) or deletes it now.
    fn drop_vassal(&mut self, name: &VassalName, now: Instant, out: &mut Vec<Action>) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        v.desired = None;
        v.respawn_at = None;
        if v.proc.is_some() {
            self.stop(name, StopReason::Removed, now, out);
        } else {
            self.delete(name, out);
        }
    }

    fn delete(&mut self, name: &VassalName, out: &mut Vec<Action>) {
        if let Some(v) = self.vassals.remove(name) {
            if let Some(p) = v.proc {
                self.by_instance.remove(&p.instance);
            }
            if v.listening.is_some() {
                out.push(Action::Unlisten { name: name.clone() });
            }
            if self.cfg.stop_hook {
                out.push(Action::StopHook { name: name.clone() });
            }
            self.emit(Event::Removed { name });
            let before = self.conflicts_reported.len();
            self.conflicts_reported.retain(|(n, _)| n != name);
            if self.conflicts_reported.len() != before {
                self.rescan_wanted = true;
            }
        }
    }

    /// True (once) when the monitors should be asked for a full rescan: a
    /// vassal name that another monitor also claimed was just freed, and
    /// that monitor may not send its unchanged source again by itself.
    pub fn take_rescan_wanted(&mut self) -> bool {
        std::mem::take(&mut self.rescan_wanted)
    }

    // ----- process control -------------------------------------------------

    /// Starts vassal `name` now, unless the blacklist or a refusal says no.
    fn start(&mut self, name: &VassalName, now: Instant, out: &mut Vec<Action>) {
        if self.shutting_down {
            return;
        }
        let allowed_at = self.blacklist.allowed_at(name);
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        let Some(spec) = v.desired.clone() else {
            return;
        };
        if v.proc.is_some() || v.held {
            return;
        }
        if let ConfigSource::Inline(text) = &spec.config {
            if let Err(e) = protocol::check_config(text.as_bytes()) {
                let reason = e.to_string();
                v.refused = Some(reason.clone());
                self.emit(Event::Refused {
                    name,
                    reason: &reason,
                });
                return;
            }
        }
        if let Some(t) = self.cfg.tyrant {
            if let Some(reason) = tyrant_refusal(&t, spec.owner) {
                v.refused = Some(reason.clone());
                v.waiting = false;
                self.emit(Event::TyrantRefused {
                    name,
                    reason: &reason,
                });
                return;
            }
        }
        match &spec.socket {
            Some(address) if !v.activated => {
                // on demand: hold the socket, spawn on the first connection
                v.waiting = true;
                v.respawn_at = None;
                let new_socket = v.listening.as_ref() != Some(address);
                v.listening = Some(address.clone());
                out.push(Action::Listen {
                    name: name.clone(),
                    address: address.clone(),
                    workdir: spec.workdir.clone(),
                });
                if new_socket {
                    self.emit(Event::OnDemandWaiting {
                        name,
                        socket: address,
                    });
                }
                return;
            }
            Some(_) => {}
            None => {
                v.activated = false;
                if v.listening.take().is_some() {
                    out.push(Action::Unlisten { name: name.clone() });
                }
            }
        }
        if let Some(at) = allowed_at {
            if at > now {
                v.respawn_at = Some(at);
                self.emit(Event::RespawnScheduled {
                    name,
                    delay: at - now,
                    loyal: false,
                });
                return;
            }
        }
        v.respawn_at = None;
        v.waiting = false;
        v.activated = false;
        let mut spec = spec;
        if self.cfg.tyrant.is_none() {
            // the owner a source gives matters only in tyrant mode
            spec.owner = None;
        }
        let instance = self.next_instance;
        self.next_instance += 1;
        v.proc = Some(Proc {
            instance,
            pid: None,
            started: now,
            started_wall: SystemTime::now(),
            ready: false,
            accepting: false,
            loyal: false,
            last_heartbeat: None,
            stopping: None,
            kill_at: None,
        });
        self.by_instance.insert(instance, name.clone());
        out.push(Action::Spawn { instance, spec });
    }

    fn reload(&mut self, name: &VassalName, instance: InstanceId, pid: u32, out: &mut Vec<Action>) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        v.reloads += 1;
        if let Some(p) = v.proc.as_mut() {
            p.ready = false;
            p.accepting = false;
            // the watchdog re-arms with the first heartbeat after the reload
            p.last_heartbeat = None;
        }
        out.push(Action::Send {
            instance,
            byte: MSG_RELOAD,
        });
        self.emit(Event::Reload { name, pid });
    }

    fn stop(&mut self, name: &VassalName, reason: StopReason, now: Instant, out: &mut Vec<Action>) {
        let tolerance = self.cfg.curse_tolerance;
        let byte = if self.cfg.graceful_shutdown {
            MSG_GRACEFUL_STOP
        } else {
            MSG_STOP
        };
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        let Some(p) = v.proc.as_mut() else { return };
        if p.stopping.is_some() {
            return;
        }
        p.stopping = Some((reason, now));
        p.kill_at = Some(now + tolerance);
        let (instance, pid) = (p.instance, p.pid.unwrap_or(0));
        if reason != StopReason::PipeClosed {
            out.push(Action::Send { instance, byte });
            let why = match reason {
                StopReason::Removed if v.is_zerg() => "zerg removed",
                StopReason::Removed => "config removed",
                StopReason::Restart => "restart with a new owner, socket or directory",
                StopReason::Idle => "idle shutdown requested by the vassal",
                StopReason::Shutdown => "emperor shutdown",
                StopReason::Operator => "stopped by the operator",
                StopReason::PipeClosed => "",
            };
            self.emit(Event::Stop { name, pid, why });
        } else {
            self.emit(Event::Cursed { name, pid });
        }
    }

    // ----- reports from the runtime ----------------------------------------

    fn name_of(&self, instance: InstanceId) -> Option<VassalName> {
        self.by_instance.get(&instance).cloned()
    }

    /// The process of `instance` was started with `pid`.
    pub fn spawned(&mut self, instance: InstanceId, pid: u32, program: &str) {
        let Some(name) = self.name_of(instance) else {
            return;
        };
        if let Some(p) = self.vassals.get_mut(&name).and_then(|v| v.proc.as_mut()) {
            p.pid = Some(pid);
        }
        self.emit(Event::Spawned {
            name: &name,
            pid,
            program,
        });
    }

    /// The process for `instance` could not be started (its binary cannot
    /// be executed, a resource ran out, its on-demand socket is gone). It
    /// is retried through the blacklist, as uWSGI re-adds such a vassal at
    /// its next scan: [`SPAWN_RETRY_MIN`] plus the blacklist window, which
    /// each failure widens by `--emperor-throttle` (a binary being replaced by a package upgrade
    /// comes back on its own).
    pub fn spawn_failed(&mut self, instance: InstanceId, error: &str, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(name) = self.by_instance.remove(&instance) else {
            return out;
        };
        let shutting_down = self.shutting_down;
        if let Some(v) = self.vassals.get_mut(&name) {
            v.proc = None;
            v.last_exit = Some(ExitStatus::Code(26));
        }
        self.emit(Event::SpawnFailed { name: &name, error });
        if shutting_down
            || self
                .vassals
                .get(&name)
                .is_some_and(|v| v.desired.is_none() || v.is_zerg())
        {
            self.delete(&name, &mut out);
            return out;
        }
        let delay = self.blacklist.record_death(&name, now, &self.cfg.throttle) + SPAWN_RETRY_MIN;
        if let Some(v) = self.vassals.get_mut(&name) {
            v.restarts += 1;
            v.respawn_at = Some(now + delay);
        }
        self.emit(Event::RespawnScheduled {
            name: &name,
            delay,
            loyal: false,
        });
        out
    }

    /// Whether `instance` is being stopped (`None`: not in the table any
    /// more). The runtime asks before it starts a process whose
    /// `--vassals-start-hook` ran in the meantime.
    pub fn instance_stopping(&self, instance: InstanceId) -> Option<bool> {
        let name = self.by_instance.get(&instance)?;
        let p = self.vassals.get(name)?.proc.as_ref()?;
        Some(p.stopping.is_some())
    }

    /// A connection is pending on the on-demand socket of `name`: spawn it
    /// (the connection waits in the backlog until the vassal accepts it).
    pub fn on_demand_connection(&mut self, name: &VassalName, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(v) = self.vassals.get_mut(name) else {
            return out;
        };
        if !v.waiting || v.proc.is_some() || v.desired.is_none() {
            return out; // a stale report
        }
        v.waiting = false;
        v.activated = true;
        self.emit(Event::OnDemandActivated { name });
        self.start(name, now, &mut out);
        out
    }

    /// The on-demand socket of `name` could not be bound: the vassal is
    /// refused until its spec changes; every other vassal goes on.
    pub fn listen_failed(&mut self, name: &VassalName, error: &str) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(v) = self.vassals.get_mut(name) else {
            return out;
        };
        let address = v.listening.take().unwrap_or_default();
        v.waiting = false;
        v.activated = false;
        let reason = format!("cannot bind its on-demand socket {address:?}: {error}");
        v.refused = Some(reason.clone());
        self.emit(Event::Refused {
            name,
            reason: &reason,
        });
        // the runtime holds nothing for it, but make sure
        out.push(Action::Unlisten { name: name.clone() });
        out
    }

    /// A byte arrived from `instance`.
    pub fn vassal_message(
        &mut self,
        instance: InstanceId,
        msg: VassalMessage,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(name) = self.name_of(instance) else {
            return out;
        };
        let Some(v) = self.vassals.get_mut(&name) else {
            return out;
        };
        let Some(p) = v.proc.as_mut() else { return out };
        let pid = p.pid.unwrap_or(0);
        match msg {
            VassalMessage::Ready => {
                p.ready = true;
                v.last_ready = Some(SystemTime::now());
                self.emit(Event::Ready { name: &name, pid });
            }
            VassalMessage::Accepting => {
                p.accepting = true;
                v.last_accepting = Some(SystemTime::now());
                self.emit(Event::Accepting { name: &name, pid });
            }
            VassalMessage::Loyal => {
                let first = !p.loyal;
                p.loyal = true;
                v.last_loyal = Some(SystemTime::now());
                self.blacklist.remove(&name);
                if first {
                    self.emit(Event::Loyal { name: &name, pid });
                }
            }
            VassalMessage::Heartbeat => p.last_heartbeat = Some(now),
            VassalMessage::ConfigRequest => {
                if let Some(ConfigSource::Inline(text)) = v.desired.as_ref().map(|d| &d.config) {
                    out.push(Action::PushConfig {
                        instance,
                        config: text.clone(),
                    });
                } else {
                    tracing::debug!(vassal = %name, "config requested by a vassal that has no config text");
                }
            }
            VassalMessage::IdleShutdown => {
                self.stop(&name, StopReason::Idle, now, &mut out);
            }
            VassalMessage::Sos => self.sos(&name, pid, now, &mut out),
            VassalMessage::Unknown(b) => {
                tracing::debug!(vassal = %name, byte = b, "ignoring unknown byte from vassal");
            }
        }
        out
    }

    /// Byte 30 from `name`: add a zerg when broodlord mode allows one more.
    fn sos(&mut self, name: &VassalName, pid: u32, now: Instant, out: &mut Vec<Action>) {
        let max = self.cfg.broodlord;
        if max == 0 {
            tracing::warn!(vassal = %name, pid, "[emperor] vassal {name} sent SOS, but broodlord mode is not enabled (--emperor-broodlord N)");
            return;
        }
        let zergs = self.zergs();
        let Some(base) = self.vassals.get_mut(name) else {
            return;
        };
        if base.is_zerg() {
            tracing::debug!(vassal = %name, "[emperor] SOS from a zerg ignored");
            return;
        }
        let Some(base_spec) = base.desired.clone() else {
            return;
        };
        if base.proc.as_ref().is_some_and(|p| p.stopping.is_some()) {
            return;
        }
        if zergs >= max {
            self.emit(Event::BroodlordFull { name, zergs, max });
            return;
        }
        base.zergs_started += 1;
        let zname = name.zerg(base.zergs_started);
        let monitor = base.monitor;
        let mut z = Vassal::new(zname.clone(), monitor, zerg_spec(&base_spec, zname.clone()));
        z.zerg_of = Some(name.clone());
        self.vassals.insert(zname.clone(), Box::new(z));
        self.emit(Event::ZergAdded {
            name,
            zerg: &zname,
            zergs: zergs + 1,
            max,
        });
        self.start(&zname, now, out);
    }

    /// The control pipe of `instance` reached EOF (every process holding it
    /// is gone or closed it): curse it, as uWSGI does.
    pub fn pipe_closed(&mut self, instance: InstanceId, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(name) = self.name_of(instance) {
            self.stop(&name, StopReason::PipeClosed, now, &mut out);
        }
        out
    }

    /// The process of `instance` exited (reaped; seen exactly once).
    pub fn exited(
        &mut self,
        instance: InstanceId,
        status: ExitStatus,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(name) = self.by_instance.remove(&instance) else {
            return out;
        };
        let Some(v) = self.vassals.get_mut(&name) else {
            return out;
        };
        let Some(p) = v.proc.take() else { return out };
        v.last_exit = Some(status);
        let pid = p.pid.unwrap_or(0);
        let reason = p.stopping.map(|(r, _)| r);
        let expected = matches!(
            reason,
            Some(
                StopReason::Removed
                    | StopReason::Restart
                    | StopReason::Idle
                    | StopReason::Shutdown
                    | StopReason::Operator
            )
        );
        self.emit(Event::Exited {
            name: &name,
            pid,
            status,
            expected,
        });
        let Some(v) = self.vassals.get_mut(&name) else {
            return out;
        };
        if self.shutting_down || v.desired.is_none() {
            self.delete(&name, &mut out);
            return out;
        }
        let on_demand = v.desired.as_ref().is_some_and(|d| d.socket.is_some());
        match reason {
            Some(StopReason::Restart) => self.start(&name, now, &mut out),
            // a zerg that is idle has done its job
            Some(StopReason::Idle) if v.is_zerg() => self.delete(&name, &mut out),
            Some(StopReason::Idle) if on_demand => {
                self.emit(Event::BackToOnDemand { name: &name });
                self.start(&name, now, &mut out);
            }
            Some(StopReason::Idle) => v.idle = true,
            Some(StopReason::Operator) => {}
            Some(StopReason::Removed | StopReason::Shutdown) => self.delete(&name, &mut out),
            None | Some(StopReason::PipeClosed) => {
                if status == ExitStatus::Code(26) {
                    self.emit(Event::Exiled { name: &name });
                    let Some(v) = self.vassals.get_mut(&name) else {
                        return out;
                    };
                    if v.is_zerg() {
                        self.delete(&name, &mut out);
                    } else {
                        v.exiled = true;
                    }
                    return out;
                }
                v.restarts += 1;
                let delay = if p.loyal {
                    let stable = now.duration_since(p.started) >= self.cfg.throttle.stable_after;
                    v.crash_streak = if stable { 1 } else { v.crash_streak + 1 };
                    loyal_delay(v.crash_streak, &self.cfg.throttle)
                } else {
                    self.blacklist.record_death(&name, now, &self.cfg.throttle)
                };
                if delay.is_zero() {
                    self.start(&name, now, &mut out);
                } else {
                    let v = self.vassals.get_mut(&name).expect("present");
                    v.respawn_at = Some(now + delay);
                    self.emit(Event::RespawnScheduled {
                        name: &name,
                        delay,
                        loyal: p.loyal,
                    });
                }
            }
        }
        out
    }

    // ----- timers -------------------------------------------------------------

    /// The next instant at which [`Reconciler::tick`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hb = self.cfg.required_heartbeat;
        self.vassals
            .values()
            .flat_map(|v| {
                let p = v.proc.as_ref();
                [
                    v.respawn_at,
                    p.and_then(|p| {
                        p.kill_at
                            .filter(|_| p.stopping.is_some() && p.pid.is_some())
                    }),
                    p.and_then(|p| p.last_heartbeat.map(|h| h + hb)),
                ]
            })
            .flatten()
            .min()
    }

    /// Runs the timers due at `now`: scheduled respawns, SIGKILL of cursed
    /// vassals past the curse tolerance, the heartbeat watchdog.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let hb = self.cfg.required_heartbeat;
        let tolerance = self.cfg.curse_tolerance;
        let due: Vec<VassalName> = self
            .vassals
            .values()
            .filter(|v| v.respawn_at.is_some_and(|t| t <= now))
            .map(|v| v.name.clone())
            .collect();
        for name in due {
            if let Some(v) = self.vassals.get_mut(&name) {
                v.respawn_at = None;
            }
            self.start(&name, now, &mut out);
        }
        let mut kills: Vec<(VassalName, InstanceId, u32, String)> = Vec::new();
        for v in self.vassals.values_mut() {
            let Some(p) = v.proc.as_mut() else { continue };
            let Some(pid) = p.pid else { continue };
            if p.stopping.is_some() {
                if p.kill_at.is_some_and(|t| t <= now) {
                    p.kill_at = Some(now + tolerance);
                    kills.push((
                        v.name.clone(),
                        p.instance,
                        pid,
                        format!(
                            "still alive {} s after being told to stop",
                            tolerance.as_secs()
                        ),
                    ));
                }
            } else if p.last_heartbeat.is_some_and(|h| h + hb <= now) {
                p.last_heartbeat = None;
                kills.push((
                    v.name.clone(),
                    p.instance,
                    pid,
                    format!(
                        "sent no heartbeat in last {} seconds, brutally respawning it",
                        hb.as_secs()
                    ),
                ));
            }
        }
        for (name, instance, pid, why) in kills {
            out.push(Action::Kill { instance });
            self.emit(Event::Killed {
                name: &name,
                pid,
                why: &why,
            });
        }
        out
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
    }
}

mod operator;

#[cfg(test)]
mod tests;
