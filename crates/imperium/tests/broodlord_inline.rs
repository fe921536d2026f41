//! Broodlord with config text passed over the config pipe (as pg://,
//! mongodb://, amqp:// and zmq:// pass it): the zerg gets the base text and
//! is launched as `--ini emperor://NAME:zerg`, and a database-style removal
//! pass (a snapshot listing only the base) never stops it. uWSGI manages
//! zergs of file monitors only (docs/broodlord.md).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emperor::argv::LaunchOptions;
use emperor::reconciler::{ReconcilerConfig, VassalState};
use emperor::runtime::{Command, Emperor, EmperorConfig};
use emperor::{
    Change, ChangeKey, Extensions, Monitor, MonitorContext, MonitorOptions, NamePolicy, VassalName,
    VassalSpec,
};
use futures::future::BoxFuture;
use testkit::servers::{free_port, wait_until};
use testkit::uwsgi::{parse_answer, uwsgi_bin};
use tokio::sync::{mpsc, oneshot};

/// A database-like monitor: a full snapshot of one inline vassal every
/// 200 ms (a real monitor for this test: the seam every database uses).
struct PollingInline {
    spec: VassalSpec,
}

impl Monitor for PollingInline {
    fn describe(&self) -> String {
        "test://inline".into()
    }
    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                if !ctx.send(Change::Snapshot(vec![self.spec.clone()])).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

fn get(port: u16) -> Option<(u32, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    write!(s, "GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    parse_answer(r.split_once("\r\n\r\n")?.1)
}

async fn table(tx: &mpsc::Sender<Command>) -> Vec<(String, VassalState)> {
    let (rtx, rrx) = oneshot::channel();
    let f = move |r: &emperor::reconciler::Reconciler| {
        let v = r
            .vassals()
            .map(|v| (v.name.to_string(), v.phase.state()))
            .collect();
        let _ = rtx.send(v);
    };
    tx.send(Command::Inspect(Box::new(f))).await.unwrap();
    rrx.await.unwrap()
}

#[test]
fn inline_config_zergs_survive_removal_passes_and_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let app = testkit::uwsgi::write_slow_app(tmp.path());
    let port = free_port();
    let zs = tmp.path().join("zerg.sock");
    let text = format!(
        "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 1\nhttp-socket = 127.0.0.1:{port}\nwsgi-file = {app}\nenv = MARKER=base\nzerg-server = {zs}\nvassal-sos = 1\ndie-on-term = true\n\n[zerg]\nplugins = python3\nmaster = true\nprocesses = 1\nzerg = {zs}\nprotocol = http\nwsgi-file = {app}\nenv = MARKER=zerg\nidle = 4\ndie-on-idle = true\ndie-on-term = true\n",
        app = app.display(),
        zs = zs.display()
    );
    let name = VassalName::parse("db.ini", &Extensions::default(), NamePolicy::Plain).unwrap();
    let spec = VassalSpec::inline(name, text, ChangeKey::Stamp(1));
    let cfg = EmperorConfig {
        reconciler: ReconcilerConfig {
            broodlord: 1,
            ..Default::default()
        },
        launch: LaunchOptions {
            binary: uwsgi_bin().into_os_string(),
            ..Default::default()
        },
        monitor: MonitorOptions {
            cwd: tmp.path().to_path_buf(),
            ..Default::default()
        },
        reload_mercy: Duration::from_secs(10),
        on_demand: Default::default(),
        logs: Default::default(),
        health: Default::default(),
        ready_wait: false,
        check: Default::default(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = mpsc::channel(16);
    let emperor = rt.spawn(Emperor::new(cfg, vec![Box::new(PollingInline { spec })]).run(rx));
    assert!(
        wait_until(Duration::from_secs(20), || get(port)
            .is_some_and(|(_, m)| m == "base")),
        "the base never answered"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((_, m)) = get(port) {
                        seen.lock().unwrap().push(m);
                    }
                }
            })
        })
        .collect();
    let served = wait_until(Duration::from_secs(20), || {
        seen.lock().unwrap().iter().any(|m| m == "zerg")
    });
    assert!(served, "no request was served by a zerg");
    // snapshots that list only db.ini keep arriving: the zerg keeps running
    let t = rt.block_on(table(&tx));
    assert!(
        t.iter()
            .any(|(n, s)| n == "db.ini:zerg:1" && *s == VassalState::Running),
        "{t:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let t = rt.block_on(table(&tx));
    assert!(
        t.iter().any(|(n, _)| n == "db.ini:zerg:1"),
        "the zerg was removed while its base exists: {t:?}"
    );
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    // idle: the zerg asks to stop and is removed
    let gone = wait_until(Duration::from_secs(20), || {
        rt.block_on(table(&tx)).iter().all(|(n, _)| n == "db.ini")
    });
    assert!(gone, "{:?}", rt.block_on(table(&tx)));
    rt.block_on(async {
        tx.send(Command::Shutdown).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), emperor)
            .await
            .expect("emperor stopped")
            .unwrap();
    });
}
