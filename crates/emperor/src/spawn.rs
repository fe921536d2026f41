//! Starting a vassal process: the only module with `unsafe` code.
//!
//! The child gets (reference §6.2, §6.5): fd 0 on /dev/null or the
//! on-demand socket, fds 1 and 2 inherited, the vassal ends of the control
//! and config socketpairs at the numbers named in `UWSGI_EMPEROR_FD` and
//! `UWSGI_EMPEROR_FD_CONFIG`, and nothing else (every other fd is marked
//! close-on-exec with one `close_range` call). In tyrant mode privileges are
//! dropped (setgroups, setgid, setuid), checked, and locked with
//! `PR_SET_NO_NEW_PRIVS` (no setuid program can give them back); then `PR_SET_PDEATHSIG`
//! is set (after the drop, since a credential change clears it) and the
//! parent is checked to still be alive.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;

use crate::spec::Owner;

/// Everything needed to start one vassal process.
#[derive(Debug)]
pub struct SpawnRequest {
    /// The full argv, argv\[0\] included.
    pub argv: Vec<OsString>,
    /// Programs to exec in order until one works (wrapper overrides, the
    /// binary, wrapper fallbacks).
    pub programs: Vec<OsString>,
    /// The environment before the emperor variables are added.
    pub base_env: Vec<(OsString, OsString)>,
    /// The working directory (`None`: the emperor's).
    pub workdir: Option<PathBuf>,
    /// Tyrant mode: run as this user, with these supplementary groups
    /// (`None`: no supplementary groups).
    pub owner: Option<(Owner, Option<Vec<u32>>)>,
    /// Open a config socketpair (config text passed over the pipe).
    pub config_pipe: bool,
    /// The on-demand listening socket, put on fd 0.
    pub stdin_socket: Option<OwnedFd>,
    /// `UWSGI_BROODLORD_NUM` for zergs.
    pub broodlord_num: Option<u64>,
}

/// A started vassal.
#[derive(Debug)]
pub struct Spawned {
    /// The child (reaped through tokio).
    pub child: tokio::process::Child,
    /// Its pid (always > 0).
    pub pid: u32,
    /// The emperor end of the control socketpair.
    pub ctrl: UnixStream,
    /// The emperor end of the config socketpair.
    pub config: Option<UnixStream>,
    /// The program that was executed.
    pub program: OsString,
}

/// Why a vassal could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the emperor socketpair: {0}")]
    Socketpair(#[source] io::Error),
    #[error("exec failed for every program tried ({}); is the uwsgi binary in your system PATH ?", describe(.0))]
    Exec(Vec<(OsString, io::Error)>),
    #[error("the vassal has an empty argv")]
    EmptyArgv,
}

fn describe(tried: &[(OsString, io::Error)]) -> String {
    tried
        .iter()
        .map(|(p, e)| format!("{}: {e}", p.to_string_lossy()))
        .collect::<Vec<_>>()
        .join("; ")
}

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Starts the vassal. Must be called inside a tokio runtime.
pub fn spawn_vassal(req: SpawnRequest) -> Result<Spawned, SpawnError> {
    if req.argv.is_empty() {
        return Err(SpawnError::EmptyArgv);
    }
    let (ctrl, ctrl_child) = UnixStream::pair().map_err(SpawnError::Socketpair)?;
    let (config, config_child) = if req.config_pipe {
        let (a, b) = UnixStream::pair().map_err(SpawnError::Socketpair)?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let ctrl_fd = ctrl_child.as_raw_fd();
    let config_fd = config_child.as_ref().map(|c| c.as_raw_fd());
    let env = crate::argv::build_env(&req.base_env, ctrl_fd, config_fd, req.broodlord_num);
    let parent = std::process::id() as libc::pid_t;
    let mut tried = Vec::new();
    for program in &req.programs {
        let mut cmd = std::process::Command::new(program);
        cmd.arg0(&req.argv[0]).args(&req.argv[1..]);
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        match &req.stdin_socket {
            Some(fd) => match fd.try_clone() {
                Ok(fd) => cmd.stdin(Stdio::from(fd)),
                Err(e) => {
                    tried.push((program.clone(), e));
                    continue;
                }
            },
            None => cmd.stdin(Stdio::null()),
        };
        if let Some(dir) = &req.workdir {
            cmd.current_dir(dir);
        }
        let owner = req.owner.clone();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (setgroups, setgid, setuid,
        // get*id, prctl, getppid, close_range, fcntl) on plain integers and a
        // slice allocated before the fork; it allocates nothing and takes no
        // locks, which is what a child of a multi-threaded process may do.
        unsafe {
            cmd.pre_exec(move || child_setup(owner.as_ref(), parent, ctrl_fd, config_fd));
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(false);
        match cmd.spawn() {
            Ok(child) => {
                let Some(pid) = child.id() else {
                    tried.push((program.clone(), io::Error::other("child has no pid")));
                    continue;
                };
                drop(ctrl_child);
                drop(config_child);
                return Ok(Spawned {
                    child,
                    pid,
                    ctrl,
                    config,
                    program: program.clone(),
                });
            }
            Err(e) => tried.push((program.clone(), e)),
        }
    }
    Err(SpawnError::Exec(tried))
}

/// The child side, between fork and exec.
fn child_setup(
    owner: Option<&(Owner, Option<Vec<u32>>)>,
    parent: libc::pid_t,
    ctrl_fd: i32,
    config_fd: Option<i32>,
) -> io::Result<()> {
    if let Some((o, groups)) = owner {
        // SAFETY: plain system calls on integers; the groups slice lives in
        // the closure, allocated before the fork.
        unsafe {
            let rc = match groups {
                Some(g) => libc::setgroups(g.len(), g.as_ptr()),
                None => libc::setgroups(0, std::ptr::null()),
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgid(o.gid) != 0 || libc::setuid(o.uid) != 0 {
                return Err(io::Error::last_os_error());
            }
            let dropped = libc::getuid() == o.uid
                && libc::geteuid() == o.uid
                && libc::getgid() == o.gid
                && libc::getegid() == o.gid;
            // a dropped vassal must not be able to become root again
            if !dropped || (o.uid != 0 && libc::setuid(0) == 0) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            // nor through a setuid-root program or file capabilities
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: prctl/getppid/syscall/fcntl on integers only.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // the emperor may have died between fork and prctl
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // mark every fd from 3 up close-on-exec in one call, then clear the
        // flag on the two the vassal keeps
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            // kernels before 5.11: fall back to a bounded loop
            for fd in 3..4096 {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        if libc::fcntl(ctrl_fd, libc::F_SETFD, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(fd) = config_fd {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Registers `fd` with the tokio reactor for readability (the emperor
/// watches on-demand sockets this way, never accepting on them).
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
