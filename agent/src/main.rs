//! `phiguard`: the host agent binary. All logic lives in the library; this wires the command
//! line, logging and signals to it.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use phiguard::{
    agent::Agent,
    cli::{Cli, Command, LogFormat, RunArgs, DEFAULT_CONFIG},
    config::Config,
    sink::{json::JsonLines, Sink},
};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    };
    Ok(config.with_overrides(&args.watch, &args.watch_port)?)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if config.output.stdout {
            sinks.push(Box::new(JsonLines::new(std::io::stdout())));
        }
        if let Some(path) = &config.output.file {
            let sink = JsonLines::append_to(path)
                .with_context(|| format!("opening output file {}", path.display()))?;
            sinks.push(Box::new(sink));
        }
        let agent = Agent::start(&config, sinks)?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            }
        };
        agent.run(shutdown).await.context("event loop")?;
        Ok(())
    })
}
