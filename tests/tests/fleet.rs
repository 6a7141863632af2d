//! The fleet tier: collectors as front ends over a three-node NATS JetStream cluster (real
//! `nats-server` processes on loopback), the store written by one collector from JetStream,
//! agents (their own spool and publisher, in-process) with a list of collectors to fail over
//! to, and live subscribers — with a NATS node and a collector killed mid-stream.
//!
//! Needs `nats-server` (`cargo xtask setup` installs Debian's) and `PHIGUARD_COLLECTOR_BIN`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use phiguard_proto::v1::{self, event::Body};
use phiguard_tests::{
    e2e::{
        event, replay_all, replay_audit, replay_with, runtime, subscribe_live, try_ingest_as,
        uuid_like, AgentLink, CollectorProc, PendingAddr, Pki,
    },
    fleet::{stream_messages, stream_runs, NatsCluster, NatsTls},
    tmpfs::Tmpfs,
};

const AGENTS: [&str; 4] = ["fleet-a", "fleet-b", "fleet-c", "fleet-d"];
/// Rounds of sending; each round spools `PER_ROUND` events per agent.
const ROUNDS: u64 = 30;
const PER_ROUND: u64 = 100;
const KILL_NODE_AT: u64 = 8;
const KILL_COLLECTOR_AT: u64 = 15;

fn fleet_section(cluster: &NatsCluster, writer: bool) -> String {
    format!(
        "[jetstream]\nservers = [{}]\nreplicas = 3\nstore_writer = {writer}\npublish_timeout_ms = 3000\n",
        cluster.servers_toml()
    )
}

/// The four agents: the first two start on `a`, the others on `b`, each listing the other
/// collector to fail over to.
fn start_agents(pki: &Pki, a: &str, b: &str) -> Vec<AgentLink> {
    AGENTS
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let (first, other) = if i < 2 { (a, b) } else { (b, a) };
            AgentLink::start_with(pki, host, first, |c| {
                c.failover = vec![other.to_owned()];
                c.backoff_min = Duration::from_millis(100);
            })
        })
        .collect()
}

