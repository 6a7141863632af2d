//! Folding repeats: reports of one (process, inode, operation) within a second are one.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::paths::FileId;

/// Reports remembered to fold repeats within [`FOLD`].
const MAX_FOLDED: usize = 4096;
/// Repeats of one (process, inode, operation) within this are one report.
const FOLD: Duration = Duration::from_secs(1);

/// What was reported last, and when: (process, inode, operation) → time.
#[derive(Debug, Default)]
pub(super) struct Folded(HashMap<(u32, FileId, u32), Instant>);

impl Folded {
    /// Whether a report of `key` at `now` repeats one made within [`FOLD`] (then it is not
    /// made); else it is remembered as made.
    pub(super) fn repeats(&mut self, key: (u32, FileId, u32), now: Instant) -> bool {
        if self
            .0
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < FOLD)
        {
            return true;
        }
        if self.0.len() >= MAX_FOLDED {
            self.0.retain(|_, at| now.duration_since(*at) < FOLD);
            if self.0.len() >= MAX_FOLDED {
                self.0.clear();
            }
        }
        self.0.insert(key, now);
        false
    }
}
