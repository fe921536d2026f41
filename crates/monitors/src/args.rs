//! Monitor-specific options: each monitor's registry row declares the
//! command-line options it reads ([`MonitorOption`]); the command line hands
//! their values over in one [`MonitorArgs`], so that the emperor crate knows
//! none of them.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

use emperor::{MonitorError, Secret};

/// A command-line option a monitor reads (`--NAME VALUE`), listed in the
/// monitor's registry row (see [`crate::options`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorOption {
    /// The long option without its dashes, for example `emperor-pg-channel`.
    pub name: &'static str,
    /// How its value is taken.
    pub kind: OptionKind,
}

/// How the value of a [`MonitorOption`] is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionKind {
    /// Text, used as given.
    Text,
    /// The path of a file whose first line is a secret (a password). The
    /// file is read once, when the option is set, so an unreadable file is
    /// a start-up error; without the option, the environment variable `env`
    /// holds the secret (kept out of argv and logs).
    SecretFile {
        /// The variable read when the option is not given.
        env: &'static str,
    },
}

#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Secret(Secret),
}

/// The values of the monitor-specific options, as the command line gave
/// them. Options nobody set are absent; each monitor applies its defaults.
///
/// ```
/// let mut args = monitors::MonitorArgs::default();
/// // true: a monitor built into this binary reads it
/// assert_eq!(args.set("emperor-pg-channel", "fleet").unwrap(), cfg!(feature = "pg"));
/// assert!(args.set("emperor-frobnicate", "x").is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct MonitorArgs {
    values: BTreeMap<&'static str, Value>,
}

impl MonitorArgs {
    /// Sets the option `name` (the long option without its dashes) to
    /// `value`: the text itself, or for a [`OptionKind::SecretFile`] the
    /// path of the file, which is read now. Returns false when the option
    /// belongs to a monitor this binary was built without (the value is then
    /// ignored); an option no monitor declares, or a file that cannot be
    /// read, is an error.
    pub fn set(&mut self, name: &str, value: impl AsRef<OsStr>) -> Result<bool, MonitorError> {
        let value = value.as_ref();
        let Some(opt) = crate::declared(name) else {
            return Err(MonitorError::BadOption {
                option: name.to_string(),
                reason: "no monitor reads this option".to_string(),
            });
        };
        if !opt.built {
            return Ok(false);
        }
        let v = match opt.option.kind {
            OptionKind::Text => Value::Text(
                value
                    .to_str()
                    .ok_or_else(|| MonitorError::BadOption {
                        option: name.to_string(),
                        reason: "the value is not valid UTF-8".to_string(),
                    })?
                    .to_string(),
            ),
            OptionKind::SecretFile { .. } => Value::Secret(read_secret(name, Path::new(value))?),
        };
        self.values.insert(opt.option.name, v);
        Ok(true)
    }

    /// Sets a [`OptionKind::SecretFile`] option to the secret itself, for
    /// callers that hold it already. Returns false when no monitor built
    /// into this binary reads the option (the secret is then dropped).
    pub fn set_secret(&mut self, name: &str, secret: Secret) -> bool {
        match crate::declared(name) {
            Some(opt) if opt.built && matches!(opt.option.kind, OptionKind::SecretFile { .. }) => {
                self.values.insert(opt.option.name, Value::Secret(secret));
                true
            }
            _ => false,
        }
    }

    /// The text of `opt`, when it was set.
    pub fn text(&self, opt: &MonitorOption) -> Option<&str> {
        match self.values.get(opt.name) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// The secret of `opt`: from its file when the option was set, else
    /// from its environment variable (when set and not empty).
    pub fn secret(&self, opt: &MonitorOption) -> Option<Secret> {
        match (self.values.get(opt.name), opt.kind) {
            (Some(Value::Secret(s)), _) => Some(s.clone()),
            (None, OptionKind::SecretFile { env }) => std::env::var(env)
                .ok()
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            _ => None,
        }
    }
}

/// The first line of the file at `path`, line end removed.
fn read_secret(option: &str, path: &Path) -> Result<Secret, MonitorError> {
    let text = std::fs::read_to_string(path).map_err(|error| MonitorError::OptionFile {
        option: option.to_string(),
        path: path.to_path_buf(),
        error,
    })?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

#[cfg(all(test, feature = "ldap"))]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_when_set_and_an_unreadable_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let opt = crate::options::LDAP_BIND_PASSWORD;
        let mut args = MonitorArgs::default();
        assert!(args.set(opt.name, &f).unwrap());
        assert_eq!(args.secret(&opt), Some(Secret::new("s3cret")));
        let err = args
            .set(opt.name, dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--emperor-ldap-bindpw-file ") && err.contains("No such file"),
            "{err}"
        );
    }
}
