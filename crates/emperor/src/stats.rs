//! The stats model and the stats server (`--emperor-stats`).
//!
//! A [`Snapshot`] is an owned copy of what an observer may see of the
//! vassal table, taken inside the emperor's loop through
//! [`Command::Inspect`] (microseconds), then serialised and written by the
//! observer's own task: a slow or stuck client never stalls the emperor.
//!
//! [`Snapshot::to_uwsgi_json`] renders uWSGI's emperor stats document
//! (reference §13): the same keys in the same order as uWSGI 2.0, always
//! valid JSON, followed by imperium's extra keys. Secrets (passwords in
//! URLs and conninfo strings) are redacted; inline config text is never
//! shown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};

use crate::events::{Counters, ExitStatus};
use crate::reconciler::{Reconciler, VassalState};
use crate::runtime::Command;
use crate::spec::{ConfigSource, MonitorHealth};

/// One monitor in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorSnap {
    /// Its index (order of the `--emperor` options).
    pub id: usize,
    /// The URL as shown (passwords removed).
    pub url: String,
    /// `unknown` (nothing reported yet), `connected`, `degraded`, `failed`.
    pub health: &'static str,
    /// The reason when degraded or failed.
    pub reason: Option<String>,
}

/// One vassal in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct VassalSnap {
    pub name: String,
    pub state: VassalState,
    pub pid: Option<u32>,
    pub monitor: usize,
    /// Where the config comes from: a path, `(inline)`, or a URL
    /// (password removed).
    pub config: String,
    pub born: f64,
    pub last_mod: i64,
    pub last_heartbeat: f64,
    pub loyal: bool,
    pub ready: bool,
    pub accepting: bool,
    pub last_loyal: f64,
    pub last_ready: f64,
    pub last_accepting: f64,
    pub last_run: f64,
    /// When the emperor decided to stop it (0 when not stopping).
    pub cursed: f64,
    pub zerg: bool,
    pub on_demand: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub reloads: u64,
    pub restarts: u64,
    pub last_exit: Option<ExitStatus>,
    /// Unix time of a scheduled (throttled) respawn.
    pub next_respawn: Option<f64>,
    pub paused: bool,
    /// A config change arrived while paused and waits for `resume`.
    pub change_held: bool,
    pub refused: Option<String>,
}

/// One blacklist entry in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct BlacklistSnap {
    pub name: String,
    /// The refusal window in milliseconds.
    pub level_ms: u64,
    pub attempt: u32,
    pub first_attempt: f64,
    pub last_attempt: f64,
}

/// What observers see: an owned copy of the table, the blacklist, the
/// monitors and the counters at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Unix time the snapshot was taken.
    pub taken: f64,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cwd: PathBuf,
    pub tyrant: bool,
    pub shutting_down: bool,
    pub monitors: Vec<MonitorSnap>,
    pub vassals: Vec<VassalSnap>,
    pub blacklist: Vec<BlacklistSnap>,
    pub counters: Counters,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Converts monotonic instants to wall-clock seconds.
struct Clock {
    now: Instant,
    wall: SystemTime,
}

impl Clock {
    fn unix(&self, t: Instant) -> f64 {
        let w = if t <= self.now {
            self.wall.checked_sub(self.now - t)
        } else {
            self.wall.checked_add(t - self.now)
        };
        w.map(unix).unwrap_or(0.0)
    }
}

/// Replaces passwords in `s`: the password of `scheme://user:password@`
/// URLs and the value of `password=` in key/value strings (PostgreSQL
/// conninfo).
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(c) => {
                        out.push_str(&userinfo[..c]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    // key=value strings
    let mut res = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        res.push_str(&rest[..i + 9]);
        let tail = &rest[i + 9..];
        let end = if let Some(q) = tail.strip_prefix('\'') {
            q.find('\'').map(|e| e + 2).unwrap_or(tail.len())
        } else {
            tail.find(|c: char| c.is_whitespace() || c == ';' || c == '&')
                .unwrap_or(tail.len())
        };
        res.push_str("***");
        rest = &tail[end..];
    }
    res.push_str(rest);
    res
}

