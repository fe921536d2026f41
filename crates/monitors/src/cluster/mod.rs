//! `--emperor-cluster URL`: the engine that places vassals over the
//! emperors sharing a source (docs/cluster.md). The decisions are
//! [`emperor::cluster::Placer`]'s; this module keeps the membership alive
//! and carries out the claims in a [`Store`]: etcd (`etcd.rs`, leases and
//! transactions) or ZooKeeper (`zoo.rs`, sessions and ephemeral nodes).
//!
//! What both stores hold, under the URL's prefix or path:
//! - one member entry per emperor (`members/NODE`), bound to its lease or
//!   session; its value is a JSON object (node, pid, host name, start time);
//! - one claim per replica slot held, bound to the holder's lease or
//!   session, whose value is `{"node": ..., "running": ...}`. A claim is
//!   made only where none exists (a compare-and-create), and changed or
//!   deleted only while it is still the holder's.
//!
//! The lease or session is checked every third of `--emperor-cluster-ttl`.
//! When no check has succeeded for three quarters of the TTL (counted from
//! when the last good one was sent), the member fences itself: it stops
//! every vassal it holds, before its lease can expire on the server. The
//! one exception is an engine whose every endpoint refuses connections (its
//! hosts answer, nothing listens: it is down for everyone, and a lease
//! cannot expire without a running server, which gives every lease a full
//! TTL again when it starts): then the vassals keep running, and nothing
//! new is claimed until it is back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use emperor::cluster::{Claim, ClusterContext, ClusterEngine, ClusterOutput, Op, Placer};
use emperor::{MonitorError, VassalName};
use futures::future::BoxFuture;
use tokio::time::Instant;

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "zoo")]
mod zoo;

/// The settings of a cluster member.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `--emperor-cluster-node`: this member's unique name.
    pub node: String,
    /// `--emperor-replicas`: how many members run a vassal by default.
    pub replicas: u32,
    /// `--emperor-cluster-ttl`: the lease (or session) time.
    pub ttl: Duration,
    /// `--emperor-cluster-claim-delay`: no new claim for this long after a
    /// member left.
    pub claim_delay: Duration,
}

/// Checks a node name: 1 to 128 bytes, no `/`, no whitespace or control
/// character.
pub fn check_node(node: &str) -> Result<(), String> {
    if node.is_empty() || node.len() > 128 {
        return Err(format!(
            "the node name {node:?} must be 1 to 128 bytes long"
        ));
    }
    if node.contains('/') || node.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "the node name {node:?} must not contain '/', spaces or control characters"
        ));
    }
    Ok(())
}

/// The engine for `url`: `etcd://HOST:PORT[,...]/PREFIX` or
/// `zoo://HOST:PORT[,...]/PATH`.
pub fn build(url: &str, s: ClusterSettings) -> Result<Box<dyn ClusterEngine>, MonitorError> {
    let bad = |reason: String| MonitorError::BadUrl {
        url: crate::session::mask_userinfo(url, crate::session::Userinfo::KeepUser),
        reason,
    };
    check_node(&s.node).map_err(|r| bad(format!("--emperor-cluster-node: {r}")))?;
    if s.ttl < Duration::from_secs(2) {
        return Err(bad(
            "--emperor-cluster-ttl must be at least 2 seconds".into()
        ));
    }
    if let Some(rest) = url.strip_prefix("etcd://") {
        #[cfg(feature = "etcd")]
        return Ok(Box::new(Engine {
            store: etcd::EtcdStore::new(url, rest, s.ttl)?,
            s,
        }));
        #[cfg(not(feature = "etcd"))]
        return Err(bad(format!(
            "this imperium was built without etcd ({rest})"
        )));
    }
    if let Some(rest) = url.strip_prefix("zoo://") {
        #[cfg(feature = "zoo")]
        return Ok(Box::new(Engine {
            store: zoo::ZooStore::new(url, rest, s.ttl)?,
            s,
        }));
        #[cfg(not(feature = "zoo"))]
        return Err(bad(format!("this imperium was built without zoo ({rest})")));
    }
    Err(bad(
        "the cluster engine must be etcd://HOST:PORT[,HOST:PORT...]/PREFIX or zoo://HOST:PORT[,HOST:PORT...]/PATH".into(),
    ))
}

