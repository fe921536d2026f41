//! file:// against the real filesystem: one config file is one vassal,
//! seen through inotify on its directory (the safety rescan set to a minute,
//! so anything seen within two seconds was seen by inotify).
#![cfg(feature = "file")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{opts_in, start, upsert, Running};
use emperor::{Change, ChangeKey, ConfigSource, MonitorHealth, VassalSpec};

const QUICK: u64 = 2;

fn quiet() -> emperor::MonitorOptions {
    let dir = std::env::temp_dir();
    emperor::MonitorOptions {
        freq: Duration::from_secs(60),
        ..opts_in(&dir)
    }
}

fn url(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// The next change that is not a health report.
async fn next_change(m: &mut Running, secs: u64) -> Change {
    loop {
        match m.next(secs).await {
            Change::Health(_) => continue,
            c => return c,
        }
    }
}

async fn snapshot(m: &mut Running) -> Vec<VassalSpec> {
    match next_change(m, 5).await {
        Change::Snapshot(s) => s,
        other => panic!("expected a Snapshot, got {other:?}"),
    }
}

/// Asserts that nothing but health arrives within `ms`.
async fn silent_for(m: &mut Running, ms: u64) {
    let left = Duration::from_millis(ms);
    if let Ok(c) = tokio::time::timeout(left, next_change(m, 60)).await {
        panic!("expected silence, got {c:?}");
    }
}

fn write(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
}

#[tokio::test]
async fn one_file_runs_reloads_stops_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("app.ini");
    write(&cfg, "[uwsgi]\n");
    let mut m = start(&url(&cfg), quiet());
    assert_eq!(m.describe, url(&cfg));

    let s = snapshot(&mut m).await;
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].name.as_str(), cfg.to_str().unwrap());
    assert_eq!(s[0].config, ConfigSource::File(cfg.clone()));
    assert_eq!(s[0].workdir, None, "started where glob:// starts it");
    let k1 = s[0].key;

    // other files in the directory are not this vassal
    write(&dir.path().join("other.ini"), "[uwsgi]\n");
    write(&dir.path().join("app.ini.bak"), "x");
    silent_for(&mut m, 500).await;

    // an edit in place
    write(&cfg, "[uwsgi]\nprocesses = 2\n");
    let s = upsert(next_change(&mut m, QUICK).await);
    assert_ne!(s.key, k1);

    // removed: the vassal stops
    std::fs::remove_file(&cfg).unwrap();
    match next_change(&mut m, QUICK).await {
        Change::Remove(n) => assert_eq!(n.as_str(), cfg.to_str().unwrap()),
        other => panic!("expected a Remove, got {other:?}"),
    }

    // back: it starts again
    write(&cfg, "[uwsgi]\n");
    assert_eq!(
        upsert(next_change(&mut m, QUICK).await).name.as_str(),
        cfg.to_str().unwrap()
    );
    m.stop(5).await;
}

#[tokio::test]
async fn an_editors_rename_over_and_a_symlink_swap_are_seen_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("app.ini");
    write(&cfg, "[uwsgi]\n");
    let mut m = start(&url(&cfg), quiet());
    let k1 = snapshot(&mut m).await[0].key;

    // an editor writes a new file and renames it over the old one
    let tmp = dir.path().join(".app.ini.swp");
    write(&tmp, "[uwsgi]\nprocesses = 4\n");
    std::fs::rename(&tmp, &cfg).unwrap();
    let k2 = upsert(next_change(&mut m, QUICK).await).key;
    assert_ne!(k2, k1);

    // a deploy: the config is a symlink to a release, swapped atomically
    let releases = tempfile::tempdir().unwrap();
    let (v1, v2) = (
        releases.path().join("v1.ini"),
        releases.path().join("v2.ini"),
    );
    write(&v1, "[uwsgi]\n");
    write(&v2, "[uwsgi]\nprocesses = 8\n");
    let link = dir.path().join(".next");
    std::os::unix::fs::symlink(&v1, &link).unwrap();
    std::fs::rename(&link, &cfg).unwrap();
    let s1 = upsert(next_change(&mut m, QUICK).await);
    assert_eq!(
        s1.config,
        ConfigSource::File(cfg.clone()),
        "the path, not the target"
    );
    std::os::unix::fs::symlink(&v2, &link).unwrap();
    std::fs::rename(&link, &cfg).unwrap();
    let s2 = upsert(next_change(&mut m, QUICK).await);
    assert_ne!(s2.key, s1.key, "another target is another config");
    assert!(matches!(s2.key, ChangeKey::File { .. }));
    m.stop(5).await;
}

#[tokio::test]
async fn a_missing_file_is_no_vassal_until_it_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("later.ini");
    let mut m = start(&url(&cfg), quiet());
    assert_eq!(
        m.next(5).await,
        Change::Health(MonitorHealth::Connected),
        "a directory without the file is readable"
    );
    assert_eq!(snapshot(&mut m).await, []);
    write(&cfg, "[uwsgi]\n");
    upsert(next_change(&mut m, QUICK).await);
    m.stop(5).await;
}

#[tokio::test]
async fn a_missing_directory_is_degraded_then_the_safety_rescan_finds_it() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("conf");
    let cfg = dir.join("app.ini");
    let mut opts = quiet();
    opts.freq = Duration::from_millis(200);
    let mut m = start(&url(&cfg), opts);
    match m.next(5).await {
        Change::Health(MonitorHealth::Degraded(why)) => {
            assert!(why.contains("does not exist"), "{why}")
        }
        other => panic!("expected Degraded, got {other:?}"),
    }
    std::fs::create_dir(&dir).unwrap();
    write(&cfg, "[uwsgi]\n");
    // a rescan sees it and watches the new directory
    let s = snapshot(&mut m).await;
    assert_eq!(s.len(), 1);
    std::fs::remove_file(&cfg).unwrap();
    assert!(matches!(
        next_change(&mut m, QUICK).await,
        Change::Remove(_)
    ));
    m.stop(5).await;
}

#[tokio::test]
async fn unchanged_rescans_are_not_resent_and_a_requested_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("app.ini");
    write(&cfg, "[uwsgi]\n");
    let mut opts = quiet();
    opts.freq = Duration::from_millis(50);
    let mut m = start(&url(&cfg), opts);
    assert_eq!(snapshot(&mut m).await.len(), 1);
    silent_for(&mut m, 400).await;
    m.rescan();
    assert_eq!(snapshot(&mut m).await.len(), 1);
    m.stop(5).await;
}

#[test]
fn a_path_without_a_config_extension_is_a_start_up_error() {
    for bad in [
        "file://",
        "file:///etc/uwsgi/app.txt",
        "file:///etc/../x.ini",
    ] {
        let err = monitors::build(bad, &quiet()).err();
        assert!(err.is_some(), "{bad} accepted");
    }
    assert!(monitors::schemes().contains(&"file"));
}
