//! A cgroup per vassal process (`--vassal-cgroup`, docs/resources.md), so
//! that stopping a vassal reaches every process it left behind: a
//! double-forked grandchild, a spooler, an app's subprocess.
//!
//! Each process of a vassal is created in a group of its own of the
//! unified (v2) hierarchy, `ROOT/<name>/i<instance>`
//! (`clone3(CLONE_INTO_CGROUP)`, so no vassal code ever runs outside it).
//! When that process has been reaped, whatever is left in its group is
//! killed with `cgroup.kill` and the group is removed once empty. A
//! SIGKILL from the emperor (curse tolerance, heartbeat, the end of the
//! mercy at shutdown) goes to the whole group. At shutdown every group
//! left is killed and removed.
//!
//! `ROOT` is the emperor's own cgroup plus `imperium-<pid>` in `auto` mode,
//! or the directory given with `--vassal-cgroup PATH` (created if missing;
//! it must be inside a cgroup2 mount). Groups are made by the emperor
//! before any privilege drop matters (the emperor runs as root to manage
//! them) and are owned by root, so a tyrant vassal can neither move itself
//! out nor write its group's files.
//!
//! Limits ([`limits`]) pass controllers down to the groups where the
//! unified hierarchy has them ([`Cgroups::enable`]); the emperor then
//! moves itself into a leaf of its own first (`ROOT/.emperor`), as
//! cgroup v2's no-internal-process rule asks.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::name::VassalName;

pub mod limits;
pub mod v1;

/// Where vassal cgroups are made (`--vassal-cgroup`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// No cgroups.
    #[default]
    Off,
    /// Under the emperor's own cgroup of the unified hierarchy, when it can
    /// be written; off (with one log line saying why) otherwise.
    Auto,
    /// Under this directory of a cgroup2 mount (an error when it cannot be
    /// used).
    Path(PathBuf),
}

impl std::str::FromStr for CgroupMode {
    type Err = String;

    fn from_str(s: &str) -> Result<CgroupMode, String> {
        match s {
            "off" => Ok(CgroupMode::Off),
            "auto" => Ok(CgroupMode::Auto),
            p if p.starts_with('/') => Ok(CgroupMode::Path(PathBuf::from(p))),
            _ => Err(format!(
                "{s:?}: expected auto, off, or an absolute path inside a cgroup2 mount"
            )),
        }
    }
}

/// Why the vassal cgroups cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 (unified) hierarchy is mounted.
    #[error("no cgroup2 (unified) hierarchy is mounted")]
    NoUnified,
    /// The path is not inside a cgroup2 mount.
    #[error("{0} is not inside a cgroup2 mount")]
    NotCgroup2(PathBuf),
    /// A cgroup file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The path holds the emperor's own cgroup.
    #[error("{0} holds the emperor's own cgroup; give a directory that does not (for example a new subdirectory of it)")]
    HoldsEmperor(PathBuf),
    /// Starting a process in a cgroup is implemented for x86_64 only.
    #[error("starting a vassal in its cgroup (clone3 with CLONE_INTO_CGROUP) is implemented for x86_64 only")]
    Arch,
    /// No controller for a limit.
    #[error("no {0} controller can limit vassals here: none in the unified hierarchy, and no cgroup v1 {0} hierarchy mounted")]
    NoController(&'static str),
    /// The unified hierarchy has the controller, but not for the
    /// emperor's group.
    #[error("the {controller} controller is in the unified hierarchy at {}, but is not passed down to {}, the group that holds the vassals' groups (in auto mode the emperor's own; under systemd: Delegate=yes in the unit; else write +{controller} into cgroup.subtree_control of each group in between)", above.display(), group.display())]
    NotDelegated {
        /// The controller.
        controller: &'static str,
        /// The nearest group above that has it.
        above: PathBuf,
        /// The group that would have to pass it to the vassals' groups.
        group: PathBuf,
    },
    /// `memory.high` has no cgroup v1 counterpart.
    #[error("--vassal-memory-high (memory-high) needs cgroup v2's memory controller (memory.high); here the memory controller is cgroup v1's, which has no such limit (use --vassal-memory-max)")]
    NoHigh,
    /// A controller could not be passed down to the vassals' groups.
    #[error("cannot pass the {controller} controller down to the vassals' groups from {}: {source}{}", dir.display(), busy_hint(source))]
    PassDown {
        /// The controller.
        controller: &'static str,
        /// The group whose `cgroup.subtree_control` refused it.
        dir: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel has no `cgroup.kill` (Linux 5.14).
    #[error("this kernel has no cgroup.kill (Linux 5.14 or later is needed)")]
    NoKill,
}

/// What an EBUSY from `cgroup.subtree_control` means.
fn busy_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(nix::libc::EBUSY) {
        " (other processes are in that group, and cgroup v2 lets a group with processes of its own pass no controller to its children: run the emperor in a cgroup of its own, as systemd does with Delegate=yes, contrib/imperium.service)"
    } else {
        ""
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cgroup file systems mounted here (from /proc/self/mountinfo): the
/// mount point, the type (`cgroup2` or `cgroup`) and the super options
/// (which name a v1 hierarchy's controllers).
fn cgroup_mounts() -> Vec<(PathBuf, String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPEROPTS
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split_whitespace();
            let (fstype, _source, opts) = (r.next()?, r.next()?, r.next().unwrap_or(""));
            let mp = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| {
                (
                    PathBuf::from(unescape_mount(mp)),
                    fstype.to_string(),
                    opts.to_string(),
                )
            })
        })
        .collect()
}

