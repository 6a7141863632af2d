//! Compiling a policy set into what the kernel programs look up: protection units (kernel
//! rules) with their subjects, the inodes, ports and cgroups they protect.
//!
//! A kernel rule merges every policy rule that covers one resource. Allow-lists add up: a
//! subject of any covering rule may make the accesses that rule governs. An access governed by
//! at least one enforce-mode rule is enforced; one governed by audit-mode rules only is
//! reported as would-deny. Nested protections merge too: a file under both `/srv/**` and
//! `/srv/ephi/**` is governed by both rules.
//!
//! Everything the kernel matches is resolved here, once per load: paths to (device, inode),
//! user and group names to ids, cgroup paths to cgroup ids, pinned binaries checked against
//! their sha256. What cannot be resolved on this host is a warning, not an error: the rest of
//! the set still takes effect, and the warning says what does not.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use phiguard_common::{
    addr,
    policy::{access, RuleEntry, MAX_RULES, MAX_SUBJECTS},
};
use sha2::{Digest as _, Sha256};

use super::{
    enforcement::LsmGaps,
    model::{Access, Endpoint, Mode, PolicySet, Principal, Resources, ScriptRef, Subject},
    script::CheckedScript,
};
use crate::{
    kernel::layer::FileLayer,
    paths::{self, kernel_dev, FileId},
    watch::WatchSet,
};

/// The policy rule a subject or a governed access comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Policy name.
    pub policy: String,
    /// Rule name.
    pub rule: String,
    /// The policy's file.
    pub file: PathBuf,
    /// The policy's mode.
    pub mode: Mode,
    /// `access` bits this origin governs in the kernel rule.
    pub access: u32,
}

/// What kind of resource a kernel rule protects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResourceKind {
    /// Files (opens).
    #[default]
    File,
    /// A TCP endpoint (connects).
    Tcp,
    /// A unix socket (connects).
    Unix,
    /// Program execution.
    Exec,
}

/// One protection unit, as loaded into the kernel's `RULES` and subject maps.
#[derive(Clone, Debug, Default)]
pub struct KernelRule {
    /// What it protects.
    pub kind: ResourceKind,
    /// The compiled entry.
    pub entry: RuleEntry,
    /// Subject masks by executable.
    pub exe: BTreeMap<FileId, u64>,
    /// Subject masks by parent executable.
    pub parent: BTreeMap<FileId, u64>,
    /// Subject masks by uid.
    pub uid: BTreeMap<u32, u64>,
    /// Subject masks by gid.
    pub gid: BTreeMap<u32, u64>,
    /// Subject masks by script.
    pub script: BTreeMap<FileId, u64>,
    /// Subjects that name a script (they match only a process running one of `script`).
    pub script_subjects: u64,
    /// The script each such subject names, by subject bit: (path as given, sha256 at load).
    pub subject_scripts: BTreeMap<u32, (PathBuf, String)>,
    /// Files and directories an exec rule allows to run.
    pub exec_allowed: BTreeSet<FileId>,
    /// The origin of each subject bit.
    pub subjects: Vec<Origin>,
    /// Every policy rule merged into this one.
    pub origins: Vec<Origin>,
    /// What it protects, for people ("/srv/ephi/** read,write").
    pub resource: String,
}

impl KernelRule {
    /// The origin that decided `access` with a denial: an enforce-mode one when `enforced`.
    pub fn denying_origin(&self, access: u32, enforced: bool) -> Option<&Origin> {
        let wanted = if enforced { Mode::Enforce } else { Mode::Audit };
        self.origins
            .iter()
            .find(|o| o.access & access != 0 && o.mode == wanted)
            .or_else(|| self.origins.iter().find(|o| o.access & access != 0))
    }
}

/// A watched or protected inode as the kernel matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeEntry {
    /// The inode.
    pub id: FileId,
    /// Watch id (index in [`Compiled::watches`]).
    pub watch_id: u32,
    /// Kernel rule protecting an open of the inode itself.
    pub rule_here: Option<u32>,
    /// Kernel rule protecting what lies below it.
    pub rule_below: Option<u32>,
    /// A configured watch covers it: every open is reported, governed or not.
    pub observed: bool,
}

