//! Helpers for the e2e tier: a development PKI made by `phiguard-devcerts` (the same code as
//! `cargo xtask certs`), the real `phiguard-collector` binary on loopback, an in-process
//! agent link (the agent's own spool and publisher), and a subscriber.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use phiguard::sink::{
    publish::{Publisher, PublisherConfig},
    spool::{FullPolicy, Spool, SpoolConfig},
};
use phiguard_proto::v1::{self, event::Body};
use phiguard_support::tls::TlsFiles;
use tokio::runtime::Runtime;

/// The collector binary (`cargo xtask test` builds it and sets `PHIGUARD_COLLECTOR_BIN`).
pub fn collector_binary() -> PathBuf {
    std::env::var_os("PHIGUARD_COLLECTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("PHIGUARD_COLLECTOR_BIN is not set: run the e2e tests through `cargo xtask test`, which builds target/debug/phiguard-collector")
        })
}

/// A development PKI in a temporary directory.
pub struct Pki {
    /// Keeps the directory.
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// CA, collector, subscriber `soc` and one certificate per agent host.
    pub fn new(agents: &[&str]) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("phiguard-pki-")
            .tempdir()
            .unwrap();
        let agents: Vec<String> = agents.iter().map(|a| (*a).to_owned()).collect();
        phiguard_devcerts::write_dir(dir.path(), &agents, &[]).expect("development PKI");
        Pki { dir }
    }

    /// A file in the PKI directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The agent `host`'s TLS files.
    pub fn agent(&self, host: &str) -> TlsFiles {
        TlsFiles {
            ca: self.path("ca.pem"),
            cert: self.path(&phiguard_devcerts::agent_cert_file(host)),
            key: self.path(&phiguard_devcerts::agent_key_file(host)),
        }
    }

    /// The subscriber's TLS files.
    pub fn subscriber(&self) -> TlsFiles {
        TlsFiles {
            ca: self.path("ca.pem"),
            cert: self.path("soc.pem"),
            key: self.path("soc.key"),
        }
    }
}

/// Where a collector started with [`CollectorProc::start_pending`] will report its address.
pub struct PendingAddr(std::sync::mpsc::Receiver<String>);

/// A running `phiguard-collector serve`.
pub struct CollectorProc {
    child: Option<Child>,
    /// Where it listens.
    pub addr: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its store directory.
    pub store: PathBuf,
    /// Everything it logged (all runs).
    pub log: Arc<Mutex<String>>,
    /// Extra environment for the next (re)start (e.g. libfaketime's).
    pub env: Vec<(String, String)>,
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl CollectorProc {
    /// Writes a configuration in `work` (store `work/store` in small segments of 64 KiB and a
    /// checkpoint every 500 records or second, so tests see rotation and checkpoints; the
    /// subscriber `soc` sees every host and kind;
    /// checkpoints in `work/checkpoints.jsonl`, `extra` appended to `[server]`) and starts the
    /// collector.
    pub fn start(work: &Path, pki: &Pki, extra_server: &str) -> CollectorProc {
        Self::configure(
            work,
            pki,
            extra_server,
            "segment_max_bytes = 65536\n",
            "every_records = 500\nevery_secs = 1\n",
        )
    }

    /// Like [`CollectorProc::start`] with `extra_store` in `[store]` instead of the 64 KiB
    /// segments (the store directory is `work/store`, which may be a mount point).
    pub fn start_with_store(work: &Path, pki: &Pki, extra_store: &str) -> CollectorProc {
        Self::configure(
            work,
            pki,
            "",
            extra_store,
            "every_records = 500\nevery_secs = 1\n",
        )
    }

    /// Like [`CollectorProc::start`] with `checkpoint` as the `[checkpoint]` cadence lines.
    pub fn start_with_checkpoint(work: &Path, pki: &Pki, checkpoint: &str) -> CollectorProc {
        Self::configure(work, pki, "", "segment_max_bytes = 65536\n", checkpoint)
    }

    /// The same with the collector's default segment size and checkpoint cadence, as a
    /// benchmark should measure it.
    pub fn start_with_defaults(work: &Path, pki: &Pki) -> CollectorProc {
        Self::configure(work, pki, "", "", "")
    }

    /// Like [`CollectorProc::start`] with `extra_store` in `[store]`, `checkpoint` as the
    /// `[checkpoint]` lines beyond key and file, and `sections` (whole tables, e.g.
    /// `[metrics]`) at the end.
    pub fn start_with_sections(
        work: &Path,
        pki: &Pki,
        extra_store: &str,
        checkpoint: &str,
        sections: &str,
    ) -> CollectorProc {
        let config = Self::write_config(
            work,
            pki,
            &work.join("checkpoint.key"),
            "",
            extra_store,
            checkpoint,
            sections,
        );
        Self::start_config(config, work.join("store"))
    }

    /// Writes `work/collector.toml` as [`CollectorProc::start`] does, with the checkpoint key
    /// at `key`, and returns its path (nothing is started).
    pub fn write_config(
        work: &Path,
        pki: &Pki,
        key: &Path,
        extra_server: &str,
        extra_store: &str,
        extra_checkpoint: &str,
        sections: &str,
    ) -> PathBuf {
        let store = work.join("store");
        let config = work.join("collector.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             subscribers = [\"soc\"]\n{extra_server}\n\
             [store]\ndir = \"{}\"\n{extra_store}\
             [checkpoint]\nkey = \"{}\"\nfile = \"{}\"\n{extra_checkpoint}\n\
             [scope.soc]\nhosts = [\"*\"]\nkinds = [\"*\"]\n{sections}",
            pki.path("ca.pem").display(),
            pki.path("collector.pem").display(),
            pki.path("collector.key").display(),
            store.display(),
            key.display(),
            work.join("checkpoints.jsonl").display(),
        );
        std::fs::write(&config, text).unwrap();
        config
    }

    fn configure(
        work: &Path,
        pki: &Pki,
        extra_server: &str,
        extra_store: &str,
        extra_checkpoint: &str,
    ) -> CollectorProc {
        let config = Self::write_config(
            work,
            pki,
            &work.join("checkpoint.key"),
            extra_server,
            extra_store,
            extra_checkpoint,
            "",
        );
        Self::start_config(config, work.join("store"))
    }

    /// Starts the collector on an existing configuration file whose store is `store` (its
    /// `listen` must be `127.0.0.1:0`: the port is read from the log).
    pub fn start_config(config: PathBuf, store: PathBuf) -> CollectorProc {
        let mut proc = CollectorProc {
            child: None,
            addr: String::new(),
            config,
            store,
            log: Arc::new(Mutex::new(String::new())),
            env: Vec::new(),
        };
        proc.spawn();
        proc
    }

    /// The running collector's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let addr = self.launch();
        self.await_listening(&addr, Duration::from_secs(20));
    }

