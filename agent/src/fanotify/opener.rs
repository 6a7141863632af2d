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
    /// The 32-bit entry (`int 0x80`, `sysenter`, a 32-bit program), when known.
    pub compat: bool,
    /// `O_*` flags, when the call has them and they could be read.
    pub flags: Option<u32>,
    /// Creation mode.
    pub mode: u32,
    /// `dirfd` argument (`AT_FDCWD` when none).
    pub dirfd: i32,
    /// Address of the path argument in the opener's memory, when the call has one.
    pub path_addr: Option<u64>,
    /// Address of `struct open_how` (`openat2`).
    pub how_addr: Option<u64>,
    /// Accesses (`access` bits) another reading of the same call requests: set when the entry
    /// the call came through could not be told and its two readings differ; counted as
    /// requested too.
    pub other_reading_access: u32,
}

/// `AT_FDCWD`.
const AT_FDCWD: i32 = -100;

/// `openat2`: the same number in the x86_64 and the i386 tables.
const NR_OPENAT2: i64 = 437;

/// The system call entry a call came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The 64-bit entry (`syscall` in 64-bit mode), as far as the instruction bytes tell:
    /// arguments are whole registers.
    Native,
    /// The 32-bit entry (`int 0x80`, `sysenter`, `syscall` in 32-bit mode): the kernel takes
    /// only the low 32 bits of each argument register.
    Compat,
    /// Not known (the instruction could not be read, or is none of those).
    Unknown,
}

impl Entry {
    /// The entry that the two bytes before the `pc` of `/proc/<tid>/syscall` name: the
    /// instruction that entered the kernel, or, for a fast 32-bit call (`sysenter`, `syscall`
    /// from 32-bit code), whatever precedes the vDSO's landing pad, where the kernel points
    /// such a call's saved `pc` (an `int 0x80` in an untouched 32-bit vDSO). `cd 80`
    /// (`int 0x80`) can only be the 32-bit entry: it cannot come before a 64-bit `syscall`'s
    /// `pc`. `0f 05` (`syscall`) names the 64-bit entry, but does not prove it: the landing
    /// pad is wherever the process's vDSO was, and it can unmap or overwrite that. The bytes
    /// are the caller's: another of its threads can rewrite them while the call waits (see
    /// docs/policies.md).
    pub fn of_instruction(bytes: [u8; 2]) -> Entry {
        match bytes {
            [0xcd, 0x80] | [0x0f, 0x34] => Entry::Compat,
            [0x0f, 0x05] => Entry::Native,
            _ => Entry::Unknown,
        }
    }
}

/// What `/proc/<tid>/syscall` shows of a thread blocked in a system call: the number, the six
/// argument registers in the order of the entry the call came through (the kernel picks them by
/// that entry: `rdi rsi rdx r10 r8 r9` for the 64-bit one, `rbx rcx rdx rsi rdi rbp` for the
/// 32-bit one, whole 64-bit registers either way), and the user `pc` (just after the
/// instruction that entered). It does not say which entry that was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallLine {
    /// System call number.
    pub nr: i64,
    /// Argument registers.
    pub args: [u64; 6],
    /// User instruction pointer.
    pub pc: u64,
}

impl SyscallLine {
    /// Parses `nr arg0 … arg5 sp pc` (arguments in hex); `None` for anything else (`running`,
    /// `-1 sp pc` for a thread not in a system call).
    pub fn parse(text: &str) -> Option<SyscallLine> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [nr, args @ .., _sp, pc] = fields.as_slice() else {
            return None;
        };
        let hex = |f: &str| u64::from_str_radix(f.strip_prefix("0x").unwrap_or(f), 16).ok();
        let args: Vec<u64> = args.iter().map(|f| hex(f)).collect::<Option<_>>()?;
        Some(SyscallLine {
            nr: nr.parse().ok()?,
            args: args.try_into().ok()?,
            pc: hex(pc)?,
        })
    }
}

/// Where the arguments of an open-family call are (argument indexes).
struct Layout {
    syscall: u32,
    compat: bool,
    path: Option<usize>,
    flags: Option<usize>,
    mode: Option<usize>,
    dirfd: Option<usize>,
    how: Option<usize>,
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
        how: None,
        fixed_flags: None,
    }
}

