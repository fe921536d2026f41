//! Per-vassal output capture (`--vassal-logs`, docs/logs.md).
//!
//! In the capturing modes (`prefix`, `dir:DIR`) every vassal name gets one
//! pipe, kept across the restarts and reloads of that vassal (a broodlord
//! zerg shares its base vassal's). The emperor holds only the read end;
//! each spawn opens a fresh write end through `/proc/self/fd` and puts it
//! on the vassal's fds 1 and 2, so when every process that holds it is
//! gone the reader sees end-of-file, flushes what is left and waits for
//! the next instance. Nothing written just before a respawn is lost: it
//! sits in the same pipe.
//!
//! The reader is one task per pipe. It reads at most [`READ_PER_TURN`]
//! bytes per turn of the loop (non-blocking), splits lines on `\n`, keeps
//! the newest lines in a ring of [`RING_BYTES`] per vassal (`imperium ctl
//! logs`, the death event) and hands the batch to the one writer thread
//! ([`writer`]) through a queue bounded in bytes: a disk or a log reader
//! that cannot keep up makes lines drop (counted, logged once per burst),
//! never the emperor wait.
//!
//! In `journal` mode each spawn gets a fresh stream socket to journald
//! ([`journal`]) and imperium is not in the data path at all.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::listener::LogLimit;
use crate::name::VassalName;
use crate::spec::Owner;

pub mod journal;
pub mod writer;

/// The newest captured output kept in memory per vassal.
pub const RING_BYTES: usize = 64 * 1024;
/// A line longer than this is cut into pieces of this length.
pub const MAX_LINE: usize = 16 * 1024;
/// The most the reader takes from one pipe per turn of the loop.
pub const READ_PER_TURN: usize = 64 * 1024;
/// A partial line (no `\n` yet) is written out after this long.
pub const PARTIAL_FLUSH: Duration = Duration::from_millis(250);
/// The death event carries at most this many of the last lines...
pub const TAIL_LINES: usize = 10;
/// ... and at most this many bytes of them.
pub const TAIL_BYTES: usize = 2048;

/// Where the output of vassals goes (`--vassal-logs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LogMode {
    /// Vassals inherit the emperor's fds 1 and 2 (uWSGI's behaviour).
    #[default]
    Inherit,
    /// Each line goes to the emperor's own log, tagged with the vassal.
    Prefix,
    /// One file per vassal in this directory.
    Dir(PathBuf),
    /// A journald stream socket per vassal, at this path.
    Journal(PathBuf),
}

impl LogMode {
    /// Whether imperium reads the vassals' output itself.
    pub fn captures(&self) -> bool {
        matches!(self, LogMode::Prefix | LogMode::Dir(_))
    }
}

impl std::str::FromStr for LogMode {
    type Err = String;

    fn from_str(s: &str) -> Result<LogMode, String> {
        match s {
            "inherit" => Ok(LogMode::Inherit),
            "prefix" => Ok(LogMode::Prefix),
            "journal" => Ok(LogMode::Journal(PathBuf::from(journal::SOCKET))),
            _ => {
                if let Some(d) = s.strip_prefix("dir:") {
                    if d.is_empty() {
                        return Err("dir: needs a directory (dir:/var/log/uwsgi)".into());
                    }
                    return Ok(LogMode::Dir(PathBuf::from(d)));
                }
                if let Some(p) = s.strip_prefix("journal:") {
                    if p.is_empty() {
                        return Err("journal: needs the socket path".into());
                    }
                    return Ok(LogMode::Journal(PathBuf::from(p)));
                }
                Err(format!(
                    "unknown mode {s:?}: one of inherit, prefix, dir:DIR, journal"
                ))
            }
        }
    }
}

/// Parses a size in bytes with an optional `K`, `M` or `G` suffix (powers
/// of 1024; `KB`, `MiB` and lower case are accepted too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (a number with an optional K, M or G)"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// How vassal output is captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// The mode.
    pub mode: LogMode,
    /// `dir:`: a file is rotated when it would grow past this many bytes.
    pub max_size: u64,
    /// `dir:`: how many rotated files are kept (`.log.1` ... `.log.N`).
    pub keep: u32,
    /// `prefix`: the emperor logs JSON, so the vassal is a field and the
    /// message is the line alone (no `[name]` prefix).
    pub json: bool,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            mode: LogMode::Inherit,
            max_size: 10 << 20,
            keep: 5,
            json: false,
        }
    }
}

