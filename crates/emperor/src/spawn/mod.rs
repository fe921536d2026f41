//! Starting a vassal process, and every other piece of `unsafe` code: this
//! module (with `fd.rs`: reactor registration, inherited fds, the
//! open-file limit; and `process.rs`: daemonize, the command line) is the
//! only one that may use `unsafe`.
//!
//! The child gets (docs/protocol.md, as uWSGI's `uwsgi_emperor_spawn_vassal` sets it up): fd 0 on /dev/null or the
//! on-demand socket, fds 1 and 2 inherited (or, with `--vassal-logs`, the
//! vassal's output pipe or journald stream), the vassal ends of the control
//! and config socketpairs at the numbers named in `UWSGI_EMPEROR_FD` and
//! `UWSGI_EMPEROR_FD_CONFIG`, and nothing else (every other fd is marked
//! close-on-exec with one `close_range` call). In tyrant mode privileges are
//! dropped (setgroups, setgid, setuid), checked, and locked with
//! `PR_SET_NO_NEW_PRIVS` (no setuid program can give them back); then `PR_SET_PDEATHSIG`
//! is set (after the drop, since a credential change clears it) and the
//! parent is checked to still be alive.
//!
//! The process is created the way `posix_spawn` does it, with
//! `clone(CLONE_VM | CLONE_VFORK)`: the child borrows the
//! emperor's memory until it execs, so nothing is copied. A plain `fork()`
//! copies the page tables and write-protects every page of the emperor, and
//! with 1000 vassals that made the cold start 1.3 to 1.6 times slower than
//! the fork/exec floor (docs/performance.md). With `--vassal-cgroup` the
//! same child is created with `clone3(CLONE_INTO_CGROUP)`, so it starts in
//! its own cgroup and never runs outside it. The child is reaped by one
//! thread for all vassals and killed by pid under the same lock, so a
//! recycled pid can never be hit and the emperor holds no descriptor per
//! process (`reap.rs`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use crate::spec::Owner;

mod exits;
pub mod fd;
mod net;
mod process;
mod reap;
mod slots;

use fd::VASSAL_NOFILE;
pub use fd::{
    adopt_fds, block_signals_in_this_thread, handled_signals, raise_nofile_limit,
    register_readable, set_inheritable, take_inherited_fd,
};
pub use net::loopback_up;
pub use process::{daemonize, set_cmdline};
pub use reap::{adopt_orphans, children, freeze_reaper, ReaperFrozen, VassalProcess};
pub use slots::reserve_spawn_slots;

/// Everything needed to start one vassal process.
#[derive(Debug)]
pub struct SpawnRequest {
    /// The full argv, argv\[0\] included.
    pub argv: Vec<OsString>,
    /// Programs to exec in order until one works (wrapper overrides, the
    /// binary, wrapper fallbacks). A name without `/` is looked up in PATH.
    pub programs: Vec<OsString>,
    /// The environment before the emperor variables are added.
    pub base_env: Arc<[(OsString, OsString)]>,
    /// The working directory (`None`: the emperor's).
    pub workdir: Option<PathBuf>,
    /// Tyrant mode: run as this user, with these supplementary groups
    /// (`None`: no supplementary groups).
    pub owner: Option<(Owner, Option<Vec<u32>>)>,
    /// Open a config socketpair (config text passed over the pipe).
    pub config_pipe: bool,
    /// The on-demand listening socket, put on fd 0.
    pub stdin_socket: Option<OwnedFd>,
    /// Put on fds 1 and 2 (`--vassal-logs`: the vassal's output pipe or
    /// journald stream); `None`: the emperor's own are inherited.
    pub stdout: Option<OwnedFd>,
    /// `UWSGI_BROODLORD_NUM` for zergs.
    pub broodlord_num: Option<u64>,
    /// The cgroup (a directory of the unified hierarchy) the process starts
    /// in (`clone3(CLONE_INTO_CGROUP)`); `None`: the emperor's.
    pub cgroup: Option<PathBuf>,
    /// `cgroup.procs` files (of cgroup v1 hierarchies) the child writes
    /// itself into before anything else (`--vassal-memory-max`, ...).
    pub join_procs: Vec<PathBuf>,
    /// Namespaces, bounding set and kept fds (the same for every vassal).
    pub confine: Arc<Confinement>,
}

/// What every vassal gets beyond uWSGI's defaults: `--emperor-use-clone`,
/// `--emperor-cap` and `--safe-fd`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// `CLONE_NEW*` (and `CLONE_SYSVSEM`, `CLONE_IO`) flags added to the
    /// clone that creates the vassal.
    pub clone_flags: libc::c_int,
    /// The capabilities (numbers, as in linux/capability.h) left in the
    /// vassal's bounding set; `None` leaves the set alone.
    pub bounding_set: Option<Vec<u32>>,
    /// Inherited fds the vassal keeps open.
    pub safe_fds: Vec<RawFd>,
}

