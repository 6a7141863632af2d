//! `[collector]` in agent.toml: the link to a phiguard collector (off when the section is
//! absent). Relative paths are taken from the configuration file's directory. The settings
//! types of the spool and the publisher live here, so the configuration depends on no sink
//! (the sinks read their settings from it).

use std::{
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use phiguard_support::tls::TlsFiles;

/// Default spool directory.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/phiguard/spool";
/// Default spool size (256 MiB).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// How often the spool is fsync'd by default: an event is sent only once it is durable, so
/// this bounds what the fsync batching adds to its latency (at most this, half on average)
/// for at most 20 small fsyncs a second.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 50;
/// Default heartbeat interval (30 s).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// How the publisher talks to the collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// The collector, `host:port`: the first one tried.
    pub address: String,
    /// Further collectors of the same fleet (`[collector] failover`), tried in turn after
    /// `address` when a connection fails or breaks; the spool is resent to whichever answers.
    pub failover: Vec<String>,
    /// TLS server name to verify (default: the host part of `address`).
    pub server_name: Option<String>,
    /// CA, certificate and key.
    pub tls: TlsFiles,
    /// Most events per batch.
    pub batch_events: usize,
    /// About the most bytes per batch (keep below the collector's message limit).
    pub batch_bytes: usize,
    /// Most unacknowledged batches in flight.
    pub window: usize,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How often the TLS files are checked for changes.
    pub reload_check: Duration,
    /// Connection (TCP + TLS) timeout.
    pub connect_timeout: Duration,
}

impl PublisherConfig {
    /// Every collector address, `address` first.
    pub fn addresses(&self) -> Vec<&str> {
        std::iter::once(self.address.as_str())
            .chain(self.failover.iter().map(String::as_str))
            .collect()
    }

    /// Defaults for `address` with `tls`: batches of 512 events / 1 MiB, a window of 8,
    /// backoff from 0.2 s to 30 s, files checked every 5 s.
    pub fn new(address: String, tls: TlsFiles) -> PublisherConfig {
        PublisherConfig {
            address,
            failover: Vec::new(),
            server_name: None,
            tls,
            batch_events: 512,
            batch_bytes: 1024 * 1024,
            window: 8,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            reload_check: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What to drop when the spool is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Keep what is spooled; drop new events until there is room.
    #[default]
    KeepOldest,
    /// Drop the oldest unacknowledged segment to make room for new events.
    KeepNewest,
}

/// How the spool is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Where the segments live (created 0700).
    pub dir: PathBuf,
    /// Most bytes on disk.
    pub max_bytes: u64,
    /// What to drop when full.
    pub full: FullPolicy,
    /// fsync at most this often (batched).
    pub sync_interval: Duration,
}

/// The validated `[collector]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorConfig {
    /// How to reach the collector.
    pub publisher: PublisherConfig,
    /// The on-disk spool.
    pub spool: SpoolConfig,
    /// How often a heartbeat event is spooled for the collector.
    pub heartbeat: Duration,
}

/// `[collector]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCollector {
    address: Spanned<String>,
    #[serde(default)]
    failover: Vec<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    ca: Spanned<PathBuf>,
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    spool_dir: Option<Spanned<PathBuf>>,
    spool_max_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    full_policy: FullPolicy,
    batch_events: Option<Spanned<usize>>,
    sync_interval_ms: Option<Spanned<u64>>,
    heartbeat_interval_ms: Option<Spanned<u64>>,
}

