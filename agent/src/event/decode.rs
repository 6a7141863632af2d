//! Decoding of ring-buffer records. Every record is checked for its kind and length before
//! it is read; an unknown kind or a short record is an error, never undefined behaviour.
//! The header, text, file identities and socket addresses are decoded here (with
//! [`super::header`], [`super::file`], [`super::net`] and [`super::process`]), so enrichment
//! only adds context.

use std::mem::size_of;

use aya::Pod;
use phiguard_common::{
    event::{
        DbDataEvent, ExecArgsEvent, ExitEvent, ForkEvent, Kind, FLAG_DB_FRAMED, FLAG_TRUNCATED,
    },
    limits::{ARGS_LEN, DB_CAPTURE_LEN, DB_TAIL_LEN},
};

use super::{
    file::FileOpen,
    header::Header,
    net::{Connect, DbSock, DbTransfer, TcpState},
    process::{Exec, Exit, Fork},
};
use crate::{
    db::frame::{parse_spans, Span, SpanError},
    paths::split_names,
};

/// A record decoded from the ring buffer (or built by the fanotify layer): owned, every field
/// typed, the header included.
#[derive(Clone, Debug)]
pub enum DecodedEvent {
    /// A process forked.
    Fork(Fork),
    /// A process exec'd.
    Exec(Exec),
    /// The argv of an exec call.
    ExecArgs(ExecArgs),
    /// A process exited.
    Exit(Exit),
    /// A watched open returned.
    FileOpen(FileOpen),
    /// A connect() to a watched port.
    Connect(Connect),
    /// A TCP state change on a watched port.
    SockState(TcpState),
    /// A database socket became tracked.
    DbSock(DbSock),
    /// Bytes read or written on a tracked database socket.
    DbData(DbData),
}

/// A capture record: the call and the captured bytes.
#[derive(Clone, Debug)]
pub struct DbData {
    /// The read or write.
    pub transfer: DbTransfer,
    /// The first bytes the call moved (at most [`DB_CAPTURE_LEN`]).
    pub data: Vec<u8>,
    /// The last bytes of a call longer than `data` (at most [`DB_TAIL_LEN`]; empty when not
    /// captured).
    pub tail: Vec<u8>,
    /// A framed record (`FLAG_DB_FRAMED`): its spans over `data`; `None` for the call's first
    /// bytes.
    pub spans: Option<Vec<Span>>,
    /// Framed records of this socket and direction lost in the kernel just before this one.
    pub lost: u32,
}

/// The argv captured at `execve`/`execveat` entry.
#[derive(Clone, Debug)]
pub struct ExecArgs {
    /// The calling thread.
    pub header: Header,
    /// Arguments, lossily decoded as UTF-8.
    pub argv: Vec<String>,
    /// More arguments or bytes existed than were captured.
    pub truncated: bool,
}

/// A record that could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its kind requires.
    #[error("record of kind {kind} is {len} bytes, expected at least {expected}")]
    TooShort {
        /// Kind code.
        kind: u32,
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        expected: usize,
    },
    /// Unknown kind code.
    #[error("record of unknown kind {0}")]
    UnknownKind(u32),
    /// A framed capture record whose spans do not fit its data.
    #[error("framed capture record: {0}")]
    Spans(#[from] SpanError),
}

impl DecodedEvent {
    /// The record's common header.
    pub fn header(&self) -> &Header {
        match self {
            DecodedEvent::Fork(e) => &e.header,
            DecodedEvent::Exec(e) => &e.header,
            DecodedEvent::ExecArgs(e) => &e.header,
            DecodedEvent::Exit(e) => &e.header,
            DecodedEvent::FileOpen(e) => &e.header,
            DecodedEvent::Connect(e) => &e.header,
            DecodedEvent::SockState(e) => &e.header,
            DecodedEvent::DbSock(e) => &e.header,
            DecodedEvent::DbData(e) => &e.transfer.header,
        }
    }

    /// The policy decision the record carries, if its kind carries one.
    pub fn decision_mut(&mut self) -> Option<&mut phiguard_common::policy::Decision> {
        match self {
            DecodedEvent::Exec(e) => Some(&mut e.decision),
            DecodedEvent::FileOpen(e) => Some(&mut e.decision),
            DecodedEvent::Connect(e) => Some(&mut e.decision),
            _ => None,
        }
    }
}

