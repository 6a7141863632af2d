//! PostgreSQL frontend/backend protocol 3.0 (protocol 3.2 frames the same way).
//!
//! Client side: the untyped first message (SSLRequest, GSSENCRequest, CancelRequest or
//! StartupMessage), then typed messages (`Q` Query, `P` Parse, `B` Bind, `E` Execute, `C`
//! Close, `X` Terminate; the password message `p` and COPY's `d` CopyData, `c` CopyDone and
//! `f` CopyFail are skipped unread). Server side: the one-byte answer to
//! SSLRequest/GSSENCRequest, then typed messages (`R` Authentication, `E` ErrorResponse, `C`
//! CommandComplete, `Z` ReadyForQuery, `G`/`H`/`W` Copy{In,Out,Both}Response; rows `D` and
//! CopyData are skipped unread). A client that starts TLS directly (PostgreSQL 17
//! `sslnegotiation=direct`) is recognised by the TLS record header.
//!
//! **COPY.** CopyData is data, never a command: its messages are skipped by their length. When
//! a COPY's data outruns the capture (a call larger than the kernel copies, across message
//! boundaries), the direction carrying it is not desynchronised but skipped to the copy's end,
//! which the protocol makes a message boundary:
//! - `COPY … FROM STDIN`: the server's CommandComplete `COPY n` is sent only once it has read
//!   the client's CopyDone, so the client's next byte starts a message;
//! - `COPY … TO STDOUT`: the client's next message comes once the server is idle (libpq, which
//!   psql and pg_dump use, refuses COPY in pipeline mode), so the server's next byte starts a
//!   message; the outcome is read backwards from the last captured bytes of the server's output
//!   (CopyDone, CommandComplete `COPY n`, ReadyForQuery end it, in that order, so the parse is
//!   exact), or, when they were not captured, the statement ends without an outcome
//!   ([`Message::CopyUnseen`]).
//!
//! A server error during a `COPY FROM` whose data outran the capture leaves the client's
//! framing unknown (the client may still be sending data): that direction is desynchronised.

use super::{
    method_name, text, Chunk, CopyDirection, DecodeError, Direction, Encryption, Frame, Header,
    Message, Reader, Statements, Stream,
};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// Protocol major version 3 (minor version in the low 16 bits).
const PROTOCOL_3: i32 = 3 << 16;
/// No message is longer (the server's own limit for most messages is 1 GiB).
const MAX_LEN: usize = 1 << 30;
/// A TLS handshake record starts with this byte.
const TLS_HANDSHAKE: u8 = 0x16;
/// Server bytes kept while a COPY TO's data is skipped: enough for its end (CopyDone 5,
/// CommandComplete `COPY` with a 20-digit count 31, ReadyForQuery 6).
const COPY_END_TAIL: usize = 64;

/// How far the COPY data in one direction is followed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum CopyState {
    /// No COPY data flows this way.
    #[default]
    Off,
    /// COPY data flows and its framing is followed message by message.
    Framed,
    /// COPY data flows, but more was moved than captured: skipped to the copy's end.
    Skipped,
}

/// One PostgreSQL session, both directions.
#[derive(Debug, Default)]
pub struct Decoder {
    client: Stream,
    server: Stream,
    /// The next client message is untyped (startup phase).
    client_started: bool,
    /// The server's next byte answers an SSLRequest (`Some(Tls)`) or a GSSENCRequest.
    awaiting_answer: Option<Encryption>,
    encrypted: bool,
    statements: Statements,
    /// Portal name → statement name, from Bind.
    portals: Statements,
    /// The SASL mechanisms the server offered (AuthenticationSASL), until the client's
    /// SASLInitialResponse names the one it chose.
    sasl_offered: Option<Vec<String>>,
    /// COPY data from the client (CopyInResponse until the copy ends).
    copy_in: CopyState,
    /// COPY data from the server (CopyOutResponse until ReadyForQuery).
    copy_out: CopyState,
    /// Streaming replication's CopyBothResponse: its data is followed, never skipped.
    copy_both: bool,
    /// The last captured server bytes while `copy_out` is skipped (only bytes captured with
    /// everything after them: a truncated call empties it).
    copy_tail: Vec<u8>,
}

impl Decoder {
    /// A decoder for a session seen from its start.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder for a session already past its startup (the agent started mid-session):
    /// the client's messages are typed from the first byte.
    pub fn mid_session() -> Self {
        Self {
            client_started: true,
            ..Self::default()
        }
    }

    /// Whether the session switched to TLS or GSSAPI: nothing more is decoded.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// Records of `direction` were lost and its next chunk starts a message: what was
    /// buffered is dropped and its framing (even a lost one) starts again there.
    pub fn resync(&mut self, direction: Direction) {
        match direction {
            Direction::ToServer => self.client.restart(),
            Direction::ToClient => self.server.restart(),
        }
    }

    /// The next chunk of `direction` starts a message (the kernel's walk of a joined
    /// session's direction begins there): a message half-read from earlier captures is
    /// dropped, and nothing else is forgotten.
    pub fn restart_stream(&mut self, direction: Direction) {
        match direction {
            Direction::ToServer => self.client.restart(),
            Direction::ToClient => self.server.restart(),
        }
    }

