//! Subscriber scopes: which hosts and event kinds each subscriber may see (`[scope.NAME]` in
//! collector.toml, keyed by the subscriber's certificate identity).
//!
//! A subscriber listed in `[server] subscribers` without a scope sees nothing: its Subscribe
//! is refused (`PERMISSION_DENIED`, naming the missing table) and the refusal is audited.
//! Seeing every host's ePHI is a grant like any other, written `hosts = ["*"]`, so nobody
//! gets it by leaving a line out. A request within the scope is served as asked; a request
//! naming a host or kind outside it is refused, naming what is outside; a request naming none
//! gets everything the scope grants.

use std::{collections::BTreeMap, fmt};

use phiguard_proto::v1;

use crate::stream::{self, canonical_kind};

/// The grant that stands for every value.
pub const ALL: &str = "*";

/// What one scope field grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Everything (`["*"]`).
    All,
    /// Only these values (host identities or machine ids; kinds by their JSON name).
    Only(Vec<String>),
}

impl Grant {
    /// Whether `value` is granted.
    pub fn allows(&self, value: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Only(values) => values.iter().any(|v| v == value),
        }
    }

    /// The granted values as the audit record lists them (`*` for all).
    pub fn listed(&self) -> Vec<String> {
        match self {
            Grant::All => vec![ALL.to_owned()],
            Grant::Only(values) => values.clone(),
        }
    }
}

/// One subscriber's scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Agent identities (certificate names) or machine ids (32 hex digits).
    pub hosts: Grant,
    /// Event kinds (JSON names, as [`stream::KINDS`]).
    pub kinds: Grant,
}

/// Every configured scope, by subscriber identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    by_identity: BTreeMap<String, Scope>,
}

/// A subscription its scope does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// No `[scope.NAME]` for this subscriber: it sees nothing.
    #[error("no scope is configured for subscriber {identity:?} ([scope.{identity}] in collector.toml): it may see nothing")]
    Unscoped {
        /// The subscriber.
        identity: String,
    },
    /// Hosts outside the scope were asked for.
    #[error("subscriber {identity:?} is not granted hosts {}", .refused.join(", "))]
    Hosts {
        /// The subscriber.
        identity: String,
        /// What was asked for and is not granted.
        refused: Vec<String>,
    },
    /// Kinds outside the scope were asked for.
    #[error("subscriber {identity:?} is not granted event kinds {}", .refused.join(", "))]
    Kinds {
        /// The subscriber.
        identity: String,
        /// What was asked for and is not granted.
        refused: Vec<String>,
    },
}

impl Scopes {
    /// Scopes from `(identity, scope)` pairs.
    pub fn new(scopes: impl IntoIterator<Item = (String, Scope)>) -> Scopes {
        Scopes {
            by_identity: scopes.into_iter().collect(),
        }
    }

    /// The scope of `identity`, if one is configured.
    pub fn get(&self, identity: &str) -> Option<&Scope> {
        self.by_identity.get(identity)
    }

    /// Checks `filter` (as the subscriber sent it) against `identity`'s scope and returns the
    /// scope that then applies to every event sent.
    pub fn check(&self, identity: &str, filter: &v1::EventFilter) -> Result<Scope, ScopeError> {
        let scope = self.get(identity).ok_or_else(|| ScopeError::Unscoped {
            identity: identity.to_owned(),
        })?;
        let refused: Vec<String> = filter
            .hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| !scope.hosts.allows(h))
            .collect();
        if !refused.is_empty() {
            return Err(ScopeError::Hosts {
                identity: identity.to_owned(),
                refused,
            });
        }
        let refused: Vec<String> = filter
            .kinds
            .iter()
            .filter(|k| !canonical_kind(k).is_some_and(|k| scope.kinds.allows(k)))
            .cloned()
            .collect();
        if !refused.is_empty() {
            return Err(ScopeError::Kinds {
                identity: identity.to_owned(),
                refused,
            });
        }
        Ok(scope.clone())
    }
}

impl Scope {
    /// Whether `agent`'s `event` is within the scope.
    pub fn allows(&self, agent: &str, event: &v1::Event) -> bool {
        let host = match &self.hosts {
            Grant::All => true,
            Grant::Only(_) => {
                self.hosts.allows(agent)
                    || event.host.as_ref().is_some_and(|h| {
                        !h.machine_id.is_empty() && self.hosts.allows(&h.machine_id)
                    })
            }
        };
        host && self.kinds.allows(stream::kind_name(event))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hosts {} kinds {}",
            self.hosts.listed().join(","),
            self.kinds.listed().join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(agent: &str, machine_id: &str, body: v1::event::Body) -> v1::Event {
        v1::Event {
            host: Some(v1::Host {
                hostname: agent.into(),
                agent_id: agent.into(),
                machine_id: machine_id.into(),
                ..Default::default()
            }),
            body: Some(body),
            ..Default::default()
        }
    }

    fn scopes() -> Scopes {
        Scopes::new([
            (
                "soc".to_owned(),
                Scope {
                    hosts: Grant::All,
                    kinds: Grant::All,
                },
            ),
            (
                "ward-7".to_owned(),
                Scope {
                    hosts: Grant::Only(vec![
                        "ehr-a".into(),
                        "0123456789abcdef0123456789abcdef".into(),
                    ]),
                    kinds: Grant::Only(vec!["fileOpen".into(), "alert".into()]),
                },
            ),
        ])
    }

    #[test]
    fn a_scoped_subscriber_gets_only_its_hosts_and_kinds() {
        let scope = scopes()
            .check("ward-7", &v1::EventFilter::default())
            .unwrap();
        let open = v1::event::Body::FileOpen(Default::default());
        let exec = v1::event::Body::Exec(Default::default());
        assert!(scope.allows("ehr-a", &event("ehr-a", "", open.clone())));
        assert!(!scope.allows("ehr-a", &event("ehr-a", "", exec)));
        assert!(!scope.allows("ehr-b", &event("ehr-b", "", open.clone())));
        assert!(scope.allows(
            "ehr-c",
            &event("ehr-c", "0123456789abcdef0123456789abcdef", open)
        ));
        let all = scopes().check("soc", &v1::EventFilter::default()).unwrap();
        assert!(all.allows(
            "_collector",
            &event(
                "_collector",
                "",
                v1::event::Body::Subscription(Default::default())
            )
        ));
    }

    #[test]
    fn asking_for_more_is_refused_naming_what() {
        let s = scopes();
        let err = s
            .check(
                "ward-7",
                &v1::EventFilter {
                    hosts: vec!["EHR-A".into(), "ehr-b".into(), "ehr-c".into()],
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "subscriber \"ward-7\" is not granted hosts ehr-b, ehr-c"
        );
        let err = s
            .check(
                "ward-7",
                &v1::EventFilter {
                    kinds: vec!["file_open".into(), "exec".into()],
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "subscriber \"ward-7\" is not granted event kinds exec"
        );
        assert!(matches!(
            s.check("nobody", &v1::EventFilter::default()),
            Err(ScopeError::Unscoped { .. })
        ));
    }
}
