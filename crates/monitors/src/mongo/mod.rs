//! `mongodb://` and `mongodb2://`: vassals from a MongoDB collection
//! (docs/monitors/mongodb.md), with the official `mongodb` driver.
//!
//! Each pass is one query for the whole set (`find(filter)` with the
//! projection `{name, config, ts, uid, gid, socket}`), sent to the emperor as
//! a [`emperor::Change::Snapshot`]: a document that no longer matches the filter, or
//! is deleted, stops its vassal; a larger `ts` reloads it.
//!
//! When the server offers change streams (a replica set, even of one node),
//! the monitor watches the collection and runs a pass as soon as anything in
//! it changes, so changes act within milliseconds; it resumes the stream
//! from the last resume token after a reconnect. Otherwise (a standalone
//! server) it polls every `--emperor-freq`. Either way a pass also runs every
//! `--emperor-freq` and on a rescan request, as a safety net.
//!
//! A server that is down, refuses the credentials or fails the query is a
//! [`MonitorHealth::Degraded`] change: running vassals stay as they are, the
//! monitor reconnects with capped backoff and sends a fresh snapshot when the
//! server is back. Documents that cannot be used are skipped with a warning
//! that names them and says why (once, not on every pass).
//!
//! See docs/monitors/mongodb.md for the URL grammars and the document schema.

pub mod document;
pub mod relaxed_json;
pub mod url;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{doc, Document, RawDocumentBuf};
use emperor::{
    Monitor, MonitorContext, MonitorError, MonitorHealth, MonitorOptions, NamePolicy, VassalName,
    VassalSpec,
};
use futures::future::BoxFuture;
use futures::TryStreamExt;
use mongodb::change_stream::event::ResumeToken;
use mongodb::error::{Error as DriverError, ErrorKind};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use tokio::sync::mpsc;

pub use url::{MongoUrl, UrlForm};

use crate::session::{self, AbortOnDrop, End, Link, RescanClock, Source, WarnOnce};

/// How long to wait for a reachable server before an operation fails (the
/// driver's default is 30 s; uWSGI uses its 4 s socket timeout). A
/// connection string's own `serverSelectionTimeoutMS` / `connectTimeoutMS` win.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(4);

/// Server error codes that mean "this server has no change streams":
/// 40573 ($changeStream only on replica sets), 40324 (unknown pipeline
/// stage), 115 (command not supported).
const NO_CHANGE_STREAMS: &[i32] = &[40573, 40324, 115];

/// The mongodb:// / mongodb2:// monitor.
pub struct MongoMonitor {
    url: MongoUrl,
}

impl MongoMonitor {
    /// Parses `url` (the whole `--emperor` value). Nothing connects yet.
    pub fn new(url: &str) -> Result<Self, MonitorError> {
        let parsed = url::parse(url).map_err(|reason| MonitorError::BadUrl {
            // the URL itself may carry a password: show the masked form
            url: url::mask_password(url),
            reason,
        })?;
        Ok(MongoMonitor { url: parsed })
    }

    /// The parsed source (for tests and diagnostics; its `Debug` hides passwords).
    pub fn url(&self) -> &MongoUrl {
        &self.url
    }
}

/// Builds a mongodb:// or mongodb2:// monitor.
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    Ok(Box::new(MongoMonitor::new(t.url)?))
}

impl Monitor for MongoMonitor {
    fn describe(&self) -> String {
        self.url.shown.clone()
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        Box::pin(run(self.url, ctx))
    }
}

/// How the monitor learns about changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ChangeStream,
    Polling,
}

/// What survives from one session to the next.
struct State {
    url: MongoUrl,
    coll: Collection<RawDocumentBuf>,
    mode: Option<Mode>,
    token: Arc<Mutex<Option<ResumeToken>>>,
    /// The skipped documents warned about (once while they stay bad).
    warned: WarnOnce<String>,
    /// The last pass's specs, by name: a document whose name is good but
    /// whose other fields are not keeps its vassal on the last good one.
    last_good: std::collections::HashMap<VassalName, VassalSpec>,
}

async fn client(url: &MongoUrl) -> Result<Client, DriverError> {
    let mut o = ClientOptions::parse(url.conn.clone()).await?;
    if let Some(c) = &url.credential {
        o.credential = Some(c.clone());
    }
    o.app_name
        .get_or_insert_with(|| "imperium-emperor".to_string());
    o.server_selection_timeout.get_or_insert(SERVER_TIMEOUT);
    o.connect_timeout.get_or_insert(SERVER_TIMEOUT);
    Client::with_options(o)
}

