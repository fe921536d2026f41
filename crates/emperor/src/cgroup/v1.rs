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
    /// These limits, each unset one taken from `defaults`.
    pub fn over(self, defaults: Limits) -> Limits {
        Limits {
            memory_max: self.memory_max.or(defaults.memory_max),
            cpu_max: self.cpu_max.or(defaults.cpu_max),
            pids_max: self.pids_max.or(defaults.pids_max),
        }
    }

    /// Sets one limit key of a vassal's `[imperium]` section
    /// (`memory-max`, `cpu-max`, `pids-max`, the values as for the
    /// emperor's options); `Ok(false)` for a key that is not a limit.
    pub fn set(&mut self, k: &str, v: &str) -> Result<bool, String> {
        match k {
            "memory-max" => self.memory_max = Some(crate::logs::parse_size(v)?),
            "cpu-max" => match v.parse::<f64>() {
                Ok(c) if c.is_finite() && c >= 0.01 => self.cpu_max = Some(c),
                _ => return Err("a number of cores of at least 0.01".into()),
            },
            "pids-max" => match v.parse::<u64>() {
                Ok(p) if p >= 1 => self.pids_max = Some(p),
                _ => return Err("a number of processes of at least 1".into()),
            },
            _ => return Ok(false),
        }
        Ok(true)
    }

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

/// `V1ROOT` of each of `controllers` that this emperor has made (the root
/// of its limited groups in that hierarchy).
pub fn roots(controllers: &[&'static str]) -> Vec<(&'static str, PathBuf)> {
    controllers
        .iter()
        .filter_map(|c| {
            let root = v1_base(c)?.join(format!("imperium-{}", std::process::id()));
            root.is_dir().then_some((*c, root))
        })
        .collect()
}

/// The limited group under `root` (one of [`roots`]) of the process whose
/// own cgroup is `group` (`ROOT/<name>/i<instance>`): v1 groups are named
/// the same way ([`V1Limits::create`]). `None` when it has none there.
pub fn beside(root: &Path, group: &Path) -> Option<PathBuf> {
    let instance = group.file_name()?;
    let name = group.parent()?.file_name()?;
    let dir = root.join(name).join(instance);
    dir.is_dir().then_some(dir)
}

/// The v1 mount of `controller` and the emperor's own group in it.
fn v1_base(controller: &str) -> Option<PathBuf> {
    let (mount, _, _) = super::cgroup_mounts()
        .into_iter()
        .find(|(_, t, opts)| t == "cgroup" && opts.split(',').any(|o| o == controller))?;
    let path = super::own_path(Some(controller))?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// Writes `settings` into `dir`; a name ending in `?` is optional.
fn apply(dir: &Path, settings: &[(&'static str, String)]) -> Result<(), CgroupError> {
    for (file, value) in settings {
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

/// The limited v1 groups of one emperor.
#[derive(Debug)]
pub struct V1Limits {
    /// The emperor-wide limits.
    limits: Limits,
    owner: Option<(Option<u32>, Option<u32>)>,
    /// `V1ROOT` of each controller used so far.
    roots: std::sync::Mutex<Vec<(&'static str, PathBuf)>>,
}

impl V1Limits {
    /// Sets up the emperor-wide `limits` (each must apply: its controller
    /// is set up and a probe group limited once); a vassal's own limits
    /// set up their controller when first needed. `owner`: the uid and gid
    /// the emperor drops to (the groups are given to them).
    pub fn setup(
        limits: Limits,
        owner: Option<(Option<u32>, Option<u32>)>,
    ) -> Result<V1Limits, CgroupError> {
        let l = V1Limits {
            limits,
            owner,
            roots: std::sync::Mutex::default(),
        };
        for (controller, settings) in limits.settings() {
            let root = l.root(controller)?;
            let probe = root.join(".probe");
            let _ = std::fs::create_dir(&probe);
            let set = apply(&probe, &settings);
            let _ = std::fs::remove_dir(&probe);
            set?;
        }
        Ok(l)
    }

    /// `V1ROOT` of `controller`, made (and given to the owner) when first
    /// needed.
    fn root(&self, controller: &'static str) -> Result<PathBuf, CgroupError> {
        let mut roots = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, r)) = roots.iter().find(|(c, _)| *c == controller) {
            return Ok(r.clone());
        }
        let base = v1_base(controller).ok_or(CgroupError::NoController(controller))?;
        let root = base.join(format!("imperium-{}", std::process::id()));
        super::make_dir(&root)?;
        super::give(&root, &["cgroup.procs", "tasks"], self.owner)?;
        roots.push((controller, root.clone()));
        Ok(root)
    }

    /// The emperor-wide limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Makes the limited groups of one process of `name` under `own`
    /// limits (its `[imperium]` section) over the emperor-wide ones, one
    /// group per controller; the child joins each through its
    /// `cgroup.procs`.
    pub fn create(
        &self,
        name: &VassalName,
        instance: u64,
        own: Limits,
    ) -> io::Result<Vec<PathBuf>> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let undo = |dirs: &[PathBuf]| {
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        };
        for (controller, settings) in own.over(self.limits).settings() {
            let made = self.root(controller).and_then(|root| {
                let dir = root
                    .join(crate::name::file_safe(name.as_str()))
                    .join(format!("i{instance}"));
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                dirs.push(dir.clone());
                apply(&dir, &settings)
            });
            if let Err(e) = made {
                undo(&dirs);
                return Err(io::Error::other(e.to_string()));
            }
        }
        Ok(dirs)
    }

    /// How many processes of these groups the OOM killer killed.
    pub fn oom_kills(groups: &[PathBuf]) -> u64 {
        groups
            .iter()
            .filter_map(|g| super::read_num(&g.join("memory.oom_control"), Some("oom_kill")))
            .sum()
    }

    /// At shutdown: removes every group left (their processes are gone).
    pub fn finish(&self) {
        for (_, root) in self.roots.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            super::remove_tree(root, true);
        }
    }
}

impl Drop for V1Limits {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_layer_over_the_defaults() {
        let d = Limits {
            memory_max: Some(1),
            cpu_max: Some(1.0),
            pids_max: None,
        };
        let own = Limits {
            pids_max: Some(5),
            memory_max: Some(2),
            cpu_max: None,
        };
        assert_eq!(
            own.over(d),
            Limits {
                memory_max: Some(2),
                cpu_max: Some(1.0),
                pids_max: Some(5)
            }
        );
    }
}
