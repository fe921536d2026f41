//! Prometheus metrics (`--emperor-metrics ADDR`, off by default).
//!
//! Every scrape takes a [`Snapshot`] through the emperor's command channel
//! and encodes it in the OpenMetrics text format with `prometheus-client`.
//! The counters come from [`crate::events::Counters`], which only
//! [`crate::events::Event::record`] bumps: the same call that writes the
//! log line, so logs and metrics cannot drift apart. Gauges (vassals by
//! state, monitor health) are read off the same snapshot.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::reconciler::VassalState;
use crate::runtime::Command;
use crate::stats::{Conn, Listener, Snapshot};

/// Every vassal state, so that each appears (at 0) in `imperium_vassals`.
const STATES: [VassalState; 9] = [
    VassalState::OnDemand,
    VassalState::Starting,
    VassalState::Running,
    VassalState::Stopping,
    VassalState::Throttled,
    VassalState::Exiled,
    VassalState::Idle,
    VassalState::Refused,
    VassalState::Stopped,
];

/// Death causes, so that each appears (at 0) in `imperium_deaths_total`.
const CAUSES: [&str; 5] = ["requested", "exit", "signal", "exile", "oom"];

fn state_name(s: VassalState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

type Labels = Vec<(String, String)>;
type NoExemplar = Option<&'static Exemplar<Labels, u64>>;

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<Labels, u64, u64>(&v, NoExemplar::None)
}

fn labelled<'a>(
    m: &'a mut MetricEncoder<'_>,
    labels: &'a Labels,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    m.encode_family(labels)
}

