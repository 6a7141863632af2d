//! What the agent knows about its collector link (`[collector]`): the spool's depth and
//! bytes, the publisher's connection and last acknowledgement, for the metrics, the status
//! file and the heartbeat.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{publish::PublisherStatus, spool::Spool};

/// The link as `phiguard status` shows it (a snapshot taken every tick).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// The collector's address.
    pub address: String,
    /// Whether a stream to the collector is open.
    pub connected: bool,
    /// Events spooled and not yet acknowledged (last spooled seq − last acknowledged seq).
    pub spool_events: u64,
    /// Bytes the spool holds.
    pub spool_bytes: u64,
    /// Events the spool dropped since start (full spool).
    pub spool_dropped: u64,
    /// Highest seq spooled.
    pub last_seq: u64,
    /// Highest seq the collector acknowledged.
    pub acked_seq: u64,
    /// Unix time (milliseconds) of the collector's last acknowledgement of a batch; `None`
    /// when it has acknowledged none since the agent started.
    pub last_ack_ms: Option<u64>,
    /// Connections made since start.
    pub connections: u64,
    /// The heartbeat interval, milliseconds.
    pub heartbeat_interval_ms: u64,
    /// The spool's instance id, sent on every stream (the collector counts seqs per
    /// instance; a new spool makes a new one).
    #[serde(default)]
    pub instance_id: String,
}

/// The agent's handle on its collector link.
pub struct Link {
    address: String,
    spool: Arc<Spool>,
    publisher: Arc<PublisherStatus>,
    heartbeat: Duration,
}

impl Link {
    /// A link publishing `spool` to `address`, with a heartbeat every `heartbeat`.
    pub fn new(
        address: String,
        spool: Arc<Spool>,
        publisher: Arc<PublisherStatus>,
        heartbeat: Duration,
    ) -> Link {
        Link {
            address,
            spool,
            publisher,
            heartbeat,
        }
    }

    /// A snapshot of the link.
    pub fn state(&self) -> LinkState {
        let spool = self.spool.stats();
        let last_ack = self.publisher.last_ack_ms.load(Ordering::Relaxed);
        LinkState {
            address: self.address.clone(),
            connected: self.publisher.connected.load(Ordering::Relaxed),
            spool_events: spool.last_seq.saturating_sub(spool.acked),
            spool_bytes: spool.bytes,
            spool_dropped: spool.dropped,
            last_seq: spool.last_seq,
            acked_seq: spool.acked,
            last_ack_ms: (last_ack > 0).then_some(last_ack),
            connections: self.publisher.connections.load(Ordering::Relaxed),
            heartbeat_interval_ms: self.heartbeat.as_millis() as u64,
            instance_id: self.spool.instance_id().to_owned(),
        }
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::spool::{FullPolicy, SpoolConfig};
    use phiguard_proto::v1;

    #[test]
    fn depth_is_the_unacknowledged_seq_distance() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 20,
            full: FullPolicy::KeepOldest,
            sync_interval: Duration::ZERO,
        })
        .unwrap();
        for seq in 1..=5 {
            spool
                .append(&v1::Event {
                    seq,
                    ..Default::default()
                })
                .unwrap();
        }
        spool.flush(true).unwrap();
        let publisher = Arc::new(PublisherStatus::default());
        let link = Link::new(
            "c:1".into(),
            spool.clone(),
            publisher.clone(),
            Duration::from_secs(10),
        );
        let state = link.state();
        assert_eq!((state.spool_events, state.last_ack_ms), (5, None));
        assert!(state.spool_bytes > 0);
        spool.ack(3).unwrap();
        publisher.last_ack_ms.store(42, Ordering::Relaxed);
        let state = link.state();
        assert_eq!((state.spool_events, state.acked_seq), (2, 3));
        assert_eq!(state.last_ack_ms, Some(42));
        assert_eq!(state.heartbeat_interval_ms, 10_000);
    }
}
