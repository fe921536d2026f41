//! zmq:// against a real libzmq PUSH peer (Debian's python3-zmq).
//!
//! Each test binds its own PULL socket on 127.0.0.1 with a wildcard port
//! (`tcp://127.0.0.1:*`) and reads the real endpoint from `describe()`.
#![cfg(feature = "zmq")]

mod common;

use common::{opts_in, start, upsert, Running};
use emperor::{Change, ConfigSource, MonitorHealth, Owner};
use testkit::zmq_push::{parts, zmq_push};

async fn bound(cwd: &std::path::Path) -> (Running, String) {
    let mut m = start("zmq://tcp://127.0.0.1:*", opts_in(cwd));
    let endpoint = m
        .describe
        .strip_prefix("zmq://")
        .expect("describe is zmq://ENDPOINT")
        .to_string();
    assert!(
        endpoint.starts_with("tcp://127.0.0.1:") && !endpoint.ends_with('*'),
        "{endpoint}"
    );
    m.health(5, |h| *h == MonitorHealth::Connected).await;
    (m, endpoint)
}

/// Sends from a blocking thread (the peer is a python process).
async fn push(endpoint: &str, messages: Vec<Vec<Vec<u8>>>) {
    let ep = endpoint.to_string();
    tokio::task::spawn_blocking(move || zmq_push(&ep, &messages))
        .await
        .expect("push thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_with_config_spawns_touch_again_reloads_destroy_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, ep) = bound(dir.path()).await;
    push(
        &ep,
        vec![
            parts(&["touch", "app.ini", "[uwsgi]\nv = 1\n"]),
            parts(&["touch", "app.ini", "[uwsgi]\nv = 2\n"]),
            parts(&["destroy", "app.ini"]),
        ],
    )
    .await;
    let a = upsert(m.next_for("app", 10).await);
    assert_eq!(a.name.as_str(), "app.ini");
    assert_eq!(a.config, ConfigSource::Inline("[uwsgi]\nv = 1\n".into()));
    // the second touch within the same second is a reload too
    let b = upsert(m.next_for("app", 10).await);
    assert_eq!(b.config, ConfigSource::Inline("[uwsgi]\nv = 2\n".into()));
    assert!(b.key.is_newer_than(&a.key), "{:?} then {:?}", a.key, b.key);
    match m.next_for("app", 10).await {
        Change::Remove(n) => assert_eq!(n.as_str(), "app.ini"),
        other => panic!("expected Remove, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_without_config_uses_a_file_relative_to_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("vassals")).unwrap();
    std::fs::write(dir.path().join("vassals/file.ini"), "[uwsgi]\n").unwrap();
    let (mut m, ep) = bound(dir.path()).await;
    // an empty config part is "absent", like a missing one
    push(
        &ep,
        vec![
            parts(&["touch", "vassals/file.ini"]),
            parts(&["touch", "vassals/file.ini", ""]),
        ],
    )
    .await;
    for _ in 0..2 {
        let s = upsert(m.next_for("file", 10).await);
        assert_eq!(s.name.as_str(), "vassals/file.ini");
        assert_eq!(
            s.config,
            ConfigSource::File(dir.path().join("vassals/file.ini"))
        );
    }
}

/// uWSGI reads a 6th part after a 5-part message and so eats the next
/// message; here both messages arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_and_six_part_messages_keep_their_neighbours_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, ep) = bound(dir.path()).await;
    push(
        &ep,
        vec![
            parts(&["touch", "five.ini", "[uwsgi]\n", "1000", "1001"]),
            parts(&["touch", "six.ini", "[uwsgi]\n", "", "", "127.0.0.1:8123"]),
            parts(&["touch", "sixempty.ini", "[uwsgi]\n", "1", "2", ""]),
            parts(&["destroy", "five.ini"]),
        ],
    )
    .await;
    let s = upsert(m.next_for(".ini", 10).await);
    assert_eq!(s.name.as_str(), "five.ini");
    assert_eq!(
        s.owner,
        Some(Owner {
            uid: 1000,
            gid: 1001
        })
    );
    assert_eq!(s.socket, None);
    let s = upsert(m.next_for(".ini", 10).await);
    assert_eq!(s.name.as_str(), "six.ini");
    assert_eq!(
        (s.owner, s.socket.as_deref()),
        (None, Some("127.0.0.1:8123"))
    );
    let s = upsert(m.next_for(".ini", 10).await);
    assert_eq!(s.name.as_str(), "sixempty.ini");
    assert_eq!((s.owner, s.socket), (Some(Owner { uid: 1, gid: 2 }), None));
    match m.next_for(".ini", 10).await {
        Change::Remove(n) => assert_eq!(n.as_str(), "five.ini"),
        other => panic!("expected Remove, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrage_of_malformed_messages_is_dropped_and_the_socket_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, ep) = bound(dir.path()).await;
    // one peer, one connection: ZeroMQ keeps the order, so every bad
    // message is read between the two good ones
    let mut bad = vec![
        parts(&["touch", "first.ini", "[uwsgi]\n"]),
        parts(&["touch"]),
        parts(&["destroy"]),
        parts(&["touch", "bad-seven.ini", "c", "", "", "", "7th"]),
        parts(&["spawn", "bad-cmd.ini", "c"]),
        parts(&["TOUCH", "bad-case.ini", "c"]),
        parts(&["touch", "", "c"]),
        parts(&["touch", "bad-noext", "c"]),
        parts(&["touch", "../bad-escape.ini", "c"]),
        parts(&["touch", "sub/bad-slash.ini", "c"]),
        parts(&["touch", "-bad-dash.ini", "c"]),
        parts(&["touch", "bad-missing-file.ini"]),
        parts(&["touch", "bad-uid.ini", "c", "root", "0"]),
        parts(&["touch", "bad-gid.ini", "c", "0", "wheel"]),
        parts(&["touch", "bad-uidonly.ini", "c", "1000"]),
        parts(&["touch", "bad-neg.ini", "c", "-1", "0"]),
        parts(&["touch", "bad-sock.ini", "c", "", "", "a\nb"]),
        parts(&["destroy", "../bad-destroy.ini"]),
        vec![
            b"touch".to_vec(),
            b"bad-utf8.ini".to_vec(),
            vec![0xff, 0xfe],
        ],
        vec![
            b"touch".to_vec(),
            vec![0xff, b'.', b'i', b'n', b'i'],
            b"c".to_vec(),
        ],
        vec![
            b"touch".to_vec(),
            b"bad-huge.ini".to_vec(),
            vec![b'a'; 70_000],
        ],
        vec![vec![0u8; 3], vec![0u8; 3]],
    ];
    bad.push(parts(&[
        "touch",
        &format!("bad-{}.ini", "x".repeat(300)),
        "c",
    ]));
    bad.push(parts(&["touch", "second.ini", "[uwsgi]\n"]));
    push(&ep, bad).await;
    // a frame over the size limit: libzmq drops that peer's connection
    push(
        &ep,
        vec![vec![
            b"touch".to_vec(),
            b"bad-oversize.ini".to_vec(),
            vec![b'a'; 300 * 1024],
        ]],
    )
    .await;
    push(&ep, vec![parts(&["touch", "good.ini", "[uwsgi]\n"])]).await;
    // the changes are exactly the good messages: none of the bad ones made one
    for good in ["first.ini", "second.ini", "good.ini"] {
        let c = m.next_for(".ini", 10).await;
        assert_eq!(upsert(c).name.as_str(), good);
    }
    m.nothing_for("", 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_endpoints_work() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("emperor.sock");
    let url = format!("zmq://ipc://{}", sock.display());
    let mut m = start(&url, opts_in(dir.path()));
    assert_eq!(m.describe, url);
    m.health(5, |h| *h == MonitorHealth::Connected).await;
    push(
        &format!("ipc://{}", sock.display()),
        vec![parts(&["touch", "ipc.ini", "[uwsgi]\n"])],
    )
    .await;
    assert_eq!(upsert(m.next_for("ipc", 10).await).name.as_str(), "ipc.ini");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_endpoints_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = start("zmq://tcp://[::1]:*", opts_in(dir.path()));
    let ep = m.describe.strip_prefix("zmq://").unwrap().to_string();
    assert!(ep.starts_with("tcp://[::1]:"), "{ep}");
    m.health(5, |h| *h == MonitorHealth::Connected).await;
    push(&ep, vec![parts(&["touch", "six.ini", "[uwsgi]\n"])]).await;
    assert_eq!(upsert(m.next_for("six", 10).await).name.as_str(), "six.ini");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoint_or_a_port_in_use_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts_in(dir.path());
    let (m, ep) = bound(dir.path()).await;
    let err = monitors::build(&format!("zmq://{ep}"), &opts)
        .err()
        .expect("second bind accepted");
    assert!(err.to_string().contains("cannot bind"), "{err}");
    for url in ["zmq://", "zmq://127.0.0.1:5252", "zmq://bogus://x"] {
        assert!(monitors::build(url, &opts).is_err(), "{url} accepted");
    }
    // when the monitor ends, its socket is closed and the endpoint is free again
    m.stop(5).await;
    let again = monitors::build(&format!("zmq://{ep}"), &opts);
    assert!(again.is_ok(), "rebind after stop: {:?}", again.err());
}
