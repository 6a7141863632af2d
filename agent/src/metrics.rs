//! Prometheus metrics: what the agent counts, and the loopback-only HTTP endpoint that
//! serves them (`[metrics] listen`, off by default). The exposition format is written by the
//! `prometheus-client` crate; this module only answers `GET /metrics`.

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, AtomicU64},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use phiguard_support::metrics_http::MetricsError;

/// Labels of per-kind counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Event kind (`exec`, `file_open`, … for events; the kernel record kind for losses).
    /// Borrowed for the per-event counter, so counting an event allocates nothing.
    pub kind: Cow<'static, str>,
}

/// Labels of per-program counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    /// The kernel program's name (`file_sys_exit_opens`, …).
    pub program: Cow<'static, str>,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: String,
}

/// Labels of the enforcement-layer gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LayerLabels {
    /// `file`, `exec`, `tcp`, `unix`.
    pub resource: String,
    /// `lsm`, `cgroup`, `signal`, `none`.
    pub layer: String,
}

/// Every metric the agent exports. Cloning shares the same counters.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Events written to the sinks, by kind.
    pub events: Family<KindLabels, Counter>,
    /// Records the kernel could not write to the ring buffer, by record kind.
    pub kernel_lost: Family<KindLabels, Counter>,
    /// Kernel program runs that stopped on a fault (a read or map update that failed), by
    /// program.
    pub kernel_faults: Family<ProgramLabels, Counter>,
    /// Ring-buffer records that did not decode.
    pub decode_errors: Counter,
    /// Event writes a sink refused (the event is missing from that sink).
    pub sink_errors: Counter,
    /// The policy generation in force (0: no policies).
    pub policy_generation: Gauge,
    /// Policy loads and reloads, by result.
    pub policy_reloads: Family<ResultLabels, Counter>,
    /// Unix time of the last policy load or reload, by result.
    pub policy_reload_time: Family<ResultLabels, Gauge<f64, AtomicU64>>,
    /// 1 for the layer that enforces each kind of resource on this kernel.
    pub enforcement_layer: Family<LayerLabels, Gauge>,
    /// Kernel programs attached.
    pub programs_attached: Gauge,
    /// Kernel programs the agent knows (attached or not).
    pub programs_known: Gauge,
    /// Whether the programs are pinned (enforcement outlives the agent).
    pub programs_pinned: Gauge<i64, AtomicI64>,
    /// Events spooled and not yet acknowledged by the collector (seq distance).
    pub spool_events: Gauge,
    /// Bytes the spool holds.
    pub spool_bytes: Gauge,
    /// 1 while a stream to the collector is open.
    pub collector_connected: Gauge,
    /// Unix time of the collector's last acknowledgement (absent until the first).
    pub publish_last_ack: Gauge<f64, AtomicU64>,
    /// Changes to the agent's kernel state made by something else, by kind.
    pub tamper: Family<KindLabels, Counter>,
    /// Break-glass grants in force (in the kernel's map).
    pub break_glass_grants: Gauge,
    /// The fanotify layer's counters (zero where another layer decides).
    pub fanotify: crate::fanotify::Counters,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `phiguard_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("phiguard");
        let metrics = Metrics {
            registry: Arc::new(Registry::default()),
            events: Family::default(),
            kernel_lost: Family::default(),
            kernel_faults: Family::default(),
            decode_errors: Counter::default(),
            sink_errors: Counter::default(),
            policy_generation: Gauge::default(),
            policy_reloads: Family::default(),
            policy_reload_time: Family::default(),
            enforcement_layer: Family::default(),
            programs_attached: Gauge::default(),
            programs_known: Gauge::default(),
            programs_pinned: Gauge::default(),
            spool_events: Gauge::default(),
            spool_bytes: Gauge::default(),
            collector_connected: Gauge::default(),
            publish_last_ack: Gauge::default(),
            tamper: Family::default(),
            break_glass_grants: Gauge::default(),
            fanotify: crate::fanotify::Counters::default(),
        };
        registry.register(
            "tamper_findings",
            "Changes to the agent's kernel state made by something else (program_detached, pin_removed, map_modified), found by its integrity check",
            metrics.tamper.clone(),
        );
        registry.register(
            "events",
            "Events written to the sinks, by kind",
            metrics.events.clone(),
        );
        registry.register(
            "kernel_events_lost",
            "Records lost in the kernel because the ring buffer was full, by record kind",
            metrics.kernel_lost.clone(),
        );
        registry.register(
            "kernel_faults",
            "Kernel program runs that stopped because a read or map update failed where it should not, by program",
            metrics.kernel_faults.clone(),
        );
        registry.register(
            "decode_errors",
            "Ring-buffer records that did not decode",
            metrics.decode_errors.clone(),
        );
        registry.register(
            "sink_errors",
            "Event writes a sink refused",
            metrics.sink_errors.clone(),
        );
        registry.register(
            "policy_generation",
            "Generation of the policy set in force (0: observe only)",
            metrics.policy_generation.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy loads and reloads, by result (success, failure)",
            metrics.policy_reloads.clone(),
        );
        registry.register(
            "policy_last_reload_timestamp_seconds",
            "Unix time of the last policy load or reload, by result",
            metrics.policy_reload_time.clone(),
        );
        registry.register(
            "enforcement_layer",
            "1 for the layer that enforces each kind of protected resource on this kernel",
            metrics.enforcement_layer.clone(),
        );
        registry.register(
            "programs_attached",
            "Kernel programs attached",
            metrics.programs_attached.clone(),
        );
        registry.register(
            "programs_known",
            "Kernel programs the agent knows, attached or not",
            metrics.programs_known.clone(),
        );
        registry.register(
            "programs_pinned",
            "1 when the programs are pinned and keep enforcing after the agent stops",
            metrics.programs_pinned.clone(),
        );
        registry.register(
            "spool_events",
            "Events spooled for the collector and not yet acknowledged (last spooled seq minus last acknowledged seq)",
            metrics.spool_events.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes the spool holds",
            metrics.spool_bytes.clone(),
        );
        registry.register(
            "collector_connected",
            "1 while a stream to the collector is open",
            metrics.collector_connected.clone(),
        );
        registry.register(
            "publish_last_ack_timestamp_seconds",
            "Unix time the collector last acknowledged a batch (0: not since the agent started)",
            metrics.publish_last_ack.clone(),
        );
        registry.register(
            "break_glass_grants",
            "Break-glass grants in force: each lifts the allow-lists for one user or program until it expires",
            metrics.break_glass_grants.clone(),
        );
        let fanotify = &metrics.fanotify;
        for (name, help, counter) in [
            ("fanotify_permission_events", "Permission events the fanotify layer answered (opens and execs the kernel asked the agent about)", &fanotify.answered),
            ("fanotify_denied", "Permission events the fanotify layer refused", &fanotify.denied),
            ("fanotify_records_lost", "Fanotify decision records lost because the agent's queue was full", &fanotify.lost),
            ("fanotify_answer_errors", "Fanotify answers the kernel did not take", &fanotify.respond_errors),
            ("fanotify_ignore_marks", "Unprotected inodes whose later opens the kernel answers itself (evictable ignore marks placed)", &fanotify.ignore_marks),
            ("fanotify_ignore_mark_failures", "Ignore marks the kernel refused (those inodes keep being asked about)", &fanotify.ignore_mark_failures),
            ("fanotify_change_notifications", "Change notifications (truncate, unlink, rename, link, attributes) the fanotify change reporter has taken in", &fanotify.changes),
        ] {
            registry.register(name, help, counter.clone());
        }
        Metrics {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Records the outcome of a policy load or reload now.
    pub fn policy_reloaded(&self, ok: bool) {
        let labels = ResultLabels {
            result: if ok { "success" } else { "failure" }.to_owned(),
        };
        self.policy_reloads.get_or_create(&labels).inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.policy_reload_time.get_or_create(&labels).set(now);
    }

    /// Records a snapshot of the collector link.
    pub fn link(&self, state: &crate::link::LinkState) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.spool_events.set(gauge(state.spool_events));
        self.spool_bytes.set(gauge(state.spool_bytes));
        self.collector_connected.set(i64::from(state.connected));
        self.publish_last_ack
            .set(state.last_ack_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
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
    fn exposition_names_every_metric() {
        let metrics = Metrics::new();
        metrics
            .events
            .get_or_create(&KindLabels {
                kind: "file_open".into(),
            })
            .inc();
        metrics.policy_reloaded(true);
        metrics.policy_generation.set(3);
        let text = metrics.encode();
        for needle in [
            "phiguard_events_total{kind=\"file_open\"} 1",
            "phiguard_policy_reloads_total{result=\"success\"} 1",
            "phiguard_policy_generation 3",
            "phiguard_policy_last_reload_timestamp_seconds{result=\"success\"}",
            "phiguard_programs_attached 0",
            "phiguard_spool_events 0",
            "phiguard_break_glass_grants 0",
            "phiguard_fanotify_permission_events_total 0",
            "phiguard_fanotify_ignore_marks_total 0",
            "phiguard_publish_last_ack_timestamp_seconds 0.0",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn refuses_a_non_loopback_address() {
        let addr: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert!(matches!(
            Metrics::new().serve(addr),
            Err(MetricsError::NotLoopback(_))
        ));
    }
}
