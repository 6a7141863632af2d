//! Taking over from a previous agent whose programs kept enforcing while no agent ran: what
//! they decided becomes events here, and what they could not write is reported as lost (see
//! [`crate::kernel::handover`]).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use phiguard_common::{event::Kind, policy::MAX_RULES};
use tracing::{info, warn};

use super::{report::Report, Agent};
use crate::{kernel::handover::Previous, policy::compile::Compiled, status::Status};

/// A decision's rule index for a rule this agent's set does not have as the previous agent
/// had it (the policies changed in between): its event carries the verdict, layer and access,
/// with no policy or rule name.
pub const UNKNOWN_RULE: u32 = 2 * MAX_RULES;

/// The previous programs' maps, found before this agent replaced them; `None` when there are
/// none, or when they cannot be read (said in the log: their unread records are then lost).
pub(super) fn find_previous(root: &Path) -> Option<Previous> {
    match Previous::find(root) {
        Ok(found) => found,
        Err(reason) => {
            warn!(
                "the previous agent's unread records cannot be reached ({reason}): they are lost"
            );
            None
        }
    }
}

/// What is needed to report the previous agent's records as this agent's events.
pub(super) struct Handover {
    previous: Previous,
    /// Old kernel rule index → the same rule in this agent's active slot, where it is the same.
    rules: HashMap<u32, u32>,
    /// The losses the previous agent had reported (its status file), by kind name.
    reported: Option<BTreeMap<String, u64>>,
}

impl Handover {
    /// Matches the previous programs' rules against `compiled`, installed in `slot`: a rule the
    /// same in both (same index, same compiled entry) names this set's policy and rule.
    pub(super) fn new(previous: Previous, slot: u32, compiled: &Compiled) -> Handover {
        let mut rules = HashMap::new();
        for old in 0..2 * MAX_RULES {
            let Some(entry) = previous.rule(old).filter(|e| e.governed() != 0) else {
                continue;
            };
            let index = old % MAX_RULES;
            let same = compiled
                .rules
                .get(index as usize)
                .is_some_and(|rule| rule.entry == entry);
            let new = if same {
                (slot & 1) * MAX_RULES + index
            } else {
                UNKNOWN_RULE
            };
            rules.insert(old, new);
        }
        Handover {
            previous,
            rules,
            reported: None,
        }
    }

    /// Reads what the previous agent last reported as lost, from its status file at `path`.
    pub(super) fn reported_by_previous(&mut self, path: &Path) {
        if let Ok(Some(status)) = Status::read(path) {
            self.reported = Some(status.kernel_lost);
        }
    }
}

impl Agent {
    /// Drains the previous programs' ring buffer into this agent's event path, then reports
    /// what they lost since the previous agent's last report.
    pub(super) fn take_over(&mut self, handover: Handover) {
        let Handover {
            mut previous,
            rules,
            reported,
        } = handover;
        previous.wait_detached();
        let (enricher, pipeline) = (&mut self.enricher, &mut self.pipeline);
        let drained = previous.drain(|bytes| {
            pipeline.handle_translated(enricher, bytes, |rule| {
                rules.get(&rule).copied().unwrap_or(UNKNOWN_RULE)
            })
        });
        info!(
            drained,
            "records the previous agent's programs wrote while no agent read them: reported"
        );
        let totals = previous.lost();
        for kind in Kind::ALL {
            let name = format!("{kind:?}");
            let before = reported
                .as_ref()
                .and_then(|r| r.get(&name).copied())
                .unwrap_or(0);
            let count = totals[kind as usize].saturating_sub(before);
            if count > 0 {
                self.report(Report::PreviousLoss { kind, count });
            }
        }
    }
}
