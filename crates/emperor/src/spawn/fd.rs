//! The fd helpers the rest of the emperor uses: registering a descriptor
//! with the reactor, taking an inherited one over, the open-file limit.

use std::io;
use std::os::fd::OwnedFd;

/// The open-file limit the emperor started with, when
/// [`raise_nofile_limit`] raised its own: vassals get this one back.
pub(super) static VASSAL_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the emperor's soft open-file limit to its hard limit (at most
/// 2^20), since every vassal holds one or two fds in the emperor (its
/// control socket; its config pipe for an inline config; its output pipe
/// with `--vassal-logs prefix|dir:`).
/// Vassals still start with the original limit (uWSGI loops over every fd
/// up to it). Returns `(old, new)` soft limits when it changed anything.
///
/// With CAP_SYS_RESOURCE the hard limit is raised first, up to
/// `fs.nr_open` (at most 2^20); without it (EPERM) the hard limit stays.
pub fn raise_nofile_limit() -> io::Result<Option<(u64, u64)>> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(hard);
    let ceiling = nr_open.min(1 << 20);
    // with CAP_SYS_RESOURCE: soft and hard both to the ceiling
    let raised_hard =
        ceiling > hard && setrlimit(Resource::RLIMIT_NOFILE, ceiling, ceiling).is_ok();
    let target = if raised_hard {
        ceiling
    } else {
        hard.min(1 << 20)
    };
    if soft >= target {
        return Ok(None);
    }
    if !raised_hard {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(io::Error::from)?;
    }
    let _ = VASSAL_NOFILE.set(libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    });
    Ok(Some((soft, target)))
}

/// Registers `fd` with the tokio reactor for readability (the emperor
/// watches on-demand sockets this way, never accepting on them, and the
/// file monitors their rescan timerfd).
pub fn register_readable(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` owns its descriptor: it stays open and refers to
    // the same file description until the `AsyncFd` (which owns the
    // `OwnedFd`) is dropped, and its `as_raw_fd` always returns that same
    // number, which is what `register_with_interest` requires.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            .map_err(io::Error::from)
    }
}

/// A descriptor shared with others (a vassal's output pipe, read by its
/// reader task and by the death event), as the reactor sees it.
#[derive(Debug)]
pub struct SharedFd(pub std::sync::Arc<OwnedFd>);

impl std::os::fd::AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers a shared `fd` with the tokio reactor for readability; it can
/// be registered again after the `AsyncFd` is dropped (the output pipes
/// leave the reactor at end-of-file, which it would report for ever).
pub fn register_shared_readable(
    fd: std::sync::Arc<OwnedFd>,
) -> io::Result<tokio::io::unix::AsyncFd<SharedFd>> {
    // SAFETY: the `SharedFd` holds an `Arc<OwnedFd>`: the descriptor stays
    // open and refers to the same file description for as long as the
    // `AsyncFd` (which owns the `SharedFd`, so one strong count) lives, and
    // `as_raw_fd` always returns that same number.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            SharedFd(fd),
            tokio::io::Interest::READABLE,
        )
        .map_err(io::Error::from)
    }
}

/// The vassal side of the contract: takes ownership of the fd whose number
/// is in environment variable `var` (`UWSGI_EMPEROR_FD` or
/// `UWSGI_EMPEROR_FD_CONFIG`), as a vassal does. `Ok(None)` when the
/// variable is not set. Used by the test vassal and by sub-emperors.
pub fn take_inherited_fd(var: &str) -> io::Result<Option<OwnedFd>> {
    use std::os::fd::FromRawFd;
    let Some(v) = std::env::var_os(var) else {
        return Ok(None);
    };
    let fd: i32 = v
        .to_str()
        .and_then(|s| s.trim().parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{var} is not an fd number above 2"),
            )
        })?;
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // Remove the variable so the fd cannot be taken twice in this process.
    std::env::remove_var(var);
    // SAFETY: the fd is open (checked above), was handed to this process by
    // its emperor for this purpose, and the variable that names it was just
    // removed, so no other owner can be created for it in this process.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Takes ownership of descriptors a previous image of this process left
/// open for it (a hot upgrade: their numbers are in the state it wrote).
/// Each number must be open, above 2 and given once.
pub fn adopt_fds(fds: &[i32]) -> io::Result<std::collections::HashMap<i32, OwnedFd>> {
    use std::os::fd::FromRawFd;
    let mut out = std::collections::HashMap::with_capacity(fds.len());
    for &fd in fds {
        if fd <= 2 || out.contains_key(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("descriptor {fd} is a standard stream or named twice"),
            ));
        }
        // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("descriptor {fd}: {e}")));
        }
        // SAFETY: the fd is open (checked above) and was left open by the
        // image this one replaced, for this purpose; no other part of this
        // image knows its number, and each number is taken once (checked
        // above), so this is its only owner.
        out.insert(fd, unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(out)
}

/// Makes `fd` survive an exec (`true`) or close at the next one.
pub fn set_inheritable(fd: std::os::fd::BorrowedFd<'_>, yes: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if yes {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// The signals the emperor handles, blocked in the calling thread: every
/// thread the emperor starts blocks them, so that they reach only the
/// thread of the loop, which blocks them itself around a hot upgrade's
/// exec (those that arrive meanwhile wait for the new image).
pub fn block_signals_in_this_thread() {
    let _ = handled_signals().thread_block();
}

/// The signals the emperor handles (SIGHUP, SIGINT, SIGTERM, SIGQUIT,
/// SIGURG, SIGUSR1, SIGUSR2, SIGWINCH).
pub fn handled_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGQUIT,
        Signal::SIGURG,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        s.add(sig);
    }
    s
}
