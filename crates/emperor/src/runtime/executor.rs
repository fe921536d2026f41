//! Carries out the reconciler's actions: spawns (after a start hook),
//! protocol bytes and config pushes, kills, on-demand sockets, stop hooks.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use futures::task::AtomicWaker;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::vassal::{to_tokio, vassal_task, LogFrom, VassalLink};
use super::{Report, VassalCmd};
use crate::argv::{build_argv, LaunchOptions};
use crate::events::ExitStatus;
use crate::health::{HealthCheck, HealthSettings};
use crate::logs::{Capture, LogHandle, LogLookup, LogMode, LogOptions};
use crate::name::VassalName;
use crate::ondemand::{OnDemandAddr, OnDemandOptions, OnDemandSocket};
use crate::own::OwnSettings;
use crate::reconciler::{Action, InstanceId, Reconciler};
use crate::spawn::{spawn_vassal, SpawnRequest, VassalProcess};
use crate::spec::{ConfigSource, Owner, VassalSpec};

/// Logs how a `--vassals-start-hook` or `--vassals-stop-hook` ended.
fn log_hook(
    which: &str,
    hook: &OsString,
    name: &VassalName,
    st: std::io::Result<std::process::ExitStatus>,
) {
    let hook = hook.to_string_lossy();
    match st {
        Ok(st) if st.success() => {
            tracing::info!(vassal = %name, "[emperor] vassals {which} hook {hook} for {name} exited with code 0")
        }
        Ok(st) => {
            tracing::warn!(vassal = %name, "[emperor] vassals {which} hook {hook} for {name} ended: {st}")
        }
        Err(e) => {
            tracing::error!(vassal = %name, "[emperor] cannot run the vassals {which} hook {hook} for {name}: {e}")
        }
    }
}

/// Whether a config sets uWSGI's `reuse-port` to true (`reuse-port = true`
/// in an ini, `reuse-port: true` in YAML, `<reuse-port>true</reuse-port>`
/// or a bare `<reuse-port/>` in XML, `"reuse-port": true` in JSON).
fn sets_reuse_port(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim().trim_start_matches('"');
        let Some(rest) = l.strip_prefix("reuse-port") else {
            return l.starts_with("<reuse-port/>")
                || l.starts_with("<reuse-port>true</")
                || l.starts_with("<reuse-port>1</");
        };
        let v = rest
            .trim_start_matches('"')
            .trim_start()
            .trim_start_matches(['=', ':'])
            .trim()
            .trim_end_matches(',')
            .trim_matches('"');
        matches!(v, "" | "true" | "1" | "yes" | "on")
    })
}

/// A spawn that could not be prepared: deferred with a backoff when a
/// resource ran out (EMFILE, ENFILE, EAGAIN, ENOMEM), failed otherwise.
fn setup_failed(
    rec: &mut Reconciler,
    instance: InstanceId,
    what: &str,
    e: &std::io::Error,
) -> Vec<Action> {
    let what = format!("{what}: {e}");
    let now = std::time::Instant::now();
    if crate::spawn::is_transient_errno(e) {
        rec.spawn_deferred(instance, &what, now)
    } else {
        rec.spawn_failed(instance, &what, now)
    }
}

pub(super) struct Executor {
    pub(super) launch: LaunchOptions,
    /// The emperor's environment, shared by every spawn request.
    pub(super) base_env: Arc<[(OsString, OsString)]>,
    pub(super) cwd: PathBuf,
    pub(super) handles: HashMap<InstanceId, Arc<VassalLink>>,
    pub(super) reports: (
        mpsc::UnboundedSender<Report>,
        mpsc::UnboundedReceiver<Report>,
    ),
    /// The on-demand sockets, kept for the vassal's whole life in the table.
    pub(super) listeners: HashMap<VassalName, Listener>,
    pub(super) on_demand: OnDemandOptions,
    /// `UWSGI_BROODLORD_NUM`: counts zerg starts.
    pub(super) broodlord_num: u64,
    /// `--vassals-stop-hook` commands still running.
    pub(super) stop_hooks: Vec<tokio::task::JoinHandle<()>>,
    /// `--vassal-logs`.
    pub(super) log_opts: LogOptions,
    /// The output pipes and their writer (`prefix`, `dir:`).
    pub(super) capture: Option<Capture>,
    /// The output pipe of each vassal name, while its table entry (which
    /// owns it) exists.
    pub(super) logs: HashMap<VassalName, Weak<LogHandle>>,
    /// A cgroup per vassal process (`--vassal-cgroup`).
    pub(super) cgroups: Option<crate::cgroup::Cgroups>,
    /// Limits per vassal process (`--vassal-memory-max`, `-cpu-max`,
    /// `-pids-max`).
    pub(super) limits: Option<crate::cgroup::limits::LimitGroups>,
    /// The emperor-wide health check settings (`--vassal-health`...).
    pub(super) health: HealthSettings,
    /// The health probe of each process that has a check.
    pub(super) probes: HashMap<InstanceId, (tokio::task::AbortHandle, Arc<tokio::sync::Notify>)>,
    /// How changed configs are checked (`--emperor-reload-mode checked`).
    pub(super) check: super::CheckOptions,
    /// The check running for each vassal, by change (a newer change
    /// replaces it).
    pub(super) checks: HashMap<VassalName, (crate::spec::ChangeKey, tokio::task::AbortHandle)>,
}