#[test]
fn the_store_writer_killed_mid_stream_is_replaced_by_its_standby_and_nothing_is_lost_or_doubled() {
    let pki = Pki::new(&AGENTS);
    let mut cluster = NatsCluster::start(3);
    let f_work = tempfile::Builder::new()
        .prefix("phiguard-fleet-f-")
        .tempdir()
        .unwrap();
    let cadence = "every_records = 500\nevery_secs = 1\n";
    let lease = 4;
    let WriterAndStandby {
        mut w1,
        mut w2,
        w2_listening,
        w2_config,
        work: _work,
    } = WriterAndStandby::start(&cluster, &pki, lease, "", Vec::new());
    let front = CollectorProc::start_with_sections(
        f_work.path(),
        &pki,
        "",
        cadence,
        &fleet_section(&cluster, false),
    );
    assert!(
        front.wait_log("live relay following JetStream", Duration::from_secs(30)),
        "{}",
        front.log()
    );
    let rt = runtime();
    let live_front = collect_live(&rt, subscribe_live(&rt, &pki, &front.addr, file_opens()));
    let links = start_agents(&pki, &front.addr, &w1.addr);
    let mut killed_at = None;
    for round in 0..ROUNDS {
        for link in &links {
            link.send(&link.host, round * PER_ROUND + 1..=(round + 1) * PER_ROUND);
        }
        if round == KILL_NODE_AT {
            cluster.nodes[0].kill9();
        }
        if round == KILL_COLLECTOR_AT {
            assert!(
                !w2.log().contains("listening on"),
                "the standby started writing while the writer held the lease:\n{}",
                w2.log()
            );
            w1.kill9();
            killed_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = ROUNDS * PER_ROUND;
    for link in &links {
        assert!(
            link.wait_acked(last, Duration::from_secs(60)),
            "{} acknowledged only up to {}:\nfront:\n{}",
            link.host,
            link.spool.stats().acked,
            front.log()
        );
    }
    w2.wait_listening(w2_listening, Duration::from_secs(60));
    let took = killed_at.unwrap().elapsed();
    assert!(
        w2.wait_log("store writer consuming JetStream", Duration::from_secs(30)),
        "{}",
        w2.log()
    );
    eprintln!("the standby writer listened {took:?} after the writer's kill (lease {lease} s)");
    let total = last * AGENTS.len() as u64;
    let stored = stored_file_opens(&rt, &pki, &w2, total);
    exactly_once("the store after the take-over", &stored, last);
    let verified = CollectorProc::verify(&w2_config, &[]);
    assert!(
        verified.status.success(),
        "verify: {}\n{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while (live_front.lock().unwrap().len() as u64) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    exactly_once(
        "the front end's live subscriber",
        &live_front.lock().unwrap(),
        last,
    );
    drop(links);
}

/// A store writer and its standby on one store (shared storage: one store directory,
/// checkpoint key and checkpoint file), both with a `lease_secs` writer lease and `extra`
/// sections; the writer consumes JetStream and the standby waits for the lease (started
/// with `standby_env`).
struct WriterAndStandby {
    w1: CollectorProc,
    w2: CollectorProc,
    w2_listening: PendingAddr,
    w2_config: PathBuf,
    work: [tempfile::TempDir; 2],
}

impl WriterAndStandby {
    fn start(
        cluster: &NatsCluster,
        pki: &Pki,
        lease_secs: u64,
        extra: &str,
        standby_env: Vec<(String, String)>,
    ) -> WriterAndStandby {
        let work = ["w1", "w2"].map(|name| {
            tempfile::Builder::new()
                .prefix(&format!("phiguard-fleet-{name}-"))
                .tempdir()
                .unwrap()
        });
        let writer_section = format!(
            "{}writer_lease_secs = {lease_secs}\n{extra}",
            fleet_section(cluster, true)
        );
        let w1_config = CollectorProc::write_config(
            work[0].path(),
            pki,
            &work[0].path().join("checkpoint.key"),
            "",
            "",
            "every_records = 500\nevery_secs = 1\n",
            &writer_section,
        );
        let w2_config = work[1].path().join("collector.toml");
        std::fs::copy(&w1_config, &w2_config).unwrap();
        let store = work[0].path().join("store");
        let w1 = CollectorProc::start_config(w1_config, store.clone());
        assert!(
            w1.wait_log("store writer consuming JetStream", Duration::from_secs(30)),
            "{}",
            w1.log()
        );
        let (w2, w2_listening) =
            CollectorProc::start_pending_with_env(w2_config.clone(), store, standby_env);
        assert!(
            w2.wait_log(
                "standby: another collector holds the store writer lease",
                Duration::from_secs(30)
            ),
            "{}",
            w2.log()
        );
        WriterAndStandby {
            w1,
            w2,
            w2_listening,
            w2_config,
            work,
        }
    }
}

/// A fresh directory named `prefix…` holding a collector configuration (its own checkpoint
/// key, store under it) with `checkpoint` and `sections`; nothing is started.
fn config_in(
    pki: &Pki,
    prefix: &str,
    checkpoint: &str,
    sections: &str,
) -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let config = CollectorProc::write_config(
        work.path(),
        pki,
        &work.path().join("checkpoint.key"),
        "",
        "",
        checkpoint,
        sections,
    );
    (work, config)
}

/// How `collector` (`what`) exited, which it must within `within`.
fn exit_within(
    collector: &mut CollectorProc,
    within: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = collector.exit_status() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still runs after {within:?}:\n{}",
            collector.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir` (relative path) with its contents.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_owned(), bytes);
            }
        }
    }
    files
}

/// Liveness of the agents talking to a collector: silent after 2 s.
const SILENT_AFTER_2S: &str = "[liveness]\nsilent_after_ms = 2000\n";

#[test]
fn a_writer_paused_past_its_lease_writes_nothing_after_its_standby_took_over_and_exits_75() {
    const THREE: [&str; 3] = ["fleet-a", "fleet-b", "fleet-c"];
    let pki = Pki::new(&THREE);
    let cluster = NatsCluster::start(3);
    let lease = 4;
    let WriterAndStandby {
        w1: mut old,
        w2: mut new,
        w2_listening,
        w2_config,
        work: _work,
    } = WriterAndStandby::start(&cluster, &pki, lease, SILENT_AFTER_2S, Vec::new());
    let f_work = tempfile::Builder::new()
        .prefix("phiguard-fleet-f-")
        .tempdir()
        .unwrap();
    let front = CollectorProc::start_with_sections(
        f_work.path(),
        &pki,
        "",
        "every_records = 500\nevery_secs = 1\n",
        &fleet_section(&cluster, false),
    );
    assert!(
        front.wait_log("live relay following JetStream", Duration::from_secs(30)),
        "{}",
        front.log()
    );
    // Two agents on the front end, streaming throughout; a third on the writer's own
    // collector, which falls silent just before the writer is paused: once the writer runs
    // again, the first thing it does without asking anyone is to record that agent's silence
    // in the store — an append the fence must refuse.
    let links: Vec<AgentLink> = THREE[..2]
        .iter()
        .map(|host| AgentLink::start(&pki, host, &front.addr))
        .collect();
    let quiet = AgentLink::start(&pki, THREE[2], &old.addr);
    let mut rounds = 0;
    let mut send_round = |links: &[AgentLink]| {
        for link in links {
            link.send(
                &link.host,
                rounds * PER_ROUND + 1..=(rounds + 1) * PER_ROUND,
            );
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(100));
    };
    for _ in 0..5 {
        send_round(&links);
    }
    quiet.send(THREE[2], 1..=PER_ROUND);
    assert!(
        quiet.wait_acked(PER_ROUND, Duration::from_secs(20)),
        "{}",
        old.log()
    );
    drop(quiet);
    let old_pid = old.pid().unwrap();
    let paused_at = pause_outside_a_batch(old_pid, &old.store.join("writer.fence"));
    while paused_at.elapsed() < Duration::from_secs(2 * lease) {
        send_round(&links);
    }
    new.wait_listening(w2_listening, Duration::from_secs(60));
    assert!(
        new.wait_log("store writer consuming JetStream", Duration::from_secs(30)),
        "{}",
        new.log()
    );
    let last = rounds * PER_ROUND;
    for link in &links {
        assert!(
            link.wait_acked(last, Duration::from_secs(60)),
            "{} acknowledged only up to {}:\n{}",
            link.host,
            link.spool.stats().acked,
            front.log()
        );
    }
    let rt = runtime();
    let total = last * 2 + PER_ROUND;
    let stored = stored_file_opens(&rt, &pki, &new, total);
    let check = |what: &str, stored: &[(String, u64)]| {
        let (quiet, streaming): (Vec<_>, Vec<_>) = stored
            .iter()
            .cloned()
            .partition(|(agent, _)| agent == THREE[2]);
        exactly_once_of(what, &THREE[..2], &streaming, last);
        exactly_once_of(what, &THREE[2..], &quiet, PER_ROUND);
    };
    check("the store after the take-over", &stored);
    // Everything is in and the new writer idle. The old one runs again, its lease lapsed,
    // the third agent silent for longer than 2 s — and its NATS server slow to answer for a
    // moment, so that its lease renewal cannot tell it yet that the lease is gone (as when a
    // writer runs again before its renewal timer does): what stops it must be the fence.
    // The new writer signs a last checkpoint within a second of its last append: let it.
    std::thread::sleep(Duration::from_millis(2500));
    // Both writers' configuration names the first one's checkpoint file.
    let checkpoints = old.config.parent().unwrap().join("checkpoints.jsonl");
    let signed_before = std::fs::read_to_string(&checkpoints).unwrap();
    let before = files_under(&new.store);
    let node = cluster
        .nodes
        .iter()
        .find(|n| connected_to(old_pid, &n.url))
        .expect("the old writer's NATS server");
    let node_pid = Pid::from_raw(node.pid().unwrap() as i32);
    kill(node_pid, Signal::SIGSTOP).unwrap();
    kill(Pid::from_raw(old_pid as i32), Signal::SIGCONT).unwrap();
    // A SOC client subscribes to the paused writer as it resumes: the subscription's opening
    // record is the old writer's first append to the store, which its fence must refuse (the
    // subscription is refused with it; a paused writer has read nothing since its pause, so
    // it judges no agent silent and raises nothing of its own).
    let refused = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            phiguard_collector::tail::subscribe(
                &old.addr,
                Some("localhost"),
                &pki.subscriber(),
                v1::SubscribeRequest {
                    filter: Some(file_opens()),
                    ..Default::default()
                },
                1 << 20,
            ),
        )
        .await
    });
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "the paused writer opened a subscription after the take-over:\n{}",
        old.log()
    );
    let slow_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < slow_until && !old.log().contains("store writer fenced off") {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(node_pid, Signal::SIGCONT).unwrap();
    let status = exit_within(
        &mut old,
        Duration::from_secs(20),
        "the paused writer, after SIGCONT",
    );
    assert_eq!(status.code(), Some(75), "{}", old.log());
    let after = files_under(&new.store);
    let changed: Vec<_> = after
        .iter()
        .filter(|(path, bytes)| before.get(*path) != Some(*bytes))
        .map(|(path, _)| path.display().to_string())
        .chain(
            before
                .keys()
                .filter(|path| !after.contains_key(*path))
                .map(|path| format!("{} (removed)", path.display())),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "the paused writer wrote to the store after the take-over: {changed:?}\n{}",
        old.log()
    );
    assert_eq!(
        std::fs::read_to_string(&checkpoints).unwrap(),
        signed_before,
        "the paused writer signed a checkpoint after the take-over"
    );
    assert!(
        old.log().contains("store writer fenced off"),
        "the paused writer was not refused by the fence:\n{}",
        old.log()
    );
    check("the store", &stored_file_opens(&rt, &pki, &new, total));
    let verified = CollectorProc::verify(&w2_config, &[]);
    assert!(
        verified.status.success(),
        "verify: {}\n{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    drop(links);
}

/// SIGSTOPs `pid` at a moment it holds no lock on `fence` (a batch of its in progress holds
/// one, and a newer writer's raise would wait for it): otherwise it is let run a little longer
/// and paused again. Returns when it was paused.
fn pause_outside_a_batch(pid: u32, fence: &Path) -> Instant {
    let target = Pid::from_raw(pid as i32);
    for _ in 0..200 {
        kill(target, Signal::SIGSTOP).unwrap();
        let paused_at = Instant::now();
        // SIGSTOP is delivered asynchronously: wait until the process is stopped.
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .rsplit(") ")
            .next()
            .is_some_and(|rest| rest.starts_with('T'))
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !holds_flock(pid, fence) {
            return paused_at;
        }
        kill(target, Signal::SIGCONT).unwrap();
        std::thread::sleep(Duration::from_millis(7));
    }
    panic!("process {pid} held {} at every pause", fence.display());
}

/// Whether process `pid` has a TCP connection to the server of `url` (`nats://HOST:PORT`).
fn connected_to(pid: u32, url: &str) -> bool {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .any(|text| {
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 9
                    && inodes.contains(fields[9])
                    && fields[2]
                        .rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                        == Some(port)
            })
        })
}

