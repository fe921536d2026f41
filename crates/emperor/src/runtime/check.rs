//! `--emperor-reload-mode checked`: runs the checks of a changed config
//! (`--emperor-reload-check COMMAND`, then the vassal binary's throwaway
//! start in `crate::sandbox`) off the loop, and reports the result.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::argv::{build_argv, LaunchOptions};
use crate::name::VassalName;
use crate::sandbox::{SandboxArgs, APP_LOADED_HOOK, EXIT_SETUP, EXIT_TIMEOUT, SANDBOX_ARG};
use crate::spec::{ConfigSource, VassalSpec};

/// How changed configs are checked before a reload
/// (`--emperor-reload-mode checked`, docs/reloads.md).
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Load the new config with the vassal binary in a sandbox
    /// (`--emperor-reload-check-no-sandbox` turns it off).
    pub sandbox: bool,
    /// `--emperor-reload-check COMMAND`: run with `sh -c` first; `{name}`
    /// and `{config}` are replaced by the vassal's name and the new
    /// config's path.
    pub command: Option<String>,
    /// `--emperor-reload-check-timeout`: how long each check may take.
    pub timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            sandbox: true,
            command: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The most output of one check that is kept (its end).
const OUTPUT_KEEP: usize = 16 << 10;
/// The most lines of it that a rejection quotes.
const QUOTED_LINES: usize = 8;

/// One check, ready to run off the loop.
pub(super) struct CheckJob {
    pub(super) name: VassalName,
    opts: CheckOptions,
    workdir: PathBuf,
    /// The new config text (an inline config).
    inline: Option<Arc<str>>,
    /// The path of the new config (a file), or its URL.
    config: OsString,
    /// The sandbox's arguments.
    sandbox: SandboxArgs,
    env: Vec<(OsString, OsString)>,
}

impl CheckJob {
    /// The check of `spec` as `launch` would start it, in `workdir`.
    pub(super) fn new(
        spec: &VassalSpec,
        launch: &LaunchOptions,
        magic_exec_ok: bool,
        base_env: &[(OsString, OsString)],
        workdir: PathBuf,
        opts: &CheckOptions,
    ) -> CheckJob {
        let name = spec.name.as_str();
        let (inline, in_sandbox, config) = match &spec.config {
            ConfigSource::Inline(t) => {
                let at = PathBuf::from("/tmp/imperium-check").join(name);
                (Some(t.clone()), Some(at.clone()), ConfigSource::File(at))
            }
            c => (None, None, c.clone()),
        };
        let mut argv = build_argv(name, &config, launch, magic_exec_ok);
        for a in ["--need-app", "--hook-post-app", APP_LOADED_HOOK] {
            argv.push(a.into());
        }
        let config_ref = match &spec.config {
            ConfigSource::File(p) => workdir.join(p).into_os_string(),
            ConfigSource::Url(u) => u.into(),
            // written to a file of its own for the command
            ConfigSource::Inline(_) => OsString::new(),
        };
        CheckJob {
            name: spec.name.clone(),
            opts: opts.clone(),
            sandbox: SandboxArgs {
                timeout: opts.timeout,
                cwd: workdir.clone(),
                inline: in_sandbox,
                owner: spec.owner.map(|o| (o.uid, o.gid)),
                argv,
            },
            workdir,
            inline,
            config: config_ref,
            env: crate::argv::check_env(base_env),
        }
    }

    /// Runs the command, then the throwaway start: `Ok` when both pass,
    /// else why not, with the last lines the failing one wrote.
    pub(super) async fn run(self) -> Result<(), String> {
        if let Some(cmd) = &self.opts.command {
            self.run_command(cmd).await?;
        }
        if self.opts.sandbox {
            let mut c = tokio::process::Command::new("/proc/self/exe");
            c.arg(SANDBOX_ARG)
                .args(self.sandbox.to_args())
                .env_clear()
                .envs(self.env.iter().map(|(k, v)| (k, v)));
            let stdin = self.inline.as_ref().map(|t| t.as_bytes().to_vec());
            // the sandbox keeps the time itself; this is a backstop
            let limit = self.opts.timeout + Duration::from_secs(5);
            let (code, out) = run_bounded(c, stdin, limit).await?;
            return match code {
                Some(0) => Ok(()),
                Some(EXIT_TIMEOUT) => Err(format!(
                    "its app was not loaded within {} s (--emperor-reload-check-timeout){}",
                    self.opts.timeout.as_secs_f64(),
                    quote(&out)
                )),
                Some(EXIT_SETUP) => Err(format!(
                    "the check's sandbox could not be set up{}",
                    quote(&out)
                )),
                Some(c) => Err(format!(
                    "a throwaway start of the new config exited with code {c}{}",
                    quote(&out)
                )),
                None => Err(format!(
                    "a throwaway start of the new config was still running after {} s",
                    limit.as_secs()
                )),
            };
        }
        Ok(())
    }

