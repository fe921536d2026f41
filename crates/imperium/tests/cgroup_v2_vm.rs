//! Limits through cgroup v2 (docs/resources.md), in a VM with a pure v2
//! hierarchy (testkit::vm): this machine's own unified hierarchy has no
//! controllers, so its tests go through cgroup v1.
//!
//! One boot runs three emperors, each started in a group of its own,
//! `/sys/fs/cgroup/svc*`, as systemd starts a unit with `Delegate=yes`:
//!
//! 1. with test vassals under `--vassal-memory-max 64M
//!    --vassal-memory-high 48M --vassal-cpu-max 0.5 --vassal-pids-max 40`:
//!    the emperor moves into its leaf and passes the controllers down; each
//!    vassal's group carries the limits (its `[imperium]` section
//!    overriding them); a vassal allocating 100 MiB is OOM-killed,
//!    reported and respawned; one over its own `memory-high` is throttled,
//!    not killed; one spinning under its own `cpu-max` is throttled, and
//!    `ctl show` and `ctl top --once` report v2's memory figures and
//!    throttled time; after a hot upgrade the emperor is still in its leaf
//!    and still passes controllers down; at shutdown the group is left as
//!    it was found;
//! 2. with a real uWSGI vassal asking for 4 workers under
//!    `--vassal-pids-max 3`, in the same group after the first left, its
//!    own `memory-max` passing the memory controller down while the
//!    emperor runs, after a hot upgrade;
//! 3. in a group that holds another process: a clear start-up error, and
//!    the group left as it was found;
//! 4. in a group not given the pids controller that its parent has: a
//!    start-up error that says where the controller is and what to do.

use std::time::Duration;

use testkit::vm::{result, results, Vm};
use testkit::{imperium_bin, test_vassal_bin};

const SCRIPT: &str = r#"
C=/sys/fs/cgroup
waitfor() { n=0; while ! eval "$1" >/dev/null 2>&1; do n=$((n+1)); if [ $n -gt $2 ]; then echo "R timeout=$1"; return 1; fi; sleep 0.2; done; }
group() { ls -d $C/$1/imperium-*/$2/i[0-9]* 2>/dev/null | tail -1; }

