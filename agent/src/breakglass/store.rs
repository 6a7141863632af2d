//! The break-glass directory: one `<id>.json` file per grant, root's alone (directory 0700,
//! files 0600), each written whole (temporary file, fsync, rename, fsync of the directory), so
//! a reader never sees half a grant and a written grant survives a crash. Writers (the CLI)
//! hold an exclusive `flock` on the directory while they pick a slot and write.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use phiguard_common::maps::MAX_GRANTS;

use super::grant::{valid_id, Grant};

/// Where grants are kept unless `--break-glass-dir` (or `PHIGUARD_BREAK_GLASS_DIR`) says
/// otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/phiguard/break-glass";
/// The file in the directory that keeps the last grant generation handed out.
pub const GENERATION_FILE: &str = "generation";

/// A problem with the break-glass directory or one of its files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory or a file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The directory is not root's alone.
    #[error("{path}: must be a directory owned by root with mode 0700 (it is {detail})")]
    Unsafe {
        /// What.
        path: PathBuf,
        /// What it is instead.
        detail: String,
    },
    /// A grant file does not hold a grant.
    #[error("{path}: not a grant: {message}")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Every slot is taken.
    #[error("{MAX_GRANTS} grants exist already (revoke one, or wait for one to expire)")]
    Full,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `CLOCK_BOOTTIME` nanoseconds now: the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// This boot's id.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The login uid of this process (`u32::MAX` when unset): the person behind `sudo`.
