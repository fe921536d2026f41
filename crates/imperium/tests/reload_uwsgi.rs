//! `--emperor-reload-mode checked` with real uWSGI vassals (docs/reloads.md):
//! a broken change is rejected before any reload while clients keep being
//! served, the next change is checked again, `ctl reload --force` applies
//! a rejected change, and `--emperor-reload-check COMMAND` gates reloads.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::servers::{free_port, wait_until};
use testkit::uwsgi::{http_get, uwsgi_bin, vassal_ini_on, wait_answer, Load};
use testkit::{ctl, ctl_ok, Imperium};

const T: Duration = Duration::from_secs(30);

type Setup = testkit::uwsgi::AppTree;

fn setup() -> Setup {
    Setup::with_app()
}

fn unix_sock(s: &Setup) -> PathBuf {
    s.tmp.path().join("app.sock")
}

/// app.ini on `port` (and a UNIX socket) answering with `marker`;
/// `app` replaces the app's path (a missing file breaks the config).
fn write(s: &Setup, port: u16, marker: &str, app: Option<&Path>) {
    let ini = vassal_ini_on(app.unwrap_or(&s.app), marker, port);
    let ini = format!("{ini}socket = {}\n", unix_sock(s).display());
    std::fs::write(s.vassals.join("app.ini"), ini).unwrap();
}

fn start(s: &Setup, extra: &[&str]) -> Imperium {
    let mut args = testkit::uwsgi_emperor_args(&s.vassals, extra);
    args.push("--emperor-control-socket".into());
    args.push(s.ctl_sock().into());
    let emp = Imperium::start(s.tmp.path(), args);
    assert!(wait_until(T, || s.ctl_sock().exists()));
    emp
}

#[test]
fn checked_mode_rejects_a_broken_change_before_any_reload_and_applies_a_good_one() {
    uwsgi_bin();
    let s = setup();
    let port = free_port();
    write(&s, port, "v1", None);
    let mut emp = start(&s, &["--emperor-reload-mode", "checked"]);
    ctl_ok(&s.ctl_sock(), &["wait", "app.ini", "--timeout", "30"]);
    wait_answer(port, "v1", T).expect("v1 answers");
    let pid = s.show("app.ini")["pid"].clone();
    let inode = std::fs::metadata(unix_sock(&s)).unwrap().ino();

    // a broken change (its app file does not exist) under client load
    let load = Load::start(port);
    std::thread::sleep(Duration::from_millis(300));
    write(&s, port, "v2", Some(&s.tmp.path().join("missing.py")));
    emp.wait_log(
        "the new config of vassal app.ini was REJECTED by its check",
        T,
    );
    std::thread::sleep(Duration::from_millis(500));
    let (answered, failed) = load.stop();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed",
        answered + failed
    );
    assert!(answered > 20, "only {answered} requests answered");
    wait_answer(port, "v1", T).expect("the old instance still serves v1");
    let shown = s.show("app.ini");
    assert_eq!(shown["pid"], pid, "the vassal was restarted: {shown:#}");
    assert_eq!(shown["reloads"], 0, "{shown:#}");
    assert_eq!(shown["serving"], true, "{shown:#}");
    let reason = shown["rejected"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("exited with code 22") && reason.contains("no app loaded"),
        "{shown:#}"
    );
    // the throwaway start bound the same sockets without touching them
    assert_eq!(
        std::fs::metadata(unix_sock(&s)).unwrap().ino(),
        inode,
        "the check replaced the running instance's UNIX socket"
    );
    assert!(ctl_ok(&s.ctl_sock(), &["list"]).contains("rejected"));
    // an operator's reload is refused without --force
    let o = ctl(&s.ctl_sock(), &["reload", "app.ini"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("its last change was rejected") && err.contains("--force"),
        "{err}"
    );

    // the next change is checked again, passes and is reloaded in place
    write(&s, port, "v3", None);
    emp.wait_log("the new config of vassal app.ini passed its check", T);
    wait_answer(port, "v3", T).expect("v3 answers after the reload");
    let shown = s.show("app.ini");
    assert_eq!(shown["pid"], pid, "{shown:#}");
    assert_eq!(shown["reloads"], 1, "{shown:#}");
    assert!(shown["rejected"].is_null(), "{shown:#}");
    assert_eq!(emp.count("REJECTED"), 1, "{}", emp.log());
    emp.stop();
}

