//! Lifecycle behaviour with the test vassal (fast and deterministic):
//! change detection, throttling, exile, watchdogs, signals, the launch
//! contract (argv, environment, fds).

use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use testkit::procs::{alive, wait_all_dead};
use testkit::{record_lines, record_starts, test_vassal_bin, Imperium, VassalDir};

const T: Duration = Duration::from_secs(15);

/// The vassal directory, with the ways these tests start imperium on it.
struct Env(VassalDir);

impl std::ops::Deref for Env {
    type Target = VassalDir;
    fn deref(&self) -> &VassalDir {
        &self.0
    }
}

impl Env {
    fn new() -> Env {
        Env(VassalDir::new())
    }

    fn start(&self, extra: &[&str]) -> Imperium {
        self.start_with(test_vassal_bin().to_str().unwrap(), extra, &[])
    }

    /// imperium on the vassal directory with `binary` as --binary-path.
    fn start_with(&self, binary: &str, extra: &[&str], env: &[(&str, &str)]) -> Imperium {
        let mut args: Vec<String> = vec![
            "--emperor".into(),
            self.vassals.display().to_string(),
            "--binary-path".into(),
            binary.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Imperium::start_with_env(self.tmp.path(), args, env)
    }
}

fn wait_lines(path: &Path, needle: &str, n: usize) -> bool {
    testkit::servers::wait_until(T, || {
        record_lines(path)
            .iter()
            .filter(|l| l.contains(needle))
            .count()
            >= n
    })
}

fn count(path: &Path, needle: &str) -> usize {
    record_lines(path)
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn two_edits_within_one_second_both_reload_and_mtime_backwards_reloads() {
    let e = Env::new();
    let f = e.write("a.ini", "marker = 1");
    let emp = e.start(&[]);
    assert!(wait_lines(&e.rec("a.ini"), "start", 1), "{}", emp.log());
    let t0 = std::time::Instant::now();
    std::fs::write(
        &f,
        format!(
            "[vassal]\nrecord = {}\nmarker = 2\n",
            e.rec("a.ini").display()
        ),
    )
    .unwrap();
    assert!(wait_lines(&e.rec("a.ini"), "marker=2", 1), "{}", emp.log());
    std::fs::write(
        &f,
        format!(
            "[vassal]\nrecord = {}\nmarker = 3\n",
            e.rec("a.ini").display()
        ),
    )
    .unwrap();
    assert!(wait_lines(&e.rec("a.ini"), "marker=3", 1), "{}", emp.log());
    assert!(t0.elapsed() < Duration::from_secs(1) || count(&e.rec("a.ini"), "reload") == 2);
    // an mtime set back to the past (a restored backup) reloads too
    let old = SystemTime::now() - Duration::from_secs(86_400);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert!(wait_lines(&e.rec("a.ini"), "reload", 3), "{}", emp.log());
    // graceful reload keeps the pid
    let starts = record_starts(&e.rec("a.ini"));
    assert_eq!(starts.len(), 4);
    assert!(starts.iter().all(|p| *p == starts[0]), "{starts:?}");
}

#[test]
fn a_burst_of_writes_is_one_reload() {
    use std::io::Write;
    let e = Env::new();
    let f = e.write("a.ini", "");
    let emp = e.start(&[]);
    assert!(wait_lines(&e.rec("a.ini"), "start", 1), "{}", emp.log());
    let body = std::fs::read_to_string(&f).unwrap();
    // an editor writing its buffer in many chunks: one reload, exactly
    let mut file = std::fs::File::create(&f).unwrap();
    file.write_all(body.as_bytes()).unwrap();
    for i in 0..20 {
        writeln!(file, "; chunk {i}").unwrap();
        file.flush().unwrap();
    }
    drop(file);
    assert!(wait_lines(&e.rec("a.ini"), "reload", 1), "{}", emp.log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&e.rec("a.ini"), "reload"), 1, "{}", emp.log());
    // 20 whole rewrites in a row are coalesced too (the first goes at
    // once, the rest wait for the end of a 10 ms window per name; a loaded
    // machine may split the burst a little)
    for i in 0..20 {
        std::fs::write(&f, format!("{body}; {i}\n")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let n = count(&e.rec("a.ini"), "reload") - 1;
    assert!(
        (1..=5).contains(&n),
        "20 rewrites in a burst gave {n} reloads"
    );
}

#[test]
fn a_crash_loop_is_throttled_not_respawned_in_a_tight_loop() {
    let e = Env::new();
    e.write("crash.ini", "exit-after-ms = 20");
    let emp = e.start(&[]);
    std::thread::sleep(Duration::from_secs(4));
    let n = record_starts(&e.rec("crash.ini")).len();
    // windows 0, 1 s, 2 s: about 4 starts in 4 s (uWSGI's tight loop would be ~100)
    assert!((3..=5).contains(&n), "{n} starts in 4 s:\n{}", emp.log());
    assert!(emp.log().contains("throttling vassal crash.ini"));
    assert!(emp
        .log()
        .contains("unloyal bad behaving vassal found: crash.ini"));
    // SIGURG clears the blacklist: the next death respawns at once
    emp.signal(Signal::SIGURG);
    emp.wait_log("cleaning up blacklist", T);
}

#[test]
fn exit_code_26_is_not_respawned_until_the_config_changes() {
    let e = Env::new();
    let f = e.write("exile.ini", "exit-after-ms = 10\nexit-code = 26");
    let emp = e.start(&[]);
    emp.wait_log("exited with code 26 (exile)", T);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(record_starts(&e.rec("exile.ini")).len(), 1);
    let body = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        body.replace("exit-code = 26", "exit-code = 26\n; changed"),
    )
    .unwrap();
    assert!(wait_lines(&e.rec("exile.ini"), "start", 2), "{}", emp.log());
}

#[test]
fn heartbeat_watchdog_kills_a_silent_vassal_and_respawns_it() {
    let e = Env::new();
    e.write(
        "hb.ini",
        "heartbeat = 100\nheartbeat-stop-after-ms = 300\nloyal = 1",
    );
    let emp = e.start(&["--emperor-required-heartbeat", "1"]);
    emp.wait_log("sent no heartbeat in last 1 seconds", T);
    assert!(wait_lines(&e.rec("hb.ini"), "start", 2), "{}", emp.log());
    let starts = record_starts(&e.rec("hb.ini"));
    assert_ne!(starts[0], starts[1]);
}

#[test]
fn a_vassal_that_ignores_stop_is_killed_after_the_curse_tolerance() {
    let e = Env::new();
    let f = e.write("stubborn.ini", "ignore-stop = 1");
    let emp = e.start(&["--emperor-curse-tolerance", "1"]);
    assert!(wait_lines(&e.rec("stubborn.ini"), "start", 1));
    let pid = record_starts(&e.rec("stubborn.ini"))[0];
    std::fs::remove_file(f).unwrap();
    emp.wait_log("still alive 1 s after being told to stop", T);
    emp.wait_log("removed uwsgi instance stubborn.ini", T);
    assert!(!alive(pid));
}

#[test]
fn shutdown_past_reload_mercy_kills_and_still_exits_zero() {
    let e = Env::new();
    e.write("stubborn.ini", "ignore-stop = 1");
    e.write("nice.ini", "");
    let mut emp = e.start(&["--reload-mercy", "1"]);
    assert!(wait_lines(&e.rec("stubborn.ini"), "start", 1));
    assert!(wait_lines(&e.rec("nice.ini"), "start", 1));
    let pids = [
        record_starts(&e.rec("stubborn.ini"))[0],
        record_starts(&e.rec("nice.ini"))[0],
    ];
    let st = emp.stop();
    assert!(st.success(), "{st:?}");
    let log = emp.log();
    assert!(log.contains("NO MERCY for vassal stubborn.ini"), "{log}");
    assert!(!log.contains("NO MERCY for vassal nice.ini"), "{log}");
    assert!(wait_all_dead(&pids, Duration::from_secs(2)));
}

#[test]
fn sighup_reloads_all_and_sigusr1_lists_them() {
    let e = Env::new();
    e.write("a.ini", "");
    e.write("b.ini", "");
    let emp = e.start(&[]);
    assert!(wait_lines(&e.rec("a.ini"), "start", 1) && wait_lines(&e.rec("b.ini"), "start", 1));
    emp.signal(Signal::SIGHUP);
    assert!(wait_lines(&e.rec("a.ini"), "reload", 1) && wait_lines(&e.rec("b.ini"), "reload", 1));
    emp.signal(Signal::SIGUSR1);
    emp.wait_log("vassal instance a.ini (last modified", T);
    emp.wait_log("vassal instance b.ini (last modified", T);
}

#[test]
fn launch_contract_argv_env_fds_and_cwd() {
    let e = Env::new();
    e.write("c.ini", "");
    let emp = e.start_with(
        test_vassal_bin().to_str().unwrap(),
        &[],
        &[
            ("UWSGI_VASSAL_PROCESSES", "8"),
            ("UWSGI_RELOADS", "3"),
            ("NOTIFY_SOCKET", "/run/nowhere"),
        ],
    );
    let rec = e.rec("c.ini");
    assert!(
        wait_lines(&rec, "env UWSGI_EMPEROR_FD=", 1),
        "{}",
        emp.log()
    );
    let lines = record_lines(&rec);
    let has = |s: &str| lines.iter().any(|l| l == s);
    assert!(has("env UWSGI_PROCESSES=8"), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("env UWSGI_VASSAL_")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("env UWSGI_RELOADS")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("env NOTIFY_SOCKET")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("env UWSGI_EMPEROR_FD_CONFIG")),
        "file vassal has no config pipe: {lines:?}"
    );
    assert!(has("fd0 /dev/null"), "{lines:?}");
    assert!(
        has(&format!(
            "cwd {}",
            e.vassals.canonicalize().unwrap().display()
        )),
        "{lines:?}"
    );
    // exactly 0, 1, 2 and the emperor socket
    let fd: String = lines
        .iter()
        .find_map(|l| l.strip_prefix("env UWSGI_EMPEROR_FD="))
        .unwrap()
        .to_string();
    assert!(has(&format!("fds 0,1,2,{fd}")), "{lines:?}");
}

#[test]
fn missing_binary_is_reported_and_the_fallback_is_used() {
    let e = Env::new();
    e.write("f.ini", "");
    // no fallback: a clear error, no respawn loop
    let emp = e.start_with("/nonexistent/uwsgi", &[], &[]);
    emp.wait_log("is the uwsgi binary in your system PATH ?", T);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(emp.count("cannot start vassal f.ini"), 1, "{}", emp.log());
    drop(emp);
    // with a fallback the vassal runs
    let fallback = test_vassal_bin().display().to_string();
    let emp = e.start_with(
        "/nonexistent/uwsgi",
        &["--emperor-wrapper-fallback", &fallback],
        &[],
    );
    assert!(wait_lines(&e.rec("f.ini"), "start", 1), "{}", emp.log());
}

#[test]
fn a_binary_that_cannot_be_executed_yet_is_retried_until_it_can() {
    // a package upgrade or a venv rebuild in progress: the binary is
    // missing for a while, and the vassal starts once it is back (uWSGI
    // re-adds it at its next scan; the config is never touched here)
    let e = Env::new();
    e.write("f.ini", "");
    let bin = e.tmp.path().join("bin/uwsgi");
    let emp = e.start_with(&bin.display().to_string(), &[], &[]);
    emp.wait_log("is the uwsgi binary in your system PATH ?", T);
    emp.wait_log("throttling vassal f.ini: respawn in", T);
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(test_vassal_bin(), &bin).unwrap();
    assert!(wait_lines(&e.rec("f.ini"), "start", 1), "{}", emp.log());
    assert!(emp.count("cannot start vassal f.ini") >= 1, "{}", emp.log());
}

#[test]
fn a_source_that_goes_away_keeps_the_vassals_running() {
    let e = Env::new();
    e.write("a.ini", "");
    let emp = e.start(&["--emperor-freq", "1"]);
    assert!(wait_lines(&e.rec("a.ini"), "start", 1));
    let pid = record_starts(&e.rec("a.ini"))[0];
    let moved = e.tmp.path().join("moved-away");
    std::fs::rename(&e.vassals, &moved).unwrap();
    emp.wait_log("is degraded", T);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        alive(pid),
        "vassal stopped because its source went away:\n{}",
        emp.log()
    );
    assert!(!emp.log().contains("stop the uwsgi instance a.ini"));
    std::fs::rename(&moved, &e.vassals).unwrap();
    emp.wait_log_n("is connected", 2, T);
    assert!(alive(pid));
    assert_eq!(record_starts(&e.rec("a.ini")).len(), 1);
}

