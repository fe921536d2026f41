//! Hot upgrade with real uWSGI vassals (docs/upgrade.md): `imperium ctl
//! upgrade` re-executes the emperor in place; the emperor keeps its pid,
//! every vassal keeps its master pid and keeps serving (0 failed requests),
//! and the new image governs them as the old one did. A binary that is not
//! an imperium is refused, a vassal that dies during the upgrade comes
//! back, an on-demand socket keeps the connections queued on it, and a pg://
//! source causes no reload.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::procs::{alive, tree, wait_all_dead};
use testkit::servers::wait_until;
use testkit::uwsgi::{
    on_demand_ini, uwsgi_bin, vassal_ini, vassal_ini_on, wait_answer, AppTree, Load,
};
use testkit::{ctl, ctl_ok, imperium_bin, Imperium};

const T: Duration = Duration::from_secs(30);

fn start(s: &AppTree, extra: &[&str]) -> Imperium {
    start_on(s, &s.vassals, extra, &[])
}

/// The emperor on `source` (a directory or a URL) with `s`'s control
/// socket, `extra` options and `env`.
fn start_on(s: &AppTree, source: &Path, extra: &[&str], env: &[(&str, &str)]) -> Imperium {
    let mut args = testkit::uwsgi_emperor_args(source, extra);
    args.push("--emperor-control-socket".into());
    args.push(s.ctl_sock().into());
    let emp = Imperium::start_with_env(s.tmp.path(), args, env);
    assert!(wait_until(T, || s.ctl_sock().exists()), "{}", emp.log());
    emp
}

/// Every vassal's pid, by name (`ctl list`).
fn pids(s: &AppTree) -> BTreeMap<String, Option<u64>> {
    let out = ctl_ok(&s.ctl_sock(), &["--json", "list"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["pid"].as_u64()))
        .collect()
}

/// A copy of the imperium binary (another path: the new image shows it).
fn binary_copy(dir: &Path) -> PathBuf {
    let p = dir.join("imperium-new");
    std::fs::copy(imperium_bin(), &p).unwrap();
    p
}

/// A new "binary" that answers its `--check-upgrade` after a second (the
/// window in which the test acts), then is imperium.
fn slow_binary(dir: &Path) -> PathBuf {
    let p = dir.join("imperium-slow");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --check-upgrade ]; then sleep 1; fi\nexec {} \"$@\"\n",
            imperium_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// `ctl upgrade` to [`slow_binary`] from a thread, once the emperor has
/// begun it: the caller acts while the new binary checks the state.
fn upgrade_slowly(s: &AppTree, emp: &Imperium) -> std::thread::JoinHandle<std::process::Output> {
    let slow = slow_binary(s.tmp.path());
    let sock = s.ctl_sock();
    let asked =
        std::thread::spawn(move || ctl(&sock, &["upgrade", "--binary", slow.to_str().unwrap()]));
    emp.wait_log("upgrading in place", T);
    asked
}

/// Connects to the stats and control sockets every 2 ms from a thread
/// until stopped, keeping what was refused.
struct Knocker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u32, Vec<String>)>,
}

