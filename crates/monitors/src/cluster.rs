//! `--emperor-cluster URL`: the engine that places vassals over the
//! emperors sharing a source (docs/cluster.md). The decisions are
//! [`emperor::cluster::Placer`]'s; this module keeps the membership and
//! carries out the claims in etcd (`etcd://host:port[,...]/prefix`).
//!
//! Keys, under the prefix:
//! - `members/NODE`: one per emperor, bound to its lease; the value is a
//!   JSON object (node, pid, host name, start time).
//! - `claims/VASSAL/SLOT`: one per replica slot held, bound to the
//!   holder's lease; the value is `{"node": ..., "running": ...}`. A
//!   claim is made with a compare-and-create transaction (the key's
//!   create revision is 0), and changed or deleted only while it is still
//!   bound to the holder's lease.
//!
//! The lease is renewed every third of `--emperor-cluster-ttl`. When no
//! renewal has been confirmed for three quarters of the TTL (counted from
//! when the last confirmed one was sent), the member fences itself: it
//! stops every vassal it holds, before the lease can expire on the server.
//! The one exception is an engine that refuses connections (its hosts
//! answer, nothing listens: it is down for everyone, and a lease cannot
//! expire without a running etcd, which renews every lease when it starts
//! again): the vassals keep running and nothing new is claimed until it is
//! back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use emperor::cluster::{Claim, ClusterContext, ClusterEngine, ClusterOutput, Op, Placer};
use emperor::{MonitorError, VassalName};
use futures::future::BoxFuture;
use tokio::time::Instant;

use etcd_client as etcd;
/// The settings of a cluster member.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `--emperor-cluster-node`: this member's unique name.
    pub node: String,
    /// `--emperor-replicas`: how many members run a vassal by default.
    pub replicas: u32,
    /// `--emperor-cluster-ttl`: the lease time.
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

/// The engine for `url` (`etcd://...`; `zoo://` is not built yet).
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
        return Ok(Box::new(EtcdCluster::new(url, rest, s)?));
    }
    if url.starts_with("zoo://") {
        return Err(bad(
            "ZooKeeper is not supported as a cluster engine yet; use etcd://HOST:PORT/PREFIX"
                .into(),
        ));
    }
    Err(bad(
        "the cluster engine must be etcd://HOST:PORT[,HOST:PORT...]/PREFIX".into(),
    ))
}

/// The etcd engine.
pub struct EtcdCluster {
    endpoints: Vec<String>,
    auth: Option<(String, String)>,
    /// Ends with `/`.
    prefix: String,
    s: ClusterSettings,
}

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl EtcdCluster {
    fn new(url: &str, rest: &str, s: ClusterSettings) -> Result<Self, MonitorError> {
        let parts = crate::kv::split_url(
            url,
            rest,
            crate::etcd::DEFAULT_PORT,
            "missing the key prefix (etcd://host:port/prefix)",
        )?;
        let path = parts.path.trim_end_matches('/');
        if path.is_empty() || path.contains(['?', '#']) {
            return Err(crate::kv::bad_url(
                url,
                "the cluster needs a key prefix of its own (etcd://host:port/prefix), with no query or fragment".into(),
            ));
        }
        Ok(EtcdCluster {
            endpoints: parts.hosts,
            auth: parts.auth,
            prefix: format!("{path}/"),
            s,
        })
    }

    fn member_key(&self, node: &str) -> String {
        format!("{}members/{node}", self.prefix)
    }

    fn claim_key(&self, name: &VassalName, slot: u32) -> String {
        format!("{}claims/{name}/{slot}", self.prefix)
    }
}

impl ClusterEngine for EtcdCluster {
    fn describe(&self) -> String {
        let hosts = self.endpoints.join(",");
        let path = self.prefix.trim_end_matches('/');
        match &self.auth {
            Some((user, _)) => format!("etcd://{user}:{}@{hosts}{path}", crate::session::MASK),
            None => format!("etcd://{hosts}{path}"),
        }
    }

    fn run(self: Box<Self>, ctx: ClusterContext) -> BoxFuture<'static, ()> {
        let placer = Placer::new(&self.s.node, self.s.replicas, self.s.claim_delay);
        let shown = self.describe();
        Box::pin(
            Driver {
                eng: *self,
                placer,
                ctx,
                lease: None,
                renewed: None,
                refused: false,
                state: "connecting".into(),
                shown,
            }
            .run(),
        )
    }
}

