//! A private OpenLDAP `slapd` (Debian's `slapd` package) for tests.
//!
//! The server gets its own `cn=config` directory, built with `slapadd -n0`
//! in a temp dir, a `back_mdb` database for [`Slapd::BASE`] and, unless
//! turned off, the `syncprov` overlay (RFC 4533 content sync). It listens on
//! `ldap://127.0.0.1:PORT` only. The config database is writable over LDAP
//! as [`Slapd::CONFIG_DN`], which is how [`Slapd::load_schema`] adds a schema
//! the way an operator would (`ldapadd` of an LDIF into `cn=schema,cn=config`).
//!
//! Entries are written with the real `ldapadd` / `ldapmodify` /
//! `ldapdelete` programs (Debian's `ldap-utils`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, require_program, wait_until, ServerProcess};

/// What to configure in the private server.
#[derive(Debug, Clone)]
pub struct SlapdOptions {
    /// Load the `syncprov` overlay on the database (RFC 4533
    /// refreshAndPersist). Off, the server offers no change notification.
    pub syncprov: bool,
}

impl Default for SlapdOptions {
    fn default() -> Self {
        SlapdOptions { syncprov: true }
    }
}

/// A running private slapd. Stopped by pid and its directory removed on drop.
pub struct Slapd {
    /// The process and its directory.
    pub server: ServerProcess,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    slapd: PathBuf,
}

impl Slapd {
    /// The database suffix.
    pub const BASE: &'static str = "dc=example,dc=com";
    /// The organizational unit created under [`Slapd::BASE`] for vassals.
    pub const VASSALS: &'static str = "ou=vassals,dc=example,dc=com";
    /// The database's root DN.
    pub const ADMIN_DN: &'static str = "cn=admin,dc=example,dc=com";
    /// The root DN of `cn=config`.
    pub const CONFIG_DN: &'static str = "cn=admin,cn=config";
    /// The password of both root DNs.
    pub const PASSWORD: &'static str = "secret";

    /// Starts a server with the default options (syncprov on).
    pub fn start() -> Slapd {
        Slapd::start_with(SlapdOptions::default())
    }

