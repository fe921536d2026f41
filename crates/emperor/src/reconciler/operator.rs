//! Operator commands on the vassal table: signals (SIGHUP, SIGURG,
//! SIGUSR1, Ragnarok) and the control socket (reload, pause/resume,
//! stop/start, clear the blacklist).

use super::*;

/// Why an operator command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    /// No vassal of that name is in the table.
    #[error("no vassal named {0}")]
    NoSuchVassal(String),
    /// It has no process to act on.
    #[error("vassal {0} is not running")]
    NotRunning(String),
    /// It is being stopped.
    #[error("vassal {0} is stopping")]
    Stopping(String),
    /// `pause` twice.
    #[error("reloads of vassal {0} are already paused")]
    AlreadyPaused(String),
    /// `resume` without `pause`.
    #[error("reloads of vassal {0} are not paused")]
    NotPaused(String),
    /// `stop` twice.
    #[error("vassal {0} is already stopped")]
    AlreadyStopped(String),
    /// `start` of a running vassal.
    #[error("vassal {0} is already running")]
    AlreadyRunning(String),
    /// Its source no longer has it.
    #[error("vassal {0} was removed from its source")]
    Removed(String),
    /// `clear-blacklist NAME` of a vassal that is not in the blacklist.
    #[error("vassal {0} is not blacklisted")]
    NotBlacklisted(String),
    /// Ragnarok has begun.
    #[error("the emperor is shutting down")]
    ShuttingDown,
    /// `start` of a vassal the cluster placed on other emperors.
    #[error(
        "vassal {0} is placed on another emperor of the cluster (imperium ctl cluster shows which)"
    )]
    Elsewhere(String),
    /// `reload` of a vassal whose last change was rejected, or is being
    /// checked, without `--force`.
    #[error("vassal {name} was not reloaded: {why}; the running instance keeps its config (reload it with --force to apply the change anyway)")]
    Unchecked {
        /// The vassal.
        name: String,
        /// Its change's state.
        why: String,
    },
}

impl Reconciler {
    /// SIGHUP: gracefully reload every running vassal, except those whose
    /// last change was rejected or is being checked (a reload would load
    /// it unchecked).
    pub fn reload_all(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        let targets: Vec<(VassalName, InstanceId, u32)> = self
            .vassals
            .values()
            .filter_map(|v| match &v.phase {
                Phase::Running { .. }
                    if v.rejected.is_some() || v.checking.is_some() || v.successor.is_some() =>
                {
                    skipped.push(v.name.clone());
                    None
                }
                Phase::Running { proc, pid } => Some((v.name.clone(), proc.instance, *pid)),
                _ => None,
            })
            .collect();
        for name in &skipped {
            self.emit(Event::ReloadSkipped { name });
        }
        for (name, instance, pid) in targets {
            self.reload(&name, instance, pid, &mut out);
        }
        out
    }

    /// Reloads one vassal (control socket). A vassal whose last change was
    /// rejected, or is being checked, is reloaded only with `force` (which
    /// drops the rejection and the check).
    pub fn reload_one(
        &mut self,
        name: &str,
        force: bool,
        now: Instant,
    ) -> Result<Vec<Action>, OperatorError> {
        let mut out = Vec::new();
        let v = self
            .vassal(name)
            .ok_or_else(|| OperatorError::NoSuchVassal(name.to_string()))?;
        let (instance, pid) = match &v.phase {
            Phase::Starting(p) => (p.instance, 0),
            Phase::Running { proc, pid } => (proc.instance, *pid),
            Phase::Stopping { .. } => return Err(OperatorError::Stopping(name.to_string())),
            _ => return Err(OperatorError::NotRunning(name.to_string())),
        };
        let why = match (&v.rejected, v.checking, &v.successor) {
            (Some(r), _, _) => Some(format!("its last change was rejected: {}", r.reason)),
            (None, Some(_), _) => Some("the check of its last change is running".to_string()),
            (None, None, Some(_)) => Some("a swap to its last change is running".to_string()),
            (None, None, None) => None,
        };
        if let (Some(why), false) = (why, force) {
            return Err(OperatorError::Unchecked {
                name: name.to_string(),
                why,
            });
        }
        let vn = v.name.clone();
        self.retire_successor(&vn, now, &mut out);
        if let Some(v) = self.vassals.get_mut(&vn) {
            v.rejected = None;
            v.checking = None;
        }
        self.reload(&vn, instance, pid, &mut out);
        self.update_zergs(&vn, false, now, &mut out);
        Ok(out)
    }

