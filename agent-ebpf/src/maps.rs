//! Every map the programs share. Names match `phiguard_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use phiguard_common::{
    event::{EventHeader, ExecArgsScratch, FileOpenEvent, KIND_COUNT},
    limits::{
        MAX_CREATING, MAX_INODE_LABELS, MAX_WATCHED_INODES, MAX_WATCHED_PORTS,
        MAX_WATCHED_PREFIXES, PATH_LEN, RING_BUFFER_BYTES,
    },
    maps::{
        AgentId, ExecIdentity, GrantKey, GrantValue, InodeKey, MAX_GRANTS, MAX_NEVER_KILL,
        MAX_PROCESSES, MAX_SCM_SENDERS, MAX_SCRIPT_PATHS,
    },
    policy::{
        IdKey, PortKey, RuleEntry, ScopeKey, SubjectKey, WatchValue, MAX_EXEC_SCOPES, MAX_RULES,
        MAX_SUBJECT_ENTRIES,
    },
    program::PROGRAM_COUNT,
};

/// The one ring buffer every program writes records to.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUFFER_BYTES, 0);

/// Failed ring-buffer writes per CPU, indexed by event kind.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(KIND_COUNT, 0);

/// Program runs that stopped on a fault, per CPU, indexed by `phiguard_common::program::Program`.
#[map]
pub static FAULTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROGRAM_COUNT, 0);

/// Watched and protected directories and files by (device, slot, inode).
#[map]
pub static WATCHED_INODES: HashMap<InodeKey, WatchValue> =
    HashMap::with_max_entries(2 * MAX_WATCHED_INODES, 0);

/// Labels of protected inodes under BPF LSM by (device, slot, inode). Not preallocated (see
/// `MAX_INODE_LABELS`): it holds what is labelled, not its capacity.
#[map]
pub static INODE_LABELS: HashMap<InodeKey, WatchValue> =
    HashMap::with_max_entries(MAX_INODE_LABELS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Descriptors of protected files sent over unix sockets (`struct file` address → who sent
/// it), from `socket_sendmsg` in the sender to `file_receive` in the receiver.
#[map]
pub static SCM_SENDERS: LruHashMap<u64, phiguard_common::event::Sender> =
    LruHashMap::with_max_entries(MAX_SCM_SENDERS, 0);

/// Dentries being created on a filesystem with protected inodes (dentry address → 1), from
/// the creation hook to `d_instantiate`.
#[map]
pub static CREATING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_CREATING, 0);

/// Devices holding at least one watched inode: opens elsewhere skip the dentry walk.
#[map]
pub static WATCHED_DEVS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_WATCHED_INODES, 0);

/// Watched absolute path prefixes, for opens that failed (no inode to compare).
#[map]
pub static WATCHED_PREFIXES: LpmTrie<[u8; PATH_LEN], u32> =
    LpmTrie::with_max_entries(MAX_WATCHED_PREFIXES, 0);

/// Watched and protected TCP ports (per slot) → kernel rule index or `NO_RULE`.
#[map]
pub static WATCHED_PORTS: HashMap<PortKey, u32> =
    HashMap::with_max_entries(2 * MAX_WATCHED_PORTS, 0);

/// The agent's own process (tgid and start time).
#[map]
pub static AGENT: Array<AgentId> = Array::with_max_entries(1, 0);

/// Programs the SIGKILL layer never kills, by (device, 0, inode) of the executable.
#[map]
pub static NEVER_KILL: HashMap<InodeKey, u32> = HashMap::with_max_entries(MAX_NEVER_KILL, 0);

/// Break-glass grants by user or executable (see `phiguard_common::maps::BREAK_GLASS`).
#[map]
pub static BREAK_GLASS: HashMap<GrantKey, GrantValue> = HashMap::with_max_entries(MAX_GRANTS, 0);

/// What each process executed, by global tgid (see `phiguard_common::maps::EXEC_IDENTITY`).
#[map]
pub static EXEC_IDENTITY: HashMap<u32, ExecIdentity> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// The script each process runs, by global tgid (see `phiguard_common::maps::SCRIPT_IDENTITY`).
#[map]
pub static SCRIPT_IDENTITY: HashMap<u32, ExecIdentity> =
    HashMap::with_max_entries(MAX_PROCESSES, 0);

