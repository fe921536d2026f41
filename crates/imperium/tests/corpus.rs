//! A corpus of real emperor configs, run end to end: each entry is a config
//! (or command line) as a distribution package or a public guide ships it,
//! with only its paths (to a temp dir) and ports (free loopback ports)
//! rewritten. Each is started the way that distribution or guide starts
//! uWSGI, with one real uWSGI vassal (python3 plugin, the testkit app on a
//! loopback http-socket), and stopped with the signal its service manager
//! uses. The SAME config then runs against the real `/usr/bin/uwsgi`, and
//! the test asserts the same observable things (the vassal answers, uids,
//! gids and capabilities of the emperor and the vassal, log files,
//! pidfiles, the stop signal stops everything); where uWSGI differs on
//! purpose, the documented difference is asserted and explained.
//!
//! Entries that use uWSGI's config language (`%d`, `%(_)`, `for`) go
//! through the uwsgi-config crate, as imperium reads its config.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use testkit::procs::{alive, ppid, tree, wait_all_dead};
use testkit::servers::{free_port, wait_until};
use testkit::users::{assert_runs_as, proc_caps, readable_tempdir, test_user, write_owned};
use testkit::uwsgi::{master_of, uwsgi_bin, vassal_ini_on, wait_answer, write_app};

/// How long anything below may take (a vassal's Python start-up, a stop).
const T: Duration = Duration::from_secs(15);

/// CAP_SETGID (6) and CAP_SETUID (7), as /proc/PID/status shows them.
const SETGID_SETUID: u64 = 0xc0;

// ----- the corpus -------------------------------------------------------------

/// Debian's stock emperor config, as shipped: /etc/uwsgi-emperor/emperor.ini
/// of the Debian package uwsgi-emperor (2.0.21-5.1, `apt-get download
/// uwsgi-emperor`). Its systemd unit (/lib/systemd/system/
/// uwsgi-emperor.service) runs `/usr/bin/uwsgi --ini
/// /etc/uwsgi-emperor/emperor.ini` with `Group=www-data` and
/// `KillSignal=SIGQUIT`.
const DEBIAN_EMPEROR_INI: &str = "[uwsgi]

# enable master process manager
master = true

# spawn 2 uWSGI emperor worker processes
workers = 2

# automatically kill workers on master's death
no-orphans = true

# place timestamps into log
log-date = true

# user identifier of uWSGI processes
uid = www-data

# group identifier of uWSGI processes
gid = www-data

# vassals directory
emperor = /etc/uwsgi-emperor/vassals
";

/// The same package's init script (/etc/init.d/uwsgi-emperor):
/// `DAEMON_ARGS="--ini /etc/uwsgi-emperor/emperor.ini --die-on-term
/// --pidfile $PIDFILE --daemonize $LOGFILE"` with
/// PIDFILE=/run/uwsgi-emperor.pid and LOGFILE=/var/log/uwsgi/emperor.log;
/// init-d-script stops it with start-stop-daemon --retry=TERM/30/KILL/5.
const DEBIAN_INIT_ARGS: &str = "--ini /etc/uwsgi-emperor/emperor.ini --die-on-term --pidfile /run/uwsgi-emperor.pid --daemonize /var/log/uwsgi/emperor.log";

/// Fedora's stock /etc/uwsgi.ini (Fedora package uwsgi, dist-git
/// src.fedoraproject.org/rpms/uwsgi, file uwsgi.ini): Fedora starts an
/// Emperor in tyrant mode by default (SearXNG's admin docs,
/// docs/admin/installation-uwsgi.rst, "Fedora (RHEL) starts a Emperor in
/// Tyrant mode by default"; the same file is quoted by public guides, e.g.
/// the djing README's /etc/uwsgi.ini). Fedora's uwsgi.service runs
/// `/usr/sbin/uwsgi --ini /etc/uwsgi.ini` after `ExecStartPre=/bin/chown
/// uwsgi:uwsgi /run/uwsgi`, and stops it with `KillSignal=SIGINT`.
const FEDORA_UWSGI_INI: &str = "[uwsgi]
uid = uwsgi
gid = uwsgi
pidfile = /run/uwsgi/uwsgi.pid
emperor = /etc/uwsgi.d
stats = /run/uwsgi/stats.sock
chmod-socket = 660
emperor-tyrant = true
cap = setgid,setuid
";

/// uWSGI's Django/nginx tutorial (uwsgi-docs tutorials/Django_and_nginx.rst,
/// https://uwsgi-docs.readthedocs.io/en/latest/tutorials/Django_and_nginx.html,
/// "Emperor mode"): run in a terminal, so Ctrl-C (SIGINT) stops it.
const DJANGO_TUTORIAL_ARGS: &str = "--emperor /etc/uwsgi/vassals --uid www-data --gid www-data";

/// The same tutorial, "Make uWSGI startup when the system boots": the line
/// for /etc/rc.local (stopped by the shutdown's SIGTERM).
const DJANGO_RC_LOCAL_ARGS: &str = "--emperor /etc/uwsgi/vassals --uid www-data --gid www-data --daemonize /var/log/uwsgi-emperor.log";

/// uWSGI's imperial monitor docs (uwsgi-docs ImperialMonitors.rst,
/// https://uwsgi-docs.readthedocs.io/en/latest/ImperialMonitors.html,
/// "pg:// -- scan a PostgreSQL table for configuration"), a shell command
/// (SIGINT from the terminal stops it). The conninfo is rewritten to the
/// private server's.
const PG_ARGS: [&str; 4] = [
    "--plugin",
    "emperor_pg",
    "--emperor",
    "pg://host=127.0.0.1 user=foobar dbname=emperor;SELECT name,config,ts FROM vassals",
];

