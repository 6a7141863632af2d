//! phiguard's schema: the protobuf messages for events, shared by the agent's JSON output
//! and (later) the wire, the spool and the collector's store. JSON follows the canonical
//! proto3 mapping (camelCase names, 64-bit integers as strings, enums by name, RFC 3339 times).

pub use pbjson_types;

/// Version 1 of the schema (`package phiguard.v1`).
#[expect(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/phiguard.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/phiguard.v1.serde.rs"));
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::v1::{self, event::Body};

    fn sample() -> v1::Event {
        v1::Event {
            id: "019ab6c3-0000-7000-8000-000000000000".into(),
            seq: 42,
            time: Some(pbjson_types::Timestamp {
                seconds: 1_764_028_800,
                nanos: 5_000_000,
            }),
            host: Some(v1::Host {
                hostname: "ehr-db-1".into(),
                ..Default::default()
            }),
            body: Some(Body::FileOpen(v1::FileOpen {
                path: "/srv/ephi/rec.txt".into(),
                requested_path: "./rec.txt".into(),
                path_resolved: true,
                result: Some(3),
                access: v1::Access::Read as i32,
                inode: 1234,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn canonical_json_mapping() {
        let json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["seq"], "42", "uint64 as a string");
        assert_eq!(json["time"], "2025-11-25T00:00:00.005+00:00", "RFC 3339");
        let open = &json["fileOpen"];
        assert_eq!(open["requestedPath"], "./rec.txt", "camelCase names");
        assert_eq!(open["access"], "ACCESS_READ", "enums by name");
        assert_eq!(open["result"], "3");
        assert!(open.get("error").is_none(), "defaults omitted");
    }

    #[test]
    fn json_and_binary_round_trip() {
        let event = sample();
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<v1::Event>(&text).unwrap(), event);
        assert_eq!(
            v1::Event::decode(event.encode_to_vec().as_slice()).unwrap(),
            event
        );
    }
}
