//! Engine-level unit tests (no uWSGI needed): one or more per construct,
//! plus the limits and deviations the real-uWSGI tests cannot show.

use crate::*;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn write(&self, name: &str, s: &str) -> &Self {
        std::fs::write(self.0.path().join(name), s).unwrap();
        self
    }
    fn ctx(&self) -> Context {
        let mut c = Context::fixed();
        c.cwd = std::fs::canonicalize(self.0.path()).unwrap();
        c
    }
}

fn table() -> StaticTable {
    StaticTable::new()
        .option("master", Arity::None, Some('M'))
        .option("socket", Arity::Required, Some('s'))
        .immediate_option("exit", Arity::Optional, None)
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn run(d: &Dir, a: &[&str]) -> Result<Config, Error> {
    parse(&args(a), &table(), &d.ctx())
}

fn pairs(c: &Config) -> Vec<(String, Option<String>)> {
    c.entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

fn p(k: &str, v: Option<&str>) -> (String, Option<String>) {
    (k.to_string(), v.map(str::to_string))
}

#[test]
fn origins_name_file_and_line() {
    let d = Dir::new();
    d.write("a.ini", "[uwsgi]\n\n; c\nsocket = :1\nset = x=1\n");
    let c = run(&d, &["--ini", "a.ini", "-M"]).unwrap();
    assert_eq!(c.entries[0].origin, Origin::CommandLine { index: 1 });
    assert_eq!(
        c.entries[1].origin,
        Origin::File {
            path: "a.ini".into(),
            line: Some(4)
        }
    );
    // the entry `set` creates has the origin of its line
    assert_eq!(
        c.entries[3],
        Entry {
            key: "x".into(),
            value: Some("1".into()),
            origin: Origin::File {
                path: "a.ini".into(),
                line: Some(5)
            }
        }
    );
    assert_eq!(c.entries[4].value, None);
    assert_eq!(c.entries[4].origin, Origin::CommandLine { index: 3 });
    assert_eq!(c.entries[1].origin.to_string(), "a.ini line 4");
}

#[test]
fn env_mapping_and_order() {
    let d = Dir::new();
    let mut ctx = d.ctx();
    ctx.env = vec![
        ("UWSGI_B_C".into(), "1".into()),
        ("UWSGI_RELOADS".into(), "1".into()),
        ("X".into(), "y".into()),
        ("UWSGI_A".into(), "2".into()),
    ];
    let c = parse(&args(&["--socket", "s"]), &table(), &ctx).unwrap();
    assert_eq!(
        pairs(&c),
        [
            p("b-c", Some("1")),
            p("a", Some("2")),
            p("socket", Some("s"))
        ]
    );
    assert_eq!(
        c.entries[0].origin,
        Origin::Env {
            var: "UWSGI_B_C".into()
        }
    );
}

#[test]
fn set_placeholder_and_passes() {
    let d = Dir::new();
    d.write("f.txt", "file\n");
    let mut ctx = d.ctx();
    ctx.env.push(("HOME".into(), "/h".into()));
    d.write("a.ini", "[uwsgi]\nset-ph = ph=P\nbase = /srv\nchdir = %(base)/%(ph)\ne = $(HOME)\nf = @(f.txt)\nnum = %(n * 2 + 1)\nn = 4\nu = %(nope)\n");
    let c = parse(&args(&["--ini", "a.ini"]), &table(), &ctx).unwrap();
    assert_eq!(c.get("chdir"), Some("/srv/P"));
    assert_eq!(c.get("e"), Some("/h"));
    assert_eq!(c.get("f"), Some("file"));
    assert_eq!(c.get("num"), Some("9"));
    assert_eq!(c.get("u"), Some("%(nope)"));
    // the placeholder entry stays (uWSGI lists it) but is config language's doing
    assert_eq!(c.get("ph"), Some("P"));
    assert!(is_config_language("set-ph"));
    assert!(!is_config_language("ph"));
}

#[test]
fn immediate_table_options_are_not_expanded() {
    let d = Dir::new();
    d.write("a.ini", "[uwsgi]\nv = 3\nexit = %(v)\nsocket = %(v)\n");
    let c = run(&d, &["--ini", "a.ini"]).unwrap();
    assert_eq!(c.get("exit"), Some("%(v)"));
    assert_eq!(c.get("socket"), Some("3"));
}

#[test]
fn loops_and_conditions() {
    let d = Dir::new();
    d.write("a.ini", "[uwsgi]\nfor-times = 2\nn%(_) = v%(_)\nendfor\nif-not-env = NOPE\nyes = %(_)\nendif\nif-env = NOPE\nno = 1\nendif\n");
    let c = run(&d, &["--ini", "a.ini"]).unwrap();
    let keys: Vec<_> = c
        .options()
        .map(|e| (e.key.as_str(), e.value.as_deref().unwrap()))
        .collect();
    // %(_) is replaced in values only
    assert_eq!(keys, [("n%(_)", "v1"), ("n%(_)", "v2"), ("yes", "%(_)")]);
}

#[test]
fn include_loop_and_depth() {
    let d = Dir::new();
    d.write("self.ini", "[uwsgi]\ninclude = self.ini\n");
    let e = run(&d, &["--ini", "self.ini"]).unwrap_err();
    assert!(
        matches!(&e, Error::IncludeLoop { chain } if chain.len() == 2),
        "{e}"
    );
    // a file may load another section of itself
    d.write("sec.ini", "[uwsgi]\nini = sec.ini:two\n[two]\nt = 1\n");
    assert_eq!(run(&d, &["--ini", "sec.ini"]).unwrap().get("t"), Some("1"));
    for i in 0..5 {
        d.write(
            &format!("d{i}.ini"),
            &format!("[uwsgi]\ninclude = d{}.ini\n", i + 1),
        );
    }
    d.write("d5.ini", "[uwsgi]\nend = 1\n");
    let limits = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    let e = parse_with_limits(&args(&["--ini", "d0.ini"]), &table(), &d.ctx(), limits).unwrap_err();
    assert!(matches!(e, Error::TooDeep { limit: 3, .. }), "{e}");
}

#[test]
fn inherit_loop() {
    let d = Dir::new();
    d.write("a.ini", "[uwsgi]\ninherit = b.ini\n")
        .write("b.ini", "[uwsgi]\ninherit = a.ini\n");
    let e = run(&d, &["a.ini"]).unwrap_err();
    assert!(
        matches!(&e, Error::IncludeLoop { chain } if chain.len() == 3),
        "{e}"
    );
}

#[test]
fn entry_and_value_limits() {
    let d = Dir::new();
    d.write("t.ini", "[uwsgi]\nfor-times = 1000000\nx = %(_)\nendfor\n");
    let limits = Limits {
        max_entries: 100,
        ..Limits::default()
    };
    let e = parse_with_limits(&args(&["--ini", "t.ini"]), &table(), &d.ctx(), limits).unwrap_err();
    assert!(matches!(e, Error::TooManyEntries { limit: 100, .. }), "{e}");

    d.write("b.ini", "[uwsgi]\na = xxxxxxxxxx\nb = %(a)%(a)%(a)%(a)\nc = %(b)%(b)%(b)%(b)\nd = %(c)%(c)%(c)%(c)\n");
    let limits = Limits {
        max_value_len: 200,
        ..Limits::default()
    };
    let e = parse_with_limits(&args(&["--ini", "b.ini"]), &table(), &d.ctx(), limits).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");

    // uWSGI restarts its scan at index 1 after a substitution, so a value
    // that is exactly its own placeholder stays as it is...
    d.write("l.ini", "[uwsgi]\na = %(a)\n");
    assert_eq!(run(&d, &["--ini", "l.ini"]).unwrap().get("a"), Some("%(a)"));
    // ...but this one grows until uWSGI runs out of memory and crashes
    d.write("l2.ini", "[uwsgi]\na = x%(a)\n");
    // (it doubles at each step: the value cap stops it)
    let e = run(&d, &["--ini", "l2.ini"]).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    // constant size but endless (uWSGI hangs): the substitution cap stops it
    d.write("l3.ini", "[uwsgi]\nb = %(b)\na = y%(b)\n");
    let limits = Limits {
        max_substitutions: 50,
        ..Limits::default()
    };
    let e = parse_with_limits(&args(&["--ini", "l3.ini"]), &table(), &d.ctx(), limits).unwrap_err();
    assert!(matches!(e, Error::PlaceholderLoop { limit: 50, .. }), "{e}");

    // `%(_)` a thousand times, times a long loop token: the result is
    // measured before it is built
    let tok = "y".repeat(1000);
    d.write(
        "f.ini",
        &format!(
            "[uwsgi]\nfor = {tok}\nx = {}\nendfor\n",
            "%(_)".repeat(1000)
        ),
    );
    let limits = Limits {
        max_value_len: 100_000,
        ..Limits::default()
    };
    let e = parse_with_limits(&args(&["--ini", "f.ini"]), &table(), &d.ctx(), limits).unwrap_err();
    assert!(
        matches!(&e, Error::TooLarge { what, limit: 100_000, .. } if what == "value of x"),
        "{e}"
    );
    // under the limit the loop still substitutes every `%(_)`
    d.write("g.ini", "[uwsgi]\nfor = a b\nx = %(_)-%(_)\nendfor\n");
    let got = run(&d, &["--ini", "g.ini"]).unwrap();
    let xs: Vec<_> = pairs(&got).into_iter().filter(|(k, _)| k == "x").collect();
    assert_eq!(
        xs,
        vec![
            ("x".to_string(), Some("a-a".to_string())),
            ("x".to_string(), Some("b-b".to_string()))
        ]
    );

    d.write("big.ini", &"a = 1\n".repeat(100));
    let limits = Limits {
        max_file_size: 100,
        ..Limits::default()
    };
    let e =
        parse_with_limits(&args(&["--ini", "big.ini"]), &table(), &d.ctx(), limits).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
}

#[test]
fn unsupported_sources() {
    let d = Dir::new();
    for src in [
        "http://example.com/a.ini",
        "data://0",
        "sym://x",
        "section://x",
        "emperor://x",
        "call://f",
        "-",
    ] {
        let e = run(&d, &["--ini", src]).unwrap_err();
        assert!(matches!(e, Error::UnsupportedSource { .. }), "{src}: {e}");
    }
}

#[test]
fn exec_and_fd_sources() {
    let d = Dir::new();
    let c = run(
        &d,
        &[
            "--ini",
            "exec://printf '[uwsgi]\\na = 1\\n'",
            "--set",
            "b=@(exec://echo hi)",
        ],
    )
    .unwrap();
    assert_eq!(c.get("a"), Some("1"));
    assert_eq!(c.get("b"), Some("hi"));
    // fd://N reads /dev/fd/N; fd 99 is not open
    assert!(matches!(
        run(&d, &["--ini", "fd://99"]).unwrap_err(),
        Error::Read { .. }
    ));
}

#[test]
fn xml_and_json_loader_values_are_cut_at_the_section() {
    let d = Dir::new();
    d.write("a.json", "{\"s\": {\"a\": 1}}")
        .write("a.xml", "<uwsgi><b>1</b></uwsgi>")
        .write("a.yml", "s:\n  c: 1\n");
    let c = run(
        &d,
        &[
            "--json", "a.json:s", "--xml", "a.xml:s", "--yaml", "a.yml:s",
        ],
    )
    .unwrap();
    assert_eq!(
        pairs(&c),
        [
            p("json", Some("a.json")),
            p("a", Some("1")),
            p("xml", Some("a.xml")),
            p("b", Some("1")),
            p("yaml", Some("a.yml:s")),
            p("c", Some("1"))
        ]
    );
}

#[test]
fn unclosed_block_warns() {
    let d = Dir::new();
    d.write("a.ini", "[uwsgi]\nif-env = NOPE\nx = 1\n");
    let c = run(&d, &["--ini", "a.ini", "--socket", "s"]).unwrap();
    assert_eq!(
        pairs(&c),
        [p("ini", Some("a.ini")), p("if-env", Some("NOPE"))]
    );
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].to_string().contains("a.ini line 2"));
}

