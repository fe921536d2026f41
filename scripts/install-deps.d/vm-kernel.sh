#!/usr/bin/env bash
# The kernel of the cgroup v2 VM tests (crates/imperium/tests/cgroup_v2_vm.rs):
# Debian's linux-image, unpacked into /var/cache/imperium-vm (not installed:
# the machine's own kernel is untouched).
set -euo pipefail
dir=/var/cache/imperium-vm
[ -e "$dir/vmlinuz" ] && exit 0
mkdir -p "$dir"
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
if [ -z "$pkg" ]; then
  echo "vm-kernel.sh: no linux-image package found (the cgroup v2 VM test needs one)" >&2
  exit 1
fi
cd "$dir"
apt-get download "$pkg" 2>/dev/null
deb=$(ls "$pkg"_*.deb | head -1)
dpkg-deb --fsys-tarfile "$deb" | tar -x --wildcards './boot/vmlinuz-*'
mv boot/vmlinuz-* vmlinuz
rm -rf boot "$deb"
echo "vm-kernel.sh: $pkg unpacked into $dir/vmlinuz"
