//! Health checks and readiness with real uWSGI vassals (docs/health.md):
//! an app whose /health answers 503 while a file exists (or during a
//! warm-up after it loaded), probed over HTTP by the emperor.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::servers::{free_port, wait_until};
use testkit::uwsgi::{http_get, parse_answer, uwsgi_bin, wait_answer};
use testkit::{ctl, ctl_ok, Imperium};

const T: Duration = Duration::from_secs(30);

/// The app: `/health` answers 503 while the file `$SICK` exists or during
/// the first `$WARMUP` seconds after it was loaded, 200 otherwise; every
/// other path answers `pid=<worker pid> marker=<MARKER>`.
const HEALTH_APP: &str = r#"import os, time
LOADED = time.time()
def application(environ, start_response):
    if environ['PATH_INFO'] == '/health':
        warm = time.time() - LOADED < float(os.environ.get('WARMUP', '0'))
        if warm or os.path.exists(os.environ['SICK']):
            start_response('503 Service Unavailable', [('Content-Type', 'text/plain')])
            return [b'sick']
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'ok']
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('pid=%d marker=%s' % (os.getpid(), os.environ.get('MARKER', '-'))).encode()]
"#;

/// The tree of [`testkit::uwsgi::AppTree`] with the health app.
struct Setup(testkit::uwsgi::AppTree);

impl std::ops::Deref for Setup {
    type Target = testkit::uwsgi::AppTree;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn setup() -> Setup {
    Setup(testkit::uwsgi::AppTree::new("health_app.py", HEALTH_APP))
}

impl Setup {
    fn sick(&self) -> PathBuf {
        self.tmp.path().join("sick")
    }

    /// Writes vassal `name` on `port`, with `extra` appended (an
    /// `[imperium]` section).
    fn vassal(&self, name: &str, port: u16, warmup: u32, extra: &str) {
        let ini = format!(
            "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 1\nhttp-socket = 127.0.0.1:{port}\nwsgi-file = {}\nenv = MARKER={name}\nenv = SICK={}\nenv = WARMUP={warmup}\ndie-on-term = true\nreload-mercy = 5\nworker-reload-mercy = 5\n{extra}",
            self.app.display(),
            self.sick().display()
        );
        std::fs::write(self.vassals.join(name), ini).unwrap();
    }