# 1: test vassals under every limit
V=/tmp/vassals; mkdir -p $V /tmp/rec
printf '[vassal]\nrecord = /tmp/rec/plain\n' > $V/plain.ini
printf '[vassal]\nrecord = /tmp/rec/own\n[imperium]\nmemory-max = 16M\npids-max = 5\n' > $V/own.ini
printf '[vassal]\nalloc-mb = 100\n[imperium]\nmemory-high = 1G\n' > $V/hog.ini
printf '[vassal]\nrecord = /tmp/rec/high\nalloc-mb = 12\n[imperium]\nmemory-high = 8M\n' > $V/high.ini
printf '[vassal]\nrecord = /tmp/rec/spin\nspin = 1\n[imperium]\ncpu-max = 0.1\n' > $V/spin.ini
mkdir $C/svc
sh -c "echo \$\$ > $C/svc/cgroup.procs; exec /bin/imperium --emperor $V --binary-path /bin/imperium-test-vassal --vassal-memory-max 64M --vassal-memory-high 48M --vassal-cpu-max 0.5 --vassal-pids-max 40 --emperor-control-socket /tmp/ctl.sock" > /tmp/e1.log 2>&1 &
EMP=$!
waitfor 'grep -q "^start" /tmp/rec/plain && grep -q "^start" /tmp/rec/own' 300
echo "R emperor_cgroup=$(cat /proc/$EMP/cgroup)"
echo "R svc_subtree=$(cat $C/svc/cgroup.subtree_control)"
G=$(group svc plain.ini)
echo "R plain_memory_max=$(cat $G/memory.max)"
echo "R plain_memory_high=$(cat $G/memory.high)"
echo "R plain_swap_max=$(cat $G/memory.swap.max 2>/dev/null || echo none)"
echo "R plain_cpu_max=$(cat $G/cpu.max)"
echo "R plain_pids_max=$(cat $G/pids.max)"
G=$(group svc own.ini)
echo "R own_memory_max=$(cat $G/memory.max)"
echo "R own_memory_high=$(cat $G/memory.high)"
echo "R own_pids_max=$(cat $G/pids.max)"
waitfor '[ $(grep -c "vassal hog.ini .*OOM killer" /tmp/e1.log) -ge 2 ]' 300
echo "R hog_oom_reports=$(grep -c 'vassal hog.ini .*OOM killer' /tmp/e1.log)"
G=$(group svc high.ini)
waitfor "[ \$(grep '^high ' $G/memory.events | cut -d' ' -f2) -gt 0 ]" 150
echo "R high_events=$(grep '^high ' $G/memory.events | cut -d' ' -f2)"
echo "R high_oom_kills=$(grep '^oom_kill ' $G/memory.events | cut -d' ' -f2)"
echo "R high_procs=$(cat $G/cgroup.procs | wc -l)"
echo "R high_starts=$(grep -c '^start' /tmp/rec/high)"
/bin/imperium ctl --socket /tmp/ctl.sock --json show plain.ini > /tmp/show.json
echo "R plain_memory_current=$(grep -o '"memory_current_bytes": *[0-9]*' /tmp/show.json | grep -o '[0-9]*$')"
echo "R plain_memory_peak=$(grep -o '"memory_peak_bytes": *[0-9]*' /tmp/show.json | grep -o '[0-9]*$')"
G=$(group svc spin.ini)
echo "R spin_cpu_max=$(cat $G/cpu.max)"
waitfor "[ \$(grep '^nr_throttled ' $G/cpu.stat | cut -d' ' -f2) -gt 5 ]" 150
/bin/imperium ctl --socket /tmp/ctl.sock --json show spin.ini > /tmp/spin.json
echo "R spin_throttled_usec_after=$(grep '^throttled_usec ' $G/cpu.stat | cut -d' ' -f2)"
echo "R spin_throttled_shown=$(grep -o '"cpu_throttled_seconds": *[0-9.e-]*' /tmp/spin.json | sed 's/.*: *//')"
/bin/imperium ctl --socket /tmp/ctl.sock top --once > /tmp/top.txt
echo "R spin_top=$(grep '^spin.ini' /tmp/top.txt | tr -s ' ' | cut -d' ' -f8)"
echo "R plain_top_mem=$(grep '^plain.ini' /tmp/top.txt | tr -s ' ' | cut -d' ' -f7)"
cat /tmp/top.txt
# a hot upgrade: the new image takes over the leaf and what was passed down
/bin/imperium ctl --socket /tmp/ctl.sock upgrade; echo "R upgrade_exit=$?"
echo "R emperor_cgroup_upgraded=$(cat /proc/$EMP/cgroup)"
echo "R groups_upgraded=$(find $C/svc -type d -name 'imperium-*' | wc -l)"
echo "R plain_starts_upgraded=$(grep -c '^start' /tmp/rec/plain)"
printf '[vassal]\nrecord = /tmp/rec/late\n[imperium]\nmemory-max = 20M\n' > $V/late.ini
waitfor 'grep -q "^start" /tmp/rec/late' 300
echo "R late_memory_max=$(cat $(group svc late.ini)/memory.max)"
kill -INT $EMP; wait $EMP; echo "R e1_exit=$?"
echo "R svc_subtree_after=[$(cat $C/svc/cgroup.subtree_control)]"
echo "R svc_left=$(ls $C/svc | grep -c imperium-)"
cat /tmp/e1.log

