//! `zmq://ENDPOINT`: vassals announced on a ZeroMQ PULL socket
//! (docs/monitors/zmq.md), for example `zmq://tcp://127.0.0.1:5252`.
//!
//! The monitor binds a PULL socket to the endpoint (any endpoint libzmq
//! binds: `tcp://`, `ipc://`, ...) and reads multipart messages of 2 to 6
//! parts: `touch|destroy`, name, config, uid, gid, socket. An empty or
//! missing part means "absent".
//!
//! * `touch` spawns the vassal, or reloads it when it runs. With a config
//!   part the config is sent over the config pipe; without one, the name is a
//!   config file path, relative to the emperor's working directory.
//! * `destroy` stops the vassal.
//!
//! Malformed messages are logged with the reason and dropped; the socket
//! keeps working. libzmq (through the `zmq` crate) was chosen over a
//! pure-Rust ZMTP implementation after testing both against Debian's
//! python3-zmq: see docs/monitors/zmq.md.
//!
//! Anyone who can reach the socket can start processes: bind to loopback or
//! to an `ipc://` path in a private directory.

use emperor::protocol::check_config;
use emperor::{
    Change, ChangeKey, ConfigSource, Monitor, MonitorContext, MonitorError, MonitorHealth,
    MonitorOptions, NamePolicy, Owner, VassalName, VassalSpec,
};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::bus::{describe_change, preview, resolve_config_path, StampClock};

/// Frames larger than this make libzmq drop the sending peer's connection
/// (a config can be at most 65535 bytes anyway; larger ones up to this size
/// are read, logged and refused; a dropped connection is logged by
/// [`Peers`]).
const MAX_FRAME: i64 = 256 * 1024;
/// How often the receiving thread checks that the monitor still runs.
const POLL_MS: i64 = 250;
/// Messages read ahead of the emperor.
const QUEUE: usize = 64;

/// The zmq:// monitor. The PULL socket is bound when the monitor is built,
/// so a bad endpoint or a port in use is a start-up error, as in uWSGI.
pub struct ZmqMonitor {
    // the context must outlive the socket: keep both, socket first
    socket: zmq::Socket,
    _context: zmq::Context,
    endpoint: String,
}

impl ZmqMonitor {
    /// Binds a PULL socket to `endpoint` (the part of `url` after `zmq://`).
    /// An endpoint with a wildcard port (`tcp://127.0.0.1:*`) binds a free
    /// port; [`ZmqMonitor::endpoint`] and `describe()` show the real one.
    pub fn new(url: &str, endpoint: &str, _opts: &MonitorOptions) -> Result<Self, MonitorError> {
        let bad = |reason: String| MonitorError::BadUrl {
            url: url.to_string(),
            reason,
        };
        if endpoint.is_empty() || !endpoint.contains("://") {
            return Err(bad(
                "expected zmq://ENDPOINT, for example zmq://tcp://127.0.0.1:5252 or zmq://ipc:///run/imperium/zmq.sock".into(),
            ));
        }
        let context = zmq::Context::new();
        let socket = context
            .socket(zmq::PULL)
            .map_err(|e| bad(format!("cannot create a PULL socket: {e}")))?;
        // IPv6 only for an IPv6 literal such as tcp://[::1]:5252: with it on,
        // libzmq binds IPv4 addresses as v4-mapped IPv6 sockets
        socket
            .set_ipv6(endpoint.contains('['))
            .and_then(|_| socket.set_maxmsgsize(MAX_FRAME))
            .and_then(|_| socket.set_linger(0))
            .map_err(|e| bad(format!("cannot set socket options: {e}")))?;
        socket
            .bind(endpoint)
            .map_err(|e| bad(format!("cannot bind {endpoint}: {e}")))?;
        let endpoint = match socket.get_last_endpoint() {
            Ok(Ok(e)) => e,
            _ => endpoint.to_string(),
        };
        Ok(ZmqMonitor {
            socket,
            _context: context,
            endpoint,
        })
    }

