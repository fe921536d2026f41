//! A spawn that does not copy the emperor's fd table.
//!
//! A child created without `CLONE_FILES` gets a copy of every open fd of
//! the emperor (one or two per running vassal), and its exec then closes
//! them all again: O(vassals) per spawn, O(N²) for a cold start of N. So
//! the child is created sharing the emperor's table (`CLONE_FILES`) and its
//! first system call is `close_range(FIRST, ~0, CLOSE_RANGE_UNSHARE)`: the
//! kernel gives it a private table holding only the fds below `FIRST`
//! (since Linux 5.9 it copies no fd that the call would close), which is a
//! few dozen whatever the number of vassals.
//!
//! The fds the child needs must therefore sit below `FIRST`. At start-up
//! the emperor reserves a few low fd numbers, the *slots* (placeholders on
//! /dev/null); before a spawn the child's fds are duplicated into them
//! (`dup3` replaces a placeholder atomically, close-on-exec so that no
//! other child ever inherits them), and after it the placeholders go back.
//! A spawn whose `--safe-fd`s are not all below `FIRST`, or a kernel
//! without `close_range`, takes the old path (a full copy).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

/// What a child can need: its control socket, its config pipe, its stdin
/// and its stdout.
pub(super) const SLOTS: usize = 4;

/// The reserved numbers, and a /dev/null to put back into them.
#[derive(Debug)]
pub(super) struct Slots {
    held: [OwnedFd; SLOTS],
    null: OwnedFd,
    /// The lowest fd number the child does not keep (above every slot).
    first: libc::c_uint,
}

/// `None` inside: not reserved yet; `Some(None)`: cannot be used here.
static RESERVED: Mutex<Option<Option<Slots>>> = Mutex::new(None);

/// `CLOSE_RANGE_UNSHARE` of linux/close_range.h.
pub(super) const CLOSE_RANGE_UNSHARE: libc::c_uint = 1 << 1;

fn open_null() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/dev/null")?.into())
}

fn reserve_now() -> Option<Slots> {
    // SAFETY: close_range(2) of the range [~0, ~0], which holds no fd, with
    // no flags: a probe of the system call that changes nothing.
    let probe = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::MAX,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if probe != 0 {
        tracing::debug!("close_range is not available: every spawn copies the fd table");
        return None;
    }
    let fds: io::Result<Vec<OwnedFd>> = (0..=SLOTS).map(|_| open_null()).collect();
    let mut fds = match fds {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(
                "cannot reserve fds for spawning ({e}): every spawn copies the fd table"
            );
            return None;
        }
    };
    let first = fds.iter().map(AsRawFd::as_raw_fd).max().unwrap_or(0) + 1;
    let null = fds.pop()?;
    let held: [OwnedFd; SLOTS] = fds.try_into().ok()?;
    Some(Slots {
        held,
        null,
        first: first as libc::c_uint,
    })
}

/// Reserves the slots now (at start-up, while few fds are open, so they
/// are low numbers); a spawn does it on first use otherwise.
pub fn reserve_spawn_slots() {
    let mut r = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
    if r.is_none() {
        *r = Some(reserve_now());
    }
}

/// The slots, lent to one spawn (spawns take turns); the placeholders go
/// back when it is dropped.
pub(super) struct Lent {
    guard: MutexGuard<'static, Option<Option<Slots>>>,
    used: [bool; SLOTS],
}

impl Lent {
    /// The slots for one spawn, or `None` where they cannot be used.
    pub(super) fn take() -> Option<Lent> {
        let mut guard = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(reserve_now());
        }
        guard.as_ref()?.as_ref()?;
        Some(Lent {
            guard,
            used: [false; SLOTS],
        })
    }

    fn slots(&self) -> &Slots {
        match &*self.guard {
            Some(Some(s)) => s,
            // take() returns only with slots
            _ => unreachable!("lent slots exist"),
        }
    }

    /// The first fd number the child does not keep.
    pub(super) fn first(&self) -> libc::c_uint {
        self.slots().first
    }

    /// Duplicates `fd` into slot `i` and returns the slot's number.
    pub(super) fn place(&mut self, i: usize, fd: RawFd) -> io::Result<RawFd> {
        let slot = self.slots().held[i].as_raw_fd();
        // SAFETY: dup3(2) of an fd the caller holds open onto a slot this
        // module owns (an OwnedFd in RESERVED, locked by this Lent): the
        // slot number keeps being owned by that OwnedFd, it only refers to
        // another file until the placeholder is put back.
        if unsafe { libc::dup3(fd, slot, libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.used[i] = true;
        Ok(slot)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let s = self.slots();
        let null = s.null.as_raw_fd();
        for (i, used) in self.used.iter().enumerate() {
            if *used {
                // SAFETY: as in place(): /dev/null back onto an owned slot,
                // which drops this process's reference to the child's fd
                unsafe {
                    libc::dup3(null, s.held[i].as_raw_fd(), libc::O_CLOEXEC);
                }
            }
        }
    }
}
