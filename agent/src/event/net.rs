//! Socket records decoded: address families, IP endpoints and unix socket files as typed
//! values, unpacked from the kernel's byte arrays here and nowhere else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use phiguard_common::{
    event::{db_role, ConnectEvent, DbDataEvent, DbSockEvent, SockStateEvent},
    policy::Decision,
};

use super::header::Header;
use crate::paths::FileId;

/// An address family as the kernel reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET`.
    Inet,
    /// `AF_INET6`.
    Inet6,
    /// `AF_UNIX`.
    Unix,
    /// Any other code (the programs send none; kept, not guessed).
    Other(u16),
}

impl Family {
    /// The family of kernel code `code`.
    pub fn from_code(code: u16) -> Family {
        match i32::from(code) {
            libc::AF_INET => Family::Inet,
            libc::AF_INET6 => Family::Inet6,
            libc::AF_UNIX => Family::Unix,
            _ => Family::Other(code),
        }
    }

    /// The family's name in events.
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Inet6 => "inet6",
            Family::Unix => "unix",
            Family::Other(_) => "unknown",
        }
    }

    /// The IP address in `bytes` (4 bytes for `AF_INET`, otherwise 16), network byte order.
    fn address(self, bytes: &[u8; 16]) -> IpAddr {
        match self {
            Family::Inet => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
            _ => IpAddr::V6(Ipv6Addr::from(*bytes)),
        }
    }
}

/// A unix socket file the kernel identified by the (device, inode) it put in the first and
/// last 8 address bytes.
fn unix_file(bytes: &[u8; 16]) -> FileId {
    let mut ino = [0u8; 8];
    ino.copy_from_slice(&bytes[8..]);
    FileId {
        dev: u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        ino: u64::from_ne_bytes(ino),
    }
}

/// Where a connect went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An IP address, over TCP or UDP.
    Ip {
        /// The address connected to.
        address: IpAddr,
        /// A datagram socket.
        udp: bool,
    },
    /// A unix socket file.
    Unix(FileId),
}

/// A `connect()` to a watched port or a protected unix socket, with the kernel's decision.
#[derive(Clone, Debug)]
pub struct Connect {
    /// The connecting thread.
    pub header: Header,
    /// The socket's family.
    pub family: Family,
    /// The port connected to (host byte order; 0 for a unix socket).
    pub port: u16,
    /// What was connected to.
    pub target: Target,
    /// The policy decision.
    pub decision: Decision,
}

impl Connect {
    /// Decodes a connect record.
    pub fn decode(e: &ConnectEvent) -> Connect {
        let family = Family::from_code(e.family);
        let target = match family {
            Family::Unix => Target::Unix(unix_file(&e.addr)),
            _ => Target::Ip {
                address: family.address(&e.addr),
                udp: e.sock_type == libc::SOCK_DGRAM as u32,
            },
        };
        Connect {
            header: Header::decode(&e.header),
            family,
            port: e.port,
            target,
            decision: e.decision,
        }
    }
}

/// A TCP state change on a watched, protected or database port.
#[derive(Clone, Debug)]
pub struct TcpState {
    /// The thread that caused it (often not the socket's owner).
    pub header: Header,
    /// Kernel address of the `struct sock`.
    pub socket_id: u64,
    /// The state before (kernel `TCP_*` code).
    pub old_state: u32,
    /// The state after.
    pub new_state: u32,
    /// A `direction` code.
    pub direction: u32,
    /// The local end.
    pub local: SocketAddr,
    /// The remote end.
    pub remote: SocketAddr,
}

impl TcpState {
    /// Decodes a TCP state record.
    pub fn decode(e: &SockStateEvent) -> TcpState {
        let family = Family::from_code(e.family);
        TcpState {
            header: Header::decode(&e.header),
            socket_id: e.skaddr,
            old_state: e.old_state,
            new_state: e.new_state,
            direction: e.direction,
            local: SocketAddr::new(family.address(&e.saddr), e.sport),
            remote: SocketAddr::new(family.address(&e.daddr), e.dport),
        }
    }
}

/// The ends of a database socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbEnds {
    /// A TCP connection.
    Tcp {
        /// The local end.
        local: SocketAddr,
        /// The remote end.
        remote: SocketAddr,
    },
    /// A unix socket: the socket file the server is bound to.
    Unix(FileId),
}

