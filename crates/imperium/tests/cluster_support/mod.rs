//! The scenarios of `--emperor-cluster`, the same for etcd and ZooKeeper:
//! three emperors on this machine share one directory of real uWSGI
//! vassals and one private engine; each emperor has its own socket
//! directory in the vassals' environment (`$(HOSTDIR)`), standing for
//! separate hosts. Every check counts processes: a copy of a vassal is a
//! uWSGI master whose parent is that emperor.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testkit::procs::{alive, children, vassal_config};
use testkit::servers::wait_until;
use testkit::uwsgi::uwsgi_bin;
use testkit::Imperium;

/// The lease time the tests run with (seconds).
pub const TTL: u64 = 3;

/// A private cluster engine.
pub trait Engine {
    /// Starts a fresh one.
    fn start() -> Self;
    /// The `--emperor-cluster` URL, through `endpoint` (`HOST:PORT`) when
    /// given.
    fn url(&self, endpoint: Option<&str>) -> String;
    /// Its client port on 127.0.0.1.
    fn port(&self) -> u16;
    /// Stops it (its data is kept).
    fn stop(&mut self);
    /// Starts it again on the same data and port.
    fn restart(&mut self);
}

/// The [`Engine`] of a testkit server type: `$scheme://$endpoint()/fleet`.
macro_rules! engine {
    ($feature:literal, $t:ty, $scheme:literal, $endpoint:ident) => {
        #[cfg(feature = $feature)]
        impl Engine for $t {
            fn start() -> Self {
                <$t>::start()
            }
            fn url(&self, endpoint: Option<&str>) -> String {
                let at = endpoint.map_or_else(|| self.$endpoint(), str::to_string);
                format!("{}://{at}/fleet", $scheme)
            }
            fn port(&self) -> u16 {
                self.port
            }
            fn stop(&mut self) {
                <$t>::stop(self);
            }
            fn restart(&mut self) {
                <$t>::restart(self);
            }
        }
    };
}

engine!("etcd", testkit::servers::etcd::Etcd, "etcd", endpoint);
engine!("zoo", testkit::servers::zookeeper::ZooKeeper, "zoo", hosts);

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

pub struct Fleet {
    tmp: tempfile::TempDir,
    vassals: PathBuf,
    /// The `--emperor` source when it is not the directory `vassals`.
    source: Option<String>,
    url: String,
    members: Vec<Member>,
}

