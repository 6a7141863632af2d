//! Paths and file identities. Pure path arithmetic for file-open events (lexical
//! normalisation, resolution against a base directory, containment, assembling the dentry
//! names the kernel reports), and a file's identity as the kernel sees it ([`FileId`]: the
//! kernel's device encoding and the inode), which watches, policies and events share.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

/// A file's identity as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    /// Kernel `dev_t` (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The (device, inode) of `path`, following symlinks.
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let meta = fs::metadata(path)?;
        Ok(FileId {
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
        })
    }
}

/// Converts a user-space `st_dev` to the kernel's internal `dev_t` encoding, which is what
/// `super_block.s_dev` holds.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xfffff)
}

/// Collapses `//`, `.` and `..` without touching the filesystem. `..` at `/` stays `/`; a
/// relative input stays relative and keeps leading `..`.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(component),
            },
            other => out.push(other),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

/// An absolute path for `requested`: itself if absolute, else joined to `base`; normalised.
/// `None` when the path is relative and there is no base.
pub fn resolve(requested: &Path, base: Option<&Path>) -> Option<PathBuf> {
    if requested.is_absolute() {
        return Some(normalize(requested));
    }
    Some(normalize(&base?.join(requested)))
}

/// Whether `path` is `root` or below it, component by component (`/srv/ephi2` is not within
/// `/srv/ephi`).
pub fn is_within(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

/// Builds `root/…/leaf` from dentry names reported innermost first.
pub fn join_names(root: &Path, names_innermost_first: &[&str]) -> PathBuf {
    let mut path = root.to_path_buf();
    for name in names_innermost_first.iter().rev() {
        path.push(name);
    }
    path
}

/// Splits NUL-terminated names (lossy UTF-8), at most `count`; a missing final NUL is
/// tolerated.
pub fn split_names(bytes: &[u8], count: usize) -> Vec<String> {
    if count == 0 || bytes.is_empty() {
        return Vec::new();
    }
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    trimmed
        .split(|b| *b == 0)
        .take(count)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Walks everything below directory `root` that lies on `root`'s own filesystem, depth first,
/// without following symbolic links below it (`root` itself is followed, so a
/// `/proc/self/fd/N` works), calling `visit` with each entry's path and `lstat` until it
/// returns false.
pub fn walk_filesystem_tree(root: &Path, mut visit: impl FnMut(&Path, &fs::Metadata) -> bool) {
    let Ok(meta) = fs::metadata(root) else {
        return;
    };
    let dev = meta.dev();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != dev {
                continue; // another filesystem mounted inside: not this tree
            }
            let path = entry.path();
            if !visit(&path, &meta) {
                return;
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encoding() {
        // 8:1 (sda1) in user-space encoding is 0x801; the kernel keeps major << 20.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
    }

    #[test]
    fn normalizes_lexically() {
        for (input, expected) in [
            ("/srv//ephi/./a", "/srv/ephi/a"),
            ("/srv/ephi/../x", "/srv/x"),
            ("/../..", "/"),
            ("/", "/"),
            ("a/../../b", "../b"),
            ("./a/", "a"),
            (".", "."),
        ] {
            assert_eq!(
                normalize(Path::new(input)),
                PathBuf::from(expected),
                "{input}"
            );
        }
    }

    #[test]
    fn resolves_against_base() {
        assert_eq!(
            resolve(Path::new("./rec.txt"), Some(Path::new("/srv/ephi"))),
            Some("/srv/ephi/rec.txt".into())
        );
        assert_eq!(
            resolve(Path::new("../ephi/x"), Some(Path::new("/srv/other"))),
            Some("/srv/ephi/x".into())
        );
        assert_eq!(resolve(Path::new("/a/../b"), None), Some("/b".into()));
        assert_eq!(resolve(Path::new("rel"), None), None);
    }

    #[test]
    fn containment_is_by_component() {
        assert!(is_within(Path::new("/srv/ephi/a"), Path::new("/srv/ephi")));
        assert!(is_within(Path::new("/srv/ephi"), Path::new("/srv/ephi")));
        assert!(!is_within(
            Path::new("/srv/ephi2/a"),
            Path::new("/srv/ephi")
        ));
        assert!(is_within(Path::new("/etc/shadow"), Path::new("/")));
    }

    #[test]
    fn names_round_trip() {
        let names = split_names(b"rec.txt\0sub\0", 2);
        assert_eq!(names, ["rec.txt", "sub"]);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            join_names(Path::new("/srv/ephi"), &refs),
            PathBuf::from("/srv/ephi/sub/rec.txt")
        );
        assert_eq!(split_names(b"a\0b", 5), ["a", "b"]);
        assert_eq!(split_names(b"a\0b\0c\0", 2), ["a", "b"]);
        assert!(split_names(b"", 3).is_empty());
        assert_eq!(
            join_names(Path::new("/srv/ephi/f"), &[]),
            PathBuf::from("/srv/ephi/f")
        );
    }
}
