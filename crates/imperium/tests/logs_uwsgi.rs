//! Per-vassal logs (`--vassal-logs`, docs/logs.md) with real uWSGI
//! vassals: each vassal's output in its own file, rotated, kept across
//! respawns, readable with `imperium ctl logs`; `prefix` and `journal`
//! modes; what tyrant mode and a hostile log directory get.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use testkit::servers::wait_until;
use testkit::uwsgi::{http_get, master_of, vassal_ini, wait_answer, write_app};
use testkit::{ctl, ctl_ok, imperium_bin, uwsgi_emperor_args, Imperium};

const T: Duration = Duration::from_secs(25);

/// An app that fails at import, with a traceback on stderr.
const BAD_APP: &str = "import sys\nprint('about to fail', flush=True)\nraise RuntimeError('boom at import of the bad app')\n";

/// An app that prints one numbered line per request (and `COUNT` lines at
/// import), so a test knows exactly what the vassal wrote.
const TALKY_APP: &str = r#"import os, sys
for i in range(int(os.environ.get('COUNT', '0'))):
    print('import line %05d of pid %d' % (i, os.getpid()), flush=True)
n = 0
def application(environ, start_response):
    global n
    n += 1
    print('request %s of pid %d' % (environ.get('QUERY_STRING'), os.getpid()), file=sys.stderr, flush=True)
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('pid=%d marker=%s' % (os.getpid(), os.environ.get('MARKER', '-'))).encode()]
"#;

struct Setup {
    tmp: tempfile::TempDir,
    vassals: PathBuf,
    logs: PathBuf,
    ctl: PathBuf,
}

fn setup() -> Setup {
    let tmp = testkit::users::readable_tempdir();
    let vassals = tmp.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    std::fs::set_permissions(&vassals, std::fs::Permissions::from_mode(0o755)).unwrap();
    let logs = tmp.path().join("logs");
    let ctl = tmp.path().join("ctl.sock");
    Setup {
        tmp,
        vassals,
        logs,
        ctl,
    }
}

fn emperor(s: &Setup, extra: &[&str]) -> Imperium {
    let mut args = uwsgi_emperor_args(&s.vassals, extra);
    args.push("--emperor-control-socket".into());
    args.push(s.ctl.as_os_str().into());
    Imperium::start(s.tmp.path(), args)
}

fn dir_mode(s: &Setup) -> String {
    format!("dir:{}", s.logs.display())
}

/// A uWSGI vassal serving `app` (one process) with `env` lines.
fn ini(app: &Path, port: u16, env: &[&str]) -> String {
    let mut t = format!(
        "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 1\nhttp-socket = 127.0.0.1:{port}\nwsgi-file = {}\ndie-on-term = true\nneed-app = true\nreload-mercy = 5\nworker-reload-mercy = 5\n",
        app.display()
    );
    for e in env {
        t.push_str(&format!("env = {e}\n"));
    }
    t
}

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// Lines of the emperor's log that are not a quote of a vassal's last
/// output in a death event (those start with `    | `).
fn own_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| !l.starts_with("    | ")).collect()
}