    /// The endpoint the socket is bound to (with the real port when the URL
    /// asked for `*`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// Builds a zmq:// monitor (binds its socket now).
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    Ok(Box::new(ZmqMonitor::new(t.url, t.rest, t.opts)?))
}

impl Monitor for ZmqMonitor {
    fn describe(&self) -> String {
        format!("zmq://{}", self.endpoint)
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        Box::pin(run(*self, ctx))
    }
}

async fn run(mon: ZmqMonitor, ctx: MonitorContext) {
    let shown = format!("zmq://{}", mon.endpoint);
    let (tx, mut rx) = mpsc::channel::<Vec<Vec<u8>>>(QUEUE);
    let thread_shown = shown.clone();
    let ZmqMonitor {
        socket, _context, ..
    } = mon;
    // libzmq sockets are blocking: one thread reads and forwards raw messages
    // dropped by the thread when it ends, after the socket is closed
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = std::thread::Builder::new()
        .name("imperium-zmq".into())
        .spawn(move || {
            // the emperor's signals go to its loop's thread only
            emperor::spawn::block_signals_in_this_thread();
            receive_loop(socket, _context, tx, thread_shown);
            drop(done_tx);
        });
    if let Err(e) = reader {
        tracing::error!(monitor = %shown, "[emperor-zmq] cannot start the receiving thread: {e}");
        ctx.health(MonitorHealth::Failed(format!(
            "cannot start the receiving thread: {e}"
        )))
        .await;
        return;
    }
    tracing::info!(monitor = %shown, "[emperor-zmq] PULL socket bound, waiting for touch/destroy messages");
    consume(&ctx, &shown, &mut rx).await;
    // let the thread see that nobody listens, then wait until it has closed
    // the socket, so the endpoint is free when the monitor has ended
    drop(rx);
    let _ = done_rx.await;
}

async fn consume(ctx: &MonitorContext, shown: &str, rx: &mut mpsc::Receiver<Vec<Vec<u8>>>) {
    if !ctx.health(MonitorHealth::Connected).await {
        return;
    }
    let mut clock = StampClock::default();
    loop {
        let parts = tokio::select! {
            p = rx.recv() => p,
            _ = ctx.closed() => return,
        };
        let Some(parts) = parts else {
            let reason = "the receiving thread stopped (see the log above)".to_string();
            ctx.health(MonitorHealth::Failed(reason)).await;
            return;
        };
        match interpret(&parts, &ctx.options, clock.next()) {
            Ok(change) => {
                tracing::info!(monitor = %shown, "[emperor-zmq] {}", describe_change(&change));
                if !ctx.send(change).await {
                    return;
                }
            }
            Err(reason) => tracing::warn!(
                monitor = %shown,
                parts = parts.len(),
                first = %parts.first().map(|p| preview(p)).unwrap_or_default(),
                "[emperor-zmq] message dropped: {reason}"
            ),
        }
    }
}

/// Reads multipart messages and forwards them until the monitor is gone.
fn receive_loop(
    socket: zmq::Socket,
    context: zmq::Context,
    tx: mpsc::Sender<Vec<Vec<u8>>>,
    shown: String,
) {
    let mut peers = Peers::new(&context, &socket, &shown);
    loop {
        if tx.is_closed() {
            return;
        }
        let events_ready = {
            let mut items = vec![socket.as_poll_item(zmq::POLLIN)];
            if let Some(events) = &peers.events {
                items.push(events.as_poll_item(zmq::POLLIN));
            }
            match zmq::poll(&mut items, POLL_MS) {
                Ok(0) => continue,
                Ok(_) => items.get(1).is_some_and(zmq::PollItem::is_readable),
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!(monitor = %shown, "[emperor-zmq] poll failed: {e}");
                    return;
                }
            }
        };
        // drain every message that is ready, then the connection events, so
        // a connection's messages are counted before its end is judged
        if !drain(&socket, &tx, &shown, &mut peers.received) {
            return;
        }
        if events_ready {
            peers.read_events(&shown);
        }
    }
}