    fn operator_target(&self, name: &str) -> Result<VassalName, OperatorError> {
        if self.shutting_down {
            return Err(OperatorError::ShuttingDown);
        }
        self.vassal(name)
            .map(|v| v.name.clone())
            .ok_or_else(|| OperatorError::NoSuchVassal(name.to_string()))
    }

    /// Pauses automatic reloads of one vassal: config changes are held
    /// (the newest one kept) until [`Reconciler::resume`]. Removal of the
    /// config still stops it; a crash respawns it with the config it runs.
    pub fn pause(&mut self, name: &str) -> Result<(), OperatorError> {
        let vn = self.operator_target(name)?;
        let v = self.vassals.get_mut(&vn).expect("present");
        if v.paused {
            return Err(OperatorError::AlreadyPaused(name.to_string()));
        }
        v.paused = true;
        self.emit(Event::Paused { name: &vn });
        Ok(())
    }

    /// Resumes automatic reloads of one vassal and applies the change held
    /// meanwhile, if any (as if it arrived now).
    pub fn resume(&mut self, name: &str, now: Instant) -> Result<Vec<Action>, OperatorError> {
        let vn = self.operator_target(name)?;
        let v = self.vassals.get_mut(&vn).expect("present");
        if !v.paused {
            return Err(OperatorError::NotPaused(name.to_string()));
        }
        v.paused = false;
        let held = v.held_change.take();
        let monitor = v.monitor;
        self.emit(Event::Resumed {
            name: &vn,
            pending: held.is_some(),
        });
        let mut out = Vec::new();
        if let Some(spec) = held {
            self.upsert(monitor, *spec, now, &mut out);
        }
        Ok(out)
    }

    /// Stops one vassal on an operator's request; it stays down (whatever
    /// its source says) until [`Reconciler::start_one`].
    pub fn stop_one(&mut self, name: &str, now: Instant) -> Result<Vec<Action>, OperatorError> {
        let vn = self.operator_target(name)?;
        let v = self.vassals.get_mut(&vn).expect("present");
        if v.stopped_by_operator {
            return Err(OperatorError::AlreadyStopped(name.to_string()));
        }
        v.stopped_by_operator = true;
        let mut out = Vec::new();
        if v.listening.take().is_some() {
            // an on-demand vassal stops listening too
            out.push(Action::Unlisten { name: vn.clone() });
        }
        match &mut v.phase {
            // going down already: it stays down
            Phase::Stopping { reason, .. } => *reason = StopReason::Operator,
            Phase::Starting(_) | Phase::Running { .. } => {}
            // no process: nothing scheduled any more
            _ => v.phase = Phase::Stopped,
        }
        self.emit(Event::Held { name: &vn });
        self.stop(&vn, StopReason::Operator, now, &mut out);
        Ok(out)
    }

    /// Starts one vassal on an operator's request: one stopped by
    /// [`Reconciler::stop_one`], exiled, idle, or waiting for a throttled
    /// respawn (its blacklist entry is cleared).
    pub fn start_one(&mut self, name: &str, now: Instant) -> Result<Vec<Action>, OperatorError> {
        let vn = self.operator_target(name)?;
        let v = self.vassals.get_mut(&vn).expect("present");
        if matches!(v.phase, Phase::Starting(_) | Phase::Running { .. }) {
            return Err(OperatorError::AlreadyRunning(name.to_string()));
        }
        if v.desired.is_none() {
            return Err(OperatorError::Removed(name.to_string()));
        }
        if v.unplaced.is_some() {
            return Err(OperatorError::Elsewhere(name.to_string()));
        }
        v.stopped_by_operator = false;
        let mut out = Vec::new();
        match &mut v.phase {
            // going down on our request: start again when its exit is seen
            Phase::Stopping { reason, .. } => *reason = StopReason::Restart,
            _ => {
                v.phase = Phase::Stopped;
                self.blacklist.remove(&vn);
                self.start(&vn, now, false, &mut out);
            }
        }
        Ok(out)
    }

