//! imperium-bench: imperium against the real uWSGI Emperor, side by side.
//!
//! Every round runs each contender in turn on the same vassal set (the
//! order rotates from round to round), then prints the median of every
//! measurement and the ratios imperium/uWSGI. See docs/performance.md for
//! the method.
//!
//! `--scaling 100,1000,10000` runs a reduced suite instead at each N: the
//! cold start of N test vassals, then the emperor's RSS and open fds per
//! vassal, one table per measurement with a row per N; `--plots DIR` also
//! draws them against N as SVG charts (plot.rs).

mod cluster;
mod emperor;
mod floor;
mod interrupt;
mod pg;
mod plot;
mod procfs;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;

use emperor::{Contender, Kind, Programs};

/// Benchmarks imperium against `uwsgi --emperor` (same vassals, same run,
/// alternating) and prints medians and ratios.
#[derive(Debug, Parser)]
#[command(name = "imperium-bench")]
#[allow(
    clippy::struct_excessive_bools,
    reason = "command-line switches, each skipping one suite"
)]
struct Args {
    /// Vassals per directory (N).
    #[arg(short = 'n', long, default_value_t = 100)]
    vassals: usize,
    /// Rounds; each round runs every contender once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Samples per round of each latency (touch, add, remove).
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Length of the idle window, in seconds.
    #[arg(long, default_value_t = 6)]
    idle_secs: u64,
    /// The imperium binary (default: next to this program).
    #[arg(long)]
    imperium: Option<PathBuf>,
    /// The test vassal (default: next to this program).
    #[arg(long)]
    test_vassal: Option<PathBuf>,
    /// The uWSGI binary for the emperor and for the real vassals.
    #[arg(long, default_value = "/usr/bin/uwsgi-core")]
    uwsgi: PathBuf,
    /// Skip the pg:// measurements (they need PostgreSQL and uWSGI's
    /// emperor_pg plugin).
    #[arg(long)]
    no_pg: bool,
    /// Skip the cold start with real uWSGI vassals.
    #[arg(long)]
    no_uwsgi_vassals: bool,
    /// Skip the rows with 20 vassals flooding their stderr.
    #[arg(long)]
    no_log_flood: bool,
    /// Skip replacing the emperor's binary (imperium: `ctl upgrade`, in
    /// place; uWSGI: a restart, the only way it has).
    #[arg(long)]
    no_upgrade: bool,
    /// Run only these contenders (floor, imperium, uwsgi, uwsgi-1), comma
    /// separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// An extra option for every imperium run (repeatable), e.g.
    /// `--imperium-arg=--vassal-cgroup --imperium-arg=off`.
    #[arg(long, allow_hyphen_values = true)]
    imperium_arg: Vec<String>,
    /// Keep every emperor's log in this directory.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Also measure `--emperor-cluster` failover and the duplicate window
    /// of a frozen member (three imperium emperors, a private engine) at
    /// each `--cluster-ttl`, with each `--cluster-engine`.
    #[arg(long)]
    cluster: bool,
    /// Measure only `--emperor-cluster` (implies --cluster).
    #[arg(long)]
    cluster_only: bool,
    /// The lease times of the cluster rows, in seconds, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "2,5,10")]
    cluster_ttl: Vec<u64>,
    /// The engines of the cluster rows: etcd, zoo (ZooKeeper), comma
    /// separated.
    #[arg(long, value_delimiter = ',', default_value = "etcd", value_parser = ["etcd", "zoo"])]
    cluster_engine: Vec<String>,
    /// Instead of the suites at `-n`: at each of these N (comma
    /// separated, e.g. 100,1000,5000,10000) the cold start of N test
    /// vassals, then after 1 s the emperor's RSS and open fds per vassal;
    /// a table per measurement, a row per N. Contenders: floor, imperium,
    /// uwsgi, unless `--only` says otherwise.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "cluster_only")]
    scaling: Vec<u64>,
    /// With --scaling: also draw cold-start.svg, rss.svg and
    /// fds-per-vassal.svg (each against N, log scale) into this
    /// directory.
    #[arg(long, requires = "scaling")]
    plots: Option<PathBuf>,
}

