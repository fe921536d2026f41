//! The command line, as glibc's `getopt_long` parses it for uWSGI.

use crate::engine::builtin_option as builtin;
use crate::{Arity, CmdLineError, OptionTable};

/// Short letters of config-language options (first in uWSGI's table).
const BUILTIN_SHORT: &[(char, &str)] = &[
    ('x', "xmlconfig"),
    ('S', "set"),
    ('y', "yaml"),
    ('j', "json"),
];

#[derive(Debug)]
pub(crate) struct Parsed {
    /// (long name, value, 1-based argv index)
    pub(crate) options: Vec<(String, Option<String>, usize)>,
    /// (argument, 1-based argv index)
    pub(crate) positional: Vec<(String, usize)>,
}

fn arity(table: &dyn OptionTable, name: &str) -> Option<Arity> {
    builtin(name).map(|b| b.arity).or_else(|| table.arity(name))
}

fn resolve_long(
    table: &dyn OptionTable,
    name: &str,
    index: usize,
) -> Result<(String, Arity), CmdLineError> {
    if let Some(a) = arity(table, name) {
        return Ok((name.to_string(), a));
    }
    let names = table.long_names();
    if !names.is_empty() {
        let mut candidates: Vec<String> = Vec::new();
        let all = crate::engine::BUILTINS
            .iter()
            .filter(|b| b.is_option)
            .map(|b| b.name)
            .chain(names.iter().copied());
        for n in all {
            if n.starts_with(name) && !candidates.iter().any(|c| c == n) {
                candidates.push(n.to_string());
            }
        }
        match candidates.len() {
            0 => {}
            1 => {
                let n = candidates.pop().unwrap_or_default();
                let a = arity(table, &n).unwrap_or(Arity::Required);
                return Ok((n, a));
            }
            _ => {
                return Err(CmdLineError::Ambiguous {
                    name: name.to_string(),
                    candidates,
                    index,
                })
            }
        }
    }
    Err(CmdLineError::Unrecognized {
        name: name.to_string(),
        index,
    })
}

fn resolve_short(table: &dyn OptionTable, c: char) -> Option<(String, Arity)> {
    if let Some((_, n)) = BUILTIN_SHORT.iter().find(|(s, _)| *s == c) {
        return Some((n.to_string(), Arity::Required));
    }
    let n = table.long_of_short(c)?;
    let a = arity(table, n)?;
    Some((n.to_string(), a))
}

