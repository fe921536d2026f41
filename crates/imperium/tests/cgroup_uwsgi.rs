//! A cgroup per vassal (`--vassal-cgroup`, docs/resources.md) with real
//! uWSGI vassals: a double-forked grandchild of the vassal dies when the
//! vassal is stopped and at Ragnarok; without cgroups it escapes, as it
//! does from uWSGI's Emperor.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::procs::alive;
use testkit::servers::{free_port, wait_until};
use testkit::uwsgi::wait_answer;
use testkit::{imperium_bin, uwsgi_emperor_args, Imperium};

const T: Duration = Duration::from_secs(25);

/// At import (in the uWSGI master), double-forks a `sleep` that leaves the
/// vassal's process tree (a new session, reparented away from the master)
/// and writes its pid to `$GRANDCHILD_PIDFILE`.
const FORKING_APP: &str = r#"import os
pidfile = os.environ['GRANDCHILD_PIDFILE']
if not os.path.exists(pidfile):
    first = os.fork()
    if first == 0:
        os.setsid()
        second = os.fork()
        if second == 0:
            os.execvp('sleep', ['sleep', '1000'])
        with open(pidfile + '.tmp', 'w') as f:
            f.write(str(second))
        os.rename(pidfile + '.tmp', pidfile)
        os._exit(0)
    os.waitpid(first, 0)
def application(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('pid=%d marker=%s' % (os.getpid(), os.environ.get('MARKER', '-'))).encode()]
"#;

/// Whether this machine has a cgroup2 hierarchy the tests can use; says
/// why not in the test's output otherwise.
fn cgroup2_here() -> bool {
    let ok = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        });
    if !ok {
        eprintln!("NOT TESTED: this machine has no cgroup2 (unified) hierarchy mounted");
    }
    ok
}

type Setup = testkit::uwsgi::AppTree;

fn setup() -> Setup {
    Setup::new("forking.py", FORKING_APP)
}

/// Writes vassal `name` (its grandchild's pid goes to `<name>.gc`);
/// returns its port and the pid file.
fn vassal(s: &Setup, name: &str) -> (u16, PathBuf) {
    let port = free_port();
    let pidfile = s.tmp.path().join(format!("{name}.gc"));
    std::fs::write(
        s.vassals.join(name),
        format!(
            "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 1\nhttp-socket = 127.0.0.1:{port}\nwsgi-file = {}\nenv = MARKER={name}\nenv = GRANDCHILD_PIDFILE={}\ndie-on-term = true\nreload-mercy = 5\nworker-reload-mercy = 5\n",
            s.app.display(),
            pidfile.display()
        ),
    )
    .unwrap();
    (port, pidfile)
}

/// Writes a uWSGI vassal `name` serving `app` with `processes` workers on
/// a free port, then `extra` lines; returns the port.
fn write_vassal(s: &Setup, name: &str, app: &Path, processes: u32, extra: &str) -> u16 {
    let port = free_port();
    std::fs::write(
        s.vassals.join(name),
        format!(
            "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = {processes}\nhttp-socket = 127.0.0.1:{port}\nwsgi-file = {}\nenv = MARKER={name}\n{extra}",
            app.display()
        ),
    )
    .unwrap();
    port
}

fn emperor(s: &Setup, extra: &[&str]) -> Imperium {
    Imperium::start(s.tmp.path(), uwsgi_emperor_args(&s.vassals, extra))
}

/// [`emperor`] with a control socket, and its path.
fn emperor_ctl(s: &Setup, extra: &[&str]) -> (Imperium, PathBuf) {
    let sock = s.tmp.path().join("ctl.sock");
    let mut args = extra.to_vec();
    let path = sock.to_str().unwrap().to_string();
    args.extend(["--emperor-control-socket", &path]);
    (emperor(s, &args), sock)
}

/// `imperium ctl --json show NAME`.
fn show(sock: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&testkit::ctl_ok(sock, &["--json", "show", name])).unwrap()
}

