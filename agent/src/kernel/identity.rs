//! Who a process is, as the kernel programs decide it: the agent's own exemption
//! ([`this_agent`]) and the executables processes run ([`ExecIdentities`], the user-space view
//! of the `EXEC_IDENTITY` map the exec, fork and exit programs keep).

use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
};

use phiguard_common::maps::{identity_flags::TAINTED, AgentId, ExecIdentity};

use super::bpf_sys;
use crate::{paths::FileId, process::procfs};

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;

/// The exemption value for this process: its global tgid (see [`bpf_sys::global_tgid`]) and
/// its start time, which no later process with the same pid can share.
pub fn this_agent() -> io::Result<AgentId> {
    let tgid = bpf_sys::global_tgid()?;
    let start_ticks = procfs::start_ticks(std::process::id()).ok_or_else(|| {
        io::Error::other("reading this process's start time from /proc/self/stat")
    })?;
    Ok(AgentId {
        tgid,
        _pad: 0,
        start_ticks,
    })
}

/// The `EXEC_IDENTITY` map, through a descriptor of its own (usable from any thread).
#[derive(Debug)]
pub struct ExecIdentities {
    map: OwnedFd,
    scripts: OwnedFd,
}

impl ExecIdentities {
    /// Wraps descriptors of the map and of `SCRIPT_IDENTITY`.
    pub fn new(map: OwnedFd, scripts: OwnedFd) -> ExecIdentities {
        ExecIdentities { map, scripts }
    }

    /// A second handle on the same maps.
    pub fn try_clone(&self) -> io::Result<ExecIdentities> {
        Ok(ExecIdentities {
            map: self.map.try_clone()?,
            scripts: self.scripts.try_clone()?,
        })
    }

    /// The script the kernel recorded for process `tgid` (see `SCRIPT_IDENTITY`), provided the
    /// record is that of the process started at `start_ticks`.
    pub fn script_of(&self, tgid: u32, start_ticks: u64) -> Option<FileId> {
        let mut value = [0u8; size_of::<ExecIdentity>()];
        if !bpf_sys::map_lookup(self.scripts.as_fd(), &tgid.to_ne_bytes(), &mut value).ok()? {
            return None;
        }
        // SAFETY: `ExecIdentity` is plain `repr(C)` integers; any bytes are a valid value.
        let recorded: ExecIdentity = unsafe { std::ptr::read_unaligned(value.as_ptr().cast()) };
        (recorded.start_ticks == start_ticks).then_some(FileId {
            dev: recorded.dev,
            ino: recorded.ino,
        })
    }

    /// The executable the kernel recorded for process `tgid` (a global pid), provided the record
    /// is that of the process started at `start_ticks` (clock ticks, `/proc/PID/stat`) and the
    /// process is not tainted (it may run code it was not executed with).
    pub fn exe_of(&self, tgid: u32, start_ticks: u64) -> Option<FileId> {
        let mut value = [0u8; size_of::<ExecIdentity>()];
        if !bpf_sys::map_lookup(self.map.as_fd(), &tgid.to_ne_bytes(), &mut value).ok()? {
            return None;
        }
        // SAFETY: `ExecIdentity` is plain `repr(C)` integers; any bytes are a valid value.
        let recorded: ExecIdentity = unsafe { std::ptr::read_unaligned(value.as_ptr().cast()) };
        (recorded.start_ticks == start_ticks && recorded.flags & TAINTED == 0).then_some(FileId {
            dev: recorded.dev,
            ino: recorded.ino,
        })
    }

    /// Records the processes that exist now and have no record yet (they started before the
    /// programs were attached) with the executable `/proc` shows for them — a record written
    /// meanwhile by an exec or a fork is never replaced. Returns how many were added. Only in
    /// the initial pid namespace (the map is keyed by global pids, which `/proc` shows only
    /// there): elsewhere it adds none.
    pub fn seed(&self) -> io::Result<usize> {
        if bpf_sys::global_tgid()? != std::process::id() {
            return Ok(0);
        }
        let mut added = 0;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let (Some(start_ticks), Some(exe)) = (
                procfs::start_ticks(pid),
                FileId::of(std::path::Path::new(&format!("/proc/{pid}/exe"))).ok(),
            ) else {
                continue; // a kernel thread, or gone
            };
            let value = ExecIdentity {
                dev: exe.dev,
                flags: 0,
                ino: exe.ino,
                start_ticks,
            };
            // SAFETY: plain `repr(C)` integers, read as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&raw const value).cast::<u8>(),
                    size_of::<ExecIdentity>(),
                )
            };
            if bpf_sys::map_update_flags(self.map.as_fd(), &pid.to_ne_bytes(), bytes, BPF_NOEXIST)
                .is_ok()
            {
                added += 1;
            }
        }
        Ok(added)
    }
}
