//! Policy decisions in the kernel: compiled rules, subject keys, and the decision every
//! record about a protected resource carries.
//!
//! A kernel rule is one *protection unit*: everything that protects one inode, port or cgroup,
//! merged from every policy rule that covers it (allow-lists add up; an access governed by an
//! enforce-mode rule is enforced). Rules live in two *slots*: a reload fills the inactive slot
//! and then flips [`crate::maps::POLICY_SLOT`], so a program run sees one complete policy set.
//! A rule's kernel index is `slot * MAX_RULES + i`.

/// Rules per slot.
pub const MAX_RULES: u32 = 512;
/// Subjects per kernel rule (one bit each).
pub const MAX_SUBJECTS: u32 = 64;
/// Entries in each subject map (exe, parent, uid, gid, exec-allow), both slots together.
pub const MAX_SUBJECT_ENTRIES: u32 = 16384;
/// cgroups with an exec allow-list of their own, per slot.
pub const MAX_EXEC_SCOPES: u32 = 256;
/// No rule applies.
pub const NO_RULE: u32 = u32::MAX;
/// [`Decision::subject`] when no subject matched.
pub const NO_SUBJECT: u8 = u8::MAX;

/// Access bits: what a request does and what a rule governs.
pub mod access {
    /// Opening a file for reading.
    pub const READ: u32 = 1;
    /// Opening a file for writing, creating, truncating or appending.
    pub const WRITE: u32 = 2;
    /// Connecting to a database endpoint.
    pub const CONNECT: u32 = 4;
    /// Running a program.
    pub const EXEC: u32 = 8;
    /// Number of access bits (length of [`super::RuleEntry::may`]).
    pub const COUNT: usize = 4;
}

/// `Decision::verdict`.
pub mod verdict {
    /// No rule applied.
    pub const NONE: u8 = 0;
    /// A rule applied and allowed the access.
    pub const ALLOW: u8 = 1;
    /// A rule refused the access.
    pub const DENY: u8 = 2;
    /// An audit-mode rule would have refused it.
    pub const WOULD_DENY: u8 = 3;
}

/// `Decision::layer`: where a denial was enforced.
pub mod layer {
    /// Not enforced (allowed, or audit mode).
    pub const NONE: u8 = 0;
    /// BPF LSM: the call failed with EPERM.
    pub const LSM: u8 = 1;
    /// cgroup sock_addr program: the connect failed with EPERM.
    pub const CGROUP: u8 = 2;
    /// SIGKILL from a tracepoint: the process died before the call returned to it.
    pub const SIGNAL: u8 = 3;
    /// fanotify permission event answered `FAN_DENY` by the agent: the open failed with EPERM
    /// before a descriptor existed.
    pub const FANOTIFY: u8 = 4;
    /// Not enforced although an enforce-mode rule refused it: SIGKILL was the only layer and
    /// the process is PID 1 or runs a program on the never-kill list (verdict `WOULD_DENY`).
    pub const SPARED: u8 = 5;
    /// Allowed although a rule refused it: a break-glass grant covers the process (verdict
    /// `ALLOW`; [`super::Decision::subject`] is the grant's slot, see
    /// `crate::maps::BREAK_GLASS`).
    pub const BREAK_GLASS: u8 = 6;
}

/// A compiled rule. Subject *i* matches the current process when bit *i* is set in each of
/// the exe, uid, gid and parent masks (looked up in the subject maps and or-ed with the
/// `any_*` masks of subjects that leave that field open); it may make access *b* when bit *i*
/// of `may[b]` is set as well.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleEntry {
    /// Access bits governed by at least one enforce-mode rule.
    pub enforce: u32,
    /// Access bits governed by audit-mode rules only.
    pub audit: u32,
    /// Remote address family a connect rule is limited to (0: any address).
    pub addr_family: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Subjects with no `exe`.
    pub any_exe: u64,
    /// Subjects with no `user`.
    pub any_uid: u64,
    /// Subjects with no `group`.
    pub any_gid: u64,
    /// Subjects with no `parent`.
    pub any_parent: u64,
    /// Subjects allowed each access, indexed by the access bit's position.
    pub may: [u64; access::COUNT],
    /// Remote address a connect rule is limited to (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
}

impl RuleEntry {
    /// Access bits the rule governs.
    pub const fn governed(&self) -> u32 {
        self.enforce | self.audit
    }
}

/// Key of the exe, parent-exe and exec-allow maps: a kernel rule and a file's (device, inode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SubjectKey {
    /// Kernel rule index.
    pub rule: u32,
    /// Kernel `dev_t`.
    pub dev: u32,
    /// Inode number.
    pub ino: u64,
}

/// Key of the uid and gid maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdKey {
    /// Kernel rule index.
    pub rule: u32,
    /// uid or gid.
    pub id: u32,
}

/// Key of the watched-ports map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Policy slot.
    pub slot: u32,
    /// TCP port, host byte order.
    pub port: u32,
}

/// Key of the exec-scope map: which exec rule governs a cgroup (0: the whole host).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    /// Policy slot.
    pub slot: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// cgroup v2 id (the cgroup directory's inode number); 0 for the whole host.
    pub cgroup: u64,
}

/// Value of the watched-inodes map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchValue {
    /// Watch id (index in the agent's watch list) of the innermost watch covering the inode.
    pub watch_id: u32,
    /// Kernel rule protecting an open of this very inode, or [`NO_RULE`].
    pub rule_here: u32,
    /// Kernel rule protecting opens of what lies below this inode, or [`NO_RULE`].
    pub rule_below: u32,
    /// 1 when a configured watch covers the inode (every open is reported); 0 when only a
    /// policy protects it (governed accesses are reported).
    pub observed: u32,
}

/// The decision a record carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Kernel rule index, or [`NO_RULE`].
    pub rule: u32,
    /// A `verdict` code.
    pub verdict: u8,
    /// A `layer` code.
    pub layer: u8,
    /// The access bits decided: for a denial the one refused, else every governed bit asked.
    pub access: u8,
    /// The subject that allowed it, or [`NO_SUBJECT`]; with layer [`layer::BREAK_GLASS`], the
    /// slot of the grant that allowed it.
    pub subject: u8,
    /// With layer [`layer::BREAK_GLASS`], the generation of the grant that allowed it
    /// (`crate::maps::GrantValue::generation`): slots are reused, so the slot alone could name
    /// a later grant in a record read late. 0 otherwise.
    pub grant: u32,
    /// Explicit padding.
    pub _pad: u32,
}

impl Decision {
    /// No rule applied.
    pub const NONE: Decision = Decision {
        rule: NO_RULE,
        verdict: verdict::NONE,
        layer: layer::NONE,
        access: 0,
        subject: NO_SUBJECT,
        grant: 0,
        _pad: 0,
    };
}

const _: () = assert!(core::mem::size_of::<RuleEntry>() == 96);
const _: () = assert!(core::mem::size_of::<Decision>() == 16);
const _: () = assert!(core::mem::size_of::<WatchValue>() == 16);