/// A policy set ready for the kernel.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// Kernel rules; a rule's index here is its index within a slot.
    pub rules: Vec<KernelRule>,
    /// Every inode the file programs match.
    pub inodes: Vec<InodeEntry>,
    /// Configured watches plus every protected path (ids stable across reloads).
    pub watches: WatchSet,
    /// Watched and protected ports, with the protecting rule.
    pub ports: BTreeMap<u16, Option<u32>>,
    /// Exec allow-lists by cgroup id (0: the whole host).
    pub exec_scopes: BTreeMap<u64, u32>,
    /// Unix-socket endpoints the set protects, by the socket file's identity (enforced only
    /// where BPF LSM is available).
    pub unix_sockets: Vec<(PathBuf, FileId, u32)>,
    /// Paths listed scripts are recognised by at exec, with the script each reaches.
    pub script_paths: BTreeMap<PathBuf, FileId>,
    /// What cannot take effect on this host.
    pub warnings: Vec<String>,
    /// Names of the policies, in load order.
    pub policies: Vec<String>,
}

/// A policy set that cannot be loaded into the kernel.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// More protection units than a slot holds.
    #[error("the policy set needs {0} kernel rules; at most {MAX_RULES}")]
    TooManyRules(usize),
    /// More subjects cover one resource than a mask holds.
    #[error("{resource} is covered by {count} subjects across {policies}; at most {MAX_SUBJECTS}")]
    TooManySubjects {
        /// The resource.
        resource: String,
        /// Subjects.
        count: usize,
        /// The policies involved.
        policies: String,
    },
    /// Rules disagree on the address of one protected port.
    #[error("port {port}: {first} and {second} limit it to different addresses; give each port one address (or none)")]
    PortAddress {
        /// The port.
        port: u16,
        /// One rule.
        first: String,
        /// The other.
        second: String,
    },
}

/// One protected file resource, resolved.
struct FileSource {
    path: PathBuf,
    recursive: bool,
    access: Access,
    rule: usize,
}

/// Compiles `set` for this host. `watches` are the configured watches (their ids are kept);
/// `cgroup_root` is the cgroup v2 mount that exec `cgroup` paths are relative to.
pub fn compile(
    set: &PolicySet,
    watches: &WatchSet,
    cgroup_root: &Path,
) -> Result<Compiled, CompileError> {
    let mut out = Compiled {
        watches: watches.clone(),
        policies: set.policies.iter().map(|p| p.name.clone()).collect(),
        ..Compiled::default()
    };
    let mut builder = Builder::default();
    compile_files(set, &mut out, &mut builder)?;
    compile_ports(set, &mut out, &mut builder)?;
    compile_exec(set, cgroup_root, &mut out, &mut builder);
    out.rules = builder.rules;
    out.script_paths = builder.resolved.script_paths();
    if out.rules.len() > MAX_RULES as usize {
        return Err(CompileError::TooManyRules(out.rules.len()));
    }
    Ok(out)
}

/// Collects kernel rules, sharing one between resources with the same origins.
#[derive(Default)]
struct Builder {
    rules: Vec<KernelRule>,
    by_key: BTreeMap<Vec<(usize, usize, u32)>, u32>,
    resolved: Resolved,
}

/// Per-load caches of what subjects resolve to, and the warnings already given.
#[derive(Default)]
struct Resolved {
    files: BTreeMap<PathBuf, Option<FileId>>,
    hashes: BTreeMap<PathBuf, Option<String>>,
    scripts: BTreeMap<PathBuf, Option<CheckedScript>>,
    warned: BTreeSet<String>,
}

impl Resolved {
    /// The script named at `script`, checked (see [`super::script::check`]); a warning and
    /// `None` when it cannot be a subject.
    fn script(&mut self, script: &ScriptRef, warnings: &mut Vec<String>) -> Option<FileId> {
        if !self.scripts.contains_key(&script.path) {
            let checked = match super::script::check(&script.path) {
                Ok(checked) => Some(checked),
                Err(why) => {
                    self.warn(
                        warnings,
                        format!(
                            "{}: script {}: {why}; that subject is refused",
                            script.at,
                            script.path.display()
                        ),
                    );
                    None
                }
            };
            self.scripts.insert(script.path.clone(), checked);
        }
        self.scripts[&script.path].as_ref().map(|c| c.id)
    }

    /// Every path a checked script is recognised by.
    fn script_paths(&self) -> BTreeMap<PathBuf, FileId> {
        self.scripts
            .values()
            .flatten()
            .flat_map(|c| c.paths.iter().map(|p| (p.clone(), c.id)))
            .collect()
    }

    fn file(&mut self, path: &Path, warnings: &mut Vec<String>, what: &str) -> Option<FileId> {
        if let Some(id) = self.files.get(path) {
            return *id;
        }
        let id = match FileId::of(path) {
            Ok(id) => Some(id),
            Err(e) => {
                self.warn(
                    warnings,
                    format!("{what} {}: {e}; it cannot match", path.display()),
                );
                None
            }
        };
        self.files.insert(path.to_owned(), id);
        id
    }

