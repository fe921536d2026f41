//! `--emperor-cluster etcd://`: three emperors on this machine share one
//! directory of real uWSGI vassals and one private etcd; each emperor has
//! its own socket directory in the vassals' environment (`$(HOSTDIR)`),
//! standing for separate hosts. Every check counts processes: a copy of a
//! vassal is a uWSGI master whose parent is that emperor.
#![cfg(feature = "etcd")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testkit::procs::{alive, children};
use testkit::servers::etcd::Etcd;
use testkit::servers::wait_until;
use testkit::uwsgi::uwsgi_bin;
use testkit::Imperium;

/// The lease time the tests run with (seconds).
const TTL: u64 = 3;

/// A vassal: a uWSGI master with one worker and no app, on a socket in its
/// emperor's directory.
fn vassal(extra: &str) -> String {
    format!("[uwsgi]\nmaster = true\nprocesses = 1\nsocket = $(HOSTDIR)/%n.sock\n{extra}")
}

struct Member {
    node: String,
    imp: Imperium,
    ctl: PathBuf,
}

struct Fleet {
    tmp: tempfile::TempDir,
    vassals: PathBuf,
    url: String,
    members: Vec<Member>,
}

impl Fleet {
    fn new(etcd: &Etcd, n: usize) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let vassals = tmp.path().join("vassals");
        std::fs::create_dir(&vassals).unwrap();
        for i in 0..n {
            std::fs::write(vassals.join(format!("v{i}.ini")), vassal("")).unwrap();
        }
        Fleet {
            url: format!("etcd://{}/fleet", etcd.endpoint()),
            tmp,
            vassals,
            members: Vec::new(),
        }
    }

    fn start(&mut self, node: &str, extra: &[&str]) {
        let hostdir = self.tmp.path().join(node);
        std::fs::create_dir_all(&hostdir).unwrap();
        let ctl = self.tmp.path().join(format!("{node}.ctl"));
        let ttl = TTL.to_string();
        let uwsgi = uwsgi_bin();
        let mut args: Vec<&str> = vec![
            "--emperor",
            self.vassals.to_str().unwrap(),
            "--binary-path",
            uwsgi.to_str().unwrap(),
            "--reload-mercy",
            "10",
            "--emperor-cluster",
            &self.url,
            "--emperor-cluster-node",
            node,
            "--emperor-cluster-ttl",
            &ttl,
            "--emperor-cluster-claim-delay",
            "1",
            "--emperor-control-socket",
            ctl.to_str().unwrap(),
        ];
        args.extend(extra);
        let imp = Imperium::start_with_env(
            self.tmp.path(),
            args,
            &[("HOSTDIR", hostdir.to_str().unwrap())],
        );
        self.members.push(Member {
            node: node.into(),
            imp,
            ctl,
        });
    }

    fn member(&self, node: &str) -> &Member {
        self.members.iter().find(|m| m.node == node).unwrap()
    }

    /// Each vassal's copies: the node of every emperor whose child runs it.
    fn copies(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in &self.members {
            let pid = m.imp.pid();
            for c in children(pid) {
                let Ok(cmd) = std::fs::read(format!("/proc/{c}/cmdline")) else {
                    continue;
                };
                for arg in cmd.split(|b| *b == 0) {
                    let arg = String::from_utf8_lossy(arg);
                    if let Some(name) = Path::new(&*arg).file_name().and_then(|f| f.to_str()) {
                        if name.ends_with(".ini") {
                            out.entry(name.to_string())
                                .or_default()
                                .push(m.node.clone());
                        }
                    }
                }
            }
        }
        out
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("===== {} =====\n{}", m.node, m.imp.log()))
            .collect()
    }

    /// Waits until every vassal of `names` runs on exactly `k` distinct
    /// members (`k(name)`), failing if any sample meanwhile shows more
    /// copies than `max(name)`.
    fn settle(
        &self,
        names: &[String],
        k: impl Fn(&str) -> usize,
        max: impl Fn(&str) -> usize,
        timeout: Duration,
    ) -> (BTreeMap<String, Vec<String>>, Instant) {
        let end = Instant::now() + timeout;
        let mut stable: Option<(Instant, BTreeMap<String, Vec<String>>)> = None;
        loop {
            let c = self.copies();
            for (n, on) in &c {
                assert!(
                    on.len() <= max(n),
                    "{n} runs {} times ({on:?}), at most {} allowed\n{}",
                    on.len(),
                    max(n),
                    self.logs()
                );
            }
            let done = names.iter().all(|n| {
                c.get(n).is_some_and(|on| {
                    let mut d = on.clone();
                    d.sort();
                    d.dedup();
                    on.len() == k(n) && d.len() == on.len()
                })
            }) && c.keys().all(|n| names.contains(n));
            // the same for a while: moves still under way are over
            match (&stable, done) {
                (Some((since, prev)), true) if *prev == c => {
                    if since.elapsed() >= Duration::from_millis(1500) {
                        return (c, *since);
                    }
                }
                (_, true) => stable = Some((Instant::now(), c.clone())),
                (_, false) => stable = None,
            }
            assert!(
                Instant::now() < end,
                "not settled within {timeout:?}: {c:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("v{i}.ini")).collect()
}

fn ctl_cluster(m: &Member) -> serde_json::Value {
    let out = testkit::ctl_ok(&m.ctl, &["--json", "cluster"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["data"].clone()
}

#[test]
fn each_vassal_runs_once_and_a_killed_member_is_replaced_within_ttl() {
    let etcd = Etcd::start();
    let mut f = Fleet::new(&etcd, 9);
    for node in ["a", "b", "c"] {
        f.start(node, &[]);
    }
    let all = names(9);
    let (c, _) = f.settle(&all, |_| 1, |_| 1, Duration::from_secs(60));
    // rendezvous hashing spreads them
    let on_c: Vec<&String> = c
        .iter()
        .filter(|(_, on)| on[0] == "c")
        .map(|(n, _)| n)
        .collect();
    assert!(
        c.values().any(|on| on[0] == "a") && c.values().any(|on| on[0] == "b") && !on_c.is_empty(),
        "{c:?}"
    );
    // ctl cluster: every member live, the holdings match the processes
    let view = ctl_cluster(f.member("a"));
    assert_eq!(view["node"], "a");
    assert_eq!(view["online"], true, "{view}");
    let members = view["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{view}");
    for m in members {
        let node = m["node"].as_str().unwrap();
        let mut held: Vec<String> = m["holds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["vassal"].as_str().unwrap().to_string())
            .collect();
        held.sort();
        let mut runs: Vec<String> = c
            .iter()
            .filter(|(_, on)| on[0] == node)
            .map(|(n, _)| n.clone())
            .collect();
        runs.sort();
        assert_eq!(held, runs, "{node}: {view}\n{}", f.logs());
    }
    let text = testkit::ctl_ok(&f.member("b").ctl, &["cluster"]);
    assert!(text.contains("node b") && text.contains("online"), "{text}");
    // the stats of a vassal say where it runs
    let shown = testkit::ctl_ok(&f.member("c").ctl, &["--json", "show", on_c[0]]);
    assert!(shown.contains("\"placement\": \"here\""), "{shown}");

    // c dies: its vassals die with it, and run elsewhere within TTL + 5 s
    let c_pids = children(f.member("c").imp.pid());
    let killed = Instant::now();
    f.member("c").imp.signal(Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(10), || c_pids
        .iter()
        .all(|p| !alive(*p))));
    f.members.retain(|m| m.node != "c");
    let (c2, at) = f.settle(&all, |_| 1, |_| 1, Duration::from_secs(TTL + 7));
    let took = at - killed;
    eprintln!("re-placed {} vassals in {took:?}", on_c.len());
    assert!(took <= Duration::from_secs(TTL + 5), "took {took:?}");
    for n in &on_c {
        assert_ne!(c2[*n][0], "c");
    }
    // the survivors kept what they ran
    for (n, on) in &c {
        if on[0] != "c" {
            assert_eq!(
                &c2[n],
                on,
                "{n} moved though its member lives\n{}",
                f.logs()
            );
        }
    }
}
