//! Stored records as ArcSight CEF lines (`format = "cef"` in `[export.NAME]`), the second
//! format SIEMs read. The header names the kind; the extension carries the common fields
//! (time, host, user, process, file and a received descriptor's sender, endpoints, decision)
//! and, as `cs6` (label `phiguardEvent`), the whole phiguard event as JSON, as OCSF's
//! `unmapped` does.

use phiguard_proto::v1::{self, event::Body};

use crate::{store::Record, stream::kind_name, tail};

/// Escapes a header field (`\` and `|`).
fn header(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|")
}

/// Escapes an extension value (`\`, `=`, line ends).
pub fn value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// One CEF line (no line end) for a stored record.
pub fn record(record: &Record) -> String {
    let event = &record.event;
    let kind = kind_name(event);
    let verdict = event
        .decision
        .as_ref()
        .and_then(|d| v1::Verdict::try_from(d.verdict).ok());
    let (act, severity) = match verdict {
        Some(v1::Verdict::Deny) => ("deny", 7),
        Some(v1::Verdict::WouldDeny) => ("would-deny", 5),
        Some(v1::Verdict::Allow) => ("allow", 1),
        _ => ("", 1),
    };
    let severity = match &event.body {
        Some(Body::Tamper(_) | Body::BreakGlass(_) | Body::Alert(_)) => 8,
        Some(Body::EventsLost(_)) => 6,
        // A refused database login: someone tried credentials on a patient-records server.
        Some(Body::DbLogin(l)) if !l.ok => severity.max(5),
        _ => severity,
    };
    let mut ext: Vec<(&str, String)> = Vec::new();
    let rt = event
        .time
        .map_or(record.received.saturating_mul(1000), |t| {
            t.seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(t.nanos) / 1_000_000)
        });
    ext.push(("rt", rt.to_string()));
    ext.push(("externalId", event.id.clone()));
    ext.push(("cs2Label", "chain".into()));
    ext.push(("cs2", record.agent.to_string()));
    ext.push(("cn1Label", "chainIndex".into()));
    ext.push(("cn1", record.index.to_string()));
    if let Some(h) = &event.host {
        ext.push(("dvchost", h.hostname.clone()));
        if !h.machine_id.is_empty() {
            ext.push(("deviceExternalId", h.machine_id.clone()));
        }
        if !h.instance_id.is_empty() {
            ext.push(("cs4Label", "agentInstance".into()));
            ext.push(("cs4", h.instance_id.clone()));
        }
    }
    if let Some(p) = &event.process {
        ext.push(("spid", p.pid.to_string()));
        ext.push(("sproc", p.exe.clone()));
        if let Some(u) = &p.user {
            ext.push(("suser", u.name.clone()));
            if let Some(id) = u.id {
                ext.push(("suid", id.to_string()));
            }
        }
    }
    if !act.is_empty() {
        ext.push(("act", act.into()));
    }
    if let Some(d) = &event.decision {
        if !d.policy.is_empty() {
            ext.push(("cs1Label", "policy".into()));
            ext.push(("cs1", d.policy.clone()));
        }
    }
    match &event.body {
        Some(Body::FileOpen(f)) => {
            ext.push(("filePath", f.path.clone()));
            ext.push(("fname", f.path.rsplit('/').next().unwrap_or("").to_owned()));
            ext.push(("deviceAction", f.syscall.clone()));
            if let Some(sender) = &f.sender {
                // The other end of a hand-over (`SCM_RIGHTS`); `spid`/`sproc` stay the
                // receiver, the subject the policy decided on.
                ext.push(("cs5Label", "descriptorSender".into()));
                ext.push(("cs5", sender.exe.clone()));
                ext.push(("cn2Label", "descriptorSenderPid".into()));
                ext.push(("cn2", sender.pid.to_string()));
            }
        }
        Some(Body::Connect(c)) => {
            ext.push(("dst", c.address.clone()));
            ext.push(("dpt", c.port.to_string()));
            ext.push(("proto", c.protocol.clone()));
        }
        Some(Body::TcpState(t)) => {
            ext.push(("src", t.local_address.clone()));
            ext.push(("spt", t.local_port.to_string()));
            ext.push(("dst", t.remote_address.clone()));
            ext.push(("dpt", t.remote_port.to_string()));
            ext.push(("msg", format!("{} -> {}", t.old_state, t.new_state)));
        }
        Some(Body::DbStatement(s)) => {
            ext.push(("request", s.text.clone()));
            if let Some(session) = &s.session {
                ext.push(("duser", session.db_user.clone()));
                ext.push(("cs3Label", "database".into()));
                ext.push(("cs3", session.database.clone()));
            }
        }
        Some(Body::DbLogin(l)) => {
            ext.push(("duser", l.user.clone()));
            ext.push(("cs3Label", "database".into()));
            ext.push(("cs3", l.database.clone()));
            ext.push(("outcome", if l.ok { "success" } else { "failure" }.into()));
            ext.push(("reason", l.sqlstate.clone()));
        }
        Some(
            Body::DbSessionStart(v1::DbSessionStart {
                session: Some(session),
                ..
            })
            | Body::DbSessionEnd(v1::DbSessionEnd {
                session: Some(session),
                ..
            }),
        ) => {
            ext.push(("duser", session.db_user.clone()));
            ext.push(("cs3Label", "database".into()));
            ext.push(("cs3", session.database.clone()));
        }
        _ => {}
    }
    ext.push(("cs6Label", "phiguardEvent".into()));
    ext.push(("cs6", tail::to_json(event).to_string()));
    let extension: Vec<String> = ext
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", value(&v)))
        .collect();
    format!(
        "CEF:0|phiguard|phiguard|{}|{}|{}|{severity}|{}",
        header(env!("CARGO_PKG_VERSION")),
        header(kind),
        header(&format!("phiguard {kind}")),
        extension.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_denied_open_is_one_escaped_cef_line() {
        let r = Record {
            agent: Arc::from("ehr-a"),
            index: 9,
            received: 1_700_000_000,
            event: v1::Event {
                id: "e1".into(),
                host: Some(v1::Host {
                    hostname: "ehr-a".into(),
                    instance_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
                    ..Default::default()
                }),
                body: Some(Body::FileOpen(v1::FileOpen {
                    path: "/srv/a=b|c\nd".into(),
                    syscall: "openat".into(),
                    ..Default::default()
                })),
                decision: Some(v1::Decision {
                    verdict: v1::Verdict::Deny as i32,
                    policy: "ephi".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let line = record(&r);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("CEF:0|phiguard|phiguard|"), "{line}");
        assert!(line.contains("|fileOpen|phiguard fileOpen|7|"), "{line}");
        assert!(line.contains(" act=deny "), "{line}");
        assert!(line.contains("filePath=/srv/a\\=b|c\\nd "), "{line}");
        assert!(line.contains("cn1=9 "), "{line}");
        assert!(
            line.contains(" cs4Label=agentInstance cs4=0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b "),
            "{line}"
        );
        assert!(line.contains("cs6Label=phiguardEvent cs6={"), "{line}");
        assert!(!line.contains("cs5"), "no sender, no cs5: {line}");
    }

    #[test]
    fn a_received_descriptor_names_its_sender_in_cs5_and_cn2() {
        let r = Record {
            agent: Arc::from("ehr-a"),
            index: 9,
            received: 1_700_000_000,
            event: v1::Event {
                process: Some(v1::Process {
                    pid: 77,
                    exe: "/usr/bin/receiver".into(),
                    ..Default::default()
                }),
                body: Some(Body::FileOpen(v1::FileOpen {
                    path: "/srv/ephi/a".into(),
                    syscall: "pidfd_getfd or SCM_RIGHTS (a descriptor received)".into(),
                    sender: Some(v1::Process {
                        pid: 4242,
                        exe: "/opt/ehr/bin/ehr-server".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            },
        };
        let line = record(&r);
        assert!(line.contains(" spid=77 sproc=/usr/bin/receiver "), "{line}");
        assert!(
            line.contains(
                " cs5Label=descriptorSender cs5=/opt/ehr/bin/ehr-server cn2Label=descriptorSenderPid cn2=4242 "
            ),
            "{line}"
        );
    }
}
