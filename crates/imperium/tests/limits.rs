//! A spawn that fails because a resource ran out (here the emperor's own
//! open-file limit) is deferred and tried again with backoff: the vassal is
//! never given up, and it starts as soon as fds are free (issue 16).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use testkit::{test_vassal_bin, Imperium, VassalDir};

/// The emperor's open-file limit (soft and hard): room for some 40 test
/// vassals at one fd each (the control socket), not for all of [`N`], and
/// once those that started are gone, for all the others.
const LIMIT: u64 = 64;
const N: usize = 70;

/// The vassals that said they accept requests, from the emperor's log.
fn ready(emp: &Imperium) -> BTreeSet<String> {
    emp.log()
        .lines()
        .filter_map(|l| {
            let rest = l.split("[emperor] vassal ").nth(1)?;
            let (name, tail) = rest.split_once(' ')?;
            tail.starts_with("is ready to accept requests")
                .then(|| name.to_string())
        })
        .collect()
}

/// The soft open-file limit of a process, from /proc.
fn nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn vassals_beyond_the_open_file_limit_all_start_once_fds_are_free() {
    let e = VassalDir::new();
    for i in 0..N {
        e.write(&format!("v{i:02}.ini"), "loyal = 1");
    }
    let limit = format!("--nofile={LIMIT}:{LIMIT}");
    let mut emp = Imperium::start_wrapped(
        &["prlimit", &limit, "--"],
        e.tmp.path(),
        [
            "--emperor".as_ref(),
            e.vassals.as_os_str(),
            "--binary-path".as_ref(),
            test_vassal_bin().as_os_str(),
            "--emperor-freq".as_ref(),
            "60".as_ref(),
        ],
        &[],
    );
    emp.wait_log("a resource ran out", Duration::from_secs(20));
    assert_eq!(
        nofile(emp.pid()),
        LIMIT,
        "the emperor raised its hard limit (it holds CAP_SYS_RESOURCE): this test needs an emperor that cannot"
    );
    // the vassals that fit start; the others wait, deferred, not exiled
    std::thread::sleep(Duration::from_secs(2));
    let first = ready(&emp);
    assert!(
        !first.is_empty() && first.len() < N,
        "{} of {N} started under a limit of {LIMIT} fds\n{}",
        first.len(),
        emp.log()
    );
    // free fds: the configs of the vassals that run go away; every other
    // vassal must come up, without anyone touching its config
    for name in &first {
        std::fs::remove_file(e.vassals.join(name)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut all = ready(&emp);
    while all.len() < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        all = ready(&emp);
    }
    assert_eq!(
        all.len(),
        N,
        "every vassal started once fds were free\n{}",
        emp.log()
    );
    let log = emp.log();
    // one warning per burst (fds freed one by one may end a burst and
    // start another), the rest counted: debug lines here
    let warnings = log.matches("further deferrals are counted").count();
    let bursts_ended = log.matches("vassals start again:").count();
    let deferrals = log.matches("deferred again").count();
    assert!(warnings >= 1, "{log}");
    assert_eq!(warnings, bursts_ended, "each burst ends once\n{log}");
    assert!(deferrals > warnings, "{log}");
    // no other spawn error: every "cannot start" line is a deferral's
    assert_eq!(
        log.matches("cannot start vassal ").count(),
        warnings,
        "{log}"
    );
    assert!(!log.contains("exile"), "{log}");
    emp.stop();
}

/// The emperor's open fds, from /proc.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_running_vassal_costs_the_emperor_one_fd() {
    let e = VassalDir::new();
    e.write("first.ini", "loyal = 1");
    let mut emp = Imperium::start(
        e.tmp.path(),
        [
            "--emperor".as_ref(),
            e.vassals.as_os_str(),
            "--binary-path".as_ref(),
            test_vassal_bin().as_os_str(),
            "--vassal-cgroup".as_ref(),
            "off".as_ref(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready(&emp).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = open_fds(emp.pid());
    const MORE: usize = 40;
    for i in 0..MORE {
        e.write(&format!("v{i:02}.ini"), "loyal = 1");
    }
    while ready(&emp).len() < MORE + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ready(&emp).len(), MORE + 1, "{}", emp.log());
    std::thread::sleep(Duration::from_millis(300));
    let after = open_fds(emp.pid());
    // the control socket of each; no pidfd (a pidfd each made it two)
    assert_eq!(
        after - before,
        MORE,
        "{before} fds with 1 vassal, {after} with {}",
        MORE + 1
    );
    emp.stop();
}
