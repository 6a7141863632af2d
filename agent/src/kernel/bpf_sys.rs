//! The few bpf(2) commands the integrity check needs and aya 0.14 does not expose: map
//! elements as raw bytes (whatever the map's types), the programs attached to a cgroup, a
//! link's id from a raw descriptor, and pinning one; and [`global_tgid`], this process's id
//! as the kernel's programs see it. None needs `CAP_SYS_ADMIN` (the agent may run without
//! it): the cgroup query needs `CAP_NET_ADMIN`, `global_tgid` `CAP_BPF` and `CAP_PERFMON`,
//! the rest only the descriptors and bpffs.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// `BPF_PROG_TYPE_RAW_TRACEPOINT`: loads without a target, and its test run runs on the
/// calling task (Linux 5.10+).
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `bpf_attach_type` of `cgroup/connect4` programs.
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// `bpf_attach_type` of `cgroup/connect6` programs.
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;

/// `union bpf_attr` for the map element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_OBJ_PIN` / `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `union bpf_attr` for `BPF_PROG_QUERY` (up to `revision`).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (up to `prog_name`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN` (up to `batch_size`).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// This process's thread-group id in the initial pid namespace: what
/// `bpf_get_current_pid_tgid()` gives the kernel programs, and so what they must be told the
/// agent is. It differs from `std::process::id()` when the agent runs in a pid namespace (a
/// container), which no file in that namespace's /proc tells. A three-instruction program
/// (`r0 = bpf_get_current_pid_tgid() >> 32; exit`) is loaded and test-run: a raw tracepoint
/// program's test run runs on the calling task, and returns r0.
///
/// Asked once; [`global_tgid_now`] asks again (after a fork).
pub fn global_tgid() -> io::Result<u32> {
    static CACHED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if let Some(tgid) = CACHED.get() {
        return Ok(*tgid);
    }
    let tgid = global_tgid_now()?;
    Ok(*CACHED.get_or_init(|| tgid))
}

/// [`global_tgid`], asked of the kernel now.
pub fn global_tgid_now() -> io::Result<u32> {
    // struct bpf_insn: code, dst|src << 4, off (i16), imm (i32), little-endian.
    const fn insn(code: u8, dst: u8, imm: i32) -> u64 {
        (code as u64) | ((dst as u64) << 8) | (((imm as u32) as u64) << 32)
    }
    let insns: [u64; 3] = [
        insn(0x85, 0, 14), // call bpf_get_current_pid_tgid
        insn(0x77, 0, 32), // r0 >>= 32 (the tgid)
        insn(0x95, 0, 0),  // exit
    ];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..15].copy_from_slice(b"phiguard_whoami");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut load)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    let program = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut run = TestRunAttr {
        prog_fd: fd_u32(program.as_fd()),
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut run)?;
    Ok(run.retval)
}

/// Runs bpf(2) `cmd` with `attr`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`, valid for its
    // size; the kernel reads and writes only within that size. Pointers inside it point to
    // buffers the callers keep alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

/// The key after `key` (the first key when `None`); `None` at the end.
pub fn map_next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd_u32(map),
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value: next.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The value under `key` into `value`; `false` when there is none.
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd_u32(map),
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets `key` to `value` (creating it where the map allows).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    map_update_flags(map, key, value, 0) // BPF_ANY
}

/// Sets `key` to `value` with update `flags` (`BPF_ANY` 0, `BPF_NOEXIST` 1, `BPF_EXIST` 2).
pub fn map_update_flags(
    map: BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
    flags: u64,
) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd_u32(map),
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Removes `key`.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd_u32(map),
        key: key.as_ptr() as u64,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

/// `bpf_link_info`, large enough for every link type; the kernel fills what it knows.
#[repr(C, align(8))]
struct LinkInfoBuf([u8; 256]);

/// The id of the link behind `fd`.
pub fn link_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut buf = LinkInfoBuf([0; 256]);
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(fd),
        info_len: size_of::<LinkInfoBuf>() as u32,
        info: buf.0.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // `struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; … }`
    Ok(u32::from_ne_bytes([buf.0[4], buf.0[5], buf.0[6], buf.0[7]]))
}

/// Most programs one cgroup hook holds (the kernel's `BPF_CGROUP_MAX_PROGS` is 64).
const MAX_QUERIED: usize = 64;

/// Ids of the programs attached to `cgroup` itself (not inherited) for `attach_type`.
pub fn cgroup_programs(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; MAX_QUERIED];
    let mut attr = QueryAttr {
        target_fd: fd_u32(cgroup),
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: MAX_QUERIED as u32,
        ..QueryAttr::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = (attr.prog_cnt as usize).min(MAX_QUERIED);
    Ok(ids[..count].to_vec())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Pins `fd` at `path` on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd_u32(fd),
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..ObjAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
