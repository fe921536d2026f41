//! `pg://<libpq conninfo>[;<SQL query>]`: vassals from a PostgreSQL query
//! (docs/monitors/pg.md), pushed by LISTEN/NOTIFY.
//!
//! Unlike uWSGI's emperor_pg, which opens a new connection for every scan,
//! this monitor keeps one connection open. It runs the query when it
//! connects, every `--emperor-freq`, on a rescan request, and at once when
//! a notification arrives on the channel `--emperor-pg-channel` (default
//! `imperium`; empty turns LISTEN off). Each successful query becomes one
//! [`emperor::Change::Snapshot`]; rows are read by [`rows`].
//!
//! A database that is down, refuses the login or fails the query is a
//! [`emperor::MonitorHealth::Degraded`] change: running vassals are left alone, the
//! monitor reconnects with capped backoff and sends a fresh snapshot once
//! the query works again. See docs/monitors/pg.md.

pub mod rows;
pub mod url;

use std::str::FromStr;
use std::time::Duration;

use emperor::{Monitor, MonitorContext, MonitorError, MonitorOptions, VassalSpec};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use self::rows::{Layout, RowReader};
use self::url::{quote_ident, PgUrl};
use crate::session::{self, AbortOnDrop, End, Link, RescanClock, Source};

/// The per-attempt TCP connect timeout, unless the conninfo sets one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a whole connection attempt (all hosts, login, LISTEN) may take.
const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the query may take before the connection is given up.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The pg:// monitor.
pub struct PgMonitor {
    url: PgUrl,
    config: tokio_postgres::Config,
    channel: String,
}

impl PgMonitor {
    /// `url` is the whole `--emperor` value, `rest` what follows `pg://`.
    /// A conninfo that cannot be parsed is a start-up error (its text is
    /// not repeated in the error, so no password leaks).
    /// `channel` is the LISTEN channel (empty: no LISTEN).
    pub fn new(url: &str, rest: &str, channel: &str) -> Result<Self, MonitorError> {
        let parsed = PgUrl::parse(rest).map_err(|e| MonitorError::BadUrl {
            url: PgUrl::parse(rest)
                .map(|u| u.describe())
                .unwrap_or_else(|_| redact_whole(url)),
            reason: e.to_string(),
        })?;
        let mut config = tokio_postgres::Config::from_str(&parsed.conninfo).map_err(|e| {
            MonitorError::BadUrl {
                url: parsed.describe(),
                // the source names the keyword (`unknown option `hots``)
                reason: format!("invalid libpq conninfo: {}", error_text(&e)),
            }
        })?;
        apply_libpq_env(&mut config, &|k| std::env::var(k).ok()).map_err(|reason| {
            MonitorError::BadUrl {
                url: parsed.describe(),
                reason,
            }
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("imperium");
        }
        Ok(PgMonitor {
            url: parsed,
            config,
            channel: channel.to_string(),
        })
    }
}

/// Where libpq looks for the server's Unix socket when no host is given
/// (Debian's build).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Fills what the conninfo leaves out from libpq's environment variables
/// (`PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
/// `PGCONNECT_TIMEOUT`, `PGAPPNAME`, `PGSSLMODE`), as uWSGI's emperor_pg gets
/// them through libpq. Without a host, the Unix socket in
/// [`DEFAULT_SOCKET_DIR`] is used, as libpq does. `env` looks a variable up.
pub fn apply_libpq_env(
    config: &mut tokio_postgres::Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let bad = |k: &str| format!("invalid value in the environment variable {k}");
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        match (var("PGHOST"), var("PGHOSTADDR")) {
            (None, None) => {
                config.host(DEFAULT_SOCKET_DIR);
            }
            (host, addr) => {
                if let Some(host) = host {
                    for h in host.split(',') {
                        config.host(h);
                    }
                }
                if let Some(addr) = addr {
                    for a in addr.split(',') {
                        config.hostaddr(a.trim().parse().map_err(|_| bad("PGHOSTADDR"))?);
                    }
                }
            }
        }
    }
    if config.get_ports().is_empty() {
        if let Some(port) = var("PGPORT") {
            for p in port.split(',') {
                config.port(p.trim().parse().map_err(|_| bad("PGPORT"))?);
            }
        }
    }
    if config.get_user().is_none() {
        if let Some(user) = var("PGUSER") {
            config.user(&user);
        }
    }
    if config.get_password().is_none() {
        if let Some(pw) = var("PGPASSWORD") {
            config.password(pw);
        }
    }
    if config.get_dbname().is_none() {
        if let Some(db) = var("PGDATABASE") {
            config.dbname(&db);
        }
    }
    if config.get_connect_timeout().is_none() {
        if let Some(t) = var("PGCONNECT_TIMEOUT") {
            let secs: u64 = t.trim().parse().map_err(|_| bad("PGCONNECT_TIMEOUT"))?;
            if secs > 0 {
                config.connect_timeout(Duration::from_secs(secs));
            }
        }
    }
    if config.get_application_name().is_none() {
        if let Some(app) = var("PGAPPNAME") {
            config.application_name(&app);
        }
    }
    if let Some(mode) = var("PGSSLMODE") {
        // only when the conninfo left sslmode at its default
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer {
            let mode = match mode.as_str() {
                "disable" | "allow" => tokio_postgres::config::SslMode::Disable,
                "prefer" => tokio_postgres::config::SslMode::Prefer,
                "require" | "verify-ca" | "verify-full" => tokio_postgres::config::SslMode::Require,
                _ => return Err(bad("PGSSLMODE")),
            };
            config.ssl_mode(mode);
        }
    }
    Ok(())
}