#[test]
fn glob_monitor_ids_are_paths_and_do_not_collide() {
    let tmp = tempfile::tempdir().unwrap();
    for d in ["one", "two"] {
        std::fs::create_dir(tmp.path().join(d)).unwrap();
        let rec = tmp.path().join(format!("{d}.rec"));
        std::fs::write(
            tmp.path().join(d).join("app.ini"),
            format!("[vassal]\nrecord = {}\n", rec.display()),
        )
        .unwrap();
    }
    let emp = Imperium::start(
        tmp.path(),
        [
            "--emperor",
            "glob://*/app.ini",
            "--binary-path",
            &test_vassal_bin().display().to_string(),
        ],
    );
    for d in ["one", "two"] {
        assert!(
            wait_lines(&tmp.path().join(format!("{d}.rec")), "start", 1),
            "{}",
            emp.log()
        );
        emp.wait_log(&format!("spawned uwsgi instance {d}/app.ini"), T);
    }
    // a new directory matching the pattern is picked up
    std::fs::create_dir(tmp.path().join("three")).unwrap();
    let rec = tmp.path().join("three.rec");
    std::fs::write(
        tmp.path().join("three/app.ini"),
        format!("[vassal]\nrecord = {}\n", rec.display()),
    )
    .unwrap();
    assert!(wait_lines(&rec, "start", 1), "{}", emp.log());
    std::fs::remove_file(tmp.path().join("one/app.ini")).unwrap();
    emp.wait_log("removed uwsgi instance one/app.ini", T);
}