impl Collector for SnapshotCollector {
    #[allow(
        clippy::too_many_lines,
        reason = "one block per metric family, in the order they are exposed"
    )]
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let c = &s.counters;
        {
            let mut m = e.encode_descriptor(
                "imperium_vassals",
                "Vassals by state.",
                None,
                MetricType::Gauge,
            )?;
            for st in STATES {
                let n = s.vassals.iter().filter(|v| v.state == st).count() as i64;
                let l = vec![("state".to_string(), state_name(st))];
                labelled(&mut m, &l)?.encode_gauge(&n)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "imperium_vassals_paused",
                "Vassals whose automatic reloads are paused.",
                None,
                MetricType::Gauge,
            )?;
            m.encode_gauge(&(s.vassals.iter().filter(|v| v.paused).count() as i64))?;
        }
        {
            let mut m = e.encode_descriptor(
                "imperium_blacklisted",
                "Vassals in the blacklist.",
                None,
                MetricType::Gauge,
            )?;
            m.encode_gauge(&(s.blacklist.len() as i64))?;
        }
        counter(
            &mut e,
            "imperium_spawns",
            "Vassal processes started.",
            c.spawns,
        )?;
        counter(
            &mut e,
            "imperium_spawn_failures",
            "Vassal processes that could not be started.",
            c.spawn_failures,
        )?;
        counter(
            &mut e,
            "imperium_spawns_deferred",
            "Vassal starts deferred because a resource ran out (EMFILE, ENFILE, EAGAIN, ENOMEM), each tried again after a backoff.",
            c.spawns_deferred,
        )?;
        counter(
            &mut e,
            "imperium_reloads",
            "Graceful reloads sent.",
            c.reloads,
        )?;
        counter(&mut e, "imperium_stops", "Stops sent.", c.stops)?;
        counter(
            &mut e,
            "imperium_kills",
            "Vassals killed with SIGKILL.",
            c.kills,
        )?;
        counter(
            &mut e,
            "imperium_throttled_respawns",
            "Respawns delayed by the blacklist or the loyal backoff.",
            c.throttled_respawns,
        )?;
        counter(
            &mut e,
            "imperium_health_failures",
            "Health probes of vassals that failed (--vassal-health, or health = in a vassal's [imperium] section).",
            c.health_failures,
        )?;
        counter(
            &mut e,
            "imperium_health_restarts",
            "Vassals killed and restarted because they failed their health check too many times in a row.",
            c.health_restarts,
        )?;
        counter(
            &mut e,
            "imperium_reload_checks",
            "Changed configs checked before a reload (--emperor-reload-mode checked).",
            c.reload_checks,
        )?;
        counter(
            &mut e,
            "imperium_swaps",
            "Swaps done (--emperor-reload-mode swap): a new instance took over from the old one.",
            c.swaps,
        )?;
        counter(
            &mut e,
            "imperium_changes_rejected",
            "Changed configs that failed their check: the vassal kept the config it ran.",
            c.changes_rejected,
        )?;
        {
            let mut m = e.encode_descriptor(
                "imperium_vassal_change_rejected",
                "1 while the last change of the vassal's config stands rejected by its check, else 0.",
                None,
                MetricType::Gauge,
            )?;
            for v in &s.vassals {
                let l = vec![("vassal".to_string(), v.name.clone())];
                labelled(&mut m, &l)?.encode_gauge(&i64::from(v.rejected.is_some()))?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "imperium_vassal_serving",
                "1 when the vassal accepts requests (byte 5) and passed its health check since its last (re)load (when it has one), else 0.",
                None,
                MetricType::Gauge,
            )?;
            for v in &s.vassals {
                let l = vec![("vassal".to_string(), v.name.clone())];
                labelled(&mut m, &l)?.encode_gauge(&i64::from(v.serving))?;
            }
        }
        counter(
            &mut e,
            "imperium_refused",
            "Vassals refused (for example an oversized config).",
            c.refused,
        )?;
        {
            let mut m = e.encode_descriptor(
                "imperium_deaths",
                "Vassal process exits by cause: requested (the emperor asked), exit (a code), signal, exile (code 26), oom (the kernel's OOM killer, --vassal-memory-max).",
                None,
                MetricType::Counter,
            )?;
            for cause in CAUSES {
                let v = c.deaths.get(cause).copied().unwrap_or(0);
                let l = vec![("cause".to_string(), cause.to_string())];
                labelled(&mut m, &l)?.encode_counter::<Labels, u64, u64>(&v, NoExemplar::None)?;
            }
        }
        for (family, help, pick) in [
            (
                "imperium_vassal_rss_bytes",
                "Resident memory of each vassal's processes (its cgroup, or its process tree), summed per process.",
                (|u: &crate::stats::Usage| Some(u.rss_bytes as i64)) as fn(&crate::stats::Usage) -> Option<i64>,
            ),
            (
                "imperium_vassal_processes",
                "Processes of each vassal (its cgroup, or its process tree).",
                |u: &crate::stats::Usage| Some(i64::from(u.processes)),
            ),
            (
                "imperium_vassal_memory_current_bytes",
                "Memory each vassal's cgroup is charged for now, page cache included (where the memory controller covers it: on a v1 host, a vassal with a memory limit).",
                |u: &crate::stats::Usage| u.memory_current_bytes.map(|b| b as i64),
            ),
            (
                "imperium_vassal_memory_peak_bytes",
                "The most each vassal's cgroup was ever charged for.",
                |u: &crate::stats::Usage| u.memory_peak_bytes.map(|b| b as i64),
            ),
        ] {
            let mut m = e.encode_descriptor(family, help, None, MetricType::Gauge)?;
            for v in &s.vassals {
                let Some(x) = v.usage.as_ref().and_then(pick) else { continue };
                let l = vec![("vassal".to_string(), v.name.clone())];
                labelled(&mut m, &l)?.encode_gauge(&x)?;
            }
        }
        for (family, help, pick) in [
            (
                "imperium_vassal_cpu_seconds",
                "CPU time of each vassal: of its cgroup (every process that ran in it), or of its live processes without one.",
                (|u: &crate::stats::Usage| Some(u.cpu_seconds)) as fn(&crate::stats::Usage) -> Option<f64>,
            ),
            (
                "imperium_vassal_cpu_throttled_seconds",
                "Time each vassal's processes were held back by its CPU limit (where the CPU controller covers its cgroup: on a v1 host, a vassal with a CPU limit).",
                |u: &crate::stats::Usage| u.cpu_throttled_seconds,
            ),
        ] {
            let mut m = e.encode_descriptor(family, help, None, MetricType::Counter)?;
            for v in &s.vassals {
                let Some(x) = v.usage.as_ref().and_then(pick) else { continue };
                let l = vec![("vassal".to_string(), v.name.clone())];
                labelled(&mut m, &l)?
                    .encode_counter::<Labels, f64, u64>(&x, NoExemplar::None)?;
            }
        }
        for (family, help, pick) in [
            (
                "imperium_vassal_log_lines",
                "Lines of captured vassal output (--vassal-logs prefix or dir), written or dropped (the writer could not keep up or failed).",
                (|c: &crate::logs::LogCounts| (c.lines_written, c.lines_dropped)) as fn(&crate::logs::LogCounts) -> (u64, u64),
            ),
            (
                "imperium_vassal_log_bytes",
                "Bytes of captured vassal output, written or dropped.",
                |c: &crate::logs::LogCounts| (c.bytes_written, c.bytes_dropped),
            ),
        ] {
            let mut m = e.encode_descriptor(family, help, None, MetricType::Counter)?;
            // zergs share their base vassal's output: counted once
            for v in s.vassals.iter().filter(|v| !v.zerg) {
                let Some(c) = &v.log else { continue };
                let (written, dropped) = pick(c);
                for (outcome, n) in [("written", written), ("dropped", dropped)] {
                    let l = vec![
                        ("vassal".to_string(), v.name.clone()),
                        ("outcome".to_string(), outcome.to_string()),
                    ];
                    labelled(&mut m, &l)?.encode_counter::<Labels, u64, u64>(&n, NoExemplar::None)?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "imperium_monitor_up",
                "1 when the monitor's last report was connected, else 0.",
                None,
                MetricType::Gauge,
            )?;
            for mon in &s.monitors {
                let l = vec![
                    ("monitor".to_string(), mon.id.to_string()),
                    ("url".to_string(), mon.url.clone()),
                    ("health".to_string(), mon.health.to_string()),
                ];
                let up = i64::from(mon.health == "connected");
                labelled(&mut m, &l)?.encode_gauge(&up)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "imperium_monitor_errors",
                "Degraded or failed reports per monitor.",
                None,
                MetricType::Counter,
            )?;
            for mon in &s.monitors {
                let v = c.monitor_errors_by.get(&mon.id).copied().unwrap_or(0);
                let l = vec![
                    ("monitor".to_string(), mon.id.to_string()),
                    ("url".to_string(), mon.url.clone()),
                ];
                labelled(&mut m, &l)?.encode_counter::<Labels, u64, u64>(&v, NoExemplar::None)?;
            }
        }
        if let Some(cl) = &s.cluster {
            cluster_metrics(&mut e, cl, s, c)?;
        }
        {
            let mut m = e.encode_descriptor(
                "imperium_reaction_seconds",
                "From a monitor sending a change to the emperor sending the commands it implies.",
                None,
                MetricType::Histogram,
            )?;
            let h = &c.reaction;
            let buckets = h.buckets();
            m.encode_histogram::<Labels>(
                h.sum,
                h.count,
                &buckets,
                None::<&HashMap<usize, Exemplar<Labels, f64>>>,
            )?;
        }
        Ok(())
    }
}

