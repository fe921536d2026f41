//! Running a monitor the way the emperor does, and reading its changes.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use emperor::monitor::MonitorMessage;
use emperor::{Change, MonitorContext, MonitorHealth, MonitorOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A monitor task and the receiving end of its context.
pub struct Running {
    pub describe: String,
    rx: mpsc::Receiver<MonitorMessage>,
    _rescan: watch::Sender<u64>,
    task: Option<JoinHandle<()>>,
}

/// Options with `cwd` as the emperor's working directory.
pub fn opts_in(cwd: &Path) -> MonitorOptions {
    MonitorOptions {
        cwd: cwd.to_path_buf(),
        ..MonitorOptions::default()
    }
}

/// Builds the monitor for `url` with `monitors::build` and runs it. Logs go
/// to the test output (shown with `--nocapture`, filtered by `RUST_LOG`).
pub fn start(url: &str, opts: MonitorOptions) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let mon = monitors::build(url, &opts).unwrap_or_else(|e| panic!("build {url}: {e}"));
    let describe = mon.describe();
    let (tx, rx) = mpsc::channel(256);
    let (rescan_tx, rescan_rx) = watch::channel(0);
    let ctx = MonitorContext::new(0, Arc::new(opts), tx, rescan_rx);
    let task = tokio::spawn(mon.run(ctx));
    Running {
        describe,
        rx,
        _rescan: rescan_tx,
        task: Some(task),
    }
}

/// The name a change is about, if any.
pub fn name_of(c: &Change) -> Option<&str> {
    match c {
        Change::Upsert(s) => Some(s.name.as_str()),
        Change::Remove(n) => Some(n.as_str()),
        _ => None,
    }
}

impl Running {
    /// The next message of any kind, or a panic after `secs`.
    pub async fn next(&mut self, secs: u64) -> Change {
        match tokio::time::timeout(Duration::from_secs(secs), self.rx.recv()).await {
            Ok(Some(m)) => m.change,
            Ok(None) => panic!("{}: the monitor task ended", self.describe),
            Err(_) => panic!("{}: no change within {secs} s", self.describe),
        }
    }

    /// Waits for a health change matching `pred`, skipping everything else
    /// except Snapshots (a push monitor must never send one).
    pub async fn health(
        &mut self,
        secs: u64,
        pred: impl Fn(&MonitorHealth) -> bool,
    ) -> MonitorHealth {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no matching health within {secs} s",
                self.describe
            );
            match self.next(left.as_secs().max(1)).await {
                Change::Health(h) if pred(&h) => return h,
                Change::Snapshot(s) => {
                    panic!("{}: push monitor sent a Snapshot: {s:?}", self.describe)
                }
                _ => {}
            }
        }
    }

    /// The next Upsert/Remove whose name contains `tag` (changes for other
    /// tests sharing the exchange are skipped, health changes too).
    pub async fn next_for(&mut self, tag: &str, secs: u64) -> Change {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no change for {tag:?} within {secs} s",
                self.describe
            );
            let c = self.next(left.as_secs().max(1)).await;
            if let Change::Snapshot(s) = &c {
                panic!("{}: push monitor sent a Snapshot: {s:?}", self.describe);
            }
            if name_of(&c).is_some_and(|n| n.contains(tag)) {
                return c;
            }
        }
    }

    /// Asserts that nothing about `tag` arrives within `ms`.
    pub async fn nothing_for(&mut self, tag: &str, ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) => return,
                Ok(None) => panic!("{}: the monitor task ended", self.describe),
                Ok(Some(m)) => {
                    if let Change::Snapshot(s) = &m.change {
                        panic!("{}: push monitor sent a Snapshot: {s:?}", self.describe);
                    }
                    if name_of(&m.change).is_some_and(|n| n.contains(tag)) {
                        panic!("{}: unexpected change {:?}", self.describe, m.change);
                    }
                }
            }
        }
    }

    /// Asks for a full rescan, as SIGWINCH does.
    pub fn rescan(&self) {
        self._rescan.send_modify(|n| *n += 1);
    }

    /// Drops the receiving end and waits for the monitor task to end by itself.
    pub async fn stop(mut self, secs: u64) {
        let task = self.task.take().expect("task");
        drop(self);
        tokio::time::timeout(Duration::from_secs(secs), task)
            .await
            .expect("the monitor did not end after the emperor went away")
            .expect("the monitor task panicked");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Unwraps an Upsert.
pub fn upsert(c: Change) -> emperor::VassalSpec {
    match c {
        Change::Upsert(s) => s,
        other => panic!("expected an Upsert, got {other:?}"),
    }
}
