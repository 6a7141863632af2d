//! The process table: every process the agent knows, keyed by (pid, start time), seeded from
//! `/proc` and kept up to date by fork/exec/exit events. Exited processes are kept (bounded)
//! so events read after a process is gone are still enriched.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    time::Instant,
};

use super::procfs::{self, ns_to_ticks, ProcSnapshot};
use crate::paths::{self, FileId};

/// One process incarnation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    /// Process id.
    pub tgid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Start time, boot-time ns (tick precision when learnt from `/proc`).
    pub start_boot_ns: u64,
    /// Task name.
    pub comm: String,
    /// Executable path.
    pub exe: Option<String>,
    /// The executable's (device, inode) as the kernel recorded it at exec (None when the exec
    /// was not seen): `exe` names this file.
    pub exe_id: Option<FileId>,
    /// Arguments of the last exec.
    pub argv: Vec<String>,
    /// argv was cut in the kernel.
    pub argv_truncated: bool,
    /// Working directory (as last seen).
    pub cwd: Option<String>,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Audit login uid.
    pub loginuid: Option<u32>,
    /// Audit session id.
    pub sessionid: Option<u32>,
    /// cgroup v2 path.
    pub cgroup: Option<String>,
    /// Container id.
    pub container_id: Option<String>,
    /// Raw exit code, once exited.
    pub exit_code: Option<u32>,
    /// When the exit was seen.
    pub exited_at: Option<Instant>,
    /// When `cwd` was last read from `/proc`.
    pub cwd_read_at: Option<Instant>,
}

/// One step of a process's ancestry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ancestor {
    /// Process id.
    pub pid: u32,
    /// Executable path.
    pub exe: Option<String>,
    /// Task name.
    pub comm: String,
}

/// What an exec record tells about the new image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecInfo {
    /// Parent process id.
    pub ppid: u32,
    /// The file name passed to exec.
    pub filename: String,
    /// The (device, inode) of the file the kernel executed.
    pub exe_id: Option<FileId>,
    /// Arguments.
    pub argv: Vec<String>,
    /// argv was cut in the kernel.
    pub argv_truncated: bool,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Audit login uid.
    pub loginuid: Option<u32>,
    /// Audit session id.
    pub sessionid: Option<u32>,
    /// Working directory at exec, as the kernel walked it (None when incomplete).
    pub cwd: Option<String>,
}

/// How often a live process's cwd is re-read from `/proc`.
const CWD_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Identity of an incarnation: pid and start time in clock ticks (what `/proc` can tell).
type Key = (u32, u64);

fn key(tgid: u32, start_ns: u64) -> Key {
    (tgid, ns_to_ticks(start_ns))
}

impl Process {
    fn from_snapshot(s: ProcSnapshot) -> Process {
        Process {
            tgid: s.tgid,
            ppid: s.ppid,
            start_boot_ns: s.start_ticks * (1_000_000_000 / procfs::ticks_per_second()),
            comm: s.comm,
            exe: s.exe,
            exe_id: None,
            argv: s.argv,
            argv_truncated: false,
            cwd: s.cwd,
            uid: s.uid,
            gid: s.gid,
            loginuid: s.loginuid,
            sessionid: s.sessionid,
            cgroup: s.cgroup,
            container_id: s.container_id,
            exit_code: None,
            exited_at: None,
            cwd_read_at: Some(Instant::now()),
        }
    }
}

/// All known processes.
#[derive(Debug)]
pub struct ProcessTable {
    live: HashMap<u32, Process>,
    exited: HashMap<Key, Process>,
    exited_order: VecDeque<Key>,
    retain_exited: usize,
}

impl ProcessTable {
    /// An empty table keeping at most `retain_exited` exited processes.
    pub fn new(retain_exited: usize) -> ProcessTable {
        ProcessTable {
            live: HashMap::new(),
            exited: HashMap::new(),
            exited_order: VecDeque::new(),
            retain_exited,
        }
    }

    /// Loads every process in `/proc`.
    pub fn seed_from_proc(&mut self) {
        for pid in procfs::list_pids() {
            if let Ok(snapshot) = procfs::read_process(pid) {
                self.live.insert(pid, Process::from_snapshot(snapshot));
            }
        }
    }

