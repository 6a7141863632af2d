//! Helpers shared by the privileged test suites: start the real agent in-process with a
//! channel sink, run commands, and wait for the events they cause; and (in [`e2e`]) run the
//! collector, agent links and subscribers over mutual TLS.

pub mod agent;
pub mod e2e;
pub mod fleet;
pub mod tmpfs;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use phiguard::{
    agent::{Agent, RunStats},
    config::Config,
    kernel::{layer::FileLayer, pins},
    policy::Trigger,
    sink::{channel::ChannelSink, Sink},
};
use phiguard_proto::v1::{self, event::Body};
use tokio::{
    runtime::Runtime,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// How long a test waits for a started agent to say it is ready: a guard against a hang, not
/// a measure of speed. Starting runs the kernel's verifier over every program: about 0.7 s on
/// the host tier's kernel (0.45 s of it for the one open-exit program;
/// `RUST_LOG=phiguard=debug` prints each program's load time), 30 s and more under the VM
/// tier's software emulation, where it went past 120 s once while four VMs shared the two
/// CPUs of the test machine.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(300);

/// Removes the pins under [`pins::PIN_DIR`] when dropped: a test that enforces leaves no
/// enforcement behind, pass or fail.
pub struct UnloadOnDrop;

impl Drop for UnloadOnDrop {
    fn drop(&mut self) {
        let _ = pins::unload(Path::new(pins::PIN_DIR));
    }
}

/// Panics unless running as root (host-tier tests load eBPF programs).
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "host-tier tests load eBPF programs into the running kernel and need root: \
             run `sudo -E cargo xtask test` (CI runs them as root)"
        );
    }
}

/// A running agent whose events the test reads.
pub struct Harness {
    runtime: Runtime,
    agent: Option<Agent>,
    task: Option<JoinHandle<std::io::Result<RunStats>>>,
    shutdown: Option<oneshot::Sender<()>>,
    events: mpsc::UnboundedReceiver<v1::Event>,
    reload: mpsc::Sender<Trigger>,
    /// The agent pins its programs (policies are enforced): unpinned when the test ends.
    pinned: bool,
    /// The BPF LSM programs are attached: denials are `EPERM` rather than SIGKILL.
    pub lsm: bool,
    /// The layer deciding opens of protected files (LSM and fanotify refuse with `EPERM`).
    pub file_layer: FileLayer,
    /// Every event received so far.
    pub seen: Vec<v1::Event>,
    /// The programs that did not attach, each as `name (hook): why`.
    pub not_attached: Vec<String>,
    /// Where the metrics endpoint listens (`[metrics] listen` set).
    pub metrics_addr: Option<String>,
    /// The agent's metrics (shared with it: they keep counting while it runs).
    pub metrics: phiguard::metrics::Metrics,
}

impl Harness {
    /// Loads and attaches the programs watching `paths` and `ports`, and starts reading.
    pub fn start(paths: &[PathBuf], ports: &[u16]) -> Harness {
        let mut harness = Harness::attach_only(paths, ports);
        harness.start_reading();
        harness
    }

    /// Loads and attaches the programs but reads nothing yet: records wait in the ring buffer
    /// until [`Harness::start_reading`].
    pub fn attach_only(paths: &[PathBuf], ports: &[u16]) -> Harness {
        let config = Config::default()
            .with_overrides(paths, ports)
            .expect("test configuration is valid");
        Harness::attach_with(&config)
    }

    /// Loads and attaches the programs for `config` (watches and policies) and starts reading.
    pub fn start_with(config: &Config) -> Harness {
        let mut harness = Harness::attach_with(config);
        harness.start_reading();
        harness
    }

