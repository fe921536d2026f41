//! The throwaway start of `--emperor-reload-mode checked` (docs/reloads.md):
//! the vassal binary loads a changed config in a sandbox where it can bind
//! every socket and write every file the running instance uses without
//! touching them, and says whether its app loaded.
//!
//! `imperium __sandbox` (run by the emperor, as root) makes new mount,
//! network, pid, IPC and UTS namespaces; brings `lo` up; lays an overlay
//! (a tmpfs upper layer, thrown away) over every mounted filesystem except
//! /proc, /sys and /dev (bound as they are; /dev/shm is a fresh tmpfs);
//! chroots into it and starts `imperium __sandbox-init`, the pid 1 of the new
//! pid namespace, which starts the vassal binary. The check passes when the
//! vassal's post-app hook ([`APP_LOADED_HOOK`]) writes into a FIFO that
//! init holds; it fails when the vassal exits first (uWSGI's `--need-app`
//! exits 22 for an app that cannot be loaded) or when time runs out. When
//! init ends, the kernel kills every process left in the namespace, so
//! nothing of the check survives it.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// The hidden subcommand that builds the sandbox.
pub const SANDBOX_ARG: &str = "__sandbox";
/// The hidden subcommand of the sandbox's pid 1.
pub const INIT_ARG: &str = "__sandbox-init";
/// The FIFO (inside the sandbox) the vassal writes to once its app loaded.
pub const LOADED_FIFO: &str = "/dev/shm/.imperium-app-loaded";
/// The uWSGI hook that reports a loaded app (`--hook-post-app`). It runs in
/// the master, or in each worker with `lazy-apps`, after the privilege drop:
/// the FIFO is writable by every user.
pub const APP_LOADED_HOOK: &str = "exec:echo loaded > /dev/shm/.imperium-app-loaded";
/// The exit code of a check that ran out of time.
pub const EXIT_TIMEOUT: i32 = 124;
/// The exit code of a sandbox that could not be set up.
pub const EXIT_SETUP: i32 = 125;
/// The largest inline config passed on stdin.
const INLINE_MAX: u64 = 16 << 20;

/// What `imperium __sandbox` is asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxArgs {
    /// How long the vassal may take to load its app.
    pub timeout: Duration,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Write stdin to this path inside the sandbox first (an inline config).
    pub inline: Option<PathBuf>,
    /// Run as this uid and gid (tyrant mode).
    pub owner: Option<(u32, u32)>,
    /// The vassal's program and arguments.
    pub argv: Vec<OsString>,
}

impl SandboxArgs {
    /// The arguments after the subcommand.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "--timeout-ms".into(),
            self.timeout.as_millis().to_string().into(),
            "--cwd".into(),
            self.cwd.clone().into(),
        ];
        if let Some(p) = &self.inline {
            v.push("--inline".into());
            v.push(p.clone().into());
        }
        if let Some((u, g)) = self.owner {
            v.push("--owner".into());
            v.push(format!("{u}:{g}").into());
        }
        v.push("--".into());
        v.extend(self.argv.iter().cloned());
        v
    }

    /// Reads the arguments after the subcommand.
    pub fn parse(args: &[OsString]) -> Result<SandboxArgs, String> {
        let mut a = SandboxArgs {
            timeout: Duration::from_secs(30),
            cwd: PathBuf::from("/"),
            inline: None,
            owner: None,
            argv: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(k) = it.next() {
            if k == "--" {
                a.argv = it.cloned().collect();
                break;
            }
            let v = it
                .next()
                .ok_or_else(|| format!("{} needs a value", k.to_string_lossy()))?;
            let text = v.to_string_lossy();
            match k.to_string_lossy().as_ref() {
                "--timeout-ms" => {
                    let ms = text
                        .parse()
                        .map_err(|_| format!("bad --timeout-ms {text}"))?;
                    a.timeout = Duration::from_millis(ms);
                }
                "--cwd" => a.cwd = PathBuf::from(v),
                "--inline" => a.inline = Some(PathBuf::from(v)),
                "--owner" => {
                    let (u, g) = text
                        .split_once(':')
                        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                        .ok_or_else(|| format!("bad --owner {text} (UID:GID)"))?;
                    a.owner = Some((u, g));
                }
                other => return Err(format!("unknown sandbox option {other}")),
            }
        }
        if a.argv.is_empty() {
            return Err("no program to run (… -- PROGRAM ARGS)".into());
        }
        Ok(a)
    }
}