    /// Starts a server, waits until a real LDAP search answers, and adds the
    /// base entries ([`Slapd::BASE`] and [`Slapd::VASSALS`]).
    pub fn start_with(opts: SlapdOptions) -> Slapd {
        let slapd = require_program("/usr/sbin/slapd", "slapd");
        let slapadd = require_program("/usr/sbin/slapadd", "slapd");
        require_program("ldapsearch", "ldap-utils");
        let dir = tempfile::Builder::new()
            .prefix("imperium-slapd.")
            .tempdir()
            .expect("temp dir for slapd");
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).expect("mkdir data");
        std::fs::create_dir_all(d.join("slapd.d")).expect("mkdir slapd.d");
        std::fs::write(d.join("config.ldif"), config_ldif(d, &opts)).expect("write config.ldif");
        let out = Command::new(&slapadd)
            .arg("-n0")
            .arg("-F")
            .arg(d.join("slapd.d"))
            .arg("-l")
            .arg(d.join("config.ldif"))
            .output()
            .expect("run slapadd");
        assert!(
            out.status.success(),
            "slapadd -n0 failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = spawn_slapd(&slapd, d, port);
        let mut me = Slapd {
            server: ServerProcess::new("slapd", dir, child),
            port,
            slapd,
        };
        me.wait_ready();
        me.ldapadd(&format!(
            "dn: {base}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example\n\n\
             dn: {vassals}\nobjectClass: organizationalUnit\nou: vassals\n",
            base = Slapd::BASE,
            vassals = Slapd::VASSALS
        ));
        me
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM, waits); data and config are kept.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the server again on the same port, config and data.
    pub fn restart(&mut self) {
        self.server.stop();
        let child = spawn_slapd(&self.slapd, self.server.dir.path(), self.port);
        self.server.set_child(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let url = self.url();
        let ok = wait_until(Duration::from_secs(30), || {
            Command::new("ldapsearch")
                .args(["-x", "-H", &url, "-b", "", "-s", "base", "namingContexts"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        assert!(
            ok,
            "slapd did not answer on {url} within 30 s; its log:\n{}",
            self.server.log_tail("server.log", 40)
        );
    }

    /// Adds a schema LDIF (`dn: cn=NAME,cn=schema,cn=config` with
    /// `olcAttributeTypes` / `olcObjectClasses`) through the config
    /// database, as an operator would with `ldapadd`.
    pub fn load_schema(&self, ldif: &Path) {
        let text = std::fs::read_to_string(ldif)
            .unwrap_or_else(|e| panic!("read {}: {e}", ldif.display()));
        self.run_ldap_tool("ldapadd", Slapd::CONFIG_DN, &[], &text)
            .unwrap_or_else(|e| panic!("loading schema {}: {e}", ldif.display()));
    }

    /// `ldapadd` of LDIF text as [`Slapd::ADMIN_DN`]; panics on failure.
    pub fn ldapadd(&self, ldif: &str) {
        self.try_ldapadd(ldif)
            .unwrap_or_else(|e| panic!("ldapadd failed: {e}\n{ldif}"));
    }

    /// `ldapadd` of LDIF text as [`Slapd::ADMIN_DN`]; the tool's output on failure.
    pub fn try_ldapadd(&self, ldif: &str) -> Result<(), String> {
        self.run_ldap_tool("ldapadd", Slapd::ADMIN_DN, &[], ldif)
    }

    /// `ldapmodify` of LDIF text (with `changetype:` lines) as
    /// [`Slapd::ADMIN_DN`]; panics on failure.
    pub fn ldapmodify(&self, ldif: &str) {
        self.run_ldap_tool("ldapmodify", Slapd::ADMIN_DN, &[], ldif)
            .unwrap_or_else(|e| panic!("ldapmodify failed: {e}\n{ldif}"));
    }

    /// `ldapdelete DN` as [`Slapd::ADMIN_DN`]; panics on failure.
    pub fn ldapdelete(&self, dn: &str) {
        self.run_ldap_tool("ldapdelete", Slapd::ADMIN_DN, &[dn], "")
            .unwrap_or_else(|e| panic!("ldapdelete {dn} failed: {e}"));
    }

    fn run_ldap_tool(
        &self,
        tool: &str,
        bind_dn: &str,
        args: &[&str],
        stdin: &str,
    ) -> Result<(), String> {
        let program = require_program(tool, "ldap-utils");
        let mut child = Command::new(program)
            .args([
                "-x",
                "-H",
                &self.url(),
                "-D",
                bind_dn,
                "-w",
                Slapd::PASSWORD,
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {tool}: {e}"))?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .map_err(|e| format!("write to {tool}: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for {tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} exited with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// The path of the vassal schema shipped in the repository
/// (`contrib/ldap/uwsgi-vassal.ldif`).
pub fn vassal_schema_ldif() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/ldap/uwsgi-vassal.ldif")
}

fn spawn_slapd(slapd: &Path, dir: &Path, port: u16) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("open slapd log");
    let log2 = log.try_clone().expect("dup log");
    // -d 0: stay in the foreground (the child is slapd itself, stopped by pid).
    Command::new(slapd)
        .arg("-F")
        .arg(dir.join("slapd.d"))
        .arg("-h")
        .arg(format!("ldap://127.0.0.1:{port}/"))
        .args(["-d", "0", "-s", "0"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .expect("spawn slapd")
}

fn config_ldif(dir: &Path, opts: &SlapdOptions) -> String {
    let d = dir.display();
    let mut s = format!(
        "dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {d}/slapd.pid
olcArgsFile: {d}/slapd.args

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: syncprov

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif

include: file:///etc/ldap/schema/cosine.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcAccess: to * by * read

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcRootDN: {config_dn}
olcRootPW: {pw}

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {d}/data
olcSuffix: {base}
olcRootDN: {admin}
olcRootPW: {pw}
olcDbMaxSize: 268435456
olcDbNoSync: TRUE
olcDbIndex: objectClass,entryCSN,entryUUID eq
",
        config_dn = Slapd::CONFIG_DN,
        admin = Slapd::ADMIN_DN,
        base = Slapd::BASE,
        pw = Slapd::PASSWORD,
    );
    if opts.syncprov {
        s.push_str(
            "
dn: olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {0}syncprov
olcSpCheckpoint: 100 10
",
        );
    }
    s
}
