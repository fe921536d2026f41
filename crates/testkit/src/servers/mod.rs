//! Private throwaway servers for tests: each fixture starts a real server as
//! a plain child process in a temp dir, bound to 127.0.0.1 on a free port,
//! waits until a real client request succeeds, and stops it (by pid) and
//! removes its directory when dropped.

pub mod etcd;
pub mod mongo;
pub mod pg;
pub mod rabbitmq;
pub mod slapd;
pub mod zookeeper;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// The command that installs everything the test suite needs.
pub const INSTALL_HINT: &str = "bash scripts/install-deps.sh";

/// A free TCP port on 127.0.0.1 (bind to 0, read it, close it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn tcp_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Retries `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private temp directory named `prefix` and a random suffix.
pub fn private_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
}

/// `dir`/server.log, opened for appending (created when missing): where a
/// fixture's server writes its output.
pub fn server_log(dir: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("open server.log")
}

/// Sends `request` to 127.0.0.1:`port` and reads the answer until the
/// server closes the connection (or `read_timeout` passes): true when the
/// answer contains `expect`.
pub fn tcp_answer_contains(
    port: u16,
    request: &[u8],
    read_timeout: Duration,
    expect: &str,
) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(read_timeout));
    if s.write_all(request).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains(expect)
}

/// Finds `program` (a name on PATH or an absolute path) or panics with the
/// Debian package that provides it and the command that installs it.
pub fn require_program(program: &str, debian_package: &str) -> PathBuf {
    if Path::new(program).is_absolute() {
        if Path::new(program).exists() {
            return PathBuf::from(program);
        }
    } else if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(program);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "{program} is not installed (Debian package {debian_package}); install the test dependencies with `{INSTALL_HINT}`"
    );
}

/// A running server process plus its private directory. Dropping it kills
/// the process (SIGTERM, then SIGKILL after 10 s) and removes the directory.
pub struct ServerProcess {
    /// What it is, for messages.
    pub name: &'static str,
    /// The private directory (removed on drop).
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// The signal that asks this server to stop (SIGTERM unless set).
    pub stop_signal: i32,
}

impl ServerProcess {
    /// Wraps a started child.
    pub fn new(name: &'static str, dir: tempfile::TempDir, child: Child) -> Self {
        ServerProcess {
            name,
            dir,
            child: Some(child),
            stop_signal: libc::SIGTERM,
        }
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the server and waits for it (the directory is kept, so it can
    /// be started again on the same data).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let sig = nix::sys::signal::Signal::try_from(self.stop_signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM);
            let _ = nix::sys::signal::kill(pid, sig);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// Stops the server, then waits (up to 10 s) until nothing accepts
    /// connections on 127.0.0.1:`port` any more: the old listener may
    /// linger for a moment.
    pub fn stop_until_closed(&mut self, port: u16) {
        self.stop();
        wait_until(Duration::from_secs(10), || !tcp_open(port));
    }

    /// Waits until `ready(port)` or `timeout`; then panics with "NAME
    /// `failure` on 127.0.0.1:PORT within TIMEOUT" and the last 40 lines of
    /// server.log.
    pub fn wait_ready(
        &self,
        port: u16,
        timeout: Duration,
        failure: &str,
        ready: impl Fn(u16) -> bool,
    ) {
        if !wait_until(timeout, || ready(port)) {
            panic!(
                "{} {failure} on 127.0.0.1:{port} within {timeout:?}; log:\n{}",
                self.name,
                self.log_tail("server.log", 40)
            );
        }
    }

    /// Replaces the child after a restart.
    pub fn set_child(&mut self, child: Child) {
        self.stop();
        self.child = Some(child);
    }

    /// The path of a file in the private directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The last `n` lines of a log file in the private directory, for
    /// failure messages.
    pub fn log_tail(&self, rel: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.path(rel)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
