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
        };
        Box::pin(run_file_monitor(src, ctx))
    }
}

struct DirSource {
    dir: PathBuf,
    refused: RefusedNames,
    sockets: SocketResolver,
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
