//! Database sessions: which sockets are database sockets, and the first bytes of every read
//! and write on them.
//!
//! A socket becomes tracked when `connect()` returns on it with a database port or unix
//! socket as its peer (client side), or when `accept()`/`accept4()` returns it from a
//! database listener (server side). Its process, and every child forked later (PostgreSQL
//! forks a backend per connection), is marked in `DB_PROCESSES`.
//!
//! The capture hooks are `sys_exit_*` tracepoints only, so each runs once for every `read`,
//! `write`, `sendto`, `recvfrom`, `readv`, `writev`, `sendmsg` and `recvmsg` on the host; the
//! descriptor and buffer come from the saved user registers (`crate::syscall`), so there is no
//! entry hook and no per-thread map. What they do for a process without database sockets is one
//! hash lookup (`DB_PROCESSES`). For a process with some, the descriptor is followed to its
//! `struct sock` (four kernel reads) and looked up in `DB_SOCKS`; only tracked sockets get a
//! record: for a PostgreSQL or MySQL session the call's messages as the framing walk leaves
//! them (`crate::programs::db_frame`, `crate::programs::db_mysql`: headers and the bodies the
//! audit reads, never rows); for anything else at most `DB_CAPTURE_LEN` bytes (from the first `MAX_DB_IOVECS` iovecs of a
//! vectored call).
//!
//! Sessions opened before the agent started are joined: user space finds their sockets at
//! start-up (`DB_JOIN`, by the socket's device and inode) and marks their processes
//! `db_process::JOIN`. For those processes only, a read or write on an untracked descriptor
//! looks its (device, inode) up there (four more kernel reads and one lookup) and, when found,
//! tracks it as `connect`/`accept` would have, with `FLAG_DB_JOINED`.

use core::mem::{offset_of, size_of};

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::bpf_probe_read_user as raw_probe_read_user,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext as _,
};
use phiguard_common::{
    event::{
        db_op, db_role, db_syscall, DbDataScratch, DbSockEvent, Kind, FLAG_DB_JOINED,
        FLAG_DB_UNDELIVERED, FLAG_TRUNCATED,
    },
    limits::{DB_CAPTURE_LEN, DB_TAIL_LEN, MAX_DB_IOVECS},
    maps::{db_process, InodeKey},
    program::Program,
};

