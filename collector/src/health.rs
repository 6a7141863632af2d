//! Whether the store can be written, per agent: a batch that could not be stored (disk full,
//! I/O error) starts an outage for that agent's chain; the first stored batch after it ends
//! the outage.
//!
//! During an outage the agent's batches are refused (never acknowledged: they stay in its
//! spool and are resent), subscribers get one live `ALERT_KIND_STORE_FAILING` per agent (it
//! cannot be stored, the disk is what failed), and the log gets one line per refused batch.
//! When writing works again the outage is stored in the chain as
//! `ALERT_KIND_STORE_RECOVERED` (how long, why, how many batches were refused), so the
//! trail itself shows the hole in time, and that nothing in it was lost.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use phiguard_proto::v1;
use tokio::time::Instant;
use tonic::Status;

use crate::{
    alert,
    store::{Repair, StoreError},
};

#[derive(Debug)]
struct Outage {
    since: Instant,
    cause: String,
    refused: u64,
    full: bool,
}

/// The store's write health per agent chain.
#[derive(Debug, Default)]
pub struct StoreHealth {
    outages: Mutex<HashMap<String, Outage>>,
}

/// The status an agent gets for a batch that could not be stored.
pub fn refusal(error: &StoreError) -> Status {
    if error.is_full() {
        Status::resource_exhausted(
            "the collector's store is full: batch not stored or acknowledged, resend later",
        )
    } else {
        Status::unavailable(
            "the collector could not write its store: batch not stored or acknowledged, resend later",
        )
    }
}

fn alert_event(agent: &str, kind: v1::AlertKind, message: String, silent: Duration) -> v1::Event {
    alert::event(
        agent,
        v1::CollectorAlert {
            kind: kind as i32,
            message,
            silent_ms: u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        },
    )
}

/// The alert stored in an agent's chain for a repair made at start-up.
pub fn repaired_alert(repair: &Repair) -> v1::Event {
    alert_event(
        &repair.agent,
        v1::AlertKind::StoreRepaired,
        format!(
            "collector cut {} bytes at offset {} of {} at start-up: {} (never acknowledged)",
            repair.bytes,
            repair.offset,
            repair.segment.display(),
            repair.reason
        ),
        Duration::ZERO,
    )
}

impl StoreHealth {
    /// No outage.
    pub fn new() -> StoreHealth {
        StoreHealth::default()
    }

    fn outages(&self) -> MutexGuard<'_, HashMap<String, Outage>> {
        self.outages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A batch of `agent` could not be stored. Returns the live alert when this starts an
    /// outage for that agent.
    pub fn failed(&self, agent: &str, error: &StoreError, now: Instant) -> Option<v1::Event> {
        let mut outages = self.outages();
        if let Some(outage) = outages.get_mut(agent) {
            outage.refused += 1;
            outage.full = error.is_full();
            return None;
        }
        let cause = if error.is_full() {
            format!("store full: {error}")
        } else {
            format!("store write failed: {error}")
        };
        let message = format!(
            "collector cannot store events of {agent} ({cause}); they stay in the agent's spool and are not acknowledged"
        );
        outages.insert(
            agent.to_owned(),
            Outage {
                since: now,
                cause,
                refused: 1,
                full: error.is_full(),
            },
        );
        Some(alert_event(
            agent,
            v1::AlertKind::StoreFailing,
            message,
            Duration::ZERO,
        ))
    }

    /// A batch of `agent` was stored. Returns the alert to store when this ends an outage.
    pub fn stored(&self, agent: &str, now: Instant) -> Option<v1::Event> {
        let outage = self.outages().remove(agent)?;
        let lasted = now.saturating_duration_since(outage.since);
        Some(alert_event(
            agent,
            v1::AlertKind::StoreRecovered,
            format!(
                "collector stores events of {agent} again after {:.1}s ({}; {} batches refused, none acknowledged, none lost)",
                lasted.as_secs_f64(),
                outage.cause,
                outage.refused
            ),
            lasted,
        ))
    }

    /// Whether any agent's chain cannot be written now.
    pub fn failing(&self) -> bool {
        !self.outages().is_empty()
    }

    /// Whether any agent's chain cannot be written now because the store's file system is
    /// full (its last refused batch failed with ENOSPC).
    pub fn full(&self) -> bool {
        self.outages().values().any(|o| o.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(e: &v1::Event) -> v1::AlertKind {
        match &e.body {
            Some(v1::event::Body::Alert(a)) => v1::AlertKind::try_from(a.kind).unwrap(),
            _ => panic!("not an alert: {e:?}"),
        }
    }

    #[test]
    fn one_alert_per_outage_and_one_recovery() {
        let health = StoreHealth::new();
        let full = StoreError::Io {
            path: "/store/agents/a/x.seg".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let t0 = Instant::now();
        assert!(
            health.stored("a", t0).is_none(),
            "no outage, nothing to say"
        );
        let first = health.failed("a", &full, t0).expect("outage starts");
        assert_eq!(kind(&first), v1::AlertKind::StoreFailing);
        assert!(health.failed("a", &full, t0).is_none(), "once per outage");
        assert!(health.failing());
        assert!(health.full());
        assert_eq!(refusal(&full).code(), tonic::Code::ResourceExhausted);
        let back = health
            .stored("a", t0 + Duration::from_secs(3))
            .expect("outage ends");
        assert_eq!(kind(&back), v1::AlertKind::StoreRecovered);
        let Some(v1::event::Body::Alert(a)) = &back.body else {
            unreachable!()
        };
        assert_eq!(a.silent_ms, 3000);
        assert!(a.message.contains("2 batches refused"), "{}", a.message);
        assert!(!health.failing());
        assert!(!health.full());
        let eio = StoreError::Io {
            path: "/store/agents/a/x.seg".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        health.failed("a", &eio, t0);
        assert!(health.failing() && !health.full(), "failing, not full");
    }
}
