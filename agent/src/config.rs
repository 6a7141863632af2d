//! The agent's configuration (`agent.toml`): parsed strictly (unknown fields are errors),
//! validated into plain values, with every error naming the file, line, column and field.

use std::{
    collections::BTreeSet,
    fs,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use phiguard_common::limits::{DB_TEXT_CAPTURE_DEFAULT, DB_TEXT_CAPTURE_MAX};

use crate::paths;

pub mod collector;

pub use collector::CollectorConfig;
pub use phiguard_support::location::Location;

/// Most ancestors an event can carry.
pub const MAX_ANCESTRY_DEPTH: u8 = 16;

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// What is watched.
    pub watch: WatchConfig,
    /// Where events go.
    pub output: OutputConfig,
    /// How events are enriched.
    pub enrich: EnrichConfig,
    /// The agent itself.
    pub agent: AgentConfig,
    /// Allow-list policies.
    pub policy: PolicyConfig,
    /// The link to a collector (`[collector]`; None: off).
    pub collector: Option<CollectorConfig>,
    /// Database session audit.
    pub database: DatabaseConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
}

/// `[database]`: database endpoints whose sessions are audited statement by statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// TCP ports of database servers (client connections to them, and connections local
    /// listeners accept on them).
    pub ports: Vec<u16>,
    /// Unix sockets of database servers (absolute paths, such as
    /// `/var/run/postgresql/.s.PGSQL.5432`); resolved to (device, inode) at start.
    pub unix_sockets: Vec<PathBuf>,
    /// Record statements with their literals (`false`: literals become `?`).
    pub full_statements: bool,
    /// Statement text the kernel captures per PostgreSQL statement, in KiB
    /// (`[database] statement_capture_kib`, 1 to 64; 0 in a default value means 4): longer
    /// text is cut there and the statement marked truncated.
    pub statement_capture_kib: u32,
    /// Extra patterns for local identifiers (MRN formats…): every match in a process's argv
    /// or a redacted statement becomes `***` (`[database] redact_patterns`, regular
    /// expressions in the `regex` crate's syntax).
    pub redact_patterns: Vec<RedactPattern>,
}

/// A validated `redact_patterns` entry.
#[derive(Clone, Debug)]
pub struct RedactPattern(pub regex::Regex);

impl PartialEq for RedactPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for RedactPattern {}

impl DatabaseConfig {
    /// The statement capture bound in bytes.
    pub fn statement_capture_bytes(&self) -> u32 {
        match self.statement_capture_kib {
            0 => DB_TEXT_CAPTURE_DEFAULT,
            kib => kib * 1024,
        }
    }

    /// Whether any endpoint is configured (else the capture hooks stay detached).
    pub fn is_enabled(&self) -> bool {
        !self.ports.is_empty() || !self.unix_sockets.is_empty()
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Loopback address the Prometheus endpoint listens on; `None`: off.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[policy]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Directory of `*.yaml` policies (absolute); `None`: observe only, nothing enforced.
    pub dir: Option<PathBuf>,
    /// Programs (absolute paths) the SIGKILL layer never kills: their refusals are reported,
    /// not enforced. PID 1 is always spared.
    pub never_kill: Vec<PathBuf>,
    /// What the fanotify layer's protected opens do while the agent is down or restarting
    /// under systemd (`while_restarting`).
    pub while_restarting: WhileRestarting,
}

/// `[policy] while_restarting`: protected opens on the fanotify layer while no agent answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhileRestarting {
    /// `"wait"` (the default): systemd keeps the fanotify group in its file descriptor store,
    /// so opens on the marked filesystems wait for the restarted agent's answer. Bounded:
    /// systemd closes the store once the unit stops or fails (start limit, start timeout).
    #[default]
    Wait,
    /// `"pass"`: the group closes with the agent, waiting opens go on; only the pinned
    /// open-exit SIGKILL programs act until the agent is back.
    Pass,
}

impl WhileRestarting {
    /// The setting's value as written in agent.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            WhileRestarting::Wait => "wait",
            WhileRestarting::Pass => "pass",
        }
    }
}

/// `[watch]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// Directories (everything below) and files whose opens are reported; absolute,
    /// normalised, existing.
    pub paths: Vec<PathBuf>,
    /// TCP ports whose connections are reported.
    pub ports: Vec<u16>,
}

