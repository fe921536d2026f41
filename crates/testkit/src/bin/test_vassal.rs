//! imperium-test-vassal: a small program that speaks the emperor protocol,
//! for tests and benchmarks that should not depend on uWSGI's start-up time.
//!
//! It is launched like uWSGI (`imperium-test-vassal --ini app.ini` or
//! `--ini emperor://app.ini`) and reads its behaviour from `key = value`
//! lines of the config's `[vassal]` section:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `ready` | 1 | send byte 1 at start |
//! | `accepting` | 1 | send byte 5 at start |
//! | `loyal` | 0 | send byte 17 at start |
//! | `heartbeat` | 0 | send byte 26 every N ms |
//! | `heartbeat-stop-after-ms` | - | stop sending heartbeats after N ms |
//! | `exit-after-ms`, `exit-code` | -, 1 | exit with the code after N ms |
//! | `idle-after-ms` | - | send byte 22 after N ms |
//! | `sos-after-ms` | - | send byte 30 after N ms |
//! | `ignore-stop` | 0 | ignore bytes 0 and 2 (to test the curse tolerance) |
//! | `on-reload` | reexec | `reexec` (keep the pid, like a uWSGI master) or `exit` |
//! | `record` | - | append one line per event to this file |
//! | `marker` | - | a value copied into the `start` record line |
//! | `flood` | - | after start, write to the emperor socket as fast as it can: `random` bytes, or one byte value (`1`) |
//! | `flood-bytes` | 0 | stop flooding after this many bytes (0: until killed) |
//! | `say` | - | write this line to stdout at start (repeatable; `\n` not needed) |
//! | `alloc-mb` | 0 | after start, allocate this many MiB and write to every page (kept until exit; memory-limit tests) |
//! | `spin` | 0 | after start, a thread spins on the CPU until exit (CPU-limit tests) |
//! | `print-flood` | 0 | after start, write numbered lines to stderr as fast as it can (`--vassal-logs` tests and benchmarks) |
//!
//! Record lines: `start pid=P gen=G marker=M config=emperor|file`,
//! `fds 0,1,2,N` (open fds at start), `fd0 TARGET`, `nofile N` (soft
//! open-file limit), `env K=V` (each
//! `UWSGI_*` and `NOTIFY_SOCKET` variable at start), `cwd DIR`,
//! `got byte=B`, `reload`, `stop byte=B`, `lost`, `exit code=C`,
//! `allocated mb=N`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use emperor::protocol::decode_config_header;
use emperor::spawn::take_inherited_fd;

#[allow(
    clippy::struct_excessive_bools,
    reason = "each flag is one behaviour a test asks of the vassal"
)]
struct Behaviour {
    ready: bool,
    accepting: bool,
    loyal: bool,
    heartbeat: Option<u64>,
    heartbeat_stop: Option<u64>,
    exit_after: Option<u64>,
    exit_code: i32,
    idle_after: Option<u64>,
    sos_after: Option<u64>,
    ignore_stop: bool,
    reexec: bool,
    record: Option<String>,
    marker: String,
    flood: Option<String>,
    flood_bytes: u64,
    say: Vec<String>,
    print_flood: bool,
    alloc_mb: u64,
    spin: bool,
}