    fn sha256(&mut self, path: &Path) -> Option<String> {
        self.hashes
            .entry(path.to_owned())
            .or_insert_with(|| {
                let bytes = fs::read(path).ok()?;
                Some(hex::encode(Sha256::digest(bytes)))
            })
            .clone()
    }

    fn warn(&mut self, warnings: &mut Vec<String>, text: String) {
        if self.warned.insert(text.clone()) {
            warnings.push(text);
        }
    }
}

/// `(policy index, rule index, access)` keys identify a merge of origins.
type OriginKey = (usize, usize, u32);

impl Builder {
    /// The kernel rule for these origins, built on first use.
    fn rule(
        &mut self,
        set: &PolicySet,
        kind: ResourceKind,
        origins: &[OriginKey],
        resource: String,
        warnings: &mut Vec<String>,
    ) -> Result<u32, CompileError> {
        let key = origins.to_vec();
        if let Some(index) = self.by_key.get(&key) {
            let rule = &mut self.rules[*index as usize];
            if !rule.resource.contains(&resource) {
                rule.resource = format!("{}, {resource}", rule.resource);
            }
            return Ok(*index);
        }
        let mut rule = KernelRule {
            kind,
            resource,
            ..KernelRule::default()
        };
        for &(p, r, bits) in origins {
            let policy = &set.policies[p];
            let origin = Origin {
                policy: policy.name.clone(),
                rule: policy.rules[r].name.clone(),
                file: policy.source.clone(),
                mode: policy.mode,
                access: bits,
            };
            match policy.mode {
                Mode::Enforce => rule.entry.enforce |= bits,
                Mode::Audit => rule.entry.audit |= bits,
            }
            for subject in &policy.rules[r].allow {
                let bit = rule.subjects.len();
                if bit >= MAX_SUBJECTS as usize {
                    let policies: BTreeSet<&str> = origins
                        .iter()
                        .map(|&(p, _, _)| set.policies[p].name.as_str())
                        .collect();
                    return Err(CompileError::TooManySubjects {
                        resource: rule.resource,
                        count: origins
                            .iter()
                            .map(|&(p, r, _)| set.policies[p].rules[r].allow.len())
                            .sum(),
                        policies: policies.into_iter().collect::<Vec<_>>().join(", "),
                    });
                }
                self.add_subject(&mut rule, bit as u32, bits, subject, &origin, warnings);
                rule.subjects.push(origin.clone());
            }
            rule.origins.push(origin);
        }
        rule.entry.audit &= !rule.entry.enforce;
        let index = self.rules.len() as u32;
        self.rules.push(rule);
        self.by_key.insert(key, index);
        Ok(index)
    }

    fn add_subject(
        &mut self,
        rule: &mut KernelRule,
        bit: u32,
        bits: u32,
        subject: &Subject,
        origin: &Origin,
        warnings: &mut Vec<String>,
    ) {
        let mask = 1u64 << bit;
        let who = format!("policy {} rule {}", origin.policy, origin.rule);
        let mut usable = true;
        match &subject.exe {
            None => rule.entry.any_exe |= mask,
            Some(exe) => match self.resolved.file(exe, warnings, &format!("{who}: exe")) {
                Some(id) => {
                    if let Some(pinned) = &subject.sha256 {
                        let actual = self.resolved.sha256(exe);
                        if actual.as_deref() != Some(pinned.as_str()) {
                            self.resolved.warn(
                                warnings,
                                format!(
                                    "{who}: {} does not have the pinned sha256 {pinned} (it has {}); that subject is refused",
                                    exe.display(),
                                    actual.as_deref().unwrap_or("no readable content")
                                ),
                            );
                            usable = false;
                        }
                    }
                    if usable {
                        *rule.exe.entry(id).or_default() |= mask;
                    }
                }
                None => usable = false,
            },
        }
        match &subject.parent {
            None => rule.entry.any_parent |= mask,
            Some(parent) => {
                match self
                    .resolved
                    .file(parent, warnings, &format!("{who}: parent"))
                {
                    Some(id) => *rule.parent.entry(id).or_default() |= mask,
                    None => usable = false,
                }
            }
        }
        if let Some(script) = &subject.script {
            rule.script_subjects |= mask;
            match self.resolved.script(script, warnings) {
                Some(id) => {
                    *rule.script.entry(id).or_default() |= mask;
                    let sha256 = self.resolved.sha256(&script.path).unwrap_or_default();
                    rule.subject_scripts
                        .insert(bit, (script.path.clone(), sha256));
                }
                None => usable = false,
            }
        }
        match &subject.user {
            None => rule.entry.any_uid |= mask,
            Some(user) => match uid_of(user) {
                Some(uid) => *rule.uid.entry(uid).or_default() |= mask,
                None => {
                    self.resolved
                        .warn(warnings, format!("{who}: no user {user} on this host"));
                    usable = false;
                }
            },
        }
        match &subject.group {
            None => rule.entry.any_gid |= mask,
            Some(group) => match gid_of(group) {
                Some(gid) => *rule.gid.entry(gid).or_default() |= mask,
                None => {
                    self.resolved
                        .warn(warnings, format!("{who}: no group {group} on this host"));
                    usable = false;
                }
            },
        }
        if usable {
            for (i, may) in rule.entry.may.iter_mut().enumerate() {
                if bits & (1 << i) != 0 {
                    *may |= mask;
                }
            }
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Id(id) => write!(f, "{id}"),
            Principal::Name(name) => f.write_str(name),
        }
    }
}

