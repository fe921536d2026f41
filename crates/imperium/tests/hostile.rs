//! Hostile vassals (the test vassal's `flood` behaviour) next to
//! well-behaved ones: bounded memory and log, the flooder killed with a
//! clear reason, a neighbour's reload still seen. Bounds are asserted on
//! memory and log size, never on time (bench/ measures reaction times).

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::servers::wait_until;
use testkit::{record_lines, record_starts, test_vassal_bin, Imperium, VassalDir};

const T: Duration = Duration::from_secs(20);

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

type Env = VassalDir;

/// imperium on the vassal directory, with the test vassal and `extra`.
fn start(e: &Env, extra: &[&str]) -> Imperium {
    let mut args = vec![
        "--emperor".to_string(),
        e.vassals.display().to_string(),
        "--binary-path".into(),
        test_vassal_bin().display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Imperium::start(e.tmp.path(), args)
}

fn touch(p: &Path) {
    let t = std::fs::File::options().append(true).open(p).unwrap();
    t.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

#[test]
fn a_flooding_vassal_is_killed_and_costs_its_neighbours_nothing() {
    let e = Env::new();
    let names: Vec<String> = (0..20).map(|i| format!("n{i:02}.ini")).collect();
    for n in &names {
        e.write(n, "heartbeat = 500");
    }
    let mut emp = start(&e, &[]);
    assert!(wait_until(T, || names
        .iter()
        .all(|n| !record_starts(&e.rec(n)).is_empty())));
    std::thread::sleep(Duration::from_millis(500));
    let pid = emp.pid();
    let idle_rss = rss_kb(pid);
    let idle_log = emp.log().len();
    // random bytes as fast as the socket takes them, until killed
    e.write("flood.ini", "flood = random");
    emp.wait_log("flood.ini", T);
    emp.wait_log("flooded its emperor socket", T);
    // meanwhile it respawns (through the blacklist) and floods again; a
    // neighbour's reload is still seen, and the emperor stays small
    let n = e.vassals.join(&names[7]);
    touch(&n);
    let mut max_rss = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        max_rss = max_rss.max(rss_kb(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        wait_until(T, || record_lines(&e.rec(&names[7]))
            .iter()
            .any(|l| l == "reload")),
        "the neighbour's reload was not seen:\n{}",
        emp.log()
    );
    assert!(
        max_rss < 2 * idle_rss,
        "emperor RSS went from {idle_rss} kB to {max_rss} kB under the flood"
    );
    let grown = emp.log().len() - idle_log;
    assert!(grown < 1_000_000, "the log grew by {grown} bytes");
    assert!(emp.count("flooded its emperor socket") >= 1);
    // one burst of 1 MiB of byte 1 (the "ready" byte): killed too, and the
    // repeated byte is not logged a million times
    std::fs::remove_file(e.vassals.join("flood.ini")).unwrap();
    let before = emp.count("flooded its emperor socket");
    e.write("ones.ini", "flood = 1\nflood-bytes = 1048576\nready = 0");
    assert!(wait_until(T, || emp.count("flooded its emperor socket") > before));
    let log = emp.log();
    let ready_lines = log
        .lines()
        .filter(|l| l.contains("ones.ini") && l.contains("has been spawned"))
        .count();
    assert!(ready_lines < 20, "{ready_lines} ready lines for ones.ini");
    // every well-behaved vassal is still the process it was (n07 reloaded
    // in place: a second start line, the same pid)
    for n in &names {
        let mut pids = record_starts(&e.rec(n));
        pids.dedup();
        assert_eq!(pids.len(), 1, "{n} was restarted");
    }
    assert!(emp.stop().success());
}

#[test]
fn unknown_bytes_are_counted_and_logged_once_per_burst() {
    let e = Env::new();
    // 10 KiB of byte 200 (no meaning): under the flood limit
    e.write("odd.ini", "flood = 200\nflood-bytes = 10240");
    let mut emp = start(&e, &[]);
    emp.wait_log("unknown byte(s) on its emperor socket", T);
    std::thread::sleep(Duration::from_millis(500));
    let lines = emp.count("unknown byte(s) on its emperor socket");
    assert_eq!(lines, 1, "{}", emp.log());
    assert_eq!(emp.count("flooded"), 0, "{}", emp.log());
    assert!(emp.stop().success());
}

#[test]
fn the_emperors_own_pause_is_not_the_vassals_fault() {
    let e = Env::new();
    let names: Vec<String> = (0..50).map(|i| format!("h{i:02}.ini")).collect();
    for n in &names {
        e.write(n, "heartbeat = 300");
    }
    // this one really goes silent, 3 s after it starts
    e.write(
        "quiet.ini",
        "heartbeat = 300\nheartbeat-stop-after-ms = 3000",
    );
    let mut emp = start(&e, &["--emperor-required-heartbeat", "2"]);
    assert!(wait_until(T, || names
        .iter()
        .all(|n| !record_starts(&e.rec(n)).is_empty())));
    std::thread::sleep(Duration::from_millis(800));
    // the emperor frozen for 4 s, twice the required heartbeat
    emp.signal(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(4));
    emp.signal(nix::sys::signal::Signal::SIGCONT);
    emp.wait_log("the emperor itself did not run for", T);
    // the silent one is still caught, one window after the pause
    assert!(
        wait_until(T, || {
            emp.log()
                .lines()
                .any(|l| l.contains("quiet.ini") && l.contains("sent no heartbeat"))
        }),
        "{}",
        emp.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let log = emp.log();
    for n in &names {
        assert!(
            !log.lines()
                .any(|l| l.contains(n.as_str()) && l.contains("sent no heartbeat")),
            "{n} was killed for the emperor's own pause:\n{log}"
        );
        assert_eq!(record_starts(&e.rec(n)).len(), 1, "{n} was restarted");
    }
    assert!(emp.stop().success());
}

fn start_with_control(e: &Env, sock: &Path, extra: &[&str]) -> Imperium {
    let sock = sock.display().to_string();
    let mut args = vec!["--emperor-control-socket", sock.as_str()];
    args.extend_from_slice(extra);
    start(e, &args)
}

fn ctl(sock: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(testkit::imperium_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_control_socket_bounds_requests_and_idle_clients() {
    use std::io::{Read, Write};
    let e = Env::new();
    e.write("a.ini", "");
    let sock = e.tmp.path().join("ctl.sock");
    let mut emp = start_with_control(&e, &sock, &[]);
    emp.wait_log("vassal a.ini has been spawned", T);
    let idle_rss = rss_kb(emp.pid());
    // a 16 MiB request line is cut at 64 KiB and refused; nothing is held
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let junk = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        if c.write_all(&junk).is_err() {
            break; // the emperor answered and closed: fine
        }
    }
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    assert!(reply.contains("request too large"), "{reply}");
    assert!(
        rss_kb(emp.pid()) < 2 * idle_rss,
        "emperor RSS {} kB after a huge request (idle {idle_rss} kB)",
        rss_kb(emp.pid())
    );
    // 64 clients that connect and say nothing give their slots back
    let idle: Vec<_> = (0..64)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    let started = Instant::now();
    let o = ctl(&sock, &["list"]);
    assert!(
        o.status.success(),
        "ctl list failed after {:?} with 64 idle clients: {}",
        started.elapsed(),
        String::from_utf8_lossy(&o.stderr)
    );
    drop(idle);
    assert!(emp.stop().success());
}

#[test]
fn a_file_in_the_control_sockets_place_is_named_and_refused_peers_are_logged_once() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let e = Env::new();
    e.write("a.ini", "");
    let sock = e.tmp.path().join("ctl.sock");
    std::fs::write(&sock, "not a socket").unwrap();
    let mut emp = start_with_control(&e, &sock, &[]);
    assert!(!emp.wait_exit(T).success());
    assert!(
        emp.log().contains("is a regular file, not a socket"),
        "{}",
        emp.log()
    );
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "not a socket");
    std::fs::remove_file(&sock).unwrap();
    // 30 refused peers: one log line (the next one, 10 s later, would
    // count the others)
    std::fs::set_permissions(e.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = e.tmp.path().join("imperium-ctl");
    std::fs::copy(testkit::imperium_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut emp = start_with_control(&e, &sock, &["--emperor-control-socket-mode", "666"]);
    emp.wait_log("vassal a.ini has been spawned", T);
    for _ in 0..30 {
        let o = std::process::Command::new(&bin)
            .args(["ctl", "--socket", &sock.display().to_string(), "list"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&o.stderr).contains("permission denied"));
    }
    assert_eq!(emp.count("refusing uid 65534"), 1, "{}", emp.log());
    assert!(emp.stop().success());
}

#[test]
fn files_named_like_configs_that_are_not_files_get_one_warning_each() {
    let e = Env::new();
    e.write("a.ini", "");
    nix::unistd::mkfifo(
        &e.vassals.join("fifo.ini"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::create_dir(e.vassals.join("dir.ini")).unwrap();
    std::os::unix::fs::symlink("loop.ini", e.vassals.join("loop.ini")).unwrap();
    std::os::unix::fs::symlink("/dev/null", e.vassals.join("dev.ini")).unwrap();
    let mut emp = start(&e, &["--emperor-freq", "1"]);
    assert!(wait_until(T, || !record_starts(&e.rec("a.ini")).is_empty()));
    // a few safety rescans: still one warning each
    std::thread::sleep(Duration::from_millis(2500));
    for (name, what) in [
        ("fifo.ini", "a FIFO"),
        ("dir.ini", "a directory"),
        ("loop.ini", "a symbolic link loop"),
        ("dev.ini", "a device node"),
    ] {
        let lines: Vec<String> = emp
            .log()
            .lines()
            .filter(|l| l.contains(name) && l.contains("not a regular file"))
            .map(str::to_string)
            .collect();
        assert_eq!(lines.len(), 1, "{name}: {lines:?}\n{}", emp.log());
        assert!(lines[0].contains(what), "{}", lines[0]);
    }
    assert!(emp.stop().success());
}

#[test]
fn idle_stats_clients_beyond_the_slots_never_keep_a_real_one_waiting() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let e = Env::new();
    e.write("a.ini", "");
    let sock = e.tmp.path().join("stats.sock");
    // a long time limit: an idle client that held its slot until then
    // would keep the real one below waiting for 30 s per 64 of them
    let mut emp = start(
        &e,
        &[
            "--emperor-stats",
            sock.to_str().unwrap(),
            "--stats-http",
            "--socket-timeout",
            "30",
        ],
    );
    emp.wait_log("vassal a.ini has been spawned", T);
    let idle: Vec<_> = (0..200)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let mut c = UnixStream::connect(&sock).unwrap();
    // far below the idle clients' 30 s: the answer comes while every one of
    // them is still connected
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text)
        .unwrap_or_else(|err| panic!("no stats answer with 200 idle clients: {err}"));
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    assert!(text.contains("\"a.ini\""), "{text}");
    // the closed connections are one warning, not one per client
    let what = "64 clients at once; the oldest connection was closed";
    emp.wait_log(what, T);
    assert_eq!(emp.count(what), 1, "{}", emp.log());
    drop(idle);
    assert!(emp.stop().success());
}
