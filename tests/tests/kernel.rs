//! Kernel logic, deterministically: the test thread itself makes known system calls on watched
//! and unwatched paths, then reads the ring buffer directly (no agent loop, no channel, no
//! sleep: a tracepoint program has committed its record before the call returns) and checks
//! exact counts of records emitted, filtered out and lost, and that no program run faulted.
//! Root only; run one at a time (`--test-threads=1`): they share the kernel's hooks.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, RingBuf};
use phiguard::{
    config::DatabaseConfig,
    event::{
        decode::{decode, DecodedEvent},
        file::FileOpen,
    },
    kernel::{
        btf,
        loader::{Enforcement, Sensors},
        mounts,
    },
    policy,
    watch::WatchSet,
};
use phiguard_common::{
    event::{FileOpenEvent, Kind},
    limits::RING_BUFFER_BYTES,
    program::Program,
};
use phiguard_tests::{require_root, Tree};

/// The programs of the observing agent, loaded for `watched`, with the ring buffer taken out.
fn load(watched: &Path) -> (Sensors, RingBuf<MapData>) {
    require_root();
    mounts::ensure_mounted().expect("pseudo-filesystems");
    let offsets = btf::kernel_offsets(Path::new(btf::VMLINUX_BTF)).expect("offsets from BTF");
    let watches = WatchSet::new(&[watched.to_owned()], &[]).expect("watch");
    let cgroup_root = mounts::cgroup2_root().expect("cgroup v2");
    let compiled = policy::load(None, &watches, &cgroup_root).expect("no policies");
    let mut sensors = Sensors::load(
        &offsets,
        &compiled,
        &DatabaseConfig::default(),
        &cgroup_root,
        None,
        &Enforcement::default(),
    )
    .unwrap_or_else(|e| panic!("programs did not load: {e}"));
    let ring = sensors.take_ring_buffer().expect("ring buffer");
    (sensors, ring)
}

/// Reads every record now in the ring buffer; returns the file-open records of this process
/// for paths under `dir` (other processes' records — forks, execs — are consumed and dropped).
fn drain_opens(ring: &mut RingBuf<MapData>, dir: &Path) -> Vec<FileOpen> {
    let pid = std::process::id();
    let mut opens = Vec::new();
    while let Some(record) = ring.next() {
        if let Ok(DecodedEvent::FileOpen(open)) = decode(&record) {
            if open.header.pid == pid && Path::new(&open.requested).starts_with(dir) {
                opens.push(open);
            }
        }
    }
    opens
}

/// Opens (and closes) `path` `times` times from this thread; returns how many opens failed.
fn open_times(path: &Path, times: usize) -> usize {
    (0..times).filter(|_| fs::File::open(path).is_err()).count()
}

fn lost_file_opens(sensors: &Sensors) -> u64 {
    sensors.lost().expect("loss counters")[Kind::FileOpen as usize]
}

