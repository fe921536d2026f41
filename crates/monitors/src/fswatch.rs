//! What dir:// and glob:// share: turning a stat into a spec, and an
//! inotify watcher that hands out batches of changed names as soon as the
//! write that changed them has ended.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use emperor::{ChangeKey, ConfigSource, MonitorOptions, Owner, VassalName, VassalSpec};
use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};

use crate::session::{Health, Report, RescanClock, WarnOnce};

/// How long a regular file that was just created may take to be opened by
/// its writer (the kernel reports IN_OPEN right after IN_CREATE for an
/// `open(O_CREAT)`); a file that nobody opens (a hard link, `mknod`) is
/// handed out after this.
const CREATE_WAIT: Duration = Duration::from_millis(2);
/// The longest a change waits for the writers that hold the file open to
/// close it: a config written in steps is started once, whole, and a file
/// that someone keeps open is still seen within this.
pub(crate) const MAX_WRITE_WAIT: Duration = Duration::from_secs(2);
/// A name handed out is handed out again at most once per this window: the
/// first change of a name goes at once, and a storm of complete rewrites
/// of one file (a script writing it in a loop) is one more change at the
/// end of the window, with the file as it is then.
const REPEAT_WINDOW: Duration = Duration::from_millis(10);
/// The most events taken from the kernel's queue for one batch once a
/// name is ready: a storm of events cannot hold a batch back for ever.
const MAX_DRAIN: usize = 4096;

/// The change key of a file: its mtime in nanoseconds, inode and size.
pub(crate) fn file_key(md: &Metadata) -> ChangeKey {
    ChangeKey::File {
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        ino: md.ino(),
        size: md.size(),
    }
}

/// Stats `path` under the dir/glob rules (docs/monitors/dir.md): by default the
/// target must be a regular file (symlinks followed); with nofollow the
/// link itself counts, and a symlink or a regular file is accepted.
///
/// Returns `Ok(None)` when the path exists but is not a vassal (a directory,
/// a fifo), `Err` when it cannot be stat'ed (it is gone).
pub(crate) fn stat_vassal(
    path: &Path,
    opts: &MonitorOptions,
) -> io::Result<Option<(ChangeKey, Owner)>> {
    let md = if opts.nofollow {
        std::fs::symlink_metadata(path)?
    } else {
        std::fs::metadata(path)?
    };
    let ft = md.file_type();
    let acceptable = ft.is_file() || (opts.nofollow && ft.is_symlink());
    if !acceptable {
        return Ok(None);
    }
    let owner_md = if opts.tyrant_nofollow && !opts.nofollow {
        std::fs::symlink_metadata(path)?
    } else {
        md.clone()
    };
    Ok(Some((file_key(&md), owner_of(&owner_md))))
}

