//! Runs the real uWSGI 2.0.21 with `--show-config` and compares its list of
//! options with the crate's.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use uwsgi_config::{Arity, Config, Context, Error, StaticTable};

pub const UWSGI: &str = "/usr/bin/uwsgi";

/// How long one uWSGI run may take before the test gives up.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What uWSGI did: the `[uwsgi]` block of `--show-config`, or everything it
/// printed when it stopped before showing it.
#[derive(Debug)]
pub enum Real {
    Shown(Vec<(String, String)>),
    Failed(String),
}

fn require_uwsgi() {
    assert!(
        Path::new(UWSGI).exists(),
        "{UWSGI} is missing: these tests compare with the real uWSGI 2.0.21; `bash scripts/install-deps.sh` installs it"
    );
}

/// The options the fixtures use on the command line, with uWSGI's arities
/// and letters.
pub fn table() -> StaticTable {
    StaticTable::new()
        .option("show-config", Arity::None, None)
        .option("socket", Arity::Required, Some('s'))
        .option("processes", Arity::Required, Some('p'))
        .option("master", Arity::None, Some('M'))
        .option("emperor", Arity::Required, None)
        .option("vacuum", Arity::None, None)
        .option("chmod-socket", Arity::Optional, Some('C'))
        .option("env", Arity::Required, None)
        .option("chdir", Arity::Required, None)
        .option("exit", Arity::Optional, None)
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        require_uwsgi();
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        // canonical, so that %d & co. match what uWSGI's realpath() gives
        std::fs::canonicalize(self.dir.path()).expect("canonical tempdir")
    }

    pub fn write(&self, name: &str, content: &str) -> &Self {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, content).unwrap();
        self
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        // Command passes its environment sorted by name: give the crate the
        // same order
        let mut env: Vec<(String, String)> =
            vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env.sort();
        env.dedup_by(|a, b| a.0 == b.0);
        env
    }

    pub fn context(&self, extra_env: &[(&str, &str)]) -> Context {
        let mut ctx = Context::from_system();
        ctx.env = self.env(extra_env);
        ctx.cwd = self.path();
        ctx.version = "2.0.21-debian".into();
        // what uWSGI reports as "detected binary path"
        ctx.binary_path = "/usr/bin/uwsgi-core".into();
        ctx
    }

    /// Runs uWSGI with `--show-config` first, then `args`.
    pub fn real(&self, args: &[&str], env: &[(&str, &str)]) -> Real {
        self.real_within(args, env, TIMEOUT)
    }

    /// [`Fixture::real`] with another timeout (for runs expected to hang).
    pub fn real_within(&self, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Real {
        require_uwsgi();
        let mut cmd = Command::new(UWSGI);
        cmd.arg("--show-config")
            .args(args)
            .env_clear()
            .envs(self.env(env))
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // its own process group, so that a master and its workers die together
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn uwsgi");
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (tx, rx) = mpsc::channel::<Option<String>>();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Some(line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(None);
            });
        }
        drop(tx);
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        let mut block: Option<Vec<(String, String)>> = None;
        let mut in_block = false;
        let mut closed = 0;
        let mut done = false;
        while !done && closed < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some(line)) => {
                    if line == ";uWSGI instance configuration" {
                        in_block = true;
                        block = Some(Vec::new());
                    } else if in_block && line == ";end of configuration" {
                        done = true;
                    } else if in_block && line == "[uwsgi]" {
                    } else if in_block {
                        let (k, v) = line.split_once(" = ").unwrap_or((line.as_str(), ""));
                        block.as_mut().unwrap().push((k.to_string(), v.to_string()));
                    }
                    all.push(line);
                }
                Ok(None) => closed += 1,
                Err(_) => break,
            }
        }
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        match (done, block) {
            (true, Some(b)) => Real::Shown(b),
            _ => Real::Failed(all.join("\n")),
        }
    }

    pub fn ours(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Config, Error> {
        let mut full = vec!["--show-config".to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        uwsgi_config::parse(&full, &table(), &self.context(env))
    }
}

/// The crate's entries as `--show-config` prints them, without the
/// `--show-config` flag itself (the harness adds it to get the listing).
pub fn shown(config: &Config) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = config
        .entries
        .iter()
        .map(|e| {
            (
                e.key.clone(),
                e.value.clone().unwrap_or_else(|| "true".into()),
            )
        })
        .collect();
    let pos = out
        .iter()
        .position(|(k, v)| k == "show-config" && v == "true");
    out.remove(pos.expect("the --show-config entry"));
    out
}

fn strip_show_config(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    let pos = v
        .iter()
        .position(|(k, v)| k == "show-config" && v == "true");
    v.remove(pos.expect("uWSGI lists show-config = true"));
    v
}

/// Runs both and asserts they list the same options in the same order;
/// returns them (without `show-config`).
pub fn same(fx: &Fixture, args: &[&str], env: &[(&str, &str)]) -> (Vec<(String, String)>, Config) {
    let real = match fx.real(args, env) {
        Real::Shown(v) => strip_show_config(v),
        Real::Failed(out) => panic!("uWSGI did not show its config for {args:?}:\n{out}"),
    };
    let config = fx
        .ours(args, env)
        .unwrap_or_else(|e| panic!("crate failed on {args:?}: {e}\nuWSGI gave {real:#?}"));
    let ours = shown(&config);
    assert_eq!(
        ours, real,
        "crate (left) and uWSGI (right) differ for {args:?}"
    );
    (ours, config)
}

/// Asserts that uWSGI stops with a message containing `uwsgi_says`, and
/// that the crate returns an error; gives the error back.
pub fn both_fail(fx: &Fixture, args: &[&str], env: &[(&str, &str)], uwsgi_says: &str) -> Error {
    match fx.real(args, env) {
        Real::Failed(out) => assert!(
            out.contains(uwsgi_says),
            "uWSGI output lacks {uwsgi_says:?}:\n{out}"
        ),
        Real::Shown(v) => panic!("uWSGI accepted {args:?}: {v:?}"),
    }
    match fx.ours(args, env) {
        Err(e) => e,
        Ok(c) => panic!("crate accepted {args:?}: {:?}", c.entries),
    }
}

pub fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}
