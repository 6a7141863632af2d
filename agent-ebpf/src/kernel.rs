//! Reading kernel structs through the offsets user space read from BTF.
//!
//! aya's Rust programs have no CO-RE relocations, so every field is reached as
//! `base + OFFSETS.field` with `bpf_probe_read_kernel`: a wrong or stale pointer yields an
//! error, never a fault.

use aya_ebpf::{
    cty::{c_long, c_void},
    helpers::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, generated,
    },
};
use phiguard_common::{
    limits::{MAX_PATH_DEPTH, MAX_WALK_DEPTH, NAMES_LEN, NAME_MAX},
    maps::InodeKey,
    offsets::KernelOffsets,
    policy::WatchValue,
};

use crate::maps::WATCHED_INODES;

/// Struct field offsets, set by user space at load time (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_thread_status: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    task_exit_code: 0,
    task_loginuid: 0,
    task_sessionid: 0,
    task_comm: 0,
    task_files: 0,
    task_fs: 0,
    fs_pwd: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_f_path: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    dentry_d_inode: 0,
    dentry_d_sb: 0,
    qstr_name: 0,
    inode_i_ino: 0,
    sb_s_dev: 0,
    binprm_filename: 0,
    task_mm: 0,
    mm_exe_file: 0,
    file_f_mode: 0,
    file_f_flags: 0,
    binprm_file: 0,
    unix_sock_path: 0,
    path_mnt: 0,
    vfsmount_mnt_root: 0,
    mount_mnt: 0,
    mount_mnt_id: 0,
    file_private_data: 0,
    socket_sk: 0,
    skc_family: 0,
    skc_num: 0,
    skc_dport: 0,
    unix_sock_peer: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    task_signal: 0,
    signal_live: 0,
    task_ptrace: 0,
    inode_i_uid: 0,
    inode_i_mode: 0,
    msghdr_msg_control: 0,
    msghdr_msg_controllen: 0,
    binprm_interp: 0,
    mm_env_start: 0,
    mm_env_end: 0,
    task_cred: 0,
    cred_user_ns: 0,
    user_ns_level: 0,
};

/// The offset of one field, read so the compiler cannot fold the load-time value away.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: OFFSETS is a plain static; volatile keeps the read in the program.
        unsafe { core::ptr::read_volatile(&raw const OFFSETS.$field) } as usize
    };
}

/// A failed kernel read.
#[derive(Clone, Copy)]
pub struct ReadError;

/// `TS_COMPAT` (x86 `thread_info.status`): the task is in a system call made through the
/// 32-bit entry (`int 0x80`, `sysenter`, a 32-bit `syscall`), from a 32-bit or a 64-bit
/// program alike.
const TS_COMPAT: u32 = 0x0002;

/// Whether the current task's system call came through the 32-bit entry: its number and
/// arguments then follow the i386 convention (the kernel uses only the low 32 bits of each
/// argument register; the upper halves are whatever the caller left there).
#[inline(always)]
pub fn current_in_compat_syscall() -> bool {
    // SAFETY: helper without arguments; its result is a BTF-typed task pointer.
    let task = unsafe { bpf_get_current_task_btf() } as usize;
    let status: u32 = load(task, offset!(task_thread_status));
    status & TS_COMPAT != 0
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: usize, offset: usize) -> Result<T, ReadError> {
    if base == 0 {
        return Err(ReadError);
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T) }.map_err(|_| ReadError)
}

/// Most words [`read_pair`] copies in one helper call.
const SPAN_WORDS: usize = 8;

/// Reads the two 8-byte fields at offsets `a` and `b` of the object at `base`: with one helper
/// call covering exactly the words from one to the other when they are close (the offsets are
/// load-time constants, so the verifier keeps one branch), else with two.
#[inline(always)]
fn read_pair(base: usize, a: usize, b: usize) -> Result<(u64, u64), ReadError> {
    let low = if a < b { a } else { b };
    let (a, b) = (a - low, b - low);
    let span = SPAN_WORDS * 8;
    if base == 0 || a % 8 != 0 || b % 8 != 0 || a >= span || b >= span {
        return Ok((read(base, low + a)?, read(base, low + b)?));
    }
    let len = if a > b { a + 8 } else { b + 8 };
    let mut words = [0u64; SPAN_WORDS];
    // SAFETY: `len <= size_of_val(&words)`; the helper validates the kernel address and fails
    // instead of faulting. Only the object's own bytes are read (never past the later field).
    let ret = unsafe {
        generated::bpf_probe_read_kernel(
            words.as_mut_ptr().cast(),
            len as u32,
            (base + low) as *const core::ffi::c_void,
        )
    };
    if ret != 0 {
        return Err(ReadError);
    }
    Ok((
        words[(a / 8) & (SPAN_WORDS - 1)],
        words[(b / 8) & (SPAN_WORDS - 1)],
    ))
}

