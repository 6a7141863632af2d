//! Reads ring-buffer records on tokio: waits for the buffer's fd to become readable, then hands
//! every available record to a callback without copying.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

/// The consuming side of the kernel ring buffer.
pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl Reader {
    /// Wraps the ring buffer for async reading.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Reader> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped
        // together with the AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Reader { ring })
    }

    /// Waits until records are available, then passes each to `on_record` (at most `max`, so
    /// a flood cannot starve the rest of the agent). Returns how many were read.
    pub async fn read_batch(
        &mut self,
        max: usize,
        mut on_record: impl FnMut(&[u8]),
    ) -> io::Result<usize> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut count = 0;
            while count < max {
                let Some(item) = ring.next() else { break };
                on_record(&item);
                count += 1;
            }
            if count < max {
                guard.clear_ready();
            }
            if count > 0 {
                return Ok(count);
            }
        }
    }

    /// Hands every record already in the buffer to `on_record`, without waiting.
    pub fn drain(&mut self, mut on_record: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut count = 0;
        while let Some(item) = ring.next() {
            on_record(&item);
            count += 1;
        }
        count
    }
}