#[test]
fn bare_paths_that_do_not_exist_are_a_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut emp = Imperium::start(tmp.path(), ["--emperor", "/nonexistent/vassals"]);
    let st = emp.wait_exit(T);
    assert!(!st.success());
    assert!(emp.log().contains("no such directory"), "{}", emp.log());
    let mut emp = Imperium::start(tmp.path(), ["--emperor-freq", "never"]);
    assert!(!emp.wait_exit(T).success());
    assert!(emp.log().contains("--emperor-freq"), "{}", emp.log());
}

#[test]
fn symlinks_are_followed_by_default_and_are_vassals_themselves_with_nofollow() {
    use std::os::unix::fs::symlink;
    let e = Env::new();
    let target = e.tmp.path().join("real.ini");
    std::fs::write(
        &target,
        format!("[vassal]\nrecord = {}\n", e.rec("link.ini").display()),
    )
    .unwrap();
    symlink(&target, e.vassals.join("link.ini")).unwrap();
    symlink(
        e.tmp.path().join("missing.ini"),
        e.vassals.join("dangling.ini"),
    )
    .unwrap();
    let emp = e.start(&[]);
    assert!(wait_lines(&e.rec("link.ini"), "start", 1), "{}", emp.log());
    assert!(
        !emp.log().contains("dangling.ini"),
        "a dangling symlink is not a vassal:\n{}",
        emp.log()
    );
    drop(emp);

    // with --emperor-nofollow the link's own mtime counts: touch -h reloads
    let _ = std::fs::remove_file(e.rec("link.ini"));
    let emp = e.start(&["--emperor-nofollow"]);
    assert!(wait_lines(&e.rec("link.ini"), "start", 1), "{}", emp.log());
    let st = std::process::Command::new("touch")
        .args(["-h", "-d", "2001-01-01"])
        .arg(e.vassals.join("link.ini"))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(wait_lines(&e.rec("link.ini"), "reload", 1), "{}", emp.log());
}

