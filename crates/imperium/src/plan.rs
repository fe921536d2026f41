//! `imperium plan EMPEROR-OPTIONS...`: reads every source once, replays it
//! against the vassal table of the running emperor (its
//! `--emperor-control-socket`, or an empty table), and prints what the
//! emperor would do, without doing it (docs/plan.md). Exit code 0: nothing
//! to do; 2: changes; 1: an error (a source that cannot be read, bad
//! options).

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use emperor::control::Request;
use emperor::reconciler::{Action, Adopted, Phase, Reconciler, StopReason, VassalState};
use emperor::{
    Change, ChangeKey, ConfigSource, MonitorContext, MonitorHealth, Owner, VassalName, VassalSpec,
};
use serde_json::Value;

/// How long every source has to say what it holds.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Sources of messages: they hold no state a plan could read.
const EVENT_SCHEMES: &[&str] = &["amqp://", "zmq://"];

/// Plan lines that say what will not happen, not a change.
const NOTES: &[&str] = &["conflict", "hold"];

/// The exit code when the plan has changes.
const EXIT_CHANGES: u8 = 2;

/// What one source said within the time.
enum Seen {
    /// Its whole content.
    Snapshot(Vec<VassalSpec>),
    /// Single records, without a snapshot (a source that only sends
    /// events): what came is known, nothing can be removed.
    Partial(Vec<VassalSpec>),
    /// It cannot be read.
    Failed(String),
    /// It said nothing.
    Silent,
}

/// `imperium plan ARGS` (`args[0]` is the program): the exit code.
pub fn main(args: &[OsString]) -> std::process::ExitCode {
    match run(args) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("imperium plan: {}", crate::error_chain(&e));
            std::process::ExitCode::from(1)
        }
    }
}

