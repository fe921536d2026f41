//! Health checks of vassals (`--vassal-health`, `health = ...` in a
//! vassal's `[imperium]` section): what is probed, how often, and how many
//! failures in a row restart the vassal. The runtime probes each running
//! process of a vassal that has a check (one task per such process); the
//! reconciler counts the results and decides (see
//! [`crate::reconciler::Reconciler::health_result`]).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most bytes of an HTTP answer read to find its status line.
const HTTP_HEAD_MAX: usize = 1024;

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `http://HOST:PORT/PATH`: a 2xx or 3xx answer is healthy.
    Http {
        /// `HOST:PORT` (the `Host` header too).
        authority: String,
        /// The path and query, starting with `/`.
        path: String,
    },
    /// `tcp://HOST:PORT`: a connection is healthy.
    Tcp(String),
    /// `unix:PATH`: a connection is healthy. A relative path resolves
    /// against the vassal's working directory.
    Unix(PathBuf),
    /// `exec:COMMAND`: run by `/bin/sh -c` in the vassal's working
    /// directory; exit code 0 is healthy.
    Exec(String),
}

impl Probe {
    /// Parses `http://...`, `tcp://...`, `unix:...` or `exec:...`.
    pub fn parse(s: &str) -> Result<Probe, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            check_authority(authority).map_err(|e| format!("{s:?}: {e}"))?;
            if path.chars().any(|c| c.is_control() || c == ' ') {
                return Err(format!("{s:?}: the path has spaces or control characters"));
            }
            return Ok(Probe::Http {
                authority: authority.to_string(),
                path: path.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            check_authority(rest).map_err(|e| format!("{s:?}: {e}"))?;
            return Ok(Probe::Tcp(rest.to_string()));
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            if rest.is_empty() {
                return Err(format!("{s:?}: no socket path"));
            }
            return Ok(Probe::Unix(PathBuf::from(rest)));
        }
        if let Some(rest) = s.strip_prefix("exec:") {
            if rest.trim().is_empty() {
                return Err(format!("{s:?}: no command"));
            }
            return Ok(Probe::Exec(rest.to_string()));
        }
        if s.starts_with("https://") {
            return Err(format!(
                "{s:?}: https is not probed (probe the plain port, or use exec:curl ...)"
            ));
        }
        Err(format!(
            "{s:?} is not a health check (http://HOST:PORT/PATH, tcp://HOST:PORT, unix:PATH or exec:COMMAND)"
        ))
    }

    /// Probes once, within `timeout`: `Ok` when healthy, the reason
    /// otherwise. `workdir` is the vassal's working directory, `name` its
    /// name (`IMPERIUM_VASSAL` in an exec check's environment).
    pub async fn run(
        &self,
        timeout: Duration,
        workdir: Option<&std::path::Path>,
        name: &str,
    ) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.run_inner(workdir, name)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}", show_duration(timeout))),
        }
    }

    async fn run_inner(&self, workdir: Option<&std::path::Path>, name: &str) -> Result<(), String> {
        match self {
            Probe::Tcp(a) => tokio::net::TcpStream::connect(a.as_str())
                .await
                .map(drop)
                .map_err(|e| format!("cannot connect to {a}: {e}")),
            Probe::Unix(p) => {
                let full = match workdir {
                    Some(d) if p.is_relative() => d.join(p),
                    _ => p.clone(),
                };
                tokio::net::UnixStream::connect(&full)
                    .await
                    .map(drop)
                    .map_err(|e| format!("cannot connect to {}: {e}", full.display()))
            }
            Probe::Http { authority, path } => http_get(authority, path).await,
            Probe::Exec(cmd) => {
                let mut c = tokio::process::Command::new("/bin/sh");
                c.arg("-c")
                    .arg(cmd)
                    .env("IMPERIUM_VASSAL", name)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    // a check past its timeout is dropped: kill it
                    .kill_on_drop(true);
                if let Some(d) = workdir {
                    c.current_dir(d);
                }
                let out = c
                    .output()
                    .await
                    .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
                if out.status.success() {
                    return Ok(());
                }
                let err = String::from_utf8_lossy(&out.stderr);
                let last = err.lines().rev().find(|l| !l.trim().is_empty());
                Err(match last {
                    Some(l) => format!("{cmd:?} ended with {}: {}", out.status, clip(l)),
                    None => format!("{cmd:?} ended with {}", out.status),
                })
            }
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Http { authority, path } => write!(f, "http://{authority}{path}"),
            Probe::Tcp(a) => write!(f, "tcp://{a}"),
            Probe::Unix(p) => write!(f, "unix:{}", p.display()),
            Probe::Exec(c) => write!(f, "exec:{c}"),
        }
    }
}