pub fn own_loginuid() -> u32 {
    fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

/// The break-glass directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// A held `flock` on the directory (released when dropped).
pub struct Lock(#[expect(dead_code, reason = "held for its drop")] nix::fcntl::Flock<fs::File>);

impl Store {
    /// The directory at `dir` (not touched yet).
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_owned(),
        }
    }

    /// Its path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (0700) if it is missing, and checks it is root's alone.
    pub fn ensure(&self) -> Result<(), StoreError> {
        if !self.dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(io_error(&self.dir))?;
        }
        self.check()
    }

    /// Checks the directory is root's alone: a grant anyone else could write would be a way
    /// around every policy.
    pub fn check(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::symlink_metadata(&self.dir).map_err(io_error(&self.dir))?;
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.is_dir() || meta.uid() != 0 || mode & 0o077 != 0 {
            return Err(StoreError::Unsafe {
                path: self.dir.clone(),
                detail: format!(
                    "{}, owner uid {}, mode {mode:04o}",
                    if meta.is_dir() {
                        "a directory"
                    } else {
                        "not a directory"
                    },
                    meta.uid()
                ),
            });
        }
        Ok(())
    }

    /// Takes the writers' lock.
    pub fn lock(&self) -> Result<Lock, StoreError> {
        let dir = fs::File::open(&self.dir).map_err(io_error(&self.dir))?;
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
            .map(Lock)
            .map_err(|(_, errno)| StoreError::Io {
                path: self.dir.clone(),
                source: io::Error::from(errno),
            })
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Every grant file, by id; files that are not grants are returned as errors beside them.
    pub fn list(&self) -> Result<(Vec<Grant>, Vec<StoreError>), StoreError> {
        let mut grants = Vec::new();
        let mut bad = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let entry = entry.map_err(io_error(&self.dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue; // temporary files (`.<id>.json.tmp`), anything else
            };
            if !valid_id(id) {
                continue;
            }
            match self.read(id) {
                Ok(grant) => grants.push(grant),
                Err(e) => bad.push(e),
            }
        }
        grants.sort_by(|a, b| a.granted_at_ms.cmp(&b.granted_at_ms).then(a.id.cmp(&b.id)));
        Ok((grants, bad))
    }

    /// The grant `id`.
    pub fn read(&self, id: &str) -> Result<Grant, StoreError> {
        let path = self.path_of(id);
        let text = fs::read_to_string(&path).map_err(io_error(&path))?;
        let grant: Grant = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if grant.id != id || grant.slot >= MAX_GRANTS {
            return Err(StoreError::Corrupt {
                path,
                message: format!("id {:?} or slot {} does not fit", grant.id, grant.slot),
            });
        }
        Ok(grant)
    }

    /// Writes `grant` whole (temporary file, fsync, rename, fsync of the directory).
    pub fn write(&self, grant: &Grant) -> Result<(), StoreError> {
        let path = self.path_of(&grant.id);
        let tmp = self.dir.join(format!(".{}.json.tmp", grant.id));
        let text = serde_json::to_string_pretty(grant).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error(&tmp))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(io_error(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_error(&path))?;
        self.sync_dir()
    }

    /// Removes grant `id`'s file (gone already: fine).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        let dir = fs::File::open(&self.dir).map_err(io_error(&self.dir))?;
        dir.sync_all().map_err(io_error(&self.dir))
    }

    /// The next grant generation (call with the lock held): one more than the last one handed
    /// out (kept in the directory's `generation` file) and than any grant file's, never 0.
    pub fn next_generation(&self, grants: &[Grant]) -> Result<u32, StoreError> {
        let path = self.dir.join(GENERATION_FILE);
        let last = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u32>().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_error(&path)(e)),
        };
        let last = grants.iter().map(|g| g.generation).fold(last, u32::max);
        let next = last.checked_add(1).unwrap_or(1);
        let tmp = self.dir.join(".generation.tmp");
        fs::write(&tmp, format!("{next}\n"))
            .and_then(|()| fs::File::open(&tmp)?.sync_all())
            .map_err(io_error(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_error(&path))?;
        self.sync_dir()?;
        Ok(next)
    }

    /// The lowest slot no grant file holds (call with the lock held).
    pub fn free_slot(grants: &[Grant]) -> Result<u32, StoreError> {
        (0..MAX_GRANTS)
            .find(|slot| grants.iter().all(|g| g.slot != *slot))
            .ok_or(StoreError::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breakglass::grant::{new_id, Scope};

    fn grant(slot: u32) -> Grant {
        Grant {
            id: new_id(),
            slot,
            generation: slot + 1,
            reason: "test".into(),
            scope: Scope::User {
                uid: 65534,
                name: "nobody".into(),
            },
            granted_by_loginuid: 1000,
            granted_at_ms: now_ms(),
            duration_secs: 60,
            expires_at_ms: now_ms() + 60_000,
            boot_id: boot_id(),
            expires_boot_ns: boot_ns() + 60_000_000_000,
            announced: false,
            revoked: None,
        }
    }

    #[test]
    fn grants_are_written_whole_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(&tmp.path().join("bg"));
        store.ensure().unwrap_or_else(|e| {
            // Only root owns what it creates; elsewhere the ownership check refuses.
            assert!(matches!(e, StoreError::Unsafe { .. }), "{e}");
        });
        let mode = fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let first = grant(0);
        store.write(&first).unwrap();
        let file_mode = fs::metadata(store.dir().join(format!("{}.json", first.id)))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(file_mode, 0o600);
        fs::write(store.dir().join("bg-000000000000.json"), "{").unwrap();
        fs::write(store.dir().join("notes.txt"), "ignored").unwrap();
        let (grants, bad) = store.list().unwrap();
        assert_eq!(grants, std::slice::from_ref(&first));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(Store::free_slot(&grants).unwrap(), 1);
        store.remove(&first.id).unwrap();
        store.remove(&first.id).unwrap();
        assert!(store.list().unwrap().0.is_empty());
    }

    #[test]
    fn generations_never_repeat_when_a_slot_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let first = store.next_generation(&[]).unwrap();
        let second = store.next_generation(&[]).unwrap();
        assert!(first > 0 && second > first, "{first} {second}");
        // A grant file newer than the counter (the counter file lost): still above it.
        let mut newer = grant(0);
        newer.generation = 40;
        assert_eq!(store.next_generation(&[newer]).unwrap(), 41);
        fs::remove_file(tmp.path().join(GENERATION_FILE)).unwrap();
        assert_eq!(store.next_generation(&[]).unwrap(), 1);
    }

    #[test]
    fn slots_are_reused_lowest_first_and_run_out() {
        assert_eq!(Store::free_slot(&[grant(0), grant(2)]).unwrap(), 1);
        let all: Vec<Grant> = (0..MAX_GRANTS).map(grant).collect();
        assert!(matches!(Store::free_slot(&all), Err(StoreError::Full)));
    }
}
