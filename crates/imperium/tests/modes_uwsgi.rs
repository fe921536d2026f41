//! Tyrant mode, on-demand vassals and broodlord with real uWSGI vassals
//! (docs/tyrant.md, docs/on-demand.md, docs/broodlord.md).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::procs::{alive, ppid, tree, wait_all_dead};
use testkit::servers::{free_port, wait_until};
use testkit::users::{
    assert_runs_as, own, proc_status_field, proc_uids, readable_tempdir, test_user, write_owned,
};
use testkit::uwsgi::{
    master_of, on_demand_ini, parse_answer, uwsgi_bin, vassal_ini, wait_answer, write_app,
};
use testkit::Imperium;

const T: Duration = Duration::from_secs(25);

/// A temp dir the vassal users can read, its vassals/ dir and the app.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = readable_tempdir();
    let vassals = tmp.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    std::fs::set_permissions(&vassals, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = write_app(tmp.path());
    (tmp, vassals, app)
}

fn emperor(dir: &Path, vassals: &Path, extra: &[&str]) -> Imperium {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--emperor".into(),
        vassals.as_os_str().into(),
        "--binary-path".into(),
        uwsgi_bin().into_os_string(),
        "--reload-mercy".into(),
        "10".into(),
        "--emperor-freq".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|a| a.into()));
    Imperium::start(dir, args)
}

// ----- tyrant mode -----------------------------------------------------------

#[test]
fn tyrant_vassals_run_as_their_owners() {
    let u1 = test_user("imperium-t1");
    let u2 = test_user("imperium-t2");
    let (tmp, vassals, app) = setup();
    let (ini1, p1) = vassal_ini(&app, "one");
    let (ini2, p2) = vassal_ini(&app, "two");
    write_owned(&vassals.join("one.ini"), &ini1, u1);
    write_owned(&vassals.join("two.ini"), &ini2, u2);
    let emp = emperor(tmp.path(), &vassals, &["--emperor-tyrant"]);
    for (port, marker, user) in [(p1, "one", u1), (p2, "two", u2)] {
        let w = wait_answer(port, marker, T)
            .unwrap_or_else(|| panic!("{marker} never answered:\n{}", emp.log()));
        let master = master_of(w);
        assert_eq!(ppid(master), Some(emp.pid()));
        // every process of the vassal runs as the owner, with no way back
        for pid in tree(master) {
            assert_runs_as(pid, user);
            assert_eq!(proc_status_field(pid, "NoNewPrivs:").as_deref(), Some("1"));
            assert_eq!(
                proc_status_field(pid, "Groups:").as_deref(),
                Some(""),
                "no supplementary groups without --emperor-tyrant-initgroups"
            );
        }
    }
}

