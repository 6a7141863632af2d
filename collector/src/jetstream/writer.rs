//! The store writer of the fleet layout: one durable JetStream consumer that takes every
//! published event in stream order and appends it to the hash-chained store, exactly as an
//! agent's own stream does in the embedded layout (chains, checkpoints, alerts, the live
//! stream of this collector's subscribers).
//!
//! Guarantees, and how:
//! - **Nothing acknowledged is lost.** A front end acknowledged the agent only once
//!   JetStream held the event (replicated); the writer acknowledges a message to JetStream
//!   only once the store has fsync'd it. A writer killed in between leaves the messages
//!   unacknowledged, and JetStream delivers them again.
//! - **Exactly once in the store.** Redelivered messages, and resends that reached
//!   JetStream after its de-duplication window, are recognised by the store's own
//!   de-duplication by (agent, instance, seq).
//! - **In order.** Messages are appended in the order of one fetch; a batch the store could
//!   not write is retried, in place, until it is written (the stream keeps it meanwhile), so a
//!   later event of an agent is never stored before an earlier one. At each start the
//!   consumer is made anew from its acknowledgement floor, so what a previous writer fetched
//!   and never acknowledged comes first, in order, not after its ack wait behind later events.
//! - **One writer.** Only the holder of the writer lease ([`super::lease`]) runs this; a
//!   standby takes over when the lease lapses. A writer paused past its lease is stopped by
//!   the store's fence ([`crate::fence`]) at its next append, and before it would remake the
//!   consumer its successor reads.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::{pull, AckPolicy, DeliverPolicy},
    Message,
};
use futures_util::StreamExt as _;
use phiguard_proto::v1;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{
    bus::{agent_token, Bus},
    run::{self, Unreadable},
};
use crate::server::{CollectorService, Refused};

/// Most messages taken in one fetch (and so appended in one go per agent); each holds a run
/// of up to [`run::MAX_RUN_BYTES`] of events.
const FETCH_MAX: usize = 1024;
/// How long a fetch waits for messages when the stream is quiet.
const FETCH_WAIT: Duration = Duration::from_millis(200);
/// How much longer than its expiry a fetch may take before it is given up.
const FETCH_GRACE: Duration = Duration::from_secs(3);
/// Empty fetches in a row (of `FETCH_WAIT` each) before the writer checks for a stall.
const STALL_CHECK_FETCHES: u32 = 10;
/// Unacknowledged messages JetStream lets the writer hold.
const MAX_ACK_PENDING: i64 = 20_000;
/// How long a message may stay unacknowledged before JetStream delivers it again.
const ACK_WAIT: Duration = Duration::from_secs(60);

/// One decoded message: whose chain its events go to, and the events.
struct Taken {
    agent: String,
    instance: String,
    events: Vec<v1::Event>,
}

/// Why a message cannot be stored at all.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
    #[error("an event names no agent")]
    NoAgent,
    #[error("subject {subject} is not agent {agent}'s")]
    WrongSubject { subject: String, agent: String },
    #[error("one message holds events of agent {agent}, instance {instance:?} and of another")]
    Mixed { agent: String, instance: String },
}

/// The events of `message` (a run, or one event in the format before runs), all of one agent
/// and instance, the agent the subject names.
fn take(prefix: &str, message: &Message) -> Result<Taken, Unusable> {
    let events = run::decode(message.headers.as_ref(), message.payload.as_ref())?;
    let host = events[0].host.as_ref().ok_or(Unusable::NoAgent)?;
    if host.agent_id.is_empty() {
        return Err(Unusable::NoAgent);
    }
    let (agent, instance) = (host.agent_id.clone(), host.instance_id.clone());
    let expected = format!("{prefix}.{}.", agent_token(&agent));
    if !message.subject.as_str().starts_with(&expected) {
        return Err(Unusable::WrongSubject {
            subject: message.subject.to_string(),
            agent,
        });
    }
    if events.iter().any(|e| {
        e.host
            .as_ref()
            .is_none_or(|h| h.agent_id != agent || h.instance_id != instance)
    }) {
        return Err(Unusable::Mixed { agent, instance });
    }
    Ok(Taken {
        agent,
        instance,
        events,
    })
}

