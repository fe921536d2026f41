//! zmq:// multipart messages (`monitors::zmq::interpret`): parts → change.
//!
//! Input: the message's parts separated by NUL bytes
//! (`touch\0app.ini\0[uwsgi]...`).
#![no_main]

mod common;

use emperor::{Change, ChangeKey, ConfigSource, NamePolicy, VassalName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts: Vec<Vec<u8>> = data.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    let opts = common::opts(&[]);
    let Ok(change) = monitors::fuzzing::zmq_interpret(&parts, &opts, ChangeKey::Stamp(1)) else {
        return;
    };
    match change {
        Change::Remove(name) => {
            assert!(VassalName::parse(name.as_str(), &opts.extensions, NamePolicy::Path).is_ok())
        }
        Change::Upsert(spec) => {
            assert!(
                VassalName::parse(spec.name.as_str(), &opts.extensions, NamePolicy::Path).is_ok()
            );
            if let ConfigSource::Inline(text) = &spec.config {
                assert!(emperor::protocol::check_config(text.as_bytes()).is_ok());
                assert!(!spec.name.as_str().contains('/'));
            }
            if let Some(s) = &spec.socket {
                assert!(!s.is_empty() && !s.chars().any(char::is_control));
            }
        }
        other => panic!("zmq made {other:?}"),
    }
});
