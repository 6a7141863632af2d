//! Prometheus metrics of the collector, and the loopback-only HTTP endpoint that serves them
//! (`[metrics] listen`, off by default): what an operator must see before an auditor does —
//! events stored and refused (and why), a full or failing store, agents connected, live
//! subscribers, how old the newest checkpoint is, sequence-window refusals, CRL reloads.
//!
//! The same pattern as the agent's `metrics.rs`: the exposition is written by the
//! `prometheus-client` crate, this module only answers `GET /metrics`. Counters are counted
//! where things happen (the ingest loop, the reloader); gauges of state the collector already
//! keeps (open streams, the store's health, the last checkpoint) are read at each scrape, so
//! they can never drift from it.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc, OnceLock},
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use phiguard_support::metrics_http::MetricsError;

/// Why events were refused (never acknowledged: they stay in the agent's spool).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusedReason {
    /// The store's file system is full (ENOSPC).
    StoreFull,
    /// The store could not be written for another reason (EIO, …).
    StoreFailed,
    /// A seq too far above the agent's last stored one (`[store] max_seq_jump`).
    SequenceWindow,
    /// A new instance beyond `[store] max_new_instances_per_hour`.
    InstanceLimit,
    /// The batch failed validation (count, seq order, host, machine id, …).
    InvalidBatch,
}

impl RefusedReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedReason::StoreFull => "store_full",
            RefusedReason::StoreFailed => "store_failed",
            RefusedReason::SequenceWindow => "sequence_window",
            RefusedReason::InstanceLimit => "instance_limit",
            RefusedReason::InvalidBatch => "invalid_batch",
        }
    }
}

/// Labels of the refused-events counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A [`RefusedReason`] as text.
    pub reason: &'static str,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of the export metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    /// The export's NAME (`[export.NAME]`).
    pub export: String,
}

/// The state read at each scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Agent ingest streams open.
    pub agents_connected: u64,
    /// Subscriptions open.
    pub subscribers: u64,
    /// Whether some agent's chain cannot be written because the store's file system is full.
    pub store_full: bool,
    /// Whether some agent's chain cannot be written at all (full or failing).
    pub store_failing: bool,
    /// Unix time of the newest checkpoint this collector signed (None: none since start).
    pub last_checkpoint_unix: Option<f64>,
    /// Seconds since then.
    pub last_checkpoint_age: Option<f64>,
}

