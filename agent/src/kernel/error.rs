//! Why the kernel programs could not be brought up or changed: one error type for the loader,
//! the map installs and the pins, in a module of its own so none of them imports another for
//! it.

use super::pins;

/// Failure to bring the kernel programs up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary was built with `AYA_BUILD_SKIP`.
    #[error("this phiguard binary was built without its eBPF programs (AYA_BUILD_SKIP was set); rebuild with `cargo xtask build`")]
    NoObject,
    /// The object did not load.
    #[error("loading the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    /// This process's global pid (the one the kernel programs compare) could not be learnt.
    #[error("learning this process's pid as the kernel sees it (a bpf test run): {0}")]
    GlobalPid(#[source] std::io::Error),
    /// A program is missing from the object (a build mismatch).
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map is missing from the object (a build mismatch).
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// A required program did not load or attach.
    #[error("required program {name} ({hook}) failed: {reason}")]
    Required {
        /// Program name.
        name: &'static str,
        /// Its hook.
        hook: String,
        /// Why.
        reason: String,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Why.
        #[source]
        source: aya::maps::MapError,
    },
    /// The links could not be pinned.
    #[error(transparent)]
    Pin(#[from] pins::PinError),
    /// The state the integrity check compares against could not be read back.
    #[error("reading back the installed kernel state: {0}")]
    Snapshot(#[source] std::io::Error),
    /// The cgroup v2 root could not be opened.
    #[error("opening cgroup v2 root {path}: {source}")]
    Cgroup {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
