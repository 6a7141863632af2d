//! The collector's configuration (`collector.toml`): parsed strictly (unknown fields are
//! errors), validated into plain values, with every error naming the file, line, column and
//! field. Relative paths are taken from the configuration file's directory.

use std::{
    collections::BTreeMap,
    fmt, fs,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

pub use phiguard_support::location::Location;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    audit::AUDIT_CHAIN,
    checkpoint::{Cadence, ExportConfig},
    identity,
    jetstream::{self as js, JetStreamConfig},
    revocation::{DenyList, Entry},
    scope::{Grant, Scope, Scopes, ALL},
    store::StoreConfig,
    stream::canonical_kind,
    tls::TlsFiles,
};

/// Largest gRPC message accepted when the file does not say (4 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most connections in their TLS handshake at once when the file does not say.
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
/// Upper bound for `max_message_bytes` (64 MiB).
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 64 * 1024 * 1024;

pub use phiguard_support::config::ConfigError;

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// CA, certificate and key.
    pub tls: TlsFiles,
    /// Identities allowed to call Subscribe.
    pub subscribers: Vec<String>,
    /// Largest gRPC message (one batch) accepted.
    pub max_message_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Most authenticated connections at once.
    pub max_connections: usize,
    /// Most connections in their TLS handshake (unauthenticated) at once.
    pub max_handshakes: usize,
    /// Handshakes must finish within this.
    pub handshake_timeout: Duration,
    /// Revoked certificates.
    pub revoked: DenyList,
    /// The CA's revocation lists (PEM), if any.
    pub crl: Option<PathBuf>,
}

/// `[checkpoint]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// The ed25519 signing key (created when missing); outside the store directory, mode
    /// 0600, owned by the collector's user (checked at start).
    pub key: PathBuf,
    /// The public key `verify` trusts (hex); None: the one derived from `key`.
    pub public_key: Option<String>,
    /// Export targets.
    pub export: ExportConfig,
    /// Cadence.
    pub cadence: Cadence,
}

/// Default silence window: three of the agents' default heartbeat intervals (30 s).
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(90);

/// `[liveness]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivenessConfig {
    /// An agent that sends nothing (no heartbeat, no event) for longer than this is reported
    /// silent.
    pub silent_after: Duration,
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Loopback address of the Prometheus endpoint (`GET /metrics`); None: off.
    pub listen: Option<SocketAddr>,
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[checkpoint]`.
    pub checkpoint: CheckpointConfig,
    /// `[liveness]`.
    pub liveness: LivenessConfig,
    /// `[scope.NAME]`: what each subscriber may see.
    pub scopes: Scopes,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[export.NAME]`: SIEM exports (none by default).
    pub exports: Vec<crate::export::ExportConfig>,
    /// `[jetstream]`: the fleet layout (None: this collector stores what it receives).
    pub jetstream: Option<JetStreamConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    store: RawStore,
    #[serde(default)]
    checkpoint: RawCheckpoint,
    #[serde(default)]
    liveness: RawLiveness,
    #[serde(default)]
    scope: BTreeMap<String, Spanned<RawScope>>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    export: BTreeMap<String, Spanned<RawExport>>,
    jetstream: Option<Spanned<RawJetStream>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJetStream {
    servers: Spanned<Vec<Spanned<String>>>,
    stream: Option<Spanned<String>>,
    subject_prefix: Option<Spanned<String>>,
    replicas: Option<Spanned<usize>>,
    max_age_days: Option<Spanned<u64>>,
    duplicate_window_secs: Option<Spanned<u64>>,
    #[serde(default)]
    store_writer: bool,
    writer_lease_secs: Option<Spanned<u64>>,
    consumer: Option<Spanned<String>>,
    publish_timeout_ms: Option<Spanned<u64>>,
    ca: Option<Spanned<PathBuf>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    credentials: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    #[serde(default = "default_format")]
    format: Spanned<String>,
    target: Spanned<String>,
    position: Option<Spanned<PathBuf>>,
    path: Option<Spanned<PathBuf>>,
    max_bytes: Option<Spanned<u64>>,
    keep: Option<Spanned<u32>>,
    address: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    ca: Option<Spanned<PathBuf>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    app_name: Option<Spanned<String>>,
}

