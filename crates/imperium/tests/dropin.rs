//! uWSGI's generic options in an emperor config, with the test vassal
//! (fast): hooks, touch-reload, --stop/--reload PIDFILE, logto with
//! log-date, env/unenv, uid/gid/cap with tyrant mode, refusals.
//! crates/imperium/tests/corpus.rs runs real deployments' configs with
//! real uWSGI vassals.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::procs::wait_all_dead;
use testkit::servers::wait_until;
use testkit::{imperium_bin, record_lines, record_starts, test_vassal_bin, Imperium, VassalDir};

const T: Duration = Duration::from_secs(15);

/// The vassal directory, readable by the other users tyrant tests run as.
struct Env(VassalDir);

impl std::ops::Deref for Env {
    type Target = VassalDir;
    fn deref(&self) -> &VassalDir {
        &self.0
    }
}

impl Env {
    fn new() -> Env {
        let d = VassalDir::new();
        // tyrant tests run vassals as other users: let them reach the files
        std::fs::set_permissions(d.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Env(d)
    }

    /// imperium with an emperor ini holding `ini` (after `emperor` and
    /// `binary-path` lines), run as `imperium --ini FILE extra...`.
    fn start_ini(&self, ini: &str, extra: &[&str]) -> Imperium {
        let f = self.path("emperor.ini");
        std::fs::write(
            &f,
            format!(
                "[uwsgi]\nemperor = {}\nbinary-path = {}\n{ini}\n",
                self.vassals.display(),
                test_vassal_bin().display()
            ),
        )
        .unwrap();
        let mut args = vec!["--ini".to_string(), f.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Imperium::start(self.tmp.path(), args)
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn status_field(pid: u32, field: &str) -> String {
    let s = read(Path::new(&format!("/proc/{pid}/status")));
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn start_and_stop_hooks_run_with_the_vassal_name() {
    let e = Env::new();
    let log = e.path("hooks.log");
    let hook = e.path("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$(basename \"$0\") $1 $UWSGI_VASSALS_DIR\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stop = e.path("stop-hook.sh");
    std::fs::copy(&hook, &stop).unwrap();
    let a = e.write("a.ini", "");
    let mut emp = e.start_ini(
        &format!(
            "vassals-start-hook = {}\nvassals-stop-hook = {}",
            hook.display(),
            stop.display()
        ),
        &[],
    );
    assert!(
        wait_until(T, || record_starts(&e.rec("a.ini")).len() == 1),
        "{}",
        emp.log()
    );
    let lines = read(&log);
    assert_eq!(
        lines.lines().next(),
        Some(format!("hook.sh a.ini {}", e.vassals.display()).as_str()),
        "{lines}\n{}",
        emp.log()
    );
    emp.wait_log("vassals start hook", T);
    std::fs::remove_file(&a).unwrap();
    assert!(
        wait_until(T, || read(&log).contains("stop-hook.sh a.ini")),
        "{}",
        emp.log()
    );
    // at shutdown the stop hook runs for every vassal, and is waited for
    e.write("b.ini", "");
    assert!(wait_until(T, || record_starts(&e.rec("b.ini")).len() == 1));
    assert!(emp.stop().success());
    assert!(read(&log).contains("stop-hook.sh b.ini"), "{}", read(&log));
}

#[test]
fn touch_reload_restarts_the_emperor_in_place() {
    let e = Env::new();
    e.write("a.ini", "");
    let touch = e.path("reload.trigger");
    std::fs::write(&touch, "").unwrap();
    let pidfile = e.path("e.pid");
    let mut emp = e.start_ini(
        &format!(
            "touch-reload = {}\npidfile = {}",
            touch.display(),
            pidfile.display()
        ),
        &[],
    );
    assert!(wait_until(T, || record_starts(&e.rec("a.ini")).len() == 1));
    let first = record_starts(&e.rec("a.ini"))[0];
    // a second later, so the mtime surely differs
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&touch, "x").unwrap();
    emp.wait_log("has been touched", T);
    assert!(
        wait_until(T, || record_starts(&e.rec("a.ini")).len() == 2),
        "{}",
        emp.log()
    );
    // the same process, re-executed: same pid, pidfile kept
    assert_eq!(read(&pidfile).trim(), emp.pid().to_string());
    emp.wait_log_n("*** starting imperium", 2, T);
    assert!(wait_all_dead(&[first], T));
    assert!(emp.stop().success());
}

#[test]
fn stop_and_reload_send_signals_through_the_pidfile() {
    let e = Env::new();
    e.write("a.ini", "on-reload = exit");
    let pidfile = e.path("e.pid");
    let mut emp = e.start_ini(&format!("pidfile = {}", pidfile.display()), &[]);
    assert!(wait_until(T, || record_starts(&e.rec("a.ini")).len() == 1));
    let run = |flag: &str| {
        Command::new(imperium_bin())
            .args([flag, &pidfile.display().to_string()])
            .status()
            .unwrap()
    };
    assert!(run("--reload").success());
    assert!(
        wait_until(T, || record_lines(&e.rec("a.ini"))
            .iter()
            .any(|l| l == "reload")),
        "{}",
        emp.log()
    );
    assert!(run("--stop").success());
    assert!(emp.wait_exit(T).success(), "{}", emp.log());
    assert!(!pidfile.exists(), "the pidfile is removed at a clean exit");
    let st = Command::new(imperium_bin())
        .args(["--stop", "/nonexistent/e.pid"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("/nonexistent/e.pid"));
}

#[test]
fn logto_log_date_env_and_unenv() {
    let e = Env::new();
    e.write("a.ini", "");
    let log = e.path("emperor.log");
    let mut emp = e.start_ini(
        &format!(
            "logto = {}\nlog-date = true\nmaster = true\nenv = UWSGI_VASSAL_MARKER=from-env\nunenv = UWSGI_VASSAL_GONE",
            log.display()
        ),
        &[],
    );
    assert!(wait_until(T, || record_starts(&e.rec("a.ini")).len() == 1));
    let lines = record_lines(&e.rec("a.ini"));
    assert!(
        lines.iter().any(|l| l == "env UWSGI_MARKER=from-env"),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("env UWSGI_GONE")),
        "{lines:?}"
    );
    assert!(emp.stop().success());
    let text = read(&log);
    // `Wed Dec  2 04:40:37 2026 - ` then the message
    let started = text
        .lines()
        .find(|l| l.contains("starting imperium"))
        .unwrap_or_else(|| panic!("{text}"));
    let re_like = started.split(" - ").next().unwrap();
    assert_eq!(re_like.split_whitespace().count(), 5, "{started}");
    assert!(text.contains("option 'master' ignored"), "{text}");
    assert!(text.contains("The Emperor is buried."), "{text}");
}

#[test]
fn an_unprivileged_tyrant_emperor_keeps_setuid_and_setgid() {
    let (euid, egid) = testkit::users::test_user("imperium-emp");
    let (vuid, vgid) = testkit::users::test_user("imperium-tyr1");
    let e = Env::new();
    let a = e.write("a.ini", "");
    nix::unistd::chown(&a, Some(vuid.into()), Some(vgid.into())).unwrap();
    // the vassal, running as its owner, must be able to write its record
    std::fs::write(e.rec("a.ini"), "").unwrap();
    nix::unistd::chown(&e.rec("a.ini"), Some(vuid.into()), Some(vgid.into())).unwrap();
    let mut emp = e.start_ini(
        &format!("uid = {euid}\ngid = {egid}\nemperor-tyrant = true\ncap = setgid,setuid"),
        &[],
    );
    assert!(
        wait_until(T, || record_starts(&e.rec("a.ini")).len() == 1),
        "{}",
        emp.log()
    );
    let epid = emp.pid();
    assert!(status_field(epid, "Uid").starts_with(&format!("{euid}\t")));
    assert!(status_field(epid, "Gid").starts_with(&format!("{egid}\t")));
    // CAP_SETGID (6) and CAP_SETUID (7), nothing else
    assert_eq!(status_field(epid, "CapEff"), "00000000000000c0");
    let vpid = record_starts(&e.rec("a.ini"))[0];
    assert!(status_field(vpid, "Uid").starts_with(&format!("{vuid}\t")));
    assert_eq!(status_field(vpid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(vpid, "CapPrm"), "0000000000000000");
    assert!(emp.stop().success());
    assert!(wait_all_dead(&[vpid], T));
}

#[test]
fn unsupported_and_strict_options_stop_the_start_with_file_and_line() {
    let e = Env::new();
    let mut emp = e.start_ini("socket = :8000", &[]);
    let st = emp.wait_exit(T);
    assert!(!st.success());
    let log = emp.log();
    assert!(
        log.contains("emperor.ini:4: option 'socket' is not supported"),
        "{log}"
    );
    let mut emp = e.start_ini("frobnicate = 1", &[]);
    emp.wait_log("unknown option 'frobnicate' ignored", T);
    // the signal handlers are in place once it says it starts
    emp.wait_log("starting imperium", T);
    assert!(emp.stop().success());
    let mut emp = e.start_ini("frobnicate = 1", &["--strict"]);
    assert!(!emp.wait_exit(T).success());
    assert!(
        emp.log().contains("unknown option 'frobnicate'"),
        "{}",
        emp.log()
    );
}

#[test]
fn procname_log_reopen_abstract_stats_and_early_emperor() {
    let (euid, _) = testkit::users::test_user("imperium-emp");
    let e = Env::new();
    e.write("a.ini", "");
    let log = e.path("emperor.log");
    let name = format!("imperium-test-{}", std::process::id());
    let mut emp = e.start_ini(
        &format!(
            "emperor-procname = uWSGI Emperor {name}\nlogto = {}\nlog-reopen = true\nemperor-stats = {name}.stats\nabstract-socket = true\nearly-emperor = true\nuid = {euid}",
            log.display()
        ),
        &[],
    );
    assert!(
        wait_until(T, || record_starts(&e.rec("a.ini")).len() == 1),
        "{}",
        read(&log)
    );
    let pid = emp.pid();
    // the command line, as pgrep -f sees it
    let cmdline = read(Path::new(&format!("/proc/{pid}/cmdline")));
    assert!(
        cmdline.starts_with(&format!("uWSGI Emperor {name}")),
        "{cmdline:?}"
    );
    let out = Command::new("pgrep")
        .args(["-f", &format!("^uWSGI Emperor {name}")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pid.to_string());
    // early-emperor: the uid is not applied to the emperor
    assert!(status_field(pid, "Uid").starts_with("0\t"));
    // the stats socket is in the abstract namespace: no file
    assert!(!e.path(&format!("{name}.stats")).exists());
    let unix = read(Path::new("/proc/net/unix"));
    assert!(
        unix.contains(&format!("@{name}.stats")),
        "not in /proc/net/unix"
    );
    // log-reopen: a logrotate moved the file away; SIGHUP makes a new one
    std::fs::rename(&log, e.path("emperor.log.1")).unwrap();
    emp.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(T, || read(&log).contains("reopened")),
        "{}",
        read(&e.path("emperor.log.1"))
    );
    assert!(emp.stop().success());
    assert!(read(&log).contains("The Emperor is buried."));
}
