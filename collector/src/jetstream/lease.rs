//! One store writer at a time: a lease held in a JetStream key-value bucket
//! (`STREAM_WRITER`, replicated like the stream, entries expiring after the lease time).
//!
//! A collector with `store_writer = true` takes the lease before it opens the store; while
//! another holds it, it waits as a standby (logged once), neither opening nor touching the
//! store. The holder renews the lease every fifth of the lease time. An entry not renewed for
//! the lease time expires in JetStream, and a standby takes it and opens the store (on shared
//! storage) — after a crash, `kill -9` or a partition of the holder.
//!
//! The holder fences itself: when it cannot renew for four fifths of the lease time, or finds
//! the lease taken by another, it exits at once (status 75), without writing another byte,
//! before a standby can have taken the lease. Its unacknowledged messages are delivered again
//! to the next writer, and the store recognises what it had already stored.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    kv::{self, CreateErrorKind},
    stream::{Config as StreamConfig, DiscardPolicy, StorageType},
};
use tracing::{error, info, warn};

use super::bus::{Bus, BusError};

/// The key holding the writer's identity.
const KEY: &str = "writer";

/// The exit status of a writer that lost its lease.
pub const LOST_LEASE_EXIT: i32 = 75;

/// The lease, held.
pub struct Lease {
    store: kv::Store,
    holder: String,
    revision: u64,
    ttl: Duration,
}

fn bucket(bus: &Bus) -> String {
    format!("{}_WRITER", bus.config().stream)
}

/// This process, as the lease names it: host, pid and a random part.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!(
        "{host}/{}/{}",
        std::process::id(),
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    )
}

/// The bucket, made when missing. Its backing stream is defined here as async-nats' own
/// `create_key_value` would (`KV_BUCKET`, one value per key, rollups, no deletes), because
/// that call first asks for the account's limits in a form Debian's nats-server 2.9 does not
/// answer.
async fn open_bucket(bus: &Bus) -> Result<kv::Store, BusError> {
    let name = bucket(bus);
    let failed = |e: &dyn std::fmt::Display| BusError::Stream {
        stream: format!("KV_{name}"),
        message: e.to_string(),
    };
    bus.context()
        .get_or_create_stream(StreamConfig {
            name: format!("KV_{name}"),
            description: Some("phiguard: which collector writes the store".into()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age: bus.config().writer_lease,
            storage: StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            num_replicas: bus.config().replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    bus.context()
        .get_key_value(&name)
        .await
        .map_err(|e| failed(&e))
}

/// Waits until this process holds the lease (as `holder`), logging once that it stands by.
pub async fn acquire(bus: &Bus, holder: &str) -> Result<Lease, BusError> {
    let ttl = bus.config().writer_lease;
    let mut said = false;
    loop {
        let store = match open_bucket(bus).await {
            Ok(store) => store,
            Err(error) => {
                warn!(%error, "store writer lease: bucket not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match store.create(KEY, holder.as_bytes().to_vec().into()).await {
            Ok(revision) => {
                info!(
                    holder,
                    lease_secs = ttl.as_secs(),
                    "store writer lease taken: this collector writes the store"
                );
                return Ok(Lease {
                    store,
                    holder: holder.to_owned(),
                    revision,
                    ttl,
                });
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                if !said {
                    let current = store
                        .get(KEY)
                        .await
                        .ok()
                        .flatten()
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default();
                    info!(writer = %current, "standby: another collector holds the store writer lease; waiting for it to lapse");
                    said = true;
                }
            }
            Err(error) => warn!(%error, "store writer lease: could not ask; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Lease {
    /// Renews the lease for as long as the process lives; exits the process when it is lost.
    pub fn keep(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let every = self.ttl / 5;
            let give_up = self.ttl * 4 / 5;
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let attempt = tokio::time::timeout(
                    every,
                    self.store
                        .update(KEY, self.holder.as_bytes().to_vec().into(), self.revision),
                )
                .await;
                match attempt {
                    Ok(Ok(revision)) => {
                        self.revision = revision;
                        renewed = Instant::now();
                    }
                    Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        error!(holder = %self.holder, "store writer lease taken by another collector: stopping at once");
                        std::process::exit(LOST_LEASE_EXIT);
                    }
                    Ok(Err(error)) => warn!(%error, "store writer lease: renewal failed"),
                    Err(_) => warn!("store writer lease: renewal timed out"),
                }
                if renewed.elapsed() >= give_up {
                    error!(holder = %self.holder, unrenewed_ms = renewed.elapsed().as_millis() as u64, "store writer lease not renewed in time: another collector may take it; stopping at once");
                    std::process::exit(LOST_LEASE_EXIT);
                }
            }
        })
    }
}