async fn run(url: MongoUrl, ctx: MonitorContext) {
    let client = match client(&url).await {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("cannot set up the MongoDB client: {}", e.kind);
            tracing::error!(monitor = %url.shown, "[emperor-mongodb] {reason}");
            ctx.health(MonitorHealth::Failed(reason)).await;
            return;
        }
    };
    let coll = client
        .database(&url.database)
        .collection::<RawDocumentBuf>(&url.collection);
    let shown = url.shown.clone();
    let state = State {
        url,
        coll,
        mode: None,
        token: Arc::new(Mutex::new(None)),
        warned: WarnOnce::default(),
        last_good: std::collections::HashMap::new(),
    };
    session::run(state, ctx, shown, session::RETRY).await
}

/// Why a change-stream stretch ended.
enum Stretch {
    /// The session ends.
    End(End),
    /// The change stream closed cleanly (collection dropped or renamed): open it again.
    StreamClosed,
}

impl Source for State {
    async fn session(&mut self, link: &mut Link) -> End {
        loop {
            match self.stretch(link).await {
                Stretch::End(end) => return end,
                Stretch::StreamClosed => {
                    tracing::info!(monitor = %self.url.shown, "[emperor-mongodb] change stream closed (collection dropped or renamed?); reopening");
                    self.token.lock().unwrap_or_else(|p| p.into_inner()).take();
                    tokio::time::sleep(session::RETRY.first).await;
                }
            }
        }
    }
}

impl State {
    /// One connected stretch: find out the mode, sync, then follow changes
    /// until something fails.
    async fn stretch(&mut self, link: &mut Link) -> Stretch {
        let lost = |reason| Stretch::End(End::Lost(reason));
        let freq = link.options().freq;
        let mut watcher = match open_stream(self).await {
            Ok(w) => w,
            Err(e) => return lost(e),
        };
        let mode = if watcher.is_some() {
            Mode::ChangeStream
        } else {
            Mode::Polling
        };
        if self.mode != Some(mode) {
            self.mode = Some(mode);
            match mode {
                Mode::ChangeStream => tracing::info!(
                    monitor = %self.url.shown,
                    "[emperor-mongodb] watching {}.{} with a change stream (changes act at once; full pass every {:?})",
                    self.url.database, self.url.collection, freq
                ),
                Mode::Polling => tracing::info!(
                    monitor = %self.url.shown,
                    "[emperor-mongodb] the server offers no change streams (not a replica set): polling {}.{} every {:?}",
                    self.url.database, self.url.collection, freq
                ),
            }
        }
        let mut ticker = RescanClock::new(freq);
        loop {
            let specs = match pass(self, link.options()).await {
                Ok(specs) => specs,
                Err(e) => return lost(e),
            };
            if !link.is_connected() {
                tracing::info!(monitor = %self.url.shown, vassals = specs.len(), "[emperor-mongodb] connected");
            }
            if !link.connected().await || !link.snapshot(specs).await {
                return Stretch::End(End::EmperorGone);
            }
            tokio::select! {
                _ = ticker.tick() => {}
                rescan = link.rescan_requested() => if !rescan {
                    return Stretch::End(End::EmperorGone);
                },
                signal = async {
                    match watcher.as_mut() {
                        Some(w) => w.next().await,
                        None => std::future::pending().await,
                    }
                } => match signal {
                    Signal::Changed => {}
                    Signal::Closed => return Stretch::StreamClosed,
                    Signal::Failed(e) => return lost(format!("change stream: {e}")),
                }
            }
        }
    }
}

/// Opens the change stream (resuming from the last token when there is
/// one). `Ok(None)` means the server has no change streams: poll.
async fn open_stream(state: &State) -> Result<Option<Watcher>, String> {
    let token = state
        .token
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let resumed = token.is_some();
    let mut result = state.coll.watch().resume_after(token).await;
    if resumed {
        if let Err(e) = &result {
            if matches!(*e.kind, ErrorKind::Command(_)) && !no_change_streams(e) {
                // the server answered but cannot resume (history gone): start afresh,
                // the pass that follows resyncs everything anyway
                tracing::info!(monitor = %state.url.shown, "[emperor-mongodb] cannot resume the change stream ({}); starting a new one", e.kind);
                state.token.lock().unwrap_or_else(|p| p.into_inner()).take();
                result = state.coll.watch().await;
            }
        }
    }
    match result {
        Ok(stream) => {
            if resumed {
                tracing::info!(monitor = %state.url.shown, "[emperor-mongodb] change stream resumed from the last resume token");
            }
            Ok(Some(Watcher::spawn(stream, state.token.clone())))
        }
        Err(e) if no_change_streams(&e) => Ok(None),
        Err(e) => Err(e.kind.to_string()),
    }
}