    /// Decodes one captured read or write.
    pub fn feed(&mut self, chunk: Chunk<'_>) -> Vec<Message> {
        let mut out = Vec::new();
        if self.encrypted {
            return out;
        }
        match chunk.direction {
            Direction::ToServer => {
                if self.copy_out == CopyState::Skipped && chunk.len > 0 {
                    // The client speaks again: the server finished its COPY TO.
                    self.end_skipped_copy_out(&mut out);
                }
                if !self.client_started
                    && self.client.is_empty_buffer()
                    && chunk.data.first() == Some(&TLS_HANDSHAKE)
                {
                    self.encrypted = true;
                    out.push(Message::Encrypted(Encryption::Tls));
                    return out;
                }
                self.client.absorb(chunk.data, chunk.len);
                loop {
                    let started = self.client_started;
                    match self.client.next_frame(|b| client_header(b, started)) {
                        Ok(Some(frame)) => {
                            self.client_message(&frame, &mut out);
                            if self.encrypted {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(DecodeError::Gap(_))
                            if self.copy_in == CopyState::Framed && !self.copy_both =>
                        {
                            // COPY data outran the capture: skipped to the copy's end.
                            self.copy_in = CopyState::Skipped;
                            break;
                        }
                        Err(reason) => {
                            out.push(Message::Desync {
                                direction: Direction::ToServer,
                                reason,
                            });
                            break;
                        }
                    }
                }
            }
            Direction::ToClient => {
                if self.copy_out == CopyState::Skipped {
                    self.keep_copy_tail(chunk);
                    return out;
                }
                self.server.absorb(chunk.data, chunk.len);
                loop {
                    let answer = self.awaiting_answer.is_some();
                    match self.server.next_frame(|b| server_header(b, answer)) {
                        Ok(Some(frame)) => {
                            self.server_message(&frame, &mut out);
                            if self.encrypted {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(DecodeError::Gap(_))
                            if self.copy_out == CopyState::Framed && !self.copy_both =>
                        {
                            // COPY data outran the capture: skipped until the client speaks.
                            self.copy_out = CopyState::Skipped;
                            self.copy_tail.clear();
                            self.keep_copy_tail(chunk);
                            break;
                        }
                        Err(reason) => {
                            out.push(Message::Desync {
                                direction: Direction::ToClient,
                                reason,
                            });
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    fn client_message(&mut self, frame: &Frame, out: &mut Vec<Message>) {
        let bytes = &frame.bytes;
        if !self.client_started {
            let mut r = Reader::new(bytes);
            let (Some(_len), Some(code)) = (r.i32_be(), r.i32_be()) else {
                return;
            };
            match code {
                SSL_REQUEST => self.awaiting_answer = Some(Encryption::Tls),
                GSSENC_REQUEST => self.awaiting_answer = Some(Encryption::Gss),
                // A cancel request is a connection of its own; nothing follows.
                CANCEL_REQUEST => {}
                c if c & !0xffff == PROTOCOL_3 => {
                    self.client_started = true;
                    out.push(startup(r));
                }
                _ => {
                    self.client.break_off();
                    out.push(Message::Desync {
                        direction: Direction::ToServer,
                        reason: DecodeError::Unexpected("startup code"),
                    });
                }
            }
            return;
        }
        let Some((&kind, _)) = bytes.split_first() else {
            return;
        };
        let mut r = Reader::new(bytes.get(5..).unwrap_or_default());
        let lenient = frame.truncated;
        match kind {
            b'Q' => {
                if let Some(q) = r.cstr(lenient) {
                    out.push(Message::Query {
                        text: text(q),
                        truncated: frame.truncated,
                    });
                }
            }
            b'P' => {
                let name = r.cstr(lenient).map(text).unwrap_or_default();
                if let Some(q) = r.cstr(lenient) {
                    let q = text(q);
                    self.statements.insert(name.clone(), q.clone());
                    out.push(Message::Prepare {
                        name,
                        text: q,
                        truncated: frame.truncated,
                    });
                }
            }
            b'B' => {
                if let (Some(portal), Some(stmt)) = (r.cstr(lenient), r.cstr(lenient)) {
                    self.portals.insert(text(portal), text(stmt));
                }
            }
            b'E' => {
                if let Some(portal) = r.cstr(lenient) {
                    let name = self.portals.get(&text(portal)).cloned().unwrap_or_default();
                    let stmt_text = self.statements.get(&name).cloned();
                    out.push(Message::Execute {
                        name,
                        text: stmt_text,
                    });
                }
            }
            b'C' => {
                if let (Some(what), Some(name)) = (r.u8(), r.cstr(lenient)) {
                    match what {
                        b'S' => self.statements.remove(&text(name)),
                        b'P' => self.portals.remove(&text(name)),
                        _ => {}
                    }
                }
            }
            // CopyDone, CopyFail (its text, the client's own, is not read): the client's
            // data ends; the server's CommandComplete or ErrorResponse closes the statement.
            b'c' | b'f' if self.copy_in == CopyState::Framed => self.copy_in = CopyState::Off,
            b'X' => out.push(Message::Terminate),
            b'S' => out.push(Message::Sync),
            // SASLInitialResponse: only the mechanism's name, and only one the server
            // offered; the payload after it is never read. Other password messages (the
            // cleartext or MD5 password, SASL continuations) are skipped unread.
            b'p' => {
                if let Some(offered) = self.sasl_offered.take() {
                    if let Some(name) = r.cstr(false) {
                        let name = method_name(name).to_ascii_lowercase();
                        if offered.contains(&name) {
                            out.push(Message::AuthMethod { method: name });
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn server_message(&mut self, frame: &Frame, out: &mut Vec<Message>) {
        let bytes = &frame.bytes;
        if let Some(method) = self.awaiting_answer.take() {
            match bytes.first() {
                Some(b'S') if method == Encryption::Tls => {
                    self.encrypted = true;
                    out.push(Message::Encrypted(method));
                }
                Some(b'G') if method == Encryption::Gss => {
                    self.encrypted = true;
                    out.push(Message::Encrypted(method));
                }
                // Refused: the client goes on in clear with another untyped message.
                Some(b'N') => {}
                // An error instead (old servers): a typed ErrorResponse follows in the frame.
                _ => self.server_message(frame, out),
            }
            return;
        }
        let Some((&kind, _)) = bytes.split_first() else {
            return;
        };
        let mut r = Reader::new(bytes.get(5..).unwrap_or_default());
        match kind {
            b'R' => match r.i32_be() {
                Some(0) => {
                    self.sasl_offered = None;
                    out.push(Message::AuthOk);
                }
                Some(10) => {
                    // AuthenticationSASL: the mechanisms offered, most preferred first.
                    let mut offered = Vec::new();
                    while let Some(name) = r.cstr(false) {
                        if name.is_empty() {
                            break;
                        }
                        offered.push(method_name(name).to_ascii_lowercase());
                    }
                    if let Some(first) = offered.first() {
                        out.push(Message::AuthMethod {
                            method: first.clone(),
                        });
                    }
                    self.sasl_offered = Some(offered);
                }
                Some(code) => {
                    if let Some(method) = auth_method(code) {
                        out.push(Message::AuthMethod {
                            method: method.into(),
                        });
                    }
                }
                None => {}
            },
            b'E' => {
                if self.copy_in == CopyState::Skipped {
                    // The client may still be sending data the server now drops: no boundary
                    // is known in its stream.
                    self.copy_in = CopyState::Off;
                    self.client.break_off();
                    out.push(Message::Desync {
                        direction: Direction::ToServer,
                        reason: DecodeError::Unexpected(
                            "error during a COPY that outran the capture",
                        ),
                    });
                }
                out.push(error_response(r));
            }
            b'C' => {
                if self.copy_in == CopyState::Skipped {
                    // Sent once the server read CopyDone: the client's next byte starts a
                    // message.
                    self.client.restart();
                }
                self.copy_in = CopyState::Off;
                if let Some(tag) = r.cstr(frame.truncated) {
                    let tag = text(tag);
                    let rows = command_rows(&tag);
                    out.push(Message::Complete { tag, rows });
                }
            }
            b'Z' => {
                self.copy_out = CopyState::Off;
                self.copy_both = false;
                out.push(Message::Ready);
            }
            b'G' | b'H' | b'W' => {
                let direction = match kind {
                    b'G' => CopyDirection::In,
                    b'H' => CopyDirection::Out,
                    _ => CopyDirection::Both,
                };
                if direction != CopyDirection::Out {
                    self.copy_in = CopyState::Framed;
                }
                if direction != CopyDirection::In {
                    self.copy_out = CopyState::Framed;
                }
                self.copy_both = direction == CopyDirection::Both;
                out.push(Message::Copy { direction });
            }
            // ParameterStatus: only the setting that changes lexing.
            b'S' if r.cstr(false) == Some(b"standard_conforming_strings") => {
                if let Some(value) = r.cstr(true) {
                    out.push(Message::Setting {
                        name: "standard_conforming_strings".into(),
                        value: text(value),
                    });
                }
            }
            _ => {}
        }
    }
}

impl Decoder {
    /// Keeps the last captured bytes of the server's skipped COPY TO output, for its end.
    fn keep_copy_tail(&mut self, chunk: Chunk<'_>) {
        if chunk.len > chunk.data.len() {
            // What was kept no longer ends the stream; the call's own last bytes do, when
            // they were captured.
            self.copy_tail.clear();
            self.copy_tail.extend_from_slice(chunk.tail);
        } else {
            self.copy_tail.extend_from_slice(chunk.data);
        }
        let excess = self.copy_tail.len().saturating_sub(COPY_END_TAIL);
        self.copy_tail.drain(..excess);
    }

    /// The server finished a COPY TO whose data was skipped: its outcome from the kept tail,
    /// and the server's framing from its next byte.
    fn end_skipped_copy_out(&mut self, out: &mut Vec<Message>) {
        match copy_out_end(&self.copy_tail) {
            Some((tag, rows)) => {
                out.push(Message::Complete {
                    tag,
                    rows: Some(rows),
                });
                out.push(Message::Ready);
            }
            None => out.push(Message::CopyUnseen),
        }
        self.copy_out = CopyState::Off;
        self.copy_tail = Vec::new();
        self.server.restart();
    }
}

/// The outcome of a COPY TO from the last bytes of the server's output, read backwards: they
/// end with CopyDone, CommandComplete `COPY n` and ReadyForQuery. Exact: the last six bytes
/// are the real ReadyForQuery, and only the real CommandComplete ends at it with a tag of
/// digits (any earlier `C` would have the real header's bytes in its tag).
fn copy_out_end(tail: &[u8]) -> Option<(String, u64)> {
    let z = tail.len().checked_sub(6)?;
    if tail[z..z + 5] != [b'Z', 0, 0, 0, 5] || !matches!(tail[z + 5], b'I' | b'T' | b'E') {
        return None;
    }
    // "COPY 0\0" to "COPY " and 20 digits and NUL.
    for tag_len in 7..=26usize {
        let Some(p) = z.checked_sub(5 + tag_len) else {
            break;
        };
        let len = u32::try_from(4 + tag_len).ok()?.to_be_bytes();
        if tail[p] != b'C' || tail[p + 1..p + 5] != len || p < 5 {
            continue;
        }
        let tag = &tail[p + 5..z - 1];
        let digits = tag.strip_prefix(b"COPY ").unwrap_or_default();
        if tail[z - 1] != 0
            || digits.is_empty()
            || !digits.iter().all(u8::is_ascii_digit)
            || tail[p - 5..p] != [b'c', 0, 0, 0, 4]
        {
            continue;
        }
        let tag = text(tag);
        let rows = command_rows(&tag)?;
        return Some((tag, rows));
    }
    None
}

/// The method an AuthenticationRequest asks for; `None` for the continuations (GSS
/// continue 8, SASL continue 11 and final 12) and for what this decoder does not name.
fn auth_method(code: i32) -> Option<&'static str> {
    match code {
        2 => Some("kerberos5"),
        3 => Some("password"),
        5 => Some("md5"),
        7 => Some("gss"),
        9 => Some("sspi"),
        _ => None,
    }
}

fn client_header(b: &[u8], started: bool) -> Header {
    if started {
        typed_header(b)
    } else {
        let Some(len) = b.get(..4) else {
            return Header::NeedMore;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        // The shortest is a request code alone; startup packets are capped at 10000 bytes.
        match usize::try_from(len) {
            Ok(n) if (8..=10_000).contains(&n) => Header::Len(n),
            _ => Header::Invalid(DecodeError::BadLength(len as u64)),
        }
    }
}

fn server_header(b: &[u8], answer: bool) -> Header {
    if answer && matches!(b.first(), Some(b'S' | b'N' | b'G')) {
        return Header::Len(1);
    }
    typed_header(b)
}

fn typed_header(b: &[u8]) -> Header {
    let Some(h) = b.get(..5) else {
        return Header::NeedMore;
    };
    let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    match usize::try_from(len) {
        Ok(n) if (4..=MAX_LEN).contains(&n) => Header::Len(n + 1),
        _ => Header::Invalid(DecodeError::BadLength(len as u64)),
    }
}

/// Parameters of a StartupMessage, after its length and protocol version.
fn startup(mut r: Reader<'_>) -> Message {
    let (mut user, mut database, mut application) = (None, None, None);
    while let Some(key) = r.cstr(false) {
        if key.is_empty() {
            break;
        }
        let Some(value) = r.cstr(true) else { break };
        match key {
            b"user" => user = Some(text(value)),
            b"database" => database = Some(text(value)),
            b"application_name" => application = Some(text(value)),
            _ => {}
        }
    }
    // The database defaults to the user name.
    if database.is_none() {
        database.clone_from(&user);
    }
    Message::Startup {
        user,
        database,
        application,
    }
}

/// The SQLSTATE and severity of an ErrorResponse; the message, detail and hint fields are
/// not read (they can quote row data: `Key (ssn)=(123-45-6789) already exists`).
fn error_response(mut r: Reader<'_>) -> Message {
    let (mut sqlstate, mut severity) = (None, None);
    while let Some(field) = r.u8() {
        if field == 0 {
            break;
        }
        let Some(value) = r.cstr(true) else { break };
        match field {
            b'C' => sqlstate = Some(text(value)),
            b'V' => severity = Some(text(value)),
            b'S' if severity.is_none() => severity = Some(text(value)),
            _ => {}
        }
    }
    Message::Error {
        sqlstate,
        code: None,
        severity,
    }
}

/// Rows from a command tag: the last word of `SELECT 5`, `INSERT 0 1`, `UPDATE 3`, `COPY 7`…
fn command_rows(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let first = words.next()?;
    let last = words.next_back()?;
    if matches!(
        first,
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY"
    ) {
        last.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::db::testutil::{mutate, replay, split, XorShift};

    /// Builders for wire messages, byte for byte as the protocol documentation gives them.
    pub fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut v = (body.len() as i32 + 4).to_be_bytes().to_vec();
        v.extend_from_slice(&body);
        v
    }

    pub fn query(sql: &str) -> Vec<u8> {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        typed(b'Q', &b)
    }

    fn cstrs(parts: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        for p in parts {
            b.extend_from_slice(p.as_bytes());
            b.push(0);
        }
        b
    }

    fn ssl_request() -> Vec<u8> {
        let mut v = 8i32.to_be_bytes().to_vec();
        v.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        v
    }

    /// What psql 15 sends over a unix socket, then a simple query, an extended-protocol
    /// round (as libpq's PQexecParams) and Terminate.
    pub fn client_session() -> Vec<u8> {
        let mut v = startup_message(&[
            ("user", "alice"),
            ("database", "ehr"),
            ("application_name", "psql"),
            ("client_encoding", "UTF8"),
        ]);
        v.extend(typed(b'p', b"s3cret\0"));
        v.extend(query(
            "SELECT name FROM patients WHERE ssn = '123-45-6789';",
        ));
        let mut parse = cstrs(&["s1", "INSERT INTO notes (pid, body) VALUES ($1, $2)"]);
        parse.extend_from_slice(&0i16.to_be_bytes());
        v.extend(typed(b'P', &parse));
        let mut bind = cstrs(&["", "s1"]);
        bind.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 1, b'7', 0, 0, 0, 2, b'h', b'i', 0, 0]);
        v.extend(typed(b'B', &bind));
        let mut exec = cstrs(&[""]);
        exec.extend_from_slice(&0i32.to_be_bytes());
        v.extend(typed(b'E', &exec));
        v.extend(typed(b'S', b""));
        v.extend(typed(b'X', b""));
        v
    }

    /// The server's side of that session.
    pub fn server_session() -> Vec<u8> {
        let mut v = typed(b'R', &0i32.to_be_bytes());
        v.extend(typed(b'S', b"server_version\x0015.8\0"));
        v.extend(typed(b'K', &[0, 0, 1, 2, 3, 4, 5, 6]));
        v.extend(typed(b'Z', b"I"));
        v.extend(typed(
            b'T',
            b"\0\x01name\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        ));
        v.extend(typed(b'D', b"\0\x01\0\0\0\x08Jane Doe"));
        v.extend(typed(b'C', b"SELECT 1\0"));
        v.extend(typed(b'Z', b"I"));
        v.extend(typed(b'1', b""));
        v.extend(typed(b'2', b""));
        v.extend(typed(b'E', b"SERROR\0VERROR\0C23505\0Mduplicate key value violates unique constraint\0DKey (ssn)=(123-45-6789) already exists.\0\0"));
        v.extend(typed(b'Z', b"E"));
        v
    }

    fn expected_client() -> Vec<Message> {
        vec![
            Message::Startup {
                user: Some("alice".into()),
                database: Some("ehr".into()),
                application: Some("psql".into()),
            },
            Message::Query {
                text: "SELECT name FROM patients WHERE ssn = '123-45-6789';".into(),
                truncated: false,
            },
            Message::Prepare {
                name: "s1".into(),
                text: "INSERT INTO notes (pid, body) VALUES ($1, $2)".into(),
                truncated: false,
            },
            Message::Execute {
                name: "s1".into(),
                text: Some("INSERT INTO notes (pid, body) VALUES ($1, $2)".into()),
            },
            Message::Sync,
            Message::Terminate,
        ]
    }

    fn expected_server() -> Vec<Message> {
        vec![
            Message::AuthOk,
            Message::Ready,
            Message::Complete {
                tag: "SELECT 1".into(),
                rows: Some(1),
            },
            Message::Ready,
            Message::Error {
                sqlstate: Some("23505".into()),
                code: None,
                severity: Some("ERROR".into()),
            },
            Message::Ready,
        ]
    }

    fn feed_all(d: &mut Decoder, dir: Direction, chunks: &[Vec<u8>]) -> Vec<Message> {
        chunks
            .iter()
            .flat_map(|c| d.feed(Chunk::whole(dir, c)))
            .collect()
    }

    #[test]
    fn whole_session_in_one_read_each_way() {
        let mut d = Decoder::new();
        assert_eq!(
            feed_all(&mut d, Direction::ToServer, &[client_session()]),
            expected_client()
        );
        assert_eq!(
            feed_all(&mut d, Direction::ToClient, &[server_session()]),
            expected_server()
        );
    }

    #[test]
    fn byte_at_a_time_and_random_splits_decode_the_same() {
        let c = client_session();
        let mut d = Decoder::new();
        let bytes: Vec<Vec<u8>> = c.iter().map(|&b| vec![b]).collect();
        assert_eq!(
            feed_all(&mut d, Direction::ToServer, &bytes),
            expected_client()
        );
        let mut rng = XorShift(7);
        for _ in 0..200 {
            let mut d = Decoder::new();
            assert_eq!(
                feed_all(&mut d, Direction::ToServer, &split(&mut rng, &c)),
                expected_client()
            );
            assert_eq!(
                feed_all(
                    &mut d,
                    Direction::ToClient,
                    &split(&mut rng, &server_session())
                ),
                expected_server()
            );
        }
    }

    /// Random call boundaries in `len` bytes (sorted, distinct, inside).
    fn cuts(rng: &mut XorShift, len: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..rng.below(12)).map(|_| 1 + rng.below(len - 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }

    /// Feeds the kernel's spans of `calls` (see `frame::testutil::kernel_spans`).
    fn feed_spans(
        d: &mut Decoder,
        dir: Direction,
        calls: &[Vec<(Vec<u8>, usize)>],
    ) -> Vec<Message> {
        calls
            .iter()
            .flatten()
            .flat_map(|(data, moved)| {
                d.feed(Chunk {
                    direction: dir,
                    data,
                    len: *moved,
                    tail: &[],
                })
            })
            .collect()
    }

    #[test]
    fn the_kernels_framed_spans_of_any_split_decode_as_the_whole_stream() {
        use crate::db::frame::testutil::kernel_spans;
        let (c, s) = (client_session(), server_session());
        let mut rng = XorShift(11);
        for _ in 0..500 {
            let mut d = Decoder::new();
            let client = kernel_spans(&c, &cuts(&mut rng, c.len()), true);
            let server = kernel_spans(&s, &cuts(&mut rng, s.len()), false);
            assert_eq!(
                feed_spans(&mut d, Direction::ToServer, &client),
                expected_client()
            );
            assert_eq!(
                feed_spans(&mut d, Direction::ToClient, &server),
                expected_server()
            );
            // Neither the row, the password nor the error's detail left the kernel.
            let carried: Vec<u8> = client
                .iter()
                .chain(&server)
                .flatten()
                .flat_map(|(data, _)| data.clone())
                .collect();
            for secret in [&b"Jane Doe"[..], b"s3cret", b"already exists"] {
                assert!(!carried.windows(secret.len()).any(|w| w == secret));
            }
        }
    }

    #[test]
    fn ssl_request_accepted_marks_encrypted_and_stops() {
        let mut d = Decoder::new();
        assert!(d
            .feed(Chunk::whole(Direction::ToServer, &ssl_request()))
            .is_empty());
        assert_eq!(
            d.feed(Chunk::whole(Direction::ToClient, b"S")),
            [Message::Encrypted(Encryption::Tls)]
        );
        assert!(d.is_encrypted());
        assert!(d
            .feed(Chunk::whole(Direction::ToServer, &[0x16, 3, 1, 0, 200]))
            .is_empty());
    }

    #[test]
    fn ssl_request_refused_goes_on_in_clear() {
        let mut d = Decoder::new();
        d.feed(Chunk::whole(Direction::ToServer, &ssl_request()));
        assert!(d.feed(Chunk::whole(Direction::ToClient, b"N")).is_empty());
        let got = d.feed(Chunk::whole(
            Direction::ToServer,
            &startup_message(&[("user", "bob")]),
        ));
        assert_eq!(
            got,
            [Message::Startup {
                user: Some("bob".into()),
                database: Some("bob".into()),
                application: None
            }]
        );
    }

    #[test]
    fn gssenc_and_direct_tls() {
        let mut d = Decoder::new();
        let mut req = 8i32.to_be_bytes().to_vec();
        req.extend_from_slice(&GSSENC_REQUEST.to_be_bytes());
        d.feed(Chunk::whole(Direction::ToServer, &req));
        assert_eq!(
            d.feed(Chunk::whole(Direction::ToClient, b"G")),
            [Message::Encrypted(Encryption::Gss)]
        );
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(Chunk::whole(Direction::ToServer, &[0x16, 3, 1, 0, 200, 1])),
            [Message::Encrypted(Encryption::Tls)]
        );
    }

    #[test]
    fn truncated_capture_emits_the_head_and_keeps_framing() {
        // A 10 KiB query captured to 4 KiB, then a Terminate in the next write.
        let long = format!(
            "SELECT * FROM patients WHERE note = '{}'",
            "x".repeat(10_000)
        );
        let q = query(&long);
        let mut d = Decoder::mid_session();
        let got = d.feed(Chunk {
            direction: Direction::ToServer,
            data: &q[..4096],
            len: q.len(),
            tail: &[],
        });
        match &got[..] {
            [Message::Query {
                text,
                truncated: true,
            }] => assert!(long.starts_with(text.as_str()) && text.len() == 4096 - 5),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            d.feed(Chunk::whole(Direction::ToServer, &typed(b'X', b""))),
            [Message::Terminate]
        );
    }

    #[test]
    fn gap_across_a_boundary_desyncs_once() {
        let mut two = query("SELECT 1");
        two.extend(query("SELECT 2"));
        let mut d = Decoder::mid_session();
        let got = d.feed(Chunk {
            direction: Direction::ToServer,
            data: &two[..3],
            len: two.len(),
            tail: &[],
        });
        assert!(
            matches!(
                &got[..],
                [Message::Desync {
                    direction: Direction::ToServer,
                    ..
                }]
            ),
            "{got:?}"
        );
        assert!(d
            .feed(Chunk::whole(Direction::ToServer, &query("SELECT 3")))
            .is_empty());
    }

    #[test]
    fn oversized_message_is_cut_at_the_buffer_limit() {
        let long = "y".repeat(super::super::MAX_MESSAGE * 2);
        let q = query(&long);
        let mut d = Decoder::mid_session();
        let mut got = Vec::new();
        for c in q.chunks(4096) {
            got.extend(d.feed(Chunk::whole(Direction::ToServer, c)));
        }
        got.extend(d.feed(Chunk::whole(Direction::ToServer, &typed(b'X', b""))));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(
            &got[0],
            Message::Query {
                truncated: true,
                ..
            }
        ));
        assert_eq!(got[1], Message::Terminate);
    }

    #[test]
    fn bad_lengths_desync() {
        let mut d = Decoder::mid_session();
        let got = d.feed(Chunk::whole(Direction::ToServer, &[b'Q', 0, 0, 0, 2]));
        assert!(matches!(
            &got[..],
            [Message::Desync {
                reason: DecodeError::BadLength(2),
                ..
            }]
        ));
        let mut d = Decoder::new();
        let got = d.feed(Chunk::whole(
            Direction::ToServer,
            &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        ));
        assert!(matches!(&got[..], [Message::Desync { .. }]));
    }

    /// What a server asking for `code` (3 cleartext, 5 MD5 with a salt) sends.
    pub fn auth_request(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(extra);
        typed(b'R', &body)
    }

    /// The FATAL ErrorResponse of a refused login, as PostgreSQL 15 sends it.
    pub fn login_refused(sqlstate: &str) -> Vec<u8> {
        typed(
            b'E',
            format!("SFATAL\0VFATAL\0C{sqlstate}\0Mpassword authentication failed for user \"clerk\"\0Fauth.c\0L326\0Rauth_failed\0\0")
                .as_bytes(),
        )
    }

    fn both(d: &mut Decoder, exchange: &[(Direction, Vec<u8>)]) -> Vec<Message> {
        exchange
            .iter()
            .flat_map(|(dir, bytes)| d.feed(Chunk::whole(*dir, bytes)))
            .collect()
    }

    #[test]
    fn scram_login_refused_names_the_mechanism_and_sqlstate_never_the_payload() {
        let mut initial = cstrs(&["SCRAM-SHA-256"]);
        let first = b"n,,n=,r=PHIMARKnonce";
        initial.extend_from_slice(&(first.len() as i32).to_be_bytes());
        initial.extend_from_slice(first);
        let exchange = [
            (
                Direction::ToServer,
                startup_message(&[("user", "clerk"), ("database", "ehr")]),
            ),
            (
                Direction::ToClient,
                auth_request(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            ),
            (Direction::ToServer, typed(b'p', &initial)),
            (
                Direction::ToClient,
                auth_request(11, b"r=PHIMARKnonce,s=c2FsdA==,i=4096"),
            ),
            (
                Direction::ToServer,
                typed(b'p', b"c=biws,r=PHIMARKnonce,p=PHIMARKproof"),
            ),
            (Direction::ToClient, login_refused("28P01")),
        ];
        let got = both(&mut Decoder::new(), &exchange);
        assert_eq!(
            got[1..],
            [
                // Offered first, then the one the client chose.
                Message::AuthMethod {
                    method: "scram-sha-256-plus".into()
                },
                Message::AuthMethod {
                    method: "scram-sha-256".into()
                },
                Message::Error {
                    sqlstate: Some("28P01".into()),
                    code: None,
                    severity: Some("FATAL".into())
                },
            ]
        );
        assert!(!format!("{got:?}").contains("PHIMARK"));
    }

    #[test]
    fn cleartext_and_md5_requests_and_the_password_unread() {
        for (code, extra, method) in [(3, &b""[..], "password"), (5, &b"salt"[..], "md5")] {
            let exchange = [
                (Direction::ToServer, startup_message(&[("user", "clerk")])),
                (Direction::ToClient, auth_request(code, extra)),
                (Direction::ToServer, typed(b'p', b"PHIMARKsecret\0")),
                (Direction::ToClient, auth_request(0, b"")),
            ];
            let got = both(&mut Decoder::new(), &exchange);
            assert_eq!(
                got[1..],
                [
                    Message::AuthMethod {
                        method: method.into()
                    },
                    Message::AuthOk
                ]
            );
            assert!(!format!("{got:?}").contains("PHIMARK"));
        }
    }

    #[test]
    fn a_sasl_mechanism_the_server_did_not_offer_is_not_echoed() {
        let mut initial = cstrs(&["PHIMARK-not-a-mechanism"]);
        initial.extend_from_slice(&0i32.to_be_bytes());
        let exchange = [
            (Direction::ToServer, startup_message(&[("user", "clerk")])),
            (Direction::ToClient, auth_request(10, b"SCRAM-SHA-256\0\0")),
            (Direction::ToServer, typed(b'p', &initial)),
        ];
        let got = both(&mut Decoder::new(), &exchange);
        assert_eq!(
            got[1..],
            [Message::AuthMethod {
                method: "scram-sha-256".into()
            }]
        );
    }

    #[test]
    fn command_tags() {
        assert_eq!(command_rows("INSERT 0 3"), Some(3));
        assert_eq!(command_rows("SELECT 0"), Some(0));
        assert_eq!(command_rows("CREATE TABLE"), None);
        assert_eq!(command_rows("BEGIN"), None);
    }

    /// CopyData messages of `rows` tab-separated rows with a marker, as psql sends them (one
    /// message per row) and the server too.
    fn copy_data(rows: usize) -> Vec<u8> {
        (0..rows)
            .flat_map(|i| typed(b'd', format!("{i}\tPHIMARK_{i}\tQ\0X\n").as_bytes()))
            .collect()
    }

    /// CopyInResponse / CopyOutResponse for two text columns.
    fn copy_response(kind: u8) -> Vec<u8> {
        typed(kind, &[0, 0, 2, 0, 0, 0, 0])
    }

    /// psql 15: `COPY t FROM STDIN` (3 rows), `COPY t TO STDOUT`, a COPY the client abandons
    /// (CopyFail), then a further statement.
    fn copy_session() -> Vec<(Direction, Vec<u8>)> {
        let mut copy_in = copy_data(3);
        copy_in.extend(typed(b'c', b""));
        let mut copy_out = copy_response(b'H');
        copy_out.extend(copy_data(3));
        copy_out.extend(typed(b'c', b""));
        copy_out.extend(typed(b'C', b"COPY 3\0"));
        copy_out.extend(typed(b'Z', b"I"));
        let mut abandoned = copy_data(1);
        abandoned.extend(typed(b'f', b"PHIMARK_reason\0"));
        let mut refused = typed(
            b'E',
            b"SERROR\0VERROR\0C57014\0MCOPY from stdin failed: PHIMARK_reason\0\0",
        );
        refused.extend(typed(b'Z', b"I"));
        let mut done = typed(b'C', b"COPY 3\0");
        done.extend(typed(b'Z', b"I"));
        let mut select = typed(b'C', b"SELECT 1\0");
        select.extend(typed(b'Z', b"I"));
        vec![
            (Direction::ToServer, query("COPY t FROM STDIN")),
            (Direction::ToClient, copy_response(b'G')),
            (Direction::ToServer, copy_in),
            (Direction::ToClient, done),
            (Direction::ToServer, query("COPY t TO STDOUT")),
            (Direction::ToClient, copy_out),
            (Direction::ToServer, query("COPY t FROM STDIN")),
            (Direction::ToClient, copy_response(b'G')),
            (Direction::ToServer, abandoned),
            (Direction::ToClient, refused),
            (Direction::ToServer, query("SELECT 1")),
            (Direction::ToClient, select),
        ]
    }

    fn copy_expected() -> Vec<Message> {
        let q = |t: &str| Message::Query {
            text: t.into(),
            truncated: false,
        };
        let copied = Message::Complete {
            tag: "COPY 3".into(),
            rows: Some(3),
        };
        let copy = |direction| Message::Copy { direction };
        vec![
            q("COPY t FROM STDIN"),
            copy(CopyDirection::In),
            copied.clone(),
            Message::Ready,
            q("COPY t TO STDOUT"),
            copy(CopyDirection::Out),
            copied,
            Message::Ready,
            q("COPY t FROM STDIN"),
            copy(CopyDirection::In),
            Message::Error {
                sqlstate: Some("57014".into()),
                code: None,
                severity: Some("ERROR".into()),
            },
            Message::Ready,
            q("SELECT 1"),
            Message::Complete {
                tag: "SELECT 1".into(),
                rows: Some(1),
            },
            Message::Ready,
        ]
    }

    #[test]
    fn copy_both_ways_and_copy_fail_decode_as_statements_never_their_data() {
        let mut d = Decoder::mid_session();
        let got = replay(|c| d.feed(c), &copy_session(), None);
        assert_eq!(got, copy_expected());
        assert!(!format!("{got:?}").contains("PHIMARK"), "{got:?}");
    }

    #[test]
    fn a_copy_session_split_anywhere_decodes_the_same() {
        let session = copy_session();
        let mut rng = XorShift(0xc0b7_5e55);
        for _ in 0..300 {
            let mut d = Decoder::mid_session();
            let got = replay(|c| d.feed(c), &session, Some(&mut rng));
            assert_eq!(got, copy_expected());
        }
    }

    /// One call that moved `bytes` of which only the first `captured` and, when given, the
    /// last `tail` bytes were captured.
    fn cut(direction: Direction, bytes: &[u8], captured: usize, tail: usize) -> Chunk<'_> {
        Chunk {
            direction,
            data: &bytes[..captured],
            len: bytes.len(),
            tail: &bytes[bytes.len() - tail..],
        }
    }

    #[test]
    fn copy_from_that_outruns_the_capture_is_skipped_to_the_servers_count() {
        let mut d = Decoder::mid_session();
        let mut got = replay(|c| d.feed(c), &copy_session()[..2], None);
        let mut data = copy_data(100);
        data.extend(typed(b'c', b""));
        got.extend(d.feed(cut(Direction::ToServer, &data, 40, 0)));
        let mut done = typed(b'C', b"COPY 100\0");
        done.extend(typed(b'Z', b"I"));
        got.extend(d.feed(Chunk::whole(Direction::ToClient, &done)));
        got.extend(d.feed(Chunk::whole(Direction::ToServer, &query("SELECT 1"))));
        assert_eq!(
            got[2..],
            [
                Message::Complete {
                    tag: "COPY 100".into(),
                    rows: Some(100)
                },
                Message::Ready,
                Message::Query {
                    text: "SELECT 1".into(),
                    truncated: false
                }
            ]
        );
    }

    #[test]
    fn an_error_during_a_skipped_copy_from_desyncs_the_client_side() {
        let mut d = Decoder::mid_session();
        let mut got = replay(|c| d.feed(c), &copy_session()[..2], None);
        let data = copy_data(100);
        got.extend(d.feed(cut(Direction::ToServer, &data, 40, 0)));
        got.extend(d.feed(Chunk::whole(
            Direction::ToClient,
            &typed(b'E', b"SERROR\0C22P02\0\0"),
        )));
        got.extend(d.feed(Chunk::whole(Direction::ToServer, &data[40..])));
        assert!(
            matches!(
                &got[2..],
                [
                    Message::Desync {
                        direction: Direction::ToServer,
                        ..
                    },
                    Message::Error { .. }
                ]
            ),
            "{got:?}"
        );
    }

    #[test]
    fn copy_to_that_outruns_the_capture_takes_its_count_from_the_calls_tail() {
        let mut out = copy_response(b'H');
        out.extend(copy_data(500));
        out.extend(typed(b'c', b""));
        out.extend(typed(b'C', b"COPY 500\0"));
        out.extend(typed(b'Z', b"I"));
        let answer = {
            let mut a = typed(b'C', b"SELECT 1\0");
            a.extend(typed(b'Z', b"I"));
            a
        };
        let copy_query = || Message::Query {
            text: "COPY t TO STDOUT".into(),
            truncated: false,
        };
        let next = [
            Message::Query {
                text: "SELECT 1".into(),
                truncated: false,
            },
            Message::Complete {
                tag: "SELECT 1".into(),
                rows: Some(1),
            },
            Message::Ready,
        ];
        // The end in the call's captured tail; or in a later call captured whole; or not
        // captured at all.
        for (tail, split_at, outcome) in [
            (64, out.len(), Some(500)),
            (0, out.len() - 30, Some(500)),
            (0, out.len() - 10, None),
            (0, out.len(), None),
            (8, out.len(), None),
        ] {
            let mut d = Decoder::mid_session();
            let mut got = d.feed(Chunk::whole(
                Direction::ToServer,
                &query("COPY t TO STDOUT"),
            ));
            got.extend(d.feed(cut(Direction::ToClient, &out[..split_at], 100, tail)));
            got.extend(d.feed(Chunk::whole(Direction::ToClient, &out[split_at..])));
            got.extend(d.feed(Chunk::whole(Direction::ToServer, &query("SELECT 1"))));
            got.extend(d.feed(Chunk::whole(Direction::ToClient, &answer)));
            let mut want = vec![
                copy_query(),
                Message::Copy {
                    direction: CopyDirection::Out,
                },
            ];
            match outcome {
                Some(n) => want.extend([
                    Message::Complete {
                        tag: format!("COPY {n}"),
                        rows: Some(n),
                    },
                    Message::Ready,
                ]),
                None => want.push(Message::CopyUnseen),
            }
            want.extend(next.clone());
            assert_eq!(got, want, "tail {tail}, split at {split_at}");
            assert!(!format!("{got:?}").contains("PHIMARK"));
        }
    }

    #[test]
    fn a_copy_to_end_is_read_back_only_when_exact() {
        let mut end = typed(b'd', b"C\0\0\0\x0bCOPY 9\0");
        end.extend(typed(b'c', b""));
        end.extend(typed(b'C', b"COPY 12\0"));
        end.extend(typed(b'Z', b"T"));
        assert_eq!(copy_out_end(&end), Some(("COPY 12".into(), 12)));
        // Data shaped like an end, but not followed by ReadyForQuery; a tag that is not a
        // count; no CopyDone before it.
        assert_eq!(copy_out_end(&typed(b'd', &end[..end.len() - 6])), None);
        let mut wrong = typed(b'c', b"");
        wrong.extend(typed(b'C', b"COPY x\0"));
        wrong.extend(typed(b'Z', b"I"));
        assert_eq!(copy_out_end(&wrong), None);
        let mut no_done = typed(b'd', b"12345");
        no_done.extend(typed(b'C', b"COPY 1\0"));
        no_done.extend(typed(b'Z', b"I"));
        assert_eq!(copy_out_end(&no_done), None);
        assert_eq!(copy_out_end(b"Z\0\0\0\x05I"), None);
    }

    /// The fuzz target in `cargo test`: mutated sessions and random bytes, split at random,
    /// with random capture truncation, never panic.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = XorShift(0x0bad_c0de_1234_5678);
        let mut login = auth_request(10, b"SCRAM-SHA-256\0\0");
        login.extend(auth_request(3, b""));
        login.extend(login_refused("28P01"));
        let mut sasl = startup_message(&[("user", "clerk")]);
        sasl.extend(typed(b'p', b"SCRAM-SHA-256\0\0\0\0\x04n,,x"));
        let copy: Vec<u8> = copy_session().into_iter().flat_map(|(_, b)| b).collect();
        let bases = [
            client_session(),
            server_session(),
            ssl_request(),
            login,
            sasl,
            copy,
        ];
        for round in 0..4000 {
            let base = &bases[round % bases.len()];
            let input = if round % 5 == 0 {
                {
                    let n = rng.below(300);
                    rng.bytes(n)
                }
            } else {
                mutate(&mut rng, base)
            };
            let mut d = if round % 2 == 0 {
                Decoder::new()
            } else {
                Decoder::mid_session()
            };
            for c in split(&mut rng, &input) {
                let dir = if rng.below(2) == 0 {
                    Direction::ToServer
                } else {
                    Direction::ToClient
                };
                let cut = rng.below(c.len() + 1);
                let extra = if rng.below(4) == 0 {
                    rng.below(10_000)
                } else {
                    0
                };
                let _ = d.feed(Chunk {
                    direction: dir,
                    data: &c[..cut],
                    len: c.len() + extra,
                    tail: &[],
                });
            }
        }
    }
}