/// `imperium __sandbox ARGS`: the exit code of the check (0: the app
/// loaded), with what went wrong on stderr.
pub fn run(args: &[OsString]) -> i32 {
    match SandboxArgs::parse(args).and_then(|a| sandboxed(&a)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imperium sandbox: {e}");
            EXIT_SETUP
        }
    }
}

/// The mount points of the calling process, in mount order.
fn mount_points() -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(p))))
        .collect())
}

/// A mountinfo field with its `\NNN` octal escapes decoded.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b
            .get(i + 1..i + 4)
            .filter(|_| b[i] == b'\\')
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// True for what is bound into the sandbox as it is, not overlaid.
fn bound_as_is(p: &Path) -> bool {
    ["/proc", "/sys", "/dev"].iter().any(|d| p.starts_with(d))
}

fn mnt(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, target, fstype, flags, data).map_err(|e| {
        format!(
            "cannot mount {} on {}: {e}",
            fstype.map_or_else(
                || src.map_or("?".into(), |s| s.display().to_string()),
                str::to_string
            ),
            target.display()
        )
    })
}

/// Builds the sandbox, runs the check in it, and returns its exit code.
fn sandboxed(a: &SandboxArgs) -> Result<i32, String> {
    let inline = match &a.inline {
        Some(_) => {
            let mut text = Vec::new();
            std::io::stdin()
                .take(INLINE_MAX)
                .read_to_end(&mut text)
                .map_err(|e| format!("cannot read the inline config: {e}"))?;
            Some(text)
        }
        None => None,
    };
    let points = mount_points()?;
    let root = build_root(points)?;
    if let (Some(path), Some(text)) = (&a.inline, inline) {
        let at = root.join(path.strip_prefix("/").unwrap_or(path));
        if let Some(dir) = at.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&at, text).map_err(|e| format!("cannot write {}: {e}", at.display()))?;
    }
    nix::unistd::chroot(&root).map_err(|e| format!("cannot chroot: {e}"))?;
    run_init(a)
}