/// The URL for an error message when it could not even be split.
fn redact_whole(url: &str) -> String {
    format!(
        "pg://{}",
        url::redact_conninfo(url.trim_start_matches("pg://"))
    )
}

/// Builds a pg:// monitor; `--emperor-pg-channel` is
/// [`crate::options::PG_CHANNEL`] (default [`DEFAULT_CHANNEL`]).
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    let channel = t
        .args
        .text(&crate::options::PG_CHANNEL)
        .unwrap_or(DEFAULT_CHANNEL);
    Ok(Box::new(PgMonitor::new(t.url, t.rest, channel)?))
}

/// The LISTEN channel when `--emperor-pg-channel` is not given.
pub const DEFAULT_CHANNEL: &str = "imperium";

impl Monitor for PgMonitor {
    fn describe(&self) -> String {
        self.url.describe()
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        let this = *self;
        let shown = this.url.describe();
        let src = PgSource {
            config: this.config,
            query: this.url.query,
            channel: this.channel,
            reader: RowReader::default(),
        };
        Box::pin(session::run(src, ctx, shown, session::RETRY))
    }
}

/// What the connection task tells the session.
enum ConnEvent {
    /// A notification arrived on the channel.
    Notified,
    /// The connection ended.
    Closed(String),
}

struct PgSource {
    config: tokio_postgres::Config,
    query: String,
    /// The LISTEN channel (`--emperor-pg-channel`); empty: no LISTEN.
    channel: String,
    reader: RowReader,
}

impl Source for PgSource {
    /// Connects, LISTENs, and queries until the connection is lost.
    async fn session(&mut self, link: &mut Link) -> End {
        let setup = tokio::time::timeout(SESSION_SETUP_TIMEOUT, self.connect(link.shown())).await;
        let (client, mut events, _conn_task) = match setup {
            Ok(Ok(c)) => c,
            Ok(Err(reason)) => return End::Lost(reason),
            Err(_) => {
                return End::Lost(format!(
                    "connecting took longer than {} s",
                    SESSION_SETUP_TIMEOUT.as_secs()
                ))
            }
        };
        let mut ticker = RescanClock::new(link.options().freq);
        loop {
            // notifications that arrived up to now are covered by this query
            loop {
                match events.try_recv() {
                    Ok(ConnEvent::Notified) => {}
                    Ok(ConnEvent::Closed(reason)) => return End::Lost(reason),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        return End::Lost("the connection ended".to_string())
                    }
                }
            }
            let query = self.query(&client, link.options(), link.shown());
            match tokio::time::timeout(QUERY_TIMEOUT, query).await {
                Err(_) => {
                    return End::Lost(format!(
                        "the query took longer than {} s",
                        QUERY_TIMEOUT.as_secs()
                    ))
                }
                Ok(Err(QueryError::Connection(reason))) => return End::Lost(reason),
                Ok(Err(QueryError::Result(reason))) => {
                    // the connection works but the query or its result does
                    // not: keep the connection and retry on the next trigger
                    tracing::debug!(monitor = %link.shown(), %reason, "degraded: running vassals are kept");
                    if !link.degraded(reason).await {
                        return End::EmperorGone;
                    }
                }
                Ok(Ok(specs)) => {
                    if !link.connected().await || !link.snapshot(specs).await {
                        return End::EmperorGone;
                    }
                }
            }
            tokio::select! {
                _ = ticker.tick() => {}
                rescan = link.rescan_requested() => if !rescan {
                    return End::EmperorGone;
                },
                ev = events.recv() => match ev {
                    Some(ConnEvent::Notified) => {}
                    Some(ConnEvent::Closed(reason)) => return End::Lost(reason),
                    None => return End::Lost("the connection ended".to_string()),
                },
            }
        }
    }
}

