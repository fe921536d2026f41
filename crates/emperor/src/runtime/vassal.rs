//! The task of one vassal process: relays the bytes it writes on its
//! control socket, writes the runtime's commands to it, reaps it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::{Report, VassalCmd};
use crate::events::ExitStatus;
use crate::name::VassalName;
use crate::protocol::{encode_config, VassalMessage};
use crate::reconciler::InstanceId;
use crate::spawn::VassalProcess;

pub(super) fn to_tokio(s: std::os::unix::net::UnixStream) -> std::io::Result<UnixStream> {
    s.set_nonblocking(true)?;
    UnixStream::from_std(s)
}

/// A vassal's output pipe, and the sequence number of the first line its
/// process can have written (for the last lines of its death event).
pub(super) type LogFrom = (Arc<crate::logs::VassalLog>, u64);

/// What the runtime shares with the task of one vassal process: its
/// sockets, its process and the commands the task has yet to carry out.
///
/// One allocation per vassal: a channel per vassal cost more than a
/// kilobyte each (tokio preallocates a block of 32 slots), and the emperor
/// keeps one per running vassal.
pub(super) struct VassalLink {
    pub(super) name: VassalName,
    pub(super) ctrl: UnixStream,
    pub(super) child: VassalProcess,
    pub(super) config: Option<UnixStream>,
    /// Commands in order; the task drains it when woken.
    pub(super) queue: std::sync::Mutex<VecDeque<VassalCmd>>,
    pub(super) waker: AtomicWaker,
    /// [`MAX_PENDING`] was reached (logged once).
    pub(super) overflowed: std::sync::atomic::AtomicBool,
    /// The first queued command is partly written (a config push to a
    /// vassal that does not read it): a hot upgrade waits for it.
    pub(super) partial: std::sync::atomic::AtomicBool,
    /// Its output pipe (`--vassal-logs` prefix or dir) and the sequence
    /// number of the first line it can have written.
    pub(super) log: Option<LogFrom>,
    /// Its cgroup (`--vassal-cgroup`).
    pub(super) cgroup: Option<std::path::PathBuf>,
    /// Its limited v1 cgroups (`--vassal-memory-max`, `-cpu-max`,
    /// `-pids-max`).
    pub(super) v1: Vec<std::path::PathBuf>,
}

impl VassalLink {
    /// Queues a command for the vassal. Every command counts (two reloads
    /// are two reloads; each config request gets its push), but a vassal
    /// that reads nothing cannot make the queue grow without bound: past
    /// [`MAX_PENDING`] commands (config pushes share their text, so that is
    /// a few kilobytes) more are dropped, with one log line.
    pub(super) fn send(&self, cmd: VassalCmd) {
        {
            let mut q = self.queue();
            if q.len() >= MAX_PENDING {
                if !self
                    .overflowed
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(vassal = %self.name, "[emperor] vassal {} reads nothing from its emperor socket: {MAX_PENDING} commands are pending, further ones are dropped", self.name);
                }
                return;
            }
            q.push_back(cmd);
        }
        self.waker.wake();
    }

    /// What is queued and not yet written (a hot upgrade hands it on).
    pub(super) fn queued(&self) -> Vec<VassalCmd> {
        self.queue().iter().cloned().collect()
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<VassalCmd>> {
        // a poisoned lock only means a panic elsewhere mid-push: the queue
        // itself is still consistent
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One poll of everything the task waits for, exit first.
    fn poll_wake(
        &self,
        cx: &mut Context<'_>,
        instance: InstanceId,
        reports: &mpsc::UnboundedSender<Report>,
        reading: bool,
        eof_timer: Option<&mut Pin<Box<tokio::time::Sleep>>>,
        relay: &mut Relay,
    ) -> Poll<Wake> {
        if let Poll::Ready(st) = self.child.poll_exit(cx) {
            return Poll::Ready(Wake::Exited(st));
        }
        if reading {
            loop {
                match self.ctrl.poll_read_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => return Poll::Ready(Wake::Eof),
                    // on WouldBlock, try_read clears the readiness, so the
                    // next poll registers for more
                    Poll::Ready(Ok(())) => match relay.read(self, instance, reports) {
                        Read::Drained => {}
                        Read::Eof => return Poll::Ready(Wake::Eof),
                        Read::Flood(n) => return Poll::Ready(Wake::Flood(n)),
                        // one chunk per turn: let the rest of the emperor
                        // run, and come back for more
                        Read::More => {
                            cx.waker().wake_by_ref();
                            break;
                        }
                    },
                }
            }
        }
        if let Some(t) = eof_timer {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::EofTimeout);
            }
        }
        self.waker.register(cx.waker());
        if !self.queue().is_empty() {
            return Poll::Ready(Wake::Commands);
        }
        Poll::Pending
    }

    async fn carry_out(&self, cmd: VassalCmd) {
        match cmd {
            VassalCmd::Byte(b) => {
                if let Err(e) = write_all(&self.ctrl, &[b], &self.partial).await {
                    tracing::debug!(vassal = %self.name, error = %e, "cannot write to the vassal's control socket");
                }
            }
            VassalCmd::Config(text) => {
                push_config(&self.name, self.config.as_ref(), &text, &self.partial).await
            }
        }
    }

    /// SIGKILL now, not behind queued writes (a vassal that does not read
    /// its socket can hold those forever). Never another process, even
    /// once this one is reaped (see [`VassalProcess::kill`]).
    pub(super) fn kill(&self) {
        if let Err(e) = self.child.kill() {
            tracing::debug!(vassal = %self.name, error = %e, "kill failed");
        }
    }
}

