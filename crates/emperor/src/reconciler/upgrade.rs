//! The vassal table written out for a hot upgrade and read back by the new
//! image (the format is [`crate::upgrade`]; the runtime adds the
//! descriptors of each process).

use super::*;
use crate::events::ExitStatus;
use crate::spec::ChangeKey;
use crate::throttle::BlacklistEntry;
use crate::upgrade::{
    from_rel_ms, from_wall_ms, rel_ms, wall_ms, SavedBlacklist, SavedConfig, SavedExit, SavedPhase,
    SavedProc, SavedRejection, SavedSpec, SavedVassal,
};

/// Why the emperor cannot be upgraded right now.
pub fn busy_reason(rec: &Reconciler) -> Option<String> {
    if rec.shutting_down {
        return Some("the emperor is shutting down".into());
    }
    if rec.cfg.cluster {
        // the lease and the claims would have to be handed over too
        return Some("a hot upgrade of a cluster member (--emperor-cluster) is not supported yet: restart it instead (its vassals move to the other members meanwhile)".into());
    }
    if !rec.swaps.is_empty() || !rec.retiring.is_empty() {
        return Some(format!(
            "{} swap(s) of a changed config are in progress (--emperor-reload-mode swap); try again once they are done",
            rec.swaps.len().max(rec.retiring.len())
        ));
    }
    if let Some(v) = rec.vassals.values().find(|v| v.checking.is_some()) {
        return Some(format!(
            "the changed config of {} is being checked (--emperor-reload-mode checked); try again once it is done",
            v.name
        ));
    }
    None
}

pub(crate) fn save_spec(s: &VassalSpec) -> SavedSpec {
    SavedSpec {
        name: s.name.to_string(),
        config: match &s.config {
            ConfigSource::File(p) => SavedConfig::File(p.to_string_lossy().into_owned()),
            ConfigSource::Inline(t) => SavedConfig::Inline(t.to_string()),
            ConfigSource::Url(u) => SavedConfig::Url(u.clone()),
        },
        key: s.key.to_string(),
        owner: s.owner.map(|o| (o.uid, o.gid)),
        socket: s.socket.clone(),
        workdir: s.workdir.as_ref().map(|p| p.to_string_lossy().into_owned()),
        limits: s.limits.as_ref().map(|l| l.lines()),
    }
}

fn restore_spec(s: &SavedSpec) -> Result<VassalSpec, String> {
    Ok(VassalSpec {
        name: VassalName::derived(s.name.clone()),
        config: match &s.config {
            SavedConfig::File(p) => ConfigSource::File(p.into()),
            SavedConfig::Inline(t) => ConfigSource::Inline(t.as_str().into()),
            SavedConfig::Url(u) => ConfigSource::Url(u.clone()),
        },
        key: s.key.parse()?,
        owner: s.owner.map(|(uid, gid)| Owner { uid, gid }),
        socket: s.socket.clone(),
        workdir: s.workdir.as_ref().map(Into::into),
        limits: match &s.limits {
            Some(t) => Some(Box::new(
                crate::cgroup::limits::Limits::from_lines(t).map_err(|e| format!("limits: {e}"))?,
            )),
            None => None,
        },
    })
}

/// An exit status in the state's terms.
pub fn save_exit(st: ExitStatus) -> SavedExit {
    match st {
        ExitStatus::Code(c) => SavedExit::Code(c),
        ExitStatus::Signal(s) => SavedExit::Signal(s),
    }
}

/// An exit status from the state.
pub fn restore_exit(st: SavedExit) -> ExitStatus {
    match st {
        SavedExit::Code(c) => ExitStatus::Code(c),
        SavedExit::Signal(s) => ExitStatus::Signal(s),
    }
}

fn reason_name(r: StopReason) -> &'static str {
    match r {
        StopReason::Removed => "removed",
        StopReason::Restart => "restart",
        StopReason::PipeClosed => "pipe_closed",
        StopReason::Idle => "idle",
        StopReason::Shutdown => "shutdown",
        StopReason::Operator => "operator",
        StopReason::Unplaced => "unplaced",
    }
}

