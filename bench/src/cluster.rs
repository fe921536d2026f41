//! `--cluster`: `--emperor-cluster` failover and duplicate window against
//! the lease time. Three imperium emperors share one directory of N test
//! vassals and one private etcd or ZooKeeper; each measurement is taken from the
//! processes (a copy of a vassal is a child of an emperor whose command
//! line names the config). uWSGI has nothing to compare with: its emperors
//! that share a source each run every vassal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::emperor::signal;
use crate::procfs;

/// What one round at one TTL measured, in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Round {
    /// SIGKILL of a member → each of its vassals runs on another one.
    pub killed: f64,
    /// SIGSTOP of a member → each of its vassals runs on another one too.
    pub frozen: f64,
    /// SIGCONT → the frozen member's copies are gone (no vassal twice).
    pub thawed: f64,
}

struct Member {
    node: String,
    child: Child,
}

impl Member {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let kids = procfs::children(self.pid());
        signal(self.pid(), Signal::SIGCONT);
        signal(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
        for k in kids {
            signal(k, Signal::SIGKILL);
        }
    }
}

struct Fleet<'a> {
    imperium: &'a Path,
    /// Where each member's log goes (`--logs`), else nowhere.
    logs: Option<PathBuf>,
    vassal: &'a Path,
    dir: PathBuf,
    url: String,
    ttl: u64,
    members: Vec<Member>,
}

impl Fleet<'_> {
    fn start(&mut self, node: &str) -> Result<()> {
        let child = Command::new(self.imperium)
            .arg("--emperor")
            .arg(&self.dir)
            .arg("--binary-path")
            .arg(self.vassal)
            .args(["--emperor-cluster", &self.url])
            .args(["--emperor-cluster-node", node])
            .args(["--emperor-cluster-ttl", &self.ttl.to_string()])
            .env("IMPERIUM_LOG", "info")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(match &self.logs {
                Some(d) => {
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(d.join(format!(
                            "cluster-{}-{}-{node}.log",
                            self.url.split(':').next().unwrap_or("engine"),
                            self.ttl
                        )))?;
                    Stdio::from(f)
                }
                None => Stdio::null(),
            })
            .spawn()
            .context("cannot start imperium")?;
        self.members.push(Member {
            node: node.into(),
            child,
        });
        Ok(())
    }

    /// Each vassal's copies: the nodes whose emperor runs it.
    fn copies(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in &self.members {
            for c in procfs::children(m.pid()) {
                if let Some(name) = testkit::procs::vassal_config(c) {
                    out.entry(name).or_default().push(m.node.clone());
                }
            }
        }
        out
    }

    /// Waits until every vassal of `names` runs exactly once on a member
    /// other than `but`; returns when that was first seen.
    fn once_each(&self, names: &[String], but: Option<&str>, timeout: Duration) -> Result<Instant> {
        let end = Instant::now() + timeout;
        loop {
            let c = self.copies();
            let ok = names.iter().all(|n| {
                c.get(n)
                    .is_some_and(|on| on.iter().filter(|m| Some(m.as_str()) != but).count() == 1)
            });
            if ok {
                return Ok(Instant::now());
            }
            if Instant::now() > end {
                bail!("the vassals were not each running once within {timeout:?}: {c:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the placement has been the same, each vassal once, for
    /// a second.
    fn settle(&self, names: &[String], timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        let mut stable: Option<(Instant, BTreeMap<String, Vec<String>>)> = None;
        loop {
            let c = self.copies();
            let once = names
                .iter()
                .all(|n| c.get(n).is_some_and(|on| on.len() == 1));
            match &stable {
                Some((t, prev)) if once && *prev == c => {
                    if t.elapsed() >= Duration::from_secs(1) {
                        return Ok(());
                    }
                }
                _ if once => stable = Some((Instant::now(), c)),
                _ => stable = None,
            }
            if Instant::now() > end {
                bail!("the cluster did not settle within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn member(&self, node: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.node == node)
            .expect("a member")
    }
}

/// One round at lease time `ttl`: kill a member, start it again, freeze
/// another one, thaw it.
pub fn round(
    imperium: &Path,
    vassal: &Path,
    url: &str,
    n: usize,
    ttl: u64,
    logs: Option<PathBuf>,
) -> Result<Round> {
    let tmp = tempfile::Builder::new()
        .prefix("imperium-bench-cluster")
        .tempdir()?;
    let names: Vec<String> = (0..n).map(|i| format!("c{i:05}.ini")).collect();
    for name in &names {
        std::fs::write(tmp.path().join(name), "[uwsgi]\n[vassal]\nloyal = 1\n")?;
    }
    let mut f = Fleet {
        imperium,
        logs,
        vassal,
        dir: tmp.path().to_path_buf(),
        url: url.to_string(),
        ttl,
        members: Vec::new(),
    };
    for node in ["a", "b", "c"] {
        f.start(node)?;
    }
    let long = Duration::from_secs(60 + 3 * ttl);
    f.settle(&names, long)?;
    let mut r = Round::default();
    // a member dies
    let t = Instant::now();
    signal(f.member("c").pid(), Signal::SIGKILL);
    let at = f.once_each(&names, Some("c"), long)?;
    r.killed = crate::ms(at - t);
    f.members.retain(|m| m.node != "c");
    f.start("c")?;
    f.settle(&names, long)?;
    // a member freezes; it runs again once the others took over
    let t = Instant::now();
    signal(f.member("b").pid(), Signal::SIGSTOP);
    let at = f.once_each(&names, Some("b"), long)?;
    r.frozen = crate::ms(at - t);
    let t = Instant::now();
    signal(f.member("b").pid(), Signal::SIGCONT);
    let at = f.once_each(&names, None, long)?;
    r.thawed = crate::ms(at - t);
    Ok(r)
}
