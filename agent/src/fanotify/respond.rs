//! The response loop: reads the group's permission events on a thread of its own, decides each
//! from memory and `/proc`, answers it, and only then completes its record for the event loop.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use phiguard_common::{
    event::{matched_by, FLAG_COMPAT_SYSCALL, FLAG_EXEC_REFUSED, FLAG_TRUNCATED},
    limits::{COMM_LEN, NAMES_LEN, PATH_LEN},
    policy::{access, layer, verdict, Decision},
};
use tokio::sync::mpsc;

use super::{
    boot_ns,
    decide::{self, Label, Protected, Subject},
    group::{Group, PermissionEvent},
    opener::{self, OpenCall},
    worker::{OnStop, Stop},
    Counters, Record,
};
use crate::{
    breakglass::{GrantMap, FANOTIFY_MARGIN_NS},
    event::{
        decode::{text, DecodedEvent},
        file::FileOpen,
        header::{audit_id, Header},
        process::Exec,
    },
    kernel::identity::ExecIdentities,
    paths::{kernel_dev, FileId},
    process::procfs::{self, ProcSnapshot},
};

/// Processes whose full `/proc` snapshot already went to the event loop; past this many, the
/// memory is dropped and rebuilt.
const MAX_KNOWN: usize = 4096;

/// What the last snapshot sent of a process said: while its start time and executable are the
/// same, the next decision sends none (the event loop's process table has it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    start_ticks: u64,
    exe: Option<FileId>,
    comm: String,
    loginuid: Option<u32>,
    sessionid: Option<u32>,
}

/// The response loop's state.
pub(super) struct Responder {
    known: HashMap<u32, Known>,
    group: Arc<Group>,
    state: Arc<Mutex<Protected>>,
    records: mpsc::Sender<Record>,
    counters: Counters,
    own_pid: u32,
    ns_per_tick: u64,
    cgroup_root: PathBuf,
    /// The kernel's record of what each process executed (`None`: `/proc/PID/exe` instead).
    identities: Option<ExecIdentities>,
    /// The kernel's break-glass grants (`None`: none are honoured).
    grants: Option<GrantMap>,
    /// Whether unprotected inodes get ignore marks (off once the kernel refused one).
    ignore_marks: std::cell::Cell<bool>,
}

/// What the loop learnt about one event before answering, for its record.
struct Pending {
    opener: opener::Opener,
    call: OpenCall,
    requested_path: Option<(Vec<u8>, bool)>,
    decision: Decision,
    /// The protected file's label (`None`: an exec decision).
    label: Option<Label>,
    file: FileId,
    cgroup_id: u64,
    boot_ns: u64,
    process: Option<ProcSnapshot>,
    known: Option<Known>,
}

impl Responder {
    /// A loop answering `group`'s events from `state`; records go to `records`.
    pub(super) fn new(
        group: Arc<Group>,
        state: Arc<Mutex<Protected>>,
        records: mpsc::Sender<Record>,
        counters: Counters,
        cgroup_root: &Path,
    ) -> Responder {
        Responder {
            known: HashMap::new(),
            group,
            state,
            records,
            counters,
            own_pid: std::process::id(),
            ns_per_tick: 1_000_000_000 / procfs::ticks_per_second(),
            cgroup_root: cgroup_root.to_owned(),
            identities: None,
            grants: None,
            ignore_marks: std::cell::Cell::new(true),
        }
    }

    /// Honours the break-glass grants in `grants` (the kernel's map) as the kernel does.
    pub(super) fn with_grants(mut self, grants: Option<GrantMap>) -> Responder {
        self.grants = grants;
        self
    }

    /// `decision` with a refusal turned into an allow when a break-glass grant covers the
    /// subject (stopping [`FANOTIFY_MARGIN_NS`] before the grant's expiry, so the open completes
    /// before the kernel's own check at its exit sees it expired).
    fn break_glass(&self, decision: Decision, governed: u32, subject: &Subject) -> Decision {
        if decision.verdict != verdict::DENY && decision.verdict != verdict::WOULD_DENY {
            return decision;
        }
        let Some((slot, generation)) = self
            .grants
            .as_ref()
            .and_then(|g| g.slot_for(subject.uid, subject.exe, FANOTIFY_MARGIN_NS))
        else {
            return decision;
        };
        Decision {
            verdict: verdict::ALLOW,
            layer: layer::BREAK_GLASS,
            access: governed as u8,
            subject: slot,
            grant: generation,
            ..decision
        }
    }

