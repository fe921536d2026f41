//! Starting an emperor (imperium or `uwsgi --emperor`), reading what it
//! logs, and stopping it.
//!
//! Both emperors log the same uWSGI wording for the events measured here,
//! so one parser serves both; each line is timestamped when the harness
//! reads it from the emperor's stderr.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procfs;

/// The emperors compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// Plain fork/exec of the vassals by the harness: the floor.
    Floor,
    /// imperium (release build), default settings.
    Imperium,
    /// `uwsgi --emperor`, with `--emperor-freq` when `Some`.
    Uwsgi(Option<u64>),
}

impl Contender {
    /// The column title.
    pub fn label(self) -> String {
        match self {
            Contender::Floor => "fork/exec floor".into(),
            Contender::Imperium => "imperium".into(),
            Contender::Uwsgi(None) => "uWSGI (freq 3)".into(),
            Contender::Uwsgi(Some(f)) => format!("uWSGI (freq {f})"),
        }
    }
}

/// What an emperor log line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Byte 1 received: "vassal X has been spawned".
    Ready,
    /// Byte 5 received: "vassal X is ready to accept requests".
    Accepting,
    /// Byte 1 sent: "reload the uwsgi instance X".
    Reload,
    /// Reaped and forgotten: "removed uwsgi instance X".
    Removed,
}

/// One parsed log line.
#[derive(Debug, Clone)]
pub struct Ev {
    pub at: Instant,
    pub kind: Kind,
    pub name: String,
}

/// Parses one emperor log line (either emperor's format).
pub fn parse_line(line: &str) -> Option<(Kind, String)> {
    let (_, rest) = line.split_once("[emperor] ")?;
    let first_word = |s: &str| s.split_whitespace().next().map(str::to_string);
    if let Some(r) = rest.strip_prefix("vassal ") {
        if let Some((name, _)) = r.split_once(" is ready to accept requests") {
            return Some((Kind::Accepting, name.to_string()));
        }
        if let Some((name, _)) = r.split_once(" has been spawned") {
            return Some((Kind::Ready, name.to_string()));
        }
        return None;
    }
    if let Some(r) = rest.strip_prefix("reload the uwsgi instance ") {
        return Some((Kind::Reload, first_word(r)?));
    }
    if let Some(r) = rest.strip_prefix("removed uwsgi instance ") {
        return Some((Kind::Removed, first_word(r)?));
    }
    None
}

/// The events an emperor logged, in order.
pub struct EventLog {
    rx: mpsc::Receiver<Ev>,
    seen: Vec<Ev>,
}