/// Polls `ctl show NAME` `polls` times, 100 ms apart, asserting each time
/// that the vassal has at most `limit` processes; the most it had.
fn most_processes(sock: &Path, name: &str, polls: usize, limit: u64) -> u64 {
    let mut seen = 0;
    for _ in 0..polls {
        let v = show(sock, name);
        if let Some(n) = v["data"]["usage"]["processes"].as_u64() {
            assert!(
                n <= limit,
                "{name} is over its pids limit of {limit}: {v:#}"
            );
            seen = seen.max(n);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

/// An app that allocates 200 MiB, every page written, in the uWSGI master
/// at import.
fn write_hog(s: &Setup) -> PathBuf {
    let hog = s.tmp.path().join("hog.py");
    std::fs::write(
        &hog,
        "x = b'x' * (200 << 20)\ndef application(e, s):\n    s('200 OK', [])\n    return [b'never']\n",
    )
    .unwrap();
    hog
}

fn grandchild(pidfile: &Path, emp: &Imperium) -> u32 {
    assert!(
        wait_until(T, || pidfile.exists()),
        "the app never forked:\n{}",
        emp.log()
    );
    std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The unified-hierarchy cgroup of `pid`.
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_double_forked_grandchild_dies_when_its_vassal_is_stopped() {
    if !cgroup2_here() {
        return;
    }
    let s = setup();
    let (port, pidfile) = vassal(&s, "gc.ini");
    let emp = emperor(&s, &[]);
    wait_answer(port, "gc.ini", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    let gc = grandchild(&pidfile, &emp);
    assert!(alive(gc));
    // it left the vassal's process tree, but not its cgroup
    assert_ne!(testkit::procs::ppid(gc), Some(emp.pid()));
    let cg = cgroup_of(gc);
    assert!(
        cg.contains(&format!("/imperium-{}/gc.ini/i", emp.pid())),
        "the grandchild's cgroup: {cg:?}"
    );
    assert!(emp
        .log()
        .contains("each vassal process starts in a cgroup of its own"));

    std::fs::remove_file(s.vassals.join("gc.ini")).unwrap();
    emp.wait_log("removed uwsgi instance gc.ini", T);
    assert!(
        wait_until(Duration::from_secs(5), || !alive(gc)),
        "the grandchild {gc} outlived its vassal"
    );
    emp.wait_log("left behind in its cgroup", T);
}

#[test]
fn ragnarok_kills_every_grandchild_and_removes_the_groups() {
    if !cgroup2_here() {
        return;
    }
    let s = setup();
    let (p1, f1) = vassal(&s, "a.ini");
    let (p2, f2) = vassal(&s, "b.ini");
    let mut emp = emperor(&s, &[]);
    wait_answer(p1, "a.ini", T).unwrap_or_else(|| panic!("a never answered:\n{}", emp.log()));
    wait_answer(p2, "b.ini", T).unwrap_or_else(|| panic!("b never answered:\n{}", emp.log()));
    let gcs = [grandchild(&f1, &emp), grandchild(&f2, &emp)];
    let root = cgroup_of(gcs[0]);
    let root = root.split("/a.ini/").next().unwrap().to_string();
    assert!(gcs.iter().all(|p| alive(*p)));
    let pid = emp.pid();
    assert!(emp.stop().success());
    assert!(
        wait_until(Duration::from_secs(5), || gcs.iter().all(|p| !alive(*p))),
        "grandchildren outlived the emperor's shutdown: {gcs:?}"
    );
    let mount = "/sys/fs/cgroup/unified";
    let dir = if Path::new(mount).join("cgroup.procs").exists() {
        Path::new(mount).join(root.trim_start_matches('/'))
    } else {
        Path::new("/sys/fs/cgroup").join(root.trim_start_matches('/'))
    };
    assert!(root.ends_with(&format!("imperium-{pid}")), "{root}");
    assert!(
        !dir.exists(),
        "{} is left after the shutdown",
        dir.display()
    );
}

#[test]
fn without_cgroups_the_grandchild_escapes_as_from_uwsgi() {
    let s = setup();
    let (port, pidfile) = vassal(&s, "esc.ini");
    let emp = emperor(&s, &["--vassal-cgroup", "off"]);
    wait_answer(port, "esc.ini", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    let gc = grandchild(&pidfile, &emp);
    std::fs::remove_file(s.vassals.join("esc.ini")).unwrap();
    emp.wait_log("removed uwsgi instance esc.ini", T);
    std::thread::sleep(Duration::from_secs(1));
    let escaped = alive(gc);
    let _ = kill(Pid::from_raw(gc as i32), Signal::SIGKILL);
    assert!(
        escaped,
        "with --vassal-cgroup off the grandchild survives its vassal (what the cgroup fixes)"
    );
}

/// Runs an emperor on `s`'s vassals with `args`, asserts that it refuses
/// to start, and returns what it said (stderr).
fn refused(s: &Setup, args: &[&str]) -> String {
    let o = std::process::Command::new(imperium_bin())
        .arg("--emperor")
        .arg(&s.vassals)
        .args(args)
        .output()
        .unwrap();
    assert!(!o.status.success(), "the emperor started with {args:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_path_outside_cgroup2_is_a_start_up_error() {
    let s = setup();
    let err = refused(&s, &["--vassal-cgroup", "/tmp/not-a-cgroup"]);
    assert!(
        err.contains("--vassal-cgroup")
            && err.contains("/tmp/not-a-cgroup is not inside a cgroup2 mount"),
        "{err}"
    );
}

/// The resident memory of `pids` summed from /proc (bytes).
fn rss_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/statm")).ok())
        .filter_map(|t| {
            t.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum::<u64>()
        * 4096
}

/// The CPU time of `pids` (user + system) from /proc, in seconds.
fn cpu_of(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|t| {
            let f: Vec<String> = t[t.rfind(')')? + 2..]
                .split_whitespace()
                .map(str::to_string)
                .collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / 100.0
}

/// Live figures per vassal in the stats JSON, `imperium ctl show` and
/// `imperium ctl top --once`, from its cgroup or (without one) its process
/// tree, against /proc.
#[test]
fn usage_per_vassal_matches_proc_with_and_without_cgroups() {
    use std::io::Read as _;
    let modes: &[&str] = if cgroup2_here() {
        &["auto", "off"]
    } else {
        &["off"]
    };
    for mode in modes {
        let s = setup();
        let app = testkit::uwsgi::write_app(s.tmp.path());
        let (ini, port) = testkit::uwsgi::vassal_ini(&app, "u");
        std::fs::write(s.vassals.join("u.ini"), ini).unwrap();
        let stats_port = free_port();
        let stats = format!("127.0.0.1:{stats_port}");
        let (emp, ctl_sock) =
            emperor_ctl(&s, &["--vassal-cgroup", mode, "--emperor-stats", &stats]);
        let w =
            wait_answer(port, "u", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
        let master = testkit::uwsgi::master_of(w);
        let tree = testkit::procs::tree(master);
        assert_eq!(tree.len(), 3, "a master and 2 workers: {tree:?}");
        let want = rss_of(&tree) as f64;

        let shown = show(&ctl_sock, "u.ini");
        let u = &shown["data"]["usage"];
        assert_eq!(u["processes"], 3, "{mode}: {shown:#}");
        let rss = u["rss_bytes"].as_f64().unwrap();
        assert!(
            (rss - want).abs() <= want * 0.1,
            "{mode}: rss {rss} against /proc {want}"
        );
        // CPU: the group's (microseconds, never 0 once uWSGI has started),
        // or the live processes' ticks, which /proc gives as well
        let cpu = u["cpu_seconds"].as_f64().unwrap();
        let proc_cpu = cpu_of(&tree);
        if *mode == "auto" {
            assert!(cpu > 0.0, "{mode}: {u}");
        }
        assert!(
            cpu + 0.02 >= proc_cpu,
            "{mode}: cpu {cpu} s, /proc {proc_cpu} s"
        );
        if *mode == "auto" {
            assert!(
                shown["data"]["cgroup"]
                    .as_str()
                    .is_some_and(|c| c.contains("/u.ini/i")),
                "{shown:#}"
            );
        }

        let mut c = std::net::TcpStream::connect(("127.0.0.1", stats_port)).unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let v = doc["vassals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == "u.ini")
            .unwrap();
        assert_eq!(v["usage"]["processes"], 3, "{mode}: {v:#}");
        let rss = v["usage"]["rss_bytes"].as_f64().unwrap();
        assert!(
            (rss - want).abs() <= want * 0.1,
            "{mode}: stats rss {rss} against /proc {want}"
        );

        let top = testkit::ctl_ok(&ctl_sock, &["top", "--once", "--sort", "mem"]);
        let row = top
            .lines()
            .find(|l| l.starts_with("u.ini"))
            .unwrap_or_else(|| panic!("{top}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], "running", "{top}");
        assert_eq!(cols[3], "3", "PROCS: {top}");
        let mib: f64 = cols[4].parse().unwrap();
        assert!(
            (mib * 1048576.0 - want).abs() <= want * 0.1 + 0.05 * 1048576.0,
            "{mode}: top {mib} MiB against {want}"
        );
        let o = testkit::ctl(&ctl_sock, &["top"]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("--once"));
    }
}

/// Whether this machine has a memory controller the tests can use (cgroup
/// v1's, on these machines); says why not otherwise.
fn memory_controller_here() -> bool {
    let ok = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup ") && r.contains("memory"))
        });
    if !ok {
        eprintln!("NOT TESTED: no cgroup v1 memory hierarchy is mounted on this machine");
    }
    ok
}

/// A vassal over `--vassal-memory-max` is killed by the kernel's OOM
/// killer, reported as such (log, `last_exit.oom`, the death counter) and
/// respawned through the throttling; its neighbour runs on.
#[test]
fn an_allocating_vassal_is_oom_killed_reported_and_respawned() {
    if !cgroup2_here() || !memory_controller_here() {
        return;
    }
    let s = setup();
    let hog = write_hog(&s);
    write_vassal(&s, "hog.ini", &hog, 1, "");
    let (port, _) = vassal(&s, "ok.ini");
    let (emp, ctl_sock) = emperor_ctl(&s, &["--vassal-memory-max", "64M"]);
    wait_answer(port, "ok.ini", T)
        .unwrap_or_else(|| panic!("ok.ini never answered:\n{}", emp.log()));
    emp.wait_log("each vassal process may use at most 64 MiB of memory", T);
    emp.wait_log("vassal hog.ini (pid:", T);
    emp.wait_log("was killed by the kernel's OOM killer", T);
    let shown = show(&ctl_sock, "hog.ini");
    assert_eq!(shown["data"]["last_exit"]["oom"], true, "{shown:#}");
    assert_eq!(shown["data"]["last_exit"]["signal"], 9, "{shown:#}");
    // respawned through the throttling, OOM-killed again
    emp.wait_log_n("spawned uwsgi instance hog.ini", 2, T);
    emp.wait_log_n("was killed by the kernel's OOM killer", 2, T);
    // the neighbour is untouched, and not limited into an OOM itself
    assert!(wait_answer(port, "ok.ini", Duration::from_secs(2)).is_some());
    assert!(!emp.log().contains("vassal ok.ini (pid:"), "{}", emp.log());
    // what its memory group is charged for: some, within the limit, and
    // its peak at least that; the hog's group peaked at the limit
    let ok = show(&ctl_sock, "ok.ini");
    let u = &ok["data"]["usage"];
    let current = u["memory_current_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("{ok:#}"));
    let peak = u["memory_peak_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("{ok:#}"));
    assert!(current > 1 << 20 && current <= 64 << 20, "{ok:#}");
    assert!(peak >= current && peak <= 64 << 20, "{ok:#}");
    // and `ctl top --once` shows what its group is charged, in MiB
    let mib: f64 = top_cell(&ctl_sock, "ok.ini", 6).parse().unwrap();
    assert!(mib > 1.0 && mib <= 64.0, "CG MEM MiB {mib}");
}

/// Column `i` (from 0) of `name`'s row in `imperium ctl top --once`.
fn top_cell(ctl_sock: &Path, name: &str, i: usize) -> String {
    let top = testkit::ctl_ok(ctl_sock, &["top", "--once"]);
    let row = top
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name}: {top}"));
    row.split_whitespace()
        .nth(i)
        .unwrap_or_else(|| panic!("{top}"))
        .to_string()
}

#[test]
fn a_memory_limit_without_cgroups_is_a_start_up_error() {
    let s = setup();
    let err = refused(
        &s,
        &["--vassal-cgroup", "off", "--vassal-memory-max", "64M"],
    );
    assert!(
        err.contains(
            "--vassal-memory-max, --vassal-memory-high, --vassal-cpu-max and --vassal-pids-max need a cgroup per vassal"
        ),
        "{err}"
    );
}

/// `--vassal-memory-high` where the memory controller is cgroup v1's (this
/// machine): v1 has no such limit, so the emperor refuses to start, never
/// a silent no-op; a vassal asking for one in its own section is not
/// started, and says why, while its neighbour runs. (Through cgroup v2 it
/// is tested in tests/cgroup_v2_vm.rs.)
#[test]
fn memory_high_on_cgroup_v1_is_refused() {
    if !cgroup2_here() || !v1_controller_here("memory") {
        return;
    }
    let s = setup();
    let err = refused(&s, &["--vassal-memory-high", "64M"]);
    assert!(
        err.contains("--vassal-memory-high (memory-high) needs cgroup v2's memory controller"),
        "{err}"
    );
    let app = testkit::uwsgi::write_app(s.tmp.path());
    write_vassal(&s, "high.ini", &app, 1, "\n[imperium]\nmemory-high = 32M\n");
    let port = write_vassal(&s, "ok.ini", &app, 1, "");
    let emp = emperor(&s, &[]);
    emp.wait_log("cannot start vassal high.ini", T);
    assert!(
        emp.log().contains("needs cgroup v2's memory controller"),
        "{}",
        emp.log()
    );
    assert!(wait_answer(port, "ok.ini", T).is_some(), "{}", emp.log());
}

/// Whether this machine has the cgroup v1 `controller` hierarchy; says why
/// not otherwise.
fn v1_controller_here(controller: &str) -> bool {
    let ok = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split(" - ").nth(1).is_some_and(|r| {
                let mut f = r.split_whitespace();
                f.next() == Some("cgroup")
                    && f.nth(1)
                        .is_some_and(|o| o.split(',').any(|c| c == controller))
            })
        });
    if !ok {
        eprintln!("NOT TESTED: no cgroup v1 {controller} hierarchy is mounted on this machine");
    }
    ok
}

/// `--vassal-cpu-max 0.2`: a vassal that spins a core gets a fifth of one.
#[test]
fn a_cpu_limit_holds_a_spinning_vassal_to_its_share() {
    if !cgroup2_here() || !v1_controller_here("cpu") {
        return;
    }
    let s = setup();
    let spin = s.tmp.path().join("spin.py");
    std::fs::write(
        &spin,
        "import os\nif os.fork() == 0:\n    while True:\n        pass\ndef application(e, s):\n    s('200 OK', [('Content-Type', 'text/plain')])\n    return [('pid=%d marker=%s' % (os.getpid(), os.environ.get('MARKER', '-'))).encode()]\n",
    )
    .unwrap();
    let port = write_vassal(&s, "spin.ini", &spin, 1, "");
    let (mut emp, ctl_sock) = emperor_ctl(&s, &["--vassal-cpu-max", "0.2"]);
    wait_answer(port, "spin.ini", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    emp.wait_log("each vassal process may use at most 0.2 cores", T);
    let cpu = || -> f64 {
        let v = show(&ctl_sock, "spin.ini");
        v["data"]["usage"]["cpu_seconds"].as_f64().unwrap()
    };
    let throttled = || -> f64 {
        let v = show(&ctl_sock, "spin.ini");
        v["data"]["usage"]["cpu_throttled_seconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("no throttled time: {v:#}"))
    };
    let (c0, th0) = (cpu(), throttled());
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu() - c0;
    let wall = t0.elapsed().as_secs_f64();
    // one spinning process under a fifth of a core waits the rest
    let held = throttled() - th0;
    assert!(
        used > 0.05 * wall,
        "the spinner spins: {used} s in {wall} s"
    );
    assert!(
        used < 0.35 * wall,
        "held to 0.2 cores: {used} s of CPU in {wall} s"
    );
    // and the time it was held back is reported (its group's cpu.stat)
    assert!(
        held > 0.3 * wall,
        "throttled {held} s in {wall} s of spinning under 0.2 cores"
    );
    let shown: f64 = top_cell(&ctl_sock, "spin.ini", 7).parse().unwrap();
    assert!(
        shown >= th0 + held - 0.01,
        "THROTTLED s {shown}, held {held}"
    );
    assert!(emp.stop().success());
}

/// `--vassal-pids-max 3`: a uWSGI vassal asking for 6 workers never has
/// more than 3 processes, and its failed forks say why.
#[test]
fn a_pids_limit_caps_a_vassals_forks() {
    if !cgroup2_here() || !v1_controller_here("pids") {
        return;
    }
    let s = setup();
    let app = testkit::uwsgi::write_app(s.tmp.path());
    write_vassal(&s, "forky.ini", &app, 6, "");
    let (emp, ctl_sock) = emperor_ctl(&s, &["--vassal-pids-max", "3"]);
    emp.wait_log("each vassal process may have at most 3 processes", T);
    emp.wait_log("Resource temporarily unavailable", T);
    let seen = most_processes(&ctl_sock, "forky.ini", 20, 3);
    assert!(seen >= 1, "the vassal never had a process");
}

/// A vassal's own `[imperium]` section sets its limits (uWSGI 2.0.21 runs
/// it, ignoring the section); a bad one stops only that vassal, with the
/// reason.
#[test]
fn a_vassals_imperium_section_sets_its_own_limits() {
    if !cgroup2_here() || !v1_controller_here("pids") {
        return;
    }
    let s = setup();
    let app = testkit::uwsgi::write_app(s.tmp.path());
    write_vassal(&s, "own.ini", &app, 4, "\n[imperium]\npids-max = 3\n");
    std::fs::write(
        s.vassals.join("typo.ini"),
        "[uwsgi]\nplugins = python3\n\n[imperium]\nmemory-maxx = 64M\n",
    )
    .unwrap();
    let (free, _) = vassal(&s, "free.ini");
    let (emp, ctl_sock) = emperor_ctl(&s, &[]);
    wait_answer(free, "free.ini", T)
        .unwrap_or_else(|| panic!("free.ini never answered:\n{}", emp.log()));
    emp.wait_log("Resource temporarily unavailable", T);
    most_processes(&ctl_sock, "own.ini", 10, 3);
    emp.wait_log(
        "cannot start vassal typo.ini: its config: [imperium] line 5: unknown key \"memory-maxx\"",
        T,
    );
    // the vassal without a section has no limit: all its workers run
    let fv = show(&ctl_sock, "free.ini");
    assert_eq!(fv["data"]["usage"]["processes"], 3, "{fv:#}");
}

/// A memory limit from the vassal's own `[imperium]` section (none
/// emperor-wide) reports its OOM kill as such too.
#[test]
fn an_oom_kill_under_a_vassals_own_limit_is_reported() {
    if !cgroup2_here() || !memory_controller_here() {
        return;
    }
    let s = setup();
    let hog = write_hog(&s);
    write_vassal(&s, "hog.ini", &hog, 1, "\n[imperium]\nmemory-max = 64M\n");
    let (emp, ctl_sock) = emperor_ctl(&s, &[]);
    emp.wait_log("vassal hog.ini (pid:", T);
    emp.wait_log("was killed by the kernel's OOM killer", T);
    let shown = show(&ctl_sock, "hog.ini");
    assert_eq!(shown["data"]["last_exit"]["oom"], true, "{shown:#}");
}

/// A cold start of 30 test vassals, whose groups the maker thread makes
/// ahead of the spawns: each process is in a group of its own,
/// `imperium-<pid>/<name>/i<N>`, with nothing else in it; a vassal whose
/// spawn fails before its group is used (a typo in its `[imperium]`
/// section) leaves no group made for it.
#[test]
fn groups_made_ahead_hold_one_vassal_each_and_none_is_left_for_a_failed_spawn() {
    if !cgroup2_here() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vassals");
    std::fs::create_dir(&dir).unwrap();
    let rec = |i: usize| tmp.path().join(format!("v{i:02}.rec"));
    for i in 0..30 {
        std::fs::write(
            dir.join(format!("v{i:02}.ini")),
            format!("[vassal]\nrecord = {}\n", rec(i).display()),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("bad.ini"),
        "[vassal]\n[imperium]\nmemory-maxx = 1\n",
    )
    .unwrap();
    let emp = Imperium::start(
        tmp.path(),
        [
            "--emperor".as_ref(),
            dir.as_os_str(),
            "--binary-path".as_ref(),
            testkit::test_vassal_bin().as_os_str(),
        ],
    );
    let pids: Vec<u32> = (0..30)
        .map(|i| {
            let ok = wait_until(T, || !testkit::record_starts(&rec(i)).is_empty());
            assert!(ok, "v{i:02} never started:\n{}", emp.log());
            testkit::record_starts(&rec(i))[0]
        })
        .collect();
    emp.wait_log("cannot start vassal bad.ini", T);
    let unified = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            let (a, b) = l.split_once(" - ")?;
            b.starts_with("cgroup2 ")
                .then(|| a.split_whitespace().nth(4).unwrap().to_string())
        })
        .unwrap();
    let root = Path::new(&unified).join(format!("imperium-{}", emp.pid()));
    let mut groups = std::collections::HashSet::new();
    for (i, pid) in pids.iter().enumerate() {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let path = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let want = format!("/imperium-{}/v{i:02}.ini/i", emp.pid());
        assert!(path.contains(&want), "v{i:02} (pid {pid}) in {path}");
        let group = Path::new(&unified).join(path.trim_start_matches('/'));
        let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), pid.to_string(), "{}", group.display());
        assert!(groups.insert(group), "two vassals share {path}");
    }
    // the failed spawn's group was made ahead, and removed again
    // (by the maker thread, soon after the failure)
    let bad = root.join("bad.ini");
    let left = || -> Vec<PathBuf> {
        std::fs::read_dir(&bad)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(3), || left().is_empty());
    assert!(left().is_empty(), "left for bad.ini: {:?}", left());
}
