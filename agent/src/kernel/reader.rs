//! Reads ring-buffer records on tokio: waits until the buffer's fd becomes readable or the
//! read interval has passed, then hands every available record to a callback without copying.
//!
//! The kernel programs wake this reader only when the backlog crosses a multiple of
//! `WAKEUP_BYTES` (see `agent-ebpf/src/emit.rs`): records written in between are found by
//! the timed look, so a record waits at most [`READ_INTERVAL`] while records come, or
//! [`IDLE_READ_INTERVAL`] after the buffer has been empty for a while (plus the time to handle
//! what is ahead of it), before it is read, and a busy buffer is read in batches, not per
//! record.

use std::{
    io,
    time::{Duration, Instant},
};

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

/// How much of the buffer one read may hand on before the reader returns: a flood is read in
/// batches so other work (loss reports, reloads, shutdown) gets a turn between them, however
/// fast or slow the machine handles a record.
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    /// Most records in one batch.
    pub records: usize,
    /// Longest one batch may take.
    pub time: Duration,
}

/// Records between two looks at the clock while a batch is handed on.
const CLOCK_EVERY: usize = 32;

/// What one [`take`] handed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Taken {
    /// How many records.
    count: usize,
    /// Whether it stopped because no record was left (rather than the batch being spent).
    emptied: bool,
}

/// Hands records to `on_record` while `next` finds one (it passes the record on and says
/// whether there was one), until `batch` is spent.
fn take(
    batch: Batch,
    mut next: impl FnMut(&mut dyn FnMut(&[u8])) -> bool,
    on_record: &mut impl FnMut(&[u8]),
) -> Taken {
    let started = Instant::now();
    let mut count = 0;
    while count < batch.records {
        if count > 0 && count % CLOCK_EVERY == 0 && started.elapsed() >= batch.time {
            break;
        }
        if !next(&mut |bytes| on_record(bytes)) {
            return Taken {
                count,
                emptied: true,
            };
        }
        count += 1;
    }
    Taken {
        count,
        emptied: false,
    }
}

/// [`take`] from the kernel ring buffer.
fn take_ring(
    ring: &mut RingBuf<MapData>,
    batch: Batch,
    on_record: &mut impl FnMut(&[u8]),
) -> Taken {
    take(
        batch,
        |pass| match ring.next() {
            Some(item) => {
                pass(&item);
                true
            }
            None => false,
        },
        on_record,
    )
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
    /// nothing — then passes each to `on_record`, at most one `batch`, so a flood cannot
    /// starve the rest of the agent. Returns how many were read.
    pub async fn read_batch(
        &mut self,
        batch: Batch,
        mut on_record: impl FnMut(&[u8]),
    ) -> io::Result<usize> {
        loop {
            let wait = look_interval(self.empty_looks);
            let woken = tokio::time::timeout(wait, self.ring.readable_mut()).await;
            let count = match woken {
                Ok(guard) => {
                    let mut guard = guard?;
                    let taken = take_ring(guard.get_inner_mut(), batch, &mut on_record);
                    if taken.emptied {
                        guard.clear_ready();
                    }
                    Some(taken.count)
                }
                // No wake-up: records below the wake-up threshold may be waiting.
                Err(_) => None,
            };
            let count = match count {
                Some(count) => count,
                None => take_ring(self.ring.get_mut(), batch, &mut on_record).count,
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
        let everything = Batch {
            records: usize::MAX,
            time: Duration::MAX,
        };
        take_ring(self.ring.get_mut(), everything, &mut on_record).count
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

    /// `take` from a list of `n` one-byte records, handing each to `on_record`.
    fn take_from(n: usize, batch: Batch, on_record: &mut impl FnMut(&[u8])) -> Taken {
        let mut left = n;
        take(
            batch,
            |pass| {
                if left == 0 {
                    return false;
                }
                left -= 1;
                pass(&[7]);
                true
            },
            on_record,
        )
    }

    #[test]
    fn a_batch_ends_at_its_record_limit_or_when_the_buffer_is_empty() {
        let batch = Batch {
            records: 100,
            time: Duration::MAX,
        };
        let mut seen = 0;
        let full = take_from(250, batch, &mut |bytes| seen += bytes.len());
        assert_eq!(
            full,
            Taken {
                count: 100,
                emptied: false
            }
        );
        assert_eq!(seen, 100);
        let short = take_from(40, batch, &mut |_| {});
        assert_eq!(
            short,
            Taken {
                count: 40,
                emptied: true
            }
        );
    }

    #[test]
    fn a_batch_of_slowly_handled_records_ends_at_its_time_limit() {
        // A machine slow enough that 8192 records take seconds: the batch still ends in time
        // for the loss report's tick.
        let batch = Batch {
            records: 8192,
            time: Duration::from_millis(20),
        };
        let taken = take_from(8192, batch, &mut |_| {
            std::thread::sleep(Duration::from_millis(1));
        });
        assert!(!taken.emptied);
        assert!(
            taken.count >= CLOCK_EVERY && taken.count < 8192,
            "stopped after {} records",
            taken.count
        );
    }
}
