//! Database sessions: from the kernel's tracked sockets and captured bytes to session-start,
//! statement and session-end events.
//!
//! One [`Session`] per tracked socket (by kernel socket address) holds a protocol decoder and
//! pairs each statement with its outcome. The protocol is recognised from the first bytes
//! (a PostgreSQL startup packet or a MySQL server greeting), else from the port (3306 and
//! 33060 are MySQL, anything else PostgreSQL).
//!
//! A session the kernel joined mid-way (opened before the agent started, `FLAG_DB_JOINED`)
//! starts at its first captured bytes: its protocol is recognised from how those frame
//! (PostgreSQL's type byte and big-endian length, MySQL's little-endian length and sequence),
//! a TLS record says it is encrypted, and its decoder takes messages from the first byte
//! ([`postgres::Decoder::mid_session`]). Its start event is sent at once, with `joined` set
//! and nothing invented for what the login would have said.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use phiguard_common::{
    event::{
        db_op, db_role, FLAG_DB_CONTINUED, FLAG_DB_FRAMED, FLAG_DB_FRAMING_LOST, FLAG_DB_JOINED,
        FLAG_DB_MYSQL, FLAG_DB_UNDELIVERED, FLAG_TRUNCATED,
    },
    limits::DB_CAPTURE_LEN,
};
use phiguard_proto::v1::{self, event::Body};

use super::{
    frame::Span,
    mysql, postgres,
    sql::{self, Dialect},
    Chunk, CopyDirection, Direction, Encryption, Message,
};
use crate::event::net::{DbEnds, DbRole, DbSock, DbTransfer};

/// Most sessions followed at once; the oldest is dropped beyond it.
pub const MAX_SESSIONS: usize = 4096;
/// Most statements waiting for their outcome per session (a pipeline of more reports its
/// oldest without an outcome, and that outcome, when it comes, pairs with nothing).
const MAX_PENDING: usize = 256;
/// How long a session whose TCP connection closed while a statement ran waits for the
/// statement's outcome (the server writes it when it finishes, whether or not the client is
/// still there) before it ends without it, in kernel nanoseconds. Its process's exit or its
/// socket's end of stream ends it sooner.
pub const CLOSED_LINGER_NS: u64 = 600 * 1_000_000_000;

/// The wire protocol of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// PostgreSQL frontend/backend protocol 3.
    Postgres,
    /// MySQL/MariaDB client/server protocol.
    MySql,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgresql",
            Protocol::MySql => "mysql",
        }
    }

    fn dialect(self) -> Dialect {
        match self {
            Protocol::Postgres => Dialect::Postgres,
            Protocol::MySql => Dialect::MySql,
        }
    }
}

enum Decoder {
    /// Not yet known: waiting for the first bytes.
    Unknown,
    Postgres(postgres::Decoder),
    MySql(mysql::Decoder),
}

struct Pending {
    /// The request cycle (a Query, or the messages up to a Sync) it was sent in: the
    /// server's ReadyForQuery ends one cycle.
    cycle: u64,
    text: String,
    truncated: bool,
    name: String,
    prepared: bool,
    start_ns: u64,
    /// The statement moves bulk data this way (the server said so).
    copy: Option<CopyDirection>,
}

/// A login (or MySQL COM_CHANGE_USER) waiting for the server's verdict.
struct Attempt {
    user: String,
    database: String,
    method: String,
    change_user: bool,
}

struct Session {
    info: v1::DbSession,
    /// The login or change of user whose outcome is still to come.
    attempt: Option<Attempt>,
    port: u16,
    decoder: Decoder,
    protocol: Option<Protocol>,
    start_ns: u64,
    started: bool,
    encrypted: Option<Encryption>,
    application: String,
    bytes_sent: u64,
    bytes_received: u64,
    statements: u32,
    desync: bool,
    /// Framed records the kernel could not deliver, so far.
    lost_records: u64,
    /// Per direction (to server, to client): records were lost and the next span that starts
    /// a message is awaited.
    awaiting_boundary: [bool; 2],
    /// Per direction: its records are framed by the kernel's walk. A joined session's
    /// direction is captured by system call until the kernel finds a message boundary.
    framed: [bool; 2],
    /// Records were lost: outcomes are not paired with statements until the server is idle.
    outcomes_unpaired: bool,
    /// Outcomes still to come of statements already reported without one (the pending
    /// queue overflowed).
    orphaned_outcomes: usize,
    /// Request cycles the client opened and the server ended (ReadyForQuery): a pipeline of
    /// queries has several open at once.
    cycles_sent: u64,
    /// See [`Session::cycles_sent`].
    cycles_done: u64,
    pending: VecDeque<Pending>,
    /// The settings that change how this session's statements are lexed, once its protocol
    /// is known.
    lexing: Option<sql::Settings>,
    /// The process that last read or wrote the socket (a forked server backend takes over
    /// from the process that accepted).
    owner: u32,
    /// When its TCP connection closed while statements waited for their outcome: the
    /// session ends once they have it (see [`CLOSED_LINGER_NS`]).
    closed_ns: Option<u64>,
}

/// What a capture record carries.
#[derive(Clone, Copy, Debug)]
pub enum Capture<'a> {
    /// The call's first bytes, and its last ones when it moved more and they were captured.
    Raw {
        /// The first bytes.
        data: &'a [u8],
        /// The last bytes (empty when not captured).
        tail: &'a [u8],
    },
    /// The kernel's framing walk of the call ([`crate::db::frame`]).
    Framed {
        /// The record's data.
        data: &'a [u8],
        /// Its spans.
        spans: &'a [Span],
        /// Records of this direction lost just before.
        lost: u32,
    },
}

/// Every session the agent follows.
#[derive(Default)]
pub struct Sessions {
    sessions: HashMap<u64, Session>,
    order: VecDeque<u64>,
    full_statements: bool,
    /// Configured local-identifier patterns, hidden in redacted statement text too.
    extra_patterns: Vec<regex::Regex>,
}

impl Sessions {
    /// An empty table; `full_statements` keeps literals in statement text.
    pub fn new(full_statements: bool) -> Self {
        Self {
            full_statements,
            ..Self::default()
        }
    }

    /// Also hides every match of `patterns` (`***`) in redacted statement text.
    pub fn with_extra_patterns(mut self, patterns: Vec<regex::Regex>) -> Self {
        self.extra_patterns = patterns;
        self
    }

