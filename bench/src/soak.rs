//! `imperium-soak`: a long run under chaos, with invariants checked every
//! second (docs/reliability.md). Not part of CI: `bench/soak.sh --minutes 30`.
//!
//! One imperium watches a directory of `--vassals` test vassals and a
//! PostgreSQL table of `--pg-vassals` more, plus one hostile vassal that
//! floods its emperor socket with a meaningless byte from its start. Every
//! second the harness does one of: SIGKILL a random vassal, touch a random
//! config;
//! every `--pg-restart-secs` it stops PostgreSQL for two seconds. Every
//! second it reads the emperor's stats and /proc and checks:
//!
//! - every desired vassal is in the stats, and is running, starting, or
//!   throttled with a respawn time; none stays down longer than
//!   `--max-down-secs`;
//! - no test vassal of this run has been re-parented away from the emperor
//!   (an orphan), and none is left once the emperor has stopped;
//! - the emperor's open fds stay below `2 × vassals + 64` and its RSS
//!   within 2x of what it was once every vassal first ran.
//!
//! A violation is printed with its second; the exit status is 1 when any
//! was seen.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;
use testkit::servers::pg::PgServer;

#[allow(
    dead_code,
    reason = "the soak uses a part of the harness's /proc readers"
)]
#[path = "procfs.rs"]
mod procfs;

#[derive(Parser)]
#[command(
    about = "Runs imperium for a long time under chaos and checks its invariants every second"
)]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Test vassals in the watched directory.
    #[arg(long, default_value_t = 500)]
    vassals: usize,
    /// Test vassals in the PostgreSQL table (0: no pg:// source).
    #[arg(long, default_value_t = 20)]
    pg_vassals: usize,
    /// Stop PostgreSQL for 2 s this often.
    #[arg(long, default_value_t = 60)]
    pg_restart_secs: u64,
    /// A vassal down longer than this is a violation.
    #[arg(long, default_value_t = 60)]
    max_down_secs: u64,
    /// The imperium binary (default: next to this one).
    #[arg(long)]
    imperium: Option<PathBuf>,
    /// The test vassal (default: next to this one).
    #[arg(long)]
    test_vassal: Option<PathBuf>,
    /// Seed of the chaos (the same seed, the same actions).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const VASSAL_INI: &str = "[uwsgi]\n[vassal]\nloyal = 1\n";

/// xorshift64*: the harness needs a repeatable sequence, not good randomness.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

#[derive(Default)]
struct Tally {
    kills: u64,
    touches: u64,
    pg_restarts: u64,
    checks: u64,
    violations: Vec<String>,
    max_rss_kib: u64,
    max_fds: usize,
    base_rss_kib: u64,
    flood_restarts: u64,
}

/// The environment variable that marks this run's vassals.
const MARKER: &str = "IMPERIUM_SOAK_RUN";