/// `[output]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// JSON lines on stdout.
    pub stdout: bool,
    /// JSON lines appended to this file.
    pub file: Option<PathBuf>,
    /// Rotate the file once it holds this many bytes (0: never by size).
    pub file_max_bytes: u64,
    /// Rotate the file once it has been written this many seconds (0: never by age).
    pub file_max_age_secs: u64,
    /// Rotated files kept, the newest (0: all; then nothing is ever deleted).
    pub file_keep: u32,
}

/// Default size at which the event file is rotated (64 MiB).
pub const DEFAULT_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default age at which the event file is rotated (one day).
pub const DEFAULT_FILE_MAX_AGE_SECS: u64 = 86_400;
/// Default number of rotated event files kept.
pub const DEFAULT_FILE_KEEP: u32 = 30;

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            stdout: true,
            file: None,
            file_max_bytes: DEFAULT_FILE_MAX_BYTES,
            file_max_age_secs: DEFAULT_FILE_MAX_AGE_SECS,
            file_keep: DEFAULT_FILE_KEEP,
        }
    }
}

impl OutputConfig {
    /// When the event file is rotated.
    pub fn rotation(&self) -> crate::sink::rotating::Rotation {
        crate::sink::rotating::Rotation {
            max_bytes: self.file_max_bytes,
            max_age: std::time::Duration::from_secs(self.file_max_age_secs),
            keep: self.file_keep,
        }
    }
}

/// `[enrich]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrichConfig {
    /// Ancestors per event (0..=16).
    pub ancestry_depth: u8,
    /// Binaries larger than this many bytes are not hashed.
    pub hash_max_bytes: u64,
    /// Exited processes kept for late events.
    pub retain_exited: usize,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            ancestry_depth: 4,
            hash_max_bytes: 256 * 1024 * 1024,
            retain_exited: 4096,
        }
    }
}

/// `[agent]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Hostname reported in events (empty: the system's).
    pub hostname: String,
}

