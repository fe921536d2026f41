//! The runtime: one task owns the [`Reconciler`] and carries out its
//! actions; one task per vassal process relays protocol bytes and reaps it;
//! one task per monitor feeds changes in.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::argv::{build_argv, LaunchOptions};
use crate::events::{Event, ExitStatus};
use crate::lifecycle::{Lifecycle, Readiness};
use crate::monitor::{Monitor, MonitorContext, MonitorMessage, MonitorOptions};
use crate::name::VassalName;
use crate::ondemand::{OnDemandAddr, OnDemandOptions, OnDemandSocket};
use crate::protocol::{encode_config, VassalMessage};
use crate::reconciler::{Action, InstanceId, Reconciler, ReconcilerConfig};
use crate::spawn::{spawn_vassal, SpawnRequest, VassalProcess};
use crate::spec::{ConfigSource, Owner, VassalSpec};

/// Everything the emperor needs besides its monitors.
#[derive(Debug, Clone)]
pub struct EmperorConfig {
    pub reconciler: ReconcilerConfig,
    pub launch: LaunchOptions,
    pub monitor: MonitorOptions,
    /// `--reload-mercy` (30 s when unset): how long Ragnarok waits before
    /// SIGKILL.
    pub reload_mercy: Duration,
    /// How on-demand sockets are bound.
    pub on_demand: OnDemandOptions,
}

/// Operator commands (signals, control socket).
pub enum Command {
    /// SIGHUP: reload every vassal gracefully.
    ReloadAll,
    /// SIGINT/SIGTERM/SIGQUIT: Ragnarok.
    Shutdown,
    /// SIGURG: clear the blacklist.
    ClearBlacklist,
    /// SIGUSR1: log one line per vassal.
    LogVassals,
    /// SIGWINCH: rescan every monitor.
    Rescan,
    /// Reload one vassal.
    Reload {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Read the table (stats, control socket).
    Inspect(Box<dyn FnOnce(&Reconciler) + Send>),
    /// Change the table (control socket): the closure calls one reconciler
    /// method with the current time and returns its actions, which the
    /// runtime carries out.
    Apply(ApplyFn),
}

/// The closure of [`Command::Apply`].
pub type ApplyFn = Box<dyn FnOnce(&mut Reconciler, std::time::Instant) -> Vec<Action> + Send>;

/// What a vassal's task writes to it, in order.
enum VassalCmd {
    Byte(u8),
    Config(Arc<str>),
}

enum Report {
    Message(InstanceId, VassalMessage),
    PipeClosed(InstanceId),
    Exited(InstanceId, ExitStatus),
    /// A connection is pending on the on-demand socket of a vassal.
    Connection(VassalName),
    /// The `--vassals-start-hook` of a vassal about to start has ended.
    StartHookDone(InstanceId, Box<VassalSpec>),
}

/// The emperor: build it with its monitors, then [`Emperor::run`] it.
pub struct Emperor {
    cfg: EmperorConfig,
    monitors: Vec<Box<dyn Monitor>>,
    lifecycle: Option<Box<dyn Lifecycle>>,
}

impl Emperor {
    pub fn new(cfg: EmperorConfig, monitors: Vec<Box<dyn Monitor>>) -> Self {
        Emperor {
            cfg,
            monitors,
            lifecycle: None,
        }
    }

    /// Tells `l` when the initial scan has been acted on, after every step
    /// and at shutdown (systemd notify).
    pub fn with_lifecycle(mut self, l: Box<dyn Lifecycle>) -> Self {
        self.lifecycle = Some(l);
        self
    }

