//! The PostgreSQL framing walk: what of a tracked socket's read or write leaves the kernel.
//!
//! A socket's first call decides its mode: a client-to-server call that starts with a
//! PostgreSQL startup-phase request (a length of 8 to 10000 and a protocol 3 version,
//! SSLRequest, GSSENCRequest or CancelRequest code) makes it [`MODE_POSTGRES`]; anything else
//! (a MySQL greeting, direct TLS, a joined session's typed message) [`MODE_RAW`], captured as
//! the call's first bytes (`crate::programs::db`).
//!
//! In [`MODE_POSTGRES`] each call is walked message header by message header (in `bpf_loop`,
//! at most `DB_WALK_STEPS` steps), with the state a message split across calls needs kept per
//! direction in the socket's `DB_SOCKS` entry ([`crate::maps::DbDirection`]). Every header
//! leaves the kernel; a body only as far as the audit reads it ([`body_capture`]): the
//! statement text of Query and Parse and the startup packet up to `DB_TEXT_CAPTURE` bytes, the
//! names of Bind, Execute and Close, the SQLSTATE end of an ErrorResponse, CommandComplete,
//! ReadyForQuery, ParameterStatus, Authentication requests, a SASLInitialResponse's mechanism,
//! the column count of a RowDescription. DataRow, CopyData, passwords, notices and
//! notifications stay in the kernel: they are skipped by their length. The record is a series
//! of [`DbSpan`]s whose elided bytes are only ever a span's end, so user space frames the same
//! messages from it as from the whole stream.
//!
//! A full record is sent and the walk goes on in a new one; a record the ring buffer refuses is
//! counted on the socket's direction and reported in the next record's `lost`, whose spans say
//! where messages start again ([`SPAN_BOUNDARY`]). A header no valid message has, or a call
//! with more messages than the walk's bound, loses the direction's framing for good
//! ([`PHASE_LOST`], `FLAG_DB_FRAMING_LOST`): only byte counts follow.

use core::{
    ffi::{c_long, c_void},
    mem::{offset_of, size_of},
};

use aya_ebpf::helpers::{
    bpf_loop, bpf_probe_read_user,
    generated::{
        bpf_probe_read_user as raw_probe_read_user,
        bpf_probe_read_user_str as raw_probe_read_user_str,
    },
};
use phiguard_common::{
    event::{
        DbDataScratch, DbSpan, Kind, FLAG_DB_CONTINUED, FLAG_DB_FRAMED, FLAG_DB_FRAMING_LOST,
        SPAN_BOUNDARY,
    },
    limits::{DB_CAPTURE_LEN, DB_TEXT_CAPTURE_DEFAULT, DB_TEXT_CAPTURE_MAX, DB_WALK_STEPS},
};

use crate::{
    emit::output,
    maps::{DbSock, DB_DATA_SCRATCH, DB_TILING, DB_WALK},
};

/// Not decided yet: the socket has moved no bytes.
pub const MODE_UNKNOWN: u32 = 0;
/// Captured as each call's first bytes.
pub const MODE_RAW: u32 = 1;
/// PostgreSQL, walked message by message.
pub const MODE_POSTGRES: u32 = 2;
/// PostgreSQL switched to TLS or GSSAPI, or MySQL to TLS: only byte counts.
pub const MODE_ENCRYPTED: u32 = 3;
/// MySQL/MariaDB, walked packet by packet (`crate::programs::db_mysql`).
pub const MODE_MYSQL: u32 = 4;
/// A session joined mid-way (opened before the agent started): each call is tried as whole
/// messages ([`tiles`]) until one is; until then it is captured by system call.
pub const MODE_JOINED: u32 = 5;