/// Whether process `pid` holds a `flock(2)` lock on `path` (`/proc/locks`).
fn holds_flock(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata(path).unwrap().ino();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|line| !line.contains("->"))
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .any(|f| {
            f.len() > 5
                && f[1] == "FLOCK"
                && f[4] == pid.to_string()
                && f[5].rsplit(':').next() == Some(inode.to_string().as_str())
        })
}

/// The datagrams a service manager would receive on `$NOTIFY_SOCKET`, as they come.
fn notify_socket(dir: &Path) -> (PathBuf, Arc<Mutex<Vec<String>>>) {
    let path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer) {
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    });
    (path, seen)
}

/// Waits until a datagram received satisfies `wanted`; returns it.
fn wait_datagram(
    seen: &Mutex<Vec<String>>,
    timeout: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(found) = seen.lock().unwrap().iter().find(|d| wanted(d)) {
            return Some(found.clone());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_standby_tells_systemd_it_is_ready_and_standing_by_pings_its_watchdog_names_a_new_holder_then_takes_over(
) {
    let pki = Pki::new(&AGENTS[..1]);
    let cluster = NatsCluster::start(3);
    let sockets = tempfile::tempdir().unwrap();
    let (socket, datagrams) = notify_socket(sockets.path());
    let env = vec![
        ("NOTIFY_SOCKET".to_owned(), socket.display().to_string()),
        ("WATCHDOG_USEC".to_owned(), "400000".to_owned()),
    ];
    let WriterAndStandby {
        mut w1,
        mut w2,
        w2_listening,
        work: _work,
        ..
    } = WriterAndStandby::start(&cluster, &pki, 4, "", env);
    let ready = wait_datagram(&datagrams, Duration::from_secs(10), |d| {
        d.lines().any(|l| l == "READY=1")
    })
    .unwrap_or_else(|| panic!("no READY=1 from the standby:\n{}", w2.log()));
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=standby: store writer lease held by ")),
        "the standby's READY=1 came without its standby status: {ready:?}"
    );
    // Standing by for a while (a unit's start timeout would have run out by now), pinging
    // its watchdog at half its 0.4 s period.
    std::thread::sleep(Duration::from_secs(3));
    let pings = datagrams
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(pings >= 6, "{pings} watchdog pings in 3 s of standing by");
    assert!(
        !w2.log().contains("listening on"),
        "the standby listened while the writer held the lease:\n{}",
        w2.log()
    );
    // The lease changes hands while the standby waits (stopped meanwhile, so that another
    // collector takes it): its status names the new holder.
    let w2_pid = Pid::from_raw(w2.pid().expect("the standby runs") as i32);
    kill(w2_pid, Signal::SIGSTOP).unwrap();
    w1.kill9();
    let (w3_work, w3_config) = config_in(
        &pki,
        "phiguard-fleet-w3-",
        "every_records = 500\nevery_secs = 1\n",
        &format!("{}writer_lease_secs = 4\n", fleet_section(&cluster, true)),
    );
    let mut w3 = CollectorProc::start_config(w3_config, w3_work.path().join("store"));
    assert!(
        w3.wait_log("store writer consuming JetStream", Duration::from_secs(30)),
        "{}",
        w3.log()
    );
    kill(w2_pid, Signal::SIGCONT).unwrap();
    let holder_in = |datagram: &str| {
        datagram.lines().find_map(|l| {
            l.strip_prefix("STATUS=standby: store writer lease held by ")
                .and_then(|rest| rest.split(';').next())
                .map(str::to_owned)
        })
    };
    let first = holder_in(&ready).unwrap();
    let changed = wait_datagram(&datagrams, Duration::from_secs(10), |d| {
        holder_in(d).is_some_and(|h| h != first)
    })
    .unwrap_or_else(|| {
        panic!(
            "the standby's status still names the old holder: {:?}\n{}",
            datagrams.lock().unwrap(),
            w2.log()
        )
    });
    let now_held_by = holder_in(&changed).unwrap();
    assert!(
        w3.log().contains(&now_held_by),
        "the status names {now_held_by}, not the collector that took the lease:\n{}",
        w3.log()
    );
    w3.kill9();
    w2.wait_listening(w2_listening, Duration::from_secs(30));
    let taken = wait_datagram(&datagrams, Duration::from_secs(5), |d| {
        d.contains("STATUS=store writer: lease taken")
    });
    assert!(
        taken.is_some(),
        "no status for the take-over: {:?}",
        datagrams.lock().unwrap()
    );
    let listening = wait_datagram(&datagrams, Duration::from_secs(5), |d| {
        d.lines().any(|l| l == "STATUS=listening")
    })
    .unwrap_or_else(|| panic!("no listening status: {:?}", datagrams.lock().unwrap()));
    assert!(listening.lines().any(|l| l == "READY=1"), "{listening:?}");
    let pings_before = datagrams
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    std::thread::sleep(Duration::from_secs(1));
    let pings_after = datagrams
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(
        pings_after > pings_before,
        "no watchdog ping once writing the store"
    );
    w2.stop();
}

/// (agent, seq) of every file-open event a live subscription sends, as it sends them.
fn collect_live(
    rt: &tokio::runtime::Runtime,
    mut stream: tonic::Streaming<v1::Event>,
) -> Arc<Mutex<Vec<(String, u64)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    rt.spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            let agent = event
                .host
                .as_ref()
                .map_or(String::new(), |h| h.agent_id.clone());
            sink.lock().unwrap().push((agent, event.seq));
        }
    });
    seen
}

fn file_opens() -> v1::EventFilter {
    v1::EventFilter {
        kinds: vec!["fileOpen".into()],
        ..Default::default()
    }
}

