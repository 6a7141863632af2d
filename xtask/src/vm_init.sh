#!/bin/busybox sh
# /init of the VM tier's initramfs (written by xtask/src/initramfs.rs; run by busybox sh as
# pid 1). It prepares a small but ordinary system, proves BPF LSM is active, runs every test
# binary listed in /phiguard/tests.txt one test at a time, reports through the serial console
# and powers off. The PHIGUARD-VM-* lines are what `cargo xtask vm` reads: keep them in step
# with xtask/src/vm.rs.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export RUST_BACKTRACE=1
export PHIGUARD_BIN=/phiguard/bin/phiguard
# The attack tests' opener, built on the host (no compiler here).
export PHIGUARD_OPENER=/phiguard/bin/opener
# The subject tests' fixtures, built on the host too.
export PHIGUARD_FIXTURES=/phiguard/fixtures
# Tests that only make sense in the VM (BPF LSM) can tell where they run.
export PHIGUARD_TIER=vm

must() {
    "$@" || echo "PHIGUARD-VM-INIT-ERROR: '$*' failed"
}

must mount -t proc proc /proc
must mount -t sysfs sysfs /sys
must mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts
must mount -t devpts devpts /dev/pts
must mount -t tmpfs -o mode=1777 tmpfs /dev/shm
must mount -t tmpfs -o mode=1777 tmpfs /tmp
must mount -t tmpfs -o mode=0755 tmpfs /run
# cgroup v2 at the usual place (the host's is hybrid, at /sys/fs/cgroup/unified: a second layout
# for the agent's mountinfo lookup).
must mount -t cgroup2 cgroup2 /sys/fs/cgroup
must mount -t securityfs securityfs /sys/kernel/security
# bpffs (/sys/fs/bpf) and tracefs (/sys/kernel/tracing) are left unmounted on purpose: the agent
# mounts them itself when missing, and this is the only tier where that path runs on a fresh boot.

must ip link set lo up
must hostname phiguard-vm
tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id

# Smoke check, independent of the agent: the bpf LSM is active and the kernel accepts programs of
# type lsm (bpftool loads a probe program; the host kernel refuses it).
echo "PHIGUARD-VM-LSM $(cat /sys/kernel/security/lsm)"
# The layer the tests must find deciding file opens: a weaker one is a failure, not a skip.
case ",$(cat /sys/kernel/security/lsm)," in
    *,bpf,*) export PHIGUARD_EXPECT_FILE_LAYER=lsm ;;
    *) export PHIGUARD_EXPECT_FILE_LAYER=fanotify ;;
esac
echo "PHIGUARD-VM-LSM-PROG $(bpftool feature probe kernel 2>/dev/null | grep 'program_type lsm ')"

# Arguments for every test binary, one a line (libtest filters and flags).
set --
while IFS= read -r arg; do
    set -- "$@" "$arg"
done < /phiguard/args

rc=0
while IFS= read -r name; do
    echo "PHIGUARD-VM-TEST $name"
    "/phiguard/tests/$name" --test-threads=1 "$@" < /dev/null
    status=$?
    echo "PHIGUARD-VM-TEST-DONE $name rc=$status"
    if [ "$status" -ne 0 ] && [ "$rc" -eq 0 ]; then
        rc=$status
    fi
done < /phiguard/tests.txt

echo "PHIGUARD-VM-RESULT rc=$rc"
sync
poweroff -f
