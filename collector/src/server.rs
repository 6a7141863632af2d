//! The gRPC services over mutual TLS: `Ingest` (agents → store, acked after fsync) and
//! `Subscribe` (store and live records → watchers), plus the timers that sign checkpoints
//! and apply retention.
//!
//! Every batch is validated before it touches the store: size (tonic's decoding limit),
//! count, strictly increasing sequence numbers, and the host each event claims, which must be
//! the identity in the connection's certificate. A bad batch ends that agent's stream with an
//! error status and a log line; other streams and connections are unaffected.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use phiguard_proto::v1::{
    self,
    collector_server::{Collector, CollectorServer},
    subscribe_request::Start as WireStart,
    IngestRequest, IngestResponse, SubscribeRequest,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use crate::{
    access::{warn_unscoped, Access},
    audit::{Asked, Audit, AUDIT_CHAIN},
    checkpoint::{self, Checkpointer, Signer},
    config::Config,
    health::{self, StoreHealth},
    identity::Peer,
    jetstream::{
        admission::{self, Admission},
        bus::{Bus, BusError},
        lease, relay, writer,
    },
    liveness::{self, Liveness},
    metrics::{Metrics, RefusedReason, Snapshot},
    revocation::Revocation,
    scope::Scope,
    store::{short_instance, Record, Store, StoreError},
    stream::{self, Filter, Hub, Start},
    tamper::TamperWatch,
    tls::{self, AcceptLimits},
    window::{Refusals, Violation},
};

