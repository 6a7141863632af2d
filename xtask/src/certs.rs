//! `cargo xtask certs DIR`: a development PKI for the collector link (see
//! `phiguard-devcerts`): CA, collector certificate (localhost, 127.0.0.1), subscriber
//! certificate `soc`, and one agent certificate per host (default: this machine's hostname).
//! Private keys are written with mode 0600. An existing CA in DIR is reused.

use std::path::PathBuf;

use anyhow::Context as _;

/// Arguments of `cargo xtask certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Where to write the certificates and keys.
    dir: PathBuf,
    /// Agent host names to issue certificates for (repeatable; default: this hostname).
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// Extra DNS names or IP addresses for the collector certificate (repeatable).
    #[arg(long = "collector-name")]
    collector_names: Vec<String>,
}

/// Writes the PKI and lists what was written.
pub fn certs(args: &CertsArgs) -> anyhow::Result<()> {
    let agents = if args.agents.is_empty() {
        let host = nix::unistd::gethostname().context("reading the hostname")?;
        vec![host.to_string_lossy().into_owned()]
    } else {
        args.agents.clone()
    };
    let written = phiguard_devcerts::write_dir(&args.dir, &agents, &args.collector_names)
        .with_context(|| format!("writing certificates to {}", args.dir.display()))?;
    println!(
        "certs: {} CA in {}",
        if written.new_ca { "new" } else { "existing" },
        args.dir.display()
    );
    for file in &written.files {
        println!("certs: wrote {}", file.display());
    }
    println!(
        "certs: agents {} (identity = host name; set [agent] hostname to match when it differs)",
        agents.join(", ")
    );
    Ok(())
}
