//! ldap:// against a real private slapd (testkit's fixture) with the
//! shipped schema (contrib/ldap/uwsgi-vassal.ldif) loaded.

#![cfg(feature = "ldap")]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use emperor::monitor::MonitorMessage;
use emperor::{
    Change, ChangeKey, ConfigSource, MonitorContext, MonitorHealth, MonitorOptions, Owner, Secret,
    VassalSpec,
};
use monitors::MonitorArgs;
use testkit::servers::slapd::{vassal_schema_ldif, Slapd, SlapdOptions};
use tokio::sync::{mpsc, watch};

/// Everything the monitors log in this test binary (all tests share it).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || LogWriter(buf))
            .try_init();
        buf
    })
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // also shown by the test harness on failure
        eprint!("{}", String::from_utf8_lossy(b));
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

struct Running {
    rx: mpsc::Receiver<MonitorMessage>,
    _rescan: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_slapd(opts: SlapdOptions) -> Slapd {
    let s = Slapd::start_with(opts);
    s.load_schema(&vassal_schema_ldif());
    s
}

fn url(s: &Slapd, rest: &str) -> String {
    format!("{}/{}{rest}", s.url(), Slapd::VASSALS)
}

fn run(url: &str, opts: MonitorOptions) -> Running {
    run_with(url, opts, &MonitorArgs::default())
}

fn run_with(url: &str, opts: MonitorOptions, args: &MonitorArgs) -> Running {
    logs();
    let monitor = monitors::build_with(url, &opts, args).expect("build ldap monitor");
    let (tx, rx) = mpsc::channel(64);
    let (rescan, rescan_rx) = watch::channel(0);
    let ctx = MonitorContext::new(0, Arc::new(opts), tx, rescan_rx);
    let task = tokio::spawn(monitor.run(ctx));
    Running {
        rx,
        _rescan: rescan,
        task,
    }
}

/// `--emperor-ldap-binddn DN` and the password `--emperor-ldap-bindpw-file` holds.
fn bind_args(dn: &str, password: &str) -> MonitorArgs {
    let mut args = MonitorArgs::default();
    assert!(args.set("emperor-ldap-binddn", dn).unwrap());
    assert!(args.set_secret("emperor-ldap-bindpw-file", Secret::new(password)));
    args
}

fn freq(secs: u64) -> MonitorOptions {
    MonitorOptions {
        freq: Duration::from_secs(secs),
        ..MonitorOptions::default()
    }
}

impl Running {
    /// The next change, or panic after `within`.
    async fn next(&mut self, within: Duration) -> Change {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(m)) => m.change,
            Ok(None) => panic!("the monitor task ended"),
            Err(_) => panic!("no change within {within:?}"),
        }
    }

    /// Skips changes until a snapshot for which `pred` holds.
    async fn snapshot_where(
        &mut self,
        within: Duration,
        pred: impl Fn(&[VassalSpec]) -> bool,
    ) -> Vec<VassalSpec> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Change::Snapshot(v) = self.next(left).await {
                if pred(&v) {
                    return v;
                }
            }
        }
    }

    /// Asserts that no change at all arrives for `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(Some(m)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected change {:?}", m.change);
        }
    }
}

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn dn(name: &str) -> String {
    format!("uwsgiVassalName={name},{}", Slapd::VASSALS)
}

fn vassal(name: &str, config: &str, extra: &str) -> String {
    format!(
        "dn: {}\nobjectClass: uwsgiVassal\nuwsgiVassalName: {name}\nuwsgiVassalConfig:: {}\n{extra}",
        dn(name),
        b64(config)
    )
}

fn set_config(s: &Slapd, name: &str, config: &str) {
    s.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nreplace: uwsgiVassalConfig\nuwsgiVassalConfig:: {}\n",
        dn(name),
        b64(config)
    ));
}

fn find<'a>(v: &'a [VassalSpec], name: &str) -> Option<&'a VassalSpec> {
    v.iter().find(|s| s.name.as_str() == name)
}

fn config_of(v: &[VassalSpec], name: &str) -> Option<String> {
    find(v, name).map(|s| match &s.config {
        ConfigSource::Inline(t) => t.to_string(),
        other => panic!("{name}: expected inline config, got {other:?}"),
    })
}

fn names(v: &[VassalSpec]) -> Vec<&str> {
    v.iter().map(|s| s.name.as_str()).collect()
}

