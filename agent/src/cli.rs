//! Command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The configuration file used when `--config` is not given and it exists.
pub const DEFAULT_CONFIG: &str = "/etc/phiguard/agent.toml";
/// The policy directory `phiguard policy check` uses when none is given or configured.
pub const DEFAULT_POLICY_DIR: &str = "/etc/phiguard/policies";

/// phiguard: eBPF host agent that audits who opens patient-record files, who connects to the
/// database, and what runs, on servers holding ePHI.
#[derive(Debug, Parser)]
#[command(name = "phiguard", version)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel programs and stream events as JSON lines until SIGINT/SIGTERM.
    /// SIGHUP reloads the policies, reopens the event file and reads agent.toml again.
    Run(RunArgs),
    /// Work with allow-list policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Remove the pinned programs that keep enforcing after the agent stops (run it after
    /// stopping the agent to switch enforcement off deliberately).
    Unload,
    /// Show what the running agent is doing: attached programs, enforcement layers, policy
    /// generation, kernel losses, and the programs pinned in bpffs (shown also when no agent
    /// runs). Exits 0 when an agent runs, 3 when none does or it stopped responding.
    Status(StatusArgs),
    /// Ask the running agent to reload (SIGHUP: agent.toml and the policies) and wait until
    /// it has. Exits 0 once the new policies are in force; 1 when the reload was refused (the
    /// old policies stay) or changed settings need a restart; 3 when no agent runs. The
    /// service's `systemctl reload` runs this.
    Reload(ReloadArgs),
    /// Break-glass emergency access (root only): lift the allow-lists for one user or one
    /// program for a limited time. The grant, every access it allows and its end are reported;
    /// the collector alerts on each grant. It ends by itself (the kernel checks its expiry),
    /// survives an agent restart and never a reboot. `--list` shows the grants, `--revoke ID`
    /// ends one early.
    BreakGlass(BreakGlassArgs),
    /// Write the man page (roff) to stdout.
    #[command(hide = true)]
    Man,
    /// Attach empty programs wherever `run` with the same arguments attaches the agent's,
    /// until SIGINT/SIGTERM: the hook floor of `cargo xtask bench`.
    #[command(hide = true)]
    BenchFloor(RunArgs),
}

/// `phiguard status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the report as one JSON object (for scripts).
    #[arg(long)]
    pub json: bool,
    /// The status file the agent writes.
    #[arg(long, value_name = "FILE", env = "PHIGUARD_STATUS_FILE", default_value = crate::status::DEFAULT_STATUS_FILE)]
    pub status_file: PathBuf,
}

/// `phiguard break-glass`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").args(["list", "revoke", "reason"]).required(true)))]
#[command(group(clap::ArgGroup::new("subject").args(["user", "exe"])))]
pub struct BreakGlassArgs {
    /// Why (required for a grant; printable, at most 500 bytes). Goes into every event.
    #[arg(long, requires = "duration", requires = "subject")]
    pub reason: Option<String>,
    /// How long: e.g. 30m, 2h, 1h30m (at most 24h).
    #[arg(long = "for", value_name = "DURATION", requires = "reason")]
    pub duration: Option<String>,
    /// The user it covers (name or uid; the process's real uid).
    #[arg(long, requires = "reason")]
    pub user: Option<String>,
    /// The program it covers (absolute path; matched by device and inode of the file the
    /// kernel executed, as `exe` subjects are).
    #[arg(long, value_name = "PATH", requires = "reason")]
    pub exe: Option<PathBuf>,
    /// List the grants.
    #[arg(long)]
    pub list: bool,
    /// End grant ID now.
    #[arg(long, value_name = "ID")]
    pub revoke: Option<String>,
    /// The break-glass directory (the agent's `run --break-glass-dir`).
    #[arg(long, value_name = "DIR", env = "PHIGUARD_BREAK_GLASS_DIR", default_value = crate::breakglass::store::DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// `phiguard reload`.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// The agent's pid (default: the one in the status file).
    #[arg(long)]
    pub pid: Option<u32>,
    /// How long to wait for the reload to finish, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The status file the agent writes.
    #[arg(long, value_name = "FILE", env = "PHIGUARD_STATUS_FILE", default_value = crate::status::DEFAULT_STATUS_FILE)]
    pub status_file: PathBuf,
}

/// `phiguard policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory and print what it protects, and how on this kernel. Exits
    /// non-zero on any error (file:line:column: field: message).
    Check {
        /// The directory (default: the configuration's `[policy] dir`, else
        /// /etc/phiguard/policies).
        dir: Option<PathBuf>,
        /// Configuration file whose watches and policy directory to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// `phiguard run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML). Default: /etc/phiguard/agent.toml when it exists, else
    /// built-in defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Also watch opens under this path (repeatable; adds to the configuration).
    #[arg(long = "watch", value_name = "PATH")]
    pub watch: Vec<PathBuf>,
    /// Also watch TCP connections on this port (repeatable; adds to the configuration).
    #[arg(long = "watch-port", value_name = "PORT")]
    pub watch_port: Vec<u16>,
    /// Enforce the allow-list policies in this directory (replaces the configuration's
    /// `[policy] dir`).
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Where to write the agent's status for `phiguard status` (refreshed every second,
    /// removed on exit).
    #[arg(long, value_name = "FILE", env = "PHIGUARD_STATUS_FILE", default_value = crate::status::DEFAULT_STATUS_FILE)]
    pub status_file: PathBuf,
    /// The directory `phiguard break-glass` writes grants to (used while policies are
    /// enforced).
    #[arg(long, value_name = "DIR", env = "PHIGUARD_BREAK_GLASS_DIR", default_value = crate::breakglass::store::DEFAULT_DIR)]
    pub break_glass_dir: PathBuf,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
