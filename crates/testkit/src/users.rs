//! Unprivileged users for tyrant-mode tests (the tests run as root).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use nix::unistd::{chown, Gid, Uid};

static LOCK: Mutex<()> = Mutex::new(());

/// An unprivileged system user of this name, created with `useradd` when it
/// does not exist yet; returns its (uid, gid). Panics with the reason when
/// the tests do not run as root or the user cannot be created.
pub fn test_user(name: &str) -> (u32, u32) {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        nix::unistd::geteuid().is_root(),
        "tyrant-mode tests need root (to create users and drop privileges)"
    );
    if let Some(ids) = lookup(name) {
        return ids;
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output()
        .expect("run useradd (Debian package passwd)");
    // another test process may have created it meanwhile (exit code 9)
    assert!(
        out.status.success() || out.status.code() == Some(9),
        "useradd {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lookup(name).unwrap_or_else(|| panic!("user {name} missing after useradd"))
}

fn lookup(name: &str) -> Option<(u32, u32)> {
    let u = nix::unistd::User::from_name(name).ok().flatten()?;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

/// The real, effective, saved and filesystem uids of `pid` (the `Uid:`
/// line of /proc/PID/status).
pub fn proc_uids(pid: u32) -> Option<[u32; 4]> {
    status_ids(pid, "Uid:")
}

/// The gids of `pid` (the `Gid:` line of /proc/PID/status).
pub fn proc_gids(pid: u32) -> Option<[u32; 4]> {
    status_ids(pid, "Gid:")
}

/// The value of a field of /proc/PID/status (`NoNewPrivs:`, `Groups:`).
pub fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
}

fn status_ids(pid: u32, field: &str) -> Option<[u32; 4]> {
    let v = proc_status_field(pid, field)?;
    let ids: Vec<u32> = v
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    ids.try_into().ok()
}

/// Gives `path` to `uid:gid`.
pub fn own(path: &Path, (uid, gid): (u32, u32)) {
    chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Writes a config as root, then gives it its owner and moves it in place
/// (so an emperor never sees it root-owned).
pub fn write_owned(path: &Path, text: &str, owner: (u32, u32)) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    own(&tmp, owner);
    std::fs::rename(&tmp, path).expect("rename config");
}

/// Asserts that all four uids and gids of `pid` are `uid` and `gid`.
pub fn assert_runs_as(pid: u32, (uid, gid): (u32, u32)) {
    assert_eq!(proc_uids(pid), Some([uid; 4]), "uids of {pid}");
    assert_eq!(proc_gids(pid), Some([gid; 4]), "gids of {pid}");
}

/// The permitted and effective capability sets of `pid` (the `CapPrm:` and
/// `CapEff:` lines of /proc/PID/status).
pub fn proc_caps(pid: u32) -> Option<(u64, u64)> {
    let read = |f| u64::from_str_radix(&proc_status_field(pid, f)?, 16).ok();
    Some((read("CapPrm:")?, read("CapEff:")?))
}

/// A temp dir that unprivileged users can read and enter (tempfile makes
/// 0700 dirs): for configs and apps of vassals that drop privileges.
pub fn readable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 755 the temp dir");
    tmp
}