impl Knocker {
    fn start(stats: u16, sock: PathBuf) -> Knocker {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut tries, mut refused) = (0u32, Vec::new());
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                tries += 1;
                if let Err(e) = TcpStream::connect(("127.0.0.1", stats)) {
                    refused.push(format!("stats: {e}"));
                }
                if let Err(e) = std::os::unix::net::UnixStream::connect(&sock) {
                    refused.push(format!("control: {e}"));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (tries, refused)
        });
        Knocker { stop, thread }
    }

    /// (rounds, what was refused).
    fn stop(self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

fn upgrade(s: &AppTree, binary: &Path) -> std::process::Output {
    ctl(
        &s.ctl_sock(),
        &["upgrade", "--binary", binary.to_str().unwrap()],
    )
}

#[test]
fn an_upgrade_keeps_twenty_uwsgi_vassals_serving_and_the_new_image_governs_them() {
    uwsgi_bin();
    let s = AppTree::with_app();
    let mut ports = Vec::new();
    for i in 0..20 {
        let (ini, port) = vassal_ini(&s.app, &format!("v{i}"));
        std::fs::write(s.vassals.join(format!("app{i}.ini")), ini).unwrap();
        ports.push(port);
    }
    let stats = testkit::servers::free_port();
    let stats_arg = format!("127.0.0.1:{stats}");
    let mut emp = start(&s, &["--emperor-stats", &stats_arg]);
    let names: Vec<String> = (0..20).map(|i| format!("app{i}.ini")).collect();
    let mut wait = vec!["wait", "--timeout", "60"];
    wait.extend(names.iter().map(String::as_str));
    let out = ctl(&s.ctl_sock(), &wait);
    assert!(
        out.status.success(),
        "not every vassal serves: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        emp.log()
    );
    for (i, p) in ports.iter().enumerate() {
        wait_answer(*p, &format!("v{i}"), T).expect("every vassal answers");
    }
    let before = pids(&s);
    assert!(before.values().all(Option::is_some), "{before:?}");
    let spawns = emp.count("has been spawned");
    let new = binary_copy(s.tmp.path());

    // clients on every vassal throughout, and connections to the stats
    // and control sockets, none of which may be refused
    let loads: Vec<Load> = ports.iter().map(|p| Load::start(*p)).collect();
    let knocker = Knocker::start(stats, s.ctl_sock());
    std::thread::sleep(Duration::from_millis(300));
    let out = upgrade(&s, &new);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && said.contains("upgraded in place") && said.contains("20 vassals"),
        "{said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        emp.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    for (i, l) in loads.into_iter().enumerate() {
        let (answered, failed) = l.stop();
        assert_eq!(
            failed,
            0,
            "app{i}.ini: {failed} of {} failed",
            answered + failed
        );
        assert!(answered > 10, "app{i}.ini: only {answered} answered");
    }
    let (tries, refused) = knocker.stop();
    assert!(tries > 20, "only {tries} rounds of connections");
    assert!(
        refused.is_empty(),
        "refused during the upgrade: {refused:?}"
    );
    assert!(alive(emp.pid()));
    assert_eq!(exe(emp.pid()), new, "the emperor runs the new binary");
    assert_eq!(pids(&s), before, "every vassal kept its process");
    assert_eq!(emp.count("has been spawned"), spawns, "{}", emp.log());
    assert_eq!(emp.count("reload the uwsgi instance"), 0, "{}", emp.log());
    emp.wait_log("adopted 20 vassals and 20 processes", T);

    // the new image governs them: a change reloads, a removal stops, a new
    // file starts, a killed vassal is respawned
    std::fs::write(
        s.vassals.join("app0.ini"),
        vassal_ini_on(&s.app, "v0b", ports[0]),
    )
    .unwrap();
    wait_answer(ports[0], "v0b", T).expect("app0.ini reloaded with its change");
    assert_eq!(
        pids(&s)["app0.ini"],
        before["app0.ini"],
        "reloaded, not restarted"
    );
    let gone = before["app1.ini"].unwrap() as u32;
    std::fs::remove_file(s.vassals.join("app1.ini")).unwrap();
    assert!(wait_all_dead(&[gone], T), "app1.ini stopped");
    let (ini, port) = vassal_ini(&s.app, "fresh");
    std::fs::write(s.vassals.join("fresh.ini"), ini).unwrap();
    wait_answer(port, "fresh", T).expect("a new file starts");
    let killed = before["app2.ini"].unwrap() as u32;
    kill(Pid::from_raw(killed as i32), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(T, || pids(&s)["app2.ini"]
            .is_some_and(|p| p as u32 != killed)),
        "{}",
        emp.log()
    );
    wait_answer(ports[2], "v2", T).expect("app2.ini respawned");

    // and SIGTERM leaves nothing behind
    let all: Vec<u32> = tree(emp.pid())
        .into_iter()
        .filter(|p| *p != emp.pid())
        .collect();
    assert!(all.len() >= 40, "{all:?}");
    assert!(emp.stop().success());
    assert!(wait_all_dead(&all, T), "processes outlived the emperor");
}

