//! `--emperor-reload-mode swap` (blue/green, docs/reloads.md): a changed
//! config starts a second process of the vassal (its *successor*) beside
//! the running one; once the successor serves (byte 5 and its health check)
//! the old process is stopped gracefully (it *retires*); a successor that
//! does not serve within `--emperor-swap-timeout`, or dies, is stopped and
//! the change rejected, while the old process serves on.
//!
//! Successors and retiring processes are tracked beside the table's
//! phases (`swaps`, `retiring`), so the rest of the reconciler sees one
//! process per vassal as before.

use super::*;
use crate::events::ExitStatus;
use crate::protocol::{VassalMessage, MSG_GRACEFUL_STOP};

/// The second process of a vassal during a swap.
#[derive(Debug, Clone)]
pub struct Successor {
    /// The process.
    pub proc: Proc,
    /// Its pid, once reported.
    pub pid: Option<u32>,
    /// When it must serve by.
    pub deadline: Instant,
    /// Its cgroup, which becomes the vassal's when it takes over.
    pub cgroup: Option<std::sync::Arc<std::path::Path>>,
}

/// An old process told to stop after its successor took over.
#[derive(Debug, Clone)]
pub(super) struct Retiring {
    pub(super) name: VassalName,
    pub(super) pid: Option<u32>,
    pub(super) kill_at: Instant,
}

impl Reconciler {
    /// Starts a successor of the running vassal `name` with its desired
    /// spec (a newer change replaces the successor of an older one).
    pub(super) fn begin_swap(&mut self, name: &VassalName, now: Instant, out: &mut Vec<Action>) {
        self.retire_successor(name, now, out);
        let instance = self.next_instance;
        let started_wall = wall_at(self.wall_anchor, now);
        let deadline = now + self.cfg.swap_timeout;
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        let Some(spec) = v.desired.clone() else {
            return;
        };
        self.next_instance += 1;
        let spec = super::process::launch_spec(&self.cfg, spec);
        v.successor = Some(Box::new(Successor {
            proc: Proc::new(instance, now, started_wall),
            pid: None,
            deadline,
            cgroup: None,
        }));
        self.swaps.insert(instance, name.clone());
        self.emit(Event::SwapStarted { name });
        out.push(Action::Spawn { instance, spec });
    }

    /// True when `instance` is the successor of a vassal being swapped.
    pub fn is_successor(&self, instance: InstanceId) -> bool {
        self.swaps.contains_key(&instance)
    }

    /// The successor `instance` and its vassal's name.
    pub(super) fn successor_mut(
        &mut self,
        instance: InstanceId,
    ) -> Option<(VassalName, &mut Successor)> {
        let name = self.swaps.get(&instance)?.clone();
        let s = self.vassals.get_mut(&name)?.successor.as_deref_mut()?;
        (s.proc.instance == instance).then_some((name, s))
    }

    /// The successor's pid is known.
    pub(super) fn successor_spawned(&mut self, instance: InstanceId, pid: u32, program: &str) {
        if let Some((name, s)) = self.successor_mut(instance) {
            s.pid = Some(pid);
            self.emit(Event::Spawned {
                name: &name,
                pid,
                program,
            });
        }
    }

    /// A byte from a successor: readiness counts; what would act on the
    /// vassal (idle, SOS) waits until it took over.
    pub(super) fn successor_message(
        &mut self,
        instance: InstanceId,
        msg: VassalMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some((name, s)) = self.successor_mut(instance) else {
            return;
        };
        let p = &mut s.proc;
        match msg {
            VassalMessage::Ready => p.ready = true,
            VassalMessage::Accepting => p.accepting = true,
            VassalMessage::Loyal => p.loyal = true,
            VassalMessage::Heartbeat => p.last_heartbeat = Some(now),
            VassalMessage::ConfigRequest => {
                let text = self.vassals.get(&name).and_then(|v| {
                    match v.desired.as_ref().map(|d| &d.config) {
                        Some(ConfigSource::Inline(t)) => Some(t.clone()),
                        _ => None,
                    }
                });
                if let Some(config) = text {
                    out.push(Action::PushConfig { instance, config });
                }
            }
            _ => {}
        }
        self.promote_if_serving(&name, now, out);
    }

