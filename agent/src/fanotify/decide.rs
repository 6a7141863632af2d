//! What the fanotify layer decides on: protected inodes (labels) and the compiled policy, and
//! the pure function from (file, subject, access) to a verdict.
//!
//! Labels live on inodes, not names: every file below a protected directory when the policy
//! loads is labelled with the kernel rule that protects it, so a hard link made later, a
//! rename out of the tree or a path of any depth reaches the same label. A file that appears
//! afterwards (created, renamed or linked into the tree) is labelled when it is first opened
//! by its name inside the tree; its change time tells it apart from files that existed at the
//! walk, so files elsewhere on the filesystem are never looked up by name.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use phiguard_common::policy::{access, layer, verdict, Decision, MAX_RULES, NO_SUBJECT};

use crate::{
    paths,
    paths::{kernel_dev, FileId},
    policy::compile::{Compiled, KernelRule, ResourceKind},
};

/// Most inodes labelled by the walk at load; past it, unlabelled files are looked up by name
/// (a warning says so). About 40 bytes each: 160 MB at the limit.
pub const MAX_LABELS: usize = 4_000_000;

/// The protection of one inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// Index of the kernel rule within its slot.
    pub rule: u32,
    /// Watch id of the protected path it was found under.
    pub watch_id: u32,
}

/// A policy set as the fanotify layer holds it: labels, protected roots, and the set.
#[derive(Debug)]
pub struct Protected {
    /// The set.
    pub compiled: Arc<Compiled>,
    /// The kernel slot it is installed in (decisions name `slot * MAX_RULES + rule`).
    pub slot: u32,
    labels: HashMap<FileId, Label>,
    /// Protected directories, deepest first, with the label of what lies below them.
    roots: Vec<(PathBuf, Label)>,
    /// Change time (ns since the epoch) before which every file below a root was walked.
    walked_before_ns: i128,
    /// The walk labelled everything (else unlabelled files are always looked up by name).
    pub complete: bool,
    /// One path per filesystem holding a protected inode: what the group marks.
    pub filesystems: BTreeMap<u32, PathBuf>,
}

impl Protected {
    /// Labels every file of `compiled`'s protected paths (walks the trees: run it off the
    /// response loop).
    pub fn build(compiled: Arc<Compiled>, slot: u32) -> Protected {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let mut protected = Protected {
            compiled: Arc::clone(&compiled),
            slot,
            labels: HashMap::new(),
            roots: Vec::new(),
            // A second of slack for filesystems with coarse timestamps.
            walked_before_ns: started - 1_000_000_000,
            complete: true,
            filesystems: BTreeMap::new(),
        };
        let is_file_rule = |rule: Option<u32>| {
            rule.filter(|r| {
                compiled
                    .rules
                    .get(*r as usize)
                    .is_some_and(|k| k.kind == ResourceKind::File)
            })
        };
        let mut exact = Vec::new();
        for entry in &compiled.inodes {
            let Some(watch) = compiled.watches.get(entry.watch_id) else {
                continue;
            };
            if let Some(rule) = is_file_rule(entry.rule_here) {
                exact.push((
                    entry.id,
                    Label {
                        rule,
                        watch_id: entry.watch_id,
                    },
                ));
                protected
                    .filesystems
                    .entry(entry.id.dev)
                    .or_insert_with(|| watch.canonical.clone());
            }
            if let Some(rule) = is_file_rule(entry.rule_below) {
                protected.roots.push((
                    watch.canonical.clone(),
                    Label {
                        rule,
                        watch_id: entry.watch_id,
                    },
                ));
                protected
                    .filesystems
                    .entry(entry.id.dev)
                    .or_insert_with(|| watch.canonical.clone());
            }
        }
        // Outer trees first, so a nested protected directory's walk overrides their label.
        protected
            .roots
            .sort_by_key(|(path, _)| path.components().count());
        for (root, label) in protected.roots.clone() {
            protected.walk(&root, label);
        }
        // An exact entry (a protected file, a hard-linked file) is what the kernel matches
        // first, too.
        for (id, label) in exact {
            protected.labels.insert(id, label);
        }
        protected.roots.reverse(); // deepest first for lookups by name
        protected
    }

    /// Labels everything below `root` on its filesystem, directories included (a walker opening
    /// them is decided too; symlinks are not followed).
    fn walk(&mut self, root: &Path, label: Label) {
        let mut complete = true;
        paths::walk_filesystem_tree(root, |_, meta| {
            if self.labels.len() >= MAX_LABELS {
                complete = false;
                return false;
            }
            self.labels.insert(
                FileId {
                    dev: kernel_dev(meta.dev()),
                    ino: meta.ino(),
                },
                label,
            );
            true
        });
        self.complete &= complete;
    }

