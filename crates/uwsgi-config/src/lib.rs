//! uWSGI 2.0.21's config language, as the emperor itself reads it.
//!
//! This crate turns a command line, an environment and the config files they
//! name (ini, XML, YAML, JSON, nested through `include`, `ini`, ... ) into one
//! flat, ordered list of `(key, value, origin)` [`Entry`]s: the same list uWSGI
//! 2.0.21 builds internally (its "exported options", what `--show-config`
//! prints). It does not know what the options mean: the caller passes the
//! option table through [`OptionTable`] (for the command line's arities and
//! short letters), and decides what to do with each key, known or not.
//!
//! The config language itself (loaders such as `ini`/`include`, `set`,
//! `set-placeholder`, `if-*`/`for*` blocks, `strict`, `inject-*`) is handled
//! here whatever table is passed; [`is_config_language`] tells the caller
//! which keys those are. Their entries stay in the list (uWSGI keeps them too),
//! so the caller should skip them.
//!
//! ```
//! use uwsgi_config::{parse, Arity, Context, StaticTable};
//!
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("emperor.ini"),
//!     "[uwsgi]\nbase = /srv\nemperor = %(base)/vassals\nmaster\n").unwrap();
//!
//! let table = StaticTable::new()
//!     .option("emperor", Arity::Required, None)
//!     .option("master", Arity::None, Some('M'));
//! let mut ctx = Context::fixed();
//! ctx.cwd = dir.path().to_path_buf();
//! let args = ["--ini".to_string(), "emperor.ini".to_string()];
//! let config = parse(&args, &table, &ctx).unwrap();
//! let pairs: Vec<_> = config.entries.iter()
//!     .filter(|e| !uwsgi_config::is_config_language(&e.key))
//!     .map(|e| (e.key.as_str(), e.value.as_deref()))
//!     .collect();
//! assert_eq!(pairs, [("base", Some("/srv")), ("emperor", Some("/srv/vassals")), ("master", Some(""))]);
//! ```
//!
//! See `docs/config-language.md` in the repository for every construct and
//! every deliberate difference from uWSGI.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cmdline;
mod engine;
mod error;
mod ini;
mod json;
mod magic;
mod source;
#[cfg(test)]
mod tests;
mod xml;
mod yaml;

use std::fmt;
use std::path::PathBuf;

pub use error::{CmdLineError, Error};

/// Whether a command-line option takes an argument (glibc's `has_arg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// A flag: `--master`, `-M`. `--master=x` is an error.
    None,
    /// `--name value`, `--name=value`, `-d value`, `-dvalue`.
    Required,
    /// Only `--name=value` or `-xvalue` take a value; `--name value` does not.
    Optional,
}

/// The caller's option table: what the command line needs to know.
///
/// Config-language keys ([`is_config_language`]) are known to the crate and
/// need not be in the table (if they are, the crate's own definition wins).
pub trait OptionTable {
    /// The arity of the long option `long`, or `None` if there is no such option.
    fn arity(&self, long: &str) -> Option<Arity>;

    /// The long option a short letter stands for. When several uWSGI options
    /// share a letter (`-x` is both `xmlconfig` and `xml`), uWSGI uses the
    /// first one of its table: return that one. The crate itself maps `-x`
    /// to `xmlconfig`, `-y` to `yaml`, `-j` to `json` and `-S` to `set`.
    fn long_of_short(&self, short: char) -> Option<&str>;

    /// Every long option name, in table order, for getopt's unambiguous
    /// abbreviations (`--emp` for `--emperor`). The default, an empty list,
    /// disables abbreviations: then only exact names are accepted.
    fn long_names(&self) -> Vec<&str> {
        Vec::new()
    }

    /// Whether uWSGI runs this option while parsing (`UWSGI_OPT_IMMEDIATE`).
    /// Only used for one uWSGI detail: values of immediate options are not
    /// expanded by the `$(..)`, `@(..)`, `%(..)` passes. Defaults to `false`.
    fn is_immediate(&self, _long: &str) -> bool {
        false
    }
}

/// A simple [`OptionTable`] built in code.
#[derive(Debug, Clone, Default)]
pub struct StaticTable {
    options: Vec<(String, Arity, Option<char>, bool)>,
}