#[test]
fn hostname_regex_and_plugins() {
    let d = Dir::new();
    let mut ctx = d.ctx();
    ctx.hostname = "web01".into();
    ctx.plugins = vec!["python3".into()];
    d.write("a.ini", "[uwsgi]\nif-hostname-match = ^web\\d+$\na = %(_)\nendif\nif-hostname-match = (\nbad = 1\nendif\nif-plugin = python3\np = %(_)\nendif\n");
    let c = parse(&args(&["--ini", "a.ini"]), &table(), &ctx).unwrap();
    assert_eq!(c.get("a"), Some("^web\\d+$"));
    // PCRE failing to compile counts as a match in uWSGI
    assert_eq!(c.get("bad"), Some("1"));
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.get("p"), Some("python3"));
}

#[test]
fn magic_variables_from_context() {
    let d = Dir::new();
    d.write("m.ini", "[uwsgi]\nv = %h|%k|%u|%g|%U|%G|%V|%t|%T|%[\n");
    let mut ctx = d.ctx();
    ctx.hostname = "h".into();
    ctx.cpus = 8;
    ctx.now_secs = 12;
    ctx.now_micros = 12_000_001;
    let c = parse(&args(&["--ini", "m.ini"]), &table(), &ctx).unwrap();
    assert_eq!(
        c.get("v"),
        Some("h|8|0|0|root|root|2.0.21|12|12000001|\x1b")
    );
}

