//! The header every record carries, decoded once: the task name as text, the audit ids with
//! "unset" as `None`, the process and thread ids under the names user space gives them.

use phiguard_common::event::EventHeader;

use super::decode::text;

/// Which process (and thread) a record is about, and when it happened: the kernel's
/// [`EventHeader`] decoded (or, from the fanotify layer, built from `/proc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `FLAG_*` bits; some mean something only for one kind of record.
    pub flags: u32,
    /// When it happened: `CLOCK_BOOTTIME` nanoseconds.
    pub boot_ns: u64,
    /// Thread id (the kernel's `pid`).
    pub tid: u32,
    /// Process id (the kernel's `tgid`).
    pub pid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Audit login uid: the user who logged in, unchanged by `su`/`sudo`; `None` when unset.
    pub loginuid: Option<u32>,
    /// Audit session id; `None` when unset.
    pub sessionid: Option<u32>,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// Boot-time nanoseconds at which the process started: with `pid` it identifies the
    /// process even after its pid is reused.
    pub start_boot_ns: u64,
    /// Task name (`comm`), lossily decoded as UTF-8.
    pub comm: String,
}

impl Header {
    /// Decodes the kernel's header.
    pub fn decode(h: &EventHeader) -> Header {
        Header {
            flags: h.flags,
            boot_ns: h.boot_ns,
            tid: h.pid,
            pid: h.tgid,
            ppid: h.ppid,
            uid: h.uid,
            gid: h.gid,
            loginuid: audit_id(h.loginuid),
            sessionid: audit_id(h.sessionid),
            cgroup_id: h.cgroup_id,
            start_boot_ns: h.start_boot_ns,
            comm: text(&h.comm, h.comm.len() as u32),
        }
    }
}

/// An audit id (login uid, session id) as the kernel stores it: `u32::MAX` means unset.
pub fn audit_id(id: u32) -> Option<u32> {
    (id != u32::MAX).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ids_audit_ids_and_task_name() {
        // SAFETY: all-zero is a valid header (plain integers).
        let mut h: EventHeader = unsafe { std::mem::zeroed() };
        (h.pid, h.tgid, h.loginuid, h.sessionid) = (7, 5, 1000, u32::MAX);
        h.comm[..4].copy_from_slice(b"psql");
        let header = Header::decode(&h);
        assert_eq!((header.tid, header.pid), (7, 5));
        assert_eq!((header.loginuid, header.sessionid), (Some(1000), None));
        assert_eq!(header.comm, "psql");
        h.comm = *b"0123456789abcde\xff";
        assert_eq!(Header::decode(&h).comm, "0123456789abcde\u{fffd}");
    }
}
