//! The `pg://` URL: `pg://<libpq conninfo>[;<SQL query>]`, and how it is
//! shown with its password removed.

/// The query uWSGI's emperor_pg runs when the URL has no `;`.
pub const DEFAULT_QUERY: &str = "SELECT name,config,EXTRACT(epoch FROM ts) FROM vassals";

use crate::session::{mask_userinfo, Userinfo};

/// What replaces a password in [`redact_conninfo`]'s output.
pub const REDACTED: &str = crate::session::MASK;

/// A `pg://` URL split into its parts (the scheme already removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The conninfo, keyword form or `postgresql://` URI, as given.
    pub conninfo: String,
    /// The query: everything after the first `;`, or [`DEFAULT_QUERY`].
    pub query: String,
    /// True when the query came from the URL.
    pub explicit_query: bool,
}

/// Why a `pg://` URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgUrlError {
    /// A `;` with nothing after it.
    #[error("the query after ';' is empty (leave out the ';' to use the default query: {DEFAULT_QUERY})")]
    EmptyQuery,
    /// Nothing before the `;`.
    #[error("the conninfo before ';' is empty (give at least host=... or a postgresql:// URI)")]
    EmptyConninfo,
}

impl PgUrl {
    /// Splits `rest` (the URL without `pg://`) at the first `;`, as uWSGI does.
    pub fn parse(rest: &str) -> Result<PgUrl, PgUrlError> {
        let (conninfo, query, explicit_query) = match rest.split_once(';') {
            Some((c, q)) => {
                if q.trim().trim_end_matches(';').trim().is_empty() {
                    return Err(PgUrlError::EmptyQuery);
                }
                (c, q.to_string(), true)
            }
            None => (rest, DEFAULT_QUERY.to_string(), false),
        };
        if conninfo.trim().is_empty() {
            return Err(PgUrlError::EmptyConninfo);
        }
        Ok(PgUrl {
            conninfo: conninfo.trim().to_string(),
            query,
            explicit_query,
        })
    }

    /// The URL as shown in logs and stats: `pg://` + the conninfo with any
    /// password replaced by `***` + the query when one was given.
    pub fn describe(&self) -> String {
        let mut s = format!("pg://{}", redact_conninfo(&self.conninfo));
        if self.explicit_query {
            s.push(';');
            s.push_str(&self.query);
        }
        s
    }
}

/// True when `conninfo` is a URI rather than `key=value` pairs.
fn is_uri(conninfo: &str) -> bool {
    conninfo.starts_with("postgresql://") || conninfo.starts_with("postgres://")
}

/// `conninfo` with the value of any password replaced by [`REDACTED`]:
/// the `password` keyword of the keyword form, and the password of a URI's
/// user info and its `password=` parameter.
///
/// ```
/// use monitors::pg::url::redact_conninfo;
/// assert_eq!(redact_conninfo("host=db password='s e' user=u"), "host=db password=*** user=u");
/// assert_eq!(redact_conninfo("postgresql://u:secret@db/x"), "postgresql://u:***@db/x");
/// ```
pub fn redact_conninfo(conninfo: &str) -> String {
    if is_uri(conninfo) {
        redact_uri(conninfo)
    } else {
        redact_keywords(conninfo)
    }
}

