//! Operating imperium: the stats server, Prometheus metrics, the control
//! socket and `imperium ctl`, uWSGI's datagram command socket, systemd
//! notify, the pidfile, the process name and JSON logs. Real uWSGI vassals
//! where the behaviour of a real vassal matters, the test vassal elsewhere.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use testkit::procs::{alive, ppid};
use testkit::servers::{free_port, wait_until};
use testkit::uwsgi::{uwsgi_bin, vassal_ini, vassal_ini_on, wait_answer, write_app};
use testkit::{ctl, ctl_ok, imperium_bin, record_lines, record_starts, test_vassal_bin, Imperium};

const T: Duration = Duration::from_secs(20);

struct Setup {
    tmp: tempfile::TempDir,
    vassals: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let vassals = tmp.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    Setup { tmp, vassals }
}

impl Setup {
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn start(&self, binary: &Path, extra: &[&str]) -> Imperium {
        self.start_env(binary, extra, &[])
    }

    fn start_env(&self, binary: &Path, extra: &[&str], env: &[(&str, &str)]) -> Imperium {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--emperor".into(),
            self.vassals.clone().into(),
            "--binary-path".into(),
            binary.into(),
            "--reload-mercy".into(),
            "10".into(),
            "--emperor-freq".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(Into::into));
        Imperium::start_with_env(self.tmp.path(), args, env)
    }

    /// A real uWSGI vassal: the app, and its config `app.ini` answering
    /// with marker "one" on the returned port.
    fn uwsgi_vassal(&self) -> (PathBuf, PathBuf, u16) {
        let app = write_app(self.tmp.path());
        let (ini, port) = vassal_ini(&app, "one");
        let cfg = self.vassals.join("app.ini");
        std::fs::write(&cfg, &ini).unwrap();
        (app, cfg, port)
    }

    /// Writes (or rewrites) a test vassal config with a record file;
    /// returns the record path.
    fn test_vassal(&self, name: &str, extra: &str) -> PathBuf {
        let rec = self.path(&format!("{name}.rec"));
        std::fs::write(
            self.vassals.join(name),
            format!("[vassal]\nrecord = {}\n{extra}", rec.display()),
        )
        .unwrap();
        rec
    }
}

/// Reads one stats document from a TCP stats server.
fn stats_tcp(port: u16) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to stats");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid stats JSON ({e}):\n{text}"))
}

fn vassal<'a>(stats: &'a Value, id: &str) -> &'a Value {
    stats["vassals"]
        .as_array()
        .expect("vassals array")
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no vassal {id} in {stats:#}"))
}

/// Waits until the stats of vassal `id` satisfy `f`.
fn wait_stats(port: u16, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(T, || {
        last = stats_tcp(port);
        last["vassals"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["id"] == id))
            .is_some_and(&f)
    });
    assert!(ok, "stats never showed {what} for {id}:\n{last:#}");
    last
}

fn ctl_json(sock: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = ctl_ok(sock, &a);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("ctl --json printed bad JSON ({e}): {out}"))
}

fn master_of(worker: u32) -> u32 {
    ppid(worker).expect("worker has a parent")
}

// ----- stats --------------------------------------------------------------------

