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
//! The kernel offers it to a process in the initial user and pid
//! namespaces (in another pid namespace the pids would not be the
//! emperor's); before Linux 6.6 the process also needs `CAP_NET_ADMIN`.
//! Whether it works is not guessed: the emperor subscribes, and requires
//! the kernel's acknowledgement of its own subscription (error 0) and the
//! message for the exit of a thread of its own ([`ExitEvents::open`]
//! fails if either does not come).

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
/// `PROC_EVENT_NONE`: the kernel's acknowledgement of a subscription.
const PROC_EVENT_NONE: u32 = 0;
/// `NLMSG_DONE`: the connector sends and takes single-part messages.
const NLMSG_DONE: u16 = 3;

/// Where the fields are in a message: a `struct nlmsghdr` (16 bytes), a
/// `struct cn_msg` (20), then `struct proc_event`: `what` (u32), `cpu`,
/// `timestamp_ns` (u64), then for an exit `process_pid`, `process_tgid`,
/// `exit_code`, `exit_signal`, `parent_pid`, `parent_tgid` (each 32 bits).
const EVENT: usize = 16 + 20;
/// `cn_msg.ack`: the acknowledgement's number (the request's plus one).
const ACK: usize = 16 + 12;
const WHAT: usize = EVENT;
/// `event_data.ack.err` of an acknowledgement.
const ACK_ERR: usize = EVENT + 16;
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

/// One message of the connector, as far as the emperor reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Message {
    Exit(TaskExit),
    /// The acknowledgement of a subscription: its number and the error.
    Ack {
        ack: u32,
        err: u32,
    },
}

fn word(msg: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(msg.get(at..at + 4)?.try_into().ok()?))
}

/// Reads one message of the connector (`None`: neither an exit nor an
/// acknowledgement, or too short).
pub(super) fn parse(msg: &[u8]) -> Option<Message> {
    if msg.len() < EXIT_LEN {
        return None;
    }
    match word(msg, WHAT)? {
        PROC_EVENT_EXIT => Some(Message::Exit(TaskExit {
            pid: word(msg, PROCESS_PID)?,
            tgid: word(msg, PROCESS_TGID)?,
        })),
        PROC_EVENT_NONE => Some(Message::Ack {
            ack: word(msg, ACK)?,
            err: word(msg, ACK_ERR)?,
        }),
        _ => None,
    }
}

/// A 32-bit constant as a classic BPF load (`BPF_LD | BPF_W | BPF_ABS`)
/// sees the same bytes: it reads them in network byte order.
fn as_loaded(v: u32) -> u32 {
    u32::from_be_bytes(v.to_ne_bytes())
}

/// The filter program: keep an exit message whose 32-bit field at `field`
/// is `value` (and, with `acks`, every acknowledgement), drop every other
/// message.
fn program(field: usize, value: u32, acks: bool) -> [libc::sock_filter; 7] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    // an acknowledgement jumps to "keep", or (without acks) compares
    // with a value `what` never has
    let ack = if acks { PROC_EVENT_NONE } else { u32::MAX };
    [
        op(load, 0, 0, WHAT as u32),
        op(jeq, 3, 0, as_loaded(ack)),
        op(jeq, 0, 3, as_loaded(PROC_EVENT_EXIT)),
        op(load, 0, 0, field as u32),
        op(jeq, 0, 1, as_loaded(value)),
        op(ret, 0, 0, u32::MAX),
        op(ret, 0, 0, 0),
    ]
}

/// The inode numbers of the initial user and pid namespaces (the kernel's
/// `PROC_USER_INIT_INO` and `PROC_PID_INIT_INO`, fixed).
const INIT_USER_NS: &str = "user:[4026531837]";
const INIT_PID_NS: &str = "pid:[4026531836]";

/// Why this process cannot use the connector, if it is plainly so: it is
/// not in the initial user and pid namespaces (a container), where the
/// kernel ignores the subscription without a word.
fn outside_initial_namespaces() -> Option<String> {
    for (ns, init) in [("user", INIT_USER_NS), ("pid", INIT_PID_NS)] {
        let path = format!("/proc/self/ns/{ns}");
        match std::fs::read_link(&path) {
            Ok(l) if l.as_os_str() == init => {}
            Ok(l) => {
                return Some(format!(
                    "the emperor is not in the initial {ns} namespace ({})",
                    l.display()
                ))
            }
            Err(e) => return Some(format!("cannot read {path}: {e}")),
        }
    }
    None
}

