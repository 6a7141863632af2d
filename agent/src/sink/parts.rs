//! The proto3 JSON of an event, with the parts that repeat from one event to the next — the
//! host, the process, its ancestry — encoded once and reused for as long as they stay equal.
//! The output is byte for byte what `serde_json::to_writer(event)` writes through pbjson's
//! generated serializer (the tests hold it to that); those parts are about half of an event's
//! JSON, and encoding them was about a third of the agent's work per event.

use std::{collections::HashMap, hash::Hash, io::Write};

use phiguard_proto::v1::{self, event::Body};
use serde::ser::{Serialize, SerializeStruct as _, Serializer};
use serde_json::value::RawValue;

/// Most processes (and ancestries) remembered; past it the memory starts over.
const MAX_REMEMBERED: usize = 4096;

/// A part and its JSON.
struct Encoded<T> {
    value: T,
    json: Box<RawValue>,
}

impl<T: Serialize + Clone> Encoded<T> {
    fn new(value: &T) -> serde_json::Result<Encoded<T>> {
        Ok(Encoded {
            value: value.clone(),
            json: serde_json::value::to_raw_value(value)?,
        })
    }
}

/// The JSON of the host, process and ancestry parts seen last.
#[derive(Default)]
pub struct PartCache {
    host: Option<Encoded<v1::Host>>,
    /// By (pid, tid): each thread of a process has its own `Process`.
    processes: HashMap<(u32, u32), Encoded<v1::Process>>,
    /// By pid.
    ancestries: HashMap<u32, Encoded<Vec<v1::Ancestor>>>,
}

/// The JSON of `value`, from `map` under `key` when what is there is equal to it, otherwise
/// encoded now and remembered.
fn remembered<'a, K, T>(
    map: &'a mut HashMap<K, Encoded<T>>,
    key: K,
    value: &T,
) -> serde_json::Result<&'a RawValue>
where
    K: Eq + Hash,
    T: Serialize + Clone + PartialEq,
{
    if map.len() >= MAX_REMEMBERED && !map.contains_key(&key) {
        map.clear();
    }
    let slot = match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(entry) => {
            let slot = entry.into_mut();
            if slot.value != *value {
                *slot = Encoded::new(value)?;
            }
            slot
        }
        std::collections::hash_map::Entry::Vacant(entry) => entry.insert(Encoded::new(value)?),
    };
    Ok(&slot.json)
}

impl PartCache {
    /// Writes `event` as one JSON object (no newline) to `out`.
    pub fn write(&mut self, out: impl Write, event: &v1::Event) -> serde_json::Result<()> {
        let Some(p) = &event.process else {
            // Agent-side events and events without a process: nothing worth remembering.
            return serde_json::to_writer(out, event);
        };
        let host = match &event.host {
            Some(host) => {
                if self.host.as_ref().is_none_or(|h| h.value != *host) {
                    self.host = Some(Encoded::new(host)?);
                }
                self.host.as_ref().map(|h| &*h.json)
            }
            None => None,
        };
        let process = remembered(&mut self.processes, (p.pid, p.tid), p)?;
        let ancestry = if event.ancestry.is_empty() {
            None
        } else {
            Some(remembered(&mut self.ancestries, p.pid, &event.ancestry)?)
        };
        let view = WithParts {
            event,
            host,
            process,
            ancestry,
        };
        serde_json::to_writer(out, &view)
    }
}

/// An event (with a process) whose host, process and ancestry serialize as the JSON given.
struct WithParts<'a> {
    event: &'a v1::Event,
    host: Option<&'a RawValue>,
    process: &'a RawValue,
    ancestry: Option<&'a RawValue>,
}

