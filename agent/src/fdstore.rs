//! systemd's file descriptor store, for the fanotify group (`[policy] while_restarting =
//! "wait"`): the agent hands systemd a duplicate of its group, so the group outlives the agent
//! and opens on the marked filesystems wait (rather than pass) until the restarted agent
//! adopts it and answers them.
//!
//! The protocol (sd_notify(3), sd_listen_fds(3)): `FDSTORE=1` and `FDNAME=fanotify` with the
//! descriptor attached (`SCM_RIGHTS`) on `$NOTIFY_SOCKET`; the unit needs
//! `FileDescriptorStoreMax=` of 1 or more. The next start of the unit finds it from descriptor
//! 3 on, counted by `LISTEN_FDS`, named by `LISTEN_FDNAMES`, when `LISTEN_PID` is its pid.
//! `FDSTOREREMOVE=1` with the name makes systemd close its copy.
//!
//! systemd closes the store itself when the unit stops or fails (not across an automatic
//! restart or `systemctl restart`): that is the bound on how long opens can wait.

use std::{
    io,
    io::IoSlice,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

/// The name the group is stored under.
pub const NAME: &str = "fanotify";

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Set once the passed descriptors were taken (they are owned once).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// How long opens may wait for agents that do not come up: an agent starting with a kept
/// group more than this after the first start that found it unanswered releases the group
/// instead of adopting it (the waiting opens go on). A crash loop, or a start hanging until
/// `TimeoutStartSec=`, therefore holds opens for at most this (or one start timeout) plus a
/// restart delay.
pub const WAIT_BOUND_SECS: u64 = 30;

/// The file in `$RUNTIME_DIRECTORY` holding when (unix seconds) a start first found the kept
/// group with no agent answering it; removed once an agent answers it.
const MARKER: &str = "fanotify-unanswered-since";

/// Whether opens have waited too long: `since` is when a start first found the group
/// unanswered (`None`: this start is the first).
pub fn bound_exceeded(since: Option<u64>, now: u64) -> bool {
    since.is_some_and(|since| now.saturating_sub(since) > WAIT_BOUND_SECS)
}

/// Applies [`WAIT_BOUND_SECS`] to a kept group at the start of an agent: whether opens may
/// go on waiting for it (noting, in `$RUNTIME_DIRECTORY`, when they started waiting), or the
/// bound is past (the note is dropped; the caller releases the group).
pub fn within_bound() -> bool {
    let Some(marker) = marker() else {
        return true;
    };
    let now = crate::status::now();
    let since = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    if bound_exceeded(since, now) {
        tracing::warn!(
            waited_secs = now.saturating_sub(since.unwrap_or(now)),
            "no agent has answered the fanotify group systemd kept for more than {WAIT_BOUND_SECS} s: releasing it, waiting opens go on (the pinned open-exit programs still kill refused ones)"
        );
        let _ = std::fs::remove_file(&marker);
        return false;
    }
    if since.is_none() {
        let _ = std::fs::write(&marker, format!("{now}\n"));
    }
    true
}

/// The note of when opens started waiting (`None`: no `$RUNTIME_DIRECTORY`).
fn marker() -> Option<std::path::PathBuf> {
    std::env::var_os("RUNTIME_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(|d| std::path::PathBuf::from(d).join(MARKER))
}

/// An agent answers the group now: the outage is over.
pub fn answered() {
    if let Some(marker) = marker() {
        let _ = std::fs::remove_file(marker);
    }
}

/// What systemd and the dynamic loader open for the agent before it runs (its executable, its
/// libraries, the loader's configuration, the unit's directories): keeping the group while one
/// of these is on a marked filesystem would make the restart wait for itself, a deadlock, not a
/// wait. Once the agent runs, its own opens are answered ([`crate::fanotify::interim`]).
const RESTART_NEEDS: &[&str] = &[
    "/",
    "/usr",
    "/etc",
    "/run",
    "/var",
    "/var/lib/phiguard",
    "/var/log/phiguard",
    "/tmp",
    "/var/tmp",
    "/dev",
    "/sys/fs/bpf",
    "/sys/kernel/btf/vmlinux",
];

/// Why keeping the group would stall the agent's own restart (`None`: it would not). `marked`
/// are paths on the filesystems marked for opens, `exec` whether every filesystem is marked
/// for execs. The agent's executable and every file it maps are checked too.
pub fn restart_blocked_by(marked: &[std::path::PathBuf], exec: bool) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    if exec {
        return Some(
            "an exec allow-list is in force: the exec of the restarted agent would wait for itself"
                .to_owned(),
        );
    }
    let devs: Vec<u64> = marked
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev())
        .collect();
    let mut needed: Vec<std::path::PathBuf> = RESTART_NEEDS.iter().map(Into::into).collect();
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        needed.push(exe);
    }
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        needed.extend(
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|p| p.starts_with('/'))
                .map(Into::into),
        );
    }
    needed.into_iter().find_map(|path| {
        let dev = std::fs::metadata(&path).ok()?.dev();
        devs.contains(&dev).then(|| {
            format!(
                "{} is on a filesystem holding protected files: the restarted agent (and systemd starting it) would wait for itself",
                path.display()
            )
        })
    })
}

