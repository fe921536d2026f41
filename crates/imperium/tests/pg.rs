//! pg:// end to end: a private PostgreSQL (testkit fixture), the imperium
//! binary, and real uWSGI vassals (Debian's uwsgi-core + python3 plugin)
//! or the test vassal, each reading its config over the config pipe.
//!
//! `--emperor-freq 3600` keeps polling out of the way: every change below
//! is acted on because of the NOTIFY trigger from docs/monitors/pg-notify.sql.

#![cfg(feature = "pg")]

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::procs::{alive, children, tree, wait_all_dead};
use testkit::servers::pg::PgServer;
use testkit::uwsgi::{http_get, uwsgi_bin, vassal_ini, vassal_ini_on, wait_answer, write_app};
use testkit::{record_lines, Imperium};

const T: Duration = Duration::from_secs(20);
const NOTIFY_SQL: &str = include_str!("../../../docs/monitors/pg-notify.sql");
const TABLE_SQL: &str =
    "CREATE TABLE vassals (name text PRIMARY KEY, config text, ts timestamptz NOT NULL DEFAULT now());";

fn pg_with_table() -> PgServer {
    let pg = PgServer::start();
    pg.psql(TABLE_SQL);
    pg.psql(NOTIFY_SQL);
    pg
}

fn emperor(cwd: &Path, pg: &PgServer, binary: &Path) -> Imperium {
    Imperium::start(
        cwd,
        [
            "--emperor".as_ref(),
            format!("pg://{}", pg.conninfo()).as_ref(),
            "--emperor-freq".as_ref(),
            "3600".as_ref(),
            "--binary-path".as_ref(),
            binary.as_os_str(),
            "--reload-mercy".as_ref(),
            "10".as_ref(),
        ],
    )
}

/// `text` as an SQL string literal.
fn lit(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn master_of(worker: u32) -> u32 {
    testkit::procs::ppid(worker).expect("worker has a parent")
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn assert_no_password(emp: &Imperium) {
    let log = emp.log();
    assert!(
        !log.contains(PgServer::PASSWORD),
        "the password appears in the imperium log:\n{log}"
    );
    assert!(
        log.contains("password=***"),
        "the monitor is shown redacted:\n{log}"
    );
}

#[test]
fn insert_update_and_delete_drive_real_uwsgi_vassals() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let pg = pg_with_table();
    let mut emp = emperor(tmp.path(), &pg, &uwsgi_bin());

    // insert: a vassal started as `uwsgi --ini emperor://app.ini` that reads
    // its config from the pipe and serves HTTP
    let (ini, port) = vassal_ini(&app, "one");
    pg.psql(&format!(
        "INSERT INTO vassals VALUES ('app.ini', {}, now())",
        lit(&ini)
    ));
    let worker = wait_answer(port, "one", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    let master = master_of(worker);
    assert_eq!(testkit::procs::ppid(master), Some(emp.pid()));
    let argv = cmdline(master);
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "--ini" && w[1] == "emperor://app.ini"),
        "argv: {argv:?}"
    );
    emp.wait_log("spawned uwsgi instance app.ini", T);

    // new config + larger ts: graceful reload (same master), and the reloaded
    // vassal asks for its config again and gets the new text
    let workers_before = children(master);
    pg.psql(&format!(
        "UPDATE vassals SET config = {}, ts = now() WHERE name = 'app.ini'",
        lit(&vassal_ini_on(&app, "two", port))
    ));
    emp.wait_log("reload the uwsgi instance app.ini", T);
    let w2 = wait_answer(port, "two", T)
        .unwrap_or_else(|| panic!("reloaded vassal never answered:\n{}", emp.log()));
    assert_eq!(master_of(w2), master, "graceful reload keeps the master");
    assert!(children(master).iter().all(|w| !workers_before.contains(w)));

    // a larger ts alone reloads again, with the same (current) config
    pg.psql("UPDATE vassals SET ts = ts + interval '1 second' WHERE name = 'app.ini'");
    emp.wait_log_n("reload the uwsgi instance app.ini", 2, T);
    let ok = testkit::servers::wait_until(T, || {
        http_get(port, "/")
            .and_then(|b| testkit::uwsgi::parse_answer(&b))
            .is_some_and(|(w, m)| m == "two" && !workers_before.contains(&w) && w != w2)
    });
    assert!(ok, "no new worker with the current config:\n{}", emp.log());
    assert_eq!(master_of(wait_answer(port, "two", T).unwrap()), master);

    // a config change without a ts change does nothing (as in uWSGI)
    pg.psql(&format!(
        "UPDATE vassals SET config = {} WHERE name = 'app.ini'",
        lit(&vassal_ini_on(&app, "three", port))
    ));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(emp.count("reload the uwsgi instance app.ini"), 2);

    // delete: the vassal and all its processes stop
    let all = tree(master);
    pg.psql("DELETE FROM vassals WHERE name = 'app.ini'");
    emp.wait_log("removed uwsgi instance app.ini", T);
    assert!(wait_all_dead(&all, T), "left: {:?}", tree(master));
    assert!(http_get(port, "/").is_none());
    assert_no_password(&emp);
    assert!(emp.stop().success());
}

