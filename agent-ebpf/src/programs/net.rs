//! TCP on watched ports: outgoing `connect()` (cgroup `connect4`/`connect6` at the cgroup v2
//! root) and connection state changes in both directions (`sock/inet_sock_set_state`), so
//! connections a local database *accepts* are seen too.

use aya_ebpf::{
    macros::{cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, TracePointContext},
};
use phiguard_common::{
    addr::canonical_destination,
    event::{direction, ConnectEvent, Kind, SockStateEvent, FLAG_SOCK_DATABASE_ONLY},
    policy::{access, layer, verdict, Decision, PortKey},
    program::Program,
};

use crate::{
    emit::{count_lost, fill_header, fill_header_no_process, submit},
    error::{finish, ProbeError, ProbeResult},
    maps::{SockOwner, DB_PORTS, EVENTS, SOCK_OWNERS, WATCHED_PORTS},
    policy::{current_slot, decide, rule_entry},
};

/// cgroup sock_addr verdicts.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
/// `AF_INET`.
const AF_INET: u16 = 2;
/// `AF_INET6`.
const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
const IPPROTO_TCP: u16 = 6;
/// Kernel TCP states (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// `cgroup/connect4` (Linux 4.17+).
#[cgroup_sock_addr(connect4)]
pub fn net_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, AF_INET)
}

/// `cgroup/connect6` (Linux 4.17+).
#[cgroup_sock_addr(connect6)]
pub fn net_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, AF_INET6)
}

/// Reports connects to watched or protected ports, and refuses (returns 0: EPERM) those a
/// rule denies. Nothing here can fault (the context is read directly), so it returns the
/// verdict itself.
#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: u16) -> i32 {
    // SAFETY: the context is the kernel's `struct bpf_sock_addr`, valid for this call.
    let sa = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    let key = PortKey {
        slot: current_slot(),
        port: u32::from(port),
    };
    // SAFETY: the value is a plain u32 copied out at once.
    let Some(rule) = (unsafe { WATCHED_PORTS.get(key) }).copied() else {
        return ALLOW;
    };
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    } else {
        for (i, word) in sa.user_ip6.iter().enumerate() {
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    }
    // A rule limited to one remote address leaves connects elsewhere alone; both are compared
    // in their canonical form, so another spelling of the rule's address is that address.
    let (canonical_family, canonical) = canonical_destination(u32::from(family), addr);
    let applies = rule_entry(rule).is_some_and(|r| {
        r.addr_family == 0 || (r.addr_family == canonical_family && r.addr == canonical)
    });
    let decision = if applies {
        decide(rule, access::CONNECT, layer::CGROUP)
    } else {
        Decision::NONE
    };
    let verdict = if decision.verdict == verdict::DENY {
        DENY
    } else {
        ALLOW
    };
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_lost(Kind::Connect);
        return verdict;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size, written field by field.
    unsafe {
        fill_header(&mut (*event).header, Kind::Connect);
        (*event).family = family;
        (*event).port = port;
        (*event).sock_type = sa.type_;
        (*event).addr = addr;
        (*event).decision = decision;
    }
    submit(entry);
    verdict
}

/// `sock/inet_sock_set_state` (Linux 4.16+): `skaddr` at 8, `oldstate` 16, `newstate` 20,
/// `sport` 24, `dport` 26, `family` 28, `protocol` 30, `saddr` 32, `daddr` 36, `saddr_v6` 40,
/// `daddr_v6` 56. Ports are in host byte order.
#[tracepoint]
pub fn net_inet_sock_set_state(ctx: TracePointContext) -> i32 {
    finish(Program::NetInetSockSetState, try_set_state(&ctx));
    0
}

/// Reads a field of the tracepoint record at `offset`.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: usize) -> ProbeResult<T> {
    // SAFETY: every caller's offset and type are from the tracepoint's format.
    unsafe { ctx.read_at::<T>(offset) }.map_err(|_| ProbeError::Fault)
}

