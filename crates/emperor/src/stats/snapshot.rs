//! The snapshot model: an owned copy of what an observer may see of the
//! vassal table, taken inside the emperor's loop.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::command::Command;
use crate::events::{Counters, ExitStatus};
use crate::logs::LogCounts;
use crate::reconciler::{HealthState, Phase, Proc, Reconciler, VassalState};
use crate::spec::{ConfigSource, MonitorHealth};

/// One monitor in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorSnap {
    /// Its index (order of the `--emperor` options).
    pub id: usize,
    /// The URL as shown (passwords removed).
    pub url: String,
    /// `unknown` (nothing reported yet), `connected`, `degraded`, `failed`.
    pub health: &'static str,
    /// The reason when degraded or failed.
    pub reason: Option<String>,
}

/// One vassal in a snapshot.
#[derive(Debug, Clone, Serialize)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "uWSGI's stats keys (loyal, ready, accepting, zerg, ...) are booleans"
)]
pub struct VassalSnap {
    /// The name.
    pub name: String,
    /// Its phase.
    pub state: VassalState,
    /// Its pid.
    pub pid: Option<u32>,
    /// The index of its monitor.
    pub monitor: usize,
    /// Where the config comes from: a path, `(inline)`, or a URL
    /// (password removed).
    pub config: String,
    /// When it entered the table (Unix time).
    pub born: f64,
    /// Its change key, in seconds (uWSGI's `last_mod`).
    pub last_mod: i64,
    /// Its change key, exact (`file:MTIME_NS:INO:SIZE` or `stamp:N`).
    pub change_key: String,
    /// The directory it runs in, when its source gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// Its last heartbeat (Unix time, 0: none).
    pub last_heartbeat: f64,
    /// It said it is loyal.
    pub loyal: bool,
    /// It said it is ready.
    pub ready: bool,
    /// It said it accepts requests.
    pub accepting: bool,
    /// When it last said so (Unix time, 0: never).
    pub last_loyal: f64,
    /// When it last said it was ready.
    pub last_ready: f64,
    /// When it last said it accepted requests.
    pub last_accepting: f64,
    /// When its process started (Unix time).
    pub last_run: f64,
    /// When the emperor decided to stop it (0 when not stopping).
    pub cursed: f64,
    /// It is a broodlord zerg.
    pub zerg: bool,
    /// Its on-demand socket.
    pub on_demand: Option<String>,
    /// Its uid (tyrant mode; 0 otherwise).
    pub uid: u32,
    /// Its gid (tyrant mode; 0 otherwise).
    pub gid: u32,
    /// Emperor-initiated reloads.
    pub reloads: u64,
    /// Respawns after a death.
    pub restarts: u64,
    /// How its last process ended, with its last lines.
    pub last_exit: Option<LastExit>,
    /// Its captured output (`--vassal-logs` prefix or dir; `None` when
    /// nothing is captured).
    pub log: Option<LogCounts>,
    /// Its cgroup (`--vassal-cgroup`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// What it uses now (measured when the snapshot is requested; `None`
    /// without a process).
    pub usage: Option<super::usage::Usage>,
    /// Unix time of a scheduled (throttled) respawn.
    pub next_respawn: Option<f64>,
    /// Its reloads are paused.
    pub paused: bool,
    /// A config change arrived while paused and waits for `resume`.
    pub change_held: bool,
    /// Why it is refused.
    pub refused: Option<String>,
    /// It serves: it said it accepts requests (byte 5) since its last
    /// (re)load and passed its health check since, when it has one (what
    /// `imperium ctl wait` waits for).
    pub serving: bool,
    /// Its health check, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSnap>,
    /// `--emperor-reload-mode checked`: the check of its changed config
    /// runs; it has not been reloaded with it yet.
    pub checking: bool,
    /// Its last change failed its check: it was not reloaded with it.
    pub rejected: Option<RejectedSnap>,
    /// `--emperor-reload-mode swap`: the pid of the new instance started
    /// beside the running one, until it takes over (0: not reported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_pid: Option<u32>,
    /// `--emperor-cluster`: `here` (this emperor holds a claim on it) or
    /// `elsewhere`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<&'static str>,
}

/// A change that failed its check, in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedSnap {
    /// Why: the check's exit and the last lines it wrote.
    pub reason: String,
    /// When (Unix time).
    pub at: f64,
}

