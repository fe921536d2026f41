//! pg:// against a real PostgreSQL started privately by the test fixture.
//!
//! Each test builds the monitor with `monitors::build`, runs it, and reads
//! the Changes it sends while the table is edited with psql.

#![cfg(feature = "pg")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emperor::monitor::MonitorMessage;
use emperor::{
    Change, ChangeKey, ConfigSource, MonitorContext, MonitorHealth, MonitorOptions, Owner,
    VassalSpec,
};
use monitors::MonitorArgs;
use testkit::servers::pg::PgServer;
use tokio::sync::{mpsc, watch};

/// The trigger SQL shipped in the docs.
const NOTIFY_SQL: &str = include_str!("../../../docs/monitors/pg-notify.sql");

const TABLE_SQL: &str = "CREATE TABLE vassals (name text PRIMARY KEY, config text, ts timestamptz NOT NULL DEFAULT now());";

/// A running monitor and the changes it sends.
struct Run {
    rx: mpsc::Receiver<MonitorMessage>,
    _rescan: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The settings and the `--emperor-pg-channel` of a monitor under test.
struct Opts(MonitorOptions, MonitorArgs);

fn opts(freq: Duration, channel: &str) -> Opts {
    let mut args = MonitorArgs::default();
    assert!(args.set("emperor-pg-channel", channel).unwrap());
    Opts(
        MonitorOptions {
            freq,
            ..MonitorOptions::default()
        },
        args,
    )
}

fn start(url: &str, Opts(opts, args): Opts) -> Run {
    let monitor = monitors::build_with(url, &opts, &args).expect("build pg monitor");
    let (tx, rx) = mpsc::channel(64);
    let (rescan, rescan_rx) = watch::channel(0);
    let ctx = MonitorContext::new(0, Arc::new(opts), tx, rescan_rx);
    let task = tokio::spawn(monitor.run(ctx));
    Run {
        rx,
        _rescan: rescan,
        task,
    }
}

impl Run {
    /// The next change, or a panic after `within`.
    async fn next(&mut self, within: Duration) -> Change {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(m)) => m.change,
            Ok(None) => panic!("the monitor ended"),
            Err(_) => panic!("no change within {within:?}"),
        }
    }

    /// Waits for a snapshot that satisfies `want`, skipping others.
    /// Panics on a Degraded health change (unexpected in these tests).
    async fn snapshot_where(
        &mut self,
        within: Duration,
        want: impl Fn(&[VassalSpec]) -> bool,
    ) -> Vec<VassalSpec> {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let change = match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(m)) => m.change,
                Ok(None) => panic!("the monitor ended"),
                Err(_) => panic!("no matching snapshot within {within:?}; last: {last:#?}"),
            };
            match change {
                Change::Snapshot(specs) if want(&specs) => return specs,
                Change::Snapshot(specs) => last = Some(specs),
                Change::Health(MonitorHealth::Degraded(r)) => panic!("unexpectedly degraded: {r}"),
                _ => {}
            }
        }
    }

    /// Everything the monitor sends during `d`.
    async fn collect_for(&mut self, d: Duration) -> Vec<Change> {
        let deadline = tokio::time::Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(m.change);
        }
        out
    }
}

fn names(specs: &[VassalSpec]) -> Vec<&str> {
    specs.iter().map(|s| s.name.as_str()).collect()
}

fn find<'a>(specs: &'a [VassalSpec], name: &str) -> Option<&'a VassalSpec> {
    specs.iter().find(|s| s.name.as_str() == name)
}

fn text(spec: &VassalSpec) -> &str {
    match &spec.config {
        ConfigSource::Inline(t) => t,
        other => panic!("expected inline config, got {other:?}"),
    }
}

fn setup(pg: &PgServer) {
    pg.psql(TABLE_SQL);
    pg.psql(NOTIFY_SQL);
}

