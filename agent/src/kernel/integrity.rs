//! Is the kernel state still the agent's? Root can change a running agent's programs and maps
//! behind its back: detach or replace a cgroup link (`bpftool link detach`, BPF_LINK_UPDATE),
//! remove a pin (enforcement then dies with the agent), or write a policy map (allow itself,
//! exempt its own pid, unwatch a path). After every load and policy install the agent
//! snapshots what it wrote; [`Sensors::check_integrity`] compares the kernel with it, puts its
//! own state back where it can, and returns what it found, to be reported as `Tamper` events.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use agent_common::maps::CONTROL_MAPS;
use aya::maps::{Map, MapData};

use super::{bpf_sys, loader::Sensors, pins, registry::Hook};

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
struct MapSnapshot {
    name: &'static str,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    entries: Entries,
}

/// A link as the agent attached it.
#[derive(Debug)]
struct LinkSnapshot {
    program: &'static str,
    link_id: u32,
    prog_id: u32,
    /// A cgroup program (the only kind a link can be detached from).
    cgroup: bool,
    /// The agent's own descriptor of the link, opened from its pin (to pin it again).
    pinned: Option<OwnedFd>,
}

/// Everything the check compares against.
#[derive(Debug, Default)]
pub(super) struct Expected {
    maps: Vec<MapSnapshot>,
    links: Vec<LinkSnapshot>,
    /// Another agent took over the pins and the exemption (reported once).
    superseded_by: Option<u32>,
}