    /// Loads and attaches the programs for `config`; reads nothing yet.
    pub fn attach_with(config: &Config) -> Harness {
        require_root();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (tx, events) = mpsc::unbounded_channel();
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ChannelSink(tx))];
        let agent = runtime
            .block_on(async { Agent::start(config, sinks, None) })
            .unwrap_or_else(|e| panic!("agent failed to start: {e}"));
        Harness {
            pinned: config.policy.dir.is_some(),
            lsm: agent.lsm_active(),
            file_layer: agent.file_layer(),
            not_attached: agent.programs_not_attached(),
            reload: agent.reload_handle(),
            metrics_addr: agent.metrics_addr().map(str::to_owned),
            metrics: agent.metrics().clone(),
            runtime,
            agent: Some(agent),
            task: None,
            shutdown: None,
            events,
            seen: Vec::new(),
        }
    }

    /// Asks the agent to reload its policies, as SIGHUP does.
    pub fn request_reload(&self) {
        self.reload
            .try_send(Trigger::Signal)
            .expect("reload request queued");
    }

    /// Counts the database capture records the kernel sends from now on that hold `needle`
    /// anywhere in their bytes (call before [`Harness::start_reading`]): what of a session's
    /// traffic leaves the kernel, not only what reaches an event.
    pub fn count_db_records_holding(&mut self, needle: &[u8]) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        let (seen, needle) = (count.clone(), needle.to_vec());
        self.agent
            .as_mut()
            .expect("count_db_records_holding is called before start_reading")
            .tap_db_records(Box::new(move |record| {
                if record.windows(needle.len()).any(|w| w == needle) {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }));
        count
    }

    /// Starts the event loop.
    pub fn start_reading(&mut self) {
        let agent = self.agent.take().expect("start_reading called once");
        let (tx, rx) = oneshot::channel();
        self.shutdown = Some(tx);
        self.task = Some(self.runtime.spawn(agent.run(async {
            let _ = rx.await;
        })));
    }

    /// Waits up to `timeout` for an event matching `pred` (also searching events already seen).
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&v1::Event) -> bool,
    ) -> Option<v1::Event> {
        if let Some(found) = self.seen.iter().find(|e| pred(e)) {
            return Some(found.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(left, self.events.recv()).await });
            match next {
                Ok(Some(event)) => {
                    let hit = pred(&event);
                    self.seen.push(event.clone());
                    if hit {
                        return Some(event);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Like [`Harness::wait_for`] but panics with what was seen when nothing matches.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&v1::Event) -> bool) -> v1::Event {
        match self.wait_for(Duration::from_secs(10), pred) {
            Some(event) => event,
            None => panic!(
                "no event {what} within 10 s; saw {} events:\n{}",
                self.seen.len(),
                self.dump()
            ),
        }
    }

    /// The events seen so far, one JSON line each (for failure messages).
    pub fn dump(&self) -> String {
        self.seen
            .iter()
            .rev()
            .take(40)
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether a refused open fails with `EPERM` (BPF LSM or fanotify) rather than killing.
    pub fn file_eperm(&self) -> bool {
        matches!(self.file_layer, FileLayer::Lsm | FileLayer::Fanotify)
    }

    /// Stops the agent (detaching the programs) and returns its counters.
    pub fn stop(&mut self) -> RunStats {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("agent was reading");
        let stats = self
            .runtime
            .block_on(task)
            .expect("agent task")
            .expect("agent run");
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
        stats
    }
}

impl Drop for Harness {
    /// Stops the agent if it still runs, and removes its pins: a test leaves no program behind.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = self.runtime.block_on(task);
        }
        self.agent.take();
        if self.pinned {
            if let Err(e) = pins::unload(Path::new(pins::PIN_DIR)) {
                eprintln!("removing the test's pinned programs: {e}");
            }
        }
    }
}

/// The `FileOpen` body of an event, if it is one.
pub fn file_open(event: &v1::Event) -> Option<&v1::FileOpen> {
    match &event.body {
        Some(Body::FileOpen(f)) => Some(f),
        _ => None,
    }
}

/// The subject process of an event.
pub fn process(event: &v1::Event) -> &v1::Process {
    event.process.as_ref().expect("event has a process")
}

/// A directory tree for file tests: `root/watched` (watched, world-traversable) and
/// `root/other` (not watched), removed on drop.
pub struct Tree {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The watched directory.
    pub watched: PathBuf,
    /// A directory next to it, not watched.
    pub other: PathBuf,
}

impl Tree {
    /// Creates the tree under /tmp.
    pub fn new() -> Tree {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("phiguard-test-")
            .tempdir()
            .expect("tempdir");
        let watched = dir.path().join("ephi");
        let other = dir.path().join("other");
        std::fs::create_dir(&watched).unwrap();
        std::fs::create_dir(&other).unwrap();
        for p in [dir.path(), &watched, &other] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Tree {
            dir,
            watched,
            other,
        }
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}