fn default_format() -> Spanned<String> {
    Spanned::new(0..0, "ocsf".to_owned())
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    hosts: Spanned<Vec<Spanned<String>>>,
    kinds: Spanned<Vec<Spanned<String>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLiveness {
    silent_after_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: Spanned<String>,
    ca: Spanned<PathBuf>,
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    #[serde(default)]
    subscribers: Vec<Spanned<String>>,
    max_message_bytes: Option<Spanned<usize>>,
    max_batch_events: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    max_handshakes: Option<Spanned<usize>>,
    handshake_timeout_secs: Option<Spanned<u64>>,
    #[serde(default)]
    revoked: Vec<Spanned<String>>,
    crl: Option<Spanned<PathBuf>>,
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:7443".to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    dir: Spanned<PathBuf>,
    segment_max_bytes: Option<Spanned<u64>>,
    segment_max_age_secs: Option<Spanned<u64>>,
    retention_days: Option<Spanned<u64>>,
    retention_max_bytes: Option<Spanned<u64>>,
    max_seq_jump: Option<Spanned<u64>>,
    max_new_instances_per_hour: Option<Spanned<u64>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    key: Option<Spanned<PathBuf>>,
    public_key: Option<Spanned<String>>,
    file: Option<Spanned<PathBuf>>,
    export_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    syslog: bool,
    every_records: Option<Spanned<u64>>,
    every_secs: Option<Spanned<u64>>,
}

struct Ctx<'a> {
    origin: &'a Path,
    text: &'a str,
    base: PathBuf,
}