#[test]
fn a_binary_that_is_not_imperium_is_refused_and_nothing_changes() {
    uwsgi_bin();
    let s = AppTree::with_app();
    let (ini, port) = vassal_ini(&s.app, "v1");
    std::fs::write(s.vassals.join("app.ini"), ini).unwrap();
    let emp = start(&s, &[]);
    ctl_ok(&s.ctl_sock(), &["wait", "app.ini", "--timeout", "30"]);
    let before = pids(&s);
    for (binary, why) in [
        ("/bin/false", "--check-upgrade failed"),
        ("/bin/true", "is not an imperium"),
        ("/nonexistent/imperium", "cannot run"),
    ] {
        let out = upgrade(&s, Path::new(binary));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary}: {err}");
        assert!(
            err.contains("upgrade refused") && err.contains(why),
            "{binary}: {err}"
        );
    }
    assert_eq!(exe(emp.pid()), imperium_bin().canonicalize().unwrap());
    assert_eq!(pids(&s), before);
    assert_eq!(emp.count("upgrade refused after"), 3, "{}", emp.log());
    // the emperor still governs: a change reloads
    std::fs::write(s.vassals.join("app.ini"), vassal_ini_on(&s.app, "v2", port)).unwrap();
    wait_answer(port, "v2", T).expect("reloaded after the refusals");
}

#[test]
fn a_sighup_sent_during_a_refused_upgrade_is_acted_on() {
    uwsgi_bin();
    let s = AppTree::with_app();
    let (ini, _) = vassal_ini(&s.app, "v1");
    std::fs::write(s.vassals.join("app.ini"), ini).unwrap();
    let emp = start(&s, &[]);
    ctl_ok(&s.ctl_sock(), &["wait", "app.ini", "--timeout", "30"]);
    // a "binary" whose check takes a second, then fails
    let bad = s.tmp.path().join("imperium-bad");
    std::fs::write(&bad, "#!/bin/sh\nsleep 1\necho no\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = s.ctl_sock();
    let asked =
        std::thread::spawn(move || ctl(&sock, &["upgrade", "--binary", bad.to_str().unwrap()]));
    emp.wait_log("upgrading in place", T);
    emp.signal(Signal::SIGHUP);
    let out = asked.join().unwrap();
    assert!(!out.status.success(), "{}", emp.log());
    emp.wait_log("reload the uwsgi instance app.ini", T);
    assert!(
        emp.log().find("upgrade refused after").unwrap()
            < emp.log().find("reload the uwsgi instance app.ini").unwrap(),
        "{}",
        emp.log()
    );
}

#[test]
fn a_vassal_killed_and_a_sighup_sent_during_the_upgrade_are_acted_on_by_the_new_image() {
    uwsgi_bin();
    let s = AppTree::with_app();
    let (a, pa) = vassal_ini(&s.app, "a");
    let (b, pb) = vassal_ini(&s.app, "b");
    std::fs::write(s.vassals.join("a.ini"), a).unwrap();
    std::fs::write(s.vassals.join("b.ini"), b).unwrap();
    let emp = start(&s, &[]);
    ctl_ok(
        &s.ctl_sock(),
        &["wait", "a.ini", "b.ini", "--timeout", "30"],
    );
    let before = pids(&s);
    let victim = before["a.ini"].unwrap() as u32;
    // while the new binary checks the state (the old image has written it)
    let asked = upgrade_slowly(&s, &emp);
    std::thread::sleep(Duration::from_millis(300));
    let victims = tree(victim);
    for p in &victims {
        kill(Pid::from_raw(*p as i32), Signal::SIGKILL).unwrap();
    }
    // a signal meanwhile waits for the new image, which acts on it
    emp.signal(Signal::SIGHUP);
    let out = asked.join().unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        emp.log()
    );
    assert!(wait_all_dead(&victims, T));
    wait_answer(pa, "a", T).unwrap_or_else(|| panic!("a.ini came back:\n{}", emp.log()));
    let after = pids(&s);
    assert_ne!(after["a.ini"], before["a.ini"]);
    assert_eq!(after["b.ini"], before["b.ini"], "b.ini kept its process");
    wait_answer(pb, "b", T).expect("b.ini serves");
    // the SIGHUP sent during the upgrade reloaded b.ini in the new image
    emp.wait_log("reload the uwsgi instance b.ini", T);
    assert!(
        emp.log().find("upgraded in place").unwrap()
            < emp.log().find("reload the uwsgi instance b.ini").unwrap(),
        "{}",
        emp.log()
    );
    assert!(
        emp.log()
            .contains(&format!("vassal a.ini (pid: {victim}) died unexpectedly")),
        "{}",
        emp.log()
    );
}

