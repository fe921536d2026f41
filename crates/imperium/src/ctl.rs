//! `imperium ctl`: a client for the control socket of a running emperor
//! (`--emperor-control-socket`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use emperor::control::{Reply, Request};
use serde_json::Value;

/// Arguments of `imperium ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The emperor's control socket (its --emperor-control-socket).
    #[arg(long, short, env = "IMPERIUM_CONTROL_SOCKET", value_name = "PATH")]
    pub socket: PathBuf,

    /// Print the reply as JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub action: Action,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List every vassal.
    List,
    /// Show one vassal.
    Show { vassal: String },
    /// The cluster (--emperor-cluster): this emperor's lease, every live
    /// member and the vassal slots each one holds.
    Cluster,
    /// Gracefully reload one vassal. A vassal whose last change was
    /// rejected by its check (--emperor-reload-mode checked) is reloaded
    /// only with --force.
    Reload {
        vassal: String,
        /// Apply a rejected (or still checking) change anyway, unchecked.
        #[arg(long)]
        force: bool,
    },
    /// Stop one vassal; it stays down until `start`, whatever its source says.
    Stop { vassal: String },
    /// Start a stopped, exiled, idle or throttled vassal.
    Start { vassal: String },
    /// Pause automatic reloads of one vassal (config changes are held).
    Pause { vassal: String },
    /// Resume automatic reloads of one vassal (a held change applies now).
    Resume { vassal: String },
    /// Clear the blacklist entry of one vassal, or the whole blacklist.
    ClearBlacklist {
        /// The vassal (all when absent).
        vassal: Option<String>,
    },
    /// Wait until each vassal serves: it said it accepts requests (byte 5)
    /// since its last (re)load and passed its health check since, when it
    /// has one. Exits 0 when all serve, 1 at the timeout (saying which do
    /// not and why). A name not in the table yet is waited for.
    Wait {
        /// The vassals.
        #[arg(required = true)]
        vassals: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
        timeout: f64,
    },
    /// A live view of the fleet with what each vassal uses now (processes,
    /// memory, CPU), busiest first, refreshed every second. Keys: c, m, r,
    /// n sort by CPU, memory, restarts, name; q quits.
    Top {
        /// Print one table and exit (for scripts).
        #[arg(long)]
        once: bool,
        /// Sort by `cpu`, `mem`, `restarts` or `name`.
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "mem", "restarts", "name"])]
        sort: String,
    },
    /// Replace the emperor's own binary without restarting a vassal: the
    /// emperor re-executes itself in place from PATH (default: the path it
    /// was started from, which a package upgrade has replaced) and adopts
    /// every vassal. Replies once the new image has adopted them, or with
    /// the reason it refused (the running emperor then carries on).
    /// See docs/upgrade.md.
    Upgrade {
        /// The new binary.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Re-read the emperor's command line and config files with the
        /// same binary and apply what can change live (sources added and
        /// removed, limits, logging, throttling...); the answer says which
        /// changes need a real restart (they are kept as they are).
        #[arg(long, conflicts_with = "binary")]
        reread_config: bool,
    },
    /// Show the last lines a vassal wrote (--vassal-logs prefix or dir), or
    /// reopen every vassal log file (--reopen, after logrotate moved them).
    Logs {
        /// The vassal.
        #[arg(required_unless_present = "reopen", conflicts_with = "reopen")]
        vassal: Option<String>,
        /// How many of the last lines.
        #[arg(short = 'n', long, default_value_t = 20, value_name = "N")]
        lines: usize,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Close and open again every vassal log file of `--vassal-logs dir:`.
        #[arg(long, conflicts_with_all = ["follow"])]
        reopen: bool,
    },
}

impl From<Action> for Request {
    fn from(a: Action) -> Request {
        match a {
            Action::List => Request::List,
            Action::Show { vassal } => Request::Show { vassal },
            Action::Cluster => Request::Cluster,
            Action::Reload { vassal, force } => Request::Reload { vassal, force },
            Action::Stop { vassal } => Request::Stop { vassal },
            Action::Start { vassal } => Request::Start { vassal },
            Action::Pause { vassal } => Request::Pause { vassal },
            Action::Resume { vassal } => Request::Resume { vassal },
            Action::ClearBlacklist { vassal } => Request::ClearBlacklist { vassal },
            Action::Top { .. } | Action::Wait { .. } => Request::List,
            Action::Upgrade {
                binary,
                reread_config,
            } => Request::Upgrade {
                binary: binary.map(|b| b.to_string_lossy().into_owned()),
                reread_config,
            },
            Action::Logs { reopen: true, .. } => Request::ReopenLogs,
            Action::Logs {
                vassal,
                lines,
                follow,
                ..
            } => Request::Logs {
                vassal: vassal.unwrap_or_default(),
                lines,
                follow,
            },
        }
    }
}

