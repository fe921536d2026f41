//! uWSGI's JSON reader, as built by Debian (core/json.c with yajl's tree API).
//!
//! `serde_json` does the parsing; duplicate keys are kept (yajl keeps them, a
//! map would not) by visiting objects as lists of `(key, raw value)`, and
//! numbers keep their source text (`1.50` stays `1.50`, like
//! `YAJL_GET_NUMBER`) thanks to `RawValue`. yajl's tree parser accepts `//`
//! and `/* */` comments, serde_json does not: they are blanked out first.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ini::RawEntry;
use crate::magic::Substituted;

struct Object<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Object<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Object<'a>, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, &'de RawValue>()? {
                    v.push((k, val));
                }
                Ok(Object(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Replaces comments outside strings by spaces (newlines kept).
fn blank_comments(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        if in_str {
            if b[i] == b'\\' {
                i += 2;
                continue;
            }
            if b[i] == b'"' {
                in_str = false;
            }
            i += 1;
        } else if b[i] == b'"' {
            in_str = true;
            i += 1;
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out[i] = b' ';
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let start = i;
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            let end = (i + 2).min(b.len());
            for c in &mut out[start..end] {
                if *c != b'\n' {
                    *c = b' ';
                }
            }
            i = end;
        } else {
            i += 1;
        }
    }
    // only ASCII bytes were replaced by ASCII, UTF-8 stays valid
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// yajl's conversion of a scalar: strings as they are, `true` → `1`,
/// `false`/`null` → `0`, numbers as written; objects and arrays → `None`.
fn scalar(raw: &RawValue) -> Option<String> {
    let t = raw.get().trim();
    match t.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(t).ok(),
        b't' => Some("1".into()),
        b'f' | b'n' => Some("0".into()),
        b'{' | b'[' => None,
        _ => Some(t.to_string()),
    }
}

/// The entries of object `section`.
pub(crate) fn parse(
    sub: &Substituted,
    section: &str,
) -> Result<Vec<RawEntry>, (Option<usize>, String)> {
    let text = std::str::from_utf8(&sub.text).map_err(|_| {
        (
            None,
            "error parsing JSON data: lexical error: invalid bytes in UTF8 string.".to_string(),
        )
    })?;
    let text = blank_comments(text);
    let base = text.as_ptr() as usize;
    let line_of = |raw: &RawValue| sub.source_line_of_offset(raw.get().as_ptr() as usize - base);
    let parse_err = |e: serde_json::Error| {
        (
            Some(sub.source_line(e.line())),
            format!("error parsing JSON data: {e}"),
        )
    };
    let not_object = || {
        (
            None,
            format!("you must define a object named {section} in your JSON data"),
        )
    };

    let root: &RawValue = serde_json::from_str(&text).map_err(parse_err)?;
    if !root.get().trim_start().starts_with('{') {
        return Err(not_object());
    }
    let root: Object = serde_json::from_str(root.get()).map_err(parse_err)?;
    let Some((_, sect)) = root.0.iter().find(|(k, _)| k == section) else {
        return Err(not_object());
    };
    if !sect.get().trim_start().starts_with('{') {
        return Err(not_object());
    }
    let sect: Object = serde_json::from_str(sect.get()).map_err(parse_err)?;
    let mut out = Vec::new();
    for (key, raw) in sect.0 {
        if raw.get().trim_start().starts_with('[') {
            let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(parse_err)?;
            for item in items {
                if let Some(value) = scalar(item) {
                    out.push(RawEntry {
                        key: key.clone(),
                        value,
                        line: line_of(item),
                    });
                }
            }
        } else if let Some(value) = scalar(raw) {
            out.push(RawEntry {
                key,
                value,
                line: line_of(raw),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::magic::{substitute, MagicTable};

    fn run(s: &str, section: &str) -> Result<Vec<(String, String, usize)>, String> {
        let sub = substitute(s.as_bytes(), &MagicTable::new(), true);
        parse(&sub, section)
            .map(|v| v.into_iter().map(|e| (e.key, e.value, e.line)).collect())
            .map_err(|e| e.1)
    }

    #[test]
    fn types_arrays_duplicates() {
        let doc = "{\"other\": {\"o\": 1},\n \"uwsgi\": {\"socket\": \":3031\", \"master\": true, \"off\": false, \"n\": null, \"num\": 1.50, \"e\": 1e3,\n \"arr\": [\"a\", 2, true, null, {\"x\":1}, [1]], \"obj\": {\"k\": \"v\"}, \"dup\": \"1\", \"dup\": \"2\", \"u\": \"\\u00e9\"}}";
        let got = run(doc, "uwsgi").unwrap();
        let kv: Vec<_> = got
            .iter()
            .map(|(k, v, _)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            kv,
            [
                ("socket", ":3031"),
                ("master", "1"),
                ("off", "0"),
                ("n", "0"),
                ("num", "1.50"),
                ("e", "1e3"),
                ("arr", "a"),
                ("arr", "2"),
                ("arr", "1"),
                ("arr", "0"),
                ("dup", "1"),
                ("dup", "2"),
                ("u", "é"),
            ]
        );
        assert_eq!(got[0].2, 2);
        assert_eq!(got[6].2, 3);
    }

    #[test]
    fn comments_and_errors() {
        assert_eq!(
            run(
                "{\"uwsgi\": {\n// c\n\"a\": \"/*1*/\", /* x */ \"b\": 2}}",
                "uwsgi"
            )
            .unwrap()
            .len(),
            2
        );
        assert!(run("{\"uwsgi\": {}} x", "uwsgi")
            .unwrap_err()
            .contains("error parsing JSON"));
        assert!(run("[1]", "uwsgi")
            .unwrap_err()
            .contains("you must define a object named uwsgi"));
        assert!(run("{\"uwsgi\": 1}", "uwsgi")
            .unwrap_err()
            .contains("object named"));
        assert!(run("{\"a\": {}}", "uwsgi")
            .unwrap_err()
            .contains("object named"));
    }
}