/// One on-demand socket and its watch.
pub(super) struct Listener {
    address: String,
    addr: OnDemandAddr,
    sock: Arc<OnDemandSocket>,
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl Listener {
    /// The address it is bound to, as the source gave it.
    pub(super) fn address(&self) -> &str {
        &self.address
    }

    /// Its descriptor.
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.fd()
    }

    /// Its descriptor's number.
    pub(super) fn raw_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.sock.fd())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
    }
}

/// At most this many vassal reports are handled between two looks at the
/// other inputs (commands, monitors, deadlines).
pub(super) const REPORT_BATCH: usize = 256;

impl Executor {
    /// Hands one report from a vassal task to the reconciler.
    pub(super) fn report(&mut self, rec: &mut Reconciler, r: Report) -> Vec<Action> {
        let now = Instant::now().into_std();
        match r {
            Report::Message(i, m) => rec.vassal_message(i, m, now),
            Report::PipeClosed(i) => rec.pipe_closed(i, now),
            Report::Exited(i, st) => {
                if let Some((p, _)) = self.probes.remove(&i) {
                    p.abort();
                }
                if let Some(link) = self.handles.remove(&i) {
                    if let Some((log, since)) = &link.log {
                        rec.last_words(i, log.final_words(*since));
                    }
                    // a memory limit may be the vassal's own ([imperium]):
                    // its memory group, if any, has the count
                    if let Some(oom) = self
                        .limits
                        .as_ref()
                        .and_then(|l| l.oom_killed(link.cgroup.as_deref(), &link.v1))
                    {
                        rec.note_oom(i, oom);
                    }
                    if let Some(g) = &link.cgroup {
                        let left = crate::cgroup::Cgroups::kill_leftovers_of(g);
                        if left > 0 {
                            tracing::info!(vassal = %link.name, left, "[emperor] killed {left} process(es) vassal {} left behind in its cgroup", link.name);
                        }
                    }
                    let actions = rec.exited(i, st, now);
                    if let (Some(c), Some(g)) = (&self.cgroups, link.cgroup.clone()) {
                        let last = rec.vassal(link.name.as_str()).is_none();
                        c.sweep(g, link.v1.clone(), last);
                    }
                    return actions;
                }
                rec.exited(i, st, now)
            }
            Report::Connection(name) => rec.on_demand_connection(&name, now),
            Report::Health(i, r) => rec.health_result(i, r, now),
            Report::CheckDone(name, key, r, took) => {
                // a newer check of it may run: only this one is done
                if self.checks.get(&name).is_some_and(|(k, _)| *k == key) {
                    self.checks.remove(&name);
                }
                rec.check_done(&name, key, r, took, now)
            }
            Report::Flood(i, bytes) => rec.flooded(
                i,
                &format!(
                    "flooded its emperor socket ({bytes} bytes within {} s, the limit is {} KiB)",
                    super::vassal::FLOOD_WINDOW.as_secs(),
                    super::vassal::FLOOD_LIMIT / 1024
                ),
            ),
            Report::StartHookDone(i, spec) => match rec.instance_stopping(i) {
                // stopped while its hook ran: it ends before it began
                Some(true) => rec.exited(i, ExitStatus::Code(0), now),
                Some(false) => self.spawn_now(rec, i, *spec),
                None => Vec::new(),
            },
        }
    }

