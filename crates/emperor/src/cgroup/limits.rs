//! Limits per vassal process (`--vassal-memory-max`,
//! `--vassal-memory-high`, `--vassal-cpu-max`, `--vassal-pids-max`, and a
//! vassal's own `[imperium]` section), through cgroup v2 where the
//! unified hierarchy has the controller, else through cgroup v1.
//!
//! - **v2**: the controller is passed down to the vassals' groups
//!   ([`super::Cgroups::enable`]) and the limit is written into the
//!   process's own group (`ROOT/<name>/i<instance>`) before the process is
//!   created in it.
//! - **v1** (a hybrid layout whose unified hierarchy has no such
//!   controller, as on this project's machines): the process also gets
//!   `V1ROOT/<name>/i<instance>` in that controller's hierarchy, limited
//!   before it starts and joined by the child before it does anything else
//!   ([`super::v1`]).
//!
//! Which one a controller uses is decided when a limit first needs it (at
//! start-up for the emperor-wide limits) and kept.

use std::io;
use std::path::{Path, PathBuf};

use super::{io_err, CgroupError, Cgroups};
use crate::name::VassalName;

/// The limits of a vassal process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// `--vassal-memory-max`: bytes.
    pub memory_max: Option<u64>,
    /// `--vassal-memory-high`: bytes (cgroup v2 only).
    pub memory_high: Option<u64>,
    /// `--vassal-cpu-max`: cores (0.5 is half of one).
    pub cpu_max: Option<f64>,
    /// `--vassal-pids-max`: processes and threads.
    pub pids_max: Option<u64>,
}

// `cpu_max` is always finite and positive ([`Limits::set`]), so equal
// limits have equal bits.
impl Eq for Limits {}

impl std::hash::Hash for Limits {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.memory_max.hash(h);
        self.memory_high.hash(h);
        self.cpu_max.map(f64::to_bits).hash(h);
        self.pids_max.hash(h);
    }
}

/// The limit keys, as an `[imperium]` section and [`Limits::set`] spell
/// them.
pub const KEYS: [&str; 4] = ["memory-max", "memory-high", "cpu-max", "pids-max"];

/// The controllers limits can use.
const CONTROLLERS: [&str; 3] = super::LIMITED;

/// cpu.max's and cpu.cfs_period_us's period, in microseconds.
const CPU_PERIOD: u64 = 100_000;

impl Limits {
    /// These limits, each unset one taken from `defaults`.
    pub fn over(self, defaults: Limits) -> Limits {
        Limits {
            memory_max: self.memory_max.or(defaults.memory_max),
            memory_high: self.memory_high.or(defaults.memory_high),
            cpu_max: self.cpu_max.or(defaults.cpu_max),
            pids_max: self.pids_max.or(defaults.pids_max),
        }
    }

    /// Sets one limit key of a vassal's `[imperium]` section
    /// (`memory-max`, `memory-high`, `cpu-max`, `pids-max`, the values as
    /// for the emperor's options); `Ok(false)` for a key that is not a
    /// limit.
    pub fn set(&mut self, k: &str, v: &str) -> Result<bool, String> {
        match k {
            "memory-max" => self.memory_max = Some(crate::logs::parse_size(v)?),
            "memory-high" => self.memory_high = Some(crate::logs::parse_size(v)?),
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

    /// The limits that are set, as `key = value` lines that [`Limits::set`]
    /// reads back (bytes, cores, processes).
    pub fn lines(&self) -> String {
        let mut out = String::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {v}\n"));
            }
        };
        put("memory-max", self.memory_max.map(|v| v.to_string()));
        put("memory-high", self.memory_high.map(|v| v.to_string()));
        put("cpu-max", self.cpu_max.map(|v| v.to_string()));
        put("pids-max", self.pids_max.map(|v| v.to_string()));
        out
    }

