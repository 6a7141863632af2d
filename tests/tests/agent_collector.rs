//! e2e tier with the real agent: `phiguard run` (root, eBPF loaded) with `[collector]`
//! configured, the real `phiguard-collector`, and a subscriber — all over mutual TLS 1.3 on
//! loopback. `cargo xtask test` builds both binaries and passes their paths in
//! `PHIGUARD_BIN` and `PHIGUARD_COLLECTOR_BIN`.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use phiguard::sink::spool::{FullPolicy, Spool, SpoolConfig};
use phiguard_proto::v1::{self, event::Body};
use phiguard_tests::{
    e2e::{replay_all, runtime, CollectorProc, Pki},
    require_root, Tree,
};

/// The identity of the agent under test (its certificate and `[agent] hostname`).
const AGENT: &str = "e2e-agent";

fn agent_binary() -> String {
    std::env::var("PHIGUARD_BIN").unwrap_or_else(|_| {
        panic!("PHIGUARD_BIN is not set: run the e2e tier through `cargo xtask test`, which builds target/debug/phiguard")
    })
}

/// The agent's configuration. Binaries over 1 MiB are not hashed: the processes here are
/// forked from this (large, debug) test binary, and hashing it would hold up the agent for
/// seconds before the first event.
fn write_agent_config(dir: &Path, pki: &Pki, addr: &str, watched: &Path, spool: &Path) -> PathBuf {
    let files = pki.agent(AGENT);
    let text = format!(
        "[watch]\npaths = [\"{}\"]\nports = []\n[output]\nstdout = false\n[agent]\nhostname = \"{AGENT}\"\n\
         [enrich]\nhash_max_bytes = 1048576\n\
         [collector]\naddress = \"{addr}\"\nserver_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\n\
         key = \"{}\"\nspool_dir = \"{}\"\n",
        watched.display(),
        files.ca.display(),
        files.cert.display(),
        files.key.display(),
        spool.display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `phiguard run --config CONFIG` and waits for its start-up line.
fn start_agent(config: &Path) -> Child {
    let mut child = Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).unwrap();
        seen.push_str(&line);
        assert!(n > 0, "agent exited before it was ready:\n{seen}");
        if line.contains("events are flowing") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no start-up line within 30 s:\n{seen}"
        );
    }
    // Keep draining stderr so the agent never blocks on it (echoed for failures).
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("agent: {line}");
        }
    });
    child
}

fn file_opens(events: &[v1::Event], path: &Path) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.body, Some(Body::FileOpen(o)) if Path::new(&o.path) == path))
        .count()
}

#[test]
fn a_file_open_reaches_a_subscriber_with_the_agents_certificate_identity() {
    require_root();
    let (work, pki, tree) = (
        tempfile::tempdir().unwrap(),
        Pki::new(&[AGENT]),
        Tree::new(),
    );
    let collector = CollectorProc::start(work.path(), &pki, "");
    let file = tree.watched.join("record.txt");
    std::fs::write(&file, "patient").unwrap();
    let config = write_agent_config(
        work.path(),
        &pki,
        &collector.addr,
        &tree.watched,
        &work.path().join("spool"),
    );
    let mut agent = start_agent(&config);
    let rt = runtime();
    let mut live = rt
        .block_on(phiguard_collector::tail::subscribe(
            &collector.addr,
            Some("localhost"),
            &pki.subscriber(),
            v1::SubscribeRequest {
                filter: Some(v1::EventFilter {
                    kinds: vec!["fileOpen".into()],
                    path_prefixes: vec![tree.watched.display().to_string()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            1 << 20,
        ))
        .expect("subscribe");
    let status = Command::new("/usr/bin/cat")
        .arg(&file)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let seen = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), live.message()).await })
        .expect("an event within 20 s")
        .expect("stream")
        .expect("an event");
    let _ = kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM);
    let _ = agent.wait();
    let Some(Body::FileOpen(open)) = &seen.body else {
        panic!("not a file open: {seen:?}");
    };
    assert_eq!(Path::new(&open.path), file);
    let host = seen.host.as_ref().unwrap();
    assert_eq!(host.agent_id, AGENT, "identity from the certificate");
    assert_eq!(host.hostname, AGENT);
    assert_eq!(seen.process.as_ref().unwrap().exe, "/usr/bin/cat");
}

