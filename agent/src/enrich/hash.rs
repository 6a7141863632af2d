//! sha256 of executables, cached by (device, inode, mtime, size) so a replaced binary gets a
//! new hash and an unchanged one is read once.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use sha2::{Digest, Sha256};
use tracing::debug;

/// Entries kept before the cache is cleared.
const MAX_ENTRIES: usize = 4096;

/// Identity of one version of a file.
type FileVersion = (u64, u64, i64, i64, u64);

/// Hashes files, remembering results per file version.
#[derive(Debug)]
pub struct BinaryHasher {
    max_bytes: u64,
    cache: HashMap<FileVersion, String>,
}

impl BinaryHasher {
    /// A hasher that skips files larger than `max_bytes`.
    pub fn new(max_bytes: u64) -> BinaryHasher {
        BinaryHasher {
            max_bytes,
            cache: HashMap::new(),
        }
    }

    /// Hex sha256 of the file at `path` (`/proc/<pid>/exe` works), or `None` when it cannot
    /// be read or is larger than the limit.
    pub fn sha256_of(&mut self, path: &Path) -> Option<String> {
        match self.try_hash(path) {
            Ok(hash) => hash,
            Err(error) => {
                debug!(path = %path.display(), %error, "not hashed");
                None
            }
        }
    }

    fn try_hash(&mut self, path: &Path) -> io::Result<Option<String>> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.size() > self.max_bytes {
            debug!(path = %path.display(), size = meta.size(), limit = self.max_bytes, "binary larger than hash_max_bytes: not hashed");
            return Ok(None);
        }
        let version = (
            meta.dev(),
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.size(),
        );
        if let Some(hash) = self.cache.get(&version) {
            return Ok(Some(hash.clone()));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hash = hex::encode(hasher.finalize());
        if self.cache.len() >= MAX_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(version, hash.clone());
        Ok(Some(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_cache_and_invalidation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bin");
        std::fs::write(&file, "abc").unwrap();
        let mut hasher = BinaryHasher::new(1024);
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hasher.sha256_of(&file).as_deref(), Some(abc));
        assert_eq!(hasher.sha256_of(&file).as_deref(), Some(abc));
        assert_eq!(hasher.cache.len(), 1);
        std::fs::write(&file, "abcd").unwrap();
        assert_ne!(
            hasher.sha256_of(&file).as_deref(),
            Some(abc),
            "a changed file is hashed again"
        );
    }

    #[test]
    fn too_large_or_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        std::fs::write(&file, vec![0u8; 2048]).unwrap();
        assert_eq!(BinaryHasher::new(1024).sha256_of(&file), None);
        assert_eq!(
            BinaryHasher::new(1024).sha256_of(&dir.path().join("missing")),
            None
        );
    }
}
