//! Database sessions that were open before the agent started (connection pools hold theirs
//! for days; an agent upgrade must not leave them unaudited until they reconnect).
//!
//! At start-up the agent finds every socket connected to or accepted from a configured
//! database endpoint and the processes holding it: TCP from `/proc/net/tcp{,6}` (established,
//! a database port at either end), the server end of unix sockets from `/proc/net/unix` (an
//! accepted socket shows its listener's path), the client end from the kernel's `sock_diag`
//! (`UNIX_DIAG_PEER`: a socket whose peer is such a server end), and their holders from the
//! `socket:[inode]` links in `/proc/PID/fd`. The kernel joins each at its next read or write
//! (`DB_JOIN`, see `agent-ebpf/src/programs/db.rs`). Sockets in other network namespaces are
//! not found (`/proc/net` is the agent's own).

use std::{
    collections::HashSet,
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use phiguard_common::event::db_role;

use crate::paths::FileId;

/// Why the sockets open at start-up could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ExistingError {
    /// A `/proc` table could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The unix socket peers could not be listed.
    #[error("listing unix socket peers (sock_diag): {0}")]
    SockDiag(#[source] io::Error),
}

/// A socket of a database session open at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExistingSocket {
    /// Its inode number (`socket:[N]` in `/proc/PID/fd`).
    pub inode: u64,
    /// Which end this host holds (a `db_role` code).
    pub role: u32,
}

/// The sockets found and the processes (tgids) holding them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Existing {
    /// Kernel `dev_t` of the socket file system (the device of every socket's inode).
    pub sockfs_dev: u32,
    /// Database sockets held by some process.
    pub sockets: Vec<ExistingSocket>,
    /// Processes holding at least one of them.
    pub processes: Vec<u32>,
}

/// `st` of an established connection in `/proc/net/tcp`.
const TCP_ESTABLISHED: &str = "01";
/// `St` of a connected socket in `/proc/net/unix` (`SS_CONNECTED`).
const SS_CONNECTED: &str = "03";

/// Finds the database sockets open now, and their processes other than `own_pid`.
pub fn find(
    ports: &[u16],
    unix_sockets: &[PathBuf],
    own_pid: u32,
) -> Result<Existing, ExistingError> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(table) {
            Ok(text) => sockets.extend(tcp_sockets(&text, ports)),
            // No IPv6 in this kernel.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ExistingError::Read {
                    path: table.into(),
                    source,
                })
            }
        }
    }
    if !unix_sockets.is_empty() {
        let text = fs::read_to_string("/proc/net/unix").map_err(|source| ExistingError::Read {
            path: "/proc/net/unix".into(),
            source,
        })?;
        let paths: Vec<String> = unix_sockets
            .iter()
            .flat_map(|p| {
                let canonical = fs::canonicalize(p).ok();
                std::iter::once(p.display().to_string())
                    .chain(canonical.map(|c| c.display().to_string()))
            })
            .collect();
        let servers = unix_server_sockets(&text, &paths);
        if !servers.is_empty() {
            let peers = unix_peers().map_err(ExistingError::SockDiag)?;
            sockets.extend(unix_client_sockets(&peers, &servers));
        }
        sockets.extend(servers.into_iter().map(|inode| ExistingSocket {
            inode,
            role: db_role::SERVER,
        }));
    }
    let wanted: HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
    let mut held = HashSet::new();
    let mut processes = Vec::new();
    if !wanted.is_empty() {
        for (pid, inodes) in process_sockets(own_pid) {
            let mine: Vec<u64> = inodes.into_iter().filter(|i| wanted.contains(i)).collect();
            if !mine.is_empty() {
                processes.push(pid);
                held.extend(mine);
            }
        }
    }
    sockets.retain(|s| held.contains(&s.inode));
    Ok(Existing {
        sockfs_dev: sockfs_dev()?,
        sockets,
        processes,
    })
}

/// The device of the socket file system, from a socket of our own.
fn sockfs_dev() -> Result<u32, ExistingError> {
    let path = PathBuf::from("/proc/self/fd");
    let probe =
        std::os::unix::net::UnixDatagram::unbound().map_err(|source| ExistingError::Read {
            path: path.clone(),
            source,
        })?;
    let link = path.join(probe.as_raw_fd().to_string());
    FileId::of(&link)
        .map(|id| id.dev)
        .map_err(|source| ExistingError::Read { path: link, source })
}