/// What follows `scheme://` in a cluster URL: the user info, the hosts
/// and the prefix or path (no trailing `/`), which must be there: the
/// fleet's keys live under it. `what` names it in the errors ("key
/// prefix"), `slot` is its place in the URL shown (`prefix`).
pub(crate) fn split_cluster_url<'a>(
    url: &str,
    rest: &'a str,
    default_port: u16,
    (what, slot): (&str, &str),
) -> Result<(crate::kv::UrlParts<'a>, &'a str), MonitorError> {
    let scheme = url.split("://").next().unwrap_or_default();
    let parts = crate::kv::split_url(
        url,
        rest,
        default_port,
        &format!("missing the {what} ({scheme}://host:port/{slot})"),
    )?;
    let path = parts.path.trim_end_matches('/');
    if path.is_empty() || path.contains(['?', '#']) {
        return Err(crate::kv::bad_url(
            url,
            format!("the cluster needs a {what} of its own ({scheme}://host:port/{slot}), with no query or fragment"),
        ));
    }
    Ok((parts, path))
}

/// Every claim, by vassal and slot.
pub(crate) type Claims = BTreeMap<VassalName, BTreeMap<u32, Claim>>;

/// What a store saw change.
#[derive(Debug)]
pub(crate) enum Seen {
    /// A member registered.
    MemberUp(String),
    /// A member's entry is gone (its lease or session ended).
    MemberDown(String),
    /// A claim is now held like this (`None`: free).
    Claim(VassalName, u32, Option<Claim>),
    /// What was missed cannot be told: read everything again.
    Resync,
    /// The session ended on the server (ZooKeeper: expired or closed): what
    /// this member held is gone now, not at the fence deadline.
    SessionEnded,
}

/// What a store's connection (re)found of the lease held before.
pub(crate) enum Lease {
    /// Still valid: everything bound to it is still there.
    Kept,
    /// Gone (expired while the store could not be reached): a new one was
    /// taken, and what this member held is gone with the old one.
    Replaced,
    /// There was none: a new one was taken.
    New,
}

