//! The etcd store of `--emperor-cluster etcd://HOST:PORT[,...]/PREFIX`:
//! a lease kept alive by its keep-alive stream, `PREFIX/members/NODE` and
//! `PREFIX/claims/VASSAL/SLOT` bound to it, one watch on the prefix. A
//! claim is a transaction that puts the key only when its create revision
//! is 0; a change or a delete compares the key's lease with ours first.

use std::collections::BTreeSet;
use std::time::Duration;

use emperor::{MonitorError, VassalName};
use etcd_client as etcd;

use super::{claim_value, member_value, parse_claim, timed, Claims, Lease, Seen, Store, Write};

/// The etcd store.
pub(crate) struct EtcdStore {
    endpoints: Vec<String>,
    auth: Option<(String, String)>,
    /// Ends with `/`.
    prefix: String,
    ttl: Duration,
    lease: Option<i64>,
    conn: Option<Conn>,
}

/// One connection's client, keep-alive stream and watch.
struct Conn {
    client: etcd::Client,
    keeper: etcd::LeaseKeeper,
    renewals: etcd::LeaseKeepAliveStream,
    watch: Option<etcd::WatchStream>,
}

impl EtcdStore {
    pub(crate) fn new(url: &str, rest: &str, ttl: Duration) -> Result<Self, MonitorError> {
        let (parts, path) = super::split_cluster_url(
            url,
            rest,
            crate::etcd::DEFAULT_PORT,
            ("key prefix", "prefix"),
        )?;
        Ok(EtcdStore {
            endpoints: parts.hosts,
            auth: parts.auth,
            prefix: format!("{path}/"),
            ttl,
            lease: None,
            conn: None,
        })
    }

    fn member_key(&self, node: &str) -> String {
        format!("{}members/{node}", self.prefix)
    }

    fn claim_key(&self, name: &VassalName, slot: u32) -> String {
        format!("{}claims/{name}/{slot}", self.prefix)
    }

    fn conn(&mut self) -> Result<&mut Conn, String> {
        self.conn
            .as_mut()
            .ok_or_else(|| "not connected".to_string())
    }

    fn parse_key(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if let Some(m) = rest.strip_prefix("members/") {
            return (!m.is_empty()).then(|| Key::Member(m.to_string()));
        }
        let c = rest.strip_prefix("claims/")?;
        let (name, slot) = c.rsplit_once('/')?;
        let slot: u32 = slot.parse().ok()?;
        (!name.is_empty()).then(|| Key::Claim(VassalName::derived(name.to_string()), slot))
    }

    /// Renews `id` once over `conn`: whether it is still alive.
    async fn renew_on(conn: &mut Conn, id: i64) -> Result<bool, String> {
        let _ = id;
        timed("renew the lease", conn.keeper.keep_alive()).await?;
        match timed("renew the lease", conn.renewals.message()).await? {
            Some(r) => Ok(r.ttl() > 0),
            None => Err("the lease renewal stream was closed".into()),
        }
    }

    /// A transaction of `compares` then `ops`: whether it succeeded.
    async fn txn(
        &mut self,
        compares: Vec<etcd::Compare>,
        ops: Vec<etcd::TxnOp>,
    ) -> Result<bool, String> {
        let txn = etcd::Txn::new().when(compares).and_then(ops);
        let c = self.conn()?;
        Ok(timed("claim", c.client.txn(txn)).await?.succeeded())
    }
}

enum Key {
    Member(String),
    Claim(VassalName, u32),
}

/// Whether a request's error says the lease is gone (etcd: "requested
/// lease not found").
fn lease_gone(e: &str) -> bool {
    e.contains("lease not found")
}

impl Store for EtcdStore {
    type Event = etcd::WatchResponse;

