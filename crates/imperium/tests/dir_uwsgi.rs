//! dir:// with real uWSGI vassals (Debian's uwsgi-core + python3 plugin):
//! spawn, graceful reload, destroy, respawn, shutdown, no orphans.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::procs::{alive, children, tree, wait_all_dead};
use testkit::uwsgi::{
    http_get, master_of, parse_answer, uwsgi_bin, vassal_ini, wait_answer, write_app,
};
use testkit::Imperium;

const T: Duration = Duration::from_secs(20);

fn emperor(dir: &Path, vassals: &Path) -> Imperium {
    Imperium::start(
        dir,
        [
            "--emperor".as_ref(),
            vassals.as_os_str(),
            "--binary-path".as_ref(),
            uwsgi_bin().as_os_str(),
            "--reload-mercy".as_ref(),
            "10".as_ref(),
        ],
    )
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let vassals = tmp.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    let app = write_app(tmp.path());
    (tmp, vassals, app)
}

/// The uWSGI master of the vassal serving `port`: the parent of the worker.
#[test]
fn spawn_reload_destroy_with_real_uwsgi() {
    let (tmp, vassals, app) = setup();
    let (ini, port) = vassal_ini(&app, "one");
    let cfg = vassals.join("app.ini");
    std::fs::write(&cfg, ini).unwrap();
    let mut emp = emperor(tmp.path(), &vassals);

    // a new config file brings up a vassal that answers HTTP
    let worker = wait_answer(port, "one", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    let master = master_of(worker);
    assert_eq!(
        testkit::procs::ppid(master),
        Some(emp.pid()),
        "the master is imperium's child"
    );
    emp.wait_log("vassal app.ini has been spawned", T);
    let workers_before = children(master);
    assert_eq!(workers_before.len(), 2, "processes = 2");

    // changing the file reloads it gracefully: same master, new workers,
    // new config seen
    let (ini2, _) = (testkit::uwsgi::vassal_ini_on(&app, "two", port), ());
    std::fs::write(&cfg, ini2).unwrap();
    emp.wait_log("reload the uwsgi instance app.ini", T);
    let w2 = wait_answer(port, "two", T)
        .unwrap_or_else(|| panic!("reloaded vassal never answered:\n{}", emp.log()));
    assert_eq!(
        master_of(w2),
        master,
        "graceful reload keeps the master pid"
    );
    assert!(alive(master));
    let workers_after = children(master);
    assert!(
        workers_after.iter().all(|w| !workers_before.contains(w)),
        "workers changed: {workers_before:?} -> {workers_after:?}"
    );

    // deleting the file stops the vassal and every process of it
    let all = tree(master);
    std::fs::remove_file(&cfg).unwrap();
    emp.wait_log("removed uwsgi instance app.ini", T);
    assert!(
        wait_all_dead(&all, T),
        "vassal processes left: {:?}",
        tree(master)
    );
    assert!(http_get(port, "/").is_none());
    assert!(emp.stop().success());
}

#[test]
fn sigterm_stops_every_vassal_and_exits_zero() {
    let (tmp, vassals, app) = setup();
    let mut ports = Vec::new();
    for (i, m) in ["a", "b"].iter().enumerate() {
        let (ini, port) = vassal_ini(&app, m);
        std::fs::write(vassals.join(format!("v{i}.ini")), ini).unwrap();
        ports.push((port, *m));
    }
    let mut emp = emperor(tmp.path(), &vassals);
    let mut procs = Vec::new();
    for (port, m) in &ports {
        let w = wait_answer(*port, m, T).unwrap_or_else(|| panic!("no answer:\n{}", emp.log()));
        procs.extend(tree(master_of(w)));
    }
    let st = emp.stop();
    assert!(st.success(), "exit status {st:?}");
    let log = emp.log();
    assert!(log.contains("RAGNAROK EVOKED"), "{log}");
    assert!(log.contains("The Emperor is buried."), "{log}");
    assert!(
        wait_all_dead(&procs, Duration::from_secs(5)),
        "left behind: {procs:?}"
    );
}

#[test]
fn sigkill_of_imperium_leaves_no_vassal_behind() {
    let (tmp, vassals, app) = setup();
    let (ini, port) = vassal_ini(&app, "k");
    std::fs::write(vassals.join("k.ini"), ini).unwrap();
    let mut emp = emperor(tmp.path(), &vassals);
    let w = wait_answer(port, "k", T).unwrap_or_else(|| panic!("no answer:\n{}", emp.log()));
    let procs = tree(master_of(w));
    assert!(procs.len() >= 3, "master and two workers: {procs:?}");
    emp.signal(Signal::SIGKILL);
    emp.wait_exit(Duration::from_secs(5));
    assert!(
        wait_all_dead(&procs, Duration::from_secs(5)),
        "processes outlived a SIGKILLed imperium by 5 s: {:?}",
        procs.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
}

#[test]
fn a_vassal_killed_with_sigkill_is_respawned() {
    let (tmp, vassals, app) = setup();
    let (ini, port) = vassal_ini(&app, "r");
    std::fs::write(vassals.join("r.ini"), ini).unwrap();
    let emp = emperor(tmp.path(), &vassals);
    let w = wait_answer(port, "r", T).unwrap_or_else(|| panic!("no answer:\n{}", emp.log()));
    let master = master_of(w);
    kill(Pid::from_raw(master as i32), Signal::SIGKILL).unwrap();
    emp.wait_log("died unexpectedly", T);
    emp.wait_log_n("spawned uwsgi instance r.ini", 2, T);
    // the old workers may hold the port for a moment; the new master binds it
    let ok = testkit::servers::wait_until(T, || {
        http_get(port, "/")
            .and_then(|b| parse_answer(&b))
            .is_some_and(|(p, _)| master_of(p) != master)
    });
    assert!(ok, "respawned vassal never answered:\n{}", emp.log());
}

#[test]
fn bad_names_and_a_failing_config_leave_the_others_running() {
    let (tmp, vassals, app) = setup();
    let (ini, port) = vassal_ini(&app, "good");
    std::fs::write(vassals.join("good.ini"), ini).unwrap();
    // uWSGI refuses an unknown option and exits
    std::fs::write(
        vassals.join("broken.ini"),
        "[uwsgi]\nmaster = true\nno-such-option-here = 1\n",
    )
    .unwrap();
    std::fs::write(vassals.join("-dash.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(vassals.join("notes.txt"), "not a vassal").unwrap();
    let emp = emperor(tmp.path(), &vassals);
    wait_answer(port, "good", T).unwrap_or_else(|| panic!("no answer:\n{}", emp.log()));
    emp.wait_log("invalid vassal name", T);
    emp.wait_log("vassal broken.ini", T);
    emp.wait_log("throttling vassal broken.ini", T);
    let log = emp.log();
    assert!(log.contains("must not start with '-'"), "{log}");
    assert!(
        !log.contains("notes.txt"),
        "files without a config extension are ignored quietly:\n{log}"
    );
    // the good vassal still serves
    assert!(wait_answer(port, "good", Duration::from_secs(2)).is_some());
}
