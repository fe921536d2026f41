//! etcd:// end to end: a real private etcd, imperium, and real uWSGI
//! vassals that receive their config over the config pipe.
#![cfg(feature = "etcd")]

mod kv_uwsgi_support;

use etcd_client as etcd;
use kv_uwsgi_support::*;
use testkit::procs::{tree, wait_all_dead};
use testkit::servers::etcd::Etcd;
use testkit::uwsgi::{vassal_ini, vassal_ini_on, wait_answer, write_app};

struct Kv {
    rt: tokio::runtime::Runtime,
    c: etcd::Client,
}

impl Kv {
    fn connect(server: &Etcd) -> Kv {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = rt
            .block_on(etcd::Client::connect(
                [format!("http://{}", server.endpoint())],
                None,
            ))
            .expect("connect");
        Kv { rt, c }
    }
    fn put(&mut self, key: &str, value: &str) {
        self.rt
            .block_on(self.c.put(key, value, None))
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
    fn delete(&mut self, key: &str) {
        self.rt
            .block_on(self.c.delete(key, None))
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }
}

#[test]
fn create_change_outage_bad_record_delete_with_real_uwsgi() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let mut server = Etcd::start();
    let mut kv = Kv::connect(&server);
    let (ini, port) = vassal_ini(&app, "one");
    kv.put("/vassals/app.ini", &ini);
    kv.put("/vassals/bad.ini", &format!("#!imperium uid=1\n{ini}"));

    let url = format!("etcd://{}/vassals", server.endpoint());
    let mut emp = emperor(tmp.path(), &url, &[]);
    let master = app_up_bad_record_skipped(&emp, port, "etcd key skipped");

    kv.put("/vassals/app.ini", &vassal_ini_on(&app, "two", port));
    app_reloaded_gracefully(&emp, port, master);

    // etcd down: the vassal keeps running, the monitor is degraded
    drop(kv);
    server.stop();
    app_kept_while_server_down(&emp, port, master);
    // back: the watch resumes from the last revision and changes flow
    server.restart();
    let mut kv = Kv::connect(&server);
    kv.put("/vassals/app.ini", &vassal_ini_on(&app, "three", port));
    app_changed_after_restart(&emp, port, master);

    let all = tree(master);
    kv.delete("/vassals/app.ini");
    app_removed(&mut emp, &all, master);
}

#[test]
fn two_imperium_processes_share_one_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let server = Etcd::start();
    let mut kv = Kv::connect(&server);
    kv.put("/fleet/app.ini", &ini_env_port(&app, "v1"));
    let url = format!("etcd://{}/fleet", server.endpoint());
    let (p1, p2) = (testkit::servers::free_port(), testkit::servers::free_port());
    let mut e1 = emperor(tmp.path(), &url, &[("HOSTPORT", &p1.to_string())]);
    let mut e2 = emperor(tmp.path(), &url, &[("HOSTPORT", &p2.to_string())]);
    let m1 = master_of(wait_answer(p1, "v1", T).unwrap_or_else(|| panic!("host 1:\n{}", e1.log())));
    let m2 = master_of(wait_answer(p2, "v1", T).unwrap_or_else(|| panic!("host 2:\n{}", e2.log())));
    kv.put("/fleet/app.ini", &ini_env_port(&app, "v2"));
    assert!(wait_answer(p1, "v2", T).is_some(), "host 1:\n{}", e1.log());
    assert!(wait_answer(p2, "v2", T).is_some(), "host 2:\n{}", e2.log());
    let (t1, t2) = (tree(m1), tree(m2));
    kv.delete("/fleet/app.ini");
    assert!(wait_all_dead(&t1, T), "host 1:\n{}", e1.log());
    assert!(wait_all_dead(&t2, T), "host 2:\n{}", e2.log());
    assert!(e1.stop().success());
    assert!(e2.stop().success());
}
