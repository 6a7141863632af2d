//! e2e tier: the real `phiguard-collector` binary on loopback with real mutual TLS 1.3,
//! fed by the agent's own spool and publisher (in this process) and read by a subscriber.
//! Certificates come from `phiguard-devcerts`, the code behind `cargo xtask certs`.

use std::{
    fs,
    path::Path,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BufMut as _};
use phiguard_collector::{
    chain::{RecordReader, HEADER_LEN},
    store::{list_segments, Store, StoreConfig},
    tls::{self, TlsFiles},
};
use phiguard_devcerts::{Ca, Leaf};
use phiguard_proto::v1::{
    self, collector_client::CollectorClient, event::Body, IngestRequest, IngestResponse,
};
use phiguard_tests::e2e::{
    event, replay_all, runtime, subscribe_alerts, subscribe_live, try_ingest_as, uuid_like,
    AgentLink, CollectorProc, Pki,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// How long a test client waits for the collector to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn work() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("phiguard-e2e-")
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

fn alerts(events: &[v1::Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.body, Some(Body::Alert(_))))
        .count()
}

fn host(name: &str) -> v1::EventFilter {
    v1::EventFilter {
        hosts: vec![name.into()],
        ..Default::default()
    }
}

/// Opens an Ingest stream with `config` and sends one batch; Ok once it is acknowledged.
/// No instance id: the agent's legacy stream, as agents from before instances open.
async fn try_ingest(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    batch: Vec<v1::Event>,
) -> Result<IngestResponse, String> {
    try_ingest_as(addr, config, "", batch).await
}

#[test]
fn events_reach_a_live_subscriber_with_the_identity_from_the_certificate() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let collector = CollectorProc::start(work.path(), &pki, "");
    let rt = runtime();
    let mut live = subscribe_live(
        &rt,
        &pki,
        &collector.addr,
        v1::EventFilter {
            kinds: vec!["fileOpen".into()],
            path_prefixes: vec!["/srv/ephi".into()],
            ..Default::default()
        },
    );
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=50);
    let received: Vec<v1::Event> = rt.block_on(async {
        let mut out = Vec::new();
        while out.len() < 50 {
            match tokio::time::timeout(Duration::from_secs(20), live.message()).await {
                Ok(Ok(Some(e))) => out.push(e),
                other => panic!("live stream ended after {} events: {other:?}", out.len()),
            }
        }
        out
    });
    assert_eq!(seqs(&received), (1..=50).collect::<Vec<_>>());
    for e in &received {
        let h = e.host.as_ref().unwrap();
        assert_eq!(
            (h.hostname.as_str(), h.agent_id.as_str()),
            ("ehr-a", "ehr-a")
        );
    }
    assert!(link.wait_acked(50, Duration::from_secs(10)));
}

#[test]
fn refuses_no_client_certificate_another_ca_and_an_expired_certificate() {
    let (work, pki, other) = (work(), Pki::new(&["ehr-a"]), Pki::new(&["ehr-a"]));
    let collector = CollectorProc::start(work.path(), &pki, "");
    let rt = runtime();
    let batch = || vec![event("ehr-a", 1)];
    // Control: the right certificate is accepted (so the refusals below mean something).
    let good = tls::client_config(&pki.agent("ehr-a")).unwrap();
    let ack = rt
        .block_on(try_ingest(&collector.addr, good, batch()))
        .expect("a valid certificate is accepted");
    assert_eq!(ack.acked_seq, 1);
    // No client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for cert in phiguard_support::pem::load_certs(&pki.path("ca.pem")).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let refused = rt.block_on(try_ingest(&collector.addr, Arc::new(anonymous), batch()));
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    // A certificate from another CA (for the same name).
    let foreign = tls::client_config(&TlsFiles {
        ca: pki.path("ca.pem"),
        ..other.agent("ehr-a")
    })
    .unwrap();
    let refused = rt.block_on(try_ingest(&collector.addr, foreign, batch()));
    assert!(refused.is_err(), "other CA: {refused:?}");
    // An expired certificate from the right CA.
    let ca = Ca::load(
        &fs::read_to_string(pki.path("ca.pem")).unwrap(),
        &fs::read_to_string(pki.path("ca.key")).unwrap(),
    )
    .unwrap();
    let expired = ca.issue(&Leaf::agent("ehr-a").expired()).unwrap();
    phiguard_devcerts::write_issued(pki.dir.path(), "expired", &expired).unwrap();
    let expired = tls::client_config(&TlsFiles {
        ca: pki.path("ca.pem"),
        cert: pki.path("expired.pem"),
        key: pki.path("expired.key"),
    })
    .unwrap();
    let refused = rt.block_on(try_ingest(&collector.addr, expired, batch()));
    assert!(refused.is_err(), "expired: {refused:?}");
    assert!(
        collector.wait_log("certificate expired", Duration::from_secs(5)),
        "{}",
        collector.log()
    );
    let log = collector.log();
    // (The client may retry a refused handshake once.)
    assert!(
        log.matches("TLS connection refused").count() >= 3,
        "each refusal is logged:\n{log}"
    );
    assert!(log.contains("peer sent no certificates"), "{log}");
    // Both development CAs have the same name: the signature is what fails.
    assert!(
        log.contains("BadSignature") || log.contains("UnknownIssuer"),
        "{log}"
    );
    // Only the control batch was stored.
    let events = replay_all(&rt, &pki, &collector.addr, Default::default());
    assert_eq!(seqs(&events), [1]);
}

#[test]
fn a_certificate_for_host_a_cannot_send_events_for_host_b() {
    let (work, pki) = (work(), Pki::new(&["host-a", "host-b"]));
    let collector = CollectorProc::start(work.path(), &pki, "");
    let rt = runtime();
    let a = tls::client_config(&pki.agent("host-a")).unwrap();
    let refused = rt
        .block_on(try_ingest(
            &collector.addr,
            a.clone(),
            vec![event("host-b", 1)],
        ))
        .unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    assert!(refused.contains("claims host \"host-b\""), "{refused}");
    // A claimed agent id counts too.
    let mut spoofed = event("host-a", 1);
    spoofed.host.as_mut().unwrap().agent_id = "host-b".into();
    let refused = rt
        .block_on(try_ingest(&collector.addr, a.clone(), vec![spoofed]))
        .unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    assert!(collector.wait_log("batch rejected", Duration::from_secs(5)));
    assert!(collector.log().contains("agent=host-a"));
    // The agent's own events still go through.
    let ack = rt
        .block_on(try_ingest(&collector.addr, a, vec![event("host-a", 1)]))
        .unwrap();
    assert_eq!(ack.acked_seq, 1);
    assert!(replay_all(&rt, &pki, &collector.addr, host("host-b")).is_empty());
    assert_eq!(
        seqs(&replay_all(&rt, &pki, &collector.addr, host("host-a"))),
        [1]
    );
}