    /// Starts the process and returns where its listening address will be reported.
    fn launch(&mut self) -> std::sync::mpsc::Receiver<String> {
        let mut child = Command::new(collector_binary())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting phiguard-collector");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if let Some(at) = line.find("listening on ") {
                    let addr: String = line[at + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        rx
    }

    /// Starts the collector on `config` (store `store`) without waiting for it to listen: a
    /// standby store writer listens only once it holds the writer lease. Then
    /// [`CollectorProc::wait_listening`].
    pub fn start_pending(config: PathBuf, store: PathBuf) -> (CollectorProc, PendingAddr) {
        Self::start_pending_with_env(config, store, Vec::new())
    }

    /// [`CollectorProc::start_pending`] with extra environment (e.g. `NOTIFY_SOCKET`).
    pub fn start_pending_with_env(
        config: PathBuf,
        store: PathBuf,
        env: Vec<(String, String)>,
    ) -> (CollectorProc, PendingAddr) {
        let mut proc = CollectorProc {
            child: None,
            addr: String::new(),
            config,
            store,
            log: Arc::new(Mutex::new(String::new())),
            env,
        };
        let addr = proc.launch();
        (proc, PendingAddr(addr))
    }

    /// Waits until a collector started with [`CollectorProc::start_pending`] listens.
    pub fn wait_listening(&mut self, pending: PendingAddr, timeout: Duration) {
        self.await_listening(&pending.0, timeout);
    }

    fn await_listening(&mut self, addr: &std::sync::mpsc::Receiver<String>, timeout: Duration) {
        match addr.recv_timeout(timeout) {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!(
                    "phiguard-collector did not start within {timeout:?}:\n{}",
                    self.log()
                );
            }
        }
        // Later runs keep the port, so agents reconnect to the same address ([server] comes
        // first; a `[metrics] listen` on port 0 stays on port 0).
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(
            &self.config,
            text.replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{}\"", self.addr),
                1,
            ),
        )
        .unwrap();
    }

    /// The metrics endpoint's address, from the log (`[metrics] listen` must be set).
    pub fn metrics_addr(&self) -> String {
        assert!(
            self.wait_log("metrics endpoint: http://", Duration::from_secs(10)),
            "no metrics endpoint:\n{}",
            self.log()
        );
        let log = self.log();
        let at =
            log.rfind("metrics endpoint: http://").unwrap() + "metrics endpoint: http://".len();
        log[at..].split('/').next().unwrap().to_owned()
    }

    /// `GET /metrics` from the collector's endpoint: the exposition text.
    pub fn scrape(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(self.metrics_addr()).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        response
    }

    /// The value of the sample `name` (with its labels, as exposed) in `text`.
    pub fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Its exit status once it has exited by itself (None while it runs or was stopped).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL: no final checkpoint, no clean shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (signs a final checkpoint per agent); panics after 20 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "collector exit status {status:?}");
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "collector did not stop within 20 s of SIGTERM:\n{}",
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it again on the same address and store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill it first");
        self.spawn();
    }

    /// Runs `phiguard-collector verify --config CONFIG ARGS…`.
    pub fn verify(config: &Path, args: &[&str]) -> Output {
        Command::new(collector_binary())
            .args(["verify", "--config"])
            .arg(config)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }
}

