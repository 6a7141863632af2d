//! What the phiguard agent, collector and development PKI share in user space: the rule for
//! identities ([`identity`]), a configuration file's error ([`config`]) and where it is
//! ([`location`]), certificates and keys from PEM files ([`pem`]), and mutual TLS 1.3: its
//! error type for both sides and the gRPC client both the agent's publisher and the
//! collector's subscribers use ([`tls`]); the Prometheus endpoint both serve
//! ([`metrics_http`]).
//!
//! `pem`, `tls` and `metrics_http` need the `net` feature (on by default); the development PKI leaves it off
//! and so builds without the TLS stack.

pub mod config;
pub mod identity;
pub mod location;
#[cfg(feature = "net")]
pub mod metrics_http;
#[cfg(feature = "net")]
pub mod pem;
#[cfg(feature = "net")]
pub mod tls;