    /// Limits from [`Limits::lines`].
    pub fn from_lines(text: &str) -> Result<Limits, String> {
        let mut l = Limits::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("{line:?} is not key = value"))?;
            if !l.set(k.trim(), v.trim())? {
                return Err(format!("unknown limit {:?}", k.trim()));
            }
        }
        Ok(l)
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        CONTROLLERS.iter().any(|c| self.uses(c))
    }

    /// Whether a limit needs `controller`.
    fn uses(&self, controller: &str) -> bool {
        match controller {
            "memory" => self.memory_max.is_some() || self.memory_high.is_some(),
            "cpu" => self.cpu_max.is_some(),
            "pids" => self.pids_max.is_some(),
            _ => false,
        }
    }

    /// The files (and values) of `controller` in a group of cgroup v2
    /// (`v2`) or v1; a name ending in `?` is written only where the file
    /// exists. v1 has no `memory.high`.
    fn files(
        &self,
        controller: &str,
        v2: bool,
    ) -> Result<Vec<(&'static str, String)>, CgroupError> {
        let mut out = Vec::new();
        match controller {
            "memory" => {
                if let Some(m) = self.memory_max {
                    if v2 {
                        out.push(("memory.max", m.to_string()));
                        // swap does not stretch the limit, where it is accounted
                        out.push(("memory.swap.max?", "0".to_string()));
                    } else {
                        out.push(("memory.limit_in_bytes", m.to_string()));
                        out.push(("memory.memsw.limit_in_bytes?", m.to_string()));
                    }
                }
                if let Some(h) = self.memory_high {
                    if !v2 {
                        return Err(CgroupError::NoHigh);
                    }
                    out.push(("memory.high", h.to_string()));
                }
            }
            "cpu" => {
                if let Some(c) = self.cpu_max {
                    let quota = ((c * CPU_PERIOD as f64).round() as u64).max(1000);
                    if v2 {
                        out.push(("cpu.max", format!("{quota} {CPU_PERIOD}")));
                    } else {
                        out.push(("cpu.cfs_period_us", CPU_PERIOD.to_string()));
                        out.push(("cpu.cfs_quota_us", quota.to_string()));
                    }
                }
            }
            "pids" => {
                if let Some(p) = self.pids_max {
                    out.push(("pids.max", p.to_string()));
                }
            }
            _ => {}
        }
        Ok(out)
    }
}

/// Writes `settings` into `dir`; a name ending in `?` is optional.
pub(super) fn apply(dir: &Path, settings: &[(&'static str, String)]) -> Result<(), CgroupError> {
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

/// Where a controller's limits go.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// Into the process's own group of the unified hierarchy.
    V2,
    /// Into a group of its own under this `V1ROOT` in the controller's v1
    /// hierarchy.
    V1(PathBuf),
}

impl Backend {
    /// `cgroup v2` or `cgroup v1`, for the logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Backend::V2 => "cgroup v2",
            Backend::V1(_) => "cgroup v1",
        }
    }
}

/// The limited groups of one emperor's vassal processes.
#[derive(Debug)]
pub struct LimitGroups {
    /// The emperor-wide limits.
    limits: Limits,
    owner: Option<(Option<u32>, Option<u32>)>,
    /// Where each controller used so far puts its limits.
    backends: std::sync::Mutex<Vec<(&'static str, Backend)>>,
}

impl LimitGroups {
    /// Sets up the emperor-wide `limits` (each must apply: its controller
    /// is set up and a probe group limited once); a vassal's own limits
    /// set up their controller when first needed. `owner`: the uid and gid
    /// the emperor drops to (v1 groups are given to them).
    pub fn setup(
        limits: Limits,
        owner: Option<(Option<u32>, Option<u32>)>,
        cgroups: &Cgroups,
    ) -> Result<LimitGroups, CgroupError> {
        cgroups.prepare_for_limits()?;
        let l = LimitGroups {
            limits,
            owner,
            backends: std::sync::Mutex::default(),
        };
        for controller in CONTROLLERS.into_iter().filter(|c| limits.uses(c)) {
            let backend = l.backend(cgroups, controller)?;
            let settings = limits.files(controller, backend == Backend::V2)?;
            let probe = match &backend {
                Backend::V2 => cgroups.root().join(".probe"),
                Backend::V1(root) => root.join(".probe"),
            };
            let _ = std::fs::create_dir(&probe);
            let set = apply(&probe, &settings);
            let _ = std::fs::remove_dir(&probe);
            set?;
        }
        Ok(l)
    }

