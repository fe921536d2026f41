//! Every construct, compared with the real `/usr/bin/uwsgi --show-config`.
//!
//! Each test writes fixtures in a tempdir, runs uWSGI 2.0.21 on them (killed
//! as soon as it has printed `;end of configuration`, and after 10 s at the
//! latest) and asserts that the crate returns the same keys and values in the
//! same order. The only filter applied everywhere is the `show-config = true`
//! entry that the harness's own `--show-config` flag adds (see `common`).

mod common;

use common::{both_fail, kv, same, Fixture, Real};
use uwsgi_config::{CmdLineError, Error};

#[test]
fn command_line_long_short_optional_and_positional() {
    let fx = Fixture::new();
    fx.write("p.ini", "[uwsgi]\np = 1\n")
        .write("q.ini", "[uwsgi]\nq = 2\n")
        .write("--vacuum.ini", "[uwsgi]\nv = 3\n");
    let (v, c) = same(
        &fx,
        &[
            "p.ini",
            "--socket",
            ":1",
            "--socket=:2",
            "-s",
            ":3",
            "-s:4",
            "-M",
            "--vacuum",
            "--chmod-socket",
            "--chmod-socket=660",
            "-C",
            "-C644",
            "--emperor",
            "--master",
            "-Sa=b",
            "[skipped]",
            "q.ini",
            "--",
            "--vacuum.ini",
        ],
        &[],
    );
    // positional files come after every option (getopt permutes argv)
    assert_eq!(v.last().unwrap(), &("v".to_string(), "3".to_string()));
    assert_eq!(
        c.entries[1].origin,
        uwsgi_config::Origin::CommandLine { index: 3 }
    );
}

#[test]
fn command_line_errors_like_getopt() {
    let fx = Fixture::new();
    let e = both_fail(
        &fx,
        &["--foobar", "1"],
        &[],
        "unrecognized option '--foobar'",
    );
    assert!(matches!(
        e,
        Error::CmdLine(CmdLineError::Unrecognized { .. })
    ));
    assert!(e.to_string().contains("unrecognized option '--foobar'"));
    let e = both_fail(
        &fx,
        &["--emperor"],
        &[],
        "option '--emperor' requires an argument",
    );
    assert_eq!(e.to_string(), "option '--emperor' requires an argument");
    let e = both_fail(
        &fx,
        &["--master=1"],
        &[],
        "option '--master' doesn't allow an argument",
    );
    assert_eq!(e.to_string(), "option '--master' doesn't allow an argument");
    let e = both_fail(&fx, &["-Z"], &[], "invalid option -- 'Z'");
    assert_eq!(e.to_string(), "invalid option -- 'Z'");
    let e = both_fail(&fx, &["-s"], &[], "option requires an argument -- 's'");
    assert_eq!(e.to_string(), "option requires an argument -- 's'");
    // a positional argument without a known extension
    let e = both_fail(
        &fx,
        &["--", "--master"],
        &[],
        "unable to load configuration from --master",
    );
    assert!(matches!(e, Error::UnknownConfigType { .. }));
}

#[test]
fn command_line_abbreviations_with_uwsgi_own_names() {
    let fx = Fixture::new();
    let out = std::process::Command::new(common::UWSGI)
        .arg("--dump-options")
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        names.len() > 500,
        "uwsgi --dump-options gave {} names",
        names.len()
    );
    struct Full(Vec<String>, uwsgi_config::StaticTable);
    impl uwsgi_config::OptionTable for Full {
        fn arity(&self, long: &str) -> Option<uwsgi_config::Arity> {
            self.1.arity(long).or_else(|| {
                self.0
                    .iter()
                    .any(|n| n == long)
                    .then_some(uwsgi_config::Arity::Required)
            })
        }
        fn long_of_short(&self, short: char) -> Option<&str> {
            self.1.long_of_short(short)
        }
        fn long_names(&self) -> Vec<&str> {
            self.0.iter().map(String::as_str).collect()
        }
    }
    let table = Full(names, common::table());
    let ctx = fx.context(&[]);
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // unique prefix: uWSGI stores the full name
    match fx.real(&["--vacuu"], &[]) {
        Real::Shown(v) => assert_eq!(v, kv(&[("show-config", "true"), ("vacuum", "true")])),
        Real::Failed(o) => panic!("{o}"),
    }
    let c = uwsgi_config::parse(&args(&["--show-config", "--vacuu"]), &table, &ctx).unwrap();
    assert_eq!(c.entries[1].key, "vacuum");
    // ambiguous prefix
    match fx.real(&["--mast"], &[]) {
        Real::Failed(o) => assert!(o.contains("option '--mast' is ambiguous"), "{o}"),
        Real::Shown(v) => panic!("{v:?}"),
    }
    let e = uwsgi_config::parse(&args(&["--mast"]), &table, &ctx).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("option '--mast' is ambiguous; possibilities:"),
        "{e}"
    );
}

