//! The collector's audit of who watches: every Subscribe call becomes records in the
//! collector's own hash chain ([`AUDIT_CHAIN`]) — refused, or opened and later closed with
//! how many events were sent — signed in checkpoints, checked by `verify`, streamed (kind
//! `subscription`) and printed by `tail` like any event.
//!
//! The chain is named `_collector`: an underscore is not valid in a host name, and the
//! collector refuses agent certificates and subscribers of that identity, so nobody else can
//! write there.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
    time::SystemTime,
};

use phiguard_proto::v1::{self, event::Body, SubscriptionPhase};

use crate::{identity::Peer, scope::Scope, store, stream::Closed};

/// The chain the collector's own audit records go to.
pub const AUDIT_CHAIN: &str = "_collector";

/// Numbers subscriptions and makes their audit records.
#[derive(Debug, Default)]
pub struct Audit {
    next: AtomicU64,
    collector: String,
}

/// A subscription as asked for: the base of its audit records.
#[derive(Clone, Debug)]
pub struct Asked(v1::SubscriptionAudit);

impl Audit {
    /// A fresh numbering (from 1) of the subscriptions `collector` (host name and port)
    /// serves.
    pub fn new(collector: String) -> Audit {
        Audit {
            next: AtomicU64::new(0),
            collector,
        }
    }

    /// The audit base of a Subscribe call by `peer` with `request`.
    pub fn asked(&self, peer: &Peer, request: &v1::SubscribeRequest) -> Asked {
        let filter = request.filter.clone().unwrap_or_default();
        let start = match &request.start {
            None => "live".to_owned(),
            Some(v1::subscribe_request::Start::SinceSeq(seq)) => format!("since-seq {seq}"),
            Some(v1::subscribe_request::Start::SinceTime(t)) => {
                format!("since-time {}", crate::tail::rfc3339(t))
            }
        };
        Asked(v1::SubscriptionAudit {
            subscription_id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            subscriber: peer.identity.to_string(),
            peer: peer.addr.to_string(),
            certificate: peer.credential.to_string(),
            hosts: filter.hosts,
            kinds: filter.kinds,
            verdicts: filter
                .verdicts
                .iter()
                .map(|v| {
                    v1::Verdict::try_from(*v)
                        .map_or_else(|_| v.to_string(), |v| v.as_str_name().to_owned())
                })
                .collect(),
            users: filter.users,
            path_prefixes: filter.path_prefixes,
            start,
            replay_only: request.replay_only,
            opened: Some(store::timestamp(SystemTime::now())),
            collector: self.collector.clone(),
            ..Default::default()
        })
    }
}

impl Asked {
    /// The subscription's number.
    pub fn id(&self) -> u64 {
        self.0.subscription_id
    }

    /// The record of its refusal, for `reason`.
    pub fn refused(&self, reason: &str) -> v1::Event {
        let mut audit = self.0.clone();
        audit.phase = SubscriptionPhase::Refused as i32;
        audit.reason = reason.to_owned();
        event(audit)
    }

    /// The record of its opening under `scope`; the scope is kept for the closing record.
    pub fn opened(&mut self, scope: &Scope) -> v1::Event {
        self.0.granted_hosts = scope.hosts.listed();
        self.0.granted_kinds = scope.kinds.listed();
        let mut audit = self.0.clone();
        audit.phase = SubscriptionPhase::Opened as i32;
        event(audit)
    }

    /// The record of its closing: how, why, and how many events it got.
    pub fn closed(&self, closed: Closed, reason: &str) -> v1::Event {
        let mut audit = self.0.clone();
        audit.phase = SubscriptionPhase::Closed as i32;
        audit.closed = Some(store::timestamp(SystemTime::now()));
        audit.events_sent = closed.sent;
        audit.reason = reason.to_owned();
        event(audit)
    }
}

fn event(audit: v1::SubscriptionAudit) -> v1::Event {
    v1::Event {
        id: uuid::Uuid::now_v7().to_string(),
        seq: 0,
        time: Some(store::timestamp(SystemTime::now())),
        host: Some(v1::Host {
            hostname: AUDIT_CHAIN.to_owned(),
            agent_id: AUDIT_CHAIN.to_owned(),
            ..Default::default()
        }),
        body: Some(Body::Subscription(audit)),
        ..Default::default()
    }
}

fn list(values: &[String]) -> String {
    if values.is_empty() {
        "-".to_owned()
    } else {
        values.join(",")
    }
}

/// Appends the readable part of a subscription record to `tail`'s line.
pub fn describe(line: &mut String, s: &v1::SubscriptionAudit) {
    let phase = match SubscriptionPhase::try_from(s.phase) {
        Ok(SubscriptionPhase::Opened) => "opened",
        Ok(SubscriptionPhase::Closed) => "closed",
        Ok(SubscriptionPhase::Refused) => "refused",
        _ => "?",
    };
    let _ = write!(
        line,
        " {phase} #{} {} from {} hosts={} kinds={} start={}",
        s.subscription_id,
        s.subscriber,
        s.peer,
        list(&s.hosts),
        list(&s.kinds),
        s.start
    );
    if !s.granted_hosts.is_empty() {
        let _ = write!(
            line,
            " granted hosts={} kinds={}",
            list(&s.granted_hosts),
            list(&s.granted_kinds)
        );
    }
    if phase == "closed" {
        let _ = write!(line, " after {} events", s.events_sent);
    }
    if !s.reason.is_empty() {
        let _ = write!(line, ": {}", s.reason);
    }
}
