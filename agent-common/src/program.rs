//! The kernel programs by index, spelled once for both sides: the fault counters (`FAULTS`)
//! are kept per program, and user space names each counter after its program.

/// One kernel program of the product object. The names are the programs' symbol names (and
/// the registry's); the order is the index of its fault counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `process_sched_process_fork`.
    ProcessSchedProcessFork = 0,
    /// `process_sched_process_exec`.
    ProcessSchedProcessExec,
    /// `process_sched_process_exit`.
    ProcessSchedProcessExit,
    /// `process_sys_enter_execve`.
    ProcessSysEnterExecve,
    /// `process_sys_enter_execveat`.
    ProcessSysEnterExecveat,
    /// `file_sys_exit_opens`: one program at the exits of `open`, `openat` and `openat2`.
    FileSysExitOpens,
    /// `net_connect4`.
    NetConnect4,
    /// `net_connect6`.
    NetConnect6,
    /// `net_inet_sock_set_state`.
    NetInetSockSetState,
    /// `db_sys_exit_connect`.
    DbSysExitConnect,
    /// `db_sys_exit_accept`.
    DbSysExitAccept,
    /// `db_sys_exit_accept4`.
    DbSysExitAccept4,
    /// `db_sys_exit_io`: one program at the exits of `read`, `write`, `recvfrom`, `sendto`,
    /// `readv`, `writev`, `recvmsg` and `sendmsg`.
    DbSysExitIo,
    /// `enforce_file_open`.
    EnforceFileOpen,
    /// `enforce_bprm_check_security`.
    EnforceBprmCheckSecurity,
    /// `enforce_unix_stream_connect`.
    EnforceUnixStreamConnect,
    /// `taint_sys_enter_mmap`.
    TaintSysEnterMmap,
    /// `taint_sys_enter_ptrace`.
    TaintSysEnterPtrace,
    /// `taint_sys_enter_process_vm_writev`.
    TaintSysEnterProcessVmWritev,
    /// `enforce_file_receive`.
    EnforceFileReceive,
    /// `file_sys_exit_pidfd_getfd`.
    FileSysExitPidfdGetfd,
    /// `enforce_d_instantiate`.
    EnforceDInstantiate,
    /// `enforce_inode_create`.
    EnforceInodeCreate,
    /// `enforce_inode_mkdir`.
    EnforceInodeMkdir,
    /// `enforce_inode_mknod`.
    EnforceInodeMknod,
    /// `enforce_inode_symlink`.
    EnforceInodeSymlink,
    /// `enforce_inode_setattr`.
    EnforceInodeSetattr,
    /// `enforce_inode_unlink`.
    EnforceInodeUnlink,
    /// `enforce_inode_rmdir`.
    EnforceInodeRmdir,
    /// `enforce_inode_rename`.
    EnforceInodeRename,
    /// `enforce_inode_link`.
    EnforceInodeLink,
    /// `enforce_inode_setxattr`.
    EnforceInodeSetxattr,
    /// `enforce_inode_removexattr`.
    EnforceInodeRemovexattr,
    /// `enforce_socket_sendmsg`.
    EnforceSocketSendmsg,
    /// `taint_ptrace_access_check` (BPF LSM).
    TaintPtraceAccessCheck,
    /// `taint_ptrace_may_access` (fexit).
    TaintPtraceMayAccess,
}

/// Number of programs (entries of the `FAULTS` map).
pub const PROGRAM_COUNT: u32 = 36;

