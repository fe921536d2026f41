//! The core: uWSGI's list of exported options and the config language that
//! feeds it (`add_exported_option`, the logic blocks, the loaders, the
//! placeholder passes of core/config.c, core/uwsgi.c and core/utils.c).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;

use crate::magic::{self, MagicTable};
use crate::source::{self, atoi, resolve, split_section};
use crate::{cmdline, ini, json, xml, yaml};
use crate::{Arity, Config, Context, Entry, Error, Limits, OptionTable, Origin, Warning};

/// A config-language key the crate handles itself.
#[derive(Debug)]
pub(crate) struct Builtin {
    pub(crate) name: &'static str,
    pub(crate) arity: Arity,
    kind: Kind,
    /// Whether uWSGI has it as an option (`end` is not one: it only closes blocks).
    pub(crate) is_option: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Ini,
    Xml,
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Load(Format),
    /// `include`, and positional arguments: by extension (`uwsgi_opt_load`).
    LoadByExtension,
    /// `config`: uWSGI's pluggable configurators; the core registers none.
    LoadConfig,
    /// `inherit`: like `include`, but not immediate (loaded after the passes).
    Inherit,
    Set,
    SetPlaceholder,
    Logic(Logic),
    EndBlock,
    Strict,
    InjectBefore,
    InjectAfter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logic {
    For,
    ForGlob,
    ForTimes,
    ForReadline,
    IfOpt(bool),
    IfEnv(bool),
    IfReload(bool),
    IfHostname(bool),
    IfHostnameMatch(bool),
    IfExists(bool),
    IfPlugin(bool),
    IfFile(bool),
    IfDir(bool),
}

macro_rules! b {
    ($name:expr, $arity:ident, $kind:expr) => {
        Builtin {
            name: $name,
            arity: Arity::$arity,
            kind: $kind,
            is_option: true,
        }
    };
}

/// The config-language keys, in uWSGI's table order.
pub(crate) static BUILTINS: &[Builtin] = &[
    b!("xmlconfig", Required, Kind::Load(Format::Xml)),
    b!("xml", Required, Kind::Load(Format::Xml)),
    b!("config", Required, Kind::LoadConfig),
    b!("strict", None, Kind::Strict),
    b!("set", Required, Kind::Set),
    b!("set-placeholder", Required, Kind::SetPlaceholder),
    b!("set-ph", Required, Kind::SetPlaceholder),
    b!("for", Required, Kind::Logic(Logic::For)),
    b!("for-glob", Required, Kind::Logic(Logic::ForGlob)),
    b!("for-times", Required, Kind::Logic(Logic::ForTimes)),
    b!("for-readline", Required, Kind::Logic(Logic::ForReadline)),
    b!("endfor", Optional, Kind::EndBlock),
    b!("end-for", Optional, Kind::EndBlock),
    b!("if-opt", Required, Kind::Logic(Logic::IfOpt(true))),
    b!("if-not-opt", Required, Kind::Logic(Logic::IfOpt(false))),
    b!("if-env", Required, Kind::Logic(Logic::IfEnv(true))),
    b!("if-not-env", Required, Kind::Logic(Logic::IfEnv(false))),
    b!("ifenv", Required, Kind::Logic(Logic::IfEnv(true))),
    b!("if-reload", None, Kind::Logic(Logic::IfReload(true))),
    b!("if-not-reload", None, Kind::Logic(Logic::IfReload(false))),
    b!(
        "if-hostname",
        Required,
        Kind::Logic(Logic::IfHostname(true))
    ),
    b!(
        "if-not-hostname",
        Required,
        Kind::Logic(Logic::IfHostname(false))
    ),
    b!(
        "if-hostname-match",
        Required,
        Kind::Logic(Logic::IfHostnameMatch(true))
    ),
    b!(
        "if-not-hostname-match",
        Required,
        Kind::Logic(Logic::IfHostnameMatch(false))
    ),
    b!("if-exists", Required, Kind::Logic(Logic::IfExists(true))),
    b!(
        "if-not-exists",
        Required,
        Kind::Logic(Logic::IfExists(false))
    ),
    b!("ifexists", Required, Kind::Logic(Logic::IfExists(true))),
    b!("if-plugin", Required, Kind::Logic(Logic::IfPlugin(true))),
    b!(
        "if-not-plugin",
        Required,
        Kind::Logic(Logic::IfPlugin(false))
    ),
    b!("ifplugin", Required, Kind::Logic(Logic::IfPlugin(true))),
    b!("if-file", Required, Kind::Logic(Logic::IfFile(true))),
    b!("if-not-file", Required, Kind::Logic(Logic::IfFile(false))),
    b!("if-dir", Required, Kind::Logic(Logic::IfDir(true))),
    b!("if-not-dir", Required, Kind::Logic(Logic::IfDir(false))),
    b!("ifdir", Required, Kind::Logic(Logic::IfDir(true))),
    b!("if-directory", Required, Kind::Logic(Logic::IfDir(true))),
    b!("endif", Optional, Kind::EndBlock),
    b!("end-if", Optional, Kind::EndBlock),
    b!("inherit", Required, Kind::Inherit),
    b!("include", Required, Kind::LoadByExtension),
    b!("inject-before", Required, Kind::InjectBefore),
    b!("inject-after", Required, Kind::InjectAfter),
    b!("ini", Required, Kind::Load(Format::Ini)),
    b!("yaml", Required, Kind::Load(Format::Yaml)),
    b!("yml", Required, Kind::Load(Format::Yaml)),
    b!("json", Required, Kind::Load(Format::Json)),
    b!("js", Required, Kind::Load(Format::Json)),
    Builtin {
        name: "end",
        arity: Arity::Optional,
        kind: Kind::EndBlock,
        is_option: false,
    },
];

/// The builtin definition of `key`, if it is config language.
pub(crate) fn builtin(key: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == key)
}