fn reason_from(s: &str) -> Result<StopReason, String> {
    Ok(match s {
        "removed" => StopReason::Removed,
        "restart" => StopReason::Restart,
        "pipe_closed" => StopReason::PipeClosed,
        "idle" => StopReason::Idle,
        "shutdown" => StopReason::Shutdown,
        "operator" => StopReason::Operator,
        "unplaced" => StopReason::Unplaced,
        other => return Err(format!("unknown stop reason {other:?}")),
    })
}

fn save_proc(p: &Proc, pid: u32, now: Instant) -> SavedProc {
    SavedProc {
        instance: p.instance,
        pid,
        started_ms: rel_ms(p.started, now),
        started_wall_ms: wall_ms(p.started_wall),
        ready: p.ready,
        accepting: p.accepting,
        loyal: p.loyal,
        heartbeat_ms: p.last_heartbeat.map(|t| rel_ms(t, now)),
        // the runtime fills in what it holds for the process
        ctrl_fd: -1,
        config_fd: None,
        exited: None,
        queued: Vec::new(),
        cgroup: None,
        v1: Vec::new(),
        log: None,
    }
}

fn restore_proc(p: &SavedProc, now: Instant) -> Proc {
    let mut proc = Proc::new(
        p.instance,
        from_rel_ms(p.started_ms, now),
        from_wall_ms(p.started_wall_ms),
    );
    proc.ready = p.ready;
    proc.accepting = p.accepting;
    proc.loyal = p.loyal;
    proc.last_heartbeat = p.heartbeat_ms.map(|ms| from_rel_ms(ms, now));
    proc
}

impl Reconciler {
    /// The vassal table and the blacklist in the state's terms, each
    /// process without its descriptors (the runtime adds them). A vassal
    /// whose spawn is still waiting for its start hook is saved as due
    /// for a start at once: the new image starts it again.
    pub fn save_table(&self, now: Instant) -> (Vec<SavedVassal>, Vec<SavedBlacklist>) {
        let vassals = self
            .vassals
            .values()
            // removed before its process began: its exit would delete it
            .filter(|v| {
                !matches!(
                    v.phase,
                    Phase::Stopping {
                        pid: None,
                        reason: StopReason::Removed,
                        ..
                    }
                )
            })
            .map(|v| {
                let phase = match &v.phase {
                    Phase::Running { proc, pid } => SavedPhase::Running {
                        proc: save_proc(proc, *pid, now),
                    },
                    Phase::Stopping {
                        proc,
                        pid: Some(pid),
                        reason,
                        since,
                        kill_at,
                    } => SavedPhase::Stopping {
                        proc: save_proc(proc, *pid, now),
                        reason: reason_name(*reason).into(),
                        since_ms: rel_ms(*since, now),
                        kill_in_ms: rel_ms(*kill_at, now),
                    },
                    // no process yet (its start hook runs): started again
                    Phase::Starting(_)
                    | Phase::Stopping {
                        pid: None,
                        reason: StopReason::Restart | StopReason::PipeClosed,
                        ..
                    } => SavedPhase::Throttled {
                        respawn_in_ms: 0,
                        activated: false,
                    },
                    // stopped before its process began: where its exit
                    // would have left it
                    Phase::Stopping {
                        pid: None, reason, ..
                    } => match reason {
                        StopReason::Idle => SavedPhase::Idle,
                        _ => SavedPhase::Stopped,
                    },
                    Phase::Throttled {
                        respawn_at,
                        activated,
                    } => SavedPhase::Throttled {
                        respawn_in_ms: rel_ms(*respawn_at, now),
                        activated: *activated,
                    },
                    Phase::OnDemand => SavedPhase::OnDemand,
                    Phase::Exiled => SavedPhase::Exiled,
                    Phase::Idle => SavedPhase::Idle,
                    Phase::Refused(r) => SavedPhase::Refused { reason: r.clone() },
                    Phase::Stopped => SavedPhase::Stopped,
                };
                SavedVassal {
                    name: v.name.to_string(),
                    monitor: v.monitor,
                    desired: v.desired.as_ref().map(save_spec),
                    applied_key: v.applied_key.to_string(),
                    phase,
                    crash_streak: v.crash_streak,
                    reloads: v.reloads,
                    restarts: v.restarts,
                    born_ms: wall_ms(v.born),
                    last_exit: v.last_exit.map(save_exit),
                    last_oom: v.last_oom,
                    cgroup: v.cgroup.as_ref().map(|p| p.to_string_lossy().into_owned()),
                    last_loyal_ms: v.last_loyal.map(wall_ms),
                    last_ready_ms: v.last_ready.map(wall_ms),
                    last_accepting_ms: v.last_accepting.map(wall_ms),
                    zerg_of: v.zerg_of.as_ref().map(ToString::to_string),
                    zergs_started: v.zergs_started,
                    listening: v.listening.clone(),
                    stopped_by_operator: v.stopped_by_operator,
                    paused: v.paused,
                    held_change: v.held_change.as_deref().map(save_spec),
                    rejected: v.rejected.as_ref().map(|r| SavedRejection {
                        key: r.key.to_string(),
                        reason: r.reason.clone(),
                        at_ms: wall_ms(r.at),
                    }),
                }
            })
            .collect();
        let blacklist = self
            .blacklist
            .entries()
            .map(|(n, e)| SavedBlacklist {
                name: n.to_string(),
                first_ms: rel_ms(e.first_attempt, now),
                last_ms: rel_ms(e.last_attempt, now),
                level_ms: e.level.as_millis() as u64,
                attempt: e.attempt,
            })
            .collect();
        (vassals, blacklist)
    }

