//! Real uWSGI vassals for tests: a tiny WSGI app on a loopback http-socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::servers::{free_port, require_program};

/// The uwsgi binary (Debian's uwsgi-core), or a panic naming the install
/// command. Also checks that the python3 plugin is installed.
pub fn uwsgi_bin() -> PathBuf {
    let p = require_program("uwsgi", "uwsgi-core");
    assert!(
        Path::new("/usr/lib/uwsgi/plugins/python3_plugin.so").exists(),
        "uWSGI's python3 plugin is not installed (Debian package uwsgi-plugin-python3); install the test dependencies with `{}`",
        crate::servers::INSTALL_HINT
    );
    p
}

/// The WSGI app: answers `pid=<worker pid> marker=<MARKER env or ->`.
pub const APP: &str = r#"import os
def application(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('pid=%d marker=%s' % (os.getpid(), os.environ.get('MARKER', '-'))).encode()]
"#;

/// The same app, but each request takes 0.3 s (keeps workers busy, so a
/// vassal under load asks for broodlord zergs).
pub const SLOW_APP: &str = r#"import os, time
def application(environ, start_response):
    time.sleep(0.3)
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('pid=%d marker=%s' % (os.getpid(), os.environ.get('MARKER', '-'))).encode()]
"#;

/// Writes slow.py ([`SLOW_APP`]) into `dir` and returns its path.
pub fn write_slow_app(dir: &Path) -> PathBuf {
    let p = dir.join("slow.py");
    std::fs::write(&p, SLOW_APP).expect("write slow.py");
    p
}

/// Writes app.py into `dir` (once) and returns its path.
pub fn write_app(dir: &Path) -> PathBuf {
    let p = dir.join("app.py");
    if !p.exists() {
        std::fs::write(&p, APP).expect("write app.py");
    }
    p
}

/// A vassal ini for the app on a free loopback port; returns (text, port).
/// `marker` is visible in every response, so a test can see which config a
/// worker was started with.
pub fn vassal_ini(app: &Path, marker: &str) -> (String, u16) {
    let port = free_port();
    (vassal_ini_on(app, marker, port), port)
}

/// Like [`vassal_ini`] on a given port.
pub fn vassal_ini_on(app: &Path, marker: &str, port: u16) -> String {
    format!(
        "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 2\nhttp-socket = 127.0.0.1:{port}\nwsgi-file = {}\nenv = MARKER={marker}\ndie-on-term = true\nvacuum = true\nworker-reload-mercy = 5\nreload-mercy = 5\n",
        app.display()
    )
}

/// A vassal that takes its socket from fd 0 (an on-demand socket: it has
/// none of its own), answers with `marker`, and exits after `idle` seconds
/// without requests.
pub fn on_demand_ini(app: &Path, marker: &str, idle: u32) -> String {
    format!(
        "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 1\nprotocol = http\nwsgi-file = {}\nenv = MARKER={marker}\nidle = {idle}\ndie-on-idle = true\ndie-on-term = true\nworker-reload-mercy = 5\nreload-mercy = 5\n",
        app.display()
    )
}

/// The uWSGI master of a worker that answered (its parent).
pub fn master_of(worker: u32) -> u32 {
    crate::procs::ppid(worker).expect("worker has a parent")
}

/// GET `path` from 127.0.0.1:`port`; the body, or `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

/// Parses `pid=N marker=M` from a response body.
pub fn parse_answer(body: &str) -> Option<(u32, String)> {
    let mut pid = None;
    let mut marker = None;
    for part in body.split_whitespace() {
        if let Some(p) = part.strip_prefix("pid=") {
            pid = p.parse().ok();
        } else if let Some(m) = part.strip_prefix("marker=") {
            marker = Some(m.to_string());
        }
    }
    Some((pid?, marker?))
}

/// Waits until the app on `port` answers with `marker`; returns the worker
/// pid that answered.
pub fn wait_answer(port: u16, marker: &str, timeout: Duration) -> Option<u32> {
    let mut got = None;
    crate::servers::wait_until(timeout, || {
        got = http_get(port, "/")
            .and_then(|b| parse_answer(&b))
            .filter(|(_, m)| m == marker)
            .map(|(p, _)| p);
        got.is_some()
    });
    got
}

/// A temporary directory with a `vassals/` directory and one app file, for
/// tests of real uWSGI vassals.
pub struct AppTree {
    /// The directory (removed when dropped).
    pub tmp: tempfile::TempDir,
    /// `tmp/vassals`, the directory the emperor watches.
    pub vassals: PathBuf,
    /// `tmp/<file>`, the app.
    pub app: PathBuf,
}

impl AppTree {
    /// Writes `text` as `tmp/<file>` and makes `tmp/vassals`.
    pub fn new(file: &str, text: &str) -> AppTree {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let vassals = tmp.path().join("vassals");
        std::fs::create_dir(&vassals).expect("make vassals/");
        let app = tmp.path().join(file);
        std::fs::write(&app, text).expect("write the app");
        AppTree { tmp, vassals, app }
    }

    /// With the app of [`write_app`] as `tmp/app.py`.
    pub fn with_app() -> AppTree {
        AppTree::new("app.py", APP)
    }

    /// `tmp/ctl.sock`, for `--emperor-control-socket`.
    pub fn ctl_sock(&self) -> PathBuf {
        self.tmp.path().join("ctl.sock")
    }

    /// `imperium ctl show NAME` on [`AppTree::ctl_sock`], as JSON.
    pub fn show(&self, name: &str) -> serde_json::Value {
        let out = crate::ctl_ok(&self.ctl_sock(), &["--json", "show", name]);
        serde_json::from_str::<serde_json::Value>(&out).expect("ctl show JSON")["data"].clone()
    }
}

/// Clients sending requests to `port` until stopped, counting failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts one client thread.
    pub fn start(port: u16) -> Load {
        Self::start_in(port, None)
    }

    /// Starts one client thread in the network namespace of process
    /// `netns` (its own when `None`).
    pub fn start_in(port: u16, netns: Option<u32>) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            if let Some(pid) = netns {
                enter_netns_of(pid);
            }
            while !s.load(Ordering::Relaxed) {
                match http_get(port, "/") {
                    Some(_) => o.fetch_add(1, Ordering::Relaxed),
                    None => f.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops the clients: (answered, failed).
    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Moves the calling thread into the network namespace of process `pid`.
pub fn enter_netns_of(pid: u32) {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open the netns");
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a thread inside the network namespace of process `netns`
/// (on this thread when `None`).
pub fn in_netns<T: Send>(netns: Option<u32>, f: impl FnOnce() -> T + Send) -> T {
    match netns {
        None => f(),
        Some(pid) => std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns_of(pid);
                f()
            })
            .join()
            .expect("the thread in the netns panicked")
        }),
    }
}

/// The wrapper (for [`crate::Imperium::start_wrapped`]) that runs the
/// emperor in a network namespace of its own, with `lo` up and
/// `net.ipv4.tcp_migrate_req = 1` (a closing SO_REUSEPORT listener hands its
/// queued connections to another one of its group).
pub const NETNS_MIGRATE_REQ: &[&str] = &[
    "unshare",
    "-n",
    "sh",
    "-c",
    "ip link set lo up && echo 1 > /proc/sys/net/ipv4/tcp_migrate_req && exec \"$@\"",
    "sh",
];