/// With content sync (syncprov) and a 60 s poll period, every change is
/// seen within a second: only the pushed notification can explain that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_change_delete_are_pushed() {
    let s = start_slapd(SlapdOptions::default());
    let mut m = run(&url(&s, ""), freq(60));
    let first = m.next(Duration::from_secs(10)).await;
    assert_eq!(
        first,
        Change::Snapshot(vec![]),
        "an empty OU is an empty snapshot"
    );
    assert_eq!(
        m.next(Duration::from_secs(5)).await,
        Change::Health(MonitorHealth::Connected)
    );

    let cfg1 = "[uwsgi]\nmaster = true\nsocket = 127.0.0.1:0\n";
    let t = Instant::now();
    s.ldapadd(&vassal(
        "app.ini",
        cfg1,
        "uwsgiVassalUid: 1000\nuwsgiVassalGid: 1001\nuwsgiVassalSocket: 127.0.0.1:9001\n",
    ));
    let v = m
        .snapshot_where(Duration::from_secs(5), |v| find(v, "app.ini").is_some())
        .await;
    let added = t.elapsed();
    eprintln!("create seen after {added:?} (poll period 60 s)");
    assert!(added < Duration::from_secs(2), "create took {added:?}");
    assert_eq!(names(&v), ["app.ini"]);
    let app = find(&v, "app.ini").unwrap();
    assert_eq!(config_of(&v, "app.ini").unwrap(), cfg1);
    assert_eq!(
        app.owner,
        Some(Owner {
            uid: 1000,
            gid: 1001
        })
    );
    assert_eq!(app.socket.as_deref(), Some("127.0.0.1:9001"));
    let key1 = app.key;
    assert!(matches!(key1, ChangeKey::Stamp(_)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (key1.as_secs() - now).abs() < 60,
        "entryCSN is a time stamp: {key1:?}"
    );

    // two edits in quick succession (same second): each gets a newer key
    let t = Instant::now();
    set_config(&s, "app.ini", "[uwsgi]\nmaster = true\n# v2\n");
    let v = m
        .snapshot_where(Duration::from_secs(5), |v| {
            config_of(v, "app.ini").is_some_and(|c| c.contains("v2"))
        })
        .await;
    let key2 = find(&v, "app.ini").unwrap().key;
    set_config(&s, "app.ini", "[uwsgi]\nmaster = true\n# v3\n");
    let v = m
        .snapshot_where(Duration::from_secs(5), |v| {
            config_of(v, "app.ini").is_some_and(|c| c.contains("v3"))
        })
        .await;
    let changed = t.elapsed();
    eprintln!("two changes seen after {changed:?} (poll period 60 s)");
    assert!(
        changed < Duration::from_secs(2),
        "two changes took {changed:?}"
    );
    let key3 = find(&v, "app.ini").unwrap().key;
    assert!(key2.is_newer_than(&key1), "{key2:?} !> {key1:?}");
    assert!(key3.is_newer_than(&key2), "{key3:?} !> {key2:?}");

    let t = Instant::now();
    s.ldapdelete(&dn("app.ini"));
    let v = m
        .snapshot_where(Duration::from_secs(5), |v| v.is_empty())
        .await;
    assert!(v.is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "delete took {:?}",
        t.elapsed()
    );
    // nothing changes: no further snapshot (only differing results are sent)
    m.quiet_for(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_skipped_and_the_rest_counts() {
    let s = start_slapd(SlapdOptions::default());
    s.ldapadd(&vassal("good.ini", "[uwsgi]\nmaster = true\n", ""));
    s.ldapadd(&vassal("also-good.yaml", "uwsgi:\n  master: true\n", ""));
    s.ldapadd(&vassal("noext", "[uwsgi]\n", ""));
    s.ldapadd(&vassal("-dash.ini", "[uwsgi]\n", ""));
    s.ldapadd(&vassal("../escape.ini", "[uwsgi]\n", ""));
    s.ldapadd(&vassal(
        "uidonly.ini",
        "[uwsgi]\n",
        "uwsgiVassalUid: 1000\n",
    ));
    // a second entry claiming the name of another one
    s.ldapadd(&format!(
        "dn: cn=dup,{}\nobjectClass: uwsgiVassal\ncn: dup\nuwsgiVassalName: good.ini\nuwsgiVassalConfig: [uwsgi]\n",
        Slapd::VASSALS
    ));
    let mut m = run(&url(&s, ""), freq(60));
    let Change::Snapshot(v) = m.next(Duration::from_secs(10)).await else {
        panic!("expected a snapshot first");
    };
    assert_eq!(names(&v), ["also-good.yaml", "good.ini"]);
    assert_eq!(
        config_of(&v, "also-good.yaml").unwrap(),
        "uwsgi:\n  master: true\n"
    );
    let log = logged();
    for (dn_, why) in [
        (dn("noext"), "does not end with a config extension"),
        (dn("-dash.ini"), "must not start with '-'"),
        (dn("../escape.ini"), "path separator"),
        (dn("uidonly.ini"), "uwsgiVassalUid without uwsgiVassalGid"),
        // the first DN in sorted order keeps the name
        (
            dn("good.ini"),
            &format!("good.ini is already used by cn=dup,{}", Slapd::VASSALS),
        ),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("skipping entry {dn_}: ")) && l.contains(why)),
            "no warning for {dn_} ({why}) in:\n{log}"
        );
    }

    // fixing a bad record makes it a vassal; breaking a good one drops only it
    s.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nadd: uwsgiVassalGid\nuwsgiVassalGid: 1000\n",
        dn("uidonly.ini")
    ));
    let v = m
        .snapshot_where(Duration::from_secs(5), |v| find(v, "uidonly.ini").is_some())
        .await;
    assert_eq!(names(&v), ["also-good.yaml", "good.ini", "uidonly.ini"]);
}

