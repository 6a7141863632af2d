//! The publisher: streams spooled events to the collector over mutual TLS 1.3 and deletes
//! them from the spool once acknowledged.
//!
//! It runs on its own thread (with its own small runtime), so neither TLS nor a slow or
//! absent collector can hold up the kernel reader. On every connection the collector first
//! says which seq it already holds; the publisher then sends what follows from the spool,
//! in order, in batches, keeping a bounded window of unacknowledged batches. A broken
//! connection is retried with exponential backoff and jitter, and everything unacknowledged
//! is sent again (the collector stores each (agent, seq) once). The certificate, key and CA
//! are read again on every connection, and a change to any of them reconnects.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use phiguard_proto::v1::{collector_client::CollectorClient, IngestRequest};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{error, info, warn};

use super::{
    spool::{ReadCursor, Spool, SpoolError},
    tls::{self, FilesStamp, TlsError},
};

pub use crate::config::collector::PublisherConfig;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// TLS files or the connection.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The collector refused or the stream broke.
    #[error("collector: {} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The collector closed the stream.
    #[error("the collector closed the stream")]
    Closed,
    /// The publisher thread could not start.
    #[error("starting the publisher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the publisher is doing (shared with the agent and tests).
#[derive(Debug, Default)]
pub struct PublisherStatus {
    /// A stream to the collector is open.
    pub connected: AtomicBool,
    /// Highest seq the collector acknowledged.
    pub acked: AtomicU64,
    /// Batches sent.
    pub batches: AtomicU64,
    /// Connections made.
    pub connections: AtomicU64,
    /// Unix time (milliseconds) the collector last acknowledged a batch (0: never).
    pub last_ack_ms: AtomicU64,
}

/// Unix time now, milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A running publisher thread.
pub struct Publisher {
    thread: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    status: Arc<PublisherStatus>,
    spool: Arc<Spool>,
}

enum Ended {
    Stopped,
    Reload,
}

/// A small xorshift generator for retry jitter (not for anything secret).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Jitter(seed | 1)
    }

    /// `d` scaled by a factor in [0.5, 1.5).
    fn apply(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let factor = 0.5 + (self.0 % 1000) as f64 / 1000.0;
        d.mul_f64(factor)
    }
}

impl Publisher {
    /// Starts publishing `spool` to the collector on a new thread.
    pub fn spawn(spool: Arc<Spool>, config: PublisherConfig) -> Result<Publisher, PublishError> {
        let (stop, stop_rx) = watch::channel(false);
        let status = Arc::new(PublisherStatus::default());
        let (s, st) = (spool.clone(), status.clone());
        let thread = std::thread::Builder::new()
            .name("phiguard-publish".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(error = %e, "publisher runtime failed to start");
                        return;
                    }
                };
                runtime.block_on(run(s, config, st, stop_rx));
            })
            .map_err(PublishError::Thread)?;
        Ok(Publisher {
            thread: Some(thread),
            stop,
            status,
            spool,
        })
    }

    /// What the publisher is doing.
    pub fn status(&self) -> &PublisherStatus {
        &self.status
    }

    /// A shared handle on what the publisher is doing (for metrics and the status file).
    pub fn status_handle(&self) -> Arc<PublisherStatus> {
        self.status.clone()
    }

    /// Waits up to `timeout` until the collector has acknowledged everything spooled.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let _ = self.spool.flush(true);
            let stats = self.spool.stats();
            if stats.acked >= stats.synced_seq {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the thread (unacknowledged events stay in the spool for the next run).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn run(
    spool: Arc<Spool>,
    config: PublisherConfig,
    status: Arc<PublisherStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut jitter = Jitter::new();
    let mut backoff = config.backoff_min;
    let mut failures = 0u32;
    let addresses: Vec<String> = config.addresses().into_iter().map(str::to_owned).collect();
    // Which collector is tried, and how many in a row have failed since one took events.
    let mut current = 0usize;
    let mut failed_in_round = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        let acked_before = status.acked.load(Ordering::Relaxed);
        // Stopping must not wait for a connection attempt or a silent collector.
        let mut session_stop = stop.clone();
        let outcome = tokio::select! {
            outcome = session(&spool, &config, &addresses[current], &status, &mut session_stop) => outcome,
            _ = stop.wait_for(|stopped| *stopped) => Ok(Ended::Stopped),
        };
        status.connected.store(false, Ordering::Relaxed);
        if status.acked.load(Ordering::Relaxed) > acked_before {
            backoff = config.backoff_min;
            failures = 0;
            failed_in_round = 0;
        }
        match outcome {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Reload) => {
                info!("certificate files changed: reconnecting with the new ones");
                continue;
            }
            Err(e) => {
                failures += 1;
                let refused = matches!(&e, PublishError::Status(s)
                    if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::InvalidArgument | tonic::Code::Unauthenticated));
                if refused {
                    error!(error = %e, "the collector refused our events; retrying later");
                    backoff = config.backoff_max;
                } else if failures == 1 || failures.is_multiple_of(20) {
                    warn!(error = %e, attempts = failures, address = %addresses[current], "collector link down; events stay in the spool; retrying");
                }
                if addresses.len() > 1 {
                    // Fail over: the next collector at once, the back-off only once every
                    // collector has failed in a row.
                    failed_in_round += 1;
                    current = (current + 1) % addresses.len();
                    if failed_in_round < addresses.len() {
                        info!(address = %addresses[current], "failing over to the next collector");
                        tokio::select! {
                            () = tokio::time::sleep(jitter.apply(config.backoff_min)) => {}
                            _ = stop.changed() => return,
                        }
                        continue;
                    }
                    failed_in_round = 0;
                }
            }
        }
        let delay = jitter.apply(backoff);
        backoff = (backoff * 2).min(config.backoff_max);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The request header naming the spool's instance on the `Ingest` call.
