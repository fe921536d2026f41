//! Vassal names: validation and the config flag chosen by extension.
//!
//! uWSGI accepts a vassal when its name ends with a known config extension
//! and is shorter than 255 bytes (docs/monitors.md, "Rules every monitor keeps"). imperium keeps that rule
//! and adds the checks a name from the network needs before it is used as a
//! path or a command-line argument.

use std::fmt;
use std::sync::Arc;

/// The config extensions every monitor accepts (docs/monitors.md, "Rules every monitor keeps").
pub const BUILTIN_EXTENSIONS: &[&str] = &[".xml", ".ini", ".yml", ".yaml", ".js", ".json"];

/// Names of this many bytes or more are refused, as in uWSGI.
pub const MAX_NAME_LEN: usize = 255;

/// Why a name was refused. Each variant says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty vassal name")]
    /// The name is empty.
    Empty,
    #[error("vassal name is {0} bytes long; it must be shorter than 255 bytes")]
    /// The name is 255 bytes or longer (its length).
    TooLong(usize),
    #[error("vassal name {0:?} does not end with a config extension (.ini .xml .yml .yaml .js .json or an --emperor-extra-extension)")]
    /// The name has no config extension.
    BadExtension(String),
    #[error("vassal name {0:?} contains a control character or a Unicode bidirectional control")]
    /// The name has a control or bidirectional character.
    ControlChar(String),
    #[error("vassal name {0:?} contains a path separator '/'; names from this source must be plain file names")]
    /// The name has a `/` where a plain file name is required.
    PathSeparator(String),
    #[error("vassal name {0:?} contains a '..' path component")]
    /// The name has a `..` component.
    DotDot(String),
    #[error("vassal name {0:?} must not start with '-' (it would be read as an option)")]
    /// The name starts with `-`.
    LeadingDash(String),
}

/// How much of a path a name may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamePolicy {
    /// A plain file name: no `/`, no `..` (dir monitor, databases, message buses).
    Plain,
    /// A path as a glob returns it: `/` allowed, but no `..` component.
    Path,
}

/// The extensions accepted by this emperor: the built-in ones plus
/// `--emperor-extra-extension` values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    extra: Vec<String>,
}

impl Extensions {
    /// The built-in extensions plus `extra` (each as given, for example `.foo`).
    pub fn new(extra: impl IntoIterator<Item = String>) -> Self {
        Extensions {
            extra: extra.into_iter().filter(|e| !e.is_empty()).collect(),
        }
    }

    /// The extra extensions, in the order given.
    pub fn extra(&self) -> &[String] {
        &self.extra
    }

    /// True when `name` ends with an accepted extension (a plain suffix match, as uWSGI does).
    pub fn accepts(&self, name: &str) -> bool {
        BUILTIN_EXTENSIONS.iter().any(|e| name.ends_with(e))
            || self.extra.iter().any(|e| name.ends_with(e.as_str()))
    }

    /// The config flag uWSGI uses for a file of this name (docs/protocol.md: argv).
    ///
    /// For a zerg name (`foo.ini:zerg`) only the part before the first `:` is
    /// examined (a URL such as `http://host/app.ini` is examined whole). Extra extensions win over built-in ones, and an unknown
    /// extension gets `--inherit`, as in uWSGI.
    pub fn config_flag(&self, name: &str) -> &'static str {
        let base = if name.contains("://") {
            name
        } else {
            name.split(':').next().unwrap_or(name)
        };
        if self.extra.iter().any(|e| base.ends_with(e.as_str())) {
            return "--config";
        }
        if base.ends_with(".xml") {
            "--xml"
        } else if base.ends_with(".ini") {
            "--ini"
        } else if base.ends_with(".yml") || base.ends_with(".yaml") {
            "--yaml"
        } else if base.ends_with(".js") || base.ends_with(".json") {
            "--json"
        } else {
            "--inherit"
        }
    }
}

/// The longest part of a name kept before the hash of a very long name.
const SAFE_KEEP: usize = 200;

/// A vassal name as one file or directory name (log files, cgroups): `%`
/// written `%25`, `/` written `%2F` and a leading `.` written `%2E` (so no
/// name is hidden, climbs out or collides with another). A name longer than
/// 230 bytes once encoded keeps its first 200 bytes, then `~` and 16 hex
/// digits of a hash (FNV-1a) of the whole name.
pub fn file_safe(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for (i, c) in name.chars().enumerate() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '.' if i == 0 => out.push_str("%2E"),
            c => out.push(c),
        }
    }
    if out.len() > 230 {
        let mut cut = SAFE_KEEP;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        // FNV-1a: stable across builds and versions
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        use std::fmt::Write as _;
        let _ = write!(out, "~{h:016x}");
    }
    out
}

