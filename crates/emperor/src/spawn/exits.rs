//! Exits named by the kernel: the process connector (`cn_proc`).
//!
//! Waiting with `waitid(P_ALL)` makes the kernel walk every child of the
//! emperor at each exit, O(N) per exit. The process connector instead
//! sends a netlink message for each task that exits, with its pid and its
//! parent's: the reaper learns which child exited and reaps it by pid,
//! which the kernel finds at once. A socket filter (classic BPF) drops, in
//! the kernel, every exit whose parent is not the emperor, so the rest of
//! the host's processes cost it nothing and wake nothing.
//!
//! The kernel offers it only to a process with `CAP_NET_ADMIN` in the
//! initial user and pid namespaces (in another pid namespace the pids
//! would not be the emperor's). Whether it works is not guessed: after
//! subscribing, the emperor has a thread of its own exit and waits for
//! that exit's message ([`ExitEvents::open`] fails if it does not come).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `CN_IDX_PROC` and `CN_VAL_PROC` (linux/connector.h).
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN` (linux/cn_proc.h).
const PROC_CN_MCAST_LISTEN: u32 = 1;
/// `PROC_EVENT_EXIT`.
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// `NLMSG_DONE`: the connector sends and takes single-part messages.
const NLMSG_DONE: u16 = 3;

/// Where the fields are in a message: a `struct nlmsghdr` (16 bytes), a
/// `struct cn_msg` (20), then `struct proc_event`: `what` (u32), `cpu`,
/// `timestamp_ns` (u64), then for an exit `process_pid`, `process_tgid`,
/// `exit_code`, `exit_signal`, `parent_pid`, `parent_tgid` (each 32 bits).
const EVENT: usize = 16 + 20;
const WHAT: usize = EVENT;
const PROCESS_PID: usize = EVENT + 16;
const PROCESS_TGID: usize = EVENT + 20;
const PARENT_TGID: usize = EVENT + 36;
const EXIT_LEN: usize = EVENT + 40;

/// How long the check at [`ExitEvents::open`] waits for its own thread's
/// exit to be reported (it comes within microseconds where it works).
const CHECK_WAIT: Duration = Duration::from_millis(250);

/// One exit the kernel reported: a task (`pid`) of the process `tgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TaskExit {
    pub pid: u32,
    pub tgid: u32,
}

/// What one wait for messages brought.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Batch {
    /// These exits (maybe none: the timeout ran out, or another fd woke).
    Exits,
    /// The socket's buffer overflowed: exits were lost, look at every
    /// child the emperor watches.
    Lost,
}

/// A subscription to the process connector's exit messages about the
/// emperor's children.
#[derive(Debug)]
pub(super) struct ExitEvents {
    fd: OwnedFd,
}

/// Reads the exit in one message of the connector (`None`: not an exit,
/// or too short).
pub(super) fn parse_exit(msg: &[u8]) -> Option<TaskExit> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(msg.get(at..at + 4)?.try_into().ok()?))
    };
    if msg.len() < EXIT_LEN || word(WHAT)? != PROC_EVENT_EXIT {
        return None;
    }
    Some(TaskExit {
        pid: word(PROCESS_PID)?,
        tgid: word(PROCESS_TGID)?,
    })
}

/// A 32-bit constant as a classic BPF load (`BPF_LD | BPF_W | BPF_ABS`)
/// sees the same bytes: it reads them in network byte order.
fn as_loaded(v: u32) -> u32 {
    u32::from_be_bytes(v.to_ne_bytes())
}

/// The filter program: keep an exit message whose 32-bit field at `field`
/// is `value`, drop every other message.
fn program(field: usize, value: u32) -> [libc::sock_filter; 6] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    [
        op(load, 0, 0, WHAT as u32),
        op(jeq, 0, 3, as_loaded(PROC_EVENT_EXIT)),
        op(load, 0, 0, field as u32),
        op(jeq, 0, 1, as_loaded(value)),
        op(ret, 0, 0, u32::MAX),
        op(ret, 0, 0, 0),
    ]
}

/// `CAP_NET_ADMIN` (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// True when this process has `CAP_NET_ADMIN` in its effective set (bit 12
/// of `CapEff`): without it the kernel refuses the subscription.
fn has_net_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

