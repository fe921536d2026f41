//! Process control (start, reload, stop) and what the runtime reports
//! about processes: spawned, could not spawn, a message byte, pipe EOF,
//! exited, a connection on an on-demand socket.

use super::*;
use crate::events::ExitStatus;
use crate::protocol::{self, VassalMessage, MSG_GRACEFUL_STOP, MSG_RELOAD, MSG_STOP};
use crate::throttle::loyal_delay;

impl Reconciler {
    /// Starts vassal `name` now, unless the blacklist or a refusal says no.
    /// `activated`: an on-demand vassal whose connection has come (it
    /// spawns instead of listening).
    pub(super) fn start(
        &mut self,
        name: &VassalName,
        now: Instant,
        activated: bool,
        out: &mut Vec<Action>,
    ) {
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
        if v.proc().is_some() || v.stopped_by_operator || v.unplaced.is_some() {
            return;
        }
        // a new process runs what the source says now: a check of that
        // change has nothing left to protect, and no rejection stands
        v.checking = None;
        v.rejected = None;
        if let ConfigSource::Inline(text) = &spec.config {
            if let Err(e) = protocol::check_config(text.as_bytes()) {
                let reason = e.to_string();
                v.phase = Phase::Refused(reason.clone());
                self.emit(Event::Refused {
                    name,
                    reason: &reason,
                });
                return;
            }
        }
        if let Some(t) = self.cfg.tyrant {
            if let Some(reason) = tyrant_refusal(&t, spec.owner) {
                v.phase = Phase::Refused(reason.clone());
                self.emit(Event::TyrantRefused {
                    name,
                    reason: &reason,
                });
                return;
            }
        }
        match &spec.socket {
            Some(address) if !activated => {
                // on demand: hold the socket, spawn on the first connection
                v.phase = Phase::OnDemand;
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
                if v.listening.take().is_some() {
                    out.push(Action::Unlisten { name: name.clone() });
                }
            }
        }
        if let Some(at) = allowed_at {
            if at > now {
                v.phase = Phase::Throttled {
                    respawn_at: at,
                    activated,
                };
                self.emit(Event::RespawnScheduled {
                    name,
                    delay: at - now,
                    loyal: false,
                });
                return;
            }
        }
        let spec = launch_spec(&self.cfg, spec);
        let instance = self.next_instance;
        self.next_instance += 1;
        let started_wall = wall_at(self.wall_anchor, now);
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        v.phase = Phase::Starting(Proc::new(instance, now, started_wall));
        self.by_instance.insert(instance, name.clone());
        out.push(Action::Spawn { instance, spec });
    }