/// Sends one request and reads the reply.
pub fn call(socket: &PathBuf, req: &Request) -> Result<Reply> {
    call_keep(socket, req).map(|(r, _)| r)
}

/// Sends one request, reads the reply, and returns the connection for
/// what follows it (`logs -f`).
fn call_keep(socket: &PathBuf, req: &Request) -> Result<(Reply, BufReader<UnixStream>)> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to the control socket {}", socket.display()))?;
    // an upgrade answers once the new binary's check (at most 10 s) and
    // the adoption of every vassal are done
    let wait = if matches!(req, Request::Upgrade { .. }) {
        60
    } else {
        15
    };
    s.set_read_timeout(Some(Duration::from_secs(wait)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    // a refused peer gets its reply before it has sent anything: read it
    // even when the write fails
    let sent = s.write_all(line.as_bytes());
    let mut reply = String::new();
    let mut conn = BufReader::new(s);
    let read = conn.read_line(&mut reply);
    if reply.is_empty() {
        sent.context("cannot send the request")?;
        read.context("cannot read the reply")?;
        bail!("the emperor closed the connection without a reply");
    }
    let reply = serde_json::from_str(&reply).with_context(|| format!("bad reply {reply:?}"))?;
    Ok((reply, conn))
}

/// Prints the `lines` of a `logs` reply or follow-up, one per line.
fn print_lines(data: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if let Some(n) = data["missed"].as_u64().filter(|n| *n > 0) {
        writeln!(
            out,
            "imperium ctl: {n} lines were missed (they left the ring before they could be sent)"
        )?;
    }
    for l in data["lines"].as_array().into_iter().flatten() {
        writeln!(out, "{}", l.as_str().unwrap_or_default())?;
    }
    out.flush()?;
    Ok(())
}

/// `imperium ctl logs NAME [-n N] [-f]`.
fn logs(args: &CtlArgs, req: &Request) -> Result<()> {
    let (reply, mut conn) = call_keep(&args.socket, req)?;
    if args.json {
        println!("{}", serde_json::to_string(&reply)?);
    }
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_else(|| "failed".into()));
    }
    if !args.json {
        print_lines(&reply.data.unwrap_or_default())?;
    }
    if !matches!(req, Request::Logs { follow: true, .. }) {
        return Ok(());
    }
    // until interrupted, or until the emperor goes away
    conn.get_ref().set_read_timeout(None)?;
    let mut line = String::new();
    loop {
        line.clear();
        if conn
            .read_line(&mut line)
            .context("reading the followed lines")?
            == 0
        {
            bail!("the emperor closed the connection");
        }
        if args.json {
            print!("{line}");
            continue;
        }
        let v: Value = serde_json::from_str(&line).with_context(|| format!("bad line {line:?}"))?;
        print_lines(&v)?;
    }
}

/// Runs `imperium ctl`.
pub fn run(mut args: CtlArgs) -> Result<()> {
    if let Action::Wait { vassals, timeout } = &args.action {
        return wait(&args.socket, vassals, *timeout);
    }
    if let Action::Top { once, sort } = &args.action {
        if !once {
            return crate::top::live(&args.socket, sort);
        }
        let vs = list(&args.socket)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&vs)?);
        } else {
            print!("{}", top_table(vs, sort));
        }
        return Ok(());
    }
    if let Action::Upgrade {
        binary: Some(b), ..
    } = &mut args.action
    {
        // the emperor runs elsewhere: a relative path is this shell's
        *b = std::path::absolute(&*b).with_context(|| format!("--binary {}", b.display()))?;
    }
    let req: Request = std::mem::replace(&mut args.action, Action::List).into();
    if matches!(req, Request::Logs { .. }) {
        return logs(&args, &req);
    }
    let reply = call(&args.socket, &req)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    }
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_else(|| "failed".into()));
    }
    if args.json {
        return Ok(());
    }
    match (&req, reply.data) {
        (Request::List, Some(Value::Array(vs))) => print!("{}", table(&vs)),
        (Request::Cluster, Some(v)) => print!("{}", cluster_table(&v)),
        (Request::Show { .. }, Some(Value::Object(o))) => {
            for (k, mut v) in o {
                // the last lines a vassal wrote before it died: one per line
                let output = v.as_object_mut().and_then(|o| o.remove("output"));
                println!("{k:>16}: {}", plain(&v));
                for l in output.iter().filter_map(Value::as_array).flatten() {
                    println!("{:>16}  | {}", "", l.as_str().unwrap_or_default());
                }
            }
        }
        _ => println!("{}", reply.message.unwrap_or_default()),
    }
    Ok(())
}

