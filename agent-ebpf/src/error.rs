//! How a program run ends early, and the count of the ones that should not have.
//!
//! Every entry point calls a `try_*` function returning [`ProbeResult`] and hands the result to
//! [`finish`]: a [`ProbeError::Skip`] (the event is not one any watch or policy covers) and a
//! [`ProbeError::Lost`] (the ring buffer was full, already counted in `LOST`) end quietly; a
//! [`ProbeError::Fault`] (a kernel or user read, a map update or a scratch lookup failed where
//! it should not) is counted per program in `FAULTS`, which user space exports. A fault is
//! never dropped silently.

use phiguard_common::program::Program;

use crate::{kernel::ReadError, maps::FAULTS};

/// Why a program run ended before its end. One byte: it fits in a register.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// Nothing to do: filtered out (not watched, not protected, not tracked).
    Skip,
    /// The record did not fit in the ring buffer (counted in `LOST` by kind).
    Lost,
    /// Something the program needed could not be read or written (counted in `FAULTS`).
    Fault,
}

const _: () = assert!(core::mem::size_of::<ProbeError>() == 1);
const _: () = assert!(core::mem::size_of::<ProbeResult<u64>>() <= 16);

/// What a `try_*` function returns.
pub type ProbeResult<T = ()> = Result<T, ProbeError>;

impl From<ReadError> for ProbeError {
    #[inline(always)]
    fn from(_: ReadError) -> Self {
        ProbeError::Fault
    }
}

/// Counts one fault of `program`.
#[inline(always)]
pub fn count_fault(program: Program) {
    if let Some(counter) = FAULTS.get_ptr_mut(program as u32) {
        // SAFETY: the map value is a live, aligned u64 owned by this CPU; the kernel does not
        // run two tracing programs on one CPU at once.
        unsafe { *counter += 1 };
    }
}

/// Ends a program run: counts a fault against `program`, lets a skip or a loss pass.
#[inline(always)]
pub fn finish<T>(program: Program, result: ProbeResult<T>) {
    if let Err(ProbeError::Fault) = result {
        count_fault(program);
    }
}

/// `Some(value)` as `Ok`, `None` as a skip (a map lookup that found nothing).
#[inline(always)]
pub fn or_skip<T>(value: Option<T>) -> ProbeResult<T> {
    value.ok_or(ProbeError::Skip)
}

/// `Some(value)` as `Ok`, `None` as a fault (a lookup that cannot miss: scratch, array).
#[inline(always)]
pub fn or_fault<T>(value: Option<T>) -> ProbeResult<T> {
    value.ok_or(ProbeError::Fault)
}
