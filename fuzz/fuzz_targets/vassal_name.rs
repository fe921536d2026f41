//! `emperor::name::VassalName::parse` under both policies, any extra
//! extensions: it never panics, and what it accepts keeps every documented
//! rule (docs/monitors.md, "Rules every monitor keeps").
//!
//! Input: one byte (odd: the `Path` policy), then the name, then one extra
//! extension per line.
#![no_main]

use emperor::name::{Extensions, NamePolicy, VassalName, MAX_NAME_LEN};
use libfuzzer_sys::fuzz_target;

fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.split('\n');
    let input = lines.next().unwrap_or("");
    let exts = Extensions::new(lines.map(str::to_string));
    let policy = if flags & 1 == 1 {
        NamePolicy::Path
    } else {
        NamePolicy::Plain
    };
    let _ = exts.config_flag(input);
    let Ok(name) = VassalName::parse(input, &exts, policy) else {
        return;
    };
    let n = name.as_str();
    assert_eq!(n, input);
    assert!(!n.is_empty() && n.len() < MAX_NAME_LEN);
    assert!(!n.chars().any(|c| c.is_control() || is_bidi(c)));
    assert!(!n.starts_with('-'));
    assert!(exts.accepts(n));
    match policy {
        NamePolicy::Plain => assert!(!n.contains('/')),
        NamePolicy::Path => assert!(!n.split('/').any(|c| c == "..")),
    }
    // a zerg of it names it back
    let zerg = u64::from(flags >> 1);
    assert_eq!(name.zerg(zerg).zerg_parts(), Some((n, zerg)));
});
