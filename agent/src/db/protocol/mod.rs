//! Database wire-protocol decoders: pure, streaming, and total.
//!
//! The kernel hands user space the first bytes of each `write`/`read` on a tracked database
//! socket (bounded per call, so a long message arrives truncated). A decoder per session takes
//! those chunks in order, one direction at a time, and yields [`Message`]s:
//!
//! - **streaming**: a message split across reads is held until complete; several messages in
//!   one read all decode;
//! - **gap-aware**: a chunk says how many bytes the call really moved ([`Chunk::len`]); a
//!   message whose tail was not captured is emitted with what is known and marked truncated,
//!   and the rest of it is skipped without losing the message boundary;
//! - **total**: malformed input never panics; a direction whose framing is lost yields one
//!   [`Message::Desync`] and nothing more.
//!
//! Decoders never return row data, passwords or error message text (which can quote row data):
//! only statement text (redact it with [`sql::redact`] before it leaves the agent), names,
//! SQLSTATEs, command tags and counts.

pub mod mysql;
pub mod postgres;
pub mod sql;

/// Which way the bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server (the client writes, the server reads).
    ToServer,
    /// Server to client.
    ToClient,
}

/// One captured read or write.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// Which way the bytes went.
    pub direction: Direction,
    /// The captured bytes: the first bytes of the call.
    pub data: &'a [u8],
    /// How many bytes the call moved; more than `data.len()` when the capture was truncated.
    pub len: usize,
    /// The call's last bytes, when it moved more than `data` and they were captured (empty
    /// otherwise): only where a burst of skipped data ends, never framed from.
    pub tail: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// A chunk captured whole.
    pub fn whole(direction: Direction, data: &'a [u8]) -> Self {
        Self {
            direction,
            data,
            len: data.len(),
            tail: &[],
        }
    }
}

/// How a session was encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// TLS (PostgreSQL SSLRequest or direct TLS, MySQL CLIENT_SSL).
    Tls,
    /// PostgreSQL GSSAPI encryption.
    Gss,
}

