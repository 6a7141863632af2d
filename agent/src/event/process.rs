//! Process records decoded: the exec'd file name and the working directory's names as text,
//! the executable's identity as a [`FileId`]; forks and exits.

use phiguard_common::{
    event::{ExecEvent, ExitEvent, ForkEvent, FLAG_CWD_COMPLETE},
    policy::Decision,
};

use super::{decode::text, header::Header};
use crate::paths::{split_names, FileId};

/// A fork: the header describes the parent.
#[derive(Clone, Debug)]
pub struct Fork {
    /// The forking thread.
    pub header: Header,
    /// Process id of the new process.
    pub child_pid: u32,
    /// Boot-time nanoseconds at which the child started.
    pub child_start_boot_ns: u64,
}

impl Fork {
    /// Decodes a fork record.
    pub fn decode(e: &ForkEvent) -> Fork {
        Fork {
            header: Header::decode(&e.header),
            child_pid: e.child_tgid,
            child_start_boot_ns: e.child_start_boot_ns,
        }
    }
}

/// A process exit.
#[derive(Clone, Debug)]
pub struct Exit {
    /// The exiting process.
    pub header: Header,
    /// `task_struct.exit_code`: `status << 8` for a normal exit, the signal number otherwise.
    pub exit_code: u32,
}

impl Exit {
    /// Decodes an exit record.
    pub fn decode(e: &ExitEvent) -> Exit {
        Exit {
            header: Header::decode(&e.header),
            exit_code: e.exit_code,
        }
    }
}

/// An exec (or, from BPF LSM and the fanotify layer, a refused one: `FLAG_EXEC_REFUSED`).
#[derive(Clone, Debug)]
pub struct Exec {
    /// The exec'ing thread, after the exec.
    pub header: Header,
    /// Its thread id before the exec (a non-leader thread's exec takes the leader's id).
    pub old_pid: u32,
    /// The policy decision.
    pub decision: Decision,
    /// The executable file, when the kernel could name it.
    pub exe: Option<FileId>,
    /// The file name passed to exec, as the kernel saw it.
    pub filename: String,
    /// The working directory, when the kernel walked it to the root of its mount.
    pub cwd: Option<Cwd>,
}

/// A working directory as the kernel walked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cwd {
    /// The mount the names are relative to (an id of `/proc/<pid>/mountinfo`).
    pub mount_id: u32,
    /// The names from the directory up to the mount's root, innermost first.
    pub names: Vec<String>,
}

impl Exec {
    /// Decodes an exec record.
    pub fn decode(e: &ExecEvent) -> Exec {
        let cwd = (e.header.flags & FLAG_CWD_COMPLETE != 0).then(|| {
            let bytes = &e.cwd[..(e.cwd_len as usize).min(e.cwd.len())];
            Cwd {
                mount_id: e.cwd_mnt_id,
                names: split_names(bytes, bytes.iter().filter(|b| **b == 0).count()),
            }
        });
        Exec {
            header: Header::decode(&e.header),
            old_pid: e.old_pid,
            decision: e.decision,
            exe: (e.exe_dev != 0 || e.exe_ino != 0).then_some(FileId {
                dev: e.exe_dev,
                ino: e.exe_ino,
            }),
            filename: text(&e.filename, e.filename_len),
            cwd,
        }
    }
}
