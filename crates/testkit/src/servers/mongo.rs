//! A private MongoDB-wire server for tests: SecantusDB (`secantusd-py`, a
//! MongoDB-compatible server on WiredTiger; the real mongod is not packaged
//! for Debian), installed from PyPI into a virtualenv by
//! `scripts/install-deps.d/mongodb.sh`.
//!
//! By default the server advertises a single-node replica set, so change
//! streams work as on a real one-node replica set;
//! [`Topology::Standalone`] makes it a standalone server, which refuses
//! `$changeStream` as a real standalone mongod does.
//!
//! ```no_run
//! use testkit::servers::mongo::{MongoServer, Topology};
//! let server = MongoServer::start(Topology::ReplicaSet);
//! println!("{}", server.url()); // mongodb://127.0.0.1:PORT/?directConnection=true
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, server_log, wait_until, ServerProcess};

/// Where the virtualenv lives unless `SECANTUS_VENV` says otherwise.
pub const DEFAULT_VENV: &str = "/opt/mongo-compat-venv";

/// The command that installs SecantusDB.
pub const INSTALL_COMMAND: &str = "bash scripts/install-deps.d/mongodb.sh";

/// How the server presents itself to drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// A one-node replica set (primary): change streams work.
    ReplicaSet,
    /// A standalone server: `$changeStream` is refused (error 40573).
    Standalone,
}