/// The health check of a vassal's process in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSnap {
    /// The check (`http://...`, `tcp://...`, `unix:...`, `exec:...`).
    pub check: String,
    /// `unknown`, `passing`, `failing` or `unhealthy` (being restarted).
    pub state: HealthState,
    /// It passed once since its start or last reload.
    pub passed: bool,
    /// Failures in a row now.
    pub failures: u32,
    /// Failures in a row that restart it.
    pub failures_allowed: u32,
    /// The reason of the last failure.
    pub last_error: Option<String>,
    /// When the last probe ended (Unix time, 0: not yet).
    pub last_check: f64,
}

/// How a vassal's last process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastExit {
    /// `code` or `signal`.
    #[serde(flatten)]
    pub status: ExitStatus,
    /// The last lines it wrote (`--vassal-logs` prefix or dir; absent when
    /// nothing was captured).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
    /// The kernel's OOM killer killed it (`--vassal-memory-max`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub oom: bool,
}

/// One blacklist entry in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct BlacklistSnap {
    /// The vassal.
    pub name: String,
    /// The refusal window in milliseconds.
    pub level_ms: u64,
    /// Deaths counted so far.
    pub attempt: u32,
    /// The first (Unix time).
    pub first_attempt: f64,
    /// The latest (Unix time).
    pub last_attempt: f64,
}

/// What observers see: an owned copy of the table, the blacklist, the
/// monitors and the counters at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Unix time the snapshot was taken.
    pub taken: f64,
    /// The emperor's pid.
    pub pid: u32,
    /// The emperor's uid.
    pub uid: u32,
    /// The emperor's gid.
    pub gid: u32,
    /// The emperor's directory.
    pub cwd: PathBuf,
    /// Tyrant mode is on.
    pub tyrant: bool,
    /// Ragnarok has begun.
    pub shutting_down: bool,
    /// The monitors.
    pub monitors: Vec<MonitorSnap>,
    /// The vassals.
    pub vassals: Vec<VassalSnap>,
    /// The blacklist.
    pub blacklist: Vec<BlacklistSnap>,
    /// The event counters.
    pub counters: Counters,
    /// `--emperor-cluster`: the members and what each holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterView>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Converts monotonic instants to wall-clock seconds.
struct Clock {
    now: Instant,
    wall: SystemTime,
    /// `--emperor-cluster` is on.
    cluster: bool,
}

impl Clock {
    fn unix(&self, t: Instant) -> f64 {
        let w = if t <= self.now {
            self.wall.checked_sub(self.now - t)
        } else {
            self.wall.checked_add(t - self.now)
        };
        w.map(unix).unwrap_or(0.0)
    }
}

/// One vassal of the table as a snapshot shows it.
fn vassal_snap(v: &crate::reconciler::Vassal, clock: &Clock) -> VassalSnap {
    let p = v.proc();
    let spec = v.desired.as_ref();
    VassalSnap {
        name: v.name.to_string(),
        state: v.phase.state(),
        pid: v.pid(),
        monitor: v.monitor,
        config: match spec.map(|s| &s.config) {
            Some(ConfigSource::File(p)) => p.display().to_string(),
            Some(ConfigSource::Inline(_)) => "(inline)".into(),
            Some(ConfigSource::Url(u)) => redact(u),
            None => String::new(),
        },
        born: unix(v.born),
        last_mod: v.applied_key.as_secs(),
        change_key: v.applied_key.to_string(),
        workdir: spec.and_then(|s| s.workdir.clone()),
        last_heartbeat: p
            .and_then(|p| p.last_heartbeat)
            .map_or(0.0, |t| clock.unix(t)),
        loyal: p.is_some_and(|p| p.loyal),
        ready: p.is_some_and(|p| p.ready),
        accepting: p.is_some_and(|p| p.accepting),
        last_loyal: v.last_loyal.map_or(0.0, unix),
        last_ready: v.last_ready.map_or(0.0, unix),
        last_accepting: v.last_accepting.map_or(0.0, unix),
        last_run: p.map_or(0.0, |p| unix(p.started_wall)),
        cursed: v.phase.stopping().map_or(0.0, |(_, t)| clock.unix(t)),
        zerg: v.name.as_str().contains(':'),
        on_demand: spec.and_then(|s| s.socket.clone()),
        uid: spec.and_then(|s| s.owner).map_or(0, |o| o.uid),
        gid: spec.and_then(|s| s.owner).map_or(0, |o| o.gid),
        reloads: v.reloads,
        restarts: v.restarts,
        last_exit: v.last_exit.map(|status| LastExit {
            status,
            output: v.last_output.clone(),
            oom: v.last_oom,
        }),
        log: v.log.as_ref().map(|l| l.0.counts()),
        cgroup: v.cgroup.as_deref().map(PathBuf::from),
        usage: None,
        next_respawn: v.phase.respawn_at().map(|t| clock.unix(t)),
        paused: v.paused,
        change_held: v.held_change.is_some(),
        refused: v.phase.refused().map(str::to_string),
        serving: matches!(v.phase, Phase::Running { .. }) && p.is_some_and(Proc::serving),
        health: p.and_then(|p| p.health.as_deref()).map(|h| HealthSnap {
            check: h.check.clone(),
            state: h.state(),
            passed: h.passed,
            failures: h.failures,
            failures_allowed: h.allowed,
            last_error: h.last_error.clone(),
            last_check: h.last_check.map_or(0.0, unix),
        }),
        checking: v.checking.is_some(),
        rejected: v.rejected.as_deref().map(|r| RejectedSnap {
            reason: r.reason.clone(),
            at: unix(r.at),
        }),
        swap_pid: v.successor.as_ref().map(|s| s.pid.unwrap_or(0)),
        placement: clock.cluster.then_some(if v.unplaced.is_some() {
            "elsewhere"
        } else {
            "here"
        }),
    }
}

