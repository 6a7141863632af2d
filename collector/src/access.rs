//! Who may subscribe, and to what: `[server] subscribers` and the `[scope.NAME]` tables,
//! together, as one value the collector swaps at a reload (SIGHUP). A subscription compares
//! the access it was granted under with the one in force, and ends when they differ.

use std::collections::BTreeSet;

use phiguard_proto::v1::SubscribeRequest;
use tonic::Status;
use tracing::warn;

use crate::{
    config::Config,
    scope::{Scope, Scopes},
    stream::Filter,
};

/// Who may subscribe, and to what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Identities allowed to call Subscribe.
    pub subscribers: BTreeSet<String>,
    /// What each may see.
    pub scopes: Scopes,
}

impl Access {
    /// The access `config` grants.
    pub fn from_config(config: &Config) -> Access {
        Access {
            subscribers: config.server.subscribers.iter().cloned().collect(),
            scopes: config.scopes.clone(),
        }
    }

    /// Checks a Subscribe call by `identity`: a listed subscriber, a valid filter, within
    /// its scope. Returns the filter to serve (limited to the scope) and the scope.
    pub fn admit(
        &self,
        identity: &str,
        request: &SubscribeRequest,
    ) -> Result<(Filter, Scope), Status> {
        if !self.subscribers.contains(identity) {
            return Err(Status::permission_denied(
                "this identity is not allowed to subscribe",
            ));
        }
        let wire = request.filter.clone().unwrap_or_default();
        let filter =
            Filter::from_proto(&wire).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let scope = self
            .scopes
            .check(identity, &wire)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        Ok((filter.within(scope.clone()), scope))
    }

    /// Whether a subscription of `identity` granted `scope` still stands under this access.
    pub fn still_grants(&self, identity: &str, scope: &Scope) -> bool {
        self.subscribers.contains(identity) && self.scopes.get(identity) == Some(scope)
    }
}

/// Logs every listed subscriber without a scope: it is refused until one is configured.
pub fn warn_unscoped(config: &Config) {
    for identity in &config.server.subscribers {
        if config.scopes.get(identity).is_none() {
            warn!(subscriber = %identity, "subscriber has no [scope.{identity}] in the configuration: its subscriptions are refused (hosts = [\"*\"], kinds = [\"*\"] grants everything)");
        }
    }
}