    fn start(&self, extra: &[&str]) -> Imperium {
        let mut args = testkit::uwsgi_emperor_args(&self.vassals, &[]);
        args.push("--emperor-control-socket".into());
        args.push(self.ctl_sock().into());
        args.extend(extra.iter().map(Into::into));
        Imperium::start(self.tmp.path(), args)
    }
}

fn sock_exists(p: &Path) -> bool {
    wait_until(T, || p.exists())
}

/// The master pid of the vassal answering on `port`.
fn master_on(port: u16) -> Option<u32> {
    let (worker, _) = parse_answer(&http_get(port, "/")?)?;
    testkit::procs::ppid(worker)
}

#[test]
fn a_vassal_whose_health_check_starts_failing_is_restarted_and_serves_again() {
    uwsgi_bin();
    let s = setup();
    let port = free_port();
    s.vassal(
        "app.ini",
        port,
        0,
        &format!("\n[imperium]\nhealth = http://127.0.0.1:{port}/health\nhealth-interval = 300ms\nhealth-failures = 2\nhealth-grace = 1s\n"),
    );
    let mut emp = s.start(&[]);
    assert!(sock_exists(&s.ctl_sock()));
    ctl_ok(&s.ctl_sock(), &["wait", "app.ini", "--timeout", "30"]);
    let first = master_on(port).expect("the app answers once it serves");
    let shown = s.show("app.ini");
    assert_eq!(shown["health"]["state"], "passing", "{shown:#}");
    assert_eq!(shown["serving"], true, "{shown:#}");
    emp.wait_log("[emperor] vassal app.ini is healthy", T);

    // the app stays up but its health endpoint fails: after two failed
    // probes in a row the vassal is killed and respawned
    std::fs::write(s.sick(), "").unwrap();
    emp.wait_log("vassal app.ini failed its health check 2 times in a row", T);
    emp.wait_log("health check of vassal app.ini failed (1 of 2 in a row)", T);
    std::fs::remove_file(s.sick()).unwrap();
    ctl_ok(&s.ctl_sock(), &["wait", "app.ini", "--timeout", "30"]);
    let second = master_on(port).expect("the respawned app answers");
    assert_ne!(first, second, "the vassal was not restarted");
    let shown = s.show("app.ini");
    assert_eq!(shown["restarts"], 1, "{shown:#}");
    assert_eq!(shown["last_exit"]["signal"], 9, "{shown:#}");
    let list = ctl_ok(&s.ctl_sock(), &["list"]);
    assert!(list.contains("passing"), "{list}");
    emp.stop();
}

#[test]
fn ctl_wait_returns_only_once_the_app_passes_its_check() {
    uwsgi_bin();
    let s = setup();
    let port = free_port();
    // /health fails for 3 s after the app loaded, though uWSGI says it
    // accepts requests (byte 5) long before; the emperor-wide check finds
    // the port in the vassal's name ({stem}: the name without .ini)
    let warm = format!("{port}.ini");
    let warm = warm.as_str();
    s.vassal(warm, port, 3, "");
    let mut emp = s.start(&[
        "--vassal-health",
        "http://127.0.0.1:{stem}/health",
        "--vassal-health-interval",
        "200ms",
        "--vassal-health-grace",
        "30s",
    ]);
    assert!(sock_exists(&s.ctl_sock()));
    // not in the table yet, or not serving: a short wait times out
    let o = ctl(
        &s.ctl_sock(),
        &["wait", warm, "nope.ini", "--timeout", "0.5"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope.ini: not in the table"), "{err}");
    emp.wait_log(&format!("vassal {warm} is ready to accept requests"), T);
    let accepting = Instant::now();
    ctl_ok(&s.ctl_sock(), &["wait", warm, "--timeout", "30"]);
    // it returned when the app answers its health endpoint, not at byte 5
    assert_eq!(http_get(port, "/health").as_deref(), Some("ok"));
    assert!(
        accepting.elapsed() > Duration::from_millis(1500),
        "ctl wait returned {:?} after byte 5, before the warm-up ended",
        accepting.elapsed()
    );
    wait_answer(port, warm, T).expect("the app answers");
    // within its grace period the failures did not restart it
    let shown = s.show(warm);
    assert_eq!(shown["restarts"], 0, "{shown:#}");
    assert_eq!(
        shown["health"]["check"],
        format!("http://127.0.0.1:{port}/health"),
        "{shown:#}"
    );
    assert_eq!(emp.count("failed its health check"), 0, "{}", emp.log());
    emp.stop();
}

#[test]
fn a_bad_health_check_is_refused_clearly_and_other_vassals_run() {
    let s = setup();
    let port = free_port();
    // an [imperium] key with a bad value: this vassal does not start
    s.vassal(
        "bad.ini",
        free_port(),
        0,
        "\n[imperium]\nhealth = http://127.0.0.1/health\n",
    );
    s.vassal("good.ini", port, 0, "");
    let mut emp = s.start(&[]);
    wait_answer(port, "good.ini", T).expect("the good vassal answers");
    emp.wait_log(
        "cannot start vassal bad.ini: its config: [imperium] health = http://127.0.0.1/health: \"http://127.0.0.1/health\": no :PORT",
        T,
    );
    emp.stop();
    // and a bad emperor-wide check stops the emperor before it starts
    let o = std::process::Command::new(testkit::imperium_bin())
        .args(["--emperor", "/nonexistent", "--vassal-health", "ftp://x:1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--vassal-health") && err.contains("is not a health check"),
        "{err}"
    );
}

#[test]
fn ready_wait_holds_ready_until_the_initial_vassals_serve() {
    uwsgi_bin();
    let s = setup();
    let (a, b) = (free_port(), free_port());
    s.vassal("a.ini", a, 0, "");
    // b's /health fails for its first 2 s
    s.vassal(
        "b.ini",
        b,
        2,
        &format!("\n[imperium]\nhealth = http://127.0.0.1:{b}/health\nhealth-interval = 200ms\n"),
    );
    let nsock = s.tmp.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&nsock).unwrap();
    rx.set_read_timeout(Some(T)).unwrap();
    let mut args = testkit::uwsgi_emperor_args(&s.vassals, &["--emperor-ready-wait"]);
    args.push("--emperor-control-socket".into());
    args.push(s.ctl_sock().into());
    let mut emp = Imperium::start_with_env(
        s.tmp.path(),
        args,
        &[("NOTIFY_SOCKET", nsock.to_str().unwrap())],
    );
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).expect("READY=1 within the timeout");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("READY=1\n"), "{msg}");
    // when systemd hears READY=1, both apps answer and b passed its check
    assert_eq!(http_get(b, "/health").as_deref(), Some("ok"));
    assert!(http_get(a, "/").is_some(), "a does not answer");
    assert_eq!(
        emp.count("[emperor] vassal b.ini is healthy"),
        1,
        "{}",
        emp.log()
    );
    emp.wait_log(
        "vassal(s) of the initial scan to serve before telling systemd READY=1 (--emperor-ready-wait)",
        T,
    );
    emp.wait_log("every vassal of the initial scan serves", T);
    emp.stop();
}
