//! A private RabbitMQ node (Debian's rabbitmq-server) for tests.
//!
//! Each node has its own node name, AMQP port, distribution port and a
//! private epmd on its own port (started by the fixture, so nothing touches
//! the system's :4369), its own mnesia/log dirs and `HOME` (so its own
//! `.erlang.cookie`). No plugins. It listens on 127.0.0.1 only and is ready
//! when a real AMQP handshake gets the broker's `Connection.Start`.
//!
//! Starting a node takes 5 to 6 s: share one per test binary with
//! [`RabbitMq::shared`] where the tests do not stop the broker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{free_port, require_program, server_log, tcp_open, wait_until, ServerProcess};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// A running private RabbitMQ node. Dropping it stops the node and its
/// epmd and removes its directory.
pub struct RabbitMq {
    // field order: the broker stops before its epmd
    server: ServerProcess,
    epmd: ServerProcess,
    /// The AMQP port on 127.0.0.1.
    pub port: u16,
    /// The Erlang node name (`rmqPORT@localhost`).
    pub node: String,
    epmd_port: u16,
    dist_port: u16,
}

impl RabbitMq {
    /// Starts a node and waits (up to 60 s) until it answers the AMQP
    /// protocol header. Panics with the install command when
    /// rabbitmq-server is missing, and with the log tail when it fails.
    pub fn start() -> RabbitMq {
        require_program(SERVER, "rabbitmq-server");
        let epmd_bin = require_program("epmd", "erlang-base");
        let dir = tempfile::Builder::new()
            .prefix("imperium-rabbitmq.")
            .tempdir()
            .expect("create the rabbitmq temp dir");
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create rabbitmq dirs");
        }
        let port = free_port();
        let dist_port = free_port();
        let epmd_port = free_port();
        let node = format!("rmq{port}@localhost");
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{port}\n\
                 loopback_users.guest = true\n\
                 log.console = false\n\
                 log.file.level = info\n"
            ),
        )
        .unwrap();

        // a private epmd, in the foreground so it is our child and dies by pid
        let epmd_log = std::fs::File::create(dir.path().join("epmd.log")).unwrap();
        let epmd_child = Command::new(&epmd_bin)
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(epmd_log.try_clone().unwrap())
            .stderr(epmd_log)
            .spawn()
            .expect("start epmd");
        let epmd_dir = tempfile::Builder::new()
            .prefix("imperium-epmd.")
            .tempdir()
            .unwrap();
        let epmd = ServerProcess::new("epmd", epmd_dir, epmd_child);
        assert!(
            wait_until(Duration::from_secs(10), || tcp_open(epmd_port)),
            "epmd did not listen on 127.0.0.1:{epmd_port}"
        );

        let child = spawn_node(dir.path(), &node, port, dist_port, epmd_port);
        let mq = RabbitMq {
            server: ServerProcess::new("rabbitmq", dir, child),
            epmd,
            port,
            node,
            epmd_port,
            dist_port,
        };
        mq.wait_ready(Instant::now());
        mq
    }

    /// One node shared by every test of this test binary, started on first
    /// use. It is stopped (and its directory removed) when the test binary
    /// exits, by a watchdog process that waits for the end of its stdin.
    pub fn shared() -> &'static RabbitMq {
        // the watchdog keeps its stdin pipe open until this process exits
        static SHARED: OnceLock<(RabbitMq, Mutex<Child>)> = OnceLock::new();
        let (mq, _) = SHARED.get_or_init(|| {
            let mq = RabbitMq::start();
            let guard = exit_watchdog(&mq);
            (mq, Mutex::new(guard))
        });
        mq
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2F` (vhost `/`, spelled so that
    /// any AMQP URI parser agrees).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2F", self.port)
    }

    /// Creates virtual host `vhost` (letters, digits, `-`, `_`), lets guest
    /// use it, and returns its URL `amqp://guest:guest@127.0.0.1:PORT/VHOST`.
    /// Each vhost has its own `uwsgi.emperor` exchange, so tests that share
    /// one node do not see each other's messages. Takes a couple of seconds
    /// (two rabbitmqctl runs).
    pub fn add_vhost(&self, vhost: &str) -> String {
        assert!(
            !vhost.is_empty()
                && vhost
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "vhost {vhost:?}: use letters, digits, '-' and '_'"
        );
        self.ctl(&["add_vhost", vhost]);
        self.ctl(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]);
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port)
    }

    /// The broker's pid (beam.smp), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// The node's private directory.
    pub fn dir(&self) -> PathBuf {
        self.server.dir.path().to_path_buf()
    }

    /// Kills the broker with SIGKILL (a crash: no goodbye to the clients)
    /// and waits for it to be gone. The data dir and ports are kept.
    pub fn kill(&mut self) {
        self.server.stop_signal = libc::SIGKILL;
        self.server.stop();
        self.server.stop_signal = libc::SIGTERM;
        assert!(
            wait_until(Duration::from_secs(10), || !tcp_open(self.port)),
            "port {} still open after killing rabbitmq",
            self.port
        );
    }

    /// Starts the broker again on the same node name, port and data dir.
    pub fn restart(&mut self) {
        self.server.stop();
        self.boot();
    }

    /// Runs `rabbitmqctl -n NODE ARGS...` against this node and returns its
    /// stdout (panics with stderr when it fails). Slow (an Erlang VM boots
    /// for each call): for diagnostics and a few assertions only.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(CTL)
            .args(["-n", &self.node])
            .args(args)
            .envs(node_env(
                self.server.dir.path(),
                &self.node,
                self.port,
                self.dist_port,
                self.epmd_port,
            ))
            .stdin(Stdio::null())
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn boot(&mut self) {
        let t0 = Instant::now();
        let child = spawn_node(
            self.server.dir.path(),
            &self.node,
            self.port,
            self.dist_port,
            self.epmd_port,
        );
        self.server.set_child(child);
        self.wait_ready(t0);
    }

    fn wait_ready(&self, t0: Instant) {
        let port = self.port;
        if !wait_until(Duration::from_secs(60), || amqp_answers(port)) {
            let tail = self.server.log_tail("server.log", 40);
            let log_dir = self.server.path("log");
            panic!(
                "rabbitmq did not answer AMQP on 127.0.0.1:{port} within 60 s\n{tail}\n(logs in {})",
                log_dir.display()
            );
        }
        eprintln!(
            "rabbitmq {} ready on 127.0.0.1:{} in {} ms",
            self.node,
            self.port,
            t0.elapsed().as_millis()
        );
    }
}