/// Forwards every message that is ready; false when the loop must end.
fn drain(
    socket: &zmq::Socket,
    tx: &mpsc::Sender<Vec<Vec<u8>>>,
    shown: &str,
    received: &mut u64,
) -> bool {
    loop {
        match socket.recv_multipart(zmq::DONTWAIT) {
            Ok(parts) => {
                *received += 1;
                if tx.blocking_send(parts).is_err() {
                    return false;
                }
            }
            Err(zmq::Error::EAGAIN) => return true,
            Err(zmq::Error::EINTR) => {}
            Err(e) => {
                tracing::error!(monitor = %shown, "[emperor-zmq] receive failed: {e}");
                return false;
            }
        }
    }
}

/// The peers' connections, seen through libzmq's socket monitor, so that a
/// connection libzmq closes for a frame over [`MAX_FRAME`] (it says nothing
/// itself) gets a warning: one that ends with no message read while it was
/// open.
struct Peers {
    /// A PAIR socket receiving the PULL socket's ACCEPTED and DISCONNECTED
    /// events; `None` when the monitor could not be set up (said once).
    events: Option<zmq::Socket>,
    /// Open connections (by fd): how many messages had been read when each
    /// was accepted.
    open: std::collections::HashMap<u32, u64>,
    /// Messages read so far.
    received: u64,
    silent: emperor::listener::LogLimit,
}

impl Peers {
    fn new(context: &zmq::Context, socket: &zmq::Socket, shown: &str) -> Peers {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let endpoint = format!("inproc://imperium-zmq-events-{}-{n}", std::process::id());
        let wanted = zmq::SocketEvent::ACCEPTED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
        let events = socket
            .monitor(&endpoint, wanted)
            .and_then(|()| context.socket(zmq::PAIR))
            .and_then(|pair| pair.connect(&endpoint).map(|()| pair));
        let events = match events {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::warn!(monitor = %shown, "[emperor-zmq] cannot watch the peers' connections ({e}): a frame over {} KiB will close its sender's connection without a log line", MAX_FRAME / 1024);
                None
            }
        };
        Peers {
            events,
            open: std::collections::HashMap::new(),
            received: 0,
            silent: emperor::listener::LogLimit::new(),
        }
    }

    /// Reads every pending connection event.
    fn read_events(&mut self, shown: &str) {
        let Some(events) = &self.events else { return };
        while let Ok(frames) = events.recv_multipart(zmq::DONTWAIT) {
            // frame 1: a 16-bit event and a 32-bit value (the fd) in native
            // byte order; frame 2: the endpoint
            let Some(head) = frames.first().filter(|f| f.len() >= 6) else {
                continue;
            };
            let event = u16::from_ne_bytes([head[0], head[1]]);
            let fd = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
            if event == zmq::SocketEvent::ACCEPTED as u16 {
                self.open.insert(fd, self.received);
            } else if event == zmq::SocketEvent::DISCONNECTED as u16 {
                let at_accept = self.open.remove(&fd);
                if at_accept == Some(self.received) {
                    if let Some(held) = self.silent.allow() {
                        let more = match held {
                            0 => String::new(),
                            n => format!(" ({n} more since the last such line)"),
                        };
                        tracing::warn!(
                            monitor = %shown,
                            "[emperor-zmq] a peer's connection ended before any message of it was read{more}: libzmq closes the connection of a peer that sends a frame over {} KiB, and drops what it sent; otherwise the peer sent nothing or stopped mid-message",
                            MAX_FRAME / 1024
                        );
                    }
                }
            }
        }
    }
}

/// A part that is present and non-empty.
fn part(parts: &[Vec<u8>], i: usize) -> Option<&[u8]> {
    parts.get(i).map(Vec::as_slice).filter(|p| !p.is_empty())
}

fn utf8<'a>(p: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(p).map_err(|_| format!("the {what} part is not valid UTF-8"))
}