/// Loads a `T` at `base + offset` directly, for a `base` the verifier types from BTF (the
/// current task from `bpf_get_current_task_btf` and pointers loaded from it): the offset is a
/// load-time constant, the load is checked against the struct's BTF and cannot fault (a bad
/// pointer reads as 0). Saves a helper call per field over [`read`].
#[inline(always)]
fn load<T>(base: usize, offset: usize) -> T {
    // SAFETY: see above; the verifier rejects the program rather than allow a wild load.
    unsafe { core::ptr::read_volatile((base + offset) as *const T) }
}

/// Declares a typed kernel pointer: a wrapper a pointer of another struct cannot be passed
/// as. A wrong or null pointer is harmless (every read through it is checked) but a mix-up is
/// a compile error.
macro_rules! kernel_pointer {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub struct $name(usize);

        #[allow(dead_code, reason = "not every pointer type needs every accessor")]
        impl $name {
            /// The pointer a hook received (or one read from another struct).
            #[inline(always)]
            pub fn from_raw(addr: usize) -> Self {
                $name(addr)
            }

            /// The address, for map keys.
            #[inline(always)]
            pub fn addr(self) -> usize {
                self.0
            }

            /// Whether the pointer is null.
            #[inline(always)]
            pub fn is_null(self) -> bool {
                self.0 == 0
            }
        }
    };
}

kernel_pointer!(
    /// A `struct file *`.
    File
);
kernel_pointer!(
    /// A `struct dentry *`.
    Dentry
);
kernel_pointer!(
    /// A `struct sock *` (its `struct sock_common` head).
    Sock
);
kernel_pointer!(
    /// A `struct socket *` (a socket file's `private_data`).
    Socket
);
kernel_pointer!(
    /// A `struct vfsmount *`.
    Vfsmount
);
kernel_pointer!(
    /// A `struct linux_binprm *`.
    Binprm
);
kernel_pointer!(
    /// A `struct msghdr *` (a message being sent, its control part in kernel memory).
    Msghdr
);

/// The `struct file *` behind descriptor `fd` of the current task: direct loads down to the
/// descriptor array, one helper read for its slot.
#[inline(always)]
pub fn current_file(fd: u32) -> Result<File, ReadError> {
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task_btf() } as usize;
    let files: usize = load(task, offset!(task_files));
    let fdt: usize = load(files, offset!(files_fdt));
    let max_fds: u32 = load(fdt, offset!(fdtable_max_fds));
    if fd >= max_fds {
        return Err(ReadError);
    }
    let fd_array: usize = load(fdt, offset!(fdtable_fd));
    Ok(File(read(fd_array, fd as usize * 8)?))
}

/// A `task_struct` in kernel memory.
#[derive(Clone, Copy)]
pub struct Task(pub usize);

impl Task {
    /// The task running this program.
    #[inline(always)]
    pub fn current() -> Task {
        // SAFETY: helper without arguments.
        Task(unsafe { bpf_get_current_task() } as usize)
    }

    /// Thread id.
    #[inline(always)]
    pub fn pid(self) -> Result<u32, ReadError> {
        read(self.0, offset!(task_pid))
    }

    /// Thread-group (process) id.
    #[inline(always)]
    pub fn tgid(self) -> Result<u32, ReadError> {
        read(self.0, offset!(task_tgid))
    }

    /// Process id of the real parent.
    #[inline(always)]
    pub fn parent_tgid(self) -> Result<u32, ReadError> {
        Task(read(self.0, offset!(task_real_parent))?).tgid()
    }

    /// Start time (boot ns) of this task.
    #[inline(always)]
    pub fn start_boot_ns(self) -> Result<u64, ReadError> {
        read(self.0, offset!(task_start_boottime))
    }