#[test]
fn collector_killed_while_events_flow_then_10000_more_every_event_once_in_order() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let mut collector = CollectorProc::start(work.path(), &pki, "");
    let link = Arc::new(AgentLink::start(&pki, "ehr-a", &collector.addr));
    let producer = {
        let link = link.clone();
        std::thread::spawn(move || {
            for chunk in (1..=3000u64).collect::<Vec<_>>().chunks(20) {
                link.send("ehr-a", chunk.iter().copied());
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    assert!(
        link.wait_acked(600, Duration::from_secs(30)),
        "events flow before the kill"
    );
    collector.kill9();
    let acked_at_kill = link.spool.stats().acked;
    producer.join().unwrap();
    assert!(acked_at_kill < 3000, "the kill happened mid-stream");
    link.send("ehr-a", 3001..=13_000);
    std::thread::sleep(Duration::from_millis(500));
    collector.restart();
    assert!(
        link.wait_acked(13_000, Duration::from_secs(120)),
        "all acknowledged after the restart; acked {}",
        link.spool.stats().acked
    );
    let rt = runtime();
    let events = replay_all(&rt, &pki, &collector.addr, Default::default());
    assert_eq!(seqs(&events), (1..=13_000).collect::<Vec<_>>());
    assert_eq!(alerts(&events), 0, "no gaps");
    collector.stop();
    let out = CollectorProc::verify(&collector.config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("agent ehr-a: 13000 records"), "{stdout}");
}

/// Copies the store and a config pointing at the copy.
fn tampered_copy(
    collector: &CollectorProc,
    dir: &Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let store = dir.join("store");
    copy_dir(&collector.store, &store);
    let config = dir.join("collector.toml");
    let text = fs::read_to_string(&collector.config).unwrap().replace(
        &format!("dir = \"{}\"", collector.store.display()),
        &format!("dir = \"{}\"", store.display()),
    );
    fs::write(&config, text).unwrap();
    (store, config)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn record_spans(path: &Path) -> (Vec<u8>, Vec<(usize, usize)>) {
    let bytes = fs::read(path).unwrap();
    let spans = RecordReader::new(&bytes[HEADER_LEN as usize..], HEADER_LEN, None)
        .map(|r| {
            let r = r.unwrap();
            (r.offset as usize, r.framed_len() as usize)
        })
        .collect();
    (bytes, spans)
}

fn assert_broken(config: &Path, expect: &str) -> String {
    let out = CollectorProc::verify(config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "verify must fail: {stdout}");
    assert!(stdout.contains(expect), "expected {expect:?} in:\n{stdout}");
    stdout
}

#[test]
fn verify_finds_a_flipped_byte_a_deleted_record_swapped_records_and_a_rewritten_chain() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let mut collector = CollectorProc::start(work.path(), &pki, "");
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=300);
    assert!(link.wait_acked(300, Duration::from_secs(30)));
    drop(link);
    collector.stop();
    let out = CollectorProc::verify(&collector.config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "intact store: {stdout}");
    assert!(
        stdout.contains("ok      agent ehr-a: 300 records"),
        "{stdout}"
    );
    let segment = |store: &Path| {
        list_segments(&store.join("agents/ehr-a")).unwrap()[0]
            .1
            .clone()
    };
    let (_, spans) = record_spans(&segment(&collector.store));
    assert!(spans.len() > 10);

    // One flipped byte in record 5's body.
    let dir = work.path().join("flip");
    let (store, config) = tampered_copy(&collector, &dir);
    let (mut bytes, spans) = record_spans(&segment(&store));
    bytes[spans[4].0 + 20] ^= 0x10;
    fs::write(segment(&store), bytes).unwrap();
    let report = assert_broken(
        &config,
        &format!(
            "BROKEN  agent ehr-a, segment 00000000000000000001.seg, offset {}, record 5",
            spans[4].0
        ),
    );
    assert!(report.contains("altered"), "{report}");

    // Record 7 deleted.
    let dir = work.path().join("delete");
    let (store, config) = tampered_copy(&collector, &dir);
    let (mut bytes, spans) = record_spans(&segment(&store));
    let (off, len) = spans[6];
    bytes.drain(off..off + len);
    fs::write(segment(&store), bytes).unwrap();
    assert_broken(
        &config,
        &format!("segment 00000000000000000001.seg, offset {off}, record 7: record 8 found where record 7 was expected"),
    );

    // Records 10 and 11 swapped.
    let dir = work.path().join("swap");
    let (store, config) = tampered_copy(&collector, &dir);
    let (bytes, spans) = record_spans(&segment(&store));
    let ((o1, l1), (o2, l2)) = (spans[9], spans[10]);
    let mut swapped = bytes[..o1].to_vec();
    swapped.extend_from_slice(&bytes[o2..o2 + l2]);
    swapped.extend_from_slice(&bytes[o1..o1 + l1]);
    swapped.extend_from_slice(&bytes[o2 + l2..]);
    fs::write(segment(&store), swapped).unwrap();
    assert_broken(
        &config,
        &format!("offset {o1}, record 10: record 11 found where record 10 was expected"),
    );

    // The whole chain rewritten from scratch (consistent in itself, hashes and all).
    let dir = work.path().join("rewrite");
    let (store, config) = tampered_copy(&collector, &dir);
    let original = {
        let s = Store::open(StoreConfig::new(collector.store.clone())).unwrap();
        let mut cursor = phiguard_collector::store::Cursor::new(Arc::from("ehr-a"), 1);
        s.read(&mut cursor, 10_000).unwrap()
    };
    fs::remove_dir_all(store.join("agents/ehr-a")).unwrap();
    let forged = Store::open(StoreConfig::new(store.clone())).unwrap();
    let mut events: Vec<v1::Event> = original.iter().map(|r| r.event.clone()).collect();
    if let Some(Body::FileOpen(open)) = &mut events[41].body {
        open.path = "/srv/ephi/nothing-to-see.txt".into();
    }
    forged.append("ehr-a", events, |_| {}).unwrap();
    drop(forged);
    let empty = dir.join("no-checkpoints.jsonl");
    fs::write(&empty, "").unwrap();
    let out = CollectorProc::verify(
        &config,
        &[
            "--checkpoints",
            empty.to_str().unwrap(),
            "--allow-no-checkpoints",
        ],
    );
    assert!(
        out.status.success(),
        "the rewritten chain is consistent in itself: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Without a single checkpoint, verify does not call it ok.
    let out = CollectorProc::verify(&config, &["--checkpoints", empty.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("BROKEN  no signed checkpoints in"),
        "{stdout}"
    );
    assert_broken(&config, "the chain was rewritten");
}

/// Sends raw bytes as gRPC messages (for malformed input).
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct AckDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for AckDecoder {
    type Item = IngestResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<IngestResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        IngestResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = IngestResponse;
    type Encoder = RawEncoder;
    type Decoder = AckDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> AckDecoder {
        AckDecoder
    }
}

/// Opens an Ingest stream as `files`' identity and sends `message` raw; returns the
/// stream's error (or the ack).
async fn raw_ingest(addr: &str, files: &TlsFiles, message: Vec<u8>) -> Result<u64, tonic::Status> {
    let channel = tls::connect(
        addr,
        Some("localhost"),
        tls::client_config(files).unwrap(),
        CONNECT_TIMEOUT,
    )
    .await
    .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(message).await.unwrap();
    let mut responses = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            tonic::codegen::http::uri::PathAndQuery::from_static("/phiguard.v1.Collector/Ingest"),
            RawCodec,
        )
        .await?
        .into_inner();
    let mut acked = 0;
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(10), responses.message()).await {
            Ok(Ok(Some(ack))) => acked = ack.acked_seq,
            Ok(Ok(None)) => break,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(tonic::Status::deadline_exceeded("no answer")),
        }
    }
    drop(tx);
    Ok(acked)
}

#[test]
fn malformed_and_oversized_messages_are_refused_without_harming_another_agent() {
    let (work, pki) = (work(), Pki::new(&["ehr-a", "ehr-b"]));
    let collector = CollectorProc::start(
        work.path(),
        &pki,
        "max_message_bytes = 65536\nmax_batch_events = 256",
    );
    let link = Arc::new(AgentLink::start(&pki, "ehr-a", &collector.addr));
    let producer = {
        let link = link.clone();
        std::thread::spawn(move || {
            for chunk in (1..=4000u64).collect::<Vec<_>>().chunks(40) {
                link.send("ehr-a", chunk.iter().copied());
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let rt = runtime();
    let b = pki.agent("ehr-b");
    let started = Instant::now();
    let mut refusals = Vec::new();
    // Garbage that is not protobuf.
    refusals.push(rt.block_on(raw_ingest(&collector.addr, &b, vec![0xff; 64])));
    // A well-formed message larger than max_message_bytes.
    let mut huge = event("ehr-b", 1);
    huge.id = "x".repeat(200_000);
    let oversized = IngestRequest {
        events: vec![huge],
        ..Default::default()
    }
    .encode_to_vec();
    refusals.push(rt.block_on(raw_ingest(&collector.addr, &b, oversized)));
    // Too many events in one batch.
    let many = IngestRequest {
        events: (1..=300).map(|s| event("ehr-b", s)).collect(),
        ..Default::default()
    }
    .encode_to_vec();
    refusals.push(rt.block_on(raw_ingest(&collector.addr, &b, many)));
    // A batch with sequence numbers going backwards.
    let backwards = IngestRequest {
        events: vec![event("ehr-b", 5), event("ehr-b", 4)],
        ..Default::default()
    }
    .encode_to_vec();
    refusals.push(rt.block_on(raw_ingest(&collector.addr, &b, backwards)));
    for (i, r) in refusals.iter().enumerate() {
        assert!(r.is_err(), "message {i} was not refused: {r:?}");
    }
    let codes: Vec<tonic::Code> = refusals
        .iter()
        .map(|r| r.as_ref().unwrap_err().code())
        .collect();
    assert!(
        codes[1] == tonic::Code::OutOfRange || codes[1] == tonic::Code::ResourceExhausted,
        "{codes:?}"
    );
    assert_eq!(codes[2], tonic::Code::InvalidArgument);
    assert_eq!(codes[3], tonic::Code::InvalidArgument);
    producer.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "refusals were quick"
    );
    assert!(
        link.wait_acked(4000, Duration::from_secs(60)),
        "agent ehr-a's stream carried on"
    );
    let events = replay_all(&rt, &pki, &collector.addr, host("ehr-a"));
    assert_eq!(seqs(&events), (1..=4000).collect::<Vec<_>>());
    assert!(replay_all(&rt, &pki, &collector.addr, host("ehr-b")).is_empty());
    let log = collector.log();
    assert!(
        log.contains("ingest message refused") && log.contains("batch rejected"),
        "{log}"
    );
    // ehr-b is still welcome with a proper batch.
    let ok = rt.block_on(raw_ingest(
        &collector.addr,
        &b,
        IngestRequest {
            events: vec![event("ehr-b", 1)],
            ..Default::default()
        }
        .encode_to_vec(),
    ));
    assert_eq!(ok.unwrap(), 1);
}

#[test]
fn renewed_agent_certificate_is_picked_up_without_a_restart() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let collector = CollectorProc::start(work.path(), &pki, "");
    let link = AgentLink::start_with(&pki, "ehr-a", &collector.addr, |c| {
        c.reload_check = Duration::from_millis(200);
    });
    link.send("ehr-a", 1..=10);
    assert!(link.wait_acked(10, Duration::from_secs(20)));
    let status = link.publisher.as_ref().unwrap().status();
    assert_eq!(status.connections.load(Ordering::Relaxed), 1);
    // Renew: a new key and certificate from the same CA, written over the old files.
    let ca = Ca::load(
        &fs::read_to_string(pki.path("ca.pem")).unwrap(),
        &fs::read_to_string(pki.path("ca.key")).unwrap(),
    )
    .unwrap();
    let renewed = ca.issue(&Leaf::agent("ehr-a")).unwrap();
    phiguard_devcerts::write_issued(pki.dir.path(), "agent-ehr-a", &renewed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status.connections.load(Ordering::Relaxed) < 2 {
        assert!(
            Instant::now() < deadline,
            "no reconnection after the renewal"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    link.send("ehr-a", 11..=20);
    assert!(link.wait_acked(20, Duration::from_secs(20)));
    let rt = runtime();
    assert_eq!(
        seqs(&replay_all(&rt, &pki, &collector.addr, host("ehr-a"))),
        (1..=20).collect::<Vec<_>>()
    );
}

#[test]
fn subscribe_replays_from_a_time_then_follows_live() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let collector = CollectorProc::start(work.path(), &pki, "");
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=50);
    assert!(link.wait_acked(50, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(1100));
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    link.send("ehr-a", 51..=80);
    assert!(link.wait_acked(80, Duration::from_secs(20)));
    let rt = runtime();
    let mut stream = rt
        .block_on(phiguard_collector::tail::subscribe(
            &collector.addr,
            Some("localhost"),
            &pki.subscriber(),
            v1::SubscribeRequest {
                filter: Some(host("ehr-a")),
                start: Some(v1::subscribe_request::Start::SinceTime(
                    phiguard_proto::pbjson_types::Timestamp {
                        seconds: since.as_secs() as i64,
                        nanos: since.subsec_nanos() as i32,
                    },
                )),
                replay_only: false,
            },
            1 << 20,
        ))
        .unwrap();
    // Stored events from that time on, then live ones.
    link.send("ehr-a", 81..=100);
    let received = rt.block_on(async {
        let mut out = Vec::new();
        while out.len() < 50 {
            match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
                Ok(Ok(Some(e))) => out.push(e),
                other => panic!("stream ended after {} events: {other:?}", out.len()),
            }
        }
        out
    });
    assert_eq!(seqs(&received), (51..=100).collect::<Vec<_>>());
}

/// Runs `phiguard-collector tail` against `collector` as the subscriber `soc`.
fn tail(collector: &CollectorProc, pki: &Pki, args: &[&str]) -> std::process::Output {
    std::process::Command::new(phiguard_tests::e2e::collector_binary())
        .args([
            "tail",
            "--addr",
            &collector.addr,
            "--server-name",
            "localhost",
            "--certs",
        ])
        .arg(pki.dir.path())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn a_forged_file_name_and_an_impossible_time_neither_forge_nor_stop_the_soc_view() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let collector = CollectorProc::start(work.path(), &pki, "");
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    // A file name any local user can create under a watched directory.
    let forged = "/srv/ephi/x\n2026-01-01T00:00:00+00:00 ehr-a #2 fileOpen /srv/ephi/nothing \
                  -> fd 3 by cat[1] exe=/usr/bin/cat user=alice(1000)\u{1b}[2K\u{1b}[1A\r";
    let mut first = event("ehr-a", 1);
    if let Some(Body::FileOpen(open)) = &mut first.body {
        open.path = forged.into();
    }
    // A time no RFC 3339 string can carry.
    let mut second = event("ehr-a", 2);
    second.time = Some(phiguard_proto::pbjson_types::Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    });
    link.spool.append(&first).unwrap();
    link.spool.append(&second).unwrap();
    link.spool.flush(true).unwrap();
    link.send("ehr-a", 3..=3);
    assert!(link.wait_acked(3, Duration::from_secs(20)));
    // ehr-a's chain (the collector's own chain holds the record of each tail below).
    let since = ["--since-seq", "1", "--replay-only", "--host", "ehr-a"];
    let text = tail(&collector, &pki, &since);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "one line per event, no forged one:\n{stdout}"
    );
    assert!(lines.iter().all(|l| l.contains(" ehr-a #")), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\r'),
        "{stdout:?}"
    );
    assert!(
        lines[0].contains("/srv/ephi/x\\n2026-01-01T00:00:00"),
        "{}",
        lines[0]
    );
    // The agent instance in short form follows the kind.
    let instance = link.instance();
    let short = &instance[..8];
    assert!(
        lines[2].contains(&format!("#3 fileOpen [{short}] /srv/ephi/3.txt")),
        "{}",
        lines[2]
    );
    let mut json_args = since.to_vec();
    json_args.push("--json");
    let json = tail(&collector, &pki, &json_args);
    let stdout = String::from_utf8_lossy(&json.stdout);
    assert!(
        json.status.success(),
        "tail --json survives: {stdout}\n{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{stdout}");
    assert_eq!(
        events[0]["fileOpen"]["path"], forged,
        "JSON keeps the value, escaped by JSON"
    );
    assert_eq!(events[1]["unrepresentableTimestamps"][0]["field"], "time");
    assert_eq!(events[2]["seq"], "3");
    // A live subscription is not ended by the impossible time either.
    let mut live = std::process::Command::new(phiguard_tests::e2e::collector_binary())
        .args([
            "tail",
            "--addr",
            &collector.addr,
            "--server-name",
            "localhost",
            "--json",
            "--host",
            "ehr-a",
            "--certs",
        ])
        .arg(pki.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = live.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut bad = event("ehr-a", 4);
    bad.time = Some(phiguard_proto::pbjson_types::Timestamp {
        seconds: -i64::MAX,
        nanos: 0,
    });
    link.spool.append(&bad).unwrap();
    link.spool.flush(true).unwrap();
    link.send("ehr-a", 5..=5);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => seen.push(serde_json::from_str::<serde_json::Value>(&line).unwrap()),
            Err(e) => panic!("live tail ended or stalled after {seen:?}: {e}"),
        }
    }
    assert_eq!(seen[0]["seq"], "4");
    assert_eq!(seen[1]["seq"], "5");
    assert!(live.try_wait().unwrap().is_none(), "still following");
    let _ = live.kill();
    let _ = live.wait();
}

#[test]
fn sighup_reloads_the_tls_files_and_never_ends_the_collector() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let collector = CollectorProc::start(work.path(), &pki, "");
    let pid = nix::unistd::Pid::from_raw(collector.pid().unwrap() as i32);
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    // As the unit's ExecReload does it.
    let reload = std::process::Command::new(phiguard_tests::e2e::collector_binary())
        .args(["reload", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    assert!(reload.status.success(), "{reload:?}");
    assert!(
        collector.wait_log("SIGHUP: TLS files read again", Duration::from_secs(10)),
        "{}",
        collector.log()
    );
    // An unusable certificate file: logged, the one in force stays.
    let cert = pki.path("collector.pem");
    let good = fs::read(&cert).unwrap();
    fs::write(&cert, b"not a certificate").unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(
        collector.wait_log("SIGHUP: TLS files not reloaded", Duration::from_secs(10)),
        "{}",
        collector.log()
    );
    let line = collector
        .log()
        .lines()
        .find(|l| l.contains("not reloaded"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("collector.pem"),
        "the error names the file: {line}"
    );
    // New connections are still served with the certificate in force.
    link.send("ehr-a", 1..=20);
    assert!(link.wait_acked(20, Duration::from_secs(20)));
    let rt = runtime();
    assert_eq!(
        seqs(&replay_all(&rt, &pki, &collector.addr, host("ehr-a"))),
        (1..=20).collect::<Vec<_>>()
    );
    fs::write(&cert, good).unwrap();
    assert!(nix::sys::signal::kill(pid, None).is_ok(), "still running");
}

#[test]
fn a_huge_seq_from_a_stolen_certificate_is_refused_and_the_real_agent_keeps_storing() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let collector = CollectorProc::start(work.path(), &pki, "");
    let rt = runtime();
    let mut alerts = subscribe_alerts(&rt, &pki, &collector.addr);
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=100);
    assert!(link.wait_acked(100, Duration::from_secs(20)));
    // The same certificate, from a second connection: one event with a huge seq.
    let stolen = tls::client_config(&pki.agent("ehr-a")).unwrap();
    // The thief claims the real agent's own instance (it can read it off the wire format
    // only with the agent's spool, but assume the worst).
    let instance = link.instance();
    for seq in [1u64 << 62, 100 + 10_000_001] {
        let refused = rt
            .block_on(try_ingest_as(
                &collector.addr,
                stolen.clone(),
                &instance,
                vec![event("ehr-a", seq)],
            ))
            .unwrap_err();
        assert!(refused.starts_with("OutOfRange"), "{refused}");
    }
    let alert = rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), alerts.message()).await {
                Ok(Ok(Some(v1::Event {
                    body: Some(Body::Alert(a)),
                    ..
                }))) if a.kind == v1::AlertKind::SequenceRefused as i32 => return a,
                Ok(Ok(Some(_))) => {}
                other => panic!("no SEQUENCE_REFUSED alert: {other:?}"),
            }
        }
    });
    assert_eq!((alert.expected_seq, alert.received_seq), (101, 1 << 62));
    // The real agent's next events are stored, not taken for resends.
    link.send("ehr-a", 101..=200);
    assert!(link.wait_acked(200, Duration::from_secs(20)));
    let events = replay_all(&rt, &pki, &collector.addr, host("ehr-a"));
    assert_eq!(seqs(&events), (1..=200).collect::<Vec<_>>());
    let refused: Vec<_> = events
        .iter()
        .filter(|e| matches!(&e.body, Some(Body::Alert(a)) if a.kind == v1::AlertKind::SequenceRefused as i32))
        .collect();
    assert_eq!(refused.len(), 1, "one stored alert a minute: {refused:?}");
    eprintln!("{}", serde_json::to_string_pretty(refused[0]).unwrap());
    let log = collector.log();
    assert_eq!(
        log.matches("batch refused: seq too far above the last stored one")
            .count(),
        2,
        "each refusal is logged:\n{log}"
    );
}

