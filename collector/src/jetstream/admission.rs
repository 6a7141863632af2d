//! The front ends' refusals before the acknowledgement: the sequence window
//! (`[store] max_seq_jump`) and the new-instance limit (`[store] max_new_instances_per_hour`)
//! applied to a batch before it is published, with the state they need shared by every front
//! end through a JetStream key-value bucket (`STREAM_AGENTS`, replicated like the stream).
//!
//! The bucket holds one entry per agent: the highest seq admitted of each of its instances and
//! when its new instances started within the last hour. A batch is checked against the entry
//! exactly as the store checks it in the embedded layout; an admitted batch that moves the
//! entry on is written back with compare-and-set on the entry's revision before anything is
//! published, so two front ends cannot both admit conflicting batches (the second one reads
//! the entry again and is checked against it). A refused batch is refused to the agent
//! (`OUT_OF_RANGE`, `RESOURCE_EXHAUSTED`) and never reaches the stream.
//!
//! An entry moved on for a batch whose publish then failed only admits that batch's seqs
//! early: the agent resends it, and the resend lies within the window. The store writer keeps
//! its own checks behind these.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use serde::{Deserialize, Serialize};

use super::bus::{agent_token, Bus, BusError};
use crate::window::Violation;

/// How many times a compare-and-set that lost a race is tried again with the new entry.
const CAS_TRIES: usize = 32;
/// New instances count against the limit for this long.
const INSTANCE_HOUR: Duration = Duration::from_secs(3600);

/// What the front ends know of one agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEntry {
    /// The highest seq admitted of each instance ("" for the legacy stream).
    pub instances: BTreeMap<String, u64>,
    /// When (Unix seconds) each new instance of the last hour started.
    pub starts: Vec<u64>,
}

/// The limits a batch is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `[store] max_seq_jump`.
    pub max_seq_jump: u64,
    /// `[store] max_new_instances_per_hour`.
    pub max_new_instances_per_hour: u32,
}

/// Checks a batch of `instance` with the (increasing, non-zero) `seqs` against `entry` at
/// `now` (Unix seconds), as the store does: the window of each instance from its highest
/// admitted seq (a new instance's from just below its first event), and the new-instance
/// limit. Returns the entry as it is once the batch is admitted, or None when the batch
/// changes nothing (a resend).
pub fn check(
    entry: &AgentEntry,
    instance: &str,
    seqs: &[u64],
    now: u64,
    limits: Limits,
) -> Result<Option<AgentEntry>, Violation> {
    let Some(&first) = seqs.first() else {
        return Ok(None);
    };
    let known = entry.instances.contains_key(instance);
    let admitted = match entry.instances.get(instance) {
        _ if !known && !instance.is_empty() => first - 1,
        Some(seq) => *seq,
        None => 0,
    };
    let mut last = admitted;
    for &seq in seqs {
        if seq > last.saturating_add(limits.max_seq_jump) {
            return Err(Violation::SeqJump {
                last: admitted,
                seq,
                max: limits.max_seq_jump,
            });
        }
        last = last.max(seq);
    }
    if last <= admitted && known {
        return Ok(None);
    }
    let mut next = entry.clone();
    next.starts
        .retain(|t| now.saturating_sub(*t) < INSTANCE_HOUR.as_secs());
    if !known && !instance.is_empty() && last > admitted {
        if next.starts.len() >= limits.max_new_instances_per_hour as usize {
            return Err(Violation::InstanceLimit {
                started: next.starts.len(),
                max: limits.max_new_instances_per_hour,
            });
        }
        next.starts.push(now);
    }
    next.instances.insert(instance.to_owned(), last);
    Ok(Some(next))
}

/// A batch the front end cannot judge: the bucket could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the agents' admission bucket {bucket}: {message}")]
pub struct AdmissionError {
    bucket: String,
    message: String,
}

/// The shared admission state, in JetStream.
#[derive(Clone)]
pub struct Admission {
    store: kv::Store,
    bucket: String,
    limits: Limits,
}

