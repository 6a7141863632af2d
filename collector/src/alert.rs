//! Alerts the collector raises itself: an event with seq 0 and the agent's identity as host,
//! stored in that agent's chain and streamed like any other event.

use std::time::SystemTime;

use phiguard_proto::v1::{self, event::Body};

use crate::store::timestamp;

/// The event carrying `alert` about `agent`, timed now.
pub fn event(agent: &str, alert: v1::CollectorAlert) -> v1::Event {
    v1::Event {
        id: uuid::Uuid::now_v7().to_string(),
        seq: 0,
        time: Some(timestamp(SystemTime::now())),
        host: Some(v1::Host {
            hostname: agent.to_owned(),
            agent_id: agent.to_owned(),
            ..Default::default()
        }),
        body: Some(Body::Alert(alert)),
        ..Default::default()
    }
}