/// The instance id events and alerts carry.
fn instance_of(event: &v1::Event) -> &str {
    event.host.as_ref().map_or("", |h| h.instance_id.as_str())
}

fn instance_alerts(events: &[v1::Event], kind: v1::AlertKind) -> Vec<(&str, &v1::CollectorAlert)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Alert(a)) if a.kind == kind as i32 => Some((instance_of(e), a)),
            _ => None,
        })
        .collect()
}

/// The seqs stored of `instance`, in chain order.
fn seqs_of(events: &[v1::Event], instance: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.seq > 0 && instance_of(e) == instance)
        .map(|e| e.seq)
        .collect()
}

#[test]
fn a_reset_spool_starts_a_new_instance_whose_events_are_stored_and_a_kept_one_resends_once() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let collector = with_metrics(work.path(), &pki);
    let rt = runtime();
    // First spool: 1..=50.
    let first = AgentLink::start(&pki, "ehr-a", &collector.addr);
    let old = first.instance();
    first.send("ehr-a", 1..=50);
    assert!(first.wait_acked(50, Duration::from_secs(20)));
    // The same spool after a restart keeps its instance; nothing is stored twice.
    let first = first.restart(&pki, &collector.addr);
    assert_eq!(first.instance(), old, "a kept spool keeps its instance");
    first.send("ehr-a", 51..=60);
    assert!(first.wait_acked(60, Duration::from_secs(20)));
    drop(first);
    // The spool is deleted (a reset, a reinstall): numbering starts at 1 again, in a new
    // instance, and is stored, not acknowledged as resends.
    let second = AgentLink::start(&pki, "ehr-a", &collector.addr);
    let new = second.instance();
    assert_ne!(new, old);
    second.send("ehr-a", 1..=30);
    assert!(second.wait_acked(30, Duration::from_secs(20)));
    let events = replay_all(&rt, &pki, &collector.addr, host("ehr-a"));
    assert_eq!(seqs_of(&events, &old), (1..=60).collect::<Vec<_>>());
    assert_eq!(seqs_of(&events, &new), (1..=30).collect::<Vec<_>>());
    let started = instance_alerts(&events, v1::AlertKind::InstanceStarted);
    assert_eq!(started.len(), 1, "one instance change: {started:?}");
    assert_eq!(started[0].0, new);
    assert!(
        started[0].1.message.contains(&old[..8]) && started[0].1.message.contains("last seq 60"),
        "{}",
        started[0].1.message
    );
    // The change sits just before the new instance's first event.
    let at = events
        .iter()
        .position(|e| matches!(&e.body, Some(Body::Alert(a)) if a.kind == v1::AlertKind::InstanceStarted as i32))
        .unwrap();
    assert_eq!(
        (events[at + 1].seq, instance_of(&events[at + 1])),
        (1, &*new)
    );
    let text = collector.scrape();
    assert_eq!(
        CollectorProc::sample(&text, "phiguard_collector_instances_started_total"),
        Some(1.0)
    );
    assert_eq!(
        CollectorProc::sample(&text, "phiguard_collector_events_duplicate_total"),
        Some(0.0),
        "nothing was taken for a resend"
    );
    let out = CollectorProc::verify(&collector.config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And after a restart of the collector, each instance continues where it was.
    let mut collector = collector;
    collector.stop();
    collector.restart();
    let second = second.restart(&pki, &collector.addr);
    second.send("ehr-a", 31..=40);
    assert!(second.wait_acked(40, Duration::from_secs(20)));
    let events = replay_all(&rt, &pki, &collector.addr, host("ehr-a"));
    assert_eq!(seqs_of(&events, &new), (1..=40).collect::<Vec<_>>());
    assert_eq!(
        instance_alerts(&events, v1::AlertKind::InstanceStarted).len(),
        1
    );
}