#[test]
fn an_on_demand_socket_keeps_a_connection_queued_during_the_upgrade() {
    use std::io::{Read, Write};
    uwsgi_bin();
    let s = AppTree::with_app();
    let port = testkit::servers::free_port();
    std::fs::write(
        s.vassals.join("od.ini.socket"),
        format!("127.0.0.1:{port}\n"),
    )
    .unwrap();
    std::fs::write(s.vassals.join("od.ini"), on_demand_ini(&s.app, "od", 3600)).unwrap();
    let emp = start(&s, &["--emperor-on-demand-extension", ".socket"]);
    emp.wait_log("od.ini -> \"on demand\" instance detected", T);
    let asked = upgrade_slowly(&s, &emp);
    // connect while the old image is busy with the upgrade: the connection
    // waits in the backlog of the socket the new image inherits
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    write!(c, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let out = asked.join().unwrap();
    assert!(out.status.success(), "{}", emp.log());
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.contains("marker=od"), "{resp:?}\n{}", emp.log());
    assert_eq!(
        emp.count("spawned uwsgi instance od.ini"),
        1,
        "{}",
        emp.log()
    );
    // one socket all along: never bound again
    assert_eq!(emp.count("instance detected, waiting for connections"), 1);
}

#[cfg(feature = "pg")]
#[test]
fn a_pg_source_is_adopted_without_a_reload_and_its_changes_still_apply() {
    use testkit::servers::pg::PgServer;
    uwsgi_bin();
    let s = AppTree::with_app();
    let pg = PgServer::start();
    pg.psql("CREATE TABLE vassals (name text PRIMARY KEY, config text, ts timestamptz NOT NULL DEFAULT now());");
    pg.psql(include_str!("../../../docs/monitors/pg-notify.sql"));
    let mut ports = Vec::new();
    for i in 0..3 {
        let (ini, port) = vassal_ini(&s.app, &format!("p{i}"));
        pg.psql(&format!(
            "INSERT INTO vassals (name, config) VALUES ('p{i}.ini', '{}');",
            ini.replace('\'', "''")
        ));
        ports.push(port);
    }
    let url = format!("pg://{}", pg.conninfo());
    let emp = start_on(&s, Path::new(&url), &["--emperor-freq", "3600"], &[]);
    ctl_ok(
        &s.ctl_sock(),
        &["wait", "p0.ini", "p1.ini", "p2.ini", "--timeout", "60"],
    );
    let before = pids(&s);
    let loads: Vec<Load> = ports.iter().map(|p| Load::start(*p)).collect();
    let out = upgrade(&s, &binary_copy(s.tmp.path()));
    assert!(out.status.success(), "{}", emp.log());
    // the new image's monitor has read the table again
    emp.wait_log_n("is connected", 2, T);
    std::thread::sleep(Duration::from_millis(500));
    for l in loads {
        let (answered, failed) = l.stop();
        assert_eq!(failed, 0, "{failed} of {} failed", answered + failed);
    }
    assert_eq!(pids(&s), before);
    assert_eq!(emp.count("reload the uwsgi instance"), 0, "{}", emp.log());
    // a change in the table reaches the vassal through the new image
    let ini = vassal_ini_on(&s.app, "p0b", ports[0]);
    pg.psql(&format!(
        "UPDATE vassals SET config = '{}', ts = now() WHERE name = 'p0.ini';",
        ini.replace('\'', "''")
    ));
    wait_answer(ports[0], "p0b", T).unwrap_or_else(|| panic!("{}", emp.log()));
}