impl RawCollector {
    /// Validates the section; `invalid(span, field, message)` builds a located error;
    /// `base` is the configuration file's directory.
    pub(super) fn validate<E>(
        self,
        base: &Path,
        invalid: impl Fn(Range<usize>, &'static str, String) -> E,
    ) -> Result<CollectorConfig, E> {
        let host_port = |value: &Spanned<String>, field: &'static str| {
            let address = value.get_ref().trim().to_owned();
            let port_ok = address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if port_ok {
                Ok(address)
            } else {
                Err(invalid(
                    value.span(),
                    field,
                    format!("{address:?} is not host:port"),
                ))
            }
        };
        let address = host_port(&self.address, "collector.address")?;
        let mut failover = Vec::new();
        for other in &self.failover {
            let other_address = host_port(other, "collector.failover")?;
            if other_address == address || failover.contains(&other_address) {
                return Err(invalid(
                    other.span(),
                    "collector.failover",
                    format!("{other_address:?} is listed twice"),
                ));
            }
            failover.push(other_address);
        }
        let path = |value: &Spanned<PathBuf>, field: &'static str| {
            let p = value.get_ref();
            if p.as_os_str().is_empty() {
                return Err(invalid(value.span(), field, "empty path".into()));
            }
            Ok(if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            })
        };
        let tls = TlsFiles {
            ca: path(&self.ca, "collector.ca")?,
            cert: path(&self.cert, "collector.cert")?,
            key: path(&self.key, "collector.key")?,
        };
        let spool_dir = match &self.spool_dir {
            Some(dir) => path(dir, "collector.spool_dir")?,
            None => PathBuf::from(DEFAULT_SPOOL_DIR),
        };
        let max_bytes = match &self.spool_max_bytes {
            Some(v) if *v.get_ref() < 64 * 1024 => {
                return Err(invalid(
                    v.span(),
                    "collector.spool_max_bytes",
                    format!("{} is less than 65536", v.get_ref()),
                ))
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_SPOOL_MAX_BYTES,
        };
        let batch_events = match &self.batch_events {
            Some(v) if !(1..=4096).contains(v.get_ref()) => {
                return Err(invalid(
                    v.span(),
                    "collector.batch_events",
                    format!("{} is outside 1..=4096", v.get_ref()),
                ))
            }
            Some(v) => *v.get_ref(),
            None => 512,
        };
        let sync_ms = match &self.sync_interval_ms {
            Some(v) if *v.get_ref() > 10_000 => {
                return Err(invalid(
                    v.span(),
                    "collector.sync_interval_ms",
                    format!("{} is more than 10000", v.get_ref()),
                ))
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_SYNC_INTERVAL_MS,
        };
        let heartbeat_ms = match &self.heartbeat_interval_ms {
            Some(v) if !(100..=3_600_000).contains(v.get_ref()) => {
                return Err(invalid(
                    v.span(),
                    "collector.heartbeat_interval_ms",
                    format!("{} is outside 100..=3600000", v.get_ref()),
                ))
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_HEARTBEAT.as_millis() as u64,
        };
        let mut publisher = PublisherConfig::new(address, tls);
        publisher.failover = failover;
        publisher.server_name = self.server_name.map(Spanned::into_inner);
        publisher.batch_events = batch_events;
        Ok(CollectorConfig {
            publisher,
            spool: SpoolConfig {
                dir: spool_dir,
                max_bytes,
                full: self.full_policy,
                sync_interval: Duration::from_millis(sync_ms),
            },
            heartbeat: Duration::from_millis(heartbeat_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError};
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/etc/phiguard/agent.toml"))
    }

    const LINK: &str = "[collector]\naddress = \"collector.example:7443\"\nca = \"certs/ca.pem\"\n\
                        cert = \"certs/agent.pem\"\nkey = \"/etc/phiguard/agent.key\"\n";

    #[test]
    fn off_by_default_and_defaults_when_on() {
        assert_eq!(parse("").unwrap().collector, None);
        let c = parse(LINK).unwrap().collector.unwrap();
        assert_eq!(c.publisher.address, "collector.example:7443");
        assert_eq!(c.publisher.tls.ca, Path::new("/etc/phiguard/certs/ca.pem"));
        assert_eq!(c.publisher.tls.key, Path::new("/etc/phiguard/agent.key"));
        assert_eq!(c.spool.dir, Path::new(DEFAULT_SPOOL_DIR));
        assert_eq!(c.spool.max_bytes, DEFAULT_SPOOL_MAX_BYTES);
        assert_eq!(c.spool.full, FullPolicy::KeepOldest);
        assert_eq!(c.heartbeat, DEFAULT_HEARTBEAT);
        let c = parse(&format!(
            "{LINK}full_policy = \"keep_newest\"\nspool_dir = \"spool\"\n"
        ))
        .unwrap()
        .collector
        .unwrap();
        assert_eq!(c.spool.full, FullPolicy::KeepNewest);
        assert_eq!(c.spool.dir, Path::new("/etc/phiguard/spool"));
    }

    #[test]
    fn failover_lists_further_collectors_checked_like_the_address() {
        let c = parse(&format!(
            "{LINK}failover = [\"collector-2.example:7443\", \"10.0.0.3:7443\"]\n"
        ))
        .unwrap()
        .collector
        .unwrap();
        assert_eq!(
            c.publisher.addresses(),
            [
                "collector.example:7443",
                "collector-2.example:7443",
                "10.0.0.3:7443"
            ]
        );
        assert_eq!(
            parse(&format!("{LINK}failover = [\"c2:7443\", \"c3\"]\n"))
                .unwrap_err()
                .to_string(),
            "/etc/phiguard/agent.toml:6:24: collector.failover: \"c3\" is not host:port"
        );
        assert_eq!(
            parse(&format!("{LINK}failover = [\"collector.example:7443\"]\n"))
                .unwrap_err()
                .to_string(),
            "/etc/phiguard/agent.toml:6:13: collector.failover: \"collector.example:7443\" is listed twice"
        );
    }

    #[test]
    fn errors_are_located() {
        let err = parse(&LINK.replace("collector.example:7443", "nohost"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/phiguard/agent.toml:2:11: collector.address: \"nohost\" is not host:port"
        );
        let err = parse(&format!("{LINK}full_policy = \"keep_all\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/phiguard/agent.toml:6:15:"), "{err}");
        let err = parse(&format!("{LINK}spool_max_bytes = 10\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":6:19: collector.spool_max_bytes"), "{err}");
        let err = parse(&format!("{LINK}heartbeat_interval_ms = 5\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/phiguard/agent.toml:6:25: collector.heartbeat_interval_ms: 5 is outside 100..=3600000"
        );
        let err = parse(&format!("{LINK}adress = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":6:1: unknown field `adress`"), "{err}");
    }
}
