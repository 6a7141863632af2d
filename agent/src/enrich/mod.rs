//! Enrichment: turns decoded kernel records into complete audit events — who (process,
//! ancestry, user and login user, binary hash), where (host), when (wall clock), and what.

pub mod file;
pub mod hash;
pub mod host;
pub mod users;

use std::{
    collections::{HashMap, VecDeque},
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
};

use agent_common::event::{
    db_role, direction, ConnectEvent, EventHeader, ExecEvent, FLAG_COMPAT_SYSCALL,
    FLAG_CWD_COMPLETE, FLAG_EXEC_REFUSED, FLAG_NO_PROCESS, FLAG_SOCK_DATABASE_ONLY, FLAG_TRUNCATED,
};
use phiguard_proto::v1::{self, event::Body};

use self::{
    hash::BinaryHasher,
    host::{BootClock, HostInfo},
    users::UserNames,
};
use crate::{
    db::connects::{ConnectDecisions, Endpoint},
    event::decode::{c_text, text, ExecArgs, RawEvent},
    kernel::mounts::MountTable,
    paths,
    policy::{
        compile::{Compiled, FileId},
        decision::PolicyTables,
    },
    process::table::{ExecInfo, ProcessTable},
    watch::WatchSet,
};

/// argv records waiting for their exec, at most this many (a failed exec leaves one behind).
const MAX_PENDING_ARGV: usize = 4096;

/// Settings for [`Enricher`].
#[derive(Clone, Debug)]
pub struct EnrichSettings {
    /// Ancestors reported per event.
    pub ancestry_depth: usize,
    /// Binaries larger than this are not hashed.
    pub hash_max_bytes: u64,
    /// Exited processes kept for late events.
    pub retain_exited: usize,
    /// Keep literals in database statements (`[database] full_statements`).
    pub full_statements: bool,
    /// The configured database unix sockets, to name a session's endpoint.
    pub db_unix_sockets: Vec<std::path::PathBuf>,
}

/// Holds everything enrichment needs and numbers the events.
pub struct Enricher {
    host: v1::Host,
    clock: BootClock,
    processes: ProcessTable,
    users: UserNames,
    hasher: BinaryHasher,
    watches: Arc<WatchSet>,
    policy: PolicyTables,
    pending_argv: HashMap<u32, ExecArgs>,
    pending_order: VecDeque<u32>,
    binary_hashes: HashMap<(u32, u64), Option<String>>,
    mounts: MountTable,
    settings: EnrichSettings,
    seq: u64,
    sessions: crate::db::session::Sessions,
    connects: ConnectDecisions,
}

impl Enricher {
    /// A new enricher; seeds the process table from `/proc`.
    pub fn new(host: HostInfo, watches: Arc<WatchSet>, settings: EnrichSettings) -> Enricher {
        let mut processes = ProcessTable::new(settings.retain_exited);
        processes.seed_from_proc();
        Enricher {
            host: v1::Host {
                hostname: host.hostname,
                machine_id: host.machine_id,
                agent_id: String::new(),
            },
            clock: BootClock::measure(),
            processes,
            users: UserNames::default(),
            hasher: BinaryHasher::new(settings.hash_max_bytes),
            watches,
            policy: PolicyTables::default(),
            pending_argv: HashMap::new(),
            pending_order: VecDeque::new(),
            binary_hashes: HashMap::new(),
            mounts: MountTable::default(),
            sessions: crate::db::session::Sessions::new(settings.full_statements),
            connects: ConnectDecisions::default(),
            settings,
            seq: 0,
        }
    }

    /// Takes a newly installed policy set (in kernel `slot`) and its watches.
    pub fn set_policy(&mut self, slot: u32, generation: u64, compiled: Arc<Compiled>) {
        self.watches = Arc::new(compiled.watches.clone());
        self.policy.set(slot, generation, compiled);
    }

    /// Takes what `/proc` showed of a process at the moment of an event that is enriched
    /// later (the fanotify layer reads it while the opener waits).
    pub fn observe_process(&mut self, snapshot: crate::process::procfs::ProcSnapshot) {
        self.processes.observe(snapshot);
    }