    /// Identifies openers by the kernel's record of their exec (without it: `/proc/PID/exe`).
    pub(super) fn with_identities(mut self, identities: Option<ExecIdentities>) -> Responder {
        self.identities = identities;
        self
    }

    /// The executable process `tgid` runs: the kernel's record of its exec (no record: none, so
    /// it matches no `exe` subject), or without the records its `/proc` link.
    fn exe_of(&self, tgid: u32) -> Option<FileId> {
        match &self.identities {
            Some(identities) => identities.exe_of(tgid, procfs::start_ticks(tgid)?),
            None => opener::exe_id(tgid),
        }
    }

    /// The script process `tgid` runs, as the kernel recorded it (without the records: none).
    fn script_of(&self, tgid: u32) -> Option<FileId> {
        self.identities
            .as_ref()?
            .script_of(tgid, procfs::start_ticks(tgid)?)
    }

    /// Runs until `stop` says so; events still queued then are left to the group's closing.
    pub(super) fn run(mut self, stop: &Stop) {
        let group = Arc::clone(&self.group);
        stop.serve(
            group.as_fd(),
            OnStop::Leave,
            "fanotify events",
            |buf| group.read(buf),
            |event| self.answer(event),
        );
    }

    /// Decides, answers, closes the event's descriptor, then completes and queues the record.
    /// Every event is answered exactly once, even if deciding panics (then it is allowed and
    /// the panic logged): an unanswered event would hold its opener until the group closes.
    pub(super) fn answer(&mut self, event: PermissionEvent) {
        let decided =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.decide(&event)));
        let pending = decided.unwrap_or_else(|_| {
            tracing::error!("deciding a fanotify event panicked: the open was allowed");
            None
        });
        let allow = pending
            .as_ref()
            .is_none_or(|p| p.decision.verdict != verdict::DENY);
        if let Err(e) = self.group.respond(event.fd.as_raw_fd(), allow) {
            self.counters.respond_errors.inc();
            tracing::debug!("answering a fanotify event: {e}");
        }
        self.counters.answered.inc();
        let Some(pending) = pending else {
            return;
        };
        if !allow {
            self.counters.denied.inc();
        }
        let opened = opened_path(&event);
        drop(event);
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.record(pending, opened)
        }));
        let Ok(record) = built else {
            self.counters.lost.inc();
            tracing::error!("building a fanotify decision record panicked: the event is lost");
            return;
        };
        if self.records.try_send(record).is_err() {
            self.counters.lost.inc();
        }
    }

    /// The decision for one event; `None` when no rule governs it (the open is allowed and not
    /// reported by this layer).
    fn decide(&mut self, event: &PermissionEvent) -> Option<Pending> {
        if event.mask & libc::FAN_OPEN_EXEC_PERM != 0 {
            return self.decide_exec(event);
        }
        let (file, st) = event_file(event)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let label = match state.label(file) {
            Some(label) => label,
            None => {
                let ctime_ns =
                    i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec);
                if !state.needs_name_lookup(ctime_ns) {
                    // Unprotected under the set in force whichever name reaches it (it has no
                    // name inside a protected tree: that would have changed its ctime). Set
                    // while the state is locked, so a reload's flush cannot miss it.
                    self.stop_asking(event, &st);
                    return None;
                }
                let path = opened_path(event)?;
                match state.label_by_path(file, &path) {
                    Some(label) => label,
                    None => {
                        // Its one name (a directory's, or a file's with no other link) is
                        // outside every protected tree: unprotected until it moves.
                        if st.st_nlink == 1 || st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                            self.stop_asking(event, &st);
                            // Moved into a tree meanwhile: ask again (a later move is
                            // caught by its rename event).
                            if opened_path(event)
                                .is_some_and(|now| state.label_by_path(file, &now).is_some())
                            {
                                self.ask_again(event, &st);
                            }
                        }
                        return None;
                    }
                }
            }
        };
        let opener = opener_of(event);
        if opener.tgid == self.own_pid {
            return None; // the agent itself (it reads protected trees to compile policies)
        }
        let rule = state.rule(label)?;
        let subject = Subject {
            exe: self.exe_of(opener.tgid),
            uid: opener.uid,
            gid: opener.gid,
            script: self.script_of(opener.tgid),
        };
        let call = opener::read_call(event.tid);
        let requested = opener::requested_access(&call);
        let ppid = opener.ppid;
        let decision = decide::decide(
            rule,
            label.rule,
            state.slot,
            &subject,
            || self.exe_of(ppid),
            requested,
        );
        let decision = self.break_glass(decision, requested & rule.entry.governed(), &subject);
        drop(state);
        if decision.verdict == verdict::NONE {
            return None;
        }
        // While the opener still waits: its memory holds the path it asked for.
        let requested_path = call
            .path_addr
            .and_then(|addr| opener::read_path(event.tid, addr));
        let (process, known) = self.snapshot(&opener, subject.exe);
        Some(Pending {
            opener,
            call,
            requested_path,
            decision,
            label: Some(label),
            file,
            cgroup_id: 0,
            boot_ns: boot_ns(),
            process,
            known,
        })
    }

    /// Tells the kernel to answer later opens of the event's (unprotected) inode itself, so
    /// an unprotected file costs one round trip to the agent, not one per open. A kernel that
    /// refuses the mark (before Linux 6.0: no `FAN_MARK_IGNORE`) is not asked again.
    fn stop_asking(&self, event: &PermissionEvent, st: &libc::stat) {
        if !self.ignore_marks.get() {
            return;
        }
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        match self.group.ignore_opens(event.fd.as_fd(), is_dir) {
            Ok(()) => {
                self.counters.ignore_marks.inc();
            }
            Err(e) => {
                self.counters.ignore_mark_failures.inc();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    tracing::warn!("this kernel refuses evictable ignore marks ({e}): every open on a filesystem holding protected files keeps waiting for the agent");
                    self.ignore_marks.set(false);
                } else {
                    tracing::debug!("ignore mark refused: {e}");
                }
            }
        }
    }

    /// Removes the event's inode's ignore mark (it may be protected after all).
    fn ask_again(&self, event: &PermissionEvent, st: &libc::stat) {
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if let Err(e) = self.group.ask_again(event.fd.as_fd(), is_dir) {
            tracing::warn!("removing an ignore mark: {e}");
        }
    }

    /// The decision for an exec event; `None` unless it is refused (allowed and would-deny
    /// execs are reported by the exec tracepoint's record, as without this layer).
    fn decide_exec(&mut self, event: &PermissionEvent) -> Option<Pending> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.has_exec_rules() {
            return None;
        }
        let opener = opener_of(event);
        if opener.tgid == self.own_pid {
            return None;
        }
        let cgroup_id = cgroup_of(&self.cgroup_root, event.tid).unwrap_or(0);
        let (index, rule) = state.exec_rule(cgroup_id)?;
        let (file, _) = event_file(event)?;
        // The program, then each directory above it (by `stat`, which opens nothing).
        let program = opened_path(event);
        let mut chain = vec![file];
        if let Some(program) = &program {
            chain.extend(
                program
                    .ancestors()
                    .skip(1)
                    .filter_map(|d| FileId::of(d).ok()),
            );
        }
        let decision = decide::decide_exec(rule, index, state.slot, &chain);
        drop(state);
        if decision.verdict != verdict::DENY {
            return None;
        }
        let exe = self.exe_of(opener.tgid);
        let subject = Subject {
            exe,
            uid: opener.uid,
            gid: opener.gid,
            script: self.script_of(opener.tgid),
        };
        if self.break_glass(decision, access::EXEC, &subject).verdict == verdict::ALLOW {
            // Allowed by a grant: the exec tracepoint reports it, deciding the same way.
            return None;
        }
        // Only the program the execve names is decided here, as BPF LSM's
        // bprm_check_security does for its first stage. The kernel opens the ELF interpreter
        // (ld.so) and a script's interpreter for exec too; those pass here (the exec
        // tracepoint still checks the program that ends up running, with SIGKILL).
        let call = opener::read_call(event.tid);
        let requested_path = call
            .path_addr
            .and_then(|addr| opener::read_path(event.tid, addr));
        if call.syscall != phiguard_common::event::open_syscall::EXEC {
            return None;
        }
        let named = requested_path
            .as_ref()
            .and_then(|(path, _)| named_file(event.tid, &call, path));
        if named != Some(file) {
            return None;
        }
        let (process, known) = self.snapshot(&opener, exe);
        Some(Pending {
            opener,
            call,
            requested_path,
            decision,
            label: None,
            file,
            cgroup_id,
            boot_ns: boot_ns(),
            process,
            known,
        })
    }

    /// A full `/proc` snapshot of the opener when its (start time, executable) is new to the
    /// event loop, and what is known of it either way.
    fn snapshot(
        &mut self,
        opener: &opener::Opener,
        exe: Option<FileId>,
    ) -> (Option<ProcSnapshot>, Option<Known>) {
        let subject_exe = exe;
        // A full snapshot of the process once per (process, executable): later decisions name
        // it from the event loop's process table.
        let start_ticks = procfs::start_ticks(opener.tgid).unwrap_or(0);
        let fresh = self
            .known
            .get(&opener.tgid)
            .is_some_and(|k| k.start_ticks == start_ticks && k.exe == subject_exe);
        let process = if fresh {
            None
        } else {
            procfs::read_process(opener.tgid).ok().map(|mut snapshot| {
                // The process pointed its `exe` link away from what it executed: the link
                // names another program, not this one.
                if snapshot.exe_id != subject_exe && self.identities.is_some() {
                    snapshot.exe = None;
                }
                snapshot
            })
        };
        if let Some(snapshot) = &process {
            if self.known.len() >= MAX_KNOWN {
                self.known.clear();
            }
            self.known.insert(
                opener.tgid,
                Known {
                    start_ticks: snapshot.start_ticks,
                    exe: subject_exe,
                    comm: snapshot.comm.clone(),
                    loginuid: snapshot.loginuid.and_then(audit_id),
                    sessionid: snapshot.sessionid.and_then(audit_id),
                },
            );
        }
        let known = self.known.get(&opener.tgid).cloned();
        (process, known)
    }

    /// The `FileOpen` record of a decision, as the kernel programs would have written it.
    fn record(&self, p: Pending, opened: Option<PathBuf>) -> Record {
        let Some(label) = p.label else {
            return self.exec_record(p, opened);
        };
        let mut flags = 0;
        if p.call.compat {
            flags |= FLAG_COMPAT_SYSCALL;
        }
        let mut header = self.header(&p, flags);
        // Cut where the kernel programs' records cut, and marked the same way.
        let requested = match &p.requested_path {
            Some((path, cut)) => {
                if *cut {
                    header.flags |= FLAG_TRUNCATED;
                }
                text(path, (PATH_LEN - 1) as u32)
            }
            None => String::new(),
        };
        let names = match opened {
            Some(opened) => {
                let bytes = opened.as_os_str().as_encoded_bytes();
                let n = bytes.len().min(NAMES_LEN - 1);
                if n < bytes.len() {
                    header.flags |= FLAG_TRUNCATED;
                }
                vec![String::from_utf8_lossy(&bytes[..n]).into_owned()]
            }
            None => Vec::new(),
        };
        let event = FileOpen {
            header,
            ret: if p.decision.verdict == verdict::DENY {
                -i64::from(libc::EPERM)
            } else {
                0
            },
            open_flags: p.call.flags.unwrap_or(0),
            mode: p.call.mode,
            dirfd: p.call.dirfd,
            syscall: p.call.syscall,
            matched_by: matched_by::LABEL,
            watch_id: label.watch_id,
            file: p.file,
            requested,
            names,
            decision: p.decision,
            sender: None,
        };
        Record {
            event: DecodedEvent::FileOpen(event),
            process: p.process,
        }
    }

    /// The header of a record about `p`'s opener, as decoding the kernel programs' header
    /// would give it (the task name cut where the kernel cuts it).
    fn header(&self, p: &Pending, flags: u32) -> Header {
        let known = p.known.as_ref();
        let name = known.map_or(&b""[..], |k| k.comm.as_bytes());
        Header {
            flags,
            boot_ns: p.boot_ns,
            tid: p.opener.tid,
            pid: p.opener.tgid,
            ppid: p.opener.ppid,
            uid: p.opener.uid,
            gid: p.opener.gid,
            loginuid: known.and_then(|k| k.loginuid),
            sessionid: known.and_then(|k| k.sessionid),
            cgroup_id: p.cgroup_id,
            start_boot_ns: known.map_or(0, |k| k.start_ticks) * self.ns_per_tick,
            comm: text(name, (COMM_LEN - 1) as u32),
        }
    }

    /// The `Exec` record of a refused exec, as the BPF LSM program writes it: the process keeps
    /// its old image (`FLAG_EXEC_REFUSED`).
    fn exec_record(&self, p: Pending, program: Option<PathBuf>) -> Record {
        let mut flags = FLAG_EXEC_REFUSED;
        if p.call.compat {
            flags |= FLAG_COMPAT_SYSCALL;
        }
        let mut header = self.header(&p, flags);
        let name = match (&p.requested_path, &program) {
            (Some((path, cut)), _)
                if p.call.syscall == phiguard_common::event::open_syscall::EXEC =>
            {
                if *cut {
                    header.flags |= FLAG_TRUNCATED;
                }
                path.as_slice()
            }
            (_, Some(program)) => program.as_os_str().as_encoded_bytes(),
            _ => &[],
        };
        let event = Exec {
            old_pid: p.opener.tid,
            decision: p.decision,
            exe: None,
            // Cut where the kernel programs' records cut.
            filename: text(name, (PATH_LEN - 1) as u32),
            cwd: None,
            header,
        };
        Record {
            event: DecodedEvent::Exec(event),
            process: p.process,
        }
    }
}

