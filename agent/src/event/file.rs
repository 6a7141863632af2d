//! File records decoded: the requested path and the kernel's dentry names as text, the
//! file's identity as a [`FileId`].

use phiguard_common::{
    event::{FileOpenEvent, Sender},
    policy::Decision,
};

use super::{decode::text, header::Header};
use crate::paths::{split_names, FileId};

/// An open (or, under BPF LSM, a change) of a watched or protected file.
#[derive(Clone, Debug)]
pub struct FileOpen {
    /// The opening thread.
    pub header: Header,
    /// The call's return value (a descriptor, or `-errno`).
    pub ret: i64,
    /// The `open` flags.
    pub open_flags: u32,
    /// The mode for a created file.
    pub mode: u32,
    /// The directory descriptor a relative path is relative to.
    pub dirfd: i32,
    /// An `open_syscall` code.
    pub syscall: u32,
    /// A `matched_by` code: how the kernel matched the file to a watch.
    pub matched_by: u32,
    /// The watch matched.
    pub watch_id: u32,
    /// The file opened (zero when the open failed before there was one).
    pub file: FileId,
    /// The path as the caller gave it (cut at the kernel's limit: `FLAG_TRUNCATED`).
    pub requested: String,
    /// The dentry names the kernel collected, innermost first (or, from the fanotify layer,
    /// the descriptor's path as one name).
    pub names: Vec<String>,
    /// The policy decision.
    pub decision: Decision,
    /// Who handed the descriptor over (`SCM_RIGHTS`, BPF LSM), when known.
    pub sender: Option<Sender>,
}

impl FileOpen {
    /// Decodes a file-open record.
    pub fn decode(e: &FileOpenEvent) -> FileOpen {
        let names_len = (e.names_len as usize).min(e.names.len());
        FileOpen {
            header: Header::decode(&e.header),
            ret: e.ret,
            open_flags: e.open_flags,
            mode: e.mode,
            dirfd: e.dirfd,
            syscall: e.syscall,
            matched_by: e.matched_by,
            watch_id: e.watch_id,
            file: FileId {
                dev: e.dev,
                ino: e.ino,
            },
            requested: text(&e.path, e.path_len),
            names: split_names(&e.names[..names_len], e.names_count as usize),
            decision: e.decision,
            sender: (e.sender.tgid != 0).then_some(e.sender),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sender: Sender) -> FileOpenEvent {
        // SAFETY: all-zero is a valid record (plain integers).
        let mut e: FileOpenEvent = unsafe { std::mem::zeroed() };
        e.sender = sender;
        e
    }

    #[test]
    fn a_record_without_a_sender_names_none() {
        assert_eq!(FileOpen::decode(&record(Sender::default())).sender, None);
    }

    #[test]
    fn a_received_descriptor_names_its_sender() {
        let sender = Sender {
            tgid: 4099,
            exe_dev: 8,
            start_boot_ns: 1_000,
            exe_ino: 12,
        };
        assert_eq!(FileOpen::decode(&record(sender)).sender, Some(sender));
    }
}