#[allow(
    clippy::too_many_lines,
    reason = "one loop that reads top to bottom as a second of the soak runs: observe, check, act"
)]
fn main() -> Result<()> {
    let args = Args::parse();
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let imperium = args.imperium.clone().unwrap_or(here.join("imperium"));
    let vassal = args
        .test_vassal
        .clone()
        .unwrap_or(here.join("imperium-test-vassal"));
    for p in [&imperium, &vassal] {
        if !p.exists() {
            bail!(
                "{} not found: run bench/soak.sh, which builds it",
                p.display()
            );
        }
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vassals");
    let (names, mut pg, emperors) = setup(&args, &dir)?;
    let stats = tmp.path().join("stats.sock");
    let log_path = tmp.path().join("imperium.log");
    let mut cmd = Command::new(&imperium);
    // every vassal inherits it: the orphan and leftover checks look at
    // this run's test vassals only, not at other emperors' on the machine
    let marker = format!("{MARKER}={}", tmp.path().display());
    cmd.env(MARKER, tmp.path());
    for e in &emperors {
        cmd.arg("--emperor").arg(e);
    }
    let mut child = cmd
        .arg("--binary-path")
        .arg(&vassal)
        .arg("--emperor-stats")
        .arg(&stats)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("cannot start imperium")?;
    let pid = child.id();
    println!(
        "imperium-soak: {} + {} vassals and a flooding one for {} min (pid {pid}, log {})",
        args.vassals,
        args.pg_vassals,
        args.minutes,
        log_path.display()
    );

    let mut t = Tally::default();
    let mut rng = Rng(args.seed.max(1));
    let mut down_since: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.minutes * 60);
    let mut next_pg = start + Duration::from_secs(args.pg_restart_secs);
    let mut settled = false;
    let mut tick = start;
    while Instant::now() < end {
        // one check a second of wall time, however long the last one took
        tick += Duration::from_secs(1);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        let second = start.elapsed().as_secs();
        if let Ok(Some(st)) = child.try_wait() {
            t.violations
                .push(format!("{second} s: imperium exited: {st}"));
            break;
        }
        let Some(snap) = read_stats(&stats) else {
            t.violations.push(format!("{second} s: no stats answer"));
            continue;
        };
        let vassals = &snap["vassals"];
        let by_name: HashMap<&str, &serde_json::Value> = vassals
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| Some((v["id"].as_str()?, v)))
                    .collect()
            })
            .unwrap_or_default();
        // its respawns after a death from the stats: each of its lives is a
        // few ms long, too short to be seen running once a second
        if let Some(n) = by_name
            .get("flood.ini")
            .and_then(|v| v["restarts"].as_u64())
        {
            t.flood_restarts = t.flood_restarts.max(n);
        }
        let running = |v: &serde_json::Value| v["state"] == "running";
        if !settled {
            let all = names
                .iter()
                .all(|n| by_name.get(n.as_str()).is_some_and(|v| running(v)));
            if all || second > 120 {
                settled = true;
                t.base_rss_kib = procfs::rss_kib(pid);
                if all {
                    println!(
                        "{second} s: every vassal running; RSS {} KiB",
                        t.base_rss_kib
                    );
                } else {
                    t.violations.push(format!(
                        "{second} s: not every vassal running after 2 minutes"
                    ));
                }
            }
            continue;
        }
        t.checks += 1;
        check(&args, &names, &by_name, &mut down_since, second, &mut t);
        let (rss, fds) = sample((&vassal, &marker), pid, names.len(), second, &mut t);
        chaos(&mut rng, &names, &by_name, &dir, pg.as_ref(), &mut t)?;
        if let Some(pg) = pg.as_mut() {
            if Instant::now() >= next_pg {
                pg.stop();
                std::thread::sleep(Duration::from_secs(2));
                pg.start_again();
                t.pg_restarts += 1;
                next_pg = Instant::now() + Duration::from_secs(args.pg_restart_secs);
            }
        }
        if second.is_multiple_of(60) {
            println!(
                "{second} s: {} checks, {} kills, {} touches, {} pg restarts, RSS {rss} KiB, {fds} fds, {} violations",
                t.checks,
                t.kills,
                t.touches,
                t.pg_restarts,
                t.violations.len()
            );
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = child.wait()?;
    std::thread::sleep(Duration::from_millis(500));
    let left = leftovers(&vassal, &marker);
    if !left.is_empty() {
        t.violations.push(format!(
            "after the stop: test vassals left running: {left:?}"
        ));
    }
    drop(pg.take());
    report(&args, &t, start.elapsed(), status.success());
    for v in t.violations.iter().take(50) {
        println!("violation: {v}");
    }
    if t.violations.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// The vassal directory, the pg table: the names of every desired vassal,
/// the server, and the `--emperor` values.
fn setup(args: &Args, dir: &Path) -> Result<(Vec<String>, Option<PgServer>, Vec<String>)> {
    std::fs::create_dir(dir)?;
    let mut names: Vec<String> = (0..args.vassals).map(|i| format!("s{i:04}.ini")).collect();
    for n in &names {
        std::fs::write(dir.join(n), VASSAL_INI)?;
    }
    // the hostile one: floods from its start, is killed, comes back
    // throttled and floods again. Byte 200 means nothing in the protocol:
    // random bytes would soon include 22, a vassal's request to be stopped
    // and left idle, and the flood would end with the first burst
    std::fs::write(dir.join("flood.ini"), "[uwsgi]\n[vassal]\nflood = 200\n")?;

    let pg = (args.pg_vassals > 0).then(PgServer::start);
    let mut emperors = vec![dir.display().to_string()];
    if let Some(pg) = &pg {
        let rows: Vec<String> = (0..args.pg_vassals)
            .map(|i| {
                format!(
                    "('p{i:03}.ini', '{}', now())",
                    VASSAL_INI.replace('\'', "''")
                )
            })
            .collect();
        pg.psql(&format!(
            "CREATE TABLE vassals (name text PRIMARY KEY, config text, ts timestamptz NOT NULL DEFAULT now());\n{}\nINSERT INTO vassals VALUES {};",
            include_str!("../../docs/monitors/pg-notify.sql"),
            rows.join(",")
        ));
        emperors.push(format!("pg://{}", pg.conninfo()));
        names.extend((0..args.pg_vassals).map(|i| format!("p{i:03}.ini")));
    }
    Ok((names, pg, emperors))
}

/// One action: SIGKILL a random vassal, or touch its config (a file, or
/// the `ts` of its row).
fn chaos(
    rng: &mut Rng,
    names: &[String],
    by_name: &HashMap<&str, &serde_json::Value>,
    dir: &Path,
    pg: Option<&PgServer>,
    t: &mut Tally,
) -> Result<()> {
    let name = &names[rng.below(names.len())];
    if rng.below(2) == 0 {
        if let Some(p) = by_name.get(name.as_str()).and_then(|v| v["pid"].as_i64()) {
            if p > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                t.kills += 1;
            }
        }
    } else if name.starts_with('s') {
        let f = std::fs::File::options().append(true).open(dir.join(name))?;
        f.set_modified(SystemTime::now())?;
        t.touches += 1;
    } else if let Some(pg) = pg {
        pg.psql(&format!(
            "UPDATE vassals SET ts = now() WHERE name = '{name}';"
        ));
        t.touches += 1;
    }
    Ok(())
}

