//! Installing a compiled policy set into the kernel maps without a moment of no policy: the
//! inactive slot is cleared and filled, then `POLICY_SLOT` flips to it in one map write.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use aya::{
    maps::{Array, HashMap, MapData, MapError},
    Ebpf, Pod,
};
use phiguard_common::{
    limits::PATH_LEN,
    maps::{
        InodeKey, EXEC_ALLOWED, EXEC_SCOPES, INODE_LABELS, POLICY_SLOT, RULES, SCRIPT_PATHS,
        SCRIPT_SUBJECTS, SUBJECT_EXE, SUBJECT_GID, SUBJECT_PARENT, SUBJECT_SCRIPT, SUBJECT_UID,
        UNIX_SOCKETS, WATCHED_DEVS, WATCHED_INODES, WATCHED_PORTS,
    },
    policy::{IdKey, PortKey, RuleEntry, ScopeKey, SubjectKey, WatchValue, MAX_RULES, NO_RULE},
};

use super::error::LoadError;
use crate::{fanotify::decide::Protected, paths::FileId, policy::compile::Compiled};

fn map_err(map: &'static str) -> impl Fn(MapError) -> LoadError {
    move |source| LoadError::Map { map, source }
}

fn hash_map<'a, K: Pod, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>, LoadError> {
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
    HashMap::try_from(map).map_err(map_err(name))
}

fn array<'a, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut MapData, V>, LoadError> {
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
    Array::try_from(map).map_err(map_err(name))
}

/// Removes every key of `name` for which `stale` holds.
fn remove_where<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    stale: impl Fn(&K) -> bool,
) -> Result<(), LoadError> {
    let mut map = hash_map::<K, V>(ebpf, name)?;
    let keys: Vec<K> = map.keys().filter_map(Result::ok).filter(stale).collect();
    for key in keys {
        map.remove(&key).map_err(map_err(name))?;
    }
    Ok(())
}

/// The slot programs read now.
pub fn active_slot(ebpf: &mut Ebpf) -> Result<u32, LoadError> {
    Ok(array::<u32>(ebpf, POLICY_SLOT)?
        .get(&0, 0)
        .map_err(map_err(POLICY_SLOT))?
        & 1)
}