#[test]
fn the_test_vassal_sees_each_change_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("v.rec");
    let pg = pg_with_table();
    let vassal = testkit::test_vassal_bin();
    let emp = emperor(tmp.path(), &pg, &vassal);
    emp.wait_log("is connected", T);
    let cfg = |marker: &str| format!("[vassal]\nrecord = {}\nmarker = {marker}\n", rec.display());
    let seen = |want: &str| {
        testkit::servers::wait_until(Duration::from_secs(1), || {
            record_lines(&rec).iter().any(|l| l.contains(want))
        })
    };

    let t = Instant::now();
    pg.psql(&format!(
        "INSERT INTO vassals VALUES ('t.ini', {}, now())",
        lit(&cfg("a"))
    ));
    assert!(
        seen("gen=0 marker=a config=emperor"),
        "insert not seen within 1 s: {:?}\n{}",
        record_lines(&rec),
        emp.log()
    );
    eprintln!("insert -> vassal started: {:?}", t.elapsed());

    let t = Instant::now();
    pg.psql(&format!(
        "UPDATE vassals SET config = {}, ts = now() WHERE name = 't.ini'",
        lit(&cfg("b"))
    ));
    assert!(
        seen("gen=1 marker=b config=emperor"),
        "update not seen within 1 s: {:?}\n{}",
        record_lines(&rec),
        emp.log()
    );
    eprintln!(
        "update -> vassal reloaded with the new config: {:?}",
        t.elapsed()
    );

    let t = Instant::now();
    pg.psql("DELETE FROM vassals");
    assert!(
        seen("stop byte="),
        "delete not seen within 1 s: {:?}\n{}",
        record_lines(&rec),
        emp.log()
    );
    eprintln!("delete -> vassal stopped: {:?}", t.elapsed());
    let lines = record_lines(&rec);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("start")).count(),
        2,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| *l == "reload").count(),
        1,
        "{lines:?}"
    );
}

#[test]
fn vassals_keep_running_while_the_database_is_down_and_resync_after() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let mut pg = pg_with_table();
    let (ini_a, port_a) = vassal_ini(&app, "a");
    let (ini_b, port_b) = vassal_ini(&app, "b");
    pg.psql(&format!(
        "INSERT INTO vassals VALUES ('a.ini', {}, now()), ('b.ini', {}, now())",
        lit(&ini_a),
        lit(&ini_b)
    ));
    let emp = emperor(tmp.path(), &pg, &uwsgi_bin());
    let wa = wait_answer(port_a, "a", T).unwrap_or_else(|| panic!("a:\n{}", emp.log()));
    wait_answer(port_b, "b", T).unwrap_or_else(|| panic!("b:\n{}", emp.log()));
    let master_a = master_of(wa);

    pg.stop();
    emp.wait_log("is degraded", T);
    // a few reconnect attempts later, both vassals still serve and nothing
    // was stopped; the outage was logged once
    std::thread::sleep(Duration::from_secs(3));
    assert!(wait_answer(port_a, "a", Duration::from_secs(2)).is_some());
    assert!(wait_answer(port_b, "b", Duration::from_secs(2)).is_some());
    assert!(alive(master_a));
    let log = emp.log();
    assert!(!log.contains("stop the uwsgi instance"), "{log}");
    assert_eq!(emp.count("is degraded"), 1, "{log}");

    // back: a fresh query, and LISTEN works again (b removed, c added)
    pg.start_again();
    emp.wait_log("is connected", T);
    let (ini_c, port_c) = vassal_ini(&app, "c");
    pg.psql(&format!(
        "BEGIN; DELETE FROM vassals WHERE name = 'b.ini';
         INSERT INTO vassals VALUES ('c.ini', {}, now()); COMMIT;",
        lit(&ini_c)
    ));
    wait_answer(port_c, "c", T).unwrap_or_else(|| panic!("c:\n{}", emp.log()));
    emp.wait_log("removed uwsgi instance b.ini", T);
    assert!(wait_answer(port_a, "a", Duration::from_secs(2)).is_some());
    assert_eq!(master_of(wait_answer(port_a, "a", T).unwrap()), master_a);
    assert_no_password(&emp);
}