/// The mount points of cgroup2 file systems.
fn cgroup2_mounts() -> Vec<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .filter(|(_, t, _)| t == "cgroup2")
        .map(|(mp, _, _)| mp)
        .collect()
}

/// The emperor's own group (from /proc/self/cgroup) in the unified
/// hierarchy (`controller` `None`: the `0::PATH` line) or in the v1
/// hierarchy of `controller`.
fn own_path(controller: Option<&str>) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match controller {
            None => id == "0" && ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_string())
    })
}

/// The controllers limits use.
const LIMITED: [&str; 3] = ["memory", "cpu", "pids"];

/// Whether `dir` is the root of its cgroup2 hierarchy, which the
/// no-internal-process rule exempts (it has no `cgroup.type`; a cgroup
/// namespace's root, as in a container, has one and is not exempt).
fn is_top(dir: &Path) -> bool {
    !dir.join("cgroup.type").exists()
}

/// Whether the list file `file` of group `dir` (`cgroup.controllers`,
/// `cgroup.subtree_control`) names `controller`.
fn lists(dir: &Path, file: &str, controller: &str) -> bool {
    std::fs::read_to_string(dir.join(file))
        .is_ok_and(|t| t.split_whitespace().any(|c| c == controller))
}

/// The emperor's own group in the unified hierarchy, as a directory.
fn own_dir() -> Option<PathBuf> {
    let mount = cgroup2_mounts().into_iter().next()?;
    Some(mount.join(own_path(None)?.trim_start_matches('/')))
}

/// Makes `dir` (one level), which may exist already.
fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    mkdir(dir).map_err(io_err(dir))
}

/// `mkdir` of one level; a directory that exists already is fine.
fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Gives `dir` and its `files` to the uid and gid the emperor drops to
/// (nothing when it keeps its own).
fn give(
    dir: &Path,
    files: &[&str],
    owner: Option<(Option<u32>, Option<u32>)>,
) -> Result<(), CgroupError> {
    let Some((uid, gid)) = owner.filter(|(u, g)| u.is_some() || g.is_some()) else {
        return Ok(());
    };
    let uid = uid.map(nix::unistd::Uid::from_raw);
    let gid = gid.map(nix::unistd::Gid::from_raw);
    for p in std::iter::once(dir.to_path_buf()).chain(files.iter().map(|f| dir.join(f))) {
        nix::unistd::chown(&p, uid, gid).map_err(|e| io_err(&p)(e.into()))?;
    }
    Ok(())
}