    /// Number of live processes known.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The incarnation `tgid` started at `start_ns`, live or exited. A start time of 0 is
    /// unknown (a change reported after its process was gone): the latest incarnation.
    pub fn get(&self, tgid: u32, start_ns: u64) -> Option<&Process> {
        let k = key(tgid, start_ns);
        match self.live.get(&tgid) {
            Some(p) if key(p.tgid, p.start_boot_ns) == k => Some(p),
            Some(p) if start_ns == 0 => Some(p),
            _ if start_ns == 0 => self
                .exited_order
                .iter()
                .rev()
                .find(|k| k.0 == tgid)
                .and_then(|k| self.exited.get(k)),
            _ => self.exited.get(&k),
        }
    }

    /// Like [`ProcessTable::get`], loading the process from `/proc` when it is missing but
    /// alive with that start time (it predates the table, or its fork was missed).
    pub fn get_or_load(&mut self, tgid: u32, start_ns: u64) -> Option<&Process> {
        if self.get(tgid, start_ns).is_none() {
            let snapshot = procfs::read_process(tgid).ok()?;
            if snapshot.start_ticks != ns_to_ticks(start_ns) {
                return None;
            }
            self.insert_live(Process::from_snapshot(snapshot));
        }
        self.get(tgid, start_ns)
    }

    /// Takes what `/proc` showed of a live process just now (fresher than an exec record not
    /// yet read): it replaces the live entry of that pid — except the executable, where the
    /// exec record of the same process (the file the kernel executed) beats `/proc` (the file
    /// its memory map names, which the process can rewrite).
    /// A snapshot of a process that has exited since (its exit record was read first) changes
    /// nothing.
    pub fn observe(&mut self, snapshot: ProcSnapshot) {
        let mut process = Process::from_snapshot(snapshot);
        if let Some(known) = self.get(process.tgid, process.start_boot_ns) {
            if known.exited_at.is_some() {
                return;
            }
            if known.exe_id.is_some() {
                process.exe.clone_from(&known.exe);
                process.exe_id = known.exe_id;
            }
        }
        self.insert_live(process);
    }

    /// Replaces the live entry for a pid; an older incarnation still there is dead (its pid
    /// was reused) and moves to the exited set.
    fn insert_live(&mut self, process: Process) {
        if let Some(old) = self.live.insert(process.tgid, process) {
            let (tgid, start) = (old.tgid, old.start_boot_ns);
            if self
                .live
                .get(&tgid)
                .is_some_and(|p| key(tgid, p.start_boot_ns) != key(tgid, start))
            {
                self.retire(old);
            }
        }
    }

    fn retire(&mut self, mut process: Process) {
        if process.exited_at.is_none() {
            process.exited_at = Some(Instant::now());
        }
        let k = key(process.tgid, process.start_boot_ns);
        if self.exited.insert(k, process).is_none() {
            self.exited_order.push_back(k);
        }
        while self.exited.len() > self.retain_exited {
            let Some(oldest) = self.exited_order.pop_front() else {
                break;
            };
            self.exited.remove(&oldest);
        }
    }

    /// `parent` forked `child_tgid`: the child starts as a copy of its parent.
    pub fn on_fork(&mut self, parent: (u32, u64), child_tgid: u32, child_start_ns: u64) {
        let child = match self.get_or_load(parent.0, parent.1).cloned() {
            Some(parent_entry) => Process {
                tgid: child_tgid,
                ppid: parent.0,
                start_boot_ns: child_start_ns,
                exit_code: None,
                exited_at: None,
                ..parent_entry
            },
            None => match procfs::read_process(child_tgid) {
                Ok(s) if s.start_ticks == ns_to_ticks(child_start_ns) => Process::from_snapshot(s),
                _ => Process {
                    tgid: child_tgid,
                    ppid: parent.0,
                    start_boot_ns: child_start_ns,
                    ..Process::default()
                },
            },
        };
        self.insert_live(child);
    }