#[test]
fn tyrant_refuses_root_once_and_restarts_on_owner_change() {
    let u1 = test_user("imperium-t1");
    let u2 = test_user("imperium-t2");
    let (tmp, vassals, app) = setup();
    let (ini, port) = vassal_ini(&app, "r");
    let cfg = vassals.join("r.ini");
    std::fs::write(&cfg, ini).unwrap(); // owned by root
    let emp = emperor(tmp.path(), &vassals, &["--emperor-tyrant"]);
    emp.wait_log(
        "[emperor-tyrant] invalid permissions for vassal r.ini: it is owned by uid 0 gid 0 and tyrant mode never runs a vassal as root",
        T,
    );
    assert!(emp.log().contains("chown USER:GROUP FILE"), "{}", emp.log());
    // several scans later: still one message, nothing running
    emp.wait_log_n("[emperor] monitor", 1, T);
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(emp.count("invalid permissions for vassal r.ini"), 1);
    assert_eq!(emp.count("spawned uwsgi instance r.ini"), 0);

    // chown to an unprivileged user: it starts as that user
    own(&cfg, u1);
    let w = wait_answer(port, "r", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    let m1 = master_of(w);
    assert_runs_as(m1, u1);
    assert_runs_as(w, u1);

    // chown to another user while running: stopped and started as the new owner
    let old = tree(m1);
    own(&cfg, u2);
    emp.wait_log("permissions of file r.ini changed", T);
    assert!(wait_all_dead(&old, T), "old processes left: {old:?}");
    let ok = wait_until(T, || {
        testkit::uwsgi::http_get(port, "/")
            .and_then(|b| parse_answer(&b))
            .is_some_and(|(p, _)| proc_uids(p) == Some([u2.0; 4]))
    });
    assert!(ok, "never answered as the new owner:\n{}", emp.log());
    let w2 = wait_answer(port, "r", T).unwrap();
    assert_ne!(master_of(w2), m1);
    assert_runs_as(master_of(w2), u2);
    // the minimum uid is configurable: a higher minimum refuses the same file
    drop(emp);
    let emp = emperor(
        tmp.path(),
        &vassals,
        &["--emperor-tyrant", "--emperor-tyrant-min-uid", "4000000000"],
    );
    emp.wait_log("the lowest allowed uid/gid is 4000000000/1", T);
}

#[test]
fn a_tyrant_vassal_cannot_become_root_or_another_user() {
    let u1 = test_user("imperium-t1");
    test_user("imperium-t2");
    let (tmp, vassals, app) = setup();
    // asks for another user
    let (ini, p_other) = vassal_ini(&app, "other");
    write_owned(
        &vassals.join("other.ini"),
        &format!("{ini}uid = imperium-t2\ngid = imperium-t2\n"),
        u1,
    );
    // asks for root
    let (ini, p_root) = vassal_ini(&app, "root");
    write_owned(
        &vassals.join("root.ini"),
        &format!("{ini}uid = root\ngid = root\n"),
        u1,
    );
    // runs a setuid-root program at start-up: no_new_privs keeps it unprivileged
    let suid = tmp.path().join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // the check can fail: without no_new_privs this program runs as root
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &u1.0.to_string(),
            "--regid",
            &u1.1.to_string(),
            "--clear-groups",
        ])
        .arg(&suid)
        .arg("-u")
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "setuid works here"
    );
    let marker = tmp.path().join("euid");
    let (ini, p_su) = vassal_ini(&app, "su");
    write_owned(
        &vassals.join("su.ini"),
        &format!(
            "{ini}exec-pre-app = {} -u > {}\n",
            suid.display(),
            marker.display()
        ),
        u1,
    );
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let emp = emperor(tmp.path(), &vassals, &["--emperor-tyrant"]);
    let w =
        wait_answer(p_su, "su", T).unwrap_or_else(|| panic!("su never answered:\n{}", emp.log()));
    assert_runs_as(master_of(w), u1);
    let got = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(
        got.trim(),
        u1.0.to_string(),
        "the setuid-root program ran as {got:?}:\n{}",
        emp.log()
    );
    // the vassals that asked for root or for another user still run as
    // their file's owner (uWSGI 2.0.21 cannot switch as non-root and goes on)
    for (p, m) in [(p_other, "other"), (p_root, "root")] {
        let w = wait_answer(p, m, T).unwrap_or_else(|| panic!("{m}:\n{}", emp.log()));
        for pid in tree(master_of(w)) {
            assert_runs_as(pid, u1);
        }
    }
    // and no child of imperium runs as root or as the other user
    let kids = testkit::procs::children(emp.pid());
    assert_eq!(kids.len(), 3, "{kids:?}");
    for pid in kids.iter().flat_map(|k| tree(*k)) {
        assert_runs_as(pid, u1);
    }
}

// ----- on demand ---------------------------------------------------------------

fn get(addr: SocketAddr) -> Option<(u32, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    parse_answer(resp.split_once("\r\n\r\n")?.1)
}

fn vassal_pids(emp: &Imperium) -> Vec<u32> {
    testkit::procs::children(emp.pid())
}