impl Snapshot {
    /// Copies what observers may see out of the reconciler.
    pub fn take(rec: &Reconciler) -> Snapshot {
        let clock = Clock {
            now: Instant::now(),
            wall: SystemTime::now(),
        };
        let monitors = rec
            .monitors()
            .iter()
            .enumerate()
            .map(|(id, m)| {
                let (health, reason) = match &m.health {
                    None => ("unknown", None),
                    Some(MonitorHealth::Connected) => ("connected", None),
                    Some(MonitorHealth::Degraded(r)) => ("degraded", Some(redact(r))),
                    Some(MonitorHealth::Failed(r)) => ("failed", Some(redact(r))),
                };
                MonitorSnap {
                    id,
                    url: redact(&m.url),
                    health,
                    reason,
                }
            })
            .collect();
        let vassals = rec
            .vassals()
            .map(|v| {
                let p = v.proc();
                let spec = v.desired.as_ref();
                VassalSnap {
                    name: v.name.to_string(),
                    state: v.phase.state(),
                    pid: v.pid(),
                    monitor: v.monitor,
                    config: match spec.map(|s| &s.config) {
                        Some(ConfigSource::File(p)) => p.display().to_string(),
                        Some(ConfigSource::Inline(_)) => "(inline)".into(),
                        Some(ConfigSource::Url(u)) => redact(u),
                        None => String::new(),
                    },
                    born: unix(v.born),
                    last_mod: v.applied_key.as_secs(),
                    last_heartbeat: p
                        .and_then(|p| p.last_heartbeat)
                        .map_or(0.0, |t| clock.unix(t)),
                    loyal: p.is_some_and(|p| p.loyal),
                    ready: p.is_some_and(|p| p.ready),
                    accepting: p.is_some_and(|p| p.accepting),
                    last_loyal: v.last_loyal.map_or(0.0, unix),
                    last_ready: v.last_ready.map_or(0.0, unix),
                    last_accepting: v.last_accepting.map_or(0.0, unix),
                    last_run: p.map_or(0.0, |p| unix(p.started_wall)),
                    cursed: v.phase.stopping().map_or(0.0, |(_, t)| clock.unix(t)),
                    zerg: v.name.as_str().contains(':'),
                    on_demand: spec.and_then(|s| s.socket.clone()),
                    uid: spec.and_then(|s| s.owner).map_or(0, |o| o.uid),
                    gid: spec.and_then(|s| s.owner).map_or(0, |o| o.gid),
                    reloads: v.reloads,
                    restarts: v.restarts,
                    last_exit: v.last_exit,
                    next_respawn: v.phase.respawn_at().map(|t| clock.unix(t)),
                    paused: v.paused,
                    change_held: v.held_change.is_some(),
                    refused: v.phase.refused().map(str::to_string),
                }
            })
            .collect();
        let mut blacklist: Vec<BlacklistSnap> = rec
            .blacklist()
            .entries()
            .map(|(n, e)| BlacklistSnap {
                name: n.to_string(),
                level_ms: e.level.as_millis() as u64,
                attempt: e.attempt,
                first_attempt: clock.unix(e.first_attempt),
                last_attempt: clock.unix(e.last_attempt),
            })
            .collect();
        blacklist.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            taken: unix(clock.wall),
            pid: std::process::id(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cwd: std::env::current_dir().unwrap_or_default(),
            tyrant: false,
            shutting_down: rec.is_shutting_down(),
            monitors,
            vassals,
            blacklist,
            counters: rec.counters().clone(),
        }
    }

