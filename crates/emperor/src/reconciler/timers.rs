//! Timers: scheduled respawns, the curse tolerance, the heartbeat watchdog.

use super::*;
use std::time::Duration;

impl Reconciler {
    /// The next instant at which [`Reconciler::tick`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hb = self.cfg.required_heartbeat;
        self.vassals
            .values()
            .filter_map(|v| {
                // the watchdog judges running processes only (a process
                // being stopped has the curse tolerance instead)
                match &v.phase {
                    Phase::Stopping {
                        pid: Some(_),
                        kill_at,
                        ..
                    } => Some(*kill_at),
                    Phase::Running { proc, .. } => proc.last_heartbeat.map(|h| h + hb),
                    Phase::Throttled { respawn_at, .. } => Some(*respawn_at),
                    _ => None,
                }
            })
            .chain(self.swap_deadline())
            .min()
    }

    /// The emperor itself did not run for `paused` (it was frozen): the
    /// heartbeats and stop confirmations that arrived meanwhile are still
    /// unread, so no vassal is judged by a deadline that ran out while the
    /// emperor could not read: the heartbeat watchdog restarts its window
    /// at `now`, and every curse tolerance is extended by the pause. A
    /// vassal that really went silent is still killed one window later.
    pub fn emperor_was_paused(&mut self, paused: Duration, now: Instant) {
        let mut rearmed = 0;
        for v in self.vassals.values_mut() {
            match &mut v.phase {
                Phase::Running { proc, .. } if proc.last_heartbeat.is_some() => {
                    proc.last_heartbeat = Some(now);
                    rearmed += 1;
                }
                Phase::Stopping { kill_at, .. } => {
                    *kill_at += paused;
                    rearmed += 1;
                }
                _ => {}
            }
        }
        self.swap_paused(paused);
        self.emit(Event::EmperorPaused { paused, rearmed });
    }

    /// Runs the timers due at `now`: scheduled respawns, SIGKILL of cursed
    /// vassals past the curse tolerance, the heartbeat watchdog.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let hb = self.cfg.required_heartbeat;
        let tolerance = self.cfg.curse_tolerance;
        let due: Vec<(VassalName, bool)> = self
            .vassals
            .values()
            .filter_map(|v| match v.phase {
                Phase::Throttled {
                    respawn_at,
                    activated,
                } if respawn_at <= now => Some((v.name.clone(), activated)),
                _ => None,
            })
            .collect();
        for (name, activated) in due {
            if let Some(v) = self.vassals.get_mut(&name) {
                v.phase = Phase::Stopped;
            }
            self.start(&name, now, activated, &mut out);
        }
        let mut kills: Vec<(VassalName, InstanceId, u32, String)> = Vec::new();
        for v in self.vassals.values_mut() {
            match &mut v.phase {
                Phase::Stopping {
                    proc,
                    pid: Some(pid),
                    kill_at,
                    ..
                } if *kill_at <= now => {
                    *kill_at = now + tolerance;
                    kills.push((
                        v.name.clone(),
                        proc.instance,
                        *pid,
                        format!(
                            "still alive {} s after being told to stop",
                            tolerance.as_secs()
                        ),
                    ));
                }
                Phase::Running { proc, pid }
                    if proc.last_heartbeat.is_some_and(|h| h + hb <= now) =>
                {
                    proc.last_heartbeat = None;
                    kills.push((
                        v.name.clone(),
                        proc.instance,
                        *pid,
                        format!(
                            "sent no heartbeat in last {} seconds, brutally respawning it",
                            hb.as_secs()
                        ),
                    ));
                }
                _ => {}
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
        self.swap_tick(now, &mut out);
        out
    }
}
