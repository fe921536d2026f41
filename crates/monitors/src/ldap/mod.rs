//! `ldap://HOST[:PORT]/BASE-DN?ATTRIBUTES?SCOPE?FILTER?EXTENSIONS`: every
//! entry the search returns is a vassal (docs/monitors/ldap.md).
//!
//! The entry's attributes give the vassal name, its config text (sent over
//! the config pipe), the optional uid/gid and on-demand socket; its
//! `entryCSN` (or `modifyTimestamp`, or the `x-key=` attribute) is the change
//! key. The schema for the default attributes ships in
//! `contrib/ldap/uwsgi-vassal.ldif` (object class `uwsgiVassal`).
//!
//! The monitor searches every `--emperor-freq` seconds and sends the whole
//! result as a snapshot when it differs from the last one. When the server
//! advertises RFC 4533 content sync (OpenLDAP with the `syncprov` overlay),
//! it also keeps a refreshAndPersist search open on the same filter; each
//! change the server pushes triggers an immediate search, so changes are
//! acted on within milliseconds. The persistent search is only a wake-up
//! signal: the snapshot always comes from a plain search, so both paths
//! agree on what a vassal is.

mod entry;
mod url;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use emperor::{Monitor, MonitorContext, MonitorError, MonitorOptions, Secret, VassalSpec};
use futures::future::BoxFuture;
use ldap3::controls::{RefreshMode, SyncRequest};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, ResultEntry, Scope, SearchEntry};
use tokio::sync::mpsc;

use crate::session::{self, AbortOnDrop, End, Link, RescanClock, Source, WarnOnce};

pub use self::entry::{parse_csn, parse_generalized_time, parse_stamp};
pub use self::url::{AttrMap, LdapUrl, Password, DEFAULT_ATTRS, DEFAULT_FILTER, DEFAULT_PORT};

/// For the fuzz targets ([`crate::fuzzing`]): not an API.
#[doc(hidden)]
pub use self::{entry::Entry, url::redact};

/// The OID of the RFC 4533 Sync Request control.
const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pushed changes that arrive within this window cause one search.
const COALESCE: Duration = Duration::from_millis(20);

/// The ldap:// monitor.
pub struct LdapMonitor {
    url: Arc<LdapUrl>,
}

impl LdapMonitor {
    /// Parses `url` (the whole `--emperor` value). Bind credentials the URL
    /// does not give come from `opts`.
    pub fn new(url: &str, opts: &LdapOptions) -> Result<Self, MonitorError> {
        Ok(LdapMonitor {
            url: Arc::new(LdapUrl::parse(url, opts)?),
        })
    }
}

/// Builds an ldap:// monitor, with the bind of `--emperor-ldap-binddn` and
/// `--emperor-ldap-bindpw-file` ([`crate::options`]) when the URL has none.
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    Ok(Box::new(LdapMonitor::new(
        t.url,
        &LdapOptions::from_args(t.args),
    )?))
}

/// The bind an ldap:// monitor falls back to when its URL names none.
#[derive(Debug, Clone, Default)]
pub struct LdapOptions {
    /// The DN to bind as (`bindname=` in the URL wins); `None` binds
    /// anonymously.
    pub bind_dn: Option<String>,
    /// Its password (`x-bindpw=` / `x-bindpw-file=` in the URL win).
    pub bind_password: Option<Secret>,
}

impl LdapOptions {
    /// The options as the command line set them.
    pub fn from_args(args: &crate::MonitorArgs) -> LdapOptions {
        LdapOptions {
            bind_dn: args.text(&crate::options::LDAP_BIND_DN).map(str::to_string),
            bind_password: args.secret(&crate::options::LDAP_BIND_PASSWORD),
        }
    }
}

impl Monitor for LdapMonitor {
    fn describe(&self) -> String {
        self.url.to_string()
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        let shown = self.url.to_string();
        let src = LdapSource {
            shown: shown.clone(),
            url: self.url,
            warned: WarnOnce::default(),
        };
        Box::pin(session::run(src, ctx, shown, session::RETRY))
    }
}

/// Why the directory could not be read (becomes a `Degraded` health).
#[derive(Debug, thiserror::Error)]
enum SourceError {
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: Box<LdapError>,
    },
    #[error("cannot read the bind password file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bind as {dn} failed: {source}")]
    Bind {
        dn: String,
        #[source]
        source: Box<LdapError>,
    },
    #[error("search under {base} failed: {source}")]
    Search {
        base: String,
        #[source]
        source: Box<LdapError>,
    },
    #[error("the content sync search on {server} failed: {source}")]
    Sync {
        server: String,
        #[source]
        source: Box<LdapError>,
    },
    #[error("the connection to {server} closed{detail}")]
    Closed { server: String, detail: String },
}

/// What the content-sync watcher reports.
enum Push {
    /// An entry or an intermediate (Sync Info) message arrived.
    Message { intermediate: bool },
    /// The server ended the search (it does not keep it open).
    Ended(String),
    /// The search broke (the connection, usually).
    Failed(LdapError),
}

