//! `cargo xtask bench-loop`: one measured loop in a process of its own. Each sample runs in a
//! fresh process because the kernel decides at fork whether a task is audited: a benchmark
//! process older than auditd's start would escape auditd's cost, which a server running auditd
//! from boot never does.

use std::{
    fs::File, io::Read as _, net::TcpStream, path::PathBuf, process::Command, time::Instant,
};

use anyhow::{bail, Context as _};

/// The loop to run.
#[derive(Debug, clap::Args)]
pub struct LoopArgs {
    #[command(subcommand)]
    work: Work,
}

#[derive(Debug, clap::Subcommand)]
enum Work {
    /// open+close of FILE, COUNT times.
    Open { file: PathBuf, count: u32 },
    /// An open of FILE that succeeds (then close) or is refused with `EPERM`, COUNT times;
    /// any other error ends the loop.
    OpenOrRefused { file: PathBuf, count: u32 },
    /// TCP connect to 127.0.0.1:PORT, wait for the listener's close, close; COUNT times.
    Connect { port: u16, count: u32 },
}

/// Runs the loop and prints ns per operation.
pub fn bench_loop(args: &LoopArgs) -> anyhow::Result<()> {
    let (count, start) = match &args.work {
        Work::Open { file, count } => {
            let start = Instant::now();
            for _ in 0..*count {
                drop(File::open(file).with_context(|| format!("opening {}", file.display()))?);
            }
            (*count, start)
        }
        Work::OpenOrRefused { file, count } => {
            let start = Instant::now();
            for _ in 0..*count {
                match File::open(file) {
                    Ok(opened) => drop(opened),
                    Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32) => {}
                    Err(e) => bail!("opening {}: {e}", file.display()),
                }
            }
            (*count, start)
        }
        Work::Connect { port, count } => {
            let start = Instant::now();
            for _ in 0..*count {
                let mut stream = TcpStream::connect(("127.0.0.1", *port))
                    .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
                // Wait for the listener to accept and close: a listener that falls behind
                // would overflow its accept queue and stall a connect for a SYN retry.
                let _ = stream.read(&mut [0u8; 1]);
            }
            (*count, start)
        }
    };
    println!(
        "{}",
        start.elapsed().as_nanos() as f64 / f64::from(count.max(1))
    );
    Ok(())
}

/// Runs `bench-loop ARGS` in a new process; ns per operation.
pub fn spawn_loop(args: &[String]) -> anyhow::Result<f64> {
    let out = Command::new(std::env::current_exe()?)
        .arg("bench-loop")
        .args(args)
        .output()
        .context("running bench-loop")?;
    if !out.status.success() {
        bail!(
            "bench-loop {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("bench-loop output")
}
