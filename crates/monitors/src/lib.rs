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

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(any(feature = "amqp", feature = "zmq"))]
mod bus;
#[cfg(feature = "zmq")]
pub mod zmq;

mod session;

/// The schemes this binary was built with, in registration order.
pub fn schemes() -> Vec<&'static str> {
    // (scheme, built in?) in uWSGI's registration order, then imperium's own
    [
        ("dir", cfg!(feature = "dir")),
        ("glob", cfg!(feature = "dir")),
        ("pg", cfg!(feature = "pg")),
        ("mongodb", cfg!(feature = "mongodb")),
        ("mongodb2", cfg!(feature = "mongodb")),
        ("amqp", cfg!(feature = "amqp")),
        ("zmq", cfg!(feature = "zmq")),
        ("zoo", cfg!(feature = "zoo")),
        ("ldap", cfg!(feature = "ldap")),
        ("etcd", cfg!(feature = "etcd")),
    ]
    .into_iter()
    .filter(|(_, built)| *built)
    .map(|(s, _)| s)
    .collect()
}

/// Every scheme imperium knows, built in or not (for error messages).
const KNOWN: &[&str] = &[
    "dir", "glob", "pg", "mongodb", "mongodb2", "amqp", "zmq", "zoo", "ldap", "etcd",
];

/// Builds the monitor for one `--emperor` value. Start-up errors (a bad URL,
/// a directory that does not exist) are returned here, before anything runs.
pub fn build(url: &str, opts: &MonitorOptions) -> Result<Box<dyn Monitor>, MonitorError> {
    if let Some((scheme, rest)) = url.split_once("://") {
        // unused in builds without any monitor that takes the part after the scheme
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
            #[cfg(feature = "amqp")]
            "amqp" => return Ok(Box::new(amqp::AmqpMonitor::new(url, opts)?)),
            #[cfg(feature = "zmq")]
            "zmq" => return Ok(Box::new(zmq::ZmqMonitor::new(url, rest, opts)?)),
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
