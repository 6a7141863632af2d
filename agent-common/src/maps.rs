//! Map names, keys and values, spelled once for both sides.

/// The one ring buffer all programs write events to.
pub const EVENTS: &str = "EVENTS";
/// Per-CPU `u64` counters of failed ring-buffer reservations, indexed by [`crate::event::Kind`].
pub const LOST: &str = "LOST";
/// Per-CPU `u64` counters of program runs that stopped on a fault (a kernel read, a map
/// update or a scratch lookup that failed where it should not), indexed by
/// [`crate::program::Program`].
pub const FAULTS: &str = "FAULTS";
/// Watched and protected directories/files: [`InodeKey`] (with the policy slot) →
/// [`crate::policy::WatchValue`].
pub const WATCHED_INODES: &str = "WATCHED_INODES";
/// Labels of protected inodes under BPF LSM: [`InodeKey`] (with the policy slot) →
/// [`crate::policy::WatchValue`] (`rule_here` protects the inode, `rule_below` what is created
/// in it). Filled by the agent from the same tree walk the fanotify layer labels with, and by
/// the kernel: a file or directory created (or first looked up) in a labelled directory takes
/// its `rule_below`. Not a control map: the kernel writes it too.
pub const INODE_LABELS: &str = "INODE_LABELS";
/// Dentries being created on a filesystem with protected inodes, between the creation hook and
/// `d_instantiate`: dentry address → 1. A new inode that reuses the number of a deleted
/// labelled one loses the stale label there.
pub const CREATING: &str = "CREATING";
/// Devices that hold at least one watched inode: kernel `dev_t` (`u32`) → number of watches.
pub const WATCHED_DEVS: &str = "WATCHED_DEVS";
/// Watched absolute path prefixes for opens that failed: LPM trie over path bytes → watch id.
pub const WATCHED_PREFIXES: &str = "WATCHED_PREFIXES";
/// Watched and protected TCP ports: [`crate::policy::PortKey`] (with the policy slot) →
/// kernel rule index or [`crate::policy::NO_RULE`].
pub const WATCHED_PORTS: &str = "WATCHED_PORTS";
/// Protected unix sockets: [`InodeKey`] (with the policy slot) of the socket file → kernel
/// rule index.
pub const UNIX_SOCKETS: &str = "UNIX_SOCKETS";
/// The active policy slot (`u32`, 0 or 1), in an array of one.
pub const POLICY_SLOT: &str = "POLICY_SLOT";
/// Compiled rules: kernel rule index → [`crate::policy::RuleEntry`].
pub const RULES: &str = "RULES";
/// Rule subjects by executable (device, inode): [`crate::policy::SubjectKey`] → subject bit
/// mask.
pub const SUBJECT_EXE: &str = "SUBJECT_EXE";
/// Rule subjects by parent executable: [`crate::policy::SubjectKey`] → subject bit mask.
pub const SUBJECT_PARENT: &str = "SUBJECT_PARENT";
/// Rule subjects by uid: [`crate::policy::IdKey`] → subject bit mask.
pub const SUBJECT_UID: &str = "SUBJECT_UID";
/// Rule subjects by gid: [`crate::policy::IdKey`] → subject bit mask.
pub const SUBJECT_GID: &str = "SUBJECT_GID";
/// Rule subjects by script (device, inode): [`crate::policy::SubjectKey`] → subject bit mask,
/// matched against [`SCRIPT_IDENTITY`].
pub const SUBJECT_SCRIPT: &str = "SUBJECT_SCRIPT";
/// Subjects that name a script, per kernel rule: rule index → subject bit mask (an array of
/// `2 * MAX_RULES`; 0 where no subject names one). Kept apart from
/// [`crate::policy::RuleEntry`] so that struct keeps its layout.
pub const SCRIPT_SUBJECTS: &str = "SCRIPT_SUBJECTS";
/// Exec allow-lists in force per cgroup: [`crate::policy::ScopeKey`] → kernel rule index.
pub const EXEC_SCOPES: &str = "EXEC_SCOPES";
/// Directories and files an exec rule allows: [`crate::policy::SubjectKey`] → `1`.
pub const EXEC_ALLOWED: &str = "EXEC_ALLOWED";
/// The agent's own process, as an [`AgentId`] in an array of one: policies never apply to the
/// agent, which reads protected directories to compile them and hashes protected binaries.
/// Pinned while enforcing, so a restarted agent exempts itself from its predecessor's programs
/// too.
pub const AGENT: &str = "AGENT";
/// What each process executed, as the kernel executed it: global tgid (`u32`) →
/// [`ExecIdentity`]. Written at exec, copied to a child at fork, removed when the last thread
/// of the process exits. Decisions take the subject's executable from here, never from the
/// process's `mm->exe_file`, which a process can rewrite (`prctl(PR_SET_MM_MAP)` needs only
/// `CAP_SYS_ADMIN` in a user namespace of its own). Pinned while enforcing, so every
/// generation of programs shares it.
pub const EXEC_IDENTITY: &str = "EXEC_IDENTITY";
/// The script each process runs, where it has one: global tgid (`u32`) → [`ExecIdentity`]
/// (the script's device and inode). Written at an exec through an interpreter (`#!`) whose
/// path is one of [`SCRIPT_PATHS`], from the initial user namespace, with no variable of
/// [`crate::limits::CODE_INJECTING_ENV`] in the new environment and not traced; removed at any
/// other exec and when the process ends; copied to a child at fork; removed (not flagged) by
/// taint. A map of its own, so that [`EXEC_IDENTITY`]'s value, pinned and shared by every
/// agent generation, keeps its layout. Pinned likewise while enforcing.
pub const SCRIPT_IDENTITY: &str = "SCRIPT_IDENTITY";
/// Paths by which a listed script is recognised at exec (the `script:` path as written and its
/// canonical path, each checked at load to pass only through root's directories and links):
/// the path's bytes, NUL-padded to [`crate::limits::PATH_LEN`] → [`InodeKey`] (slot 0) of the
/// script. The kernel compares `linux_binprm.filename` — the path the caller asked to execute,
/// which the interpreter opens again — byte for byte.
pub const SCRIPT_PATHS: &str = "SCRIPT_PATHS";
/// Paths [`SCRIPT_PATHS`] holds at most.
pub const MAX_SCRIPT_PATHS: u32 = 512;
/// Descriptors of protected files in flight over unix sockets (`SCM_RIGHTS`): `struct file`
/// address (`u64`) → [`crate::event::Sender`], written by BPF LSM `socket_sendmsg` in the
/// sender and read by `file_receive` in the receiver. LRU: a descriptor never received ages
/// out; one sent by several processes names the last.
pub const SCM_SENDERS: &str = "SCM_SENDERS";
/// Entries [`SCM_SENDERS`] holds at most.
pub const MAX_SCM_SENDERS: u32 = 1024;
/// Programs the SIGKILL layer never kills: [`InodeKey`] (slot 0) of the executable → `1`.
pub const NEVER_KILL: &str = "NEVER_KILL";
/// Programs [`NEVER_KILL`] holds at most.
pub const MAX_NEVER_KILL: u32 = 256;
/// Break-glass grants in force: [`GrantKey`] (a uid, or an executable's device and inode) →
/// [`GrantValue`] (when it expires, and its slot). Decisions that would refuse an access let
/// it go ahead when the process is covered by a grant that has not expired
/// (`bpf_ktime_get_boot_ns() < expires_boot_ns`: the kernel ends it by itself, agent or not).
/// Written by the agent from the break-glass directory; pinned while enforcing, so every
/// generation of programs shares it.
pub const BREAK_GLASS: &str = "BREAK_GLASS";
/// Grants [`BREAK_GLASS`] holds at once (also the number of slots).
pub const MAX_GRANTS: u32 = 64;