/// True when the broker answers the AMQP 0-9-1 protocol header with a
/// `Connection.Start` method frame (a real client request).
pub fn amqp_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    // frame header (type 1 = method, channel 0, size) + class 10 method 10
    let mut buf = [0u8; 11];
    if s.read_exact(&mut buf).is_err() {
        return false;
    }
    buf[0] == 1 && buf[1..3] == [0, 0] && buf[7..11] == [0, 10, 0, 10]
}

/// The environment that gives a node its private names, ports and dirs.
fn node_env(
    dir: &Path,
    node: &str,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
) -> Vec<(String, String)> {
    let d = |rel: &str| dir.join(rel).display().to_string();
    vec![
        ("HOME".into(), dir.display().to_string()),
        ("RABBITMQ_CONF_ENV_FILE".into(), d("rabbitmq-env.conf")),
        ("RABBITMQ_NODENAME".into(), node.to_string()),
        ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
        ("RABBITMQ_NODE_PORT".into(), port.to_string()),
        ("RABBITMQ_DIST_PORT".into(), dist_port.to_string()),
        ("ERL_EPMD_PORT".into(), epmd_port.to_string()),
        ("ERL_EPMD_ADDRESS".into(), "127.0.0.1".into()),
        ("RABBITMQ_MNESIA_BASE".into(), d("mnesia")),
        ("RABBITMQ_LOG_BASE".into(), d("log")),
        ("RABBITMQ_PID_FILE".into(), d("rabbit.pid")),
        ("RABBITMQ_CONFIG_FILE".into(), d("rabbitmq.conf")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), d("enabled_plugins")),
        ("RABBITMQ_ADVANCED_CONFIG_FILE".into(), d("advanced.config")),
        ("RABBITMQ_PLUGINS_EXPAND_DIR".into(), d("plugins-expand")),
        ("RABBITMQ_FEATURE_FLAGS_FILE".into(), d("feature_flags")),
        (
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(),
            "-kernel inet_dist_use_interface {127,0,0,1}".into(),
        ),
    ]
}

/// Starts the node; the output goes to DIR/server.log.
fn spawn_node(dir: &Path, node: &str, port: u16, dist_port: u16, epmd_port: u16) -> Child {
    let log = server_log(dir);
    // RUNNING_UNDER_SYSTEMD only makes the script `exec erl`, so the child
    // is beam.smp itself and can be stopped by its pid
    Command::new(SERVER)
        .current_dir(dir)
        .envs(node_env(dir, node, port, dist_port, epmd_port))
        .env("RUNNING_UNDER_SYSTEMD", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup server.log"))
        .stderr(log)
        .spawn()
        .expect("start rabbitmq-server")
}

/// Starts `sh` that waits for the end of its stdin, then kills the node and
/// epmd by pid and removes the directories. The returned child (with its
/// stdin pipe) must be kept for as long as the node should live: the pipe
/// closes when the test binary exits, however it exits.
fn exit_watchdog(mq: &RabbitMq) -> Child {
    let pids: Vec<String> = [mq.server.pid(), mq.epmd.pid()]
        .into_iter()
        .flatten()
        .map(|p| p.to_string())
        .collect();
    let script = format!(
        "cat >/dev/null; kill -TERM {pids} 2>/dev/null; \
         for i in $(seq 100); do kill -0 {pids} 2>/dev/null || break; sleep 0.1; done; \
         kill -KILL {pids} 2>/dev/null; rm -rf '{dir}' '{edir}'",
        pids = pids.join(" "),
        dir = mq.server.dir.path().display(),
        edir = mq.epmd.dir.path().display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the rabbitmq exit watchdog")
}
