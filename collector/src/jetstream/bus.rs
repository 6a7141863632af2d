//! The connection to NATS JetStream: connecting, the stream's definition, subjects, key-value
//! buckets, and publishing a batch as runs ([`super::run`]), in order, so that it is
//! acknowledged only once JetStream has acknowledged every event of it.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::PublishAckFuture,
    kv,
    message::PublishMessage,
    stream::{Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType},
};
use phiguard_proto::v1;
use tracing::{info, warn};

use super::{
    run::{encode, message_id, runs, FORMAT_HEADER, FORMAT_RUN, MAX_RUN_BYTES},
    JetStreamConfig,
};
use crate::stream::kind_name;

/// How long start-up waits for the cluster to have a JetStream leader and the stream.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Talking to JetStream failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No NATS server could be reached, or the options are unusable.
    #[error("connecting to NATS {servers}: {source}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A NATS server refused this collector: TLS failed (a server certificate not from the
    /// configured CA, a client certificate it does not accept) or its credentials.
    #[error("NATS {servers} refused the connection (TLS or credentials): {source} (check [jetstream] ca, cert, key and credentials)")]
    Refused {
        /// The servers tried.
        servers: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The credentials file could not be read.
    #[error("reading the NATS credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The stream could not be created or looked up.
    #[error("JetStream stream {stream}: {message}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What JetStream said.
        message: String,
    },
    /// An event could not be published, or its acknowledgement did not come.
    #[error("publishing event seq {seq} to JetStream: {message}")]
    Publish {
        /// The event's seq.
        seq: u64,
        /// What went wrong.
        message: String,
    },
}

/// The NATS subject token for an agent identity: identities may hold `.`, which separates
/// subject tokens, and never `~`, so `.` becomes `~` (one-to-one).
pub fn agent_token(agent: &str) -> String {
    agent.replace('.', "~")
}

/// The subject of `agent`'s event of kind `kind`: `PREFIX.AGENT.KIND`.
pub fn subject(prefix: &str, agent: &str, kind: &str) -> String {
    format!("{prefix}.{}.{kind}", agent_token(agent))
}

/// Whether a failed connection was refused (TLS: a certificate not trusted or not accepted;
/// credentials) rather than not made (no server there yet). A TLS handshake's failure comes
/// as an I/O error carrying rustls' error.
fn refused(error: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind as Kind;
    if matches!(
        error.kind(),
        Kind::Tls | Kind::Authentication | Kind::AuthorizationViolation
    ) {
        return true;
    }
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        if current.is::<rustls::Error>()
            || current
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cause = current.source();
    }
    false
}

/// What JetStream said about a published batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Events JetStream took as new.
    pub new: u64,
    /// Events JetStream recognised as resends (by message id) and did not store again.
    pub duplicates: u64,
    /// The stream sequence of the batch's last event.
    pub last_stream_seq: u64,
}

/// A connection to JetStream and the stream's definition.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: JetStreamConfig,
}