/// Builtins that are real uWSGI options (what the command line accepts).
pub(crate) fn builtin_option(key: &str) -> Option<&'static Builtin> {
    builtin(key).filter(|b| b.is_option)
}

/// Variables uWSGI does not turn into options (`parse_sys_envs`).
const ENV_EXCLUDED: &[&str] = &[
    "UWSGI_RELOADS",
    "UWSGI_VASSALS_DIR",
    "UWSGI_EMPEROR_FD",
    "UWSGI_BROODLORD_NUM",
    "UWSGI_EMPEROR_FD_CONFIG",
    "UWSGI_EMPEROR_PROXY",
    "UWSGI_JAIL_PID",
    "UWSGI_ORIGINAL_PROC_NAME",
];

struct Item {
    entry: Entry,
    /// uWSGI's `configured`: immediate options and placeholders; the
    /// `$(..)`/`@(..)`/`%(..)` passes skip them.
    configured: bool,
    /// The `inherit` files this entry was loaded through (loop detection).
    inherit_chain: Rc<Vec<String>>,
}

#[derive(Clone)]
struct ActiveLogic {
    logic: Logic,
    arg: Option<String>,
    key: String,
    origin: Origin,
}

#[allow(
    clippy::struct_excessive_bools,
    reason = "independent parser switches of uWSGI's (strict, reload, in-block flags)"
)]
pub(crate) struct Engine<'a> {
    table: &'a dyn OptionTable,
    ctx: &'a Context,
    limits: Limits,
    /// The environment as uWSGI sees it after `uwsgi_setup_reload`.
    env: Vec<(String, String)>,
    is_reload: bool,
    items: Vec<Item>,
    warnings: Vec<Warning>,
    logic: Option<ActiveLogic>,
    logic_running: bool,
    magic: MagicTable,
    first_round: bool,
    last_ini: Option<String>,
    /// Files being read, outermost first: (identity, display name).
    stack: Vec<(String, String)>,
    inject_before: Vec<String>,
    inject_after: Vec<String>,
    strict: bool,
    current_chain: Rc<Vec<String>>,
}

impl<'a> Engine<'a> {
    pub(crate) fn new(table: &'a dyn OptionTable, ctx: &'a Context, limits: Limits) -> Self {
        // uwsgi_setup_reload: UWSGI_RELOADS present means this is a reload,
        // and uWSGI bumps it; absent, it sets it to 0.
        let mut env = ctx.env.clone();
        let mut is_reload = false;
        match env.iter_mut().find(|(k, _)| k == "UWSGI_RELOADS") {
            Some((_, v)) => {
                is_reload = true;
                *v = (atoi(v) as u32).wrapping_add(1).to_string();
            }
            None => env.push(("UWSGI_RELOADS".into(), "0".into())),
        }
        let mut magic = MagicTable::new();
        magic.set(b'v', ctx.cwd.to_string_lossy());
        magic.set(b'h', ctx.hostname.clone());
        magic.set(b't', ctx.now_secs.to_string());
        magic.set(b'T', ctx.now_micros.to_string());
        magic.set(b'V', ctx.version.clone());
        magic.set(b'k', ctx.cpus.to_string());
        magic.set(b'[', "\x1b");
        magic.set(b'u', ctx.uid.to_string());
        magic.set(b'U', ctx.user.clone());
        magic.set(b'g', ctx.gid.to_string());
        magic.set(b'G', ctx.group.clone());
        Engine {
            table,
            ctx,
            limits,
            env,
            is_reload,
            items: Vec::new(),
            warnings: Vec::new(),
            logic: None,
            logic_running: false,
            magic,
            first_round: false,
            last_ini: None,
            stack: Vec::new(),
            inject_before: Vec::new(),
            inject_after: Vec::new(),
            strict: false,
            current_chain: Rc::new(Vec::new()),
        }
    }

