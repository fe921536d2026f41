//! Error type of the crate.

use crate::Origin;

/// Everything that makes uWSGI 2.0.21 stop (it calls `exit(1)`), plus the
/// limits this crate adds on hostile input.
///
/// Every variant names where the problem is: the file (and line when known),
/// the command-line argument or the environment variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line is not valid for GNU `getopt_long`, the way uWSGI
    /// parses it. uWSGI prints glibc's message (the same text as
    /// [`CmdLineError`]'s `Display`) then `getopt_long() error` and exits 1.
    #[error(transparent)]
    CmdLine(#[from] CmdLineError),

    /// A config file (or `@(file)`, `for-readline` excepted) cannot be read.
    #[error("{origin}: unable to read {path}: {source}")]
    Read {
        /// The path as written in the config.
        path: String,
        /// Where the path was given.
        origin: Origin,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// `exec://command` could not be run.
    #[error("{origin}: unable to run {command:?}: {source}")]
    Exec {
        /// The command (after `exec://`).
        command: String,
        /// Where it was given.
        origin: Origin,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A source uWSGI supports but this crate deliberately does not (`http://`
    /// needs the network; `emperor://`, `data://`, `sym://`, `section://`,
    /// `call://`, `callint://` read from a uWSGI binary or its emperor; `-` is
    /// standard input).
    #[error("{origin}: config source {source_name:?} is not supported: {reason}")]
    UnsupportedSource {
        /// The source as written.
        source_name: String,
        /// Where it was given.
        origin: Origin,
        /// Why.
        reason: &'static str,
    },

    /// `include`, a positional argument or `config` named a file whose
    /// extension uWSGI does not know (`.ini`, `.xml`, `.yaml`, `.yml`,
    /// `.json`, `.js`); uWSGI says `unable to load configuration from X`.
    /// Note that `include = file.ini:section` is such a file for uWSGI too.
    #[error("{origin}: unable to load configuration from {path}")]
    UnknownConfigType {
        /// The name as written.
        path: String,
        /// Where it was given.
        origin: Origin,
    },

    /// A file uWSGI rejects as malformed (XML, JSON, YAML), or a construct it
    /// crashes on.
    #[error("{path}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Syntax {
        /// The file as written in the config.
        path: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong (uWSGI's wording where it has one).
        message: String,
    },

    /// A `set`/`set-placeholder` value without `=`
    /// (uWSGI: `invalid placeholder/--set value`).
    #[error("{origin}: invalid placeholder/--set value {value:?} (must be name=value)")]
    InvalidSet {
        /// The value.
        value: String,
        /// Where.
        origin: Origin,
    },

    /// `set-placeholder` names something that is an option
    /// (uWSGI: `you cannot use X as a placeholder, it is already available as an option`).
    #[error(
        "{origin}: you cannot use {name} as a placeholder, it is already available as an option"
    )]
    PlaceholderIsOption {
        /// The name.
        name: String,
        /// Where.
        origin: Origin,
    },

    /// An `if-*`/`for*` that becomes active while another block is running
    /// (uWSGI: `recursive logic in options is not supported`).
    #[error("{origin}: recursive logic in options is not supported (option = {key})")]
    RecursiveLogic {
        /// The logic key.
        key: String,
        /// Where.
        origin: Origin,
    },

    /// After `strict`, a key that is neither config language nor in the
    /// option table (uWSGI: `[strict-mode] unknown config directive`).
    #[error("{origin}: [strict-mode] unknown config directive: {key}")]
    Strict {
        /// The key.
        key: String,
        /// Where.
        origin: Origin,
    },

    /// A file includes itself, directly or through others (uWSGI recurses
    /// until it runs out of memory). `chain` lists the files, outermost first,
    /// ending with the one that closes the loop.
    #[error("config include loop: {}", chain.join(" -> "))]
    IncludeLoop {
        /// The files, outermost first.
        chain: Vec<String>,
    },

    /// Files nested deeper than [`crate::Limits::max_depth`].
    #[error("{origin}: config files nested deeper than {limit} levels (at {path})")]
    TooDeep {
        /// The file that would exceed the limit.
        path: String,
        /// Where it was named.
        origin: Origin,
        /// The limit.
        limit: usize,
    },

    /// More entries than [`crate::Limits::max_entries`].
    #[error("{origin}: more than {limit} config entries")]
    TooManyEntries {
        /// Where the entry over the limit came from.
        origin: Origin,
        /// The limit.
        limit: usize,
    },

    /// A value grew beyond [`crate::Limits::max_value_len`] bytes, or a file
    /// is larger than [`crate::Limits::max_file_size`].
    #[error("{origin}: {what} larger than {limit} bytes")]
    TooLarge {
        /// "value of KEY" or "file PATH".
        what: String,
        /// Where.
        origin: Origin,
        /// The limit.
        limit: usize,
    },

    /// A placeholder that keeps expanding into itself (e.g. `a = x%(a)`):
    /// uWSGI loops until it runs out of memory; this crate stops after
    /// [`crate::Limits::max_substitutions`] substitutions in one value.
    #[error("{origin}: placeholder loop while expanding {key} (more than {limit} substitutions)")]
    PlaceholderLoop {
        /// The key whose value was being expanded.
        key: String,
        /// Where the entry came from.
        origin: Origin,
        /// The limit.
        limit: usize,
    },
}

/// Command-line errors, worded like glibc's `getopt_long` (without the
/// leading `uwsgi: ` program name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmdLineError {
    /// `--name` that no option has.
    #[error("unrecognized option '--{name}'")]
    Unrecognized {
        /// The name, without `--` and `=value`.
        name: String,
        /// 1-based argv index.
        index: usize,
    },
    /// `--prefix` that abbreviates several options.
    #[error("option '--{name}' is ambiguous; possibilities:{}", candidates.iter().map(|c| format!(" '--{c}'")).collect::<String>())]
    Ambiguous {
        /// What was typed.
        name: String,
        /// The options it abbreviates.
        candidates: Vec<String>,
        /// 1-based argv index.
        index: usize,
    },
    /// `--flag=value` for an option without argument.
    #[error("option '--{name}' doesn't allow an argument")]
    NoArgumentAllowed {
        /// The full option name.
        name: String,
        /// 1-based argv index.
        index: usize,
    },
    /// `--name` (required argument) as the last argument.
    #[error("option '--{name}' requires an argument")]
    LongRequiresArgument {
        /// The full option name.
        name: String,
        /// 1-based argv index.
        index: usize,
    },
    /// `-x` (required argument) as the last argument.
    #[error("option requires an argument -- '{short}'")]
    ShortRequiresArgument {
        /// The letter.
        short: char,
        /// 1-based argv index.
        index: usize,
    },
    /// `-Z` that no option has.
    #[error("invalid option -- '{short}'")]
    InvalidShort {
        /// The letter.
        short: char,
        /// 1-based argv index.
        index: usize,
    },
}
