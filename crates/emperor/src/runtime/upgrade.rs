//! A hot upgrade in the loop (docs/upgrade.md): the old image writes its
//! state and re-executes itself from the new binary; the new image reads
//! the state back and watches every vassal process again.
//!
//! Order in the old image: refuse what cannot be carried over (a check or
//! a swap in flight, Ragnarok); block the handled signals; let the other
//! tasks run once (signals already taken become commands, queued bytes are
//! written) and take in what they reported; flush the vassal logs; freeze
//! the reaper (no exit is recorded from here on: the new image reaps what
//! exits meanwhile); write the state into a memfd; run the new binary with
//! `--check-upgrade` on it; make every descriptor the state names
//! inheritable; exec. Anything that fails before the exec undoes what was
//! done and the emperor carries on, with the reason sent back.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::sync::mpsc;

use super::executor::Executor;
use super::vassal::{to_tokio, vassal_task, VassalLink};
use super::{Command, Report, VassalCmd};
use crate::command::UpgradeRequest;
use crate::lifecycle::Lifecycle;
use crate::name::VassalName;
use crate::reconciler::{busy_reason, restore_exit, save_exit, Reconciler};
use crate::spawn::VassalProcess;
use crate::upgrade::{SavedCmd, SavedObserver, SavedPhase, SavedSocket, State, STATE_VERSION};

/// How long the new binary's `--check-upgrade` may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a check of a good binary prints first.
pub const CHECK_OK: &str = "imperium-upgrade-ok";

/// What the emperor needs to re-execute itself.
#[derive(Debug)]
pub struct UpgradeSetup {
    /// The binary it was started from (the default new binary).
    pub exe: PathBuf,
    /// Its command line, argv[0] first.
    pub argv: Vec<OsString>,
    /// The directory it was started in.
    pub cwd: PathBuf,
    /// Its observers' listening sockets (duplicates): what each serves,
    /// its address, the descriptor.
    pub observers: Vec<(String, String, OwnedFd)>,
    /// Each monitor's source identity, in order (see
    /// [`crate::upgrade::State::sources`]).
    pub sources: Vec<String>,
    /// Its command line with its config files expanded.
    pub settings: Vec<String>,
}

/// The state a previous image of the emperor left for this one.
#[derive(Debug)]
pub struct Restored {
    /// The state.
    pub state: State,
    /// Every descriptor it names, owned now.
    pub fds: HashMap<i32, OwnedFd>,
    /// When this image began reading it.
    pub since: std::time::Instant,
    /// What the answer to the client that asked adds (what a
    /// `--reread-config` changed).
    pub note: Option<String>,
}

impl Restored {
    /// The state in `$IMPERIUM_UPGRADE_STATE`, when this image is the new
    /// image of a hot upgrade (`None` otherwise). Takes every descriptor
    /// it names.
    pub fn take() -> Result<Option<Restored>, crate::upgrade::StateError> {
        let since = std::time::Instant::now();
        let Some(fd) = crate::spawn::take_inherited_fd(crate::upgrade::STATE_VAR)? else {
            return Ok(None);
        };
        let mut f = std::fs::File::from(fd);
        f.rewind()?;
        let state = crate::upgrade::read_state(&mut f)?;
        let fds = crate::spawn::adopt_fds(&state.fds())?;
        Ok(Some(Restored {
            state,
            fds,
            since,
            note: None,
        }))
    }

    /// The listening socket of the observer `what` (`stats`, `metrics`,
    /// `control`, `command`) and its address, if the previous image had one
    /// (it is then not bound again: its address stays, whatever the config
    /// says now).
    pub fn observer(&mut self, what: &str) -> Option<(String, OwnedFd)> {
        let o = self.state.observers.iter().find(|o| o.what == what)?;
        let fd = self.fds.remove(&o.fd)?;
        Some((o.addr.clone(), fd))
    }
}

/// The loop's inputs an upgrade takes in before the exec.
pub(super) struct Inputs<'a> {
    /// Operators' and observers' commands.
    pub(super) commands: &'a mut mpsc::Receiver<Command>,
    /// Monitor changes.
    pub(super) monitors: &'a mut mpsc::Receiver<crate::monitor::MonitorMessage>,
}

