//! Reaping vassal processes without holding a descriptor for each.
//!
//! A pidfd per vassal made the emperor hold two fds per running vassal (the
//! pidfd and the control socket), so 10,000 vassals needed 20,000 of the
//! 20,000 open files root gets here. A vassal is a child of the emperor, and
//! the pid of a child that has not been reaped cannot be given to another
//! process: so as long as every reap and every signal to a vassal go
//! through one lock, `kill(pid)` can never reach a stranger, with no
//! descriptor at all.
//!
//! One thread ("imperium-reaper") learns of exits in one of two ways:
//!
//! - **Named by the kernel** (the process connector, see `exits`): where
//!   the emperor is in the initial user and pid namespaces (and, before
//!   Linux 6.6, has `CAP_NET_ADMIN`), the kernel sends a message for each
//!   exit of one of its children, and the thread reaps that child by pid,
//!   which the kernel finds at once: O(1) per exit. A child reported but
//!   not reapable yet (its main thread ended before its other threads, or
//!   a tracer holds it: the kernel sends nothing more when it becomes a
//!   zombie) is looked at again after 1 ms, then at doubling intervals,
//!   then every second until it is gone. If the socket's buffer
//!   overflows, every registered vassal is looked at, then once more a
//!   second later.
//! - **`waitid(P_ALL, WEXITED | WNOWAIT)`** otherwise: it sleeps in the
//!   kernel until some child has exited, without reaping it. The kernel
//!   walks the emperor's list of children on each such wait
//!   (`wait_consider_task`), so each exit costs O(children) of kernel time
//!   in this thread: with 10,000 vassals deleted at once, about 0.5 s of
//!   CPU in all (perf, 2026-12-08). A child that is not ours (a hook run
//!   through `tokio::process`, a `std::process::Command` of a config
//!   reader) is left to its owner, which reaps it by pid; while it
//!   lingers, the thread checks the registered vassals one by one instead,
//!   at growing intervals (10 ms to 1 s), so it neither spins nor misses
//!   an exit.
//!
//! Either way a registered vassal is reaped (by pid, under the lock), its
//! status stored and its task woken: no signal handler, no wake-up while
//! nothing exits. `IMPERIUM_EXIT_WATCH=waitid` in the environment forces
//! the second way (the tests use it to keep both covered).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, Once};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::events::ExitStatus;

/// What a vassal process and the reaper share.
#[derive(Debug, Default)]
struct Exit {
    status: Mutex<Option<ExitStatus>>,
    waker: AtomicWaker,
}

impl Exit {
    fn get(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every vassal process not reaped yet, by pid.
#[derive(Default)]
struct Table {
    live: HashMap<u32, Arc<Exit>>,
    /// Counts registrations, so the thread that found no child at all
    /// knows when to look again.
    registered: u64,
    /// Children the emperor's previous image started that are no vassal
    /// (a hook, a probe still running at a hot upgrade): reaped silently,
    /// since their owner is gone.
    orphans: std::collections::HashSet<u32>,
}

impl Table {
    /// Every child it watches: registered vassals and adopted orphans.
    fn watched(&self) -> Vec<u32> {
        self.live.keys().chain(&self.orphans).copied().collect()
    }
}

/// How many exits of unregistered children are remembered: the hooks and
/// readers the emperor runs, and a vassal that ended before its spawn
/// returned.
const UNKNOWN_KEPT: usize = 256;
/// How long such an exit is taken to be about a process just spawned (an
/// older one is about a pid since reused).
const UNKNOWN_FRESH: Duration = Duration::from_secs(1);

/// What looking at a child found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reap {
    /// Not a registered vassal nor an adopted orphan.
    NotOurs,
    /// Ours and still running (or not yet a zombie).
    Alive,
    /// Ours, and reaped now (or gone).
    Gone,
}

struct Reaper {
    table: Mutex<Table>,
    more: Condvar,
}

static REAPER: LazyLock<Reaper> = LazyLock::new(|| Reaper {
    table: Mutex::new(Table::default()),
    more: Condvar::new(),
});

static THREAD: Once = Once::new();

fn table() -> MutexGuard<'static, Table> {
    REAPER.table.lock().unwrap_or_else(|p| p.into_inner())
}

