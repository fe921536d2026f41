//! mongodb:// and mongodb2:// against a real MongoDB-wire server
//! (SecantusDB, started privately by `testkit::servers::mongo`).
//!
//! Each test builds the monitor with `monitors::build(url, &opts)`, runs it
//! with a real `MonitorContext`, writes to the collection with the official
//! driver and checks the changes the monitor sends. Tests run on a
//! current-thread runtime so that a log capture sees the monitor's lines.

#![cfg(feature = "mongodb")]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emperor::monitor::MonitorMessage;
use emperor::{
    Change, ChangeKey, ConfigSource, MonitorContext, MonitorHealth, MonitorOptions, Owner,
    VassalSpec,
};
use mongodb::bson::{doc, DateTime, Document};
use mongodb::{Client, Collection};
use testkit::servers::mongo::{MongoServer, Topology};
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(20);

// ---- log capture ----

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(buf)?;
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let buf = logs.0.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(buf.clone()))
            .finish();
        (logs, tracing::subscriber::set_default(sub))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// ---- a monitor under test, and what it said ----

struct Run {
    rx: mpsc::Receiver<MonitorMessage>,
    _rescan: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
    /// The vassal set as the emperor would see it.
    vassals: BTreeMap<String, VassalSpec>,
    /// The health changes, in order.
    health: Vec<MonitorHealth>,
    snapshots: usize,
    /// Snapshots received while the last health said Degraded (must stay 0).
    snapshots_while_degraded: usize,
}

impl Run {
    fn start(url: &str, opts: MonitorOptions) -> Run {
        let monitor = monitors::build(url, &opts).expect("build the monitor");
        let (tx, rx) = mpsc::channel(64);
        let (rescan_tx, rescan_rx) = watch::channel(0);
        let ctx = MonitorContext::new(0, Arc::new(opts), tx, rescan_rx);
        let task = tokio::spawn(monitor.run(ctx));
        Run {
            rx,
            _rescan: rescan_tx,
            task,
            vassals: BTreeMap::new(),
            health: Vec::new(),
            snapshots: 0,
            snapshots_while_degraded: 0,
        }
    }

