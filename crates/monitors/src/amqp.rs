//! `amqp://[user:password@]host[:port][/vhost]`: vassals announced on the
//! `uwsgi.emperor` fanout exchange of an AMQP 0-9-1 broker (docs/monitors/amqp.md).
//!
//! The monitor declares the fanout exchange `uwsgi.emperor`, binds a queue of
//! its own to it and consumes with acks. Every emperor bound to the exchange
//! gets its own copy of every message, so one publish reaches a whole fleet
//! of hosts. The queue is named after the emperor process (see
//! [`queue_name`]), so the new image of a hot upgrade consumes the same
//! queue and gets what was published meanwhile; the broker deletes it 60 s
//! after its last consumer went ([`QUEUE_EXPIRES`]), and the emperor deletes
//! it at shutdown.
//!
//! * Empty routing key: the body is a config file path (absolute, or relative
//!   to the emperor's working directory) or an `http://` / `https://` URL.
//!   An existing file spawns or reloads the vassal named by the path; a path
//!   that no longer exists stops it. A URL spawns or reloads a vassal that
//!   fetches its config from that URL.
//! * Non-empty routing key: the key is the vassal name and the body the
//!   config text (sent over the config pipe); an empty body stops it.
//!
//! Every message is acked. A bad one (invalid name, bad path, non-UTF-8
//! config) is logged with the reason and changes nothing. A broker that goes
//! away leaves the vassals running: the monitor reports
//! [`emperor::MonitorHealth::Degraded`] and reconnects with capped backoff.
//!
//! See docs/monitors/amqp.md for the user-facing description.

use std::str::FromStr;
use std::time::Duration;

use emperor::protocol::check_config;
use emperor::{
    Change, ChangeKey, ConfigSource, Monitor, MonitorContext, MonitorError, MonitorOptions,
    NamePolicy, VassalName, VassalSpec,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::bus::{describe_change, preview, resolve_config_path, StampClock};
use crate::session::{self, mask_userinfo, End, Link, Source, Userinfo};

/// The exchange uWSGI's emperors and publishers use.
pub const EXCHANGE: &str = "uwsgi.emperor";

/// Heartbeat asked of the broker unless the URL sets `?heartbeat=`.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// TCP connect timeout unless the URL sets `?connection_timeout=` (ms).
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// The whole handshake (connect, declare, bind, consume) must end within this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Unacked messages the broker may push at once.
const PREFETCH: u16 = 32;

/// The amqp:// monitor.
pub struct AmqpMonitor {
    uri: AMQPUri,
    shown: String,
}

impl AmqpMonitor {
    /// Parses `url` (the whole `--emperor` value). Nothing is connected yet:
    /// a broker that is down at start-up is a health state, not an error.
    pub fn new(url: &str, _opts: &MonitorOptions) -> Result<Self, MonitorError> {
        let bad = |reason: String| MonitorError::BadUrl {
            url: redact(url),
            reason,
        };
        let rest = url
            .strip_prefix("amqp://")
            .ok_or_else(|| bad("expected amqp://[user:password@]host[:port][/vhost]".into()))?;
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') {
            return Err(bad(
                "no broker host (expected amqp://[user:password@]host[:port][/vhost])".into(),
            ));
        }
        let mut uri = AMQPUri::from_str(url).map_err(bad)?;
        // uWSGI always used vhost "/": keep it as the default for `amqp://host/`
        // too (the AMQP URI spec would make that the empty vhost, which nobody uses).
        if uri.vhost.is_empty() {
            uri.vhost = "/".to_string();
        }
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
        }
        if uri.query.connection_timeout.is_none() {
            uri.query.connection_timeout = Some(DEFAULT_CONNECT_TIMEOUT_MS);
        }
        let a = &uri.authority;
        let host = if a.host.contains(':') {
            format!("[{}]", a.host)
        } else {
            a.host.clone()
        };
        let vhost = if uri.vhost == "/" {
            String::new()
        } else {
            uri.vhost.replace('%', "%25").replace('/', "%2F")
        };
        let shown = format!(
            "amqp://{}@{}:{}/{}",
            a.userinfo.username, host, a.port, vhost
        );
        Ok(AmqpMonitor { uri, shown })
    }

    /// The virtual host this monitor connects to.
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }
}

/// `url` with any password replaced by `***`, for error messages.
fn redact(url: &str) -> String {
    mask_userinfo(url, Userinfo::KeepUser)
}

/// Builds an amqp:// monitor.
pub(crate) fn build(t: &crate::Target<'_>) -> Result<Box<dyn Monitor>, MonitorError> {
    Ok(Box::new(AmqpMonitor::new(t.url, t.opts)?))
}

