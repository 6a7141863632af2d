//! Replays synthetic file-open records through the agent's user-space pipeline — decode →
//! enrich → number → JSON lines — without the kernel, so its cost per event can be counted
//! deterministically:
//!
//! ```sh
//! cargo build --release -p phiguard-agent --example pipeline
//! valgrind --tool=callgrind target/release/examples/pipeline 20000
//! ```
//!
//! Instructions per event are the difference between two runs with different counts, divided
//! by the difference in counts (start-up, `/proc` seeding included, cancels out).
//!
//! A second argument `-` writes the JSON lines to stdout instead of discarding them, so a
//! restructuring can be checked to leave the output byte-identical.

use std::{io::Write, path::PathBuf, sync::Arc};

use phiguard::{
    enrich::{host::HostInfo, EnrichSettings, Enricher},
    event::decode::decode,
    sink::{
        json::{JsonLines, Reopen},
        numbering::Numbering,
        Sink as _,
    },
    watch::WatchSet,
};
use phiguard_common::{
    event::{matched_by, open_syscall, EventHeader, FileOpenEvent, Kind},
    policy::Decision,
};

fn main() {
    let count: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("phiguard-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let watches = WatchSet::new(std::slice::from_ref(&dir), &[]).expect("watch");
    let settings = EnrichSettings {
        ancestry_depth: 4,
        hash_max_bytes: 64 << 20,
        retain_exited: 1024,
        full_statements: false,
        db_unix_sockets: Vec::new(),
        argv_redactor: Default::default(),
    };
    let mut enricher = Enricher::new(HostInfo::detect(""), Arc::new(watches), settings);
    let record = record(&dir);
    let events = match std::env::args().nth(2).as_deref() {
        Some("-") => replay(count, &record, &mut enricher, std::io::stdout()),
        _ => replay(count, &record, &mut enricher, std::io::sink()),
    };
    std::fs::remove_dir_all(&dir).ok();
    writeln!(std::io::stderr(), "{count} records, {events} events").ok();
}

/// Replays `record` `count` times through decode, enrichment, numbering and a JSON-lines sink
/// writing to `out`; returns the events written.
fn replay<W: Write + Send + Reopen>(
    count: u64,
    record: &[u8],
    enricher: &mut Enricher,
    out: W,
) -> u64 {
    let mut sink = JsonLines::new(out);
    let mut numbering = Numbering::after(0);
    let mut events = 0u64;
    for _ in 0..count {
        let decoded = decode(record).expect("decodes");
        for mut event in enricher.enrich(decoded) {
            numbering.stamp(&mut event);
            sink.write(&event).expect("sink");
            events += 1;
        }
    }
    sink.flush().expect("flush");
    events
}

/// The bytes of a file-open record from this process for `<dir>/rec.txt`, matched by inode.
fn record(dir: &std::path::Path) -> Vec<u8> {
    // SAFETY: all-zero is a valid record (plain integers).
    let mut e: FileOpenEvent = unsafe { std::mem::zeroed() };
    e.header = header();
    e.ret = 3;
    e.open_flags = libc::O_RDONLY as u32 | libc::O_CLOEXEC as u32;
    e.dirfd = -100;
    e.syscall = open_syscall::OPENAT;
    e.matched_by = matched_by::INODE;
    e.watch_id = 0;
    e.decision = Decision::NONE;
    let path = PathBuf::from(dir).join("rec.txt");
    let path = path.to_string_lossy();
    e.path[..path.len()].copy_from_slice(path.as_bytes());
    e.path_len = path.len() as u32;
    e.names[..8].copy_from_slice(b"rec.txt\0");
    e.names_len = 8;
    e.names_count = 1;
    // SAFETY: reading the bytes of a plain-integer record.
    unsafe {
        std::slice::from_raw_parts(
            (&e as *const FileOpenEvent).cast::<u8>(),
            std::mem::size_of::<FileOpenEvent>(),
        )
    }
    .to_vec()
}

/// This process as the kernel would describe it.
fn header() -> EventHeader {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let start_ticks: u64 = fields[19].parse().expect("starttime");
    let ppid: u32 = fields[1].parse().expect("ppid");
    let pid = std::process::id();
    // SAFETY: all-zero is a valid header (plain integers).
    let mut h: EventHeader = unsafe { std::mem::zeroed() };
    h.kind = Kind::FileOpen as u32;
    h.pid = pid;
    h.tgid = pid;
    h.ppid = ppid;
    // SAFETY: getuid/getgid have no preconditions.
    (h.uid, h.gid) = unsafe { (libc::getuid(), libc::getgid()) };
    h.loginuid = u32::MAX;
    h.sessionid = u32::MAX;
    h.start_boot_ns = start_ticks * (1_000_000_000 / hz);
    h.boot_ns = h.start_boot_ns + 1_000_000;
    h.comm[..8].copy_from_slice(b"pipeline");
    h
}
