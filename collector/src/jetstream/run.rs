//! The stream's message format: a run of an agent's consecutive events of one kind, as one
//! JetStream message.
//!
//! A front end cuts each validated batch into runs — consecutive events of one kind, at most
//! [`MAX_RUN_BYTES`] of payload — and publishes each run as one message on
//! `PREFIX.AGENT.KIND`, with the message id `AGENT/INSTANCE/FIRST-LAST` (first and last seq of
//! the run) and the header [`FORMAT_HEADER`]` = `[`FORMAT_RUN`]. The payload is the run's
//! events, each length-delimited (a varint length, then the protobuf `Event`). A collector's
//! own record (seq 0) is a run of its own, id `AGENT/collector/EVENT-ID`.
//!
//! A message without the header is of the earlier format, one protobuf `Event` per message
//! (what collectors before runs published): readers accept both, so messages left in the
//! stream by an upgrade are stored, not lost.
//!
//! A resend cut into different runs (another batch boundary, after a failover) has other
//! message ids, so JetStream does not recognise it; the store does, by (agent, instance, seq).

use phiguard_proto::v1;
use prost::Message as _;

use crate::stream::kind_name;

/// The header that marks a message of the run format.
pub const FORMAT_HEADER: &str = "Phiguard-Format";
/// [`FORMAT_HEADER`]'s value for a run of length-delimited events.
pub const FORMAT_RUN: &str = "run-1";
/// Most payload bytes of one message: a quarter of NATS's default `max_payload` (1 MiB),
/// leaving room for headers and for servers configured lower. A single event larger than
/// this is a run of its own.
pub const MAX_RUN_BYTES: usize = 256 * 1024;

/// What the store writer and the live relay cannot read in a message.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// The payload is not what its format says.
    #[error("not an event: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The header names a format this collector does not know.
    #[error("unknown message format {0:?}")]
    Format(String),
    /// A run message without events.
    #[error("a run without events")]
    Empty,
}

/// Cuts `events` (one agent's validated batch, in seq order) into runs: consecutive events of
/// one kind, each run's payload at most `max_bytes` (a larger event alone); a collector's own
/// record (seq 0) alone.
pub fn runs(events: &[v1::Event], max_bytes: usize) -> Vec<&[v1::Event]> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, event) in events.iter().enumerate() {
        let size = framed_len(event);
        if i > start {
            let previous = &events[i - 1];
            let same_run = event.seq > 0
                && previous.seq > 0
                && kind_name(event) == kind_name(previous)
                && bytes + size <= max_bytes;
            if !same_run {
                runs.push(&events[start..i]);
                start = i;
                bytes = 0;
            }
        }
        bytes += size;
    }
    if start < events.len() {
        runs.push(&events[start..]);
    }
    runs
}

/// The bytes `event` takes in a run's payload.
fn framed_len(event: &v1::Event) -> usize {
    let len = event.encoded_len();
    prost::length_delimiter_len(len) + len
}

/// The message id JetStream de-duplicates a run on: `AGENT/INSTANCE/FIRST-LAST` for an
/// agent's events (the same run resent, to any collector, has the same id), the event's own
/// id for a record the collector made (seq 0). `run` is not empty.
pub fn message_id(run: &[v1::Event]) -> String {
    let first = &run[0];
    let last = &run[run.len() - 1];
    let host = first.host.as_ref();
    let agent = host.map_or("", |h| h.agent_id.as_str());
    let instance = host.map_or("", |h| h.instance_id.as_str());
    if first.seq == 0 {
        format!("{agent}/collector/{}", first.id)
    } else {
        format!("{agent}/{instance}/{}-{}", first.seq, last.seq)
    }
}

/// The payload of `run`: its events, each length-delimited.
pub fn encode(run: &[v1::Event]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(run.iter().map(framed_len).sum());
    for event in run {
        // Writing to a Vec cannot run out of room.
        let _ = event.encode_length_delimited(&mut payload);
    }
    payload
}

