//! The emperor's own process, set up in uWSGI's order: environment and
//! umask, the log file and daemonizing, pidfiles, then (after the sockets
//! are bound) the privilege drop with the capabilities to keep, and what
//! comes after it (logto2, pidfile2, chdir).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Group, Uid, User};

use crate::cli::Cli;

/// `--env KEY=VALUE` and `--unenv KEY`, applied in that order (uWSGI
/// applies each as it parses it; imperium applies them before anything
/// starts, so the emperor and every vassal see them), and `--umask`.
pub fn apply_env_and_umask(cli: &Cli) -> Result<()> {
    for kv in &cli.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?}: expected KEY=VALUE");
        };
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            bail!("--env {kv:?}: not a valid variable");
        }
        // single-threaded here: nothing else reads the environment yet
        std::env::set_var(k, v);
    }
    for k in &cli.unenv {
        if k.is_empty() || k.contains(['=', '\0']) {
            bail!("--unenv {k:?}: not a variable name");
        }
        std::env::remove_var(k);
    }
    if let Some(m) = cli.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m as _));
    }
    Ok(())
}

/// Where the emperor's output goes, and when the file is opened.
#[derive(Debug, Clone)]
pub struct LogFile {
    /// The file.
    pub path: PathBuf,
    /// Opened after the privilege drop (`logto2`, `daemonize2`).
    pub after_drop: bool,
}

/// The log file the options ask for: `daemonize`/`daemonize2` win over
/// `logto`/`logto2`, as in uWSGI (daemonizing sets the log file).
pub fn log_file(cli: &Cli) -> Option<LogFile> {
    let pick = |p: &Option<PathBuf>, after_drop| p.clone().map(|path| LogFile { path, after_drop });
    pick(&cli.daemonize, false)
        .or_else(|| pick(&cli.daemonize2, true))
        .or_else(|| pick(&cli.logto, false))
        .or_else(|| pick(&cli.logto2, true))
}

/// Opens `path` for appending (truncated with `--log-truncate`) and puts it
/// on fds 1 and 2, which vassals inherit.
pub fn redirect_output(path: &Path, truncate: bool) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .append(!truncate)
        .truncate(truncate)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    nix::unistd::dup2_stdout(&f).context("cannot redirect stdout to the log file")?;
    nix::unistd::dup2_stderr(&f).context("cannot redirect stderr to the log file")?;
    Ok(f)
}

/// Reopens the log file (`--log-reopen` at SIGHUP): a file that logrotate
/// moved away is created again.
pub fn reopen_output(path: &Path) -> Result<()> {
    redirect_output(path, false).map(drop)
}

/// `--daemonize`: detach from the terminal (fork, the parent exits 0, the
/// child starts a new session) with stdin on /dev/null. The log file is
/// opened by the caller, before or after the privilege drop.
pub fn daemonize() -> Result<()> {
    emperor::spawn::daemonize().context("cannot daemonize")?;
    let null = File::open("/dev/null").context("cannot open /dev/null")?;
    nix::unistd::dup2_stdin(&null).context("cannot put /dev/null on stdin")?;
    Ok(())
}

/// Writes `pid\n` to a pidfile.
pub fn write_pidfile(path: &Path, what: &str) -> Result<()> {
    std::fs::write(path, format!("{}\n", std::process::id()))
        .with_context(|| format!("{what} {}", path.display()))
}

/// The user and groups `--uid`/`--gid` ask for, resolved before anything
/// is dropped (a name that does not exist is a start-up error, as in
/// uWSGI).
#[derive(Debug, Clone)]
pub struct Drop {
    uid: Option<(Uid, Option<String>)>,
    gid: Option<Gid>,
    add_gids: Vec<Gid>,
    initgroups: bool,
    caps: Vec<caps::Capability>,
}

fn resolve_user(v: &str) -> Result<(Uid, Option<String>)> {
    if let Ok(n) = v.parse::<u32>() {
        let name = User::from_uid(Uid::from_raw(n))
            .ok()
            .flatten()
            .map(|u| u.name);
        return Ok((Uid::from_raw(n), name));
    }
    match User::from_name(v) {
        Ok(Some(u)) => Ok((u.uid, Some(u.name))),
        Ok(None) => bail!("--uid {v}: user {v} not found"),
        Err(e) => bail!("--uid {v}: cannot look the user up: {e}"),
    }
}

fn resolve_group(opt: &str, v: &str) -> Result<Gid> {
    if let Ok(n) = v.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match Group::from_name(v) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => bail!("--{opt} {v}: group {v} not found"),
        Err(e) => bail!("--{opt} {v}: cannot look the group up: {e}"),
    }
}

