//! Every kernel program the agent knows: where it attaches, what it watches, and whether the
//! agent can run without it. The loader attaches from this list and the start-up report and
//! status print from it.

use phiguard_common::program::Program;

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A classic tracepoint `category/name`.
    TracePoint {
        /// Tracepoint category (`syscalls`, `sock`, …).
        category: &'static str,
        /// Tracepoint name.
        name: &'static str,
    },
    /// A raw tracepoint (arguments are the kernel's `TP_PROTO`).
    RawTracePoint {
        /// Tracepoint name.
        name: &'static str,
    },
    /// `cgroup/connect4` or `connect6` at the cgroup v2 root.
    CgroupConnect,
    /// A BPF LSM hook.
    Lsm {
        /// The LSM hook's name.
        hook: &'static str,
    },
    /// The return of a kernel function (fexit, BTF trampoline).
    FExit {
        /// The kernel function's name.
        function: &'static str,
    },
}

/// What a program watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Process life cycle.
    Process,
    /// File opens.
    File,
    /// Network connections.
    Net,
    /// Enforcement where the kernel has BPF LSM.
    Enforce,
    /// Database sessions: tracked sockets and what is read and written on them.
    Db,
}

/// One attachment of a program in the kernel object.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    /// The attachment's name (`{family}_{hook}`): in the start-up report, `status` and the
    /// link's pin.
    pub name: &'static str,
    /// The program attached (its function in `agent-ebpf`); one program may serve several
    /// hooks, loaded (verified) once.
    pub program: Program,
    /// Attach point.
    pub hook: Hook,
    /// What it watches.
    pub family: Family,
    /// The agent refuses to start without it.
    pub required: bool,
    /// Why it may be missing, for the start-up report.
    pub missing_means: &'static str,
}

const fn tp(category: &'static str, name: &'static str) -> Hook {
    Hook::TracePoint { category, name }
}