/// A session's client, lease renewal and watch.
type Opened = (
    etcd::Client,
    etcd::LeaseKeeper,
    etcd::LeaseKeepAliveStream,
    etcd::WatchStream,
);

/// How a session ended.
enum End {
    /// The emperor is gone: give the lease up.
    Shutdown,
    /// The connection (or the lease) was lost: why.
    Lost(String),
}

struct Driver {
    eng: EtcdCluster,
    placer: Placer,
    ctx: ClusterContext,
    /// The lease, while it may be valid.
    lease: Option<i64>,
    /// When the last confirmed renewal (or the grant) was sent.
    renewed: Option<Instant>,
    /// The last connection attempt was refused (the engine is down).
    refused: bool,
    /// What the view's `state` says.
    state: String,
    shown: String,
}

/// The error of a request whose host answered that nothing listens.
fn is_refused(e: &dyn std::fmt::Debug) -> bool {
    let s = format!("{e:?}");
    s.contains("ConnectionRefused") || s.contains("Connection refused")
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd::Error>>,
) -> Result<T, (String, bool)> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((format!("{what}: {e}"), is_refused(&e))),
        Err(_) => Err((format!("{what}: timed out"), false)),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ClaimValue {
    node: String,
    running: bool,
}

impl Driver {
    fn ttl(&self) -> Duration {
        self.eng.s.ttl
    }

    /// The instant the member fences itself unless a renewal is confirmed.
    fn fence_at(&self) -> Option<Instant> {
        self.renewed.map(|t| t + self.ttl() * 3 / 4)
    }

