//! One process's facts from `/proc/<pid>`.

use std::{fs, io, sync::OnceLock};

use crate::paths::FileId;

/// What `/proc/<pid>` says about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcSnapshot {
    /// Process id.
    pub tgid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Task name.
    pub comm: String,
    /// Executable (None for kernel threads or when unreadable).
    pub exe: Option<String>,
    /// The executable's (device, inode), by `stat` of the `exe` link. It shows what the
    /// process's memory map names, which the process can rewrite: decisions use the kernel's
    /// record of its exec instead.
    pub exe_id: Option<FileId>,
    /// Command line.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Audit login uid (None when unset).
    pub loginuid: Option<u32>,
    /// Audit session id (None when unset).
    pub sessionid: Option<u32>,
    /// cgroup v2 path.
    pub cgroup: Option<String>,
    /// Container id found in the cgroup path.
    pub container_id: Option<String>,
    /// Start time in clock ticks since boot (`stat` field 22).
    pub start_ticks: u64,
}

/// A `/proc` file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("/proc/{pid}/{file}: {source}")]
pub struct ProcError {
    /// The process.
    pub pid: u32,
    /// The file under `/proc/<pid>`.
    pub file: &'static str,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, normally 100).
pub fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            ticks as u64
        } else {
            100
        }
    })
}

/// Boot-time nanoseconds to clock ticks, rounded down as the kernel does for `/proc`.
pub fn ns_to_ticks(ns: u64) -> u64 {
    ns / (1_000_000_000 / ticks_per_second())
}

/// Every process id in `/proc`.
pub fn list_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn read(pid: u32, file: &'static str) -> Result<String, ProcError> {
    fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| ProcError {
        pid,
        file,
        source,
    })
}

fn link(pid: u32, file: &str) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/{file}"))
        .ok()
        .map(|p| p.display().to_string())
}

fn invalid(pid: u32, file: &'static str, what: &str) -> ProcError {
    ProcError {
        pid,
        file,
        source: io::Error::new(io::ErrorKind::InvalidData, what.to_owned()),
    }
}

/// (comm, ppid, start ticks) from `/proc/<pid>/stat`.
fn parse_stat(pid: u32, stat: &str) -> Result<(String, u32, u64), ProcError> {
    // comm is in parentheses and may itself contain spaces and parentheses.
    let open = stat
        .find('(')
        .ok_or_else(|| invalid(pid, "stat", "no comm"))?;
    let close = stat
        .rfind(')')
        .ok_or_else(|| invalid(pid, "stat", "no comm"))?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state): field N is fields[N - 3].
    let ppid = fields
        .get(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| invalid(pid, "stat", "no ppid"))?;
    let start = fields
        .get(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| invalid(pid, "stat", "no starttime"))?;
    Ok((comm, ppid, start))
}

/// Start time (clock ticks since boot) of a live process, if it exists.
pub fn start_ticks(pid: u32) -> Option<u64> {
    parse_stat(pid, &read(pid, "stat").ok()?)
        .ok()
        .map(|(_, _, start)| start)
}

/// A 64-hex-character container id in a cgroup path (`docker-<id>.scope`, `/docker/<id>`,
/// `cri-containerd-<id>.scope`, …).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup
        .split(['/', '-', '.', ':'])
        .find(|part| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
}

fn audit_id(pid: u32, file: &'static str) -> Option<u32> {
    read(pid, file)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|id| *id != u32::MAX)
}

/// Reads everything the table keeps about `pid`.
pub fn read_process(pid: u32) -> Result<ProcSnapshot, ProcError> {
    let (comm, ppid, start_ticks) = parse_stat(pid, &read(pid, "stat")?)?;
    let status = read(pid, "status")?;
    let id = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| invalid(pid, "status", key))
    };
    let (uid, gid) = (id("Uid:")?, id("Gid:")?);
    let argv = read(pid, "cmdline")
        .map(|c| {
            c.split('\0')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let cgroup = read(pid, "cgroup").ok().and_then(|c| {
        c.lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
    });
    Ok(ProcSnapshot {
        tgid: pid,
        ppid,
        comm,
        exe: link(pid, "exe"),
        exe_id: FileId::of(std::path::Path::new(&format!("/proc/{pid}/exe"))).ok(),
        argv,
        cwd: link(pid, "cwd"),
        uid,
        gid,
        loginuid: audit_id(pid, "loginuid"),
        sessionid: audit_id(pid, "sessionid"),
        container_id: cgroup.as_deref().and_then(container_id),
        cgroup,
        start_ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let p = read_process(me).unwrap();
        assert_eq!(p.tgid, me);
        assert_eq!(p.ppid, nix::unistd::getppid().as_raw() as u32);
        assert_eq!(
            p.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|p| p.to_str())
        );
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert!(!p.argv.is_empty() && p.start_ticks > 0);
        assert_eq!(start_ticks(me), Some(p.start_ticks));
        assert!(list_pids().contains(&me));
    }

    #[test]
    fn stat_with_awkward_comm() {
        let stat = "42 (a) b (c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        assert_eq!(
            parse_stat(42, stat).unwrap(),
            ("a) b (c".to_owned(), 7, 12345)
        );
        assert!(parse_stat(42, "42 (x) S").is_err());
    }

    #[test]
    fn container_ids() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id(&format!("/system.slice/docker-{id}.scope")),
            Some(id.clone())
        );
        assert_eq!(
            container_id(&format!("/kubepods/burstable/pod1/{id}")),
            Some(id)
        );
        assert_eq!(
            container_id("/user.slice/user-1000.slice/session-3.scope"),
            None
        );
    }

    #[test]
    fn missing_process_names_pid_and_file() {
        let err = read_process(u32::MAX - 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("/proc/{}/stat", u32::MAX - 1)),
            "{err}"
        );
    }
}
