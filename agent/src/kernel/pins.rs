//! Keeping enforcement in force across agent restarts: while policies are enforced, every
//! program's link is pinned under [`PIN_DIR`], so a crash, a SIGKILL or an upgrade leaves the
//! programs attached (with the policy maps they hold). A starting agent attaches its own
//! programs first, pins them, and only then drops the previous ones: there is no moment
//! without enforcement. `phiguard unload` removes the pins deliberately.

use std::{
    fs, io,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, Map, MapData, MapInfo},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use phiguard_common::maps::AgentId;
use tracing::warn;

/// Where links are pinned (on bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/phiguard";

/// Suffix of a link pinned but not yet in place (bpffs refuses `.` in names).
const STAGING: &str = "__staged";

/// How long [`unload`] waits for the kernel to let go of the unpinned programs.
const DETACH_WAIT: Duration = Duration::from_secs(3);

/// Pinning failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The pin directory could not be made or read.
    #[error("{}: {source}", path.display())]
    Dir {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A link could not be pinned.
    #[error("pinning {name}: {reason}")]
    Pin {
        /// Program name.
        name: String,
        /// Why.
        reason: String,
    },
}

fn links_dir(root: &Path) -> PathBuf {
    root.join("links")
}

/// Creates the pin directory (mode 0700: only root reaches the pins).
pub fn create_dir(root: &Path) -> Result<(), PinError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(links_dir(root))
        .map_err(|source| PinError::Dir {
            path: root.to_owned(),
            source,
        })
}

/// Where the map holding the agent's pid is pinned.
pub fn agent_map_path(root: &Path) -> PathBuf {
    root.join("agent")
}

/// Where the map of what each process executed is pinned (shared by every generation of
/// programs while enforcing, so no process is ever without its record).
pub fn exec_identity_path(root: &Path) -> PathBuf {
    root.join("exec_identity")
}

/// Where the map of the script each process runs is pinned (shared like
/// [`exec_identity_path`]'s).
pub fn script_identity_path(root: &Path) -> PathBuf {
    root.join("script_identity")
}

/// Where the break-glass grants are pinned (shared by every generation of programs while
/// enforcing, so a grant holds — and ends — while the agent restarts).
pub fn break_glass_path(root: &Path) -> PathBuf {
    root.join("break_glass")
}

/// Makes this process the exempt agent for programs a previous agent pinned under `root`,
/// before it reads anything they protect. Returns whether there were such programs.
pub fn claim(root: &Path) -> Result<bool, PinError> {
    let path = agent_map_path(root);
    if !path.exists() {
        return Ok(false);
    }
    let fail = |reason: String| PinError::Pin {
        name: path.display().to_string(),
        reason,
    };
    // The kernel compares the global tgid, which differs from ours in a pid namespace.
    let me = super::identity::this_agent()
        .map_err(|e| fail(format!("learning this process's global pid: {e}")))?;
    let info = MapInfo::from_pin(&path).map_err(|e| fail(e.to_string()))?;
    let data = MapData::from_pin(&path).map_err(|e| fail(e.to_string()))?;
    if info.value_size() as usize == size_of::<u32>() {
        // An agent from before the exemption held a start time: its programs compare the bare
        // tgid. Exempt this process from them, and let this agent pin a map of its own layout
        // (theirs keeps its map until they are replaced).
        super::bpf_sys::map_update(
            data.fd().as_fd(),
            &0u32.to_ne_bytes(),
            &me.tgid.to_ne_bytes(),
        )
        .map_err(|e| fail(e.to_string()))?;
        fs::remove_file(&path).map_err(|e| fail(e.to_string()))?;
        return Ok(true);
    }
    let map = Map::from_map_data(data).map_err(|e| fail(e.to_string()))?;
    let mut agent: Array<_, AgentId> = Array::try_from(map).map_err(|e| fail(e.to_string()))?;
    agent.set(0, me, 0).map_err(|e| fail(e.to_string()))?;
    Ok(true)
}

/// Unpins the map at `path` when its values are not `value_size` bytes (pinned by an agent
/// with another layout): this agent then creates its own. Programs holding the old map keep it
/// until they are replaced.
pub fn drop_other_layout(path: &Path, value_size: usize) {
    if let Ok(info) = MapInfo::from_pin(path) {
        if info.value_size() as usize != value_size {
            warn!(map = %path.display(), "pinned map of another layout (an older agent's): replaced");
            let _ = fs::remove_file(path);
        }
    }
}

/// Links by the name of the program they attach.
pub type NamedLinks = Vec<(&'static str, FdLink)>;

/// The ids of the programs whose links are pinned under `root`.
pub fn pinned_program_ids(root: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(links_dir(root)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let link = PinnedLink::from_pin(entry.path()).ok()?;
            Some(FdLink::from(link).info().ok()?.program_id())
        })
        .collect()
}

/// Where `program`'s link is pinned under `root`.
pub fn link_path(root: &Path, program: &str) -> PathBuf {
    links_dir(root).join(program)
}