/// Paths listed scripts are recognised by at exec → the script's (device, 0, inode).
#[map]
pub static SCRIPT_PATHS: HashMap<[u8; PATH_LEN], InodeKey> =
    HashMap::with_max_entries(MAX_SCRIPT_PATHS, 0);

/// Per-CPU scratch for a path looked up in `SCRIPT_PATHS`, then for environment chunks.
#[map]
pub static SCRIPT_SCRATCH: PerCpuArray<[u8; PATH_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Protected unix sockets by (device, slot, inode) of the socket file → kernel rule.
#[map]
pub static UNIX_SOCKETS: HashMap<InodeKey, u32> = HashMap::with_max_entries(2 * 256, 0);

/// The active policy slot.
#[map]
pub static POLICY_SLOT: Array<u32> = Array::with_max_entries(1, 0);

/// Compiled rules of both slots.
#[map]
pub static RULES: Array<RuleEntry> = Array::with_max_entries(2 * MAX_RULES, 0);

/// Subject bits by executable (per rule).
#[map]
pub static SUBJECT_EXE: HashMap<SubjectKey, u64> =
    HashMap::with_max_entries(MAX_SUBJECT_ENTRIES, 0);

/// Subject bits by parent executable (per rule).
#[map]
pub static SUBJECT_PARENT: HashMap<SubjectKey, u64> =
    HashMap::with_max_entries(MAX_SUBJECT_ENTRIES, 0);

/// Subject bits by uid (per rule).
#[map]
pub static SUBJECT_UID: HashMap<IdKey, u64> = HashMap::with_max_entries(MAX_SUBJECT_ENTRIES, 0);

/// Subject bits by gid (per rule).
#[map]
pub static SUBJECT_GID: HashMap<IdKey, u64> = HashMap::with_max_entries(MAX_SUBJECT_ENTRIES, 0);

/// Subject bits by script (per rule).
#[map]
pub static SUBJECT_SCRIPT: HashMap<SubjectKey, u64> =
    HashMap::with_max_entries(MAX_SUBJECT_ENTRIES, 0);

/// Subjects naming a script, per kernel rule.
#[map]
pub static SCRIPT_SUBJECTS: Array<u64> = Array::with_max_entries(2 * MAX_RULES, 0);

/// Exec allow-list per cgroup (0: host-wide).
#[map]
pub static EXEC_SCOPES: HashMap<ScopeKey, u32> = HashMap::with_max_entries(2 * MAX_EXEC_SCOPES, 0);

/// Directories and files exec rules allow.
#[map]
pub static EXEC_ALLOWED: HashMap<SubjectKey, u32> =
    HashMap::with_max_entries(MAX_SUBJECT_ENTRIES, 0);

/// Threads (`pid_tgid`) whose `open*` call the LSM program refused and reported: the call's
/// exit stays silent. Written only on a refusal; LRU so a thread killed mid-call cannot leak.
#[map]
pub static REFUSED_OPENS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Threads (`pid_tgid`) in `pidfd_getfd` whose received descriptor BPF LSM `file_receive`
/// reported (allowed, would-deny or refused): the call's exit stays silent. LRU so a thread
/// killed mid-call, or a 32-bit call (no exit tracepoint), cannot leak.
#[map]
pub static RECEIVES_REPORTED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(1024, 0);

/// Who set up a TCP socket on a watched port: filled when the socket leaves CLOSE in process
/// context, read when it is established or closed (often in softirq, where `current` is
/// unrelated).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockOwner {
    /// The owning process, as seen at set-up (`FLAG_NO_PROCESS` when unknown).
    pub header: EventHeader,
    /// `direction` code.
    pub direction: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Sockets on watched ports → their owner and direction.
#[map]
pub static SOCK_OWNERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(16384, 0);

/// Per-CPU scratch for argv records (larger than the stack).
#[map]
pub static EXEC_ARGS_SCRATCH: PerCpuArray<ExecArgsScratch> = PerCpuArray::with_max_entries(1, 0);

/// A file-open record plus slack so name copies at a masked offset stay in bounds.
#[repr(C)]
pub struct FileOpenScratch {
    /// The record sent.
    pub event: FileOpenEvent,
    /// Room a name copy may run into past `event.names`.
    pub slack: [u8; phiguard_common::limits::NAME_MAX],
}

/// Per-CPU scratch for file-open records.
#[map]
pub static FILE_OPEN_SCRATCH: PerCpuArray<FileOpenScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for LPM trie lookup keys.
#[map]
pub static PREFIX_KEY_SCRATCH: PerCpuArray<Key<[u8; PATH_LEN]>> =
    PerCpuArray::with_max_entries(1, 0);

/// Database TCP ports (host byte order) → 1.
#[map]
pub static DB_PORTS: HashMap<u32, u32> =
    HashMap::with_max_entries(phiguard_common::limits::MAX_DB_PORTS, 0);

/// Database unix sockets by (device, 0, inode) of the socket file → 1.
#[map]
pub static DB_UNIX_SOCKETS: HashMap<InodeKey, u32> =
    HashMap::with_max_entries(phiguard_common::limits::MAX_DB_UNIX_SOCKETS, 0);

/// A tracked database socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DbSock {
    /// `db_role` code.
    pub role: u32,
    /// Address family.
    pub family: u32,
    /// The `struct socket *` it was tracked with: a `struct sock` address reused by another
    /// socket (the entry outlived its socket) does not match.
    pub socket: u64,
    /// How its bytes are captured (`crate::programs::db_frame`).
    pub framing: DbFraming,
}

