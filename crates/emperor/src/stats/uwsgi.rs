//! uWSGI's emperor stats document, rendered from a [`Snapshot`].

use serde::Serialize;

use super::snapshot::{LastExit, MonitorSnap, Snapshot};
use crate::events::Counters;
use crate::logs::LogCounts;
use crate::reconciler::VassalState;

impl Snapshot {
    /// uWSGI's emperor stats document (see the module docs), pretty-printed
    /// with tabs unless `minified`.
    pub fn to_uwsgi_json(&self, minified: bool) -> String {
        let doc = self.uwsgi_doc();
        if minified {
            serde_json::to_string(&doc).expect("stats serialise")
        } else {
            let mut buf = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            doc.serialize(&mut ser).expect("stats serialise");
            buf.push(b'\n');
            String::from_utf8(buf).expect("utf-8")
        }
    }

    fn uwsgi_doc(&self) -> UwsgiStats<'_> {
        let secs = |f: f64| f as i64;
        UwsgiStats {
            version: concat!("imperium-", env!("CARGO_PKG_VERSION")),
            pid: self.pid,
            uid: self.uid,
            gid: self.gid,
            cwd: self.cwd.to_string_lossy().into_owned(),
            emperor: self.monitors.iter().map(|m| m.url.as_str()).collect(),
            emperor_tyrant: u8::from(self.tyrant),
            throttle_level: 0,
            vassals: self
                .vassals
                .iter()
                .map(|v| UwsgiVassal {
                    id: &v.name,
                    pid: v.pid.map_or(-1, i64::from),
                    born: secs(v.born),
                    last_mod: v.last_mod,
                    last_heartbeat: secs(v.last_heartbeat),
                    loyal: u8::from(v.loyal),
                    ready: u8::from(v.ready),
                    accepting: u8::from(v.accepting),
                    last_loyal: secs(v.last_loyal),
                    last_ready: secs(v.last_ready),
                    last_accepting: secs(v.last_accepting),
                    first_run: secs(v.born),
                    last_run: secs(v.last_run),
                    cursed: secs(v.cursed),
                    zerg: u8::from(v.zerg),
                    on_demand: v.on_demand.as_deref().unwrap_or(""),
                    uid: v.uid,
                    gid: v.gid,
                    monitor: self.monitors.get(v.monitor).map_or("", |m| m.url.as_str()),
                    respawns: v.reloads,
                    state: v.state,
                    last_exit: v.last_exit.as_ref(),
                    log: v.log,
                    usage: v.usage,
                    restarts: v.restarts,
                    next_respawn: v.next_respawn,
                    next_respawn_in: v
                        .next_respawn
                        .map(|t| ((t - self.taken).max(0.0) * 1000.0).round() / 1000.0),
                    monitor_id: v.monitor,
                    monitor_health: self.monitors.get(v.monitor).map_or("unknown", |m| m.health),
                    paused: v.paused,
                    change_held: v.change_held,
                    config: &v.config,
                    serving: v.serving,
                    health: v.health.as_ref(),
                    checking: v.checking,
                    rejected: v.rejected.as_ref(),
                    swap_pid: v.swap_pid,
                    placement: v.placement,
                })
                .collect(),
            blacklist: self
                .blacklist
                .iter()
                .map(|b| UwsgiBlacklist {
                    id: &b.name,
                    throttle_level: b.level_ms,
                    attempt: b.attempt,
                    first_attempt: secs(b.first_attempt),
                    last_attempt: secs(b.last_attempt),
                })
                .collect(),
            monitors: &self.monitors,
            counters: &self.counters,
            cluster: self.cluster.as_ref(),
        }
    }
}

// Field order is the wire order: uWSGI 2.0's keys first, then imperium's.
#[derive(Serialize)]
struct UwsgiStats<'a> {
    version: &'static str,
    pid: u32,
    uid: u32,
    gid: u32,
    cwd: String,
    emperor: Vec<&'a str>,
    emperor_tyrant: u8,
    throttle_level: u64,
    vassals: Vec<UwsgiVassal<'a>>,
    blacklist: Vec<UwsgiBlacklist<'a>>,
    monitors: &'a [MonitorSnap],
    counters: &'a Counters,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'a crate::cluster::ClusterView>,
}

#[derive(Serialize)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "the stats keys of a vassal's flags (paused, change_held, serving, checking) are booleans"
)]
struct UwsgiVassal<'a> {
    id: &'a str,
    pid: i64,
    born: i64,
    last_mod: i64,
    last_heartbeat: i64,
    loyal: u8,
    ready: u8,
    accepting: u8,
    last_loyal: i64,
    last_ready: i64,
    last_accepting: i64,
    first_run: i64,
    last_run: i64,
    cursed: i64,
    zerg: u8,
    on_demand: &'a str,
    uid: u32,
    gid: u32,
    monitor: &'a str,
    respawns: u64,
    // imperium's extras
    state: VassalState,
    last_exit: Option<&'a LastExit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<LogCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<super::usage::Usage>,
    restarts: u64,
    next_respawn: Option<f64>,
    next_respawn_in: Option<f64>,
    monitor_id: usize,
    monitor_health: &'a str,
    paused: bool,
    change_held: bool,
    config: &'a str,
    serving: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<&'a super::snapshot::HealthSnap>,
    checking: bool,
    rejected: Option<&'a super::snapshot::RejectedSnap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    swap_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    placement: Option<&'static str>,
}

#[derive(Serialize)]
struct UwsgiBlacklist<'a> {
    id: &'a str,
    throttle_level: u64,
    attempt: u32,
    first_attempt: i64,
    last_attempt: i64,
}
