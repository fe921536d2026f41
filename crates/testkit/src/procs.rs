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

/// The cgroup v1 `controller` group of process `pid` (a hybrid layout's
/// `/sys/fs/cgroup/<controller>/...`), as a directory.
pub fn v1_group(pid: u32, controller: &str) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })?;
    Some(
        std::path::Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(path.trim_start_matches('/')),
    )
}

/// A number in file `file` of `pid`'s cgroup v1 `controller` group.
pub fn v1_value(pid: u32, controller: &str, file: &str) -> u64 {
    let g = v1_group(pid, controller).unwrap_or_else(|| panic!("no {controller} group for {pid}"));
    std::fs::read_to_string(g.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", g.join(file).display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", g.join(file).display()))
}

/// Whether this machine has the hybrid layout whose cgroup v1
/// `controllers` limit vassals (this project's machines); prints `NOT
/// TESTED` and why otherwise.
pub fn hybrid_v1(controllers: &[&str]) -> bool {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let missing: Vec<&str> = controllers
        .iter()
        .copied()
        .filter(|c| !root.join(c).join("cgroup.procs").exists())
        .collect();
    let ok = missing.is_empty() && root.join("unified").exists();
    if !ok {
        eprintln!("NOT TESTED: needs the cgroup v1 {controllers:?} hierarchies beside a unified one (this project's hybrid machines); missing: {missing:?}");
    }
    ok
}
