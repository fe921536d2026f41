//! Hot upgrade (`imperium ctl upgrade`, SIGUSR2, docs/upgrade.md): the
//! emperor writes its state into a memfd, checks that the new binary can
//! read it (`imperium --check-upgrade STATE`), and re-executes itself in
//! place. The process keeps its pid, so every vassal stays its child (their
//! `PR_SET_PDEATHSIG` does not fire: the exec comes from the thread that
//! spawned them) and every descriptor it made inheritable for the exec
//! stays valid: the vassals' emperor sockets, the on-demand sockets, the
//! output pipes and the observers' listening sockets.
//!
//! This module is the format: a versioned, self-describing JSON document
//! that does not follow the emperor's internal types, so that they can
//! change between releases and the format stays a contract. Times are
//! stored relative to the moment of writing (milliseconds; negative is in
//! the past) or as wall-clock milliseconds since the epoch.

use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

/// The version of the state this build writes, and the newest it reads.
pub const STATE_VERSION: u32 = 1;

/// The oldest version of the state this build reads.
pub const OLDEST_STATE_VERSION: u32 = 1;

/// The environment variable that gives the new image the state's fd.
pub const STATE_VAR: &str = "IMPERIUM_UPGRADE_STATE";

/// The argument of the hidden check: `imperium --check-upgrade STATE`
/// (`-` reads the state from stdin).
pub const CHECK_ARG: &str = "--check-upgrade";

/// The most bytes of state read back (a state of 10,000 vassals is a few
/// megabytes).
pub const MAX_STATE: u64 = 256 << 20;

/// The emperor's state at the moment of an upgrade.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// [`STATE_VERSION`] of the writer.
    pub version: u32,
    /// The imperium version that wrote it (for messages only).
    pub writer: String,
    /// The emperor's pid (the same after the exec).
    pub pid: u32,
    /// The command line the emperor was started with (argv[0] first).
    pub argv: Vec<String>,
    /// The directory it was started in.
    pub cwd: String,
    /// The URL of each monitor, in order (vassals name theirs by index).
    pub monitors: Vec<String>,
    /// The next instance id to give a process.
    pub next_instance: u64,
    /// `UWSGI_BROODLORD_NUM` so far.
    pub broodlord_num: u64,
    /// The vassal table.
    pub vassals: Vec<SavedVassal>,
    /// The blacklist of non-loyal vassals.
    #[serde(default)]
    pub blacklist: Vec<SavedBlacklist>,
    /// The on-demand sockets held (by vassal name).
    #[serde(default)]
    pub on_demand: Vec<SavedSocket>,
    /// The output pipe of each vassal name (`--vassal-logs` prefix, dir).
    #[serde(default)]
    pub logs: Vec<SavedSocket>,
    /// The observers' listening sockets, by what they serve (`stats`,
    /// `metrics`, `control`, `command`).
    #[serde(default)]
    pub observers: Vec<SavedObserver>,
    /// The control connection that asked for the upgrade: the new image
    /// answers it once every vassal is adopted.
    #[serde(default)]
    pub reply_fd: Option<i32>,
    /// Signals taken but not yet acted on when the emperor re-executed
    /// (`reload-all`, `shutdown`, `clear-blacklist`, `log-vassals`,
    /// `rescan`): the new image acts on them.
    #[serde(default)]
    pub pending: Vec<String>,
    /// The emperor's counters (the stats `counters`, the metrics).
    #[serde(default)]
    pub counters: serde_json::Value,
    /// The directory the vassals' cgroups are made in (`--vassal-cgroup`).
    #[serde(default)]
    pub cgroup_root: Option<String>,
    /// The emperor made that directory (`auto`) and removes it at exit.
    #[serde(default)]
    pub cgroup_owned_root: bool,
    /// Each monitor's source identity (what it shows, or the URL itself
    /// for zmq://), in order: vassals keep their source by it.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The emperor's settings as it started: its command line with its
    /// config files expanded (the new image compares its own).
    #[serde(default)]
    pub settings: Vec<String>,
    /// `ctl upgrade --reread-config`: the new image applies what changed
    /// in the command line's config files (sources added and removed,
    /// what applies live) instead of refusing a change.
    #[serde(default)]
    pub reread_config: bool,
}