    /// Runs until a [`Command::Shutdown`] has stopped every vassal (or the
    /// command channel closes, which also shuts down).
    pub async fn run(self, mut commands: mpsc::Receiver<Command>) {
        let urls: Vec<String> = self.monitors.iter().map(|m| m.describe()).collect();
        for u in &urls {
            tracing::info!(monitor = %u, "[emperor] monitoring {u}");
        }
        let mut readiness = Readiness::new(urls.len());
        let mut lifecycle = self.lifecycle;
        let mut told_stopping = false;
        let mut rec = Reconciler::new(self.cfg.reconciler.clone(), urls);
        let (mon_tx, mut mon_rx) = mpsc::channel::<MonitorMessage>(4096);
        let (rescan_tx, rescan_rx) = watch::channel(0u64);
        let opts = Arc::new(self.cfg.monitor.clone());
        for (i, m) in self.monitors.into_iter().enumerate() {
            let ctx = MonitorContext::new(i, opts.clone(), mon_tx.clone(), rescan_rx.clone());
            tokio::spawn(m.run(ctx));
        }
        drop(mon_tx);
        let mut exec = Executor {
            launch: self.cfg.launch,
            base_env: std::env::vars_os().collect::<Vec<_>>().into(),
            cwd: opts.cwd.clone(),
            handles: HashMap::new(),
            reports: mpsc::unbounded_channel(),
            listeners: HashMap::new(),
            on_demand: self.cfg.on_demand,
            broodlord_num: 0,
            stop_hooks: Vec::new(),
        };
        let mut monitors_open = true;
        let mut commands_open = true;
        let mut mercy_at: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if rec.is_shutting_down() && rec.running() == 0 {
                break;
            }
            let mut deadline = rec.next_deadline().map(Instant::from_std);
            let ready_at = readiness.deadline().map(Instant::from_std);
            for extra in [mercy_at, give_up_at, ready_at].into_iter().flatten() {
                deadline = Some(deadline.map_or(extra, |d| d.min(extra)));
            }
            let mut reacting = None;
            let actions = tokio::select! {
                biased;
                Some(r) = exec.reports.1.recv() => {
                    // carry out what else is queued before computing the
                    // next deadline again (a walk of the whole table): a
                    // cold start or a crash storm queues thousands of reports
                    let mut next = Some(r);
                    let mut batch = 0;
                    while let Some(r) = next.take() {
                        let actions = exec.report(&mut rec, r);
                        exec.execute(&mut rec, actions);
                        batch += 1;
                        if batch < REPORT_BATCH {
                            next = exec.reports.1.try_recv().ok();
                        }
                    }
                    Vec::new()
                }
                c = commands.recv(), if commands_open => match c {
                    None => {
                        commands_open = false;
                        Self::begin_shutdown(&mut rec, &mut mercy_at, self.cfg.reload_mercy)
                    }
                    Some(Command::Shutdown) => Self::begin_shutdown(&mut rec, &mut mercy_at, self.cfg.reload_mercy),
                    Some(Command::ReloadAll) => rec.reload_all(),
                    Some(Command::ClearBlacklist) => rec.clear_blacklist_all(Instant::now().into_std()).1,
                    Some(Command::LogVassals) => { rec.log_vassals(); Vec::new() }
                    Some(Command::Rescan) => { rescan_tx.send_modify(|n| *n += 1); Vec::new() }
                    Some(Command::Reload { name, reply }) => match rec.reload_one(&name) {
                        Ok(a) => { let _ = reply.send(Ok(())); a }
                        Err(e) => { let _ = reply.send(Err(e)); Vec::new() }
                    },
                    Some(Command::Inspect(f)) => { f(&rec); Vec::new() }
                    Some(Command::Apply(f)) => f(&mut rec, Instant::now().into_std()),
                },
                m = mon_rx.recv(), if monitors_open => match m {
                    Some(m) => {
                        readiness.observe(m.monitor, &m.change, Instant::now().into_std());
                        reacting = Some((m.monitor, m.seen));
                        rec.monitor_change(m.monitor, m.change, Instant::now().into_std())
                    }
                    None => { monitors_open = false; Vec::new() }
                },
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    if give_up_at.is_some_and(|t| t <= now) {
                        tracing::error!(left = rec.running(), "vassals still not reaped 10 s after SIGKILL; exiting anyway");
                        break;
                    }
                    if mercy_at.is_some_and(|t| t <= now) {
                        mercy_at = None;
                        give_up_at = Some(now + Duration::from_secs(10));
                        rec.kill_all()
                    } else {
                        rec.tick(now.into_std())
                    }
                }
            };
            let _ = now;
            let n_actions = actions.len();
            exec.execute(&mut rec, actions);
            if rec.take_rescan_wanted() {
                rescan_tx.send_modify(|n| *n += 1);
            }
            if let Some((monitor, seen)) = reacting.filter(|_| n_actions > 0) {
                rec.note(Event::Reacted {
                    monitor,
                    latency: seen.elapsed(),
                    actions: n_actions,
                });
            }
            let became_ready = readiness.poll(Instant::now().into_std());
            if let Some(l) = lifecycle.as_mut() {
                if became_ready {
                    l.ready(&rec);
                }
                if rec.is_shutting_down() && !told_stopping {
                    told_stopping = true;
                    l.stopping(&rec);
                }
                l.step(&rec);
            }
        }
        // --vassals-stop-hook runs for every vassal of the Ragnarok too;
        // they get the shutdown's mercy to finish
        let hooks = std::mem::take(&mut exec.stop_hooks);
        let pending = hooks.iter().filter(|h| !h.is_finished()).count();
        if pending > 0 {
            tracing::info!("waiting for {pending} --vassals-stop-hook command(s)");
            let all = futures::future::join_all(hooks);
            if tokio::time::timeout(self.cfg.reload_mercy, all)
                .await
                .is_err()
            {
                tracing::warn!("--vassals-stop-hook commands still running after the mercy; not waiting for them");
            }
        }
        tracing::info!("The Emperor is buried.");
        if let Some(l) = lifecycle.as_mut() {
            l.buried();
        }
    }

    fn begin_shutdown(
        rec: &mut Reconciler,
        mercy_at: &mut Option<Instant>,
        mercy: Duration,
    ) -> Vec<Action> {
        if rec.is_shutting_down() {
            let left = mercy_at
                .map(|t| t.saturating_duration_since(Instant::now()).as_secs())
                .unwrap_or(0);
            tracing::warn!("RAGNAROK ALREADY EVOKED (mercyless in {left} seconds)");
            return Vec::new();
        }
        *mercy_at = Some(Instant::now() + mercy);
        rec.shutdown(Instant::now().into_std())
    }
}

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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Executor {
    launch: LaunchOptions,
    /// The emperor's environment, shared by every spawn request.
    base_env: Arc<[(OsString, OsString)]>,
    cwd: PathBuf,
    handles: HashMap<InstanceId, Arc<VassalLink>>,
    reports: (
        mpsc::UnboundedSender<Report>,
        mpsc::UnboundedReceiver<Report>,
    ),
    /// The on-demand sockets, kept for the vassal's whole life in the table.
    listeners: HashMap<VassalName, Listener>,
    on_demand: OnDemandOptions,
    /// `UWSGI_BROODLORD_NUM`: counts zerg starts.
    broodlord_num: u64,
    /// `--vassals-stop-hook` commands still running.
    stop_hooks: Vec<tokio::task::JoinHandle<()>>,
}

