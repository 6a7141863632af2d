//! Stored records as OCSF events (schema [`OCSF_VERSION`]), for the SOC's SIEM. One pure
//! function from a [`Record`] to a JSON value; the export ([`crate::export`]) writes it.
//!
//! Which class each kind maps to, and why, is in docs/siem.md. Whatever a class has no
//! attribute for is not lost: the whole phiguard event (its proto3 JSON, as `tail --json`
//! prints it) is kept under `unmapped.phiguard`, with the chain it is stored in and its
//! index there, so a SIEM record can always be traced back to the tamper-evident store.

use phiguard_proto::v1::{self, event::Body};
use serde_json::{json, Map, Value};

use crate::{store::Record, tail};

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.8.0";

/// Category and class uids (OCSF 1.8.0).
mod class {
    pub const FILE_ACTIVITY: (u32, u32) = (1, 1001);
    pub const PROCESS_ACTIVITY: (u32, u32) = (1, 1007);
    pub const AUTHENTICATION: (u32, u32) = (3, 3002);
    pub const NETWORK_ACTIVITY: (u32, u32) = (4, 4001);
    pub const DATASTORE_ACTIVITY: (u32, u32) = (6, 6005);
    pub const BASE_EVENT: (u32, u32) = (0, 0);
}

/// OCSF `severity_id` values used here.
const INFORMATIONAL: u32 = 1;
const LOW: u32 = 2;
const MEDIUM: u32 = 3;
/// OCSF agent type 1, Endpoint Detection and Response: what phiguard is to the SIEM.
const AGENT_ENDPOINT_PROTECTION: u32 = 1;
const HIGH: u32 = 4;

/// The OCSF event for a stored record.
pub fn record(record: &Record) -> Value {
    let event = &record.event;
    let (class, activity, mut body, severity) = map_body(event);
    let mut out = Map::new();
    out.insert("category_uid".into(), class.0.into());
    out.insert("class_uid".into(), class.1.into());
    out.insert("activity_id".into(), activity.into());
    out.insert(
        "type_uid".into(),
        (u64::from(class.1) * 100 + u64::from(activity)).into(),
    );
    out.insert("time".into(), time_ms(event, record.received).into());
    out.insert("severity_id".into(), severity.into());
    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": {"name": "phiguard", "vendor_name": "phiguard"},
        "log_name": &*record.agent,
        "sequence": record.index,
        "logged_time": record.received.saturating_mul(1000),
    });
    if !event.id.is_empty() {
        metadata["uid"] = event.id.clone().into();
    }
    out.insert("metadata".into(), metadata);
    if let Some(device) = device(event, &record.agent) {
        out.insert("device".into(), device);
    }
    if let Some(decision) = &event.decision {
        decision_fields(decision, &mut out);
    }
    out.append(&mut body);
    out.insert(
        "unmapped".into(),
        json!({
            "phiguard": {
                "agent": &*record.agent,
                "index": record.index,
                "received": record.received,
                "kind": crate::stream::kind_name(event),
                "event": tail::to_json(event),
            }
        }),
    );
    Value::Object(out)
}

fn time_ms(event: &v1::Event, received: i64) -> i64 {
    event.time.map_or(received.saturating_mul(1000), |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000)
    })
}

/// The host, and the agent on it: its certificate identity (`uid_alt`) and the instance
/// (`uid`: one spool, so a reinstalled agent on the same host is a new instance).
fn device(event: &v1::Event, agent: &str) -> Option<Value> {
    let host = event.host.as_ref()?;
    let mut d = json!({"type_id": 1, "hostname": if host.hostname.is_empty() { agent } else { &host.hostname }});
    if !host.machine_id.is_empty() {
        d["uid"] = host.machine_id.clone().into();
    }
    let mut phiguard = json!({
        "name": "phiguard",
        "vendor_name": "phiguard",
        "type_id": AGENT_ENDPOINT_PROTECTION,
        "uid_alt": agent,
    });
    if !host.instance_id.is_empty() {
        phiguard["uid"] = host.instance_id.clone().into();
    }
    d["agent_list"] = json!([phiguard]);
    Some(d)
}