impl Bus {
    /// Connects to the servers of `config` (TLS and credentials as configured) and makes
    /// sure the stream exists, waiting up to 30 s for the cluster to elect its JetStream
    /// leader.
    pub async fn connect(config: &JetStreamConfig) -> Result<Bus, BusError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("phiguard-collector")
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None);
        if let Some(path) = &config.credentials {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| BusError::Credentials {
                        path: path.clone(),
                        source,
                    })?;
        }
        if let Some(ca) = &config.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &config.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let servers = config.servers.join(",");
        let addresses: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| BusError::Connect {
                servers: servers.clone(),
                source: async_nats::ConnectError::with_source(
                    async_nats::ConnectErrorKind::ServerParse,
                    e,
                ),
            })?;
        // One attempt at each server first: a refusal (TLS, credentials) is an error in the
        // configuration, said at once; servers not up yet are waited for in the background.
        let client = match options.clone().connect(addresses.clone()).await {
            Ok(client) => client,
            Err(source) if refused(&source) => {
                return Err(BusError::Refused { servers, source });
            }
            Err(error) => {
                warn!(%servers, %error, "no NATS server reachable yet; connecting in the background");
                options
                    .retry_on_initial_connect()
                    .connect(addresses)
                    .await
                    .map_err(|source| BusError::Connect { servers, source })?
            }
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .build(client.clone());
        let bus = Bus {
            client,
            js,
            config: config.clone(),
        };
        bus.ensure_stream().await?;
        Ok(bus)
    }

    /// The configuration this bus was made with.
    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// The JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The stream's definition from the configuration.
    pub fn stream_config(&self) -> StreamConfig {
        let c = &self.config;
        StreamConfig {
            name: c.stream.clone(),
            subjects: vec![format!("{}.>", c.subject_prefix)],
            num_replicas: c.replicas,
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: c.max_age,
            duplicate_window: c.duplicate_window,
            ..Default::default()
        }
    }

    /// Looks the stream up, creating it when missing; retries while the cluster has no
    /// JetStream leader yet.
    pub async fn ensure_stream(&self) -> Result<jetstream::stream::Stream, BusError> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            match self.js.get_or_create_stream(self.stream_config()).await {
                Ok(stream) => {
                    info!(stream = %self.config.stream, replicas = self.config.replicas, "JetStream stream ready");
                    return Ok(stream);
                }
                Err(error) if tokio::time::Instant::now() < deadline => {
                    warn!(stream = %self.config.stream, %error, "JetStream not ready yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => {
                    return Err(BusError::Stream {
                        stream: self.config.stream.clone(),
                        message: error.to_string(),
                    })
                }
            }
        }
    }

    /// The key-value bucket `name` (one value per key, replicated like the stream, entries
    /// expiring after `max_age`, or never when zero), made when missing; retries for up to
    /// 30 s while the cluster cannot answer (a leader election after a node's loss). Its
    /// backing stream is defined here as async-nats' own `create_key_value` would, because that
    /// call first asks for the account's limits in a form Debian's nats-server 2.9 does not
    /// answer.
    pub async fn kv_bucket(
        &self,
        name: &str,
        description: &str,
        max_age: Duration,
    ) -> Result<kv::Store, BusError> {
        let config = StreamConfig {
            name: format!("KV_{name}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            num_replicas: self.config.replicas,
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            let opened = async {
                self.js
                    .get_or_create_stream(config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                self.js.get_key_value(name).await.map_err(|e| e.to_string())
            }
            .await;
            match opened {
                Ok(store) => return Ok(store),
                Err(error) if tokio::time::Instant::now() < deadline => {
                    warn!(bucket = %name, %error, "JetStream key-value bucket not ready yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(message) => {
                    return Err(BusError::Stream {
                        stream: format!("KV_{name}"),
                        message,
                    })
                }
            }
        }
    }

    /// Publishes `events` (one agent's validated batch, stamped with its agent and
    /// instance) as runs ([`super::run`]: consecutive events of one kind, one message each),
    /// one run after the other, each only once JetStream has acknowledged the one before: Ok
    /// only when every event is in the stream (replicated as the stream says). A batch costs
    /// one JetStream round trip per run, not per event.
    ///
    /// One run at a time, because the store writer needs each agent's events in the stream
    /// in seq order. Pipelined publishes are not: across a stream leader's failure the first
    /// part of a batch can be lost while the rest lands, and the resent first part then
    /// follows the later events (found by the fleet tests: the store took the resent events
    /// for duplicates). A publish whose acknowledgement never came may still land later, but
    /// only as a copy of events already in the stream (its successor was published only
    /// once it was acknowledged), which the message id or the store recognises.
    pub async fn publish(&self, events: &[v1::Event]) -> Result<Published, BusError> {
        let mut published = Published::default();
        for run in runs(events, MAX_RUN_BYTES) {
            let first = &run[0];
            let agent = first.host.as_ref().map_or("", |h| h.agent_id.as_str());
            let subject = subject(&self.config.subject_prefix, agent, kind_name(first));
            let message = PublishMessage::build()
                .payload(encode(run).into())
                .header(FORMAT_HEADER, FORMAT_RUN)
                .message_id(message_id(run));
            let failed = |e: &dyn std::fmt::Display| BusError::Publish {
                seq: first.seq,
                message: e.to_string(),
            };
            let ack: PublishAckFuture = self
                .js
                .send_publish(subject, message)
                .await
                .map_err(|e| failed(&e))?;
            let ack = ack.await.map_err(|e| failed(&e))?;
            if ack.duplicate {
                published.duplicates += run.len() as u64;
            } else {
                published.new += run.len() as u64;
            }
            published.last_stream_seq = ack.sequence;
        }
        Ok(published)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_agent_and_kind() {
        assert_eq!(
            subject("phiguard.events", "ehr-db-1.example.org", "fileOpen"),
            "phiguard.events.ehr-db-1~example~org.fileOpen"
        );
    }
}