/// Samples of one measurement for one contender.
type Samples = BTreeMap<(&'static str, String), Vec<f64>>;

struct Bench {
    args: Args,
    progs: Programs,
    test_vassal: PathBuf,
    /// N for the suites now running: `-n`, or each `--scaling` N in turn.
    vassals: usize,
    samples: Samples,
    rng: u64,
    run_no: usize,
    pg: Option<pg::Pg>,
}

const COLD_TEST: &str = "cold start, N test vassals (ms)";
const COLD_UWSGI: &str = "cold start, N uWSGI vassals (ms)";
const TOUCH: &str = "touch -> reload sent (ms)";
const TOUCH_FLOOD: &str = "touch -> reload sent, a vassal flooding beside (ms)";
const LOG_FLOOD: &str = "touch -> reload sent, 20 vassals flooding stderr (ms)";
const LOG_FLOOD_DIR: &str =
    "touch -> reload sent, 20 vassals flooding, imperium --vassal-logs dir: (ms)";
const LOG_FLOOD_CPU: &str = "emperor CPU, 20 vassals flooding stderr (ms per s)";
const LOG_FLOOD_CPU_DIR: &str =
    "emperor CPU, 20 vassals flooding, imperium --vassal-logs dir: (ms per s)";
const LOG_FLOOD_RSS_DIR: &str =
    "emperor RSS, 20 vassals flooding, imperium --vassal-logs dir: (MiB)";
const ADD: &str = "new config -> accepting (ms)";
const REMOVE: &str = "deleted config -> reaped (ms)";
const IDLE_CPU: &str = "idle CPU (ms per minute)";
const IDLE_WAKE: &str = "idle wake-ups (per minute)";
const RSS: &str = "emperor RSS with N vassals (MiB)";
const FDS: &str = "emperor open fds per vassal, N vassals";
const STORM: &str = "crash storm: all N back (ms)";
const STORM_PROBE: &str = "crash storm: new config -> accepting (ms)";
const HUP_ALL: &str = "SIGHUP: reload sent to all N (ms)";
const DELETE_ALL: &str = "every config deleted -> all N reaped (ms)";

const UPGRADE: &str = "emperor binary replaced -> all N serving again (ms)";

const PG_COLD: &str = "pg://: cold start, N test vassals (ms)";
const PG_UPDATE: &str = "pg://: row update -> reload sent (ms)";

/// Every contender, in the order of `--only`'s keys and of the columns.
const CONTENDERS: [Contender; 4] = [
    Contender::Floor,
    Contender::Imperium,
    Contender::Uwsgi(None),
    Contender::Uwsgi(Some(1)),
];

const ROWS: [&str; 22] = [
    COLD_TEST,
    COLD_UWSGI,
    PG_COLD,
    TOUCH,
    TOUCH_FLOOD,
    LOG_FLOOD,
    LOG_FLOOD_DIR,
    LOG_FLOOD_CPU,
    LOG_FLOOD_CPU_DIR,
    LOG_FLOOD_RSS_DIR,
    PG_UPDATE,
    ADD,
    REMOVE,
    IDLE_CPU,
    IDLE_WAKE,
    RSS,
    FDS,
    STORM,
    STORM_PROBE,
    HUP_ALL,
    DELETE_ALL,
    UPGRADE,
];

#[allow(
    clippy::too_many_lines,
    reason = "the benchmark plan, one step after another"
)]
fn main() -> Result<()> {
    let args = Args::parse();
    interrupt::install()?;
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let imperium = args.imperium.clone().unwrap_or(here.join("imperium"));
    let test_vassal = args
        .test_vassal
        .clone()
        .unwrap_or(here.join("imperium-test-vassal"));
    for (p, what) in [
        (&imperium, "imperium (cargo build --release -p imperium)"),
        (
            &test_vassal,
            "imperium-test-vassal (cargo build --release -p imperium-testkit)",
        ),
        (&args.uwsgi, "uwsgi (apt-get install uwsgi-core)"),
    ] {
        if !p.exists() {
            bail!("{} not found: build or install {what}", p.display());
        }
    }
    // --scaling runs test vassals only, and no pg://
    let full = args.scaling.is_empty();
    if full
        && !args.no_uwsgi_vassals
        && !Path::new("/usr/lib/uwsgi/plugins/python3_plugin.so").exists()
    {
        bail!("uWSGI's python3 plugin is missing (apt-get install uwsgi-plugin-python3), or pass --no-uwsgi-vassals");
    }
    if let Some(l) = &args.logs {
        std::fs::create_dir_all(l)?;
    }
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut b = Bench {
        progs: Programs {
            imperium,
            uwsgi: args.uwsgi.clone(),
            imperium_args: args.imperium_arg.clone(),
        },
        test_vassal,
        vassals: args.vassals,
        args,
        samples: Samples::new(),
        rng: seed,
        run_no: 0,
        pg: None,
    };
    if full && !b.args.no_pg {
        if !Path::new("/usr/lib/uwsgi/plugins/emperor_pg_plugin.so").exists() {
            bail!("uWSGI's emperor_pg plugin is missing (apt-get install uwsgi-plugin-emperor-pg), or pass --no-pg");
        }
        eprintln!("starting a private PostgreSQL for the pg:// measurements");
        b.pg = Some(pg::Pg::start()?);
    }
    let started = Instant::now();
    let keys = ["floor", "imperium", "uwsgi", "uwsgi-1"];
    for o in &b.args.only {
        if !keys.contains(&o.as_str()) {
            bail!("--only {o}: expected one of {}", keys.join(", "));
        }
    }
    // --scaling leaves uWSGI at freq 1 out unless --only names it
    let scaling = !full;
    let contenders: Vec<Contender> = CONTENDERS
        .into_iter()
        .zip(keys)
        .filter(|(_, k)| {
            if b.args.only.is_empty() {
                !(scaling && *k == "uwsgi-1")
            } else {
                b.args.only.iter().any(|o| o == k)
            }
        })
        .map(|(c, _)| c)
        .collect();
    let mut failed = Vec::new();
    let clusters = if b.args.cluster || b.args.cluster_only {
        cluster_suite(&b, started, &mut failed)
    } else {
        Clusters::new()
    };
    let scaled = if scaling {
        scaling_suite(&mut b, &contenders, started, &mut failed)
    } else {
        Scaled::new()
    };
    let rounds = if b.args.cluster_only || scaling {
        0
    } else {
        b.args.rounds
    };
    for round in 0..rounds {
        let order = rotated(&contenders, round);
        for who in &order {
            progress(
                started,
                round,
                b.args.rounds,
                &format!("{} with {} test vassals", who.label(), b.args.vassals),
            );
            let r = b.test_vassal_suite(*who, round);
            keep_going(r, &format!("{} (test vassals)", who.label()), &mut failed);
        }
        if !b.args.no_upgrade {
            for who in order.iter().filter(|w| **w != Contender::Floor) {
                progress(
                    started,
                    round,
                    b.args.rounds,
                    &format!(
                        "{} replacing its binary with {} test vassals",
                        who.label(),
                        b.args.vassals
                    ),
                );
                let r = b.upgrade_suite(*who);
                keep_going(r, &format!("{} (upgrade)", who.label()), &mut failed);
            }
        }
        if b.pg.is_some() {
            for who in order.iter().filter(|w| **w != Contender::Floor) {
                progress(
                    started,
                    round,
                    b.args.rounds,
                    &format!("{} with {} pg:// test vassals", who.label(), b.args.vassals),
                );
                let r = b.pg_suite(*who);
                keep_going(r, &format!("{} (pg://)", who.label()), &mut failed);
            }
        }
        if !b.args.no_log_flood {
            for who in order.iter().filter(|w| **w != Contender::Floor) {
                let modes: &[bool] = if *who == Contender::Imperium {
                    &[false, true]
                } else {
                    &[false]
                };
                for dir_mode in modes {
                    progress(
                        started,
                        round,
                        b.args.rounds,
                        &format!(
                            "{} with {} test vassals and 20 flooding their stderr{}",
                            who.label(),
                            b.args.vassals,
                            if *dir_mode {
                                " (--vassal-logs dir:)"
                            } else {
                                ""
                            }
                        ),
                    );
                    let r = b.log_flood_suite(*who, round, *dir_mode);
                    keep_going(r, &format!("{} (log flood)", who.label()), &mut failed);
                }
            }
        }
        if !b.args.no_uwsgi_vassals {
            for who in &order {
                progress(
                    started,
                    round,
                    b.args.rounds,
                    &format!("{} with {} uWSGI vassals", who.label(), b.args.vassals),
                );
                let r = b.uwsgi_vassal_suite(*who);
                keep_going(r, &format!("{} (uWSGI vassals)", who.label()), &mut failed);
            }
        }
    }
    if scaling {
        print_scaling(&b, &scaled, &contenders, started.elapsed());
        if let Some(dir) = &b.args.plots {
            let r = write_plots(dir, &scaled, &contenders);
            keep_going(r, "--plots", &mut failed);
        }
    } else if !b.args.cluster_only {
        print_report(&b, &contenders, started.elapsed());
    }
    print_cluster(&b, &clusters);
    if !failed.is_empty() {
        println!("\nNot measured to the end (the rows above hold what was measured before):");
        for f in &failed {
            println!("- {f}");
        }
        bail!("{} suite(s) failed", failed.len());
    }
    Ok(())
}