/// Parses like `getopt_long` with uWSGI's tables: options anywhere (GNU
/// permutation: non-options are collected and handled after all options),
/// `--` ends the options, `-` alone is a non-option; with `POSIXLY_CORRECT`
/// in the environment the first non-option ends the options.
#[allow(
    clippy::too_many_lines,
    reason = "one pass over argv, as glibc's getopt_long: splitting it would scatter its state"
)]
pub(crate) fn parse(
    args: &[String],
    table: &dyn OptionTable,
    posixly_correct: bool,
) -> Result<Parsed, CmdLineError> {
    let mut options = Vec::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let index = i + 1;
        if arg == "--" {
            positional.extend(
                args[i + 1..]
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (a.clone(), index + 1 + j)),
            );
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.find('=') {
                Some(p) => (&body[..p], Some(body[p + 1..].to_string())),
                None => (body, None),
            };
            let (long, ar) = resolve_long(table, name, index)?;
            let value = match ar {
                Arity::None => {
                    if inline.is_some() {
                        return Err(CmdLineError::NoArgumentAllowed { name: long, index });
                    }
                    None
                }
                Arity::Optional => inline,
                Arity::Required => match inline {
                    Some(v) => Some(v),
                    None => {
                        i += 1;
                        match args.get(i) {
                            Some(v) => Some(v.clone()),
                            None => {
                                return Err(CmdLineError::LongRequiresArgument {
                                    name: long,
                                    index,
                                })
                            }
                        }
                    }
                },
            };
            options.push((long, value, index));
        } else if arg.len() > 1 && arg.starts_with('-') {
            let chars: Vec<char> = arg[1..].chars().collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                let (long, ar) = resolve_short(table, c)
                    .ok_or(CmdLineError::InvalidShort { short: c, index })?;
                let rest: String = chars[k + 1..].iter().collect();
                match ar {
                    Arity::None => {
                        options.push((long, None, index));
                        k += 1;
                        continue;
                    }
                    Arity::Optional => {
                        options.push((
                            long,
                            if rest.is_empty() { None } else { Some(rest) },
                            index,
                        ));
                    }
                    Arity::Required => {
                        if rest.is_empty() {
                            i += 1;
                            match args.get(i) {
                                Some(v) => options.push((long, Some(v.clone()), index)),
                                None => {
                                    return Err(CmdLineError::ShortRequiresArgument {
                                        short: c,
                                        index,
                                    })
                                }
                            }
                        } else {
                            options.push((long, Some(rest), index));
                        }
                    }
                }
                break;
            }
        } else if posixly_correct {
            positional.extend(
                args[i..]
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (a.clone(), index + j)),
            );
            break;
        } else {
            positional.push((arg.clone(), index));
        }
        i += 1;
    }
    Ok(Parsed {
        options,
        positional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticTable;

    fn table() -> StaticTable {
        StaticTable::new()
            .option("master", Arity::None, Some('M'))
            .option("master-fifo", Arity::Required, None)
            .option("daemonize", Arity::Required, Some('d'))
            .option("emperor", Arity::Required, None)
            .option("vacuum", Arity::None, None)
            .option("chmod-socket", Arity::Optional, Some('C'))
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn opts(p: &Parsed) -> Vec<(&str, Option<&str>)> {
        p.options
            .iter()
            .map(|(k, v, _)| (k.as_str(), v.as_deref()))
            .collect()
    }

    #[test]
    fn long_forms() {
        let p = parse(
            &args(&[
                "--emperor",
                "/x",
                "--emperor=/y",
                "--master",
                "--chmod-socket",
                "a.ini",
                "--chmod-socket=660",
                "--emperor",
                "--vacuum",
            ]),
            &table(),
            false,
        )
        .unwrap();
        assert_eq!(
            opts(&p),
            [
                ("emperor", Some("/x")),
                ("emperor", Some("/y")),
                ("master", None),
                ("chmod-socket", None),
                ("chmod-socket", Some("660")),
                ("emperor", Some("--vacuum"))
            ]
        );
        assert_eq!(p.positional, [("a.ini".to_string(), 6)]);
    }

    #[test]
    fn short_forms() {
        let p = parse(
            &args(&[
                "-M", "-d", "/log", "-d/log2", "-MC", "-C640", "-x", "a.xml", "-Sa=b",
            ]),
            &table(),
            false,
        )
        .unwrap();
        assert_eq!(
            opts(&p),
            [
                ("master", None),
                ("daemonize", Some("/log")),
                ("daemonize", Some("/log2")),
                ("master", None),
                ("chmod-socket", None),
                ("chmod-socket", Some("640")),
                ("xmlconfig", Some("a.xml")),
                ("set", Some("a=b"))
            ]
        );
    }

    #[test]
    fn abbreviations_and_errors() {
        let t = table();
        assert_eq!(
            opts(&parse(&args(&["--emp", "/x", "--vac"]), &t, false).unwrap()),
            [("emperor", Some("/x")), ("vacuum", None)]
        );
        assert!(matches!(
            parse(&args(&["--mast"]), &t, false),
            Err(CmdLineError::Ambiguous { .. })
        ));
        let e = parse(&args(&["--foobar"]), &t, false).unwrap_err();
        assert_eq!(e.to_string(), "unrecognized option '--foobar'");
        assert_eq!(
            parse(&args(&["--master=1"]), &t, false)
                .unwrap_err()
                .to_string(),
            "option '--master' doesn't allow an argument"
        );
        assert_eq!(
            parse(&args(&["--emperor"]), &t, false)
                .unwrap_err()
                .to_string(),
            "option '--emperor' requires an argument"
        );
        assert_eq!(
            parse(&args(&["-d"]), &t, false).unwrap_err().to_string(),
            "option requires an argument -- 'd'"
        );
        assert_eq!(
            parse(&args(&["-Z"]), &t, false).unwrap_err().to_string(),
            "invalid option -- 'Z'"
        );
    }

    #[test]
    fn dashdash_and_posix() {
        let p = parse(
            &args(&["a.ini", "--master", "--", "--vacuum", "-"]),
            &table(),
            false,
        )
        .unwrap();
        assert_eq!(opts(&p), [("master", None)]);
        assert_eq!(
            p.positional
                .iter()
                .map(|p| p.0.as_str())
                .collect::<Vec<_>>(),
            ["a.ini", "--vacuum", "-"]
        );
        let p = parse(&args(&["a.ini", "--master"]), &table(), true).unwrap();
        assert!(p.options.is_empty());
        assert_eq!(p.positional.len(), 2);
    }
}