impl Monitor for AmqpMonitor {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn run(self: Box<Self>, ctx: MonitorContext) -> BoxFuture<'static, ()> {
        let shown = self.shown.clone();
        let src = AmqpSource {
            mon: *self,
            queue: queue_name(ctx.id),
            clock: StampClock::default(),
        };
        Box::pin(session::run(src, ctx, shown, session::RETRY_AMQP))
    }
}

/// The broker deletes an emperor's queue this long after its last consumer
/// went (`x-expires`): longer than a hot upgrade, short after a crash.
pub const QUEUE_EXPIRES: Duration = Duration::from_secs(60);

/// The queue of monitor `id` of this emperor process: the same for the
/// process across a hot upgrade (an exec keeps its pid and its start
/// time, and the new image starts its monitors in the same order), and
/// another for any other process (the boot id tells hosts apart, the pid
/// and start time processes on one host) or any other monitor of this one
/// (a count of the amqp:// monitors this image has started).
pub fn queue_name(id: emperor::MonitorId) -> String {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let boot: String = boot.trim().chars().filter(|c| *c != '-').take(12).collect();
    // field 22 of /proc/self/stat, counted after the command's ')'
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let start = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .unwrap_or("0")
        .to_string();
    format!(
        "imperium.emperor.{boot}.{}.{start}.{id}.{nth}",
        std::process::id()
    )
}

struct AmqpSource {
    mon: AmqpMonitor,
    /// Its queue ([`queue_name`]).
    queue: String,
    /// Change keys that grow across reconnects.
    clock: StampClock,
}

impl Source for AmqpSource {
    async fn session(&mut self, link: &mut Link) -> End {
        match session(&self.mon, &self.queue, link, &mut self.clock).await {
            End::Lost(reason) => End::Lost(format!("amqp broker: {reason}")),
            end => end,
        }
    }
}

/// Connects, declares the exchange and the private queue, and consumes
/// until the connection breaks or the emperor goes away.
#[allow(
    clippy::too_many_lines,
    reason = "one AMQP session: connect, declare, bind, consume"
)]
async fn session(mon: &AmqpMonitor, queue: &str, link: &mut Link, clock: &mut StampClock) -> End {
    let setup = async {
        let conn = Connection::connect_uri(
            mon.uri.clone(),
            ConnectionProperties::default().with_connection_name("imperium emperor".into()),
        )
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        channel
            .exchange_declare(
                EXCHANGE.into(),
                ExchangeKind::Fanout,
                // non-durable, as uWSGI and its publishers declare it; a
                // different flag would make the broker refuse the declare
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare exchange {EXCHANGE}: {e}"))?;
        // not exclusive, so that it outlives this connection for the new
        // image of a hot upgrade; the broker removes it once unused
        let mut args = FieldTable::default();
        args.insert(
            "x-expires".into(),
            lapin::types::AMQPValue::LongUInt(QUEUE_EXPIRES.as_millis() as u32),
        );
        let queue = channel
            .queue_declare(queue.into(), QueueDeclareOptions::default(), args)
            .await
            .map_err(|e| format!("cannot declare the queue {queue}: {e}"))?;
        channel
            .queue_bind(
                queue.name().clone(),
                EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot bind the queue to {EXCHANGE}: {e}"))?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| format!("cannot set prefetch: {e}"))?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot consume: {e}"))?;
        Ok::<_, String>((conn, channel, queue.name().as_str().to_string(), consumer))
    };
    let (conn, channel, queue, mut consumer) =
        match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
            Ok(Ok(parts)) => parts,
            Ok(Err(reason)) => return End::Lost(reason),
            Err(_) => return End::Lost(format!("no answer within {} s", SETUP_TIMEOUT.as_secs())),
        };
    tracing::info!(
        monitor = %mon.shown,
        queue = %queue,
        heartbeat_s = conn.configuration().heartbeat(),
        "[emperor-amqp] connected, consuming exchange {EXCHANGE}"
    );
    if !link.connected().await {
        return close(conn, &channel, &queue).await;
    }
    loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            _ = link.closed() => return close(conn, &channel, &queue).await,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => return End::Lost(format!("connection lost: {e}")),
            None => return End::Lost("the broker cancelled the consumer".into()),
        };
        let key = clock.next();
        let routing_key = delivery.routing_key.as_str();
        match interpret(routing_key, &delivery.data, link.options(), key) {
            Ok(change) => {
                tracing::info!(
                    monitor = %mon.shown,
                    routing_key,
                    "[emperor-amqp] {}",
                    describe_change(&change)
                );
                if !link.send(change).await {
                    return close(conn, &channel, &queue).await;
                }
            }
            Err(reason) => tracing::warn!(
                monitor = %mon.shown,
                routing_key = %preview(routing_key.as_bytes()),
                body = %preview(&delivery.data),
                "[emperor-amqp] message ignored: {reason}"
            ),
        }
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
            return End::Lost(format!("cannot ack: {e}"));
        }
    }
}

