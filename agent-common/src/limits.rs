//! Fixed capacities of the kernel-side records. Anything longer is cut and marked truncated.

/// Bytes of a task's `comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of a path as the caller passed it to `open*`/`exec*` (NUL included).
pub const PATH_LEN: usize = 256;
/// Bytes of the NUL-separated dentry names captured between an opened file and its watch.
pub const NAMES_LEN: usize = 512;
/// Longest single dentry name we copy (Linux's NAME_MAX is 255).
pub const NAME_MAX: usize = 256;
/// Levels walked up from an opened file (or a relative open's base directory) looking for a
/// watched directory.
pub const MAX_WALK_DEPTH: u32 = 24;
/// Names (and mount crossings) walked to build a process's working directory.
pub const MAX_PATH_DEPTH: u32 = 32;
/// Arguments captured per exec.
pub const MAX_ARGS: u32 = 32;
/// Bytes of argv captured per exec (NUL-separated).
pub const ARGS_LEN: usize = 4096;
/// Watched directories and files (inode map entries).
pub const MAX_WATCHED_INODES: u32 = 1024;
/// Labelled inodes under BPF LSM (`INODE_LABELS` entries), both policy slots together: a
/// million protected files and directories per slot. The map is not preallocated; an entry
/// costs about 100 bytes of kernel memory (key, value, hash element), so 100 MB at a million
/// labelled inodes, twice that for a moment during a reload.
pub const MAX_INODE_LABELS: u32 = 2 * 1024 * 1024;
/// Creations in flight on filesystems holding protected inodes (`CREATING` entries).
pub const MAX_CREATING: u32 = 4096;
/// Watched absolute path prefixes (LPM trie entries).
pub const MAX_WATCHED_PREFIXES: u32 = 1024;
/// Watched TCP ports.
pub const MAX_WATCHED_PORTS: u32 = 256;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const RING_BUFFER_BYTES: u32 = 16 * 1024 * 1024;
/// Records wake the agent's reader only when the backlog in the ring buffer grows past a
/// multiple of this many bytes; below it the reader finds them on its next look, at most
/// [`READ_INTERVAL_MS`] later. A wake-up costs the writing program an interrupt and the
/// agent a scheduler round trip; the kernel's default (a wake-up for every record written
/// while the reader is caught up) makes both sides pay that per record at moderate rates.
pub const WAKEUP_BYTES: u64 = 256 * 1024;
// A power of two (the programs divide by it), and small against the buffer: most of it stays
// free for a burst while the woken reader is on its way.
const _: () =
    assert!(WAKEUP_BYTES.is_power_of_two() && WAKEUP_BYTES * 16 <= RING_BUFFER_BYTES as u64);
/// The longest the agent's reader waits between looks at the ring buffer while records come,
/// in milliseconds (the bound on how long a record can sit there unread when no wake-up came).
pub const READ_INTERVAL_MS: u64 = 10;
/// The same bound once looks have found the buffer empty: each empty look doubles the wait,
/// up to this, so an idle agent looks 20 times a second instead of 100; the first record
/// found resets it to [`READ_INTERVAL_MS`].
pub const IDLE_READ_INTERVAL_MS: u64 = 50;
/// Bytes captured per read or write on a tracked database socket (a power of two).
pub const DB_CAPTURE_LEN: usize = 4096;
/// Bytes also captured from the end of a plain-buffer read or write longer than
/// [`DB_CAPTURE_LEN`]: where a burst of data ends, the protocol's closing messages are (a
/// PostgreSQL COPY TO's CommandComplete and ReadyForQuery).
pub const DB_TAIL_LEN: usize = 64;
/// Default statement text the kernel captures per PostgreSQL Query or Parse, in bytes.
pub const DB_TEXT_CAPTURE_DEFAULT: u32 = 4096;
/// Most statement text the kernel captures per message, in bytes (the decoders hold a
/// message of at most 64 KiB whole).
pub const DB_TEXT_CAPTURE_MAX: u32 = 64 * 1024;
/// Steps of the kernel's framing walk per call (a step is a header or a run of body bytes):
/// a call with more messages loses its direction's framing, counted.
pub const DB_WALK_STEPS: u32 = 1 << 16;
/// Database ports (map entries).
pub const MAX_DB_PORTS: u32 = 64;
/// At most this many `iovec`s of a `readv`/`writev`/`sendmsg`/`recvmsg` are copied from (the
/// byte count is the call's return value either way).
pub const MAX_DB_IOVECS: usize = 8;
/// Database unix sockets (map entries).
pub const MAX_DB_UNIX_SOCKETS: u32 = 64;
/// Tracked database sockets at once.
pub const MAX_DB_SOCKETS: u32 = 16384;
/// Processes holding a tracked database socket at once.
pub const MAX_DB_PROCESSES: u32 = 16384;
/// Environment variables that make an interpreter run code other than its script (matched at
/// the start of each `NAME=value` string: an entry ending in `=` is one name, any other a
/// prefix). An exec with any of them gets no script identity (`crate::maps::SCRIPT_IDENTITY`).
/// Code loaded as a library (`LD_PRELOAD`, `LD_AUDIT`, `GCONV_PATH`) is the executable mapping
/// taint's concern, not this list's.
pub const CODE_INJECTING_ENV: [&[u8]; 19] = [
    b"BASH_ENV=",
    b"ENV=",
    b"BASH_FUNC_",
    b"SHELLOPTS=",
    b"BASHOPTS=",
    b"PS4=",
    b"PYTHON",
    b"PERL5",
    b"PERLLIB=",
    b"RUBYOPT=",
    b"RUBYLIB=",
    b"NODE_OPTIONS=",
    b"NODE_PATH=",
    b"LUA_",
    b"PHPRC=",
    b"PHP_INI_SCAN_DIR=",
    b"JAVA_TOOL_OPTIONS=",
    b"_JAVA_OPTIONS=",
    b"JDK_JAVA_OPTIONS=",
];
/// Bytes of an environment string compared with [`CODE_INJECTING_ENV`] (its longest entry fits).
pub const ENV_NAME_LEN: usize = 32;
/// Chunks of at most [`PATH_LEN`] bytes read while scanning a new image's environment for
/// [`CODE_INJECTING_ENV`]; an environment not scanned to its end within them gets no script
/// identity (at least 256 KiB are always scanned: far more than an exec usually carries).
pub const MAX_ENV_CHUNKS: u32 = 1024;
