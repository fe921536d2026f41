//! Steering a running emperor: the control socket (`--emperor-control-socket`,
//! spoken by `imperium ctl`) and uWSGI 2.1's datagram command socket
//! (`--emperor-command-socket`, uWSGI 2.1's, see docs/operations.md).
//!
//! The control socket is a UNIX stream socket. Each connection sends one
//! [`Request`] as a JSON line and gets one [`Reply`] as a JSON line. The
//! socket file is created with mode 0600 (`--emperor-control-socket-mode`)
//! and every connection's peer credentials (`SO_PEERCRED`) are checked:
//! root, the emperor's own uid, and the uids/gids given with
//! `--emperor-control-allow-uid/-gid` are served; anybody else gets an
//! error reply and a warning in the log.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::reconciler::{Action, OperatorError, Reconciler};
use crate::runtime::Command;
use crate::stats::{Listener, Snapshot};

/// One request on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Every vassal.
    List,
    /// `--emperor-cluster`: the members, their leases and the vassals each
    /// holds ([`crate::cluster::ClusterView`]).
    Cluster,
    /// One vassal.
    Show {
        /// The vassal.
        vassal: String,
    },
    /// Graceful reload.
    Reload {
        /// The vassal.
        vassal: String,
        /// Reload even when its last change was rejected by its check (or
        /// is being checked): the change is applied unchecked.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Stop; it stays down until `start`.
    Stop {
        /// The vassal.
        vassal: String,
    },
    /// Start a stopped, exiled, idle or throttled vassal.
    Start {
        /// The vassal.
        vassal: String,
    },
    /// Pause automatic reloads on config changes.
    Pause {
        /// The vassal.
        vassal: String,
    },
    /// Resume automatic reloads, applying a held change.
    Resume {
        /// The vassal.
        vassal: String,
    },
    /// Clear the blacklist entry of one vassal, or of all when `None`.
    ClearBlacklist {
        /// The vassal.
        vassal: Option<String>,
    },
    /// The last lines of a vassal's captured output (`--vassal-logs`
    /// prefix or dir). With `follow`, the reply is followed by one JSON
    /// line `{"lines": [...], "missed": N}` per batch of new lines, until
    /// the client closes the connection.
    Logs {
        /// The vassal.
        vassal: String,
        /// How many of the last lines.
        #[serde(default = "default_lines")]
        lines: usize,
        /// Keep sending new lines.
        #[serde(default)]
        follow: bool,
    },
    /// Close and open again every vassal log file (after an external
    /// logrotate moved them).
    ReopenLogs,
    /// Re-execute the emperor from `binary` (default: the binary it was
    /// started from), keeping every vassal running (docs/upgrade.md). The
    /// reply comes from the new image once it has adopted every vassal,
    /// or from the running one with the reason it refused.
    Upgrade {
        /// The new binary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
        /// Re-read the command line's config files and apply what can
        /// change live (the same binary).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reread_config: bool,
    },
}

fn default_lines() -> usize {
    20
}

/// The most `imperium ctl logs -f` clients served at once.
pub const MAX_FOLLOWERS: usize = 32;

/// The answer to a [`Request`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the command was carried out.
    pub ok: bool,
    /// What went wrong, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was done, for humans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `list`: an array of vassals; `show`: one vassal (the fields of
    /// [`crate::stats::VassalSnap`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Reply {
    fn ok(message: impl Into<String>) -> Reply {
        Reply {
            ok: true,
            message: Some(message.into()),
            ..Reply::default()
        }
    }

    fn err(e: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(e.into()),
            ..Reply::default()
        }
    }
}

/// Who may use the control socket.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Extra uids allowed (root and the emperor's own uid always are).
    pub uids: Vec<u32>,
    /// Peers whose primary gid is one of these are allowed.
    pub gids: Vec<u32>,
}

impl Access {
    /// Whether a peer with these credentials is served.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0
            || uid == nix::unistd::geteuid().as_raw()
            || self.uids.contains(&uid)
            || self.gids.contains(&gid)
    }
}