/// Undoes the steps of an upgrade that did not happen: the signals
/// blocked, the directory changed for the exec.
struct Undo {
    cwd: Option<PathBuf>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(d) = &self.cwd {
            let _ = std::env::set_current_dir(d);
        }
        let _ = crate::spawn::handled_signals().thread_unblock();
    }
}

/// Carries out (or refuses) one upgrade request. Returns only when it was
/// refused (the reason has been sent back and logged), with what the
/// signals taken meanwhile ask for.
pub(super) async fn perform(
    rec: &mut Reconciler,
    exec: &mut Executor,
    setup: Option<&UpgradeSetup>,
    mut req: UpgradeRequest,
    inputs: Inputs<'_>,
    lifecycle: &mut Option<Box<dyn Lifecycle>>,
) -> Pending {
    let began = std::time::Instant::now();
    let mut pending = Vec::new();
    let why = match attempt(
        rec,
        exec,
        setup,
        &mut req,
        (inputs, &mut pending),
        lifecycle,
    )
    .await
    {
        Ok(never) => match never {},
        Err(why) => why,
    };
    tracing::error!(
        "[emperor] upgrade refused after {} ms: {why}; the emperor carries on",
        began.elapsed().as_millis()
    );
    if let Some(tx) = req.refused.take() {
        let _ = tx.send(why);
    }
    act_on_pending(rec, exec, &pending)
}

