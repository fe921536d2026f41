//! ldap:// end to end: a private slapd with the shipped schema, imperium,
//! and real uWSGI vassals that get their config over the config pipe.

#![cfg(feature = "ldap")]

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::procs::{ppid, tree, wait_all_dead};
use testkit::servers::slapd::{vassal_schema_ldif, Slapd};
use testkit::uwsgi::{http_get, uwsgi_bin, vassal_ini, vassal_ini_on, wait_answer, write_app};
use testkit::Imperium;

const T: Duration = Duration::from_secs(20);

fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn dn(name: &str) -> String {
    format!("uwsgiVassalName={name},{}", Slapd::VASSALS)
}

fn add_vassal(s: &Slapd, name: &str, config: &str) {
    s.ldapadd(&format!(
        "dn: {}\nobjectClass: uwsgiVassal\nuwsgiVassalName: {name}\nuwsgiVassalConfig:: {}\n",
        dn(name),
        b64(config)
    ));
}

fn set_config(s: &Slapd, name: &str, config: &str) {
    s.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nreplace: uwsgiVassalConfig\nuwsgiVassalConfig:: {}\n",
        dn(name),
        b64(config)
    ));
}

fn slapd() -> Slapd {
    let s = Slapd::start();
    s.load_schema(&vassal_schema_ldif());
    s
}

fn emperor(cwd: &Path, s: &Slapd, freq: &str, extra: &[&str]) -> Imperium {
    let url = format!("{}/{}", s.url(), Slapd::VASSALS);
    let mut args: Vec<String> = vec![
        "--emperor".into(),
        url,
        "--emperor-freq".into(),
        freq.into(),
        "--binary-path".into(),
        uwsgi_bin().display().to_string(),
        "--reload-mercy".into(),
        "10".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Imperium::start(cwd, args)
}

fn master_of(worker: u32) -> u32 {
    ppid(worker).expect("worker has a parent")
}

/// A 60 s poll period: each step is seen within a couple of seconds only
/// because slapd pushes the change (RFC 4533 content sync).
#[test]
fn create_change_delete_with_real_uwsgi() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let s = slapd();
    let mut emp = emperor(tmp.path(), &s, "60", &[]);
    emp.wait_log("ldap monitor connected", T);

    let (ini, port) = vassal_ini(&app, "one");
    let t = Instant::now();
    add_vassal(&s, "app.ini", &ini);
    let worker = wait_answer(port, "one", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    eprintln!("entry added -> vassal answering: {:?}", t.elapsed());
    let master = master_of(worker);
    assert_eq!(
        ppid(master),
        Some(emp.pid()),
        "the master is imperium's child"
    );
    // the config came over the config pipe, not from a file
    let cmdline = std::fs::read(format!("/proc/{master}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("emperor://app.ini"), "{cmdline}");

    let t = Instant::now();
    set_config(&s, "app.ini", &vassal_ini_on(&app, "two", port));
    emp.wait_log("reload the uwsgi instance app.ini", T);
    let w2 = wait_answer(port, "two", T)
        .unwrap_or_else(|| panic!("reloaded vassal never answered:\n{}", emp.log()));
    eprintln!("entry modified -> new config answering: {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "far quicker than the 60 s poll"
    );
    assert_eq!(master_of(w2), master, "graceful reload keeps the master");

    let all = tree(master);
    let t = Instant::now();
    s.ldapdelete(&dn("app.ini"));
    emp.wait_log("removed uwsgi instance app.ini", T);
    assert!(wait_all_dead(&all, T), "vassal processes left: {all:?}");
    eprintln!("entry deleted -> vassal gone: {:?}", t.elapsed());
    assert!(http_get(port, "/").is_none());
    assert!(emp.stop().success());
}

/// slapd stopped while vassals run: they keep running, the monitor says it
/// is degraded, reconnects by itself when slapd is back and resyncs; a bad
/// record among good ones is skipped with a reason.
#[test]
fn server_restart_keeps_vassals_and_bad_records_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let mut s = slapd();
    let (ini_a, port_a) = vassal_ini(&app, "a");
    add_vassal(&s, "a.ini", &ini_a);
    add_vassal(&s, "noext", "[uwsgi]\nmaster = true\n");
    add_vassal(&s, "-x.ini", "[uwsgi]\nmaster = true\n");
    let mut emp = emperor(tmp.path(), &s, "1", &[]);
    let wa = wait_answer(port_a, "a", T)
        .unwrap_or_else(|| panic!("vassal a never answered:\n{}", emp.log()));
    emp.wait_log("skipping entry uwsgiVassalName=noext", T);
    emp.wait_log("skipping entry uwsgiVassalName=-x.ini", T);
    let master_a = master_of(wa);

    s.stop();
    emp.wait_log("degraded", T);
    // several poll periods pass while the directory is down
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        wait_answer(port_a, "a", Duration::from_secs(2)).is_some_and(|w| master_of(w) == master_a),
        "the vassal kept running during the outage:\n{}",
        emp.log()
    );
    assert_eq!(
        emp.count("removed uwsgi instance a.ini"),
        0,
        "{}",
        emp.log()
    );

    s.restart();
    emp.wait_log_n("ldap monitor connected", 2, T);
    // after the reconnect both a change and a new entry are acted on
    let (ini_b, port_b) = vassal_ini(&app, "b");
    add_vassal(&s, "b.ini", &ini_b);
    set_config(&s, "a.ini", &vassal_ini_on(&app, "a2", port_a));
    wait_answer(port_b, "b", T)
        .unwrap_or_else(|| panic!("vassal b never answered:\n{}", emp.log()));
    let w = wait_answer(port_a, "a2", T)
        .unwrap_or_else(|| panic!("a was not reloaded:\n{}", emp.log()));
    assert_eq!(master_of(w), master_a, "reloaded in place, not respawned");
    assert!(emp.stop().success());
}

/// Bind credentials from the options: the DN from --emperor-ldap-binddn,
/// the password from --emperor-ldap-bindpw-file; the password never shows
/// in the log, a wrong one keeps the emperor up and degraded.
#[test]
fn bind_credentials_from_options_never_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let s = slapd();
    let (ini, port) = vassal_ini(&app, "bound");
    add_vassal(&s, "bound.ini", &ini);

    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not-the-password-xyzzy\n").unwrap();
    let mut emp = emperor(
        tmp.path(),
        &s,
        "1",
        &[
            "--emperor-ldap-binddn",
            Slapd::ADMIN_DN,
            "--emperor-ldap-bindpw-file",
            wrong.to_str().unwrap(),
        ],
    );
    emp.wait_log("invalidCredentials", T);
    assert!(http_get(port, "/").is_none(), "nothing runs without a bind");
    assert!(!emp.log().contains("xyzzy"), "{}", emp.log());
    assert!(emp.stop().success());

    let right = tmp.path().join("right");
    std::fs::write(&right, format!("{}\n", Slapd::PASSWORD)).unwrap();
    let mut emp = emperor(
        tmp.path(),
        &s,
        "1",
        &[
            "--emperor-ldap-binddn",
            Slapd::ADMIN_DN,
            "--emperor-ldap-bindpw-file",
            right.to_str().unwrap(),
        ],
    );
    wait_answer(port, "bound", T).unwrap_or_else(|| panic!("no answer:\n{}", emp.log()));
    let log = emp.log();
    assert!(log.contains("bindname=cn=admin,dc=example,dc=com"), "{log}");
    assert!(
        !log.contains(Slapd::PASSWORD),
        "the password was logged:\n{log}"
    );
    assert!(emp.stop().success());
}

