//! pg:// rows (`monitors::pg::rows`): `parse_ts` on every column's text,
//! `row_to_spec` on rows of 3, 5 or 6 columns, and the whole result through
//! `RowReader::snapshot`.
//!
//! Input: PostgreSQL's COPY text format: one row a line, columns separated
//! by tabs, `\N` for NULL, backslash escapes (`\n`, `\t`, `\\`). The first
//! row's column count sets the shape (fewer than 5: 3; 5; more: 6, and
//! past 6 up to four limit columns, `memory_max`, `memory_high`, `cpu_max`,
//! `pids_max`, put first); other rows are cut or padded with NULLs to it.
#![no_main]

mod common;

use emperor::{ChangeKey, Extensions};
use libfuzzer_sys::fuzz_target;
use monitors::pg::rows::{check_columns, parse_ts, row_to_spec, Layout, RowReader};

fuzz_target!(|text: &str| {
    let raw: Vec<Vec<Option<String>>> = text
        .lines()
        .take(64)
        .map(|line| {
            line.split('\t')
                .map(|c| (c != "\\N").then(|| common::unescape(c)))
                .collect()
        })
        .collect();
    let Some(first) = raw.first() else { return };
    let n = match first.len() {
        0..=4 => 3,
        5 => 5,
        _ => 6,
    };
    assert!(check_columns(n).is_ok());
    let limits = first.len().saturating_sub(6).min(4);
    let names: Vec<&str> = ["memory_max", "memory_high", "cpu_max", "pids_max"][..limits]
        .iter()
        .chain(&["name", "config", "ts", "uid", "gid", "socket"][..n])
        .copied()
        .collect();
    let layout = Layout::of(&names).expect("a good layout");
    let width = names.len();
    for col in raw.iter().flatten().flatten() {
        if let Ok(ChangeKey::Stamp(ns)) = parse_ts(col) {
            // a plain decimal is a time since the epoch, never before it
            if col.trim().bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                assert!(ns >= 0, "{col:?} -> {ns}");
            }
        }
    }
    let rows: Vec<Vec<Option<&str>>> = raw
        .iter()
        .map(|r| {
            (0..width)
                .map(|i| r.get(i).and_then(Option::as_deref))
                .collect()
        })
        .collect();
    let exts = Extensions::default();
    for row in &rows {
        if let Ok(spec) = row_to_spec(&row[limits..], &exts) {
            assert_eq!(Some(spec.name.as_str()), row[limits]);
        }
    }
    let mut reader = RowReader::default();
    for _ in 0..2 {
        let specs = reader.snapshot(&rows, &layout, &exts, "fuzz");
        let mut names: Vec<_> = specs.iter().map(|s| s.name.clone()).collect();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len, "one spec per name");
    }
});
