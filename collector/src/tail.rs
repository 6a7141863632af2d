//! `phiguard-collector tail`: a subscriber client and the readable one-line form of an
//! event.

use std::{fmt::Write as _, time::Duration};

use phiguard_proto::v1::{self, collector_client::CollectorClient, event::Body, SubscribeRequest};
use phiguard_support::tls::{self, TlsError, TlsFiles};
use tonic::Streaming;

use crate::stream::kind_name;

/// How long a subscriber waits for the collector to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A subscription that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// TLS set-up or connection failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The collector refused.
    #[error("subscribe refused ({:?}): {}", .0.code(), .0.message())]
    Refused(#[from] tonic::Status),
}

/// Subscribes to the collector at `addr` (`host:port`) with the subscriber certificate in
/// `files`.
pub async fn subscribe(
    addr: &str,
    server_name: Option<&str>,
    files: &TlsFiles,
    request: SubscribeRequest,
    max_message_bytes: usize,
) -> Result<Streaming<v1::Event>, TailError> {
    let channel = tls::connect(
        addr,
        server_name,
        tls::client_config(files)?,
        CONNECT_TIMEOUT,
    )
    .await?;
    let mut client = CollectorClient::new(channel).max_decoding_message_size(max_message_bytes);
    Ok(client.subscribe(request).await?.into_inner())
}

/// A timestamp as RFC 3339 (the proto3 JSON form).
pub fn rfc3339(t: &pbjson_types::Timestamp) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{}.{:09}", t.seconds, t.nanos))
}

fn user(u: &Option<v1::User>) -> String {
    match u {
        Some(u) if !u.name.is_empty() => format!("{}({})", u.name, u.id.unwrap_or_default()),
        Some(u) => u.id.map_or_else(|| "?".into(), |id| id.to_string()),
        None => "?".into(),
    }
}

/// `text` with every control character (newline, carriage return, escape, C1 controls,
/// DEL), every bidirectional override or isolate, and the backslash itself written as an
/// escape (`\n`, `\u{1b}`, `\\`): a file name, command line or SQL text an unprivileged user
/// chose can then neither start a fake line nor move or recolour what the terminal shows.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The proto3 JSON of `event`, always: a timestamp that JSON cannot represent (out of the
/// RFC 3339 range, or nanos out of range) is left out of its field and listed, as sent,
/// under `"unrepresentableTimestamps"`, so one bad event never ends `tail --json`.
pub fn to_json(event: &v1::Event) -> serde_json::Value {
    if let Ok(value) = serde_json::to_value(event) {
        return value;
    }
    let mut event = event.clone();
    let mut bad = Vec::new();
    let mut check = |field: &str, t: &mut Option<pbjson_types::Timestamp>| {
        if let Some(ts) = t {
            if serde_json::to_value(*ts).is_err() {
                bad.push(serde_json::json!({"field": field, "seconds": ts.seconds.to_string(), "nanos": ts.nanos}));
                *t = None;
            }
        }
    };
    check("time", &mut event.time);
    if let Some(p) = &mut event.process {
        check("process.startTime", &mut p.start_time);
    }
    if let Some(Body::Fork(f)) = &mut event.body {
        check("fork.childStartTime", &mut f.child_start_time);
    }
    let mut value = serde_json::to_value(&event).unwrap_or_else(
        |e| serde_json::json!({"id": event.id, "seq": event.seq.to_string(), "unserializable": e.to_string()}),
    );
    if let Some(object) = value.as_object_mut() {
        object.insert("unrepresentableTimestamps".into(), bad.into());
    }
    value
}

/// One readable line: time, host, seq, kind, what happened, who did it. Every string from
/// the event is escaped ([`escape`]): the line is one line, whatever the event holds.
pub fn format_line(event: &v1::Event) -> String {
    escape(&format_raw(event)).into_owned()
}