impl Serialize for WithParts<'_> {
    /// The fields, their names, order and omissions of pbjson's serializer for `v1::Event`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.event;
        let present = [
            !e.id.is_empty(),
            e.seq != 0,
            e.time.is_some(),
            self.host.is_some(),
            true,
            self.ancestry.is_some(),
            e.decision.is_some(),
            e.body.is_some(),
        ];
        let len = present.iter().filter(|p| **p).count();
        let mut s = serializer.serialize_struct("phiguard.v1.Event", len)?;
        if !e.id.is_empty() {
            s.serialize_field("id", &e.id)?;
        }
        if e.seq != 0 {
            // proto3 JSON: a uint64 is a string.
            s.serialize_field("seq", e.seq.to_string().as_str())?;
        }
        if let Some(time) = &e.time {
            s.serialize_field("time", time)?;
        }
        if let Some(host) = self.host {
            s.serialize_field("host", host)?;
        }
        s.serialize_field("process", self.process)?;
        if let Some(ancestry) = self.ancestry {
            s.serialize_field("ancestry", ancestry)?;
        }
        if let Some(decision) = &e.decision {
            s.serialize_field("decision", decision)?;
        }
        match &e.body {
            None => {}
            Some(Body::Exec(v)) => s.serialize_field("exec", v)?,
            Some(Body::Fork(v)) => s.serialize_field("fork", v)?,
            Some(Body::Exit(v)) => s.serialize_field("exit", v)?,
            Some(Body::FileOpen(v)) => s.serialize_field("fileOpen", v)?,
            Some(Body::Connect(v)) => s.serialize_field("connect", v)?,
            Some(Body::TcpState(v)) => s.serialize_field("tcpState", v)?,
            Some(Body::EventsLost(v)) => s.serialize_field("eventsLost", v)?,
            Some(Body::PolicyLoad(v)) => s.serialize_field("policyLoad", v)?,
            Some(Body::Alert(v)) => s.serialize_field("alert", v)?,
            Some(Body::DbSessionStart(v)) => s.serialize_field("dbSessionStart", v)?,
            Some(Body::DbStatement(v)) => s.serialize_field("dbStatement", v)?,
            Some(Body::DbSessionEnd(v)) => s.serialize_field("dbSessionEnd", v)?,
            Some(Body::Heartbeat(v)) => s.serialize_field("heartbeat", v)?,
            Some(Body::Tamper(v)) => s.serialize_field("tamper", v)?,
            Some(Body::Subscription(v)) => s.serialize_field("subscription", v)?,
            Some(Body::BreakGlass(v)) => s.serialize_field("breakGlass", v)?,
            Some(Body::DbLogin(v)) => s.serialize_field("dbLogin", v)?,
        }
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(argv: &[&str]) -> v1::Process {
        v1::Process {
            pid: 42,
            tid: 43,
            ppid: 1,
            comm: "psql \"quoted\"\n".into(),
            exe: "/usr/bin/psql".into(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            cwd: "/srv/ephi/ü".into(),
            user: Some(v1::User {
                id: Some(1000),
                name: "alice".into(),
            }),
            binary_sha256: "ab".repeat(32),
            start_time: Some(pbjson_types::Timestamp {
                seconds: 1_796_000_000,
                nanos: 123_456_789,
            }),
            ..Default::default()
        }
    }

    /// Every field of an event set (a field added to `v1::Event` fails to compile here).
    fn event(body: Option<Body>, process: Option<v1::Process>) -> v1::Event {
        v1::Event {
            id: "01a23575-4ae3-7135-8c54-bf19c87c047a".into(),
            seq: 7,
            time: Some(pbjson_types::Timestamp {
                seconds: 1_796_193_545,
                nanos: 93_148_399,
            }),
            host: Some(v1::Host {
                hostname: "db1".into(),
                machine_id: "3d1219c7c4c5404aaa1f6d2a48adfda4".into(),
                agent_id: "agent-1".into(),
                ..Default::default()
            }),
            process,
            ancestry: vec![
                v1::Ancestor {
                    pid: 1,
                    exe: "/sbin/init".into(),
                    comm: "systemd".into(),
                },
                v1::Ancestor {
                    pid: 7,
                    exe: "/usr/sbin/sshd".into(),
                    comm: "sshd".into(),
                },
            ],
            body,
            decision: Some(v1::Decision {
                rule: "records".into(),
                ..Default::default()
            }),
        }
    }

    fn bodies() -> Vec<Option<Body>> {
        vec![
            None,
            Some(Body::Exec(Default::default())),
            Some(Body::Fork(Default::default())),
            Some(Body::Exit(Default::default())),
            Some(Body::FileOpen(v1::FileOpen {
                path: "/srv/ephi/rec.txt".into(),
                ..Default::default()
            })),
            Some(Body::Connect(Default::default())),
            Some(Body::TcpState(Default::default())),
            Some(Body::EventsLost(Default::default())),
            Some(Body::PolicyLoad(Default::default())),
            Some(Body::Alert(Default::default())),
            Some(Body::DbSessionStart(Default::default())),
            Some(Body::DbStatement(Default::default())),
            Some(Body::DbSessionEnd(Default::default())),
            Some(Body::Heartbeat(Default::default())),
            Some(Body::Tamper(Default::default())),
            Some(Body::BreakGlass(Default::default())),
            Some(Body::DbLogin(v1::DbLogin {
                user: "alice".into(),
                method: "scram-sha-256".into(),
                sqlstate: "28P01".into(),
                ..Default::default()
            })),
        ]
    }

    fn written(cache: &mut PartCache, event: &v1::Event) -> String {
        let mut out = Vec::new();
        cache.write(&mut out, event).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_kind_of_event_is_byte_for_byte_the_generated_json_first_time_and_again() {
        let mut cache = PartCache::default();
        for body in bodies() {
            for process in [Some(process(&["psql", "-c", "select 1"])), None] {
                let mut e = event(body.clone(), process);
                for _ in 0..2 {
                    let expected = serde_json::to_string(&e).unwrap();
                    assert_eq!(written(&mut cache, &e), expected);
                    e.seq += 1;
                }
                e.host = None;
                e.ancestry.clear();
                e.id.clear();
                e.seq = 0;
                e.time = None;
                e.decision = None;
                assert_eq!(written(&mut cache, &e), serde_json::to_string(&e).unwrap());
            }
        }
    }

    #[test]
    fn a_part_that_changed_is_encoded_anew() {
        let mut cache = PartCache::default();
        let before = event(None, Some(process(&["psql"])));
        written(&mut cache, &before);
        // Same pid and tid after an exec; a new host name; a new parent.
        let mut after = event(None, Some(process(&["psql", "-d", "ehr"])));
        after.host.as_mut().unwrap().hostname = "db2".into();
        after.ancestry[1].comm = "bash".into();
        let text = written(&mut cache, &after);
        assert_eq!(text, serde_json::to_string(&after).unwrap());
        for part in ["\"ehr\"", "\"db2\"", "\"bash\""] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let mut cache = PartCache::default();
        for pid in 0..(MAX_REMEMBERED as u32 * 2 + 3) {
            let mut p = process(&["x"]);
            p.pid = pid;
            let e = event(None, Some(p));
            assert_eq!(written(&mut cache, &e), serde_json::to_string(&e).unwrap());
        }
        assert!(cache.processes.len() <= MAX_REMEMBERED);
        assert!(cache.ancestries.len() <= MAX_REMEMBERED);
    }
}