impl Drop for CollectorProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An agent link in this process: the agent's own spool and publisher.
pub struct AgentLink {
    /// The spool.
    pub spool: Arc<Spool>,
    /// The publisher (None once stopped).
    pub publisher: Option<Publisher>,
    /// The host name the events claim.
    pub host: String,
    /// Keeps the spool directory.
    pub dir: tempfile::TempDir,
}

impl AgentLink {
    /// Opens a spool and starts publishing to `addr` with `host`'s certificate.
    pub fn start(pki: &Pki, cert_host: &str, addr: &str) -> AgentLink {
        AgentLink::start_with(pki, cert_host, addr, |_| {})
    }

    /// Like [`AgentLink::start`], with the publisher's configuration adjusted by `adjust`.
    pub fn start_with(
        pki: &Pki,
        cert_host: &str,
        addr: &str,
        adjust: impl FnOnce(&mut PublisherConfig),
    ) -> AgentLink {
        let dir = tempfile::Builder::new()
            .prefix("phiguard-spool-")
            .tempdir()
            .unwrap();
        AgentLink::open_in(pki, cert_host, addr, dir, adjust)
    }

    /// Like [`AgentLink::start`], claiming instance `instance` (as a thief who read the real
    /// agent's spool would).
    pub fn start_claiming(pki: &Pki, cert_host: &str, addr: &str, instance: &str) -> AgentLink {
        let dir = tempfile::Builder::new()
            .prefix("phiguard-spool-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join(phiguard::link::spool::INSTANCE_FILE),
            instance,
        )
        .unwrap();
        AgentLink::open_in(pki, cert_host, addr, dir, |_| {})
    }

    /// Stops the publisher and opens the same spool directory again, as an agent restarted
    /// with its spool kept does (same instance, unacknowledged events resent).
    pub fn restart(self, pki: &Pki, addr: &str) -> AgentLink {
        let AgentLink {
            spool,
            publisher,
            host,
            dir,
        } = self;
        if let Some(publisher) = publisher {
            publisher.stop();
        }
        drop(spool);
        AgentLink::open_in(pki, &host, addr, dir, |_| {})
    }

    /// The spool's instance id.
    pub fn instance(&self) -> String {
        self.spool.instance_id().to_owned()
    }