async fn attempt(
    rec: &mut Reconciler,
    exec: &mut Executor,
    setup: Option<&UpgradeSetup>,
    req: &mut UpgradeRequest,
    (mut inputs, pending): (Inputs<'_>, &mut Vec<String>),
    lifecycle: &mut Option<Box<dyn Lifecycle>>,
) -> Result<std::convert::Infallible, String> {
    let Some(setup) = setup else {
        return Err("this emperor was not given its command line to re-execute".into());
    };
    if let Some(why) = busy(rec, exec) {
        return Err(why);
    }
    if req.reread_config && req.binary.is_some() {
        return Err("--reread-config re-executes the same binary: give no --binary with it".into());
    }
    let binary = req.binary.clone().unwrap_or_else(|| setup.exe.clone());
    if !binary.is_absolute() {
        return Err(format!("{}: give an absolute path", binary.display()));
    }
    tracing::info!(
        "[emperor] upgrading in place to {} ({} vassals)",
        binary.display(),
        rec.vassals().count()
    );
    let mut undo = Undo { cwd: None };
    crate::spawn::handled_signals()
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    warn_threads_taking_signals();
    // the signals already taken become commands, the vassals' tasks write
    // what is queued for them, and what they report is taken in
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    drain(rec, exec, &mut inputs, pending);
    if let Some(why) = busy(rec, exec).or_else(|| half_written(exec)) {
        return Err(why);
    }
    if let Some(c) = &exec.capture {
        c.finish(Duration::from_secs(2));
    }
    let frozen = crate::spawn::freeze_reaper();
    let answer = req.answer.take();
    let state = save(
        rec,
        exec,
        setup,
        answer.as_ref(),
        (pending.clone(), req.reread_config),
    );
    let memfd = state
        .to_memfd()
        .map_err(|e| format!("cannot write the state: {e}"))?;
    let checked = check_binary(&binary, &memfd);
    if let Err(e) = checked {
        req.answer = answer;
        drop(frozen);
        return Err(e);
    }
    // from here on: the descriptors survive the exec
    let fds = inheritable_fds(exec, setup, answer.as_ref());
    let pipes = |yes| {
        exec.capture
            .as_ref()
            .map_or(Ok(()), |c| c.set_pipes_inheritable(yes))
    };
    let made = set_all(&fds, true)
        .and_then(|()| pipes(true))
        .and_then(|()| crate::spawn::set_inheritable(memfd.as_fd(), true));
    let why = match made {
        Err(e) => format!("cannot hand a descriptor on to the new image: {e}"),
        Ok(()) => {
            if let Some(l) = lifecycle.as_mut() {
                l.reloading(false);
            }
            undo.cwd = std::env::current_dir().ok();
            let e = exec_image(&binary, setup, memfd.as_raw_fd());
            if let Some(l) = lifecycle.as_mut() {
                l.reloading(true);
            }
            format!("cannot execute {}: {e}", binary.display())
        }
    };
    let _ = set_all(&fds, false);
    let _ = pipes(false);
    drop(fds);
    req.answer = answer;
    drop(frozen);
    Err(why)
}

fn set_all(fds: &[std::os::fd::BorrowedFd<'_>], yes: bool) -> std::io::Result<()> {
    for fd in fds {
        crate::spawn::set_inheritable(*fd, yes)?;
    }
    Ok(())
}

/// Why no upgrade can start now (a check, a swap, Ragnarok), if so.
fn busy(rec: &Reconciler, exec: &Executor) -> Option<String> {
    busy_reason(rec).or_else(|| {
        (!exec.checks.is_empty()).then(|| {
            "a reload check is running (--emperor-reload-mode checked); try again once it is done"
                .to_string()
        })
    })
}

/// A vassal whose config push is half written (it does not read its
/// socket): the rest would be lost.
fn half_written(exec: &Executor) -> Option<String> {
    let l = exec
        .handles
        .values()
        .find(|l| l.partial.load(std::sync::atomic::Ordering::SeqCst))?;
    Some(format!(
        "vassal {} has not read a config push the emperor began to write on its socket; try again once it reads it",
        l.name
    ))
}

fn warn_threads_taking_signals() {
    let open = threads_taking_signals();
    if !open.is_empty() {
        tracing::warn!(
            "[emperor] thread(s) started by a library do not block the emperor's signals ({}): a signal they take before the exec is lost",
            open.join(", ")
        );
    }
}

/// The handled signals as /proc's `SigBlk` shows them (bit N-1 for
/// signal N).
fn handled_mask() -> u64 {
    crate::spawn::handled_signals()
        .iter()
        .fold(0, |m, s| m | 1 << (s as i32 - 1))
}

/// The threads other than the loop's that may take a handled signal (their
/// `SigBlk` in /proc lacks one), by name.
fn threads_taking_signals() -> Vec<String> {
    let handled = handled_mask();
    let me = nix::unistd::gettid().as_raw().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if t.file_name().to_string_lossy() == me {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let blocked = field("SigBlk:")
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .unwrap_or(0);
        if blocked & handled != handled {
            out.push(field("Name:").unwrap_or_default());
        }
    }
    out
}

/// Takes in what the vassals' tasks reported and the commands queued,
/// so that the state is written after them. Signals become `pending`
/// names for the new image.
fn drain(
    rec: &mut Reconciler,
    exec: &mut Executor,
    inputs: &mut Inputs<'_>,
    pending: &mut Vec<String>,
) {
    for _ in 0..64 {
        let mut any = false;
        // what a push source (amqp://, zmq://) sent is not sent again
        while let Ok(m) = inputs.monitors.try_recv() {
            any = true;
            let actions = rec.monitor_change(m.monitor, m.change, std::time::Instant::now());
            exec.execute(rec, actions);
        }
        while let Ok(r) = exec.reports.1.try_recv() {
            any = true;
            let actions = exec.report(rec, r);
            exec.execute(rec, actions);
        }
        while let Ok(c) = inputs.commands.try_recv() {
            any = true;
            let name = match c {
                Command::ReloadAll => "reload-all",
                Command::Shutdown => "shutdown",
                Command::ClearBlacklist => "clear-blacklist",
                Command::LogVassals => "log-vassals",
                Command::Rescan => "rescan",
                Command::ReopenLogs => "reopen-logs",
                Command::Inspect(f) => {
                    f(rec);
                    continue;
                }
                Command::Apply(f) => {
                    let actions = f(rec, std::time::Instant::now());
                    exec.execute(rec, actions);
                    continue;
                }
                Command::Logs { vassal, reply } => {
                    let _ = reply.send(exec.log_lookup(rec, &vassal));
                    continue;
                }
                Command::Upgrade(mut other) => {
                    if let Some(tx) = other.refused.take() {
                        let _ = tx.send("another upgrade is in progress".into());
                    }
                    continue;
                }
            };
            pending.push(name.to_string());
        }
        if !any {
            return;
        }
    }
}

/// The state of the emperor now, with the descriptors of every process.
fn save(
    rec: &Reconciler,
    exec: &Executor,
    setup: &UpgradeSetup,
    answer: Option<&OwnedFd>,
    (pending, reread_config): (Vec<String>, bool),
) -> State {
    let now = std::time::Instant::now();
    let (mut vassals, blacklist) = rec.save_table(now);
    for v in &mut vassals {
        let (SavedPhase::Running { proc } | SavedPhase::Stopping { proc, .. }) = &mut v.phase
        else {
            continue;
        };
        let Some(link) = exec.handles.get(&proc.instance) else {
            // never watched (cannot happen): the new image respawns it
            proc.exited = Some(crate::upgrade::SavedExit::Code(-1));
            continue;
        };
        proc.cgroup = link
            .cgroup
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        proc.v1 = link
            .v1
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        proc.log = link.log.as_ref().map(|(l, _)| l.name().to_string());
        if let Some(st) = link.child.reaped() {
            // reaped, not yet acted on: the new image acts on the exit
            proc.exited = Some(save_exit(st));
            continue;
        }
        proc.ctrl_fd = link.ctrl.as_raw_fd();
        proc.config_fd = link.config.as_ref().map(AsRawFd::as_raw_fd);
        proc.queued = link
            .queued()
            .iter()
            .map(|c| match c {
                VassalCmd::Byte(b) => SavedCmd::Byte(*b),
                VassalCmd::Config(t) => SavedCmd::Config(t.to_string()),
            })
            .collect();
    }
    let on_demand = exec
        .listeners
        .iter()
        .map(|(name, l)| SavedSocket {
            name: name.to_string(),
            address: l.address().to_string(),
            fd: l.raw_fd(),
        })
        .collect();
    let logs = exec
        .capture
        .as_ref()
        .map(|c| {
            c.pipes()
                .into_iter()
                .map(|(name, fd)| SavedSocket {
                    name: name.to_string(),
                    address: String::new(),
                    fd,
                })
                .collect()
        })
        .unwrap_or_default();
    State {
        version: STATE_VERSION,
        writer: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        argv: setup
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        cwd: setup.cwd.to_string_lossy().into_owned(),
        monitors: rec.monitors().iter().map(|m| m.url.clone()).collect(),
        next_instance: rec.next_instance(),
        broodlord_num: exec.broodlord_num,
        vassals,
        blacklist,
        on_demand,
        logs,
        observers: setup
            .observers
            .iter()
            .map(|(what, addr, fd)| SavedObserver {
                what: what.clone(),
                addr: addr.clone(),
                fd: fd.as_raw_fd(),
            })
            .collect(),
        reply_fd: answer.map(AsRawFd::as_raw_fd),
        pending,
        counters: serde_json::to_value(rec.counters()).unwrap_or_default(),
        cgroup_root: exec
            .cgroups
            .as_ref()
            .map(|c| c.root().to_string_lossy().into_owned()),
        cgroup_owned_root: exec.cgroups.as_ref().is_some_and(|c| c.owns_root()),
        sources: setup.sources.clone(),
        settings: setup.settings.clone(),
        reread_config,
    }
}

/// Every descriptor the state names (but the memfd).
fn inheritable_fds<'a>(
    exec: &'a Executor,
    setup: &'a UpgradeSetup,
    answer: Option<&'a OwnedFd>,
) -> Vec<std::os::fd::BorrowedFd<'a>> {
    let mut v = Vec::new();
    for link in exec.handles.values() {
        if link.child.reaped().is_some() {
            continue;
        }
        v.push(link.ctrl.as_fd());
        if let Some(c) = &link.config {
            v.push(c.as_fd());
        }
    }
    v.extend(exec.listeners.values().map(|l| l.fd()));
    v.extend(setup.observers.iter().map(|(_, _, fd)| fd.as_fd()));
    v.extend(answer.map(AsFd::as_fd));
    v
}