fn uid_of(user: &Principal) -> Option<u32> {
    match user {
        Principal::Id(id) => Some(*id),
        Principal::Name(name) => nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw()),
    }
}

fn gid_of(group: &Principal) -> Option<u32> {
    match group {
        Principal::Id(id) => Some(*id),
        Principal::Name(name) => nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw()),
    }
}

fn access_bits(access: Access) -> u32 {
    let mut bits = 0;
    if access.read {
        bits |= access::READ;
    }
    if access.write {
        bits |= access::WRITE;
    }
    bits
}

/// Names of access bits, for people and events.
pub fn access_names(bits: u32) -> Vec<String> {
    [
        (access::READ, "read"),
        (access::WRITE, "write"),
        (access::CONNECT, "connect"),
        (access::EXEC, "exec"),
    ]
    .iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| (*name).to_owned())
    .collect()
}

fn compile_files(
    set: &PolicySet,
    out: &mut Compiled,
    builder: &mut Builder,
) -> Result<(), CompileError> {
    let mut sources = Vec::new();
    for (p, policy) in set.policies.iter().enumerate() {
        for (r, rule) in policy.rules.iter().enumerate() {
            let Resources::Files(files) = &rule.resources else {
                continue;
            };
            for file in files {
                match fs::canonicalize(&file.path) {
                    Ok(path) => sources.push((
                        p,
                        FileSource {
                            path,
                            recursive: file.recursive,
                            access: file.access,
                            rule: r,
                        },
                    )),
                    Err(e) => builder.resolved.warn(
                        &mut out.warnings,
                        format!(
                            "policy {} rule {}: {}: {e}; not protected until it exists and the policies are reloaded",
                            policy.name,
                            rule.name,
                            file.path.display()
                        ),
                    ),
                }
            }
        }
    }
    // Every protected path and every configured watch is an anchor the kernel matches by inode;
    // so is every file with several hard links under a protected directory, which a link
    // elsewhere could otherwise reach without passing through the directory.
    let mut anchors: BTreeSet<PathBuf> = sources.iter().map(|(_, s)| s.path.clone()).collect();
    for (_, source) in sources.iter().filter(|(_, s)| s.recursive) {
        let linked = hard_linked_files(&source.path);
        if linked.truncated {
            builder.resolved.warn(
                &mut out.warnings,
                format!(
                    "{}: more than {MAX_LINKED_FILES} hard-linked files or {MAX_TREE_ENTRIES} entries; links to the rest are matched by path only",
                    source.path.display()
                ),
            );
        }
        anchors.extend(linked.files);
    }
    let configured: Vec<(PathBuf, bool)> = out
        .watches
        .paths
        .iter()
        .filter(|w| w.observed)
        .map(|w| (w.canonical.clone(), w.is_dir))
        .collect();
    anchors.extend(configured.iter().map(|(p, _)| p.clone()));
    for anchor in anchors {
        let covers_here = |s: &FileSource| {
            s.path == anchor || (s.recursive && paths::is_within(&anchor, &s.path))
        };
        let covers_below = |s: &FileSource| s.recursive && paths::is_within(&anchor, &s.path);
        let origins = |covers: &dyn Fn(&FileSource) -> bool| {
            let mut merged: BTreeMap<(usize, usize), u32> = BTreeMap::new();
            for (p, s) in &sources {
                if covers(s) {
                    *merged.entry((*p, s.rule)).or_default() |= access_bits(s.access);
                }
            }
            merged
                .into_iter()
                .map(|((p, r), bits)| (p, r, bits))
                .collect::<Vec<OriginKey>>()
        };
        let (here, below) = (origins(&covers_here), origins(&covers_below));
        let describe = |origins: &[OriginKey], suffix: &str| {
            let bits = origins.iter().fold(0, |acc, o| acc | o.2);
            format!(
                "{}{suffix} {}",
                anchor.display(),
                access_names(bits).join(",")
            )
        };
        let rule_here = if here.is_empty() {
            None
        } else {
            Some(builder.rule(
                set,
                ResourceKind::File,
                &here,
                describe(&here, ""),
                &mut out.warnings,
            )?)
        };
        let rule_below = if below.is_empty() {
            None
        } else {
            Some(builder.rule(
                set,
                ResourceKind::File,
                &below,
                describe(&below, "/**"),
                &mut out.warnings,
            )?)
        };
        let observed = configured
            .iter()
            .any(|(root, is_dir)| &anchor == root || (*is_dir && paths::is_within(&anchor, root)));
        let Ok(meta) = fs::metadata(&anchor) else {
            continue; // vanished since canonicalize: the next reload picks it up
        };
        let watch_id = out.watches.id_for(&anchor, &meta);
        out.inodes.push(InodeEntry {
            id: FileId {
                dev: kernel_dev(meta.dev()),
                ino: meta.ino(),
            },
            watch_id,
            rule_here,
            rule_below,
            observed,
        });
    }
    Ok(())
}

