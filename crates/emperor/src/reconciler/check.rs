//! `--emperor-reload-mode checked`: the result of a changed config's check
//! reloads the vassal with it or rejects it (docs/reloads.md).

use super::*;
use crate::spec::ChangeKey;

impl Reconciler {
    /// The check of the change `key` of `name` ([`Action::Check`]) ended:
    /// `Ok` reloads the running process with it; `Err` (why, with what the
    /// check wrote) keeps the running process as it is and marks the
    /// change rejected, until the next change (checked again) or an
    /// operator's `imperium ctl reload NAME --force`. A result for a change
    /// that a newer one replaced meanwhile is ignored.
    pub fn check_done(
        &mut self,
        name: &VassalName,
        key: ChangeKey,
        result: Result<(), String>,
        took: Duration,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(v) = self.vassals.get_mut(name) else {
            return out;
        };
        if v.checking != Some(key) {
            tracing::debug!(vassal = %name, "[emperor] the check of an older change of vassal {name} ended: ignored");
            return out;
        }
        v.checking = None;
        match result {
            Ok(()) => {
                v.rejected = None;
                let target = match &v.phase {
                    Phase::Starting(p) => Some((p.instance, 0)),
                    Phase::Running { proc, pid } => Some((proc.instance, *pid)),
                    _ => None,
                };
                self.emit(Event::CheckPassed { name, took });
                // a process that died meanwhile was respawned with it already
                if let Some((instance, pid)) = target {
                    self.reload(name, instance, pid, &mut out);
                    self.update_zergs(name, false, now, &mut out);
                }
            }
            Err(reason) => self.reject(name, key, reason, took, now),
        }
        out
    }

    /// Marks the change `key` of `name` rejected (`reason`), logged once:
    /// its process goes on with the config it runs.
    pub(super) fn reject(
        &mut self,
        name: &VassalName,
        key: ChangeKey,
        reason: String,
        took: Duration,
        now: Instant,
    ) {
        self.emit(Event::ChangeRejected {
            name,
            reason: &reason,
            took,
        });
        let at = wall_at(self.wall_anchor, now);
        if let Some(v) = self.vassals.get_mut(name) {
            v.rejected = Some(Box::new(Rejection { key, reason, at }));
        }
    }
}
