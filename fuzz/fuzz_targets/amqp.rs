//! amqp:// messages (`monitors::amqp::interpret`): routing key and body →
//! change.
//!
//! Input: the routing key, a NUL byte, the body (`app.ini\0[uwsgi]...`;
//! `\0/etc/uwsgi/app.ini` for an announced path).
#![no_main]

mod common;

use emperor::{Change, ChangeKey, ConfigSource, NamePolicy, VassalName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let Ok(routing_key) = std::str::from_utf8(key) else {
        return;
    };
    let opts = common::opts(&[]);
    let r = monitors::fuzzing::amqp_interpret(routing_key, body, &opts, ChangeKey::Stamp(1));
    let Ok(change) = r else { return };
    let name = match &change {
        Change::Remove(n) => n,
        Change::Upsert(s) => &s.name,
        other => panic!("amqp made {other:?}"),
    };
    assert!(VassalName::parse(name.as_str(), &opts.extensions, NamePolicy::Path).is_ok());
    if !routing_key.is_empty() {
        assert_eq!(name.as_str(), routing_key);
    }
    if let Change::Upsert(s) = &change {
        match &s.config {
            ConfigSource::Inline(t) => {
                assert!(emperor::protocol::check_config(t.as_bytes()).is_ok())
            }
            ConfigSource::Url(u) => assert!(u.starts_with("http://") || u.starts_with("https://")),
            ConfigSource::File(_) => {}
        }
    }
});