    /// A socket became tracked. `unix_socket` is the configured path of its endpoint;
    /// `connect_decision` the policy verdict on the connect that opened it, when a policy
    /// names the endpoint.
    pub fn open(
        &mut self,
        e: &DbSock,
        unix_socket: Option<String>,
        connect_decision: Option<v1::Decision>,
    ) {
        let role = match e.role {
            DbRole::Server => "server",
            DbRole::Client => "client",
        };
        let (transport, port, local, remote) = match e.ends {
            DbEnds::Unix(_) => ("unix", 0, None, None),
            DbEnds::Tcp { local, remote } => (
                "tcp",
                e.server_port().unwrap_or(0),
                Some(local),
                Some(remote),
            ),
        };
        let address = |end: Option<SocketAddr>| end.map(|a| a.ip().to_string()).unwrap_or_default();
        let session = Session {
            info: v1::DbSession {
                socket_id: e.socket_id,
                protocol: String::new(),
                role: role.into(),
                transport: transport.into(),
                local_port: u32::from(local.map_or(0, |a| a.port())),
                remote_port: u32::from(remote.map_or(0, |a| a.port())),
                unix_socket: unix_socket.unwrap_or_default(),
                db_user: String::new(),
                database: String::new(),
                connect_decision,
                local_address: address(local),
                remote_address: address(remote),
                joined: e.header.flags & FLAG_DB_JOINED != 0,
                effective_user: String::new(),
                db_role: String::new(),
            },
            attempt: None,
            port,
            decoder: Decoder::Unknown,
            protocol: None,
            start_ns: e.header.boot_ns,
            started: false,
            encrypted: None,
            application: String::new(),
            bytes_sent: 0,
            bytes_received: 0,
            statements: 0,
            desync: false,
            lost_records: 0,
            awaiting_boundary: [false; 2],
            framed: [false; 2],
            outcomes_unpaired: false,
            orphaned_outcomes: 0,
            cycles_sent: 0,
            cycles_done: 0,
            pending: VecDeque::new(),
            lexing: None,
            owner: e.header.pid,
            closed_ns: None,
        };
        if self.sessions.insert(e.socket_id, session).is_none() {
            self.order.push_back(e.socket_id);
        }
        while self.sessions.len() > MAX_SESSIONS {
            match self.order.pop_front() {
                Some(old) => {
                    self.sessions.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Bytes moved on a tracked socket. Returns the events they complete.
    pub fn data(&mut self, e: &DbTransfer, data: &[u8]) -> Vec<Body> {
        self.data_with_tail(e, data, &[])
    }

    /// Bytes moved on a tracked socket, with the call's last bytes when it moved more than
    /// `data` and they were captured. Returns the events they complete.
    pub fn data_with_tail(&mut self, e: &DbTransfer, data: &[u8], tail: &[u8]) -> Vec<Body> {
        self.record(e, Capture::Raw { data, tail })
    }

    /// A capture record of a tracked socket, raw or framed. Returns the events it completes.
    pub fn record(&mut self, e: &DbTransfer, capture: Capture<'_>) -> Vec<Body> {
        let mut out = Vec::new();
        let Some(session) = self.sessions.get_mut(&e.socket_id) else {
            return out;
        };
        let direction = match (e.role, e.op) {
            (db_role::SERVER, db_op::WRITE) | (db_role::CLIENT, db_op::READ) => Direction::ToClient,
            _ => Direction::ToServer,
        };
        session.owner = e.header.pid;
        let continued = e.header.flags & FLAG_DB_CONTINUED != 0;
        if continued {
            // A further record of a call already counted.
        } else if e.header.flags & FLAG_DB_UNDELIVERED != 0 {
            // The server's write to a client that is gone: decoded, not counted as sent.
        } else if e.op == db_op::WRITE {
            session.bytes_sent += u64::from(e.len);
        } else {
            session.bytes_received += u64::from(e.len);
        }
        if e.op == db_op::READ && e.len == 0 && !continued {
            // End of stream: the peer closed.
            out.extend(self.close(e.socket_id, "eof", e.header.boot_ns));
            self.hide_patterns(&mut out);
            return out;
        }
        let chunks: Vec<Chunk<'_>> = match capture {
            Capture::Raw { data, tail } => {
                let len = if e.header.flags & FLAG_TRUNCATED != 0 {
                    e.len as usize
                } else {
                    data.len()
                };
                let len = len.max(data.len());
                vec![Chunk {
                    direction,
                    data,
                    len,
                    tail: if len > data.len() { tail } else { &[] },
                }]
            }
            Capture::Framed { data, spans, lost } => {
                let dir = usize::from(direction == Direction::ToClient);
                if !session.framed[dir] {
                    // The kernel's walk of this direction starts at a message: what the
                    // system-call captures before it left half-read is dropped.
                    session.framed[dir] = true;
                    match &mut session.decoder {
                        Decoder::Postgres(d) => d.restart_stream(direction),
                        Decoder::MySql(d) => d.restart_stream(direction),
                        Decoder::Unknown => {}
                    }
                }
                if lost > 0 {
                    session.lost_records += u64::from(lost);
                    session.awaiting_boundary[dir] = true;
                    session.lost_outcomes(e.header.boot_ns, self.full_statements, &mut out);
                }
                if e.header.flags & FLAG_DB_FRAMING_LOST != 0 {
                    session.desync = true;
                }
                spans
                    .iter()
                    .filter(|span| {
                        if session.awaiting_boundary[dir] && span.boundary {
                            session.awaiting_boundary[dir] = false;
                            match &mut session.decoder {
                                Decoder::Postgres(d) => d.resync(direction),
                                Decoder::MySql(d) => d.resync(direction),
                                Decoder::Unknown => {}
                            }
                        }
                        !session.awaiting_boundary[dir]
                    })
                    .map(|span| span.chunk(direction, data))
                    .collect()
            }
        };
        let data = chunks.first().map_or(&[][..], |c| c.data);
        let walked_as = (e.header.flags & FLAG_DB_FRAMED != 0).then_some(
            if e.header.flags & FLAG_DB_MYSQL != 0 {
                Protocol::MySql
            } else {
                Protocol::Postgres
            },
        );
        if walked_as.is_some_and(|p| session.protocol.is_some_and(|q| q != p)) && !data.is_empty() {
            // A joined session's protocol was guessed from its first system-call captures;
            // the kernel's walk knows it.
            session.decoder = Decoder::Unknown;
        }
        if matches!(session.decoder, Decoder::Unknown) && !data.is_empty() {
            let joined = session.info.joined;
            let protocol = if let Some(protocol) = walked_as {
                // The kernel recognised the session and walks its framing.
                protocol
            } else if joined {
                sniff_joined(direction, data, session.port)
            } else {
                sniff(direction, data, session.port)
            };
            session.protocol = Some(protocol);
            session.info.protocol = protocol.name().into();
            session.decoder = match (protocol, joined) {
                (Protocol::Postgres, false) => Decoder::Postgres(postgres::Decoder::new()),
                (Protocol::Postgres, true) => Decoder::Postgres(postgres::Decoder::mid_session()),
                (Protocol::MySql, false) => Decoder::MySql(mysql::Decoder::new()),
                (Protocol::MySql, true) => Decoder::MySql(mysql::Decoder::mid_session()),
            };
            if joined && !session.started {
                if is_tls_record(data) {
                    session.encrypted = Some(Encryption::Tls);
                }
                session.started = true;
                out.push(session.start_event());
            }
        }
        if session.info.joined && session.encrypted.is_some() {
            // Joined inside TLS: only the byte counts are known.
            return out;
        }
        let mut messages = Vec::new();
        for chunk in chunks {
            messages.extend(match &mut session.decoder {
                Decoder::Postgres(d) => d.feed(chunk),
                Decoder::MySql(d) => d.feed(chunk),
                Decoder::Unknown => Vec::new(),
            });
        }
        let mut terminated = false;
        for m in messages {
            session.apply(
                m,
                e.header.boot_ns,
                self.full_statements,
                &mut out,
                &mut terminated,
            );
        }
        let closed = session.closed_ns.is_some() && session.pending.is_empty();
        if terminated {
            out.extend(self.close(e.socket_id, "terminate", e.header.boot_ns));
        } else if closed {
            // The connection closed while this statement ran: its outcome was the session's
            // last message.
            out.extend(self.close(e.socket_id, "close", e.header.boot_ns));
        }
        self.hide_patterns(&mut out);
        out
    }

    /// Hides the configured local-identifier patterns in the redacted statements of `out`.
    fn hide_patterns(&self, out: &mut [Body]) {
        for body in out {
            if let Body::DbStatement(st) = body {
                if st.redacted {
                    for re in &self.extra_patterns {
                        if let std::borrow::Cow::Owned(t) = re.replace_all(&st.text, "***") {
                            st.text = t;
                        }
                    }
                }
            }
        }
    }

    /// Ends every session whose socket only `tgid` held (its process exited), at kernel
    /// time `now_ns`.
    pub fn process_exited(&mut self, tgid: u32, now_ns: u64) -> Vec<Body> {
        let ended: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.owner == tgid)
            .map(|(&k, _)| k)
            .collect();
        let mut out: Vec<Body> = ended
            .into_iter()
            .flat_map(|sock| self.close(sock, "exit", now_ns))
            .collect();
        self.hide_patterns(&mut out);
        out
    }

    /// The TCP connection of socket `sock` closed at kernel time `now_ns`: its session ends
    /// (the events that ends it; none when no session is followed there), unless statements
    /// still wait for their outcome. A client killed mid-statement closes its connection
    /// while the server still runs the statement; the server's outcome comes after the close
    /// (on loopback even the reset that closes the server's end arrives before the write that
    /// carried the outcome returns), so the session ends after that outcome, at its owner's
    /// exit or end of stream, or [`CLOSED_LINGER_NS`] later. Sessions that waited that long
    /// end here too, their statements without an outcome.
    pub fn socket_closed(&mut self, sock: u64, now_ns: u64) -> Vec<Body> {
        let stale: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.closed_ns
                    .is_some_and(|t| now_ns.saturating_sub(t) > CLOSED_LINGER_NS)
            })
            .map(|(&k, _)| k)
            .collect();
        let mut out: Vec<Body> = stale
            .into_iter()
            .flat_map(|k| self.close(k, "close", now_ns))
            .collect();
        match self.sessions.get_mut(&sock) {
            Some(s) if !s.pending.is_empty() => {
                s.closed_ns.get_or_insert(now_ns);
            }
            Some(_) => out.extend(self.close(sock, "close", now_ns)),
            None => {}
        }
        self.hide_patterns(&mut out);
        out
    }