    fn open_in(
        pki: &Pki,
        cert_host: &str,
        addr: &str,
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut PublisherConfig),
    ) -> AgentLink {
        let spool = Spool::open(SpoolConfig {
            dir: dir.path().to_owned(),
            max_bytes: 256 * 1024 * 1024,
            full: FullPolicy::KeepOldest,
            sync_interval: Duration::from_millis(20),
        })
        .unwrap();
        let mut config = PublisherConfig::new(addr.to_owned(), pki.agent(cert_host));
        config.server_name = Some("localhost".into());
        config.backoff_max = Duration::from_millis(500);
        config.batch_bytes = 32 * 1024;
        config.batch_events = 200;
        adjust(&mut config);
        let publisher = Publisher::spawn(spool.clone(), config).unwrap();
        AgentLink {
            spool,
            publisher: Some(publisher),
            host: cert_host.to_owned(),
            dir,
        }
    }

    /// Spools events `seqs` claiming host `claim` (flushed to disk).
    pub fn send(&self, claim: &str, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            self.spool.append(&event(claim, seq)).unwrap();
        }
        self.spool.flush(true).unwrap();
    }

    /// Waits until the collector acknowledged `seq`.
    pub fn wait_acked(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.spool.stats().acked >= seq {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// A file-open event from `host` with `seq`.
pub fn event(host: &str, seq: u64) -> v1::Event {
    v1::Event {
        id: format!("{host}-{seq}"),
        seq,
        time: Some(pbjson_types_now()),
        host: Some(v1::Host {
            hostname: host.to_owned(),
            ..Default::default()
        }),
        body: Some(Body::FileOpen(v1::FileOpen {
            path: format!("/srv/ephi/{seq}.txt"),
            result: Some(3),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn pbjson_types_now() -> phiguard_proto::pbjson_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    phiguard_proto::pbjson_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Subscribes as the subscriber `soc` to the events matching `filter` from now on.
pub fn subscribe_live(
    rt: &Runtime,
    pki: &Pki,
    addr: &str,
    filter: v1::EventFilter,
) -> tonic::Streaming<v1::Event> {
    rt.block_on(phiguard_collector::tail::subscribe(
        addr,
        Some("localhost"),
        &pki.subscriber(),
        v1::SubscribeRequest {
            filter: Some(filter),
            ..Default::default()
        },
        1 << 20,
    ))
    .expect("subscribe")
}

/// A live subscription to alerts only, as the subscriber `soc`.
pub fn subscribe_alerts(rt: &Runtime, pki: &Pki, addr: &str) -> tonic::Streaming<v1::Event> {
    subscribe_live(
        rt,
        pki,
        addr,
        v1::EventFilter {
            kinds: vec!["alert".into()],
            ..Default::default()
        },
    )
}

/// Replays every stored event of the agents' chains (replay only, from seq 1) as the
/// subscriber `soc`: the collector's audit records of subscriptions ([`replay_audit`]) are
/// left out, so each replay does not change what the next one returns.
pub fn replay_all(rt: &Runtime, pki: &Pki, addr: &str, filter: v1::EventFilter) -> Vec<v1::Event> {
    let mut events = replay_with(rt, &pki.subscriber(), addr, filter).expect("subscribe");
    events.retain(|e| !matches!(e.body, Some(Body::Subscription(_))));
    events
}

/// The collector's audit records of subscriptions, stored so far (as `soc`, who sees all).
pub fn replay_audit(rt: &Runtime, pki: &Pki, addr: &str) -> Vec<v1::SubscriptionAudit> {
    replay_with(
        rt,
        &pki.subscriber(),
        addr,
        v1::EventFilter {
            kinds: vec!["subscription".into()],
            ..Default::default()
        },
    )
    .expect("subscribe")
    .into_iter()
    .filter_map(|e| match e.body {
        Some(Body::Subscription(s)) => Some(s),
        _ => None,
    })
    .collect()
}

/// Replays stored events matching `filter` (replay only, from seq 1) with the subscriber
/// certificate `files`; the status if the collector refuses.
pub fn replay_with(
    rt: &Runtime,
    files: &TlsFiles,
    addr: &str,
    filter: v1::EventFilter,
) -> Result<Vec<v1::Event>, tonic::Status> {
    rt.block_on(async {
        let mut stream = phiguard_collector::tail::subscribe(
            addr,
            Some("localhost"),
            files,
            v1::SubscribeRequest {
                filter: Some(filter),
                start: Some(v1::subscribe_request::Start::SinceSeq(1)),
                replay_only: true,
            },
            64 * 1024 * 1024,
        )
        .await
        .map_err(|e| match e {
            phiguard_collector::tail::TailError::Refused(status) => status,
            other => panic!("subscribe: {other}"),
        })?;
        let mut out = Vec::new();
        while let Some(event) = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("replay within 30 s")?
        {
            out.push(event);
        }
        Ok(out)
    })
}

/// A runtime for clients in tests.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Opens an Ingest stream to `addr` with `config` as agent instance `instance` (header and
/// batch field; "" for the legacy stream) and sends one batch; Ok with the acknowledgement,
/// else `CODE: message` of the refusal.
pub async fn try_ingest_as(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    instance: &str,
    batch: Vec<v1::Event>,
) -> Result<v1::IngestResponse, String> {
    let channel =
        phiguard_collector::tls::connect(addr, Some("localhost"), config, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(v1::IngestRequest {
        events: batch,
        instance_id: instance.to_owned(),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if !instance.is_empty() {
        request
            .metadata_mut()
            .insert("phiguard-instance", instance.parse().unwrap());
    }
    let mut responses = v1::collector_client::CollectorClient::new(channel)
        .ingest(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut last = None;
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(10), responses.message()).await {
            Ok(Ok(Some(ack))) => last = Some(ack),
            Ok(Ok(None)) => return Err("stream closed".into()),
            Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => return Err("no answer within 10 s".into()),
        }
    }
    drop(tx);
    last.ok_or_else(|| "no ack".into())
}

/// A canonical instance id (a UUID) made from `n`.
pub fn uuid_like(n: u128) -> String {
    let hex = format!("{:032x}", (0x4242_u128 << 112) | n);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