/// Runs `binary --check-upgrade -` on the state: it must exit 0 and say
/// [`CHECK_OK`] within [`CHECK_TIMEOUT`].
fn check_binary(binary: &Path, memfd: &OwnedFd) -> Result<(), String> {
    let input = std::fs::File::open(format!("/proc/self/fd/{}", memfd.as_raw_fd()))
        .map_err(|e| format!("cannot read the state back: {e}"))?;
    let out = nix::sys::memfd::memfd_create(
        c"imperium-upgrade-check",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .map_err(|e| format!("cannot make room for the check's output: {e}"))?;
    let mut out = std::fs::File::from(out);
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot make room for the check's output: {e}"))?;
    let mut child = std::process::Command::new(binary)
        .arg(crate::upgrade::CHECK_ARG)
        .arg("-")
        .stdin(input)
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let deadline = std::time::Instant::now() + CHECK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} {} did not answer within {} s",
                    binary.display(),
                    crate::upgrade::CHECK_ARG,
                    CHECK_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for the check: {e}")),
        }
    };
    let mut text = String::new();
    let _ = out.rewind();
    let _ = (&mut out).take(4096).read_to_string(&mut text);
    let said = text.trim();
    let said = if said.is_empty() { "nothing" } else { said };
    if !status.success() {
        return Err(format!(
            "{} {} failed ({status}): {said}",
            binary.display(),
            crate::upgrade::CHECK_ARG
        ));
    }
    if !said.starts_with(CHECK_OK) {
        return Err(format!(
            "{} is not an imperium that can adopt this emperor ({} said: {said})",
            binary.display(),
            crate::upgrade::CHECK_ARG
        ));
    }
    tracing::info!(
        "[emperor] {} {}: {said}",
        binary.display(),
        crate::upgrade::CHECK_ARG
    );
    Ok(())
}

