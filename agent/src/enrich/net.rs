//! Network records: connects to watched ports (and unix sockets a policy protects) and TCP
//! state changes.

use std::net::{Ipv4Addr, Ipv6Addr};

use phiguard_common::event::{direction, ConnectEvent, SockStateEvent};
use phiguard_proto::v1::{self, event::Body};

use super::Enricher;
use crate::{db::connects::Endpoint, paths::FileId};

impl Enricher {
    /// A connect, and the decision the kernel made on it (remembered for the database
    /// session it may open).
    pub(super) fn connect(&mut self, e: &ConnectEvent, decision: Option<&v1::Decision>) -> Body {
        self.processes
            .refresh_cwd(e.header.tgid, e.header.start_boot_ns);
        if let Some(d) = decision {
            self.connects.record(e.header.tgid, connect_endpoint(e), d);
        }
        let (address, protocol) = if i32::from(e.family) == libc::AF_UNIX {
            // The kernel reports the socket file's (device, inode): its path is the
            // protected endpoint's.
            let dev = u32::from_ne_bytes([e.addr[0], e.addr[1], e.addr[2], e.addr[3]]);
            let mut ino = [0u8; 8];
            ino.copy_from_slice(&e.addr[8..]);
            let id = FileId {
                dev,
                ino: u64::from_ne_bytes(ino),
            };
            let path = self.policy.unix_socket_path(id);
            (
                path.map(|p| p.display().to_string()).unwrap_or_default(),
                "unix",
            )
        } else if e.sock_type == libc::SOCK_DGRAM as u32 {
            (address(e.family, &e.addr), "udp")
        } else {
            (address(e.family, &e.addr), "tcp")
        };
        Body::Connect(v1::NetConnect {
            family: family_name(e.family).to_owned(),
            address,
            port: u32::from(e.port),
            protocol: protocol.to_owned(),
        })
    }

    /// A TCP state change on a watched or protected port.
    pub(super) fn tcp_state(&self, e: &SockStateEvent) -> Body {
        Body::TcpState(v1::TcpState {
            direction: match e.direction {
                direction::OUTBOUND => v1::Direction::Outbound,
                direction::INBOUND => v1::Direction::Inbound,
                _ => v1::Direction::Unspecified,
            } as i32,
            local_address: address(e.family, &e.saddr),
            local_port: u32::from(e.sport),
            remote_address: address(e.family, &e.daddr),
            remote_port: u32::from(e.dport),
            old_state: tcp_state_name(e.old_state).to_owned(),
            new_state: tcp_state_name(e.new_state).to_owned(),
            socket_id: e.skaddr,
        })
    }
}

/// The database end a connect went to: the port, or for a unix socket the socket file's
/// (device, inode) the kernel put in the address bytes.
fn connect_endpoint(e: &ConnectEvent) -> Endpoint {
    if i32::from(e.family) == libc::AF_UNIX {
        let mut ino = [0u8; 8];
        ino.copy_from_slice(&e.addr[8..]);
        Endpoint::Unix {
            dev: u32::from_ne_bytes([e.addr[0], e.addr[1], e.addr[2], e.addr[3]]),
            ino: u64::from_ne_bytes(ino),
        }
    } else {
        Endpoint::Tcp(e.port)
    }
}

fn family_name(family: u16) -> &'static str {
    match i32::from(family) {
        libc::AF_INET => "inet",
        libc::AF_INET6 => "inet6",
        libc::AF_UNIX => "unix",
        _ => "unknown",
    }
}

pub(super) fn address(family: u16, bytes: &[u8; 16]) -> String {
    if i32::from(family) == libc::AF_INET {
        Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()
    } else {
        Ipv6Addr::from(*bytes).to_string()
    }
}

pub(super) fn tcp_state_name(state: u32) -> &'static str {
    const NAMES: [&str; 13] = [
        "UNKNOWN",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    NAMES.get(state as usize).copied().unwrap_or("UNKNOWN")
}