/// Removes a reaped process's group (v2 or v1) once its killed processes
/// are gone (rmdir refuses a populated group), waiting at most `wait`; and
/// the vassal's directory when `last` (it left the table; that fails,
/// harmlessly, when a new vassal of that name has started meanwhile).
fn remove_group(group: &Path, last: bool, wait: Duration) {
    let deadline = Instant::now() + wait;
    while std::fs::remove_dir(group).is_err() && group.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if last {
        if let Some(parent) = group.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The vassal cgroups of one emperor.
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
    /// `auto`: the root was made by this emperor and goes with it.
    owned_root: bool,
    /// Where reaped groups go to be removed (see [`Cgroups::sweep`]), and
    /// groups of spawns to come to be made (see [`Cgroups::prepare`]).
    workers: Workers,
    /// The controllers this emperor passed down from `ROOT`'s parent
    /// ([`Cgroups::enable`]), taken back at [`Cgroups::finish`].
    passed: std::sync::Mutex<Vec<&'static str>>,
    /// The group the emperor left for `ROOT/.emperor` to pass controllers
    /// down, returned to at [`Cgroups::finish`].
    left: std::sync::Mutex<Option<PathBuf>>,
}

/// A reaped process's groups, to be removed once empty.
#[derive(Debug)]
struct Sweep {
    group: PathBuf,
    v1: Vec<PathBuf>,
    last: bool,
}

/// The two threads that make and remove groups off the emperor's loop.
#[derive(Debug)]
struct Workers {
    /// To the sweeper, which removes each group once empty (see
    /// [`remove_group`]), one after another.
    sweep: std::sync::Mutex<std::sync::mpsc::Sender<Sweep>>,
    /// To the maker, which makes the groups of spawns to come
    /// ([`Cgroups::prepare`]) while the loop starts the ones before.
    make: std::sync::Mutex<std::sync::mpsc::Sender<Made>>,
    /// What was asked of the maker and what it made.
    ahead: Arc<std::sync::Mutex<Ahead>>,
}

/// The groups of spawns to come.
#[derive(Debug, Default)]
struct Ahead {
    /// Asked of the maker, not made by it and not claimed by the loop
    /// ([`Cgroups::create`]): the maker makes only these, holding the
    /// lock, so it never makes one the loop has made, used and removed
    /// meanwhile.
    asked: std::collections::HashSet<PathBuf>,
    /// Made by the maker, not claimed yet: the loop uses them without a
    /// `mkdir` of its own (one that finds the group made costs about
    /// 25 µs here).
    made: std::collections::HashSet<PathBuf>,
}

/// A job of the maker thread.
#[derive(Debug)]
enum Made {
    /// Make this group if it is still asked for ([`Cgroups::prepare`]).
    Group(PathBuf),
    /// Remove this group, made for a spawn that did not happen, and its
    /// vassal's directory if that is empty ([`Cgroups::discard`]); after
    /// its `Group`, in order.
    Unused(PathBuf),
    /// Every job before this one is done: says so.
    Drained(std::sync::mpsc::Sender<()>),
    /// Waits for a word (a maker that lags, in tests).
    #[cfg(test)]
    Hold(std::sync::mpsc::Receiver<()>),
}

/// Starts the sweeper and the maker.
fn workers() -> io::Result<Workers> {
    let (tx, rx) = std::sync::mpsc::channel::<Sweep>();
    std::thread::Builder::new()
        .name("cgroup-sweeper".into())
        .spawn(move || {
            crate::spawn::block_signals_in_this_thread();
            for s in rx {
                for g in std::iter::once(&s.group).chain(&s.v1) {
                    remove_group(g, s.last, Duration::from_secs(2));
                }
            }
        })?;
    let (make, made) = std::sync::mpsc::channel::<Made>();
    let ahead: Arc<std::sync::Mutex<Ahead>> = Arc::default();
    let asked = ahead.clone();
    std::thread::Builder::new()
        .name("cgroup-maker".into())
        .spawn(move || {
            crate::spawn::block_signals_in_this_thread();
            for job in made {
                match job {
                    // a failure is the spawn's to report, when it makes it
                    Made::Group(dir) => {
                        let mut asked = asked.lock().unwrap_or_else(|p| p.into_inner());
                        if asked.asked.remove(&dir) && make_group(&dir).is_ok() {
                            asked.made.insert(dir);
                        }
                    }
                    // (a vassal's next process on its way into the
                    // directory makes it again: see make_group)
                    Made::Unused(dir) => {
                        let _ = std::fs::remove_dir(&dir);
                        if let Some(parent) = dir.parent() {
                            let _ = std::fs::remove_dir(parent);
                        }
                    }
                    Made::Drained(done) => {
                        let _ = done.send(());
                    }
                    #[cfg(test)]
                    Made::Hold(until) => {
                        let _ = until.recv();
                    }
                }
            }
        })?;
    Ok(Workers {
        sweep: std::sync::Mutex::new(tx),
        make: std::sync::Mutex::new(make),
        ahead,
    })
}

/// Makes a process's group `DIR/i<instance>` and, if need be, its
/// vassal's `DIR`; either may exist already (the vassal's directory with
/// its earlier groups; a group made ahead by the maker of the emperor's
/// image before a hot upgrade). The loop does not make again a group the
/// maker made ([`Cgroups::create`]).
/// The vassal's directory may be removed between the two (the sweeper
/// after its last process, the maker after a failed spawn): then it is
/// made again.
fn make_group(dir: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match mkdir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => {
                tries += 1;
                if let Some(parent) = dir.parent() {
                    mkdir(parent)?;
                }
            }
            r => return r,
        }
    }
}