struct LdapSource {
    url: Arc<LdapUrl>,
    shown: String,
    /// (DN, reason) of the entries skipped, so each is logged once while it
    /// stays bad.
    warned: WarnOnce<(String, String)>,
}

impl Source for LdapSource {
    async fn session(&mut self, link: &mut Link) -> End {
        match self.connected_session(link).await {
            Ok(()) => End::EmperorGone,
            Err(e) => End::Lost(e.to_string()),
        }
    }
}

impl LdapSource {
    fn password(&self) -> Result<Option<Secret>, SourceError> {
        match &self.url.password {
            None => Ok(None),
            Some(Password::Inline(s)) => Ok(Some(s.clone())),
            Some(Password::File(path)) => std::fs::read_to_string(path)
                .map(|s| Some(Secret::new(s.trim_end_matches(['\r', '\n']))))
                .map_err(|source| SourceError::PasswordFile {
                    path: path.clone(),
                    source,
                }),
        }
    }

    /// One connection: returns `Ok(())` when the emperor is gone, an error
    /// when the directory cannot be read any more.
    #[allow(
        clippy::too_many_lines,
        reason = "one LDAP sync session: connect, bind, search, refresh, persist"
    )]
    async fn connected_session(&mut self, link: &mut Link) -> Result<(), SourceError> {
        let opts = link.options().clone();
        let op_timeout = opts.freq.max(Duration::from_secs(10));
        let server = self.url.server();
        let settings = LdapConnSettings::new().set_conn_timeout(CONNECT_TIMEOUT);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &server)
            .await
            .map_err(|source| SourceError::Connect {
                server: server.clone(),
                source: Box::new(source),
            })?;
        let mut driver = AbortOnDrop::spawn(conn.drive());

        if let Some(dn) = &self.url.bind_dn {
            let pw = self.password()?;
            let pw = pw.as_ref().map(Secret::expose).unwrap_or("");
            ldap.with_timeout(op_timeout);
            ldap.simple_bind(dn, pw)
                .await
                .and_then(|r| r.success())
                .map_err(|source| SourceError::Bind {
                    dn: dn.clone(),
                    source: Box::new(source),
                })?;
        }

        let (push_tx, mut push_rx) = mpsc::channel(64);
        let mut watcher = None;
        if self.sync_supported(&mut ldap, op_timeout).await {
            watcher = Some(AbortOnDrop::spawn(watch(
                ldap.clone(),
                self.url.clone(),
                push_tx,
            )));
            // The first snapshot is read once the refresh phase is over, so
            // every later change arrives as a pushed message.
            let refreshed = tokio::time::timeout(op_timeout, async {
                loop {
                    match push_rx.recv().await {
                        Some(Push::Message { intermediate: true }) => return Ok(true),
                        Some(Push::Message { .. }) => continue,
                        Some(Push::Ended(why)) => return Ok(self.sync_ended(&why)),
                        Some(Push::Failed(source)) => {
                            return Err(SourceError::Sync {
                                server: server.clone(),
                                source: Box::new(source),
                            })
                        }
                        None => return Ok(false),
                    }
                }
            })
            .await;
            match refreshed {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => watcher = None,
                Ok(Err(e)) => return Err(e),
                Err(_) => tracing::warn!(
                    monitor = %self.shown,
                    "[emperor] ldap monitor: the content sync refresh did not finish in {} s; polling meanwhile",
                    op_timeout.as_secs()
                ),
            }
        } else {
            tracing::info!(
                monitor = %self.shown,
                "[emperor] ldap monitor: the server offers no content sync (RFC 4533); polling every {} s",
                opts.freq.as_secs_f64()
            );
        }

        if !self.poll(&mut ldap, link, op_timeout).await? {
            return Ok(());
        }
        tracing::info!(
            monitor = %self.shown,
            push = watcher.is_some(),
            "[emperor] ldap monitor connected"
        );
        if !link.connected().await {
            return Ok(());
        }

        let mut tick = RescanClock::new(opts.freq);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                rescan = link.rescan_requested() => if !rescan {
                    return Ok(());
                },
                r = &mut driver => {
                    let detail = match r {
                        Ok(Ok(())) => String::new(),
                        Ok(Err(e)) => format!(": {e}"),
                        Err(e) => format!(": {e}"),
                    };
                    return Err(SourceError::Closed { server, detail });
                }
                msg = push_rx.recv(), if watcher.is_some() => {
                    let mut msg = msg;
                    tokio::time::sleep(COALESCE).await;
                    loop {
                        match msg {
                            Some(Push::Message { .. }) => {}
                            Some(Push::Ended(why)) => {
                                self.sync_ended(&why);
                                watcher = None;
                                break;
                            }
                            Some(Push::Failed(source)) => {
                            return Err(SourceError::Sync {
                                server: server.clone(),
                                source: Box::new(source),
                            })
                        }
                            None => {
                                watcher = None;
                                break;
                            }
                        }
                        match push_rx.try_recv() {
                            Ok(m) => msg = Some(m),
                            Err(_) => break,
                        }
                    }
                }
            }
            if !self.poll(&mut ldap, link, op_timeout).await? {
                return Ok(());
            }
        }
    }

    /// Logs that the server ended the persistent search; returns false (no push).
    fn sync_ended(&self, why: &str) -> bool {
        tracing::warn!(
            monitor = %self.shown,
            "[emperor] ldap monitor: the server ended the content sync search ({why}); polling only"
        );
        false
    }

    /// True when the root DSE lists the RFC 4533 Sync Request control.
    async fn sync_supported(&self, ldap: &mut Ldap, op_timeout: Duration) -> bool {
        ldap.with_timeout(op_timeout);
        let res = ldap
            .search("", Scope::Base, "(objectClass=*)", vec!["supportedControl"])
            .await
            .and_then(|r| r.success());
        match res {
            Ok((entries, _)) => entries.into_iter().any(|re| {
                SearchEntry::construct(re)
                    .attrs
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("supportedControl"))
                    .flat_map(|(_, v)| v)
                    .any(|oid| oid == SYNC_REQUEST_OID)
            }),
            Err(e) => {
                tracing::debug!(monitor = %self.shown, "cannot read the root DSE: {e}");
                false
            }
        }
    }

    /// Searches and sends a snapshot when it differs from the last one.
    /// False once the emperor is gone.
    async fn poll(
        &mut self,
        ldap: &mut Ldap,
        link: &mut Link,
        op_timeout: Duration,
    ) -> Result<bool, SourceError> {
        let url = self.url.clone();
        ldap.with_timeout(op_timeout);
        let (entries, _) = ldap
            .search(&url.base, url.scope, &url.filter, url.requested_attrs())
            .await
            .and_then(|r| r.success())
            .map_err(|source| SourceError::Search {
                base: url.base.clone(),
                source: Box::new(source),
            })?;
        let specs = self.specs(entries, link.options());
        Ok(link.snapshot(specs).await)
    }

    /// The vassals of one search result; bad entries are logged (once while
    /// they stay bad) and skipped.
    fn specs(&mut self, entries: Vec<ResultEntry>, opts: &MonitorOptions) -> Vec<VassalSpec> {
        let mut entries: Vec<entry::Entry> = entries
            .into_iter()
            .map(|re| SearchEntry::construct(re).into())
            .collect();
        entries.sort_by(|a, b| a.dn.cmp(&b.dn));
        let mut by_name: BTreeMap<String, (String, VassalSpec)> = BTreeMap::new();
        let mut refused = Vec::new();
        for e in entries {
            match e.spec(&self.url.attrs, self.url.key_attr.as_deref(), opts) {
                Ok(spec) => match by_name.get(spec.name.as_str()) {
                    Some((first, _)) => {
                        refused.push((
                            e.dn,
                            format!(
                                "vassal name {} is already used by {first}",
                                spec.name.as_str()
                            ),
                        ));
                    }
                    None => {
                        by_name.insert(spec.name.as_str().to_string(), (e.dn, spec));
                    }
                },
                Err(why) => {
                    refused.push((e.dn, why));
                }
            }
        }
        for (dn, why) in refused {
            if self.warned.is_new((dn.clone(), why.clone())) {
                tracing::warn!(monitor = %self.shown, dn = %dn, "[emperor] ldap monitor: skipping entry {dn}: {why}");
            }
        }
        self.warned.end_pass();
        by_name.into_values().map(|(_, spec)| spec).collect()
    }
}

/// Keeps an RFC 4533 refreshAndPersist search open on the monitor's filter
/// and reports every message; asks for no attributes (`1.1`), since a
/// message only triggers a fresh search.
async fn watch(mut ldap: Ldap, url: Arc<LdapUrl>, tx: mpsc::Sender<Push>) {
    ldap.with_controls(SyncRequest {
        mode: RefreshMode::RefreshAndPersist,
        cookie: None,
        reload_hint: false,
    });
    let mut stream = match ldap
        .streaming_search(&url.base, url.scope, &url.filter, vec!["1.1"])
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Push::Failed(e)).await;
            return;
        }
    };
    loop {
        let push = match stream.next().await {
            Ok(Some(e)) => Push::Message {
                intermediate: e.is_intermediate(),
            },
            Ok(None) => {
                let r = stream.finish().await;
                let why = if r.rc == 0 {
                    "it completed instead of staying open".to_string()
                } else {
                    format!("rc={} {}", r.rc, r.text)
                };
                let _ = tx.send(Push::Ended(why)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Push::Failed(e)).await;
                return;
            }
        };
        if tx.send(push).await.is_err() {
            return;
        }
    }
}
