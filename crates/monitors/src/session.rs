//! What every monitor shares: the session skeleton, the retry policy, the
//! health tracker, warn-once, the abort-on-drop guard, the rescan clock and
//! password masking.
//!
//! A monitor of a server (pg, mongodb, ldap, zoo, etcd, amqp) is a
//! [`Source`]: one [`Source::session`] connects, reads everything, sends it
//! and watches until something fails. [`run`] is the loop around it: a
//! failed session is reported as [`MonitorHealth::Degraded`] (never an empty
//! snapshot, so running vassals stay), the skeleton backs off by the
//! monitor's [`Retry`] row and starts a new session, which resyncs. File
//! monitors (dir, glob, file) have the same shape without a connection:
//! see `fswatch::run_file_monitor`.
// the session skeleton serves the server monitors; a build with the file
// monitors alone uses only part of this module
#![cfg_attr(
    not(any(
        feature = "ldap",
        feature = "zoo",
        feature = "etcd",
        feature = "pg",
        feature = "mongodb",
        feature = "amqp",
        feature = "zmq"
    )),
    allow(dead_code)
)]

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use emperor::backoff::Backoff;
use emperor::{Change, MonitorContext, MonitorHealth, MonitorOptions, VassalSpec};
use tokio::task::{JoinError, JoinHandle};

// ---- the retry policy ----

/// How a monitor retries after its source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    /// The first delay after a failure; each further failure doubles it.
    pub first: Duration,
    /// The longest delay (each delay gets ±25% jitter).
    pub cap: Duration,
    /// Which failures become a `Degraded` message to the emperor.
    pub report: Report,
}

/// Which failed attempts are reported to the emperor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// The first failure of an outage (until the next `Connected`); the
    /// retries are in the monitor's log.
    FirstOfOutage,
    /// Every failed attempt (the emperor ignores a health it already has).
    EveryAttempt,
}

/// The retry table. Every monitor uses [`RETRY`] unless its row says why it
/// needs another policy.
///
/// * `first` 100 ms: a server that restarts or fails over is often back
///   within a fraction of a second, and one connection attempt costs the
///   server next to nothing.
/// * `cap` 5 s: a source that comes back is used again within 5 s (6.25 s
///   with the jitter), which the tests of every monitor rely on ("back
///   within the backoff cap"); one attempt per 5 s per emperor is no load
///   even for a fleet of emperors on one server, and the jitter spreads
///   them. It is not tied to `--emperor-freq`: push setups set that to
///   hours, and recovery must not wait for it.
/// * `report` first of an outage: the emperor logs and counts each health
///   change, so one outage is one warning there; the retries are logged by
///   the monitor.
pub(crate) const RETRY: Retry = Retry {
    first: Duration::from_millis(100),
    cap: Duration::from_secs(5),
    report: Report::FirstOfOutage,
};

/// amqp://: as [`RETRY`], but every failed attempt is reported. A push
/// monitor has no snapshot that would show the emperor that it is still
/// trying; its tests read each retry of a refused login as one `Degraded`.
#[cfg(feature = "amqp")]
pub(crate) const RETRY_AMQP: Retry = Retry {
    report: Report::EveryAttempt,
    ..RETRY
};

// ---- health ----

/// The health a monitor last reported, so that it reports changes only.
#[derive(Debug, Default)]
pub(crate) struct Health {
    last: Option<MonitorHealth>,
}

impl Health {
    /// Reports `Connected` unless it is what was reported last. False once
    /// the emperor is gone.
    pub(crate) async fn connected(&mut self, ctx: &MonitorContext) -> bool {
        if self.last == Some(MonitorHealth::Connected) {
            return !ctx.is_closed();
        }
        self.last = Some(MonitorHealth::Connected);
        ctx.health(MonitorHealth::Connected).await
    }

    /// Reports `Degraded(reason)` as `report` says. False once the emperor
    /// is gone.
    pub(crate) async fn degraded(
        &mut self,
        ctx: &MonitorContext,
        reason: String,
        report: Report,
    ) -> bool {
        let in_outage = matches!(self.last, Some(MonitorHealth::Degraded(_)));
        if in_outage && report == Report::FirstOfOutage {
            return !ctx.is_closed();
        }
        let h = MonitorHealth::Degraded(reason);
        self.last = Some(h.clone());
        ctx.health(h).await
    }

