//! Looking at processes through /proc.

use std::time::Duration;

/// True when `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, r)| !r.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The parent pid of `pid`.
pub fn ppid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every live process whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if ppid(p) == Some(pid) && alive(p) {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// `pid` and all its live descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let c = children(out[i]);
        out.extend(c);
        i += 1;
    }
    out.retain(|p| alive(*p));
    out
}

/// The config a vassal process runs: the file name of the first argument
/// of its command line that ends with `.ini` (`emperor://NAME.ini` gives
/// `NAME.ini` too).
pub fn vassal_config(pid: u32) -> Option<String> {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmd.split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .find(|a| a.ends_with(".ini"))
        .and_then(|a| {
            std::path::Path::new(&*a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
}

/// Every live process whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Ok(c) = std::fs::read(format!("/proc/{p}/cmdline")) {
                    let c = String::from_utf8_lossy(&c).replace('\0', " ");
                    if c.contains(needle) && alive(p) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

/// Waits until none of `pids` is alive.
pub fn wait_all_dead(pids: &[u32], timeout: Duration) -> bool {
    crate::servers::wait_until(timeout, || pids.iter().all(|p| !alive(*p)))
}
