//! `glob://PATTERN` (and a bare pattern): every file matching a shell
//! pattern with a config extension is a vassal (docs/monitors/dir.md).
//!
//! The vassal id is the matched path exactly as the pattern produces it
//! (absolute for an absolute pattern), so equal basenames in different
//! directories do not collide. Relative patterns resolve against the
//! emperor's working directory, where the vassals also start. The
//! directories the pattern can match in are watched through inotify; a full
//! rescan runs every `--emperor-freq` seconds as a safety net.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use emperor::{
    Change, Monitor, MonitorContext, MonitorError, MonitorOptions, NameError, NamePolicy,
    VassalName, VassalSpec,
};
use futures::future::BoxFuture;

use crate::fswatch::{
    file_spec, not_a_vassal, run_file_monitor, stat_vassal, Batch, FileSource, RefusedNames,
    SocketResolver,
};

/// The glob:// monitor.
pub struct GlobMonitor {
    pattern: String,
}

impl GlobMonitor {
    /// `url` is the whole `--emperor` value, `pattern` the shell pattern.
    pub fn new(url: &str, pattern: &str, _opts: &MonitorOptions) -> Result<Self, MonitorError> {
        if pattern.is_empty() {
            return Err(MonitorError::BadUrl {
                url: url.to_string(),
                reason: "empty glob pattern".to_string(),
            });
        }
        glob::Pattern::new(pattern).map_err(|e| MonitorError::BadUrl {
            url: url.to_string(),
            reason: format!("invalid glob pattern: {e}"),
        })?;
        Ok(GlobMonitor {
            pattern: pattern.to_string(),
        })
    }
}

/// Builds a glob:// monitor (also for a bare pattern).
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    Ok(Box::new(GlobMonitor::new(t.url, t.rest, t.opts)?))
}

impl Monitor for GlobMonitor {
    fn describe(&self) -> String {
        self.pattern.clone()
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        let src = GlobSource {
            pattern: self.pattern,
            cwd: ctx.options.cwd.clone(),
            dirs: BTreeSet::new(),
            refused: RefusedNames::default(),
            sockets: SocketResolver::default(),
        };
        Box::pin(run_file_monitor(src, ctx))
    }
}

struct GlobSource {
    pattern: String,
    cwd: PathBuf,
    dirs: BTreeSet<PathBuf>,
    refused: RefusedNames,
    sockets: SocketResolver,
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl GlobSource {
    fn abs(&self, p: &str) -> String {
        if Path::new(p).is_absolute() {
            p.to_string()
        } else {
            self.cwd.join(p).to_string_lossy().into_owned()
        }
    }

    /// The directories matches can appear in: those the pattern's parent
    /// matches now, plus the deepest literal ancestor (to see new ones).
    fn watch_dirs(&self) -> BTreeSet<PathBuf> {
        let abs = self.abs(&self.pattern);
        let mut dirs = BTreeSet::new();
        let parent = Path::new(&abs).parent().map(Path::to_path_buf);
        let Some(parent) = parent else { return dirs };
        let ps = parent.to_string_lossy();
        if has_wildcard(&ps) {
            if let Ok(paths) = glob::glob(&ps) {
                dirs.extend(paths.flatten().filter(|p| p.is_dir()));
            }
            let mut lit = PathBuf::new();
            for c in parent.components() {
                if has_wildcard(&c.as_os_str().to_string_lossy()) {
                    break;
                }
                lit.push(c);
            }
            dirs.insert(lit);
        } else {
            dirs.insert(parent);
        }
        dirs
    }
}

impl FileSource for GlobSource {
    fn scan(&mut self, opts: &MonitorOptions) -> io::Result<Vec<VassalSpec>> {
        self.dirs = self.watch_dirs();
        let abs_pattern = self.abs(&self.pattern);
        let relative = !Path::new(&self.pattern).is_absolute();
        let paths = glob::glob(&abs_pattern).map_err(|e| io::Error::other(e.to_string()))?;
        let mut specs = Vec::new();
        for p in paths.flatten() {
            // the id is the path as the pattern spells it: relative patterns
            // give paths relative to the emperor's cwd
            let shown = if relative {
                p.strip_prefix(&self.cwd).unwrap_or(&p).to_path_buf()
            } else {
                p.clone()
            };
            let Some(s) = shown.to_str() else {
                self.refused.report(
                    &shown.clone().into_os_string(),
                    &"the path is not valid UTF-8",
                );
                continue;
            };
            let name = match VassalName::parse(s, &opts.extensions, NamePolicy::Path) {
                Ok(n) => n,
                Err(NameError::BadExtension(_)) => continue,
                Err(e) => {
                    self.refused.report(&shown.clone().into_os_string(), &e);
                    continue;
                }
            };
            match stat_vassal(&p, opts) {
                Ok(Some((key, owner))) => {
                    let socket = self.sockets.resolve(&name, &self.cwd, opts);
                    let mut spec = file_spec(name, shown, key, owner, None);
                    spec.socket = socket;
                    specs.push(spec);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                _ => {
                    let why = not_a_vassal(&p, opts);
                    self.refused
                        .not_a_file(&shown.clone().into_os_string(), &why);
                }
            }
        }
        self.sockets.retain(&specs);
        self.refused.end_scan();
        Ok(specs)
    }

    fn dirs(&self) -> BTreeSet<PathBuf> {
        self.dirs.clone()
    }

    fn changes(&mut self, _batch: &Batch, _opts: &MonitorOptions) -> Option<Vec<Change>> {
        // a glob is cheap to re-evaluate and only it knows what matches
        None
    }
}