    /// True when the last report was `Connected`.
    pub(crate) fn is_connected(&self) -> bool {
        self.last == Some(MonitorHealth::Connected)
    }
}

// ---- the session skeleton ----

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The emperor stopped listening: the monitor returns.
    EmperorGone,
    /// The source could not be read: degrade, back off, start again.
    Lost(String),
}

/// A source of vassals behind a connection.
pub(crate) trait Source: Send + 'static {
    /// One connection: connect, read everything and send it
    /// ([`Link::snapshot`] or targeted changes), then follow the source until
    /// it fails or the emperor goes away. What must survive a reconnect
    /// (a resume token, a revision) lives in `self`.
    fn session(&mut self, link: &mut Link) -> impl Future<Output = End> + Send;
}

/// What a session uses to talk to the emperor.
pub(crate) struct Link {
    ctx: MonitorContext,
    shown: String,
    health: Health,
    backoff: Backoff,
    retry: Retry,
    /// A rescan was requested during the backoff and no snapshot has
    /// answered it yet.
    rescan_pending: bool,
}

impl Link {
    /// The monitor's URL as shown (password masked).
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// The emperor's settings.
    pub(crate) fn options(&self) -> &MonitorOptions {
        &self.ctx.options
    }

    /// The source answers: reports `Connected` (once) and resets the
    /// backoff. False once the emperor is gone.
    pub(crate) async fn connected(&mut self) -> bool {
        self.backoff.reset();
        self.health.connected(&self.ctx).await
    }

    /// True when the last health report was `Connected`.
    pub(crate) fn is_connected(&self) -> bool {
        self.health.is_connected()
    }

    /// The source cannot be read though the session goes on (a query that
    /// fails on a live connection, a path that does not exist yet).
    pub(crate) async fn degraded(&mut self, reason: String) -> bool {
        self.health
            .degraded(&self.ctx, reason, self.retry.report)
            .await
    }

    /// Sends everything the source holds, unless the emperor already has
    /// exactly that. False once the emperor is gone.
    pub(crate) async fn snapshot(&mut self, specs: Vec<VassalSpec>) -> bool {
        self.rescan_pending = false;
        self.ctx.send_if_changed(specs).await
    }

    /// Sends a targeted change. False once the emperor is gone.
    pub(crate) async fn send(&mut self, change: Change) -> bool {
        self.ctx.send(change).await
    }

    /// Waits for a requested rescan (at once when one came during the
    /// backoff and no snapshot has answered it) or for the emperor to stop
    /// listening: true for a rescan, false once the emperor is gone.
    /// Cancel-safe.
    pub(crate) async fn rescan_requested(&mut self) -> bool {
        if self.rescan_pending {
            self.rescan_pending = false;
            return true;
        }
        self.ctx.rescan_or_closed().await
    }

    /// Resolves once the emperor has stopped listening.
    pub(crate) async fn closed(&self) {
        self.ctx.closed().await
    }
}

/// Runs sessions of `src` until the emperor goes away: after a failed one,
/// reports `Degraded`, waits the next delay of `retry` (cut short by a
/// rescan request) and starts again.
pub(crate) async fn run<S: Source>(mut src: S, ctx: MonitorContext, shown: String, retry: Retry) {
    let mut link = Link {
        ctx,
        shown,
        health: Health::default(),
        backoff: Backoff::new(retry.first, retry.cap),
        retry,
        rescan_pending: false,
    };
    // the reason last logged at warn level in this outage
    let mut logged: Option<String> = None;
    loop {
        let reason = match src.session(&mut link).await {
            End::EmperorGone => return,
            End::Lost(reason) => reason,
        };
        if link.is_connected() {
            logged = None;
        }
        let delay = link.backoff.next_delay();
        let attempt = link.backoff.attempts();
        let retry_in_ms = delay.as_millis() as u64;
        if logged.as_deref() == Some(reason.as_str()) {
            tracing::debug!(monitor = %link.shown, attempt, retry_in_ms, "[emperor] monitor {} still degraded: {reason}", link.shown);
        } else {
            tracing::warn!(monitor = %link.shown, attempt, retry_in_ms, "[emperor] monitor {} degraded: {reason}; running vassals are kept, retrying", link.shown);
            logged = Some(reason.clone());
        }
        if !link.degraded(reason).await {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            rescan = link.ctx.rescan_or_closed() => {
                if !rescan {
                    return;
                }
                link.rescan_pending = true;
            }
        }
    }
}

