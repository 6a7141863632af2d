//! What the phiguard agent and collector share in user space: where a configuration error
//! is ([`location`]), certificates and keys from PEM files ([`pem`]) and the mutual-TLS
//! gRPC client both the agent's publisher and the collector's subscribers use ([`tls`]).

pub mod location;
pub mod pem;
pub mod tls;