/// The server goes away while vassals run: the monitor reports Degraded and
/// never an empty snapshot, reconnects by itself, and resyncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_and_restarted() {
    let mut s = start_slapd(SlapdOptions::default());
    s.ldapadd(&vassal("a.ini", "[uwsgi]\nmaster = true\n", ""));
    let mut m = run(&url(&s, ""), freq(1));
    let v = m
        .snapshot_where(Duration::from_secs(10), |v| !v.is_empty())
        .await;
    assert_eq!(names(&v), ["a.ini"]);
    assert_eq!(
        m.next(Duration::from_secs(5)).await,
        Change::Health(MonitorHealth::Connected)
    );

    s.stop();
    let t = Instant::now();
    match m.next(Duration::from_secs(10)).await {
        Change::Health(MonitorHealth::Degraded(why)) => {
            assert!(why.contains("127.0.0.1"), "{why}")
        }
        other => panic!("expected Degraded, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "outage seen after {:?}",
        t.elapsed()
    );
    // several poll periods (and reconnect attempts) pass: no snapshot at all
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Ok(Some(msg)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        m.rx.recv(),
    )
    .await
    {
        assert!(
            matches!(msg.change, Change::Health(MonitorHealth::Degraded(_))),
            "while the server is down: {:?}",
            msg.change
        );
    }

    s.restart();
    s.ldapadd(&vassal("b.ini", "[uwsgi]\nmaster = true\n", ""));
    let v = m
        .snapshot_where(Duration::from_secs(15), |v| v.len() == 2)
        .await;
    assert_eq!(names(&v), ["a.ini", "b.ini"]);
    // back to health, and pushes work again on the new connection
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if m.next(left).await == Change::Health(MonitorHealth::Connected) {
            break;
        }
    }
    s.ldapdelete(&dn("a.ini"));
    let v = m
        .snapshot_where(Duration::from_secs(5), |v| v.len() == 1)
        .await;
    assert_eq!(names(&v), ["b.ini"]);
}

/// Without syncprov the server offers no change notification: the monitor
/// finds changes by polling every freq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_when_the_server_offers_no_content_sync() {
    let s = start_slapd(SlapdOptions { syncprov: false });
    let mut m = run(&url(&s, ""), freq(1));
    assert_eq!(
        m.next(Duration::from_secs(10)).await,
        Change::Snapshot(vec![])
    );
    assert_eq!(
        m.next(Duration::from_secs(5)).await,
        Change::Health(MonitorHealth::Connected)
    );
    s.ldapadd(&vassal("polled.ini", "[uwsgi]\nmaster = true\n", ""));
    let t = Instant::now();
    let v = m
        .snapshot_where(Duration::from_secs(5), |v| !v.is_empty())
        .await;
    assert_eq!(names(&v), ["polled.ini"]);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "poll took {:?}",
        t.elapsed()
    );
}