/// Whether a service manager listens (`$NOTIFY_SOCKET` set): without it the group cannot be
/// kept and `while_restarting = "wait"` cannot apply.
pub fn available() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// The descriptors systemd passed to process `me`, with their names, from the values of
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. Empty unless `LISTEN_PID` is `me` (the
/// variables were inherited from a parent otherwise) and `LISTEN_FDS` is a count; a missing
/// or short name list names the rest `"unknown"` (as sd_listen_fds_with_names does).
pub fn parse_listen_fds(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Vec<(RawFd, String)> {
    if pid.and_then(|p| p.trim().parse::<u32>().ok()) != Some(me) {
        return Vec::new();
    }
    let Some(count) = fds.and_then(|n| n.trim().parse::<u16>().ok()) else {
        return Vec::new();
    };
    let mut names = names.map(|n| n.split(':')).into_iter().flatten();
    (0..RawFd::from(count))
        .map(|i| {
            let name = names.next().unwrap_or("unknown").to_owned();
            (LISTEN_FDS_START + i, name)
        })
        .collect()
}

/// Whether `link` (the target of `/proc/self/fd/N`) is a fanotify group.
pub fn is_fanotify_link(link: &str) -> bool {
    link == "anon_inode:[fanotify]"
}

/// Whether `fd` is a fanotify group (its `/proc/self/fd` link is `anon_inode:[fanotify]`).
pub fn is_fanotify(fd: BorrowedFd<'_>) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.to_str().is_some_and(is_fanotify_link))
}

/// The group systemd kept for this process, if any: the descriptor named [`NAME`] that really
/// is a fanotify group. Other passed descriptors are closed (this agent stores no other).
/// Returns `None` on every call after the first.
pub fn take_stored() -> Option<OwnedFd> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    let var = |name| std::env::var(name).ok();
    let passed = parse_listen_fds(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    let mut group = None;
    for (raw, name) in passed {
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours); it is
        // only borrowed to check it is open, and set close-on-exec.
        if nix::fcntl::fcntl(
            unsafe { BorrowedFd::borrow_raw(raw) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .is_err()
        {
            continue;
        }
        // SAFETY: as above; the descriptor is open and passed to us by systemd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        use std::os::fd::AsFd as _;
        if group.is_none() && name == NAME && is_fanotify(fd.as_fd()) {
            group = Some(fd);
        } else {
            tracing::warn!(
                fd = raw,
                name,
                "closing a descriptor systemd passed that is not this agent's fanotify group"
            );
        }
    }
    group
}

/// Hands a duplicate of the group to systemd's store (`FDSTORE=1`, `FDNAME=fanotify`). Does
/// nothing without `$NOTIFY_SOCKET` (`Ok(false)`). systemd ignores a descriptor it already
/// holds, so storing an adopted group again is harmless.
pub fn store(fd: BorrowedFd<'_>) -> io::Result<bool> {
    send(&format!("FDSTORE=1\nFDNAME={NAME}\n"), &[fd.as_raw_fd()])
}

/// Asks systemd to close its copy of the group (`FDSTOREREMOVE=1`, `FDNAME=fanotify`): once
/// this agent's copy closes too, opens no longer wait for anyone.
pub fn remove() -> io::Result<bool> {
    send(&format!("FDSTOREREMOVE=1\nFDNAME={NAME}\n"), &[])
}

/// Sends `message` (and `fds`) to `$NOTIFY_SOCKET`; `Ok(false)` when there is none.
fn send(message: &str, fds: &[RawFd]) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    send_to(&path, message, fds)?;
    Ok(true)
}

/// Sends `message` (and `fds`, `SCM_RIGHTS`) to the datagram socket at `path`.
fn send_to(path: &std::ffi::OsStr, message: &str, fds: &[RawFd]) -> io::Result<()> {
    let socket = connect(path)?;
    let rights = [nix::sys::socket::ControlMessage::ScmRights(fds)];
    let cmsg: &[nix::sys::socket::ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let sent = nix::sys::socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(message.as_bytes())],
        cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to NOTIFY_SOCKET",
        ));
    }
    Ok(())
}