/// Counters of one vassal's captured output.
#[derive(Debug, Default)]
pub struct LogCounters {
    lines_written: AtomicU64,
    bytes_written: AtomicU64,
    lines_dropped: AtomicU64,
    bytes_dropped: AtomicU64,
}

/// A copy of [`LogCounters`] (stats, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LogCounts {
    /// Lines written to the vassal's file or the emperor's log.
    pub lines_written: u64,
    /// Their bytes (newlines included).
    pub bytes_written: u64,
    /// Lines dropped because the writer could not keep up (or failed).
    pub lines_dropped: u64,
    /// Their bytes.
    pub bytes_dropped: u64,
}

impl LogCounters {
    pub(crate) fn written(&self, lines: u64, bytes: u64) {
        self.lines_written.fetch_add(lines, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self, lines: u64, bytes: u64) {
        self.lines_dropped.fetch_add(lines, Ordering::Relaxed);
        self.bytes_dropped.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The current values.
    pub fn get(&self) -> LogCounts {
        LogCounts {
            lines_written: self.lines_written.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            lines_dropped: self.lines_dropped.load(Ordering::Relaxed),
            bytes_dropped: self.bytes_dropped.load(Ordering::Relaxed),
        }
    }
}

/// One line of the ring.
#[derive(Debug)]
struct Line {
    seq: u64,
    bytes: Box<[u8]>,
}

/// What the reader and the death event share (behind a mutex).
#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<Line>,
    bytes: usize,
    /// The sequence number the next line gets.
    next_seq: u64,
    /// The bytes of a line not ended yet.
    partial: Vec<u8>,
}

impl Ring {
    fn push(&mut self, line: &[u8]) {
        while self.bytes + line.len() > RING_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.bytes.len(),
                None => break,
            }
        }
        self.bytes += line.len();
        self.lines.push_back(Line {
            seq: self.next_seq,
            bytes: line.into(),
        });
        self.next_seq += 1;
    }
}

/// The result of reading a pipe.
enum Drained {
    /// Nothing more right now.
    WouldBlock,
    /// The budget was used up; more may be waiting.
    Budget,
    /// No writer is left.
    Eof,
}

/// A batch of complete lines handed to the writer.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) data: Vec<u8>,
    pub(crate) lines: u64,
}

/// The captured output of one vassal name (and its zergs).
#[derive(Debug)]
pub struct VassalLog {
    name: VassalName,
    /// The read end (non-blocking).
    fd: Arc<OwnedFd>,
    ring: Mutex<Ring>,
    counters: LogCounters,
    /// The owner the vassal's file is created for (tyrant mode).
    owner: Mutex<Option<Owner>>,
    /// A new instance got a write end (the reader may have seen EOF).
    writer_added: Notify,
    /// New lines arrived (for `imperium ctl logs -f`).
    new_lines: Notify,
    /// Nobody holds a [`LogHandle`] any more: end at the next EOF.
    forgotten: AtomicBool,
    sink: Arc<writer::Writer>,
    /// One line per burst of drops.
    drop_log: LogLimit,
}

/// Lines of a vassal's ring, with where to continue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// The lines (bytes as written, without the newline).
    pub lines: Vec<Vec<u8>>,
    /// The sequence number after the last line: pass it to
    /// [`VassalLog::since`] to get only what comes next.
    pub next: u64,
    /// Lines that had already left the ring when asked for.
    pub missed: u64,
}

impl VassalLog {
    /// The vassal name its file is called after.
    pub fn name(&self) -> &VassalName {
        &self.name
    }

    /// The counters of this vassal's output.
    pub fn counts(&self) -> LogCounts {
        self.counters.get()
    }

    pub(crate) fn counters(&self) -> &LogCounters {
        &self.counters
    }

    pub(crate) fn owner(&self) -> Option<Owner> {
        *self.owner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new write end of this vassal's pipe (blocking, close-on-exec):
    /// the spawn puts it on fds 1 and 2 and closes its own copy.
    pub fn writer(&self, owner: Option<Owner>) -> io::Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        *self.owner.lock().unwrap_or_else(|p| p.into_inner()) = owner;
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        Ok(f.into())
    }

    /// Tells the reader that a new instance holds a write end.
    pub fn writer_added(&self) {
        self.writer_added.notify_one();
    }

