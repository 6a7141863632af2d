//! SIEM export (`[export.NAME]`, OCSF): the real `phiguard-collector` on loopback with real
//! mutual TLS, agents publishing from their own spools.
//!
//! - A file export killed (SIGKILL) in the middle and restarted loses no stored record; the
//!   records sent twice are counted and stay within one chunk per chain, as at-least-once
//!   allows; every record validates against the OCSF 1.8.0 schema.
//! - A syslog export to a private, real rsyslogd over TLS (RFC 5425): rsyslog down does not
//!   hold up ingest, the failures are counted, and the export catches up when it is back.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use phiguard_tests::{
    e2e::{AgentLink, CollectorProc, Pki},
    tmpfs::Tmpfs,
};

fn work() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("phiguard-siem-")
        .tempdir()
        .unwrap()
}

/// The chunk an export sends between two position writes (collector/src/export.rs).
const CHUNK: usize = 512;

/// (chain, index) of every OCSF line in `lines`, in order.
fn keys(lines: &str) -> Vec<(String, u64)> {
    lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let start = line
                .find('{')
                .unwrap_or_else(|| panic!("no JSON in {line}"));
            let v: serde_json::Value =
                serde_json::from_str(&line[start..]).unwrap_or_else(|e| panic!("{e}: {line}"));
            let p = &v["unmapped"]["phiguard"];
            (
                p["agent"].as_str().unwrap().to_owned(),
                p["index"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Every index of each chain delivered at least once (1..=max, no hole), and how many
/// were delivered more than once.
fn check_complete(keys: &[(String, u64)]) -> (BTreeMap<String, u64>, usize) {
    let mut seen: BTreeMap<String, BTreeMap<u64, usize>> = BTreeMap::new();
    for (agent, index) in keys {
        *seen
            .entry(agent.clone())
            .or_default()
            .entry(*index)
            .or_default() += 1;
    }
    let mut heads = BTreeMap::new();
    let mut duplicates = 0;
    for (agent, indexes) in seen {
        let max = *indexes.keys().last().unwrap();
        for i in 1..=max {
            assert!(indexes.contains_key(&i), "{agent}: index {i} missing");
        }
        duplicates += indexes.values().map(|n| n - 1).sum::<usize>();
        heads.insert(agent, max);
    }
    (heads, duplicates)
}

fn export_files(dir: &Path, name: &str) -> String {
    let mut rotated: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let file = path.file_name()?.to_str()?.to_owned();
            let n = file.strip_prefix(&format!("{name}."))?.parse().ok()?;
            Some((n, path))
        })
        .collect();
    // Oldest first: the highest number.
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut text = String::new();
    for (_, path) in rotated {
        text.push_str(&fs::read_to_string(path).unwrap());
    }
    text.push_str(&fs::read_to_string(dir.join(name)).unwrap_or_default());
    text
}

fn sample(text: &str, name: &str) -> f64 {
    CollectorProc::sample(text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Waits until export `export` delivered at least `delivered` records (in this run of the
/// collector) and has nothing left (the lag gauges are those of its last step).
fn wait_caught_up(collector: &CollectorProc, export: &str, delivered: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = collector.scrape();
        let lag = CollectorProc::sample(
            &text,
            &format!("phiguard_collector_export_lag_events{{export=\"{export}\"}}"),
        );
        let sent = CollectorProc::sample(
            &text,
            &format!("phiguard_collector_export_delivered_total{{export=\"{export}\"}}"),
        )
        .unwrap_or(0.0);
        if lag == Some(0.0) && sent >= delivered as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "export {export} still behind ({lag:?}):\n{}",
            collector.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs tests/ocsf/validate.py on `file`: Ok, or its complaints.
fn validate(file: &Path) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ocsf/validate.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(file)
        .output()
        .expect("python3 runs (the OCSF validator)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn a_file_export_killed_mid_export_resumes_without_loss_and_validates_as_ocsf() {
    let work = work();
    let pki = Pki::new(&["ehr-a", "ehr-b"]);
    let out = work.path().join("siem");
    fs::create_dir(&out).unwrap();
    let mut collector = CollectorProc::start_with_sections(
        work.path(),
        &pki,
        "segment_max_bytes = 65536\n",
        "every_records = 500\nevery_secs = 1\n",
        &format!(
            // A port of its own: the harness rewrites `127.0.0.1:0` to the server's address
            // for the restart.
            "[metrics]\nlisten = \"127.0.0.1:{}\"\n\
             [export.siem]\ntarget = \"file\"\npath = \"{}\"\nmax_bytes = 262144\nkeep = 1000\n",
            free_port(),
            out.join("ocsf.jsonl").display()
        ),
    );
    let a = AgentLink::start(&pki, "ehr-a", &collector.addr);
    let b = AgentLink::start(&pki, "ehr-b", &collector.addr);
    a.send("ehr-a", 1..=4000);
    b.send("ehr-b", 1..=4000);
    // Kill it while the export is under way: some lines out, not all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while export_files(&out, "ocsf.jsonl").lines().count() < 2000 {
        assert!(Instant::now() < deadline, "no export:\n{}", collector.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    collector.kill9();
    let before = export_files(&out, "ocsf.jsonl").lines().count();
    collector.restart();
    assert!(a.wait_acked(4000, Duration::from_secs(60)));
    assert!(b.wait_acked(4000, Duration::from_secs(60)));
    wait_caught_up(
        &collector,
        "siem",
        8000 - before as u64,
        Duration::from_secs(60),
    );
    let metrics = collector.scrape();
    assert_eq!(
        sample(
            &metrics,
            "phiguard_collector_export_failures_total{export=\"siem\"}"
        ),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "phiguard_collector_export_lag_seconds{export=\"siem\"}"
        ),
        0.0
    );
    let text = export_files(&out, "ocsf.jsonl");
    let keys = keys(&text);
    let (heads, duplicates) = check_complete(&keys);
    assert!(
        heads["ehr-a"] >= 4000 && heads["ehr-b"] >= 4000,
        "{heads:?}"
    );
    // At-least-once: only what was written but not yet marked (one chunk per chain) again.
    eprintln!(
        "{} lines ({before} before the kill), {duplicates} sent twice",
        keys.len()
    );
    assert!(duplicates <= CHUNK * heads.len(), "{duplicates} duplicates");
    // Rotation happened, and every seq of both agents is there.
    assert!(out.join("ocsf.jsonl.1").exists());
    for agent in ["ehr-a", "ehr-b"] {
        let seqs: std::collections::BTreeSet<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["unmapped"]["phiguard"]["agent"] == agent)
            .filter_map(|v| {
                v["unmapped"]["phiguard"]["event"]["seq"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
            })
            .collect();
        assert!(
            (1..=4000).all(|s| seqs.contains(&s)),
            "{agent}: seqs missing"
        );
    }
    // Every record is valid OCSF 1.8.0.
    let all = work.path().join("all.jsonl");
    fs::write(&all, &text).unwrap();
    validate(&all).unwrap_or_else(|e| panic!("invalid OCSF:\n{e}"));
    collector.stop();
    // The export's positions file in the store directory is no chain: the store verifies.
    assert!(collector.store.join("export-siem.position").exists());
    let verify = CollectorProc::verify(&collector.config, &[]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn the_validator_refuses_records_that_are_not_ocsf() {
    let work = work();
    let good = r#"{"category_uid":1,"class_uid":1001,"activity_id":14,"type_uid":100114,"time":1,"severity_id":1,"metadata":{"version":"1.8.0","product":{"name":"phiguard","vendor_name":"phiguard"}},"actor":{"process":{"pid":1}},"file":{"path":"/x","name":"x","type_id":1},"device":{"type_id":1,"hostname":"h"}}"#;
    let file = work.path().join("good.jsonl");
    fs::write(&file, format!("{good}\n")).unwrap();
    validate(&file).unwrap_or_else(|e| panic!("a valid record refused:\n{e}"));
    for (bad, why) in [
        (
            good.replace(
                ",\"file\":{\"path\":\"/x\",\"name\":\"x\",\"type_id\":1}",
                "",
            ),
            "required file missing",
        ),
        (
            good.replace("\"activity_id\":14", "\"activity_id\":77"),
            "activity_id not in the enum",
        ),
        (
            good.replace("\"pid\":1", "\"pid\":\"one\""),
            "pid not an integer",
        ),
        (
            good.replace("\"time\":1", "\"time\":1,\"colour\":2"),
            "unknown attribute",
        ),
        (
            good.replace("100114", "100115"),
            "type_uid not class*100+activity",
        ),
        (
            good.replace(
                "\"time\":1",
                "\"time\":1,\"enrichments\":[{\"name\":\"actor.invoked_by\",\"value\":\"x\"}]",
            ),
            "an enrichment without its required data",
        ),
    ] {
        fs::write(&file, format!("{bad}\n")).unwrap();
        assert!(validate(&file).is_err(), "accepted with {why}: {bad}");
    }
}

/// A private rsyslogd: its own configuration, port, pid file and work directory in `dir`;
/// TLS (gtls) with the collector PKI's `localhost` certificate; every message's MSG part
/// written to `dir/out.log`. Killed when dropped.
struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
}

impl Rsyslog {
    fn start(dir: &Path, pki: &Pki, port: u16) -> Rsyslog {
        fs::create_dir_all(dir.join("work")).unwrap();
        let conf = dir.join("rsyslog.conf");
        fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{work}\" maxMessageSize=\"256k\"\n\
                 defaultNetstreamDriver=\"gtls\"\n\
                 defaultNetstreamDriverCAFile=\"{ca}\"\n\
                 defaultNetstreamDriverCertFile=\"{cert}\"\n\
                 defaultNetstreamDriverKeyFile=\"{key}\")\n\
                 module(load=\"imtcp\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"x509/certvalid\")\n\
                 input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
                 template(name=\"msgonly\" type=\"string\" string=\"%msg%\\n\")\n\
                 action(type=\"omfile\" file=\"{out}\" template=\"msgonly\")\n",
                work = dir.join("work").display(),
                ca = pki.path("ca.pem").display(),
                cert = pki.path("collector.pem").display(),
                key = pki.path("collector.key").display(),
                out = dir.join("out.log").display(),
            ),
        )
        .unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("rsyslogd.stderr")).unwrap())
            .spawn()
            .expect("rsyslogd runs (apt-get install rsyslog rsyslog-gnutls)");
        let r = Rsyslog {
            child: Some(child),
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd does not listen: {}",
                fs::read_to_string(dir.join("rsyslogd.stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// The complete lines rsyslog has written so far (it may be in the middle of the last).
    fn received(&self) -> String {
        let mut text = fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
        text.truncate(text.rfind('\n').map_or(0, |end| end + 1));
        text
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_indexes(
    rsyslog: &Rsyslog,
    agent: &str,
    head: u64,
    timeout: Duration,
) -> Vec<(String, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let keys = keys(&rsyslog.received());
        let max = keys
            .iter()
            .filter(|(a, _)| a == agent)
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(0);
        if max >= head {
            return keys;
        }
        assert!(
            Instant::now() < deadline,
            "rsyslog has {agent} up to {max} of {head}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_syslog_export_to_rsyslog_over_tls_survives_rsyslog_down_without_blocking_ingest() {
    let work = work();
    let pki = Pki::new(&["ehr-a"]);
    let port = free_port();
    let mut rsyslog = Rsyslog::start(&work.path().join("rsyslog"), &pki, port);
    let soc = pki.subscriber();
    let mut collector = CollectorProc::start_with_sections(
        work.path(),
        &pki,
        "segment_max_bytes = 65536\n",
        "every_records = 500\nevery_secs = 1\n",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [export.soc]\ntarget = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\n\
             ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            soc.ca.display(),
            soc.cert.display(),
            soc.key.display()
        ),
    );
    let a = AgentLink::start(&pki, "ehr-a", &collector.addr);
    a.send("ehr-a", 1..=300);
    assert!(a.wait_acked(300, Duration::from_secs(30)));
    wait_indexes(&rsyslog, "ehr-a", 300, Duration::from_secs(30));
    // rsyslog goes away: ingest goes on, the export counts failures.
    rsyslog.stop();
    a.send("ehr-a", 301..=1300);
    assert!(
        a.wait_acked(1300, Duration::from_secs(30)),
        "ingest held up by a down syslog target"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = collector.scrape();
        let failures = sample(
            &m,
            "phiguard_collector_export_failures_total{export=\"soc\"}",
        );
        let lag = sample(&m, "phiguard_collector_export_lag_events{export=\"soc\"}");
        let seconds = sample(&m, "phiguard_collector_export_lag_seconds{export=\"soc\"}");
        if failures > 0.0 && lag > 0.0 && seconds >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no failure or lag counted:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back: it catches up.
    let rsyslog = Rsyslog::start(&work.path().join("rsyslog"), &pki, port);
    let keys = wait_indexes(&rsyslog, "ehr-a", 1300, Duration::from_secs(60));
    let (heads, duplicates) = check_complete(&keys);
    eprintln!(
        "rsyslog received {} messages, {duplicates} twice",
        keys.len()
    );
    assert!(heads["ehr-a"] >= 1300);
    wait_caught_up(&collector, "soc", 1300, Duration::from_secs(30));
    let received = rsyslog.received();
    let first = received.lines().next().unwrap();
    let v: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(v["metadata"]["version"], "1.8.0");
    assert_eq!(v["class_uid"], 1001);
    collector.stop();
    drop(rsyslog);
}

/// One event of every kind, with the fields the mapping reads filled in.
fn every_kind() -> Vec<phiguard_proto::v1::Event> {
    use phiguard_proto::v1::{self, event::Body};
    let user = |id, name: &str| {
        Some(v1::User {
            id: Some(id),
            name: name.into(),
        })
    };
    let session = v1::DbSession {
        socket_id: 9,
        protocol: "postgres".into(),
        role: "server".into(),
        transport: "tcp".into(),
        local_port: 5432,
        remote_port: 40000,
        db_user: "clinician".into(),
        database: "ehr".into(),
        local_address: "127.0.0.1".into(),
        remote_address: "10.0.0.7".into(),
        ..Default::default()
    };
    let deny = Some(v1::Decision {
        verdict: v1::Verdict::Deny as i32,
        policy: "ephi".into(),
        rule: "records".into(),
        generation: 3,
        ..Default::default()
    });
    let would = Some(v1::Decision {
        verdict: v1::Verdict::WouldDeny as i32,
        policy: "ephi".into(),
        ..Default::default()
    });
    let open = |syscall: &str, created| {
        Body::FileOpen(v1::FileOpen {
            path: "/srv/ephi/a.txt".into(),
            syscall: syscall.into(),
            result: Some(3),
            device: 2049,
            inode: 42,
            created,
            ..Default::default()
        })
    };
    let mut bodies: Vec<(Body, Option<v1::Decision>)> = vec![
        (open("openat", false), None),
        (open("openat", false), deny.clone()),
        (open("openat", true), would.clone()),
        (open("unlink", false), deny.clone()),
        (open("rename", false), deny.clone()),
        (open("chmod", false), would.clone()),
        (open("truncate", false), deny.clone()),
        (open("link", false), deny.clone()),
        // A descriptor handed over on a unix socket: the sender is the other end.
        (
            Body::FileOpen(v1::FileOpen {
                path: "/srv/ephi/a.txt".into(),
                syscall: "pidfd_getfd or SCM_RIGHTS (a descriptor received)".into(),
                result: Some(0),
                device: 2049,
                inode: 42,
                sender: Some(v1::Process {
                    pid: 4242,
                    exe: "/opt/ehr/bin/ehr-server".into(),
                    binary_sha256: "ab".repeat(32),
                    user: user(998, "ehr"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Some(v1::Decision {
                verdict: v1::Verdict::Allow as i32,
                policy: "ephi".into(),
                ..Default::default()
            }),
        ),
        (
            Body::FileOpen(v1::FileOpen {
                path: "/srv/ephi/b".into(),
                syscall: "openat".into(),
                error: "EACCES".into(),
                ..Default::default()
            }),
            None,
        ),
        (
            Body::Exec(v1::ProcessExec {
                filename: "/usr/bin/cat".into(),
                old_pid: 0,
            }),
            deny.clone(),
        ),
        (
            Body::Fork(v1::ProcessFork {
                child_pid: 101,
                ..Default::default()
            }),
            None,
        ),
        (
            Body::Exit(v1::ProcessExit {
                exit_code: Some(1),
                ..Default::default()
            }),
            None,
        ),
        (
            Body::Connect(v1::NetConnect {
                family: "inet".into(),
                address: "10.0.0.9".into(),
                port: 443,
                protocol: "TCP".into(),
            }),
            deny.clone(),
        ),
        (
            Body::Connect(v1::NetConnect {
                family: "unix".into(),
                address: "/run/x.sock".into(),
                port: 0,
                protocol: "stream".into(),
            }),
            None,
        ),
    ];
    for state in ["ESTABLISHED", "CLOSE", "LISTEN", "SYN_SENT"] {
        bodies.push((
            Body::TcpState(v1::TcpState {
                direction: v1::Direction::Inbound as i32,
                local_address: "127.0.0.1".into(),
                local_port: 5432,
                remote_address: "::1".into(),
                remote_port: 50000,
                old_state: "SYN_RECV".into(),
                new_state: state.into(),
                socket_id: 7,
            }),
            None,
        ));
    }
    bodies.extend([
        (
            Body::DbSessionStart(v1::DbSessionStart {
                session: Some(session.clone()),
                application: "psql".into(),
                encrypted: true,
                encryption: "TLSv1.3".into(),
            }),
            None,
        ),
        (
            Body::DbSessionStart(v1::DbSessionStart {
                session: Some(v1::DbSession {
                    connect_decision: deny.clone(),
                    ..session.clone()
                }),
                ..Default::default()
            }),
            None,
        ),
        (
            Body::DbStatement(v1::DbStatement {
                session: Some(session.clone()),
                text: "SELECT * FROM patients".into(),
                kind: "SELECT".into(),
                tables: vec!["patients".into()],
                rows: Some(3),
                ok: true,
                duration_us: 1500,
                ..Default::default()
            }),
            None,
        ),
        (
            Body::DbStatement(v1::DbStatement {
                session: Some(session.clone()),
                text: "DELETE FROM patients".into(),
                kind: "DELETE".into(),
                sqlstate: "42501".into(),
                ok: false,
                ..Default::default()
            }),
            would.clone(),
        ),
        (
            Body::DbLogin(v1::DbLogin {
                session: Some(session.clone()),
                user: "mallory".into(),
                database: "ehr".into(),
                method: "scram-sha-256".into(),
                sqlstate: "28P01".into(),
                ..Default::default()
            }),
            None,
        ),
        (
            Body::DbLogin(v1::DbLogin {
                session: Some(session.clone()),
                user: "clerk".into(),
                method: "mysql_native_password".into(),
                ok: true,
                change_user: true,
                ..Default::default()
            }),
            None,
        ),
        (
            Body::DbSessionEnd(v1::DbSessionEnd {
                session: Some(session),
                statements: 2,
                duration_us: 9000,
                reason: "client closed".into(),
                ..Default::default()
            }),
            None,
        ),
        (
            Body::EventsLost(v1::EventsLost {
                source: v1::LossSource::KernelRingBuffer as i32,
                kind: "fileOpen".into(),
                count: 5,
                total: 9,
            }),
            None,
        ),
        (
            Body::PolicyLoad(v1::PolicyLoad {
                ok: true,
                generation: 3,
                ..Default::default()
            }),
            None,
        ),
        (
            Body::PolicyLoad(v1::PolicyLoad {
                ok: false,
                error: "bad".into(),
                ..Default::default()
            }),
            None,
        ),
        (
            Body::Alert(v1::CollectorAlert {
                kind: v1::AlertKind::SequenceGap as i32,
                message: "gap".into(),
                ..Default::default()
            }),
            None,
        ),
        (Body::Heartbeat(v1::Heartbeat::default()), None),
        (
            Body::Tamper(v1::Tamper {
                kind: v1::TamperKind::ProgramDetached as i32,
                object: "file_open".into(),
                detail: "detached".into(),
                ..Default::default()
            }),
            None,
        ),
        (
            Body::Subscription(v1::SubscriptionAudit {
                subscriber: "soc".into(),
                ..Default::default()
            }),
            None,
        ),
        (
            Body::BreakGlass(v1::BreakGlass {
                action: v1::BreakGlassAction::Granted as i32,
                grant_id: "g1".into(),
                reason: "ER".into(),
                user: user(1000, "alice"),
                ..Default::default()
            }),
            None,
        ),
    ]);
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (body, decision))| v1::Event {
            id: format!("e{i}"),
            seq: i as u64 + 1,
            time: Some(phiguard_proto::pbjson_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            host: Some(v1::Host {
                hostname: "ehr-a".into(),
                machine_id: "0123456789abcdef0123456789abcdef".into(),
                agent_id: "ehr-a".into(),
                ..Default::default()
            }),
            process: Some(v1::Process {
                pid: 100,
                tid: 100,
                ppid: 1,
                comm: "cat".into(),
                exe: "/usr/bin/cat".into(),
                argv: vec!["cat".into(), "/srv/ephi/a.txt".into()],
                cwd: "/root".into(),
                user: user(1000, "alice"),
                group: Some(v1::Group {
                    id: Some(1000),
                    name: "alice".into(),
                }),
                login_user: user(1000, "alice"),
                start_time: Some(phiguard_proto::pbjson_types::Timestamp {
                    seconds: 1_699_999_999,
                    nanos: 0,
                }),
                binary_sha256: "ab".repeat(32),
                container_id: "c0ffee".into(),
                ..Default::default()
            }),
            ancestry: vec![v1::Ancestor {
                pid: 1,
                exe: "/sbin/init".into(),
                comm: "init".into(),
            }],
            body: Some(body),
            decision,
        })
        .collect()
}

#[test]
fn every_event_kind_maps_to_valid_ocsf() {
    let work = work();
    let file = work.path().join("kinds.jsonl");
    let events = every_kind();
    let mut kinds = std::collections::BTreeSet::new();
    let mut text = String::new();
    for (i, event) in events.into_iter().enumerate() {
        kinds.insert(phiguard_collector::stream::kind_name(&event));
        let record = phiguard_collector::store::Record {
            agent: "ehr-a".into(),
            index: i as u64 + 1,
            event,
            received: 1_700_000_001,
        };
        text.push_str(&phiguard_collector::ocsf::record(&record).to_string());
        text.push('\n');
    }
    let missing: Vec<_> = phiguard_collector::stream::KINDS
        .iter()
        .filter(|k| !kinds.contains(*k))
        .collect();
    assert!(missing.is_empty(), "kinds not covered: {missing:?}");
    // The received descriptor's sender is mapped, not only kept under `unmapped`.
    assert!(
        text.contains(r#""invoked_by":"/opt/ehr/bin/ehr-server (pid 4242)""#),
        "the sender is actor.invoked_by"
    );
    assert!(
        text.contains(r#""name":"actor.invoked_by""#),
        "the sender is enriched"
    );
    fs::write(&file, &text).unwrap();
    validate(&file).unwrap_or_else(|e| panic!("invalid OCSF:\n{e}"));
}

#[test]
fn a_collector_whose_syslog_target_is_unreachable_still_stops_at_once() {
    let work = work();
    let pki = Pki::new(&["ehr-a"]);
    let soc = pki.subscriber();
    // Nobody listens there.
    let port = free_port();
    let mut collector = CollectorProc::start_with_sections(
        work.path(),
        &pki,
        "",
        "",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{}\"\n\
             [export.soc]\ntarget = \"syslog\"\naddress = \"127.0.0.1:{port}\"\n\
             ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            free_port(),
            soc.ca.display(),
            soc.cert.display(),
            soc.key.display()
        ),
    );
    let a = AgentLink::start(&pki, "ehr-a", &collector.addr);
    a.send("ehr-a", 1..=50);
    assert!(
        a.wait_acked(50, Duration::from_secs(30)),
        "ingest held up by an unreachable syslog target"
    );
    // Six failures (after 0.2, 0.4, 0.8, 1.6 and 3.2 s of back-off): the export now waits
    // 6.4 s before its next try.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(
        &collector.scrape(),
        "phiguard_collector_export_failures_total{export=\"soc\"}",
    ) < 6.0
    {
        assert!(Instant::now() < deadline, "{}", collector.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    collector.stop();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopping took {:?}: the export's back-off held it up",
        started.elapsed()
    );
}

#[test]
fn a_cef_file_export_has_every_stored_record_once_per_line() {
    let work = work();
    let pki = Pki::new(&["ehr-a"]);
    let out = work.path().join("cef.log");
    let mut collector = CollectorProc::start_with_sections(
        work.path(),
        &pki,
        "",
        "",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{}\"\n\
             [export.arcsight]\nformat = \"cef\"\ntarget = \"file\"\npath = \"{}\"\n",
            free_port(),
            out.display()
        ),
    );
    let a = AgentLink::start(&pki, "ehr-a", &collector.addr);
    a.send("ehr-a", 1..=1000);
    assert!(a.wait_acked(1000, Duration::from_secs(30)));
    wait_caught_up(&collector, "arcsight", 1000, Duration::from_secs(30));
    collector.stop();
    let text = fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", out.display(), collector.log()));
    let mut indexes = Vec::new();
    for line in text.lines() {
        assert!(line.starts_with("CEF:0|phiguard|phiguard|"), "{line}");
        let chain = line
            .split(" cs2=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap();
        if chain != "ehr-a" {
            continue;
        }
        let index: u64 = line
            .split(" cn1=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no cn1 in {line}"));
        indexes.push(index);
    }
    indexes.sort_unstable();
    indexes.dedup();
    assert!(indexes.len() >= 1000, "{} indexes", indexes.len());
    assert_eq!(indexes, (1..=indexes.len() as u64).collect::<Vec<_>>());
    assert!(text.contains("|fileOpen|phiguard fileOpen|"));
}

#[test]
fn a_full_export_disk_holds_up_no_agent_leaves_no_half_line_and_catches_up() {
    let work = work();
    let pki = Pki::new(&["ehr-a"]);
    let dir = work.path().join("siem");
    let tmpfs = Tmpfs::mount(&dir, "8m");
    // Full but for one page: the first chunk is written in part, then ENOSPC.
    let (filler_path, len) = tmpfs.fill("filler");
    fs::OpenOptions::new()
        .write(true)
        .open(&filler_path)
        .unwrap()
        .set_len(len.saturating_sub(4096))
        .unwrap();
    let out = dir.join("ocsf.jsonl");
    let mut collector = CollectorProc::start_with_sections(
        work.path(),
        &pki,
        "",
        "",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{}\"\n\
             [export.siem]\ntarget = \"file\"\npath = \"{}\"\nposition = \"{}\"\n",
            free_port(),
            out.display(),
            work.path().join("siem.position").display()
        ),
    );
    let a = AgentLink::start(&pki, "ehr-a", &collector.addr);
    a.send("ehr-a", 1..=2000);
    assert!(
        a.wait_acked(2000, Duration::from_secs(30)),
        "ingest held up by a full export disk"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(
        &collector.scrape(),
        "phiguard_collector_export_failures_total{export=\"siem\"}",
    ) < 2.0
    {
        assert!(Instant::now() < deadline, "{}", collector.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::remove_file(&filler_path).unwrap();
    wait_caught_up(&collector, "siem", 2000, Duration::from_secs(60));
    collector.stop();
    // keys() parses every line: a half line left by the full disk would fail it.
    let (heads, duplicates) = check_complete(&keys(&fs::read_to_string(&out).unwrap()));
    assert!(heads["ehr-a"] >= 2000, "{heads:?}");
    assert_eq!(duplicates, 0);
}
