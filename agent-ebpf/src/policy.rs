//! Policy decisions: may the current process make this access to a protected resource?

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns,
    },
    maps::HashMap,
};
use phiguard_common::{
    limits::MAX_WALK_DEPTH,
    maps::{grant_kind, GrantKey, GrantValue, InodeKey, MAX_GRANTS, NS_PER_TICK},
    policy::{
        access, layer, verdict, Decision, IdKey, RuleEntry, ScopeKey, SubjectKey, MAX_RULES,
        MAX_SUBJECTS, NO_RULE, NO_SUBJECT,
    },
};

use crate::{
    identity::exe_of,
    kernel::{Dentry, FileId, Task},
    maps::{
        AGENT, BREAK_GLASS, EXEC_ALLOWED, EXEC_SCOPES, NEVER_KILL, POLICY_SLOT, RULES,
        SCRIPT_SUBJECTS, SUBJECT_EXE, SUBJECT_GID, SUBJECT_PARENT, SUBJECT_SCRIPT, SUBJECT_UID,
    },
    script::script_of,
};

/// Whether the current process is the agent itself: no policy applies to it. Its pid alone is
/// not enough: the process's start time must match too, so nothing outlives the agent.
#[inline(always)]
pub fn current_is_agent() -> bool {
    let Some(agent) = AGENT.get(0).copied() else {
        return false;
    };
    agent.tgid != 0
        && (bpf_get_current_pid_tgid() >> 32) as u32 == agent.tgid
        && Task::current()
            .leader_start_boot_ns()
            .is_ok_and(|ns| ns / NS_PER_TICK == agent.start_ticks)
}

/// The policy slot in force. Read once per program run, so one run sees one policy set.
#[inline(always)]
pub fn current_slot() -> u32 {
    POLICY_SLOT.get(0).copied().unwrap_or(0) & 1
}

/// The compiled rule at a kernel index, if that entry is in use.
#[inline(always)]
pub fn rule_entry(rule: u32) -> Option<RuleEntry> {
    if rule >= 2 * MAX_RULES {
        return None;
    }
    RULES.get(rule).copied().filter(|r| r.governed() != 0)
}

#[inline(always)]
fn file_mask(map: &HashMap<SubjectKey, u64>, rule: u32, file: Option<FileId>) -> u64 {
    match file {
        // SAFETY: the value is a plain u64 copied out at once.
        Some(f) => unsafe {
            map.get(SubjectKey {
                rule,
                dev: f.dev,
                ino: f.ino,
            })
        }
        .copied()
        .unwrap_or(0),
        None => 0,
    }
}

#[inline(always)]
fn id_mask(map: &HashMap<IdKey, u64>, rule: u32, id: u32) -> u64 {
    // SAFETY: the value is a plain u64 copied out at once.
    unsafe { map.get(IdKey { rule, id }) }.copied().unwrap_or(0)
}

/// The rule's subjects that the current process is: one bit per subject.
#[inline(always)]
fn matching_subjects(rule: u32, entry: &RuleEntry) -> u64 {
    let task = Task::current();
    let uid_gid = bpf_get_current_uid_gid();
    let exe = entry.any_exe | file_mask(&SUBJECT_EXE, rule, exe_of(task));
    let uid = entry.any_uid | id_mask(&SUBJECT_UID, rule, uid_gid as u32);
    let gid = entry.any_gid | id_mask(&SUBJECT_GID, rule, (uid_gid >> 32) as u32);
    let mut matching = exe & uid & gid;
    if matching & !entry.any_parent != 0 {
        let parent = task.parent().ok().and_then(exe_of);
        matching &= entry.any_parent | file_mask(&SUBJECT_PARENT, rule, parent);
    }
    let naming_a_script = SCRIPT_SUBJECTS.get(rule).copied().unwrap_or(0);
    if matching & naming_a_script != 0 {
        matching &= !naming_a_script | file_mask(&SUBJECT_SCRIPT, rule, script_of(task));
    }
    matching
}

/// Decides whether the current process may make the accesses `requested` (`access` bits)
/// under kernel rule `rule`; a denial is enforced at `enforced_by`.
#[inline(always)]
pub fn decide(rule: u32, requested: u32, enforced_by: u8) -> Decision {
    if rule == NO_RULE || current_is_agent() {
        return Decision::NONE;
    }
    let Some(entry) = rule_entry(rule) else {
        return Decision::NONE;
    };
    let governed = requested & entry.governed();
    if governed == 0 {
        return Decision::NONE; // an access no rule governs
    }
    let matching = matching_subjects(rule, &entry);
    let mut allowed_by = u64::MAX;
    for bit in 0..access::COUNT {
        let want = 1u32 << bit;
        if governed & want == 0 {
            continue;
        }
        let may = matching & entry.may[bit];
        if may == 0 {
            if let Some(grant) = break_glass_grant() {
                return broken_glass(rule, governed, grant);
            }
            let (verdict, layer) = if entry.enforce & want != 0 {
                (verdict::DENY, enforced_by)
            } else {
                (verdict::WOULD_DENY, layer::NONE)
            };
            return Decision {
                rule,
                verdict,
                layer,
                access: want as u8,
                subject: NO_SUBJECT,
                ..Decision::NONE
            };
        }
        allowed_by &= may;
    }
    Decision {
        rule,
        verdict: verdict::ALLOW,
        layer: layer::NONE,
        access: governed as u8,
        subject: lowest_bit(allowed_by),
        ..Decision::NONE
    }
}