/// All programs, in attach order: map-filling exits and process tracking first, so no event
/// meets a half-attached pipeline that matters.
#[rustfmt::skip]
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec { name: "process_sched_process_fork", program: Program::ProcessSchedProcessFork, hook: Hook::RawTracePoint { name: "sched_process_fork" }, family: Family::Process, required: true, missing_means: "" },
    ProgramSpec { name: "process_sched_process_exec", program: Program::ProcessSchedProcessExec, hook: Hook::RawTracePoint { name: "sched_process_exec" }, family: Family::Process, required: true, missing_means: "" },
    ProgramSpec { name: "process_sched_process_exit", program: Program::ProcessSchedProcessExit, hook: Hook::RawTracePoint { name: "sched_process_exit" }, family: Family::Process, required: true, missing_means: "" },
    ProgramSpec { name: "process_sys_enter_execve", program: Program::ProcessSysEnterExecve, hook: tp("syscalls", "sys_enter_execve"), family: Family::Process, required: true, missing_means: "" },
    ProgramSpec { name: "process_sys_enter_execveat", program: Program::ProcessSysEnterExecveat, hook: tp("syscalls", "sys_enter_execveat"), family: Family::Process, required: false, missing_means: "argv of execveat() calls is not captured" },
    ProgramSpec { name: "file_sys_exit_openat", program: Program::FileSysExitOpens, hook: tp("syscalls", "sys_exit_openat"), family: Family::File, required: true, missing_means: "" },
    ProgramSpec { name: "file_sys_exit_open", program: Program::FileSysExitOpens, hook: tp("syscalls", "sys_exit_open"), family: Family::File, required: false, missing_means: "open() is not a syscall on this architecture" },
    ProgramSpec { name: "file_sys_exit_openat2", program: Program::FileSysExitOpens, hook: tp("syscalls", "sys_exit_openat2"), family: Family::File, required: false, missing_means: "openat2() needs Linux 5.6" },
    ProgramSpec { name: "net_connect4", program: Program::NetConnect4, hook: Hook::CgroupConnect, family: Family::Net, required: true, missing_means: "" },
    ProgramSpec { name: "net_connect6", program: Program::NetConnect6, hook: Hook::CgroupConnect, family: Family::Net, required: true, missing_means: "" },
    ProgramSpec { name: "net_inet_sock_set_state", program: Program::NetInetSockSetState, hook: tp("sock", "inet_sock_set_state"), family: Family::Net, required: true, missing_means: "" },
    ProgramSpec { name: "db_sys_exit_connect", program: Program::DbSysExitConnect, hook: tp("syscalls", "sys_exit_connect"), family: Family::Db, required: false, missing_means: "database sessions are not tracked" },
    ProgramSpec { name: "db_sys_exit_accept", program: Program::DbSysExitAccept, hook: tp("syscalls", "sys_exit_accept"), family: Family::Db, required: false, missing_means: "server-side database sessions accepted with accept() are not tracked" },
    ProgramSpec { name: "db_sys_exit_accept4", program: Program::DbSysExitAccept4, hook: tp("syscalls", "sys_exit_accept4"), family: Family::Db, required: false, missing_means: "server-side database sessions are not tracked" },
    ProgramSpec { name: "db_sys_exit_write", program: Program::DbSysExitIo, hook: tp("syscalls", "sys_exit_write"), family: Family::Db, required: false, missing_means: "database traffic written with write() is not captured" },
    ProgramSpec { name: "db_sys_exit_read", program: Program::DbSysExitIo, hook: tp("syscalls", "sys_exit_read"), family: Family::Db, required: false, missing_means: "database traffic read with read() is not captured" },
    ProgramSpec { name: "db_sys_exit_sendto", program: Program::DbSysExitIo, hook: tp("syscalls", "sys_exit_sendto"), family: Family::Db, required: false, missing_means: "database traffic sent with send()/sendto() is not captured" },
    ProgramSpec { name: "db_sys_exit_recvfrom", program: Program::DbSysExitIo, hook: tp("syscalls", "sys_exit_recvfrom"), family: Family::Db, required: false, missing_means: "database traffic received with recv()/recvfrom() is not captured" },
    ProgramSpec { name: "db_sys_exit_writev", program: Program::DbSysExitIo, hook: tp("syscalls", "sys_exit_writev"), family: Family::Db, required: false, missing_means: "database traffic written with writev() is not captured" },
    ProgramSpec { name: "db_sys_exit_readv", program: Program::DbSysExitIo, hook: tp("syscalls", "sys_exit_readv"), family: Family::Db, required: false, missing_means: "database traffic read with readv() is not captured" },
    ProgramSpec { name: "db_sys_exit_sendmsg", program: Program::DbSysExitIo, hook: tp("syscalls", "sys_exit_sendmsg"), family: Family::Db, required: false, missing_means: "database traffic sent with sendmsg() is not captured" },
    ProgramSpec { name: "db_sys_exit_recvmsg", program: Program::DbSysExitIo, hook: tp("syscalls", "sys_exit_recvmsg"), family: Family::Db, required: false, missing_means: "database traffic received with recvmsg() is not captured" },
    ProgramSpec { name: "enforce_file_open", program: Program::EnforceFileOpen, hook: Hook::Lsm { hook: "file_open" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: refused opens are enforced by fanotify permission events (EPERM) or, without them, by SIGKILL" },
    ProgramSpec { name: "enforce_bprm_check_security", program: Program::EnforceBprmCheckSecurity, hook: Hook::Lsm { hook: "bprm_check_security" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: refused execs are enforced by SIGKILL instead of EPERM" },
    ProgramSpec { name: "enforce_unix_stream_connect", program: Program::EnforceUnixStreamConnect, hook: Hook::Lsm { hook: "unix_stream_connect" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: unix-socket database endpoints are not enforced" },
    ProgramSpec { name: "taint_sys_enter_mmap", program: Program::TaintSysEnterMmap, hook: tp("syscalls", "sys_enter_mmap"), family: Family::Process, required: true, missing_means: "" },
    ProgramSpec { name: "taint_sys_enter_ptrace", program: Program::TaintSysEnterPtrace, hook: tp("syscalls", "sys_enter_ptrace"), family: Family::Process, required: true, missing_means: "" },
    ProgramSpec { name: "taint_sys_enter_process_vm_writev", program: Program::TaintSysEnterProcessVmWritev, hook: tp("syscalls", "sys_enter_process_vm_writev"), family: Family::Process, required: true, missing_means: "" },
    ProgramSpec { name: "enforce_file_receive", program: Program::EnforceFileReceive, hook: Hook::Lsm { hook: "file_receive" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: descriptors received with pidfd_getfd are refused by SIGKILL, SCM_RIGHTS ones not at all" },
    ProgramSpec { name: "file_sys_exit_pidfd_getfd", program: Program::FileSysExitPidfdGetfd, hook: tp("syscalls", "sys_exit_pidfd_getfd"), family: Family::File, required: false, missing_means: "pidfd_getfd() needs Linux 5.6: descriptors cannot be taken either" },
    ProgramSpec { name: "enforce_d_instantiate", program: Program::EnforceDInstantiate, hook: Hook::Lsm { hook: "d_instantiate" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: files created in protected directories are labelled by the fanotify layer at their first open" },
    ProgramSpec { name: "enforce_inode_create", program: Program::EnforceInodeCreate, hook: Hook::Lsm { hook: "inode_create" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: creating files in protected directories is not refused" },
    ProgramSpec { name: "enforce_inode_mkdir", program: Program::EnforceInodeMkdir, hook: Hook::Lsm { hook: "inode_mkdir" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: creating directories in protected directories is not refused" },
    ProgramSpec { name: "enforce_inode_mknod", program: Program::EnforceInodeMknod, hook: Hook::Lsm { hook: "inode_mknod" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: mknod in protected directories is not refused" },
    ProgramSpec { name: "enforce_inode_symlink", program: Program::EnforceInodeSymlink, hook: Hook::Lsm { hook: "inode_symlink" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: symlinks in protected directories are not refused" },
    ProgramSpec { name: "enforce_inode_setattr", program: Program::EnforceInodeSetattr, hook: Hook::Lsm { hook: "inode_setattr" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: truncate, chmod, chown and utimes of protected files are not refused" },
    ProgramSpec { name: "enforce_inode_unlink", program: Program::EnforceInodeUnlink, hook: Hook::Lsm { hook: "inode_unlink" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: unlink of protected files is not refused" },
    ProgramSpec { name: "enforce_inode_rmdir", program: Program::EnforceInodeRmdir, hook: Hook::Lsm { hook: "inode_rmdir" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: rmdir of protected directories is not refused" },
    ProgramSpec { name: "enforce_inode_rename", program: Program::EnforceInodeRename, hook: Hook::Lsm { hook: "inode_rename" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: renames of, into and over protected files are not refused" },
    ProgramSpec { name: "enforce_inode_link", program: Program::EnforceInodeLink, hook: Hook::Lsm { hook: "inode_link" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: hard links to protected files are not refused" },
    ProgramSpec { name: "enforce_inode_setxattr", program: Program::EnforceInodeSetxattr, hook: Hook::Lsm { hook: "inode_setxattr" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: setxattr on protected files is not refused" },
    ProgramSpec { name: "enforce_inode_removexattr", program: Program::EnforceInodeRemovexattr, hook: Hook::Lsm { hook: "inode_removexattr" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: removexattr on protected files is not refused" },
    ProgramSpec { name: "taint_ptrace_access_check", program: Program::TaintPtraceAccessCheck, hook: Hook::Lsm { hook: "ptrace_access_check" }, family: Family::Process, required: false, missing_means: "no BPF LSM: the ptrace access check taints through fexit/ptrace_may_access where that attaches" },
    // After the LSM program: attached only where that one is not (see `Sensors::load`).
    ProgramSpec { name: "taint_ptrace_may_access", program: Program::TaintPtraceMayAccess, hook: Hook::FExit { function: "ptrace_may_access" }, family: Family::Process, required: false, missing_means: "a write to another process's memory through /proc/PID/mem does not taint it unless lsm/ptrace_access_check is attached" },
    ProgramSpec { name: "enforce_socket_sendmsg", program: Program::EnforceSocketSendmsg, hook: Hook::Lsm { hook: "socket_sendmsg" }, family: Family::Enforce, required: false, missing_means: "no BPF LSM: a received descriptor's event does not name its sender" },
];

/// The programs the agent attaches: all of them, except the database capture hooks (they run
/// on every read and write of the host) when no database endpoint is configured, and the
/// BPF LSM enforcement programs when no policy can be enforced (`enforcing` false: no
/// `[policy] dir`, which only a restart can set). Without policies those programs decide
/// nothing and report nothing, and each one the kernel verifies costs start-up time (seconds
/// under emulation) and is one more program in the kernel.
pub fn selected(
    database_enabled: bool,
    enforcing: bool,
) -> impl Iterator<Item = &'static ProgramSpec> {
    PROGRAMS.iter().filter(move |spec| {
        (database_enabled || spec.family != Family::Db)
            && (enforcing || spec.family != Family::Enforce)
    })
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::TracePoint { category, name } => write!(f, "tracepoint/{category}/{name}"),
            Hook::RawTracePoint { name } => write!(f, "raw_tracepoint/{name}"),
            Hook::CgroupConnect => write!(f, "cgroup/connect"),
            Hook::Lsm { hook } => write!(f, "lsm/{hook}"),
            Hook::FExit { function } => write!(f, "fexit/{function}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use phiguard_common::program::Program;

    use super::PROGRAMS;

    #[test]
    fn every_program_is_attached_somewhere_and_every_attachment_has_its_own_name() {
        for program in Program::ALL {
            assert!(
                PROGRAMS.iter().any(|spec| spec.program == program),
                "{} is attached nowhere",
                program.name()
            );
        }
        let names: HashSet<&str> = PROGRAMS.iter().map(|spec| spec.name).collect();
        assert_eq!(names.len(), PROGRAMS.len(), "two attachments share a name");
    }

    #[test]
    fn an_agent_without_policies_loads_no_enforcement_program_and_one_with_them_loads_all() {
        use super::{selected, Family};
        let observing: Vec<_> = selected(false, false).collect();
        assert!(observing.iter().all(|s| s.family != Family::Enforce));
        assert!(observing.iter().all(|s| s.family != Family::Db));
        assert!(observing.iter().any(|s| s.family == Family::File));
        let enforcing: Vec<_> = selected(false, true).collect();
        assert_eq!(
            enforcing.len() - observing.len(),
            PROGRAMS
                .iter()
                .filter(|s| s.family == Family::Enforce)
                .count()
        );
        assert_eq!(selected(true, true).count(), PROGRAMS.len());
    }

    #[test]
    fn an_attachment_of_its_own_program_is_named_after_it() {
        for spec in PROGRAMS {
            let shared = PROGRAMS
                .iter()
                .filter(|s| s.program == spec.program)
                .count()
                > 1;
            if !shared {
                assert_eq!(spec.name, spec.program.name());
            }
        }
    }
}
