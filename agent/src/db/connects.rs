//! Policy decisions on connects to database endpoints, held until the socket they opened
//! becomes a tracked database session.
//!
//! The cgroup `connect4/6` programs (and BPF LSM `unix_stream_connect`) decide while
//! `connect()` runs; the socket is tracked when it returns. Both records come from the same
//! process in that order, so the session start takes the newest decision of its process for
//! its endpoint. Denied connects open no session and are not held.

use std::collections::VecDeque;

use phiguard_proto::v1;

use crate::paths::FileId;

/// Most decisions held at once; the oldest is dropped beyond it (a connect that failed for
/// another reason leaves its decision behind).
const MAX_HELD: usize = 1024;

/// The database end of a connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP port (host byte order).
    Tcp(u16),
    /// A unix socket file.
    Unix(FileId),
}

/// Decisions waiting for their session, oldest first.
#[derive(Default)]
pub struct ConnectDecisions {
    held: VecDeque<(u32, Endpoint, v1::Decision)>,
}

impl ConnectDecisions {
    /// Holds the decision on process `tgid`'s connect to `endpoint` (denials are ignored: the
    /// connect failed).
    pub fn record(&mut self, tgid: u32, endpoint: Endpoint, decision: &v1::Decision) {
        if decision.verdict == v1::Verdict::Deny as i32 {
            return;
        }
        self.held.push_back((tgid, endpoint, decision.clone()));
        if self.held.len() > MAX_HELD {
            self.held.pop_front();
        }
    }

    /// The newest decision on `tgid`'s connect to `endpoint`; older ones for the same pair
    /// are dropped with it.
    pub fn take(&mut self, tgid: u32, endpoint: Endpoint) -> Option<v1::Decision> {
        let newest = self
            .held
            .iter()
            .rposition(|(t, e, _)| *t == tgid && *e == endpoint)?;
        let (_, _, decision) = self.held.remove(newest)?;
        self.held
            .retain(|(t, e, _)| !(*t == tgid && *e == endpoint));
        Some(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(verdict: v1::Verdict, policy: &str) -> v1::Decision {
        v1::Decision {
            verdict: verdict as i32,
            policy: policy.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_session_takes_its_process_and_endpoints_newest_decision() {
        let mut d = ConnectDecisions::default();
        d.record(
            10,
            Endpoint::Tcp(5432),
            &decision(v1::Verdict::Allow, "old"),
        );
        d.record(
            10,
            Endpoint::Tcp(5432),
            &decision(v1::Verdict::WouldDeny, "new"),
        );
        d.record(
            11,
            Endpoint::Tcp(5432),
            &decision(v1::Verdict::Allow, "other pid"),
        );
        let unix = Endpoint::Unix(FileId { dev: 3, ino: 7 });
        d.record(10, unix, &decision(v1::Verdict::Allow, "unix"));
        assert_eq!(d.take(10, Endpoint::Tcp(5432)).unwrap().policy, "new");
        assert!(
            d.take(10, Endpoint::Tcp(5432)).is_none(),
            "older ones dropped"
        );
        assert!(d.take(10, Endpoint::Tcp(3306)).is_none(), "other endpoint");
        assert_eq!(d.take(10, unix).unwrap().policy, "unix");
        assert_eq!(d.take(11, Endpoint::Tcp(5432)).unwrap().policy, "other pid");
    }

    #[test]
    fn denials_are_not_held_and_the_table_is_bounded() {
        let mut d = ConnectDecisions::default();
        d.record(1, Endpoint::Tcp(5432), &decision(v1::Verdict::Deny, "p"));
        assert!(d.take(1, Endpoint::Tcp(5432)).is_none());
        for pid in 0..(MAX_HELD as u32 + 10) {
            d.record(pid, Endpoint::Tcp(5432), &decision(v1::Verdict::Allow, "p"));
        }
        assert_eq!(d.held.len(), MAX_HELD);
        assert!(d.take(0, Endpoint::Tcp(5432)).is_none(), "oldest dropped");
        assert!(d.take(MAX_HELD as u32 + 9, Endpoint::Tcp(5432)).is_some());
    }
}
