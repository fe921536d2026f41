//! `file://PATH`: one config file is one vassal (uWSGI watches a single file
//! as `glob://PATH`; this is that, without a pattern).
//!
//! The vassal is named and started exactly as `glob://PATH` would: the id
//! is the path as given (absolute for an absolute path; a relative one
//! resolves against the emperor's working directory, where the vassal
//! starts). It runs while the file exists, is reloaded when the file
//! changes, stops when it is removed and starts again when it reappears.
//! The parent directory is watched through inotify, so an editor that
//! renames a new file over the old one, or a deploy that swaps a symlink,
//! is seen at once; a full rescan runs every `--emperor-freq` seconds as a
//! safety net. A parent directory that does not exist is
//! `Health(Degraded)`: the vassal is kept until it can be seen again.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use emperor::{
    Change, Monitor, MonitorContext, MonitorError, MonitorOptions, NamePolicy, OnDemandSource,
    VassalName, VassalSpec,
};
use futures::future::BoxFuture;

use crate::fswatch::{file_spec, run_file_monitor, stat_vassal, Batch, FileSource, SocketResolver};

/// Builds a file:// monitor.
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    Ok(Box::new(FileMonitor::new(t.url, t.rest, t.opts)?))
}

/// The file:// monitor.
pub struct FileMonitor {
    /// The path as given: the vassal's id and its config path.
    shown: PathBuf,
    /// The path resolved against the emperor's working directory.
    path: PathBuf,
    name: VassalName,
}

impl FileMonitor {
    /// `url` is the whole `--emperor` value, `path` what follows `file://`.
    /// The path must name a config file (a config extension); the file
    /// itself may be missing.
    pub fn new(url: &str, path: &str, opts: &MonitorOptions) -> Result<Self, MonitorError> {
        let bad = |reason: String| MonitorError::BadUrl {
            url: url.to_string(),
            reason,
        };
        if path.is_empty() {
            return Err(bad("no path (file:///etc/uwsgi/app.ini)".to_string()));
        }
        let name = VassalName::parse(path, &opts.extensions, NamePolicy::Path)
            .map_err(|e| bad(e.to_string()))?;
        let shown = PathBuf::from(path);
        let path = opts.cwd.join(&shown);
        if path.file_name().is_none() || path.parent().is_none() {
            return Err(bad("the path names no file".to_string()));
        }
        Ok(FileMonitor { shown, path, name })
    }
}

impl Monitor for FileMonitor {
    fn describe(&self) -> String {
        format!("file://{}", self.shown.display())
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        let src = FileOnly {
            cwd: ctx.options.cwd.clone(),
            mon: *self,
            sockets: SocketResolver::default(),
        };
        Box::pin(run_file_monitor(src, ctx))
    }
}

struct FileOnly {
    mon: FileMonitor,
    cwd: PathBuf,
    sockets: SocketResolver,
}

impl FileOnly {
    fn parent(&self) -> &Path {
        self.mon.path.parent().unwrap_or(Path::new("/"))
    }

    /// The vassal as the file is now: `Ok(None)` when there is none.
    fn spec(&mut self, opts: &MonitorOptions) -> io::Result<Option<VassalSpec>> {
        match stat_vassal(&self.mon.path, opts) {
            Ok(Some((key, owner))) => {
                let name = self.mon.name.clone();
                let socket = self.sockets.resolve(&name, &self.cwd, opts);
                let mut spec = file_spec(name, self.mon.shown.clone(), key, owner, None);
                spec.socket = socket;
                Ok(Some(spec))
            }
            // there, but not a file (a directory): not a vassal
            Ok(None) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.parent().is_dir() {
                    Ok(None)
                } else {
                    // the directory itself is gone: nothing can be said
                    Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("directory {} does not exist", self.parent().display()),
                    ))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// True when an event about `entry` (a name in the parent directory)
    /// may change the vassal: the file itself, or its on-demand socket file.
    fn concerns(&self, entry: &OsString, opts: &MonitorOptions) -> bool {
        let Some(file) = self.mon.path.file_name() else {
            return false;
        };
        if entry == file {
            return true;
        }
        match &opts.on_demand {
            OnDemandSource::Extension(ext) => {
                let mut with_ext = file.to_os_string();
                with_ext.push(ext);
                *entry == with_ext
            }
            _ => false,
        }
    }
}

impl FileSource for FileOnly {
    fn scan(&mut self, opts: &MonitorOptions) -> io::Result<Vec<VassalSpec>> {
        let specs: Vec<VassalSpec> = self.spec(opts)?.into_iter().collect();
        self.sockets.retain(&specs);
        Ok(specs)
    }

    fn dirs(&self) -> BTreeSet<PathBuf> {
        BTreeSet::from([self.parent().to_path_buf()])
    }

    fn changes(&mut self, batch: &Batch, opts: &MonitorOptions) -> Option<Vec<Change>> {
        if !batch.names.iter().any(|(_, n)| self.concerns(n, opts)) {
            return Some(Vec::new());
        }
        match self.spec(opts) {
            Ok(Some(spec)) => Some(vec![Change::Upsert(spec)]),
            Ok(None) => {
                self.sockets.retain(&[]);
                Some(vec![Change::Remove(self.mon.name.clone())])
            }
            // cannot tell: the full scan reports it
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_one_config_file() {
        let opts = MonitorOptions {
            cwd: PathBuf::from("/srv"),
            ..Default::default()
        };
        let m = FileMonitor::new("file:///etc/uwsgi/app.ini", "/etc/uwsgi/app.ini", &opts).unwrap();
        assert_eq!(m.name.as_str(), "/etc/uwsgi/app.ini");
        assert_eq!(m.path, PathBuf::from("/etc/uwsgi/app.ini"));
        assert_eq!(m.describe(), "file:///etc/uwsgi/app.ini");
        let m = FileMonitor::new("file://conf/app.ini", "conf/app.ini", &opts).unwrap();
        assert_eq!(m.name.as_str(), "conf/app.ini");
        assert_eq!(m.path, PathBuf::from("/srv/conf/app.ini"));
        for bad in ["", "/etc/uwsgi/app.txt", "/etc/../app.ini", "/etc/uwsgi/"] {
            assert!(
                FileMonitor::new(&format!("file://{bad}"), bad, &opts).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