/// One claim change, carried out only where it is still allowed
/// (`Ok(false)`: it lost its race, or the claim is not this member's).
pub(crate) enum Write<'a> {
    Claim(&'a VassalName, u32),
    MarkRunning(&'a VassalName, u32),
    Release(&'a VassalName, u32),
    Move(&'a VassalName, u32, u32),
}

/// A cluster store: the lease (or session) with the member entry, the
/// claims, and a stream of what changes.
pub(crate) trait Store: Send {
    /// What the store's events are, before [`Store::resolve`].
    type Event: Send;
    /// The URL as shown (no password).
    fn shown(&self) -> String;
    /// Every `host:port` of the engine.
    fn endpoints(&self) -> Vec<String>;
    /// The lease or session id, as shown.
    fn lease_id(&self) -> Option<String>;
    /// Connects (again), keeping the lease held when it is still valid.
    fn connect(&mut self) -> impl std::future::Future<Output = Result<Lease, String>> + Send;
    /// Registers `node` under the lease; `Ok(false)` while another lease
    /// holds that name.
    fn register(
        &mut self,
        node: &str,
    ) -> impl std::future::Future<Output = Result<bool, String>> + Send;
    /// Follows every change from now on, then reads every member and claim.
    fn read_all(
        &mut self,
    ) -> impl std::future::Future<Output = Result<(BTreeSet<String>, Claims), String>> + Send;
    /// The next change (cancel-safe: nothing is lost when it is dropped).
    fn next_event(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Self::Event, String>> + Send;
    /// What an event means.
    fn resolve(
        &mut self,
        e: Self::Event,
    ) -> impl std::future::Future<Output = Result<Vec<Seen>, String>> + Send;
    /// Renews the lease (or checks the session) once; `Ok(false)`: it is
    /// gone.
    fn renew(&mut self) -> impl std::future::Future<Output = Result<bool, String>> + Send;
    /// Writes one claim change for `node`.
    fn write(
        &mut self,
        node: &str,
        w: Write<'_>,
    ) -> impl std::future::Future<Output = Result<bool, String>> + Send;
    /// Forgets the lease (it is lost): the next connection takes a new one.
    fn forget_lease(&mut self);
    /// Gives the lease up, and with it the member entry and every claim.
    fn give_up(&mut self, node: &str) -> impl std::future::Future<Output = ()> + Send;
}

/// The JSON value of a claim.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct ClaimValue {
    node: String,
    running: bool,
}

/// The value written for a claim of `node`.
pub(crate) fn claim_value(node: &str, running: bool) -> String {
    serde_json::to_string(&ClaimValue {
        node: node.to_string(),
        running,
    })
    .expect("a claim serialises")
}

/// A claim read back (`None`: not one of ours).
pub(crate) fn parse_claim(value: &[u8]) -> Option<Claim> {
    let v: ClaimValue = serde_json::from_slice(value).ok()?;
    Some(Claim {
        node: v.node,
        running: v.running,
    })
}

/// The value of a member entry.
pub(crate) fn member_value(node: &str) -> String {
    serde_json::json!({
        "node": node,
        "pid": std::process::id(),
        "host": std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()),
        "since": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
    .to_string()
}

/// How long one request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `f` within [`REQUEST_TIMEOUT`], its error as text naming `what`.
pub(crate) async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

/// `f`, given up at `deadline` (the fence deadline: no request may hold
/// the member past it) and after [`REQUEST_TIMEOUT`].
async fn within<T>(
    deadline: Option<Instant>,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let wait = deadline.map_or(REQUEST_TIMEOUT, |d| {
        d.saturating_duration_since(Instant::now())
            .min(REQUEST_TIMEOUT)
    });
    match tokio::time::timeout(wait, f).await {
        Ok(r) => r,
        Err(_) => Err("no answer from the engine in time".into()),
    }
}

/// Whether every endpoint refuses connections (the engine is down on
/// hosts that answer), checked with a plain TCP connection to each.
async fn engine_refuses(endpoints: &[String]) -> bool {
    if endpoints.is_empty() {
        return false;
    }
    // every endpoint at once: the answer comes within one connect timeout
    let looks = endpoints.iter().map(|e| async move {
        let c =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(e)).await;
        matches!(c, Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    futures::future::join_all(looks)
        .await
        .into_iter()
        .all(|r| r)
}

/// An engine: a store and the settings.
struct Engine<S> {
    store: S,
    s: ClusterSettings,
}

impl<S: Store + 'static> ClusterEngine for Engine<S> {
    fn describe(&self) -> String {
        self.store.shown()
    }

    fn run(self: Box<Self>, ctx: ClusterContext) -> BoxFuture<'static, ()> {
        let placer = Placer::new(&self.s.node, self.s.replicas, self.s.claim_delay);
        let shown = self.store.shown();
        Box::pin(
            Driver {
                store: self.store,
                ttl: self.s.ttl,
                placer,
                ctx,
                renewed: None,
                refused: false,
                state: "connecting".into(),
                shown,
                published: Instant::now(),
                view_stale: false,
                next_renew: Instant::now(),
            }
            .run(),
        )
    }
}

/// How a session ended.
enum End {
    /// The emperor is gone: give the lease up.
    Shutdown,
    /// The connection (or the lease) was lost: why.
    Lost(String),
}

struct Driver<S> {
    store: S,
    ttl: Duration,
    placer: Placer,
    ctx: ClusterContext,
    /// When the last good renewal (or the grant) was sent, while the lease
    /// may be valid.
    renewed: Option<Instant>,
    /// Every endpoint refused connections at the last look.
    refused: bool,
    /// What the view's `state` says.
    state: String,
    shown: String,
    /// When the view was last published.
    published: Instant,
    /// The view lags behind: publish it at `published` + [`VIEW_EVERY`].
    view_stale: bool,
    /// When the lease is renewed next.
    next_renew: Instant,
}

/// The view is published at most this often while claims change (each
/// publication copies every claim).
const VIEW_EVERY: Duration = Duration::from_millis(100);

impl<S: Store> Driver<S> {
    /// Publishes the view now, or soon when it was published a moment ago.
    fn publish_soon(&mut self) {
        if self.published.elapsed() >= VIEW_EVERY {
            self.publish();
        } else {
            self.view_stale = true;
        }
    }

    /// The instant the member fences itself unless a renewal succeeds.
    fn fence_at(&self) -> Option<Instant> {
        self.renewed.map(|t| t + self.ttl * 3 / 4)
    }

    async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.session().await {
                End::Shutdown => return self.store.give_up(self.placer.me()).await,
                End::Lost(reason) => {
                    // a look at the endpoints, never past the fence deadline
                    // (once refused, a look may take its time: the lease
                    // cannot expire while the engine is down)
                    let left = self.fence_at().map_or(Duration::ZERO, |t| {
                        t.saturating_duration_since(Instant::now())
                    });
                    let budget = if self.refused {
                        Duration::from_secs(1)
                    } else {
                        left.min(Duration::from_secs(1))
                    };
                    let endpoints = self.store.endpoints();
                    let probe = engine_refuses(&endpoints);
                    self.refused = tokio::time::timeout(budget, probe).await.unwrap_or(false);
                    if self.placer.is_online() || self.state != reason {
                        let what = if self.refused {
                            "the engine refuses connections (down for every member): the vassals held keep running"
                        } else {
                            "the vassals held keep running until the lease could expire"
                        };
                        tracing::warn!(engine = %self.shown, "[emperor] cluster: {reason}; {what}, nothing new is claimed until it is back");
                    }
                    self.placer.set_online(false);
                    self.state = reason;
                    self.publish();
                }
            }
            // wait before the next attempt, still taking the loop's inputs
            // and fencing on time
            let until = Instant::now() + backoff;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            loop {
                let fence = self.fence_at().filter(|_| !self.refused);
                tokio::select! {
                    biased;
                    () = sleep_until(fence) => {
                        self.fence("the lease could not be renewed in time (the engine is unreachable)");
                    }
                    i = self.ctx.inputs.recv() => match i {
                        Some(i) => { self.placer.input(i); self.tell_local(); }
                        None => return self.store.give_up(self.placer.me()).await,
                    },
                    () = tokio::time::sleep_until(until) => break,
                }
            }
            if self.placer.is_online() {
                backoff = Duration::from_millis(200);
            }
        }
    }

    /// Carries out what can be decided without the engine (placements of
    /// `replicas = all` vassals).
    fn tell_local(&mut self) {
        for op in self.placer.decide(Instant::now().into_std()) {
            if let Op::Tell(o) = op {
                self.tell(o);
            }
        }
        self.publish();
    }

    /// Tells the emperor's loop to start or stop a vassal.
    fn tell(&self, o: ClusterOutput) {
        let (ClusterOutput::Place(n) | ClusterOutput::Unplace(n, _, _)) = &o;
        tracing::debug!(vassal = %n, "[emperor] cluster: {o:?}");
        let _ = self.ctx.outputs.send(o);
    }

    /// The lease is lost or could be: stop everything held, take a new one
    /// at the next connection.
    fn fence(&mut self, why: &'static str) {
        self.unplace_all(why);
        self.store.forget_lease();
        self.renewed = None;
        self.publish();
    }

    /// Stops every vassal held (their claims went with the lease).
    fn unplace_all(&mut self, why: &'static str) {
        let ops = self.placer.fence(why);
        if !ops.is_empty() {
            tracing::error!(engine = %self.shown, held = ops.len(), "[emperor] cluster: {why}: stopping the {} vassal(s) this emperor held, before its lease can expire", ops.len());
        }
        for op in ops {
            if let Op::Tell(o) = op {
                self.tell(o);
            }
        }
    }

    /// Fences (see [`Driver::fence`]) and ends the session saying why.
    fn fenced(&mut self, why: &'static str) -> End {
        self.fence(why);
        End::Lost(why.into())
    }

    fn publish(&mut self) {
        self.published = Instant::now();
        self.view_stale = false;
        let mut v = self.placer.view();
        v.engine = self.shown.clone();
        v.lease = self.store.lease_id();
        v.ttl = self.ttl.as_secs();
        v.state = if self.placer.is_online() {
            "online".into()
        } else {
            self.state.clone()
        };
        *self
            .ctx
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = v;
    }

    /// Connects, makes sure of the lease and the member entry, reads
    /// everything. `Ok(false)`: the emperor went meanwhile.
    async fn open(&mut self) -> Result<bool, String> {
        let sent = Instant::now();
        // past the deadline only when the engine refused connections: the
        // lease cannot have expired, reconnecting may take its time
        let deadline = self.fence_at().filter(|t| *t > sent);
        match within(deadline, self.store.connect()).await? {
            Lease::Kept => {}
            Lease::Replaced => {
                self.unplace_all("the lease expired while the engine could not be reached");
            }
            Lease::New => {}
        }
        self.renewed = Some(sent);
        let mut warned = false;
        while !within(self.fence_at(), self.store.register(self.placer.me())).await? {
            if !warned {
                warned = true;
                tracing::warn!(engine = %self.shown, "[emperor] cluster: the node name {} is held by another lease (another emperor with this --emperor-cluster-node, or this one's previous run): waiting until it is free", self.placer.me());
            }
            self.state = format!(
                "waiting: the node name {} is held by another lease",
                self.placer.me()
            );
            self.publish();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                i = self.ctx.inputs.recv() => match i {
                    Some(i) => self.placer.input(i),
                    None => return Ok(false),
                },
            }
            // the wait must not outlast the lease it registers with
            let sent = Instant::now();
            if !within(self.fence_at(), self.store.renew()).await? {
                return Err("the lease expired while waiting for the node name".into());
            }
            self.renewed = Some(sent);
        }
        self.resync().await?;
        Ok(true)
    }

    async fn resync(&mut self) -> Result<(), String> {
        let (members, claims) = within(self.fence_at(), self.store.read_all()).await?;
        self.placer.set_members(members, Instant::now().into_std());
        self.placer.reset_claims(claims);
        Ok(())
    }

    /// One connection: the lease, the member entry, a full read, then the
    /// changes and the renewals until something fails.
    async fn session(&mut self) -> End {
        match self.open().await {
            Ok(true) => {}
            Ok(false) => return End::Shutdown,
            Err(e) => return End::Lost(e),
        }
        self.refused = false;
        self.placer.set_online(true);
        self.state = "online".into();
        let lease = self.store.lease_id().unwrap_or_default();
        tracing::info!(engine = %self.shown, node = %self.placer.me(), lease = %lease, "[emperor] cluster: member {} online (lease {lease}, ttl {}s)", self.placer.me(), self.ttl.as_secs());
        self.next_renew = Instant::now() + self.ttl / 3;
        if let Err(end) = self.act().await {
            return end;
        }
        loop {
            // a frozen emperor sees the deadline passed as soon as it runs
            if self.fence_at().is_some_and(|t| Instant::now() >= t) {
                return self.fenced("the lease could not be renewed in time");
            }
            let hold = self.placer.next_deadline().map(Instant::from_std);
            let fence = self.fence_at();
            let view_at = self.view_stale.then(|| self.published + VIEW_EVERY);
            let mut event = None;
            tokio::select! {
                biased;
                () = sleep_until(fence) => continue,
                // before the loop's inputs: a flood of them must not starve
                // the renewals
                () = tokio::time::sleep_until(self.next_renew) => {
                    if let Err(end) = self.renew_once().await {
                        return end;
                    }
                }
                () = sleep_until(view_at) => self.publish(),
                i = self.ctx.inputs.recv() => match i {
                    Some(i) => {
                        self.placer.input(i);
                        while let Ok(i) = self.ctx.inputs.try_recv() {
                            self.placer.input(i);
                        }
                    }
                    None => return End::Shutdown,
                },
                e = self.store.next_event() => match e {
                    Ok(e) => event = Some(e),
                    Err(e) => return End::Lost(e),
                },
                () = sleep_until(hold) => {}
            }
            if let Some(e) = event {
                match within(self.fence_at(), self.store.resolve(e)).await {
                    Ok(seen) => {
                        if let Err(end) = self.apply(seen).await {
                            return end;
                        }
                    }
                    Err(e) => return End::Lost(e),
                }
            }
            if let Err(end) = self.act().await {
                return end;
            }
        }
    }

    /// Renews the lease once, and schedules the next renewal. A renewal
    /// that does not come back soon ends the session early enough to look
    /// at the endpoints before the fence deadline.
    async fn renew_once(&mut self) -> Result<(), End> {
        let sent = Instant::now();
        self.next_renew = sent + self.ttl / 3;
        let fence = self.fence_at();
        let left = fence.map_or(REQUEST_TIMEOUT, |f| f.saturating_duration_since(sent));
        let wait = left.min(REQUEST_TIMEOUT).min(self.ttl / 4);
        match tokio::time::timeout(wait, self.store.renew()).await {
            Ok(Ok(true)) => {
                self.renewed = Some(sent);
                Ok(())
            }
            Ok(Ok(false)) => Err(self.fenced("the lease expired")),
            Ok(Err(e)) => Err(End::Lost(format!("renew the lease: {e}"))),
            Err(_) if fence.is_some_and(|f| Instant::now() >= f) => {
                Err(self.fenced("the lease could not be renewed in time"))
            }
            Err(_) => Err(End::Lost("renew the lease: timed out".into())),
        }
    }

    async fn apply(&mut self, seen: Vec<Seen>) -> Result<(), End> {
        let mut members: Option<BTreeSet<String>> = None;
        for s in seen {
            tracing::trace!(engine = %self.shown, "[emperor] cluster: seen {s:?}");
            match s {
                Seen::MemberUp(m) => {
                    members
                        .get_or_insert_with(|| self.placer.members().clone())
                        .insert(m);
                }
                Seen::MemberDown(m) => {
                    members
                        .get_or_insert_with(|| self.placer.members().clone())
                        .remove(&m);
                }
                Seen::Claim(n, slot, Some(c)) => self.placer.claim_put(n, slot, c),
                Seen::Claim(n, slot, None) => self.placer.claim_deleted(&n, slot),
                Seen::Resync => {
                    self.resync().await.map_err(End::Lost)?;
                    // the full read supersedes what was seen before it
                    members = None;
                }
                Seen::SessionEnded => return Err(self.fenced("the session ended")),
            }
        }
        // (the placer ignores a set equal to the one it has)
        if let Some(m) = members {
            self.placer.set_members(m, Instant::now().into_std());
        }
        Ok(())
    }

    /// Decides and carries out the ops until nothing is left (each
    /// success is applied at once; the store's events repeat it).
    async fn act(&mut self) -> Result<(), End> {
        for _ in 0..8 {
            let ops = self.placer.decide(Instant::now().into_std());
            if ops.is_empty() {
                break;
            }
            // the loop hears every start and stop the placer decided, even
            // when a claim write below fails
            let (tells, writes): (Vec<Op>, Vec<Op>) =
                ops.into_iter().partition(|o| matches!(o, Op::Tell(_)));
            for op in tells {
                self.execute(op).await.map_err(End::Lost)?;
            }
            for op in writes {
                if Instant::now() >= self.next_renew {
                    self.renew_once().await?;
                }
                self.execute(op).await.map_err(End::Lost)?;
            }
        }
        self.publish_soon();
        Ok(())
    }

    async fn execute(&mut self, op: Op) -> Result<(), String> {
        let me = self.placer.me().to_string();
        let (name, slot, w) = match &op {
            Op::Tell(o) => {
                self.tell(o.clone());
                return Ok(());
            }
            Op::Claim(n, s) => (n, *s, Write::Claim(n, *s)),
            Op::MarkRunning(n, s) => (n, *s, Write::MarkRunning(n, *s)),
            Op::Release(n, s) => (n, *s, Write::Release(n, *s)),
            Op::Move(n, from, to) => (n, *to, Write::Move(n, *from, *to)),
        };
        let done = within(self.fence_at(), self.store.write(&me, w)).await?;
        if !done {
            // lost the race (or the claim is not ours any more): the
            // store's events show who holds it
            self.placer.op_done(name, slot);
            return Ok(());
        }
        let claim = |running| Claim {
            node: me.clone(),
            running,
        };
        match op {
            Op::Claim(n, s) => self.placer.claim_put(n, s, claim(false)),
            Op::MarkRunning(n, s) => self.placer.claim_put(n, s, claim(true)),
            Op::Release(n, s) => self.placer.claim_deleted(&n, s),
            Op::Move(n, from, to) => {
                self.placer.claim_deleted(&n, from);
                self.placer.claim_put(n, to, claim(true));
            }
            Op::Tell(_) => {}
        }
        Ok(())
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(node: &str) -> ClusterSettings {
        ClusterSettings {
            node: node.into(),
            replicas: 1,
            ttl: Duration::from_secs(10),
            claim_delay: Duration::from_secs(2),
        }
    }

    #[test]
    fn urls_and_node_names_are_checked() {
        assert!(build("etcd://127.0.0.1:2379/fleet", settings("a")).is_ok());
        assert!(build("zoo://127.0.0.1:2181/fleet", settings("a")).is_ok());
        for (url, node) in [
            ("etcd://127.0.0.1:2379", "a"),
            ("etcd://127.0.0.1:2379/", "a"),
            ("zoo://127.0.0.1:2181/", "a"),
            ("zoo://127.0.0.1:2181", "a"),
            ("http://x/y", "a"),
            ("etcd://127.0.0.1:2379/fleet", "a/b"),
            ("etcd://127.0.0.1:2379/fleet", ""),
            ("etcd://127.0.0.1:2379/fleet", "a b"),
        ] {
            assert!(build(url, settings(node)).is_err(), "{url} {node:?}");
        }
        let mut s = settings("a");
        s.ttl = Duration::from_secs(1);
        assert!(build("etcd://127.0.0.1:2379/fleet", s).is_err());
        let e = build("etcd://u:secret@127.0.0.1:2379/fleet", settings("a")).unwrap();
        assert_eq!(e.describe(), "etcd://u:***@127.0.0.1:2379/fleet");
        let e = build("zoo://u:secret@127.0.0.1:2181/fleet", settings("a")).unwrap();
        assert_eq!(e.describe(), "zoo://u:***@127.0.0.1:2181/fleet");
    }

    #[test]
    fn claims_read_back() {
        let v = claim_value("n1", true);
        assert_eq!(
            parse_claim(v.as_bytes()),
            Some(Claim {
                node: "n1".into(),
                running: true
            })
        );
        assert_eq!(parse_claim(b"junk"), None);
    }
}