/// The events of a message: a run when its [`FORMAT_HEADER`] says so, one event when it has
/// none (the format before runs).
pub fn decode(
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<Vec<v1::Event>, Unreadable> {
    match headers.and_then(|h| h.get(FORMAT_HEADER)) {
        None => Ok(vec![v1::Event::decode(payload)?]),
        Some(format) if format.as_str() == FORMAT_RUN => {
            let mut rest = payload;
            let mut events = Vec::new();
            while !rest.is_empty() {
                events.push(v1::Event::decode_length_delimited(&mut rest)?);
            }
            if events.is_empty() {
                return Err(Unreadable::Empty);
            }
            Ok(events)
        }
        Some(other) => Err(Unreadable::Format(other.as_str().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, body: v1::event::Body, pad: usize) -> v1::Event {
        v1::Event {
            seq,
            id: format!("e{seq}"),
            host: Some(v1::Host {
                agent_id: "ehr-a".into(),
                instance_id: "i1".into(),
                hostname: "x".repeat(pad),
                ..Default::default()
            }),
            body: Some(body),
            ..Default::default()
        }
    }

    fn file(seq: u64) -> v1::Event {
        event(seq, v1::event::Body::FileOpen(Default::default()), 0)
    }

    fn exec(seq: u64) -> v1::Event {
        event(seq, v1::event::Body::Exec(Default::default()), 0)
    }

    fn seqs(runs: &[&[v1::Event]]) -> Vec<Vec<u64>> {
        runs.iter()
            .map(|r| r.iter().map(|e| e.seq).collect())
            .collect()
    }

    #[test]
    fn a_batch_is_cut_where_the_kind_changes_and_around_the_collectors_own_records() {
        let own = v1::Event {
            seq: 0,
            id: "alert-1".into(),
            ..file(0)
        };
        let batch = vec![
            file(1),
            file(2),
            exec(3),
            exec(4),
            file(5),
            own.clone(),
            own,
        ];
        let cut = runs(&batch, MAX_RUN_BYTES);
        assert_eq!(
            seqs(&cut),
            vec![vec![1, 2], vec![3, 4], vec![5], vec![0], vec![0]]
        );
        assert_eq!(message_id(cut[0]), "ehr-a/i1/1-2");
        assert_eq!(message_id(cut[2]), "ehr-a/i1/5-5");
        assert_eq!(message_id(cut[3]), "ehr-a/collector/alert-1");
        assert!(runs(&[], MAX_RUN_BYTES).is_empty());
    }

    #[test]
    fn a_run_is_split_at_the_byte_bound_and_a_larger_event_goes_alone() {
        let big = |seq| event(seq, v1::event::Body::FileOpen(Default::default()), 1000);
        let batch: Vec<_> = (1..=10).map(big).collect();
        let one = framed_len(&batch[0]);
        let cut = runs(&batch, one * 3);
        assert_eq!(
            seqs(&cut),
            vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9], vec![10]]
        );
        for run in &cut {
            assert!(encode(run).len() <= one * 3);
        }
        let alone = runs(&batch[..2], one - 1);
        assert_eq!(seqs(&alone), vec![vec![1], vec![2]]);
    }

    #[test]
    fn a_run_decodes_to_its_events_and_a_message_without_the_header_to_one_event() {
        let batch = vec![file(7), file(8), file(9)];
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(FORMAT_HEADER, FORMAT_RUN);
        assert_eq!(decode(Some(&headers), &encode(&batch)).unwrap(), batch);
        // The format before runs: one event, no header.
        let single = file(4).encode_to_vec();
        assert_eq!(decode(None, &single).unwrap(), vec![file(4)]);
        assert_eq!(
            decode(Some(&async_nats::HeaderMap::new()), &single).unwrap(),
            vec![file(4)]
        );
        // Not readable: a truncated run, an empty run, an unknown format.
        let payload = encode(&batch);
        assert!(matches!(
            decode(Some(&headers), &payload[..payload.len() - 1]),
            Err(Unreadable::Decode(_))
        ));
        assert!(matches!(
            decode(Some(&headers), &[]),
            Err(Unreadable::Empty)
        ));
        let mut other = async_nats::HeaderMap::new();
        other.insert(FORMAT_HEADER, "run-9");
        assert!(matches!(
            decode(Some(&other), &payload),
            Err(Unreadable::Format(f)) if f == "run-9"
        ));
    }
}