    fn degraded(&self) -> bool {
        matches!(self.health.last(), Some(MonitorHealth::Degraded(_)))
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Snapshot(specs) => {
                self.snapshots += 1;
                if self.degraded() {
                    self.snapshots_while_degraded += 1;
                }
                self.vassals = specs
                    .into_iter()
                    .map(|s| (s.name.as_str().to_string(), s))
                    .collect();
            }
            Change::Upsert(s) => {
                self.vassals.insert(s.name.as_str().to_string(), s);
            }
            Change::Remove(n) => {
                self.vassals.remove(n.as_str());
            }
            Change::Health(h) => self.health.push(h),
        }
    }

    /// Applies changes until `pred` holds; returns how long it took.
    async fn until(&mut self, what: &str, pred: impl Fn(&Run) -> bool) -> Duration {
        let t0 = Instant::now();
        while !pred(self) {
            let left = WAIT.saturating_sub(t0.elapsed());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(m)) => self.apply(m.change),
                Ok(None) => panic!("monitor ended while waiting for: {what}"),
                Err(_) => panic!(
                    "timed out after {WAIT:?} waiting for: {what}\nvassals: {:?}\nhealth: {:?}",
                    self.vassals.keys().collect::<Vec<_>>(),
                    self.health
                ),
            }
        }
        t0.elapsed()
    }

    /// Applies everything that arrives within `d`.
    async fn drain_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.apply(m.change);
        }
    }

    fn key(&self, name: &str) -> ChangeKey {
        self.vassals[name].key
    }

    fn config(&self, name: &str) -> ConfigSource {
        self.vassals[name].config.clone()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn opts(freq: Duration) -> MonitorOptions {
    MonitorOptions {
        freq,
        cwd: PathBuf::from("/srv/vassals"),
        ..MonitorOptions::default()
    }
}

async fn collection(server: &MongoServer, ns: (&str, &str)) -> Collection<Document> {
    Client::with_uri_str(server.url())
        .await
        .expect("test client")
        .database(ns.0)
        .collection(ns.1)
}

fn inline(text: &str) -> ConfigSource {
    ConfigSource::Inline(text.into())
}

fn ms(ms: i64) -> ChangeKey {
    ChangeKey::Stamp(ms as i128 * 1_000_000)
}

async fn start_server(topology: Topology) -> MongoServer {
    tokio::task::spawn_blocking(move || MongoServer::start(topology))
        .await
        .unwrap()
}

/// Insert, ts update, config update, filter change, delete and a bad
/// document among good ones, on a replica set: with --emperor-freq at 60 s
/// every change that shows up within seconds came through the change stream.
#[tokio::test(flavor = "current_thread")]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario through every kind of change-stream event"
)]
async fn change_stream_follows_every_kind_of_change() {
    let (logs, _guard) = Logs::capture();
    let server = start_server(Topology::ReplicaSet).await;
    let coll = collection(&server, ("emperor", "vassals")).await;
    coll.insert_many([
        doc! {"name": "a.ini", "config": "[uwsgi]\nmaster = true\n", "ts": DateTime::from_millis(1_000_000), "enabled": 1},
        doc! {"name": "b.ini", "config": "", "ts": 1_700_000_000_i64, "enabled": 1, "uid": 1000, "gid": 1000},
        doc! {"name": "off.ini", "config": "x", "enabled": 0},
    ])
    .await
    .unwrap();

    let url = format!("mongodb://{},emperor.vassals,{{enabled:1}}", server.addr());
    let mut run = Run::start(&url, opts(Duration::from_secs(60)));

    // the first pass: the filter keeps a.ini and b.ini
    run.until("the first snapshot", |r| r.snapshots >= 1).await;
    assert_eq!(run.health, vec![MonitorHealth::Connected]);
    assert_eq!(run.vassals.keys().collect::<Vec<_>>(), ["a.ini", "b.ini"]);
    assert_eq!(run.config("a.ini"), inline("[uwsgi]\nmaster = true\n"));
    assert_eq!(run.key("a.ini"), ms(1_000_000));
    assert_eq!(run.vassals["a.ini"].owner, None);
    // an empty config is the file `name`, relative to the emperor's directory
    assert_eq!(
        run.config("b.ini"),
        ConfigSource::File(PathBuf::from("b.ini"))
    );
    assert_eq!(
        run.vassals["b.ini"].workdir,
        Some(PathBuf::from("/srv/vassals"))
    );
    assert_eq!(
        run.key("b.ini"),
        ChangeKey::Stamp(1_700_000_000 * 1_000_000_000)
    );
    assert_eq!(
        run.vassals["b.ini"].owner,
        Some(Owner {
            uid: 1000,
            gid: 1000
        })
    );

    // insert
    coll.insert_one(doc! {"name": "c.ini", "config": "[uwsgi]\n", "ts": DateTime::from_millis(5), "enabled": 1, "socket": "127.0.0.1:3031"})
        .await
        .unwrap();
    let t = run
        .until("c.ini inserted", |r| r.vassals.contains_key("c.ini"))
        .await;
    eprintln!("insert seen after {t:?}");
    assert!(
        t < Duration::from_secs(5),
        "insert took {t:?}: not from the change stream"
    );
    assert_eq!(
        run.vassals["c.ini"].socket.as_deref(),
        Some("127.0.0.1:3031")
    );

    // a larger ts
    coll.update_one(
        doc! {"name": "a.ini"},
        doc! {"$set": {"ts": DateTime::from_millis(2_000_000)}},
    )
    .await
    .unwrap();
    let t = run
        .until("a.ini ts grows", |r| r.key("a.ini") == ms(2_000_000))
        .await;
    eprintln!("ts update seen after {t:?}");
    assert!(t < Duration::from_secs(5));

    // new config text with a new ts
    coll.update_one(
        doc! {"name": "a.ini"},
        doc! {"$set": {"config": "[uwsgi]\nmaster = true\nprocesses = 2\n", "ts": DateTime::from_millis(3_000_000)}},
    )
    .await
    .unwrap();
    run.until("a.ini new config", |r| {
        r.config("a.ini") == inline("[uwsgi]\nmaster = true\nprocesses = 2\n")
    })
    .await;
    assert_eq!(run.key("a.ini"), ms(3_000_000));

    // a document that stops matching the filter stops its vassal
    coll.update_one(doc! {"name": "b.ini"}, doc! {"$set": {"enabled": 0}})
        .await
        .unwrap();
    run.until("b.ini filtered out", |r| !r.vassals.contains_key("b.ini"))
        .await;
    // and one that starts matching starts one
    coll.update_one(doc! {"name": "off.ini"}, doc! {"$set": {"enabled": 1}})
        .await
        .unwrap();
    run.until("off.ini filtered in", |r| r.vassals.contains_key("off.ini"))
        .await;

    // delete
    coll.delete_one(doc! {"name": "c.ini"}).await.unwrap();
    let t = run
        .until("c.ini deleted", |r| !r.vassals.contains_key("c.ini"))
        .await;
    eprintln!("delete seen after {t:?}");

    // bad documents among good ones: the good ones count, the bad are named in the log
    coll.insert_many([
        doc! {"name": "../../etc/evil.ini", "config": "x", "enabled": 1},
        doc! {"name": "notes.txt", "config": "x", "enabled": 1},
        doc! {"name": "when.ini", "config": "x", "ts": "yesterday", "enabled": 1},
        doc! {"name": 42, "enabled": 1},
        doc! {"name": "a.ini", "config": "a duplicate", "enabled": 1},
        doc! {"name": "d.ini", "config": "[uwsgi]\n", "ts": 7.5, "enabled": 1},
    ])
    .await
    .unwrap();
    run.until("d.ini beside the bad ones", |r| {
        r.vassals.contains_key("d.ini")
    })
    .await;
    run.drain_for(Duration::from_millis(300)).await;
    assert_eq!(
        run.vassals.keys().collect::<Vec<_>>(),
        ["a.ini", "d.ini", "off.ini"]
    );
    assert_eq!(run.key("d.ini"), ChangeKey::Stamp(7_500_000_000));
    // the first a.ini wins over the later duplicate
    assert_eq!(
        run.config("a.ini"),
        inline("[uwsgi]\nmaster = true\nprocesses = 2\n")
    );
    let log = logs.text();
    for why in [
        "\"../../etc/evil.ini\" contains a path separator",
        "\"notes.txt\" does not end with a config extension",
        "(name \"when.ini\"): ts must be a Date or a number of seconds",
        "name must be a string",
        "(name \"a.ini\"): another document with this name came first",
    ] {
        assert!(log.contains(why), "log should say {why:?}:\n{log}");
    }
    assert!(log.contains("with a change stream"), "{log}");
    assert!(run.health.iter().all(|h| *h == MonitorHealth::Connected));
}

