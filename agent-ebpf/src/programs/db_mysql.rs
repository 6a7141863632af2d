//! The MySQL/MariaDB framing walk: what of a tracked socket's read or write leaves the kernel.
//!
//! A socket whose first bytes are the server's greeting (a packet of sequence 0 whose payload
//! starts with protocol version 10) is [`MODE_MYSQL`]. Each call is then walked packet header
//! by packet header (a 3-byte little-endian length and a sequence id) in `bpf_loop`, with the
//! shared record layout and helpers of the PostgreSQL walk (`crate::programs::db_frame`): every
//! header leaves the kernel; a body only as far as the audit reads it, decided from the
//! packet's first bytes and the socket's state ([`classify`]):
//!
//! - to the server: a command's first byte; the text of `COM_QUERY`, `COM_STMT_PREPARE` and
//!   `COM_INIT_DB` up to `DB_TEXT_CAPTURE` bytes; the statement id of `COM_STMT_EXECUTE`,
//!   `COM_STMT_CLOSE`, `COM_STMT_RESET`, `COM_STMT_FETCH` (never the parameters); the
//!   handshake response and `COM_CHANGE_USER` with their auth data replaced by zero bytes of
//!   the same length (user, database, plugin and connection attributes are kept); a 32-byte
//!   SSLRequest. Auth-switch responses (which can hold a cleartext password), LOAD DATA LOCAL
//!   file packets and the continuation of a 16 MiB packet: the header only.
//! - to the client: the greeting's protocol byte; in authentication OK, ERR (code and
//!   SQLSTATE) and an auth switch's plugin name; a command's first answer: OK (affected rows,
//!   insert id, status), ERR, the LOCAL INFILE request's first byte (the file name is not
//!   read), a result set's column count, a prepare's statement id; in a result set only its
//!   terminators (EOF, or the 0xfe OK) and ERR. Column definitions and rows: the header only.
//!
//! The protocol is half duplex, so every command resets what the server's next packet is
//! ([`SERVER_ANSWER`]); where the kernel cannot tell what a packet is (an unknown command's
//! answer, a prepare's definitions, a packet's first bytes not in the call's segment), only
//! its header leaves ([`SERVER_OPAQUE`]). Kernel drops are counted as in the PostgreSQL walk.
//! A header no packet has or a call longer than the walk's bound loses the direction's
//! framing for good (`PHASE_LOST`).

use core::ffi::{c_long, c_void};

use aya_ebpf::helpers::{
    bpf_loop, bpf_probe_read_user, generated::bpf_probe_read_kernel as raw_probe_read_kernel,
};
use phiguard_common::{
    event::{DbDataScratch, FLAG_DB_FRAMED, FLAG_DB_FRAMING_LOST, FLAG_DB_MYSQL},
    limits::{DB_CAPTURE_LEN, DB_WALK_STEPS},
};

use crate::{
    maps::{DbSock, DB_DATA_SCRATCH, DB_MYSQL_WALK, DB_ZEROS},
    programs::db_frame::{
        advance, capture, elide, flush, fresh, next_segment, text_capture, FirstBytes, Source,
        Walk, MODE_ENCRYPTED, PHASE_LOST, PHASE_SEEK, PHASE_TYPED, TO_CLIENT, TO_SERVER,
    },
};

pub use crate::programs::db_frame::MODE_MYSQL;

/// `DbFraming::flags` of a MySQL socket: authenticating (from the greeting, and from a
/// `COM_CHANGE_USER`, to the client's next command).
pub const MY_AUTH: u32 = 1 << 1;
/// The server's greeting was walked.
pub const MY_GREETED: u32 = 1 << 2;
/// The client's handshake response was walked.
pub const MY_RESPONDED: u32 = 1 << 3;
/// The client is sending a LOAD DATA LOCAL file (to its empty packet).
pub const MY_INFILE: u32 = 1 << 4;
/// Capabilities of the handshake response: `CLIENT_SECURE_CONNECTION`,
/// `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`, `CLIENT_DEPRECATE_EOF`.
pub const MY_SECURE: u32 = 1 << 5;
/// See [`MY_SECURE`].
pub const MY_LENENC_AUTH: u32 = 1 << 6;
/// See [`MY_SECURE`].
pub const MY_DEPRECATE_EOF: u32 = 1 << 7;