fn number(p: Option<&[u8]>, what: &str) -> Result<Option<u32>, String> {
    p.map(|p| {
        let s = utf8(p, what)?;
        s.parse::<u32>()
            .map_err(|_| format!("the {what} part {:?} is not a number", preview(p)))
    })
    .transpose()
}

/// Turns one multipart message into a change, or says why it is dropped.
///
/// Parts: `[command, name, config, uid, gid, socket]`, 2 to 6 of them; an
/// empty or missing part is absent. Public for the fuzz targets
/// ([`crate::fuzzing`]).
pub fn interpret(
    parts: &[Vec<u8>],
    opts: &MonitorOptions,
    key: ChangeKey,
) -> Result<Change, String> {
    if !(2..=6).contains(&parts.len()) {
        return Err(format!(
            "{}-part message; expected 2 to 6 parts: touch|destroy, name[, config, uid, gid, socket]",
            parts.len()
        ));
    }
    let command = utf8(&parts[0], "command")?;
    let name = utf8(part(parts, 1).ok_or("the name part is empty")?, "name")?;
    match command {
        "destroy" => {
            let name = VassalName::parse(name, &opts.extensions, NamePolicy::Path)
                .map_err(|e| format!("bad name: {e}"))?;
            Ok(Change::Remove(name))
        }
        "touch" => touch(parts, name, opts, key),
        other => Err(format!(
            "unknown command {:?} (expected touch or destroy)",
            preview(other.as_bytes())
        )),
    }
}

