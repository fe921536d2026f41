//! imperium's imperial monitors, one module per scheme, each behind a cargo
//! feature.
//!
//! [`SCHEMES`] is the one list of schemes: [`schemes`], [`build`] and the
//! errors for schemes left out of a build all read it. [`build`] picks the
//! monitor for one `--emperor` value the way uWSGI does (docs/monitors.md): a
//! known `scheme://` prefix first; otherwise a bare path to an existing
//! directory is `dir://`, and anything else with a wildcard is `glob://`.
//!
//! Adding a monitor: a module with a session (see `session.rs`) or a file
//! source (`fswatch.rs`), its `build` function, a row in [`SCHEMES`], a
//! cargo feature (docs/architecture.md has the checklist).
#![warn(missing_docs)]

use emperor::{Monitor, MonitorError, MonitorOptions};

mod args;
mod session;

pub use args::{MonitorArgs, MonitorOption, OptionKind};

#[cfg(any(feature = "etcd", feature = "zoo"))]
pub mod cluster;
#[cfg(feature = "dir")]
pub mod dir;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "file")]
pub mod file;
#[cfg(any(feature = "dir", feature = "file"))]
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

/// The parsers of outside input that are not public otherwise, for the fuzz
/// targets in `fuzz/` (docs/fuzzing.md). Not a stable API: nothing else
/// should use it.
#[doc(hidden)]
pub mod fuzzing {
    #[cfg(feature = "amqp")]
    pub use crate::amqp::interpret as amqp_interpret;
    #[cfg(feature = "ldap")]
    pub use crate::ldap::{redact as ldap_redact, Entry as LdapEntry};
    pub use crate::session::{mask_userinfo, Userinfo};
    #[cfg(feature = "zmq")]
    pub use crate::zmq::interpret as zmq_interpret;
}

/// What a monitor is built from: one `--emperor` value and the settings.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The whole `--emperor` value.
    pub url: &'a str,
    /// What follows `scheme://` (the whole value for a bare path).
    pub rest: &'a str,
    /// The settings every monitor reads.
    pub opts: &'a MonitorOptions,
    /// The monitor-specific options.
    pub args: &'a MonitorArgs,
}

/// Builds a monitor; start-up errors (a bad URL, a directory that does not
/// exist) are returned before anything runs.
pub type BuildFn = fn(&Target<'_>) -> Result<Box<dyn Monitor>, MonitorError>;

/// One `--emperor` URL scheme.
#[derive(Debug)]
pub struct Scheme {
    /// The scheme, without `://`.
    pub name: &'static str,
    /// The cargo feature that builds it.
    pub feature: &'static str,
    /// The monitor-specific options it reads ([`options`]).
    pub options: &'static [MonitorOption],
    /// How to build it; `None` when the feature is off.
    pub build: Option<BuildFn>,
}

impl Scheme {
    /// True when this binary was built with the scheme.
    pub fn is_built(&self) -> bool {
        self.build.is_some()
    }
}

/// `Some(item)` when the cargo feature is on, else `None`.
macro_rules! when {
    ($feature:literal, $item:expr) => {{
        #[cfg(feature = $feature)]
        let item = Some($item);
        #[cfg(not(feature = $feature))]
        let item = None;
        item
    }};
}

/// The scheme `name` from `feature`, built by `build` (a path in a module
/// that only exists with the feature), reading `options`.
macro_rules! scheme {
    ($name:literal, $feature:literal, $build:path) => {
        scheme!($name, $feature, $build, &[])
    };
    ($name:literal, $feature:literal, $build:path, $options:expr) => {
        Scheme {
            name: $name,
            feature: $feature,
            options: $options,
            build: when!($feature, $build as BuildFn),
        }
    };
}

/// Every scheme imperium knows, built in or not: uWSGI's in its
/// registration order, then imperium's own.
pub static SCHEMES: &[Scheme] = &[
    scheme!("dir", "dir", dir::build),
    scheme!("glob", "dir", glob::build),
    scheme!("pg", "pg", pg::build, &[options::PG_CHANNEL]),
    scheme!("mongodb", "mongodb", mongo::build),
    scheme!("mongodb2", "mongodb", mongo::build),
    scheme!("amqp", "amqp", amqp::build),
    scheme!("zmq", "zmq", zmq::build),
    scheme!("zoo", "zoo", zoo::build),
    scheme!(
        "ldap",
        "ldap",
        ldap::build,
        &[options::LDAP_BIND_DN, options::LDAP_BIND_PASSWORD]
    ),
    scheme!("etcd", "etcd", etcd::build),
    scheme!("file", "file", file::build),
];

/// The schemes this binary was built with, in registration order.
pub fn schemes() -> Vec<&'static str> {
    SCHEMES
        .iter()
        .filter(|s| s.is_built())
        .map(|s| s.name)
        .collect()
}