#[test]
fn a_traceback_at_import_is_in_the_vassals_own_file_and_ctl_logs() {
    let s = setup();
    let bad = s.tmp.path().join("bad.py");
    std::fs::write(&bad, BAD_APP).unwrap();
    let app = write_app(s.tmp.path());
    let (good_ini, good_port) = vassal_ini(&app, "good");
    std::fs::write(s.vassals.join("good.ini"), good_ini).unwrap();
    std::fs::write(
        s.vassals.join("bad.ini"),
        ini(&bad, testkit::servers::free_port(), &[]),
    )
    .unwrap();
    let dir = dir_mode(&s);
    let emp = emperor(&s, &["--vassal-logs", &dir]);
    wait_answer(good_port, "good", T)
        .unwrap_or_else(|| panic!("good never answered:\n{}", emp.log()));
    emp.wait_log("vassal bad.ini (pid:", T);
    emp.wait_log("its last output:", T);

    // the traceback is in bad.ini's own file, and only there
    let bad_log = s.logs.join("bad.ini.log");
    assert!(
        wait_until(T, || read(&bad_log)
            .contains("RuntimeError: boom at import of the bad app")),
        "no traceback in {}:\n{}",
        bad_log.display(),
        read(&bad_log)
    );
    assert!(read(&bad_log).contains("Traceback (most recent call last)"));
    let good_log = read(&s.logs.join("good.ini.log"));
    assert!(
        good_log.contains("uWSGI"),
        "good.ini's own start-up lines: {good_log}"
    );
    assert!(
        !good_log.contains("boom"),
        "another vassal's traceback in good.ini.log"
    );
    let meta = std::fs::metadata(&bad_log).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640, "documented mode");

    // the emperor's own output has it only quoted in the death event
    let log = emp.log();
    for l in own_lines(&log) {
        assert!(
            !l.contains("Traceback (most recent call last)") && !l.starts_with("RuntimeError"),
            "a vassal line leaked into the emperor's output: {l}\n{log}"
        );
    }
    let death = log
        .lines()
        .position(|l| l.contains("vassal bad.ini (pid:") && l.contains("its last output:"))
        .expect("a death line with the last output");
    let quoted: Vec<&str> = log
        .lines()
        .skip(death + 1)
        .take_while(|l| l.starts_with("    | "))
        .collect();
    assert!(
        quoted
            .iter()
            .any(|l| l.contains("RuntimeError: boom at import")),
        "the death event quotes the traceback: {quoted:?}"
    );
    assert!(quoted.len() <= 10);

    // imperium ctl logs: the last lines, from the ring
    let out = ctl_ok(&s.ctl, &["logs", "bad.ini", "-n", "50"]);
    assert!(
        out.contains("RuntimeError: boom at import of the bad app"),
        "{out}"
    );
    let two = ctl_ok(&s.ctl, &["logs", "bad.ini", "-n", "2"]);
    assert_eq!(two.lines().count(), 2, "{two}");
    // the stats and ctl show: last_exit with its output, and the counters
    let show = ctl_ok(&s.ctl, &["--json", "show", "bad.ini"]);
    let v: Value = serde_json::from_str(&show).unwrap();
    let out = &v["data"]["last_exit"]["output"];
    assert!(
        out.as_array().is_some_and(|a| a
            .iter()
            .any(|l| l.as_str().unwrap_or("").contains("RuntimeError"))),
        "{v:#}"
    );
    assert!(v["data"]["last_exit"]["code"].as_i64().is_some(), "{v:#}");
    assert!(
        v["data"]["log"]["lines_written"].as_u64().unwrap_or(0) > 5,
        "{v:#}"
    );
    assert_eq!(v["data"]["log"]["lines_dropped"], 0, "{v:#}");
    let human = ctl_ok(&s.ctl, &["show", "bad.ini"]);
    assert!(human.contains("| RuntimeError: boom at import"), "{human}");
    // a name the emperor does not know
    let o = ctl(&s.ctl, &["logs", "nope.ini"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no vassal named nope.ini"));
}

#[test]
fn rotation_keeps_exactly_n_old_files_and_every_line_in_order() {
    let s = setup();
    let app = s.tmp.path().join("talky.py");
    std::fs::write(&app, TALKY_APP).unwrap();
    let port = testkit::servers::free_port();
    std::fs::write(
        s.vassals.join("talk.ini"),
        ini(&app, port, &["COUNT=3000", "MARKER=t"]),
    )
    .unwrap();
    let dir = dir_mode(&s);
    let emp = emperor(
        &s,
        &[
            "--vassal-logs",
            &dir,
            "--vassal-logs-max-size",
            "8K",
            "--vassal-logs-keep",
            "3",
        ],
    );
    wait_answer(port, "t", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    // 3000 lines of ~36 bytes: about 13 rotations at 8 KiB
    let base = s.logs.join("talk.ini.log");
    let last = "import line 02999";
    assert!(
        wait_until(T, || read(&base).contains(last)
            || read(&s.logs.join("talk.ini.log.1")).contains(last)),
        "the last import line never reached the files:\n{}",
        emp.log()
    );
    let mut names: Vec<String> = std::fs::read_dir(&s.logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "talk.ini.log",
            "talk.ini.log.1",
            "talk.ini.log.2",
            "talk.ini.log.3"
        ],
        "exactly 3 old files"
    );
    // no file over the limit, and the kept lines are consecutive, oldest first
    let mut all = String::new();
    for n in [
        "talk.ini.log.3",
        "talk.ini.log.2",
        "talk.ini.log.1",
        "talk.ini.log",
    ] {
        let p = s.logs.join(n);
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= 8192, "{n} is {len} bytes");
        all.push_str(&read(&p));
    }
    let nums: Vec<u32> = all
        .lines()
        .filter_map(|l| l.strip_prefix("import line "))
        .map(|l| l[..5].parse().unwrap())
        .collect();
    assert!(nums.len() > 500, "{} import lines kept", nums.len());
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "kept lines are consecutive"
    );
    assert_eq!(*nums.last().unwrap(), 2999);
}