impl Admission {
    /// Opens (or makes) the bucket `STREAM_AGENTS`.
    pub async fn open(bus: &Bus, limits: Limits) -> Result<Admission, BusError> {
        let bucket = format!("{}_AGENTS", bus.config().stream);
        let store = bus
            .kv_bucket(
                &bucket,
                "phiguard: each agent's admitted seqs and new instances",
                Duration::ZERO,
            )
            .await?;
        Ok(Admission {
            store,
            bucket,
            limits,
        })
    }

    fn failed(&self, message: impl std::fmt::Display) -> AdmissionError {
        AdmissionError {
            bucket: self.bucket.clone(),
            message: message.to_string(),
        }
    }

    /// Admits a batch of `agent`'s `instance` with the (increasing, non-zero) `seqs`, or says
    /// which rule refuses it. The entry is moved on (compare-and-set) before this returns Ok.
    pub async fn admit(
        &self,
        agent: &str,
        instance: &str,
        seqs: &[u64],
    ) -> Result<Result<(), Violation>, AdmissionError> {
        let key = agent_token(agent);
        for _ in 0..CAS_TRIES {
            let found = self.store.entry(&key).await.map_err(|e| self.failed(e))?;
            let (entry, revision) = match &found {
                Some(found) if found.operation == kv::Operation::Put => (
                    serde_json::from_slice::<AgentEntry>(&found.value)
                        .map_err(|e| self.failed(format!("entry {key}: {e}")))?,
                    Some(found.revision),
                ),
                _ => (AgentEntry::default(), None),
            };
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let next = match check(&entry, instance, seqs, now, self.limits) {
                Err(violation) => return Ok(Err(violation)),
                Ok(None) => return Ok(Ok(())),
                Ok(Some(next)) => next,
            };
            let value = serde_json::to_vec(&next)
                .map_err(|e| self.failed(e))?
                .into();
            let written = match revision {
                Some(revision) => match self.store.update(&key, value, revision).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(self.failed(e)),
                },
                None => match self.store.create(&key, value).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(self.failed(e)),
                },
            };
            if written {
                return Ok(Ok(()));
            }
            // Another front end moved the entry on meanwhile: judge again against it.
        }
        Err(self.failed(format!(
            "entry {key} changed under {CAS_TRIES} tries in a row"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_seq_jump: 1000,
        max_new_instances_per_hour: 2,
    };

    #[test]
    fn the_window_and_the_instance_limit_are_the_stores() {
        let empty = AgentEntry::default();
        // A first instance starts its space at its first event, and counts as a start.
        let a = check(&empty, "i1", &[500, 501], 100, LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!(a.instances["i1"], 501);
        assert_eq!(a.starts, vec![100]);
        // Within the window: admitted; a resend changes nothing.
        let a = check(&a, "i1", &[502, 1501], 101, LIMITS).unwrap().unwrap();
        assert_eq!(check(&a, "i1", &[600, 700], 102, LIMITS), Ok(None));
        // Past it: refused, from the highest admitted seq.
        assert_eq!(
            check(&a, "i1", &[2502], 103, LIMITS),
            Err(Violation::SeqJump {
                last: 1501,
                seq: 2502,
                max: 1000
            })
        );
        // The legacy stream's window starts at 0.
        assert!(check(&a, "", &[1001], 103, LIMITS).is_err());
        // A second new instance is the last within the hour; a third is refused, an hour
        // later it is admitted.
        let b = check(&a, "i2", &[1], 200, LIMITS).unwrap().unwrap();
        assert_eq!(
            check(&b, "i3", &[1], 300, LIMITS),
            Err(Violation::InstanceLimit { started: 2, max: 2 })
        );
        assert!(check(&b, "i3", &[1], 100 + 3600, LIMITS).unwrap().is_some());
        // A known instance is not new again.
        assert!(check(&b, "i1", &[1502], 300, LIMITS).unwrap().is_some());
    }
}
