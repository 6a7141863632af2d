//! Reporting: the loop that reads the change group, decides each relevant change for its
//! process with the `write` access, folds repeats, and queues the `FileOpen` record (a refusal
//! as `would_deny`: the change happened).

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    sync::{Arc, PoisonError},
    time::Instant,
};

use phiguard_common::{
    event::{matched_by, open_syscall},
    limits::{COMM_LEN, NAMES_LEN, PATH_LEN},
    policy::{access, layer, verdict, Decision},
};
use tokio::sync::mpsc;

use super::{
    super::{
        boot_ns,
        decide::{self, Subject},
        opener, sys,
        worker::{OnStop, Stop},
        Counters, Record,
    },
    find::{Finder, Found},
    fold::Folded,
    parse::{parse, Change, Notice},
};
use crate::{
    event::{
        decode::{text, DecodedEvent},
        file::FileOpen,
        header::Header,
    },
    kernel::identity::ExecIdentities,
    process::procfs,
};

/// The reporting loop's state.
pub(super) struct Reporter {
    /// The change group.
    pub(super) fd: Arc<OwnedFd>,
    /// What finds the changes' subjects.
    pub(super) finder: Finder,
    /// Records, for the event loop.
    pub(super) records: mpsc::Sender<Record>,
    /// The layer's counters.
    pub(super) counters: Counters,
    /// The kernel's record of what each process executed (`None`: `/proc/PID/exe` instead).
    pub(super) identities: Option<ExecIdentities>,
    /// The agent's own process id (its changes are not reported).
    pub(super) own_pid: u32,
    /// Nanoseconds a clock tick (`/proc` start times are in ticks).
    pub(super) ns_per_tick: u64,
    /// The reports made lately.
    pub(super) folded: Folded,
}