/// One request on imperium's control socket; the reply line.
fn control_request(sock: &Path, req: &str) -> Result<String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("cannot connect to {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}

/// When `n` distinct vassals had a `kind` event after `t`, or an error
/// saying how many did within `timeout`.
fn all_within(
    log: &mut emperor::EventLog,
    kind: Kind,
    n: usize,
    t: Instant,
    timeout: Duration,
    what: &str,
) -> Result<Instant> {
    log.wait_distinct(kind, n, t, &HashSet::new(), timeout)
        .map_err(|k| anyhow::anyhow!("{what}: {k}/{n} within {timeout:?}"))
}

/// Says which round of which suite starts, and when.
fn progress(started: Instant, round: usize, rounds: usize, what: &str) {
    eprintln!(
        "[{:>4}s] round {}/{rounds}: {what}",
        started.elapsed().as_secs(),
        round + 1
    );
}

/// The contenders in the order of round `round`: rotated one place per
/// round, so that none always runs first or last.
fn rotated(contenders: &[Contender], round: usize) -> Vec<Contender> {
    let mut order = contenders.to_vec();
    order.rotate_left(round % contenders.len().max(1));
    order
}

/// A suite that fails is reported at the end; the others still run, and
/// what it measured before failing is kept.
fn keep_going(r: Result<()>, what: &str, failed: &mut Vec<String>) {
    if let Err(e) = r {
        eprintln!("imperium-bench: {what} failed: {e:#}");
        failed.push(format!("{what}: {e:#}"));
    }
}

impl Bench {
    fn record(&mut self, metric: &'static str, who: Contender, v: f64) {
        self.samples
            .entry((metric, who.label()))
            .or_default()
            .push(v);
    }

    /// A pseudo-random pause of 50..300 ms, so that changes do not fall at
    /// a fixed phase of a polling emperor's timer.
    fn jitter(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_millis(50 + self.rng % 250)
    }

    fn echo(&mut self, who: Contender, what: &str) -> Option<PathBuf> {
        self.run_no += 1;
        let tag = who.label().replace([' ', '(', ')', '/'], "");
        self.args
            .logs
            .as_ref()
            .map(|d| d.join(format!("{:03}-{tag}-{what}.log", self.run_no)))
    }

    fn cold_timeout(&self) -> Duration {
        Duration::from_secs(60) + Duration::from_millis(100 * self.vassals as u64)
    }

    /// A temporary directory with `vassals/` holding the N test vassals
    /// (loyal, so that a crash is never blacklisted by either emperor).
    fn test_vassal_dir(&self) -> Result<(tempfile::TempDir, PathBuf, Vec<String>)> {
        let tmp = tempfile::Builder::new()
            .prefix("imperium-bench")
            .tempdir()?;
        let dir = tmp.path().join("vassals");
        std::fs::create_dir(&dir)?;
        let names = names(self.vassals);
        for n in &names {
            std::fs::write(dir.join(n), TEST_VASSAL_INI)?;
        }
        Ok((tmp, dir, names))
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one scenario per block, in the order they run"
    )]
    fn test_vassal_suite(&mut self, who: Contender, round: usize) -> Result<()> {
        let (_tmp, dir, names) = self.test_vassal_dir()?;
        let bin = self.test_vassal.clone();
        let Some(mut em) = self.cold_start(who, &dir, &names, &bin, COLD_TEST, "test")? else {
            return Ok(());
        };
        let result = (|| -> Result<()> {
            // idle cost: let the start-up settle, then a fixed window
            std::thread::sleep(Duration::from_secs(1));
            let (c0, w0) = (procfs::cpu_ns(em.pid), procfs::ctx_switches(em.pid));
            let w = Duration::from_secs(self.args.idle_secs);
            std::thread::sleep(w);
            let (c1, w1) = (procfs::cpu_ns(em.pid), procfs::ctx_switches(em.pid));
            let per_min = 60.0 / w.as_secs_f64();
            self.record(IDLE_CPU, who, (c1 - c0) as f64 / 1e6 * per_min);
            self.record(IDLE_WAKE, who, (w1 - w0) as f64 * per_min);
            self.footprint(em.pid, who);
            em.log.clear();

            // touch -> reload: whole seconds forward, so that uWSGI's
            // one-second mtime resolution sees every change
            let lat = self.latency_timeout(who);
            let base = SystemTime::now() + Duration::from_secs(10);
            self.touch_samples(&mut em, who, &dir, &names, round, base, TOUCH)?;
            // the same while a vassal floods its emperor socket with a
            // meaningless byte from its start (imperium kills it and
            // respawns it through the blacklist, so it floods again;
            // uWSGI reads on): a neighbour's reload must not wait for it
            std::fs::write(dir.join("flood.ini"), FLOOD_VASSAL_INI)?;
            std::thread::sleep(Duration::from_millis(300));
            let base = base + Duration::from_secs(self.args.samples as u64 + 1);
            self.touch_samples(&mut em, who, &dir, &names, round, base, TOUCH_FLOOD)?;
            // the clock is read before the removal: a fast emperor's line
            // may be read by the log thread before this thread runs again
            let t = Instant::now();
            std::fs::remove_file(dir.join("flood.ini"))?;
            em.log
                .wait_for(Kind::Removed, "flood.ini", t, lat)
                .context("the flooding vassal was not removed")?;

            // new config -> accepting; deleted config -> reaped
            for i in 0..self.args.samples {
                std::thread::sleep(self.jitter());
                let name = format!("add-{round}-{i}.ini");
                let tmp_name = dir.join(format!(".{name}.tmp"));
                std::fs::write(&tmp_name, TEST_VASSAL_INI)?;
                let t = Instant::now();
                std::fs::rename(&tmp_name, dir.join(&name))?;
                let got = em
                    .log
                    .wait_for(Kind::Accepting, &name, t, lat)
                    .with_context(|| format!("{name} not accepting within {lat:?}"))?;
                self.record(ADD, who, ms(got - t));
                std::thread::sleep(self.jitter());
                let t = Instant::now();
                std::fs::remove_file(dir.join(&name))?;
                let got = em
                    .log
                    .wait_for(Kind::Removed, &name, t, lat)
                    .with_context(|| format!("{name} not removed within {lat:?}"))?;
                self.record(REMOVE, who, ms(got - t));
            }
            em.log.clear();

            // crash storm: SIGKILL every vassal at once; meanwhile a new
            // config arrives and we time its start
            std::thread::sleep(Duration::from_millis(500));
            let victims = em.vassals();
            if victims.len() != names.len() {
                bail!(
                    "crash storm: expected {} vassals, the emperor has {} children",
                    names.len(),
                    victims.len()
                );
            }
            let t = Instant::now();
            for v in &victims {
                emperor::signal(*v, nix::sys::signal::Signal::SIGKILL);
            }
            let probe = format!("probe-{round}.ini");
            let tmp_name = dir.join(format!(".{probe}.tmp"));
            std::fs::write(&tmp_name, TEST_VASSAL_INI)?;
            std::fs::rename(&tmp_name, dir.join(&probe))?;
            let timeout = self.cold_timeout();
            let exclude = HashSet::from([probe.clone()]);
            let back = em
                .log
                .wait_distinct(Kind::Accepting, names.len(), t, &exclude, timeout)
                .map_err(|k| {
                    anyhow::anyhow!(
                        "crash storm: only {k}/{} vassals back within {timeout:?}",
                        names.len()
                    )
                })?;
            self.record(STORM, who, ms(back - t));
            let p = em
                .log
                .wait_for(Kind::Accepting, &probe, t, timeout)
                .context("crash storm: the new config never started")?;
            self.record(STORM_PROBE, who, ms(p - t));
            self.fleet_wide(&mut em, who, &dir, &names, &probe)
        })();
        let stopped = em.stop(Duration::from_secs(40));
        result?;
        stopped
    }

    /// The reduced suite of `--scaling` at N: the cold start of N test
    /// vassals, then after 1 s the emperor's RSS and fds.
    fn scaling_suite(&mut self, who: Contender) -> Result<()> {
        let (_tmp, dir, names) = self.test_vassal_dir()?;
        let bin = self.test_vassal.clone();
        let Some(em) = self.cold_start(who, &dir, &names, &bin, COLD_TEST, "scaling")? else {
            return Ok(());
        };
        std::thread::sleep(Duration::from_secs(1));
        self.footprint(em.pid, who);
        em.stop(Duration::from_secs(40))
    }

    /// The cold start of the vassals `names` in `dir`, run with `bin`,
    /// into `row`: the floor's (then `None`: there is no emperor), or
    /// `who`'s, whose emperor is returned running with all of them
    /// accepting (and stopped if they are not within the timeout).
    fn cold_start(
        &mut self,
        who: Contender,
        dir: &Path,
        names: &[String],
        bin: &Path,
        row: &'static str,
        tag: &str,
    ) -> Result<Option<emperor::Running>> {
        if who == Contender::Floor {
            let t = floor::cold_start(dir, names, bin, self.cold_timeout())?;
            self.record(row, who, ms(t));
            return Ok(None);
        }
        let echo = self.echo(who, tag);
        let t0 = Instant::now();
        let mut em = emperor::start(who, &self.progs, dir.as_os_str(), dir, bin, &[], echo)?;
        let all_up = em.log.wait_distinct(
            Kind::Accepting,
            names.len(),
            t0,
            &HashSet::new(),
            self.cold_timeout(),
        );
        match all_up {
            Ok(t) => {
                self.record(row, who, ms(t - t0));
                Ok(Some(em))
            }
            Err(k) => {
                // the timeout is the error to report, not the stop's
                let _ = em.stop(Duration::from_secs(40));
                bail!("cold start: only {k}/{} vassals accepting", names.len())
            }
        }
    }

    /// The emperor's RSS and its open fds per vassal, now.
    fn footprint(&mut self, pid: u32, who: Contender) {
        self.record(RSS, who, procfs::rss_kib(pid) as f64 / 1024.0);
        let fds = procfs::open_fds(pid) as f64 / self.vassals as f64;
        self.record(FDS, who, fds);
    }

    /// The emperor's binary replaced with N test vassals running, until
    /// all N serve again: imperium re-executes itself in place (`ctl
    /// upgrade`, timed from the request to its reply, which comes once
    /// every vassal is adopted; no vassal stops); uWSGI can only be
    /// restarted (SIGINT, then a new emperor, until all N accept again).
    fn upgrade_suite(&mut self, who: Contender) -> Result<()> {
        let (tmp, dir, names) = self.test_vassal_dir()?;
        let sock = tmp.path().join("ctl.sock");
        let sock_arg = sock.to_string_lossy().into_owned();
        let extra: Vec<&str> = match who {
            Contender::Imperium => vec!["--emperor-control-socket", &sock_arg],
            _ => Vec::new(),
        };
        let start = |b: &mut Bench| {
            let echo = b.echo(who, "upgrade");
            emperor::start(
                who,
                &b.progs,
                dir.as_os_str(),
                &dir,
                &b.test_vassal,
                &extra,
                echo,
            )
        };
        let t0 = Instant::now();
        let mut em = start(self)?;
        let none = HashSet::new();
        em.log
            .wait_distinct(Kind::Accepting, names.len(), t0, &none, self.cold_timeout())
            .map_err(|k| anyhow::anyhow!("upgrade: only {k}/{} vassals accepting", names.len()))?;
        std::thread::sleep(Duration::from_millis(500));
        if who != Contender::Imperium {
            let t = Instant::now();
            em.stop(Duration::from_secs(40))?;
            let mut em = start(self)?;
            let up =
                em.log
                    .wait_distinct(Kind::Accepting, names.len(), t, &none, self.cold_timeout());
            let r = up
                .map(|at| self.record(UPGRADE, who, ms(at - t)))
                .map_err(|k| {
                    anyhow::anyhow!("restart: only {k}/{} vassals accepting", names.len())
                });
            let stopped = em.stop(Duration::from_secs(40));
            r?;
            return stopped;
        }
        let result = (|| -> Result<()> {
            let before: HashSet<u32> = em.vassals().into_iter().collect();
            let t = Instant::now();
            let reply = control_request(&sock, r#"{"cmd":"upgrade"}"#)?;
            let took = t.elapsed();
            if !reply.contains("\"ok\":true") {
                bail!("upgrade: {reply}");
            }
            let after: HashSet<u32> = em.vassals().into_iter().collect();
            if after != before {
                bail!(
                    "upgrade: the vassals changed ({} before, {} after)",
                    before.len(),
                    after.len()
                );
            }
            self.record(UPGRADE, who, ms(took));
            Ok(())
        })();
        let stopped = em.stop(Duration::from_secs(40));
        result?;
        stopped
    }

    /// `--samples` touches of vassals from `names` (mtimes from `base` on,
    /// whole seconds apart), each timed to its reload, into `row`.
    #[allow(clippy::too_many_arguments, reason = "the suite's own state")]
    fn touch_samples(
        &mut self,
        em: &mut emperor::Running,
        who: Contender,
        dir: &Path,
        names: &[String],
        round: usize,
        base: SystemTime,
        row: &'static str,
    ) -> Result<()> {
        let lat = self.latency_timeout(who);
        for i in 0..self.args.samples {
            std::thread::sleep(self.jitter());
            let name = &names[(i * 7919 + round * 31 + row.len()) % names.len()];
            let when = base + Duration::from_secs(i as u64 + 1);
            let f = std::fs::File::open(dir.join(name))?;
            let t = Instant::now();
            // like touch(1): both times, so the kernel reports IN_ATTRIB
            f.set_times(
                std::fs::FileTimes::new()
                    .set_accessed(when)
                    .set_modified(when),
            )?;
            drop(f);
            let got = em
                .log
                .wait_for(Kind::Reload, name, t, lat)
                .with_context(|| format!("no reload of {name} within {lat:?}"))?;
            self.record(row, who, ms(got - t));
        }
        Ok(())
    }

    /// N quiet test vassals and 20 that write lines to stderr as fast as
    /// they can: touch -> reload of a quiet one, and the emperor's CPU and
    /// RSS meanwhile. With `dir_mode` (imperium only) the output goes to
    /// one file per vassal; otherwise it is inherited, so it reaches the
    /// emperor's stderr pipe, which this harness reads (as a log collector
    /// would) along with the emperor's own lines.
    fn log_flood_suite(&mut self, who: Contender, round: usize, dir_mode: bool) -> Result<()> {
        let (tmp, dir, names) = self.test_vassal_dir()?;
        let logs = format!("dir:{}", tmp.path().join("logs").display());
        let extra: Vec<&str> = if dir_mode {
            vec![
                "--vassal-logs",
                &logs,
                "--vassal-logs-max-size",
                "16M",
                "--vassal-logs-keep",
                "1",
            ]
        } else {
            Vec::new()
        };
        let echo = self.echo(who, if dir_mode { "logflood-dir" } else { "logflood" });
        let t0 = Instant::now();
        let mut em = emperor::start(
            who,
            &self.progs,
            dir.as_os_str(),
            &dir,
            &self.test_vassal,
            &extra,
            echo,
        )?;
        let none = HashSet::new();
        let result = (|| -> Result<()> {
            em.log
                .wait_distinct(Kind::Accepting, names.len(), t0, &none, self.cold_timeout())
                .map_err(|k| {
                    anyhow::anyhow!("cold start: only {k}/{} vassals accepting", names.len())
                })?;
            let flooders: Vec<String> = (0..20).map(|i| format!("flood-{i:02}.ini")).collect();
            for f in &flooders {
                std::fs::write(dir.join(f), LOG_FLOOD_VASSAL_INI)?;
            }
            let lat = self.latency_timeout(who);
            em.log
                .wait_distinct(
                    Kind::Accepting,
                    names.len() + flooders.len(),
                    t0,
                    &none,
                    lat,
                )
                .map_err(|k| anyhow::anyhow!("only {k} vassals accepting with the flooders"))?;
            std::thread::sleep(Duration::from_millis(500));
            let c0 = procfs::cpu_ns(em.pid);
            let w0 = Instant::now();
            let base = SystemTime::now() + Duration::from_secs(10);
            let (row, cpu_row) = if dir_mode {
                (LOG_FLOOD_DIR, LOG_FLOOD_CPU_DIR)
            } else {
                (LOG_FLOOD, LOG_FLOOD_CPU)
            };
            self.touch_samples(&mut em, who, &dir, &names, round, base, row)?;
            let c1 = procfs::cpu_ns(em.pid);
            let secs = w0.elapsed().as_secs_f64();
            self.record(cpu_row, who, (c1 - c0) as f64 / 1e6 / secs);
            if dir_mode {
                self.record(
                    LOG_FLOOD_RSS_DIR,
                    who,
                    procfs::rss_kib(em.pid) as f64 / 1024.0,
                );
            }
            for f in &flooders {
                std::fs::remove_file(dir.join(f))?;
            }
            Ok(())
        })();
        let stopped = em.stop(Duration::from_secs(40));
        result?;
        stopped
    }

    fn pg_suite(&mut self, who: Contender) -> Result<()> {
        let names: Vec<String> = (0..self.vassals).map(|i| format!("p{i:04}.ini")).collect();
        let Some(pg) = self.pg.as_mut() else {
            return Ok(());
        };
        pg.fill(&names, TEST_VASSAL_INI);
        let url = pg.url();
        let tmp = tempfile::Builder::new()
            .prefix("imperium-bench")
            .tempdir()?;
        let extra: &[&str] = match who {
            Contender::Uwsgi(_) => &["--plugin", "emperor_pg"],
            _ => &[],
        };
        let echo = self.echo(who, "pg");
        let t0 = Instant::now();
        let mut em = emperor::start(
            who,
            &self.progs,
            url.as_ref(),
            tmp.path(),
            &self.test_vassal,
            extra,
            echo,
        )?;
        let result = (|| -> Result<()> {
            let t = em
                .log
                .wait_distinct(
                    Kind::Accepting,
                    names.len(),
                    t0,
                    &HashSet::new(),
                    self.cold_timeout(),
                )
                .map_err(|k| {
                    anyhow::anyhow!("pg cold start: only {k}/{} vassals accepting", names.len())
                })?;
            self.record(PG_COLD, who, ms(t - t0));
            em.log.clear();
            let freq = match who {
                Contender::Uwsgi(f) => f,
                _ => None,
            };
            let lat = pg::latency_timeout(freq);
            for i in 0..self.args.samples {
                std::thread::sleep(self.jitter());
                let name = &names[(i * 7919 + self.run_no * 31) % names.len()];
                let pg = self.pg.as_mut().expect("pg is running");
                let t = pg.touch_row(name, self.run_no * 1000 + i)?;
                let got = em
                    .log
                    .wait_for(Kind::Reload, name, t, lat)
                    .with_context(|| format!("no reload of {name} within {lat:?}"))?;
                self.record(PG_UPDATE, who, ms(got - t));
            }
            Ok(())
        })();
        let stopped = em.stop(Duration::from_secs(40));
        result?;
        stopped
    }

    /// Operations on every vassal at once: SIGHUP (the emperor reloads
    /// them all), then every config deleted (it stops them all).
    fn fleet_wide(
        &mut self,
        em: &mut emperor::Running,
        who: Contender,
        dir: &Path,
        names: &[String],
        probe: &str,
    ) -> Result<()> {
        let timeout = self.cold_timeout();
        let all: Vec<String> = names.iter().cloned().chain([probe.to_string()]).collect();
        std::thread::sleep(Duration::from_millis(500));
        em.log.clear();
        let t = Instant::now();
        emperor::signal(em.pid, nix::sys::signal::Signal::SIGHUP);
        let sent = all_within(
            &mut em.log,
            Kind::Reload,
            all.len(),
            t,
            timeout,
            "SIGHUP: reloads sent",
        )?;
        self.record(HUP_ALL, who, ms(sent - t));
        // let the reloads end before the configs go (bounded: an emperor
        // may not log a reloaded vassal's "accepting" again)
        let _ = all_within(
            &mut em.log,
            Kind::Accepting,
            all.len(),
            t,
            Duration::from_secs(30),
            "",
        );
        std::thread::sleep(Duration::from_millis(500));
        em.log.clear();
        let t = Instant::now();
        for n in &all {
            std::fs::remove_file(dir.join(n))?;
        }
        let gone = all_within(
            &mut em.log,
            Kind::Removed,
            all.len(),
            t,
            timeout,
            "delete all: reaped",
        )?;
        self.record(DELETE_ALL, who, ms(gone - t));
        Ok(())
    }

    fn latency_timeout(&self, who: Contender) -> Duration {
        match who {
            // uWSGI's scan of the directory takes seconds at N = 10,000
            Contender::Uwsgi(f) => {
                Duration::from_secs(f.unwrap_or(3) * 3 + 5 + self.vassals as u64 / 250)
            }
            _ => Duration::from_secs(10),
        }
    }

    fn uwsgi_vassal_suite(&mut self, who: Contender) -> Result<()> {
        let tmp = tempfile::Builder::new()
            .prefix("imperium-bench")
            .tempdir()?;
        let dir = tmp.path().join("vassals");
        std::fs::create_dir(&dir)?;
        let app = tmp.path().join("app.py");
        std::fs::write(&app, APP)?;
        let names = names(self.vassals);
        for n in &names {
            std::fs::write(dir.join(n), uwsgi_vassal_ini(tmp.path(), &app))?;
        }
        let bin = self.progs.uwsgi.clone();
        match self.cold_start(who, &dir, &names, &bin, COLD_UWSGI, "uwsgi")? {
            Some(em) => em.stop(Duration::from_secs(40)),
            None => Ok(()),
        }
    }
}

const TEST_VASSAL_INI: &str = "[uwsgi]\n[vassal]\nloyal = 1\n";
/// A test vassal that writes byte 200 (meaningless in the protocol) to its
/// emperor socket as fast as it can, from its start until it is killed.
const FLOOD_VASSAL_INI: &str = "[uwsgi]\n[vassal]\nflood = 200\n";

/// A loyal test vassal that writes numbered lines to its stderr as fast as
/// it can, from its start until it is killed.
const LOG_FLOOD_VASSAL_INI: &str = "[uwsgi]\n[vassal]\nloyal = 1\nprint-flood = 1\n";

const APP: &str = "def application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ok']\n";

fn uwsgi_vassal_ini(tmp: &Path, app: &Path) -> String {
    format!(
        "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 1\nsocket = {}/%n.sock\nwsgi-file = {}\nvacuum = true\n",
        tmp.display(),
        app.display()
    )
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("v{i:04}.ini")).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        // tiny ratios as fractions: 1/800 says more than 0.00x
        (Some(a), Some(b)) if b > 0.0 && a > 0.0 && a / b < 0.1 => format!("1/{:.0}", b / a),
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        (Some(a), Some(b)) if a == 0.0 && b == 0.0 => "=".into(),
        _ => "-".into(),
    }
}

