//! Fan-out to subscribers: every stored record is published once to a broadcast hub; each
//! subscription replays from the store (from a time or a sequence number) and then follows
//! the hub, with its own filter.
//!
//! A subscription remembers, per agent, the last chain index it has passed. A live record
//! at or below it is a duplicate of the replay and is skipped; a record beyond the next
//! index (the subscription fell behind, or the agent is new) makes it read the missing part
//! from the store first. So a slow subscriber loses nothing and sees each agent's records in
//! chain order, exactly once. Records with index 0 are live notices that are in no chain
//! (an alert that the store cannot be written): passed on to live subscribers as they come.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use phiguard_proto::v1::{self, event::Body};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;
use tracing::{debug, warn};

use crate::{
    audit::AUDIT_CHAIN,
    scope::Scope,
    store::{Cursor, Record, Store, StoreError},
};

/// Most values per filter field.
pub const MAX_FILTER_VALUES: usize = 64;
/// Longest filter value.
pub const MAX_FILTER_VALUE_BYTES: usize = 4096;
/// Records read from the store per step of a replay.
const REPLAY_CHUNK: usize = 512;

/// The kinds of event a filter can name (JSON names of the `body` fields).
pub const KINDS: &[&str] = &[
    "exec",
    "fork",
    "exit",
    "fileOpen",
    "connect",
    "tcpState",
    "eventsLost",
    "policyLoad",
    "alert",
    "dbSessionStart",
    "dbLogin",
    "dbStatement",
    "dbSessionEnd",
    "heartbeat",
    "tamper",
    "subscription",
    "breakGlass",
];

/// A subscription request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A filter value is not acceptable.
    #[error("filter {field}: {message}")]
    Filter {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The JSON name of an event's kind (empty when it has no body).
pub fn kind_name(event: &v1::Event) -> &'static str {
    match &event.body {
        Some(Body::Exec(_)) => "exec",
        Some(Body::Fork(_)) => "fork",
        Some(Body::Exit(_)) => "exit",
        Some(Body::FileOpen(_)) => "fileOpen",
        Some(Body::Connect(_)) => "connect",
        Some(Body::TcpState(_)) => "tcpState",
        Some(Body::EventsLost(_)) => "eventsLost",
        Some(Body::PolicyLoad(_)) => "policyLoad",
        Some(Body::Alert(_)) => "alert",
        Some(Body::DbSessionStart(_)) => "dbSessionStart",
        Some(Body::DbStatement(_)) => "dbStatement",
        Some(Body::DbSessionEnd(_)) => "dbSessionEnd",
        Some(Body::Heartbeat(_)) => "heartbeat",
        Some(Body::Tamper(_)) => "tamper",
        Some(Body::Subscription(_)) => "subscription",
        Some(Body::BreakGlass(_)) => "breakGlass",
        Some(Body::DbLogin(_)) => "dbLogin",
        None => "",
    }
}

fn normalise_kind(kind: &str) -> String {
    kind.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The kind `kind` names (`file_open`, `FileOpen` and `fileOpen` are all `fileOpen`).
pub fn canonical_kind(kind: &str) -> Option<&'static str> {
    let wanted = normalise_kind(kind);
    KINDS.iter().find(|k| normalise_kind(k) == wanted).copied()
}

/// A validated filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    hosts: BTreeSet<String>,
    kinds: BTreeSet<&'static str>,
    verdicts: BTreeSet<i32>,
    users: BTreeSet<String>,
    path_prefixes: Vec<String>,
    /// What the subscriber may see at all (None: no limit, for the collector's own use).
    scope: Option<Scope>,
}

