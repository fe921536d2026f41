//! dir:// safety rescans: a rescan that finds what the emperor already has
//! is not sent again; any difference, and any requested rescan, is.
#![cfg(feature = "dir")]

mod common;

use std::time::Duration;

use emperor::Change;

fn names(c: &Change) -> Vec<String> {
    match c {
        Change::Snapshot(s) => s.iter().map(|v| v.name.to_string()).collect(),
        other => panic!("expected a Snapshot, got {other:?}"),
    }
}

/// The next change that is not a health report.
async fn next_change(m: &mut common::Running) -> Change {
    loop {
        match m.next(5).await {
            Change::Health(_) => continue,
            c => return c,
        }
    }
}

/// Asserts that no message at all arrives within `ms`.
async fn silent_for(m: &mut common::Running, ms: u64) {
    let left = Duration::from_millis(ms);
    if let Ok(c) = tokio::time::timeout(left, m.next(60)).await {
        panic!("expected silence, got {c:?}");
    }
}

#[tokio::test]
async fn unchanged_rescans_are_not_resent() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.ini"), "[uwsgi]\n").unwrap();
    let mut opts = common::opts_in(dir.path());
    opts.freq = Duration::from_millis(50);
    let url = format!("dir://{}", dir.path().display());
    let mut m = common::start(&url, opts);

    assert_eq!(names(&next_change(&mut m).await), ["a.ini"]);
    // ten safety rescans of an unchanged directory: nothing sent
    silent_for(&mut m, 500).await;

    // a requested rescan (SIGWINCH) is always sent
    m.rescan();
    assert_eq!(names(&next_change(&mut m).await), ["a.ini"]);
    silent_for(&mut m, 300).await;

    // a new file: the targeted change first, then the next safety rescan
    // sends the whole set once (the emperor's view changed since the last
    // snapshot), then silence again
    std::fs::write(dir.path().join("b.ini"), "[uwsgi]\n").unwrap();
    let up = next_change(&mut m).await;
    assert!(
        matches!(&up, Change::Upsert(s) if s.name.as_str() == "b.ini"),
        "{up:?}"
    );
    let mut set = names(&next_change(&mut m).await);
    set.sort();
    assert_eq!(set, ["a.ini", "b.ini"]);
    silent_for(&mut m, 300).await;
    m.stop(5).await;
}

/// Waits (up to 2 s, far below the one-hour safety rescan these tests
/// set) for a change that shows `want` among the vassals.
async fn wait_for_name(m: &mut common::Running, want: &str) -> Change {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let c = match tokio::time::timeout(left, m.next(60)).await {
            Ok(c) => c,
            Err(_) => panic!("{want} not seen within 2 s: the watch was not re-armed"),
        };
        let has = match &c {
            Change::Snapshot(s) => s.iter().any(|v| v.name.as_str() == want),
            Change::Upsert(s) => s.name.as_str() == want,
            _ => false,
        };
        if has {
            return c;
        }
    }
}

#[tokio::test]
async fn a_watched_directory_removed_and_created_again_is_watched_at_once() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("vassals");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.ini"), "[uwsgi]\n").unwrap();
    let mut opts = common::opts_in(top.path());
    opts.freq = Duration::from_secs(3600);
    let mut m = common::start(&format!("dir://{}", dir.display()), opts);
    wait_for_name(&mut m, "a.ini").await;
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("b.ini"), "[uwsgi]\n").unwrap();
    wait_for_name(&mut m, "b.ini").await;
    // and the new directory's own changes are seen too
    std::fs::write(dir.join("c.ini"), "[uwsgi]\n").unwrap();
    wait_for_name(&mut m, "c.ini").await;
    m.stop(5).await;
}

#[tokio::test]
async fn a_symlink_swapped_to_a_new_release_is_followed_at_once() {
    // the deploy pattern: current -> releases/1, then current -> releases/2
    // (a new link renamed over the old one, atomically)
    let top = tempfile::tempdir().unwrap();
    let r1 = top.path().join("releases/1");
    let r2 = top.path().join("releases/2");
    std::fs::create_dir_all(&r1).unwrap();
    std::fs::create_dir_all(&r2).unwrap();
    std::fs::write(r1.join("old.ini"), "[uwsgi]\n").unwrap();
    let current = top.path().join("current");
    std::os::unix::fs::symlink(&r1, &current).unwrap();
    let mut opts = common::opts_in(top.path());
    opts.freq = Duration::from_secs(3600);
    let mut m = common::start(&format!("dir://{}", current.display()), opts);
    wait_for_name(&mut m, "old.ini").await;
    std::fs::write(r2.join("new.ini"), "[uwsgi]\n").unwrap();
    let tmp = top.path().join("current.tmp");
    std::os::unix::fs::symlink(&r2, &tmp).unwrap();
    std::fs::rename(&tmp, &current).unwrap();
    let c = wait_for_name(&mut m, "new.ini").await;
    if let Change::Snapshot(s) = &c {
        assert!(s.iter().all(|v| v.name.as_str() != "old.ini"), "{c:?}");
    }
    // changes in the new release are seen (the watch follows the new link)
    std::fs::write(r2.join("more.ini"), "[uwsgi]\n").unwrap();
    wait_for_name(&mut m, "more.ini").await;
    // and not those of the old one
    std::fs::write(r1.join("stale.ini"), "[uwsgi]\n").unwrap();
    silent_for(&mut m, 300).await;
    m.stop(5).await;
}