/// A validated vassal name: the id of one vassal in the table.
///
/// ```
/// use emperor::name::{Extensions, NamePolicy, VassalName};
/// let exts = Extensions::default();
/// assert!(VassalName::parse("app.ini", &exts, NamePolicy::Plain).is_ok());
/// assert!(VassalName::parse("../../x.ini", &exts, NamePolicy::Plain).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VassalName(Arc<str>);

impl VassalName {
    /// Checks `name` against the extension list, the length limit and `policy`.
    pub fn parse(name: &str, exts: &Extensions, policy: NamePolicy) -> Result<Self, NameError> {
        check_common(name)?;
        match policy {
            NamePolicy::Plain => {
                if name.contains('/') {
                    return Err(NameError::PathSeparator(name.to_string()));
                }
                if name == ".." {
                    return Err(NameError::DotDot(name.to_string()));
                }
            }
            NamePolicy::Path => {
                if name.split('/').any(|c| c == "..") {
                    return Err(NameError::DotDot(name.to_string()));
                }
            }
        }
        if !exts.accepts(name) {
            return Err(NameError::BadExtension(name.to_string()));
        }
        Ok(VassalName(Arc::from(name)))
    }

    /// A name for a derived instance (a broodlord zerg): no extension check,
    /// the caller built it from a valid name.
    pub fn derived(name: String) -> Self {
        VassalName(Arc::from(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of zerg number `n` of this (base) vassal: `NAME:zerg:N`.
    ///
    /// ```
    /// use emperor::name::{Extensions, NamePolicy, VassalName};
    /// let base = VassalName::parse("app.ini", &Extensions::default(), NamePolicy::Plain).unwrap();
    /// let z = base.zerg(3);
    /// assert_eq!(z.as_str(), "app.ini:zerg:3");
    /// assert_eq!(z.zerg_parts(), Some(("app.ini", 3)));
    /// assert_eq!(base.zerg_parts(), None);
    /// ```
    pub fn zerg(&self, n: u64) -> VassalName {
        VassalName(Arc::from(format!("{}:zerg:{n}", self.0)))
    }

    /// For a zerg name (`NAME:zerg:N`), the base name and the number.
    /// Names from monitors end with a config extension, so they never look
    /// like a zerg.
    pub fn zerg_parts(&self) -> Option<(&str, u64)> {
        let (rest, n) = self.0.rsplit_once(':')?;
        let n = n.parse().ok()?;
        let base = rest.strip_suffix(":zerg")?;
        (!base.is_empty()).then_some((base, n))
    }
}

/// The Unicode bidirectional formatting characters (UAX #9): marks,
/// embeddings, overrides and isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn check_common(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() >= MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    // control characters, and the Unicode bidirectional controls that can
    // make a log line or a terminal show another name than the real one
    // (U+202E and friends)
    if name.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(NameError::ControlChar(name.to_string()));
    }
    if name.starts_with('-') {
        return Err(NameError::LeadingDash(name.to_string()));
    }
    Ok(())
}

impl fmt::Display for VassalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VassalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// Lets a table keyed by name be searched with a `&str`: the name's
/// `Eq`, `Ord` and `Hash` are those of the string it holds.
impl std::borrow::Borrow<str> for VassalName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for VassalName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(n: &str) -> Result<VassalName, NameError> {
        VassalName::parse(n, &Extensions::default(), NamePolicy::Plain)
    }