/// Makes the namespaces and the sandbox's root: an overlay over each of
/// the `points` (the mounts of the emperor's namespace) but /proc, /sys
/// and /dev, which are bound as they are. Returns the root's path.
fn build_root(points: Vec<PathBuf>) -> Result<PathBuf, String> {
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(|e| format!("cannot make new namespaces (the checked reload mode needs root): {e}"))?;
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    crate::spawn::loopback_up().map_err(|e| format!("cannot bring lo up: {e}"))?;
    // a handle on every layer before the scratch space hides anything
    let mut layers = Vec::new();
    for p in points.into_iter().filter(|p| !bound_as_is(p)) {
        if let Ok(dir) = std::fs::File::open(&p) {
            layers.push((p, dir));
        }
    }
    let scratch = Path::new("/tmp");
    mnt(
        None,
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=700"),
    )?;
    let root = scratch.join("root");
    std::fs::create_dir(&root).map_err(|e| format!("cannot make {}: {e}", root.display()))?;
    for (i, (point, dir)) in layers.iter().enumerate() {
        let target = root.join(point.strip_prefix("/").unwrap_or(point));
        let (upper, work) = (scratch.join(format!("u{i}")), scratch.join(format!("w{i}")));
        for d in [&upper, &work] {
            std::fs::create_dir(d).map_err(|e| format!("cannot make {}: {e}", d.display()))?;
        }
        let lower = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let opts = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        if let Err(e) = mnt(
            None,
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(&opts),
        ) {
            // no overlay over this one: read-only rather than shared
            mnt(
                Some(Path::new(&lower)),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
            mnt(
                None,
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )?;
            eprintln!(
                "imperium sandbox: {} is read-only in the check ({e})",
                point.display()
            );
        }
    }
    drop(layers);
    for d in ["proc", "sys", "dev"] {
        let from = Path::new("/").join(d);
        mnt(
            Some(&from),
            &root.join(d),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    }
    mnt(
        None,
        &root.join("dev/shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    Ok(root)
}

/// In the sandbox: starts its init (the first child after the unshare: the
/// pid 1 of the new pid namespace) and waits for it within the time limit.
fn run_init(a: &SandboxArgs) -> Result<i32, String> {
    std::env::set_current_dir(&a.cwd)
        .map_err(|e| format!("cannot enter {}: {e}", a.cwd.display()))?;
    let mut init = std::process::Command::new("/proc/self/exe");
    init.arg(INIT_ARG).args(&a.argv);
    if let Some((u, g)) = a.owner {
        init.uid(u).gid(g);
    }
    let mut child = init
        .spawn()
        .map_err(|e| format!("cannot start the sandbox's init: {e}"))?;
    let deadline = Instant::now() + a.timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(exit_code(st)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!(
                    "imperium sandbox: the app was not loaded within {} s",
                    a.timeout.as_secs_f64()
                );
                return Ok(EXIT_TIMEOUT);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("cannot wait for the sandbox's init: {e}")),
        }
    }
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// `imperium __sandbox-init PROGRAM ARGS`: the sandbox's pid 1. Starts the
/// program, reaps whatever is reparented to it, and returns 0 once the
/// FIFO is written to; the program's exit code when it fails first.
pub fn init(argv: &[OsString]) -> i32 {
    match init_inner(argv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imperium sandbox: {e}");
            EXIT_SETUP
        }
    }
}

fn init_inner(argv: &[OsString]) -> Result<i32, String> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    // the sandbox's parent may die: then so does the sandbox
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let (prog, args) = argv.split_first().ok_or("no program to run")?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    nix::unistd::mkfifo(LOADED_FIFO, nix::sys::stat::Mode::from_bits_truncate(0o666))
        .map_err(|e| format!("cannot make {LOADED_FIFO}: {e}"))?;
    nix::sys::stat::umask(old);
    let fifo = nix::fcntl::open(
        LOADED_FIFO,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open {LOADED_FIFO}: {e}"))?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| format!("cannot block SIGCHLD: {e}"))?;
    let sigfd = nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .map_err(|e| format!("cannot make a signalfd: {e}"))?;
    // std resets the signal mask of the child it starts
    let child = std::process::Command::new(prog)
        .args(args)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", prog.to_string_lossy()))?;
    let main = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut main_ended = false;
    loop {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("cannot poll: {e}")),
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return Ok(0);
        }
        while let Ok(Some(_)) = sigfd.read_signal() {}
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == main => {
                    if code != 0 {
                        return Ok(code);
                    }
                    // it may have daemonized: wait for what it left
                    main_ended = true;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => {
                    eprintln!(
                        "imperium sandbox: {} was killed by {sig}",
                        prog.to_string_lossy()
                    );
                    return Ok(128 + sig as i32);
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => {}
                Err(nix::errno::Errno::ECHILD) if main_ended => {
                    eprintln!(
                        "imperium sandbox: {} exited (code 0) without loading its app",
                        prog.to_string_lossy()
                    );
                    return Ok(1);
                }
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = SandboxArgs {
            timeout: Duration::from_millis(2500),
            cwd: "/srv/app".into(),
            inline: Some("/tmp/imperium-check/a.ini".into()),
            owner: Some((1000, 100)),
            argv: vec!["uwsgi".into(), "--ini".into(), "a.ini".into()],
        };
        assert_eq!(SandboxArgs::parse(&a.to_args()).unwrap(), a);
        assert!(SandboxArgs::parse(&["--cwd".into()]).is_err());
        assert!(SandboxArgs::parse(&["--".into()]).is_err());
        assert!(
            SandboxArgs::parse(&["--what".into(), "x".into(), "--".into(), "p".into()]).is_err()
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(r"/x\\"), br"/x\\");
        assert_eq!(unescape("/plain"), b"/plain");
    }
}