/// [`GrantKey::kind`].
pub mod grant_kind {
    /// A user: `id` is the real uid, `dev` 0.
    pub const USER: u32 = 1;
    /// A program: `dev` and `id` are the executable's kernel `dev_t` and inode (as in
    /// [`super::EXEC_IDENTITY`]).
    pub const EXE: u32 = 2;
}

/// Key of [`BREAK_GLASS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// A [`grant_kind`] code.
    pub kind: u32,
    /// Kernel `dev_t` of the executable (0 for a user).
    pub dev: u32,
    /// uid, or inode number of the executable.
    pub id: u64,
}

/// Value of [`BREAK_GLASS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantValue {
    /// `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`) at which the grant ends.
    pub expires_boot_ns: u64,
    /// The grant's slot (below [`MAX_GRANTS`]): decisions it allows carry it as their subject.
    pub slot: u32,
    /// The grant's generation, unique among the grants of one break-glass directory (never 0
    /// for a grant written since generations exist): decisions it allows carry it too, so a
    /// record read after the slot passed to a later grant still names the right one.
    pub generation: u32,
}

const _: () = assert!(core::mem::size_of::<GrantKey>() == 16);
const _: () = assert!(core::mem::size_of::<GrantValue>() == 16);

/// Database TCP ports (`u32`, host byte order) → `1`.
pub const DB_PORTS: &str = "DB_PORTS";
/// Database unix sockets: [`InodeKey`] (slot 0) of the socket file → `1`.
pub const DB_UNIX_SOCKETS: &str = "DB_UNIX_SOCKETS";
/// The maps only user space writes: the agent's configuration in the kernel (what is watched,
/// the policies, its own exemption, the database endpoints). No kernel program writes them, so
/// anything that changes them other than the agent is tampering (see the agent's integrity
/// check).
pub const CONTROL_MAPS: &[&str] = &[
    WATCHED_INODES,
    WATCHED_DEVS,
    WATCHED_PREFIXES,
    WATCHED_PORTS,
    UNIX_SOCKETS,
    POLICY_SLOT,
    RULES,
    SUBJECT_EXE,
    SUBJECT_PARENT,
    SUBJECT_UID,
    SUBJECT_GID,
    EXEC_SCOPES,
    EXEC_ALLOWED,
    AGENT,
    NEVER_KILL,
    DB_PORTS,
    DB_UNIX_SOCKETS,
];
/// Database sockets connected before the agent started, to be joined at their next read or
/// write: [`InodeKey`] (sockfs device, slot 0, the inode `/proc/PID/fd` shows as
/// `socket:[N]`) → `db_role` code.
pub const DB_JOIN: &str = "DB_JOIN";
/// Processes holding database sockets: tgid → a [`db_process`] code.
pub const DB_PROCESSES: &str = "DB_PROCESSES";
/// Values of [`DB_PROCESSES`].
pub mod db_process {
    /// The process holds or inherited a tracked database socket.
    pub const TRACKED: u32 = 1;
    /// The process holds a socket of [`super::DB_JOIN`] too: its reads and writes on untracked
    /// sockets look there.
    pub const JOIN: u32 = 2;
}
/// The global holding [`crate::offsets::KernelOffsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";
/// The `u32` global that says whether the agent's fanotify layer decides and reports opens of
/// protected files (1); the open-exit programs then report only the refusals they enforce
/// themselves (SIGKILL of an open the fanotify layer did not refuse: the agent is down).
pub const FANOTIFY_DECIDES_GLOBAL: &str = "FANOTIFY_DECIDES";
/// The `u32` global that bounds the statement text the kernel captures per PostgreSQL
/// message (Query, Parse, the startup packet), in bytes (`[database] statement_capture_kib`).
pub const DB_TEXT_CAPTURE_GLOBAL: &str = "DB_TEXT_CAPTURE";
/// The `u32` global that says how the kernel's `inode_setattr` LSM hook takes its arguments:
/// 1 for `(struct mnt_idmap *, struct dentry *, struct iattr *)` (6.12), 0 for
/// `(struct dentry *, struct iattr *)` (Debian 12's 6.1). The agent reads it from the
/// prototype of `bpf_lsm_inode_setattr` in the kernel's BTF.
pub const INODE_SETATTR_IDMAP_GLOBAL: &str = "INODE_SETATTR_IDMAP";

