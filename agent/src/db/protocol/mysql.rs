//! MySQL/MariaDB client/server protocol (protocol 10, `CLIENT_PROTOCOL_41`).
//!
//! Every packet is a 3-byte little-endian length, a sequence number and the payload. The
//! server greets (Handshake v10); the client answers with a HandshakeResponse41 (user,
//! database, `program_name` attribute) or a 32-byte SSLRequest (`CLIENT_SSL`: the session is
//! TLS from there on). In the command phase the client sends `COM_QUERY`, `COM_STMT_PREPARE`,
//! `COM_STMT_EXECUTE`, `COM_INIT_DB`, `COM_QUIT`; the server answers each with OK (affected
//! rows), ERR (code and SQLSTATE; the message is not read) or a result set, whose rows are
//! counted, never read. Compressed sessions (`CLIENT_COMPRESS`) are not decoded.
//!
//! **LOAD DATA LOCAL.** A `LOAD DATA LOCAL INFILE` query is answered by the server's LOCAL
//! INFILE request (0xfb and the file name). The client then sends the file as packets whose
//! sequence ids continue the query's, ending with an empty packet; the server's OK (affected
//! rows) or ERR closes the statement. Those packets are data: never parsed as commands, never
//! read. The file name is not reported: it is a literal of the statement (redacted in its
//! text). When the file's packets outrun the capture (a call larger than the kernel copies,
//! across packet boundaries), they are skipped to the server's OK, which comes only after the
//! empty packet, so the client's next byte starts a command. An ERR after such a skip leaves
//! the client's framing unknown (it may still be sending the file): that direction is
//! desynchronised.

use super::{
    method_name, text, Chunk, CopyDirection, DecodeError, Direction, Encryption, Frame, Header,
    Message, Reader, Statements, Stream,
};

const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const CLIENT_COMPRESS: u32 = 0x0000_0020;
const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
const CLIENT_CONNECT_ATTRS: u32 = 0x0010_0000;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
const CLIENT_QUERY_ATTRIBUTES: u32 = 0x0800_0000;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_CLOSE: u8 = 0x19;

/// `SERVER_MORE_RESULTS_EXISTS` in an OK/EOF status.
const MORE_RESULTS: u16 = 0x0008;
/// Server status flag: `NO_BACKSLASH_ESCAPES` is in the session's `sql_mode`.
const NO_BACKSLASH_ESCAPES: u16 = 0x0200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the client's handshake response.
    Handshake,
    /// After it (or after a COM_CHANGE_USER), until the server's OK.
    Auth,
    /// Commands.
    Command,
}

/// How far the client's file packets of a LOAD DATA LOCAL are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Infile {
    /// No file is being sent.
    Off,
    /// File packets until the empty one, followed packet by packet.
    Framed,
    /// More was sent than captured: skipped to the server's answer.
    Skipped,
}

/// What the server's next packets answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    /// Nothing we read (or a command whose answer we skip).
    None,
    /// A query or execute: OK, ERR or a result set.
    Result,
    /// A prepare: OK with the statement id, or ERR. The text waits for the id.
    Prepare(String),
    /// Column definitions still to come before the rows.
    Columns(u64),
    /// Rows, counted.
    Rows(u64),
}

/// One MySQL session, both directions.
#[derive(Debug)]
pub struct Decoder {
    client: Stream,
    server: Stream,
    phase: Phase,
    capabilities: u32,
    /// The client's handshake response was decoded: `capabilities` are its own, not assumed
    /// (a session joined mid-way never has it; its `CLIENT_DEPRECATE_EOF` is inferred from
    /// its first result set).
    capabilities_seen: bool,
    pending: Pending,
    encrypted: bool,
    statements: Statements,
    /// The last `NO_BACKSLASH_ESCAPES` status the server reported.
    no_backslash_escapes: Option<bool>,
    /// The client is sending a file the server asked for (LOAD DATA LOCAL).
    infile: Infile,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder for a session seen from its start.
    pub fn new() -> Self {
        Self {
            client: Stream::default(),
            server: Stream::default(),
            phase: Phase::Handshake,
            // Until the client's handshake response says (never, for a session joined
            // mid-way): what every client since MySQL 5.5 sends.
            capabilities: CLIENT_PROTOCOL_41
                | CLIENT_DEPRECATE_EOF
                | CLIENT_SECURE_CONNECTION
                | CLIENT_PLUGIN_AUTH,
            capabilities_seen: false,
            pending: Pending::None,
            encrypted: false,
            statements: Statements::default(),
            no_backslash_escapes: None,
            infile: Infile::Off,
        }
    }

    /// A decoder for a session already in its command phase (the agent started mid-session).
    pub fn mid_session() -> Self {
        Self {
            phase: Phase::Command,
            ..Self::new()
        }
    }

