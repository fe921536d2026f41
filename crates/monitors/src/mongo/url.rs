//! The three ways to name a MongoDB source on the command line.
//!
//! * uWSGI's `mongodb://<addr>,<namespace>,<filter>` (docs/monitors/mongodb.md): every
//!   field optional, defaults `127.0.0.1:27017`, `uwsgi.emperor.vassals`
//!   and the empty filter (every document). The filter is everything after
//!   the second comma, so it may contain commas.
//! * uWSGI's `mongodb2://addr=...,collection=...,json=...,database=...,username=...,password=...`
//!   (a comma-separated key=value list; `\` escapes the next character, so
//!   a filter with commas is written `json={a:1\,b:2}`).
//! * A full MongoDB connection string, for replica sets, TLS and auth
//!   options: `mongodb://[user:pass@]host1[,host2...]/[authdb][?options][#<namespace>[,<filter>]]`.
//!
//! uWSGI's `mongodb://` form and a connection string are told apart by the
//! text before the first `{`: a connection string always has a `/`, `?` or
//! `@` there (after the host list), the uWSGI form never does (an address
//! `host:port` and a namespace `db.collection` have none).

use bson::Document;
use mongodb::options::{ConnectionString, Credential};

use super::relaxed_json::parse_filter;
use crate::session::{mask_userinfo, Userinfo, MASK};

/// uWSGI's default address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:27017";
/// uWSGI's default namespace: database `uwsgi`, collection `emperor.vassals`.
pub const DEFAULT_NAMESPACE: &str = "uwsgi.emperor.vassals";

/// Which grammar a URL was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlForm {
    /// `mongodb://addr,namespace,filter` (uWSGI).
    Uwsgi,
    /// `mongodb2://key=value,...` (uWSGI).
    UwsgiKeyValue,
    /// `mongodb://...connection string...#namespace,filter`.
    ConnectionString,
}

/// Everything a mongodb:// monitor needs to know about its source.
#[derive(Clone)]
pub struct MongoUrl {
    /// The grammar used.
    pub form: UrlForm,
    /// Hosts and driver options (uWSGI forms connect directly to one host).
    pub conn: ConnectionString,
    /// Credentials from `mongodb2://` keys (a connection string carries its own).
    pub credential: Option<Credential>,
    /// The database holding the collection.
    pub database: String,
    /// The collection of vassal documents.
    pub collection: String,
    /// The query filter; empty means every document.
    pub filter: Document,
    /// The URL as shown in logs and stats: never contains the password.
    pub shown: String,
}

impl std::fmt::Debug for MongoUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the connection string and the credential may hold a password
        f.debug_struct("MongoUrl")
            .field("form", &self.form)
            .field("url", &self.shown)
            .field("database", &self.database)
            .field("collection", &self.collection)
            .field("filter", &self.filter)
            .finish()
    }
}

/// Parses `url`, the whole `--emperor` value (`mongodb://...` or `mongodb2://...`).
/// The error is a reason for the user; it never contains the password.
pub fn parse(url: &str) -> Result<MongoUrl, String> {
    if let Some(rest) = url.strip_prefix("mongodb2://") {
        parse_keyvalue(rest)
    } else if let Some(rest) = url.strip_prefix("mongodb://") {
        if is_connection_string(rest) {
            parse_connection_string(rest)
        } else {
            parse_uwsgi(rest)
        }
    } else {
        Err("expected mongodb:// or mongodb2://".to_string())
    }
}

fn is_connection_string(rest: &str) -> bool {
    let head = rest.split('{').next().unwrap_or(rest);
    head.contains(['/', '?', '@'])
}

/// Splits `db.collection` at the first dot.
fn split_namespace(ns: &str) -> Result<(String, String), String> {
    match ns.split_once('.') {
        Some((db, coll)) if !db.is_empty() && !coll.is_empty() => {
            Ok((db.to_string(), coll.to_string()))
        }
        _ => Err(format!(
            "collection {ns:?} must be a namespace <database>.<collection>, like {DEFAULT_NAMESPACE}"
        )),
    }
}

fn filter(text: &str) -> Result<Document, String> {
    parse_filter(text).map_err(|e| format!("bad JSON filter {text:?}: {e}"))
}

/// A connection string that reaches exactly `addr` (uWSGI connects to one
/// server and never follows a replica set's host list).
fn direct(addr: &str) -> Result<ConnectionString, String> {
    if addr.contains(['/', '?', '@', ',']) || addr.chars().any(char::is_whitespace) {
        return Err(format!("bad address {addr:?}: expected host:port"));
    }
    ConnectionString::parse(format!("mongodb://{addr}/?directConnection=true"))
        .map_err(|e| format!("bad address {addr:?}: {}", e.kind))
}

