//! The ZooKeeper store of `--emperor-cluster zoo://HOST:PORT[,...]/PATH`:
//! a session whose timeout is the TTL, the ephemeral nodes
//! `PATH/members/NODE` and `PATH/claims/VASSAL@SLOT` (the vassal name with
//! `%`, `/` and `@` escaped as `%25`, `%2F` and `%40`) created by it, and
//! one persistent recursive watch on PATH (ZooKeeper 3.6 or later). A claim
//! is a create, which fails when the node exists; a change or a delete
//! checks that the node is this session's and passes its version. The
//! session is checked by reading this member's node.

use std::collections::BTreeSet;
use std::time::Duration;

use emperor::{MonitorError, VassalName};
use zookeeper_client as zk;

use super::{claim_value, member_value, parse_claim, timed, Claims, Lease, Seen, Store, Write};

/// The ZooKeeper store.
pub(crate) struct ZooStore {
    /// `host:port,host:port`.
    hosts: String,
    endpoints: Vec<String>,
    auth: Option<(String, String)>,
    /// No trailing `/`.
    path: String,
    ttl: Duration,
    /// The session held, to resume after a lost connection.
    session: Option<zk::SessionInfo>,
    client: Option<zk::Client>,
    watcher: Option<zk::PersistentWatcher>,
    /// The connection was lost since the last full read.
    disconnected: bool,
    /// This member's node, once registered.
    member: Option<String>,
}

/// What the watch said.
pub(crate) enum ZooEvent {
    Node(zk::EventType, String),
    Resync,
    /// The session expired or was closed.
    Ended,
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

/// A write that found the claim taken, gone or changed by someone else
/// (it lost its race, or the claim is not this member's any more).
fn lost(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::NodeExists | zk::Error::NoNode | zk::Error::BadVersion
    )
}

/// A claim write's outcome: done, lost its race ([`lost`]), or an error
/// naming `what`.
fn written<T>(r: Result<T, zk::Error>, what: impl FnOnce() -> String) -> Result<bool, String> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if lost(&e) => Ok(false),
        Err(e) => Err(format!("{}: {e}", what())),
    }
}

/// `name@slot`, escaped for one path component.
fn claim_node(name: &VassalName, slot: u32) -> String {
    let esc = name
        .as_str()
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('@', "%40");
    format!("{esc}@{slot}")
}

/// The vassal and slot of a claim node.
fn parse_claim_node(node: &str) -> Option<(VassalName, u32)> {
    let (esc, slot) = node.rsplit_once('@')?;
    let slot = slot.parse().ok()?;
    let name = esc
        .replace("%2F", "/")
        .replace("%40", "@")
        .replace("%25", "%");
    (!name.is_empty()).then(|| (VassalName::derived(name), slot))
}

impl ZooStore {
    pub(crate) fn new(url: &str, rest: &str, ttl: Duration) -> Result<Self, MonitorError> {
        let (parts, path) =
            super::split_cluster_url(url, rest, crate::zoo::DEFAULT_PORT, ("path", "path"))?;
        Ok(ZooStore {
            hosts: parts.hosts.join(","),
            endpoints: parts.hosts,
            auth: parts.auth,
            path: path.to_string(),
            ttl,
            session: None,
            client: None,
            watcher: None,
            disconnected: false,
            member: None,
        })
    }

    fn client(&self) -> Result<&zk::Client, String> {
        self.client
            .as_ref()
            .ok_or_else(|| "not connected".to_string())
    }

    fn mine(&self, st: &zk::Stat) -> bool {
        self.client
            .as_ref()
            .is_some_and(|c| st.ephemeral_owner == c.session_id().0)
    }

    async fn dial(&self, session: Option<zk::SessionInfo>) -> Result<zk::Client, zk::Error> {
        let mut connector = zk::Client::connector()
            .with_session_timeout(self.ttl)
            .with_connection_timeout((self.ttl / 3).max(Duration::from_millis(500)))
            .with_fail_eagerly()
            // a client dropped (a lost connection, a fence) must not close
            // the session: that would delete every claim at once, ahead of
            // the time the others wait for
            .with_detached();
        if let Some((user, pass)) = &self.auth {
            connector = connector.with_auth("digest", format!("{user}:{pass}").as_bytes());
        }
        if let Some(s) = session {
            connector = connector.with_session(s);
        }
        match tokio::time::timeout(super::REQUEST_TIMEOUT, connector.connect(&self.hosts)).await {
            Ok(r) => r,
            Err(_) => Err(zk::Error::ConnectionLoss),
        }
    }

    /// The claim node `node` of this session, with its stat, if it is one.
    async fn own(&self, path: &str) -> Result<Option<zk::Stat>, String> {
        match self.client()?.check_stat(path).await {
            Ok(Some(st)) if self.mine(&st) => Ok(Some(st)),
            Ok(_) | Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(format!("read {path}: {e}")),
        }
    }
}