fn redact_uri(uri: &str) -> String {
    let uri = mask_userinfo(uri, Userinfo::KeepUser);
    let Some((head, params)) = uri.split_once('?') else {
        return uri;
    };
    let params: Vec<String> = params
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == "password" => format!("{k}={REDACTED}"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{head}?{}", params.join("&"))
}

/// Redacts the keyword form: `key = value` pairs separated by spaces, a
/// value either bare (backslash escapes) or single-quoted (backslash
/// escapes inside), as libpq reads them.
fn redact_keywords(conninfo: &str) -> String {
    let b = conninfo.as_bytes();
    let mut out = String::with_capacity(conninfo.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conninfo[key_start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            // not key=value: libpq refuses it; hide the rest to be safe
            if key.is_empty() {
                break;
            }
            out.push_str(&conninfo[copied..key_start]);
            out.push_str(REDACTED);
            return out;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = i.min(b.len());
        }
        if key == "password" {
            out.push_str(&conninfo[copied..value_start]);
            out.push_str(REDACTED);
            copied = i;
        }
    }
    out.push_str(&conninfo[copied..]);
    out
}

/// `name` as a quoted SQL identifier (for `LISTEN`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_first_semicolon() {
        let u = PgUrl::parse("host=db user=x;SELECT a,b,c FROM t; SELECT 1").unwrap();
        assert_eq!(u.conninfo, "host=db user=x");
        assert_eq!(u.query, "SELECT a,b,c FROM t; SELECT 1");
        assert!(u.explicit_query);
    }

    #[test]
    fn default_query_without_semicolon() {
        let u = PgUrl::parse("postgresql://u@127.0.0.1:5/db").unwrap();
        assert_eq!(u.query, DEFAULT_QUERY);
        assert!(!u.explicit_query);
        assert_eq!(u.describe(), "pg://postgresql://u@127.0.0.1:5/db");
    }

    #[test]
    fn empty_parts_are_refused() {
        assert_eq!(PgUrl::parse("host=db;  "), Err(PgUrlError::EmptyQuery));
        assert_eq!(PgUrl::parse("host=db;;"), Err(PgUrlError::EmptyQuery));
        assert_eq!(PgUrl::parse(" ;SELECT 1"), Err(PgUrlError::EmptyConninfo));
        assert_eq!(PgUrl::parse(""), Err(PgUrlError::EmptyConninfo));
    }

    #[test]
    fn keyword_passwords_are_hidden() {
        for (input, want) in [
            ("host=db password=hunter2", "host=db password=***"),
            ("password=hunter2 host=db", "password=*** host=db"),
            (
                "host=db password = hunter2 user=u",
                "host=db password = *** user=u",
            ),
            (
                "host=db password='hun ter\\'2' user=u",
                "host=db password=*** user=u",
            ),
            (
                "host=db password=hun\\ ter2 user=u",
                "host=db password=*** user=u",
            ),
            ("host=db user=u", "host=db user=u"),
            ("host=db password=", "host=db password=***"),
        ] {
            let got = redact_conninfo(input);
            assert_eq!(got, want, "{input}");
            assert!(!got.contains("hunter2") && !got.contains("ter2"), "{got}");
        }
    }

    #[test]
    fn malformed_keywords_hide_the_rest() {
        let got = redact_conninfo("host=db oops hunter2");
        assert_eq!(got, "host=db ***");
    }

    #[test]
    fn uri_passwords_are_hidden() {
        for (input, want) in [
            (
                "postgresql://u:hunter2@db:5432/x",
                "postgresql://u:***@db:5432/x",
            ),
            ("postgres://u:hun@ter2@db/x", "postgres://u:***@db/x"),
            (
                "postgresql://u@db/x?password=hunter2&sslmode=disable",
                "postgresql://u@db/x?password=***&sslmode=disable",
            ),
            (
                "postgresql://db?password=hunter2",
                "postgresql://db?password=***",
            ),
            ("postgresql://u@db/x", "postgresql://u@db/x"),
        ] {
            assert_eq!(redact_conninfo(input), want, "{input}");
        }
        let u = PgUrl::parse("postgresql://u:hunter2@db/x;SELECT 1,2,3").unwrap();
        assert_eq!(u.describe(), "pg://postgresql://u:***@db/x;SELECT 1,2,3");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("imperium"), "\"imperium\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// The password of the keyword form (bare or quoted, with
            /// escapes) and of a URI (user info or `password=` parameter)
            /// never survives `redact_conninfo`.
            #[test]
            fn redact_conninfo_never_leaves_the_password(
                pass in "[A-Z][A-Z!#?@:;=&%$]{3,15}",
                quoted in "[A-Z][A-Z!#?@:;=&%$ ]{3,15}",
                before in "(host=[a-z]{1,8} )?",
                after in "( user=[a-z]{1,8})?",
                uri_user in "[a-z]{1,8}",
            ) {
                let kw = format!("{before}password={pass}{after}");
                prop_assert!(!redact_conninfo(&kw).contains(&pass), "{}", kw);
                let escaped = quoted.replace('\\', "\\\\").replace('\'', "\\'");
                let kw = format!("{before}password = '{escaped}'{after}");
                let shown = redact_conninfo(&kw);
                prop_assert!(!shown.contains(&quoted), "{} -> {}", kw, shown);
                let pass = pass.replace(['/', '?'], "!");
                let uri = format!("postgresql://{uri_user}:{pass}@db/x?sslmode=off&password={pass}");
                let shown = redact_conninfo(&uri);
                prop_assert!(!shown.contains(&pass), "{} -> {}", uri, shown);
            }
        }
    }
}