/// At most 200 characters of a line from outside.
fn clip(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn check_authority(a: &str) -> Result<(), String> {
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err("no :PORT".into());
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port")),
    }
}

/// One `GET` over HTTP/1.0; 2xx and 3xx are healthy.
async fn http_get(authority: &str, path: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: imperium-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request to {authority}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < HTTP_HEAD_MAX {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the answer from {authority}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    };
    match status {
        Some(c) if (200..400).contains(&c) => Ok(()),
        Some(_) => Err(format!("http://{authority}{path} answered {}", clip(&line))),
        None if head.is_empty() => Err(format!(
            "http://{authority}{path} closed the connection without an answer"
        )),
        None => Err(format!(
            "http://{authority}{path} answered {:?}, not HTTP",
            clip(&line)
        )),
    }
}

/// A duration as the options take it: `500ms`, `5s`, `2m`, or a number of
/// seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (500ms, 5s, 2m)"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("{s:?}: the unit is ms, s or m")),
    };
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0 to 24 hours)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration as shown in logs (`1.5 s`, `200 ms`).
pub fn show_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// The settings of a health check, each of which may be unset (an
/// `[imperium]` section sets only some; the emperor-wide options fill in
/// the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSettings {
    /// The check, as written (`{name}` and `{stem}` not substituted yet);
    /// `Some("off")` turns an emperor-wide check off for this vassal.
    pub check: Option<String>,
    /// Time between two probes.
    pub interval: Option<Duration>,
    /// How long one probe may take.
    pub timeout: Option<Duration>,
    /// Failures in a row that restart the vassal.
    pub failures: Option<u32>,
    /// After a start or a reload, failures are not counted for this long.
    pub grace: Option<Duration>,
}

/// The default time between two probes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The default time a probe may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default number of failures in a row that restart a vassal.
pub const DEFAULT_FAILURES: u32 = 3;
/// The default grace period after a start or a reload.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Until a process has passed its check once, it is probed at least this
/// often (so readiness is seen soon after the app answers).
pub const FIRST_PASS_INTERVAL: Duration = Duration::from_secs(1);

impl HealthSettings {
    /// These settings, each unset one taken from `defaults`.
    pub fn over(&self, defaults: &HealthSettings) -> HealthSettings {
        HealthSettings {
            check: self.check.clone().or_else(|| defaults.check.clone()),
            interval: self.interval.or(defaults.interval),
            timeout: self.timeout.or(defaults.timeout),
            failures: self.failures.or(defaults.failures),
            grace: self.grace.or(defaults.grace),
        }
    }