    pub(super) fn execute(&mut self, rec: &mut Reconciler, actions: Vec<Action>) {
        self.prepare_groups(&actions);
        let mut work: VecDeque<Action> = actions.into();
        while let Some(a) = work.pop_front() {
            let more = match a {
                Action::Spawn { instance, spec } => {
                    let name = spec.name.clone();
                    let more = self.spawn(rec, instance, spec);
                    self.discard_group(&name, instance);
                    more
                }
                Action::Send { instance, byte } => {
                    if byte == crate::protocol::MSG_RELOAD {
                        // the reloaded app is probed soon, until it passes
                        if let Some((_, again)) = self.probes.get(&instance) {
                            again.notify_one();
                        }
                    }
                    self.send(instance, VassalCmd::Byte(byte));
                    Vec::new()
                }
                Action::PushConfig { instance, config } => {
                    self.send(instance, VassalCmd::Config(config));
                    Vec::new()
                }
                Action::Kill { instance } => {
                    if let Some(h) = self.handles.get(&instance) {
                        h.kill();
                        // and everything it started, wherever it went
                        if let Some(g) = &h.cgroup {
                            if let Err(e) = crate::cgroup::Cgroups::kill(g) {
                                tracing::error!(vassal = %h.name, error = %e, "[emperor] cannot kill the cgroup {}: {e}", g.display());
                            }
                        }
                    }
                    Vec::new()
                }
                Action::Listen {
                    name,
                    address,
                    workdir,
                } => self.listen(rec, name, address, workdir),
                Action::Unlisten { name } => {
                    self.listeners.remove(&name);
                    Vec::new()
                }
                Action::StopHook { name } => {
                    self.run_stop_hook(&name);
                    Vec::new()
                }
                Action::Check { spec } => {
                    self.start_check(&spec);
                    Vec::new()
                }
            };
            work.extend(more);
        }
    }

    /// Binds (or keeps) the on-demand socket of `name` and watches it for
    /// one pending connection.
    fn listen(
        &mut self,
        rec: &mut Reconciler,
        name: VassalName,
        address: String,
        workdir: Option<PathBuf>,
    ) -> Vec<Action> {
        let dir = workdir.unwrap_or_else(|| self.cwd.clone());
        let addr = match OnDemandAddr::parse(&address, &dir) {
            Ok(a) => a,
            Err(e) => {
                self.listeners.remove(&name);
                return rec.listen_failed(&name, &e.to_string());
            }
        };
        let keep = self
            .listeners
            .get(&name)
            .is_some_and(|l| l.address == address && l.addr == addr);
        if !keep {
            // close the old socket first: the new one may take its path
            self.listeners.remove(&name);
            match OnDemandSocket::bind(&addr, &self.on_demand) {
                Ok(sock) => {
                    self.listeners.insert(
                        name.clone(),
                        Listener {
                            address,
                            addr,
                            sock: Arc::new(sock),
                            watch: None,
                        },
                    );
                }
                Err(e) => return rec.listen_failed(&name, &e.to_string()),
            }
        }
        let Some(l) = self.listeners.get_mut(&name) else {
            return Vec::new();
        };
        if l.watch.as_ref().is_some_and(|w| !w.is_finished()) {
            return Vec::new();
        }
        let sock = l.sock.clone();
        let reports = self.reports.0.clone();
        l.watch = Some(tokio::spawn(async move {
            match sock.wait_pending().await {
                Ok(()) => {
                    let _ = reports.send(Report::Connection(name));
                }
                Err(e) => {
                    tracing::error!(vassal = %name, error = %e, "cannot watch the on-demand socket");
                }
            }
        }));
        Vec::new()
    }