#[test]
fn the_open_file_limit_is_raised_for_the_emperor_but_not_for_vassals() {
    let prlimit = testkit::servers::require_program("prlimit", "util-linux");
    let e = Env::new();
    e.write("n.ini", "");
    let args = [
        "--emperor".to_string(),
        e.vassals.display().to_string(),
        "--binary-path".to_string(),
        test_vassal_bin().display().to_string(),
    ];
    let emp = Imperium::start_wrapped(
        &[prlimit.to_str().unwrap(), "--nofile=1024:8192", "--"],
        e.tmp.path(),
        args,
        &[],
    );
    assert!(wait_lines(&e.rec("n.ini"), "nofile", 1), "{}", emp.log());
    emp.wait_log("raised the open-file limit from 1024 to 8192", T);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", emp.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(line.split_whitespace().nth(3), Some("8192"), "{line}");
    assert!(record_lines(&e.rec("n.ini")).contains(&"nofile 1024".to_string()));
}

#[test]
fn a_slow_on_demand_exec_does_not_stall_the_emperor() {
    let e = Env::new();
    e.write("a.ini", "");
    // prints nothing (not on demand); takes 4 s for slow*.ini
    let exec = r#"f() { case "$1" in slow*) sleep 4;; esac; }; f"#;
    let emp = e.start(&["--emperor-on-demand-exec", exec]);
    assert!(wait_lines(&e.rec("a.ini"), "start", 1), "{}", emp.log());
    let pid = record_starts(&e.rec("a.ini"))[0];
    e.write("slow.ini", "");
    // the monitor now waits for the command; the emperor goes on working
    std::thread::sleep(Duration::from_millis(300));
    let killed = std::time::Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(wait_lines(&e.rec("a.ini"), "start", 2), "{}", emp.log());
    let respawned = killed.elapsed();
    assert!(
        respawned < Duration::from_secs(2),
        "the respawn waited {respawned:?} for the on-demand command:\n{}",
        emp.log()
    );
    assert!(record_starts(&e.rec("slow.ini")).is_empty());
    // and the slow vassal starts once its command is done
    assert!(wait_lines(&e.rec("slow.ini"), "start", 1), "{}", emp.log());
}