    /// Start time (boot ns) of the thread-group leader: the process's start.
    #[inline(always)]
    pub fn leader_start_boot_ns(self) -> Result<u64, ReadError> {
        Task(read(self.0, offset!(task_group_leader))?).start_boot_ns()
    }

    /// Audit login uid.
    #[inline(always)]
    pub fn loginuid(self) -> Result<u32, ReadError> {
        read(self.0, offset!(task_loginuid))
    }

    /// Audit session id.
    #[inline(always)]
    pub fn sessionid(self) -> Result<u32, ReadError> {
        read(self.0, offset!(task_sessionid))
    }

    /// Threads of the task's thread group that have not begun exiting (`signal->live`): 0 once
    /// the last one has.
    #[inline(always)]
    pub fn live_threads(self) -> Result<i32, ReadError> {
        let signal: usize = read(self.0, offset!(task_signal))?;
        read(signal, offset!(signal_live))
    }

    /// Whether the task is being traced (`task_struct.ptrace` non-zero).
    #[inline(always)]
    pub fn is_traced(self) -> Result<bool, ReadError> {
        Ok(read::<u32>(self.0, offset!(task_ptrace))? != 0)
    }

    /// `task_struct.exit_code`.
    #[inline(always)]
    pub fn exit_code(self) -> Result<u32, ReadError> {
        read(self.0, offset!(task_exit_code))
    }

    /// The `struct file *` behind descriptor `fd`.
    #[inline(always)]
    pub fn file(self, fd: u32) -> Result<File, ReadError> {
        let files: usize = read(self.0, offset!(task_files))?;
        let fdt: usize = read(files, offset!(files_fdt))?;
        // `max_fds` is an `unsigned int`: the low half of its word (little-endian).
        let (max_fds, fd_array) = read_pair(fdt, offset!(fdtable_max_fds), offset!(fdtable_fd))?;
        if fd >= max_fds as u32 {
            return Err(ReadError);
        }
        Ok(File(read(fd_array as usize, fd as usize * 8)?))
    }

    /// Whether the task is a kernel thread: it has no memory map (`mm` is NULL), so no
    /// executable either.
    #[inline(always)]
    pub fn is_kernel_thread(self) -> Result<bool, ReadError> {
        let mm: usize = read(self.0, offset!(task_mm))?;
        Ok(mm == 0)
    }

    /// The dentry of the process's executable (`mm->exe_file`); an error for kernel threads.
    #[inline(always)]
    pub fn exe_dentry(self) -> Result<Dentry, ReadError> {
        let mm: usize = read(self.0, offset!(task_mm))?;
        File(read(mm, offset!(mm_exe_file))?).dentry()
    }

    /// The user addresses `[start, end)` of the environment strings of the task's image.
    #[inline(always)]
    pub fn env_range(self) -> Result<(u64, u64), ReadError> {
        let mm: usize = read(self.0, offset!(task_mm))?;
        Ok((
            read(mm, offset!(mm_env_start))?,
            read(mm, offset!(mm_env_end))?,
        ))
    }

    /// The nesting level of the task's user namespace (`cred->user_ns->level`): 0 in the
    /// initial one, where an unprivileged user can mount nothing.
    #[inline(always)]
    pub fn user_ns_level(self) -> Result<u32, ReadError> {
        let cred: usize = read(self.0, offset!(task_cred))?;
        let user_ns: usize = read(cred, offset!(cred_user_ns))?;
        read(user_ns, offset!(user_ns_level))
    }

    /// The real parent task.
    #[inline(always)]
    pub fn parent(self) -> Result<Task, ReadError> {
        Ok(Task(read(self.0, offset!(task_real_parent))?))
    }

    /// The dentry of the current working directory.
    #[inline(always)]
    pub fn cwd_dentry(self) -> Result<Dentry, ReadError> {
        let fs: usize = read(self.0, offset!(task_fs))?;
        Ok(Dentry(read(fs, offset!(fs_pwd) + offset!(path_dentry))?))
    }

    /// The current working directory as (dentry, vfsmount).
    #[inline(always)]
    pub fn cwd(self) -> Result<(Dentry, Vfsmount), ReadError> {
        let fs: usize = read(self.0, offset!(task_fs))?;
        let dentry = read(fs, offset!(fs_pwd) + offset!(path_dentry))?;
        let vfsmount = read(fs, offset!(fs_pwd) + offset!(path_mnt))?;
        Ok((Dentry(dentry), Vfsmount(vfsmount)))
    }
}

