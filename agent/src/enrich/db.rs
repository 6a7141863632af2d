//! Database records: a socket became tracked (a session opens), bytes moved on one (the
//! session's decoder turns them into statements).

use phiguard_proto::v1;

use super::Enricher;
use crate::{
    db::{connects::Endpoint, session::Capture},
    event::{
        decode::DbData,
        net::{DbEnds, DbRole, DbSock},
    },
    paths::FileId,
};

impl Enricher {
    /// A tracked database socket: its session opens, with the decision on its connect.
    pub(super) fn db_sock(&mut self, e: &DbSock) {
        let decision = match (e.role, e.ends) {
            (DbRole::Client, DbEnds::Unix(id)) => {
                self.connects.take(e.header.pid, Endpoint::Unix(id))
            }
            (DbRole::Client, DbEnds::Tcp { remote, .. }) => self
                .connects
                .take(e.header.pid, Endpoint::Tcp(remote.port())),
            (DbRole::Server, _) => None,
        };
        let path = match e.ends {
            DbEnds::Unix(id) => self
                .settings
                .db_unix_sockets
                .iter()
                .find(|p| FileId::of(p).is_ok_and(|of| of == id))
                .map(|p| p.display().to_string()),
            DbEnds::Tcp { .. } => None,
        };
        self.sessions.open(e, path, decision);
    }

    /// Captured bytes: the statements (and session ends) they complete.
    pub(super) fn db_data(&mut self, d: &DbData) -> Vec<v1::Event> {
        let capture = match &d.spans {
            Some(spans) => Capture::Framed {
                data: &d.data,
                spans,
                lost: d.lost,
            },
            None => Capture::Raw {
                data: &d.data,
                tail: &d.tail,
            },
        };
        let bodies = self.sessions.record(&d.transfer, capture);
        bodies
            .into_iter()
            .map(|body| self.finish(d.transfer.header.clone(), body, None))
            .collect()
    }
}