#[test]
fn sigterm_stops_the_emperor_even_when_its_parent_left_it_blocked() {
    use nix::sys::signal::SigSet;
    let e = Env::new();
    e.write("a.ini", "");
    // a blocked mask is inherited across fork and exec
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().unwrap();
    let mut emp = e.start(&[]);
    set.thread_unblock().unwrap();
    assert!(wait_lines(&e.rec("a.ini"), "start", 1), "{}", emp.log());
    let pid = record_starts(&e.rec("a.ini"))[0];
    emp.signal(Signal::SIGTERM);
    let st = emp.wait_exit(T);
    assert!(st.success(), "{st:?}\n{}", emp.log());
    assert!(wait_all_dead(&[pid], T), "vassal left running");
}

/// Exits are learnt from the kernel's process connector where the emperor
/// may use it, else with `waitid(P_ALL)`: both ways see a crash (and
/// respawn it), a stop, and a vassal killed from outside.
#[test]
fn both_ways_of_watching_exits_see_crashes_stops_and_kills() {
    // the kernel names exits to root in the initial user and pid
    // namespaces where it has the connector (elsewhere the emperor falls
    // back, saying why)
    let ns = |n: &str| {
        std::fs::read_link(format!("/proc/self/ns/{n}"))
            .map(|l| l.display().to_string())
            .unwrap_or_default()
    };
    let named = nix::unistd::geteuid().is_root()
        && ns("user") == "user:[4026531837]"
        && ns("pid") == "pid:[4026531836]"
        && std::fs::read_to_string("/proc/net/connector").is_ok_and(|s| s.contains("cn_proc"));
    if !named {
        eprintln!("SKIPPED (the named way): not root in the initial namespaces, or no process connector in this kernel");
    }
    for (env, line) in [
        (
            &[][..],
            "vassal exits are named by the kernel (the process connector)",
        ),
        (
            &[("IMPERIUM_EXIT_WATCH", "waitid")][..],
            "vassal exits are found with waitid(P_ALL)",
        ),
    ] {
        if env.is_empty() && !named {
            continue;
        }
        let e = Env::new();
        e.write("crash.ini", "exit-after-ms = 200");
        let stop = e.write("stop.ini", "loyal = 1");
        e.write("kill.ini", "loyal = 1");
        let emp = e.start_with(test_vassal_bin().to_str().unwrap(), &[], env);
        emp.wait_log(line, T);
        assert!(wait_lines(&e.rec("crash.ini"), "start", 2), "{}", emp.log());
        assert!(wait_lines(&e.rec("kill.ini"), "start", 1), "{}", emp.log());
        let victim = record_starts(&e.rec("kill.ini"))[0];
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        emp.wait_log("vassal kill.ini (pid: ", T);
        assert!(wait_lines(&e.rec("kill.ini"), "start", 2), "{}", emp.log());
        assert!(wait_lines(&e.rec("stop.ini"), "start", 1), "{}", emp.log());
        std::fs::remove_file(stop).unwrap();
        emp.wait_log("removed uwsgi instance stop.ini", T);
        assert!(!alive(record_starts(&e.rec("stop.ini"))[0]));
    }
}
