//! Fault injection points of the store's write path, for tests.
//!
//! Every step that writes to the store's file system calls [`check`] first with its name.
//! In a normal build `check` is an empty inline function; under `cfg(test)` a test can make
//! the n-th call of a step fail with a given OS error ([`fail_at`]), so the store's
//! write-ahead order is proven for every step and every error (ENOSPC, EIO) without needing
//! a broken disk. The e2e tier adds the real thing (a full tmpfs, a loop device that returns
//! EIO).

use std::io;

/// One write step of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Writing records to the active segment.
    Append,
    /// fsync of the active segment after a batch.
    AppendSync,
    /// fsync of the segment being sealed.
    SealSync,
    /// Writing a sealed segment's index sidecar (temporary file).
    IndexWrite,
    /// Renaming the sidecar into place.
    IndexRename,
    /// Creating the next segment's temporary file.
    SegmentCreate,
    /// Writing the next segment's header.
    SegmentHeader,
    /// fsync of the next segment.
    SegmentSync,
    /// Renaming the next segment into place.
    SegmentRename,
    /// fsync of the agent's directory.
    DirSync,
    /// Cutting a failed batch off again (rollback).
    Rollback,
}

impl Step {
    /// Every step.
    pub const ALL: [Step; 11] = [
        Step::Append,
        Step::AppendSync,
        Step::SealSync,
        Step::IndexWrite,
        Step::IndexRename,
        Step::SegmentCreate,
        Step::SegmentHeader,
        Step::SegmentSync,
        Step::SegmentRename,
        Step::DirSync,
        Step::Rollback,
    ];
}

/// Fails the step when a test planned it (never in a normal build).
#[cfg(not(test))]
#[inline(always)]
pub fn check(_step: Step) -> io::Result<()> {
    Ok(())
}

/// Fails the step when a test planned it.
#[cfg(test)]
pub fn check(step: Step) -> io::Result<()> {
    injected::PLAN.with(|plan| {
        let mut plan = plan.borrow_mut();
        let Some((skip, errno, times)) = plan.get_mut(&step) else {
            return Ok(());
        };
        if *skip > 0 {
            *skip -= 1;
            return Ok(());
        }
        let errno = *errno;
        *times -= 1;
        if *times == 0 {
            plan.remove(&step);
        }
        Err(io::Error::from_raw_os_error(errno))
    })
}

/// Makes the call after `skip` calls of `step` (on this thread) fail `times` times with
/// `errno`.
#[cfg(test)]
pub fn fail_at(step: Step, skip: u32, errno: i32, times: u32) {
    injected::PLAN.with(|plan| plan.borrow_mut().insert(step, (skip, errno, times.max(1))));
}

/// Forgets every planned failure (on this thread).
#[cfg(test)]
pub fn clear() {
    injected::PLAN.with(|plan| plan.borrow_mut().clear());
}

/// The steps still planned to fail (on this thread).
#[cfg(test)]
pub fn planned() -> Vec<Step> {
    injected::PLAN.with(|plan| plan.borrow().keys().copied().collect())
}

#[cfg(test)]
mod injected {
    use std::{cell::RefCell, collections::BTreeMap};

    use super::Step;

    thread_local! {
        /// Per step: calls to let through before failing, and the errno to fail with.
        pub static PLAN: RefCell<BTreeMap<Step, (u32, i32, u32)>> = const { RefCell::new(BTreeMap::new()) };
    }
}