/// The `--emperor-use-clone` names imperium accepts, and their flags.
const CLONE_NAMES: &[(&str, libc::c_int)] = &[
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("pid", libc::CLONE_NEWPID),
    ("ns", libc::CLONE_NEWNS),
    ("fs", libc::CLONE_NEWNS),
    ("mount", libc::CLONE_NEWNS),
    ("mnt", libc::CLONE_NEWNS),
    ("sysvsem", libc::CLONE_SYSVSEM),
    ("io", libc::CLONE_IO),
];

/// Parses `--emperor-use-clone`: a comma-separated list of uWSGI's names.
/// `files` (the vassal would share the emperor's fd table), `parent` (it
/// would become the emperor's sibling, out of its reach) and `user` (the
/// vassal would run as the overflow user: neither uWSGI nor imperium write
/// uid maps) are refused with the reason.
pub fn parse_clone_flags(list: &str) -> Result<libc::c_int, String> {
    let mut flags = 0;
    for name in list
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match name {
            "files" => return Err("'files' would make each vassal share the emperor's file descriptor table; not supported".into()),
            "parent" => return Err("'parent' would make each vassal a sibling of the emperor, which could then neither reap nor kill it; not supported".into()),
            "user" => return Err("'user' would run each vassal as the overflow user of a new user namespace without uid/gid maps; not supported (run the emperor itself in a user namespace instead)".into()),
            _ => {}
        }
        match CLONE_NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, f)) => flags |= f,
            None => {
                let known: Vec<&str> = CLONE_NAMES.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown namespace {name:?} (one of: {})",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(flags)
}

/// A started vassal.
#[derive(Debug)]
pub struct Spawned {
    /// The child process.
    pub child: VassalProcess,
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
    /// The socketpair could not be created.
    Socketpair(#[source] io::Error),
    #[error("exec failed for every program tried ({}); is the uwsgi binary in your system PATH ?", describe(.0))]
    /// Every program failed to exec (each with its error).
    Exec(Vec<(OsString, io::Error)>),
    #[error("the vassal has an empty argv")]
    /// No program or no argv.
    EmptyArgv,
    #[error("an argument, a variable or a path contains a NUL byte")]
    /// A string has a NUL byte.
    Nul,
    #[error("cannot create the vassal process: {0}")]
    /// clone() failed.
    Clone(#[source] io::Error),
    #[error("cannot prepare the vassal process before exec ({step}): {source}")]
    /// A step between clone and exec failed.
    Setup {
        /// The step.
        step: &'static str,
        #[source]
        /// The error.
        source: io::Error,
    },
}

impl SpawnError {
    /// Whether the error is a resource that ran out for a while (open
    /// files, processes, memory): the spawn is retried with a short
    /// backoff, not throttled as the vassal's own fault.
    pub fn is_transient(&self) -> bool {
        match self {
            SpawnError::Socketpair(e) | SpawnError::Clone(e) => is_transient_errno(e),
            SpawnError::Setup { source, .. } => is_transient_errno(source),
            SpawnError::Exec(tried) => {
                !tried.is_empty() && tried.iter().all(|(_, e)| is_transient_errno(e))
            }
            SpawnError::EmptyArgv | SpawnError::Nul => false,
        }
    }
}

/// EMFILE, ENFILE, EAGAIN, ENOMEM, ENOBUFS: a resource of the process or
/// of the system ran out, and may be back soon.
pub fn is_transient_errno(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM | libc::ENOBUFS)
    )
}

fn describe(tried: &[(OsString, io::Error)]) -> String {
    tried
        .iter()
        .map(|(p, e)| format!("{}: {e}", p.to_string_lossy()))
        .collect::<Vec<_>>()
        .join("; ")
}

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// The child's stack: execvpe() builds candidate paths on it, nothing else
/// is large.
const CHILD_STACK: usize = 128 * 1024;

/// Steps of the child setup, reported to the parent when one fails.
const STEPS: [&str; 16] = [
    "setgroups",
    "setgid",
    "setuid",
    "privileges still held after the drop",
    "prctl(PR_SET_PDEATHSIG)",
    "the emperor died",
    "chdir",
    "set up fds",
    "prctl(PR_SET_NO_NEW_PRIVS)",
    "setrlimit(RLIMIT_NOFILE)",
    "prctl(PR_CAPBSET_DROP) for --emperor-cap",
    "capset() to drop the emperor's capabilities",
    "keep a --safe-fd open",
    "put the --vassal-logs output on fds 1 and 2",
    "join its limited cgroups (--vassal-memory-max, --vassal-cpu-max, --vassal-pids-max)",
    "close_range(CLOSE_RANGE_UNSHARE) for a table of its own",
];