/// One entry of the vassal table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedVassal {
    /// Its name.
    pub name: String,
    /// The index of the monitor that owns it.
    pub monitor: usize,
    /// What its source wants (`None`: removed, being stopped).
    pub desired: Option<SavedSpec>,
    /// The change key last acted on (`file:MTIME_NS:INO:SIZE`, `stamp:N`).
    pub applied_key: String,
    /// What its process is doing.
    pub phase: SavedPhase,
    /// Consecutive crashes of a loyal vassal.
    #[serde(default)]
    pub crash_streak: u32,
    /// Reloads so far.
    #[serde(default)]
    pub reloads: u64,
    /// Restarts after a death so far.
    #[serde(default)]
    pub restarts: u64,
    /// When it entered the table (ms since the epoch).
    pub born_ms: i64,
    /// How its last process ended.
    #[serde(default)]
    pub last_exit: Option<SavedExit>,
    /// Its last process was killed by the OOM killer.
    #[serde(default)]
    pub last_oom: bool,
    /// Its cgroup directory.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// When it last said it was loyal, ready, accepting (ms since the
    /// epoch).
    #[serde(default)]
    pub last_loyal_ms: Option<i64>,
    /// See [`SavedVassal::last_loyal_ms`].
    #[serde(default)]
    pub last_ready_ms: Option<i64>,
    /// See [`SavedVassal::last_loyal_ms`].
    #[serde(default)]
    pub last_accepting_ms: Option<i64>,
    /// For a broodlord zerg: its base vassal.
    #[serde(default)]
    pub zerg_of: Option<String>,
    /// Zergs started for it so far.
    #[serde(default)]
    pub zergs_started: u64,
    /// The address its on-demand socket is held at.
    #[serde(default)]
    pub listening: Option<String>,
    /// Stopped by an operator.
    #[serde(default)]
    pub stopped_by_operator: bool,
    /// Reloads paused by an operator.
    #[serde(default)]
    pub paused: bool,
    /// The change held while paused.
    #[serde(default)]
    pub held_change: Option<SavedSpec>,
    /// The last change rejected by its check.
    #[serde(default)]
    pub rejected: Option<SavedRejection>,
}

/// A vassal spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedSpec {
    /// Its name.
    pub name: String,
    /// Where its config comes from.
    pub config: SavedConfig,
    /// Its change key.
    pub key: String,
    /// Its owner `[uid, gid]`.
    #[serde(default)]
    pub owner: Option<(u32, u32)>,
    /// Its on-demand socket.
    #[serde(default)]
    pub socket: Option<String>,
    /// Its working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// The limits its source's record sets (`key = value` lines).
    #[serde(default)]
    pub limits: Option<String>,
}

/// Where a config comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SavedConfig {
    /// A file.
    File(String),
    /// Text pushed over the config pipe.
    Inline(String),
    /// A URL the vassal fetches.
    Url(String),
}

/// What a vassal's process is doing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SavedPhase {
    /// Its process runs.
    Running {
        /// The process.
        proc: SavedProc,
    },
    /// Its process was told to stop.
    Stopping {
        /// The process.
        proc: SavedProc,
        /// Why (`removed`, `restart`, `pipe_closed`, `idle`, `shutdown`,
        /// `operator`).
        reason: String,
        /// How long ago it was told (ms).
        since_ms: i64,
        /// When the next SIGKILL is due (ms from the writing).
        kill_in_ms: i64,
    },
    /// A (re)spawn is scheduled.
    Throttled {
        /// When (ms from the writing).
        respawn_in_ms: i64,
        /// On demand: a connection is waiting for it.
        activated: bool,
    },
    /// Its on-demand socket waits for a connection.
    OnDemand,
    /// Exit code 26: waits for a change.
    Exiled,
    /// Stopped on its own request: waits for a change.
    Idle,
    /// Refused: waits for a change.
    Refused {
        /// Why.
        reason: String,
    },
    /// Stopped by an operator.
    Stopped,
}