/// `--emperor-cluster`: the lease, the members, where each vassal runs.
fn cluster_metrics(
    e: &mut DescriptorEncoder,
    cl: &crate::cluster::ClusterView,
    s: &Snapshot,
    c: &crate::events::Counters,
) -> std::fmt::Result {
    {
        let mut m = e.encode_descriptor(
            "imperium_cluster_online",
            "1 while this member's lease is valid and the cluster engine reachable, else 0.",
            None,
            MetricType::Gauge,
        )?;
        let l = vec![("node".to_string(), cl.node.clone())];
        labelled(&mut m, &l)?.encode_gauge(&i64::from(cl.online))?;
    }
    {
        let mut m = e.encode_descriptor(
            "imperium_cluster_members",
            "Live members of the cluster, as this member sees them.",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(cl.members.iter().filter(|m| m.live).count() as i64))?;
    }
    {
        let mut m = e.encode_descriptor(
            "imperium_cluster_member_slots",
            "Vassal slots each member holds.",
            None,
            MetricType::Gauge,
        )?;
        for mem in &cl.members {
            let l = vec![("member".to_string(), mem.node.clone())];
            labelled(&mut m, &l)?.encode_gauge(&(mem.holds.len() as i64))?;
        }
    }
    {
        let mut m = e.encode_descriptor(
            "imperium_vassal_placed_here",
            "1 when the cluster placed the vassal on this member, else 0.",
            None,
            MetricType::Gauge,
        )?;
        for v in s.vassals.iter().filter(|v| !v.zerg) {
            let l = vec![("vassal".to_string(), v.name.clone())];
            labelled(&mut m, &l)?.encode_gauge(&i64::from(v.placement == Some("here")))?;
        }
    }
    counter(
        e,
        "imperium_cluster_placements",
        "Vassals placed on this member.",
        c.placements,
    )?;
    counter(
        e,
        "imperium_cluster_unplacements",
        "Vassals that left this member (moved, or its lease was lost).",
        c.unplacements,
    )
}