/// Every (agent, seq) exactly once, and seqs 1..=last for every agent of `AGENTS`.
fn exactly_once(what: &str, seen: &[(String, u64)], last: u64) {
    exactly_once_of(what, &AGENTS, seen, last);
}

/// Every (agent, seq) exactly once, and seqs 1..=last for every agent of `agents`.
fn exactly_once_of(what: &str, agents: &[&str], seen: &[(String, u64)], last: u64) {
    let mut counts: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for (agent, seq) in seen {
        *counts.entry((agent.as_str(), *seq)).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(
        doubled.is_empty(),
        "{what}: seen more than once: {doubled:?}"
    );
    for &agent in agents {
        let missing: Vec<u64> = (1..=last)
            .filter(|seq| !counts.contains_key(&(agent, *seq)))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "{what}: agent {agent} is missing seqs {missing:?}…"
        );
    }
    assert_eq!(seen.len() as u64, last * agents.len() as u64, "{what}");
}

/// Replays the store of `collector` until it holds `total` file opens (or 60 s passed).
fn stored_file_opens(
    rt: &tokio::runtime::Runtime,
    pki: &Pki,
    collector: &CollectorProc,
    total: u64,
) -> Vec<(String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: Vec<(String, u64)> = replay_all(rt, pki, &collector.addr, file_opens())
            .into_iter()
            .map(|e| (e.host.map_or(String::new(), |h| h.agent_id), e.seq))
            .collect();
        if stored.len() as u64 >= total || Instant::now() > deadline {
            return stored;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn while_jetstream_has_no_quorum_nothing_is_acknowledged_the_writer_fences_itself_and_all_is_stored_once_it_returns(
) {
    const TWO: [&str; 2] = ["fleet-a", "fleet-b"];
    let pki = Pki::new(&TWO);
    let mut cluster = NatsCluster::start(3);
    let work = tempfile::Builder::new()
        .prefix("phiguard-fleet-q-")
        .tempdir()
        .unwrap();
    let mut collector = CollectorProc::start_with_sections(
        work.path(),
        &pki,
        "",
        "every_records = 500\nevery_secs = 1\n",
        &fleet_section(&cluster, true),
    );
    assert!(
        collector.wait_log("store writer consuming JetStream", Duration::from_secs(30)),
        "{}",
        collector.log()
    );
    let links: Vec<AgentLink> = TWO
        .iter()
        .map(|host| AgentLink::start(&pki, host, &collector.addr))
        .collect();
    for link in &links {
        link.send(&link.host, 1..=500);
    }
    for link in &links {
        assert!(
            link.wait_acked(500, Duration::from_secs(30)),
            "{}",
            collector.log()
        );
    }
    // Two of three nodes gone: the stream cannot commit, so no front end may acknowledge.
    cluster.nodes[1].kill9();
    cluster.nodes[2].kill9();
    for link in &links {
        link.send(&link.host, 501..=1000);
    }
    std::thread::sleep(Duration::from_secs(8));
    for link in &links {
        assert_eq!(
            link.spool.stats().acked,
            500,
            "{}: acknowledged while JetStream had no quorum",
            link.host
        );
    }
    cluster.nodes[1].restart();
    cluster.nodes[2].restart();
    // Unable to renew its writer lease for most of its term, the writer stopped at once
    // (another could have taken the lease); its unit restarts it, as here.
    let status = collector.exit_status();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(75),
        "the writer should have fenced itself off:\n{}",
        collector.log()
    );
    assert!(collector
        .log()
        .contains("store writer lease not renewed in time"));
    collector.restart();
    for link in &links {
        assert!(
            link.wait_acked(1000, Duration::from_secs(60)),
            "{} acknowledged up to {} only once the quorum returned:\n{}\n{}",
            link.host,
            link.spool.stats().acked,
            collector.log(),
            cluster.logs()
        );
    }
    let rt = runtime();
    let stored = stored_file_opens(&rt, &pki, &collector, 2000);
    exactly_once_of("the store", &TWO, &stored, 1000);
    let verified = CollectorProc::verify(&collector.config, &[]);
    assert!(
        verified.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
    drop(links);
}

/// A writer lease of 60 s: long enough that a leader election on a loaded machine never
/// fences the writer off in a test about something else (fencing is the no-quorum test's).
const LEASE_60S: &str = "writer_lease_secs = 60\n";

/// A store writer and a front end over a cluster, each in a temporary directory of its own,
/// checkpointing every 500 records or every second.
struct WriterAndFront {
    writer: CollectorProc,
    front: CollectorProc,
    _work: [tempfile::TempDir; 2],
}

impl WriterAndFront {
    /// Starts both, with `writer_extra` and `front_extra` after their `[jetstream]` sections;
    /// returns once the writer consumes and the front end relays.
    fn start(pki: &Pki, cluster: &NatsCluster, writer_extra: &str, front_extra: &str) -> Self {
        let work = ["w", "f"].map(|name| {
            tempfile::Builder::new()
                .prefix(&format!("phiguard-fleet-{name}-"))
                .tempdir()
                .unwrap()
        });
        let start = |work: &tempfile::TempDir, writer: bool, extra: &str| {
            CollectorProc::start_with_sections(
                work.path(),
                pki,
                "",
                "every_records = 500\nevery_secs = 1\n",
                &format!("{}{extra}", fleet_section(cluster, writer)),
            )
        };
        let writer = start(&work[0], true, writer_extra);
        let front = start(&work[1], false, front_extra);
        assert!(
            writer.wait_log("store writer consuming JetStream", Duration::from_secs(30)),
            "{}",
            writer.log()
        );
        assert!(
            front.wait_log("live relay following JetStream", Duration::from_secs(30)),
            "{}",
            front.log()
        );
        WriterAndFront {
            writer,
            front,
            _work: work,
        }
    }
}

#[test]
fn a_nats_node_and_a_collector_killed_mid_stream_lose_nothing_acknowledged_and_store_it_once() {
    let pki = Pki::new(&AGENTS);
    let mut cluster = NatsCluster::start(3);
    let WriterAndFront {
        writer,
        mut front,
        _work,
    } = WriterAndFront::start(&pki, &cluster, LEASE_60S, "");
    let rt = runtime();
    let live_writer = collect_live(&rt, subscribe_live(&rt, &pki, &writer.addr, file_opens()));
    let live_front = collect_live(&rt, subscribe_live(&rt, &pki, &front.addr, file_opens()));
    // Two agents start on the front end, two on the writer's collector; each lists the other.
    let links = start_agents(&pki, &front.addr, &writer.addr);
    let mut killed_at = None;
    let mut acked_at_kill = Vec::new();
    let mut failed_over: BTreeMap<usize, Duration> = BTreeMap::new();
    let mut front_saw_before_kill = Vec::new();
    for round in 0..ROUNDS {
        for link in &links {
            link.send(&link.host, round * PER_ROUND + 1..=(round + 1) * PER_ROUND);
        }
        if round == KILL_NODE_AT {
            cluster.nodes[0].kill9();
        }
        if round == KILL_COLLECTOR_AT {
            front_saw_before_kill = live_front.lock().unwrap().clone();
            acked_at_kill = links.iter().map(|l| l.spool.stats().acked).collect();
            front.kill9();
            killed_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
        if let Some(at) = killed_at {
            for (i, link) in links.iter().enumerate().take(2) {
                if !failed_over.contains_key(&i) && link.spool.stats().acked > acked_at_kill[i] {
                    failed_over.insert(i, at.elapsed());
                }
            }
        }
    }
    let last = ROUNDS * PER_ROUND;
    for (i, link) in links.iter().enumerate() {
        assert!(
            link.wait_acked(last, Duration::from_secs(60)),
            "agent {} acknowledged only up to {} of {last}:\nwriter:\n{}\nNATS:\n{}",
            AGENTS[i],
            link.spool.stats().acked,
            writer.log(),
            cluster.logs()
        );
        if i < 2 && !failed_over.contains_key(&i) {
            failed_over.insert(i, killed_at.unwrap().elapsed());
        }
    }
    for (i, took) in &failed_over {
        eprintln!("agent {} failed over in {took:?}", AGENTS[*i]);
        assert!(
            *took < Duration::from_secs(10),
            "agent {} took {took:?} to fail over",
            AGENTS[*i]
        );
    }
    // Every acknowledged event reaches the store, once.
    let total = last * AGENTS.len() as u64;
    let stored = stored_file_opens(&rt, &pki, &writer, total);
    exactly_once("the store", &stored, last);
    let verified = CollectorProc::verify(&writer.config, &[]);
    assert!(
        verified.status.success(),
        "verify: {}\n{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    // The writer's live subscriber saw each event once; the front end's, before it was
    // killed, saw every agent's events (those sent through the other collector too), once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (live_writer.lock().unwrap().len() as u64) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    exactly_once("the live subscriber", &live_writer.lock().unwrap(), last);
    let agents: BTreeSet<&str> = front_saw_before_kill
        .iter()
        .map(|(a, _)| a.as_str())
        .collect();
    assert_eq!(
        agents.len(),
        AGENTS.len(),
        "the front end's subscriber saw {agents:?}"
    );
    let once: BTreeSet<_> = front_saw_before_kill.iter().collect();
    assert_eq!(
        once.len(),
        front_saw_before_kill.len(),
        "the front end relayed an event twice"
    );
    drop(links);
}

/// The alerts of `kind` among `events`.
fn alerts_of(events: &[v1::Event], kind: v1::AlertKind) -> Vec<&v1::CollectorAlert> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Alert(a)) if a.kind == kind as i32 => Some(a),
            _ => None,
        })
        .collect()
}

