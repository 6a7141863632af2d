//! phiguard host agent: loads the kernel programs, decodes and enriches their events, and
//! writes them to the configured sinks.

pub mod agent;
pub mod cli;
pub mod config;
pub mod db;
pub mod enrich;
pub mod event;
pub mod fanotify;
pub mod kernel;
pub mod link;
pub mod metrics;
pub mod paths;
pub mod policy;
pub mod process;
pub mod reload;
pub mod sink;
pub mod status;
pub mod tls;
pub mod watch;