/// Writes all of `data` to a non-blocking socket shared by reference;
/// `partial` is set while some of it is written and the rest is not.
async fn write_all(
    sock: &UnixStream,
    mut data: &[u8],
    partial: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    struct Done<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _done = Done(partial);
    while !data.is_empty() {
        sock.writable().await?;
        match sock.try_write(data) {
            Ok(n) => {
                data = &data[n..];
                partial.store(!data.is_empty(), std::sync::atomic::Ordering::SeqCst);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The most commands queued for one vassal (see [`VassalLink::send`]).
pub(super) const MAX_PENDING: usize = 1024;

/// At most this many bytes are read from a vassal's control socket per
/// turn of the loop.
const READ_CHUNK: usize = 4096;

/// A vassal that writes more than this many bytes on its control socket
/// within [`FLOOD_WINDOW`] is flooding it: it is killed (and respawned
/// through the usual throttling). A uWSGI vassal writes a few bytes a
/// second (heartbeats, state changes).
pub(super) const FLOOD_LIMIT: usize = 64 * 1024;

/// See [`FLOOD_LIMIT`].
pub(super) const FLOOD_WINDOW: Duration = Duration::from_secs(1);

/// Unknown bytes are logged at most once per vassal in this long.
const UNKNOWN_LOG_EVERY: Duration = Duration::from_secs(10);

/// What one read of the control socket found.
enum Read {
    /// Everything there was (the socket would block now).
    Drained,
    /// A full chunk: there may be more.
    More,
    /// End of file, or the socket failed.
    Eof,
    /// Over [`FLOOD_LIMIT`] bytes within [`FLOOD_WINDOW`].
    Flood(usize),
}

/// The reading side of a vassal's task: bounded reads, identical messages
/// folded into one report per chunk, unknown bytes counted and logged with
/// a rate limit, and the flood meter.
pub(super) struct Relay {
    window_start: tokio::time::Instant,
    window_bytes: usize,
    unknown: u64,
    unknown_logged: Option<tokio::time::Instant>,
}

impl Relay {
    pub(super) fn new() -> Relay {
        Relay {
            window_start: tokio::time::Instant::now(),
            window_bytes: 0,
            unknown: 0,
            unknown_logged: None,
        }
    }

    /// Reads one chunk (without waiting) and reports what it held.
    fn read(
        &mut self,
        link: &VassalLink,
        instance: InstanceId,
        reports: &mpsc::UnboundedSender<Report>,
    ) -> Read {
        let mut buf = [0u8; READ_CHUNK];
        let n = loop {
            match link.ctrl.try_read(&mut buf) {
                Ok(0) => return Read::Eof,
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Read::Drained,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Read::Eof,
            }
        };
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window_start) > FLOOD_WINDOW {
            self.window_start = now;
            self.window_bytes = 0;
        }
        self.window_bytes += n;
        if self.window_bytes > FLOOD_LIMIT {
            return Read::Flood(self.window_bytes);
        }
        // one report per kind of message in the chunk, in the order they
        // first appear: a thousand heartbeats say what one says
        let mut seen = [false; 256];
        for &b in &buf[..n] {
            match VassalMessage::from_byte(b) {
                VassalMessage::Unknown(_) => self.unknown += 1,
                m if !seen[usize::from(b)] => {
                    seen[usize::from(b)] = true;
                    let _ = reports.send(Report::Message(instance, m));
                }
                _ => {}
            }
        }
        if self.unknown > 0
            && self
                .unknown_logged
                .is_none_or(|t| now.duration_since(t) >= UNKNOWN_LOG_EVERY)
        {
            tracing::warn!(vassal = %link.name, bytes = self.unknown, "[emperor] vassal {} sent {} unknown byte(s) on its emperor socket; ignored", link.name, self.unknown);
            self.unknown = 0;
            self.unknown_logged = Some(now);
        }
        if n == READ_CHUNK {
            Read::More
        } else {
            Read::Drained
        }
    }
}

/// What woke a vassal's task.
enum Wake {
    Exited(ExitStatus),
    /// The control socket is at end of file or failed.
    Eof,
    /// The vassal floods its control socket (bytes in the window).
    Flood(usize),
    /// The grace period after end of file is over.
    EofTimeout,
    Commands,
}

/// Relays the vassal's bytes to the runtime, carries out the runtime's
/// commands, and reaps the process.
///
/// The wait is one `poll_fn` over the exit, the socket and the queue,
/// rather than a `select!` of their futures: this task lives as long as
/// its vassal, once per vassal, and a select of four futures made it about
/// four times larger.
pub(super) async fn vassal_task(
    instance: InstanceId,
    link: Arc<VassalLink>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut reading = true;
    let mut eof_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut relay = Relay::new();
    let status = loop {
        let wake = std::future::poll_fn(|cx| {
            link.poll_wake(
                cx,
                instance,
                &reports,
                reading,
                eof_timer.as_mut(),
                &mut relay,
            )
        })
        .await;
        match wake {
            Wake::Exited(st) => break st,
            Wake::Flood(bytes) => {
                // nothing more is read from it; the reconciler kills it
                reading = false;
                let _ = reports.send(Report::Flood(instance, bytes));
            }
            Wake::Eof => {
                // usually the process is exiting: give the exit a moment to
                // be seen, so an ordinary death is not logged as a curse
                reading = false;
                eof_timer = Some(Box::pin(tokio::time::sleep(Duration::from_millis(500))));
            }
            Wake::EofTimeout => {
                eof_timer = None;
                let _ = reports.send(Report::PipeClosed(instance));
            }
            Wake::Commands => {
                // the guard is dropped before each write is awaited
                // a command leaves the queue once written, so that a hot
                // upgrade hands on what is not
                loop {
                    let Some(cmd) = link.queue().front().cloned() else {
                        break;
                    };
                    Box::pin(link.carry_out(cmd)).await;
                    link.queue().pop_front();
                }
            }
        }
    };
    // bytes the vassal wrote just before exiting (one chunk at most)
    if reading {
        let _ = relay.read(&link, instance, &reports);
    }
    let _ = reports.send(Report::Exited(instance, status));
}

async fn push_config(
    name: &VassalName,
    sock: Option<&UnixStream>,
    text: &str,
    partial: &std::sync::atomic::AtomicBool,
) {
    let Some(sock) = sock else {
        tracing::debug!(vassal = %name, "no config socket to push to");
        return;
    };
    match encode_config(text.as_bytes()) {
        Ok(pkt) => {
            if let Err(e) = write_all(sock, &pkt, partial).await {
                tracing::warn!(vassal = %name, error = %e, "cannot push the config to the vassal");
            }
        }
        Err(e) => tracing::error!(vassal = %name, "cannot push the config: {e}"),
    }
}