/// Blocking psql from an async test without stalling the monitor.
async fn sql(pg: &Arc<PgServer>, q: &str) -> String {
    let pg = pg.clone();
    let q = q.to_string();
    tokio::task::spawn_blocking(move || pg.psql(&q))
        .await
        .expect("psql task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_query_with_the_default_query_and_a_keyword_conninfo() {
    let pg = PgServer::start();
    setup(&pg);
    pg.psql(
        "INSERT INTO vassals VALUES ('a.ini', E'[uwsgi]\\nsocket = :0\\n', to_timestamp(1700000000.25)),
                                    ('b.xml', '<uwsgi/>', to_timestamp(1700000001))",
    );
    let mut run = start(
        &format!("pg://{}", pg.conninfo()),
        opts(Duration::from_secs(3600), "imperium"),
    );
    assert_eq!(
        run.next(Duration::from_secs(10)).await,
        Change::Health(MonitorHealth::Connected)
    );
    let Change::Snapshot(specs) = run.next(Duration::from_secs(5)).await else {
        panic!("expected a snapshot after Connected");
    };
    assert_eq!(names(&specs), ["a.ini", "b.xml"]);
    let a = find(&specs, "a.ini").unwrap();
    assert_eq!(text(a), "[uwsgi]\nsocket = :0\n");
    assert_eq!(a.key, ChangeKey::Stamp(1_700_000_000_250_000_000));
    assert_eq!(a.owner, None);
    assert_eq!(a.socket, None);
    assert_eq!(a.workdir, None);
    assert_eq!(
        find(&specs, "b.xml").unwrap().key,
        ChangeKey::Stamp(1_700_000_001_000_000_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_timestamptz_and_date_columns_are_stamps() {
    // the table of the docs, queried without EXTRACT(epoch ...)
    let pg = PgServer::start();
    setup(&pg);
    pg.psql(
        "ALTER TABLE vassals ADD COLUMN plain timestamp, ADD COLUMN day date;
         INSERT INTO vassals VALUES ('a.ini', '[uwsgi]', to_timestamp(1700000000.25),
                                     '2023-11-14 22:13:20.5', '2023-11-14')",
    );
    for (col, want) in [
        ("ts", 1_700_000_000_250_000_000),
        ("plain", 1_700_000_000_500_000_000),
        ("day", 1_699_920_000_000_000_000),
        ("EXTRACT(epoch FROM ts)", 1_700_000_000_250_000_000),
    ] {
        let mut run = start(
            &format!(
                "pg://{};SELECT name, config, {col} FROM vassals",
                pg.conninfo()
            ),
            opts(Duration::from_secs(3600), ""),
        );
        let specs = run
            .snapshot_where(Duration::from_secs(10), |s| !s.is_empty())
            .await;
        assert_eq!(specs[0].key, ChangeKey::Stamp(want), "column {col}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_drives_insert_update_and_delete_within_milliseconds() {
    let pg = Arc::new(PgServer::start());
    setup(&pg);
    // polling once an hour: anything seen quickly was pushed by NOTIFY
    let mut run = start(
        &format!("pg://{}", pg.url()),
        opts(Duration::from_secs(3600), "imperium"),
    );
    run.snapshot_where(Duration::from_secs(10), |s| s.is_empty())
        .await;

    let t = Instant::now();
    sql(
        &pg,
        "INSERT INTO vassals VALUES ('app.ini', 'v1', to_timestamp(100))",
    )
    .await;
    let s = run
        .snapshot_where(Duration::from_secs(2), |s| names(s) == ["app.ini"])
        .await;
    eprintln!("insert seen after {:?} (including psql)", t.elapsed());
    assert_eq!(text(&s[0]), "v1");
    let k1 = s[0].key;

    // a larger ts: the key grows (the emperor reloads)
    sql(
        &pg,
        "UPDATE vassals SET ts = to_timestamp(200) WHERE name = 'app.ini'",
    )
    .await;
    let s = run
        .snapshot_where(Duration::from_secs(2), |s| s.len() == 1 && s[0].key != k1)
        .await;
    assert!(s[0].key.is_newer_than(&k1));
    assert_eq!(s[0].key, ChangeKey::Stamp(200_000_000_000));

    // a new config with a larger ts: the new text is in the spec
    sql(
        &pg,
        "UPDATE vassals SET config = 'v2', ts = to_timestamp(300) WHERE name = 'app.ini'",
    )
    .await;
    let s = run
        .snapshot_where(Duration::from_secs(2), |s| {
            s.len() == 1 && text(&s[0]) == "v2"
        })
        .await;
    assert_eq!(s[0].key, ChangeKey::Stamp(300_000_000_000));

    sql(&pg, "DELETE FROM vassals WHERE name = 'app.ini'").await;
    run.snapshot_where(Duration::from_secs(2), |s| s.is_empty())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_channel_changes_are_polled_every_freq() {
    let pg = Arc::new(PgServer::start());
    setup(&pg);
    let mut run = start(
        &format!("pg://{}", pg.url()),
        opts(Duration::from_millis(300), ""),
    );
    run.snapshot_where(Duration::from_secs(10), |s| s.is_empty())
        .await;
    sql(&pg, "INSERT INTO vassals VALUES ('p.ini', 'x', now())").await;
    run.snapshot_where(Duration::from_secs(3), |s| names(s) == ["p.ini"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_is_what_makes_it_fast() {
    // with polling once an hour and no LISTEN, an insert is not seen
    let pg = Arc::new(PgServer::start());
    setup(&pg);
    let mut run = start(
        &format!("pg://{}", pg.url()),
        opts(Duration::from_secs(3600), ""),
    );
    run.snapshot_where(Duration::from_secs(10), |s| s.is_empty())
        .await;
    sql(&pg, "INSERT INTO vassals VALUES ('q.ini', 'x', now())").await;
    let seen = run.collect_for(Duration::from_millis(1500)).await;
    assert!(
        seen.is_empty(),
        "nothing should arrive without LISTEN: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_columns_from_a_custom_query_over_a_uri() {
    let pg = Arc::new(PgServer::start());
    pg.psql(
        "CREATE TABLE fleet (id text, body text, changed numeric, owner_uid int, owner_gid int, sock text, role text);
         INSERT INTO fleet VALUES
           ('web.ini', 'W', 10.5, 1000, 100, '127.0.0.1:9100', 'web'),
           ('idle.ini', 'I', 11, NULL, NULL, '', 'web'),
           ('nosock.ini', 'N', 12, 0, 0, NULL, 'web'),
           ('other.ini', 'O', 13, NULL, NULL, NULL, 'batch');",
    );
    let url = format!(
        "pg://{};SELECT id, body, changed, owner_uid, owner_gid, sock FROM fleet WHERE role = 'web'",
        pg.url()
    );
    let mut run = start(&url, opts(Duration::from_secs(3600), "imperium"));
    let specs = run.snapshot_where(Duration::from_secs(10), |_| true).await;
    assert_eq!(names(&specs), ["idle.ini", "nosock.ini", "web.ini"]);
    let web = find(&specs, "web.ini").unwrap();
    assert_eq!(
        web.owner,
        Some(Owner {
            uid: 1000,
            gid: 100
        })
    );
    assert_eq!(web.socket.as_deref(), Some("127.0.0.1:9100"));
    assert_eq!(web.key, ChangeKey::Stamp(10_500_000_000));
    let idle = find(&specs, "idle.ini").unwrap();
    assert_eq!(idle.owner, None);
    assert_eq!(idle.socket, None, "an empty socket column means no socket");
    let nosock = find(&specs, "nosock.ini").unwrap();
    assert_eq!(nosock.owner, Some(Owner { uid: 0, gid: 0 }));
    assert_eq!(nosock.socket, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_skipped_and_the_rest_counts() {
    let pg = Arc::new(PgServer::start());
    setup(&pg);
    pg.psql(
        "INSERT INTO vassals VALUES
           ('good.ini', 'G', now()),
           ('notes.txt', 'bad extension', now()),
           ('../evil.ini', 'path', now()),
           ('sub/dir.ini', 'path', now()),
           ('..', 'dots', now()),
           ('nocfg.ini', NULL, now()),
           ('empty.ini', '', now()),
           ('huge.ini', repeat('x', 65536), now()),
           ('max.ini', repeat('y', 65535), now());",
    );
    // NULL name and a non-numeric ts need a query that can produce them
    let url = format!(
        "pg://{};SELECT name, config, EXTRACT(epoch FROM ts)::text FROM vassals
                 UNION ALL SELECT NULL, 'n', '1'
                 UNION ALL SELECT 'badts.ini', 'b', 'yesterday'",
        pg.url()
    );
    let mut run = start(&url, opts(Duration::from_secs(3600), "imperium"));
    let specs = run.snapshot_where(Duration::from_secs(10), |_| true).await;
    assert_eq!(names(&specs), ["good.ini", "max.ini"]);
    assert_eq!(text(find(&specs, "max.ini").unwrap()).len(), 65535);

    // a running vassal whose config grows past 65535 bytes keeps its last
    // good config instead of being stopped or truncated
    let before = find(&specs, "good.ini").unwrap().clone();
    // a witness row comes in the same transaction: the query the NOTIFY
    // triggers sees the bad edit, and its snapshot differs from the last
    // one (an unchanged snapshot is not sent again)
    sql(
        &pg,
        "BEGIN;
         UPDATE vassals SET config = repeat('z', 70000), ts = now() + interval '1 hour' WHERE name = 'good.ini';
         INSERT INTO vassals VALUES ('witness.ini', 'W', now());
         COMMIT;",
    )
    .await;
    // that snapshot still carries the old spec
    let s = run
        .snapshot_where(Duration::from_secs(3), |s| find(s, "witness.ini").is_some())
        .await;
    assert_eq!(find(&s, "good.ini"), Some(&before));
    // fixing the row is taken at once
    sql(
        &pg,
        "UPDATE vassals SET config = 'G2', ts = now() + interval '2 hours' WHERE name = 'good.ini'",
    )
    .await;
    run.snapshot_where(Duration::from_secs(3), |s| {
        find(s, "good.ini").is_some_and(|g| text(g) == "G2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_query_is_degraded_never_an_empty_snapshot() {
    let pg = Arc::new(PgServer::start());
    // no table yet: the default query fails
    let mut run = start(
        &format!("pg://{}", pg.url()),
        opts(Duration::from_millis(200), "imperium"),
    );
    match run.next(Duration::from_secs(10)).await {
        Change::Health(MonitorHealth::Degraded(r)) => {
            assert!(r.contains("vassals"), "reason should name the problem: {r}")
        }
        other => panic!("expected Degraded, got {other:?}"),
    }
    let during = run.collect_for(Duration::from_millis(800)).await;
    assert!(
        during.iter().all(|c| !matches!(c, Change::Snapshot(_))),
        "no snapshot while the query fails: {during:?}"
    );
    // table and row in one transaction, so no poll sees the table empty
    sql(
        &pg,
        &format!("BEGIN; {TABLE_SQL} INSERT INTO vassals VALUES ('late.ini', 'L', now()); COMMIT;"),
    )
    .await;
    assert_eq!(
        run.next(Duration::from_secs(5)).await,
        Change::Health(MonitorHealth::Connected)
    );
    let Change::Snapshot(s) = run.next(Duration::from_secs(5)).await else {
        panic!("expected a snapshot after recovery");
    };
    assert_eq!(names(&s), ["late.ini"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_the_wrong_column_count_is_degraded() {
    let pg = Arc::new(PgServer::start());
    setup(&pg);
    pg.psql("INSERT INTO vassals VALUES ('a.ini', 'A', now())");
    for (query, want) in [
        ("SELECT name, config FROM vassals", "2 columns"),
        ("SELECT name, config, 1, 2 FROM vassals", "gid"),
        (
            "SELECT name, config, 1, 2, 3, 4, 5 FROM vassals",
            "7 columns",
        ),
    ] {
        let mut run = start(
            &format!("pg://{};{query}", pg.url()),
            opts(Duration::from_secs(3600), "imperium"),
        );
        match run.next(Duration::from_secs(10)).await {
            Change::Health(MonitorHealth::Degraded(r)) => assert!(r.contains(want), "{r}"),
            other => panic!("{query}: expected Degraded, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_keeps_everything_then_resyncs() {
    let pg = Arc::new(Mutex::new(PgServer::start()));
    let url = {
        let pg = pg.lock().unwrap();
        setup(&pg);
        pg.psql("INSERT INTO vassals VALUES ('keep.ini', 'K', to_timestamp(5))");
        format!("pg://{}", pg.url())
    };
    let mut run = start(&url, opts(Duration::from_secs(3600), "imperium"));
    run.snapshot_where(Duration::from_secs(10), |s| names(s) == ["keep.ini"])
        .await;

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.lock().unwrap().stop())
        .await
        .unwrap();
    match run.next(Duration::from_secs(5)).await {
        Change::Health(MonitorHealth::Degraded(r)) => eprintln!("degraded: {r}"),
        other => panic!("expected Degraded after the server stopped, got {other:?}"),
    }
    // while it is down: retries, but no snapshot (which would stop vassals)
    // and no second Degraded (logged once)
    let during = run.collect_for(Duration::from_secs(2)).await;
    assert!(during.is_empty(), "nothing while down: {during:?}");

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.lock().unwrap().start_again())
        .await
        .unwrap();
    // back: Connected and a fresh snapshot within the backoff cap
    assert_eq!(
        run.next(Duration::from_secs(10)).await,
        Change::Health(MonitorHealth::Connected)
    );
    let Change::Snapshot(s) = run.next(Duration::from_secs(5)).await else {
        panic!("expected a resync snapshot");
    };
    assert_eq!(names(&s), ["keep.ini"]);
    // LISTEN works again on the new connection
    let p = pg.clone();
    tokio::task::spawn_blocking(move || {
        p.lock()
            .unwrap()
            .psql("INSERT INTO vassals VALUES ('new.ini', 'N', now())")
    })
    .await
    .unwrap();
    run.snapshot_where(Duration::from_secs(2), |s| {
        names(s) == ["keep.ini", "new.ini"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_start_is_picked_up_when_it_comes() {
    let mut pg = PgServer::start();
    setup(&pg);
    pg.psql("INSERT INTO vassals VALUES ('first.ini', 'F', now())");
    let url = format!("pg://{}", pg.url());
    pg.stop();
    let mut run = start(&url, opts(Duration::from_secs(3600), "imperium"));
    match run.next(Duration::from_secs(5)).await {
        Change::Health(MonitorHealth::Degraded(r)) => {
            assert!(r.contains("connect"), "{r}")
        }
        other => panic!("expected Degraded, got {other:?}"),
    }
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    run.snapshot_where(Duration::from_secs(10), |s| names(s) == ["first.ini"])
        .await;
    drop(pg);
}

/// A writer that keeps everything logged, to search it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_login_is_degraded_and_the_password_never_shows() {
    let pg = PgServer::start();
    setup(&pg);
    let secret = "Wr0ng-S3cret-xyzzy";
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    for url in [
        format!(
            "pg://host=127.0.0.1 port={} user=postgres password={secret} dbname=postgres",
            pg.port
        ),
        format!(
            "pg://postgresql://postgres:{secret}@127.0.0.1:{}/postgres;SELECT name, config, 1 FROM vassals",
            pg.port
        ),
    ] {
        let o = opts(Duration::from_millis(200), "imperium");
        let described = monitors::build_with(&url, &o.0, &o.1).unwrap().describe();
        assert!(!described.contains(secret), "{described}");
        assert!(described.contains("***"), "{described}");
        let mut run = start(&url, o);
        match run.next(Duration::from_secs(10)).await {
            Change::Health(MonitorHealth::Degraded(r)) => {
                assert!(r.contains("password authentication failed"), "{r}");
                assert!(!r.contains(secret), "{r}");
            }
            other => panic!("expected Degraded, got {other:?}"),
        }
        // it keeps retrying quietly: no snapshot, no second Degraded
        let more = run.collect_for(Duration::from_millis(700)).await;
        assert!(more.is_empty(), "{more:?}");
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("degraded"),
        "the monitor logs its state: {text}"
    );
    assert!(!text.contains(secret), "password in logs:\n{text}");
}

#[test]
fn a_bad_conninfo_is_a_startup_error_without_the_password() {
    let o = MonitorOptions::default();
    for url in [
        "pg://host=127.0.0.1 password=Sekr1t bogus_option=1",
        "pg://host=127.0.0.1 password=Sekr1t;",
        "pg://postgresql://u:Sekr1t@127.0.0.1:notaport/db",
    ] {
        let err = match monitors::build(url, &o) {
            Ok(_) => panic!("{url} should be refused"),
            Err(e) => e.to_string(),
        };
        assert!(!err.contains("Sekr1t"), "{err}");
        assert!(err.starts_with("pg://"), "{err}");
    }
    // the unknown keyword is named
    let err = match monitors::build("pg://host=127.0.0.1 hots=db password=Sekr1t", &o) {
        Ok(_) => panic!("an unknown keyword should be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("unknown option `hots`"), "{err}");
    assert!(!err.contains("Sekr1t"), "{err}");
}

#[test]
fn the_docs_show_the_trigger_the_tests_use() {
    let doc = include_str!("../../../docs/monitors/pg.md");
    let sql: String = NOTIFY_SQL
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        doc.contains(sql.trim()),
        "docs/monitors/pg.md must show docs/monitors/pg-notify.sql verbatim"
    );
}

#[test]
fn pg_is_a_built_in_scheme() {
    assert!(monitors::schemes().contains(&"pg"));
}
