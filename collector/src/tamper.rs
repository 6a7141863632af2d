//! Agents whose kernel state was changed behind their back. Two sources, so that neither a
//! silent agent nor a lying heartbeat goes unnoticed:
//!
//! - the agent's own `Tamper` reports (its integrity check found a program detached, a pin
//!   removed, a policy map written): each becomes an alert;
//! - its heartbeats, checked against each other and against its policy loads: fewer programs
//!   attached than the previous heartbeat of the same run (and no report of it), or a policy
//!   generation in force that no `PolicyLoad` event announced.
//!
//! Only events stored for the first time are observed, so a resent batch raises nothing twice.

use std::{collections::HashMap, sync::Mutex};

use phiguard_proto::v1::{self, event::Body};

/// What is known of one agent's current run.
#[derive(Debug, Default)]
struct AgentState {
    /// Programs attached at the last heartbeat.
    programs_attached: Option<u32>,
    /// Uptime at the last heartbeat: a smaller one means the agent restarted.
    uptime_seconds: Option<u64>,
    /// The policy generation in force, as announced by a policy load or the last heartbeat.
    generation: Option<u64>,
    /// A policy load arrived since the last heartbeat (it announces a restart's generation).
    loaded_since_beat: bool,
    /// The agent reported a detached program since the last heartbeat.
    detach_reported_since_beat: bool,
}

/// Per-agent state for the heartbeat checks.
#[derive(Debug, Default)]
pub struct TamperWatch {
    agents: Mutex<HashMap<String, AgentState>>,
}

impl TamperWatch {
    /// A watch that knows no agent yet.
    pub fn new() -> TamperWatch {
        TamperWatch::default()
    }

    /// The alerts `agent`'s newly stored `events` (in seq order) call for.
    pub fn observe<'a>(
        &self,
        agent: &str,
        events: impl IntoIterator<Item = &'a v1::Event>,
    ) -> Vec<v1::Event> {
        let mut agents = self
            .agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = agents.entry(agent.to_owned()).or_default();
        let mut alerts = Vec::new();
        for event in events {
            let alert = match &event.body {
                Some(Body::Tamper(report)) => Some(reported(state, report)),
                Some(Body::PolicyLoad(load)) if load.ok => {
                    state.generation = Some(load.generation);
                    state.loaded_since_beat = true;
                    None
                }
                Some(Body::Heartbeat(beat)) => heartbeat(state, beat),
                _ => None,
            };
            if let Some((kind, message)) = alert {
                alerts.push(crate::alert::event(
                    agent,
                    v1::CollectorAlert {
                        kind: kind as i32,
                        message: format!("agent {agent}: {message}"),
                        event_seq: event.seq,
                        ..Default::default()
                    },
                ));
            }
        }
        alerts
    }
}

/// The alert for a `Tamper` report.
fn reported(state: &mut AgentState, report: &v1::Tamper) -> (v1::AlertKind, String) {
    let kind = match v1::TamperKind::try_from(report.kind) {
        Ok(v1::TamperKind::MapModified) => v1::AlertKind::PolicyChanged,
        _ => {
            state.detach_reported_since_beat = true;
            v1::AlertKind::ProgramsDetached
        }
    };
    let outcome = if report.repaired {
        "repaired by the agent".to_owned()
    } else {
        format!("NOT repaired: {}", report.repair_error)
    };
    (
        kind,
        format!("reports {}: {} ({outcome})", report.object, report.detail),
    )
}