fn scheme(name: &str) -> Option<&'static Scheme> {
    SCHEMES.iter().find(|s| s.name == name)
}

/// The monitor-specific options, listed by the rows that read them. They
/// are declared here rather than in their modules so that a binary built
/// without a monitor still accepts (and ignores) its options, as before.
pub mod options {
    use crate::{MonitorOption, OptionKind};

    /// `--emperor-pg-channel NAME`: the channel pg:// monitors LISTEN on
    /// (`imperium` when not given; empty turns LISTEN off).
    pub const PG_CHANNEL: MonitorOption = MonitorOption {
        name: "emperor-pg-channel",
        kind: OptionKind::Text,
    };

    /// `--emperor-ldap-binddn DN`: the DN ldap:// monitors bind as when
    /// their URL names none.
    pub const LDAP_BIND_DN: MonitorOption = MonitorOption {
        name: "emperor-ldap-binddn",
        kind: OptionKind::Text,
    };

    /// `--emperor-ldap-bindpw-file PATH` (or `IMPERIUM_LDAP_BINDPW`): the
    /// bind password of ldap:// monitors when their URL gives none.
    pub const LDAP_BIND_PASSWORD: MonitorOption = MonitorOption {
        name: "emperor-ldap-bindpw-file",
        kind: OptionKind::SecretFile {
            env: "IMPERIUM_LDAP_BINDPW",
        },
    };
}

/// An option a row declares, and whether that row is built.
pub(crate) struct Declared {
    pub option: &'static MonitorOption,
    pub built: bool,
}

/// The option `name` and whether a monitor built in reads it.
pub(crate) fn declared(name: &str) -> Option<Declared> {
    SCHEMES.iter().find_map(|s| {
        let option = s.options.iter().find(|o| o.name == name)?;
        Some(Declared {
            option,
            built: s.is_built(),
        })
    })
}

/// Builds the monitor for one `--emperor` value with no monitor-specific
/// options set (each monitor's defaults). See [`build_with`].
pub fn build(url: &str, opts: &MonitorOptions) -> Result<Box<dyn Monitor>, MonitorError> {
    build_with(url, opts, &MonitorArgs::default())
}

/// Builds the monitor for one `--emperor` value. Start-up errors (a bad URL,
/// a directory that does not exist) are returned here, before anything runs.
pub fn build_with(
    url: &str,
    opts: &MonitorOptions,
    args: &MonitorArgs,
) -> Result<Box<dyn Monitor>, MonitorError> {
    if let Some((name, rest)) = url.split_once("://") {
        // an unknown scheme falls through to the path rules, as uWSGI does
        if let Some(s) = scheme(name) {
            let t = Target {
                url,
                rest,
                opts,
                args,
            };
            return match s.build {
                Some(build) => build(&t),
                // only the scheme: the rest may hold a password
                None => Err(MonitorError::NotBuilt {
                    url: format!("{name}://..."),
                    scheme: s.feature.to_string(),
                }),
            };
        }
    }
    build_bare(url, opts, args)
}

/// A value without a known scheme: an existing directory is `dir://`, a
/// pattern with a wildcard is `glob://`.
fn build_bare(
    url: &str,
    opts: &MonitorOptions,
    args: &MonitorArgs,
) -> Result<Box<dyn Monitor>, MonitorError> {
    let t = Target {
        url,
        rest: url,
        opts,
        args,
    };
    let has_wildcard = url.contains(['*', '?', '[']);
    let name = if has_wildcard { "glob" } else { "dir" };
    let Some(build) = scheme(name).and_then(|s| s.build) else {
        return Err(MonitorError::NotBuilt {
            url: url.to_string(),
            scheme: "dir".to_string(),
        });
    };
    if !has_wildcard {
        let path = opts.cwd.join(url);
        if !path.is_dir() {
            return Err(MonitorError::BadUrl {
                url: url.to_string(),
                reason: if path.exists() {
                    "not a directory and not a glob pattern (to watch a single file use file://PATH)"
                        .to_string()
                } else {
                    "no such directory (a bare --emperor value must be an existing directory or a glob pattern)".to_string()
                },
            });
        }
    }
    build(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_and_every_option_is_listed_once() {
        let mut names: Vec<_> = SCHEMES.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SCHEMES.len());
        let mut opts: Vec<_> = SCHEMES
            .iter()
            .flat_map(|s| s.options.iter().map(|o| o.name))
            .collect();
        let n = opts.len();
        opts.sort();
        opts.dedup();
        assert_eq!(opts.len(), n);
    }

    #[test]
    fn a_scheme_left_out_is_named_without_the_rest_of_the_url() {
        for s in SCHEMES.iter().filter(|s| !s.is_built()) {
            let err = build(&format!("{}://u:secret@h/", s.name), &Default::default())
                .err()
                .unwrap()
                .to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