impl PgSource {
    /// Opens the connection, starts its task and LISTENs on the channel.
    async fn connect(
        &self,
        shown: &str,
    ) -> Result<(Client, mpsc::UnboundedReceiver<ConnEvent>, AbortOnDrop<()>), String> {
        let (client, mut connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| format!("cannot connect: {}", error_text(&e)))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let described = shown.to_string();
        let guard = AbortOnDrop::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            let reason = loop {
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        tracing::trace!(monitor = %described, channel = n.channel(), payload = n.payload(), "notification");
                        if tx.send(ConnEvent::Notified).is_err() {
                            return;
                        }
                    }
                    Some(Ok(AsyncMessage::Notice(n))) => {
                        tracing::debug!(monitor = %described, notice = %n, "server notice");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("connection lost: {}", error_text(&e)),
                    None => break "the server closed the connection".to_string(),
                }
            };
            let _ = tx.send(ConnEvent::Closed(reason));
        });
        let channel = &self.channel;
        if !channel.is_empty() {
            client
                .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
                .await
                .map_err(|e| format!("LISTEN {channel} failed: {}", error_text(&e)))?;
        }
        tracing::debug!(monitor = %shown, channel = %channel, "connected");
        Ok((client, rx, guard))
    }

    /// Runs the query and turns its last result into a snapshot.
    async fn query(
        &mut self,
        client: &Client,
        opts: &MonitorOptions,
        shown: &str,
    ) -> Result<Vec<VassalSpec>, QueryError> {
        let messages = client.simple_query(&self.query).await.map_err(|e| {
            let text = format!("query failed: {}", error_text(&e));
            if client.is_closed() || e.code().is_none() {
                QueryError::Connection(text)
            } else {
                QueryError::Result(text)
            }
        })?;
        // like PQexec, only the last statement's result counts
        let mut columns: Option<Vec<String>> = None;
        let mut rows = Vec::new();
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    columns = Some(cols.iter().map(|c| c.name().to_string()).collect());
                    rows.clear();
                }
                SimpleQueryMessage::Row(row) => {
                    columns.get_or_insert_with(|| {
                        row.columns().iter().map(|c| c.name().to_string()).collect()
                    });
                    rows.push(row);
                }
                _ => {}
            }
        }
        let Some(names) = columns else {
            return Err(QueryError::Result(
                "the query returned no result set (is it a SELECT?)".to_string(),
            ));
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let layout = Layout::of(&names).map_err(|e| QueryError::Result(e.to_string()))?;
        let cells: Vec<Vec<Option<&str>>> = rows
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
            .collect();
        Ok(self
            .reader
            .snapshot(&cells, &layout, &opts.extensions, shown))
    }
}

enum QueryError {
    /// The connection is gone: reconnect.
    Connection(String),
    /// The server answered with an error, or the result has the wrong
    /// shape: the connection stays.
    Result(String),
}

/// An error with its database message and detail, on one line.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                let t = inner.to_string();
                if !s.contains(&t) {
                    s.push_str(": ");
                    s.push_str(&t);
                }
                src = inner.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio_postgres::config::Host;

    fn with_env(conninfo: &str, vars: &[(&str, &str)]) -> Result<tokio_postgres::Config, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut c = tokio_postgres::Config::from_str(conninfo).unwrap();
        apply_libpq_env(&mut c, &|k| map.get(k).cloned())?;
        Ok(c)
    }

    #[test]
    fn environment_fills_what_the_conninfo_leaves_out() {
        let c = with_env(
            "dbname=emperor",
            &[
                ("PGHOST", "db1,/run/pg"),
                ("PGPORT", "6432"),
                ("PGUSER", "u"),
                ("PGPASSWORD", "pw"),
                ("PGDATABASE", "ignored"),
                ("PGCONNECT_TIMEOUT", "3"),
                ("PGAPPNAME", "app"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.get_hosts(),
            &[
                Host::Tcp("db1".into()),
                Host::Unix(std::path::PathBuf::from("/run/pg"))
            ]
        );
        assert_eq!(c.get_ports(), &[6432]);
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert_eq!(c.get_dbname(), Some("emperor"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(c.get_application_name(), Some("app"));
    }

    #[test]
    fn the_conninfo_wins_over_the_environment() {
        let c = with_env(
            "host=h port=1 user=a password=b",
            &[
                ("PGHOST", "x"),
                ("PGPORT", "2"),
                ("PGUSER", "y"),
                ("PGPASSWORD", "z"),
            ],
        )
        .unwrap();
        assert_eq!(c.get_hosts(), &[Host::Tcp("h".into())]);
        assert_eq!(c.get_ports(), &[1]);
        assert_eq!(c.get_user(), Some("a"));
        assert_eq!(c.get_password(), Some(&b"b"[..]));
    }

    #[test]
    fn no_host_anywhere_means_the_default_socket() {
        let c = with_env("dbname=x", &[]).unwrap();
        assert_eq!(
            c.get_hosts(),
            &[Host::Unix(std::path::PathBuf::from(DEFAULT_SOCKET_DIR))]
        );
        assert!(with_env("dbname=x", &[("PGPORT", "many")]).is_err());
    }
}
