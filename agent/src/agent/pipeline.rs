//! The event pipeline of a running agent: each ring-buffer record is decoded, enriched,
//! numbered and written to every sink ([`Pipeline::handle`]); the fanotify layer's decisions
//! join it at enrichment ([`Pipeline::handle_record`]), the agent's own events at
//! [`Pipeline::emit`]. It counts what went through ([`RunStats`], the metrics) and what failed,
//! and logs failures once a tick, never once per record.

use phiguard_common::{event::Kind, policy::NO_RULE};
use phiguard_proto::v1::{self, event::Body};
use tracing::{debug, error, warn};

use crate::{
    enrich::Enricher,
    event::decode::{decode, DecodedEvent},
    fanotify::Record,
    metrics::{KindLabels, Metrics},
    sink::{numbering::Numbering, Sink, SinkLoss},
};

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
    /// Failed sink writes.
    pub sink_errors: u64,
    /// Database capture records read, and their bytes (what the kernel sent of database
    /// traffic).
    pub db_records: u64,
    /// See [`RunStats::db_records`].
    pub db_bytes: u64,
}

/// Failures that can happen once per record: logged as one line per tick with a count and
/// the latest error, never one line per record (a broken sink must not flood the journal).
#[derive(Debug, Default)]
struct Problems {
    decode_logged: u64,
    last_decode: Option<String>,
    sink_logged: u64,
    last_sink: Option<String>,
}

/// Sees every database capture record as the kernel sent it, before it is decoded (a test's
/// proof of what leaves the kernel).
pub type DbRecordTap = Box<dyn FnMut(&[u8]) + Send>;

/// Where events go, and what counts them.
pub struct Pipeline {
    sinks: Vec<Box<dyn Sink>>,
    db_tap: Option<DbRecordTap>,
    numbering: Numbering,
    /// What went through so far.
    pub stats: RunStats,
    metrics: Metrics,
    problems: Problems,
}

impl Pipeline {
    /// Writes to `sinks`, counting in `metrics` (shared with the agent); numbers events on
    /// from the last one a durable sink (the spool) holds.
    pub fn new(sinks: Vec<Box<dyn Sink>>, metrics: Metrics) -> Pipeline {
        let last = sinks.iter().filter_map(|s| s.resume_seq()).max();
        Pipeline {
            sinks,
            db_tap: None,
            numbering: Numbering::after(last.unwrap_or(0)),
            stats: RunStats::default(),
            metrics,
            problems: Problems::default(),
        }
    }

    /// When the sink that batches its flushes in time (the spool's fsync) is due next.
    pub fn flush_due(&self) -> Option<std::time::Instant> {
        self.sinks.iter().filter_map(|sink| sink.flush_due()).min()
    }

    /// Events the sinks dropped since the last call (a full spool), one entry per sink.
    pub fn take_losses(&mut self) -> Vec<SinkLoss> {
        self.sinks
            .iter_mut()
            .filter_map(|s| s.take_losses())
            .collect()
    }

    /// Shows every database capture record to `tap` from now on.
    pub fn tap_db_records(&mut self, tap: DbRecordTap) {
        self.db_tap = Some(tap);
    }

    /// One ring-buffer record: decoded, enriched, written.
    pub fn handle(&mut self, enricher: &mut Enricher, bytes: &[u8]) {
        if let Some(event) = self.decode_counted(bytes) {
            self.handle_decoded(enricher, event);
        }
    }

    /// Decodes a ring-buffer record, counting it (and, when it does not decode, the error).
    fn decode_counted(&mut self, bytes: &[u8]) -> Option<DecodedEvent> {
        self.stats.records += 1;
        if bytes.get(..4) == Some(&(Kind::DbData as u32).to_ne_bytes()[..]) {
            self.stats.db_records += 1;
            self.stats.db_bytes += bytes.len() as u64;
            if let Some(tap) = &mut self.db_tap {
                tap(bytes);
            }
        }
        match decode(bytes) {
            Ok(event) => Some(event),
            Err(error) => {
                self.stats.decode_errors += 1;
                self.metrics.decode_errors.inc();
                debug!(%error, "undecodable ring-buffer record");
                self.problems.last_decode = Some(error.to_string());
                None
            }
        }
    }