use crate::{
    emit::{count_lost, fill_header, output, submit},
    error::{finish, or_fault, or_skip, ProbeError, ProbeResult},
    kernel::{File, Sock, Task},
    maps::{
        DbFraming, DbSock, DB_DATA_SCRATCH, DB_JOIN, DB_PORTS, DB_PROCESSES, DB_SOCKS,
        DB_UNIX_SOCKETS, EVENTS,
    },
    programs::{
        db_frame::{self, FirstBytes, Framing, IoVec, Source},
        db_mysql,
    },
    syscall::SyscallArgs,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `EINPROGRESS`: a non-blocking connect (libpq's) is under way.
const EINPROGRESS: i64 = 115;
/// `EPIPE`, `ECONNRESET`: a write to a connection whose peer is gone.
const EPIPE: i64 = 32;
const ECONNRESET: i64 = 104;
/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Marks `child` as holding database sockets when the forking process does.
#[inline(always)]
pub fn inherit(child_tgid: u32) {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    if let Some(&mark) = unsafe { DB_PROCESSES.get(parent) } {
        let _ = DB_PROCESSES.insert(child_tgid, mark, 0);
    }
}

/// Forgets an exiting process.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = DB_PROCESSES.remove(tgid);
}

/// `syscalls/sys_exit_connect`: `ret` at 16; `fd` (argument 0) from the saved registers.
/// Needs 5.15 (`bpf_task_pt_regs`).
#[tracepoint]
pub fn db_sys_exit_connect(ctx: TracePointContext) -> i32 {
    finish(Program::DbSysExitConnect, try_exit_connect(&ctx));
    0
}

/// The return value of a `sys_exit_*` call (offset 16 of the record).
#[inline(always)]
fn ret_of(ctx: &TracePointContext) -> ProbeResult<i64> {
    // SAFETY: offset 16 of the record is the return value.
    unsafe { ctx.read_at::<i64>(16) }.map_err(|_| ProbeError::Fault)
}

fn try_exit_connect(ctx: &TracePointContext) -> ProbeResult {
    let ret = ret_of(ctx)?;
    if ret != 0 && ret != -EINPROGRESS {
        return Err(ProbeError::Skip);
    }
    let fd = SyscallArgs::current().arg(0) as i32;
    let file = Task::current().file(fd as u32)?;
    track(file, fd, db_role::CLIENT, 0)
}

/// `syscalls/sys_exit_accept`: `ret` (the new descriptor) at 16.
#[tracepoint]
pub fn db_sys_exit_accept(ctx: TracePointContext) -> i32 {
    finish(Program::DbSysExitAccept, try_exit_accept(&ctx));
    0
}

/// `syscalls/sys_exit_accept4`: `ret` (the new descriptor) at 16.
#[tracepoint]
pub fn db_sys_exit_accept4(ctx: TracePointContext) -> i32 {
    finish(Program::DbSysExitAccept4, try_exit_accept(&ctx));
    0
}

fn try_exit_accept(ctx: &TracePointContext) -> ProbeResult {
    let ret = ret_of(ctx)?;
    if ret < 0 {
        return Err(ProbeError::Skip);
    }
    let file = Task::current().file(ret as u32)?;
    track(file, ret as i32, db_role::SERVER, 0)
}

/// Tracks the socket `file` (descriptor `fd`) when its database end is a configured port or
/// unix socket, and reports it with the header `flags` given.
#[inline(always)]
fn track(file: File, fd: i32, role: u32, flags: u32) -> ProbeResult {
    let sk = file.sock()?;
    let family = sk.family()?;
    let (mut sport, mut dport, mut dev, mut ino) = (0u16, 0u16, 0u32, 0u64);
    let (mut saddr, mut daddr) = ([0u8; 16], [0u8; 16]);
    if family == AF_INET || family == AF_INET6 {
        let (local, remote) = sk.ports()?;
        sport = local;
        dport = u16::from_be(remote);
        (saddr, daddr) = sk.addrs(family == AF_INET6)?;
        let db_port = if role == db_role::CLIENT {
            dport
        } else {
            sport
        };
        // SAFETY: value not used.
        if unsafe { DB_PORTS.get(u32::from(db_port)) }.is_none() {
            return Err(ProbeError::Skip);
        }
    } else if family == AF_UNIX {
        // The accepted socket shares its listener's path; the client's peer is that socket.
        let bound = if role == db_role::CLIENT {
            sk.unix_peer()?
        } else {
            sk
        };
        let dentry = bound.unix_dentry()?;
        if dentry.is_null() {
            return Err(ProbeError::Skip); // an abstract socket
        }
        dev = dentry.dev()?;
        ino = dentry.ino()?;
        let key = InodeKey { dev, slot: 0, ino };
        // SAFETY: value not used.
        if unsafe { DB_UNIX_SOCKETS.get(key) }.is_none() {
            return Err(ProbeError::Skip);
        }
    } else {
        return Err(ProbeError::Skip);
    }
    let mut entry = DbSock {
        role,
        family: u32::from(family),
        socket: file.socket()?.addr() as u64,
        framing: DbFraming::default(),
    };
    if flags & FLAG_DB_JOINED != 0 {
        // Joined mid-session: no startup request to recognise PostgreSQL by; its calls are
        // tried as whole messages instead.
        entry.framing.mode = db_frame::MODE_JOINED;
    }
    DB_SOCKS
        .insert(sk.addr() as u64, entry, 0)
        .map_err(|_| ProbeError::Fault)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // A `JOIN` mark stays: the process may hold more sockets to join.
    let _ = DB_PROCESSES.insert(tgid, db_process::TRACKED, BPF_NOEXIST);

    let Some(mut record) = EVENTS.reserve::<DbSockEvent>(0) else {
        count_lost(Kind::DbSock);
        return Err(ProbeError::Lost);
    };
    let event = record.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size, written field by field.
    unsafe {
        fill_header(&mut (*event).header, Kind::DbSock);
        (*event).header.flags |= flags;
        (*event).sock = sk.addr() as u64;
        (*event).role = role;
        (*event).fd = fd;
        (*event).family = family;
        (*event).sport = sport;
        (*event).dport = dport;
        (*event)._pad = 0;
        (*event).dev = dev;
        (*event)._pad2 = 0;
        (*event).ino = ino;
        (*event).saddr = saddr;
        (*event).daddr = daddr;
    }
    submit(record);
    Ok(())
}

/// How a call's second argument points at the bytes it moved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Buffer {
    /// A plain buffer (`read`, `write`, `sendto`, `recvfrom`).
    Flat,
    /// An `iovec` array, its length in argument 2 (`readv`, `writev`).
    Vector,
    /// A `struct user_msghdr` (`sendmsg`, `recvmsg`).
    Message,
}

