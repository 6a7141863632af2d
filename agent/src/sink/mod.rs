//! Where enriched events go.

pub mod channel;
pub mod json;

use phiguard_proto::v1;

/// A destination for events.
pub trait Sink: Send {
    /// Takes one event (may buffer).
    fn write(&mut self, event: &v1::Event) -> std::io::Result<()>;
    /// Pushes buffered events out.
    fn flush(&mut self) -> std::io::Result<()>;
}