/// Why `path`, named like a config, is not a vassal: what it is instead
/// (a directory, a FIFO, a device node, a socket, a symlink loop), for the
/// one warning it gets. (A symlink to nothing is simply absent: a deploy
/// may create the link before its target.)
pub(crate) fn not_a_vassal(path: &Path, opts: &MonitorOptions) -> String {
    use std::os::unix::fs::FileTypeExt;
    let md = if opts.nofollow {
        std::fs::symlink_metadata(path)
    } else {
        std::fs::metadata(path)
    };
    let what = match md {
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => "a symbolic link loop",
        Err(e) if e.kind() == io::ErrorKind::NotFound => "a symbolic link to nothing",
        Err(_) => "a file that cannot be stat'ed",
        Ok(m) => {
            let ft = m.file_type();
            if ft.is_dir() {
                "a directory"
            } else if ft.is_fifo() {
                "a FIFO (named pipe)"
            } else if ft.is_char_device() || ft.is_block_device() {
                "a device node"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        }
    };
    format!(
        "{} is {what}, not a regular file: not a vassal, ignored",
        path.display()
    )
}

#[cfg(feature = "dir")]
/// [`stat_vassal`] for a directory entry: a regular file (as the directory
/// listing says) is stat'ed relative to the open directory, the same
/// result in every mode for a file that is not a symlink, without walking
/// the whole path again; anything else goes through [`stat_vassal`].
pub(crate) fn stat_entry(
    entry: &std::fs::DirEntry,
    opts: &MonitorOptions,
) -> io::Result<Option<(ChangeKey, Owner)>> {
    match entry.file_type() {
        Ok(ft) if ft.is_file() => {
            let md = entry.metadata()?;
            Ok(Some((file_key(&md), owner_of(&md))))
        }
        _ => stat_vassal(&entry.path(), opts),
    }
}

fn owner_of(md: &Metadata) -> Owner {
    Owner {
        uid: md.uid(),
        gid: md.gid(),
    }
}

/// The spec of a file vassal.
pub(crate) fn file_spec(
    name: VassalName,
    config: PathBuf,
    key: ChangeKey,
    owner: Owner,
    workdir: Option<PathBuf>,
) -> VassalSpec {
    VassalSpec {
        name,
        config: ConfigSource::File(config),
        key,
        owner: Some(owner),
        socket: None,
        workdir,
        limits: None,
    }
}

/// Finds the on-demand socket of file vassals (`--emperor-on-demand-*`).
///
/// The extension and directory files are read on every scan (a few bytes),
/// so editing them is seen at the next scan; the exec command runs once per
/// vassal name, as uWSGI runs it once when the vassal is added.
#[derive(Default)]
pub(crate) struct SocketResolver {
    exec_cache: std::collections::HashMap<VassalName, Option<String>>,
}

/// The socket named by `text`: cut at the first control byte (as uWSGI);
/// empty means "not on demand".
pub(crate) fn socket_from_text(text: &[u8]) -> Option<String> {
    let end = text.iter().position(|b| *b < 32).unwrap_or(text.len());
    let s = String::from_utf8_lossy(&text[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

impl SocketResolver {
    /// The socket of vassal `name`, whose paths resolve against `base`.
    pub(crate) fn resolve(
        &mut self,
        name: &VassalName,
        base: &Path,
        opts: &MonitorOptions,
    ) -> Option<String> {
        use emperor::OnDemandSource;
        match &opts.on_demand {
            OnDemandSource::None => None,
            OnDemandSource::Extension(ext) => {
                let p = base.join(format!("{name}{ext}"));
                std::fs::read(p).ok().and_then(|t| socket_from_text(&t))
            }
            OnDemandSource::Directory(dir) => {
                let stem = Path::new(name.as_str()).file_stem()?.to_string_lossy();
                Some(
                    base.join(dir)
                        .join(format!("{stem}.socket"))
                        .display()
                        .to_string(),
                )
            }
            OnDemandSource::Exec(cmd) => {
                if let Some(s) = self.exec_cache.get(name) {
                    return s.clone();
                }
                let s = run_on_demand_exec(cmd, name, base);
                self.exec_cache.insert(name.clone(), s.clone());
                s
            }
        }
    }

    /// Forgets names that are gone (so a re-added vassal asks again).
    pub(crate) fn retain(&mut self, specs: &[VassalSpec]) {
        if self.exec_cache.is_empty() {
            return;
        }
        let names: std::collections::HashSet<&VassalName> = specs.iter().map(|s| &s.name).collect();
        self.exec_cache.retain(|n, _| names.contains(n));
    }
}

fn run_on_demand_exec(cmd: &str, name: &VassalName, base: &Path) -> Option<String> {
    // the name is an argument, never pasted into the shell text
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{cmd} \"$1\""))
        .arg("sh")
        .arg(name.as_str())
        .current_dir(base)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output();
    match out {
        Ok(o) if o.status.success() => socket_from_text(&o.stdout),
        Ok(o) => {
            tracing::warn!(vassal = %name, status = %o.status, "[emperor] --emperor-on-demand-exec failed for {name}: not on demand");
            None
        }
        Err(e) => {
            tracing::warn!(vassal = %name, error = %e, "[emperor] cannot run --emperor-on-demand-exec for {name}: not on demand");
            None
        }
    }
}

/// What a batch of inotify events says.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// (watched directory, entry name) pairs that changed.
    pub names: BTreeSet<(PathBuf, OsString)>,
    /// The kernel queue overflowed, or a watched directory went away:
    /// only a full rescan can tell what happened.
    pub rescan: bool,
}

/// An inotify instance watching a set of directories (not recursively),
/// and the parent of each of them for that directory's name: a watched
/// directory that is removed and created again, moved back, or replaced by
/// a symlink to another directory (a deploy's `current -> releases/N`
/// swap) is watched again at once, not at the next safety rescan.
pub(crate) struct DirWatcher {
    stream: EventStream<Vec<u8>>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Parent watches: the parent directory, and the names in it that are
    /// watched directories.
    parents: HashMap<WatchDescriptor, (PathBuf, BTreeSet<OsString>)>,
    /// Open handles per name, as IN_OPEN and IN_CLOSE_* count them (only
    /// names with at least one; handles opened before the watch are not
    /// seen, and a count that went wrong ends at the next close of the
    /// last handle or at [`MAX_WRITE_WAIT`]).
    open: HashMap<(PathBuf, OsString), u32>,
    /// Changed names waiting for their writers to close them: since when,
    /// and how long they may wait from then.
    waiting: HashMap<(PathBuf, OsString), (tokio::time::Instant, Duration)>,
    /// What the next batch holds so far.
    batch: Batch,
    /// When each name was last handed out, for [`REPEAT_WINDOW`] (only
    /// names handed out within the window are kept).
    handed_out: HashMap<(PathBuf, OsString), tokio::time::Instant>,
}

/// What a parent is watched for: its watched children appearing, going or
/// being renamed (a symlink swapped in is a CREATE or MOVED_TO of a link).
fn parent_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::ONLYDIR
        | WatchMask::MASK_ADD
}

