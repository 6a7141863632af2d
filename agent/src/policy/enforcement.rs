//! Which layer enforces a denial of each kind of resource on this kernel: the one table,
//! read by the policy report (`protects …` lines), the metrics
//! (`phiguard_enforcement_layer`), the status file and the start-up log.

use phiguard_common::program::Program;

use super::compile::ResourceKind;
use crate::kernel::{layer::FileLayer, registry::ProgramSpec};

/// The BPF LSM programs that did not attach although `enforce_file_open` did (BPF LSM decides
/// file opens): each one loses what its own hook refuses, not the whole layer — an exec hook
/// that fails leaves execs to the SIGKILL at exec, a `unix_stream_connect` that fails leaves
/// unix sockets unenforced, an `inode_*` hook that fails leaves its operation unrefused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LsmGaps(u64);

impl LsmGaps {
    /// The gaps of a load: the BPF LSM programs among `failed` (programs that did not attach),
    /// except `enforce_file_open` (without it BPF LSM decides nothing).
    pub fn of<'a>(failed: impl IntoIterator<Item = &'a ProgramSpec>) -> LsmGaps {
        let bits = failed
            .into_iter()
            .filter(|spec| spec.family == crate::kernel::registry::Family::Enforce)
            .filter(|spec| spec.program != Program::EnforceFileOpen)
            .fold(0u64, |bits, spec| bits | 1 << spec.program as u64);
        LsmGaps(bits)
    }

    /// Whether `program` did not attach.
    pub fn lacks(self, program: Program) -> bool {
        self.0 & (1 << program as u64) != 0
    }

    /// Whether every BPF LSM program attached.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// What the missing file hooks leave unrefused, in words (their registry's
    /// `missing_means`), for the file layer's description.
    fn file_gaps(self) -> Vec<&'static str> {
        crate::kernel::registry::PROGRAMS
            .iter()
            .filter(|spec| {
                self.lacks(spec.program)
                    && !matches!(
                        spec.program,
                        Program::EnforceBprmCheckSecurity | Program::EnforceUnixStreamConnect
                    )
            })
            .map(|spec| {
                spec.missing_means
                    .strip_prefix("no BPF LSM: ")
                    .unwrap_or(spec.missing_means)
            })
            .collect()
    }
}

/// How a denial is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnforcementLayer {
    /// BPF LSM programs: the call fails with `EPERM` before anything happens.
    Lsm,
    /// fanotify permission events answered by the agent: `EPERM` before a descriptor exists.
    Fanotify,
    /// cgroup `connect4`/`connect6`: `connect()` fails with `EPERM`.
    Cgroup,
    /// SIGKILL from the syscall tracepoint (no BPF LSM): the process dies after the call.
    Signal,
    /// Not enforced on this kernel.
    None,
}

impl ResourceKind {
    /// Every kind, in the order the status and metrics list them.
    pub const ALL: [ResourceKind; 4] = [
        ResourceKind::File,
        ResourceKind::Exec,
        ResourceKind::Tcp,
        ResourceKind::Unix,
    ];

    /// The kind's name in the status and the metrics (`file`, `exec`, `tcp`, `unix`).
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::File => "file",
            ResourceKind::Exec => "exec",
            ResourceKind::Tcp => "tcp",
            ResourceKind::Unix => "unix",
        }
    }

    /// How this kernel enforces a denial of this kind of resource, given the layer that
    /// decides file opens (`Lsm` means `enforce_file_open` is attached and BPF LSM active) and
    /// the BPF LSM programs that did not attach, in words.
    pub fn layer(self, files: FileLayer, gaps: LsmGaps) -> String {
        let layer = EnforcementLayer::of(self, files, gaps);
        let described = layer.describe(self);
        let missing = gaps.file_gaps();
        if layer == EnforcementLayer::Lsm && self == ResourceKind::File && !missing.is_empty() {
            format!(
                "{described}; BUT on this kernel some of those hooks did not load: {}",
                missing.join("; ")
            )
        } else {
            described.to_owned()
        }
    }
}

impl EnforcementLayer {
    /// The layer that enforces `kind`, given the layer that decides file opens and the BPF LSM
    /// programs that did not attach.
    pub fn of(kind: ResourceKind, files: FileLayer, gaps: LsmGaps) -> EnforcementLayer {
        match (kind, files) {
            (ResourceKind::Tcp, _) => EnforcementLayer::Cgroup,
            (ResourceKind::Exec, FileLayer::Lsm)
                if gaps.lacks(Program::EnforceBprmCheckSecurity) =>
            {
                EnforcementLayer::Signal
            }
            (ResourceKind::Unix, FileLayer::Lsm)
                if gaps.lacks(Program::EnforceUnixStreamConnect) =>
            {
                EnforcementLayer::None
            }
            (_, FileLayer::Lsm) => EnforcementLayer::Lsm,
            (ResourceKind::Unix, _) => EnforcementLayer::None,
            (_, FileLayer::Fanotify) => EnforcementLayer::Fanotify,
            (_, FileLayer::Signal) => EnforcementLayer::Signal,
        }
    }