#[test]
fn environment_variables_come_first() {
    let fx = Fixture::new();
    fx.write("e.ini", "[uwsgi]\nfrom-env-ini = 1\n");
    let env = [
        ("UWSGI_EMPEROR", "/x"),
        ("UWSGI_FOO_BAR", "1"),
        ("UWSGI_MiXeD_Case", "v"),
        ("UWSGI_INI", "e.ini"),
        // excluded by uWSGI
        ("UWSGI_RELOADS", "3"),
        ("UWSGI_VASSALS_DIR", "/v"),
        ("UWSGI_EMPEROR_FD", "4"),
        ("uwsgi_lower", "no"),
        ("UWSGI_", "empty-key"),
    ];
    let (v, c) = same(&fx, &["--master"], &env);
    assert_eq!(v.iter().position(|(k, _)| k == "master"), Some(v.len() - 1));
    assert!(c.entries.iter().any(|e| e.origin
        == uwsgi_config::Origin::Env {
            var: "UWSGI_FOO_BAR".into()
        }));
}

#[test]
fn ini_syntax() {
    let fx = Fixture::new();
    fx.write(
        "s.ini",
        "[uwsgi]\na = 1\n  b=2  \n\"c\" = \"3\"\n; comment\n# c2\n[other]\nd = 4\n[uwsgi]\na = 5\ne = 50%\nf = x\n= noval\nk==v=w\nmaster\n\
         [uwsgi ]\ng=1\n\t[uwsgi]\t\r\nh=1 ; kept\r\n[uwsgi]x\ni=1\n[uwsgi]\nlast = no newline",
    );
    same(&fx, &["--ini", "s.ini"], &[]);
    same(&fx, &["--ini", "s.ini:other"], &[]);
    // `:section` re-reads the last ini file
    same(&fx, &["--ini", "s.ini", "--ini", ":other"], &[]);
    same(&fx, &["s.ini"], &[]);
}

#[test]
fn ini_missing_section_is_a_warning() {
    let fx = Fixture::new();
    fx.write("s.ini", "[uwsgi]\na = 1\n");
    match fx.real(&["--ini", "s.ini:nope"], &[]) {
        Real::Shown(_) => {}
        Real::Failed(o) => panic!("{o}"),
    }
    let (_, c) = same(&fx, &["--ini", "s.ini:nope"], &[]);
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0]
        .message
        .contains("Can't find section \"nope\""));
}

#[test]
fn magic_variables() {
    let fx = Fixture::new();
    let line = "x = %d|%p|%s|%n|%e|%c|%x|%o|%j|%0|%1|%2|%9|%h|%k|%u|%g|%U|%G|%V|%v|%b|%%|%z|%i|%O|%D|%S|%N|%E|%C|%X|%P|%J|%I\n";
    fx.write(
        "sub/dir/a.ini",
        &format!("[uwsgi]\n{line}ini = %d../b.ini:sec\n"),
    );
    fx.write(
        "sub/b.ini",
        &format!("[sec]\n{line}include = %ddir/c.yml\n"),
    );
    fx.write("sub/dir/c.yml", "uwsgi:\n  y: %d|%s|%x|%O|%o\n");
    same(&fx, &["--ini", "sub/dir/a.ini"], &[]);
    same(&fx, &["--ini", "sub/dir/a.ini:uwsgi"], &[]);
    // uppercase variables are not set by positional files and include
    same(&fx, &["sub/dir/a.ini"], &[]);
}

#[test]
fn magic_time_variables() {
    // %t / %T depend on the clock: compared as numbers near each other
    let fx = Fixture::new();
    fx.write("t.ini", "[uwsgi]\nt = %t\nu = %T\n");
    let Real::Shown(real) = fx.real(&["--ini", "t.ini"], &[]) else {
        panic!()
    };
    let ours = common::shown(&fx.ours(&["--ini", "t.ini"], &[]).unwrap());
    assert_eq!(real.len() - 1, ours.len());
    let t_real: i64 = real[2].1.parse().unwrap();
    let t_ours: i64 = ours[1].1.parse().unwrap();
    assert!((t_real - t_ours).abs() < 30);
    let u_real: i64 = real[3].1.parse().unwrap();
    let u_ours: i64 = ours[2].1.parse().unwrap();
    assert!((u_real - u_ours).abs() < 30_000_000);
}

