//! A small tmpfs for a test's duration: a disk that fills up on demand.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

/// A tmpfs mounted at a path for the test's duration (unmounted on drop, even on a panic).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. "8m") at `path`.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs at {}", path.display());
        Tmpfs(path.to_owned())
    }

    /// Fills the file system with a file `name` until a write fails (ENOSPC); returns its
    /// path (remove it to free the space) and its length.
    pub fn fill(&self, name: &str) -> (PathBuf, u64) {
        let path = self.0.join(name);
        let mut filler = fs::File::create(&path).unwrap();
        let page = vec![0u8; 4096];
        while filler.write_all(&page).is_ok() {}
        let _ = filler.sync_all();
        let len = filler.metadata().unwrap().len();
        (path, len)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
        {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}