/// `imperium --check-upgrade STATE` on a state file; (exit code, output).
fn check_upgrade(state: &str) -> (i32, String) {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(state.as_bytes()).unwrap();
    let out = std::process::Command::new(imperium_bin())
        .args(["--check-upgrade".as_ref(), f.path().as_os_str()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_upgrade_adopts_the_first_release_state_and_refuses_what_it_cannot() {
    const V1: &str = include_str!("fixtures/upgrade-state-v1.json");
    let (code, out) = check_upgrade(V1);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("imperium-upgrade-ok") && out.contains("4 vassals, 2 processes"),
        "{out}"
    );
    // an unknown newer version
    let newer = V1.replacen("\"version\": 1", "\"version\": 2", 1);
    let (code, out) = check_upgrade(&newer);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("state version 2") && out.contains("is not one this imperium reads"),
        "{out}"
    );
    // not a state at all
    let (code, out) = check_upgrade("GIF89a");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not an imperium upgrade state"), "{out}");
    // the command line now names other sources
    let moved = V1.replacen("\"--emperor\", \"/tmp\"", "\"--emperor\", \"/var\"", 1);
    let (code, out) = check_upgrade(&moved);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("config changed since it started")
            && out.contains("sources added: /var; sources removed: /tmp")
            && out.contains("--reread-config"),
        "{out}"
    );
    // which --reread-config applies
    let reread = moved.replacen(
        "\"version\": 1,",
        "\"version\": 1,\n  \"reread_config\": true,",
        1,
    );
    let (code, out) = check_upgrade(&reread);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("--reread-config: sources added: /var"),
        "{out}"
    );
    // a table that cannot go back whole
    let dup = V1.replacen("\"instance\": 8", "\"instance\": 7", 1);
    let (code, out) = check_upgrade(&dup);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("instance 7 is named twice"), "{out}");
    // a descriptor named twice
    let twice = V1.replacen("\"fd\": 16", "\"fd\": 14", 1);
    let (code, out) = check_upgrade(&twice);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("descriptor 14 is named twice"), "{out}");
}

#[test]
fn vassal_output_and_systemd_notify_carry_on_across_the_upgrade() {
    uwsgi_bin();
    let s = AppTree::with_app();
    let (ini, port) = vassal_ini(&s.app, "v1");
    std::fs::write(s.vassals.join("app.ini"), ini).unwrap();
    let logs = s.tmp.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let nsock = s.tmp.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&nsock).unwrap();
    rx.set_read_timeout(Some(T)).unwrap();
    let next = |want: &str| -> String {
        let mut buf = [0u8; 512];
        loop {
            let n = rx
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {want}: {e}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.starts_with(want) {
                return msg;
            }
        }
    };
    let dir_arg = format!("dir:{}", logs.display());
    let emp = start_on(
        &s,
        &s.vassals,
        &["--vassal-logs", &dir_arg],
        &[("NOTIFY_SOCKET", nsock.to_str().unwrap())],
    );
    next("READY=1");
    ctl_ok(&s.ctl_sock(), &["wait", "app.ini", "--timeout", "30"]);
    wait_answer(port, "v1", T).unwrap();
    let out = upgrade(&s, &binary_copy(s.tmp.path()));
    assert!(out.status.success(), "{}", emp.log());
    let reloading = next("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    next("READY=1");
    // requests after the upgrade are logged through the same pipe, into
    // the same file, and `ctl logs` shows them
    for _ in 0..3 {
        wait_answer(port, "v1", T).unwrap();
    }
    let file = logs.join("app.ini.log");
    assert!(
        wait_until(T, || std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("GET /"))
            .count()
            >= 4),
        "{}",
        std::fs::read_to_string(&file).unwrap_or_default()
    );
    let tail = ctl_ok(&s.ctl_sock(), &["logs", "app.ini", "-n", "5"]);
    assert!(tail.contains("GET /"), "{tail}");
}