/// The slot and generation of a break-glass grant covering the current process — its real uid's, else its
/// executable's (the kernel's record of its exec) — that has not expired. The kernel checks the
/// expiry itself, so a grant ends on time whether or not an agent runs; an expired grant left
/// in the map (no agent to remove it) hides no live one of the other kind.
#[inline(always)]
fn break_glass_grant() -> Option<(u8, u32)> {
    // SAFETY: helper call without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let live = |grant: Option<&GrantValue>| {
        grant
            .filter(|g| now < g.expires_boot_ns && g.slot < MAX_GRANTS)
            .map(|g| (g.slot as u8, g.generation))
    };
    let uid = bpf_get_current_uid_gid() as u32;
    let by_user = GrantKey {
        kind: grant_kind::USER,
        dev: 0,
        id: u64::from(uid),
    };
    // SAFETY: the value is plain integers, read at once.
    if let Some(grant) = live(unsafe { BREAK_GLASS.get(by_user) }) {
        return Some(grant);
    }
    let exe = exe_of(Task::current())?;
    let by_exe = GrantKey {
        kind: grant_kind::EXE,
        dev: exe.dev,
        id: exe.ino,
    };
    // SAFETY: as above.
    live(unsafe { BREAK_GLASS.get(by_exe) })
}

/// The decision for accesses `governed` under kernel rule `rule` that the rule refuses and
/// the break-glass grant `(slot, generation)` allows.
#[inline(always)]
fn broken_glass(rule: u32, governed: u32, (slot, generation): (u8, u32)) -> Decision {
    Decision {
        rule,
        verdict: verdict::ALLOW,
        layer: layer::BREAK_GLASS,
        access: governed as u8,
        subject: slot,
        grant: generation,
        _pad: 0,
    }
}

/// Index of the lowest set bit, or [`NO_SUBJECT`].
#[inline(always)]
fn lowest_bit(mask: u64) -> u8 {
    if mask == 0 {
        NO_SUBJECT
    } else {
        (mask.trailing_zeros() % MAX_SUBJECTS) as u8
    }
}

/// The exec rule in force for the current process: its cgroup's, else the host-wide one.
#[inline(always)]
pub fn exec_rule(slot: u32) -> u32 {
    // SAFETY: plain helper call without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    for cgroup in [cgroup, 0] {
        let key = ScopeKey {
            slot,
            _pad: 0,
            cgroup,
        };
        // SAFETY: the value is a plain u32 copied out at once.
        if let Some(rule) = unsafe { EXEC_SCOPES.get(key) } {
            return *rule;
        }
    }
    NO_RULE
}

/// Decides whether the program the current process now runs (`dentry`, its executable) is on
/// the exec allow-list of kernel rule `rule`: the file itself or a directory above it.
#[inline(always)]
pub fn decide_exec(rule: u32, mut dentry: Dentry, enforced_by: u8) -> Decision {
    if current_is_agent() {
        return Decision::NONE;
    }
    let Some(entry) = rule_entry(rule) else {
        return Decision::NONE;
    };
    for _ in 0..MAX_WALK_DEPTH {
        let Ok(id) = dentry.id() else { break };
        let key = SubjectKey {
            rule,
            dev: id.dev,
            ino: id.ino,
        };
        // SAFETY: value not used.
        if unsafe { EXEC_ALLOWED.get(key) }.is_some() {
            return Decision {
                rule,
                verdict: verdict::ALLOW,
                layer: layer::NONE,
                access: access::EXEC as u8,
                subject: NO_SUBJECT,
                ..Decision::NONE
            };
        }
        let Ok(parent) = dentry.parent() else {
            break;
        };
        if parent == dentry {
            break;
        }
        dentry = parent;
    }
    if let Some(grant) = break_glass_grant() {
        return broken_glass(rule, access::EXEC, grant);
    }
    let (verdict, layer) = if entry.enforce & access::EXEC != 0 {
        (verdict::DENY, enforced_by)
    } else {
        (verdict::WOULD_DENY, layer::NONE)
    };
    Decision {
        rule,
        verdict,
        layer,
        access: access::EXEC as u8,
        subject: NO_SUBJECT,
        ..Decision::NONE
    }
}

/// Enforces a denial of the SIGKILL layer (where the kernel has no BPF LSM) and returns the
/// decision to report: the current process is killed — the signal is pending before the system
/// call returns, so it never uses what it obtained — unless it is PID 1 or runs a program on
/// the never-kill list; then the refusal is reported, not enforced (`WOULD_DENY`, `SPARED`).
#[inline(always)]
pub fn enforce_by_signal(decision: Decision) -> Decision {
    if decision.verdict != verdict::DENY {
        return decision;
    }
    if spared() {
        return Decision {
            verdict: verdict::WOULD_DENY,
            layer: layer::SPARED,
            ..decision
        };
    }
    // SAFETY: helper call with a constant signal number.
    unsafe { aya_ebpf::helpers::bpf_send_signal(9) };
    decision
}

/// Whether the current process must never be killed: PID 1 (of the initial pid namespace),
/// or a process running a program on the never-kill list (by the kernel's record of its exec).
#[inline(always)]
fn spared() -> bool {
    if bpf_get_current_pid_tgid() >> 32 == 1 {
        return true;
    }
    exe_of(Task::current()).is_some_and(|exe| {
        let key = InodeKey {
            dev: exe.dev,
            slot: 0,
            ino: exe.ino,
        };
        // SAFETY: value not used.
        unsafe { NEVER_KILL.get(key) }.is_some()
    })
}