#[test]
fn a_stolen_certificate_inventing_instances_cannot_make_the_real_agents_events_resends() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let collector = with_metrics(work.path(), &pki);
    let rt = runtime();
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    let real = link.instance();
    link.send("ehr-a", 1..=100);
    assert!(link.wait_acked(100, Duration::from_secs(20)));
    let stolen = tls::client_config(&pki.agent("ehr-a")).unwrap();
    // A new instance starts its own sequence space where its first event is (an agent
    // upgraded on an old spool keeps its numbering): a huge seq numbers only that space.
    let ack = rt
        .block_on(try_ingest_as(
            &collector.addr,
            stolen.clone(),
            &uuid_like(1),
            vec![event("ehr-a", 1 << 62)],
        ))
        .unwrap();
    assert_eq!(ack.acked_seq, 1 << 62);
    // From there, its window holds: a jump past it is refused.
    let refused = rt
        .block_on(try_ingest_as(
            &collector.addr,
            stolen.clone(),
            &uuid_like(1),
            vec![event("ehr-a", (1 << 62) + 20_000_000)],
        ))
        .unwrap_err();
    assert!(refused.starts_with("OutOfRange"), "{refused}");
    // The real agent's next events are stored, not acknowledged as resends.
    link.send("ehr-a", 101..=200);
    assert!(link.wait_acked(200, Duration::from_secs(20)));
    // New instances are bounded: the real one and the forged one count; two more are allowed
    // within the hour (default 4), the next is refused.
    for n in 2..=3 {
        rt.block_on(try_ingest_as(
            &collector.addr,
            stolen.clone(),
            &uuid_like(n),
            vec![event("ehr-a", 1)],
        ))
        .unwrap();
    }
    let refused = rt
        .block_on(try_ingest_as(
            &collector.addr,
            stolen.clone(),
            &uuid_like(4),
            vec![event("ehr-a", 1)],
        ))
        .unwrap_err();
    assert!(refused.starts_with("ResourceExhausted"), "{refused}");
    // A batch naming another instance than its stream is refused.
    let refused = rt.block_on(async {
        let channel = tls::connect(
            &collector.addr,
            Some("localhost"),
            stolen.clone(),
            CONNECT_TIMEOUT,
        )
        .await
        .unwrap();
        let (tx, rx) = mpsc::channel(1);
        tx.send(IngestRequest {
            events: vec![event("ehr-a", 1)],
            instance_id: real.clone(),
        })
        .await
        .unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("phiguard-instance", uuid_like(2).parse().unwrap());
        let mut responses = CollectorClient::new(channel)
            .ingest(request)
            .await
            .unwrap()
            .into_inner();
        let _hello = responses.message().await.unwrap();
        responses.message().await.unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    link.send("ehr-a", 201..=210);
    assert!(link.wait_acked(210, Duration::from_secs(20)));
    let events = replay_all(&rt, &pki, &collector.addr, host("ehr-a"));
    assert_eq!(seqs_of(&events, &real), (1..=210).collect::<Vec<_>>());
    assert_eq!(seqs_of(&events, &uuid_like(1)), vec![1 << 62]);
    let started = instance_alerts(&events, v1::AlertKind::InstanceStarted);
    assert!(
        started.iter().any(|(i, _)| *i == uuid_like(1)),
        "the forged instance is announced: {started:?}"
    );
    let limit = instance_alerts(&events, v1::AlertKind::InstanceRefused);
    assert_eq!(limit.len(), 1, "{limit:?}");
    let text = collector.scrape();
    assert_eq!(
        CollectorProc::sample(&text, "phiguard_collector_instance_refusals_total"),
        Some(1.0)
    );
    assert_eq!(
        CollectorProc::sample(&text, "phiguard_collector_events_duplicate_total"),
        Some(0.0),
    );
    let out = CollectorProc::verify(&collector.config, &[]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A collector as [`CollectorProc::start`] starts one, serving metrics.
fn with_metrics(work: &Path, pki: &Pki) -> CollectorProc {
    CollectorProc::start_with_sections(
        work,
        pki,
        "segment_max_bytes = 65536\n",
        "every_records = 500\nevery_secs = 1\n",
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
}

/// The `sha256:` fingerprint of the PEM certificate at `path`, as `[server] revoked` takes it.
fn fingerprint(path: &Path) -> String {
    let certs = phiguard_support::pem::load_certs(path).unwrap();
    let credential =
        phiguard_collector::revocation::Credential::from_der(certs[0].as_ref()).unwrap();
    format!("sha256:{}", hex_string(&credential.fingerprint))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn revoked_certificates_are_refused_new_and_cut_live_without_a_restart() {
    let (work, pki) = (work(), Pki::new(&["ehr-a", "ehr-b"]));
    let collector = CollectorProc::start(work.path(), &pki, "");
    let pid = nix::unistd::Pid::from_raw(collector.pid().unwrap() as i32);
    let rt = runtime();
    // A live subscriber with the certificate about to be stolen, and two agents.
    let mut live = subscribe_live(&rt, &pki, &collector.addr, host("ehr-b"));
    let a = AgentLink::start(&pki, "ehr-a", &collector.addr);
    let b = AgentLink::start(&pki, "ehr-b", &collector.addr);
    a.send("ehr-a", 1..=10);
    b.send("ehr-b", 1..=10);
    assert!(a.wait_acked(10, Duration::from_secs(20)) && b.wait_acked(10, Duration::from_secs(20)));
    // Revoke the subscriber's certificate (by fingerprint) and ehr-a's (by serial).
    let serial = {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(pki.agent("ehr-a").cert)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .trim_start_matches("serial=")
            .to_owned()
    };
    let text = fs::read_to_string(&collector.config).unwrap().replace(
        "subscribers = [\"soc\"]\n",
        &format!(
            "subscribers = [\"soc\"]\nrevoked = [\"{}\", \"serial:{serial}\"]\n",
            fingerprint(&pki.path("soc.pem"))
        ),
    );
    fs::write(&collector.config, text).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(
        collector.wait_log("revoked=2", Duration::from_secs(10)),
        "{}",
        collector.log()
    );
    // The open subscription ends with PERMISSION_DENIED.
    let ended = rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), live.message()).await {
                Ok(Ok(Some(_))) => {}
                other => return other,
            }
        }
    });
    match ended {
        Ok(Err(status)) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            assert!(
                status.message().contains("certificate revoked"),
                "{status:?}"
            );
        }
        other => panic!("the live subscription was not cut: {other:?}"),
    }
    // A new subscription with it is refused.
    let again = rt.block_on(phiguard_collector::tail::subscribe(
        &collector.addr,
        Some("localhost"),
        &pki.subscriber(),
        v1::SubscribeRequest::default(),
        1 << 20,
    ));
    assert!(again.is_err(), "a revoked subscriber is refused");
    // ehr-a's events are no longer taken; ehr-b's are.
    a.send("ehr-a", 11..=20);
    b.send("ehr-b", 11..=20);
    assert!(
        b.wait_acked(20, Duration::from_secs(20)),
        "the other agent keeps storing"
    );
    assert!(
        !a.wait_acked(11, Duration::from_secs(3)),
        "the revoked agent is refused"
    );
    // A renewed subscriber certificate (same identity, new key) is welcome.
    let ca = Ca::load(
        &fs::read_to_string(pki.path("ca.pem")).unwrap(),
        &fs::read_to_string(pki.path("ca.key")).unwrap(),
    )
    .unwrap();
    let renewed = ca.issue(&Leaf::subscriber("soc")).unwrap();
    phiguard_devcerts::write_issued(pki.dir.path(), "soc", &renewed).unwrap();
    let events = replay_all(&rt, &pki, &collector.addr, Default::default());
    assert_eq!(
        seqs(&events).iter().filter(|s| **s > 10).count(),
        10,
        "ehr-b's 11..=20 only"
    );
    let log = collector.log();
    assert!(log.contains("certificate revoked"), "{log}");
    assert!(
        log.contains("identity=ehr-a")
            && log.contains(&format!(
                "revoked=serial:{}",
                serial.to_ascii_lowercase().trim_start_matches('0')
            )),
        "{log}"
    );
    assert!(log.contains("identity=soc"), "{log}");
    assert!(
        log.contains("subscribe (open stream cut)") && log.contains("ingest (open stream cut)"),
        "both open streams were cut at the reload:\n{log}"
    );
}

