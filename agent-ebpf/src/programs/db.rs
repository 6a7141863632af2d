//! Database sessions: which sockets are database sockets, and the first bytes of every read
//! and write on them.
//!
//! A socket becomes tracked when `connect()` returns on it with a database port or unix
//! socket as its peer (client side), or when `accept()`/`accept4()` returns it from a
//! database listener (server side). Its process, and every child forked later (PostgreSQL
//! forks a backend per connection), is marked in `DB_PROCESSES`.
//!
//! The capture hooks are syscall tracepoints, so they run for every `read`, `write`,
//! `sendto` and `recvfrom` on the host. What they do for a process without database
//! sockets is one hash lookup (`DB_PROCESSES`) at entry and one (`DB_IO`) at exit. For a
//! process with some, the descriptor is followed to its `struct sock` (four kernel reads) and
//! looked up in `DB_SOCKS`; only tracked sockets get a record, with at most
//! `DB_CAPTURE_LEN` bytes, copied at exit (when a read's data has arrived).

use core::mem::{offset_of, size_of};

use agent_common::{
    event::{db_op, db_role, db_syscall, DbDataScratch, DbSockEvent, Kind, FLAG_TRUNCATED},
    limits::DB_CAPTURE_LEN,
    maps::InodeKey,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    emit::{count_lost, fill_header, output},
    kernel::{
        dentry_dev, dentry_ino, file_sock, sock_family, sock_ports, unix_sock_dentry,
        unix_sock_peer, Task,
    },
    maps::{
        DbIo, DbSock, DB_CONNECTS, DB_DATA_SCRATCH, DB_IO, DB_PORTS, DB_PROCESSES, DB_SOCKS,
        DB_UNIX_SOCKETS, EVENTS,
    },
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `EINPROGRESS`: a non-blocking connect (libpq's) is under way.
const EINPROGRESS: i64 = 115;

/// Marks `child` as holding database sockets when the forking process does.
#[inline(always)]
pub fn inherit(child_tgid: u32) {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: value not used.
    if unsafe { DB_PROCESSES.get(&parent) }.is_some() {
        let _ = DB_PROCESSES.insert(&child_tgid, &1, 0);
    }
}

/// Forgets an exiting process.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = DB_PROCESSES.remove(&tgid);
}

/// `syscalls/sys_enter_connect`: `fd` at 16, `uservaddr` at 24, `addrlen` at 32.
#[tracepoint]
pub fn db_sys_enter_connect(ctx: TracePointContext) -> i32 {
    // SAFETY: offset 16 of the record is the descriptor.
    if let Ok(fd) = unsafe { ctx.read_at::<u64>(16) } {
        let _ = DB_CONNECTS.insert(&bpf_get_current_pid_tgid(), &(fd as i32), 0);
    }
    0
}

/// `syscalls/sys_exit_connect`: `ret` at 16.
#[tracepoint]
pub fn db_sys_exit_connect(ctx: TracePointContext) -> i32 {
    let _ = try_exit_connect(&ctx);
    0
}

fn try_exit_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let fd = *unsafe { DB_CONNECTS.get(&id) }.ok_or(0)?;
    let _ = DB_CONNECTS.remove(&id);
    // SAFETY: offset 16 of the record is the return value.
    let ret = unsafe { ctx.read_at::<i64>(16) }?;
    if ret != 0 && ret != -EINPROGRESS {
        return Ok(());
    }
    track(fd, db_role::CLIENT)
}

/// `syscalls/sys_exit_accept`: `ret` (the new descriptor) at 16.
#[tracepoint]
pub fn db_sys_exit_accept(ctx: TracePointContext) -> i32 {
    let _ = try_exit_accept(&ctx);
    0
}

/// `syscalls/sys_exit_accept4`: `ret` (the new descriptor) at 16.
#[tracepoint]
pub fn db_sys_exit_accept4(ctx: TracePointContext) -> i32 {
    let _ = try_exit_accept(&ctx);
    0
}

fn try_exit_accept(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offset 16 of the record is the return value.
    let ret = unsafe { ctx.read_at::<i64>(16) }?;
    if ret < 0 {
        return Ok(());
    }
    track(ret as i32, db_role::SERVER)
}

