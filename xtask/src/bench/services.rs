//! The database server, its clients and the agent each in a CPU cgroup of its own, at equal
//! weight: as systemd runs them on a real database host (`postgresql.service`, the
//! application's unit or a user's session, `phiguard.service` — one cgroup each, CPU weight
//! 100). The scheduler then shares the CPUs between the three groups, not between the
//! database's many processes and the agent's one: measured in one cgroup, the agent got a
//! twelfth of the machine under `pgbench -c 8` and lost records it would not lose as a service.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::cleanup::Undo;

/// The three groups; each is removed (its processes moved back to the root) when this drops.
pub struct ServiceGroups {
    /// The database server (the postmaster and every backend it forks).
    pub db: PathBuf,
    /// The benchmark's client (`pgbench`).
    pub clients: PathBuf,
    /// The agent.
    pub agent: PathBuf,
    _undo: Undo,
}

/// The root of the hierarchy that has the `cpu` controller: cgroup v1's `cpu` mount, or the
/// cgroup v2 root with `cpu` enabled for its children.
fn cpu_root() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mounts: Vec<(PathBuf, String, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut right = right.split_whitespace();
            let fstype = right.next()?.to_owned();
            let options = right.nth(1).unwrap_or_default().to_owned();
            Some((PathBuf::from(point), fstype, options))
        })
        .collect();
    if let Some((point, _, _)) = mounts
        .iter()
        .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|o| o == "cpu"))
    {
        return Ok(point.clone());
    }
    let (root, _, _) = mounts
        .iter()
        .find(|(_, t, _)| t == "cgroup2")
        .context("no cgroup hierarchy with the cpu controller is mounted")?;
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    anyhow::ensure!(
        controllers.split_whitespace().any(|c| c == "cpu"),
        "the cgroup v2 root {} does not offer the cpu controller",
        root.display()
    );
    fs::write(root.join("cgroup.subtree_control"), "+cpu")
        .with_context(|| format!("enabling cpu in {}", root.display()))?;
    Ok(root.clone())
}

/// Gives `group` CPU weight `weight` (1–10000, 100 the default): cgroup v2's `cpu.weight`,
/// or v1's `cpu.shares` as systemd maps it (weight × 1024 / 100).
fn set_weight(group: &Path, weight: u64) -> anyhow::Result<()> {
    let (file, value) = if group.join("cpu.weight").exists() {
        ("cpu.weight", weight)
    } else {
        ("cpu.shares", weight * 1024 / 100)
    };
    fs::write(group.join(file), value.to_string())
        .with_context(|| format!("setting {} of {}", file, group.display()))
}

/// Moves every process of `group` to `root`.
fn empty_into(group: &Path, root: &Path) {
    for pid in fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
    {
        let _ = fs::write(root.join("cgroup.procs"), pid);
    }
}

impl ServiceGroups {
    /// Creates the three groups, named after this process; the agent's at `agent_weight`
    /// (systemd's `CPUWeight=`: 100 is every other service's) when given.
    pub fn create(agent_weight: Option<u64>) -> anyhow::Result<ServiceGroups> {
        let root = cpu_root()?;
        let name = |part: &str| root.join(format!("phiguard-bench-{}-{part}", std::process::id()));
        let (db, clients, agent) = (name("db"), name("clients"), name("agent"));
        let undo = {
            let (root, groups) = (root.clone(), [db.clone(), clients.clone(), agent.clone()]);
            Undo::register(move || {
                for group in &groups {
                    empty_into(group, &root);
                    let _ = fs::remove_dir(group);
                }
            })
        };
        for group in [&db, &clients, &agent] {
            fs::create_dir_all(group).with_context(|| format!("creating {}", group.display()))?;
        }
        if let Some(weight) = agent_weight {
            set_weight(&agent, weight)?;
        }
        Ok(ServiceGroups {
            db,
            clients,
            agent,
            _undo: undo,
        })
    }

    /// Moves process `pid` (all its threads) into `group`.
    pub fn put(group: &Path, pid: u32) -> anyhow::Result<()> {
        fs::write(group.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", group.display()))
    }

    /// Moves process `pid` and its children into `group` (a server whose later children, forked
    /// from it, follow it there).
    pub fn put_with_children(group: &Path, pid: u32) -> anyhow::Result<()> {
        ServiceGroups::put(group, pid)?;
        for entry in fs::read_dir("/proc")?.filter_map(Result::ok) {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent pid is the second field after the parenthesised command name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(pid) {
                // A child that exited since is not an error.
                let _ = ServiceGroups::put(group, child);
            }
        }
        Ok(())
    }
}