/// What a decoder learned from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The session is encrypted from here on: nothing more is decoded.
    Encrypted(Encryption),
    /// The client's login request.
    Startup {
        /// Database user.
        user: Option<String>,
        /// Database (schema for MySQL).
        database: Option<String>,
        /// Application name (`application_name`, MySQL `program_name` attribute).
        application: Option<String>,
    },
    /// How the login (or a MySQL COM_CHANGE_USER) authenticates, as the exchange names it:
    /// PostgreSQL's AuthenticationRequest type (`password`, `md5`, `scram-sha-256`, …),
    /// refined by the SASL mechanism the client chose; MySQL's client plugin, then any auth
    /// switch. Only the name: never a password, scramble or SASL payload.
    AuthMethod {
        /// The method's name.
        method: String,
    },
    /// MySQL COM_CHANGE_USER: the client re-authenticates the open session as another user.
    /// The server's OK ([`Message::AuthOk`]) or ERR ([`Message::Error`]) follows.
    ChangeUser {
        /// The new database user.
        user: String,
        /// The database (schema) asked for, when one was.
        database: Option<String>,
    },
    /// The server accepted the login (or a COM_CHANGE_USER).
    AuthOk,
    /// A statement sent for immediate execution (PostgreSQL Query, MySQL COM_QUERY).
    Query {
        /// Statement text, not yet redacted.
        text: String,
        /// The text was cut short (capture bound or buffer limit).
        truncated: bool,
    },
    /// A statement prepared for later execution (PostgreSQL Parse, MySQL COM_STMT_PREPARE).
    Prepare {
        /// Statement name (PostgreSQL; empty for the unnamed statement). For MySQL the name is
        /// the server's statement id, known once the server answered: see [`Message::Execute`].
        name: String,
        /// Statement text, not yet redacted.
        text: String,
        /// The text was cut short.
        truncated: bool,
    },
    /// A prepared statement is executed (PostgreSQL Execute, MySQL COM_STMT_EXECUTE).
    Execute {
        /// Statement name (PostgreSQL) or id (MySQL).
        name: String,
        /// The statement's text when this decoder saw it prepared.
        text: Option<String>,
    },
    /// A statement finished.
    Complete {
        /// Command tag (PostgreSQL `INSERT 0 1`; MySQL `OK` or `SELECT` for a result set).
        tag: String,
        /// Rows returned or affected, when the server says.
        rows: Option<u64>,
    },
    /// A statement (or the login) failed.
    Error {
        /// SQLSTATE (five characters), when the server sent one.
        sqlstate: Option<String>,
        /// MySQL's numeric error code.
        code: Option<u16>,
        /// PostgreSQL severity (`ERROR`, `FATAL`, …).
        severity: Option<String>,
    },
    /// The server is idle again (PostgreSQL ReadyForQuery).
    Ready,
    /// The client closed an extended-protocol batch (PostgreSQL Sync): the server answers it
    /// with one ReadyForQuery, as it answers each Query.
    Sync,
    /// The running statement moves bulk data (PostgreSQL CopyInResponse, CopyOutResponse,
    /// CopyBothResponse; MySQL's LOCAL INFILE request). The data itself is never read: only
    /// its framing is followed, and its outcome (rows, or the error) closes the statement.
    Copy {
        /// Which way the data goes.
        direction: CopyDirection,
    },
    /// A COPY's data outran the capture and its end was not seen (PostgreSQL COPY TO whose
    /// last bytes were not captured): the statement ends here with no outcome, and the
    /// direction is followed again from the next message.
    CopyUnseen,
    /// The server reported a setting that changes how statements are lexed: PostgreSQL's
    /// ParameterStatus `standard_conforming_strings` (`on`/`off`), or MySQL's
    /// `SERVER_STATUS_NO_BACKSLASH_ESCAPES` flag as `no_backslash_escapes` (`on`/`off`, sent
    /// when it changes).
    Setting {
        /// Setting name.
        name: String,
        /// Its value.
        value: String,
    },
    /// The client ended the session (PostgreSQL Terminate, MySQL COM_QUIT).
    Terminate,
    /// The framing of one direction was lost (malformed bytes, or an uncaptured gap across a
    /// message boundary); that direction is not decoded any further.
    Desync {
        /// The direction that was lost.
        direction: Direction,
        /// Why.
        reason: DecodeError,
    },
}

/// Which way a COPY (or MySQL LOAD DATA LOCAL) moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyDirection {
    /// From the client into the server: `COPY … FROM STDIN`, `LOAD DATA LOCAL INFILE`.
    In,
    /// From the server to the client: `COPY … TO STDOUT`.
    Out,
    /// Both ways (PostgreSQL streaming replication's CopyBothResponse).
    Both,
}

impl CopyDirection {
    /// The name events carry: `in`, `out`, `both`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
            Self::Both => "both",
        }
    }
}

/// Why a direction could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A length field that no valid message has.
    #[error("invalid message length {0}")]
    BadLength(u64),
    /// Bytes were not captured across a message boundary.
    #[error("{0} bytes were not captured across a message boundary")]
    Gap(usize),
    /// A message that the protocol does not allow here.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// The session uses a feature this decoder does not read (MySQL compression).
    #[error("unsupported protocol feature: {0}")]
    Unsupported(&'static str),
}

/// Largest message held whole; a longer one is decoded from its first bytes and marked
/// truncated.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Most prepared statements remembered per session (their text, for executions).
pub const MAX_STATEMENTS: usize = 256;

/// How a protocol frames its messages, seen from the bytes buffered so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// Not enough bytes to know the length yet.
    NeedMore,
    /// The message is this many bytes long in total (header included).
    Len(usize),
    /// No valid message starts here.
    Invalid(DecodeError),
}

