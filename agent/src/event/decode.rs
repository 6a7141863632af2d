//! Decoding of ring-buffer records. Every record is checked for its kind and length before
//! it is read; an unknown kind or a short record is an error, never undefined behaviour.
//! Text, file identities and socket addresses are decoded here (with [`super::file`],
//! [`super::net`] and [`super::process`]), so enrichment only adds context.

use std::mem::size_of;

use aya::Pod;
use phiguard_common::{
    event::{DbDataEvent, EventHeader, ExecArgsEvent, ExitEvent, ForkEvent, Kind, FLAG_TRUNCATED},
    limits::{ARGS_LEN, DB_CAPTURE_LEN},
};

use super::{
    file::FileOpen,
    net::{Connect, DbSock, TcpState},
    process::Exec,
};
use crate::paths::split_names;

/// A decoded record: owned, its fields typed (only the common header stays the kernel's).
#[derive(Clone, Debug)]
pub enum RawEvent {
    /// A process forked.
    Fork(ForkEvent),
    /// A process exec'd.
    Exec(Exec),
    /// The argv of an exec call.
    ExecArgs(ExecArgs),
    /// A process exited.
    Exit(ExitEvent),
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

/// A capture record: its fixed part and the captured bytes.
#[derive(Clone, Debug)]
pub struct DbData {
    /// The fixed part.
    pub event: DbDataEvent,
    /// The first bytes the call moved (`event.captured` of them).
    pub data: Vec<u8>,
}

/// The argv captured at `execve`/`execveat` entry.
#[derive(Clone, Debug)]
pub struct ExecArgs {
    /// The calling thread.
    pub header: EventHeader,
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
}

impl RawEvent {
    /// The record's common header.
    pub fn header(&self) -> &EventHeader {
        match self {
            RawEvent::Fork(e) => &e.header,
            RawEvent::Exec(e) => &e.header,
            RawEvent::ExecArgs(e) => &e.header,
            RawEvent::Exit(e) => &e.header,
            RawEvent::FileOpen(e) => &e.header,
            RawEvent::Connect(e) => &e.header,
            RawEvent::SockState(e) => &e.header,
            RawEvent::DbSock(e) => &e.header,
            RawEvent::DbData(e) => &e.event.header,
        }
    }

    /// The policy decision the record carries, if its kind carries one.
    pub fn decision_mut(&mut self) -> Option<&mut phiguard_common::policy::Decision> {
        match self {
            RawEvent::Exec(e) => Some(&mut e.decision),
            RawEvent::FileOpen(e) => Some(&mut e.decision),
            RawEvent::Connect(e) => Some(&mut e.decision),
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
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let code = read::<u32>(bytes, 0)?;
    let kind = Kind::from_code(code).ok_or(DecodeError::UnknownKind(code))?;
    Ok(match kind {
        Kind::Fork => RawEvent::Fork(read(bytes, code)?),
        Kind::Exec => RawEvent::Exec(Exec::decode(&read(bytes, code)?)),
        Kind::Exit => RawEvent::Exit(read(bytes, code)?),
        Kind::FileOpen => RawEvent::FileOpen(FileOpen::decode(&read(bytes, code)?)),
        Kind::Connect => RawEvent::Connect(Connect::decode(&read(bytes, code)?)),
        Kind::SockState => RawEvent::SockState(TcpState::decode(&read(bytes, code)?)),
        Kind::DbSock => RawEvent::DbSock(DbSock::decode(&read(bytes, code)?)),
        Kind::DbData => {
            let event: DbDataEvent = read(bytes, code)?;
            let len = (event.captured as usize).min(DB_CAPTURE_LEN);
            let data = bytes
                .get(size_of::<DbDataEvent>()..size_of::<DbDataEvent>() + len)
                .ok_or(DecodeError::TooShort {
                    kind: code,
                    len: bytes.len(),
                    expected: size_of::<DbDataEvent>() + len,
                })?;
            RawEvent::DbData(DbData {
                event,
                data: data.to_vec(),
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
            RawEvent::ExecArgs(ExecArgs {
                header: fixed.header,
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

/// A NUL-padded array (`comm`) as text.
pub fn c_text(buf: &[u8]) -> String {
    text(buf, buf.len() as u32)
}

#[cfg(test)]
mod tests {
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
            RawEvent::Exit(e) => {
                assert_eq!(e.exit_code, 256);
                assert_eq!(c_text(&e.header.comm), "cat");
            }
            other => panic!("decoded as {other:?}"),
        }
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
            RawEvent::ExecArgs(a) => {
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
        let RawEvent::ExecArgs(a) = decode(&bytes).unwrap() else {
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
