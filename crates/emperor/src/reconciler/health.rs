//! Health checks: the runtime probes, the reconciler counts the results
//! and restarts a process that stays unhealthy past its grace period.

use super::*;
use crate::health::HealthCheck;

impl Reconciler {
    /// The process of `instance` has a health check: its results are fed
    /// to [`Reconciler::health_result`] from now on.
    pub fn health_watch(&mut self, instance: InstanceId, check: &HealthCheck, now: Instant) {
        let p = match self.successor_mut(instance) {
            Some((_, s)) => Some(&mut s.proc),
            None => {
                let Some(name) = self.by_instance.get(&instance) else {
                    return;
                };
                self.vassals.get_mut(name).and_then(|v| v.phase.proc_mut())
            }
        };
        if let Some(p) = p {
            p.health = Some(Box::new(ProcHealth {
                check: check.probe.to_string(),
                allowed: check.failures,
                grace: check.grace,
                grace_until: Some(now + check.grace),
                passed: false,
                failures: 0,
                last_error: None,
                last_check: None,
                condemned: false,
            }));
        }
    }

    /// One probe of `instance` ended: healthy (`Ok`) or why not. A running
    /// process that failed `health-failures` probes in a row, past its
    /// grace period, is SIGKILLed; its death is then throttled as any
    /// other (so a vassal that is never healthy is not restarted in a
    /// tight loop).
    pub fn health_result(
        &mut self,
        instance: InstanceId,
        result: Result<(), String>,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let wall = wall_at(self.wall_anchor, now);
        if let Some((name, s)) = self.successor_mut(instance) {
            // a successor is judged by its swap deadline: a pass counts
            if let Some(h) = s.proc.health.as_deref_mut() {
                h.last_check = Some(wall);
                h.passed |= result.is_ok();
                h.last_error = result.err();
            }
            self.promote_if_serving(&name, now, &mut out);
            return out;
        }
        let Some(name) = self.by_instance.get(&instance).cloned() else {
            return out;
        };
        let Some(v) = self.vassals.get_mut(&name) else {
            return out;
        };
        // a process being stopped or not reported yet is not judged
        let Phase::Running { proc, pid } = &mut v.phase else {
            return out;
        };
        let pid = *pid;
        let Some(h) = proc.health.as_deref_mut() else {
            return out;
        };
        if h.condemned {
            return out;
        }
        h.last_check = Some(wall);
        let grace_until = *h.grace_until.get_or_insert(now + h.grace);
        match result {
            Ok(()) => {
                let first = !h.passed;
                let after_failures = std::mem::take(&mut h.failures);
                h.passed = true;
                h.last_error = None;
                if first || after_failures > 0 {
                    let check = h.check.clone();
                    self.emit(Event::HealthPassed {
                        name: &name,
                        pid,
                        check: &check,
                        after_failures,
                    });
                }
            }
            Err(e) => {
                let in_grace = now < grace_until;
                if !in_grace {
                    h.failures += 1;
                }
                let (failures, allowed) = (h.failures, h.allowed);
                let condemned = !in_grace && failures >= allowed;
                h.condemned = condemned;
                h.last_error = Some(e.clone());
                self.emit(Event::HealthFailed {
                    name: &name,
                    pid,
                    error: &e,
                    failures,
                    allowed,
                    in_grace,
                });
                if condemned {
                    out.push(Action::Kill { instance });
                    let why = format!("failed its health check {failures} times in a row");
                    self.emit(Event::Killed {
                        name: &name,
                        pid,
                        why: &why,
                    });
                }
            }
        }
        out
    }
}