/// A framed message handed to a protocol decoder.
pub(crate) struct Frame {
    /// The message's bytes (header included), possibly only its first part.
    pub bytes: Vec<u8>,
    /// Bytes of the message were not captured or not buffered.
    pub truncated: bool,
}

/// The byte stream of one direction: buffers partial messages, skips what was emitted
/// truncated, and notices lost framing.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    buf: Vec<u8>,
    /// Bytes still to drop: the uncaptured or unbuffered tail of a message already emitted.
    discard: usize,
    /// The framing was lost.
    broken: bool,
    /// A gap not yet applied: the bytes the last chunk moved beyond what it captured.
    pending_gap: usize,
}

impl Stream {
    /// Nothing buffered and nothing to skip: the next byte starts a message.
    pub fn is_empty_buffer(&self) -> bool {
        self.buf.is_empty() && self.discard == 0
    }

    /// Marks the framing as lost and frees the buffer.
    pub fn break_off(&mut self) {
        self.broken = true;
        self.buf = Vec::new();
        self.discard = 0;
        self.pending_gap = 0;
    }

    /// Forgets the lost framing and everything buffered: the next chunk starts a message.
    /// Only for a point the protocol makes a boundary (the other direction says so).
    pub fn restart(&mut self) {
        *self = Self::default();
    }

    /// Takes in one chunk's captured bytes and remembers its uncaptured remainder; call
    /// [`Stream::next_frame`] until it returns `None`.
    pub fn absorb(&mut self, data: &[u8], len: usize) {
        if self.broken {
            return;
        }
        let skip = self.discard.min(data.len());
        self.discard -= skip;
        self.buf.extend_from_slice(&data[skip..]);
        self.pending_gap = len.saturating_sub(data.len());
    }

    /// The next message, given how the protocol frames the buffered bytes (which may depend on
    /// the messages before it, so it is asked each time).
    pub fn next_frame(
        &mut self,
        header: impl Fn(&[u8]) -> Header,
    ) -> Result<Option<Frame>, DecodeError> {
        if self.broken {
            return Ok(None);
        }
        if self.buf.is_empty() && self.discard == 0 && self.pending_gap == 0 {
            return Ok(None);
        }
        if self.discard > 0 {
            // Still inside an emitted message's tail: only the gap can consume it.
            if self.pending_gap == 0 {
                return Ok(None);
            }
            let used = self.discard.min(self.pending_gap);
            self.discard -= used;
            self.pending_gap -= used;
            if self.pending_gap > 0 {
                return Err(self.fail(DecodeError::Gap(self.pending_gap)));
            }
            return Ok(None);
        }
        match header(&self.buf) {
            Header::Invalid(e) => Err(self.fail(e)),
            Header::Len(n) if n <= self.buf.len() => {
                let rest = self.buf.split_off(n);
                let bytes = std::mem::replace(&mut self.buf, rest);
                Ok(Some(Frame {
                    bytes,
                    truncated: false,
                }))
            }
            Header::Len(n) => {
                // Incomplete: complete it from the next chunk, unless this chunk's tail was not
                // captured or the message is too large to hold.
                let have = self.buf.len();
                if self.pending_gap > 0 {
                    let missing = n - have;
                    if self.pending_gap > missing {
                        return Err(self.fail(DecodeError::Gap(self.pending_gap - missing)));
                    }
                    self.discard = missing - self.pending_gap;
                    self.pending_gap = 0;
                    let bytes = std::mem::take(&mut self.buf);
                    return Ok(Some(Frame {
                        bytes,
                        truncated: true,
                    }));
                }
                if have >= MAX_MESSAGE {
                    self.discard = n - have;
                    let bytes = std::mem::take(&mut self.buf);
                    return Ok(Some(Frame {
                        bytes,
                        truncated: true,
                    }));
                }
                Ok(None)
            }
            Header::NeedMore if self.pending_gap > 0 => {
                Err(self.fail(DecodeError::Gap(self.pending_gap)))
            }
            Header::NeedMore => Ok(None),
        }
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.break_off();
        e
    }
}

