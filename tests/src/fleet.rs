//! Helpers for the fleet tier: a three-node NATS JetStream cluster of real `nats-server`
//! processes on loopback (client and cluster ports of their own, stores in a temporary
//! directory), which the collectors' `[jetstream]` sections point at.

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// The `nats-server` binary: `PHIGUARD_NATS_SERVER`, else Debian's `/usr/sbin/nats-server`
/// (`cargo xtask setup` installs it), else `nats-server` on `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PHIGUARD_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let debian = Path::new("/usr/sbin/nats-server");
    if debian.exists() {
        return debian.to_owned();
    }
    PathBuf::from("nats-server")
}

/// A free loopback port (bound and released: the node binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `nats-server` of the cluster.
pub struct NatsNode {
    child: Option<Child>,
    config: PathBuf,
    /// Its name (`n1` …).
    pub name: String,
    /// Client URL, `nats://127.0.0.1:PORT` (`tls://` with TLS).
    pub url: String,
    /// Everything it logged.
    pub log: Arc<Mutex<String>>,
}

impl NatsNode {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process still runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the node again on its ports and store (after [`NatsNode::kill9`]), and waits
    /// until it says it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        let (child, log) = spawn(&self.config);
        self.child = Some(child);
        self.log = log;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log.lock().unwrap().contains("Server is ready") {
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not restart",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the node is gone without a word to its peers.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `nats-server -c CONFIG`, collecting its log.
fn spawn(config: &Path) -> (Child, Arc<Mutex<String>>) {
    let mut child = Command::new(nats_server_binary())
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {}: {e} (cargo xtask setup installs Debian's nats-server)",
                nats_server_binary().display()
            )
        });
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (child, log)
}

/// TLS for clients of the cluster's nodes: their certificate and key, and the CA client
/// certificates must chain to (every client must present one: `verify: true`).
pub struct NatsTls {
    /// The CA of client certificates.
    pub ca: PathBuf,
    /// The nodes' certificate (for `localhost` and `127.0.0.1`).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// A JetStream cluster of `nats-server` processes with routes to each other.
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsNode>,
    /// Keeps the stores and configuration files (removed on drop).
    pub dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until each says it is ready and the cluster's JetStream
    /// has a leader.
    pub fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, None)
    }

    /// Like [`NatsCluster::start`], with clients required to speak TLS (`tls://` URLs) and to
    /// present a certificate from `tls.ca`. Routes between the nodes stay plain (loopback).
    pub fn start_tls(size: usize, tls: &NatsTls) -> NatsCluster {
        NatsCluster::start_with(size, Some(tls))
    }

    fn start_with(size: usize, tls: Option<&NatsTls>) -> NatsCluster {
        let tls_block = tls.map_or(String::new(), |t| {
            format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n",
                t.cert.display(),
                t.key.display(),
                t.ca.display()
            )
        });
        let scheme = if tls.is_some() { "tls" } else { "nats" };
        let dir = tempfile::Builder::new()
            .prefix("phiguard-nats-")
            .tempdir()
            .unwrap();
        let client: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let cluster: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for i in 0..size {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}}\n\
                     cluster {{\n  name: phiguard-test\n  listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}\n{tls_block}",
                    client[i],
                    store.display(),
                    cluster[i],
                ),
            )
            .unwrap();
            let (child, log) = spawn(&config);
            nodes.push(NatsNode {
                child: Some(child),
                config,
                name,
                url: format!("{scheme}://127.0.0.1:{}", client[i]),
                log,
            });
        }
        let cluster = NatsCluster { nodes, dir };
        for node in &cluster.nodes {
            assert!(
                cluster.wait_log(node, "Server is ready", Duration::from_secs(20)),
                "nats-server {} did not start:\n{}",
                node.name,
                node.log.lock().unwrap()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.nodes.iter().any(|n| {
            let log = n.log.lock().unwrap();
            log.contains("JetStream cluster new metadata leader")
                || log.contains("Self is new JetStream cluster metadata leader")
        }) {
            assert!(
                Instant::now() < deadline,
                "no JetStream metadata leader within 30 s:\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn wait_log(&self, node: &NatsNode, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if node.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Every node's client URL, as a TOML array's items (`"nats://…", …`).
    pub fn servers_toml(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every node's log, headed by its name.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, n.log.lock().unwrap()))
            .collect()
    }
}

/// Every message of the JetStream stream `stream` (the collectors' default `PHIGUARD`) as
/// it is now, read from the node at `url` in stream order: (subject, decoded event), one
/// entry per event (a message holding a run of events gives one per event). For checks that
/// something did, or did not, reach the stream.
pub fn stream_messages(url: &str, stream: &str) -> Vec<(String, phiguard_proto::v1::Event)> {
    stream_runs(url, stream)
        .into_iter()
        .flat_map(|(subject, events)| events.into_iter().map(move |e| (subject.clone(), e)))
        .collect()
}

/// Every message of the JetStream stream `stream` as it is now, read from the node at `url`
/// in stream order: (subject, the message's events: a run, or one event in the format before
/// runs).
pub fn stream_runs(url: &str, stream: &str) -> Vec<(String, Vec<phiguard_proto::v1::Event>)> {
    let rt = crate::e2e::runtime();
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.expect("the stream");
        let state = stream.info().await.expect("stream info").state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            let events = phiguard_collector::jetstream::run::decode(
                Some(&message.headers),
                message.payload.as_ref(),
            )
            .expect("every message of the stream holds events");
            out.push((message.subject.to_string(), events));
        }
        out
    })
}