/// The pid the shared exemption map names, when it is another live process running this
/// agent's executable: a newer agent that took over the pins (an upgrade, or one started by
/// hand). Its pins and exemption are its own, not to be put back.
fn successor(agent_map: &MapData) -> Option<u32> {
    let mut value = [0u8; 4];
    bpf_sys::map_lookup(agent_map.fd().as_fd(), &0u32.to_ne_bytes(), &mut value).ok()?;
    let pid = u32::from_ne_bytes(value);
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

fn map_data(map: &Map) -> Option<&MapData> {
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
    fn take(name: &'static str, data: &MapData) -> io::Result<MapSnapshot> {
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

    fn current(&self, data: &MapData) -> io::Result<Entries> {
        read_entries(data, self.key_size, self.value_size, self.max_entries)
    }

    /// Writes back what differs and removes what was added.
    fn restore(&self, data: &MapData, d: &MapDiff) -> io::Result<()> {
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
fn cgroup_connect_programs(root: &Path) -> io::Result<Vec<u32>> {
    let cgroup = File::open(root)?;
    let mut ids = bpf_sys::cgroup_programs(cgroup.as_fd(), bpf_sys::BPF_CGROUP_INET4_CONNECT)?;
    ids.extend(bpf_sys::cgroup_programs(
        cgroup.as_fd(),
        bpf_sys::BPF_CGROUP_INET6_CONNECT,
    )?);
    Ok(ids)
}

/// What is wrong with a link's pin at `path`, if anything.
fn pin_problem(path: &Path, link_id: u32) -> Option<String> {
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

impl Sensors {
    /// Records the control maps as they are now (after a load or a policy install).
    pub fn snapshot_maps(&mut self) -> io::Result<()> {
        let mut maps = Vec::new();
        for &name in CONTROL_MAPS {
            if let Some(data) = self.ebpf().map(name).and_then(map_data) {
                maps.push(MapSnapshot::take(name, data)?);
            }
        }
        self.expected.maps = maps;
        Ok(())
    }

    /// Records the links as attached (and pinned) now.
    pub(super) fn snapshot_links(&mut self) -> io::Result<()> {
        let mut links = Vec::new();
        for (program, link) in self.links() {
            let info = link.info().map_err(io::Error::other)?;
            let cgroup = self
                .status
                .iter()
                .any(|s| s.spec.name == program && matches!(s.spec.hook, Hook::CgroupConnect));
            let pinned = match self.pin_root() {
                Some(root) => {
                    let fd = bpf_sys::obj_get(&pins::link_path(root, program))?;
                    if bpf_sys::link_id(fd.as_fd())? != info.id() {
                        return Err(io::Error::other(format!(
                            "the pin of {program} is not the link just pinned"
                        )));
                    }
                    Some(fd)
                }
                None => None,
            };
            links.push(LinkSnapshot {
                program,
                link_id: info.id(),
                prog_id: info.program_id(),
                cgroup,
                pinned,
            });
        }
        self.expected.links = links;
        Ok(())
    }

    /// Compares the kernel with what the agent installed, repairs what it can, and returns
    /// what it found (empty: all as installed).
    pub fn check_integrity(&mut self) -> Vec<Finding> {
        let mut found = Vec::new();
        let newer = self
            .ebpf()
            .map(agent_common::maps::AGENT)
            .and_then(map_data)
            .and_then(successor);
        if let (Some(pid), None) = (newer, self.expected.superseded_by) {
            self.expected.superseded_by = Some(pid);
            found.push(Finding {
                kind: FindingKind::PinRemoved,
                object: "pins".to_owned(),
                detail: format!(
                    "another phiguard agent (pid {pid}) took over the pins and the exemption; this agent no longer puts them back"
                ),
                repair: Err("superseded by a newer agent".to_owned()),
            });
        }
        let superseded = self.expected.superseded_by.is_some();
        let detached: Vec<(&'static str, String)> = match cgroup_connect_programs(self.cgroup_root()) {
            Ok(attached) => self
                .expected
                .links
                .iter()
                .filter(|l| l.cgroup && !attached.contains(&l.prog_id))
                .map(|l| {
                    let detail = format!(
                        "program {} is no longer attached to cgroup {} (link {} detached or given another program)",
                        l.prog_id,
                        self.cgroup_root().display(),
                        l.link_id
                    );
                    (l.program, detail)
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "integrity check cannot query the cgroup programs");
                Vec::new()
            }
        };
        for (program, detail) in detached {
            let repair = self.reattach(program);
            found.push(Finding {
                kind: FindingKind::ProgramDetached,
                object: program.to_owned(),
                detail,
                repair,
            });
        }
        if let Some(root) = self.pin_root().filter(|_| !superseded).map(Path::to_owned) {
            for link in &self.expected.links {
                let path = pins::link_path(&root, link.program);
                let Some(detail) = pin_problem(&path, link.link_id) else {
                    continue;
                };
                let repair = match &link.pinned {
                    Some(fd) => {
                        pins::repin(&root, link.program, fd.as_fd()).map_err(|e| e.to_string())
                    }
                    None => Err("no descriptor of the link to pin again".to_owned()),
                };
                found.push(Finding {
                    kind: FindingKind::PinRemoved,
                    object: link.program.to_owned(),
                    detail,
                    repair,
                });
            }
        }
        for snapshot in &self.expected.maps {
            if superseded && snapshot.name == agent_common::maps::AGENT {
                continue;
            }
            let Some(data) = self.ebpf().map(snapshot.name).and_then(map_data) else {
                continue;
            };
            // A newer agent may have claimed the exemption since this check began: never
            // write it back over a live successor (the next check reports the take-over).
            if snapshot.name == agent_common::maps::AGENT && successor(data).is_some() {
                continue;
            }
            let d = match snapshot.current(data) {
                Ok(current) => diff(&snapshot.entries, &current),
                Err(e) => {
                    tracing::warn!(map = snapshot.name, error = %e, "integrity check cannot read map");
                    continue;
                }
            };
            if d.is_empty() {
                continue;
            }
            let repair = snapshot
                .restore(data, &d)
                .and_then(|()| snapshot.current(data))
                .map_err(|e| e.to_string())
                .and_then(|now| match diff(&snapshot.entries, &now) {
                    left if left.is_empty() => Ok(()),
                    left => Err(format!(
                        "still differs after rewriting: {}",
                        left.describe()
                    )),
                });
            found.push(Finding {
                kind: FindingKind::MapModified,
                object: snapshot.name.to_owned(),
                detail: d.describe(),
                repair,
            });
        }
        found
    }

    /// Attaches `program` again in place of a detached or replaced link (cgroup programs:
    /// other links cannot be detached), pins it where links are pinned, and records it.
    fn reattach(&mut self, program: &'static str) -> Result<(), String> {
        let spec = self
            .status
            .iter()
            .find(|s| s.spec.name == program)
            .map(|s| s.spec)
            .ok_or_else(|| format!("{program} is not in the registry"))?;
        if !matches!(spec.hook, Hook::CgroupConnect) {
            return Err(format!(
                "a {} link cannot be detached, only closed: it is gone with the agent's descriptor",
                spec.hook
            ));
        }
        self.relink_cgroup(program)?;
        self.snapshot_links().map_err(|e| e.to_string())
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
