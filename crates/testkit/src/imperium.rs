//! Running `imperium` (and the test vassal) from tests.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The cargo target directory the running test binary lives in
/// (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/test-xxxx -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .to_path_buf()
}

static BUILD: Once = Once::new();

/// Path of a binary of this workspace, built on first use if missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    if !p.exists() {
        BUILD.call_once(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "--bins", "--workspace"])
                .status()
                .expect("run cargo build");
            assert!(st.success(), "cargo build --bins failed");
        });
    }
    assert!(p.exists(), "{} not found after building", p.display());
    p
}

/// The `imperium` binary.
pub fn imperium_bin() -> PathBuf {
    workspace_bin("imperium")
}

/// The test vassal binary (speaks the emperor protocol, see its docs).
pub fn test_vassal_bin() -> PathBuf {
    workspace_bin("imperium-test-vassal")
}

/// A running imperium process whose log (stderr) goes to a file.
pub struct Imperium {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Imperium {
    /// Starts `imperium ARGS...` in `cwd` with logs at debug level.
    pub fn start<I, S>(cwd: &Path, args: I) -> Imperium
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_with_env(cwd, args, &[])
    }

    /// Like [`Imperium::start`], with extra environment variables.
    pub fn start_with_env<I, S>(cwd: &Path, args: I, env: &[(&str, &str)]) -> Imperium
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_wrapped(&[], cwd, args, env)
    }

    /// Like [`Imperium::start_with_env`], run through a wrapper command that
    /// execs it (for example `["prlimit", "--nofile=1024:8192", "--"]`).
    pub fn start_wrapped<I, S>(
        wrapper: &[&str],
        cwd: &Path,
        args: I,
        env: &[(&str, &str)],
    ) -> Imperium
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("imperium.log");
        let f = File::create(&log).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(imperium_bin());
                c
            }
            None => Command::new(imperium_bin()),
        };
        cmd.args(args)
            .current_dir(cwd)
            .env(
                "IMPERIUM_LOG",
                std::env::var("IMPERIUM_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start imperium");
        Imperium {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    /// The emperor's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `needle` has been logged at least `n` times; panics with
    /// the log when it does not happen within `timeout`.
    pub fn wait_log_n(&self, needle: &str, n: usize, timeout: Duration) {
        let ok = crate::servers::wait_until(timeout, || self.count(needle) >= n);
        assert!(
            ok,
            "timed out waiting for {n}x {needle:?} in the imperium log:\n{}",
            self.log()
        );
    }

    /// Waits until `needle` has been logged once.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        self.wait_log_n(needle, 1, timeout)
    }

    /// Sends a signal to the emperor.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("signal imperium");
    }

    /// Waits for the emperor to exit (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            if Instant::now() >= deadline {
                panic!("imperium did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(40))
    }
}

impl Drop for Imperium {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Lines of a test vassal's record file.
pub fn record_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The pids of the `start` lines of a record file, in order.
pub fn record_starts(path: &Path) -> Vec<u32> {
    record_lines(path)
        .iter()
        .filter_map(|l| l.strip_prefix("start pid="))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

/// A directory of test-vassal configs for an emperor to watch: `vassals/`
/// inside a temporary directory, each vassal recording its events to
/// `<name>.rec` beside it.
pub struct VassalDir {
    /// The temporary directory (the emperor's working directory in tests).
    pub tmp: tempfile::TempDir,
    /// The directory the emperor watches.
    pub vassals: PathBuf,
}

impl VassalDir {
    /// A new, empty one.
    pub fn new() -> VassalDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let vassals = tmp.path().join("vassals");
        std::fs::create_dir(&vassals).expect("create the vassal directory");
        VassalDir { tmp, vassals }
    }

    /// `name` inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Where vassal `name` records its events.
    pub fn rec(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.rec"))
    }

    /// Writes vassal `file` with the `[vassal]` keys `extra`, recording to
    /// `<file>.rec`.
    pub fn write(&self, file: &str, extra: &str) -> PathBuf {
        let p = self.vassals.join(file);
        std::fs::write(
            &p,
            format!("[vassal]\nrecord = {}\n{extra}\n", self.rec(file).display()),
        )
        .expect("write the vassal config");
        p
    }
}

impl Default for VassalDir {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `imperium ctl --socket SOCK ARGS...`.
pub fn ctl(sock: &Path, args: &[&str]) -> std::process::Output {
    Command::new(imperium_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .expect("run imperium ctl")
}

/// Like [`ctl`], asserting success; returns its stdout.
pub fn ctl_ok(sock: &Path, args: &[&str]) -> String {
    let o = ctl(sock, args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "imperium ctl {args:?} failed: {}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The arguments of an emperor watching `vassals` with real uWSGI vassals
/// (`--binary-path` uWSGI, `--reload-mercy 10`), then `extra`.
pub fn uwsgi_emperor_args(vassals: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--emperor".into(),
        vassals.as_os_str().into(),
        "--binary-path".into(),
        crate::uwsgi::uwsgi_bin().into_os_string(),
        "--reload-mercy".into(),
        "10".into(),
    ];
    args.extend(extra.iter().map(|a| a.into()));
    args
}
