//! zmq:// end to end: imperium binds a PULL socket on 127.0.0.1, a real
//! libzmq PUSH peer (Debian's python3-zmq) sends touch/destroy messages,
//! and real uWSGI vassals (or the test vassal) run.

#![cfg(feature = "zmq")]

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::procs::{ppid, tree, wait_all_dead};
use testkit::servers::wait_until;
use testkit::uwsgi::{http_get, uwsgi_bin, vassal_ini, vassal_ini_on, wait_answer, write_app};
use testkit::zmq_push::{parts, zmq_push};
use testkit::{record_lines, test_vassal_bin, Imperium};

const T: Duration = Duration::from_secs(20);

/// Starts imperium on `zmq://tcp://127.0.0.1:*` and returns it with the
/// endpoint it bound (read from its "monitoring" log line).
fn emperor(cwd: &Path, binary: &Path) -> (Imperium, String) {
    let emp = Imperium::start(
        cwd,
        [
            "--emperor",
            "zmq://tcp://127.0.0.1:*",
            "--binary-path",
            binary.to_str().unwrap(),
            "--reload-mercy",
            "10",
        ],
    );
    let needle = "monitoring zmq://";
    emp.wait_log(needle, T);
    let log = emp.log();
    let line = log.lines().find(|l| l.contains(needle)).unwrap();
    let rest = &line[line.find(needle).unwrap() + needle.len()..];
    let endpoint: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{line}");
    emp.wait_log(" is connected", T);
    (emp, endpoint)
}

fn master_of(worker: u32) -> u32 {
    ppid(worker).expect("worker has a parent")
}

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

#[test]
fn touch_with_config_spawns_reloads_and_destroy_stops_real_uwsgi() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let (mut emp, ep) = emperor(tmp.path(), &uwsgi_bin());

    let (ini, port) = vassal_ini(&app, "one");
    let t = Instant::now();
    zmq_push(&ep, &[parts(&["touch", "app.ini", &ini])]);
    let worker = wait_answer(port, "one", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    eprintln!("touch -> vassal answering: {:?}", t.elapsed());
    let master = master_of(worker);
    assert_eq!(
        ppid(master),
        Some(emp.pid()),
        "the master is imperium's child"
    );
    assert!(
        cmdline(master).contains("emperor://app.ini"),
        "{}",
        cmdline(master)
    );

    zmq_push(
        &ep,
        &[parts(&[
            "touch",
            "app.ini",
            &vassal_ini_on(&app, "two", port),
        ])],
    );
    emp.wait_log("reload the uwsgi instance app.ini", T);
    let w2 = wait_answer(port, "two", T)
        .unwrap_or_else(|| panic!("reloaded vassal never answered:\n{}", emp.log()));
    assert_eq!(master_of(w2), master, "graceful reload keeps the master");

    let all = tree(master);
    zmq_push(&ep, &[parts(&["destroy", "app.ini"])]);
    emp.wait_log("removed uwsgi instance app.ini", T);
    assert!(wait_all_dead(&all, T), "vassal processes left: {all:?}");
    assert!(http_get(port, "/").is_none());
    assert!(emp.stop().success());
}

/// Without a config part the name is a config file relative to the
/// emperor's working directory.
#[test]
fn touch_without_config_runs_the_file_relative_to_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    std::fs::create_dir(tmp.path().join("vassals")).unwrap();
    let (ini, port) = vassal_ini(&app, "file");
    let cfg = tmp.path().join("vassals/f.ini");
    std::fs::write(&cfg, ini).unwrap();
    let (mut emp, ep) = emperor(tmp.path(), &uwsgi_bin());
    zmq_push(&ep, &[parts(&["touch", "vassals/f.ini"])]);
    let w = wait_answer(port, "file", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    let cmd = cmdline(master_of(w));
    assert!(cmd.contains(&format!("--ini {}", cfg.display())), "{cmd}");
    assert!(emp.stop().success());
}