fn try_set_state(ctx: &TracePointContext) -> ProbeResult {
    let (protocol, sport, dport) = (
        field::<u16>(ctx, 30)?,
        field::<u16>(ctx, 24)?,
        field::<u16>(ctx, 26)?,
    );
    if protocol != IPPROTO_TCP {
        return Err(ProbeError::Skip);
    }
    let slot = current_slot();
    let watched = |port: u16| {
        let key = PortKey {
            slot,
            port: u32::from(port),
        };
        // SAFETY: value not used.
        unsafe { WATCHED_PORTS.get(key) }.is_some()
    };
    // Database ports too: their closes end database sessions in user space (a TLS session's
    // end is not in its bytes, and a threaded server such as mariadbd does not exit).
    // SAFETY: values not used.
    let database = |port: u16| unsafe { DB_PORTS.get(u32::from(port)) }.is_some();
    let watched = watched(sport) || watched(dport);
    if !watched && !database(sport) && !database(dport) {
        return Err(ProbeError::Skip);
    }
    let (skaddr, old_state, new_state) = (
        field::<u64>(ctx, 8)?,
        field::<i32>(ctx, 16)?,
        field::<i32>(ctx, 20)?,
    );

    if new_state == TCP_SYN_SENT {
        // connect() in process context: remember who.
        // SAFETY: zeroed is a valid SockOwner (plain integers).
        let mut owner: SockOwner = unsafe { core::mem::zeroed() };
        fill_header(&mut owner.header, Kind::SockState);
        owner.direction = direction::OUTBOUND;
        return SOCK_OWNERS
            .insert(skaddr, owner, 0)
            .map_err(|_| ProbeError::Fault);
    }
    let owner = if new_state == TCP_ESTABLISHED && old_state == TCP_SYN_RECV {
        // Accepted by a local listener, in softirq: no process yet.
        // SAFETY: zeroed is a valid SockOwner (plain integers).
        let mut owner: SockOwner = unsafe { core::mem::zeroed() };
        fill_header_no_process(&mut owner.header, Kind::SockState);
        owner.direction = direction::INBOUND;
        SOCK_OWNERS
            .insert(skaddr, owner, 0)
            .map_err(|_| ProbeError::Fault)?;
        owner
    } else if new_state == TCP_ESTABLISHED || new_state == TCP_CLOSE {
        // SAFETY: copied out at once.
        match unsafe { SOCK_OWNERS.get(skaddr) } {
            Some(owner) => *owner,
            None => return Err(ProbeError::Skip),
        }
    } else {
        return Err(ProbeError::Skip);
    };
    if new_state == TCP_CLOSE {
        let _ = SOCK_OWNERS.remove(skaddr);
    }

    let Some(mut entry) = EVENTS.reserve::<SockStateEvent>(0) else {
        count_lost(Kind::SockState);
        return Err(ProbeError::Lost);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size, written field by field;
    // offsets from the tracepoint's format.
    unsafe {
        (*event).header = owner.header;
        (*event).header.boot_ns = aya_ebpf::helpers::bpf_ktime_get_boot_ns();
        if !watched {
            (*event).header.flags |= FLAG_SOCK_DATABASE_ONLY;
        }
        (*event).skaddr = skaddr;
        (*event).old_state = old_state as u32;
        (*event).new_state = new_state as u32;
        (*event).direction = owner.direction;
        (*event).sport = sport;
        (*event).dport = dport;
        (*event)._pad = [0; 6];
        let family = ctx.read_at::<u16>(28).unwrap_or(0);
        (*event).family = family;
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if family == AF_INET {
            saddr[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(32).unwrap_or([0; 4]));
            daddr[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(36).unwrap_or([0; 4]));
        } else {
            saddr = ctx.read_at::<[u8; 16]>(40).unwrap_or([0; 16]);
            daddr = ctx.read_at::<[u8; 16]>(56).unwrap_or([0; 16]);
        }
        (*event).saddr = saddr;
        (*event).daddr = daddr;
    }
    submit(entry);
    Ok(())
}
