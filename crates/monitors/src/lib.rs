//! imperium's imperial monitors, one module per scheme, each behind a cargo
//! feature of the same name.
//!
//! [`build`] picks the monitor for one `--emperor` value the way uWSGI does
//! (reference §3): a known `scheme://` prefix first; otherwise a bare path to
//! an existing directory is `dir://`, and anything else with a wildcard is
//! `glob://`.

use emperor::{Monitor, MonitorError, MonitorOptions};

#[cfg(feature = "dir")]
pub mod dir;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "dir")]
mod fswatch;
#[cfg(feature = "dir")]
pub mod glob;
#[cfg(any(feature = "zoo", feature = "etcd"))]
pub mod kv;
#[cfg(feature = "ldap")]
pub mod ldap;
#[cfg(feature = "mongodb")]
pub mod mongo;
#[cfg(feature = "pg")]
pub mod pg;
#[cfg(feature = "zoo")]
pub mod zoo;

/// The schemes this binary was built with, in registration order.
pub fn schemes() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "dir") {
        v.push("dir");
        v.push("glob");
    }
    if cfg!(feature = "ldap") {
        v.push("ldap");
    }
    if cfg!(feature = "zoo") {
        v.push("zoo");
    }
    if cfg!(feature = "etcd") {
        v.push("etcd");
    }
    if cfg!(feature = "pg") {
        v.push("pg");
    }
    if cfg!(feature = "mongodb") {
        v.push("mongodb");
        v.push("mongodb2");
    }
    v
}

/// Every scheme imperium knows, built in or not (for error messages).
const KNOWN: &[&str] = &[
    "dir", "glob", "pg", "mongodb", "mongodb2", "amqp", "zmq", "zoo", "ldap", "etcd",
];

/// Builds the monitor for one `--emperor` value. Start-up errors (a bad URL,
/// a directory that does not exist) are returned here, before anything runs.
pub fn build(url: &str, opts: &MonitorOptions) -> Result<Box<dyn Monitor>, MonitorError> {
    if let Some((scheme, rest)) = url.split_once("://") {
        // only the file monitors take the part after the scheme as a path
        #[cfg(not(feature = "dir"))]
        let _ = rest;
        match scheme {
            #[cfg(feature = "dir")]
            "dir" => return Ok(Box::new(dir::DirMonitor::new(url, rest, opts)?)),
            #[cfg(feature = "dir")]
            "glob" => return Ok(Box::new(glob::GlobMonitor::new(url, rest, opts)?)),
            #[cfg(feature = "ldap")]
            "ldap" => return Ok(Box::new(ldap::LdapMonitor::new(url, opts)?)),
            #[cfg(feature = "zoo")]
            "zoo" => return Ok(Box::new(zoo::ZooMonitor::new(url, rest)?)),
            #[cfg(feature = "etcd")]
            "etcd" => return Ok(Box::new(etcd::EtcdMonitor::new(url, rest)?)),
            #[cfg(feature = "pg")]
            "pg" => return Ok(Box::new(pg::PgMonitor::new(url, rest, opts)?)),
            #[cfg(feature = "mongodb")]
            "mongodb" | "mongodb2" => return Ok(Box::new(mongo::MongoMonitor::new(url)?)),
            s if KNOWN.contains(&s) => {
                // only the scheme: the rest may hold a password
                return Err(MonitorError::NotBuilt {
                    url: format!("{s}://..."),
                    scheme: s.to_string(),
                });
            }
            // an unknown scheme falls through to the path rules, as uWSGI does
            _ => {}
        }
    }
    build_bare(url, opts)
}

#[cfg(feature = "dir")]
fn build_bare(url: &str, opts: &MonitorOptions) -> Result<Box<dyn Monitor>, MonitorError> {
    let has_wildcard = url.contains(['*', '?', '[']);
    let path = opts.cwd.join(url);
    if !has_wildcard {
        if path.is_dir() {
            return Ok(Box::new(dir::DirMonitor::new(url, url, opts)?));
        }
        return Err(MonitorError::BadUrl {
            url: url.to_string(),
            reason: if path.exists() {
                "not a directory and not a glob pattern (to watch a single file use glob://PATH)"
                    .to_string()
            } else {
                "no such directory (a bare --emperor value must be an existing directory or a glob pattern)".to_string()
            },
        });
    }
    Ok(Box::new(glob::GlobMonitor::new(url, url, opts)?))
}

#[cfg(not(feature = "dir"))]
fn build_bare(url: &str, _opts: &MonitorOptions) -> Result<Box<dyn Monitor>, MonitorError> {
    Err(MonitorError::NotBuilt {
        url: url.to_string(),
        scheme: "dir".to_string(),
    })
}
