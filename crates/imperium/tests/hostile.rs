//! Hostile vassals (the test vassal's `flood` behaviour) next to
//! well-behaved ones: bounded memory and log, the flooder killed with a
//! clear reason, a neighbour's reload still seen. Bounds are asserted on
//! memory and log size, never on time (bench/ measures reaction times).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::servers::wait_until;
use testkit::{record_lines, record_starts, test_vassal_bin, Imperium};

const T: Duration = Duration::from_secs(20);

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Env {
    tmp: tempfile::TempDir,
    vassals: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let vassals = tmp.path().join("vassals");
        std::fs::create_dir(&vassals).unwrap();
        Env { tmp, vassals }
    }
    fn rec(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.rec"))
    }
    fn write(&self, file: &str, extra: &str) -> PathBuf {
        let p = self.vassals.join(file);
        std::fs::write(
            &p,
            format!("[vassal]\nrecord = {}\n{extra}\n", self.rec(file).display()),
        )
        .unwrap();
        p
    }
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
    let mut emp = Imperium::start(
        e.tmp.path(),
        [
            "--emperor".to_string(),
            e.vassals.display().to_string(),
            "--binary-path".into(),
            test_vassal_bin().display().to_string(),
        ],
    );
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
    let mut emp = Imperium::start(
        e.tmp.path(),
        [
            "--emperor".to_string(),
            e.vassals.display().to_string(),
            "--binary-path".into(),
            test_vassal_bin().display().to_string(),
        ],
    );
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
    let mut emp = Imperium::start(
        e.tmp.path(),
        [
            "--emperor".to_string(),
            e.vassals.display().to_string(),
            "--binary-path".into(),
            test_vassal_bin().display().to_string(),
            "--emperor-required-heartbeat".into(),
            "2".into(),
        ],
    );
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