/// CAP_SETPCAP: uWSGI keeps it in the bounding set whatever --emperor-cap says.
const CAP_SETPCAP: u32 = 8;

/// The highest capability number this kernel knows.
fn last_cap() -> libc::c_int {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// What the child needs, prepared by the parent (no allocation happens in
/// the child), and what the child reports back through the shared memory.
struct ChildArgs {
    programs: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    workdir: Option<CString>,
    stdin_fd: RawFd,
    stdout_fd: Option<RawFd>,
    join_procs: Vec<CString>,
    owner: Option<(Owner, Vec<libc::gid_t>)>,
    parent: libc::pid_t,
    ctrl_fd: RawFd,
    config_fd: Option<RawFd>,
    /// The open-file limit to restore (see [`raise_nofile_limit`]).
    nofile: Option<libc::rlimit>,
    /// Capabilities to drop from the bounding set.
    cap_drop: Vec<libc::c_int>,
    /// Inherited fds to keep.
    safe_fds: Vec<RawFd>,
    /// In a new pid namespace the parent is invisible (getppid() is 0).
    new_pid_ns: bool,
    /// Created with CLONE_FILES: unshare the fd table first, keeping only
    /// the fds below this one (`slots.rs`).
    unshare_from: Option<libc::c_uint>,
    /// errno of each failed exec, in order (0: not tried or succeeded).
    exec_errors: Vec<AtomicI32>,
    /// 1 + index in STEPS of the setup step that failed (0: none).
    failed_step: AtomicI32,
    /// errno of the failed setup step.
    setup_errno: AtomicI32,
}

/// `struct __user_cap_header_struct` of linux/capability.h.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of linux/capability.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `CLONE_INTO_CGROUP` of linux/sched.h (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of linux/sched.h (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3` for a `CLONE_VM | CLONE_VFORK` child that runs `f(arg)` on the
/// stack given in `args` and exits with its return value (what glibc's
/// `clone()` does for `clone`, which cannot start a process in a cgroup).
/// Returns the child's pid, or `-errno`.
///
/// # Safety
///
/// `args` must describe a valid stack that nothing else uses, `f` must be
/// safe to run on it sharing the caller's memory (it must end in execve or
/// _exit without returning into the caller's frames), and the caller must
/// keep everything `arg` points to alive until the child has exec'd or
/// exited (CLONE_VFORK suspends the caller until then).
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vfork(
    args: &mut CloneArgs,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the clone3 system call with the arguments above. In the
    // parent it returns like any system call (rcx and r11 are clobbered).
    // The child starts after the `syscall` instruction with the same
    // registers, rax = 0 and rsp = the top of its own stack (16-byte
    // aligned, so after `call` the callee sees the alignment the ABI
    // requires); it calls `f(arg)` (r12, r13 are preserved by the kernel)
    // and exits with its result, never returning into Rust code.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") f,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Other architectures: no clone3 trampoline yet.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_vfork(
    _args: &mut CloneArgs,
    _f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _arg: *mut libc::c_void,
) -> i64 {
    -(libc::ENOSYS as i64)
}

/// An mmap'd stack with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new(len: usize) -> io::Result<Stack> {
        // SAFETY: an anonymous private mapping; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the first page of the mapping just created.
        if unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The top of the stack (it grows down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        let top = self.base as usize + self.len;
        (top & !15) as *mut libc::c_void
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in Stack::new, which no
        // one uses any more (the child has exec'd or exited).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

fn cstring(s: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul)
}

/// Starts the vassal.
#[allow(
    clippy::too_many_lines,
    reason = "everything the child touches must be built before the clone, in one frame that outlives it"
)]
pub fn spawn_vassal(req: SpawnRequest) -> Result<Spawned, SpawnError> {
    if req.argv.is_empty() || req.programs.is_empty() {
        return Err(SpawnError::EmptyArgv);
    }
    let (ctrl, ctrl_child) = UnixStream::pair().map_err(SpawnError::Socketpair)?;
    let (config, config_child) = if req.config_pipe {
        let (a, b) = UnixStream::pair().map_err(SpawnError::Socketpair)?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };

    // everything the child touches is built here, before the clone
    let argv_c: Vec<CString> = req
        .argv
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    let devnull;
    let stdin_fd = match &req.stdin_socket {
        Some(fd) => fd.as_raw_fd(),
        None => {
            devnull = std::fs::File::open("/dev/null").map_err(|e| SpawnError::Setup {
                step: "open /dev/null",
                source: e,
            })?;
            devnull.as_raw_fd()
        }
    };
    // the child's fds in the low slots, so that it can drop the rest of the
    // emperor's table without copying it (slots.rs); not when a --safe-fd
    // would be dropped with it
    let mut lent = slots::Lent::take().filter(|l| {
        req.confine
            .safe_fds
            .iter()
            .all(|fd| u32::try_from(*fd).is_ok_and(|fd| fd < l.first()))
    });
    let mut ctrl_fd = ctrl_child.as_raw_fd();
    let mut config_fd = config_child.as_ref().map(|c| c.as_raw_fd());
    let mut stdin_fd = stdin_fd;
    let mut stdout_fd = req.stdout.as_ref().map(AsRawFd::as_raw_fd);
    if let Some(l) = &mut lent {
        let setup = |source| SpawnError::Setup {
            step: "place its fds for the spawn",
            source,
        };
        ctrl_fd = l.place(0, ctrl_fd).map_err(setup)?;
        config_fd = config_fd
            .map(|fd| l.place(1, fd))
            .transpose()
            .map_err(setup)?;
        stdin_fd = l.place(2, stdin_fd).map_err(setup)?;
        stdout_fd = stdout_fd
            .map(|fd| l.place(3, fd))
            .transpose()
            .map_err(setup)?;
    }
    let env = crate::argv::build_env(&req.base_env, ctrl_fd, config_fd, req.broodlord_num);
    let env_c: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| SpawnError::Nul)
        })
        .collect::<Result<_, _>>()?;
    let null_terminated = |v: &[CString]| {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let args = ChildArgs {
        programs: req
            .programs
            .iter()
            .map(|p| cstring(p))
            .collect::<Result<_, _>>()?,
        argv: null_terminated(&argv_c),
        envp: null_terminated(&env_c),
        workdir: req
            .workdir
            .as_ref()
            .map(|d| cstring(d.as_os_str()))
            .transpose()?,
        stdin_fd,
        stdout_fd,
        join_procs: req
            .join_procs
            .iter()
            .map(|p| cstring(p.as_os_str()))
            .collect::<Result<_, _>>()?,
        owner: req
            .owner
            .as_ref()
            .map(|(o, g)| (*o, g.clone().unwrap_or_default())),
        parent: std::process::id() as libc::pid_t,
        ctrl_fd,
        config_fd,
        nofile: VASSAL_NOFILE.get().copied(),
        cap_drop: match &req.confine.bounding_set {
            Some(keep) => (0..=last_cap())
                .filter(|c| *c as u32 != CAP_SETPCAP && !keep.contains(&(*c as u32)))
                .collect(),
            None => Vec::new(),
        },
        safe_fds: req.confine.safe_fds.clone(),
        new_pid_ns: req.confine.clone_flags & libc::CLONE_NEWPID != 0,
        unshare_from: lent.as_ref().map(slots::Lent::first),
        exec_errors: req.programs.iter().map(|_| AtomicI32::new(0)).collect(),
        failed_step: AtomicI32::new(0),
        setup_errno: AtomicI32::new(0),
    };
    let cgroup_fd = match &req.cgroup {
        Some(dir) => Some(std::fs::File::open(dir).map_err(|e| SpawnError::Setup {
            step: "open its cgroup",
            source: e,
        })?),
        None => None,
    };
    let stack = Stack::new(CHILD_STACK).map_err(SpawnError::Clone)?;
    // SAFETY: the signal mask calls only read and write the sigset_t values
    // on this stack frame. Blocking every signal around the clone keeps the
    // emperor's handlers from running in the child, which shares our memory
    // until it execs (the child resets them to the default first thing).
    // clone() (or clone3() with CLONE_INTO_CGROUP, to start it in its
    // cgroup, given an open fd of that cgroup that lives until after the
    // call) runs `child_main` on the mmap'd stack with a pointer to
    // `args`, which outlives the child's use of it: CLONE_VFORK suspends
    // this thread until the child has exec'd or exited, and both `args` and
    // `stack` are dropped only after that. The child only makes system
    // calls that are safe between clone and exec (see child_main).
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let arg = &args as *const ChildArgs as *mut libc::c_void;
        let shared = if lent.is_some() { libc::CLONE_FILES } else { 0 };
        let flags = libc::CLONE_VM | libc::CLONE_VFORK | shared | req.confine.clone_flags;
        let (pid, err) = match &cgroup_fd {
            None => {
                let pid = libc::clone(child_main, stack.top(), flags | libc::SIGCHLD, arg);
                (pid, io::Error::last_os_error())
            }
            Some(cg) => {
                let mut ca = CloneArgs {
                    flags: (flags as u64) | CLONE_INTO_CGROUP,
                    pidfd: 0,
                    child_tid: 0,
                    parent_tid: 0,
                    exit_signal: libc::SIGCHLD as u64,
                    stack: stack.base as u64 + 4096,
                    stack_size: (stack.top() as u64) - (stack.base as u64 + 4096),
                    tls: 0,
                    set_tid: 0,
                    set_tid_size: 0,
                    cgroup: cg.as_raw_fd() as u64,
                };
                let r = clone3_vfork(&mut ca, child_main, arg);
                if r < 0 {
                    (-1, io::Error::from_raw_os_error(-r as i32))
                } else {
                    (r as libc::c_int, io::Error::from_raw_os_error(0))
                }
            }
        };
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid <= 0 {
            return Err(SpawnError::Clone(err));
        }
        pid
    };
    drop(stack);
    // the child has exec'd (or exited): its fds leave the slots
    drop(lent);
    let child = VassalProcess::register(pid as u32);
    drop(ctrl_child);
    drop(config_child);
    let failed = args.failed_step.load(Ordering::SeqCst);
    let tried: Vec<(OsString, io::Error)> = req
        .programs
        .iter()
        .zip(&args.exec_errors)
        .map(|(p, e)| (p, e.load(Ordering::SeqCst)))
        .take_while(|(_, e)| *e != 0)
        .map(|(p, e)| (p.clone(), io::Error::from_raw_os_error(e)))
        .collect();
    if failed != 0 || tried.len() == req.programs.len() {
        // the child has exited (it could not exec): reap it
        let _ = child.wait_blocking();
        if failed != 0 {
            return Err(SpawnError::Setup {
                step: STEPS.get(failed as usize - 1).copied().unwrap_or("unknown"),
                source: io::Error::from_raw_os_error(args.setup_errno.load(Ordering::SeqCst)),
            });
        }
        return Err(SpawnError::Exec(tried));
    }
    Ok(Spawned {
        pid: child.pid(),
        child,
        ctrl,
        config,
        program: req.programs[tried.len()].clone(),
    })
}