fn no_change_streams(e: &DriverError) -> bool {
    match &*e.kind {
        ErrorKind::Command(c) => NO_CHANGE_STREAMS.contains(&c.code),
        _ => false,
    }
}

/// What the change stream reader reports.
enum Signal {
    /// Something in the collection changed: run a pass.
    Changed,
    /// The stream ended (invalidated).
    Closed,
    /// The stream failed (server gone, and the driver's own resume failed too).
    Failed(String),
}

/// Reads the change stream in its own task, so that the stream is never
/// dropped in the middle of a `getMore`; changes are coalesced into one
/// pending signal (a burst of writes is one pass).
struct Watcher {
    rx: mpsc::Receiver<Signal>,
    _task: AbortOnDrop<()>,
}

impl Watcher {
    fn spawn(
        mut stream: mongodb::change_stream::ChangeStream<
            mongodb::change_stream::event::ChangeStreamEvent<RawDocumentBuf>,
        >,
        token: Arc<Mutex<Option<ResumeToken>>>,
    ) -> Watcher {
        let (tx, rx) = mpsc::channel(1);
        let task = AbortOnDrop::spawn(async move {
            let save = |stream: &mongodb::change_stream::ChangeStream<_>| {
                if let Some(t) = stream.resume_token() {
                    *token.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
                }
            };
            // the token is kept current even without events (the server's
            // post-batch token), so a reconnect resumes where the stream was
            save(&stream);
            loop {
                let signal = match stream.next_if_any().await {
                    Ok(Some(ev)) => {
                        save(&stream);
                        tracing::debug!(op = ?ev.operation_type, "[emperor-mongodb] change");
                        // a full channel already holds a pending "changed": coalesce
                        let _ = tx.try_send(Signal::Changed);
                        continue;
                    }
                    Ok(None) if stream.is_alive() => {
                        save(&stream);
                        continue;
                    }
                    Ok(None) => Signal::Closed,
                    Err(e) => Signal::Failed(e.kind.to_string()),
                };
                let _ = tx.send(signal).await;
                return;
            }
        });
        Watcher { rx, _task: task }
    }

    async fn next(&mut self) -> Signal {
        self.rx
            .recv()
            .await
            .unwrap_or_else(|| Signal::Failed("change stream reader stopped".to_string()))
    }
}

/// One pass: one query for the whole set.
async fn pass(state: &mut State, opts: &MonitorOptions) -> Result<Vec<VassalSpec>, String> {
    let mut projection = Document::new();
    for f in document::FIELDS {
        projection.insert(*f, 1);
    }
    let mut cursor = state
        .coll
        .find(state.url.filter.clone())
        .projection(projection)
        .sort(doc! {"_id": 1})
        .await
        .map_err(|e| format!("query failed: {}", e.kind))?;
    let mut specs = Vec::new();
    let mut names: HashSet<VassalName> = HashSet::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut bad_names: Vec<VassalName> = Vec::new();
    while let Some(raw) = cursor
        .try_next()
        .await
        .map_err(|e| format!("query failed: {}", e.kind))?
    {
        let doc = match Document::try_from(raw.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                let id = raw
                    .get("_id")
                    .ok()
                    .flatten()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_else(|| "?".to_string());
                skipped.push(format!("document _id {id}: unreadable BSON: {e}"));
                continue;
            }
        };
        match document::spec_from_document(&doc, opts) {
            Ok(spec) if !names.insert(spec.name.clone()) => {
                skipped.push(format!(
                    "document {}: another document with this name came first",
                    document::label(&doc)
                ));
            }
            Ok(spec) => specs.push(spec),
            Err(reason) => {
                let name = doc
                    .get_str("name")
                    .ok()
                    .and_then(|n| VassalName::parse(n, &opts.extensions, NamePolicy::Plain).ok());
                let kept = name.filter(|n| state.last_good.contains_key(n));
                let also = if kept.is_some() {
                    "; the vassal keeps its previous config"
                } else {
                    ""
                };
                skipped.push(format!(
                    "document {}: {reason}{also}",
                    document::label(&doc)
                ));
                bad_names.extend(kept);
            }
        }
    }
    // a bad edit never stops a running vassal
    for name in bad_names {
        if names.insert(name.clone()) {
            if let Some(old) = state.last_good.get(&name) {
                specs.push(old.clone());
            }
        }
    }
    state.last_good = specs.iter().map(|s| (s.name.clone(), s.clone())).collect();
    for s in skipped {
        if state.warned.is_new(s.clone()) {
            tracing::warn!(monitor = %state.url.shown, "[emperor-mongodb] skipping {s}");
        }
    }
    state.warned.end_pass();
    Ok(specs)
}