    pub(super) fn reload(
        &mut self,
        name: &VassalName,
        instance: InstanceId,
        pid: u32,
        out: &mut Vec<Action>,
    ) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        v.reloads += 1;
        if let Some(p) = v.phase.proc_mut() {
            p.ready = false;
            p.accepting = false;
            // the watchdog re-arms with the first heartbeat after the reload
            p.last_heartbeat = None;
            // the reloaded app is judged afresh, after a new grace period
            if let Some(h) = &mut p.health {
                h.passed = false;
                h.failures = 0;
                h.grace_until = None;
                h.last_check = None;
                h.last_error = None;
            }
        }
        out.push(Action::Send {
            instance,
            byte: MSG_RELOAD,
        });
        self.emit(Event::Reload { name, pid });
    }

    pub(super) fn stop(
        &mut self,
        name: &VassalName,
        reason: StopReason,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let tolerance = self.cfg.curse_tolerance;
        let byte = if self.cfg.graceful_shutdown {
            MSG_GRACEFUL_STOP
        } else {
            MSG_STOP
        };
        // a swap in progress ends with it
        self.retire_successor(name, now, out);
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        let (proc, pid) = match std::mem::replace(&mut v.phase, Phase::Stopped) {
            Phase::Starting(p) => (p, None),
            Phase::Running { proc, pid } => (proc, Some(pid)),
            other => {
                // already stopping, or no process: nothing to do
                v.phase = other;
                return;
            }
        };
        let instance = proc.instance;
        v.phase = Phase::Stopping {
            proc,
            pid,
            reason,
            since: now,
            kill_at: now + tolerance,
        };
        let pid = pid.unwrap_or(0);
        if reason != StopReason::PipeClosed {
            out.push(Action::Send { instance, byte });
            let why = match reason {
                StopReason::Removed if v.is_zerg() => "zerg removed",
                StopReason::Removed => "config removed",
                StopReason::Restart => "restart with a new owner, socket or directory",
                StopReason::Idle => "idle shutdown requested by the vassal",
                StopReason::Shutdown => "emperor shutdown",
                StopReason::Operator => "stopped by the operator",
                StopReason::Unplaced => "the cluster placed it elsewhere",
                StopReason::PipeClosed => "",
            };
            self.emit(Event::Stop { name, pid, why });
        } else {
            self.emit(Event::Cursed { name, pid });
        }
    }

    fn name_of(&self, instance: InstanceId) -> Option<VassalName> {
        self.by_instance
            .get(&instance)
            .cloned()
            .or_else(|| self.swap_name_of(instance))
    }

    /// The vassal of `instance` writes into `log` (the runtime keeps one
    /// per vassal name; zergs get their base vassal's).
    pub fn attach_log(
        &mut self,
        instance: InstanceId,
        log: std::sync::Arc<crate::logs::LogHandle>,
    ) {
        let Some(name) = self.name_of(instance) else {
            return;
        };
        if let Some(v) = self.vassals.get_mut(&name) {
            if !v
                .log
                .as_ref()
                .is_some_and(|l| std::sync::Arc::ptr_eq(l, &log))
            {
                v.log = Some(log);
            }
        }
    }

    /// The process of `instance` starts in the cgroup `group`.
    pub fn attach_cgroup(&mut self, instance: InstanceId, group: &std::path::Path) {
        if let Some((_, s)) = self.successor_mut(instance) {
            s.cgroup = Some(group.into());
            return;
        }
        let Some(name) = self.by_instance.get(&instance).cloned() else {
            return;
        };
        if let Some(v) = self.vassals.get_mut(&name) {
            if v.cgroup.as_deref() != Some(group) {
                v.cgroup = Some(group.into());
            }
        }
    }

    /// Whether the process of `instance` was killed by the OOM killer, told
    /// just before its exit is (`--vassal-memory-max`).
    pub fn note_oom(&mut self, instance: InstanceId, oom: bool) {
        let Some(name) = self.by_instance.get(&instance).cloned() else {
            return;
        };
        if let Some(v) = self.vassals.get_mut(&name) {
            v.last_oom = oom;
        }
    }

    /// What the process of `instance` wrote last, told just before its
    /// exit is (part of the death event, `last_exit` in the stats).
    pub fn last_words(&mut self, instance: InstanceId, lines: Vec<String>) {
        let Some(name) = self.by_instance.get(&instance).cloned() else {
            return;
        };
        if let Some(v) = self.vassals.get_mut(&name) {
            v.last_output = lines;
        }
    }

    /// The process of `instance` was started with `pid`.
    pub fn spawned(&mut self, instance: InstanceId, pid: u32, program: &str) {
        if self.is_successor(instance) {
            return self.successor_spawned(instance, pid, program);
        }
        if self.retiring_spawned(instance, pid) {
            return;
        }
        let Some(name) = self.by_instance.get(&instance).cloned() else {
            return;
        };
        if let Some(v) = self.vassals.get_mut(&name) {
            let zerg = v.is_zerg();
            match std::mem::replace(&mut v.phase, Phase::Stopped) {
                Phase::Starting(proc) => {
                    v.phase = Phase::Running { proc, pid };
                    self.note_cluster(zerg, crate::cluster::ClusterInput::Running(name.clone()));
                }
                Phase::Stopping {
                    proc,
                    reason,
                    since,
                    kill_at,
                    ..
                } => {
                    v.phase = Phase::Stopping {
                        proc,
                        pid: Some(pid),
                        reason,
                        since,
                        kill_at,
                    }
                }
                other => v.phase = other,
            }
        }
        if self.deferred.count > 0 {
            let deferred = std::mem::take(&mut self.deferred).count;
            self.emit(Event::SpawnsResumed { deferred });
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
    /// each failure widens by `--emperor-throttle` (a binary being replaced
    /// by a package upgrade comes back on its own).
    pub fn spawn_failed(&mut self, instance: InstanceId, error: &str, now: Instant) -> Vec<Action> {
        if let Some(out) =
            self.swap_not_started(instance, "cannot start the new instance", error, now)
        {
            return out;
        }
        let mut out = Vec::new();
        let Some(name) = self.by_instance.remove(&instance) else {
            return out;
        };
        if let Some(v) = self.vassals.get_mut(&name) {
            v.phase = Phase::Stopped;
            v.last_exit = Some(ExitStatus::Code(26));
        }
        self.emit(Event::SpawnFailed { name: &name, error });
        if self.delete_if_unwanted(&name, &mut out) {
            return out;
        }
        let delay = self.blacklist.record_death(&name, now, &self.cfg.throttle) + SPAWN_RETRY_MIN;
        if let Some(v) = self.vassals.get_mut(&name) {
            v.restarts += 1;
            v.phase = Phase::Throttled {
                respawn_at: now + delay,
                activated: false,
            };
        }
        self.emit(Event::RespawnScheduled {
            name: &name,
            delay,
            loyal: false,
        });
        out
    }

    /// The process for `instance` could not be started because a resource
    /// ran out for a while (the emperor's open files, the system's
    /// processes or memory: [`crate::spawn::SpawnError::is_transient`]).
    /// This is not the vassal's fault: no blacklist, no restart counted; it
    /// is tried again after a backoff shared by every deferred vassal
    /// ([`SPAWN_DEFER_MIN`] doubling to [`SPAWN_DEFER_MAX`]), and the first
    /// deferral of a burst is logged, the rest counted.
    pub fn spawn_deferred(
        &mut self,
        instance: InstanceId,
        error: &str,
        now: Instant,
    ) -> Vec<Action> {
        if let Some(out) =
            self.swap_not_started(instance, "the new instance cannot start now", error, now)
        {
            return out;
        }
        let mut out = Vec::new();
        let Some(name) = self.by_instance.remove(&instance) else {
            return out;
        };
        if let Some(v) = self.vassals.get_mut(&name) {
            v.phase = Phase::Stopped;
        }
        if self.delete_if_unwanted(&name, &mut out) {
            return out;
        }
        let delay = self.deferred.backoff;
        self.deferred.backoff = (delay * 2).min(SPAWN_DEFER_MAX);
        self.deferred.count += 1;
        let first = self.deferred.count == 1;
        if let Some(v) = self.vassals.get_mut(&name) {
            v.phase = Phase::Throttled {
                respawn_at: now + delay,
                activated: false,
            };
        }
        self.emit(Event::SpawnDeferred {
            name: &name,
            error,
            retry_in: delay,
            first,
        });
        out
    }

    /// After a spawn that did not happen: a vassal nobody wants started
    /// again (the emperor is shutting down, its config is gone, it is a
    /// zerg) leaves the table. Returns whether it did.
    fn delete_if_unwanted(&mut self, name: &VassalName, out: &mut Vec<Action>) -> bool {
        let unwanted = self.shutting_down
            || self
                .vassals
                .get(name)
                .is_some_and(|v| v.desired.is_none() || v.is_zerg());
        if unwanted {
            self.delete(name, out);
        }
        unwanted
    }

    /// Whether `instance` is being stopped (`None`: not in the table any
    /// more). The runtime asks before it starts a process whose
    /// `--vassals-start-hook` ran in the meantime.
    pub fn instance_stopping(&self, instance: InstanceId) -> Option<bool> {
        if self.retiring.contains_key(&instance) {
            return Some(true);
        }
        if self.is_successor(instance) {
            return Some(false);
        }
        let name = self.by_instance.get(&instance)?;
        let v = self.vassals.get(name)?;
        v.proc()?;
        Some(v.phase.stopping().is_some())
    }

    /// A connection is pending on the on-demand socket of `name`: spawn it
    /// (the connection waits in the backlog until the vassal accepts it).
    pub fn on_demand_connection(&mut self, name: &VassalName, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(v) = self.vassals.get_mut(name) else {
            return out;
        };
        if !matches!(v.phase, Phase::OnDemand) || v.desired.is_none() {
            return out; // a stale report
        }
        self.emit(Event::OnDemandActivated { name });
        self.start(name, now, true, &mut out);
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
        let reason = format!("cannot bind its on-demand socket {address:?}: {error}");
        if v.proc().is_none() {
            v.phase = Phase::Refused(reason.clone());
        }
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
        if self.is_successor(instance) {
            self.successor_message(instance, msg, now, &mut out);
            return out;
        }
        let Some(name) = self.by_instance.get(&instance).cloned() else {
            return out;
        };
        let Some(v) = self.vassals.get_mut(&name) else {
            return out;
        };
        let pid = v.pid().unwrap_or(0);
        let wall = wall_at(self.wall_anchor, now);
        let Some(p) = v.phase.proc_mut() else {
            return out;
        };
        match msg {
            // said again while nothing changed: not logged again
            VassalMessage::Ready => {
                let first = !p.ready;
                p.ready = true;
                v.last_ready = Some(wall);
                if first {
                    self.emit(Event::Ready { name: &name, pid });
                }
            }
            VassalMessage::Accepting => {
                let first = !p.accepting;
                p.accepting = true;
                v.last_accepting = Some(wall);
                if first {
                    self.emit(Event::Accepting { name: &name, pid });
                }
            }
            VassalMessage::Loyal => {
                let first = !p.loyal;
                p.loyal = true;
                v.last_loyal = Some(wall);
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
        if base.phase.stopping().is_some() {
            return;
        }
        if zergs >= max {
            self.emit(Event::BroodlordFull { name, zergs, max });
            return;
        }
        base.zergs_started += 1;
        let zname = name.zerg(base.zergs_started);
        let monitor = base.monitor;
        let mut z = Vassal::new(
            zname.clone(),
            monitor,
            zerg_spec(&base_spec, zname.clone()),
            wall_at(self.wall_anchor, now),
        );
        z.zerg_of = Some(name.clone());
        self.vassals.insert(zname.clone(), Box::new(z));
        self.emit(Event::ZergAdded {
            name,
            zerg: &zname,
            zergs: zergs + 1,
            max,
        });
        self.start(&zname, now, false, out);
    }

    /// `instance` misbehaves on its control socket (it floods it): it is
    /// killed, and its death is handled as any other (respawned through
    /// the blacklist or the loyal backoff).
    pub fn flooded(&mut self, instance: InstanceId, why: &str) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(name) = self.name_of(instance) else {
            return out;
        };
        let pid = self.vassals.get(&name).and_then(|v| v.pid()).unwrap_or(0);
        out.push(Action::Kill { instance });
        self.emit(Event::Killed {
            name: &name,
            pid,
            why,
        });
        out
    }

    /// The control pipe of `instance` reached EOF (every process holding it
    /// is gone or closed it): curse it, as uWSGI does.
    pub fn pipe_closed(&mut self, instance: InstanceId, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        // a successor or a retiring process: its exit tells
        if let Some(name) = self.by_instance.get(&instance).cloned() {
            // the old process of a swap went deaf: its successor takes over
            if !self.old_went_deaf(&name, instance, now, &mut out) {
                self.stop(&name, StopReason::PipeClosed, now, &mut out);
            }
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
        if let Some(out) = self.swap_exited(instance, status, now) {
            return out;
        }
        let mut out = Vec::new();
        let Some(name) = self.by_instance.remove(&instance) else {
            return out;
        };
        let Some(v) = self.vassals.get_mut(&name) else {
            return out;
        };
        let (p, pid, reason) = match std::mem::replace(&mut v.phase, Phase::Stopped) {
            Phase::Starting(p) => (p, None, None),
            Phase::Running { proc, pid } => (proc, Some(pid), None),
            Phase::Stopping {
                proc, pid, reason, ..
            } => (proc, pid, Some(reason)),
            other => {
                v.phase = other;
                return out;
            }
        };
        v.last_exit = Some(status);
        let pid = pid.unwrap_or(0);
        let expected = matches!(
            reason,
            Some(
                StopReason::Removed
                    | StopReason::Restart
                    | StopReason::Idle
                    | StopReason::Shutdown
                    | StopReason::Operator
                    | StopReason::Unplaced
            )
        );
        let output = v.last_output.clone();
        let oom = v.last_oom;
        self.emit(Event::Exited {
            name: &name,
            pid,
            status,
            expected,
            output: &output,
            oom,
        });
        let Some(v) = self.vassals.get_mut(&name) else {
            return out;
        };
        if self.shutting_down || v.desired.is_none() {
            self.delete(&name, &mut out);
            return out;
        }
        // an unexpected death during a swap: the successor takes over
        if reason.is_none() && self.successor_takes_over(&name, now, &mut out) {
            return out;
        }
        let Some(v) = self.vassals.get_mut(&name) else {
            return out;
        };
        let on_demand = v.desired.as_ref().is_some_and(|d| d.socket.is_some());
        match reason {
            Some(StopReason::Restart) => self.start(&name, now, false, &mut out),
            // a zerg that is idle has done its job
            Some(StopReason::Idle) if v.is_zerg() => self.delete(&name, &mut out),
            Some(StopReason::Idle) if on_demand => {
                self.emit(Event::BackToOnDemand { name: &name });
                self.start(&name, now, false, &mut out);
            }
            Some(StopReason::Idle) => v.phase = Phase::Idle,
            // stopped by an operator or unplaced: the cluster hears it is
            // gone once nothing of it runs here
            Some(StopReason::Operator | StopReason::Unplaced) => {
                v.phase = Phase::Stopped;
                self.note_stopped_when_gone(&name);
            }
            Some(StopReason::Removed | StopReason::Shutdown) => self.delete(&name, &mut out),
            None | Some(StopReason::PipeClosed) => {
                self.after_death(&name, &p, status, now, &mut out)
            }
        }
        out
    }

    /// A death nobody asked for: exile (code 26), or a respawn now or
    /// after the blacklist's or the loyal backoff's delay.
    fn after_death(
        &mut self,
        name: &VassalName,
        p: &Proc,
        status: ExitStatus,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if status == ExitStatus::Code(26) {
            self.emit(Event::Exiled { name });
            let Some(v) = self.vassals.get_mut(name) else {
                return;
            };
            if v.is_zerg() {
                self.delete(name, out);
            } else {
                v.phase = Phase::Exiled;
            }
            return;
        }
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        v.restarts += 1;
        let delay = if p.loyal {
            let stable = now.duration_since(p.started) >= self.cfg.throttle.stable_after;
            v.crash_streak = if stable { 1 } else { v.crash_streak + 1 };
            loyal_delay(v.crash_streak, &self.cfg.throttle)
        } else {
            self.blacklist.record_death(name, now, &self.cfg.throttle)
        };
        if delay.is_zero() {
            self.start(name, now, false, out);
        } else {
            let v = self.vassals.get_mut(name).expect("present");
            v.phase = Phase::Throttled {
                respawn_at: now + delay,
                activated: false,
            };
            self.emit(Event::RespawnScheduled {
                name,
                delay,
                loyal: p.loyal,
            });
        }
    }
}

/// What a process of `spec` is started with: the owner a source gives
/// matters only in tyrant mode.
pub(super) fn launch_spec(cfg: &ReconcilerConfig, mut spec: VassalSpec) -> VassalSpec {
    if cfg.tyrant.is_none() {
        spec.owner = None;
    }
    spec
}