/// The child, between clone and exec. It shares the emperor's memory and
/// runs on its own small stack, so it only makes raw system calls (no
/// allocation, no locks, no glibc wrappers that keep process-wide state,
/// which is why set*id are called through syscall(2)), records failures in
/// the shared `ChildArgs`, and ends in execve or _exit.
#[allow(
    clippy::too_many_lines,
    reason = "the child between clone and exec: one straight sequence of system calls"
)]
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the ChildArgs of spawn_vassal, alive and not
    // moved while the parent is suspended by CLONE_VFORK; the child only
    // reads it, except for the atomics.
    let a = unsafe { &*(arg as *const ChildArgs) };
    let fail = |step: usize| -> libc::c_int {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        a.setup_errno.store(errno, Ordering::SeqCst);
        a.failed_step.store(step as i32 + 1, Ordering::SeqCst);
        // SAFETY: _exit ends the child without running any destructor or
        // atexit handler of the emperor's.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: every call below is a system call on integers, on the
    // sigset/sigaction values of this stack frame, or on the C strings and
    // pointer arrays that the parent built and keeps alive.
    unsafe {
        // created sharing the emperor's fd table: first of all a table of
        // its own, with only the fds below the slots' end (slots.rs); until
        // then nothing here may touch an fd
        if let Some(first) = a.unshare_from {
            if libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                slots::CLOSE_RANGE_UNSHARE,
            ) != 0
            {
                return fail(15);
            }
        }
        // the emperor's signal handlers must not run here: back to the
        // defaults (ignored signals stay ignored, as with exec), then the
        // signal mask the emperor had before the clone
        for sig in 1..=libc::SIGRTMAX() {
            let mut cur: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut cur) != 0 {
                continue;
            }
            // SIGPIPE too: Rust ignores it in the emperor, a vassal gets
            // the default, as std's Command and uWSGI give it
            let caught = cur.sa_sigaction != libc::SIG_IGN && cur.sa_sigaction != libc::SIG_DFL;
            if caught || (sig == libc::SIGPIPE && cur.sa_sigaction == libc::SIG_IGN) {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            std::mem::size_of::<libc::c_ulong>(),
        );
        // --vassal-memory-max, -cpu-max, -pids-max: into the limited v1
        // groups first, while the child still has the emperor's privileges
        for p in &a.join_procs {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return fail(14);
            }
            let w = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if w != 1 {
                return fail(14);
            }
        }
        // --emperor-cap: the bounding set, before any drop (uWSGI's order)
        for cap in &a.cap_drop {
            if libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0) != 0 {
                return fail(10);
            }
        }
        if let Some((o, groups)) = &a.owner {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
                return fail(0);
            }
            if libc::syscall(libc::SYS_setgid, o.gid) != 0 {
                return fail(1);
            }
            if libc::syscall(libc::SYS_setuid, o.uid) != 0 {
                return fail(2);
            }
            // an unprivileged emperor that kept CAP_SETUID/CAP_SETGID (--cap)
            // still holds them after a non-root to non-root setuid: the
            // vassal gives up every capability
            let hdr = CapHeader {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) != 0 {
                return fail(11);
            }
            let dropped = libc::getuid() == o.uid
                && libc::geteuid() == o.uid
                && libc::getgid() == o.gid
                && libc::getegid() == o.gid;
            // a dropped vassal must not be able to become root again
            if !dropped || (o.uid != 0 && libc::syscall(libc::SYS_setuid, 0) == 0) {
                *libc::__errno_location() = libc::EPERM;
                return fail(3);
            }
            // nor through a setuid-root program or file capabilities
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail(8);
            }
        }
        // the open-file limit the emperor started with (only the soft limit
        // differs, and any process may lower its own soft limit)
        if let Some(rl) = &a.nofile {
            if libc::setrlimit(libc::RLIMIT_NOFILE, rl) != 0 {
                return fail(9);
            }
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return fail(4);
        }
        // the emperor may have died between clone and prctl (in a new pid
        // namespace the parent is outside it and getppid() says 0)
        if !a.new_pid_ns && libc::getppid() != a.parent {
            *libc::__errno_location() = libc::ESRCH;
            return fail(5);
        }
        if let Some(dir) = &a.workdir {
            if libc::chdir(dir.as_ptr()) != 0 {
                return fail(6);
            }
        }
        if libc::dup2(a.stdin_fd, 0) < 0 {
            return fail(7);
        }
        if let Some(fd) = a.stdout_fd {
            for target in [1, 2] {
                // dup2 onto itself would leave the close-on-exec flag set
                let r = if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, target)
                };
                if r < 0 {
                    return fail(13);
                }
            }
        }
        // mark every fd from 3 up close-on-exec in one call, then clear the
        // flag on the ones the vassal keeps
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
        if libc::fcntl(a.ctrl_fd, libc::F_SETFD, 0) != 0 {
            return fail(7);
        }
        if let Some(fd) = a.config_fd {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return fail(7);
            }
        }
        for fd in &a.safe_fds {
            if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                return fail(12);
            }
        }
        for (i, prog) in a.programs.iter().enumerate() {
            libc::execvpe(prog.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
            let errno = *libc::__errno_location();
            a.exec_errors[i].store(errno.max(1), Ordering::SeqCst);
        }
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ExitStatus;
    use std::io::Read;
    use std::time::Duration;

    fn req(programs: &[&str], script: &str) -> SpawnRequest {
        SpawnRequest {
            // bash, not dash: dash cannot redirect to fds above 9
            argv: ["bash", "-c", script].iter().map(OsString::from).collect(),
            programs: programs.iter().map(OsString::from).collect(),
            base_env: std::env::vars_os().collect::<Vec<_>>().into(),
            workdir: None,
            owner: None,
            config_pipe: false,
            stdin_socket: None,
            stdout: None,
            cgroup: None,
            join_procs: Vec::new(),
            broodlord_num: None,
            confine: Arc::default(),
        }
    }

    /// Everything the child wrote to its control socket, and its exit.
    fn output(sp: Spawned) -> (String, ExitStatus) {
        let mut out = String::new();
        let mut ctrl = sp.ctrl;
        ctrl.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        ctrl.read_to_string(&mut out).unwrap();
        (out, sp.child.wait_blocking().unwrap())
    }

    #[test]
    fn runs_the_program_from_path_with_the_control_fd() {
        let sp =
            spawn_vassal(req(&["bash"], "printf 'hello' >&$UWSGI_EMPEROR_FD; exit 3")).unwrap();
        assert!(sp.pid > 0);
        assert_eq!(sp.program, OsString::from("bash"));
        assert_eq!(output(sp), ("hello".to_string(), ExitStatus::Code(3)));
    }

    #[test]
    fn falls_back_to_the_next_program() {
        let sp = spawn_vassal(req(&["/nonexistent/imperium-x", "/bin/bash"], "exit 0")).unwrap();
        assert_eq!(sp.program, OsString::from("/bin/bash"));
        assert_eq!(output(sp).1, ExitStatus::Code(0));
    }

    #[test]
    fn reports_every_failed_exec() {
        let err = spawn_vassal(req(&["/nonexistent/a", "/nonexistent/b"], "exit 0")).unwrap_err();
        let SpawnError::Exec(tried) = err else {
            panic!("expected an exec error, got {err}");
        };
        assert_eq!(tried.len(), 2);
        for (_, e) in &tried {
            assert_eq!(e.kind(), io::ErrorKind::NotFound);
        }
        assert_eq!(tried[1].0, OsString::from("/nonexistent/b"));
    }

    #[test]
    fn namespaces_bounding_set_and_safe_fds() {
        // a file the emperor holds open (close-on-exec, as std opens it)
        let f = tempfile::tempfile().unwrap();
        let fd = f.as_raw_fd();
        let mut r = req(
            &["bash"],
            &format!(
                "exec >&$UWSGI_EMPEROR_FD; grep CapBnd /proc/self/status; \
                 grep -o '^ *[a-z0-9]*:' /proc/self/net/dev; [ -e /proc/self/fd/{fd} ] && echo safe-fd-open; echo pid $$"
            ),
        );
        r.confine = Arc::new(Confinement {
            clone_flags: parse_clone_flags("net,uts,pid,ipc,ns").unwrap(),
            // CAP_NET_BIND_SERVICE (10) only, plus CAP_SETPCAP (kept)
            bounding_set: Some(vec![10]),
            safe_fds: vec![fd],
        });
        let (out, st) = output(spawn_vassal(r).unwrap());
        assert_eq!(st, ExitStatus::Code(0), "{out}");
        let bnd = out
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(bnd, (1 << 10) | (1 << 8), "{out}");
        // a new network namespace has only its loopback
        let ifaces: Vec<&str> = out
            .lines()
            .filter_map(|l| l.trim().strip_suffix(':'))
            .collect();
        assert_eq!(ifaces, ["lo"], "{out}");
        assert!(out.contains("safe-fd-open"), "{out}");
        // pid 1 of its own pid namespace
        assert!(out.contains("pid 1\n"), "{out}");
        drop(f);
    }

    #[test]
    fn unsafe_clone_flags_are_refused_with_the_reason() {
        for (list, want) in [
            ("files", "file descriptor table"),
            ("net,parent", "sibling"),
            ("user", "uid/gid maps"),
            ("nett", "unknown namespace"),
        ] {
            let e = parse_clone_flags(list).unwrap_err();
            assert!(e.contains(want), "{list}: {e}");
        }
        assert_eq!(
            parse_clone_flags("ipc, uts").unwrap(),
            libc::CLONE_NEWIPC | libc::CLONE_NEWUTS
        );
    }

    #[test]
    fn a_bad_workdir_is_a_setup_error() {
        let mut r = req(&["/bin/bash"], "exit 0");
        r.workdir = Some(PathBuf::from("/nonexistent/imperium-dir"));
        let err = spawn_vassal(r).unwrap_err();
        assert!(
            matches!(err, SpawnError::Setup { step: "chdir", .. }),
            "{err}"
        );
    }

    /// Waits for the reaper thread (not this test) to see the exit.
    fn exit_seen_by_the_reaper(child: &VassalProcess, within: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        while std::time::Instant::now() < deadline {
            if let std::task::Poll::Ready(st) = child.poll_exit(&mut cx) {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn the_reaper_thread_reaps_vassals_and_leaves_other_children_to_their_owner() {
        // a child of this process that is not a vassal, exited and not
        // reaped yet: it stands first in line for waitid(P_ALL)
        let mut stranger = std::process::Command::new("/bin/true").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let sp = spawn_vassal(req(&["/bin/bash"], "exit 7")).unwrap();
        assert_eq!(
            exit_seen_by_the_reaper(&sp.child, Duration::from_secs(10)),
            Some(ExitStatus::Code(7))
        );
        // the stranger's status was left for its owner
        assert!(stranger.wait().unwrap().success());
        // and with no stranger around, an exit is seen at once
        let sp = spawn_vassal(req(&["/bin/bash"], "kill -9 $$")).unwrap();
        assert_eq!(
            exit_seen_by_the_reaper(&sp.child, Duration::from_secs(10)),
            Some(ExitStatus::Signal(libc::SIGKILL))
        );
    }

    /// A vassal whose main thread ends seconds before its other thread:
    /// the kernel reports the main thread's exit while the process cannot
    /// be reaped yet, and nothing when it can. The reaper still sees the
    /// exit, however it learns of exits here.
    #[test]
    fn a_vassal_whose_main_thread_ends_first_is_reaped_when_its_last_thread_ends() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("late.c");
        let bin = dir.path().join("late");
        std::fs::write(
            &src,
            "#include <pthread.h>\n#include <stdlib.h>\n#include <unistd.h>\n\
             static void *late(void *a) { (void)a; sleep(3); exit(7); }\n\
             int main(void) { pthread_t t; pthread_create(&t, 0, late, 0); pthread_exit(0); }\n",
        )
        .unwrap();
        match std::process::Command::new("cc")
            .arg("-pthread")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status()
        {
            Ok(st) if st.success() => {}
            other => {
                eprintln!("SKIPPED: no C compiler to build the test vassal ({other:?})");
                return;
            }
        }
        let mut r = req(&[bin.to_str().unwrap()], "");
        r.argv = vec![bin.clone().into_os_string()];
        let t = std::time::Instant::now();
        let sp = spawn_vassal(r).unwrap();
        assert_eq!(
            exit_seen_by_the_reaper(&sp.child, Duration::from_secs(10)),
            Some(ExitStatus::Code(7))
        );
        assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[test]
    fn the_child_gets_its_fds_in_the_low_slots_not_a_copy_of_the_table() {
        reserve_spawn_slots();
        let first = slots::Lent::take().expect("slots on this kernel").first() as i32;
        // many fds opened after the slots were reserved: the child's fds
        // are in the slots, below all of them, and it keeps only the table
        // below the slots' end
        let extra: Vec<std::fs::File> = (0..300)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let sp = spawn_vassal(req(
            &["/bin/bash"],
            "exec >&$UWSGI_EMPEROR_FD; echo \"fd=$UWSGI_EMPEROR_FD\"; ls /proc/self/fd | wc -l",
        ))
        .unwrap();
        let (out, st) = output(sp);
        assert_eq!(st, ExitStatus::Code(0), "{out}");
        let fd: i32 = out
            .lines()
            .find_map(|l| l.strip_prefix("fd="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            fd < first,
            "the control socket is fd {fd}, not in a slot (below {first}): {out}"
        );
        // 0, 1, 2, the control socket, and ls's own directory fd
        let open: usize = out.lines().last().unwrap().trim().parse().unwrap();
        assert!(open <= 5, "{out}");
        drop(extra);
    }

    #[test]
    fn kill_and_reap_by_pid() {
        let sp = spawn_vassal(req(&["/bin/bash"], "exec sleep 30")).unwrap();
        assert_eq!(sp.child.try_wait().unwrap(), None);
        sp.child.kill().unwrap();
        assert_eq!(
            sp.child.wait_blocking().unwrap(),
            ExitStatus::Signal(libc::SIGKILL)
        );
        // reaped: no signal can reach whoever reuses the pid
        assert!(sp.child.kill().is_err());
    }

    #[test]
    fn the_child_gets_a_clean_process_state() {
        // an fd without close-on-exec must not leak into the vassal
        let leak = nix::unistd::dup(std::io::stderr()).unwrap();
        // the last command is exec'd by bash itself, so /proc/self/status
        // shows the signal state the vassal process started with
        let script = format!(
            "exec >&$UWSGI_EMPEROR_FD; \
             echo \"cwd=$(pwd -P)\"; \
             [ -e /proc/self/fd/{leak} ] && echo leaked; \
             echo \"stdin=$(readlink /proc/self/fd/0)\"; \
             exec grep -E '^Sig(Blk|Ign)' /proc/self/status",
            leak = leak.as_raw_fd()
        );
        let mut r = req(&["/bin/bash"], &script);
        r.workdir = Some(PathBuf::from("/"));
        let (out, st) = output(spawn_vassal(r).unwrap());
        assert_eq!(st, ExitStatus::Code(0), "{out}");
        assert!(!out.contains("leaked"), "{out}");
        assert!(out.contains("stdin=/dev/null"), "{out}");
        assert!(out.lines().any(|l| l == "cwd=/"), "{out}");
        let field = |name: &str| {
            let hex = out
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {out}"))
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).unwrap()
        };
        assert_eq!(field("SigBlk:"), 0, "no signal stays blocked: {out}");
        let sigpipe = 1u64 << (libc::SIGPIPE - 1);
        assert_eq!(
            field("SigIgn:") & sigpipe,
            0,
            "SIGPIPE is not ignored: {out}"
        );
    }
}

#[cfg(test)]
mod transient_tests {
    use super::*;

    #[test]
    fn resource_errors_are_transient_and_others_are_not() {
        let os = io::Error::from_raw_os_error;
        assert!(SpawnError::Socketpair(os(libc::EMFILE)).is_transient());
        assert!(SpawnError::Clone(os(libc::EAGAIN)).is_transient());
        assert!(SpawnError::Setup {
            step: "set up fds",
            source: os(libc::ENFILE)
        }
        .is_transient());
        assert!(SpawnError::Exec(vec![("uwsgi".into(), os(libc::ENOMEM))]).is_transient());
        // a missing binary is the vassal's problem, even next to a resource error
        assert!(!SpawnError::Exec(vec![
            ("uwsgi".into(), os(libc::ENOENT)),
            ("uwsgi-core".into(), os(libc::EMFILE)),
        ])
        .is_transient());
        assert!(!SpawnError::Exec(vec![]).is_transient());
        assert!(!SpawnError::Setup {
            step: "setuid",
            source: os(libc::EPERM)
        }
        .is_transient());
        assert!(!SpawnError::Nul.is_transient());
    }
}