impl Store for ZooStore {
    type Event = ZooEvent;

    fn shown(&self) -> String {
        match &self.auth {
            Some((user, _)) => format!(
                "zoo://{user}:{}@{}{}",
                crate::session::MASK,
                self.hosts,
                self.path
            ),
            None => format!("zoo://{}{}", self.hosts, self.path),
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn lease_id(&self) -> Option<String> {
        self.session.as_ref().map(|s| format!("{:x}", s.id().0))
    }

    async fn connect(&mut self) -> Result<Lease, String> {
        self.client = None;
        self.watcher = None;
        let mut outcome = Lease::New;
        if let Some(s) = self.session.clone() {
            match self.dial(Some(s)).await {
                Ok(c) => {
                    self.client = Some(c);
                    outcome = Lease::Kept;
                }
                Err(zk::Error::SessionExpired) => {
                    self.session = None;
                    outcome = Lease::Replaced;
                }
                Err(e) => return Err(format!("connect to {}: {e}", self.hosts)),
            }
        }
        if self.client.is_none() {
            let c = self
                .dial(None)
                .await
                .map_err(|e| format!("connect to {}: {e}", self.hosts))?;
            self.session = Some(c.session().clone());
            self.client = Some(c);
        }
        let c = self.client()?;
        let given = c.session_timeout();
        if given < self.ttl {
            return Err(format!(
                "ZooKeeper gave a session timeout of {given:?}, shorter than --emperor-cluster-ttl {:?} (its maxSessionTimeout): this member would fence itself too late; lower the TTL or raise maxSessionTimeout",
                self.ttl
            ));
        }
        for dir in ["members", "claims"] {
            let p = format!("{}/{dir}", self.path);
            timed("create the cluster's nodes", c.mkdir(&p, &persistent())).await?;
        }
        Ok(outcome)
    }

    async fn register(&mut self, node: &str) -> Result<bool, String> {
        let path = format!("{}/members/{node}", self.path);
        self.member = Some(path.clone());
        let c = self.client()?;
        match c
            .create(&path, member_value(node).as_bytes(), &ephemeral())
            .await
        {
            Ok(_) => Ok(true),
            Err(zk::Error::NodeExists) => Ok(self.own(&path).await?.is_some()),
            Err(e) => Err(format!("register the member: {e}")),
        }
    }

    async fn read_all(&mut self) -> Result<(BTreeSet<String>, Claims), String> {
        let c = self.client()?;
        // the watch first, then the read: a change between the two is in
        // an event too
        let watcher = timed(
            "watch the cluster",
            c.watch(&self.path, zk::AddWatchMode::PersistentRecursive),
        )
        .await?;
        let members: BTreeSet<String> = timed(
            "read the members",
            c.list_children(&format!("{}/members", self.path)),
        )
        .await?
        .into_iter()
        .collect();
        let mut claims = Claims::new();
        let dir = format!("{}/claims", self.path);
        for child in timed("read the claims", c.list_children(&dir)).await? {
            let Some((n, s)) = parse_claim_node(&child) else {
                continue;
            };
            match c.get_data(&format!("{dir}/{child}")).await {
                Ok((data, _)) => {
                    if let Some(cl) = parse_claim(&data) {
                        claims.entry(n).or_default().insert(s, cl);
                    }
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(format!("read the claim {child}: {e}")),
            }
        }
        self.watcher = Some(watcher);
        self.disconnected = false;
        Ok((members, claims))
    }

    async fn next_event(&mut self) -> Result<ZooEvent, String> {
        loop {
            let Some(w) = self.watcher.as_mut() else {
                return std::future::pending().await;
            };
            let e = w.changed().await;
            if e.event_type != zk::EventType::Session {
                return Ok(ZooEvent::Node(e.event_type, e.path));
            }
            match e.session_state {
                zk::SessionState::Disconnected => self.disconnected = true,
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    // events during the gap may be lost (ZOOKEEPER-4698)
                    if std::mem::take(&mut self.disconnected) {
                        return Ok(ZooEvent::Resync);
                    }
                }
                other => {
                    // terminal: the watcher must not be polled again
                    self.watcher = None;
                    tracing::warn!(engine = %self.shown(), "[emperor] cluster: the ZooKeeper session ended ({other})");
                    return Ok(ZooEvent::Ended);
                }
            }
        }
    }

    async fn resolve(&mut self, e: ZooEvent) -> Result<Vec<Seen>, String> {
        let (t, path) = match e {
            ZooEvent::Resync => return Ok(vec![Seen::Resync]),
            ZooEvent::Ended => return Ok(vec![Seen::SessionEnded]),
            ZooEvent::Node(t, p) => (t, p),
        };
        let Some(rest) = path.strip_prefix(self.path.as_str()) else {
            return Ok(Vec::new());
        };
        if let Some(m) = rest.strip_prefix("/members/") {
            return Ok(match t {
                zk::EventType::NodeCreated => vec![Seen::MemberUp(m.to_string())],
                zk::EventType::NodeDeleted => vec![Seen::MemberDown(m.to_string())],
                _ => Vec::new(),
            });
        }
        let Some((n, s)) = rest.strip_prefix("/claims/").and_then(parse_claim_node) else {
            return Ok(Vec::new());
        };
        if t == zk::EventType::NodeDeleted {
            return Ok(vec![Seen::Claim(n, s, None)]);
        }
        match self.client()?.get_data(&path).await {
            Ok((data, _)) => Ok(vec![Seen::Claim(n, s, parse_claim(&data))]),
            Err(zk::Error::NoNode) => Ok(vec![Seen::Claim(n, s, None)]),
            Err(e) => Err(format!("read the claim {path}: {e}")),
        }
    }

    async fn renew(&mut self) -> Result<bool, String> {
        let Some(path) = self.member.clone() else {
            return Err("not registered".into());
        };
        match self.client()?.check_stat(&path).await {
            Ok(Some(st)) => Ok(self.mine(&st)),
            Ok(None) | Err(zk::Error::SessionExpired) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn write(&mut self, node: &str, w: Write<'_>) -> Result<bool, String> {
        let dir = format!("{}/claims", self.path);
        let c = self.client()?;
        match w {
            Write::Claim(n, s) => {
                let p = format!("{dir}/{}", claim_node(n, s));
                let r = c.create(&p, claim_value(node, false).as_bytes(), &ephemeral());
                written(r.await, || format!("claim {p}"))
            }
            Write::MarkRunning(n, s) => {
                let p = format!("{dir}/{}", claim_node(n, s));
                let Some(st) = self.own(&p).await? else {
                    return Ok(false);
                };
                let value = claim_value(node, true);
                let r = c.set_data(&p, value.as_bytes(), Some(st.version)).await;
                written(r, || format!("mark {p}"))
            }
            Write::Release(n, s) => {
                let p = format!("{dir}/{}", claim_node(n, s));
                let Some(st) = self.own(&p).await? else {
                    return Ok(false);
                };
                written(c.delete(&p, Some(st.version)).await, || {
                    format!("release {p}")
                })
            }
            Write::Move(n, from, to) => {
                let (f, t) = (
                    format!("{dir}/{}", claim_node(n, from)),
                    format!("{dir}/{}", claim_node(n, to)),
                );
                let Some(st) = self.own(&f).await? else {
                    return Ok(false);
                };
                let mut m = c.new_multi_writer();
                let value = claim_value(node, true);
                m.add_create(&t, value.as_bytes(), &ephemeral())
                    .map_err(|e| e.to_string())?;
                m.add_delete(&f, Some(st.version))
                    .map_err(|e| e.to_string())?;
                match m.commit().await {
                    Ok(_) => Ok(true),
                    Err(zk::MultiWriteError::OperationFailed { source, .. }) if lost(&source) => {
                        Ok(false)
                    }
                    Err(e) => Err(format!("move {f} to {t}: {e}")),
                }
            }
        }
    }

    fn forget_lease(&mut self) {
        self.session = None;
        self.client = None;
        self.watcher = None;
        self.member = None;
    }

    async fn give_up(&mut self, _node: &str) {
        let shown = self.shown();
        let Some(c) = self.client.take() else {
            return;
        };
        // delete this session's nodes now: the others need not wait for
        // the session to close
        let mine = timed("list this member's nodes", c.list_ephemerals(&self.path)).await;
        match mine {
            Ok(paths) => {
                // the claims first, the member last
                let mut paths = paths;
                paths.sort_by_key(|p| p.contains("/members/"));
                for p in paths {
                    let _ = timed("delete", c.delete(&p, None)).await;
                }
                tracing::info!(engine = %shown, "[emperor] cluster: left the cluster (session {:x} closed)", c.session_id().0);
            }
            Err(e) => {
                tracing::warn!(engine = %shown, "[emperor] cluster: {e}; the other members take over when the session expires")
            }
        }
        self.watcher = None;
        self.session = None;
        drop(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_nodes_escape_the_name() {
        for name in ["a.ini", "dir/b@x%2F.ini", "c@1.ini"] {
            let n = VassalName::derived(name.to_string());
            let node = claim_node(&n, 3);
            assert!(!node.contains('/'), "{node}");
            assert_eq!(parse_claim_node(&node), Some((n, 3)));
        }
        assert_eq!(parse_claim_node("noslot"), None);
        assert_eq!(parse_claim_node("x.ini@y"), None);
    }
}
