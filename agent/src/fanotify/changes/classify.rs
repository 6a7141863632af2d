//! Naming the operation a change was, from its event's mask and the inode's `stat` before and
//! after (pure).

use phiguard_common::event::open_syscall;

use super::attrs::Attrs;

/// The operation an attribute change (`FAN_ATTRIB`) was, from the inode's `stat` before and
/// after; `None` when it is one the `FAN_DELETE`/`FAN_RENAME` report covers (fewer links).
pub fn classify_attrib(before: Option<&Attrs>, after: &Attrs) -> Option<u32> {
    if after.nlink == 0 {
        return None; // unlinked: the `FAN_DELETE` report names it
    }
    let Some(before) = before else {
        // utimes/touch set the modification time to the change time; nothing else does.
        return Some(if after.mtime_ns == after.ctime_ns {
            open_syscall::UTIMES
        } else {
            open_syscall::ATTRIB
        });
    };
    Some(if before.uid != after.uid || before.gid != after.gid {
        open_syscall::CHOWN
    } else if before.mode != after.mode {
        open_syscall::CHMOD
    } else if after.nlink > before.nlink {
        open_syscall::LINK
    } else if after.nlink < before.nlink {
        return None;
    } else if before.mtime_ns != after.mtime_ns || before.atime_ns != after.atime_ns {
        open_syscall::UTIMES
    } else {
        match (before.xattrs, after.xattrs) {
            (Some(b), Some(a)) if a > b => open_syscall::SETXATTR,
            (Some(b), Some(a)) if a < b => open_syscall::REMOVEXATTR,
            // An attribute value replaced, an ACL set, a chmod or chown to what it was.
            _ => open_syscall::ATTRIB,
        }
    })
}

/// The operation a `FAN_MODIFY` was: `truncate` when the file shrank (or, with nothing to
/// compare with, is empty), else `write`.
pub fn classify_modify(before: Option<&Attrs>, after: &Attrs) -> u32 {
    match before {
        Some(before) if after.size < before.size => open_syscall::TRUNCATE,
        None if after.size == 0 => open_syscall::TRUNCATE,
        _ => open_syscall::WRITE,
    }
}

/// The operation of a directory entry event (`linked`: the entry is a further name of a
/// protected inode).
pub fn classify_entry(mask: u64, linked: bool) -> Option<u32> {
    let dir = mask & libc::FAN_ONDIR != 0;
    Some(if mask & libc::FAN_RENAME != 0 {
        open_syscall::RENAME
    } else if mask & libc::FAN_DELETE != 0 {
        if dir {
            open_syscall::RMDIR
        } else {
            open_syscall::UNLINK
        }
    } else if mask & libc::FAN_CREATE != 0 {
        // A new name for an inode already protected is a link to it.
        if linked && !dir {
            open_syscall::LINK
        } else {
            open_syscall::CREATE
        }
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> Attrs {
        Attrs {
            mode: 0o100_666,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 34,
            mtime_ns: 10,
            atime_ns: 10,
            ctime_ns: 10,
            xattrs: Some(0),
        }
    }

    #[test]
    fn attribute_changes_are_named_from_the_stat_before() {
        let before = attrs();
        let changed = |f: &dyn Fn(&mut Attrs)| {
            let mut a = before;
            a.ctime_ns = 20;
            f(&mut a);
            classify_attrib(Some(&before), &a)
        };
        assert_eq!(changed(&|a| a.uid = 65534), Some(open_syscall::CHOWN));
        assert_eq!(changed(&|a| a.mode = 0o100_777), Some(open_syscall::CHMOD));
        assert_eq!(changed(&|a| a.nlink = 2), Some(open_syscall::LINK));
        assert_eq!(changed(&|a| a.nlink = 0), None);
        assert_eq!(changed(&|a| a.mtime_ns = 20), Some(open_syscall::UTIMES));
        assert_eq!(
            changed(&|a| a.xattrs = Some(1)),
            Some(open_syscall::SETXATTR)
        );
        assert_eq!(changed(&|_| ()), Some(open_syscall::ATTRIB));
        let mut with = before;
        with.xattrs = Some(2);
        let mut fewer = with;
        fewer.xattrs = Some(1);
        assert_eq!(
            classify_attrib(Some(&with), &fewer),
            Some(open_syscall::REMOVEXATTR)
        );
        // Nothing to compare with.
        let mut touched = before;
        (touched.mtime_ns, touched.ctime_ns) = (30, 30);
        assert_eq!(classify_attrib(None, &touched), Some(open_syscall::UTIMES));
        assert_eq!(
            classify_attrib(
                None,
                &Attrs {
                    ctime_ns: 40,
                    ..touched
                }
            ),
            Some(open_syscall::ATTRIB)
        );
    }

    #[test]
    fn a_modification_is_a_truncate_when_the_file_shrank() {
        let before = attrs();
        let shrunk = Attrs { size: 0, ..before };
        let grown = Attrs { size: 50, ..before };
        assert_eq!(
            classify_modify(Some(&before), &shrunk),
            open_syscall::TRUNCATE
        );
        assert_eq!(classify_modify(Some(&before), &grown), open_syscall::WRITE);
        assert_eq!(classify_modify(None, &shrunk), open_syscall::TRUNCATE);
        assert_eq!(classify_modify(None, &grown), open_syscall::WRITE);
    }

    #[test]
    fn directory_entry_events_are_named_by_their_mask() {
        assert_eq!(
            classify_entry(libc::FAN_DELETE, false),
            Some(open_syscall::UNLINK)
        );
        assert_eq!(
            classify_entry(libc::FAN_DELETE | libc::FAN_ONDIR, false),
            Some(open_syscall::RMDIR)
        );
        assert_eq!(
            classify_entry(libc::FAN_RENAME, true),
            Some(open_syscall::RENAME)
        );
        assert_eq!(
            classify_entry(libc::FAN_CREATE, false),
            Some(open_syscall::CREATE)
        );
        assert_eq!(
            classify_entry(libc::FAN_CREATE, true),
            Some(open_syscall::LINK)
        );
        assert_eq!(
            classify_entry(libc::FAN_CREATE | libc::FAN_ONDIR, true),
            Some(open_syscall::CREATE)
        );
        assert_eq!(classify_entry(libc::FAN_ATTRIB, false), None);
    }
}
