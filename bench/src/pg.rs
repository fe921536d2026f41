//! The pg:// measurements: a private PostgreSQL (testkit's fixture), a
//! `vassals` table of N test vassals whose configs travel over the config
//! pipe, and the time from an UPDATE of one row to the reload byte.
//!
//! imperium is run as documented (docs/monitors/pg-notify.sql installs the
//! NOTIFY trigger; the pg monitor LISTENs), uWSGI as its emperor_pg plugin
//! works: one query per `--emperor-freq` tick.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use testkit::servers::pg::PgServer;

const NOTIFY_SQL: &str = include_str!("../../docs/monitors/pg-notify.sql");

/// A PostgreSQL server and one long-lived psql session to change rows
/// with (no process start between the clock and the UPDATE).
pub struct Pg {
    pub server: PgServer,
    session: Child,
    stdin: ChildStdin,
    /// Seconds since the epoch used for the next `ts` (whole seconds, so
    /// that uWSGI, which reads only the integer part, sees every change).
    next_ts: u64,
}

impl Pg {
    /// Starts the server (panics with the install command when PostgreSQL
    /// is missing, as testkit's fixture does).
    pub fn start() -> Result<Pg> {
        let server = PgServer::start();
        let mut session = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg(server.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start psql (apt-get install postgresql-client)")?;
        let stdin = session.stdin.take().context("psql stdin")?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Pg {
            server,
            session,
            stdin,
            next_ts: now + 10,
        })
    }

    /// The `--emperor` value.
    pub fn url(&self) -> String {
        format!("pg://{}", self.server.conninfo())
    }

    /// A fresh table holding `names`, each with `config`.
    pub fn fill(&mut self, names: &[String], config: &str) {
        let mut sql = String::from(
            "DROP TABLE IF EXISTS vassals;\nCREATE TABLE vassals (name text PRIMARY KEY, config text, ts timestamptz NOT NULL DEFAULT now());\n",
        );
        sql.push_str(NOTIFY_SQL);
        sql.push_str("\nINSERT INTO vassals (name, config, ts) VALUES\n");
        let ts = self.bump();
        let rows: Vec<String> = names
            .iter()
            .map(|n| format!("({}, {}, to_timestamp({ts}))", lit(n), lit(config)))
            .collect();
        sql.push_str(&rows.join(",\n"));
        sql.push(';');
        self.server.psql(&sql);
    }

    fn bump(&mut self) -> u64 {
        self.next_ts += 1;
        self.next_ts
    }

    /// Changes the row of `name` (new config text, `ts` one second later)
    /// and returns the instant the statement was handed to psql.
    pub fn touch_row(&mut self, name: &str, marker: usize) -> Result<Instant> {
        let ts = self.bump();
        let sql = format!(
            "UPDATE vassals SET config = {}, ts = to_timestamp({ts}) WHERE name = {};\n",
            lit(&format!("[vassal]\nloyal = 1\nmarker = m{marker}\n")),
            lit(name)
        );
        let t = Instant::now();
        self.stdin.write_all(sql.as_bytes())?;
        self.stdin.flush()?;
        Ok(t)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"\\q\n");
        let _ = self.session.kill();
        let _ = self.session.wait();
    }
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How long a pg:// change may take for `freq` (uWSGI polls).
pub fn latency_timeout(freq: Option<u64>) -> Duration {
    Duration::from_secs(freq.unwrap_or(3) * 3 + 5)
}