fn print_report(b: &Bench, contenders: &[Contender], took: Duration) {
    let a = &b.args;
    println!();
    println!(
        "imperium-bench: N = {} vassals, {} rounds, {} latency samples per round, idle window {} s ({} s in all)",
        a.vassals,
        a.rounds,
        a.samples,
        a.idle_secs,
        took.as_secs()
    );
    println!();
    println!(
        "{}",
        table_head("measurement (median)", contenders, &VERSUS)
    );
    for row in ROWS {
        if b.samples.keys().all(|(m, _)| *m != row) {
            continue;
        }
        let name = row.replace('N', &a.vassals.to_string());
        println!(
            "{}",
            table_row(&name, contenders, &VERSUS, |c| median_of(
                &b.samples, row, c
            ))
        );
    }
}

/// What imperium is compared with in the ratio columns.
const VERSUS: [Contender; 3] = [
    Contender::Uwsgi(None),
    Contender::Uwsgi(Some(1)),
    Contender::Floor,
];

/// A table's head and rule: `first`, a column per contender, then a
/// column imperium / X for each X in `versus`.
fn table_head(first: &str, columns: &[Contender], versus: &[Contender]) -> String {
    let mut head = format!("| {first} |");
    let mut line = String::from("|---|");
    for c in columns {
        head.push_str(&format!(" {} |", c.label()));
        line.push_str("---:|");
    }
    for v in versus {
        let label = match v {
            Contender::Floor => "floor".into(),
            _ => v.label(),
        };
        head.push_str(&format!(" imperium / {label} |"));
        line.push_str("---:|");
    }
    format!("{head}\n{line}")
}