/// `imperium ctl cluster` for humans: this member, then one line per
/// member with the slots it holds.
fn cluster_table(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "engine {}  node {}  lease {}  ttl {}s  {}",
        plain(&v["engine"]),
        plain(&v["node"]),
        plain(&v["lease"]),
        plain(&v["ttl"]),
        plain(&v["state"]),
    );
    let _ = writeln!(
        out,
        "{} vassal(s) wanted, {} placed here",
        plain(&v["wanted"]),
        plain(&v["held_here"])
    );
    let _ = writeln!(
        out,
        "{:<24} {:<5} {:>5}  VASSALS",
        "MEMBER", "LEASE", "HOLDS"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let holds = m["holds"].as_array().cloned().unwrap_or_default();
        let names: Vec<String> = holds
            .iter()
            .map(|h| {
                let mut s = plain(&h["vassal"]);
                if h["running"] != Value::Bool(true) {
                    s.push_str(" (starting)");
                }
                s
            })
            .collect();
        let me = if m["me"] == Value::Bool(true) {
            " *"
        } else {
            ""
        };
        let live = if m["live"] == Value::Bool(true) {
            "live"
        } else {
            "gone"
        };
        let _ = writeln!(
            out,
            "{:<24} {:<5} {:>5}  {}",
            format!("{}{me}", plain(&m["node"])),
            live,
            holds.len(),
            names.join(" ")
        );
    }
    out
}

/// Why a vassal does not serve yet, or `None` when it does.
fn not_serving(v: Option<&Value>) -> Option<String> {
    let Some(v) = v else {
        return Some("not in the table".into());
    };
    if v["serving"] == Value::Bool(true) {
        return None;
    }
    let state = plain(&v["state"]);
    if state != "running" {
        return Some(match v["last_exit"].as_object() {
            Some(_) => format!("{state} (last exit: {})", plain(&v["last_exit"])),
            None => state,
        });
    }
    if v["accepting"] != Value::Bool(true) {
        return Some("running, not accepting requests yet (no byte 5)".into());
    }
    let h = &v["health"];
    Some(match h["last_error"].as_str() {
        Some(e) => format!("running, health {}: {e}", health_cell(h)),
        None => format!("running, health {}", health_cell(h)),
    })
}

/// `imperium ctl wait`: polls the table until every vassal serves.
fn wait(socket: &PathBuf, names: &[String], timeout: f64) -> Result<()> {
    if !(timeout.is_finite() && timeout >= 0.0) {
        bail!("--timeout {timeout}: a number of seconds, 0 or more");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(timeout.min(1e9));
    loop {
        let reply = call(socket, &Request::List)?;
        if !reply.ok {
            bail!("{}", reply.error.unwrap_or_else(|| "failed".into()));
        }
        let vs = match reply.data {
            Some(Value::Array(vs)) => vs,
            _ => Vec::new(),
        };
        let pending: Vec<(String, String)> = names
            .iter()
            .filter_map(|n| {
                let v = vs.iter().find(|v| v["name"].as_str() == Some(n));
                not_serving(v).map(|why| (n.clone(), why))
            })
            .collect();
        if pending.is_empty() {
            println!("{} serving", names.join(", "));
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let list: Vec<String> = pending.iter().map(|(n, w)| format!("{n}: {w}")).collect();
            bail!(
                "{} of {} vassal(s) not serving after {timeout} s: {}",
                pending.len(),
                names.len(),
                list.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k} {}", plain(v)))
            .collect::<Vec<_>>()
            .join(", "),
        v => v.to_string(),
    }
}

/// `imperium ctl top --once`: one row per vassal with what it uses.
pub fn top_table(vs: Vec<Value>, sort: &str) -> String {
    columns(&top_rows(vs, sort, None))
}

/// The vassals of a `list` reply.
pub fn list(socket: &PathBuf) -> Result<Vec<Value>> {
    let reply = call(socket, &Request::List)?;
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_else(|| "failed".into()));
    }
    Ok(match reply.data {
        Some(Value::Array(vs)) => vs,
        _ => Vec::new(),
    })
}