    /// The sequence number the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.ring().next_seq
    }

    /// The last `n` lines of the ring.
    pub fn last(&self, n: usize) -> Tail {
        let r = self.ring();
        let skip = r.lines.len().saturating_sub(n);
        Tail {
            lines: r
                .lines
                .iter()
                .skip(skip)
                .map(|l| l.bytes.to_vec())
                .collect(),
            next: r.next_seq,
            missed: 0,
        }
    }

    /// The lines from sequence number `seq` on.
    pub fn since(&self, seq: u64) -> Tail {
        let r = self.ring();
        let first = r.lines.front().map_or(r.next_seq, |l| l.seq);
        Tail {
            lines: r
                .lines
                .iter()
                .filter(|l| l.seq >= seq)
                .map(|l| l.bytes.to_vec())
                .collect(),
            next: r.next_seq,
            missed: first.saturating_sub(seq),
        }
    }

    /// Resolves when new lines may have arrived (enable it before looking
    /// at the ring, so that nothing arriving in between is missed).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.new_lines.notified()
    }

    /// Reads what the pipe holds now (at most `budget` bytes), writes out
    /// a partial line, and returns the last lines written since sequence
    /// number `since` (at most [`TAIL_LINES`] lines, [`TAIL_BYTES`]
    /// bytes): what the vassal said before it died.
    pub fn final_words(self: &Arc<Self>, since: u64) -> Vec<String> {
        let _ = self.drain(4 * READ_PER_TURN);
        self.flush_partial();
        let r = self.ring();
        let mut out = Vec::new();
        let mut bytes = 0;
        for l in r.lines.iter().rev().take_while(|l| l.seq >= since) {
            if out.len() == TAIL_LINES || bytes + l.bytes.len() > TAIL_BYTES {
                break;
            }
            bytes += l.bytes.len();
            out.push(escape(&l.bytes));
        }
        out.reverse();
        out
    }

    /// Reads from the pipe until it is empty, at end-of-file, or `budget`
    /// bytes were read.
    fn drain(self: &Arc<Self>, budget: usize) -> io::Result<Drained> {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_PER_TURN]);
        }
        BUF.with(|b| {
            let mut buf = b.borrow_mut();
            let mut total = 0;
            loop {
                if total >= budget {
                    return Ok(Drained::Budget);
                }
                let want = buf.len().min(budget - total);
                match nix::unistd::read(self.fd.as_fd(), &mut buf[..want]) {
                    Ok(0) => return Ok(Drained::Eof),
                    Ok(n) => {
                        total += n;
                        self.ingest(&buf[..n]);
                    }
                    Err(nix::errno::Errno::EAGAIN) => return Ok(Drained::WouldBlock),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        })
    }

    /// Splits `data` into lines (the ring keeps them, the writer gets them
    /// as one batch).
    fn ingest(self: &Arc<Self>, data: &[u8]) {
        let mut batch = Batch::default();
        {
            let mut r = self.ring();
            let mut rest = data;
            while !rest.is_empty() {
                let (piece, ended) = match memchr(b'\n', rest) {
                    Some(i) => (&rest[..i], true),
                    None => (rest, false),
                };
                rest = &rest[piece.len() + usize::from(ended)..];
                let mut piece = piece;
                // a line longer than MAX_LINE leaves in pieces
                while r.partial.len() + piece.len() > MAX_LINE {
                    let take = MAX_LINE - r.partial.len();
                    let mut line = std::mem::take(&mut r.partial);
                    line.extend_from_slice(&piece[..take]);
                    piece = &piece[take..];
                    Self::complete(&mut r, &mut batch, &line);
                }
                if ended {
                    if r.partial.is_empty() {
                        Self::complete(&mut r, &mut batch, piece);
                    } else {
                        let mut line = std::mem::take(&mut r.partial);
                        line.extend_from_slice(piece);
                        Self::complete(&mut r, &mut batch, &line);
                    }
                } else {
                    r.partial.extend_from_slice(piece);
                }
            }
        }
        self.hand_over(batch);
    }

    fn complete(r: &mut Ring, batch: &mut Batch, line: &[u8]) {
        r.push(line);
        batch.data.extend_from_slice(line);
        batch.data.push(b'\n');
        batch.lines += 1;
    }

    /// Ends a partial line (after [`PARTIAL_FLUSH`], or at end-of-file).
    fn flush_partial(self: &Arc<Self>) {
        let mut batch = Batch::default();
        {
            let mut r = self.ring();
            if r.partial.is_empty() {
                return;
            }
            let line = std::mem::take(&mut r.partial);
            Self::complete(&mut r, &mut batch, &line);
        }
        self.hand_over(batch);
    }

    fn has_partial(&self) -> bool {
        !self.ring().partial.is_empty()
    }

    fn hand_over(self: &Arc<Self>, batch: Batch) {
        if batch.lines == 0 {
            return;
        }
        self.new_lines.notify_waiters();
        let (lines, bytes) = (batch.lines, batch.data.len() as u64);
        if !self.sink.push(self, batch) {
            self.counters.dropped(lines, bytes);
            if let Some(held) = self.drop_log.allow() {
                let c = self.counters.get();
                tracing::warn!(
                    vassal = %self.name,
                    lines_dropped = c.lines_dropped,
                    "[emperor] vassal {}: its output comes faster than it can be written; {} lines dropped so far{}",
                    self.name,
                    c.lines_dropped,
                    if held > 0 { format!(" ({held} bursts since the last such line)") } else { String::new() }
                );
            }
        }
    }
}