impl ExitEvents {
    /// Subscribes to the exits of this process's children and checks that
    /// the messages come, with a thread of its own. The error says why
    /// not (no `CAP_NET_ADMIN`, another pid namespace, no connector in
    /// this kernel).
    pub fn open() -> io::Result<ExitEvents> {
        if !has_net_admin() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the emperor lacks CAP_NET_ADMIN",
            ));
        }
        // SAFETY: socket(2) with constant arguments; the result is checked
        // and owned at once
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and nothing else owns it
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ev = ExitEvents { fd };
        ev.bind()?;
        // room for a burst: 10,000 vassals stopped at once are 10,000
        // messages of about 100 bytes (a lost burst costs one walk of
        // every vassal, not a missed exit)
        ev.set_int(libc::SO_RCVBUFFORCE, 8 << 20)
            .or_else(|_| ev.set_int(libc::SO_RCVBUF, 8 << 20))?;
        let me = std::process::id();
        // first the check: this process's own thread
        ev.filter(PROCESS_TGID, me)?;
        ev.listen()?;
        let tid = std::thread::Builder::new()
            .name("imperium-exits".into())
            .spawn(|| nix::unistd::gettid().as_raw() as u32)?
            .join()
            .map_err(|_| io::Error::other("the check thread panicked"))?;
        ev.await_exit_of(tid)?;
        // then for good: the exits whose parent is this process
        ev.filter(PARENT_TGID, me)?;
        Ok(ev)
    }

    fn bind(&self) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl is valid (its padding included)
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: addr is a sockaddr_nl of the size given, alive for the call
        let r = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_int(&self, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: v is a c_int of the size given, alive for the call
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Replaces the socket's filter (the kernel swaps it atomically).
    fn filter(&self, field: usize, value: u32) -> io::Result<()> {
        let mut prog = program(field, value);
        let fprog = libc::sock_fprog {
            len: prog.len() as libc::c_ushort,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: fprog points at prog, which outlives the call; the
        // kernel copies the program
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Asks for exit messages only (`struct proc_input`: the operation and
    /// the events wanted).
    fn listen(&self) -> io::Result<()> {
        let mut msg = Vec::with_capacity(16 + 20 + 8);
        let total = (16 + 20 + 8) as u32;
        msg.extend_from_slice(&total.to_ne_bytes()); // nlmsg_len
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes()); // nlmsg_type
        msg.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes()); // nlmsg_pid
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes()); // id.idx
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes()); // id.val
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&8u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        msg.extend_from_slice(&PROC_EVENT_EXIT.to_ne_bytes());
        // SAFETY: an all-zero sockaddr_nl is the kernel's address
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: msg and to are valid for the lengths given during the call
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn await_exit_of(&self, tid: u32) -> io::Result<()> {
        let deadline = std::time::Instant::now() + CHECK_WAIT;
        let mut exits = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not report a thread's exit (another pid namespace?)",
                ));
            }
            self.wait(Some(left), None, &mut exits)?;
            if exits.iter().any(|e| e.pid == tid) {
                return Ok(());
            }
            exits.clear();
        }
    }

    /// Waits up to `timeout` (`None`: for ever) for messages, or for `also`
    /// to be readable, and appends every exit read to `out`.
    pub fn wait(
        &self,
        timeout: Option<Duration>,
        also: Option<std::os::fd::BorrowedFd<'_>>,
        out: &mut Vec<TaskExit>,
    ) -> io::Result<Batch> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = match timeout {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d.as_millis().clamp(1, 60_000) as i32)
                .unwrap_or(PollTimeout::MAX),
        };
        let mut fds = vec![PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        if let Some(fd) = also {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: buf is writable for its length during the call
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(Batch::Exits),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => Ok(Batch::Lost),
                    _ => Err(e),
                };
            }
            if let Some(exit) = parse_exit(&buf[..n as usize]) {
                out.push(exit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, pid: u32, tgid: u32, parent_tgid: u32) -> Vec<u8> {
        let mut m = vec![0u8; EXIT_LEN];
        m[WHAT..WHAT + 4].copy_from_slice(&what.to_ne_bytes());
        m[PROCESS_PID..PROCESS_PID + 4].copy_from_slice(&pid.to_ne_bytes());
        m[PROCESS_TGID..PROCESS_TGID + 4].copy_from_slice(&tgid.to_ne_bytes());
        m[PARENT_TGID..PARENT_TGID + 4].copy_from_slice(&parent_tgid.to_ne_bytes());
        m
    }

    #[test]
    fn an_exit_message_is_read_and_anything_else_is_not() {
        let m = message(PROC_EVENT_EXIT, 42, 40, 7);
        assert_eq!(parse_exit(&m), Some(TaskExit { pid: 42, tgid: 40 }));
        assert_eq!(parse_exit(&message(0x1, 42, 40, 7)), None, "a fork");
        assert_eq!(parse_exit(&m[..EXIT_LEN - 1]), None, "truncated");
        assert_eq!(parse_exit(&[]), None);
    }

    #[test]
    fn the_filter_compares_what_a_load_reads() {
        // a load reads 4 bytes as big-endian: the constant must be the
        // value those bytes hold in memory, read that way
        let v = 0x0102_0304u32;
        assert_eq!(as_loaded(v), u32::from_be_bytes(v.to_ne_bytes()));
        let p = program(PARENT_TGID, 77);
        assert_eq!(p[2].k, PARENT_TGID as u32);
        assert_eq!(p[3].k, as_loaded(77));
        assert_eq!(p[4].k, u32::MAX, "keep");
        assert_eq!(p[5].k, 0, "drop");
    }

    #[test]
    fn the_connector_reports_a_child_exit_here_or_says_why_not() {
        let ev = match ExitEvents::open() {
            Ok(ev) => ev,
            Err(e) => {
                eprintln!("SKIPPED: the process connector is not available here: {e}");
                return;
            }
        };
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        let mut exits = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !exits.iter().any(|e: &TaskExit| e.tgid == pid) {
            assert!(std::time::Instant::now() < deadline, "no exit message");
            ev.wait(Some(Duration::from_millis(100)), None, &mut exits)
                .unwrap();
        }
        child.wait().unwrap();
        // a process that is not our child is filtered out in the kernel
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", "/bin/true & echo $!; wait"])
            .output()
            .unwrap();
        let grandchild: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        exits.clear();
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < deadline {
            ev.wait(Some(Duration::from_millis(50)), None, &mut exits)
                .unwrap();
        }
        assert!(
            !exits.iter().any(|e| e.tgid == grandchild),
            "a grandchild's exit passed the filter: {exits:?}"
        );
    }
}
