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
    /// Gracefully reload one vassal.
    Reload { vassal: String },
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
}

impl From<Action> for Request {
    fn from(a: Action) -> Request {
        match a {
            Action::List => Request::List,
            Action::Show { vassal } => Request::Show { vassal },
            Action::Reload { vassal } => Request::Reload { vassal },
            Action::Stop { vassal } => Request::Stop { vassal },
            Action::Start { vassal } => Request::Start { vassal },
            Action::Pause { vassal } => Request::Pause { vassal },
            Action::Resume { vassal } => Request::Resume { vassal },
            Action::ClearBlacklist { vassal } => Request::ClearBlacklist { vassal },
        }
    }
}

/// Sends one request and reads the reply.
pub fn call(socket: &PathBuf, req: &Request) -> Result<Reply> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to the control socket {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    // a refused peer gets its reply before it has sent anything: read it
    // even when the write fails
    let sent = s.write_all(line.as_bytes());
    let mut reply = String::new();
    let read = BufReader::new(s).read_line(&mut reply);
    if reply.is_empty() {
        sent.context("cannot send the request")?;
        read.context("cannot read the reply")?;
        bail!("the emperor closed the connection without a reply");
    }
    serde_json::from_str(&reply).with_context(|| format!("bad reply {reply:?}"))
}

/// Runs `imperium ctl`.
pub fn run(args: CtlArgs) -> Result<()> {
    let req: Request = args.action.into();
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
        (Request::Show { .. }, Some(Value::Object(o))) => {
            for (k, v) in o {
                println!("{k:>16}: {}", plain(&v));
            }
        }
        _ => println!("{}", reply.message.unwrap_or_default()),
    }
    Ok(())
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
        rows.push(vec![
            plain(&v["name"]),
            plain(&v["state"]),
            plain(&v["pid"]),
            plain(&v["monitor"]),
            plain(&v["reloads"]),
            plain(&v["restarts"]),
            plain(&v["last_exit"]),
            flags.join(","),
        ]);
    }
    let widths: Vec<usize> = (0..head.len())
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