/// A table's row under [`table_head`]: `first`, then `med` of each
/// contender and the ratios.
fn table_row(
    first: &str,
    columns: &[Contender],
    versus: &[Contender],
    med: impl Fn(Contender) -> Option<f64>,
) -> String {
    let mut s = format!("| {first} |");
    for c in columns {
        s.push_str(&format!(" {} |", fmt(med(*c))));
    }
    let imp = med(Contender::Imperium);
    for v in versus {
        s.push_str(&format!(" {} |", ratio(imp, med(*v))));
    }
    s
}

/// The `--scaling` samples, by N.
type Scaled = BTreeMap<usize, Samples>;

/// The measurements of `--scaling`: each a table and a chart.
const SCALED: [(&str, &str, &str, &str, bool); 3] = [
    // row, file, chart title, y axis, log y
    (
        COLD_TEST,
        "cold-start.svg",
        "Cold start: all N test vassals accepting",
        "ms (log scale)",
        true,
    ),
    (
        RSS,
        "rss.svg",
        "Emperor RSS with N vassals",
        "MiB (VmRSS)",
        false,
    ),
    (
        FDS,
        "fds-per-vassal.svg",
        "Emperor open fds per vassal",
        "open fds / N",
        false,
    ),
];

/// Every `--scaling` N in turn, `--rounds` rounds of each contender (the
/// order rotating), the samples kept by N.
fn scaling_suite(
    b: &mut Bench,
    contenders: &[Contender],
    started: Instant,
    failed: &mut Vec<String>,
) -> Scaled {
    let mut ns: Vec<usize> = b.args.scaling.iter().map(|&n| n as usize).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut out = Scaled::new();
    for n in ns {
        b.vassals = n;
        for round in 0..b.args.rounds {
            for who in rotated(contenders, round) {
                progress(
                    started,
                    round,
                    b.args.rounds,
                    &format!(
                        "{} with {n} test vassals (--scaling: cold start, RSS, fds)",
                        who.label()
                    ),
                );
                let r = b.scaling_suite(who);
                keep_going(r, &format!("{} (--scaling, N = {n})", who.label()), failed);
            }
        }
        out.insert(n, std::mem::take(&mut b.samples));
    }
    out
}

