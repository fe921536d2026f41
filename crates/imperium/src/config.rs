//! From uWSGI-style settings (the command line, `UWSGI_*` variables and
//! config files, already expanded) to imperium's command line: each key is
//! classified (see [`crate::options`]) and becomes a `clap` argument, an
//! info line, a warning or an error.

use std::ffi::OsString;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::options::{classify, uwsgi_options, Class};

/// One option as the config language produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The option's long name (`-` separated).
    pub key: String,
    /// Its value (`None` for a flag given without one on the command line).
    pub value: Option<String>,
    /// Where it was set, for messages: `emperor.ini:4`, `the command line`,
    /// `$UWSGI_MASTER`.
    pub origin: String,
}

/// Something to tell the operator once logging is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Accepted and ignored.
    Ignored {
        /// The option.
        key: String,
        /// Where it was set.
        origin: String,
        /// Why it means nothing here.
        why: &'static str,
    },
    /// A warning of the config language (a missing section, a block left
    /// open, ...), which uWSGI prints too.
    Config(String),
    /// Nobody has classified this option: ignored, as uWSGI ignores unknown
    /// keys.
    Unknown {
        /// The option.
        key: String,
        /// Where it was set.
        origin: String,
        /// Whether uWSGI 2.0.21 knows it (as an option of its own).
        uwsgi_knows: bool,
    },
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Ignored { key, origin, why } => {
                write!(f, "{origin}: option '{key}' ignored: {why}")
            }
            Note::Config(w) => f.write_str(w),
            Note::Unknown {
                key,
                origin,
                uwsgi_knows: true,
            } => write!(
                f,
                "{origin}: uWSGI option '{key}' has no meaning in imperium and is ignored (--strict makes this an error; see docs/migrating.md)"
            ),
            Note::Unknown { key, origin, .. } => write!(
                f,
                "{origin}: unknown option '{key}' ignored, as uWSGI ignores unknown keys (--strict makes this an error)"
            ),
        }
    }
}

/// A setting that stops start-up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// An option imperium refuses.
    #[error("{origin}: option '{key}' is not supported: {why}")]
    Unsupported {
        /// The option.
        key: String,
        /// Where it was set.
        origin: String,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// An unknown option under `--strict`.
    #[error("{origin}: unknown option '{key}' (--strict is on; see docs/migrating.md)")]
    Strict {
        /// The option.
        key: String,
        /// Where it was set.
        origin: String,
    },
    /// A flag with a value that is not a boolean.
    #[error(
        "{origin}: option '{key}' is a flag; use true/false, yes/no, on/off or 1/0, not {value:?}"
    )]
    BadFlag {
        /// The option.
        key: String,
        /// Where it was set.
        origin: String,
        /// The value given.
        value: String,
    },
}

/// The command line for `clap`, and what to tell the operator.
#[derive(Debug, Default)]
pub struct Prepared {
    /// `argv[0]` and then one `--long=value` or `--long` per setting.
    pub args: Vec<OsString>,
    /// Info lines and warnings, in the order of the settings.
    pub notes: Vec<Note>,
}

