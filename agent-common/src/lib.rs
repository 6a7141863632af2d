//! Types shared by phiguard's kernel programs (`agent-ebpf`) and its user space (`agent`).
//!
//! Every struct that crosses the ring buffer or a map is defined here once, `#[repr(C)]` with
//! explicit padding and fixed-size arrays, so the two sides cannot drift apart. Codes are plain
//! integers (never Rust enums or `bool`): user space converts them with `TryFrom` and rejects
//! unknown values.
#![cfg_attr(not(test), no_std)]

pub mod addr;
pub mod event;
pub mod limits;
pub mod maps;
pub mod offsets;
pub mod policy;
pub mod program;

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for every type user space reads from or writes to a map or the ring buffer.
    use crate::{event::*, maps::*, offsets::KernelOffsets, policy::*};

    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte arrays, and have
    // explicit padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for ForkEvent {}
    unsafe impl aya::Pod for ExecEvent {}
    unsafe impl aya::Pod for ExecArgsEvent {}
    unsafe impl aya::Pod for ExitEvent {}
    unsafe impl aya::Pod for FileOpenEvent {}
    unsafe impl aya::Pod for ConnectEvent {}
    unsafe impl aya::Pod for SockStateEvent {}
    unsafe impl aya::Pod for DbSockEvent {}
    unsafe impl aya::Pod for DbDataEvent {}
    unsafe impl aya::Pod for DbSpan {}
    unsafe impl aya::Pod for InodeKey {}
    unsafe impl aya::Pod for AgentId {}
    unsafe impl aya::Pod for ExecIdentity {}
    unsafe impl aya::Pod for GrantKey {}
    unsafe impl aya::Pod for GrantValue {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for RuleEntry {}
    unsafe impl aya::Pod for SubjectKey {}
    unsafe impl aya::Pod for IdKey {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for ScopeKey {}
    unsafe impl aya::Pod for WatchValue {}
}