/// The first `byte` in `s`.
fn memchr(byte: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|b| *b == byte)
}

/// A line as text: valid UTF-8 as is, every other byte as `\xNN`.
pub fn escape(line: &[u8]) -> String {
    let mut out = String::with_capacity(line.len());
    for chunk in line.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            use std::fmt::Write as _;
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Where a vassal's output can be read (`imperium ctl logs`).
#[derive(Debug)]
pub enum LogLookup {
    /// Its ring.
    Captured(Arc<VassalLog>),
    /// No vassal of that name.
    NoSuchVassal,
    /// It has not been started since the emperor started.
    NotStarted,
    /// Nothing is captured in this mode, for this reason.
    NotCaptured(String),
}

impl LogOptions {
    /// Why `imperium ctl logs` has nothing to show in this mode (`None`
    /// when the mode captures).
    pub fn not_captured(&self) -> Option<String> {
        match &self.mode {
            LogMode::Inherit => Some("nothing is captured: --vassal-logs is inherit, so vassals write straight to the emperor's own stdout and stderr, which imperium does not read (start the emperor with --vassal-logs prefix or dir:DIR)".into()),
            LogMode::Journal(_) => Some("nothing is captured by imperium: --vassal-logs is journal, so each vassal writes straight to journald (read it with journalctl -t NAME)".into()),
            LogMode::Prefix | LogMode::Dir(_) => None,
        }
    }
}

/// Held by the vassal table while a vassal name exists: when the last
/// handle goes, the reader ends at the pipe's next end-of-file.
#[derive(Debug)]
pub struct LogHandle(pub Arc<VassalLog>);

impl Drop for LogHandle {
    fn drop(&mut self) {
        self.0.forgotten.store(true, Ordering::SeqCst);
        self.0.writer_added.notify_one();
    }
}

/// Every capturing pipe: made here, read by one task each.
#[derive(Debug)]
pub struct Capture {
    sink: Arc<writer::Writer>,
    /// Every pipe made (for the last read at shutdown).
    logs: Mutex<Vec<std::sync::Weak<VassalLog>>>,
}

impl Capture {
    /// Starts the writer for `opts` (`None` when the mode captures
    /// nothing). Opens the directory of `dir:` mode now, so a bad one is
    /// a start-up error.
    pub fn start(opts: &LogOptions) -> io::Result<Option<Capture>> {
        if !opts.mode.captures() {
            return Ok(None);
        }
        Ok(Some(Capture {
            sink: Arc::new(writer::Writer::start(opts)?),
            logs: Mutex::default(),
        }))
    }

    /// A new pipe for the vassal `name`, and its reader task.
    pub fn open(&self, name: &VassalName) -> io::Result<Arc<LogHandle>> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        // the read end stays; each instance opens its own write end
        drop(write);
        Ok(self.reader(name, read))
    }

    /// The read end of the pipe of `name` that the emperor's previous
    /// image read (a hot upgrade), and its reader task. Its ring of last
    /// lines starts empty.
    pub fn adopt(&self, name: &VassalName, read: OwnedFd) -> io::Result<Arc<LogHandle>> {
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        crate::spawn::set_inheritable(read.as_fd(), false)?;
        Ok(self.reader(name, read))
    }

    /// The pipes' read ends, by vassal name (a hot upgrade hands them on).
    pub fn pipes(&self) -> Vec<(VassalName, std::os::fd::RawFd)> {
        self.live()
            .into_iter()
            .filter(|l| !l.forgotten.load(Ordering::SeqCst))
            .map(|l| (l.name.clone(), l.fd.as_raw_fd()))
            .collect()
    }

    /// Every pipe still read.
    fn live(&self) -> Vec<Arc<VassalLog>> {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }

    /// Makes every pipe's read end survive an exec (`true`, a hot
    /// upgrade) or close at the next one again.
    /// (Exactly the pipes of [`Capture::pipes`].)
    pub fn set_pipes_inheritable(&self, yes: bool) -> io::Result<()> {
        for l in self.live() {
            if !l.forgotten.load(Ordering::SeqCst) {
                crate::spawn::set_inheritable(l.fd.as_fd(), yes)?;
            }
        }
        Ok(())
    }

    fn reader(&self, name: &VassalName, read: OwnedFd) -> Arc<LogHandle> {
        let log = Arc::new(VassalLog {
            name: name.clone(),
            fd: Arc::new(read),
            ring: Mutex::new(Ring::default()),
            counters: LogCounters::default(),
            owner: Mutex::new(None),
            writer_added: Notify::new(),
            new_lines: Notify::new(),
            forgotten: AtomicBool::new(false),
            sink: self.sink.clone(),
            drop_log: LogLimit::new(),
        });
        tokio::spawn(read_task(log.clone()));
        {
            let mut all = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&log));
        }
        Arc::new(LogHandle(log))
    }

    /// At shutdown, once every vassal is gone: reads what is left in every
    /// pipe and waits (at most `wait`) until the writer has written it all.
    pub fn finish(&self, wait: Duration) {
        for log in &self.live() {
            let _ = log.drain(16 * READ_PER_TURN);
            log.flush_partial();
        }
        if !self.sink.flush(wait) {
            tracing::warn!("[emperor] vassal logs: the writer did not finish within {} s; the rest of the vassals' output is lost", wait.as_secs());
        }
    }

    /// Asks the writer to close and open again every file (after an
    /// external logrotate moved them).
    pub fn reopen(&self) {
        self.sink.reopen();
    }
}