/// Most hard-linked files protected by their own inode entry.
pub const MAX_LINKED_FILES: usize = 512;
/// Most directory entries visited looking for them, per protected directory.
pub const MAX_TREE_ENTRIES: usize = 200_000;

/// Regular files with more than one link below `root` (same filesystem, no symlinks followed).
struct Linked {
    files: Vec<PathBuf>,
    truncated: bool,
}

fn hard_linked_files(root: &Path) -> Linked {
    let mut found = Linked {
        files: Vec::new(),
        truncated: false,
    };
    let Ok(meta) = fs::symlink_metadata(root) else {
        return found;
    };
    if !meta.is_dir() {
        return found;
    }
    let dev = meta.dev();
    let mut stack = vec![root.to_owned()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > MAX_TREE_ENTRIES || found.files.len() >= MAX_LINKED_FILES {
                found.truncated = true;
                return found;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && meta.nlink() > 1 {
                found.files.push(entry.path());
            }
        }
    }
    found
}

fn compile_ports(
    set: &PolicySet,
    out: &mut Compiled,
    builder: &mut Builder,
) -> Result<(), CompileError> {
    for port in &out.watches.ports {
        out.ports.insert(*port, None);
    }
    let mut by_port: BTreeMap<u16, Vec<(OriginKey, Option<std::net::IpAddr>)>> = BTreeMap::new();
    let mut unix: BTreeMap<PathBuf, Vec<OriginKey>> = BTreeMap::new();
    for (p, policy) in set.policies.iter().enumerate() {
        for (r, rule) in policy.rules.iter().enumerate() {
            let Resources::Database(endpoints) = &rule.resources else {
                continue;
            };
            for endpoint in endpoints {
                match endpoint {
                    Endpoint::Tcp { port, address } => by_port
                        .entry(*port)
                        .or_default()
                        .push(((p, r, access::CONNECT), *address)),
                    Endpoint::Unix { path } => {
                        unix.entry(path.clone())
                            .or_default()
                            .push((p, r, access::CONNECT));
                    }
                }
            }
        }
    }
    for (port, origins) in by_port {
        let name = |&((p, r, _), _): &(OriginKey, _)| {
            format!(
                "policy {} rule {}",
                set.policies[p].name, set.policies[p].rules[r].name
            )
        };
        let address = origins[0].1;
        if let Some(other) = origins.iter().find(|o| o.1 != address) {
            return Err(CompileError::PortAddress {
                port,
                first: name(&origins[0]),
                second: name(other),
            });
        }
        let mut keys: Vec<OriginKey> = origins.iter().map(|o| o.0).collect();
        keys.dedup();
        let resource = match address {
            Some(a) => format!("tcp {a} port {port} connect"),
            None => format!("tcp port {port} connect"),
        };
        let rule = builder.rule(set, ResourceKind::Tcp, &keys, resource, &mut out.warnings)?;
        if let Some(addr) = address {
            let entry = &mut builder.rules[rule as usize].entry;
            let mut bytes = [0u8; 16];
            let family = match addr {
                std::net::IpAddr::V4(v4) => {
                    bytes[..4].copy_from_slice(&v4.octets());
                    addr::AF_INET
                }
                std::net::IpAddr::V6(v6) => {
                    bytes = v6.octets();
                    addr::AF_INET6
                }
            };
            // The kernel compares the canonical forms (a mapped or loopback spelling of the
            // address is the address).
            (entry.addr_family, entry.addr) = addr::canonical_destination(family, bytes);
        }
        out.ports.insert(port, Some(rule));
    }
    for (path, mut keys) in unix {
        keys.dedup();
        let resource = format!("unix {} connect", path.display());
        let rule = builder.rule(set, ResourceKind::Unix, &keys, resource, &mut out.warnings)?;
        let what = "unix socket (not protected until it exists and the policies are reloaded)";
        if let Some(id) = builder.resolved.file(&path, &mut out.warnings, what) {
            out.unix_sockets.push((path, id, rule));
        }
    }
    Ok(())
}

