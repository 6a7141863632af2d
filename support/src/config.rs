//! The error of a configuration file (the agent's `agent.toml`, the collector's
//! `collector.toml`): one type, so both report a bad file the same way, with its
//! `file:line:column`.

use std::{io, path::PathBuf};

use crate::location::Location;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// TOML syntax, an unknown field or a value of the wrong type.
    #[error("{at}: {message}")]
    Parse {
        /// Where.
        at: Location,
        /// What the parser said.
        message: String,
    },
    /// A well-formed value that is not acceptable.
    #[error("{at}: {field}: {message}")]
    Invalid {
        /// Where.
        at: Location,
        /// The field, as `section.name`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}
