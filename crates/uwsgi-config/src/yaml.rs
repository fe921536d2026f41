//! uWSGI's YAML reader, as built by Debian (core/yaml.c with `UWSGI_LIBYAML`).
//!
//! Debian's uWSGI 2.0.21 links libyaml and walks its *token* stream (not a
//! parsed document) with a small state machine. To get the same answers we
//! use `yaml-rust2`'s scanner, a port of libyaml's scanner that yields the
//! same tokens, and run uWSGI's state machine on them. A full YAML parser
//! would be wrong here: uWSGI ignores flow mappings, picks up a nested
//! mapping named like the section, flattens nested mappings into the
//! section, stops at the first scalar it does not expect, and never applies
//! tags, anchors or aliases. (uWSGI's own line-based reader, used without
//! libyaml, is not what the real 2.0.21 binary runs, so it is not emulated.)

use yaml_rust2::scanner::{Scanner, TokenType};

use crate::ini::{RawEntry, ReadError};
use crate::magic::Substituted;

/// The entries of `section`, and a warning uWSGI would print.
pub(crate) fn parse(
    sub: &Substituted,
    section: &str,
) -> Result<(Vec<RawEntry>, Option<String>), ReadError> {
    let text = String::from_utf8_lossy(&sub.text);
    let mut scanner = Scanner::new(text.chars());
    let mut out = Vec::new();
    let mut warning = None;

    // uWSGI's state: 0 none, 1 after KEY, 2 after VALUE, 3 in a sequence
    let mut status = 0u8;
    let mut in_section: usize = 0;
    let mut key: Option<String> = None;

    loop {
        let Some(tok) = scanner.next() else {
            if let Some(e) = scanner.get_error() {
                return Err((
                    Some(sub.source_line(e.marker().line())),
                    format!("error parsing YAML file: {}", e.info()),
                ));
            }
            break;
        };
        let line = sub.source_line(tok.0.line());
        match tok.1 {
            TokenType::StreamEnd => break,
            TokenType::Key => status = 1,
            TokenType::Value => status = 2,
            TokenType::FlowSequenceStart | TokenType::BlockSequenceStart => {
                if in_section > 0 {
                    in_section += 1;
                }
                status = 3;
            }
            TokenType::FlowEntry | TokenType::BlockEntry => status = 3,
            TokenType::BlockMappingStart => {
                if in_section > 0 {
                    in_section += 1;
                } else if key.as_deref() == Some(section) {
                    in_section = 1;
                }
            }
            TokenType::BlockEnd | TokenType::FlowSequenceEnd => {
                if in_section > 0 {
                    in_section -= 1;
                    if in_section == 0 {
                        break;
                    }
                }
                key = None;
                status = 0;
            }
            TokenType::Scalar(_, value) => match status {
                1 => key = Some(value),
                2 | 3 => {
                    if in_section > 0 {
                        if let Some(k) = &key {
                            out.push(RawEntry {
                                key: k.clone(),
                                value,
                                line,
                            });
                        }
                    }
                    if status == 2 {
                        key = None;
                        status = 0;
                    }
                }
                _ => {
                    warning = Some(format!("unsupported YAML token in {section} block"));
                    break;
                }
            },
            _ => status = 0,
        }
    }
    Ok((out, warning))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::magic::{substitute, MagicTable};

    fn run(s: &str, section: &str) -> Vec<(String, String)> {
        let sub = substitute(s.as_bytes(), &MagicTable::new(), true);
        parse(&sub, section)
            .unwrap()
            .0
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    }

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn mapping_sequences_and_nesting() {
        let doc = "# c\nother:\n  z: 1\nuwsgi:\n  socket: :3031\n  master: true\n  quoted: \"a b # c\"\n  list:\n    - x\n    - 'y'\n  ilist:\n  - p\n  - q\n  empty:\n  num: 0x10\n  nested:\n    k: v\n  after: 1\nnext:\n  n: 1\n";
        assert_eq!(
            run(doc, "uwsgi"),
            kv(&[
                ("socket", ":3031"),
                ("master", "true"),
                ("quoted", "a b # c"),
                ("list", "x"),
                ("list", "y"),
                ("ilist", "p"),
                ("ilist", "q"),
                ("num", "0x10"),
                ("k", "v"),
                ("after", "1"),
            ])
        );
        assert_eq!(run(doc, "next"), kv(&[("n", "1")]));
    }

    #[test]
    fn flow_mapping_is_ignored() {
        assert_eq!(run("uwsgi: {a: 1}\n", "uwsgi"), kv(&[]));
    }

    #[test]
    fn scan_error() {
        let sub = substitute(b"uwsgi:\n  a: \"x\n", &MagicTable::new(), true);
        assert!(parse(&sub, "uwsgi").is_err());
    }
}