fn staging_path(root: &Path, program: &str) -> PathBuf {
    links_dir(root).join(format!("{program}{STAGING}"))
}

/// Pins `link` under its staging name (replacing a leftover of an agent that died starting).
fn stage(root: &Path, name: &'static str, link: FdLink) -> Result<FdLink, PinError> {
    let path = staging_path(root, name);
    let _ = fs::remove_file(&path);
    let pinned = link.pin(&path).map_err(|e| PinError::Pin {
        name: name.to_owned(),
        reason: match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    })?;
    // The pin itself keeps the link alive; the handle goes back to being a plain link.
    Ok(FdLink::from(pinned))
}

/// Moves `name`'s staged pin over its final name. Renaming over an old pin drops the last
/// reference to the old link: it detaches now, with the new one already attached.
fn put_in_place(root: &Path, name: &str) -> Result<(), PinError> {
    let final_path = link_path(root, name);
    fs::rename(staging_path(root, name), &final_path).map_err(|source| PinError::Dir {
        path: final_path,
        source,
    })
}

/// Pins `links` (program name, link) under `root`, replacing what a previous agent pinned there.
/// The new links are pinned under temporary names first and renamed over the old ones, so
/// each hook always has a pinned program. Returns the links and how many old pins were
/// replaced.
pub fn pin_replacing(root: &Path, links: NamedLinks) -> Result<(NamedLinks, usize), PinError> {
    create_dir(root)?;
    let mut staged = Vec::new();
    for (name, link) in links {
        staged.push((name, stage(root, name, link)?));
    }
    let old = pinned_programs(root);
    let mut replaced = 0;
    for (name, _) in &staged {
        if link_path(root, name).exists() {
            replaced += 1;
        }
        put_in_place(root, name)?;
    }
    // Programs an older agent had that this one does not: removed, not left running blind.
    for name in old {
        if !staged.iter().any(|(n, _)| *n == name) {
            let _ = fs::remove_file(link_path(root, &name));
        }
    }
    Ok((staged, replaced))
}

/// Pins one new `link` for `name` under `root` in place of the pin there (a re-attached
/// program).
pub fn pin_one(root: &Path, name: &'static str, link: FdLink) -> Result<FdLink, PinError> {
    let link = stage(root, name, link)?;
    put_in_place(root, name)?;
    Ok(link)
}

/// Pins the agent's link `link` for `name` again (its pin was removed or replaced).
pub fn repin(root: &Path, name: &str, link: BorrowedFd<'_>) -> Result<(), PinError> {
    create_dir(root)?;
    let staging = staging_path(root, name);
    let _ = fs::remove_file(&staging);
    super::bpf_sys::obj_pin(link, &staging).map_err(|e| PinError::Pin {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    put_in_place(root, name)
}

/// Names of the programs pinned under `root` (none when it cannot be read).
pub fn pinned_programs(root: &Path) -> Vec<String> {
    read_pinned_programs(root).unwrap_or_default()
}

/// Names of the programs pinned under `root`: none when nothing was ever pinned there, an
/// error when the directory exists but cannot be read (bpffs is mode 0700: not as a user).
pub fn read_pinned_programs(root: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(links_dir(root)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.ends_with(STAGING))
        .collect();
    names.sort();
    Ok(names)
}

/// Removes every pin under `root`: programs no running agent holds are detached, and have been
/// when this returns. Returns how many pins were removed.
pub fn unload(root: &Path) -> Result<usize, PinError> {
    let dir = links_dir(root);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(PinError::Dir { path: dir, source }),
    };
    let mut removed = 0;
    let mut programs = Vec::new();
    for entry in entries.flatten() {
        if let Ok(info) = PinnedLink::from_pin(entry.path()).and_then(|l| FdLink::from(l).info()) {
            programs.push(info.program_id());
        }
        fs::remove_file(entry.path()).map_err(|source| PinError::Dir {
            path: entry.path(),
            source,
        })?;
        removed += 1;
    }
    let _ = fs::remove_dir(&dir);
    let _ = fs::remove_file(agent_map_path(root));
    let _ = fs::remove_file(exec_identity_path(root));
    let _ = fs::remove_file(script_identity_path(root));
    let _ = fs::remove_file(break_glass_path(root));
    let _ = fs::remove_dir(root);
    wait_released(&programs);
    Ok(removed)
}

/// Waits (at most [`DETACH_WAIT`]) until none of `programs` is loaded. Removing a pin only
/// schedules the link's release (bpffs frees the inode after an RCU grace period, the link goes
/// on a workqueue); until then the program stays attached and keeps enforcing — about 80 ms
/// under the VM tier's emulation. A program still held by a running agent stays, and says so.
pub(super) fn wait_released(programs: &[u32]) {
    let deadline = Instant::now() + DETACH_WAIT;
    loop {
        let loaded: Vec<u32> = loaded_programs()
            .filter_map(|info| Some(info.ok()?.id()))
            .filter(|id| programs.contains(id))
            .collect();
        if loaded.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            warn!(
                programs = ?loaded,
                "unpinned programs are still loaded: a running agent holds them and enforces until it stops"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