/// A standalone server refuses change streams: the monitor polls every
/// --emperor-freq, through the mongodb2:// key=value form.
#[tokio::test(flavor = "current_thread")]
async fn standalone_server_is_polled() {
    let (logs, _guard) = Logs::capture();
    let server = start_server(Topology::Standalone).await;
    let coll = collection(&server, ("uwsgi", "emperor.vassals")).await;
    coll.insert_one(doc! {"name": "a.ini", "config": "[uwsgi]\n", "ts": DateTime::from_millis(1000), "tier": "web"})
        .await
        .unwrap();
    coll.insert_one(doc! {"name": "w.ini", "config": "[uwsgi]\n", "tier": "worker"})
        .await
        .unwrap();

    let url = format!("mongodb2://addr={},json={{tier: 'web'}}", server.addr());
    let mut run = Run::start(&url, opts(Duration::from_millis(300)));
    run.until("the first snapshot", |r| r.snapshots >= 1).await;
    assert_eq!(run.vassals.keys().collect::<Vec<_>>(), ["a.ini"]);
    assert!(
        logs.text()
            .contains("polling uwsgi.emperor.vassals every 300ms"),
        "{}",
        logs.text()
    );

    coll.insert_one(doc! {"name": "b.ini", "config": "[uwsgi]\n", "tier": "web"})
        .await
        .unwrap();
    let t = run
        .until("b.ini inserted", |r| r.vassals.contains_key("b.ini"))
        .await;
    eprintln!("insert seen after {t:?} (polling every 300 ms)");
    coll.update_one(
        doc! {"name": "a.ini"},
        doc! {"$set": {"ts": DateTime::from_millis(9000)}},
    )
    .await
    .unwrap();
    run.until("a.ini ts grows", |r| r.key("a.ini") == ms(9000))
        .await;
    coll.update_one(doc! {"name": "a.ini"}, doc! {"$set": {"tier": "worker"}})
        .await
        .unwrap();
    run.until("a.ini filtered out", |r| !r.vassals.contains_key("a.ini"))
        .await;
    coll.delete_one(doc! {"name": "b.ini"}).await.unwrap();
    run.until("b.ini deleted", |r| r.vassals.is_empty()).await;
    assert_eq!(run.health, vec![MonitorHealth::Connected]);
}