/// Runs `f` on the reconciler inside the emperor's loop; the actions it
/// returns are carried out there.
pub async fn apply<F>(commands: &mpsc::Sender<Command>, f: F) -> Result<(), OperatorError>
where
    F: FnOnce(&mut Reconciler, Instant) -> Result<Vec<Action>, OperatorError> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let f = Box::new(
        move |rec: &mut Reconciler, now: Instant| match f(rec, now) {
            Ok(a) => {
                let _ = tx.send(Ok(()));
                a
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                Vec::new()
            }
        },
    );
    commands
        .send(Command::Apply(f))
        .await
        .map_err(|_| OperatorError::ShuttingDown)?;
    rx.await.map_err(|_| OperatorError::ShuttingDown)?
}

/// Carries out one request.
pub async fn handle(req: Request, commands: &mpsc::Sender<Command>) -> Reply {
    let done = |r: Result<(), OperatorError>, what: String| match r {
        Ok(()) => Reply::ok(what),
        Err(e) => Reply::err(e.to_string()),
    };
    match req {
        Request::List | Request::Show { .. } => {
            let Some(snap) = Snapshot::request(commands).await else {
                return Reply::err("the emperor is shutting down");
            };
            let data = match &req {
                Request::Show { vassal } => match snap.vassal(vassal) {
                    Some(v) => serde_json::to_value(v),
                    None => return Reply::err(format!("no vassal named {vassal}")),
                },
                _ => serde_json::to_value(&snap.vassals),
            };
            Reply {
                ok: true,
                data: data.ok(),
                ..Reply::default()
            }
        }
        Request::Cluster => {
            let Some(snap) = Snapshot::request(commands).await else {
                return Reply::err("the emperor is shutting down");
            };
            let Some(view) = snap.cluster else {
                return Reply::err("this emperor is not in a cluster (--emperor-cluster)");
            };
            Reply {
                ok: true,
                data: serde_json::to_value(view).ok(),
                ..Reply::default()
            }
        }
        Request::Reload { vassal, force } => {
            let v = vassal.clone();
            let r = apply(commands, move |rec, now| rec.reload_one(&v, force, now)).await;
            done(r, format!("reloading {vassal}"))
        }
        Request::Stop { vassal } => {
            let v = vassal.clone();
            let r = apply(commands, move |rec, now| rec.stop_one(&v, now)).await;
            done(r, format!("stopping {vassal}; it stays down until started"))
        }
        Request::Start { vassal } => {
            let v = vassal.clone();
            let r = apply(commands, move |rec, now| rec.start_one(&v, now)).await;
            done(r, format!("starting {vassal}"))
        }
        Request::Pause { vassal } => {
            let v = vassal.clone();
            let r = apply(commands, move |rec, _| rec.pause(&v).map(|()| Vec::new())).await;
            done(r, format!("automatic reloads of {vassal} paused"))
        }
        Request::Resume { vassal } => {
            let v = vassal.clone();
            let r = apply(commands, move |rec, now| rec.resume(&v, now)).await;
            done(r, format!("automatic reloads of {vassal} resumed"))
        }
        Request::ClearBlacklist {
            vassal: Some(vassal),
        } => {
            let v = vassal.clone();
            let r = apply(commands, move |rec, now| rec.clear_blacklist_one(&v, now)).await;
            done(r, format!("blacklist entry of {vassal} cleared"))
        }
        Request::Logs { vassal, lines, .. } => match logs_of(&vassal, commands).await {
            Ok(log) => logs_reply(&log, lines).0,
            Err(e) => Reply::err(e),
        },
        Request::ReopenLogs => {
            if commands.send(Command::ReopenLogs).await.is_err() {
                return Reply::err("the emperor is shutting down");
            }
            Reply::ok("vassal log files reopened")
        }
        Request::Upgrade {
            binary,
            reread_config,
        } => upgrade(binary, reread_config, None, commands).await,
        Request::ClearBlacklist { vassal: None } => {
            let (tx, rx) = oneshot::channel();
            let r = apply(commands, move |rec, now| {
                let (n, acts) = rec.clear_blacklist_all(now);
                let _ = tx.send(n);
                Ok(acts)
            })
            .await;
            let n = rx.await.unwrap_or(0);
            done(r, format!("blacklist cleared ({n} entries)"))
        }
    }
}