// x86_64 system call numbers of the calls [`db_sys_exit_io`] is attached to.
const NR_READ: u64 = 0;
const NR_WRITE: u64 = 1;
const NR_READV: u64 = 19;
const NR_WRITEV: u64 = 20;
const NR_SENDTO: u64 = 44;
const NR_RECVFROM: u64 = 45;
const NR_SENDMSG: u64 = 46;
const NR_RECVMSG: u64 = 47;

/// `syscalls/sys_exit_{read,write,recvfrom,sendto,readv,writev,recvmsg,sendmsg}`, one program
/// attached at all eight: `__syscall_nr` at 8 says which call, `ret` at 16; `fd` and the
/// buffer come from the saved registers (5.15). One program instead of eight: the verifier
/// checks the framing walks once per agent start (about a second each on the host's kernel),
/// not once per call.
#[tracepoint]
pub fn db_sys_exit_io(ctx: TracePointContext) -> i32 {
    // SAFETY: offset 8 of every sys_exit_* record is `int __syscall_nr`; a tracepoint program
    // may load its record directly (the verifier checks the bounds).
    let nr = unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(8) as *const i32) };
    let (op, syscall, buffer) = match nr as u64 {
        NR_READ => (db_op::READ, db_syscall::READ, Buffer::Flat),
        NR_WRITE => (db_op::WRITE, db_syscall::WRITE, Buffer::Flat),
        NR_RECVFROM => (db_op::READ, db_syscall::RECVFROM, Buffer::Flat),
        NR_SENDTO => (db_op::WRITE, db_syscall::SENDTO, Buffer::Flat),
        NR_READV => (db_op::READ, db_syscall::READV, Buffer::Vector),
        NR_WRITEV => (db_op::WRITE, db_syscall::WRITEV, Buffer::Vector),
        NR_RECVMSG => (db_op::READ, db_syscall::RECVMSG, Buffer::Message),
        NR_SENDMSG => (db_op::WRITE, db_syscall::SENDMSG, Buffer::Message),
        _ => return 0, // attached only at those eight
    };
    finish(Program::DbSysExitIo, try_exit_io(&ctx, op, syscall, buffer));
    0
}

/// `struct user_msghdr.msg_iov` and `.msg_iovlen`.
const MSG_IOV: u64 = 16;
const MSG_IOVLEN: u64 = 24;

