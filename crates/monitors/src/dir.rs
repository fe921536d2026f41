//! `dir://PATH` (and a bare directory): every file in one directory with a
//! config extension is a vassal (docs/monitors/dir.md).
//!
//! The vassal id is the file's basename; the vassal is started in the
//! directory as `uwsgi --ini NAME`, so relative names resolve where they
//! were found. Changes are seen through inotify within milliseconds, with a
//! full rescan every `--emperor-freq` seconds as a safety net.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

use emperor::{
    Change, ChangeKey, Monitor, MonitorContext, MonitorError, MonitorOptions, NameError,
    NamePolicy, Owner, VassalName, VassalSpec,
};
use futures::future::BoxFuture;

use crate::fswatch::{
    file_spec, not_a_vassal, run_file_monitor, stat_entry, stat_vassal, Batch, FileSource,
    RefusedNames, SocketResolver,
};

/// The dir:// monitor.
pub struct DirMonitor {
    dir: PathBuf,
}

impl DirMonitor {
    /// `url` is the whole `--emperor` value, `path` the directory. The
    /// directory must exist (a start-up error otherwise).
    pub fn new(url: &str, path: &str, opts: &MonitorOptions) -> Result<Self, MonitorError> {
        // absolute, but symlinks kept: a `current -> releases/N` link is
        // followed anew at every scan and watch, as uWSGI opens the path
        // at every scan, so a deploy that swaps the link is seen
        let dir = std::path::absolute(opts.cwd.join(path)).map_err(|e| MonitorError::Io {
            url: url.to_string(),
            source: e,
        })?;
        let dir = lexically_normal(&dir);
        if let Err(e) = std::fs::metadata(&dir) {
            return Err(MonitorError::Io {
                url: url.to_string(),
                source: e,
            });
        }
        if !dir.is_dir() {
            return Err(MonitorError::BadUrl {
                url: url.to_string(),
                reason: format!("{} is not a directory", dir.display()),
            });
        }
        Ok(DirMonitor { dir })
    }
}

/// `dir` without `.` components and trailing slashes (`..` is kept: with
/// symlinks, only the kernel knows what it leads to).
fn lexically_normal(dir: &std::path::Path) -> PathBuf {
    dir.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Builds a dir:// monitor (also for a bare directory).
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    Ok(Box::new(DirMonitor::new(t.url, t.rest, t.opts)?))
}

impl Monitor for DirMonitor {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        let src = DirSource {
            dir: self.dir,
            refused: RefusedNames::default(),
            sockets: SocketResolver::default(),
            held: None,
        };
        Box::pin(run_file_monitor(src, ctx))
    }
}

struct DirSource {
    dir: PathBuf,
    refused: RefusedNames,
    sockets: SocketResolver,
    /// The directory, held open for [`FileSource::fingerprint`].
    held: Option<HeldDir>,
}

/// The watched directory held open between safety rescans: reading it again
/// through a held descriptor opens nothing, so the watch on it sees no
/// IN_OPEN and IN_CLOSE_NOWRITE of the emperor's own (one wake-up less per
/// rescan), and glibc's 32 KiB buffer is allocated once.
struct HeldDir {
    entries: nix::dir::Dir,
    /// A second descriptor of the same directory, for `fstatat` while
    /// `entries` is being iterated.
    at: std::os::fd::OwnedFd,
    /// Device and inode of the directory when it was opened: a path that
    /// now leads elsewhere (a swapped `current` symlink) is opened anew.
    id: (u64, u64),
}

impl HeldDir {
    fn open(dir: &std::path::Path, id: (u64, u64)) -> Option<HeldDir> {
        use nix::fcntl::OFlag;
        use std::os::fd::AsFd;
        let entries = nix::dir::Dir::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        let at = entries.as_fd().try_clone_to_owned().ok()?;
        if remote(&at) {
            return None;
        }
        let st = nix::sys::stat::fstat(&at).ok()?;
        // the path may have changed between the stat and the open
        (ids(&st) == id).then_some(HeldDir { entries, at, id })
    }
}

/// A network or FUSE filesystem: there a held descriptor may show a cached
/// listing (NFS revalidates a directory at `opendir`), and inotify sees
/// nothing, so the full scan, with its `opendir`, is the only detector.
fn remote(fd: &std::os::fd::OwnedFd) -> bool {
    use nix::sys::statfs::{
        FsType, AFS_SUPER_MAGIC, FUSE_SUPER_MAGIC, NFS_SUPER_MAGIC, SMB_SUPER_MAGIC,
    };
    let Ok(st) = nix::sys::statfs::fstatfs(fd) else {
        return true;
    };
    let t = st.filesystem_type();
    // and by number: CIFS, SMB2, Ceph, 9p, Lustre (GlusterFS is FUSE)
    [
        AFS_SUPER_MAGIC,
        FUSE_SUPER_MAGIC,
        NFS_SUPER_MAGIC,
        SMB_SUPER_MAGIC,
    ]
    .contains(&t)
        || [
            0xff53_4d42_u32,
            0xfe53_4d42,
            0x00c3_6400,
            0x0102_1997,
            0x0bd0_0bd0,
        ]
        .into_iter()
        .any(|m| t == FsType(m.into()))
}

