//! The observer sockets (stats server, metrics endpoint, control socket):
//! binding a TCP, UNIX or abstract address, and the accept loop they share:
//! at most [`MAX_CLIENTS`] connections at once, each served by its own task
//! within a time limit, so a slow client never stalls the emperor.
//!
//! The callers keep their own log lines (through `on_accept_error` and
//! `on_done`), so each line keeps its module as its target; the one line
//! of the loop itself (a connection closed to make room) names its caller
//! by `what`.

use std::path::PathBuf;

use tokio::net::{TcpListener, UnixListener};

use std::future::Future;
use std::time::Duration;

use tokio::net::unix::UCred;
use tokio::time::error::Elapsed;

/// Accepts connections on `listener` for ever. A failed accept is passed to
/// `on_accept_error` and retried after 100 ms. Each connection (with the
/// peer's credentials on UNIX sockets) is turned into a future by `serve`,
/// which runs in its own task for at most `timeout`; its outcome, or the
/// elapsed time limit, goes to `on_done` in that task.
///
/// At most [`MAX_CLIENTS`] connections are served at once. A new connection
/// is always accepted: when every slot is taken, the oldest connection still
/// being served is closed to make room (counted, and logged at most once per
/// [`LogLimit::EVERY`] by `what`). Clients that connect and then say nothing
/// can therefore never keep a real one waiting in the kernel's backlog for
/// the length of their time limit.
pub(crate) async fn accept_loop<S, F>(
    listener: Listener,
    timeout: Duration,
    what: &'static str,
    on_accept_error: fn(&std::io::Error),
    serve: S,
    on_done: fn(Result<F::Output, Elapsed>),
) where
    S: Fn(Box<dyn Conn>, Option<UCred>) -> F,
    F: Future + Send + 'static,
    F::Output: Send,
{
    let mut live: std::collections::VecDeque<tokio::task::AbortHandle> =
        std::collections::VecDeque::with_capacity(MAX_CLIENTS);
    let evicted = LogLimit::new();
    loop {
        let (conn, cred) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                on_accept_error(&e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        live.retain(|h| !h.is_finished());
        if live.len() >= MAX_CLIENTS {
            if let Some(oldest) = live.pop_front() {
                oldest.abort();
                if let Some(held) = evicted.allow() {
                    tracing::warn!(
                        clients = MAX_CLIENTS,
                        held_back = held,
                        "{what}: {MAX_CLIENTS} clients at once; the oldest connection was closed to make room"
                    );
                }
            }
        }
        let fut = serve(conn, cred);
        let task = tokio::spawn(async move {
            on_done(tokio::time::timeout(timeout, fut).await);
        });
        live.push_back(task.abort_handle());
    }
}

/// Errors binding an observer socket.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: String,
    #[source]
    /// The error.
    pub source: std::io::Error,
}

/// A bound listener, TCP or UNIX.
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A UNIX socket, and its file (`None` in the abstract namespace).
    Unix(UnixListener, Option<PathBuf>),
}

/// A connection accepted by a [`Listener`].
pub trait Conn:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsFd + Unpin + Send + 'static
{
}
impl<
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsFd + Unpin + Send + 'static,
    > Conn for T
{
}

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
            return TcpListener::bind(inet_addr(addr))
                .await
                .map(Listener::Tcp)
                .map_err(err);
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
        clear_socket_path(&path).map_err(err)?;
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

    /// The listening socket a previous image of the emperor bound at
    /// `addr` (a hot upgrade): the same kind as [`Listener::bind`] makes
    /// for that address, never bound again, so no connection is refused
    /// meanwhile.
    pub fn adopt(addr: &str, fd: std::os::fd::OwnedFd) -> Result<Listener, BindError> {
        let err = |source| BindError {
            addr: addr.to_string(),
            source,
        };
        crate::spawn::set_inheritable(std::os::fd::AsFd::as_fd(&fd), false).map_err(err)?;
        if addr.contains(':') {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map_err(err)?;
            return TcpListener::from_std(l).map(Listener::Tcp).map_err(err);
        }
        let l = std::os::unix::net::UnixListener::from(fd);
        l.set_nonblocking(true).map_err(err)?;
        let path = (!addr.starts_with('@')).then(|| PathBuf::from(addr));
        UnixListener::from_std(l)
            .map(|l| Listener::Unix(l, path))
            .map_err(err)
    }

    /// A duplicate of its descriptor (close-on-exec), for a hot upgrade.
    pub fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        match self {
            Listener::Tcp(l) => l.as_fd().try_clone_to_owned(),
            Listener::Unix(l, _) => l.as_fd().try_clone_to_owned(),
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

/// At most this many clients of one observer socket are served at once;
/// a new one closes the oldest (see `accept_loop`).
pub const MAX_CLIENTS: usize = 64;

/// An internet address as uWSGI writes it: `:PORT` is every address.
pub fn inet_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    }
}

/// Makes way for a UNIX socket at `path`: a stale socket file is removed;
/// anything else there (a regular file, a directory, a symlink) is an error
/// that says what it is, and is never replaced.
pub fn clear_socket_path(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if m.file_type().is_socket() {
        let _ = std::fs::remove_file(path);
        return Ok(());
    }
    let what = if m.is_dir() {
        "a directory"
    } else if m.file_type().is_symlink() {
        "a symbolic link"
    } else if m.is_file() {
        "a regular file"
    } else {
        "a file that is not a socket"
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{} is {what}, not a socket: remove it or choose another path",
            path.display()
        ),
    ))
}

/// A log line that is written at most once per [`LogLimit::EVERY`]; the
/// times it was held back are counted into the next one.
#[derive(Debug, Default)]
pub struct LogLimit {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    held: std::sync::atomic::AtomicU64,
}

impl LogLimit {
    /// How often the line may be written.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// A limiter that has written nothing yet.
    pub const fn new() -> LogLimit {
        LogLimit {
            last: std::sync::Mutex::new(None),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)` when the line may be written now, `n` being how many were
    /// held back since the last one; `None` when it must be held back.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}
