//! `phiguard-collector`: the collector binary. All logic lives in the library; this wires
//! the command line, logging and signals to it.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use phiguard_collector::{
    checkpoint::{self, Signer},
    config::Config,
    fence::{FenceError, FENCED_EXIT},
    jetstream::lease::TakeError,
    notify,
    server::{BoundCollector, ServerError},
    tail,
    tls::TlsFiles,
    verify::{self, VerifyOptions},
};
use phiguard_proto::v1::{self, subscribe_request::Start};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// phiguard's central collector.
#[derive(Debug, Parser)]
#[command(name = "phiguard-collector", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive agents' events over mutual TLS, store them and serve subscribers.
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check every stored chain and the signed checkpoints; exit 1 on any problem.
    Verify {
        /// The configuration file (for the store directory and checkpoint settings).
        #[arg(long, short)]
        config: PathBuf,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Checkpoint files, or directories of them, to check against (repeatable). Default:
        /// the configured `file` and the `export_dir` copy. Give the exported copy
        /// (`--checkpoints EXPORT_DIR`) to check the store against what its writer cannot
        /// rewrite; checkpoints found there but missing from the store's `file` are reported.
        #[arg(long = "checkpoints")]
        checkpoints: Vec<PathBuf>,
        /// The trusted checkpoint public key, hex (default: configured, else derived from
        /// the signing key).
        #[arg(long)]
        public_key: Option<String>,
        /// Check the chains alone when there is no signed checkpoint at all, or none of a
        /// chain (otherwise that is a failure: a chain rewritten from scratch or cut short
        /// would go unnoticed).
        #[arg(long)]
        allow_no_checkpoints: bool,
    },
    /// Follow events from a collector, one readable line each (or JSON with --json).
    Tail(Box<TailArgs>),
    /// Ask a running collector to reload its TLS files and revoked list (SIGHUP to `--pid`;
    /// the unit's `ExecReload`).
    Reload {
        /// The collector's process id.
        #[arg(long)]
        pid: i32,
    },
    /// Write the man page (roff) to stdout.
    #[command(hide = true)]
    Man,
}

#[derive(Debug, clap::Args)]
struct TailArgs {
    /// The collector's address.
    #[arg(long, default_value = "127.0.0.1:7443")]
    addr: String,
    /// TLS server name to verify (default: the address's host).
    #[arg(long)]
    server_name: Option<String>,
    /// A directory from `cargo xtask certs` (uses ca.pem, soc.pem and soc.key).
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    certs: Option<PathBuf>,
    /// CA certificate (PEM).
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// Subscriber certificate (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Subscriber key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Print the proto3 JSON of each event instead of a readable line.
    #[arg(long)]
    json: bool,
    /// Only these agents (repeatable).
    #[arg(long)]
    host: Vec<String>,
    /// Only these kinds: exec, fork, exit, fileOpen, connect, tcpState, eventsLost, policyLoad,
    /// alert, dbSessionStart, dbLogin, dbStatement, dbSessionEnd, heartbeat.
    #[arg(long)]
    kind: Vec<String>,
    /// Only these verdicts: allow, deny, would-deny, unspecified.
    #[arg(long)]
    verdict: Vec<String>,
    /// Only events of these users (name or uid; process user or login user).
    #[arg(long)]
    user: Vec<String>,
    /// Only file opens under these paths.
    #[arg(long)]
    path_prefix: Vec<String>,
    /// Replay stored events from this time (RFC 3339) before following.
    #[arg(long, conflicts_with = "since_seq")]
    since_time: Option<String>,
    /// Replay each agent's stored events from this seq before following.
    #[arg(long)]
    since_seq: Option<u64>,
    /// Stop after the replay instead of following live events.
    #[arg(long)]
    replay_only: bool,
}

