//! Real uWSGI vassals for tests: a tiny WSGI app on a loopback http-socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
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
}
