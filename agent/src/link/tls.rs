//! Mutual TLS 1.3 to the collector. The client configuration and the connection are
//! [`phiguard_support::tls`]'s, shared with the collector's subscribers; what is the agent's
//! own is [`FilesStamp`], which tells the publisher when the files change so renewed
//! certificates take effect without a restart.

use std::{fs, os::unix::fs::MetadataExt as _};

pub use phiguard_support::tls::{client_config, connect, host_of, TlsError, TlsFiles};

/// What the TLS files look like on disk (size, mtime, inode): a change means reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilesStamp(Vec<Option<(u64, i64, i64, u64)>>);

impl FilesStamp {
    /// Stamps the files now.
    pub fn of(files: &TlsFiles) -> FilesStamp {
        FilesStamp(
            [&files.ca, &files.cert, &files.key]
                .iter()
                .map(|p| {
                    fs::metadata(p)
                        .ok()
                        .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
                })
                .collect(),
        )
    }
}