fn parse_uwsgi(rest: &str) -> Result<MongoUrl, String> {
    let mut parts = rest.splitn(3, ',');
    let addr = parts.next().map(str::trim).filter(|s| !s.is_empty());
    let ns = parts.next().map(str::trim).filter(|s| !s.is_empty());
    let json = parts.next().unwrap_or("");
    let (database, collection) = split_namespace(ns.unwrap_or(DEFAULT_NAMESPACE))?;
    Ok(MongoUrl {
        form: UrlForm::Uwsgi,
        conn: direct(addr.unwrap_or(DEFAULT_ADDR))?,
        credential: None,
        database,
        collection,
        filter: filter(json)?,
        shown: format!("mongodb://{rest}"),
    })
}

/// uWSGI's key=value list: `,` separates items, `\` escapes the next character.
fn split_keyvalues(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    let mut push = |cur: &mut String| -> Result<(), String> {
        let item = std::mem::take(cur);
        if item.is_empty() {
            return Ok(());
        }
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                items.push((k.to_string(), v.to_string()));
                Ok(())
            }
            // the item may hold a password: name only its key part
            _ => Err(format!(
                "malformed key=value item {:?} (write a literal comma as \\,)",
                item.split('=').next().unwrap_or_default()
            )),
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => push(&mut cur)?,
            c => cur.push(c),
        }
    }
    push(&mut cur)?;
    Ok(items)
}

fn parse_keyvalue(rest: &str) -> Result<MongoUrl, String> {
    let mut addr = None;
    let mut ns = None;
    let mut json = String::new();
    let mut auth_db = None;
    let mut username = None;
    let mut password = None;
    for (k, v) in split_keyvalues(rest)? {
        match k.as_str() {
            "addr" | "address" | "server" => addr = Some(v),
            "collection" | "coll" => ns = Some(v),
            "json" => json = v,
            "database" | "db" => auth_db = Some(v),
            "username" => username = Some(v),
            "password" => password = Some(v),
            // SCRAM always digests on the client; the legacy MONGODB-CR switch means nothing now
            "predigest" => tracing::warn!(
                "[emperor-mongodb] mongodb2:// key predigest is ignored (SCRAM authentication always digests)"
            ),
            "replica" | "defaults" => {
                return Err(format!(
                    "mongodb2:// key {k:?} is not supported; for a replica set use a connection string: \
                     mongodb://host1,host2/?replicaSet=NAME#db.collection,{{filter}}"
                ))
            }
            other => {
                return Err(format!(
                    "unknown mongodb2:// key {other:?} (known: addr, collection, json, database, username, password)"
                ))
            }
        }
    }
    let credential = match (&username, &password) {
        (Some(u), Some(p)) => Some(
            Credential::builder()
                .username(u.clone())
                .password(p.clone())
                .source(auth_db.clone().unwrap_or_else(|| "admin".to_string()))
                .build(),
        ),
        (None, None) => None,
        _ => return Err("mongodb2:// needs both username= and password= (or neither)".to_string()),
    };
    let addr = addr.filter(|a| !a.is_empty());
    let ns = ns.filter(|n| !n.is_empty());
    let (database, collection) = split_namespace(ns.as_deref().unwrap_or(DEFAULT_NAMESPACE))?;
    let mut shown = format!(
        "mongodb2://addr={},collection={}.{}",
        addr.as_deref().unwrap_or(DEFAULT_ADDR),
        database,
        collection
    );
    if !json.is_empty() {
        shown.push_str(&format!(",json={}", json.replace(',', "\\,")));
    }
    if let Some(db) = &auth_db {
        shown.push_str(&format!(",database={db}"));
    }
    if let Some(u) = &username {
        shown.push_str(&format!(",username={u},password={MASK}"));
    }
    Ok(MongoUrl {
        form: UrlForm::UwsgiKeyValue,
        conn: direct(addr.as_deref().unwrap_or(DEFAULT_ADDR))?,
        credential,
        database,
        collection,
        filter: filter(&json)?,
        shown,
    })
}