#[test]
fn bad_rows_are_logged_and_skipped_while_good_rows_run() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("good.rec");
    let pg = pg_with_table();
    pg.psql(&format!(
        "INSERT INTO vassals VALUES
           ('good.ini', {}, now()),
           ('../evil.ini', '[vassal]', now()),
           ('notes.txt', '[vassal]', now()),
           ('huge.ini', repeat('x', 70000), now()),
           ('nocfg.ini', NULL, now())",
        lit(&format!(
            "[vassal]\nrecord = {}\nmarker = g\n",
            rec.display()
        ))
    ));
    let emp = emperor(tmp.path(), &pg, &testkit::test_vassal_bin());
    let ok = testkit::servers::wait_until(T, || {
        record_lines(&rec).iter().any(|l| l.contains("marker=g"))
    });
    assert!(ok, "good vassal never started:\n{}", emp.log());
    emp.wait_log("../evil.ini", T);
    let log = emp.log();
    for needle in [
        "vassal huge.ini skipped: config is 70000 bytes",
        "notes.txt",
        "vassal nocfg.ini skipped: the config column is NULL",
    ] {
        assert!(log.contains(needle), "{needle:?} not logged:\n{log}");
    }
    assert_eq!(emp.count("spawned uwsgi instance"), 1, "{log}");
}

/// Limits from a row's limit columns (`memory_max`, `pids_max`, found by
/// name), over the `[imperium]` section of the config column, which
/// applies when the row sets none; a bad limit column skips its row and
/// says why.
#[test]
fn limit_columns_and_the_inline_section_limit_vassals() {
    if !testkit::procs::hybrid_v1(&["memory", "pids"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pg = PgServer::start();
    pg.psql("CREATE TABLE vassals (name text PRIMARY KEY, config text, ts timestamptz NOT NULL DEFAULT now(), memory_max text, pids_max int);");
    pg.psql(NOTIFY_SQL);
    let rec = |n: &str| tmp.path().join(format!("{n}.rec"));
    let cfg = |n: &str, section: &str| {
        lit(&format!(
            "[vassal]\nrecord = {}\n{section}",
            rec(n).display()
        ))
    };
    pg.psql(&format!(
        "INSERT INTO vassals VALUES
           ('rec.ini', {}, now(), '32M', 7),
           ('sec.ini', {}, now(), NULL, NULL),
           ('both.ini', {}, now(), '40M', NULL),
           ('bad.ini', {}, now(), 'lots', NULL)",
        cfg("rec", ""),
        cfg("sec", "[imperium]\nmemory-max = 24M\n"),
        cfg("both", "[imperium]\nmemory-max = 24M\npids-max = 9\n"),
        cfg("bad", ""),
    ));
    let emp = Imperium::start(
        tmp.path(),
        [
            "--emperor".as_ref(),
            format!(
                "pg://{};SELECT name, config, ts, memory_max, pids_max FROM vassals",
                pg.conninfo()
            )
            .as_ref(),
            "--emperor-freq".as_ref(),
            "3600".as_ref(),
            "--binary-path".as_ref(),
            testkit::test_vassal_bin().as_os_str(),
        ],
    );
    let pid_of = |n: &str| -> u32 {
        let ok = testkit::servers::wait_until(T, || !testkit::record_starts(&rec(n)).is_empty());
        assert!(ok, "{n} never started:\n{}", emp.log());
        testkit::record_starts(&rec(n))[0]
    };
    let read = testkit::procs::v1_value;
    // the row's columns
    let p = pid_of("rec");
    assert_eq!(read(p, "memory", "memory.limit_in_bytes"), 32 << 20);
    assert_eq!(read(p, "pids", "pids.max"), 7);
    // the inline [imperium] section, where the row sets no limit
    assert_eq!(
        read(pid_of("sec"), "memory", "memory.limit_in_bytes"),
        24 << 20
    );
    // the column over the section, the section's other limit kept
    let p = pid_of("both");
    assert_eq!(read(p, "memory", "memory.limit_in_bytes"), 40 << 20);
    assert_eq!(read(p, "pids", "pids.max"), 9);
    // a bad limit column: that row is skipped, with why
    emp.wait_log("vassal bad.ini skipped: the memory_max column:", T);
    assert!(!rec("bad").exists(), "{}", emp.log());
    // a new limit, the same ts: the vassal restarts under it
    let first = pid_of("rec");
    pg.psql("UPDATE vassals SET memory_max = '48M' WHERE name = 'rec.ini'");
    let mut second = None;
    let ok = testkit::servers::wait_until(T, || {
        second = testkit::record_starts(&rec("rec"))
            .into_iter()
            .find(|p| *p != first);
        second.is_some()
    });
    assert!(ok, "rec.ini was not restarted:\n{}", emp.log());
    assert_eq!(
        read(second.unwrap(), "memory", "memory.limit_in_bytes"),
        48 << 20
    );
}