/// Two emperors (two hosts) share one directory: each selects its vassals
/// with its own filter, and an entry moved from one host to the other
/// moves its vassal.
#[test]
fn two_emperors_share_one_directory_by_filter() {
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let s = slapd();
    let (ini1, port1) = vassal_ini(&app, "w1");
    let (ini2, port2) = vassal_ini(&app, "w2");
    for (name, ini, host) in [("w1.ini", &ini1, "web1"), ("w2.ini", &ini2, "web2")] {
        s.ldapadd(&format!(
            "dn: {}\nobjectClass: uwsgiVassal\nuwsgiVassalName: {name}\nuwsgiVassalConfig:: {}\ndescription: {host}\n",
            dn(name),
            b64(ini)
        ));
    }
    let host = |h: &str| {
        let url = format!(
            "{}/{}???(&(objectClass=uwsgiVassal)(description={h}))",
            s.url(),
            Slapd::VASSALS
        );
        Imperium::start(
            tmp.path(),
            [
                "--emperor",
                &url,
                "--emperor-freq",
                "60",
                "--binary-path",
                &uwsgi_bin().display().to_string(),
            ],
        )
    };
    let mut e1 = host("web1");
    let mut e2 = host("web2");
    let w1 = wait_answer(port1, "w1", T).unwrap_or_else(|| panic!("w1:\n{}", e1.log()));
    let w2 = wait_answer(port2, "w2", T).unwrap_or_else(|| panic!("w2:\n{}", e2.log()));
    assert_eq!(
        ppid(master_of(w1)),
        Some(e1.pid()),
        "w1 runs under emperor 1"
    );
    assert_eq!(
        ppid(master_of(w2)),
        Some(e2.pid()),
        "w2 runs under emperor 2"
    );
    assert_eq!(e1.count("w2.ini"), 0, "{}", e1.log());
    assert_eq!(e2.count("w1.ini"), 0, "{}", e2.log());

    // move w2 to web1: emperor 2 stops it, emperor 1 starts it
    let old = tree(master_of(w2));
    s.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nreplace: description\ndescription: web1\n",
        dn("w2.ini")
    ));
    e2.wait_log("removed uwsgi instance w2.ini", T);
    assert!(wait_all_dead(&old, T), "old w2 processes left: {old:?}");
    let w2 = wait_answer(port2, "w2", T).unwrap_or_else(|| panic!("moved w2:\n{}", e1.log()));
    assert_eq!(
        ppid(master_of(w2)),
        Some(e1.pid()),
        "w2 now runs under emperor 1"
    );
    assert!(e1.stop().success());
    assert!(e2.stop().success());
}
