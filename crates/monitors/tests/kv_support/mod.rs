//! A monitor under test: built with `monitors::build`, run on a real
//! `MonitorContext`, its changes read back with timeouts.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use emperor::{
    Change, ChangeKey, MonitorContext, MonitorHealth, MonitorOptions, Owner, VassalName, VassalSpec,
};
use tokio::sync::{mpsc, watch};

/// Logs to the test output (`RUST_LOG=monitors=debug` for more).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "monitors=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A running monitor and the receiving end of its changes.
pub struct Running {
    pub rx: mpsc::Receiver<emperor::monitor::MonitorMessage>,
    pub rescan: watch::Sender<u64>,
    pub describe: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds and starts the monitor for `url`.
pub fn start(url: &str) -> Running {
    let opts = MonitorOptions::default();
    let mon = monitors::build(url, &opts).expect("build monitor");
    let describe = mon.describe();
    let (tx, rx) = mpsc::channel(64);
    let (rescan, rescan_rx) = watch::channel(0);
    let ctx = MonitorContext::new(0, Arc::new(opts), tx, rescan_rx);
    let task = tokio::spawn(mon.run(ctx));
    Running {
        rx,
        rescan,
        describe,
        task,
    }
}

impl Running {
    /// The next change, or a panic after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Change {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(m)) => m.change,
            Ok(None) => panic!("{}: the monitor task ended", self.describe),
            Err(_) => panic!("{}: no change within {timeout:?}", self.describe),
        }
    }

    /// The next change that is not `Health(Connected)` (those may come at
    /// any point after a snapshot or a reconnect).
    pub async fn next_data(&mut self, timeout: Duration) -> Change {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Change::Health(MonitorHealth::Connected) => continue,
                c => return c,
            }
        }
    }

    /// Waits for a snapshot; only Health changes may come before it.
    pub async fn snapshot(&mut self, timeout: Duration) -> Vec<VassalSpec> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Change::Snapshot(mut specs) => {
                    specs.sort_by(|a, b| a.name.cmp(&b.name));
                    return specs;
                }
                Change::Health(_) => continue,
                other => panic!("{}: expected a snapshot, got {other:?}", self.describe),
            }
        }
    }

    /// Waits for `Health(Degraded)`; any Snapshot, Upsert or Remove before
    /// it fails the test (an unreadable source must not change the fleet).
    pub async fn degraded(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Change::Health(MonitorHealth::Degraded(r)) => return r,
                Change::Health(_) => continue,
                other => panic!(
                    "{}: expected Health(Degraded) while the source is down, got {other:?}",
                    self.describe
                ),
            }
        }
    }

    /// Asserts that nothing but Health arrives for `quiet`.
    pub async fn no_data_for(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) => return,
                Ok(None) => panic!("{}: the monitor task ended", self.describe),
                Ok(Some(m)) => match m.change {
                    Change::Health(_) => continue,
                    other => panic!("{}: unexpected change {other:?}", self.describe),
                },
            }
        }
    }
}

/// The names of some specs, as strings.
pub fn names(specs: &[VassalSpec]) -> Vec<&str> {
    specs.iter().map(|s| s.name.as_str()).collect()
}

/// The inline config text of a spec.
pub fn text(spec: &VassalSpec) -> &str {
    match &spec.config {
        emperor::ConfigSource::Inline(t) => t,
        other => panic!("expected inline config, got {other:?}"),
    }
}

/// Asserts `change` is an Upsert of `name` and returns its spec.
#[track_caller]
pub fn upsert(change: Change, name: &str) -> VassalSpec {
    match change {
        Change::Upsert(s) if s.name.as_str() == name => s,
        other => panic!("expected Upsert({name}), got {other:?}"),
    }
}

/// Asserts `change` is a Remove of `name`.
#[track_caller]
pub fn remove(change: Change, name: &str) {
    match change {
        Change::Remove(n) if n.as_str() == name => {}
        other => panic!("expected Remove({name}), got {other:?}"),
    }
}

/// A name for comparisons.
pub fn vname(n: &str) -> VassalName {
    VassalName::parse(n, &Default::default(), emperor::NamePolicy::Plain).unwrap()
}

/// Asserts the first snapshot of the bad-records scenario: exactly the two
/// good records, `a.ini` (`[uwsgi]\nmodule = a\n`, written at `a_key`) and
/// `b.ini` (`module = b` after a header giving uid 1000, gid 1001 and
/// `socket`, written at `b_key`). `key_is` says what the change key is.
#[track_caller]
pub fn assert_good_records(
    snap: &[VassalSpec],
    a_key: i64,
    b_key: i64,
    key_is: &str,
    socket: &str,
) {
    assert_eq!(names(snap), ["a.ini", "b.ini"], "good records only");
    assert_eq!(text(&snap[0]), "[uwsgi]\nmodule = a\n");
    assert_eq!(snap[0].key, ChangeKey::Stamp(a_key as i128), "{key_is}");
    assert_eq!(
        text(&snap[1]),
        "[uwsgi]\nmodule = b\n",
        "header line removed"
    );
    assert_eq!(snap[1].key, ChangeKey::Stamp(b_key as i128));
    assert_eq!(
        snap[1].owner,
        Some(Owner {
            uid: 1000,
            gid: 1001
        })
    );
    assert_eq!(snap[1].socket.as_deref(), Some(socket));
}
