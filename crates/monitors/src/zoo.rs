//! `zoo://[user:password@]host:port[,host:port...]/path`: every child znode
//! of `/path` whose name has a config extension is a vassal; its data is the
//! config text (sent over the config pipe), optionally after one
//! `#!imperium uid=.. gid=.. socket=..` header line (see [`crate::kv`]); its
//! `mzxid` is the change key.
//!
//! One persistent recursive watch on `/path` (ZooKeeper 3.6 or later) gives
//! every creation, data change and deletion below it in order, so a change is
//! acted on within milliseconds; nothing is polled. A lost connection or an
//! expired session ends the session: the monitor reports
//! `Health(Degraded)`, connects again with backoff, sets the watch again and
//! reads everything (a fresh snapshot), since a watch can lose events while
//! the connection is down (ZOOKEEPER-4698).

use std::time::Duration;

use emperor::{
    Change, Monitor, MonitorContext, MonitorError, MonitorOptions, VassalName, VassalSpec,
};
use futures::future::BoxFuture;
use zookeeper_client as zk;

use crate::kv::{self, NameKind};
use crate::session::{self, End, Link, Source, WarnOnce, MASK};

/// ZooKeeper's client port.
pub const DEFAULT_PORT: u16 = 2181;
/// The session timeout asked of the server.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The zoo:// monitor.
pub struct ZooMonitor {
    hosts: String,
    path: String,
    auth: Option<(String, String)>,
}

impl ZooMonitor {
    /// `url` is the whole `--emperor` value, `rest` what follows `zoo://`.
    pub fn new(url: &str, rest: &str) -> Result<Self, MonitorError> {
        let bad = |reason: String| kv::bad_url(url, reason);
        let kv::UrlParts { auth, hosts, path } = kv::split_url(
            url,
            rest,
            DEFAULT_PORT,
            "missing the znode path (zoo://host:port/path)",
        )?;
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        if path != "/"
            && path
                .split('/')
                .skip(1)
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad(format!("{path:?} is not a valid znode path")));
        }
        if path.contains(['?', '#']) {
            return Err(bad("zoo:// takes no query or fragment".to_string()));
        }
        Ok(ZooMonitor {
            hosts: hosts.join(","),
            path: path.to_string(),
            auth,
        })
    }
}

/// Builds a zoo:// monitor.
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    Ok(Box::new(ZooMonitor::new(t.url, t.rest)?))
}

impl Monitor for ZooMonitor {
    fn describe(&self) -> String {
        match &self.auth {
            Some((user, _)) => format!("zoo://{user}:{MASK}@{}{}", self.hosts, self.path),
            None => format!("zoo://{}{}", self.hosts, self.path),
        }
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        let shown = self.describe();
        let src = ZooSource {
            mon: *self,
            refused: WarnOnce::default(),
        };
        Box::pin(session::run(src, ctx, shown, session::RETRY))
    }
}

struct ZooSource {
    mon: ZooMonitor,
    /// (child, reason) of the refused names, so each is logged once while
    /// it stays refused.
    refused: WarnOnce<(String, String)>,
}

impl Source for ZooSource {
    /// One ZooKeeper session: connect, watch, read everything, follow events.
    async fn session(&mut self, link: &mut Link) -> End {
        let mon = &self.mon;
        let mut connector = zk::Client::connector()
            .with_session_timeout(SESSION_TIMEOUT)
            .with_connection_timeout(CONNECT_TIMEOUT)
            .with_fail_eagerly();
        if let Some((user, pass)) = &mon.auth {
            connector = connector.with_auth("digest", format!("{user}:{pass}").as_bytes());
        }
        let client =
            match tokio::time::timeout(CONNECT_TIMEOUT * 2, connector.connect(&mon.hosts)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return End::Lost(format!("connect to {}: {e}", mon.hosts)),
                Err(_) => return End::Lost(format!("connect to {}: timed out", mon.hosts)),
            };
        // the watch first, then the read: a change between the two is both in
        // the read and in an event, never in neither
        let mut watcher = match client
            .watch(&mon.path, zk::AddWatchMode::PersistentRecursive)
            .await
        {
            Ok(w) => w,
            Err(e) => {
                return End::Lost(format!(
                    "watch {}: {e} (zoo:// needs ZooKeeper 3.6 or later)",
                    mon.path
                ))
            }
        };
        tracing::info!(monitor = %link.shown(), session = %client.session_id(), "zookeeper session established");
        if let Some(end) = self.resync(&client, link).await {
            return end;
        }
        loop {
            let event = tokio::select! {
                ev = watcher.changed() => ev,
                rescan = link.rescan_requested() => {
                    if !rescan {
                        return End::EmperorGone;
                    }
                    if let Some(end) = self.resync(&client, link).await {
                        return end;
                    }
                    continue;
                }
            };
            let mon = &self.mon;
            match event.event_type {
                // a lost connection ends the session: a persistent watch is
                // not reliably restored by the client's own reconnect (events
                // are lost meanwhile, ZOOKEEPER-4698, and with ZooKeeper 3.8 not
                // always delivered afterwards), so a new session watches again
                // and reads everything
                zk::EventType::Session => match event.session_state {
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {}
                    zk::SessionState::Disconnected => {
                        return End::Lost(format!("connection to {} lost", mon.hosts))
                    }
                    other => return End::Lost(format!("zookeeper session ended: {other:?}")),
                },
                zk::EventType::NodeChildrenChanged => {}
                zk::EventType::NodeCreated
                | zk::EventType::NodeDataChanged
                | zk::EventType::NodeDeleted => {
                    if event.path == mon.path {
                        // the watched node itself was created or deleted
                        if let Some(end) = self.resync(&client, link).await {
                            return end;
                        }
                        continue;
                    }
                    let Some(child) = child_of(&mon.path, &event.path) else {
                        continue;
                    };
                    let NameKind::Vassal(name) = kv::classify_name(child, link.options()) else {
                        // refused names were reported by the last full read;
                        // report new ones here
                        let child = child.to_string();
                        self.report_name(&child, link.options());
                        continue;
                    };
                    let change = if event.event_type == zk::EventType::NodeDeleted {
                        Change::Remove(name)
                    } else {
                        match read_one(mon, &client, name.clone()).await {
                            Ok(Some(spec)) => Change::Upsert(spec),
                            // bad record or gone already: what a full read would say
                            Ok(None) => Change::Remove(name),
                            Err(e) => return read_failed(mon, e),
                        }
                    };
                    if !link.send(change).await {
                        return End::EmperorGone;
                    }
                }
            }
        }
    }
}