# 2: a real uWSGI vassal under --vassal-pids-max 3, in the same group
U=/tmp/uvassals; mkdir -p $U
sh -c "echo \$\$ > $C/svc/cgroup.procs; exec /bin/imperium --emperor $U --binary-path /usr/bin/uwsgi --vassal-pids-max 3 --emperor-control-socket /tmp/ctl2.sock" > /tmp/e2.log 2>&1 &
EMP=$!
waitfor '[ -S /tmp/ctl2.sock ]' 300
# upgraded before its vassal comes: the memory controller is passed down
# by the new image, and given back with the pids controller at exit
/bin/imperium ctl --socket /tmp/ctl2.sock upgrade; echo "R upgrade2_exit=$?"
printf '[uwsgi]\nmaster = true\nprocesses = 4\nsocket = /tmp/u.sock\n[imperium]\nmemory-max = 256M\n' > $U/u.ini
waitfor 'grep -q "Resource temporarily unavailable" /tmp/e2.log' 300
sleep 2
G=$(group svc u.ini)
echo "R u_pids_max=$(cat $G/pids.max)"
echo "R u_memory_max=$(cat $G/memory.max)"
echo "R u_procs=$(cat $G/cgroup.procs | wc -l)"
echo "R u_fork_failures=$(grep -c 'Resource temporarily unavailable' /tmp/e2.log)"
kill -INT $EMP; wait $EMP; echo "R e2_exit=$?"
echo "R svc_subtree_after2=[$(cat $C/svc/cgroup.subtree_control)]"
cat /tmp/e2.log

# 3: a group with another process in it cannot pass a controller down
mkdir $C/busy
sleep 1000 & echo $! > $C/busy/cgroup.procs
sh -c "echo \$\$ > $C/busy/cgroup.procs; exec /bin/imperium --emperor $V --binary-path /bin/imperium-test-vassal --vassal-memory-max 64M" > /tmp/e3.log 2>&1
echo "R busy_exit=$?"
echo "R busy_said=$(grep -c 'other processes are in that group' /tmp/e3.log)"
echo "R busy_subtree_after=[$(cat $C/busy/cgroup.subtree_control)]"
echo "R busy_left=$(ls $C/busy | grep -c imperium-)"
cat /tmp/e3.log

# 4: a controller the unified hierarchy has, but not for the emperor's group
mkdir -p $C/outer/inner
sh -c "echo \$\$ > $C/outer/inner/cgroup.procs; exec /bin/imperium --emperor $V --binary-path /bin/imperium-test-vassal --vassal-pids-max 5" > /tmp/e4.log 2>&1
echo "R nodeleg_exit=$?"
echo "R nodeleg_said=$(grep -c 'the pids controller is in the unified hierarchy at /sys/fs/cgroup/outer, but is not passed down to /sys/fs/cgroup/outer/inner, the group that holds the vassals. groups' /tmp/e4.log)"
echo "R nodeleg_left=$(ls $C/outer/inner | grep -c imperium-)"
cat /tmp/e4.log
"#;