/// Replaces passwords in `s`: the password of `scheme://user:password@`
/// URLs and the value of `password=` in key/value strings (PostgreSQL
/// conninfo).
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(c) => {
                        out.push_str(&userinfo[..c]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    // key=value strings
    let mut res = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        res.push_str(&rest[..i + 9]);
        let tail = &rest[i + 9..];
        let end = if let Some(q) = tail.strip_prefix('\'') {
            q.find('\'').map(|e| e + 2).unwrap_or(tail.len())
        } else {
            tail.find(|c: char| c.is_whitespace() || c == ';' || c == '&')
                .unwrap_or(tail.len())
        };
        res.push_str("***");
        rest = &tail[end..];
    }
    res.push_str(rest);
    res
}

impl Snapshot {
    /// Copies what observers may see out of the reconciler.
    pub fn take(rec: &Reconciler) -> Snapshot {
        let cluster = rec.cluster_view();
        let clock = Clock {
            now: Instant::now(),
            wall: SystemTime::now(),
            cluster: cluster.is_some(),
        };
        let monitors = rec
            .monitors()
            .iter()
            .enumerate()
            .map(|(id, m)| {
                let (health, reason) = match &m.health {
                    None => ("unknown", None),
                    Some(MonitorHealth::Connected) => ("connected", None),
                    Some(MonitorHealth::Degraded(r)) => ("degraded", Some(redact(r))),
                    Some(MonitorHealth::Failed(r)) => ("failed", Some(redact(r))),
                };
                MonitorSnap {
                    id,
                    url: redact(&m.url),
                    health,
                    reason,
                }
            })
            .collect();
        let vassals = rec.vassals().map(|v| vassal_snap(v, &clock)).collect();
        let mut blacklist: Vec<BlacklistSnap> = rec
            .blacklist()
            .entries()
            .map(|(n, e)| BlacklistSnap {
                name: n.to_string(),
                level_ms: e.level.as_millis() as u64,
                attempt: e.attempt,
                first_attempt: clock.unix(e.first_attempt),
                last_attempt: clock.unix(e.last_attempt),
            })
            .collect();
        blacklist.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            taken: unix(clock.wall),
            pid: std::process::id(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cwd: std::env::current_dir().unwrap_or_default(),
            tyrant: false,
            shutting_down: rec.is_shutting_down(),
            monitors,
            vassals,
            blacklist,
            counters: rec.counters().clone(),
            cluster,
        }
    }

    /// Asks the emperor for a snapshot through its command channel, then
    /// measures what each vassal uses ([`Snapshot::measure`]) off the
    /// emperor's loop.
    pub async fn request(commands: &mpsc::Sender<Command>) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        let f = Box::new(move |rec: &Reconciler| {
            let _ = tx.send(Snapshot::take(rec));
        });
        commands.send(Command::Inspect(f)).await.ok()?;
        let mut snap = rx.await.ok()?;
        tokio::task::spawn_blocking(move || {
            snap.measure();
            snap
        })
        .await
        .ok()
    }

    /// Fills in each vassal's [`VassalSnap::usage`] from its cgroup or its
    /// process tree (it reads /proc: not for the emperor's loop).
    pub fn measure(&mut self) {
        let who: Vec<(Option<u32>, Option<&std::path::Path>)> = self
            .vassals
            .iter()
            .map(|v| (v.pid, v.cgroup.as_deref()))
            .collect();
        let got = super::usage::measure(&who);
        for (v, u) in self.vassals.iter_mut().zip(got) {
            v.usage = u;
        }
    }

    /// The vassal called `name`.
    pub fn vassal(&self, name: &str) -> Option<&VassalSnap> {
        self.vassals.iter().find(|v| v.name == name)
    }
}