/// `openat2(dirfd, path, how, size)`, in the convention of either entry.
const fn openat2_layout(compat: bool) -> Layout {
    Layout {
        dirfd: Some(0),
        how: Some(2),
        ..layout(open_syscall::OPENAT2, compat, Some(1), None)
    }
}

/// The open-family calls whose number tells the entry. The x86_64 and i386 tables overlap
/// below 424 only on numbers whose other meaning never opens a file (i386 `open` = 5 is x86_64
/// `fstat`), so a thread blocked in an open permission event with one of these numbers is in
/// that open. `openat2` (437, in the range both tables share) is not here: its number does not
/// tell the entry.
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

/// The call's arguments read by `layout`: in the 32-bit convention each is the low 32 bits of
/// its register, as the kernel takes it (the upper halves are whatever the caller left there).
/// The flags of `openat2` are still to be read from its `open_how`.
fn read_args(line: &SyscallLine, layout: &Layout) -> OpenCall {
    let arg = |i: Option<usize>| {
        let value = line.args[i?];
        Some(if layout.compat {
            value & u64::from(u32::MAX)
        } else {
            value
        })
    };
    OpenCall {
        syscall: layout.syscall,
        compat: layout.compat,
        flags: layout
            .fixed_flags
            .or_else(|| arg(layout.flags).map(|f| f as u32)),
        mode: arg(layout.mode).unwrap_or(0) as u32,
        dirfd: arg(layout.dirfd).map_or(AT_FDCWD, |d| d as u32 as i32),
        path_addr: arg(layout.path),
        how_addr: arg(layout.how),
        other_reading_access: 0,
    }
}

/// `struct open_how`'s `flags` and `mode`, read from the opener's memory.
pub type ReadHow<'a> = &'a dyn Fn(u64) -> Option<(u64, u64)>;

/// Fills an `openat2` reading's flags and mode from its `open_how`; flags stay unknown (read
/// and write) when it cannot be read.
fn with_how(mut call: OpenCall, read_how: ReadHow<'_>) -> OpenCall {
    if let Some((flags, mode)) = call.how_addr.and_then(read_how) {
        call.flags = Some(flags as u32);
        call.mode = mode as u32;
    }
    call
}

