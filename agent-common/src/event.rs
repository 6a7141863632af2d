//! Records the kernel programs write to the ring buffer. Each starts with an [`EventHeader`]
//! whose `kind` says which struct follows.

use crate::{
    limits::{ARGS_LEN, COMM_LEN, DB_CAPTURE_LEN, NAMES_LEN, NAME_MAX, PATH_LEN},
    policy::Decision,
};

/// What a record is. Stored as `u32` in [`EventHeader::kind`]; also the index of the
/// per-kind loss counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A process forked a new process ([`ForkEvent`]).
    Fork = 1,
    /// A process replaced its image ([`ExecEvent`]).
    Exec = 2,
    /// The argv an `execve`/`execveat` was called with ([`ExecArgsEvent`]).
    ExecArgs = 3,
    /// A process (thread-group leader) exited ([`ExitEvent`]).
    Exit = 4,
    /// An `open`/`openat`/`openat2` under a watch returned ([`FileOpenEvent`]).
    FileOpen = 5,
    /// An outgoing `connect()` to a watched port ([`ConnectEvent`]).
    Connect = 6,
    /// A TCP connection on a watched port was established or closed ([`SockStateEvent`]).
    SockState = 7,
    /// A socket to or from a database endpoint was connected or accepted ([`DbSockEvent`]).
    DbSock = 8,
    /// Bytes written to or read from a tracked database socket ([`DbDataEvent`]).
    DbData = 9,
}

/// Number of loss counters (one per [`Kind`], index 0 unused).
pub const KIND_COUNT: u32 = 10;

impl Kind {
    /// All kinds, in code order.
    pub const ALL: [Kind; 9] = [
        Kind::Fork,
        Kind::Exec,
        Kind::ExecArgs,
        Kind::Exit,
        Kind::FileOpen,
        Kind::Connect,
        Kind::SockState,
        Kind::DbSock,
        Kind::DbData,
    ];

    /// The kind with this code, if any.
    pub fn from_code(code: u32) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u32 == code)
    }
}

/// `EventHeader::flags`: the exec was refused (BPF LSM): the process keeps its old image.
pub const FLAG_EXEC_REFUSED: u32 = 1 << 3;
/// `EventHeader::flags` of a [`DbSockEvent`]: the socket was connected before the agent
/// started and joined at its first read or write since (its session's start was not seen).
pub const FLAG_DB_JOINED: u32 = 1 << 4;
/// `EventHeader::flags` of a [`SockStateEvent`]: the connection's port is a database port and
/// not a watched one: the record only ends database sessions, and is not reported itself.
pub const FLAG_SOCK_DATABASE_ONLY: u32 = 1 << 5;
/// `EventHeader::flags` of a `DbDataEvent`: a server's write that failed because its client is
/// gone (`EPIPE`, `ECONNRESET`): the bytes are what the server said, and nobody received them.
/// `len` is what the call asked to write.
pub const FLAG_DB_UNDELIVERED: u32 = 1 << 6;
/// `EventHeader::flags` of a `DbDataEvent`: the kernel walked the call's PostgreSQL or MySQL
/// framing ([`FLAG_DB_MYSQL`]); the data is a sequence of [`DbSpan`]s, each followed by its
/// captured bytes, and no row content is in it. Without it the data is the call's first bytes
/// (TLS-direct and joined sessions).
pub const FLAG_DB_FRAMED: u32 = 1 << 7;
/// `EventHeader::flags` of a framed `DbDataEvent`: the kernel lost this direction's framing
/// (a length no valid message has, or more messages in one call than its walk bound): from
/// here on it carries only byte counts for it.
pub const FLAG_DB_FRAMING_LOST: u32 = 1 << 8;
/// `EventHeader::flags` of a framed `DbDataEvent`: a further record of the same call (its
/// `len` was counted with the first one, and is no end of stream).
pub const FLAG_DB_CONTINUED: u32 = 1 << 9;
/// `EventHeader::flags` of a framed `DbDataEvent`: the kernel walked it as MySQL/MariaDB
/// packets (without it, as PostgreSQL messages): the session's protocol, whatever its first
/// bytes look like (a client that reads the greeting's header apart gets it alone first).
pub const FLAG_DB_MYSQL: u32 = 1 << 10;
/// `EventHeader::flags`: a field was cut to fit its buffer.
pub const FLAG_TRUNCATED: u32 = 1;
/// `EventHeader::flags`: the working directory in an [`ExecEvent`] is complete (reached the
/// root of its mount).
pub const FLAG_CWD_COMPLETE: u32 = 1 << 2;
/// `EventHeader::flags`: the record was written from interrupt context or for another task, so
/// the process fields are not the process the event is about (pid 0 = unknown).
pub const FLAG_NO_PROCESS: u32 = 1 << 1;