/// Re-executes this process from `binary` with its command line, in the
/// directory it was started in, with the state's fd in
/// `$IMPERIUM_UPGRADE_STATE`. The signal mask is kept (the handled
/// signals stay blocked until the new image handles them). Returns only
/// on failure.
fn exec_image(binary: &Path, setup: &UpgradeSetup, state_fd: i32) -> std::io::Error {
    use std::ffi::CString;
    let c = |b: &[u8]| CString::new(b).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL));
    let build = || -> std::io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = c(binary.as_os_str().as_bytes())?;
        let argv = setup
            .argv
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            if k == crate::upgrade::STATE_VAR {
                continue;
            }
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(c(&kv)?);
        }
        env.push(c(
            format!("{}={state_fd}", crate::upgrade::STATE_VAR).as_bytes()
        )?);
        Ok((path, argv, env))
    };
    let (path, argv, env) = match build() {
        Ok(b) => b,
        Err(e) => return e,
    };
    if let Err(e) = std::env::set_current_dir(&setup.cwd) {
        return e;
    }
    match nix::unistd::execve(&path, &argv, &env) {
        Ok(never) => match never {},
        Err(e) => e.into(),
    }
}

/// What the signals the old image had taken but not acted on ask for.
pub(super) struct Pending {
    /// Their actions.
    pub(super) actions: Vec<crate::reconciler::Action>,
    /// A shutdown was asked for.
    pub(super) shutdown: bool,
    /// A rescan was asked for (SIGWINCH; the new image's monitors scan
    /// anew anyway).
    pub(super) rescan: bool,
}

