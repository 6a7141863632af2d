//! Kernel struct field offsets. aya's Rust programs have no CO-RE relocations, so user space
//! reads these from `/sys/kernel/btf/vmlinux` at start-up and hands them to the programs as a
//! read-only global (`EbpfLoader::set_global`).

/// Byte offsets of the kernel struct fields the programs follow. All are offsets within the
/// struct named by the field's prefix (`task_files` is `task_struct.files`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.thread_info.status` (x86: `TS_COMPAT` while the task is in a 32-bit
    /// system call)
    pub task_thread_status: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.group_leader`
    pub task_group_leader: u32,
    /// `task_struct.start_boottime`
    pub task_start_boottime: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `task_struct.loginuid` (a `kuid_t`)
    pub task_loginuid: u32,
    /// `task_struct.sessionid`
    pub task_sessionid: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `task_struct.fs`
    pub task_fs: u32,
    /// `fs_struct.pwd` (a `struct path`)
    pub fs_pwd: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `file.f_path`
    pub file_f_path: u32,
    /// `path.dentry`
    pub path_dentry: u32,
    /// `dentry.d_parent`
    pub dentry_d_parent: u32,
    /// `dentry.d_name` (a `struct qstr`)
    pub dentry_d_name: u32,
    /// `dentry.d_inode`
    pub dentry_d_inode: u32,
    /// `dentry.d_sb`
    pub dentry_d_sb: u32,
    /// `qstr.name`
    pub qstr_name: u32,
    /// `inode.i_ino`
    pub inode_i_ino: u32,
    /// `super_block.s_dev`
    pub sb_s_dev: u32,
    /// `linux_binprm.filename`
    pub binprm_filename: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.exe_file`
    pub mm_exe_file: u32,
    /// `file.f_mode`
    pub file_f_mode: u32,
    /// `file.f_flags` (the open flags the kernel took from the call; `O_TRUNC` and `O_CREAT`
    /// are still there while `security_file_open` runs)
    pub file_f_flags: u32,
    /// `linux_binprm.file`
    pub binprm_file: u32,
    /// `unix_sock.path` (the bound path of a unix socket)
    pub unix_sock_path: u32,
    /// `path.mnt`
    pub path_mnt: u32,
    /// `vfsmount.mnt_root`
    pub vfsmount_mnt_root: u32,
    /// `mount.mnt` (the `vfsmount` embedded in `struct mount`)
    pub mount_mnt: u32,
    /// `mount.mnt_id` (the id `/proc/<pid>/mountinfo` shows first)
    pub mount_mnt_id: u32,
    /// `file.private_data` (the `struct socket` of a socket file)
    pub file_private_data: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock_common.skc_family` (`struct sock` starts with its `sock_common`)
    pub skc_family: u32,
    /// `sock_common.skc_num` (local port, host byte order)
    pub skc_num: u32,
    /// `sock_common.skc_dport` (remote port, network byte order)
    pub skc_dport: u32,
    /// `unix_sock.peer`
    pub unix_sock_peer: u32,
    /// `sock_common.skc_daddr` (remote IPv4 address)
    pub skc_daddr: u32,
    /// `sock_common.skc_rcv_saddr` (local IPv4 address)
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_v6_daddr` (remote IPv6 address)
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr` (local IPv6 address)
    pub skc_v6_rcv_saddr: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `signal_struct.live` (threads of the group not yet exiting, an `atomic_t`)
    pub signal_live: u32,
    /// `task_struct.ptrace` (non-zero while the task is traced)
    pub task_ptrace: u32,
    /// `inode.i_uid` (a `kuid_t`)
    pub inode_i_uid: u32,
    /// `inode.i_mode` (a `umode_t`, 16 bits)
    pub inode_i_mode: u32,
    /// `msghdr.msg_control` (in an anonymous union with `msg_control_user`)
    pub msghdr_msg_control: u32,
    /// `msghdr.msg_controllen`
    pub msghdr_msg_controllen: u32,
    /// `linux_binprm.interp` (the name of the program that will run: the interpreter after
    /// `binfmt_script`, else the same pointer as `filename`)
    pub binprm_interp: u32,
    /// `mm_struct.env_start` (user address of the new image's environment strings)
    pub mm_env_start: u32,
    /// `mm_struct.env_end`
    pub mm_env_end: u32,
    /// `task_struct.cred` (the subjective credentials)
    pub task_cred: u32,
    /// `cred.user_ns`
    pub cred_user_ns: u32,
    /// `user_namespace.level` (0: the initial user namespace)
    pub user_ns_level: u32,
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 59 * 4);