    async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.session().await {
                End::Shutdown => return self.give_up().await,
                End::Lost(reason) => {
                    if self.placer.is_online() || self.state != reason {
                        tracing::warn!(engine = %self.shown, "[emperor] cluster: {reason}; the vassals held keep running, nothing new is claimed until it is back");
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
                        self.fence("the lease could not be renewed in time (etcd unreachable)");
                        self.lease = None;
                        self.renewed = None;
                    }
                    i = self.ctx.inputs.recv() => match i {
                        Some(i) => { self.placer.input(i); self.apply_local(); }
                        None => return self.give_up().await,
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
    /// `replicas = all` vassals, unplaces).
    fn apply_local(&mut self) {
        for op in self.placer.decide(Instant::now().into_std()) {
            if let Op::Tell(o) = op {
                let _ = self.ctx.outputs.send(o);
            }
        }
        self.publish();
    }

    fn fence(&mut self, why: &'static str) {
        let ops = self.placer.fence(why);
        if !ops.is_empty() {
            tracing::error!(engine = %self.shown, held = ops.len(), "[emperor] cluster: {why}: stopping the {} vassal(s) this emperor held, before its lease can expire", ops.len());
        }
        for op in ops {
            if let Op::Tell(o) = op {
                let _ = self.ctx.outputs.send(o);
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let mut v = self.placer.view();
        v.engine = self.shown.clone();
        v.lease = self.lease.map(|l| format!("{l:x}"));
        v.ttl = self.ttl().as_secs();
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

    async fn give_up(&mut self) {
        let Some(id) = self.lease.take() else {
            return;
        };
        if let Ok(mut c) =
            crate::etcd::connect_raw(&self.eng.endpoints, self.eng.auth.as_ref()).await
        {
            match timed("revoke the lease", c.lease_revoke(id)).await {
                Ok(_) => {
                    tracing::info!(engine = %self.shown, "[emperor] cluster: left the cluster (lease {id:x} revoked)")
                }
                Err((e, _)) => {
                    tracing::warn!(engine = %self.shown, "[emperor] cluster: {e}; the other members take over when it expires")
                }
            }
        }
    }

    /// One connection: the lease (kept or new), the member key, a full
    /// read, then the watch and the renewals until something fails.
    async fn session(&mut self) -> End {
        let (mut client, mut keeper, mut renewals, mut watch) = match self.open().await {
            Ok(Some(o)) => o,
            Ok(None) => return End::Shutdown,
            Err((e, refused)) => {
                self.refused = refused;
                return End::Lost(e);
            }
        };
        self.refused = false;
        let id = self.lease.expect("granted");
        self.placer.set_online(true);
        self.state = "online".into();
        tracing::info!(engine = %self.shown, node = %self.placer.me(), lease = %format!("{id:x}"), "[emperor] cluster: member {} online (lease {id:x}, ttl {}s)", self.placer.me(), self.ttl().as_secs());
        if let Err(e) = self.act(&mut client).await {
            return End::Lost(e);
        }
        let every = self.ttl() / 3;
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent: VecDeque<Instant> = VecDeque::new();
        loop {
            // a frozen emperor sees the deadline passed as soon as it runs
            if self.fence_at().is_some_and(|t| Instant::now() >= t) {
                self.fence("the lease could not be renewed in time");
                self.lease = None;
                self.renewed = None;
                return End::Lost("the lease could not be renewed in time".into());
            }
            let hold = self.placer.next_deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                () = sleep_until(self.fence_at()) => continue,
                i = self.ctx.inputs.recv() => match i {
                    Some(i) => {
                        self.placer.input(i);
                        while let Ok(i) = self.ctx.inputs.try_recv() {
                            self.placer.input(i);
                        }
                    }
                    None => return End::Shutdown,
                },
                r = renewals.message() => match r {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        if let Some(t) = sent.pop_front() {
                            self.renewed = Some(t);
                        }
                    }
                    Ok(Some(_)) => {
                        self.fence("the lease expired");
                        self.lease = None;
                        self.renewed = None;
                        return End::Lost("the lease expired".into());
                    }
                    Ok(None) => return End::Lost("the lease renewal stream was closed".into()),
                    Err(e) => {
                        self.refused = is_refused(&e);
                        return End::Lost(format!("renew the lease: {e}"));
                    }
                },
                _ = tick.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        self.refused = is_refused(&e);
                        return End::Lost(format!("renew the lease: {e}"));
                    }
                    sent.push_back(Instant::now());
                    if sent.len() > 16 {
                        sent.pop_front();
                    }
                }
                m = watch.message() => match m {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return End::Lost(format!("the watch was cancelled: {}", resp.cancel_reason()));
                        }
                        self.apply_events(resp.events());
                    }
                    Ok(None) => return End::Lost("the watch stream was closed".into()),
                    Err(e) => {
                        self.refused = is_refused(&e);
                        return End::Lost(format!("watch: {e}"));
                    }
                },
                () = sleep_until(hold) => {}
            }
            if let Err(e) = self.act(&mut client).await {
                return End::Lost(e);
            }
        }
    }

    /// Connects, makes sure of the lease and the member key, reads
    /// everything and watches from there. `None`: the emperor went
    /// meanwhile.
    async fn open(&mut self) -> Result<Option<Opened>, (String, bool)> {
        let mut client = crate::etcd::connect_raw(&self.eng.endpoints, self.eng.auth.as_ref())
            .await
            .map_err(|e| {
                let refused = is_refused(&e);
                (
                    format!("connect to {}: {e}", self.eng.endpoints.join(",")),
                    refused,
                )
            })?;
        if !self.prepare(&mut client).await? {
            return Ok(None);
        }
        let id = self.lease.expect("granted");
        let (keeper, renewals) = timed("renew the lease", client.lease_keep_alive(id)).await?;
        let rev = self.read_all(&mut client).await?;
        let opts = etcd::WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let watch = timed(
            "watch",
            client.watch(self.eng.prefix.as_bytes(), Some(opts)),
        )
        .await?;
        Ok(Some((client, keeper, renewals, watch)))
    }