    /// The next instance id (saved so that ids never repeat).
    pub fn next_instance(&self) -> InstanceId {
        self.next_instance
    }

    /// Puts the saved table back: every vassal in the phase it had, its
    /// processes known by their instance ids. Nothing is started or sent:
    /// the runtime watches the processes again, and the monitors' next
    /// scans are decided against this table (an unchanged source changes
    /// nothing).
    ///
    /// `monitors[i]` is the monitor here of the previous image's monitor
    /// `i` (`None`: that source is no longer configured); the vassals of
    /// such a source are returned, for [`Reconciler::source_gone`].
    pub fn restore_table(
        &mut self,
        vassals: &[SavedVassal],
        blacklist: &[SavedBlacklist],
        (next_instance, monitors): (InstanceId, &[Option<MonitorId>]),
        counters: &serde_json::Value,
        now: Instant,
    ) -> Result<Vec<VassalName>, String> {
        // all or nothing: every entry is read before any goes in
        let mut entries = Vec::with_capacity(vassals.len());
        let mut instances = HashSet::new();
        for s in vassals {
            let v = restore_vassal(s, now)?;
            if let Some(p) = v.phase.proc() {
                let taken = self.by_instance.contains_key(&p.instance);
                if taken || !instances.insert(p.instance) {
                    return Err(format!(
                        "vassal {}: instance {} is named twice",
                        s.name, p.instance
                    ));
                }
            }
            entries.push((s, v));
        }
        let mut sourceless = Vec::new();
        for (s, mut v) in entries {
            match monitors.get(s.monitor).copied().flatten() {
                Some(m) => v.monitor = m,
                None => {
                    v.monitor = 0;
                    if !v.is_zerg() {
                        sourceless.push(v.name.clone());
                    }
                }
            }
            if let Some(p) = v.phase.proc() {
                self.by_instance.insert(p.instance, v.name.clone());
            }
            self.vassals.insert(v.name.clone(), Box::new(v));
        }
        for b in blacklist {
            self.blacklist.restore(
                VassalName::derived(b.name.clone()),
                BlacklistEntry {
                    first_attempt: from_rel_ms(b.first_ms, now),
                    last_attempt: from_rel_ms(b.last_ms, now),
                    level: Duration::from_millis(b.level_ms),
                    attempt: b.attempt,
                },
            );
        }
        self.next_instance = self.next_instance.max(next_instance);
        self.counters.restore(counters);
        Ok(sourceless)
    }

    /// Stops and removes vassals whose source is no longer configured (a
    /// hot upgrade with `--reread-config`), with their zergs.
    pub fn source_gone(&mut self, names: &[VassalName], now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        for name in names {
            for z in self.zergs_of(name) {
                self.drop_vassal(&z, now, &mut out);
            }
            self.drop_vassal(name, now, &mut out);
        }
        out
    }

