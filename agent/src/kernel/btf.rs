//! Kernel struct field offsets from the running kernel's BTF.
//!
//! aya's Rust programs have no CO-RE relocations, so user space looks every field up in
//! `/sys/kernel/btf/vmlinux` at start-up and hands the offsets to the programs.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use btf_rs::{Btf, Type};
use phiguard_common::offsets::KernelOffsets;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A struct or field the programs need is not where they expect it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read or parsed.
    #[error("reading BTF {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: btf_rs::Error,
    },
    /// No struct of that name.
    #[error("BTF {path}: no struct {strukt}")]
    NoStruct {
        /// The file.
        path: PathBuf,
        /// Struct name.
        strukt: String,
    },
    /// The struct has no such field.
    #[error("BTF {path}: struct {strukt} has no field `{field}`{hint}")]
    NoField {
        /// The file.
        path: PathBuf,
        /// Struct name.
        strukt: String,
        /// Field name.
        field: String,
        /// What may explain it.
        hint: &'static str,
    },
    /// The field is a bitfield (not byte-addressable).
    #[error("BTF {path}: {strukt}.{field} is a bitfield")]
    Bitfield {
        /// The file.
        path: PathBuf,
        /// Struct name.
        strukt: String,
        /// Field name.
        field: String,
    },
}

/// What the programs need from the running kernel's BTF.
#[derive(Clone, Copy, Debug)]
pub struct RunningKernel {
    /// The struct field offsets.
    pub offsets: KernelOffsets,
    /// How many arguments the `inode_setattr` LSM hook takes (`None`: no such hook in BTF).
    pub inode_setattr_args: Option<usize>,
}

/// Reads [`RunningKernel`] from [`VMLINUX_BTF`], parsing the file once per process: the
/// running kernel's BTF does not change while it runs, and one parse takes about 0.25 s on
/// the host tier's kernel and 4–5 s under the VM tier's emulation, so reading it again at
/// each agent start in a process (the in-process test harness) or for each thing looked up
/// only costs time.
pub fn running_kernel() -> Result<RunningKernel, BtfError> {
    static READ: OnceLock<RunningKernel> = OnceLock::new();
    if let Some(kernel) = READ.get() {
        return Ok(*kernel);
    }
    let path = Path::new(VMLINUX_BTF);
    let btf = parse(path)?;
    let kernel = RunningKernel {
        offsets: offsets_in(&btf, path)?,
        inode_setattr_args: hook_args_in(&btf, "inode_setattr"),
    };
    Ok(*READ.get_or_init(|| kernel))
}