    /// Holds again the on-demand socket of `name` that the emperor's
    /// previous image held (a hot upgrade); a vassal waiting for a
    /// connection is watched again.
    pub(super) fn adopt_listener(
        &mut self,
        rec: &mut Reconciler,
        name: VassalName,
        address: &str,
        fd: std::os::fd::OwnedFd,
    ) -> Result<(), String> {
        let v = rec.vassal(name.as_str()).ok_or("not in the table")?;
        let waiting = matches!(v.phase, crate::reconciler::Phase::OnDemand);
        let workdir = v.desired.as_ref().and_then(|d| d.workdir.clone());
        let dir = workdir.as_ref().unwrap_or(&self.cwd);
        let addr = OnDemandAddr::parse(address, dir).map_err(|e| e.to_string())?;
        let sock = OnDemandSocket::adopt(fd, &addr).map_err(|e| e.to_string())?;
        self.listeners.insert(
            name.clone(),
            Listener {
                address: address.to_string(),
                addr,
                sock: Arc::new(sock),
                watch: None,
            },
        );
        if waiting {
            let actions = self.listen(rec, name, address.to_string(), workdir);
            self.execute(rec, actions);
        }
        Ok(())
    }

    /// Starts the health probe of a process the emperor's previous image
    /// watched (a hot upgrade), when its vassal has a check.
    pub(super) fn restart_probe(
        &mut self,
        rec: &mut Reconciler,
        instance: InstanceId,
        spec: &VassalSpec,
    ) {
        match self.health_of(spec) {
            Ok((_, Some(check))) => self.start_probe(rec, instance, spec, check),
            Ok((_, None)) => {}
            Err(e) => tracing::warn!(vassal = %spec.name, "[emperor] {}: {e}", spec.name),
        }
    }

    /// The limits and the health check of `spec` (its `[imperium]`
    /// section over the emperor-wide settings).
    fn health_of(
        &self,
        spec: &VassalSpec,
    ) -> Result<(crate::cgroup::limits::Limits, Option<HealthCheck>), String> {
        self.own_settings(spec).and_then(|own| {
            let health = own.health.over(&self.health);
            let check = health
                .resolve(spec.name.as_str())
                .map_err(|e| format!("its health check: {e}"))?;
            Ok((own.limits, check))
        })
    }

    /// The vassal's own settings: its `[imperium]` section (an ini config,
    /// from its file or inline; other formats carry none), under the
    /// limits its source's record sets, with limits refused where vassals
    /// get no cgroup.
    pub(super) fn own_settings(&self, spec: &VassalSpec) -> Result<OwnSettings, String> {
        let mut own = self.own_section(spec)?;
        if let Some(record) = &spec.limits {
            if self.limits.is_none() {
                return Err("its source's record sets limits, and vassals get no cgroup here (--vassal-cgroup)".into());
            }
            own.limits = record.over(own.limits);
        }
        Ok(own)
    }

    /// The vassal's own `[imperium]` section.
    fn own_section(&self, spec: &VassalSpec) -> Result<OwnSettings, String> {
        // the config's format follows the vassal's name (uWSGI's rule)
        if !spec.name.as_str().ends_with(".ini") {
            return Ok(OwnSettings::default());
        }
        let text = match &spec.config {
            ConfigSource::Inline(t) => t.to_string(),
            ConfigSource::File(p) => {
                let full = spec.workdir.as_deref().unwrap_or(&self.cwd).join(p);
                match std::fs::metadata(&full) {
                    // a config this large is refused by the monitors anyway
                    Ok(m) if m.len() > 1 << 20 => return Ok(OwnSettings::default()),
                    Ok(_) => std::fs::read_to_string(&full).unwrap_or_default(),
                    Err(_) => return Ok(OwnSettings::default()),
                }
            }
            ConfigSource::Url(_) => return Ok(OwnSettings::default()),
        };
        if !text.contains("[imperium]") {
            return Ok(OwnSettings::default());
        }
        let own = OwnSettings::from_ini(&text).map_err(|e| format!("its config: {e}"))?;
        if own.limits.any() && self.limits.is_none() {
            return Err("its config: its [imperium] section sets limits, and vassals get no cgroup here (--vassal-cgroup)".into());
        }
        Ok(own)
    }

    /// Whether a second instance of `spec` can run beside the first one
    /// without refusing clients (`--emperor-reload-mode swap`): it takes
    /// the emperor's on-demand socket (fd 0, shared by both), or its config
    /// sets `reuse-port` (both bind the same addresses).
    fn can_swap(&self, spec: &VassalSpec) -> Result<(), String> {
        if spec.socket.is_some() {
            return Ok(());
        }
        let text = match &spec.config {
            ConfigSource::Inline(t) => t.to_string(),
            ConfigSource::File(p) => {
                let full = spec.workdir.as_deref().unwrap_or(&self.cwd).join(p);
                std::fs::read_to_string(&full).unwrap_or_default()
            }
            ConfigSource::Url(_) => String::new(),
        };
        if sets_reuse_port(&text) {
            return Ok(());
        }
        Err("swap: this vassal cannot run twice at once: it has no on-demand socket and its config does not set reuse-port = true (docs/reloads.md); the change is not applied (imperium ctl reload NAME --force reloads it in place)".into())
    }