/// The open call a `/proc/<tid>/syscall` line shows; `OTHER` when the thread is not in an
/// open-family call (io_uring, a kernel worker, `running`). `instruction` gives the two bytes
/// before a `pc` (`None`: unreadable), `read_how` an `open_how`.
///
/// Only `openat2` needs the entry (its number is the same in both tables): in the 32-bit
/// convention its `dirfd`, path and `open_how` addresses are the low halves of their registers.
/// When the two conventions read the same (no upper half set) the entry only marks the record.
/// When they differ, `int 0x80` before the `pc` decides (the 32-bit entry). Nothing else does:
/// `syscall` before the `pc` does not prove the 64-bit entry, because a fast 32-bit call
/// (`sysenter`, `syscall` from 32-bit code — a 64-bit program can switch to it) shows the
/// vDSO's landing pad as its `pc`, and the process can unmap or overwrite its vDSO. Both
/// readings then count: the call requests what either requests. A reading whose `open_how`
/// cannot be read is left out while the other can be read (the kernel has read the real one);
/// neither readable, the flags are unknown (read and write).
pub fn decode_call(
    text: &str,
    instruction: &dyn Fn(u64) -> Option<[u8; 2]>,
    read_how: ReadHow<'_>,
) -> OpenCall {
    let other = OpenCall {
        syscall: open_syscall::OTHER,
        dirfd: AT_FDCWD,
        ..OpenCall::default()
    };
    let Some(line) = SyscallLine::parse(text) else {
        return other;
    };
    if line.nr != NR_OPENAT2 {
        return call_layout(line.nr).map_or(other, |layout| read_args(&line, &layout));
    }
    let entry = instruction(line.pc).map_or(Entry::Unknown, Entry::of_instruction);
    let native = read_args(&line, &openat2_layout(false));
    let compat = read_args(&line, &openat2_layout(true));
    let same = (native.dirfd, native.path_addr, native.how_addr)
        == (compat.dirfd, compat.path_addr, compat.how_addr);
    if entry == Entry::Compat {
        return with_how(compat, read_how);
    }
    let native = with_how(native, read_how);
    if same {
        return native;
    }
    let compat = with_how(compat, read_how);
    match (native.flags, compat.flags) {
        (Some(_), None) | (None, None) => native,
        (None, Some(_)) => compat,
        (Some(_), Some(_)) => OpenCall {
            other_reading_access: requested_access(&compat),
            ..native
        },
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
/// pausing, for a bounded time. The instruction before its `pc` and its `open_how` are read
/// from its memory (`process_vm_readv`: no file is opened).
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
    let instruction = |pc: u64| instruction_before(tid, pc);
    let read_how = |addr: u64| {
        let mut bytes = [0u8; 16];
        if read_memory(tid, addr, &mut bytes).ok()? != bytes.len() {
            return None;
        }
        let word = |at: usize| bytes[at..at + 8].try_into().ok().map(u64::from_ne_bytes);
        Some((word(0)?, word(8)?))
    };
    decode_call(read.as_deref().unwrap_or(""), &instruction, &read_how)
}

/// What an open with `flags` does to the file's content (`access` bits): the same rule as the
/// kernel programs'. Unknown flags (io_uring, a kernel worker) count as read and write, so a
/// subject allowed only one of them is refused rather than let through unchecked. What another
/// reading of the call requests (an `openat2` whose entry is unknown) is added.
pub fn requested_access(call: &OpenCall) -> u32 {
    flags_access(call) | call.other_reading_access
}

/// What `call`'s own flags request.
fn flags_access(call: &OpenCall) -> u32 {
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

/// The two bytes before `pc` in a thread's memory: the instruction that entered the kernel, for
/// the `pc` of `/proc/<tid>/syscall`.
fn instruction_before(tid: u32, pc: u64) -> Option<[u8; 2]> {
    let mut bytes = [0u8; 2];
    let n = read_memory(tid, pc.checked_sub(2)?, &mut bytes).ok()?;
    (n == bytes.len()).then_some(bytes)
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

    /// A line decoded with no memory to read (no instruction, no `open_how`).
    fn parse_syscall(text: &str) -> OpenCall {
        decode_call(text, &|_| None, &|_| None)
    }

    /// The `open_how`s an `openat2` caller may hold: the one the 32-bit entry's kernel reads
    /// (O_RDWR, at a low address) and a forged one (O_RDONLY) at the same address with the
    /// upper half set; a 64-bit caller's own (O_RDONLY, on its stack).
    fn memory(addr: u64) -> Option<(u64, u64)> {
        match addr {
            0x0804_a000 => Some((libc::O_RDWR as u64, 0)),
            0x1_0804_a000 => Some((libc::O_RDONLY as u64, 0)),
            0x7ffd_0000_1000 => Some((libc::O_RDONLY as u64, 0)),
            _ => None,
        }
    }

    /// `openat2(AT_FDCWD, path, how, 24)` with the `how` register's upper half set, as the
    /// forging caller makes it (`pc` after its entering instruction).
    const FORGED_OPENAT2: &str =
        "437 0xffffff9c 0x8049000 0x10804a000 0x18 0x0 0x0 0xffd0 0x401010";

    fn openat2_entered_by(bytes: Option<[u8; 2]>) -> OpenCall {
        decode_call(
            FORGED_OPENAT2,
            &move |pc| (pc == 0x401010).then_some(bytes).flatten(),
            &memory,
        )
    }

    /// Blocks a new thread in `read` of an empty pipe — through `syscall` (libc), or through
    /// `int 0x80` (i386 `read`, 3, into a buffer below 4 GiB) — and gives the entry that the
    /// instruction before its `/proc/<tid>/syscall` `pc` names.
    #[cfg(target_arch = "x86_64")]
    fn entry_of_a_blocked_read(compat: bool) -> Entry {
        use std::{
            os::fd::AsRawFd as _,
            sync::{
                atomic::{AtomicU32, Ordering},
                Arc,
            },
        };
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let tid = Arc::new(AtomicU32::new(0));
        let reader = {
            let tid = Arc::clone(&tid);
            std::thread::spawn(move || {
                tid.store(nix::unistd::gettid().as_raw() as u32, Ordering::SeqCst);
                let fd = read_end.as_raw_fd();
                if !compat {
                    let mut byte = [0u8; 1];
                    // SAFETY: `byte` is valid for one byte.
                    return unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) } as i64;
                }
                // SAFETY: an anonymous mapping; the kernel checks the arguments.
                let buf = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                        -1,
                        0,
                    )
                };
                assert_ne!(buf, libc::MAP_FAILED);
                let ret: i64;
                // SAFETY: i386 `read(fd, buf, 1)` into the mapping above (`fd` in `ebx`, which
                // LLVM keeps: swapped in and back); the 32-bit entry clobbers r8-r11.
                unsafe {
                    std::arch::asm!(
                        "xchg {fd}, rbx",
                        "int 0x80",
                        "xchg {fd}, rbx",
                        fd = inout(reg) i64::from(fd) => _,
                        inlateout("rax") 3i64 => ret,
                        in("rcx") buf as i64,
                        in("rdx") 1i64,
                        out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    );
                }
                ret
            })
        };
        let expected_nr = if compat { 3 } else { 0 };
        let started = Instant::now();
        let line = loop {
            let tid = tid.load(Ordering::SeqCst);
            let text = fs::read_to_string(format!("/proc/{tid}/syscall")).unwrap_or_default();
            match SyscallLine::parse(&text) {
                Some(line) if tid != 0 && line.nr == expected_nr => break line,
                _ => {
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "never blocked: {text}"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        let entry = instruction_before(tid.load(Ordering::SeqCst), line.pc)
            .map_or(Entry::Unknown, Entry::of_instruction);
        nix::unistd::write(&write_end, b"x").unwrap();
        assert_eq!(
            reader.join().unwrap(),
            1,
            "the blocked read returned its byte"
        );
        entry
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_blocked_threads_pc_follows_the_instruction_that_entered() {
        assert_eq!(entry_of_a_blocked_read(false), Entry::Native);
        assert_eq!(entry_of_a_blocked_read(true), Entry::Compat);
    }

    #[test]
    fn the_instruction_before_pc_names_the_entry() {
        assert_eq!(Entry::of_instruction([0xcd, 0x80]), Entry::Compat);
        assert_eq!(Entry::of_instruction([0x0f, 0x34]), Entry::Compat);
        assert_eq!(Entry::of_instruction([0x0f, 0x05]), Entry::Native);
        assert_eq!(Entry::of_instruction([0x90, 0x90]), Entry::Unknown);
        assert_eq!(Entry::of_instruction([0x05, 0x0f]), Entry::Unknown);
    }

    #[test]
    fn syscall_lines_parse_into_number_arguments_and_pc() {
        assert_eq!(
            SyscallLine::parse(
                "437 0xffffff9c 0x8049000 0x10804a000 0x18 0x0 0x0 0xffd0 0x401010\n"
            ),
            Some(SyscallLine {
                nr: 437,
                args: [0xffff_ff9c, 0x804_9000, 0x1_0804_a000, 0x18, 0, 0],
                pc: 0x40_1010,
            })
        );
        assert_eq!(SyscallLine::parse("running"), None);
        assert_eq!(SyscallLine::parse("-1 0x7ffd0000 0x401000"), None);
        assert_eq!(SyscallLine::parse("257 0x1 0x2 0x3 0x4 0x5 0x6 0x7"), None);
        assert_eq!(
            SyscallLine::parse("257 0x1 0x2 0x3 0x4 0x5 zz 0x7 0x8"),
            None
        );
    }

    #[test]
    fn a_32_bit_openat2_is_read_by_the_low_halves_of_its_registers() {
        for bytes in [[0xcd, 0x80], [0x0f, 0x34]] {
            let call = openat2_entered_by(Some(bytes));
            assert_eq!(call.syscall, open_syscall::OPENAT2);
            assert!(call.compat, "{bytes:x?}");
            assert_eq!(call.how_addr, Some(0x0804_a000));
            assert_eq!(call.flags, Some(libc::O_RDWR as u32));
            assert_eq!(call.path_addr, Some(0x0804_9000));
            assert_eq!(call.dirfd, AT_FDCWD);
            assert_eq!(requested_access(&call), access::READ | access::WRITE);
        }
    }

    #[test]
    fn a_64_bit_openat2_is_read_by_its_whole_registers() {
        // The usual 64-bit call: `open_how` on the stack, far above 4 GiB; cut to 32 bits its
        // address is unmapped, so only the whole register can be what the kernel read.
        let stack = decode_call(
            "437 0xffffff9c 0x7ffd00002000 0x7ffd00001000 0x18 0x0 0x0 0x7ffd0 0x401010",
            &|_| Some([0x0f, 0x05]),
            &memory,
        );
        assert!(!stack.compat);
        assert_eq!(stack.how_addr, Some(0x7ffd_0000_1000));
        assert_eq!(stack.path_addr, Some(0x7ffd_0000_2000));
        assert_eq!(stack.other_reading_access, 0);
        assert_eq!(requested_access(&stack), access::READ);
    }

    #[test]
    fn syscall_before_pc_does_not_prove_the_64_bit_entry() {
        // A fast 32-bit call's `pc` is the vDSO's landing pad, and what precedes it is the
        // process's to choose: `0f 05` there leaves both readings standing.
        let call = openat2_entered_by(Some([0x0f, 0x05]));
        assert!(!call.compat);
        assert_eq!(call.how_addr, Some(0x1_0804_a000));
        assert_eq!(requested_access(&call), access::READ | access::WRITE);
    }

    #[test]
    fn an_openat2_of_an_unknown_entry_requests_what_either_reading_requests() {
        for bytes in [None, Some([0x90, 0x90])] {
            let call = openat2_entered_by(bytes);
            assert!(!call.compat);
            assert_eq!(requested_access(&call), access::READ | access::WRITE);
        }
        // Only the 32-bit reading's `open_how` can be read: that is the call.
        let low_only = decode_call(
            "437 0xffffff9c 0x8049000 0x20804a000 0x18 0x0 0x0 0xffd0 0x401010",
            &|_| None,
            &memory,
        );
        assert!(low_only.compat);
        assert_eq!(low_only.how_addr, Some(0x0804_a000));
        assert_eq!(requested_access(&low_only), access::READ | access::WRITE);
        // Neither can be read: read and write.
        let neither = decode_call(
            "437 0xffffff9c 0x8049000 0x7ffe00005000 0x18 0x0 0x0 0x7ffd0 0x401010",
            &|_| Some([0x0f, 0x05]),
            &memory,
        );
        assert_eq!(neither.flags, None);
        assert_eq!(requested_access(&neither), access::READ | access::WRITE);
        // No upper half set: both readings are one; nothing is added.
        let low = decode_call(
            "437 0xffffff9c 0x8049000 0x804a000 0x18 0x0 0x0 0xffd0 0x401010",
            &|_| None,
            &|addr| (addr == 0x804_a000).then_some((libc::O_RDONLY as u64, 0)),
        );
        assert_eq!(low.other_reading_access, 0);
        assert_eq!(requested_access(&low), access::READ);
    }

    #[test]
    fn every_argument_of_a_32_bit_call_is_the_low_half_of_its_register() {
        // i386 openat (295): dirfd, path, flags and mode with their upper halves set.
        let openat = parse_syscall(
            "295 0x1ffffff9c 0xdead000008049000 0x100000002 0x2000001b6 0x0 0x0 0xffd0 0xf7f00",
        );
        assert_eq!(openat.syscall, open_syscall::OPENAT);
        assert!(openat.compat);
        assert_eq!(openat.dirfd, AT_FDCWD);
        assert_eq!(openat.path_addr, Some(0x0804_9000));
        assert_eq!(openat.flags, Some(libc::O_RDWR as u32));
        assert_eq!(openat.mode, 0o666);
        // i386 open (5) and execve (11): the path too.
        let open = parse_syscall("5 0xffff000008049000 0x0 0x0 0x0 0x0 0x0 0xffd0 0xf7f00");
        assert_eq!(open.path_addr, Some(0x0804_9000));
        let exec = parse_syscall("11 0x1000008049000 0x0 0x0 0x0 0x0 0x0 0xffd0 0xf7f00");
        assert_eq!(exec.path_addr, Some(0x0804_9000));
        // The 64-bit entry's arguments are whole registers.
        let native =
            parse_syscall("257 0xffffff9c 0xdead000008049000 0x2 0x1b6 0x0 0x0 0x7ffd0 0x401010");
        assert!(!native.compat);
        assert_eq!(native.path_addr, Some(0xdead_0000_0804_9000));
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