impl ExitEvents {
    /// Subscribes to the exits of this process's children and checks that
    /// the messages come, with a thread of its own. The error says why
    /// not (another namespace, no `CAP_NET_ADMIN` before Linux 6.6, no
    /// connector in this kernel).
    pub fn open() -> io::Result<ExitEvents> {
        if let Some(why) = outside_initial_namespaces() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, why));
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
        // messages, each charged to the buffer at several hundred bytes
        // (a lost burst costs one walk of every vassal, not a missed exit)
        {
            use nix::sys::socket::{setsockopt, sockopt};
            setsockopt(&ev.fd, sockopt::RcvBufForce, &(8 << 20))
                .or_else(|_| setsockopt(&ev.fd, sockopt::RcvBuf, &(8 << 20)))?;
        }
        let me = std::process::id();
        // first the check: the acknowledgement, and this process's own
        // thread
        ev.filter(PROCESS_TGID, me, true)?;
        let ack = me ^ 0x5a5a_0000;
        ev.listen(ack)?;
        let tid = std::thread::Builder::new()
            .name("imperium-exits".into())
            .spawn(|| nix::unistd::gettid().as_raw() as u32)?
            .join()
            .map_err(|_| io::Error::other("the check thread panicked"))?;
        ev.check(ack.wrapping_add(1), tid)?;
        // then for good: the exits whose parent is this process
        ev.filter(PARENT_TGID, me, false)?;
        Ok(ev)
    }

    fn bind(&self) -> io::Result<()> {
        let addr = nix::sys::socket::NetlinkAddr::new(0, CN_IDX_PROC);
        nix::sys::socket::bind(self.fd.as_raw_fd(), &addr)?;
        Ok(())
    }

    /// Replaces the socket's filter (the kernel swaps it atomically).
    fn filter(&self, field: usize, value: u32, acks: bool) -> io::Result<()> {
        let mut prog = program(field, value, acks);
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

    /// Subscribes, in the form every kernel takes (the operation alone:
    /// Linux 6.6 also takes the events wanted after it, older kernels
    /// ignore a request of any other length). The filter drops what is not
    /// an exit. `ack` numbers the request.
    fn listen(&self, ack: u32) -> io::Result<()> {
        let mut msg = Vec::with_capacity(16 + 20 + 4);
        let total = (16 + 20 + 4) as u32;
        msg.extend_from_slice(&total.to_ne_bytes()); // nlmsg_len
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes()); // nlmsg_type
        msg.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes()); // nlmsg_pid
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes()); // id.idx
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes()); // id.val
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&ack.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // to the kernel
        let to = nix::sys::socket::NetlinkAddr::new(0, 0);
        nix::sys::socket::sendto(
            self.fd.as_raw_fd(),
            &msg,
            &to,
            nix::sys::socket::MsgFlags::empty(),
        )?;
        Ok(())
    }

    /// Waits for the acknowledgement numbered `ack` and for the exit of
    /// the thread `tid`.
    fn check(&self, ack: u32, tid: u32) -> io::Result<()> {
        let deadline = std::time::Instant::now() + CHECK_WAIT;
        let (mut acked, mut exited) = (false, false);
        while !(acked && exited) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    if acked {
                        "the kernel acknowledged the subscription but did not report a thread's exit"
                    } else {
                        "the kernel did not acknowledge the subscription"
                    },
                ));
            }
            self.poll(Some(left))?;
            let mut failed = None;
            self.read_all(|m| match m {
                Message::Ack { ack: a, err } if a == ack => {
                    acked = true;
                    if err != 0 {
                        failed = Some(err);
                    }
                }
                Message::Exit(e) if e.pid == tid => exited = true,
                _ => {}
            })?;
            if let Some(err) = failed {
                return Err(io::Error::from_raw_os_error(err as i32));
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` (`None`: for ever) for messages, and appends
    /// every exit read to `out`.
    pub fn wait(&self, timeout: Option<Duration>, out: &mut Vec<TaskExit>) -> io::Result<Batch> {
        self.poll(timeout)?;
        self.read_all(|m| {
            if let Message::Exit(e) = m {
                out.push(e);
            }
        })
    }

    fn poll(&self, timeout: Option<Duration>) -> io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = match timeout {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d.as_millis().clamp(1, 60_000) as i32)
                .unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads every message queued, without waiting.
    fn read_all(&self, mut each: impl FnMut(Message)) -> io::Result<Batch> {
        let mut buf = [0u8; 4096];
        loop {
            use nix::errno::Errno;
            use nix::sys::socket::{recv, MsgFlags};
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    if let Some(m) = parse(&buf[..n]) {
                        each(m);
                    }
                }
                Err(Errno::EAGAIN) => return Ok(Batch::Exits),
                Err(Errno::EINTR) => {}
                Err(Errno::ENOBUFS) => return Ok(Batch::Lost),
                Err(e) => return Err(e.into()),
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
    fn exit_and_acknowledgement_messages_are_read_and_anything_else_is_not() {
        let m = message(PROC_EVENT_EXIT, 42, 40, 7);
        assert_eq!(
            parse(&m),
            Some(Message::Exit(TaskExit { pid: 42, tgid: 40 }))
        );
        assert_eq!(parse(&message(0x1, 42, 40, 7)), None, "a fork");
        assert_eq!(parse(&m[..EXIT_LEN - 1]), None, "truncated");
        assert_eq!(parse(&[]), None);
        let mut ack = message(PROC_EVENT_NONE, 0, 0, 0);
        ack[ACK..ACK + 4].copy_from_slice(&9u32.to_ne_bytes());
        ack[ACK_ERR..ACK_ERR + 4].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(parse(&ack), Some(Message::Ack { ack: 9, err: 1 }));
    }

    /// Runs a classic BPF program of loads, equality jumps and returns on
    /// `msg`, as the kernel would (big-endian loads).
    fn run(prog: &[libc::sock_filter], msg: &[u8]) -> u32 {
        let mut a = 0u32;
        let mut pc = 0;
        loop {
            let i = prog[pc];
            let code = i.code as u32;
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                let at = i.k as usize;
                a = u32::from_be_bytes(msg[at..at + 4].try_into().unwrap());
                pc += 1;
            } else if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
                pc += 1 + if a == i.k { i.jt } else { i.jf } as usize;
            } else if code == libc::BPF_RET | libc::BPF_K {
                return i.k;
            } else {
                panic!("unexpected instruction {code:#x}");
            }
        }
    }

    #[test]
    fn the_filter_keeps_the_exits_of_the_children_and_drops_the_rest() {
        #[cfg(target_endian = "little")]
        assert_eq!(as_loaded(0x8000_0000), 0x80);
        let keep = |p: &[libc::sock_filter], m: &[u8]| run(p, m) != 0;
        let children = program(PARENT_TGID, 77, false);
        assert!(keep(&children, &message(PROC_EVENT_EXIT, 5, 5, 77)));
        assert!(
            !keep(&children, &message(PROC_EVENT_EXIT, 5, 5, 78)),
            "another's child"
        );
        assert!(!keep(&children, &message(0x1, 5, 5, 77)), "a fork");
        assert!(
            !keep(&children, &message(PROC_EVENT_NONE, 0, 0, 0)),
            "an ack"
        );
        let check = program(PROCESS_TGID, 77, true);
        assert!(
            keep(&check, &message(PROC_EVENT_EXIT, 80, 77, 1)),
            "our thread"
        );
        assert!(!keep(&check, &message(PROC_EVENT_EXIT, 80, 79, 77)));
        assert!(keep(&check, &message(PROC_EVENT_NONE, 0, 0, 0)), "an ack");
    }

    /// The connector must work here when the kernel has it and this test
    /// is root in the initial namespaces.
    fn connector_expected() -> bool {
        std::fs::read_to_string("/proc/net/connector").is_ok_and(|s| s.contains("cn_proc"))
            && outside_initial_namespaces().is_none()
            && nix::unistd::geteuid().is_root()
    }

    #[test]
    fn the_connector_reports_a_child_exit_here_or_says_why_not() {
        let ev = match ExitEvents::open() {
            Ok(ev) => ev,
            Err(e) => {
                assert!(
                    !connector_expected(),
                    "root in the initial namespaces, yet: {e}"
                );
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
            ev.wait(Some(Duration::from_millis(100)), &mut exits)
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
            ev.wait(Some(Duration::from_millis(50)), &mut exits)
                .unwrap();
        }
        assert!(
            !exits.iter().any(|e| e.tgid == grandchild),
            "a grandchild's exit passed the filter: {exits:?}"
        );
    }
}