    /// Where `imperium ctl logs NAME` reads from.
    pub(super) fn log_lookup(&self, rec: &Reconciler, name: &str) -> LogLookup {
        if let Some(why) = self.log_opts.not_captured() {
            return LogLookup::NotCaptured(why);
        }
        match rec.vassal(name) {
            None => LogLookup::NoSuchVassal,
            Some(v) => match &v.log {
                Some(l) => LogLookup::Captured(l.0.clone()),
                None => LogLookup::NotStarted,
            },
        }
    }

    /// `imperium ctl logs --reopen`.
    pub(super) fn reopen_logs(&self) {
        match &self.capture {
            Some(c) => c.reopen(),
            None => tracing::info!(
                "[emperor] vassal logs: nothing to reopen (--vassal-logs captures nothing)"
            ),
        }
    }

    /// What goes on the fds 1 and 2 of a new process of `spec`: its
    /// output pipe (made on its first start; a zerg writes into its base
    /// vassal's), with the sequence number of the first line the process
    /// can write, or a journald stream; `None` inherits the emperor's.
    fn output_for(
        &mut self,
        rec: &mut Reconciler,
        instance: InstanceId,
        spec: &VassalSpec,
        zerg_base: Option<&str>,
    ) -> std::io::Result<Option<(std::os::fd::OwnedFd, Option<LogFrom>)>> {
        if let LogMode::Journal(socket) = &self.log_opts.mode {
            let id = zerg_base.unwrap_or(spec.name.as_str());
            return crate::logs::journal::stream(socket, id).map(|fd| Some((fd, None)));
        }
        let Some(capture) = &self.capture else {
            return Ok(None);
        };
        let key = match zerg_base {
            Some(b) => VassalName::derived(b.to_string()),
            None => spec.name.clone(),
        };
        let handle = match self.logs.get(&key).and_then(Weak::upgrade) {
            Some(h) => h,
            None => {
                let h = capture.open(&key)?;
                self.logs.retain(|_, w| w.strong_count() > 0);
                self.logs.insert(key, Arc::downgrade(&h));
                h
            }
        };
        let fd = handle.0.writer(spec.owner)?;
        let log = (handle.0.clone(), handle.0.next_seq());
        rec.attach_log(instance, handle);
        Ok(Some((fd, Some(log))))
    }

    fn send(&self, instance: InstanceId, cmd: VassalCmd) {
        if let Some(h) = self.handles.get(&instance) {
            h.send(cmd);
        }
    }

    /// A vassal that cannot be supervised (not expected on Linux) is not
    /// left running unwatched: it is killed, reaped and reported dead.
    fn abandon(&self, instance: InstanceId, name: &VassalName, child: &VassalProcess, what: &str) {
        tracing::error!(vassal = %name, "{what}; killing it");
        let _ = child.kill();
        let st = child.wait_blocking().unwrap_or(ExitStatus::Code(-1));
        let _ = self.reports.0.send(Report::Exited(instance, st));
    }

