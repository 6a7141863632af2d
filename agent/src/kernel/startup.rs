//! Start-up, before anything loads: can this process run the programs on this kernel
//! ([`super::probe`]), are the pseudo-filesystems there ([`super::mounts`]), and where are the
//! kernel struct fields the programs read ([`super::btf`]).

use std::path::Path;

use phiguard_common::offsets::KernelOffsets;
use tracing::{debug, info};

use super::{btf, mounts, probe};

/// Why the kernel side cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// This system cannot run the programs.
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
    /// A pseudo-filesystem is missing.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// Offsets could not be read.
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
}

/// Checks the system, mounts what is missing and reads the struct offsets from the kernel's
/// BTF.
pub fn prepare() -> Result<KernelOffsets, StartupError> {
    let btf_path = Path::new(btf::VMLINUX_BTF);
    probe::check(btf_path)?;
    for mounted in mounts::ensure_mounted()? {
        info!(mount = mounted, "mounted missing pseudo-filesystem");
    }
    let offsets = btf::running_kernel()?.offsets;
    debug!(?offsets, "kernel struct offsets from BTF");
    Ok(offsets)
}