fn mask() -> WatchMask {
    // CREATE is needed for symlinks (no CLOSE_WRITE follows); a regular file
    // being created is reported again by CLOSE_WRITE once written.
    // MODIFY is needed for `touch -m` and every other utimensat() that sets
    // the mtime alone: the kernel reports that as IN_MODIFY, not IN_ATTRIB
    // (ATTRIB needs both times). A write() reports it too; the writes of one
    // config wait for its last CLOSE_WRITE and make one change.
    // OPEN and CLOSE_NOWRITE count the handles open on a name, so that a
    // change waits for its writer to close the file, and only then.
    WatchMask::CLOSE_WRITE
        | WatchMask::CLOSE_NOWRITE
        | WatchMask::OPEN
        | WatchMask::MODIFY
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

impl DirWatcher {
    pub(crate) fn new() -> io::Result<Self> {
        let inotify = Inotify::init()?;
        let stream = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
        Ok(DirWatcher {
            stream,
            dirs: HashMap::new(),
            parents: HashMap::new(),
            open: HashMap::new(),
            waiting: HashMap::new(),
            batch: Batch::default(),
            handed_out: HashMap::new(),
        })
    }

    /// Makes the watched set exactly `dirs`.
    pub(crate) fn set_dirs(&mut self, dirs: &BTreeSet<PathBuf>) {
        let mut watches = self.stream.watches();
        self.dirs.retain(|wd, d| {
            if dirs.contains(d) {
                true
            } else {
                let _ = watches.remove(wd.clone());
                false
            }
        });
        for d in dirs {
            if self.dirs.values().any(|x| x == d) {
                continue;
            }
            match watches.add(d, mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, d.clone());
                }
                Err(e) => tracing::debug!(dir = %d.display(), error = %e, "cannot watch directory"),
            }
        }
        // the parents, for the names of the watched directories (even one
        // that does not exist yet: its creation is what re-arms it). A
        // parent that is a watched directory too shares its watch
        // (MASK_ADD keeps the full mask).
        let mut wanted: HashMap<PathBuf, BTreeSet<OsString>> = HashMap::new();
        for d in dirs {
            if let (Some(p), Some(n)) = (d.parent(), d.file_name()) {
                if !p.as_os_str().is_empty() {
                    wanted
                        .entry(p.to_path_buf())
                        .or_default()
                        .insert(n.to_os_string());
                }
            }
        }
        self.parents.retain(|wd, (p, _)| {
            if wanted.contains_key(p) {
                true
            } else {
                // shared with a watched directory: keep the watch itself
                if !self.dirs.contains_key(wd) {
                    let _ = watches.remove(wd.clone());
                }
                false
            }
        });
        for (p, names) in wanted {
            // already watched for these names: no system call per rescan
            if let Some((_, have)) = self.parents.values_mut().find(|(pp, _)| *pp == p) {
                *have = names;
                continue;
            }
            match watches.add(&p, parent_mask()) {
                Ok(wd) => {
                    self.parents.insert(wd, (p, names));
                }
                Err(e) => {
                    tracing::debug!(dir = %p.display(), error = %e, "cannot watch the parent directory")
                }
            }
        }
    }

    /// A watched directory's name changed in its parent (created, removed,
    /// renamed, a symlink swapped): drop the old watch, which may follow
    /// the old inode, so that the rescan watches the new one.
    fn child_replaced(&mut self, dir: &Path) {
        let old: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.as_path() == dir)
            .map(|(wd, _)| wd.clone())
            .collect();
        let mut watches = self.stream.watches();
        for wd in old {
            self.dirs.remove(&wd);
            if !self.parents.contains_key(&wd) {
                let _ = watches.remove(wd);
            }
        }
    }

    /// Waits for the next batch of changed names. A name is handed out as
    /// soon as the change has ended: at once for a rename, a deletion, a
    /// symlink, or a write or `touch` of a file that nobody holds open; at
    /// the close of the last handle for a file still open (a config
    /// written in steps), within [`MAX_WRITE_WAIT`]. Events already queued
    /// in the kernel join the batch (up to [`MAX_DRAIN`]).
    pub(crate) async fn next_batch(&mut self) -> io::Result<Batch> {
        use futures::FutureExt;
        loop {
            if self.batch.rescan || !self.batch.names.is_empty() {
                for _ in 0..MAX_DRAIN {
                    match self.stream.next().now_or_never() {
                        Some(Some(ev)) => self.absorb(ev?),
                        Some(None) => return Err(io::Error::other("inotify stream ended")),
                        None => break,
                    }
                }
                let now = tokio::time::Instant::now();
                self.handed_out
                    .retain(|_, t| now.duration_since(*t) < REPEAT_WINDOW);
                for k in &self.batch.names {
                    self.handed_out.insert(k.clone(), now);
                }
                return Ok(std::mem::take(&mut self.batch));
            }
            let first_deadline = self.waiting.values().map(|(t, w)| *t + *w).min();
            let ev = match first_deadline {
                None => self.stream.next().await,
                Some(at) => match tokio::time::timeout_at(at, self.stream.next()).await {
                    Ok(ev) => ev,
                    Err(_) => {
                        self.expire(tokio::time::Instant::now());
                        continue;
                    }
                },
            };
            match ev {
                Some(ev) => self.absorb(ev?),
                None => return Err(io::Error::other("inotify stream ended")),
            }
        }
    }

    /// Names that waited long enough for their writers join the batch.
    fn expire(&mut self, now: tokio::time::Instant) {
        let due: Vec<_> = self
            .waiting
            .iter()
            .filter(|(_, (since, wait))| *since + *wait <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.waiting.remove(&k);
            self.batch.names.insert(k);
        }
    }

    /// `key` changed and its change has ended: it joins the batch, or
    /// waits for the end of its [`REPEAT_WINDOW`].
    fn ready(&mut self, key: (PathBuf, OsString)) {
        self.waiting.remove(&key);
        if let Some(t) = self.handed_out.get(&key) {
            let end = *t + REPEAT_WINDOW;
            if end > tokio::time::Instant::now() {
                self.waiting.insert(key, (*t, REPEAT_WINDOW));
                return;
            }
        }
        self.batch.names.insert(key);
    }

    /// `key` changed while someone may still be writing it: it waits for
    /// the close of its last handle, at most `wait` from its first change.
    fn wait_for_writers(&mut self, key: (PathBuf, OsString), wait: Duration) {
        if self.batch.names.contains(&key) {
            return;
        }
        let (_, w) = self
            .waiting
            .entry(key)
            .or_insert((tokio::time::Instant::now(), wait));
        *w = (*w).max(wait);
    }

    fn absorb(&mut self, ev: inotify::Event<OsString>) {
        // a watched directory's entry in its parent changed
        if let (Some((parent, names)), Some(name)) = (self.parents.get(&ev.wd), ev.name.as_ref()) {
            if names.contains(name) {
                let dir = parent.join(name);
                tracing::debug!(dir = %dir.display(), "watched directory replaced: watching it again");
                self.child_replaced(&dir);
                self.batch.rescan = true;
                return;
            }
            if !self.dirs.contains_key(&ev.wd) {
                return; // another entry of a parent that is only a parent
            }
        }
        if ev.mask.contains(EventMask::IGNORED) {
            // the watch is gone (its directory was removed): forget it, so
            // that the next set_dirs watches a directory of that name again
            if let Some(dir) = self.dirs.remove(&ev.wd) {
                self.open.retain(|(d, _), _| *d != dir);
            }
            self.parents.remove(&ev.wd);
            self.batch.rescan = true;
            return;
        }
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            // events were lost: the open counts mean nothing any more
            self.open.clear();
            self.batch.rescan = true;
            return;
        }
        if ev.mask.contains(EventMask::DELETE_SELF) || ev.mask.contains(EventMask::MOVE_SELF) {
            self.batch.rescan = true;
            return;
        }
        let (Some(dir), Some(name)) = (self.dirs.get(&ev.wd), ev.name) else {
            return;
        };
        if ev.mask.contains(EventMask::ISDIR) {
            if ev.mask.intersects(
                EventMask::CREATE | EventMask::DELETE | EventMask::MOVED_TO | EventMask::MOVED_FROM,
            ) {
                // a directory appeared or went: glob patterns may now match more
                self.batch.rescan = true;
            }
            return;
        }
        let key = (dir.clone(), name);
        let mask = ev.mask;
        if mask.contains(EventMask::OPEN) {
            let n = self.open.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            if let Some((_, wait)) = self.waiting.get_mut(&key) {
                // a file just created is being written: wait for its close
                *wait = MAX_WRITE_WAIT;
            }
            return;
        }
        if mask.intersects(EventMask::CLOSE_WRITE | EventMask::CLOSE_NOWRITE) {
            let still_open = match self.open.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    true
                }
                _ => {
                    self.open.remove(&key);
                    false
                }
            };
            if mask.contains(EventMask::CLOSE_WRITE) {
                if still_open {
                    self.wait_for_writers(key, MAX_WRITE_WAIT);
                } else {
                    self.ready(key);
                }
            } else if !still_open && self.waiting.contains_key(&key) {
                self.ready(key);
            }
            return;
        }
        if mask.intersects(EventMask::MODIFY | EventMask::ATTRIB) {
            if self.open.contains_key(&key) {
                self.wait_for_writers(key, MAX_WRITE_WAIT);
            } else {
                self.ready(key);
            }
            return;
        }
        if mask.contains(EventMask::CREATE) {
            // a symlink is complete when it appears; a regular file being
            // created is opened right away by its writer (IN_OPEN follows)
            let is_link = std::fs::symlink_metadata(key.0.join(&key.1))
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            if is_link {
                self.ready(key);
            } else {
                self.wait_for_writers(key, CREATE_WAIT);
            }
            return;
        }
        // renamed in or out, deleted: the name now means something else
        self.open.remove(&key);
        self.ready(key);
    }
}

