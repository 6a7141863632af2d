//! What the phiguard agent, collector and development PKI share in user space: the rule for
//! identities ([`identity`]), where a configuration error is ([`location`]), certificates and
//! keys from PEM files ([`pem`]) and the mutual-TLS gRPC client both the agent's publisher and
//! the collector's subscribers use ([`tls`]).
//!
//! `pem` and `tls` need the `net` feature (on by default); the development PKI leaves it off
//! and so builds without the TLS stack.

pub mod identity;
pub mod location;
#[cfg(feature = "net")]
pub mod pem;
#[cfg(feature = "net")]
pub mod tls;
