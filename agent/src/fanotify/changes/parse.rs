//! Parsing the change group's read buffer (fanotify(7), "Information records"): each event's
//! acting process, the inode it concerns and the directory entries it names, by file handle.
//! Pure: nothing here opens a handle.

use std::os::fd::{FromRawFd as _, OwnedFd};

use super::super::sys;

/// `FILEID_INO32_GEN` and `FILEID_INO32_GEN_PARENT`: on ext2/3/4 (the kernel's generic
/// encoder) handles that start with the 32-bit inode number. Other filesystems reuse these
/// type numbers with other layouts (tmpfs puts the generation first).
const FILEID_INO32_GEN: i32 = 1;
const FILEID_INO32_GEN_PARENT: i32 = 2;
/// A file handle as fanotify reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    /// The filesystem id (`__kernel_fsid_t`, as `statfs` gives it).
    pub fsid: [u8; 8],
    /// `file_handle.handle_type`.
    pub handle_type: i32,
    /// `file_handle.f_handle`.
    pub bytes: Vec<u8>,
}

impl Handle {
    /// The inode number the handle names, where its type says it leads with it — on ext2/3/4
    /// only (see [`FILEID_INO32_GEN`]).
    pub fn ino_hint(&self) -> Option<u64> {
        if self.handle_type != FILEID_INO32_GEN && self.handle_type != FILEID_INO32_GEN_PARENT {
            return None;
        }
        let ino: [u8; 4] = self.bytes.get(..4)?.try_into().ok()?;
        Some(u64::from(u32::from_ne_bytes(ino)))
    }
}

/// A directory (by handle) and an entry name in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The directory.
    pub dir: Handle,
    /// The entry's name (`.` for the directory itself).
    pub name: Vec<u8>,
}

/// One notification read from the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A change.
    Change(Box<Change>),
    /// The kernel's queue overflowed: changes were dropped.
    Overflow,
}

/// One change event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `FAN_*` bits.
    pub mask: u64,
    /// The acting process (thread-group id).
    pub pid: u32,
    /// The inode the change concerns (the child of a directory entry event).
    pub object: Option<Handle>,
    /// Its directory and name (`FAN_EVENT_INFO_TYPE_DFID_NAME`).
    pub entry: Option<Named>,
    /// A rename's source.
    pub old: Option<Named>,
    /// A rename's destination.
    pub new: Option<Named>,
}

/// Splits a read buffer into notices (pure: see fanotify(7), "Information records").
pub fn parse(bytes: &[u8]) -> Vec<Notice> {
    let mut out = Vec::new();
    for (meta, event) in sys::events(bytes) {
        let meta_len = usize::from(meta.metadata_len);
        if meta_len > event.len() {
            break;
        }
        if meta.fd >= 0 {
            // Not a FID group's event; close what the kernel gave us.
            // SAFETY: the kernel installed this descriptor for us; nobody else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(meta.fd) });
        }
        if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
            out.push(Notice::Overflow);
        } else {
            let mut change = Change {
                mask: meta.mask,
                pid: meta.pid as u32,
                object: None,
                entry: None,
                old: None,
                new: None,
            };
            parse_infos(&event[meta_len..], &mut change);
            out.push(Notice::Change(Box::new(change)));
        }
    }
    out
}

/// Reads an event's information records into `change`.
fn parse_infos(mut infos: &[u8], change: &mut Change) {
    while infos.len() >= 4 {
        let info_type = infos[0];
        let len = usize::from(u16::from_ne_bytes([infos[2], infos[3]]));
        if len < 4 || len > infos.len() {
            return;
        }
        let body = &infos[4..len];
        match info_type {
            libc::FAN_EVENT_INFO_TYPE_FID => change.object = parse_handle(body).map(|(h, _)| h),
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_DFID
            | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => {
                if let Some((dir, rest)) = parse_handle(body) {
                    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
                    let named = Named {
                        dir,
                        name: rest[..end].to_vec(),
                    };
                    match info_type {
                        libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => change.old = Some(named),
                        libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => change.new = Some(named),
                        _ => change.entry = Some(named),
                    }
                }
            }
            _ => {}
        }
        infos = &infos[len..];
    }
}