    /// Asks the emperor for a snapshot through its command channel.
    pub async fn request(commands: &mpsc::Sender<Command>) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        let f = Box::new(move |rec: &Reconciler| {
            let _ = tx.send(Snapshot::take(rec));
        });
        commands.send(Command::Inspect(f)).await.ok()?;
        rx.await.ok()
    }

    /// The vassal called `name`.
    pub fn vassal(&self, name: &str) -> Option<&VassalSnap> {
        self.vassals.iter().find(|v| v.name == name)
    }

    /// uWSGI's emperor stats document (see the module docs), pretty-printed
    /// with tabs unless `minified`.
    pub fn to_uwsgi_json(&self, minified: bool) -> String {
        let doc = self.uwsgi_doc();
        if minified {
            serde_json::to_string(&doc).expect("stats serialise")
        } else {
            let mut buf = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            doc.serialize(&mut ser).expect("stats serialise");
            buf.push(b'\n');
            String::from_utf8(buf).expect("utf-8")
        }
    }

    fn uwsgi_doc(&self) -> UwsgiStats<'_> {
        let secs = |f: f64| f as i64;
        UwsgiStats {
            version: concat!("imperium-", env!("CARGO_PKG_VERSION")),
            pid: self.pid,
            uid: self.uid,
            gid: self.gid,
            cwd: self.cwd.to_string_lossy().into_owned(),
            emperor: self.monitors.iter().map(|m| m.url.as_str()).collect(),
            emperor_tyrant: u8::from(self.tyrant),
            throttle_level: 0,
            vassals: self
                .vassals
                .iter()
                .map(|v| UwsgiVassal {
                    id: &v.name,
                    pid: v.pid.map_or(-1, i64::from),
                    born: secs(v.born),
                    last_mod: v.last_mod,
                    last_heartbeat: secs(v.last_heartbeat),
                    loyal: u8::from(v.loyal),
                    ready: u8::from(v.ready),
                    accepting: u8::from(v.accepting),
                    last_loyal: secs(v.last_loyal),
                    last_ready: secs(v.last_ready),
                    last_accepting: secs(v.last_accepting),
                    first_run: secs(v.born),
                    last_run: secs(v.last_run),
                    cursed: secs(v.cursed),
                    zerg: u8::from(v.zerg),
                    on_demand: v.on_demand.as_deref().unwrap_or(""),
                    uid: v.uid,
                    gid: v.gid,
                    monitor: self.monitors.get(v.monitor).map_or("", |m| m.url.as_str()),
                    respawns: v.reloads,
                    state: v.state,
                    last_exit: v.last_exit,
                    restarts: v.restarts,
                    next_respawn: v.next_respawn,
                    next_respawn_in: v
                        .next_respawn
                        .map(|t| ((t - self.taken).max(0.0) * 1000.0).round() / 1000.0),
                    monitor_id: v.monitor,
                    monitor_health: self.monitors.get(v.monitor).map_or("unknown", |m| m.health),
                    paused: v.paused,
                    change_held: v.change_held,
                    config: &v.config,
                })
                .collect(),
            blacklist: self
                .blacklist
                .iter()
                .map(|b| UwsgiBlacklist {
                    id: &b.name,
                    throttle_level: b.level_ms,
                    attempt: b.attempt,
                    first_attempt: secs(b.first_attempt),
                    last_attempt: secs(b.last_attempt),
                })
                .collect(),
            monitors: &self.monitors,
            counters: &self.counters,
        }
    }
}

// Field order is the wire order: uWSGI 2.0's keys first, then imperium's.
#[derive(Serialize)]
struct UwsgiStats<'a> {
    version: &'static str,
    pid: u32,
    uid: u32,
    gid: u32,
    cwd: String,
    emperor: Vec<&'a str>,
    emperor_tyrant: u8,
    throttle_level: u64,
    vassals: Vec<UwsgiVassal<'a>>,
    blacklist: Vec<UwsgiBlacklist<'a>>,
    monitors: &'a [MonitorSnap],
    counters: &'a Counters,
}

#[derive(Serialize)]
struct UwsgiVassal<'a> {
    id: &'a str,
    pid: i64,
    born: i64,
    last_mod: i64,
    last_heartbeat: i64,
    loyal: u8,
    ready: u8,
    accepting: u8,
    last_loyal: i64,
    last_ready: i64,
    last_accepting: i64,
    first_run: i64,
    last_run: i64,
    cursed: i64,
    zerg: u8,
    on_demand: &'a str,
    uid: u32,
    gid: u32,
    monitor: &'a str,
    respawns: u64,
    // imperium's extras
    state: VassalState,
    last_exit: Option<ExitStatus>,
    restarts: u64,
    next_respawn: Option<f64>,
    next_respawn_in: Option<f64>,
    monitor_id: usize,
    monitor_health: &'a str,
    paused: bool,
    change_held: bool,
    config: &'a str,
}