type Source = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// Every metric the collector exports. Cloning shares the same counters.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    source: Arc<OnceLock<Source>>,
    /// Agents' events stored (new ones; resends acknowledged as duplicates are not counted).
    pub events_stored: Counter,
    /// Agents' events refused, never acknowledged, by reason.
    pub events_refused: Family<ReasonLabels, Counter>,
    /// Resent events acknowledged without being stored again.
    pub events_duplicate: Counter,
    /// `[jetstream]`: agents' events this front end published and JetStream acknowledged as
    /// new (resends it recognised are in `events_duplicate`).
    pub events_published: Counter,
    /// Batches refused because a seq was outside the agent's sequence window.
    pub sequence_window_refusals: Counter,
    /// Streams of a new agent instance refused (`[store] max_new_instances_per_hour`).
    pub instance_refusals: Counter,
    /// Changes of an agent's instance recorded (ALERT_KIND_INSTANCE_STARTED).
    pub instances_started: Counter,
    /// Reloads of the CRL file (SIGHUP), by result.
    pub crl_reloads: Family<ResultLabels, Counter>,
    /// Checkpoints signed and written to the store's checkpoint file.
    pub checkpoints: Counter,
    /// Checkpoints that could not be written to the exported copy (`export_dir`).
    pub checkpoint_export_failures: Counter,
    export_lag_events: Family<ExportLabels, Gauge>,
    export_lag_seconds: Family<ExportLabels, Gauge>,
    export_failures: Family<ExportLabels, Counter>,
    export_delivered: Family<ExportLabels, Counter>,
    agents_connected: Gauge,
    subscribers: Gauge,
    store_full: Gauge,
    store_failing: Gauge,
    last_checkpoint: Gauge<f64, AtomicU64>,
    last_checkpoint_age: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `phiguard_collector_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("phiguard_collector");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            source: Arc::new(OnceLock::new()),
            events_stored: Counter::default(),
            events_refused: Family::default(),
            events_duplicate: Counter::default(),
            events_published: Counter::default(),
            sequence_window_refusals: Counter::default(),
            instance_refusals: Counter::default(),
            instances_started: Counter::default(),
            crl_reloads: Family::default(),
            checkpoints: Counter::default(),
            checkpoint_export_failures: Counter::default(),
            export_lag_events: Family::default(),
            export_lag_seconds: Family::default(),
            export_failures: Family::default(),
            export_delivered: Family::default(),
            agents_connected: Gauge::default(),
            subscribers: Gauge::default(),
            store_full: Gauge::default(),
            store_failing: Gauge::default(),
            last_checkpoint: Gauge::default(),
            last_checkpoint_age: Gauge::default(),
        };
        // Every reason shows from the start (0), so an alert rule can rate() it at once.
        for reason in [
            RefusedReason::StoreFull,
            RefusedReason::StoreFailed,
            RefusedReason::SequenceWindow,
            RefusedReason::InstanceLimit,
            RefusedReason::InvalidBatch,
        ] {
            m.refused(reason, 0);
        }
        registry.register(
            "events_stored",
            "Agents' events stored (resends acknowledged as duplicates are not counted)",
            m.events_stored.clone(),
        );
        registry.register(
            "events_refused",
            "Agents' events refused and not acknowledged (they stay in the agent's spool), by reason: store_full, store_failed, sequence_window, invalid_batch",
            m.events_refused.clone(),
        );
        registry.register(
            "events_duplicate",
            "Resent events acknowledged without being stored again",
            m.events_duplicate.clone(),
        );
        registry.register(
            "events_published",
            "Agents' events published to JetStream and acknowledged by it as new ([jetstream] front end)",
            m.events_published.clone(),
        );
        registry.register(
            "sequence_window_refusals",
            "Batches refused because a seq was too far above the agent's last stored one ([store] max_seq_jump)",
            m.sequence_window_refusals.clone(),
        );
        registry.register(
            "instance_refusals",
            "Streams of a new agent instance refused ([store] max_new_instances_per_hour)",
            m.instance_refusals.clone(),
        );
        registry.register(
            "instances_started",
            "Changes of an agent's instance recorded in its chain (a spool reset, a reinstall, or a stolen certificate)",
            m.instances_started.clone(),
        );
        registry.register(
            "crl_reloads",
            "Reloads (SIGHUP) with a CRL file configured, by result (success, failure: the CRL in force stays)",
            m.crl_reloads.clone(),
        );
        registry.register(
            "checkpoints",
            "Checkpoints signed and written to the store's checkpoint file",
            m.checkpoints.clone(),
        );
        registry.register(
            "checkpoint_export_failures",
            "Checkpoints that could not be appended to the exported copy ([checkpoint] export_dir)",
            m.checkpoint_export_failures.clone(),
        );
        registry.register(
            "export_lag_events",
            "Stored records an export ([export.NAME]) has not delivered yet",
            m.export_lag_events.clone(),
        );
        registry.register(
            "export_lag_seconds",
            "Seconds since the collector received the oldest record an export has not delivered yet (0: caught up)",
            m.export_lag_seconds.clone(),
        );
        registry.register(
            "export_failures",
            "Failed export steps (target unreachable or unwritable; the chunk is tried again, nothing is skipped)",
            m.export_failures.clone(),
        );
        registry.register(
            "export_delivered",
            "Records an export delivered (written and flushed; resends after a restart count again)",
            m.export_delivered.clone(),
        );
        registry.register(
            "agents_connected",
            "Agent ingest streams open",
            m.agents_connected.clone(),
        );
        registry.register(
            "subscribers",
            "Live subscriptions open",
            m.subscribers.clone(),
        );
        registry.register(
            "store_full",
            "1 while some agent's chain cannot be written because the store's file system is full (its events are refused)",
            m.store_full.clone(),
        );
        registry.register(
            "store_failing",
            "1 while some agent's chain cannot be written (full or failing store)",
            m.store_failing.clone(),
        );
        registry.register(
            "last_checkpoint_timestamp_seconds",
            "Unix time of the newest checkpoint this collector signed (0: none since it started)",
            m.last_checkpoint.clone(),
        );
        registry.register(
            "last_checkpoint_age_seconds",
            "Seconds since the newest checkpoint this collector signed (-1: none since it started)",
            m.last_checkpoint_age.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Where the gauges are read at each scrape (set once, when the service exists).
    pub fn set_source(&self, source: impl Fn() -> Snapshot + Send + Sync + 'static) {
        let _ = self.source.set(Arc::new(source));
    }

    /// Counts `n` events refused for `reason`.
    pub fn refused(&self, reason: RefusedReason, n: usize) {
        self.events_refused
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc_by(n as u64);
    }

    /// The lag gauges of export `name` (shown from now on).
    pub fn export_lag(&self, name: &str) -> crate::export::Lag {
        let labels = ExportLabels {
            export: name.to_owned(),
        };
        crate::export::Lag {
            events: self.export_lag_events.get_or_create(&labels).clone(),
            seconds: self.export_lag_seconds.get_or_create(&labels).clone(),
        }
    }

    /// The failure counter of export `name` (shown from now on, at 0).
    pub fn export_failures(&self, name: &str) -> Counter {
        self.export_failures
            .get_or_create(&ExportLabels {
                export: name.to_owned(),
            })
            .clone()
    }

    /// The delivered counter of export `name`.
    pub fn export_delivered(&self, name: &str) -> Counter {
        self.export_delivered
            .get_or_create(&ExportLabels {
                export: name.to_owned(),
            })
            .clone()
    }

    /// Counts a reload of the CRL file.
    pub fn crl_reloaded(&self, ok: bool) {
        self.crl_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    fn refresh(&self) {
        let Some(source) = self.source.get() else {
            return;
        };
        let s = source();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.agents_connected.set(gauge(s.agents_connected));
        self.subscribers.set(gauge(s.subscribers));
        self.store_full.set(i64::from(s.store_full));
        self.store_failing.set(i64::from(s.store_failing));
        self.last_checkpoint
            .set(s.last_checkpoint_unix.unwrap_or(0.0));
        self.last_checkpoint_age
            .set(s.last_checkpoint_age.unwrap_or(-1.0));
    }

    /// The text exposition of every metric, gauges read now.
    pub fn encode(&self) -> String {
        self.refresh();
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Binds `addr` (loopback only) and serves `GET /metrics` until the runtime stops. Must
    /// be called inside a tokio runtime. Returns the bound address (port 0 picks one).
    pub fn serve(self, addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
        phiguard_support::metrics_http::serve(addr, move || self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric_and_reads_the_gauges_at_each_scrape() {
        let metrics = Metrics::new();
        metrics.events_stored.inc_by(5);
        metrics.refused(RefusedReason::StoreFull, 3);
        metrics.crl_reloaded(false);
        let before = metrics.encode();
        assert!(
            before.contains("phiguard_collector_last_checkpoint_age_seconds 0.0"),
            "no source yet: {before}"
        );
        let full = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = full.clone();
        metrics.set_source(move || Snapshot {
            agents_connected: 2,
            subscribers: 1,
            store_full: f.load(std::sync::atomic::Ordering::SeqCst),
            store_failing: true,
            last_checkpoint_unix: Some(1_700_000_000.0),
            last_checkpoint_age: Some(1.5),
        });
        let text = metrics.encode();
        for needle in [
            "phiguard_collector_events_stored_total 5",
            "phiguard_collector_events_refused_total{reason=\"store_full\"} 3",
            "phiguard_collector_events_refused_total{reason=\"sequence_window\"} 0",
            "phiguard_collector_crl_reloads_total{result=\"failure\"} 1",
            "phiguard_collector_agents_connected 2",
            "phiguard_collector_subscribers 1",
            "phiguard_collector_store_full 1",
            "phiguard_collector_store_failing 1",
            "phiguard_collector_last_checkpoint_age_seconds 1.5",
            "phiguard_collector_sequence_window_refusals_total 0",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        full.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(metrics.encode().contains("phiguard_collector_store_full 0"));
    }

    #[test]
    fn refuses_a_non_loopback_address() {
        let addr: SocketAddr = "0.0.0.0:9465".parse().unwrap();
        assert!(matches!(
            Metrics::new().serve(addr),
            Err(MetricsError::NotLoopback(_))
        ));
    }
}