/// A datagram socket connected to `$NOTIFY_SOCKET` (a path, or `@name`: abstract).
fn connect(path: &std::ffi::OsStr) -> io::Result<std::os::unix::net::UnixDatagram> {
    use std::os::unix::ffi::OsStrExt as _;
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.connect_addr(&addr)?;
    } else {
        socket.connect(std::path::Path::new(path))?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_fds_are_ours_only_when_listen_pid_is_our_pid() {
        assert_eq!(
            parse_listen_fds(Some("42"), Some("1"), Some("fanotify"), 42),
            [(3, "fanotify".to_owned())]
        );
        // Inherited from a parent, or no pid: not ours.
        assert!(parse_listen_fds(Some("41"), Some("1"), Some("fanotify"), 42).is_empty());
        assert!(parse_listen_fds(None, Some("1"), Some("fanotify"), 42).is_empty());
        assert!(parse_listen_fds(Some("x"), Some("1"), Some("fanotify"), 42).is_empty());
    }

    #[test]
    fn listen_fds_count_and_names() {
        assert!(parse_listen_fds(Some("7"), None, None, 7).is_empty());
        assert!(parse_listen_fds(Some("7"), Some("-1"), None, 7).is_empty());
        assert!(parse_listen_fds(Some("7"), Some("0"), Some(""), 7).is_empty());
        assert_eq!(
            parse_listen_fds(Some("7"), Some("3"), Some("a:fanotify"), 7),
            [
                (3, "a".to_owned()),
                (4, "fanotify".to_owned()),
                (5, "unknown".to_owned())
            ]
        );
        assert_eq!(
            parse_listen_fds(Some("7"), Some("1"), None, 7),
            [(3, "unknown".to_owned())]
        );
    }

    #[test]
    fn the_group_goes_to_the_socket_with_scm_rights() {
        use std::os::fd::AsFd as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        send_to(
            path.as_os_str(),
            &format!("FDSTORE=1\nFDNAME={NAME}\n"),
            &[file.as_fd().as_raw_fd()],
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            receiver.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let mut received = Vec::new();
        for cmsg in msg.cmsgs().unwrap() {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
                received.extend(fds);
            }
        }
        let len = msg.bytes;
        assert_eq!(&buf[..len], b"FDSTORE=1\nFDNAME=fanotify\n");
        assert_eq!(received.len(), 1);
        // SAFETY: the descriptor was just received; nobody else owns it.
        let got = unsafe { OwnedFd::from_raw_fd(received[0]) };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", got.as_raw_fd())).unwrap();
        assert_eq!(link, std::path::Path::new("/dev/null"));
        // Removal: no descriptor attached.
        send_to(path.as_os_str(), "FDSTOREREMOVE=1\nFDNAME=fanotify\n", &[]).unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"FDSTOREREMOVE=1\nFDNAME=fanotify\n");
    }

    #[test]
    fn the_group_is_not_kept_where_the_restart_would_wait_for_itself() {
        assert_eq!(restart_blocked_by(&[], false), None);
        assert!(restart_blocked_by(&[], true)
            .unwrap()
            .contains("exec allow-list"));
        // Protected files on the root filesystem: the agent's own binary and libraries are
        // there (or /etc, /usr...): keeping the group would deadlock the restart.
        let why = restart_blocked_by(&["/".into()], false).unwrap();
        assert!(why.contains("would wait for itself"), "{why}");
    }

    #[test]
    fn the_wait_is_bounded() {
        assert!(!bound_exceeded(None, 1_000));
        assert!(!bound_exceeded(Some(1_000), 1_000 + WAIT_BOUND_SECS));
        assert!(bound_exceeded(Some(1_000), 1_001 + WAIT_BOUND_SECS));
        // A clock stepped back never releases early.
        assert!(!bound_exceeded(Some(2_000), 1_000));
    }

    #[test]
    fn only_a_fanotify_group_is_adopted() {
        assert!(is_fanotify_link("anon_inode:[fanotify]"));
        assert!(!is_fanotify_link("anon_inode:[inotify]"));
        assert!(!is_fanotify_link("anon_inode:[eventfd]"));
        assert!(!is_fanotify_link("/dev/null"));
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd as _;
        assert!(!is_fanotify(file.as_fd()));
        // A real group, where this test may create one (CAP_SYS_ADMIN).
        // SAFETY: plain system call.
        let fd = unsafe { libc::fanotify_init(libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC, 0) };
        if fd >= 0 {
            // SAFETY: just returned, owned by nobody else.
            let group = unsafe { OwnedFd::from_raw_fd(fd) };
            assert!(is_fanotify(group.as_fd()));
        }
    }
}
