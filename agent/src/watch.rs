//! What the agent watches: paths (matched in the kernel by device and inode) and TCP ports.
//! The set holds the configured watches and, after them, every path a policy protects; a
//! watch's id never changes while the agent runs, so events read after a reload still name
//! the right path.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::paths::{self, kernel_dev};

/// One watched path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Id the kernel reports in events (index in [`WatchSet::paths`]).
    pub id: u32,
    /// The path as configured, normalised.
    pub path: PathBuf,
    /// The path with symlinks resolved: where the inode really is.
    pub canonical: PathBuf,
    /// Kernel `dev_t` (`MAJOR << 20 | MINOR`) of the inode.
    pub dev: u32,
    /// Inode number.
    pub ino: u64,
    /// A directory (everything below it is watched) rather than a single file.
    pub is_dir: bool,
    /// Configured: every open below it is reported. Otherwise a path a policy protects, where
    /// only governed accesses are.
    pub observed: bool,
}

/// Everything watched.
#[derive(Clone, Debug, Default)]
pub struct WatchSet {
    /// Watched paths; a watch's id is its index.
    pub paths: Vec<Watch>,
    /// Watched TCP ports.
    pub ports: Vec<u16>,
}

/// A watched path that cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("watched path {path}: {source}")]
pub struct WatchError {
    /// The path.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl WatchSet {
    /// Resolves each path to its (device, inode). Paths must exist.
    pub fn new(paths: &[PathBuf], ports: &[u16]) -> Result<WatchSet, WatchError> {
        let mut set = WatchSet {
            paths: Vec::new(),
            ports: ports.to_vec(),
        };
        for path in paths {
            let error = |source| WatchError {
                path: path.clone(),
                source,
            };
            let meta = fs::metadata(path).map_err(error)?;
            let canonical = fs::canonicalize(path).map_err(error)?;
            set.paths.push(Watch {
                id: set.paths.len() as u32,
                path: paths::normalize(path),
                canonical,
                dev: kernel_dev(meta.dev()),
                ino: meta.ino(),
                is_dir: meta.is_dir(),
                observed: true,
            });
        }
        Ok(set)
    }

    /// The id of the watch at `canonical` (a canonical path with metadata `meta`), added as a
    /// protected (not observed) path when new.
    pub fn id_for(&mut self, canonical: &Path, meta: &fs::Metadata) -> u32 {
        let (dev, ino) = (kernel_dev(meta.dev()), meta.ino());
        if let Some(w) = self
            .paths
            .iter()
            .find(|w| w.canonical == canonical && w.dev == dev && w.ino == ino)
        {
            return w.id;
        }
        let id = self.paths.len() as u32;
        self.paths.push(Watch {
            id,
            path: canonical.to_owned(),
            canonical: canonical.to_owned(),
            dev,
            ino,
            is_dir: meta.is_dir(),
            observed: false,
        });
        id
    }

    /// The watch with this id.
    pub fn get(&self, id: u32) -> Option<&Watch> {
        self.paths.get(id as usize)
    }

    /// The first configured watch that covers `path` (an absolute, normalised path), by
    /// configured or canonical location.
    pub fn covering(&self, path: &Path) -> Option<&Watch> {
        self.paths.iter().filter(|w| w.observed).find(|w| {
            let covers = |root: &Path| {
                if w.is_dir {
                    paths::is_within(path, root)
                } else {
                    path == root
                }
            };
            covers(&w.path) || covers(&w.canonical)
        })
    }

    /// Whether `port` is watched.
    pub fn watches_port(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_inode_and_covers_children_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rec.txt");
        fs::write(&file, "x").unwrap();
        let set = WatchSet::new(&[dir.path().to_path_buf(), file.clone()], &[5432]).unwrap();
        assert_eq!(set.paths[0].ino, fs::metadata(dir.path()).unwrap().ino());
        assert!(set.paths[0].is_dir && !set.paths[1].is_dir);
        assert_eq!(set.covering(&file).unwrap().id, 0);
        let sibling = PathBuf::from(format!("{}x/rec.txt", dir.path().display()));
        assert!(set.covering(&sibling).is_none());
        assert!(set.watches_port(5432) && !set.watches_port(5433));
    }

    #[test]
    fn missing_path_is_an_error_naming_it() {
        let err = WatchSet::new(&[PathBuf::from("/nonexistent/phiguard")], &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/phiguard"), "{err}");
    }
}