#[test]
fn reread_config_adds_and_removes_sources_and_keeps_what_needs_a_restart() {
    use std::io::Read;
    uwsgi_bin();
    let s = AppTree::with_app();
    let more = s.tmp.path().join("more");
    std::fs::create_dir(&more).unwrap();
    let (a, pa) = vassal_ini(&s.app, "a");
    std::fs::write(s.vassals.join("a.ini"), a).unwrap();
    let (b, pb) = vassal_ini(&s.app, "b");
    std::fs::write(more.join("b.ini"), b).unwrap();
    let (stats, stats2) = (testkit::servers::free_port(), testkit::servers::free_port());
    let ini = s.tmp.path().join("emperor.ini");
    let write_ini = |sources: &[&Path], stats: u16, throttle: u32| {
        let mut text = format!(
            "[uwsgi]\nbinary-path = {}\nreload-mercy = 10\nemperor-control-socket = {}\nemperor-stats = 127.0.0.1:{stats}\nemperor-throttle = {throttle}\n",
            uwsgi_bin().display(),
            s.ctl_sock().display()
        );
        for src in sources {
            text.push_str(&format!("emperor = {}\n", src.display()));
        }
        std::fs::write(&ini, text).unwrap();
    };
    write_ini(&[&s.vassals], stats, 1000);
    let emp = Imperium::start(s.tmp.path(), ["--ini".as_ref(), ini.as_os_str()]);
    assert!(wait_until(T, || s.ctl_sock().exists()), "{}", emp.log());
    ctl_ok(&s.ctl_sock(), &["wait", "a.ini", "--timeout", "30"]);
    let before = pids(&s);
    let stats_answers = |port: u16| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
        c.set_read_timeout(Some(T)).ok()?;
        let mut text = String::new();
        c.read_to_string(&mut text).ok()?;
        Some(text)
    };

    // a second source, another throttle, the stats elsewhere
    write_ini(&[&s.vassals, &more], stats2, 2000);
    let out = upgrade(&s, &binary_copy(s.tmp.path()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("config changed since it started")
            && err.contains("--reread-config"),
        "{err}"
    );
    assert_eq!(pids(&s), before);
    let out = ctl(&s.ctl_sock(), &["upgrade", "--reread-config"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}{}", emp.log());
    assert!(
        said.contains(&format!("sources added: {}", more.display()))
            && said.contains("applied live: --emperor-throttle")
            && said.contains("need a restart, kept as they are: --emperor-stats"),
        "{said}"
    );
    wait_answer(pb, "b", T).unwrap_or_else(|| panic!("the new source's vassal:\n{}", emp.log()));
    assert_eq!(pids(&s)["a.ini"], before["a.ini"], "a.ini kept its process");
    // the stats stay where they were: a restart moves them
    assert!(stats_answers(stats).is_some_and(|t| t.contains("\"vassals\"")));
    assert!(TcpStream::connect(("127.0.0.1", stats2)).is_err());

    // the first source goes: its vassal stops, the other stays
    let a_pid = before["a.ini"].unwrap() as u32;
    let b_pid = pids(&s)["b.ini"];
    write_ini(&[&more], stats2, 2000);
    let out = ctl(&s.ctl_sock(), &["upgrade", "--reread-config"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && said.contains(&format!("sources removed: {}", s.vassals.display())),
        "{said}{}",
        emp.log()
    );
    assert!(wait_all_dead(&[a_pid], T), "a.ini stopped");
    assert!(wait_until(T, || !pids(&s).contains_key("a.ini")));
    assert_eq!(pids(&s)["b.ini"], b_pid);
    assert!(http_refused(pa));
    // only the kept stats address differs now: a plain upgrade goes ahead
    let out = upgrade(&s, &binary_copy(s.tmp.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pids(&s)["b.ini"], b_pid);
}

fn http_refused(port: u16) -> bool {
    wait_until(T, || TcpStream::connect(("127.0.0.1", port)).is_err())
}

#[cfg(feature = "zmq")]
#[test]
fn a_zmq_source_is_adopted_and_its_socket_bound_again_by_the_new_image() {
    use testkit::zmq_push::{parts, zmq_push};
    uwsgi_bin();
    let s = AppTree::with_app();
    let ep = format!("tcp://127.0.0.1:{}", testkit::servers::free_port());
    let url = format!("zmq://{ep}");
    let emp = start_on(&s, Path::new(&url), &[], &[]);
    emp.wait_log(" is connected", T);
    let (ini, port) = vassal_ini(&s.app, "z1");
    zmq_push(&ep, &[parts(&["touch", "z1.ini", &ini])]);
    wait_answer(port, "z1", T).unwrap_or_else(|| panic!("{}", emp.log()));
    let before = pids(&s);
    // the check must not bind the socket the running emperor holds
    let out = upgrade(&s, &binary_copy(s.tmp.path()));
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        emp.log()
    );
    assert_eq!(pids(&s), before, "z1.ini kept its process and its source");
    emp.wait_log_n(" is connected", 2, T);
    let (ini, port2) = vassal_ini(&s.app, "z2");
    zmq_push(&ep, &[parts(&["touch", "z2.ini", &ini])]);
    wait_answer(port2, "z2", T).unwrap_or_else(|| panic!("{}", emp.log()));
    wait_answer(port, "z1", T).expect("z1.ini still serves");
}

#[cfg(feature = "amqp")]
#[test]
fn an_amqp_message_published_during_the_upgrade_reaches_the_new_image() {
    use testkit::amqp_publish::amqp_publish;
    use testkit::servers::rabbitmq::RabbitMq;
    uwsgi_bin();
    let s = AppTree::with_app();
    let mq = RabbitMq::shared();
    let url = mq.add_vhost("upgrade");
    let mut emp = start_on(&s, Path::new(&url), &[], &[]);
    emp.wait_log(" is connected", T);
    let (ini, port) = vassal_ini(&s.app, "q1");
    amqp_publish(&url, &[("q1.ini", ini.as_bytes())]);
    wait_answer(port, "q1", T).unwrap_or_else(|| panic!("{}", emp.log()));
    let before = pids(&s);
    let asked = upgrade_slowly(&s, &emp);
    // the old image is busy with the upgrade and never reads this: it waits
    // in the emperor's queue for the new image
    let (ini2, port2) = vassal_ini(&s.app, "q2");
    amqp_publish(&url, &[("q2.ini", ini2.as_bytes())]);
    let out = asked.join().unwrap();
    assert!(out.status.success(), "{}", emp.log());
    wait_answer(port2, "q2", T).unwrap_or_else(|| panic!("q2.ini never started:\n{}", emp.log()));
    assert_eq!(pids(&s)["q1.ini"], before["q1.ini"]);
    assert_eq!(
        emp.count("spawned uwsgi instance q2.ini"),
        1,
        "{}",
        emp.log()
    );
    // at shutdown the queue goes with the emperor
    assert!(emp.stop().success());
    let queues = mq.ctl(&["list_queues", "-p", "upgrade", "name"]);
    assert!(!queues.contains("imperium.emperor."), "{queues}");
}
