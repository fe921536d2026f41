//! MongoDB's relaxed JSON for query filters, as uWSGI's `fromjson()` takes
//! it: unquoted keys (`{enabled:1}`), single-quoted strings, and MongoDB
//! Extended JSON (`{"$date": "2024-01-01T00:00:00Z"}`, `{"$oid": "..."}`).
//!
//! The text is first rewritten into strict JSON (keys quoted, single-quoted
//! strings turned into double-quoted ones), then read by `serde_json` and
//! converted to BSON with the Extended JSON rules of the `bson` crate.

use bson::{Bson, Document};

/// Why a filter could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A string that never ends (where it starts).
    #[error("unterminated string starting at byte {0}")]
    UnterminatedString(usize),
    #[error(
        "unexpected word {word:?} at byte {at} (only keys may be unquoted; values need quotes)"
    )]
    /// An unquoted word where a value belongs.
    BareWord {
        /// The word.
        word: String,
        /// Its byte offset.
        at: usize,
    },
    /// Not JSON once keys are quoted (the parser's message).
    #[error("not valid JSON: {0}")]
    Json(String),
    /// JSON, but not Extended JSON the driver accepts (its message).
    #[error("not valid MongoDB Extended JSON: {0}")]
    ExtJson(String),
    /// Not a JSON object.
    #[error("the filter must be a JSON object, like {{enabled: 1}}")]
    NotAnObject,
}

/// Parses a filter. Empty (or blank) text is the empty filter: every document.
///
/// ```
/// # use monitors::mongo::relaxed_json::parse_filter;
/// let f = parse_filter("{enabled: 1, 'tier': 'web'}").unwrap();
/// assert_eq!(f.get_i32("enabled").unwrap(), 1);
/// assert_eq!(f.get_str("tier").unwrap(), "web");
/// assert!(parse_filter("").unwrap().is_empty());
/// ```
pub fn parse_filter(text: &str) -> Result<Document, FilterError> {
    if text.trim().is_empty() {
        return Ok(Document::new());
    }
    let strict = to_strict_json(text)?;
    let value: serde_json::Value =
        serde_json::from_str(&strict).map_err(|e| FilterError::Json(e.to_string()))?;
    match Bson::try_from(value).map_err(|e| FilterError::ExtJson(e.to_string()))? {
        Bson::Document(d) => Ok(d),
        _ => Err(FilterError::NotAnObject),
    }
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$'
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.'
}

/// Rewrites relaxed JSON into strict JSON. Structure is not checked here:
/// serde_json does that afterwards.
fn to_strict_json(text: &str) -> Result<String, FilterError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        match c {
            '"' => {
                // copy a double-quoted string as is
                out.push('"');
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    let (_, c) = chars[i];
                    out.push(c);
                    i += 1;
                    if c == '\\' {
                        if let Some(&(_, n)) = chars.get(i) {
                            out.push(n);
                            i += 1;
                        }
                    } else if c == '"' {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(FilterError::UnterminatedString(at));
                }
            }
            '\'' => {
                // a single-quoted string becomes a double-quoted one
                out.push('"');
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    let (_, c) = chars[i];
                    i += 1;
                    match c {
                        '\\' => match chars.get(i) {
                            Some(&(_, '\'')) => {
                                out.push('\'');
                                i += 1;
                            }
                            Some(&(_, n)) => {
                                out.push('\\');
                                out.push(n);
                                i += 1;
                            }
                            None => out.push('\\'),
                        },
                        '"' => out.push_str("\\\""),
                        '\'' => {
                            closed = true;
                            break;
                        }
                        c => out.push(c),
                    }
                }
                if !closed {
                    return Err(FilterError::UnterminatedString(at));
                }
                out.push('"');
            }
            c if is_word_start(c) => {
                let start = i;
                while i < chars.len() && is_word_char(chars[i].1) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|&(_, c)| c).collect();
                let next = chars[i..]
                    .iter()
                    .map(|&(_, c)| c)
                    .find(|c| !c.is_whitespace());
                if next == Some(':') {
                    out.push('"');
                    out.push_str(&word);
                    out.push('"');
                } else if matches!(word.as_str(), "true" | "false" | "null") {
                    out.push_str(&word);
                } else {
                    return Err(FilterError::BareWord { word, at });
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn unquoted_keys_and_operators() {
        let f = parse_filter("{enabled:1, ts: {$gt: 5}, a.b: true}").unwrap();
        assert_eq!(f, doc! {"enabled": 1, "ts": {"$gt": 5}, "a.b": true});
    }

    #[test]
    fn strict_json_is_unchanged() {
        let f = parse_filter(r#"{"name": "a:b \"q\"", "n": null}"#).unwrap();
        assert_eq!(f, doc! {"name": "a:b \"q\"", "n": Bson::Null});
    }

    #[test]
    fn single_quotes() {
        let f = parse_filter(r#"{tier: 'it\'s "web"'}"#).unwrap();
        assert_eq!(f, doc! {"tier": "it's \"web\""});
    }

    #[test]
    fn extended_json() {
        let f = parse_filter(r#"{ts: {$gte: {"$date": "2024-01-02T03:04:05Z"}}}"#).unwrap();
        let d = f.get_document("ts").unwrap().get_datetime("$gte").unwrap();
        assert_eq!(d.timestamp_millis(), 1_704_164_645_000);
    }

    #[test]
    fn empty_is_everything() {
        assert!(parse_filter("  ").unwrap().is_empty());
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_filter("{a: yes}"),
            Err(FilterError::BareWord { .. })
        ));
        assert!(matches!(
            parse_filter("{a: 'x}"),
            Err(FilterError::UnterminatedString(_))
        ));
        assert!(matches!(parse_filter("{a: 1"), Err(FilterError::Json(_))));
        assert!(matches!(
            parse_filter("[1, 2]"),
            Err(FilterError::NotAnObject)
        ));
    }
}
