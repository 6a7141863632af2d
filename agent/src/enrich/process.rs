//! Process records: fork, exec (with the argv that arrived before it), exit; and the subject
//! process every event carries, from the process table.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use phiguard_common::event::{FLAG_EXEC_REFUSED, FLAG_TRUNCATED};
use phiguard_proto::v1::{self, event::Body};

use super::{hash::BinaryHasher, users::UserNames, Enricher, MAX_PENDING_ARGV};
use crate::{
    db::argv::ArgvRedactor,
    event::{
        decode::ExecArgs,
        header::Header,
        process::{Exec, Exit, Fork},
    },
    kernel::mounts::MountTable,
    paths::{self, FileId},
    process::table::{ExecInfo, Process},
};

impl Enricher {
    /// A fork: the child joins the process table.
    pub(super) fn fork(&mut self, e: &Fork) -> Body {
        let parent = (e.header.pid, e.header.start_boot_ns);
        self.processes
            .on_fork(parent, e.child_pid, e.child_start_boot_ns);
        Body::Fork(v1::ProcessFork {
            child_pid: e.child_pid,
            child_start_time: Some(self.timestamp(e.child_start_boot_ns)),
        })
    }

    /// An exec: the process's new image, with the argv held for it.
    pub(super) fn exec(&mut self, e: &Exec) -> Body {
        let filename = e.filename.clone();
        let (argv, truncated) = match self.pending_argv.remove(&e.old_pid) {
            Some(args) => (args.argv, args.truncated),
            None => (Vec::new(), false),
        };
        let h = &e.header;
        let exec = ExecInfo {
            ppid: h.ppid,
            filename: filename.clone(),
            exe_id: e.exe,
            argv,
            argv_truncated: truncated || h.flags & FLAG_TRUNCATED != 0,
            uid: h.uid,
            gid: h.gid,
            loginuid: h.loginuid,
            sessionid: h.sessionid,
            cwd: exec_cwd(e, &mut self.mounts),
        };
        if h.flags & FLAG_EXEC_REFUSED == 0 {
            self.processes.on_exec(h.pid, h.start_boot_ns, exec);
            self.binary_hashes.remove(&(h.pid, h.start_boot_ns));
        }
        Body::Exec(v1::ProcessExec {
            filename,
            old_pid: e.old_pid,
        })
    }

    /// An exit: the event is built before the process is marked gone.
    pub(super) fn exit(&mut self, e: Exit) -> v1::Event {
        let code = e.exit_code;
        let process = (e.header.pid, e.header.start_boot_ns);
        let body = Body::Exit(v1::ProcessExit {
            exit_code: Some(code),
            exit_status: (code & 0x7f == 0).then_some(((code >> 8) & 0xff) as i32),
            signal: (code & 0x7f != 0).then(|| signal_name(code & 0x7f)),
        });
        // Build the event before marking the process gone, then forget its hash.
        let event = self.finish(e.header, body, None);
        self.processes.on_exit(process.0, process.1, code);
        self.binary_hashes.remove(&process);
        self.redacted_argv.forget(process);
        event
    }

    /// Keeps an argv record until its exec arrives (bounded: a failed exec leaves one behind).
    pub(super) fn hold_argv(&mut self, args: ExecArgs) {
        let tid = args.header.tid;
        if self.pending_argv.insert(tid, args).is_none() {
            self.pending_order.push_back(tid);
        }
        while self.pending_order.len() > MAX_PENDING_ARGV {
            if let Some(old) = self.pending_order.pop_front() {
                self.pending_argv.remove(&old);
            }
        }
        if self.pending_order.len() > 2 * self.pending_argv.len() + 64 {
            let live = &self.pending_argv;
            self.pending_order.retain(|tid| live.contains_key(tid));
        }
    }

    /// The subject process: the kernel's view at the time of the event, completed from the
    /// process table (which survives the process's exit).
    pub(super) fn process(&mut self, h: Header) -> v1::Process {
        let user = |users: &mut UserNames, id: u32| v1::User {
            id: Some(id),
            name: users.user_name(id).unwrap_or_default(),
        };
        let start_time = self.timestamp(h.start_boot_ns);
        let mut process = v1::Process {
            pid: h.pid,
            tid: h.tid,
            ppid: h.ppid,
            comm: h.comm,
            user: Some(user(&mut self.users, h.uid)),
            group: Some(v1::Group {
                id: Some(h.gid),
                name: self.users.group_name(h.gid).unwrap_or_default(),
            }),
            login_user: h.loginuid.map(|id| user(&mut self.users, id)),
            session_id: h.sessionid,
            start_time: Some(start_time),
            ..Default::default()
        };
        if self.processes.get_or_load(h.pid, h.start_boot_ns).is_none() {
            return process;
        }
        // Borrowed, not cloned: this runs for every event.
        let Some(p) = self.processes.get(h.pid, h.start_boot_ns) else {
            return process;
        };
        // A change reported after its process was gone (the fanotify change group) knows
        // none of these: the process table's record does.
        if h.uid == u32::MAX && h.gid == u32::MAX {
            process.user = Some(user(&mut self.users, p.uid));
            process.group = Some(v1::Group {
                id: Some(p.gid),
                name: self.users.group_name(p.gid).unwrap_or_default(),
            });
        }
        if process.comm.is_empty() {
            process.comm.clone_from(&p.comm);
        }
        if process.ppid == 0 {
            process.ppid = p.ppid;
        }
        if h.start_boot_ns == 0 {
            process.start_time = Some(self.timestamp(p.start_boot_ns));
        }
        process.binary_sha256 = binary_hash(
            &mut self.binary_hashes,
            &mut self.hasher,
            (h.pid, h.start_boot_ns),
            p,
        );
        process.exe = p.exe.clone().unwrap_or_default();
        // Minimum necessary: credentials in any argument, SQL literals and passwords in
        // database clients' options, local identifier patterns.
        process.argv = if self.settings.full_statements {
            p.argv.clone()
        } else {
            self.redacted_argv.redacted(
                (h.pid, h.start_boot_ns),
                &process.exe,
                &p.argv,
                &self.settings.argv_redactor,
            )
        };
        process.argv_truncated = p.argv_truncated;
        process.cwd = p.cwd.clone().unwrap_or_default();
        process.cgroup = p.cgroup.clone().unwrap_or_default();
        process.container_id = p.container_id.clone().unwrap_or_default();
        process.exited = p.exited_at.is_some();
        process
    }
}

