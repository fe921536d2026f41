//! amqp:// against a real RabbitMQ node started privately by the fixture.
//!
//! All tests but the restart test share one node (it takes 5-6 s to start).
//! They all publish to the same fanout exchange, so every monitor sees every
//! test's messages: each test uses its own tag in vassal names and only
//! looks at changes that carry it.
#![cfg(feature = "amqp")]

mod common;

use std::time::Duration;

use common::{opts_in, start, upsert};
use emperor::{Change, ChangeKey, ConfigSource, MonitorHealth};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use testkit::servers::rabbitmq::RabbitMq;

/// Publishes each `(routing key, body)` to `uwsgi.emperor` and waits for
/// the broker's confirms.
async fn publish(url: &str, messages: &[(&str, &[u8])]) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("publisher connect");
    let ch = conn.create_channel().await.expect("publisher channel");
    ch.exchange_declare(
        "uwsgi.emperor".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("publisher exchange_declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    for (key, body) in messages {
        ch.basic_publish(
            "uwsgi.emperor".into(),
            (*key).into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("publish confirm");
    }
    conn.close(200, "done".into())
        .await
        .expect("close publisher");
}

fn is_connected(h: &MonitorHealth) -> bool {
    *h == MonitorHealth::Connected
}

fn stamp(c: &ChangeKey) -> i128 {
    match c {
        ChangeKey::Stamp(s) => *s,
        other => panic!("not a stamp: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_key_messages_are_inline_configs_and_empty_bodies_stop() {
    let mq = RabbitMq::shared();
    let dir = tempfile::tempdir().unwrap();
    // uWSGI's form: no credentials (guest/guest), no vhost ("/")
    let mut m = start(
        &format!("amqp://127.0.0.1:{}", mq.port),
        opts_in(dir.path()),
    );
    m.health(20, is_connected).await;

    let cfg = "[uwsgi]\nmaster = true\nsocket = 127.0.0.1:0\n";
    publish(&mq.url(), &[("rk-inline.ini", cfg.as_bytes())]).await;
    let s = upsert(m.next_for("rk-inline", 10).await);
    assert_eq!(s.name.as_str(), "rk-inline.ini");
    assert_eq!(s.config, ConfigSource::Inline(cfg.into()));
    assert_eq!((s.owner, s.socket.as_deref()), (None, None));

    publish(&mq.url(), &[("rk-inline.ini", b"")]).await;
    match m.next_for("rk-inline", 10).await {
        Change::Remove(n) => assert_eq!(n.as_str(), "rk-inline.ini"),
        other => panic!("expected Remove, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_messages_spawn_existing_files_and_stop_missing_ones() {
    let mq = RabbitMq::shared();
    let dir = tempfile::Builder::new()
        .prefix("path-msg.")
        .tempdir()
        .unwrap();
    let file = dir.path().join("path-msg-app.ini");
    std::fs::write(&file, "[uwsgi]\nmaster = true\n").unwrap();
    let mut m = start(&mq.url(), opts_in(dir.path()));
    m.health(20, is_connected).await;

    // absolute path, as uWSGI's publishers send it (a trailing newline is trimmed)
    let abs = format!("{}\n", file.display());
    publish(&mq.url(), &[("", abs.as_bytes())]).await;
    let s = upsert(m.next_for("path-msg-app", 10).await);
    assert_eq!(s.name.as_str(), file.to_str().unwrap());
    assert_eq!(s.config, ConfigSource::File(file.clone()));

    // relative path: resolved against the emperor's working directory
    publish(&mq.url(), &[("", b"path-msg-app.ini")]).await;
    let s = upsert(m.next_for("path-msg-app", 10).await);
    assert_eq!(s.name.as_str(), "path-msg-app.ini");
    assert_eq!(s.config, ConfigSource::File(file.clone()));

    // the file is gone: the same message now stops the vassal
    std::fs::remove_file(&file).unwrap();
    publish(&mq.url(), &[("", file.to_str().unwrap().as_bytes())]).await;
    match m.next_for("path-msg-app", 10).await {
        Change::Remove(n) => assert_eq!(n.as_str(), file.to_str().unwrap()),
        other => panic!("expected Remove, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_messages_spawn_vassals_that_fetch_their_config() {
    let mq = RabbitMq::shared();
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(&mq.url(), opts_in(dir.path()));
    m.health(20, is_connected).await;
    let url = "http://127.0.0.1:9/configs/url-msg.ini";
    publish(&mq.url(), &[("", url.as_bytes())]).await;
    let s = upsert(m.next_for("url-msg", 10).await);
    assert_eq!(s.name.as_str(), url);
    assert_eq!(s.config, ConfigSource::Url(url.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_within_one_second_both_reload() {
    let mq = RabbitMq::shared();
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(&mq.url(), opts_in(dir.path()));
    m.health(20, is_connected).await;
    publish(
        &mq.url(),
        &[
            ("twice.ini", b"[uwsgi]\nv = 1\n"),
            ("twice.ini", b"[uwsgi]\nv = 2\n"),
        ],
    )
    .await;
    let a = upsert(m.next_for("twice", 10).await);
    let b = upsert(m.next_for("twice", 10).await);
    assert_eq!(a.config, ConfigSource::Inline("[uwsgi]\nv = 1\n".into()));
    assert_eq!(b.config, ConfigSource::Inline("[uwsgi]\nv = 2\n".into()));
    assert!(b.key.is_newer_than(&a.key), "{:?} then {:?}", a.key, b.key);
    assert!(stamp(&b.key) - stamp(&a.key) < 1_000_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrage_of_bad_messages_changes_nothing_and_a_good_one_still_works() {
    let mq = RabbitMq::shared();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("barrage-noext"), "[uwsgi]\n").unwrap();
    let mut m = start(&mq.url(), opts_in(dir.path()));
    m.health(20, is_connected).await;
    // 255 bytes: the longest routing key AMQP carries, one too long for a name
    let long = format!("barrage-{}.ini", "x".repeat(243));
    assert_eq!(long.len(), 255);
    let huge = vec![b'a'; 70_000];
    // one channel: the broker keeps the order, so every bad message is
    // handled between the two good ones
    let messages: Vec<(&str, &[u8])> = vec![
        ("barrage-first.ini", b"[uwsgi]\n"),
        ("../barrage-escape.ini", b"[uwsgi]\n"),
        ("sub/barrage-sub.ini", b"[uwsgi]\n"),
        ("barrage-noext", b"[uwsgi]\n"),
        ("-barrage-dash.ini", b"[uwsgi]\n"),
        (&long, b"[uwsgi]\n"),
        ("barrage-binary.ini", &[0xff, 0xfe, 0x00]),
        ("barrage-huge.ini", &huge),
        ("", b""),
        ("", b"   "),
        ("", b"/tmp/../etc/barrage.ini"),
        ("", b"barrage-noext"),
        ("", b"ftp://127.0.0.1/barrage.ini"),
        ("", b"http:///barrage.ini"),
        (
            "",
            &[
                0xff, b'b', b'a', b'r', b'r', b'a', b'g', b'e', b'.', b'i', b'n', b'i',
            ],
        ),
        ("barrage-second.ini", b"[uwsgi]\n"),
    ];
    publish(&mq.url(), &messages).await;
    publish(
        &mq.url(),
        &[("barrage-good.ini", b"[uwsgi]\nmaster = true\n")],
    )
    .await;
    // the changes about "barrage" are exactly the good messages: the bad ones made none
    for good in [
        "barrage-first.ini",
        "barrage-second.ini",
        "barrage-good.ini",
    ] {
        let s = upsert(m.next_for("barrage", 10).await);
        assert_eq!(s.name.as_str(), good);
    }
    m.nothing_for("barrage", 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_emperors_on_one_exchange_both_act_on_one_message() {
    let mq = RabbitMq::shared();
    let dir = tempfile::tempdir().unwrap();
    let mut a = start(&mq.url(), opts_in(dir.path()));
    let mut b = start(&mq.url(), opts_in(dir.path()));
    a.health(20, is_connected).await;
    b.health(20, is_connected).await;
    publish(
        &mq.url(),
        &[("fanout-app.ini", b"[uwsgi]\nmaster = true\n")],
    )
    .await;
    for m in [&mut a, &mut b] {
        let s = upsert(m.next_for("fanout-app", 10).await);
        assert_eq!(s.name.as_str(), "fanout-app.ini");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_never_shows_the_password_and_bad_credentials_degrade() {
    let mq = RabbitMq::shared();
    let url = format!("amqp://guest:not-the-password@127.0.0.1:{}/", mq.port);
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(&url, opts_in(dir.path()));
    assert_eq!(m.describe, format!("amqp://guest@127.0.0.1:{}/", mq.port));
    // refused, then retried: two Degraded in a row, no Snapshot, never Connected
    for _ in 0..2 {
        match m.next(20).await {
            Change::Health(MonitorHealth::Degraded(why)) => {
                assert!(!why.contains("not-the-password"), "{why}")
            }
            other => panic!("expected Degraded, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_ends_when_the_emperor_goes_away() {
    let mq = RabbitMq::shared();
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(&mq.url(), opts_in(dir.path()));
    m.health(20, is_connected).await;
    m.stop(5).await;
}

/// The broker goes away while the monitor runs, then comes back: the
/// monitor reports Degraded (never a removal), reconnects by itself and
/// acts on the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted() {
    let mut mq = RabbitMq::start();
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(&mq.url(), opts_in(dir.path()));
    m.health(20, is_connected).await;
    publish(&mq.url(), &[("restart-before.ini", b"[uwsgi]\n")]).await;
    upsert(m.next_for("restart-before", 10).await);

    mq.kill();
    match m.next(20).await {
        Change::Health(MonitorHealth::Degraded(why)) => eprintln!("degraded: {why}"),
        other => panic!("expected Degraded after the broker died, got {other:?}"),
    }
    // retries while the broker is down: more Degraded, nothing else
    tokio::time::sleep(Duration::from_secs(2)).await;
    mq.restart();
    m.health(60, is_connected).await;
    publish(&mq.url(), &[("restart-after.ini", b"[uwsgi]\n")]).await;
    let s = upsert(m.next_for("restart-after", 10).await);
    assert_eq!(s.name.as_str(), "restart-after.ini");
}