impl Reporter {
    /// Runs until `stop` says so, reporting first what is queued then.
    pub(super) fn run(mut self, stop: &Stop) {
        let fd = Arc::clone(&self.fd);
        stop.serve(
            fd.as_fd(),
            OnStop::Drain,
            "fanotify change events",
            |buf| sys::read(fd.as_fd(), buf).map(|n| parse(&buf[..n])),
            |notice| match notice {
                Notice::Overflow => {
                    self.counters.lost.inc();
                    tracing::warn!("the fanotify change queue overflowed: changes to protected files went unreported");
                }
                Notice::Change(change) => {
                    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.handle(&change)
                    }));
                    if handled.is_err() {
                        self.counters.lost.inc();
                        tracing::error!("reporting a fanotify change panicked: it is lost");
                    }
                    self.counters.changes.inc();
                }
            },
        );
    }

    /// Decides one change for its process and queues its report.
    fn handle(&mut self, change: &Change) {
        let pid = change.pid;
        // Found first, so the agent's own changes still refresh the `stat` remembered.
        let found = self.finder.find(change);
        if found.is_empty() || pid == self.own_pid {
            return; // nothing protected, or the agent itself
        }
        let actor = opener::read_opener(pid).unwrap_or(opener::Opener {
            tid: pid,
            tgid: pid,
            ppid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        });
        let start_ticks = procfs::start_ticks(actor.tgid);
        let exe = match (&self.identities, start_ticks) {
            (Some(identities), Some(ticks)) => identities.exe_of(actor.tgid, ticks),
            (Some(_), None) => None,
            (None, _) => opener::exe_id(actor.tgid),
        };
        let script = match (&self.identities, start_ticks) {
            (Some(identities), Some(ticks)) => identities.script_of(actor.tgid, ticks),
            _ => None,
        };
        let subject = Subject {
            exe,
            uid: actor.uid,
            gid: actor.gid,
            script,
        };
        let mut process = None;
        for found in found {
            self.report(&actor, &subject, start_ticks, &mut process, found);
        }
    }

    /// Decides one change of `actor` and queues its report (`process`: its `/proc` snapshot,
    /// read once per event).
    fn report(
        &mut self,
        actor: &opener::Opener,
        subject: &Subject,
        start_ticks: Option<u64>,
        process: &mut Option<Option<procfs::ProcSnapshot>>,
        found: Found,
    ) {
        let decision = {
            let state = self
                .finder
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(rule) = state.rule(found.label) else {
                return;
            };
            let ppid = actor.ppid;
            decide::decide(
                rule,
                found.label.rule,
                state.slot,
                subject,
                || opener::exe_id(ppid),
                access::WRITE,
            )
        };
        if decision.verdict == verdict::NONE {
            return;
        }
        let decision = reported(decision);
        // A listed program's writes were decided (and reported) at their open.
        if found.op == open_syscall::WRITE && decision.verdict == verdict::ALLOW {
            return;
        }
        let key = (actor.tgid, found.file, found.op);
        if found.file.ino != 0 && self.folded.repeats(key, Instant::now()) {
            return;
        }
        let process = process
            .get_or_insert_with(|| {
                procfs::read_process(actor.tgid)
                    .ok()
                    .filter(|p| Some(p.start_ticks) == start_ticks)
            })
            .clone();
        let record = self.record(actor, process, start_ticks, found, decision);
        if self.records.try_send(record).is_err() {
            self.counters.lost.inc();
        }
    }

    /// The `FileOpen` record of a change, as BPF LSM's `inode_*` programs write it.
    fn record(
        &self,
        actor: &opener::Opener,
        process: Option<procfs::ProcSnapshot>,
        start_ticks: Option<u64>,
        found: Found,
        decision: Decision,
    ) -> Record {
        let comm = process.as_ref().map_or(&b""[..], |p| p.comm.as_bytes());
        let mut header = Header {
            flags: 0,
            boot_ns: boot_ns(),
            tid: actor.tid,
            pid: actor.tgid,
            ppid: actor.ppid,
            uid: actor.uid,
            gid: actor.gid,
            loginuid: process.as_ref().and_then(|p| p.loginuid),
            sessionid: process.as_ref().and_then(|p| p.sessionid),
            cgroup_id: 0,
            // Unknown (the process is gone): the event loop names its latest incarnation.
            start_boot_ns: start_ticks.unwrap_or(0) * self.ns_per_tick,
            comm: text(comm, (COMM_LEN - 1) as u32),
        };
        let mut cut = |path: Option<PathBuf>, limit: usize| match path {
            Some(path) => {
                let bytes = path.as_os_str().as_encoded_bytes();
                if bytes.len() >= limit {
                    header.flags |= phiguard_common::event::FLAG_TRUNCATED;
                }
                text(bytes, (limit - 1) as u32)
            }
            None => String::new(),
        };
        let names: Vec<String> = match found.path {
            Some(path) => vec![cut(Some(path), NAMES_LEN)],
            None => Vec::new(),
        };
        let requested = cut(found.other, PATH_LEN);
        let event = FileOpen {
            header,
            ret: 0,
            open_flags: 0,
            mode: 0,
            dirfd: libc::AT_FDCWD,
            syscall: found.op,
            matched_by: matched_by::LABEL,
            watch_id: found.label.watch_id,
            file: found.file,
            requested,
            names,
            decision,
            sender: None,
        };
        Record {
            event: DecodedEvent::FileOpen(event),
            process,
        }
    }
}

/// A decision as a report of a change that already happened: a refusal becomes `would_deny`
/// by the fanotify layer (it could not be enforced).
pub fn reported(decision: Decision) -> Decision {
    if decision.verdict == verdict::DENY {
        Decision {
            verdict: verdict::WOULD_DENY,
            layer: layer::FANOTIFY,
            ..decision
        }
    } else {
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_reported_as_would_deny_by_fanotify() {
        let deny = Decision {
            verdict: verdict::DENY,
            layer: layer::FANOTIFY,
            ..Decision::NONE
        };
        let r = reported(deny);
        assert_eq!((r.verdict, r.layer), (verdict::WOULD_DENY, layer::FANOTIFY));
        let allow = Decision {
            verdict: verdict::ALLOW,
            ..Decision::NONE
        };
        assert_eq!(reported(allow), allow);
    }
}
