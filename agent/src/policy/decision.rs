//! Turning the kernel's compact decisions (kernel rule, verdict, layer, access, subject) into
//! the event's `Decision`: which policy and rule, in words.

use std::{collections::HashMap, path::Path, sync::Arc};

use phiguard_common::policy::{layer, verdict, Decision, MAX_RULES, NO_SUBJECT};
use phiguard_proto::v1;

use super::compile::{access_names, Compiled};
use crate::paths::FileId;

/// The policy sets in both kernel slots, so events written just before a reload still name
/// the rules they were decided under.
#[derive(Default)]
pub struct PolicyTables {
    slots: [Option<(u64, Arc<Compiled>)>; 2],
    /// Break-glass grants by slot and generation (a slot passes to later grants; the
    /// generation tells them apart in records read late).
    grants: HashMap<(u32, u32), v1::BreakGlassUse>,
}

impl PolicyTables {
    /// Records that `compiled` (generation `generation`) is now in `slot`.
    pub fn set(&mut self, slot: u32, generation: u64, compiled: Arc<Compiled>) {
        self.slots[(slot & 1) as usize] = Some((generation, compiled));
    }

    /// Records that break-glass grant `grant` holds `slot` with `generation`.
    pub fn set_grant(&mut self, slot: u32, generation: u32, grant: v1::BreakGlassUse) {
        self.grants.insert((slot, generation), grant);
    }

    /// The path of a protected unix socket, by its file's identity.
    pub fn unix_socket_path(&self, id: FileId) -> Option<&Path> {
        self.slots.iter().flatten().find_map(|(_, compiled)| {
            compiled
                .unix_sockets
                .iter()
                .find(|(_, socket, _)| *socket == id)
                .map(|(path, _, _)| path.as_path())
        })
    }

    /// The script that allowed `decision`: the one the allowing subject names, if it names one.
    pub fn script(&self, decision: &Decision) -> Option<v1::Script> {
        if decision.verdict != verdict::ALLOW
            || decision.layer == layer::BREAK_GLASS
            || decision.subject == NO_SUBJECT
        {
            return None;
        }
        let (_, compiled) = self
            .slots
            .get((decision.rule / MAX_RULES) as usize)?
            .as_ref()?;
        let rule = compiled.rules.get((decision.rule % MAX_RULES) as usize)?;
        let (path, sha256) = rule.subject_scripts.get(&u32::from(decision.subject))?;
        Some(v1::Script {
            path: path.display().to_string(),
            sha256: sha256.clone(),
        })
    }

    /// The event form of a kernel decision; `None` when no rule applied. A rule this agent has
    /// no table for (a previous agent's, changed since: see `agent::takeover`) gives the
    /// verdict, layer and access without policy and rule names.
    pub fn describe(&self, decision: &Decision) -> Option<v1::Decision> {
        if decision.verdict == verdict::NONE {
            return None;
        }
        let mut described = v1::Decision {
            verdict: match decision.verdict {
                verdict::ALLOW => v1::Verdict::Allow,
                verdict::DENY => v1::Verdict::Deny,
                verdict::WOULD_DENY => v1::Verdict::WouldDeny,
                _ => v1::Verdict::Unspecified,
            } as i32,
            layer: match decision.layer {
                layer::LSM => v1::EnforcementLayer::Lsm,
                layer::CGROUP => v1::EnforcementLayer::Cgroup,
                layer::SIGNAL => v1::EnforcementLayer::Signal,
                layer::FANOTIFY => v1::EnforcementLayer::Fanotify,
                layer::SPARED => v1::EnforcementLayer::Spared,
                layer::BREAK_GLASS => v1::EnforcementLayer::BreakGlass,
                _ => v1::EnforcementLayer::Unspecified,
            } as i32,
            access: access_names(u32::from(decision.access)),
            ..v1::Decision::default()
        };
        if decision.layer == layer::BREAK_GLASS {
            described.break_glass = Some(
                self.grants
                    .get(&(u32::from(decision.subject), decision.grant))
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        let slot = (decision.rule / MAX_RULES) as usize;
        let index = (decision.rule % MAX_RULES) as usize;
        let Some((generation, compiled)) = self.slots.get(slot).and_then(Option::as_ref) else {
            return Some(described);
        };
        let rule = compiled.rules.get(index);
        let origin = rule.and_then(|rule| match decision.verdict {
            // The rule that refused what the grant allowed.
            verdict::ALLOW if decision.layer == layer::BREAK_GLASS => {
                rule.denying_origin(u32::from(decision.access), true)
            }
            verdict::ALLOW if decision.subject != NO_SUBJECT => {
                rule.subjects.get(usize::from(decision.subject))
            }
            // A spared refusal came from an enforce-mode rule too.
            verdict::DENY => rule.denying_origin(u32::from(decision.access), true),
            verdict::WOULD_DENY if decision.layer == layer::SPARED => {
                rule.denying_origin(u32::from(decision.access), true)
            }
            _ => rule.denying_origin(u32::from(decision.access), false),
        });
        if let Some(origin) = origin {
            described.policy.clone_from(&origin.policy);
            described.rule.clone_from(&origin.rule);
            described.policy_file = origin.file.display().to_string();
        }
        described.generation = *generation;
        Some(described)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed_by_grant(slot: u8, generation: u32) -> Decision {
        Decision {
            rule: 0,
            verdict: verdict::ALLOW,
            layer: layer::BREAK_GLASS,
            access: 1,
            subject: slot,
            grant: generation,
            _pad: 0,
        }
    }

    fn named(tables: &PolicyTables, decision: &Decision) -> String {
        tables
            .describe(decision)
            .and_then(|d| d.break_glass)
            .map(|b| b.grant_id)
            .unwrap_or_default()
    }

    #[test]
    fn a_late_record_names_the_grant_that_allowed_it_not_the_next_one_in_its_slot() {
        let mut tables = PolicyTables::default();
        let grant = |id: &str| v1::BreakGlassUse {
            grant_id: id.into(),
            reason: "r".into(),
        };
        tables.set_grant(0, 7, grant("bg-000000000007"));
        // The slot passes to a later grant before the first one's record is read.
        tables.set_grant(0, 8, grant("bg-000000000008"));
        assert_eq!(named(&tables, &allowed_by_grant(0, 7)), "bg-000000000007");
        assert_eq!(named(&tables, &allowed_by_grant(0, 8)), "bg-000000000008");
        // A grant this agent never saw is named by nobody rather than by the wrong one.
        assert_eq!(named(&tables, &allowed_by_grant(0, 9)), "");
    }
}
