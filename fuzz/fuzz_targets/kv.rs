//! etcd:// and zoo:// values with their `#!imperium` header
//! (`monitors::kv::parse_value`), child names (`classify_name`) and the
//! URL pieces the two share (`split_url`, `hosts_with_port`, `redact_url`).
//!
//! Input: the child name on the first line, what follows `zoo://` or
//! `etcd://` on the second, the value (as stored in the node or key) after.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use monitors::kv::{
    classify_name, hosts_with_port, parse_value, redact_url, split_url, NameKind, HEADER_MARKER,
};

fuzz_target!(|data: &[u8]| {
    let mut it = data.splitn(3, |&b| b == b'\n');
    let (Ok(name), Ok(url_rest)) = (
        std::str::from_utf8(it.next().unwrap_or_default()),
        std::str::from_utf8(it.next().unwrap_or_default()),
    ) else {
        return;
    };
    let value = it.next().unwrap_or_default();
    if let Ok(rec) = parse_value(value) {
        assert!(!rec.config.trim().is_empty());
        // the header line is never passed on to the vassal
        let text = std::str::from_utf8(value).unwrap();
        if text.starts_with(HEADER_MARKER) && rec.config.len() < text.len() {
            assert!(text.ends_with(rec.config.as_str()));
        }
        if let Some(s) = &rec.socket {
            assert!(!s.is_empty());
        }
    }
    if let NameKind::Vassal(n) = classify_name(name, &common::opts(&[])) {
        assert_eq!(n.as_str(), name);
    }
    let _ = hosts_with_port(url_rest, 2181);
    let _ = redact_url(url_rest);
    for scheme in ["zoo://", "etcd://"] {
        let url = format!("{scheme}{}", url_rest);
        if let Ok(parts) = split_url(&url, url_rest, 2379, "no path") {
            assert!(parts.path.starts_with('/'));
            assert!(!parts.hosts.is_empty());
        }
    }
});
