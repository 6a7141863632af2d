//! The agent: start-up (checks, offsets, load, attach) and the event loop
//! (ring buffer → decode → enrich → sinks, in [`pipeline`]), with clean shutdown. What the
//! agent says about itself (tamper, losses, faults, heartbeats) goes through one path,
//! [`report`].

pub mod pipeline;
pub mod report;
mod takeover;

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use phiguard_common::{
    event::{Kind, KIND_COUNT},
    program::{Program, PROGRAM_COUNT},
};
use phiguard_proto::v1::{self, event::Body};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use self::pipeline::{DbRecordTap, RunStats};
use self::{
    pipeline::Pipeline,
    report::{Refusal, Report},
};
use crate::{
    breakglass::{store::Store, BreakGlass, GrantMap},
    config::{Config, WhileRestarting},
    enrich::{host::HostInfo, EnrichSettings, Enricher},
    fanotify::{interim::Interim, FanotifyError, FanotifyLayer, Record},
    kernel::{
        layer::{FileLayer, KernelLayers},
        loader::{self, Enforcement, Sensors},
        mounts, pins,
        reader::{Batch, Reader},
        startup,
    },
    link::Link,
    metrics::{KindLabels, LayerLabels, Metrics, ProgramLabels},
    policy::{
        self, compile::ResourceKind, enforcement::EnforcementLayer, watcher::PolicyWatcher, Trigger,
    },
    sink::Sink,
    status::{self, ProgramState, ReloadState, Status},
    watch::WatchSet,
};

