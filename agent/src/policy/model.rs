//! The validated policy model: what is protected, who may use it, and how strictly.

use std::{net::IpAddr, path::PathBuf};

/// What happens to an access no rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Refuse it (EPERM, or kill the process where the kernel offers nothing better).
    Enforce,
    /// Let it happen and report a would-deny.
    Audit,
}

/// Kinds of file access a rule governs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Opening for reading.
    pub read: bool,
    /// Opening for writing, creating, truncating or appending.
    pub write: bool,
}

/// A user named by name or id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Numeric id.
    Id(u32),
    /// Name, resolved against the account database when the policy is compiled.
    Name(String),
}

/// One subject a rule allows: every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// The executable's path.
    pub exe: Option<PathBuf>,
    /// The executable's expected sha256 (hex): a different binary at that path is not allowed.
    pub sha256: Option<String>,
    /// The (real) user.
    pub user: Option<Principal>,
    /// The (primary) group.
    pub group: Option<Principal>,
    /// The parent process's executable.
    pub parent: Option<PathBuf>,
    /// The script the process runs through its `#!` line (see `crate::policy::script`).
    pub script: Option<ScriptRef>,
}

/// A `script:` path and where the policy gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptRef {
    /// Absolute and normalised.
    pub path: PathBuf,
    /// `file:line:column: field`, for warnings about it.
    pub at: String,
}

/// Protected files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileResource {
    /// A directory (with `recursive`) or a single file; absolute and normalised.
    pub path: PathBuf,
    /// `DIR/**`: everything below the directory.
    pub recursive: bool,
    /// What the rule governs; other accesses are left alone.
    pub access: Access,
}

/// A protected database endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP port, optionally only towards one address.
    Tcp {
        /// Port.
        port: u16,
        /// Remote address (any when absent).
        address: Option<IpAddr>,
    },
    /// A unix socket path.
    Unix {
        /// The socket's path.
        path: PathBuf,
    },
}

/// An exec allow-list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecAllowList {
    /// Only binaries under these directories (or these exact files) may run.
    pub allow: Vec<PathBuf>,
    /// Only processes in this cgroup v2 (path relative to the cgroup root) are restricted;
    /// `None`: the whole host.
    pub cgroup: Option<PathBuf>,
}

/// What a rule protects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resources {
    /// Files.
    Files(Vec<FileResource>),
    /// Database endpoints.
    Database(Vec<Endpoint>),
    /// Program execution.
    Exec(ExecAllowList),
}

/// One rule: resources and the subjects allowed to use them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Name, unique within its policy.
    pub name: String,
    /// What it protects.
    pub resources: Resources,
    /// Who may (for exec rules: unused, the allow-list is the rule).
    pub allow: Vec<Subject>,
}

/// A policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Name, unique across the set.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Enforce or audit.
    pub mode: Mode,
    /// Its rules.
    pub rules: Vec<Rule>,
    /// The file it came from.
    pub source: PathBuf,
}

/// Every policy in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// Policies, in file-name order.
    pub policies: Vec<Policy>,
}
