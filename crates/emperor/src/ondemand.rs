//! On-demand sockets (docs/on-demand.md): the emperor binds the socket of an
//! on-demand vassal itself, keeps it open for the vassal's whole life in the
//! table (so connections queued while no process runs are never lost), and
//! watches it for a pending connection without ever accepting one.
//!
//! Address forms:
//!
//! | value | socket |
//! |---|---|
//! | `127.0.0.1:8080`, `:8080` (any IPv4 address) | TCP over IPv4 |
//! | `[::1]:8080`, `[::]:8080` | TCP over IPv6 (IPv6 only) |
//! | anything without `:` | a UNIX socket path (relative to the vassal's directory) |

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

/// How on-demand sockets are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnDemandOptions {
    /// `--listen`: the backlog (uWSGI's default 100).
    pub backlog: i32,
    /// `--emperor-on-demand-socket-mode`: the mode of UNIX sockets (0o666,
    /// as uWSGI, so a vassal running as any user can be reached).
    pub unix_mode: u32,
}

impl Default for OnDemandOptions {
    fn default() -> Self {
        OnDemandOptions {
            backlog: 100,
            unix_mode: 0o666,
        }
    }
}

/// A parsed on-demand address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDemandAddr {
    /// TCP (IPv4 or IPv6).
    Tcp(SocketAddr),
    /// A UNIX socket path.
    Unix(PathBuf),
}

/// Why an on-demand address was refused.
#[derive(Debug, thiserror::Error)]
pub enum OnDemandError {
    #[error("{0:?} is not a valid TCP address: use HOST:PORT with an IPv4 address (127.0.0.1:8080, :8080 for every address) or [IPv6]:PORT")]
    /// Not a valid `HOST:PORT`.
    BadTcp(String),
    #[error("UNIX socket path {0} is longer than 107 bytes")]
    /// A UNIX path too long for `sockaddr_un`.
    PathTooLong(String),
    #[error("{path} exists and is not a socket; refusing to replace it")]
    /// Something that is not a socket is at the path.
    NotASocket {
        /// The path.
        path: String,
    },
    #[error("{what}: {source}")]
    /// A system call failed.
    Io {
        /// What was being done.
        what: String,
        #[source]
        /// The error.
        source: io::Error,
    },
}

impl OnDemandAddr {
    /// Parses `value`; a relative UNIX path is resolved against `dir`.
    ///
    /// ```
    /// use emperor::ondemand::OnDemandAddr;
    /// use std::path::Path;
    /// assert!(matches!(OnDemandAddr::parse("127.0.0.1:9000", Path::new("/")), Ok(OnDemandAddr::Tcp(_))));
    /// assert!(matches!(OnDemandAddr::parse("[::1]:9000", Path::new("/")), Ok(OnDemandAddr::Tcp(_))));
    /// assert_eq!(
    ///     OnDemandAddr::parse("app.sock", Path::new("/srv")).unwrap(),
    ///     OnDemandAddr::Unix("/srv/app.sock".into())
    /// );
    /// ```
    pub fn parse(value: &str, dir: &Path) -> Result<OnDemandAddr, OnDemandError> {
        if !value.contains(':') {
            let p = dir.join(value);
            if p.as_os_str().len() > 107 {
                return Err(OnDemandError::PathTooLong(p.display().to_string()));
            }
            return Ok(OnDemandAddr::Unix(p));
        }
        if value.starts_with('[') {
            return value
                .parse::<SocketAddr>()
                .map(OnDemandAddr::Tcp)
                .map_err(|_| OnDemandError::BadTcp(value.to_string()));
        }
        let bad = || OnDemandError::BadTcp(value.to_string());
        let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let ip: IpAddr = if host.is_empty() || host == "*" {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            IpAddr::V4(host.parse().map_err(|_| bad())?)
        };
        Ok(OnDemandAddr::Tcp(SocketAddr::new(ip, port)))
    }
}

/// A bound, listening on-demand socket. Dropping it closes the socket and
/// removes a UNIX socket's path.
#[derive(Debug)]
pub struct OnDemandSocket {
    fd: OwnedFd,
    unix_path: Option<PathBuf>,
}

