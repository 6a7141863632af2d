//! e2e tier, storage faults: the real `phiguard-collector` whose store directory is a small
//! file system that fills up (tmpfs, ENOSPC) or whose disk starts failing writes (ext4 on a
//! loop device whose backing file lives on a full tmpfs: the kernel returns EIO to fsync).
//! The agent's own spool and publisher send; the checks are the production ones: nothing
//! acknowledged is lost, every event is stored once, subscribers are alerted while the store
//! cannot be written, storing resumes by itself when space returns, and the store opens again
//! after `kill -9`. Needs root (mount, losetup); every mount is undone when the test ends,
//! pass or fail.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use phiguard_collector::chain::{segment_file_name, HEADER_LEN};
use phiguard_proto::v1::{self, event::Body};
use phiguard_tests::e2e::{replay_all, runtime, subscribe_alerts, AgentLink, CollectorProc, Pki};
use tokio::runtime::Runtime;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A mount (and optionally its loop device) undone on drop, even when the test panics.
struct Mounted {
    path: PathBuf,
    loop_device: Option<String>,
    inner: Option<Box<Mounted>>,
}

impl Mounted {
    /// A tmpfs of `size` (e.g. "4m") at `path`.
    fn tmpfs(path: &Path, size: &str) -> Mounted {
        fs::create_dir_all(path).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path));
        Mounted {
            path: path.to_owned(),
            loop_device: None,
            inner: None,
        }
    }

    /// ext4 on a loop device whose sparse 64 MiB image lives on a tmpfs of `backing_size`
    /// at `backing`: once that tmpfs is full, writes to the device fail with EIO.
    fn ext4_on_tmpfs(path: &Path, backing: &Path, backing_size: &str) -> Mounted {
        let tmpfs = Mounted::tmpfs(backing, backing_size);
        let image = backing.join("disk.img");
        run(Command::new("truncate").args(["-s", "64M"]).arg(&image));
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        let mut mounted = Mounted {
            path: path.to_owned(),
            loop_device: Some(device.clone()),
            inner: Some(Box::new(tmpfs)),
        };
        fs::create_dir_all(path).unwrap();
        mounted.mount();
        mounted
    }

    fn mount(&mut self) {
        let device = self.loop_device.clone().expect("a loop device");
        run(Command::new("mount")
            .args(["-o", "errors=continue", &device])
            .arg(&self.path));
    }

    fn unmount(&self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if Command::new("umount")
            .arg(&self.path)
            .status()
            .map_or(true, |s| !s.success())
        {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        if let Some(device) = &self.loop_device {
            let _ = Command::new("losetup").args(["-d", device]).status();
        }
        drop(self.inner.take());
    }
}

/// Fills the file system holding `dir` with `dir/filler` until ENOSPC; returns its size.
fn fill(dir: &Path) -> u64 {
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).unwrap();
    let chunk = vec![0x5a_u8; 4096];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    let _ = file.sync_all();
    written
}

fn work() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("phiguard-faults-")
        .tempdir()
        .unwrap()
}

fn seqs(events: &[v1::Event]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| !matches!(e.body, Some(Body::Alert(_))))
        .map(|e| e.seq)
        .collect()
}

fn alert_kinds(events: &[v1::Event]) -> Vec<v1::AlertKind> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Alert(a)) => v1::AlertKind::try_from(a.kind).ok(),
            _ => None,
        })
        .collect()
}

/// Waits for a live alert of `kind` on `stream` (printed as JSON).
fn wait_alert(
    rt: &Runtime,
    stream: &mut tonic::Streaming<v1::Event>,
    kind: v1::AlertKind,
) -> v1::CollectorAlert {
    rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                Ok(Ok(Some(event))) => {
                    if let Some(Body::Alert(a)) = &event.body {
                        if a.kind == kind as i32 {
                            eprintln!("{}", serde_json::to_string_pretty(&event).unwrap());
                            return a.clone();
                        }
                    }
                }
                other => panic!("no {kind:?} alert: {other:?}"),
            }
        }
    })
}

/// No segment file of `agent` is shorter than a header and no temporary file is left.
fn assert_no_wedged_segment(store: &Path, agent: &str) {
    for entry in fs::read_dir(store.join("agents").join(agent)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "a temporary file is left: {name}");
        if name.ends_with(".seg") {
            let len = entry.metadata().unwrap().len();
            assert!(
                len >= HEADER_LEN,
                "{name} has {len} bytes: a wedged segment"
            );
        }
    }
}

fn verify_ok(collector: &CollectorProc) -> String {
    let out = CollectorProc::verify(&collector.config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "verify: {stdout}");
    stdout
}

