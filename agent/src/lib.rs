//! phiguard host agent: loads the kernel programs, decodes and enriches their events, and
//! writes them to the configured sinks.
//!
//! One module per job, in the order a record meets them: [`kernel`] (start-up checks, BTF
//! offsets, the program registry, loading and attaching, the integrity check, the ring-buffer
//! reader), [`event`] (ring-buffer bytes decoded, once and completely, into checked records
//! with typed fields: text, file identities, addresses; the [`fanotify`] layer builds the
//! same records), [`enrich`] (process, file, network and database context added to them, with [`process`] the process table and [`db`] the
//! wire-protocol decoders and sessions), [`agent`] (start-up and the event loop; its
//! `pipeline` takes each record through decode and enrichment to the sinks), [`sink`] (JSON
//! lines, the spool) and [`link`] (the collector link: the spool, the publisher,
//! mutual TLS and the link's state). Around them: [`config`] (agent.toml), [`cli`] (flags),
//! [`policy`] (parse, validate, compile, which layer enforces what, reload), [`watch`] (what
//! is watched), [`paths`] (path arithmetic and file identities), [`breakglass`] (time-limited
//! emergency exceptions), [`metrics`] (Prometheus) and [`status`] (`phiguard status`).

pub mod agent;
pub mod breakglass;
pub mod cli;
pub mod config;
pub mod db;
pub mod enrich;
pub mod event;
pub mod fanotify;
pub mod fdstore;
pub mod kernel;
pub mod link;
pub mod metrics;
pub mod paths;
pub mod policy;
pub mod process;
pub mod reload;
pub mod sink;
pub mod status;
pub mod watch;