/// The emperor goes away: its queue goes with it (a hot upgrade's exec
/// never gets here, so the new image finds the queue).
async fn close(conn: Connection, channel: &lapin::Channel, queue: &str) -> End {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        channel.queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default()),
    )
    .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        conn.close(200, "emperor shutting down".into()),
    )
    .await;
    End::EmperorGone
}

/// Turns one message into a change, or says why it is refused.
///
/// `routing_key` empty: `body` is a config path or an http(s) URL. Otherwise
/// the key is the vassal name and `body` its config text (empty = stop).
/// Public for the fuzz targets ([`crate::fuzzing`]).
pub fn interpret(
    routing_key: &str,
    body: &[u8],
    opts: &MonitorOptions,
    key: ChangeKey,
) -> Result<Change, String> {
    if !routing_key.is_empty() {
        let name = VassalName::parse(routing_key, &opts.extensions, NamePolicy::Plain)
            .map_err(|e| format!("bad routing key: {e}"))?;
        if body.is_empty() {
            return Ok(Change::Remove(name));
        }
        check_config(body).map_err(|e| format!("vassal {name}: {e}"))?;
        let text = std::str::from_utf8(body)
            .map_err(|e| format!("vassal {name}: the config is not valid UTF-8 ({e})"))?;
        return Ok(Change::Upsert(VassalSpec::inline(name, text, key)));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| "the body (a config path or URL) is not valid UTF-8".to_string())?
        .trim();
    if text.is_empty() {
        return Err(
            "empty body and empty routing key: expected a config path or an http(s) URL".into(),
        );
    }
    let name = VassalName::parse(text, &opts.extensions, NamePolicy::Path)
        .map_err(|e| format!("bad config path or URL: {e}"))?;
    if text.starts_with("http://") || text.starts_with("https://") {
        check_url(text)?;
        return Ok(Change::Upsert(spec(
            name,
            ConfigSource::Url(text.to_string()),
            key,
        )));
    }
    if text.contains("://") {
        return Err(format!(
            "{text:?}: only file paths and http:// or https:// URLs can be announced"
        ));
    }
    let path = resolve_config_path(text, &opts.cwd);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Change::Upsert(spec(name, ConfigSource::File(path), key))),
        // as uWSGI: a path that is missing or not a regular file stops the vassal
        Ok(_) => Ok(Change::Remove(name)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(Change::Remove(name))
        }
        // permission denied and the like: not a reason to stop a running vassal
        Err(e) => Err(format!("cannot stat {}: {e}", path.display())),
    }
}

fn spec(name: VassalName, config: ConfigSource, key: ChangeKey) -> VassalSpec {
    VassalSpec {
        name,
        config,
        key,
        owner: None,
        socket: None,
        workdir: None,
        limits: None,
    }
}