fn parse(text: &str) -> Behaviour {
    let mut b = Behaviour {
        ready: true,
        accepting: true,
        loyal: false,
        heartbeat: None,
        heartbeat_stop: None,
        exit_after: None,
        exit_code: 1,
        idle_after: None,
        sos_after: None,
        ignore_stop: false,
        reexec: true,
        record: None,
        marker: String::new(),
        flood: None,
        flood_bytes: 0,
        say: Vec::new(),
        print_flood: false,
        alloc_mb: 0,
        spin: false,
    };
    let mut in_vassal = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_vassal = line == "[vassal]";
            continue;
        }
        if !in_vassal {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        let yes = matches!(v, "1" | "true" | "yes" | "on");
        let num = v.parse::<u64>().ok();
        match k {
            "ready" => b.ready = yes,
            "accepting" => b.accepting = yes,
            "loyal" => b.loyal = yes,
            "heartbeat" => b.heartbeat = num,
            "heartbeat-stop-after-ms" => b.heartbeat_stop = num,
            "exit-after-ms" => b.exit_after = num,
            "exit-code" => b.exit_code = v.parse().unwrap_or(1),
            "idle-after-ms" => b.idle_after = num,
            "sos-after-ms" => b.sos_after = num,
            "ignore-stop" => b.ignore_stop = yes,
            "on-reload" => b.reexec = v != "exit",
            "record" => b.record = Some(v.to_string()),
            "marker" => b.marker = v.to_string(),
            "flood" => b.flood = Some(v.to_string()),
            "flood-bytes" => b.flood_bytes = num.unwrap_or(0),
            "say" => b.say.push(v.to_string()),
            "print-flood" => b.print_flood = yes,
            "alloc-mb" => b.alloc_mb = num.unwrap_or(0),
            "spin" => b.spin = yes,
            _ => {}
        }
    }
    b
}