/// The new image: puts the saved table back and watches every process
/// again; answers the control client that asked.
pub(super) fn restore(
    rec: &mut Reconciler,
    exec: &mut Executor,
    mut r: Restored,
    sources: Option<&[String]>,
) -> Pending {
    let now = std::time::Instant::now();
    let s = &r.state;
    // each vassal keeps its source, found by its identity (--reread-config
    // may have added and removed sources)
    let shown: Vec<String> = rec.monitors().iter().map(|m| m.url.clone()).collect();
    let (old, new) = match sources {
        Some(ids) if !s.sources.is_empty() => (&s.sources, ids.to_vec()),
        _ => (&s.monitors, shown),
    };
    let map: Vec<Option<usize>> = old
        .iter()
        .map(|u| new.iter().position(|n| n == u))
        .collect();
    let sourceless = match rec.restore_table(
        &s.vassals,
        &s.blacklist,
        (s.next_instance, &map),
        &s.counters,
        now,
    ) {
        Ok(gone) => gone,
        Err(e) => {
            tracing::error!("[emperor] the upgrade state cannot be put back: {e}");
            Vec::new()
        }
    };
    exec.broodlord_num = s.broodlord_num;
    let logs = restore_logs(rec, exec, s, &mut r.fds);
    for o in &s.on_demand {
        let Some(fd) = r.fds.remove(&o.fd) else {
            continue;
        };
        if let Err(e) =
            exec.adopt_listener(rec, VassalName::derived(o.name.clone()), &o.address, fd)
        {
            tracing::error!(vassal = %o.name, "[emperor] cannot hold the on-demand socket of {} again: {e}", o.name);
        }
    }
    let mut procs = 0;
    for v in &s.vassals {
        let (SavedPhase::Running { proc } | SavedPhase::Stopping { proc, .. }) = &v.phase else {
            continue;
        };
        if let Some(st) = proc.exited {
            // it exited while the emperor re-executed: acted on like any
            // other exit
            let _ = exec
                .reports
                .0
                .send(Report::Exited(proc.instance, restore_exit(st)));
            continue;
        }
        procs += 1;
        let name = VassalName::derived(v.name.clone());
        watch_again(exec, &name, proc, &logs, &mut r.fds);
        let running = matches!(v.phase, SavedPhase::Running { .. });
        if let Some(spec) = rec
            .vassal(name.as_str())
            .and_then(|v| v.desired.clone())
            .filter(|_| running)
        {
            exec.restart_probe(rec, proc.instance, &spec);
        }
    }
    adopt_orphans(s);
    let took = r.since.elapsed().as_millis();
    tracing::info!(
        "[emperor] upgraded in place (state version {} from imperium {}): adopted {} vassals and {procs} processes in {took} ms",
        s.version,
        s.writer,
        s.vassals.len(),
    );
    if let Some(fd) = s.reply_fd.and_then(|fd| r.fds.remove(&fd)) {
        let reply = crate::control::Reply {
            ok: true,
            message: Some(format!(
                "upgraded in place: pid {}, {} vassals and {procs} processes adopted in {took} ms{}",
                std::process::id(),
                s.vassals.len(),
                r.note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
            )),
            ..Default::default()
        };
        answer(fd, &reply);
    }
    let mut pending = act_on_pending(rec, exec, &s.pending);
    if !sourceless.is_empty() {
        tracing::info!(
            "[emperor] --reread-config: {} vassal(s) of sources no longer configured are stopped",
            sourceless.len()
        );
        pending
            .actions
            .extend(rec.source_gone(&sourceless, std::time::Instant::now()));
    }
    // descriptors nobody claimed (an observer no longer configured)
    r.fds.clear();
    pending
}

/// What else the previous image had started (a hook, a probe command)
/// runs on: reaped when it exits.
fn adopt_orphans(s: &State) {
    let vassals: std::collections::HashSet<u32> = s
        .vassals
        .iter()
        .filter_map(|v| match &v.phase {
            SavedPhase::Running { proc } | SavedPhase::Stopping { proc, .. } => Some(proc.pid),
            _ => None,
        })
        .collect();
    let orphans: Vec<u32> = crate::spawn::children()
        .into_iter()
        .filter(|p| !vassals.contains(p))
        .collect();
    if !orphans.is_empty() {
        tracing::info!(
            "[emperor] {} process(es) the previous image started (hooks, probe commands) run on; they are reaped when they exit: {orphans:?}",
            orphans.len()
        );
        crate::spawn::adopt_orphans(orphans);
    }
}

/// The output pipes the previous image read, read again.
fn restore_logs(
    rec: &mut Reconciler,
    exec: &mut Executor,
    s: &State,
    fds: &mut HashMap<i32, OwnedFd>,
) -> HashMap<String, Arc<crate::logs::LogHandle>> {
    let mut logs = HashMap::new();
    for l in &s.logs {
        let (Some(c), Some(fd)) = (&exec.capture, fds.remove(&l.fd)) else {
            continue;
        };
        let name = VassalName::derived(l.name.clone());
        match c.adopt(&name, fd) {
            Ok(h) => {
                rec.restore_log(&l.name, &h);
                exec.logs.insert(name, Arc::downgrade(&h));
                logs.insert(l.name.clone(), h);
            }
            Err(e) => {
                tracing::error!(vassal = %l.name, "[emperor] cannot read the output pipe of {} again: {e}", l.name)
            }
        }
    }
    logs
}

