//! Database records: a socket became tracked (a session opens), bytes moved on one (the
//! session's decoder turns them into statements).

use phiguard_common::event::{db_role, DbSockEvent, EventHeader};
use phiguard_proto::v1;

use super::Enricher;
use crate::{db::connects::Endpoint, event::decode::DbData, paths::FileId};

impl Enricher {
    /// A tracked database socket: its session opens, with the decision on its connect.
    pub(super) fn db_sock(&mut self, e: &DbSockEvent) {
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
        self.sessions.open(e, path, decision);
    }

    /// Captured bytes: the statements (and session ends) they complete.
    pub(super) fn db_data(&mut self, header: &EventHeader, d: &DbData) -> Vec<v1::Event> {
        let bodies = self.sessions.data(&d.event, &d.data);
        bodies
            .into_iter()
            .map(|body| self.finish(header, body, None))
            .collect()
    }
}