/// One on-demand socket and its watch.
struct Listener {
    address: String,
    addr: OnDemandAddr,
    sock: Arc<OnDemandSocket>,
    watch: Option<tokio::task::JoinHandle<()>>,
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
const REPORT_BATCH: usize = 256;

impl Executor {
    /// Hands one report from a vassal task to the reconciler.
    fn report(&mut self, rec: &mut Reconciler, r: Report) -> Vec<Action> {
        let now = Instant::now().into_std();
        match r {
            Report::Message(i, m) => rec.vassal_message(i, m, now),
            Report::PipeClosed(i) => rec.pipe_closed(i, now),
            Report::Exited(i, st) => {
                self.handles.remove(&i);
                rec.exited(i, st, now)
            }
            Report::Connection(name) => rec.on_demand_connection(&name, now),
            Report::StartHookDone(i, spec) => match rec.instance_stopping(i) {
                // stopped while its hook ran: it ends before it began
                Some(true) => rec.exited(i, ExitStatus::Code(0), now),
                Some(false) => self.spawn_now(rec, i, *spec),
                None => Vec::new(),
            },
        }
    }

    fn execute(&mut self, rec: &mut Reconciler, actions: Vec<Action>) {
        let mut work: VecDeque<Action> = actions.into();
        while let Some(a) = work.pop_front() {
            let more = match a {
                Action::Spawn { instance, spec } => self.spawn(rec, instance, spec),
                Action::Send { instance, byte } => {
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
        let stdin_socket = if spec.socket.is_some() {
            match self.listeners.get(&spec.name).map(|l| l.sock.dup()) {
                Some(Ok(fd)) => Some(fd),
                Some(Err(e)) => {
                    return rec.spawn_failed(
                        instance,
                        &format!("cannot pass the on-demand socket: {e}"),
                        std::time::Instant::now(),
                    )
                }
                None => {
                    return rec.spawn_failed(
                        instance,
                        "its on-demand socket is not bound",
                        std::time::Instant::now(),
                    )
                }
            }
        } else {
            None
        };
        let broodlord_num = zerg_base.is_some().then(|| {
            self.broodlord_num += 1;
            self.broodlord_num
        });
        let owner = spec.owner.map(|o| (o, self.groups(o)));
        let req = SpawnRequest {
            argv,
            programs: self.launch.programs(),
            base_env: self.base_env.clone(),
            workdir: spec.workdir.clone(),
            owner,
            config_pipe: inline.is_some(),
            stdin_socket,
            broodlord_num,
            confine: self.launch.confine.clone(),
        };
        let sp = match spawn_vassal(req) {
            Ok(sp) => sp,
            Err(e) => return rec.spawn_failed(instance, &e.to_string(), std::time::Instant::now()),
        };
        rec.spawned(instance, sp.pid, &sp.program.to_string_lossy());
        let ctrl = match to_tokio(sp.ctrl) {
            Ok(s) => s,
            Err(e) => {
                let what = format!("cannot watch the vassal's control socket: {e}");
                self.abandon(instance, &spec.name, &sp.child, &what);
                return Vec::new();
            }
        };
        let config = sp.config.and_then(|c| to_tokio(c).ok());
        let child = match sp.child.into_async() {
            Ok(c) => c,
            Err((child, e)) => {
                let what = format!("cannot watch the vassal's pidfd: {e}");
                self.abandon(instance, &spec.name, &child, &what);
                return Vec::new();
            }
        };
        let link = Arc::new(VassalLink {
            name: spec.name.clone(),
            ctrl,
            child,
            config,
            queue: std::sync::Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
        });
        if let Some(text) = inline {
            link.send(VassalCmd::Config(text));
        }
        self.handles.insert(instance, link.clone());
        tokio::spawn(vassal_task(instance, link, self.reports.0.clone()));
        Vec::new()
    }
}

fn to_tokio(s: std::os::unix::net::UnixStream) -> std::io::Result<UnixStream> {
    s.set_nonblocking(true)?;
    UnixStream::from_std(s)
}

/// What the runtime shares with the task of one vassal process: its
/// sockets, its pidfd and the commands the task has yet to carry out.
///
/// One allocation per vassal: a channel per vassal cost more than a
/// kilobyte each (tokio preallocates a block of 32 slots), and the emperor
/// keeps one per running vassal.
struct VassalLink {
    name: VassalName,
    ctrl: UnixStream,
    child: AsyncFd<VassalProcess>,
    config: Option<UnixStream>,
    /// Commands in order; the task drains it when woken.
    queue: std::sync::Mutex<VecDeque<VassalCmd>>,
    waker: AtomicWaker,
}

impl VassalLink {
    fn send(&self, cmd: VassalCmd) {
        self.queue().push_back(cmd);
        self.waker.wake();
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<VassalCmd>> {
        // a poisoned lock only means a panic elsewhere mid-push: the queue
        // itself is still consistent
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One poll of everything the task waits for, exit first.
    fn poll_wake(
        &self,
        cx: &mut Context<'_>,
        instance: InstanceId,
        reports: &mpsc::UnboundedSender<Report>,
        reading: bool,
        eof_timer: Option<&mut Pin<Box<tokio::time::Sleep>>>,
    ) -> Poll<Wake> {
        loop {
            match self.child.poll_read_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Wake::Exited(Err(e))),
                Poll::Ready(Ok(mut ready)) => match self.child.get_ref().try_wait() {
                    Ok(Some(st)) => return Poll::Ready(Wake::Exited(Ok(st))),
                    Ok(None) => ready.clear_ready(),
                    Err(e) => return Poll::Ready(Wake::Exited(Err(e))),
                },
            }
        }
        if reading {
            loop {
                match self.ctrl.poll_read_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => return Poll::Ready(Wake::Eof),
                    // on WouldBlock, try_read clears the readiness, so the
                    // next poll registers for more
                    Poll::Ready(Ok(())) => {
                        if !self.relay_bytes(instance, reports) {
                            return Poll::Ready(Wake::Eof);
                        }
                    }
                }
            }
        }
        if let Some(t) = eof_timer {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::EofTimeout);
            }
        }
        self.waker.register(cx.waker());
        if !self.queue().is_empty() {
            return Poll::Ready(Wake::Commands);
        }
        Poll::Pending
    }