    /// `tgid` exec'd: its image fields change. `/proc` then supplies the resolved executable
    /// and cgroup if the process is still there.
    pub fn on_exec(&mut self, tgid: u32, start_ns: u64, exec: ExecInfo) {
        let mut process = self.get(tgid, start_ns).cloned().unwrap_or(Process {
            tgid,
            start_boot_ns: start_ns,
            ..Process::default()
        });
        process.ppid = exec.ppid;
        process.argv = exec.argv;
        process.argv_truncated = exec.argv_truncated;
        process.uid = exec.uid;
        process.gid = exec.gid;
        process.loginuid = exec.loginuid;
        process.sessionid = exec.sessionid;
        // The kernel's view of the cwd at exec time beats a copy inherited at fork.
        if exec.cwd.is_some() {
            process.cwd = exec.cwd;
        }
        let filename = Path::new(&exec.filename);
        process.comm = filename
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default();
        process.exe = paths::resolve(filename, process.cwd.as_deref().map(Path::new))
            .map(|p| p.display().to_string());
        // The exec'd path with symlinks such as /bin -> usr/bin resolved, or a script's
        // interpreter: what `/proc/PID/exe` would have said.
        let exe_id = exec.exe_id;
        let canonical = |exe: Option<String>| exe.map(|exe| executed_path(exe, exe_id));
        process.exe_id = exec.exe_id;
        match procfs::read_process(tgid) {
            Ok(s) if s.start_ticks == ns_to_ticks(start_ns) => {
                process.comm = s.comm;
                // A zombie still has its `stat` but no longer its `exe` link; and a process may
                // have pointed its link at another file since its exec.
                let same_file = exec.exe_id.is_none() || s.exe_id == exec.exe_id;
                process.exe = s
                    .exe
                    .filter(|_| same_file)
                    .or_else(|| canonical(process.exe.take()));
                process.cwd = process.cwd.or(s.cwd);
                process.container_id = s.container_id.or(process.container_id);
                process.cgroup = s.cgroup.or(process.cgroup);
            }
            // Gone already.
            _ => process.exe = canonical(process.exe.take()),
        }
        self.insert_live(process);
    }

    /// Refreshes a live process's working directory from `/proc` (it may have changed
    /// directory since its exec), at most once a second per process. Exited processes keep
    /// their last known one.
    pub fn refresh_cwd(&mut self, tgid: u32, start_ns: u64) {
        let Some(process) = self.live.get_mut(&tgid) else {
            return;
        };
        if key(tgid, process.start_boot_ns) != key(tgid, start_ns)
            || process
                .cwd_read_at
                .is_some_and(|at| at.elapsed() < CWD_REFRESH)
        {
            return;
        }
        process.cwd_read_at = Some(Instant::now());
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{tgid}/cwd")) {
            if procfs::start_ticks(tgid) == Some(ns_to_ticks(start_ns)) {
                process.cwd = Some(cwd.display().to_string());
            }
        }
    }

    /// `tgid` exited: it leaves the live set but stays available for late events.
    pub fn on_exit(&mut self, tgid: u32, start_ns: u64, exit_code: u32) {
        let k = key(tgid, start_ns);
        let mut process = match self.live.get(&tgid) {
            Some(p) if key(p.tgid, p.start_boot_ns) == k => {
                self.live.remove(&tgid).unwrap_or_default()
            }
            _ => match self.exited.remove(&k) {
                Some(p) => p,
                None => Process {
                    tgid,
                    start_boot_ns: start_ns,
                    ..Process::default()
                },
            },
        };
        process.exit_code = Some(exit_code);
        process.exited_at = Some(Instant::now());
        self.retire(process);
    }

    /// Up to `depth` ancestors of the incarnation, parent first.
    pub fn ancestry(&self, tgid: u32, start_ns: u64, depth: usize) -> Vec<Ancestor> {
        let mut out: Vec<Ancestor> = Vec::new();
        let Some(mut current) = self.get(tgid, start_ns) else {
            return out;
        };
        out.reserve(depth.min(16));
        while out.len() < depth {
            let ppid = current.ppid;
            // A loop in the parent links ends the walk: the pids seen so far are the process
            // and the ancestors already in `out` (a few; no set to allocate per event).
            if ppid == 0 || ppid == tgid || out.iter().any(|a| a.pid == ppid) {
                break;
            }
            let Some(parent) = self.live.get(&ppid) else {
                out.push(Ancestor {
                    pid: ppid,
                    exe: None,
                    comm: String::new(),
                });
                break;
            };
            out.push(Ancestor {
                pid: ppid,
                exe: parent.exe.clone(),
                comm: parent.comm.clone(),
            });
            current = parent;
        }
        out
    }
}

/// The path of the file the kernel executed for an exec of `path`, the file being `executed`
/// (when known): `path` with symlinks resolved, or — for a script — its interpreter (from the
/// `#!` line, one level), provided it is that file. Otherwise `path` as it was given.
fn executed_path(path: String, executed: Option<FileId>) -> String {
    let resolved = std::fs::canonicalize(&path).map_or(path, |p| p.display().to_string());
    let Some(executed) = executed else {
        return resolved;
    };
    let is_executed = |p: &Path| FileId::of(p).ok() == Some(executed);
    if is_executed(Path::new(&resolved)) {
        return resolved;
    }
    interpreter_of(Path::new(&resolved))
        .and_then(|interpreter| std::fs::canonicalize(interpreter).ok())
        .filter(|interpreter| is_executed(interpreter))
        .map_or(resolved, |interpreter| interpreter.display().to_string())
}

