//! Vassals put into the table as another emperor runs them (`imperium
//! plan` replays the sources against a running emperor's table).

use super::*;

/// A vassal as a running emperor shows it (its control socket's `list`).
#[derive(Debug, Clone)]
pub struct Adopted {
    /// What it runs: its name, config, change key, owner, socket, directory.
    pub spec: VassalSpec,
    /// The monitor that owns it.
    pub monitor: MonitorId,
    /// Its phase there.
    pub state: VassalState,
    /// Its pid there, when it has a process.
    pub pid: Option<u32>,
    /// Its reloads are paused.
    pub paused: bool,
    /// Why it is refused, when it is.
    pub refused: Option<String>,
    /// Why its last change was rejected, when it was.
    pub rejected: Option<String>,
}

impl Reconciler {
    /// Puts `a` into the table in the phase it has elsewhere, so that the
    /// next monitor changes are decided as that emperor would decide them.
    /// No action results: nothing is started or sent.
    pub fn adopt(&mut self, a: Adopted, now: Instant) {
        let name = a.spec.name.clone();
        let wall = wall_at(self.wall_anchor, now);
        let key = a.spec.key;
        let mut v = Vassal::new(name.clone(), a.monitor, a.spec, wall);
        let instance = self.next_instance;
        self.next_instance += 1;
        // it serves there, as far as a plan can tell
        let mut proc = Proc::new(instance, now, wall);
        proc.ready = true;
        proc.accepting = true;
        let pid = a.pid.filter(|p| *p > 0).unwrap_or(1);
        v.phase = match a.state {
            VassalState::Starting | VassalState::Running => Phase::Running { proc, pid },
            VassalState::Stopping => Phase::Stopping {
                proc,
                pid: Some(pid),
                reason: StopReason::Restart,
                since: now,
                kill_at: now + self.cfg.curse_tolerance,
            },
            VassalState::Throttled => Phase::Throttled {
                respawn_at: now + SPAWN_RETRY_MIN,
                activated: false,
            },
            VassalState::Exiled => Phase::Exiled,
            VassalState::Idle => Phase::Idle,
            VassalState::Refused => Phase::Refused(a.refused.unwrap_or_default()),
            VassalState::OnDemand => Phase::OnDemand,
            VassalState::Stopped => {
                v.stopped_by_operator = true;
                Phase::Stopped
            }
        };
        if v.phase.proc().is_some() {
            self.by_instance.insert(instance, name.clone());
        }
        v.paused = a.paused;
        v.rejected = a.rejected.map(|reason| {
            Box::new(Rejection {
                key,
                reason,
                at: wall,
            })
        });
        self.vassals.insert(name, Box::new(v));
    }
}
