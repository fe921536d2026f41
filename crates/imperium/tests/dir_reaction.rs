//! dir:// reacts to every kind of change through inotify, not only on the
//! `--emperor-freq` safety rescan (found by the benchmarks in bench/).

use std::time::{Duration, SystemTime};

use testkit::{test_vassal_bin, Imperium};

/// Far longer than any reaction measured here: a change seen only by the
/// safety rescan cannot pass.
const FREQ: &str = "60";
const QUICK: Duration = Duration::from_secs(2);

fn emperor(dir: &std::path::Path, vassals: &std::path::Path) -> Imperium {
    emperor_freq(dir, vassals, FREQ)
}

fn emperor_freq(dir: &std::path::Path, vassals: &std::path::Path, freq: &str) -> Imperium {
    Imperium::start(
        dir,
        [
            "--emperor".as_ref(),
            vassals.as_os_str(),
            "--binary-path".as_ref(),
            test_vassal_bin().as_os_str(),
            "--emperor-freq".as_ref(),
            freq.as_ref(),
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

/// A config written in two steps 0.3 s apart, by a writer that keeps it
/// open in between, starts its vassal once, with the whole file: the
/// change waits for the writer's close, not for a fixed quiet time.
#[test]
fn a_config_written_in_steps_starts_once_and_whole() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let vassals = tmp.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    // a vassal already there: once it runs, the directory is watched
    std::fs::write(vassals.join("b.ini"), "[vassal]\nloyal = 1\n").unwrap();
    let mut emp = emperor(tmp.path(), &vassals);
    emp.wait_log(
        "vassal b.ini is ready to accept requests",
        Duration::from_secs(20),
    );

    let rec = tmp.path().join("a.rec");
    let mut f = std::fs::File::create(vassals.join("a.ini")).unwrap();
    write!(f, "[vassal]\nloyal = 1\nrecord = {}\n", rec.display()).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    f.write_all(b"marker = whole\n").unwrap();
    drop(f);

    emp.wait_log("vassal a.ini is ready to accept requests", QUICK);
    // time for a second start or a reload, were one coming
    std::thread::sleep(Duration::from_millis(700));
    let starts: Vec<String> = testkit::record_lines(&rec)
        .into_iter()
        .filter(|l| l.starts_with("start "))
        .collect();
    assert_eq!(starts.len(), 1, "one start: {starts:?}\n{}", emp.log());
    assert!(
        starts[0].contains("marker=whole"),
        "started with the whole config: {starts:?}"
    );
    assert_eq!(
        emp.count("reload the uwsgi instance a.ini"),
        0,
        "{}",
        emp.log()
    );
    emp.stop();
}

/// A rescan that finds nothing new builds nothing (it compares a
/// fingerprint of the files read through the directory it holds open), yet
/// a `current` symlink swapped to another release directory is followed
/// (the parent's watch asks for the rescan; the fingerprint sees another
/// directory), and the unchanged rescans before and after it change
/// nothing.
#[test]
fn a_rescan_follows_a_swapped_directory_link() {
    let tmp = tempfile::tempdir().unwrap();
    for r in ["r1", "r2"] {
        let d = tmp.path().join(r);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("a.ini"), "[vassal]\nloyal = 1\n").unwrap();
    }
    std::fs::write(tmp.path().join("r2/b.ini"), "[vassal]\nloyal = 1\n").unwrap();
    let cur = tmp.path().join("current");
    std::os::unix::fs::symlink("r1", &cur).unwrap();
    let mut emp = emperor_freq(tmp.path(), &cur, "1");
    emp.wait_log(
        "vassal a.ini is ready to accept requests",
        Duration::from_secs(20),
    );
    // a few idle rescans
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        emp.count("reload the uwsgi instance a.ini"),
        0,
        "{}",
        emp.log()
    );
    std::os::unix::fs::symlink("r2", tmp.path().join("next")).unwrap();
    std::fs::rename(tmp.path().join("next"), &cur).unwrap();
    emp.wait_log(
        "vassal b.ini is ready to accept requests",
        Duration::from_secs(5),
    );
    // r2's a.ini is another file (another inode): a reload, once
    emp.wait_log("reload the uwsgi instance a.ini", Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        emp.count("reload the uwsgi instance a.ini"),
        1,
        "{}",
        emp.log()
    );
    assert_eq!(
        emp.count("spawned uwsgi instance b.ini"),
        1,
        "{}",
        emp.log()
    );
    emp.stop();
}

/// A `current` symlink replaced by a new link to the same directory (a
/// deploy that re-runs `ln -sfn`) is watched again at once, though the
/// rescan that follows finds the same files: a config added afterwards
/// starts within milliseconds, not at the next safety rescan.
#[test]
fn a_link_replaced_by_one_to_the_same_directory_is_watched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let r1 = tmp.path().join("r1");
    std::fs::create_dir(&r1).unwrap();
    std::fs::write(r1.join("b.ini"), "[vassal]\nloyal = 1\n").unwrap();
    let cur = tmp.path().join("current");
    std::os::unix::fs::symlink("r1", &cur).unwrap();
    let mut emp = emperor(tmp.path(), &cur);
    emp.wait_log(
        "vassal b.ini is ready to accept requests",
        Duration::from_secs(20),
    );
    std::os::unix::fs::symlink("r1", tmp.path().join("next")).unwrap();
    std::fs::rename(tmp.path().join("next"), &cur).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(r1.join("a.ini"), "[vassal]\nloyal = 1\n").unwrap();
    emp.wait_log("vassal a.ini is ready to accept requests", QUICK);
    assert_eq!(
        emp.count("spawned uwsgi instance b.ini"),
        1,
        "{}",
        emp.log()
    );
    emp.stop();
}