fn run(args: &[OsString]) -> Result<u8> {
    let (cli, _notes, _) = match crate::parse_command_line_for(args)? {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            eprint!("{e}");
            return Ok(1);
        }
        Err(e) => {
            // --help, --version
            print!("{e}");
            return Ok(0);
        }
    };
    if cli.emperor.is_empty() {
        anyhow::bail!("no config source: give the --emperor options of the emperor to plan for (or its --ini)");
    }
    let (mons, cfg) = crate::emperor_parts(&cli, crate::Purpose::Plan)?;
    let urls: Vec<String> = mons.iter().map(|m| m.describe()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let seen = rt.block_on(read_sources(mons, &urls, Arc::new(cfg.monitor.clone())));
    rt.shutdown_timeout(Duration::from_millis(100));
    let now = Instant::now();
    let mut rec = Reconciler::new(cfg.reconciler.clone(), urls.clone());
    let adopted = match &cli.emperor_control_socket {
        Some(sock) => running_table(sock),
        None => {
            eprintln!("imperium plan: no --emperor-control-socket: planned against an empty table (a new emperor)");
            Vec::new()
        }
    };
    let before: BTreeMap<String, (VassalState, Option<String>)> = adopted
        .iter()
        .map(|a| (a.spec.name.to_string(), (a.state, a.refused.clone())))
        .collect();
    for a in adopted {
        rec.adopt(a, now);
    }
    let mut failed = false;
    let mut lines: Vec<(String, &'static str, String)> = Vec::new();
    for (id, seen) in seen.into_iter().enumerate() {
        let url = &urls[id];
        let changes = match seen {
            Seen::Snapshot(specs) => vec![Change::Snapshot(specs)],
            Seen::Partial(specs) => {
                eprintln!("imperium plan: {url} sends records, not its whole content: only the records it sent are planned, nothing it holds can be seen as removed");
                specs.into_iter().map(Change::Upsert).collect()
            }
            Seen::Failed(why) => {
                eprintln!(
                    "imperium plan: {url}: cannot be read: {why}; its vassals are left as they are"
                );
                failed = true;
                continue;
            }
            Seen::Silent => {
                eprintln!("imperium plan: {url} has no state to read (a source of messages, or one that said nothing within {} s); its vassals are left as they are", READ_TIMEOUT.as_secs());
                continue;
            }
        };
        for change in changes {
            let names = spec_names(&change);
            let actions = rec.monitor_change(id, change, now);
            describe(&rec, &actions, &before, &mut lines);
            for n in names {
                match rec.vassal(&n) {
                    Some(v) if v.monitor != id => lines.push((
                        n,
                        "conflict",
                        format!(
                            "also in {}, which runs it: this one is ignored",
                            urls.get(v.monitor)
                                .map_or("another monitor of the running emperor", String::as_str)
                        ),
                    )),
                    _ => {}
                }
            }
        }
    }
    settled(&rec, &before, &mut lines);
    let changes = print(&rec, lines);
    Ok(if failed {
        1
    } else if changes == 0 {
        0
    } else {
        EXIT_CHANGES
    })
}

/// Prints the plan, one line per vassal and verb, then a summary; returns
/// the number of changes.
fn print(rec: &Reconciler, mut lines: Vec<(String, &'static str, String)>) -> usize {
    lines.sort();
    lines.dedup();
    let changed: HashSet<&str> = lines.iter().map(|(n, _, _)| n.as_str()).collect();
    let changes = lines.iter().filter(|(_, v, _)| !NOTES.contains(v)).count();
    let unchanged = rec
        .vassals()
        .filter(|v| !changed.contains(v.name.as_str()))
        .count();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, verb, why) in &lines {
        *counts.entry(verb).or_default() += 1;
        if why.is_empty() {
            println!("{verb:<9} {name}");
        } else {
            println!("{verb:<9} {name}  ({why})");
        }
    }
    let what: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    if changes == 0 {
        print!("plan: nothing to do");
    } else {
        print!("plan: {changes} change(s)");
    }
    if !what.is_empty() {
        print!(" ({})", what.join(", "));
    }
    println!("; {unchanged} vassal(s) unchanged");
    changes
}

fn spec_names(c: &Change) -> Vec<String> {
    match c {
        Change::Snapshot(specs) => specs.iter().map(|s| s.name.to_string()).collect(),
        Change::Upsert(s) => vec![s.name.to_string()],
        _ => Vec::new(),
    }
}

/// Runs every monitor until it has said what its source holds (or failed),
/// for at most [`READ_TIMEOUT`].
async fn read_sources(
    mons: Vec<Box<dyn emperor::Monitor>>,
    urls: &[String],
    opts: Arc<emperor::MonitorOptions>,
) -> Vec<Seen> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let (_rescan, rescan_rx) = tokio::sync::watch::channel(0u64);
    let mut seen: Vec<Option<Seen>> = Vec::new();
    let mut partial: Vec<Vec<VassalSpec>> = Vec::new();
    let mut tasks = Vec::new();
    for (id, m) in mons.into_iter().enumerate() {
        partial.push(Vec::new());
        if EVENT_SCHEMES.iter().any(|s| urls[id].starts_with(s)) {
            // messages hold no state: there is nothing to wait for
            seen.push(Some(Seen::Silent));
            continue;
        }
        let ctx = MonitorContext::new(id, opts.clone(), tx.clone(), rescan_rx.clone());
        tasks.push(tokio::spawn(m.run(ctx)));
        seen.push(None);
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    while seen.iter().any(Option::is_none) {
        let msg = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) => m,
            // every monitor ended, or the time is up
            Ok(None) | Err(_) => break,
        };
        let slot = &mut seen[msg.monitor];
        if slot.is_some() {
            continue;
        }
        match msg.change {
            Change::Snapshot(specs) => *slot = Some(Seen::Snapshot(specs)),
            Change::Upsert(s) => partial[msg.monitor].push(s),
            Change::Remove(_) | Change::Health(MonitorHealth::Connected) => {}
            Change::Health(MonitorHealth::Degraded(r) | MonitorHealth::Failed(r)) => {
                *slot = Some(Seen::Failed(r));
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    seen.into_iter()
        .zip(partial)
        .map(|(s, p)| match s {
            Some(s) => s,
            None if !p.is_empty() => Seen::Partial(p),
            None => Seen::Silent,
        })
        .collect()
}

/// The vassal table of the emperor answering on `sock`, or an empty one
/// (said on stderr) when none answers.
fn running_table(sock: &Path) -> Vec<Adopted> {
    let reply = match crate::ctl::call(&sock.to_path_buf(), &Request::List) {
        Ok(r) if r.ok => r,
        Ok(r) => {
            eprintln!(
                "imperium plan: the emperor on {} refused the list: {}; planned against an empty table",
                sock.display(),
                r.error.unwrap_or_default()
            );
            return Vec::new();
        }
        Err(e) => {
            eprintln!(
                "imperium plan: no emperor answers on {} ({}): planned against an empty table (a new emperor)",
                sock.display(),
                crate::error_chain(&e)
            );
            return Vec::new();
        }
    };
    let rows = match reply.data {
        Some(Value::Array(rows)) => rows,
        _ => Vec::new(),
    };
    let table: Vec<Adopted> = rows.iter().filter_map(adopted).collect();
    eprintln!(
        "imperium plan: planned against the {} vassal(s) of the emperor on {}",
        table.len(),
        sock.display()
    );
    table
}

/// One row of a running emperor's `list`, or `None` for a zerg (its base
/// vassal's spec covers it) or a row this version cannot read.
fn adopted(v: &Value) -> Option<Adopted> {
    let name = VassalName::derived(v["name"].as_str()?.to_string());
    if name.zerg_parts().is_some() {
        return None;
    }
    let key: ChangeKey = v["change_key"].as_str()?.parse().ok()?;
    let config = match v["config"].as_str()? {
        "(inline)" => ConfigSource::Inline("".into()),
        c if c.contains("://") => ConfigSource::Url(c.to_string()),
        c => ConfigSource::File(c.into()),
    };
    let (uid, gid) = (v["uid"].as_u64()?, v["gid"].as_u64()?);
    let owner = (uid != 0 || gid != 0).then_some(Owner {
        uid: uid as u32,
        gid: gid as u32,
    });
    Some(Adopted {
        spec: VassalSpec {
            name,
            config,
            key,
            owner,
            socket: v["on_demand"].as_str().map(str::to_string),
            workdir: v["workdir"].as_str().map(Into::into),
            limits: None,
        },
        monitor: v["monitor"].as_u64()? as usize,
        state: serde_json::from_value(v["state"].clone()).ok()?,
        pid: v["pid"].as_u64().map(|p| p as u32),
        paused: v["paused"].as_bool().unwrap_or(false),
        refused: v["refused"].as_str().map(str::to_string),
        rejected: v["rejected"]["reason"].as_str().map(str::to_string),
    })
}

/// The plan lines of the actions of one change.
fn describe(
    rec: &Reconciler,
    actions: &[Action],
    before: &BTreeMap<String, (VassalState, Option<String>)>,
    lines: &mut Vec<(String, &'static str, String)>,
) {
    let by_instance = |i: u64| {
        rec.vassals()
            .find(|v| v.proc().is_some_and(|p| p.instance == i))
            .map(|v| v.name.to_string())
    };
    for a in actions {
        let line = match a {
            Action::Spawn { spec, instance } if rec.is_successor(*instance) => Some((
                spec.name.to_string(),
                "swap",
                "its config changed: a new instance starts beside the running one and takes over once it serves (--emperor-reload-mode swap)".to_string(),
            )),
            Action::Spawn { spec, .. } => {
                let n = spec.name.to_string();
                match before.get(&n) {
                    Some((state, _)) => {
                        let was = serde_json::to_value(state).ok();
                        let was = was.as_ref().and_then(Value::as_str).unwrap_or("?");
                        Some((n, "start", format!("its config changed; it is {was}")))
                    }
                    None => Some((n, "spawn", String::new())),
                }
            }
            Action::Send { instance, byte } => by_instance(*instance).map(|n| {
                let stopping = rec.vassal(&n).and_then(|v| v.phase.stopping());
                match (*byte, stopping) {
                    (emperor::protocol::MSG_RELOAD, _) => (n, "reload", "its config changed".to_string()),
                    (_, Some((StopReason::Removed, _))) => {
                        (n, "stop", "removed from its source".to_string())
                    }
                    (_, Some((StopReason::Restart, _))) => (
                        n,
                        "restart",
                        "its owner, on-demand socket or directory changed".to_string(),
                    ),
                    (_, _) => (n, "stop", String::new()),
                }
            }),
            Action::Check { spec } => Some((
                spec.name.to_string(),
                "check",
                "its config changed: checked, then reloaded if it passes (--emperor-reload-mode checked)".to_string(),
            )),
            Action::Listen { name, address, .. } if !before.contains_key(name.as_str()) => {
                Some((name.to_string(), "listen", format!("on demand, at {address}")))
            }
            _ => None,
        };
        lines.extend(line);
    }
}

/// The lines of what is decided without an action: refusals and changes
/// held by a pause.
fn settled(
    rec: &Reconciler,
    before: &BTreeMap<String, (VassalState, Option<String>)>,
    lines: &mut Vec<(String, &'static str, String)>,
) {
    for v in rec.vassals() {
        let n = v.name.to_string();
        if let Phase::Refused(why) = &v.phase {
            let was = before.get(&n).and_then(|(_, r)| r.as_deref());
            if was != Some(why.as_str()) {
                lines.push((n.clone(), "refuse", why.clone()));
            }
        }
        if v.held_change.is_some() {
            lines.push((
                n,
                "hold",
                "its reloads are paused: imperium ctl resume applies the change".to_string(),
            ));
        }
    }
}