/// A vassal process: a child of the emperor, reaped by the reaper thread.
#[derive(Debug)]
pub struct VassalProcess {
    pid: u32,
    exit: Arc<Exit>,
}

impl VassalProcess {
    /// Watches the child `pid`, just created by this process. Starts the
    /// reaper thread the first time.
    pub(super) fn register(pid: u32) -> VassalProcess {
        start_thread();
        let exit = Arc::new(Exit::default());
        {
            let mut t = table();
            t.live.insert(pid, exit.clone());
            t.registered += 1;
            // it may have exited already, while the thread took it for a
            // stranger's child (one reported but not reapable yet is
            // found by the thread among the exits it could not place)
            reap_locked(&mut t, pid);
        }
        REAPER.more.notify_all();
        VassalProcess { pid, exit }
    }

    /// Watches `pid`, a child this process had before it re-executed
    /// itself (a hot upgrade). If it has exited meanwhile, it is reaped at
    /// once and its exit is reported like any other.
    pub fn adopt(pid: u32) -> VassalProcess {
        Self::register(pid)
    }

    /// How it ended, once the reaper has reaped it (without reaping).
    pub fn reaped(&self) -> Option<ExitStatus> {
        self.exit.get()
    }

    /// Its pid (always > 0).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How it ended, reaping it now if it has exited (`Ok(None)`: still
    /// running).
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        if let Some(st) = self.exit.get() {
            return Ok(Some(st));
        }
        reap_locked(&mut table(), self.pid);
        Ok(self.exit.get())
    }

    /// Ready with its status once the reaper has reaped it.
    pub fn poll_exit(&self, cx: &mut Context<'_>) -> Poll<ExitStatus> {
        self.exit.waker.register(cx.waker());
        match self.exit.get() {
            Some(st) => Poll::Ready(st),
            None => Poll::Pending,
        }
    }

    /// Waits for it to exit and reaps it, blocking the thread.
    pub fn wait_blocking(&self) -> io::Result<ExitStatus> {
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            // sleeps until it is a zombie, without reaping it; ECHILD: the
            // reaper thread was quicker
            match waitid(
                Id::Pid(Pid::from_raw(self.pid as i32)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            ) {
                Ok(_) | Err(nix::errno::Errno::ECHILD | nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends SIGKILL. Under the reaper's lock, and only while the process
    /// is not reaped: its pid is still its own, so no other process can be
    /// hit. Once it is reaped this fails with ESRCH.
    pub fn kill(&self) -> io::Result<()> {
        let t = table();
        if !t
            .live
            .get(&self.pid)
            .is_some_and(|e| Arc::ptr_eq(e, &self.exit))
        {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        nix::sys::signal::kill(
            Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(io::Error::from)
    }
}

/// Takes over `pids`, children of this process that its previous image
/// started and nobody here owns (a hot upgrade): each is reaped when it
/// exits, and nothing is reported.
pub fn adopt_orphans(pids: impl IntoIterator<Item = u32>) {
    start_thread();
    {
        let mut t = table();
        t.orphans.extend(pids);
        t.registered += 1;
        let all: Vec<u32> = t.orphans.iter().copied().collect();
        for pid in all {
            reap_locked(&mut t, pid);
        }
    }
    REAPER.more.notify_all();
}

/// The children of this process now (every thread's, from /proc).
pub fn children() -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// Reaps `pid` if it is a registered vassal (or an adopted orphan) that
/// has exited.
fn reap_locked(t: &mut Table, pid: u32) -> Reap {
    if t.orphans.contains(&pid) {
        match waitid(
            Id::Pid(Pid::from_raw(pid as i32)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        ) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => return Reap::Alive,
            _ => {
                t.orphans.remove(&pid);
            }
        }
        return Reap::Gone;
    }
    let Some(exit) = t.live.get(&pid) else {
        return Reap::NotOurs;
    };
    let status = match waitid(
        Id::Pid(Pid::from_raw(pid as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
    ) {
        Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::Signal(sig as i32),
        Ok(_) | Err(nix::errno::Errno::EINTR) => return Reap::Alive,
        Err(e) => {
            // not our child any more (nothing else reaps vassals): report
            // it gone rather than wait for ever
            tracing::error!(pid, error = %e, "[emperor] cannot reap vassal process {pid}: {e}");
            ExitStatus::Code(-1)
        }
    };
    let exit = exit.clone();
    t.live.remove(&pid);
    *exit.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    exit.waker.wake();
    Reap::Gone
}

/// While held, no vassal is reaped (nor killed, nor spawned: do neither
/// from the thread that holds it): a hot upgrade writes down which
/// processes have exited and execs with it held, so no exit is recorded
/// in an image that is about to go.
pub struct ReaperFrozen(
    #[allow(dead_code, reason = "held for its lock")] MutexGuard<'static, Table>,
);

/// Stops the reaper until the guard is dropped (see [`ReaperFrozen`]).
pub fn freeze_reaper() -> ReaperFrozen {
    ReaperFrozen(table())
}

fn start_thread() {
    THREAD.call_once(|| {
        let events = if std::env::var_os("IMPERIUM_EXIT_WATCH").is_some_and(|v| v == "waitid") {
            Err(io::Error::other("IMPERIUM_EXIT_WATCH=waitid"))
        } else {
            super::exits::ExitEvents::open()
        };
        let run: Box<dyn FnOnce() + Send> = match events {
            Ok(ev) => {
                tracing::info!("[emperor] vassal exits are named by the kernel (the process connector): O(1) per exit");
                Box::new(move || named_exits_thread(ev))
            }
            Err(e) => {
                tracing::info!(
                    reason = %e,
                    "[emperor] vassal exits are found with waitid(P_ALL), which costs O(vassals) per exit: the process connector cannot be used ({e})"
                );
                Box::new(reaper_thread)
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("imperium-reaper".into())
            .spawn(run)
        {
            // without it exits are still seen by try_wait / wait_blocking,
            // but a running emperor would miss them: that is fatal
            panic!("cannot start the reaper thread: {e}");
        }
    });
}

const FOREIGN_FIRST: Duration = Duration::from_millis(10);
const FOREIGN_MAX: Duration = Duration::from_secs(1);

fn reaper_thread() {
    crate::spawn::block_signals_in_this_thread();
    let mut foreign_wait = FOREIGN_FIRST;
    loop {
        let seen = table().registered;
        match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(st) => {
                let Some(pid) = st.pid() else { continue };
                let pid = pid.as_raw() as u32;
                if reap_locked(&mut table(), pid) != Reap::NotOurs {
                    foreign_wait = FOREIGN_FIRST;
                    continue;
                }
                // a stranger's child stands first in line: leave it to its
                // owner and look at ours one by one meanwhile
                std::thread::sleep(foreign_wait);
                foreign_wait = (foreign_wait * 2).min(FOREIGN_MAX);
                let pids = table().watched();
                for pid in pids {
                    reap_locked(&mut table(), pid);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::ECHILD) => {
                // no child at all: wait for the next vassal
                let mut t = table();
                while t.registered == seen {
                    t = REAPER.more.wait(t).unwrap_or_else(|p| p.into_inner());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "[emperor] waiting for vassal processes failed: {e}");
                std::thread::sleep(FOREIGN_MAX);
            }
        }
    }
}

/// A child reported exited that could not be reaped yet: when to look
/// again.
struct Recheck {
    at: Instant,
    step: Duration,
}

impl Recheck {
    /// The first look, at `at`.
    fn first(at: Instant) -> Recheck {
        Recheck {
            at,
            step: RECHECK_FIRST,
        }
    }
}

const RECHECK_FIRST: Duration = Duration::from_millis(1);
const RECHECK_LAST: Duration = Duration::from_secs(1);

/// The reaper with exits named by the kernel (see the module's doc).
fn named_exits_thread(ev: super::exits::ExitEvents) {
    crate::spawn::block_signals_in_this_thread();
    let me = std::process::id();
    let mut exits = Vec::new();
    let mut again: HashMap<u32, Recheck> = HashMap::new();
    // exits of children that were not registered (yet): the last few,
    // oldest first, looked at while fresh in case one is registered
    // meanwhile (a vassal that ended before its spawn returned and was not
    // reapable yet), at doubling intervals
    let mut unknown: VecDeque<(u32, Instant)> = VecDeque::new();
    let mut unknown_check: Option<Recheck> = None;
    // an exit just before the subscription was not reported: look at
    // whatever registered so far once, shortly after
    let mut sweep_at = Some(Instant::now() + Duration::from_millis(10));
    loop {
        let next = again
            .values()
            .chain(&unknown_check)
            .map(|r| r.at)
            .chain(sweep_at)
            .min();
        let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
        let batch = match ev.wait(timeout, &mut exits) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "[emperor] reading the kernel's exit reports failed: {e}");
                std::thread::sleep(RECHECK_LAST);
                super::exits::Batch::Lost
            }
        };
        let now = Instant::now();
        let mut t = table();
        if batch == super::exits::Batch::Lost || sweep_at.is_some_and(|s| s <= now) {
            sweep_at = None;
            if batch == super::exits::Batch::Lost {
                tracing::warn!("[emperor] exit reports were lost (a burst beyond the socket's buffer): looking at every vassal");
                // and once more, for a vassal reported while its threads
                // were still ending
                sweep_at = Some(now + RECHECK_LAST);
            }
            for pid in t.watched() {
                reap_locked(&mut t, pid);
            }
        }
        for e in exits.drain(..) {
            // a thread of the emperor's (the start-up check), or a thread
            // other than a process's main one: a process with threads left
            // is not reapable, and one whose main thread ended first is
            // looked at every second already
            if e.tgid == me || e.pid != e.tgid {
                continue;
            }
            match reap_locked(&mut t, e.tgid) {
                Reap::Gone => {
                    again.remove(&e.tgid);
                }
                Reap::Alive => {
                    again
                        .entry(e.tgid)
                        .or_insert(Recheck::first(now + RECHECK_FIRST));
                }
                Reap::NotOurs => {
                    if unknown.len() >= UNKNOWN_KEPT {
                        unknown.pop_front();
                    }
                    unknown.push_back((e.tgid, now));
                    // soon, but never later than a check already due
                    let at = unknown_check
                        .as_ref()
                        .map_or(now + RECHECK_FIRST, |c| c.at.min(now + RECHECK_FIRST));
                    unknown_check = Some(Recheck::first(at));
                }
            }
        }
        if let Some(c) = unknown_check.as_mut().filter(|c| c.at <= now) {
            // registered since: looked at like any reported exit; too old
            // to be about a process just spawned: forgotten
            unknown.retain(|&(pid, at)| {
                if t.live.contains_key(&pid) {
                    again.entry(pid).or_insert(Recheck::first(now));
                    return false;
                }
                now.saturating_duration_since(at) < UNKNOWN_FRESH
            });
            c.step *= 2;
            // and a last look when the oldest one turns too old
            c.at = unknown.front().map_or(now + c.step, |&(_, at)| {
                (now + c.step).min(at + UNKNOWN_FRESH)
            });
            if unknown.is_empty() {
                unknown_check = None;
            }
        }
        again.retain(|&pid, r| {
            if r.at > now {
                return true;
            }
            if reap_locked(&mut t, pid) != Reap::Alive {
                return false;
            }
            r.step = (r.step * 2).min(RECHECK_LAST);
            r.at = now + r.step;
            true
        });
    }
}
