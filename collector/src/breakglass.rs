//! Break-glass grants: every grant an agent reports (a `BreakGlass` event with action
//! `GRANTED`) raises `ALERT_KIND_BREAK_GLASS` to subscribers and into the agent's chain, so
//! lifting the allow-lists never goes unnoticed. Only events stored for the first time are
//! observed, so a resent batch raises nothing twice.

use phiguard_proto::v1::{self, event::Body};

/// The alerts `agent`'s newly stored `events` call for.
pub fn alerts<'a>(agent: &str, events: impl IntoIterator<Item = &'a v1::Event>) -> Vec<v1::Event> {
    events
        .into_iter()
        .filter_map(|event| {
            let Some(Body::BreakGlass(grant)) = &event.body else {
                return None;
            };
            if grant.action != v1::BreakGlassAction::Granted as i32 {
                return None;
            }
            let whom = match &grant.user {
                Some(user) if !user.name.is_empty() => format!("user {}", user.name),
                Some(user) => format!("uid {}", user.id.unwrap_or_default()),
                None => format!("program {}", grant.exe),
            };
            let by = grant
                .granted_by
                .as_ref()
                .map_or("an unknown login".to_owned(), |u| {
                    if u.name.is_empty() {
                        format!("login uid {}", u.id.unwrap_or_default())
                    } else {
                        u.name.clone()
                    }
                });
            Some(crate::alert::event(
                agent,
                v1::CollectorAlert {
                    kind: v1::AlertKind::BreakGlass as i32,
                    message: format!(
                        "agent {agent}: break-glass grant {} for {whom}, {}s, by {by}: {}",
                        grant.grant_id, grant.duration_seconds, grant.reason
                    ),
                    event_seq: event.seq,
                    ..Default::default()
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, action: v1::BreakGlassAction) -> v1::Event {
        v1::Event {
            seq,
            body: Some(Body::BreakGlass(v1::BreakGlass {
                action: action as i32,
                grant_id: "bg-0123456789ab".into(),
                reason: "EHR down".into(),
                user: Some(v1::User {
                    id: Some(65534),
                    name: "nobody".into(),
                }),
                duration_seconds: 300,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn each_grant_raises_one_alert_and_its_end_none() {
        let events = [
            event(3, v1::BreakGlassAction::Granted),
            event(4, v1::BreakGlassAction::Expired),
            event(9, v1::BreakGlassAction::Granted),
            event(10, v1::BreakGlassAction::Revoked),
        ];
        let alerts = alerts("agent-1", &events);
        let seqs: Vec<u64> = alerts
            .iter()
            .map(|a| match &a.body {
                Some(Body::Alert(a)) => {
                    assert_eq!(a.kind, v1::AlertKind::BreakGlass as i32);
                    assert!(
                        a.message.contains("bg-0123456789ab for user nobody"),
                        "{}",
                        a.message
                    );
                    assert!(a.message.contains("EHR down"), "{}", a.message);
                    a.event_seq
                }
                other => panic!("not an alert: {other:?}"),
            })
            .collect();
        assert_eq!(seqs, [3, 9]);
    }
}
