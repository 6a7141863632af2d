//! `phiguard`: the host agent binary. All logic lives in the library; this wires the command
//! line, logging and signals to it.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Parser as _;
use phiguard::{
    agent::Agent,
    breakglass,
    cli::{
        BreakGlassArgs, Cli, Command, LogFormat, PolicyCommand, ReloadArgs, RunArgs, StatusArgs,
        DEFAULT_CONFIG, DEFAULT_POLICY_DIR,
    },
    config::Config,
    fanotify::interim::Interim,
    kernel::{
        floor::Floor,
        layer::{FileLayer, KernelLayers},
        loader, mounts, pins,
    },
    link::Link,
    policy::{self, enforcement::LsmGaps, Trigger},
    sink::{
        json::JsonLines,
        publish::Publisher,
        spool::{Spool, SpoolSink},
        Sink,
    },
    status::{Liveness, Report},
    watch::WatchSet,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's allocator: the agent allocates and frees a few dozen small
/// strings per event, and glibc's malloc and free were a fifth of its time per database
/// statement.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Policy(PolicyCommand::Check { dir, config }) => check_policies(dir, config),
        Command::Unload => unload(),
        Command::Status(args) => return status(&args),
        Command::Reload(args) => return reload(&args),
        Command::BreakGlass(args) => return break_glass(&args),
        Command::Man => man(),
        Command::BenchFloor(args) => bench_floor(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: coloured on a terminal; under systemd (`JOURNAL_STREAM` set) plain
/// and without a timestamp, since the journal stamps every line itself.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    match (format, journal) {
        (LogFormat::Text, false) => builder.init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Json, _) => builder.json().init(),
    }
}

fn read_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    })
}

fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = read_config(args.config.as_deref())?;
    if let Some(dir) = &args.policies {
        config = config.with_policy_dir(dir)?;
    }
    Ok(config.with_overrides(&args.watch, &args.watch_port)?)
}

/// `phiguard unload`: removes the pins, so programs no running agent holds are detached.
fn unload() -> anyhow::Result<()> {
    let removed = pins::unload(Path::new(pins::PIN_DIR))?;
    if removed == 0 {
        println!("nothing pinned under {}", pins::PIN_DIR);
    } else {
        println!(
            "removed {removed} pinned programs from {}; enforcement stops once no agent runs",
            pins::PIN_DIR
        );
    }
    Ok(())
}

