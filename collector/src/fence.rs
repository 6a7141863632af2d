//! The store's fence: a token in a file of the store directory that only the current store
//! writer of the fleet layout may append under.
//!
//! The writer lease ([`crate::jetstream::lease`]) is a timeout: a writer paused past its
//! lease (SIGSTOP, a stall, a VM pause) that resumes before its renewal timer runs does not
//! yet know it lost the lease. The fence closes that window in the store itself:
//!
//! - Each writer's token is the JetStream key-value revision at which it took the lease;
//!   revisions only grow, so a later writer always has a larger token.
//! - A writer taking over **raises** the fence to its token (file [`FENCE_FILE`], under an
//!   exclusive `flock`, fsync'd) before it opens the store, and refuses if the fence is
//!   already higher.
//! - Every append batch (and every retention pass and signed checkpoint) **holds** the fence:
//!   a shared `flock` on a fresh descriptor, taken before anything is written and kept until
//!   the write is fsync'd, and a check that the fence still holds this writer's token. A raise waits for
//!   batches in progress to end, and every batch after it sees the new token and is refused.
//!
//! So once a new writer has raised the fence, no byte of an older writer reaches the store.
//! It assumes that every writer sees the same store directory and that `flock` works across
//! them (one host, or shared storage whose locks are honoured, such as NFSv4).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

/// The fence's file name in the store directory.
pub const FENCE_FILE: &str = "writer.fence";

/// The exit status of a store writer fenced off by a newer one (as of one that lost its
/// lease: its unit restarts it, and it comes back as a standby).
pub const FENCED_EXIT: i32 = 75;

/// A store writer's fence: the file and this writer's token.
#[derive(Debug)]
pub struct Fence {
    path: PathBuf,
    token: u64,
}

/// The fence held for one batch: the shared lock lasts as long as this value.
#[derive(Debug)]
pub struct FenceHeld {
    _file: File,
}

/// Why the fence refused, or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The file could not be opened, locked, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The fence file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file does not hold a token.
    #[error("{}: line 1: token: {text:?} is not a number", path.display())]
    Unreadable {
        /// The fence file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
    /// Another writer raised the fence: this one may write no more.
    #[error("{}: the fence holds token {fence}, not this writer's {token}: another collector took over the store", path.display())]
    Stale {
        /// The fence file.
        path: PathBuf,
        /// The token in the fence.
        fence: u64,
        /// This writer's token.
        token: u64,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FenceError + '_ {
    move |source| FenceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `flock(2)` on `file`, waiting for it.
fn flock(file: &File, path: &Path, operation: libc::c_int) -> Result<(), FenceError> {
    loop {
        // SAFETY: flock on a descriptor this function borrows for the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(io_error(path)(error));
        }
    }
}

/// The token in `file` (0 when it is empty: no writer raised it yet).
fn read_token(file: &mut File, path: &Path) -> Result<u64, FenceError> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).map_err(io_error(path))?;
    file.take(64)
        .read_to_string(&mut text)
        .map_err(io_error(path))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(0);
    }
    trimmed.parse().map_err(|_| FenceError::Unreadable {
        path: path.to_owned(),
        text: trimmed.to_owned(),
    })
}