#[test]
fn stats_follow_real_uwsgi_vassals_through_spawn_reload_and_death() {
    let s = setup();
    let (app, cfg, port) = s.uwsgi_vassal();
    let sport = free_port();
    let saddr = format!("127.0.0.1:{sport}");
    let emp = s.start(&uwsgi_bin(), &["--emperor-stats", &saddr]);
    let worker = wait_answer(port, "one", T).unwrap_or_else(|| panic!("no answer:\n{}", emp.log()));
    let master = master_of(worker);

    let st = wait_stats(sport, "app.ini", "ready", |v| v["ready"] == 1);
    assert_eq!(st["pid"], emp.pid());
    assert_eq!(st["emperor"][0], s.vassals.to_string_lossy().as_ref());
    let v = vassal(&st, "app.ini");
    assert_eq!(v["pid"], master, "{v:#}");
    assert_eq!(v["state"], "running");
    assert_eq!(v["respawns"], 0);
    assert_eq!(v["restarts"], 0);
    assert_eq!(v["monitor"], st["emperor"][0]);
    assert_eq!(v["monitor_health"], "connected");
    assert_eq!(v["last_exit"], Value::Null);
    assert!(v["born"].as_i64().unwrap() > 1_600_000_000);

    // a config change: a graceful reload, the same master
    std::fs::write(&cfg, vassal_ini_on(&app, "two", port)).unwrap();
    wait_answer(port, "two", T).unwrap_or_else(|| panic!("no reload:\n{}", emp.log()));
    let st = wait_stats(sport, "app.ini", "one reload", |v| v["respawns"] == 1);
    assert_eq!(vassal(&st, "app.ini")["pid"], master);

    // a death: respawned, counted, with its signal
    kill(Pid::from_raw(master as i32), Signal::SIGKILL).unwrap();
    // (the old workers may hold the port for a moment, so the first new
    // master can fail to bind and exit: count restarts, not one restart)
    let st = wait_stats(sport, "app.ini", "a restart", |v| {
        v["restarts"].as_u64() >= Some(1)
            && v["state"] == "running"
            && v["pid"].as_i64().unwrap_or(-1) > 0
            && v["pid"] != master
    });
    let v = vassal(&st, "app.ini");
    let restarts = v["restarts"].as_u64().unwrap();
    assert_eq!(st["counters"]["deaths"]["signal"], 1, "{st:#}");
    assert_eq!(st["counters"]["spawns"], 1 + restarts);
    if restarts == 1 {
        assert_eq!(v["last_exit"]["signal"], 9, "{v:#}");
    } else {
        assert!(v["last_exit"]["code"].is_i64(), "{v:#}");
    }
    wait_answer(port, "two", T)
        .unwrap_or_else(|| panic!("no answer after respawn:\n{}", emp.log()));
}

#[test]
fn stats_over_unix_http_and_minified_and_a_stuck_client_does_not_delay_a_reload() {
    let s = setup();
    let rec = s.test_vassal("a.ini", "loyal = 1\n");
    // a failing vassal: blacklisted, with a scheduled respawn
    s.test_vassal("bad.ini", "exit-after-ms = 50\nexit-code = 3\n");
    let sock = s.path("stats.sock");
    let emp = s.start(
        &test_vassal_bin(),
        &[
            "--emperor-stats",
            sock.to_str().unwrap(),
            "--stats-http",
            "--stats-minified",
            "--socket-timeout",
            "30",
        ],
    );
    emp.wait_log("vassal a.ini is now loyal", T);
    let fetch = || -> String {
        let mut c = UnixStream::connect(&sock).expect("connect");
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut t = String::new();
        c.read_to_string(&mut t).unwrap();
        t
    };
    let text = fetch();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    assert!(!body.trim_end().contains('\n'), "minified: {body}");
    let st: Value = serde_json::from_str(body).unwrap();
    assert_eq!(vassal(&st, "a.ini")["loyal"], 1);

    // bad.ini keeps dying: it shows up in the blacklist with a respawn time
    let ok = wait_until(T, || {
        let t = fetch();
        let st: Value = serde_json::from_str(t.split_once("\r\n\r\n").unwrap().1).unwrap();
        let v = vassal(&st, "bad.ini").clone();
        st["blacklist"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == "bad.ini" && b["attempt"].as_u64() >= Some(1))
            && v["state"] == "throttled"
            && v["next_respawn"].as_f64().is_some()
            && v["last_exit"]["code"] == 3
    });
    assert!(ok, "bad.ini never throttled:\n{}", fetch());

    // clients that connect and never send nor read hold their own tasks
    // only: a config change is acted on at once
    let stuck: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = record_lines(&rec).iter().filter(|l| *l == "reload").count();
    s.test_vassal("a.ini", "loyal = 1\nmarker = x\n");
    let t0 = Instant::now();
    let reloaded = wait_until(Duration::from_secs(5), || {
        record_lines(&rec).iter().filter(|l| *l == "reload").count() > before
    });
    let took = t0.elapsed();
    assert!(
        reloaded,
        "no reload with stuck stats clients:\n{}",
        emp.log()
    );
    assert!(
        took < Duration::from_secs(2),
        "the reload took {took:?} with stuck stats clients"
    );
    // and other stats clients are still served
    assert!(fetch().starts_with("HTTP/1.0 200 OK"));
    drop(stuck);
}

