//! The runtime: one task owns the [`Reconciler`] and carries out its
//! actions; one task per vassal process relays protocol bytes and reaps it;
//! one task per monitor feeds changes in.
//!
//! `mod.rs` is the loop; `executor.rs` carries out the reconciler's actions
//! (spawns, sockets, hooks); `vassal.rs` is the task of one vassal process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::argv::LaunchOptions;
use crate::events::{Event, ExitStatus};
use crate::lifecycle::{Lifecycle, Readiness, ServeWait};
use crate::logs::{Capture, LogOptions};
use crate::monitor::{Monitor, MonitorContext, MonitorMessage, MonitorOptions};
use crate::name::VassalName;
use crate::ondemand::OnDemandOptions;
use crate::protocol::VassalMessage;
use crate::reconciler::{Action, InstanceId, Reconciler, ReconcilerConfig};
use crate::spec::VassalSpec;

pub use crate::command::{ApplyFn, Command};

/// The loop waking up this much later than it meant to means the emperor
/// itself was not running (frozen by SIGSTOP, a VM or host pause).
const PAUSE_TOLERANCE: Duration = Duration::from_secs(1);

/// How long the loop may go on with the next deadline it computed last
/// (the computation walks every vassal): a timer fires at most this late.
const DEADLINE_REUSE: Duration = Duration::from_millis(10);

mod check;
mod executor;
mod upgrade;
mod vassal;

pub use check::CheckOptions;
pub use upgrade::{Restored, UpgradeSetup, CHECK_OK};

use executor::{Executor, REPORT_BATCH};

/// Everything the emperor needs besides its monitors.
#[derive(Debug, Clone)]
pub struct EmperorConfig {
    /// The reconciler's settings.
    pub reconciler: ReconcilerConfig,
    /// How vassals are launched.
    pub launch: LaunchOptions,
    /// What every monitor is given.
    pub monitor: MonitorOptions,
    /// `--reload-mercy` (30 s when unset): how long Ragnarok waits before
    /// SIGKILL.
    pub reload_mercy: Duration,
    /// How on-demand sockets are bound.
    pub on_demand: OnDemandOptions,
    /// Where vassal output goes (`--vassal-logs`).
    pub logs: LogOptions,
    /// The emperor-wide health check of every vassal (`--vassal-health`
    /// and its settings; a vassal's `[imperium]` section overrides them).
    pub health: crate::health::HealthSettings,
    /// `--emperor-ready-wait`: the emperor is ready (systemd's READY=1)
    /// once the vassals of the initial scan serve, not once they are
    /// spawned.
    pub ready_wait: bool,
    /// How changed configs are checked (`--emperor-reload-mode checked`).
    pub check: CheckOptions,
}

/// What a vassal's task writes to it, in order.
#[derive(Clone)]
pub(super) enum VassalCmd {
    Byte(u8),
    Config(Arc<str>),
}

/// What the tasks around the loop (vassals, on-demand sockets, hooks)
/// report to it.
pub(super) enum Report {
    Message(InstanceId, VassalMessage),
    PipeClosed(InstanceId),
    Exited(InstanceId, ExitStatus),
    /// A connection is pending on the on-demand socket of a vassal.
    Connection(VassalName),
    /// The `--vassals-start-hook` of a vassal about to start has ended.
    StartHookDone(InstanceId, Box<VassalSpec>),
    /// The vassal wrote this many bytes within the flood window.
    Flood(InstanceId, usize),
    /// One health probe of a process ended: healthy, or why not.
    Health(InstanceId, Result<(), String>),
    /// The check of a changed config ended (`--emperor-reload-mode
    /// checked`): the change, the result, how long it took.
    CheckDone(
        VassalName,
        crate::spec::ChangeKey,
        Result<(), String>,
        Duration,
    ),
}

/// The emperor: build it with its monitors, then [`Emperor::run`] it.
pub struct Emperor {
    cfg: EmperorConfig,
    monitors: Vec<Box<dyn Monitor>>,
    lifecycle: Option<Box<dyn Lifecycle>>,
    capture: Option<Capture>,
    cgroups: Option<crate::cgroup::Cgroups>,
    limits: Option<crate::cgroup::limits::LimitGroups>,
    upgrade: Option<UpgradeSetup>,
    restored: Option<Restored>,
    cluster: Option<Box<dyn crate::cluster::ClusterEngine>>,
}