/// One vassal process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedProc {
    /// Its instance id.
    pub instance: u64,
    /// Its pid.
    pub pid: u32,
    /// How long ago it was started (ms).
    pub started_ms: i64,
    /// When it was started (ms since the epoch).
    pub started_wall_ms: i64,
    /// It sent byte 1 since its last (re)load.
    pub ready: bool,
    /// It sent byte 5 since its last (re)load.
    pub accepting: bool,
    /// It sent byte 17.
    pub loyal: bool,
    /// Its last heartbeat, how long ago (ms).
    #[serde(default)]
    pub heartbeat_ms: Option<i64>,
    /// The emperor's end of its control socket.
    pub ctrl_fd: i32,
    /// The emperor's end of its config socket.
    #[serde(default)]
    pub config_fd: Option<i32>,
    /// It was reaped and its exit not yet acted on: the new image acts on
    /// it (the vassal is then respawned as any other exit says).
    #[serde(default)]
    pub exited: Option<SavedExit>,
    /// What the emperor had queued for it and not yet written.
    #[serde(default)]
    pub queued: Vec<SavedCmd>,
    /// Its cgroup.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Its limited cgroup v1 groups.
    #[serde(default)]
    pub v1: Vec<String>,
    /// It writes into the output pipe of this vassal name.
    #[serde(default)]
    pub log: Option<String>,
}

/// A command queued for a vassal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SavedCmd {
    /// A protocol byte.
    Byte(u8),
    /// A config push.
    Config(String),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SavedExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// A rejected change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedRejection {
    /// The change key.
    pub key: String,
    /// Why.
    pub reason: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

/// A blacklist entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedBlacklist {
    /// The vassal.
    pub name: String,
    /// Its first death, how long ago (ms).
    pub first_ms: i64,
    /// Its latest death, how long ago (ms).
    pub last_ms: i64,
    /// The refusal window (ms).
    pub level_ms: u64,
    /// Deaths after the first.
    pub attempt: u32,
}

/// A descriptor held for a vassal name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedSocket {
    /// The vassal name.
    pub name: String,
    /// The address it is bound to (on-demand sockets).
    #[serde(default)]
    pub address: String,
    /// The descriptor.
    pub fd: i32,
}

/// An observer's listening socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedObserver {
    /// What it serves: `stats`, `metrics`, `control`, `command`.
    pub what: String,
    /// Its address, as given.
    pub addr: String,
    /// The descriptor.
    pub fd: i32,
}