#[test]
fn a_full_store_disk_refuses_alerts_and_resumes_by_itself_losing_nothing_acknowledged() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    // Declared first, dropped last: the collector is gone before the unmount.
    let disk = Mounted::tmpfs(&work.path().join("store"), "2m");
    let mut collector =
        CollectorProc::start_with_store(work.path(), &pki, "segment_max_bytes = 4096\n");
    let rt = runtime();
    let mut alerts = subscribe_alerts(&rt, &pki, &collector.addr);
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=500);
    assert!(link.wait_acked(500, Duration::from_secs(30)));
    let filler = fill(&disk.path);
    assert!(filler > 0);
    link.send("ehr-a", 501..=3000);
    let failing = wait_alert(&rt, &mut alerts, v1::AlertKind::StoreFailing);
    assert!(
        failing.message.contains("store full"),
        "{}",
        failing.message
    );
    assert!(collector.wait_log("storing a batch failed", Duration::from_secs(10)));
    // Give the agent several refused attempts (its backoff is at most 500 ms here).
    std::thread::sleep(Duration::from_secs(3));
    let acked_while_full = link.spool.stats().acked;
    assert!(acked_while_full < 3000, "the full disk refused batches");
    assert_no_wedged_segment(&disk.path, "ehr-a");
    let refused = collector.log().matches("storing a batch failed").count();
    assert!(refused >= 2, "the agent retried: {refused} refusals");
    // A crash while the disk is full: the store opens again (still full).
    collector.kill9();
    collector.restart();
    let pid = collector.pid();
    std::thread::sleep(Duration::from_secs(1));
    assert_no_wedged_segment(&disk.path, "ehr-a");
    // Space comes back: storing resumes without a restart.
    fs::remove_file(disk.path.join("filler")).unwrap();
    assert!(
        link.wait_acked(3000, Duration::from_secs(60)),
        "everything acknowledged once there is room; acked {}",
        link.spool.stats().acked
    );
    assert_eq!(collector.pid(), pid, "no restart was needed");
    let events = replay_all(&rt, &pki, &collector.addr, Default::default());
    assert_eq!(
        seqs(&events),
        (1..=3000).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let kinds = alert_kinds(&events);
    for e in events.iter().filter(|e| matches!(&e.body, Some(Body::Alert(a)) if a.kind == v1::AlertKind::StoreRecovered as i32)) {
        eprintln!("{}", serde_json::to_string_pretty(e).unwrap());
    }
    assert!(!kinds.contains(&v1::AlertKind::SequenceGap), "{kinds:?}");
    assert!(
        kinds.contains(&v1::AlertKind::StoreRecovered),
        "the outage is in the trail: {kinds:?}"
    );
    assert_no_wedged_segment(&disk.path, "ehr-a");
    collector.stop();
    let report = verify_ok(&collector);
    assert!(report.contains("agent ehr-a:"), "{report}");
    eprintln!(
        "filled {filler} bytes; acknowledged {acked_while_full} of 3000 while full; {refused} batches refused before the crash"
    );
}

