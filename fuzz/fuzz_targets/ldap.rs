//! ldap:// URLs (`LdapUrl::parse`, `redact`) and LDAP entries
//! (`Entry::spec`, `parse_stamp`, `parse_csn`, `parse_generalized_time`).
//!
//! Input: the URL on the first line (`ldap://` is added when missing), then
//! the entry in LDIF's simple form, one `attribute: value` a line (a value
//! with backslash escapes `\n`, `\t`, `\\`; an attribute may repeat; a line
//! that is not UTF-8 is a binary value).
#![no_main]

mod common;

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use monitors::fuzzing::{ldap_redact, LdapEntry};
use monitors::ldap::{
    parse_csn, parse_generalized_time, parse_stamp, AttrMap, LdapOptions, LdapUrl,
};

/// After redaction, every `x-bindpw=` extension (any part from the fourth
/// `?` on) has the mask for its value.
fn check_redacted(shown: &str) {
    let Some((_, query)) = shown.split_once('?') else {
        return;
    };
    for part in query.split('?').skip(3) {
        for ext in part.split(',') {
            if let Some((kind, value)) = ext.trim_start_matches('!').split_once('=') {
                if kind.eq_ignore_ascii_case("x-bindpw") {
                    assert_eq!(value, "***", "x-bindpw left in {shown:?}");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let Ok(url) = std::str::from_utf8(lines.next().unwrap_or_default()) else {
        return;
    };
    let url = if url.starts_with("ldap://") {
        url.to_string()
    } else {
        format!("ldap://{url}")
    };
    let mut entry = LdapEntry {
        dn: "cn=fuzz".into(),
        attrs: HashMap::new(),
        bin_attrs: HashMap::new(),
    };
    for line in lines.take(32) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let Ok(attr) = std::str::from_utf8(&line[..colon]) else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        match std::str::from_utf8(value) {
            Ok(v) => {
                let v = common::unescape(v);
                for s in [v.clone(), format!("{v}#0#000#000")] {
                    let _ = parse_stamp(&s);
                    let _ = parse_csn(&s);
                    let _ = parse_generalized_time(&s);
                }
                entry.attrs.entry(attr.to_string()).or_default().push(v);
            }
            Err(_) => entry
                .bin_attrs
                .entry(attr.to_string())
                .or_default()
                .push(value.to_vec()),
        }
    }
    check_redacted(&ldap_redact(&url));
    let (map, key_attr) = match LdapUrl::parse(&url, &LdapOptions::default()) {
        Ok(u) => {
            let _ = (u.to_string(), u.server(), u.requested_attrs());
            (u.attrs.clone(), u.key_attr.clone())
        }
        Err(e) => {
            let _ = e.to_string();
            (AttrMap::default(), None)
        }
    };
    if let Ok(spec) = entry.spec(&map, key_attr.as_deref(), &common::opts(&[])) {
        assert!(!spec.name.as_str().contains('/'));
    }
});
