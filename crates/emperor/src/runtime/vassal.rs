//! The task of one vassal process: relays the bytes it writes on its
//! control socket, writes the runtime's commands to it, reaps it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::unix::AsyncFd;
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

/// What the runtime shares with the task of one vassal process: its
/// sockets, its pidfd and the commands the task has yet to carry out.
///
/// One allocation per vassal: a channel per vassal cost more than a
/// kilobyte each (tokio preallocates a block of 32 slots), and the emperor
/// keeps one per running vassal.
pub(super) struct VassalLink {
    pub(super) name: VassalName,
    pub(super) ctrl: UnixStream,
    pub(super) child: AsyncFd<VassalProcess>,
    pub(super) config: Option<UnixStream>,
    /// Commands in order; the task drains it when woken.
    pub(super) queue: std::sync::Mutex<VecDeque<VassalCmd>>,
    pub(super) waker: AtomicWaker,
}

impl VassalLink {
    pub(super) fn send(&self, cmd: VassalCmd) {
        self.queue().push_back(cmd);
        self.waker.wake();
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
    ) -> Poll<Wake> {
        loop {
            match self.child.poll_read_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Wake::Exited(Err(e))),
                Poll::Ready(Ok(mut ready)) => match self.child.get_ref().try_wait() {
                    Ok(Some(st)) => return Poll::Ready(Wake::Exited(Ok(st))),
                    Ok(None) => ready.clear_ready(),
                    Err(e) => return Poll::Ready(Wake::Exited(Err(e))),
                },
            }
        }
        if reading {
            loop {
                match self.ctrl.poll_read_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => return Poll::Ready(Wake::Eof),
                    // on WouldBlock, try_read clears the readiness, so the
                    // next poll registers for more
                    Poll::Ready(Ok(())) => {
                        if !self.relay_bytes(instance, reports) {
                            return Poll::Ready(Wake::Eof);
                        }
                    }
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

    /// Reads what the vassal wrote (without waiting) and reports each byte;
    /// false once the socket is at end of file or failed.
    fn relay_bytes(&self, instance: InstanceId, reports: &mpsc::UnboundedSender<Report>) -> bool {
        let mut buf = [0u8; 16];
        loop {
            match self.ctrl.try_read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    for b in &buf[..n] {
                        let _ =
                            reports.send(Report::Message(instance, VassalMessage::from_byte(*b)));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    async fn carry_out(&self, cmd: VassalCmd) {
        match cmd {
            VassalCmd::Byte(b) => {
                if let Err(e) = write_all(&self.ctrl, &[b]).await {
                    tracing::debug!(vassal = %self.name, error = %e, "cannot write to the vassal's control socket");
                }
            }
            VassalCmd::Config(text) => push_config(&self.name, self.config.as_ref(), &text).await,
        }
    }

    /// SIGKILL now, not behind queued writes (a vassal that does not read
    /// its socket can hold those forever). A pidfd never names another
    /// process, even once this one is reaped.
    pub(super) fn kill(&self) {
        if let Err(e) = self.child.get_ref().kill() {
            tracing::debug!(vassal = %self.name, error = %e, "kill failed");
        }
    }
}

/// Writes all of `data` to a non-blocking socket shared by reference.
async fn write_all(sock: &UnixStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        sock.writable().await?;
        match sock.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What woke a vassal's task.
enum Wake {
    Exited(std::io::Result<ExitStatus>),
    /// The control socket is at end of file or failed.
    Eof,
    /// The grace period after end of file is over.
    EofTimeout,
    Commands,
}

/// Relays the vassal's bytes to the runtime, carries out the runtime's
/// commands, and reaps the process.
///
/// The wait is one `poll_fn` over the pidfd, the socket and the queue,
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
    let status = loop {
        let wake = std::future::poll_fn(|cx| {
            link.poll_wake(cx, instance, &reports, reading, eof_timer.as_mut())
        })
        .await;
        match wake {
            Wake::Exited(st) => break st,
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
                loop {
                    let Some(cmd) = link.queue().pop_front() else {
                        break;
                    };
                    Box::pin(link.carry_out(cmd)).await;
                }
            }
        }
    };
    // bytes the vassal wrote just before exiting
    if reading {
        link.relay_bytes(instance, &reports);
    }
    let status = match status {
        Ok(st) => st,
        Err(e) => {
            tracing::error!(vassal = %link.name, error = %e, "waiting for the vassal failed");
            ExitStatus::Code(-1)
        }
    };
    let _ = reports.send(Report::Exited(instance, status));
}

async fn push_config(name: &VassalName, sock: Option<&UnixStream>, text: &str) {
    let Some(sock) = sock else {
        tracing::debug!(vassal = %name, "no config socket to push to");
        return;
    };
    match encode_config(text.as_bytes()) {
        Ok(pkt) => {
            if let Err(e) = write_all(sock, &pkt).await {
                tracing::warn!(vassal = %name, error = %e, "cannot push the config to the vassal");
            }
        }
        Err(e) => tracing::error!(vassal = %name, "cannot push the config: {e}"),
    }
}
