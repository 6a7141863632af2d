//! Network records: connects to watched ports (and unix sockets a policy protects) and TCP
//! state changes.

use phiguard_common::event::direction;
use phiguard_proto::v1::{self, event::Body};

use super::Enricher;
use crate::{
    db::connects::Endpoint,
    event::net::{Connect, Target, TcpState},
};

impl Enricher {
    /// A connect, and the decision the kernel made on it (remembered for the database
    /// session it may open).
    pub(super) fn connect(&mut self, e: &Connect, decision: Option<&v1::Decision>) -> Body {
        self.processes
            .refresh_cwd(e.header.pid, e.header.start_boot_ns);
        if let Some(d) = decision {
            self.connects.record(e.header.pid, connect_endpoint(e), d);
        }
        let (address, protocol) = match e.target {
            // The socket file's path is the protected endpoint's.
            Target::Unix(id) => (
                self.policy
                    .unix_socket_path(id)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "unix",
            ),
            Target::Ip { address, udp: true } => (address.to_string(), "udp"),
            Target::Ip {
                address,
                udp: false,
            } => (address.to_string(), "tcp"),
        };
        Body::Connect(v1::NetConnect {
            family: e.family.name().to_owned(),
            address,
            port: u32::from(e.port),
            protocol: protocol.to_owned(),
        })
    }

    /// A TCP state change on a watched or protected port.
    pub(super) fn tcp_state(&self, e: &TcpState) -> Body {
        Body::TcpState(v1::TcpState {
            direction: match e.direction {
                direction::OUTBOUND => v1::Direction::Outbound,
                direction::INBOUND => v1::Direction::Inbound,
                _ => v1::Direction::Unspecified,
            } as i32,
            local_address: e.local.ip().to_string(),
            local_port: u32::from(e.local.port()),
            remote_address: e.remote.ip().to_string(),
            remote_port: u32::from(e.remote.port()),
            old_state: tcp_state_name(e.old_state).to_owned(),
            new_state: tcp_state_name(e.new_state).to_owned(),
            socket_id: e.socket_id,
        })
    }
}

/// The database end a connect went to: the port, or for a unix socket the socket file.
fn connect_endpoint(e: &Connect) -> Endpoint {
    match e.target {
        Target::Unix(id) => Endpoint::Unix(id),
        Target::Ip { .. } => Endpoint::Tcp(e.port),
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