/// Key of [`WATCHED_INODES`]: inode numbers repeat across filesystems, so the device is part
/// of it. `dev` is the kernel's internal encoding (`MAJOR << 20 | MINOR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// Kernel `dev_t` of the inode's super block.
    pub dev: u32,
    /// Policy slot the entry belongs to (0 where slots do not apply).
    pub slot: u32,
    /// Inode number.
    pub ino: u64,
}

/// Value of [`AGENT`]: the agent's process as the kernel sees it. Both fields must match, so
/// the exemption dies with the agent: a later process given the same pid has another start
/// time (pids are handed out in turn, so one comes back only after all `pid_max` of them have
/// been used — never within one tick).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentId {
    /// Global thread-group id (0: no agent).
    pub tgid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Start of the agent's thread-group leader in clock ticks since boot, as the 22nd field
    /// of `/proc/PID/stat` shows it: `start_boottime` divided by [`NS_PER_TICK`].
    pub start_ticks: u64,
}

/// Nanoseconds per clock tick of `/proc/PID/stat` (`USER_HZ` is 100 on every Linux ABI the
/// agent runs on).
pub const NS_PER_TICK: u64 = 10_000_000;

/// Value of [`EXEC_IDENTITY`]: the executable a process runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecIdentity {
    /// Kernel `dev_t` of the executable's super block.
    pub dev: u32,
    /// [`identity_flags`].
    pub flags: u32,
    /// Inode number of the executable.
    pub ino: u64,
    /// Start of the process (its thread-group leader) in clock ticks since boot
    /// (`start_boottime` / [`NS_PER_TICK`], as `/proc/PID/stat` shows it), so an entry left by
    /// a process whose pid was reused never names the new one.
    pub start_ticks: u64,
}

/// [`ExecIdentity::flags`].
pub mod identity_flags {
    /// The process may run code it was not executed with: it mapped executable code from a
    /// file that is not the executable's and not root's alone (a preloaded or `dlopen`ed
    /// library of a user, a memfd), or it was traced (`ptrace`) or written to
    /// (`process_vm_writev`) by another process. It matches no `exe` subject until its next
    /// exec.
    pub const TAINTED: u32 = 1;
}

/// Processes whose executable [`EXEC_IDENTITY`] holds at once (more than `pid_max` allows by
/// default: 4194304 on 64-bit machines is the ceiling, real servers run far fewer).
pub const MAX_PROCESSES: u32 = 65536;

/// Watch id carried by events that matched no watch.
pub const NO_WATCH: u32 = u32::MAX;