/// Stop the server while vassals run: the monitor degrades, never sends an
/// empty snapshot, reconnects by itself and resyncs when the server is back.
async fn survives_a_restart(topology: Topology, freq: Duration) -> Logs {
    let (logs, _guard) = Logs::capture();
    let mut server = start_server(topology).await;
    let coll = collection(&server, ("uwsgi", "emperor.vassals")).await;
    coll.insert_one(
        doc! {"name": "a.ini", "config": "[uwsgi]\n", "ts": DateTime::from_millis(1000)},
    )
    .await
    .unwrap();
    let mut run = Run::start(&format!("mongodb://{}", server.addr()), opts(freq));
    run.until("a.ini", |r| r.vassals.contains_key("a.ini"))
        .await;

    server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    let t = run.until("degraded", Run::degraded).await;
    eprintln!("degraded {t:?} after the stop");
    // a few reconnection attempts while down: the fleet stays as it is
    run.drain_for(Duration::from_secs(3)).await;
    assert!(run.degraded());
    assert_eq!(run.snapshots_while_degraded, 0);
    assert_eq!(run.vassals.keys().collect::<Vec<_>>(), ["a.ini"]);

    server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let snapshots = run.snapshots;
    let t = run
        .until("connected again with a fresh snapshot", |r| {
            r.health.last() == Some(&MonitorHealth::Connected) && r.snapshots > snapshots
        })
        .await;
    eprintln!("resynced {t:?} after the restart");
    assert_eq!(run.snapshots_while_degraded, 0);

    // and it follows changes again
    let coll = collection(&server, ("uwsgi", "emperor.vassals")).await;
    coll.insert_one(doc! {"name": "b.ini", "config": "[uwsgi]\n"})
        .await
        .unwrap();
    let t = run
        .until("b.ini after the restart", |r| {
            r.vassals.contains_key("b.ini")
        })
        .await;
    eprintln!("insert after restart seen after {t:?}");
    assert!(t < Duration::from_secs(5));
    logs
}

#[tokio::test(flavor = "current_thread")]
async fn replica_set_restart_resumes_the_change_stream() {
    let logs = survives_a_restart(Topology::ReplicaSet, Duration::from_secs(60)).await;
    let log = logs.text();
    assert!(log.contains("running vassals are kept"), "{log}");
    assert!(
        log.contains("change stream resumed from the last resume token"),
        "{log}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn standalone_restart_resyncs() {
    let logs = survives_a_restart(Topology::Standalone, Duration::from_millis(500)).await;
    assert!(logs.text().contains("polling"));
}

/// Nothing listens: the first word is Degraded, never an empty snapshot.
#[tokio::test(flavor = "current_thread")]
async fn unreachable_server_degrades_without_a_snapshot() {
    let port = testkit::servers::free_port();
    let mut run = Run::start(
        &format!("mongodb://127.0.0.1:{port}"),
        opts(Duration::from_millis(200)),
    );
    run.until("degraded", Run::degraded).await;
    run.drain_for(Duration::from_secs(2)).await;
    assert_eq!(run.snapshots, 0);
    assert!(run
        .health
        .iter()
        .all(|h| matches!(h, MonitorHealth::Degraded(_))));
}

/// Wrong credentials degrade; right ones connect; the password never shows
/// in describe(), health reasons or logs.
#[tokio::test(flavor = "current_thread")]
async fn credentials_and_secrecy() {
    let (logs, _guard) = Logs::capture();
    let server = start_server(Topology::Standalone).await;
    let client = Client::with_uri_str(server.url()).await.unwrap();
    client
        .database("admin")
        .run_command(doc! {"createUser": "imp", "pwd": "right-pw-123", "roles": ["root"]})
        .await
        .expect("createUser");
    let coll = collection(&server, ("uwsgi", "emperor.vassals")).await;
    coll.insert_one(doc! {"name": "a.ini", "config": "[uwsgi]\n"})
        .await
        .unwrap();

    let wrong = format!(
        "mongodb2://addr={},database=admin,username=imp,password=wrong-pw-456",
        server.addr()
    );
    let monitor = monitors::build(&wrong, &opts(Duration::from_millis(200))).unwrap();
    assert!(
        !monitor.describe().contains("wrong-pw-456"),
        "{}",
        monitor.describe()
    );
    let mut run = Run::start(&wrong, opts(Duration::from_millis(200)));
    run.until("degraded by the wrong password", Run::degraded)
        .await;
    assert_eq!(run.snapshots, 0);
    let reason = format!("{:?}", run.health);
    assert!(reason.to_lowercase().contains("auth"), "{reason}");
    drop(run);

    let right = format!(
        "mongodb://imp:right-pw-123@{}/?directConnection=true&authSource=admin#uwsgi.emperor.vassals",
        server.addr()
    );
    let monitor = monitors::build(&right, &opts(Duration::from_millis(200))).unwrap();
    assert!(
        !monitor.describe().contains("right-pw-123"),
        "{}",
        monitor.describe()
    );
    let mut run = Run::start(&right, opts(Duration::from_millis(200)));
    run.until("a.ini with the right password", |r| {
        r.vassals.contains_key("a.ini")
    })
    .await;

    let log = logs.text();
    assert!(log.contains("imp:***@"), "{log}");
    for secret in ["wrong-pw-456", "right-pw-123"] {
        assert!(!log.contains(secret), "password in the log:\n{log}");
        assert!(!reason.contains(secret));
    }
}