fn on_demand_lifecycle(addr_text: &str, addr: SocketAddr) {
    let (tmp, vassals, app) = setup();
    std::fs::write(vassals.join("od.ini.socket"), format!("{addr_text}\n")).unwrap();
    std::fs::write(vassals.join("od.ini"), on_demand_ini(&app, "od", 2)).unwrap();
    let emp = emperor(
        tmp.path(),
        &vassals,
        &["--emperor-on-demand-extension", ".socket"],
    );
    emp.wait_log(
        &format!("od.ini -> \"on demand\" instance detected, waiting for connections on socket \"{addr_text}\""),
        T,
    );
    // nothing runs before the first client
    std::thread::sleep(Duration::from_millis(1500));
    assert!(vassal_pids(&emp).is_empty(), "{}", emp.log());
    assert_eq!(emp.count("spawned uwsgi instance od.ini"), 0);

    // the first client is served (it waited in the backlog), and so are
    // clients that connect together with it
    let clients: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get(addr)))
        .collect();
    let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().is_some_and(|(_, m)| m == "od")),
        "{answers:?}\n{}",
        emp.log()
    );
    let w1 = answers[0].as_ref().unwrap().0;
    let m1 = master_of(w1);
    assert_eq!(ppid(m1), Some(emp.pid()));
    emp.wait_log("spawned uwsgi instance od.ini", T);

    // idle: it stops and goes back to waiting on the same socket
    emp.wait_log("od.ini back to \"on demand\" mode", T);
    assert!(wait_all_dead(&[m1, w1], T));
    assert!(vassal_pids(&emp).is_empty());

    // the next client starts it again
    let (w2, m) = get(addr).unwrap_or_else(|| panic!("no answer after idle:\n{}", emp.log()));
    assert_eq!(m, "od");
    let m2 = master_of(w2);
    assert_ne!(m2, m1);
    assert_eq!(emp.count("spawned uwsgi instance od.ini"), 2);

    // a crash keeps the socket: a client that connects right after the
    // crash is queued and served by the next start
    let crashed = tree(m2);
    for p in &crashed {
        kill(Pid::from_raw(*p as i32), Signal::SIGKILL).unwrap();
    }
    assert!(wait_all_dead(&crashed, T));
    let (w3, _) = get(addr).unwrap_or_else(|| panic!("no answer after a crash:\n{}", emp.log()));
    assert!(!crashed.contains(&w3));
    assert_eq!(ppid(master_of(w3)), Some(emp.pid()));
    assert!(emp.log().contains("died unexpectedly"), "{}", emp.log());
    assert_eq!(emp.count("spawned uwsgi instance od.ini"), 3);
    // one socket all along: never re-bound
    assert_eq!(emp.count("instance detected, waiting for connections"), 1);
}

#[test]
fn on_demand_tcp_ipv4_waits_serves_idles_and_survives_a_crash() {
    let port = free_port();
    on_demand_lifecycle(
        &format!("127.0.0.1:{port}"),
        SocketAddr::from(([127, 0, 0, 1], port)),
    );
}

#[test]
fn on_demand_tcp_ipv6() {
    let port = std::net::TcpListener::bind("[::1]:0")
        .expect("IPv6 loopback ::1 is needed for this test")
        .local_addr()
        .unwrap()
        .port();
    let (tmp, vassals, app) = setup();
    std::fs::write(vassals.join("v6.ini.socket"), format!("[::1]:{port}")).unwrap();
    std::fs::write(vassals.join("v6.ini"), on_demand_ini(&app, "v6", 30)).unwrap();
    let emp = emperor(
        tmp.path(),
        &vassals,
        &["--emperor-on-demand-extension", ".socket"],
    );
    emp.wait_log("v6.ini -> \"on demand\" instance detected", T);
    assert!(vassal_pids(&emp).is_empty());
    let addr: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let (w, m) = get(addr).unwrap_or_else(|| panic!("no answer:\n{}", emp.log()));
    assert_eq!(m, "v6");
    assert_eq!(ppid(master_of(w)), Some(emp.pid()));
}

