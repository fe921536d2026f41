//! A private standalone ZooKeeper (Debian's `zookeeper` package) run as a
//! plain `java` process: a generated `zoo.cfg` in a temp dir, the client port
//! on 127.0.0.1 and a free port, the admin web server off. Ready once the
//! server answers `srvr` on the client port with its serving mode.
//!
//! ```no_run
//! let mut zk = testkit::servers::zookeeper::ZooKeeper::start();
//! let hosts = zk.hosts(); // "127.0.0.1:PORT"
//! zk.stop();
//! zk.restart(); // same data, same port
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{
    free_port, private_dir, require_program, server_log, tcp_answer_contains, ServerProcess,
};

/// Where Debian's `zookeeper` package puts the server jar (its manifest
/// class path pulls in the other jars).
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// How long the server may take to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running private ZooKeeper.
pub struct ZooKeeper {
    server: ServerProcess,
    /// The client port on 127.0.0.1.
    pub port: u16,
    java: PathBuf,
}

impl ZooKeeper {
    /// Starts a fresh server and waits until it serves. Panics (with the
    /// install command) when Java or ZooKeeper is not installed.
    pub fn start() -> ZooKeeper {
        let java = require_program("java", "default-jre-headless");
        require_program(ZOOKEEPER_JAR, "zookeeper");
        let dir = private_dir("imperium-zookeeper.");
        std::fs::create_dir(dir.path().join("data")).expect("create data dir");
        let port = free_port();
        let cfg = format!(
            "tickTime=500\n\
             maxSessionTimeout=60000\n\
             dataDir={data}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,stat\n\
             forceSync=no\n",
            data = dir.path().join("data").display(),
        );
        std::fs::write(dir.path().join("zoo.cfg"), cfg).expect("write zoo.cfg");
        let child = spawn(&java, dir.path());
        let zk = ZooKeeper {
            server: ServerProcess::new("zookeeper", dir, child),
            port,
            java,
        };
        zk.wait_ready();
        zk
    }

    /// The host list for a client: `127.0.0.1:PORT`.
    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM, by pid); data and port are kept.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the server again on the same data directory and port, and
    /// waits until it serves.
    pub fn restart(&mut self) {
        self.server.stop_until_closed(self.port);
        let child = spawn(&self.java, self.server.dir.path());
        self.server.set_child(child);
        self.wait_ready();
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    fn wait_ready(&self) {
        self.server
            .wait_ready(self.port, READY_TIMEOUT, "did not serve", serving);
    }
}

fn spawn(java: &PathBuf, dir: &std::path::Path) -> Child {
    let log = server_log(dir);
    // small heap, serial GC and C1 only: starts in about 0.3 s
    Command::new(java)
        .args([
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp",
            ZOOKEEPER_JAR,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
        ])
        .arg(dir.join("zoo.cfg"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn java (zookeeper)")
}

/// True when the server answers `srvr` with a serving mode.
fn serving(port: u16) -> bool {
    tcp_answer_contains(port, b"srvr", Duration::from_secs(1), "Mode: standalone")
}