/// Common to every record: what, when, and which process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// A [`Kind`] code.
    pub kind: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`).
    pub boot_ns: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id (thread-group id).
    pub tgid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Audit login uid: the user who logged in, unchanged by `su`/`sudo` (`u32::MAX` = unset).
    pub loginuid: u32,
    /// Audit session id (`u32::MAX` = unset).
    pub sessionid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// Boot-time nanoseconds at which the process (thread-group leader) started: with `tgid`
    /// it identifies the process even after its pid is reused.
    pub start_boot_ns: u64,
    /// Task name.
    pub comm: [u8; COMM_LEN],
}

/// [`Kind::Fork`]: the header describes the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    /// The parent (the forking process).
    pub header: EventHeader,
    /// Process id of the new process.
    pub child_tgid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Boot-time nanoseconds at which the child started.
    pub child_start_boot_ns: u64,
}

/// [`Kind::Exec`]: the header describes the process after the exec.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// The process with its new image.
    pub header: EventHeader,
    /// Thread id that called exec (differs from `pid` when a non-leader thread exec'd).
    pub old_pid: u32,
    /// Bytes used in `filename` (without NUL).
    pub filename_len: u32,
    /// The exec allow-list's decision.
    pub decision: Decision,
    /// Kernel `dev_t` of the file the kernel executed (for a script, its interpreter): the
    /// identity decisions use for this process (0 when unreadable).
    pub exe_dev: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Inode number of that file.
    pub exe_ino: u64,
    /// The file name passed to exec, as the kernel saw it.
    pub filename: [u8; PATH_LEN],
    /// Bytes used in `cwd` (names are NUL-terminated, so NULs count them).
    pub cwd_len: u32,
    /// Id of the mount `cwd` is relative to (as in `/proc/<pid>/mountinfo`).
    pub cwd_mnt_id: u32,
    /// Working directory: NUL-terminated names from the directory up to the root of its
    /// mount, innermost first (slack after `NAMES_LEN` for the verifier; only `cwd_len` count).
    pub cwd: [u8; NAMES_LEN + NAME_MAX],
}

/// [`Kind::ExecArgs`]: fixed part of the argv record. `args_len` bytes of NUL-separated
/// arguments follow it in the ring buffer record (the record is only as long as it needs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecArgsEvent {
    /// The calling thread (before the exec).
    pub header: EventHeader,
    /// Arguments captured.
    pub argc: u32,
    /// Bytes of arguments that follow.
    pub args_len: u32,
}

/// Scratch layout the kernel builds an argv record in before sending its used part. The
/// array has slack beyond [`ARGS_LEN`] so the verifier can see every copy stays in bounds.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecArgsScratch {
    /// The fixed part.
    pub event: ExecArgsEvent,
    /// NUL-separated arguments.
    pub args: [u8; 2 * ARGS_LEN],
}

/// [`Kind::Exit`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    /// The exiting process.
    pub header: EventHeader,
    /// `task_struct.exit_code`: `status << 8` for a normal exit, the signal number otherwise.
    pub exit_code: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// `FileOpenEvent::syscall`.
pub mod open_syscall {
    /// `open(2)`.
    pub const OPEN: u32 = 1;
    /// `openat(2)`.
    pub const OPENAT: u32 = 2;
    /// `openat2(2)`.
    pub const OPENAT2: u32 = 3;
    /// `creat(2)` (the fanotify layer, and BPF LSM `file_open`; no open-exit program hooks it).
    pub const CREAT: u32 = 4;
    /// `open_by_handle_at(2)` (fanotify layer only).
    pub const OPEN_BY_HANDLE_AT: u32 = 5;
    /// `execve(2)`/`execveat(2)` opening the program (fanotify layer only).
    pub const EXEC: u32 = 6;
    /// An open the fanotify layer saw outside any open-family call of the opener (io_uring,
    /// a kernel worker): the path and flags are unknown.
    pub const OTHER: u32 = 7;
    /// A descriptor taken from another process (`pidfd_getfd(2)`) or, under BPF LSM, received
    /// over a unix socket (`SCM_RIGHTS`): decided as an open with the descriptor's mode.
    pub const RECEIVE: u32 = 8;
    /// BPF LSM `inode_setattr` changing the size (`truncate`, `ftruncate`, `O_TRUNC`).
    pub const TRUNCATE: u32 = 9;
    /// BPF LSM `inode_setattr` changing the mode (`chmod` family).
    pub const CHMOD: u32 = 10;
    /// BPF LSM `inode_setattr` changing the owner or group (`chown` family).
    pub const CHOWN: u32 = 11;
    /// BPF LSM `inode_setattr` changing times only (`utimes` family, `touch`).
    pub const UTIMES: u32 = 12;
    /// BPF LSM `inode_unlink`.
    pub const UNLINK: u32 = 13;
    /// BPF LSM `inode_rmdir`.
    pub const RMDIR: u32 = 14;
    /// BPF LSM `inode_rename` (the protected file moved, or one moved into or over it).
    pub const RENAME: u32 = 15;
    /// BPF LSM `inode_link` (a link to a protected file, or into a protected directory).
    pub const LINK: u32 = 16;
    /// BPF LSM `inode_setxattr`.
    pub const SETXATTR: u32 = 17;
    /// BPF LSM `inode_removexattr`.
    pub const REMOVEXATTR: u32 = 18;
    /// BPF LSM `inode_create`/`inode_mkdir`/`inode_mknod`/`inode_symlink` in a protected
    /// directory.
    pub const CREATE: u32 = 19;
    /// The fanotify change reports: an attribute change of a protected inode the agent could
    /// not name more precisely (no earlier `stat` of it to compare with).
    pub const ATTRIB: u32 = 20;
    /// The fanotify change reports: a write to a protected file through a descriptor no
    /// decision of this agent let the writer have (opened before the agent, or passed to it).
    pub const WRITE: u32 = 21;
}

/// `EventHeader::flags` of a [`FileOpenEvent`] from the fanotify layer: the opener used the
/// 32-bit system call entry (`int 0x80`, a 32-bit program).
pub const FLAG_COMPAT_SYSCALL: u32 = 1 << 6;

/// `FileOpenEvent::matched_by`: how the kernel decided the open concerns a watch.
pub mod matched_by {
    /// The opened file, or a directory above it, is a watched inode; `names` holds the dentry
    /// names from the file up to (not including) the watch.
    pub const INODE: u32 = 1;
    /// The open failed; its relative path's base directory (cwd or dirfd) is a watched inode or
    /// below one; `names` holds the base directory's names up to the watch.
    pub const BASE_DIR: u32 = 2;
    /// The open failed; its absolute path starts with a watched prefix.
    pub const PREFIX: u32 = 3;
    /// The open failed with a relative path whose base is not under a watch as far as the kernel
    /// can tell (it may still climb into one with `..`): user space resolves and decides.
    pub const UNRESOLVED: u32 = 4;
    /// The fanotify layer found the opened inode labelled protected (whatever name reached
    /// it: a hard link, any depth); `path` holds the absolute path of the opened descriptor
    /// as the kernel names it, and the decision says which rule governs it.
    pub const LABEL: u32 = 5;
    /// The BPF LSM found the inode labelled protected (`INODE_LABELS`): `names` holds the
    /// dentry names from the inode up to the root of its filesystem, innermost first (the
    /// root's name `/` last when the walk got there), `dev` the filesystem.
    pub const LSM_LABEL: u32 = 6;
}

/// [`Kind::FileOpen`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileOpenEvent {
    /// The opening process.
    pub header: EventHeader,
    /// The syscall's result: a file descriptor, or `-errno`.
    pub ret: i64,
    /// Open flags (`O_*`).
    pub open_flags: u32,
    /// Creation mode.
    pub mode: u32,
    /// The `dirfd` argument (`AT_FDCWD` = -100 for `open` and cwd-relative calls).
    pub dirfd: i32,
    /// An `open_syscall` code.
    pub syscall: u32,
    /// A `matched_by` code.
    pub matched_by: u32,
    /// Id of the watch matched ([`crate::maps::NO_WATCH`] for `UNRESOLVED`).
    pub watch_id: u32,
    /// Kernel `dev_t` of the opened file (0 when the open failed).
    pub dev: u32,
    /// Bytes used in `names`.
    pub names_len: u32,
    /// Inode number of the opened file (0 when the open failed).
    pub ino: u64,
    /// Bytes used in `path` (without NUL).
    pub path_len: u32,
    /// Number of names in `names`.
    pub names_count: u32,
    /// The policy decision (for protected files).
    pub decision: Decision,
    /// With `syscall` [`open_syscall::RECEIVE`] under BPF LSM: the process that sent the
    /// descriptor over a unix socket (`SCM_RIGHTS`); zero when unknown (`pidfd_getfd`, or a
    /// send the kernel programs did not see).
    pub sender: Sender,
    /// The path as passed by the caller.
    pub path: [u8; PATH_LEN],
    /// NUL-terminated dentry names, innermost first (see `matched_by`).
    pub names: [u8; NAMES_LEN],
}

/// The process that handed a descriptor over (`SCM_RIGHTS`), recorded by BPF LSM
/// `socket_sendmsg` in the sender and read by `file_receive` in the receiver (map
/// `SCM_SENDERS`, keyed by the `struct file` address). All zero: no sender known.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sender {
    /// Process id (thread-group id) of the sender; 0 = none.
    pub tgid: u32,
    /// Kernel `dev_t` of the executable the kernel executed for the sender (`EXEC_IDENTITY`;
    /// 0 when it has no record or is tainted).
    pub exe_dev: u32,
    /// Boot-time nanoseconds at which the sender started: with `tgid` it identifies it.
    pub start_boot_ns: u64,
    /// Inode number of that executable.
    pub exe_ino: u64,
}

/// [`Kind::Connect`]: from `cgroup/connect4`/`connect6`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    /// The connecting process.
    pub header: EventHeader,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    /// Socket type (`SOCK_STREAM`, …).
    pub sock_type: u32,
    /// Destination address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// The policy decision (for protected ports).
    pub decision: Decision,
}

/// `SockStateEvent::direction`.
pub mod direction {
    /// Unknown (state change of a socket we did not see being set up).
    pub const UNKNOWN: u32 = 0;
    /// This host connected out.
    pub const OUTBOUND: u32 = 1;
    /// A local listener accepted the connection.
    pub const INBOUND: u32 = 2;
}

/// [`Kind::SockState`]: from `sock/inet_sock_set_state` for watched ports.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockStateEvent {
    /// The owning process when known (else `FLAG_NO_PROCESS` is set).
    pub header: EventHeader,
    /// Kernel address of the socket: identifies the connection across its events.
    pub skaddr: u64,
    /// TCP state before (`TCP_*` numbering of the kernel).
    pub old_state: u32,
    /// TCP state after.
    pub new_state: u32,
    /// A `direction` code.
    pub direction: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// Explicit padding.
    pub _pad: [u8; 6],
    /// Local address.
    pub saddr: [u8; 16],
    /// Remote address.
    pub daddr: [u8; 16],
}

/// `DbSockEvent::role` and `DbDataEvent::role`: which end of the database session this host's
/// socket is.
pub mod db_role {
    /// The client end (it connected to the database).
    pub const CLIENT: u32 = 1;
    /// The server end (a database listener accepted it).
    pub const SERVER: u32 = 2;
}

/// `DbDataEvent::op`.
pub mod db_op {
    /// The process wrote (sent) the bytes.
    pub const WRITE: u32 = 1;
    /// The process read (received) the bytes.
    pub const READ: u32 = 2;
}

/// `DbDataEvent::syscall`.
pub mod db_syscall {
    /// `write(2)`.
    pub const WRITE: u32 = 1;
    /// `read(2)`.
    pub const READ: u32 = 2;
    /// `sendto(2)` (and `send(3)`).
    pub const SENDTO: u32 = 3;
    /// `recvfrom(2)` (and `recv(3)`).
    pub const RECVFROM: u32 = 4;
    /// `writev(2)`.
    pub const WRITEV: u32 = 5;
    /// `readv(2)`.
    pub const READV: u32 = 6;
    /// `sendmsg(2)`.
    pub const SENDMSG: u32 = 7;
    /// `recvmsg(2)`.
    pub const RECVMSG: u32 = 8;
}

/// [`Kind::DbSock`]: a socket of a database session, when it became tracked.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DbSockEvent {
    /// The connecting or accepting process.
    pub header: EventHeader,
    /// Kernel address of the `struct sock`: identifies the session in [`DbDataEvent`]s (and,
    /// for TCP, in [`SockStateEvent::skaddr`]).
    pub sock: u64,
    /// A `db_role` code.
    pub role: u32,
    /// File descriptor in the process.
    pub fd: i32,
    /// `AF_INET`, `AF_INET6` or `AF_UNIX`.
    pub family: u16,
    /// Local port (TCP), host byte order.
    pub sport: u16,
    /// Remote port (TCP), host byte order.
    pub dport: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// Kernel `dev_t` of the socket file (unix).
    pub dev: u32,
    /// Explicit padding.
    pub _pad2: u32,
    /// Inode of the socket file (unix).
    pub ino: u64,
    /// Local address (TCP): 4 bytes for `AF_INET`, 16 for `AF_INET6`, network byte order.
    pub saddr: [u8; 16],
    /// Remote address (TCP), as `saddr`.
    pub daddr: [u8; 16],
}

/// [`Kind::DbData`]: fixed part of a capture record; `captured` bytes of data follow it in
/// the ring buffer record (the record is only as long as it needs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DbDataEvent {
    /// The reading or writing process.
    pub header: EventHeader,
    /// The session's `struct sock` address (see [`DbSockEvent::sock`]).
    pub sock: u64,
    /// A `db_role` code.
    pub role: u32,
    /// A `db_op` code.
    pub op: u32,
    /// A `db_syscall` code.
    pub syscall: u32,
    /// File descriptor.
    pub fd: i32,
    /// Bytes the call moved (its return value; 0 = end of stream on a read).
    pub len: u32,
    /// Bytes of data in the record (at most [`crate::limits::DB_CAPTURE_LEN`]): the call's
    /// first bytes (`FLAG_TRUNCATED` when fewer than `len`), or with `FLAG_DB_FRAMED` its
    /// spans with their headers.
    pub captured: u32,
    /// Bytes from the end of the call that follow the `captured` ones in the record (at most
    /// [`crate::limits::DB_TAIL_LEN`]; only when the call moved more than was captured, and
    /// never in a framed record).
    pub tail: u32,
    /// Framed records: the [`DbSpan`]s in the data (a long call is sent as several records).
    pub spans: u32,
    /// Framed records of this socket and direction the kernel could not deliver (ring buffer
    /// full) since the last one it did: their messages are lost, and the first span that
    /// starts a message ([`SPAN_BOUNDARY`]) resynchronises the stream.
    pub lost: u32,
}

/// One run of a framed capture record: `moved` consecutive bytes of the stream, of which the
/// first `captured` follow this header in the record; the rest (a body the audit does not
/// read: rows, COPY data, passwords, or text past the statement capture) stayed in the kernel.
/// A span never hides a message header: only a span's end is elided.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbSpan {
    /// Bytes of the stream the span stands for.
    pub moved: u32,
    /// Bytes of them captured (the record's bytes after this header).
    pub captured: u16,
    /// `SPAN_*` bits.
    pub flags: u16,
}

/// `DbSpan::flags`: the span starts at a message boundary.
pub const SPAN_BOUNDARY: u16 = 1;

/// Scratch layout a capture record is built in before its used part is sent. The data array
/// has slack so the verifier sees every copy in bounds.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DbDataScratch {
    /// The fixed part.
    pub event: DbDataEvent,
    /// Captured bytes.
    pub data: [u8; 2 * DB_CAPTURE_LEN],
}

const _: () = assert!(core::mem::size_of::<DbSockEvent>() == 80 + 40 + 32);
const _: () = assert!(core::mem::size_of::<DbDataEvent>() == 80 + 48);
const _: () = assert!(core::mem::size_of::<DbSpan>() == 8);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 80);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 96);
const _: () = assert!(
    core::mem::size_of::<ExecEvent>() == 80 + 8 + 16 + 16 + PATH_LEN + 8 + NAMES_LEN + NAME_MAX
);
const _: () = assert!(core::mem::size_of::<ExecArgsEvent>() == 88);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 88);
const _: () =
    assert!(core::mem::size_of::<FileOpenEvent>() == 80 + 56 + 16 + 24 + PATH_LEN + NAMES_LEN);
const _: () = assert!(core::mem::size_of::<Sender>() == 24);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 80 + 24 + 16);
const _: () = assert!(core::mem::size_of::<SockStateEvent>() == 80 + 64);