fn instance_of(event: &v1::Event) -> &str {
    event.host.as_ref().map_or("", |h| h.instance_id.as_str())
}

/// The seqs of `instance` among `events` (agent events only), in order.
fn seqs_of(events: &[v1::Event], instance: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.seq > 0 && instance_of(e) == instance)
        .map(|e| e.seq)
        .collect()
}

#[test]
fn front_ends_refuse_out_of_window_batches_and_instance_floods_before_the_stream_and_a_failed_over_agent_is_accepted(
) {
    let pki = Pki::new(&["ehr-a"]);
    let cluster = NatsCluster::start(3);
    let WriterAndFront {
        writer,
        mut front,
        _work,
    } = WriterAndFront::start(&pki, &cluster, LEASE_60S, "");
    let rt = runtime();
    // The real agent, on the front end, with the writer's collector to fail over to.
    let link = AgentLink::start_with(&pki, "ehr-a", &front.addr, |c| {
        c.failover = vec![writer.addr.clone()];
        c.backoff_min = Duration::from_millis(100);
    });
    let real = link.instance();
    link.send("ehr-a", 1..=100);
    assert!(
        link.wait_acked(100, Duration::from_secs(30)),
        "{}",
        front.log()
    );
    let stolen = phiguard_collector::tls::client_config(&pki.agent("ehr-a")).unwrap();
    let ingest = |addr: &str, instance: &str, seq: u64| {
        rt.block_on(try_ingest_as(
            addr,
            stolen.clone(),
            instance,
            vec![event("ehr-a", seq)],
        ))
    };
    // A huge seq on the real agent's stream: refused by the front end.
    let refused = ingest(&front.addr, &real, 1 << 40).unwrap_err();
    assert!(refused.starts_with("OutOfRange"), "{refused}");
    // A new instance starts its own space where its first event is; its window holds at the
    // other front end too (the state is JetStream's, not the front end's).
    let ack = ingest(&front.addr, &uuid_like(1), 1 << 62).unwrap();
    assert_eq!(ack.acked_seq, 1 << 62);
    let refused = ingest(&writer.addr, &uuid_like(1), (1 << 62) + 20_000_000).unwrap_err();
    assert!(refused.starts_with("OutOfRange"), "{refused}");
    // New instances: the real one and the forged one count; two more are allowed within the
    // hour (default 4), across both front ends; the next is refused by either.
    ingest(&writer.addr, &uuid_like(2), 1).unwrap();
    ingest(&front.addr, &uuid_like(3), 1).unwrap();
    for addr in [&front.addr, &writer.addr] {
        let refused = ingest(addr, &uuid_like(4), 1).unwrap_err();
        assert!(
            refused.starts_with("ResourceExhausted"),
            "{addr}: {refused}"
        );
    }
    // The agent fails over to the other front end (its collector killed) and is accepted.
    front.kill9();
    link.send("ehr-a", 101..=200);
    assert!(
        link.wait_acked(200, Duration::from_secs(30)),
        "acknowledged up to {} after the failover:\n{}",
        link.spool.stats().acked,
        writer.log()
    );
    // The store: the real instance whole and once, the forged one's single event; nothing
    // refused was stored, and the writer refused nothing itself (the front ends did).
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = replay_all(&rt, &pki, &writer.addr, v1::EventFilter::default());
        if seqs_of(&events, &real).len() >= 200 || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(seqs_of(&events, &real), (1..=200).collect::<Vec<_>>());
    assert_eq!(seqs_of(&events, &uuid_like(1)), vec![1 << 62]);
    assert_eq!(seqs_of(&events, &uuid_like(2)), vec![1]);
    assert_eq!(seqs_of(&events, &uuid_like(3)), vec![1]);
    assert!(seqs_of(&events, &uuid_like(4)).is_empty());
    assert!(
        !writer.log().contains("refused by the store's rules"),
        "{}",
        writer.log()
    );
    // Each front end alerted its refusals (at most once a minute per agent each), and the
    // front end's alerts reached the writer's store through the stream.
    let seq_alerts = alerts_of(&events, v1::AlertKind::SequenceRefused);
    let instance_alerts = alerts_of(&events, v1::AlertKind::InstanceRefused);
    assert_eq!(seq_alerts.len(), 2, "{seq_alerts:?}");
    assert_eq!(instance_alerts.len(), 2, "{instance_alerts:?}");
    assert!(seq_alerts.iter().any(|a| a.received_seq == 1 << 40));
    // Nothing refused reached the stream; what was admitted did, and so did the front end's
    // alerts (the writer's own went straight to its store).
    let messages = stream_messages(&cluster.nodes[0].url, "PHIGUARD");
    let refused_in_stream: Vec<_> = messages
        .iter()
        .filter(|(_, e)| {
            e.seq == 1 << 40 || e.seq == (1 << 62) + 20_000_000 || instance_of(e) == uuid_like(4)
        })
        .collect();
    assert!(
        refused_in_stream.is_empty(),
        "refused batches in the stream: {refused_in_stream:?}"
    );
    assert!(messages.iter().any(|(_, e)| e.seq == 1 << 62));
    let front_alerts: Vec<_> = messages
        .iter()
        .filter(|(subject, e)| {
            subject == "phiguard.events.ehr-a.alert" && matches!(e.body, Some(Body::Alert(_)))
        })
        .collect();
    assert_eq!(front_alerts.len(), 2, "{front_alerts:?}");
    let verified = CollectorProc::verify(&writer.config, &[]);
    assert!(
        verified.status.success(),
        "verify: {}\n{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    drop(link);
}

#[test]
fn a_front_ends_subscription_audit_is_in_the_writers_store_and_liveness_follows_the_stream() {
    const TWO: [&str; 2] = ["fleet-a", "fleet-b"];
    let pki = Pki::new(&TWO);
    let cluster = NatsCluster::start(3);
    // Long enough for the writer to lag behind the stream on a loaded machine.
    let silent_after_ms = 3000;
    let liveness = format!("\n[liveness]\nsilent_after_ms = {silent_after_ms}\n");
    let WriterAndFront {
        writer,
        front,
        _work,
    } = WriterAndFront::start(&pki, &cluster, &format!("{LEASE_60S}{liveness}"), &liveness);
    let rt = runtime();
    let front_port = front.addr.rsplit(':').next().unwrap().to_owned();
    // A subscription to the front end, which does not write the store.
    let live = collect_live(&rt, subscribe_live(&rt, &pki, &front.addr, file_opens()));
    // fleet-a starts on the front end and moves to the writer's collector while the front
    // end keeps running; fleet-b sends to the writer's collector, then stops for good.
    let mut a = Some(AgentLink::start(&pki, "fleet-a", &front.addr));
    let b = AgentLink::start(&pki, "fleet-b", &writer.addr);
    let mut b = Some(b);
    let started = Instant::now();
    let mut seq = 0;
    while started.elapsed() < Duration::from_millis(4 * silent_after_ms + 2000) {
        seq += 1;
        if let Some(a) = &a {
            a.send("fleet-a", seq..=seq);
        }
        if let Some(b) = &b {
            b.send("fleet-b", seq..=seq);
        }
        if seq == 8 {
            let moved = a.take().unwrap();
            assert!(moved.wait_acked(7, Duration::from_secs(10)));
            a = Some(moved.restart(&pki, &writer.addr));
        }
        if seq == 12 {
            b = None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let a = a.unwrap();
    assert!(
        a.wait_acked(seq, Duration::from_secs(20)),
        "{}",
        writer.log()
    );
    // The front end's subscriber saw both agents (relayed from the stream), then leaves.
    let saw: BTreeSet<String> = live
        .lock()
        .unwrap()
        .iter()
        .map(|(a, _)| a.clone())
        .collect();
    assert_eq!(saw.len(), 2, "{saw:?}");
    drop(live);
    drop(rt);
    let rt = runtime();
    // The silence is judged at the writer from the stream: fleet-b (really silent) is
    // reported, fleet-a (failed over, sending) is not, by either collector.
    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts = loop {
        let events = replay_all(&rt, &pki, &writer.addr, v1::EventFilter::default());
        let silent: Vec<String> = events
            .iter()
            .filter(|e| {
                matches!(&e.body, Some(Body::Alert(a)) if a.kind == v1::AlertKind::AgentSilent as i32)
            })
            .map(|e| e.host.as_ref().map_or(String::new(), |h| h.agent_id.clone()))
            .collect();
        if !silent.is_empty() || Instant::now() > deadline {
            break silent;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(alerts, vec!["fleet-b".to_owned()], "{}", writer.log());
    assert!(
        !front.log().contains("ALERT_KIND_AGENT_SILENT"),
        "the front end judged liveness:\n{}",
        front.log()
    );
    // The front end's subscription was audited in the writer's store (opened, and closed
    // once its subscriber left), under the front end's name.
    let deadline = Instant::now() + Duration::from_secs(20);
    let front_audit = loop {
        let audit: Vec<v1::SubscriptionAudit> = replay_audit(&rt, &pki, &writer.addr)
            .into_iter()
            .filter(|s| s.collector.ends_with(&format!(":{front_port}")))
            .collect();
        let closed = audit
            .iter()
            .any(|s| s.phase == v1::SubscriptionPhase::Closed as i32);
        if closed || Instant::now() > deadline {
            break audit;
        }
        // The front end notices its subscriber left at its next event.
        a.send("fleet-a", seq + 1..=seq + 1);
        seq += 1;
        std::thread::sleep(Duration::from_millis(300));
    };
    let phases: Vec<i32> = front_audit.iter().map(|s| s.phase).collect();
    assert_eq!(
        phases,
        vec![
            v1::SubscriptionPhase::Opened as i32,
            v1::SubscriptionPhase::Closed as i32
        ],
        "{front_audit:?}\n{}",
        front.log()
    );
    assert!(front_audit[1].events_sent > 0);
    let verified = CollectorProc::verify(&writer.config, &[]);
    assert!(
        verified.status.success(),
        "verify: {}\n{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    drop(a);
}

#[test]
fn a_store_writer_stalled_by_a_full_disk_reports_no_agent_silent_that_kept_sending() {
    const TWO: [&str; 2] = ["fleet-a", "fleet-b"];
    let pki = Pki::new(&TWO);
    let cluster = NatsCluster::start(3);
    let silent_after_ms = 2000;
    let liveness = format!("\n[liveness]\nsilent_after_ms = {silent_after_ms}\n");
    let work = ["w", "f"].map(|name| {
        tempfile::Builder::new()
            .prefix(&format!("phiguard-fleet-{name}-"))
            .tempdir()
            .unwrap()
    });
    // The writer's store (and everything else of it) on a disk the test fills.
    let disk = Tmpfs::mount(work[0].path(), "64m");
    let start = |work: &Path, writer: bool, extra: &str| {
        CollectorProc::start_with_sections(
            work,
            &pki,
            "",
            "every_records = 500\nevery_secs = 1\n",
            &format!("{}{extra}", fleet_section(&cluster, writer)),
        )
    };
    let writer = start(work[0].path(), true, &format!("{LEASE_60S}{liveness}"));
    let front = start(work[1].path(), false, &liveness);
    assert!(writer.wait_log("store writer consuming JetStream", Duration::from_secs(30)));
    assert!(front.wait_log("live relay following JetStream", Duration::from_secs(30)));
    // Both agents send through the front end; fleet-b stops for good at its 8th event,
    // fleet-a sends every 250 ms throughout, while the writer's disk is full for 4 windows.
    let a = AgentLink::start(&pki, "fleet-a", &front.addr);
    let mut b = Some(AgentLink::start(&pki, "fleet-b", &front.addr));
    let mut filler = None;
    let mut seq = 0;
    let mut stalled_at = None;
    loop {
        seq += 1;
        a.send("fleet-a", seq..=seq);
        if let Some(b) = &b {
            b.send("fleet-b", seq..=seq);
        }
        if seq == 8 {
            assert!(b.take().unwrap().wait_acked(8, Duration::from_secs(10)));
        }
        if seq == 12 {
            filler = Some(disk.fill("filler").0);
            stalled_at = Some(Instant::now());
        }
        if stalled_at.is_some_and(|t| t.elapsed() > Duration::from_millis(4 * silent_after_ms)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        writer.log().contains("store not writable"),
        "the writer never stalled:\n{}",
        writer.log()
    );
    std::fs::remove_file(filler.unwrap()).unwrap();
    assert!(a.wait_acked(seq, Duration::from_secs(20)));
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (stored_a, silent) = loop {
        let events = replay_all(&rt, &pki, &writer.addr, v1::EventFilter::default());
        let stored_a = events
            .iter()
            .filter(|e| e.seq > 0 && e.host.as_ref().is_some_and(|h| h.agent_id == "fleet-a"))
            .count() as u64;
        let silent: Vec<String> = events
            .iter()
            .filter(|e| {
                matches!(&e.body, Some(Body::Alert(a)) if a.kind == v1::AlertKind::AgentSilent as i32)
            })
            .map(|e| e.host.as_ref().map_or(String::new(), |h| h.agent_id.clone()))
            .collect();
        if (stored_a >= seq && !silent.is_empty()) || Instant::now() > deadline {
            break (stored_a, silent);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(stored_a, seq, "{}", writer.log());
    // The really silent agent is reported once the writer has caught up; the one that kept
    // sending while the writer could not store is not — neither in the store nor in the log
    // (an alert raised while the disk was full is logged, its storing fails).
    assert_eq!(silent, vec!["fleet-b".to_owned()], "{}", writer.log());
    let log = writer.log();
    let false_alarms: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ALERT_KIND_AGENT_SILENT") && l.contains("fleet-a"))
        .collect();
    assert!(false_alarms.is_empty(), "{false_alarms:#?}");
    drop(a);
    drop((writer, front));
    drop(disk);
}

#[test]
fn nats_over_tls_with_a_client_certificate_carries_the_fleet_a_wrong_ca_is_refused_clearly_and_no_credential_is_logged(
) {
    let pki = Pki::new(&["ehr-a"]);
    // NATS has a PKI of its own: its CA, the nodes' certificate (localhost, 127.0.0.1) and
    // the collectors' client certificate.
    let nats_pki = Pki::new(&["collector-nats"]);
    let cluster = NatsCluster::start_tls(
        3,
        &NatsTls {
            ca: nats_pki.path("ca.pem"),
            cert: nats_pki.path("collector.pem"),
            key: nats_pki.path("collector.key"),
        },
    );
    let client = nats_pki.agent("collector-nats");
    let work = tempfile::Builder::new()
        .prefix("phiguard-fleet-tls-")
        .tempdir()
        .unwrap();
    // A credentials file as NATS' tools write it: a user JWT and its nkey seed. (These
    // nodes run without an operator, so they do not check the JWT; the collector reads the
    // file, signs the server's nonce with the seed and must never log either.)
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJwaGlndWFyZCI6InRlc3QifQ.c2lnbmF0dXJlLW5vdC1jaGVja2Vk";
    let creds = work.path().join("collector.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    let section = |ca: &std::path::Path, with_cert: bool| {
        let cert = if with_cert {
            format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                client.cert.display(),
                client.key.display()
            )
        } else {
            String::new()
        };
        format!(
            "{}writer_lease_secs = 60\nca = \"{}\"\n{cert}credentials = \"{}\"\n",
            fleet_section(&cluster, true),
            ca.display(),
            creds.display()
        )
    };
    let writer = CollectorProc::start_with_sections(
        work.path(),
        &pki,
        "",
        "every_records = 500\nevery_secs = 1\n",
        &section(&nats_pki.path("ca.pem"), true),
    );
    assert!(
        writer.wait_log("store writer consuming JetStream", Duration::from_secs(30)),
        "{}",
        writer.log()
    );
    // Published over TLS by the front end, consumed over TLS by the writer, stored once.
    let link = AgentLink::start(&pki, "ehr-a", &writer.addr);
    link.send("ehr-a", 1..=300);
    assert!(
        link.wait_acked(300, Duration::from_secs(30)),
        "{}",
        writer.log()
    );
    let rt = runtime();
    let stored = stored_file_opens(&rt, &pki, &writer, 300);
    exactly_once_of("the store over TLS", &["ehr-a"], &stored, 300);
    let verified = CollectorProc::verify(&writer.config, &[]);
    assert!(
        verified.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
    // A collector trusting another CA (the agents') does not start, and says why; nor does
    // one without a client certificate (the nodes require one).
    let refused = |ca: &std::path::Path, with_cert: bool| {
        let (work, config) = config_in(
            &pki,
            "phiguard-fleet-tls-refused-",
            "",
            &section(ca, with_cert),
        );
        let (mut collector, _) = CollectorProc::start_pending(config, work.path().join("store"));
        let status = exit_within(
            &mut collector,
            Duration::from_secs(30),
            "a collector NATS should refuse",
        );
        assert!(!status.success(), "{}", collector.log());
        let said = collector.log();
        assert!(
            said.contains("refused the connection (TLS or credentials)"),
            "{said}"
        );
        said
    };
    let wrong_ca = refused(&pki.path("ca.pem"), true);
    // Both development CAs bear the same name: the other CA's signature does not verify.
    assert!(wrong_ca.contains("invalid peer certificate"), "{wrong_ca}");
    let no_cert = refused(&nats_pki.path("ca.pem"), false);
    eprintln!("wrong CA: {wrong_ca}\nno client certificate: {no_cert}");
    // No credential in any log: not the seed, not the JWT, not the client key.
    let key_pem = std::fs::read_to_string(&client.key).unwrap();
    let key_body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!key_body.is_empty());
    for (name, log) in [
        ("writer", writer.log()),
        ("wrong CA", wrong_ca),
        ("no client certificate", no_cert),
    ] {
        assert!(!log.contains(seed.as_str()), "{name} logged the nkey seed");
        assert!(!log.contains(jwt), "{name} logged the JWT");
        for line in &key_body {
            assert!(!log.contains(line), "{name} logged the client key");
        }
    }
    drop(link);
}

#[test]
fn a_front_end_refuses_replay_naming_the_store_writer_which_serves_it() {
    let pki = Pki::new(&AGENTS[..1]);
    let cluster = NatsCluster::start(3);
    let WriterAndFront {
        writer,
        front,
        _work,
    } = WriterAndFront::start(&pki, &cluster, "", "");
    let link = AgentLink::start(&pki, AGENTS[0], &front.addr);
    link.send(AGENTS[0], 1..=50);
    assert!(
        link.wait_acked(50, Duration::from_secs(30)),
        "{}",
        front.log()
    );
    let rt = runtime();
    let stored = stored_file_opens(&rt, &pki, &writer, 50);
    exactly_once_of("the writer's replay", &AGENTS[..1], &stored, 50);
    let refused = replay_with(&rt, &pki.subscriber(), &front.addr, file_opens())
        .expect_err("a front end replayed without a store");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    // HOST:PORT/PID/ID, PORT as configured (0 here: the first start picks a free one).
    let named = format!(":0/{}/", writer.pid().unwrap());
    assert!(
        refused
            .message()
            .contains("ask the store writer's collector")
            && refused.message().contains(&named),
        "the refusal does not name the writer ({named}): {}",
        refused.message()
    );
    assert!(
        front.wait_log("subscription refused", Duration::from_secs(5)),
        "{}",
        front.log()
    );
    // Live subscriptions stay served by every collector.
    let live = collect_live(&rt, subscribe_live(&rt, &pki, &front.addr, file_opens()));
    link.send(AGENTS[0], 51..=60);
    let deadline = Instant::now() + Duration::from_secs(20);
    while live.lock().unwrap().len() < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seqs: Vec<u64> = live.lock().unwrap().iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs, (51..=60).collect::<Vec<_>>());
    drop(link);
}

/// `ehr-a`'s event `seq` of instance `instance`, stamped as a front end stamps it; an exec
/// when `exec`, else a file open.
fn stamped(instance: &str, seq: u64, exec: bool) -> v1::Event {
    let mut e = event("ehr-a", seq);
    let host = e.host.as_mut().unwrap();
    host.agent_id = "ehr-a".into();
    host.instance_id = instance.into();
    if exec {
        e.body = Some(Body::Exec(v1::ProcessExec::default()));
    }
    e
}

#[test]
fn runs_are_one_message_each_a_resend_cut_into_other_runs_and_messages_of_the_format_before_runs_are_stored_and_relayed_once(
) {
    use prost::Message as _;
    let pki = Pki::new(&["ehr-a"]);
    let cluster = NatsCluster::start(3);
    let WriterAndFront {
        writer,
        front,
        _work,
    } = WriterAndFront::start(&pki, &cluster, LEASE_60S, "");
    let rt = runtime();
    let live_front = collect_live(&rt, subscribe_live(&rt, &pki, &front.addr, file_opens()));
    let instance = uuid_like(7);
    // A collector from before runs (a rolling upgrade): one event per message, no format
    // header, message id AGENT/INSTANCE/SEQ — seqs 1..=50.
    rt.block_on(async {
        let client = async_nats::connect(&cluster.nodes[0].url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        for seq in 1..=50 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("ehr-a/{instance}/{seq}").as_str());
            js.publish_with_headers(
                "phiguard.events.ehr-a.fileOpen",
                headers,
                stamped(&instance, seq, false).encode_to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    });
    let agent = phiguard_collector::tls::client_config(&pki.agent("ehr-a")).unwrap();
    let ingest = |addr: &str, seqs: std::ops::RangeInclusive<u64>, exec: &[u64]| {
        let batch = seqs
            .map(|seq| {
                let mut e = event("ehr-a", seq);
                if exec.contains(&seq) {
                    e.body = Some(Body::Exec(v1::ProcessExec::default()));
                }
                e
            })
            .collect();
        rt.block_on(try_ingest_as(addr, agent.clone(), &instance, batch))
            .unwrap()
    };
    // 51..=100 through the front end; then, as after a failover, a resend of 41..=100 with
    // 101..=120, cut differently (one run 41..=120), through the writer's collector: its
    // message id differs, so JetStream takes it, and the store and the relay must recognise
    // 41..=100. Then 121..=150 with execs in the middle: three runs.
    let ack = ingest(&front.addr, 51..=100, &[]);
    assert_eq!((ack.acked_seq, ack.stored, ack.duplicates), (100, 50, 0));
    let ack = ingest(&writer.addr, 41..=120, &[]);
    assert_eq!(ack.acked_seq, 120);
    let execs: Vec<u64> = (131..=140).collect();
    let ack = ingest(&front.addr, 121..=150, &execs);
    assert_eq!(ack.acked_seq, 150);
    // The same run resent through the other collector: JetStream recognises its message id.
    let ack = ingest(&writer.addr, 51..=100, &[]);
    assert_eq!((ack.acked_seq, ack.stored, ack.duplicates), (100, 0, 50));

    // The stream: one message per run, on the subject of its kind.
    let runs: Vec<(String, Vec<u64>)> = stream_runs(&cluster.nodes[0].url, "PHIGUARD")
        .into_iter()
        .filter(|(_, events)| events.iter().all(|e| instance_of(e) == instance))
        .map(|(subject, events)| (subject, events.iter().map(|e| e.seq).collect()))
        .collect();
    let file = "phiguard.events.ehr-a.fileOpen".to_owned();
    let mut expected: Vec<(String, Vec<u64>)> = (1..=50).map(|s| (file.clone(), vec![s])).collect();
    expected.extend([
        (file.clone(), (51..=100).collect()),
        (file.clone(), (41..=120).collect()),
        (file.clone(), (121..=130).collect()),
        ("phiguard.events.ehr-a.exec".to_owned(), execs.clone()),
        (file.clone(), (141..=150).collect()),
    ]);
    assert_eq!(runs, expected);

    // The store: 1..=150 once each, in order, whatever the messages' format and cut.
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = replay_all(&rt, &pki, &writer.addr, v1::EventFilter::default());
        if seqs_of(&events, &instance).len() >= 150 || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(seqs_of(&events, &instance), (1..=150).collect::<Vec<_>>());
    let execs_stored: Vec<u64> = events
        .iter()
        .filter(|e| instance_of(e) == instance && matches!(e.body, Some(Body::Exec(_))))
        .map(|e| e.seq)
        .collect();
    assert_eq!(execs_stored, execs);
    assert!(
        !writer.log().contains("cannot be stored"),
        "{}",
        writer.log()
    );
    // The front end's live subscriber (the relay) saw every file open once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_front.lock().unwrap().len() < 140 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let seen: Vec<u64> = live_front.lock().unwrap().iter().map(|(_, s)| *s).collect();
    let want: Vec<u64> = (1..=150).filter(|s| !execs.contains(s)).collect();
    assert_eq!(seen, want, "the front end's live subscriber");
    let verified = CollectorProc::verify(&writer.config, &[]);
    assert!(
        verified.status.success(),
        "verify: {}\n{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}
