//! `imperium plan` (docs/plan.md): golden tests of its output over a
//! directory and a PostgreSQL table, with no emperor running and against a
//! running one (read through its control socket), which the plan must not
//! change. `UPDATE_GOLDEN=1` rewrites the files under tests/golden/.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::servers::wait_until;
use testkit::{ctl_ok, Imperium, VassalDir};

const T: Duration = Duration::from_secs(20);

/// Runs `imperium plan ARGS`: (exit code, stdout, stderr).
fn plan(cwd: &Path, args: &[OsString]) -> (i32, String, String) {
    let o = std::process::Command::new(testkit::imperium_bin())
        .arg("plan")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run imperium plan");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Compares `got` with tests/golden/`name`.
fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(got, want, "the plan differs from {}", path.display());
}

fn args(list: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    list.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// The vassals of the emperor on `sock`, by name: (state, reloads).
fn table(sock: &Path) -> Vec<(String, String, u64)> {
    let out = ctl_ok(sock, &["--json", "list"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["data"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap_or_default().to_string(),
                        v["state"].as_str().unwrap_or_default().to_string(),
                        v["reloads"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn all_running(sock: &Path, n: usize) -> bool {
    wait_until(T, || {
        sock.exists() && {
            let t = table(sock);
            t.len() == n && t.iter().all(|(_, s, _)| s == "running")
        }
    })
}

#[test]
fn plan_of_a_new_emperor_over_a_dir() {
    let d = VassalDir::new();
    d.write("a.ini", "");
    d.write("b.ini", "");
    let base = args(&[&"--emperor", &d.vassals]);
    let (code, out, err) = plan(d.tmp.path(), &base);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("planned against an empty table"), "{err}");
    golden("plan_dir_new.txt", &out);
    // tyrant mode: configs owned by root are refused, with the reason
    let mut tyrant = base.clone();
    tyrant.push("--emperor-tyrant".into());
    let (code, out, err) = plan(d.tmp.path(), &tyrant);
    assert_eq!(code, 2, "{err}");
    golden("plan_dir_tyrant.txt", &out);
    // a source that cannot be read is an error, and nothing is planned
    let (code, out, err) = plan(
        d.tmp.path(),
        &args(&[&"--emperor", &"dir:///nonexistent/x"]),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("cannot be read") || err.contains("/nonexistent/x"),
        "{err}"
    );
}

#[test]
fn plan_against_a_running_emperor_over_a_dir_changes_nothing() {
    let d = VassalDir::new();
    d.write("a.ini", "");
    d.write("b.ini", "");
    let sock = d.path("ctl.sock");
    let base = args(&[
        &"--emperor",
        &d.vassals,
        &"--binary-path",
        &testkit::test_vassal_bin(),
        &"--emperor-control-socket",
        &sock,
    ]);
    let mut emp = Imperium::start(d.tmp.path(), base.clone());
    assert!(all_running(&sock, 2), "{}", emp.log());
    // the same sources, the same table: nothing to do (the change keys the
    // control socket shows are the ones the sources give now)
    let (code, out, err) = plan(d.tmp.path(), &base);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("planned against the 2 vassal(s) of the emperor on"),
        "{err}"
    );
    golden("plan_dir_unchanged.txt", &out);
    // a change held by a pause is shown, and is not a change
    ctl_ok(&sock, &["pause", "a.ini"]);
    d.write("a.ini", "marker = new");
    emp.wait_log("holding the change", T);
    let (code, out, err) = plan(d.tmp.path(), &base);
    assert_eq!(code, 0, "{out}{err}");
    golden("plan_dir_held.txt", &out);
    assert!(table(&sock)
        .iter()
        .all(|(_, s, r)| s == "running" && *r == 0));
    emp.stop();
}

#[cfg(feature = "pg")]
#[test]
fn plan_over_a_pg_table_against_a_running_emperor() {
    use testkit::servers::pg::PgServer;
    let tmp = tempfile::tempdir().unwrap();
    let pg = PgServer::start();
    pg.psql("CREATE TABLE vassals (name text PRIMARY KEY, config text, ts timestamptz NOT NULL DEFAULT now());");
    let cfg = |n: &str| {
        format!(
            "'[vassal]\nrecord = {}\n'",
            tmp.path().join(format!("{n}.rec")).display()
        )
    };
    pg.psql(&format!(
        "INSERT INTO vassals VALUES ('a.ini', {}, now()), ('b.ini', {}, now())",
        cfg("a"),
        cfg("b")
    ));
    let sock: PathBuf = tmp.path().join("ctl.sock");
    // no NOTIFY trigger and a poll every hour: the running emperor does not
    // see the changes below, the plan does
    let base = args(&[
        &"--emperor",
        &format!("pg://{}", pg.conninfo()),
        &"--emperor-freq",
        &"3600",
        &"--binary-path",
        &testkit::test_vassal_bin(),
        &"--emperor-control-socket",
        &sock,
    ]);
    let (code, out, err) = plan(tmp.path(), &base[..base.len() - 2]);
    assert_eq!(code, 2, "{err}");
    golden("plan_pg_new.txt", &out);
    let mut emp = Imperium::start(tmp.path(), base.clone());
    assert!(all_running(&sock, 2), "{}", emp.log());
    let (code, out, err) = plan(tmp.path(), &base);
    assert_eq!(code, 0, "{out}{err}");
    pg.psql(&format!(
        "BEGIN; UPDATE vassals SET ts = now() + interval '1 minute' WHERE name = 'a.ini'; DELETE FROM vassals WHERE name = 'b.ini'; INSERT INTO vassals VALUES ('c.ini', {}, now()); COMMIT;",
        cfg("c")
    ));
    let (code, out, err) = plan(tmp.path(), &base);
    assert_eq!(code, 2, "{out}{err}");
    golden("plan_pg_changed.txt", &out);
    // the reload modes plan as they would run
    for (mode, file) in [
        ("swap", "plan_pg_swap.txt"),
        ("checked", "plan_pg_checked.txt"),
    ] {
        let mut with_mode = base.clone();
        with_mode.extend(args(&[&"--emperor-reload-mode", &mode]));
        if mode == "checked" {
            with_mode.extend(args(&[
                &"--emperor-reload-check",
                &"true",
                &"--emperor-reload-check-no-sandbox",
            ]));
        }
        let (code, out, err) = plan(tmp.path(), &with_mode);
        assert_eq!(code, 2, "{out}{err}");
        golden(file, &out);
    }
    // the plan did nothing: the emperor still runs a and b as they were
    let t = table(&sock);
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(t.iter().all(|(_, s, r)| s == "running" && *r == 0), "{t:?}");
    assert_eq!(emp.count("reload"), 0, "{}", emp.log());
    emp.stop();
}
