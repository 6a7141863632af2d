//! Shared by the decoder targets: the fuzz input as a sequence of captured reads and writes.
//!
//! Each chunk is a header byte (bit 0: direction; bit 1: the call moved more than was
//! captured, and its last bytes were, as many as the header's upper bits say) and a length byte, then up to that many bytes: split and coalesced messages,
//! gaps and malformed framing all come out of it.

use phiguard::db::{Chunk, Direction};

/// Calls `feed` with every chunk of `input`.
pub fn for_each_chunk(mut input: &[u8], mut feed: impl FnMut(Chunk<'_>)) {
    while let [header, len, rest @ ..] = input {
        let take = usize::from(*len).min(rest.len());
        let (data, tail) = rest.split_at(take);
        let direction = if header & 1 == 0 {
            Direction::ToServer
        } else {
            Direction::ToClient
        };
        let moved = if header & 2 == 0 {
            data.len()
        } else {
            data.len() + usize::from(header >> 2) * 97
        };
        // A truncated call's last bytes, as the kernel adds them to a long plain call.
        let tail_len = if header & 2 == 0 {
            0
        } else {
            usize::from(header >> 2).min(data.len())
        };
        feed(Chunk {
            direction,
            data,
            len: moved,
            tail: &data[data.len() - tail_len..],
        });
        input = tail;
    }
}