#[test]
fn a_sigkilled_vassals_successor_appends_to_the_same_file_with_nothing_lost() {
    let s = setup();
    let app = s.tmp.path().join("talky.py");
    std::fs::write(&app, TALKY_APP).unwrap();
    let port = testkit::servers::free_port();
    std::fs::write(s.vassals.join("k.ini"), ini(&app, port, &["MARKER=k"])).unwrap();
    let dir = dir_mode(&s);
    let mut emp = emperor(&s, &["--vassal-logs", &dir]);
    let w = wait_answer(port, "k", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    let master = master_of(w);
    for i in 0..20 {
        http_get(port, &format!("/?q{i}")).expect("answer");
    }
    // killed right after its last answer: what it wrote is still in the pipe
    kill(Pid::from_raw(master as i32), Signal::SIGKILL).unwrap();
    emp.wait_log("died unexpectedly", T);
    let ok = wait_until(T, || {
        http_get(port, "/?after").is_some_and(|b| !b.contains(&format!("pid={w} ")))
    });
    assert!(ok, "the successor never answered:\n{}", emp.log());
    let f = s.logs.join("k.ini.log");
    assert!(
        wait_until(T, || read(&f).contains("request after of pid")),
        "{}",
        read(&f)
    );
    let text = read(&f);
    for i in 0..20 {
        assert!(
            text.contains(&format!("request q{i} of pid {w}")),
            "request q{i} of the killed instance is missing:\n{text}"
        );
    }
    // one file, both instances, in order
    let first = text.find(&format!("of pid {w}")).unwrap();
    let later = text.find("request after of pid").unwrap();
    assert!(first < later);
    assert!(text.matches("*** Starting uWSGI").count() >= 2, "{text}");
    assert_eq!(std::fs::read_dir(&s.logs).unwrap().count(), 1);
    // at shutdown the vassal's last words reach the file before the
    // emperor exits
    assert!(emp.stop().success());
    let text = read(&f);
    assert!(text.contains("goodbye to uWSGI"), "{text}");
}

#[test]
fn prefix_mode_tags_every_line_and_ctl_logs_follows() {
    let s = setup();
    let app = s.tmp.path().join("talky.py");
    std::fs::write(&app, TALKY_APP).unwrap();
    let port = testkit::servers::free_port();
    std::fs::write(
        s.vassals.join("p.ini"),
        ini(&app, port, &["MARKER=p", "COUNT=3"]),
    )
    .unwrap();
    let emp = emperor(&s, &["--vassal-logs", "prefix"]);
    wait_answer(port, "p", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    emp.wait_log("[p.ini] import line 00002", T);

    // follow: a new line shows up in a running `ctl logs -f`
    let mut f = Command::new(imperium_bin())
        .args(["ctl", "--socket"])
        .arg(&s.ctl)
        .args(["logs", "p.ini", "-n", "1", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut out = BufReader::new(f.stdout.take().unwrap());
    let s2 = seen.clone();
    std::thread::spawn(move || {
        let mut l = String::new();
        while out.read_line(&mut l).unwrap_or(0) > 0 {
            s2.lock().unwrap().push_str(&l);
            l.clear();
        }
    });
    assert!(
        wait_until(T, || !seen.lock().unwrap().is_empty()),
        "no first line"
    );
    http_get(port, "/?followed").expect("answer");
    let ok = wait_until(T, || {
        seen.lock().unwrap().contains("request followed of pid")
    });
    let _ = f.kill();
    let _ = f.wait();
    assert!(
        ok,
        "ctl logs -f never showed the new line: {}",
        seen.lock().unwrap()
    );
    emp.wait_log("[p.ini] request followed of pid", T);

    // every line uWSGI wrote is tagged: none appears bare
    let log = emp.log();
    let tagged: Vec<&str> = log.lines().filter(|l| l.contains("[p.ini] ")).collect();
    assert!(
        tagged.iter().any(|l| l.contains("*** Starting uWSGI")),
        "{log}"
    );
    for l in own_lines(&log) {
        if l.contains("Starting uWSGI")
            || l.contains("import line ")
            || l.contains("request followed")
        {
            assert!(l.contains("[p.ini] "), "an untagged vassal line: {l}");
        }
    }
}

#[test]
fn prefix_mode_with_json_logs_puts_the_vassal_in_a_field() {
    let s = setup();
    let app = s.tmp.path().join("talky.py");
    std::fs::write(&app, TALKY_APP).unwrap();
    let port = testkit::servers::free_port();
    std::fs::write(
        s.vassals.join("j.ini"),
        ini(&app, port, &["MARKER=j", "COUNT=2"]),
    )
    .unwrap();
    let emp = emperor(&s, &["--vassal-logs", "prefix", "--log-format", "json"]);
    wait_answer(port, "j", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    emp.wait_log("import line 00001", T);
    let log = emp.log();
    let line = log
        .lines()
        .find(|l| l.contains("import line 00001"))
        .unwrap();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["fields"]["vassal"], "j.ini", "{v:#}");
    let msg = v["fields"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("import line 00001 of pid"),
        "no [name] prefix in JSON: {msg}"
    );
}

/// Each stream connection: its header lines and the rest of its text.
type Streams = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// A stand-in for journald's stream socket: records each connection's
/// header and lines.
struct Journal {
    streams: Streams,
}

impl Journal {
    fn start(path: &Path) -> Journal {
        let l = UnixListener::bind(path).unwrap();
        let streams: Streams = Arc::default();
        let st = streams.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let st = st.clone();
                std::thread::spawn(move || {
                    let idx = {
                        let mut g = st.lock().unwrap();
                        g.push((Vec::new(), String::new()));
                        g.len() - 1
                    };
                    let mut buf = [0u8; 8192];
                    let mut pending = Vec::new();
                    loop {
                        let n = match c.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        let mut g = st.lock().unwrap();
                        let (hdr, body) = &mut g[idx];
                        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=i).collect();
                            let line = String::from_utf8_lossy(&line[..i]).into_owned();
                            // the seven header lines come first
                            if hdr.len() < 7 {
                                hdr.push(line);
                            } else {
                                body.push_str(&line);
                                body.push('\n');
                            }
                        }
                    }
                });
            }
        });
        Journal { streams }
    }
}