impl Fence {
    /// Raises the fence of the store in `dir` to `token` (creating the directory and file when
    /// missing), waiting for batches in progress under an older token to end. Refuses with
    /// [`FenceError::Stale`] when the fence is already above `token`.
    pub fn raise(dir: &Path, token: u64) -> Result<Fence, FenceError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let path = dir.join(FENCE_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        if let Err(FenceError::Io { source, .. }) =
            flock(&file, &path, libc::LOCK_EX | libc::LOCK_NB)
        {
            if source.kind() != io::ErrorKind::WouldBlock {
                return Err(io_error(&path)(source));
            }
            tracing::warn!(fence = %path.display(), "a batch of the previous store writer is in progress (it holds the fence): waiting for it to end; a writer paused in the middle of a batch holds it until it runs again or dies");
            flock(&file, &path, libc::LOCK_EX)?;
        }
        let fence = read_token(&mut file, &path)?;
        if fence > token {
            return Err(FenceError::Stale { path, fence, token });
        }
        // One short write at offset 0 after cutting the file: a crash leaves the old token, an
        // empty file (read as 0, raised again by the next writer) or the new one.
        file.set_len(0).map_err(io_error(&path))?;
        file.seek(SeekFrom::Start(0)).map_err(io_error(&path))?;
        file.write_all(format!("{token}\n").as_bytes())
            .map_err(io_error(&path))?;
        file.sync_all().map_err(io_error(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
        Ok(Fence { path, token })
    }

    /// This writer's token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Holds the fence for one batch: waits for a raise in progress, then checks that the
    /// fence still holds this writer's token. Refuses with [`FenceError::Stale`] otherwise.
    pub fn hold(&self) -> Result<FenceHeld, FenceError> {
        let mut file = File::open(&self.path).map_err(io_error(&self.path))?;
        flock(&file, &self.path, libc::LOCK_SH)?;
        let fence = read_token(&mut file, &self.path)?;
        if fence != self.token {
            return Err(FenceError::Stale {
                path: self.path.clone(),
                fence,
                token: self.token,
            });
        }
        Ok(FenceHeld { _file: file })
    }

    /// [`Fence::hold`] for a write of the store's (`what`): a fence raised by another writer
    /// ends the process at once, logged — this one lost the store, and nothing may be
    /// written. Only a fence that cannot be read is returned as an error.
    pub fn hold_or_end(&self, what: &str) -> Result<FenceHeld, FenceError> {
        match self.hold() {
            Err(stale @ FenceError::Stale { .. }) => {
                tracing::error!(error = %stale, what, "store writer fenced off: another collector writes the store now; stopping at once, nothing written");
                std::process::exit(FENCED_EXIT);
            }
            held => held,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::mpsc,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn a_writer_holds_its_fence_until_a_later_one_raises_it() {
        let dir = tempfile::tempdir().unwrap();
        let old = Fence::raise(dir.path(), 7).unwrap();
        drop(old.hold().unwrap());
        let new = Fence::raise(dir.path(), 9).unwrap();
        assert!(new.hold().is_ok());
        match old.hold() {
            Err(FenceError::Stale { fence, token, .. }) => assert_eq!((fence, token), (9, 7)),
            other => panic!("the old writer held a raised fence: {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FENCE_FILE)).unwrap(),
            "9\n"
        );
    }

    #[test]
    fn an_older_writer_cannot_raise_the_fence_back() {
        let dir = tempfile::tempdir().unwrap();
        let new = Fence::raise(dir.path(), 12).unwrap();
        assert!(matches!(
            Fence::raise(dir.path(), 11),
            Err(FenceError::Stale {
                fence: 12,
                token: 11,
                ..
            })
        ));
        assert!(new.hold().is_ok(), "a refused raise changed the fence");
    }

    #[test]
    fn a_raise_waits_for_the_batch_in_progress_and_the_next_batch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = Fence::raise(dir.path(), 3).unwrap();
        let batch = old.hold().unwrap();
        let (raised, done) = mpsc::channel();
        let path = dir.path().to_owned();
        let raiser = std::thread::spawn(move || {
            let fence = Fence::raise(&path, 4).unwrap();
            raised.send(Instant::now()).unwrap();
            fence
        });
        assert!(
            done.recv_timeout(Duration::from_millis(300)).is_err(),
            "the fence was raised under a batch in progress"
        );
        let ended = Instant::now();
        drop(batch);
        let raised_at = done.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(raised_at >= ended);
        let new = raiser.join().unwrap();
        assert!(matches!(old.hold(), Err(FenceError::Stale { .. })));
        assert!(new.hold().is_ok());
    }

    #[test]
    fn a_fence_that_is_not_a_token_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FENCE_FILE), "seven\n").unwrap();
        let error = Fence::raise(dir.path(), 8).unwrap_err();
        assert!(
            error.to_string().ends_with(&format!(
                "{}: line 1: token: \"seven\" is not a number",
                FENCE_FILE
            )),
            "{error}"
        );
    }
}