/// The rows of `imperium ctl top`, header first, sorted by `sort`; with
/// `rates` (CPU use per vassal name, in % of one core, since the previous
/// look), a CPU% column that `cpu` sorts by.
pub fn top_rows(
    mut vs: Vec<Value>,
    sort: &str,
    rates: Option<&std::collections::HashMap<String, f64>>,
) -> Vec<Vec<String>> {
    let num = |v: &Value, k: &str| v["usage"][k].as_f64().unwrap_or(0.0);
    let rate = |v: &Value| {
        rates
            .and_then(|r| r.get(v["name"].as_str().unwrap_or_default()))
            .copied()
            .unwrap_or(0.0)
    };
    match sort {
        "mem" => vs.sort_by(|a, b| num(b, "rss_bytes").total_cmp(&num(a, "rss_bytes"))),
        "restarts" => vs.sort_by_key(|v| std::cmp::Reverse(v["restarts"].as_u64().unwrap_or(0))),
        "name" => vs.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str())),
        _ if rates.is_some() => vs.sort_by(|a, b| {
            rate(b)
                .total_cmp(&rate(a))
                .then(num(b, "cpu_seconds").total_cmp(&num(a, "cpu_seconds")))
        }),
        _ => vs.sort_by(|a, b| num(b, "cpu_seconds").total_cmp(&num(a, "cpu_seconds"))),
    }
    let mut head = vec!["NAME", "STATE", "PID", "PROCS", "RSS MiB"];
    if rates.is_some() {
        head.push("CPU%");
    }
    head.extend([
        "CPU s",
        "CG MEM MiB",
        "THROTTLED s",
        "RESTARTS",
        "HEALTH",
        "LAST EXIT",
    ]);
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for v in &vs {
        let u = &v["usage"];
        let (procs, rss, cpu) = if u.is_object() {
            (
                plain(&u["processes"]),
                format!("{:.1}", num(v, "rss_bytes") / 1048576.0),
                format!("{:.2}", num(v, "cpu_seconds")),
            )
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        let mut last = v["last_exit"].clone();
        if let Some(o) = last.as_object_mut() {
            o.remove("output");
        }
        let mut row = vec![
            plain(&v["name"]),
            plain(&v["state"]),
            plain(&v["pid"]),
            procs,
            rss,
        ];
        if rates.is_some() {
            row.push(format!("{:.1}", rate(v)));
        }
        // the cgroup figures, where a controller covers the vassal's group
        let cg = |k: &str, scale: f64, digits: usize| match u[k].as_f64() {
            Some(x) => format!("{:.digits$}", x / scale),
            None => "-".into(),
        };
        row.extend([
            cpu,
            cg("memory_current_bytes", 1048576.0, 1),
            cg("cpu_throttled_seconds", 1.0, 2),
            plain(&v["restarts"]),
            health_cell(&v["health"]),
            plain(&last),
        ]);
        rows.push(row);
    }
    rows
}

/// Rows as aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A vassal's health in one cell: `-` without a check, else its state
/// (with the failures in a row while failing).
fn health_cell(h: &Value) -> String {
    match h["state"].as_str() {
        None => "-".into(),
        Some("failing") => format!(
            "failing {}/{}",
            h["failures"].as_u64().unwrap_or(0),
            h["failures_allowed"].as_u64().unwrap_or(0)
        ),
        Some(s) => s.to_string(),
    }
}

/// The vassal table as aligned columns.
pub fn table(vs: &[Value]) -> String {
    let head = [
        "NAME",
        "STATE",
        "PID",
        "MONITOR",
        "RELOADS",
        "RESTARTS",
        "LAST EXIT",
        "HEALTH",
        "FLAGS",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for v in vs {
        let mut flags = Vec::new();
        if v["paused"] == Value::Bool(true) {
            flags.push("paused");
        }
        if v["change_held"] == Value::Bool(true) {
            flags.push("change-held");
        }
        if v["loyal"] == Value::Bool(true) {
            flags.push("loyal");
        }
        if v["serving"] == Value::Bool(true) {
            flags.push("serving");
        }
        if v["checking"] == Value::Bool(true) {
            flags.push("checking");
        }
        if v["rejected"].is_object() {
            flags.push("rejected");
        }
        if v["swap_pid"].is_u64() {
            flags.push("swapping");
        }
        rows.push(vec![
            plain(&v["name"]),
            plain(&v["state"]),
            plain(&v["pid"]),
            plain(&v["monitor"]),
            plain(&v["reloads"]),
            plain(&v["restarts"]),
            plain(&v["last_exit"]),
            health_cell(&v["health"]),
            flags.join(","),
        ]);
    }
    columns(&rows)
}