/// Established connections in a `/proc/net/tcp{,6}` table with a database port at one end:
/// the local port makes this host the server, the remote port the client.
pub fn tcp_sockets(text: &str, ports: &[u16]) -> Vec<ExistingSocket> {
    let port_of = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != TCP_ESTABLISHED {
                return None;
            }
            let (local, remote) = (port_of(fields[1])?, port_of(fields[2])?);
            let inode = fields[9].parse().ok().filter(|&i| i != 0)?;
            let role = if ports.contains(&local) {
                db_role::SERVER
            } else if ports.contains(&remote) {
                db_role::CLIENT
            } else {
                return None;
            };
            Some(ExistingSocket { inode, role })
        })
        .collect()
}

/// Inodes of connected unix sockets bound to one of `paths` in `/proc/net/unix`: the server
/// ends a database listener accepted (they carry its path).
pub fn unix_server_sockets(text: &str, paths: &[String]) -> HashSet<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (state, inode, path) = (fields.get(5)?, fields.get(6)?, fields.get(7)?);
            (*state == SS_CONNECTED && paths.iter().any(|p| p == path))
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// The client ends of `servers`: the sockets whose peer is one of them, from `(inode, peer)`
/// pairs.
pub fn unix_client_sockets(peers: &[(u64, u64)], servers: &HashSet<u64>) -> Vec<ExistingSocket> {
    peers
        .iter()
        .filter(|(inode, peer)| servers.contains(peer) && !servers.contains(inode))
        .map(|&(inode, _)| ExistingSocket {
            inode,
            role: db_role::CLIENT,
        })
        .collect()
}

/// The inode of a `/proc/PID/fd` link target `socket:[N]`.
pub fn socket_inode(target: &Path) -> Option<u64> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every process but `own_pid` with the socket inodes its descriptors refer to. Processes
/// that exit meanwhile are skipped.
fn process_sockets(own_pid: u32) -> Vec<(u32, Vec<u64>)> {
    let Ok(proc) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own_pid)
        .filter_map(|pid| {
            let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
            let inodes: Vec<u64> = fds
                .filter_map(Result::ok)
                .filter_map(|fd| socket_inode(&fs::read_link(fd.path()).ok()?))
                .collect();
            (!inodes.is_empty()).then_some((pid, inodes))
        })
        .collect()
}

// sock_diag for unix sockets (linux/sock_diag.h, linux/unix_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;
const NLMSG_HDR: usize = 16;
/// `struct unix_diag_msg`.
const UNIX_DIAG_MSG: usize = 16;

/// `(inode, peer inode)` of every connected unix socket, from a `sock_diag` dump.
fn unix_peers() -> io::Result<Vec<(u64, u64)>> {
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = Vec::with_capacity(NLMSG_HDR + 24);
    req.extend_from_slice(&((NLMSG_HDR + 24) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]); // family, protocol, pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    req.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    // No cookie.
    req.extend_from_slice(&[0xff; 8]);
    // SAFETY: `req` is a valid buffer of its length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut peers = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a valid writable buffer of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 || parse_diag(&buf[..n as usize], &mut peers)? {
            return Ok(peers);
        }
    }
}

