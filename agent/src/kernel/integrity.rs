//! Is the kernel state still the agent's? Root can change a running agent's programs and maps
//! behind its back: detach or replace a cgroup link (`bpftool link detach`, BPF_LINK_UPDATE),
//! remove a pin (enforcement then dies with the agent), or write a policy map (allow itself,
//! exempt its own pid, unwatch a path). After every load and policy install the agent
//! snapshots what it wrote; `Sensors::check_integrity` (in `loader`) compares the kernel with it, puts its
//! own state back where it can, and returns what it found, to be reported as `Tamper` events.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use aya::maps::{Map, MapData};

use super::bpf_sys;

/// A map's entries, key bytes to value bytes.
pub type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// How a map's contents differ from what the agent wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    /// Keys whose value differs.
    pub changed: Vec<Vec<u8>>,
    /// Keys the agent wrote that are gone.
    pub missing: Vec<Vec<u8>>,
    /// Keys the agent never wrote.
    pub extra: Vec<Vec<u8>>,
}

impl MapDiff {
    /// No difference.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty()
    }

    /// In words, without contents: "2 entries changed, 1 added, 0 removed".
    pub fn describe(&self) -> String {
        format!(
            "{} entries changed, {} added, {} removed",
            self.changed.len(),
            self.extra.len(),
            self.missing.len()
        )
    }
}

/// The difference between what was written (`expected`) and what is there (`current`).
pub fn diff(expected: &Entries, current: &Entries) -> MapDiff {
    let mut d = MapDiff::default();
    for (key, value) in expected {
        match current.get(key) {
            None => d.missing.push(key.clone()),
            Some(now) if now != value => d.changed.push(key.clone()),
            Some(_) => {}
        }
    }
    d.extra = current
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    d
}

/// What the integrity check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// A link was detached or given another program.
    ProgramDetached,
    /// A pin was removed or replaced.
    PinRemoved,
    /// A control map differs from what the agent wrote.
    MapModified,
}

/// One thing found changed, and whether the agent put it back.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What kind of change.
    pub kind: FindingKind,
    /// The program or map.
    pub object: String,
    /// What differs, in words.
    pub detail: String,
    /// `Ok` when repaired, else why not.
    pub repair: Result<(), String>,
}

/// A control map as the agent left it.
#[derive(Debug)]
pub(super) struct MapSnapshot {
    pub(super) name: &'static str,
    pub(super) key_size: usize,
    pub(super) value_size: usize,
    pub(super) max_entries: u32,
    pub(super) entries: Entries,
}

/// A link as the agent attached it.
#[derive(Debug)]
pub(super) struct LinkSnapshot {
    pub(super) program: &'static str,
    pub(super) link_id: u32,
    pub(super) prog_id: u32,
    /// A cgroup program (the only kind a link can be detached from).
    pub(super) cgroup: bool,
    /// The agent's own descriptor of the link, opened from its pin (to pin it again).
    pub(super) pinned: Option<OwnedFd>,
}

/// Everything the check compares against.
#[derive(Debug, Default)]
pub(super) struct Expected {
    pub(super) maps: Vec<MapSnapshot>,
    pub(super) links: Vec<LinkSnapshot>,
    /// Another agent took over the pins and the exemption (reported once).
    pub(super) superseded_by: Option<u32>,
}

/// The pid the shared exemption map names, when it is another live process running this
/// agent's executable: a newer agent that took over the pins (an upgrade, or one started by
/// hand). Its pins and exemption are its own, not to be put back.
pub(super) fn successor(agent_map: &MapData) -> Option<u32> {
    let mut value = [0u8; size_of::<phiguard_common::maps::AgentId>()];
    bpf_sys::map_lookup(agent_map.fd().as_fd(), &0u32.to_ne_bytes(), &mut value).ok()?;
    // `AgentId.tgid` comes first.
    let pid = u32::from_ne_bytes(value[..4].try_into().ok()?);
    let me = bpf_sys::global_tgid().ok()?;
    if pid == me {
        return None;
    }
    use std::os::unix::fs::MetadataExt as _;
    let exe = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let mine = exe("/proc/self/exe")?;
    if me == std::process::id() {
        // Not in a pid namespace: the map's pid is one /proc shows.
        return (exe(&format!("/proc/{pid}/exe"))? == mine).then_some(pid);
    }
    // In a pid namespace /proc cannot show a global pid: a successor is another process of
    // this executable beside us.
    let ours = std::process::id();
    let other = std::fs::read_dir("/proc").ok()?.flatten().any(|entry| {
        entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|p| p != ours && exe(&format!("/proc/{p}/exe")) == Some(mine))
    });
    other.then_some(pid)
}