/// How a tracked socket's bytes are captured: its mode and each direction's walk state.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct DbFraming {
    /// A `db_frame::MODE_*` code.
    pub mode: u32,
    /// `db_frame::FRAMING_*` bits.
    pub flags: u32,
    /// To the server (index 0) and to the client (index 1).
    pub dirs: [DbDirection; 2],
}

/// Where one direction's framing walk stands between calls.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct DbDirection {
    /// A `db_frame::PHASE_*` code: what the next message header looks like.
    pub phase: u32,
    /// Header bytes already seen (a header split across calls).
    pub hdr_have: u32,
    /// Body bytes of the current message still to come.
    pub rest: u32,
    /// Of them, how many are still to be captured.
    pub capture: u32,
    /// Records lost since the last one delivered.
    pub lost: u32,
    /// The protocol's own state of this direction (MySQL: `db_mysql::ST_*`; PostgreSQL: the
    /// names of a Bind whose end the capture has not reached yet).
    pub state: u32,
    /// The header bytes seen so far.
    pub hdr: [u8; 8],
}

/// Tracked database sockets by `struct sock` address. LRU: entries of closed sockets age out
/// (and a reused address is caught by `DbSock::socket`).
#[map]
pub static DB_SOCKS: LruHashMap<u64, DbSock> =
    LruHashMap::with_max_entries(phiguard_common::limits::MAX_DB_SOCKETS, 0);

/// Processes (tgid) that hold or inherited a tracked database socket → a
/// `phiguard_common::maps::db_process` code: the read/write hooks of every other process stop
/// after this one lookup.
#[map]
pub static DB_PROCESSES: LruHashMap<u32, u32> =
    LruHashMap::with_max_entries(phiguard_common::limits::MAX_DB_PROCESSES, 0);

/// Database sockets of sessions opened before the agent started ((sockfs device, 0, socket
/// inode) → `db_role`), written by user space at start-up and joined at their next read or
/// write.
#[map]
pub static DB_JOIN: HashMap<InodeKey, u32> =
    HashMap::with_max_entries(phiguard_common::limits::MAX_DB_SOCKETS, 0);

/// Per-CPU state of the PostgreSQL framing walk (`crate::programs::db_frame::Walk`).
#[map]
pub static DB_WALK: PerCpuArray<crate::programs::db_frame::Walk> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU state of a joined session's tiling check (`crate::programs::db_frame::tiles`).
#[map]
pub static DB_TILING: PerCpuArray<crate::programs::db_frame::Tiling> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU state of the MySQL framing walk (`crate::programs::db_mysql::MysqlWalk`).
#[map]
pub static DB_MYSQL_WALK: PerCpuArray<crate::programs::db_mysql::MysqlWalk> =
    PerCpuArray::with_max_entries(1, 0);

/// Zero bytes, never written: what stands in for a login's auth data in a MySQL record.
#[map]
pub static DB_ZEROS: PerCpuArray<[u8; 256]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for capture records.
#[map]
pub static DB_DATA_SCRATCH: PerCpuArray<phiguard_common::event::DbDataScratch> =
    PerCpuArray::with_max_entries(1, 0);