/// `phiguard-collector reload --pid PID`: SIGHUP to a running collector.
fn reload(pid: i32) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(pid > 0, "--pid {pid} is not a process id");
    // SAFETY: kill(2) with a checked positive pid and a constant signal.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!("signalling {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Verify {
            config,
            agent,
            checkpoints,
            public_key,
            allow_no_checkpoints,
        } => run_verify(
            &config,
            agent,
            checkpoints,
            public_key,
            allow_no_checkpoints,
        ),
        Command::Tail(args) => run_tail(*args),
        Command::Reload { pid } => reload(pid),
        Command::Man => man(),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::from(2)
        }
    }
}

/// `phiguard-collector man`: the man page from the command-line definition: the main page,
/// then a section per subcommand with its description and options.
fn man() -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    use std::io::Write as _;
    let command = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        writeln!(
            out,
            ".SH \"PHIGUARD-COLLECTOR {}\"",
            sub.get_name().to_uppercase()
        )?;
        let page = clap_mangen::Man::new(sub.clone());
        page.render_description_section(&mut out)?;
        page.render_options_section(&mut out)?;
    }
    std::io::stdout()
        .write_all(&out)
        .context("writing the man page")?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: under systemd stderr is the journal, which stores the codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The exit status of a collector that cannot start as configured (sysexits' `EX_CONFIG`):
/// its unit does not restart it (`RestartPreventExitStatus=78`), since trying again cannot help.
const EX_CONFIG: u8 = 78;

fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("{error:#}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    runtime()?.block_on(async {
        // Pinged from the start: a standby waits for the lease before it listens.
        let _watchdog = notify::spawn_watchdog();
        let collector = match BoundCollector::bind(config).await {
            Ok(collector) => collector,
            // The address may come free: worth another try.
            Err(error @ ServerError::Bind { .. }) => return Err(error.into()),
            // A newer writer took the store meanwhile: stand by again (the unit restarts it).
            Err(
                error @ ServerError::Take(TakeError::Fence(FenceError::Stale { .. })),
            ) => {
                tracing::error!("{error:#}");
                return Ok(ExitCode::from(FENCED_EXIT as u8));
            }
            // Certificates, keys, the store: the operator must act first.
            Err(error) => {
                tracing::error!("{error:#}");
                return Ok(ExitCode::from(EX_CONFIG));
            }
        };
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        // SIGHUP (`systemctl reload`) never ends the collector: it reads the TLS files again.
        let mut hangup = signal(SignalKind::hangup())?;
        let reloader = collector.reloader();
        let path = path.to_owned();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let config = match Config::load(&path) {
                    Ok(config) => config,
                    Err(error) => {
                        tracing::error!(
                            "SIGHUP: {} not reloaded, the settings in force stay: {error:#}",
                            path.display()
                        );
                        continue;
                    }
                };
                match reloader.reload(&config) {
                    Ok(()) => tracing::info!(
                        revoked = config.server.revoked.len(),
                        crl = ?config.server.crl,
                        "SIGHUP: TLS files read again, and the revoked certificates, CRL and scopes; new connections use them"
                    ),
                    Err(error) => tracing::error!(
                        "SIGHUP: TLS files not reloaded, the ones in force stay (and the revoked certificates, CRL and scopes): {error:#}"
                    ),
                }
            }
        });
        // systemd (Type=notify): started once it listens and handles its signals (a reload
        // right after start must not end it). A no-op elsewhere.
        notify::ready("listening");
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            }
        };
        collector.serve(shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn run_verify(
    path: &Path,
    agent: Option<String>,
    checkpoint_files: Vec<PathBuf>,
    public_key: Option<String>,
    allow_no_checkpoints: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let checkpoint_files = if checkpoint_files.is_empty() {
        config
            .checkpoint
            .export
            .file
            .iter()
            .cloned()
            .chain(config.checkpoint.export.dir.clone())
            .collect()
    } else {
        checkpoint_files
    };
    let trusted_hex = match public_key.or(config.checkpoint.public_key.clone()) {
        Some(hex) => Some(hex),
        None if config.checkpoint.key.exists() => {
            Some(Signer::load(&config.checkpoint.key)?.public_key_hex())
        }
        None => None,
    };
    let trusted_key = trusted_hex
        .map(|h| checkpoint::parse_public_key(&h))
        .transpose()
        .context("the trusted checkpoint key")?;
    let report = verify::verify(&VerifyOptions {
        store_dir: config.store.dir.clone(),
        agent: agent.clone(),
        checkpoint_files: checkpoint_files.clone(),
        store_checkpoints: config.checkpoint.export.file.clone(),
        require_checkpoints: !allow_no_checkpoints,
        trusted_key,
        retention_max_age: Some(config.store.retention_max_age),
    })?;
    let unanchored = report.checkpoints_read == 0;
    if unanchored {
        let files: Vec<String> = checkpoint_files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        let files = if files.is_empty() {
            "(no checkpoint file configured)".to_owned()
        } else {
            files.join(", ")
        };
        if allow_no_checkpoints {
            println!("warning: no signed checkpoints in {files}: a chain rewritten from scratch or cut short would not be detected");
        } else {
            println!("BROKEN  no signed checkpoints in {files}: a chain rewritten from scratch or cut short would not be detected (--allow-no-checkpoints checks the chains alone)");
        }
    }
    for a in &report.agents {
        match &a.problem {
            None => println!(
                "ok      agent {}: {} records in {} segments from record {}, {} checkpoints matched{}",
                a.agent,
                a.records,
                a.segments,
                a.first_index,
                a.checkpoints,
                if a.checkpoints_pruned > 0 {
                    format!(" ({} older than retention)", a.checkpoints_pruned)
                } else {
                    String::new()
                }
            ),
            Some(problem) => println!("BROKEN  {problem}"),
        }
    }
    for problem in &report.problems {
        println!("BROKEN  {problem}");
    }
    for note in &report.notes {
        println!("note    {note}");
    }
    if let Some(agent) = agent {
        if report.agents.is_empty() {
            bail!("no chain for agent {agent:?}");
        }
    }
    Ok(if report.ok() && (!unanchored || allow_no_checkpoints) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verdict(name: &str) -> anyhow::Result<i32> {
    let wanted = format!("VERDICT_{}", name.to_ascii_uppercase().replace('-', "_"));
    v1::Verdict::from_str_name(&wanted)
        .map(|v| v as i32)
        .with_context(|| format!("unknown verdict {name:?} (allow, deny, would-deny, unspecified)"))
}

fn run_tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let files = match (&args.certs, &args.ca, &args.cert, &args.key) {
        (Some(dir), _, _, _) => TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("soc.pem"),
            key: dir.join("soc.key"),
        },
        (None, Some(ca), Some(cert), Some(key)) => TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => bail!("give --certs DIR, or --ca, --cert and --key"),
    };
    let start = match (&args.since_time, args.since_seq) {
        (Some(time), _) => Some(Start::SinceTime(
            serde_json::from_value(serde_json::Value::String(time.clone()))
                .with_context(|| format!("--since-time {time:?} is not an RFC 3339 time"))?,
        )),
        (None, Some(seq)) => Some(Start::SinceSeq(seq)),
        (None, None) => None,
    };
    let request = v1::SubscribeRequest {
        filter: Some(v1::EventFilter {
            hosts: args.host,
            kinds: args.kind,
            verdicts: args
                .verdict
                .iter()
                .map(|v| verdict(v))
                .collect::<anyhow::Result<_>>()?,
            users: args.user,
            path_prefixes: args.path_prefix,
        }),
        start,
        replay_only: args.replay_only,
    };
    runtime()?.block_on(async {
        let mut events = tail::subscribe(
            &args.addr,
            args.server_name.as_deref(),
            &files,
            request,
            64 * 1024 * 1024,
        )
        .await?;
        use std::io::Write as _;
        let stdout = std::io::stdout();
        while let Some(event) = events.message().await.context("event stream")? {
            let mut out = stdout.lock();
            if args.json {
                serde_json::to_writer(&mut out, &tail::to_json(&event))?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", tail::format_line(&event))?;
            }
            out.flush()?;
        }
        Ok(ExitCode::SUCCESS)
    })
}
