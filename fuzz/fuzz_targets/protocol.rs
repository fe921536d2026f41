//! The emperor protocol bytes (`VassalMessage::from_byte`) and the config
//! packet (`encode_config` / `decode_config_header` / `check_config`).
#![no_main]

use emperor::protocol::{
    check_config, decode_config_header, encode_config, VassalMessage, CONFIG_MODIFIER1,
    MAX_CONFIG_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // a vassal's byte stream: every byte decodes and encodes back
    for &b in data.iter().take(64) {
        assert_eq!(VassalMessage::from_byte(b).to_byte(), b);
    }
    // the config packet round trip
    let checked = check_config(data);
    match encode_config(data) {
        Ok(pkt) => {
            assert!(checked.is_ok());
            assert!(!data.is_empty() && data.len() <= MAX_CONFIG_LEN);
            assert_eq!(pkt[0], CONFIG_MODIFIER1);
            assert_eq!(
                decode_config_header([pkt[0], pkt[1], pkt[2], pkt[3]]),
                data.len()
            );
            assert_eq!(&pkt[4..], data);
        }
        Err(e) => assert_eq!(checked, Err(e)),
    }
    // any 4 bytes are a header a vassal reads
    if let Some(h) = data.get(..4) {
        let n = decode_config_header([h[0], h[1], h[2], h[3]]);
        assert!(n <= MAX_CONFIG_LEN);
    }
});
