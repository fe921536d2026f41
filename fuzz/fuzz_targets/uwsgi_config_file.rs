//! uWSGI's config readers (`uwsgi_config::parse_with_limits`): any ini,
//! XML, YAML or JSON file content, written to a private directory and read
//! through the loader option of its format, with small `Limits` so that
//! each run is bounded and `files_only` so that nothing but regular files
//! is read (no `exec://`, no `fd://`, no FIFO or device).
//!
//! Input: one byte (the format: ini, XML, YAML, JSON by its value modulo 4;
//! bit 2 set reads the section `app` instead of `uwsgi`), then the file.
#![no_main]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use uwsgi_config::{parse_with_limits, Context, Limits};

/// The private directory (one per fuzzing process, removed when the
/// process ends normally).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("a temporary directory");
        let p = d.path().to_path_buf();
        (d, p)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let Some((&format, content)) = data.split_first() else {
        return;
    };
    // `for-glob` walks the file system: a pattern such as /*/*/*/* would
    // make a slow run, not a finding
    if common::contains_ci(content, b"for-glob") {
        return;
    }
    let (loader, file) = [
        ("--ini", "vassal.ini"),
        ("--xml", "vassal.xml"),
        ("--yaml", "vassal.yaml"),
        ("--json", "vassal.json"),
    ][usize::from(format % 4)];
    let dir = dir();
    std::fs::write(dir.join(file), content).expect("write the config");
    let arg = if format & 4 == 4 {
        format!("{file}:app")
    } else {
        file.to_string()
    };
    let args = [loader.to_string(), arg];
    let mut ctx = Context::fixed();
    ctx.cwd = dir.clone();
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
            if let Some(v) = &e.value {
                assert!(v.len() <= limits.max_value_len.max(limits.max_file_size));
            }
        }
    }
});