fn compile_exec(set: &PolicySet, cgroup_root: &Path, out: &mut Compiled, builder: &mut Builder) {
    let mut by_scope: BTreeMap<Option<PathBuf>, Vec<(OriginKey, &[PathBuf])>> = BTreeMap::new();
    for (p, policy) in set.policies.iter().enumerate() {
        for (r, rule) in policy.rules.iter().enumerate() {
            if let Resources::Exec(list) = &rule.resources {
                by_scope
                    .entry(list.cgroup.clone())
                    .or_default()
                    .push(((p, r, access::EXEC), &list.allow));
            }
        }
    }
    for (scope, lists) in by_scope {
        let (cgroup_id, where_) = match &scope {
            None => (0, "on the whole host".to_owned()),
            Some(cgroup) => {
                let dir = cgroup_root.join(cgroup.strip_prefix("/").unwrap_or(cgroup));
                match fs::metadata(&dir) {
                    Ok(meta) => (meta.ino(), format!("in cgroup {}", cgroup.display())),
                    Err(e) => {
                        let (p, r, _) = lists[0].0;
                        builder.resolved.warn(
                            &mut out.warnings,
                            format!(
                                "policy {} rule {}: cgroup {} ({}): {e}; its exec allow-list is not in force",
                                set.policies[p].name,
                                set.policies[p].rules[r].name,
                                cgroup.display(),
                                dir.display()
                            ),
                        );
                        continue;
                    }
                }
            }
        };
        let keys: Vec<OriginKey> = lists.iter().map(|l| l.0).collect();
        let resource = format!("exec {where_}");
        let Ok(rule) = builder.rule(set, ResourceKind::Exec, &keys, resource, &mut out.warnings)
        else {
            continue; // exec rules have no subjects: no subject limit to exceed
        };
        for (_, allow) in &lists {
            for path in allow.iter() {
                let what = "exec allow-list entry";
                if let Some(id) = builder.resolved.file(path, &mut out.warnings, what) {
                    builder.rules[rule as usize].exec_allowed.insert(id);
                }
            }
        }
        out.exec_scopes.insert(cgroup_id, rule);
    }
}

impl Compiled {
    /// One line per protected resource: what, by which rules, in which mode, and how this
    /// kernel enforces it (`files`: the layer deciding file opens; `gaps`: the BPF LSM programs
    /// that did not attach).
    pub fn protections(&self, files: FileLayer, gaps: LsmGaps) -> Vec<String> {
        self.rules
            .iter()
            .map(|rule| {
                let origins: Vec<String> = rule
                    .origins
                    .iter()
                    .map(|o| {
                        let mode = match o.mode {
                            Mode::Enforce => "enforce",
                            Mode::Audit => "audit",
                        };
                        format!("{}/{} ({mode})", o.policy, o.rule)
                    })
                    .collect();
                format!(
                    "{}: {} [{}]",
                    rule.resource,
                    origins.join(", "),
                    rule.kind.layer(files, gaps)
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use phiguard_common::policy::access::{CONNECT, EXEC, READ, WRITE};

    use super::*;
    use crate::policy::parse::parse_policy;

    fn set(policies: &[&str]) -> PolicySet {
        PolicySet {
            policies: policies
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    parse_policy(text, Path::new(&format!("p{i}.yaml"))).expect("valid policy")
                })
                .collect(),
        }
    }

    fn build(policies: &[&str], watches: &WatchSet) -> Compiled {
        compile(&set(policies), watches, Path::new("/sys/fs/cgroup")).expect("compiles")
    }

    fn rule_of<'a>(c: &'a Compiled, path: &Path) -> (&'a InodeEntry, &'a KernelRule) {
        let id = FileId::of(path).unwrap();
        let entry = c.inodes.iter().find(|e| e.id == id).expect("inode entry");
        let rule = &c.rules[entry.rule_below.or(entry.rule_here).unwrap() as usize];
        (entry, rule)
    }

    #[test]
    fn a_script_another_user_could_change_is_a_located_warning_and_its_subject_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("export.sh");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        // Writable by others: whoever may write it decides what the subject runs.
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let text = format!(
            "name: p\nmode: enforce\nrules:\n  - name: r\n    files:\n      - path: {}/**\n        access: [read]\n    allow:\n      - script: {}\n",
            dir.path().display(),
            script.display()
        );
        let c = build(&[&text], &WatchSet::default());
        let warning = c
            .warnings
            .iter()
            .find(|w| w.contains("script"))
            .expect("a warning");
        assert!(
            warning.starts_with("p0.yaml:9:17: rules[0].allow[0].script: script "),
            "{warning}"
        );
        assert!(warning.ends_with("that subject is refused"), "{warning}");
        let (_, rule) = rule_of(&c, dir.path());
        assert_eq!(rule.script_subjects, 1, "the subject still needs a script");
        assert_eq!(rule.entry.may[0], 0, "and may nothing");
        assert!(c.script_paths.is_empty());
    }