impl File {
    /// The dentry the file was opened through (`f_path.dentry`).
    #[inline(always)]
    pub fn dentry(self) -> Result<Dentry, ReadError> {
        Ok(Dentry(read(
            self.0,
            offset!(file_f_path) + offset!(path_dentry),
        )?))
    }

    /// `file->private_data`: the `struct socket *` of a socket file.
    #[inline(always)]
    pub fn socket(self) -> Result<Socket, ReadError> {
        Ok(Socket(read(self.0, offset!(file_private_data))?))
    }

    /// The `struct sock *` of a socket file (`file->private_data->sk`). For other files the
    /// result is meaningless (but every read of it is checked): callers only look it up in a
    /// map of known sockets.
    #[inline(always)]
    pub fn sock(self) -> Result<Sock, ReadError> {
        Ok(Sock(read(self.socket()?.0, offset!(socket_sk))?))
    }

    /// `file.f_mode` (`FMODE_READ` 1, `FMODE_WRITE` 2).
    #[inline(always)]
    pub fn mode(self) -> Result<u32, ReadError> {
        read(self.0, offset!(file_f_mode))
    }

    /// `file.f_flags`: the open flags as the kernel took them from the call (its own copy,
    /// which no thread of the caller can change).
    #[inline(always)]
    pub fn flags(self) -> Result<u32, ReadError> {
        read(self.0, offset!(file_f_flags))
    }
}

impl Msghdr {
    /// The control messages: their kernel address (`msg_control`) and length in bytes
    /// (`msg_controllen`). Only meaningful once `____sys_sendmsg` copied them in (as at
    /// `socket_sendmsg`); a user address there fails every read.
    #[inline(always)]
    pub fn control(self) -> Result<(usize, usize), ReadError> {
        let control: usize = read(self.0, offset!(msghdr_msg_control))?;
        let len: usize = read(self.0, offset!(msghdr_msg_controllen))?;
        Ok((control, len))
    }
}

impl Sock {
    /// `sock_common.skc_family`.
    #[inline(always)]
    pub fn family(self) -> Result<u16, ReadError> {
        read(self.0, offset!(skc_family))
    }

    /// `sock_common.skc_num` (local port, host order) and `skc_dport` (remote port, network
    /// order) of an inet socket.
    #[inline(always)]
    pub fn ports(self) -> Result<(u16, u16), ReadError> {
        Ok((
            read(self.0, offset!(skc_num))?,
            read(self.0, offset!(skc_dport))?,
        ))
    }

    /// Local and remote address of an inet socket (`skc_rcv_saddr`/`skc_daddr` for `AF_INET`,
    /// in the first 4 bytes; `skc_v6_rcv_saddr`/`skc_v6_daddr` otherwise), network byte order.
    #[inline(always)]
    pub fn addrs(self, v6: bool) -> Result<([u8; 16], [u8; 16]), ReadError> {
        let (mut local, mut remote) = ([0u8; 16], [0u8; 16]);
        if v6 {
            local = read(self.0, offset!(skc_v6_rcv_saddr))?;
            remote = read(self.0, offset!(skc_v6_daddr))?;
        } else {
            let l: [u8; 4] = read(self.0, offset!(skc_rcv_saddr))?;
            let r: [u8; 4] = read(self.0, offset!(skc_daddr))?;
            #[expect(clippy::manual_memcpy, reason = "four byte stores, no memcpy call")]
            for i in 0..4 {
                local[i] = l[i];
                remote[i] = r[i];
            }
        }
        Ok((local, remote))
    }

    /// The peer of a connected unix socket (`unix_sock.peer`).
    #[inline(always)]
    pub fn unix_peer(self) -> Result<Sock, ReadError> {
        Ok(Sock(read(self.0, offset!(unix_sock_peer))?))
    }

    /// The dentry a unix socket is bound to (`unix_sock.path.dentry`; null for an abstract
    /// socket).
    #[inline(always)]
    pub fn unix_dentry(self) -> Result<Dentry, ReadError> {
        Ok(Dentry(read(
            self.0,
            offset!(unix_sock_path) + offset!(path_dentry),
        )?))
    }
}