    #[test]
    fn accepts_every_builtin_extension() {
        for n in [
            "a.ini",
            "a.xml",
            "a.yml",
            "a.yaml",
            "a.js",
            "a.json",
            ".hidden.ini",
        ] {
            assert!(plain(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_editor_leftovers_and_no_extension() {
        for n in ["a.ini~", "a.ini.swp", "a", "a.txt", "ini"] {
            assert!(matches!(plain(n), Err(NameError::BadExtension(_))), "{n}");
        }
    }

    #[test]
    fn length_limit_is_255_exclusive() {
        let ok = format!("{}.ini", "a".repeat(250));
        assert_eq!(ok.len(), 254);
        assert!(plain(&ok).is_ok());
        let bad = format!("{}.ini", "a".repeat(251));
        assert_eq!(plain(&bad), Err(NameError::TooLong(255)));
    }

    #[test]
    fn hostile_names_are_refused() {
        assert!(matches!(
            plain("../../x.ini"),
            Err(NameError::PathSeparator(_))
        ));
        assert!(matches!(plain("a/b.ini"), Err(NameError::PathSeparator(_))));
        assert!(matches!(plain("a\nb.ini"), Err(NameError::ControlChar(_))));
        // a right-to-left override would show `app.ini` as something else
        let e = plain("evil\u{202e}ini.txt.ini").unwrap_err();
        assert!(matches!(e, NameError::ControlChar(_)));
        assert!(e.to_string().contains("\\u{202e}"), "{e}");
        assert!(matches!(
            plain("a\u{2066}b.ini"),
            Err(NameError::ControlChar(_))
        ));
        assert!(matches!(
            plain("--help.ini"),
            Err(NameError::LeadingDash(_))
        ));
        assert_eq!(plain(""), Err(NameError::Empty));
        let p = |n| VassalName::parse(n, &Extensions::default(), NamePolicy::Path);
        assert!(p("/etc/uwsgi/a.ini").is_ok());
        assert!(matches!(p("/etc/../x.ini"), Err(NameError::DotDot(_))));
    }

    #[test]
    fn extra_extensions_are_accepted_and_use_config_flag() {
        let exts = Extensions::new(vec![".foo".to_string(), ".ini".to_string()]);
        assert!(VassalName::parse("a.foo", &exts, NamePolicy::Plain).is_ok());
        assert_eq!(exts.config_flag("a.foo"), "--config");
        // extra extensions are checked first, so they override the builtin flag
        assert_eq!(exts.config_flag("a.ini"), "--config");
    }

    #[test]
    fn config_flag_by_suffix() {
        let e = Extensions::default();
        assert_eq!(e.config_flag("a.xml"), "--xml");
        assert_eq!(e.config_flag("a.ini"), "--ini");
        assert_eq!(e.config_flag("a.yml"), "--yaml");
        assert_eq!(e.config_flag("a.yaml"), "--yaml");
        assert_eq!(e.config_flag("a.js"), "--json");
        assert_eq!(e.config_flag("a.json"), "--json");
        assert_eq!(e.config_flag("a.conf"), "--inherit");
        assert_eq!(e.config_flag("foo.ini:zerg"), "--ini");
        assert_eq!(e.config_flag("foo.xml:zerg:3"), "--xml");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// The rules as docs/monitors.md states them, written out again.
        fn documented(name: &str, extra: &[String], policy: NamePolicy) -> bool {
            let exts = BUILTIN_EXTENSIONS
                .iter()
                .copied()
                .chain(extra.iter().map(String::as_str).filter(|e| !e.is_empty()));
            !name.is_empty()
                && name.len() < 255
                && !name.chars().any(|c| {
                    c.is_control()
                        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
                })
                && !name.starts_with('-')
                && match policy {
                    NamePolicy::Plain => !name.contains('/') && name != "..",
                    NamePolicy::Path => !name.split('/').any(|c| c == ".."),
                }
                && exts.into_iter().any(|e| name.ends_with(e))
        }

        /// Names made of the characters the rules are about.
        fn name() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "a", "Z", "0", "_", " ", ".", "..", "/", "-", "é", "ini", "xml", "yml", "yaml",
                "js", "json", "foo", ".ini", ".json", ".foo", "\n", "\t", "\u{7f}", "\u{85}",
                "\u{202e}", "\u{2066}", "\u{200f}", "\u{061c}", "\u{200b}", "~", ":",
            ]);
            prop_oneof![
                4 => proptest::collection::vec(piece, 0..10).prop_map(|p| p.concat()),
                1 => (240usize..260, prop::sample::select(vec![".ini", ".yaml", ".txt"]))
                    .prop_map(|(n, e)| format!("{}{e}", "a".repeat(n))),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// `parse` accepts exactly the names the documented rules allow.
            #[test]
            fn parse_accepts_exactly_the_documented_names(
                name in name(),
                extra in proptest::collection::vec(prop::sample::select(vec!["", ".foo", ".", "a.ini~"]), 0..2),
                path in any::<bool>(),
            ) {
                let extra: Vec<String> = extra.into_iter().map(String::from).collect();
                let policy = if path { NamePolicy::Path } else { NamePolicy::Plain };
                let exts = Extensions::new(extra.clone());
                let got = VassalName::parse(&name, &exts, policy);
                prop_assert_eq!(got.is_ok(), documented(&name, &extra, policy), "{:?} -> {:?}", name, got);
            }
        }
    }
}