#[test]
fn on_demand_unix_socket_from_the_directory_option() {
    let (tmp, vassals, app) = setup();
    let sockdir = tmp.path().join("sockets");
    std::fs::create_dir(&sockdir).unwrap();
    std::fs::write(vassals.join("ux.ini"), on_demand_ini(&app, "ux", 30)).unwrap();
    let emp = emperor(
        tmp.path(),
        &vassals,
        &[
            "--emperor-on-demand-directory",
            sockdir.to_str().unwrap(),
            "--emperor-on-demand-socket-mode",
            "660",
        ],
    );
    let path = sockdir.join("ux.socket");
    emp.wait_log("ux.ini -> \"on demand\" instance detected", T);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert!(vassal_pids(&emp).is_empty());
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(s, "GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (w, m) = parse_answer(resp.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(m, "ux");
    assert!(alive(w));
    // removing the vassal closes and removes the socket
    std::fs::remove_file(vassals.join("ux.ini")).unwrap();
    emp.wait_log("removed uwsgi instance ux.ini", T);
    assert!(wait_until(T, || !path.exists()));
}

// ----- broodlord ---------------------------------------------------------------

#[test]
fn broodlord_spawns_zergs_under_load_and_retires_them_on_idle() {
    let (tmp, vassals, _) = setup();
    let app = testkit::uwsgi::write_slow_app(tmp.path());
    let port = free_port();
    let zerg_sock = tmp.path().join("zerg.sock");
    let ini = format!(
        "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 1\nhttp-socket = 127.0.0.1:{port}\nwsgi-file = {app}\nenv = MARKER=base\nzerg-server = {zs}\nvassal-sos = 1\ndie-on-term = true\nreload-mercy = 5\nworker-reload-mercy = 5\n\n[zerg]\nplugins = python3\nmaster = true\nprocesses = 1\nzerg = {zs}\nprotocol = http\nwsgi-file = {app}\nenv = MARKER=zerg\nidle = 3\ndie-on-idle = true\ndie-on-term = true\n",
        app = app.display(),
        zs = zerg_sock.display()
    );
    std::fs::write(vassals.join("brood.ini"), ini).unwrap();
    let emp = emperor(tmp.path(), &vassals, &["--emperor-broodlord", "2"]);
    wait_answer(port, "base", T).unwrap_or_else(|| panic!("no answer:\n{}", emp.log()));

    // load: many concurrent slow requests keep the only worker busy
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some((_, m)) = get(SocketAddr::from(([127, 0, 0, 1], port))) {
                        seen.lock().unwrap().push(m);
                    }
                }
            })
        })
        .collect();
    emp.wait_log("sent SOS: adding zerg brood.ini:zerg:1", T);
    emp.wait_log("spawned uwsgi instance brood.ini:zerg:1", T);
    // zergs serve part of the load
    let served = wait_until(T, || seen.lock().unwrap().iter().any(|m| m == "zerg"));
    assert!(served, "no request served by a zerg:\n{}", emp.log());
    emp.wait_log("adding zerg brood.ini:zerg:2", T);
    // never more than --emperor-broodlord zergs
    emp.wait_log("broodlord limit is reached (2/2 zergs)", T);
    assert_eq!(emp.count("adding zerg brood.ini:zerg:3"), 0);
    let zerg_masters = testkit::procs::pids_with_cmdline("brood.ini:zerg");
    assert!(!zerg_masters.is_empty());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    // idle zergs send 22: stopped and removed; the base keeps serving
    emp.wait_log("removed uwsgi instance brood.ini:zerg:1", T);
    emp.wait_log("removed uwsgi instance brood.ini:zerg:2", T);
    let left: Vec<u32> = zerg_masters.iter().flat_map(|p| tree(*p)).collect();
    assert!(wait_all_dead(&zerg_masters, T), "zergs left: {left:?}");
    assert!(wait_answer(port, "base", T).is_some());
    assert_eq!(emp.count("removed uwsgi instance brood.ini\n"), 0);
    assert!(!emp.log().contains("removed uwsgi instance brood.ini "));
}
