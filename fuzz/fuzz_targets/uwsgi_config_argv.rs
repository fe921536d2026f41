//! The command line and `UWSGI_*` environment of uWSGI's config language
//! (`uwsgi_config::parse_with_limits` over any argv and environment), with
//! small `Limits` and `files_only`; the working directory does not exist.
//!
//! Input: NUL-separated items; an item `UWSGI_NAME=value` is an environment
//! variable, any other an argument (`--emperor\0/etc/uwsgi/vassals\0-M`).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use uwsgi_config::{parse_with_limits, Context, Limits, Origin};

fuzz_target!(|text: &str| {
    // `for-glob` walks the file system: slow, not a finding
    if common::contains_ci(text.as_bytes(), b"for-glob") {
        return;
    }
    let mut args = Vec::new();
    let mut env = Vec::new();
    for item in text.split('\0').take(64) {
        match item.split_once('=') {
            Some((k, v)) if k.starts_with("UWSGI_") => env.push((k.to_string(), v.to_string())),
            _ => args.push(item.to_string()),
        }
    }
    let mut ctx = Context::fixed();
    ctx.cwd = common::NO_DIR.into();
    ctx.env = env;
    let limits = Limits {
        max_depth: 4,
        max_entries: 2_000,
        max_value_len: 16 << 10,
        max_substitutions: 200,
        max_file_size: 64 << 10,
        files_only: true,
    };
    let table = common::table();
    if let Ok(config) = parse_with_limits(&args, &table, &ctx, limits) {
        assert!(config.entries.len() <= limits.max_entries);
        for e in &config.entries {
            match &e.origin {
                Origin::CommandLine { index } => assert!(*index >= 1 && *index <= args.len()),
                // only a command-line flag has no value
                _ => assert!(e.value.is_some(), "{e:?}"),
            }
        }
    }
});
