//! Every notable thing the emperor does is one [`Event`]: recording it
//! writes the log line (in uWSGI's familiar wording, with structured
//! fields) and bumps its counter, so logs and counters cannot disagree.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::monitor::MonitorId;
use crate::name::VassalName;
use crate::spec::Owner;

/// How a vassal process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Counters, one per event kind that counts something. Only
/// [`Event::record`] bumps them; the stats server and the Prometheus
/// endpoint read them, so logs, stats and metrics cannot disagree.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counters {
    /// Processes started.
    pub spawns: u64,
    /// Processes that could not be started.
    pub spawn_failures: u64,
    /// Spawns deferred because a resource ran out (EMFILE, ENFILE, EAGAIN,
    /// ENOMEM), each tried again after a backoff.
    pub spawns_deferred: u64,
    /// Reloads sent.
    pub reloads: u64,
    /// Stops sent.
    pub stops: u64,
    /// Deaths nobody asked for.
    pub deaths_unexpected: u64,
    /// Exits with code 26.
    pub deaths_exiled: u64,
    /// SIGKILLs sent.
    pub kills: u64,
    /// Respawns that waited for a timer.
    pub throttled_respawns: u64,
    /// Vassals refused (config too large, tyrant owner, socket).
    pub refused: u64,
    /// Degraded or failed monitor reports.
    pub monitor_errors: u64,
    /// Broodlord zergs added (on SOS).
    pub zergs_added: u64,
    /// On-demand vassals started by a connection.
    pub on_demand_activations: u64,
    /// Health probes that failed.
    pub health_failures: u64,
    /// Vassals restarted because they stayed unhealthy.
    pub health_restarts: u64,
    /// Changed configs checked before a reload (`--emperor-reload-mode
    /// checked`).
    pub reload_checks: u64,
    /// Changed configs whose check failed.
    pub changes_rejected: u64,
    /// Swaps done: a new instance took over from the old one.
    pub swaps: u64,
    /// `--emperor-cluster`: vassals placed on this emperor.
    pub placements: u64,
    /// `--emperor-cluster`: vassals that left this emperor (moved, or the
    /// lease was lost).
    pub unplacements: u64,
    /// Every exit, by cause: `requested` (the emperor asked it to stop),
    /// `exile` (code 26), `exit` (any other code), `signal`.
    pub deaths: BTreeMap<&'static str, u64>,
    /// Degraded/failed reports per monitor id.
    pub monitor_errors_by: BTreeMap<MonitorId, u64>,
    /// Monitor change seen -> command sent (spawn, reload, stop).
    pub reaction: LatencyHistogram,
}

impl Counters {
    /// Takes back the totals a previous image of the emperor counted (a
    /// hot upgrade): every total by its name in `saved` (the serialized
    /// counters); the deaths by cause and the reaction histogram start
    /// again.
    pub fn restore(&mut self, saved: &serde_json::Value) {
        let get = |k: &str| {
            saved
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let fields: [(&str, &mut u64); 18] = [
            ("spawns", &mut self.spawns),
            ("spawn_failures", &mut self.spawn_failures),
            ("spawns_deferred", &mut self.spawns_deferred),
            ("reloads", &mut self.reloads),
            ("stops", &mut self.stops),
            ("deaths_unexpected", &mut self.deaths_unexpected),
            ("deaths_exiled", &mut self.deaths_exiled),
            ("kills", &mut self.kills),
            ("throttled_respawns", &mut self.throttled_respawns),
            ("refused", &mut self.refused),
            ("monitor_errors", &mut self.monitor_errors),
            ("zergs_added", &mut self.zergs_added),
            ("on_demand_activations", &mut self.on_demand_activations),
            ("health_failures", &mut self.health_failures),
            ("health_restarts", &mut self.health_restarts),
            ("reload_checks", &mut self.reload_checks),
            ("changes_rejected", &mut self.changes_rejected),
            ("swaps", &mut self.swaps),
        ];
        for (k, v) in fields {
            *v = get(k);
        }
    }
}

/// A fixed-bucket histogram of durations, in seconds (Prometheus style:
/// each bucket counts the observations at or below its bound).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyHistogram {
    /// Upper bounds in seconds, ascending.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    pub counts: Vec<u64>,
    /// Sum of every observation, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Bucket bounds of [`LatencyHistogram`], in seconds.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            bounds: LATENCY_BOUNDS,
            counts: vec![0; LATENCY_BOUNDS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += s;
        self.count += 1;
    }