/// Two touches within the same second both reload (uWSGI drops the second).
#[test]
fn two_touches_within_one_second_both_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut emp, ep) = emperor(tmp.path(), &test_vassal_bin());
    let rec = tmp.path().join("rec.txt");
    let cfg = "[vassal]\nrecord = rec.txt\n";
    zmq_push(&ep, &[parts(&["touch", "t.ini", cfg])]);
    emp.wait_log("vassal t.ini has been spawned", T);
    let t = Instant::now();
    zmq_push(
        &ep,
        &[
            parts(&["touch", "t.ini", cfg]),
            parts(&["touch", "t.ini", cfg]),
        ],
    );
    emp.wait_log_n("reload the uwsgi instance t.ini", 2, T);
    assert!(
        wait_until(T, || record_lines(&rec)
            .iter()
            .filter(|l| *l == "reload")
            .count()
            == 2),
        "the vassal did not reload twice: {:?}\n{}",
        record_lines(&rec),
        emp.log()
    );
    eprintln!("two touches -> two reloads: {:?}", t.elapsed());
    assert!(emp.stop().success());
}

/// Malformed messages are logged and dropped; a 5-part message (which
/// uWSGI mis-parses, eating the next message) and the messages after the
/// barrage still work.
#[test]
fn malformed_barrage_then_good_messages_still_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut emp, ep) = emperor(tmp.path(), &test_vassal_bin());
    let cfg = |m: &str| format!("[vassal]\nrecord = rec-{m}.txt\nmarker = {m}\n");
    let bad = vec![
        parts(&["touch"]),
        parts(&["spawn", "x.ini", "c"]),
        parts(&["touch", "../x.ini", "c"]),
        parts(&["touch", "x.txt", "c"]),
        parts(&["touch", "x.ini", "c", "root", "0"]),
        parts(&["touch", "missing-file.ini"]),
        parts(&["touch", "x.ini", "c", "", "", "", "seven"]),
        vec![b"touch".to_vec(), b"x.ini".to_vec(), vec![0xff, 0xfe]],
    ];
    zmq_push(&ep, &bad);
    emp.wait_log_n("message dropped", bad.len(), T);
    zmq_push(
        &ep,
        &[
            parts(&["touch", "five.ini", &cfg("five"), "0", "0"]),
            parts(&["touch", "next.ini", &cfg("next")]),
        ],
    );
    for m in ["five", "next"] {
        emp.wait_log(&format!("vassal {m}.ini has been spawned"), T);
        let rec = tmp.path().join(format!("rec-{m}.txt"));
        assert!(
            wait_until(T, || record_lines(&rec)
                .iter()
                .any(|l| l.contains(&format!("marker={m}")))),
            "{m} did not start:\n{}",
            emp.log()
        );
    }
    assert_eq!(emp.count("spawned uwsgi instance"), 2, "{}", emp.log());
    assert!(emp.stop().success());
}

#[test]
fn an_oversized_frame_gets_a_warning_and_the_socket_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut emp, ep) = emperor(tmp.path(), &test_vassal_bin());
    let needle = "ended before any message of it was read";
    // a good message on its own connection first: a connection that
    // delivered its message is not warned about
    zmq_push(
        &ep,
        &[parts(&[
            "touch",
            "first.ini",
            "[vassal]\nrecord = rec-first.txt\n",
        ])],
    );
    emp.wait_log("vassal first.ini has been spawned", T);
    // libzmq closes this connection for its 300 KiB frame and says nothing
    zmq_push(
        &ep,
        &[vec![
            b"touch".to_vec(),
            b"big.ini".to_vec(),
            vec![b'a'; 300 * 1024],
        ]],
    );
    emp.wait_log(needle, T);
    assert!(emp.log().contains("a frame over 256 KiB"), "{}", emp.log());
    zmq_push(
        &ep,
        &[parts(&[
            "touch",
            "after.ini",
            "[vassal]\nrecord = rec-after.txt\n",
        ])],
    );
    emp.wait_log("vassal after.ini has been spawned", T);
    // time for that peer's disconnect to be seen too
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(emp.count(needle), 1, "{}", emp.log());
    assert!(!emp.log().contains("big.ini"), "{}", emp.log());
    assert!(emp.stop().success());
}