impl Dentry {
    /// Kernel `dev_t` of the super block the dentry belongs to.
    #[inline(always)]
    pub fn dev(self) -> Result<u32, ReadError> {
        let sb: usize = read(self.0, offset!(dentry_d_sb))?;
        read(sb, offset!(sb_s_dev))
    }

    /// Inode number (0 for a negative dentry).
    #[inline(always)]
    pub fn ino(self) -> Result<u64, ReadError> {
        let inode: usize = read(self.0, offset!(dentry_d_inode))?;
        if inode == 0 {
            return Ok(0);
        }
        read(inode, offset!(inode_i_ino))
    }

    /// The inode's owner (uid in the initial user namespace) and mode bits.
    #[inline(always)]
    pub fn owner_and_mode(self) -> Result<(u32, u16), ReadError> {
        let inode: usize = read(self.0, offset!(dentry_d_inode))?;
        Ok((
            read(inode, offset!(inode_i_uid))?,
            read(inode, offset!(inode_i_mode))?,
        ))
    }

    /// Parent dentry (the dentry itself at the root of its mount).
    #[inline(always)]
    pub fn parent(self) -> Result<Dentry, ReadError> {
        Ok(Dentry(read(self.0, offset!(dentry_d_parent))?))
    }

    /// Address of the dentry's name bytes (NUL-terminated).
    #[inline(always)]
    pub fn name(self) -> Result<usize, ReadError> {
        read(self.0, offset!(dentry_d_name) + offset!(qstr_name))
    }

    /// The (device, inode) of the dentry.
    #[inline(always)]
    pub fn id(self) -> Result<FileId, ReadError> {
        Ok(FileId {
            dev: self.dev()?,
            ino: self.ino()?,
        })
    }
}

/// The inode number of a `struct inode *` (for a hook that has the inode before the dentry
/// points to it: `d_instantiate`).
#[inline(always)]
pub fn inode_ino(inode: usize) -> Result<u64, ReadError> {
    read(inode, offset!(inode_i_ino))
}

impl Binprm {
    /// `linux_binprm.filename`.
    #[inline(always)]
    pub fn filename(self) -> Result<usize, ReadError> {
        read(self.0, offset!(binprm_filename))
    }

    /// `linux_binprm.interp`: the name of the program that runs — a pointer other than
    /// [`Binprm::filename`]'s once an interpreter took over (`binfmt_script`, `binfmt_misc`).
    #[inline(always)]
    pub fn interp(self) -> Result<usize, ReadError> {
        read(self.0, offset!(binprm_interp))
    }

    /// `linux_binprm.file`: the file being exec'd at this stage (the script, then its
    /// interpreter).
    #[inline(always)]
    pub fn file(self) -> Result<File, ReadError> {
        Ok(File(read(self.0, offset!(binprm_file))?))
    }
}

impl Vfsmount {
    /// `vfsmount.mnt_root`: the dentry at the root of the mount.
    #[inline(always)]
    fn root(self) -> Result<Dentry, ReadError> {
        Ok(Dentry(read(self.0, offset!(vfsmount_mnt_root))?))
    }

    /// `mount.mnt_id` of the `struct mount` holding this `vfsmount`.
    #[inline(always)]
    fn mnt_id(self) -> Result<u32, ReadError> {
        read(
            self.0.wrapping_sub(offset!(mount_mnt)),
            offset!(mount_mnt_id),
        )
    }
}

/// A file's identity: kernel `dev_t` and inode number.
#[derive(Clone, Copy)]
pub struct FileId {
    /// Kernel `dev_t` of its super block.
    pub dev: u32,
    /// Inode number.
    pub ino: u64,
}

/// A watched inode found above (or at) a dentry.
#[derive(Clone, Copy)]
pub struct WatchHit {
    /// Watch id and protecting rule from `WATCHED_INODES`.
    pub value: WatchValue,
    /// Levels climbed from the start dentry to the watched one.
    pub depth: u32,
}

/// State of a [`find_watch`] walk, shared with its [`find_watch_level`] callback.
#[repr(C)]
struct WatchWalk {
    /// The dentry the next level looks at.
    dentry: Dentry,
    dev: u32,
    slot: u32,
    /// 1 once a watched inode was found (then `value` and `depth` are set).
    found: u32,
    depth: u32,
    value: WatchValue,
}