#[test]
fn limits_go_through_cgroup_v2_where_it_has_the_controllers() {
    let vm = Vm::new();
    vm.add(&imperium_bin(), "/bin/imperium");
    vm.add(&test_vassal_bin(), "/bin/imperium-test-vassal");
    vm.add(&testkit::uwsgi::uwsgi_bin(), "/usr/bin/uwsgi");
    let console = vm.run(SCRIPT, Duration::from_secs(400));
    println!("{console}");
    let r = results(&console);
    let get = |k: &str| result(&r, k, &console).to_string();
    let num = |k: &str| -> u64 {
        get(k)
            .parse()
            .unwrap_or_else(|_| panic!("{k} = {:?} is not a number; console:\n{console}", get(k)))
    };
    assert!(
        !r.iter().any(|(k, _)| k == "timeout"),
        "a wait timed out:\n{console}"
    );
    // the emperor left its own group for a leaf, and passed the
    // controllers down
    assert!(
        get("emperor_cgroup").starts_with("0::/svc/imperium-")
            && get("emperor_cgroup").ends_with("/.emperor"),
        "{}",
        get("emperor_cgroup")
    );
    for c in ["memory", "cpu", "pids"] {
        assert!(
            get("svc_subtree").split(' ').any(|x| x == c),
            "{}",
            get("svc_subtree")
        );
    }
    // the emperor-wide limits, in v2's files
    assert_eq!(num("plain_memory_max"), 64 << 20);
    assert_eq!(num("plain_memory_high"), 48 << 20);
    assert!(
        matches!(get("plain_swap_max").as_str(), "0" | "none"),
        "{}",
        get("plain_swap_max")
    );
    assert_eq!(get("plain_cpu_max"), "50000 100000");
    assert_eq!(num("plain_pids_max"), 40);
    // a vassal's own section over them
    assert_eq!(num("own_memory_max"), 16 << 20);
    assert_eq!(num("own_memory_high"), 48 << 20);
    assert_eq!(num("own_pids_max"), 5);
    // OOM killed (memory.events), reported, respawned and killed again
    assert!(num("hog_oom_reports") >= 2);
    // over memory.high: throttled, not killed
    assert!(num("high_events") > 0);
    assert_eq!(num("high_oom_kills"), 0);
    assert!(num("high_procs") >= 1);
    assert_eq!(num("high_starts"), 1);
    // v2's figures in ctl show
    let current = num("plain_memory_current");
    assert!(current > 0 && current <= 64 << 20, "{current}");
    assert!(num("plain_memory_peak") >= current);
    // a CPU limit's throttled time (v2's cpu.stat throttled_usec), in
    // `ctl show` and `ctl top --once`
    assert_eq!(get("spin_cpu_max"), "10000 100000");
    let shown: f64 = get("spin_throttled_shown").parse().unwrap();
    let after = num("spin_throttled_usec_after") as f64 / 1e6;
    // (shown in milliseconds, rounded)
    assert!(
        shown > 0.0 && shown <= after + 0.0005,
        "shown {shown} s, cpu.stat {after} s"
    );
    let top: f64 = get("spin_top").parse().unwrap();
    assert!(top >= shown - 0.01, "top {top} s, shown {shown} s");
    let mem: f64 = get("plain_top_mem").parse().unwrap();
    assert!(mem > 0.0 && mem <= 64.0, "CG MEM MiB {mem}");
    // after a hot upgrade the emperor is still in its leaf, nothing is
    // nested or restarted, and a controller is still passed down for a
    // vassal that comes later
    assert_eq!(num("upgrade_exit"), 0);
    assert_eq!(get("emperor_cgroup_upgraded"), get("emperor_cgroup"));
    assert_eq!(num("groups_upgraded"), 1);
    assert_eq!(num("plain_starts_upgraded"), 1);
    assert_eq!(num("late_memory_max"), 20 << 20);
    // a clean exit gives the group back as it was found, also after the
    // upgrade (the new image knew what its predecessor passed down)
    assert_eq!(num("e1_exit"), 0);
    assert_eq!(get("svc_subtree_after"), "[]");
    assert_eq!(num("svc_left"), 0);
    // a real uWSGI vassal held to 3 processes; its other forks fail
    assert_eq!(num("u_pids_max"), 3);
    assert!(num("u_procs") >= 1, "the uWSGI vassal has no process");
    assert!(num("u_fork_failures") >= 1);
    // its own memory-max: the memory controller passed down while the
    // emperor runs, for that vassal alone
    assert_eq!(num("u_memory_max"), 256 << 20);
    assert_eq!(num("upgrade2_exit"), 0);
    assert_eq!(num("e2_exit"), 0);
    assert_eq!(get("svc_subtree_after2"), "[]");
    // a group with another process: an error at start-up that says why
    assert_ne!(num("busy_exit"), 0);
    assert!(num("busy_said") >= 1, "{console}");
    // and leaves that group as it was found
    assert_eq!(get("busy_subtree_after"), "[]");
    assert_eq!(num("busy_left"), 0);
    // a controller not delegated to the emperor's group: says where it is
    // and what to do
    assert_ne!(num("nodeleg_exit"), 0);
    assert_eq!(num("nodeleg_said"), 1, "{console}");
    assert_eq!(num("nodeleg_left"), 0);
}