    fn magic_exec_ok(&self, spec: &VassalSpec) -> bool {
        let ConfigSource::File(path) = &spec.config else {
            return false;
        };
        if !self.launch.magic_exec {
            return false;
        }
        let full = spec.workdir.as_deref().unwrap_or(&self.cwd).join(path);
        nix::unistd::access(
            &full,
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok()
    }

    /// The supplementary groups of a tyrant vassal: the owner's groups
    /// with `--emperor-tyrant-initgroups`, none otherwise.
    fn groups(&self, owner: Owner) -> Option<Vec<u32>> {
        use nix::unistd::{getgrouplist, Gid, Uid, User};
        if !self.launch.tyrant_initgroups {
            return None;
        }
        let user = User::from_uid(Uid::from_raw(owner.uid)).ok().flatten();
        let groups = user.and_then(|u| {
            let name = std::ffi::CString::new(u.name).ok()?;
            getgrouplist(&name, Gid::from_raw(owner.gid)).ok()
        });
        Some(match groups {
            Some(g) => g.into_iter().map(|g| g.as_raw()).collect(),
            // no such user: only its primary group, as initgroups("<uid>") does
            None => vec![owner.gid],
        })
    }

    /// A hook command (`HOOK NAME`, no shell, stdin on /dev/null) with the
    /// emperor's environment and `UWSGI_VASSALS_DIR` (the directory of a
    /// file vassal's config, else the emperor's directory), as uWSGI runs
    /// its vassal hooks.
    fn hook_command(
        &self,
        hook: &OsString,
        spec_name: &str,
        config: Option<(&ConfigSource, Option<&Path>)>,
    ) -> tokio::process::Command {
        let dir = match config {
            Some((ConfigSource::File(p), workdir)) => workdir
                .unwrap_or(&self.cwd)
                .join(p)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.cwd.clone()),
            _ => self.cwd.clone(),
        };
        let mut c = tokio::process::Command::new(hook);
        c.arg(spec_name)
            .env("UWSGI_VASSALS_DIR", dir)
            .current_dir(&self.cwd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// `--vassals-stop-hook`: runs `HOOK NAME` without waiting (the emperor
    /// never blocks on it; uWSGI's does) and logs how it ended.
    fn run_stop_hook(&mut self, name: &VassalName) {
        let Some(hook) = self.launch.stop_hook.clone() else {
            return;
        };
        let mut cmd = self.hook_command(&hook, name.as_str(), None);
        let name = name.clone();
        self.stop_hooks.retain(|h| !h.is_finished());
        self.stop_hooks.push(tokio::spawn(async move {
            log_hook("stop", &hook, &name, cmd.status().await);
        }));
    }

    /// Starts the process for `instance`, after its `--vassals-start-hook`
    /// when there is one: the hook runs as the vassal will (its tyrant
    /// owner), the emperor goes on meanwhile, and the process starts when
    /// the hook has ended, whatever its exit code (uWSGI logs it only).
    fn spawn(
        &mut self,
        rec: &mut Reconciler,
        instance: InstanceId,
        spec: VassalSpec,
    ) -> Vec<Action> {
        let Some(hook) = self.launch.start_hook.clone() else {
            return self.spawn_now(rec, instance, spec);
        };
        let mut cmd = self.hook_command(
            &hook,
            spec.name.as_str(),
            Some((&spec.config, spec.workdir.as_deref())),
        );
        if let Some(o) = spec.owner {
            cmd.uid(o.uid).gid(o.gid);
        }
        if let Some(d) = &spec.workdir {
            cmd.current_dir(d);
        }
        let reports = self.reports.0.clone();
        tokio::spawn(async move {
            log_hook("start", &hook, &spec.name, cmd.status().await);
            let _ = reports.send(Report::StartHookDone(instance, Box::new(spec)));
        });
        Vec::new()
    }

    /// A batch that starts several processes (a cold start, a respawn
    /// after a crash storm): their groups are made on the maker thread
    /// while this loop starts them one after the other, all but the
    /// first, which it makes itself at once.
    fn prepare_groups(&self, actions: &[Action]) {
        let Some(c) = &self.cgroups else { return };
        if self.launch.start_hook.is_some() {
            return;
        }
        let spawns = actions.iter().filter_map(|a| match a {
            Action::Spawn { instance, spec } => Some((&spec.name, *instance)),
            _ => None,
        });
        for (name, instance) in spawns.skip(1) {
            c.prepare(name, instance);
        }
    }

    /// After a spawn of `name`: if it failed (no process to watch), the
    /// group the maker may have made for it ([`Executor::prepare_groups`])
    /// goes.
    fn discard_group(&self, name: &VassalName, instance: InstanceId) {
        match &self.cgroups {
            Some(c)
                if self.launch.start_hook.is_none() && !self.handles.contains_key(&instance) =>
            {
                c.discard(name, instance);
            }
            _ => {}
        }
    }

    /// A duplicate of the on-demand socket of `spec`, for its fd 0 (`None`
    /// when it has none); the actions of a failed spawn otherwise.
    fn on_demand_fd(
        &self,
        rec: &mut Reconciler,
        instance: InstanceId,
        spec: &VassalSpec,
    ) -> Result<Option<std::os::fd::OwnedFd>, Vec<Action>> {
        if spec.socket.is_none() {
            return Ok(None);
        }
        match self.listeners.get(&spec.name).map(|l| l.sock.dup()) {
            Some(Ok(fd)) => Ok(Some(fd)),
            Some(Err(e)) => Err(setup_failed(
                rec,
                instance,
                "cannot pass the on-demand socket",
                &e,
            )),
            None => Err(rec.spawn_failed(
                instance,
                "its on-demand socket is not bound",
                std::time::Instant::now(),
            )),
        }
    }

    /// The cgroup of a new process of `spec` (`--vassal-cgroup`) and its
    /// limited v1 groups (emperor-wide limits, or its `[imperium]`
    /// section); the actions of a failed spawn otherwise.
    fn groups_for(
        &self,
        rec: &mut Reconciler,
        instance: InstanceId,
        spec: &VassalSpec,
        own: crate::cgroup::limits::Limits,
    ) -> Result<(Option<PathBuf>, Vec<PathBuf>), Vec<Action>> {
        let cgroup = match self
            .cgroups
            .as_ref()
            .map(|c| c.create(&spec.name, instance))
        {
            None => None,
            Some(Ok(dir)) => {
                rec.attach_cgroup(instance, &dir);
                Some(dir)
            }
            Some(Err(e)) => return Err(setup_failed(rec, instance, "cannot make its cgroup", &e)),
        };
        let made = match (&self.limits, &self.cgroups, &cgroup) {
            (Some(m), Some(c), Some(dir)) => Some(m.create(&spec.name, instance, dir, own, c)),
            _ => None,
        };
        let v1 = match made {
            None => Vec::new(),
            Some(Ok(dirs)) => dirs,
            Some(Err(e)) => {
                if let Some(dir) = &cgroup {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(setup_failed(
                    rec,
                    instance,
                    "cannot make its limited cgroups",
                    &e,
                ));
            }
        };
        Ok((cgroup, v1))
    }

    fn spawn_now(
        &mut self,
        rec: &mut Reconciler,
        instance: InstanceId,
        spec: VassalSpec,
    ) -> Vec<Action> {
        // a zerg NAME:zerg:N is launched as NAME:zerg (the [zerg] section)
        let zerg_base = spec.name.zerg_parts().map(|(base, _)| base.to_string());
        let launch_name = match &zerg_base {
            Some(base) => format!("{base}:zerg"),
            None => spec.name.to_string(),
        };
        if rec.is_successor(instance) {
            if let Err(why) = self.can_swap(&spec) {
                return rec.swap_refused(instance, &why, std::time::Instant::now());
            }
        }
        // read before anything is set up: nothing to undo
        let (own, health) = match self.health_of(&spec) {
            Ok(o) => o,
            Err(e) => return rec.spawn_failed(instance, &e, std::time::Instant::now()),
        };
        let argv = build_argv(
            &launch_name,
            &spec.config,
            &self.launch,
            self.magic_exec_ok(&spec),
        );
        let inline = match &spec.config {
            ConfigSource::Inline(t) => Some(t.clone()),
            _ => None,
        };
        let stdin_socket = match self.on_demand_fd(rec, instance, &spec) {
            Ok(fd) => fd,
            Err(actions) => return actions,
        };
        let broodlord_num = zerg_base.is_some().then(|| {
            self.broodlord_num += 1;
            self.broodlord_num
        });
        let (stdout, log) = match self.output_for(rec, instance, &spec, zerg_base.as_deref()) {
            Ok(Some((fd, log))) => (Some(fd), log),
            Ok(None) => (None, None),
            Err(e) => {
                return setup_failed(
                    rec,
                    instance,
                    "cannot set up its output (--vassal-logs)",
                    &e,
                )
            }
        };
        let (cgroup, v1) = match self.groups_for(rec, instance, &spec, own) {
            Ok(g) => g,
            Err(actions) => return actions,
        };
        let owner = spec.owner.map(|o| (o, self.groups(o)));
        let req = SpawnRequest {
            argv,
            programs: self.launch.programs(),
            base_env: self.base_env.clone(),
            workdir: spec.workdir.clone(),
            owner,
            config_pipe: inline.is_some(),
            stdin_socket,
            stdout,
            broodlord_num,
            cgroup: cgroup.clone(),
            join_procs: v1.iter().map(|d| d.join("cgroup.procs")).collect(),
            confine: self.launch.confine.clone(),
        };
        let sp = match spawn_vassal(req) {
            Ok(sp) => {
                if let Some((l, _)) = &log {
                    l.writer_added();
                }
                sp
            }
            Err(e) => {
                for dir in cgroup.iter().chain(&v1) {
                    let _ = std::fs::remove_dir(dir);
                }
                let now = std::time::Instant::now();
                return if e.is_transient() {
                    rec.spawn_deferred(instance, &e.to_string(), now)
                } else {
                    rec.spawn_failed(instance, &e.to_string(), now)
                };
            }
        };
        self.watch(rec, instance, &spec.name, sp, inline, log, (cgroup, v1));
        if let Some(check) = health {
            if self.handles.contains_key(&instance) {
                self.start_probe(rec, instance, &spec, check);
            }
        }
        Vec::new()
    }

    /// Checks the changed config of a running vassal off the loop (an
    /// older check of it is stopped: its result would be ignored).
    fn start_check(&mut self, spec: &VassalSpec) {
        let workdir = spec.workdir.clone().unwrap_or_else(|| self.cwd.clone());
        let job = super::check::CheckJob::new(
            spec,
            &self.launch,
            self.magic_exec_ok(spec),
            &self.base_env,
            workdir,
            &self.check,
        );
        let reports = self.reports.0.clone();
        let key = spec.key;
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let name = job.name.clone();
            let r = job.run().await;
            let _ = reports.send(Report::CheckDone(name, key, r, started.elapsed()));
        });
        if let Some((_, old)) = self
            .checks
            .insert(spec.name.clone(), (key, task.abort_handle()))
        {
            old.abort();
        }
    }

    /// Probes the health of a started process until it is reaped.
    fn start_probe(
        &mut self,
        rec: &mut Reconciler,
        instance: InstanceId,
        spec: &VassalSpec,
        check: HealthCheck,
    ) {
        rec.health_watch(instance, &check, std::time::Instant::now());
        let reports = self.reports.0.clone();
        let name = spec.name.clone();
        let workdir = spec.workdir.clone().unwrap_or_else(|| self.cwd.clone());
        let reloaded = Arc::new(tokio::sync::Notify::new());
        let again = reloaded.clone();
        let task = tokio::spawn(async move {
            let mut passed = false;
            loop {
                let wait = if passed {
                    check.interval
                } else {
                    check.interval.min(crate::health::FIRST_PASS_INTERVAL)
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = again.notified() => {
                        passed = false;
                        continue;
                    }
                }
                let r = check
                    .probe
                    .run(check.timeout, Some(&workdir), name.as_str())
                    .await;
                passed |= r.is_ok();
                if reports.send(Report::Health(instance, r)).is_err() {
                    return;
                }
            }
        });
        self.probes
            .insert(instance, (task.abort_handle(), reloaded));
    }

    /// Watches a started vassal process: its sockets, its exit, its task.
    #[allow(
        clippy::too_many_arguments,
        reason = "what spawn_now prepared for this process"
    )]
    fn watch(
        &mut self,
        rec: &mut Reconciler,
        instance: InstanceId,
        name: &VassalName,
        sp: crate::spawn::Spawned,
        inline: Option<Arc<str>>,
        log: Option<LogFrom>,
        (cgroup, v1): (Option<PathBuf>, Vec<PathBuf>),
    ) {
        rec.spawned(instance, sp.pid, &sp.program.to_string_lossy());
        let ctrl = match to_tokio(sp.ctrl) {
            Ok(s) => s,
            Err(e) => {
                let what = format!("cannot watch the vassal's control socket: {e}");
                self.abandon(instance, name, &sp.child, &what);
                return;
            }
        };
        let config = sp.config.and_then(|c| to_tokio(c).ok());
        let link = Arc::new(VassalLink {
            name: name.clone(),
            ctrl,
            child: sp.child,
            config,
            queue: std::sync::Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            overflowed: Default::default(),
            partial: Default::default(),
            log,
            cgroup,
            v1,
        });
        if let Some(text) = inline {
            link.send(VassalCmd::Config(text));
        }
        self.handles.insert(instance, link.clone());
        tokio::spawn(vassal_task(instance, link, self.reports.0.clone()));
    }
}
