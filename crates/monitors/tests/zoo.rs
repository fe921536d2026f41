//! zoo:// against a real private ZooKeeper (Debian's `zookeeper`).
#![cfg(feature = "zoo")]

mod kv_support;

use std::time::{Duration, Instant};

use emperor::{ChangeKey, Owner};
use kv_support::*;
use testkit::servers::zookeeper::ZooKeeper;
use zookeeper_client as zk;

const T: Duration = Duration::from_secs(10);

async fn client(zk_server: &ZooKeeper) -> zk::Client {
    zk::Client::connect(&zk_server.hosts())
        .await
        .expect("connect to zookeeper")
}

fn opts() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

async fn create(c: &zk::Client, path: &str, data: &str) -> i64 {
    let (stat, _) = c
        .create(path, data.as_bytes(), &opts())
        .await
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
    stat.mzxid
}

async fn set(c: &zk::Client, path: &str, data: &str) -> i64 {
    c.set_data(path, data.as_bytes(), None)
        .await
        .unwrap_or_else(|e| panic!("set {path}: {e}"))
        .mzxid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_change_delete_and_bad_records() {
    init_logs();
    let server = ZooKeeper::start();
    let c = client(&server).await;
    create(&c, "/vassals", "").await;
    let a0 = create(&c, "/vassals/a.ini", "[uwsgi]\nmodule = a\n").await;
    let b0 = create(
        &c,
        "/vassals/b.ini",
        "#!imperium uid=1000 gid=1001 socket=127.0.0.1:3999\n[uwsgi]\nmodule = b\n",
    )
    .await;
    create(
        &c,
        "/vassals/bad.ini",
        "#!imperium uid=root gid=0\n[uwsgi]\n",
    )
    .await;
    create(&c, "/vassals/-dash.ini", "[uwsgi]\n").await;
    create(&c, "/vassals/notes.txt", "not a vassal").await;
    create(&c, "/vassals/a.ini/child.ini", "nested: ignored").await;

    let url = format!("zoo://{}/vassals", server.hosts());
    let mut m = start(&url);
    let snap = m.snapshot(T).await;
    assert_good_records(&snap, a0, b0, "the key is the mzxid", "127.0.0.1:3999");
    assert_eq!(snap[0].owner, None);

    // change: an Upsert with the new text and a larger key, within milliseconds
    let t0 = Instant::now();
    let a1 = set(&c, "/vassals/a.ini", "[uwsgi]\nmodule = a2\n").await;
    let s = upsert(m.next_data(T).await, "a.ini");
    let latency = t0.elapsed();
    assert_eq!(text(&s), "[uwsgi]\nmodule = a2\n");
    assert_eq!(s.key, ChangeKey::Stamp(a1 as i128));
    assert!(a1 > a0);
    eprintln!("zoo: set_data -> Upsert in {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "watch latency {latency:?}"
    );

    // a nested node changing is not a vassal change
    set(&c, "/vassals/a.ini/child.ini", "still ignored").await;
    // create
    let c0 = create(&c, "/vassals/c.yaml", "uwsgi:\n  module: c\n").await;
    let s = upsert(m.next_data(T).await, "c.yaml");
    assert_eq!(s.key, ChangeKey::Stamp(c0 as i128));
    // a bad record fixed becomes a vassal
    set(
        &c,
        "/vassals/bad.ini",
        "#!imperium uid=1002 gid=1002\n[uwsgi]\n",
    )
    .await;
    let s = upsert(m.next_data(T).await, "bad.ini");
    assert_eq!(
        s.owner,
        Some(Owner {
            uid: 1002,
            gid: 1002
        })
    );
    // a good record turned bad is no longer a vassal (as a full read would say)
    set(&c, "/vassals/a.ini", "#!imperium uid=1\n[uwsgi]\n").await;
    remove(m.next_data(T).await, "a.ini");
    // delete
    c.delete("/vassals/b.ini", None).await.unwrap();
    remove(m.next_data(T).await, "b.ini");
    // a name from the network that is refused never reaches the emperor
    create(
        &c,
        &format!("/vassals/{}.ini", "x".repeat(260)),
        "[uwsgi]\n",
    )
    .await;
    m.no_data_for(Duration::from_millis(300)).await;

    // a rescan request reads everything again
    m.rescan.send_modify(|v| *v += 1);
    let snap = m.snapshot(T).await;
    assert_eq!(names(&snap), ["bad.ini", "c.yaml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_and_restarted() {
    init_logs();
    let mut server = ZooKeeper::start();
    {
        let c = client(&server).await;
        create(&c, "/vassals", "").await;
        create(&c, "/vassals/a.ini", "[uwsgi]\nmodule = a\n").await;
    }
    let mut m = start(&format!("zoo://{}/vassals", server.hosts()));
    assert_eq!(names(&m.snapshot(T).await), ["a.ini"]);

    server.stop();
    let reason = m.degraded(Duration::from_secs(20)).await;
    eprintln!("zoo: degraded: {reason}");
    // while down: no snapshot, no removal
    m.no_data_for(Duration::from_secs(1)).await;

    server.restart();
    let c = client(&server).await;
    // everything is read again after the reconnect
    let snap = m.snapshot(Duration::from_secs(30)).await;
    assert_eq!(names(&snap), ["a.ini"]);
    let a1 = set(&c, "/vassals/a.ini", "[uwsgi]\nmodule = a1\n").await;
    let s = upsert(m.next_data(T).await, "a.ini");
    assert_eq!(s.key, ChangeKey::Stamp(a1 as i128));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_path_is_degraded_until_created() {
    init_logs();
    let server = ZooKeeper::start();
    let mut m = start(&format!("zoo://{}/later", server.hosts()));
    let reason = m.degraded(T).await;
    assert!(reason.contains("does not exist"), "{reason}");
    let c = client(&server).await;
    create(&c, "/later", "").await;
    // the watched node's creation triggers a full read
    assert_eq!(names(&m.snapshot(T).await), Vec::<&str>::new());
    create(&c, "/later/a.ini", "[uwsgi]\n").await;
    upsert(m.next_data(T).await, "a.ini");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_monitors_on_one_path_see_the_same_change() {
    init_logs();
    let server = ZooKeeper::start();
    let c = client(&server).await;
    create(&c, "/fleet", "").await;
    create(&c, "/fleet/app.ini", "[uwsgi]\nmodule = v1\n").await;
    let url = format!("zoo://{}/fleet", server.hosts());
    let mut m1 = start(&url);
    let mut m2 = start(&url);
    assert_eq!(m1.snapshot(T).await, m2.snapshot(T).await);
    let k = set(&c, "/fleet/app.ini", "[uwsgi]\nmodule = v2\n").await;
    let s1 = upsert(m1.next_data(T).await, "app.ini");
    let s2 = upsert(m2.next_data(T).await, "app.ini");
    assert_eq!(s1, s2);
    assert_eq!(s1.key, ChangeKey::Stamp(k as i128));
    assert_eq!(text(&s1), "[uwsgi]\nmodule = v2\n");
    c.delete("/fleet/app.ini", None).await.unwrap();
    remove(m1.next_data(T).await, "app.ini");
    remove(m2.next_data(T).await, "app.ini");
}
