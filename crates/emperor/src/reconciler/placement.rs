//! `--emperor-cluster`: the cluster places a vassal on this emperor or
//! takes it away ([`Reconciler::place`]).

use super::*;
use crate::cluster::ClusterInput;

impl Reconciler {
    /// The cluster placed `name` on this emperor (`unplace` `None`: start
    /// it) or took it away with the unplace epoch `Some(e)` (stop it;
    /// [`ClusterInput::Stopped`] with that epoch is noted once it has no
    /// process). `why` is logged with an unplace.
    pub fn place(
        &mut self,
        name: &VassalName,
        unplace: Option<u64>,
        why: &str,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(v) = self.vassals.get_mut(name) else {
            return out;
        };
        if v.is_zerg() {
            return out;
        }
        let Some(epoch) = unplace else {
            if v.unplaced.take().is_none() {
                return out;
            }
            self.emit(Event::Placed { name });
            let Some(v) = self.vassals.get_mut(name) else {
                return out;
            };
            match &mut v.phase {
                // still going down from an unplace: it starts again at its exit
                Phase::Stopping { reason, .. } if *reason == StopReason::Unplaced => {
                    *reason = StopReason::Restart;
                }
                Phase::Stopping { .. } => {}
                _ => self.start(name, now, false, &mut out),
            }
            return out;
        };
        if v.unplaced.is_some() {
            // unplaced already: the new epoch is the one its stop answers
            v.unplaced = Some(epoch);
            self.note_stopped_when_gone(name);
            return out;
        }
        v.unplaced = Some(epoch);
        if v.listening.take().is_some() {
            out.push(Action::Unlisten { name: name.clone() });
        }
        let running = match &mut v.phase {
            Phase::Stopping { reason, .. } => {
                if matches!(
                    reason,
                    StopReason::Restart | StopReason::PipeClosed | StopReason::Idle
                ) {
                    *reason = StopReason::Unplaced;
                }
                true
            }
            Phase::Starting(_) | Phase::Running { .. } => true,
            _ => {
                v.phase = Phase::Stopped;
                false
            }
        };
        self.emit(Event::Unplaced { name, why });
        for z in self.zergs_of(name) {
            self.drop_vassal(&z, now, &mut out);
        }
        if running {
            self.stop(name, StopReason::Unplaced, now, &mut out);
        }
        self.note_stopped_when_gone(name);
        out
    }

    /// Notes [`ClusterInput::Stopped`] for an unplaced vassal once no
    /// process of it is left here: its own, a swap's successor, an old one
    /// still retiring (the cluster releases its claim then).
    pub(super) fn note_stopped_when_gone(&mut self, name: &VassalName) {
        let Some(v) = self.vassals.get(name) else {
            return;
        };
        let Some(epoch) = v.unplaced else {
            return;
        };
        let busy = v.is_zerg()
            || v.proc().is_some()
            || v.successor.is_some()
            || self.swaps.values().any(|n| n == name)
            || self.retiring.values().any(|r| &r.name == name);
        if !busy {
            self.note_cluster(false, ClusterInput::Stopped(name.clone(), epoch));
        }
    }
}