#[test]
fn agent_killed_mid_stream_loses_nothing_it_spooled() {
    require_root();
    let (work, pki, tree) = (
        tempfile::tempdir().unwrap(),
        Pki::new(&[AGENT]),
        Tree::new(),
    );
    let collector = CollectorProc::start(work.path(), &pki, "");
    let file = tree.watched.join("record.txt");
    std::fs::write(&file, "patient").unwrap();
    let spool_dir = work.path().join("spool");
    let config = write_agent_config(
        work.path(),
        &pki,
        &collector.addr,
        &tree.watched,
        &spool_dir,
    );
    let mut agent = start_agent(&config);
    // A shell opens the watched file in a tight loop (`read < FILE`, no exec per open) while
    // the agent is killed. (Not this test process: its large debug binary would be hashed
    // first.)
    let mut opener = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("while :; do read x < '{}'; done", file.display()))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGKILL).unwrap();
    let _ = agent.wait();
    let _ = opener.kill();
    let _ = opener.wait();
    // What the dead agent left in its spool (read with the agent's own spool code).
    let spooled: BTreeSet<u64> = {
        let spool = Spool::open(SpoolConfig {
            dir: spool_dir.clone(),
            max_bytes: 1 << 30,
            full: FullPolicy::KeepOldest,
            sync_interval: Duration::ZERO,
        })
        .unwrap();
        let mut cursor = phiguard::sink::spool::ReadCursor::after(spool.stats().acked);
        let mut seqs = BTreeSet::new();
        loop {
            let chunk = spool.read(&mut cursor, 4096, 1 << 24).unwrap();
            if chunk.is_empty() {
                break;
            }
            seqs.extend(chunk.iter().map(|e| e.seq));
        }
        seqs
    };
    let rt = runtime();
    let before = replay_all(&rt, &pki, &collector.addr, Default::default());
    let stored_before: BTreeSet<u64> = before.iter().map(|e| e.seq).collect();
    let high = spooled
        .iter()
        .chain(stored_before.iter())
        .copied()
        .max()
        .unwrap();
    assert!(high > 0, "events were spooled before the kill");
    // Restart: the spooled events go out, and numbering continues after them.
    let mut agent = start_agent(&config);
    let status = Command::new("/usr/bin/cat")
        .arg(&file)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = replay_all(&rt, &pki, &collector.addr, Default::default());
        let done = events.iter().any(|e| e.seq > high) && file_opens(&events, &file) > 0;
        if done && events.iter().map(|e| e.seq).max() >= spooled.last().copied() {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "spooled events did not arrive within 60 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
    let _ = agent.wait();
    let stored: Vec<u64> = events
        .iter()
        .filter(|e| !matches!(e.body, Some(Body::Alert(_))))
        .map(|e| e.seq)
        .collect();
    let missing: Vec<&u64> = spooled.iter().filter(|s| !stored.contains(s)).collect();
    assert!(missing.is_empty(), "spooled but never stored: {missing:?}");
    let max = *stored.last().unwrap();
    assert_eq!(
        stored,
        (1..=max).collect::<Vec<_>>(),
        "every seq exactly once, in order, no gaps"
    );
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.body, Some(Body::Alert(_)))),
        "no gap alerts"
    );
    assert!(max > high, "the restarted agent continued the numbering");
}

#[test]
fn a_full_spool_counts_what_it_drops_and_reports_it_once_there_is_room() {
    require_root();
    let (work, pki, tree) = (
        tempfile::tempdir().unwrap(),
        Pki::new(&[AGENT]),
        Tree::new(),
    );
    let mut collector = CollectorProc::start(work.path(), &pki, "");
    // The collector is down while the agent fills its (smallest possible) spool.
    collector.kill9();
    let file = tree.watched.join("record.txt");
    std::fs::write(&file, "patient").unwrap();
    let config = write_agent_config(
        work.path(),
        &pki,
        &collector.addr,
        &tree.watched,
        &work.path().join("spool"),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}spool_max_bytes = 65536\nfull_policy = \"keep_oldest\"\n"),
    )
    .unwrap();
    let mut agent = start_agent(&config);
    let mut opener = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("while :; do read x < '{}'; done", file.display()))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = opener.kill();
    let _ = opener.wait();
    collector.restart();
    // Every drop shows twice: as a sequence gap at the collector, and in the agent's own
    // EventsLost (source spool) reports, sent once the spool had room again.
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (gaps, reported) = loop {
        let events = replay_all(&rt, &pki, &collector.addr, Default::default());
        let gaps: u64 = events
            .iter()
            .filter_map(|e| match &e.body {
                Some(Body::Alert(a)) => Some(a.received_seq - a.expected_seq),
                _ => None,
            })
            .sum();
        let reported: u64 = events
            .iter()
            .filter_map(|e| match &e.body {
                Some(Body::EventsLost(l)) if l.source == v1::LossSource::Spool as i32 => {
                    Some(l.count)
                }
                _ => None,
            })
            .sum();
        if gaps > 0 && gaps == reported {
            break (gaps, reported);
        }
        assert!(
            Instant::now() < deadline,
            "drops: {gaps} missing seqs at the collector, {reported} reported lost by the agent"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
    let _ = agent.wait();
    assert!(gaps > 100, "the 64 KiB spool overflowed ({gaps} dropped)");
    assert_eq!(gaps, reported);
}
