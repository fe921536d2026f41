//! dir:// reacts to every kind of change through inotify, not only on the
//! `--emperor-freq` safety rescan (found by the benchmarks in bench/).

use std::time::{Duration, SystemTime};

use testkit::{test_vassal_bin, Imperium};

/// Far longer than any reaction measured here: a change seen only by the
/// safety rescan cannot pass.
const FREQ: &str = "60";
const QUICK: Duration = Duration::from_secs(2);

fn emperor(dir: &std::path::Path, vassals: &std::path::Path) -> Imperium {
    Imperium::start(
        dir,
        [
            "--emperor".as_ref(),
            vassals.as_os_str(),
            "--binary-path".as_ref(),
            test_vassal_bin().as_os_str(),
            "--emperor-freq".as_ref(),
            FREQ.as_ref(),
        ],
    )
}

/// `touch -m` (and any tool that sets only the modification time, such as
/// Rust's `File::set_modified`) makes the kernel report IN_MODIFY, not
/// IN_ATTRIB: the vassal must still be reloaded at once.
#[test]
fn mtime_only_touch_reloads_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let vassals = tmp.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    let cfg = vassals.join("a.ini");
    std::fs::write(&cfg, "[vassal]\nloyal = 1\n").unwrap();
    let mut emp = emperor(tmp.path(), &vassals);
    emp.wait_log(
        "vassal a.ini is ready to accept requests",
        Duration::from_secs(20),
    );

    let f = std::fs::File::open(&cfg).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    emp.wait_log("reload the uwsgi instance a.ini", QUICK);

    // and a touch that sets both times (IN_ATTRIB) as well
    let f = std::fs::File::open(&cfg).unwrap();
    let when = SystemTime::now() + Duration::from_secs(10);
    f.set_times(
        std::fs::FileTimes::new()
            .set_accessed(when)
            .set_modified(when),
    )
    .unwrap();
    drop(f);
    emp.wait_log_n("reload the uwsgi instance a.ini", 2, QUICK);
    emp.stop();
}