/// Parses a comma-separated capability list (`setgid,setuid`,
/// `CAP_NET_BIND_SERVICE`, `net_bind_service`), as `--cap` and
/// `--emperor-cap` take them.
pub fn parse_caps(opt: &str, values: &[String]) -> Result<Vec<caps::Capability>> {
    let mut out = Vec::new();
    for v in values {
        for name in v.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let cap: caps::Capability = full.parse().map_err(|_| {
                anyhow::anyhow!("--{opt} {v}: unknown capability {name:?} (e.g. setuid, setgid, net_bind_service)")
            })?;
            if !out.contains(&cap) {
                out.push(cap);
            }
        }
    }
    Ok(out)
}

impl Drop {
    /// Resolves the options; `None` when there is nothing to drop.
    pub fn from_cli(cli: &Cli) -> Result<Option<Drop>> {
        if cli.uid.is_none() && cli.gid.is_none() {
            if !cli.cap.is_empty() {
                tracing::info!("--cap without --uid: the emperor keeps all its capabilities");
            }
            return Ok(None);
        }
        let uid = cli.uid.as_deref().map(resolve_user).transpose()?;
        let gid = cli
            .gid
            .as_deref()
            .map(|g| resolve_group("gid", g))
            .transpose()?;
        let add_gids = cli
            .add_gid
            .iter()
            .map(|g| resolve_group("add-gid", g))
            .collect::<Result<_>>()?;
        Ok(Some(Drop {
            uid,
            gid,
            add_gids,
            initgroups: !cli.no_initgroups,
            caps: parse_caps("cap", &cli.cap)?,
        }))
    }

    /// The uid and gid the emperor will run as.
    pub fn target(&self) -> (Option<u32>, Option<u32>) {
        (
            self.uid.as_ref().map(|(u, _)| u.as_raw()),
            self.gid.map(|g| g.as_raw()),
        )
    }

    /// Drops the emperor's privileges, uWSGI's way: setgid, then the
    /// supplementary groups (the user's own with initgroups, or none, plus
    /// every --add-gid), then setuid; the --cap capabilities are kept
    /// across it (PR_SET_KEEPCAPS) and made effective again. Nothing is
    /// done when the emperor already runs as the target user and is not
    /// root (a re-exec after --touch-reload).
    pub fn apply(&self) -> Result<()> {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            let same_uid = self.uid.as_ref().is_none_or(|(u, _)| *u == euid);
            let same_gid = self.gid.is_none_or(|g| g == nix::unistd::getegid());
            if same_uid && same_gid {
                return Ok(());
            }
        }
        let keep_caps =
            !self.caps.is_empty() && self.uid.as_ref().is_some_and(|(u, _)| !u.is_root());
        if let Some(gid) = self.gid {
            tracing::info!("setgid() to {gid}");
            nix::unistd::setgid(gid).with_context(|| format!("setgid({gid})"))?;
            let user = self.uid.as_ref().filter(|(u, _)| !u.is_root());
            match user {
                Some((uid, name)) if self.initgroups => {
                    let name = name.clone().unwrap_or_else(|| uid.to_string());
                    let c = CString::new(name.clone()).context("user name with a NUL byte")?;
                    nix::unistd::initgroups(&c, gid)
                        .with_context(|| format!("initgroups({name}, {gid})"))?;
                }
                _ => nix::unistd::setgroups(&[]).context("setgroups()")?,
            }
            if !self.add_gids.is_empty() {
                let mut groups = nix::unistd::getgroups().context("getgroups()")?;
                groups.extend(self.add_gids.iter().copied());
                nix::unistd::setgroups(&groups).context("setgroups() with --add-gid")?;
            }
        }
        if let Some((uid, _)) = &self.uid {
            if keep_caps {
                nix::sys::prctl::set_keepcaps(true).context("prctl(PR_SET_KEEPCAPS)")?;
            }
            tracing::info!("setuid() to {uid}");
            nix::unistd::setuid(*uid).with_context(|| format!("setuid({uid})"))?;
        }
        if keep_caps {
            let set: caps::CapsHashSet = self.caps.iter().copied().collect();
            caps::set(None, caps::CapSet::Permitted, &set)
                .context("cannot keep the --cap capabilities (permitted set)")?;
            caps::set(None, caps::CapSet::Effective, &set)
                .context("cannot keep the --cap capabilities (effective set)")?;
            nix::sys::prctl::set_keepcaps(false).context("prctl(PR_SET_KEEPCAPS)")?;
            let names: Vec<String> = self
                .caps
                .iter()
                .map(|c| c.to_string().to_lowercase())
                .collect();
            tracing::info!("kept capabilities across the drop: {}", names.join(", "));
        }
        if nix::unistd::getuid().is_root() {
            tracing::warn!(
                "*** WARNING: you are running imperium as root !!! (use the --uid option) ***"
            );
        }
        Ok(())
    }
}

/// Gives the log file to the --uid/--gid user (`--logfile-chown`).
pub fn chown_log(f: &File, drop: Option<&Drop>) -> Result<()> {
    let (uid, gid) = drop.map(Drop::target).unwrap_or((None, None));
    nix::unistd::fchown(f, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
        .context("--logfile-chown: fchown() of the log file")
}
