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
    e2e::{replay_all, runtime, subscribe_live, CollectorProc, Pki},
    require_root, Tree, UnloadOnDrop,
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
    start_agent_with(config, &[])
}

/// Starts `phiguard run --config CONFIG ARGS…` and waits for its start-up line.
fn start_agent_with(config: &Path, args: &[&std::ffi::OsStr]) -> Child {
    let mut child = Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(config)
        .args(args)
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
    let mut live = subscribe_live(
        &rt,
        &pki,
        &collector.addr,
        v1::EventFilter {
            kinds: vec!["fileOpen".into()],
            path_prefixes: vec![tree.watched.display().to_string()],
            ..Default::default()
        },
    );
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

/// An agent process, killed if a test fails before stopping it.
struct AgentProc(Child);

impl AgentProc {
    /// SIGTERM and wait.
    fn stop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /metrics` from `addr`; the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the unlabelled sample `name`; panics when it is missing.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

/// Scrapes `addr` until `done` holds for the metrics (or 60 s pass); returns them.
fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = scrape(addr);
        if done(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s; last scrape:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `phiguard status --status-file FILE` (JSON and text).
fn agent_status(file: &Path) -> (serde_json::Value, String) {
    let run = |json: bool| {
        let mut command = Command::new(agent_binary());
        command.arg("status").arg("--status-file").arg(file);
        if json {
            command.arg("--json");
        }
        let out = command.output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    (serde_json::from_str(&run(true)).unwrap(), run(false))
}

const SPOOL_EVENTS: &str = "phiguard_spool_events";
const LAST_ACK: &str = "phiguard_publish_last_ack_timestamp_seconds";
const CONNECTED: &str = "phiguard_collector_connected";

#[test]
fn spool_depth_and_last_publish_follow_the_collector_in_metrics_and_status() {
    require_root();
    let (work, pki, tree) = (
        tempfile::tempdir().unwrap(),
        Pki::new(&[AGENT]),
        Tree::new(),
    );
    let mut collector = CollectorProc::start(work.path(), &pki, "");
    let file = tree.watched.join("record.txt");
    std::fs::write(&file, "patient").unwrap();
    let config = write_agent_config(
        work.path(),
        &pki,
        &collector.addr,
        &tree.watched,
        &work.path().join("spool"),
    );
    // A slow heartbeat: the spool's depth here is the file opens below.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}heartbeat_interval_ms = 60000\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let status_file = work.path().join("status.json");
    let mut agent = AgentProc(start_agent_with(
        &config,
        &["--status-file".as_ref(), status_file.as_os_str()],
    ));
    // The status file follows the start-up line.
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let (report, _) = agent_status(&status_file);
        if let Some(addr) = report["status"]["metrics"].as_str() {
            break addr.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no metrics endpoint in the status: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The agent reports every exec, fork and exit on the host: on a busy machine a few live
    // events are always in flight, so "drained" below means the backlog was acknowledged,
    // not a depth of exactly 0 (which a quiet host shows).
    scrape_until(&addr, "connected, something acknowledged", |m| {
        sample(m, CONNECTED) == 1.0 && sample(m, LAST_ACK) > 0.0
    });

    // The collector goes away: the depth grows with every event, the last publish stays.
    collector.stop();
    let down = scrape_until(&addr, "disconnected", |m| sample(m, CONNECTED) == 0.0);
    let last_ack = sample(&down, LAST_ACK);
    let open = || {
        let status = Command::new("/usr/bin/cat")
            .arg(&file)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };
    open();
    let first = scrape_until(&addr, "spool depth after one open", |m| {
        sample(m, SPOOL_EVENTS) >= 1.0
    });
    for _ in 0..5 {
        open();
    }
    let depth = sample(&first, SPOOL_EVENTS);
    let second = scrape_until(&addr, "spool depth after five more opens", |m| {
        sample(m, SPOOL_EVENTS) >= depth + 5.0
    });
    assert_eq!(sample(&first, LAST_ACK), last_ack, "last publish stays");
    assert_eq!(sample(&second, LAST_ACK), last_ack, "last publish stays");
    assert!(sample(&second, "phiguard_spool_bytes") > 0.0);
    // `phiguard status` says the same (written on the same tick).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (report, text) = loop {
        let (report, text) = agent_status(&status_file);
        if report["status"]["link"]["spool_events"].as_f64() >= Some(depth + 5.0) {
            break (report, text);
        }
        assert!(Instant::now() < deadline, "status: {report}");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("phiguard status while the collector is down:\n{text}");
    let link = &report["status"]["link"];
    let backlog_last = link["last_seq"].as_u64().unwrap();
    let backlog = link["spool_events"].as_u64().unwrap();
    assert_eq!(link["connected"], false, "{report}");
    assert_eq!(link["address"], collector.addr.as_str());
    assert_eq!(
        link["last_ack_ms"].as_f64().unwrap() / 1000.0,
        last_ack,
        "{report}"
    );
    assert!(link["spool_bytes"].as_u64() > Some(0), "{report}");
    assert!(text.contains("NOT CONNECTED"), "{text}");
    assert!(text.contains("events unacknowledged"), "{text}");

    // The collector returns: the backlog drains (everything spooled while it was down is
    // acknowledged; what remains is live traffic in flight) and the last publish moves.
    collector.restart();
    scrape_until(&addr, "drained after the collector returned", |m| {
        sample(m, CONNECTED) == 1.0
            && sample(m, SPOOL_EVENTS) < backlog as f64
            && sample(m, LAST_ACK) > last_ack
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (report, text) = agent_status(&status_file);
        let link = &report["status"]["link"];
        if link["acked_seq"].as_u64() >= Some(backlog_last) && link["connected"] == true {
            eprintln!("phiguard status after the collector returned:\n{text}");
            assert!(link["last_ack_ms"].as_f64().unwrap() / 1000.0 > last_ack);
            assert!(link["spool_events"].as_u64() < Some(backlog), "{report}");
            assert!(text.contains(" connected ("), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "status: {report}");
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop();
    // Every event reached the collector, the opens made while it was down too.
    let rt = runtime();
    assert!(
        file_opens(
            &replay_all(&rt, &pki, &collector.addr, Default::default()),
            &file
        ) >= 6
    );
}

/// The next event on `stream` for which `want` holds, within `limit`; panics otherwise.
fn next_matching(
    rt: &tokio::runtime::Runtime,
    stream: &mut tonic::Streaming<v1::Event>,
    what: &str,
    limit: Duration,
    want: impl Fn(&v1::Event) -> bool,
) -> v1::Event {
    rt.block_on(async {
        tokio::time::timeout(limit, async {
            loop {
                let event = stream
                    .message()
                    .await
                    .expect("event stream")
                    .expect("stream open");
                if want(&event) {
                    return event;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: not at the subscriber within {limit:?}"))
    })
}

/// The kinds of the alerts the collector at `addr` has stored, in order.
fn stored_alerts(rt: &tokio::runtime::Runtime, pki: &Pki, addr: &str) -> Vec<v1::AlertKind> {
    replay_all(
        rt,
        pki,
        addr,
        v1::EventFilter {
            kinds: vec!["alert".into()],
            ..Default::default()
        },
    )
    .iter()
    .filter_map(|e| alert_of(e).map(|(k, _)| k))
    .collect()
}

fn alert_of(event: &v1::Event) -> Option<(v1::AlertKind, &v1::CollectorAlert)> {
    match &event.body {
        Some(Body::Alert(a)) => Some((v1::AlertKind::try_from(a.kind).ok()?, a)),
        _ => None,
    }
}

#[test]
fn a_killed_agent_raises_agent_silent_and_its_return_agent_reconnected_at_a_subscriber() {
    require_root();
    let (work, pki, tree) = (
        tempfile::tempdir().unwrap(),
        Pki::new(&[AGENT]),
        Tree::new(),
    );
    // Short intervals through the configuration: heartbeat 300 ms, silence window 4 s (a
    // debug agent on a busy machine can spend over a second starting up or on a backlog).
    let mut collector =
        CollectorProc::start(work.path(), &pki, "\n[liveness]\nsilent_after_ms = 4000\n");
    let config = write_agent_config(
        work.path(),
        &pki,
        &collector.addr,
        &tree.watched,
        &work.path().join("spool"),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}heartbeat_interval_ms = 300\n")).unwrap();
    let rt = runtime();
    let mut live = subscribe_live(
        &rt,
        &pki,
        &collector.addr,
        v1::EventFilter {
            hosts: vec![AGENT.into()],
            kinds: vec!["alert".into(), "heartbeat".into()],
            ..Default::default()
        },
    );
    let mut agent = AgentProc(start_agent(&config));
    let beat = next_matching(
        &rt,
        &mut live,
        "a heartbeat",
        Duration::from_secs(30),
        |e| matches!(e.body, Some(Body::Heartbeat(_))),
    );
    let Some(Body::Heartbeat(h)) = &beat.body else {
        unreachable!()
    };
    eprintln!(
        "heartbeat, {} bytes as protobuf:\n{}",
        prost::Message::encoded_len(&beat),
        serde_json::to_string_pretty(&beat).unwrap()
    );
    assert_eq!(h.interval_ms, 300);
    assert!(
        h.programs_attached > 0 && h.programs_attached <= h.programs_known,
        "{h:?}"
    );
    // While the agent runs, heartbeats keep coming and no alert is raised (over a window).
    let quiet_until = Instant::now() + Duration::from_secs(5);
    let mut beats = 0;
    while Instant::now() < quiet_until {
        let left = quiet_until.saturating_duration_since(Instant::now());
        let event = rt.block_on(async { tokio::time::timeout(left, live.message()).await });
        let Ok(event) = event else { break };
        let event = event.expect("event stream").expect("stream open");
        eprintln!(
            "subscriber: seq {} at {:?}: {}",
            event.seq,
            event.time,
            phiguard_collector::tail::format_line(&event)
        );
        assert!(
            alert_of(&event).is_none(),
            "an alert while the agent runs: {event:?}"
        );
        beats += 1;
    }
    assert!(beats >= 5, "{beats} heartbeats in 5 s at 300 ms");

    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGKILL).unwrap();
    let _ = agent.0.wait();
    let killed = Instant::now();
    let silent = next_matching(
        &rt,
        &mut live,
        "agent-silent alert",
        Duration::from_secs(20),
        |e| matches!(alert_of(e), Some((v1::AlertKind::AgentSilent, _))),
    );
    eprintln!(
        "agent-silent alert {:?} after SIGKILL:\n{}",
        killed.elapsed(),
        serde_json::to_string_pretty(&silent).unwrap()
    );
    let (_, a) = alert_of(&silent).unwrap();
    assert!(a.silent_ms > 4000, "{a:?}");
    assert_eq!(silent.host.as_ref().unwrap().agent_id, AGENT);
    assert!(a.message.contains(AGENT), "{a:?}");

    let mut agent = AgentProc(start_agent(&config));
    let back = next_matching(
        &rt,
        &mut live,
        "agent-reconnected alert",
        Duration::from_secs(30),
        |e| alert_of(e).is_some(),
    );
    eprintln!("{}", serde_json::to_string_pretty(&back).unwrap());
    let (kind, a) = alert_of(&back).unwrap();
    assert_eq!(kind, v1::AlertKind::AgentReconnected, "{a:?}");
    assert!(a.silent_ms > 4000, "{a:?}");
    next_matching(
        &rt,
        &mut live,
        "heartbeats again",
        Duration::from_secs(30),
        |e| matches!(e.body, Some(Body::Heartbeat(_))),
    );

    // Stored in the agent's chain (which still verifies) and logged one line each.
    let stored = stored_alerts(&rt, &pki, &collector.addr);
    assert_eq!(
        stored,
        [v1::AlertKind::AgentSilent, v1::AlertKind::AgentReconnected]
    );
    let log = collector.log();
    for kind in ["ALERT_KIND_AGENT_SILENT", "ALERT_KIND_AGENT_RECONNECTED"] {
        assert_eq!(
            log.lines()
                .filter(|l| l.contains("alert:") && l.contains(kind))
                .count(),
            1,
            "{kind} logged once:\n{log}"
        );
    }
    agent.stop();
    collector.stop();
    let verify = CollectorProc::verify(&collector.config, &[]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// `bpftool ARGS… -j` parsed; panics with its output when it fails.
fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .args(args)
        .arg("-j")
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool {args:?}: {e}"))
}

/// The ids of the BPF objects the process `pid` holds descriptors to: `field` is `map_id` or
/// `link_id` (from /proc/PID/fdinfo).
fn held_ids(pid: u32, field: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The id of the map called `name` that the agent `pid` holds.
fn agent_map(pid: u32, name: &str) -> String {
    held_ids(pid, "map_id")
        .into_iter()
        .map(|id| id.to_string())
        .find(|id| bpftool(&["map", "show", "id", id])["name"] == name)
        .unwrap_or_else(|| panic!("agent {pid} holds no map {name}"))
}

/// The id of the link of the program called `program` that the agent `pid` holds.
fn agent_link(pid: u32, program: &str) -> String {
    held_ids(pid, "link_id")
        .into_iter()
        .map(|id| id.to_string())
        .find(|id| {
            let prog = bpftool(&["link", "show", "id", id])["prog_id"].to_string();
            // Kernel object names are cut at 15 bytes.
            let name = bpftool(&["prog", "show", "id", &prog])["name"].clone();
            name.as_str()
                .is_some_and(|n| !n.is_empty() && program.starts_with(n))
        })
        .unwrap_or_else(|| panic!("agent {pid} holds no link of {program}"))
}

/// The pid in the exemption map `AGENT` (map id `map`): the `tgid` that starts its
/// `AgentId` value.
fn exempt_pid(map: &str) -> u32 {
    let value = bpftool(&["map", "lookup", "id", map, "key", "0", "0", "0", "0"]);
    let bytes: Vec<u8> = value["value"]
        .as_array()
        .unwrap_or_else(|| panic!("{value}"))
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    u32::from_ne_bytes(bytes[..4].try_into().unwrap())
}

/// `bash -c 'exec 3<>/dev/tcp/127.0.0.1/PORT'` as `nobody`: whether the connect succeeded.
fn nobody_connects(port: u16) -> bool {
    Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/bash",
            "-c",
        ])
        .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn tamper_of(event: &v1::Event) -> Option<(v1::TamperKind, &v1::Tamper)> {
    match &event.body {
        Some(Body::Tamper(t)) => Some((v1::TamperKind::try_from(t.kind).ok()?, t)),
        _ => None,
    }
}

#[test]
fn tampering_with_the_agents_kernel_state_is_repaired_and_raises_alerts_at_a_subscriber() {
    require_root();
    let _unload = UnloadOnDrop;
    let (work, pki, tree) = (
        tempfile::tempdir().unwrap(),
        Pki::new(&[AGENT]),
        Tree::new(),
    );
    let mut collector = CollectorProc::start(work.path(), &pki, "");
    let config = write_agent_config(
        work.path(),
        &pki,
        &collector.addr,
        &tree.watched,
        &work.path().join("spool"),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}heartbeat_interval_ms = 300\n")).unwrap();
    // Enforcing (so the links are pinned): only root's bash may connect to a protected port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let policies = work.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("db.yaml"),
        format!("name: db-test\nmode: enforce\nrules:\n  - name: clients\n    database:\n      - port: {port}\n    allow:\n      - exe: /usr/bin/bash\n        user: root\n"),
    )
    .unwrap();
    let status_file = work.path().join("status.json");
    let rt = runtime();
    let mut live = subscribe_live(
        &rt,
        &pki,
        &collector.addr,
        v1::EventFilter {
            hosts: vec![AGENT.into()],
            kinds: vec!["alert".into(), "tamper".into(), "heartbeat".into()],
            ..Default::default()
        },
    );
    let mut agent = AgentProc(start_agent_with(
        &config,
        &[
            "--policies".as_ref(),
            policies.as_os_str(),
            "--status-file".as_ref(),
            status_file.as_os_str(),
        ],
    ));
    let pid = agent.0.id();
    assert!(!nobody_connects(port), "the policy enforces");

    // Untouched, the integrity check (every 5 s) finds nothing: heartbeats only.
    let quiet_until = Instant::now() + Duration::from_secs(7);
    let mut beats = 0;
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        let Ok(event) = rt.block_on(async { tokio::time::timeout(left, live.message()).await })
        else {
            break;
        };
        let event = event.expect("event stream").expect("stream open");
        assert!(
            matches!(event.body, Some(Body::Heartbeat(_))),
            "nothing but heartbeats while nobody tampers: {event:?}"
        );
        beats += 1;
    }
    assert!(beats > 5, "{beats} heartbeats in 7 s");

    let not_heartbeat = |e: &v1::Event| !matches!(e.body, Some(Body::Heartbeat(_)));
    // Each tampering: the agent's report, then the collector's alert naming it.
    let mut expect_report = |what: &str,
                             kind: v1::TamperKind,
                             object: &str,
                             alert: v1::AlertKind| {
        let started = Instant::now();
        let report = next_matching(&rt, &mut live, what, Duration::from_secs(20), not_heartbeat);
        eprintln!(
            "{what}: report after {:?}:\n{}",
            started.elapsed(),
            serde_json::to_string_pretty(&report).unwrap()
        );
        let (k, t) = tamper_of(&report).unwrap_or_else(|| panic!("{what}: {report:?}"));
        assert_eq!((k, t.object.as_str()), (kind, object), "{t:?}");
        assert!(t.repaired, "{what}: {t:?}");
        let raised = next_matching(&rt, &mut live, what, Duration::from_secs(20), not_heartbeat);
        eprintln!("{}", serde_json::to_string_pretty(&raised).unwrap());
        let (k, a) = alert_of(&raised).unwrap_or_else(|| panic!("{what}: {raised:?}"));
        assert_eq!(k, alert, "{a:?}");
        assert_eq!(a.event_seq, report.seq, "{a:?}");
        assert!(a.message.contains(object), "{a:?}");
        t.detail.clone()
    };

    // 1. Another process written into the agent's exemption (it would escape every policy):
    // `AgentId { tgid: 1, start_ticks: 0 }`.
    let agent_map_id = agent_map(pid, "AGENT");
    let mut update = vec![
        "map",
        "update",
        "id",
        &agent_map_id,
        "key",
        "0",
        "0",
        "0",
        "0",
    ];
    update.push("value");
    update.push("1");
    update.extend(["0"; 15]);
    bpftool(&update);
    expect_report(
        "exemption overwritten",
        v1::TamperKind::MapModified,
        "AGENT",
        v1::AlertKind::PolicyChanged,
    );
    let value = bpftool(&[
        "map",
        "lookup",
        "id",
        &agent_map_id,
        "key",
        "0",
        "0",
        "0",
        "0",
    ]);
    let bytes: Vec<u8> = value["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    assert_eq!(bytes[..4], pid.to_ne_bytes(), "the agent's pid is back");
    let start = phiguard::process::procfs::start_ticks(pid).unwrap();
    assert_eq!(bytes[8..], start.to_ne_bytes(), "with its start time");

    // 2. An allow-list entry added: uid 65534 (nobody) allowed for every subject of rule 0 in
    // both policy slots (key `IdKey { rule, id }`, value the subject mask).
    let uid_map = agent_map(pid, "SUBJECT_UID");
    for rule in [0, phiguard_common::policy::MAX_RULES] {
        let key: Vec<String> = rule
            .to_ne_bytes()
            .iter()
            .chain(&65534u32.to_ne_bytes())
            .map(u8::to_string)
            .collect();
        let mut args = vec!["map", "update", "id", &uid_map, "key"];
        args.extend(key.iter().map(String::as_str));
        args.push("value");
        args.extend(["255"; 8]);
        bpftool(&args);
    }
    let detail = expect_report(
        "allow-list entry added",
        v1::TamperKind::MapModified,
        "SUBJECT_UID",
        v1::AlertKind::PolicyChanged,
    );
    assert_eq!(detail, "0 entries changed, 2 added, 0 removed");
    assert!(
        !nobody_connects(port),
        "the entry is gone: nobody is refused again"
    );

    // 3. The cgroup connect program detached (what `bpftool link detach` can do).
    let old_link = agent_link(pid, "net_connect4");
    bpftool(&["link", "detach", "id", &old_link]);
    let detail = expect_report(
        "connect program detached",
        v1::TamperKind::ProgramDetached,
        "net_connect4",
        v1::AlertKind::ProgramsDetached,
    );
    assert!(detail.contains("detached"), "{detail}");
    let new_link = agent_link(pid, "net_connect4");
    assert_ne!(new_link, old_link, "attached again with a new link");
    let pin = format!("{}/links/net_connect4", phiguard::kernel::pins::PIN_DIR);
    assert_eq!(
        bpftool(&["link", "show", "pinned", &pin])["id"].to_string(),
        new_link,
        "the new link is pinned in place of the old"
    );
    assert!(!nobody_connects(port), "enforcing again");

    // 4. A pin removed: enforcement would not have outlived the agent.
    let pin = format!(
        "{}/links/file_sys_exit_openat",
        phiguard::kernel::pins::PIN_DIR
    );
    std::fs::remove_file(&pin).unwrap();
    expect_report(
        "pin removed",
        v1::TamperKind::PinRemoved,
        "file_sys_exit_openat",
        v1::AlertKind::ProgramsDetached,
    );
    assert!(Path::new(&pin).exists(), "pinned again");

    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&status_file).unwrap()).unwrap();
    assert_eq!(status["tamper_total"], 4, "{status:#}");

    // 5. A second agent takes over the pins and the exemption (as an upgrade does): the first
    // reports it once, unrepaired, and does not fight it for them.
    let second_config = work.path().join("second.toml");
    std::fs::write(
        &second_config,
        format!(
            "[watch]\npaths = [\"{}\"]\nports = []\n[output]\nstdout = false\n[enrich]\nhash_max_bytes = 1048576\n",
            tree.watched.display()
        ),
    )
    .unwrap();
    let second_status = work.path().join("second-status.json");
    let mut second = AgentProc(start_agent_with(
        &second_config,
        &[
            "--policies".as_ref(),
            policies.as_os_str(),
            "--status-file".as_ref(),
            second_status.as_os_str(),
        ],
    ));
    let report = next_matching(
        &rt,
        &mut live,
        "take-over",
        Duration::from_secs(20),
        not_heartbeat,
    );
    let (kind, t) = tamper_of(&report).unwrap_or_else(|| panic!("take-over: {report:?}"));
    assert_eq!(
        (kind, t.object.as_str()),
        (v1::TamperKind::PinRemoved, "pins"),
        "{t:?}"
    );
    assert!(
        !t.repaired && t.detail.contains(&second.0.id().to_string()),
        "{t:?}"
    );
    let raised = next_matching(
        &rt,
        &mut live,
        "take-over alert",
        Duration::from_secs(20),
        not_heartbeat,
    );
    assert!(
        matches!(alert_of(&raised), Some((v1::AlertKind::ProgramsDetached, a)) if a.message.contains("NOT repaired")),
        "{raised:?}"
    );
    let quiet_until = Instant::now() + Duration::from_secs(7);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        let Ok(event) = rt.block_on(async { tokio::time::timeout(left, live.message()).await })
        else {
            break;
        };
        let event = event.expect("event stream").expect("stream open");
        assert!(
            !not_heartbeat(&event),
            "nothing more once superseded: {event:?}"
        );
    }
    assert_eq!(
        exempt_pid(&agent_map_id),
        second.0.id(),
        "the newer agent stays exempt"
    );
    assert!(!nobody_connects(port), "the newer agent enforces");
    second.stop();

    // The collector stored exactly these five alerts (the heartbeats did not alert again:
    // every program stayed attached) and its chain verifies.
    let stored = stored_alerts(&rt, &pki, &collector.addr);
    assert_eq!(
        stored,
        [
            v1::AlertKind::PolicyChanged,
            v1::AlertKind::PolicyChanged,
            v1::AlertKind::ProgramsDetached,
            v1::AlertKind::ProgramsDetached,
            v1::AlertKind::ProgramsDetached
        ]
    );
    agent.stop();
    collector.stop();
    let verify = CollectorProc::verify(&collector.config, &[]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    drop(listener);
}

#[test]
fn a_break_glass_grant_raises_an_alert_at_a_subscriber() {
    require_root();
    let (work, pki, tree) = (
        tempfile::tempdir().unwrap(),
        Pki::new(&[AGENT]),
        Tree::new(),
    );
    // After the tree: the pins go before it is removed (this process is not allowed to read it).
    let _unload = UnloadOnDrop;
    let collector = CollectorProc::start(work.path(), &pki, "");
    let config = write_agent_config(
        work.path(),
        &pki,
        &collector.addr,
        &tree.watched,
        &work.path().join("spool"),
    );
    let policies = work.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("records.yaml"),
        format!(
            "name: records-test\nmode: enforce\nrules:\n  - name: patient-files\n    files:\n      - path: {}/**\n        access: [read]\n    allow:\n      - exe: /usr/bin/cat\n",
            tree.watched.display()
        ),
    )
    .unwrap();
    let grants = work.path().join("break-glass");
    let rt = runtime();
    let mut alerts = phiguard_tests::e2e::subscribe_alerts(&rt, &pki, &collector.addr);
    let mut agent = AgentProc(start_agent_with(
        &config,
        &[
            "--policies".as_ref(),
            policies.as_os_str(),
            "--break-glass-dir".as_ref(),
            grants.as_os_str(),
        ],
    ));
    let out = Command::new(agent_binary())
        .args([
            "break-glass",
            "--reason",
            "EHR outage, ticket 4711",
            "--for",
            "10m",
            "--user",
            "65534",
        ])
        .env("PHIGUARD_BREAK_GLASS_DIR", &grants)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let raised = next_matching(
        &rt,
        &mut alerts,
        "the break-glass alert",
        Duration::from_secs(30),
        |e| alert_of(e).is_some_and(|(k, _)| k == v1::AlertKind::BreakGlass),
    );
    eprintln!("{}", serde_json::to_string_pretty(&raised).unwrap());
    let (_, a) = alert_of(&raised).unwrap();
    assert!(a.message.contains(&id), "{a:?}");
    assert!(a.message.contains("EHR outage, ticket 4711"), "{a:?}");
    assert!(a.event_seq > 0, "names the agent's event: {a:?}");
    // Stored in the agent's chain too, next to the agent's own event.
    let stored = replay_all(
        &rt,
        &pki,
        &collector.addr,
        v1::EventFilter {
            kinds: vec!["breakGlass".into()],
            ..Default::default()
        },
    );
    assert!(
        stored.iter().any(|e| e.seq == a.event_seq
            && matches!(&e.body, Some(Body::BreakGlass(b)) if b.grant_id == id)),
        "{stored:?}"
    );
    // Revoked at the end, so nothing outlives the test (the pins go with `_unload`).
    let out = Command::new(agent_binary())
        .args(["break-glass", "--revoke", &id])
        .env("PHIGUARD_BREAK_GLASS_DIR", &grants)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    agent.stop();
}

/// The instance id an event carries.
fn instance_of(event: &v1::Event) -> &str {
    event.host.as_ref().map_or("", |h| h.instance_id.as_str())
}

#[test]
fn a_deleted_spool_starts_a_new_instance_whose_events_are_stored_and_recorded() {
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
    let status_file = work.path().join("status.json");
    let rt = runtime();
    let opened_and_stored = |instance: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = Command::new("/usr/bin/cat")
                .arg(&file)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            let events = replay_all(&rt, &pki, &collector.addr, Default::default());
            let mine: Vec<v1::Event> = events
                .iter()
                .filter(|e| instance_of(e) == instance)
                .cloned()
                .collect();
            if file_opens(&mine, &file) > 0 {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "no file open of instance {instance} stored within 60 s"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let mut agent = AgentProc(start_agent_with(
        &config,
        &["--status-file".as_ref(), status_file.as_os_str()],
    ));
    let old = std::fs::read_to_string(spool_dir.join("instance"))
        .unwrap()
        .trim()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (report, text) = agent_status(&status_file);
        if report["status"]["link"]["instance_id"].as_str() == Some(old.as_str()) {
            assert!(text.contains(&format!("instance: {old}")), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no instance in the status: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = opened_and_stored(&old);
    let old_high = before
        .iter()
        .filter(|e| instance_of(e) == old)
        .map(|e| e.seq)
        .max()
        .unwrap();
    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGTERM).unwrap();
    let _ = agent.0.wait();
    // The spool is lost (a reset, a reinstall): numbering starts at 1 again.
    std::fs::remove_dir_all(&spool_dir).unwrap();
    let mut agent = AgentProc(start_agent(&config));
    let new = std::fs::read_to_string(spool_dir.join("instance"))
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(new, old, "a new spool, a new instance");
    let events = opened_and_stored(&new);
    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGTERM).unwrap();
    let _ = agent.0.wait();
    let new_seqs: Vec<u64> = events
        .iter()
        .filter(|e| e.seq > 0 && instance_of(e) == new)
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        new_seqs.first(),
        Some(&1),
        "the new instance's seq 1 is stored"
    );
    assert!(
        new_seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "each seq once, in order"
    );
    assert!(old_high > 0, "the first instance stored");
    let started: Vec<&v1::CollectorAlert> = events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Alert(a)) if a.kind == v1::AlertKind::InstanceStarted as i32 => {
                assert_eq!(instance_of(e), new);
                Some(a)
            }
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(
        started[0].message.contains(&old[..8]),
        "{}",
        started[0].message
    );
    eprintln!(
        "{}",
        phiguard_collector::tail::format_line(
            events
                .iter()
                .find(|e| instance_of(e) == new && e.seq == 1)
                .unwrap()
        )
    );
    let out = CollectorProc::verify(&collector.config, &[]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