#[test]
fn records_cut_off_the_end_behind_the_collectors_back_are_reported_and_never_signed() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let mut collector = CollectorProc::start(work.path(), &pki, "");
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=300);
    assert!(link.wait_acked(300, Duration::from_secs(30)));
    drop(link);
    collector.stop();
    let checkpoints = work.path().join("checkpoints.jsonl");
    // Checkpoints of ehr-a's chain (the replay below is audited in the collector's own chain,
    // which is signed as usual).
    let of_agent = |text: &str| {
        text.lines()
            .filter(|l| l.contains("\"agent\":\"ehr-a\""))
            .count()
    };
    let signed_before = of_agent(&fs::read_to_string(&checkpoints).unwrap());
    // Whole records removed from the end of the newest segment: framing intact, no torn write.
    let segments = list_segments(&collector.store.join("agents/ehr-a")).unwrap();
    let newest = &segments.last().unwrap().1;
    let (bytes, spans) = record_spans(newest);
    assert!(spans.len() > 20);
    let cut = spans[spans.len() - 20].0;
    fs::write(newest, &bytes[..cut]).unwrap();
    collector.restart();
    assert!(
        collector.wait_log("not signing a shortened chain", Duration::from_secs(10)),
        "{}",
        collector.log()
    );
    let rt = runtime();
    let events = replay_all(&rt, &pki, &collector.addr, Default::default());
    let shortened: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Alert(a)) if a.kind == v1::AlertKind::ChainShortened as i32 => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(shortened.len(), 1, "recorded in the chain: {events:?}");
    assert!(shortened[0].expected_seq > shortened[0].received_seq);
    std::thread::sleep(Duration::from_millis(1500));
    collector.stop();
    let lines = fs::read_to_string(&checkpoints).unwrap();
    assert_eq!(
        of_agent(&lines),
        signed_before,
        "nothing was signed over the shortened chain:\n{lines}"
    );
    assert_broken(&collector.config, "records removed from the end");
}

