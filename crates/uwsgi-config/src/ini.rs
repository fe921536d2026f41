//! uWSGI's ini reader (core/ini.c).

use crate::magic::Substituted;

/// A reader's failure: (source line when known, message).
pub(crate) type ReadError = (Option<usize>, String);

/// One `key = value` line of the asked section.
pub(crate) struct RawEntry {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) line: usize,
}

fn strip_chars(c: char) -> bool {
    c == ' ' || c == '\t' || c == '\r'
}

/// Parses the (already magic-substituted) text and returns the entries of
/// `section`, and whether the section was seen at all.
///
/// uWSGI's rules, all reproduced:
/// - lines are split on `\n` only; each is stripped of spaces, tabs and `\r`
///   on both sides; a NUL byte ends the line (C strings);
/// - `[name]` starts a section: the name is everything after `[` minus the
///   *last character*, whatever it is (`[uwsgi]x` is section `uwsgi]`);
/// - lines starting with `;` or `#` are comments (only at line start: `a = 1 ; x`
///   has the value `1 ; x`);
/// - `key = value` splits at the first `=`; both sides are stripped; quotes
///   are kept as they are; a line without `=` is a key with the empty value
///   (`master` is `master = ""`), and `= x` is the empty key;
/// - keys repeat freely, and a section may appear several times.
pub(crate) fn parse(sub: &Substituted, section: &str) -> (Vec<RawEntry>, bool) {
    let text = String::from_utf8_lossy(&sub.text);
    let mut current = String::new();
    let mut got = false;
    let mut out = Vec::new();
    for (idx, raw) in text.split('\n').enumerate() {
        let raw = raw.split('\0').next().unwrap_or("");
        let line = raw.trim_matches(strip_chars);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let mut name = rest.to_string();
            name.pop();
            current = name;
        } else if line.starts_with(';') || line.starts_with('#') {
            // comment
        } else if current == section {
            got = true;
            let (k, v) = match line.find('=') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, ""),
            };
            out.push(RawEntry {
                key: k.trim_end_matches(strip_chars).to_string(),
                value: v.trim_matches(strip_chars).to_string(),
                line: sub.source_line(idx + 1),
            });
        }
    }
    (out, got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::magic::{substitute, MagicTable};

    fn run(s: &str, section: &str) -> (Vec<(String, String, usize)>, bool) {
        let sub = substitute(s.as_bytes(), &MagicTable::new(), true);
        let (e, got) = parse(&sub, section);
        (
            e.into_iter().map(|e| (e.key, e.value, e.line)).collect(),
            got,
        )
    }

    #[test]
    fn sections_comments_and_odd_lines() {
        let (e, got) = run(
            "[uwsgi]\na = 1\n  b=2  \n\"c\" = \"3\"\n; x\n# y\n[other]\nd=4\n[uwsgi]\nmaster\n= v\nk==v=w\n[uwsgi]x\ni=1\n\t[uwsgi]\t\r\nj = 1 ; not a comment\n",
            "uwsgi",
        );
        assert!(got);
        let kv: Vec<_> = e.iter().map(|(k, v, _)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            kv,
            [
                ("a", "1"),
                ("b", "2"),
                ("\"c\"", "\"3\""),
                ("master", ""),
                ("", "v"),
                ("k", "=v=w"),
                ("j", "1 ; not a comment")
            ]
        );
        assert_eq!(e[0].2, 2);
        assert_eq!(e[3].2, 10);
    }

    #[test]
    fn missing_section() {
        let (e, got) = run("[a]\nx=1\n", "uwsgi");
        assert!(e.is_empty());
        assert!(!got);
    }

    #[test]
    fn other_section_and_no_trailing_newline() {
        let (e, _) = run("[uwsgi]\na=1\n[x]\nb=2", "x");
        assert_eq!(e, [("b".to_string(), "2".to_string(), 4)]);
    }
}