/// uWSGI's systemd docs (uwsgi-docs Systemd.rst,
/// https://uwsgi-docs.readthedocs.io/en/latest/Systemd.html, "Adding the
/// Emperor to systemd"): emperor.ini, started by `ExecStart=... --ini
/// /etc/uwsgi/emperor.ini` with `KillSignal=SIGQUIT`.
const SYSTEMD_DOCS_EMPEROR_INI: &str = "[uwsgi]
emperor = /etc/uwsgi/vassals
uid = www-data
gid = www-data
";

/// The emperor unit of the unistra/pod-ws deployment (GitHub
/// unistra/pod-ws, fabfile/templates/emperor.uwsgi.service.tpl):
/// `ExecStart=/usr/local/bin/uwsgi --uid {{ remote_owner }} --gid
/// {{ remote_group }} --emperor /etc/uwsgi/apps-enabled/ --logto
/// /var/log/uwsgi.log` with `KillSignal=SIGQUIT` (the template variables are
/// filled with www-data).
const POD_WS_ARGS: &str = "--uid {{ remote_owner }} --gid {{ remote_group }} --emperor /etc/uwsgi/apps-enabled/ --logto /var/log/uwsgi.log";

/// uWSGI's Upstart docs (uwsgi-docs Upstart.rst,
/// https://uwsgi-docs.readthedocs.io/en/latest/Upstart.html, "Using the
/// Emperor"): "If you want to run the Emperor under the master process ...
/// remember to add --die-on-term". Upstart stops a job with SIGTERM.
const UPSTART_MASTER_ARGS: &str = "--master --die-on-term --emperor /etc/uwsgi";

/// uWSGI's Emperor docs (uwsgi-docs Emperor.rst,
/// https://uwsgi-docs.readthedocs.io/en/latest/Emperor.html, "Tyrant mode
/// for paranoid sysadmins"): an unprivileged emperor (a bare uid with no
/// passwd entry) that keeps the two capabilities tyrant mode needs.
const PARANOID_TYRANT_INI: &str = "[uwsgi]
uid = 10000
gid = 10000
emperor = /tmp
emperor-tyrant = true
cap = setgid,setuid
";

/// uWSGI's Emperor docs (Emperor.rst, "Passing configuration parameters to
/// all vassals"): every vassal includes a default config.
const VASSALS_INCLUDE_ARGS: &str =
    "--emperor /opt/apps --vassals-include /etc/uwsgi/vassals-default.ini";

/// uWSGI's Emperor docs (Emperor.rst, "The Imperial Bureau of Statistics":
/// "adding the emperor-stats option with a TCP address"), with the address
/// of the fork-server example (ForkServer.rst: `emperor-stats =
/// 127.0.0.1:5000`).
const EMPEROR_STATS_ARGS: &str = "--emperor /etc/uwsgi/vassals --emperor-stats 127.0.0.1:5000";

/// uWSGI's custom options docs (uwsgi-docs CustomOptions.rst,
/// https://uwsgi-docs.readthedocs.io/en/latest/CustomOptions.html, "A
/// trick for the Emperor: automatically import shortcuts for your
/// vassals"): `for`/`endfor` and the `%(_)` placeholder (config language).
const SHORTCUTS_FOR_INI: &str = "[uwsgi]
emperor = /etc/uwsgi/vassals

for = shortcuts shortcuts2 shortcuts3
  vassals-include = /etc/uwsgi/%(_).ini
endfor =
";

/// An emperor.ini from a public server-setup script (Russian-language
/// notes, `cat <<EOT > /etc/uwsgi/emperor.ini`, found through the code
/// corpus, which did not name its repository): `%d` (the config's
/// directory) and `%p` (the config's path) are magic variables of the
/// config language.
const MAGIC_VARS_INI: &str = "[uwsgi]
emperor = %dvassals

touch-reload = %p

log-date = true
log-truncate = true
logto = /var/log/uwsgi/emperor.log
";

// ----- harness ----------------------------------------------------------------

/// Which emperor runs the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Emperor {
    Imperium,
    Uwsgi,
}
use Emperor::{Imperium, Uwsgi};

impl Emperor {
    fn program(self) -> PathBuf {
        // imperium's vassals are `uwsgi` from PATH (the default
        // --binary-path): the real uWSGI either way
        let uwsgi = uwsgi_bin();
        match self {
            Imperium => testkit::imperium_bin(),
            Uwsgi => uwsgi,
        }
    }
}

/// A temp dir unprivileged users can read, with the testkit app in it.
struct Site {
    tmp: tempfile::TempDir,
    app: PathBuf,
}

