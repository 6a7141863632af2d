//! Where enriched events go.

pub mod channel;
pub mod json;
pub mod numbering;
mod parts;
pub mod rotating;

/// The spool (a sink too) and the publisher live with the collector link; here for the
/// paths callers already use.
pub use crate::link::{publish, spool};

use phiguard_proto::v1;

/// Events a sink had to drop, reported by the agent as an `EventsLost` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkLoss {
    /// Where they were lost.
    pub source: v1::LossSource,
    /// Dropped since the previous report.
    pub count: u64,
    /// Dropped since the sink started.
    pub total: u64,
}

/// A destination for events.
pub trait Sink: Send {
    /// Takes one event (may buffer).
    fn write(&mut self, event: &v1::Event) -> std::io::Result<()>;
    /// Pushes buffered events out.
    fn flush(&mut self) -> std::io::Result<()>;
    /// When `flush` must next be called although no event came, if at all (a sink that
    /// batches its flushes in time).
    fn flush_due(&self) -> Option<std::time::Instant> {
        None
    }
    /// Drops to report now, if any (a sink may wait until it has room for the report).
    fn take_losses(&mut self) -> Option<SinkLoss> {
        None
    }
    /// Opens its destination again (SIGHUP: a file renamed by logrotate); most sinks have
    /// nothing to reopen.
    fn reopen(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// The last sequence number this sink holds from an earlier run: the agent numbers its
    /// events after it, so (agent, seq) stays unique across restarts.
    fn resume_seq(&self) -> Option<u64> {
        None
    }
}