/// The most of a backlog handled per wake-up before other work (loss reports, reloads,
/// shutdown) gets a turn: a record limit, and a time limit for machines (or emulators) slow
/// enough that the record limit alone would hold the tick back for seconds.
const BATCH: Batch = Batch {
    records: 8192,
    time: Duration::from_millis(50),
};
/// How often kernel loss counters are read and sinks flushed.
const TICK: Duration = Duration::from_secs(1);
/// Ticks between integrity checks of the agent's kernel state (links, pins, control maps).
const INTEGRITY_TICKS: u64 = 5;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// This system cannot run the programs (capabilities, kernel, mounts, BTF offsets).
    #[error(transparent)]
    Kernel(#[from] startup::StartupError),
    /// A pseudo-filesystem is missing.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// A watched path is unusable.
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    /// The programs did not load or attach.
    #[error(transparent)]
    Load(#[from] crate::kernel::error::LoadError),
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
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The fanotify layer, chosen for file opens, could not start (the kernel programs were
    /// told not to decide them: starting without it would leave them unenforced).
    #[error("the fanotify layer for protected file opens: {0}")]
    Fanotify(#[from] FanotifyError),
    /// The map of what each process executed could not be opened for the fanotify layer.
    #[error("the kernel's record of executed programs, for the fanotify layer: {0}")]
    Identities(String),
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

/// The fanotify layer and the decision records it hands to the event loop.
struct Fanotify {
    layer: FanotifyLayer,
    records: mpsc::Receiver<Record>,
    lost_reported: u64,
}

/// A running agent.
pub struct Agent {
    sensors: Sensors,
    file_layer: FileLayer,
    fanotify: Option<Fanotify>,
    policies: Policies,
    reader: Reader,
    enricher: Enricher,
    pipeline: Pipeline,
    lost_reported: [u64; KIND_COUNT as usize],
    faults_reported: [u64; PROGRAM_COUNT as usize],
    metrics: Metrics,
    status: Status,
    status_file: Option<PathBuf>,
    /// The previous agent's programs' records, to drain once this agent runs.
    previous: Option<takeover::Handover>,
    link: Option<Link>,
    /// The configuration in force and how to read it again (SIGHUP).
    config: Option<(Config, ConfigSource)>,
    /// The kernel's break-glass map (while policies are enforced), and the grants mirrored
    /// into it once [`Agent::honour_break_glass`] named their directory.
    grant_map: Option<GrantMap>,
    break_glass: Option<BreakGlass>,
}

/// Reads the configuration again for a reload: the file's errors as text (file, line, field).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send>;

impl Agent {
    /// Checks the system, loads and attaches the programs for `config`'s watches, and seeds
    /// the process table. Must run inside a tokio runtime.
    pub fn start(
        config: &Config,
        sinks: Vec<Box<dyn Sink>>,
        kept: Option<Interim>,
    ) -> Result<Agent, StartError> {
        // The fanotify group systemd kept across a restart (`[policy] while_restarting`), served
        // since the process began ([`Interim::take`]): kept while opens may still wait for it,
        // else released at once, before anything below can hang or fail.
        let kept = match (config.policy.while_restarting, kept) {
            (WhileRestarting::Wait, Some(interim)) if crate::fdstore::within_bound() => {
                Some(interim)
            }
            (_, kept) => {
                release_kept(kept);
                None
            }
        };
        let offsets = startup::prepare()?;
        match mounts::ensure_securityfs() {
            Ok(true) => info!(
                mount = mounts::SECURITYFS,
                "mounted missing pseudo-filesystem"
            ),
            Ok(false) => {}
            Err(e) => warn!("{e}; the active LSM list cannot be read: BPF LSM is not assumed"),
        }
        // Which layer really runs: BPF LSM only when `bpf` is an active LSM (else its programs
        // attach and never run) and its programs load; else fanotify; else SIGKILL.
        let kernel_layers = KernelLayers::detect();
        // Without a policy directory nothing is ever enforced (it changes only with a
        // restart): the BPF LSM programs are not loaded, so there is nothing to probe.
        let enforcing = config.policy.dir.is_some();
        let planned = kernel_layers.plan(|| enforcing && loader::lsm_usable().unwrap_or(false));
        let lsm_inactive = if !kernel_layers.bpf_lsm_active() {
            Some(kernel_layers.lsm_inactive_reason())
        } else if enforcing && planned != FileLayer::Lsm {
            // Listed, but the probe's program did not load: the others would not either.
            Some(kernel_layers.lsm_refused_reason())
        } else {
            None
        };
        let enforcement = Enforcement {
            lsm_inactive,
            fanotify_files: planned == FileLayer::Fanotify,
            never_kill: config.policy.never_kill.clone(),
            lsm_labels: planned == FileLayer::Lsm,
            enforcing,
        };
        let watches = WatchSet::new(&config.watch.paths, &config.watch.ports)?;
        let cgroup_root = mounts::cgroup2_root()?;
        let dir = config.policy.dir.clone();
        // Enforcement outlives the agent: pinned links keep the programs attached. A
        // predecessor's programs may still enforce: exempt this process before compiling
        // (which reads protected directories).
        let pin_root = dir.as_ref().map(|_| Path::new(pins::PIN_DIR));
        let mut previous = None;
        if let Some(root) = pin_root {
            if pins::claim(root)? {
                info!(
                    pins = pins::PIN_DIR,
                    "found programs pinned by a previous agent: taking them over"
                );
                // Before they are replaced: their ring buffer holds what they decided while no
                // agent read it.
                previous = takeover::find_previous(root);
            }
        }
        let compiled = Arc::new(policy::load(dir.as_deref(), &watches, &cgroup_root)?);
        let mut sensors = Sensors::load(
            &offsets,
            &compiled,
            &config.database,
            &cgroup_root,
            pin_root,
            &enforcement,
        )?;
        let file_layer = if sensors.lsm_active() {
            FileLayer::Lsm
        } else if enforcement.fanotify_files {
            FileLayer::Fanotify
        } else {
            FileLayer::Signal
        };
        let metrics = Metrics::new();
        let metrics_addr = match config.metrics.listen {
            Some(addr) => Some(metrics.clone().serve(addr)?),
            None => None,
        };
        info!(
            lsm = sensors.lsm_active(),
            files = file_layer.name(),
            lsm_list = kernel_layers.lsm_list.as_deref().map(str::trim).unwrap_or("unreadable"),
            "enforcement layers: {}",
            match file_layer {
                FileLayer::Lsm => "BPF LSM for file opens, execs and unix sockets (EPERM); cgroup connect4/6 for TCP (EPERM)",
                FileLayer::Fanotify => "fanotify permission events for file opens and execs (EPERM, no BPF LSM; SIGKILL at open/exec exit while the agent is down); cgroup connect4/6 for TCP (EPERM); unix sockets not enforced",
                FileLayer::Signal => "SIGKILL at open/exec for files and execs (no BPF LSM, no fanotify); cgroup connect4/6 for TCP (EPERM); unix sockets not enforced",
            }
        );
        let gaps = sensors.lsm_gaps();
        if file_layer == FileLayer::Lsm && !gaps.is_empty() {
            warn!(
                files = %ResourceKind::File.layer(file_layer, gaps),
                execs = %ResourceKind::Exec.layer(file_layer, gaps),
                unix = %ResourceKind::Unix.layer(file_layer, gaps),
                "some BPF LSM programs did not load on this kernel: each loses its own hook, BPF LSM still decides the rest"
            );
        }
        if sensors.is_pinned() {
            info!(
                pins = pins::PIN_DIR,
                replaced = sensors.replaced_pins(),
                "programs pinned: enforcement stays in force if the agent stops; `phiguard unload` removes it"
            );
        }
        let slot = sensors.active_slot()?;
        let grant_map = match &dir {
            Some(_) => match sensors.break_glass_map() {
                Ok(map) => Some(GrantMap::new(map)),
                Err(e) => {
                    warn!("the kernel's break-glass map: {e}; no break-glass grant is honoured");
                    None
                }
            },
            None => None,
        };
        let mut while_restarting = None;
        let fanotify = match (file_layer, &dir) {
            (FileLayer::Fanotify, Some(_)) => {
                let (tx, records) = mpsc::channel(crate::fanotify::QUEUE);
                // Who opens: the kernel's record of each process's exec, where this agent sees
                // the pids it is keyed by (not from inside a pid namespace).
                let identities = match crate::kernel::bpf_sys::global_tgid() {
                    Ok(me) if me == std::process::id() => Some(
                        sensors
                            .exec_identities()
                            .map_err(|e| StartError::Identities(e.to_string()))?,
                    ),
                    _ => {
                        warn!("in a pid namespace: the fanotify layer reads who opens from /proc/PID/exe, which a process can point elsewhere");
                        None
                    }
                };
                let layer = FanotifyLayer::start(
                    Arc::clone(&compiled),
                    slot,
                    crate::fanotify::Output {
                        records: tx,
                        counters: metrics.fanotify.clone(),
                    },
                    &cgroup_root,
                    identities,
                    grant_map.as_ref().and_then(|m| m.try_clone().ok()),
                    kept,
                )?;
                crate::fdstore::answered();
                while_restarting = Some(keep_group(config, &layer));
                info!(
                    "fanotify layer deciding protected file opens: {}",
                    layer.summary()
                );
                Some(Fanotify {
                    layer,
                    records,
                    lost_reported: 0,
                })
            }
            _ => {
                release_kept(kept);
                None
            }
        };
        let reader = Reader::new(sensors.take_ring_buffer()?).map_err(StartError::Reader)?;
        let lost_reported = sensors.lost()?;
        let faults_reported = sensors.faults()?;
        let settings = EnrichSettings {
            ancestry_depth: usize::from(config.enrich.ancestry_depth),
            hash_max_bytes: config.enrich.hash_max_bytes,
            retain_exited: config.enrich.retain_exited,
            full_statements: config.database.full_statements,
            db_unix_sockets: config.database.unix_sockets.clone(),
            argv_redactor: crate::db::argv::ArgvRedactor::new(
                config
                    .database
                    .redact_patterns
                    .iter()
                    .map(|p| p.0.clone())
                    .collect(),
            ),
        };
        let mut enricher = Enricher::new(
            HostInfo::detect(&config.agent.hostname),
            Arc::new(watches.clone()),
            settings,
        );
        // Generation 0 means observe only (no policy directory), in the log, the metric, the
        // status and the events alike; the first policy set in force is generation 1.
        let generation = u64::from(dir.is_some());
        enricher.set_policy(slot, generation, Arc::clone(&compiled));
        let (requester, requests) = mpsc::channel(4);
        let watcher = match &dir {
            Some(dir) => Some(PolicyWatcher::start(dir, requester.clone())?),
            None => None,
        };
        // A durable sink (the spool) keeps the sequence going across restarts.
        let pipeline = Pipeline::new(sinks, metrics.clone());
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
            file_layer,
            fanotify,
            policies: Policies {
                dir,
                config_watches: watches,
                cgroup_root,
                generation,
                requests,
                requester,
                _watcher: watcher,
            },
            reader,
            enricher,
            pipeline,
            lost_reported,
            faults_reported,
            metrics,
            status: Status {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: status::now(),
                metrics: metrics_addr.map(|a| a.to_string()),
                while_restarting,
                ..Status::default()
            },
            status_file: None,
            previous: previous.map(|found| takeover::Handover::new(found, slot, &compiled)),
            link: None,
            config: None,
            grant_map,
            break_glass: None,
        };
        for kind in Kind::ALL {
            // Every kind from the start, so a loss is a counter moving rather than appearing.
            let name = format!("{kind:?}");
            agent
                .metrics
                .kernel_lost
                .get_or_create(&KindLabels {
                    kind: name.clone().into(),
                })
                .inc_by(0);
            let total = agent.lost_reported[kind as usize];
            agent.status.kernel_lost.insert(name, total);
        }
        for program in Program::ALL {
            agent
                .metrics
                .kernel_faults
                .get_or_create(&ProgramLabels {
                    program: program.name().into(),
                })
                .inc_by(0);
            let total = agent.faults_reported[program as usize];
            agent
                .status
                .kernel_faults
                .insert(program.name().to_owned(), total);
        }
        agent.describe_programs();
        agent.report(Report::PolicyInForce {
            compiled,
            trigger: Trigger::Start,
        });
        Ok(agent)
    }

    /// Makes the agent write its status to `path` now and on every tick, and remove it when it
    /// stops (`phiguard status` reads it).
    pub fn write_status_to(&mut self, path: &Path) {
        if let Some(previous) = &mut self.previous {
            // What the previous agent last reported, before this one writes over it.
            previous.reported_by_previous(path);
        }
        self.status_file = Some(path.to_owned());
        self.write_status();
    }

    /// Honours the break-glass grants in `dir` (see [`crate::breakglass`]); only while
    /// policies are enforced (without them nothing is refused). Grants already there are
    /// named in decisions at once — a predecessor's records may carry them — and brought in
    /// line with the kernel when the event loop starts.
    pub fn honour_break_glass(&mut self, dir: &Path) {
        let Some(map) = self.grant_map.as_ref().and_then(|m| m.try_clone().ok()) else {
            return;
        };
        let store = Store::new(dir);
        if let Ok((grants, _)) = store.list() {
            for grant in &grants {
                self.enricher.set_break_glass(grant);
            }
        }
        info!(dir = %dir.display(), "break-glass grants are read from this directory every second");
        self.break_glass = Some(BreakGlass::new(store, map));
    }

    /// Brings the break-glass grants in line with their directory and reports what changed.
    fn refresh_break_glass(&mut self) {
        let Some(break_glass) = &mut self.break_glass else {
            return;
        };
        let (events, grants) = break_glass.refresh();
        let in_force: Vec<status::GrantState> = break_glass
            .in_force()
            .map(|g| status::GrantState {
                id: g.id.clone(),
                who: g.scope.describe(),
                expires_at: g.expires_at_ms / 1000,
                reason: g.reason.clone(),
            })
            .collect();
        for grant in &grants {
            self.enricher.set_break_glass(grant);
        }
        for body in events {
            let event = self.enricher.agent_event(Body::BreakGlass(body));
            self.emit_own(&event);
        }
        self.metrics
            .break_glass_grants
            .set(i64::try_from(in_force.len()).unwrap_or(i64::MAX));
        self.status.break_glass = in_force;
    }

    /// Makes the agent watch its collector link: spool depth and last acknowledgement in the
    /// metrics and the status, and a heartbeat event every interval.
    pub fn watch_link(&mut self, link: Link) {
        self.link = Some(link);
        self.update_link();
    }

    /// Takes a snapshot of the collector link into the metrics and the status.
    fn update_link(&mut self) {
        if let Some(link) = &self.link {
            let state = link.state();
            self.metrics.link(&state);
            self.status.link = Some(state);
        }
    }

    /// The agent's metrics (shared: they keep counting while it runs).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The address the metrics endpoint listens on, when it is on.
    pub fn metrics_addr(&self) -> Option<&str> {
        self.status.metrics.as_deref()
    }

    /// Records the programs and the enforcement layers in the status and the metrics.
    fn describe_programs(&mut self) {
        let files = self.file_layer;
        let gaps = self.sensors.lsm_gaps();
        self.status.programs = self
            .sensors
            .status
            .iter()
            .map(|s| ProgramState {
                name: s.spec.name.to_owned(),
                hook: s.spec.hook.to_string(),
                attached: s.error.is_none(),
                error: s.error.clone(),
            })
            .collect();
        self.status.pinned = self.sensors.is_pinned();
        let attached = self.status.programs.iter().filter(|p| p.attached).count();
        self.metrics.programs_attached.set(attached as i64);
        self.metrics
            .programs_known
            .set(self.status.programs.len() as i64);
        self.metrics
            .programs_pinned
            .set(i64::from(self.status.pinned));
        for kind in ResourceKind::ALL {
            let layer = EnforcementLayer::of(kind, files, gaps);
            self.metrics
                .enforcement_layer
                .get_or_create(&LayerLabels {
                    resource: kind.name().to_owned(),
                    layer: layer.label().to_owned(),
                })
                .set(1);
            self.status
                .enforcement
                .insert(kind.name().to_owned(), kind.layer(files, gaps));
        }
    }

    /// Writes the status file, when there is one; a failure is logged, never fatal.
    fn write_status(&mut self) {
        let Some(path) = &self.status_file else {
            return;
        };
        self.status.updated_at = status::now();
        self.status.events = self.pipeline.stats.events;
        if let Err(error) = self.status.write(path) {
            warn!(%error, "cannot write the status file");
        }
    }

    /// Whether the BPF LSM programs are attached (denials are `EPERM`, not SIGKILL).
    pub fn lsm_active(&self) -> bool {
        self.sensors.lsm_active()
    }

    /// The programs that are not attached, each as `name (hook): why`.
    pub fn programs_not_attached(&self) -> Vec<String> {
        self.status
            .programs
            .iter()
            .filter(|p| !p.attached)
            .map(|p| {
                format!(
                    "{} ({}): {}",
                    p.name,
                    p.hook,
                    p.error.as_deref().unwrap_or("?")
                )
            })
            .collect()
    }

    /// Shows every database capture record the kernel sends to `tap`, before it is decoded.
    pub fn tap_db_records(&mut self, tap: DbRecordTap) {
        self.pipeline.tap_db_records(tap);
    }

    /// The layer that decides opens of protected files on this kernel.
    pub fn file_layer(&self) -> FileLayer {
        self.file_layer
    }

    /// A handle that asks the running agent to reload its policies (SIGHUP does this).
    pub fn reload_handle(&self) -> mpsc::Sender<Trigger> {
        self.policies.requester.clone()
    }

    /// Runs until `shutdown` completes, then drains what the kernel already wrote, flushes the
    /// sinks and detaches the programs.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> std::io::Result<RunStats> {
        tokio::pin!(shutdown);
        if let Some(previous) = self.previous.take() {
            self.take_over(previous);
            self.flush()?;
        }
        self.refresh_break_glass();
        self.flush()?;
        let mut tick = tokio::time::interval(TICK);
        let mut ticks: u64 = 0;
        // Without a collector link there is no heartbeat (the branch below is disabled).
        let mut heartbeat = tokio::time::interval(
            self.link
                .as_ref()
                .map_or(Duration::from_secs(3600), Link::heartbeat_interval),
        );
        loop {
            // While the ring buffer has a backlog, `read_batch` is ready at once and this task
            // would never return to the runtime: its timer driver would not run and the tick
            // (loss reports) would wait until the backlog is gone. Yield once per batch, and
            // poll the tick and reload requests before the reader, so they always go first.
            tokio::task::yield_now().await;
            // A sink that batches its flushes in time (the spool's fsync) is flushed when its
            // batch is due, even if no other event or tick comes before.
            let flush_due = self.pipeline.flush_due();
            let flush_timer = tokio::time::sleep_until(
                flush_due.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std),
            );
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = tick.tick() => {
                    ticks += 1;
                    self.refresh_break_glass();
                    self.report_losses();
                    self.pipeline.report_problems();
                    if ticks.is_multiple_of(60) {
                        self.enricher.refresh_clock();
                    }
                    if ticks.is_multiple_of(INTEGRITY_TICKS) {
                        self.check_integrity();
                    }
                    self.flush()?;
                    self.update_link();
                    self.write_status();
                    // The service manager's watchdog: the event loop is alive (a no-op
                    // outside systemd).
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                _ = heartbeat.tick(), if self.link.is_some() => {
                    self.report(Report::Heartbeat);
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
                () = flush_timer, if flush_due.is_some() => self.flush()?,
                Some(record) = recv_record(&mut self.fanotify) => {
                    // What the kernel recorded before the decision goes first (the opener's
                    // exec above all: the process table then names the program it executed).
                    let (enricher, pipeline) = (&mut self.enricher, &mut self.pipeline);
                    self.reader.drain(|bytes| pipeline.handle(enricher, bytes));
                    self.pipeline.handle_record(&mut self.enricher, record);
                    if let Some(fanotify) = &mut self.fanotify {
                        while let Ok(record) = fanotify.records.try_recv() {
                            self.pipeline.handle_record(&mut self.enricher, record);
                        }
                    }
                    self.flush()?;
                }
                read = self.reader.read_batch(BATCH, |bytes| {
                    self.pipeline.handle(&mut self.enricher, bytes);
                }) => {
                    read?;
                    self.flush()?;
                }
            }
        }
        let (enricher, pipeline) = (&mut self.enricher, &mut self.pipeline);
        if let Some(fanotify) = self.fanotify.take() {
            // Closing the group releases any open still waiting; then the last records.
            let Fanotify {
                layer, mut records, ..
            } = fanotify;
            let counters = &layer.counters;
            info!(
                answered = counters.answered.get(),
                denied = counters.denied.get(),
                lost = counters.lost.get(),
                respond_errors = counters.respond_errors.get(),
                ignore_marks = counters.ignore_marks.get(),
                "fanotify layer stopped: protected opens are no longer asked about (the open-exit programs, if pinned, kill refused ones)"
            );
            drop(layer);
            while let Ok(record) = records.try_recv() {
                pipeline.handle_record(enricher, record);
            }
        }
        self.reader.drain(|bytes| pipeline.handle(enricher, bytes));
        self.report_losses();
        self.pipeline.report_problems();
        self.flush()?;
        if let Some(path) = &self.status_file {
            Status::remove(path);
        }
        info!(
            records = self.pipeline.stats.records,
            events = self.pipeline.stats.events,
            kernel_lost = self.pipeline.stats.kernel_lost,
            decode_errors = self.pipeline.stats.decode_errors,
            sink_errors = self.pipeline.stats.sink_errors,
            db_records = self.pipeline.stats.db_records,
            db_bytes = self.pipeline.stats.db_bytes,
            pinned = self.sensors.is_pinned(),
            "phiguard stopped; {}",
            if self.sensors.is_pinned() {
                "pinned programs stay attached and keep enforcing"
            } else {
                "programs detached"
            }
        );
        Ok(self.pipeline.stats)
    }

    /// Emits an event of the agent's own (policy loads, losses).
    fn emit_own(&mut self, event: &v1::Event) {
        self.pipeline.emit(event.clone());
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.pipeline.flush()
    }

    /// Makes SIGHUP also read the configuration again with `source`: settings that differ
    /// from `in_force` are named as needing a restart, and an invalid file refuses the reload.
    pub fn reread_config_with(&mut self, in_force: Config, source: ConfigSource) {
        self.config = Some((in_force, source));
    }

    /// A reload asked for by SIGHUP (or `systemctl reload`): the configuration is read again,
    /// the sinks reopen their files, and the policies are reloaded. Whatever happens, the
    /// status counts it and is written at once, so `phiguard reload` sees it finish.
    fn reload(&mut self, trigger: Trigger) {
        self.status.reloads += 1;
        let mut restart_needed = Vec::new();
        if trigger == Trigger::Signal {
            if let Some((in_force, source)) = &self.config {
                match source() {
                    Ok(new) => {
                        restart_needed = in_force.restart_needed(&new);
                    }
                    Err(error) => {
                        self.report(Report::ReloadRefused {
                            trigger,
                            refusal: Refusal::Config,
                            error,
                        });
                        self.write_status();
                        return;
                    }
                }
            }
            self.pipeline.reopen();
        }
        if !restart_needed.is_empty() {
            warn!(
                settings = restart_needed.join(", "),
                "agent.toml changed settings that take effect only after a restart (systemctl restart phiguard)"
            );
        }
        self.reload_policies(trigger);
        match &mut self.status.last_reload {
            Some(last) if self.policies.dir.is_some() => {
                last.restart_needed = restart_needed.iter().map(|s| (*s).to_owned()).collect();
            }
            _ => {
                // Observe only: no policies to reload, but the reload is done all the same.
                self.status.last_reload = Some(ReloadState {
                    ok: true,
                    at: status::now(),
                    trigger: trigger.as_str().to_owned(),
                    error: String::new(),
                    restart_needed: restart_needed.iter().map(|s| (*s).to_owned()).collect(),
                });
            }
        }
        self.write_status();
    }

    /// Loads the policy directory again; the new set replaces the one in force only when it is
    /// valid as a whole and installed in the kernel. Either way an event says what happened.
    fn reload_policies(&mut self, trigger: Trigger) {
        let p = &self.policies;
        let compiled = match policy::load(p.dir.as_deref(), &p.config_watches, &p.cgroup_root) {
            Ok(compiled) => Arc::new(compiled),
            Err(e) => {
                return self.report(Report::ReloadRefused {
                    trigger,
                    refusal: Refusal::Policy,
                    error: e.to_string(),
                })
            }
        };
        match self.sensors.install(&compiled) {
            Ok(slot) => {
                if let Some(fanotify) = &self.fanotify {
                    if let Err(e) = fanotify.layer.update(Arc::clone(&compiled), slot) {
                        error!(error = %e, "the fanotify layer could not take the reloaded policies: it decides with the previous set");
                    }
                    // The filesystems marked may have changed: keep the group, or stop
                    // keeping it where the restart would wait for itself.
                    if let Some((config, _)) = &self.config {
                        self.status.while_restarting = Some(keep_group(config, &fanotify.layer));
                    }
                }
                self.policies.generation += 1;
                self.enricher
                    .set_policy(slot, self.policies.generation, Arc::clone(&compiled));
                self.report(Report::PolicyInForce { compiled, trigger });
            }
            // A map write failed half-way: the slot being filled was not switched to.
            Err(e) => self.report(Report::ReloadRefused {
                trigger,
                refusal: Refusal::Install,
                error: e.to_string(),
            }),
        }
    }
}

/// Hands the fanotify group to systemd's file descriptor store when `setting` asks opens to
/// wait while the agent is down, and says (log, status) what happens to them.
/// Not when the restart itself would have to open files on a marked filesystem (the group
/// is then released from the store, and the opens pass while the agent is down).
fn keep_group(config: &Config, layer: &FanotifyLayer) -> String {
    let (marked, exec) = layer.marked();
    let blocked = crate::fdstore::restart_blocked_by(&marked, exec);
    match (config.policy.while_restarting, blocked) {
        (WhileRestarting::Wait, Some(why)) => {
            if let Err(e) = crate::fdstore::remove() {
                warn!("asking systemd to close the fanotify group it kept: {e}");
            }
            warn!("while_restarting = \"wait\" cannot apply: {why}; while the agent is down, protected opens pass (put protected files on their own filesystem to keep them waiting)");
            format!("pass: \"wait\" asked, but {why}")
        }
        (setting, _) => keep_group_as(setting, layer),
    }
}

/// [`keep_group`] once the restart cannot deadlock.
fn keep_group_as(setting: WhileRestarting, layer: &FanotifyLayer) -> String {
    match setting {
        WhileRestarting::Pass => {
            info!("while_restarting = \"pass\": while the agent is down, protected opens pass (only the pinned open-exit programs, if any, kill refused ones)");
            "pass (protected opens go on while no agent answers)".to_owned()
        }
        WhileRestarting::Wait => match crate::fdstore::store(layer.group_fd()) {
            Ok(true) => {
                info!("fanotify group handed to systemd's file descriptor store: while the agent restarts, protected opens wait for it (until the unit stops or fails)");
                "wait (systemd keeps the fanotify group; opens wait until the agent is back or the unit stops or fails)".to_owned()
            }
            Ok(false) => {
                warn!("while_restarting = \"wait\" cannot apply without systemd (no NOTIFY_SOCKET): while the agent is down, protected opens pass");
                "pass: \"wait\" asked, but no systemd to keep the fanotify group (no NOTIFY_SOCKET)"
                    .to_owned()
            }
            Err(e) => {
                warn!("handing the fanotify group to systemd's file descriptor store: {e}; while the agent is down, protected opens pass");
                format!("pass: \"wait\" asked, but systemd did not take the fanotify group: {e}")
            }
        },
    }
}

/// Lets a kept fanotify group this agent does not use go: the opens it held go on, systemd
/// closes its copy and this agent its own, so nothing waits for the group any more.
fn release_kept(kept: Option<Interim>) {
    // Without a kept group no opens wait: forget when they started waiting.
    crate::fdstore::answered();
    if let Some(interim) = kept {
        if let Err(e) = crate::fdstore::remove() {
            warn!("asking systemd to close the fanotify group it kept: {e}");
        }
        let passed = interim.release();
        info!(
            held = passed,
            "released the fanotify group systemd kept: opens that waited for it go on"
        );
    }
}

/// The next decision record of the fanotify layer (never ready when it does not run).
async fn recv_record(fanotify: &mut Option<Fanotify>) -> Option<Record> {
    match fanotify {
        Some(f) => f.records.recv().await,
        None => std::future::pending().await,
    }
}