/// The reader of one pipe: until the last [`LogHandle`] is gone and the
/// last writer has closed it.
async fn read_task(log: Arc<VassalLog>) {
    loop {
        let afd = match crate::spawn::fd::register_shared_readable(log.fd.clone()) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(vassal = %log.name, error = %e, "[emperor] cannot watch the output pipe of {}; its output is no longer read", log.name);
                return;
            }
        };
        loop {
            let ready = if log.has_partial() {
                match tokio::time::timeout(PARTIAL_FLUSH, afd.readable()).await {
                    Ok(r) => r,
                    Err(_) => {
                        log.flush_partial();
                        continue;
                    }
                }
            } else {
                afd.readable().await
            };
            let mut guard = match ready {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(vassal = %log.name, error = %e, "[emperor] cannot watch the output pipe of {}", log.name);
                    return;
                }
            };
            match log.drain(READ_PER_TURN) {
                Ok(Drained::WouldBlock) => guard.clear_ready(),
                Ok(Drained::Budget) => {}
                Ok(Drained::Eof) => break,
                Err(e) => {
                    tracing::error!(vassal = %log.name, error = %e, "[emperor] cannot read the output pipe of {}", log.name);
                    return;
                }
            }
            drop(guard);
            // one pipe never holds the loop for more than one read budget
            tokio::task::yield_now().await;
        }
        // every writer is gone; the reactor would report the hang-up for
        // ever (a final state), so the pipe leaves it until the next
        // instance has a write end
        drop(afd);
        log.flush_partial();
        if log.forgotten.load(Ordering::SeqCst) {
            return;
        }
        log.writer_added.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("inherit".parse::<LogMode>().unwrap(), LogMode::Inherit);
        assert_eq!("prefix".parse::<LogMode>().unwrap(), LogMode::Prefix);
        assert_eq!(
            "dir:/var/log/x".parse::<LogMode>().unwrap(),
            LogMode::Dir("/var/log/x".into())
        );
        assert_eq!(
            "journal".parse::<LogMode>().unwrap(),
            LogMode::Journal(journal::SOCKET.into())
        );
        assert_eq!(
            "journal:/tmp/j".parse::<LogMode>().unwrap(),
            LogMode::Journal("/tmp/j".into())
        );
        for bad in ["", "dir:", "file:/x", "journal:", "Prefix"] {
            assert!(bad.parse::<LogMode>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        for bad in ["", "M", "10X", "-1", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_escaped() {
        assert_eq!(escape(b"caf\xc3\xa9 \xff\xfe!"), "café \\xff\\xfe!");
    }

    fn cpu_of_this_thread() -> Duration {
        let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD).unwrap();
        let t = |v: nix::sys::time::TimeVal| {
            Duration::from_secs(v.tv_sec() as u64) + Duration::from_micros(v.tv_usec() as u64)
        };
        t(u.user_time()) + t(u.system_time())
    }

    /// The pipe outlives its writers: at end-of-file the partial line is
    /// written out and the reader leaves the reactor (no busy loop on the
    /// hang-up), and the next writer's lines are read again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pipe_without_writers_costs_nothing_and_takes_the_next_one() {
        use std::io::Write;
        let opts = LogOptions {
            mode: LogMode::Prefix,
            ..LogOptions::default()
        };
        let cap = Capture::start(&opts).unwrap().unwrap();
        let name = VassalName::derived("t.ini".into());
        let h = cap.open(&name).unwrap();
        let log = h.0.clone();
        let mut w = std::fs::File::from(log.writer(None).unwrap());
        log.writer_added();
        w.write_all(b"one\ntwo\npartial").unwrap();
        drop(w);
        let ok = async {
            while log.last(10).lines.len() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), ok)
            .await
            .expect("lines read");
        assert_eq!(
            log.last(10).lines,
            [b"one".to_vec(), b"two".to_vec(), b"partial".to_vec()]
        );
        // no writer: the reader waits without spinning
        let before = cpu_of_this_thread();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let spent = cpu_of_this_thread() - before;
        assert!(
            spent < Duration::from_millis(100),
            "{spent:?} of CPU in 500 ms without a writer"
        );
        // the next instance's writer is read again
        let mut w = std::fs::File::from(log.writer(None).unwrap());
        log.writer_added();
        w.write_all(b"three\n").unwrap();
        let ok = async {
            while log.last(1).lines != [b"three".to_vec()] {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), ok)
            .await
            .expect("the next writer's line");
        // a huge line leaves in MAX_LINE pieces
        w.write_all(&vec![b'x'; MAX_LINE * 2 + 10]).unwrap();
        w.write_all(b"\n").unwrap();
        drop(w);
        let ok = async {
            while log.next_seq() < 7 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), ok)
            .await
            .expect("pieces");
        let t = log.last(3);
        assert_eq!(
            t.lines.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 10]
        );
        assert_eq!(log.counts().lines_dropped, 0);
    }

    /// A writer that cannot keep up: the queue stops at QUEUE_BYTES, the
    /// rest is dropped and counted, and the reader goes on reading (the
    /// vassal never blocks on it).
    #[tokio::test(flavor = "current_thread")]
    async fn a_stalled_writer_drops_and_counts_beyond_the_queue_bound() {
        use std::io::Write;
        let (w, _rx) = writer::Writer::stalled();
        let cap = Capture {
            sink: Arc::new(w),
            logs: Mutex::default(),
        };
        let h = cap.open(&VassalName::derived("flood.ini".into())).unwrap();
        let log = h.0.clone();
        let mut f = std::fs::File::from(log.writer(None).unwrap());
        log.writer_added();
        let line = [b'y'; 99];
        let total = 12 << 20; // 12 MiB: more than the queue takes
        let writer = std::thread::spawn(move || {
            let mut buf = Vec::new();
            for _ in 0..1000 {
                buf.extend_from_slice(&line);
                buf.push(b'\n');
            }
            for _ in 0..total / buf.len() {
                f.write_all(&buf).unwrap();
            }
        });
        let done = async {
            loop {
                let c = log.counts();
                if c.bytes_dropped + cap.sink.queued() as u64 >= (total / 100_000 * 100_000) as u64
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), done)
            .await
            .expect("everything read");
        writer.join().unwrap();
        let c = log.counts();
        assert!(
            cap.sink.queued() <= writer::QUEUE_BYTES,
            "{}",
            cap.sink.queued()
        );
        assert!(c.lines_dropped > 0 && c.bytes_dropped > 0, "{c:?}");
        assert_eq!(c.bytes_dropped % 100, 0, "whole lines dropped: {c:?}");
        assert_eq!(c.lines_written, 0, "nobody wrote anything: {c:?}");
        assert!(log.ring().bytes <= RING_BYTES);
    }

    #[test]
    fn ring_keeps_the_newest_bytes() {
        let mut r = Ring::default();
        let line = vec![b'x'; 1000];
        for _ in 0..200 {
            r.push(&line);
        }
        assert!(r.bytes <= RING_BYTES);
        assert_eq!(r.lines.len(), RING_BYTES / 1000);
        assert_eq!(r.next_seq, 200);
        assert_eq!(r.lines.back().unwrap().seq, 199);
    }
}