    /// Inodes labelled so far.
    pub fn labelled(&self) -> usize {
        self.labels.len()
    }

    /// Every label, for the BPF LSM layer's kernel map (`INODE_LABELS`).
    pub fn labels(&self) -> impl Iterator<Item = (&FileId, &Label)> {
        self.labels.iter()
    }

    /// The label of an inode, if it has one.
    pub fn label(&self, id: FileId) -> Option<Label> {
        self.labels.get(&id).copied()
    }

    /// Whether an unlabelled inode may still be protected and must be looked up by name: it
    /// changed (created, renamed, linked) since the walk, or the walk was cut short.
    pub fn needs_name_lookup(&self, ctime_ns: i128) -> bool {
        !self.complete || ctime_ns >= self.walked_before_ns
    }

    /// The protected directories (deepest first).
    pub fn roots(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().map(|(root, _)| root.as_path())
    }

    /// The label governing what is added to or removed from directory `id` at `path`: its own
    /// label (a directory below a protected root), else that of the deepest protected root at or
    /// above `path`. Unlike [`Protected::label_by_path`] it labels nothing.
    pub fn label_of_dir(&self, id: FileId, path: Option<&Path>) -> Option<Label> {
        self.label(id).or_else(|| {
            let path = path?;
            self.roots
                .iter()
                .find(|(root, _)| paths::is_within(path, root))
                .map(|(_, label)| *label)
        })
    }

    /// The label a file reached by `path` gets (the deepest protected root above it), which
    /// it then keeps under any name. `None`: not protected.
    pub fn label_by_path(&mut self, id: FileId, path: &Path) -> Option<Label> {
        let label = self
            .roots
            .iter()
            .find(|(root, _)| paths::is_within(path, root) && path != root)
            .map(|(_, label)| *label)?;
        if self.labels.len() < MAX_LABELS {
            self.labels.insert(id, label);
        }
        Some(label)
    }

    /// Labels an inode that arrived in a protected directory (created, moved or linked in)
    /// with that directory's `label`, unless it has a label. Whether it was labelled.
    pub fn label_arrival(&mut self, id: FileId, label: Label) -> bool {
        if self.labels.contains_key(&id) || self.labels.len() >= MAX_LABELS {
            return false;
        }
        self.labels.insert(id, label);
        true
    }

    /// The kernel rule of a label.
    pub fn rule(&self, label: Label) -> Option<&KernelRule> {
        self.compiled.rules.get(label.rule as usize)
    }
}

impl Protected {
    /// The exec rule in force for a process in cgroup `cgroup` (its cgroup's, else the
    /// host-wide one), as (index within the slot, rule).
    pub fn exec_rule(&self, cgroup: u64) -> Option<(u32, &KernelRule)> {
        let index = self
            .compiled
            .exec_scopes
            .get(&cgroup)
            .or_else(|| self.compiled.exec_scopes.get(&0))?;
        Some((*index, self.compiled.rules.get(*index as usize)?))
    }

    /// Whether an exec allow-list is in force anywhere.
    pub fn has_exec_rules(&self) -> bool {
        !self.compiled.exec_scopes.is_empty()
    }
}

/// Decides an exec under exec rule `rule` (kernel index `index` within `slot`): allowed when the
/// program or a directory above it is on the allow-list. `chain` is the program's (device,
/// inode) followed by its directories', innermost first. The same rule as the kernel's
/// `decide_exec`; only a denial's layer differs (FANOTIFY: the exec fails with EPERM).
pub fn decide_exec(rule: &KernelRule, index: u32, slot: u32, chain: &[FileId]) -> Decision {
    let rule_id = (slot & 1) * MAX_RULES + index;
    if rule.entry.governed() & access::EXEC == 0 {
        return Decision::NONE;
    }
    if chain.iter().any(|id| rule.exec_allowed.contains(id)) {
        return Decision {
            rule: rule_id,
            verdict: verdict::ALLOW,
            layer: layer::FANOTIFY,
            access: access::EXEC as u8,
            subject: NO_SUBJECT,
            ..Decision::NONE
        };
    }
    let (verdict, layer) = if rule.entry.enforce & access::EXEC != 0 {
        (verdict::DENY, layer::FANOTIFY)
    } else {
        (verdict::WOULD_DENY, layer::NONE)
    };
    Decision {
        rule: rule_id,
        verdict,
        layer,
        access: access::EXEC as u8,
        subject: NO_SUBJECT,
        ..Decision::NONE
    }
}

/// Who is asking, as the rules match it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// The executable's (device, inode); `None` when it cannot be read (matches no `exe`).
    pub exe: Option<FileId>,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// The script it runs, as the kernel recorded it (`SCRIPT_IDENTITY`); `None` matches no
    /// `script` subject.
    pub script: Option<FileId>,
}

