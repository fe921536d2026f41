//! The one thread that writes captured vassal output: into the emperor's
//! own log (`prefix`) or into one file per vassal (`dir:DIR`).
//!
//! The readers hand it batches of lines through a queue bounded in bytes
//! ([`QUEUE_BYTES`]); when it is full the batch is dropped and counted, so
//! a slow disk or a slow log reader never makes the emperor wait.
//!
//! Files are opened relative to the directory opened at start-up, with
//! `O_NOFOLLOW` and `O_NONBLOCK`, and used only when they are a regular
//! file with one link: a symlink, a FIFO or a hard link planted in the
//! directory is refused, never followed. A new file gets mode 0640 and,
//! when the emperor runs as root, the vassal's uid and gid (tyrant mode).
//! At most [`MAX_OPEN`] files are open at once, each closed after
//! [`IDLE_CLOSE`] without writes.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{escape, Batch, LogMode, LogOptions, VassalLog};
use crate::listener::LogLimit;
use crate::name::VassalName;

/// The most captured output waiting for the writer, over all vassals.
pub const QUEUE_BYTES: usize = 8 << 20;
/// The most vassal files open at once.
pub const MAX_OPEN: usize = 64;
/// A vassal file is closed after this long without writes.
pub const IDLE_CLOSE: Duration = Duration::from_secs(5);

pub(crate) enum Msg {
    Write(Arc<VassalLog>, Batch),
    Reopen,
    /// Acknowledged once everything queued before it is written.
    Flush(mpsc::Sender<()>),
}

/// The handle the readers push to.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Write(..) => "Write",
            Msg::Reopen => "Reopen",
            Msg::Flush(_) => "Flush",
        })
    }
}

/// What the thread writes to.
enum Target {
    Prefix { json: bool },
    Dir(Files),
}