    fn getenv(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn run(mut self, args: &[String]) -> Result<Config, Error> {
        // 1. UWSGI_* variables
        for (k, v) in self.ctx.env.clone() {
            if let Some(rest) = k.strip_prefix("UWSGI_") {
                if ENV_EXCLUDED.contains(&k.as_str()) {
                    continue;
                }
                let key: String = rest
                    .chars()
                    .map(|c| match c.to_ascii_lowercase() {
                        '_' => '-',
                        c => c,
                    })
                    .collect();
                self.add(key, Some(v), Origin::Env { var: k.clone() }, false)?;
            }
        }
        // 2. command-line options, then 3. positional config files
        let posix = self.getenv("POSIXLY_CORRECT").is_some();
        let parsed = cmdline::parse(args, self.table, posix)?;
        for (key, value, index) in parsed.options {
            self.add(key, value, Origin::CommandLine { index }, false)?;
        }
        for (arg, index) in parsed.positional {
            if arg.starts_with('[') {
                continue;
            }
            self.load_by_extension(&arg, &Origin::CommandLine { index }, None)?;
        }
        // 4. the passes
        self.apply_pass(b'$')?;
        self.apply_pass(b'@')?;
        self.apply_pass(b'%')?;
        // 5. uwsgi_configure: non-immediate loaders (inherit)
        self.configure()?;
        if let Some(l) = &self.logic {
            self.warnings.push(Warning {
                message: format!(
                    "`{}` block is never closed: uWSGI applies it to everything that follows (imperium-only warning)",
                    l.key
                ),
                origin: Some(l.origin.clone()),
            });
        }
        Ok(Config {
            entries: self.items.into_iter().map(|i| i.entry).collect(),
            warnings: self.warnings,
        })
    }

    fn known(&self, key: &str) -> bool {
        builtin_option(key).is_some() || self.table.arity(key).is_some()
    }

    /// `add_exported_option_do`.
    fn add(
        &mut self,
        key: String,
        value: Option<String>,
        origin: Origin,
        placeholder_only: bool,
    ) -> Result<(), Error> {
        if !self.logic_running {
            if matches!(
                key.as_str(),
                "end" | "endfor" | "endif" | "end-if" | "end-for"
            ) {
                self.logic = None;
            }
            if let Some(active) = self.logic.clone() {
                self.logic_running = true;
                let r = self.run_logic(&active, key, value, origin);
                self.logic_running = false;
                return r;
            }
        }
        if self.strict && !placeholder_only && !self.known(&key) {
            return Err(Error::Strict { key, origin });
        }
        if self.items.len() >= self.limits.max_entries {
            return Err(Error::TooManyEntries {
                origin,
                limit: self.limits.max_entries,
            });
        }
        let idx = self.items.len();
        self.items.push(Item {
            entry: Entry {
                key: key.clone(),
                value: value.clone(),
                origin: origin.clone(),
            },
            configured: false,
            inherit_chain: self.current_chain.clone(),
        });
        if placeholder_only {
            if self.known(&key) {
                return Err(Error::PlaceholderIsOption { name: key, origin });
            }
            self.items[idx].configured = true;
            return Ok(());
        }
        if let Some(b) = builtin_option(&key) {
            if b.kind != Kind::Inherit {
                self.items[idx].configured = true;
                self.immediate(b.kind, &key, value, &origin, idx)?;
            }
        } else if self.table.is_immediate(&key) {
            self.items[idx].configured = true;
        }
        Ok(())
    }

    fn immediate(
        &mut self,
        kind: Kind,
        key: &str,
        value: Option<String>,
        origin: &Origin,
        idx: usize,
    ) -> Result<(), Error> {
        let value = value.unwrap_or_default();
        match kind {
            Kind::Load(format) => self.load(format, &value, origin, Some(idx)),
            Kind::LoadByExtension => self.load_by_extension(&value, origin, Some(idx)),
            Kind::LoadConfig => Err(Error::UnknownConfigType {
                path: value,
                origin: origin.clone(),
            }),
            Kind::Inherit | Kind::EndBlock => Ok(()),
            Kind::Set | Kind::SetPlaceholder => {
                let Some((name, v)) = value.split_once('=') else {
                    return Err(Error::InvalidSet {
                        value,
                        origin: origin.clone(),
                    });
                };
                self.add(
                    name.to_string(),
                    Some(v.to_string()),
                    origin.clone(),
                    kind == Kind::SetPlaceholder,
                )
            }
            Kind::Logic(logic) => {
                if self.logic.is_some() {
                    return Err(Error::RecursiveLogic {
                        key: key.to_string(),
                        origin: origin.clone(),
                    });
                }
                // uWSGI keeps NULL for a flag (`--if-reload`), and "" is what an ini gives
                let arg = self.items[idx].entry.value.clone();
                self.logic = Some(ActiveLogic {
                    logic,
                    arg,
                    key: key.to_string(),
                    origin: origin.clone(),
                });
                Ok(())
            }
            Kind::Strict => {
                self.strict = true;
                Ok(())
            }
            Kind::InjectBefore => {
                self.inject_before.push(value);
                Ok(())
            }
            Kind::InjectAfter => {
                self.inject_after.push(value);
                Ok(())
            }
        }
    }

    /// The first exported value of `key` (`uwsgi_get_exported_opt`); a flag
    /// without value counts as absent, as in uWSGI.
    fn exported(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|i| i.entry.key == key)
            .and_then(|i| i.entry.value.as_deref())
    }