/// `DbDirection::phase`: typed messages (a type byte and a 4-byte length).
pub const PHASE_TYPED: u32 = 0;
/// Untyped startup-phase requests (a 4-byte length and a 4-byte code).
pub const PHASE_UNTYPED: u32 = 1;
/// The server's one-byte answer to SSLRequest or GSSENCRequest.
pub const PHASE_ANSWER: u32 = 2;
/// The framing was lost: only byte counts.
pub const PHASE_LOST: u32 = 3;
/// A joined session's direction not at a known message boundary yet: a call that is whole
/// messages ([`tiles`]) starts its walk (MySQL: the client's command starts the server's);
/// any other is captured by system call.
pub const PHASE_SEEK: u32 = 4;

/// `DbFraming::flags`: the server asked for SASL, so the client's next password message is a
/// SASLInitialResponse, whose mechanism name is captured (a cleartext or MD5 password never
/// is).
pub const FRAMING_SASL: u32 = 1;

/// Index of each direction in `DbFraming::dirs`.
pub const TO_SERVER: usize = 0;
/// See [`TO_SERVER`].
pub const TO_CLIENT: usize = 1;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// AuthenticationSASL's code.
const AUTH_SASL: u32 = 10;
/// No PostgreSQL message is longer (the server's limit for most).
const MAX_MESSAGE: u64 = 1 << 30;
/// Startup packets are at most this long (the server's own limit).
const MAX_STARTUP: u64 = 10_000;
const SPAN_HEADER: u64 = size_of::<DbSpan>() as u64;
/// The longest message header (an untyped request's length and code).
const MAX_HEADER: u64 = 8;
const CAP: u64 = DB_CAPTURE_LEN as u64;

/// Statement text captured per message, in bytes. Set at load
/// (`phiguard_common::maps::DB_TEXT_CAPTURE_GLOBAL`).
#[unsafe(no_mangle)]
static DB_TEXT_CAPTURE: u32 = DB_TEXT_CAPTURE_DEFAULT;

/// The statement capture bound (see [`DB_TEXT_CAPTURE`]).
#[inline(always)]
pub(crate) fn text_capture() -> u64 {
    // SAFETY: a plain static; volatile keeps the read in the program (the loader rewrites it).
    let n = unsafe { core::ptr::read_volatile(&raw const DB_TEXT_CAPTURE) };
    u64::from(n.min(DB_TEXT_CAPTURE_MAX))
}

/// The first bytes of a socket's first call: `n` of them (8, 5 or 4) read, the rest zero.
#[derive(Clone, Copy)]
pub struct FirstBytes {
    pub bytes: [u8; 8],
    pub n: u64,
}

/// Whether a client's first call starts with a PostgreSQL startup-phase request: its length,
/// and its code when the call holds all 8 bytes (a reader of the length alone gets the code in
/// its next call, which the walk's split-header state takes).
#[inline(always)]
pub fn is_startup_request(first: FirstBytes) -> bool {
    let b = first.bytes;
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let code = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    (8..=MAX_STARTUP as u32).contains(&len)
        && (first.n < 8
            || code >> 16 == 3
            || matches!(code, SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST))
}

/// Body bytes of a `kind` message (of `rest` body bytes) that leave the kernel.
#[inline(always)]
fn body_capture(to_server: bool, kind: u8, rest: u64, sasl: bool) -> u64 {
    let limit = if to_server {
        match kind {
            b'Q' | b'P' => text_capture(),
            // Portal and statement names (at most 63 bytes each), up to the second's NUL
            // ([`capture_names`]): the parameter values after them stay in the kernel.
            b'B' => 128,
            b'E' | b'C' => 72,
            b'p' if sasl => 64,
            _ => 0,
        }
    } else {
        match kind {
            b'R' => 128,
            // Severity, localised severity and SQLSTATE come first; the message text (which
            // can quote row data) is cut into, never read.
            b'E' => 64,
            b'C' | b'S' => 64,
            b'Z' => 1,
            b'T' => 2,
            _ => 0,
        }
    };
    rest.min(limit)
}