#[test]
fn placeholders_env_and_files() {
    let fx = Fixture::new();
    fx.write("one.txt", "content\n");
    fx.write(
        "ph.ini",
        "[uwsgi]\nbase = /srv\nchdir = %(base)/app\nu = %(unknown)/x\ne = $(HOME)/h\nue = $(NOPE_XYZ)\nf = @(one.txt)\ng = @(exec://echo hi)\n\
         set-ph = ph1=val1\nh = %(ph1)\nset = s1=sv\ni = %(s1)\nm = %(base 1)\nn = %(cpu + 2)\ncpu = 3\nbase = /other\nlate = %(later)\nlater = L\n\
         deep = %(chdir)\nmath = %(cpu * cpu - 1 / 2)\ninc = %(cpu ++)\ndiv = %(cpu / 0)\nempty = %()\nnested = %(a(b))\nunderscore = %(_)\n\
         twice = %(base)%(base)\nmixed = $(HOME)%(base)@(one.txt)\nreloads = $(UWSGI_RELOADS)\nph-env = %(envref)\nenvref = $(HOME)\nflag = %(flagopt)\nselfref = %(selfref)\n",
    );
    same(
        &fx,
        &["--ini", "ph.ini", "--set", "cmd=%(base)"],
        &[("HOME", "/root")],
    );
}

#[test]
fn placeholders_are_not_expanded_in_immediate_options() {
    let fx = Fixture::new();
    fx.write("x.ini", "[uwsgi]\nname = x\ninclude = %(name).ini\n");
    let e = both_fail(
        &fx,
        &["--ini", "x.ini"],
        &[],
        "realpath() of %(name).ini failed",
    );
    assert!(matches!(e, Error::Read { .. }), "{e}");
    fx.write("y.ini", "[uwsgi]\nname = x\nini = %(name).ini\n");
    let e = both_fail(&fx, &["--ini", "y.ini"], &[], "%(name).ini");
    assert!(matches!(e, Error::Read { .. }), "{e}");
}

#[test]
fn set_errors() {
    let fx = Fixture::new();
    fx.write("s.ini", "[uwsgi]\nset = novalue\n");
    let e = both_fail(
        &fx,
        &["--ini", "s.ini"],
        &[],
        "invalid placeholder/--set value",
    );
    assert!(matches!(e, Error::InvalidSet { .. }));
    fx.write("p.ini", "[uwsgi]\nset-placeholder = socket=x\n");
    let e = both_fail(&fx, &["--ini", "p.ini"], &[], "you cannot use");
    assert!(matches!(e, Error::PlaceholderIsOption { .. }));
}

#[test]
fn nested_loaders_with_sections() {
    let fx = Fixture::new();
    fx.write("a.ini", "[uwsgi]\na = 1\ninclude = b.xml\nini = a.ini:two\nyaml = c.yaml:sec\njson = d.json:obj\nxml = e.xml:id1\nyml = c.yaml\njs = d.json\nafter = 1\n[two]\ntwo = 2\n")
        .write("b.xml", "<uwsgi><bx>1</bx><include>f.js</include></uwsgi>")
        .write("f.js", "{\"uwsgi\": {\"fjs\": \"1\"}}")
        .write("c.yaml", "uwsgi:\n  cy: 1\nsec:\n  cs: 2\n  xmlconfig: e.xml\n")
        .write("d.json", "{\"uwsgi\": {\"dj\": 1}, \"obj\": {\"dobj\": true, \"yml\": \"c.yaml:sec\"}}")
        .write("e.xml", "<r><uwsgi id=\"id1\"><e1>1</e1><e2 id=\"id2\">2</e2></uwsgi><uwsgi><e3/></uwsgi></r>");
    same(&fx, &["--ini", "a.ini"], &[]);
    same(
        &fx,
        &[
            "-x",
            "e.xml",
            "-y",
            "c.yaml:sec",
            "-j",
            "d.json",
            "--xml",
            "e.xml:id1",
            "--json",
            "d.json:obj",
        ],
        &[],
    );
}

