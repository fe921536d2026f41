//! What several targets share. Each target includes it with `mod common;`.
#![allow(dead_code)]

use std::path::PathBuf;

use emperor::{Extensions, MonitorOptions};

/// A working directory that does not exist: a name resolved against it
/// never finds a file, and nothing is created.
pub const NO_DIR: &str = "/nonexistent/imperium-fuzz";

/// Monitor options that touch nothing: the built-in extensions plus `extra`,
/// the working directory [`NO_DIR`].
pub fn opts(extra: &[String]) -> MonitorOptions {
    MonitorOptions {
        extensions: Extensions::new(extra.iter().cloned()),
        cwd: PathBuf::from(NO_DIR),
        ..MonitorOptions::default()
    }
}

/// True when `hay` contains `needle`, ASCII case-insensitively.
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A small option table in the shape of imperium's: flags, required and
/// optional arguments, short letters, one immediate option, abbreviations.
pub fn table() -> uwsgi_config::StaticTable {
    use uwsgi_config::Arity;
    uwsgi_config::StaticTable::new()
        .option("emperor", Arity::Required, None)
        .option("emperor-freq", Arity::Required, None)
        .option("master", Arity::None, Some('M'))
        .option("daemonize", Arity::Required, Some('d'))
        .option("vacuum", Arity::None, None)
        .option("log-format", Arity::Optional, None)
        .immediate_option("plugins", Arity::Required, None)
}

/// Undoes the backslash escapes of PostgreSQL's COPY text format (`\n`,
/// `\t`, `\r`, `\\`), which the seed files use to keep one record a line.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}
