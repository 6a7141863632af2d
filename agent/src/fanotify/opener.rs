//! Who is opening, and how: read from `/proc/<tid>` while the opener waits in its open for the
//! agent's answer.
//!
//! The opening thread is blocked in the kernel until the answer, so its executable, its
//! credentials and the system call it is in cannot change under the agent — with one
//! limitation: another thread of the same process may `execve` meanwhile (the waiting thread
//! is then killed by the exec, and its open never completes; the event may name the new
//! program). The executable is identified by the (device, inode) that `stat` of
//! `/proc/<tid>/exe` returns — a `stat`, never an `open`: the agent must not open a file on a
//! marked filesystem from the thread that answers the events. Reading another user's
//! `/proc/<tid>/exe`, `syscall` and memory needs `CAP_SYS_PTRACE` (the packaged unit grants it).

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use phiguard_common::{event::open_syscall, limits::PATH_LEN, policy::access};

use crate::paths::{kernel_dev, FileId};

/// The opener's identity as the decision needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opener {
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub tgid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
}

/// Reads `/proc/<tid>/status`: `None` when the thread is gone.
pub fn read_opener(tid: u32) -> Option<Opener> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    parse_status(tid, &status)
}

/// Parses a `status` file's `Tgid`, `PPid`, `Uid` and `Gid` (real ids: the first column).
pub fn parse_status(tid: u32, status: &str) -> Option<Opener> {
    let mut opener = Opener {
        tid,
        ..Opener::default()
    };
    let mut found = 0;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let first = || value.split_whitespace().next()?.parse::<u32>().ok();
        match key {
            "Tgid" => opener.tgid = first()?,
            "PPid" => opener.ppid = first()?,
            "Uid" => opener.uid = first()?,
            "Gid" => opener.gid = first()?,
            _ => continue,
        }
        found += 1;
    }
    (found == 4).then_some(opener)
}

/// The (device, inode) of a process's executable, by `stat` of its `/proc` link.
pub fn exe_id(pid: u32) -> Option<FileId> {
    let meta = fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some(FileId {
        dev: kernel_dev(meta.dev()),
        ino: meta.ino(),
    })
}

/// The call an opener is blocked in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenCall {
    /// An `open_syscall` code.
    pub syscall: u32,
    /// The 32-bit entry (`int 0x80`, a 32-bit program).
    pub compat: bool,
    /// `O_*` flags, when the call has them.
    pub flags: Option<u32>,
    /// Creation mode.
    pub mode: u32,
    /// `dirfd` argument (`AT_FDCWD` when none).
    pub dirfd: i32,
    /// Address of the path argument in the opener's memory, when the call has one.
    pub path_addr: Option<u64>,
    /// Address of `struct open_how` (`openat2`).
    pub how_addr: Option<u64>,
}

/// `AT_FDCWD`.
const AT_FDCWD: i32 = -100;

/// Where the arguments of an open-family call are (argument indexes).
struct Layout {
    syscall: u32,
    compat: bool,
    path: Option<usize>,
    flags: Option<usize>,
    mode: Option<usize>,
    dirfd: Option<usize>,
    fixed_flags: Option<u32>,
}

const fn layout(syscall: u32, compat: bool, path: Option<usize>, flags: Option<usize>) -> Layout {
    Layout {
        syscall,
        compat,
        path,
        flags,
        mode: None,
        dirfd: None,
        fixed_flags: None,
    }
}

