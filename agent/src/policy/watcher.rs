//! Watching the policy directory: any change to a `*.yaml`/`*.yml` file in it asks for a
//! reload, after a short pause so an editor's several writes become one reload.

use std::{path::Path, time::Duration};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::Trigger;

/// How long the directory must be quiet before a reload.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Watches one directory while alive.
pub struct PolicyWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// The directory could not be watched.
#[derive(Debug, thiserror::Error)]
#[error("watching policy directory {dir}: {source}")]
pub struct WatchError {
    /// The directory.
    pub dir: String,
    /// Why.
    #[source]
    pub source: notify::Error,
}

impl PolicyWatcher {
    /// Starts watching `dir`; every relevant change sends [`Trigger::FileChange`] on `changed`.
    pub fn start(dir: &Path, changed: mpsc::Sender<Trigger>) -> Result<PolicyWatcher, WatchError> {
        let error = |source| WatchError {
            dir: dir.display().to_string(),
            source,
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let relevant = !matches!(event.kind, EventKind::Access(_))
                    && event
                        .paths
                        .iter()
                        .any(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"));
                if relevant {
                    // A full channel already holds a pending reload.
                    let _ = changed.try_send(Trigger::FileChange);
                }
            })
            .map_err(error)?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(error)?;
        Ok(PolicyWatcher { _watcher: watcher })
    }
}