impl Emperor {
    /// An emperor for these monitors.
    pub fn new(cfg: EmperorConfig, monitors: Vec<Box<dyn Monitor>>) -> Self {
        Emperor {
            cfg,
            monitors,
            lifecycle: None,
            capture: None,
            cgroups: None,
            limits: None,
            upgrade: None,
            restored: None,
            cluster: None,
        }
    }

    /// Runs only the vassals `engine` places on this emperor
    /// (`--emperor-cluster`; needs [`ReconcilerConfig::cluster`]).
    pub fn with_cluster(mut self, engine: Option<Box<dyn crate::cluster::ClusterEngine>>) -> Self {
        self.cluster = engine;
        self
    }

    /// Lets the emperor re-execute itself in place (`imperium ctl
    /// upgrade`, SIGUSR2) with this command line and these observer
    /// sockets.
    pub fn with_upgrade(mut self, setup: UpgradeSetup) -> Self {
        self.upgrade = Some(setup);
        self
    }

    /// Starts from the state a previous image left (this image is the new
    /// one of a hot upgrade): the table is put back before the monitors
    /// start.
    pub fn with_restored(mut self, restored: Option<Restored>) -> Self {
        self.restored = restored;
        self
    }

    /// Captures vassal output with `capture` (started for
    /// [`EmperorConfig::logs`] with [`Capture::start`], so that a bad log
    /// directory is a start-up error). Without it `prefix` and `dir:`
    /// modes capture nothing.
    pub fn with_capture(mut self, capture: Option<Capture>) -> Self {
        self.capture = capture;
        self
    }

    /// Starts every vassal process in a cgroup of its own under `cgroups`
    /// (set up with [`crate::cgroup::Cgroups::setup`]).
    pub fn with_cgroups(mut self, cgroups: Option<crate::cgroup::Cgroups>) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// Limits every vassal process (`--vassal-memory-max`, `-cpu-max`,
    /// `-pids-max`; needs [`Emperor::with_cgroups`]).
    pub fn with_limits(mut self, limits: Option<crate::cgroup::limits::LimitGroups>) -> Self {
        self.limits = limits;
        self
    }

    /// Tells `l` when the initial scan has been acted on, after every step
    /// and at shutdown (systemd notify).
    pub fn with_lifecycle(mut self, l: Box<dyn Lifecycle>) -> Self {
        self.lifecycle = Some(l);
        self
    }