impl Program {
    /// Every program, in index order.
    pub const ALL: [Program; PROGRAM_COUNT as usize] = [
        Program::ProcessSchedProcessFork,
        Program::ProcessSchedProcessExec,
        Program::ProcessSchedProcessExit,
        Program::ProcessSysEnterExecve,
        Program::ProcessSysEnterExecveat,
        Program::FileSysExitOpens,
        Program::NetConnect4,
        Program::NetConnect6,
        Program::NetInetSockSetState,
        Program::DbSysExitConnect,
        Program::DbSysExitAccept,
        Program::DbSysExitAccept4,
        Program::DbSysExitIo,
        Program::EnforceFileOpen,
        Program::EnforceBprmCheckSecurity,
        Program::EnforceUnixStreamConnect,
        Program::TaintSysEnterMmap,
        Program::TaintSysEnterPtrace,
        Program::TaintSysEnterProcessVmWritev,
        Program::EnforceFileReceive,
        Program::FileSysExitPidfdGetfd,
        Program::EnforceDInstantiate,
        Program::EnforceInodeCreate,
        Program::EnforceInodeMkdir,
        Program::EnforceInodeMknod,
        Program::EnforceInodeSymlink,
        Program::EnforceInodeSetattr,
        Program::EnforceInodeUnlink,
        Program::EnforceInodeRmdir,
        Program::EnforceInodeRename,
        Program::EnforceInodeLink,
        Program::EnforceInodeSetxattr,
        Program::EnforceInodeRemovexattr,
        Program::EnforceSocketSendmsg,
        Program::TaintPtraceAccessCheck,
        Program::TaintPtraceMayAccess,
    ];

    /// The program's symbol name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Program::ProcessSchedProcessFork => "process_sched_process_fork",
            Program::ProcessSchedProcessExec => "process_sched_process_exec",
            Program::ProcessSchedProcessExit => "process_sched_process_exit",
            Program::ProcessSysEnterExecve => "process_sys_enter_execve",
            Program::ProcessSysEnterExecveat => "process_sys_enter_execveat",
            Program::FileSysExitOpens => "file_sys_exit_opens",
            Program::NetConnect4 => "net_connect4",
            Program::NetConnect6 => "net_connect6",
            Program::NetInetSockSetState => "net_inet_sock_set_state",
            Program::DbSysExitConnect => "db_sys_exit_connect",
            Program::DbSysExitAccept => "db_sys_exit_accept",
            Program::DbSysExitAccept4 => "db_sys_exit_accept4",
            Program::DbSysExitIo => "db_sys_exit_io",
            Program::EnforceFileOpen => "enforce_file_open",
            Program::EnforceBprmCheckSecurity => "enforce_bprm_check_security",
            Program::EnforceUnixStreamConnect => "enforce_unix_stream_connect",
            Program::TaintSysEnterMmap => "taint_sys_enter_mmap",
            Program::TaintSysEnterPtrace => "taint_sys_enter_ptrace",
            Program::TaintSysEnterProcessVmWritev => "taint_sys_enter_process_vm_writev",
            Program::EnforceFileReceive => "enforce_file_receive",
            Program::FileSysExitPidfdGetfd => "file_sys_exit_pidfd_getfd",
            Program::EnforceDInstantiate => "enforce_d_instantiate",
            Program::EnforceInodeCreate => "enforce_inode_create",
            Program::EnforceInodeMkdir => "enforce_inode_mkdir",
            Program::EnforceInodeMknod => "enforce_inode_mknod",
            Program::EnforceInodeSymlink => "enforce_inode_symlink",
            Program::EnforceInodeSetattr => "enforce_inode_setattr",
            Program::EnforceInodeUnlink => "enforce_inode_unlink",
            Program::EnforceInodeRmdir => "enforce_inode_rmdir",
            Program::EnforceInodeRename => "enforce_inode_rename",
            Program::EnforceInodeLink => "enforce_inode_link",
            Program::EnforceInodeSetxattr => "enforce_inode_setxattr",
            Program::EnforceInodeRemovexattr => "enforce_inode_removexattr",
            Program::EnforceSocketSendmsg => "enforce_socket_sendmsg",
            Program::TaintPtraceAccessCheck => "taint_ptrace_access_check",
            Program::TaintPtraceMayAccess => "taint_ptrace_may_access",
        }
    }
}

const _: () = {
    let mut i = 0;
    while i < Program::ALL.len() {
        assert!(Program::ALL[i] as usize == i);
        i += 1;
    }
};
