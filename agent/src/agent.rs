//! The agent: start-up (checks, offsets, load, attach) and the event loop
//! (ring buffer → decode → enrich → sinks), with loss reporting and clean shutdown.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use agent_common::event::{Kind, KIND_COUNT};
use phiguard_proto::v1::{self, event::Body};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::{
    config::Config,
    enrich::{host::HostInfo, EnrichSettings, Enricher},
    event::decode::decode,
    kernel::{btf, loader::Sensors, mounts, pins, probe, reader::Reader},
    policy::{self, compile::Compiled, watcher::PolicyWatcher, Trigger},
    sink::Sink,
    watch::WatchSet,
};

/// Most records handled per wake-up before other work (loss reports, shutdown) gets a turn.
const BATCH: usize = 8192;
/// How often kernel loss counters are read and sinks flushed.
const TICK: Duration = Duration::from_secs(1);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// This system cannot run the programs.
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
    /// A pseudo-filesystem is missing.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// Offsets could not be read.
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    /// A watched path is unusable.
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    /// The programs did not load or attach.
    #[error(transparent)]
    Load(#[from] crate::kernel::loader::LoadError),
    /// A previous agent's pinned programs could not be taken over.
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    /// The policy set is invalid.
    #[error(transparent)]
    Policy(#[from] policy::LoadError),
    /// The policy directory cannot be watched for changes.
    #[error(transparent)]
    PolicyWatch(#[from] policy::watcher::WatchError),
    /// The ring buffer could not be registered with tokio.
    #[error("registering the ring buffer with the runtime: {0}")]
    Reader(#[source] std::io::Error),
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Records read from the ring buffer.
    pub records: u64,
    /// Events written to the sinks.
    pub events: u64,
    /// Records that failed to decode.
    pub decode_errors: u64,
    /// Records lost in the kernel (ring buffer full).
    pub kernel_lost: u64,
}

/// Where policies come from and what is in force.
struct Policies {
    dir: Option<PathBuf>,
    config_watches: WatchSet,
    cgroup_root: PathBuf,
    generation: u64,
    requests: mpsc::Receiver<Trigger>,
    requester: mpsc::Sender<Trigger>,
    _watcher: Option<PolicyWatcher>,
}

/// A running agent.
pub struct Agent {
    sensors: Sensors,
    policies: Policies,
    reader: Reader,
    enricher: Enricher,
    sinks: Vec<Box<dyn Sink>>,
    lost_reported: [u64; KIND_COUNT as usize],
    stats: RunStats,
}

impl Agent {
    /// Checks the system, loads and attaches the programs for `config`'s watches, and seeds
    /// the process table. Must run inside a tokio runtime.
    pub fn start(config: &Config, sinks: Vec<Box<dyn Sink>>) -> Result<Agent, StartError> {
        let btf_path = Path::new(btf::VMLINUX_BTF);
        probe::check(btf_path)?;
        for mounted in mounts::ensure_mounted()? {
            info!(mount = mounted, "mounted missing pseudo-filesystem");
        }
        let offsets = btf::kernel_offsets(btf_path)?;
        debug!(?offsets, "kernel struct offsets from BTF");
        let watches = WatchSet::new(&config.watch.paths, &config.watch.ports)?;
        let cgroup_root = mounts::cgroup2_root()?;
        let dir = config.policy.dir.clone();
        // Enforcement outlives the agent: pinned links keep the programs attached. A
        // predecessor's programs may still enforce: exempt this process before compiling
        // (which reads protected directories).
        let pin_root = dir.as_ref().map(|_| Path::new(pins::PIN_DIR));
        if let Some(root) = pin_root {
            if pins::claim(root)? {
                info!(
                    pins = pins::PIN_DIR,
                    "found programs pinned by a previous agent: taking them over"
                );
            }
        }
        let compiled = Arc::new(policy::load(dir.as_deref(), &watches, &cgroup_root)?);
        let mut sensors = Sensors::load(
            &offsets,
            &compiled,
            &config.database,
            &cgroup_root,
            pin_root,
        )?;
        info!(
            lsm = sensors.lsm_active(),
            "enforcement layers: {}",
            if sensors.lsm_active() {
                "BPF LSM for file opens, execs and unix sockets (EPERM); cgroup connect4/6 for TCP (EPERM)"
            } else {
                "SIGKILL at open/exec for files and execs (no BPF LSM); cgroup connect4/6 for TCP (EPERM); unix sockets not enforced"
            }
        );
        if sensors.is_pinned() {
            info!(
                pins = pins::PIN_DIR,
                replaced = sensors.replaced_pins(),
                "programs pinned: enforcement stays in force if the agent stops; `phiguard unload` removes it"
            );
        }
        let slot = sensors.active_slot()?;
        let reader = Reader::new(sensors.take_ring_buffer()?).map_err(StartError::Reader)?;
        let lost_reported = sensors.lost()?;
        let settings = EnrichSettings {
            ancestry_depth: usize::from(config.enrich.ancestry_depth),
            hash_max_bytes: config.enrich.hash_max_bytes,
            retain_exited: config.enrich.retain_exited,
            full_statements: config.database.full_statements,
            db_unix_sockets: config.database.unix_sockets.clone(),
        };
        let mut enricher = Enricher::new(
            HostInfo::detect(&config.agent.hostname),
            Arc::new(watches.clone()),
            settings,
        );
        enricher.set_policy(slot, 1, Arc::clone(&compiled));
        let (requester, requests) = mpsc::channel(4);
        let watcher = match &dir {
            Some(dir) => Some(PolicyWatcher::start(dir, requester.clone())?),
            None => None,
        };
        // A durable sink (the spool) keeps the sequence going across restarts.
        if let Some(seq) = sinks.iter().filter_map(|s| s.resume_seq()).max() {
            enricher.resume_after(seq);
        }
        let paths: Vec<String> = watches
            .paths
            .iter()
            .map(|w| w.path.display().to_string())
            .collect();
        info!(
            cgroup = %cgroup_root.display(),
            watch_paths = ?paths,
            watch_ports = ?watches.ports,
            "phiguard running: {}; events are flowing",
            sensors.summary()
        );
        let mut agent = Agent {
            sensors,
            policies: Policies {
                dir,
                config_watches: watches,
                cgroup_root,
                generation: 1,
                requests,
                requester,
                _watcher: watcher,
            },
            reader,
            enricher,
            sinks,
            lost_reported,
            stats: RunStats::default(),
        };
        agent.report_policy(&compiled, Trigger::Start);
        Ok(agent)
    }

    /// Whether the BPF LSM programs are attached (denials are `EPERM`, not SIGKILL).
    pub fn lsm_active(&self) -> bool {
        self.sensors.lsm_active()
    }

    /// A handle that asks the running agent to reload its policies (SIGHUP does this).
    pub fn reload_handle(&self) -> mpsc::Sender<Trigger> {
        self.policies.requester.clone()
    }

    /// Runs until `shutdown` completes, then drains what the kernel already wrote, flushes the
    /// sinks and detaches the programs.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> std::io::Result<RunStats> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        let mut ticks: u64 = 0;
        loop {
            // While the ring buffer has a backlog, `read_batch` is ready at once and this task
            // would never return to the runtime: its timer driver would not run and the tick
            // (loss reports) would wait until the backlog is gone. Yield once per batch, and
            // poll the tick and reload requests before the reader, so they always go first.
            tokio::task::yield_now().await;
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = tick.tick() => {
                    ticks += 1;
                    self.report_losses();
                    if ticks.is_multiple_of(60) {
                        self.enricher.refresh_clock();
                    }
                    self.flush()?;
                }
                Some(trigger) = self.policies.requests.recv() => {
                    if trigger == Trigger::FileChange {
                        // Let the editor finish writing, and fold its writes into one reload.
                        tokio::time::sleep(policy::watcher::SETTLE).await;
                        while self.policies.requests.try_recv().is_ok() {}
                    }
                    self.reload(trigger);
                    self.flush()?;
                }
                read = self.reader.read_batch(BATCH, |bytes| {
                    Self::handle(&mut self.enricher, &mut self.sinks, &mut self.stats, bytes);
                }) => {
                    read?;
                    self.flush()?;
                }
            }
        }
        let (enricher, sinks, stats) = (&mut self.enricher, &mut self.sinks, &mut self.stats);
        self.reader
            .drain(|bytes| Self::handle(enricher, sinks, stats, bytes));
        self.report_losses();
        self.flush()?;
        info!(
            records = self.stats.records,
            events = self.stats.events,
            kernel_lost = self.stats.kernel_lost,
            decode_errors = self.stats.decode_errors,
            pinned = self.sensors.is_pinned(),
            "phiguard stopped; {}",
            if self.sensors.is_pinned() {
                "pinned programs stay attached and keep enforcing"
            } else {
                "programs detached"
            }
        );
        Ok(self.stats)
    }

    fn handle(
        enricher: &mut Enricher,
        sinks: &mut [Box<dyn Sink>],
        stats: &mut RunStats,
        bytes: &[u8],
    ) {
        stats.records += 1;
        let raw = match decode(bytes) {
            Ok(raw) => raw,
            Err(error) => {
                stats.decode_errors += 1;
                warn!(%error, "undecodable ring-buffer record");
                return;
            }
        };
        for event in enricher.enrich(raw) {
            Self::emit(sinks, stats, &event);
        }
    }

    fn emit(sinks: &mut [Box<dyn Sink>], stats: &mut RunStats, event: &v1::Event) {
        stats.events += 1;
        for sink in sinks.iter_mut() {
            if let Err(error) = sink.write(event) {
                warn!(%error, "sink write failed");
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        for sink in &mut self.sinks {
            sink.flush()?;
        }
        Ok(())
    }

    /// Loads the policy directory again; the new set replaces the one in force only when it is
    /// valid as a whole. Either way an event says what happened.
    fn reload(&mut self, trigger: Trigger) {
        let p = &self.policies;
        let loaded = policy::load(p.dir.as_deref(), &p.config_watches, &p.cgroup_root);
        let compiled = match loaded {
            Ok(compiled) => Arc::new(compiled),
            Err(e) => {
                error!(trigger = trigger.as_str(), error = %e, generation = p.generation, "policy reload refused; the policies in force stay");
                let event = self.enricher.agent_event(Body::PolicyLoad(v1::PolicyLoad {
                    ok: false,
                    error: e.to_string(),
                    generation: p.generation,
                    directory: dir_text(p.dir.as_deref()),
                    trigger: trigger.as_str().to_owned(),
                    ..v1::PolicyLoad::default()
                }));
                Self::emit(&mut self.sinks, &mut self.stats, &event);
                return;
            }
        };
        match self.sensors.install(&compiled) {
            Ok(slot) => {
                self.policies.generation += 1;
                self.enricher
                    .set_policy(slot, self.policies.generation, Arc::clone(&compiled));
                self.report_policy(&compiled, trigger);
            }
            Err(e) => {
                // A map write failed half-way: the slot being filled was not switched to.
                error!(error = %e, "installing the reloaded policies failed; the policies in force stay");
            }
        }
    }

    /// Logs and reports the policy set now in force.
    fn report_policy(&mut self, compiled: &Compiled, trigger: Trigger) {
        let p = &self.policies;
        let protections = compiled.protections(self.sensors.lsm_active());
        info!(
            trigger = trigger.as_str(),
            generation = p.generation,
            dir = %dir_text(p.dir.as_deref()),
            policies = ?compiled.policies,
            "policies in force: {} protection(s)",
            protections.len()
        );
        for line in &protections {
            info!(generation = p.generation, "protects {line}");
        }
        for warning in &compiled.warnings {
            warn!(generation = p.generation, "policy: {warning}");
        }
        if p.dir.is_none() {
            return; // observe only: nothing to report
        }
        let event = self.enricher.agent_event(Body::PolicyLoad(v1::PolicyLoad {
            ok: true,
            error: String::new(),
            generation: p.generation,
            directory: dir_text(p.dir.as_deref()),
            policies: compiled.policies.clone(),
            protections,
            warnings: compiled.warnings.clone(),
            trigger: trigger.as_str().to_owned(),
        }));
        Self::emit(&mut self.sinks, &mut self.stats, &event);
    }

    /// Turns new kernel and sink losses into `EventsLost` events and a warning: never silent.
    fn report_losses(&mut self) {
        self.report_sink_losses();
        self.report_kernel_losses();
    }

    /// Sinks that dropped events (a full spool) report them once they have room again.
    fn report_sink_losses(&mut self) {
        let losses: Vec<_> = self
            .sinks
            .iter_mut()
            .filter_map(|s| s.take_losses())
            .collect();
        for loss in losses {
            warn!(source = ?loss.source, lost = loss.count, total = loss.total, "sink dropped events");
            let event = self.enricher.agent_event(Body::EventsLost(v1::EventsLost {
                source: loss.source as i32,
                kind: String::new(),
                count: loss.count,
                total: loss.total,
            }));
            Self::emit(&mut self.sinks, &mut self.stats, &event);
        }
    }

    fn report_kernel_losses(&mut self) {
        let totals = match self.sensors.lost() {
            Ok(totals) => totals,
            Err(error) => {
                warn!(%error, "cannot read kernel loss counters");
                return;
            }
        };
        for kind in Kind::ALL {
            let i = kind as usize;
            let new = totals[i].saturating_sub(self.lost_reported[i]);
            if new == 0 {
                continue;
            }
            self.lost_reported[i] = totals[i];
            self.stats.kernel_lost += new;
            warn!(kind = ?kind, lost = new, total = totals[i], "kernel ring buffer full: events lost");
            let event = self.enricher.agent_event(Body::EventsLost(v1::EventsLost {
                source: v1::LossSource::KernelRingBuffer as i32,
                kind: format!("{kind:?}"),
                count: new,
                total: totals[i],
            }));
            Self::emit(&mut self.sinks, &mut self.stats, &event);
        }
    }
}

fn dir_text(dir: Option<&Path>) -> String {
    dir.map(|d| d.display().to_string()).unwrap_or_default()
}