impl Ctx<'_> {
    fn invalid(&self, span: Range<usize>, field: &'static str, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: Location::in_text(self.origin, self.text, Some(span)),
            field,
            message,
        }
    }

    fn path(&self, value: &Spanned<PathBuf>, field: &'static str) -> Result<PathBuf, ConfigError> {
        let p = value.get_ref();
        if p.as_os_str().is_empty() {
            return Err(self.invalid(value.span(), field, "empty path".into()));
        }
        Ok(if p.is_absolute() {
            p.clone()
        } else {
            self.base.join(p)
        })
    }

    fn range<T: Copy + PartialOrd + fmt::Display>(
        &self,
        value: Option<&Spanned<T>>,
        field: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let v = *value.get_ref();
        if v < min || v > max {
            return Err(self.invalid(value.span(), field, format!("{v} is outside {min}..={max}")));
        }
        Ok(v)
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and validates `text`, reporting errors against `origin` and resolving relative
    /// paths against `origin`'s directory.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            at: Location::in_text(origin, text, e.span()),
            message: e.message().trim().to_owned(),
        })?;
        let base = origin
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let base = std::path::absolute(&base).unwrap_or(base);
        let cx = Ctx { origin, text, base };
        let s = &raw.server;
        let listen = s.listen.get_ref().parse::<SocketAddr>().map_err(|e| {
            cx.invalid(
                s.listen.span(),
                "server.listen",
                format!("{:?}: {e} (host:port)", s.listen.get_ref()),
            )
        })?;
        let mut subscribers = Vec::new();
        for name in &s.subscribers {
            if !identity::valid_identity(name.get_ref()) {
                return Err(cx.invalid(
                    name.span(),
                    "server.subscribers",
                    format!("{:?} is not a valid identity", name.get_ref()),
                ));
            }
            if name.get_ref().eq_ignore_ascii_case(AUDIT_CHAIN) {
                return Err(cx.invalid(
                    name.span(),
                    "server.subscribers",
                    format!("{AUDIT_CHAIN:?} is the collector's own audit chain"),
                ));
            }
            subscribers.push(name.get_ref().to_ascii_lowercase());
        }
        let mut revoked = Vec::new();
        for entry in &s.revoked {
            revoked.push(
                Entry::parse(entry.get_ref())
                    .map_err(|message| cx.invalid(entry.span(), "server.revoked", message))?,
            );
        }
        let server = ServerConfig {
            revoked: DenyList::new(revoked),
            crl: s
                .crl
                .as_ref()
                .map(|crl| cx.path(crl, "server.crl"))
                .transpose()?,
            listen,
            tls: TlsFiles {
                ca: cx.path(&s.ca, "server.ca")?,
                cert: cx.path(&s.cert, "server.cert")?,
                key: cx.path(&s.key, "server.key")?,
            },
            subscribers,
            max_message_bytes: cx.range(
                s.max_message_bytes.as_ref(),
                "server.max_message_bytes",
                DEFAULT_MAX_MESSAGE_BYTES,
                1024,
                MAX_MESSAGE_BYTES_LIMIT,
            )?,
            max_batch_events: cx.range(
                s.max_batch_events.as_ref(),
                "server.max_batch_events",
                4096,
                1,
                65_536,
            )?,
            max_connections: cx.range(
                s.max_connections.as_ref(),
                "server.max_connections",
                1024,
                1,
                65_536,
            )?,
            max_handshakes: cx.range(
                s.max_handshakes.as_ref(),
                "server.max_handshakes",
                DEFAULT_MAX_HANDSHAKES,
                1,
                65_536,
            )?,
            handshake_timeout: Duration::from_secs(cx.range(
                s.handshake_timeout_secs.as_ref(),
                "server.handshake_timeout_secs",
                10,
                1,
                300,
            )?),
        };
        let st = &raw.store;
        let dir = cx.path(&st.dir, "store.dir")?;
        let defaults = StoreConfig::new(dir.clone());
        let retention_days = cx.range(
            st.retention_days.as_ref(),
            "store.retention_days",
            defaults.retention_max_age.as_secs() / 86_400,
            1,
            36_500,
        )?;
        let retention_max_bytes = cx.range(
            st.retention_max_bytes.as_ref(),
            "store.retention_max_bytes",
            0,
            0,
            u64::MAX,
        )?;
        let store = StoreConfig {
            dir: dir.clone(),
            segment_max_bytes: cx.range(
                st.segment_max_bytes.as_ref(),
                "store.segment_max_bytes",
                defaults.segment_max_bytes,
                4096,
                1 << 34,
            )?,
            segment_max_age: Duration::from_secs(cx.range(
                st.segment_max_age_secs.as_ref(),
                "store.segment_max_age_secs",
                defaults.segment_max_age.as_secs(),
                1,
                366 * 86_400,
            )?),
            retention_max_age: Duration::from_secs(retention_days * 86_400),
            retention_max_bytes: (retention_max_bytes > 0).then_some(retention_max_bytes),
            max_seq_jump: cx.range(
                st.max_seq_jump.as_ref(),
                "store.max_seq_jump",
                defaults.max_seq_jump,
                1,
                u64::MAX / 2,
            )?,
            max_new_instances_per_hour: cx.range(
                st.max_new_instances_per_hour.as_ref(),
                "store.max_new_instances_per_hour",
                u64::from(defaults.max_new_instances_per_hour),
                1,
                1000,
            )? as u32,
        };
        let c = &raw.checkpoint;
        let public_key = match &c.public_key {
            Some(hex_key) => {
                crate::checkpoint::parse_public_key(hex_key.get_ref()).map_err(|e| {
                    cx.invalid(hex_key.span(), "checkpoint.public_key", e.to_string())
                })?;
                Some(hex_key.get_ref().trim().to_owned())
            }
            None => None,
        };
        let checkpoint = CheckpointConfig {
            key: match &c.key {
                Some(key) => cx.path(key, "checkpoint.key")?,
                None => PathBuf::from(crate::checkpoint::DEFAULT_KEY),
            },
            public_key,
            export: ExportConfig {
                file: Some(match &c.file {
                    Some(file) => cx.path(file, "checkpoint.file")?,
                    None => dir.join("checkpoints.jsonl"),
                }),
                syslog: c.syslog,
                dir: c
                    .export_dir
                    .as_ref()
                    .map(|d| cx.path(d, "checkpoint.export_dir"))
                    .transpose()?,
            },
            cadence: Cadence {
                every_records: cx.range(
                    c.every_records.as_ref(),
                    "checkpoint.every_records",
                    10_000,
                    1,
                    u64::MAX,
                )?,
                every: Duration::from_secs(cx.range(
                    c.every_secs.as_ref(),
                    "checkpoint.every_secs",
                    60,
                    1,
                    86_400,
                )?),
            },
        };
        let liveness = LivenessConfig {
            silent_after: Duration::from_millis(cx.range(
                raw.liveness.silent_after_ms.as_ref(),
                "liveness.silent_after_ms",
                DEFAULT_SILENT_AFTER.as_millis() as u64,
                200,
                86_400_000,
            )?),
        };
        let scopes = cx.scopes(&raw.scope, &server.subscribers)?;
        let metrics = MetricsConfig {
            listen: match &raw.metrics.listen {
                Some(listen) => {
                    let addr = listen.get_ref().parse::<SocketAddr>().map_err(|e| {
                        cx.invalid(
                            listen.span(),
                            "metrics.listen",
                            format!("{:?}: {e} (host:port)", listen.get_ref()),
                        )
                    })?;
                    if !addr.ip().is_loopback() {
                        return Err(cx.invalid(
                            listen.span(),
                            "metrics.listen",
                            format!("{addr} is not a loopback address: the endpoint is plain HTTP without authentication, so it only listens on 127.0.0.1 or ::1"),
                        ));
                    }
                    Some(addr)
                }
                None => None,
            },
        };
        let exports = cx.exports(&raw.export, &dir)?;
        let jetstream = raw
            .jetstream
            .as_ref()
            .map(|j| cx.jetstream(j))
            .transpose()?;
        Ok(Config {
            jetstream,
            server,
            store,
            checkpoint,
            liveness,
            scopes,
            metrics,
            exports,
        })
    }
}