#[test]
fn include_with_a_section_is_unknown_to_uwsgi() {
    let fx = Fixture::new();
    fx.write("i.ini", "[uwsgi]\ninclude = s.ini:other\n")
        .write("s.ini", "[other]\na=1\n");
    let e = both_fail(
        &fx,
        &["--ini", "i.ini"],
        &[],
        "unable to load configuration from s.ini:other",
    );
    assert!(matches!(e, Error::UnknownConfigType { .. }));
    let e = both_fail(
        &fx,
        &["--config", "s.ini"],
        &[],
        "unable to load configuration from s.ini",
    );
    assert!(matches!(e, Error::UnknownConfigType { .. }));
}

#[test]
fn missing_file() {
    let fx = Fixture::new();
    let e = both_fail(&fx, &["--ini", "nope.ini"], &[], "nope.ini");
    assert!(matches!(e, Error::Read { .. }));
    assert!(e.to_string().contains("nope.ini"), "{e}");
}

#[test]
fn include_loop_is_an_error_where_uwsgi_recurses() {
    let fx = Fixture::new();
    fx.write("loop1.ini", "[uwsgi]\ninclude = loop2.ini\n")
        .write("loop2.ini", "[uwsgi]\ninclude = loop1.ini\n");
    // uWSGI recurses until it runs out of memory: it never shows its config
    match fx.real_within(
        &["--ini", "loop1.ini"],
        &[],
        std::time::Duration::from_secs(2),
    ) {
        Real::Failed(_) => {}
        Real::Shown(v) => panic!("uWSGI finished: {v:?}"),
    }
    let e = fx.ours(&["--ini", "loop1.ini"], &[]).unwrap_err();
    let Error::IncludeLoop { chain } = &e else {
        panic!("{e}")
    };
    assert_eq!(chain, &["loop1.ini", "loop2.ini", "loop1.ini"]);
    assert!(e
        .to_string()
        .contains("loop1.ini -> loop2.ini -> loop1.ini"));
}

#[test]
fn logic_blocks() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.dir.path().join("d1")).unwrap();
    fx.write("f1", "").write("lines.txt", "l1\r\nl2\n\nl4");
    fx.write(
        "lg.ini",
        &"[uwsgi]\nfor = a  b c\nx = %(_)-1\nset = v%(_)=1\nendfor =\nif-env = HOME\nhome = %(_)\nendif\nif-env = HOME=/nothome\nno = 1\nendif\n\
         if-not-env = NOPE_X\nyes = %(_)\nendif\nif-not-env = HOME=/other\nnot-other = %(_)\nendif\nifenv = HOME\nalias = 1\nend-if\n\
         if-exists = f1\nex = %(_)\nendif\nif-not-exists = nope\nnex = %(_)\nendif\nifexists = d1\nexd = 1\nendif\n\
         if-file = d1\nnofile = 1\nendif\nif-file = f1\nfile = %(_)\nendif\nif-not-file = d1\nnf = %(_)\nendif\n\
         if-dir = d1\ndir = %(_)\nendif\nif-not-dir = f1\nnd = %(_)\nendif\nifdir = d1\nifd = 1\nendif\nif-directory = d1\nifdy = 1\nendif\n\
         if-opt = x\nopt = %(_)\nendif\nif-opt = x=a-1\nopt2 = %(_)\nendif\nif-opt = x=zzz\nopt2b = 1\nendif\nif-not-opt = x=zzz\nopt3 = %(_)\nendif\nif-not-opt = nope\nopt4 = %(_)\nendif\n\
         for-times = 3\nt = %(_)\nendfor\nfor-glob = d*\ngl = %(_)\nendfor\nfor-glob = nomatch*\ngl2 = %(_)\nendfor\nfor-readline = lines.txt\nrl = [%(_)]\nendfor\n\
         if-reload\nrel = 1\nendif\nif-not-reload\nnrel = 1\nendif\nif-hostname = HOSTNAME\nhn = %(_)\nendif\nif-not-hostname = HOSTNAME\nnhn = 1\nendif\n\
         if-hostname-match = ^.\nhm = %(_)\nendif\nif-not-hostname-match = ^$\nnhm = %(_)\nendif\nif-plugin = nonexistentplugin\nplug = 1\nendif\nif-not-plugin = nonexistentplugin\nnplug = %(_)\nendif\n\
         for = 1 2\nini = p.ini\nendfor\nfor = 1\nkey%(_) = not in keys\nend-for\nend\nafter = 1\n"
            .replace("HOSTNAME", &fx.context(&[]).hostname),
    );
    fx.write("p.ini", "[uwsgi]\np = 1\n");
    same(&fx, &["--ini", "lg.ini"], &[("HOME", "/root")]);
    // a reload: UWSGI_RELOADS is set
    same(
        &fx,
        &["--ini", "lg.ini"],
        &[("HOME", "/root"), ("UWSGI_RELOADS", "0")],
    );
}