/// Reads a `T` from the front of `bytes`.
fn read<T: Pod>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::TooShort {
            kind,
            len: bytes.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: length checked; `T: Pod` accepts any bit pattern; unaligned read.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<DecodedEvent, DecodeError> {
    let code = read::<u32>(bytes, 0)?;
    let kind = Kind::from_code(code).ok_or(DecodeError::UnknownKind(code))?;
    Ok(match kind {
        Kind::Fork => DecodedEvent::Fork(Fork::decode(&read::<ForkEvent>(bytes, code)?)),
        Kind::Exec => DecodedEvent::Exec(Exec::decode(&read(bytes, code)?)),
        Kind::Exit => DecodedEvent::Exit(Exit::decode(&read::<ExitEvent>(bytes, code)?)),
        Kind::FileOpen => DecodedEvent::FileOpen(FileOpen::decode(&read(bytes, code)?)),
        Kind::Connect => DecodedEvent::Connect(Connect::decode(&read(bytes, code)?)),
        Kind::SockState => DecodedEvent::SockState(TcpState::decode(&read(bytes, code)?)),
        Kind::DbSock => DecodedEvent::DbSock(DbSock::decode(&read(bytes, code)?)),
        Kind::DbData => {
            let event: DbDataEvent = read(bytes, code)?;
            let len = (event.captured as usize).min(DB_CAPTURE_LEN);
            let tail = (event.tail as usize).min(DB_TAIL_LEN);
            let start = size_of::<DbDataEvent>();
            let all = bytes
                .get(start..start + len + tail)
                .ok_or(DecodeError::TooShort {
                    kind: code,
                    len: bytes.len(),
                    expected: start + len + tail,
                })?;
            let (data, tail) = all.split_at(len);
            let spans = if event.header.flags & FLAG_DB_FRAMED != 0 {
                Some(parse_spans(data, event.spans)?)
            } else {
                None
            };
            DecodedEvent::DbData(DbData {
                transfer: DbTransfer::decode(&event),
                data: data.to_vec(),
                tail: tail.to_vec(),
                spans,
                lost: event.lost,
            })
        }
        Kind::ExecArgs => {
            let fixed: ExecArgsEvent = read(bytes, code)?;
            let len = (fixed.args_len as usize).min(ARGS_LEN);
            let args = bytes
                .get(size_of::<ExecArgsEvent>()..size_of::<ExecArgsEvent>() + len)
                .ok_or(DecodeError::TooShort {
                    kind: code,
                    len: bytes.len(),
                    expected: size_of::<ExecArgsEvent>() + len,
                })?;
            let argv = split_names(args, fixed.argc as usize);
            DecodedEvent::ExecArgs(ExecArgs {
                header: Header::decode(&fixed.header),
                argv,
                truncated: fixed.header.flags & FLAG_TRUNCATED != 0,
            })
        }
    })
}

/// The used part of a fixed byte buffer as text.
pub fn text(buf: &[u8], len: u32) -> String {
    let end = (len as usize).min(buf.len());
    let used = &buf[..end];
    let used = used
        .iter()
        .position(|b| *b == 0)
        .map_or(used, |nul| &used[..nul]);
    // Valid UTF-8 (nearly always) is checked by the fast validator; only invalid bytes take
    // the lossy path.
    match std::str::from_utf8(used) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(used).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use phiguard_common::event::EventHeader;

    use super::*;

    fn header(kind: Kind) -> EventHeader {
        // SAFETY: all-zero is a valid header (plain integers).
        let mut h: EventHeader = unsafe { std::mem::zeroed() };
        h.kind = kind as u32;
        h.pid = 42;
        h.tgid = 42;
        h.comm[..3].copy_from_slice(b"cat");
        h
    }

    fn bytes_of<T: Pod>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a Pod value.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_exit() {
        let event = ExitEvent {
            header: header(Kind::Exit),
            exit_code: 256,
            _pad: 0,
        };
        match decode(&bytes_of(&event)).unwrap() {
            DecodedEvent::Exit(e) => {
                assert_eq!(e.exit_code, 256);
                assert_eq!(e.header.comm, "cat");
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn a_capture_record_splits_into_its_head_and_its_tail() {
        let event = DbDataEvent {
            header: header(Kind::DbData),
            sock: 1,
            role: 0,
            op: 0,
            syscall: 0,
            fd: 3,
            len: 10_000,
            captured: 5,
            tail: 3,
            spans: 0,
            lost: 0,
        };
        let mut bytes = bytes_of(&event);
        bytes.extend_from_slice(b"headsend");
        match decode(&bytes).unwrap() {
            DecodedEvent::DbData(d) => {
                assert_eq!((&d.data[..], &d.tail[..]), (&b"heads"[..], &b"end"[..]));
                assert_eq!(d.transfer.len, 10_000);
            }
            other => panic!("decoded as {other:?}"),
        }
        // A record shorter than its head and tail say is refused, not read past.
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn decodes_variable_length_argv() {
        let fixed = ExecArgsEvent {
            header: header(Kind::ExecArgs),
            argc: 4,
            args_len: 20,
        };
        let mut bytes = bytes_of(&fixed);
        bytes.extend_from_slice(b"/bin/echo\0a\0b\0c\0\0\0\0\0");
        match decode(&bytes).unwrap() {
            DecodedEvent::ExecArgs(a) => {
                assert_eq!(a.argv, ["/bin/echo", "a", "b", "c"]);
                assert!(!a.truncated);
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn argv_truncated_flag_and_missing_final_nul() {
        let mut fixed = ExecArgsEvent {
            header: header(Kind::ExecArgs),
            argc: 2,
            args_len: 7,
        };
        fixed.header.flags = FLAG_TRUNCATED;
        let mut bytes = bytes_of(&fixed);
        bytes.extend_from_slice(b"ls\0-lah");
        let DecodedEvent::ExecArgs(a) = decode(&bytes).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(a.argv, ["ls", "-lah"]);
        assert!(a.truncated);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let event = ExitEvent {
            header: header(Kind::Exit),
            exit_code: 0,
            _pad: 0,
        };
        let bytes = bytes_of(&event);
        assert!(matches!(
            decode(&bytes[..40]),
            Err(DecodeError::TooShort {
                kind: 4,
                len: 40,
                ..
            })
        ));
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert_eq!(decode(&unknown).unwrap_err(), DecodeError::UnknownKind(99));
        assert!(decode(&[1, 0]).is_err());
        // argv longer than the record says it holds
        let fixed = ExecArgsEvent {
            header: header(Kind::ExecArgs),
            argc: 1,
            args_len: 100,
        };
        assert!(matches!(
            decode(&bytes_of(&fixed)),
            Err(DecodeError::TooShort { .. })
        ));
    }

    #[test]
    fn text_stops_at_nul_and_len() {
        assert_eq!(text(b"abc\0def", 7), "abc");
        assert_eq!(text(b"abcdef", 3), "abc");
        assert_eq!(text(b"abc", 99), "abc");
        assert_eq!(text(b"a\xffb\0", 4), "a\u{fffd}b");
    }
}