/// sha256 of the process's binary, once per process incarnation: of the file the kernel
/// executed, never of one the process named afterwards.
fn binary_hash(
    hashes: &mut HashMap<(u32, u64), Option<String>>,
    hasher: &mut BinaryHasher,
    (tgid, start): (u32, u64),
    p: &Process,
) -> String {
    if let Some(hash) = hashes.get(&(tgid, start)) {
        return hash.clone().unwrap_or_default();
    }
    // /proc/<pid>/exe is the very file even if the path was replaced since — unless the
    // process pointed it elsewhere; after exit, fall back to the path, if it is the file.
    let is_executed = |path: &Path| p.exe_id.is_none() || FileId::of(path).ok() == p.exe_id;
    let proc_exe = PathBuf::from(format!("/proc/{tgid}/exe"));
    let path = if p.exited_at.is_none() && proc_exe.exists() && is_executed(&proc_exe) {
        Some(proc_exe)
    } else {
        p.exe
            .as_deref()
            .map(PathBuf::from)
            .filter(|e| is_executed(e))
    };
    let hash = path.and_then(|path| hasher.sha256_of(&path));
    hashes.insert((tgid, start), hash.clone());
    hash.unwrap_or_default()
}

/// Most processes whose redacted argv is remembered; past it the memory starts over.
const MAX_REDACTED_ARGV: usize = 4096;

/// Each process's redacted argv, worked out once per argv rather than once per event (the
/// redactor parses every client's options: it was the agent's largest cost per database
/// statement).
#[derive(Default)]
pub(super) struct RedactedArgvs {
    /// By (pid, start time): the executable and argv redacted, and the result.
    by_process: HashMap<(u32, u64), RedactedArgv>,
}

/// One process's argv as given to the redactor, and what it made of it.
struct RedactedArgv {
    exe: String,
    argv: Vec<String>,
    redacted: Vec<String>,
}

impl RedactedArgvs {
    /// `argv` of process `key` (running `exe`) redacted by `redactor`: remembered while the
    /// process's executable and argv stay what they were (an exec, or a process that rewrites
    /// its title, changes them).
    fn redacted(
        &mut self,
        key: (u32, u64),
        exe: &str,
        argv: &[String],
        redactor: &ArgvRedactor,
    ) -> Vec<String> {
        if let Some(known) = self.by_process.get(&key) {
            if known.exe == exe && known.argv == argv {
                return known.redacted.clone();
            }
        }
        let redacted = redactor.redact(exe, argv).unwrap_or_else(|| argv.to_vec());
        if self.by_process.len() >= MAX_REDACTED_ARGV {
            self.by_process.clear();
        }
        self.by_process.insert(
            key,
            RedactedArgv {
                exe: exe.to_owned(),
                argv: argv.to_vec(),
                redacted: redacted.clone(),
            },
        );
        redacted
    }

    /// Forgets process `key` (it exited).
    pub(super) fn forget(&mut self, key: (u32, u64)) {
        self.by_process.remove(&key);
    }
}

/// The working directory an exec record carries: names up to the root of a mount, joined
/// to where that mount is. `None` when the walk was cut or the mount is not visible here.
fn exec_cwd(e: &Exec, mounts: &mut MountTable) -> Option<String> {
    let cwd = e.cwd.as_ref()?;
    let names: Vec<&str> = cwd.names.iter().map(String::as_str).collect();
    let root = mounts.mount_point(cwd.mount_id)?;
    Some(paths::join_names(root, &names).display().to_string())
}

pub(super) fn signal_name(signal: u32) -> String {
    nix::sys::signal::Signal::try_from(signal as i32)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("SIG{signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn a_remembered_argv_is_redacted_again_when_the_process_changes_it() {
        let redactor = ArgvRedactor::default();
        let mut memo = RedactedArgvs::default();
        let psql = strings(&["psql", "postgresql://app:s3cret@db/x"]);
        let first = memo.redacted((7, 1), "/usr/bin/psql", &psql, &redactor);
        assert_eq!(Some(first.clone()), redactor.redact("/usr/bin/psql", &psql));
        assert!(!first.concat().contains("s3cret"));
        assert_eq!(
            memo.redacted((7, 1), "/usr/bin/psql", &psql, &redactor),
            first
        );
        // Same process, another argv (an exec, or a rewritten title): not the old answer.
        let other = strings(&["psql", "-c", "select 'MRN-1'"]);
        let second = memo.redacted((7, 1), "/usr/bin/psql", &other, &redactor);
        assert!(!second.concat().contains("MRN-1"), "{second:?}");
        // Nothing to redact: the argv as it is.
        let plain = strings(&["sleep", "1"]);
        assert_eq!(
            memo.redacted((8, 1), "/usr/bin/sleep", &plain, &redactor),
            plain
        );
        memo.forget((7, 1));
        assert!(!memo.by_process.contains_key(&(7, 1)));
    }
}