    /// Ends the session on `sock`: a statement still waiting for its outcome is reported
    /// without one (never dropped), then the session's end.
    fn close(&mut self, sock: u64, reason: &str, now_ns: u64) -> Vec<Body> {
        let Some(mut s) = self.sessions.remove(&sock) else {
            return Vec::new();
        };
        self.order.retain(|&k| k != sock);
        let dialect = s.protocol.unwrap_or(Protocol::Postgres).dialect();
        let mut out = Vec::new();
        while let Some(p) = s.pending.pop_front() {
            out.push(s.statement(p, dialect, self.full_statements, now_ns, |_| {}));
        }
        out.push(Body::DbSessionEnd(v1::DbSessionEnd {
            session: Some(s.info),
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            statements: s.statements,
            duration_us: now_ns.saturating_sub(s.start_ns) / 1000,
            encrypted: s.encrypted.is_some(),
            reason: reason.into(),
            desynchronised: s.desync,
            lost_records: s.lost_records,
        }));
        out
    }

    /// Sessions followed now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is followed.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

impl Session {
    fn apply(
        &mut self,
        m: Message,
        now_ns: u64,
        full: bool,
        out: &mut Vec<Body>,
        terminated: &mut bool,
    ) {
        let dialect = self.protocol.unwrap_or(Protocol::Postgres).dialect();
        match m {
            Message::Encrypted(method) => {
                self.encrypted = Some(method);
                if !self.started {
                    self.started = true;
                    out.push(self.start_event());
                }
            }
            Message::Startup {
                user,
                database,
                application,
            } => {
                // The session's first login request (not MySQL's COM_INIT_DB, which names a
                // database only): its outcome is a login event.
                if !self.started && !self.info.joined {
                    self.attempt = Some(Attempt {
                        user: user.clone().unwrap_or_default(),
                        database: database.clone().unwrap_or_default(),
                        method: String::new(),
                        change_user: false,
                    });
                }
                if let Some(u) = user {
                    self.info.db_user = u;
                }
                if let Some(d) = database {
                    self.info.database = d;
                }
                if let Some(a) = application {
                    self.application = a;
                }
                if !self.started {
                    self.started = true;
                    out.push(self.start_event());
                }
            }
            Message::AuthMethod { method } => {
                if let Some(a) = &mut self.attempt {
                    a.method = method;
                }
            }
            Message::ChangeUser { user, database } => {
                self.command_after_loss(now_ns, full, out);
                self.attempt = Some(Attempt {
                    user,
                    database: database.unwrap_or_default(),
                    method: String::new(),
                    change_user: true,
                });
            }
            Message::AuthOk => {
                if let Some(a) = self.attempt.take() {
                    if a.change_user {
                        // A new login on the same connection: a new identity for what follows.
                        self.info.db_user.clone_from(&a.user);
                        self.info.database.clone_from(&a.database);
                        self.info.effective_user.clear();
                        self.info.db_role.clear();
                    }
                    out.push(self.login(a, true, None, None));
                }
            }
            Message::Error { sqlstate, code, .. } if self.attempt.is_some() => {
                if let Some(a) = self.attempt.take() {
                    out.push(self.login(a, false, sqlstate, code));
                }
            }
            Message::Query { text, truncated } => {
                self.command_after_loss(now_ns, full, out);
                // A Query is a cycle of its own.
                let cycle = self.cycles_sent;
                self.cycles_sent += 1;
                self.push(
                    Pending {
                        cycle,
                        text,
                        truncated,
                        name: String::new(),
                        prepared: false,
                        start_ns: now_ns,
                        copy: None,
                    },
                    now_ns,
                    full,
                    out,
                )
            }
            Message::Execute { name, text } => {
                self.command_after_loss(now_ns, full, out);
                self.push(
                    Pending {
                        cycle: self.cycles_sent,
                        text: text.unwrap_or_default(),
                        truncated: false,
                        name,
                        prepared: true,
                        start_ns: now_ns,
                        copy: None,
                    },
                    now_ns,
                    full,
                    out,
                );
            }
            Message::Complete { .. } | Message::Error { .. } if self.outcomes_unpaired => {}
            Message::Complete { .. } | Message::Error { .. } if self.orphaned_outcomes > 0 => {
                self.orphaned_outcomes -= 1;
            }
            Message::Complete { tag, rows } => {
                if let Some(p) = self.pending.pop_front() {
                    out.push(self.statement(p, dialect, full, now_ns, |st| {
                        st.command_tag = tag;
                        st.rows = rows;
                        st.ok = true;
                    }));
                }
            }
            Message::Error { sqlstate, code, .. } => {
                if let Some(p) = self.pending.pop_front() {
                    out.push(self.statement(p, dialect, full, now_ns, |st| {
                        st.sqlstate = sqlstate.unwrap_or_default();
                        st.error_code = code.map_or(0, u32::from);
                    }));
                }
            }
            // The server is idle: whatever is still pending got no outcome of its own (the
            // rest of an extended-protocol batch after an error).
            Message::Ready => {
                self.outcomes_unpaired = false;
                self.orphaned_outcomes = 0;
                if self.cycles_done < self.cycles_sent {
                    self.cycles_done += 1;
                }
                // The cycle that ended: what is still pending of it got no outcome of its own
                // (the rest of an extended-protocol batch after an error). Later cycles of a
                // pipeline wait for theirs.
                while self
                    .pending
                    .front()
                    .is_some_and(|p| p.cycle < self.cycles_done)
                {
                    if let Some(p) = self.pending.pop_front() {
                        out.push(self.statement(p, dialect, full, now_ns, |_| {}));
                    }
                }
            }
            Message::Sync => self.cycles_sent += 1,
            Message::Copy { direction } => {
                if let Some(p) = self.pending.front_mut() {
                    p.copy = Some(direction);
                }
            }
            // A COPY whose end was not captured: it ends with no outcome.
            Message::CopyUnseen => {
                if let Some(p) = self.pending.pop_front() {
                    out.push(self.statement(p, dialect, full, now_ns, |_| {}));
                }
            }
            Message::Terminate => *terminated = true,
            Message::Desync { .. } => self.desync = true,
            Message::Setting { name, value } => {
                let settings = self
                    .lexing
                    .get_or_insert_with(|| sql::Settings::unknown(dialect));
                match name.as_str() {
                    "no_backslash_escapes" => {
                        settings.server_no_backslash_escapes(value == "on");
                    }
                    _ => settings.server_parameter(&name, &value),
                }
            }
            Message::Prepare { .. } => {}
        }
    }