/// The `secantusd-py` program, or a panic that says how to install it.
pub fn secantus_program() -> PathBuf {
    let venv = std::env::var_os("SECANTUS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
    let program = venv.join("bin").join("secantusd-py");
    if !program.is_file() {
        panic!(
            "SecantusDB (the MongoDB-wire test server) is not installed: {} does not exist; \
             install it with `{INSTALL_COMMAND}` (part of `{}`), or point SECANTUS_VENV at its virtualenv",
            program.display(),
            super::INSTALL_HINT
        );
    }
    program
}

/// A running SecantusDB on 127.0.0.1, its data in a private temp dir.
/// Dropping it stops the server (by pid) and removes the directory.
pub struct MongoServer {
    process: ServerProcess,
    program: PathBuf,
    port: u16,
    topology: Topology,
}

impl MongoServer {
    /// Starts a server and waits until it answers a `ping` command.
    pub fn start(topology: Topology) -> MongoServer {
        let program = secantus_program();
        let dir = tempfile::Builder::new()
            .prefix("imperium-mongo.")
            .tempdir()
            .expect("create a temp dir for the MongoDB test server");
        let port = free_port();
        let child = spawn(&program, dir.path(), port, topology);
        let mut server = MongoServer {
            process: ServerProcess::new("secantusd-py", dir, child),
            program,
            port,
            topology,
        };
        server.wait_ready();
        server
    }

    /// The connection string tests use (direct to this one server).
    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// `127.0.0.1:PORT`, the address field of uWSGI's URL forms.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The topology it was started with.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Stops the server (SIGTERM, then SIGKILL) and keeps its data.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts the server again on the same port and data, and waits until
    /// it answers.
    pub fn restart(&mut self) {
        self.process.stop();
        let child = spawn(
            &self.program,
            self.process.dir.path(),
            self.port,
            self.topology,
        );
        self.process.set_child(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        let ok = wait_until(Duration::from_secs(60), || ping(port).unwrap_or(false));
        if !ok {
            let log = self.process.log_tail("server.log", 40);
            self.process.stop();
            panic!("secantusd-py on 127.0.0.1:{port} did not answer ping within 60 s; server.log:\n{log}");
        }
    }
}

fn spawn(
    program: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    topology: Topology,
) -> std::process::Child {
    let log = server_log(dir);
    let mut cmd = Command::new(program);
    cmd.current_dir(dir)
        .arg("--host")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .arg("--storage-path")
        .arg(dir.join("data"))
        .args(["--cache-size", "64M", "--log-level", "WARNING"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup server.log"))
        .stderr(log);
    if topology == Topology::Standalone {
        cmd.arg("--standalone");
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

// ---- a minimal MongoDB wire client: one OP_MSG `ping`, enough to know the server serves ----

const OP_MSG: i32 = 2013;

fn cstring(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// `{ping: 1, $db: "admin"}` as BSON.
fn ping_document() -> Vec<u8> {
    let mut body = Vec::new();
    body.push(0x10); // int32
    cstring(&mut body, "ping");
    body.extend_from_slice(&1i32.to_le_bytes());
    body.push(0x02); // string
    cstring(&mut body, "$db");
    body.extend_from_slice(&6i32.to_le_bytes());
    cstring(&mut body, "admin");
    body.push(0);
    let mut doc = ((body.len() + 4) as i32).to_le_bytes().to_vec();
    doc.extend(body);
    doc
}

/// Sends `ping` to 127.0.0.1:`port`; true when the reply says `ok: 1`.
pub fn ping(port: u16) -> std::io::Result<bool> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let doc = ping_document();
    let len = 16 + 4 + 1 + doc.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as i32).to_le_bytes());
    msg.extend_from_slice(&1i32.to_le_bytes()); // requestID
    msg.extend_from_slice(&0i32.to_le_bytes()); // responseTo
    msg.extend_from_slice(&OP_MSG.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    msg.push(0); // section kind 0: the body
    msg.extend(doc);
    s.write_all(&msg)?;
    let mut header = [0u8; 16];
    s.read_exact(&mut header)?;
    let total = i32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let op = i32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
    if op != OP_MSG || !(21..=48_000_000).contains(&total) {
        return Ok(false);
    }
    let mut rest = vec![0u8; total as usize - 16];
    s.read_exact(&mut rest)?;
    // flagBits (4), kind 0 (1), then the reply document
    if rest.len() < 5 || rest[4] != 0 {
        return Ok(false);
    }
    Ok(reply_ok(&rest[5..]))
}

/// True when the top-level field `ok` of a BSON document is 1.
fn reply_ok(doc: &[u8]) -> bool {
    let mut i = 4;
    while i < doc.len() && doc[i] != 0 {
        let ty = doc[i];
        let Some(nul) = doc[i + 1..].iter().position(|&b| b == 0) else {
            return false;
        };
        let name = &doc[i + 1..i + 1 + nul];
        let v = i + 2 + nul;
        let le32 = |at: usize| -> Option<usize> {
            doc.get(at..at + 4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap_or_default()).max(0) as usize)
        };
        if name == b"ok" {
            return match ty {
                0x01 => doc
                    .get(v..v + 8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()) == 1.0)
                    .unwrap_or(false),
                0x10 => le32(v) == Some(1),
                0x12 => doc
                    .get(v..v + 8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()) == 1)
                    .unwrap_or(false),
                0x08 => doc.get(v) == Some(&1),
                _ => false,
            };
        }
        let size = match ty {
            0x01 | 0x09 | 0x11 | 0x12 => Some(8),
            0x02 | 0x0D | 0x0E => le32(v).map(|n| n + 4),
            0x03 | 0x04 => le32(v),
            0x05 => le32(v).map(|n| n + 5),
            0x07 => Some(12),
            0x08 => Some(1),
            0x0A | 0x06 | 0x7F | 0xFF => Some(0),
            0x10 => Some(4),
            0x13 => Some(16),
            _ => None,
        };
        match size {
            Some(n) => i = v + n,
            None => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ok_after_other_fields() {
        // {n: "x", ok: 1.0}
        let mut body = vec![0x02];
        cstring(&mut body, "n");
        body.extend_from_slice(&2i32.to_le_bytes());
        cstring(&mut body, "x");
        body.push(0x01);
        cstring(&mut body, "ok");
        body.extend_from_slice(&1.0f64.to_le_bytes());
        body.push(0);
        let mut doc = ((body.len() + 4) as i32).to_le_bytes().to_vec();
        doc.extend(body.clone());
        assert!(reply_ok(&doc));
        // ok: 0.0
        let n = doc.len();
        doc[n - 9..n - 1].copy_from_slice(&0.0f64.to_le_bytes());
        assert!(!reply_ok(&doc));
    }

    #[test]
    fn ping_document_is_well_formed() {
        let d = ping_document();
        assert_eq!(
            i32::from_le_bytes(d[0..4].try_into().unwrap()) as usize,
            d.len()
        );
        assert_eq!(*d.last().unwrap(), 0);
    }
}