/// `DbDirection::state` bits 0..4 to the client: what the server's next packet is.
/// Not known: the header only.
pub const SERVER_OPAQUE: u32 = 0;
/// The first answer to a command (OK, ERR, LOCAL INFILE request or a column count).
pub const SERVER_ANSWER: u32 = 1;
/// The first answer to a `COM_STMT_PREPARE`.
pub const SERVER_PREPARE: u32 = 2;
/// Inside a result set: column definitions and rows, until its terminators.
pub const SERVER_RESULT: u32 = 3;
/// Bits 4..8 to the client: terminators still to come in the result set.
const EOFS_SHIFT: u32 = 4;

/// `DbDirection::state` bits 0..4 to the server: how the current body is captured.
/// Its first `capture` bytes, the rest elided.
const SUB_PLAIN: u32 = 0;
/// A fixed prefix (`capture` bytes), then the user name.
const SUB_PREFIX: u32 = 1;
/// The user name, to its NUL byte.
const SUB_USER: u32 = 2;
/// The auth data's length.
const SUB_AUTH_LEN: u32 = 3;
/// The auth data: `capture` bytes sent as zero bytes.
const SUB_BLANK: u32 = 4;
/// The body's first bytes decide how it is captured (its header is walked).
const ST_PEEK: u32 = 1 << 8;
/// The previous packet was 0xffffff bytes long: this one continues it.
const ST_CONT: u32 = 1 << 9;
/// The body being walked is a `COM_CHANGE_USER` (its auth length is one byte).
const ST_CHANGE_USER: u32 = 1 << 10;
/// The body being walked is the handshake response.
const ST_HANDSHAKE: u32 = 1 << 11;
/// The body being walked is an SSLRequest: TLS follows it.
const ST_SSL: u32 = 1 << 12;
const SUB_MASK: u32 = 0xf;

const CLIENT_COMPRESS: u32 = 0x0000_0020;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_LENENC_AUTH: u32 = 0x0020_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_REFRESH: u8 = 0x07;
const COM_PROCESS_KILL: u8 = 0x0c;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_RESET_CONNECTION: u8 = 0x1f;

/// A packet this long continues in the next one.
const MAX_PACKET: u64 = 0xff_ffff;
/// The fixed part of a HandshakeResponse41 (capabilities, max packet, charset, filler).
const RESPONSE_FIXED: u64 = 32;
/// An OK packet's header, affected rows, insert id, status and warnings.
const OK_CAPTURE: u64 = 24;
/// An ERR packet's header, code, `#` and SQLSTATE (its message is not read).
const ERR_CAPTURE: u64 = 9;
/// An auth switch request's header and plugin name (the scramble after it is public).
const SWITCH_CAPTURE: u64 = 65;
const CAP: u64 = DB_CAPTURE_LEN as u64;

/// The walk's state: the shared [`Walk`] and the MySQL socket's state (copies, written back
/// after the walk).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MysqlWalk {
    walk: Walk,
    /// `DbFraming::flags`.
    flags: u64,
    /// `DbDirection::state` of the walked direction.
    state: u64,
    /// `DbDirection::state` of the other direction (a command sets what the server's next
    /// packet is).
    other: u64,
}

/// Whether a server's first bytes are a protocol 10 greeting's: a greeting's length and
/// sequence 0, and the protocol version when the call holds it (a client that reads a packet's
/// 4-byte header apart from its body gets it in its next call, which the walk's state takes).
#[inline(always)]
pub fn is_greeting(first: FirstBytes) -> bool {
    let b = first.bytes;
    let len = u32::from_le_bytes([b[0], b[1], b[2], 0]);
    (20..=1024).contains(&len) && b[3] == 0 && (first.n < 5 || b[4] == 10)
}