#[derive(Serialize)]
struct UwsgiBlacklist<'a> {
    id: &'a str,
    throttle_level: u64,
    attempt: u32,
    first_attempt: i64,
    last_attempt: i64,
}

// ----- the server ---------------------------------------------------------------

/// Settings of the stats server.
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// `--emperor-stats`: TCP when it contains a colon, else a UNIX path.
    pub addr: String,
    /// `--stats-http`: read the request, answer with HTTP headers.
    pub http: bool,
    /// `--stats-minified`.
    pub minified: bool,
    /// Time allowed to read the request and write the answer
    /// (`--socket-timeout`, 4 s in uWSGI).
    pub timeout: Duration,
    /// Mode of a UNIX socket file (`--chmod-socket`); `None` keeps the umask.
    pub mode: Option<u32>,
    /// `--emperor-tyrant` (shown as `emperor_tyrant`).
    pub tyrant: bool,
}

/// Errors binding an observer socket.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// A bound listener, TCP or UNIX.
pub enum Listener {
    Tcp(TcpListener),
    /// A UNIX socket, and its file (`None` in the abstract namespace).
    Unix(UnixListener, Option<PathBuf>),
}

/// A connection accepted by a [`Listener`].
pub trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Conn for T {}

impl Listener {
    /// Binds `addr`: TCP when it contains a colon (`127.0.0.1:9191`,
    /// `:9191` = every address), an abstract UNIX socket when it starts
    /// with `@` (as in uWSGI), else a UNIX socket path (a stale socket file
    /// is replaced) with `mode` applied.
    pub async fn bind(addr: &str, mode: Option<u32>) -> Result<Listener, BindError> {
        let err = |source| BindError {
            addr: addr.to_string(),
            source,
        };
        if addr.contains(':') {
            let a = if addr.starts_with(':') {
                format!("0.0.0.0{addr}")
            } else {
                addr.to_string()
            };
            return TcpListener::bind(a).await.map(Listener::Tcp).map_err(err);
        }
        if let Some(name) = addr.strip_prefix('@') {
            // the abstract namespace: no file, no mode, gone with the socket
            use std::os::linux::net::SocketAddrExt;
            let sa = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(err)?;
            let l = std::os::unix::net::UnixListener::bind_addr(&sa).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            return UnixListener::from_std(l)
                .map(|l| Listener::Unix(l, None))
                .map_err(err);
        }
        let path = PathBuf::from(addr);
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if m.file_type().is_socket() {
                let _ = std::fs::remove_file(&path);
            }
        }
        let l = UnixListener::bind(&path).map_err(err)?;
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
        }
        Ok(Listener::Unix(l, Some(path)))
    }

    /// Accepts one connection, with the peer's credentials for UNIX sockets.
    pub async fn accept(
        &self,
    ) -> std::io::Result<(Box<dyn Conn>, Option<tokio::net::unix::UCred>)> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), None))
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let cred = s.peer_cred().ok();
                Ok((Box::new(s), cred))
            }
        }
    }

    /// The TCP port (for tests binding port 0).
    pub fn local_port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(..) => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(p)) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// At most this many stats clients are served at once; more wait in the
/// kernel's backlog.
pub const MAX_CLIENTS: usize = 64;

/// Serves the stats document: one snapshot per connection, written by the
/// connection's own task within `opts.timeout`.
pub async fn serve(listener: Listener, opts: StatsOptions, commands: mpsc::Sender<Command>) {
    let timeout = opts.timeout;
    let opts = Arc::new(opts);
    crate::serve::accept_loop(
        listener,
        timeout,
        |e| tracing::warn!(error = %e, "stats server: accept failed"),
        move |conn, _| {
            let opts = opts.clone();
            let commands = commands.clone();
            async move { answer(conn, &opts, &commands).await }
        },
        |r| match r {
            Ok(Err(e)) => tracing::debug!(error = %e, "stats client"),
            Err(_) => tracing::debug!("stats client too slow; dropped"),
            Ok(Ok(())) => {}
        },
    )
    .await
}