    /// Attaches a restored output pipe to every vassal that writes into it
    /// (the vassal itself and its zergs).
    pub fn restore_log(&mut self, name: &str, handle: &std::sync::Arc<crate::logs::LogHandle>) {
        for v in self.vassals.values_mut() {
            let base = v.zerg_of.as_ref().map_or(v.name.as_str(), |b| b.as_str());
            if base == name {
                v.log = Some(handle.clone());
            }
        }
    }
}

/// One vassal of the saved table.
fn restore_vassal(s: &SavedVassal, now: Instant) -> Result<Vassal, String> {
    let bad = |e: String| format!("vassal {}: {e}", s.name);
    let name = VassalName::derived(s.name.clone());
    let desired = s
        .desired
        .as_ref()
        .map(restore_spec)
        .transpose()
        .map_err(bad)?;
    let applied_key: ChangeKey = s.applied_key.parse().map_err(bad)?;
    let phase = match &s.phase {
        SavedPhase::Running { proc } => Phase::Running {
            proc: restore_proc(proc, now),
            pid: proc.pid,
        },
        SavedPhase::Stopping {
            proc,
            reason,
            since_ms,
            kill_in_ms,
        } => Phase::Stopping {
            proc: restore_proc(proc, now),
            pid: Some(proc.pid),
            reason: reason_from(reason).map_err(bad)?,
            since: from_rel_ms(*since_ms, now),
            kill_at: from_rel_ms(*kill_in_ms, now),
        },
        SavedPhase::Throttled {
            respawn_in_ms,
            activated,
        } => Phase::Throttled {
            respawn_at: from_rel_ms(*respawn_in_ms, now),
            activated: *activated,
        },
        SavedPhase::OnDemand => Phase::OnDemand,
        SavedPhase::Exiled => Phase::Exiled,
        SavedPhase::Idle => Phase::Idle,
        SavedPhase::Refused { reason } => Phase::Refused(reason.clone()),
        SavedPhase::Stopped => Phase::Stopped,
    };
    Ok(Vassal {
        name: name.clone(),
        monitor: s.monitor,
        desired,
        applied_key,
        phase,
        crash_streak: s.crash_streak,
        reloads: s.reloads,
        restarts: s.restarts,
        born: from_wall_ms(s.born_ms),
        last_exit: s.last_exit.map(restore_exit),
        last_output: Vec::new(),
        last_oom: s.last_oom,
        log: None,
        cgroup: s
            .cgroup
            .as_ref()
            .map(|p| std::sync::Arc::from(std::path::Path::new(p))),
        last_loyal: s.last_loyal_ms.map(from_wall_ms),
        last_ready: s.last_ready_ms.map(from_wall_ms),
        last_accepting: s.last_accepting_ms.map(from_wall_ms),
        zerg_of: s.zerg_of.clone().map(VassalName::derived),
        zergs_started: s.zergs_started,
        listening: s.listening.clone(),
        stopped_by_operator: s.stopped_by_operator,
        unplaced: None,
        paused: s.paused,
        held_change: s
            .held_change
            .as_ref()
            .map(restore_spec)
            .transpose()
            .map_err(bad)?
            .map(Box::new),
        checking: None,
        rejected: match &s.rejected {
            Some(r) => Some(Box::new(Rejection {
                key: r.key.parse().map_err(bad)?,
                reason: r.reason.clone(),
                at: from_wall_ms(r.at_ms),
            })),
            None => None,
        },
        successor: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::limits::Limits;

    #[test]
    fn a_specs_record_limits_survive_the_upgrade() {
        let mut spec = VassalSpec::inline(
            VassalName::derived("a.ini".to_string()),
            "[uwsgi]\n",
            ChangeKey::Stamp(1),
        );
        spec.limits = Some(Box::new(Limits {
            memory_max: Some(64 << 20),
            memory_high: None,
            cpu_max: Some(0.25),
            pids_max: Some(9),
        }));
        let saved = save_spec(&spec);
        assert_eq!(
            saved.limits.as_deref(),
            Some("memory-max = 67108864\ncpu-max = 0.25\npids-max = 9\n")
        );
        assert_eq!(restore_spec(&saved).unwrap(), spec);
        spec.limits = None;
        assert_eq!(restore_spec(&save_spec(&spec)).unwrap(), spec);
        let mut bad = save_spec(&spec);
        bad.limits = Some("memory-max = lots\n".into());
        assert!(restore_spec(&bad).unwrap_err().starts_with("limits: "));
    }
}
