//! The stats model and the stats server (`--emperor-stats`).
//!
//! A [`Snapshot`] is an owned copy of what an observer may see of the
//! vassal table, taken inside the emperor's loop through
//! [`Command::Inspect`] (microseconds), then serialised and written by the
//! observer's own task: a slow or stuck client never stalls the emperor.
//!
//! [`Snapshot::to_uwsgi_json`] renders uWSGI's emperor stats document
//! (uWSGI 2.0's `emperor_send_stats` in core/emperor.c; docs/operations.md lists the keys): the same keys in the same order as uWSGI 2.0, always
//! valid JSON, followed by imperium's extra keys. Secrets (passwords in
//! URLs and conninfo strings) are redacted; inline config text is never
//! shown.

//!
//! `snapshot.rs` is the model, `uwsgi.rs` uWSGI's JSON; the sockets are
//! [`crate::listener`]'s.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::command::Command;

mod snapshot;
pub mod usage;
mod uwsgi;

pub use crate::listener::{BindError, Conn, Listener, MAX_CLIENTS};
pub use snapshot::{redact, BlacklistSnap, LastExit, MonitorSnap, Snapshot, VassalSnap};
pub use usage::Usage;
// ----- the server ---------------------------------------------------------------

/// Settings of the stats server.
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// `--emperor-stats`: TCP when it contains a colon, else a UNIX path.
    pub addr: String,
    /// `--stats-http`: read the request, answer with HTTP headers.
    pub http: bool,
    /// `--stats-minified`.
    pub minified: bool,
    /// Time allowed to read the request and write the answer
    /// (`--socket-timeout`, 4 s in uWSGI).
    pub timeout: Duration,
    /// Mode of a UNIX socket file (`--chmod-socket`); `None` keeps the umask.
    pub mode: Option<u32>,
    /// `--emperor-tyrant` (shown as `emperor_tyrant`).
    pub tyrant: bool,
}

/// Serves the stats document: one snapshot per connection, written by the
/// connection's own task within `opts.timeout`.
pub async fn serve(listener: Listener, opts: StatsOptions, commands: mpsc::Sender<Command>) {
    let timeout = opts.timeout;
    let opts = Arc::new(opts);
    crate::listener::accept_loop(
        listener,
        timeout,
        "stats server",
        |e| tracing::warn!(error = %e, "stats server: accept failed"),
        move |conn, _| {
            let opts = opts.clone();
            let commands = commands.clone();
            async move { answer(conn, &opts, &commands).await }
        },
        |r| match r {
            Ok(Err(e)) => tracing::debug!(error = %e, "stats client"),
            Err(_) => tracing::debug!("stats client too slow; dropped"),
            Ok(Ok(())) => {}
        },
    )
    .await
}

async fn answer(
    mut conn: Box<dyn Conn>,
    opts: &StatsOptions,
    commands: &mpsc::Sender<Command>,
) -> std::io::Result<()> {
    if opts.http {
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).await?;
    }
    let Some(mut snap) = Snapshot::request(commands).await else {
        return Ok(()); // the emperor is gone
    };
    snap.tyrant = opts.tyrant;
    let body = snap.to_uwsgi_json(opts.minified);
    if opts.http {
        conn.write_all(b"HTTP/1.0 200 OK\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: application/json\r\n\r\n").await?;
    }
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::Reconciler;
    use std::time::Instant;

    #[test]
    fn redacts_url_and_conninfo_passwords() {
        assert_eq!(redact("pg://user:s3cret@db/x"), "pg://user:***@db/x");
        assert_eq!(
            redact("pg://host=db user=u password=s3cret dbname=v;select 1"),
            "pg://host=db user=u password=*** dbname=v;select 1"
        );
        assert_eq!(
            redact("password='a b' x=1 amqp://g:h@q:5672 mongodb://n@h"),
            "password=*** x=1 amqp://g:***@q:5672 mongodb://n@h"
        );
        assert_eq!(redact("/etc/uwsgi/vassals"), "/etc/uwsgi/vassals");
    }

    #[test]
    fn json_keeps_uwsgi_key_order_and_escapes() {
        use crate::name::{Extensions, NamePolicy, VassalName};
        use crate::reconciler::ReconcilerConfig;
        use crate::spec::{Change, ChangeKey, VassalSpec};
        let mut rec = Reconciler::new(ReconcilerConfig::default(), vec!["pg://u:pw@h".into()]);
        let n =
            VassalName::parse("we\"ird.ini", &Extensions::default(), NamePolicy::Plain).unwrap();
        let acts = rec.monitor_change(
            0,
            Change::Snapshot(vec![VassalSpec::inline(
                n,
                "[uwsgi]\nsecret=1\n",
                ChangeKey::Stamp(5),
            )]),
            Instant::now(),
        );
        assert_eq!(acts.len(), 1);
        let snap = Snapshot::take(&rec);
        for minified in [false, true] {
            let text = snap.to_uwsgi_json(minified);
            let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(v["vassals"][0]["id"], "we\"ird.ini");
            assert_eq!(v["vassals"][0]["pid"], -1);
            assert_eq!(v["emperor"][0], "pg://u:***@h");
            assert!(!text.contains("pw") && !text.contains("secret"), "{text}");
            let top = [
                "\"version\"",
                "\"pid\"",
                "\"uid\"",
                "\"gid\"",
                "\"cwd\"",
                "\"emperor\"",
                "\"emperor_tyrant\"",
                "\"throttle_level\"",
                "\"vassals\"",
                "\"blacklist\"",
            ];
            let pos: Vec<usize> = top.iter().map(|k| text.find(k).unwrap()).collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
            let keys: Vec<&String> = v["vassals"][0].as_object().unwrap().keys().collect();
            assert!(keys.len() > 20);
            assert_eq!(minified, !text.contains("\n\t"));
        }
        let text = snap.to_uwsgi_json(false);
        let text = &text[text.find("\"vassals\"").unwrap()..];
        let vpos: Vec<usize> = [
            "\"id\"",
            "\"pid\"",
            "\"born\"",
            "\"last_mod\"",
            "\"last_heartbeat\"",
            "\"loyal\"",
            "\"ready\"",
            "\"accepting\"",
            "\"last_loyal\"",
            "\"last_ready\"",
            "\"last_accepting\"",
            "\"first_run\"",
            "\"last_run\"",
            "\"cursed\"",
            "\"zerg\"",
            "\"on_demand\"",
            "\"uid\"",
            "\"gid\"",
            "\"monitor\"",
            "\"respawns\"",
            "\"state\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(vpos.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}
