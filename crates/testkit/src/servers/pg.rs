//! A private PostgreSQL server: `initdb` into a temp dir, `postgres` on
//! 127.0.0.1 and a free port, ready once a real query over TCP succeeds.
//!
//! Local (Unix socket) logins are trusted, so [`PgServer::psql`] needs no
//! password; TCP logins need [`PgServer::PASSWORD`] (SCRAM), so a wrong
//! password is refused as on a real server. When the tests run as root the
//! server runs as the `postgres` user (PostgreSQL refuses to run as root).
//!
//! ```no_run
//! let pg = testkit::servers::pg::PgServer::start();
//! pg.psql("CREATE TABLE t (x int)");
//! let url = pg.url(); // postgresql://postgres:...@127.0.0.1:PORT/postgres
//! ```

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, private_dir, require_program, server_log, wait_until, ServerProcess};

/// Spawns `postgres` on the data in `dir`, logging to `dir`/server.log.
fn spawn_postgres(bin: &Path, dir: &Path, port: u16, run_as: Option<(u32, u32)>) -> Child {
    let log = server_log(dir);
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=16MB",
            "-c",
            "max_connections=50",
            "-c",
            "logging_collector=off",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd.spawn().expect("spawn postgres")
}

/// How long the server may take to accept a query.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running private PostgreSQL.
pub struct PgServer {
    server: ServerProcess,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
}

/// The directory holding `initdb` and `postgres`: the newest
/// /usr/lib/postgresql/<version>/bin (Debian), else the one of `pg_config`
/// on PATH.
fn pg_bindir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let pg_config = require_program("pg_config", "postgresql");
    let out = Command::new(pg_config)
        .arg("--bindir")
        .output()
        .expect("run pg_config --bindir");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl PgServer {
    /// The password of the `postgres` role for TCP logins.
    pub const PASSWORD: &'static str = "imperium-test-secret";

    /// Starts a fresh server and waits until it answers a query over TCP.
    /// Panics (with the install command) when PostgreSQL is not installed.
    pub fn start() -> PgServer {
        let bin = pg_bindir();
        let initdb = require_program(
            bin.join("initdb").to_str().expect("utf-8 path"),
            "postgresql",
        );
        require_program("psql", "postgresql-client");
        let dir = private_dir("imperium-pg.");
        let run_as = if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .expect("look up user postgres")
                .expect("running as root needs the user postgres (Debian package postgresql)");
            let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
                .expect("chown the temp dir to postgres");
            Some((uid, gid))
        } else {
            None
        };
        let data = dir.path().join("data");
        let log = File::create(dir.path().join("initdb.log")).expect("create initdb.log");
        let mut cmd = Command::new(initdb);
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        let status = cmd.status().expect("run initdb");
        if !status.success() {
            let log = std::fs::read_to_string(dir.path().join("initdb.log")).unwrap_or_default();
            panic!("initdb failed:\n{log}");
        }
        let port = free_port();
        let child = spawn_postgres(&bin, dir.path(), port, run_as);
        let mut server = ServerProcess::new("postgres", dir, child);
        server.stop_signal = libc::SIGINT; // PostgreSQL's "fast" shutdown
        let pg = PgServer {
            server,
            port,
            bin,
            run_as,
        };
        // the first query goes over the Unix socket (trusted), to set the
        // password TCP logins need; then a login over TCP proves readiness
        pg.wait_ready(false);
        pg.psql(&format!(
            "ALTER ROLE postgres PASSWORD '{}'",
            Self::PASSWORD
        ));
        pg.wait_ready(true);
        pg
    }

    /// Waits until a `SELECT 1` succeeds over TCP (`tcp`) or the Unix socket.
    fn wait_ready(&self, tcp: bool) {
        let ok = wait_until(READY_TIMEOUT, || {
            let out = if tcp {
                self.try_psql(self.psql_command().arg(self.url()))
            } else {
                self.try_psql(self.psql_command().args(self.socket_args()))
            };
            out.as_deref() == Some("1")
        });
        if !ok {
            panic!(
                "postgres not ready on 127.0.0.1:{} within {READY_TIMEOUT:?}:\n{}",
                self.port,
                self.server.log_tail("server.log", 30)
            );
        }
    }

    /// Starts the server again on the same data directory and port (after
    /// [`PgServer::stop`]) and waits until it answers.
    pub fn start_again(&mut self) {
        let child = spawn_postgres(&self.bin, self.server.dir.path(), self.port, self.run_as);
        self.server.set_child(child);
        self.wait_ready(true);
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits
    /// for it to exit. The data stays for [`PgServer::start_again`].
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// A libpq URI with the password, over TCP.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/postgres",
            Self::PASSWORD,
            self.port
        )
    }

    /// A keyword conninfo with the password, over TCP (the form uWSGI's
    /// emperor_pg documentation uses).
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres",
            self.port,
            Self::PASSWORD
        )
    }

    fn psql_command(&self) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .env("PGCONNECT_TIMEOUT", "5");
        cmd
    }

    /// psql's arguments for the Unix socket as `postgres`.
    fn socket_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "-h".into(),
            self.server.dir.path().into(),
            "-p".into(),
            self.port.to_string().into(),
            "-U".into(),
            "postgres".into(),
            "-d".into(),
            "postgres".into(),
        ]
    }

    fn try_psql(&self, cmd: &mut Command) -> Option<String> {
        let out = cmd
            .args(["-c", "SELECT 1"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `sql` (one or more statements) as `postgres` over the Unix
    /// socket and returns its unaligned, tuples-only output. Panics on any
    /// error, with psql's message.
    pub fn psql(&self, sql: &str) -> String {
        let mut child = self
            .psql_command()
            .args(["-h"])
            .arg(self.server.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        let mut stdin = child.stdin.take().expect("psql stdin");
        let sql = sql.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(sql.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        if !out.status.success() {
            panic!(
                "psql failed: {}\n",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The last `n` lines of the server log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        self.server.log_tail("server.log", n)
    }
}
