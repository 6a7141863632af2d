//! The on-disk form of an agent's hash chain: segment headers, record framing and hashing.
//! Shared by the store (append, recovery, replay) and `verify`.
//!
//! A segment file is a 64-byte header followed by records:
//!
//! ```text
//! header: "PGCHAIN1" | first_index u64 LE | prev_hash [32] | created unix s i64 LE | 8 zero bytes
//! record: len u32 LE | body (StoredRecord protobuf, len bytes) | hash [32]
//! hash  = sha256(prev_hash || len u32 LE || body)
//! ```
//!
//! `prev_hash` of a segment is the hash of the last record of the segment before it (all
//! zeros for an agent's first segment), so the chain runs across segments.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"PGCHAIN1";
/// Size of a segment header.
pub const HEADER_LEN: u64 = 64;
/// Size of a record hash.
pub const HASH_LEN: usize = 32;
/// Largest record body accepted on disk (anything larger is corruption).
pub const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
/// Extension of segment files.
pub const SEGMENT_EXT: &str = "seg";

/// A record hash.
pub type Hash = [u8; HASH_LEN];

/// The `prev_hash` of an agent's very first segment.
pub const GENESIS: Hash = [0; HASH_LEN];

/// A segment or record that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// Reading failed.
    #[error("reading at offset {offset}: {source}")]
    Io {
        /// Byte offset in the segment.
        offset: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The header is not a segment header.
    #[error("bad segment header: {0}")]
    Header(&'static str),
    /// A record's framing is broken (truncated, or an impossible length).
    #[error("offset {offset}: {reason}")]
    Framing {
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// A segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Chain index of the segment's first record.
    pub first_index: u64,
    /// Hash of the record before the first one.
    pub prev_hash: Hash,
    /// When the segment was created (Unix seconds).
    pub created: i64,
}

impl SegmentHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[..8].copy_from_slice(SEGMENT_MAGIC);
        out[8..16].copy_from_slice(&self.first_index.to_le_bytes());
        out[16..48].copy_from_slice(&self.prev_hash);
        out[48..56].copy_from_slice(&self.created.to_le_bytes());
        out
    }

    /// Parses 64 header bytes.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, ChainError> {
        if bytes.len() < HEADER_LEN as usize {
            return Err(ChainError::Header("shorter than 64 bytes"));
        }
        if &bytes[..8] != SEGMENT_MAGIC {
            return Err(ChainError::Header("wrong magic"));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            b
        };
        let mut prev_hash = GENESIS;
        prev_hash.copy_from_slice(&bytes[16..48]);
        let first_index = u64::from_le_bytes(u64_at(8));
        if first_index == 0 {
            return Err(ChainError::Header("first index 0"));
        }
        Ok(SegmentHeader {
            first_index,
            prev_hash,
            created: i64::from_le_bytes(u64_at(48)),
        })
    }

    /// Reads the header at the start of `reader`.
    pub fn read_from(reader: &mut impl Read) -> Result<SegmentHeader, ChainError> {
        let mut bytes = [0u8; HEADER_LEN as usize];
        reader.read_exact(&mut bytes).map_err(|source| {
            if source.kind() == io::ErrorKind::UnexpectedEof {
                ChainError::Header("shorter than 64 bytes")
            } else {
                ChainError::Io { offset: 0, source }
            }
        })?;
        SegmentHeader::decode(&bytes)
    }
}

/// sha256(prev || len u32 LE || body).
pub fn record_hash(prev: &Hash, body: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update((body.len() as u32).to_le_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

/// Appends one framed record (`len | body | hash`) to `out`.
pub fn encode_record(out: &mut Vec<u8>, body: &[u8], hash: &Hash) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(hash);
}

/// Bytes one record of `body_len` bytes takes on disk.
pub fn framed_len(body_len: usize) -> u64 {
    4 + body_len as u64 + HASH_LEN as u64
}

/// The file name of the segment starting at `first_index`.
pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.{SEGMENT_EXT}")
}