impl OnDemandSocket {
    /// Binds and listens at `addr`. The socket stays blocking: the vassal
    /// shares it, and the emperor only polls it.
    pub fn bind(addr: &OnDemandAddr, opts: &OnDemandOptions) -> Result<Self, OnDemandError> {
        let io = |what: String| move |source| OnDemandError::Io { what, source };
        match addr {
            OnDemandAddr::Tcp(sa) => {
                let sock = Socket::new(Domain::for_address(*sa), Type::STREAM, None)
                    .map_err(io(format!("socket for {sa}")))?;
                sock.set_reuse_address(true)
                    .map_err(io(format!("SO_REUSEADDR on {sa}")))?;
                if sa.is_ipv6() {
                    sock.set_only_v6(true)
                        .map_err(io(format!("IPV6_V6ONLY on {sa}")))?;
                }
                sock.bind(&SockAddr::from(*sa))
                    .map_err(io(format!("bind {sa}")))?;
                sock.listen(opts.backlog)
                    .map_err(io(format!("listen on {sa}")))?;
                Ok(OnDemandSocket {
                    fd: sock.into(),
                    unix_path: None,
                })
            }
            OnDemandAddr::Unix(path) => {
                let shown = path.display().to_string();
                match std::fs::symlink_metadata(path) {
                    Ok(md) if md.file_type().is_socket() => {
                        std::fs::remove_file(path).map_err(io(format!("unlink {shown}")))?
                    }
                    Ok(_) => return Err(OnDemandError::NotASocket { path: shown }),
                    Err(_) => {}
                }
                let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
                    .map_err(io(format!("socket for {shown}")))?;
                let sa = SockAddr::unix(path).map_err(io(format!("address {shown}")))?;
                sock.bind(&sa).map_err(io(format!("bind {shown}")))?;
                let this = OnDemandSocket {
                    fd: sock.into(),
                    unix_path: Some(path.clone()),
                };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.unix_mode))
                    .map_err(io(format!("chmod {:o} {shown}", opts.unix_mode)))?;
                Socket::from(this.fd.try_clone().map_err(io(format!("dup {shown}")))?)
                    .listen(opts.backlog)
                    .map_err(io(format!("listen on {shown}")))?;
                Ok(this)
            }
        }
    }

    /// The socket bound at `addr` by the emperor's previous image (a hot
    /// upgrade): held again as it was, never bound again, so connections
    /// queued on it stay queued.
    pub fn adopt(fd: OwnedFd, addr: &OnDemandAddr) -> io::Result<Self> {
        crate::spawn::set_inheritable(fd.as_fd(), false)?;
        let unix_path = match addr {
            OnDemandAddr::Unix(p) => Some(p.clone()),
            _ => None,
        };
        Ok(OnDemandSocket { fd, unix_path })
    }

    /// Its descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A new descriptor for the same socket (for fd 0 of a vassal, or for
    /// one watch).
    pub fn dup(&self) -> io::Result<OwnedFd> {
        self.fd.as_fd().try_clone_to_owned()
    }

    /// Waits until a connection is pending. Cancel-safe; never accepts.
    ///
    /// Each call registers a fresh descriptor with the reactor, so a
    /// connection already queued (level) is reported at once, and one that
    /// arrives later wakes it.
    pub async fn wait_pending(&self) -> io::Result<()> {
        let afd = crate::spawn::register_readable(self.dup()?)?;
        let _guard = afd.readable().await?;
        Ok(())
    }
}

impl Drop for OnDemandSocket {
    fn drop(&mut self) {
        if let Some(p) = &self.unix_path {
            // only remove what is still a socket (someone may have replaced it)
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn addresses_parse() {
        let d = Path::new("/run");
        assert_eq!(
            OnDemandAddr::parse(":8080", d).unwrap(),
            OnDemandAddr::Tcp("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            OnDemandAddr::parse("[::1]:81", d).unwrap(),
            OnDemandAddr::Tcp("[::1]:81".parse().unwrap())
        );
        assert_eq!(
            OnDemandAddr::parse("/tmp/x.sock", d).unwrap(),
            OnDemandAddr::Unix("/tmp/x.sock".into())
        );
        for bad in ["localhost:80", "1.2.3.4:http", "1.2.3.4:99999", "[::1:80"] {
            assert!(OnDemandAddr::parse(bad, d).is_err(), "{bad}");
        }
        let long = format!("/{}", "a".repeat(120));
        assert!(matches!(
            OnDemandAddr::parse(&long, d),
            Err(OnDemandError::PathTooLong(_))
        ));
    }

    #[tokio::test]
    async fn pending_connection_is_seen_queued_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("od.sock");
        let s = OnDemandSocket::bind(
            &OnDemandAddr::Unix(path.clone()),
            &OnDemandOptions::default(),
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        // nothing pending: the wait does not finish
        assert!(
            tokio::time::timeout(Duration::from_millis(100), s.wait_pending())
                .await
                .is_err()
        );
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        tokio::time::timeout(Duration::from_secs(2), s.wait_pending())
            .await
            .expect("connection seen")
            .unwrap();
        // not accepted: a second wait sees it again (still queued)
        tokio::time::timeout(Duration::from_secs(2), s.wait_pending())
            .await
            .expect("still queued")
            .unwrap();
        // and whoever gets the socket can accept it
        let l = std::os::unix::net::UnixListener::from(s.dup().unwrap());
        l.accept().unwrap();
        drop(l);
        drop(s);
        assert!(!path.exists(), "the socket path is removed on drop");
    }

    #[test]
    fn tcp_v4_and_v6_bind_and_a_regular_file_is_not_replaced() {
        let o = OnDemandOptions::default();
        let s = OnDemandSocket::bind(
            &OnDemandAddr::parse("127.0.0.1:0", Path::new("/")).unwrap(),
            &o,
        )
        .unwrap();
        drop(s);
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            OnDemandSocket::bind(&OnDemandAddr::parse("[::1]:0", Path::new("/")).unwrap(), &o)
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(
            OnDemandSocket::bind(&OnDemandAddr::Unix(f.clone()), &o),
            Err(OnDemandError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "x");
    }
}