/// The alert a heartbeat calls for, if any.
fn heartbeat(state: &mut AgentState, beat: &v1::Heartbeat) -> Option<(v1::AlertKind, String)> {
    let restarted = state
        .uptime_seconds
        .is_some_and(|up| beat.uptime_seconds < up);
    if restarted {
        // A new run may attach other programs (another configuration); its policy load, if it
        // has policies, arrived before this heartbeat.
        state.programs_attached = None;
        if !state.loaded_since_beat {
            state.generation = None;
        }
    }
    let mut alert = None;
    if let Some(before) = state.programs_attached {
        if beat.programs_attached < before && !state.detach_reported_since_beat {
            alert = Some((
                v1::AlertKind::ProgramsDetached,
                format!(
                    "heartbeat: programs attached fell from {before} to {} of {} without a report",
                    beat.programs_attached, beat.programs_known
                ),
            ));
        }
    }
    if let Some(announced) = state.generation {
        if beat.policy_generation != announced && alert.is_none() {
            alert = Some((
                v1::AlertKind::PolicyChanged,
                format!(
                    "heartbeat: policy generation {} in force, but the last policy load announced {announced}",
                    beat.policy_generation
                ),
            ));
        }
    }
    state.programs_attached = Some(beat.programs_attached);
    state.uptime_seconds = Some(beat.uptime_seconds);
    state.generation = Some(beat.policy_generation);
    state.loaded_since_beat = false;
    state.detach_reported_since_beat = false;
    alert
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, body: Body) -> v1::Event {
        v1::Event {
            seq,
            body: Some(body),
            ..Default::default()
        }
    }

    fn beat(seq: u64, attached: u32, generation: u64, uptime: u64) -> v1::Event {
        event(
            seq,
            Body::Heartbeat(v1::Heartbeat {
                programs_attached: attached,
                programs_known: 14,
                policy_generation: generation,
                uptime_seconds: uptime,
                ..Default::default()
            }),
        )
    }

    fn load(seq: u64, generation: u64) -> v1::Event {
        event(
            seq,
            Body::PolicyLoad(v1::PolicyLoad {
                ok: true,
                generation,
                ..Default::default()
            }),
        )
    }

    fn kinds(alerts: &[v1::Event]) -> Vec<(v1::AlertKind, u64)> {
        alerts
            .iter()
            .map(|e| match &e.body {
                Some(Body::Alert(a)) => (a.kind.try_into().unwrap(), a.event_seq),
                other => panic!("not an alert: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn steady_heartbeats_and_announced_reloads_raise_nothing() {
        let watch = TamperWatch::new();
        let events = [
            load(1, 1),
            beat(2, 11, 1, 1),
            beat(3, 11, 1, 2),
            load(4, 2),
            beat(5, 11, 2, 3),
            event(
                6,
                Body::PolicyLoad(v1::PolicyLoad {
                    ok: false,
                    generation: 2,
                    ..Default::default()
                }),
            ),
            beat(7, 11, 2, 4),
        ];
        assert!(watch.observe("a", &events).is_empty());
    }

    #[test]
    fn reports_become_alerts_of_their_kind() {
        let watch = TamperWatch::new();
        let report = |seq, kind: v1::TamperKind, repaired| {
            event(
                seq,
                Body::Tamper(v1::Tamper {
                    kind: kind as i32,
                    object: "net_connect4".into(),
                    detail: "link detached".into(),
                    repaired,
                    repair_error: if repaired {
                        String::new()
                    } else {
                        "EPERM".into()
                    },
                }),
            )
        };
        let alerts = watch.observe(
            "a",
            &[
                report(7, v1::TamperKind::ProgramDetached, true),
                report(8, v1::TamperKind::MapModified, true),
                report(9, v1::TamperKind::PinRemoved, false),
            ],
        );
        assert_eq!(
            kinds(&alerts),
            [
                (v1::AlertKind::ProgramsDetached, 7),
                (v1::AlertKind::PolicyChanged, 8),
                (v1::AlertKind::ProgramsDetached, 9)
            ]
        );
        let Some(Body::Alert(last)) = &alerts[2].body else {
            unreachable!()
        };
        assert!(last.message.contains("agent a"), "{last:?}");
        assert!(last.message.contains("NOT repaired: EPERM"), "{last:?}");
        assert_eq!(alerts[0].host.as_ref().unwrap().agent_id, "a");
    }

    #[test]
    fn a_heartbeat_with_fewer_programs_or_an_unannounced_generation_is_an_alert() {
        let watch = TamperWatch::new();
        let alerts = watch.observe(
            "a",
            &[
                load(1, 1),
                beat(2, 11, 1, 1),
                beat(3, 10, 1, 2),
                beat(4, 10, 5, 3),
                beat(5, 10, 5, 4),
            ],
        );
        assert_eq!(
            kinds(&alerts),
            [
                (v1::AlertKind::ProgramsDetached, 3),
                (v1::AlertKind::PolicyChanged, 4)
            ],
            "each once, at the heartbeat that shows it"
        );
    }

    #[test]
    fn a_reported_detach_is_not_alerted_again_by_the_next_heartbeat() {
        let watch = TamperWatch::new();
        let detached = event(
            3,
            Body::Tamper(v1::Tamper {
                kind: v1::TamperKind::ProgramDetached as i32,
                repaired: false,
                ..Default::default()
            }),
        );
        let alerts = watch.observe("a", &[beat(2, 11, 0, 1), detached, beat(4, 10, 0, 2)]);
        assert_eq!(kinds(&alerts), [(v1::AlertKind::ProgramsDetached, 3)]);
    }

    #[test]
    fn a_restart_starts_a_new_baseline() {
        let watch = TamperWatch::new();
        // Enforcing with generation 3, then restarted: observe only (no policy load) with
        // fewer programs, then with policies again (generation 1, announced at start).
        let events = [
            load(1, 3),
            beat(2, 14, 3, 50),
            beat(3, 11, 0, 1),
            load(4, 1),
            beat(5, 14, 1, 1),
        ];
        assert!(watch.observe("a", &events).is_empty());
        // Agents are watched apart.
        assert!(watch.observe("b", &[beat(1, 2, 7, 9)]).is_empty());
    }

    #[test]
    fn events_observed_in_separate_batches_keep_their_state() {
        let watch = TamperWatch::new();
        assert!(watch
            .observe("a", &[load(1, 1), beat(2, 11, 1, 1)])
            .is_empty());
        let alerts = watch.observe("a", &[beat(3, 9, 1, 2)]);
        assert_eq!(kinds(&alerts), [(v1::AlertKind::ProgramsDetached, 3)]);
    }
}