/// uWSGI's boolean spellings (`uwsgi_opt_true`): an empty value is true.
pub fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Classifies every setting and builds the command line `clap` parses.
pub fn prepare(argv0: OsString, settings: &[Setting]) -> Result<Prepared, ConfigError> {
    let cmd = Cli::command();
    let strict = settings
        .iter()
        .filter(|s| s.key == "strict")
        .map(|s| s.value.as_deref().map_or(Some(true), truthy))
        .next_back()
        .flatten()
        .unwrap_or(false);
    let mut out = Prepared {
        args: vec![argv0],
        notes: Vec::new(),
    };
    for s in settings {
        let key = s.key.as_str();
        if matches!(key, "help" | "usage" | "version") {
            let flag = if key == "version" {
                "--version"
            } else {
                "--help"
            };
            out.args.push(OsString::from(flag));
            continue;
        }
        let arg = cmd.get_arguments().find(|a| {
            a.get_long() == Some(key)
                || a.get_all_aliases()
                    .into_iter()
                    .flatten()
                    .any(|al| al == key)
        });
        if let Some(arg) = arg {
            let long = arg.get_long().unwrap_or(key);
            if arg.get_action().takes_values() {
                match &s.value {
                    Some(v) => out.args.push(OsString::from(format!("--{long}={v}"))),
                    None => out.args.push(OsString::from(format!("--{long}"))),
                }
            } else {
                match s.value.as_deref().map_or(Some(true), truthy) {
                    Some(true) => out.args.push(OsString::from(format!("--{long}"))),
                    Some(false) => {}
                    None => {
                        return Err(ConfigError::BadFlag {
                            key: key.to_string(),
                            origin: s.origin.clone(),
                            value: s.value.clone().unwrap_or_default(),
                        })
                    }
                }
            }
            continue;
        }
        match classify(key) {
            Some(Class::Ignored(why)) => out.notes.push(Note::Ignored {
                key: key.to_string(),
                origin: s.origin.clone(),
                why,
            }),
            Some(Class::Unsupported(why)) => {
                return Err(ConfigError::Unsupported {
                    key: key.to_string(),
                    origin: s.origin.clone(),
                    why,
                })
            }
            None => {
                if strict {
                    return Err(ConfigError::Strict {
                        key: key.to_string(),
                        origin: s.origin.clone(),
                    });
                }
                out.notes.push(Note::Unknown {
                    key: key.to_string(),
                    origin: s.origin.clone(),
                    uwsgi_knows: uwsgi_options().contains_key(key),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Setting {
        Setting {
            key: key.into(),
            value: Some(value.into()),
            origin: format!("e.ini:{key}"),
        }
    }

    #[test]
    fn debian_stock_emperor_ini_prepares() {
        let s = [
            set("master", "true"),
            set("workers", "2"),
            set("no-orphans", "true"),
            set("log-date", "true"),
            set("uid", "www-data"),
            set("gid", "www-data"),
            set("emperor", "/etc/uwsgi-emperor/vassals"),
        ];
        let p = prepare("imperium".into(), &s).unwrap();
        let args: Vec<_> = p.args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "imperium",
                "--log-date=true",
                "--uid=www-data",
                "--gid=www-data",
                "--emperor=/etc/uwsgi-emperor/vassals"
            ]
        );
        let ignored: Vec<_> = p
            .notes
            .iter()
            .map(|n| match n {
                Note::Ignored { key, .. } => key.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ignored, ["master", "workers", "no-orphans"]);
        assert!(p.notes[0]
            .to_string()
            .contains("e.ini:master: option 'master' ignored"));
    }

    #[test]
    fn flags_aliases_unknown_unsupported_and_strict() {
        let p = prepare(
            "imperium".into(),
            &[
                set("stats", "127.0.0.1:1717"),
                set("emperor-tyrant", "true"),
                set("emperor-nofollow", "false"),
                Setting {
                    key: "die-on-term".into(),
                    value: None,
                    origin: "the command line".into(),
                },
                set("frobnicate", "1"),
                set("ugreen", "1"),
            ],
        )
        .unwrap();
        let args: Vec<_> = p.args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "imperium",
                "--emperor-stats=127.0.0.1:1717",
                "--emperor-tyrant",
                "--die-on-term"
            ]
        );
        assert!(
            matches!(&p.notes[0], Note::Unknown { key, uwsgi_knows: false, .. } if key == "frobnicate")
        );
        assert!(p.notes[0]
            .to_string()
            .contains("unknown option 'frobnicate'"));
        let e = prepare("i".into(), &[set("socket", ":8000")]).unwrap_err();
        assert!(
            e.to_string().contains("option 'socket' is not supported"),
            "{e}"
        );
        let e = prepare("i".into(), &[set("strict", "true"), set("frobnicate", "1")]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Strict {
                key: "frobnicate".into(),
                origin: "e.ini:frobnicate".into()
            }
        );
        let e = prepare("i".into(), &[set("emperor-tyrant", "maybe")]).unwrap_err();
        assert!(e.to_string().contains("is a flag"), "{e}");
    }
}