// ---- warn once ----

/// Remembers what was warned about, so that a bad record or name is logged
/// once while it stays bad, not on every pass.
#[derive(Debug)]
pub(crate) struct WarnOnce<K> {
    /// Warned about in the last finished pass.
    last: BTreeSet<K>,
    /// Seen in the pass under way.
    this: BTreeSet<K>,
}

impl<K> Default for WarnOnce<K> {
    fn default() -> Self {
        WarnOnce {
            last: BTreeSet::new(),
            this: BTreeSet::new(),
        }
    }
}

impl<K: Ord> WarnOnce<K> {
    /// True when `key` is new: neither in the last pass nor yet in this one.
    /// The caller logs it.
    pub(crate) fn is_new(&mut self, key: K) -> bool {
        let new = !self.last.contains(&key) && !self.this.contains(&key);
        self.this.insert(key);
        new
    }

    /// Ends a pass over the whole source: what it did not see again is
    /// forgotten, and warned about again if it comes back.
    pub(crate) fn end_pass(&mut self) {
        self.last = std::mem::take(&mut self.this);
    }
}

// ---- tasks ----

/// A task that is aborted when this handle is dropped (the connection task
/// of a session, a stream reader). Awaiting it waits for the task.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(JoinHandle<T>);

impl<T: Send + 'static> AbortOnDrop<T> {
    /// Spawns `f` on the runtime.
    pub(crate) fn spawn(f: impl Future<Output = T> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(f))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

// ---- the rescan clock ----

/// The clock of the periodic rescan / poll (`--emperor-freq`). A timerfd
/// wakes the emperor exactly once per period; tokio's timer wheel woke it
/// two or three times for a period of seconds (a cascade shortly before the
/// deadline, then a self-wake when the interval re-armed), which made an
/// idle emperor wake more often than uWSGI's. tokio's interval remains the
/// fallback. The first tick comes one period after it is made.
pub(crate) enum RescanClock {
    Fd(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>),
    Tokio(tokio::time::Interval),
}

impl RescanClock {
    /// A clock that ticks every `period`.
    pub(crate) fn new(period: Duration) -> RescanClock {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .and_then(|t| {
            t.set(
                Expiration::Interval(TimeSpec::from_duration(period)),
                TimerSetTimeFlags::empty(),
            )?;
            Ok(t)
        })
        .map_err(io::Error::from)
        .and_then(|t| emperor::fd::register_readable(t.into()));
        match fd {
            Ok(fd) => RescanClock::Fd(fd),
            Err(e) => {
                tracing::debug!(error = %e, "no timerfd; rescans use tokio's timer");
                let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                RescanClock::Tokio(i)
            }
        }
    }

    /// Waits for the next period (periods missed meanwhile count as one).
    /// Cancel-safe.
    pub(crate) async fn tick(&mut self) {
        match self {
            RescanClock::Tokio(i) => {
                i.tick().await;
            }
            RescanClock::Fd(fd) => loop {
                let Ok(mut ready) = fd.readable().await else {
                    // not expected for a timerfd: never tick again rather
                    // than spin (pushes and requested rescans still work)
                    return std::future::pending().await;
                };
                let mut expirations = [0u8; 8];
                match ready.try_io(|f| {
                    nix::unistd::read(f.get_ref(), &mut expirations).map_err(io::Error::from)
                }) {
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read the rescan timer");
                        return std::future::pending().await;
                    }
                    Err(_would_block) => {}
                }
            },
        }
    }
}

// ---- password masking ----

/// What replaces a password in anything shown (logs, stats, errors).
pub const MASK: &str = "***";

/// How much of a URL's `user:password@` [`mask_userinfo`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Userinfo {
    /// `user:***@` (`user@` when there is no password): the user is no secret.
    KeepUser,
    /// `***@`, for schemes whose URLs have no user info to speak of.
    HideAll,
}