    /// Where `controller`'s limits go, decided when first needed: cgroup
    /// v2 where the unified hierarchy can pass it down to the vassals'
    /// groups under `cgroups`, else its v1 hierarchy (made, and given to
    /// the owner).
    pub fn backend(
        &self,
        cgroups: &Cgroups,
        controller: &'static str,
    ) -> Result<Backend, CgroupError> {
        let mut backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, b)) = backends.iter().find(|(c, _)| *c == controller) {
            return Ok(b.clone());
        }
        let b = if cgroups.enable(controller)? {
            Backend::V2
        } else {
            let base = super::v1::base(controller).ok_or_else(|| cgroups.missing(controller))?;
            let root = base.join(format!("imperium-{}", std::process::id()));
            super::make_dir(&root)?;
            super::give(&root, &["cgroup.procs", "tasks"], self.owner)?;
            Backend::V1(root)
        };
        backends.push((controller, b.clone()));
        Ok(b)
    }

    /// The emperor-wide limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Limits the process of `name` whose v2 group is `group` (made by
    /// [`Cgroups::create`], before the process is created in it) with
    /// `own` limits (its `[imperium]` section) over the emperor-wide ones:
    /// v2 limits are written into `group`; for each v1 controller a group
    /// is made and limited, and returned (the child joins each through its
    /// `cgroup.procs`).
    pub fn create(
        &self,
        name: &VassalName,
        instance: u64,
        group: &Path,
        own: Limits,
        cgroups: &Cgroups,
    ) -> io::Result<Vec<PathBuf>> {
        let limits = own.over(self.limits);
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut made = || -> Result<(), CgroupError> {
            let mut v2: Vec<(&str, Vec<(&'static str, String)>)> = Vec::new();
            for controller in CONTROLLERS.into_iter().filter(|c| limits.uses(c)) {
                let backend = self.backend(cgroups, controller)?;
                let settings = limits.files(controller, backend == Backend::V2)?;
                match backend {
                    Backend::V2 => v2.push((controller, settings)),
                    Backend::V1(root) => {
                        let dir = root
                            .join(crate::name::file_safe(name.as_str()))
                            .join(format!("i{instance}"));
                        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                        dirs.push(dir.clone());
                        apply(&dir, &settings)?;
                    }
                }
            }
            if v2.is_empty() {
                return Ok(());
            }
            // the vassal's directory passes the controllers on to its
            // process's group, in one write
            if let Some(parent) = group.parent() {
                let f = parent.join("cgroup.subtree_control");
                let on: Vec<String> = v2.iter().map(|(c, _)| format!("+{c}")).collect();
                std::fs::write(&f, on.join(" ")).map_err(io_err(&f))?;
            }
            for (_, settings) in &v2 {
                apply(group, settings)?;
            }
            Ok(())
        };
        if let Err(e) = made() {
            for d in &dirs {
                let _ = std::fs::remove_dir(d);
            }
            return Err(io::Error::other(e.to_string()));
        }
        Ok(dirs)
    }

    /// Whether the OOM killer killed a process of a reaped process's
    /// groups (its v2 `group`, read only where memory limits go through
    /// v2; its v1 groups `v1`); `None` where none of them can say (no
    /// memory controller covers it), so that an exit costs no read then.
    pub fn oom_killed(&self, group: Option<&Path>, v1: &[PathBuf]) -> Option<bool> {
        let v2 = self
            .backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(c, b)| *c == "memory" && *b == Backend::V2);
        let v2 = group.filter(|_| v2);
        if v2.is_none() && v1.is_empty() {
            return None;
        }
        let kills = v2
            .and_then(|g| super::read_num(&g.join("memory.events"), Some("oom_kill")))
            .unwrap_or(0)
            + v1.iter()
                .filter_map(|g| super::read_num(&g.join("memory.oom_control"), Some("oom_kill")))
                .sum::<u64>();
        Some(kills > 0)
    }

    /// At shutdown: removes every v1 group left (their processes are
    /// gone).
    pub fn finish(&self) {
        for (_, b) in self
            .backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Backend::V1(root) = b {
                super::remove_tree(root, true);
            }
        }
    }
}

impl Drop for LimitGroups {
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
            memory_high: Some(3),
            cpu_max: Some(1.0),
            pids_max: None,
        };
        let own = Limits {
            pids_max: Some(5),
            memory_max: Some(2),
            ..Limits::default()
        };
        assert_eq!(
            own.over(d),
            Limits {
                memory_max: Some(2),
                memory_high: Some(3),
                cpu_max: Some(1.0),
                pids_max: Some(5)
            }
        );
    }

    #[test]
    fn each_hierarchy_gets_its_own_files() {
        let l = Limits {
            memory_max: Some(64 << 20),
            memory_high: None,
            cpu_max: Some(0.5),
            pids_max: Some(7),
        };
        let v2 = |c| l.files(c, true).unwrap();
        let v1 = |c| l.files(c, false).unwrap();
        assert_eq!(
            v2("memory"),
            vec![
                ("memory.max", "67108864".to_string()),
                ("memory.swap.max?", "0".to_string())
            ]
        );
        assert_eq!(v2("cpu"), vec![("cpu.max", "50000 100000".to_string())]);
        assert_eq!(v2("pids"), vec![("pids.max", "7".to_string())]);
        assert_eq!(
            v1("memory")[0],
            ("memory.limit_in_bytes", "67108864".to_string())
        );
        assert_eq!(
            v1("cpu"),
            vec![
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "50000".to_string())
            ]
        );
        // memory.high has no v1 counterpart: an error, never a silent no-op
        let high = Limits {
            memory_high: Some(1 << 20),
            ..Limits::default()
        };
        assert_eq!(
            high.files("memory", true).unwrap(),
            vec![("memory.high", "1048576".to_string())]
        );
        assert!(matches!(
            high.files("memory", false),
            Err(CgroupError::NoHigh)
        ));
        assert!(high.uses("memory") && !high.uses("cpu"));
    }
}