    /// `(upper bound, count in this bucket alone)` pairs, ending with
    /// `+Inf` (the encoder makes them cumulative).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// One notable thing.
#[derive(Debug)]
pub enum Event<'a> {
    /// Its process was created.
    Spawned {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id (0 while the spawn is not reported).
        pid: u32,
        /// The program that was executed.
        program: &'a str,
    },
    /// Its process could not be created.
    SpawnFailed {
        /// The vassal.
        name: &'a VassalName,
        /// Why, as logged.
        error: &'a str,
    },
    /// Its process could not be created now because a resource ran out:
    /// it is tried again after `retry_in`.
    SpawnDeferred {
        /// The vassal.
        name: &'a VassalName,
        /// Why, as logged.
        error: &'a str,
        /// When it is tried again.
        retry_in: Duration,
        /// The first deferral since the last spawn that succeeded (the
        /// one that is logged as a warning).
        first: bool,
    },
    /// A spawn succeeded after `deferred` deferrals.
    SpawnsResumed {
        /// Deferrals in the burst that ended.
        deferred: u64,
    },
    /// It said it is ready (byte 1).
    Ready {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id (0 while the spawn is not reported).
        pid: u32,
    },
    /// It said it accepts requests (byte 5).
    Accepting {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id (0 while the spawn is not reported).
        pid: u32,
    },
    /// It said it is loyal (byte 17), the first time.
    Loyal {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id (0 while the spawn is not reported).
        pid: u32,
    },
    /// The emperor told it to reload (byte 1).
    Reload {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id (0 while the spawn is not reported).
        pid: u32,
    },
    /// The emperor told it to stop.
    Stop {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id (0 while the spawn is not reported).
        pid: u32,
        /// Why, as logged.
        why: &'a str,
    },
    /// Its control pipe closed: it is expected to die.
    Cursed {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id (0 while the spawn is not reported).
        pid: u32,
    },
    /// The emperor SIGKILLed it.
    Killed {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id (0 while the spawn is not reported).
        pid: u32,
        /// Why, as logged.
        why: &'a str,
    },
    /// Its process was reaped.
    Exited {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id (0 while the spawn is not reported).
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// Whether the emperor had asked it to stop.
        expected: bool,
        /// The last lines it wrote (`--vassal-logs` prefix or dir).
        output: &'a [String],
        /// The kernel's OOM killer killed it (`--vassal-memory-max`).
        oom: bool,
    },
    /// It exited with code 26: not respawned until its config changes.
    Exiled {
        /// The vassal.
        name: &'a VassalName,
    },
    /// It left the table.
    Removed {
        /// The vassal.
        name: &'a VassalName,
    },
    /// Its respawn waits for a timer (the blacklist or the loyal backoff).
    RespawnScheduled {
        /// The vassal.
        name: &'a VassalName,
        /// How long until the respawn.
        delay: Duration,
        /// Whether the loyal backoff (not the blacklist) set the delay.
        loyal: bool,
    },
    /// The emperor itself was frozen for `paused`; `rearmed` deadlines got
    /// a fresh start.
    EmperorPaused {
        /// How long the emperor did not run.
        paused: Duration,
        /// How many deadlines got a fresh start.
        rearmed: usize,
    },
    /// It cannot be started as its source describes it.
    Refused {
        /// The vassal.
        name: &'a VassalName,
        /// Why, as logged.
        reason: &'a str,
    },
    /// Another monitor already provides a vassal of that name.
    Conflict {
        /// The vassal.
        name: &'a VassalName,
        /// The monitor that has it.
        owner: MonitorId,
        /// The monitor that also wanted it.
        other: MonitorId,
    },
    /// A monitor's health changed.
    MonitorHealth {
        /// The monitor's index.
        monitor: MonitorId,
        /// The monitor's URL, as shown (passwords masked).
        url: &'a str,
        /// Its new state, as logged.
        state: &'a str,
        /// Vassals of that monitor (or: whether it was running).
        running: usize,
    },
    /// Tyrant mode: the owner is root or below the allowed minimum.
    TyrantRefused {
        /// The vassal.
        name: &'a VassalName,
        /// Why, as logged.
        reason: &'a str,
    },
    /// Tyrant mode: the owner of a known vassal changed.
    OwnerChanged {
        /// The vassal.
        name: &'a VassalName,
        /// The owner before.
        from: Option<Owner>,
        /// The owner now.
        to: Option<Owner>,
        /// Vassals of that monitor (or: whether it was running).
        running: bool,
    },
    /// An on-demand vassal waits for a connection on its socket.
    OnDemandWaiting {
        /// The vassal.
        name: &'a VassalName,
        /// The socket address.
        socket: &'a str,
    },
    /// A connection arrived on an on-demand socket.
    OnDemandActivated {
        /// The vassal.
        name: &'a VassalName,
    },
    /// An on-demand vassal stopped on idle and waits again.
    BackToOnDemand {
        /// The vassal.
        name: &'a VassalName,
    },
    /// A vassal's SOS added a zerg.
    ZergAdded {
        /// The vassal.
        name: &'a VassalName,
        /// The new zerg.
        zerg: &'a VassalName,
        /// Zergs alive now.
        zergs: usize,
        /// The `--emperor-broodlord` limit.
        max: usize,
    },
    /// A vassal's SOS found every broodlord slot taken.
    BroodlordFull {
        /// The vassal.
        name: &'a VassalName,
        /// Zergs alive now.
        zergs: usize,
        /// The `--emperor-broodlord` limit.
        max: usize,
    },
    /// A monitor change was acted on: `latency` from the monitor sending
    /// it to the commands being sent.
    Reacted {
        /// The monitor's index.
        monitor: MonitorId,
        /// From the change seen to the actions sent.
        latency: Duration,
        /// How many actions it caused.
        actions: usize,
    },
    /// An operator paused automatic reloads of a vassal.
    Paused {
        /// The vassal.
        name: &'a VassalName,
    },
    /// An operator resumed automatic reloads; `pending` when a change
    /// arrived meanwhile and is applied now.
    Resumed {
        /// The vassal.
        name: &'a VassalName,
        /// Whether a held change was applied.
        pending: bool,
    },
    /// A config change arrived for a paused vassal and is held.
    ChangeHeld {
        /// The vassal.
        name: &'a VassalName,
    },
    /// The source of a paused vassal went back to the config it runs: the
    /// change held meanwhile is dropped.
    ChangeUndone {
        /// The vassal.
        name: &'a VassalName,
    },
    /// An operator stopped a vassal; it stays down until started again.
    Held {
        /// The vassal.
        name: &'a VassalName,
    },
    /// `--emperor-cluster`: this emperor holds a claim on the vassal and
    /// runs it.
    Placed {
        /// The vassal.
        name: &'a VassalName,
    },
    /// `--emperor-cluster`: this emperor no longer holds a claim on the
    /// vassal (it moves, or the lease was lost): it is stopped here.
    Unplaced {
        /// The vassal.
        name: &'a VassalName,
        /// Why.
        why: &'a str,
    },
    /// An operator cleared the blacklist entry of one vassal.
    Unblacklisted {
        /// The vassal.
        name: &'a VassalName,
    },
    /// `--emperor-reload-mode checked`: its config changed; the change is
    /// checked before its process is reloaded.
    CheckStarted {
        /// The vassal.
        name: &'a VassalName,
    },
    /// The check of its changed config passed: it is reloaded.
    CheckPassed {
        /// The vassal.
        name: &'a VassalName,
        /// How long the check took.
        took: std::time::Duration,
    },
    /// The check of its changed config failed: its process keeps the
    /// config it runs.
    ChangeRejected {
        /// The vassal.
        name: &'a VassalName,
        /// Why.
        reason: &'a str,
        /// How long the check took.
        took: std::time::Duration,
    },
    /// `--emperor-reload-mode swap`: its config changed; a second process
    /// starts with it beside the running one.
    SwapStarted {
        /// The vassal.
        name: &'a VassalName,
    },
    /// The second process serves: it took over, the old one stops.
    SwapDone {
        /// The vassal.
        name: &'a VassalName,
        /// The old process.
        old_pid: u32,
        /// The new one.
        new_pid: u32,
        /// From its start to serving.
        took: std::time::Duration,
    },
    /// SIGHUP did not reload it: its last change was rejected.
    ReloadSkipped {
        /// The vassal.
        name: &'a VassalName,
    },
    /// Its process passed its health check for the first time since its
    /// start or reload, or again after failing.
    HealthPassed {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id.
        pid: u32,
        /// The check.
        check: &'a str,
        /// Failures in a row before this pass (0: the first pass).
        after_failures: u32,
    },
    /// A health probe of its process failed.
    HealthFailed {
        /// The vassal.
        name: &'a VassalName,
        /// Its process id.
        pid: u32,
        /// Why.
        error: &'a str,
        /// Failures in a row so far.
        failures: u32,
        /// Failures in a row that restart it.
        allowed: u32,
        /// Still within the grace period after its start or reload (the
        /// failure does not count).
        in_grace: bool,
    },
}