impl Cgroups {
    /// Groups under `root` (made by this emperor and removed with it where
    /// `owned_root`), with their sweeper and maker threads.
    fn new(root: PathBuf, owned_root: bool) -> Result<Cgroups, CgroupError> {
        Ok(Cgroups {
            workers: workers().map_err(io_err(&root))?,
            root,
            owned_root,
            passed: std::sync::Mutex::default(),
            left: std::sync::Mutex::default(),
        })
    }

    /// Sets up `mode`: `Ok(None)` when off (in `auto` mode, also when
    /// cgroups cannot be used here: one line says why). `owner`: the uid
    /// and gid the emperor drops to later (`--uid`, `--gid`), to whom the
    /// groups are delegated (see [`Cgroups::delegate`]).
    pub fn setup(
        mode: &CgroupMode,
        owner: Option<(Option<u32>, Option<u32>)>,
    ) -> Result<Option<Cgroups>, CgroupError> {
        if !cfg!(target_arch = "x86_64") && *mode != CgroupMode::Off {
            if *mode == CgroupMode::Auto {
                tracing::warn!(
                    "[emperor] --vassal-cgroup auto: vassals get no cgroup of their own: {}",
                    CgroupError::Arch
                );
                return Ok(None);
            }
            return Err(CgroupError::Arch);
        }
        let c = match mode {
            CgroupMode::Off => return Ok(None),
            CgroupMode::Auto => match Self::auto().and_then(|c| c.delegate(owner).map(|()| c)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("[emperor] --vassal-cgroup auto: vassals get no cgroup of their own: {e} (a stop then reaches only the vassal's own process tree)");
                    return Ok(None);
                }
            },
            CgroupMode::Path(p) => {
                let mounts = cgroup2_mounts();
                if !mounts.iter().any(|m| p.starts_with(m)) {
                    return Err(CgroupError::NotCgroup2(p.clone()));
                }
                if let (Some(own), Some(m)) =
                    (own_path(None), mounts.iter().find(|m| p.starts_with(m)))
                {
                    let own = m.join(own.trim_start_matches('/'));
                    if own.starts_with(p) {
                        return Err(CgroupError::HoldsEmperor(p.clone()));
                    }
                }
                std::fs::create_dir_all(p).map_err(io_err(p))?;
                let c = Cgroups::new(p.clone(), false)?;
                c.check_kill()?;
                c.kill_leftovers();
                c.delegate(owner)?;
                c
            }
        };
        Ok(Some(c))
    }

    /// The groups the emperor's previous image made under `root` (a hot
    /// upgrade): nothing is made, moved or killed; the vassals' groups
    /// stay where they are.
    ///
    /// In `auto` mode, an emperor in `ROOT/.emperor` whose parent group
    /// (not the hierarchy's root) passes down memory, cpu or pids passed
    /// them itself: that group held the emperor when it started, and a
    /// group with processes passes nothing down. They are taken back at
    /// [`Cgroups::finish`], as the previous image would have.
    pub fn adopt(root: PathBuf, owned_root: bool) -> Result<Cgroups, CgroupError> {
        let c = Cgroups::new(root, owned_root)?;
        if let Some(parent) = c.root.parent().filter(|p| owned_root && !is_top(p)) {
            if c.in_leaf() {
                *c.passed.lock().unwrap_or_else(|p| p.into_inner()) = LIMITED
                    .into_iter()
                    .filter(|l| lists(parent, "cgroup.subtree_control", l))
                    .collect();
                *c.left.lock().unwrap_or_else(|p| p.into_inner()) = Some(parent.to_path_buf());
            }
        }
        Ok(c)
    }

    /// Whether the emperor made its root (`auto`; removed at shutdown).
    pub fn owns_root(&self) -> bool {
        self.owned_root
    }

    /// An emperor that drops its privileges must still make groups and
    /// start processes in them, and cgroup v2 allows that only inside a
    /// subtree delegated to it that holds the emperor itself (moving a
    /// process needs write access to the `cgroup.procs` of the common
    /// ancestor of where it is and where it goes). So, while still root:
    /// the emperor moves into `ROOT/.emperor` (a leading `.` is never a
    /// vassal's group: names are made safe with `%2E`), and `ROOT` with its
    /// `cgroup.procs`, `cgroup.threads` and `cgroup.subtree_control` is
    /// given to that uid and gid (cgroup-v2.rst, "Delegation"). The vassals
    /// still cannot move: they run as other users, or as that one only in
    /// tyrant mode, where every group is owned by the emperor's user.
    fn delegate(&self, owner: Option<(Option<u32>, Option<u32>)>) -> Result<(), CgroupError> {
        if !owner.is_some_and(|(u, g)| u.is_some() || g.is_some()) {
            return Ok(());
        }
        self.enter_leaf()?;
        give(
            &self.root,
            &["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"],
            owner,
        )?;
        Ok(())
    }

    /// Moves the emperor into `ROOT/.emperor` (a leading `.` is never a
    /// vassal's group: names are made safe with `%2E`).
    /// Does nothing when it is there already; notes the group it left.
    fn enter_leaf(&self) -> Result<(), CgroupError> {
        if self.in_leaf() {
            return Ok(());
        }
        let from = own_dir();
        let leaf = self.root.join(".emperor");
        make_dir(&leaf)?;
        let procs = leaf.join("cgroup.procs");
        std::fs::write(&procs, b"0").map_err(io_err(&procs))?;
        *self.left.lock().unwrap_or_else(|p| p.into_inner()) = from;
        Ok(())
    }

    /// Leaves `parent` for `ROOT/.emperor` where it is the emperor's own
    /// group and not the hierarchy's root: a group with processes of its
    /// own passes no controller down.
    fn leave(&self, parent: &Path) -> Result<(), CgroupError> {
        if !is_top(parent) && own_dir().is_some_and(|d| d == parent) {
            self.enter_leaf()?;
        }
        Ok(())
    }

    /// Whether the emperor is in `ROOT/.emperor`.
    fn in_leaf(&self) -> bool {
        own_dir().is_some_and(|d| d == self.root.join(".emperor"))
    }

    /// Before any limit is set up (and before the emperor forks anything
    /// that could stay in its group): in `auto` mode, where the emperor's
    /// group offers a controller limits use and is not the hierarchy's
    /// root, the emperor moves into `ROOT/.emperor`, so that the
    /// controller can be passed down later, even for one vassal's own
    /// section.
    pub fn prepare_for_limits(&self) -> Result<(), CgroupError> {
        match self.root.parent() {
            Some(parent)
                if self.owned_root
                    && LIMITED
                        .iter()
                        .any(|l| lists(parent, "cgroup.controllers", l)) =>
            {
                self.leave(parent)
            }
            _ => Ok(()),
        }
    }

    /// Passes `controller` down to the vassals' groups (cgroup v2): into
    /// `ROOT`'s `cgroup.subtree_control`, and first into its parent's
    /// where `ROOT` is not offered it yet (in `auto` mode the parent is the
    /// emperor's own group, which the emperor leaves for `ROOT/.emperor`
    /// first: a group with processes of its own passes no controller down,
    /// the hierarchy's root excepted). `Ok(false)` where the unified
    /// hierarchy does not offer the controller here (it is cgroup v1's, on
    /// a hybrid layout).
    pub fn enable(&self, controller: &'static str) -> Result<bool, CgroupError> {
        let offers = |dir: &Path| lists(dir, "cgroup.controllers", controller);
        let pass = |dir: &Path, sign: char| {
            std::fs::write(
                dir.join("cgroup.subtree_control"),
                format!("{sign}{controller}"),
            )
            .map_err(|source| CgroupError::PassDown {
                controller,
                dir: dir.to_path_buf(),
                source,
            })
        };
        if !offers(&self.root) {
            let Some(parent) = self.root.parent().filter(|p| offers(p)) else {
                return Ok(false);
            };
            // either mode: --vassal-cgroup PATH may be right below the
            // emperor's own group
            self.leave(parent)?;
            pass(parent, '+')?;
            tracing::info!(
                "[emperor] passed the {controller} controller down from {} to the vassals' groups",
                parent.display()
            );
            self.passed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(controller);
        }
        pass(&self.root, '+')?;
        Ok(true)
    }

    /// Why `controller` cannot limit vassals, where [`Cgroups::enable`]
    /// found it neither offered to `ROOT` nor to its parent, and cgroup v1
    /// has no hierarchy for it: the nearest group above that has it (not
    /// delegated), else nowhere in the unified hierarchy.
    pub fn missing(&self, controller: &'static str) -> CgroupError {
        let group = self.root.parent().unwrap_or(&self.root);
        group
            .ancestors()
            .skip(1)
            .take_while(|d| d.join("cgroup.controllers").exists())
            .find(|d| lists(d, "cgroup.controllers", controller))
            .map_or(CgroupError::NoController(controller), |above| {
                CgroupError::NotDelegated {
                    controller,
                    above: above.to_path_buf(),
                    group: group.to_path_buf(),
                }
            })
    }

    /// At shutdown, after the vassals' groups are gone: the controllers
    /// [`Cgroups::enable`] passed down from `ROOT`'s parent are taken back
    /// and the emperor returns to that group, so that it is left as it was
    /// found (where a controller cannot be taken back, for instance after
    /// a drop of privileges, the emperor stays in its leaf).
    fn give_back(&self) {
        let passed = std::mem::take(&mut *self.passed.lock().unwrap_or_else(|p| p.into_inner()));
        let left = self.left.lock().unwrap_or_else(|p| p.into_inner()).take();
        let write = |dir: &Path, file: &str, v: String| std::fs::write(dir.join(file), v).is_ok();
        let mut ok = true;
        if let Some(parent) = self.root.parent() {
            for c in &passed {
                let _ = write(&self.root, "cgroup.subtree_control", format!("-{c}"));
                ok &= write(parent, "cgroup.subtree_control", format!("-{c}"));
            }
        }
        if let Some(from) = left.filter(|_| ok) {
            if write(&from, "cgroup.procs", "0".into()) {
                let _ = std::fs::remove_dir(self.root.join(".emperor"));
            }
        }
    }

    fn auto() -> Result<Cgroups, CgroupError> {
        let mounts = cgroup2_mounts();
        // the unified hierarchy: /sys/fs/cgroup, or /sys/fs/cgroup/unified
        // on a hybrid layout
        let mount = mounts.first().ok_or(CgroupError::NoUnified)?;
        let own = own_path(None).unwrap_or_else(|| "/".into());
        let base = mount.join(own.trim_start_matches('/'));
        remove_stale(&base);
        let root = base.join(format!("imperium-{}", std::process::id()));
        std::fs::create_dir(&root).map_err(io_err(&root))?;
        let c = Cgroups::new(root, true)?;
        if let Err(e) = c.check_kill() {
            let _ = std::fs::remove_dir(&c.root);
            return Err(e);
        }
        Ok(c)
    }

    fn check_kill(&self) -> Result<(), CgroupError> {
        // cgroup.kill exists in every non-root group of a 5.14+ kernel (a
        // leading `.` is never a vassal's group)
        let probe = self.root.join(".probe");
        let _ = std::fs::create_dir(&probe);
        let ok = probe.join("cgroup.kill").exists();
        let _ = std::fs::remove_dir(&probe);
        if ok {
            Ok(())
        } else {
            Err(CgroupError::NoKill)
        }
    }

    /// The directory vassal groups are made in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the group of one process (instance) of `name`:
    /// `ROOT/<name>/i<instance>`. A fresh group per process, never one
    /// reused: on Linux 6.18 a group that was once killed through
    /// `cgroup.kill` SIGKILLs every process later created in it with
    /// `CLONE_INTO_CGROUP` (seen here: a respawned uWSGI master died at
    /// once, again and again).
    pub fn create(&self, name: &VassalName, instance: u64) -> io::Result<PathBuf> {
        let dir = self.group_of(name, instance);
        {
            // claimed: the maker, if it has not made it yet, never will
            let mut ahead = self.ahead();
            ahead.asked.remove(&dir);
            if ahead.made.remove(&dir) {
                return Ok(dir);
            }
        }
        match make_group(&dir) {
            Ok(()) => Ok(dir),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot create the cgroup {}: {e}", dir.display()),
            )),
        }
    }

    /// The group of one process (instance) of `name`.
    fn group_of(&self, name: &VassalName, instance: u64) -> PathBuf {
        self.root
            .join(crate::name::file_safe(name.as_str()))
            .join(format!("i{instance}"))
    }

    /// Has the maker thread make the group of a process of `name` that is
    /// about to be spawned, while the emperor's loop spawns the ones
    /// before it: making a group costs about 45 µs of the kernel's time a
    /// directory here, half the cost of a cgroup per vassal in a cold
    /// start. [`Cgroups::create`] then finds it made, or makes it itself
    /// if the maker is not there yet. A group made for a spawn that does
    /// not happen is removed again ([`Cgroups::discard`]).
    pub fn prepare(&self, name: &VassalName, instance: u64) {
        let dir = self.group_of(name, instance);
        self.ahead().asked.insert(dir.clone());
        self.to_maker(Made::Group(dir));
    }

    /// The group [`Cgroups::prepare`] may have had made for a process of
    /// `name` that is not spawned after all: not made if the maker has not
    /// made it yet, else removed by the maker (never one with a process:
    /// rmdir refuses it), with its vassal's directory if that is empty.
    pub fn discard(&self, name: &VassalName, instance: u64) {
        let dir = self.group_of(name, instance);
        let mut ahead = self.ahead();
        if !ahead.asked.remove(&dir) {
            ahead.made.remove(&dir);
            drop(ahead);
            self.to_maker(Made::Unused(dir));
        }
    }

    /// Waits (at most `wait`) until the maker has done every job given
    /// before.
    fn drain_maker(&self, wait: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.to_maker(Made::Drained(tx));
        let _ = rx.recv_timeout(wait);
    }

    fn ahead(&self) -> std::sync::MutexGuard<'_, Ahead> {
        self.workers.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn to_maker(&self, job: Made) {
        let tx = self.workers.make.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(job);
    }

    /// Kills every process in `group` (SIGKILL, through `cgroup.kill`).
    pub fn kill(group: &Path) -> io::Result<()> {
        match std::fs::write(group.join("cgroup.kill"), b"1") {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Whether processes are left in `group` (or below it).
    pub fn populated(group: &Path) -> bool {
        std::fs::read_to_string(group.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// After a vassal's process was reaped: kills at once what it left
    /// behind in its group (`cgroup.kill` only signals; it does not wait).
    /// Returns how many processes were left.
    pub fn kill_leftovers_of(group: &Path) -> usize {
        let left = procs(group).len();
        if left > 0 {
            if let Err(e) = Self::kill(group) {
                tracing::error!(error = %e, "[emperor] cannot kill what is left in {}: {e}", group.display());
            }
        }
        left
    }

    /// Removes `group` once its processes are gone (and the vassal's
    /// directory when `last`: it left the table), and its `v1` groups, on
    /// the sweeper thread: the emperor's loop never waits for a
    /// group to empty, and a crash storm makes no thread per group.
    pub fn sweep(&self, group: PathBuf, v1: Vec<PathBuf>, last: bool) {
        let tx = self.workers.sweep.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(Sweep { group, v1, last });
    }

    /// The vassals' directories under the root (not the emperor's own
    /// leaf, nor the probe).
    fn vassal_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills every vassal group and waits (at most 2 s) until they are
    /// empty; returns how many processes there were.
    fn kill_all(&self) -> usize {
        let dirs = self.vassal_dirs();
        let n: usize = dirs.iter().map(|d| count_procs(d)).sum();
        for d in &dirs {
            let _ = Self::kill(d);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while dirs.iter().any(|d| Self::populated(d)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        n
    }

    /// At shutdown: kills every group left and removes them (and the root
    /// in `auto` mode, unless the emperor is inside it after a
    /// [`Cgroups::delegate`]).
    pub fn finish(&self) {
        // nothing is made behind the removal
        {
            let mut ahead = self.ahead();
            ahead.asked.clear();
            ahead.made.clear();
        }
        self.drain_maker(Duration::from_secs(2));
        self.kill_all();
        remove_tree(&self.root, false);
        self.give_back();
        remove_tree(&self.root, self.owned_root);
    }

    /// `--vassal-cgroup PATH`: groups left by an earlier emperor (one that
    /// was SIGKILLed) are killed and removed at start-up.
    fn kill_leftovers(&self) {
        let n = self.kill_all();
        if n > 0 {
            tracing::warn!(
                "[emperor] killed {n} processes left in {} by an earlier emperor",
                self.root.display()
            );
        }
        remove_tree(&self.root, false);
    }
}

impl Drop for Cgroups {
    /// Empty groups go (the emperor stopped before it ran, or after
    /// [`Cgroups::finish`]); a group with processes in it stays.
    fn drop(&mut self) {
        // a start-up error after a controller was passed down leaves the
        // group as it was found, too
        self.give_back();
        remove_tree(&self.root, self.owned_root);
    }
}

/// `auto`: the empty `imperium-<pid>` trees that emperors which are gone
/// left in `base` (one that dropped its privileges cannot remove the leaf
/// it runs in; one that was SIGKILLed removes nothing). A group with a
/// process in it is never removed (rmdir refuses it).
fn remove_stale(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("imperium-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_tree(&e.path(), true);
        }
    }
}

/// A number from a cgroup file: the whole file (`memory.current`), or the
/// value after `key` on one of its lines (`cpu.stat` `usage_usec`).
pub fn read_num(file: &Path, key: Option<&str>) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    match key {
        None => text.trim().parse().ok(),
        Some(k) => text
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok()),
    }
}

/// The pids in `group` itself (`cgroup.procs`).
pub fn procs(group: &Path) -> Vec<u32> {
    std::fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn count_procs(dir: &Path) -> usize {
    let mut n = procs(dir).len();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += count_procs(&e.path());
            }
        }
    }
    n
}