    async fn run_command(&self, cmd: &str) -> Result<(), String> {
        // an inline config is written to a file of its own for the command
        let tmp = match &self.inline {
            Some(text) => {
                let dir = std::env::temp_dir().join(format!(
                    "imperium-check-{}-{:x}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                let path = dir.join(self.name.as_str());
                let failed = |e: std::io::Error| {
                    format!("cannot write the config for --emperor-reload-check: {e}")
                };
                tokio::fs::create_dir(&dir).await.map_err(failed)?;
                // removed even when the check is given up (a newer change)
                let guard = RemoveOnDrop(dir);
                tokio::fs::write(&path, text.as_bytes())
                    .await
                    .map_err(failed)?;
                Some((guard, path))
            }
            None => None,
        };
        let config = match &tmp {
            Some((_, p)) => p.display().to_string(),
            None => self.config.to_string_lossy().into_owned(),
        };
        let line = cmd
            .replace("{name}", self.name.as_str())
            .replace("{config}", &config);
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(&line)
            .current_dir(existing(&self.workdir))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("IMPERIUM_VASSAL", self.name.as_str())
            .env("IMPERIUM_CONFIG", &config);
        let r = run_bounded(c, None, self.opts.timeout).await;
        drop(tmp);
        match r? {
            (Some(0), _) => Ok(()),
            (Some(code), out) => Err(format!(
                "--emperor-reload-check `{line}` exited with code {code}{}",
                quote(&out)
            )),
            (None, out) => Err(format!(
                "--emperor-reload-check `{line}` did not end within {} s{}",
                self.opts.timeout.as_secs_f64(),
                quote(&out)
            )),
        }
    }
}

/// A directory removed with what it holds when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `dir` when it exists, else `/` (a check must not fail on its cwd).
fn existing(dir: &Path) -> &Path {
    if dir.is_dir() {
        dir
    } else {
        Path::new("/")
    }
}

/// The last lines of a check's output, to quote in a rejection.
fn quote(out: &str) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let from = lines.len().saturating_sub(QUOTED_LINES);
    format!("; its last lines: {}", lines[from..].join(" | "))
}

/// Runs `c` with `stdin` (or /dev/null) and its output piped, killing it
/// after `limit`: its exit code (`None`: killed at the limit; 128 + N for
/// a signal) and the end of what it wrote on stdout and stderr.
async fn run_bounded(
    mut c: tokio::process::Command,
    stdin: Option<Vec<u8>>,
    limit: Duration,
) -> Result<(Option<i32>, String), String> {
    use std::os::unix::process::ExitStatusExt;
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // a group of its own: whatever it started goes with it
    .process_group(0)
    .kill_on_drop(true);
    let mut child = c
        .spawn()
        .map_err(|e| format!("cannot run the check: {e}"))?;
    let group = child
        .id()
        .map(|p| nix::unistd::Pid::from_raw(p as i32))
        .ok_or("the check ended before it could be watched")?;
    let kill_group = move || {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = pipe.write_all(&text).await;
        });
    }
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let tails = async move {
        let (a, b) = tokio::join!(tail(out), tail(err));
        let mut s = String::from_utf8_lossy(&a).into_owned();
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&String::from_utf8_lossy(&b));
        s
    };
    // read while waiting: a check that fills its pipes would block; once
    // it exited, what it left in its group (holding its pipes) is killed
    let run = async {
        let wait = async {
            let st = child.wait().await;
            kill_group();
            st
        };
        tokio::join!(wait, tails)
    };
    let r = tokio::time::timeout(limit, run).await;
    kill_group();
    match r {
        Ok((Ok(st), out)) => Ok((
            Some(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))),
            out,
        )),
        Ok((Err(e), _)) => Err(format!("cannot wait for the check: {e}")),
        // its group is killed above
        Err(_) => Ok((None, String::new())),
    }
}

/// Reads `r` to its end, keeping the last [`OUTPUT_KEEP`] bytes.
async fn tail<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let Some(mut r) = r else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > OUTPUT_KEEP {
                    kept.drain(..kept.len() - OUTPUT_KEEP);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_last_lines() {
        assert_eq!(quote(""), "");
        let out: String = (1..=20).map(|i| format!("line {i}\n\n")).collect();
        let q = quote(&out);
        assert!(q.starts_with("; its last lines: line 13 | "), "{q}");
        assert!(q.ends_with("line 20"), "{q}");
    }

    #[tokio::test]
    async fn what_a_check_leaves_behind_neither_holds_it_up_nor_survives() {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c").arg("sleep 30 & echo started; exit 0");
        let t = std::time::Instant::now();
        let (code, out) = run_bounded(c, None, Duration::from_secs(20)).await.unwrap();
        assert_eq!(code, Some(0));
        assert!(out.contains("started"), "{out:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_command_is_bounded_in_time_and_output() {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg("yes flood | head -c 1000000; echo last >&2; exit 3");
        let (code, out) = run_bounded(c, None, Duration::from_secs(10)).await.unwrap();
        assert_eq!(code, Some(3));
        assert!(out.len() <= 2 * OUTPUT_KEEP + 1, "{}", out.len());
        assert!(out.ends_with("last\n"), "{out:?}");
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c").arg("sleep 30");
        let t = std::time::Instant::now();
        let (code, _) = run_bounded(c, None, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(code, None);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