    /// The successor of `name` serves (byte 5, and its health check passed
    /// when it has one): it becomes the vassal's process, and the old one
    /// retires (byte 2: a graceful stop, whatever
    /// `--emperor-graceful-shutdown` says).
    pub(super) fn promote_if_serving(
        &mut self,
        name: &VassalName,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        let serving = v
            .successor
            .as_ref()
            .is_some_and(|s| s.pid.is_some() && s.proc.serving());
        if !serving {
            return;
        }
        let s = *v.successor.take().expect("checked");
        let new_pid = s.pid.unwrap_or(0);
        let took = now.duration_since(s.proc.started);
        let old = std::mem::replace(
            &mut v.phase,
            Phase::Running {
                proc: s.proc.clone(),
                pid: new_pid,
            },
        );
        v.reloads += 1;
        v.rejected = None;
        if s.cgroup.is_some() {
            v.cgroup = s.cgroup.clone();
        }
        self.swaps.remove(&s.proc.instance);
        self.by_instance.insert(s.proc.instance, name.clone());
        let old_pid = old.pid();
        if let Some(p) = old.proc() {
            self.by_instance.remove(&p.instance);
            self.retire(name, p.instance, old_pid, now, out);
        }
        self.emit(Event::SwapDone {
            name,
            old_pid: old_pid.unwrap_or(0),
            new_pid,
            took,
        });
        // its zergs load the new config too
        self.update_zergs(name, false, now, out);
    }

