//! `script:` subjects: a script is recognised at exec by the path the caller executed, which
//! the interpreter opens again. That is sound only where no one but root can make that path
//! reach another file, so each path a script is recognised by must pass only through root's
//! directories and links, and the script itself must be root's alone.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
};

use phiguard_common::limits::PATH_LEN;

use crate::paths::FileId;

/// Group- and other-write mode bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;
/// The sticky bit: in such a directory only an entry's owner (or root) renames or removes it.
const STICKY: u32 = 0o1000;
/// Links followed before giving up (the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// A script a policy names, checked: its file, and the paths it is recognised by at exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedScript {
    /// The script's (device, inode).
    pub id: FileId,
    /// The path as the policy gives it and its canonical path (one entry when they are equal).
    pub paths: Vec<PathBuf>,
}

/// Checks the script at `path` (absolute): every directory on the way, and every link followed,
/// is root's and writable by no one else (a world-writable directory is accepted when it is
/// sticky, since its next entry, root's, cannot then be replaced); the script is a regular file
/// owned by root, writable by no one else; both paths fit the kernel's copy. The reason
/// otherwise.
pub fn check(path: &Path) -> Result<CheckedScript, String> {
    let canonical = check_path(path, 0)?;
    let id = FileId::of(&canonical).map_err(|e| e.to_string())?;
    let mut paths = vec![path.to_owned()];
    if canonical != path {
        paths.push(canonical);
    }
    for p in &paths {
        if p.as_os_str().len() >= PATH_LEN {
            return Err(format!(
                "{} is longer than the {} bytes the kernel compares",
                p.display(),
                PATH_LEN - 1
            ));
        }
    }
    Ok(CheckedScript { id, paths })
}

/// Walks `path` component by component (following links) and returns where it leads.
fn check_path(path: &Path, links: usize) -> Result<PathBuf, String> {
    if links > MAX_LINKS {
        return Err("too many levels of symbolic links".into());
    }
    let mut at = PathBuf::from("/");
    let components: Vec<Component<'_>> = path.components().collect();
    for (i, component) in components.iter().enumerate() {
        let name = match component {
            Component::RootDir => continue,
            Component::Normal(name) => name,
            _ => {
                return Err(format!(
                    "{} is not a normalised absolute path",
                    path.display()
                ))
            }
        };
        let dir_meta = fs::metadata(&at).map_err(|e| format!("{}: {e}", at.display()))?;
        let mode = dir_meta.permissions().mode();
        if dir_meta.uid() != 0 || (mode & WRITABLE_BY_OTHERS != 0 && mode & STICKY == 0) {
            return Err(format!(
                "directory {} is not root's alone (owner {}, mode {:o})",
                at.display(),
                dir_meta.uid(),
                mode & 0o7777
            ));
        }
        let next = at.join(name);
        let meta = fs::symlink_metadata(&next).map_err(|e| format!("{}: {e}", next.display()))?;
        if meta.uid() != 0 {
            return Err(format!(
                "{} is not root's (owner {})",
                next.display(),
                meta.uid()
            ));
        }
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            let mut rest = crate::paths::normalize(&at.join(target));
            for later in &components[i + 1..] {
                rest.push(later);
            }
            return check_path(&crate::paths::normalize(&rest), links + 1);
        }
        at = next;
    }
    let meta = fs::metadata(&at).map_err(|e| format!("{}: {e}", at.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", at.display()));
    }
    if meta.permissions().mode() & WRITABLE_BY_OTHERS != 0 {
        return Err(format!(
            "{} is writable by others than root (mode {:o})",
            at.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{chown, symlink};

    use super::*;

    /// A root-owned directory under the system's temporary directory (these tests run as root
    /// in CI; as another user they only check what needs no ownership).
    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_script_reached_only_through_roots_directories_and_links_is_accepted() {
        if !root() {
            return;
        }
        let d = dir();
        let script = d.path().join("export.sh");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let checked = check(&script).expect("root's alone");
        assert_eq!(checked.paths, std::slice::from_ref(&script));
        assert_eq!(checked.id, FileId::of(&script).unwrap());
        let link = d.path().join("export");
        symlink("export.sh", &link).unwrap();
        let checked = check(&link).expect("a link of root's");
        assert_eq!(checked.paths, [link.clone(), script.clone()]);
    }

    #[test]
    fn a_path_another_user_can_change_is_refused() {
        if !root() {
            return;
        }
        let d = dir();
        let script = d.path().join("export.sh");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(check(&script).unwrap_err().contains("writable by others"));
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let sub = d.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o777)).unwrap();
        fs::copy(&script, sub.join("s")).unwrap();
        assert!(check(&sub.join("s"))
            .unwrap_err()
            .contains("not root's alone"));
        let link = d.path().join("users-link");
        symlink(&script, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        assert!(check(&link).unwrap_err().contains("not root's"));
        let theirs = d.path().join("theirs.sh");
        fs::copy(&script, &theirs).unwrap();
        chown(&theirs, Some(65534), None).unwrap();
        assert!(check(&theirs).is_err());
    }
}