impl EventLog {
    /// Reads `stderr` on a thread; `echo` copies every line to this file.
    pub fn spawn(stderr: impl std::io::Read + Send + 'static, echo: Option<PathBuf>) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut echo = echo.and_then(|p| std::fs::File::create(p).ok());
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at = Instant::now();
                if let Some(f) = echo.as_mut() {
                    use std::io::Write;
                    let _ = f.write_all(line.as_bytes());
                }
                if let Some((kind, name)) = parse_line(&line) {
                    if tx.send(Ev { at, kind, name }).is_err() {
                        break;
                    }
                }
            }
        });
        EventLog {
            rx,
            seen: Vec::new(),
        }
    }

    fn pull(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(ev) => {
                self.seen.push(ev);
                while let Ok(ev) = self.rx.try_recv() {
                    self.seen.push(ev);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// The first `kind` event for `name` at or after `after`.
    pub fn wait_for(
        &mut self,
        kind: Kind,
        name: &str,
        after: Instant,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut from = 0;
        loop {
            if let Some(ev) = self.seen[from..]
                .iter()
                .find(|e| e.kind == kind && e.at >= after && e.name == name)
            {
                return Some(ev.at);
            }
            from = self.seen.len();
            if !self.pull(deadline) {
                return None;
            }
        }
    }

    /// Waits until `n` distinct names logged `kind` at or after `after`
    /// (names in `exclude` do not count). `Ok(time of the n-th)`, or
    /// `Err(how many were seen)` on timeout.
    pub fn wait_distinct(
        &mut self,
        kind: Kind,
        n: usize,
        after: Instant,
        exclude: &HashSet<String>,
        timeout: Duration,
    ) -> std::result::Result<Instant, usize> {
        let deadline = Instant::now() + timeout;
        let mut names: HashSet<String> = HashSet::new();
        let mut from = 0;
        loop {
            for e in &self.seen[from..] {
                if e.kind == kind && e.at >= after && !exclude.contains(&e.name) {
                    names.insert(e.name.clone());
                    if names.len() >= n {
                        return Ok(e.at);
                    }
                }
            }
            from = self.seen.len();
            if !self.pull(deadline) {
                return Err(names.len());
            }
        }
    }

    /// Forgets the events seen so far (keeps memory flat over long runs).
    pub fn clear(&mut self) {
        while self.rx.try_recv().is_ok() {}
        self.seen.clear();
    }
}

/// A running emperor.
pub struct Running {
    pub child: Child,
    pub pid: u32,
    pub log: EventLog,
    /// The vassal program (to recognise leftovers).
    vassal_bin: PathBuf,
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub imperium: PathBuf,
    pub uwsgi: PathBuf,
    /// Extra options for every imperium run (`--imperium-arg`).
    pub imperium_args: Vec<String>,
}

/// Starts `who` watching `source` (a directory or a monitor URL) in
/// `cwd`, vassals run with `vassal_bin`; `extra` comes first on the
/// command line (uWSGI's `--plugin`). `echo` keeps a copy of the log.
pub fn start(
    who: Contender,
    progs: &Programs,
    source: &std::ffi::OsStr,
    cwd: &Path,
    vassal_bin: &Path,
    extra: &[&str],
    echo: Option<PathBuf>,
) -> Result<Running> {
    let mut cmd = match who {
        Contender::Floor => bail!("the floor has no emperor"),
        Contender::Imperium => {
            let mut c = Command::new(&progs.imperium);
            if std::env::var_os("IMPERIUM_LOG").is_none() {
                c.env("IMPERIUM_LOG", "info");
            }
            c.args(&progs.imperium_args);
            c
        }
        Contender::Uwsgi(freq) => {
            let mut c = Command::new(&progs.uwsgi);
            if let Some(f) = freq {
                c.arg("--emperor-freq").arg(f.to_string());
            }
            c
        }
    };
    cmd.args(extra)
        .arg("--emperor")
        .arg(source)
        .arg("--binary-path")
        .arg(vassal_bin)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // the emperors must not see the harness's own emperor variables, if any
    cmd.env_remove("UWSGI_EMPEROR_FD")
        .env_remove("UWSGI_EMPEROR_FD_CONFIG");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", who.label()))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let pid = child.id();
    Ok(Running {
        child,
        pid,
        log: EventLog::spawn(stderr, echo),
        vassal_bin: vassal_bin.to_path_buf(),
    })
}

/// Sends `sig` to `pid`, never to a pid ≤ 0.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 0 {
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
}

impl Running {
    /// The vassal processes now (direct children).
    pub fn vassals(&self) -> Vec<u32> {
        procfs::children(self.pid)
    }

    /// Ragnarok (SIGINT), then waits for the emperor to exit; SIGKILLs it
    /// and any vassal left after `grace`.
    pub fn stop(mut self, grace: Duration) -> Result<()> {
        let vassals = self.vassals();
        signal(self.pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + grace;
        let mut clean = false;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                clean = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !clean {
            signal(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
        let bin = self.vassal_bin.to_string_lossy().into_owned();
        let mut left = 0;
        for v in vassals {
            if procfs::alive(v) && procfs::cmdline(v).starts_with(&*bin) {
                left += 1;
                signal(v, nix::sys::signal::Signal::SIGKILL);
            }
        }
        if !clean {
            bail!("the emperor did not exit within {grace:?} of SIGINT");
        }
        if left > 0 {
            eprintln!("imperium-bench: {left} vassals outlived their emperor; killed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_emperors_lines() {
        let imp = "2026-11-24T23:40:01.123Z  INFO [emperor] vassal v0001.ini is ready to accept requests vassal=v0001.ini pid=12";
        assert_eq!(
            parse_line(imp),
            Some((Kind::Accepting, "v0001.ini".to_string()))
        );
        let uw = "Tue Nov 24 23:40:01 2026 - [emperor] vassal v0002.ini has been spawned";
        assert_eq!(parse_line(uw), Some((Kind::Ready, "v0002.ini".to_string())));
        assert_eq!(
            parse_line("Tue Nov 24 23:40:01 2026 - [emperor] reload the uwsgi instance a.ini"),
            Some((Kind::Reload, "a.ini".to_string()))
        );
        assert_eq!(
            parse_line("... INFO [emperor] removed uwsgi instance a.ini vassal=a.ini"),
            Some((Kind::Removed, "a.ini".to_string()))
        );
        assert_eq!(parse_line("[emperor] vassal a.ini is now loyal"), None);
        assert_eq!(
            parse_line("*** has_emperor mode detected (fd: 7) ***"),
            None
        );
    }

    #[test]
    fn waits_for_distinct_names() {
        let t0 = Instant::now();
        let text = "[emperor] vassal a.ini has been spawned\n[emperor] vassal a.ini has been spawned\n[emperor] vassal b.ini has been spawned\n";
        let mut log = EventLog::spawn(std::io::Cursor::new(text.as_bytes().to_vec()), None);
        let got = log.wait_distinct(Kind::Ready, 2, t0, &HashSet::new(), Duration::from_secs(5));
        assert!(got.is_ok());
        let none = log.wait_distinct(
            Kind::Ready,
            3,
            t0,
            &HashSet::new(),
            Duration::from_millis(50),
        );
        assert_eq!(none, Err(2));
        assert!(log
            .wait_for(Kind::Ready, "b.ini", t0, Duration::from_millis(10))
            .is_some());
        assert!(log
            .wait_for(Kind::Accepting, "b.ini", t0, Duration::from_millis(10))
            .is_none());
    }
}