/// Parses one datagram of a unix `sock_diag` dump into `peers`; `true` at the dump's end.
fn parse_diag(mut bytes: &[u8], peers: &mut Vec<(u64, u64)>) -> io::Result<bool> {
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    while bytes.len() >= NLMSG_HDR {
        let len = u32_at(bytes, 0) as usize;
        if len < NLMSG_HDR || len > bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad netlink length",
            ));
        }
        let (msg, rest) = bytes.split_at(len);
        bytes = rest
            .get(rest.len().min((4 - len % 4) % 4)..)
            .unwrap_or_default();
        match u16_at(msg, 4) {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = msg
                    .get(NLMSG_HDR..NLMSG_HDR + 4)
                    .map_or(0, |b| u32_at(b, 0)) as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ => {}
        }
        let body = &msg[NLMSG_HDR..];
        if body.len() < UNIX_DIAG_MSG {
            continue;
        }
        let inode = u64::from(u32_at(body, 4));
        let mut attrs = &body[UNIX_DIAG_MSG..];
        while attrs.len() >= 4 {
            let (alen, kind) = (usize::from(u16_at(attrs, 0)), u16_at(attrs, 2));
            if alen < 4 || alen > attrs.len() {
                break;
            }
            if kind == UNIX_DIAG_PEER && alen >= 8 {
                peers.push((inode, u64::from(u32_at(attrs, 4))));
            }
            attrs = attrs.get(alen.div_ceil(4) * 4..).unwrap_or_default();
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   110        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1538 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000   110        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:A1B2 0100007F:1538 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:A1B3 0100007F:1538 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000
   4: 0100007F:0016 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn established_tcp_connections_on_a_database_port_with_their_end() {
        assert_eq!(
            tcp_sockets(TCP, &[5432]),
            [
                ExistingSocket {
                    inode: 1002,
                    role: db_role::SERVER
                },
                ExistingSocket {
                    inode: 1003,
                    role: db_role::CLIENT
                },
            ],
            "the listener (0A), a TIME_WAIT (06) and port 22 are not sessions"
        );
        assert!(tcp_sockets(TCP, &[3306]).is_empty());
        assert!(tcp_sockets("", &[5432]).is_empty());
        assert!(tcp_sockets("header\ngarbage line\n 0: x y 01 a b c d e f\n", &[5432]).is_empty());
    }

    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 2001 /run/postgresql/.s.PGSQL.5432
0000000000000000: 00000003 00000000 00000000 0001 03 2002 /run/postgresql/.s.PGSQL.5432
0000000000000000: 00000003 00000000 00000000 0001 03 2003
0000000000000000: 00000003 00000000 00000000 0001 03 2004 /run/other.sock
";

    #[test]
    fn accepted_unix_sockets_carry_the_listeners_path_and_their_peers_are_clients() {
        let servers = unix_server_sockets(UNIX, &["/run/postgresql/.s.PGSQL.5432".into()]);
        assert_eq!(servers, HashSet::from([2002]), "not the listener (St 01)");
        let peers = [(2002, 2003), (2003, 2002), (2004, 2005), (2005, 2004)];
        assert_eq!(
            unix_client_sockets(&peers, &servers),
            [ExistingSocket {
                inode: 2003,
                role: db_role::CLIENT
            }]
        );
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(Path::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn sock_diag_dump_parses_peers_and_stops_at_done() {
        let mut dump = Vec::new();
        let mut msg = |inode: u32, peer: Option<u32>| {
            let mut body = vec![libc::AF_UNIX as u8, 1, 1, 0];
            body.extend_from_slice(&inode.to_ne_bytes());
            body.extend_from_slice(&[0; 8]);
            if let Some(p) = peer {
                body.extend_from_slice(&8u16.to_ne_bytes());
                body.extend_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
                body.extend_from_slice(&p.to_ne_bytes());
            }
            dump.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
            dump.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
            dump.extend_from_slice(&[0; 10]);
            dump.extend_from_slice(&body);
        };
        msg(7, Some(8));
        msg(9, None);
        let mut peers = Vec::new();
        assert!(!parse_diag(&dump, &mut peers).unwrap());
        assert_eq!(peers, [(7, 8)]);
        let mut done = (NLMSG_HDR as u32 + 4).to_ne_bytes().to_vec();
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&[0; 14]);
        assert!(parse_diag(&done, &mut peers).unwrap());
        assert!(parse_diag(
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &mut peers
        )
        .is_err());
    }

    #[test]
    fn the_live_system_can_be_scanned() {
        // No database configured: nothing to find, but the unix peers dump must work.
        let found = find(&[], &[], std::process::id()).unwrap();
        assert!(found.sockets.is_empty() && found.processes.is_empty());
        assert_ne!(found.sockfs_dev, 0, "sockfs has an anonymous device");
        unix_peers().expect("sock_diag dump of unix sockets");
    }
}
