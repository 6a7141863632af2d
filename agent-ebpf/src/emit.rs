//! Writing records to the ring buffer, and counting the ones that did not fit.

use agent_common::event::{EventHeader, Kind, FLAG_NO_PROCESS};
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
};

use crate::{
    kernel::Task,
    maps::{EVENTS, LOST},
};

/// Counts one record of `kind` lost because the ring buffer was full.
#[inline(always)]
pub fn count_lost(kind: Kind) {
    if let Some(counter) = LOST.get_ptr_mut(kind as u32) {
        // SAFETY: the map value is a live, aligned u64 owned by this CPU; the kernel does not
        // run two tracing programs on one CPU at once.
        unsafe { *counter += 1 };
    }
}

/// Sends `bytes` as one record; counts it lost if the ring buffer has no room.
#[inline(always)]
pub fn output(kind: Kind, bytes: &[u8]) {
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count_lost(kind);
    }
}

/// Fills `header` with the current task's identity.
#[inline(always)]
pub fn fill_header(header: &mut EventHeader, kind: Kind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    header.kind = kind as u32;
    header.flags = 0;
    // SAFETY: plain helper calls without arguments.
    header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.pid = pid_tgid as u32;
    header.tgid = (pid_tgid >> 32) as u32;
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    // SAFETY: as above.
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    header._pad = 0;
    let task = Task::current();
    header.ppid = task.parent_tgid().unwrap_or(0);
    header.loginuid = task.loginuid().unwrap_or(u32::MAX);
    header.sessionid = task.sessionid().unwrap_or(u32::MAX);
    header.start_boot_ns = task.leader_start_boot_ns().unwrap_or(0);
}

/// Fills `header` for a record written where `current` is not the process concerned.
#[inline(always)]
pub fn fill_header_no_process(header: &mut EventHeader, kind: Kind) {
    header.kind = kind as u32;
    header.flags = FLAG_NO_PROCESS;
    // SAFETY: plain helper call without arguments.
    header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.pid = 0;
    header.tgid = 0;
    header.ppid = 0;
    header.uid = u32::MAX;
    header.gid = u32::MAX;
    header.loginuid = u32::MAX;
    header.sessionid = u32::MAX;
    header._pad = 0;
    header.cgroup_id = 0;
    header.start_boot_ns = 0;
    header.comm = [0; 16];
}