/// At exit: when the calling process holds database sockets and `fd` is a tracked one, sends
/// the call's PostgreSQL or MySQL messages (framed), or the first bytes the call moved (and, for a long
/// plain-buffer call, its last bytes). The common case, a process without database sockets,
/// costs one hash lookup. A descriptor that is not a socket (its `sock` unreadable) is
/// skipped, not a fault: database processes read files too.
#[inline(always)]
fn try_exit_io(ctx: &TracePointContext, op: u32, syscall: u32, buffer: Buffer) -> ProbeResult {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let mark = or_skip(unsafe { DB_PROCESSES.get(tgid) }.copied())?;
    let mut ret = ret_of(ctx)?;
    // A server's write refused because the client is gone is kept (below, once the socket is
    // known to be a server's): its bytes are the outcome of the client's last statement.
    let undelivered = op == db_op::WRITE && (ret == -EPIPE || ret == -ECONNRESET);
    if ret < 0 && !undelivered {
        return Err(ProbeError::Skip);
    }
    let args = SyscallArgs::current();
    let fd = args.arg(0) as i32;
    let file = Task::current().file(fd as u32)?;
    let sk = file.sock().map_err(|_| ProbeError::Skip)?;
    // SAFETY: copied out at once.
    let sock = match unsafe { DB_SOCKS.get(sk.addr() as u64) }.copied() {
        Some(sock) => sock,
        None if mark == db_process::JOIN => join(file, fd, sk)?,
        None => return Err(ProbeError::Skip),
    };
    if sock.socket != file.socket()?.addr() as u64 {
        return Err(ProbeError::Skip);
    }
    let ptr = args.arg(1);
    if undelivered {
        if sock.role != db_role::SERVER {
            return Err(ProbeError::Skip);
        }
        // What the call asked to write: the length of a plain buffer; for a vector or a
        // message, what its first iovecs hold (at most the capture length).
        ret = match buffer {
            Buffer::Flat => (args.arg(2) as i64).clamp(0, i64::from(u32::MAX)),
            _ => DB_CAPTURE_LEN as i64,
        };
    }

    let scratch = or_fault(DB_DATA_SCRATCH.get_ptr_mut(0))?;
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    let scratch: &mut DbDataScratch = unsafe { &mut *scratch };
    fill_header(&mut scratch.event.header, Kind::DbData);
    scratch.event.sock = sk.addr() as u64;
    scratch.event.role = sock.role;
    scratch.event.op = op;
    scratch.event.syscall = syscall;
    scratch.event.fd = fd;
    scratch.event.len = ret as u32;
    scratch.event.spans = 0;
    scratch.event.lost = 0;
    if undelivered {
        scratch.event.header.flags |= FLAG_DB_UNDELIVERED;
    }
    let source = match buffer {
        Buffer::Flat => Source::Flat(ptr),
        Buffer::Vector => Source::Vector {
            iov: ptr,
            count: args.arg(2),
        },
        Buffer::Message => Source::Vector {
            iov: read_user::<u64>(ptr + MSG_IOV)?,
            count: read_user::<u64>(ptr + MSG_IOVLEN)?,
        },
    };
    if sock.framing.mode != db_frame::MODE_RAW {
        // SAFETY: the entry was found above; a concurrent delete leaves the pointer valid
        // (the map's memory is freed after the program).
        let entry = or_skip(DB_SOCKS.get_ptr_mut(sk.addr() as u64))?;
        // SAFETY: a live map value.
        let entry = unsafe { &mut *entry };
        let to_server = (sock.role == db_role::CLIENT) == (op == db_op::WRITE);
        if entry.framing.mode == db_frame::MODE_UNKNOWN {
            entry.framing.mode = match first_bytes(source, ret as u64) {
                Some(first) if to_server && db_frame::is_startup_request(first) => {
                    db_frame::MODE_POSTGRES
                }
                Some(first) if !to_server && db_mysql::is_greeting(first) => db_mysql::MODE_MYSQL,
                _ if ret == 0 => db_frame::MODE_UNKNOWN,
                _ => db_frame::MODE_RAW,
            };
            if entry.framing.mode == db_frame::MODE_POSTGRES {
                entry.framing.dirs[db_frame::TO_SERVER].phase = db_frame::PHASE_UNTYPED;
            }
            if entry.framing.mode == db_mysql::MODE_MYSQL {
                entry.framing.flags = db_mysql::MY_AUTH;
            }
        }
        if entry.framing.mode == db_frame::MODE_JOINED {
            entry.framing.mode = joined_mode(source, ret as u64, to_server);
            if entry.framing.mode == db_frame::MODE_POSTGRES {
                // Each direction walks from its first call that is whole messages (this one's
                // is tried again below).
                entry.framing.dirs[db_frame::TO_SERVER].phase = db_frame::PHASE_SEEK;
                entry.framing.dirs[db_frame::TO_CLIENT].phase = db_frame::PHASE_SEEK;
            }
            if entry.framing.mode == db_mysql::MODE_MYSQL {
                // Past its login; this call is a command, walked now; the server's packets
                // from the command's answer on (`db_mysql::walk`).
                entry.framing.flags = db_mysql::MY_GREETED | db_mysql::MY_RESPONDED;
                entry.framing.dirs[db_frame::TO_CLIENT].phase = db_frame::PHASE_SEEK;
            }
        }
        let dir = if to_server {
            db_frame::TO_SERVER
        } else {
            db_frame::TO_CLIENT
        };
        if entry.framing.mode == db_frame::MODE_POSTGRES
            && entry.framing.dirs[dir].phase == db_frame::PHASE_SEEK
            && ret > 0
            && db_frame::tiles(source, ret as u64, to_server, Framing::Postgres)
        {
            // A joined session's direction at a known message boundary: walked from here.
            entry.framing.dirs[dir].phase = db_frame::PHASE_TYPED;
        }
        // A joined session not known yet, or a direction of it not at a known boundary yet
        // (a client that splits its messages across calls, a server's result in flight):
        // captured by system call as before the walk existed, so nothing goes unaudited.
        let seeking = entry.framing.mode == db_frame::MODE_JOINED
            || entry.framing.dirs[dir].phase == db_frame::PHASE_SEEK;
        if entry.framing.mode != db_frame::MODE_RAW && !seeking {
            match entry.framing.mode {
                db_frame::MODE_POSTGRES => {
                    db_frame::walk(scratch, entry, dir, source, ret as u64);
                }
                db_mysql::MODE_MYSQL => db_mysql::walk(scratch, entry, dir, source, ret as u64),
                // Unknown yet (an end of stream) or encrypted: the byte count only.
                _ => db_frame::walk(scratch, entry, dir, source, 0),
            }
            return Ok(());
        }
    }
    let wanted = (ret as usize).min(DB_CAPTURE_LEN);
    let captured = match source {
        Source::Flat(ptr) => copy_user(scratch, 0, ptr, wanted),
        Source::Vector { iov, count } => copy_iovecs(scratch, iov, count, wanted),
    };
    if undelivered && buffer != Buffer::Flat {
        ret = captured as i64;
    }
    if captured < ret as usize {
        scratch.event.header.flags |= FLAG_TRUNCATED;
    }
    // The end of a long plain-buffer call too: a burst's closing messages are there.
    let tail = match buffer {
        Buffer::Flat if captured == DB_CAPTURE_LEN && ret as usize > captured => {
            copy_tail(scratch, ptr, ret as usize)
        }
        _ => 0,
    };
    scratch.event.len = ret as u32;
    scratch.event.captured = captured as u32;
    scratch.event.tail = tail as u32;
    let len = offset_of!(DbDataScratch, data) + ((captured + tail) & (2 * DB_CAPTURE_LEN - 1));
    if len > size_of::<DbDataScratch>() {
        return Err(ProbeError::Fault);
    }
    // SAFETY: `len` is within the scratch value.
    let bytes =
        unsafe { core::slice::from_raw_parts((scratch as *const DbDataScratch).cast::<u8>(), len) };
    output(Kind::DbData, bytes)
}