/// Writes `compiled` into the inactive slot and makes it the active one. Returns that slot.
/// With `labels` (the BPF LSM layer), every inode of the protected trees is labelled in
/// `INODE_LABELS` too (a walk of the trees: see [`crate::fanotify::decide::Protected`]).
pub fn install(ebpf: &mut Ebpf, compiled: &Compiled, labels: bool) -> Result<u32, LoadError> {
    let slot = 1 - active_slot(ebpf)?;
    let base = slot * MAX_RULES;
    clear_slot(ebpf, slot)?;
    let qualified = |rule: Option<u32>| rule.map_or(NO_RULE, |r| base + r);
    if labels {
        install_labels(ebpf, compiled, slot)?;
    }

    {
        let mut rules = array::<RuleEntry>(ebpf, RULES)?;
        for (i, rule) in compiled.rules.iter().enumerate() {
            rules
                .set(base + i as u32, rule.entry, 0)
                .map_err(map_err(RULES))?;
        }
    }
    {
        let mut scripts = array::<u64>(ebpf, SCRIPT_SUBJECTS)?;
        for (i, rule) in compiled.rules.iter().enumerate() {
            scripts
                .set(base + i as u32, rule.script_subjects, 0)
                .map_err(map_err(SCRIPT_SUBJECTS))?;
        }
    }
    let script_paths: BTreeMap<[u8; PATH_LEN], InodeKey> = compiled
        .script_paths
        .iter()
        .filter_map(|(path, id)| {
            let bytes = path.as_os_str().as_encoded_bytes();
            let mut key = [0u8; PATH_LEN];
            key.get_mut(..bytes.len())?.copy_from_slice(bytes);
            (bytes.len() < PATH_LEN).then_some((
                key,
                InodeKey {
                    dev: id.dev,
                    slot: 0,
                    ino: id.ino,
                },
            ))
        })
        .collect();
    {
        let mut map = hash_map::<[u8; PATH_LEN], InodeKey>(ebpf, SCRIPT_PATHS)?;
        for (key, value) in &script_paths {
            map.insert(key, value, 0).map_err(map_err(SCRIPT_PATHS))?;
        }
    }
    let subject_key = |rule: u32, id: &FileId| SubjectKey {
        rule,
        dev: id.dev,
        ino: id.ino,
    };
    for (name, pick) in [(SUBJECT_EXE, 0), (SUBJECT_PARENT, 1), (SUBJECT_SCRIPT, 2)] {
        let mut map = hash_map::<SubjectKey, u64>(ebpf, name)?;
        for (i, rule) in compiled.rules.iter().enumerate() {
            let masks = match pick {
                0 => &rule.exe,
                1 => &rule.parent,
                _ => &rule.script,
            };
            for (id, mask) in masks {
                map.insert(subject_key(base + i as u32, id), mask, 0)
                    .map_err(map_err(name))?;
            }
        }
    }
    for (name, pick) in [(SUBJECT_UID, 0), (SUBJECT_GID, 1)] {
        let mut map = hash_map::<IdKey, u64>(ebpf, name)?;
        for (i, rule) in compiled.rules.iter().enumerate() {
            let masks = if pick == 0 { &rule.uid } else { &rule.gid };
            for (id, mask) in masks {
                let key = IdKey {
                    rule: base + i as u32,
                    id: *id,
                };
                map.insert(key, mask, 0).map_err(map_err(name))?;
            }
        }
    }
    {
        let mut map = hash_map::<SubjectKey, u32>(ebpf, EXEC_ALLOWED)?;
        for (i, rule) in compiled.rules.iter().enumerate() {
            for id in &rule.exec_allowed {
                map.insert(subject_key(base + i as u32, id), 1, 0)
                    .map_err(map_err(EXEC_ALLOWED))?;
            }
        }
    }
    {
        let mut map = hash_map::<ScopeKey, u32>(ebpf, EXEC_SCOPES)?;
        for (cgroup, rule) in &compiled.exec_scopes {
            let key = ScopeKey {
                slot,
                _pad: 0,
                cgroup: *cgroup,
            };
            map.insert(key, base + rule, 0)
                .map_err(map_err(EXEC_SCOPES))?;
        }
    }
    {
        let mut map = hash_map::<PortKey, u32>(ebpf, WATCHED_PORTS)?;
        for (port, rule) in &compiled.ports {
            let key = PortKey {
                slot,
                port: u32::from(*port),
            };
            map.insert(key, qualified(*rule), 0)
                .map_err(map_err(WATCHED_PORTS))?;
        }
    }
    {
        let mut map = hash_map::<InodeKey, u32>(ebpf, UNIX_SOCKETS)?;
        for (_, id, rule) in &compiled.unix_sockets {
            let key = InodeKey {
                dev: id.dev,
                slot,
                ino: id.ino,
            };
            map.insert(key, base + rule, 0)
                .map_err(map_err(UNIX_SOCKETS))?;
        }
    }
    let devs: BTreeSet<u32> = compiled.inodes.iter().map(|e| e.id.dev).collect();
    {
        let mut map = hash_map::<u32, u32>(ebpf, WATCHED_DEVS)?;
        for dev in &devs {
            map.insert(dev, 1, 0).map_err(map_err(WATCHED_DEVS))?;
        }
    }
    {
        let mut map = hash_map::<InodeKey, WatchValue>(ebpf, WATCHED_INODES)?;
        for entry in &compiled.inodes {
            let key = InodeKey {
                dev: entry.id.dev,
                slot,
                ino: entry.id.ino,
            };
            let value = WatchValue {
                watch_id: entry.watch_id,
                rule_here: qualified(entry.rule_here),
                rule_below: qualified(entry.rule_below),
                observed: u32::from(entry.observed),
            };
            map.insert(key, value, 0).map_err(map_err(WATCHED_INODES))?;
        }
    }

    // The switch: from the next program run on, the new set is in force.
    array::<u32>(ebpf, POLICY_SLOT)?
        .set(0, slot, 0)
        .map_err(map_err(POLICY_SLOT))?;

    remove_where::<u32, u32>(ebpf, WATCHED_DEVS, |dev| !devs.contains(dev))?;
    remove_where::<[u8; PATH_LEN], InodeKey>(ebpf, SCRIPT_PATHS, |path| {
        !script_paths.contains_key(path)
    })?;
    Ok(slot)
}