/// Allow / deny / would-deny as OCSF's action (what the policy decided) and disposition
/// (what happened): a would-deny (audit mode) is action Allowed, disposition Detected.
fn decision_fields(decision: &v1::Decision, out: &mut Map<String, Value>) {
    let (action, disposition) = match v1::Verdict::try_from(decision.verdict) {
        Ok(v1::Verdict::Allow) => (1, 1),
        Ok(v1::Verdict::Deny) => (2, 2),
        Ok(v1::Verdict::WouldDeny) => (1, 15),
        _ => return,
    };
    out.insert("action_id".into(), action.into());
    out.insert("disposition_id".into(), disposition.into());
    if !decision.policy.is_empty() {
        let mut policy = json!({"name": decision.policy, "is_applied": action == 2});
        if !decision.rule.is_empty() {
            policy["desc"] = format!("rule {}", decision.rule).into();
        }
        if decision.generation != 0 {
            policy["version"] = decision.generation.to_string().into();
        }
        out.insert("policy".into(), policy);
    }
}

fn user(user: &v1::User) -> Value {
    let mut u = Map::new();
    if !user.name.is_empty() {
        u.insert("name".into(), user.name.clone().into());
    }
    if let Some(id) = user.id {
        u.insert("uid".into(), id.to_string().into());
    }
    Value::Object(u)
}

fn process(p: &v1::Process) -> Value {
    let mut out = Map::new();
    out.insert("pid".into(), p.pid.into());
    if !p.comm.is_empty() {
        out.insert("name".into(), p.comm.clone().into());
    }
    if !p.argv.is_empty() {
        out.insert("cmd_line".into(), p.argv.join(" ").into());
    }
    if !p.cwd.is_empty() {
        out.insert("working_directory".into(), p.cwd.clone().into());
    }
    if !p.exe.is_empty() {
        let mut file = json!({"path": p.exe, "name": file_name(&p.exe), "type_id": 1});
        if !p.binary_sha256.is_empty() {
            file["hashes"] = json!([{"algorithm_id": 3, "value": p.binary_sha256}]);
        }
        out.insert("file".into(), file);
    }
    if let Some(u) = &p.user {
        out.insert("user".into(), user(u));
    }
    if let Some(t) = p.start_time {
        out.insert(
            "created_time".into(),
            t.seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(t.nanos) / 1_000_000)
                .into(),
        );
    }
    if p.ppid != 0 {
        out.insert("parent_process".into(), json!({"pid": p.ppid}));
    }
    if !p.container_id.is_empty() {
        out.insert("container".into(), json!({"uid": p.container_id}));
    }
    Value::Object(out)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn actor(event: &v1::Event) -> Value {
    match &event.process {
        Some(p) => {
            let mut a = json!({"process": process(p)});
            if let Some(u) = p.login_user.as_ref().or(p.user.as_ref()) {
                a["user"] = user(u);
            }
            a
        }
        None => json!({}),
    }
}

/// The process that handed a received descriptor over (`fileOpen.sender`, `SCM_RIGHTS`).
/// OCSF 1.8.0 has one process per actor and no attribute for a second one in File System
/// Activity: `actor` stays the receiver (the subject the policy decided on), the sender goes to
/// `actor.invoked_by` as a name a SIEM can search ("EXE (pid N)"), and in full — an OCSF
/// `process` object — to an `enrichments` entry for that attribute.
fn sender_fields(sender: &v1::Process, body: &mut Value) {
    let name = if sender.exe.is_empty() {
        format!("pid {}", sender.pid)
    } else {
        format!("{} (pid {})", sender.exe, sender.pid)
    };
    body["actor"]["invoked_by"] = name.clone().into();
    body["enrichments"] = json!([{
        "name": "actor.invoked_by",
        "value": name,
        "type": "descriptor_sender",
        "provider": "phiguard",
        "short_desc": "the process that handed the descriptor over on a unix socket (SCM_RIGHTS)",
        "data": {"process": process(sender)},
    }]);
}

fn endpoint(address: &str, port: u32) -> Value {
    let mut e = Map::new();
    if address.parse::<std::net::IpAddr>().is_ok() {
        e.insert("ip".into(), address.into());
    } else if !address.is_empty() {
        e.insert("name".into(), address.into());
    }
    if port != 0 {
        e.insert("port".into(), port.into());
    }
    Value::Object(e)
}

