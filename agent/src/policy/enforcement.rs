//! Which layer enforces a denial of each kind of resource on this kernel: the one table,
//! read by the policy report (`protects …` lines), the metrics
//! (`phiguard_enforcement_layer`), the status file and the start-up log.

use super::compile::ResourceKind;

/// How a denial is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnforcementLayer {
    /// BPF LSM programs: the call fails with `EPERM` before anything happens.
    Lsm,
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

    /// How this kernel enforces a denial of this kind of resource (`lsm`: BPF LSM programs are
    /// attached), in words.
    pub fn layer(self, lsm: bool) -> &'static str {
        EnforcementLayer::of(self, lsm).describe(self)
    }
}

impl EnforcementLayer {
    /// The layer that enforces `kind` (`lsm`: BPF LSM programs are attached).
    pub fn of(kind: ResourceKind, lsm: bool) -> EnforcementLayer {
        match (kind, lsm) {
            (ResourceKind::Tcp, _) => EnforcementLayer::Cgroup,
            (_, true) => EnforcementLayer::Lsm,
            (ResourceKind::Unix, false) => EnforcementLayer::None,
            (_, false) => EnforcementLayer::Signal,
        }
    }

    /// The layer's label in the metrics (`lsm`, `cgroup`, `signal`, `none`).
    pub fn label(self) -> &'static str {
        match self {
            EnforcementLayer::Lsm => "lsm",
            EnforcementLayer::Cgroup => "cgroup",
            EnforcementLayer::Signal => "signal",
            EnforcementLayer::None => "none",
        }
    }

    /// What a denial of `kind` under this layer does, in words.
    pub fn describe(self, kind: ResourceKind) -> &'static str {
        match (self, kind) {
            (EnforcementLayer::Cgroup, _) => "cgroup connect4/6: connect() fails with EPERM",
            (EnforcementLayer::Lsm, _) => "BPF LSM: the call fails with EPERM",
            (EnforcementLayer::Signal, ResourceKind::Exec) => {
                "SIGKILL at exec (no BPF LSM here): the new program never runs an instruction"
            }
            (EnforcementLayer::Signal, _) => {
                "SIGKILL at open() exit (no BPF LSM here): the process dies before it can read or write"
            }
            (EnforcementLayer::None, _) => {
                "NOT ENFORCED on this kernel (needs BPF LSM socket_connect); connects are not reported either"
            }
        }
    }

    /// One line for the start-up log: the layer of every kind of resource.
    pub fn summary(lsm: bool) -> String {
        ResourceKind::ALL
            .iter()
            .map(|&kind| {
                format!(
                    "{} {}",
                    kind.name(),
                    EnforcementLayer::of(kind, lsm).label()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_is_the_cgroup_layers_everywhere_and_the_rest_follows_bpf_lsm() {
        assert_eq!(
            EnforcementLayer::summary(true),
            "file lsm, exec lsm, tcp cgroup, unix lsm"
        );
        assert_eq!(
            EnforcementLayer::summary(false),
            "file signal, exec signal, tcp cgroup, unix none"
        );
        assert!(ResourceKind::Unix.layer(false).starts_with("NOT ENFORCED"));
        assert!(ResourceKind::Exec
            .layer(false)
            .starts_with("SIGKILL at exec"));
    }
}