/// How the call's bytes are reached.
#[derive(Clone, Copy)]
pub enum Source {
    /// One buffer at this user address.
    Flat(u64),
    /// `count` iovecs at this user address.
    Vector { iov: u64, count: u64 },
}

/// One `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct IoVec {
    pub(crate) base: u64,
    pub(crate) len: u64,
}

/// The walk's state, in a per-CPU map value (`DB_WALK`) rather than the stack: the verifier
/// knows nothing of a map value's contents, so every step starts from the same unknown state
/// and the verifier's walk of `bpf_loop` (6.7 and later simulate its iterations) converges at
/// once; a stack copy kept exact values that differed at every step.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Walk {
    /// Bytes of the call not walked yet.
    pub(crate) left: u64,
    /// The current buffer and its bytes not walked yet.
    pub(crate) seg_ptr: u64,
    pub(crate) seg_left: u64,
    /// Further iovecs.
    pub(crate) iov: u64,
    pub(crate) iov_count: u64,
    pub(crate) iov_next: u64,
    // The direction's state (a copy, written back after the walk).
    pub(crate) phase: u64,
    pub(crate) hdr_have: u64,
    pub(crate) rest: u64,
    pub(crate) capture: u64,
    pub(crate) lost: u64,
    pub(crate) hdr: [u8; 8],
    // What the walk tells the other direction.
    pub(crate) to_server: u64,
    pub(crate) sasl: u64,
    /// 1: the server's answer is due in the other direction.
    pub(crate) answer_due: u64,
    /// 1: the session switched to encryption.
    pub(crate) encrypted: u64,
    // The record being built.
    pub(crate) used: u64,
    pub(crate) spans: u64,
    pub(crate) span_open: u64,
    pub(crate) span_at: u64,
    pub(crate) span_moved: u64,
    pub(crate) span_captured: u64,
    pub(crate) span_flags: u64,
    /// 1: the walk ended at the end of the call (not at its step bound).
    pub(crate) done: u64,
    /// Names whose NUL the capture of a Bind's body has not reached yet (2 at its start, 0
    /// for any other message): the capture ends at the second.
    pub(crate) names_left: u64,
}

