//! Live figures per vassal (docs/resources.md): resident memory, CPU time
//! and processes, read when an observer asks (never on a timer), off the
//! emperor's loop.
//!
//! With a cgroup per vassal the processes are those of its group
//! (`cgroup.procs`) and the CPU time is the group's (`cpu.stat`
//! `usage_usec`: every process that ever ran in it, the dead included);
//! without, the processes are the vassal's process tree (from /proc) and
//! the CPU time is that of the processes alive now. The resident memory is
//! the sum of each process's resident set (`/proc/PID/statm`; pages shared
//! between a master and its workers count once per process, as `ps` and
//! uwsgitop show them).

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::cgroup::read_num;

/// What one vassal uses now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Its processes.
    pub processes: u32,
    /// The sum of their resident sets, in bytes.
    pub rss_bytes: u64,
    /// CPU time (user + system), in seconds.
    pub cpu_seconds: f64,
    /// The memory its cgroup is charged for now, page cache included
    /// (`memory.current`; v1 `memory.usage_in_bytes`), in bytes: where the
    /// memory controller covers its group (on a v1 host, a vassal with a
    /// memory limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_current_bytes: Option<u64>,
    /// The most its cgroup was ever charged (`memory.peak`; v1
    /// `memory.max_usage_in_bytes`), in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    /// How long its processes were held back by its CPU limit (`cpu.stat`
    /// `throttled_usec`; v1 `throttled_time`), in seconds: where the CPU
    /// controller covers its group (on a v1 host, a vassal with a CPU
    /// limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_seconds: Option<f64>,
}

/// The pages of memory and the clock ticks of this machine.
struct Units {
    page: u64,
    ticks: f64,
}

fn units() -> Units {
    Units {
        page: nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |v| v as u64),
        ticks: nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100.0, |v| v as f64),
    }
}

/// `(ppid, utime + stime in ticks)` of `pid`, from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name is in parentheses and may hold spaces
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after the name: state(0) ppid(1) ... utime(11) stime(12)
    let ppid = f.get(1)?.parse().ok()?;
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, ut + st))
}

fn rss_pages(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Every process's children, read once for all the vassals without a
/// cgroup.
fn children() -> HashMap<u32, Vec<u32>> {
    let mut m: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return m;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, _)) = stat(pid) {
            m.entry(ppid).or_default().push(pid);
        }
    }
    m
}

/// `pid` and its descendants.
fn tree(pid: u32, children: &HashMap<u32, Vec<u32>>) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(cs) = children.get(&out[i]) {
            out.extend(cs);
        }
        i += 1;
    }
    out
}

/// The group's CPU time in seconds (`cpu.stat` `usage_usec`).
fn group_cpu(group: &Path) -> Option<f64> {
    read_num(&group.join("cpu.stat"), Some("usage_usec")).map(|us| us as f64 / 1e6)
}

/// Memory charged now and at most, and CPU throttled time, of the vassal
/// whose cgroup is `group`: from the group itself where its controllers
/// are enabled (v2), else from its limited v1 groups under `v1`.
fn accounted(
    group: &Path,
    v1: &[(&'static str, std::path::PathBuf)],
) -> (Option<u64>, Option<u64>, Option<f64>) {
    let beside = |controller: &str| {
        v1.iter()
            .find(|(c, _)| *c == controller)
            .and_then(|(_, root)| crate::cgroup::v1::beside(root, group))
    };
    let (current, peak) = match read_num(&group.join("memory.current"), None) {
        Some(c) => (Some(c), read_num(&group.join("memory.peak"), None)),
        None => match beside("memory") {
            Some(m) => (
                read_num(&m.join("memory.usage_in_bytes"), None),
                read_num(&m.join("memory.max_usage_in_bytes"), None),
            ),
            None => (None, None),
        },
    };
    let throttled = read_num(&group.join("cpu.stat"), Some("throttled_usec"))
        .map(|us| us as f64 / 1e6)
        .or_else(|| {
            read_num(&beside("cpu")?.join("cpu.stat"), Some("throttled_time"))
                .map(|ns| ns as f64 / 1e9)
        });
    (
        current,
        peak,
        throttled.map(|t| (t * 1000.0).round() / 1000.0),
    )
}

/// Measures every vassal given as `(pid, cgroup)`; `None` for one that has
/// no process now.
pub fn measure(vassals: &[(Option<u32>, Option<&Path>)]) -> Vec<Option<Usage>> {
    let u = units();
    let v1 = if vassals.iter().any(|(_, g)| g.is_some()) {
        crate::cgroup::v1::roots(&["memory", "cpu"])
    } else {
        Vec::new()
    };
    let need_tree = vassals.iter().any(|(p, g)| p.is_some() && g.is_none());
    let children = if need_tree {
        children()
    } else {
        HashMap::new()
    };
    vassals
        .iter()
        .map(|(pid, group)| {
            let pids = match group {
                Some(g) => crate::cgroup::procs(g),
                None => tree((*pid)?, &children),
            };
            if pids.is_empty() && pid.is_none() {
                return None;
            }
            let live: Vec<(u32, u64)> = pids
                .iter()
                .filter_map(|p| stat(*p).map(|(_, t)| (*p, t)))
                .collect();
            let ticks: u64 = live.iter().map(|(_, t)| t).sum();
            let cpu = group.and_then(group_cpu).unwrap_or(ticks as f64 / u.ticks);
            let (memory_current_bytes, memory_peak_bytes, cpu_throttled_seconds) =
                group.map_or((None, None, None), |g| accounted(g, &v1));
            Some(Usage {
                processes: live.len() as u32,
                rss_bytes: live.iter().map(|(p, _)| rss_pages(*p)).sum::<u64>() * u.page,
                cpu_seconds: (cpu * 1000.0).round() / 1000.0,
                memory_current_bytes,
                memory_peak_bytes,
                cpu_throttled_seconds,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured() {
        let me = std::process::id();
        let u = measure(&[(Some(me), None)])[0].expect("measured");
        assert!(u.processes >= 1);
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        let page = units().page;
        // the test harness may run other threads, not processes: the tree
        // is this process alone unless a test spawned children
        assert!(u.rss_bytes >= pages * page / 2, "{u:?}");
        assert_eq!(measure(&[(None, None)]), [None]);
    }
}