/// The OpenMetrics text of a snapshot.
pub fn render(snap: Snapshot) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(SnapshotCollector(snap)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a String");
    out
}

/// Serves `GET /metrics` over HTTP/1.x (one request per connection).
pub async fn serve(listener: Listener, timeout: Duration, commands: mpsc::Sender<Command>) {
    crate::listener::accept_loop(
        listener,
        timeout,
        "metrics server",
        |e| tracing::warn!(error = %e, "metrics server: accept failed"),
        move |conn, _| {
            let commands = commands.clone();
            async move { answer(conn, &commands).await }
        },
        |r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "metrics client too slow; dropped");
            }
        },
    )
    .await
}

async fn answer(mut conn: Box<dyn Conn>, commands: &mpsc::Sender<Command>) -> std::io::Result<()> {
    // read the request head
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else if path != "/metrics" && path != "/" {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    } else {
        match Snapshot::request(commands).await {
            Some(s) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render(s),
            ),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "shutting down\n".into(),
            ),
        }
    };
    let mut head = String::new();
    let _ = write!(
        head,
        "HTTP/1.0 {status}\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes()).await?;
    }
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ExitStatus;
    use crate::name::{Extensions, NamePolicy, VassalName};
    use crate::reconciler::{Action, Reconciler, ReconcilerConfig};
    use crate::spec::{Change, ChangeKey, MonitorHealth, VassalSpec};
    use std::time::Instant;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn a_cluster_member_exposes_its_lease_members_and_placements() {
        let mut rec = Reconciler::new(
            ReconcilerConfig {
                cluster: true,
                ..ReconcilerConfig::default()
            },
            vec!["dir:///v".into()],
        );
        let t = Instant::now();
        let n = name;
        two_vassals(&mut rec, t);
        rec.place(&n("a.ini"), None, "", t);
        let view = crate::cluster::ClusterView {
            node: "n1".into(),
            online: true,
            members: ["n1", "n2"]
                .iter()
                .map(|m| crate::cluster::MemberView {
                    node: (*m).into(),
                    live: true,
                    me: *m == "n1",
                    holds: vec![crate::cluster::Holding {
                        vassal: "a.ini".into(),
                        slot: u32::from(*m == "n2"),
                        running: true,
                    }],
                })
                .collect(),
            ..Default::default()
        };
        rec.set_cluster_view(std::sync::Arc::new(std::sync::Mutex::new(view)));
        let text = render(Snapshot::take(&rec));
        assert_eq!(
            value(&text, "imperium_cluster_online{node=\"n1\"} "),
            1.0,
            "{text}"
        );
        assert_eq!(value(&text, "imperium_cluster_members "), 2.0);
        assert_eq!(
            value(&text, "imperium_cluster_member_slots{member=\"n2\"} "),
            1.0
        );
        assert_eq!(
            value(&text, "imperium_vassal_placed_here{vassal=\"a.ini\"} "),
            1.0
        );
        assert_eq!(
            value(&text, "imperium_vassal_placed_here{vassal=\"b.ini\"} "),
            0.0
        );
        assert_eq!(value(&text, "imperium_cluster_placements_total "), 1.0);
        // without a cluster, none of it
        let plain = Reconciler::new(ReconcilerConfig::default(), vec![]);
        assert!(!render(Snapshot::take(&plain)).contains("imperium_cluster"));
    }

    #[test]
    fn metrics_follow_the_counters_and_the_table() {
        let mut rec = Reconciler::new(ReconcilerConfig::default(), vec!["dir:///v".into()]);
        let t = Instant::now();
        let n = |s: &str| VassalName::parse(s, &Extensions::default(), NamePolicy::Plain).unwrap();
        rec.monitor_change(0, Change::Health(MonitorHealth::Connected), t);
        let acts = rec.monitor_change(
            0,
            Change::Snapshot(vec![
                VassalSpec::inline(n("a.ini"), "x", ChangeKey::Stamp(1)),
                VassalSpec::inline(n("b.ini"), "x", ChangeKey::Stamp(1)),
            ]),
            t,
        );
        let ids: Vec<u64> = acts
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { instance, .. } => Some(*instance),
                _ => None,
            })
            .collect();
        for id in &ids {
            rec.spawned(*id, 100 + *id as u32, "uwsgi");
        }
        rec.note(crate::events::Event::Reacted {
            monitor: 0,
            latency: Duration::from_millis(3),
            actions: 2,
        });
        rec.exited(ids[0], ExitStatus::Signal(9), t);
        rec.monitor_change(0, Change::Health(MonitorHealth::Degraded("gone".into())), t);
        let text = render(Snapshot::take(&rec));
        // the respawn after the death is not acknowledged yet: still starting
        assert_eq!(value(&text, "imperium_spawns_total "), 2.0, "{text}");
        assert_eq!(value(&text, "imperium_vassals{state=\"starting\"} "), 1.0);
        assert_eq!(value(&text, "imperium_vassals{state=\"running\"} "), 1.0);
        assert_eq!(value(&text, "imperium_vassals{state=\"exiled\"} "), 0.0);
        assert_eq!(
            value(&text, "imperium_deaths_total{cause=\"signal\"} "),
            1.0
        );
        assert_eq!(value(&text, "imperium_deaths_total{cause=\"exit\"} "), 0.0);
        assert_eq!(
            value(
                &text,
                "imperium_monitor_up{monitor=\"0\",url=\"dir:///v\",health=\"degraded\"} "
            ),
            0.0
        );
        assert_eq!(
            value(
                &text,
                "imperium_monitor_errors_total{monitor=\"0\",url=\"dir:///v\"} "
            ),
            1.0
        );
        assert_eq!(value(&text, "imperium_reaction_seconds_count "), 1.0);
        assert_eq!(
            value(&text, "imperium_reaction_seconds_bucket{le=\"0.0025\"} "),
            0.0
        );
        assert_eq!(
            value(&text, "imperium_reaction_seconds_bucket{le=\"0.005\"} "),
            1.0
        );
        assert_eq!(
            value(&text, "imperium_reaction_seconds_bucket{le=\"+Inf\"} "),
            1.0
        );
        assert!(text.ends_with("# EOF\n"));
    }

    fn name(s: &str) -> VassalName {
        VassalName::parse(s, &Extensions::default(), NamePolicy::Plain).unwrap()
    }

    /// a.ini and b.ini, from monitor 0.
    fn two_vassals(rec: &mut Reconciler, t: Instant) {
        rec.monitor_change(
            0,
            Change::Snapshot(vec![
                VassalSpec::inline(name("a.ini"), "x", ChangeKey::Stamp(1)),
                VassalSpec::inline(name("b.ini"), "x", ChangeKey::Stamp(1)),
            ]),
            t,
        );
    }

    /// The cgroup figures appear for the vassals that have them, and only
    /// for those.
    #[test]
    fn cgroup_figures_per_vassal() {
        let mut rec = Reconciler::new(ReconcilerConfig::default(), vec!["dir:///v".into()]);
        let t = Instant::now();
        two_vassals(&mut rec, t);
        let mut snap = Snapshot::take(&rec);
        for v in &mut snap.vassals {
            let limited = v.name == "a.ini";
            v.usage = Some(crate::stats::Usage {
                processes: 1,
                rss_bytes: 4096,
                cpu_seconds: 1.5,
                memory_current_bytes: limited.then_some(1 << 20),
                memory_peak_bytes: limited.then_some(2 << 20),
                cpu_throttled_seconds: limited.then_some(0.25),
            });
        }
        let text = render(snap);
        let a = |m: &str| format!("{m}{{vassal=\"a.ini\"}} ");
        assert_eq!(
            value(&text, &a("imperium_vassal_memory_current_bytes")),
            1048576.0,
            "{text}"
        );
        assert_eq!(
            value(&text, &a("imperium_vassal_memory_peak_bytes")),
            2097152.0
        );
        assert_eq!(
            value(&text, &a("imperium_vassal_cpu_throttled_seconds_total")),
            0.25
        );
        assert_eq!(value(&text, &a("imperium_vassal_cpu_seconds_total")), 1.5);
        assert!(
            !text.contains("imperium_vassal_memory_current_bytes{vassal=\"b.ini\"}"),
            "{text}"
        );
        assert!(
            text.contains("imperium_vassal_cpu_seconds_total{vassal=\"b.ini\"}"),
            "{text}"
        );
    }
}