#[test]
fn strict_rejects_unknown_keys() {
    let d = Dir::new();
    d.write("s.ini", "[uwsgi]\nstrict\nsocket = 1\nfoo = 1\n");
    assert!(matches!(
        run(&d, &["--ini", "s.ini"]).unwrap_err(),
        Error::Strict { .. }
    ));
}

#[test]
fn for_readline_reads_at_most_the_file_size_limit() {
    // `std::fs::read` had no cap: `for-readline = /dev/zero` ate memory
    // until the process died
    let d = Dir::new();
    d.write("lines", &"x\n".repeat(100));
    d.write("r.ini", "[uwsgi]\nfor-readline = lines\na = %(_)\nendfor\n");
    let limits = Limits {
        max_file_size: 100,
        ..Limits::default()
    };
    let e = parse_with_limits(&args(&["--ini", "r.ini"]), &table(), &d.ctx(), limits).unwrap_err();
    assert!(
        matches!(&e, Error::TooLarge { what, limit: 100, .. } if what.contains("lines")),
        "{e}"
    );
    d.write(
        "z.ini",
        "[uwsgi]\nfor-readline = /dev/zero\na = %(_)\nendfor\n",
    );
    let e = parse_with_limits(&args(&["--ini", "z.ini"]), &table(), &d.ctx(), limits).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    // under the limit, as before
    d.write("few", "a\nb\n");
    d.write("f.ini", "[uwsgi]\nfor-readline = few\nx = %(_)\nendfor\n");
    let c = parse_with_limits(&args(&["--ini", "f.ini"]), &table(), &d.ctx(), limits).unwrap();
    let xs: Vec<_> = c.entries.iter().filter(|e| e.key == "x").collect();
    assert_eq!(xs.len(), 2);
}