/// The first index encoded in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(&format!(".{SEGMENT_EXT}"))?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// One framed record as read from disk (not yet checked against the chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Byte offset of the record in its segment.
    pub offset: u64,
    /// The record body (a `StoredRecord`).
    pub body: Vec<u8>,
    /// The hash stored after it.
    pub hash: Hash,
}

impl RawRecord {
    /// Bytes the record takes on disk.
    pub fn framed_len(&self) -> u64 {
        framed_len(self.body.len())
    }
}

/// Reads framed records one after another, from just after the header up to `end` (the
/// committed length) or the end of the file.
pub struct RecordReader<R> {
    reader: R,
    offset: u64,
    end: Option<u64>,
    failed: bool,
}

impl<R: Read> RecordReader<R> {
    /// Reads records from `reader`, positioned at byte `offset` of its segment.
    pub fn new(reader: R, offset: u64, end: Option<u64>) -> Self {
        RecordReader {
            reader,
            offset,
            end,
            failed: false,
        }
    }

    /// The offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn fill(&mut self, buf: &mut [u8], at: u64, what: &str) -> Result<usize, ChainError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ChainError::Io { offset: at, source }),
            }
        }
        if filled != 0 && filled < buf.len() {
            return Err(ChainError::Framing {
                offset: at,
                reason: format!("truncated record ({what}: {filled} of {} bytes)", buf.len()),
            });
        }
        Ok(filled)
    }

    fn read_one(&mut self) -> Result<Option<RawRecord>, ChainError> {
        let at = self.offset;
        if self.end.is_some_and(|end| at >= end) {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        if self.fill(&mut len, at, "length")? == 0 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(len);
        if len == 0 || len > MAX_RECORD_BYTES {
            return Err(ChainError::Framing {
                offset: at,
                reason: format!("impossible record length {len}"),
            });
        }
        if let Some(end) = self.end {
            if at + framed_len(len as usize) > end {
                return Err(ChainError::Framing {
                    offset: at,
                    reason: format!("record of {len} bytes runs past the end of the segment"),
                });
            }
        }
        let mut body = vec![0u8; len as usize];
        if self.fill(&mut body, at, "body")? != body.len() {
            return Err(ChainError::Framing {
                offset: at,
                reason: "truncated record (body missing)".into(),
            });
        }
        let mut hash = GENESIS;
        if self.fill(&mut hash, at, "hash")? != HASH_LEN {
            return Err(ChainError::Framing {
                offset: at,
                reason: "truncated record (hash missing)".into(),
            });
        }
        self.offset += framed_len(len as usize);
        Ok(Some(RawRecord {
            offset: at,
            body,
            hash,
        }))
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<RawRecord, ChainError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.read_one().transpose();
        if matches!(item, Some(Err(_))) {
            self.failed = true;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects() {
        let header = SegmentHeader {
            first_index: 7,
            prev_hash: [3; 32],
            created: 1_700_000_000,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes).unwrap(), header);
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(SegmentHeader::decode(&bad).is_err());
        assert!(SegmentHeader::decode(&bytes[..10]).is_err());
    }

    #[test]
    fn records_read_back_and_truncation_is_reported() {
        let mut file = Vec::new();
        let h1 = record_hash(&GENESIS, b"one");
        encode_record(&mut file, b"one", &h1);
        let h2 = record_hash(&h1, b"two!");
        encode_record(&mut file, b"two!", &h2);
        let records: Vec<RawRecord> = RecordReader::new(file.as_slice(), 64, None)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].offset, 64 + framed_len(3));
        assert_eq!(records[1].hash, h2);
        assert_ne!(h1, h2);
        // A torn tail.
        let torn = &file[..file.len() - 5];
        let results: Vec<_> = RecordReader::new(torn, 64, None).collect();
        assert_eq!(results.len(), 2);
        assert!(results[1].is_err());
        // A bounded reader stops at the committed end.
        let first_only = RecordReader::new(file.as_slice(), 64, Some(64 + framed_len(3)));
        assert_eq!(first_only.count(), 1);
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(12), "00000000000000000012.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000012.seg"),
            Some(12)
        );
        assert_eq!(parse_segment_file_name("12.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000012.idx"), None);
    }
}
