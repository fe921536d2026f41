//! mongodb:// with real uWSGI vassals: the config text of a document reaches
//! the vassal over the config pipe (`--ini emperor://NAME`), a larger ts
//! reloads it gracefully, a document leaving the filter stops it, and a
//! MongoDB server that goes away and comes back leaves the vassals running.
//! The server is SecantusDB, started privately by `testkit::servers::mongo`.

#![cfg(feature = "mongodb")]

use std::path::Path;
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use testkit::procs::{alive, ppid, tree, wait_all_dead};
use testkit::servers::mongo::{MongoServer, Topology};
use testkit::uwsgi::{http_get, uwsgi_bin, vassal_ini, vassal_ini_on, wait_answer, write_app};
use testkit::Imperium;

const T: Duration = Duration::from_secs(25);

/// Writes documents with the official driver (on a private runtime: the
/// tests themselves are synchronous, like the other end-to-end tests).
struct Docs {
    rt: tokio::runtime::Runtime,
    coll: Collection<Document>,
}

impl Docs {
    fn new(server: &MongoServer) -> Docs {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let coll = rt.block_on(async {
            mongodb::Client::with_uri_str(server.url())
                .await
                .expect("test client")
                .database("uwsgi")
                .collection("emperor.vassals")
        });
        Docs { rt, coll }
    }
    fn insert(&self, d: Document) {
        self.rt
            .block_on(async { self.coll.insert_one(d).await })
            .expect("insert");
    }
    fn update(&self, name: &str, set: Document) {
        let r = self
            .rt
            .block_on(async {
                self.coll
                    .update_one(doc! {"name": name}, doc! {"$set": set})
                    .await
            })
            .expect("update");
        assert_eq!(r.matched_count, 1, "no document named {name}");
    }
}

fn emperor(cwd: &Path, url: &str, freq: &str) -> Imperium {
    Imperium::start(
        cwd,
        [
            "--emperor".as_ref(),
            url.as_ref(),
            "--emperor-freq".as_ref(),
            freq.as_ref(),
            "--binary-path".as_ref(),
            uwsgi_bin().as_os_str(),
            "--reload-mercy".as_ref(),
            "10".as_ref(),
        ],
    )
}

