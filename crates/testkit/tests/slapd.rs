//! The slapd fixture: starts, takes the shipped vassal schema, keeps its
//! data across a restart.

use std::process::Command;

use testkit::servers::slapd::{vassal_schema_ldif, Slapd, SlapdOptions};

fn search(s: &Slapd, filter: &str) -> String {
    let out = Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-H",
            &s.url(),
            "-b",
            Slapd::BASE,
            filter,
            "uwsgiVassalName",
        ])
        .output()
        .expect("ldapsearch");
    assert!(
        out.status.success(),
        "ldapsearch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn schema_loads_and_data_survives_a_restart() {
    let mut s = Slapd::start();
    // without the schema the object class is unknown
    let err = s
        .try_ldapadd("dn: uwsgiVassalName=a.ini,ou=vassals,dc=example,dc=com\nobjectClass: uwsgiVassal\nuwsgiVassalName: a.ini\nuwsgiVassalConfig: [uwsgi]\n")
        .unwrap_err();
    assert!(
        err.contains("uwsgiVassal") || err.contains("undefined"),
        "{err}"
    );
    s.load_schema(&vassal_schema_ldif());
    s.ldapadd("dn: uwsgiVassalName=a.ini,ou=vassals,dc=example,dc=com\nobjectClass: uwsgiVassal\nuwsgiVassalName: a.ini\nuwsgiVassalConfig: [uwsgi]\nuwsgiVassalUid: 1000\nuwsgiVassalGid: 1000\n");
    // SINGLE-VALUE is enforced by the server
    let err = s
        .try_ldapadd("dn: uwsgiVassalName=b.ini,ou=vassals,dc=example,dc=com\nobjectClass: uwsgiVassal\nuwsgiVassalName: b.ini\nuwsgiVassalConfig: x\nuwsgiVassalConfig: y\n")
        .unwrap_err();
    assert!(err.contains("multiple values"), "{err}");
    assert!(search(&s, "(objectClass=uwsgiVassal)").contains("uwsgiVassalName: a.ini"));
    s.restart();
    assert!(search(&s, "(uwsgiVassalUid=1000)").contains("uwsgiVassalName: a.ini"));
}

#[test]
fn starts_without_syncprov() {
    let s = Slapd::start_with(SlapdOptions { syncprov: false });
    // the vassal schema is not loaded here
    assert!(search(&s, "(objectClass=uwsgiVassal)").is_empty());
    let out = Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-H",
            &s.url(),
            "-b",
            Slapd::BASE,
            "(ou=vassals)",
            "ou",
        ])
        .output()
        .expect("ldapsearch");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ou: vassals"));
}