/// `phiguard status`: exit 0 when an agent runs, 3 when none does (as `systemctl status`), 1
/// on error.
fn status(args: &StatusArgs) -> ExitCode {
    let report = match Report::gather(&args.status_file, Path::new(pins::PIN_DIR)) {
        Ok(report) => report,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                tracing::error!("{error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.text());
    }
    if report.agent == Liveness::Running {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// `phiguard reload`: exit 0 when the reload is in force, 1 when refused or incomplete, 3
/// when no agent runs.
fn reload(args: &ReloadArgs) -> ExitCode {
    let timeout = std::time::Duration::from_secs(args.timeout);
    match phiguard::reload::request(&args.status_file, args.pid, timeout) {
        Ok(outcome) => {
            println!("{}", outcome.text());
            if outcome.in_force() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error @ phiguard::reload::ReloadError::NotRunning(_)) => {
            eprintln!("phiguard reload: {error}");
            ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("phiguard reload: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `phiguard man`: the man page, generated from the command-line definition: the main page,
/// then a section per subcommand with its description and options.
/// `phiguard break-glass`: exits 0 when done, 2 when a flag's value is unusable (the message
/// names it), 1 on any other refusal.
fn break_glass(args: &BreakGlassArgs) -> ExitCode {
    let request = match breakglass::command::parse(
        args.list,
        args.revoke.as_deref(),
        args.reason.as_deref(),
        args.duration.as_deref(),
        args.user.as_deref(),
        args.exe.as_deref(),
    ) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("phiguard break-glass: {e}");
            return ExitCode::from(2);
        }
    };
    match breakglass::command::run(request, &args.dir, Path::new(pins::PIN_DIR)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("phiguard break-glass: {e}");
            ExitCode::FAILURE
        }
    }
}

fn man() -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    use std::io::Write as _;
    let command = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    let section = |path: String, sub: &clap::Command, out: &mut Vec<u8>| {
        writeln!(out, ".SH \"{}\"", path.to_uppercase())?;
        let man = clap_mangen::Man::new(sub.clone());
        man.render_description_section(out)?;
        man.render_options_section(out)
    };
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        section(format!("phiguard {}", sub.get_name()), sub, &mut out)?;
        for subsub in sub.get_subcommands() {
            let path = format!("phiguard {} {}", sub.get_name(), subsub.get_name());
            section(path, subsub, &mut out)?;
        }
    }
    std::io::stdout()
        .write_all(&out)
        .context("writing the man page")
}

/// `phiguard bench-floor`: empty programs at the agent's hooks for this configuration, held
/// until SIGINT or SIGTERM.
fn bench_floor(args: &RunArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    mounts::ensure_mounted()?;
    let floor = Floor::attach(
        config.database.is_enabled(),
        config.policy.dir.is_some(),
        &mounts::cgroup2_root()?,
    )?;
    for (name, hook, error) in &floor.status {
        if let Some(error) = error {
            tracing::warn!(program = name, %hook, "no empty program here: {error}");
        }
    }
    tracing::info!(
        programs = floor.attached(),
        "hook floor attached; SIGINT or SIGTERM detaches it"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        anyhow::Ok(())
    })?;
    drop(floor);
    tracing::info!("hook floor detached");
    Ok(())
}

/// `phiguard policy check`: validates and compiles, prints what is protected and how.
fn check_policies(dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = read_config(config.as_deref())?;
    let dir = dir
        .or(config.policy.dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR));
    let watches = WatchSet::new(&config.watch.paths, &config.watch.ports)?;
    let cgroup_root = mounts::cgroup2_root()?;
    let compiled = policy::load(Some(&dir), &watches, &cgroup_root)?;
    println!(
        "{}: {} policies valid: {}",
        dir.display(),
        compiled.policies.len(),
        compiled.policies.join(", ")
    );
    // The same choice the agent makes at start (kernel::layer): BPF LSM only when `bpf` is an
    // active LSM and its programs load, else fanotify, else SIGKILL.
    let _ = mounts::ensure_securityfs();
    let kernel = KernelLayers::detect();
    let files = kernel.plan(|| match loader::lsm_usable() {
        Ok(lsm) => lsm,
        Err(e) => {
            println!("(could not probe for BPF LSM: {e}; showing the layers without it)");
            false
        }
    });
    println!(
        "protected on this host ({} kernel rules; BPF LSM {}; file opens decided by {}):",
        compiled.rules.len(),
        if files == FileLayer::Lsm {
            "active"
        } else if kernel.bpf_lsm_active() {
            "listed but its programs do not load"
        } else {
            "not active"
        },
        files.name()
    );
    // The hooks that load are known once the agent loads them (its start line and `status`).
    for line in compiled.protections(files, LsmGaps::default()) {
        println!("  {line}");
    }
    let spared: Vec<String> = std::iter::once("PID 1".to_owned())
        .chain(
            config
                .policy
                .never_kill
                .iter()
                .map(|p| p.display().to_string()),
        )
        .collect();
    println!(
        "never killed by the SIGKILL layer ({}): {}; a refusal of theirs there is reported (layer SPARED), not enforced",
        if files == FileLayer::Signal {
            "it enforces file opens and execs on this host"
        } else {
            "it acts while the agent is down, and on scripts' interpreters"
        },
        spared.join(", ")
    );
    if !compiled.warnings.is_empty() {
        println!("cannot take effect on this host:");
        for warning in &compiled.warnings {
            println!("  warning: {warning}");
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // First thing, before this process opens a file: a fanotify group systemd kept across a
    // restart holds every open on the protected filesystems, this agent's own included.
    let kept = Interim::take();
    let config = load_config(&args)?;
    // One thread: the event loop, its timers and the metrics endpoint share it, so a timed
    // look at the ring buffer wakes one thread, not a timer thread that then wakes the loop.
    // The collector link runs on a thread of its own (`Publisher::spawn`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if config.output.stdout {
            sinks.push(Box::new(JsonLines::new(std::io::stdout())));
        }
        if let Some(path) = &config.output.file {
            let sink = JsonLines::append_to(path, config.output.rotation())
                .with_context(|| format!("opening output file {}", path.display()))?;
            sinks.push(Box::new(sink));
        }
        let mut publisher = None;
        let mut watched = None;
        if let Some(link) = &config.collector {
            let spool = Spool::open(link.spool.clone()).context("opening the spool")?;
            sinks.push(Box::new(SpoolSink(spool.clone())));
            let spawned = Publisher::spawn(spool.clone(), link.publisher.clone())?;
            watched = Some(Link::new(
                link.publisher.address.clone(),
                spool,
                spawned.status_handle(),
                link.heartbeat,
            ));
            publisher = Some(spawned);
            tracing::info!(
                address = %link.publisher.address,
                spool = %link.spool.dir.display(),
                "collector link on: events are spooled and sent over mutual TLS"
            );
        }
        let mut agent = Agent::start(&config, sinks, kept)?;
        let reread = args.clone();
        agent.reread_config_with(
            config.clone(),
            Box::new(move || load_config(&reread).map_err(|e| format!("{e:#}"))),
        );
        if let Some(link) = watched {
            agent.watch_link(link);
        }
        agent.write_status_to(&args.status_file);
        agent.honour_break_glass(&args.break_glass_dir);
        // systemd (Type=notify): ready once the programs are attached. A no-op elsewhere.
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("programs attached; events flowing"),
        ]);
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let reload = agent.reload_handle();
        let shutdown = async move {
            loop {
                tokio::select! {
                    _ = interrupt.recv() => break tracing::info!("SIGINT: shutting down"),
                    _ = terminate.recv() => break tracing::info!("SIGTERM: shutting down"),
                    _ = hangup.recv() => {
                        tracing::info!("SIGHUP: reloading agent.toml and the policies, reopening the event file");
                        let _ = reload.try_send(Trigger::Signal);
                    }
                }
            }
        };
        let shutdown = async move {
            shutdown.await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        };
        agent.run(shutdown).await.context("event loop")?;
        if let Some(publisher) = publisher {
            // A short grace period to deliver the last events; what is left stays spooled.
            let delivered = tokio::task::spawn_blocking(move || {
                let delivered = publisher.drain(std::time::Duration::from_secs(2));
                publisher.stop();
                delivered
            })
            .await
            .unwrap_or(false);
            if !delivered {
                tracing::info!("undelivered events stay in the spool for the next run");
            }
        }
        Ok(())
    })
}
