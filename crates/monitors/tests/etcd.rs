//! etcd:// against a real private etcd (Debian's `etcd-server`).
#![cfg(feature = "etcd")]

mod kv_support;

use std::time::{Duration, Instant};

use emperor::{Change, ChangeKey, Owner};
use etcd_client as etcd;
use kv_support::*;
use testkit::servers::etcd::Etcd;

const T: Duration = Duration::from_secs(10);

async fn client(server: &Etcd) -> etcd::Client {
    etcd::Client::connect([format!("http://{}", server.endpoint())], None)
        .await
        .expect("connect to etcd")
}

/// Puts a key and returns the revision of the put (its mod_revision).
async fn put(c: &mut etcd::Client, key: &str, value: &str) -> i64 {
    let r = c
        .put(key, value, None)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    r.header().expect("header").revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_change_delete_and_bad_records() {
    init_logs();
    let server = Etcd::start();
    let mut c = client(&server).await;
    let a0 = put(&mut c, "/vassals/a.ini", "[uwsgi]\nmodule = a\n").await;
    let b0 = put(
        &mut c,
        "/vassals/b.ini",
        "#!imperium uid=1000 gid=1001 socket=/tmp/b.sock\n[uwsgi]\nmodule = b\n",
    )
    .await;
    put(&mut c, "/vassals/bad.ini", "#!imperium uid=1000\n[uwsgi]\n").await;
    put(&mut c, "/vassals/-dash.ini", "[uwsgi]\n").await;
    put(&mut c, "/vassals/notes.txt", "not a vassal").await;
    put(&mut c, "/vassals/sub/c.ini", "nested: refused").await;
    put(&mut c, "/vassalsx/d.ini", "another prefix").await;
    put(&mut c, "/other/e.ini", "another prefix").await;

    let mut m = start(&format!("etcd://{}/vassals", server.endpoint()));
    let snap = m.snapshot(T).await;
    assert_good_records(&snap, a0, b0, "the key is the mod_revision", "/tmp/b.sock");

    let t0 = Instant::now();
    let a1 = put(&mut c, "/vassals/a.ini", "[uwsgi]\nmodule = a2\n").await;
    let s = upsert(m.next_data(T).await, "a.ini");
    let latency = t0.elapsed();
    assert_eq!(text(&s), "[uwsgi]\nmodule = a2\n");
    assert_eq!(s.key, ChangeKey::Stamp(a1 as i128));
    eprintln!("etcd: put -> Upsert in {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "watch latency {latency:?}"
    );

    // two keys in one transaction: one revision, both changes delivered
    let txn = etcd::Txn::new().and_then([
        etcd::TxnOp::put("/vassals/c.yaml", "uwsgi:\n  module: c\n", None),
        etcd::TxnOp::put("/vassals/d.json", "{\"uwsgi\": {\"module\": \"d\"}}", None),
    ]);
    let rev = c.txn(txn).await.unwrap().header().unwrap().revision();
    let s1 = upsert(m.next_data(T).await, "c.yaml");
    let s2 = upsert(m.next_data(T).await, "d.json");
    assert_eq!(
        (s1.key, s2.key),
        (ChangeKey::Stamp(rev as i128), ChangeKey::Stamp(rev as i128))
    );

    // a bad record fixed, a good record turned bad, a delete
    put(
        &mut c,
        "/vassals/bad.ini",
        "#!imperium uid=1000 gid=1000\n[uwsgi]\n",
    )
    .await;
    assert_eq!(
        upsert(m.next_data(T).await, "bad.ini").owner,
        Some(Owner {
            uid: 1000,
            gid: 1000
        })
    );
    put(&mut c, "/vassals/a.ini", "#!imperium socket\n[uwsgi]\n").await;
    remove(m.next_data(T).await, "a.ini");
    c.delete("/vassals/b.ini", None).await.unwrap();
    remove(m.next_data(T).await, "b.ini");
    // changes outside the prefix or to non-vassals are not sent
    put(&mut c, "/vassalsx/d.ini", "x").await;
    put(&mut c, "/vassals/notes.txt", "y").await;
    m.no_data_for(Duration::from_millis(300)).await;

    m.rescan.send_modify(|v| *v += 1);
    assert_eq!(names(&m.snapshot(T).await), ["bad.ini", "c.yaml", "d.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_and_restarted_resumes_from_the_last_revision() {
    init_logs();
    let mut server = Etcd::start();
    let mut c = client(&server).await;
    put(&mut c, "/vassals/a.ini", "[uwsgi]\nmodule = a\n").await;
    let mut m = start(&format!("etcd://{}/vassals", server.endpoint()));
    assert_eq!(names(&m.snapshot(T).await), ["a.ini"]);
    drop(c);

    server.stop();
    let reason = m.degraded(T).await;
    eprintln!("etcd: degraded: {reason}");
    m.no_data_for(Duration::from_secs(1)).await;

    server.restart();
    // written as soon as the server is back, likely before the monitor
    // reconnects: the resumed watch must deliver them, with no new snapshot
    let mut c = client(&server).await;
    let b = put(&mut c, "/vassals/b.ini", "[uwsgi]\nmodule = b\n").await;
    c.delete("/vassals/a.ini", None).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match m.next(Duration::from_secs(30)).await {
            Change::Health(_) => {}
            Change::Snapshot(s) => panic!("a reconnect must resume the watch, not re-read: {s:?}"),
            other => got.push(other),
        }
    }
    assert_eq!(
        upsert(got.remove(0), "b.ini").key,
        ChangeKey::Stamp(b as i128)
    );
    remove(got.remove(0), "a.ini");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_history_means_a_full_read() {
    init_logs();
    let mut server = Etcd::start();
    let mut c = client(&server).await;
    put(&mut c, "/vassals/a.ini", "[uwsgi]\n").await;
    let mut m = start(&format!("etcd://{}/vassals", server.endpoint()));
    assert_eq!(names(&m.snapshot(T).await), ["a.ini"]);
    server.stop();
    m.degraded(T).await;
    server.restart();
    let mut c2 = client(&server).await;
    put(&mut c2, "/vassals/b.ini", "[uwsgi]\n").await;
    let rev = put(&mut c2, "/unrelated", "x").await;
    c2.compact(rev, Some(etcd::CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    drop(c);
    // the monitor either resumed before the compaction (an Upsert) or found
    // its revision compacted and read everything (a snapshot with b.ini)
    loop {
        match m.next(Duration::from_secs(30)).await {
            Change::Health(_) => {}
            Change::Snapshot(mut s) => {
                s.sort_by(|x, y| x.name.cmp(&y.name));
                assert_eq!(names(&s), ["a.ini", "b.ini"]);
                break;
            }
            other => {
                upsert(other, "b.ini");
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_monitors_on_one_prefix_see_the_same_change() {
    init_logs();
    let server = Etcd::start();
    let mut c = client(&server).await;
    put(&mut c, "/fleet/app.ini", "[uwsgi]\nmodule = v1\n").await;
    let url = format!("etcd://{}/fleet", server.endpoint());
    let mut m1 = start(&url);
    let mut m2 = start(&url);
    assert_eq!(m1.snapshot(T).await, m2.snapshot(T).await);
    let k = put(&mut c, "/fleet/app.ini", "[uwsgi]\nmodule = v2\n").await;
    let s1 = upsert(m1.next_data(T).await, "app.ini");
    let s2 = upsert(m2.next_data(T).await, "app.ini");
    assert_eq!(s1, s2);
    assert_eq!(s1.key, ChangeKey::Stamp(k as i128));
    c.delete("/fleet/app.ini", None).await.unwrap();
    remove(m1.next_data(T).await, "app.ini");
    remove(m2.next_data(T).await, "app.ini");
}
