//! The sequence window's alerts: a batch whose seq jumps more than `[store] max_seq_jump`
//! above the agent's last stored seq is refused by the store (nothing stored, nothing
//! acknowledged, the stream ends with `OUT_OF_RANGE`). Each refusal is logged; an
//! `ALERT_KIND_SEQUENCE_REFUSED` goes into the agent's chain and to subscribers at most once a
//! minute per agent, so whoever holds a stolen certificate cannot flood the trail with them.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use phiguard_proto::v1;
use tokio::time::Instant;

use crate::alert;

/// A rule of the agent's stream that refuses a batch: nothing of it is stored or acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A seq more than `max` above the last one (`[store] max_seq_jump`).
    SeqJump {
        /// The highest seq stored (or admitted) of the batch's instance.
        last: u64,
        /// The seq that arrived.
        seq: u64,
        /// The limit.
        max: u64,
    },
    /// A new instance beyond `[store] max_new_instances_per_hour`.
    InstanceLimit {
        /// New instances started within the last hour.
        started: usize,
        /// The limit.
        max: u32,
    },
}

/// At most one stored alert per agent in this time.
pub const ALERT_EVERY: Duration = Duration::from_secs(60);

/// When each agent's last refusal alert was raised, and refusals since.
#[derive(Debug, Default)]
pub struct Refusals {
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Refusals {
    /// No refusal yet.
    pub fn new() -> Refusals {
        Refusals::default()
    }

    /// A batch of `agent` claiming `seq` after the stored `last` was refused. Returns the
    /// alert to store, unless one was raised for this agent within [`ALERT_EVERY`].
    pub fn refused(&self, agent: &str, last: u64, seq: u64, now: Instant) -> Option<v1::Event> {
        let mut map = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let suppressed = match map.get_mut(agent) {
            Some((when, count)) if now.saturating_duration_since(*when) < ALERT_EVERY => {
                *count += 1;
                return None;
            }
            Some((_, count)) => *count,
            None => 0,
        };
        map.insert(agent.to_owned(), (now, 0));
        let more = if suppressed > 0 {
            format!(" ({suppressed} more refused since the last alert)")
        } else {
            String::new()
        };
        Some(alert::event(
            agent,
            v1::CollectorAlert {
                kind: v1::AlertKind::SequenceRefused as i32,
                message: format!(
                    "agent {agent}: a batch claiming seq {seq} after the stored seq {last} was refused, not stored{more}: someone may hold this agent's certificate"
                ),
                expected_seq: last + 1,
                received_seq: seq,
                ..Default::default()
            },
        ))
    }

    /// A stream of `agent` with the new `instance` was refused after `started` new instances
    /// within the hour. Returns the alert to store, at most once per [`ALERT_EVERY`] per
    /// agent (counted apart from sequence refusals).
    pub fn instance_refused(
        &self,
        agent: &str,
        instance: &str,
        started: usize,
        now: Instant,
    ) -> Option<v1::Event> {
        let key = format!("{agent}\u{0}instances");
        let mut map = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let suppressed = match map.get_mut(&key) {
            Some((when, count)) if now.saturating_duration_since(*when) < ALERT_EVERY => {
                *count += 1;
                return None;
            }
            Some((_, count)) => *count,
            None => 0,
        };
        map.insert(key, (now, 0));
        let more = if suppressed > 0 {
            format!(" ({suppressed} more refused since the last alert)")
        } else {
            String::new()
        };
        let mut event = alert::event(
            agent,
            v1::CollectorAlert {
                kind: v1::AlertKind::InstanceRefused as i32,
                message: format!(
                    "agent {agent}: a stream of new instance {} was refused, not stored, after {started} new instances within the last hour{more}: someone may hold this agent's certificate",
                    crate::store::short_instance(instance)
                ),
                ..Default::default()
            },
        );
        if let Some(host) = event.host.as_mut() {
            // Not `instance_id`: the refused instance stored nothing, so it is named in words.
            host.instance_id.clear();
        }
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_a_minute_per_agent() {
        let refusals = Refusals::new();
        let t0 = Instant::now();
        assert!(refusals.refused("a", 10, u64::MAX, t0).is_some());
        assert!(refusals
            .refused("a", 10, u64::MAX, t0 + Duration::from_secs(1))
            .is_none());
        assert!(refusals.refused("b", 1, 1 << 40, t0).is_some(), "per agent");
        let later = refusals
            .refused("a", 10, 99_999_999, t0 + ALERT_EVERY)
            .expect("a minute later");
        let Some(v1::event::Body::Alert(a)) = later.body else {
            panic!()
        };
        assert_eq!((a.expected_seq, a.received_seq), (11, 99_999_999));
        assert!(a.message.contains("1 more refused"), "{}", a.message);
    }
}
