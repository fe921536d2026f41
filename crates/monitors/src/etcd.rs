//! `etcd://[user:password@]host:port[,host:port...]/prefix`: every key
//! `/prefix/NAME` whose NAME has a config extension is a vassal; its value is
//! the config text (sent over the config pipe), optionally after one
//! `#!imperium uid=.. gid=.. socket=..` header line (see [`crate::kv`]); its
//! `mod_revision` is the change key.
//!
//! The monitor reads the prefix once, then follows etcd's watch from the
//! revision of that read. It remembers the last revision it has seen, and
//! after a lost connection it watches again from the next one, so no change
//! is missed and none is applied twice. Only when etcd has compacted that
//! history away does it read everything again (a fresh snapshot).

use std::time::Duration;

use emperor::{Change, Monitor, MonitorContext, MonitorError, MonitorOptions};
use etcd_client as etcd;
use futures::future::BoxFuture;

use crate::kv::{self, NameKind};
use crate::session::{self, End, Link, Source, WarnOnce, MASK};

/// etcd's client port.
pub const DEFAULT_PORT: u16 = 2379;
/// How long one connection attempt or one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The etcd:// monitor.
pub struct EtcdMonitor {
    endpoints: Vec<String>,
    prefix: String,
    auth: Option<(String, String)>,
}

impl EtcdMonitor {
    /// `url` is the whole `--emperor` value, `rest` what follows `etcd://`.
    pub fn new(url: &str, rest: &str) -> Result<Self, MonitorError> {
        let bad = |reason: String| kv::bad_url(url, reason);
        let kv::UrlParts {
            auth,
            hosts: endpoints,
            path,
        } = kv::split_url(
            url,
            rest,
            DEFAULT_PORT,
            "missing the key prefix (etcd://host:port/prefix)",
        )?;
        if path.contains(['?', '#']) {
            return Err(bad("etcd:// takes no query or fragment".to_string()));
        }
        let prefix = if path.ends_with('/') {
            path.to_string()
        } else {
            format!("{path}/")
        };
        Ok(EtcdMonitor {
            endpoints,
            prefix,
            auth,
        })
    }

    /// The key prefix watched (always ends with `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Builds an etcd:// monitor.
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    Ok(Box::new(EtcdMonitor::new(t.url, t.rest)?))
}

impl Monitor for EtcdMonitor {
    fn describe(&self) -> String {
        let hosts = self.endpoints.join(",");
        let path = self.prefix.trim_end_matches('/');
        let path = if path.is_empty() { "/" } else { path };
        match &self.auth {
            Some((user, _)) => format!("etcd://{user}:{MASK}@{hosts}{path}"),
            None => format!("etcd://{hosts}{path}"),
        }
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        let shown = self.describe();
        let src = EtcdSource {
            mon: *self,
            seen: None,
            refused: WarnOnce::default(),
        };
        Box::pin(session::run(src, ctx, shown, session::RETRY))
    }
}

struct EtcdSource {
    mon: EtcdMonitor,
    /// Every change up to this revision has been sent; `None`: read
    /// everything (at the start, after a rescan request or a compaction).
    seen: Option<i64>,
    /// (key, reason) of the skipped keys, so each is logged once while it
    /// stays bad.
    refused: WarnOnce<(String, String)>,
}

async fn connect(mon: &EtcdMonitor) -> Result<etcd::Client, String> {
    connect_endpoints(&mon.endpoints, mon.auth.as_ref()).await
}

/// A client of the etcd at `endpoints` (`host:port` each), with the
/// timeouts every etcd user here shares.
pub(crate) async fn connect_endpoints(
    endpoints: &[String],
    auth: Option<&(String, String)>,
) -> Result<etcd::Client, String> {
    let mut opts = etcd::ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), REQUEST_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if let Some((user, pass)) = auth {
        opts = opts.with_user(user.clone(), pass.clone());
    }
    let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
    match tokio::time::timeout(REQUEST_TIMEOUT, etcd::Client::connect(urls, Some(opts))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect to {}: {e}", endpoints.join(","))),
        Err(_) => Err(format!("connect to {}: timed out", endpoints.join(","))),
    }
}