// ----- metrics --------------------------------------------------------------------

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut t = String::new();
    s.read_to_string(&mut t).unwrap();
    let (head, body) = t.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    body.to_string()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn wait_metric(port: u16, series: &str, want: f64) -> String {
    let mut last = String::new();
    let ok = wait_until(T, || {
        last = scrape(port);
        metric(&last, series) == want
    });
    assert!(ok, "{series} never reached {want}:\n{last}");
    last
}

#[test]
fn metrics_follow_a_scripted_scenario() {
    let s = setup();
    let rec_a = s.test_vassal("a.ini", "loyal = 1\n");
    s.test_vassal("exile.ini", "exit-after-ms = 50\nexit-code = 26\n");
    let mport = free_port();
    let emp = s.start(
        &test_vassal_bin(),
        &["--emperor-metrics", &format!("127.0.0.1:{mport}")],
    );
    // 1. two vassals spawn; one exiles itself
    emp.wait_log("vassal a.ini is now loyal", T);
    let m = wait_metric(mport, "imperium_vassals{state=\"exiled\"}", 1.0);
    assert_eq!(metric(&m, "imperium_vassals{state=\"running\"}"), 1.0);
    assert_eq!(metric(&m, "imperium_spawns_total"), 2.0);
    assert_eq!(metric(&m, "imperium_deaths_total{cause=\"exile\"}"), 1.0);
    assert_eq!(metric(&m, "imperium_reloads_total"), 0.0);
    let url = s.vassals.to_string_lossy();
    assert_eq!(
        metric(
            &m,
            &format!("imperium_monitor_up{{monitor=\"0\",url=\"{url}\",health=\"connected\"}}")
        ),
        1.0
    );
    let reactions = metric(&m, "imperium_reaction_seconds_count");
    assert!(reactions >= 1.0, "{m}");

    // 2. a config change: one reload, one more reaction measured
    s.test_vassal("a.ini", "loyal = 1\nmarker = 2\n");
    let m = wait_metric(mport, "imperium_reloads_total", 1.0);
    assert!(metric(&m, "imperium_reaction_seconds_count") > reactions);
    assert!(metric(&m, "imperium_reaction_seconds_bucket{le=\"+Inf\"}") > reactions);

    // 3. SIGKILL: a death by signal, a respawn
    let pid = *record_starts(&rec_a).last().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let m = wait_metric(mport, "imperium_spawns_total", 3.0);
    assert_eq!(metric(&m, "imperium_deaths_total{cause=\"signal\"}"), 1.0);
    // let it read its config before the file goes away
    emp.wait_log_n("vassal a.ini is now loyal", 2, T);
    // 4. removal: a requested stop
    std::fs::remove_file(s.vassals.join("a.ini")).unwrap();
    let m = wait_metric(mport, "imperium_deaths_total{cause=\"requested\"}", 1.0);
    assert_eq!(metric(&m, "imperium_stops_total"), 1.0);
    // the log lines and the counters agree
    assert_eq!(emp.count("reload the uwsgi instance a.ini"), 1);
    assert_eq!(emp.count("died unexpectedly"), 2, "{}", emp.log());
    assert_eq!(emp.count("spawned uwsgi instance"), 3);
}

// ----- control socket and imperium ctl --------------------------------------------