/// Scope, filter and attribute mapping from the URL; bind credentials from
/// the URL (password file) and from the options; a wrong password degrades
/// without showing the password anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_parts_and_bind_credentials() {
    let s = start_slapd(SlapdOptions::default());
    s.ldapadd(&format!(
        "dn: ou=web1,{v}\nobjectClass: organizationalUnit\nou: web1\n\n\
         dn: ou=web2,{v}\nobjectClass: organizationalUnit\nou: web2\n",
        v = Slapd::VASSALS
    ));
    for (host, name) in [("web1", "one.ini"), ("web2", "two.ini")] {
        s.ldapadd(&format!(
            "dn: uwsgiVassalName={name},ou={host},{v}\nobjectClass: uwsgiVassal\nuwsgiVassalName: {name}\nuwsgiVassalConfig: [uwsgi]\ndescription: {host}\n",
            v = Slapd::VASSALS
        ));
    }
    s.ldapadd(&vassal("top.ini", "[uwsgi]\n", "description: web1\n"));

    // scope one under ou=web1: only one.ini
    let pwfile = s.server.path("bindpw");
    std::fs::write(&pwfile, format!("{}\n", Slapd::PASSWORD)).unwrap();
    let u = format!(
        "{}/ou=web1,{}??one??bindname={},x-bindpw-file={}",
        s.url(),
        Slapd::VASSALS,
        Slapd::ADMIN_DN.replace(',', "%2C"),
        pwfile.display()
    );
    let mut m = run(&u, freq(60));
    let Change::Snapshot(v) = m.next(Duration::from_secs(10)).await else {
        panic!("expected a snapshot")
    };
    assert_eq!(names(&v), ["one.ini"]);
    drop(m);

    // subtree with a filter on description: one.ini and top.ini
    let u = url(&s, "??sub?(%26(objectClass=uwsgiVassal)(description=web1))");
    let mut m = run(&u, freq(60));
    let Change::Snapshot(v) = m.next(Duration::from_secs(10)).await else {
        panic!("expected a snapshot")
    };
    assert_eq!(names(&v), ["one.ini", "top.ini"]);
    drop(m);

    // the name taken from another attribute (cn), key from modifyTimestamp
    s.ldapadd(&format!(
        "dn: ou=bycn,{v}\nobjectClass: organizationalUnit\nou: bycn\n\n\
         dn: cn=fromcn.ini,ou=bycn,{v}\nobjectClass: uwsgiVassal\ncn: fromcn.ini\nuwsgiVassalName: ignored.ini\nuwsgiVassalConfig: [uwsgi]\n",
        v = Slapd::VASSALS
    ));
    let u = format!(
        "{}/ou=bycn,{}?cn?one??x-key=modifyTimestamp",
        s.url(),
        Slapd::VASSALS
    );
    let mut m = run(&u, freq(60));
    let Change::Snapshot(v) = m.next(Duration::from_secs(10)).await else {
        panic!("expected a snapshot")
    };
    assert_eq!(names(&v), ["fromcn.ini"]);
    let ChangeKey::Stamp(ns) = v[0].key else {
        panic!()
    };
    assert_eq!(ns % 1_000_000_000, 0, "modifyTimestamp has whole seconds");
    drop(m);

    // credentials from the options; a wrong password degrades, never shown
    let opts = freq(1);
    let args = bind_args(Slapd::ADMIN_DN, "wrong-horse-battery");
    let u = url(&s, "");
    let monitor = monitors::build_with(&u, &opts, &args).unwrap();
    assert!(
        !monitor.describe().contains("wrong-horse"),
        "{}",
        monitor.describe()
    );
    let mut m = run_with(&u, opts, &args);
    match m.next(Duration::from_secs(10)).await {
        Change::Health(MonitorHealth::Degraded(why)) => {
            assert!(why.contains("bind as cn=admin"), "{why}");
            assert!(!why.contains("wrong-horse"), "{why}");
        }
        other => panic!("expected Degraded, got {other:?}"),
    }
    drop(m);
    let log = logged();
    assert!(log.contains("bind as cn=admin"), "{log}");
    assert!(
        !log.contains("wrong-horse"),
        "the password was logged:\n{log}"
    );
    let args = bind_args(Slapd::ADMIN_DN, Slapd::PASSWORD);
    let mut m = run_with(
        &url(&s, "????x-bindpw=ignored-by-nothing%2C"),
        freq(60),
        &args,
    );
    // the URL's x-bindpw (wrong) wins over the options and has no bindname
    // of its own: it binds as the options' DN with the URL's password
    match m.next(Duration::from_secs(10)).await {
        Change::Health(MonitorHealth::Degraded(why)) => assert!(why.contains("bind"), "{why}"),
        other => panic!("expected Degraded, got {other:?}"),
    }
}