/// The interpreter a script's `#!` line names.
fn interpreter_of(script: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = std::str::from_utf8(line).ok()?.trim_start();
    line.split_whitespace().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK_NS: u64 = 10_000_000;

    fn true_exec() -> ExecInfo {
        ExecInfo {
            ppid: 1,
            filename: "/usr/bin/true".into(),
            ..ExecInfo::default()
        }
    }

    fn table() -> ProcessTable {
        let mut t = ProcessTable::new(2);
        // A made-up parent that is not in /proc (pid far above pid_max).
        t.insert_live(Process {
            tgid: 4_000_001,
            ppid: 4_000_000,
            start_boot_ns: 100 * TICK_NS,
            exe: Some("/usr/bin/bash".into()),
            cwd: Some("/srv/ephi".into()),
            comm: "bash".into(),
            uid: 1000,
            ..Process::default()
        });
        t.insert_live(Process {
            tgid: 4_000_000,
            ppid: 1,
            start_boot_ns: 50 * TICK_NS,
            exe: Some("/usr/sbin/sshd".into()),
            ..Process::default()
        });
        t
    }

    #[test]
    fn the_executed_file_beats_what_proc_shows_later() {
        let mut t = table();
        let executed = FileId { dev: 7, ino: 42 };
        let exec = ExecInfo {
            exe_id: Some(executed),
            ..true_exec()
        };
        t.on_exec(4_000_001, 100 * TICK_NS, exec);
        assert_eq!(
            t.get(4_000_001, 100 * TICK_NS).unwrap().exe.as_deref(),
            Some("/usr/bin/true")
        );
        // The process pointed its exe link at another program: /proc now names that one.
        t.observe(ProcSnapshot {
            tgid: 4_000_001,
            exe: Some("/srv/allowed".into()),
            exe_id: Some(FileId { dev: 7, ino: 99 }),
            comm: "renamed".into(),
            start_ticks: 100,
            ..ProcSnapshot::default()
        });
        let p = t.get(4_000_001, 100 * TICK_NS).unwrap();
        assert_eq!(
            (p.exe.as_deref(), p.exe_id),
            (Some("/usr/bin/true"), Some(executed))
        );
        assert_eq!(p.comm, "renamed", "the rest of the snapshot is taken");
    }

    #[test]
    fn a_script_that_exited_is_named_by_its_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("job.sh");
        std::fs::write(&script, "#!/usr/bin/true -x\n").unwrap();
        let script = script.display().to_string();
        let true_id = FileId::of(Path::new("/usr/bin/true")).ok();
        let true_path = std::fs::canonicalize("/usr/bin/true").unwrap();
        assert_eq!(
            executed_path(script.clone(), true_id),
            true_path.display().to_string()
        );
        // Unknown executed file, or one the line does not name: the path as given.
        assert_eq!(executed_path(script.clone(), None), script);
        let other = FileId::of(Path::new("/usr/bin/env")).ok();
        assert_eq!(executed_path(script.clone(), other), script);
    }

    #[test]
    fn an_unknown_start_time_names_the_latest_incarnation() {
        let mut t = table();
        t.on_exec(4_000_002, 100 * TICK_NS, true_exec());
        assert_eq!(
            t.get(4_000_002, 0).unwrap().exe.as_deref(),
            Some("/usr/bin/true"),
            "live"
        );
        t.on_exit(4_000_002, 100 * TICK_NS, 0);
        let p = t.get(4_000_002, 0).unwrap();
        assert!(p.exited_at.is_some(), "exited");
        assert_eq!(p.exe.as_deref(), Some("/usr/bin/true"));
        assert!(t.get(4_000_003, 0).is_none());
    }

    #[test]
    fn a_snapshot_of_a_process_that_has_exited_since_changes_nothing() {
        let mut t = table();
        t.on_exit(4_000_001, 100 * TICK_NS, 0);
        t.observe(ProcSnapshot {
            tgid: 4_000_001,
            exe: None,
            start_ticks: 100,
            ..ProcSnapshot::default()
        });
        let p = t.get(4_000_001, 100 * TICK_NS).unwrap();
        assert!(p.exited_at.is_some(), "still exited");
        assert_eq!(p.exe.as_deref(), Some("/usr/bin/bash"));
    }

    #[test]
    fn fork_exec_exit() {
        let mut t = table();
        t.on_fork((4_000_001, 100 * TICK_NS), 4_000_002, 200 * TICK_NS);
        let child = t.get(4_000_002, 200 * TICK_NS).unwrap();
        assert_eq!(
            (child.ppid, child.exe.as_deref(), child.uid),
            (4_000_001, Some("/usr/bin/bash"), 1000)
        );
        let exec = ExecInfo {
            ppid: 4_000_001,
            filename: "./tool".into(),
            argv: vec!["./tool".into(), "-x".into()],
            uid: 1000,
            gid: 1000,
            loginuid: Some(1000),
            sessionid: Some(3),
            ..ExecInfo::default()
        };
        t.on_exec(4_000_002, 200 * TICK_NS, exec);
        let child = t.get(4_000_002, 200 * TICK_NS).unwrap();
        assert_eq!(
            child.exe.as_deref(),
            Some("/srv/ephi/tool"),
            "relative exec resolved against cwd"
        );
        assert_eq!(child.argv, ["./tool", "-x"]);
        assert_eq!(child.comm, "tool");
        // The kernel's cwd at exec wins over the one copied at fork.
        let exec = ExecInfo {
            cwd: Some("/srv/other".into()),
            ..true_exec()
        };
        t.on_exec(4_000_002, 200 * TICK_NS, exec);
        assert_eq!(
            t.get(4_000_002, 200 * TICK_NS).unwrap().cwd.as_deref(),
            Some("/srv/other")
        );
        t.on_exit(4_000_002, 200 * TICK_NS, 256);
        let gone = t
            .get(4_000_002, 200 * TICK_NS)
            .expect("exited process still known");
        assert_eq!(gone.exit_code, Some(256));
        assert!(gone.exited_at.is_some());
    }

    #[test]
    fn reused_pid_does_not_inherit() {
        let mut t = table();
        t.on_exit(4_000_001, 100 * TICK_NS, 0);
        t.on_exec(4_000_001, 900 * TICK_NS, true_exec());
        let new = t.get(4_000_001, 900 * TICK_NS).unwrap();
        assert_eq!(new.exe.as_deref(), Some("/usr/bin/true"));
        assert_eq!(new.uid, 0);
        assert_eq!(
            t.get(4_000_001, 100 * TICK_NS).unwrap().exe.as_deref(),
            Some("/usr/bin/bash")
        );
        assert!(t.get(4_000_001, 500 * TICK_NS).is_none());
    }

    #[test]
    fn ancestry_stops_at_depth_and_loops() {
        let mut t = table();
        t.on_fork((4_000_001, 100 * TICK_NS), 4_000_002, 200 * TICK_NS);
        let a = t.ancestry(4_000_002, 200 * TICK_NS, 4);
        assert_eq!(a[0].pid, 4_000_001);
        assert_eq!(a[1].exe.as_deref(), Some("/usr/sbin/sshd"));
        assert_eq!(t.ancestry(4_000_002, 200 * TICK_NS, 1).len(), 1);
        // A loop (corrupt ppids) terminates.
        t.insert_live(Process {
            tgid: 4_000_010,
            ppid: 4_000_011,
            start_boot_ns: TICK_NS,
            ..Process::default()
        });
        t.insert_live(Process {
            tgid: 4_000_011,
            ppid: 4_000_010,
            start_boot_ns: TICK_NS,
            ..Process::default()
        });
        assert!(t.ancestry(4_000_010, TICK_NS, 16).len() <= 2);
    }

    #[test]
    fn exited_entries_are_bounded() {
        let mut t = ProcessTable::new(2);
        for pid in 0..5u32 {
            let tgid = 4_100_000 + pid;
            t.on_exec(tgid, TICK_NS, true_exec());
            t.on_exit(tgid, TICK_NS, 0);
        }
        assert!(t.get(4_100_000, TICK_NS).is_none(), "oldest evicted");
        assert!(t.get(4_100_004, TICK_NS).is_some());
    }

    #[test]
    fn seeds_and_loads_from_proc() {
        let mut t = ProcessTable::new(16);
        t.seed_from_proc();
        let me = std::process::id();
        let start_ns =
            procfs::start_ticks(me).unwrap() * (1_000_000_000 / procfs::ticks_per_second());
        assert!(
            t.get(me, start_ns + 3).is_some(),
            "kernel ns within the same tick match"
        );
        let mut empty = ProcessTable::new(16);
        assert!(empty.get_or_load(me, start_ns).is_some());
        assert!(
            empty.get_or_load(me, start_ns + 10 * TICK_NS).is_none(),
            "another incarnation"
        );
    }
}
