//! Shared by the zoo:// and etcd:// end-to-end tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use testkit::procs::{alive, tree, wait_all_dead};
use testkit::uwsgi::{http_get, uwsgi_bin, vassal_ini_on, wait_answer};
use testkit::Imperium;

/// Deadline for one step.
pub const T: Duration = Duration::from_secs(30);

/// Starts imperium on one `--emperor` URL with real uWSGI.
pub fn emperor(dir: &Path, url: &str, env: &[(&str, &str)]) -> Imperium {
    Imperium::start_with_env(
        dir,
        [
            "--emperor",
            url,
            "--binary-path",
            uwsgi_bin().to_str().expect("utf-8 path"),
            "--reload-mercy",
            "10",
        ],
        env,
    )
}

/// A vassal ini whose port comes from the emperor's environment
/// (`$(HOSTPORT)`), so emperors on one "host" each bind their own port
/// from the same shared config.
pub fn ini_env_port(app: &Path, marker: &str) -> String {
    let probe = vassal_ini_on(app, marker, 1);
    let with_var = probe.replace("127.0.0.1:1\n", "127.0.0.1:$(HOSTPORT)\n");
    assert_ne!(probe, with_var, "vassal_ini_on changed its format");
    with_var
}

/// The uWSGI master of a worker.
pub fn master_of(worker: u32) -> u32 {
    testkit::procs::ppid(worker).expect("worker has a parent")
}

// ----- the steps of the create/change/outage/delete scenario ----------------
//
// Both tests put `app.ini` (marker "one" on `port`) and a bad record
// `bad.ini` under the watched path before the emperor starts, then change
// app.ini to "two", stop and restart the server, change app.ini to "three"
// and delete it. What imperium must do at each step is the same for zoo://
// and etcd://.

/// app.ini answers "one" from a master that is the emperor's child; the bad
/// record was skipped (the log names bad.ini and says `skipped`), not
/// spawned. Returns the master.
pub fn app_up_bad_record_skipped(emp: &Imperium, port: u16, skipped: &str) -> u32 {
    let worker = wait_answer(port, "one", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    let master = master_of(worker);
    assert_eq!(testkit::procs::ppid(master), Some(emp.pid()));
    emp.wait_log("vassal app.ini has been spawned", T);
    let log = emp.log();
    assert!(log.contains("bad.ini") && log.contains(skipped), "{log}");
    assert!(!log.contains("vassal bad.ini has been spawned"), "{log}");
    master
}

/// The change to "two" is a graceful reload: the same master answers.
pub fn app_reloaded_gracefully(emp: &Imperium, port: u16, master: u32) {
    emp.wait_log("reload the uwsgi instance app.ini", T);
    let w2 = wait_answer(port, "two", T).unwrap_or_else(|| panic!("no reload:\n{}", emp.log()));
    assert_eq!(master_of(w2), master, "graceful reload keeps the master");
}

/// The server is down: the monitor is degraded, the vassal keeps running.
pub fn app_kept_while_server_down(emp: &Imperium, port: u16, master: u32) {
    emp.wait_log("keeping its", T);
    assert!(http_get(port, "/").is_some_and(|b| b.contains("marker=two")));
    assert!(alive(master));
}

/// The server is back and app.ini changed to "three": the change flows,
/// and the outage did not restart the vassal.
pub fn app_changed_after_restart(emp: &Imperium, port: u16, master: u32) {
    let w3 = wait_answer(port, "three", T)
        .unwrap_or_else(|| panic!("no change after restart:\n{}", emp.log()));
    assert_eq!(
        master_of(w3),
        master,
        "the outage did not restart the vassal"
    );
}

/// app.ini was deleted: the vassal and all its processes (`all`, taken
/// before the delete) go, and the emperor stops cleanly.
pub fn app_removed(emp: &mut Imperium, all: &[u32], master: u32) {
    emp.wait_log("removed uwsgi instance app.ini", T);
    assert!(wait_all_dead(all, T), "left: {:?}", tree(master));
    assert!(emp.stop().success());
}