/// The captured output of `vassal`, or why there is none.
async fn logs_of(
    vassal: &str,
    commands: &mpsc::Sender<Command>,
) -> Result<Arc<crate::logs::VassalLog>, String> {
    use crate::logs::LogLookup;
    let (tx, rx) = oneshot::channel();
    let cmd = Command::Logs {
        vassal: vassal.to_string(),
        reply: tx,
    };
    if commands.send(cmd).await.is_err() {
        return Err("the emperor is shutting down".into());
    }
    match rx.await {
        Ok(LogLookup::Captured(l)) => Ok(l),
        Ok(LogLookup::NoSuchVassal) => Err(format!("no vassal named {vassal}")),
        Ok(LogLookup::NotStarted) => Err(format!(
            "{vassal} has not been started since the emperor started: nothing captured yet"
        )),
        Ok(LogLookup::NotCaptured(why)) => Err(why),
        Err(_) => Err("the emperor is shutting down".into()),
    }
}

/// The reply to `logs`: the last `lines` lines, where to follow on, and
/// the vassal's counters.
fn logs_reply(log: &crate::logs::VassalLog, lines: usize) -> (Reply, u64) {
    let t = log.last(lines);
    let r = Reply {
        ok: true,
        data: Some(serde_json::json!({
            "lines": t.lines.iter().map(|l| crate::logs::escape(l)).collect::<Vec<_>>(),
            "next": t.next,
            "counts": log.counts(),
        })),
        ..Reply::default()
    };
    (r, t.next)
}

