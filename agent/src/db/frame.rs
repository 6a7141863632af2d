//! Framed capture records: the spans the kernel's PostgreSQL and MySQL framing walks send
//! (`FLAG_DB_FRAMED`), parsed back into the chunks the decoders take.
//!
//! A record's data is a series of [`DbSpan`] headers, each followed by the span's captured
//! bytes. A span stands for `moved` consecutive bytes of the stream of which only the first
//! `captured` left the kernel; the kernel never elides a message header, so each span is a
//! [`Chunk`] whose gap is at its end, and the decoders frame from the spans exactly the
//! messages they would frame from the whole stream.

use phiguard_common::event::{DbSpan, SPAN_BOUNDARY};

use super::{Chunk, Direction};

/// One span of a framed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Bytes of the stream it stands for.
    pub moved: usize,
    /// Where its captured bytes are in the record's data.
    pub start: usize,
    /// How many were captured.
    pub captured: usize,
    /// It starts at a message boundary.
    pub boundary: bool,
}

impl Span {
    /// The span as a decoder's chunk, given the record's `data`.
    pub fn chunk<'a>(&self, direction: Direction, data: &'a [u8]) -> Chunk<'a> {
        Chunk {
            direction,
            data: &data[self.start..self.start + self.captured],
            len: self.moved,
            tail: &[],
        }
    }
}

/// Why a framed record's data is not a series of spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    /// A span header or its bytes run past the data.
    #[error("span {0} runs past the record's data")]
    PastEnd(usize),
    /// A span says it captured more than it stands for.
    #[error("span {0} captured more bytes than it moved")]
    Overfull(usize),
    /// Bytes follow the last span.
    #[error("{0} bytes follow the last span")]
    Trailing(usize),
}

/// The `count` spans in a framed record's `data`.
pub fn parse_spans(data: &[u8], count: u32) -> Result<Vec<Span>, SpanError> {
    const HEADER: usize = std::mem::size_of::<DbSpan>();
    let mut spans = Vec::with_capacity((count as usize).min(data.len() / HEADER));
    let mut at = 0;
    for i in 0..count as usize {
        let h = data.get(at..at + HEADER).ok_or(SpanError::PastEnd(i))?;
        let moved = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let captured = usize::from(u16::from_ne_bytes([h[4], h[5]]));
        let flags = u16::from_ne_bytes([h[6], h[7]]);
        if captured > moved {
            return Err(SpanError::Overfull(i));
        }
        let start = at + HEADER;
        if start + captured > data.len() {
            return Err(SpanError::PastEnd(i));
        }
        spans.push(Span {
            moved,
            start,
            captured,
            boundary: flags & SPAN_BOUNDARY != 0,
        });
        at = start + captured;
    }
    if at != data.len() {
        return Err(SpanError::Trailing(data.len() - at));
    }
    Ok(spans)
}

#[cfg(test)]
pub(crate) mod testutil {
    use phiguard_common::event::{DbSpan, SPAN_BOUNDARY};

    /// A model of the kernel's walk (`agent-ebpf/src/programs/db_frame.rs`) over one
    /// direction's whole PostgreSQL stream (`untyped_first`: the client's, starting with its
    /// startup packet), cut into calls at `cuts`: each call's spans as (captured bytes, moved).
    /// Headers are kept, bodies as far as the kernel captures them.
    pub fn kernel_spans(
        stream: &[u8],
        cuts: &[usize],
        untyped_first: bool,
    ) -> Vec<Vec<(Vec<u8>, usize)>> {
        let to_server = untyped_first;
        let mut kept = vec![false; stream.len()];
        let mut starts = vec![false; stream.len()];
        let mut at = 0;
        let mut untyped = untyped_first;
        while at < stream.len() {
            let (header, len, body_keep) = if untyped {
                let len = u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
                untyped = false;
                (8, len, (len - 8).min(4096))
            } else {
                let kind = stream[at];
                let len =
                    1 + u32::from_be_bytes(stream[at + 1..at + 5].try_into().unwrap()) as usize;
                let limit = match (to_server, kind) {
                    (true, b'Q' | b'P') => 4096,
                    (true, b'B') => 128,
                    (true, b'E' | b'C') => 72,
                    (false, b'R') => 128,
                    (false, b'E' | b'C' | b'S') => 64,
                    (false, b'Z') => 1,
                    (false, b'T') => 2,
                    _ => 0,
                };
                (5, len, (len - 5).min(limit))
            };
            starts[at] = true;
            kept[at..at + header + body_keep].fill(true);
            at += len;
        }
        cut_spans(stream, &kept, &starts, cuts)
    }

    /// Cuts one direction's `stream` into calls at `cuts`, given which bytes the kernel keeps
    /// and where messages start: each call's spans as (captured bytes, moved).
    pub fn cut_spans(
        stream: &[u8],
        kept: &[bool],
        starts: &[bool],
        cuts: &[usize],
    ) -> Vec<Vec<(Vec<u8>, usize)>> {
        let mut calls = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
            let mut spans: Vec<(Vec<u8>, usize)> = Vec::new();
            for i in from..to {
                let new = i == from || starts[i] || (kept[i] && !kept[i - 1]);
                if new {
                    spans.push((Vec::new(), 0));
                }
                let span = spans.last_mut().unwrap();
                span.1 += 1;
                if kept[i] {
                    span.0.push(stream[i]);
                }
            }
            calls.push(spans);
            from = to;
        }
        calls
    }

    /// The record data of `spans` (captured bytes, moved, boundary).
    pub fn record(spans: &[(&[u8], usize, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (bytes, moved, boundary) in spans {
            let h = DbSpan {
                moved: *moved as u32,
                captured: bytes.len() as u16,
                flags: if *boundary { SPAN_BOUNDARY } else { 0 },
            };
            out.extend_from_slice(&h.moved.to_ne_bytes());
            out.extend_from_slice(&h.captured.to_ne_bytes());
            out.extend_from_slice(&h.flags.to_ne_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_back_and_malformed_ones_are_refused() {
        let data = testutil::record(&[(b"Q\0\0\0\x08ab", 9, true), (b"", 100, false)]);
        let spans = parse_spans(&data, 2).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(
            spans[0].chunk(Direction::ToServer, &data).data,
            b"Q\0\0\0\x08ab"
        );
        assert_eq!(spans[0].moved, 9);
        assert!(spans[0].boundary && !spans[1].boundary);
        assert_eq!(spans[1].moved, 100);
        assert_eq!(parse_spans(&data, 3), Err(SpanError::PastEnd(2)));
        assert_eq!(parse_spans(&data, 1), Err(SpanError::Trailing(8)));
        assert_eq!(parse_spans(&data[..10], 1), Err(SpanError::PastEnd(0)));
        let overfull = testutil::record(&[(b"abc", 2, true)]);
        assert_eq!(parse_spans(&overfull, 1), Err(SpanError::Overfull(0)));
    }
}