/// Walks one call on the PostgreSQL socket `sock` in direction `dir` (`TO_SERVER` or
/// `TO_CLIENT`), `len` bytes from `source`, sending framed records built in `scratch` (its
/// fixed part already filled).
#[inline(always)]
pub fn walk(scratch: &mut DbDataScratch, sock: &mut DbSock, dir: usize, source: Source, len: u64) {
    scratch.event.header.flags |= FLAG_DB_FRAMED;
    scratch.event.tail = 0;
    let Some(walk) = DB_WALK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU value is this program's for its run.
    let walk = unsafe { &mut *walk };
    let dir = dir & 1;
    let state = sock.framing.dirs[dir];
    let zero = 0;
    let (seg_ptr, seg_left, iov, iov_count) = match source {
        Source::Flat(ptr) => (ptr, len, 0, zero),
        Source::Vector { iov, count } => (zero, zero, iov, count),
    };
    *walk = Walk {
        left: len,
        seg_ptr,
        seg_left,
        iov,
        iov_count,
        iov_next: zero,
        phase: u64::from(state.phase),
        hdr_have: u64::from(state.hdr_have),
        rest: u64::from(state.rest),
        capture: u64::from(state.capture),
        lost: u64::from(state.lost),
        hdr: state.hdr,
        to_server: (dir == TO_SERVER) as u64,
        sasl: u64::from(sock.framing.flags & FRAMING_SASL),
        answer_due: zero,
        encrypted: zero,
        used: zero,
        spans: zero,
        span_open: zero,
        span_at: zero,
        span_moved: zero,
        span_captured: zero,
        span_flags: zero,
        done: zero,
        names_left: u64::from(state.state),
    };
    if walk.phase < PHASE_LOST as u64 && len > 0 {
        // SAFETY: the callback is a static function; it finds the walk in `DB_WALK`.
        unsafe {
            bpf_loop(
                DB_WALK_STEPS,
                walk_step as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
        if walk.done == 0 && walk.encrypted == 0 {
            walk.phase = PHASE_LOST as u64;
        }
    }
    if walk.phase == PHASE_LOST as u64 {
        scratch.event.header.flags |= FLAG_DB_FRAMING_LOST;
    }
    // The last (or only) record, sent even without spans: its byte count, an end of stream.
    flush(walk, scratch);

    let out = &mut sock.framing.dirs[dir];
    out.phase = walk.phase as u32;
    out.hdr_have = walk.hdr_have as u32;
    out.rest = walk.rest as u32;
    out.capture = walk.capture as u32;
    out.lost = walk.lost as u32;
    out.state = walk.names_left as u32;
    out.hdr = walk.hdr;
    if walk.answer_due != 0 {
        sock.framing.dirs[dir ^ 1].phase = PHASE_ANSWER;
    }
    if walk.to_server == 0 {
        if walk.sasl != 0 {
            sock.framing.flags |= FRAMING_SASL;
        }
    } else if walk.sasl == 0 {
        sock.framing.flags &= !FRAMING_SASL;
    }
    if walk.encrypted != 0 {
        sock.framing.mode = MODE_ENCRYPTED;
    }
}

/// One step of [`walk`]: the next buffer, a message header, or a run of body bytes. 1 ends
/// the walk.
extern "C" fn walk_step(_step: u64, _ctx: *mut c_void) -> c_long {
    let (Some(w), Some(s)) = (DB_WALK.get_ptr_mut(0), DB_DATA_SCRATCH.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: the per-CPU values are this program's for its run.
    let (w, s) = unsafe { (&mut *w, &mut *s) };
    if w.left == 0 {
        w.done = 1;
        return 1;
    }
    if w.phase >= PHASE_LOST as u64 {
        return 1;
    }
    if w.seg_left == 0 {
        return next_segment(w);
    }
    let avail = w.seg_left.min(w.left);
    if w.rest > 0 {
        let take = w.rest.min(avail);
        if w.capture > 0 {
            let copied = if w.names_left > 0 {
                capture_names(w, s, take.min(w.capture))
            } else {
                capture(w, s, take.min(w.capture), false)
            };
            if copied == 0 {
                w.phase = PHASE_LOST as u64;
                return 1;
            }
            w.capture -= copied.min(w.capture);
            w.rest -= copied.min(w.rest);
            advance(w, copied);
        } else {
            elide(w, s, take);
            w.rest -= take;
            advance(w, take);
        }
        return 0;
    }
    header_step(w, s, avail)
}

/// Moves to the next iovec (bounded by the call's length); 1 when there is none.
#[inline(always)]
pub(crate) fn next_segment(w: &mut Walk) -> c_long {
    if w.iov_next >= w.iov_count || w.iov_next >= 1024 {
        w.done = 1;
        return 1;
    }
    let at = w.iov + w.iov_next * size_of::<IoVec>() as u64;
    // SAFETY: the helper checks the user address and fails instead of faulting.
    let Ok(v) = (unsafe { bpf_probe_read_user(at as *const IoVec) }) else {
        w.phase = PHASE_LOST as u64;
        return 1;
    };
    w.iov_next += 1;
    w.seg_ptr = v.base;
    w.seg_left = v.len.min(w.left);
    0
}

/// Bytes of header the phase needs.
#[inline(always)]
fn header_len(phase: u64) -> u64 {
    match phase as u32 {
        PHASE_UNTYPED => 8,
        PHASE_ANSWER => 1,
        _ => 5,
    }
}

/// Reads (and captures) the next header bytes; at a complete header, decides the body.
#[inline(always)]
fn header_step(w: &mut Walk, s: &mut DbDataScratch, avail: u64) -> c_long {
    let need = header_len(w.phase).saturating_sub(w.hdr_have);
    let n = need.min(avail);
    if n == 0 || n > 8 {
        w.phase = PHASE_LOST as u64;
        return 1;
    }
    // Bytes one by one into the header (at most 8): a header split across calls is rare,
    // and the common whole one is one small read.
    if w.hdr_have == 0 && n == need {
        let ok = match need {
            8 => read_into(&mut w.hdr, w.seg_ptr, 8),
            1 => read_into(&mut w.hdr, w.seg_ptr, 1),
            _ => read_into(&mut w.hdr, w.seg_ptr, 5),
        };
        if !ok {
            w.phase = PHASE_LOST as u64;
            return 1;
        }
    } else {
        for k in 0..8u64 {
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
    if w.hdr_have < header_len(w.phase) {
        return 0;
    }
    let h = w.hdr;
    match w.phase as u32 {
        PHASE_ANSWER => match h[0] {
            b'S' | b'G' => {
                w.hdr_have = 0;
                w.encrypted = 1;
                w.done = 1;
                return 1;
            }
            // Refused: the client goes on with another untyped request.
            b'N' => {
                w.hdr_have = 0;
                w.phase = PHASE_TYPED as u64;
            }
            // An ErrorResponse instead (old servers): this byte is its type.
            _ => w.phase = PHASE_TYPED as u64,
        },
        PHASE_UNTYPED => {
            let len = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
            let code = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            if !(8..=MAX_STARTUP).contains(&len) {
                w.phase = PHASE_LOST as u64;
                return 1;
            }
            w.hdr_have = 0;
            w.rest = len - 8;
            w.capture = 0;
            match code {
                SSL_REQUEST | GSSENC_REQUEST => w.answer_due = 1,
                CANCEL_REQUEST => {}
                c if c >> 16 == 3 => {
                    w.phase = PHASE_TYPED as u64;
                    w.capture = w.rest.min(text_capture());
                }
                _ => {
                    w.phase = PHASE_LOST as u64;
                    return 1;
                }
            }
        }
        _ => {
            let len = u64::from(u32::from_be_bytes([h[1], h[2], h[3], h[4]]));
            if !(4..=MAX_MESSAGE).contains(&len) {
                w.phase = PHASE_LOST as u64;
                return 1;
            }
            w.hdr_have = 0;
            w.rest = len - 4;
            let to_server = w.to_server != 0;
            w.capture = body_capture(to_server, h[0], w.rest, w.sasl != 0);
            w.names_left = if to_server && h[0] == b'B' { 2 } else { 0 };
            if to_server && h[0] == b'p' {
                w.sasl = 0;
            }
            if !to_server && h[0] == b'R' && w.rest >= 4 && w.seg_left >= 4 {
                // SAFETY: the helper checks the user address.
                if let Ok(code) = unsafe { bpf_probe_read_user(w.seg_ptr as *const [u8; 4]) } {
                    w.sasl = (u32::from_be_bytes(code) == AUTH_SASL) as u64;
                }
            }
        }
    }
    0
}

/// Reads `len` (1, 5 or 8) bytes at user address `src` into `hdr`.
#[inline(always)]
fn read_into(hdr: &mut [u8; 8], src: u64, len: u32) -> bool {
    // SAFETY: at most 8 bytes into an 8-byte array; the helper checks the user address.
    let rc = unsafe {
        raw_probe_read_user(
            hdr.as_mut_ptr().cast(),
            len & 15,
            src as *const core::ffi::c_void,
        )
    };
    rc == 0
}

/// `value` read again from memory: the compiler cannot drop the mask that follows because it
/// proved a bound the verifier does not see (6.12 refused an offset the compiler had left
/// unmasked).
#[inline(always)]
pub(crate) fn fresh(value: &u64) -> u64 {
    // SAFETY: a valid reference.
    unsafe { core::ptr::read_volatile(value) }
}

/// `n` bytes of the call walked.
#[inline(always)]
pub(crate) fn advance(w: &mut Walk, n: u64) {
    w.seg_ptr += n;
    w.seg_left -= n.min(w.seg_left);
    w.left -= n.min(w.left);
}

/// Opens a span (sending the record first when no room is left for one and a whole header
/// after it: a header is never cut across records).
#[inline(always)]
pub(crate) fn open_span(w: &mut Walk, s: &mut DbDataScratch, flags: u64) {
    close_span(w, s);
    if w.used + SPAN_HEADER + MAX_HEADER >= CAP {
        flush(w, s);
    }
    w.span_open = 1;
    w.span_at = w.used;
    w.used += SPAN_HEADER;
    w.span_moved = 0;
    w.span_captured = 0;
    w.span_flags = flags;
    w.spans += 1;
}

/// Writes the open span's header.
#[inline(always)]
pub(crate) fn close_span(w: &mut Walk, s: &mut DbDataScratch) {
    if w.span_open == 0 {
        return;
    }
    w.span_open = 0;
    let span = DbSpan {
        moved: w.span_moved as u32,
        captured: w.span_captured as u16,
        flags: w.span_flags as u16,
    };
    let at = (fresh(&w.span_at) & (CAP - 1)) as usize;
    // SAFETY: `at < DB_CAPTURE_LEN` in a `2 * DB_CAPTURE_LEN` array.
    unsafe {
        core::ptr::write_unaligned(s.data.as_mut_ptr().add(at).cast::<DbSpan>(), span);
    }
}

/// Makes room in the record for up to `n` bytes at the walk's position (a new span when the
/// open one has elided bytes or `boundary` is set; a new record when this one is full):
/// where they go in `s.data` and how many fit, 1..=`DB_CAPTURE_LEN` in forms the verifier can
/// bound; `None` when none do.
#[inline(always)]
fn reserve(w: &mut Walk, s: &mut DbDataScratch, n: u64, boundary: bool) -> Option<(u64, u64)> {
    if boundary || w.span_open == 0 || w.span_moved > w.span_captured {
        open_span(
            w,
            s,
            if boundary {
                u64::from(SPAN_BOUNDARY)
            } else {
                0
            },
        );
    }
    if w.used >= CAP {
        flush(w, s);
        open_span(w, s, 0);
    }
    let room = CAP - w.used.min(CAP);
    let n = n.min(room);
    if n == 0 {
        return None;
    }
    Some((fresh(&w.used) & (CAP - 1), ((n - 1) & (CAP - 1)) + 1))
}

/// `len` bytes copied into the record and walked past.
#[inline(always)]
fn commit(w: &mut Walk, len: u64) {
    w.used += len;
    w.span_moved += len;
    w.span_captured += len;
}

/// Copies up to `n` bytes at the walk's position into the record; returns how many were
/// copied (0 when they could not be read).
#[inline(always)]
pub(crate) fn capture(w: &mut Walk, s: &mut DbDataScratch, n: u64, boundary: bool) -> u64 {
    let Some((at, len)) = reserve(w, s, n, boundary) else {
        return 0;
    };
    if read_user_into(s, at, len, w.seg_ptr, false) != 0 {
        return 0;
    }
    commit(w, len);
    len
}

/// Reads `len` bytes (1..=`DB_CAPTURE_LEN`) at user address `src` into the record at `at`
/// (below `DB_CAPTURE_LEN`), as a string when `string` (up to and with its first NUL; the
/// bytes copied are returned); otherwise 0 on success.
#[inline(always)]
fn read_user_into(s: &mut DbDataScratch, at: u64, len: u64, src: u64, string: bool) -> c_long {
    // SAFETY: at most `DB_CAPTURE_LEN` bytes at an offset below `DB_CAPTURE_LEN` in a
    // `2 * DB_CAPTURE_LEN` array; the helpers check the user address.
    unsafe {
        let dst = s.data.as_mut_ptr().add(at as usize).cast();
        let src = src as *const core::ffi::c_void;
        if string {
            raw_probe_read_user_str(dst, len as u32, src)
        } else {
            raw_probe_read_user(dst, len as u32, src)
        }
    }
}

/// Like [`capture`], for a Bind's body: copies up to `n` bytes but no further than the end
/// (the NUL) of the name being read; at the end of the second name (the statement's, after
/// the portal's) the capture ends, so the parameter formats and values that follow are never
/// read. A name cut by the end of the buffer goes on in the next step.
#[inline(always)]
fn capture_names(w: &mut Walk, s: &mut DbDataScratch, n: u64) -> u64 {
    let Some((at, len)) = reserve(w, s, n, false) else {
        return 0;
    };
    let rc = read_user_into(s, at, len, w.seg_ptr, true);
    if rc <= 0 {
        return 0;
    }
    let got = (rc as u64).min(len);
    let mut ended = got < len;
    if !ended {
        // The helper ends what it copies with a NUL even where it found none: the last byte
        // as it is decides whether the name ended there.
        let last = (at + len - 1) & (CAP - 1);
        // SAFETY: the helper checks the user address.
        let Ok(byte) = (unsafe { bpf_probe_read_user((w.seg_ptr + len - 1) as *const u8) }) else {
            return 0;
        };
        // SAFETY: `last < DB_CAPTURE_LEN` in a `2 * DB_CAPTURE_LEN` array.
        unsafe { *s.data.as_mut_ptr().add(last as usize) = byte };
        ended = byte == 0;
    }
    commit(w, got);
    if ended {
        w.names_left -= w.names_left.min(1);
        if w.names_left == 0 {
            w.capture = 0;
        }
    }
    got
}

/// `n` bytes at the walk's position stay in the kernel: the open span's end.
#[inline(always)]
pub(crate) fn elide(w: &mut Walk, s: &mut DbDataScratch, n: u64) {
    if w.span_open == 0 {
        open_span(w, s, 0);
    }
    w.span_moved += n;
}

/// Sends the record built so far and starts the next (the open span, if any, is closed: the
/// next bytes open a continuation). A refused record is counted on the direction.
#[inline(always)]
pub(crate) fn flush(w: &mut Walk, scratch: &mut DbDataScratch) {
    close_span(w, scratch);
    scratch.event.captured = w.used as u32;
    scratch.event.spans = w.spans as u32;
    scratch.event.lost = w.lost as u32;
    let len = offset_of!(DbDataScratch, data) + (fresh(&w.used) & (2 * CAP - 1)) as usize;
    if len <= size_of::<DbDataScratch>() {
        // SAFETY: `len` is within the scratch value.
        let bytes = unsafe {
            core::slice::from_raw_parts((scratch as *const DbDataScratch).cast::<u8>(), len)
        };
        if output(Kind::DbData, bytes).is_ok() {
            w.lost = 0;
        } else {
            w.lost += 1;
        }
    }
    w.used = 0;
    w.spans = 0;
    scratch.event.header.flags |= FLAG_DB_CONTINUED;
}

/// The framing a joined session's call is tried as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Typed messages: a type byte and a 4-byte big-endian length.
    Postgres,
    /// Packets: a 3-byte little-endian length and consecutive sequence ids.
    MySql,
}

/// The state of [`tiles`], in a per-CPU map value for the same reason as [`Walk`]'s.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tiling {
    ptr: u64,
    left: u64,
    to_server: u64,
    mysql: u64,
    /// The sequence id the next MySQL packet must have (256: any, at the first).
    seq: u64,
    /// 1: the call ended exactly at the end of a message.
    whole: u64,
}

/// Whether a call of `len` bytes is whole messages of `framing` from its first byte to its
/// last: each header valid for its direction (a type a PostgreSQL frontend or backend sends,
/// a length no message exceeds; consecutive MySQL sequence ids), each body within the call,
/// the last ending where the call does (or, for MySQL, a call that is one packet's header
/// alone, as a server reading headers apart makes). A call that starts or ends inside a
/// message (a joined session's result in flight) fails, so a joined direction's walk starts
/// only at a known boundary; a vectored call is tried only when its first iovec holds it all.
#[inline(always)]
pub fn tiles(source: Source, len: u64, to_server: bool, framing: Framing) -> bool {
    let ptr = match source {
        Source::Flat(ptr) => ptr,
        Source::Vector { iov, count } => {
            if count == 0 {
                return false;
            }
            // SAFETY: the helper checks the user address.
            let Ok(v) = (unsafe { bpf_probe_read_user(iov as *const IoVec) }) else {
                return false;
            };
            if v.len < len {
                return false;
            }
            v.base
        }
    };
    let Some(t) = DB_TILING.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the per-CPU value is this program's for its run.
    let t = unsafe { &mut *t };
    *t = Tiling {
        ptr,
        left: len,
        to_server: u64::from(to_server),
        mysql: u64::from(framing == Framing::MySql),
        seq: 256,
        whole: 0,
    };
    // SAFETY: the callback is a static function; it finds its state in `DB_TILING`.
    unsafe {
        bpf_loop(
            TILING_STEPS,
            tile_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    t.whole != 0
}

/// Messages [`tiles`] follows in one call; a call of more is not tried.
const TILING_STEPS: u32 = 1024;

/// One message of [`tiles`]; 1 ends the walk.
extern "C" fn tile_step(_step: u64, _ctx: *mut c_void) -> c_long {
    let Some(t) = DB_TILING.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU value is this program's for its run.
    let t = unsafe { &mut *t };
    if t.left == 0 {
        t.whole = 1;
        return 1;
    }
    let mut h = [0u8; 8];
    // Constant sizes, one per branch, for the verifier.
    let read = if t.mysql != 0 {
        t.left >= 4 && read_into(&mut h, t.ptr, 4)
    } else {
        t.left >= 5 && read_into(&mut h, t.ptr, 5)
    };
    if !read {
        return 1;
    }
    let message = if t.mysql != 0 {
        let seq = u64::from(h[3]);
        if t.seq != 256 && seq != t.seq {
            return 1;
        }
        t.seq = (seq + 1) & 0xff;
        4 + u64::from(u32::from_le_bytes([h[0], h[1], h[2], 0]))
    } else {
        let known = if t.to_server != 0 {
            matches!(
                h[0],
                b'B' | b'C'
                    | b'D'
                    | b'E'
                    | b'F'
                    | b'H'
                    | b'P'
                    | b'Q'
                    | b'S'
                    | b'X'
                    | b'c'
                    | b'd'
                    | b'f'
                    | b'p'
            )
        } else {
            matches!(
                h[0],
                b'1' | b'2'
                    | b'3'
                    | b'A'
                    | b'C'
                    | b'D'
                    | b'E'
                    | b'G'
                    | b'H'
                    | b'I'
                    | b'K'
                    | b'N'
                    | b'R'
                    | b'S'
                    | b'T'
                    | b'V'
                    | b'W'
                    | b'Z'
                    | b'c'
                    | b'd'
                    | b'n'
                    | b's'
                    | b't'
                    | b'v'
            )
        };
        let body = u64::from(u32::from_be_bytes([h[1], h[2], h[3], h[4]]));
        if !known || !(4..=MAX_MESSAGE).contains(&body) {
            return 1;
        }
        1 + body
    };
    if message > t.left {
        // A MySQL server reads each packet's 4-byte header apart from its body: a call that
        // is one header alone ends at a boundary too.
        if t.mysql != 0 && t.left == 4 && message > 4 {
            t.whole = 1;
        }
        return 1;
    }
    t.ptr += message;
    t.left -= message;
    0
}