    /// The layer's label in the metrics (`lsm`, `fanotify`, `cgroup`, `signal`, `none`).
    pub fn label(self) -> &'static str {
        match self {
            EnforcementLayer::Lsm => "lsm",
            EnforcementLayer::Fanotify => "fanotify",
            EnforcementLayer::Cgroup => "cgroup",
            EnforcementLayer::Signal => "signal",
            EnforcementLayer::None => "none",
        }
    }

    /// What a denial of `kind` under this layer does, in words.
    pub fn describe(self, kind: ResourceKind) -> &'static str {
        match (self, kind) {
            (EnforcementLayer::Cgroup, _) => "cgroup connect4/6: connect() fails with EPERM",
            (EnforcementLayer::Lsm, ResourceKind::File) => {
                "BPF LSM on the inode's label (any depth, any name): open() fails with EPERM, and so do truncate, unlink, rename, link, chmod, chown, utimes and xattr changes by a subject without write"
            }
            (EnforcementLayer::Lsm, _) => "BPF LSM: the call fails with EPERM",
            (EnforcementLayer::Fanotify, ResourceKind::Exec) => {
                "fanotify exec permission event (no BPF LSM here): execve() of an unlisted program fails with EPERM and the process keeps its old image; a script's interpreter, and any exec while the agent is down, SIGKILL when the new image is in place"
            }
            (EnforcementLayer::Fanotify, _) => {
                "fanotify permission event (no BPF LSM here): open() fails with EPERM before a descriptor exists, by any route to the inode; while the agent is down, SIGKILL at open()/openat()/openat2() exit; truncate(), unlink(), rename(), link(), chmod/chown/xattrs are not refused (no open) but reported after the fact (would_deny)"
            }
            (EnforcementLayer::Signal, ResourceKind::Exec) => {
                "SIGKILL at exec (no BPF LSM here): the new program never runs an instruction"
            }
            (EnforcementLayer::Signal, _) => {
                "SIGKILL at open()/openat()/openat2() exit (no BPF LSM, no fanotify permission events here): the process dies before it can read or write; O_TRUNC has happened; the 32-bit entry, io_uring and file handles are not covered; truncate(), unlink(), rename(), link(), chmod/chown/xattrs are not governed (no open)"
            }
            (EnforcementLayer::None, _) => {
                "NOT ENFORCED on this kernel (needs BPF LSM socket_connect); connects are not reported either"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_is_the_cgroup_layers_everywhere_and_the_rest_follows_the_file_layer() {
        let none = LsmGaps::default();
        let labels =
            |files| ResourceKind::ALL.map(|kind| EnforcementLayer::of(kind, files, none).label());
        assert_eq!(labels(FileLayer::Lsm), ["lsm", "lsm", "cgroup", "lsm"]);
        assert_eq!(
            labels(FileLayer::Fanotify),
            ["fanotify", "fanotify", "cgroup", "none"]
        );
        assert_eq!(
            labels(FileLayer::Signal),
            ["signal", "signal", "cgroup", "none"]
        );
        assert!(ResourceKind::Unix
            .layer(FileLayer::Signal, none)
            .starts_with("NOT ENFORCED"));
        assert!(ResourceKind::Exec
            .layer(FileLayer::Signal, none)
            .starts_with("SIGKILL at exec"));
        assert!(ResourceKind::File
            .layer(FileLayer::Lsm, none)
            .contains("truncate, unlink, rename, link"));
        assert!(ResourceKind::File
            .layer(FileLayer::Fanotify, none)
            .contains("not refused (no open) but reported after the fact"));
    }

    #[test]
    fn a_bpf_lsm_hook_that_did_not_load_loses_its_hook_not_the_layer() {
        let failed = |programs: &[Program]| {
            LsmGaps::of(
                crate::kernel::registry::PROGRAMS
                    .iter()
                    .filter(|spec| programs.contains(&spec.program)),
            )
        };
        // A tracepoint that failed is no BPF LSM gap; file_open is the layer itself.
        assert!(failed(&[Program::FileSysExitPidfdGetfd, Program::EnforceFileOpen]).is_empty());

        let gaps = failed(&[
            Program::EnforceInodeSetattr,
            Program::EnforceUnixStreamConnect,
        ]);
        let labels =
            ResourceKind::ALL.map(|kind| EnforcementLayer::of(kind, FileLayer::Lsm, gaps).label());
        assert_eq!(labels, ["lsm", "lsm", "cgroup", "none"]);
        let file = ResourceKind::File.layer(FileLayer::Lsm, gaps);
        assert!(file.starts_with("BPF LSM on the inode's label"), "{file}");
        assert!(
            file.contains("did not load: truncate, chmod, chown and utimes of protected files are not refused"),
            "{file}"
        );
        assert!(!file.contains("unix"), "{file}");
        assert!(ResourceKind::Unix
            .layer(FileLayer::Lsm, gaps)
            .starts_with("NOT ENFORCED"));

        let gaps = failed(&[Program::EnforceBprmCheckSecurity]);
        assert_eq!(
            EnforcementLayer::of(ResourceKind::Exec, FileLayer::Lsm, gaps),
            EnforcementLayer::Signal
        );
        assert_eq!(
            ResourceKind::File.layer(FileLayer::Lsm, gaps),
            ResourceKind::File.layer(FileLayer::Lsm, LsmGaps::default())
        );
    }
}