/// Walks up from `dentry` (on device `dev`) until an inode watched or protected in policy
/// `slot`, the root of the mount, or `MAX_WALK_DEPTH` levels. The levels run in `bpf_loop`,
/// so the verifier checks one level once instead of every level of every caller.
#[inline(always)]
pub fn find_watch(dentry: Dentry, dev: u32, slot: u32) -> Option<WatchHit> {
    let mut walk = WatchWalk {
        dentry,
        dev,
        slot,
        found: 0,
        depth: 0,
        value: WatchValue::default(),
    };
    // SAFETY: the callback is a static function; the context is this frame's `walk`, which
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_WALK_DEPTH,
            find_watch_level as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    (walk.found != 0).then_some(WatchHit {
        value: walk.value,
        depth: walk.depth,
    })
}

/// One level of [`find_watch`], `depth` levels above the start: 1 ends the walk.
extern "C" fn find_watch_level(depth: u64, ctx: *mut c_void) -> c_long {
    // SAFETY: `bpf_loop` passes the `WatchWalk` that `find_watch` gave it.
    let walk = unsafe { &mut *ctx.cast::<WatchWalk>() };
    let dentry = walk.dentry;
    let Ok((parent, inode)) =
        read_pair(dentry.0, offset!(dentry_d_parent), offset!(dentry_d_inode))
    else {
        return 1;
    };
    let ino = if inode == 0 {
        0 // a negative dentry
    } else {
        match read(inode as usize, offset!(inode_i_ino)) {
            Ok(ino) => ino,
            Err(_) => return 1,
        }
    };
    let key = InodeKey {
        dev: walk.dev,
        slot: walk.slot,
        ino,
    };
    // SAFETY: the value is plain integers, copied out at once.
    if let Some(value) = unsafe { WATCHED_INODES.get(key) } {
        walk.value = *value;
        walk.depth = depth as u32;
        walk.found = 1;
        return 1;
    }
    let parent = Dentry(parent as usize);
    if parent == dentry {
        return 1;
    }
    walk.dentry = parent;
    0
}

impl WatchHit {
    /// The rule protecting the file the walk started from.
    #[inline(always)]
    pub fn rule(&self) -> u32 {
        if self.depth == 0 {
            self.value.rule_here
        } else {
            self.value.rule_below
        }
    }
}

/// Outcome of [`copy_path_names`].
#[derive(Clone, Copy)]
pub struct PathNames {
    /// Bytes written (at most `NAMES_LEN`); each name ends with a NUL.
    pub len: u32,
    /// Id of the mount the names are relative to (`mount.mnt_id`).
    pub mnt_id: u32,
    /// The walk reached the root of that mount.
    pub complete: bool,
}

/// Writes the names from `dentry` up to the root of its mount (`vfsmount`), innermost first,
/// each NUL-terminated. User space prefixes the mount point of `mnt_id`. A linear walk (no
/// mount crossing) keeps the verifier's work small. `buf` must hold `NAMES_LEN + NAME_MAX`
/// bytes; at most `NAMES_LEN` are used.
#[inline(always)]
pub fn copy_path_names(
    buf: &mut [u8; NAMES_LEN + NAME_MAX],
    mut dentry: Dentry,
    vfsmount: Vfsmount,
) -> PathNames {
    let mnt_root = vfsmount.root().unwrap_or(Dentry(0));
    let mnt_id = vfsmount.mnt_id().unwrap_or(0);
    let mut used: usize = 0;
    let mut complete = false;
    for _ in 0..MAX_PATH_DEPTH {
        if dentry == mnt_root {
            complete = true;
            break;
        }
        if used >= NAMES_LEN {
            break;
        }
        let Ok(name) = dentry.name() else { break };
        let start = used & (NAMES_LEN - 1);
        // SAFETY: kernel pointer read with the checked helper; `start + NAME_MAX` is in bounds.
        let copied = match unsafe {
            bpf_probe_read_kernel_str_bytes(name as *const u8, &mut buf[start..start + NAME_MAX])
        } {
            Ok(bytes) => bytes.len(),
            Err(_) => break,
        };
        used = start + copied + 1;
        let Ok(parent) = dentry.parent() else {
            break;
        };
        dentry = parent;
    }
    PathNames {
        len: used.min(NAMES_LEN) as u32,
        mnt_id,
        complete: complete && used <= NAMES_LEN,
    }
}