fn touch(
    parts: &[Vec<u8>],
    name: &str,
    opts: &MonitorOptions,
    key: ChangeKey,
) -> Result<Change, String> {
    let uid = number(part(parts, 3), "uid")?;
    let gid = number(part(parts, 4), "gid")?;
    let owner = match (uid, gid) {
        (None, None) => None,
        (Some(uid), Some(gid)) => Some(Owner { uid, gid }),
        _ => return Err("uid and gid must be given together".into()),
    };
    let socket = part(parts, 5)
        .map(|p| {
            let s = utf8(p, "socket")?;
            if s.chars().any(char::is_control) {
                return Err("the socket part contains a control character".to_string());
            }
            Ok(s.to_string())
        })
        .transpose()?;
    let (name, config) = match part(parts, 2) {
        Some(config) => {
            let name = VassalName::parse(name, &opts.extensions, NamePolicy::Plain)
                .map_err(|e| format!("bad name: {e}"))?;
            check_config(config).map_err(|e| format!("vassal {name}: {e}"))?;
            let text = utf8(config, "config")?;
            (name, ConfigSource::Inline(text.into()))
        }
        None => {
            // no config: the name is a config file, relative to the emperor's cwd
            let name = VassalName::parse(name, &opts.extensions, NamePolicy::Path)
                .map_err(|e| format!("bad name: {e}"))?;
            let path = resolve_config_path(name.as_str(), &opts.cwd);
            if !path.is_file() {
                return Err(format!(
                    "no config part and no config file {} (a touch without config names a file relative to the emperor's working directory)",
                    path.display()
                ));
            }
            (name, ConfigSource::File(path))
        }
    };
    Ok(Change::Upsert(VassalSpec {
        name,
        config,
        key,
        owner,
        socket,
        workdir: None,
        limits: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: ChangeKey = ChangeKey::Stamp(42);

    fn msg(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    fn opts(cwd: &std::path::Path) -> MonitorOptions {
        MonitorOptions {
            cwd: cwd.to_path_buf(),
            ..MonitorOptions::default()
        }
    }

    fn upsert(c: Change) -> VassalSpec {
        match c {
            Change::Upsert(s) => s,
            other => panic!("not an upsert: {other:?}"),
        }
    }

    #[test]
    fn touch_with_config_is_inline() {
        let o = opts(std::path::Path::new("/"));
        let s = upsert(interpret(&msg(&["touch", "a.ini", "[uwsgi]\n"]), &o, K).unwrap());
        assert_eq!(s.name.as_str(), "a.ini");
        assert_eq!(s.config, ConfigSource::Inline("[uwsgi]\n".into()));
        assert_eq!((s.owner, s.socket, s.key), (None, None, K));
    }

    #[test]
    fn every_part_count_from_two_to_six_parses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.ini"), "[uwsgi]\n").unwrap();
        let o = opts(dir.path());
        let s = upsert(interpret(&msg(&["touch", "f.ini"]), &o, K).unwrap());
        assert_eq!(s.config, ConfigSource::File(dir.path().join("f.ini")));
        let s = upsert(interpret(&msg(&["touch", "f.ini", ""]), &o, K).unwrap());
        assert_eq!(s.config, ConfigSource::File(dir.path().join("f.ini")));
        assert!(
            interpret(&msg(&["touch", "f.ini", "", "1000"]), &o, K).is_err(),
            "uid without gid"
        );
        // the 5-part message uWSGI mis-parses
        let s = upsert(interpret(&msg(&["touch", "a.ini", "cfg", "1000", "1001"]), &o, K).unwrap());
        assert_eq!(
            s.owner,
            Some(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(s.socket, None);
        // an empty 6th part is absent, not an empty socket name
        let s =
            upsert(interpret(&msg(&["touch", "a.ini", "cfg", "1000", "1001", ""]), &o, K).unwrap());
        assert_eq!(s.socket, None);
        let s = upsert(
            interpret(
                &msg(&["touch", "a.ini", "cfg", "", "", "127.0.0.1:9000"]),
                &o,
                K,
            )
            .unwrap(),
        );
        assert_eq!(
            (s.owner, s.socket.as_deref()),
            (None, Some("127.0.0.1:9000"))
        );
    }

    #[test]
    fn touch_without_config_names_a_file_relative_to_cwd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x.ini"), "[uwsgi]\n").unwrap();
        let o = opts(dir.path());
        let s = upsert(interpret(&msg(&["touch", "sub/x.ini"]), &o, K).unwrap());
        assert_eq!(s.name.as_str(), "sub/x.ini");
        assert_eq!(s.config, ConfigSource::File(dir.path().join("sub/x.ini")));
        let err = interpret(&msg(&["touch", "missing.ini"]), &o, K).unwrap_err();
        assert!(err.contains("missing.ini"), "{err}");
        assert!(interpret(&msg(&["touch", "sub/../sub/x.ini"]), &o, K).is_err());
    }

    #[test]
    fn destroy_removes() {
        let o = opts(std::path::Path::new("/"));
        assert!(matches!(
            interpret(&msg(&["destroy", "a.ini"]), &o, K).unwrap(),
            Change::Remove(n) if n.as_str() == "a.ini"
        ));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let o = opts(std::path::Path::new("/"));
        let cases: Vec<Vec<Vec<u8>>> = vec![
            msg(&["touch"]),
            msg(&["touch", "a.ini", "c", "", "", "", "extra"]),
            msg(&["spawn", "a.ini", "c"]),
            msg(&["", "a.ini", "c"]),
            msg(&["touch", "", "c"]),
            msg(&["touch", "a.txt", "c"]),
            msg(&["touch", "../a.ini", "c"]),
            msg(&["touch", "d/a.ini", "c"]),
            msg(&["touch", "a.ini", "c", "root", "0"]),
            msg(&["touch", "a.ini", "c", "-1", "0"]),
            msg(&["touch", "a.ini", "c", "0", "99999999999"]),
            msg(&["touch", "a.ini", "c", "", "", "s\nx"]),
            msg(&["destroy", ""]),
            vec![b"touch".to_vec(), b"a.ini".to_vec(), vec![0xff, 0xfe]],
            vec![vec![0xff], b"a.ini".to_vec()],
            vec![b"touch".to_vec(), b"a.ini".to_vec(), vec![b'x'; 70_000]],
        ];
        for parts in cases {
            let shown: Vec<String> = parts.iter().map(|p| preview(p)).collect();
            assert!(interpret(&parts, &o, K).is_err(), "{shown:?} accepted");
        }
    }
}