    /// One line inside an active `if-*`/`for*` block.
    #[allow(
        clippy::too_many_lines,
        reason = "one match arm per config-logic keyword of uWSGI's, side by side"
    )]
    fn run_logic(
        &mut self,
        active: &ActiveLogic,
        key: String,
        value: Option<String>,
        origin: Origin,
    ) -> Result<(), Error> {
        let data = active.arg.clone().unwrap_or_default();
        // `%(_)` replaced by the loop's token: the size of the result is
        // checked before it is built, so a value full of `%(_)` times a long
        // token is an error, not gigabytes of memory
        let limit = self.limits.max_value_len;
        let (what, at) = (format!("value of {key}"), origin.clone());
        let subst = |with: &str| -> Result<Option<String>, Error> {
            let Some(v) = value.as_ref() else {
                return Ok(None);
            };
            let n = v.matches("%(_)").count();
            let len = (v.len() - 4 * n).saturating_add(n.saturating_mul(with.len()));
            if len > limit {
                return Err(Error::TooLarge {
                    what: what.clone(),
                    origin: at.clone(),
                    limit,
                });
            }
            Ok(Some(v.replace("%(_)", with)))
        };
        // `name=value` form of if-opt/if-env: (name, expected)
        let split = |d: &str| match d.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (d.to_string(), None),
        };
        let path = |d: &str| resolve(&self.ctx.cwd, d);
        match active.logic {
            Logic::For => {
                for tok in data.split(' ').filter(|t| !t.is_empty()) {
                    self.add(key.clone(), subst(tok)?, origin.clone(), false)?;
                }
            }
            Logic::ForTimes => {
                let n = atoi(&data).clamp(i32::MIN as i64, i32::MAX as i64);
                for i in 1..=n {
                    self.add(key.clone(), subst(&i.to_string())?, origin.clone(), false)?;
                }
            }
            Logic::ForGlob => {
                for p in glob_mark_nocheck(&self.ctx.cwd, &data) {
                    self.add(key.clone(), subst(&p)?, origin.clone(), false)?;
                }
            }
            // at most max_file_size bytes: `for-readline = /dev/zero` is an
            // error, not a process that eats all memory
            Logic::ForReadline => match source::open_file(&path(&data), &self.limits)
                .and_then(|f| source::read_limited(f, self.limits.max_file_size))
            {
                Ok(None) => {
                    return Err(Error::TooLarge {
                        what: format!("for-readline file {data}"),
                        origin: origin.clone(),
                        limit: self.limits.max_file_size,
                    })
                }
                Ok(Some(bytes)) => {
                    for line in fgets_lines(&bytes) {
                        self.add(key.clone(), subst(&line)?, origin.clone(), false)?;
                    }
                }
                Err(e) => self.warnings.push(Warning {
                    message: format!("open(\"{data}\"): {e}"),
                    origin: Some(origin.clone()),
                }),
            },
            Logic::IfOpt(want) | Logic::IfEnv(want) => {
                let (name, expected) = split(&data);
                let found = match active.logic {
                    Logic::IfOpt(_) => self.exported(&name).map(str::to_string),
                    _ => self.getenv(&name).map(str::to_string),
                };
                let pass = match (&found, &expected) {
                    (Some(f), Some(e)) => (f == e) == want,
                    (Some(_), None) => want,
                    (None, _) => !want,
                };
                if pass {
                    let v = match &found {
                        Some(f) => subst(f)?,
                        None => value.clone(),
                    };
                    self.add(key, v, origin, false)?;
                }
            }
            Logic::IfReload(want) => {
                if self.is_reload == want {
                    self.add(key, value, origin, false)?;
                }
            }
            Logic::IfHostname(want) => {
                if (self.ctx.hostname == data) == want {
                    self.add(key, subst(&data)?, origin, false)?;
                }
            }
            Logic::IfHostnameMatch(want) => {
                // uWSGI treats a pattern PCRE cannot compile as a match
                let matched = match regex::Regex::new(&data) {
                    Ok(re) => re.is_match(&self.ctx.hostname),
                    Err(e) => {
                        self.warnings.push(Warning {
                            message: format!("pcre error: {e}"),
                            origin: Some(origin.clone()),
                        });
                        true
                    }
                };
                if matched == want {
                    self.add(key, subst(&data)?, origin, false)?;
                }
            }
            Logic::IfExists(want) => {
                let ok = nix::unistd::access(&path(&data), nix::unistd::AccessFlags::R_OK).is_ok();
                if ok == want {
                    self.add(key, subst(&data)?, origin, false)?;
                }
            }
            Logic::IfFile(want) | Logic::IfDir(want) => {
                let md = std::fs::metadata(path(&data)).ok();
                let ok = match active.logic {
                    Logic::IfFile(_) => md.is_some_and(|m| m.is_file()),
                    _ => md.is_some_and(|m| m.is_dir()),
                };
                if ok == want {
                    self.add(key, subst(&data)?, origin, false)?;
                }
            }
            Logic::IfPlugin(want) => {
                if self.ctx.plugins.contains(&data) == want {
                    self.add(key, subst(&data)?, origin, false)?;
                }
            }
        }
        Ok(())
    }

    /// `uwsgi_opt_load`: a file by its extension (`include`, positional
    /// arguments, `inherit`). The whole name is tested, so `a.ini:section`
    /// has no known extension, as in uWSGI.
    fn load_by_extension(
        &mut self,
        spec: &str,
        origin: &Origin,
        idx: Option<usize>,
    ) -> Result<(), Error> {
        let format = if spec.ends_with(".ini") {
            Format::Ini
        } else if spec.ends_with(".xml") {
            Format::Xml
        } else if spec.ends_with(".yaml") || spec.ends_with(".yml") {
            Format::Yaml
        } else if spec.ends_with(".json") || spec.ends_with(".js") {
            Format::Json
        } else {
            return Err(Error::UnknownConfigType {
                path: spec.to_string(),
                origin: origin.clone(),
            });
        };
        // "here we need to avoid setting upper magic vars"
        let saved = self.first_round;
        self.first_round = true;
        let r = self.load(format, spec, origin, idx);
        self.first_round = saved;
        r
    }

    /// `config_magic_table_fill`. Returns whether the upper-case (first
    /// file) variables were set from this file.
    fn fill_magic(&mut self, spec: &str, origin: &Origin) -> Result<bool, Error> {
        self.magic.set(b'o', spec);
        if source::scheme_of(spec).is_some() || spec == "-" {
            return Ok(false);
        }
        let (name, section) = match spec.rfind(':') {
            Some(i) => (&spec[..i], Some(&spec[i + 1..])),
            None => (spec, None),
        };
        if !(name.is_empty() && section.is_some()) {
            let p = resolve(&self.ctx.cwd, name);
            let is_link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
            let full = if is_link {
                if name.starts_with('/') {
                    name.to_string()
                } else {
                    format!("{}/{}", self.ctx.cwd.to_string_lossy(), name)
                }
            } else {
                std::fs::canonicalize(&p)
                    .map_err(|source| Error::Read {
                        path: name.to_string(),
                        origin: origin.clone(),
                        source,
                    })?
                    .to_string_lossy()
                    .into_owned()
            };
            let m = &mut self.magic;
            m.set(b'b', self.ctx.binary_path.clone());
            m.set(b'p', full.clone());
            m.set(b'j', magic::djb33x_hex(&full));
            if let Ok(md) = std::fs::symlink_metadata(&full) {
                m.set(b'i', md.ino().to_string());
            }
            let slash = full.rfind('/').map(|i| i + 1).unwrap_or(0);
            let s = full[slash..].to_string();
            let d = full[..slash].to_string();
            let d_stripped = d.strip_suffix('/').unwrap_or(&d).to_string();
            m.set(b's', s.clone());
            m.set(b'd', d.clone());
            m.set(b'c', "");
            m.set(b'e', "");
            m.set(b'n', s.clone());
            for c in b'0'..=b'9' {
                m.set(c, "");
            }
            if let Some(i) = d_stripped.rfind('/') {
                m.set(b'c', d_stripped[i + 1..].to_string());
            }
            for (c, part) in (b'0'..=b'9').zip(d_stripped.split('/').filter(|p| !p.is_empty())) {
                m.set(c, part.to_string());
            }
            if let Some(i) = s.rfind('.') {
                m.set(b'e', s[i + 1..].to_string());
                m.set(b'n', s[..i].to_string());
            }
        }
        self.magic.set(b'x', section.unwrap_or(""));
        if !self.first_round {
            for (up, low) in [
                (b'O', b'o'),
                (b'D', b'd'),
                (b'S', b's'),
                (b'P', b'p'),
                (b'C', b'c'),
                (b'E', b'e'),
                (b'N', b'n'),
                (b'X', b'x'),
                (b'I', b'i'),
                (b'J', b'j'),
            ] {
                let v = self.magic.get(low).to_string();
                self.magic.set(up, v);
            }
            self.first_round = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads one config file in `format` (`uwsgi_opt_load_ini` & co.) and
    /// adds its entries.
    #[allow(
        clippy::too_many_lines,
        reason = "one match arm per loader (ini, xml, yaml, json, exec://, ...), side by side"
    )]
    fn load(
        &mut self,
        format: Format,
        spec: &str,
        origin: &Origin,
        idx: Option<usize>,
    ) -> Result<(), Error> {
        let set_upper = self.fill_magic(spec, origin)?;
        let (mut path, section) = split_section(spec);
        let path_as_given = path.to_string();
        let section_asked = match (format, section) {
            (Format::Xml, Some("")) => {
                return Err(Error::Syntax {
                    path: path.to_string(),
                    line: None,
                    message: "invalid xml id".into(),
                })
            }
            (Format::Xml, s) => s.map(str::to_string),
            (_, Some(s)) if !s.is_empty() => Some(s.to_string()),
            _ => Some("uwsgi".to_string()),
        };
        let last_ini;
        if format == Format::Ini {
            if path.is_empty() && section.is_some() {
                last_ini = self.last_ini.clone().ok_or_else(|| Error::Read {
                    path: spec.to_string(),
                    origin: origin.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "`:section` without a previous ini file",
                    ),
                })?;
                path = &last_ini;
            }
            self.last_ini = Some(path.to_string());
        }
        let path = path.to_string();

        // loop and depth protection
        let identity = match source::scheme_of(&path) {
            Some(_) => path.clone(),
            None => std::fs::canonicalize(resolve(&self.ctx.cwd, &path))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| path.clone()),
        };
        let identity = format!("{identity}\0{}", section_asked.as_deref().unwrap_or(""));
        if self.stack.iter().any(|(id, _)| *id == identity) {
            let mut chain: Vec<String> = self.stack.iter().map(|(_, d)| d.clone()).collect();
            chain.push(spec.to_string());
            return Err(Error::IncludeLoop { chain });
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(Error::TooDeep {
                path: spec.to_string(),
                origin: origin.clone(),
                limit: self.limits.max_depth,
            });
        }

        // read (with inject-before/after), then the magic variables
        let limits = &self.limits;
        let limit = limits.max_file_size;
        let mut content = Vec::new();
        for inj in self.inject_before.clone() {
            content.extend(source::read(&inj, &self.ctx.cwd, origin, limits)?);
        }
        content.extend(source::read(&path, &self.ctx.cwd, origin, limits)?);
        for inj in self.inject_after.clone() {
            content.extend(source::read(&inj, &self.ctx.cwd, origin, limits)?);
        }
        // while reading, uWSGI has cut the name at its ':' (so %o, and %O
        // when this is the first file, have no section)
        self.magic.set(b'o', path_as_given.clone());
        if set_upper {
            self.magic.set(b'O', path_as_given.clone());
        }
        let sub = magic::substitute(&content, &self.magic, format != Format::Xml);
        if sub.text.len() > limit {
            return Err(Error::TooLarge {
                what: format!("file {path}"),
                origin: origin.clone(),
                limit,
            });
        }
        let syntax = |(line, message): (Option<usize>, String)| Error::Syntax {
            path: path.clone(),
            line,
            message,
        };
        let asked = section_asked.clone().unwrap_or_default();
        let raw = match format {
            Format::Ini => {
                let (raw, got) = ini::parse(&sub, &asked);
                if !got {
                    self.warnings.push(Warning {
                        message: format!("*** WARNING: Can't find section \"{asked}\" in INI configuration file {path} ***"),
                        origin: Some(origin.clone()),
                    });
                }
                raw
            }
            Format::Yaml => {
                let (raw, warning) = yaml::parse(&sub, &asked).map_err(syntax)?;
                if let Some(message) = warning {
                    self.warnings.push(Warning {
                        message,
                        origin: Some(Origin::File {
                            path: path.clone(),
                            line: None,
                        }),
                    });
                }
                raw
            }
            Format::Json => json::parse(&sub, &asked).map_err(syntax)?,
            Format::Xml => xml::parse(&sub, section_asked.as_deref()).map_err(syntax)?,
        };

        self.stack.push((identity, spec.to_string()));
        let mut result = Ok(());
        for r in raw {
            result = self.add(
                r.key,
                Some(r.value),
                Origin::File {
                    path: path.clone(),
                    line: Some(r.line),
                },
                false,
            );
            if result.is_err() {
                break;
            }
        }
        self.stack.pop();
        result?;

        match format {
            // uWSGI restores the ':' it cut
            Format::Ini | Format::Yaml => {
                self.magic.set(b'o', spec);
                if set_upper {
                    self.magic.set(b'O', spec);
                }
            }
            // the JSON reader never restores it, and the XML one writes it
            // one byte too far: the loader's value stays cut at the ':'
            Format::Json | Format::Xml => {
                if section.is_some() {
                    if let Some(i) = idx {
                        if self.items[i].entry.value.as_deref() == Some(spec) {
                            self.items[i].entry.value = Some(path_as_given.clone());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `uwsgi_apply_config_pass`: expands `X(...)` for one symbol X in every
    /// value that is not immediate, in order.
    fn apply_pass(&mut self, symbol: u8) -> Result<(), Error> {
        for i in 0..self.items.len() {
            if self.items[i].configured {
                continue;
            }
            let Some(value) = self.items[i].entry.value.clone() else {
                continue;
            };
            if !value.as_bytes().contains(&symbol) {
                continue;
            }
            let expanded = self.expand(i, value, symbol)?;
            self.items[i].entry.value = Some(expanded);
        }
        Ok(())
    }

    fn hook(
        &self,
        i: usize,
        symbol: u8,
        key: &str,
        current: &str,
    ) -> Result<Option<String>, Error> {
        match symbol {
            b'$' => Ok(self.getenv(key).map(str::to_string)),
            b'@' => {
                let origin = self.items[i].entry.origin.clone();
                let mut data = source::read(key, &self.ctx.cwd, &origin, &self.limits)?;
                if matches!(data.last(), Some(b'\n' | b'\r')) {
                    data.pop();
                }
                Ok(Some(String::from_utf8_lossy(&data).into_owned()))
            }
            _ => Ok(self.placeholder(i, key, current)),
        }
    }

    /// `uwsgi_get_exported_opt` as seen while item `i` is being expanded.
    fn lookup(&self, i: usize, key: &str, current: &str) -> Option<String> {
        let pos = self.items.iter().position(|it| it.entry.key == key)?;
        if pos == i {
            return Some(current.to_string());
        }
        self.items[pos].entry.value.clone()
    }

    /// `uwsgi_manage_placeholder`: `%(name)`, or with spaces a small
    /// left-to-right pipeline: names and numbers concatenate, `+ - * /`
    /// apply to the next operand (integers, `/ 0` gives 0), `++`/`--`
    /// increment/decrement what is there so far.
    fn placeholder(&self, i: usize, key: &str, current: &str) -> Option<String> {
        if !key.contains(' ') {
            return self.lookup(i, key, current);
        }
        #[derive(Clone, Copy)]
        enum Op {
            Concat,
            Sum,
            Sub,
            Mul,
            Div,
        }
        let mut state = Op::Concat;
        let mut cur: Option<String> = None;
        let num = |s: &Option<String>| s.as_deref().map(atoi).unwrap_or(0);
        for tok in key.split(' ').filter(|t| !t.is_empty()) {
            let value = if tok.bytes().all(|b| b.is_ascii_digit()) {
                tok.to_string()
            } else {
                match tok {
                    "+" => {
                        state = Op::Sum;
                        continue;
                    }
                    "-" => {
                        state = Op::Sub;
                        continue;
                    }
                    "*" => {
                        state = Op::Mul;
                        continue;
                    }
                    "/" => {
                        state = Op::Div;
                        continue;
                    }
                    "++" | "--" => {
                        if cur.is_some() {
                            let d = if tok == "++" { 1 } else { -1 };
                            cur = Some(num(&cur).wrapping_add(d).to_string());
                        }
                        state = Op::Concat;
                        continue;
                    }
                    name => self.lookup(i, name, current).unwrap_or_default(),
                }
            };
            let (a, b) = (num(&cur), atoi(&value));
            cur = Some(match state {
                Op::Concat => format!("{}{}", cur.as_deref().unwrap_or(""), value),
                Op::Sum => a.wrapping_add(b).to_string(),
                Op::Sub => a.wrapping_sub(b).to_string(),
                Op::Mul => a.wrapping_mul(b).to_string(),
                Op::Div => {
                    if b == 0 {
                        "0".into()
                    } else {
                        a.wrapping_div(b).to_string()
                    }
                }
            });
            state = Op::Concat;
        }
        cur
    }

    /// The scanner of `uwsgi_apply_config_pass`, kept exact: after each
    /// substitution it restarts at index 1 (uWSGI sets `j = 0` and the loop
    /// increments it), a nested `(` `)` pair is part of the name, `X()` is
    /// left alone, an unknown name is left as written.
    fn expand(&self, i: usize, value: String, symbol: u8) -> Result<String, Error> {
        let mut v = value.into_bytes();
        let mut subs = 0usize;
        let mut j = 0usize;
        let mut has: usize = 0;
        let mut depth = 0usize;
        let mut key_start = 0usize;
        while j < v.len() {
            let c = v[j];
            if c == symbol {
                has = 1;
            } else if c == b'(' && has == 1 {
                has = 2;
                depth = 0;
                key_start = j + 1;
            } else if has > 1 {
                if c == b'(' {
                    has += 1;
                    depth += 1;
                } else if c == b')' {
                    if depth > 0 {
                        has += 1;
                        depth -= 1;
                        j += 1;
                        continue;
                    }
                    if has <= 2 {
                        has = 0;
                        j += 1;
                        continue;
                    }
                    let key =
                        String::from_utf8_lossy(&v[key_start..key_start + has - 2]).into_owned();
                    let current = String::from_utf8_lossy(&v).into_owned();
                    match self.hook(i, symbol, &key, &current)? {
                        None => has = 0,
                        Some(val) => {
                            let mut nv = Vec::with_capacity(v.len() + val.len());
                            nv.extend_from_slice(&v[..key_start - 2]);
                            nv.extend_from_slice(val.as_bytes());
                            nv.extend_from_slice(&v[key_start + has - 1..]);
                            v = nv;
                            let origin = self.items[i].entry.origin.clone();
                            if v.len() > self.limits.max_value_len {
                                return Err(Error::TooLarge {
                                    what: format!("value of {}", self.items[i].entry.key),
                                    origin,
                                    limit: self.limits.max_value_len,
                                });
                            }
                            subs += 1;
                            if subs > self.limits.max_substitutions {
                                return Err(Error::PlaceholderLoop {
                                    key: self.items[i].entry.key.clone(),
                                    origin,
                                    limit: self.limits.max_substitutions,
                                });
                            }
                            has = 0;
                            j = 1;
                            continue;
                        }
                    }
                } else {
                    has += 1;
                }
            } else {
                has = 0;
            }
            j += 1;
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    /// `uwsgi_configure`: runs the non-immediate loaders (`inherit`), whose
    /// entries are appended and never go through the passes.
    fn configure(&mut self) -> Result<(), Error> {
        let mut i = 0;
        while i < self.items.len() {
            if !self.items[i].configured && self.items[i].entry.key == "inherit" {
                self.items[i].configured = true;
                let spec = self.items[i].entry.value.clone().unwrap_or_default();
                let origin = self.items[i].entry.origin.clone();
                let chain = self.items[i].inherit_chain.clone();
                let (p, _) = split_section(&spec);
                let id = std::fs::canonicalize(resolve(&self.ctx.cwd, p))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| spec.clone());
                if chain.contains(&id) {
                    let mut names: Vec<String> = chain.to_vec();
                    names.push(id);
                    return Err(Error::IncludeLoop { chain: names });
                }
                if chain.len() >= self.limits.max_depth {
                    return Err(Error::TooDeep {
                        path: spec,
                        origin,
                        limit: self.limits.max_depth,
                    });
                }
                let mut next = chain.to_vec();
                next.push(id);
                self.current_chain = Rc::new(next);
                let r = self.load_by_extension(&spec, &origin, Some(i));
                self.current_chain = Rc::new(Vec::new());
                r?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// `glob(pattern, GLOB_MARK | GLOB_NOCHECK)`: sorted matches, directories
/// with a trailing `/`, the pattern itself when nothing matches. A leading
/// `.` must be matched explicitly, as in POSIX.
fn glob_mark_nocheck(cwd: &Path, pattern: &str) -> Vec<String> {
    let relative = !pattern.starts_with('/');
    let full = if relative {
        format!(
            "{}/{}",
            cwd.to_string_lossy().trim_end_matches('/'),
            pattern
        )
    } else {
        pattern.to_string()
    };
    let prefix_len = if relative {
        full.len() - pattern.len()
    } else {
        0
    };
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut out: Vec<String> = match glob::glob_with(&full, opts) {
        Ok(paths) => paths
            .filter_map(Result::ok)
            .map(|p| {
                let mut s = p.to_string_lossy().into_owned();
                if p.is_dir() {
                    s.push('/');
                }
                s.get(prefix_len..).unwrap_or(&s).to_string()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    if out.is_empty() {
        out.push(pattern.to_string());
    }
    out
}

/// Lines as `fgets(line, 1024, fh)` cuts them (a longer line comes in
/// 1023-byte pieces), each stripped of trailing `\r`/`\n` (`uwsgi_chomp`)
/// and cut at a NUL.
fn fgets_lines(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let max = rest.len().min(1023);
        let end = rest[..max]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(max);
        let mut chunk = &rest[..end];
        if let Some(nul) = chunk.iter().position(|&b| b == 0) {
            chunk = &chunk[..nul];
        }
        let s = String::from_utf8_lossy(chunk);
        out.push(s.trim_end_matches(['\r', '\n']).to_string());
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fgets_pieces() {
        let long = "a".repeat(1030);
        let lines = fgets_lines(format!("x\r\n\n{long}\ny").as_bytes());
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "x");
        assert_eq!(lines[1], "");
        assert_eq!(lines[2].len(), 1023);
        assert_eq!(lines[3].len(), 7);
        assert_eq!(lines[4], "y");
    }

    #[test]
    fn glob_marks_and_nocheck() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("d1")).unwrap();
        std::fs::write(d.path().join("f1"), "").unwrap();
        std::fs::write(d.path().join(".hidden"), "").unwrap();
        assert_eq!(glob_mark_nocheck(d.path(), "*"), ["d1/", "f1"]);
        assert_eq!(glob_mark_nocheck(d.path(), "zz*"), ["zz*"]);
        let abs = format!("{}/f*", d.path().display());
        assert_eq!(
            glob_mark_nocheck(Path::new("/"), &abs),
            [format!("{}/f1", d.path().display())]
        );
    }

    #[test]
    fn config_language_keys() {
        assert!(builtin("ini").is_some());
        assert!(builtin("end").is_some());
        assert!(builtin_option("end").is_none());
        assert!(builtin("master").is_none());
    }
}