impl StaticTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an option (builder style). The first option with a given short
    /// letter owns it, like in uWSGI.
    pub fn option(mut self, long: &str, arity: Arity, short: Option<char>) -> Self {
        self.options.push((long.to_string(), arity, short, false));
        self
    }

    /// Adds an option that uWSGI marks `UWSGI_OPT_IMMEDIATE`.
    pub fn immediate_option(mut self, long: &str, arity: Arity, short: Option<char>) -> Self {
        self.options.push((long.to_string(), arity, short, true));
        self
    }
}

impl OptionTable for StaticTable {
    fn arity(&self, long: &str) -> Option<Arity> {
        self.options.iter().find(|o| o.0 == long).map(|o| o.1)
    }
    fn long_of_short(&self, short: char) -> Option<&str> {
        self.options
            .iter()
            .find(|o| o.2 == Some(short))
            .map(|o| o.0.as_str())
    }
    fn long_names(&self) -> Vec<&str> {
        self.options.iter().map(|o| o.0.as_str()).collect()
    }
    fn is_immediate(&self, long: &str) -> bool {
        self.options.iter().any(|o| o.0 == long && o.3)
    }
}

/// Where an entry (or a problem) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The command line; `index` is the 1-based argv index (argv\[0\] being
    /// the program, i.e. `args[index - 1]` of what was passed to [`parse`]).
    CommandLine {
        /// 1-based argv index.
        index: usize,
    },
    /// A `UWSGI_*` environment variable.
    Env {
        /// The variable's name, e.g. `UWSGI_EMPEROR`.
        var: String,
    },
    /// A config file (or `exec://`, `fd://` source).
    File {
        /// The name as written (without `:section`).
        path: String,
        /// 1-based line, when the format gives one.
        line: Option<usize>,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine { index } => write!(f, "command line argument #{index}"),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{path} line {l}"),
            Origin::File { path, line: None } => write!(f, "{path}"),
        }
    }
}

/// One option, as uWSGI stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, as uWSGI has it: the long name for command-line options
    /// (short letters and abbreviations resolved), `UWSGI_FOO_BAR` as
    /// `foo-bar`, and file keys exactly as written (uWSGI does not turn `_`
    /// into `-` in files: `chdir_x` stays `chdir_x`).
    pub key: String,
    /// The value. `None` only for a command-line flag given without value
    /// (`--master`, `-M`), which `--show-config` prints as `true`. A bare
    /// `master` line in an ini file is `Some("")`; XML `<master/>` and JSON
    /// `true` are `Some("1")`.
    pub value: Option<String>,
    /// Where it comes from.
    pub origin: Origin,
}

/// Something uWSGI prints and goes on past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The message (uWSGI's wording where it has one).
    pub message: String,
    /// Where, when known.
    pub origin: Option<Origin>,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(o) => write!(f, "{o}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The result of [`parse`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Every entry, in uWSGI's order.
    pub entries: Vec<Entry>,
    /// What uWSGI would have printed as a warning.
    pub warnings: Vec<Warning>,
}

impl Config {
    /// The entries that are not config language: what the caller interprets.
    pub fn options(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| !is_config_language(&e.key))
    }

    /// The first value of `key`, as uWSGI's own `uwsgi_get_exported_opt`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .and_then(|e| e.value.as_deref())
    }
}

/// Everything the parser would otherwise read from the system, so that it is
/// deterministic in tests. [`Context::from_system`] fills it from the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The environment, in `environ` order (`UWSGI_*` options are taken in
    /// this order; `$(VAR)` and `if-env` use the first match).
    pub env: Vec<(String, String)>,
    /// `%h`, `if-hostname`.
    pub hostname: String,
    /// `%k`.
    pub cpus: u32,
    /// `%u`.
    pub uid: u32,
    /// `%g`.
    pub gid: u32,
    /// `%U` (uWSGI falls back to the uid when there is no passwd entry).
    pub user: String,
    /// `%G` (falls back to the gid).
    pub group: String,
    /// `%t`: seconds since the epoch.
    pub now_secs: i64,
    /// `%T`: microseconds since the epoch.
    pub now_micros: i64,
    /// The working directory: `%v`, and the base of every relative path.
    pub cwd: PathBuf,
    /// `%b` (uWSGI: its binary path).
    pub binary_path: String,
    /// `%V`. Debian's build says `2.0.21-debian`.
    pub version: String,
    /// Plugins considered loaded, for `if-plugin`/`if-not-plugin`.
    pub plugins: Vec<String>,
}

