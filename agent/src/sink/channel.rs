//! Hands events to another task through a channel (tests, and later the publisher).

use std::io;

use phiguard_proto::v1;
use tokio::sync::mpsc::UnboundedSender;

use super::Sink;

/// Sends every event on an unbounded channel.
pub struct ChannelSink(pub UnboundedSender<v1::Event>);

impl Sink for ChannelSink {
    fn write(&mut self, event: &v1::Event) -> io::Result<()> {
        self.0
            .send(event.clone())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "event channel closed"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