    /// Tells `instance` (an old process, or a successor given up) to stop
    /// gracefully, SIGKILLed past the curse tolerance.
    fn retire(
        &mut self,
        name: &VassalName,
        instance: InstanceId,
        pid: Option<u32>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Send {
            instance,
            byte: MSG_GRACEFUL_STOP,
        });
        self.retiring.insert(
            instance,
            Retiring {
                name: name.clone(),
                pid,
                kill_at: now + self.cfg.curse_tolerance,
            },
        );
    }

    /// Gives up the swap of `name`, if one runs: its successor retires.
    pub(super) fn retire_successor(
        &mut self,
        name: &VassalName,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = self.vassals.get_mut(name).and_then(|v| v.successor.take()) else {
            return;
        };
        self.swaps.remove(&s.proc.instance);
        self.retire(name, s.proc.instance, s.pid, now, out);
    }

    /// The swap of `name` failed (`why`): its successor retires, its change
    /// is rejected, the running process goes on.
    pub(super) fn swap_failed(
        &mut self,
        name: &VassalName,
        why: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        let Some(s) = v.successor.as_ref() else {
            return;
        };
        let took = now.duration_since(s.proc.started);
        let key = v.applied_key;
        self.retire_successor(name, now, out);
        self.reject(name, key, why, took, now);
    }

    /// The runtime cannot start the successor `instance` (the vassal cannot
    /// swap, or its spawn failed): the change is rejected.
    pub fn swap_refused(&mut self, instance: InstanceId, why: &str, now: Instant) -> Vec<Action> {
        if let Some(name) = self.swaps.remove(&instance) {
            self.successor_gone(&name, why.to_string(), now);
        }
        Vec::new()
    }

    /// A spawn of a successor or a retiring process that did not happen
    /// (`what`: why, `error`: the cause): the swap is rejected, a retiring
    /// one is forgotten. `None` for the vassal's own process.
    pub(super) fn swap_not_started(
        &mut self,
        instance: InstanceId,
        what: &str,
        error: &str,
        now: Instant,
    ) -> Option<Vec<Action>> {
        if self.is_successor(instance) {
            return Some(self.swap_refused(instance, &format!("swap: {what}: {error}"), now));
        }
        self.retiring.remove(&instance).map(|_| Vec::new())
    }

    /// The successor of `name` is gone before it served (`why`): the change
    /// is rejected.
    fn successor_gone(&mut self, name: &VassalName, why: String, now: Instant) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        if let Some(s) = v.successor.take() {
            let took = now.duration_since(s.proc.started);
            let key = v.applied_key;
            self.reject(name, key, why, took, now);
        }
    }

    /// An exit of a successor or a retiring process: `None` when
    /// `instance` is neither (the vassal's own process).
    pub(super) fn swap_exited(
        &mut self,
        instance: InstanceId,
        status: ExitStatus,
        now: Instant,
    ) -> Option<Vec<Action>> {
        if let Some(r) = self.retiring.remove(&instance) {
            let output = Vec::new();
            self.emit(Event::Exited {
                name: &r.name,
                pid: r.pid.unwrap_or(0),
                status,
                expected: true,
                output: &output,
                oom: false,
            });
            self.note_stopped_when_gone(&r.name);
            return Some(Vec::new());
        }
        let name = self.swaps.remove(&instance)?;
        // it died before it served: the old process serves on
        let why = format!(
            "swap: the new instance {} before it served",
            match status {
                ExitStatus::Code(c) => format!("exited with code {c}"),
                ExitStatus::Signal(s) => format!("was killed by signal {s}"),
            }
        );
        self.successor_gone(&name, why, now);
        self.note_stopped_when_gone(&name);
        Some(Vec::new())
    }

    /// The vassal's own process died during a swap: the successor takes its
    /// place at once (as a process that has not served yet), instead of a
    /// respawn. Returns whether it did.
    pub(super) fn successor_takes_over(
        &mut self,
        name: &VassalName,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(v) = self.vassals.get_mut(name) else {
            return false;
        };
        let Some(s) = v.successor.take() else {
            return false;
        };
        self.swaps.remove(&s.proc.instance);
        self.by_instance.insert(s.proc.instance, name.clone());
        if s.cgroup.is_some() {
            v.cgroup = s.cgroup.clone();
        }
        v.phase = match s.pid {
            Some(pid) => Phase::Running { proc: s.proc, pid },
            None => Phase::Starting(s.proc),
        };
        self.update_zergs(name, false, now, out);
        true
    }

    /// The vassal's own process (`instance`) closed its emperor socket
    /// during a swap: the successor takes over (as at its death) and the
    /// old process retires, killed past the curse tolerance. Without a
    /// swap, false: it is cursed as usual.
    pub(super) fn old_went_deaf(
        &mut self,
        name: &VassalName,
        instance: InstanceId,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(v) = self.vassals.get(name) else {
            return false;
        };
        let mine = v.phase.proc().is_some_and(|p| p.instance == instance);
        if !mine || v.successor.is_none() || v.phase.stopping().is_some() {
            return false;
        }
        let pid = v.phase.pid();
        self.by_instance.remove(&instance);
        if !self.successor_takes_over(name, now, out) {
            self.by_instance.insert(instance, name.clone());
            return false;
        }
        self.retire(name, instance, pid, now, out);
        true
    }

    /// The swap deadlines and retirement kills due at `now`.
    pub(super) fn swap_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let late: Vec<VassalName> = self
            .vassals
            .values()
            .filter(|v| v.successor.as_ref().is_some_and(|s| s.deadline <= now))
            .map(|v| v.name.clone())
            .collect();
        let timeout = self.cfg.swap_timeout;
        for name in late {
            let why = format!(
                "swap: the new instance did not serve within {} s (--emperor-swap-timeout): no byte 5{}",
                timeout.as_secs_f64(),
                if self.vassals.get(&name).and_then(|v| v.successor.as_ref()).is_some_and(|s| s.proc.accepting) {
                    " missing, but its health check has not passed"
                } else {
                    ""
                }
            );
            self.swap_failed(&name, why, now, out);
        }
        let tolerance = self.cfg.curse_tolerance;
        let mut kills = Vec::new();
        for (instance, r) in &mut self.retiring {
            if r.kill_at <= now {
                r.kill_at = now + tolerance;
                kills.push((*instance, r.name.clone(), r.pid.unwrap_or(0)));
            }
        }
        for (instance, name, pid) in kills {
            out.push(Action::Kill { instance });
            let why = format!(
                "still alive {} s after being told to stop",
                tolerance.as_secs()
            );
            self.emit(Event::Killed {
                name: &name,
                pid,
                why: &why,
            });
        }
    }

    /// The emperor was frozen for `paused`: the swaps and retirements get
    /// that time back.
    pub(super) fn swap_paused(&mut self, paused: Duration) {
        for v in self.vassals.values_mut() {
            if let Some(s) = v.successor.as_deref_mut() {
                s.deadline += paused;
            }
        }
        for r in self.retiring.values_mut() {
            r.kill_at += paused;
        }
    }

    /// The next swap deadline or retirement kill.
    pub(super) fn swap_deadline(&self) -> Option<Instant> {
        let s = self
            .vassals
            .values()
            .filter_map(|v| v.successor.as_ref().map(|s| s.deadline));
        let r = self.retiring.values().map(|r| r.kill_at);
        s.chain(r).min()
    }

    /// Processes besides the vassals' own: successors and retiring ones.
    pub(super) fn swap_processes(&self) -> usize {
        self.swaps.len() + self.retiring.len()
    }

    /// Ragnarok: every successor and retiring process is SIGKILLed with
    /// the rest.
    pub(super) fn swap_instances(&self) -> Vec<(VassalName, InstanceId, u32)> {
        let s = self.vassals.values().filter_map(|v| {
            let s = v.successor.as_ref()?;
            Some((v.name.clone(), s.proc.instance, s.pid?))
        });
        let r = self
            .retiring
            .iter()
            .filter_map(|(i, r)| Some((r.name.clone(), *i, r.pid?)));
        s.chain(r).collect()
    }

    /// The retiring process `instance`'s pid is known.
    pub(super) fn retiring_spawned(&mut self, instance: InstanceId, pid: u32) -> bool {
        match self.retiring.get_mut(&instance) {
            Some(r) => {
                r.pid = Some(pid);
                true
            }
            None => false,
        }
    }

    /// The name of the vassal a successor or retiring `instance` belongs to.
    pub(super) fn swap_name_of(&self, instance: InstanceId) -> Option<VassalName> {
        self.swaps
            .get(&instance)
            .cloned()
            .or_else(|| self.retiring.get(&instance).map(|r| r.name.clone()))
    }
}