#[test]
fn files_only_refuses_commands_descriptors_and_special_files() {
    let d = Dir::new();
    let limits = Limits {
        files_only: true,
        ..Limits::default()
    };
    let go = |a: &[&str]| parse_with_limits(&args(a), &table(), &d.ctx(), limits);
    d.write("ok.ini", "[uwsgi]\nmaster = 1\n");
    d.write("e.ini", "[uwsgi]\nini = exec://cat ok.ini\n");
    let e = go(&["--ini", "e.ini"]);
    assert!(matches!(e, Err(Error::UnsupportedSource { .. })), "{e:?}");
    assert!(matches!(
        go(&["--ini", "fd://0"]),
        Err(Error::UnsupportedSource { .. })
    ));
    assert!(matches!(
        go(&["--ini", "/dev/null"]),
        Err(Error::Read { .. })
    ));
    d.write("m.ini", "[uwsgi]\na = @(exec://echo hi)\n");
    assert!(matches!(
        go(&["--ini", "m.ini"]),
        Err(Error::UnsupportedSource { .. })
    ));
    d.write(
        "r.ini",
        "[uwsgi]\nfor-readline = /dev/null\nx = %(_)\nendfor\n",
    );
    let c = go(&["--ini", "r.ini"]).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.message.contains("regular file")),
        "{:?}",
        c.warnings
    );
    // files are read as always
    assert_eq!(go(&["--ini", "ok.ini"]).unwrap().get("master"), Some("1"));
    // and without files_only, exec:// runs as in uWSGI
    assert_eq!(
        run(&d, &["--ini", "e.ini"]).unwrap().get("master"),
        Some("1")
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// A key uWSGI's ini reader keeps as written and the crate does not
    /// consume itself.
    fn key() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_-]{0,12}".prop_filter("config language", |k| !is_config_language(k))
    }

    /// A value with no blank at either end (the reader strips them) and no
    /// `%`, `$`, `@` (placeholders and magic variables).
    fn value() -> impl Strategy<Value = String> {
        "([a-zA-Z0-9./:_,=;#\"'-]([a-zA-Z0-9 ./:_,=;#\"'-]{0,20}[a-zA-Z0-9./:_,=;#\"'-])?)?"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// An ini file of `key = value` lines reads back as the same
        /// entries, in order, each with its line.
        #[test]
        fn ini_lines_round_trip(lines in proptest::collection::vec((key(), value()), 0..24)) {
            let d = Dir::new();
            let mut text = String::from("[uwsgi]\n");
            for (k, v) in &lines {
                text.push_str(&format!("{k} = {v}\n"));
            }
            d.write("p.ini", &text);
            let c = run(&d, &["--ini", "p.ini"]).unwrap();
            let got: Vec<(String, String, Option<usize>)> = c
                .options()
                .map(|e| match &e.origin {
                    Origin::File { path, line } if path == "p.ini" => {
                        (e.key.clone(), e.value.clone().unwrap(), *line)
                    }
                    o => panic!("{e:?} from {o}"),
                })
                .collect();
            let want: Vec<(String, String, Option<usize>)> = lines
                .iter()
                .enumerate()
                .map(|(i, (k, v))| (k.clone(), v.clone(), Some(i + 2)))
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
