//! What the monitors say: snapshots, upserts, removals and health, turned
//! into spawns, reloads, restarts and stops.

use super::*;
use crate::cluster::ClusterInput;
use crate::spec::Change;

impl Reconciler {
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

    #[allow(
        clippy::too_many_lines,
        reason = "the decision table for one config change reads best in one place"
    )]
    pub(super) fn upsert(
        &mut self,
        monitor: MonitorId,
        mut spec: VassalSpec,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.shutting_down {
            return;
        }
        // an empty socket value means "not on demand" (uWSGI's pg monitor
        // passes an empty column on as a socket named "")
        spec.socket = spec
            .socket
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let name = spec.name.clone();
        let tyrant = self.cfg.tyrant.is_some();
        let Some(v) = self.vassals.get_mut(&name) else {
            let born = wall_at(self.wall_anchor, now);
            let mut v = Vassal::new(name.clone(), monitor, spec, born);
            // in a cluster it waits until this emperor holds a claim
            v.unplaced = self.cfg.cluster.then_some(0);
            self.vassals.insert(name.clone(), Box::new(v));
            self.note_cluster(false, ClusterInput::Want(name.clone(), None));
            self.start(&name, now, false, out);
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
        // limits from the source's record apply at a process's start: a
        // change restarts it (a graceful reload keeps the process)
        let limits_changed = old.is_some_and(|d| d.limits != spec.limits);
        if !newer && !was_removed && !owner_changed && !socket_changed && !limits_changed {
            // the source is back to what the vassal runs (the same key: an
            // older stamp delivered again is not that): a change held while
            // paused is undone, and nothing is left to apply at resume
            if spec.key == v.applied_key && v.held_change.take().is_some() {
                self.emit(Event::ChangeUndone { name: &name });
            }
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
        let restart_needed = owner_changed
            || socket_changed
            || limits_changed
            || old.is_some_and(|d| d.workdir != spec.workdir);
        if owner_changed {
            let from = old.and_then(|d| d.owner);
            let to = spec.owner;
            let running = v.proc().is_some();
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
        // applied now (an owner change while paused, a config added back):
        // a change held before is older, not to be applied at resume
        v.held_change = None;
        self.note_cluster(false, ClusterInput::Want(name.clone(), None));
        let Some(v) = self.vassals.get_mut(&name) else {
            return;
        };
        // a new config ends an exile, an idle stop or a refusal
        if matches!(v.phase, Phase::Exiled | Phase::Idle | Phase::Refused(_)) {
            v.phase = Phase::Stopped;
        }
        if self.cfg.reload_mode == ReloadMode::Swap
            && !restart_needed
            && !v.stopped_by_operator
            && matches!(v.phase, Phase::Running { .. })
        {
            // the running process serves until a successor does
            v.checking = None;
            self.begin_swap(&name, now, out);
            return;
        }
        if self.cfg.reload_mode == ReloadMode::Checked
            && !restart_needed
            && !v.stopped_by_operator
            && matches!(v.phase, Phase::Starting(_) | Phase::Running { .. })
        {
            // the running process keeps its config until this one passes
            let spec = v.desired.clone().expect("set above");
            v.checking = Some(spec.key);
            self.emit(Event::CheckStarted { name: &name });
            let spec = super::process::launch_spec(&self.cfg, spec);
            out.push(Action::Check { spec });
            return;
        }
        // every other way applies the change: no check is waited for, and
        // no rejection stands
        v.checking = None;
        v.rejected = None;
        if v.stopped_by_operator {
            // stays down with the new config until an operator starts it
            if let Phase::Stopping { reason, .. } = &mut v.phase {
                if matches!(reason, StopReason::Removed | StopReason::Idle) {
                    *reason = StopReason::Operator;
                }
            }
            return;
        }
        match &mut v.phase {
            Phase::Stopping { reason, .. } => {
                // it is going down; it starts again with the new spec when
                // its exit is seen, because `desired` is set again
                if matches!(reason, StopReason::Removed | StopReason::Idle) {
                    *reason = StopReason::Restart;
                }
            }
            Phase::Starting(_) | Phase::Running { .. } if restart_needed => {
                self.stop(&name, StopReason::Restart, now, out);
            }
            Phase::Starting(p) => {
                let instance = p.instance;
                self.reload(&name, instance, 0, out);
            }
            Phase::Running { proc, pid } => {
                let (instance, pid) = (proc.instance, *pid);
                self.reload(&name, instance, pid, out);
            }
            // the timer starts it with the new spec
            Phase::Throttled { .. } => {}
            Phase::OnDemand | Phase::Exiled | Phase::Idle | Phase::Refused(_) | Phase::Stopped => {
                self.start(&name, now, false, out)
            }
        }
        self.update_zergs(&name, restart_needed, now, out);
    }

    /// The zergs of `base` follow its spec: a reload reloads them with the
    /// new config; a restart (new owner, socket or directory) stops them
    /// (the base asks for new ones when it needs them).
    pub(super) fn update_zergs(
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
                self.drop_vassal(&z, now, out);
                continue;
            }
            let spec = zerg_spec(&base_spec, z.clone());
            if !spec.key.is_newer_than(&v.applied_key) {
                continue;
            }
            v.applied_key = spec.key;
            v.desired = Some(spec);
            let target = match &v.phase {
                Phase::Starting(p) => Some((p.instance, 0)),
                Phase::Running { proc, pid } => Some((proc.instance, *pid)),
                _ => None,
            };
            if let Some((instance, pid)) = target {
                self.reload(&z, instance, pid, out);
            }
        }
    }

    /// The zergs of `base`: named `BASE:zerg:N` ([`VassalName::zerg`]), so
    /// they sit together in the table, right after that prefix (a removal
    /// looks for them: one walk of the whole table per removal made
    /// deleting 10,000 configs quadratic).
    pub(super) fn zergs_of(&self, base: &VassalName) -> Vec<VassalName> {
        let prefix = VassalName::derived(format!("{base}:zerg:"));
        self.vassals
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.as_str().starts_with(prefix.as_str()))
            .filter(|(_, v)| v.zerg_of.as_ref() == Some(base))
            .map(|(k, _)| k.clone())
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
    pub(super) fn drop_vassal(&mut self, name: &VassalName, now: Instant, out: &mut Vec<Action>) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        v.desired = None;
        if v.proc().is_some() {
            self.stop(name, StopReason::Removed, now, out);
        } else {
            self.delete(name, out);
        }
    }

    /// Takes `name` out of the table.
    pub(super) fn delete(&mut self, name: &VassalName, out: &mut Vec<Action>) {
        if let Some(v) = self.vassals.remove(name) {
            self.note_cluster(v.is_zerg(), ClusterInput::Unwant(name.clone()));
            if let Some(p) = v.proc() {
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
}
