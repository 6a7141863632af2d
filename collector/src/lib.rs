//! phiguard collector: receives agents' events over mutual TLS 1.3 (the agent's identity is
//! its client certificate), stores them exactly once per (agent, seq) in hash-chained,
//! fsync'd segments, signs checkpoints of every chain, and streams stored and live events to
//! subscribers.
//!
//! One module per job: [`config`] (collector.toml), [`tls`] and [`identity`] (mutual TLS and
//! who is calling), [`revocation`] and [`crl`] (revoked certificates), [`liveness`] (silent and returning agents), [`tamper`] (agents whose
//! kernel state was changed behind their back), [`breakglass`] (an alert for each break-glass
//! grant), [`alert`] (the collector's own events), [`server`] (the gRPC services), [`store`] and [`chain`] (segments, hashes,
//! dedup, retention), [`fence`] (one fleet store writer at a time, enforced at each append), [`checkpoint`] (signed chain heads), [`stream`] (fan-out with filters),
//! [`scope`] and [`access`] (who may see what), [`audit`] (every subscription in the trail),
//! [`verify`] (chain and checkpoint checks), [`metrics`] (the Prometheus endpoint), [`notify`] (readiness, status and watchdog for systemd) and
//! [`tail`] (the subscriber client).

pub mod access;
pub mod alert;
pub mod audit;
pub mod breakglass;
pub mod cef;
pub mod chain;
pub mod checkpoint;
pub mod config;
pub mod crl;
pub mod export;
pub mod faults;
pub mod fence;
pub mod health;
pub mod identity;
pub mod jetstream;
pub mod liveness;
pub mod metrics;
pub mod notify;
pub mod ocsf;
pub mod revocation;
pub mod scope;
pub mod server;
pub mod store;
pub mod stream;
pub mod tail;
pub mod tamper;
pub mod tls;
pub mod verify;
pub mod window;
