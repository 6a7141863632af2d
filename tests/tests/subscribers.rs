//! e2e tier: who may watch what. The real `phiguard-collector` with real mutual TLS 1.3:
//! subscribers limited to the hosts and kinds their `[scope.NAME]` grants, refused (naming
//! what) when they ask for more or have no scope, and every Subscribe recorded in the
//! collector's own chain, which `tail` prints and `verify` checks.

use std::{fs, path::Path, time::Duration};

use phiguard_devcerts::{Ca, Leaf};
use phiguard_proto::v1::{self, event::Body, SubscriptionPhase};
use phiguard_support::tls::TlsFiles;
use phiguard_tests::e2e::{
    collector_binary, replay_audit, replay_with, runtime, AgentLink, CollectorProc, Pki,
};

fn work() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("phiguard-e2e-")
        .tempdir()
        .unwrap()
}

/// Issues a subscriber certificate for `name` from the PKI's CA.
fn subscriber(pki: &Pki, name: &str) -> TlsFiles {
    let ca = Ca::load(
        &fs::read_to_string(pki.path("ca.pem")).unwrap(),
        &fs::read_to_string(pki.path("ca.key")).unwrap(),
    )
    .unwrap();
    let issued = ca.issue(&Leaf::subscriber(name)).unwrap();
    phiguard_devcerts::write_issued(pki.dir.path(), name, &issued).unwrap();
    TlsFiles {
        ca: pki.path("ca.pem"),
        cert: pki.path(&format!("{name}.pem")),
        key: pki.path(&format!("{name}.key")),
    }
}