/// The median of `row` for `who` in `s`.
fn median_of(s: &Samples, row: &'static str, who: Contender) -> Option<f64> {
    s.get(&(row, who.label())).and_then(|v| median(v))
}

/// The contenders measured in `row` at some N, and the ratio columns that
/// then make sense (imperium against each other one measured).
fn scaled_columns(
    scaled: &Scaled,
    contenders: &[Contender],
    row: &'static str,
) -> (Vec<Contender>, Vec<Contender>) {
    let columns: Vec<Contender> = contenders
        .iter()
        .copied()
        .filter(|c| scaled.values().any(|s| median_of(s, row, *c).is_some()))
        .collect();
    let versus = if columns.contains(&Contender::Imperium) {
        VERSUS
            .iter()
            .copied()
            .filter(|v| columns.contains(v))
            .collect()
    } else {
        Vec::new()
    };
    (columns, versus)
}

/// The `--scaling` tables: one per measurement, a row per N.
fn print_scaling(b: &Bench, scaled: &Scaled, contenders: &[Contender], took: Duration) {
    let ns: Vec<String> = scaled.keys().map(ToString::to_string).collect();
    println!();
    println!(
        "imperium-bench --scaling: N = {} test vassals, {} rounds ({} s in all)",
        ns.join(", "),
        b.args.rounds,
        took.as_secs()
    );
    for (row, ..) in SCALED {
        let (columns, versus) = scaled_columns(scaled, contenders, row);
        if columns.is_empty() {
            continue;
        }
        println!();
        println!("{row}, median:");
        println!();
        println!("{}", table_head("N", &columns, &versus));
        for (n, s) in scaled {
            let first = n.to_string();
            println!(
                "{}",
                table_row(&first, &columns, &versus, |c| median_of(s, row, c))
            );
        }
    }
}

