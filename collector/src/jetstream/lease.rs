//! One store writer at a time: a lease held in a JetStream key-value bucket
//! (`STREAM_WRITER`, replicated like the stream, entries expiring after the lease time).
//!
//! A collector with `store_writer = true` takes the lease before it opens the store; while
//! another holds it, it waits as a standby (logged once, and again when the lease changes
//! hands), neither opening nor touching the store. The holder renews the lease every fifth of
//! the lease time. An entry not renewed for the lease time expires in JetStream, and a
//! standby takes it and opens the store (on shared storage) — after a crash, `kill -9` or a
//! partition of the holder.
//!
//! The holder fences itself: when it cannot renew for four fifths of the lease time, or finds
//! the lease taken by another, it exits at once (status 75), without writing another byte,
//! before a standby can have taken the lease. Its unacknowledged messages are delivered again
//! to the next writer, and the store recognises what it had already stored.
//!
//! That is a timeout, which a writer paused past its lease (not dead) outlives: the store's
//! fence ([`crate::fence`]) is what stops such a writer. The revision at which a writer took
//! the lease is its fencing token, and [`take_store`] raises the fence to it before the store
//! is opened.
//!
//! A standby tells systemd it is ready while it waits ([`crate::notify`]): it is up and doing
//! its job, and a unit's start timeout must not end it.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use async_nats::jetstream::kv::{self, CreateErrorKind};
use tracing::{error, info, warn};

use super::bus::{Bus, BusError};
use crate::fence::{Fence, FenceError};

/// The key holding the writer's identity.
const KEY: &str = "writer";

/// The exit status of a writer that lost its lease.
pub const LOST_LEASE_EXIT: i32 = 75;

/// Why this collector could not become the store writer.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    /// JetStream could not be asked.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The store's fence could not be raised to the lease's token.
    #[error("raising the store's fence: {0}")]
    Fence(#[from] FenceError),
}

/// Makes this collector (listening on `listen_port`) the store writer of the store in `dir`:
/// waits for the lease (as a standby), keeps renewing it, then raises the store's fence to its token — waiting for a
/// batch in progress of a writer it replaced, paused rather than dead, to end — so that
/// such a writer can append nothing more ([`crate::fence`]). Open the store only after this.
pub async fn take_store(bus: &Bus, dir: &Path, listen_port: u16) -> Result<Fence, TakeError> {
    let lease = acquire(bus, &holder_name(listen_port)).await?;
    let token = lease.token();
    lease.keep();
    let dir = dir.to_owned();
    let fence = tokio::task::spawn_blocking(move || Fence::raise(&dir, token))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    info!(token, "store fence raised to this writer's token");
    Ok(fence)
}

/// The lease, held.
pub struct Lease {
    store: kv::Store,
    holder: String,
    /// The key-value revision at which it was taken: this writer's fencing token.
    token: u64,
    revision: u64,
    ttl: Duration,
}

fn bucket(bus: &Bus) -> String {
    format!("{}_WRITER", bus.config().stream)
}

/// This process, as the lease names it: host and the port its collector is configured to
/// listen on (where to ask for replay), pid and a random part.
pub fn holder_name(listen_port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!(
        "{host}:{listen_port}/{}/{}",
        std::process::id(),
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    )
}

/// Who holds the lease now (its [`holder_name`]), if anyone; None too when JetStream cannot
/// be asked. The name is another process's writing: quote it, never trust it.
pub async fn holder(bus: &Bus) -> Option<String> {
    let store = bus.context().get_key_value(bucket(bus)).await.ok()?;
    let value = store.get(KEY).await.ok()??;
    Some(crate::notify::one_line(&String::from_utf8_lossy(&value)))
}

/// The bucket (entries expiring after the lease time), made when missing.
async fn open_bucket(bus: &Bus) -> Result<kv::Store, BusError> {
    bus.kv_bucket(
        &bucket(bus),
        "phiguard: which collector writes the store",
        bus.config().writer_lease,
    )
    .await
}

/// Waits until this process holds the lease (as `holder`). While another holds it, this one
/// stands by: logged, and reported to systemd as ready (its unit's start timeout must not end
/// a standby) with a status naming the holder, updated when the lease changes hands.
pub async fn acquire(bus: &Bus, holder: &str) -> Result<Lease, BusError> {
    let ttl = bus.config().writer_lease;
    // The holder last reported (logged, and in the unit's status).
    let mut reported: Option<String> = None;
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
                    token = revision,
                    lease_secs = ttl.as_secs(),
                    "store writer lease taken: this collector writes the store"
                );
                crate::notify::status(
                    "store writer: lease taken; raising the store's fence and opening the store",
                );
                return Ok(Lease {
                    store,
                    holder: holder.to_owned(),
                    token: revision,
                    revision,
                    ttl,
                });
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                // Asked at every attempt: the lease may change hands while this one waits.
                let current = self::holder(bus).await.filter(|h| !h.is_empty());
                let status = |holder: &str| {
                    format!("standby: store writer lease held by {holder}; waiting to take over")
                };
                match (&reported, current) {
                    (None, current) => {
                        let current = current.unwrap_or_default();
                        info!(writer = %current, "standby: another collector holds the store writer lease; waiting for it to lapse");
                        crate::notify::ready(&status(&current));
                        reported = Some(current);
                    }
                    (Some(before), Some(current)) if *before != current => {
                        info!(writer = %current, before = %before, "standby: the store writer lease changed hands; still waiting");
                        crate::notify::status(&status(&current));
                        reported = Some(current);
                    }
                    _ => {}
                }
            }
            Err(error) => warn!(%error, "store writer lease: could not ask; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Lease {
    /// The fencing token of this writer ([`crate::fence`]): the lease's key-value revision
    /// when it was taken. A later writer's is always larger.
    pub fn token(&self) -> u64 {
        self.token
    }

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