impl Filter {
    /// Validates a wire filter.
    pub fn from_proto(filter: &v1::EventFilter) -> Result<Filter, StreamError> {
        let check = |field: &'static str, values: &[String]| {
            if values.len() > MAX_FILTER_VALUES {
                return Err(StreamError::Filter {
                    field,
                    message: format!("more than {MAX_FILTER_VALUES} values"),
                });
            }
            if let Some(v) = values
                .iter()
                .find(|v| v.is_empty() || v.len() > MAX_FILTER_VALUE_BYTES)
            {
                return Err(StreamError::Filter {
                    field,
                    message: format!("value of {} bytes", v.len()),
                });
            }
            Ok(())
        };
        check("hosts", &filter.hosts)?;
        check("kinds", &filter.kinds)?;
        check("users", &filter.users)?;
        check("path_prefixes", &filter.path_prefixes)?;
        let mut kinds = BTreeSet::new();
        for kind in &filter.kinds {
            let found = canonical_kind(kind).ok_or_else(|| StreamError::Filter {
                field: "kinds",
                message: format!("unknown kind {kind:?} (one of {})", KINDS.join(", ")),
            })?;
            kinds.insert(found);
        }
        if filter.verdicts.len() > MAX_FILTER_VALUES {
            return Err(StreamError::Filter {
                field: "verdicts",
                message: format!("more than {MAX_FILTER_VALUES} values"),
            });
        }
        for &verdict in &filter.verdicts {
            if v1::Verdict::try_from(verdict).is_err() {
                return Err(StreamError::Filter {
                    field: "verdicts",
                    message: format!("unknown verdict {verdict}"),
                });
            }
        }
        Ok(Filter {
            hosts: filter
                .hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            kinds,
            verdicts: filter.verdicts.iter().copied().collect(),
            users: filter.users.iter().cloned().collect(),
            path_prefixes: filter.path_prefixes.clone(),
            scope: None,
        })
    }

    /// The same filter, passing only what `scope` allows.
    pub fn within(self, scope: Scope) -> Filter {
        Filter {
            scope: Some(scope),
            ..self
        }
    }

    /// Whether `agent`'s `event` passes.
    pub fn matches(&self, agent: &str, event: &v1::Event) -> bool {
        if self.scope.as_ref().is_some_and(|s| !s.allows(agent, event)) {
            return false;
        }
        if !self.hosts.is_empty()
            && !self.hosts.contains(agent)
            && !event
                .host
                .as_ref()
                .is_some_and(|h| !h.machine_id.is_empty() && self.hosts.contains(&h.machine_id))
        {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(kind_name(event)) {
            return false;
        }
        if !self.verdicts.is_empty() {
            let verdict = event.decision.as_ref().map_or(0, |d| d.verdict);
            if !self.verdicts.contains(&verdict) {
                return false;
            }
        }
        if !self.users.is_empty() {
            let Some(process) = &event.process else {
                return false;
            };
            let user_matches = |user: &Option<v1::User>| {
                user.as_ref().is_some_and(|u| {
                    (!u.name.is_empty() && self.users.contains(&u.name))
                        || u.id.is_some_and(|id| self.users.contains(&id.to_string()))
                })
            };
            if !user_matches(&process.user) && !user_matches(&process.login_user) {
                return false;
            }
        }
        if !self.path_prefixes.is_empty() {
            let Some(Body::FileOpen(open)) = &event.body else {
                return false;
            };
            if !self
                .path_prefixes
                .iter()
                .any(|p| path_has_prefix(&open.path, p))
            {
                return false;
            }
        }
        true
    }
}

/// `path` is `prefix` or below it (`/srv/ephi` matches `/srv/ephi/x`, not `/srv/ephix`).
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Only records stored from now on.
    Live,
    /// Stored records whose event time is at or after this (Unix seconds, nanoseconds).
    Time(i64, i32),
    /// Each agent's stored records from this seq on.
    Seq(u64),
}

/// The broadcast hub every stored record passes through.
pub struct Hub {
    tx: broadcast::Sender<Arc<Record>>,
}

impl Hub {
    /// A hub buffering `capacity` records for slow subscribers (who then catch up from the
    /// store).
    pub fn new(capacity: usize) -> Hub {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Hub { tx }
    }

    /// Publishes records (in chain order per agent).
    pub fn publish(&self, records: &[Arc<Record>]) {
        for record in records {
            // No subscribers is fine.
            let _ = self.tx.send(record.clone());
        }
    }

    /// Number of live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// One subscription's state.
struct Subscription {
    store: Arc<Store>,
    filter: Filter,
    start: Start,
    positions: BTreeMap<Arc<str>, u64>,
    started: BTreeSet<Arc<str>>,
    tx: mpsc::Sender<Result<v1::Event, Status>>,
    sent: u64,
}

/// The subscriber went away.
struct Gone;

/// How a subscription ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The subscriber closed its stream or went away (or a store read failed, logged).
    Left,
    /// A replay-only subscription has sent everything stored.
    ReplayDone,
    /// Ended by the collector (`cancel`).
    Cancelled,
}

impl End {
    /// As the audit record says it.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Left => {
                "the stream ended (the subscriber left, or the store could not be read: logged)"
            }
            End::ReplayDone => "replay finished",
            End::Cancelled => "ended by the collector",
        }
    }
}