    /// Runs until a [`Command::Shutdown`] has stopped every vassal (or the
    /// command channel closes, which also shuts down).
    #[allow(
        clippy::too_many_lines,
        reason = "the emperor's one select loop: every input and the order they are taken in"
    )]
    pub async fn run(self, mut commands: mpsc::Receiver<Command>) {
        let urls: Vec<String> = self.monitors.iter().map(|m| m.describe()).collect();
        for u in &urls {
            tracing::info!(monitor = %u, "[emperor] monitoring {u}");
        }
        let mut readiness = Readiness::new(urls.len());
        let mut serve_wait: Option<ServeWait> = None;
        let mut lifecycle = self.lifecycle;
        let mut told_stopping = false;
        let mut rec = Reconciler::new(self.cfg.reconciler.clone(), urls);
        let (mon_tx, mut mon_rx) = mpsc::channel::<MonitorMessage>(4096);
        let (rescan_tx, rescan_rx) = watch::channel(0u64);
        let opts = Arc::new(self.cfg.monitor.clone());
        let upgrade_setup = self.upgrade;
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
            log_opts: self.cfg.logs.clone(),
            capture: self.capture,
            logs: HashMap::new(),
            cgroups: self.cgroups,
            limits: self.limits,
            health: self.cfg.health.clone(),
            probes: HashMap::new(),
            check: self.cfg.check.clone(),
            checks: HashMap::new(),
        };
        let mut monitors_open = true;
        let mut commands_open = true;
        let mut mercy_at: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        // the new image of a hot upgrade: the table first, then the
        // monitors, whose scans are decided against it
        if let Some(r) = self.restored {
            let ids = upgrade_setup.as_ref().map(|u| u.sources.as_slice());
            let pending = upgrade::restore(&mut rec, &mut exec, r, ids);
            exec.execute(&mut rec, pending.actions);
            if pending.shutdown {
                let actions = Self::begin_shutdown(&mut rec, &mut mercy_at, self.cfg.reload_mercy);
                exec.execute(&mut rec, actions);
            }
            if let Some(l) = lifecycle.as_mut() {
                l.ready(&rec);
            }
        }
        let mut cluster = self
            .cluster
            .map(|engine| ClusterLink::start(engine, &mut rec));
        let mut monitor_tasks = Vec::new();
        for (i, m) in self.monitors.into_iter().enumerate() {
            let ctx = MonitorContext::new(i, opts.clone(), mon_tx.clone(), rescan_rx.clone());
            monitor_tasks.push(tokio::spawn(m.run(ctx)));
        }
        drop(mon_tx);
        let mut next_deadline = None;
        let mut deadline_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if rec.is_shutting_down() && rec.running() == 0 {
                break;
            }
            // the next deadline is a walk of the whole table: one computed
            // less than DEADLINE_REUSE ago serves again (a storm at 10,000
            // vassals has a turn every few microseconds), and the loop
            // wakes by then to compute it afresh, so no timer fires more
            // than DEADLINE_REUSE late (one that has passed is computed
            // afresh: its timer has just been run)
            let reuse = deadline_at
                .filter(|at| now.saturating_duration_since(*at) < DEADLINE_REUSE)
                .filter(|_| next_deadline.is_none_or(|d| d > now));
            if reuse.is_none() {
                next_deadline = rec.next_deadline().map(Instant::from_std);
                deadline_at = Some(now);
            }
            let timers_at = next_deadline;
            let recompute_at = reuse.map(|at| at + DEADLINE_REUSE);
            let mut deadline = timers_at;
            let ready_at = readiness.deadline().map(Instant::from_std);
            let serve_at = serve_wait.as_ref().map(|w| Instant::from_std(w.deadline()));
            for extra in [mercy_at, give_up_at, ready_at, serve_at, recompute_at]
                .into_iter()
                .flatten()
            {
                deadline = Some(deadline.map_or(extra, |d| d.min(extra)));
            }
            let mut timer_fired = false;
            let mut batch_began: Option<Instant> = None;
            let actions = tokio::select! {
                biased;
                Some(r) = exec.reports.1.recv() => {
                    batch_began = Some(Instant::now());
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
                    Some(Command::Inspect(f)) => { f(&rec); Vec::new() }
                    Some(Command::Apply(f)) => f(&mut rec, Instant::now().into_std()),
                    Some(Command::Logs { vassal, reply }) => { let _ = reply.send(exec.log_lookup(&rec, &vassal)); Vec::new() }
                    Some(Command::ReopenLogs) => { exec.reopen_logs(); Vec::new() }
                    Some(Command::Upgrade(req)) => {
                        // returns only when refused
                        let inputs = upgrade::Inputs { commands: &mut commands, monitors: &mut mon_rx };
                        let pending = upgrade::perform(&mut rec, &mut exec, upgrade_setup.as_ref(), req, inputs, &mut lifecycle).await;
                        let mut actions = pending.actions;
                        if pending.rescan {
                            rescan_tx.send_modify(|n| *n += 1);
                        }
                        if pending.shutdown {
                            actions.extend(Self::begin_shutdown(&mut rec, &mut mercy_at, self.cfg.reload_mercy));
                        }
                        actions
                    }
                },
                Some(o) = recv_cluster(&mut cluster) => {
                    let now = Instant::now().into_std();
                    match o {
                        crate::cluster::ClusterOutput::Place(n) => rec.place(&n, None, "", now),
                        crate::cluster::ClusterOutput::Unplace(n, why, epoch) => rec.place(&n, Some(epoch), why, now),
                    }
                }
                m = mon_rx.recv(), if monitors_open => match m {
                    Some(m) => {
                        batch_began = Some(Instant::now());
                        // what else the monitors queued is carried out in
                        // the same turn, each change with its reaction
                        // noted, before the next deadline is computed again
                        // (a walk of the whole table): a directory emptied
                        // at once queues one removal per config
                        let mut next = Some(m);
                        let mut batch = 0;
                        while let Some(m) = next.take() {
                            let now = Instant::now().into_std();
                            readiness.observe(m.monitor, &m.change, now);
                            let actions = rec.monitor_change(m.monitor, m.change, now);
                            let n = actions.len();
                            exec.execute(&mut rec, actions);
                            if n > 0 {
                                rec.note(Event::Reacted { monitor: m.monitor, latency: m.seen.elapsed(), actions: n });
                            }
                            batch += 1;
                            if batch < REPORT_BATCH {
                                next = mon_rx.try_recv().ok();
                            }
                        }
                        Vec::new()
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
                        // (woken to compute the deadline afresh: no timer
                        // is due unless that one was)
                        timer_fired = timers_at.is_some_and(|t| t <= now);
                        Vec::new()
                    }
                }
            };
            // woken much later than the deadline it slept until: the emperor
            // itself was frozen (SIGSTOP, a VM pause). What the vassals sent
            // meanwhile is still unread in their sockets: give every
            // deadline that ran out during the pause a fresh start before
            // anything is judged, whatever woke the loop first
            // a batch's own work is not a pause of the emperor
            let woke = batch_began.take().unwrap_or_else(Instant::now);
            if let Some(d) = deadline {
                let late = woke.saturating_duration_since(d.max(now));
                if late > PAUSE_TOLERANCE {
                    rec.emperor_was_paused(late, woke.into_std());
                }
            }
            let mut actions = actions;
            if timer_fired {
                actions.extend(rec.tick(woke.into_std()));
            }
            let _ = now;
            exec.execute(&mut rec, actions);
            if let Some(c) = cluster.as_mut() {
                c.tell(&mut rec, &exec);
            }
            if rec.take_rescan_wanted() {
                rescan_tx.send_modify(|n| *n += 1);
            }
            let std_now = Instant::now().into_std();
            let mut became_ready = readiness.poll(std_now);
            if became_ready && self.cfg.ready_wait {
                // READY=1 waits until the initial vassals serve
                became_ready = false;
                serve_wait = Some(ServeWait::new(&rec, std_now));
            }
            if serve_wait
                .as_mut()
                .is_some_and(|w| rec.is_shutting_down() || w.done(&rec, std_now))
            {
                serve_wait = None;
                became_ready = !rec.is_shutting_down();
            }
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
        // the monitors see the emperor go and close their sessions (the
        // amqp:// queue is deleted, connections are closed cleanly); the
        // cluster engine gives its lease up, now that nothing runs here
        drop(mon_rx);
        if let Some(c) = cluster.take() {
            monitor_tasks.push(c.finish());
        }
        let closing = futures::future::join_all(monitor_tasks);
        if tokio::time::timeout(Duration::from_secs(2), closing)
            .await
            .is_err()
        {
            tracing::debug!("a monitor did not end within 2 s of the shutdown");
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
        // nothing a vassal started outlives the emperor's shutdown
        if let Some(c) = &exec.cgroups {
            c.finish();
        }
        if let Some(l) = &exec.limits {
            l.finish();
        }
        // what the vassals wrote last is in the files before the emperor goes
        if let Some(c) = exec.capture.take() {
            c.finish(Duration::from_secs(5));
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

/// The loop's side of the cluster engine (`--emperor-cluster`).
struct ClusterLink {
    inputs: mpsc::UnboundedSender<crate::cluster::ClusterInput>,
    outputs: mpsc::UnboundedReceiver<crate::cluster::ClusterOutput>,
    task: tokio::task::JoinHandle<()>,
}

impl ClusterLink {
    fn start(engine: Box<dyn crate::cluster::ClusterEngine>, rec: &mut Reconciler) -> ClusterLink {
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let view = Arc::new(std::sync::Mutex::new(crate::cluster::ClusterView {
            engine: engine.describe(),
            ..Default::default()
        }));
        rec.set_cluster_view(view.clone());
        tracing::info!(engine = %engine.describe(), "[emperor] cluster: vassals are placed through {}", engine.describe());
        let task = tokio::spawn(engine.run(crate::cluster::ClusterContext {
            inputs: in_rx,
            outputs: out_tx,
            view,
        }));
        ClusterLink {
            inputs: in_tx,
            outputs: out_rx,
            task,
        }
    }

    /// Passes on what the reconciler noted; a wanted vassal's replicas come
    /// from its `[imperium]` section.
    fn tell(&mut self, rec: &mut Reconciler, exec: &Executor) {
        for note in rec.take_cluster_notes() {
            let note = match note {
                crate::cluster::ClusterInput::Want(name, _) => {
                    let replicas = rec
                        .vassal(name.as_str())
                        .and_then(|v| v.desired.as_ref())
                        .and_then(|spec| exec.own_settings(spec).ok())
                        .and_then(|own| own.replicas);
                    crate::cluster::ClusterInput::Want(name, replicas)
                }
                other => other,
            };
            let _ = self.inputs.send(note);
        }
    }

    fn finish(self) -> tokio::task::JoinHandle<()> {
        drop(self.inputs);
        self.task
    }
}

async fn recv_cluster(c: &mut Option<ClusterLink>) -> Option<crate::cluster::ClusterOutput> {
    match c {
        Some(c) => c.outputs.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
