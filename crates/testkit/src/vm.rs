//! A small VM for what this machine's own kernel cannot show: a pure
//! cgroup v2 hierarchy with every controller, as on a modern distribution
//! (this machine is a v1/v2 hybrid whose unified hierarchy has none).
//!
//! The VM is qemu (software emulation: nested KVM hangs on these
//! machines) booting Debian's kernel (`/var/cache/imperium-vm/vmlinuz`,
//! unpacked by scripts/install-deps.d/vm-kernel.sh) with an initramfs made
//! here: busybox, the host's binaries a test names with the shared
//! libraries `ldd` lists for them, and an `/init` that mounts proc, sysfs,
//! devtmpfs, a tmpfs `/tmp` and cgroup2 on `/sys/fs/cgroup`, passes the
//! memory, cpu and pids controllers down from the root (as systemd does),
//! runs the test's script and powers off. The VM has no network device;
//! everything the script prints comes back on the serial console.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::servers::{require_program, INSTALL_HINT};

/// The kernel the VM boots (`IMPERIUM_VM_KERNEL`, else
/// `/var/cache/imperium-vm/vmlinuz`), or a panic naming the install step.
pub fn kernel() -> PathBuf {
    let k = std::env::var_os("IMPERIUM_VM_KERNEL").map_or_else(
        || PathBuf::from("/var/cache/imperium-vm/vmlinuz"),
        PathBuf::from,
    );
    assert!(
        k.is_file(),
        "{} is missing (scripts/install-deps.d/vm-kernel.sh unpacks Debian's kernel there); install the test dependencies with `{INSTALL_HINT}`",
        k.display()
    );
    k
}

/// A VM image in the making: the files of its initramfs.
pub struct Vm {
    root: tempfile::TempDir,
}

impl Default for Vm {
    fn default() -> Self {
        Self::new()
    }
}

impl Vm {
    /// An image with busybox (`/bin/busybox`, its applets installed at
    /// boot).
    pub fn new() -> Vm {
        let busybox = require_program("/bin/busybox", "busybox-static");
        let root = tempfile::tempdir().expect("tempdir");
        let vm = Vm { root };
        vm.copy(&busybox, "/bin/busybox");
        vm
    }

    /// Copies the host's `file` to `guest` in the image, with the shared
    /// libraries it needs at their host paths.
    /// Executables are stripped of their debug information (a debug
    /// build of the emperor would not fit in the VM's memory).
    pub fn add(&self, file: &Path, guest: &str) {
        let dst = self.at(guest);
        let st = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&dst)
            .arg(file)
            .status()
            .expect("run strip (binutils)");
        assert!(st.success(), "strip {} failed", file.display());
        let out = Command::new("ldd").arg(file).output().expect("run ldd");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                self.copy(Path::new(p), p);
            }
        }
    }

    /// Writes `text` to `guest` in the image (mode 0755).
    pub fn write(&self, guest: &str, text: &str) {
        let dst = self.at(guest);
        std::fs::write(&dst, text).expect("write into the image");
        set_mode(&dst, 0o755);
    }

    fn at(&self, guest: &str) -> PathBuf {
        let dst = self.root.path().join(guest.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().expect("a guest path has a parent"))
            .expect("make a directory in the image");
        dst
    }

    fn copy(&self, src: &Path, guest: &str) {
        let dst = self.at(guest);
        if !dst.exists() {
            // follows symbolic links: the image holds the files themselves
            std::fs::copy(src, &dst)
                .unwrap_or_else(|e| panic!("copy {} into the image: {e}", src.display()));
        }
    }

    /// Boots the image and runs `script` (busybox sh, as root, in the root
    /// cgroup) as the body of `/init`; returns everything the console
    /// showed once the VM powered off. Panics when it did not end within
    /// `timeout`, with what it showed until then.
    pub fn run(&self, script: &str, timeout: Duration) -> String {
        let qemu = require_program("qemu-system-x86_64", "qemu-system-x86");
        require_program("cpio", "cpio");
        let kernel = kernel();
        self.write(
            "/init",
            &format!(
                "#!/bin/busybox sh\n\
                 /bin/busybox --install -s /bin\n\
                 mkdir -p /proc /sys /dev /tmp /run /etc\n\
                 mount -t proc proc /proc\n\
                 mount -t sysfs sys /sys\n\
                 mount -t devtmpfs dev /dev\n\
                 mount -t tmpfs tmp /tmp\n\
                 mount -t tmpfs run /run\n\
                 mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
                 echo '+memory +cpu +pids' > /sys/fs/cgroup/cgroup.subtree_control\n\
                 echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd\n\
                 echo 'root:x:0:' > /etc/group\n\
                 echo VM-UP\n\
                 {script}\n\
                 echo VM-DONE\n\
                 poweroff -f\n"
            ),
        );
        let initrd = self.root.path().with_extension("cpio");
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && find . | cpio -o -H newc --quiet > {}",
                self.root.path().display(),
                initrd.display()
            ))
            .status()
            .expect("run cpio");
        assert!(st.success(), "cpio failed making the initramfs");
        let mut child = Command::new(qemu)
            .args(["-machine", "q35", "-accel", "tcg", "-cpu", "max"])
            .args(["-m", "1024", "-smp", "2"])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu-system-x86_64");
        let mut out = child.stdout.take().expect("qemu's stdout");
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for qemu") {
                break Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = std::fs::remove_file(&initrd);
        let text = String::from_utf8_lossy(&reader.join().unwrap_or_default()).replace('\r', "");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        match status {
            None => {
                panic!("the VM did not power off within {timeout:?}; its console:\n{text}\n{err}")
            }
            Some(st) if !text.contains("VM-DONE") => {
                panic!("the VM stopped ({st}) before its script ended; its console:\n{text}\n{err}")
            }
            Some(_) => text,
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The `R key=value` lines a VM script printed, in order.
pub fn results(console: &str) -> Vec<(String, String)> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("R "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The value of the last `R key=value` line for `key`, or a panic showing
/// the console.
pub fn result<'a>(all: &'a [(String, String)], key: &str, console: &str) -> &'a str {
    all.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the VM printed no {key:?}; its console:\n{console}"))
}