    /// A MySQL client's command while outcomes are unpaired (records were lost): the server
    /// answers each command before its client sends the next (the classic protocol does not
    /// pipeline), so every earlier statement was answered — in the lost records, or while
    /// answers were not paired. Those still pending are reported without an outcome, and
    /// outcomes pair again from this command on. (PostgreSQL waits for ReadyForQuery instead;
    /// a pipelining client there can have several statements in flight.)
    fn command_after_loss(&mut self, now_ns: u64, full: bool, out: &mut Vec<Body>) {
        if !self.outcomes_unpaired || self.protocol != Some(Protocol::MySql) {
            return;
        }
        let dialect = Protocol::MySql.dialect();
        while let Some(p) = self.pending.pop_front() {
            out.push(self.statement(p, dialect, full, now_ns, |_| {}));
        }
        self.outcomes_unpaired = false;
        self.orphaned_outcomes = 0;
    }

    /// Records were lost: the statements waiting for an outcome are reported without one
    /// (theirs, or a lost statement's, may have been in the lost records), and outcomes are
    /// not paired again until the server is idle.
    fn lost_outcomes(&mut self, now_ns: u64, full: bool, out: &mut Vec<Body>) {
        let dialect = self.protocol.unwrap_or(Protocol::Postgres).dialect();
        while let Some(p) = self.pending.pop_front() {
            out.push(self.statement(p, dialect, full, now_ns, |_| {}));
        }
        self.outcomes_unpaired = true;
        self.cycles_done = self.cycles_sent;
    }

    /// A login event for `attempt` with the server's verdict.
    fn login(
        &self,
        attempt: Attempt,
        ok: bool,
        sqlstate: Option<String>,
        code: Option<u16>,
    ) -> Body {
        // PostgreSQL accepted without asking for a credential: trust, peer or ident.
        let method = if ok && attempt.method.is_empty() && self.protocol == Some(Protocol::Postgres)
        {
            "none".into()
        } else {
            attempt.method
        };
        Body::DbLogin(v1::DbLogin {
            session: Some(self.info.clone()),
            user: attempt.user,
            database: attempt.database,
            method,
            ok,
            sqlstate: sqlstate.unwrap_or_default(),
            error_code: code.map_or(0, u32::from),
            change_user: attempt.change_user,
        })
    }

    fn push(&mut self, p: Pending, now_ns: u64, full: bool, out: &mut Vec<Body>) {
        // A statement means the login went through even if its outcome was not seen.
        self.attempt = None;
        if self.pending.len() >= MAX_PENDING {
            if let Some(oldest) = self.pending.pop_front() {
                let dialect = self.protocol.unwrap_or(Protocol::Postgres).dialect();
                out.push(self.statement(oldest, dialect, full, now_ns, |_| {}));
                self.orphaned_outcomes += 1;
            }
        }
        self.pending.push_back(p);
    }

    fn start_event(&self) -> Body {
        Body::DbSessionStart(v1::DbSessionStart {
            session: Some(self.info.clone()),
            application: self.application.clone(),
            encrypted: self.encrypted.is_some(),
            encryption: match self.encrypted {
                Some(Encryption::Tls) => "tls".into(),
                Some(Encryption::Gss) => "gss".into(),
                None => String::new(),
            },
        })
    }