    /// Reads what the vassal wrote (without waiting) and reports each byte;
    /// false once the socket is at end of file or failed.
    fn relay_bytes(&self, instance: InstanceId, reports: &mpsc::UnboundedSender<Report>) -> bool {
        let mut buf = [0u8; 16];
        loop {
            match self.ctrl.try_read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    for b in &buf[..n] {
                        let _ =
                            reports.send(Report::Message(instance, VassalMessage::from_byte(*b)));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    async fn carry_out(&self, cmd: VassalCmd) {
        match cmd {
            VassalCmd::Byte(b) => {
                if let Err(e) = write_all(&self.ctrl, &[b]).await {
                    tracing::debug!(vassal = %self.name, error = %e, "cannot write to the vassal's control socket");
                }
            }
            VassalCmd::Config(text) => push_config(&self.name, self.config.as_ref(), &text).await,
        }
    }

    /// SIGKILL now, not behind queued writes (a vassal that does not read
    /// its socket can hold those forever). A pidfd never names another
    /// process, even once this one is reaped.
    fn kill(&self) {
        if let Err(e) = self.child.get_ref().kill() {
            tracing::debug!(vassal = %self.name, error = %e, "kill failed");
        }
    }
}

/// Writes all of `data` to a non-blocking socket shared by reference.
async fn write_all(sock: &UnixStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        sock.writable().await?;
        match sock.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What woke a vassal's task.
enum Wake {
    Exited(std::io::Result<ExitStatus>),
    /// The control socket is at end of file or failed.
    Eof,
    /// The grace period after end of file is over.
    EofTimeout,
    Commands,
}

/// Relays the vassal's bytes to the runtime, carries out the runtime's
/// commands, and reaps the process.
///
/// The wait is one `poll_fn` over the pidfd, the socket and the queue,
/// rather than a `select!` of their futures: this task lives as long as
/// its vassal, once per vassal, and a select of four futures made it about
/// four times larger.
async fn vassal_task(
    instance: InstanceId,
    link: Arc<VassalLink>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut reading = true;
    let mut eof_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let status = loop {
        let wake = std::future::poll_fn(|cx| {
            link.poll_wake(cx, instance, &reports, reading, eof_timer.as_mut())
        })
        .await;
        match wake {
            Wake::Exited(st) => break st,
            Wake::Eof => {
                // usually the process is exiting: give the exit a moment to
                // be seen, so an ordinary death is not logged as a curse
                reading = false;
                eof_timer = Some(Box::pin(tokio::time::sleep(Duration::from_millis(500))));
            }
            Wake::EofTimeout => {
                eof_timer = None;
                let _ = reports.send(Report::PipeClosed(instance));
            }
            Wake::Commands => {
                // the guard is dropped before each write is awaited
                loop {
                    let Some(cmd) = link.queue().pop_front() else {
                        break;
                    };
                    Box::pin(link.carry_out(cmd)).await;
                }
            }
        }
    };
    // bytes the vassal wrote just before exiting
    if reading {
        link.relay_bytes(instance, &reports);
    }
    let status = match status {
        Ok(st) => st,
        Err(e) => {
            tracing::error!(vassal = %link.name, error = %e, "waiting for the vassal failed");
            ExitStatus::Code(-1)
        }
    };
    let _ = reports.send(Report::Exited(instance, status));
}

async fn push_config(name: &VassalName, sock: Option<&UnixStream>, text: &str) {
    let Some(sock) = sock else {
        tracing::debug!(vassal = %name, "no config socket to push to");
        return;
    };
    match encode_config(text.as_bytes()) {
        Ok(pkt) => {
            if let Err(e) = write_all(sock, &pkt).await {
                tracing::warn!(vassal = %name, error = %e, "cannot push the config to the vassal");
            }
        }
        Err(e) => tracing::error!(vassal = %name, "cannot push the config: {e}"),
    }
}
