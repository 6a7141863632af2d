//! What a previous agent's programs recorded while no agent read them is kept, not lost.
//!
//! While policies are enforced the programs stay attached when their agent exits (see
//! [`super::pins`]), and go on deciding — and writing their records into that agent's ring
//! buffer, which nobody reads until a new agent starts. A starting agent finds that ring
//! buffer, its loss counters and its rule table through the pinned links' programs before it
//! replaces them; once its own programs are in place and the old ones are gone, it drains
//! every record into its own event path ([`Previous::drain`]) and reports what the old
//! programs could not write as a loss. A restart or an upgrade (of the same record format)
//! leaves no gap in the trail.

use std::path::Path;

use aya::{
    maps::{Array, Map, MapData, MapInfo, PerCpuArray, RingBuf},
    programs::loaded_programs,
};
use phiguard_common::{
    event::KIND_COUNT,
    maps::{EVENTS, LOST, RULES},
    policy::RuleEntry,
};

use super::pins;

/// The previous agent's ring buffer, loss counters and rules, held open past its programs.
pub struct Previous {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    rules: Array<MapData, RuleEntry>,
    programs: Vec<u32>,
}

impl Previous {
    /// Finds the maps of the programs pinned under `root` (a previous agent's), if there are
    /// such programs. An error says why they cannot be read (their records are then lost, and
    /// the caller says so).
    pub fn find(root: &Path) -> Result<Option<Previous>, String> {
        let programs = pins::pinned_program_ids(root);
        if programs.is_empty() {
            return Ok(None);
        }
        let mut map_ids = Vec::new();
        for info in loaded_programs().flatten() {
            if programs.contains(&info.id()) {
                if let Ok(Some(ids)) = info.map_ids() {
                    map_ids.extend(ids);
                }
            }
        }
        map_ids.sort_unstable();
        map_ids.dedup();
        let named = |name: &str| -> Result<Map, String> {
            let id = map_ids
                .iter()
                .copied()
                .find(|&id| MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some(name)))
                .ok_or_else(|| format!("the pinned programs use no map {name}"))?;
            let data = MapData::from_id(id).map_err(|e| format!("opening map {name}: {e}"))?;
            Map::from_map_data(data).map_err(|e| format!("map {name}: {e}"))
        };
        Ok(Some(Previous {
            ring: RingBuf::try_from(named(EVENTS)?).map_err(|e| e.to_string())?,
            lost: PerCpuArray::try_from(named(LOST)?).map_err(|e| e.to_string())?,
            rules: Array::try_from(named(RULES)?).map_err(|e| e.to_string())?,
            programs,
        }))
    }

    /// Waits (briefly) until the previous programs are released — replaced pins are let go of
    /// asynchronously — so that nothing is written into the old ring buffer after it is drained.
    pub fn wait_detached(&self) {
        pins::wait_released(&self.programs);
    }

    /// Hands every record in the old ring buffer to `on_record`; returns how many there were.
    pub fn drain(&mut self, mut on_record: impl FnMut(&[u8])) -> usize {
        let mut count = 0;
        while let Some(record) = self.ring.next() {
            on_record(&record);
            count += 1;
        }
        count
    }

    /// The old programs' loss counters (records they could not write), summed over CPUs, by
    /// event kind code.
    pub fn lost(&self) -> [u64; KIND_COUNT as usize] {
        let mut totals = [0u64; KIND_COUNT as usize];
        for (kind, total) in totals.iter_mut().enumerate() {
            if let Ok(values) = self.lost.get(&(kind as u32), 0) {
                *total = values.iter().sum();
            }
        }
        totals
    }

    /// The old rule at kernel index `index` (slot and rule), as the old programs decided with it.
    pub fn rule(&self, index: u32) -> Option<RuleEntry> {
        self.rules.get(&index, 0).ok()
    }
}