    /// The lease (the one held if it is still valid, else a new one) and
    /// the member key. `Ok(false)`: the emperor went meanwhile.
    async fn prepare(&mut self, client: &mut etcd::Client) -> Result<bool, (String, bool)> {
        if let Some(id) = self.lease {
            let sent = Instant::now();
            let (mut k, mut s) = timed("renew the lease", client.lease_keep_alive(id)).await?;
            timed("renew the lease", k.keep_alive()).await?;
            match timed("renew the lease", s.message()).await? {
                Some(r) if r.ttl() > 0 => self.renewed = Some(sent),
                _ => {
                    self.fence("the lease expired while etcd could not be reached");
                    self.lease = None;
                    self.renewed = None;
                }
            }
        }
        if self.lease.is_none() {
            let sent = Instant::now();
            let ttl = self.ttl().as_secs() as i64;
            let g = timed("grant a lease", client.lease_grant(ttl, None)).await?;
            self.lease = Some(g.id());
            self.renewed = Some(sent);
        }
        let id = self.lease.expect("set");
        let key = self.eng.member_key(self.placer.me());
        let value = serde_json::json!({
            "node": self.placer.me(),
            "pid": std::process::id(),
            "host": std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()),
            "since": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })
        .to_string();
        let mut warned = false;
        loop {
            let txn = etcd::Txn::new()
                .when([etcd::Compare::create_revision(
                    key.as_str(),
                    etcd::CompareOp::Equal,
                    0,
                )])
                .and_then([etcd::TxnOp::put(
                    key.as_str(),
                    value.as_str(),
                    Some(etcd::PutOptions::new().with_lease(id)),
                )]);
            if timed("register the member", client.txn(txn))
                .await?
                .succeeded()
            {
                return Ok(true);
            }
            let got = timed("read the member key", client.get(key.as_str(), None)).await?;
            if got.kvs().first().is_some_and(|kv| kv.lease() == id) {
                return Ok(true);
            }
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
        }
    }

    /// Reads every member and claim; returns the revision read.
    async fn read_all(&mut self, client: &mut etcd::Client) -> Result<i64, (String, bool)> {
        let opts = etcd::GetOptions::new().with_prefix();
        let resp = timed(
            "read the cluster",
            client.get(self.eng.prefix.as_bytes(), Some(opts)),
        )
        .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let mut members = BTreeSet::new();
        let mut claims: BTreeMap<VassalName, BTreeMap<u32, Claim>> = BTreeMap::new();
        for kv in resp.kvs() {
            match self.parse_key(kv.key()) {
                Some(Key::Member(m)) => {
                    members.insert(m);
                }
                Some(Key::Claim(n, s)) => {
                    if let Some(c) = parse_claim(kv.value()) {
                        claims.entry(n).or_default().insert(s, c);
                    }
                }
                None => {}
            }
        }
        self.placer.set_members(members, Instant::now().into_std());
        self.placer.reset_claims(claims);
        Ok(rev)
    }

    fn parse_key(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.eng.prefix.as_str())?;
        if let Some(m) = rest.strip_prefix("members/") {
            return (!m.is_empty()).then(|| Key::Member(m.to_string()));
        }
        let c = rest.strip_prefix("claims/")?;
        let (name, slot) = c.rsplit_once('/')?;
        let slot: u32 = slot.parse().ok()?;
        (!name.is_empty()).then(|| Key::Claim(VassalName::derived(name.to_string()), slot))
    }

    fn apply_events(&mut self, events: &[etcd::Event]) {
        let mut members = None::<BTreeSet<String>>;
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let put = ev.event_type() == etcd::EventType::Put;
            tracing::trace!(key = %String::from_utf8_lossy(kv.key()), put, "[emperor] cluster: watched");
            match self.parse_key(kv.key()) {
                Some(Key::Member(m)) => {
                    let set = members.get_or_insert_with(|| self.current_members());
                    if put {
                        set.insert(m);
                    } else {
                        set.remove(&m);
                    }
                }
                Some(Key::Claim(n, s)) => {
                    if put {
                        if let Some(c) = parse_claim(kv.value()) {
                            self.placer.claim_put(n, s, c);
                        }
                    } else {
                        self.placer.claim_deleted(&n, s);
                    }
                }
                None => {}
            }
        }
        if let Some(m) = members {
            self.placer.set_members(m, Instant::now().into_std());
        }
    }

    fn current_members(&self) -> BTreeSet<String> {
        self.placer
            .view()
            .members
            .into_iter()
            .filter(|m| m.live)
            .map(|m| m.node)
            .collect()
    }

    /// Decides and carries out the ops until nothing is left (each
    /// success is applied at once; the watch repeats it).
    async fn act(&mut self, client: &mut etcd::Client) -> Result<(), String> {
        for _ in 0..8 {
            let ops = self.placer.decide(Instant::now().into_std());
            if ops.is_empty() {
                break;
            }
            for op in ops {
                self.execute(client, op).await?;
            }
        }
        self.publish();
        Ok(())
    }

    async fn execute(&mut self, client: &mut etcd::Client, op: Op) -> Result<(), String> {
        let Some(id) = self.lease else {
            return Ok(());
        };
        let me = self.placer.me().to_string();
        let value = |running: bool| {
            serde_json::to_string(&ClaimValue {
                node: me.clone(),
                running,
            })
            .expect("claim serialises")
        };
        let with_lease = || Some(etcd::PutOptions::new().with_lease(id));
        let (txn, name, slot, after): (etcd::Txn, VassalName, u32, After) = match op {
            Op::Tell(o) => {
                let (ClusterOutput::Place(n) | ClusterOutput::Unplace(n, _, _)) = &o;
                tracing::debug!(vassal = %n, "[emperor] cluster: {o:?}");
                let _ = self.ctx.outputs.send(o);
                return Ok(());
            }
            Op::Claim(n, s) => {
                let key = self.eng.claim_key(&n, s);
                let txn = etcd::Txn::new()
                    .when([etcd::Compare::create_revision(
                        key.as_str(),
                        etcd::CompareOp::Equal,
                        0,
                    )])
                    .and_then([etcd::TxnOp::put(key.as_str(), value(false), with_lease())]);
                (txn, n, s, After::Put(false))
            }
            Op::MarkRunning(n, s) => {
                let key = self.eng.claim_key(&n, s);
                let txn = etcd::Txn::new()
                    .when([etcd::Compare::lease(
                        key.as_str(),
                        etcd::CompareOp::Equal,
                        id,
                    )])
                    .and_then([etcd::TxnOp::put(key.as_str(), value(true), with_lease())]);
                (txn, n, s, After::Put(true))
            }
            Op::Release(n, s) => {
                let key = self.eng.claim_key(&n, s);
                let txn = etcd::Txn::new()
                    .when([etcd::Compare::lease(
                        key.as_str(),
                        etcd::CompareOp::Equal,
                        id,
                    )])
                    .and_then([etcd::TxnOp::delete(key.as_str(), None)]);
                (txn, n, s, After::Delete)
            }
            Op::Move(n, from, to) => {
                let from_key = self.eng.claim_key(&n, from);
                let to_key = self.eng.claim_key(&n, to);
                let txn = etcd::Txn::new()
                    .when([
                        etcd::Compare::create_revision(to_key.as_str(), etcd::CompareOp::Equal, 0),
                        etcd::Compare::lease(from_key.as_str(), etcd::CompareOp::Equal, id),
                    ])
                    .and_then([
                        etcd::TxnOp::put(to_key.as_str(), value(true), with_lease()),
                        etcd::TxnOp::delete(from_key.as_str(), None),
                    ]);
                (txn, n, to, After::Move(from))
            }
        };
        let resp = timed("claim", client.txn(txn)).await.map_err(|(e, r)| {
            self.refused = r;
            e
        })?;
        if !resp.succeeded() {
            // lost the race (or the claim is not ours any more): the
            // watch shows who holds it
            self.placer.op_done(&name, slot);
            return Ok(());
        }
        let claim = |running| Claim {
            node: me.clone(),
            running,
        };
        match after {
            After::Put(running) => self.placer.claim_put(name, slot, claim(running)),
            After::Delete => self.placer.claim_deleted(&name, slot),
            After::Move(from) => {
                self.placer.claim_deleted(&name, from);
                self.placer.claim_put(name, slot, claim(true));
            }
        }
        Ok(())
    }
}

enum After {
    Put(bool),
    Delete,
    Move(u32),
}

enum Key {
    Member(String),
    Claim(VassalName, u32),
}

fn parse_claim(value: &[u8]) -> Option<Claim> {
    let v: ClaimValue = serde_json::from_slice(value).ok()?;
    Some(Claim {
        node: v.node,
        running: v.running,
    })
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
        for (url, node) in [
            ("etcd://127.0.0.1:2379", "a"),
            ("etcd://127.0.0.1:2379/", "a"),
            ("zoo://127.0.0.1:2181/fleet", "a"),
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
    }
}