impl Writer {
    /// Opens the directory (creating it when missing) and starts the
    /// thread.
    pub(crate) fn start(opts: &LogOptions) -> io::Result<Writer> {
        let target = match &opts.mode {
            LogMode::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
                })?;
                let d = nix::fcntl::open(
                    dir.as_path(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| {
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!("cannot open {}: {e}", dir.display()),
                    )
                })?;
                Target::Dir(Files {
                    dir: d,
                    max_size: opts.max_size,
                    keep: opts.keep,
                    open: HashMap::new(),
                    failed: LogLimit::new(),
                })
            }
            _ => Target::Prefix { json: opts.json },
        };
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        std::thread::Builder::new()
            .name("vassal-logs".into())
            .spawn(move || {
                crate::spawn::block_signals_in_this_thread();
                run(&rx, &q, target);
            })?;
        Ok(Writer { tx, queued })
    }

    /// Queues a batch; false when the queue is full (the batch is dropped).
    pub(crate) fn push(&self, log: &Arc<VassalLog>, batch: Batch) -> bool {
        let n = batch.data.len();
        if self.queued.fetch_add(n, Ordering::SeqCst) + n > QUEUE_BYTES {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        if self.tx.send(Msg::Write(log.clone(), batch)).is_err() {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// A writer nobody reads (tests of the queue bound), and its queue.
    #[cfg(test)]
    pub(crate) fn stalled() -> (Writer, mpsc::Receiver<Msg>) {
        let (tx, rx) = mpsc::channel();
        let w = Writer {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
        };
        (w, rx)
    }

    /// Bytes waiting for the writer.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub(crate) fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Waits (at most `wait`) until everything queued so far is written.
    pub(crate) fn flush(&self, wait: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Flush(tx)).is_ok() && rx.recv_timeout(wait).is_ok()
    }
}

fn run(rx: &mpsc::Receiver<Msg>, queued: &AtomicUsize, mut target: Target) {
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Target::Dir(f) = &mut target {
                    f.close_idle(Instant::now());
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Write(log, batch) => {
                    queued.fetch_sub(batch.data.len(), Ordering::SeqCst);
                    match &mut target {
                        Target::Prefix { json } => prefix(&log, &batch, *json),
                        Target::Dir(f) => f.write(&log, &batch),
                    }
                }
                Msg::Flush(ack) => {
                    let _ = ack.send(());
                }
                Msg::Reopen => {
                    if let Target::Dir(f) = &mut target {
                        let n = f.open.len();
                        f.open.clear();
                        tracing::info!("[emperor] vassal logs: reopened ({n} files were open)");
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if let Target::Dir(f) = &mut target {
            f.close_idle(Instant::now());
        }
    }
}

/// `prefix`: one line of the emperor's log per line of the vassal.
fn prefix(log: &VassalLog, batch: &Batch, json: bool) {
    let name = log.name();
    for line in batch.data.split(|b| *b == b'\n').take(batch.lines as usize) {
        let text = escape(line);
        if json {
            tracing::info!(target: "vassal", vassal = %name, "{text}");
        } else {
            tracing::info!(target: "vassal", vassal = %name, "[{name}] {text}");
        }
    }
    log.counters().written(batch.lines, batch.data.len() as u64);
}

/// One open vassal file.
struct Open {
    file: std::fs::File,
    size: u64,
    last: Instant,
}

/// `dir:DIR`: the directory and the files open in it.
struct Files {
    dir: OwnedFd,
    max_size: u64,
    keep: u32,
    open: HashMap<VassalName, Open>,
    failed: LogLimit,
}

impl Files {
    fn write(&mut self, log: &VassalLog, batch: &Batch) {
        match self.try_write(log, batch) {
            Ok(()) => log.counters().written(batch.lines, batch.data.len() as u64),
            Err(e) => {
                self.open.remove(log.name());
                log.counters().dropped(batch.lines, batch.data.len() as u64);
                if let Some(held) = self.failed.allow() {
                    tracing::error!(
                        vassal = %log.name(),
                        error = %e,
                        "[emperor] cannot write the log of vassal {} ({}): {e}; its lines are dropped{}",
                        log.name(),
                        file_name(log.name().as_str()),
                        if held > 0 { format!(" ({held} more failures since the last such line)") } else { String::new() }
                    );
                }
            }
        }
    }

    fn try_write(&mut self, log: &VassalLog, batch: &Batch) -> io::Result<()> {
        let name = log.name();
        let mut rest = &batch.data[..];
        while !rest.is_empty() {
            let size = self.file(log)?.size;
            let room = self.max_size.saturating_sub(size) as usize;
            // as many whole lines as fit; a file gets at least one line, so
            // a single line longer than the limit makes a file of its own
            let take = if rest.len() <= room {
                rest.len()
            } else {
                match rest[..room].iter().rposition(|b| *b == b'\n') {
                    Some(i) => i + 1,
                    None if size == 0 => rest
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(rest.len(), |i| i + 1),
                    None => 0,
                }
            };
            if take == 0 {
                self.open.remove(name);
                self.rotate(name);
                continue;
            }
            let o = self.file(log)?;
            o.file.write_all(&rest[..take])?;
            o.size += take as u64;
            o.last = Instant::now();
            rest = &rest[take..];
        }
        Ok(())
    }

    /// The open file of `log`'s vassal, opened (or created) when needed.
    fn file(&mut self, log: &VassalLog) -> io::Result<&mut Open> {
        let name = log.name();
        if !self.open.contains_key(name) {
            if self.open.len() >= MAX_OPEN {
                // the least recently written leaves
                if let Some(oldest) = self
                    .open
                    .iter()
                    .min_by_key(|(_, o)| o.last)
                    .map(|(n, _)| n.clone())
                {
                    self.open.remove(&oldest);
                }
            }
            let file = self.open_file(log)?;
            let size = file.metadata()?.len();
            self.open.insert(
                name.clone(),
                Open {
                    file,
                    size,
                    last: Instant::now(),
                },
            );
        }
        Ok(self.open.get_mut(name).expect("opened above"))
    }

    /// Opens (or creates) the vassal's file, refusing anything but a
    /// regular file with a single link.
    fn open_file(&self, log: &VassalLog) -> io::Result<std::fs::File> {
        let fname = file_name(log.name().as_str());
        let flags = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o640);
        let (fd, created) = match nix::fcntl::openat(
            &self.dir,
            fname.as_str(),
            flags | OFlag::O_CREAT | OFlag::O_EXCL,
            mode,
        ) {
            Ok(fd) => (fd, true),
            Err(nix::errno::Errno::EEXIST) => (
                nix::fcntl::openat(&self.dir, fname.as_str(), flags, Mode::empty())
                    .map_err(|e| refused(&fname, e))?,
                false,
            ),
            Err(e) => return Err(refused(&fname, e)),
        };
        let st = nix::sys::stat::fstat(&fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::other(format!(
                "{fname} is not a regular file; not writing to it"
            )));
        }
        if st.st_nlink != 1 {
            return Err(io::Error::other(format!(
                "{fname} has {} hard links; not writing to it",
                st.st_nlink
            )));
        }
        if created {
            // the umask must not change the documented mode
            nix::sys::stat::fchmod(&fd, mode)?;
            if let Some(o) = log.owner() {
                if nix::unistd::geteuid().is_root() {
                    nix::unistd::fchown(
                        &fd,
                        Some(nix::unistd::Uid::from_raw(o.uid)),
                        Some(nix::unistd::Gid::from_raw(o.gid)),
                    )?;
                }
            }
        }
        Ok(std::fs::File::from(fd))
    }

    /// `.log` becomes `.log.1`, `.log.1` becomes `.log.2`, ..., and
    /// `.log.N` (N = keep) is replaced; with keep 0 the file is removed.
    fn rotate(&self, name: &VassalName) {
        let base = file_name(name.as_str());
        let res = if self.keep == 0 {
            nix::unistd::unlinkat(
                &self.dir,
                base.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
        } else {
            for i in (1..self.keep).rev() {
                let _ = nix::fcntl::renameat(
                    &self.dir,
                    format!("{base}.{i}").as_str(),
                    &self.dir,
                    format!("{base}.{}", i + 1).as_str(),
                );
            }
            nix::fcntl::renameat(
                &self.dir,
                base.as_str(),
                &self.dir,
                format!("{base}.1").as_str(),
            )
        };
        if let Err(e) = res {
            tracing::error!(vassal = %name, error = %e, "[emperor] cannot rotate {base}: {e}");
        }
    }

    fn close_idle(&mut self, now: Instant) {
        self.open
            .retain(|_, o| now.duration_since(o.last) < IDLE_CLOSE);
    }
}

fn refused(fname: &str, e: nix::errno::Errno) -> io::Error {
    match e {
        nix::errno::Errno::ELOOP => {
            io::Error::other(format!("{fname} is a symbolic link; not following it"))
        }
        nix::errno::Errno::ENXIO => {
            io::Error::other(format!("{fname} is a FIFO or a socket; not writing to it"))
        }
        e => io::Error::new(io::Error::from(e).kind(), format!("{fname}: {e}")),
    }
}

/// The file a vassal's output goes to, inside the log directory:
/// `<name>.log`, the name made safe by [`crate::name::file_safe`].
pub fn file_name(name: &str) -> String {
    let mut out = crate::name::file_safe(name);
    out.push_str(".log");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_name("app.ini"), "app.ini.log");
        assert_eq!(file_name("sub/app.ini"), "sub%2Fapp.ini.log");
        assert_eq!(file_name("/etc/x.ini"), "%2Fetc%2Fx.ini.log");
        assert_eq!(file_name(".hidden.ini"), "%2Ehidden.ini.log");
        assert_eq!(file_name("50%.ini"), "50%25.ini.log");
        // distinct names never share a file
        assert_ne!(file_name("a%2Fb.ini"), file_name("a/b.ini"));
        let long = "x".repeat(250) + ".ini";
        let f = file_name(&long);
        assert!(f.len() <= 240, "{}", f.len());
        assert_ne!(f, file_name(&("x".repeat(251) + ".ini")));
        assert!(!f.contains('/'));
    }
}