impl Ctx<'_> {
    /// `[jetstream]`.
    fn jetstream(&self, raw: &Spanned<RawJetStream>) -> Result<JetStreamConfig, ConfigError> {
        let j = raw.get_ref();
        if j.servers.get_ref().is_empty() {
            return Err(self.invalid(
                j.servers.span(),
                "jetstream.servers",
                "no servers: name at least one NATS server (nats://host:port)".into(),
            ));
        }
        let mut servers = Vec::new();
        for server in j.servers.get_ref() {
            // Said without the value: it may hold a password.
            if server.get_ref().contains('@') {
                return Err(self.invalid(
                    server.span(),
                    "jetstream.servers",
                    "a server URL must not carry a user name or password (URLs are logged): use `credentials`".into(),
                ));
            }
            if !js::valid_server(server.get_ref()) {
                return Err(self.invalid(
                    server.span(),
                    "jetstream.servers",
                    format!(
                        "{:?} is not a NATS server (nats://host:port, tls://host:port or host:port)",
                        server.get_ref()
                    ),
                ));
            }
            servers.push(server.get_ref().clone());
        }
        let name = |value: &Option<Spanned<String>>, field: &'static str, default: &str| match value
        {
            None => Ok(default.to_owned()),
            Some(v) if js::valid_name(v.get_ref()) => Ok(v.get_ref().clone()),
            Some(v) => Err(self.invalid(
                v.span(),
                field,
                format!(
                    "{:?}: letters, digits, '-' and '_' only (at most 64)",
                    v.get_ref()
                ),
            )),
        };
        let subject_prefix = match &j.subject_prefix {
            None => js::DEFAULT_SUBJECT_PREFIX.to_owned(),
            Some(v) if js::valid_subject_prefix(v.get_ref()) => v.get_ref().clone(),
            Some(v) => {
                return Err(self.invalid(
                    v.span(),
                    "jetstream.subject_prefix",
                    format!(
                        "{:?}: dot-separated tokens of letters, digits, '-' and '_', no wildcards",
                        v.get_ref()
                    ),
                ))
            }
        };
        let client_cert = match (&j.cert, &j.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                self.path(cert, "jetstream.cert")?,
                self.path(key, "jetstream.key")?,
            )),
            (Some(cert), None) => {
                return Err(self.invalid(
                    cert.span(),
                    "jetstream.cert",
                    "a client certificate needs its key (jetstream.key)".into(),
                ))
            }
            (None, Some(key)) => {
                return Err(self.invalid(
                    key.span(),
                    "jetstream.key",
                    "a key needs its client certificate (jetstream.cert)".into(),
                ))
            }
        };
        if client_cert.is_some() && j.ca.is_none() {
            return Err(self.invalid(
                raw.span(),
                "jetstream.ca",
                "a client certificate is only used over TLS: set jetstream.ca too".into(),
            ));
        }
        Ok(JetStreamConfig {
            servers,
            stream: name(&j.stream, "jetstream.stream", js::DEFAULT_STREAM)?,
            subject_prefix,
            replicas: self.range(j.replicas.as_ref(), "jetstream.replicas", 3, 1, 5)?,
            max_age: Duration::from_secs(
                self.range(
                    j.max_age_days.as_ref(),
                    "jetstream.max_age_days",
                    7,
                    1,
                    3650,
                )? * 86_400,
            ),
            duplicate_window: Duration::from_secs(self.range(
                j.duplicate_window_secs.as_ref(),
                "jetstream.duplicate_window_secs",
                600,
                1,
                86_400,
            )?),
            store_writer: j.store_writer,
            writer_lease: Duration::from_secs(self.range(
                j.writer_lease_secs.as_ref(),
                "jetstream.writer_lease_secs",
                10,
                2,
                300,
            )?),
            consumer: name(&j.consumer, "jetstream.consumer", js::DEFAULT_CONSUMER)?,
            publish_timeout: Duration::from_millis(self.range(
                j.publish_timeout_ms.as_ref(),
                "jetstream.publish_timeout_ms",
                5000,
                100,
                120_000,
            )?),
            ca: j
                .ca
                .as_ref()
                .map(|p| self.path(p, "jetstream.ca"))
                .transpose()?,
            client_cert,
            credentials: j
                .credentials
                .as_ref()
                .map(|p| self.path(p, "jetstream.credentials"))
                .transpose()?,
        })
    }

    /// `[export.NAME]` tables.
    fn exports(
        &self,
        raw: &BTreeMap<String, Spanned<RawExport>>,
        store_dir: &Path,
    ) -> Result<Vec<crate::export::ExportConfig>, ConfigError> {
        use crate::export::{ExportConfig, Target};
        let mut out = Vec::new();
        for (name, table) in raw {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(self.invalid(
                    table.span(),
                    "export",
                    format!("[export.{name}]: a name is letters, digits, - and _"),
                ));
            }
            let t = table.get_ref();
            let format = match t.format.get_ref().as_str() {
                "ocsf" => crate::export::Format::Ocsf,
                "cef" => crate::export::Format::Cef,
                other => {
                    return Err(self.invalid(
                        t.format.span(),
                        "export.format",
                        format!("{other:?}: one of \"ocsf\", \"cef\""),
                    ))
                }
            };
            let file_only = [
                ("export.path", t.path.as_ref().map(Spanned::span)),
                ("export.max_bytes", t.max_bytes.as_ref().map(Spanned::span)),
                ("export.keep", t.keep.as_ref().map(Spanned::span)),
            ];
            let syslog_only = [
                ("export.address", t.address.as_ref().map(Spanned::span)),
                (
                    "export.server_name",
                    t.server_name.as_ref().map(Spanned::span),
                ),
                ("export.ca", t.ca.as_ref().map(Spanned::span)),
                ("export.cert", t.cert.as_ref().map(Spanned::span)),
                ("export.key", t.key.as_ref().map(Spanned::span)),
                ("export.app_name", t.app_name.as_ref().map(Spanned::span)),
            ];
            let refuse = |fields: &[(&'static str, Option<Range<usize>>)], target: &str| {
                for (field, span) in fields {
                    if let Some(span) = span {
                        return Err(self.invalid(
                            span.clone(),
                            field,
                            format!("not a setting of target = \"{target}\""),
                        ));
                    }
                }
                Ok(())
            };
            let missing = |field: &'static str| {
                self.invalid(
                    t.target.span(),
                    field,
                    format!("[export.{name}] needs {field} for this target"),
                )
            };
            let target = match t.target.get_ref().as_str() {
                "file" => {
                    refuse(&syslog_only, "file")?;
                    Target::File {
                        path: self.path(
                            t.path.as_ref().ok_or_else(|| missing("export.path"))?,
                            "export.path",
                        )?,
                        max_bytes: self.range(
                            t.max_bytes.as_ref(),
                            "export.max_bytes",
                            64 << 20,
                            4096,
                            1 << 40,
                        )?,
                        keep: self.range(t.keep.as_ref(), "export.keep", 10, 0, 10_000)?,
                    }
                }
                "syslog" => {
                    refuse(&file_only, "syslog")?;
                    let address = t
                        .address
                        .as_ref()
                        .ok_or_else(|| missing("export.address"))?;
                    let (host, port) = address.get_ref().rsplit_once(':').unwrap_or(("", ""));
                    if host.is_empty() || port.parse::<u16>().is_err() {
                        return Err(self.invalid(
                            address.span(),
                            "export.address",
                            format!("{:?} is not host:port", address.get_ref()),
                        ));
                    }
                    Target::Syslog {
                        address: address.get_ref().clone(),
                        server_name: t.server_name.as_ref().map_or_else(
                            || crate::tls::host_of(address.get_ref()).to_owned(),
                            |s| s.get_ref().clone(),
                        ),
                        tls: TlsFiles {
                            ca: self.path(
                                t.ca.as_ref().ok_or_else(|| missing("export.ca"))?,
                                "export.ca",
                            )?,
                            cert: self.path(
                                t.cert.as_ref().ok_or_else(|| missing("export.cert"))?,
                                "export.cert",
                            )?,
                            key: self.path(
                                t.key.as_ref().ok_or_else(|| missing("export.key"))?,
                                "export.key",
                            )?,
                        },
                        app_name: t
                            .app_name
                            .as_ref()
                            .map_or_else(|| "phiguard".to_owned(), |a| a.get_ref().clone()),
                    }
                }
                other => {
                    return Err(self.invalid(
                        t.target.span(),
                        "export.target",
                        format!("{other:?}: one of \"file\", \"syslog\""),
                    ))
                }
            };
            let position = match &t.position {
                Some(p) => self.path(p, "export.position")?,
                None => store_dir.join(format!("export-{name}.position")),
            };
            // Two exports on one file would interleave, or move each other's positions.
            for other in &out {
                let ExportConfig {
                    name: other_name,
                    position: other_position,
                    target: other_target,
                    ..
                } = other;
                let same_file = matches!(
                    (&target, other_target),
                    (Target::File { path: a, .. }, Target::File { path: b, .. }) if a == b
                );
                if same_file || *other_position == position {
                    return Err(self.invalid(
                        table.span(),
                        "export",
                        format!(
                            "[export.{name}] writes the same {} as [export.{other_name}]",
                            if same_file { "file" } else { "positions file" }
                        ),
                    ));
                }
            }
            out.push(ExportConfig {
                name: name.clone(),
                format,
                position,
                target,
            });
        }
        Ok(out)
    }

    /// `[scope.NAME]` tables: each for a listed subscriber, each field given explicitly.
    fn scopes(
        &self,
        raw: &BTreeMap<String, Spanned<RawScope>>,
        subscribers: &[String],
    ) -> Result<Scopes, ConfigError> {
        let mut out = Vec::new();
        for (name, table) in raw {
            let identity = name.to_ascii_lowercase();
            if !subscribers.contains(&identity) {
                return Err(self.invalid(
                    table.span(),
                    "scope",
                    format!(
                        "[scope.{name}]: {name:?} is not listed in server.subscribers (a scope grants nothing to an identity that may not subscribe)"
                    ),
                ));
            }
            let t = table.get_ref();
            let hosts = self.grant(&t.hosts, "scope.hosts", |h| {
                identity::valid_identity(h)
                    .then(|| h.to_ascii_lowercase())
                    .ok_or_else(|| format!("{h:?} is neither an agent identity nor a machine id"))
            })?;
            let kinds = self.grant(&t.kinds, "scope.kinds", |k| {
                canonical_kind(k).map(str::to_owned).ok_or_else(|| {
                    format!(
                        "unknown kind {k:?} (one of {})",
                        crate::stream::KINDS.join(", ")
                    )
                })
            })?;
            out.push((identity, Scope { hosts, kinds }));
        }
        Ok(Scopes::new(out))
    }

    fn grant(
        &self,
        values: &Spanned<Vec<Spanned<String>>>,
        field: &'static str,
        parse: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Grant, ConfigError> {
        if values.get_ref().is_empty() {
            return Err(self.invalid(
                values.span(),
                field,
                format!("grants nothing: list what is granted, or [\"{ALL}\"] for all"),
            ));
        }
        if values.get_ref().iter().any(|v| v.get_ref() == ALL) {
            if values.get_ref().len() > 1 {
                return Err(self.invalid(
                    values.span(),
                    field,
                    format!("\"{ALL}\" grants all: it stands alone"),
                ));
            }
            return Ok(Grant::All);
        }
        let mut granted = Vec::new();
        for value in values.get_ref() {
            let parsed = parse(value.get_ref())
                .map_err(|message| self.invalid(value.span(), field, message))?;
            if !granted.contains(&parsed) {
                granted.push(parsed);
            }
        }
        Ok(Grant::Only(granted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[server]\nca = \"certs/ca.pem\"\ncert = \"certs/collector.pem\"\n\
                           key = \"certs/collector.key\"\n[store]\ndir = \"/var/lib/pgc\"\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/etc/phiguard/collector.toml"))
    }

    #[test]
    fn minimal_file_gets_defaults_and_resolved_paths() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(c.server.tls.ca, Path::new("/etc/phiguard/certs/ca.pem"));
        assert_eq!(c.store.retention_max_age.as_secs() / 86_400, 2192);
        assert_eq!(
            c.checkpoint.key,
            Path::new("/var/lib/phiguard-collector-key/checkpoint.key"),
            "the key's default is outside the store"
        );
        assert_eq!(c.checkpoint.export.dir, None);
        assert_eq!(c.metrics.listen, None);
        assert_eq!(
            c.checkpoint.export.file.as_deref(),
            Some(Path::new("/var/lib/pgc/checkpoints.jsonl"))
        );
        assert!(c.server.subscribers.is_empty());
        assert_eq!(c.liveness.silent_after, DEFAULT_SILENT_AFTER);
        assert_eq!(c.server.max_handshakes, DEFAULT_MAX_HANDSHAKES);
        assert_eq!(c.server.crl, None);
        let c = parse(&MINIMAL.replace("[server]\n", "[server]\ncrl = \"pki/crl.pem\"\n")).unwrap();
        assert_eq!(
            c.server.crl.as_deref(),
            Some(Path::new("/etc/phiguard/pki/crl.pem"))
        );
        let c = parse(&format!(
            "{MINIMAL}[checkpoint]\nexport_dir = \"/mnt/worm/pgc\"\n[metrics]\nlisten = \"127.0.0.1:9465\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.checkpoint.export.dir.as_deref(),
            Some(Path::new("/mnt/worm/pgc"))
        );
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9465".parse().unwrap()));
        let err = parse(&format!("{MINIMAL}[metrics]\nlisten = \"0.0.0.0:9465\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/phiguard/collector.toml:8:10: metrics.listen: 0.0.0.0:9465 is not a loopback address"),
            "{err}"
        );
        let c = parse(&format!("{MINIMAL}[liveness]\nsilent_after_ms = 1500\n")).unwrap();
        assert_eq!(c.liveness.silent_after, Duration::from_millis(1500));
    }

    #[test]
    fn errors_name_file_line_column_and_field() {
        let err = parse(&format!("{MINIMAL}colour = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/phiguard/collector.toml:7:1: unknown field `colour`"),
            "{err}"
        );
        let err = parse(&MINIMAL.replace("[server]\n", "[server]\nlisten = \"nowhere\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/phiguard/collector.toml:2:10: server.listen:"),
            "{err}"
        );
        let err = parse(&format!("{MINIMAL}[checkpoint]\nevery_secs = 0\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/phiguard/collector.toml:8:14: checkpoint.every_secs: 0 is outside 1..=86400"
        );
        let err = parse(&MINIMAL.replace("[server]\n", "[server]\nsubscribers = [\"../soc\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:16: server.subscribers:"), "{err}");
        let err = parse(&format!("{MINIMAL}[liveness]\nsilent_after_ms = 10\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/phiguard/collector.toml:8:19: liveness.silent_after_ms: 10 is outside 200..=86400000"
        );
        let err = parse(&MINIMAL.replace(
            "[server]\n",
            "[server]\nrevoked = [\"serial:01\", \"sha256:abcd\"]\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("/etc/phiguard/collector.toml:2:25: server.revoked: \"sha256:abcd\""),
            "{err}"
        );
        let err = parse("[server]\n").unwrap_err().to_string();
        assert!(err.contains("missing field"), "{err}");
    }

    #[test]
    fn no_jetstream_section_is_the_embedded_layout_and_its_errors_name_the_line() {
        assert_eq!(parse(MINIMAL).unwrap().jetstream, None);
        let c = parse(&format!(
            "{MINIMAL}[jetstream]\nservers = [\"nats://127.0.0.1:4222\", \"nats-2:4222\"]\nstore_writer = true\n"
        ))
        .unwrap();
        let j = c.jetstream.unwrap();
        assert_eq!(j.servers.len(), 2);
        assert_eq!(j.stream, "PHIGUARD");
        assert_eq!(j.subject_prefix, "phiguard.events");
        assert_eq!(j.replicas, 3);
        assert_eq!(j.duplicate_window, Duration::from_secs(600));
        assert!(j.store_writer);
        assert_eq!(j.consumer, "store-writer");
        assert_eq!(j.ca, None);
        let err = |extra: &str| {
            parse(&format!("{MINIMAL}[jetstream]\n{extra}"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("servers = []\n"),
            "/etc/phiguard/collector.toml:8:11: jetstream.servers: no servers: name at least one NATS server (nats://host:port)"
        );
        assert!(
            err("servers = [\"nats://a:1\", \"nowhere\"]\n").starts_with(
                "/etc/phiguard/collector.toml:8:26: jetstream.servers: \"nowhere\" is not a NATS server"
            ),
            "{}",
            err("servers = [\"nats://a:1\", \"nowhere\"]\n")
        );
        let with_password = err("servers = [\"tls://phiguard:s3cret@a:1\"]\n");
        assert_eq!(
            with_password,
            "/etc/phiguard/collector.toml:8:12: jetstream.servers: a server URL must not carry a user name or password (URLs are logged): use `credentials`"
        );
        assert!(!with_password.contains("s3cret"));
        assert_eq!(
            err("servers = [\"a:1\"]\nreplicas = 7\n"),
            "/etc/phiguard/collector.toml:9:12: jetstream.replicas: 7 is outside 1..=5"
        );
        assert!(err("servers = [\"a:1\"]\nstream = \"a.b\"\n")
            .starts_with("/etc/phiguard/collector.toml:9:10: jetstream.stream: \"a.b\": letters"));
        assert!(err("servers = [\"a:1\"]\nsubject_prefix = \"x.>\"\n")
            .starts_with("/etc/phiguard/collector.toml:9:18: jetstream.subject_prefix:"));
        assert!(err("servers = [\"a:1\"]\ncert = \"c.pem\"\n").starts_with(
            "/etc/phiguard/collector.toml:9:8: jetstream.cert: a client certificate needs its key"
        ));
        assert!(err("servers = [\"a:1\"]\nreplica = 3\n")
            .starts_with("/etc/phiguard/collector.toml:9:1: unknown field `replica`"));
    }

    #[test]
    fn scopes_are_explicit_and_errors_name_the_line() {
        let with = |scope: &str| {
            parse(&format!(
                "{}{scope}",
                MINIMAL.replace(
                    "[server]\n",
                    "[server]\nsubscribers = [\"soc\", \"ward-7\"]\n"
                )
            ))
        };
        let c = with(
            "[scope.soc]\nhosts = [\"*\"]\nkinds = [\"*\"]\n\
             [scope.ward-7]\nhosts = [\"EHR-A\", \"0123456789abcdef0123456789abcdef\"]\nkinds = [\"file_open\", \"alert\"]\n",
        )
        .unwrap();
        assert_eq!(c.scopes.get("soc").unwrap().hosts, Grant::All);
        let ward = c.scopes.get("ward-7").unwrap();
        assert_eq!(
            ward.hosts,
            Grant::Only(vec![
                "ehr-a".into(),
                "0123456789abcdef0123456789abcdef".into()
            ])
        );
        assert_eq!(
            ward.kinds,
            Grant::Only(vec!["fileOpen".into(), "alert".into()])
        );
        // A listed subscriber without a scope: valid, and it sees nothing.
        assert!(with("").unwrap().scopes.get("soc").is_none());
        let err = with("[scope.soc]\nhosts = [\"*\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `kinds`"), "{err}");
        let err = with("[scope.soc]\nhosts = [\"*\"]\nkinds = [\"exec\", \"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "/etc/phiguard/collector.toml:10:18: scope.kinds: unknown kind \"nope\""
            ),
            "{err}"
        );
        let err = with("[scope.soc]\nhosts = []\nkinds = [\"*\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":9:9: scope.hosts: grants nothing"), "{err}");
        let err = with("[scope.soc]\nhosts = [\"*\", \"ehr-a\"]\nkinds = [\"*\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":9:9: scope.hosts: \"*\" grants all"), "{err}");
        let err = with("[scope.mallory]\nhosts = [\"*\"]\nkinds = [\"*\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("scope: [scope.mallory]: \"mallory\" is not listed in server.subscribers"),
            "{err}"
        );
        let err =
            parse(&MINIMAL.replace("[server]\n", "[server]\nsubscribers = [\"_collector\"]\n"))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("server.subscribers: \"_collector\" is the collector's own audit chain"),
            "{err}"
        );
    }

    #[test]
    fn exports_are_validated_and_errors_name_the_line() {
        assert!(
            parse(MINIMAL).unwrap().exports.is_empty(),
            "no export by default"
        );
        let c = parse(&format!(
            "{MINIMAL}[export.siem]\ntarget = \"file\"\npath = \"ocsf/events.jsonl\"\nmax_bytes = 8192\n\
             [export.soc]\ntarget = \"syslog\"\naddress = \"siem.example:6514\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n"
        ))
        .unwrap();
        assert_eq!(c.exports.len(), 2);
        let siem = c.exports.iter().find(|e| e.name == "siem").unwrap();
        assert_eq!(
            siem.position,
            Path::new("/var/lib/pgc/export-siem.position")
        );
        assert_eq!(
            siem.target,
            crate::export::Target::File {
                path: "/etc/phiguard/ocsf/events.jsonl".into(),
                max_bytes: 8192,
                keep: 10
            }
        );
        let soc = c.exports.iter().find(|e| e.name == "soc").unwrap();
        assert!(
            matches!(&soc.target, crate::export::Target::Syslog { server_name, .. } if server_name == "siem.example")
        );
        let err = parse(&format!(
            "{MINIMAL}[export.a]\ntarget = \"file\"\npath = \"o.jsonl\"\n[export.b]\ntarget = \"file\"\npath = \"o.jsonl\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("export: [export.b] writes the same file as [export.a]"),
            "{err}"
        );
        let err = parse(&format!("{MINIMAL}[export.x]\ntarget = \"kafka\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/phiguard/collector.toml:8:10: export.target: \"kafka\""),
            "{err}"
        );
        let err = parse(&format!(
            "{MINIMAL}[export.x]\ntarget = \"file\"\npath = \"a\"\naddress = \"h:1\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/etc/phiguard/collector.toml:10:11: export.address: not a setting of target = \"file\""), "{err}");
        let err = parse(&format!("{MINIMAL}[export.x]\ntarget = \"file\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("export.path: [export.x] needs export.path"),
            "{err}"
        );
        let err = parse(&format!(
            "{MINIMAL}[export.x]\nformat = \"xml\"\ntarget = \"file\"\npath = \"a\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("/etc/phiguard/collector.toml:8:10: export.format:"),
            "{err}"
        );
        let err = parse(&format!(
            "{MINIMAL}[export.x]\ntarget = \"file\"\npath = \"a\"\nmax_bytes = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(":10:13: export.max_bytes: 1 is outside"),
            "{err}"
        );
    }

    #[test]
    fn repository_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("collector.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server.subscribers, ["soc"]);
        assert_eq!(c.scopes.get("soc").unwrap().hosts, Grant::All);
    }
}