/// Walks one call on the MySQL socket `sock` in direction `dir`, `len` bytes from `source`,
/// sending framed records built in `scratch` (its fixed part already filled).
#[inline(always)]
pub fn walk(scratch: &mut DbDataScratch, sock: &mut DbSock, dir: usize, source: Source, len: u64) {
    scratch.event.header.flags |= FLAG_DB_FRAMED | FLAG_DB_MYSQL;
    scratch.event.tail = 0;
    let Some(m) = DB_MYSQL_WALK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU value is this program's for its run.
    let m = unsafe { &mut *m };
    let dir = dir & 1;
    let state = sock.framing.dirs[dir];
    let zero = 0;
    let (seg_ptr, seg_left, iov, iov_count) = match source {
        Source::Flat(ptr) => (ptr, len, 0, zero),
        Source::Vector { iov, count } => (zero, zero, iov, count),
    };
    let w = &mut m.walk;
    w.left = len;
    w.seg_ptr = seg_ptr;
    w.seg_left = seg_left;
    w.iov = iov;
    w.iov_count = iov_count;
    w.iov_next = zero;
    w.phase = u64::from(state.phase);
    w.hdr_have = u64::from(state.hdr_have);
    w.rest = u64::from(state.rest);
    w.capture = u64::from(state.capture);
    w.lost = u64::from(state.lost);
    w.hdr = state.hdr;
    w.to_server = (dir == TO_SERVER) as u64;
    w.sasl = zero;
    w.answer_due = zero;
    w.encrypted = zero;
    w.used = zero;
    w.spans = zero;
    w.span_open = zero;
    w.span_at = zero;
    w.span_moved = zero;
    w.span_captured = zero;
    w.span_flags = zero;
    w.done = zero;
    w.names_left = zero;
    m.flags = u64::from(sock.framing.flags);
    m.state = u64::from(state.state);
    m.other = u64::from(sock.framing.dirs[dir ^ 1].state);
    if m.walk.phase < PHASE_LOST as u64 && len > 0 {
        // SAFETY: the callback is a static function; it finds the walk in `DB_MYSQL_WALK`.
        unsafe {
            bpf_loop(
                DB_WALK_STEPS,
                walk_step as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
        if m.walk.done == 0 && m.walk.encrypted == 0 {
            m.walk.phase = PHASE_LOST as u64;
        }
    }
    if m.walk.phase == PHASE_LOST as u64 {
        scratch.event.header.flags |= FLAG_DB_FRAMING_LOST;
    }
    flush(&mut m.walk, scratch);

    let out = &mut sock.framing.dirs[dir];
    out.phase = m.walk.phase as u32;
    out.hdr_have = m.walk.hdr_have as u32;
    out.rest = m.walk.rest as u32;
    out.capture = m.walk.capture as u32;
    out.lost = m.walk.lost as u32;
    out.hdr = m.walk.hdr;
    out.state = m.state as u32;
    sock.framing.dirs[dir ^ 1].state = m.other as u32;
    sock.framing.flags = m.flags as u32;
    if dir == TO_SERVER
        && sock.framing.dirs[TO_CLIENT].phase == PHASE_SEEK
        && m.other & 0xf != u64::from(SERVER_OPAQUE)
    {
        // A joined session's command was walked: the server's next packet answers it, so
        // the other direction is walked from its next call (the protocol is half duplex).
        let server = &mut sock.framing.dirs[TO_CLIENT];
        server.phase = PHASE_TYPED;
        server.hdr_have = 0;
        server.rest = 0;
        server.capture = 0;
    }
    if m.walk.encrypted != 0 {
        sock.framing.mode = MODE_ENCRYPTED;
    }
}

/// One step of [`walk`]: the next buffer, a packet header, its classification or a run of
/// body bytes. 1 ends the walk.
extern "C" fn walk_step(_step: u64, _ctx: *mut c_void) -> c_long {
    let (Some(m), Some(s)) = (DB_MYSQL_WALK.get_ptr_mut(0), DB_DATA_SCRATCH.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: the per-CPU values are this program's for its run.
    let (m, s) = unsafe { (&mut *m, &mut *s) };
    if m.walk.left == 0 {
        m.walk.done = 1;
        return 1;
    }
    if m.walk.phase >= PHASE_LOST as u64 {
        return 1;
    }
    if m.walk.seg_left == 0 {
        return next_segment(&mut m.walk);
    }
    let avail = m.walk.seg_left.min(m.walk.left);
    if m.walk.rest == 0 {
        return header_step(m, s, avail);
    }
    if m.state & u64::from(ST_PEEK) != 0 && !classify(m, avail) {
        m.walk.phase = PHASE_LOST as u64;
        return 1;
    }
    body_step(m, s, avail)
}

/// Walks body bytes as the body's sub-phase says.
#[inline(always)]
fn body_step(m: &mut MysqlWalk, s: &mut DbDataScratch, avail: u64) -> c_long {
    // To the client the state's low bits say what the server's next packet is; a body there
    // is always plain.
    let sub = if m.walk.to_server != 0 {
        (m.state as u32) & SUB_MASK
    } else {
        SUB_PLAIN
    };
    let w = &mut m.walk;
    let take = w.rest.min(avail);
    match sub {
        SUB_USER => {
            // SAFETY: the helper checks the user address.
            let Ok(b) = (unsafe { bpf_probe_read_user(w.seg_ptr as *const u8) }) else {
                w.phase = PHASE_LOST as u64;
                return 1;
            };
            if w.capture == 0 {
                // A user name longer than the capture: the rest of the body stays here.
                set_sub(m, SUB_PLAIN);
                m.walk.capture = 0;
                return 0;
            }
            if capture(w, s, 1, false) != 1 {
                w.phase = PHASE_LOST as u64;
                return 1;
            }
            w.capture -= 1;
            w.rest -= 1;
            advance(w, 1);
            if b == 0 {
                set_sub(m, SUB_AUTH_LEN);
            }
            0
        }
        SUB_AUTH_LEN => {
            let one_byte = if m.state & u64::from(ST_CHANGE_USER) != 0 {
                m.flags & u64::from(MY_SECURE) != 0
            } else {
                m.flags & u64::from(MY_SECURE | MY_LENENC_AUTH) != 0
            };
            // SAFETY: the helper checks the user address.
            let Ok(n) = (unsafe { bpf_probe_read_user(w.seg_ptr as *const u8) }) else {
                w.phase = PHASE_LOST as u64;
                return 1;
            };
            if !one_byte || n >= 0xfb {
                // A NUL-terminated or long auth response: nothing after it leaves.
                set_sub(m, SUB_PLAIN);
                m.walk.capture = 0;
                return 0;
            }
            if capture(w, s, 1, false) != 1 {
                w.phase = PHASE_LOST as u64;
                return 1;
            }
            w.rest -= 1;
            advance(w, 1);
            w.capture = u64::from(n);
            set_sub(m, SUB_BLANK);
            0
        }
        SUB_BLANK => {
            if w.capture == 0 {
                // After the auth data: database, plugin and attributes.
                w.capture = text_capture();
                set_sub(m, SUB_PLAIN);
                return 0;
            }
            let n = take.min(w.capture).min(256);
            let copied = capture(w, s, n, false);
            if copied == 0 || !blank(w, s, copied) {
                w.phase = PHASE_LOST as u64;
                return 1;
            }
            w.capture -= copied.min(w.capture);
            w.rest -= copied.min(w.rest);
            advance(w, copied);
            0
        }
        _ => {
            if w.capture > 0 {
                let copied = capture(w, s, take.min(w.capture), false);
                if copied == 0 {
                    w.phase = PHASE_LOST as u64;
                    return 1;
                }
                w.capture -= copied.min(w.capture);
                w.rest -= copied.min(w.rest);
                advance(w, copied);
                if w.capture == 0 && sub == SUB_PREFIX {
                    w.capture = text_capture();
                    set_sub(m, SUB_USER);
                }
            } else {
                elide(w, s, take);
                w.rest -= take;
                advance(w, take);
            }
            if m.walk.rest == 0 && m.state & u64::from(ST_SSL) != 0 {
                // The SSLRequest is walked: TLS follows.
                m.walk.encrypted = 1;
                m.walk.done = 1;
                return 1;
            }
            0
        }
    }
}

/// Sets the body's sub-phase.
#[inline(always)]
fn set_sub(m: &mut MysqlWalk, sub: u32) {
    m.state = (m.state & !u64::from(SUB_MASK)) | u64::from(sub);
}

/// Overwrites the last `n` (at most 256) bytes captured with zeros: auth data never leaves.
#[inline(always)]
fn blank(w: &mut Walk, s: &mut DbDataScratch, n: u64) -> bool {
    let Some(zeros) = DB_ZEROS.get_ptr(0) else {
        return false;
    };
    if n == 0 || n > 256 || w.used < n {
        return false;
    }
    let at = (fresh(&w.used) - n) & (CAP - 1);
    let len = ((n - 1) & 255) + 1;
    // SAFETY: at most 256 bytes at an offset below `DB_CAPTURE_LEN` in a `2 * DB_CAPTURE_LEN`
    // array, from a 256-byte map value.
    let rc = unsafe {
        raw_probe_read_kernel(
            s.data.as_mut_ptr().add(at as usize).cast(),
            len as u32,
            zeros.cast(),
        )
    };
    rc == 0
}

/// Reads (and captures) the next header bytes; at a complete header, decides what of the body
/// can be told without its bytes.
#[inline(always)]
fn header_step(m: &mut MysqlWalk, s: &mut DbDataScratch, avail: u64) -> c_long {
    let w = &mut m.walk;
    let need = 4u64.saturating_sub(w.hdr_have);
    let n = need.min(avail);
    if n == 0 || n > 4 {
        w.phase = PHASE_LOST as u64;
        return 1;
    }
    if w.hdr_have == 0 && n == 4 {
        // SAFETY: the helper checks the user address.
        let Ok(h) = (unsafe { bpf_probe_read_user(w.seg_ptr as *const [u8; 4]) }) else {
            w.phase = PHASE_LOST as u64;
            return 1;
        };
        w.hdr[0] = h[0];
        w.hdr[1] = h[1];
        w.hdr[2] = h[2];
        w.hdr[3] = h[3];
    } else {
        for k in 0..4u64 {
            if k >= n {
                break;
            }
            // SAFETY: the helper checks the user address.
            let Ok(b) = (unsafe { bpf_probe_read_user((w.seg_ptr + k) as *const u8) }) else {
                w.phase = PHASE_LOST as u64;
                return 1;
            };
            w.hdr[((w.hdr_have + k) & 7) as usize] = b;
        }
    }
    let boundary = w.hdr_have == 0;
    if capture(w, s, n, boundary) != n {
        w.phase = PHASE_LOST as u64;
        return 1;
    }
    advance(w, n);
    w.hdr_have += n;
    if w.hdr_have < 4 {
        return 0;
    }
    let h = w.hdr;
    w.hdr_have = 0;
    let len = u64::from(u32::from_le_bytes([h[0], h[1], h[2], 0]));
    let seq = h[3];
    w.rest = len;
    w.capture = 0;
    let continues = m.state & u64::from(ST_CONT) != 0;
    // A header keeps only the server's answer state (to the client) and sets the
    // continuation bit.
    let kept = if m.walk.to_server != 0 {
        0
    } else {
        m.state & 0xff
    };
    m.state = kept
        | if len == MAX_PACKET {
            u64::from(ST_CONT)
        } else {
            0
        };
    if continues {
        return 0;
    }
    let flags = m.flags as u32;
    if m.walk.to_server != 0 {
        if flags & MY_INFILE != 0 {
            if len == 0 {
                // The file's end: the server answers the statement.
                m.flags &= !u64::from(MY_INFILE);
                expect(m, SERVER_ANSWER);
            }
            return 0;
        }
        if seq == 0 && len > 0 {
            m.state |= u64::from(ST_PEEK);
        } else if flags & MY_RESPONDED == 0 && len > 0 {
            m.flags |= u64::from(MY_RESPONDED);
            m.state |= u64::from(ST_PEEK | ST_HANDSHAKE);
        }
        // Other packets of an authentication (which may hold a cleartext password): the
        // header only.
        return 0;
    }
    if len > 0 {
        m.state |= u64::from(ST_PEEK);
    }
    0
}

/// Decides how the body that starts at the walk's position is captured, from its first bytes
/// (four when the segment holds them, else one) and the socket's state. False when they
/// cannot be read.
#[inline(always)]
fn classify(m: &mut MysqlWalk, avail: u64) -> bool {
    m.state &= !u64::from(ST_PEEK);
    let w = &mut m.walk;
    let mut b = [0u8; 4];
    let whole = avail >= 4;
    // SAFETY: the helper checks the user address.
    let read = unsafe {
        if whole {
            bpf_probe_read_user(w.seg_ptr as *const [u8; 4]).map(|v| b = v)
        } else {
            bpf_probe_read_user(w.seg_ptr as *const u8).map(|v| b[0] = v)
        }
    };
    if read.is_err() {
        return false;
    }
    let rest = w.rest;
    if w.to_server != 0 {
        if m.state & u64::from(ST_HANDSHAKE) != 0 {
            return handshake_response(m, b, whole);
        }
        command(m, b[0]);
        return true;
    }
    let flags = m.flags as u32;
    if flags & MY_GREETED == 0 {
        m.flags |= u64::from(MY_GREETED);
        m.walk.capture = 1;
        return true;
    }
    if flags & MY_AUTH != 0 {
        m.walk.capture = rest.min(match b[0] {
            0x00 => OK_CAPTURE,
            0xff => ERR_CAPTURE,
            0xfe => SWITCH_CAPTURE,
            _ => 1,
        });
        return true;
    }
    let answer = (m.state as u32) & SUB_MASK;
    let eofs = ((m.state as u32) >> EOFS_SHIFT) & 0xf;
    let (capture, next) = match answer {
        SERVER_ANSWER => match b[0] {
            0x00 | 0xfe => (OK_CAPTURE, SERVER_ANSWER),
            0xff => (ERR_CAPTURE, SERVER_ANSWER),
            0xfb => {
                m.flags |= u64::from(MY_INFILE);
                (1, SERVER_ANSWER)
            }
            _ => {
                let eofs = if flags & MY_DEPRECATE_EOF != 0 { 1 } else { 2 };
                (9, SERVER_RESULT | (eofs << EOFS_SHIFT))
            }
        },
        SERVER_PREPARE => match b[0] {
            0x00 => (12, SERVER_OPAQUE),
            0xff => (ERR_CAPTURE, SERVER_ANSWER),
            _ => (0, SERVER_OPAQUE),
        },
        SERVER_RESULT => match b[0] {
            // A row starting 0xfe is at least 16 MiB long.
            0xfe if rest < MAX_PACKET => {
                if eofs <= 1 {
                    (OK_CAPTURE, SERVER_ANSWER)
                } else {
                    (OK_CAPTURE, SERVER_RESULT | ((eofs - 1) << EOFS_SHIFT))
                }
            }
            0xff => (ERR_CAPTURE, SERVER_ANSWER),
            _ => (0, SERVER_RESULT | (eofs << EOFS_SHIFT)),
        },
        _ => (0, SERVER_OPAQUE),
    };
    // Where only the first byte could be read, an OK's or a column count's further bytes are
    // not known to be in this segment's packet start: the first byte only.
    let capture = if whole { capture } else { capture.min(1) };
    m.walk.capture = rest.min(capture);
    m.state = (m.state & !0xff) | u64::from(next);
    true
}

/// The server's next packet is `next` (a `SERVER_*` state): set by a command.
#[inline(always)]
fn expect(m: &mut MysqlWalk, next: u32) {
    m.other = (m.other & !0xff) | u64::from(next);
}

/// A command (a client packet of sequence 0) starting with `command`: what of it is captured
/// and what the server's next packet is.
#[inline(always)]
fn command(m: &mut MysqlWalk, command: u8) {
    m.flags &= !u64::from(MY_AUTH);
    let rest = m.walk.rest;
    let text = text_capture() + 1;
    let capture = match command {
        COM_QUERY | COM_INIT_DB => {
            expect(m, SERVER_ANSWER);
            text
        }
        COM_STMT_PREPARE => {
            expect(m, SERVER_PREPARE);
            text
        }
        COM_STMT_EXECUTE | COM_STMT_RESET => {
            expect(m, SERVER_ANSWER);
            5
        }
        // No answer.
        COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA => 5,
        COM_STMT_FETCH => {
            expect(m, SERVER_OPAQUE);
            5
        }
        COM_CHANGE_USER => {
            // Answered as a login: OK, ERR or an auth switch.
            m.flags |= u64::from(MY_AUTH);
            m.state |= u64::from(ST_CHANGE_USER | SUB_PREFIX);
            1
        }
        COM_QUIT => 1,
        COM_PING | COM_PROCESS_KILL | COM_SET_OPTION | COM_RESET_CONNECTION | COM_REFRESH => {
            expect(m, SERVER_ANSWER);
            1
        }
        _ => {
            expect(m, SERVER_OPAQUE);
            1
        }
    };
    m.walk.capture = rest.min(capture);
}

/// The client's first packet: an SSLRequest (captured whole; TLS follows) or a
/// HandshakeResponse41 (its fixed part, then the user name, the auth data as zeros and the
/// rest). `b` holds its first four bytes when `whole`.
#[inline(always)]
fn handshake_response(m: &mut MysqlWalk, b: [u8; 4], whole: bool) -> bool {
    let rest = m.walk.rest;
    if !whole || rest < RESPONSE_FIXED {
        // The capabilities are not known: only the header leaves.
        m.walk.capture = 0;
        return true;
    }
    let caps = u32::from_le_bytes(b);
    if caps & CLIENT_COMPRESS != 0 {
        // Compressed packets are not walked.
        return false;
    }
    if caps & CLIENT_SSL != 0 && rest == RESPONSE_FIXED {
        m.state |= u64::from(ST_SSL);
        m.walk.capture = RESPONSE_FIXED;
        return true;
    }
    if caps & CLIENT_SECURE_CONNECTION != 0 {
        m.flags |= u64::from(MY_SECURE);
    }
    if caps & CLIENT_LENENC_AUTH != 0 {
        m.flags |= u64::from(MY_LENENC_AUTH);
    }
    if caps & CLIENT_DEPRECATE_EOF != 0 {
        m.flags |= u64::from(MY_DEPRECATE_EOF);
    }
    m.state |= u64::from(SUB_PREFIX);
    m.walk.capture = RESPONSE_FIXED;
    true
}
