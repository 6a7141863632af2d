//! Reads ring-buffer records on tokio: waits until the buffer's fd becomes readable or the
//! read interval has passed, then hands every available record to a callback without copying.
//!
//! The kernel programs wake this reader only when the backlog crosses a multiple of
//! `WAKEUP_BYTES` (see `agent-ebpf/src/emit.rs`): records written in between are found by
//! the timed look, so a record waits at most [`READ_INTERVAL`] while records come, or
//! [`IDLE_READ_INTERVAL`] after the buffer has been empty for a while (plus the time to handle
//! what is ahead of it), before it is read, and a busy buffer is read in batches, not per
//! record.

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use phiguard_common::limits::{IDLE_READ_INTERVAL_MS, READ_INTERVAL_MS};
use tokio::io::{unix::AsyncFd, Interest};

/// The longest a record can sit in the ring buffer unread when no wake-up came, while records
/// come.
pub const READ_INTERVAL: Duration = Duration::from_millis(READ_INTERVAL_MS);
/// The longest a record can sit there unread after looks have found the buffer empty.
pub const IDLE_READ_INTERVAL: Duration = Duration::from_millis(IDLE_READ_INTERVAL_MS);

/// The wait before the next look after `empty_looks` looks in a row found nothing.
fn look_interval(empty_looks: u32) -> Duration {
    READ_INTERVAL
        .saturating_mul(1 << empty_looks.min(8))
        .min(IDLE_READ_INTERVAL)
}

/// The consuming side of the kernel ring buffer.
pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Looks in a row that found the buffer empty (lengthens the wait before the next).
    empty_looks: u32,
}

/// Hands up to `max` records from `ring` to `on_record`; how many.
fn take(ring: &mut RingBuf<MapData>, max: usize, on_record: &mut impl FnMut(&[u8])) -> usize {
    let mut count = 0;
    while count < max {
        let Some(item) = ring.next() else { break };
        on_record(&item);
        count += 1;
    }
    count
}

impl Reader {
    /// Wraps the ring buffer for async reading.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Reader> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped
        // together with the AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Reader {
            ring,
            empty_looks: 0,
        })
    }

    /// Waits until records are available — woken by the kernel, or found on a look at least
    /// every [`READ_INTERVAL`], backing off to [`IDLE_READ_INTERVAL`] while looks find
    /// nothing — then passes each to `on_record` (at most `max`, so a flood
    /// cannot starve the rest of the agent). Returns how many were read.
    pub async fn read_batch(
        &mut self,
        max: usize,
        mut on_record: impl FnMut(&[u8]),
    ) -> io::Result<usize> {
        loop {
            let wait = look_interval(self.empty_looks);
            let woken = tokio::time::timeout(wait, self.ring.readable_mut()).await;
            let count = match woken {
                Ok(guard) => {
                    let mut guard = guard?;
                    let count = take(guard.get_inner_mut(), max, &mut on_record);
                    if count < max {
                        guard.clear_ready();
                    }
                    Some(count)
                }
                // No wake-up: records below the wake-up threshold may be waiting.
                Err(_) => None,
            };
            let count = match count {
                Some(count) => count,
                None => take(self.ring.get_mut(), max, &mut on_record),
            };
            if count > 0 {
                self.empty_looks = 0;
                return Ok(count);
            }
            self.empty_looks = self.empty_looks.saturating_add(1);
        }
    }

    /// Hands every record already in the buffer to `on_record`, without waiting.
    pub fn drain(&mut self, mut on_record: impl FnMut(&[u8])) -> usize {
        take(self.ring.get_mut(), usize::MAX, &mut on_record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_looks_back_off_from_the_read_interval_to_the_idle_interval() {
        assert_eq!(look_interval(0), READ_INTERVAL);
        assert_eq!(look_interval(1), READ_INTERVAL * 2);
        assert_eq!(look_interval(2), READ_INTERVAL * 4);
        assert_eq!(look_interval(3), IDLE_READ_INTERVAL);
        assert_eq!(look_interval(u32::MAX), IDLE_READ_INTERVAL);
    }
}