impl Context {
    /// A fixed context for tests: empty environment, hostname `localhost`,
    /// 1 cpu, uid/gid 0 (`root`), time 0, cwd `/`, version `2.0.21`.
    pub fn fixed() -> Self {
        Context {
            env: Vec::new(),
            hostname: "localhost".into(),
            cpus: 1,
            uid: 0,
            gid: 0,
            user: "root".into(),
            group: "root".into(),
            now_secs: 0,
            now_micros: 0,
            cwd: PathBuf::from("/"),
            binary_path: String::new(),
            version: "2.0.21".into(),
            plugins: Vec::new(),
        }
    }

    /// Reads everything from the running process and system.
    pub fn from_system() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        let group = nix::unistd::Group::from_gid(gid)
            .ok()
            .flatten()
            .map(|g| g.name)
            .unwrap_or_else(|| gid.to_string());
        Context {
            env: std::env::vars_os()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            user,
            group,
            now_secs: now.as_secs() as i64,
            now_micros: now.as_micros() as i64,
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            binary_path: std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            version: "2.0.21".into(),
            plugins: Vec::new(),
        }
    }
}

/// Caps on hostile input. Every limit, when hit, is a clear [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How deeply config files may nest (`include` in `include` ...).
    pub max_depth: usize,
    /// How many entries in total.
    pub max_entries: usize,
    /// How long a value may grow through `$(..)`, `@(..)`, `%(..)`.
    pub max_value_len: usize,
    /// How many substitutions one value may need (stops `a = %(a)`).
    pub max_substitutions: usize,
    /// How large a config file (or `exec://` output) may be.
    pub max_file_size: usize,
    /// Read config sources from regular files only: `exec://` (a shell
    /// command) and `fd://` (an inherited descriptor) are refused as
    /// unsupported sources, and a path that is not a regular file (a FIFO,
    /// a device, `/dev/stdin`) is a read error. Off by default, as in uWSGI;
    /// on for input nobody vetted (the fuzz targets turn it on).
    pub files_only: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 32,
            max_entries: 100_000,
            max_value_len: 1 << 20,
            max_substitutions: 10_000,
            max_file_size: 16 << 20,
            files_only: false,
        }
    }
}

/// The keys the crate consumes itself: loaders (`ini`, `include`, `inherit`,
/// `xml`, `xmlconfig`, `yaml`, `yml`, `json`, `js`, `config`), placeholders
/// (`set`, `set-placeholder`, `set-ph`), logic (`if-*`, `ifenv`, `ifexists`,
/// `ifdir`, `ifplugin`, `if-directory`, `for`, `for-glob`, `for-times`,
/// `for-readline`, `endif`, `end-if`, `endfor`, `end-for`, and `end`, which
/// uWSGI does not define as an option but which closes a block), `strict`,
/// `inject-before`, `inject-after`.
///
/// Their entries stay in [`Config::entries`] (uWSGI keeps them too, and
/// `--show-config` prints them); a caller interpreting options skips them.
/// Note that `set = name=value` also adds an ordinary `name = value` entry.
pub fn is_config_language(key: &str) -> bool {
    engine::builtin(key).is_some()
}

/// Parses `args` (the command line without the program name), the
/// environment and every config file they name, as uWSGI 2.0.21 does, with
/// the default [`Limits`].
pub fn parse(args: &[String], table: &dyn OptionTable, ctx: &Context) -> Result<Config, Error> {
    parse_with_limits(args, table, ctx, Limits::default())
}

/// [`parse`] with explicit [`Limits`].
///
/// The order is uWSGI's: `UWSGI_*` environment variables (in `ctx.env`
/// order), then command-line options (files named by `--ini` and friends are
/// read at that point, their entries following the loader's entry), then the
/// positional config files, then the `$(VAR)`, `@(file)` and `%(name)`
/// passes over all values, and last the `inherit` files.
pub fn parse_with_limits(
    args: &[String],
    table: &dyn OptionTable,
    ctx: &Context,
    limits: Limits,
) -> Result<Config, Error> {
    engine::Engine::new(table, ctx, limits).run(args)
}