/// The cgroup v2 id (the cgroup directory's inode number, as `bpf_get_current_cgroup_id`) of a
/// thread, from `/proc/<tid>/cgroup` and the v2 mount at `root`.
fn cgroup_of(root: &Path, tid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let text = std::fs::read_to_string(format!("/proc/{tid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = root.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// The (device, inode) of the file an `execve`/`execveat` call names: the path resolved against
/// the caller's working directory or `dirfd` (an empty path with `AT_EMPTY_PATH`: the `dirfd`
/// itself), through `/proc/<tid>` — by `stat`, which opens nothing.
fn named_file(tid: u32, call: &OpenCall, path: &[u8]) -> Option<FileId> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let base = if call.dirfd == -100 {
        PathBuf::from(format!("/proc/{tid}/cwd"))
    } else {
        PathBuf::from(format!("/proc/{tid}/fd/{}", call.dirfd))
    };
    let full = if path.as_os_str().is_empty() {
        base
    } else if path.is_absolute() {
        PathBuf::from(format!("/proc/{tid}/root")).join(path.strip_prefix("/").ok()?)
    } else {
        base.join(path)
    };
    FileId::of(&full).ok()
}

/// The path the kernel shows for the event's file now.
fn opened_path(event: &PermissionEvent) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", event.fd.as_raw_fd())).ok()
}

/// The (device, inode) of the event's file, and its `stat`.
fn event_file(event: &PermissionEvent) -> Option<(FileId, libc::stat)> {
    // SAFETY: `stat` is plain old data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open; `st` is valid for writes.
    if unsafe { libc::fstat(event.fd.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    let file = FileId {
        dev: kernel_dev(st.st_dev),
        ino: st.st_ino,
    };
    Some((file, st))
}

/// Who is asking. An opener whose status cannot be read (it is being killed) is nobody: a
/// protected file is refused to it, and reported with what is known.
fn opener_of(event: &PermissionEvent) -> opener::Opener {
    opener::read_opener(event.tid).unwrap_or(opener::Opener {
        tid: event.tid,
        tgid: event.tid,
        ppid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    })
}
