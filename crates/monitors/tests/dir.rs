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