/// A cursor over a message body that never reads out of bounds.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    pub fn u16_le(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32_le(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i32_be(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string. With `lenient`, a string cut off by truncation (no NUL before
    /// the end) is returned whole.
    pub fn cstr(&mut self, lenient: bool) -> Option<&'a [u8]> {
        match self.bytes.iter().position(|&b| b == 0) {
            Some(i) => {
                let s = &self.bytes[..i];
                self.bytes = &self.bytes[i + 1..];
                Some(s)
            }
            None if lenient => {
                let s = self.bytes;
                self.bytes = &[];
                Some(s)
            }
            None => None,
        }
    }

    /// A MySQL length-encoded integer.
    pub fn lenenc(&mut self) -> Option<u64> {
        match self.u8()? {
            b @ 0..=0xfa => Some(u64::from(b)),
            0xfc => self
                .take(2)
                .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]]))),
            0xfd => self
                .take(3)
                .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], 0]))),
            0xfe => self
                .take(8)
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
            _ => None,
        }
    }

    /// A MySQL length-encoded string.
    pub fn lenenc_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.lenenc()?).ok()?;
        self.take(n)
    }
}

/// An authentication method's name as the wire gives it, when it looks like one (letters,
/// digits, `_`, `-`, `.`; at most 64 bytes), else `unknown`: a name is all an event may carry
/// from the credential exchange.
pub(crate) fn method_name(bytes: &[u8]) -> String {
    let plausible = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plausible {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        "unknown".into()
    }
}

/// Lossy UTF-8 text, without trailing NULs.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\0')
        .to_string()
}

/// Remembers prepared statements' text by name, bounded.
#[derive(Debug, Default)]
pub(crate) struct Statements {
    map: std::collections::HashMap<String, String>,
}

impl Statements {
    pub fn insert(&mut self, name: String, text: String) {
        if self.map.len() >= MAX_STATEMENTS && !self.map.contains_key(&name) {
            // Forget an arbitrary one: a long-lived pool may prepare without bound.
            if let Some(k) = self.map.keys().next().cloned() {
                self.map.remove(&k);
            }
        }
        self.map.insert(name, text);
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.map.get(name)
    }

    pub fn remove(&mut self, name: &str) {
        self.map.remove(name);
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    /// A small deterministic generator for random-input tests (no dependency, reproducible).
    pub struct XorShift(pub u64);

    impl XorShift {
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % (n.max(1) as u64)) as usize
        }

        pub fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Mutates a valid byte sequence: flips, inserts, deletes and truncates at random.
    pub fn mutate(rng: &mut XorShift, base: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let i = rng.below(v.len() + 1);
                    v.insert(i, rng.next() as u8);
                }
                2 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v.remove(i);
                }
                _ => {
                    let i = rng.below(v.len() + 1);
                    v.truncate(i);
                }
            }
        }
        v
    }

    /// Feeds a recorded exchange in order to `feed` (a decoder), each side's bytes cut at
    /// random when `rng` is given; what the decoder made of it.
    pub fn replay(
        mut feed: impl FnMut(super::Chunk<'_>) -> Vec<super::Message>,
        exchange: &[(super::Direction, Vec<u8>)],
        mut rng: Option<&mut XorShift>,
    ) -> Vec<super::Message> {
        let mut out = Vec::new();
        for (dir, bytes) in exchange {
            let chunks = match rng.as_deref_mut() {
                Some(rng) => split(rng, bytes),
                None => vec![bytes.clone()],
            };
            for c in chunks {
                out.extend(feed(super::Chunk::whole(*dir, &c)));
            }
        }
        out
    }

    /// Splits `bytes` into random-sized chunks.
    pub fn split(rng: &mut XorShift, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(64));
            out.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        out
    }
}
