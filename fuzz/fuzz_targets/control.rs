//! The control socket's requests (`emperor::control::Request`, one JSON
//! line) and uWSGI's datagram command packet (`parse_command_packet`).
#![no_main]

use emperor::control::{parse_command_packet, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        if let Ok(req) = serde_json::from_str::<Request>(line) {
            let again = serde_json::to_string(&req).expect("a request serialises");
            assert_eq!(serde_json::from_str::<Request>(&again).unwrap(), req);
        }
    }
    if let Ok(kv) = parse_command_packet(data) {
        // what was parsed encodes back to the packet's body, byte for byte
        let mut body = Vec::new();
        for (k, v) in &kv {
            assert!(!k.is_empty());
            for s in [k, v] {
                body.extend_from_slice(&(s.len() as u16).to_le_bytes());
                body.extend_from_slice(s.as_bytes());
            }
        }
        assert_eq!(body, data[4..]);
    }
});