/// Tracks the socket behind `fd` when its database end is a configured port or unix socket.
#[inline(always)]
fn track(fd: i32, role: u32) -> Result<(), i64> {
    let file = Task::current().file(fd as u32).map_err(|_| 0i64)?;
    let sk = file_sock(file).map_err(|_| 0i64)?;
    let family = sock_family(sk).map_err(|_| 0i64)?;
    let (mut sport, mut dport, mut dev, mut ino) = (0u16, 0u16, 0u32, 0u64);
    if family == AF_INET || family == AF_INET6 {
        let (local, remote) = sock_ports(sk).map_err(|_| 0i64)?;
        sport = local;
        dport = u16::from_be(remote);
        let db_port = if role == db_role::CLIENT {
            dport
        } else {
            sport
        };
        // SAFETY: value not used.
        if unsafe { DB_PORTS.get(&u32::from(db_port)) }.is_none() {
            return Ok(());
        }
    } else if family == AF_UNIX {
        // The accepted socket shares its listener's path; the client's peer is that socket.
        let bound = if role == db_role::CLIENT {
            unix_sock_peer(sk).map_err(|_| 0i64)?
        } else {
            sk
        };
        let dentry = unix_sock_dentry(bound).map_err(|_| 0i64)?;
        dev = dentry_dev(dentry).map_err(|_| 0i64)?;
        ino = dentry_ino(dentry).map_err(|_| 0i64)?;
        let key = InodeKey { dev, slot: 0, ino };
        // SAFETY: value not used.
        if unsafe { DB_UNIX_SOCKETS.get(&key) }.is_none() {
            return Ok(());
        }
    } else {
        return Ok(());
    }
    let socket_ptr = socket_of(file)?;
    let entry = DbSock {
        role,
        family: u32::from(family),
        socket: socket_ptr,
    };
    DB_SOCKS
        .insert(&(sk as u64), &entry, 0)
        .map_err(i64::from)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    DB_PROCESSES.insert(&tgid, &1, 0).map_err(i64::from)?;

    let Some(mut record) = EVENTS.reserve::<DbSockEvent>(0) else {
        count_lost(Kind::DbSock);
        return Ok(());
    };
    let event = record.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size, written field by field.
    unsafe {
        fill_header(&mut (*event).header, Kind::DbSock);
        (*event).sock = sk as u64;
        (*event).role = role;
        (*event).fd = fd;
        (*event).family = family;
        (*event).sport = sport;
        (*event).dport = dport;
        (*event)._pad = 0;
        (*event).dev = dev;
        (*event)._pad2 = 0;
        (*event).ino = ino;
    }
    record.submit(0);
    Ok(())
}

/// `file->private_data`: the `struct socket *`.
#[inline(always)]
fn socket_of(file: usize) -> Result<u64, i64> {
    crate::kernel::file_socket(file)
        .map(|s| s as u64)
        .map_err(|_| 0)
}

/// `syscalls/sys_enter_write`: `fd` at 16, `buf` at 24, `count` at 32.
#[tracepoint]
pub fn db_sys_enter_write(ctx: TracePointContext) -> i32 {
    let _ = enter_io(&ctx, db_op::WRITE, db_syscall::WRITE);
    0
}

/// `syscalls/sys_enter_read`: `fd` at 16, `buf` at 24, `count` at 32.
#[tracepoint]
pub fn db_sys_enter_read(ctx: TracePointContext) -> i32 {
    let _ = enter_io(&ctx, db_op::READ, db_syscall::READ);
    0
}

/// `syscalls/sys_enter_sendto`: `fd` at 16, `buff` at 24, `len` at 32.
#[tracepoint]
pub fn db_sys_enter_sendto(ctx: TracePointContext) -> i32 {
    let _ = enter_io(&ctx, db_op::WRITE, db_syscall::SENDTO);
    0
}

/// `syscalls/sys_enter_recvfrom`: `fd` at 16, `ubuf` at 24, `size` at 32.
#[tracepoint]
pub fn db_sys_enter_recvfrom(ctx: TracePointContext) -> i32 {
    let _ = enter_io(&ctx, db_op::READ, db_syscall::RECVFROM);
    0
}