/// Which end of a database connection a tracked socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbRole {
    /// The client's socket.
    Client,
    /// The server's accepted socket.
    Server,
}

/// A socket that became a tracked database session.
#[derive(Clone, Debug)]
pub struct DbSock {
    /// The connecting or accepting thread.
    pub header: Header,
    /// Kernel address of the `struct sock`: names the session in later records.
    pub socket_id: u64,
    /// The end it is.
    pub role: DbRole,
    /// Its descriptor in the process.
    pub fd: i32,
    /// Its ends.
    pub ends: DbEnds,
}

impl DbSock {
    /// Decodes a tracked-socket record.
    pub fn decode(e: &DbSockEvent) -> DbSock {
        let family = Family::from_code(e.family);
        let ends = match family {
            Family::Unix => DbEnds::Unix(FileId {
                dev: e.dev,
                ino: e.ino,
            }),
            _ => DbEnds::Tcp {
                local: SocketAddr::new(family.address(&e.saddr), e.sport),
                remote: SocketAddr::new(family.address(&e.daddr), e.dport),
            },
        };
        DbSock {
            header: Header::decode(&e.header),
            socket_id: e.sock,
            role: if e.role == db_role::SERVER {
                DbRole::Server
            } else {
                DbRole::Client
            },
            fd: e.fd,
            ends,
        }
    }

    /// The database's port (TCP), the one a policy names: the remote end's for a client, the
    /// local end's for a server; `None` for a unix socket.
    pub fn server_port(&self) -> Option<u16> {
        match (self.ends, self.role) {
            (DbEnds::Tcp { remote, .. }, DbRole::Client) => Some(remote.port()),
            (DbEnds::Tcp { local, .. }, DbRole::Server) => Some(local.port()),
            (DbEnds::Unix(_), _) => None,
        }
    }
}

/// A read or write on a tracked database socket: the fixed part of a capture record.
#[derive(Clone, Debug)]
pub struct DbTransfer {
    /// The reading or writing thread.
    pub header: Header,
    /// Kernel address of the `struct sock`: the session (see [`DbSock::socket_id`]).
    pub socket_id: u64,
    /// A `db_role` code: which end the socket is.
    pub role: u32,
    /// A `db_op` code: read or write.
    pub op: u32,
    /// Bytes the call moved (its return value; 0 = end of stream on a read).
    pub len: u32,
}

impl DbTransfer {
    /// Decodes the fixed part of a capture record.
    pub fn decode(e: &DbDataEvent) -> DbTransfer {
        DbTransfer {
            header: Header::decode(&e.header),
            socket_id: e.sock,
            role: e.role,
            op: e.op,
            len: e.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed<T>() -> T {
        // SAFETY: used only for the kernel's plain-old-data records.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn connect_targets() {
        let mut e: ConnectEvent = zeroed();
        e.family = libc::AF_INET as u16;
        e.port = 5432;
        e.addr[..4].copy_from_slice(&[10, 0, 0, 7]);
        let c = Connect::decode(&e);
        assert_eq!(c.family.name(), "inet");
        assert_eq!(
            c.target,
            Target::Ip {
                address: "10.0.0.7".parse().unwrap(),
                udp: false
            }
        );
        e.family = libc::AF_UNIX as u16;
        e.addr = [0; 16];
        e.addr[..4].copy_from_slice(&42u32.to_ne_bytes());
        e.addr[8..].copy_from_slice(&7u64.to_ne_bytes());
        assert_eq!(
            Connect::decode(&e).target,
            Target::Unix(FileId { dev: 42, ino: 7 })
        );
        e.family = 99;
        assert_eq!(Connect::decode(&e).family.name(), "unknown");
    }

    #[test]
    fn tcp_ends_and_server_port() {
        let mut e: DbSockEvent = zeroed();
        e.family = libc::AF_INET6 as u16;
        e.role = db_role::SERVER;
        e.sport = 5432;
        e.dport = 40000;
        e.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let s = DbSock::decode(&e);
        assert_eq!(s.server_port(), Some(5432));
        let DbEnds::Tcp { local, .. } = s.ends else {
            panic!("not TCP")
        };
        assert_eq!(local.to_string(), "[::1]:5432");
        e.role = db_role::CLIENT;
        assert_eq!(DbSock::decode(&e).server_port(), Some(40000));
    }
}