fn record(b: &Behaviour, line: &str) {
    if let Some(path) = &b.record {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The soft open-file limit, from /proc/self/limits.
fn soft_nofile() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Records what the process got from its emperor: fds, fd 0, environment.
fn record_process(b: &Behaviour, env0: &[(String, String)]) {
    let mut fds: Vec<u32> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    // read_dir itself holds one fd open while listing: drop the ones that
    // are no longer open
    fds.retain(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok());
    let list: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
    record(b, &format!("fds {}", list.join(",")));
    if let Ok(t) = std::fs::read_link("/proc/self/fd/0") {
        record(b, &format!("fd0 {}", t.display()));
    }
    if let Some(n) = soft_nofile() {
        record(b, &format!("nofile {n}"));
    }
    if let Ok(d) = std::env::current_dir() {
        record(b, &format!("cwd {}", d.display()));
    }
    let mut vars: Vec<&(String, String)> = env0
        .iter()
        .filter(|(k, _)| k.starts_with("UWSGI_") || k == "NOTIFY_SOCKET")
        .collect();
    vars.sort();
    for (k, v) in vars {
        record(b, &format!("env {k}={v}"));
    }
}

fn die(msg: &str, code: i32) -> ! {
    eprintln!("imperium-test-vassal: {msg}");
    std::process::exit(code)
}

fn read_config_from_pipe(sock: &mut UnixStream) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut hdr = [0u8; 4];
    if sock.read_exact(&mut hdr).is_err() {
        die("cannot read the config header from the emperor", 1);
    }
    let len = decode_config_header(hdr);
    if len == 0 {
        die("invalid config (empty)", 1);
    }
    let mut body = vec![0u8; len];
    if sock.read_exact(&mut body).is_err() {
        die("cannot read the config body from the emperor", 1);
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// How long to wait for the emperor before the next timed behaviour is
/// due (`None`: nothing is timed, wait for bytes only). Never zero, since a
/// zero read timeout is an error.
fn next_due(
    b: &Behaviour,
    start: Instant,
    next_hb: Option<Instant>,
    idle_sent: bool,
    sos_sent: bool,
) -> Option<Duration> {
    let at = |ms: u64| start + Duration::from_millis(ms);
    [
        b.exit_after.map(at),
        b.idle_after.filter(|_| !idle_sent).map(at),
        b.sos_after.filter(|_| !sos_sent).map(at),
        next_hb,
    ]
    .into_iter()
    .flatten()
    .min()
    .map(|t| {
        t.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    })
}

#[allow(
    clippy::too_many_lines,
    reason = "the test vassal's whole life, start to exit, in order"
)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let env0: Vec<(String, String)> = std::env::vars().collect();
    let Some(config_ref) = args.get(2).cloned() else {
        die("usage: imperium-test-vassal --ini CONFIG", 2)
    };
    let gen: u32 = std::env::var("IMPERIUM_TEST_VASSAL_GEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ctrl_var = std::env::var("UWSGI_EMPEROR_FD").ok();
    let cfg_var = std::env::var("UWSGI_EMPEROR_FD_CONFIG").ok();
    let mut ctrl = match take_inherited_fd("UWSGI_EMPEROR_FD") {
        Ok(Some(fd)) => UnixStream::from(fd),
        Ok(None) => die(
            "UWSGI_EMPEROR_FD is not set: this is not a vassal instance",
            1,
        ),
        Err(e) => die(&format!("bad UWSGI_EMPEROR_FD: {e}"), 1),
    };
    let mut cfg_sock = match take_inherited_fd("UWSGI_EMPEROR_FD_CONFIG") {
        Ok(fd) => fd.map(UnixStream::from),
        Err(e) => die(&format!("bad UWSGI_EMPEROR_FD_CONFIG: {e}"), 1),
    };
    let (text, from_pipe) = if config_ref.starts_with("emperor://") {
        match cfg_sock.as_mut() {
            Some(s) => (read_config_from_pipe(s), true),
            None => die(
                "this is not a vassal instance (no UWSGI_EMPEROR_FD_CONFIG)",
                1,
            ),
        }
    } else {
        match std::fs::read_to_string(&config_ref) {
            Ok(t) => (t, false),
            Err(e) => die(&format!("cannot read {config_ref}: {e}"), 1),
        }
    };
    let b = parse(&text);
    record(
        &b,
        &format!(
            "start pid={} gen={gen} marker={} config={}",
            std::process::id(),
            b.marker,
            if from_pipe { "emperor" } else { "file" }
        ),
    );
    if gen == 0 {
        record_process(&b, &env0);
    }
    let send = |ctrl: &mut UnixStream, byte: u8| {
        if ctrl.write_all(&[byte]).is_err() {
            die("lost connection with my emperor", 1);
        }
    };
    if b.ready {
        send(&mut ctrl, 1);
    }
    if b.accepting {
        send(&mut ctrl, 5);
    }
    if b.loyal {
        send(&mut ctrl, 17);
    }
    if let Some(kind) = &b.flood {
        flood(&ctrl, kind, b.flood_bytes);
    }
    {
        let mut out = std::io::stdout().lock();
        for l in &b.say {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
    }
    if b.print_flood {
        print_flood();
    }
    // held until the vassal exits
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..b.alloc_mb {
        // every page written, so it is charged (not only reserved)
        held.push(vec![0x5a; 1 << 20]);
    }
    if b.alloc_mb > 0 {
        record(&b, &format!("allocated mb={}", held.len()));
    }
    if b.spin {
        std::thread::spawn(|| loop {
            std::hint::black_box(0u64);
        });
    }
    let start = Instant::now();
    let mut next_hb = b.heartbeat.map(|ms| start + Duration::from_millis(ms));
    let mut idle_sent = false;
    let mut sos_sent = false;
    loop {
        // sleep in read() until the next timed behaviour is due; with none
        // configured the vassal only wakes up for the emperor's bytes, so a
        // fleet of idle test vassals costs no CPU (benchmarks measure the
        // emperor, not the vassals)
        let hb_on = match b.heartbeat_stop {
            Some(ms) => start.elapsed() < Duration::from_millis(ms),
            None => true,
        };
        let wait = next_due(&b, start, next_hb.filter(|_| hb_on), idle_sent, sos_sent);
        ctrl.set_read_timeout(wait).ok();
        let elapsed = start.elapsed().as_millis() as u64;
        if let Some(ms) = b.exit_after {
            if elapsed >= ms {
                record(&b, &format!("exit code={}", b.exit_code));
                std::process::exit(b.exit_code);
            }
        }
        if let Some(ms) = b.idle_after {
            if !idle_sent && elapsed >= ms {
                idle_sent = true;
                send(&mut ctrl, 22);
            }
        }
        if let Some(ms) = b.sos_after {
            if !sos_sent && elapsed >= ms {
                sos_sent = true;
                send(&mut ctrl, 30);
            }
        }
        if let (Some(at), Some(ms)) = (next_hb, b.heartbeat) {
            let stopped = b.heartbeat_stop.is_some_and(|s| elapsed >= s);
            if !stopped && Instant::now() >= at {
                send(&mut ctrl, 26);
                next_hb = Some(at + Duration::from_millis(ms));
            }
        }
        let mut byte = [0u8; 1];
        match ctrl.read(&mut byte) {
            Ok(0) => {
                record(&b, "lost");
                die("lost connection with my emperor !!!", 1);
            }
            Ok(_) => {
                record(&b, &format!("got byte={}", byte[0]));
                match byte[0] {
                    0 | 2 if !b.ignore_stop => {
                        record(&b, &format!("stop byte={}", byte[0]));
                        std::process::exit(0);
                    }
                    1 => {
                        record(&b, "reload");
                        if !b.reexec {
                            std::process::exit(0);
                        }
                        if cfg_sock.is_some() {
                            // like uWSGI's uwsgi_reload(): ask for the config again
                            send(&mut ctrl, 2);
                        }
                        let exe =
                            std::env::current_exe().unwrap_or_else(|_| args[0].clone().into());
                        let mut cmd = std::process::Command::new(exe);
                        cmd.args(&args[1..])
                            .env("IMPERIUM_TEST_VASSAL_GEN", (gen + 1).to_string());
                        if let Some(v) = &ctrl_var {
                            cmd.env("UWSGI_EMPEROR_FD", v);
                        }
                        if let Some(v) = &cfg_var {
                            cmd.env("UWSGI_EMPEROR_FD_CONFIG", v);
                        }
                        // the fds stay open across exec: they are not close-on-exec
                        let err = cmd.exec();
                        die(&format!("re-exec failed: {err}"), 1);
                    }
                    _ => {}
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => die(&format!("control socket error: {e}"), 1),
        }
    }
}

/// A chatty vassal: numbered lines on stderr (where uWSGI logs) from a
/// thread of its own, as fast as the pipe takes them, until it is killed.
fn print_flood() {
    std::thread::spawn(|| {
        let pid = std::process::id();
        let mut out = std::io::stderr().lock();
        let mut buf = Vec::with_capacity(65536);
        let mut n: u64 = 0;
        loop {
            buf.clear();
            while buf.len() < 60000 {
                let _ = writeln!(
                    buf,
                    "flood pid={pid} line={n} the quick brown fox jumps over the lazy dog"
                );
                n += 1;
            }
            if out.write_all(&buf).is_err() {
                return;
            }
        }
    });
}

/// A hostile vassal: writes to its emperor socket from a thread of its own,
/// as fast as the socket takes it (random bytes, or one value repeated),
/// `limit` bytes or until it is killed.
fn flood(ctrl: &UnixStream, kind: &str, limit: u64) {
    let Ok(mut sock) = ctrl.try_clone() else {
        return;
    };
    let byte: Option<u8> = kind.parse().ok();
    std::thread::spawn(move || {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
        let mut buf = vec![0u8; 65536];
        let mut sent: u64 = 0;
        loop {
            match byte {
                Some(v) => buf.fill(v),
                None => {
                    for x in buf.iter_mut() {
                        // xorshift64
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        *x = state as u8;
                    }
                }
            }
            let n = if limit > 0 {
                (limit - sent).min(buf.len() as u64) as usize
            } else {
                buf.len()
            };
            if n == 0 || sock.write_all(&buf[..n]).is_err() {
                return;
            }
            sent += n as u64;
        }
    });
}