/// A socket of a session opened before the agent started, at its first read or write since:
/// tracked (and reported joined) when user space listed its inode in `DB_JOIN`.
#[inline(always)]
fn join(file: File, fd: i32, sk: Sock) -> ProbeResult<DbSock> {
    let dentry = file.dentry()?;
    let key = InodeKey {
        dev: dentry.dev()?,
        slot: 0,
        ino: dentry.ino()?,
    };
    // SAFETY: copied out at once.
    let role = or_skip(unsafe { DB_JOIN.get(key) }.copied())?;
    let _ = DB_JOIN.remove(key);
    match track(file, fd, role, FLAG_DB_JOINED) {
        // Tracked even when its record was lost: capture goes on.
        Ok(()) | Err(ProbeError::Lost) => {}
        Err(error) => return Err(error),
    }
    // SAFETY: copied out at once.
    or_fault(unsafe { DB_SOCKS.get(sk.addr() as u64) }.copied())
}

/// What a joined session (opened before the agent started) is, from a call of `len` bytes:
/// PostgreSQL when the call is whole PostgreSQL messages (walked from there on, each
/// direction from its first such call); MySQL when it is a client's whole command (walked
/// from it, the server's packets from the command's answer); captured by system call as
/// before when it is TLS (byte counts are all its audit has); undecided otherwise (this call
/// captured by system call, the next one tried again).
#[inline(always)]
fn joined_mode(source: Source, len: u64, to_server: bool) -> u32 {
    if len == 0 {
        return db_frame::MODE_JOINED;
    }
    let Some(first) = first_bytes(source, len) else {
        return db_frame::MODE_JOINED;
    };
    let b = first.bytes;
    // A TLS record: handshake, alert, change cipher spec or data, version 3.x.
    if first.n >= 5 && (20..=23).contains(&b[0]) && b[1] == 3 && b[2] <= 4 {
        return db_frame::MODE_RAW;
    }
    if db_frame::tiles(source, len, to_server, Framing::Postgres) {
        db_frame::MODE_POSTGRES
    } else if to_server && b[3] == 0 && db_frame::tiles(source, len, true, Framing::MySql) {
        // A client's command (sequence 0), whole.
        db_mysql::MODE_MYSQL
    } else {
        db_frame::MODE_JOINED
    }
}

