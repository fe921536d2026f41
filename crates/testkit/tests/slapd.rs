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

/// The two shipped forms of the schema (cn=config LDIF for ldapadd,
/// slapd.conf include) define the same attribute types and object class.
#[test]
fn both_schema_forms_agree() {
    fn defs(text: &str, keywords: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur: Option<String> = None;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some(kw) = keywords.iter().find(|k| {
                line.to_ascii_lowercase()
                    .starts_with(&k.to_ascii_lowercase())
            }) {
                out.extend(cur.take());
                cur = Some(line[kw.len()..].trim().to_string());
            } else if line.starts_with(' ') {
                if let Some(c) = cur.as_mut() {
                    c.push(' ');
                    c.push_str(line.trim());
                }
            } else {
                out.extend(cur.take());
            }
        }
        out.extend(cur);
        out
    }
    let dir = vassal_schema_ldif();
    let ldif = std::fs::read_to_string(&dir).unwrap();
    let conf = std::fs::read_to_string(dir.with_extension("schema")).unwrap();
    let a = defs(&ldif, &["olcAttributeTypes:", "olcObjectClasses:"]);
    let b = defs(&conf, &["attributetype", "objectclass"]);
    assert_eq!(a.len(), 6, "{a:#?}");
    assert_eq!(a, b);
}