#[test]
fn a_full_store_disk_raises_the_store_full_metric_until_space_returns() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    // Declared first, dropped last: the collector is gone before the unmount.
    let disk = Mounted::tmpfs(&work.path().join("store"), "2m");
    let mut collector = CollectorProc::start_with_sections(
        work.path(),
        &pki,
        "segment_max_bytes = 4096\n",
        "every_records = 500\nevery_secs = 1\n",
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let sample = |name: &str| {
        let text = collector.scrape();
        CollectorProc::sample(&text, name).unwrap_or_else(|| panic!("no {name}:\n{text}"))
    };
    let wait = |name: &str, wanted: f64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while sample(name) != wanted {
            assert!(
                Instant::now() < deadline,
                "{name} never {wanted}:\n{}",
                collector.scrape()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=300);
    assert!(link.wait_acked(300, Duration::from_secs(30)));
    assert_eq!(sample("phiguard_collector_store_full"), 0.0);
    assert_eq!(sample("phiguard_collector_events_stored_total"), 300.0);
    fill(&disk.path);
    link.send("ehr-a", 301..=2000);
    wait("phiguard_collector_store_full", 1.0);
    assert_eq!(sample("phiguard_collector_store_failing"), 1.0);
    assert!(
        sample("phiguard_collector_events_refused_total{reason=\"store_full\"}") > 0.0,
        "{}",
        collector.scrape()
    );
    fs::remove_file(disk.path.join("filler")).unwrap();
    assert!(link.wait_acked(2000, Duration::from_secs(60)));
    wait("phiguard_collector_store_full", 0.0);
    assert_eq!(sample("phiguard_collector_store_failing"), 0.0);
    assert_eq!(sample("phiguard_collector_events_stored_total"), 2000.0);
    drop(link);
    collector.stop();
}

#[test]
fn a_segment_cut_short_by_an_older_collector_is_repaired_and_recorded_at_start() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let mut collector = CollectorProc::start(work.path(), &pki, "");
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=100);
    assert!(link.wait_acked(100, Duration::from_secs(30)));
    collector.kill9();
    // What the issue found: a 0-byte newest segment (rotation hit ENOSPC) that made the
    // collector refuse to start ("bad segment header: shorter than 64 bytes").
    let agent_dir = collector.store.join("agents/ehr-a");
    let segments: Vec<_> = fs::read_dir(&agent_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .collect();
    assert_eq!(segments.len(), 1);
    // Index 102: 100 events and the collector's own alerts are at most a few more.
    let stored = {
        let rt = runtime();
        collector.restart();
        let n = replay_all(&rt, &pki, &collector.addr, Default::default()).len() as u64;
        collector.kill9();
        n
    };
    let wedged = agent_dir.join(segment_file_name(stored + 1));
    fs::write(&wedged, b"").unwrap();
    collector.restart();
    assert!(collector.wait_log(
        "removing a segment whose creation was cut short",
        Duration::from_secs(5)
    ));
    assert!(!wedged.exists());
    link.send("ehr-a", 101..=200);
    assert!(link.wait_acked(200, Duration::from_secs(30)));
    let rt = runtime();
    let events = replay_all(&rt, &pki, &collector.addr, Default::default());
    assert_eq!(seqs(&events), (1..=200).collect::<Vec<_>>());
    let repaired: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Alert(a)) if a.kind == v1::AlertKind::StoreRepaired as i32 => {
                Some(a.message.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    assert!(
        repaired[0].contains(&segment_file_name(stored + 1)),
        "{repaired:?}"
    );
    collector.stop();
    verify_ok(&collector);
}

#[test]
fn a_disk_that_fails_writes_with_eio_loses_nothing_acknowledged_across_a_crash() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let backing = work.path().join("backing");
    let mut disk = Mounted::ext4_on_tmpfs(&work.path().join("store"), &backing, "16m");
    let mut collector =
        CollectorProc::start_with_store(work.path(), &pki, "segment_max_bytes = 16384\n");
    let rt = runtime();
    let mut alerts = subscribe_alerts(&rt, &pki, &collector.addr);
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=500);
    assert!(link.wait_acked(500, Duration::from_secs(30)));
    // The disk's backing store is full: the loop device fails writes with EIO.
    let filler = fill(&backing);
    link.send("ehr-a", 501..=3000);
    let failing = wait_alert(&rt, &mut alerts, v1::AlertKind::StoreFailing);
    // A loop device whose backing file cannot grow fails the write with EIO or, where the
    // kernel passes the backing file's error up as BLK_STS_NOSPC, ENOSPC (seen on 6.18
    // depending on whether data or the journal hits it first): the store must take either as
    // a failed write, refuse, and lose nothing acknowledged.
    assert!(
        failing.message.contains("store write failed") || failing.message.contains("store full"),
        "{}",
        failing.message
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut acked_while_failing = 0;
    while Instant::now() < deadline {
        acked_while_failing = acked_while_failing.max(link.spool.stats().acked);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(acked_while_failing < 3000, "failed writes were refused");
    // Crash, repair the disk (room for the device again, fsck by remounting), start again.
    collector.kill9();
    fs::remove_file(backing.join("filler")).unwrap();
    disk.unmount();
    disk.mount();
    collector.restart();
    assert!(
        link.wait_acked(3000, Duration::from_secs(60)),
        "everything acknowledged after the repair; acked {}",
        link.spool.stats().acked
    );
    let events = replay_all(&rt, &pki, &collector.addr, Default::default());
    // Every event acknowledged before the crash was durable; the rest was resent.
    assert_eq!(
        seqs(&events),
        (1..=3000).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(!alert_kinds(&events).contains(&v1::AlertKind::SequenceGap));
    collector.stop();
    verify_ok(&collector);
    eprintln!("backing filled with {filler} bytes; {acked_while_failing} of 3000 acknowledged before the crash");
}

/// libfaketime (Debian package `faketime`): the collector alone runs on a clock moved ahead.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[test]
fn a_collector_started_with_its_clock_years_ahead_deletes_no_fresh_segment() {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} missing: apt-get install faketime"
    );
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let mut collector = CollectorProc::start_with_store(
        work.path(),
        &pki,
        "segment_max_bytes = 4096\nretention_days = 1\n",
    );
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=300);
    assert!(link.wait_acked(300, Duration::from_secs(30)));
    drop(link);
    collector.stop();
    let segments = |store: &Path| {
        fs::read_dir(store.join("agents/ehr-a"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            })
            .count()
    };
    let before = segments(&collector.store);
    assert!(before > 5, "{before} segments");
    // Three years ahead: retention runs at start and must not take the fresh segments.
    collector.env = vec![
        ("LD_PRELOAD".into(), FAKETIME_LIB.into()),
        ("FAKETIME".into(), "+1095d".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    collector.restart();
    assert!(
        collector.wait_log("retention by age paused", Duration::from_secs(10)),
        "{}",
        collector.log()
    );
    assert!(
        collector.log().contains("2028-")
            || collector.log().contains("2029-")
            || collector.log().contains("2030-"),
        "the collector really ran on a clock years ahead:\n{}",
        collector.log()
    );
    assert!(!collector.log().contains("retention removed a segment"));
    collector.stop();
    assert_eq!(segments(&collector.store), before, "no segment removed");
    assert!(!collector.store.join("retention.jsonl").exists());
    collector.env.clear();
    collector.restart();
    let rt = runtime();
    let events = replay_all(&rt, &pki, &collector.addr, Default::default());
    assert_eq!(seqs(&events), (1..=300).collect::<Vec<_>>());
    collector.stop();
    verify_ok(&collector);
}