    fn shown(&self) -> String {
        let hosts = self.endpoints.join(",");
        let path = self.prefix.trim_end_matches('/');
        match &self.auth {
            Some((user, _)) => format!("etcd://{user}:{}@{hosts}{path}", crate::session::MASK),
            None => format!("etcd://{hosts}{path}"),
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn lease_id(&self) -> Option<String> {
        self.lease.map(|l| format!("{l:x}"))
    }

    async fn connect(&mut self) -> Result<Lease, String> {
        self.conn = None;
        let mut client =
            crate::etcd::connect_endpoints(&self.endpoints, self.auth.as_ref()).await?;
        let mut outcome = Lease::New;
        if let Some(id) = self.lease {
            let kept = match timed("renew the lease", client.lease_keep_alive(id)).await {
                Ok((keeper, renewals)) => {
                    let mut conn = Conn {
                        client: client.clone(),
                        keeper,
                        renewals,
                        watch: None,
                    };
                    let alive = Self::renew_on(&mut conn, id).await;
                    alive.map(|alive| alive.then_some(conn))
                }
                Err(e) => Err(e),
            };
            match kept {
                Ok(Some(conn)) => {
                    self.conn = Some(conn);
                    return Ok(Lease::Kept);
                }
                // an expired lease is "not found"
                Ok(None) => {}
                Err(e) if lease_gone(&e) => {}
                Err(e) => return Err(e),
            }
            self.lease = None;
            outcome = Lease::Replaced;
        }
        let ttl = self.ttl.as_secs() as i64;
        let id = timed("grant a lease", client.lease_grant(ttl, None))
            .await?
            .id();
        self.lease = Some(id);
        let (keeper, renewals) = timed("renew the lease", client.lease_keep_alive(id)).await?;
        self.conn = Some(Conn {
            client,
            keeper,
            renewals,
            watch: None,
        });
        Ok(outcome)
    }

    async fn register(&mut self, node: &str) -> Result<bool, String> {
        let id = self.lease.ok_or("no lease")?;
        let key = self.member_key(node);
        let put = etcd::TxnOp::put(
            key.as_str(),
            member_value(node),
            Some(etcd::PutOptions::new().with_lease(id)),
        );
        let create = etcd::Compare::create_revision(key.as_str(), etcd::CompareOp::Equal, 0);
        if self.txn(vec![create], vec![put]).await? {
            return Ok(true);
        }
        let c = self.conn()?;
        let got = timed("read the member key", c.client.get(key.as_str(), None)).await?;
        Ok(got.kvs().first().is_some_and(|kv| kv.lease() == id))
    }

    async fn read_all(&mut self) -> Result<(BTreeSet<String>, Claims), String> {
        let prefix = self.prefix.clone();
        let c = self.conn()?;
        let opts = etcd::GetOptions::new().with_prefix();
        let resp = timed(
            "read the cluster",
            c.client.get(prefix.as_bytes(), Some(opts)),
        )
        .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let opts = etcd::WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let watch = timed("watch", c.client.watch(prefix.as_bytes(), Some(opts))).await?;
        c.watch = Some(watch);
        let mut members = BTreeSet::new();
        let mut claims = Claims::new();
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
        Ok((members, claims))
    }

    async fn next_event(&mut self) -> Result<etcd::WatchResponse, String> {
        let Some(w) = self.conn.as_mut().and_then(|c| c.watch.as_mut()) else {
            return std::future::pending().await;
        };
        match w.message().await {
            Ok(Some(r)) if r.canceled() => {
                Err(format!("the watch was cancelled: {}", r.cancel_reason()))
            }
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err("the watch stream was closed".into()),
            Err(e) => Err(format!("watch: {e}")),
        }
    }

    async fn resolve(&mut self, resp: etcd::WatchResponse) -> Result<Vec<Seen>, String> {
        let mut out = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let put = ev.event_type() == etcd::EventType::Put;
            match self.parse_key(kv.key()) {
                Some(Key::Member(m)) if put => out.push(Seen::MemberUp(m)),
                Some(Key::Member(m)) => out.push(Seen::MemberDown(m)),
                Some(Key::Claim(n, s)) => {
                    let c = if put { parse_claim(kv.value()) } else { None };
                    out.push(Seen::Claim(n, s, c));
                }
                None => {}
            }
        }
        Ok(out)
    }

    async fn renew(&mut self) -> Result<bool, String> {
        let id = self.lease.ok_or("no lease")?;
        let c = self.conn()?;
        match Self::renew_on(c, id).await {
            Err(e) if lease_gone(&e) => Ok(false),
            r => r,
        }
    }

    async fn write(&mut self, node: &str, w: Write<'_>) -> Result<bool, String> {
        let id = self.lease.ok_or("no lease")?;
        let with_lease = || Some(etcd::PutOptions::new().with_lease(id));
        let ours = |k: &str| etcd::Compare::lease(k, etcd::CompareOp::Equal, id);
        let free = |k: &str| etcd::Compare::create_revision(k, etcd::CompareOp::Equal, 0);
        match w {
            Write::Claim(n, s) => {
                let k = self.claim_key(n, s);
                let put = etcd::TxnOp::put(k.as_str(), claim_value(node, false), with_lease());
                self.txn(vec![free(&k)], vec![put]).await
            }
            Write::MarkRunning(n, s) => {
                let k = self.claim_key(n, s);
                let put = etcd::TxnOp::put(k.as_str(), claim_value(node, true), with_lease());
                self.txn(vec![ours(&k)], vec![put]).await
            }
            Write::Release(n, s) => {
                let k = self.claim_key(n, s);
                let del = etcd::TxnOp::delete(k.as_str(), None);
                self.txn(vec![ours(&k)], vec![del]).await
            }
            Write::Move(n, from, to) => {
                let (f, t) = (self.claim_key(n, from), self.claim_key(n, to));
                let put = etcd::TxnOp::put(t.as_str(), claim_value(node, true), with_lease());
                let del = etcd::TxnOp::delete(f.as_str(), None);
                self.txn(vec![free(&t), ours(&f)], vec![put, del]).await
            }
        }
    }

    fn forget_lease(&mut self) {
        self.lease = None;
        self.conn = None;
    }

    async fn give_up(&mut self, _node: &str) {
        let Some(id) = self.lease.take() else {
            return;
        };
        let shown = self.shown();
        let client = match self.conn.take() {
            Some(c) => Some(c.client),
            None => crate::etcd::connect_endpoints(&self.endpoints, self.auth.as_ref())
                .await
                .ok(),
        };
        let Some(mut client) = client else {
            tracing::warn!(engine = %shown, "[emperor] cluster: cannot reach etcd to give the lease up; the other members take over when it expires");
            return;
        };
        match timed("revoke the lease", client.lease_revoke(id)).await {
            Ok(_) => {
                tracing::info!(engine = %shown, "[emperor] cluster: left the cluster (lease {id:x} revoked)")
            }
            Err(e) => {
                tracing::warn!(engine = %shown, "[emperor] cluster: {e}; the other members take over when it expires")
            }
        }
    }
}