#[test]
fn journal_mode_speaks_journalds_stream_protocol() {
    let s = setup();
    let sock = s.tmp.path().join("journal.sock");
    // a missing socket is a clear start-up error
    let missing = format!("journal:{}", sock.display());
    let o = Command::new(imperium_bin())
        .args(["--emperor"])
        .arg(&s.vassals)
        .args(["--vassal-logs", &missing])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot connect to journald's stream socket"),
        "{err}"
    );

    let journal = Journal::start(&sock);
    let app = s.tmp.path().join("talky.py");
    std::fs::write(&app, TALKY_APP).unwrap();
    let port = testkit::servers::free_port();
    std::fs::write(
        s.vassals.join("jr.ini"),
        ini(&app, port, &["MARKER=jr", "COUNT=2"]),
    )
    .unwrap();
    let emp = emperor(&s, &["--vassal-logs", &missing]);
    wait_answer(port, "jr", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    let ok = wait_until(T, || {
        journal.streams.lock().unwrap().iter().any(|(h, b)| {
            h.first().is_some_and(|id| id == "jr.ini") && b.contains("import line 00001")
        })
    });
    assert!(
        ok,
        "no stream with the vassal's lines: {:?}",
        journal.streams.lock().unwrap()
    );
    let g = journal.streams.lock().unwrap();
    let (hdr, body) = g
        .iter()
        .find(|(h, _)| h.first().is_some_and(|id| id == "jr.ini"))
        .unwrap();
    assert_eq!(
        hdr,
        &["jr.ini", "", "6", "1", "0", "0", "0"],
        "identifier, unit, priority, level prefix, syslog, kmsg, console"
    );
    assert!(body.contains("*** Starting uWSGI"), "{body}");
    drop(g);
    // imperium is not in the data path
    assert!(!emp.log().contains("import line 00001"), "{}", emp.log());
    let o = ctl(&s.ctl, &["logs", "jr.ini"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("journalctl -t"));
}

#[test]
fn inherit_mode_captures_nothing_and_says_so() {
    let s = setup();
    let app = write_app(s.tmp.path());
    let (i, port) = vassal_ini(&app, "inh");
    std::fs::write(s.vassals.join("inh.ini"), i).unwrap();
    let emp = emperor(&s, &[]);
    wait_answer(port, "inh", T).unwrap_or_else(|| panic!("never answered:\n{}", emp.log()));
    // uWSGI's own lines reach the emperor's output untouched
    emp.wait_log("*** Starting uWSGI", T);
    assert!(!emp.log().contains("[inh.ini] "));
    let o = ctl(&s.ctl, &["logs", "inh.ini"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nothing is captured") && err.contains("--vassal-logs is inherit"),
        "{err}"
    );
}

#[test]
fn tyrant_files_belong_to_the_vassal_and_planted_links_are_refused() {
    let user = testkit::users::test_user("imperium-t1");
    let s = setup();
    let app = s.tmp.path().join("talky.py");
    std::fs::write(&app, TALKY_APP).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (p1, p2) = (testkit::servers::free_port(), testkit::servers::free_port());
    testkit::users::write_owned(
        &s.vassals.join("own.ini"),
        &ini(&app, p1, &["MARKER=own", "COUNT=1"]),
        user,
    );
    testkit::users::write_owned(
        &s.vassals.join("evil.ini"),
        &ini(&app, p2, &["MARKER=evil", "COUNT=1"]),
        user,
    );
    // a symlink planted where evil.ini's log would go
    std::fs::create_dir(&s.logs).unwrap();
    let target = s.tmp.path().join("precious");
    std::fs::write(&target, "do not touch\n").unwrap();
    std::os::unix::fs::symlink(&target, s.logs.join("evil.ini.log")).unwrap();
    let dir = dir_mode(&s);
    let emp = emperor(&s, &["--vassal-logs", &dir, "--emperor-tyrant"]);
    wait_answer(p1, "own", T).unwrap_or_else(|| panic!("own never answered:\n{}", emp.log()));
    wait_answer(p2, "evil", T).unwrap_or_else(|| panic!("evil never answered:\n{}", emp.log()));
    let f = s.logs.join("own.ini.log");
    assert!(
        wait_until(T, || read(&f).contains("import line 00000")),
        "{}",
        emp.log()
    );
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!((m.uid(), m.gid()), user, "owned by the vassal's user");
    assert_eq!(m.mode() & 0o777, 0o640);
    emp.wait_log("evil.ini.log is a symbolic link; not following it", T);
    assert_eq!(read(&target), "do not touch\n");
    // the refused vassal runs on, its lines counted as dropped
    let show = ctl_ok(&s.ctl, &["--json", "show", "evil.ini"]);
    let v: Value = serde_json::from_str(&show).unwrap();
    assert!(
        v["data"]["log"]["lines_dropped"].as_u64().unwrap_or(0) > 0,
        "{v:#}"
    );
    assert_eq!(v["data"]["state"], "running", "{v:#}");
}
