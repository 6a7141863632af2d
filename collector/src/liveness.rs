//! Which agents have gone silent: every batch (agents send a heartbeat event at least every
//! heartbeat interval) and every new stream counts as a sign of life. An agent heard from
//! since the collector started that sends nothing for longer than the silence window
//! (`[liveness] silent_after_ms`) is reported silent once; when it sends again it is reported
//! as reconnected, with how long it was silent. The reports become `CollectorAlert` events
//! in the agent's chain (see `server`).
//!
//! A store writer of the fleet hears from agents through the stream, so it can only judge
//! silence up to where it has read the stream: while it lags behind (a backlog after an
//! outage, a store it cannot write) the agents' events are waiting in the stream, not
//! missing. Its judgement is held at the last moment it had read everything
//! ([`Liveness::read_up_to`]): a lagging writer reports silences late, never falsely.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use phiguard_proto::v1;
use tokio::time::Instant;

#[derive(Debug)]
struct Seen {
    last: Instant,
    reported_silent: bool,
}

/// The last sign of life of every agent heard from since start.
#[derive(Debug)]
pub struct Liveness {
    window: Duration,
    agents: Mutex<HashMap<Arc<str>, Seen>>,
    /// For a reader of the stream: the last moment at which it had read everything; silence
    /// is judged at that moment, not later. `None`: signs of life arrive as they happen.
    read_up_to: Mutex<Option<Instant>>,
}

impl Liveness {
    /// Agents silent for longer than `window` are reported, judged at the present.
    pub fn new(window: Duration) -> Liveness {
        Liveness {
            window,
            agents: Mutex::new(HashMap::new()),
            read_up_to: Mutex::new(None),
        }
    }

    /// As [`Liveness::new`], for a store writer reading signs of life from the stream:
    /// silence is judged only up to the moment given to [`Liveness::read_up_to`].
    pub fn reading_a_stream(window: Duration, now: Instant) -> Liveness {
        Liveness {
            read_up_to: Mutex::new(Some(now)),
            ..Liveness::new(window)
        }
    }

    /// The stream's reader had read every message published before `at`. Later than the
    /// previous moment given, or ignored.
    pub fn read_up_to(&self, at: Instant) {
        let mut read = lock(&self.read_up_to);
        if let Some(read) = read.as_mut() {
            *read = (*read).max(at);
        }
    }

    /// The silence window.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Seen>> {
        lock(&self.agents)
    }

    /// Records that `agent` sent something at `now`. When it had been reported silent,
    /// returns how long it was silent (it has reconnected).
    pub fn seen(&self, agent: &str, now: Instant) -> Option<Duration> {
        let mut agents = self.agents();
        match agents.get_mut(agent) {
            Some(seen) => {
                let silent = now.saturating_duration_since(seen.last);
                let was_reported = std::mem::take(&mut seen.reported_silent);
                seen.last = now;
                was_reported.then_some(silent)
            }
            None => {
                agents.insert(
                    Arc::from(agent),
                    Seen {
                        last: now,
                        reported_silent: false,
                    },
                );
                None
            }
        }
    }

    /// Agents silent for longer than the window at `now` (for a stream's reader: at the last
    /// moment it had read everything, if earlier) and not reported yet, with how long they
    /// have been silent; each is marked reported.
    pub fn newly_silent(&self, now: Instant) -> Vec<(Arc<str>, Duration)> {
        let now = lock(&self.read_up_to).map_or(now, |read| read.min(now));
        let mut out = Vec::new();
        for (agent, seen) in self.agents().iter_mut() {
            let silent = now.saturating_duration_since(seen.last);
            if !seen.reported_silent && silent > self.window {
                seen.reported_silent = true;
                out.push((agent.clone(), silent));
            }
        }
        out.sort();
        out
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn alert(agent: &str, kind: v1::AlertKind, message: String, silent: Duration) -> v1::Event {
    crate::alert::event(
        agent,
        v1::CollectorAlert {
            kind: kind as i32,
            message,
            silent_ms: u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        },
    )
}

/// The alert for an agent that sent nothing for `silent` (more than `window`).
pub fn silent_alert(agent: &str, silent: Duration, window: Duration) -> v1::Event {
    alert(
        agent,
        v1::AlertKind::AgentSilent,
        format!(
            "agent {agent} silent: nothing received for {:.1}s (window {:.1}s): stopped, killed, cut off or down",
            silent.as_secs_f64(),
            window.as_secs_f64()
        ),
        silent,
    )
}

/// The alert for an agent reported silent that sent again after `silent`.
pub fn reconnected_alert(agent: &str, silent: Duration) -> v1::Event {
    alert(
        agent,
        v1::AlertKind::AgentReconnected,
        format!(
            "agent {agent} reconnected after {:.1}s of silence",
            silent.as_secs_f64()
        ),
        silent,
    )
}

#[cfg(test)]
mod tests {
    use phiguard_proto::v1::event::Body;

    use super::*;

    #[test]
    fn silence_is_reported_once_and_the_return_once() {
        let liveness = Liveness::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(liveness.seen("a", t0), None);
        assert_eq!(liveness.seen("b", t0), None);
        assert!(liveness
            .newly_silent(t0 + Duration::from_secs(10))
            .is_empty());
        liveness.seen("b", t0 + Duration::from_secs(8));
        let silent = liveness.newly_silent(t0 + Duration::from_secs(11));
        assert_eq!(silent.len(), 1);
        assert_eq!(&*silent[0].0, "a");
        assert_eq!(silent[0].1, Duration::from_secs(11));
        assert!(
            liveness
                .newly_silent(t0 + Duration::from_secs(12))
                .is_empty(),
            "reported once"
        );
        assert_eq!(
            liveness.seen("a", t0 + Duration::from_secs(15)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(liveness.seen("a", t0 + Duration::from_secs(16)), None);
        let silent = liveness.newly_silent(t0 + Duration::from_secs(19));
        assert_eq!(silent.len(), 1, "b, silent since 8 s");
        let Some(Body::Alert(a)) = silent_alert("b", silent[0].1, liveness.window()).body else {
            panic!("an alert");
        };
        assert_eq!(a.kind, v1::AlertKind::AgentSilent as i32);
        assert_eq!(a.silent_ms, 11_000);
    }

    #[test]
    fn a_reader_behind_its_stream_reports_silence_only_up_to_what_it_has_read() {
        let t0 = Instant::now();
        let liveness = Liveness::reading_a_stream(Duration::from_secs(10), t0);
        liveness.seen("a", t0);
        liveness.seen("b", t0);
        // Everything read up to 5 s; then the reader stalls (its store full) for a minute.
        liveness.read_up_to(t0 + Duration::from_secs(5));
        assert!(
            liveness
                .newly_silent(t0 + Duration::from_secs(60))
                .is_empty(),
            "the events of the last 55 s are in the stream, not missing"
        );
        // It catches up: a's events of the minute were there, b had really stopped.
        liveness.seen("a", t0 + Duration::from_secs(61));
        liveness.read_up_to(t0 + Duration::from_secs(61));
        liveness.read_up_to(t0 + Duration::from_secs(30));
        let silent = liveness.newly_silent(t0 + Duration::from_secs(62));
        assert_eq!(silent, vec![(Arc::from("b"), Duration::from_secs(61))]);
    }
}