/// How a subscription ended and how many events it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Why it ended.
    pub end: End,
    /// Events sent to it.
    pub sent: u64,
}

impl Subscription {
    fn wanted_by_start(&mut self, record: &Record) -> bool {
        match self.start {
            Start::Live => true,
            Start::Time(seconds, nanos) => {
                let t = record
                    .event
                    .time
                    .map_or((record.received, 0), |t| (t.seconds, t.nanos));
                t >= (seconds, nanos)
            }
            Start::Seq(seq) => {
                // The collector's audit records have no seq: its chain is replayed whole.
                if self.started.contains(&record.agent) || *record.agent == *AUDIT_CHAIN {
                    return true;
                }
                if record.event.seq >= seq {
                    self.started.insert(record.agent.clone());
                    return true;
                }
                false
            }
        }
    }

    async fn deliver(&mut self, record: &Record) -> Result<(), Gone> {
        self.positions.insert(record.agent.clone(), record.index);
        if self.wanted_by_start(record) && self.filter.matches(&record.agent, &record.event) {
            self.tx
                .send(Ok(record.event.clone()))
                .await
                .map_err(|_| Gone)?;
            self.sent += 1;
        }
        Ok(())
    }

    /// Sends a live notice that is not stored (index 0): filtered, and not a position.
    async fn notice(&mut self, record: &Record) -> Result<(), Gone> {
        if self.filter.matches(&record.agent, &record.event) {
            self.tx
                .send(Ok(record.event.clone()))
                .await
                .map_err(|_| Gone)?;
            self.sent += 1;
        }
        Ok(())
    }

    /// Sends `agent`'s stored records from `from` to the current end of its chain.
    async fn replay(&mut self, agent: Arc<str>, from: u64) -> Result<(), Gone> {
        let mut cursor = Cursor::new(agent.clone(), from);
        loop {
            let store = self.store.clone();
            let read = tokio::task::spawn_blocking(move || {
                let chunk = store.read(&mut cursor, REPLAY_CHUNK);
                (cursor, chunk)
            })
            .await;
            let (next, chunk) = match read {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "replay task failed");
                    let _ = self.tx.send(Err(Status::internal("replay failed"))).await;
                    return Err(Gone);
                }
            };
            cursor = next;
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    warn!(agent = %agent, %error, "replay failed");
                    let _ = self
                        .tx
                        .send(Err(Status::internal("reading the store failed")))
                        .await;
                    return Err(Gone);
                }
            };
            if chunk.is_empty() {
                return Ok(());
            }
            for record in chunk {
                if record.index <= self.position(&record.agent) {
                    continue;
                }
                self.deliver(&record).await?;
            }
        }
    }

    fn position(&self, agent: &Arc<str>) -> u64 {
        self.positions.get(agent).copied().unwrap_or(0)
    }
}

/// Serves one subscription until the subscriber goes away, `cancel` turns true (or, with
/// `replay_only`, until the replay is done). Events go to `tx`; says how it ended and how
/// many events it sent.
pub async fn run(
    store: Arc<Store>,
    hub: Arc<Hub>,
    filter: Filter,
    start: Start,
    replay_only: bool,
    tx: mpsc::Sender<Result<v1::Event, Status>>,
    mut cancel: watch::Receiver<bool>,
) -> Closed {
    let mut sub = Subscription {
        store: store.clone(),
        filter,
        start,
        positions: BTreeMap::new(),
        started: BTreeSet::new(),
        tx,
        sent: 0,
    };
    let end = tokio::select! {
        end = serve(&mut sub, &store, &hub, start, replay_only) => end,
        _ = cancel.wait_for(|c| *c) => End::Cancelled,
    };
    Closed {
        end,
        sent: sub.sent,
    }
}

