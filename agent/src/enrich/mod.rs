//! Enrichment: turns decoded kernel records into complete audit events — who (process,
//! ancestry, user and login user, binary hash), where (host), when (wall clock), and what.
//! One module per kind of record: [`process`], [`file`], [`net`] and [`db`]; this one
//! dispatches and puts the event together (time, subject process, ancestry, decision).

mod db;
pub mod file;
pub mod hash;
pub mod host;
mod net;
mod process;
pub mod users;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use phiguard_common::event::{FLAG_NO_PROCESS, FLAG_SOCK_DATABASE_ONLY};
use phiguard_proto::v1::{self, event::Body};

use self::{
    hash::BinaryHasher,
    host::{BootClock, HostInfo},
    users::UserNames,
};
use crate::{
    db::connects::ConnectDecisions,
    event::{
        decode::{DecodedEvent, ExecArgs},
        header::Header,
    },
    kernel::mounts::MountTable,
    policy::{compile::Compiled, decision::PolicyTables},
    process::table::ProcessTable,
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
    /// Redacts every process's argv (unless `full_statements`), with the configured extra
    /// patterns.
    pub argv_redactor: crate::db::argv::ArgvRedactor,
}

/// Holds everything enrichment needs. (Events are numbered on their way to the sinks:
/// `sink::numbering`.)
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
    redacted_argv: process::RedactedArgvs,
    mounts: MountTable,
    settings: EnrichSettings,
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
                instance_id: String::new(),
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
            redacted_argv: process::RedactedArgvs::default(),
            mounts: MountTable::default(),
            sessions: crate::db::session::Sessions::new(settings.full_statements)
                .with_extra_patterns(settings.argv_redactor.patterns().to_vec()),
            connects: ConnectDecisions::default(),
            settings,
        }
    }

    /// Takes a newly installed policy set (in kernel `slot`) and its watches.
    pub fn set_policy(&mut self, slot: u32, generation: u64, compiled: Arc<Compiled>) {
        self.watches = Arc::new(compiled.watches.clone());
        self.policy.set(slot, generation, compiled);
    }

    /// Names break-glass grant `grant` in the decisions it allows (by its slot and generation).
    pub fn set_break_glass(&mut self, grant: &crate::breakglass::grant::Grant) {
        self.policy.set_grant(
            grant.slot,
            grant.generation,
            crate::breakglass::grant_use(grant),
        );
    }

    /// Takes what `/proc` showed of a process at the moment of an event that is enriched
    /// later (the fanotify layer reads it while the opener waits).
    pub fn observe_process(&mut self, snapshot: crate::process::procfs::ProcSnapshot) {
        self.processes.observe(snapshot);
    }

    /// Re-measures the boot-time → wall-clock offset (after NTP steps).
    pub fn refresh_clock(&mut self) {
        self.clock = BootClock::measure();
    }

    /// Enriches one record into the events it completes: none when the record is bookkeeping
    /// only (argv waiting for its exec, bytes of an unfinished database message) or turns out
    /// not to concern a watch; several when captured database bytes finish several statements
    /// or a process exit ends database sessions.
    pub fn enrich(&mut self, event: DecodedEvent) -> Vec<v1::Event> {
        match event {
            DecodedEvent::DbSock(e) => {
                self.db_sock(&e);
                Vec::new()
            }
            DecodedEvent::DbData(d) => self.db_data(&d),
            DecodedEvent::Exit(e) => {
                let ended = self.sessions.process_exited(e.header.pid, e.header.boot_ns);
                let mut out: Vec<v1::Event> = ended
                    .into_iter()
                    .map(|body| self.finish(e.header.clone(), body, None))
                    .collect();
                out.extend(self.enrich_one(DecodedEvent::Exit(e)));
                out
            }
            DecodedEvent::SockState(e) => {
                // Database ports reach here too (their closes end sessions); a TCP state event
                // is reported only for watched and protected ports.
                let mut out: Vec<v1::Event> = Vec::new();
                if e.new_state == TCP_CLOSE {
                    for body in self.sessions.socket_closed(e.socket_id, e.header.boot_ns) {
                        out.push(self.finish(e.header.clone(), body, None));
                    }
                }
                if e.header.flags & FLAG_SOCK_DATABASE_ONLY == 0 {
                    out.extend(self.enrich_one(DecodedEvent::SockState(e)));
                }
                out
            }
            other => self.enrich_one(other).into_iter().collect(),
        }
    }

    fn enrich_one(&mut self, event: DecodedEvent) -> Option<v1::Event> {
        let decision = match &event {
            DecodedEvent::Exec(e) => self.policy.describe(&e.decision),
            DecodedEvent::FileOpen(e) => self.policy.describe(&e.decision),
            DecodedEvent::Connect(e) => self.policy.describe(&e.decision),
            _ => None,
        };
        let script = match &event {
            DecodedEvent::Exec(e) => self.policy.script(&e.decision),
            DecodedEvent::FileOpen(e) => self.policy.script(&e.decision),
            DecodedEvent::Connect(e) => self.policy.script(&e.decision),
            _ => None,
        };
        // Each body is built from its record before the record's header moves into the event.
        let (header, body) = match event {
            DecodedEvent::ExecArgs(args) => {
                self.hold_argv(args);
                return None;
            }
            DecodedEvent::Fork(e) => {
                let body = self.fork(&e);
                (e.header, body)
            }
            DecodedEvent::Exec(e) => {
                let body = self.exec(&e);
                (e.header, body)
            }
            DecodedEvent::Exit(e) => return Some(self.exit(e)),
            DecodedEvent::FileOpen(e) => {
                let body = self.file_open(&e)?;
                (e.header, body)
            }
            DecodedEvent::Connect(e) => {
                let body = self.connect(&e, decision.as_ref());
                (e.header, body)
            }
            // Handled by `enrich`.
            DecodedEvent::DbSock(_) | DecodedEvent::DbData(_) => return None,
            DecodedEvent::SockState(e) => {
                let body = self.tcp_state(&e);
                (e.header, body)
            }
        };
        let mut event = self.finish(header, body, decision);
        if let Some(process) = event.process.as_mut() {
            process.script = script;
        }
        Some(event)
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

    /// An event with its host; its id and sequence number come at the sinks.
    fn envelope(&self) -> v1::Event {
        v1::Event {
            host: Some(self.host.clone()),
            ..Default::default()
        }
    }

    fn timestamp(&self, boot_ns: u64) -> pbjson_types::Timestamp {
        let (seconds, nanos) = self.clock.to_unix(boot_ns);
        pbjson_types::Timestamp { seconds, nanos }
    }

    /// The event of a record: its time, subject process and ancestry (unless the record is
    /// about no process), decision and body.
    fn finish(&mut self, header: Header, body: Body, decision: Option<v1::Decision>) -> v1::Event {
        let mut event = self.envelope();
        event.decision = decision;
        event.time = Some(self.timestamp(header.boot_ns));
        if header.flags & FLAG_NO_PROCESS == 0 {
            let (pid, start_boot_ns) = (header.pid, header.start_boot_ns);
            event.process = Some(self.process(header));
            event.ancestry = self
                .processes
                .ancestry(pid, start_boot_ns, self.settings.ancestry_depth)
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
}

/// The kernel's `TCP_CLOSE` state.
const TCP_CLOSE: u32 = 7;

#[cfg(test)]
mod tests {
    use super::{file::errno_name, net::tcp_state_name, process::signal_name};

    #[test]
    fn names() {
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(13), "EACCES");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(tcp_state_name(1), "ESTABLISHED");
        assert_eq!(tcp_state_name(7), "CLOSE");
        assert_eq!(tcp_state_name(99), "UNKNOWN");
    }
}