/// Rewrites the collector's configuration with `edit` and reloads it (SIGHUP), as
/// `systemctl reload` does.
fn reconfigure(collector: &CollectorProc, edit: impl FnOnce(String) -> String) {
    let before = collector
        .log()
        .matches("SIGHUP: TLS files read again")
        .count();
    let text = fs::read_to_string(&collector.config).unwrap();
    fs::write(&collector.config, edit(text)).unwrap();
    let out = std::process::Command::new(collector_binary())
        .args(["reload", "--pid", &collector.pid().unwrap().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while collector
        .log()
        .matches("SIGHUP: TLS files read again")
        .count()
        == before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not reloaded:\n{}",
            collector.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn filter(hosts: &[&str], kinds: &[&str]) -> v1::EventFilter {
    v1::EventFilter {
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        ..Default::default()
    }
}

fn hosts_and_kinds(events: &[v1::Event]) -> Vec<(String, &'static str, u64)> {
    events
        .iter()
        .map(|e| {
            (
                e.host.as_ref().unwrap().agent_id.clone(),
                phiguard_collector::stream::kind_name(e),
                e.seq,
            )
        })
        .collect()
}

fn heartbeat(host: &str, seq: u64) -> v1::Event {
    v1::Event {
        body: Some(Body::Heartbeat(v1::Heartbeat::default())),
        ..phiguard_tests::e2e::event(host, seq)
    }
}

#[test]
fn a_subscriber_sees_only_its_scope_asking_for_more_is_refused_and_every_subscribe_is_audited() {
    let (work, pki) = (work(), Pki::new(&["ehr-a", "ehr-b"]));
    let ward = subscriber(&pki, "ward-7");
    let unscoped = subscriber(&pki, "nurse-7");
    let collector = CollectorProc::start(work.path(), &pki, "");
    let rt = runtime();
    let (a, b) = (
        AgentLink::start(&pki, "ehr-a", &collector.addr),
        AgentLink::start(&pki, "ehr-b", &collector.addr),
    );
    a.send("ehr-a", 1..=4);
    for seq in [5, 6] {
        a.spool.append(&heartbeat("ehr-a", seq)).unwrap();
    }
    a.spool.flush(true).unwrap();
    b.send("ehr-b", 1..=5);
    assert!(a.wait_acked(6, Duration::from_secs(20)) && b.wait_acked(5, Duration::from_secs(20)));
    reconfigure(&collector, |text| {
        text.replace(
            "subscribers = [\"soc\"]",
            "subscribers = [\"soc\", \"ward-7\", \"nurse-7\"]",
        ) + "[scope.ward-7]\nhosts = [\"ehr-a\"]\nkinds = [\"fileOpen\", \"alert\"]\n"
    });

    // No filter: everything the scope grants, nothing else (no heartbeats, no ehr-b, no
    // audit records).
    let granted = replay_with(&rt, &ward, &collector.addr, Default::default()).unwrap();
    assert_eq!(
        hosts_and_kinds(&granted),
        (1..=4)
            .map(|seq| ("ehr-a".to_owned(), "fileOpen", seq))
            .collect::<Vec<_>>()
    );
    // Within the scope: as asked.
    let asked = replay_with(
        &rt,
        &ward,
        &collector.addr,
        filter(&["EHR-A"], &["file_open"]),
    )
    .unwrap();
    assert_eq!(asked.len(), 4);
    // More than granted: refused, naming what.
    let refused = |f: v1::EventFilter, files: &TlsFiles| {
        replay_with(&rt, files, &collector.addr, f).expect_err("refused")
    };
    let status = refused(filter(&["ehr-a", "ehr-b"], &[]), &ward);
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "subscriber \"ward-7\" is not granted hosts ehr-b"
    );
    let status = refused(filter(&[], &["heartbeat", "fileOpen"]), &ward);
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "subscriber \"ward-7\" is not granted event kinds heartbeat"
    );
    // Listed without a scope: sees nothing.
    let status = refused(Default::default(), &unscoped);
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("no scope is configured")
            && status.message().contains("[scope.nurse-7]"),
        "{status:?}"
    );
    // An agent's certificate may not subscribe at all.
    let status = refused(Default::default(), &pki.agent("ehr-a"));
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // Live: only the scope's events arrive; closing the stream is recorded with the count.
    let mut live = rt
        .block_on(phiguard_collector::tail::subscribe(
            &collector.addr,
            Some("localhost"),
            &ward,
            v1::SubscribeRequest::default(),
            1 << 20,
        ))
        .unwrap();
    b.send("ehr-b", 6..=8);
    assert!(b.wait_acked(8, Duration::from_secs(20)));
    a.send("ehr-a", 7..=7);
    let first = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), live.message()).await })
        .expect("an event within 20 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        hosts_and_kinds(&[first]),
        [("ehr-a".to_owned(), "fileOpen", 7)]
    );
    drop(live);

    // The trail: every call above, who, what, when, how many events.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = replay_audit(&rt, &pki, &collector.addr);
        let closed_live = audit.iter().any(|s| {
            s.subscriber == "ward-7"
                && s.phase == SubscriptionPhase::Closed as i32
                && s.start == "live"
        });
        if closed_live || std::time::Instant::now() > deadline {
            break audit;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let of = |who: &str, phase: SubscriptionPhase| -> Vec<&v1::SubscriptionAudit> {
        audit
            .iter()
            .filter(|s| s.subscriber == who && s.phase == phase as i32)
            .collect()
    };
    let refusals = of("ward-7", SubscriptionPhase::Refused);
    assert_eq!(refusals.len(), 2, "{audit:#?}");
    assert_eq!(refusals[0].hosts, ["ehr-a", "ehr-b"]);
    assert!(refusals[0].reason.contains("not granted hosts ehr-b"));
    assert!(refusals[0].certificate.starts_with("sha256:"));
    assert_eq!(of("nurse-7", SubscriptionPhase::Refused).len(), 1);
    assert_eq!(of("ehr-a", SubscriptionPhase::Refused).len(), 1);
    let opened = of("ward-7", SubscriptionPhase::Opened);
    let closed = of("ward-7", SubscriptionPhase::Closed);
    assert_eq!((opened.len(), closed.len()), (3, 3), "{audit:#?}");
    assert_eq!(opened[0].granted_hosts, ["ehr-a"]);
    assert_eq!(opened[0].granted_kinds, ["fileOpen", "alert"]);
    assert_eq!(opened[0].start, "since-seq 1");
    let replay = closed
        .iter()
        .find(|c| c.subscription_id == opened[0].subscription_id)
        .unwrap();
    assert_eq!(
        (replay.events_sent, replay.reason.as_str()),
        (4, "replay finished")
    );
    let live = closed.iter().find(|c| c.start == "live").unwrap();
    assert_eq!(live.events_sent, 1, "{live:?}");
    assert!(live.reason.contains("stream ended"), "{live:?}");
    assert!(live.closed.unwrap().seconds >= live.opened.unwrap().seconds);

    // tail prints the trail.
    let out = std::process::Command::new(collector_binary())
        .args([
            "tail",
            "--addr",
            &collector.addr,
            "--server-name",
            "localhost",
            "--certs",
        ])
        .arg(pki.dir.path())
        .args([
            "--since-seq",
            "1",
            "--replay-only",
            "--kind",
            "subscription",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(" _collector #0 subscription refused ")
                && l.contains("nurse-7")
                && l.contains("no scope is configured")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.contains("subscription closed")
            && l.contains("ward-7")
            && l.contains("after 1 events")),
        "{stdout}"
    );
    drop((a, b));
    let mut collector = collector;
    collector.stop();
    let out = CollectorProc::verify(&collector.config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ok      agent _collector: "), "{stdout}");
}

#[test]
fn narrowing_a_scope_at_a_reload_ends_the_open_subscription_and_an_agent_cannot_write_the_audit_chain(
) {
    let (work, pki) = (work(), Pki::new(&["ehr-a", "_collector"]));
    let ward = subscriber(&pki, "ward-7");
    let collector = CollectorProc::start(work.path(), &pki, "");
    reconfigure(&collector, |text| {
        text.replace(
            "subscribers = [\"soc\"]",
            "subscribers = [\"soc\", \"ward-7\"]",
        ) + "[scope.ward-7]\nhosts = [\"*\"]\nkinds = [\"*\"]\n"
    });
    let rt = runtime();
    let mut live = rt
        .block_on(phiguard_collector::tail::subscribe(
            &collector.addr,
            Some("localhost"),
            &ward,
            v1::SubscribeRequest::default(),
            1 << 20,
        ))
        .unwrap();
    reconfigure(&collector, |text| {
        text.replace(
            "[scope.ward-7]\nhosts = [\"*\"]",
            "[scope.ward-7]\nhosts = [\"ehr-a\"]",
        )
    });
    let ended = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), live.message()).await })
        .expect("the stream ends within 10 s");
    let status = ended.expect_err("ended with a status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("scope changed"), "{status:?}");
    // An agent certificate named like the audit chain is refused.
    let intruder = AgentLink::start(&pki, "_collector", &collector.addr);
    intruder.send("_collector", 1..=3);
    assert!(
        collector.wait_log(
            "a certificate named after the collector's audit chain tried to ingest",
            Duration::from_secs(20)
        ),
        "{}",
        collector.log()
    );
    assert!(!intruder.wait_acked(1, Duration::from_millis(500)));
    drop(intruder);
    let audit = replay_audit(&rt, &pki, &collector.addr);
    let cut = audit
        .iter()
        .find(|s| s.phase == SubscriptionPhase::Closed as i32 && s.subscriber == "ward-7")
        .expect("the cut subscription's record");
    assert_eq!(cut.reason, "its access changed at a reload");
    assert!(audit.iter().all(|s| !s.subscriber.is_empty()));
    assert!(Path::new(&collector.store.join("agents/_collector")).is_dir());
}