#[test]
fn a_reload_check_command_gates_the_reload_and_force_overrides_it() {
    uwsgi_bin();
    let s = setup();
    let port = free_port();
    write(&s, port, "good-1", None);
    let seen = s.tmp.path().join("checked.txt");
    let check = format!(
        "echo {{name}} >> {}; grep -q MARKER=good {{config}}",
        seen.display()
    );
    let mut emp = start(
        &s,
        &[
            "--emperor-reload-mode",
            "checked",
            "--emperor-reload-check",
            &check,
            "--emperor-reload-check-no-sandbox",
        ],
    );
    wait_answer(port, "good-1", T).expect("good-1 answers");
    // a change the command rejects: no reload
    write(&s, port, "bad-2", None);
    emp.wait_log("the new config of vassal app.ini was REJECTED", T);
    let shown = s.show("app.ini");
    assert_eq!(shown["reloads"], 0, "{shown:#}");
    let reason = shown["rejected"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("--emperor-reload-check") && reason.contains("exited with code 1"),
        "{reason}"
    );
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "app.ini\n");
    wait_answer(port, "good-1", T).expect("the old config still serves");
    // SIGHUP leaves it alone; a forced reload applies the change
    emp.signal(nix::sys::signal::Signal::SIGHUP);
    emp.wait_log(
        "not reloading vassal app.ini: its last change was rejected",
        T,
    );
    ctl_ok(&s.ctl_sock(), &["reload", "app.ini", "--force"]);
    wait_answer(port, "bad-2", T).expect("the forced change is served");
    let shown = s.show("app.ini");
    assert_eq!(shown["reloads"], 1, "{shown:#}");
    assert!(shown["rejected"].is_null(), "{shown:#}");
    emp.stop();
}

#[test]
fn reload_check_options_are_refused_where_they_cannot_apply() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (
            vec!["--emperor-reload-check", "true"],
            "apply to --emperor-reload-mode checked only",
        ),
        (
            vec![
                "--emperor-reload-mode",
                "checked",
                "--emperor-reload-check-no-sandbox",
            ],
            "checks nothing",
        ),
        (vec!["--emperor-reload-mode", "swap-ish"], "invalid value"),
    ] {
        let o = std::process::Command::new(testkit::imperium_bin())
            .arg("--emperor")
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn the_sandbox_loads_an_inline_config_and_leaves_nothing_behind() {
    uwsgi_bin();
    let s = setup();
    let port = free_port();
    let inside = "/tmp/imperium-check/inline.ini";
    let run = |app: &Path| {
        let mut c = std::process::Command::new(testkit::imperium_bin());
        c.args([
            emperor::sandbox::SANDBOX_ARG,
            "--timeout-ms",
            "20000",
            "--cwd",
        ])
        .arg(s.tmp.path())
        .args(["--inline", inside, "--"])
        .arg(uwsgi_bin())
        .args([
            "--ini",
            inside,
            "--need-app",
            "--hook-post-app",
            emperor::sandbox::APP_LOADED_HOOK,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let ini = vassal_ini_on(app, "inline", port);
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ini.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let good = run(&s.app);
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let bad = run(&s.tmp.path().join("missing.py"));
    assert_eq!(
        bad.status.code(),
        Some(22),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // what the check wrote stayed in the sandbox, and nothing of it runs
    assert!(
        !Path::new(inside).exists(),
        "{inside} leaked out of the sandbox"
    );
    assert!(
        http_get(port, "/").is_none(),
        "the throwaway instance is still up"
    );
}