/// Labels every inode of `compiled`'s protected trees in `slot` of `INODE_LABELS`: what lies
/// below a protected directory with the rule protecting it, the protected paths themselves
/// with their own rules (`rule_here`, and `rule_below` for what is created in them). A full
/// map stops the labelling with a warning: the kernel's path walk still decides what is left.
fn install_labels(ebpf: &mut Ebpf, compiled: &Compiled, slot: u32) -> Result<(), LoadError> {
    let base = slot * MAX_RULES;
    let qualified = |rule: Option<u32>| rule.map_or(NO_RULE, |r| base + r);
    let protected = Protected::build(Arc::new(compiled.clone()), slot);
    let mut map = hash_map::<InodeKey, WatchValue>(ebpf, INODE_LABELS)?;
    let mut values: BTreeMap<FileId, WatchValue> = protected
        .labels()
        .map(|(id, label)| {
            let rule = base + label.rule;
            (
                *id,
                WatchValue {
                    watch_id: label.watch_id,
                    rule_here: rule,
                    rule_below: rule,
                    observed: 0,
                },
            )
        })
        .collect();
    for entry in &compiled.inodes {
        if entry.rule_here.is_none() && entry.rule_below.is_none() {
            continue; // watched only
        }
        values.insert(
            entry.id,
            WatchValue {
                watch_id: entry.watch_id,
                rule_here: qualified(entry.rule_here),
                rule_below: qualified(entry.rule_below),
                observed: u32::from(entry.observed),
            },
        );
    }
    let total = values.len();
    for (done, (id, value)) in values.into_iter().enumerate() {
        let key = InodeKey {
            dev: id.dev,
            slot,
            ino: id.ino,
        };
        if let Err(e) = map.insert(key, value, 0) {
            tracing::warn!(
                labelled = done,
                total,
                error = %e,
                "the BPF LSM label map is full: the remaining protected inodes are decided by a bounded path walk"
            );
            break;
        }
    }
    if !protected.complete {
        tracing::warn!("more protected inodes than the label walk takes: the rest are decided by a bounded path walk");
    }
    tracing::debug!(labelled = total, slot, "BPF LSM labels installed");
    Ok(())
}

/// Empties every entry of `slot` (the inactive one).
fn clear_slot(ebpf: &mut Ebpf, slot: u32) -> Result<(), LoadError> {
    let in_slot = |rule: u32| rule / MAX_RULES == slot;
    remove_where::<InodeKey, WatchValue>(ebpf, INODE_LABELS, |k| k.slot == slot)?;
    remove_where::<InodeKey, WatchValue>(ebpf, WATCHED_INODES, |k| k.slot == slot)?;
    remove_where::<PortKey, u32>(ebpf, WATCHED_PORTS, |k| k.slot == slot)?;
    remove_where::<InodeKey, u32>(ebpf, UNIX_SOCKETS, |k| k.slot == slot)?;
    remove_where::<ScopeKey, u32>(ebpf, EXEC_SCOPES, |k| k.slot == slot)?;
    remove_where::<SubjectKey, u64>(ebpf, SUBJECT_EXE, |k| in_slot(k.rule))?;
    remove_where::<SubjectKey, u64>(ebpf, SUBJECT_PARENT, |k| in_slot(k.rule))?;
    remove_where::<SubjectKey, u64>(ebpf, SUBJECT_SCRIPT, |k| in_slot(k.rule))?;
    remove_where::<IdKey, u64>(ebpf, SUBJECT_UID, |k| in_slot(k.rule))?;
    remove_where::<IdKey, u64>(ebpf, SUBJECT_GID, |k| in_slot(k.rule))?;
    remove_where::<SubjectKey, u32>(ebpf, EXEC_ALLOWED, |k| in_slot(k.rule))?;
    let mut rules = array::<RuleEntry>(ebpf, RULES)?;
    for i in 0..MAX_RULES {
        rules
            .set(slot * MAX_RULES + i, RuleEntry::default(), 0)
            .map_err(map_err(RULES))?;
    }
    let mut scripts = array::<u64>(ebpf, SCRIPT_SUBJECTS)?;
    for i in 0..MAX_RULES {
        scripts
            .set(slot * MAX_RULES + i, 0, 0)
            .map_err(map_err(SCRIPT_SUBJECTS))?;
    }
    Ok(())
}