type Mapped = ((u32, u32), u32, Map<String, Value>, u32);

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// File System Activity `activity_id` for a file event's syscall.
pub fn file_activity(syscall: &str, created: bool) -> u32 {
    match syscall {
        "creat" | "create" | "mkdir" | "mknod" => 1,
        _ if created => 1,
        "truncate" | "ftruncate" | "O_TRUNC" => 3,
        "unlink" | "unlinkat" | "rmdir" => 4,
        "rename" | "renameat" | "renameat2" => 5,
        "chmod" | "chown" | "utimes" | "setxattr" | "removexattr" => 6,
        "link" => 99,
        _ => 14,
    }
}

fn map_body(event: &v1::Event) -> Mapped {
    let severity = |denied: bool| if denied { MEDIUM } else { INFORMATIONAL };
    let denied = event
        .decision
        .as_ref()
        .is_some_and(|d| d.verdict != v1::Verdict::Allow as i32 && d.verdict != 0);
    match &event.body {
        Some(Body::FileOpen(f)) => {
            let mut file = json!({"path": f.path, "name": file_name(&f.path), "type_id": 1});
            if f.inode != 0 {
                file["uid"] = format!("{}:{}", f.device, f.inode).into();
            }
            let mut body = json!({"actor": actor(event), "file": file});
            if let Some(sender) = &f.sender {
                sender_fields(sender, &mut body);
            }
            if !f.error.is_empty() {
                body["status_id"] = 2.into();
                body["status_detail"] = f.error.clone().into();
            } else if f.result.is_some() {
                body["status_id"] = 1.into();
            }
            (
                class::FILE_ACTIVITY,
                file_activity(&f.syscall, f.created),
                obj(body),
                severity(denied),
            )
        }
        Some(Body::Exec(e)) => {
            let mut p = event.process.as_ref().map_or(json!({}), process);
            if p.get("file").is_none() && !e.filename.is_empty() {
                p["file"] =
                    json!({"path": e.filename, "name": file_name(&e.filename), "type_id": 1});
            }
            let body = json!({"actor": actor_parent(event), "process": p});
            (class::PROCESS_ACTIVITY, 1, obj(body), severity(denied))
        }
        Some(Body::Fork(f)) => {
            let body = json!({"actor": actor(event), "process": {"pid": f.child_pid}});
            (class::PROCESS_ACTIVITY, 1, obj(body), INFORMATIONAL)
        }
        Some(Body::Exit(x)) => {
            let p = event.process.as_ref().map_or(json!({}), process);
            let mut body = json!({"actor": actor(event), "process": p});
            if let Some(code) = x.exit_code {
                body["exit_code"] = code.into();
            }
            (class::PROCESS_ACTIVITY, 2, obj(body), INFORMATIONAL)
        }
        Some(Body::Connect(c)) => {
            let mut body = json!({
                "actor": actor(event),
                "dst_endpoint": endpoint(&c.address, c.port),
                "connection_info": {"direction_id": 2, "protocol_name": c.protocol.to_ascii_lowercase()},
            });
            if denied
                && event
                    .decision
                    .as_ref()
                    .is_some_and(|d| d.verdict == v1::Verdict::Deny as i32)
            {
                body["status_id"] = 2.into();
            }
            let activity = if body.get("status_id").is_some() {
                5
            } else {
                1
            };
            (
                class::NETWORK_ACTIVITY,
                activity,
                obj(body),
                severity(denied),
            )
        }
        Some(Body::TcpState(t)) => {
            let activity = match t.new_state.as_str() {
                "ESTABLISHED" => 1,
                "CLOSE" | "CLOSE_WAIT" | "FIN_WAIT1" | "FIN_WAIT2" | "TIME_WAIT" | "LAST_ACK" => 2,
                "LISTEN" => 7,
                _ => 99,
            };
            let direction = match v1::Direction::try_from(t.direction) {
                Ok(v1::Direction::Inbound) => 1,
                Ok(v1::Direction::Outbound) => 2,
                _ => 0,
            };
            let body = json!({
                "actor": actor(event),
                "src_endpoint": endpoint(&t.local_address, t.local_port),
                "dst_endpoint": endpoint(&t.remote_address, t.remote_port),
                "connection_info": {"direction_id": direction, "protocol_name": "tcp", "uid": t.socket_id.to_string()},
                "message": format!("TCP {} -> {}", t.old_state, t.new_state),
            });
            (class::NETWORK_ACTIVITY, activity, obj(body), INFORMATIONAL)
        }
        Some(Body::DbSessionStart(s)) => {
            let session = s.session.clone().unwrap_or_default();
            let mut body = db_common(event, &session);
            body.insert(
                "user".into(),
                json!({"name": if session.db_user.is_empty() { "unknown" } else { &session.db_user }}),
            );
            body.insert("is_cleartext".into(), (!s.encrypted).into());
            body.insert(
                "service".into(),
                json!({"name": session.protocol, "uid": session.database}),
            );
            let failed = session
                .connect_decision
                .as_ref()
                .is_some_and(|d| d.verdict == v1::Verdict::Deny as i32);
            body.insert("status_id".into(), (if failed { 2 } else { 1 }).into());
            (class::AUTHENTICATION, 1, body, severity(failed))
        }
        Some(Body::DbLogin(l)) => {
            let session = l.session.clone().unwrap_or_default();
            let mut body = db_common(event, &session);
            body.insert(
                "user".into(),
                json!({"name": if l.user.is_empty() { "unknown" } else { &l.user }}),
            );
            body.insert(
                "service".into(),
                json!({"name": session.protocol, "uid": l.database}),
            );
            if !l.method.is_empty() {
                body.insert("auth_protocol".into(), l.method.clone().into());
            }
            body.insert(
                "auth_protocol_id".into(),
                auth_protocol_id(&l.method).into(),
            );
            body.insert("status_id".into(), (if l.ok { 1 } else { 2 }).into());
            let code = if !l.sqlstate.is_empty() {
                l.sqlstate.clone()
            } else if l.error_code != 0 {
                l.error_code.to_string()
            } else {
                String::new()
            };
            if !code.is_empty() {
                body.insert("status_code".into(), code.into());
            }
            let what = if l.change_user {
                "change of user"
            } else {
                "login"
            };
            let verdict = if l.ok { "accepted" } else { "refused" };
            body.insert(
                "message".into(),
                format!("database {what} {verdict}").into(),
            );
            (class::AUTHENTICATION, 1, body, severity(denied || !l.ok))
        }
        Some(Body::DbSessionEnd(s)) => {
            let session = s.session.clone().unwrap_or_default();
            let mut body = db_common(event, &session);
            body.insert(
                "user".into(),
                json!({"name": if session.db_user.is_empty() { "unknown" } else { &session.db_user }}),
            );
            body.insert(
                "service".into(),
                json!({"name": session.protocol, "uid": session.database}),
            );
            body.insert("duration".into(), (s.duration_us / 1000).into());
            body.insert("message".into(), s.reason.clone().into());
            (class::AUTHENTICATION, 2, body, INFORMATIONAL)
        }
        Some(Body::DbStatement(st)) => {
            let session = st.session.clone().unwrap_or_default();
            let mut body = db_common(event, &session);
            let activity = match st.kind.to_ascii_uppercase().as_str() {
                "SELECT" | "SHOW" => 4,
                "INSERT" => 5,
                "UPDATE" => 2,
                "DELETE" | "DROP" | "TRUNCATE" => 7,
                "CREATE" => 6,
                _ => 99,
            };
            body.insert(
                "database".into(),
                json!({"name": session.database, "type_id": db_type(&session.protocol)}),
            );
            let mut query = json!({"query_string": st.text});
            if !st.statement_name.is_empty() {
                query["name"] = st.statement_name.clone().into();
            }
            body.insert("query_info".into(), query);
            body.insert("status_id".into(), (if st.ok { 1 } else { 2 }).into());
            if !st.sqlstate.is_empty() {
                body.insert("status_code".into(), st.sqlstate.clone().into());
            }
            body.insert("duration".into(), (st.duration_us / 1000).into());
            (class::DATASTORE_ACTIVITY, activity, body, severity(denied))
        }
        Some(Body::Tamper(t)) => (
            class::BASE_EVENT,
            99,
            obj(json!({"message": format!("tamper: {} {}", t.object, t.detail)})),
            HIGH,
        ),
        Some(Body::EventsLost(l)) => (
            class::BASE_EVENT,
            99,
            obj(
                json!({"message": format!("{} {} events lost", l.count, l.kind), "count": l.count}),
            ),
            MEDIUM,
        ),
        Some(Body::PolicyLoad(p)) => (
            class::BASE_EVENT,
            99,
            obj(
                json!({"message": if p.ok { format!("policy generation {} in force", p.generation) } else { format!("policy refused: {}", p.error) }}),
            ),
            if p.ok { INFORMATIONAL } else { HIGH },
        ),
        Some(Body::BreakGlass(b)) => (
            class::BASE_EVENT,
            99,
            obj(json!({"message": format!("break-glass grant {}: {}", b.grant_id, b.reason)})),
            HIGH,
        ),
        Some(Body::Alert(a)) => (
            class::BASE_EVENT,
            99,
            obj(json!({"message": a.message})),
            HIGH,
        ),
        Some(Body::Heartbeat(_)) => (class::BASE_EVENT, 99, Map::new(), INFORMATIONAL),
        Some(Body::Subscription(s)) => (
            class::BASE_EVENT,
            99,
            obj(
                json!({"message": format!("subscription {} by {}", s.subscription_id, s.subscriber)}),
            ),
            LOW,
        ),
        None => (class::BASE_EVENT, 0, Map::new(), INFORMATIONAL),
    }
}

