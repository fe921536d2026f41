//! The emperor's own lifecycle as seen from outside: when it is ready (the
//! initial scan of every monitor has been acted on), how many vassals it
//! governs, when it stops. [`SdNotify`] reports it to systemd
//! (`Type=notify`).

use std::time::{Duration, Instant};

use crate::monitor::MonitorId;
use crate::reconciler::Reconciler;
use crate::spec::{Change, MonitorHealth};

/// Hooks the runtime calls; every method has an empty default.
pub trait Lifecycle: Send {
    /// Once: every monitor's initial scan has been acted on (see
    /// [`Readiness`]).
    fn ready(&mut self, _rec: &Reconciler) {}
    /// After every step of the emperor's loop (keep it cheap).
    fn step(&mut self, _rec: &Reconciler) {}
    /// Once: Ragnarok began.
    fn stopping(&mut self, _rec: &Reconciler) {}
    /// Once: every vassal is gone and the emperor is about to return.
    fn buried(&mut self) {}
    /// A hot upgrade is about to re-execute the emperor (`refused`:
    /// it was refused after all, the emperor carries on).
    fn reloading(&mut self, _refused: bool) {}
}

/// How long a monitor that reported `Connected` but sent no snapshot (a
/// push source such as amqp:// or zmq://, whose initial state is empty)
/// is waited for before it counts as scanned.
pub const PUSH_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    Nothing,
    Connected(Instant),
    Scanned,
}

/// Decides when the initial scan is done: each monitor counts as scanned
/// at its first snapshot, upsert or removal, at a degraded or failed
/// health report (an unreachable source must not hold up readiness), or
/// [`PUSH_GRACE`] after it reported `Connected` with nothing else.
#[derive(Debug)]
pub struct Readiness {
    monitors: Vec<Seen>,
    fired: bool,
}

impl Readiness {
    /// For `n` monitors.
    pub fn new(n: usize) -> Self {
        Readiness {
            monitors: vec![Seen::Nothing; n],
            fired: false,
        }
    }

    /// Notes a change from `monitor`.
    pub fn observe(&mut self, monitor: MonitorId, change: &Change, now: Instant) {
        let Some(s) = self.monitors.get_mut(monitor) else {
            return;
        };
        *s = match (change, *s) {
            (_, Seen::Scanned) => Seen::Scanned,
            (Change::Health(MonitorHealth::Connected), Seen::Connected(t)) => Seen::Connected(t),
            (Change::Health(MonitorHealth::Connected), _) => Seen::Connected(now),
            _ => Seen::Scanned,
        };
    }

    /// When [`Readiness::poll`] may turn true by itself (a push grace
    /// running out); `None` once fired or while waiting for monitors.
    pub fn deadline(&self) -> Option<Instant> {
        if self.fired {
            return None;
        }
        self.monitors
            .iter()
            .filter_map(|s| match s {
                Seen::Connected(t) => Some(*t + PUSH_GRACE),
                _ => None,
            })
            .min()
    }

    /// True exactly once: the first time every monitor counts as scanned.
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.fired {
            return false;
        }
        for s in &mut self.monitors {
            if let Seen::Connected(t) = *s {
                if t + PUSH_GRACE <= now {
                    *s = Seen::Scanned;
                }
            }
        }
        if self.monitors.iter().all(|s| *s == Seen::Scanned) {
            self.fired = true;
        }
        self.fired
    }
}

/// How often [`ServeWait`] looks at the table.
pub const SERVE_CHECK: Duration = Duration::from_millis(50);

/// `--emperor-ready-wait`: readiness waits, after the initial scan, until
/// every vassal that scan found serves ([`crate::reconciler::Proc::serving`]:
/// byte 5 and its health check passed) or cannot serve without outside
/// action (exiled, idle, refused, stopped, on demand, removed). A vassal
/// that starts, stops or waits for a throttled respawn is waited for.
#[derive(Debug)]
pub struct ServeWait {
    pending: Vec<crate::name::VassalName>,
    next_check: Instant,
    logged: bool,
}

impl ServeWait {
    /// Waits for the vassals in the table now (zergs come and go: not them).
    pub fn new(rec: &Reconciler, now: Instant) -> ServeWait {
        ServeWait {
            pending: rec
                .vassals()
                .filter(|v| !v.is_zerg())
                .map(|v| v.name.clone())
                .collect(),
            next_check: now,
            logged: false,
        }
    }

    /// When [`ServeWait::done`] looks next.
    pub fn deadline(&self) -> Instant {
        self.next_check
    }