    #[test]
    fn allow_lists_of_overlapping_policies_add_up_and_enforce_wins() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let ehr = format!(
            "name: ehr\nmode: enforce\nrules:\n  - name: records\n    files:\n      - path: {d}/**\n        access: [read, write]\n    allow:\n      - exe: /usr/bin/cat\n"
        );
        let backup = format!(
            "name: backup\nmode: audit\nrules:\n  - name: copy\n    files:\n      - path: {d}/**\n        access: [read]\n    allow:\n      - exe: /usr/bin/tar\n        user: root\n"
        );
        let c = build(&[&ehr, &backup], &WatchSet::default());
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let (_, rule) = rule_of(&c, dir.path());
        assert_eq!(rule.entry.enforce, READ | WRITE);
        assert_eq!(
            rule.entry.audit, 0,
            "enforce wins for an access both govern"
        );
        assert_eq!(rule.subjects.len(), 2);
        // cat (bit 0) may read and write; tar as root (bit 1) may only read.
        assert_eq!(rule.entry.may[0], 0b11);
        assert_eq!(rule.entry.may[1], 0b01);
        assert_eq!(
            rule.exe[&FileId::of(Path::new("/usr/bin/cat")).unwrap()],
            0b01
        );
        assert_eq!(rule.uid[&0], 0b10);
        assert_eq!(rule.entry.any_uid, 0b01);
        assert_eq!(rule.entry.any_parent, 0b11);
        let origin = rule.denying_origin(WRITE, true).unwrap();
        assert_eq!(
            (origin.policy.as_str(), origin.rule.as_str()),
            ("ehr", "records")
        );
    }

    #[test]
    fn nested_protections_and_watches_inside_a_protected_tree_carry_the_outer_rule() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("records");
        fs::create_dir(&inner).unwrap();
        let d = dir.path().display();
        let outer = format!(
            "name: outer\nmode: audit\nrules:\n  - name: all\n    files:\n      - path: {d}/**\n        access: [write]\n    allow:\n      - user: root\n"
        );
        let watched = dir.path().join("watched");
        fs::create_dir(&watched).unwrap();
        let watches = WatchSet::new(std::slice::from_ref(&watched), &[]).unwrap();
        let inner_policy = format!(
            "name: inner\nmode: enforce\nrules:\n  - name: records\n    files:\n      - path: {}/**\n        access: [read]\n    allow:\n      - exe: /usr/bin/cat\n",
            inner.display()
        );
        let c = build(&[&outer, &inner_policy], &watches);
        let (entry, rule) = rule_of(&c, &inner);
        assert_eq!((rule.entry.enforce, rule.entry.audit), (READ, WRITE));
        assert!(!entry.observed);
        let (entry, rule) = rule_of(&c, &watched);
        assert!(entry.observed, "a configured watch reports every open");
        assert_eq!((rule.entry.enforce, rule.entry.audit), (0, WRITE));
        assert_eq!(entry.watch_id, 0, "configured watches keep their ids");
        let (entry, _) = rule_of(&c, dir.path());
        assert!(c.watches.get(entry.watch_id).is_some_and(|w| !w.observed));
    }

    #[test]
    fn what_this_host_lacks_is_a_warning_and_that_subject_never_matches() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "name: p\nmode: enforce\nrules:\n  - name: r\n    files:\n      - path: {}/**\n        access: [read]\n      - path: /nonexistent/phiguard/**\n        access: [read]\n    allow:\n      - exe: /usr/bin/cat\n        user: no-such-user-phiguard\n      - exe: /usr/bin/cat\n        sha256: {}\n      - exe: /nonexistent/bin/app\n",
            dir.path().display(),
            "0".repeat(64)
        );
        let c = build(&[&text], &WatchSet::default());
        let joined = c.warnings.join("\n");
        assert!(joined.contains("no user no-such-user-phiguard"), "{joined}");
        assert!(joined.contains("pinned sha256"), "{joined}");
        assert!(joined.contains("/nonexistent/bin/app"), "{joined}");
        assert!(joined.contains("/nonexistent/phiguard"), "{joined}");
        let (_, rule) = rule_of(&c, dir.path());
        assert_eq!(
            rule.entry.may, [0; 4],
            "no usable subject: everyone is refused"
        );
    }

    #[test]
    fn a_pinned_binary_with_the_right_hash_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("app");
        fs::write(&exe, b"#!/bin/sh\n").unwrap();
        let hash = hex::encode(Sha256::digest(b"#!/bin/sh\n"));
        let text = format!(
            "name: p\nmode: enforce\nrules:\n  - name: r\n    files:\n      - path: {}/**\n        access: [read]\n    allow:\n      - exe: {}\n        sha256: {hash}\n",
            dir.path().display(),
            exe.display()
        );
        let c = build(&[&text], &WatchSet::default());
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let (_, rule) = rule_of(&c, dir.path());
        assert_eq!(rule.entry.may[0], 1);
    }

    #[test]
    fn ports_merge_and_conflicting_addresses_are_refused() {
        let a = "name: a\nmode: enforce\nrules:\n  - name: db\n    database:\n      - port: 5432\n      - unix: /run/postgresql/.s.PGSQL.5432\n    allow:\n      - user: postgres\n";
        let b = "name: b\nmode: audit\nrules:\n  - name: db\n    database:\n      - port: 5432\n    allow:\n      - user: root\n";
        let watches = WatchSet::new(&[], &[3306]).unwrap();
        let c = build(&[a, b], &watches);
        let rule = &c.rules[c.ports[&5432].unwrap() as usize];
        assert_eq!((rule.entry.enforce, rule.subjects.len()), (CONNECT, 2));
        assert_eq!(c.ports[&3306], None, "a watched port stays observed only");
        assert!(c.unix_sockets.is_empty(), "no such socket on this host");
        assert!(
            c.warnings.iter().any(|w| w.contains(".s.PGSQL.5432")),
            "{:?}",
            c.warnings
        );
        let c2 = "name: c\nmode: enforce\nrules:\n  - name: db\n    database:\n      - port: 5432\n        address: 10.0.0.5\n    allow:\n      - user: root\n";
        let err = compile(&set(&[a, c2]), &watches, Path::new("/")).unwrap_err();
        assert!(
            matches!(err, CompileError::PortAddress { port: 5432, .. }),
            "{err}"
        );
    }

    #[test]
    fn exec_allow_lists_resolve_binaries_and_cgroups() {
        let host = "name: lock\nmode: audit\nrules:\n  - name: bins\n    exec:\n      allow: [/usr/bin, /usr/sbin/nologin]\n";
        let scoped = "name: svc\nmode: enforce\nrules:\n  - name: bins\n    exec:\n      allow: [/usr/bin]\n      cgroup: /no-such.slice/none.service\n";
        let c = build(&[host, scoped], &WatchSet::default());
        let rule = &c.rules[c.exec_scopes[&0] as usize];
        assert_eq!(rule.entry.audit, EXEC);
        assert!(rule
            .exec_allowed
            .contains(&FileId::of(Path::new("/usr/bin")).unwrap()));
        assert_eq!(c.exec_scopes.len(), 1, "the missing cgroup is left out");
        assert!(
            c.warnings[0].contains("/no-such.slice/none.service"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn too_many_subjects_on_one_resource_is_an_error_naming_the_policies() {
        let subjects: String = (0..40).map(|i| format!("      - user: {i}\n")).collect();
        let p = |name: &str| {
            format!("name: {name}\nmode: enforce\nrules:\n  - name: r\n    files:\n      - path: /usr/**\n        access: [read]\n    allow:\n{subjects}")
        };
        let (a, b) = (p("a"), p("b"));
        let err = compile(&set(&[&a, &b]), &WatchSet::default(), Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("a, b"), "{err}");
    }
}