/// `syscalls/sys_exit_write`: `ret` at 16.
#[tracepoint]
pub fn db_sys_exit_write(ctx: TracePointContext) -> i32 {
    let _ = exit_io(&ctx);
    0
}

/// `syscalls/sys_exit_read`: `ret` at 16.
#[tracepoint]
pub fn db_sys_exit_read(ctx: TracePointContext) -> i32 {
    let _ = exit_io(&ctx);
    0
}

/// `syscalls/sys_exit_sendto`: `ret` at 16.
#[tracepoint]
pub fn db_sys_exit_sendto(ctx: TracePointContext) -> i32 {
    let _ = exit_io(&ctx);
    0
}

/// `syscalls/sys_exit_recvfrom`: `ret` at 16.
#[tracepoint]
pub fn db_sys_exit_recvfrom(ctx: TracePointContext) -> i32 {
    let _ = exit_io(&ctx);
    0
}

/// At entry: remembers the buffer when `fd` is a tracked socket. One lookup for processes
/// without database sockets.
#[inline(always)]
fn enter_io(ctx: &TracePointContext, op: u32, syscall: u32) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: value not used.
    if unsafe { DB_PROCESSES.get(&tgid) }.is_none() {
        return Ok(());
    }
    // SAFETY: offsets from the tracepoint formats (identical for the four calls).
    let (fd, buf) = unsafe { (ctx.read_at::<u64>(16)?, ctx.read_at::<u64>(24)?) };
    let file = Task::current().file(fd as u32).map_err(|_| 0i64)?;
    let sk = file_sock(file).map_err(|_| 0i64)?;
    // SAFETY: copied out at once.
    let Some(sock) = (unsafe { DB_SOCKS.get(&(sk as u64)) }).copied() else {
        return Ok(());
    };
    if sock.socket != socket_of(file)? {
        return Ok(());
    }
    let io = DbIo {
        sock: sk as u64,
        buf,
        role: sock.role,
        op,
        syscall,
        fd: fd as i32,
    };
    DB_IO.insert(&id, &io, 0).map_err(i64::from)
}

/// At exit: sends the first bytes the call moved.
#[inline(always)]
fn exit_io(ctx: &TracePointContext) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let Some(io) = (unsafe { DB_IO.get(&id) }).copied() else {
        return Ok(());
    };
    let _ = DB_IO.remove(&id);
    // SAFETY: offset 16 of the record is the return value.
    let ret = unsafe { ctx.read_at::<i64>(16) }?;
    if ret < 0 {
        return Ok(());
    }
    let Some(scratch) = DB_DATA_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    let scratch: &mut DbDataScratch = unsafe { &mut *scratch };
    fill_header(&mut scratch.event.header, Kind::DbData);
    let mut captured: usize = 0;
    if ret > 0 {
        // 1..=DB_CAPTURE_LEN, in a form the verifier can bound.
        let want = (((ret as usize).min(DB_CAPTURE_LEN) - 1) & (DB_CAPTURE_LEN - 1)) + 1;
        // SAFETY: `want <= DB_CAPTURE_LEN` bytes into a `2 * DB_CAPTURE_LEN` array; the helper
        // checks the user address.
        let rc = unsafe {
            bpf_probe_read_user(
                scratch.data.as_mut_ptr().cast(),
                want as u32,
                io.buf as *const core::ffi::c_void,
            )
        };
        if rc == 0 {
            captured = want;
        }
        if captured < ret as usize {
            scratch.event.header.flags |= FLAG_TRUNCATED;
        }
    }
    scratch.event.sock = io.sock;
    scratch.event.role = io.role;
    scratch.event.op = io.op;
    scratch.event.syscall = io.syscall;
    scratch.event.fd = io.fd;
    scratch.event.len = ret as u32;
    scratch.event.captured = captured as u32;
    let len = offset_of!(DbDataScratch, data) + (captured & (2 * DB_CAPTURE_LEN - 1));
    if len > size_of::<DbDataScratch>() {
        return Ok(());
    }
    // SAFETY: `len` is within the scratch value.
    let bytes =
        unsafe { core::slice::from_raw_parts((scratch as *const DbDataScratch).cast::<u8>(), len) };
    output(Kind::DbData, bytes);
    Ok(())
}
