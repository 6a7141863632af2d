//! Allow-list policies: the YAML language security staff write in `policies/`, validated into
//! a typed model with every error located (file:line:column and field), compiled into the
//! kernel's maps, and reloaded on SIGHUP or a change in the directory.

pub mod compile;
pub mod decision;
pub mod enforcement;
pub mod model;
pub mod parse;
pub mod script;
pub mod watcher;

use std::path::Path;

use self::compile::{compile, CompileError, Compiled};
use crate::watch::WatchSet;

/// What caused a policy load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Agent start.
    Start,
    /// SIGHUP (or another explicit request).
    Signal,
    /// A file in the policy directory changed.
    FileChange,
}

impl Trigger {
    /// As reported in events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// Why a policy set was not loaded (the one in force, if any, stays).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file is unreadable or invalid.
    #[error(transparent)]
    Parse(#[from] parse::PolicyError),
    /// The set is valid but does not fit the kernel's tables.
    #[error("{dir}: {source}")]
    Compile {
        /// The policy directory.
        dir: String,
        /// Why.
        #[source]
        source: CompileError,
    },
}

/// Reads, validates and compiles the policies in `dir` (none: observe only) together with the
/// configured `watches`; exec cgroup paths are relative to `cgroup_root`.
pub fn load(
    dir: Option<&Path>,
    watches: &WatchSet,
    cgroup_root: &Path,
) -> Result<Compiled, LoadError> {
    let set = match dir {
        Some(dir) => parse::load_dir(dir)?,
        None => model::PolicySet::default(),
    };
    compile(&set, watches, cgroup_root).map_err(|source| LoadError::Compile {
        dir: dir.map(|d| d.display().to_string()).unwrap_or_default(),
        source,
    })
}
