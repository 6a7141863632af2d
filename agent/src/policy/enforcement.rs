//! Which layer enforces a denial of each kind of resource on this kernel: the one table,
//! read by the policy report (`protects …` lines), the metrics
//! (`phiguard_enforcement_layer`), the status file and the start-up log.

use super::compile::ResourceKind;
use crate::kernel::layer::FileLayer;

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
    /// decides file opens (`Lsm` means the BPF LSM programs are attached and active), in words.
    pub fn layer(self, files: FileLayer) -> &'static str {
        EnforcementLayer::of(self, files).describe(self)
    }
}

impl EnforcementLayer {
    /// The layer that enforces `kind`, given the layer that decides file opens.
    pub fn of(kind: ResourceKind, files: FileLayer) -> EnforcementLayer {
        match (kind, files) {
            (ResourceKind::Tcp, _) => EnforcementLayer::Cgroup,
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
        let labels =
            |files| ResourceKind::ALL.map(|kind| EnforcementLayer::of(kind, files).label());
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
            .layer(FileLayer::Signal)
            .starts_with("NOT ENFORCED"));
        assert!(ResourceKind::Exec
            .layer(FileLayer::Signal)
            .starts_with("SIGKILL at exec"));
        assert!(ResourceKind::File
            .layer(FileLayer::Lsm)
            .contains("truncate, unlink, rename, link"));
        assert!(ResourceKind::File
            .layer(FileLayer::Fanotify)
            .contains("not refused (no open) but reported after the fact"));
    }
}
