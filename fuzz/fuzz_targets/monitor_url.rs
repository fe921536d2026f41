//! Every `--emperor` URL grammar: `monitors::build` over any value, with
//! options that touch nothing. It may refuse a value; it must never panic.
//! `zmq://` values are left out: building that monitor binds the endpoint
//! (libzmq parses it), which a fuzzer must not do.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if s.starts_with("zmq://") {
        return;
    }
    let opts = common::opts(&[]);
    if let Ok(m) = monitors::build(s, &opts) {
        let _ = m.describe();
    }
});