pub(super) fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(d) | Map::HashMap(d) | Map::LpmTrie(d) => Some(d),
        _ => None,
    }
}

/// Reads every entry of a map (at most `max_entries`: a map cannot hold more).
fn read_entries(
    data: &MapData,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
) -> io::Result<Entries> {
    let fd = data.fd().as_fd();
    let mut entries = Entries::new();
    let mut key: Option<Vec<u8>> = None;
    for _ in 0..max_entries {
        let mut next = vec![0u8; key_size];
        if !bpf_sys::map_next_key(fd, key.as_deref(), &mut next)? {
            break;
        }
        let mut value = vec![0u8; value_size];
        if bpf_sys::map_lookup(fd, &next, &mut value)? {
            entries.insert(next.clone(), value);
        }
        key = Some(next);
    }
    Ok(entries)
}

impl MapSnapshot {
    pub(super) fn take(name: &'static str, data: &MapData) -> io::Result<MapSnapshot> {
        let info = data.info().map_err(io::Error::other)?;
        let (key_size, value_size) = (info.key_size() as usize, info.value_size() as usize);
        Ok(MapSnapshot {
            name,
            key_size,
            value_size,
            max_entries: info.max_entries(),
            entries: read_entries(data, key_size, value_size, info.max_entries())?,
        })
    }

    pub(super) fn current(&self, data: &MapData) -> io::Result<Entries> {
        read_entries(data, self.key_size, self.value_size, self.max_entries)
    }

    /// Writes back what differs and removes what was added.
    pub(super) fn restore(&self, data: &MapData, d: &MapDiff) -> io::Result<()> {
        let fd = data.fd().as_fd();
        for key in d.changed.iter().chain(&d.missing) {
            bpf_sys::map_update(fd, key, &self.entries[key])?;
        }
        for key in &d.extra {
            bpf_sys::map_delete(fd, key)?;
        }
        Ok(())
    }
}

/// Ids of the programs attached to the cgroup at `root` for connect4 and connect6.
pub(super) fn cgroup_connect_programs(root: &Path) -> io::Result<Vec<u32>> {
    let cgroup = File::open(root)?;
    let mut ids = bpf_sys::cgroup_programs(cgroup.as_fd(), bpf_sys::BPF_CGROUP_INET4_CONNECT)?;
    ids.extend(bpf_sys::cgroup_programs(
        cgroup.as_fd(),
        bpf_sys::BPF_CGROUP_INET6_CONNECT,
    )?);
    Ok(ids)
}

/// What is wrong with a link's pin at `path`, if anything.
pub(super) fn pin_problem(path: &Path, link_id: u32) -> Option<String> {
    match bpf_sys::obj_get(path).and_then(|fd| bpf_sys::link_id(fd.as_fd())) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Some(format!("{} was removed", path.display()))
        }
        Err(e) => Some(format!("{} cannot be opened: {e}", path.display())),
        Ok(id) if id != link_id => Some(format!(
            "{} holds link {id} instead of the agent's {link_id}",
            path.display()
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&[u8], &[u8])]) -> Entries {
        pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn equal_contents_differ_in_nothing() {
        let e = entries(&[(b"a", b"1"), (b"b", b"2")]);
        assert!(diff(&e, &e.clone()).is_empty());
        assert!(diff(&Entries::new(), &Entries::new()).is_empty());
    }

    #[test]
    fn changed_added_and_removed_keys_are_told_apart() {
        let expected = entries(&[(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]);
        let current = entries(&[(b"a", b"1"), (b"b", b"9"), (b"d", b"4"), (b"e", b"5")]);
        let d = diff(&expected, &current);
        assert_eq!(d.changed, [b"b".to_vec()]);
        assert_eq!(d.missing, [b"c".to_vec()]);
        assert_eq!(d.extra, [b"d".to_vec(), b"e".to_vec()]);
        assert_eq!(d.describe(), "1 entries changed, 2 added, 1 removed");
    }
}