#[test]
fn every_ctl_command_against_real_uwsgi_vassals() {
    let s = setup();
    let (app, cfg, port) = s.uwsgi_vassal();
    let sock = s.path("ctl.sock");
    let emp = s.start(
        &uwsgi_bin(),
        &["--emperor-control-socket", sock.to_str().unwrap()],
    );
    let worker = wait_answer(port, "one", T).unwrap_or_else(|| panic!("no answer:\n{}", emp.log()));
    let master = master_of(worker);
    let mode = std::fs::metadata(&sock).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);

    // list: a table and JSON
    let table = ctl_ok(&sock, &["list"]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("app.ini") && row.contains("running") && row.contains(&master.to_string()),
        "{table}"
    );
    let j = ctl_json(&sock, &["list"]);
    assert_eq!(j["ok"], true);
    assert_eq!(j["data"][0]["name"], "app.ini");
    assert_eq!(j["data"][0]["pid"], master);

    // show
    let j = ctl_json(&sock, &["show", "app.ini"]);
    assert_eq!(j["data"]["state"], "running");
    let o = ctl(&sock, &["show", "nope.ini"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no vassal named nope.ini"));

    // reload: same master, new workers
    let workers = testkit::procs::children(master);
    ctl_ok(&sock, &["reload", "app.ini"]);
    emp.wait_log("reload the uwsgi instance app.ini", T);
    assert!(
        wait_until(T, || {
            let w = testkit::procs::children(master);
            w.len() == 2 && w.iter().all(|p| !workers.contains(p))
        }),
        "workers never replaced: {workers:?}"
    );
    assert_eq!(ctl_json(&sock, &["show", "app.ini"])["data"]["reloads"], 1);

    // pause: an edit is held, not applied
    ctl_ok(&sock, &["pause", "app.ini"]);
    std::fs::write(&cfg, vassal_ini_on(&app, "two", port)).unwrap();
    emp.wait_log("reloads are paused: holding the change", T);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        wait_answer(port, "one", Duration::from_secs(2)).is_some(),
        "still the old config"
    );
    let j = ctl_json(&sock, &["show", "app.ini"]);
    assert_eq!(
        (
            j["data"]["paused"].clone(),
            j["data"]["change_held"].clone()
        ),
        (Value::Bool(true), Value::Bool(true))
    );
    assert_eq!(j["data"]["reloads"], 1);
    // resume: the held change applies with a graceful reload
    ctl_ok(&sock, &["resume", "app.ini"]);
    let w = wait_answer(port, "two", T)
        .unwrap_or_else(|| panic!("resume did not reload:\n{}", emp.log()));
    assert_eq!(master_of(w), master);

    // stop: down, and it stays down
    let all = testkit::procs::tree(master);
    ctl_ok(&sock, &["stop", "app.ini"]);
    assert!(testkit::procs::wait_all_dead(&all, T), "vassal still alive");
    std::thread::sleep(Duration::from_millis(2500)); // two rescans
    let j = ctl_json(&sock, &["show", "app.ini"]);
    assert_eq!(j["data"]["state"], "stopped");
    assert_eq!(j["data"]["pid"], Value::Null);
    assert!(testkit::uwsgi::http_get(port, "/").is_none());
    // start: up again, with the newest config
    ctl_ok(&sock, &["start", "app.ini"]);
    let w = wait_answer(port, "two", T).unwrap_or_else(|| panic!("start failed:\n{}", emp.log()));
    assert_ne!(master_of(w), master);

    // clear-blacklist: nothing to clear for app.ini, the whole list is fine
    let o = ctl(&sock, &["clear-blacklist", "app.ini"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not blacklisted"));
    assert!(ctl_ok(&sock, &["clear-blacklist"]).contains("blacklist cleared"));
}

#[test]
fn ctl_clear_blacklist_restarts_a_throttled_vassal_now() {
    let s = setup();
    let rec = s.test_vassal("bad.ini", "exit-after-ms = 30\n");
    let sock = s.path("ctl.sock");
    let emp = s.start(
        &test_vassal_bin(),
        &[
            "--emperor-control-socket",
            sock.to_str().unwrap(),
            "--emperor-throttle",
            "60000",
        ],
    );
    // the second death gets a 60 s window
    emp.wait_log("throttling vassal bad.ini", T);
    let starts = record_starts(&rec).len();
    let j = ctl_json(&sock, &["show", "bad.ini"]);
    assert_eq!(j["data"]["state"], "throttled");
    ctl_ok(&sock, &["clear-blacklist", "bad.ini"]);
    assert!(
        wait_until(Duration::from_secs(3), || record_starts(&rec).len()
            > starts),
        "not restarted after clear-blacklist:\n{}",
        emp.log()
    );
}

#[test]
fn control_socket_refuses_a_peer_that_is_not_allowed() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches to uid 65534 to act as another user: run it as root"
    );
    let s = setup();
    s.test_vassal("a.ini", "");
    // the socket dir must be reachable by the other user
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let open = s.path("open.sock");
    let closed = s.path("closed.sock");
    // a copy the other user can execute wherever the target dir lives
    let bin = s.path("imperium-ctl");
    std::fs::copy(imperium_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |sock: &Path, args: &[&str]| -> Output {
        Command::new(&bin)
            .arg("ctl")
            .arg("--socket")
            .arg(sock)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run imperium ctl as nobody")
    };
    // mode 666: nobody can connect, and the peer check refuses it
    let emp = s.start(
        &test_vassal_bin(),
        &[
            "--emperor-control-socket",
            open.to_str().unwrap(),
            "--emperor-control-socket-mode",
            "666",
        ],
    );
    emp.wait_log("vassal a.ini has been spawned", T);
    let o = as_nobody(&open, &["stop", "a.ini"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("permission denied: uid 65534"), "{err}");
    emp.wait_log("refusing uid 65534", T);
    assert_eq!(
        ctl_json(&open, &["show", "a.ini"])["data"]["state"],
        "running"
    );
    drop(emp);

    // the default mode 600 keeps it out before any check
    let emp = s.start(
        &test_vassal_bin(),
        &["--emperor-control-socket", closed.to_str().unwrap()],
    );
    emp.wait_log("vassal a.ini has been spawned", T);
    let o = as_nobody(&closed, &["list"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
    drop(emp);

    // an allowed uid is served
    let emp = s.start(
        &test_vassal_bin(),
        &[
            "--emperor-control-socket",
            open.to_str().unwrap(),
            "--emperor-control-socket-mode",
            "666",
            "--emperor-control-allow-uid",
            "65534",
        ],
    );
    emp.wait_log("vassal a.ini has been spawned", T);
    let o = as_nobody(&open, &["list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("a.ini"));
}

#[test]
fn uwsgi_datagram_command_socket_respawn_stop_spawn_and_log() {
    let s = setup();
    let rec = s.test_vassal("app.ini", "loyal = 1\n");
    let sock = s.path("cmd.sock");
    let emp = s.start(
        &test_vassal_bin(),
        &["--emperor-command-socket", sock.to_str().unwrap()],
    );
    emp.wait_log("vassal app.ini is now loyal", T);
    let send = |pairs: &[(&str, &str)]| {
        let mut body = Vec::new();
        for (k, v) in pairs {
            body.extend((k.len() as u16).to_le_bytes());
            body.extend(k.as_bytes());
            body.extend((v.len() as u16).to_le_bytes());
            body.extend(v.as_bytes());
        }
        let mut pkt = vec![0u8];
        pkt.extend((body.len() as u16).to_le_bytes());
        pkt.push(0);
        pkt.extend(body);
        UnixDatagram::unbound()
            .unwrap()
            .send_to(&pkt, &sock)
            .unwrap();
    };
    send(&[("cmd", "respawn"), ("vassal", "app.ini")]);
    assert!(
        wait_until(T, || record_lines(&rec).iter().any(|l| l == "reload")),
        "no reload:\n{}",
        emp.log()
    );
    send(&[("cmd", "log"), ("msg", "hello from a script")]);
    emp.wait_log("[emperor] hello from a script", T);
    send(&[("command", "stop"), ("vassal", "app.ini")]);
    emp.wait_log("stop the uwsgi instance app.ini", T);
    emp.wait_log("exited with", T);
    send(&[("cmd", "respawn"), ("vassal", "ghost.ini")]);
    emp.wait_log("ERROR: command respawn: no vassal named ghost.ini", T);
    send(&[("cmd", "spawn"), ("vassal", "app.ini")]);
    emp.wait_log_n("spawned uwsgi instance app.ini", 2, T);
}

// ----- systemd, pidfile, procname, JSON logs ---------------------------------------

#[test]
fn sd_notify_ready_status_and_stopping() {
    let s = setup();
    s.test_vassal("a.ini", "");
    s.test_vassal("b.ini", "");
    let nsock = s.path("notify.sock");
    let rx = UnixDatagram::bind(&nsock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut emp = s.start_env(
        &test_vassal_bin(),
        &[],
        &[("NOTIFY_SOCKET", nsock.to_str().unwrap())],
    );
    let mut msgs = Vec::new();
    let next = || {
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert_eq!(
        first,
        "READY=1\nSTATUS=The Emperor is governing 2 vassals",
        "log:\n{}",
        emp.log()
    );
    // READY came after the initial scan was acted on: both were spawned
    assert_eq!(emp.count("spawned uwsgi instance"), 2, "{}", emp.log());
    emp.signal(Signal::SIGTERM);
    loop {
        let m = next();
        let end = m == "STATUS=The Emperor is buried.";
        msgs.push(m);
        if end {
            break;
        }
    }
    assert!(
        msgs.iter().any(|m| m.starts_with("STOPPING=1\n")),
        "{msgs:?}"
    );
    assert!(emp.wait_exit(T).success());
}

#[test]
fn pidfile_procname_and_json_logs() {
    let s = setup();
    s.test_vassal("a.ini", "");
    let pidfile = s.path("emperor.pid");
    let mut emp = s.start(
        &test_vassal_bin(),
        &[
            "--emperor-pidfile",
            pidfile.to_str().unwrap(),
            "--emperor-procname",
            "imperium-emperor-of-tests",
            "--log-format",
            "json",
        ],
    );
    emp.wait_log("vassal a.ini has been spawned", T);
    // the pidfile holds the pid and a newline, as uWSGI writes it
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", emp.pid())
    );
    // prctl(PR_SET_NAME): the kernel keeps 15 bytes
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", emp.pid())).unwrap();
    assert_eq!(comm.trim_end(), "imperium-empero");
    // every log line is a JSON object; events keep uWSGI's wording and
    // carry structured fields
    let log = emp.log();
    let mut spawned = None;
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        let msg = v["fields"]["message"].as_str().unwrap_or_default();
        if msg.starts_with("[emperor] spawned uwsgi instance a.ini") {
            spawned = Some(v.clone());
        }
    }
    let spawned = spawned.unwrap_or_else(|| panic!("no spawn event in\n{log}"));
    assert_eq!(spawned["fields"]["vassal"], "a.ini");
    assert!(spawned["fields"]["pid"]
        .as_u64()
        .is_some_and(|p| alive(p as u32)));
    assert!(emp.stop().success());
    assert!(!pidfile.exists(), "the pidfile is removed at a clean exit");
}

/// `imperium ctl top` on a terminal (a pty from util-linux's `script`, 30
/// rows by 150 columns): it draws every vassal with a CPU% column, sorts
/// on a key, and quits on q with the terminal restored.
#[test]
fn ctl_top_live_view_draws_the_fleet_and_quits_on_q() {
    testkit::servers::require_program("script", "bsdutils");
    let d = testkit::VassalDir::new();
    d.write("alpha.ini", "");
    d.write("beta.ini", "");
    let sock = d.path("ctl.sock");
    let mut emp = Imperium::start(
        d.tmp.path(),
        [
            "--emperor".as_ref(),
            d.vassals.as_os_str(),
            "--binary-path".as_ref(),
            test_vassal_bin().as_os_str(),
            "--emperor-control-socket".as_ref(),
            sock.as_os_str(),
        ],
    );
    assert!(wait_until(T, || ctl_ok_quiet(&sock).contains("beta.ini")));
    let cmd = format!(
        "stty rows 30 cols 150; {} ctl --socket {} top",
        imperium_bin().display(),
        sock.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut keys = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    keys.write_all(b"n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    keys.write_all(b"q").unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < T, "ctl top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    let screen = String::from_utf8_lossy(&out);
    for want in [
        "NAME",
        "CPU%",
        "RSS MiB",
        "HEALTH",
        "alpha.ini",
        "beta.ini",
        "running",
        "sort: cpu",
    ] {
        assert!(screen.contains(want), "{want:?} not drawn: {screen:?}");
    }
    // the key sorted by name: after the first full screen, the status
    // line's "cpu" was redrawn as "name" (ratatui redraws what changed)
    let first = screen.find("beta.ini").unwrap() + "beta.ini".len();
    assert!(screen[first..].contains("nam"), "{screen:?}");
    // the alternate screen was left
    assert!(screen.contains("\u{1b}[?1049l"), "{screen:?}");
    emp.stop();
}

fn ctl_ok_quiet(sock: &Path) -> String {
    let o = ctl(sock, &["list"]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}
