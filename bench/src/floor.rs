//! The floor: the harness itself starts the same vassals with plain
//! fork/exec (std's `Command`, which uses vfork-style `posix_spawn`), each
//! with its control socketpair in `UWSGI_EMPEROR_FD`, and waits for every
//! one to send byte 5 (accepting). No emperor can start them faster on
//! this machine.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// Starts one vassal per `names` (configs in `dir`) and returns the time
/// until the last one reported accepting.
pub fn cold_start(dir: &Path, names: &[String], bin: &Path, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let mut kids: Vec<(Child, UnixStream)> = Vec::with_capacity(names.len());
    let result = (|| {
        for name in names {
            let (ours, theirs) = UnixStream::pair().context("socketpair")?;
            // the vassal end must survive exec: clear its close-on-exec flag
            fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty())).context("fcntl")?;
            let child = Command::new(bin)
                .arg("--ini")
                .arg(name)
                .current_dir(dir)
                .env("UWSGI_EMPEROR_FD", theirs.as_raw_fd().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            drop(theirs);
            kids.push((child, ours));
        }
        let deadline = t0 + timeout;
        for (i, (_, sock)) in kids.iter_mut().enumerate() {
            wait_accepting(sock, deadline).with_context(|| format!("vassal {}", names[i]))?;
        }
        Ok(t0.elapsed())
    })();
    // stop them the way an emperor does: byte 0, then SIGKILL stragglers
    for (_, sock) in kids.iter_mut() {
        let _ = sock.write_all(&[0]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for (child, _) in kids.iter_mut() {
        loop {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    result
}

fn wait_accepting(sock: &mut UnixStream, deadline: Instant) -> Result<()> {
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no byte 5 before the timeout");
        }
        sock.set_read_timeout(Some(left))?;
        let n = sock.read(&mut buf).context("reading the control socket")?;
        if n == 0 {
            bail!("the vassal closed its control socket before byte 5");
        }
        if buf[..n].contains(&5) {
            return Ok(());
        }
    }
}
