//! The live stream of a collector that does not write the store: every event any front end
//! publishes to JetStream (runs unpacked into their events, [`super::run`]), handed to this collector's subscribers as it arrives, so that a
//! SOC client connected to any collector sees every agent.
//!
//! The records carry no chain index (they are live notices, as the collector's unstored
//! alerts are): replay (`since-seq`, `since-time`) is served from the store, by the
//! collector that writes it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt as _;
use phiguard_proto::v1;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{bus::Bus, run};

/// How long the relay waits for a message before it checks whether its consumer stalled.
const STALL_CHECK: Duration = Duration::from_secs(2);
use crate::{store::Record, stream::Hub};

/// The highest seq relayed of each (agent, instance). A resend cut into other runs than the
/// first sending (after a failover) is a message of its own in the stream, holding events
/// already relayed; the stream has each agent's events in seq order, so an event at or below
/// the highest relayed is such a copy, and subscribers get each event once.
#[derive(Default)]
struct Relayed {
    highest: HashMap<(String, String), u64>,
}

impl Relayed {
    /// Whether `event` is relayed for the first time (and notes it). A collector's own record
    /// (seq 0) always is: its message id is its own, and JetStream de-duplicates it.
    fn first_time(&mut self, event: &v1::Event) -> bool {
        if event.seq == 0 {
            return true;
        }
        let host = event.host.as_ref();
        let key = (
            host.map_or_else(String::new, |h| h.agent_id.clone()),
            host.map_or_else(String::new, |h| h.instance_id.clone()),
        );
        let highest = self.highest.entry(key).or_default();
        if event.seq <= *highest {
            return false;
        }
        *highest = event.seq;
        true
    }
}

/// Runs until `stopping` turns true: an ordered consumer from the stream's end, into `hub`.
/// An ordered consumer recreates itself where it left off when its server goes away.
pub async fn run(bus: Bus, hub: Arc<Hub>, mut stopping: watch::Receiver<bool>) {
    let prefix = bus.config().subject_prefix.clone();
    let mut deliver = DeliverPolicy::New;
    let mut relayed = Relayed::default();
    loop {
        if *stopping.borrow() {
            return;
        }
        let messages = async {
            let stream = bus.ensure_stream().await.map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: format!("{prefix}.>"),
                    deliver_policy: deliver,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        }
        .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                warn!(%error, "live relay: no JetStream consumer yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                continue;
            }
        };
        info!("live relay following JetStream");
        let mut last_seen = 0u64;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(STALL_CHECK, messages.next()) => next,
                _ = stopping.wait_for(|s| *s) => return,
            };
            let next = match next {
                Ok(next) => next,
                Err(_) => {
                    // Quiet: is the stream quiet too, or did the consumer stall (its server
                    // gone without a word)? A stream that moved on means the latter.
                    match bus.ensure_stream().await {
                        Ok(mut stream) => match stream.info().await {
                            Ok(info) if info.state.last_sequence > last_seen && last_seen > 0 => {
                                warn!(
                                    last_seen,
                                    stream_last = info.state.last_sequence,
                                    "live relay: consumer stalled; following again"
                                );
                                break;
                            }
                            _ => continue,
                        },
                        Err(_) => continue,
                    }
                }
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    warn!(%error, "live relay: consumer failed; following again");
                    break;
                }
                None => break,
            };
            if let Ok(info) = message.info() {
                if info.stream_sequence <= last_seen {
                    continue;
                }
                last_seen = info.stream_sequence;
                // Start again after the last one seen, never from the end: none skipped.
                deliver = DeliverPolicy::ByStartSequence {
                    start_sequence: info.stream_sequence + 1,
                };
            }
            let events = match run::decode(message.headers.as_ref(), message.payload.as_ref()) {
                Ok(events) => events,
                Err(error) => {
                    warn!(subject = %message.subject, %error, "live relay: a message holds no readable events; skipped");
                    continue;
                }
            };
            let received = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let records: Vec<_> = events
                .into_iter()
                .filter(|event| relayed.first_time(event))
                .map(|event| {
                    let agent = event.host.as_ref().map_or("", |h| h.agent_id.as_str());
                    Arc::new(Record {
                        agent: Arc::from(agent),
                        index: 0,
                        event,
                        received,
                    })
                })
                .collect();
            hub.publish(&records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(instance: &str, seq: u64) -> v1::Event {
        v1::Event {
            seq,
            host: Some(v1::Host {
                agent_id: "ehr-a".into(),
                instance_id: instance.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn events_already_relayed_in_another_run_are_not_relayed_again() {
        let mut relayed = Relayed::default();
        let first: Vec<bool> = (1..=5)
            .map(|s| relayed.first_time(&event("i1", s)))
            .collect();
        assert_eq!(first, vec![true; 5]);
        // A resend cut differently: 3..=7, of which 3..=5 were relayed.
        let resend: Vec<bool> = (3..=7)
            .map(|s| relayed.first_time(&event("i1", s)))
            .collect();
        assert_eq!(resend, vec![false, false, false, true, true]);
        // Another instance counts on its own; the collector's records always pass.
        assert!(relayed.first_time(&event("i2", 1)));
        assert!(relayed.first_time(&event("i1", 0)));
        assert!(relayed.first_time(&event("i1", 0)));
    }
}
