//! The link to the collector (`[collector]`): the durable spool every event is written to
//! first ([`spool`], also a sink), the publisher that streams it to the collector over gRPC and
//! mutual TLS 1.3 and advances on its acknowledgements ([`publish`], [`tls`]), and what the
//! agent knows about the link for its metrics, status and heartbeat ([`state`]). Its settings
//! are in `config::collector`.

pub mod publish;
pub mod spool;
pub mod state;
pub mod tls;

pub use self::state::{Link, LinkState};