/// Runs the store writer until `stopping` turns true (or the task is aborted): consumes the
/// stream through the durable consumer and appends through `service`.
pub async fn run(bus: Bus, service: CollectorService, mut stopping: watch::Receiver<bool>) {
    let prefix = bus.config().subject_prefix.clone();
    let name = bus.config().consumer.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stopping.borrow() {
            return;
        }
        let consumer = async {
            // Remaking the consumer cuts off whoever reads it: a writer paused past its lease
            // must not do that to its successor. The store's fence tells (and ends a stale
            // writer at once, as its next append would).
            let store = service.store().clone();
            tokio::task::spawn_blocking(move || store.check_fence())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let stream = bus.ensure_stream().await.map_err(|e| e.to_string())?;
            // Messages a writer fetched and never acknowledged (it died, or lost its lease)
            // would come again only after their ack wait, behind later ones: stored out of
            // order, the store would take them for resends. So the consumer is made anew at
            // each start, from its acknowledgement floor: everything after it, in order.
            let start = match stream.consumer_info(&name).await {
                Ok(info) => {
                    stream
                        .delete_consumer(&name)
                        .await
                        .map_err(|e| e.to_string())?;
                    info.ack_floor.stream_sequence + 1
                }
                Err(_) => 1,
            };
            info!(consumer = %name, from_stream_seq = start, "store writer: consuming from the acknowledgement floor");
            stream
                .create_consumer(pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some("phiguard store writer".into()),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ack_wait: ACK_WAIT,
                    max_ack_pending: MAX_ACK_PENDING,
                    filter_subject: format!("{prefix}.>"),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(error) => {
                warn!(%error, consumer = %name, "store writer: no JetStream consumer yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        info!(consumer = %name, "store writer consuming JetStream");
        backoff = Duration::from_millis(100);
        let mut empty = 0u32;
        loop {
            if *stopping.borrow() {
                return;
            }
            let fetch_started = tokio::time::Instant::now();
            // A fetch whose server went away without a word would wait forever: bounded.
            let fetched = tokio::time::timeout(FETCH_WAIT + FETCH_GRACE, async {
                let mut batch = consumer
                    .fetch()
                    .max_messages(FETCH_MAX)
                    .expires(FETCH_WAIT)
                    .messages()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut messages = Vec::new();
                while let Some(message) = batch.next().await {
                    match message {
                        Ok(message) => messages.push(message),
                        Err(error) => {
                            warn!(%error, "store writer: a fetch ended early");
                            break;
                        }
                    }
                }
                Ok::<_, String>(messages)
            })
            .await;
            let messages = match fetched {
                Ok(Ok(messages)) => messages,
                Ok(Err(error)) => {
                    warn!(%error, "store writer: fetch failed; consuming again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    break;
                }
                Err(_) => {
                    warn!("store writer: a fetch did not end; consuming again");
                    break;
                }
            };
            if messages.is_empty() {
                // Everything published before the fetch was read.
                service.stream_read_up_to(fetch_started);
                empty += 1;
                // Quiet for a while: is the stream quiet too, or did the consumer stall
                // (its server gone without a word)? Messages waiting mean the latter.
                if empty.is_multiple_of(STALL_CHECK_FETCHES) {
                    let mut consumer = consumer.clone();
                    if let Ok(Ok(info)) = tokio::time::timeout(FETCH_GRACE, consumer.info()).await {
                        if info.num_pending > 0 {
                            warn!(pending = info.num_pending, "store writer: consumer stalled with messages waiting; consuming again");
                            break;
                        }
                    }
                }
                continue;
            }
            empty = 0;
            let caught_up = messages
                .last()
                .and_then(|m| m.info().ok())
                .is_some_and(|info| info.pending == 0);
            store_all(&service, &prefix, messages, &mut stopping).await;
            if caught_up {
                service.stream_read_up_to(fetch_started);
            }
        }
    }
}

/// Appends `messages` (one fetch, in stream order, each a run of events or one event),
/// one run per agent and instance, then acknowledges each to JetStream.
async fn store_all(
    service: &CollectorService,
    prefix: &str,
    messages: Vec<Message>,
    stopping: &mut watch::Receiver<bool>,
) {
    // One run per (agent, instance), in the order of their first message; within a run the
    // stream's order, which is each agent's seq order (see `Bus::publish`).
    let mut runs: Vec<(String, String, Vec<v1::Event>)> = Vec::new();
    let mut done = Vec::with_capacity(messages.len());
    for message in messages {
        match take(prefix, &message) {
            Ok(taken) => match runs
                .iter_mut()
                .find(|(agent, instance, _)| *agent == taken.agent && *instance == taken.instance)
            {
                Some((_, _, events)) => events.extend(taken.events),
                None => runs.push((taken.agent, taken.instance, taken.events)),
            },
            Err(error) => {
                let seq = message.info().map_or(0, |i| i.stream_sequence);
                error!(%error, subject = %message.subject, stream_seq = seq, "store writer: a message in the stream cannot be stored; left in the stream, skipped");
            }
        }
        done.push(message);
    }
    for (agent, instance, events) in runs {
        // Liveness follows the stream: an agent's events here are its sign of life, through
        // whichever front end they came (the collector's own records are not).
        if events.iter().any(|e| e.seq > 0) {
            service.alive(&agent).await;
        }
        let mut wait = Duration::from_millis(100);
        loop {
            match service
                .store_batch(&agent, "jetstream", &instance, events.clone())
                .await
            {
                Ok(appended) => {
                    if appended.duplicates > 0 {
                        info!(agent = %agent, first = events.first().map_or(0, |e| e.seq), last = events.last().map_or(0, |e| e.seq), stored = appended.stored, duplicates = appended.duplicates, "store writer: redelivered events recognised by the store");
                    }
                    break;
                }
                Err(Refused::Policy(status)) => {
                    // The store's rules refuse it for good: it stays in the stream (until
                    // its max_age) and the alert names it; the writer goes on.
                    error!(agent = %agent, instance = %instance, reason = status.message(), first_seq = events.first().map_or(0, |e| e.seq), "store writer: events refused by the store's rules; they stay in the JetStream stream");
                    break;
                }
                Err(Refused::Store(status)) => {
                    warn!(agent = %agent, reason = status.message(), "store writer: store not writable; retrying the same events");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stopping.wait_for(|s| *s) => return,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    for message in done {
        if let Err(error) = message.ack().await {
            // Delivered again after ack_wait; the store recognises it.
            warn!(%error, "store writer: acknowledging to JetStream failed");
        }
    }
}