#[test]
fn retention_entries_are_signed_and_a_forged_one_fails_verify() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let mut collector = CollectorProc::start_with_store(
        work.path(),
        &pki,
        "segment_max_bytes = 4096\nretention_max_bytes = 20000\n",
    );
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=300);
    assert!(link.wait_acked(300, Duration::from_secs(30)));
    drop(link);
    collector.stop();
    // Retention runs at start.
    collector.restart();
    assert!(collector.wait_log("retention removed a segment", Duration::from_secs(10)));
    collector.stop();
    let log_path = collector.store.join("retention.jsonl");
    let entries = fs::read_to_string(&log_path).unwrap();
    assert!(
        entries.lines().all(|l| l.contains("\"signature\":\"")),
        "{entries}"
    );
    let out = CollectorProc::verify(&collector.config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The oldest remaining segment deleted, and explained by a copied, edited entry.
    let segments = list_segments(&collector.store.join("agents/ehr-a")).unwrap();
    let (first, path) = segments[0].clone();
    let (_, spans) = record_spans(&segments[1].1);
    assert!(!spans.is_empty());
    fs::remove_file(&path).unwrap();
    let last: serde_json::Value = serde_json::from_str(entries.lines().last().unwrap()).unwrap();
    let mut forged = last.clone();
    forged["first_index"] = first.into();
    forged["last_index"] = (segments[1].0 - 1).into();
    let mut text = entries.clone();
    text.push_str(&format!("{forged}\n"));
    fs::write(&log_path, text).unwrap();
    let report = assert_broken(&collector.config, "signature does not verify");
    assert!(
        report.contains("retention removed no such segment"),
        "{report}"
    );
}