#[test]
fn logic_on_the_command_line_and_across_files() {
    let fx = Fixture::new();
    fx.write("open.ini", "[uwsgi]\nif-env = HOME\na = %(_)\n")
        .write("close.ini", "[uwsgi]\nb = %(_)\nendif\nc = 1\n");
    let (_, c) = same(
        &fx,
        &[
            "--if-env", "HOME", "--socket", "%(_)", "--endif", "--socket", "after",
        ],
        &[("HOME", "/h")],
    );
    assert!(c.warnings.is_empty());
    // close.ini is loaded from inside the block opened by open.ini: its
    // entries (its `endif` too) are added by the block itself, so the
    // `endif` does not close it; uWSGI applies it to what follows
    let (_, c) = same(
        &fx,
        &["--ini", "open.ini", "--ini", "close.ini", "--socket", "s"],
        &[("HOME", "/h")],
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    // a block never closed: uWSGI applies it to the rest; the crate warns
    let (_, c) = same(&fx, &["--ini", "open.ini", "--socket", "s"], &[]);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
}

#[test]
fn logic_cannot_nest() {
    let fx = Fixture::new();
    fx.write(
        "nest.ini",
        "[uwsgi]\nif-env = HOME\nif-env = HOME\na=1\nendif\n",
    );
    let e = both_fail(
        &fx,
        &["--ini", "nest.ini"],
        &[("HOME", "/r")],
        "recursive logic in options is not supported (option = if-env)",
    );
    assert!(matches!(e, Error::RecursiveLogic { .. }));
    // inside a false block the inner if is skipped, and its endif closes the outer block
    fx.write(
        "skip.ini",
        "[uwsgi]\nif-env = NOPE\nif-env = HOME\na=1\nendif\nb=2\nendif\nc=3\n",
    );
    same(&fx, &["--ini", "skip.ini"], &[("HOME", "/r")]);
}

#[test]
fn xml_files() {
    let fx = Fixture::new();
    fx.write(
        "x.xml",
        "<?xml version=\"1.0\"?>\n<uwsgi>\n  <socket>:3031</socket>\n  <master/>\n  <sp> a &amp; b &#65; </sp>\n  <pp id=\"other\">no</pp>\n  <!-- c -->\n\
         <app mountpoint=\"/x\">\n    <script>mymod</script>\n  </app>\n  <app domain=\"d\">mod2</app>\n  <app/>\n  <c><![CDATA[cd]]></c>\n  <e></e>\n  <m>%d|%n</m>\n\
         <multi>  spaced\t</multi>\n</uwsgi>\n",
    );
    same(&fx, &["--xml", "x.xml"], &[]);
    same(&fx, &["-x", "x.xml:other"], &[]);
    same(&fx, &["x.xml"], &[]);
    fx.write(
        "y.xml",
        "<all>\n <uwsgi id=\"one\"><a>1</a></uwsgi>\n <uwsgi id=\"two\"><a>2</a></uwsgi>\n</all>",
    );
    same(&fx, &["-x", "y.xml:two"], &[]);
    same(&fx, &["--xmlconfig", "y.xml"], &[]);
    both_fail(&fx, &["-x", "y.xml:three"], &[], "invalid xml root element");
    fx.write("bad.xml", "<uwsgi><a>1</b></uwsgi>");
    let e = both_fail(&fx, &["-x", "bad.xml"], &[], "could not parse file");
    assert!(matches!(e, Error::Syntax { .. }));
    both_fail(&fx, &["-x", "y.xml:"], &[], "invalid xml id");
}

#[test]
fn yaml_files() {
    let fx = Fixture::new();
    fx.write(
        "a.yml",
        "# comment\nother:\n  z: 1\nuwsgi:\n  socket: :3031\n  master: true\n  quoted: \"a b # c\"\n  single: 'it''s'\n  list:\n    - x\n    - 'y'\n  ilist:\n  - p\n  - q\n\
         flow: [f1, f2]\n  empty:\n  num: 0x10\n  nested:\n    k: v\n  after: 1   # trailing\n  m: %n\nnext:\n  n: 1\n",
    );
    same(&fx, &["--yaml", "a.yml"], &[]);
    same(&fx, &["-y", "a.yml:other"], &[]);
    same(&fx, &["--yml", "a.yml:next"], &[]);
    same(&fx, &["a.yml"], &[]);
    fx.write("flowmap.yaml", "uwsgi: {a: 1}\nuwsgi2:\n  b: 2\n");
    same(&fx, &["flowmap.yaml"], &[]);
    fx.write("doc.yaml", "---\nuwsgi:\n  a: 1\n...\n");
    same(&fx, &["doc.yaml"], &[]);
}

#[test]
fn json_files() {
    let fx = Fixture::new();
    fx.write(
        "a.json",
        "{\"other\": {\"o\": 1}, \"uwsgi\": {\"socket\": \":3031\", \"master\": true, \"off\": false, \"n\": null, \"num\": 1.50, \"e\": 1e3, \"neg\": -2,\n\
         \"arr\": [\"a\", 2, true, null, {\"x\":1}, [1]], \"obj\": {\"k\": \"v\"}, \"dup\": \"1\", \"dup\": \"2\", \"u\": \"caf\\u00e9\", \"m\": \"%n\"}, \"uwsgi\": {\"second\": 1}}",
    );
    same(&fx, &["--json", "a.json"], &[]);
    same(&fx, &["-j", "a.json:other"], &[]);
    same(&fx, &["a.json"], &[]);
    fx.write(
        "c.js",
        "{\"uwsgi\": {\n// c\n\"a\": \"1\", /* x */ \"b\": 2}}\n",
    );
    same(&fx, &["--js", "c.js"], &[]);
    both_fail(
        &fx,
        &["--json", "a.json:missing"],
        &[],
        "you must define a object named missing",
    );
    fx.write("t.json", "{\"uwsgi\": {\"a\": \"1\"}} x");
    let e = both_fail(&fx, &["--json", "t.json"], &[], "error parsing JSON data");
    assert!(matches!(e, Error::Syntax { .. }));
}

#[test]
fn inherit_is_loaded_after_the_passes() {
    let fx = Fixture::new();
    fx.write(
        "main.ini",
        "[uwsgi]\nbase = b\ninherit = %(base).ini\nm = %(base)\n",
    )
    .write("b.ini", "[uwsgi]\nfrom-b = %(base)\ninherit = c.ini\n")
    .write("c.ini", "[uwsgi]\nfrom-c = 1\n");
    same(&fx, &["--ini", "main.ini"], &[]);
}

#[test]
fn strict_mode() {
    let fx = Fixture::new();
    fx.write("s.ini", "[uwsgi]\nstrict\nsocket = :1\nunknown-thing = 1\n");
    let e = both_fail(
        &fx,
        &["--ini", "s.ini"],
        &[],
        "[strict-mode] unknown config directive: unknown-thing",
    );
    assert!(matches!(e, Error::Strict { .. }));
}

#[test]
fn inject_before_and_after() {
    let fx = Fixture::new();
    fx.write("before.txt", "[uwsgi]\nb = %n\n")
        .write("after.txt", "\n[uwsgi]\na = 1\n")
        .write("m.ini", "[other]\nx = 1\n[uwsgi]\nm = 1");
    same(
        &fx,
        &[
            "--inject-before",
            "before.txt",
            "--inject-after",
            "after.txt",
            "--ini",
            "m.ini",
        ],
        &[],
    );
}

#[test]
fn exec_source() {
    let fx = Fixture::new();
    fx.write("real.ini", "[uwsgi]\nviaexec = 1\n[s]\ns = 1\n");
    same(
        &fx,
        &[
            "--ini",
            "exec://cat real.ini",
            "--ini",
            "exec://cat real.ini:s",
        ],
        &[],
    );
}

#[test]
fn placeholder_loop_is_an_error_where_uwsgi_hangs() {
    let fx = Fixture::new();
    fx.write("l.ini", "[uwsgi]\nb = %(b)\na = y%(b)\n");
    // uWSGI rescans `y%(b)` forever (constant memory): killed at the timeout
    match fx.real_within(&["--ini", "l.ini"], &[], std::time::Duration::from_secs(2)) {
        Real::Failed(_) => {}
        Real::Shown(v) => panic!("uWSGI finished: {v:?}"),
    }
    let e = fx.ours(&["--ini", "l.ini"], &[]).unwrap_err();
    assert!(matches!(e, Error::PlaceholderLoop { .. }), "{e}");
}