/// The first bytes of a call of `len` bytes, as many of 8, 5 or 4 as its first buffer holds
/// (a client that reads a packet's 4-byte header apart from its body reads 4 first).
#[inline(always)]
fn first_bytes(source: Source, len: u64) -> Option<FirstBytes> {
    let (base, n) = match source {
        Source::Flat(ptr) => (ptr, len),
        Source::Vector { iov, count } => {
            if count == 0 {
                return None;
            }
            let v = read_user::<IoVec>(iov).ok()?;
            (v.base, v.len.min(len))
        }
    };
    // Constant sizes the verifier can bound: a whole startup request or greeting header and
    // its next byte, or the 4-byte header a client reading headers apart reads first.
    let mut first = FirstBytes {
        bytes: [0; 8],
        n: 0,
    };
    first.n = match n {
        8.. => 8,
        5..=7 => 5,
        4 => 4,
        _ => return None,
    };
    // SAFETY: at most 8 bytes into an 8-byte array; the helper checks the user address.
    let rc = unsafe {
        raw_probe_read_user(
            first.bytes.as_mut_ptr().cast(),
            (first.n & 15) as u32,
            base as *const core::ffi::c_void,
        )
    };
    (rc == 0).then_some(first)
}

/// Reads a `T` from user memory (a failure, after the call itself succeeded, is a fault).
#[inline(always)]
fn read_user<T>(addr: u64) -> ProbeResult<T> {
    // SAFETY: the helper checks the user address and fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const T) }.map_err(|_| ProbeError::Fault)
}

/// Copies `min(len, DB_CAPTURE_LEN - at)` bytes from user address `src` to `data[at..]`;
/// returns the new fill level (`at` when nothing could be copied).
#[inline(always)]
fn copy_user(scratch: &mut DbDataScratch, at: usize, src: u64, len: usize) -> usize {
    if at >= DB_CAPTURE_LEN || len == 0 {
        return at;
    }
    let len = len.min(DB_CAPTURE_LEN - at);
    // 1..=DB_CAPTURE_LEN and 0..DB_CAPTURE_LEN in forms the verifier can bound.
    let len = ((len - 1) & (DB_CAPTURE_LEN - 1)) + 1;
    let at = at & (DB_CAPTURE_LEN - 1);
    // SAFETY: at most `DB_CAPTURE_LEN` bytes at an offset below `DB_CAPTURE_LEN` in a
    // `2 * DB_CAPTURE_LEN` array; the helper checks the user address.
    let rc = unsafe {
        raw_probe_read_user(
            scratch.data.as_mut_ptr().add(at).cast(),
            len as u32,
            src as *const core::ffi::c_void,
        )
    };
    if rc == 0 {
        at + len
    } else {
        at
    }
}

/// Copies the last `min(DB_TAIL_LEN, len - DB_CAPTURE_LEN)` of the `len` bytes at user
/// address `src` to `data[DB_CAPTURE_LEN..]`; returns how many (0 when they could not be read).
#[inline(always)]
fn copy_tail(scratch: &mut DbDataScratch, src: u64, len: usize) -> usize {
    let n = len.saturating_sub(DB_CAPTURE_LEN).min(DB_TAIL_LEN);
    if n == 0 {
        return 0;
    }
    // 1..=DB_TAIL_LEN in a form the verifier can bound.
    let n = ((n - 1) & (DB_TAIL_LEN - 1)) + 1;
    // SAFETY: at most `DB_TAIL_LEN` bytes at offset `DB_CAPTURE_LEN` of a `2 * DB_CAPTURE_LEN`
    // array; the helper checks the user address.
    let rc = unsafe {
        raw_probe_read_user(
            scratch.data.as_mut_ptr().add(DB_CAPTURE_LEN).cast(),
            n as u32,
            (src + (len - n) as u64) as *const core::ffi::c_void,
        )
    };
    if rc == 0 {
        n
    } else {
        0
    }
}

/// Copies the first `wanted` bytes described by `count` iovecs at user address `iov` (at most
/// `MAX_DB_IOVECS` of them); returns the bytes copied.
#[inline(always)]
fn copy_iovecs(scratch: &mut DbDataScratch, iov: u64, count: u64, wanted: usize) -> usize {
    let mut at = 0usize;
    for i in 0..MAX_DB_IOVECS {
        if i as u64 >= count || at >= wanted {
            break;
        }
        let Ok(v) = read_user::<IoVec>(iov + (i * size_of::<IoVec>()) as u64) else {
            break;
        };
        let take = (v.len as usize).min(wanted - at);
        let next = copy_user(scratch, at, v.base, take);
        if next != at + take {
            break;
        }
        at = next;
    }
    at
}