impl Fleet {
    fn new(engine: &impl Engine, n: usize) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let vassals = tmp.path().join("vassals");
        std::fs::create_dir(&vassals).unwrap();
        for i in 0..n {
            std::fs::write(vassals.join(format!("v{i}.ini")), vassal("")).unwrap();
        }
        Fleet {
            url: engine.url(None),
            tmp,
            vassals,
            source: None,
            members: Vec::new(),
        }
    }

    fn start(&mut self, node: &str, extra: &[&str]) {
        let url = self.url.clone();
        self.start_with(&[], node, &url, extra);
    }

    /// A member run through `wrapper` (a network namespace) on its own URL
    /// of the engine.
    fn start_wrapped(&mut self, wrapper: &[&str], node: &str, url: &str, extra: &[&str]) {
        self.start_with(wrapper, node, url, extra);
    }

    fn start_with(&mut self, wrapper: &[&str], node: &str, url: &str, extra: &[&str]) {
        let hostdir = self.tmp.path().join(node);
        std::fs::create_dir_all(&hostdir).unwrap();
        let ctl = self.tmp.path().join(format!("{node}.ctl"));
        let ttl = TTL.to_string();
        let uwsgi = uwsgi_bin();
        let source = self
            .source
            .clone()
            .unwrap_or_else(|| self.vassals.to_str().unwrap().to_string());
        let mut args: Vec<&str> = vec![
            "--emperor",
            &source,
            "--binary-path",
            uwsgi.to_str().unwrap(),
            "--reload-mercy",
            "10",
            "--emperor-cluster",
            url,
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
        let imp = Imperium::start_wrapped(
            wrapper,
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
                if let Some(name) = vassal_config(c) {
                    out.entry(name).or_default().push(m.node.clone());
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

/// The most copies a vassal of `k` replicas may have while members come
/// and go: one more during a move with two replicas or more (make before
/// break), never more with one (break before make).
fn surge(k: usize) -> usize {
    if k >= 2 {
        k + 1
    } else {
        1
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("v{i}.ini")).collect()
}

fn ctl_cluster(m: &Member) -> serde_json::Value {
    let out = testkit::ctl_ok(&m.ctl, &["--json", "cluster"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["data"].clone()
}

pub fn killed_member<E: Engine>() {
    let engine = E::start();
    let mut f = Fleet::new(&engine, 9);
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

/// The master pid of every copy, by vassal and node.
fn masters(f: &Fleet) -> BTreeMap<(String, String), u32> {
    let mut out = BTreeMap::new();
    for m in &f.members {
        for c in children(m.imp.pid()) {
            if let Some(n) = vassal_config(c) {
                out.insert((n, m.node.clone()), c);
            }
        }
    }
    out
}

pub fn frozen_member<E: Engine>(k: usize) {
    let engine = E::start();
    let mut f = Fleet::new(&engine, 9);
    let replicas = k.to_string();
    for node in ["a", "b", "c"] {
        f.start(node, &["--emperor-replicas", &replicas]);
    }
    let all = names(9);
    let (c, _) = f.settle(&all, |_| k, |_| surge(k), Duration::from_secs(60));
    let on_b: Vec<String> = c
        .iter()
        .filter(|(_, on)| on.iter().any(|m| m == "b"))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(!on_b.is_empty(), "{c:?}");
    let b_pid = f.member("b").imp.pid();
    let frozen = Instant::now();
    f.member("b").imp.signal(Signal::SIGSTOP);
    // a frozen emperor cannot stop its vassals: they keep running, and the
    // others start theirs once its lease expired (two members are left)
    let replaced = wait_until(Duration::from_secs(TTL + 5), || {
        let c = f.copies();
        all.iter().all(|n| {
            c.get(n)
                .is_some_and(|on| on.iter().filter(|m| *m != "b").count() == k.min(2))
        })
    });
    let took = frozen.elapsed();
    assert!(
        replaced,
        "not re-placed within TTL + 5 s: {:?}\n{}",
        f.copies(),
        f.logs()
    );
    eprintln!(
        "frozen member's {} vassals re-placed in {took:?}",
        on_b.len()
    );
    assert_eq!(
        testkit::procs::ppid(masters(&f)[&(on_b[0].clone(), "b".into())]),
        Some(b_pid)
    );
    // thawed: it sees its lease gone and stops its copies within seconds
    let thawed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(b_pid as i32), Signal::SIGCONT).unwrap();
    let stopped = wait_until(Duration::from_secs(5), || {
        f.copies().values().all(|on| on.len() <= k)
    });
    assert!(
        stopped,
        "duplicates after SIGCONT: {:?}\n{}",
        f.copies(),
        f.logs()
    );
    eprintln!("duplicates gone {:?} after SIGCONT", thawed.elapsed());
    f.member("b")
        .imp
        .wait_log("stopping the", Duration::from_secs(1));
    // then it takes its share back, one copy at a time
    f.settle(&all, |_| k, |_| surge(k), Duration::from_secs(30));
}

pub fn replicas_two<E: Engine>() {
    let engine = E::start();
    let mut f = Fleet::new(&engine, 4);
    std::fs::write(
        f.vassals.join("everywhere.ini"),
        vassal("[imperium]\nreplicas = all\n"),
    )
    .unwrap();
    std::fs::write(
        f.vassals.join("single.ini"),
        vassal("[imperium]\nreplicas = 1\n"),
    )
    .unwrap();
    for node in ["a", "b", "c"] {
        f.start(node, &["--emperor-replicas", "2"]);
    }
    let mut all = names(4);
    all.push("everywhere.ini".into());
    all.push("single.ini".into());
    let want = |members: usize| {
        move |n: &str| match n {
            "everywhere.ini" => members,
            "single.ini" => 1,
            _ => 2,
        }
    };
    // while the members come up a move may run one copy more
    let surge = |members: usize| {
        move |n: &str| match n {
            "everywhere.ini" => members,
            "single.ini" => 1,
            _ => 3,
        }
    };
    f.settle(&all, want(3), surge(3), Duration::from_secs(60));
    // d joins: it takes its share, and a vassal with two replicas never
    // runs fewer than two copies meanwhile (make before break)
    f.start("d", &["--emperor-replicas", "2"]);
    let end = Instant::now() + Duration::from_secs(30);
    let mut seen_on_d = false;
    loop {
        let c = f.copies();
        for n in names(4) {
            let k = c.get(&n).map_or(0, Vec::len);
            assert!(
                (2..=3).contains(&k),
                "{n} runs {k} times during the join: {c:?}\n{}",
                f.logs()
            );
        }
        assert!(c.get("single.ini").map_or(0, Vec::len) <= 1, "{c:?}");
        seen_on_d |= c.values().any(|on| on.iter().any(|m| m == "d"));
        if seen_on_d
            && c.get("everywhere.ini").map_or(0, Vec::len) == 4
            && names(4).iter().all(|n| c[n].len() == 2)
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "d never got its share: {c:?}\n{}",
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (c, _) = f.settle(&all, want(4), surge(4), Duration::from_secs(30));
    // a dies: its copies run on the others, still two on distinct members
    let on_a = c.values().filter(|on| on.iter().any(|m| m == "a")).count();
    f.member("a").imp.signal(Signal::SIGKILL);
    f.members.retain(|m| m.node != "a");
    let (c, _) = f.settle(&all, want(3), surge(4), Duration::from_secs(TTL + 7));
    assert!(c.values().all(|on| !on.iter().any(|m| m == "a")));
    eprintln!("a held {on_a} copies; re-placed");
}

pub fn engine_restarted<E: Engine>(k: usize) {
    let mut engine = E::start();
    let mut f = Fleet::new(&engine, 6);
    let replicas = k.to_string();
    for node in ["a", "b", "c"] {
        f.start(node, &["--emperor-replicas", &replicas]);
    }
    let all = names(6);
    f.settle(&all, |_| k, |_| surge(k), Duration::from_secs(60));
    let before = masters(&f);
    // down for twice the lease time: nobody fences, nothing restarts
    engine.stop();
    std::thread::sleep(Duration::from_secs(2 * TTL));
    assert_eq!(masters(&f), before, "{}", f.logs());
    for m in &f.members {
        let v = ctl_cluster(m);
        assert_eq!(v["online"], false, "{v}");
    }
    engine.restart();
    let back = wait_until(Duration::from_secs(20), || {
        f.members.iter().all(|m| ctl_cluster(m)["online"] == true)
    });
    assert!(back, "{}", f.logs());
    std::thread::sleep(Duration::from_secs(TTL));
    assert_eq!(masters(&f), before, "a vassal was restarted\n{}", f.logs());
    for m in &f.members {
        assert!(
            !m.imp.log().contains("stopping the"),
            "{} fenced\n{}",
            m.node,
            f.logs()
        );
    }
}

/// A network namespace linked to this one by a veth pair, with a TCP
/// forwarder from the host side of the link to the engine on loopback: an
/// emperor in the namespace reaches it only through the link, and
/// [`Partition::cut`] cuts it.
struct Partition {
    ns: String,
    host_if: String,
    /// `ADDR:PORT` of the forwarder, as seen from the namespace.
    endpoint: String,
}

impl Partition {
    /// `None` (after saying why) where namespaces cannot be made.
    fn new(engine_port: u16) -> Option<Partition> {
        let id = std::process::id() % 250;
        let ns = format!("imp-part-{}", std::process::id());
        let host_if = format!("impa{id}");
        let (host, inner) = (format!("10.213.{id}.1"), format!("10.213.{id}.2"));
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), ns.clone()],
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                format!("impb{id}"),
            ],
            vec![
                "link".into(),
                "set".into(),
                format!("impb{id}"),
                "netns".into(),
                ns.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host}/30"),
                "dev".into(),
                host_if.clone(),
            ],
            vec!["link".into(), "set".into(), host_if.clone(), "up".into()],
            vec![
                "-n".into(),
                ns.clone(),
                "addr".into(),
                "add".into(),
                format!("{inner}/30"),
                "dev".into(),
                format!("impb{id}"),
            ],
            vec![
                "-n".into(),
                ns.clone(),
                "link".into(),
                "set".into(),
                format!("impb{id}"),
                "up".into(),
            ],
            vec![
                "-n".into(),
                ns.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        let p = Partition {
            ns,
            host_if,
            endpoint: String::new(),
        };
        for s in steps {
            let o = std::process::Command::new("ip").args(&s).output();
            if !o.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!(
                    "SKIPPED: cannot make a network namespace here (ip {}: {:?}); the partition test needs root and iproute2",
                    s.join(" "),
                    o.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                );
                return None;
            }
        }
        let listener = std::net::TcpListener::bind((host.as_str(), 0)).expect("bind the forwarder");
        let endpoint = format!("{host}:{}", listener.local_addr().unwrap().port());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", engine_port)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (conn.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, conn),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        let mut p = p;
        p.endpoint = endpoint;
        Some(p)
    }

    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", self.ns.as_str()]
    }

    fn set_link(&self, up: bool) {
        let st = std::process::Command::new("ip")
            .args(["link", "set", &self.host_if, if up { "up" } else { "down" }])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

pub fn partitioned_member<E: Engine>(k: usize) {
    let engine = E::start();
    let Some(part) = Partition::new(engine.port()) else {
        return;
    };
    let mut f = Fleet::new(&engine, 9);
    let replicas = k.to_string();
    let extra = ["--emperor-replicas", replicas.as_str()];
    f.start("a", &extra);
    f.start("c", &extra);
    // b runs in the namespace and reaches the engine only through the link
    let url = engine.url(Some(&part.endpoint));
    f.start_wrapped(&part.wrapper(), "b", &url, &extra);
    let all = names(9);
    let (c, _) = f.settle(&all, |_| k, |_| surge(k), Duration::from_secs(60));
    let on_b = c.values().filter(|on| on.iter().any(|m| m == "b")).count();
    assert!(on_b > 0, "{c:?}");
    // cut: b stops its copies at its local deadline, before its lease can
    // expire, so no sample ever shows a vassal more than k times
    let cut = Instant::now();
    part.set_link(false);
    let mut fenced_at = None;
    loop {
        let c = f.copies();
        assert!(
            c.values().all(|on| on.len() <= k),
            "a vassal runs more than {k} times: {c:?}\n{}",
            f.logs()
        );
        if fenced_at.is_none() && c.values().all(|on| !on.iter().any(|m| m == "b")) {
            fenced_at = Some(cut.elapsed());
        }
        let replaced = all.iter().all(|n| c.get(n).map_or(0, Vec::len) == k.min(2));
        if fenced_at.is_some() && replaced {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(TTL + 5),
            "not re-placed within TTL + 5 s: {c:?}\n{}",
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = cut.elapsed();
    let fenced = fenced_at.unwrap();
    // its copies are gone before anyone else may claim their slots (the
    // lease expires at TTL at the earliest, then the claim delay of 1 s);
    // the samples above show that no vassal ever ran more than k times
    assert!(
        fenced < Duration::from_secs(TTL + 1),
        "b stopped its copies only after {fenced:?}"
    );
    eprintln!("a partitioned member stopped its {on_b} vassals {fenced:?} after the cut; they ran elsewhere {took:?} after it, never more than {k} times");
    f.settle(&all, |_| k.min(2), |_| k, Duration::from_secs(10));
    f.member("b")
        .imp
        .wait_log("before its lease can expire", Duration::from_secs(1));
    // healed: b joins again and takes its share back, one copy at a time
    part.set_link(true);
    let back = wait_until(Duration::from_secs(30), || {
        let c = f.copies();
        assert!(
            c.values().all(|on| on.len() <= surge(k)),
            "a vassal runs more than {} times: {c:?}",
            surge(k)
        );
        c.values().any(|on| on.iter().any(|m| m == "b"))
    });
    assert!(back, "b never came back: {:?}\n{}", f.copies(), f.logs());
    f.settle(&all, |_| k, |_| surge(k), Duration::from_secs(30));
}

/// Any source works, and a config from a database or a store carries its
/// own `replicas` in its `[imperium]` section: etcd is the source here as
/// well as the engine.
#[cfg(feature = "etcd")]
pub fn etcd_source_carries_replicas() {
    let engine = testkit::servers::etcd::Etcd::start();
    let mut f = Fleet::new(&engine, 0);
    f.source = Some(format!("etcd://{}/vassals", engine.endpoint()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut kv = rt
        .block_on(etcd_client::Client::connect(
            [format!("http://{}", engine.endpoint())],
            None,
        ))
        .unwrap();
    let config = |name: &str, own: &str| {
        format!("[uwsgi]\nmaster = true\nprocesses = 1\nsocket = $(HOSTDIR)/{name}.sock\n{own}")
    };
    let mut put = |name: &str, own: &str| {
        rt.block_on(kv.put(format!("/vassals/{name}.ini"), config(name, own), None))
            .unwrap();
    };
    put("everywhere", "[imperium]\nreplicas = all\n");
    put("twice", "[imperium]\nreplicas = 2\n");
    put("once", "");
    for node in ["a", "b", "c"] {
        f.start(node, &[]);
    }
    let all: Vec<String> = ["everywhere.ini", "twice.ini", "once.ini"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let k = |n: &str| match n {
        "everywhere.ini" => 3,
        "twice.ini" => 2,
        _ => 1,
    };
    let max = |n: &str| match n {
        "once.ini" => 1,
        _ => 3,
    };
    f.settle(&all, k, max, Duration::from_secs(60));
    // the record changes its replicas: the cluster follows
    put("twice", "[imperium]\nreplicas = 1\n");
    let k2 = |n: &str| match n {
        "everywhere.ini" => 3,
        _ => 1,
    };
    f.settle(&all, k2, max, Duration::from_secs(30));
}

/// Every scenario as a test, with the engine `$engine`.
#[macro_export]
macro_rules! scenarios {
    ($engine:ty) => {
        #[test]
        fn each_vassal_runs_once_and_a_killed_member_is_replaced_within_ttl() {
            killed_member::<$engine>();
        }

        #[test]
        fn a_frozen_member_is_replaced_and_stops_its_copies_after_sigcont() {
            frozen_member::<$engine>(1);
        }

        #[test]
        fn replicas_two_stay_on_distinct_members_through_a_join_and_a_death() {
            replicas_two::<$engine>();
        }

        #[test]
        fn the_engine_restarted_under_the_cluster_loses_nothing() {
            engine_restarted::<$engine>(1);
        }

        #[test]
        fn a_member_cut_off_from_the_engine_fences_itself_before_its_lease_expires() {
            partitioned_member::<$engine>(1);
        }

        #[test]
        fn two_replicas_through_a_frozen_member() {
            frozen_member::<$engine>(2);
        }

        #[test]
        fn two_replicas_through_a_member_cut_off() {
            partitioned_member::<$engine>(2);
        }

        #[test]
        fn two_replicas_through_an_engine_restart() {
            engine_restarted::<$engine>(2);
        }
    };
}
