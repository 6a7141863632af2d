//! Writing records to the ring buffer, and counting the ones that did not fit.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
    maps::ring_buf::RingBufEntry,
};
use phiguard_common::{
    event::{EventHeader, Kind, FLAG_NO_PROCESS},
    limits::WAKEUP_BYTES,
};

use crate::{
    error::{ProbeError, ProbeResult},
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

/// The notification flags for a record that moves the ring buffer's backlog from `before` to
/// `after` bytes: wake the reader only when the backlog crosses a multiple of
/// [`WAKEUP_BYTES`]; otherwise the reader finds the record on its next timed look (at most
/// `READ_INTERVAL_MS` later, `IDLE_READ_INTERVAL_MS` after a quiet spell). The kernel's default wakes it for every record written while it
/// is caught up: an irq_work interrupt in this program and a scheduler round trip in the agent,
/// per record. A crossing missed in a race with another CPU or the reader only delays records
/// until that look; it never loses one.
#[inline(always)]
fn wakeup_flags(before: u64, after: u64) -> u64 {
    if after / WAKEUP_BYTES != before / WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// Bytes a record of `len` bytes takes in the ring buffer (an 8-byte header, 8-byte aligned).
#[inline(always)]
fn ring_bytes(len: usize) -> u64 {
    ((len as u64 + 8) + 7) & !7
}

/// Submits a reserved record, waking the reader as [`wakeup_flags`] decides.
#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>) {
    // The backlog already counts this reserved record.
    let after = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let before = after.saturating_sub(ring_bytes(size_of::<T>()));
    entry.submit(wakeup_flags(before, after));
}

/// Sends `bytes` as one record; counts it lost if the ring buffer has no room.
#[inline(always)]
pub fn output(kind: Kind, bytes: &[u8]) -> ProbeResult {
    let before = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let flags = wakeup_flags(before, before + ring_bytes(bytes.len()));
    if EVENTS.output::<[u8]>(bytes, flags).is_err() {
        count_lost(kind);
        return Err(ProbeError::Lost);
    }
    Ok(())
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