    /// Whether every vassal waited for serves (looks at most once per
    /// [`SERVE_CHECK`], so a cold start of thousands is not slowed).
    pub fn done(&mut self, rec: &Reconciler, now: Instant) -> bool {
        use crate::reconciler::Phase;
        if now < self.next_check {
            return false;
        }
        self.next_check = now + SERVE_CHECK;
        self.pending
            .retain(|n| match rec.vassal(n.as_str()).map(|v| &v.phase) {
                None => false,
                Some(Phase::Running { proc, .. }) => !proc.serving(),
                Some(Phase::Starting(_) | Phase::Stopping { .. } | Phase::Throttled { .. }) => true,
                Some(_) => false,
            });
        if self.pending.is_empty() {
            tracing::info!(
                "[emperor] every vassal of the initial scan serves (--emperor-ready-wait): ready"
            );
            return true;
        }
        if !self.logged {
            self.logged = true;
            let first: Vec<&str> = self.pending.iter().take(5).map(|n| n.as_str()).collect();
            tracing::info!(
                "[emperor] waiting for {} vassal(s) of the initial scan to serve before telling systemd READY=1 (--emperor-ready-wait): {}{}",
                self.pending.len(),
                first.join(", "),
                if self.pending.len() > 5 { ", ..." } else { "" }
            );
        }
        false
    }
}

/// Reports to systemd through `$NOTIFY_SOCKET` (see `sd_notify(3)`):
/// `READY=1` once the initial scan has been acted on, `STATUS=The Emperor
/// is governing N vassals` whenever N changes, `STOPPING=1` at Ragnarok
/// and `STATUS=The Emperor is buried.` at the end. Without
/// `$NOTIFY_SOCKET` nothing is sent. Vassals never see the variable
/// (the spawn removes it, as uWSGI does).
#[derive(Debug)]
pub struct SdNotify {
    sock: std::os::unix::net::UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    last_count: Option<usize>,
}

impl SdNotify {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket);
    /// `None` when unset or unusable (logged).
    pub fn from_env() -> Option<SdNotify> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match Self::connect(&path) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable; not notifying systemd");
                None
            }
        }
    }

    fn connect(path: &std::ffi::OsStr) -> std::io::Result<SdNotify> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(path)?,
        };
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(SdNotify {
            sock,
            addr,
            last_count: None,
        })
    }

    /// Sends one notification (newline-separated assignments).
    pub fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    fn status(count: usize) -> String {
        format!("STATUS=The Emperor is governing {count} vassals")
    }
}

impl Lifecycle for SdNotify {
    fn ready(&mut self, rec: &Reconciler) {
        let n = rec.running();
        self.last_count = Some(n);
        self.send(&format!("READY=1\n{}", Self::status(n)));
    }

    fn step(&mut self, rec: &Reconciler) {
        if rec.is_shutting_down() || self.last_count.is_none() {
            return;
        }
        let n = rec.running();
        if self.last_count != Some(n) {
            self.last_count = Some(n);
            self.send(&Self::status(n));
        }
    }

    fn stopping(&mut self, rec: &Reconciler) {
        self.send(&format!(
            "STOPPING=1\nSTATUS=Ragnarok: stopping {} vassals",
            rec.running()
        ));
    }

    fn buried(&mut self) {
        self.send("STATUS=The Emperor is buried.");
    }

    fn reloading(&mut self, refused: bool) {
        if refused {
            self.send("READY=1\nSTATUS=Upgrade refused; the Emperor carries on");
            return;
        }
        // systemd's notify-reload protocol wants the monotonic clock with it
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
            .unwrap_or(0);
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=Upgrading the Emperor in place"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_every_monitor_scanned() {
        let t = Instant::now();
        let mut r = Readiness::new(2);
        assert!(!r.poll(t));
        r.observe(0, &Change::Health(MonitorHealth::Connected), t);
        r.observe(0, &Change::Snapshot(vec![]), t);
        assert!(!r.poll(t), "monitor 1 not heard yet");
        r.observe(1, &Change::Health(MonitorHealth::Failed("down".into())), t);
        assert!(r.poll(t));
        assert!(!r.poll(t), "fires once");
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn a_push_monitor_counts_after_the_grace() {
        let t = Instant::now();
        let mut r = Readiness::new(1);
        r.observe(0, &Change::Health(MonitorHealth::Connected), t);
        assert_eq!(r.deadline(), Some(t + PUSH_GRACE));
        assert!(!r.poll(t + PUSH_GRACE / 2));
        // a second Connected does not move the grace
        r.observe(
            0,
            &Change::Health(MonitorHealth::Connected),
            t + PUSH_GRACE / 2,
        );
        assert!(r.poll(t + PUSH_GRACE));
    }

    #[test]
    fn sd_notify_sends_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        let mut n = SdNotify::connect(p.as_os_str()).unwrap();
        let rec = Reconciler::new(Default::default(), vec![]);
        n.ready(&rec);
        n.step(&rec); // same count: nothing
        n.stopping(&rec);
        let mut buf = [0u8; 256];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..k]).unwrap(),
            "READY=1\nSTATUS=The Emperor is governing 0 vassals"
        );
        let k = rx.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..k])
            .unwrap()
            .starts_with("STOPPING=1\n"));
    }
}