    /// Whether the session switched to TLS: nothing more is decoded.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// Records of `direction` were lost in the kernel and the next chunk starts a packet:
    /// its framing starts again there, and what the lost packets would have told is
    /// forgotten (a pending answer, a file being sent).
    pub fn resync(&mut self, direction: Direction) {
        match direction {
            Direction::ToServer => {
                self.client.restart();
                self.infile = Infile::Off;
            }
            Direction::ToClient => {
                self.server.restart();
                self.pending = Pending::None;
            }
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
        let direction = chunk.direction;
        let stream = match direction {
            Direction::ToServer => &mut self.client,
            Direction::ToClient => &mut self.server,
        };
        stream.absorb(chunk.data, chunk.len);
        loop {
            let stream = match direction {
                Direction::ToServer => &mut self.client,
                Direction::ToClient => &mut self.server,
            };
            match stream.next_frame(header) {
                Ok(Some(frame)) => {
                    let result = match direction {
                        Direction::ToServer => self.client_packet(&frame, &mut out),
                        Direction::ToClient => self.server_packet(&frame, &mut out),
                    };
                    if let Err(reason) = result {
                        match direction {
                            Direction::ToServer => self.client.break_off(),
                            Direction::ToClient => self.server.break_off(),
                        }
                        out.push(Message::Desync { direction, reason });
                        break;
                    }
                    if self.encrypted {
                        break;
                    }
                }
                Ok(None) => break,
                Err(DecodeError::Gap(_))
                    if direction == Direction::ToServer && self.infile == Infile::Framed =>
                {
                    // The file outran the capture: skipped to the server's answer.
                    self.infile = Infile::Skipped;
                    break;
                }
                Err(reason) => {
                    out.push(Message::Desync { direction, reason });
                    break;
                }
            }
        }
        out
    }

    fn client_packet(&mut self, frame: &Frame, out: &mut Vec<Message>) -> Result<(), DecodeError> {
        let payload = frame.bytes.get(4..).unwrap_or_default();
        let lenient = frame.truncated;
        match self.phase {
            Phase::Handshake => {
                let mut r = Reader::new(payload);
                let caps = r
                    .u32_le()
                    .ok_or(DecodeError::Unexpected("short handshake response"))?;
                if caps & CLIENT_PROTOCOL_41 == 0 {
                    return Err(DecodeError::Unsupported("protocol 320"));
                }
                if caps & CLIENT_SSL != 0 && payload.len() == 32 {
                    self.encrypted = true;
                    out.push(Message::Encrypted(Encryption::Tls));
                    return Ok(());
                }
                if caps & CLIENT_COMPRESS != 0 {
                    return Err(DecodeError::Unsupported("compression"));
                }
                self.capabilities = caps;
                self.capabilities_seen = true;
                self.phase = Phase::Auth;
                let (startup, plugin) = handshake_response(caps, r, lenient);
                out.push(startup);
                if let Some(method) = plugin {
                    out.push(Message::AuthMethod { method });
                }
            }
            // A command starts a new sequence (0); auth switch responses continue one. A
            // command means the server accepted the login even if its OK was not seen.
            Phase::Auth if frame.bytes.get(3) == Some(&0) => {
                self.phase = Phase::Command;
                return self.client_packet(frame, out);
            }
            // Auth switch responses and the like: nothing to read.
            Phase::Auth => {}
            // A file the server asked for: data up to the empty packet, never a command.
            Phase::Command if self.infile == Infile::Framed => {
                if payload.is_empty() && !frame.truncated {
                    self.infile = Infile::Off;
                }
            }
            Phase::Command => {
                let mut r = Reader::new(payload);
                let Some(command) = r.u8() else { return Ok(()) };
                self.pending = Pending::None;
                match command {
                    COM_QUERY => {
                        if self.capabilities & CLIENT_QUERY_ATTRIBUTES != 0 {
                            skip_query_attributes(&mut r);
                        }
                        out.push(Message::Query {
                            text: text(r.remaining()),
                            truncated: frame.truncated,
                        });
                        self.pending = Pending::Result;
                    }
                    COM_STMT_PREPARE => {
                        let t = text(r.remaining());
                        out.push(Message::Prepare {
                            name: String::new(),
                            text: t.clone(),
                            truncated: frame.truncated,
                        });
                        self.pending = Pending::Prepare(t);
                    }
                    COM_STMT_EXECUTE => {
                        if let Some(id) = r.u32_le() {
                            let name = id.to_string();
                            let text = self.statements.get(&name).cloned();
                            out.push(Message::Execute { name, text });
                            self.pending = Pending::Result;
                        }
                    }
                    COM_STMT_CLOSE => {
                        if let Some(id) = r.u32_le() {
                            self.statements.remove(&id.to_string());
                        }
                    }
                    COM_INIT_DB => {
                        out.push(Message::Startup {
                            user: None,
                            database: Some(text(r.remaining())),
                            application: None,
                        });
                        self.pending = Pending::Result;
                    }
                    COM_QUIT => out.push(Message::Terminate),
                    COM_CHANGE_USER => {
                        let (change, plugin) = change_user(self.capabilities, r, lenient);
                        out.push(change);
                        if let Some(method) = plugin {
                            out.push(Message::AuthMethod { method });
                        }
                        // The server answers as to a login: OK, ERR or an auth switch.
                        self.phase = Phase::Auth;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn server_packet(&mut self, frame: &Frame, out: &mut Vec<Message>) -> Result<(), DecodeError> {
        let payload = frame.bytes.get(4..).unwrap_or_default();
        let Some(&first) = payload.first() else {
            if frame.truncated && self.phase == Phase::Command {
                // Only the header left the kernel (`FLAG_DB_FRAMED`): a column definition or
                // a row, which the kernel never mistakes for an answer's control packet.
                self.opaque_packet();
            }
            return Ok(());
        };
        match self.phase {
            // The greeting: nothing we need (the client's answer says what was agreed).
            Phase::Handshake => {}
            Phase::Auth => match first {
                0x00 => {
                    self.phase = Phase::Command;
                    out.push(Message::AuthOk);
                }
                0xff => {
                    out.push(err_packet(payload));
                }
                // AuthSwitchRequest: the plugin the server wants instead (the data after its
                // name is a scramble, never read); a bare 0xfe is the pre-4.1 switch.
                0xfe => {
                    let method = match payload.get(1..) {
                        Some([]) | None => "mysql_old_password".into(),
                        Some(rest) => Reader::new(rest)
                            .cstr(true)
                            .map_or_else(|| "unknown".into(), method_name),
                    };
                    out.push(Message::AuthMethod { method });
                }
                // More data (0x01): the exchange goes on.
                _ => {}
            },
            // MariaDB's progress report (CLIENT_PROGRESS, which its client asks for): an ERR
            // header with code 0xFFFF while a long statement (LOAD DATA, ALTER) runs. Not an
            // outcome: the statement's OK or ERR is still to come.
            Phase::Command if is_progress(payload) => {}
            Phase::Command => {
                if self.infile == Infile::Skipped {
                    self.infile = Infile::Off;
                    if first == 0x00 {
                        // Sent once the server read the empty packet: the client's next byte
                        // starts a command.
                        self.client.restart();
                    } else {
                        self.client.break_off();
                        out.push(Message::Desync {
                            direction: Direction::ToServer,
                            reason: DecodeError::Unexpected(
                                "error during a LOAD DATA LOCAL that outran the capture",
                            ),
                        });
                    }
                }
                self.command_answer(first, payload, out);
            }
        }
        Ok(())
    }

    /// Reports a change of the server's `NO_BACKSLASH_ESCAPES` status flag.
    fn status(&mut self, status: u16, out: &mut Vec<Message>) {
        let on = status & NO_BACKSLASH_ESCAPES != 0;
        if self.no_backslash_escapes != Some(on) {
            self.no_backslash_escapes = Some(on);
            out.push(Message::Setting {
                name: "no_backslash_escapes".into(),
                value: if on { "on" } else { "off" }.into(),
            });
        }
    }

    /// A server packet of which only the header was captured: counted as a column
    /// definition or a row where a result set is being read; nothing else.
    fn opaque_packet(&mut self) {
        let deprecate_eof = self.capabilities & CLIENT_DEPRECATE_EOF != 0;
        self.pending = match std::mem::replace(&mut self.pending, Pending::None) {
            // No EOF after the definitions (the kernel would have sent it): this is a row.
            Pending::Columns(0) => Pending::Rows(1),
            Pending::Columns(1) if deprecate_eof => Pending::Rows(0),
            Pending::Columns(n) => Pending::Columns(n - 1),
            Pending::Rows(count) => Pending::Rows(count + 1),
            // A prepare's definitions, an answer the kernel could not classify.
            Pending::None | Pending::Result | Pending::Prepare(_) => Pending::None,
        };
    }

    fn command_answer(&mut self, first: u8, payload: &[u8], out: &mut Vec<Message>) {
        let deprecate_eof = self.capabilities & CLIENT_DEPRECATE_EOF != 0;
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::None => {}
            Pending::Prepare(t) => match first {
                0x00 => {
                    let mut r = Reader::new(&payload[1..]);
                    if let Some(id) = r.u32_le() {
                        self.statements.insert(id.to_string(), t);
                    }
                }
                0xff => out.push(err_packet(payload)),
                _ => {}
            },
            Pending::Result => match first {
                0x00 => {
                    let mut r = Reader::new(&payload[1..]);
                    let rows = r.lenenc();
                    let _last_insert_id = r.lenenc();
                    let status = r.u16_le().unwrap_or(0);
                    self.status(status, out);
                    out.push(Message::Complete {
                        tag: "OK".into(),
                        rows,
                    });
                    if status & MORE_RESULTS != 0 {
                        self.pending = Pending::Result;
                    }
                }
                0xff => out.push(err_packet(payload)),
                // LOCAL INFILE request (its file name is not read): the client sends the
                // file, then the server's OK or ERR answers the statement.
                0xfb => {
                    self.infile = Infile::Framed;
                    self.pending = Pending::Result;
                    out.push(Message::Copy {
                        direction: CopyDirection::In,
                    });
                }
                _ => {
                    let columns = Reader::new(payload).lenenc().unwrap_or(0);
                    self.pending = Pending::Columns(columns);
                }
            },
            Pending::Columns(0) => {
                // The EOF after the definitions (only without CLIENT_DEPRECATE_EOF).
                self.pending = Pending::Rows(0);
                if !is_eof(first, payload.len(), deprecate_eof) {
                    self.command_answer(first, payload, out);
                }
            }
            Pending::Columns(n) => {
                // A column definition.
                self.pending = if n == 1 && deprecate_eof {
                    Pending::Rows(0)
                } else {
                    Pending::Columns(n - 1)
                };
            }
            Pending::Rows(0) if !self.capabilities_seen && first == 0xfe && payload.len() < 7 => {
                // An EOF packet right after the definitions: only a client without
                // CLIENT_DEPRECATE_EOF gets one (an OK that ends a result set is 7 bytes or
                // more). The rows follow it.
                self.capabilities &= !CLIENT_DEPRECATE_EOF;
                self.capabilities_seen = true;
                self.pending = Pending::Rows(0);
            }
            Pending::Rows(count) => {
                if first == 0xff {
                    out.push(err_packet(payload));
                } else if is_eof(first, payload.len(), deprecate_eof) {
                    out.push(Message::Complete {
                        tag: "SELECT".into(),
                        rows: Some(count),
                    });
                    let status = eof_status(payload, deprecate_eof);
                    self.status(status, out);
                    if status & MORE_RESULTS != 0 {
                        self.pending = Pending::Result;
                    }
                } else {
                    self.pending = Pending::Rows(count + 1);
                }
            }
        }
    }
}

/// The end of a result set: an EOF packet, or with `CLIENT_DEPRECATE_EOF` an OK packet with
/// the 0xfe header (a row starting 0xfe would be a 16 MiB string).
fn is_eof(first: u8, len: usize, deprecate_eof: bool) -> bool {
    first == 0xfe && (len < 9 || (deprecate_eof && len < 0xff_ffff))
}

/// The status flags of an EOF (or EOF-style OK) packet.
fn eof_status(payload: &[u8], deprecate_eof: bool) -> u16 {
    let mut r = Reader::new(payload.get(1..).unwrap_or_default());
    if deprecate_eof && payload.len() >= 9 {
        let _ = (r.lenenc(), r.lenenc());
        r.u16_le().unwrap_or(0)
    } else {
        let _warnings = r.u16_le();
        r.u16_le().unwrap_or(0)
    }
}

fn header(b: &[u8]) -> Header {
    let Some(h) = b.get(..4) else {
        return Header::NeedMore;
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    Header::Len(len + 4)
}

/// The user, database and `program_name` of a HandshakeResponse41, after its capabilities,
/// and its auth plugin's name.
fn handshake_response(caps: u32, mut r: Reader<'_>, lenient: bool) -> (Message, Option<String>) {
    let mut user = None;
    let mut database = None;
    let mut application = None;
    let mut method = None;
    // max packet size (4), character set (1), filler (23).
    if r.skip(28).is_some() {
        user = r.cstr(lenient).map(text);
        let auth = if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc_bytes().map(|_| ())
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            r.u8().and_then(|n| r.skip(usize::from(n)))
        } else {
            r.cstr(false).map(|_| ())
        };
        if auth.is_some() {
            if caps & CLIENT_CONNECT_WITH_DB != 0 {
                database = r.cstr(lenient).map(text).filter(|d| !d.is_empty());
            }
            let plugin = if caps & CLIENT_PLUGIN_AUTH != 0 {
                r.cstr(lenient).map(|p| {
                    if !p.is_empty() {
                        method = Some(method_name(p));
                    }
                })
            } else {
                Some(())
            };
            if plugin.is_some() && caps & CLIENT_CONNECT_ATTRS != 0 {
                if let Some(attrs) = r.lenenc_bytes() {
                    let mut a = Reader::new(attrs);
                    while let (Some(k), Some(v)) = (a.lenenc_bytes(), a.lenenc_bytes()) {
                        if k == b"program_name" {
                            application = Some(text(v));
                        }
                    }
                }
            }
        }
    }
    (
        Message::Startup {
            user,
            database,
            application,
        },
        method,
    )
}

/// The user, database and auth plugin of a COM_CHANGE_USER, after its command byte; the
/// auth response between the user and the database is skipped unread.
fn change_user(caps: u32, mut r: Reader<'_>, lenient: bool) -> (Message, Option<String>) {
    let user = r.cstr(lenient).map(text).unwrap_or_default();
    let mut database = None;
    let mut method = None;
    let auth = if caps & CLIENT_SECURE_CONNECTION != 0 {
        r.u8().and_then(|n| r.skip(usize::from(n)))
    } else {
        r.cstr(false).map(|_| ())
    };
    if auth.is_some() {
        database = r.cstr(lenient).map(text).filter(|d| !d.is_empty());
        // Character set (2 bytes), then the plugin name.
        if caps & CLIENT_PLUGIN_AUTH != 0 && r.skip(2).is_some() {
            method = r.cstr(lenient).filter(|p| !p.is_empty()).map(method_name);
        }
    }
    (Message::ChangeUser { user, database }, method)
}

/// Skips the parameter count and parameter set count a COM_QUERY carries with
/// `CLIENT_QUERY_ATTRIBUTES`, and the (rarely sent) parameters themselves are not supported:
/// with parameters the text is read from where the counts end.
fn skip_query_attributes(r: &mut Reader<'_>) {
    let _count = r.lenenc();
    let _sets = r.lenenc();
}

/// Code and SQLSTATE of an ERR packet; the human-readable message is not read.
/// A MariaDB progress report: 0xFF, then error code 0xFFFF.
fn is_progress(payload: &[u8]) -> bool {
    payload.starts_with(&[0xff, 0xff, 0xff])
}

fn err_packet(payload: &[u8]) -> Message {
    let mut r = Reader::new(payload.get(1..).unwrap_or_default());
    let code = r.u16_le();
    let sqlstate = match r.remaining() {
        [b'#', s @ ..] if s.len() >= 5 => Some(text(&s[..5])),
        _ => None,
    };
    Message::Error {
        sqlstate,
        code,
        severity: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::db::testutil::{mutate, replay, split, XorShift};

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len() as u32;
        let mut v = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
        v.extend_from_slice(payload);
        v
    }

    fn lenenc_str(s: &[u8]) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s);
        v
    }

    /// A HandshakeResponse41 as the `mysql` 10.11 client sends it.
    fn handshake_response_packet(caps: u32) -> Vec<u8> {
        let mut p = caps.to_le_bytes().to_vec();
        p.extend_from_slice(&16_777_216u32.to_le_bytes());
        p.push(45);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"alice\0");
        p.extend(lenenc_str(&[0xab; 20]));
        p.extend_from_slice(b"ehr\0");
        p.extend_from_slice(b"mysql_native_password\0");
        let mut attrs = lenenc_str(b"_os");
        attrs.extend(lenenc_str(b"Linux"));
        attrs.extend(lenenc_str(b"program_name"));
        attrs.extend(lenenc_str(b"mysql"));
        p.extend(lenenc_str(&attrs));
        packet(1, &p)
    }

    const CAPS: u32 = CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | CLIENT_CONNECT_WITH_DB
        | CLIENT_PLUGIN_AUTH
        | CLIENT_CONNECT_ATTRS
        | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CLIENT_DEPRECATE_EOF;

    fn client_session(caps: u32) -> Vec<u8> {
        let mut v = handshake_response_packet(caps);
        v.extend(packet(
            0,
            b"\x03SELECT name FROM patients WHERE ssn = '123-45-6789'",
        ));
        v.extend(packet(0, b"\x03INSERT INTO notes VALUES (1, 'x')"));
        v.extend(packet(0, b"\x16SELECT * FROM patients WHERE id = ?"));
        v.extend(packet(0, &[COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0]));
        v.extend(packet(0, b"\x03SELEC oops"));
        v.extend(packet(0, &[COM_QUIT]));
        v
    }

    /// The server's answers, interleaved as they would be (server packets only).
    fn server_session(deprecate_eof: bool) -> Vec<Vec<u8>> {
        let greeting = packet(0, b"\x0a10.11.6-MariaDB\0\x01\0\0\0abcdefgh\0\xff\xf7\x2d\x02\0\xff\x81\x15\0\0\0\0\0\0\x1d\0\0\0ijklmnopqrst\0mysql_native_password\0");
        let ok_auth = packet(2, &[0, 0, 0, 2, 0, 0, 0]);
        let mut select = packet(1, &[1]);
        select.extend(packet(2, b"\x03def\x03ehr\x08patients\x08patients\x04name\x04name\x0c\x2d\0\xff\0\0\0\xfd\0\0\0\0\0"));
        if !deprecate_eof {
            select.extend(packet(3, &[0xfe, 0, 0, 2, 0]));
        }
        select.extend(packet(4, b"\x08Jane Doe"));
        select.extend(packet(5, b"\x08John Roe"));
        if deprecate_eof {
            select.extend(packet(6, &[0xfe, 0, 0, 2, 0, 0, 0]));
        } else {
            select.extend(packet(6, &[0xfe, 0, 0, 2, 0]));
        }
        let insert_ok = packet(1, &[0, 1, 0, 2, 0, 0, 0]);
        let mut prepare_ok = packet(1, &[0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
        prepare_ok.extend(packet(
            2,
            b"\x03def\0\0\0\x01?\0\x0c\x3f\0\0\0\0\0\xfd\x80\0\0\0\0",
        ));
        prepare_ok.extend(packet(
            3,
            b"\x03def\x03ehr\x01p\x01p\x02id\x02id\x0c\x3f\0\x0b\0\0\0\x03\0\0\0\0\0",
        ));
        let mut exec = packet(1, &[1]);
        exec.extend(packet(
            2,
            b"\x03def\x03ehr\x01p\x01p\x02id\x02id\x0c\x3f\0\x0b\0\0\0\x03\0\0\0\0\0",
        ));
        if !deprecate_eof {
            exec.extend(packet(3, &[0xfe, 0, 0, 2, 0]));
        }
        exec.extend(packet(4, &[0, 0, 7, 0, 0, 0]));
        exec.extend(packet(5, &[0xfe, 0, 0, 2, 0, 0, 0]));
        let err = packet(
            1,
            b"\xff\x28\x04#42000You have an error in your SQL syntax near 'SELEC oops'",
        );
        vec![greeting, ok_auth, select, insert_ok, prepare_ok, exec, err]
    }

    fn run(caps: u32) -> Vec<Message> {
        let client = client_session(caps);
        let server = server_session(caps & CLIENT_DEPRECATE_EOF != 0);
        // Split the client stream into its packets to interleave with the answers.
        let mut packets = Vec::new();
        let mut rest = &client[..];
        while rest.len() >= 4 {
            let n = header(rest);
            let Header::Len(n) = n else { unreachable!() };
            packets.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        let mut d = Decoder::new();
        let mut out = Vec::new();
        out.extend(d.feed(Chunk::whole(Direction::ToClient, &server[0])));
        for (i, p) in packets.iter().enumerate() {
            out.extend(d.feed(Chunk::whole(Direction::ToServer, p)));
            if let Some(s) = server.get(i + 1) {
                out.extend(d.feed(Chunk::whole(Direction::ToClient, s)));
            }
        }
        out
    }

    /// The session of [`run`] as (direction, bytes written at once), in order.
    fn session_elements(caps: u32) -> Vec<(Direction, Vec<u8>)> {
        let client = client_session(caps);
        let server = server_session(caps & CLIENT_DEPRECATE_EOF != 0);
        let mut out = vec![(Direction::ToClient, server[0].clone())];
        let mut rest = &client[..];
        let mut i = 1;
        while rest.len() >= 4 {
            let Header::Len(n) = header(rest) else {
                unreachable!()
            };
            out.push((Direction::ToServer, rest[..n].to_vec()));
            rest = &rest[n..];
            if let Some(s) = server.get(i) {
                out.push((Direction::ToClient, s.clone()));
            }
            i += 1;
        }
        out
    }

    /// Feeds `elements` to a decoder as the kernel's MySQL walk would send them
    /// ([`super::kernel_model`]), each element cut into calls at random points.
    pub(crate) fn feed_as_kernel(
        elements: &[(Direction, Vec<u8>)],
        rng: &mut XorShift,
    ) -> Vec<Message> {
        use crate::db::frame::testutil::cut_spans;
        let mut model = super::kernel_model::Model::new();
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for (direction, bytes) in elements {
            let mut kept = Vec::new();
            let mut starts = Vec::new();
            let mut shown = Vec::new();
            let mut rest = &bytes[..];
            while rest.len() >= 4 {
                let Header::Len(n) = header(rest) else {
                    unreachable!()
                };
                let view = model.packet(*direction, &rest[..n]);
                starts.push(true);
                starts.extend(std::iter::repeat_n(false, n - 1));
                kept.extend(view.iter().map(Option::is_some));
                shown.extend(view.iter().map(|b| b.unwrap_or(0)));
                rest = &rest[n..];
            }
            let mut cuts: Vec<usize> = (0..rng.below(4))
                .map(|_| 1 + rng.below(shown.len().max(2) - 1))
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            for call in cut_spans(&shown, &kept, &starts, &cuts) {
                for (captured, moved) in call {
                    out.extend(d.feed(Chunk {
                        direction: *direction,
                        data: &captured,
                        len: moved,
                        tail: &[],
                    }));
                }
            }
        }
        out
    }

    #[test]
    fn the_kernels_walk_split_anywhere_decodes_as_the_whole_session() {
        let mut rng = XorShift(17);
        for caps in [CAPS, CAPS & !CLIENT_DEPRECATE_EOF] {
            let whole = run(caps);
            for _ in 0..200 {
                let got = feed_as_kernel(&session_elements(caps), &mut rng);
                assert_eq!(got, whole, "caps {caps:#x}");
            }
        }
    }

    /// A session joined mid-way never saw the client's capabilities: whether it asked for
    /// CLIENT_DEPRECATE_EOF is read off its first result set (an EOF packet after the
    /// definitions), and the rows are counted either way.
    #[test]
    fn a_session_joined_mid_way_counts_rows_with_and_without_deprecate_eof() {
        for caps in [CAPS, CAPS & !CLIENT_DEPRECATE_EOF] {
            let client = client_session(caps);
            let server = server_session(caps & CLIENT_DEPRECATE_EOF != 0);
            let mut packets = Vec::new();
            let mut rest = &client[..];
            while rest.len() >= 4 {
                let Header::Len(n) = header(rest) else {
                    unreachable!()
                };
                packets.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            // From the first command on: no greeting, handshake response or login OK.
            let mut d = Decoder::mid_session();
            let mut out = Vec::new();
            for (i, p) in packets.iter().enumerate().skip(1) {
                out.extend(d.feed(Chunk::whole(Direction::ToServer, p)));
                if let Some(s) = server.get(i + 1) {
                    out.extend(d.feed(Chunk::whole(Direction::ToClient, s)));
                }
            }
            let rows: Vec<Option<u64>> = out
                .iter()
                .filter_map(|m| match m {
                    Message::Complete { tag, rows } if tag == "SELECT" => Some(*rows),
                    _ => None,
                })
                .collect();
            assert_eq!(rows, [Some(2), Some(1)], "caps {caps:#x}: {out:?}");
        }
    }

    #[test]
    fn session_decodes_with_and_without_deprecate_eof() {
        for caps in [CAPS, CAPS & !CLIENT_DEPRECATE_EOF] {
            let got = run(caps);
            let want = vec![
                Message::Startup {
                    user: Some("alice".into()),
                    database: Some("ehr".into()),
                    application: Some("mysql".into()),
                },
                Message::AuthMethod {
                    method: "mysql_native_password".into(),
                },
                Message::AuthOk,
                Message::Query {
                    text: "SELECT name FROM patients WHERE ssn = '123-45-6789'".into(),
                    truncated: false,
                },
                Message::Complete {
                    tag: "SELECT".into(),
                    rows: Some(2),
                },
                // The server's backslash mode, reported once (then on change).
                Message::Setting {
                    name: "no_backslash_escapes".into(),
                    value: "off".into(),
                },
                Message::Query {
                    text: "INSERT INTO notes VALUES (1, 'x')".into(),
                    truncated: false,
                },
                Message::Complete {
                    tag: "OK".into(),
                    rows: Some(1),
                },
                Message::Prepare {
                    name: String::new(),
                    text: "SELECT * FROM patients WHERE id = ?".into(),
                    truncated: false,
                },
                Message::Execute {
                    name: "7".into(),
                    text: Some("SELECT * FROM patients WHERE id = ?".into()),
                },
                Message::Complete {
                    tag: "SELECT".into(),
                    rows: Some(1),
                },
                Message::Query {
                    text: "SELEC oops".into(),
                    truncated: false,
                },
                Message::Error {
                    sqlstate: Some("42000".into()),
                    code: Some(1064),
                    severity: None,
                },
                Message::Terminate,
            ];
            assert_eq!(got, want, "caps {caps:#x}");
        }
    }

    #[test]
    fn coalesced_and_split_client_stream() {
        let client = client_session(CAPS);
        let mut rng = XorShift(99);
        for _ in 0..100 {
            let mut d = Decoder::new();
            let got: Vec<Message> = split(&mut rng, &client)
                .iter()
                .flat_map(|c| d.feed(Chunk::whole(Direction::ToServer, c)))
                .collect();
            assert_eq!(got.len(), 8, "{got:?}");
            assert!(matches!(&got[0], Message::Startup { user: Some(u), .. } if u == "alice"));
            assert_eq!(got[7], Message::Terminate);
        }
    }

    #[test]
    fn ssl_request_marks_encrypted() {
        let mut p = (CAPS | CLIENT_SSL).to_le_bytes().to_vec();
        p.extend_from_slice(&16_777_216u32.to_le_bytes());
        p.push(45);
        p.extend_from_slice(&[0; 23]);
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(Chunk::whole(Direction::ToServer, &packet(1, &p))),
            [Message::Encrypted(Encryption::Tls)]
        );
        assert!(d.is_encrypted());
        assert!(d
            .feed(Chunk::whole(Direction::ToServer, &[0x16, 3, 1, 0, 5]))
            .is_empty());
    }

    #[test]
    fn auth_failure_reports_the_error() {
        let mut d = Decoder::new();
        d.feed(Chunk::whole(
            Direction::ToServer,
            &handshake_response_packet(CAPS),
        ));
        let got = d.feed(Chunk::whole(
            Direction::ToClient,
            &packet(2, b"\xff\x15\x04#28000Access denied for user 'alice'"),
        ));
        assert_eq!(
            got,
            [Message::Error {
                sqlstate: Some("28000".into()),
                code: Some(1045),
                severity: None
            }]
        );
    }

    #[test]
    fn auth_switch_names_the_plugin_in_use() {
        let mut d = Decoder::new();
        let mut got = d.feed(Chunk::whole(
            Direction::ToServer,
            &handshake_response_packet(CAPS),
        ));
        got.extend(d.feed(Chunk::whole(
            Direction::ToClient,
            &packet(2, b"\xfeclient_ed25519\0PHIMARKscramble0123456789ab"),
        )));
        // The client's signature: a continuation (sequence 3), never read.
        got.extend(d.feed(Chunk::whole(
            Direction::ToServer,
            &packet(3, b"PHIMARKsignature"),
        )));
        got.extend(d.feed(Chunk::whole(
            Direction::ToClient,
            &packet(
                4,
                b"\xff\x15\x04#28000Access denied for user 'alice'@'localhost'",
            ),
        )));
        assert_eq!(
            got[1..],
            [
                Message::AuthMethod {
                    method: "mysql_native_password".into()
                },
                Message::AuthMethod {
                    method: "client_ed25519".into()
                },
                Message::Error {
                    sqlstate: Some("28000".into()),
                    code: Some(1045),
                    severity: None
                },
            ]
        );
        assert!(!format!("{got:?}").contains("PHIMARK"));
    }

    /// A COM_CHANGE_USER as libmariadb's `mysql_change_user` sends it.
    pub(crate) fn change_user_packet(user: &str, database: &str) -> Vec<u8> {
        let mut p = vec![COM_CHANGE_USER];
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(20);
        p.extend_from_slice(b"PHIMARKscrambled-pwd");
        p.extend_from_slice(database.as_bytes());
        p.push(0);
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(b"mysql_native_password\0");
        p.extend(lenenc_str(&[]));
        packet(0, &p)
    }

    #[test]
    fn change_user_then_ok_or_err() {
        let mut d = Decoder::mid_session();
        d.capabilities = CAPS;
        let mut got = d.feed(Chunk::whole(
            Direction::ToServer,
            &change_user_packet("clerk", "ehr"),
        ));
        got.extend(d.feed(Chunk::whole(
            Direction::ToClient,
            &packet(1, &[0, 0, 0, 2, 0, 0, 0]),
        )));
        got.extend(d.feed(Chunk::whole(
            Direction::ToServer,
            &packet(0, b"\x03SELECT 1"),
        )));
        assert_eq!(
            got,
            [
                Message::ChangeUser {
                    user: "clerk".into(),
                    database: Some("ehr".into())
                },
                Message::AuthMethod {
                    method: "mysql_native_password".into()
                },
                Message::AuthOk,
                Message::Query {
                    text: "SELECT 1".into(),
                    truncated: false
                },
            ]
        );
        let mut got = d.feed(Chunk::whole(
            Direction::ToServer,
            &change_user_packet("mallory", ""),
        ));
        got.extend(d.feed(Chunk::whole(
            Direction::ToClient,
            &packet(1, b"\xff\x15\x04#28000Access denied"),
        )));
        assert_eq!(
            got,
            [
                Message::ChangeUser {
                    user: "mallory".into(),
                    database: None
                },
                Message::AuthMethod {
                    method: "mysql_native_password".into()
                },
                Message::Error {
                    sqlstate: Some("28000".into()),
                    code: Some(1045),
                    severity: None
                },
            ]
        );
        assert!(!format!("{got:?}").contains("PHIMARK"));
    }

    #[test]
    fn truncated_query_keeps_framing() {
        let long = format!("\x03SELECT '{}'", "z".repeat(9000));
        let q = packet(0, long.as_bytes());
        let mut d = Decoder::mid_session();
        let got = d.feed(Chunk {
            direction: Direction::ToServer,
            data: &q[..4096],
            len: q.len(),
            tail: &[],
        });
        assert!(
            matches!(
                &got[..],
                [Message::Query {
                    truncated: true,
                    ..
                }]
            ),
            "{got:?}"
        );
        assert_eq!(
            d.feed(Chunk::whole(Direction::ToServer, &packet(0, &[COM_QUIT]))),
            [Message::Terminate]
        );
    }

    /// A file whose lines would be commands if read as packets: COM_QUERY (0x03), COM_QUIT
    /// (0x01), COM_STMT_PREPARE (0x16).
    fn infile_packets(first_seq: u8) -> Vec<u8> {
        let mut v = packet(first_seq, b"\x03SELECT 'PHIMARK_1'\n");
        v.extend(packet(first_seq + 1, b"\x01\x16PHIMARK_2\tPHIMARK_3\n"));
        v.extend(packet(first_seq + 2, b""));
        v
    }

    /// MariaDB 10.11 answering `LOAD DATA LOCAL INFILE` (progress report, then OK), and a
    /// further statement.
    fn load_data_session() -> Vec<(Direction, Vec<u8>)> {
        let mut answer = packet(5, b"\xff\xff\xff\x01\x01\x10\x27\x00\x0bLoading data");
        answer.extend(packet(6, &[0, 2, 0, 2, 0, 0, 0]));
        vec![
            (
                Direction::ToServer,
                packet(
                    0,
                    b"\x03LOAD DATA LOCAL INFILE '/tmp/PHIMARK_N.tsv' INTO TABLE t",
                ),
            ),
            (Direction::ToClient, packet(1, b"\xfb/tmp/PHIMARK_N.tsv")),
            (Direction::ToServer, infile_packets(2)),
            (Direction::ToClient, answer),
            (Direction::ToServer, packet(0, b"\x03DO 1")),
            (Direction::ToClient, packet(1, &[0, 0, 0, 2, 0, 0, 0])),
        ]
    }

    fn load_data_expected() -> Vec<Message> {
        vec![
            Message::Query {
                text: "LOAD DATA LOCAL INFILE '/tmp/PHIMARK_N.tsv' INTO TABLE t".into(),
                truncated: false,
            },
            Message::Copy {
                direction: CopyDirection::In,
            },
            Message::Setting {
                name: "no_backslash_escapes".into(),
                value: "off".into(),
            },
            Message::Complete {
                tag: "OK".into(),
                rows: Some(2),
            },
            Message::Query {
                text: "DO 1".into(),
                truncated: false,
            },
            Message::Complete {
                tag: "OK".into(),
                rows: Some(0),
            },
        ]
    }

    #[test]
    fn load_data_local_file_packets_are_data_and_the_ok_closes_the_statement() {
        let mut d = Decoder::mid_session();
        let got = replay(|c| d.feed(c), &load_data_session(), None);
        assert_eq!(got, load_data_expected());
        // The file's contents and the name the server asked for: nowhere but the query text.
        assert!(!format!("{:?}", &got[1..]).contains("PHIMARK"), "{got:?}");
    }

    #[test]
    fn load_data_local_split_anywhere_decodes_the_same() {
        let session = load_data_session();
        let mut rng = XorShift(0x10ad_da7a);
        for _ in 0..300 {
            let mut d = Decoder::mid_session();
            let got = replay(|c| d.feed(c), &session, Some(&mut rng));
            assert_eq!(got, load_data_expected());
        }
    }

    #[test]
    fn a_file_that_outruns_the_capture_is_skipped_to_the_servers_answer() {
        let file = infile_packets(2);
        for (answer, rest) in [
            (packet(5, &[0, 2, 0, 2, 0, 0, 0]), true),
            (packet(5, b"\xff\x1a\x04#HY000File too large"), false),
        ] {
            let mut d = Decoder::mid_session();
            let mut got = replay(|c| d.feed(c), &load_data_session()[..2], None);
            // Only the first 10 bytes of the file's packets were captured.
            got.extend(d.feed(Chunk {
                direction: Direction::ToServer,
                data: &file[..10],
                len: file.len(),
                tail: &[],
            }));
            got.extend(d.feed(Chunk::whole(Direction::ToClient, &answer)));
            got.extend(d.feed(Chunk::whole(Direction::ToServer, &packet(0, b"\x03DO 1"))));
            assert!(!format!("{:?}", &got[1..]).contains("PHIMARK"), "{got:?}");
            let next = Message::Query {
                text: "DO 1".into(),
                truncated: false,
            };
            if rest {
                // The OK comes only after the empty packet: the next command is framed.
                assert_eq!(
                    got[got.len() - 2..],
                    [load_data_expected()[3].clone(), next]
                );
            } else {
                // An error may come while the client still sends: its framing is unknown.
                assert!(
                    matches!(
                        &got[2..],
                        [
                            Message::Desync {
                                direction: Direction::ToServer,
                                ..
                            },
                            Message::Error {
                                code: Some(1050),
                                ..
                            }
                        ]
                    ),
                    "{got:?}"
                );
            }
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = XorShift(0xfeed_f00d_0123_4567);
        let server: Vec<u8> = server_session(true).concat();
        let mut with_change = client_session(CAPS);
        with_change.extend(change_user_packet("clerk", "ehr"));
        let mut auth_server = packet(2, b"\xfeclient_ed25519\0scramble");
        auth_server.extend(packet(4, b"\xff\x15\x04#28000Access denied"));
        let load_data: Vec<u8> = load_data_session()
            .into_iter()
            .flat_map(|(_, b)| b)
            .collect();
        let bases = [
            client_session(CAPS),
            server,
            with_change,
            auth_server,
            load_data,
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

/// A model of the kernel's MySQL walk (`agent-ebpf/src/programs/db_mysql.rs`), for tests: the
/// bytes of each packet that leave the kernel, given the session's packets in the order they
/// are walked. Auth data is kept as zero bytes, as the kernel sends it.
#[cfg(test)]
pub(crate) mod kernel_model {
    use super::Direction;

    /// The socket's state, as the kernel keeps it.
    #[derive(Default)]
    pub struct Model {
        greeted: bool,
        responded: bool,
        auth: bool,
        infile: bool,
        secure: bool,
        lenenc: bool,
        deprecate_eof: bool,
        /// The server's next packet: 0 opaque, 1 answer, 2 prepare, 3 result (eofs left).
        server: (u8, u8),
        cont: [bool; 2],
    }

    impl Model {
        /// A socket whose greeting is still to come.
        pub fn new() -> Self {
            Self {
                auth: true,
                ..Self::default()
            }
        }

        /// The bytes of the whole `packet` (header included) that leave the kernel, with a
        /// login's auth data as zeros; `None` bytes stay in the kernel.
        pub fn packet(&mut self, direction: Direction, packet: &[u8]) -> Vec<Option<u8>> {
            let len = u32::from_le_bytes([packet[0], packet[1], packet[2], 0]) as usize;
            let seq = packet[3];
            let body = &packet[4..];
            let dir = usize::from(direction == Direction::ToClient);
            let continues = self.cont[dir];
            self.cont[dir] = len == 0xff_ffff;
            let mut out: Vec<Option<u8>> = packet[..4].iter().map(|&b| Some(b)).collect();
            let keep = |out: &mut Vec<Option<u8>>, n: usize| {
                out.extend(body.iter().enumerate().map(|(i, &b)| (i < n).then_some(b)));
            };
            if continues || len == 0 {
                if direction == Direction::ToServer && self.infile && len == 0 {
                    self.infile = false;
                    self.server = (1, 0);
                }
                keep(&mut out, 0);
                return out;
            }
            if direction == Direction::ToServer {
                if self.infile {
                    keep(&mut out, 0);
                } else if seq == 0 {
                    let n = self.command(body);
                    if body[0] == 0x11 {
                        out.extend(login(body, 1, self.secure, false));
                    } else {
                        keep(&mut out, n);
                    }
                } else if !self.responded {
                    self.responded = true;
                    let caps = u32::from_le_bytes(body[..4].try_into().unwrap());
                    if caps & super::CLIENT_SSL != 0 && body.len() == 32 {
                        keep(&mut out, 32);
                    } else {
                        self.secure = caps & super::CLIENT_SECURE_CONNECTION != 0;
                        self.lenenc = caps & super::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0;
                        self.deprecate_eof = caps & super::CLIENT_DEPRECATE_EOF != 0;
                        out.extend(login(body, 32, self.secure || self.lenenc, true));
                    }
                } else {
                    keep(&mut out, 0);
                }
                return out;
            }
            let n = if !self.greeted {
                self.greeted = true;
                1
            } else if self.auth {
                match body[0] {
                    0x00 => 24,
                    0xff => 9,
                    0xfe => 65,
                    _ => 1,
                }
            } else {
                let (n, next) = match (self.server, body[0]) {
                    ((1, _), 0x00 | 0xfe) => (24, (1, 0)),
                    ((1, _), 0xff) => (9, (1, 0)),
                    ((1, _), 0xfb) => {
                        self.infile = true;
                        (1, (1, 0))
                    }
                    ((1, _), _) => (9, (3, if self.deprecate_eof { 1 } else { 2 })),
                    ((2, _), 0x00) => (12, (0, 0)),
                    ((2, _), 0xff) => (9, (1, 0)),
                    ((3, eofs), 0xfe) if len < 0xff_ffff => {
                        (24, if eofs <= 1 { (1, 0) } else { (3, eofs - 1) })
                    }
                    ((3, _), 0xff) => (9, (1, 0)),
                    ((3, eofs), _) => (0, (3, eofs)),
                    _ => (0, (0, 0)),
                };
                self.server = next;
                n
            };
            keep(&mut out, n);
            out
        }

        /// A command: what of its body leaves; sets the server's next packet.
        fn command(&mut self, body: &[u8]) -> usize {
            self.auth = false;
            let text = 4096 + 1;
            match body[0] {
                0x03 | 0x02 => {
                    self.server = (1, 0);
                    text
                }
                0x16 => {
                    self.server = (2, 0);
                    text
                }
                0x17 | 0x1a => {
                    self.server = (1, 0);
                    5
                }
                0x19 | 0x18 => 5,
                0x1c => {
                    self.server = (0, 0);
                    5
                }
                0x11 => {
                    self.auth = true;
                    0
                }
                0x01 => 1,
                0x0e | 0x0c | 0x1b | 0x1f | 0x07 => {
                    self.server = (1, 0);
                    1
                }
                _ => {
                    self.server = (0, 0);
                    1
                }
            }
        }
    }

    /// A handshake response's or COM_CHANGE_USER's body: `prefix` bytes, the user name, the
    /// auth data's length and the auth data as zeros, the rest.
    fn login(body: &[u8], prefix: usize, one_byte: bool, _handshake: bool) -> Vec<Option<u8>> {
        let mut out: Vec<Option<u8>> = Vec::new();
        let mut at = prefix.min(body.len());
        out.extend(body[..at].iter().map(|&b| Some(b)));
        while at < body.len() {
            out.push(Some(body[at]));
            at += 1;
            if body[at - 1] == 0 {
                break;
            }
        }
        if at < body.len() {
            let n = body[at];
            if !one_byte || n >= 0xfb {
                out.extend(body[at..].iter().map(|_| None));
                return out;
            }
            out.push(Some(n));
            at += 1;
            let end = (at + usize::from(n)).min(body.len());
            out.extend(body[at..end].iter().map(|_| Some(0)));
            out.extend(body[end..].iter().map(|&b| Some(b)));
        }
        out
    }
}