impl Site {
    fn new() -> Site {
        let tmp = readable_tempdir();
        let app = write_app(tmp.path());
        Site { tmp, app }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `name` as a string, for rewriting configs.
    fn s(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// A directory others can read.
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.path(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The testkit vassal config answering `marker` on a free port.
    fn vassal_text(&self, marker: &str) -> (String, u16) {
        let port = free_port();
        (vassal_ini_on(&self.app, marker, port), port)
    }

    /// Writes `dir/NAME.ini` (root-owned) and returns its port.
    fn vassal(&self, dir: &Path, marker: &str) -> u16 {
        let (text, port) = self.vassal_text(marker);
        std::fs::write(dir.join(format!("{marker}.ini")), text).unwrap();
        port
    }
}

/// Replaces each `from` (which must occur: the rewrite is only of paths
/// and ports) by `to`.
fn rewrite(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in pairs {
        assert!(out.contains(from), "{from:?} is not in the corpus entry");
        out = out.replace(from, to);
    }
    out
}

fn words(args: &str) -> Vec<String> {
    args.split_whitespace().map(str::to_string).collect()
}

/// A started emperor (or the process that daemonizes it): its output goes
/// to a file. Dropping it kills whatever is left of its process tree and
/// of the other trees it was told about.
struct Run {
    kind: Emperor,
    child: Option<Child>,
    pid: u32,
    out: PathBuf,
    others: Vec<u32>,
    _dir: tempfile::TempDir,
}

impl Run {
    /// Starts `kind ARGS...` in `cwd`, with `gid` as its group when given
    /// (systemd's `Group=`).
    fn start(kind: Emperor, cwd: &Path, args: &[String], gid: Option<u32>) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("output.log");
        let f = std::fs::File::create(&out).unwrap();
        let mut cmd = Command::new(kind.program());
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .env_remove("IMPERIUM_LOG")
            .env_remove("NOTIFY_SOCKET");
        if let Some(g) = gid {
            cmd.gid(g);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {kind:?}: {e}"));
        Run {
            kind,
            pid: child.id(),
            child: Some(child),
            out,
            others: Vec::new(),
            _dir: dir,
        }
    }

    /// What the started process wrote to stdout and stderr.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Panics unless the started process is still running.
    fn assert_running(&mut self) {
        let st = self.child.as_mut().expect("started").try_wait().unwrap();
        assert!(
            st.is_none(),
            "{:?} exited ({st:?}):\n{}",
            self.kind,
            self.output()
        );
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("started");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not exit within {timeout:?}:\n{}",
                self.kind,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `needle` is in `file` (the log of this run).
    fn wait_file(&self, file: &Path, needle: &str) -> String {
        let mut text = String::new();
        let ok = wait_until(T, || {
            text = std::fs::read_to_string(file).unwrap_or_default();
            text.contains(needle)
        });
        assert!(
            ok,
            "{:?}: {needle:?} never appeared in {}:\n{text}\n--- output:\n{}",
            self.kind,
            file.display(),
            self.output()
        );
        text
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let mut pids = Vec::new();
        for root in std::iter::once(self.pid).chain(self.others.iter().copied()) {
            pids.extend(tree(root));
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The processes behind an answer: the worker, its vassal master, and the
/// emperor that started that master.
#[derive(Debug)]
struct Vassal {
    worker: u32,
    master: u32,
    emperor: u32,
}

/// Waits until the vassal answers on `port` with `marker`.
fn serve(run: &Run, port: u16, marker: &str, log: Option<&Path>) -> Vassal {
    let worker = wait_answer(port, marker, T).unwrap_or_else(|| {
        panic!(
            "{:?}: the vassal {marker} never answered on 127.0.0.1:{port}\n--- output:\n{}\n--- log:\n{}",
            run.kind,
            run.output(),
            log.map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .unwrap_or_default()
        )
    });
    let master = master_of(worker);
    let emperor = ppid(master).expect("the vassal master has a parent");
    Vassal {
        worker,
        master,
        emperor,
    }
}

/// Sends `sig` to `root` and waits until it and every process under it
/// (which must include the vassal) are gone.
fn stop_everything(kind: Emperor, root: u32, sig: Signal, v: &Vassal) {
    let pids = tree(root);
    for p in [v.emperor, v.master, v.worker] {
        assert!(
            pids.contains(&p),
            "{kind:?}: {p} not under {root}: {pids:?}"
        );
    }
    kill(Pid::from_raw(root as i32), sig).unwrap();
    let ok = wait_all_dead(&pids, T);
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(ok, "{kind:?}: {sig:?} left processes running: {left:?}");
}

/// The emperor's start-up line, in its log.
fn start_line(kind: Emperor) -> &'static str {
    match kind {
        Imperium => "*** starting imperium, the uWSGI-compatible Emperor ***",
        Uwsgi => "*** starting uWSGI Emperor ***",
    }
}

/// uWSGI's log-date prefix: `Wed Dec  2 04:40:37 2026 - `.
fn dated(line: &str) -> bool {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    line.len() > 27
        && line.is_char_boundary(24)
        && DAYS.contains(&&line[..3])
        && line[19..24].trim().parse::<u32>().is_ok_and(|y| y > 2000)
        && line[24..].starts_with(" - ")
}

/// Each option is reported once, as an info line naming where it was set.
fn assert_ignored_once(log: &str, origin_file: &Path, keys: &[&str]) {
    for key in keys {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("option '{key}' ignored")))
            .collect();
        assert_eq!(lines.len(), 1, "one line for {key}:\n{log}");
        assert!(
            lines[0].contains("INFO") && lines[0].contains(&format!("{}:", origin_file.display())),
            "{}",
            lines[0]
        );
    }
}

/// `pid` runs as `ids` with no capabilities left (a plain `uid`/`gid` drop).
fn assert_dropped_to(pid: u32, ids: (u32, u32)) {
    assert_runs_as(pid, ids);
    assert_eq!(proc_caps(pid), Some((0, 0)), "capabilities of {pid}");
}

fn www_data() -> (u32, u32) {
    let u = nix::unistd::User::from_name("www-data")
        .unwrap()
        .expect("the www-data user (Debian's base system has it)");
    (u.uid.as_raw(), u.gid.as_raw())
}

fn read_pidfile(p: &Path) -> u32 {
    let mut pid = None;
    wait_until(T, || {
        pid = std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap_or_else(|| panic!("no pid in {}", p.display()))
}

/// What a stats server sends on connect (uWSGI's stats protocol: the JSON
/// blob, then close).
fn read_stats(mut s: impl Read) -> Value {
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

// ----- Debian ------------------------------------------------------------------

fn debian_stock(kind: Emperor) {
    let www = www_data();
    let s = Site::new();
    let vassals = s.dir("vassals");
    let port = s.vassal(&vassals, "debian");
    let ini = s.write(
        "emperor.ini",
        &rewrite(
            DEBIAN_EMPEROR_INI,
            &[("/etc/uwsgi-emperor/vassals", &s.s("vassals"))],
        ),
    );
    // the unit: ExecStart=/usr/bin/uwsgi --ini FILE, Group=www-data
    let mut run = Run::start(
        kind,
        s.tmp.path(),
        &["--ini".into(), ini.to_string_lossy().into_owned()],
        Some(www.1),
    );
    let v = serve(&run, port, "debian", None);
    run.assert_running();
    match kind {
        Imperium => assert_eq!(v.emperor, run.pid, "imperium is the emperor"),
        Uwsgi => {
            // master = true: uWSGI's master forks the emperor as a child
            // (same command line), and runs no workers ("no-workers" mode)
            assert_eq!(ppid(v.emperor), Some(run.pid), "{}", run.output());
            assert_eq!(cmdline(v.emperor), cmdline(run.pid));
            assert_dropped_to(run.pid, www);
        }
    }
    for p in [v.emperor, v.master, v.worker] {
        assert_dropped_to(p, www);
    }
    // log-date = true: the emperor's lines carry uWSGI's date prefix
    let log = run.wait_file(&run.out, start_line(kind));
    let line = log.lines().find(|l| l.contains(start_line(kind))).unwrap();
    assert!(dated(line), "{line:?}");
    if kind == Imperium {
        assert_ignored_once(&log, &ini, &["master", "workers", "no-orphans"]);
    }
    stop_everything(kind, run.pid, Signal::SIGQUIT, &v);
    let st = run.wait_exit(T);
    if kind == Imperium {
        assert!(st.success(), "{st:?}");
    }
}

#[test]
fn debian_stock_emperor_ini_under_its_systemd_unit() {
    debian_stock(Imperium);
    debian_stock(Uwsgi);
}

fn debian_init(kind: Emperor) {
    let www = www_data();
    let s = Site::new();
    let vassals = s.dir("vassals");
    let port = s.vassal(&vassals, "init");
    let ini = s.write(
        "emperor.ini",
        &rewrite(
            DEBIAN_EMPEROR_INI,
            &[("/etc/uwsgi-emperor/vassals", &s.s("vassals"))],
        ),
    );
    s.dir("log");
    let (pidfile, logfile) = (s.path("uwsgi-emperor.pid"), s.path("log/emperor.log"));
    let args = rewrite(
        DEBIAN_INIT_ARGS,
        &[
            ("/etc/uwsgi-emperor/emperor.ini", &ini.to_string_lossy()),
            ("/run/uwsgi-emperor.pid", &pidfile.to_string_lossy()),
            ("/var/log/uwsgi/emperor.log", &logfile.to_string_lossy()),
        ],
    );
    let mut run = Run::start(kind, s.tmp.path(), &words(&args), None);
    // --daemonize: the started process exits 0, the emperor goes on
    let st = run.wait_exit(T);
    assert!(st.success(), "{kind:?}: {st:?}\n{}", run.output());
    let pid = read_pidfile(&pidfile);
    run.others.push(pid);
    let v = serve(&run, port, "init", Some(&logfile));
    assert!(alive(pid));
    assert_ne!(ppid(pid), Some(std::process::id()), "detached");
    match kind {
        Imperium => assert_eq!(v.emperor, pid, "the pidfile holds the emperor"),
        // the pidfile holds the master, whose child is the emperor
        Uwsgi => assert_eq!(ppid(v.emperor), Some(pid)),
    }
    assert_dropped_to(v.emperor, www);
    assert_dropped_to(v.worker, www);
    // the log file gets the emperor's log, and the vassals' (they inherit it)
    let log = run.wait_file(&logfile, start_line(kind));
    run.wait_file(&logfile, "spawned uWSGI worker 1");
    if kind == Imperium {
        assert_ignored_once(&log, &ini, &["master", "workers", "no-orphans"]);
    }
    // start-stop-daemon --stop --retry=TERM/30/KILL/5 --pidfile: with
    // --die-on-term, SIGTERM stops uWSGI's master too (without it, a
    // reload: see upstart_master_without_die_on_term_*)
    stop_everything(kind, pid, Signal::SIGTERM, &v);
    // the pidfile was written as root, before the drop to www-data, into a
    // root-owned directory (/run in the package): at exit neither emperor
    // can remove it (uWSGI does not try without --vacuum; imperium tries and
    // gets EACCES), so it stays, holding the dead pid
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string()
    );
}

#[test]
fn debian_init_script_die_on_term_pidfile_daemonize() {
    debian_init(Imperium);
    debian_init(Uwsgi);
}

// ----- Fedora ------------------------------------------------------------------

fn fedora(kind: Emperor) {
    let emperor_user = test_user("uwsgi");
    let app_user = test_user("imperium-t2");
    let s = Site::new();
    let vassals = s.dir("uwsgi.d");
    let run_dir = s.dir("run");
    // ExecStartPre=/bin/chown uwsgi:uwsgi /run/uwsgi
    testkit::users::own(&run_dir, emperor_user);
    let (text, port) = s.vassal_text("fedora");
    // tyrant mode: the vassal runs as its config file's owner
    write_owned(&vassals.join("app.ini"), &text, app_user);
    let ini = s.write(
        "uwsgi.ini",
        &rewrite(
            FEDORA_UWSGI_INI,
            &[
                ("/run/uwsgi/uwsgi.pid", &s.s("run/uwsgi.pid")),
                ("/etc/uwsgi.d", &s.s("uwsgi.d")),
                ("/run/uwsgi/stats.sock", &s.s("run/stats.sock")),
            ],
        ),
    );
    let mut run = Run::start(
        kind,
        s.tmp.path(),
        &["--ini".into(), ini.to_string_lossy().into_owned()],
        None,
    );
    let v = serve(&run, port, "fedora", None);
    run.assert_running();
    match kind {
        Imperium => assert_eq!(v.emperor, run.pid),
        // `stats` is the stats server of uWSGI's master, so uWSGI turns the
        // master on by itself ("spawned uWSGI master process") and the
        // emperor is the master's child
        Uwsgi => {
            assert_eq!(ppid(v.emperor), Some(run.pid));
            assert_runs_as(run.pid, emperor_user);
        }
    }
    // the emperor: uid/gid uwsgi, keeping exactly setgid and setuid
    assert_runs_as(v.emperor, emperor_user);
    assert_eq!(proc_caps(v.emperor), Some((SETGID_SETUID, SETGID_SETUID)));
    // the vassal: its config's owner, with no capabilities
    for p in [v.master, v.worker] {
        assert_runs_as(p, app_user);
        assert_eq!(proc_caps(p), Some((0, 0)), "caps of vassal process {p}");
    }
    // the pidfile (written before the privilege drop) holds the started
    // process: imperium's emperor, uWSGI's master
    let pid = read_pidfile(&s.path("run/uwsgi.pid"));
    assert_eq!(pid, run.pid);
    // stats = /run/uwsgi/stats.sock with chmod-socket = 660
    let sock = s.path("run/stats.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "mode of the stats socket");
    // uWSGI's master binds it after dropping privileges: it belongs to
    // uwsgi:uwsgi, so the uwsgi group can read the stats
    assert_eq!(
        (meta.uid(), meta.gid()),
        emperor_user,
        "{kind:?}: owner of the stats socket"
    );
    let stats = read_stats(std::os::unix::net::UnixStream::connect(&sock).unwrap());
    match kind {
        // imperium has no master: `stats` is its emperor stats server
        Imperium => {
            assert_eq!(stats["pid"], v.emperor);
            assert_eq!(stats["vassals"][0]["id"], "app.ini", "{stats}");
        }
        // uWSGI's master stats: the master's pid and its (no) workers
        Uwsgi => {
            assert_eq!(stats["pid"], run.pid);
            assert!(stats["workers"].is_array(), "{stats}");
        }
    }
    // KillSignal=SIGINT
    stop_everything(kind, run.pid, Signal::SIGINT, &v);
    run.wait_exit(T);
}

#[test]
fn fedora_stock_uwsgi_ini_tyrant_with_caps() {
    fedora(Imperium);
    fedora(Uwsgi);
}

// ----- uWSGI's own docs --------------------------------------------------------

fn django_tutorial(kind: Emperor) {
    let www = www_data();
    let s = Site::new();
    let vassals = s.dir("vassals");
    let port = s.vassal(&vassals, "mysite_uwsgi");
    let args = rewrite(
        DJANGO_TUTORIAL_ARGS,
        &[("/etc/uwsgi/vassals", &s.s("vassals"))],
    );
    let mut run = Run::start(kind, s.tmp.path(), &words(&args), None);
    let v = serve(&run, port, "mysite_uwsgi", None);
    run.assert_running();
    // no master: the started process is the emperor, in both
    assert_eq!(v.emperor, run.pid);
    for p in [v.emperor, v.master, v.worker] {
        assert_dropped_to(p, www);
    }
    stop_everything(kind, run.pid, Signal::SIGINT, &v);
    let st = run.wait_exit(T);
    if kind == Imperium {
        assert!(st.success(), "{st:?}");
    }
}

#[test]
fn django_tutorial_emperor_uid_gid_www_data() {
    django_tutorial(Imperium);
    django_tutorial(Uwsgi);
}

fn django_rc_local(kind: Emperor) {
    let www = www_data();
    let s = Site::new();
    let vassals = s.dir("vassals");
    let port = s.vassal(&vassals, "rc");
    let log = s.path("uwsgi-emperor.log");
    let args = rewrite(
        DJANGO_RC_LOCAL_ARGS,
        &[
            ("/etc/uwsgi/vassals", &s.s("vassals")),
            ("/var/log/uwsgi-emperor.log", &log.to_string_lossy()),
        ],
    );
    let mut run = Run::start(kind, s.tmp.path(), &words(&args), None);
    let st = run.wait_exit(T);
    assert!(st.success(), "{kind:?}: {st:?}\n{}", run.output());
    let v = serve(&run, port, "rc", Some(&log));
    run.others.push(v.emperor);
    assert_ne!(ppid(v.emperor), Some(run.pid));
    assert_ne!(ppid(v.emperor), Some(std::process::id()), "detached");
    assert_dropped_to(v.emperor, www);
    assert_dropped_to(v.worker, www);
    run.wait_file(&log, start_line(kind));
    stop_everything(kind, v.emperor, Signal::SIGTERM, &v);
}

#[test]
fn django_tutorial_rc_local_daemonize() {
    django_rc_local(Imperium);
    django_rc_local(Uwsgi);
}

#[cfg(feature = "pg")]
#[test]
fn pg_monitor_command_line_with_plugin_emperor_pg() {
    use testkit::servers::pg::PgServer;
    let pg = PgServer::start();
    // ts: "a number representing the modification time of this row in
    // UNIX format" (ImperialMonitors.rst)
    pg.psql("CREATE TABLE vassals (name text PRIMARY KEY, config text, ts int)");
    for kind in [Imperium, Uwsgi] {
        let s = Site::new();
        let (text, port) = s.vassal_text("pg");
        pg.psql(&format!(
            "DELETE FROM vassals; INSERT INTO vassals VALUES ('app.ini', '{}', extract(epoch from now())::int)",
            text.replace('\'', "''")
        ));
        let conninfo = pg.conninfo();
        let mut args: Vec<String> = PG_ARGS.iter().map(|a| a.to_string()).collect();
        args[3] = rewrite(
            PG_ARGS[3],
            &[("host=127.0.0.1 user=foobar dbname=emperor", &conninfo)],
        );
        let mut run = Run::start(kind, s.tmp.path(), &args, None);
        let v = serve(&run, port, "pg", None);
        run.assert_running();
        assert_eq!(v.emperor, run.pid);
        if kind == Imperium {
            run.wait_file(
                &run.out,
                "plugin emperor_pg: the pg:// monitor is built into imperium",
            );
        }
        stop_everything(kind, run.pid, Signal::SIGINT, &v);
        run.wait_exit(T);
    }
}

fn systemd_docs(kind: Emperor) {
    let www = www_data();
    let s = Site::new();
    let vassals = s.dir("vassals");
    let port = s.vassal(&vassals, "werkzeug");
    let ini = s.write(
        "emperor.ini",
        &rewrite(
            SYSTEMD_DOCS_EMPEROR_INI,
            &[("/etc/uwsgi/vassals", &s.s("vassals"))],
        ),
    );
    let mut run = Run::start(
        kind,
        s.tmp.path(),
        &["--ini".into(), ini.to_string_lossy().into_owned()],
        None,
    );
    let v = serve(&run, port, "werkzeug", None);
    run.assert_running();
    assert_eq!(v.emperor, run.pid);
    for p in [v.emperor, v.master, v.worker] {
        assert_dropped_to(p, www);
    }
    // KillSignal=SIGQUIT
    stop_everything(kind, run.pid, Signal::SIGQUIT, &v);
    run.wait_exit(T);
}

#[test]
fn uwsgi_systemd_docs_emperor_ini() {
    systemd_docs(Imperium);
    systemd_docs(Uwsgi);
}

fn pod_ws(kind: Emperor) {
    let www = www_data();
    let s = Site::new();
    let vassals = s.dir("apps-enabled");
    let port = s.vassal(&vassals, "pod");
    let log = s.path("uwsgi.log");
    let args = rewrite(
        POD_WS_ARGS,
        &[
            ("{{ remote_owner }}", "www-data"),
            ("{{ remote_group }}", "www-data"),
            (
                "/etc/uwsgi/apps-enabled/",
                &format!("{}/", s.s("apps-enabled")),
            ),
            ("/var/log/uwsgi.log", &log.to_string_lossy()),
        ],
    );
    let mut run = Run::start(kind, s.tmp.path(), &words(&args), None);
    let v = serve(&run, port, "pod", Some(&log));
    run.assert_running();
    assert_eq!(v.emperor, run.pid);
    assert_dropped_to(v.emperor, www);
    assert_dropped_to(v.worker, www);
    // --logto: the emperor's log (and the vassals') goes to the file, not
    // to stderr
    run.wait_file(&log, start_line(kind));
    run.wait_file(&log, "spawned uWSGI worker 1");
    assert!(!run.output().contains(start_line(kind)), "{}", run.output());
    stop_everything(kind, run.pid, Signal::SIGQUIT, &v);
    run.wait_exit(T);
}

#[test]
fn pod_ws_unit_uid_gid_logto() {
    pod_ws(Imperium);
    pod_ws(Uwsgi);
}

fn upstart_master(kind: Emperor) {
    let s = Site::new();
    let vassals = s.dir("uwsgi");
    let port = s.vassal(&vassals, "up");
    let args = rewrite(UPSTART_MASTER_ARGS, &[("/etc/uwsgi", &s.s("uwsgi"))]);
    let mut run = Run::start(kind, s.tmp.path(), &words(&args), None);
    let v = serve(&run, port, "up", None);
    run.assert_running();
    match kind {
        Imperium => {
            assert_eq!(v.emperor, run.pid);
            assert_ignored_once(&run.output(), Path::new("the command line"), &["master"]);
        }
        Uwsgi => assert_eq!(ppid(v.emperor), Some(run.pid)),
    }
    stop_everything(kind, run.pid, Signal::SIGTERM, &v);
    let st = run.wait_exit(T);
    if kind == Imperium {
        assert!(st.success(), "{st:?}");
    }
}

#[test]
fn upstart_docs_master_die_on_term() {
    upstart_master(Imperium);
    upstart_master(Uwsgi);
}

/// The variant the Upstart docs warn about: `--master` without
/// `--die-on-term`. uWSGI's master maps SIGTERM to "a brutal reload"
/// (Upstart.rst, "What is --die-on-term?"): it re-executes itself, the
/// emperor and its vassals start again, and the job never stops. imperium
/// has no master: SIGTERM always stops it (docs/migrating.md).
#[test]
fn upstart_master_without_die_on_term_reloads_uwsgi_but_stops_imperium() {
    for kind in [Imperium, Uwsgi] {
        let s = Site::new();
        let vassals = s.dir("uwsgi");
        let port = s.vassal(&vassals, "up");
        let args = words(&format!("--master --emperor {}", s.s("uwsgi")));
        let mut run = Run::start(kind, s.tmp.path(), &args, None);
        let v = serve(&run, port, "up", None);
        match kind {
            Imperium => stop_everything(kind, run.pid, Signal::SIGTERM, &v),
            Uwsgi => {
                let old = tree(v.emperor);
                kill(Pid::from_raw(run.pid as i32), Signal::SIGTERM).unwrap();
                assert!(wait_all_dead(&old, T), "the old emperor and vassal go");
                // ... and come back under the same (re-executed) master
                let v2 = serve(&run, port, "up", None);
                assert_ne!(v2.master, v.master);
                assert_eq!(ppid(v2.emperor), Some(run.pid));
                run.assert_running();
                stop_everything(kind, run.pid, Signal::SIGINT, &v2);
            }
        }
        run.wait_exit(T);
    }
}

fn paranoid_tyrant(kind: Emperor) {
    let app_user = test_user("imperium-t1");
    assert!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(10000))
            .unwrap()
            .is_none(),
        "this entry runs the emperor as uid 10000, which must have no passwd entry here"
    );
    let s = Site::new();
    let vassals = s.dir("vassals");
    let (text, port) = s.vassal_text("paranoid");
    write_owned(&vassals.join("app.ini"), &text, app_user);
    let ini = s.write(
        "emperor.ini",
        &rewrite(
            PARANOID_TYRANT_INI,
            &[("emperor = /tmp", &format!("emperor = {}", s.s("vassals")))],
        ),
    );
    let mut run = Run::start(
        kind,
        s.tmp.path(),
        &["--ini".into(), ini.to_string_lossy().into_owned()],
        None,
    );
    let v = serve(&run, port, "paranoid", None);
    run.assert_running();
    assert_eq!(v.emperor, run.pid);
    assert_runs_as(v.emperor, (10000, 10000));
    assert_eq!(proc_caps(v.emperor), Some((SETGID_SETUID, SETGID_SETUID)));
    for p in [v.master, v.worker] {
        assert_runs_as(p, app_user);
        assert_eq!(proc_caps(p), Some((0, 0)));
    }
    stop_everything(kind, run.pid, Signal::SIGINT, &v);
    run.wait_exit(T);
}

#[test]
fn emperor_docs_paranoid_tyrant_bare_uid_with_caps() {
    paranoid_tyrant(Imperium);
    paranoid_tyrant(Uwsgi);
}

/// The testkit vassal config, with the lines starting with `key` moved to
/// a separate text (what an included file provides).
fn split_off(text: &str, keys: &[&str]) -> (String, String) {
    let (moved, kept): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| keys.iter().any(|k| l.starts_with(k)));
    (
        kept.join("\n") + "\n",
        format!("[uwsgi]\n{}\n", moved.join("\n")),
    )
}

fn vassals_include(kind: Emperor) {
    let s = Site::new();
    let apps = s.dir("apps");
    let (text, port) = s.vassal_text("inc");
    // the vassal has no socket of its own: the included default gives it
    let (vassal, default) = split_off(&text, &["http-socket"]);
    std::fs::write(apps.join("app.ini"), vassal).unwrap();
    let default_ini = s.write("vassals-default.ini", &default);
    let args = rewrite(
        VASSALS_INCLUDE_ARGS,
        &[
            ("/opt/apps", &s.s("apps")),
            (
                "/etc/uwsgi/vassals-default.ini",
                &default_ini.to_string_lossy(),
            ),
        ],
    );
    let mut run = Run::start(kind, s.tmp.path(), &words(&args), None);
    let v = serve(&run, port, "inc", None);
    run.assert_running();
    assert_eq!(v.emperor, run.pid);
    let cmd = cmdline(v.master);
    assert!(
        cmd.contains(&format!("--include {}", default_ini.display())),
        "{cmd}"
    );
    stop_everything(kind, run.pid, Signal::SIGINT, &v);
    run.wait_exit(T);
}

#[test]
fn emperor_docs_vassals_include() {
    vassals_include(Imperium);
    vassals_include(Uwsgi);
}

fn emperor_stats(kind: Emperor) {
    let s = Site::new();
    let vassals = s.dir("vassals");
    let port = s.vassal(&vassals, "stats");
    let stats_port = free_port();
    let args = rewrite(
        EMPEROR_STATS_ARGS,
        &[
            ("/etc/uwsgi/vassals", &s.s("vassals")),
            ("127.0.0.1:5000", &format!("127.0.0.1:{stats_port}")),
        ],
    );
    let mut run = Run::start(kind, s.tmp.path(), &words(&args), None);
    let v = serve(&run, port, "stats", None);
    run.assert_running();
    let stats = read_stats(std::net::TcpStream::connect(("127.0.0.1", stats_port)).unwrap());
    assert_eq!(stats["pid"], v.emperor, "{stats}");
    let ids: Vec<&Value> = stats["vassals"]
        .as_array()
        .unwrap_or_else(|| panic!("{stats}"))
        .iter()
        .map(|x| &x["id"])
        .collect();
    assert_eq!(ids, ["stats.ini"], "{kind:?}: {stats}");
    stop_everything(kind, run.pid, Signal::SIGINT, &v);
    run.wait_exit(T);
}

#[test]
fn emperor_docs_emperor_stats_tcp() {
    emperor_stats(Imperium);
    emperor_stats(Uwsgi);
}

// ----- entries that need the config language -----------------------------------

fn shortcuts_for(kind: Emperor) {
    let s = Site::new();
    let vassals = s.dir("vassals");
    let (text, port) = s.vassal_text("for");
    let (rest, socket) = split_off(&text, &["http-socket"]);
    let (vassal, marker) = split_off(&rest, &["env = MARKER"]);
    std::fs::write(vassals.join("app.ini"), vassal).unwrap();
    s.write("shortcuts.ini", &socket);
    s.write("shortcuts2.ini", &marker);
    s.write("shortcuts3.ini", "[uwsgi]\n");
    let ini = s.write(
        "emperor.ini",
        &rewrite(
            SHORTCUTS_FOR_INI,
            &[
                ("/etc/uwsgi/vassals", &s.s("vassals")),
                (
                    "/etc/uwsgi/%(_).ini",
                    &format!("{}/%(_).ini", s.tmp.path().display()),
                ),
            ],
        ),
    );
    let mut run = Run::start(
        kind,
        s.tmp.path(),
        &["--ini".into(), ini.to_string_lossy().into_owned()],
        None,
    );
    // the socket comes from shortcuts.ini, the marker from shortcuts2.ini
    let v = serve(&run, port, "for", None);
    run.assert_running();
    let cmd = cmdline(v.master);
    for n in ["shortcuts", "shortcuts2", "shortcuts3"] {
        assert!(
            cmd.contains(&format!("--include {}", s.s(&format!("{n}.ini")))),
            "{cmd}"
        );
    }
    stop_everything(kind, run.pid, Signal::SIGINT, &v);
    run.wait_exit(T);
}

#[test]
fn custom_options_docs_for_loop_vassals_include() {
    shortcuts_for(Uwsgi);
    shortcuts_for(Imperium);
}

fn magic_vars(kind: Emperor) {
    let s = Site::new();
    let vassals = s.dir("vassals");
    let port = s.vassal(&vassals, "magic");
    s.dir("log");
    let log = s.path("log/emperor.log");
    std::fs::write(&log, "a stale line from the previous run\n").unwrap();
    let ini = s.write(
        "emperor.ini",
        &rewrite(
            MAGIC_VARS_INI,
            &[("/var/log/uwsgi/emperor.log", &log.to_string_lossy())],
        ),
    );
    let mut run = Run::start(
        kind,
        s.tmp.path(),
        &["--ini".into(), ini.to_string_lossy().into_owned()],
        None,
    );
    // %d: the vassals dir next to emperor.ini
    let v = serve(&run, port, "magic", Some(&log));
    run.assert_running();
    // logto with log-truncate and log-date
    let text = run.wait_file(&log, start_line(kind));
    assert!(!text.contains("a stale line"), "{text}");
    let line = text.lines().find(|l| l.contains(start_line(kind))).unwrap();
    assert!(dated(line), "{line:?}");
    stop_everything(kind, run.pid, Signal::SIGINT, &v);
    run.wait_exit(T);
}

#[test]
fn server_notes_magic_variables_d_and_p() {
    magic_vars(Uwsgi);
    magic_vars(Imperium);
}

// ----- what imperium refuses ---------------------------------------------------

#[test]
fn an_unsupported_option_and_strict_unknown_keys_stop_start_up() {
    let s = Site::new();
    s.dir("vassals");
    // the emperor config of someone who also served an app from it
    let ini = s.write(
        "emperor.ini",
        &format!("[uwsgi]\nemperor = {}\nsocket = :8000\n", s.s("vassals")),
    );
    let mut run = Run::start(
        Imperium,
        s.tmp.path(),
        &["--ini".into(), ini.to_string_lossy().into_owned()],
        None,
    );
    let st = run.wait_exit(T);
    assert_eq!(st.code(), Some(1), "{}", run.output());
    let out = run.output();
    assert!(
        out.contains(&format!(
            "{}:3: option 'socket' is not supported",
            ini.display()
        )) && out.contains("vassal config"),
        "{out}"
    );

    // an unknown key: a warning, and the emperor runs (uWSGI ignores
    // unknown keys too) ...
    let ini = s.write(
        "unknown.ini",
        &format!("[uwsgi]\nemperor = {}\nfrobnicate = 1\n", s.s("vassals")),
    );
    let ini_arg = ini.to_string_lossy().into_owned();
    let mut run = Run::start(
        Imperium,
        s.tmp.path(),
        &["--ini".into(), ini_arg.clone()],
        None,
    );
    run.wait_file(&run.out, start_line(Imperium));
    let out = run.output();
    assert!(
        out.contains("WARN")
            && out.contains(&format!("{}:3: unknown option 'frobnicate'", ini.display())),
        "{out}"
    );
    run.assert_running();
    drop(run);
    // ... an error with --strict, in both
    for kind in [Imperium, Uwsgi] {
        let mut run = Run::start(
            kind,
            s.tmp.path(),
            &["--strict".into(), "--ini".into(), ini_arg.clone()],
            None,
        );
        let st = run.wait_exit(T);
        assert!(!st.success(), "{kind:?}: {st:?}");
        let out = run.output();
        match kind {
            // uWSGI's own strict mode (the config language's), with the
            // file and line
            Imperium => assert!(
                out.contains(&format!(
                    "{} line 3: [strict-mode] unknown config directive: frobnicate",
                    ini.display()
                )),
                "{out}"
            ),
            Uwsgi => assert!(out.contains("frobnicate"), "{out}"),
        }
    }
}