    fn statement(
        &mut self,
        p: Pending,
        dialect: Dialect,
        full: bool,
        now_ns: u64,
        outcome: impl FnOnce(&mut v1::DbStatement),
    ) -> Body {
        self.statements += 1;
        let settings = self
            .lexing
            .get_or_insert_with(|| sql::Settings::unknown(dialect));
        let analysis = sql::analyze_with(&p.text, settings, !full);
        let learn = analysis.touches_settings.then(|| p.text.clone());
        let identity = sql::identity_changes(&p.text, settings);
        let mut st = v1::DbStatement {
            session: Some(self.info.clone()),
            text: analysis.redacted.unwrap_or(p.text),
            redacted: !full,
            truncated: p.truncated,
            kind: analysis.kind.as_str().into(),
            tables: analysis.tables,
            statement_name: p.name,
            prepared: p.prepared,
            duration_us: now_ns.saturating_sub(p.start_ns) / 1000,
            copy_direction: p.copy.map(CopyDirection::as_str).unwrap_or_default().into(),
            lost_records: self.lost_records,
            ..Default::default()
        };
        outcome(&mut st);
        if st.ok {
            // Later events carry an identity the server accepted; this one ran before it.
            for change in identity {
                apply_identity(&mut self.info, change);
            }
        }
        if let Some(text) = learn.filter(|_| st.ok) {
            settings.statement_succeeded(&text);
        }
        Body::DbStatement(st)
    }
}

/// Records an identity change the server accepted: the login user (`db_user`) stays, the
/// session user and role beside it change.
fn apply_identity(info: &mut v1::DbSession, change: sql::IdentityChange) {
    match change {
        sql::IdentityChange::Role(role) => info.db_role = role,
        sql::IdentityChange::ResetRole => info.db_role.clear(),
        sql::IdentityChange::SessionAuthorization(user) => {
            info.effective_user = if user == info.db_user {
                String::new()
            } else {
                user
            };
            info.db_role.clear();
        }
        sql::IdentityChange::ResetAuthorization => {
            info.effective_user.clear();
            info.db_role.clear();
        }
    }
}

/// Whether `data` starts with a TLS record header (type 20..=23, version 3.x).
fn is_tls_record(data: &[u8]) -> bool {
    matches!(data, [20..=23, 3, 0..=4, ..])
}

/// Which protocol the first bytes of a joined session speak: the frame each protocol's
/// messages begin with, checked against the chunk's length, else the port.
fn sniff_joined(direction: Direction, data: &[u8], port: u16) -> Protocol {
    let port_guess = if matches!(port, 3306 | 33060) {
        Protocol::MySql
    } else {
        Protocol::Postgres
    };
    let Some(head) = data.get(..5) else {
        return port_guess;
    };
    // MySQL: 3-byte little-endian payload length and a sequence number; a client command
    // starts a sequence (0). The payload fits what was captured or is cut by the capture.
    let my_len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    let mysql = my_len > 0
        && (direction == Direction::ToClient || head[3] == 0)
        && (my_len + 4 <= data.len() || data.len() >= DB_CAPTURE_LEN);
    // PostgreSQL: a message type letter and a 4-byte big-endian length of at least 4.
    let pg_len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let postgres = head[0].is_ascii_alphabetic() && (4..(1 << 30)).contains(&pg_len);
    match (postgres, mysql) {
        (true, false) => Protocol::Postgres,
        (false, true) => Protocol::MySql,
        _ => port_guess,
    }
}

/// Which protocol the first bytes speak.
fn sniff(direction: Direction, data: &[u8], port: u16) -> Protocol {
    match direction {
        // A MySQL server greets first: length, sequence 0, protocol version 10.
        Direction::ToClient if data.len() > 4 && data[3] == 0 && data[4] == 0x0a => Protocol::MySql,
        // A PostgreSQL client starts with an untyped packet: length, then a protocol or
        // request code.
        Direction::ToServer if data.len() >= 8 => {
            let code = i32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            if code >> 16 == 3 || (80_877_102..=80_877_104).contains(&code) {
                Protocol::Postgres
            } else if matches!(port, 3306 | 33060) {
                Protocol::MySql
            } else {
                Protocol::Postgres
            }
        }
        _ if matches!(port, 3306 | 33060) => Protocol::MySql,
        _ => Protocol::Postgres,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::postgres::tests::{client_session, server_session};

    fn sock_record(role: u32) -> phiguard_common::event::DbSockEvent {
        // SAFETY: all-zero is a valid record (plain integers).
        let mut e: phiguard_common::event::DbSockEvent = unsafe { std::mem::zeroed() };
        e.sock = 0xffff_8880_0000_1000;
        e.role = role;
        e.family = libc::AF_INET as u16;
        e.sport = 40_000;
        e.dport = 5432;
        e
    }

    fn sock(role: u32) -> DbSock {
        DbSock::decode(&sock_record(role))
    }

    fn data(role: u32, op: u32, ns: u64, len: u32) -> DbTransfer {
        // SAFETY: as above.
        let mut e: phiguard_common::event::DbDataEvent = unsafe { std::mem::zeroed() };
        e.sock = 0xffff_8880_0000_1000;
        e.role = role;
        e.op = op;
        e.len = len;
        e.captured = len;
        e.header.boot_ns = ns;
        DbTransfer::decode(&e)
    }

    #[test]
    fn a_client_session_yields_start_statements_and_end() {
        let mut s = Sessions::new(false);
        s.open(&sock(db_role::CLIENT), None, None);
        let c = client_session();
        let srv = server_session();
        let mut out = s.data(
            &data(db_role::CLIENT, db_op::WRITE, 1_000, c.len() as u32),
            &c,
        );
        out.extend(s.data(
            &data(db_role::CLIENT, db_op::READ, 5_000_000, srv.len() as u32),
            &srv,
        ));
        let kinds: Vec<&str> = out
            .iter()
            .map(|b| match b {
                Body::DbSessionStart(_) => "start",
                Body::DbStatement(_) => "statement",
                Body::DbSessionEnd(_) => "end",
                _ => "other",
            })
            .collect();
        // The client wrote Terminate before the answers: its statements end with the session,
        // reported without an outcome rather than dropped.
        let statements = kinds.iter().filter(|k| **k == "statement").count();
        assert!(statements > 0, "{kinds:?}");
        assert_eq!(kinds.first(), Some(&"start"));
        assert_eq!(kinds.last(), Some(&"end"));
        for b in &out {
            if let Body::DbStatement(st) = b {
                assert!(!st.ok && st.command_tag.is_empty(), "{st:?}");
            }
        }
        let Body::DbSessionStart(start) = &out[0] else {
            unreachable!()
        };
        let info = start.session.as_ref().unwrap();
        assert_eq!(
            (info.db_user.as_str(), info.database.as_str()),
            ("alice", "ehr")
        );
        assert_eq!(start.application, "psql");
        assert_eq!(info.protocol, "postgresql");
    }

    /// A framed record says which protocol the kernel walked: a MySQL client that reads the
    /// greeting's 4-byte header apart from its body is MySQL on any port, though those 4 bytes
    /// alone could be anything.
    #[test]
    fn a_framed_record_names_the_protocol_the_kernel_walked() {
        use crate::db::frame::Span;
        for (flags, want) in [
            (FLAG_DB_FRAMED | FLAG_DB_MYSQL, "mysql"),
            (FLAG_DB_FRAMED, "postgresql"),
        ] {
            let mut s = Sessions::new(false);
            s.open(&sock(db_role::CLIENT), None, None);
            let mut e = data(db_role::CLIENT, db_op::READ, 1_000, 4);
            e.header.flags |= flags;
            let header = [74, 0, 0, 0];
            let spans = [Span {
                moved: 4,
                start: 0,
                captured: 4,
                boundary: true,
            }];
            s.record(
                &e,
                Capture::Framed {
                    data: &header,
                    spans: &spans,
                    lost: 0,
                },
            );
            assert_eq!(s.sessions[&e.socket_id].info.protocol, want);
        }
    }

    /// Issue 17 item 2: the connection of a server end closes (its client was killed) while a
    /// statement runs; the session ends once the server's outcome is decoded, not at the close.
    #[test]
    fn a_closed_connection_ends_the_session_after_the_outcome_of_its_last_statement() {
        use crate::db::postgres::tests::{query, startup_message, typed};
        let mut s = Sessions::new(false);
        s.open(&sock(db_role::SERVER), None, None);
        let su = startup_message(&[("user", "alice"), ("database", "ehr")]);
        s.data(&data(db_role::SERVER, db_op::READ, 0, su.len() as u32), &su);
        let q = query("UPDATE t SET n = n + 1 WHERE id = 7");
        s.data(
            &data(db_role::SERVER, db_op::READ, 1_000, q.len() as u32),
            &q,
        );
        let socket = sock(db_role::SERVER).socket_id;
        assert!(
            s.socket_closed(socket, 2_000).is_empty(),
            "ended at the close"
        );
        assert_eq!(s.len(), 1);
        let mut answer = typed(b'C', b"UPDATE 1\0");
        answer.extend(typed(b'Z', b"I"));
        // The server's write after its client is gone (EPIPE on a unix socket).
        let mut e = data(db_role::SERVER, db_op::WRITE, 3_000, answer.len() as u32);
        e.header.flags |= FLAG_DB_UNDELIVERED;
        let out = s.data(&e, &answer);
        let [Body::DbStatement(st), Body::DbSessionEnd(end)] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert!(st.ok && st.command_tag == "UPDATE 1" && st.rows == Some(1));
        assert_eq!((end.reason.as_str(), end.statements), ("close", 1));
        assert_eq!(
            end.bytes_sent, 0,
            "undelivered bytes are not counted as sent"
        );
        assert!(s.is_empty());
    }

    /// A session whose connection closed waiting for an outcome that never comes ends at the
    /// next close after [`CLOSED_LINGER_NS`], its statement without an outcome; one with
    /// nothing pending ends at the close itself.
    #[test]
    fn a_closed_connection_waits_for_its_outcome_only_so_long() {
        use crate::db::postgres::tests::{query, startup_message};
        let mut s = Sessions::new(false);
        s.open(&sock(db_role::SERVER), None, None);
        let su = startup_message(&[("user", "alice"), ("database", "ehr")]);
        s.data(&data(db_role::SERVER, db_op::READ, 0, su.len() as u32), &su);
        let q = query("SELECT pg_sleep(1000)");
        s.data(
            &data(db_role::SERVER, db_op::READ, 1_000, q.len() as u32),
            &q,
        );
        let socket = sock(db_role::SERVER).socket_id;
        assert!(s.socket_closed(socket, 2_000).is_empty());
        assert!(s.socket_closed(1, 2_000 + CLOSED_LINGER_NS).is_empty());
        let out = s.socket_closed(1, 3_000 + CLOSED_LINGER_NS);
        let [Body::DbStatement(st), Body::DbSessionEnd(end)] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert!(!st.ok && st.command_tag.is_empty());
        assert_eq!(end.reason, "close");
        assert!(s.is_empty());
        s.open(&sock(db_role::SERVER), None, None);
        let out = s.socket_closed(socket, 5_000 + CLOSED_LINGER_NS);
        assert!(matches!(out.as_slice(), [Body::DbSessionEnd(_)]), "{out:?}");
    }

    #[test]
    fn statements_pair_with_outcomes_and_are_redacted() {
        use crate::db::postgres::tests::{query, startup_message, typed};
        let mut s = Sessions::new(false);
        s.open(&sock(db_role::SERVER), None, None);
        let su = startup_message(&[("user", "alice"), ("database", "ehr")]);
        let mut out = s.data(&data(db_role::SERVER, db_op::READ, 0, su.len() as u32), &su);
        let q = query("SELECT name FROM patients WHERE ssn = '123-45-6789'");
        out.extend(s.data(
            &data(db_role::SERVER, db_op::READ, 1_000_000, q.len() as u32),
            &q,
        ));
        let mut answer = typed(b'D', b"\0\x01\0\0\0\x08Jane Doe");
        answer.extend(typed(b'C', b"SELECT 1\0"));
        answer.extend(typed(b'Z', b"I"));
        out.extend(s.data(
            &data(
                db_role::SERVER,
                db_op::WRITE,
                3_000_000,
                answer.len() as u32,
            ),
            &answer,
        ));
        let q = query("INSERT INTO x VALUES (1)");
        out.extend(s.data(
            &data(db_role::SERVER, db_op::READ, 4_000_000, q.len() as u32),
            &q,
        ));
        let mut err = typed(b'E', b"SERROR\0C42P01\0Mrelation \"x\" does not exist\0\0");
        err.extend(typed(b'Z', b"I"));
        out.extend(s.data(
            &data(db_role::SERVER, db_op::WRITE, 4_500_000, err.len() as u32),
            &err,
        ));
        out.extend(s.data(&data(db_role::SERVER, db_op::READ, 9_000_000, 0), &[]));
        let statements: Vec<&v1::DbStatement> = out
            .iter()
            .filter_map(|b| match b {
                Body::DbStatement(st) => Some(st),
                _ => None,
            })
            .collect();
        assert_eq!(statements.len(), 2);
        assert_eq!(
            statements[0].text,
            "SELECT name FROM patients WHERE ssn = ?"
        );
        assert_eq!(
            (
                statements[0].kind.as_str(),
                statements[0].rows,
                statements[0].ok
            ),
            ("SELECT", Some(1), true)
        );
        assert_eq!(statements[0].tables, ["patients"]);
        assert_eq!(statements[0].duration_us, 2000);
        assert_eq!(
            (statements[1].sqlstate.as_str(), statements[1].ok),
            ("42P01", false)
        );
        let Some(Body::DbSessionEnd(end)) = out.last() else {
            panic!("no end: {out:?}")
        };
        assert_eq!((end.statements, end.reason.as_str()), (2, "eof"));
        assert!(s.is_empty());
    }

    fn joined(port: u16) -> DbSock {
        let mut e = sock_record(db_role::CLIENT);
        e.header.flags = FLAG_DB_JOINED;
        e.dport = port;
        e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        DbSock::decode(&e)
    }

    #[test]
    fn copy_statements_carry_direction_and_rows_never_the_data() {
        use crate::db::postgres::tests::{query, startup_message, typed};
        let mut s = Sessions::new(false);
        s.open(&sock(db_role::CLIENT), None, None);
        let mut out = feed(
            &mut s,
            db_op::WRITE,
            0,
            &startup_message(&[("user", "alice")]),
        );
        let mut ok = typed(b'R', &0i32.to_be_bytes());
        ok.extend(typed(b'Z', b"I"));
        out.extend(feed(&mut s, db_op::READ, 1, &ok));
        out.extend(feed(&mut s, db_op::WRITE, 2, &query("COPY t FROM STDIN")));
        out.extend(feed(&mut s, db_op::READ, 3, &typed(b'G', &[0, 0, 1, 0, 0])));
        let mut rows = typed(b'd', b"1\tPHIMARK_IN\n");
        rows.extend(typed(b'c', b""));
        out.extend(feed(&mut s, db_op::WRITE, 4, &rows));
        let mut done = typed(b'C', b"COPY 1\0");
        done.extend(typed(b'Z', b"I"));
        out.extend(feed(&mut s, db_op::READ, 5, &done));
        out.extend(feed(&mut s, db_op::WRITE, 6, &query("COPY t TO STDOUT")));
        // 2,000 rows in one read, captured to its first 4 KiB and last 64 bytes.
        let mut copy_out = typed(b'H', &[0, 0, 1, 0, 0]);
        for i in 0..2000 {
            copy_out.extend(typed(b'd', format!("{i}\tPHIMARK_OUT\n").as_bytes()));
        }
        copy_out.extend(typed(b'c', b""));
        copy_out.extend(typed(b'C', b"COPY 2000\0"));
        copy_out.extend(typed(b'Z', b"I"));
        let mut e = data(db_role::CLIENT, db_op::READ, 7, copy_out.len() as u32);
        e.header.flags |= FLAG_TRUNCATED;
        let tail = &copy_out[copy_out.len() - 64..];
        out.extend(s.data_with_tail(&e, &copy_out[..4096], tail));
        out.extend(feed(&mut s, db_op::WRITE, 8, &query("SELECT 1")));
        let mut one = typed(b'C', b"SELECT 1\0");
        one.extend(typed(b'Z', b"I"));
        out.extend(feed(&mut s, db_op::READ, 9, &one));
        let statements: Vec<_> = out
            .iter()
            .filter_map(|b| match b {
                Body::DbStatement(st) => {
                    Some((st.text.as_str(), st.copy_direction.as_str(), st.rows, st.ok))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            statements,
            [
                ("COPY t FROM STDIN", "in", Some(1), true),
                ("COPY t TO STDOUT", "out", Some(2000), true),
                ("SELECT ?", "", Some(1), true),
            ]
        );
        assert!(!format!("{out:?}").contains("PHIMARK"));
    }

    fn feed(s: &mut Sessions, op: u32, ns: u64, bytes: &[u8]) -> Vec<Body> {
        s.data(&data(db_role::CLIENT, op, ns, bytes.len() as u32), bytes)
    }

    #[test]
    fn a_joined_postgres_session_starts_at_its_first_bytes_and_invents_no_login() {
        use crate::db::postgres::tests::{query, typed};
        let mut s = Sessions::new(false);
        s.open(&joined(5432), None, None);
        let mut out = feed(
            &mut s,
            db_op::WRITE,
            1_000,
            &query("SELECT * FROM p WHERE ssn = '1'"),
        );
        let mut answer = typed(b'C', b"SELECT 2\0");
        answer.extend(typed(b'Z', b"I"));
        out.extend(feed(&mut s, db_op::READ, 2_000, &answer));
        let [Body::DbSessionStart(start), Body::DbStatement(st)] = &out[..] else {
            panic!("start then statement: {out:?}")
        };
        let info = start.session.as_ref().unwrap();
        assert!(info.joined && !start.encrypted);
        assert_eq!(info.protocol, "postgresql");
        assert_eq!((info.db_user.as_str(), info.database.as_str()), ("", ""));
        assert_eq!(
            (info.local_address.as_str(), info.remote_address.as_str()),
            ("127.0.0.1", "10.1.2.3")
        );
        assert_eq!(st.text, "SELECT * FROM p WHERE ssn = ?");
        assert_eq!(st.rows, Some(2));
        assert!(st.session.as_ref().unwrap().joined);
    }

    #[test]
    fn pipelined_queries_each_keep_their_outcome_and_a_batch_error_ends_only_its_cycle() {
        use crate::db::postgres::tests::{query, typed};
        let mut s = Sessions::new(false);
        s.open(&joined(5432), None, None);
        // Three queries in one write, then an extended batch that fails before its Sync.
        let mut sent: Vec<u8> = (0..3)
            .flat_map(|i| query(&format!("SELECT {i} AS p")))
            .collect();
        sent.extend(typed(b'P', b"\0INSERT INTO t VALUES (1)\0\0\0"));
        sent.extend(typed(b'B', b"\0\0\0\0\0\0\0\0"));
        sent.extend(typed(b'E', b"\0\0\0\0\0"));
        sent.extend(typed(b'S', b""));
        let mut out = feed(&mut s, db_op::WRITE, 1_000, &sent);
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.extend(typed(b'C', b"SELECT 1\0"));
            answers.extend(typed(b'Z', b"I"));
        }
        answers.extend(typed(b'E', b"SERROR\0VERROR\0C23505\0\0"));
        answers.extend(typed(b'Z', b"I"));
        out.extend(feed(&mut s, db_op::READ, 2_000, &answers));
        let got: Vec<_> = out
            .iter()
            .filter_map(|b| match b {
                Body::DbStatement(st) => {
                    Some((st.text.as_str(), st.ok, st.rows, st.sqlstate.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            [
                ("SELECT ? AS p", true, Some(1), ""),
                ("SELECT ? AS p", true, Some(1), ""),
                ("SELECT ? AS p", true, Some(1), ""),
                ("INSERT INTO t VALUES (?)", false, None, "23505"),
            ]
        );
    }

    #[test]
    fn a_joined_mysql_session_on_any_port_is_recognised_by_its_framing() {
        let mut s = Sessions::new(false);
        s.open(&joined(13306), None, None);
        let mut query = vec![9, 0, 0, 0, 0x03];
        query.extend_from_slice(b"SELECT 1");
        let mut out = feed(&mut s, db_op::WRITE, 1_000, &query);
        out.extend(feed(
            &mut s,
            db_op::READ,
            2_000,
            &[7, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0],
        ));
        let [Body::DbSessionStart(start), Body::DbStatement(st)] = &out[..] else {
            panic!("start then statement: {out:?}")
        };
        assert_eq!(start.session.as_ref().unwrap().protocol, "mysql");
        assert_eq!((st.text.as_str(), st.ok), ("SELECT ?", true));
    }

    #[test]
    fn a_session_joined_inside_tls_is_encrypted_and_only_counted() {
        let mut s = Sessions::new(false);
        s.open(&joined(5432), None, None);
        let record = [23, 3, 3, 0, 40, 1, 2, 3];
        let out = feed(&mut s, db_op::WRITE, 1_000, &record);
        let [Body::DbSessionStart(start)] = &out[..] else {
            panic!("a start only: {out:?}")
        };
        assert!(start.encrypted && start.encryption == "tls");
        assert!(feed(&mut s, db_op::READ, 2_000, &record).is_empty());
        let out = feed(&mut s, db_op::READ, 3_000, &[]);
        let [Body::DbSessionEnd(end)] = &out[..] else {
            panic!("an end: {out:?}")
        };
        assert!(end.encrypted && end.session.as_ref().unwrap().joined);
        assert_eq!(
            (end.bytes_sent, end.bytes_received, end.statements),
            (8, 8, 0)
        );
    }

    fn server_feed(s: &mut Sessions, op: u32, ns: u64, bytes: &[u8]) -> Vec<Body> {
        s.data(&data(db_role::SERVER, op, ns, bytes.len() as u32), bytes)
    }

    fn logins(out: &[Body]) -> Vec<&v1::DbLogin> {
        out.iter()
            .filter_map(|b| match b {
                Body::DbLogin(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_refused_password_is_one_failed_login_without_the_password() {
        use crate::db::postgres::tests::{auth_request, login_refused, startup_message, typed};
        let mut s = Sessions::new(false);
        s.open(&sock(db_role::SERVER), None, None);
        let su = startup_message(&[("user", "clerk"), ("database", "ehr")]);
        let mut out = server_feed(&mut s, db_op::READ, 0, &su);
        out.extend(server_feed(&mut s, db_op::WRITE, 1, &auth_request(3, b"")));
        out.extend(server_feed(
            &mut s,
            db_op::READ,
            2,
            &typed(b'p', b"PHIMARKpassword\0"),
        ));
        out.extend(server_feed(
            &mut s,
            db_op::WRITE,
            3,
            &login_refused("28P01"),
        ));
        out.extend(server_feed(&mut s, db_op::READ, 4, &[]));
        assert!(matches!(
            &out[..],
            [
                Body::DbSessionStart(_),
                Body::DbLogin(_),
                Body::DbSessionEnd(_)
            ]
        ));
        let [login] = logins(&out)[..] else {
            unreachable!()
        };
        assert_eq!(
            (
                login.user.as_str(),
                login.database.as_str(),
                login.method.as_str(),
                login.ok,
                login.sqlstate.as_str(),
                login.change_user
            ),
            ("clerk", "ehr", "password", false, "28P01", false)
        );
        assert!(!format!("{out:?}").contains("PHIMARK"));
    }

    #[test]
    fn an_accepted_set_role_is_carried_by_later_statements() {
        use crate::db::postgres::tests::{auth_request, query, startup_message, typed};
        let mut s = Sessions::new(false);
        s.open(&sock(db_role::SERVER), None, None);
        let su = startup_message(&[("user", "postgres")]);
        let mut out = server_feed(&mut s, db_op::READ, 0, &su);
        let mut ok = auth_request(0, b"");
        ok.extend(typed(b'S', b"session_authorization\0postgres\0"));
        ok.extend(typed(b'Z', b"I"));
        out.extend(server_feed(&mut s, db_op::WRITE, 1, &ok));
        let exchanges: [(&str, Vec<u8>); 5] = [
            ("SET ROLE auditor", typed(b'C', b"SET\0")),
            ("SELECT 1", typed(b'C', b"SELECT 1\0")),
            (
                "SET ROLE nobody",
                typed(b'E', b"SERROR\0C42704\0Mrole does not exist\0\0"),
            ),
            ("SET SESSION AUTHORIZATION clerk", typed(b'C', b"SET\0")),
            ("SELECT 2", typed(b'C', b"SELECT 1\0")),
        ];
        for (i, (sql, mut answer)) in exchanges.into_iter().enumerate() {
            let ns = 10 + 2 * i as u64;
            out.extend(server_feed(&mut s, db_op::READ, ns, &query(sql)));
            answer.extend(typed(b'Z', b"I"));
            out.extend(server_feed(&mut s, db_op::WRITE, ns + 1, &answer));
        }
        let [login] = logins(&out)[..] else {
            panic!("one login: {out:?}")
        };
        assert_eq!((login.method.as_str(), login.ok), ("none", true));
        let identities: Vec<(String, &str, &str, &str)> = out
            .iter()
            .filter_map(|b| match b {
                Body::DbStatement(st) => {
                    let info = st.session.as_ref().unwrap();
                    Some((
                        st.text.clone(),
                        info.db_user.as_str(),
                        info.effective_user.as_str(),
                        info.db_role.as_str(),
                    ))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            identities,
            [
                ("SET ROLE auditor".into(), "postgres", "", ""),
                ("SELECT ?".into(), "postgres", "", "auditor"),
                ("SET ROLE nobody".into(), "postgres", "", "auditor"),
                (
                    "SET SESSION AUTHORIZATION clerk".into(),
                    "postgres",
                    "",
                    "auditor"
                ),
                ("SELECT ?".into(), "postgres", "clerk", ""),
            ]
        );
    }

    #[test]
    fn an_accepted_change_user_is_a_login_and_the_new_user_of_later_statements() {
        use crate::db::mysql::tests::change_user_packet;
        let mut s = Sessions::new(false);
        s.open(&joined(3306), None, None);
        let mut out = feed(
            &mut s,
            db_op::WRITE,
            1,
            &change_user_packet("mallory", "ehr"),
        );
        out.extend(feed(
            &mut s,
            db_op::READ,
            2,
            &[
                15, 0, 0, 1, 0xff, 0x15, 0x04, b'#', b'2', b'8', b'0', b'0', b'0', b'd', b'e',
                b'n', b'i', b'e', b'd',
            ],
        ));
        out.extend(feed(
            &mut s,
            db_op::WRITE,
            3,
            &change_user_packet("clerk", "ehr"),
        ));
        out.extend(feed(
            &mut s,
            db_op::READ,
            4,
            &[7, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0],
        ));
        let mut query = vec![9, 0, 0, 0, 0x03];
        query.extend_from_slice(b"SELECT 1");
        out.extend(feed(&mut s, db_op::WRITE, 5, &query));
        out.extend(feed(
            &mut s,
            db_op::READ,
            6,
            &[7, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0],
        ));
        let got: Vec<(&str, bool, &str, u32, &str)> = logins(&out)
            .iter()
            .map(|l| {
                (
                    l.user.as_str(),
                    l.ok,
                    l.method.as_str(),
                    l.error_code,
                    l.session.as_ref().unwrap().db_user.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("mallory", false, "mysql_native_password", 1045, ""),
                ("clerk", true, "mysql_native_password", 0, "clerk"),
            ]
        );
        assert!(logins(&out).iter().all(|l| l.change_user));
        let Some(Body::DbStatement(st)) = out.last() else {
            panic!("a statement last: {out:?}")
        };
        assert_eq!(st.session.as_ref().unwrap().db_user, "clerk");
        assert!(!format!("{out:?}").contains("PHIMARK"));
    }
}