/// The tail of a death line: the vassal's last lines, one per line.
fn last_output(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut s = String::from("; its last output:");
    for l in lines {
        s.push_str("\n    | ");
        s.push_str(l);
    }
    s
}

fn owner_str(o: Option<Owner>) -> String {
    match o {
        Some(o) => format!("{}:{}", o.uid, o.gid),
        None => "none".to_string(),
    }
}

impl Event<'_> {
    /// Logs the event and counts it.
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per event: each event's log line and counter side by side is the point"
    )]
    pub fn record(&self, c: &mut Counters) {
        use tracing::{error, info, warn};
        match *self {
            Event::Spawned { name, pid, program } => {
                c.spawns += 1;
                info!(vassal = %name, pid, program, "[emperor] spawned uwsgi instance {name} (pid: {pid})");
            }
            Event::SpawnFailed { name, error } => {
                c.spawn_failures += 1;
                error!(vassal = %name, "[emperor] cannot start vassal {name}: {error}");
            }
            Event::SpawnDeferred {
                name,
                error,
                retry_in,
                first,
            } => {
                c.spawns_deferred += 1;
                if first {
                    warn!(vassal = %name, "[emperor] cannot start vassal {name} now: {error}; a resource ran out, so it is tried again in {retry_in:?} (with backoff, up to 5 s); further deferrals are counted, not logged, until a vassal starts");
                } else {
                    tracing::debug!(vassal = %name, "[emperor] vassal {name} deferred again: {error}; retrying in {retry_in:?}");
                }
            }
            Event::SpawnsResumed { deferred } => {
                info!("[emperor] vassals start again: {deferred} starts were deferred because a resource ran out")
            }
            Event::Ready { name, pid } => {
                info!(vassal = %name, pid, "[emperor] vassal {name} has been spawned")
            }
            Event::Accepting { name, pid } => {
                info!(vassal = %name, pid, "[emperor] vassal {name} is ready to accept requests")
            }
            Event::Loyal { name, pid } => {
                info!(vassal = %name, pid, "[emperor] vassal {name} is now loyal")
            }
            Event::Reload { name, pid } => {
                c.reloads += 1;
                info!(vassal = %name, pid, "[emperor] reload the uwsgi instance {name}");
            }
            Event::Stop { name, pid, why } => {
                c.stops += 1;
                info!(vassal = %name, pid, why, "[emperor] stop the uwsgi instance {name}");
            }
            Event::Cursed { name, pid } => {
                warn!(vassal = %name, pid, "[emperor] curse the uwsgi instance {name} (pid: {pid})")
            }
            Event::EmperorPaused { paused, rearmed } => {
                warn!(
                    paused_ms = paused.as_millis() as u64,
                    rearmed,
                    "[emperor] the emperor itself did not run for {:.1} s (SIGSTOP, a VM pause?): {rearmed} heartbeat and stop deadline(s) restarted before judging any vassal",
                    paused.as_secs_f64()
                );
            }
            Event::Killed { name, pid, why } => {
                c.kills += 1;
                warn!(vassal = %name, pid, "[emperor] {why}: killing vassal {name} (pid: {pid}) with SIGKILL");
            }
            Event::Exited {
                name,
                pid,
                status,
                expected,
                output,
                oom,
            } => {
                let said = last_output(output);
                if oom {
                    *c.deaths.entry("oom").or_default() += 1;
                    c.deaths_unexpected += 1;
                    warn!(vassal = %name, pid, %status, oom = true, "[emperor] vassal {name} (pid: {pid}) was killed by the kernel's OOM killer: it went over its memory limit (--vassal-memory-max){said}");
                    return;
                }
                let cause = match status {
                    _ if expected => "requested",
                    ExitStatus::Code(26) => "exile",
                    ExitStatus::Code(_) => "exit",
                    ExitStatus::Signal(_) => "signal",
                };
                *c.deaths.entry(cause).or_default() += 1;
                if expected {
                    info!(vassal = %name, pid, %status, "[emperor] vassal {name} (pid: {pid}) exited with {status}{said}");
                } else {
                    c.deaths_unexpected += 1;
                    warn!(vassal = %name, pid, %status, "[emperor] vassal {name} (pid: {pid}) died unexpectedly with {status}{said}");
                }
            }
            Event::Exiled { name } => {
                c.deaths_exiled += 1;
                warn!(vassal = %name, "[emperor] vassal {name} exited with code 26 (exile): not respawning it until its config changes");
            }
            Event::Removed { name } => {
                info!(vassal = %name, "[emperor] removed uwsgi instance {name}")
            }
            Event::RespawnScheduled { name, delay, loyal } => {
                c.throttled_respawns += 1;
                warn!(vassal = %name, delay_ms = delay.as_millis() as u64, loyal, "[emperor] throttling vassal {name}: respawn in {:.3} s", delay.as_secs_f64());
            }
            Event::Refused { name, reason } => {
                c.refused += 1;
                error!(vassal = %name, "[emperor] refusing vassal {name}: {reason}");
            }
            Event::Conflict { name, owner, other } => {
                warn!(vassal = %name, "[emperor] vassal {name} from monitor #{other} ignored: monitor #{owner} already provides a vassal of that name");
            }
            Event::MonitorHealth {
                monitor,
                url,
                state,
                running,
            } => {
                if state == "connected" {
                    info!(monitor, url, "[emperor] monitor {url} is {state}");
                } else {
                    c.monitor_errors += 1;
                    *c.monitor_errors_by.entry(monitor).or_default() += 1;
                    warn!(monitor, url, "[emperor] monitor {url} is {state}; keeping its {running} vassals as they are");
                }
            }
            Event::TyrantRefused { name, reason } => {
                c.refused += 1;
                error!(vassal = %name, "[emperor-tyrant] invalid permissions for vassal {name}: {reason}");
            }
            Event::OwnerChanged {
                name,
                from,
                to,
                running,
            } => {
                let (from, to) = (owner_str(from), owner_str(to));
                if running {
                    warn!(vassal = %name, %from, %to, "[emperor-tyrant] !!! permissions of file {name} changed ({from} -> {to}). stopping the instance... !!!");
                } else {
                    info!(vassal = %name, %from, %to, "[emperor-tyrant] permissions of {name} changed ({from} -> {to})");
                }
            }
            Event::OnDemandWaiting { name, socket } => {
                info!(vassal = %name, socket, "[uwsgi-emperor] {name} -> \"on demand\" instance detected, waiting for connections on socket \"{socket}\" ...");
            }
            Event::OnDemandActivated { name } => {
                c.on_demand_activations += 1;
                info!(vassal = %name, "[emperor] connection pending on the socket of on-demand vassal {name}: spawning it");
            }
            Event::BackToOnDemand { name } => {
                info!(vassal = %name, "[uwsgi-emperor] {name} back to \"on demand\" mode");
            }
            Event::ZergAdded {
                name,
                zerg,
                zergs,
                max,
            } => {
                c.zergs_added += 1;
                info!(vassal = %name, zerg = %zerg, zergs, max, "[emperor] vassal {name} sent SOS: adding zerg {zerg} ({zergs}/{max})");
            }
            Event::BroodlordFull { name, zergs, max } => {
                warn!(vassal = %name, zergs, max, "[emperor] vassal {name} sent SOS, but the broodlord limit is reached ({zergs}/{max} zergs)");
            }
            Event::Reacted {
                monitor,
                latency,
                actions,
            } => {
                c.reaction.observe(latency);
                tracing::debug!(
                    monitor,
                    actions,
                    latency_us = latency.as_micros() as u64,
                    "[emperor] reacted to a change of monitor #{monitor}"
                );
            }
            Event::Paused { name } => {
                info!(vassal = %name, "[emperor] automatic reloads of vassal {name} paused")
            }
            Event::Resumed { name, pending } => {
                info!(vassal = %name, pending, "[emperor] automatic reloads of vassal {name} resumed")
            }
            Event::ChangeHeld { name } => {
                info!(vassal = %name, "[emperor] vassal {name} changed, but its reloads are paused: holding the change")
            }
            Event::ChangeUndone { name } => {
                info!(vassal = %name, "[emperor] vassal {name} is back to the config it runs: the change held while paused is dropped")
            }
            Event::Held { name } => {
                info!(vassal = %name, "[emperor] vassal {name} stopped by the operator: it stays down until started")
            }
            Event::Placed { name } => {
                c.placements += 1;
                info!(vassal = %name, "[emperor] cluster: vassal {name} is placed on this emperor");
            }
            Event::Unplaced { name, why } => {
                c.unplacements += 1;
                info!(vassal = %name, "[emperor] cluster: vassal {name} leaves this emperor: {why}");
            }
            Event::Unblacklisted { name } => {
                info!(vassal = %name, "[emperor] blacklist entry of vassal {name} cleared")
            }
            Event::CheckStarted { name } => {
                c.reload_checks += 1;
                info!(vassal = %name, "[emperor] the config of vassal {name} changed: checking it before the reload");
            }
            Event::CheckPassed { name, took } => {
                info!(vassal = %name, took_ms = took.as_millis() as u64, "[emperor] the new config of vassal {name} passed its check in {} ms: reloading", took.as_millis());
            }
            Event::ChangeRejected { name, reason, took } => {
                c.changes_rejected += 1;
                tracing::error!(vassal = %name, took_ms = took.as_millis() as u64, "[emperor] the new config of vassal {name} was REJECTED by its check; the running instance keeps its config (fix the config, or imperium ctl reload {name} --force): {reason}");
            }
            Event::SwapStarted { name } => {
                info!(vassal = %name, "[emperor] the config of vassal {name} changed: starting a new instance beside the running one (swap)");
            }
            Event::SwapDone {
                name,
                old_pid,
                new_pid,
                took,
            } => {
                c.swaps += 1;
                info!(vassal = %name, old_pid, new_pid, took_ms = took.as_millis() as u64, "[emperor] vassal {name} swapped: the new instance (pid {new_pid}) serves after {} ms, stopping the old one (pid {old_pid})", took.as_millis());
            }
            Event::ReloadSkipped { name } => {
                tracing::warn!(vassal = %name, "[emperor] not reloading vassal {name}: its last change was rejected (imperium ctl reload {name} --force applies it)");
            }
            Event::HealthPassed {
                name,
                pid,
                check,
                after_failures,
            } => {
                if after_failures == 0 {
                    info!(vassal = %name, pid, "[emperor] vassal {name} is healthy ({check})");
                } else {
                    info!(vassal = %name, pid, "[emperor] vassal {name} is healthy again ({check}) after {after_failures} failed check(s)");
                }
            }
            Event::HealthFailed {
                name,
                pid,
                error,
                failures,
                allowed,
                in_grace,
            } => {
                c.health_failures += 1;
                if !in_grace && failures >= allowed {
                    c.health_restarts += 1;
                    tracing::error!(vassal = %name, pid, failures, "[emperor] vassal {name} failed its health check {failures} times in a row, restarting it: {error}");
                } else if in_grace {
                    tracing::debug!(vassal = %name, pid, "[emperor] health check of vassal {name} failed during its grace period: {error}");
                } else {
                    warn!(vassal = %name, pid, failures, "[emperor] health check of vassal {name} failed ({failures} of {allowed} in a row): {error}");
                }
            }
        }
    }
}
