//! A private single-member etcd (Debian's `etcd-server` package): data in a
//! temp dir, client and peer URLs on 127.0.0.1 and free ports, a short
//! election timeout. Ready once `GET /health` on the client port answers
//! `"health":"true"` (the member has a leader and serves requests).
//!
//! ```no_run
//! let mut etcd = testkit::servers::etcd::Etcd::start();
//! let ep = etcd.endpoint(); // "127.0.0.1:PORT"
//! etcd.stop();
//! etcd.restart(); // same data, same ports
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{
    free_port, private_dir, require_program, server_log, tcp_answer_contains, ServerProcess,
};

/// How long the server may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running private etcd.
pub struct Etcd {
    server: ServerProcess,
    /// The client port on 127.0.0.1.
    pub port: u16,
    peer_port: u16,
    bin: PathBuf,
}

impl Etcd {
    /// Starts a fresh member and waits until it is healthy. Panics (with
    /// the install command) when etcd is not installed.
    pub fn start() -> Etcd {
        let bin = require_program("etcd", "etcd-server");
        let dir = private_dir("imperium-etcd.");
        let port = free_port();
        let peer_port = free_port();
        let child = spawn(&bin, dir.path(), port, peer_port);
        let etcd = Etcd {
            server: ServerProcess::new("etcd", dir, child),
            port,
            peer_port,
            bin,
        };
        etcd.wait_ready();
        etcd
    }

    /// The client endpoint without scheme: `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the member (SIGTERM, by pid); data and ports are kept.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the member again on the same data and ports, and waits until
    /// it is healthy.
    pub fn restart(&mut self) {
        self.server.stop_until_closed(self.port);
        let child = spawn(&self.bin, self.server.dir.path(), self.port, self.peer_port);
        self.server.set_child(child);
        self.wait_ready();
    }

    /// The member's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    fn wait_ready(&self) {
        self.server
            .wait_ready(self.port, READY_TIMEOUT, "was not healthy", healthy);
    }
}

fn spawn(bin: &Path, dir: &Path, port: u16, peer_port: u16) -> Child {
    let log = server_log(dir);
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    Command::new(bin)
        .arg("--name=test")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=test={peer}"))
        .args([
            "--initial-cluster-state=new",
            "--heartbeat-interval=20",
            "--election-timeout=200",
            "--log-level=error",
            "--logger=zap",
        ])
        .env_remove("ETCD_UNSUPPORTED_ARCH")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn etcd")
}

/// True when `GET /health` says the member is healthy.
fn healthy(port: u16) -> bool {
    let req =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    tcp_answer_contains(
        port,
        req.as_bytes(),
        Duration::from_secs(2),
        "\"health\":\"true\"",
    )
}