fn master_of(worker: u32) -> u32 {
    ppid(worker).expect("worker has a parent")
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Replica set (change streams): spawn from config text, reload on a larger
/// ts with the new text, stop when the document leaves the filter.
#[test]
fn config_over_the_pipe_reload_and_filter() {
    let server = MongoServer::start(Topology::ReplicaSet);
    let docs = Docs::new(&server);
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let (ini, port) = vassal_ini(&app, "one");
    docs.insert(
        doc! {"name": "app.ini", "config": ini, "ts": DateTime::from_millis(1_000), "enabled": 1},
    );

    // --emperor-freq 60: whatever happens within seconds came from the change stream
    let url = format!(
        "mongodb://{},uwsgi.emperor.vassals,{{enabled: 1}}",
        server.addr()
    );
    let mut emp = emperor(tmp.path(), &url, "60");
    let worker = wait_answer(port, "one", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    let master = master_of(worker);
    assert_eq!(
        ppid(master),
        Some(emp.pid()),
        "the master is imperium's child"
    );
    let argv = cmdline(master);
    assert!(
        argv.contains("--ini emperor://app.ini"),
        "the config comes over the config pipe: {argv}"
    );
    emp.wait_log("watching uwsgi.emperor.vassals with a change stream", T);

    // new text and a larger ts: a graceful reload that reads the new config
    docs.update(
        "app.ini",
        doc! {"config": vassal_ini_on(&app, "two", port), "ts": DateTime::from_millis(2_000)},
    );
    let w2 = wait_answer(port, "two", T)
        .unwrap_or_else(|| panic!("reloaded vassal never answered:\n{}", emp.log()));
    emp.wait_log("reload the uwsgi instance app.ini", T);
    assert_eq!(master_of(w2), master, "graceful reload keeps the master");

    // leaving the filter stops the vassal and all of its processes
    let all = tree(master);
    docs.update("app.ini", doc! {"enabled": 0});
    emp.wait_log("removed uwsgi instance app.ini", T);
    assert!(wait_all_dead(&all, T), "left: {:?}", tree(master));
    assert!(http_get(port, "/").is_none());
    assert!(emp.stop().success());
}

/// Standalone server (polling): an empty config means the file `name` in
/// the emperor's directory; the server stopping leaves the vassal running,
/// and after a restart the monitor resyncs and a ts bump reloads.
#[test]
fn file_config_and_a_server_restart_with_polling() {
    let mut server = MongoServer::start(Topology::Standalone);
    let docs = Docs::new(&server);
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let (ini, port) = vassal_ini(&app, "file");
    std::fs::write(tmp.path().join("site.ini"), ini).unwrap();
    docs.insert(doc! {"name": "site.ini", "config": "", "ts": 100_i64});

    let url = format!("mongodb2://addr={}", server.addr());
    let emp = emperor(tmp.path(), &url, "1");
    let worker = wait_answer(port, "file", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    let master = master_of(worker);
    assert!(
        cmdline(master).contains("--ini site.ini"),
        "{}",
        cmdline(master)
    );
    emp.wait_log("polling uwsgi.emperor.vassals every 1s", T);

    // the server goes away: degraded, and the vassal keeps serving
    server.stop();
    emp.wait_log("keeping its 1 vassals as they are", T);
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(master));
    assert!(wait_answer(port, "file", Duration::from_secs(2)).is_some());
    assert_eq!(
        emp.count("stop the uwsgi instance site.ini"),
        0,
        "{}",
        emp.log()
    );

    // back: a fresh pass, and a larger ts (float seconds) reloads
    server.restart();
    emp.wait_log_n("is connected", 2, T);
    std::fs::write(
        tmp.path().join("site.ini"),
        vassal_ini_on(&app, "file2", port),
    )
    .unwrap();
    let docs = Docs::new(&server);
    docs.update("site.ini", doc! {"ts": 200.5});
    let w2 = wait_answer(port, "file2", T)
        .unwrap_or_else(|| panic!("vassal never reloaded:\n{}", emp.log()));
    assert_eq!(master_of(w2), master, "graceful reload keeps the master");
}

/// A document's `memory_max` and `pids_max` fields limit its real uWSGI
/// vassal (cgroup v1 here: the master's memory and pids groups carry
/// them), without a word in its config.
#[test]
fn limit_fields_limit_the_vassal() {
    if !testkit::procs::hybrid_v1(&["memory", "pids"]) {
        return;
    }
    let server = MongoServer::start(Topology::Standalone);
    let docs = Docs::new(&server);
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let (ini, port) = vassal_ini(&app, "lim");
    docs.insert(
        doc! {"name": "lim.ini", "config": ini, "ts": 1, "memory_max": "96M", "pids_max": 12},
    );
    let url = format!("mongodb://{},uwsgi.emperor.vassals", server.addr());
    let emp = emperor(tmp.path(), &url, "1");
    let worker = wait_answer(port, "lim", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    let master = master_of(worker);
    let read = |c: &str, f: &str| testkit::procs::v1_value(master, c, f);
    assert_eq!(read("memory", "memory.limit_in_bytes"), 96 << 20);
    assert_eq!(read("pids", "pids.max"), 12);
    // a bad limit later: the document is skipped with the reason, and the
    // vassal keeps running on its last good document
    docs.update("lim.ini", doc! {"pids_max": 0});
    emp.wait_log("the vassal keeps its previous config", T);
    assert!(emp
        .log()
        .contains("pids_max \"0\": a number of processes of at least 1"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(master), "the vassal was stopped:\n{}", emp.log());
    assert!(
        !emp.log().contains("removed uwsgi instance lim.ini"),
        "{}",
        emp.log()
    );
    assert!(http_get(port, "/").is_some());
}
