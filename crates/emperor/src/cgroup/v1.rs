//! Limits per vassal process through cgroup v1 (`--vassal-memory-max`,
//! `--vassal-cpu-max`, `--vassal-pids-max`), where the unified hierarchy
//! has no controllers (a v1/v2 hybrid, as on this project's machines).
//!
//! For each controller in use, each vassal process gets
//! `V1ROOT/<name>/i<instance>` in that controller's hierarchy (`V1ROOT` is
//! the emperor's own group there plus `imperium-<pid>`), with the limit
//! written before the process starts; the child joins every such group
//! before it does anything else. The v2 group (docs/resources.md) still
//! kills what a process leaves behind. A kill by the OOM killer shows in
//! the memory group's `memory.oom_control` (`oom_kill N`), read when the
//! process is reaped.

use std::io;
use std::path::{Path, PathBuf};

use super::{io_err, CgroupError};
use crate::name::VassalName;

/// The emperor-wide limits of every vassal process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// `--vassal-memory-max`: bytes.
    pub memory_max: Option<u64>,
    /// `--vassal-cpu-max`: cores (0.5 is half of one).
    pub cpu_max: Option<f64>,
    /// `--vassal-pids-max`: processes and threads.
    pub pids_max: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory_max.is_some() || self.cpu_max.is_some() || self.pids_max.is_some()
    }

    /// The files each controller's group gets, and their values.
    fn settings(&self) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
        let mut out = Vec::new();
        if let Some(m) = self.memory_max {
            out.push((
                "memory",
                vec![
                    ("memory.limit_in_bytes", m.to_string()),
                    // swap counted in the same limit, where it is accounted
                    ("memory.memsw.limit_in_bytes?", m.to_string()),
                ],
            ));
        }
        if let Some(c) = self.cpu_max {
            let period = 100_000u64;
            let quota = ((c * period as f64).round() as u64).max(1000);
            out.push((
                "cpu",
                vec![
                    ("cpu.cfs_period_us", period.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            ));
        }
        if let Some(p) = self.pids_max {
            out.push(("pids", vec![("pids.max", p.to_string())]));
        }
        out
    }
}

/// The v1 mount of `controller` and the emperor's own group in it.
fn v1_base(controller: &str) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _src, opts) = (r.next()?, r.next()?, r.next()?);
        if fstype != "cgroup" || !opts.split(',').any(|o| o == controller) {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// One controller's groups.
#[derive(Debug)]
struct Hierarchy {
    root: PathBuf,
    settings: Vec<(&'static str, String)>,
}

impl Hierarchy {
    /// Writes the limits into `dir`; a name ending in `?` is optional.
    fn apply(&self, dir: &Path) -> Result<(), CgroupError> {
        for (file, value) in &self.settings {
            let (file, optional) = match file.strip_suffix('?') {
                Some(f) => (f, true),
                None => (*file, false),
            };
            let f = dir.join(file);
            if optional && !f.exists() {
                continue;
            }
            if let Err(e) = std::fs::write(&f, value) {
                if !optional {
                    return Err(io_err(&f)(e));
                }
            }
        }
        Ok(())
    }
}

/// The limited v1 groups of one emperor.
#[derive(Debug)]
pub struct V1Limits {
    limits: Limits,
    hierarchies: Vec<Hierarchy>,
}

impl V1Limits {
    /// Sets up `limits` (every one must apply: a probe group is made and
    /// limited once); `owner`: the uid and gid the emperor drops to (the
    /// groups are given to them).
    pub fn setup(
        limits: Limits,
        owner: Option<(Option<u32>, Option<u32>)>,
    ) -> Result<V1Limits, CgroupError> {
        let mut hierarchies = Vec::new();
        for (controller, settings) in limits.settings() {
            let base = v1_base(controller).ok_or(CgroupError::NoController(controller))?;
            let root = base.join(format!("imperium-{}", std::process::id()));
            match std::fs::create_dir(&root) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&root)(e)),
            }
            let h = Hierarchy { root, settings };
            let probe = h.root.join(".probe");
            let _ = std::fs::create_dir(&probe);
            let set = h.apply(&probe);
            let _ = std::fs::remove_dir(&probe);
            if let Err(e) = set {
                let _ = std::fs::remove_dir(&h.root);
                return Err(e);
            }
            if let Some((uid, gid)) = owner.filter(|(u, g)| u.is_some() || g.is_some()) {
                let uid = uid.map(nix::unistd::Uid::from_raw);
                let gid = gid.map(nix::unistd::Gid::from_raw);
                for f in ["", "cgroup.procs", "tasks"] {
                    let p = if f.is_empty() {
                        h.root.clone()
                    } else {
                        h.root.join(f)
                    };
                    nix::unistd::chown(&p, uid, gid).map_err(|e| io_err(&p)(e.into()))?;
                }
            }
            hierarchies.push(h);
        }
        Ok(V1Limits {
            limits,
            hierarchies,
        })
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Makes the limited groups of one process of `name`, one per
    /// controller; the child joins each through its `cgroup.procs`.
    pub fn create(&self, name: &VassalName, instance: u64) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for h in &self.hierarchies {
            let dir = h
                .root
                .join(crate::name::file_safe(name.as_str()))
                .join(format!("i{instance}"));
            let made = std::fs::create_dir_all(&dir)
                .and_then(|()| h.apply(&dir).map_err(|e| io::Error::other(e.to_string())));
            if let Err(e) = made {
                for d in dirs.iter().chain([&dir]) {
                    let _ = std::fs::remove_dir(d);
                }
                return Err(e);
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// How many processes of these groups the OOM killer killed.
    pub fn oom_kills(groups: &[PathBuf]) -> u64 {
        groups
            .iter()
            .filter_map(|g| std::fs::read_to_string(g.join("memory.oom_control")).ok())
            .filter_map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// Removes the groups once their processes are gone (after the v2
    /// group's kill), and the vassal's directories when `last`.
    pub fn remove(groups: &[PathBuf], last: bool) {
        for g in groups {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while std::fs::remove_dir(g).is_err()
                && g.exists()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if last {
                if let Some(p) = g.parent() {
                    let _ = std::fs::remove_dir(p);
                }
            }
        }
    }

    /// At shutdown: removes every group left (their processes are gone).
    pub fn finish(&self) {
        for h in &self.hierarchies {
            super::remove_tree(&h.root, true);
        }
    }
}

impl Drop for V1Limits {
    fn drop(&mut self) {
        self.finish();
    }
}
