//! zoo:// end to end: a real private ZooKeeper, imperium, and real uWSGI
//! vassals that receive their config over the config pipe.
#![cfg(feature = "zoo")]

mod kv_uwsgi_support;

use kv_uwsgi_support::*;
use testkit::procs::{tree, wait_all_dead};
use testkit::servers::zookeeper::ZooKeeper;
use testkit::uwsgi::{vassal_ini, vassal_ini_on, wait_answer, write_app};
use zookeeper_client as zk;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn opts() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// The test's own ZooKeeper client. Each write is retried (on a fresh
/// session) for up to 20 s: right after a server restart on a loaded
/// machine a request can time out before the session is re-established,
/// which is about this client, not about the monitor under test.
struct Zk {
    rt: tokio::runtime::Runtime,
    hosts: String,
    c: std::cell::RefCell<zk::Client>,
}

impl Zk {
    fn connect(server: &ZooKeeper) -> Zk {
        let rt = rt();
        let hosts = server.hosts();
        let c = rt.block_on(zk::Client::connect(&hosts)).expect("connect");
        Zk {
            rt,
            hosts,
            c: std::cell::RefCell::new(c),
        }
    }

    /// Runs `op` until it succeeds (or fails in a way `done` accepts).
    fn retry<F, Fut>(&self, what: &str, done: fn(&zk::Error) -> bool, op: F)
    where
        F: Fn(zk::Client) -> Fut,
        Fut: std::future::Future<Output = Result<(), zk::Error>>,
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let c = self.c.borrow().clone();
            match self.rt.block_on(op(c)) {
                Ok(()) => return,
                Err(e) if done(&e) => return,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("{what}: {e}; retrying on a new session");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    if let Ok(c) = self.rt.block_on(zk::Client::connect(&self.hosts)) {
                        *self.c.borrow_mut() = c;
                    }
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }

    fn create(&self, path: &str, data: &str) {
        let what = format!("create {path}");
        // a retried create whose first attempt went through finds the node
        self.retry(
            &what,
            |e| matches!(e, zk::Error::NodeExists),
            |c| async move { c.create(path, data.as_bytes(), &opts()).await.map(|_| ()) },
        );
    }
    fn set(&self, path: &str, data: &str) {
        let what = format!("set {path}");
        self.retry(
            &what,
            |_| false,
            |c| async move { c.set_data(path, data.as_bytes(), None).await.map(|_| ()) },
        );
    }
    fn delete(&self, path: &str) {
        let what = format!("delete {path}");
        // a retried delete whose first attempt went through finds no node
        self.retry(
            &what,
            |e| matches!(e, zk::Error::NoNode),
            |c| async move { c.delete(path, None).await },
        );
    }
}

#[test]
fn create_change_outage_bad_record_delete_with_real_uwsgi() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let mut server = ZooKeeper::start();
    let z = Zk::connect(&server);
    z.create("/vassals", "");
    let (ini, port) = vassal_ini(&app, "one");
    z.create("/vassals/app.ini", &ini);
    // a bad record among good ones: skipped with the reason, the rest runs
    z.create(
        "/vassals/bad.ini",
        &format!("#!imperium uid=nobody gid=1\n{ini}"),
    );

    let url = format!("zoo://{}/vassals", server.hosts());
    let mut emp = emperor(tmp.path(), &url, &[]);
    let master = app_up_bad_record_skipped(&emp, port, "znode skipped");

    // the config text is the znode's data, sent over the config pipe
    z.set("/vassals/app.ini", &vassal_ini_on(&app, "two", port));
    app_reloaded_gracefully(&emp, port, master);

    // ZooKeeper down: the vassal keeps running, the monitor is degraded
    drop(z);
    server.stop();
    app_kept_while_server_down(&emp, port, master);
    // back: everything is read again and changes flow
    server.restart();
    let z = Zk::connect(&server);
    z.set("/vassals/app.ini", &vassal_ini_on(&app, "three", port));
    app_changed_after_restart(&emp, port, master);

    // delete: the vassal and all its processes go
    let all = tree(master);
    z.delete("/vassals/app.ini");
    app_removed(&mut emp, &all, master);
}

#[test]
fn two_imperium_processes_share_one_path() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let server = ZooKeeper::start();
    let z = Zk::connect(&server);
    z.create("/fleet", "");
    z.create("/fleet/app.ini", &ini_env_port(&app, "v1"));
    let url = format!("zoo://{}/fleet", server.hosts());
    let (p1, p2) = (testkit::servers::free_port(), testkit::servers::free_port());
    let mut e1 = emperor(tmp.path(), &url, &[("HOSTPORT", &p1.to_string())]);
    let mut e2 = emperor(tmp.path(), &url, &[("HOSTPORT", &p2.to_string())]);
    let m1 = master_of(wait_answer(p1, "v1", T).unwrap_or_else(|| panic!("host 1:\n{}", e1.log())));
    let m2 = master_of(wait_answer(p2, "v1", T).unwrap_or_else(|| panic!("host 2:\n{}", e2.log())));
    assert_eq!(testkit::procs::ppid(m1), Some(e1.pid()));
    assert_eq!(testkit::procs::ppid(m2), Some(e2.pid()));

    // one write reloads the vassal on both hosts
    z.set("/fleet/app.ini", &ini_env_port(&app, "v2"));
    assert!(wait_answer(p1, "v2", T).is_some(), "host 1:\n{}", e1.log());
    assert!(wait_answer(p2, "v2", T).is_some(), "host 2:\n{}", e2.log());
    // one delete stops it on both
    let (t1, t2) = (tree(m1), tree(m2));
    z.delete("/fleet/app.ini");
    assert!(wait_all_dead(&t1, T), "host 1:\n{}", e1.log());
    assert!(wait_all_dead(&t2, T), "host 2:\n{}", e2.log());
    assert!(e1.stop().success());
    assert!(e2.stop().success());
}