/// Decides an access (`requested`, `access` bits) to a file protected by `rule` (kernel index
/// `index` within `slot`), for `subject`; `parent_exe` is asked only when a subject names a
/// parent. The same rule as the kernel programs' (`agent-ebpf/src/policy.rs`): every governed
/// access must be allowed by a subject that matches in every field it gives. A denial's layer
/// is FANOTIFY; so is an allow's (the layer that decided); a would-deny was not enforced.
pub fn decide(
    rule: &KernelRule,
    index: u32,
    slot: u32,
    subject: &Subject,
    parent_exe: impl FnOnce() -> Option<FileId>,
    requested: u32,
) -> Decision {
    let rule_id = (slot & 1) * MAX_RULES + index;
    let entry = &rule.entry;
    let governed = requested & entry.governed();
    if governed == 0 {
        return Decision::NONE;
    }
    let exe_mask = subject.exe.and_then(|e| rule.exe.get(&e)).copied();
    let exe = entry.any_exe | exe_mask.unwrap_or(0);
    let uid = entry.any_uid | rule.uid.get(&subject.uid).copied().unwrap_or(0);
    let gid = entry.any_gid | rule.gid.get(&subject.gid).copied().unwrap_or(0);
    let mut matching = exe & uid & gid;
    if matching & !entry.any_parent != 0 {
        let parent = parent_exe().and_then(|p| rule.parent.get(&p)).copied();
        matching &= entry.any_parent | parent.unwrap_or(0);
    }
    if matching & rule.script_subjects != 0 {
        let script = subject.script.and_then(|s| rule.script.get(&s)).copied();
        matching &= !rule.script_subjects | script.unwrap_or(0);
    }
    let mut allowed_by = u64::MAX;
    for bit in 0..access::COUNT {
        let want = 1u32 << bit;
        if governed & want == 0 {
            continue;
        }
        let may = matching & entry.may[bit];
        if may == 0 {
            let (verdict, layer) = if entry.enforce & want != 0 {
                (verdict::DENY, layer::FANOTIFY)
            } else {
                (verdict::WOULD_DENY, layer::NONE)
            };
            return Decision {
                rule: rule_id,
                verdict,
                layer,
                access: want as u8,
                subject: NO_SUBJECT,
                ..Decision::NONE
            };
        }
        allowed_by &= may;
    }
    Decision {
        rule: rule_id,
        verdict: verdict::ALLOW,
        layer: layer::FANOTIFY,
        access: governed as u8,
        subject: if allowed_by == 0 {
            NO_SUBJECT
        } else {
            allowed_by.trailing_zeros() as u8
        },
        ..Decision::NONE
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use phiguard_common::policy::access::{READ, WRITE};

    use super::*;
    use crate::{
        policy::{compile::compile, model::PolicySet, parse::parse_policy},
        watch::WatchSet,
    };

    fn compiled(text: &str) -> Arc<Compiled> {
        let set = PolicySet {
            policies: vec![parse_policy(text, Path::new("p.yaml")).expect("valid")],
        };
        Arc::new(
            compile(&set, &WatchSet::default(), Path::new("/sys/fs/cgroup")).expect("compiles"),
        )
    }

    fn id(path: &Path) -> FileId {
        FileId::of(path).unwrap()
    }

    #[test]
    fn files_below_a_protected_tree_are_labelled_at_any_depth_and_new_ones_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_owned();
        for i in 0..30 {
            deep.push(format!("d{i}"));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("rec.txt"), "x").unwrap();
        fs::write(dir.path().join("top.txt"), "x").unwrap();
        let text = format!(
            "name: p\nmode: enforce\nrules:\n  - name: r\n    files:\n      - path: {}/**\n        access: [read]\n    allow:\n      - exe: /usr/bin/cat\n",
            dir.path().display()
        );
        let mut p = Protected::build(compiled(&text), 1);
        assert!(p.complete);
        assert_eq!(
            p.labelled(),
            33,
            "two files, 30 directories and the protected root"
        );
        let label = p
            .label(id(&deep.join("rec.txt")))
            .expect("deep file labelled");
        assert_eq!(p.label(id(&dir.path().join("top.txt"))), Some(label));
        assert_eq!(p.filesystems.len(), 1);
        // A file created after the walk: changed since, looked up by name, then labelled.
        let new = deep.join("new.txt");
        fs::write(&new, "y").unwrap();
        let ctime = fs::metadata(&new).unwrap().ctime() as i128 * 1_000_000_000;
        assert!(p.needs_name_lookup(ctime + 2_000_000_000));
        assert_eq!(p.label_by_path(id(&new), &new), Some(label));
        assert_eq!(p.label(id(&new)), Some(label));
        assert_eq!(
            p.label_by_path(id(Path::new("/etc/hostname")), Path::new("/etc/hostname")),
            None
        );
        assert!(
            !p.needs_name_lookup(0),
            "files unchanged since the walk are known"
        );
        // What a directory's entries are governed by, without labelling anything.
        let made = deep.join("made");
        fs::create_dir(&made).unwrap();
        let before = p.labelled();
        assert_eq!(p.label_of_dir(id(&made), Some(&made)), Some(label));
        assert_eq!(p.label_of_dir(id(&deep), None), Some(label), "by its label");
        assert_eq!(p.label_of_dir(id(&made), None), None, "no label, no path");
        assert_eq!(
            p.label_of_dir(id(Path::new("/etc")), Some(Path::new("/etc"))),
            None
        );
        assert_eq!(p.labelled(), before);
        assert_eq!(p.roots().collect::<Vec<_>>(), [dir.path()]);
    }

    #[test]
    fn an_exec_is_allowed_by_the_program_or_a_directory_above_it() {
        let text = "name: x\nmode: enforce\nrules:\n  - name: bins\n    exec:\n      allow: [/usr/sbin, /usr/bin/true]\n";
        let p = Protected::build(compiled(text), 0);
        assert!(p.has_exec_rules());
        let (index, rule) = p.exec_rule(12345).expect("the host-wide rule");
        let chain = |path: &str| -> Vec<FileId> { Path::new(path).ancestors().map(id).collect() };
        let d = decide_exec(rule, index, 0, &chain("/usr/bin/true"));
        assert_eq!((d.verdict, d.layer), (verdict::ALLOW, layer::FANOTIFY));
        let d = decide_exec(rule, index, 0, &chain("/usr/bin/id"));
        assert_eq!(
            (d.verdict, d.layer, d.access),
            (verdict::DENY, layer::FANOTIFY, access::EXEC as u8)
        );
        assert_eq!(p.labelled(), 0, "an exec rule labels no file");
    }

    #[test]
    fn a_subject_naming_a_script_matches_only_a_process_running_it() {
        let script = FileId { dev: 8, ino: 42 };
        let mut rule = KernelRule::default();
        rule.entry.enforce = READ;
        // Subject 0 names only a script: every other field is open.
        (rule.entry.any_exe, rule.entry.any_uid) = (1, 1);
        (rule.entry.any_gid, rule.entry.any_parent) = (1, 1);
        rule.entry.may[0] = 1;
        rule.script_subjects = 1;
        rule.script.insert(script, 1);
        let running = |script: Option<FileId>| Subject {
            exe: Some(FileId { dev: 8, ino: 7 }),
            uid: 65534,
            gid: 65534,
            script,
        };
        let d = decide(&rule, 0, 0, &running(Some(script)), || None, READ);
        assert_eq!((d.verdict, d.subject), (verdict::ALLOW, 0));
        for other in [None, Some(FileId { dev: 8, ino: 43 })] {
            let d = decide(&rule, 0, 0, &running(other), || None, READ);
            assert_eq!(d.verdict, verdict::DENY, "{other:?}");
        }
    }

    #[test]
    fn the_decision_matches_the_kernel_rule() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "name: p\nmode: enforce\nrules:\n  - name: r\n    files:\n      - path: {}/**\n        access: [read, write]\n    allow:\n      - exe: /usr/bin/cat\n      - user: 0\n        parent: /usr/bin/env\n",
            dir.path().display()
        );
        let c = compiled(&text);
        let index = c
            .rules
            .iter()
            .position(|r| r.kind == ResourceKind::File)
            .unwrap() as u32;
        let rule = &c.rules[index as usize];
        let cat = Subject {
            exe: Some(id(Path::new("/usr/bin/cat"))),
            uid: 65534,
            gid: 65534,
            script: None,
        };
        let d = decide(rule, index, 1, &cat, || None, READ);
        assert_eq!(
            (d.verdict, d.layer, d.subject),
            (verdict::ALLOW, layer::FANOTIFY, 0)
        );
        assert_eq!(d.rule, MAX_RULES + index);
        let head = Subject {
            exe: Some(id(Path::new("/usr/bin/head"))),
            ..cat
        };
        let d = decide(rule, index, 0, &head, || None, READ | WRITE);
        assert_eq!(
            (d.verdict, d.layer, d.access),
            (verdict::DENY, layer::FANOTIFY, READ as u8)
        );
        let root_under_env = Subject { uid: 0, ..head };
        let env = || Some(id(Path::new("/usr/bin/env")));
        assert_eq!(
            decide(rule, index, 0, &root_under_env, env, WRITE).verdict,
            verdict::ALLOW
        );
        assert_eq!(
            decide(rule, index, 0, &root_under_env, || None, WRITE).verdict,
            verdict::DENY
        );
        assert_eq!(decide(rule, index, 0, &head, || None, 0), Decision::NONE);
    }
}