/// Watches a process of the previous image again: its sockets, its exit,
/// what was queued for it.
fn watch_again(
    exec: &mut Executor,
    name: &VassalName,
    proc: &crate::upgrade::SavedProc,
    logs: &HashMap<String, Arc<crate::logs::LogHandle>>,
    fds: &mut HashMap<i32, OwnedFd>,
) {
    let child = VassalProcess::adopt(proc.pid);
    let ctrl = fds
        .remove(&proc.ctrl_fd)
        .map(std::os::unix::net::UnixStream::from);
    let ctrl = match ctrl.map(to_tokio) {
        Some(Ok(c)) => c,
        other => {
            let e = match other {
                Some(Err(e)) => e.to_string(),
                _ => "its descriptor is missing".into(),
            };
            tracing::error!(vassal = %name, "[emperor] cannot watch the control socket of {name} again ({e}): killing it");
            let _ = child.kill();
            // its task still waits for the exit, on a socket of its own
            let Some(c) = std::os::unix::net::UnixStream::pair()
                .ok()
                .and_then(|(a, _)| to_tokio(a).ok())
            else {
                return;
            };
            c
        }
    };
    let config = proc
        .config_fd
        .and_then(|fd| fds.remove(&fd))
        .and_then(|fd| to_tokio(std::os::unix::net::UnixStream::from(fd)).ok());
    let log = proc
        .log
        .as_ref()
        .and_then(|n| logs.get(n))
        .map(|h| (h.0.clone(), h.0.next_seq()));
    let queue: VecDeque<VassalCmd> = proc
        .queued
        .iter()
        .map(|c| match c {
            SavedCmd::Byte(b) => VassalCmd::Byte(*b),
            SavedCmd::Config(t) => VassalCmd::Config(t.as_str().into()),
        })
        .collect();
    let link = Arc::new(VassalLink {
        name: name.clone(),
        ctrl,
        child,
        config,
        queue: std::sync::Mutex::new(queue),
        waker: AtomicWaker::new(),
        overflowed: Default::default(),
        partial: Default::default(),
        log,
        cgroup: proc.cgroup.as_ref().map(PathBuf::from),
        v1: proc.v1.iter().map(PathBuf::from).collect(),
    });
    for fd in [
        Some(link.ctrl.as_fd()),
        link.config.as_ref().map(AsFd::as_fd),
    ]
    .into_iter()
    .flatten()
    {
        let _ = crate::spawn::set_inheritable(fd, false);
    }
    exec.handles.insert(proc.instance, link.clone());
    tokio::spawn(vassal_task(proc.instance, link, exec.reports.0.clone()));
}

/// Acts on the signals taken during an upgrade but not acted on (by the
/// previous image, or by this one when the upgrade was refused).
fn act_on_pending(rec: &mut Reconciler, exec: &mut Executor, names: &[String]) -> Pending {
    let mut pending = Pending {
        actions: Vec::new(),
        shutdown: false,
        rescan: false,
    };
    for p in names {
        let now = std::time::Instant::now();
        tracing::info!("[emperor] acting on {p}, asked for during the upgrade");
        match p.as_str() {
            "reload-all" => pending.actions.extend(rec.reload_all()),
            "shutdown" => pending.shutdown = true,
            "clear-blacklist" => pending.actions.extend(rec.clear_blacklist_all(now).1),
            "log-vassals" => rec.log_vassals(),
            "reopen-logs" => exec.reopen_logs(),
            "rescan" => pending.rescan = true,
            other => {
                tracing::warn!("[emperor] unknown pending command {other:?} in the upgrade state")
            }
        }
    }
    pending
}

/// Writes the new image's answer to the control client that asked.
fn answer(fd: OwnedFd, reply: &crate::control::Reply) {
    let mut text = serde_json::to_string(reply).unwrap_or_default();
    text.push('\n');
    let s = std::os::unix::net::UnixStream::from(fd);
    let _ = crate::spawn::set_inheritable(s.as_fd(), false);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let Ok(mut s) = to_tokio(s) else { return };
        let _ = tokio::time::timeout(Duration::from_secs(10), s.write_all(text.as_bytes())).await;
        let _ = s.shutdown().await;
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_handled_mask_is_what_proc_shows_for_the_reapers_thread() {
        // SigBlk of a thread that blocked them, read on this kernel
        assert_eq!(super::handled_mask(), 0x0840_4a07);
    }
}