fn faults(sensors: &Sensors) -> Vec<(&'static str, u64)> {
    let totals = sensors.faults().expect("fault counters");
    Program::ALL
        .into_iter()
        .map(|p| (p.name(), totals[p as usize]))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn opens_from_this_thread_give_exactly_one_record_each_and_unwatched_opens_none() {
    let tree = Tree::new();
    let watched_file = tree.watched.join("rec.txt");
    let other_file = tree.other.join("rec.txt");
    fs::write(&watched_file, "patient 1").unwrap();
    fs::write(&other_file, "not patient data").unwrap();
    let missing = tree.watched.join("missing.txt");
    let (sensors, mut ring) = load(&tree.watched);
    drain_opens(&mut ring, tree.dir.path());
    let (lost_before, faults_before) = (lost_file_opens(&sensors), faults(&sensors));

    assert_eq!(open_times(&watched_file, 25), 0);
    assert_eq!(open_times(&other_file, 40), 0, "filtered in the kernel");
    assert_eq!(
        open_times(&missing, 5),
        5,
        "failed opens, matched by prefix"
    );
    let opens = drain_opens(&mut ring, tree.dir.path());

    let path_of = |e: &FileOpen| PathBuf::from(&e.requested);
    let to_watched = opens.iter().filter(|e| path_of(e) == watched_file).count();
    let to_missing = opens.iter().filter(|e| path_of(e) == missing).count();
    let to_other = opens.iter().filter(|e| path_of(e) == other_file).count();
    assert_eq!(to_watched, 25, "one record per open of the watched file");
    assert!(opens
        .iter()
        .filter(|e| path_of(e) == watched_file)
        .all(|e| e.ret >= 0));
    assert_eq!(to_missing, 5, "one record per failed open under the watch");
    assert!(opens
        .iter()
        .filter(|e| path_of(e) == missing)
        .all(|e| e.ret == -i64::from(libc::ENOENT)));
    assert_eq!(to_other, 0, "no record for an unwatched file");
    assert_eq!(
        opens.len(),
        30,
        "nothing else of this process under the tree"
    );
    assert_eq!(lost_file_opens(&sensors) - lost_before, 0, "nothing lost");
    assert_eq!(faults(&sensors), faults_before, "no program run faulted");
    assert!(
        faults_before.is_empty(),
        "no fault since load: {faults_before:?}"
    );
}

#[test]
fn every_open_past_a_full_ring_buffer_is_counted_lost_exactly() {
    let tree = Tree::new();
    let watched_file = tree.watched.join("rec.txt");
    fs::write(&watched_file, "patient 1").unwrap();
    let (sensors, mut ring) = load(&tree.watched);
    drain_opens(&mut ring, tree.dir.path());
    let lost_before = lost_file_opens(&sensors);

    // More records than the ring buffer holds, none read until the end: the ones that find
    // no room are lost, and each one lost is counted.
    let record = (std::mem::size_of::<FileOpenEvent>() + 8).next_multiple_of(8);
    let attempts = RING_BUFFER_BYTES as usize / record + 200;
    assert_eq!(open_times(&watched_file, attempts), 0);
    let delivered = drain_opens(&mut ring, tree.dir.path()).len() as u64;
    let lost = lost_file_opens(&sensors) - lost_before;

    assert!(lost >= 200, "a full ring buffer loses records: {lost} lost");
    assert_eq!(
        delivered + lost,
        attempts as u64,
        "every open is either delivered or counted lost ({delivered} delivered, {lost} lost)"
    );
    assert!(faults(&sensors).is_empty(), "no program run faulted");
}

/// The pids of the kernel threads kthreadd (pid 2) has started and that run now.
fn kernel_threads() -> std::collections::HashSet<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            ppid == Some(2)
        })
        .collect()
}

/// The unbound workqueues' CPU mask, put back as it was when dropped.
struct WorkqueueCpumask(String);

const WORKQUEUE_CPUMASK: &str = "/sys/devices/virtual/workqueue/cpumask";

impl Drop for WorkqueueCpumask {
    fn drop(&mut self) {
        let _ = fs::write(WORKQUEUE_CPUMASK, self.0.trim());
    }
}

#[test]
fn kernel_threads_starting_are_no_fault() {
    // kthreadd, which starts kernel threads, has no memory map and so no executable: the fork
    // program skips its children (kernel threads, not subjects) instead of failing to read
    // it. Narrowing the unbound workqueues to one CPU and widening them again makes the kernel
    // start new kworkers.
    let tree = Tree::new();
    let (sensors, mut ring) = load(&tree.watched);
    let before = kernel_threads();
    let restore = WorkqueueCpumask(fs::read_to_string(WORKQUEUE_CPUMASK).unwrap());
    fs::write(WORKQUEUE_CPUMASK, "1").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(restore);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = kernel_threads().difference(&before).count();
    assert!(
        started > 0,
        "no kernel thread started: the test did not exercise the fork program (2 CPUs or more needed)"
    );
    drain_opens(&mut ring, tree.dir.path());
    assert_eq!(
        faults(&sensors),
        vec![],
        "no program run faulted ({started} kernel threads started)"
    );
}