async fn answer(
    mut conn: Box<dyn Conn>,
    opts: &StatsOptions,
    commands: &mpsc::Sender<Command>,
) -> std::io::Result<()> {
    if opts.http {
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).await?;
    }
    let Some(mut snap) = Snapshot::request(commands).await else {
        return Ok(()); // the emperor is gone
    };
    snap.tyrant = opts.tyrant;
    let body = snap.to_uwsgi_json(opts.minified);
    if opts.http {
        conn.write_all(b"HTTP/1.0 200 OK\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: application/json\r\n\r\n").await?;
    }
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_url_and_conninfo_passwords() {
        assert_eq!(redact("pg://user:s3cret@db/x"), "pg://user:***@db/x");
        assert_eq!(
            redact("pg://host=db user=u password=s3cret dbname=v;select 1"),
            "pg://host=db user=u password=*** dbname=v;select 1"
        );
        assert_eq!(
            redact("password='a b' x=1 amqp://g:h@q:5672 mongodb://n@h"),
            "password=*** x=1 amqp://g:***@q:5672 mongodb://n@h"
        );
        assert_eq!(redact("/etc/uwsgi/vassals"), "/etc/uwsgi/vassals");
    }

    #[test]
    fn json_keeps_uwsgi_key_order_and_escapes() {
        use crate::name::{Extensions, NamePolicy, VassalName};
        use crate::reconciler::ReconcilerConfig;
        use crate::spec::{Change, ChangeKey, VassalSpec};
        let mut rec = Reconciler::new(ReconcilerConfig::default(), vec!["pg://u:pw@h".into()]);
        let n =
            VassalName::parse("we\"ird.ini", &Extensions::default(), NamePolicy::Plain).unwrap();
        let acts = rec.monitor_change(
            0,
            Change::Snapshot(vec![VassalSpec::inline(
                n,
                "[uwsgi]\nsecret=1\n",
                ChangeKey::Stamp(5),
            )]),
            Instant::now(),
        );
        assert_eq!(acts.len(), 1);
        let snap = Snapshot::take(&rec);
        for minified in [false, true] {
            let text = snap.to_uwsgi_json(minified);
            let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(v["vassals"][0]["id"], "we\"ird.ini");
            assert_eq!(v["vassals"][0]["pid"], -1);
            assert_eq!(v["emperor"][0], "pg://u:***@h");
            assert!(!text.contains("pw") && !text.contains("secret"), "{text}");
            let top = [
                "\"version\"",
                "\"pid\"",
                "\"uid\"",
                "\"gid\"",
                "\"cwd\"",
                "\"emperor\"",
                "\"emperor_tyrant\"",
                "\"throttle_level\"",
                "\"vassals\"",
                "\"blacklist\"",
            ];
            let pos: Vec<usize> = top.iter().map(|k| text.find(k).unwrap()).collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
            let keys: Vec<&String> = v["vassals"][0].as_object().unwrap().keys().collect();
            assert!(keys.len() > 20);
            assert_eq!(minified, !text.contains("\n\t"));
        }
        let text = snap.to_uwsgi_json(false);
        let text = &text[text.find("\"vassals\"").unwrap()..];
        let vpos: Vec<usize> = [
            "\"id\"",
            "\"pid\"",
            "\"born\"",
            "\"last_mod\"",
            "\"last_heartbeat\"",
            "\"loyal\"",
            "\"ready\"",
            "\"accepting\"",
            "\"last_loyal\"",
            "\"last_ready\"",
            "\"last_accepting\"",
            "\"first_run\"",
            "\"last_run\"",
            "\"cursed\"",
            "\"zerg\"",
            "\"on_demand\"",
            "\"uid\"",
            "\"gid\"",
            "\"monitor\"",
            "\"respawns\"",
            "\"state\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(vpos.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}