fn format_raw(event: &v1::Event) -> String {
    let mut line = String::new();
    let time = event.time.map_or_else(|| "-".to_owned(), |t| rfc3339(&t));
    let host = event.host.as_ref().map_or("?", |h| {
        if h.agent_id.is_empty() {
            &h.hostname
        } else {
            &h.agent_id
        }
    });
    let _ = write!(line, "{time} {host} #{} {}", event.seq, kind_name(event));
    // The agent instance (short form) where the stream has one: seqs count per instance.
    if let Some(instance) = event.host.as_ref().map(|h| h.instance_id.as_str()) {
        if !instance.is_empty() {
            let _ = write!(line, " [{}]", crate::store::short_instance(instance));
        }
    }
    match &event.body {
        Some(Body::FileOpen(o)) => {
            let _ = write!(line, " {} {}", o.path, o.flags.join("|"));
            match o.result {
                Some(r) if r < 0 => {
                    let _ = write!(line, " -> {}", o.error);
                }
                Some(r) => {
                    let _ = write!(line, " -> fd {r}");
                }
                None => {}
            }
        }
        Some(Body::Exec(e)) => {
            let _ = write!(line, " {}", e.filename);
        }
        Some(Body::Fork(f)) => {
            let _ = write!(line, " child {}", f.child_pid);
        }
        Some(Body::Exit(x)) => match (&x.signal, x.exit_status) {
            (Some(sig), _) => {
                let _ = write!(line, " killed by {sig}");
            }
            (None, Some(status)) => {
                let _ = write!(line, " status {status}");
            }
            _ => {}
        },
        Some(Body::Connect(c)) => {
            let _ = write!(line, " {} {}:{}", c.protocol, c.address, c.port);
        }
        Some(Body::TcpState(t)) => {
            let _ = write!(
                line,
                " {}:{} <-> {}:{} {} -> {}",
                t.local_address,
                t.local_port,
                t.remote_address,
                t.remote_port,
                t.old_state,
                t.new_state
            );
        }
        Some(Body::EventsLost(l)) => {
            let source = v1::LossSource::try_from(l.source)
                .map_or("?".to_owned(), |s| s.as_str_name().to_owned());
            let kind = if l.kind.is_empty() { "events" } else { &l.kind };
            let _ = write!(
                line,
                " {} {kind} lost (total {}) {source}",
                l.count, l.total
            );
        }
        Some(Body::PolicyLoad(p)) => {
            if p.ok {
                let _ = write!(
                    line,
                    " generation {} in force ({}): {}",
                    p.generation,
                    p.trigger,
                    p.policies.join(", ")
                );
            } else {
                let _ = write!(line, " refused ({}): {}", p.trigger, p.error);
            }
        }
        Some(Body::Alert(a)) => {
            let _ = write!(line, " {}", a.message);
        }
        Some(Body::DbSessionStart(s)) => {
            let _ = write!(
                line,
                " {}{}",
                s.application,
                if s.encrypted { " (encrypted)" } else { "" }
            );
        }
        Some(Body::DbStatement(s)) => {
            let _ = write!(line, " {} {}", s.kind, s.text);
            if !s.sqlstate.is_empty() {
                let _ = write!(line, " -> SQLSTATE {}", s.sqlstate);
            } else if let Some(rows) = s.rows {
                let _ = write!(line, " -> {rows} rows");
            }
        }
        Some(Body::DbLogin(l)) => {
            let what = if l.change_user {
                "change user"
            } else {
                "login"
            };
            let _ = write!(line, " {what} {} ({})", l.user, l.method);
            if l.ok {
                let _ = write!(line, " ok");
            } else {
                let _ = write!(line, " FAILED");
                if !l.sqlstate.is_empty() {
                    let _ = write!(line, " SQLSTATE {}", l.sqlstate);
                }
                if l.error_code != 0 {
                    let _ = write!(line, " error {}", l.error_code);
                }
            }
        }
        Some(Body::DbSessionEnd(s)) => {
            let _ = write!(
                line,
                " {} statements, {} B sent, {} B received",
                s.statements, s.bytes_sent, s.bytes_received
            );
        }
        Some(Body::Heartbeat(h)) => {
            let _ = write!(
                line,
                " programs {}/{} attached, policy generation {}, spool {} events ({} B), lost {} kernel + {} spool",
                h.programs_attached,
                h.programs_known,
                h.policy_generation,
                h.spool_events,
                h.spool_bytes,
                h.kernel_lost,
                h.spool_dropped
            );
        }
        Some(Body::BreakGlass(b)) => {
            let action = v1::BreakGlassAction::try_from(b.action).map_or("?", |a| a.as_str_name());
            let whom = match &b.user {
                Some(u) => format!("user {}", u.name),
                None => format!("exe {}", b.exe),
            };
            let _ = write!(line, " {action} {} for {whom}: {}", b.grant_id, b.reason);
        }
        Some(Body::Tamper(t)) => {
            let kind = v1::TamperKind::try_from(t.kind).map_or("?", |k| k.as_str_name());
            let _ = write!(line, " {kind} {}: {}", t.object, t.detail);
            if t.repaired {
                line.push_str(" (repaired)");
            } else {
                let _ = write!(line, " (NOT repaired: {})", t.repair_error);
            }
        }
        Some(Body::Subscription(s)) => crate::audit::describe(&mut line, s),
        None => {}
    }
    if let Some(d) = &event.decision {
        let verdict =
            v1::Verdict::try_from(d.verdict).map_or("?".to_owned(), |v| v.as_str_name().to_owned());
        let _ = write!(line, " [{verdict} {}/{}]", d.policy, d.rule);
    }
    if let Some(p) = &event.process {
        let _ = write!(
            line,
            " by {}[{}] exe={} user={}",
            p.comm,
            p.pid,
            p.exe,
            user(&p.user)
        );
        if p.login_user.is_some() {
            let _ = write!(line, " login={}", user(&p.login_user));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_file_name_stays_on_its_line_and_cannot_drive_the_terminal() {
        let forged = "/srv/ephi/x\n2026-01-01T00:00:00+00:00 ehr-db-1 #1 fileOpen /etc/fake \u{1b}[2K\u{1b}[1A\u{202e}txt.exe\\n";
        let event = v1::Event {
            seq: 7,
            body: Some(Body::FileOpen(v1::FileOpen {
                path: forged.into(),
                ..Default::default()
            })),
            process: Some(v1::Process {
                comm: "evil\r".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let line = format_line(&event);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(!line.contains('\u{202e}'), "{line:?}");
        assert!(
            line.contains("/srv/ephi/x\\n2026-01-01T00:00:00+00:00"),
            "{line}"
        );
        assert!(line.contains("\\u{1b}[2K"), "{line}");
        assert!(
            line.contains("txt.exe\\\\n"),
            "a literal backslash-n stays distinguishable: {line}"
        );
        assert!(line.contains("evil\\r["), "{line}");
        assert_eq!(escape("/srv/ephi/plain"), "/srv/ephi/plain");
    }

    #[test]
    fn an_out_of_range_timestamp_still_gives_json() {
        let mut event = v1::Event {
            id: "x".into(),
            seq: 3,
            time: Some(pbjson_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            body: Some(Body::Fork(v1::ProcessFork {
                child_start_time: Some(pbjson_types::Timestamp {
                    seconds: 1,
                    nanos: -5,
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(serde_json::to_value(&event).is_err(), "the case is real");
        let json = to_json(&event);
        assert_eq!(json["seq"], "3");
        assert_eq!(json["unrepresentableTimestamps"][0]["field"], "time");
        assert_eq!(
            json["unrepresentableTimestamps"][0]["seconds"],
            i64::MAX.to_string()
        );
        assert_eq!(
            json["unrepresentableTimestamps"][1]["field"],
            "fork.childStartTime"
        );
        assert!(!format_line(&event).is_empty());
        event.time = None;
        event.body = None;
        assert!(to_json(&event).get("unrepresentableTimestamps").is_none());
    }

    #[test]
    fn readable_line() {
        let event = v1::Event {
            seq: 5,
            time: Some(pbjson_types::Timestamp {
                seconds: 1_764_028_800,
                nanos: 0,
            }),
            host: Some(v1::Host {
                hostname: "ehr-db-1".into(),
                agent_id: "ehr-db-1".into(),
                ..Default::default()
            }),
            process: Some(v1::Process {
                pid: 42,
                comm: "cat".into(),
                exe: "/usr/bin/cat".into(),
                user: Some(v1::User {
                    id: Some(0),
                    name: "root".into(),
                }),
                login_user: Some(v1::User {
                    id: Some(1000),
                    name: "alice".into(),
                }),
                ..Default::default()
            }),
            body: Some(Body::FileOpen(v1::FileOpen {
                path: "/srv/ephi/p1.txt".into(),
                flags: vec!["O_RDONLY".into()],
                result: Some(3),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            format_line(&event),
            "2025-11-25T00:00:00+00:00 ehr-db-1 #5 fileOpen /srv/ephi/p1.txt O_RDONLY -> fd 3 \
             by cat[42] exe=/usr/bin/cat user=root(0) login=alice(1000)"
        );
    }

    #[test]
    fn login_lines() {
        let refused = v1::Event {
            seq: 9,
            body: Some(Body::DbLogin(v1::DbLogin {
                user: "mallory".into(),
                method: "scram-sha-256".into(),
                sqlstate: "28P01".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            format_line(&refused),
            "- ? #9 dbLogin login mallory (scram-sha-256) FAILED SQLSTATE 28P01"
        );
        let changed = v1::Event {
            seq: 10,
            body: Some(Body::DbLogin(v1::DbLogin {
                user: "clerk".into(),
                method: "mysql_native_password".into(),
                ok: true,
                change_user: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            format_line(&changed),
            "- ? #10 dbLogin change user clerk (mysql_native_password) ok"
        );
    }
}
