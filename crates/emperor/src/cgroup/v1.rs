//! cgroup v1 for limits ([`super::limits`]), where the unified hierarchy
//! has no such controller (a v1/v2 hybrid, as on this project's
//! machines).
//!
//! For each such controller in use, each vassal process gets
//! `V1ROOT/<name>/i<instance>` in that controller's hierarchy (`V1ROOT` is
//! the emperor's own group there plus `imperium-<pid>`), with the limit
//! written before the process starts; the child joins every such group
//! before it does anything else. The v2 group (docs/resources.md) still
//! kills what a process leaves behind. A kill by the OOM killer shows in
//! the memory group's `memory.oom_control` (`oom_kill N`), read when the
//! process is reaped.

use std::path::{Path, PathBuf};

/// `V1ROOT` of each of `controllers` that this emperor has made (the root
/// of its limited groups in that hierarchy).
pub fn roots(controllers: &[&'static str]) -> Vec<(&'static str, PathBuf)> {
    controllers
        .iter()
        .filter_map(|c| {
            let root = base(c)?.join(format!("imperium-{}", std::process::id()));
            root.is_dir().then_some((*c, root))
        })
        .collect()
}

/// The limited group under `root` (one of [`roots`]) of the process whose
/// own cgroup is `group` (`ROOT/<name>/i<instance>`): v1 groups are named
/// the same way ([`super::limits::LimitGroups::create`]). `None` when it has none there.
pub fn beside(root: &Path, group: &Path) -> Option<PathBuf> {
    let instance = group.file_name()?;
    let name = group.parent()?.file_name()?;
    let dir = root.join(name).join(instance);
    dir.is_dir().then_some(dir)
}

/// The v1 mount of `controller` and the emperor's own group in it.
pub(super) fn base(controller: &str) -> Option<PathBuf> {
    let (mount, _, _) = super::cgroup_mounts()
        .into_iter()
        .find(|(_, t, opts)| t == "cgroup" && opts.split(',').any(|o| o == controller))?;
    let path = super::own_path(Some(controller))?;
    Some(mount.join(path.trim_start_matches('/')))
}