/// `url` (`scheme://[userinfo@]host...`) with the password of its user info
/// replaced by [`MASK`]. The user info ends at the last `@` before the
/// first `/`: a password may hold `@`, `?` or `#` and is still masked (an
/// `@` in a query without a path may make the shown URL odd, never leak).
pub fn mask_userinfo(url: &str, keep: Userinfo) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = rest.split_at(at);
    let shown = match (keep, userinfo.split_once(':')) {
        (Userinfo::HideAll, _) => MASK.to_string(),
        (Userinfo::KeepUser, Some((user, _))) => format!("{user}:{MASK}"),
        (Userinfo::KeepUser, None) => userinfo.to_string(),
    };
    format!("{scheme}://{shown}{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_users_kept() {
        let k = Userinfo::KeepUser;
        assert_eq!(mask_userinfo("zoo://u:pw@h/p", k), "zoo://u:***@h/p");
        assert_eq!(mask_userinfo("amqp://u:p@h:1/v", k), "amqp://u:***@h:1/v");
        assert_eq!(
            mask_userinfo("mongodb://u:p@ss@h:1,h:2/x?y=1", k),
            "mongodb://u:***@h:1,h:2/x?y=1"
        );
        assert_eq!(mask_userinfo("mongodb://u@h/", k), "mongodb://u@h/");
        assert_eq!(mask_userinfo("etcd://h/p@x", k), "etcd://h/p@x");
        assert_eq!(mask_userinfo("amqp://u:p?#@h/v", k), "amqp://u:***@h/v");
        assert_eq!(mask_userinfo("no scheme", k), "no scheme");
        assert_eq!(
            mask_userinfo("ldap://u:pw@h/dc=x", Userinfo::HideAll),
            "ldap://***@h/dc=x"
        );
    }

    #[test]
    fn a_bad_record_is_warned_about_once_while_it_stays_bad() {
        let mut w = WarnOnce::default();
        assert!(w.is_new("a"));
        assert!(!w.is_new("a"), "twice in one pass");
        w.end_pass();
        assert!(!w.is_new("a"), "still bad in the next pass");
        w.end_pass();
        w.end_pass();
        assert!(w.is_new("a"), "gone for a pass, then back");
    }

    #[tokio::test]
    async fn health_reports_changes_only() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let (_rescan, rescan_rx) = tokio::sync::watch::channel(0);
        let ctx = MonitorContext::new(0, Default::default(), tx, rescan_rx);
        let mut h = Health::default();
        let first = Report::FirstOfOutage;
        assert!(h.degraded(&ctx, "a".into(), first).await);
        assert!(h.degraded(&ctx, "b".into(), first).await);
        assert!(h.connected(&ctx).await);
        assert!(h.connected(&ctx).await);
        assert!(h.degraded(&ctx, "c".into(), Report::EveryAttempt).await);
        assert!(h.degraded(&ctx, "c".into(), Report::EveryAttempt).await);
        drop(ctx);
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(m.change);
        }
        let d = |r: &str| Change::Health(MonitorHealth::Degraded(r.into()));
        assert_eq!(
            got,
            [
                d("a"),
                Change::Health(MonitorHealth::Connected),
                d("c"),
                d("c")
            ]
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// A password (any text without `/`, which would end the
            /// authority) never survives masking, whatever it holds (`@`,
            /// `:`, `?`, `#`); the user is kept with `KeepUser` only.
            #[test]
            fn mask_userinfo_never_leaves_the_password(
                scheme in "[a-z][a-z0-9+]{0,8}",
                user in "[a-z0-9._-]{0,8}",
                pass in "[A-Z][A-Z!#?@:;=&%$ ]{3,15}",
                host in "[a-z0-9.-]{1,12}(:[0-9]{1,5})?(,[a-z0-9.]{1,8})?",
                path in "(/[a-z0-9/?=&.]{0,20})?",
            ) {
                let url = format!("{scheme}://{user}:{pass}@{host}{path}");
                let kept = mask_userinfo(&url, Userinfo::KeepUser);
                prop_assert!(!kept.contains(&pass), "{} -> {}", url, kept);
                prop_assert_eq!(&kept, &format!("{scheme}://{user}:{MASK}@{host}{path}"));
                let hidden = mask_userinfo(&url, Userinfo::HideAll);
                prop_assert_eq!(hidden, format!("{scheme}://{MASK}@{host}{path}"));
            }
        }
    }
}
