//! The emperor's own process: daemonizing, its command line.

use std::ffi::CString;
use std::io;

/// Detaches the calling process from its terminal as uWSGI's `daemonize`
/// does: fork (the parent exits 0 at once), `setsid`, fork again (so the
/// daemon can never reacquire a controlling terminal). Returns in the
/// grandchild. Must be called while the process has a single thread (before
/// any runtime starts), since only the calling thread survives a fork.
pub fn daemonize() -> io::Result<()> {
    for round in 0..2 {
        // SAFETY: the caller guarantees a single-threaded process, so the
        // child cannot inherit a lock held by another thread; the parent
        // leaves with _exit at once (no destructor, no atexit handler, no
        // flush of buffers the child also holds).
        match unsafe { libc::fork() } {
            -1 => return Err(io::Error::last_os_error()),
            0 => {}
            // SAFETY: _exit ends the parent without running destructors or
            // atexit handlers, which belong to the child now
            _ => unsafe { libc::_exit(0) },
        }
        if round == 0 {
            nix::unistd::setsid().map_err(io::Error::from)?;
        }
    }
    Ok(())
}

/// Rewrites the process's command line (what `ps -f`, `pgrep -f` and
/// /proc/PID/cmdline show) to `title`, the way uWSGI's
/// `uwsgi_set_processname` does: the original argv strings are overwritten
/// in place, the rest of their area zeroed, and a title longer than that
/// area is cut to fit. `comm` (`ps -o comm`) is set too (15 bytes).
/// Call it once std has read argv (`std::env::args_os`) for good: later
/// reads see the new title.
pub fn set_cmdline(title: &str) -> io::Result<()> {
    let c = CString::new(title).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::sys::prctl::set_name(&c).map_err(io::Error::from)?;
    // fields 48 and 49 of /proc/self/stat: where the argv strings lie
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
    // after ") " the fields start at number 3
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> io::Result<usize> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
    };
    let (start, end) = (field(48)?, field(49)?);
    if end <= start + 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    let len = end - start;
    let bytes = title.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: [arg_start, arg_end) is this process's own argv string area,
    // mapped read-write on the initial stack for the whole life of the
    // process, which the kernel reports for exactly this purpose. Nothing
    // in Rust holds a reference into it: std copies argv out when
    // `args_os` is called, and the caller has done so. The writes stay
    // inside the area and end with a NUL.
    unsafe {
        let p = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, len - n);
    }
    Ok(())
}