async fn serve(
    sub: &mut Subscription,
    store: &Arc<Store>,
    hub: &Hub,
    start: Start,
    replay_only: bool,
) -> End {
    if start == Start::Live {
        // Heads before subscribing: anything appended in between is caught up below.
        sub.positions = store
            .heads()
            .into_iter()
            .map(|(agent, head)| (agent, head.index))
            .collect();
    }
    let mut live = hub.tx.subscribe();
    for agent in store.agents() {
        let from = match start {
            Start::Live => sub.position(&agent) + 1,
            Start::Time(seconds, _) => store.first_index_since(&agent, seconds),
            Start::Seq(_) => 1,
        };
        if from > 1 && start != Start::Live {
            sub.positions.insert(agent.clone(), from - 1);
        }
        if sub.replay(agent, from).await.is_err() {
            return End::Left;
        }
    }
    if replay_only {
        return End::ReplayDone;
    }
    loop {
        let received = tokio::select! {
            received = live.recv() => received,
            // Gone while nothing matched: noticed now, not at the next matching event.
            () = sub.tx.closed() => return End::Left,
        };
        match received {
            Ok(record) if record.index == 0 => {
                // A live notice that is not in any chain (the store could not be written).
                if sub.notice(&record).await.is_err() {
                    return End::Left;
                }
            }
            Ok(record) => {
                let position = sub.position(&record.agent);
                if record.index <= position {
                    continue;
                }
                let result = if record.index == position + 1 {
                    sub.deliver(&record).await
                } else {
                    sub.replay(record.agent.clone(), position + 1).await
                };
                if result.is_err() {
                    return End::Left;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                debug!(missed, "subscriber fell behind; catching up from the store");
                for agent in store.agents() {
                    let from = sub.position(&agent) + 1;
                    if sub.replay(agent, from).await.is_err() {
                        return End::Left;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return End::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &str, user: &str, uid: u32) -> v1::Event {
        v1::Event {
            process: Some(v1::Process {
                user: Some(v1::User {
                    id: Some(uid),
                    name: user.into(),
                }),
                ..Default::default()
            }),
            body: Some(Body::FileOpen(v1::FileOpen {
                path: path.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn filter(f: v1::EventFilter) -> Filter {
        Filter::from_proto(&f).unwrap()
    }

    #[test]
    fn filters_and_or() {
        let event = open("/srv/ephi/a.txt", "alice", 1000);
        assert!(Filter::default().matches("h", &event));
        let f = filter(v1::EventFilter {
            hosts: vec!["H".into(), "other".into()],
            kinds: vec!["file_open".into()],
            users: vec!["1000".into()],
            path_prefixes: vec!["/srv/ephi".into()],
            ..Default::default()
        });
        assert!(f.matches("h", &event));
        assert!(!f.matches("x", &event));
        assert!(!f.matches("h", &open("/srv/ephix/a", "alice", 1000)));
        assert!(!f.matches("h", &open("/srv/ephi/a", "bob", 1001)));
        let verdicts = filter(v1::EventFilter {
            verdicts: vec![v1::Verdict::Deny as i32],
            ..Default::default()
        });
        assert!(!verdicts.matches("h", &event));
        let mut denied = event.clone();
        denied.decision = Some(v1::Decision {
            verdict: v1::Verdict::Deny as i32,
            ..Default::default()
        });
        assert!(verdicts.matches("h", &denied));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_falls_behind_catches_up_from_the_store_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(crate::store::StoreConfig::new(dir.path().to_owned())).unwrap());
        // A hub far smaller than what is published before the subscriber reads anything.
        let hub = Arc::new(Hub::new(16));
        let (tx, mut rx) = mpsc::channel(4);
        let (_cancel, cancel) = watch::channel(false);
        tokio::spawn(run(
            store.clone(),
            hub.clone(),
            Filter::default(),
            Start::Live,
            false,
            tx,
            cancel,
        ));
        while hub.subscribers() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for first in (1..=1000u64).step_by(10) {
            let events = (first..first + 10)
                .map(|seq| v1::Event {
                    seq,
                    host: Some(v1::Host {
                        hostname: "a".into(),
                        agent_id: "a".into(),
                        ..Default::default()
                    }),
                    body: Some(Body::Exec(Default::default())),
                    ..Default::default()
                })
                .collect();
            store
                .append("a", events, |a| hub.publish(&a.records))
                .unwrap();
        }
        let mut seqs = Vec::new();
        while seqs.len() < 1000 {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .expect("events keep coming")
                .expect("stream open")
                .expect("no error");
            seqs.push(event.seq);
        }
        assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    }

    #[test]
    fn bad_filters_are_refused() {
        let bad = [
            v1::EventFilter {
                kinds: vec!["nope".into()],
                ..Default::default()
            },
            v1::EventFilter {
                verdicts: vec![99],
                ..Default::default()
            },
            v1::EventFilter {
                hosts: vec![String::new()],
                ..Default::default()
            },
            v1::EventFilter {
                users: vec!["u".into(); MAX_FILTER_VALUES + 1],
                ..Default::default()
            },
        ];
        for f in bad {
            assert!(Filter::from_proto(&f).is_err(), "{f:?}");
        }
    }
}