/// An http(s) URL a vassal can fetch: a host, no whitespace.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("URL {url:?} has no host"));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(format!("URL {url:?} contains whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn opts(cwd: &std::path::Path) -> MonitorOptions {
        MonitorOptions {
            cwd: cwd.to_path_buf(),
            ..MonitorOptions::default()
        }
    }

    const K: ChangeKey = ChangeKey::Stamp(7);

    #[test]
    fn url_defaults_are_uwsgis() {
        let m = AmqpMonitor::new("amqp://127.0.0.1", &MonitorOptions::default()).unwrap();
        assert_eq!(m.uri.authority.userinfo.username, "guest");
        assert_eq!(m.uri.authority.userinfo.password, "guest");
        assert_eq!(m.uri.authority.port, 5672);
        assert_eq!(m.vhost(), "/");
        assert_eq!(m.uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        assert_eq!(m.describe(), "amqp://guest@127.0.0.1:5672/");
        let m = AmqpMonitor::new("amqp://127.0.0.1:5673/", &MonitorOptions::default()).unwrap();
        assert_eq!(m.vhost(), "/");
        assert_eq!(m.uri.authority.port, 5673);
    }

    #[test]
    fn url_with_credentials_vhost_and_heartbeat() {
        let m = AmqpMonitor::new(
            "amqp://app:s3cr%40t@127.0.0.1:5700/prod%2Feu?heartbeat=3",
            &MonitorOptions::default(),
        )
        .unwrap();
        assert_eq!(m.uri.authority.userinfo.username, "app");
        assert_eq!(m.uri.authority.userinfo.password, "s3cr@t");
        assert_eq!(m.vhost(), "prod/eu");
        assert_eq!(m.uri.query.heartbeat, Some(3));
        let shown = m.describe();
        assert_eq!(shown, "amqp://app@127.0.0.1:5700/prod%2Feu");
        assert!(!shown.contains("s3cr"));
    }

    #[test]
    fn bad_urls_are_start_up_errors_without_the_password() {
        for url in [
            "amqp://",
            "amqp://:5672",
            "amqp://u:hunter2@:99999/x",
            "amqp://u:hunter2@h:notaport/",
        ] {
            let err = AmqpMonitor::new(url, &MonitorOptions::default())
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"))
                .to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn routing_key_messages_are_inline_configs() {
        let o = opts(std::path::Path::new("/"));
        let c = interpret("app.ini", b"[uwsgi]\nmaster = true\n", &o, K).unwrap();
        let Change::Upsert(s) = c else {
            panic!("{c:?}")
        };
        assert_eq!(s.name.as_str(), "app.ini");
        assert_eq!(
            s.config,
            ConfigSource::Inline("[uwsgi]\nmaster = true\n".into())
        );
        assert_eq!(s.key, K);
        assert_eq!(
            interpret("app.ini", b"", &o, K).unwrap(),
            Change::Remove(VassalName::parse("app.ini", &o.extensions, NamePolicy::Plain).unwrap())
        );
    }

    #[test]
    fn bad_routing_keys_and_bodies_are_refused() {
        let o = opts(std::path::Path::new("/"));
        for (key, body) in [
            ("../x.ini", &b"[uwsgi]"[..]),
            ("a/b.ini", b"[uwsgi]"),
            ("app.txt", b"[uwsgi]"),
            ("-x.ini", b"[uwsgi]"),
            ("app.ini", &[0xff, 0xfe][..]),
        ] {
            assert!(interpret(key, body, &o, K).is_err(), "{key} accepted");
        }
        let huge = vec![b'a'; 70_000];
        let err = interpret("app.ini", &huge, &o, K).unwrap_err();
        assert!(err.contains("65535"), "{err}");
    }

    #[test]
    fn path_messages_spawn_existing_files_and_stop_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.ini"), "[uwsgi]\n").unwrap();
        std::fs::create_dir(dir.path().join("d.ini")).unwrap();
        let o = opts(dir.path());
        let abs = dir.path().join("a.ini");
        let c = interpret("", format!("{}\n", abs.display()).as_bytes(), &o, K).unwrap();
        let Change::Upsert(s) = c else {
            panic!("{c:?}")
        };
        assert_eq!(s.name.as_str(), abs.to_str().unwrap());
        assert_eq!(s.config, ConfigSource::File(abs.clone()));
        // relative: resolved against the emperor's cwd, named as given
        let c = interpret("", b"a.ini", &o, K).unwrap();
        let Change::Upsert(s) = c else {
            panic!("{c:?}")
        };
        assert_eq!(s.name.as_str(), "a.ini");
        assert_eq!(s.config, ConfigSource::File(abs));
        // missing, or a directory: stop
        assert!(
            matches!(interpret("", b"gone.ini", &o, K).unwrap(), Change::Remove(n) if n.as_str() == "gone.ini")
        );
        assert!(matches!(
            interpret("", b"d.ini", &o, K).unwrap(),
            Change::Remove(_)
        ));
    }

    #[test]
    fn bad_paths_are_refused() {
        let o = opts(std::path::Path::new("/tmp"));
        for body in [
            &b""[..],
            b"   \n",
            b"/etc/../etc/x.ini",
            b"/etc/passwd",
            b"ftp://host/x.ini",
            b"http:///x.ini",
            b"http://h/a b.ini",
            &[0xff, b'.', b'i', b'n', b'i'][..],
        ] {
            assert!(
                interpret("", body, &o, K).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn url_messages_spawn_url_vassals() {
        let o = opts(std::path::Path::new("/"));
        let c = interpret("", b"https://cfg.example/apps/a.ini", &o, K).unwrap();
        let Change::Upsert(s) = c else {
            panic!("{c:?}")
        };
        assert_eq!(s.name.as_str(), "https://cfg.example/apps/a.ini");
        assert_eq!(
            s.config,
            ConfigSource::Url("https://cfg.example/apps/a.ini".into())
        );
        assert_eq!(s.workdir, None::<PathBuf>);
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(redact("amqp://u:p@h:1/v"), "amqp://u:***@h:1/v");
        assert_eq!(redact("amqp://h:1/v"), "amqp://h:1/v");
    }
}