pub const INSTANCE_HEADER: &str = "phiguard-instance";

async fn session(
    spool: &Spool,
    config: &PublisherConfig,
    address: &str,
    status: &PublisherStatus,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, PublishError> {
    let stamp = FilesStamp::of(&config.tls);
    let tls_config = tls::client_config(&config.tls)?;
    let channel = tls::connect(
        address,
        config.server_name.as_deref(),
        tls_config,
        config.connect_timeout,
    )
    .await?;
    let limit = config.batch_bytes * 2 + 64 * 1024;
    let mut client = CollectorClient::new(channel)
        .max_encoding_message_size(limit)
        .max_decoding_message_size(64 * 1024);
    let (tx, rx) = mpsc::channel::<IngestRequest>(config.window.max(1));
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let instance = tonic::metadata::MetadataValue::try_from(spool.instance_id())
        .expect("a UUID is a valid header value");
    request.metadata_mut().insert(INSTANCE_HEADER, instance);
    let mut responses = client.ingest(request).await?.into_inner();
    let hello = responses.message().await?.ok_or(PublishError::Closed)?;
    if hello.acked_seq > spool.last_seq() {
        error!(
            collector_holds = hello.acked_seq,
            spool_last = spool.last_seq(),
            "the collector already holds later events of this agent: the spool was lost or reset; \
             events numbered up to the collector's seq will be taken as resends"
        );
    }
    spool.ack(hello.acked_seq)?;
    status.acked.fetch_max(hello.acked_seq, Ordering::Relaxed);
    status.connected.store(true, Ordering::Relaxed);
    status.connections.fetch_add(1, Ordering::Relaxed);
    let from = hello.acked_seq.max(spool.stats().acked);
    info!(address = %address, acked = hello.acked_seq, "connected to the collector; sending from seq {}", from + 1);
    let mut cursor = ReadCursor::after(from);
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut reload = tokio::time::interval(config.reload_check);
    reload.tick().await;
    loop {
        while in_flight.len() < config.window.max(1) {
            let batch = spool.read(&mut cursor, config.batch_events, config.batch_bytes)?;
            let Some(last) = batch.last().map(|e| e.seq) else {
                break;
            };
            tx.send(IngestRequest {
                events: batch,
                instance_id: spool.instance_id().to_owned(),
            })
            .await
            .map_err(|_| PublishError::Closed)?;
            in_flight.push_back(last);
            status.batches.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            _ = stop.changed() => return Ok(Ended::Stopped),
            response = responses.message() => {
                let ack = response?.ok_or(PublishError::Closed)?;
                spool.ack(ack.acked_seq)?;
                status.acked.fetch_max(ack.acked_seq, Ordering::Relaxed);
                status.last_ack_ms.store(unix_ms(), Ordering::Relaxed);
                while in_flight.front().is_some_and(|&last| last <= ack.acked_seq) {
                    in_flight.pop_front();
                }
            }
            () = spool.ready() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = reload.tick() => {
                if FilesStamp::of(&config.tls) != stamp {
                    return Ok(Ended::Reload);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::tls::TlsFiles;

    #[test]
    fn stops_promptly_while_the_collector_does_not_answer() {
        // A listener that accepts and never speaks TLS: the handshake hangs.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(crate::link::spool::SpoolConfig {
            dir: dir.path().join("spool"),
            max_bytes: 1 << 20,
            full: crate::link::spool::FullPolicy::KeepOldest,
            sync_interval: Duration::ZERO,
        })
        .unwrap();
        phiguard_devcerts::write_dir(dir.path(), &["a".into()], &[]).unwrap();
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("agent-a.pem"),
            key: dir.path().join("agent-a.key"),
        };
        let publisher = Publisher::spawn(spool, PublisherConfig::new(addr, files)).unwrap();
        // Let it connect: TCP is accepted by the kernel, the TLS handshake then hangs (the
        // connect timeout is 10 s).
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        publisher.stop();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            started.elapsed()
        );
        drop(listener);
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        let mut j = Jitter::new();
        let d = Duration::from_millis(1000);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let x = j.apply(d);
            assert!(x >= Duration::from_millis(500) && x < Duration::from_millis(1500));
            seen.insert(x);
        }
        assert!(seen.len() > 50, "jitter varies");
    }
}