/// A file source: how dir:// and glob:// differ.
pub(crate) trait FileSource: Send + 'static {
    /// Every vassal the source holds now.
    fn scan(&mut self, opts: &MonitorOptions) -> io::Result<Vec<VassalSpec>>;
    /// The directories to watch (recomputed after each full scan).
    fn dirs(&self) -> BTreeSet<PathBuf>;
    /// The changes a batch of names means, or `None` for "rescan all".
    fn changes(&mut self, batch: &Batch, opts: &MonitorOptions) -> Option<Vec<emperor::Change>>;
    /// A fingerprint of what [`FileSource::scan`] would find, keyed by
    /// `state`, computed without building any spec (and without
    /// allocating per file), or `None` when this source cannot tell
    /// cheaply. Equal fingerprints must mean equal scans.
    fn fingerprint(
        &mut self,
        _opts: &MonitorOptions,
        _state: &std::hash::RandomState,
    ) -> Option<u64> {
        None
    }
}

/// The loop shared by dir:// and glob://: a full scan at start, on every
/// `--emperor-freq` tick (the safety net) and on request; targeted changes
/// from inotify in between.
pub(crate) async fn run_file_monitor<S: FileSource>(mut src: S, mut ctx: emperor::MonitorContext) {
    let opts = ctx.options.clone();
    let mut watcher = match DirWatcher::new() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable, falling back to polling every --emperor-freq");
            None
        }
    };
    let mut health = Health::default();
    let mut ticker = RescanClock::new(opts.freq);
    let mut full = true;
    let blocking = matches!(opts.on_demand, emperor::OnDemandSource::Exec(_));
    // the fingerprint of the files at the last full scan, and of the
    // snapshot that scan sent: while both still hold, a safety rescan
    // would send nothing, so it builds nothing either
    let prints = std::hash::RandomState::new();
    let mut last: Option<(u64, u64)> = None;
    let mut watcher_asked = false;
    loop {
        if full {
            full = false;
            // a rescan the watcher asked for (a watched directory replaced,
            // a watch to re-arm) always scans in full
            let files = if std::mem::take(&mut watcher_asked) {
                None
            } else {
                src.fingerprint(&opts, &prints)
            };
            let unchanged = files.is_some_and(|f| {
                last.is_some_and(|(lf, ls)| f == lf && ctx.current_snapshot() == Some(ls))
            });
            if unchanged {
                // a watch that failed to install is retried at every rescan
                if let Some(w) = watcher.as_mut() {
                    w.set_dirs(&src.dirs());
                }
            } else {
                let sent;
                (src, sent) = full_scan(src, &ctx, blocking, &mut health, watcher.as_mut()).await;
                if !sent {
                    return;
                }
                last = files.zip(ctx.current_snapshot());
            }
        }
        tokio::select! {
            _ = ticker.tick() => full = true,
            rescan = ctx.rescan_or_closed() => {
                if !rescan {
                    return;
                }
                full = true;
            }
            batch = async {
                match watcher.as_mut() {
                    Some(w) => w.next_batch().await,
                    None => std::future::pending().await,
                }
            } => match batch {
                Ok(b) if b.rescan => {
                    full = true;
                    watcher_asked = true;
                }
                Ok(b) => {
                    let o = opts.clone();
                    let changes;
                    (src, changes) = off_runtime(src, blocking, move |s| s.changes(&b, &o)).await;
                    match changes {
                        None => full = true,
                        Some(changes) => {
                            for c in changes {
                                if !ctx.send(c).await {
                                    return;
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inotify failed, falling back to polling every --emperor-freq");
                    watcher = None;
                    full = true;
                }
            },
        }
        if ctx.is_closed() {
            return;
        }
    }
}

/// Scans the whole source, watches its directories and sends the snapshot
/// if it differs from the last one (or the error). False once the emperor
/// is gone.
async fn full_scan<S: FileSource>(
    src: S,
    ctx: &emperor::MonitorContext,
    blocking: bool,
    health: &mut Health,
    watcher: Option<&mut DirWatcher>,
) -> (S, bool) {
    let o = ctx.options.clone();
    let (src, result) = off_runtime(src, blocking, move |s| s.scan(&o)).await;
    if let Some(w) = watcher {
        w.set_dirs(&src.dirs());
    }
    let sent = match result {
        Ok(specs) => {
            health.connected(ctx).await;
            ctx.send_if_changed(specs).await
        }
        Err(e) => {
            health
                .degraded(ctx, e.to_string(), Report::FirstOfOutage)
                .await
        }
    };
    (src, sent)
}

/// Runs `f` on the source: inline, or with `blocking` on tokio's blocking
/// pool, for sources that may run `--emperor-on-demand-exec` commands,
/// which can take any time and must not stall the emperor's thread.
async fn off_runtime<S: FileSource, R: Send + 'static>(
    mut src: S,
    blocking: bool,
    f: impl FnOnce(&mut S) -> R + Send + 'static,
) -> (S, R) {
    if !blocking {
        let r = f(&mut src);
        return (src, r);
    }
    match tokio::task::spawn_blocking(move || {
        let r = f(&mut src);
        (src, r)
    })
    .await
    {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Logs a refused file name once while it stays (not on every scan).
#[cfg(feature = "dir")]
#[derive(Default)]
pub(crate) struct RefusedNames(WarnOnce<OsString>);

#[cfg(feature = "dir")]
impl RefusedNames {
    pub(crate) fn report(&mut self, name: &OsString, why: &dyn std::fmt::Display) {
        if self.0.is_new(name.clone()) {
            tracing::warn!(file = ?name, "[emperor] invalid vassal name: {why}");
        }
    }

    /// A file named like a config that is not a regular file (a FIFO, a
    /// device, a directory, a symlink loop): one warning while it stays.
    pub(crate) fn not_a_file(&mut self, name: &OsString, why: &str) {
        if self.0.is_new(name.clone()) {
            tracing::warn!(file = ?name, "[emperor] {why}");
        }
    }

    /// A full scan ended: names it did not refuse again are forgotten.
    pub(crate) fn end_scan(&mut self) {
        self.0.end_pass();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emperor::{Extensions, NamePolicy, OnDemandSource};

    fn opts(src: OnDemandSource) -> MonitorOptions {
        MonitorOptions {
            on_demand: src,
            ..Default::default()
        }
    }

    #[test]
    fn socket_text_is_cut_at_the_first_control_byte() {
        assert_eq!(
            socket_from_text(b"/run/a.sock\nrest"),
            Some("/run/a.sock".into())
        );
        assert_eq!(
            socket_from_text(b"127.0.0.1:9000"),
            Some("127.0.0.1:9000".into())
        );
        assert_eq!(socket_from_text(b"\n"), None);
        assert_eq!(socket_from_text(b""), None);
    }

    #[test]
    fn on_demand_sources_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let name = VassalName::parse("app.ini", &Extensions::default(), NamePolicy::Plain).unwrap();
        let mut r = SocketResolver::default();
        assert_eq!(
            r.resolve(&name, dir.path(), &opts(OnDemandSource::None)),
            None
        );
        let ext = opts(OnDemandSource::Extension(".socket".into()));
        assert_eq!(
            r.resolve(&name, dir.path(), &ext),
            None,
            "no file: not on demand"
        );
        std::fs::write(dir.path().join("app.ini.socket"), "127.0.0.1:9123\n").unwrap();
        assert_eq!(
            r.resolve(&name, dir.path(), &ext).as_deref(),
            Some("127.0.0.1:9123")
        );
        let d = opts(OnDemandSource::Directory("/run/od".into()));
        assert_eq!(
            r.resolve(&name, dir.path(), &d).as_deref(),
            Some("/run/od/app.socket")
        );
        // the name reaches the command as one argument, whatever it holds
        let marker = dir.path().join("ran");
        let e = opts(OnDemandSource::Exec(format!(
            "echo ran >> {}; printf '/tmp/od-%s.sock\\n'",
            marker.display()
        )));
        assert_eq!(
            r.resolve(&name, dir.path(), &e).as_deref(),
            Some("/tmp/od-app.ini.sock")
        );
        // cached: the command runs once per name
        assert_eq!(
            r.resolve(&name, dir.path(), &e).as_deref(),
            Some("/tmp/od-app.ini.sock")
        );
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);
        r.retain(&[]);
        r.resolve(&name, dir.path(), &e);
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 2);
        // a hostile name stays one argument
        let odd = VassalName::parse(
            "a\"; touch pwned; \".ini",
            &Extensions::default(),
            NamePolicy::Plain,
        )
        .unwrap();
        r.resolve(&odd, dir.path(), &e);
        assert!(!dir.path().join("pwned").exists());
    }
}