/// RSS and open fds of the emperor against their bounds, and orphans.
fn sample(
    (vassal, marker): (&Path, &str),
    pid: u32,
    n: usize,
    second: u64,
    t: &mut Tally,
) -> (u64, usize) {
    let rss = procfs::rss_kib(pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    t.max_rss_kib = t.max_rss_kib.max(rss);
    t.max_fds = t.max_fds.max(fds);
    if rss > 2 * t.base_rss_kib {
        t.violations.push(format!(
            "{second} s: RSS {rss} KiB, more than twice {} KiB",
            t.base_rss_kib
        ));
    }
    if fds > 2 * (n + 1) + 64 {
        t.violations.push(format!("{second} s: {fds} open fds"));
    }
    for o in orphans(vassal, marker, pid) {
        t.violations
            .push(format!("{second} s: orphan vassal pid {o}"));
    }
    (rss, fds)
}

fn check(
    args: &Args,
    names: &[String],
    by_name: &HashMap<&str, &serde_json::Value>,
    down_since: &mut HashMap<String, Instant>,
    second: u64,
    t: &mut Tally,
) {
    for n in names {
        let Some(v) = by_name.get(n.as_str()) else {
            t.violations
                .push(format!("{second} s: {n} missing from the stats"));
            continue;
        };
        let state = v["state"].as_str().unwrap_or("?");
        match state {
            "running" => {
                down_since.remove(n);
            }
            "starting" | "stopping" => {}
            "throttled" if v["next_respawn"].as_f64().is_some() => {}
            other => t.violations.push(format!(
                "{second} s: {n} is {other} (next_respawn {})",
                v["next_respawn"]
            )),
        }
        if state != "running" {
            let since = *down_since.entry(n.clone()).or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(args.max_down_secs) {
                t.violations.push(format!(
                    "{second} s: {n} not running for {} s",
                    since.elapsed().as_secs()
                ));
                down_since.insert(n.clone(), Instant::now());
            }
        }
    }
}

fn read_stats(sock: &Path) -> Option<serde_json::Value> {
    let mut c = UnixStream::connect(sock).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Test vassals of this binary whose parent is not the emperor.
fn orphans(vassal: &Path, marker: &str, emperor: u32) -> Vec<u32> {
    leftovers(vassal, marker)
        .into_iter()
        .filter(|p| testkit::procs::ppid(*p).is_some_and(|pp| pp != emperor))
        .collect()
}

/// Every live process running `vassal` with `marker` (`KEY=VALUE`) in its
/// environment.
fn leftovers(vassal: &Path, marker: &str) -> Vec<u32> {
    let want = vassal.display().to_string();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| procfs::alive(*p))
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|exe| exe.display().to_string() == want)
        })
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
        })
        .collect()
}

fn report(args: &Args, t: &Tally, took: Duration, clean_stop: bool) {
    println!("\n| soak | value |\n|---|---:|");
    let rows: [(&str, String); 12] = [
        ("duration (s)", took.as_secs().to_string()),
        (
            "vassals (dir + pg + flooding)",
            format!("{} + {} + 1", args.vassals, args.pg_vassals),
        ),
        ("invariant checks (one a second)", t.checks.to_string()),
        ("vassals SIGKILLed", t.kills.to_string()),
        ("configs touched", t.touches.to_string()),
        ("PostgreSQL restarts", t.pg_restarts.to_string()),
        ("flooding vassal respawns", t.flood_restarts.to_string()),
        ("emperor RSS once all ran (KiB)", t.base_rss_kib.to_string()),
        ("emperor RSS, max (KiB)", t.max_rss_kib.to_string()),
        ("emperor open fds, max", t.max_fds.to_string()),
        (
            "clean stop (exit 0, no vassal left)",
            clean_stop.to_string(),
        ),
        ("violations", t.violations.len().to_string()),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