/// The signed checkpoints in `work/checkpoints.jsonl`: (index, JSON) per line.
fn signed(work: &Path) -> Vec<(u64, serde_json::Value)> {
    fs::read_to_string(work.join("checkpoints.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let cp: serde_json::Value = serde_json::from_str(line).unwrap();
            let index = cp["index"].as_str().unwrap().parse().unwrap();
            (index, cp)
        })
        .collect()
}

/// Cuts `agent`'s chain so that it ends just before record `from` (whole records off the
/// end of the newest segment, as someone with write access to the store could).
fn cut_from(store: &Path, agent: &str, from: u64) {
    let segments = list_segments(&store.join("agents").join(agent)).unwrap();
    let (first, newest) = segments.last().unwrap().clone();
    assert!(from > first, "record {from} is in the newest segment");
    let (bytes, spans) = record_spans(&newest);
    let cut = spans[(from - first) as usize].0;
    fs::write(&newest, &bytes[..cut]).unwrap();
}

#[test]
fn a_checkpoint_every_n_records_bounds_the_end_that_can_be_cut_unnoticed() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let mut collector = CollectorProc::start_with_checkpoint(
        work.path(),
        &pki,
        "every_records = 50\nevery_secs = 3600\n",
    );
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    for batch in [1..=10, 11..=70, 71..=100] {
        let last = *batch.end();
        link.send("ehr-a", batch);
        assert!(link.wait_acked(last, Duration::from_secs(30)));
    }
    drop(link);
    // No final checkpoint: only the periodic ones are signed.
    collector.kill9();
    let signed = signed(work.path());
    let newest = signed.iter().map(|(index, _)| *index).max().unwrap();
    assert!(
        (60..=70).contains(&newest),
        "a checkpoint at least every 50 records: {signed:?}"
    );
    assert!(
        signed[0].1["clock"]["bootId"]
            .as_str()
            .is_some_and(|b| !b.is_empty())
            && signed[0].1["clock"]["boottimeNs"].as_str().is_some(),
        "the collector's clocks are in the checkpoint: {}",
        signed[0].1
    );
    let out = CollectorProc::verify(&collector.config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // At most every_records - 1 records are unsigned; cutting into the signed part fails.
    assert!(100 - newest < 50);
    cut_from(&collector.store, "ehr-a", newest - 5);
    assert_broken(
        &collector.config,
        &format!(
            "the chain ends at record {} but a signed checkpoint covers record {newest}: records removed from the end",
            newest - 6
        ),
    );
}