impl Source for EtcdSource {
    /// One connection: read (if needed), watch from the next revision, follow.
    async fn session(&mut self, link: &mut Link) -> End {
        let mut client = match connect(&self.mon).await {
            Ok(c) => c,
            Err(reason) => return End::Lost(reason),
        };
        'watch: loop {
            let rev = match self.seen {
                Some(rev) => rev,
                None => match self.snapshot(&mut client, link).await {
                    Ok(Some(rev)) => rev,
                    Ok(None) => return End::EmperorGone,
                    Err(reason) => return End::Lost(reason),
                },
            };
            self.seen = Some(rev);
            let mon = &self.mon;
            let opts = etcd::WatchOptions::new()
                .with_prefix()
                .with_start_revision(rev + 1);
            let watch = tokio::time::timeout(
                REQUEST_TIMEOUT,
                client.watch(mon.prefix.as_bytes(), Some(opts)),
            );
            let mut stream = match watch.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return End::Lost(format!("watch {}: {e}", mon.prefix)),
                Err(_) => return End::Lost(format!("watch {}: timed out", mon.prefix)),
            };
            let mut connected = false;
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    rescan = link.rescan_requested() => {
                        if !rescan {
                            return End::EmperorGone;
                        }
                        // a full read, then a new watch from its revision
                        self.seen = None;
                        continue 'watch;
                    }
                };
                let prefix = &self.mon.prefix;
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        return End::Lost("the watch stream was closed by the server".to_string())
                    }
                    Err(e) => return End::Lost(format!("watch {prefix}: {e}")),
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        tracing::warn!(
                            monitor = %link.shown(),
                            from = rev + 1,
                            compacted_to = resp.compact_revision(),
                            "etcd compacted the history since the last revision read; reading everything again"
                        );
                        self.seen = None;
                        continue 'watch;
                    }
                    return End::Lost(format!(
                        "watch canceled by the server: {}",
                        resp.cancel_reason()
                    ));
                }
                if !connected {
                    connected = true;
                    tracing::info!(monitor = %link.shown(), from_revision = rev + 1, "etcd watch established");
                    if !link.connected().await {
                        return End::EmperorGone;
                    }
                }
                // etcd never splits one revision's events over two responses,
                // so `seen` moves once per response
                let floor = self.seen.unwrap_or(0);
                let mut newest = floor;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let rev = kv.mod_revision();
                    if rev <= floor {
                        continue; // already in the snapshot or already sent
                    }
                    newest = newest.max(rev);
                    let Some(change) = self.event_change(link.options(), ev.event_type(), kv)
                    else {
                        continue;
                    };
                    if !link.send(change).await {
                        return End::EmperorGone;
                    }
                }
                // (the header's revision is not used: in the response that
                // confirms the watch it is the store's revision, ahead of the
                // events still to be replayed)
                self.seen = Some(newest);
            }
        }
    }
}

impl EtcdSource {
    /// Logs a skipped key, once while it stays bad.
    fn skipped(&mut self, key: &[u8], reason: String) {
        let key = String::from_utf8_lossy(key).into_owned();
        if self.refused.is_new((key.clone(), reason.clone())) {
            tracing::warn!(monitor = %self.mon.describe(), %key, %reason, "etcd key skipped");
        }
    }

    /// The name of a key under the prefix, if it is a vassal.
    fn vassal_name(&mut self, opts: &MonitorOptions, key: &[u8]) -> Option<emperor::VassalName> {
        let Ok(text) = std::str::from_utf8(key) else {
            self.skipped(key, "the key is not valid UTF-8".to_string());
            return None;
        };
        let rest = text.strip_prefix(self.mon.prefix.as_str())?;
        match kv::classify_name(rest, opts) {
            NameKind::Vassal(n) => Some(n),
            NameKind::Ignored => None,
            NameKind::Refused(reason) => {
                self.skipped(key, reason);
                None
            }
        }
    }

    fn event_change(
        &mut self,
        opts: &MonitorOptions,
        kind: etcd::EventType,
        kv: &etcd::KeyValue,
    ) -> Option<Change> {
        let name = self.vassal_name(opts, kv.key())?;
        Some(match kind {
            etcd::EventType::Delete => Change::Remove(name),
            etcd::EventType::Put => match kv::spec(name.clone(), kv.value(), kv.mod_revision()) {
                Ok(spec) => Change::Upsert(spec),
                Err(reason) => {
                    // what a full read would say: a bad record is not a vassal
                    self.skipped(kv.key(), reason.to_string());
                    Change::Remove(name)
                }
            },
        })
    }

    /// Reads every key under the prefix and sends a snapshot. Returns the
    /// revision of the read (`Ok(None)`: the emperor is gone).
    async fn snapshot(
        &mut self,
        client: &mut etcd::Client,
        link: &mut Link,
    ) -> Result<Option<i64>, String> {
        let prefix = self.mon.prefix.clone();
        let get = client.get(
            prefix.as_bytes(),
            Some(etcd::GetOptions::new().with_prefix()),
        );
        let resp = match tokio::time::timeout(REQUEST_TIMEOUT, get).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("read {prefix}: {e}")),
            Err(_) => return Err(format!("read {prefix}: timed out")),
        };
        let rev = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| format!("read {prefix}: the response has no header"))?;
        let mut specs = Vec::new();
        for kv in resp.kvs() {
            let Some(name) = self.vassal_name(link.options(), kv.key()) else {
                continue;
            };
            match kv::spec(name, kv.value(), kv.mod_revision()) {
                Ok(spec) => specs.push(spec),
                Err(reason) => self.skipped(kv.key(), reason.to_string()),
            }
        }
        self.refused.end_pass();
        tracing::debug!(monitor = %link.shown(), vassals = specs.len(), revision = rev, "etcd snapshot");
        if !link.snapshot(specs).await {
            return Ok(None);
        }
        Ok(Some(rev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_grammar() {
        let m = EtcdMonitor::new("etcd://a,b:2380/vassals", "a,b:2380/vassals").unwrap();
        assert_eq!(m.endpoints, vec!["a:2379", "b:2380"]);
        assert_eq!(m.prefix(), "/vassals/");
        assert_eq!(m.describe(), "etcd://a:2379,b:2380/vassals");
        let m = EtcdMonitor::new("etcd://u:secret@h/", "u:secret@h/").unwrap();
        assert_eq!(m.prefix(), "/");
        assert_eq!(m.describe(), "etcd://u:***@h:2379/");
        assert!(EtcdMonitor::new("etcd://h", "h").is_err());
        assert!(EtcdMonitor::new("etcd://h/a?b", "h/a?b").is_err());
        let err = EtcdMonitor::new("etcd://u:secret@h:x/a", "u:secret@h:x/a")
            .err()
            .unwrap();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