/// `--plots`: a chart per `--scaling` measurement, a line per contender.
fn write_plots(dir: &Path, scaled: &Scaled, contenders: &[Contender]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (row, file, title, y_desc, log_y) in SCALED {
        let (columns, _) = scaled_columns(scaled, contenders, row);
        let series: Vec<plot::Series> = columns
            .iter()
            .map(|c| plot::Series {
                label: c.label(),
                colour: CONTENDERS.iter().position(|a| a == c).unwrap_or(0),
                points: scaled
                    .iter()
                    .filter_map(|(n, s)| Some((*n as f64, median_of(s, row, *c)?)))
                    .collect(),
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let path = dir.join(file);
        let chart = plot::Chart {
            title,
            y_desc,
            log_y,
            series: &series,
        };
        plot::write(&path, &chart).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("imperium-bench: wrote {}", path.display());
    }
    Ok(())
}

/// The `--emperor-cluster` rounds, by engine and lease time.
type Clusters = BTreeMap<(String, u64), Vec<cluster::Round>>;

/// Every `--emperor-cluster` round: each engine, each lease time.
fn cluster_suite(b: &Bench, started: Instant, failed: &mut Vec<String>) -> Clusters {
    let mut out = Clusters::new();
    for engine in &b.args.cluster_engine {
        eprintln!("starting a private {engine} for the --emperor-cluster rows");
        // kept running for the rounds of this engine
        let (_etcd, _zoo, base) = if engine == "zoo" {
            let z = testkit::servers::zookeeper::ZooKeeper::start();
            let base = format!("zoo://{}", z.hosts());
            (None, Some(z), base)
        } else {
            let e = testkit::servers::etcd::Etcd::start();
            let base = format!("etcd://{}", e.endpoint());
            (Some(e), None, base)
        };
        for round in 0..b.args.rounds {
            for ttl in b.args.cluster_ttl.clone() {
                progress(
                    started,
                    round,
                    b.args.rounds,
                    &format!("--emperor-cluster {engine}, 3 imperium emperors, {} test vassals, TTL {ttl} s", b.args.vassals),
                );
                let url = format!("{base}/bench-{ttl}-{round}");
                let r = cluster::round(
                    &b.progs.imperium,
                    &b.test_vassal,
                    &url,
                    b.args.vassals,
                    ttl,
                    b.args.logs.clone(),
                );
                match r {
                    Ok(r) => out.entry((engine.clone(), ttl)).or_default().push(r),
                    Err(e) => {
                        keep_going(Err(e), &format!("cluster {engine} (TTL {ttl} s)"), failed)
                    }
                }
            }
        }
    }
    out
}

/// The `--emperor-cluster` rows: medians by engine and lease time.
fn print_cluster(b: &Bench, rows: &Clusters) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "--emperor-cluster: 3 imperium emperors, {} test vassals, claim delay 2 s (uWSGI: no equivalent, every emperor runs every vassal)",
        b.args.vassals
    );
    println!();
    let mut head = String::from("| measurement (median, ms) |");
    let mut line = String::from("|---|");
    for (engine, ttl) in rows.keys() {
        head.push_str(&format!(" {engine}, TTL {ttl} s |"));
        line.push_str("---:|");
    }
    println!("{head}");
    println!("{line}");
    type Pick = fn(&cluster::Round) -> f64;
    let picks: [(&str, Pick); 3] = [
        (
            "SIGKILL of a member -> its vassals running elsewhere",
            |r| r.killed,
        ),
        (
            "SIGSTOP of a member -> its vassals running elsewhere too",
            |r| r.frozen,
        ),
        ("SIGCONT -> the frozen member's duplicates gone", |r| {
            r.thawed
        }),
    ];
    for (what, pick) in picks {
        let mut s = format!("| {what} |");
        for rs in rows.values() {
            let v: Vec<f64> = rs.iter().map(pick).collect();
            s.push_str(&format!(" {} |", fmt(median(&v))));
        }
        println!("{s}");
    }
}