/// Why a state cannot be adopted.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading it failed.
    #[error("cannot read the state: {0}")]
    Io(#[from] std::io::Error),
    /// It is not a state.
    #[error("not an imperium upgrade state: {0}")]
    Format(#[from] serde_json::Error),
    /// A version this build does not read.
    #[error("state version {found} (written by imperium {writer}) is not one this imperium reads ({OLDEST_STATE_VERSION} to {STATE_VERSION})")]
    Version {
        /// The version found.
        found: u32,
        /// Who wrote it.
        writer: String,
    },
    /// It is inconsistent.
    #[error("inconsistent state: {0}")]
    Invalid(String),
}

/// Just the version, read first: a newer state may not parse as this one.
#[derive(Deserialize)]
struct Header {
    version: u32,
    #[serde(default)]
    writer: String,
}

impl State {
    /// Parses and checks a state: its version, and that no descriptor is
    /// claimed twice.
    pub fn parse(bytes: &[u8]) -> Result<State, StateError> {
        let h: Header = serde_json::from_slice(bytes)?;
        if !(OLDEST_STATE_VERSION..=STATE_VERSION).contains(&h.version) {
            return Err(StateError::Version {
                found: h.version,
                writer: h.writer,
            });
        }
        let s: State = serde_json::from_slice(bytes)?;
        s.validate()?;
        Ok(s)
    }

    /// Every descriptor the state names, each once.
    pub fn fds(&self) -> Vec<i32> {
        let mut v = Vec::new();
        for x in &self.vassals {
            if let SavedPhase::Running { proc } | SavedPhase::Stopping { proc, .. } = &x.phase {
                // an exited process hands nothing on
                if proc.exited.is_none() {
                    v.push(proc.ctrl_fd);
                    v.extend(proc.config_fd);
                }
            }
        }
        v.extend(self.on_demand.iter().map(|s| s.fd));
        v.extend(self.logs.iter().map(|s| s.fd));
        v.extend(self.observers.iter().map(|s| s.fd));
        v.extend(self.reply_fd);
        v
    }

    fn validate(&self) -> Result<(), StateError> {
        let mut seen = HashSet::new();
        for fd in self.fds() {
            if fd <= 2 {
                return Err(StateError::Invalid(format!(
                    "descriptor {fd} is a standard stream"
                )));
            }
            if !seen.insert(fd) {
                return Err(StateError::Invalid(format!(
                    "descriptor {fd} is named twice"
                )));
            }
        }
        let mut names = HashSet::new();
        for v in &self.vassals {
            if !names.insert(v.name.as_str()) {
                return Err(StateError::Invalid(format!(
                    "vassal {} is listed twice",
                    v.name
                )));
            }
            if v.monitor >= self.monitors.len() {
                return Err(StateError::Invalid(format!(
                    "vassal {} names monitor {} of {}",
                    v.name,
                    v.monitor,
                    self.monitors.len()
                )));
            }
        }
        Ok(())
    }

    /// Each monitor's source identity: [`State::sources`], or the
    /// monitors' URLs in a state that carries none.
    pub fn source_ids(&self) -> &[String] {
        if self.sources.is_empty() {
            &self.monitors
        } else {
            &self.sources
        }
    }

    /// A one-line summary (`--check-upgrade` prints it).
    pub fn summary(&self) -> String {
        let procs = self
            .vassals
            .iter()
            .filter(|v| {
                matches!(
                    v.phase,
                    SavedPhase::Running { .. } | SavedPhase::Stopping { .. }
                )
            })
            .count();
        format!(
            "state version {} from imperium {} (pid {}): {} vassals, {procs} processes, {} monitors, {} descriptors",
            self.version,
            self.writer,
            self.pid,
            self.vassals.len(),
            self.monitors.len(),
            self.fds().len()
        )
    }

    /// Writes the state into a new memfd (close-on-exec, offset 0).
    pub fn to_memfd(&self) -> std::io::Result<OwnedFd> {
        let fd = nix::sys::memfd::memfd_create(
            c"imperium-upgrade-state",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )?;
        let mut f = std::fs::File::from(fd);
        serde_json::to_writer(std::io::BufWriter::new(&mut f), self)
            .map_err(std::io::Error::other)?;
        f.flush()?;
        f.rewind()?;
        Ok(f.into())
    }
}

/// Reads a state from a reader, bounded by [`MAX_STATE`].
pub fn read_state(r: impl Read) -> Result<State, StateError> {
    let mut buf = Vec::new();
    r.take(MAX_STATE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_STATE {
        return Err(StateError::Invalid(format!("over {} MiB", MAX_STATE >> 20)));
    }
    State::parse(&buf)
}

/// `imperium --check-upgrade STATE`: reads the state at `path` (`-` for
/// stdin) and says whether this build can adopt it. Touches nothing.
pub fn check_main(path: &str) -> Result<State, StateError> {
    if path == "-" {
        read_state(std::io::stdin().lock())
    } else {
        read_state(std::fs::File::open(path)?)
    }
}

/// Milliseconds since the epoch of a wall-clock time.
pub fn wall_ms(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The wall-clock time of milliseconds since the epoch.
pub fn from_wall_ms(ms: i64) -> std::time::SystemTime {
    let d = std::time::Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

/// Milliseconds from `now` to `t` (negative: in the past).
pub fn rel_ms(t: std::time::Instant, now: std::time::Instant) -> i64 {
    match t.checked_duration_since(now) {
        Some(d) => d.as_millis() as i64,
        None => -(now.duration_since(t).as_millis() as i64),
    }
}

/// The instant `ms` milliseconds from `now`.
pub fn from_rel_ms(ms: i64, now: std::time::Instant) -> std::time::Instant {
    let d = std::time::Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        now + d
    } else {
        now.checked_sub(d).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> State {
        State {
            version: STATE_VERSION,
            writer: "test".into(),
            pid: 1,
            argv: vec!["imperium".into()],
            cwd: "/".into(),
            monitors: vec!["dir:///tmp".into()],
            next_instance: 1,
            broodlord_num: 0,
            vassals: Vec::new(),
            blacklist: Vec::new(),
            on_demand: Vec::new(),
            logs: Vec::new(),
            observers: vec![SavedObserver {
                what: "control".into(),
                addr: "/x".into(),
                fd: 5,
            }],
            reply_fd: Some(5),
            pending: Vec::new(),
            counters: serde_json::Value::Null,
            cgroup_root: None,
            cgroup_owned_root: false,
            sources: Vec::new(),
            settings: Vec::new(),
            reread_config: false,
        }
    }

    #[test]
    fn a_newer_version_is_refused_before_it_is_parsed() {
        let e = State::parse(br#"{"version": 99, "writer": "9.9", "whatever": []}"#).unwrap_err();
        assert!(e.to_string().contains("state version 99"), "{e}");
    }

    #[test]
    fn a_descriptor_named_twice_is_refused() {
        let s = minimal();
        let e = State::parse(&serde_json::to_vec(&s).unwrap()).unwrap_err();
        assert!(e.to_string().contains("descriptor 5 is named twice"), "{e}");
        let mut s = s;
        s.reply_fd = Some(6);
        let back = State::parse(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    /// The state of the first release (kept as a fixture): every later
    /// release reads it.
    const V1: &str = include_str!("../../imperium/tests/fixtures/upgrade-state-v1.json");

    #[test]
    fn the_first_release_state_is_read_and_put_back() {
        let s = State::parse(V1.as_bytes()).unwrap();
        assert_eq!(s.version, 1);
        assert_eq!(s.vassals.len(), 4);
        // the exited process hands no descriptor on
        assert_eq!(s.fds(), vec![11, 14, 15, 16, 17]);
        let mut rec = crate::reconciler::Reconciler::new(
            crate::reconciler::ReconcilerConfig::default(),
            s.monitors.clone(),
        );
        let now = std::time::Instant::now();
        let gone = rec
            .restore_table(
                &s.vassals,
                &s.blacklist,
                (s.next_instance, &[Some(0)]),
                &s.counters,
                now,
            )
            .unwrap();
        assert!(gone.is_empty());
        let app = rec.vassal("app.ini").unwrap();
        assert_eq!(app.pid(), Some(4300));
        assert!(app.paused && app.proc().is_some_and(|p| p.loyal));
        let db = rec.vassal("db.ini").unwrap();
        assert_eq!(
            db.phase.stopping().map(|(r, _)| r),
            Some(crate::reconciler::StopReason::Restart)
        );
        assert!(db.rejected.is_some());
        assert_eq!(
            rec.vassal("od.ini").unwrap().phase.state(),
            crate::reconciler::VassalState::OnDemand
        );
        assert!(rec
            .blacklist()
            .allowed_at(&crate::VassalName::derived("crashy.ini".into()))
            .is_some());
        assert_eq!(rec.counters().spawns, 12);
        assert_eq!(rec.next_instance(), 9);
    }

    #[test]
    fn times_round_trip() {
        let now = std::time::Instant::now();
        let later = now + std::time::Duration::from_millis(1500);
        assert_eq!(rel_ms(later, now), 1500);
        assert_eq!(from_rel_ms(1500, now), later);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(from_wall_ms(wall_ms(t)), t);
    }
}