/// `imperium ctl logs -f`: sends every new line of `log` (from sequence
/// number `next` on) until the client goes away. A client too slow to
/// take the lines is told how many it missed.
async fn follow(
    mut conn: Box<dyn crate::stats::Conn>,
    log: Arc<crate::logs::VassalLog>,
    mut next: u64,
) {
    let mut probe = [0u8; 64];
    loop {
        let changed = log.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let t = log.since(next);
        if !t.lines.is_empty() || t.missed > 0 {
            next = t.next;
            let msg = serde_json::json!({
                "lines": t.lines.iter().map(|l| crate::logs::escape(l)).collect::<Vec<_>>(),
                "missed": t.missed,
            });
            let mut text = msg.to_string();
            text.push('\n');
            match tokio::time::timeout(CLIENT_TIMEOUT, conn.write_all(text.as_bytes())).await {
                Ok(Ok(())) => continue,
                _ => return,
            }
        }
        tokio::select! {
            () = &mut changed => {}
            r = conn.read(&mut probe) => {
                // the client closed (or sent something it should not)
                if matches!(r, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}

/// How long a control client may take to send its request and read the
/// reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest request line the control socket reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The time a client has to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the control socket.
pub async fn serve(listener: Listener, access: Access, commands: mpsc::Sender<Command>) {
    let access = Arc::new(access);
    crate::listener::accept_loop(
        listener,
        CLIENT_TIMEOUT,
        "control socket",
        |e| tracing::warn!(error = %e, "control socket: accept failed"),
        move |conn, cred| {
            let access = access.clone();
            let commands = commands.clone();
            async move { session(conn, cred, &access, &commands).await }
        },
        |r| {
            if r.is_err() {
                tracing::debug!("control client too slow; dropped");
            }
        },
    )
    .await
}

async fn session(
    conn: Box<dyn crate::stats::Conn>,
    cred: Option<tokio::net::unix::UCred>,
    access: &Access,
    commands: &mpsc::Sender<Command>,
) {
    let mut conn = BufReader::new(conn);
    let reply = match cred {
        Some(c) if access.allows(c.uid(), c.gid()) => {
            // one request line, bounded in size and in time: a client that
            // sends nothing (or too much) gives its slot back quickly
            let mut line = String::new();
            let mut limited = (&mut conn).take(MAX_REQUEST as u64 + 1);
            let read = limited.read_line(&mut line);
            match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
                Err(_) => Reply::err(format!("no request within {} s", REQUEST_TIMEOUT.as_secs())),
                Ok(Ok(0)) => return,
                Ok(Ok(n)) if n > MAX_REQUEST => Reply::err(format!(
                    "request too large (over {} KiB)",
                    MAX_REQUEST / 1024
                )),
                Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                    Ok(Request::Logs {
                        vassal,
                        lines,
                        follow: true,
                    }) => {
                        tracing::info!(
                            uid = c.uid(),
                            pid = c.pid(),
                            vassal,
                            "[emperor] control request: follow the logs of {vassal}"
                        );
                        return start_follow(conn.into_inner(), &vassal, lines, commands).await;
                    }
                    Ok(Request::Upgrade {
                        binary,
                        reread_config,
                    }) => {
                        tracing::info!(
                            uid = c.uid(),
                            pid = c.pid(),
                            "[emperor] control request: upgrade to {}",
                            binary
                                .as_deref()
                                .unwrap_or("the binary it was started from")
                        );
                        // the new image answers on this connection: it
                        // inherits a duplicate of it
                        let answer = conn.get_ref().as_fd().try_clone_to_owned().ok();
                        upgrade(binary, reread_config, answer, commands).await
                    }
                    Ok(req) => {
                        // what only reads (`ctl wait` polls ten times a
                        // second) is not worth a line of the log
                        if matches!(req, Request::List | Request::Show { .. }) {
                            tracing::debug!(uid = c.uid(), pid = c.pid(), request = ?req, "[emperor] control request");
                        } else {
                            tracing::info!(uid = c.uid(), pid = c.pid(), request = ?req, "[emperor] control request");
                        }
                        handle(req, commands).await
                    }
                    Err(e) => Reply::err(format!("bad request: {e}")),
                },
                Ok(Err(e)) => Reply::err(format!("cannot read the request: {e}")),
            }
        }
        Some(c) => {
            static REFUSED: crate::listener::LogLimit = crate::listener::LogLimit::new();
            if let Some(held) = REFUSED.allow() {
                tracing::warn!(
                    uid = c.uid(),
                    gid = c.gid(),
                    pid = c.pid(),
                    more = held,
                    "[emperor] control socket: refusing uid {} (not root, not the emperor's uid, not in --emperor-control-allow-uid/-gid){}",
                    c.uid(),
                    if held > 0 { format!("; {held} more refused since the last such line") } else { String::new() }
                );
            }
            Reply::err(format!(
                "permission denied: uid {} may not use this control socket",
                c.uid()
            ))
        }
        None => Reply::err("cannot read the peer's credentials"),
    };
    let mut text = serde_json::to_string(&reply).expect("reply serialises");
    text.push('\n');
    let _ = conn.get_mut().write_all(text.as_bytes()).await;
    let _ = conn.get_mut().shutdown().await;
}

/// Asks the loop for a hot upgrade. Returns only when it was refused:
/// otherwise the new image answers on `answer` (when there is one).
async fn upgrade(
    binary: Option<String>,
    reread_config: bool,
    answer: Option<std::os::fd::OwnedFd>,
    commands: &mpsc::Sender<Command>,
) -> Reply {
    let (tx, rx) = oneshot::channel();
    let req = crate::command::UpgradeRequest {
        binary: binary.map(Into::into),
        answer,
        refused: Some(tx),
        reread_config,
    };
    if commands.send(Command::Upgrade(req)).await.is_err() {
        return Reply::err("the emperor is shutting down");
    }
    match rx.await {
        Ok(why) => Reply::err(format!("upgrade refused: {why}")),
        Err(_) => Reply::err("the emperor went away during the upgrade"),
    }
}

/// Answers a `logs` request with `follow`, then hands the connection to a
/// task of its own (outside the per-client time limit).
async fn start_follow(
    mut conn: Box<dyn crate::stats::Conn>,
    vassal: &str,
    lines: usize,
    commands: &mpsc::Sender<Command>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static FOLLOWERS: AtomicUsize = AtomicUsize::new(0);
    struct Slot;
    impl Drop for Slot {
        fn drop(&mut self) {
            FOLLOWERS.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let found = logs_of(vassal, commands).await;
    let (reply, log) = match found {
        Err(e) => (Reply::err(e), None),
        Ok(_) if FOLLOWERS.fetch_add(1, Ordering::SeqCst) >= MAX_FOLLOWERS => {
            FOLLOWERS.fetch_sub(1, Ordering::SeqCst);
            (
                Reply::err(format!(
                    "{MAX_FOLLOWERS} clients already follow logs; try again later"
                )),
                None,
            )
        }
        Ok(log) => {
            let (r, next) = logs_reply(&log, lines);
            (r, Some((log, next, Slot)))
        }
    };
    let mut text = serde_json::to_string(&reply).expect("reply serialises");
    text.push('\n');
    if conn.write_all(text.as_bytes()).await.is_err() {
        return;
    }
    if let Some((log, next, slot)) = log {
        tokio::spawn(async move {
            let _slot = slot;
            follow(conn, log, next).await;
        });
    } else {
        let _ = conn.shutdown().await;
    }
}

// ----- uWSGI's datagram command socket ---------------------------------------------

/// Parses a uWSGI command packet: a 4-byte header (not checked, as uWSGI)
/// and a key/value block (`u16le len, key, u16le len, value`, repeated).
pub fn parse_command_packet(pkt: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut body = pkt
        .get(4..)
        .ok_or_else(|| format!("packet of {} bytes is shorter than its header", pkt.len()))?;
    let mut out = Vec::new();
    let take = |b: &mut &[u8]| -> Result<String, String> {
        if b.len() < 2 {
            return Err("truncated length".into());
        }
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        let s = b.get(2..2 + n).ok_or("truncated item")?;
        *b = &b[2 + n..];
        String::from_utf8(s.to_vec()).map_err(|_| "not UTF-8".to_string())
    };
    while !body.is_empty() {
        let k = take(&mut body)?;
        if k.is_empty() {
            return Err("empty key".into());
        }
        let v = take(&mut body)?;
        out.push((k, v));
    }
    Ok(out)
}

/// Carries out one uWSGI command packet: `cmd` (or `command`) `spawn`
/// (start), `respawn` (graceful reload), `stop` (stop; stays down until
/// started), `log` (log `msg`). No reply, as in uWSGI.
pub async fn command_packet(pkt: &[u8], commands: &mpsc::Sender<Command>) {
    let kv = match parse_command_packet(pkt) {
        Ok(kv) => kv,
        Err(e) => {
            tracing::error!("[emperor] invalid command packet: {e}");
            return;
        }
    };
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let Some(cmd) = get("cmd").or_else(|| get("command")) else {
        tracing::error!("[emperor] command packet without cmd");
        return;
    };
    if cmd == "log" {
        tracing::info!("[emperor] {}", get("msg").unwrap_or_default());
        return;
    }
    let Some(vassal) = get("vassal") else {
        tracing::error!("[emperor] command {cmd} without a vassal");
        return;
    };
    let req = match cmd.as_str() {
        "spawn" => Request::Start { vassal },
        "respawn" => Request::Reload {
            vassal,
            force: false,
        },
        "stop" => Request::Stop { vassal },
        _ => {
            tracing::error!("[emperor] unknown command {cmd:?}");
            return;
        }
    };
    let r = handle(req, commands).await;
    if let Some(e) = r.error {
        tracing::error!("[emperor] ERROR: command {cmd}: {e}");
    }
}

/// A bound datagram command socket.
pub enum CommandSocket {
    /// A UDP socket.
    Udp(tokio::net::UdpSocket),
    /// A UNIX datagram socket, and its file.
    Unix(tokio::net::UnixDatagram, std::path::PathBuf),
}

impl CommandSocket {
    /// UDP when `addr` contains a colon, else a UNIX datagram socket at
    /// that path (mode `mode`).
    pub async fn bind(addr: &str, mode: u32) -> Result<CommandSocket, crate::stats::BindError> {
        let err = |source| crate::stats::BindError {
            addr: addr.to_string(),
            source,
        };
        if addr.contains(':') {
            let s = tokio::net::UdpSocket::bind(crate::listener::inet_addr(addr))
                .await
                .map_err(err)?;
            if s.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
                tracing::warn!("--emperor-command-socket {addr}: UDP commands are not authenticated; anybody who can reach it can stop vassals");
            }
            return Ok(CommandSocket::Udp(s));
        }
        let path = std::path::PathBuf::from(addr);
        crate::listener::clear_socket_path(&path).map_err(err)?;
        let s = tokio::net::UnixDatagram::bind(&path).map_err(err)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
        Ok(CommandSocket::Unix(s, path))
    }

    /// The socket a previous image of the emperor bound at `addr` (a hot
    /// upgrade).
    pub fn adopt(
        addr: &str,
        fd: std::os::fd::OwnedFd,
    ) -> Result<CommandSocket, crate::stats::BindError> {
        let err = |source| crate::stats::BindError {
            addr: addr.to_string(),
            source,
        };
        crate::spawn::set_inheritable(std::os::fd::AsFd::as_fd(&fd), false).map_err(err)?;
        if addr.contains(':') {
            let s = std::net::UdpSocket::from(fd);
            s.set_nonblocking(true).map_err(err)?;
            return tokio::net::UdpSocket::from_std(s)
                .map(CommandSocket::Udp)
                .map_err(err);
        }
        let s = std::os::unix::net::UnixDatagram::from(fd);
        s.set_nonblocking(true).map_err(err)?;
        tokio::net::UnixDatagram::from_std(s)
            .map(|s| CommandSocket::Unix(s, addr.into()))
            .map_err(err)
    }

    /// A duplicate of its descriptor (close-on-exec), for a hot upgrade.
    pub fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        match self {
            CommandSocket::Udp(s) => s.as_fd().try_clone_to_owned(),
            CommandSocket::Unix(s, _) => s.as_fd().try_clone_to_owned(),
        }
    }

    /// Receives and carries out packets until the emperor goes away.
    pub async fn serve(self, commands: mpsc::Sender<Command>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let r = match &self {
                CommandSocket::Udp(s) => s.recv(&mut buf).await,
                CommandSocket::Unix(s, _) => s.recv(&mut buf).await,
            };
            match r {
                Ok(n) => command_packet(&buf[..n], &commands).await,
                Err(e) => {
                    tracing::warn!(error = %e, "command socket: receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if commands.is_closed() {
                return;
            }
        }
    }
}

impl Drop for CommandSocket {
    fn drop(&mut self) {
        if let CommandSocket::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> Vec<u8> {
        let mut b = (k.len() as u16).to_le_bytes().to_vec();
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&(v.len() as u16).to_le_bytes());
        b.extend_from_slice(v.as_bytes());
        b
    }

    #[test]
    fn parses_uwsgi_command_packets() {
        let mut body = kv("cmd", "respawn");
        body.extend(kv("vassal", "app.ini"));
        let mut pkt = vec![0, body.len() as u8, 0, 0];
        pkt.extend(&body);
        assert_eq!(
            parse_command_packet(&pkt).unwrap(),
            vec![
                ("cmd".to_string(), "respawn".to_string()),
                ("vassal".to_string(), "app.ini".to_string())
            ]
        );
        assert!(parse_command_packet(&[0, 1]).is_err());
        assert!(parse_command_packet(&[0, 0, 0, 0, 5, 0, b'a']).is_err());
        assert!(parse_command_packet(&[0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap_err()
            .contains("empty key"));
    }

    #[test]
    fn requests_round_trip_as_json_lines() {
        let r = Request::ClearBlacklist { vassal: None };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"clear-blacklist","vassal":null}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let r: Request = serde_json::from_str(r#"{"cmd":"pause","vassal":"a.ini"}"#).unwrap();
        assert_eq!(
            r,
            Request::Pause {
                vassal: "a.ini".into()
            }
        );
    }

    #[test]
    fn access_allows_root_self_and_listed() {
        let a = Access {
            uids: vec![1234],
            gids: vec![77],
        };
        let me = nix::unistd::geteuid().as_raw();
        assert!(a.allows(0, 0) && a.allows(me, 1) && a.allows(1234, 1) && a.allows(5, 77));
        if me != 65534 {
            assert!(!a.allows(65534, 65534));
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any list of non-empty keys and values, encoded as uWSGI does,
            /// parses back to itself whatever the 4 header bytes are.
            #[test]
            fn command_packets_round_trip(
                header in any::<[u8; 4]>(),
                kv in proptest::collection::vec((".{1,40}", ".{0,80}"), 0..8),
            ) {
                let mut pkt = header.to_vec();
                for (k, v) in &kv {
                    for s in [k, v] {
                        pkt.extend_from_slice(&(s.len() as u16).to_le_bytes());
                        pkt.extend_from_slice(s.as_bytes());
                    }
                }
                prop_assert_eq!(parse_command_packet(&pkt).unwrap(), kv.clone());
                // one byte short is an error, never a panic
                if !kv.is_empty() {
                    prop_assert!(parse_command_packet(&pkt[..pkt.len() - 1]).is_err());
                }
            }
        }
    }
}
