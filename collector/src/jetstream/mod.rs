//! The fleet layout (`[jetstream]`): collectors as stateless front ends over a replicated
//! NATS JetStream stream.
//!
//! - [`bus`]: the connection to NATS, the stream's definition, and publishing a validated
//!   batch so that the agent is acknowledged only once JetStream has acknowledged every event
//!   of it.
//! - [`run`]: the message format: a run of an agent's consecutive events of one kind per
//!   message, message id `agent/instance/first-last`, so JetStream's de-duplication makes an
//!   agent's resends, to this collector or another, harmless (the store's, resends cut into
//!   other runs); messages of the format before runs (one event each) are still read.
//! - [`admission`]: the sequence window and the new-instance limit, applied by every front
//!   end before it publishes, with their state shared in a JetStream key-value bucket.
//! - [`writer`]: the store writer, a durable JetStream consumer that appends what the front
//!   ends published to the hash-chained store in stream order (the store de-duplicates by
//!   (agent, instance, seq) as it always has), and only then acknowledges the messages.
//! - [`lease`]: one writer at a time; a standby takes over when the writer's lease lapses.
//! - [`relay`]: the live feed of a collector that is not the writer: every event published
//!   by any front end, handed to this collector's subscribers.
//!
//! Without a `[jetstream]` section none of this runs and the collector stores what it
//! receives itself, as before.

pub mod admission;
pub mod bus;
pub mod lease;
pub mod relay;
pub mod run;
pub mod writer;

use std::{path::PathBuf, time::Duration};

/// `[jetstream]`: where the stream lives and this collector's part in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// NATS server URLs (`nats://host:port` or `tls://host:port`), any of the cluster's.
    pub servers: Vec<String>,
    /// The stream's name.
    pub stream: String,
    /// Subjects are `SUBJECT_PREFIX.AGENT.KIND`.
    pub subject_prefix: String,
    /// Replicas of the stream (3 in a three-node cluster).
    pub replicas: usize,
    /// How long the stream keeps events (also once the store has them).
    pub max_age: Duration,
    /// JetStream's de-duplication window: a resend within it is recognised by its message id.
    pub duplicate_window: Duration,
    /// Whether this collector may write the store: the one holding the writer lease does,
    /// the others stand by ([`lease`]).
    pub store_writer: bool,
    /// How long the writer lease lasts without renewal.
    pub writer_lease: Duration,
    /// The store writer's durable consumer.
    pub consumer: String,
    /// How long a publish may wait for JetStream's acknowledgement.
    pub publish_timeout: Duration,
    /// TLS to NATS: the CA (None: plain TCP, loopback or a private network only).
    pub ca: Option<PathBuf>,
    /// TLS client certificate and key for NATS, if it asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// A NATS credentials file (JWT + nkey), if the account needs one.
    pub credentials: Option<PathBuf>,
}

/// Default stream name.
pub const DEFAULT_STREAM: &str = "PHIGUARD";
/// Default subject prefix.
pub const DEFAULT_SUBJECT_PREFIX: &str = "phiguard.events";
/// Default durable consumer of the store writer.
pub const DEFAULT_CONSUMER: &str = "store-writer";

/// Whether `name` may name a stream or consumer: letters, digits, `-` and `_` (no `.`, `*`,
/// `>`, spaces), at most 64 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Whether `prefix` is a usable subject prefix: dot-separated tokens of letters, digits,
/// `-` and `_`, without wildcards.
pub fn valid_subject_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

/// Whether `url` names a NATS server: `nats://host:port`, `tls://host:port` or `host:port`.
pub fn valid_server(url: &str) -> bool {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .unwrap_or(url);
    rest.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefixes_and_servers_are_checked() {
        assert!(valid_name("PHIGUARD"));
        assert!(valid_name("store-writer_2"));
        assert!(!valid_name("a.b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(""));
        assert!(valid_subject_prefix("phiguard.events"));
        assert!(!valid_subject_prefix("phiguard.>"));
        assert!(!valid_subject_prefix("phiguard..events"));
        assert!(valid_server("nats://127.0.0.1:4222"));
        assert!(valid_server("tls://nats-1.example:4222"));
        assert!(valid_server("nats-1:4222"));
        assert!(!valid_server("nats://127.0.0.1"));
        assert!(!valid_server("http://x/y:1"));
    }
}