fn ids(st: &nix::sys::stat::FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl DirSource {
    fn name_of(&mut self, file: &std::ffi::OsString, opts: &MonitorOptions) -> Option<VassalName> {
        let s = match file.to_str() {
            Some(s) => s,
            None => {
                self.refused.report(file, &"the name is not valid UTF-8");
                return None;
            }
        };
        match VassalName::parse(s, &opts.extensions, NamePolicy::Plain) {
            Ok(n) => Some(n),
            // files without a config extension are simply not vassals
            Err(NameError::BadExtension(_)) => None,
            Err(e) => {
                self.refused.report(file, &e);
                None
            }
        }
    }

    fn spec(&mut self, name: VassalName, opts: &MonitorOptions) -> io::Result<Option<VassalSpec>> {
        let found = stat_vassal(&self.dir.join(name.as_str()), opts)?;
        Ok(found.map(|found| self.spec_of(name, found, opts)))
    }

    fn spec_of(
        &mut self,
        name: VassalName,
        (key, owner): (ChangeKey, Owner),
        opts: &MonitorOptions,
    ) -> VassalSpec {
        let mut spec = file_spec(
            name.clone(),
            PathBuf::from(name.as_str()),
            key,
            owner,
            Some(self.dir.clone()),
        );
        spec.socket = self.sockets.resolve(&name, &self.dir, opts);
        spec
    }
}

impl FileSource for DirSource {
    fn scan(&mut self, opts: &MonitorOptions) -> io::Result<Vec<VassalSpec>> {
        let mut specs = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = self.name_of(&entry.file_name(), opts) else {
                continue;
            };
            match stat_entry(&entry, opts) {
                Ok(Some(found)) => specs.push(self.spec_of(name, found, opts)),
                // a file that vanished between readdir and stat, or a
                // symlink whose target is not there (yet), is simply absent;
                // anything else named like a config is said once
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                _ => {
                    let why = not_a_vassal(&entry.path(), opts);
                    self.refused.not_a_file(&entry.file_name(), &why);
                }
            }
        }
        self.sockets.retain(&specs);
        self.refused.end_scan();
        Ok(specs)
    }

    /// Every name in the directory, and what a stat of each name with a
    /// config extension says (type, mtime, inode, size, owner: all that a
    /// spec is built from), without building a spec. Sources whose specs
    /// also depend on other files (`--emperor-on-demand-extension` reads
    /// one per vassal, `--emperor-tyrant-nofollow` a second stat) are not
    /// fingerprinted.
    fn fingerprint(
        &mut self,
        opts: &MonitorOptions,
        state: &std::hash::RandomState,
    ) -> Option<u64> {
        use nix::fcntl::AtFlags;
        use std::hash::{BuildHasher, Hash, Hasher};
        // the exec mode scans off the emperor's thread: so would this
        if matches!(
            opts.on_demand,
            emperor::OnDemandSource::Extension(_) | emperor::OnDemandSource::Exec(_)
        ) || opts.tyrant_nofollow
        {
            return None;
        }
        // the path as it resolves now (a symlinked directory is followed)
        let Ok(st) = nix::sys::stat::stat(&self.dir) else {
            // gone: nothing kept pinned
            self.held = None;
            return None;
        };
        let id = ids(&st);
        if self.held.as_ref().is_none_or(|h| h.id != id) {
            self.held = HeldDir::open(&self.dir, id);
        }
        let held = self.held.as_mut()?;
        let follow = if opts.nofollow {
            AtFlags::AT_SYMLINK_NOFOLLOW
        } else {
            AtFlags::empty()
        };
        let mut h = state.build_hasher();
        id.hash(&mut h);
        let mut failed = false;
        // the iterator rewinds the directory when dropped
        for entry in held.entries.iter() {
            let Ok(entry) = entry else {
                failed = true;
                break;
            };
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            bytes.hash(&mut h);
            let config = std::str::from_utf8(bytes).is_ok_and(|s| opts.extensions.accepts(s));
            if !config {
                continue;
            }
            match nix::sys::stat::fstatat(&held.at, name, follow) {
                Ok(st) => (
                    st.st_mode & nix::libc::S_IFMT,
                    st.st_mtime,
                    st.st_mtime_nsec,
                    st.st_ino,
                    st.st_size,
                    st.st_uid,
                    st.st_gid,
                )
                    .hash(&mut h),
                Err(e) => (e as i32).hash(&mut h),
            }
        }
        if failed {
            // opened anew next time
            self.held = None;
            return None;
        }
        Some(h.finish())
    }

    fn dirs(&self) -> BTreeSet<PathBuf> {
        BTreeSet::from([self.dir.clone()])
    }

    fn changes(&mut self, batch: &Batch, opts: &MonitorOptions) -> Option<Vec<Change>> {
        let mut out = Vec::new();
        for (_, file) in &batch.names {
            // a changed on-demand socket file (NAME + EXT) is a change of NAME
            let file = match (&opts.on_demand, file.to_str()) {
                (emperor::OnDemandSource::Extension(ext), Some(f)) if f.ends_with(ext.as_str()) => {
                    std::ffi::OsString::from(&f[..f.len() - ext.len()])
                }
                _ => file.clone(),
            };
            let Some(name) = self.name_of(&file, opts) else {
                continue;
            };
            match self.spec(name.clone(), opts) {
                Ok(Some(spec)) => out.push(Change::Upsert(spec)),
                Ok(None) => out.push(Change::Remove(name)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => out.push(Change::Remove(name)),
                Err(_) => return None,
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::RandomState;
    use std::os::unix::fs::symlink;

    fn source(dir: PathBuf) -> DirSource {
        DirSource {
            dir,
            refused: RefusedNames::default(),
            sockets: SocketResolver::default(),
            held: None,
        }
    }

    /// Every change a scan would see changes the fingerprint; nothing else
    /// does.
    #[test]
    fn fingerprint_follows_what_a_scan_sees() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("v");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("a.ini"), "[uwsgi]\n").unwrap();
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        let opts = MonitorOptions::default();
        let state = RandomState::new();
        let mut src = source(d.clone());
        let mut print = || {
            src.fingerprint(&opts, &state)
                .expect("a plain directory is fingerprinted")
        };
        let p0 = print();
        assert_eq!(print(), p0, "nothing changed");

        let f = std::fs::File::options()
            .write(true)
            .open(d.join("a.ini"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7))
            .unwrap();
        let p1 = print();
        assert_ne!(p1, p0, "an mtime-only touch");
        std::fs::write(d.join("a.ini"), "[uwsgi]\nmaster = 1\n").unwrap();
        let p2 = print();
        assert_ne!(p2, p1, "a rewrite (size and mtime)");
        std::fs::write(d.join("b.ini"), "[uwsgi]\n").unwrap();
        let p3 = print();
        assert_ne!(p3, p2, "a new config");
        std::fs::remove_file(d.join("b.ini")).unwrap();
        let p4 = print();
        assert_ne!(p4, p3, "a config deleted");
        let p5 = if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(d.join("a.ini"), Some(1), Some(1)).unwrap();
            let p5 = print();
            assert_ne!(p5, p4, "an owner change (tyrant mode reads it)");
            p5
        } else {
            eprintln!("NOT TESTED: an owner change (needs root to chown)");
            p4
        };
        std::fs::rename(d.join("a.ini"), d.join("c.ini")).unwrap();
        let p6 = print();
        assert_ne!(p6, p5, "a rename");
        assert_eq!(print(), p6, "nothing changed again");
    }

    /// A directory reached through a symlink is followed anew: swapping the
    /// link changes the fingerprint, as a scan would see other files.
    #[test]
    fn fingerprint_follows_a_swapped_directory_link() {
        let tmp = tempfile::tempdir().unwrap();
        for r in ["r1", "r2"] {
            std::fs::create_dir(tmp.path().join(r)).unwrap();
            // the same name and contents: only the directory differs
            std::fs::write(tmp.path().join(r).join("a.ini"), "[uwsgi]\n").unwrap();
        }
        let cur = tmp.path().join("current");
        symlink("r1", &cur).unwrap();
        let opts = MonitorOptions::default();
        let state = RandomState::new();
        let mut src = source(cur.clone());
        let p1 = src.fingerprint(&opts, &state).unwrap();
        symlink("r2", tmp.path().join("next")).unwrap();
        std::fs::rename(tmp.path().join("next"), &cur).unwrap();
        let p2 = src.fingerprint(&opts, &state).unwrap();
        assert_ne!(p1, p2);
        // and the files of the new target are the ones fingerprinted
        std::fs::write(tmp.path().join("r2").join("b.ini"), "[uwsgi]\n").unwrap();
        assert_ne!(src.fingerprint(&opts, &state).unwrap(), p2);
    }

    /// Sources whose specs depend on more than the directory's own files
    /// are always scanned in full; a directory that is gone cannot be
    /// fingerprinted (the scan reports the error).
    #[test]
    fn no_fingerprint_where_it_cannot_tell() {
        let tmp = tempfile::tempdir().unwrap();
        let state = RandomState::new();
        let mut src = source(tmp.path().to_path_buf());
        let opts = MonitorOptions {
            on_demand: emperor::OnDemandSource::Extension(".socket".into()),
            ..MonitorOptions::default()
        };
        assert_eq!(src.fingerprint(&opts, &state), None);
        let opts = MonitorOptions {
            tyrant_nofollow: true,
            ..MonitorOptions::default()
        };
        assert_eq!(src.fingerprint(&opts, &state), None);
        let mut gone = source(tmp.path().join("missing"));
        assert_eq!(gone.fingerprint(&MonitorOptions::default(), &state), None);
    }
}