/// Removes the groups below `dir` (children first), and `dir` itself when
/// `this_too`.
fn remove_tree(dir: &Path, this_too: bool) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), true);
            }
        }
    }
    if this_too {
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The maker makes what is asked of it, never a group the loop has
    /// claimed (made, used and removed meanwhile), and removes what a
    /// failed spawn did not use, with its vassal's directory.
    #[test]
    fn the_maker_makes_ahead_and_never_behind_the_loop() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Cgroups::new(tmp.path().to_path_buf(), false).unwrap();
        let a = VassalName::derived("a.ini".to_string());
        let b = VassalName::derived("b.ini".to_string());
        let group = |n: &str, i: u64| tmp.path().join(n).join(format!("i{i}"));
        // made ahead
        c.prepare(&a, 1);
        c.drain_maker(Duration::from_secs(5));
        assert!(group("a.ini", 1).is_dir());
        assert_eq!(c.create(&a, 1).unwrap(), group("a.ini", 1));
        // and the loop does not make it again: a group made ahead and
        // then removed behind everyone's back is not there
        c.prepare(&a, 6);
        c.drain_maker(Duration::from_secs(5));
        std::fs::remove_dir(group("a.ini", 6)).unwrap();
        assert_eq!(c.create(&a, 6).unwrap(), group("a.ini", 6));
        assert!(!group("a.ini", 6).exists(), "the loop made it again");
        // one not made ahead is made by the loop
        assert!(c.create(&a, 7).unwrap().is_dir());
        std::fs::remove_dir(group("a.ini", 7)).unwrap();
        // claimed by the loop before the lagging maker came to it: made
        // once, and not again after the loop removed it (a failed spawn)
        let lag = |c: &Cgroups| {
            let (tx, rx) = std::sync::mpsc::channel();
            c.to_maker(Made::Hold(rx));
            tx
        };
        let go = lag(&c);
        c.to_maker(Made::Group(group("a.ini", 2)));
        c.prepare(&a, 3);
        let g3 = c.create(&a, 3).unwrap();
        std::fs::remove_dir(&g3).unwrap();
        go.send(()).unwrap();
        c.drain_maker(Duration::from_secs(5));
        assert!(!g3.exists(), "made again behind the loop");
        assert!(!group("a.ini", 2).exists(), "never asked for");
        // not used: removed, with the vassal's directory once empty
        c.prepare(&b, 4);
        c.drain_maker(Duration::from_secs(5));
        assert!(group("b.ini", 4).is_dir());
        c.discard(&b, 4);
        c.drain_maker(Duration::from_secs(5));
        assert!(!tmp.path().join("b.ini").exists());
        // discarded before the lagging maker made it: never made
        let go = lag(&c);
        c.prepare(&b, 5);
        c.discard(&b, 5);
        go.send(()).unwrap();
        c.drain_maker(Duration::from_secs(5));
        assert!(!tmp.path().join("b.ini").exists());
        // a's directory holds its used group: it stays
        assert!(group("a.ini", 1).is_dir());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<CgroupMode>().unwrap(), CgroupMode::Auto);
        assert_eq!("off".parse::<CgroupMode>().unwrap(), CgroupMode::Off);
        assert_eq!(
            "/sys/fs/cgroup/x".parse::<CgroupMode>().unwrap(),
            CgroupMode::Path("/sys/fs/cgroup/x".into())
        );
        assert!("relative/x".parse::<CgroupMode>().is_err());
        assert!("".parse::<CgroupMode>().is_err());
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/end\\"), "/end\\");
    }
}