    /// Clears the blacklist entry of one vassal; if it was waiting for a
    /// throttled respawn, it starts now.
    pub fn clear_blacklist_one(
        &mut self,
        name: &str,
        now: Instant,
    ) -> Result<Vec<Action>, OperatorError> {
        let vn = self.operator_target(name)?;
        let mut out = Vec::new();
        if !self.blacklist.remove(&vn) {
            return Err(OperatorError::NotBlacklisted(name.to_string()));
        }
        self.emit(Event::Unblacklisted { name: &vn });
        let v = self.vassals.get_mut(&vn).expect("present");
        if let Phase::Throttled { activated, .. } = v.phase {
            v.phase = Phase::Stopped;
            self.start(&vn, now, activated, &mut out);
        }
        Ok(out)
    }

    /// Clears the whole blacklist (SIGURG, `imperium ctl clear-blacklist`);
    /// vassals waiting for a throttled respawn start now.
    pub fn clear_blacklist_all(&mut self, now: Instant) -> (usize, Vec<Action>) {
        let n = self.clear_blacklist();
        let mut out = Vec::new();
        let waiting: Vec<(VassalName, bool)> = self
            .vassals
            .values()
            .filter_map(|v| match v.phase {
                Phase::Throttled { activated, .. } => Some((v.name.clone(), activated)),
                _ => None,
            })
            .collect();
        for (vn, activated) in waiting {
            if let Some(v) = self.vassals.get_mut(&vn) {
                v.phase = Phase::Stopped;
            }
            self.start(&vn, now, activated, &mut out);
        }
        (n, out)
    }

    /// SIGURG: clears the blacklist.
    pub fn clear_blacklist(&mut self) -> usize {
        let n = self.blacklist.clear();
        tracing::info!(entries = n, "[emperor] cleaning up blacklist ...");
        n
    }

    /// SIGUSR1: one log line per vassal.
    pub fn log_vassals(&self) {
        for v in self.vassals.values() {
            tracing::info!(
                vassal = %v.name,
                pid = v.pid(),
                state = ?v.phase.state(),
                "vassal instance {} (last modified {}) status {} loyal {} zerg {}",
                v.name,
                v.applied_key.as_secs(),
                i32::from(v.phase.stopping().is_some()),
                i32::from(v.proc().is_some_and(|p| p.loyal)),
                i32::from(v.name.as_str().contains(':')),
            );
        }
    }

    /// Ragnarok: stop every vassal; nothing is respawned from now on.
    pub fn shutdown(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.shutting_down {
            return out;
        }
        self.shutting_down = true;
        tracing::warn!("*** RAGNAROK EVOKED ***");
        let names: Vec<VassalName> = self.vassals.keys().cloned().collect();
        for name in names {
            let Some(v) = self.vassals.get_mut(&name) else {
                continue;
            };
            if v.proc().is_none() {
                self.delete(&name, &mut out);
                continue;
            }
            self.stop(&name, StopReason::Shutdown, now, &mut out);
        }
        out
    }

    /// Ragnarok past the mercy time: SIGKILL every vassal still alive.
    pub fn kill_all(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        let mut targets: Vec<(VassalName, InstanceId, u32)> = self
            .vassals
            .values()
            .filter_map(|v| Some((v.name.clone(), v.proc()?.instance, v.pid()?)))
            .collect();
        targets.extend(self.swap_instances());
        for (name, instance, pid) in targets {
            tracing::warn!(vassal = %name, pid, "NO MERCY for vassal {name} !!!");
            self.counters.kills += 1;
            out.push(Action::Kill { instance });
        }
        out
    }
}