#[test]
fn a_quiet_agent_still_gets_a_checkpoint_after_every_secs() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let mut collector = CollectorProc::start_with_checkpoint(
        work.path(),
        &pki,
        "every_records = 100000\nevery_secs = 1\n",
    );
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=5);
    assert!(link.wait_acked(5, Duration::from_secs(30)));
    link.send("ehr-a", 6..=8);
    assert!(link.wait_acked(8, Duration::from_secs(30)));
    // Three records, far below every_records: signed once every_secs has passed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !signed(work.path()).iter().any(|(index, _)| *index == 8) {
        assert!(
            Instant::now() < deadline,
            "no checkpoint of record 8: {:?}",
            signed(work.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(link);
    collector.kill9();
    cut_from(&collector.store, "ehr-a", 8);
    assert_broken(
        &collector.config,
        "the chain ends at record 7 but a signed checkpoint covers record 8",
    );
}

#[test]
fn a_flood_of_idle_connections_neither_locks_out_a_real_agent_nor_stays_open() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    // Fewer slots than idle connections: were they held until the handshake timeout (10 s),
    // the agent below would queue behind all of them.
    let collector = CollectorProc::start(
        work.path(),
        &pki,
        "max_connections = 50\nmax_handshakes = 16\nhandshake_timeout_secs = 10\n",
    );
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(&collector.addr).unwrap())
        .collect();
    let rt = runtime();
    let config = tls::client_config(&pki.agent("ehr-a")).unwrap();
    let ack = rt
        .block_on(try_ingest(&collector.addr, config, vec![event("ehr-a", 1)]))
        .expect("a real agent is served during the flood");
    assert_eq!(ack.acked_seq, 1);
    assert_eq!(
        seqs(&replay_all(&rt, &pki, &collector.addr, host("ehr-a"))),
        [1],
        "and a subscriber"
    );
    // Every idle connection is closed by the collector: the oldest to make room, the rest
    // at the handshake timeout.
    for (i, mut conn) in idle.into_iter().enumerate() {
        use std::io::Read as _;
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 16];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("idle connection {i} not closed by the collector: {other:?}"),
        }
    }
    // The collector logs a timed-out handshake just after it closes the connection: the
    // last line may still be on its way.
    assert!(
        collector.wait_log("handshake not finished within 10s", Duration::from_secs(5)),
        "{}",
        collector.log()
    );
    let log = collector.log();
    assert!(
        log.contains("unfinished TLS handshakes closed to make room"),
        "{log}"
    );
}

/// Sends SIGHUP through `phiguard-collector reload` and waits for the `reloaded` log line to
/// appear once more.
fn reload_and_wait(collector: &CollectorProc, needle: &str) {
    let before = collector.log().matches(needle).count();
    let out = std::process::Command::new(phiguard_tests::e2e::collector_binary())
        .args(["reload", "--pid", &collector.pid().unwrap().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.log().matches(needle).count() == before {
        assert!(
            Instant::now() < deadline,
            "no {needle:?}:\n{}",
            collector.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_crl_refuses_revoked_certificates_and_cuts_their_open_streams_at_a_reload() {
    let (work, pki) = (work(), Pki::new(&["ehr-a", "ehr-b"]));
    let ca = Ca::load(
        &fs::read_to_string(pki.path("ca.pem")).unwrap(),
        &fs::read_to_string(pki.path("ca.key")).unwrap(),
    )
    .unwrap();
    let files = |name: &str, issued: &phiguard_devcerts::Issued| {
        phiguard_devcerts::write_issued(pki.dir.path(), name, issued).unwrap();
        TlsFiles {
            ca: pki.path("ca.pem"),
            cert: pki.path(&format!("{name}.pem")),
            key: pki.path(&format!("{name}.key")),
        }
    };
    let stolen = ca.issue(&Leaf::agent("ehr-a")).unwrap();
    let stolen_files = files("stolen", &stolen);
    let old_soc = ca.issue(&Leaf::subscriber("soc")).unwrap();
    let old_soc_files = files("old-soc", &old_soc);
    let crl = pki.path("crl.pem");
    fs::write(&crl, ca.crl(1, &[]).unwrap()).unwrap();
    let collector =
        CollectorProc::start(work.path(), &pki, &format!("crl = \"{}\"\n", crl.display()));
    let rt = runtime();
    let ingest = |files: &TlsFiles, seq: u64| {
        rt.block_on(try_ingest(
            &collector.addr,
            tls::client_config(files).unwrap(),
            vec![event("ehr-a", seq)],
        ))
    };
    // Not revoked yet: served.
    assert_eq!(ingest(&stolen_files, 1).unwrap().acked_seq, 1);
    let mut live = rt
        .block_on(phiguard_collector::tail::subscribe(
            &collector.addr,
            Some("localhost"),
            &old_soc_files,
            v1::SubscribeRequest {
                filter: Some(host("ehr-b")),
                ..Default::default()
            },
            1 << 20,
        ))
        .unwrap();
    // The CA revokes both; the collector reloads.
    fs::write(&crl, ca.crl(2, &[&stolen, &old_soc]).unwrap()).unwrap();
    reload_and_wait(&collector, "SIGHUP: TLS files read again");
    let ended =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), live.message()).await });
    let status = ended
        .expect("the open subscription is cut within 10 s")
        .expect_err("with a status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("certificate revoked (CRL serial:"),
        "{status:?}"
    );
    let refused = ingest(&stolen_files, 2);
    assert!(
        refused.is_err(),
        "a revoked certificate is refused: {refused:?}"
    );
    assert!(
        collector.wait_log("Revoked", Duration::from_secs(5)),
        "{}",
        collector.log()
    );
    // The host's other certificate, and the other subscriber certificate, are not revoked.
    assert_eq!(ingest(&pki.agent("ehr-a"), 2).unwrap().acked_seq, 2);
    assert_eq!(
        seqs(&replay_all(&rt, &pki, &collector.addr, host("ehr-a"))),
        [1, 2]
    );
    // An unusable CRL file at a reload: logged with its path; the lists in force stay.
    fs::write(&crl, "not a CRL").unwrap();
    reload_and_wait(&collector, "SIGHUP: TLS files not reloaded");
    assert!(collector.log().contains(&format!("{}: ", crl.display())));
    assert!(ingest(&stolen_files, 3).is_err());
    assert_eq!(ingest(&pki.agent("ehr-a"), 3).unwrap().acked_seq, 3);
    // A CRL of another CA covers none of these certificates: every client is refused
    // (unknown revocation status) rather than none checked.
    let other = Ca::generate("another CA").unwrap();
    fs::write(&crl, other.crl(1, &[]).unwrap()).unwrap();
    reload_and_wait(&collector, "SIGHUP: TLS files read again");
    assert!(ingest(&pki.agent("ehr-a"), 4).is_err());
    assert!(
        collector.wait_log("UnknownRevocationStatus", Duration::from_secs(5)),
        "{}",
        collector.log()
    );
}