    /// Sets one `health*` key of an `[imperium]` section (`health`,
    /// `health-interval`, `health-timeout`, `health-failures`,
    /// `health-grace`); `Ok(false)` for a key that is not one of them.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "health" => {
                if value != "off" {
                    // checked as it will be for a vassal called 1.ini
                    Probe::parse(&substitute(value, "1.ini"))?;
                }
                self.check = Some(value.to_string());
            }
            "health-interval" => {
                let d = parse_duration(value)?;
                if d < Duration::from_millis(100) {
                    return Err("at least 100ms".into());
                }
                self.interval = Some(d);
            }
            "health-timeout" => {
                let d = parse_duration(value)?;
                if d < Duration::from_millis(10) {
                    return Err("at least 10ms".into());
                }
                self.timeout = Some(d);
            }
            "health-failures" => match value.parse::<u32>() {
                Ok(n) if n >= 1 => self.failures = Some(n),
                _ => return Err("a number of failures of at least 1".into()),
            },
            "health-grace" => self.grace = Some(parse_duration(value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The check of vassal `name`, if it has one: `{name}` and `{stem}`
    /// (the name without its extension) substituted.
    pub fn resolve(&self, name: &str) -> Result<Option<HealthCheck>, String> {
        let Some(check) = self.check.as_deref().filter(|c| *c != "off") else {
            return Ok(None);
        };
        Ok(Some(HealthCheck {
            probe: Probe::parse(&substitute(check, name))?,
            interval: self.interval.unwrap_or(DEFAULT_INTERVAL),
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            failures: self.failures.unwrap_or(DEFAULT_FAILURES),
            grace: self.grace.unwrap_or(DEFAULT_GRACE),
        }))
    }
}

/// `check` for vassal `name`: `{name}` is the name, `{stem}` the name
/// without its extension.
fn substitute(check: &str, name: &str) -> String {
    let stem = match name.rsplit_once('.') {
        Some((s, _)) if !s.is_empty() => s,
        _ => name,
    };
    check.replace("{name}", name).replace("{stem}", stem)
}

/// One vassal's health check, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What is probed.
    pub probe: Probe,
    /// Time between two probes.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Failures in a row that restart the vassal.
    pub failures: u32,
    /// After a start or a reload, failures are not counted for this long.
    pub grace: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_and_show_as_written() {
        for s in [
            "http://127.0.0.1:8080/health?x=1",
            "tcp://localhost:9000",
            "unix:run/app.sock",
            "exec:test -e /tmp/x",
        ] {
            assert_eq!(Probe::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            Probe::parse("http://127.0.0.1:80").unwrap(),
            Probe::Http {
                authority: "127.0.0.1:80".into(),
                path: "/".into()
            }
        );
        for bad in [
            "",
            "ftp://x:1",
            "http://nohost",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "tcp://h:x",
            "unix:",
            "exec:  ",
            "https://h:443/",
            "http://h:1/a b",
        ] {
            assert!(Probe::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "x", "5h", "-1", "1e9", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_layer_and_substitute() {
        let mut wide = HealthSettings::default();
        // a vassal called 8001.ini is probed on port 8001
        wide.set("health", "http://127.0.0.1:{stem}/{name}")
            .unwrap();
        let c = wide.resolve("8001.ini").unwrap().unwrap();
        assert_eq!(c.probe.to_string(), "http://127.0.0.1:8001/8001.ini");
        // a name that makes no port is an error for that vassal only
        assert!(wide.resolve("app.ini").is_err());
        assert!(wide.set("health", "http://127.0.0.1:{nope}/").is_err());
        wide.set("health", "exec:check {stem} {name}").unwrap();
        wide.set("health-failures", "5").unwrap();
        let mut own = HealthSettings::default();
        own.set("health-interval", "250ms").unwrap();
        assert!(!own.set("memory-max", "1").unwrap());
        let c = own.over(&wide).resolve("app.ini").unwrap().unwrap();
        assert_eq!(c.probe, Probe::Exec("check app app.ini".into()));
        assert_eq!(c.failures, 5);
        assert_eq!(c.interval, Duration::from_millis(250));
        assert_eq!(c.grace, DEFAULT_GRACE);
        own.set("health", "off").unwrap();
        assert_eq!(own.over(&wide).resolve("app.ini").unwrap(), None);
        assert!(own.set("health-failures", "0").is_err());
        assert!(own.set("health-interval", "1ms").is_err());
    }

    #[tokio::test]
    async fn http_tcp_and_exec_probes_judge_real_peers() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let answers = [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.0 503 Busy\r\n\r\n",
            "",
        ];
        let server = tokio::spawn(async move {
            for a in answers {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = [0u8; 512];
                let n = s.read(&mut req).await.unwrap();
                assert!(String::from_utf8_lossy(&req[..n]).starts_with("GET /h HTTP/1.0\r\n"));
                s.write_all(a.as_bytes()).await.unwrap();
            }
        });
        let t = Duration::from_secs(5);
        let http = Probe::parse(&format!("http://{addr}/h")).unwrap();
        assert_eq!(http.run(t, None, "v").await, Ok(()));
        let e = http.run(t, None, "v").await.unwrap_err();
        assert!(e.contains("503 Busy"), "{e}");
        let e = http.run(t, None, "v").await.unwrap_err();
        assert!(e.contains("without an answer"), "{e}");
        server.await.unwrap();
        // nothing listens there any more
        let e = Probe::parse(&format!("tcp://{addr}"))
            .unwrap()
            .run(t, None, "v")
            .await
            .unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
        let ok = Probe::parse("exec:test \"$IMPERIUM_VASSAL\" = v").unwrap();
        assert_eq!(ok.run(t, None, "v").await, Ok(()));
        let e = Probe::parse("exec:echo broken >&2; exit 3")
            .unwrap()
            .run(t, None, "v")
            .await
            .unwrap_err();
        assert!(e.contains("broken") && e.contains('3'), "{e}");
        let e = Probe::parse("exec:sleep 5")
            .unwrap()
            .run(Duration::from_millis(100), None, "v")
            .await
            .unwrap_err();
        assert_eq!(e, "no answer within 100 ms");
    }
}