/// The actor of an exec is the process before it (its parent, as far as the event says).
fn actor_parent(event: &v1::Event) -> Value {
    let mut a = actor(event);
    if let (Some(p), Some(parent)) = (&event.process, event.ancestry.first()) {
        let _ = p;
        a["process"] = json!({"pid": parent.pid, "name": parent.comm, "file": {"path": parent.exe, "name": file_name(&parent.exe), "type_id": 1}});
    }
    a
}

/// OCSF `auth_protocol_id` for a login method: Kerberos (2), PAP for a cleartext password
/// (7), Other (99) for the rest (MD5, SCRAM, MySQL plugins), Unknown (0) when none was seen.
fn auth_protocol_id(method: &str) -> u32 {
    match method {
        "" => 0,
        "kerberos5" | "gss" | "sspi" | "auth_gssapi_client" => 2,
        "password" | "mysql_clear_password" => 7,
        _ => 99,
    }
}

fn db_type(protocol: &str) -> u32 {
    match protocol {
        "postgres" | "postgresql" => 5,
        "mysql" | "mariadb" => 3,
        _ => 99,
    }
}

fn db_common(event: &v1::Event, session: &v1::DbSession) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("actor".into(), actor(event));
    let (src, dst) = if session.role == "server" {
        (
            endpoint(&session.remote_address, session.remote_port),
            endpoint(&session.local_address, session.local_port),
        )
    } else {
        (
            endpoint(&session.local_address, session.local_port),
            endpoint(&session.remote_address, session.remote_port),
        )
    };
    body.insert("src_endpoint".into(), src);
    body.insert("dst_endpoint".into(), dst);
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rec(body: Body, decision: Option<v1::Decision>) -> Record {
        Record {
            agent: Arc::from("ehr-a"),
            index: 7,
            received: 1_700_000_000,
            event: v1::Event {
                id: "e1".into(),
                seq: 3,
                host: Some(v1::Host {
                    hostname: "ehr-a".into(),
                    machine_id: "m".into(),
                    agent_id: "ehr-a".into(),
                    instance_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
                }),
                body: Some(body),
                decision,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_denied_open_is_file_activity_blocked_with_the_event_unmapped() {
        let v = record(&rec(
            Body::FileOpen(v1::FileOpen {
                path: "/srv/ephi/a".into(),
                syscall: "openat".into(),
                ..Default::default()
            }),
            Some(v1::Decision {
                verdict: v1::Verdict::Deny as i32,
                policy: "ephi".into(),
                ..Default::default()
            }),
        ));
        assert_eq!(v["class_uid"], 1001);
        assert_eq!(v["activity_id"], 14);
        assert_eq!(v["type_uid"], 100114);
        assert_eq!(v["action_id"], 2);
        assert_eq!(v["disposition_id"], 2);
        assert_eq!(v["metadata"]["version"], OCSF_VERSION);
        let agent = &v["device"]["agent_list"][0];
        assert_eq!(agent["uid"], "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(agent["uid_alt"], "ehr-a");
        assert_eq!(agent["name"], "phiguard");
        assert_eq!(v["unmapped"]["phiguard"]["index"], 7);
        assert_eq!(
            v["unmapped"]["phiguard"]["event"]["fileOpen"]["path"],
            "/srv/ephi/a"
        );
    }

    #[test]
    fn a_refused_database_login_is_a_failed_authentication_with_its_method() {
        let v = record(&rec(
            Body::DbLogin(v1::DbLogin {
                session: Some(v1::DbSession {
                    protocol: "postgresql".into(),
                    role: "server".into(),
                    ..Default::default()
                }),
                user: "mallory".into(),
                database: "ehr".into(),
                method: "scram-sha-256".into(),
                sqlstate: "28P01".into(),
                ..Default::default()
            }),
            None,
        ));
        assert_eq!(
            (v["class_uid"].clone(), v["activity_id"].clone()),
            (3002.into(), 1.into())
        );
        assert_eq!(v["status_id"], 2);
        assert_eq!(v["status_code"], "28P01");
        assert_eq!(v["user"]["name"], "mallory");
        assert_eq!(v["auth_protocol"], "scram-sha-256");
        assert_eq!(v["auth_protocol_id"], 99);
        assert_eq!(v["severity_id"], MEDIUM);
        let ok = record(&rec(
            Body::DbLogin(v1::DbLogin {
                user: "clerk".into(),
                method: "password".into(),
                ok: true,
                ..Default::default()
            }),
            None,
        ));
        assert_eq!(
            (ok["status_id"].clone(), ok["auth_protocol_id"].clone()),
            (1.into(), 7.into())
        );
        assert_eq!(ok["severity_id"], INFORMATIONAL);
    }

    #[test]
    fn a_received_descriptor_names_its_sender_as_invoked_by_with_the_process_enriched() {
        let v = record(&rec(
            Body::FileOpen(v1::FileOpen {
                path: "/srv/ephi/a".into(),
                syscall: "pidfd_getfd or SCM_RIGHTS (a descriptor received)".into(),
                result: Some(0),
                sender: Some(v1::Process {
                    pid: 4242,
                    exe: "/opt/ehr/bin/ehr-server".into(),
                    binary_sha256: "ab".repeat(32),
                    user: Some(v1::User {
                        id: Some(998),
                        name: "ehr".into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Some(v1::Decision {
                verdict: v1::Verdict::Allow as i32,
                ..Default::default()
            }),
        ));
        assert_eq!(v["activity_id"], 14);
        assert_eq!(
            v["actor"]["invoked_by"],
            "/opt/ehr/bin/ehr-server (pid 4242)"
        );
        let enrichment = &v["enrichments"][0];
        assert_eq!(enrichment["name"], "actor.invoked_by");
        assert_eq!(enrichment["value"], v["actor"]["invoked_by"]);
        assert_eq!(enrichment["type"], "descriptor_sender");
        let sender = &enrichment["data"]["process"];
        assert_eq!(sender["pid"], 4242);
        assert_eq!(sender["file"]["path"], "/opt/ehr/bin/ehr-server");
        assert_eq!(sender["file"]["hashes"][0]["value"], "ab".repeat(32));
        assert_eq!(sender["user"]["name"], "ehr");
        // An open has no sender: neither attribute.
        let plain = record(&rec(
            Body::FileOpen(v1::FileOpen {
                path: "/srv/ephi/a".into(),
                syscall: "openat".into(),
                ..Default::default()
            }),
            None,
        ));
        assert!(plain["actor"].get("invoked_by").is_none(), "{plain}");
        assert!(plain.get("enrichments").is_none(), "{plain}");
    }

    #[test]
    fn would_deny_is_allowed_but_detected() {
        let v = record(&rec(
            Body::FileOpen(v1::FileOpen {
                path: "/x".into(),
                syscall: "unlink".into(),
                ..Default::default()
            }),
            Some(v1::Decision {
                verdict: v1::Verdict::WouldDeny as i32,
                ..Default::default()
            }),
        ));
        assert_eq!(
            (v["action_id"].clone(), v["disposition_id"].clone()),
            (1.into(), 15.into())
        );
        assert_eq!(v["activity_id"], 4);
    }
}