/// Longest event id accepted.
const MAX_ID_BYTES: usize = 128;
/// How often checkpoint timers are checked.
const CHECKPOINT_TICK: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Records the hub buffers for slow subscribers.
const HUB_CAPACITY: usize = 65_536;
/// How long streams may take to close at shutdown before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The collector could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The CRL file is unusable.
    #[error(transparent)]
    Crl(#[from] crate::crl::CrlError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// An export could not start (its positions file is unreadable).
    #[error("export: {0}")]
    Export(#[from] crate::export::ExportError),
    /// The checkpoint key or export file is unusable.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The address could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// JetStream could not be reached or its stream made.
    #[error(transparent)]
    JetStream(#[from] BusError),
    /// The store writer lease could not be taken or the store's fence raised.
    #[error(transparent)]
    Take(#[from] lease::TakeError),
    /// The gRPC server failed.
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Why a batch was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// No events.
    #[error("empty batch")]
    Empty,
    /// More events than allowed.
    #[error("{count} events in one batch (at most {max})")]
    TooMany {
        /// Events sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A sequence number of 0.
    #[error("event with seq 0")]
    SeqZero,
    /// Sequence numbers not strictly increasing.
    #[error("seq {seq} after {previous}: sequence numbers must increase")]
    NotIncreasing {
        /// The previous seq.
        previous: u64,
        /// The offending seq.
        seq: u64,
    },
    /// An event without a host.
    #[error("event seq {seq} has no host")]
    NoHost {
        /// Its seq.
        seq: u64,
    },
    /// An event claiming another host than the certificate's.
    #[error("event seq {seq} claims host {claimed:?}, certificate identity is {identity:?}")]
    HostMismatch {
        /// Its seq.
        seq: u64,
        /// What it claims (hostname or agent id).
        claimed: String,
        /// The certificate's identity.
        identity: String,
    },
    /// An event without a body, or a body only the collector may make.
    #[error("event seq {seq}: {what}")]
    BadBody {
        /// Its seq.
        seq: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A machine id that is not 32 lowercase hex digits.
    #[error("event seq {seq}: host.machine_id {value:?} is not a machine id (32 lowercase hex digits, or empty)")]
    BadMachineId {
        /// Its seq.
        seq: u64,
        /// What was sent (at most 64 characters of it).
        value: String,
    },
    /// An id that is too long.
    #[error("event seq {seq}: id longer than {MAX_ID_BYTES} bytes")]
    BadId {
        /// Its seq.
        seq: u64,
    },
}

impl BatchError {
    /// The status the agent gets.
    pub fn status(&self) -> Status {
        match self {
            BatchError::HostMismatch { .. } => Status::permission_denied(self.to_string()),
            _ => Status::invalid_argument(self.to_string()),
        }
    }
}

/// Why a batch was not stored.
#[derive(Debug)]
pub enum Refused {
    /// The store's rules refused it (the seq window, the new-instance limit): sending it
    /// again will not help until the rule changes.
    Policy(Status),
    /// The store could not write it (full, failing): it may be stored later.
    Store(Status),
}

impl Refused {
    /// The status the agent gets.
    pub fn into_status(self) -> Status {
        match self {
            Refused::Policy(status) | Refused::Store(status) => status,
        }
    }
}

/// The request header carrying the agent's instance id on an `Ingest` call.
pub const INSTANCE_HEADER: &str = "phiguard-instance";

/// An `Ingest` call's instance id (its [`INSTANCE_HEADER`]): empty for an agent that sends
/// none (its legacy stream), else a UUID in its canonical lowercase hyphenated form.
pub fn instance_of<T>(request: &Request<T>) -> Result<String, Status> {
    let Some(value) = request.metadata().get(INSTANCE_HEADER) else {
        return Ok(String::new());
    };
    let text = value
        .to_str()
        .map_err(|_| Status::invalid_argument("the instance id is not text"))?;
    match uuid::Uuid::parse_str(text) {
        Ok(id) if id.hyphenated().to_string() == text && !id.is_nil() => Ok(text.to_owned()),
        _ => Err(Status::invalid_argument(
            "the instance id must be a UUID (lowercase, hyphenated, not nil)",
        )),
    }
}

/// Checks a batch from `identity` and stamps every event's `host.agent_id` with it and
/// `host.instance_id` with the batch's instance.
pub fn validate_batch(
    identity: &str,
    batch: IngestRequest,
    max_events: usize,
) -> Result<Vec<v1::Event>, BatchError> {
    let mut events = batch.events;
    if events.is_empty() {
        return Err(BatchError::Empty);
    }
    if events.len() > max_events {
        return Err(BatchError::TooMany {
            count: events.len(),
            max: max_events,
        });
    }
    let mut previous = 0;
    for event in &mut events {
        let seq = event.seq;
        if seq == 0 {
            return Err(BatchError::SeqZero);
        }
        if seq <= previous {
            return Err(BatchError::NotIncreasing { previous, seq });
        }
        previous = seq;
        if event.id.len() > MAX_ID_BYTES {
            return Err(BatchError::BadId { seq });
        }
        match &event.body {
            None => {
                return Err(BatchError::BadBody {
                    seq,
                    what: "no body",
                })
            }
            Some(v1::event::Body::Alert(_)) => {
                return Err(BatchError::BadBody {
                    seq,
                    what: "collector alerts cannot be sent by agents",
                })
            }
            Some(v1::event::Body::Subscription(_)) => {
                return Err(BatchError::BadBody {
                    seq,
                    what: "subscription audit records cannot be sent by agents",
                })
            }
            Some(_) => {}
        }
        let host = event.host.get_or_insert_with(Default::default);
        let mismatch = |claimed: &str| BatchError::HostMismatch {
            seq,
            claimed: claimed.to_owned(),
            identity: identity.to_owned(),
        };
        if host.hostname.is_empty() {
            return Err(BatchError::NoHost { seq });
        }
        if !phiguard_proto::valid_machine_id(&host.machine_id) {
            return Err(BatchError::BadMachineId {
                seq,
                value: host.machine_id.chars().take(64).collect(),
            });
        }
        if !host.hostname.eq_ignore_ascii_case(identity) {
            return Err(mismatch(&host.hostname));
        }
        if !host.agent_id.is_empty() && !host.agent_id.eq_ignore_ascii_case(identity) {
            return Err(mismatch(&host.agent_id));
        }
        host.agent_id = identity.to_owned();
        host.instance_id.clone_from(&batch.instance_id);
    }
    Ok(events)
}

/// Why a subscription was ended by the collector rather than by its own course.
enum Cut {
    Revoked,
    AccessChanged,
    Stopping,
}

/// The `Collector` service.
#[derive(Clone)]
pub struct CollectorService {
    store: Arc<Store>,
    hub: Arc<Hub>,
    checkpoints: Arc<Checkpointer>,
    access: Arc<watch::Sender<Arc<Access>>>,
    audit: Arc<Audit>,
    open_subscriptions: Arc<AtomicUsize>,
    max_batch_events: usize,
    stopping: watch::Receiver<bool>,
    liveness: Arc<Liveness>,
    tamper: Arc<TamperWatch>,
    health: Arc<StoreHealth>,
    refusals: Arc<Refusals>,
    revocation: Arc<Revocation>,
    metrics: Metrics,
    agents_connected: Arc<AtomicUsize>,
    /// `[jetstream]`: batches go to JetStream, not to this collector's store.
    bus: Option<Bus>,
    /// `[jetstream]`: the window and instance limit every front end applies before it
    /// publishes, with their state in JetStream.
    admission: Option<Admission>,
}

/// Counts an open agent stream for as long as it lives.
struct Connected(Arc<AtomicUsize>);

impl Connected {
    fn new(count: &Arc<AtomicUsize>) -> Connected {
        count.fetch_add(1, Ordering::SeqCst);
        Connected(count.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn peer<T>(request: &Request<T>) -> Result<Peer, Status> {
    request
        .extensions()
        .get::<Peer>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}

impl CollectorService {
    /// Stores a collector alert in `agent`'s chain and hands it to subscribers; logs it.
    async fn raise(&self, agent: &str, alert: v1::Event) {
        if let Some(v1::event::Body::Alert(a)) = &alert.body {
            let kind = v1::AlertKind::try_from(a.kind).map_or("?", |k| k.as_str_name());
            warn!(agent, kind, silent_ms = a.silent_ms, "alert: {}", a.message);
        }
        if let Err(error) = self.store_own(agent, alert).await {
            error!(%error, "storing an alert failed");
        }
    }

    /// Stores an event the collector made itself in `chain` and hands it to subscribers. A
    /// front end of the fleet that does not write the store publishes it to JetStream instead
    /// (subject `PREFIX.CHAIN.KIND`): the store writer stores it in the one tamper-evident
    /// store, and every collector's live subscribers get it from there.
    async fn store_own(&self, chain: &str, event: v1::Event) -> Result<(), String> {
        if let Some(bus) = self.bus.as_ref().filter(|b| !b.config().store_writer) {
            return bus
                .publish(std::slice::from_ref(&event))
                .await
                .map(|_| ())
                .map_err(|e| format!("publishing {chain}'s record to JetStream: {e}"));
        }
        let this = self.clone();
        let chain = chain.to_owned();
        let stored = tokio::task::spawn_blocking(move || {
            let hub = this.hub.clone();
            let appended = this
                .store
                .append(&chain, vec![event], |a| hub.publish(&a.records))?;
            this.checkpoints.maybe(&chain, &appended.head, false);
            Ok::<_, StoreError>(())
        })
        .await;
        match stored {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(error) => Err(format!("store task failed: {error}")),
        }
    }

    /// Audits a refused subscription (logged too) and returns `status` for the caller.
    async fn refuse_subscription(&self, asked: &Asked, peer: &Peer, status: Status) -> Status {
        warn!(subscriber = %peer.identity, peer = %peer.addr, subscription = asked.id(), code = ?status.code(), reason = status.message(), "subscription refused");
        if let Err(error) = self
            .store_own(AUDIT_CHAIN, asked.refused(status.message()))
            .await
        {
            error!(%error, "auditing a refused subscription failed");
        }
        status
    }

    /// A fleet front end has no store to replay from (`start` other than live): the refusal
    /// naming the store writer's collector, which has.
    async fn replay_elsewhere(&self, start: &Start) -> Option<Status> {
        let bus = self.bus.as_ref().filter(|b| !b.config().store_writer)?;
        if matches!(start, Start::Live) {
            return None;
        }
        let writer = lease::holder(bus)
            .await
            .unwrap_or_else(|| "(none holds the writer lease now)".to_owned());
        Some(Status::failed_precondition(format!(
            "replay needs the store: this collector is a fleet front end without it; ask the store writer's collector (writer lease held by {writer}: host:port/pid/id), or subscribe live here"
        )))
    }

    /// Checks a Subscribe call: who, and whether its scope grants what it asks for.
    fn admit(&self, peer: &Peer, request: &SubscribeRequest) -> Result<(Filter, Scope), Status> {
        self.not_revoked(peer, "subscribe")?;
        let access = self.access.borrow().clone();
        access.admit(&peer.identity, request)
    }

    /// Follows a running subscription: cuts it when its certificate is revoked, its access
    /// changes at a reload or the collector stops; then audits how it closed.
    async fn watch_subscription(
        self,
        peer: Peer,
        asked: Asked,
        scope: Scope,
        mut run: tokio::task::JoinHandle<stream::Closed>,
        cancel: watch::Sender<bool>,
        tx: mpsc::Sender<Result<v1::Event, Status>>,
    ) {
        let mut revoked = self.revocation.subscribe();
        let mut access = self.access.subscribe();
        let mut stopping = self.stopping.clone();
        let identity = peer.identity.to_string();
        let cut = tokio::select! {
            ended = &mut run => Err(ended),
            () = async { let _ = revoked.wait_for(|list| list.denies(&peer.credential).is_some()).await; } => Ok(Cut::Revoked),
            () = async {
                let _ = access
                    .wait_for(|a| !a.still_grants(&identity, &scope))
                    .await;
            } => Ok(Cut::AccessChanged),
            _ = stopping.wait_for(|s| *s) => Ok(Cut::Stopping),
        };
        let (ended, reason, status) = match cut {
            Err(ended) => {
                let reason = ended.as_ref().map_or_else(
                    |e| format!("subscription task failed: {e}"),
                    |c| c.end.as_str().to_owned(),
                );
                (ended, reason, None)
            }
            Ok(cut) => {
                let _ = cancel.send(true);
                let (reason, status) = match cut {
                    Cut::Revoked => (
                        "certificate revoked".to_owned(),
                        self.not_revoked(&peer, "subscribe (open stream cut)").err(),
                    ),
                    Cut::AccessChanged => (
                        "its access changed at a reload".to_owned(),
                        Some(Status::permission_denied(
                            "this subscriber's scope changed at a reload: subscribe again",
                        )),
                    ),
                    Cut::Stopping => (
                        "the collector is shutting down".to_owned(),
                        Some(Status::unavailable("the collector is shutting down")),
                    ),
                };
                (run.await, reason, status)
            }
        };
        if let Some(status) = status {
            // The subscriber may not read: never wait for it long.
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(status))).await;
        }
        drop(tx);
        let closed = ended.unwrap_or(stream::Closed {
            end: stream::End::Cancelled,
            sent: 0,
        });
        info!(subscriber = %peer.identity, peer = %peer.addr, subscription = asked.id(), sent = closed.sent, reason, "subscription closed");
        if let Err(error) = self
            .store_own(AUDIT_CHAIN, asked.closed(closed, &reason))
            .await
        {
            error!(%error, subscription = asked.id(), "auditing a closed subscription failed");
        }
        self.open_subscriptions.fetch_sub(1, Ordering::SeqCst);
    }

    /// A batch of `agent` could not be stored: the first time in an outage, subscribers get
    /// a live alert (not stored: the store is what fails) and the log a line.
    fn store_failed(&self, agent: &str, error: &StoreError) {
        let Some(alert) = self
            .health
            .failed(agent, error, tokio::time::Instant::now())
        else {
            return;
        };
        if let Some(v1::event::Body::Alert(a)) = &alert.body {
            warn!(
                agent,
                kind = "ALERT_KIND_STORE_FAILING",
                "alert: {}",
                a.message
            );
        }
        let received = alert.time.map_or(0, |t| t.seconds);
        self.hub.publish(&[Arc::new(Record {
            agent: Arc::from(agent),
            index: 0,
            event: alert,
            received,
        })]);
    }

    /// Refuses a call from a revoked certificate (logged).
    fn not_revoked(&self, peer: &Peer, call: &str) -> Result<(), Status> {
        match self.revocation.current().denies(&peer.credential) {
            None => Ok(()),
            Some(entry) => {
                warn!(identity = %peer.identity, peer = %peer.addr, revoked = %entry, call, "call refused: certificate revoked");
                Err(Status::permission_denied(format!(
                    "certificate revoked ({entry})"
                )))
            }
        }
    }

    /// Whether this collector judges agents' liveness: alone, always; in the fleet layout,
    /// only the store writer, from the events in the stream (an agent that failed over to
    /// another front end is not silent).
    fn judges_liveness(&self) -> bool {
        self.bus.as_ref().is_none_or(|b| b.config().store_writer)
    }

    /// A sign of life from `agent`: raises the reconnection alert when it had been silent.
    pub(crate) async fn alive(&self, agent: &str) {
        if let Some(silent) = self.liveness.seen(agent, tokio::time::Instant::now()) {
            self.raise(agent, liveness::reconnected_alert(agent, silent))
                .await;
        }
    }

    /// The store writer had read every message of the stream published before `at`: silence
    /// is judged up to then (see `liveness`).
    pub(crate) fn stream_read_up_to(&self, at: tokio::time::Instant) {
        self.liveness.read_up_to(at);
    }

    /// The store this service appends to.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A batch of `count` events of `identity`'s `instance`, received from `from`, refused by
    /// a rule of its stream: counted, logged and alerted (at most once a minute per agent).
    async fn refuse(
        &self,
        identity: &str,
        from: &str,
        instance: &str,
        count: usize,
        violation: Violation,
    ) -> Refused {
        let now = tokio::time::Instant::now();
        match violation {
            Violation::SeqJump { last, seq, max } => {
                self.metrics.refused(RefusedReason::SequenceWindow, count);
                self.metrics.sequence_window_refusals.inc();
                warn!(agent = %identity, peer = %from, last, seq, max, "batch refused: seq too far above the last stored one");
                if let Some(alert) = self.refusals.refused(identity, last, seq, now) {
                    self.raise(identity, alert).await;
                }
                Refused::Policy(Status::out_of_range(format!(
                    "seq {seq} is too far above the last stored seq {last}: refused, not stored"
                )))
            }
            Violation::InstanceLimit { started, max } => {
                self.metrics.refused(RefusedReason::InstanceLimit, count);
                self.metrics.instance_refusals.inc();
                warn!(agent = %identity, peer = %from, instance = %instance, started, max, "batch refused: too many new instances of this agent within an hour");
                if let Some(alert) = self
                    .refusals
                    .instance_refused(identity, instance, started, now)
                {
                    self.raise(identity, alert).await;
                }
                Refused::Policy(Status::resource_exhausted(format!(
                    "this agent started {started} new instances within the last hour (at most {max}): instance {instance} refused, not stored"
                )))
            }
        }
    }

    /// Appends a validated batch of `identity`'s events (instance `instance`, received from
    /// `from`) to its chain, then does what follows a store: metrics, the store's recovery,
    /// tamper and break-glass alerts. Used by agents' streams (the embedded layout) and by
    /// the JetStream store writer (the fleet layout).
    pub(crate) async fn store_batch(
        &self,
        identity: &str,
        from: &str,
        instance: &str,
        events: Vec<v1::Event>,
    ) -> Result<crate::store::Appended, Refused> {
        let count = events.len();
        let this = self.clone();
        let agent = identity.to_owned();
        let appended = tokio::task::spawn_blocking(move || {
            let hub = this.hub.clone();
            let appended = this
                .store
                .append(&agent, events, |a| hub.publish(&a.records))?;
            this.checkpoints.maybe(&agent, &appended.head, false);
            Ok::<_, StoreError>(appended)
        })
        .await;
        let appended = match appended {
            Ok(Ok(appended)) => appended,
            Ok(Err(StoreError::SeqJump { last, seq, max, .. })) => {
                return Err(self
                    .refuse(
                        identity,
                        from,
                        instance,
                        count,
                        Violation::SeqJump { last, seq, max },
                    )
                    .await);
            }
            Ok(Err(StoreError::InstanceLimit { started, max, .. })) => {
                return Err(self
                    .refuse(
                        identity,
                        from,
                        instance,
                        count,
                        Violation::InstanceLimit { started, max },
                    )
                    .await);
            }
            Ok(Err(store_error)) => {
                self.metrics.refused(
                    if store_error.is_full() {
                        RefusedReason::StoreFull
                    } else {
                        RefusedReason::StoreFailed
                    },
                    count,
                );
                error!(agent = %identity, error = %store_error, full = store_error.is_full(), "storing a batch failed: refused, not acknowledged");
                self.store_failed(identity, &store_error);
                return Err(Refused::Store(health::refusal(&store_error)));
            }
            Err(join) => {
                error!(agent = %identity, error = %join, "store task failed");
                return Err(Refused::Store(Status::internal("store task failed")));
            }
        };
        self.metrics.events_stored.inc_by(appended.stored);
        self.metrics.events_duplicate.inc_by(appended.duplicates);
        let started = appended
            .records
            .iter()
            .filter(|r| matches!(&r.event.body, Some(v1::event::Body::Alert(a)) if a.kind == v1::AlertKind::InstanceStarted as i32))
            .count();
        self.metrics.instances_started.inc_by(started as u64);
        if let Some(recovered) = self.health.stored(identity, tokio::time::Instant::now()) {
            self.raise(identity, recovered).await;
        }
        let mut alerts = self
            .tamper
            .observe(identity, appended.records.iter().map(|r| &r.event));
        alerts.extend(crate::breakglass::alerts(
            identity,
            appended.records.iter().map(|r| &r.event),
        ));
        for alert in alerts {
            self.raise(identity, alert).await;
        }
        Ok(appended)
    }

    /// The fleet layout: applies the window and the instance limit to a validated batch
    /// before it is published, with the state every front end shares. A refused batch, or one
    /// that cannot be judged (JetStream unreachable), gets the status for the agent.
    async fn admit_batch(
        &self,
        identity: &str,
        from: &str,
        instance: &str,
        events: &[v1::Event],
    ) -> Result<(), Status> {
        let Some(admission) = &self.admission else {
            return Ok(());
        };
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        match admission.admit(identity, instance, &seqs).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(violation)) => Err(self
                .refuse(identity, from, instance, events.len(), violation)
                .await
                .into_status()),
            Err(error) => {
                self.metrics
                    .refused(RefusedReason::StoreFailed, events.len());
                error!(agent = %identity, %error, "a batch could not be judged against the stream's window: refused, not acknowledged");
                Err(Status::unavailable(format!(
                    "the collector could not check the batch against JetStream ({error}): not acknowledged, resend later"
                )))
            }
        }
    }

    async fn ingest_loop(
        self,
        peer: Peer,
        instance: String,
        mut inbound: Streaming<IngestRequest>,
        tx: mpsc::Sender<Result<IngestResponse, Status>>,
    ) {
        let identity = peer.identity.clone();
        let mut stopping = self.stopping.clone();
        let mut revoked = self.revocation.subscribe();
        let _connected = Connected::new(&self.agents_connected);
        loop {
            let message = tokio::select! {
                message = inbound.message() => Some(Some(message)),
                _ = stopping.wait_for(|s| *s) => None,
                () = async {
                    let _ = revoked
                        .wait_for(|list| list.denies(&peer.credential).is_some())
                        .await;
                } => Some(None),
            };
            let message = match message {
                Some(Some(message)) => Some(message),
                Some(None) => {
                    if let Err(status) = self.not_revoked(&peer, "ingest (open stream cut)") {
                        let _ = tx.send(Err(status)).await;
                    }
                    return;
                }
                None => None,
            };
            let Some(message) = message else {
                let _ = tx
                    .send(Err(Status::unavailable("the collector is shutting down")))
                    .await;
                return;
            };
            let batch = match message {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(status) => {
                    warn!(agent = %identity, peer = %peer.addr, code = ?status.code(), reason = status.message(), "ingest message refused");
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            if self.bus.is_none() {
                self.alive(&identity).await;
            }
            let count = batch.events.len();
            if batch.instance_id != instance {
                self.metrics.refused(RefusedReason::InvalidBatch, count);
                warn!(agent = %identity, peer = %peer.addr, stream = %instance, batch = %batch.instance_id, "batch rejected: its instance is not the stream's");
                let _ = tx
                    .send(Err(Status::invalid_argument(
                        "the batch's instance id differs from the stream's (phiguard-instance header)",
                    )))
                    .await;
                return;
            }
            let events = match validate_batch(&identity, batch, self.max_batch_events) {
                Ok(events) => events,
                Err(rejected) => {
                    self.metrics.refused(RefusedReason::InvalidBatch, count);
                    warn!(agent = %identity, peer = %peer.addr, reason = %rejected, "batch rejected");
                    let _ = tx.send(Err(rejected.status())).await;
                    return;
                }
            };
            let ack = if let Some(bus) = &self.bus {
                if let Err(status) = self
                    .admit_batch(&identity, &peer.addr.to_string(), &instance, &events)
                    .await
                {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                match bus.publish(&events).await {
                    Ok(published) => {
                        if published.duplicates > 0 {
                            info!(agent = %identity, first = events.first().map_or(0, |e| e.seq), last = events.last().map_or(0, |e| e.seq), new = published.new, duplicates = published.duplicates, "resent events recognised by JetStream");
                        }
                        self.metrics.events_published.inc_by(published.new);
                        self.metrics.events_duplicate.inc_by(published.duplicates);
                        IngestResponse {
                            acked_seq: events.last().map_or(0, |e| e.seq),
                            stored: published.new,
                            duplicates: published.duplicates,
                            instance_id: instance.clone(),
                        }
                    }
                    Err(error) => {
                        self.metrics.refused(RefusedReason::StoreFailed, count);
                        error!(agent = %identity, %error, "JetStream did not take a batch: refused, not acknowledged");
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "the collector could not write the batch to JetStream ({error}): not acknowledged, resend later"
                            ))))
                            .await;
                        return;
                    }
                }
            } else {
                let appended = match self
                    .store_batch(&identity, &peer.addr.to_string(), &instance, events)
                    .await
                {
                    Ok(appended) => appended,
                    Err(refused) => {
                        let _ = tx.send(Err(refused.into_status())).await;
                        return;
                    }
                };
                IngestResponse {
                    acked_seq: appended.acked_seq,
                    stored: appended.stored,
                    duplicates: appended.duplicates,
                    instance_id: instance.clone(),
                }
            };
            if tx.send(Ok(ack)).await.is_err() {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Collector for CollectorService {
    type IngestStream = ReceiverStream<Result<IngestResponse, Status>>;
    type SubscribeStream = ReceiverStream<Result<v1::Event, Status>>;

    async fn ingest(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<Self::IngestStream>, Status> {
        let peer = peer(&request)?;
        self.not_revoked(&peer, "ingest")?;
        if peer.identity.eq_ignore_ascii_case(AUDIT_CHAIN) {
            warn!(identity = %peer.identity, peer = %peer.addr, "a certificate named after the collector's audit chain tried to ingest");
            return Err(Status::permission_denied(
                "this identity is reserved for the collector's own audit chain",
            ));
        }
        if self.access.borrow().subscribers.contains(&*peer.identity) {
            warn!(identity = %peer.identity, peer = %peer.addr, "a subscriber identity tried to ingest");
            return Err(Status::permission_denied(
                "subscriber identities cannot send events",
            ));
        }
        let instance = instance_of(&request).inspect_err(|status| {
            warn!(agent = %peer.identity, peer = %peer.addr, reason = status.message(), "ingest refused: bad instance id");
        })?;
        if self.bus.is_none() {
            self.alive(&peer.identity).await;
        }
        let acked_seq = self.store.instance_seq(&peer.identity, &instance);
        info!(agent = %peer.identity, peer = %peer.addr, instance = %short_instance(&instance), acked_seq, "agent stream opened");
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(IngestResponse {
            acked_seq,
            instance_id: instance.clone(),
            ..Default::default()
        }))
        .await
        .map_err(|_| Status::cancelled("stream closed"))?;
        tokio::spawn(
            self.clone()
                .ingest_loop(peer, instance, request.into_inner(), tx),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = peer(&request)?;
        let request = request.into_inner();
        let mut asked = self.audit.asked(&peer, &request);
        let (filter, scope) = match self.admit(&peer, &request) {
            Ok(admitted) => admitted,
            Err(status) => return Err(self.refuse_subscription(&asked, &peer, status).await),
        };
        let start = match request.start {
            None => Start::Live,
            Some(WireStart::SinceTime(t)) => Start::Time(t.seconds, t.nanos),
            Some(WireStart::SinceSeq(seq)) => Start::Seq(seq),
        };
        if let Some(status) = self.replay_elsewhere(&start).await {
            return Err(self.refuse_subscription(&asked, &peer, status).await);
        }
        // No ePHI leaves without its audit record: one that cannot be stored refuses.
        if let Err(error) = self.store_own(AUDIT_CHAIN, asked.opened(&scope)).await {
            error!(subscriber = %peer.identity, %error, "auditing a subscription failed: refused");
            return Err(Status::unavailable(
                "the subscription could not be recorded in the audit trail",
            ));
        }
        info!(subscriber = %peer.identity, peer = %peer.addr, subscription = asked.id(), ?start, %scope, "subscription opened");
        self.open_subscriptions.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(1024);
        let (cancel, cancelled) = watch::channel(false);
        let run = tokio::spawn(stream::run(
            self.store.clone(),
            self.hub.clone(),
            filter,
            start,
            request.replay_only,
            tx.clone(),
            cancelled,
        ));
        tokio::spawn(
            self.clone()
                .watch_subscription(peer, asked, scope, run, cancel, tx),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A collector ready to serve: store open, key loaded, address bound.
pub struct BoundCollector {
    config: Config,
    listener: TcpListener,
    service: CollectorService,
    stop: watch::Sender<bool>,
    tls: Reloader,
}

/// Reads the TLS files again (SIGHUP): new connections use them; open connections keep
/// theirs. On any error the configuration in force stays.
#[derive(Clone)]
pub struct Reloader {
    config: Arc<watch::Sender<Arc<rustls::ServerConfig>>>,
    revocation: Arc<Revocation>,
    access: Arc<watch::Sender<Arc<Access>>>,
    metrics: Metrics,
}

impl Reloader {
    /// Reads the CA, certificate, key and CRL file `config` names and puts them in force for
    /// new connections, with its deny list and the CRLs' revocations (which also cuts open connections of newly revoked
    /// certificates) and its subscribers and scopes (a subscription whose access changed is
    /// cut; it may subscribe again under the new scope). Nothing changes if the TLS files do
    /// not load.
    pub fn reload(&self, config: &Config) -> Result<(), ServerError> {
        let loaded = tls_and_revoked(config);
        if config.server.crl.is_some() {
            self.metrics.crl_reloaded(loaded.is_ok());
        }
        let (tls_config, revoked) = loaded?;
        self.config.send_replace(tls_config);
        self.revocation.set(revoked);
        let access = Access::from_config(config);
        self.access.send_if_modified(|current| {
            let changed = **current != access;
            if changed {
                *current = Arc::new(access);
            }
            changed
        });
        warn_unscoped(config);
        Ok(())
    }
}

impl BoundCollector {
    /// Opens the store (recovering every chain), loads or creates the checkpoint key, loads
    /// the TLS files and binds the address.
    pub async fn bind(config: Config) -> Result<BoundCollector, ServerError> {
        // Fail early on unusable TLS files.
        let (tls_config, revoked) = tls_and_revoked(&config)?;
        let revocation = Arc::new(Revocation::new(revoked));
        let access = Arc::new(watch::channel(Arc::new(Access::from_config(&config))).0);
        let metrics = Metrics::new();
        let tls = Reloader {
            config: Arc::new(watch::channel(tls_config).0),
            revocation: revocation.clone(),
            access: access.clone(),
            metrics: metrics.clone(),
        };
        let bus = match &config.jetstream {
            Some(js) => Some(Bus::connect(js).await?),
            None => None,
        };
        // Before the lease: a writer holding it is not held up by anything else.
        let admission = match &bus {
            Some(bus) => Some(
                Admission::open(
                    bus,
                    admission::Limits {
                        max_seq_jump: config.store.max_seq_jump,
                        max_new_instances_per_hour: config.store.max_new_instances_per_hour,
                    },
                )
                .await?,
            ),
            None => None,
        };
        // A store writer opens the store only once it holds the writer lease (it may wait,
        // as a standby, for another writer's lease to lapse), and keeps renewing it.
        // Then it raises the store's fence to its lease's token before opening the store, so
        // that a writer it replaced, paused rather than dead, can append nothing more.
        let fence = match bus.as_ref().filter(|b| b.config().store_writer) {
            Some(bus) => {
                Some(lease::take_store(bus, &config.store.dir, config.server.listen.port()).await?)
            }
            None => None,
        };
        let fence = fence.map(Arc::new);
        let store = Arc::new(Store::open(config.store.clone())?);
        if let Some(fence) = &fence {
            store.set_fence(fence.clone());
        }
        let signer = Signer::open_in_custody(&config.checkpoint.key, &config.store.dir)?;
        let checkpoints = Arc::new(
            Checkpointer::new(
                signer,
                config.checkpoint.export.clone(),
                config.checkpoint.cadence,
            )?
            .with_metrics(metrics.clone()),
        );
        if let Some(fence) = fence {
            checkpoints.set_fence(fence);
        }
        let signing = checkpoints.clone();
        store.set_retention_signer(Box::new(move |bytes| signing.signer().sign_bytes(bytes)));
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.server.listen,
                source,
            })?;
        let (stop, stopping) = watch::channel(false);
        let collector_name = format!(
            "{}:{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            listener
                .local_addr()
                .map_or(config.server.listen.port(), |a| a.port())
        );
        let liveness = if bus.as_ref().is_some_and(|b| b.config().store_writer) {
            Liveness::reading_a_stream(config.liveness.silent_after, tokio::time::Instant::now())
        } else {
            Liveness::new(config.liveness.silent_after)
        };
        let service = CollectorService {
            bus,
            admission,
            stopping,
            store,
            hub: Arc::new(Hub::new(HUB_CAPACITY)),
            checkpoints,
            access,
            audit: Arc::new(Audit::new(collector_name)),
            open_subscriptions: Arc::new(AtomicUsize::new(0)),
            max_batch_events: config.server.max_batch_events,
            liveness: Arc::new(liveness),
            tamper: Arc::new(TamperWatch::new()),
            health: Arc::new(StoreHealth::new()),
            refusals: Arc::new(Refusals::new()),
            revocation: revocation.clone(),
            metrics: metrics.clone(),
            agents_connected: Arc::new(AtomicUsize::new(0)),
        };
        let svc = service.clone();
        metrics.set_source(move || {
            let latest = svc.checkpoints.latest();
            Snapshot {
                agents_connected: svc.agents_connected.load(Ordering::SeqCst) as u64,
                subscribers: svc.open_subscriptions.load(Ordering::SeqCst) as u64,
                store_full: svc.health.full(),
                store_failing: svc.health.failing(),
                last_checkpoint_unix: latest.map(|(wall, _)| {
                    wall.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64())
                }),
                last_checkpoint_age: latest.map(|(_, at)| at.elapsed().as_secs_f64()),
            }
        });
        if let Some(addr) = config.metrics.listen {
            metrics.serve(addr)?;
        }
        Ok(BoundCollector {
            config,
            listener,
            service,
            stop,
            tls,
        })
    }

    /// The handle that reloads the TLS files (for SIGHUP).
    pub fn reloader(&self) -> Reloader {
        self.tls.clone()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then signs a final checkpoint per agent.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let BoundCollector {
            config,
            listener,
            service,
            stop,
            tls,
        } = self;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.server.listen,
            source,
        })?;
        let incoming = tls::incoming(
            listener,
            tls.config.subscribe(),
            tls.revocation.clone(),
            AcceptLimits {
                handshake_timeout: config.server.handshake_timeout,
                max_connections: config.server.max_connections,
                max_handshakes: config.server.max_handshakes,
            },
        );
        for repair in service.store.take_repairs() {
            service
                .raise(&repair.agent, health::repaired_alert(&repair))
                .await;
        }
        for (agent, head) in service.store.heads() {
            if let Err(error @ checkpoint::CheckpointError::Shortened { signed, .. }) =
                service.checkpoints.not_shortened(&agent, head.index)
            {
                error!(agent = %agent, "{error}");
                let alert = crate::alert::event(
                    &agent,
                    v1::CollectorAlert {
                        kind: v1::AlertKind::ChainShortened as i32,
                        message: error.to_string(),
                        expected_seq: signed,
                        received_seq: head.index,
                        ..Default::default()
                    },
                );
                service.raise(&agent, alert).await;
            }
        }
        warn_unscoped(&config);
        // SIEM exports read the store in their own threads: a slow or unreachable target
        // never holds up ingest.
        let exports_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let exports = crate::export::spawn_all(
            &config.exports,
            service.store.clone(),
            service.metrics.clone(),
            exports_stop.clone(),
        )?;
        let timers = tokio::spawn(timers(service.clone()));
        // The fleet layout: the store writer appends what every front end published; any
        // other collector hands it to its live subscribers.
        let fleet = service.bus.clone().map(|bus| {
            if bus.config().store_writer {
                tokio::spawn(writer::run(bus, service.clone(), service.stopping.clone()))
            } else {
                tokio::spawn(relay::run(
                    bus,
                    service.hub.clone(),
                    service.stopping.clone(),
                ))
            }
        });
        let silence = service
            .judges_liveness()
            .then(|| tokio::spawn(watch_silence(service.clone())));
        info!(
            listen = %addr,
            store = %config.store.dir.display(),
            checkpoint_public_key = %service.checkpoints.signer().public_key_hex(),
            "phiguard-collector listening on {addr}"
        );
        let max = config.server.max_message_bytes;
        let grpc = CollectorServer::new(service.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let mut stopping = service.stopping.clone();
        let signal = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(16))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .http2_max_pending_accept_reset_streams(Some(32))
            .max_frame_size(Some(1 << 16))
            .add_service(grpc)
            .serve_with_incoming_shutdown(incoming, signal);
        let result = tokio::select! {
            result = server => result,
            () = async {
                let _ = stopping.wait_for(|s| *s).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                info!("closing the streams still open after {SHUTDOWN_GRACE:?}");
                Ok(())
            }
        };
        // Open subscriptions end at the stop; their closing records go in before the final
        // checkpoints.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while service.open_subscriptions.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        timers.abort();
        if let Some(silence) = silence {
            silence.abort();
        }
        if let Some(fleet) = fleet {
            // The writer acknowledges messages only once stored: cutting it here loses none.
            fleet.abort();
        }
        for (agent, head) in service.store.heads() {
            if let Err(error) = service.checkpoints.checkpoint(&agent, &head) {
                warn!(agent = %agent, %error, "final checkpoint failed");
            }
        }
        exports_stop.store(true, Ordering::SeqCst);
        for export in exports {
            let _ = tokio::task::spawn_blocking(move || export.join()).await;
        }
        info!("phiguard-collector stopped");
        Ok(result?)
    }
}

/// The TLS configuration and the deny list in force under `config`: `[server] revoked` and
/// every certificate its CRL file revokes.
fn tls_and_revoked(
    config: &Config,
) -> Result<(Arc<rustls::ServerConfig>, crate::revocation::DenyList), ServerError> {
    let crls = config
        .server
        .crl
        .as_deref()
        .map(crate::crl::load)
        .transpose()?;
    let tls_config = tls::server_config(&config.server.tls, crls.as_ref())?;
    let revoked = config
        .server
        .revoked
        .clone()
        .with(crls.map(|c| c.entries).unwrap_or_default());
    Ok((tls_config, revoked))
}

/// Raises an alert for every agent that turns silent (checked four times per window).
async fn watch_silence(service: CollectorService) {
    let window = service.liveness.window();
    let mut tick =
        tokio::time::interval((window / 4).clamp(Duration::from_millis(50), CHECKPOINT_TICK));
    loop {
        tick.tick().await;
        for (agent, silent) in service.liveness.newly_silent(tokio::time::Instant::now()) {
            service
                .raise(&agent, liveness::silent_alert(&agent, silent, window))
                .await;
        }
    }
}

/// Checkpoints on time, retention hourly (and once at start).
async fn timers(service: CollectorService) {
    let mut tick = tokio::time::interval(CHECKPOINT_TICK);
    let mut last_retention: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let svc = service.clone();
        let run_retention = last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY);
        if run_retention {
            last_retention = Some(tokio::time::Instant::now());
        }
        let done = tokio::task::spawn_blocking(move || {
            for (agent, head) in svc.store.heads() {
                svc.checkpoints.maybe(&agent, &head, true);
            }
            if run_retention {
                if let Err(error) = svc.store.apply_retention(SystemTime::now()) {
                    warn!(%error, "retention failed");
                }
            }
        })
        .await;
        if let Err(error) = done {
            warn!(%error, "timer task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(host: &str, seq: u64) -> v1::Event {
        v1::Event {
            seq,
            host: Some(v1::Host {
                hostname: host.into(),
                ..Default::default()
            }),
            body: Some(v1::event::Body::Exec(Default::default())),
            ..Default::default()
        }
    }

    fn batch(events: Vec<v1::Event>) -> IngestRequest {
        IngestRequest {
            events,
            ..Default::default()
        }
    }

    #[test]
    fn batches_are_validated_and_stamped() {
        let ok = validate_batch(
            "ehr-1",
            batch(vec![event("EHR-1", 1), event("ehr-1", 2)]),
            10,
        )
        .unwrap();
        assert!(ok
            .iter()
            .all(|e| e.host.as_ref().unwrap().agent_id == "ehr-1"));
        let cases = [
            (batch(vec![]), BatchError::Empty),
            (
                batch(vec![
                    event("ehr-1", 1),
                    event("ehr-1", 2),
                    event("ehr-1", 3),
                ]),
                BatchError::TooMany { count: 3, max: 2 },
            ),
            (batch(vec![event("ehr-1", 0)]), BatchError::SeqZero),
            (
                batch(vec![event("ehr-1", 2), event("ehr-1", 2)]),
                BatchError::NotIncreasing {
                    previous: 2,
                    seq: 2,
                },
            ),
            (
                batch(vec![event("ehr-2", 1)]),
                BatchError::HostMismatch {
                    seq: 1,
                    claimed: "ehr-2".into(),
                    identity: "ehr-1".into(),
                },
            ),
            (batch(vec![event("", 1)]), BatchError::NoHost { seq: 1 }),
            (
                batch(vec![v1::Event {
                    host: Some(v1::Host {
                        hostname: "ehr-1".into(),
                        machine_id: "x\n2026-01-01 fake".into(),
                        ..Default::default()
                    }),
                    ..event("ehr-1", 1)
                }]),
                BatchError::BadMachineId {
                    seq: 1,
                    value: "x\n2026-01-01 fake".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(validate_batch("ehr-1", input, 2).unwrap_err(), expected);
        }
        let mut spoofed = event("ehr-1", 1);
        spoofed.host.as_mut().unwrap().agent_id = "ehr-2".into();
        assert_eq!(
            validate_batch("ehr-1", batch(vec![spoofed]), 2)
                .unwrap_err()
                .status()
                .code(),
            tonic::Code::PermissionDenied
        );
        let mut alert = event("ehr-1", 1);
        alert.body = Some(v1::event::Body::Alert(Default::default()));
        assert!(validate_batch("ehr-1", batch(vec![alert]), 2).is_err());
    }
}