fn parse_connection_string(rest: &str) -> Result<MongoUrl, String> {
    let (conn_part, tail) = match rest.split_once('#') {
        Some((c, t)) => (c, Some(t)),
        None => (rest, None),
    };
    let conn_text = format!("mongodb://{conn_part}");
    let shown_conn = mask_password(&conn_text);
    check_userinfo_escapes(conn_part)
        .map_err(|reason| format!("bad connection string {shown_conn}: {reason}"))?;
    let conn = ConnectionString::parse(&conn_text)
        // the driver's messages name options, never the password
        .map_err(|e| format!("bad connection string {shown_conn}: {}", e.kind))?;
    let (ns, json) = match tail {
        Some(t) => match t.split_once(',') {
            Some((ns, json)) => (ns.trim(), json),
            None => (t.trim(), ""),
        },
        None => ("", ""),
    };
    let ns = if ns.is_empty() { DEFAULT_NAMESPACE } else { ns };
    let (database, collection) = split_namespace(ns)?;
    let mut shown = format!("{shown_conn}#{database}.{collection}");
    if !json.is_empty() {
        shown.push(',');
        shown.push_str(json);
    }
    Ok(MongoUrl {
        form: UrlForm::ConnectionString,
        conn,
        credential: None,
        database,
        collection,
        filter: filter(json)?,
        shown,
    })
}

/// Refuses a `%` in the user info of a connection string that does not
/// start a percent-escape (two hex digits). The driver refuses those too,
/// but the one it has (3.9) panics when a non-ASCII character follows the
/// `%` (it slices the text at byte 2), so they are refused here first. The
/// user info is what the driver takes: the text before the first `?`, up to
/// its last `@`.
fn check_userinfo_escapes(conn_part: &str) -> Result<(), String> {
    let pre_options = conn_part.split('?').next().unwrap_or(conn_part);
    let Some((userinfo, _)) = pre_options.rsplit_once('@') else {
        return Ok(());
    };
    let b = userinfo.as_bytes();
    let escaped = |i: usize| {
        b.get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    };
    if userinfo.match_indices('%').all(|(i, _)| escaped(i)) {
        Ok(())
    } else {
        Err("a '%' in the user name or password must start a percent-escape of two hex digits (write '%' itself as %25)".to_string())
    }
}