pub use phiguard_support::config::ConfigError;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    watch: RawWatch,
    output: OutputConfig,
    enrich: RawEnrich,
    agent: AgentConfig,
    policy: RawPolicy,
    collector: Option<collector::RawCollector>,
    database: RawDatabase,
    metrics: RawMetrics,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    ports: Vec<Spanned<u16>>,
    unix_sockets: Vec<Spanned<PathBuf>>,
    full_statements: bool,
    statement_capture_kib: Option<Spanned<u32>>,
    redact_patterns: Vec<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPolicy {
    dir: Option<Spanned<PathBuf>>,
    never_kill: Vec<Spanned<PathBuf>>,
    while_restarting: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWatch {
    paths: Vec<Spanned<PathBuf>>,
    ports: Vec<Spanned<u16>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEnrich {
    ancestry_depth: Option<Spanned<u8>>,
    hash_max_bytes: Option<u64>,
    retain_exited: Option<usize>,
}

impl Config {
    /// The settings that differ in `new` (as `section.field`): a running agent applies them
    /// only when it starts again. (Policies are reloaded, and the event file reopened,
    /// without a restart.)
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        // Destructured, so a new setting cannot be forgotten here.
        let Config {
            watch,
            output,
            enrich,
            agent,
            policy,
            collector,
            database,
            metrics,
        } = self;
        let OutputConfig {
            stdout,
            file,
            file_max_bytes,
            file_max_age_secs,
            file_keep,
        } = output;
        let EnrichConfig {
            ancestry_depth,
            hash_max_bytes,
            retain_exited,
        } = enrich;
        [
            (watch.paths != new.watch.paths, "watch.paths"),
            (watch.ports != new.watch.ports, "watch.ports"),
            (*stdout != new.output.stdout, "output.stdout"),
            (*file != new.output.file, "output.file"),
            (
                *file_max_bytes != new.output.file_max_bytes,
                "output.file_max_bytes",
            ),
            (
                *file_max_age_secs != new.output.file_max_age_secs,
                "output.file_max_age_secs",
            ),
            (*file_keep != new.output.file_keep, "output.file_keep"),
            (
                *ancestry_depth != new.enrich.ancestry_depth,
                "enrich.ancestry_depth",
            ),
            (
                *hash_max_bytes != new.enrich.hash_max_bytes,
                "enrich.hash_max_bytes",
            ),
            (
                *retain_exited != new.enrich.retain_exited,
                "enrich.retain_exited",
            ),
            (*agent != new.agent, "agent.hostname"),
            (policy.dir != new.policy.dir, "policy.dir"),
            (
                policy.never_kill != new.policy.never_kill,
                "policy.never_kill",
            ),
            (
                policy.while_restarting != new.policy.while_restarting,
                "policy.while_restarting",
            ),
            (*collector != new.collector, "collector"),
            (*database != new.database, "database"),
            (metrics.listen != new.metrics.listen, "metrics.listen"),
        ]
        .into_iter()
        .filter_map(|(changed, field)| changed.then_some(field))
        .collect()
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and validates `text`, reporting errors against `origin`.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            at: Location::in_text(origin, text, e.span()),
            message: e.message().trim().to_owned(),
        })?;
        let at = |span: Range<usize>| Location::in_text(origin, text, Some(span));
        let mut config = Config {
            output: raw.output,
            agent: raw.agent,
            ..Config::default()
        };
        for path in &raw.watch.paths {
            let normalised =
                check_watch_path(path.get_ref()).map_err(|message| ConfigError::Invalid {
                    at: at(path.span()),
                    field: "watch.paths",
                    message,
                })?;
            if config.watch.paths.contains(&normalised) {
                return Err(ConfigError::Invalid {
                    at: at(path.span()),
                    field: "watch.paths",
                    message: format!("{} is listed twice", normalised.display()),
                });
            }
            config.watch.paths.push(normalised);
        }
        let mut seen = BTreeSet::new();
        for port in &raw.watch.ports {
            let value = *port.get_ref();
            let problem = if value == 0 {
                Some("port 0 is not a port (1..=65535)".to_owned())
            } else if !seen.insert(value) {
                Some(format!("port {value} is listed twice"))
            } else {
                None
            };
            if let Some(message) = problem {
                return Err(ConfigError::Invalid {
                    at: at(port.span()),
                    field: "watch.ports",
                    message,
                });
            }
            config.watch.ports.push(value);
        }
        if let Some(dir) = &raw.policy.dir {
            // Relative to the configuration file, so a repository's agent.toml can name its
            // policies/ directory.
            let base = origin.parent().unwrap_or(Path::new("."));
            let absolute = std::path::absolute(base.join(dir.get_ref()))
                .unwrap_or_else(|_| base.join(dir.get_ref()));
            config.policy.dir =
                Some(
                    check_policy_dir(&absolute).map_err(|message| ConfigError::Invalid {
                        at: at(dir.span()),
                        field: "policy.dir",
                        message,
                    })?,
                );
        }
        for program in &raw.policy.never_kill {
            let path = program.get_ref();
            let problem = if !path.is_absolute() {
                Some(format!("{} is not an absolute path", path.display()))
            } else if config.policy.never_kill.contains(path) {
                Some(format!("{} is listed twice", path.display()))
            } else if config.policy.never_kill.len()
                == phiguard_common::maps::MAX_NEVER_KILL as usize
            {
                Some(format!(
                    "at most {} programs",
                    phiguard_common::maps::MAX_NEVER_KILL
                ))
            } else {
                None
            };
            if let Some(message) = problem {
                return Err(ConfigError::Invalid {
                    at: at(program.span()),
                    field: "policy.never_kill",
                    message,
                });
            }
            config.policy.never_kill.push(path.clone());
        }
        if let Some(value) = &raw.policy.while_restarting {
            config.policy.while_restarting = match value.get_ref().as_str() {
                "wait" => WhileRestarting::Wait,
                "pass" => WhileRestarting::Pass,
                other => {
                    return Err(ConfigError::Invalid {
                        at: at(value.span()),
                        field: "policy.while_restarting",
                        message: format!("{other:?}: expected \"wait\" or \"pass\""),
                    })
                }
            };
        }
        let mut seen = BTreeSet::new();
        for port in &raw.database.ports {
            let value = *port.get_ref();
            if value == 0 || !seen.insert(value) {
                return Err(ConfigError::Invalid {
                    at: at(port.span()),
                    field: "database.ports",
                    message: if value == 0 {
                        "port 0 is not a port (1..=65535)".to_owned()
                    } else {
                        format!("port {value} is listed twice")
                    },
                });
            }
            config.database.ports.push(value);
        }
        for path in &raw.database.unix_sockets {
            let p = path.get_ref();
            if !p.is_absolute() {
                return Err(ConfigError::Invalid {
                    at: at(path.span()),
                    field: "database.unix_sockets",
                    message: format!("{} is not an absolute path", p.display()),
                });
            }
            config.database.unix_sockets.push(p.clone());
        }
        config.database.full_statements = raw.database.full_statements;
        if let Some(kib) = &raw.database.statement_capture_kib {
            if !(1..=DB_TEXT_CAPTURE_MAX / 1024).contains(kib.get_ref()) {
                return Err(ConfigError::Invalid {
                    at: at(kib.span()),
                    field: "database.statement_capture_kib",
                    message: format!(
                        "{} is not between 1 and {}",
                        kib.get_ref(),
                        DB_TEXT_CAPTURE_MAX / 1024
                    ),
                });
            }
            config.database.statement_capture_kib = *kib.get_ref();
        }
        for pattern in &raw.database.redact_patterns {
            let invalid = |message: String| ConfigError::Invalid {
                at: at(pattern.span()),
                field: "database.redact_patterns",
                message,
            };
            if pattern.get_ref().is_empty() {
                return Err(invalid("an empty pattern matches everywhere".to_owned()));
            }
            let re = regex::RegexBuilder::new(pattern.get_ref())
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    invalid(format!(
                        "{:?} is not a regular expression: {e}",
                        pattern.get_ref()
                    ))
                })?;
            if re.is_match("") {
                return Err(invalid(format!(
                    "{:?} matches the empty string",
                    pattern.get_ref()
                )));
            }
            config.database.redact_patterns.push(RedactPattern(re));
        }
        if let Some(listen) = &raw.metrics.listen {
            let invalid = |message: String| ConfigError::Invalid {
                at: at(listen.span()),
                field: "metrics.listen",
                message,
            };
            let addr: std::net::SocketAddr = listen.get_ref().parse().map_err(|_| {
                invalid(format!(
                    "{:?} is not an address:port such as \"127.0.0.1:9464\"",
                    listen.get_ref()
                ))
            })?;
            if !addr.ip().is_loopback() {
                return Err(invalid(format!(
                    "{addr} is not a loopback address: the endpoint is unauthenticated and only listens on 127.0.0.1 or ::1"
                )));
            }
            config.metrics.listen = Some(addr);
        }
        let defaults = EnrichConfig::default();
        if let Some(depth) = &raw.enrich.ancestry_depth {
            if *depth.get_ref() > MAX_ANCESTRY_DEPTH {
                return Err(ConfigError::Invalid {
                    at: at(depth.span()),
                    field: "enrich.ancestry_depth",
                    message: format!("{} is more than {MAX_ANCESTRY_DEPTH}", depth.get_ref()),
                });
            }
        }
        config.enrich = EnrichConfig {
            ancestry_depth: raw
                .enrich
                .ancestry_depth
                .map_or(defaults.ancestry_depth, |d| *d.get_ref()),
            hash_max_bytes: raw.enrich.hash_max_bytes.unwrap_or(defaults.hash_max_bytes),
            retain_exited: raw.enrich.retain_exited.unwrap_or(defaults.retain_exited),
        };
        if let Some(link) = raw.collector {
            let base = origin
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let base = std::path::absolute(&base).unwrap_or(base);
            config.collector =
                Some(
                    link.validate(&base, |span, field, message| ConfigError::Invalid {
                        at: at(span),
                        field,
                        message,
                    })?,
                );
        }
        Ok(config)
    }

    /// Replaces the policy directory with the command line's `--policies` (relative to the
    /// current directory).
    pub fn with_policy_dir(mut self, dir: &Path) -> Result<Config, ConfigError> {
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        self.policy.dir =
            Some(
                check_policy_dir(&absolute).map_err(|message| ConfigError::Invalid {
                    at: Location::file(Path::new("command line")),
                    field: "--policies",
                    message,
                })?,
            );
        Ok(self)
    }

    /// Adds the command line's `--watch` paths and `--watch-port` ports (deduplicated).
    /// Relative paths are taken from the current directory.
    pub fn with_overrides(
        mut self,
        watch_paths: &[PathBuf],
        watch_ports: &[u16],
    ) -> Result<Config, ConfigError> {
        let command_line = Location::file(Path::new("command line"));
        for path in watch_paths {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let normalised =
                check_watch_path(&absolute).map_err(|message| ConfigError::Invalid {
                    at: command_line.clone(),
                    field: "--watch",
                    message,
                })?;
            if !self.watch.paths.contains(&normalised) {
                self.watch.paths.push(normalised);
            }
        }
        for &port in watch_ports {
            if port == 0 {
                return Err(ConfigError::Invalid {
                    at: command_line.clone(),
                    field: "--watch-port",
                    message: "port 0 is not a port (1..=65535)".into(),
                });
            }
            if !self.watch.ports.contains(&port) {
                self.watch.ports.push(port);
            }
        }
        Ok(self)
    }
}