impl ZooSource {
    fn report_name(&mut self, child: &str, opts: &MonitorOptions) {
        if let NameKind::Refused(reason) = kv::classify_name(child, opts) {
            if self.refused.is_new((child.to_string(), reason.clone())) {
                let znode = format!("{}/{child}", self.mon.path.trim_end_matches('/'));
                tracing::warn!(monitor = %self.mon.describe(), %znode, %reason, "znode skipped");
            }
        }
    }

    /// Reads every child and sends a snapshot. `Some(end)` ends the session.
    async fn resync(&mut self, client: &zk::Client, link: &mut Link) -> Option<End> {
        let mon = &self.mon;
        let children = match client.list_children(&mon.path).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => {
                // a missing path must not stop the fleet: wait for its creation
                let reason = format!("znode {} does not exist; waiting for it", mon.path);
                tracing::warn!(monitor = %mon.describe(), "{reason}");
                return (!link.degraded(reason).await).then_some(End::EmperorGone);
            }
            Err(e) => return Some(read_failed(mon, e)),
        };
        let mut names = Vec::new();
        for child in &children {
            match kv::classify_name(child, link.options()) {
                NameKind::Vassal(n) => names.push(n),
                NameKind::Ignored => {}
                NameKind::Refused(_) => self.report_name(child, link.options()),
            }
        }
        self.refused.end_pass();
        let mon = &self.mon;
        // every request is sent before any reply is awaited (one round trip)
        let reads =
            futures::future::join_all(names.into_iter().map(|n| read_one(mon, client, n))).await;
        let mut specs = Vec::with_capacity(reads.len());
        for r in reads {
            match r {
                Ok(Some(spec)) => specs.push(spec),
                Ok(None) => {}
                Err(e) => return Some(read_failed(mon, e)),
            }
        }
        tracing::debug!(monitor = %mon.describe(), vassals = specs.len(), "zookeeper snapshot");
        if !link.snapshot(specs).await || !link.connected().await {
            return Some(End::EmperorGone);
        }
        None
    }
}

/// The direct child name of `parent` that `path` names, if any.
fn child_of<'a>(parent: &str, path: &'a str) -> Option<&'a str> {
    let rest = if parent == "/" {
        path.strip_prefix('/')?
    } else {
        path.strip_prefix(parent)?.strip_prefix('/')?
    };
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

fn child_path(mon: &ZooMonitor, name: &str) -> String {
    if mon.path == "/" {
        format!("/{name}")
    } else {
        format!("{}/{name}", mon.path)
    }
}

/// Reads one vassal node. `Ok(None)`: gone, or a bad record (logged).
async fn read_one(
    mon: &ZooMonitor,
    client: &zk::Client,
    name: VassalName,
) -> Result<Option<VassalSpec>, zk::Error> {
    let path = child_path(mon, name.as_str());
    match client.get_data(&path).await {
        Ok((data, stat)) => match kv::spec(name, &data, stat.mzxid) {
            Ok(spec) => Ok(Some(spec)),
            Err(reason) => {
                tracing::warn!(monitor = %mon.describe(), znode = %path, %reason, "znode skipped");
                Ok(None)
            }
        },
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A read failed: the session is given up and a new one reads everything.
fn read_failed(mon: &ZooMonitor, e: zk::Error) -> End {
    End::Lost(format!("reading {}: {e}", mon.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_grammar() {
        let m = ZooMonitor::new("zoo://h1,h2:2182/vassals/", "h1,h2:2182/vassals/").unwrap();
        assert_eq!(m.hosts, "h1:2181,h2:2182");
        assert_eq!(m.path, "/vassals");
        assert_eq!(m.describe(), "zoo://h1:2181,h2:2182/vassals");
        let m = ZooMonitor::new("zoo://u:secret@h/", "u:secret@h/").unwrap();
        assert_eq!(m.path, "/");
        assert!(!m.describe().contains("secret"));
        for bad in ["h", "h//x", "h/a/../b", "h:x/a", "h/a?x"] {
            let err = ZooMonitor::new(&format!("zoo://{bad}"), bad);
            assert!(err.is_err(), "{bad}");
        }
        let err = ZooMonitor::new("zoo://u:secret@h:x/a", "u:secret@h:x/a")
            .err()
            .unwrap();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn children_of_the_watched_path() {
        assert_eq!(child_of("/v", "/v/a.ini"), Some("a.ini"));
        assert_eq!(child_of("/v", "/v/a.ini/x"), None);
        assert_eq!(child_of("/v", "/vx/a.ini"), None);
        assert_eq!(child_of("/v", "/v"), None);
        assert_eq!(child_of("/", "/a.ini"), Some("a.ini"));
    }
}