/// A `fsid` and `struct file_handle`, and what follows it.
fn parse_handle(body: &[u8]) -> Option<(Handle, &[u8])> {
    let fsid: [u8; 8] = body.get(..8)?.try_into().ok()?;
    let bytes_len = u32::from_ne_bytes(body.get(8..12)?.try_into().ok()?) as usize;
    let handle_type = i32::from_ne_bytes(body.get(12..16)?.try_into().ok()?);
    let end = 16usize.checked_add(bytes_len)?;
    let bytes = body.get(16..end)?.to_vec();
    Some((
        Handle {
            fsid,
            handle_type,
            bytes,
        },
        &body[end..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One information record: header, fsid, `file_handle`, then `name` (NUL-terminated) when
    /// given, padded to four bytes.
    fn info(info_type: u8, handle: &[u8], handle_type: i32, name: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![7u8; 8];
        body.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        body.extend_from_slice(&handle_type.to_ne_bytes());
        body.extend_from_slice(handle);
        if let Some(name) = name {
            body.extend_from_slice(name);
            body.push(0);
        }
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let mut out = vec![info_type, 0];
        out.extend_from_slice(&((body.len() + 4) as u16).to_ne_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn event(mask: u64, pid: i32, infos: &[Vec<u8>]) -> Vec<u8> {
        let header = std::mem::size_of::<libc::fanotify_event_metadata>();
        let len = header + infos.iter().map(Vec::len).sum::<usize>();
        let meta = libc::fanotify_event_metadata {
            event_len: len as u32,
            vers: libc::FANOTIFY_METADATA_VERSION,
            reserved: 0,
            metadata_len: header as u16,
            mask,
            fd: libc::FAN_NOFD,
            pid,
        };
        // SAFETY: plain old data of `header` bytes.
        let mut out =
            unsafe { std::slice::from_raw_parts((&raw const meta).cast::<u8>(), header).to_vec() };
        for i in infos {
            out.extend_from_slice(i);
        }
        out
    }

    #[test]
    fn records_with_directory_handles_names_and_targets_are_parsed() {
        let ino = 4242u32.to_ne_bytes();
        let mut handle = ino.to_vec();
        handle.extend_from_slice(&9u32.to_ne_bytes());
        let mut buf = event(
            libc::FAN_DELETE,
            77,
            &[
                info(
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                    &[1, 2, 3, 4, 5, 6, 7, 8],
                    1,
                    Some(b"record.txt"),
                ),
                info(
                    libc::FAN_EVENT_INFO_TYPE_FID,
                    &handle,
                    FILEID_INO32_GEN,
                    None,
                ),
            ],
        );
        buf.extend(event(
            libc::FAN_RENAME,
            78,
            &[
                info(
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                    &[1; 8],
                    1,
                    Some(b"a"),
                ),
                info(
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    &[2; 8],
                    1,
                    Some(b"bb"),
                ),
            ],
        ));
        buf.extend(event(libc::FAN_Q_OVERFLOW, 0, &[]));
        let notices = parse(&buf);
        assert_eq!(notices.len(), 3);
        let Notice::Change(delete) = &notices[0] else {
            panic!("{notices:?}")
        };
        assert_eq!((delete.mask, delete.pid), (libc::FAN_DELETE, 77));
        let entry = delete.entry.as_ref().unwrap();
        assert_eq!(entry.name, b"record.txt");
        assert_eq!(entry.dir.fsid, [7; 8]);
        assert_eq!(entry.dir.bytes, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(delete.object.as_ref().unwrap().ino_hint(), Some(4242));
        let Notice::Change(rename) = &notices[1] else {
            panic!("{notices:?}")
        };
        assert_eq!(rename.old.as_ref().unwrap().name, b"a");
        assert_eq!(rename.new.as_ref().unwrap().name, b"bb");
        assert_eq!(rename.new.as_ref().unwrap().dir.bytes, [2; 8]);
        assert!(rename.object.is_none() && rename.entry.is_none());
        assert_eq!(notices[2], Notice::Overflow);
    }

    #[test]
    fn a_cut_record_ends_the_parse() {
        let buf = event(
            libc::FAN_ATTRIB,
            5,
            &[info(libc::FAN_EVENT_INFO_TYPE_FID, &[1; 8], 1, None)],
        );
        assert!(parse(&buf[..buf.len() - 1]).is_empty());
        // An information record claiming more than its event holds is skipped.
        let mut bad = buf.clone();
        let at = std::mem::size_of::<libc::fanotify_event_metadata>() + 2;
        bad[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        let notices = parse(&bad);
        assert!(matches!(&notices[..], [Notice::Change(c)] if c.object.is_none()));
    }
}
