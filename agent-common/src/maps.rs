//! Map names, keys and values, spelled once for both sides.

/// The one ring buffer all programs write events to.
pub const EVENTS: &str = "EVENTS";
/// Per-CPU `u64` counters of failed ring-buffer reservations, indexed by [`crate::event::Kind`].
pub const LOST: &str = "LOST";
/// Watched directories/files: [`InodeKey`] → watch id (`u32`).
pub const WATCHED_INODES: &str = "WATCHED_INODES";
/// Devices that hold at least one watched inode: kernel `dev_t` (`u32`) → number of watches.
pub const WATCHED_DEVS: &str = "WATCHED_DEVS";
/// Watched absolute path prefixes for opens that failed: LPM trie over path bytes → watch id.
pub const WATCHED_PREFIXES: &str = "WATCHED_PREFIXES";
/// Watched TCP ports (host byte order, `u16`) → `1`.
pub const WATCHED_PORTS: &str = "WATCHED_PORTS";
/// The global holding [`crate::offsets::KernelOffsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Key of [`WATCHED_INODES`]: inode numbers repeat across filesystems, so the device is part
/// of it. `dev` is the kernel's internal encoding (`MAJOR << 20 | MINOR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// Kernel `dev_t` of the inode's super block.
    pub dev: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Inode number.
    pub ino: u64,
}

/// Watch id carried by events that matched no watch.
pub const NO_WATCH: u32 = u32::MAX;