fn parse(path: &Path) -> Result<Btf, BtfError> {
    Btf::from_file(path).map_err(|source| BtfError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every offset the programs need from the BTF file at `path`.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    offsets_in(&parse(path)?, path)
}

/// Every offset the programs need, from `btf` (read from `path`, named in errors).
fn offsets_in(btf: &Btf, path: &Path) -> Result<KernelOffsets, BtfError> {
    let field = |strukt: &str, field: &str| {
        field_offset(btf, strukt, field).map_err(|e| match e {
            BtfError::NoField { strukt, field, .. }
                if field == "loginuid" || field == "sessionid" =>
            {
                BtfError::NoField {
                    path: path.to_owned(),
                    strukt,
                    field,
                    hint: " (kernel built without CONFIG_AUDITSYSCALL?)",
                }
            }
            BtfError::NoField {
                strukt,
                field,
                hint,
                ..
            } => BtfError::NoField {
                path: path.to_owned(),
                strukt,
                field,
                hint,
            },
            BtfError::NoStruct { strukt, .. } => BtfError::NoStruct {
                path: path.to_owned(),
                strukt,
            },
            BtfError::Bitfield { strukt, field, .. } => BtfError::Bitfield {
                path: path.to_owned(),
                strukt,
                field,
            },
            other => other,
        })
    };
    Ok(KernelOffsets {
        task_pid: field("task_struct", "pid")?,
        task_thread_status: field("task_struct", "thread_info")? + field("thread_info", "status")?,
        task_tgid: field("task_struct", "tgid")?,
        task_real_parent: field("task_struct", "real_parent")?,
        task_group_leader: field("task_struct", "group_leader")?,
        task_start_boottime: field("task_struct", "start_boottime")?,
        task_exit_code: field("task_struct", "exit_code")?,
        task_loginuid: field("task_struct", "loginuid")?,
        task_sessionid: field("task_struct", "sessionid")?,
        task_comm: field("task_struct", "comm")?,
        task_files: field("task_struct", "files")?,
        task_fs: field("task_struct", "fs")?,
        fs_pwd: field("fs_struct", "pwd")?,
        files_fdt: field("files_struct", "fdt")?,
        fdtable_max_fds: field("fdtable", "max_fds")?,
        fdtable_fd: field("fdtable", "fd")?,
        file_f_path: field("file", "f_path")?,
        path_dentry: field("path", "dentry")?,
        dentry_d_parent: field("dentry", "d_parent")?,
        dentry_d_name: field("dentry", "d_name")?,
        dentry_d_inode: field("dentry", "d_inode")?,
        dentry_d_sb: field("dentry", "d_sb")?,
        qstr_name: field("qstr", "name")?,
        inode_i_ino: field("inode", "i_ino")?,
        sb_s_dev: field("super_block", "s_dev")?,
        binprm_filename: field("linux_binprm", "filename")?,
        task_mm: field("task_struct", "mm")?,
        mm_exe_file: field("mm_struct", "exe_file")?,
        file_f_mode: field("file", "f_mode")?,
        file_f_flags: field("file", "f_flags")?,
        binprm_file: field("linux_binprm", "file")?,
        unix_sock_path: field("unix_sock", "path")?,
        path_mnt: field("path", "mnt")?,
        vfsmount_mnt_root: field("vfsmount", "mnt_root")?,
        mount_mnt: field("mount", "mnt")?,
        mount_mnt_id: field("mount", "mnt_id")?,
        file_private_data: field("file", "private_data")?,
        socket_sk: field("socket", "sk")?,
        skc_family: field("sock_common", "skc_family")?,
        skc_num: field("sock_common", "skc_num")?,
        skc_dport: field("sock_common", "skc_dport")?,
        unix_sock_peer: field("unix_sock", "peer")?,
        skc_daddr: field("sock_common", "skc_daddr")?,
        skc_rcv_saddr: field("sock_common", "skc_rcv_saddr")?,
        skc_v6_daddr: field("sock_common", "skc_v6_daddr")?,
        skc_v6_rcv_saddr: field("sock_common", "skc_v6_rcv_saddr")?,
        task_signal: field("task_struct", "signal")?,
        signal_live: field("signal_struct", "live")?,
        task_ptrace: field("task_struct", "ptrace")?,
        inode_i_uid: field("inode", "i_uid")?,
        inode_i_mode: field("inode", "i_mode")?,
        msghdr_msg_control: field("msghdr", "msg_control")?,
        msghdr_msg_controllen: field("msghdr", "msg_controllen")?,
        binprm_interp: field("linux_binprm", "interp")?,
        mm_env_start: field("mm_struct", "env_start")?,
        mm_env_end: field("mm_struct", "env_end")?,
        task_cred: field("task_struct", "cred")?,
        cred_user_ns: field("cred", "user_ns")?,
        user_ns_level: field("user_namespace", "level")?,
    })
}

/// How many arguments the BPF LSM hook `hook` takes on the kernel whose BTF is at `path` (the
/// prototype of `bpf_lsm_{hook}`), or `None` when the BTF has no such function (a kernel
/// without BPF LSM, or no such hook). Hooks change shape between kernels: `inode_setattr`
/// takes 2 on 6.1 and 3 (a `mnt_idmap` first) on 6.12.
pub fn lsm_hook_args(path: &Path, hook: &str) -> Option<usize> {
    hook_args_in(&Btf::from_file(path).ok()?, hook)
}

/// [`lsm_hook_args`] in `btf`.
fn hook_args_in(btf: &Btf, hook: &str) -> Option<usize> {
    let types = btf.resolve_types_by_name(&format!("bpf_lsm_{hook}")).ok()?;
    types.iter().find_map(|t| match t {
        Type::Func(func) => match btf.resolve_chained_type(func).ok()? {
            Type::FuncProto(proto) => Some(proto.parameters.len()),
            _ => None,
        },
        _ => None,
    })
}

/// Byte offset of `field` in `struct strukt`, searching nested anonymous structs and unions.
pub fn field_offset(btf: &Btf, strukt: &str, field: &str) -> Result<u32, BtfError> {
    let no_struct = || BtfError::NoStruct {
        path: PathBuf::new(),
        strukt: strukt.to_owned(),
    };
    let types = btf.resolve_types_by_name(strukt).map_err(|_| no_struct())?;
    let found = types.iter().find_map(|t| match t {
        Type::Struct(s) if !s.members.is_empty() => Some(s),
        _ => None,
    });
    let s = found.ok_or_else(no_struct)?;
    match find_member(btf, s, field)? {
        Some((bits, false)) if bits % 8 == 0 => Ok(bits / 8),
        Some(_) => Err(BtfError::Bitfield {
            path: PathBuf::new(),
            strukt: strukt.to_owned(),
            field: field.to_owned(),
        }),
        None => Err(BtfError::NoField {
            path: PathBuf::new(),
            strukt: strukt.to_owned(),
            field: field.to_owned(),
            hint: "",
        }),
    }
}

/// Bit offset of `field` in `s` and whether it is a bitfield, recursing into anonymous members.
fn find_member(
    btf: &Btf,
    s: &btf_rs::Struct,
    field: &str,
) -> Result<Option<(u32, bool)>, BtfError> {
    for member in &s.members {
        let name = btf.resolve_name(member).unwrap_or_default();
        if name == field {
            let bitfield = member.bitfield_size().is_some_and(|size| size != 0);
            return Ok(Some((member.bit_offset(), bitfield)));
        }
        if name.is_empty() {
            if let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(member) {
                if let Some((bits, bitfield)) = find_member(btf, &inner, field)? {
                    return Ok(Some((member.bit_offset() + bits, bitfield)));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Offset of `strukt.field` as `pahole` prints it (`/* offset size */`).
    fn pahole(strukt: &str, field: &str) -> u32 {
        let out = Command::new("pahole")
            .args(["-C", strukt, VMLINUX_BTF])
            .output()
            .unwrap_or_else(|e| {
                panic!("pahole not runnable ({e}): run `cargo xtask setup` (installs dwarves)")
            });
        let text = String::from_utf8_lossy(&out.stdout);
        let wanted = format!(" {field};");
        let wanted_array = format!(" {field}[");
        let line = text
            .lines()
            .find(|l| (l.contains(&wanted) || l.contains(&wanted_array)) && l.contains("/*"))
            .unwrap_or_else(|| panic!("pahole shows no {strukt}.{field}:\n{text}"));
        let comment = line.split("/*").nth(1).unwrap();
        comment.split_whitespace().next().unwrap().parse().unwrap()
    }

    #[test]
    fn offsets_match_pahole() {
        let offsets =
            kernel_offsets(Path::new(VMLINUX_BTF)).expect("offsets from the running kernel's BTF");
        for (strukt, field, got) in [
            ("task_struct", "files", offsets.task_files),
            ("task_struct", "real_parent", offsets.task_real_parent),
            ("task_struct", "loginuid", offsets.task_loginuid),
            ("task_struct", "start_boottime", offsets.task_start_boottime),
            ("files_struct", "fdt", offsets.files_fdt),
            ("fdtable", "fd", offsets.fdtable_fd),
            ("file", "f_path", offsets.file_f_path),
            ("dentry", "d_parent", offsets.dentry_d_parent),
            ("dentry", "d_inode", offsets.dentry_d_inode),
            ("inode", "i_ino", offsets.inode_i_ino),
            ("super_block", "s_dev", offsets.sb_s_dev),
            ("mount", "mnt", offsets.mount_mnt),
            ("mount", "mnt_id", offsets.mount_mnt_id),
            ("vfsmount", "mnt_root", offsets.vfsmount_mnt_root),
            ("task_struct", "mm", offsets.task_mm),
            ("mm_struct", "exe_file", offsets.mm_exe_file),
            ("file", "f_mode", offsets.file_f_mode),
            ("file", "f_flags", offsets.file_f_flags),
            ("linux_binprm", "file", offsets.binprm_file),
            ("unix_sock", "path", offsets.unix_sock_path),
            ("file", "private_data", offsets.file_private_data),
            ("socket", "sk", offsets.socket_sk),
            ("sock_common", "skc_family", offsets.skc_family),
            ("sock_common", "skc_num", offsets.skc_num),
            ("sock_common", "skc_dport", offsets.skc_dport),
            ("unix_sock", "peer", offsets.unix_sock_peer),
            ("sock_common", "skc_daddr", offsets.skc_daddr),
            ("sock_common", "skc_rcv_saddr", offsets.skc_rcv_saddr),
            ("sock_common", "skc_v6_daddr", offsets.skc_v6_daddr),
            ("sock_common", "skc_v6_rcv_saddr", offsets.skc_v6_rcv_saddr),
            ("task_struct", "signal", offsets.task_signal),
            ("signal_struct", "live", offsets.signal_live),
            ("task_struct", "ptrace", offsets.task_ptrace),
            ("inode", "i_uid", offsets.inode_i_uid),
            ("inode", "i_mode", offsets.inode_i_mode),
            ("msghdr", "msg_controllen", offsets.msghdr_msg_controllen),
            ("linux_binprm", "interp", offsets.binprm_interp),
            ("mm_struct", "env_start", offsets.mm_env_start),
            ("mm_struct", "env_end", offsets.mm_env_end),
            ("task_struct", "cred", offsets.task_cred),
            ("cred", "user_ns", offsets.cred_user_ns),
            ("user_namespace", "level", offsets.user_ns_level),
        ] {
            assert_eq!(got, pahole(strukt, field), "{strukt}.{field}");
        }
        assert_eq!(
            offsets.task_thread_status,
            pahole("task_struct", "thread_info") + pahole("thread_info", "status"),
            "task_struct.thread_info.status"
        );
    }

    #[test]
    fn anonymous_members_are_searched() {
        // qstr.name sits after an anonymous union holding hash and len.
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        assert_eq!(field_offset(&btf, "qstr", "name").unwrap(), 8);
        assert_eq!(field_offset(&btf, "qstr", "len").unwrap(), 4);
    }

    #[test]
    fn lsm_hook_prototypes_are_read() {
        let btf = Path::new(VMLINUX_BTF);
        if !btf.exists() {
            return;
        }
        // `file_open(struct file *)` has kept its shape since BPF LSM came in (5.7).
        assert_eq!(lsm_hook_args(btf, "file_open"), Some(1));
        assert!(matches!(lsm_hook_args(btf, "inode_setattr"), Some(2 | 3)));
        assert_eq!(lsm_hook_args(btf, "no_such_hook"), None);
    }

    #[test]
    fn missing_struct_and_field_are_named() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let err = field_offset(&btf, "no_such_struct_phiguard", "x").unwrap_err();
        assert!(
            err.to_string()
                .contains("no struct no_such_struct_phiguard"),
            "{err}"
        );
        let err = field_offset(&btf, "task_struct", "no_such_field").unwrap_err();
        assert!(
            err.to_string()
                .contains("task_struct has no field `no_such_field`"),
            "{err}"
        );
    }
}