    /// Like [`Pipeline::handle`], for a record another agent's programs wrote: the kernel rule
    /// index of its decision is first translated by `rule` into this agent's tables.
    pub fn handle_translated(
        &mut self,
        enricher: &mut Enricher,
        bytes: &[u8],
        rule: impl Fn(u32) -> u32,
    ) {
        let Some(mut event) = self.decode_counted(bytes) else {
            return;
        };
        if let Some(decision) = event.decision_mut() {
            if decision.rule != NO_RULE {
                decision.rule = rule(decision.rule);
            }
        }
        self.handle_decoded(enricher, event);
    }

    /// Enriches and emits one decision of the fanotify layer, through the same path as the
    /// kernel's records.
    pub fn handle_record(&mut self, enricher: &mut Enricher, record: Record) {
        if let Some(process) = record.process {
            enricher.observe_process(process);
        }
        self.handle_decoded(enricher, record.event);
    }

    /// Enriches and emits one decoded record (from the ring buffer or the fanotify layer).
    fn handle_decoded(&mut self, enricher: &mut Enricher, decoded: DecodedEvent) {
        for event in enricher.enrich(decoded) {
            self.emit(event);
        }
    }

    /// Logs, once a tick, how many records did not decode and how many sink writes failed
    /// since the last tick.
    pub fn report_problems(&mut self) {
        let (stats, p) = (&self.stats, &mut self.problems);
        if stats.decode_errors > p.decode_logged {
            warn!(
                new = stats.decode_errors - p.decode_logged,
                total = stats.decode_errors,
                last_error = p.last_decode.as_deref().unwrap_or(""),
                "undecodable ring-buffer records"
            );
            p.decode_logged = stats.decode_errors;
        }
        if stats.sink_errors > p.sink_logged {
            warn!(
                new = stats.sink_errors - p.sink_logged,
                total = stats.sink_errors,
                last_error = p.last_sink.as_deref().unwrap_or(""),
                "sink writes failed: events were not written"
            );
            p.sink_logged = stats.sink_errors;
        }
    }

    /// Numbers `event` and writes it to every sink.
    pub fn emit(&mut self, mut event: v1::Event) {
        self.numbering.stamp(&mut event);
        self.stats.events += 1;
        self.metrics
            .events
            .get_or_create(&KindLabels {
                kind: body_kind(event.body.as_ref()).into(),
            })
            .inc();
        for sink in self.sinks.iter_mut() {
            if let Err(error) = sink.write(&event) {
                self.stats.sink_errors += 1;
                self.metrics.sink_errors.inc();
                debug!(%error, "sink write failed");
                self.problems.last_sink = Some(error.to_string());
            }
        }
    }

    /// Reopens the sinks' files (a reload: logrotate may have moved them).
    pub fn reopen(&mut self) {
        for sink in &mut self.sinks {
            if let Err(error) = sink.reopen() {
                error!(%error, "reopening an event file on reload failed; writing on to the one open");
            }
        }
    }

    /// Flushes every sink.
    pub fn flush(&mut self) -> std::io::Result<()> {
        for sink in &mut self.sinks {
            sink.flush()?;
        }
        Ok(())
    }
}

/// The metrics label of an event's kind.
fn body_kind(body: Option<&Body>) -> &'static str {
    match body {
        Some(Body::Exec(_)) => "exec",
        Some(Body::Fork(_)) => "fork",
        Some(Body::Exit(_)) => "exit",
        Some(Body::FileOpen(_)) => "file_open",
        Some(Body::Connect(_)) => "connect",
        Some(Body::TcpState(_)) => "tcp_state",
        Some(Body::EventsLost(_)) => "events_lost",
        Some(Body::PolicyLoad(_)) => "policy_load",
        Some(Body::Alert(_)) => "alert",
        Some(Body::DbSessionStart(_)) => "db_session_start",
        Some(Body::DbStatement(_)) => "db_statement",
        Some(Body::DbSessionEnd(_)) => "db_session_end",
        Some(Body::Heartbeat(_)) => "heartbeat",
        Some(Body::Tamper(_)) => "tamper",
        Some(Body::Subscription(_)) => "subscription",
        Some(Body::BreakGlass(_)) => "break_glass",
        Some(Body::DbLogin(_)) => "db_login",
        None => "none",
    }
}