/// `mongodb://user:secret@host/` -> `mongodb://user:***@host/`.
pub fn mask_password(conn: &str) -> String {
    mask_userinfo(conn, Userinfo::KeepUser)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;
    use mongodb::options::{HostInfo, ServerAddress};

    fn hosts(u: &MongoUrl) -> Vec<String> {
        match &u.conn.host_info {
            HostInfo::HostIdentifiers(h) => h.iter().map(ServerAddress::to_string).collect(),
            other => panic!("unexpected host info {other:?}"),
        }
    }

    #[test]
    fn a_bad_percent_escape_in_the_user_info_is_refused_not_a_panic() {
        // found by fuzzing (fuzz/corpus/mongo_url/crash-7a654d7c): the
        // driver's own check sliced "%eé" at byte 2, inside the 'é'
        for url in [
            "mongodb://%ec%e\u{59c}\u{69a}1am_ona6@h/",
            "mongodb://u%e\u{e9}:pw@h/",
            "mongodb://user:p%\u{e9}ss@h:27017/?authSource=admin",
            "mongodb://user:p%zz@h/",
            "mongodb://user:p%4@h/",
        ] {
            let err = parse(url).err().unwrap();
            assert!(err.contains("%25"), "{url}: {err}");
        }
        // real escapes, an '@' in the query and no user info are as before
        let u = parse("mongodb://us%40er:p%25ss@h/?appName=a%b").unwrap();
        assert_eq!(hosts(&u), vec!["h:27017"]);
        assert!(parse("mongodb://h/?appName=%\u{e9}@x").is_ok());
    }

    #[test]
    fn uwsgi_defaults() {
        let u = parse("mongodb://").unwrap();
        assert_eq!(u.form, UrlForm::Uwsgi);
        assert_eq!(hosts(&u), vec!["127.0.0.1:27017"]);
        assert_eq!(u.conn.direct_connection, Some(true));
        assert_eq!(
            (u.database.as_str(), u.collection.as_str()),
            ("uwsgi", "emperor.vassals")
        );
        assert!(u.filter.is_empty());
    }

    #[test]
    fn uwsgi_full() {
        let u =
            parse("mongodb://127.0.0.1:27107,emperor.vassals,{enabled:1, tier: {$in: ['a','b']}}")
                .unwrap();
        assert_eq!(u.form, UrlForm::Uwsgi);
        assert_eq!(hosts(&u), vec!["127.0.0.1:27107"]);
        assert_eq!(
            (u.database.as_str(), u.collection.as_str()),
            ("emperor", "vassals")
        );
        assert_eq!(u.filter, doc! {"enabled": 1, "tier": {"$in": ["a", "b"]}});
        // empty fields take the defaults
        let u = parse("mongodb://,,{enabled:1}").unwrap();
        assert_eq!(hosts(&u), vec!["127.0.0.1:27017"]);
        assert_eq!(u.database, "uwsgi");
        assert_eq!(u.filter, doc! {"enabled": 1});
    }

    #[test]
    fn uwsgi_errors() {
        assert!(parse("mongodb://127.0.0.1:1,nodot")
            .unwrap_err()
            .contains("namespace"));
        assert!(parse("mongodb://127.0.0.1:1,a.b,{x:")
            .unwrap_err()
            .contains("bad JSON filter"));
        assert!(parse("mongodb://127.0.0.1:notaport").is_err());
    }

    #[test]
    fn connection_string_form() {
        let u = parse(
            "mongodb://imp:s3cret@127.0.0.1:1,127.0.0.1:2/?replicaSet=rs0&authSource=admin#app.vassals,{enabled:1,a:2}",
        )
        .unwrap();
        assert_eq!(u.form, UrlForm::ConnectionString);
        assert_eq!(hosts(&u), vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(u.conn.replica_set.as_deref(), Some("rs0"));
        assert_eq!(
            u.conn.credential.as_ref().unwrap().username.as_deref(),
            Some("imp")
        );
        assert_eq!(
            (u.database.as_str(), u.collection.as_str()),
            ("app", "vassals")
        );
        assert_eq!(u.filter, doc! {"enabled": 1, "a": 2});
        assert!(!u.shown.contains("s3cret"), "{}", u.shown);
        assert!(!format!("{u:?}").contains("s3cret"));
        // without a fragment: the default namespace, every document
        let u = parse("mongodb://127.0.0.1:27017/?directConnection=true").unwrap();
        assert_eq!(u.form, UrlForm::ConnectionString);
        assert_eq!(u.database, "uwsgi");
        assert!(u.filter.is_empty());
    }

    #[test]
    fn connection_string_errors_hide_password() {
        let e = parse("mongodb://imp:s3cret@127.0.0.1:1/?noSuchOption=1&replicaSet=").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn keyvalue_form() {
        let u = parse(
            "mongodb2://addr=127.0.0.1:5,collection=app.vassals,json={enabled:1\\,b:2},database=admin,username=imp,password=s3cret",
        )
        .unwrap();
        assert_eq!(u.form, UrlForm::UwsgiKeyValue);
        assert_eq!(hosts(&u), vec!["127.0.0.1:5"]);
        assert_eq!(
            (u.database.as_str(), u.collection.as_str()),
            ("app", "vassals")
        );
        assert_eq!(u.filter, doc! {"enabled": 1, "b": 2});
        let c = u.credential.as_ref().unwrap();
        assert_eq!(c.username.as_deref(), Some("imp"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.source.as_deref(), Some("admin"));
        assert!(!u.shown.contains("s3cret"), "{}", u.shown);
        assert!(u.shown.contains("username=imp"));
        // aliases and defaults
        let u = parse("mongodb2://server=127.0.0.1:6,coll=a.b").unwrap();
        assert_eq!(hosts(&u), vec!["127.0.0.1:6"]);
        assert_eq!(u.collection, "b");
        assert!(u.credential.is_none());
        let u = parse("mongodb2://").unwrap();
        assert_eq!(hosts(&u), vec!["127.0.0.1:27017"]);
        assert_eq!(u.database, "uwsgi");
    }

    #[test]
    fn keyvalue_errors() {
        assert!(parse("mongodb2://addr").unwrap_err().contains("malformed"));
        assert!(parse("mongodb2://colour=red")
            .unwrap_err()
            .contains("unknown"));
        assert!(parse("mongodb2://replica=a\\,b")
            .unwrap_err()
            .contains("connection string"));
        let e = parse("mongodb2://username=imp").unwrap_err();
        assert!(e.contains("password"), "{e}");
        // a malformed item never echoes a secret
        let e = parse("mongodb2://password").unwrap_err();
        assert!(e.contains("malformed"));
    }

    #[test]
    fn masking() {
        assert_eq!(mask_password("mongodb://u:p@h/"), "mongodb://u:***@h/");
        assert_eq!(
            mask_password("mongodb://u:p@ss@h:1,h:2/x?y=1"),
            "mongodb://u:***@h:1,h:2/x?y=1"
        );
        assert_eq!(mask_password("mongodb://h:1/"), "mongodb://h:1/");
        assert_eq!(mask_password("mongodb://u@h/"), "mongodb://u@h/");
    }
}
