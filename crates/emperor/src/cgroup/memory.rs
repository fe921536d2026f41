//! `--vassal-memory-max`: a memory limit per vassal process, and OOM kills
//! reported as such.
//!
//! Where the unified hierarchy has no memory controller (a v1/v2 hybrid,
//! as on this project's machines) the limit is set through cgroup v1's
//! memory hierarchy: each vassal process gets `V1ROOT/<name>/i<instance>`
//! with `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`, so
//! swap does not stretch it, where the kernel accounts swap), joined by the
//! child before it execs. A kill by the OOM killer shows in the group's
//! `memory.oom_control` (`oom_kill N`), read when the process is reaped.

use std::io;
use std::path::{Path, PathBuf};

use super::{io_err, CgroupError};
use crate::name::VassalName;

/// The memory controller's v1 mount and the emperor's own group in it.
fn v1_memory_base() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _src, opts) = (r.next()?, r.next()?, r.next()?);
        if fstype != "cgroup" || !opts.split(',').any(|o| o == "memory") {
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
            .any(|c| c == "memory")
            .then(|| path.to_string())
    })?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// The memory groups of one emperor.
#[derive(Debug)]
pub struct MemoryLimit {
    root: PathBuf,
    max: u64,
}

impl MemoryLimit {
    /// Sets up a limit of `max` bytes per vassal process; `owner`: the
    /// uid and gid the emperor drops to (the groups are given to them).
    pub fn setup(
        max: u64,
        owner: Option<(Option<u32>, Option<u32>)>,
    ) -> Result<MemoryLimit, CgroupError> {
        let base = v1_memory_base().ok_or(CgroupError::NoMemory)?;
        let root = base.join(format!("imperium-{}", std::process::id()));
        match std::fs::create_dir(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&root)(e)),
        }
        let m = MemoryLimit { root, max };
        // the limit must take: checked once on a probe group
        let probe = m.root.join(".probe");
        let _ = std::fs::create_dir(&probe);
        let set = m.limit(&probe);
        let _ = std::fs::remove_dir(&probe);
        set?;
        if let Some((uid, gid)) = owner.filter(|(u, g)| u.is_some() || g.is_some()) {
            let uid = uid.map(nix::unistd::Uid::from_raw);
            let gid = gid.map(nix::unistd::Gid::from_raw);
            for f in ["", "cgroup.procs", "tasks"] {
                let p = if f.is_empty() {
                    m.root.clone()
                } else {
                    m.root.join(f)
                };
                nix::unistd::chown(&p, uid, gid).map_err(|e| io_err(&p)(e.into()))?;
            }
        }
        Ok(m)
    }

    /// The limit in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }

    fn limit(&self, dir: &Path) -> Result<(), CgroupError> {
        let f = dir.join("memory.limit_in_bytes");
        std::fs::write(&f, self.max.to_string()).map_err(io_err(&f))?;
        // swap counted in the same limit, where the kernel accounts it
        let sw = dir.join("memory.memsw.limit_in_bytes");
        if sw.exists() {
            let _ = std::fs::write(&sw, self.max.to_string());
        }
        Ok(())
    }

    /// Makes the limited group of one process of `name`; the child joins
    /// it by writing to the returned `cgroup.procs`.
    pub fn create(&self, name: &VassalName, instance: u64) -> io::Result<PathBuf> {
        let dir = self
            .root
            .join(crate::name::file_safe(name.as_str()))
            .join(format!("i{instance}"));
        std::fs::create_dir_all(&dir)?;
        self.limit(&dir)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(dir)
    }

    /// How many processes of the group the OOM killer killed.
    pub fn oom_kills(group: &Path) -> u64 {
        std::fs::read_to_string(group.join("memory.oom_control"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Removes a group once its processes are gone (after the v2 group's
    /// kill), and the vassal's directory when `last`.
    pub fn remove(group: &Path, last: bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::fs::remove_dir(group).is_err()
            && group.exists()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if last {
            if let Some(p) = group.parent() {
                let _ = std::fs::remove_dir(p);
            }
        }
    }

    /// At shutdown: removes every group left (their processes are gone).
    pub fn finish(&self) {
        super::remove_tree(&self.root, true);
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        super::remove_tree(&self.root, true);
    }
}