/// The open-family calls by number. The x86_64 and i386 tables overlap only on numbers whose
/// other meaning never opens a file (i386 `open` = 5 is x86_64 `fstat`), so one table serves
/// both entries: a thread blocked in an open permission event is in an open.
fn call_layout(nr: i64) -> Option<Layout> {
    const CREAT_FLAGS: u32 = (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u32;
    Some(match nr {
        // x86_64
        2 => Layout {
            mode: Some(2),
            ..layout(open_syscall::OPEN, false, Some(0), Some(1))
        },
        257 => Layout {
            mode: Some(3),
            dirfd: Some(0),
            ..layout(open_syscall::OPENAT, false, Some(1), Some(2))
        },
        437 => Layout {
            dirfd: Some(0),
            ..layout(open_syscall::OPENAT2, false, Some(1), None)
        },
        85 => Layout {
            mode: Some(1),
            fixed_flags: Some(CREAT_FLAGS),
            ..layout(open_syscall::CREAT, false, Some(0), None)
        },
        304 => layout(open_syscall::OPEN_BY_HANDLE_AT, false, None, Some(2)),
        59 => layout(open_syscall::EXEC, false, Some(0), None),
        322 => Layout {
            dirfd: Some(0),
            ..layout(open_syscall::EXEC, false, Some(1), None)
        },
        // i386 (the 32-bit entry)
        5 => Layout {
            mode: Some(2),
            ..layout(open_syscall::OPEN, true, Some(0), Some(1))
        },
        295 => Layout {
            mode: Some(3),
            dirfd: Some(0),
            ..layout(open_syscall::OPENAT, true, Some(1), Some(2))
        },
        8 => Layout {
            mode: Some(1),
            fixed_flags: Some(CREAT_FLAGS),
            ..layout(open_syscall::CREAT, true, Some(0), None)
        },
        342 => layout(open_syscall::OPEN_BY_HANDLE_AT, true, None, Some(2)),
        11 => layout(open_syscall::EXEC, true, Some(0), None),
        358 => Layout {
            dirfd: Some(0),
            ..layout(open_syscall::EXEC, true, Some(1), None)
        },
        _ => return None,
    })
}

/// Parses `/proc/<tid>/syscall` (`nr arg0 … arg5 sp pc`, arguments in hex) into the open
/// call it shows; `OTHER` when the thread is not in an open-family call (io_uring, a kernel
/// worker, `running`).
pub fn parse_syscall(text: &str) -> OpenCall {
    let other = OpenCall {
        syscall: open_syscall::OTHER,
        dirfd: AT_FDCWD,
        ..OpenCall::default()
    };
    let mut fields = text.split_whitespace();
    let Some(nr) = fields.next().and_then(|f| f.parse::<i64>().ok()) else {
        return other;
    };
    let args: Vec<u64> = fields
        .take(6)
        .filter_map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .collect();
    let Some(layout) = call_layout(nr) else {
        return other;
    };
    let arg = |i: Option<usize>| i.and_then(|i| args.get(i).copied());
    OpenCall {
        syscall: layout.syscall,
        compat: layout.compat,
        flags: layout
            .fixed_flags
            .or_else(|| arg(layout.flags).map(|f| f as u32)),
        mode: arg(layout.mode).unwrap_or(0) as u32,
        dirfd: arg(layout.dirfd).map_or(AT_FDCWD, |d| d as u32 as i32),
        path_addr: arg(layout.path),
        how_addr: (layout.syscall == open_syscall::OPENAT2)
            .then(|| arg(Some(2)))
            .flatten(),
    }
}

/// Attempts at `/proc/<tid>/syscall` that only yield the CPU, while the opener is still on its
/// way to sleep (enough on an idle machine).
const SYSCALL_READ_YIELDS: u32 = 200;
/// How long the read is retried in all: on a loaded machine the opener can be preempted
/// between queueing the event and sleeping, for longer than 200 yields take. Past this the
/// call counts as unknown (its flags as read and write).
const SYSCALL_READ_PATIENCE: Duration = Duration::from_millis(50);
/// The pause between attempts after the yields.
const SYSCALL_READ_PAUSE: Duration = Duration::from_micros(50);

/// The call a blocked thread is in. The event is queued just before the opener goes to sleep
/// waiting for the answer; until it sleeps the kernel cannot show its call (the file reads
/// `running`; `EAGAIN` is retried too), so the read is retried, yielding the CPU, then
/// pausing, for a bounded time.
pub fn read_call(tid: u32) -> OpenCall {
    let path = format!("/proc/{tid}/syscall");
    let not_asleep_yet = |read: &io::Result<String>| match read {
        Ok(text) => text.trim_end() == "running",
        Err(e) => e.raw_os_error() == Some(libc::EAGAIN),
    };
    let started = Instant::now();
    let mut tries = 0u32;
    let mut read = fs::read_to_string(&path);
    while not_asleep_yet(&read) && started.elapsed() < SYSCALL_READ_PATIENCE {
        if tries < SYSCALL_READ_YIELDS {
            std::thread::yield_now();
        } else {
            std::thread::sleep(SYSCALL_READ_PAUSE);
        }
        tries += 1;
        read = fs::read_to_string(&path);
    }
    match read {
        Ok(text) => {
            let mut call = parse_syscall(&text);
            if let Some(how) = call.how_addr {
                let mut bytes = [0u8; 16];
                if read_memory(tid, how, &mut bytes).is_ok_and(|n| n == 16) {
                    let flags = u64::from_ne_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
                    let mode = u64::from_ne_bytes(bytes[8..].try_into().unwrap_or([0; 8]));
                    call.flags = Some(flags as u32);
                    call.mode = mode as u32;
                }
            }
            call
        }
        Err(_) => parse_syscall(""),
    }
}

/// What an open with `flags` does to the file's content (`access` bits): the same rule as the
/// kernel programs'. Unknown flags (io_uring, a kernel worker) count as read and write, so a
/// subject allowed only one of them is refused rather than let through unchecked.
pub fn requested_access(call: &OpenCall) -> u32 {
    if call.syscall == open_syscall::EXEC {
        return access::READ;
    }
    let Some(flags) = call.flags else {
        return access::READ | access::WRITE;
    };
    let flags = flags as i32;
    if flags & libc::O_PATH != 0 {
        return 0;
    }
    let mode = flags & libc::O_ACCMODE;
    let mut requested = 0;
    if mode != libc::O_WRONLY {
        requested |= access::READ;
    }
    if mode != libc::O_RDONLY || flags & (libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) != 0 {
        requested |= access::WRITE;
    }
    requested
}

/// Reads up to `buf.len()` bytes of another process's memory (`process_vm_readv`).
fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`; the kernel checks `remote` against the target's memory.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The NUL-terminated path at `addr` in the opener's memory (at most `PATH_LEN - 1` bytes; the
/// flag is true when it was cut). Read page by page, so a path near the end of a mapping is
/// still read.
pub fn read_path(tid: u32, addr: u64) -> Option<(Vec<u8>, bool)> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < PATH_LEN - 1 {
        let to_page_end = (PAGE - at % PAGE) as usize;
        let want = to_page_end.min(PATH_LEN - 1 - out.len());
        let mut chunk = vec![0u8; want];
        let n = read_memory(tid, at, &mut chunk).ok()?;
        if n == 0 {
            break;
        }
        if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Some((out, false));
        }
        out.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
    Some((out, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_never_sleeps_costs_at_most_the_patience_and_counts_as_unknown() {
        use std::sync::{
            atomic::{AtomicBool, AtomicU32, Ordering},
            Arc,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU32::new(0));
        let spinner = {
            let (stop, tid) = (Arc::clone(&stop), Arc::clone(&tid));
            std::thread::spawn(move || {
                tid.store(nix::unistd::gettid().as_raw() as u32, Ordering::SeqCst);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        while tid.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let started = Instant::now();
        let call = read_call(tid.load(Ordering::SeqCst));
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        // A running thread shows no call ("running"): waited for, then unknown, its flags
        // unknown (counted as read and write).
        assert_eq!(call.syscall, open_syscall::OTHER);
        assert_eq!(call.flags, None);
        assert!(
            took >= SYSCALL_READ_PATIENCE,
            "gave up after {took:?}, before the opener could fall asleep"
        );
        assert!(
            took < SYSCALL_READ_PATIENCE + Duration::from_millis(200),
            "read_call took {took:?}"
        );
    }

    #[test]
    fn status_gives_real_ids_and_the_process() {
        let text = "Name:\tcat\nTgid:\t42\nPid:\t43\nPPid:\t7\nUid:\t65534\t0\t0\t0\nGid:\t65534\t1\t1\t1\n";
        assert_eq!(
            parse_status(43, text),
            Some(Opener {
                tid: 43,
                tgid: 42,
                ppid: 7,
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(parse_status(1, "Name:\tx\n"), None);
    }

    #[test]
    fn syscall_lines_name_the_open_and_its_flags() {
        let openat = parse_syscall("257 0xffffff9c 0x7ffd1000 0x241 0x1b6 0x0 0x0 0x7ffd 0x7f00\n");
        assert_eq!(openat.syscall, open_syscall::OPENAT);
        assert!(!openat.compat);
        assert_eq!(openat.flags, Some(0o1101));
        assert_eq!(openat.dirfd, AT_FDCWD);
        assert_eq!(openat.path_addr, Some(0x7ffd1000));
        assert_eq!(requested_access(&openat), access::WRITE);
        let compat = parse_syscall("5 0x8049000 0x0 0x0 0x0 0x0 0x0 0xff 0xff\n");
        assert_eq!(compat.syscall, open_syscall::OPEN);
        assert!(compat.compat);
        assert_eq!(requested_access(&compat), access::READ);
        let creat = parse_syscall("85 0x1000 0x1a4 0x0 0x0 0x0 0x0 0x0 0x0");
        assert_eq!(creat.syscall, open_syscall::CREAT);
        assert_eq!(requested_access(&creat), access::WRITE);
        let uring = parse_syscall("426 0x3 0x1 0x1 0x1 0x0 0x8 0x0 0x0");
        assert_eq!(uring.syscall, open_syscall::OTHER);
        assert_eq!(requested_access(&uring), access::READ | access::WRITE);
        assert_eq!(parse_syscall("running").syscall, open_syscall::OTHER);
        let exec = parse_syscall("59 0x1000 0x2000 0x3000 0x0 0x0 0x0 0x0 0x0");
        assert_eq!(requested_access(&exec), access::READ);
    }

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        let opener = read_opener(me).expect("own status");
        assert_eq!(opener.tgid, me);
        assert!(exe_id(me).is_some());
        let path = std::ffi::CString::new("/some/path/to/read").unwrap();
        let (bytes, cut) = read_path(me, path.as_ptr() as u64).expect("own memory");
        assert_eq!((bytes.as_slice(), cut), (&b"/some/path/to/read"[..], false));
    }
}