/// The policy directory must be a directory.
fn check_policy_dir(path: &Path) -> Result<PathBuf, String> {
    let normalised = paths::normalize(path);
    match fs::metadata(&normalised) {
        Ok(meta) if meta.is_dir() => Ok(normalised),
        Ok(_) => Err(format!("{} is not a directory", normalised.display())),
        Err(e) => Err(format!("{}: {e}", normalised.display())),
    }
}

/// A watched path must be absolute and exist (the kernel matches it by inode).
fn check_watch_path(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let normalised = paths::normalize(path);
    match fs::metadata(&normalised) {
        Ok(_) => Ok(normalised),
        Err(e) => Err(format!(
            "{}: {e} (watched paths must exist when the agent starts)",
            normalised.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("agent.toml"))
    }

    #[test]
    fn database_section_parses_and_validates() {
        let config = Config::from_toml_str(
            "[database]\nports = [5432, 3306]\nunix_sockets = [\"/run/postgresql/.s.PGSQL.5432\"]\n",
            Path::new("agent.toml"),
        )
        .unwrap();
        assert_eq!(config.database.ports, [5432, 3306]);
        assert!(config.database.is_enabled() && !config.database.full_statements);
        let err = Config::from_toml_str(
            "[database]\nunix_sockets = [\"rel\"]\n",
            Path::new("a.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("database.unix_sockets"), "{err}");
        let err = Config::from_toml_str("[database]\nports = [1, 1]\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn redact_patterns_are_validated_with_file_line_and_field() {
        let config =
            parse("[database]\nredact_patterns = [\"MRN-[0-9]{8}\", \"\\\\bH\\\\d{6}\\\\b\"]\n")
                .unwrap();
        assert_eq!(config.database.redact_patterns.len(), 2);
        assert!(config.database.redact_patterns[0]
            .0
            .is_match("see MRN-12345678"));
        assert!(config.database.redact_patterns[1].0.is_match("x H123456 y"));
        let err = parse(
            "[database]\nports = [5432]\nredact_patterns = [\n  \"ok\",\n  \"MRN-[0-9\",\n]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("agent.toml:5:3: database.redact_patterns: \"MRN-[0-9\" is not a regular expression"),
            "{err}"
        );
        let err = parse("[database]\nredact_patterns = [\"x*\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("matches the empty string"), "{err}");
    }

    #[test]
    fn metrics_are_off_by_default_and_loopback_only() {
        assert_eq!(parse("").unwrap().metrics.listen, None);
        let on = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(on.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        let error = parse("[metrics]\nlisten = \"0.0.0.0:9464\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("agent.toml:2:10: metrics.listen: 0.0.0.0:9464 is not a loopback"),
            "{error}"
        );
    }

    #[test]
    fn restart_needed_names_each_changed_setting() {
        let base = parse("[watch]\nports = [5432]\n").unwrap();
        assert!(base.restart_needed(&base.clone()).is_empty());
        let changed = parse(
            "[watch]\nports = [5432, 3306]\n[output]\nfile_keep = 3\n[agent]\nhostname = \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            base.restart_needed(&changed),
            ["watch.ports", "output.file_keep", "agent.hostname"]
        );
    }

    #[test]
    fn while_restarting_is_wait_or_pass_with_file_line_and_field() {
        assert_eq!(
            parse("").unwrap().policy.while_restarting,
            WhileRestarting::Wait
        );
        let pass = parse("[policy]\nwhile_restarting = \"pass\"\n").unwrap();
        assert_eq!(pass.policy.while_restarting, WhileRestarting::Pass);
        assert_eq!(
            parse("").unwrap().restart_needed(&pass),
            ["policy.while_restarting"]
        );
        let err = parse("[policy]\n\nwhile_restarting = \"block\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("agent.toml:3:20: policy.while_restarting: \"block\": expected"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert!(Config::default().output.stdout);
    }

    #[test]
    fn full_file() {
        let c = parse(
            "[watch]\npaths = [\"/tmp\", \"/etc/../etc\"]\nports = [5432, 3306]\n\
             [output]\nstdout = false\nfile = \"/var/log/phiguard.jsonl\"\n\
             [enrich]\nancestry_depth = 2\n[agent]\nhostname = \"ehr-db-1\"\n",
        )
        .unwrap();
        assert_eq!(
            c.watch.paths,
            [PathBuf::from("/tmp"), PathBuf::from("/etc")]
        );
        assert_eq!(c.watch.ports, [5432, 3306]);
        assert_eq!(
            c.output,
            OutputConfig {
                stdout: false,
                file: Some("/var/log/phiguard.jsonl".into()),
                ..OutputConfig::default()
            }
        );
        let rotated =
            parse("[output]\nfile_max_bytes = 1048576\nfile_max_age_secs = 0\nfile_keep = 0\n")
                .unwrap()
                .output
                .rotation();
        assert_eq!(rotated.max_bytes, 1_048_576);
        assert!(rotated.max_age.is_zero());
        assert_eq!(rotated.keep, 0);
        assert_eq!(c.enrich.ancestry_depth, 2);
        assert_eq!(c.enrich.retain_exited, 4096);
        assert_eq!(c.agent.hostname, "ehr-db-1");
    }

    #[test]
    fn unknown_field_names_file_line_column_and_field() {
        let err = parse("[watch]\nports = [5432]\npathz = [\"/tmp\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("agent.toml:3:1: unknown field `pathz`"),
            "{err}"
        );
        let err = parse("[outptu]\n").unwrap_err().to_string();
        assert!(
            err.starts_with("agent.toml:1:2: unknown field `outptu`"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_and_syntax_are_located() {
        let err = parse("[watch]\nports = [5432, 70000]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("agent.toml:2:16:"), "{err}");
        let err = parse("[watch\n").unwrap_err().to_string();
        assert!(err.starts_with("agent.toml:1:"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err = parse("[watch]\npaths = [\"relative/dir\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "agent.toml:2:10: watch.paths: relative/dir is not an absolute path"
        );
        let err = parse("[watch]\npaths = [\n  \"/nonexistent/phiguard\",\n]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("agent.toml:3:3: watch.paths: /nonexistent/phiguard: No such file"),
            "{err}"
        );
        let err = parse("[watch]\nports = [5432, 5432]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "agent.toml:2:16: watch.ports: port 5432 is listed twice"
        );
        let err = parse("[watch]\nports = [0]\n").unwrap_err().to_string();
        assert!(err.contains("watch.ports: port 0"), "{err}");
        let err = parse("[enrich]\nancestry_depth = 17\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "agent.toml:2:18: enrich.ancestry_depth: 17 is more than 16"
        );
    }

    #[test]
    fn command_line_adds_and_deduplicates() {
        let c = parse("[watch]\npaths = [\"/tmp\"]\nports = [5432]\n").unwrap();
        let c = c
            .with_overrides(
                &[PathBuf::from("/tmp"), PathBuf::from("/etc")],
                &[5432, 3306],
            )
            .unwrap();
        assert_eq!(
            c.watch.paths,
            [PathBuf::from("/tmp"), PathBuf::from("/etc")]
        );
        assert_eq!(c.watch.ports, [5432, 3306]);
        let err = Config::default()
            .with_overrides(&[PathBuf::from("/nonexistent/x")], &[])
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("command line: --watch: /nonexistent/x"),
            "{err}"
        );
    }

    #[test]
    fn repository_default_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.watch.paths.is_empty() && !c.watch.ports.is_empty());
    }
}
