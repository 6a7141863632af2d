//! The live stream of a collector that does not write the store: every event any front end
//! publishes to JetStream, handed to this collector's subscribers as it arrives, so that a
//! SOC client connected to any collector sees every agent.
//!
//! The records carry no chain index (they are live notices, as the collector's unstored
//! alerts are): replay (`since-seq`, `since-time`) is served from the store, by the
//! collector that writes it.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt as _;
use phiguard_proto::v1;
use prost::Message as _;
use tokio::sync::watch;
use tracing::{info, warn};

use super::bus::Bus;

/// How long the relay waits for a message before it checks whether its consumer stalled.
const STALL_CHECK: Duration = Duration::from_secs(2);
use crate::{store::Record, stream::Hub};

/// Runs until `stopping` turns true: an ordered consumer from the stream's end, into `hub`.
/// An ordered consumer recreates itself where it left off when its server goes away.
pub async fn run(bus: Bus, hub: Arc<Hub>, mut stopping: watch::Receiver<bool>) {
    let prefix = bus.config().subject_prefix.clone();
    let mut deliver = DeliverPolicy::New;
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
            let Ok(event) = v1::Event::decode(message.payload.as_ref()) else {
                warn!(subject = %message.subject, "live relay: a message is not an event; skipped");
                continue;
            };
            let agent = event.host.as_ref().map_or("", |h| h.agent_id.as_str());
            let received = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            hub.publish(&[Arc::new(Record {
                agent: Arc::from(agent),
                index: 0,
                event,
                received,
            })]);
        }
    }
}