    /// Numbers the next events after `seq` (a durable sink's last sequence number).
    pub fn resume_after(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// Re-measures the boot-time → wall-clock offset (after NTP steps).
    pub fn refresh_clock(&mut self) {
        self.clock = BootClock::measure();
    }

    /// Enriches one record into the events it completes: none when the record is bookkeeping
    /// only (argv waiting for its exec, bytes of an unfinished database message) or turns out
    /// not to concern a watch; several when captured database bytes finish several statements
    /// or a process exit ends database sessions.
    pub fn enrich(&mut self, raw: RawEvent) -> Vec<v1::Event> {
        let header = *raw.header();
        match raw {
            RawEvent::DbSock(e) => {
                let unix = i32::from(e.family) == libc::AF_UNIX;
                let decision = if e.role == db_role::CLIENT {
                    let endpoint = if unix {
                        Endpoint::Unix {
                            dev: e.dev,
                            ino: e.ino,
                        }
                    } else {
                        Endpoint::Tcp(e.dport)
                    };
                    self.connects.take(e.header.tgid, endpoint)
                } else {
                    None
                };
                let path = if unix {
                    self.settings
                        .db_unix_sockets
                        .iter()
                        .find(|p| FileId::of(p).is_ok_and(|id| id.dev == e.dev && id.ino == e.ino))
                        .map(|p| p.display().to_string())
                } else {
                    None
                };
                self.sessions.open(&e, path, decision);
                Vec::new()
            }
            RawEvent::DbData(d) => {
                let bodies = self.sessions.data(&d.event, &d.data);
                bodies
                    .into_iter()
                    .map(|body| self.finish(&header, body, None))
                    .collect()
            }
            RawEvent::Exit(e) => {
                let ended = self
                    .sessions
                    .process_exited(e.header.tgid, e.header.boot_ns);
                let mut out: Vec<v1::Event> = ended
                    .into_iter()
                    .map(|body| self.finish(&header, body, None))
                    .collect();
                out.extend(self.enrich_one(RawEvent::Exit(e)));
                out
            }
            RawEvent::SockState(e) => {
                // Database ports reach here too (their closes end sessions); a TCP state event
                // is reported only for watched and protected ports.
                let mut out: Vec<v1::Event> = Vec::new();
                if e.new_state == TCP_CLOSE {
                    if let Some(body) = self.sessions.socket_closed(e.skaddr, e.header.boot_ns) {
                        out.push(self.finish(&header, body, None));
                    }
                }
                if e.header.flags & FLAG_SOCK_DATABASE_ONLY == 0 {
                    out.extend(self.enrich_one(RawEvent::SockState(e)));
                }
                out
            }
            other => self.enrich_one(other).into_iter().collect(),
        }
    }

    fn enrich_one(&mut self, raw: RawEvent) -> Option<v1::Event> {
        let header = *raw.header();
        let decision = match &raw {
            RawEvent::Exec(e) => self.policy.describe(&e.decision),
            RawEvent::FileOpen(e) => self.policy.describe(&e.decision),
            RawEvent::Connect(e) => self.policy.describe(&e.decision),
            _ => None,
        };
        let body = match raw {
            RawEvent::ExecArgs(args) => {
                self.hold_argv(args);
                return None;
            }
            RawEvent::Fork(e) => {
                let parent = (e.header.tgid, e.header.start_boot_ns);
                self.processes
                    .on_fork(parent, e.child_tgid, e.child_start_boot_ns);
                Body::Fork(v1::ProcessFork {
                    child_pid: e.child_tgid,
                    child_start_time: Some(self.timestamp(e.child_start_boot_ns)),
                })
            }
            RawEvent::Exec(e) => {
                let filename = text(&e.filename, e.filename_len);
                let (argv, truncated) = match self.pending_argv.remove(&e.old_pid) {
                    Some(args) => (args.argv, args.truncated),
                    None => (Vec::new(), false),
                };
                let h = &e.header;
                let exec = ExecInfo {
                    ppid: h.ppid,
                    filename: filename.clone(),
                    argv,
                    argv_truncated: truncated || h.flags & FLAG_TRUNCATED != 0,
                    uid: h.uid,
                    gid: h.gid,
                    loginuid: known(h.loginuid),
                    sessionid: known(h.sessionid),
                    cwd: exec_cwd(&e, &mut self.mounts),
                };
                if h.flags & FLAG_EXEC_REFUSED == 0 {
                    self.processes.on_exec(h.tgid, h.start_boot_ns, exec);
                    self.binary_hashes.remove(&(h.tgid, h.start_boot_ns));
                }
                Body::Exec(v1::ProcessExec {
                    filename,
                    old_pid: e.old_pid,
                })
            }
            RawEvent::Exit(e) => {
                let code = e.exit_code;
                let body = Body::Exit(v1::ProcessExit {
                    exit_code: Some(code),
                    exit_status: (code & 0x7f == 0).then_some(((code >> 8) & 0xff) as i32),
                    signal: (code & 0x7f != 0).then(|| signal_name(code & 0x7f)),
                });
                // Build the event before marking the process gone, then forget its hash.
                let event = self.finish(&header, body, None);
                self.processes
                    .on_exit(header.tgid, header.start_boot_ns, code);
                self.binary_hashes
                    .remove(&(header.tgid, header.start_boot_ns));
                return Some(event);
            }
            RawEvent::FileOpen(e) => {
                let pid = e.header.tgid;
                self.processes.refresh_cwd(pid, e.header.start_boot_ns);
                let cwd = self
                    .processes
                    .get(pid, e.header.start_boot_ns)
                    .and_then(|p| p.cwd.clone());
                let resolved = file::resolve_open(&e, &self.watches, |dirfd| {
                    if dirfd == file::AT_FDCWD {
                        fs::read_link(format!("/proc/{pid}/cwd"))
                            .ok()
                            .or(cwd.map(PathBuf::from))
                    } else {
                        fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).ok()
                    }
                })?;
                let ret = e.ret;
                let flags = e.open_flags as i32;
                let access = match flags & libc::O_ACCMODE {
                    libc::O_WRONLY => v1::Access::Write,
                    libc::O_RDWR => v1::Access::ReadWrite,
                    _ => v1::Access::Read,
                };
                Body::FileOpen(v1::FileOpen {
                    path: resolved.path.display().to_string(),
                    requested_path: text(&e.path, e.path_len),
                    path_resolved: resolved.resolved,
                    syscall: if e.header.flags & FLAG_COMPAT_SYSCALL != 0 {
                        format!("{} (32-bit entry)", open_syscall_name(e.syscall))
                    } else {
                        open_syscall_name(e.syscall).to_owned()
                    },
                    result: Some(ret),
                    error: if ret < 0 {
                        errno_name(-ret)
                    } else {
                        String::new()
                    },
                    flags: file::flag_names(e.open_flags)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                    access: access as i32,
                    mode: e.mode,
                    created: flags & libc::O_CREAT != 0,
                    watch: resolved
                        .watch
                        .map(|w| w.display().to_string())
                        .unwrap_or_default(),
                    device: u64::from(e.dev),
                    inode: e.ino,
                    truncated: e.header.flags & FLAG_TRUNCATED != 0,
                })
            }
            RawEvent::Connect(e) => {
                self.processes
                    .refresh_cwd(e.header.tgid, e.header.start_boot_ns);
                if let Some(d) = &decision {
                    self.connects.record(e.header.tgid, connect_endpoint(&e), d);
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
            // Handled by `enrich`.
            RawEvent::DbSock(_) | RawEvent::DbData(_) => return None,
            RawEvent::SockState(e) => Body::TcpState(v1::TcpState {
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
            }),
        };
        Some(self.finish(&header, body, decision))
    }

    /// An agent-side event (no kernel record behind it), such as a loss report.
    pub fn agent_event(&mut self, body: Body) -> v1::Event {
        let mut event = self.envelope();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        event.time = Some(pbjson_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        });
        event.process = Some(v1::Process {
            pid: std::process::id(),
            tid: std::process::id(),
            exe: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            comm: "phiguard".into(),
            ..Default::default()
        });
        event.body = Some(body);
        event
    }

    fn hold_argv(&mut self, args: ExecArgs) {
        let tid = args.header.pid;
        if self.pending_argv.insert(tid, args).is_none() {
            self.pending_order.push_back(tid);
        }
        while self.pending_order.len() > MAX_PENDING_ARGV {
            if let Some(old) = self.pending_order.pop_front() {
                self.pending_argv.remove(&old);
            }
        }
        if self.pending_order.len() > 2 * self.pending_argv.len() + 64 {
            let live = &self.pending_argv;
            self.pending_order.retain(|tid| live.contains_key(tid));
        }
    }

    fn envelope(&mut self) -> v1::Event {
        self.seq += 1;
        v1::Event {
            id: uuid::Uuid::now_v7().to_string(),
            seq: self.seq,
            host: Some(self.host.clone()),
            ..Default::default()
        }
    }

    fn timestamp(&self, boot_ns: u64) -> pbjson_types::Timestamp {
        let (seconds, nanos) = self.clock.to_unix(boot_ns);
        pbjson_types::Timestamp { seconds, nanos }
    }

    fn finish(
        &mut self,
        header: &EventHeader,
        body: Body,
        decision: Option<v1::Decision>,
    ) -> v1::Event {
        let mut event = self.envelope();
        event.decision = decision;
        event.time = Some(self.timestamp(header.boot_ns));
        if header.flags & FLAG_NO_PROCESS == 0 {
            event.process = Some(self.process(header));
            event.ancestry = self
                .processes
                .ancestry(
                    header.tgid,
                    header.start_boot_ns,
                    self.settings.ancestry_depth,
                )
                .into_iter()
                .map(|a| v1::Ancestor {
                    pid: a.pid,
                    exe: a.exe.unwrap_or_default(),
                    comm: a.comm,
                })
                .collect();
        }
        event.body = Some(body);
        event
    }

    /// The subject process: the kernel's view at the time of the event, completed from the
    /// process table (which survives the process's exit).
    fn process(&mut self, h: &EventHeader) -> v1::Process {
        let entry = self.processes.get_or_load(h.tgid, h.start_boot_ns).cloned();
        let user = |users: &mut UserNames, id: u32| v1::User {
            id: Some(id),
            name: users.user_name(id).unwrap_or_default(),
        };
        let mut process = v1::Process {
            pid: h.tgid,
            tid: h.pid,
            ppid: h.ppid,
            comm: c_text(&h.comm),
            user: Some(user(&mut self.users, h.uid)),
            group: Some(v1::Group {
                id: Some(h.gid),
                name: self.users.group_name(h.gid).unwrap_or_default(),
            }),
            login_user: known(h.loginuid).map(|id| user(&mut self.users, id)),
            session_id: known(h.sessionid),
            start_time: Some(self.timestamp(h.start_boot_ns)),
            ..Default::default()
        };
        if let Some(p) = entry {
            process.binary_sha256 = self.binary_hash(
                h.tgid,
                h.start_boot_ns,
                p.exe.as_deref(),
                p.exited_at.is_some(),
            );
            process.exe = p.exe.unwrap_or_default();
            // Minimum necessary: SQL literals and passwords in a database client's arguments.
            process.argv = if self.settings.full_statements {
                p.argv
            } else {
                crate::db::argv::redact(&process.exe, &p.argv).unwrap_or(p.argv)
            };
            process.argv_truncated = p.argv_truncated;
            process.cwd = p.cwd.unwrap_or_default();
            process.cgroup = p.cgroup.unwrap_or_default();
            process.container_id = p.container_id.unwrap_or_default();
            process.exited = p.exited_at.is_some();
        }
        process
    }

    /// sha256 of the process's binary, once per process incarnation.
    fn binary_hash(&mut self, tgid: u32, start: u64, exe: Option<&str>, exited: bool) -> String {
        if let Some(hash) = self.binary_hashes.get(&(tgid, start)) {
            return hash.clone().unwrap_or_default();
        }
        // /proc/<pid>/exe is the very file even if the path was replaced since; after exit,
        // fall back to the path.
        let proc_exe = PathBuf::from(format!("/proc/{tgid}/exe"));
        let hash = if !exited && proc_exe.exists() {
            self.hasher.sha256_of(&proc_exe)
        } else {
            exe.and_then(|e| self.hasher.sha256_of(std::path::Path::new(e)))
        };
        self.binary_hashes.insert((tgid, start), hash.clone());
        hash.unwrap_or_default()
    }
}

/// The working directory an exec record carries: names up to the root of a mount, joined
/// to where that mount is. `None` when the walk was cut or the mount is not visible here.
fn exec_cwd(e: &ExecEvent, mounts: &mut MountTable) -> Option<String> {
    if e.header.flags & FLAG_CWD_COMPLETE == 0 {
        return None;
    }
    let bytes = &e.cwd[..(e.cwd_len as usize).min(e.cwd.len())];
    let names = paths::split_names(bytes, bytes.iter().filter(|b| **b == 0).count());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let root = mounts.mount_point(e.cwd_mnt_id)?;
    Some(paths::join_names(root, &names).display().to_string())
}

/// `u32::MAX` means "unset" for audit ids.
fn known(id: u32) -> Option<u32> {
    (id != u32::MAX).then_some(id)
}

fn open_syscall_name(code: u32) -> &'static str {
    use agent_common::event::open_syscall::*;
    match code {
        OPEN => "open",
        OPENAT => "openat",
        OPENAT2 => "openat2",
        CREAT => "creat",
        OPEN_BY_HANDLE_AT => "open_by_handle_at",
        EXEC => "execve",
        OTHER => "other (io_uring or a kernel worker)",
        _ => "unknown",
    }
}

fn errno_name(errno: i64) -> String {
    let errno = nix::errno::Errno::from_raw(errno as i32);
    format!("{errno:?}")
}

fn signal_name(signal: u32) -> String {
    nix::sys::signal::Signal::try_from(signal as i32)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("SIG{signal}"))
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

fn address(family: u16, bytes: &[u8; 16]) -> String {
    if i32::from(family) == libc::AF_INET {
        Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()
    } else {
        Ipv6Addr::from(*bytes).to_string()
    }
}

/// The kernel's `TCP_CLOSE` state.
const TCP_CLOSE: u32 = 7;

fn tcp_state_name(state: u32) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(13), "EACCES");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(tcp_state_name(1), "ESTABLISHED");
        assert_eq!(tcp_state_name(7), "CLOSE");
        assert_eq!(tcp_state_name(99), "UNKNOWN");
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(address(libc::AF_INET as u16, &v4), "127.0.0.1");
        assert_eq!(
            address(libc::AF_INET6 as u16, &Ipv6Addr::LOCALHOST.octets()),
            "::1"
        );
    }
}
