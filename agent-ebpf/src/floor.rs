//! The benchmark's hook floor: programs that do nothing, one per program type the agent uses.
//! `phiguard bench-floor` attaches them wherever the registry attaches the real programs, so
//! a benchmark can tell what the hooks cost by themselves from what the agent's work costs.
//!
//! An object of its own (`phiguard-floor`), built only with the `floor` feature (the agent's
//! `bench-floor` feature, which `cargo xtask bench` turns on): the product object carries no
//! benchmark programs.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{cgroup_sock_addr, fexit, lsm, raw_tracepoint, tracepoint},
    programs::{
        FExitContext, LsmContext, RawTracePointContext, SockAddrContext, TracePointContext,
    },
};

/// Any classic tracepoint: returns at once.
#[tracepoint]
pub fn floor_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

/// Any raw tracepoint: returns at once.
#[raw_tracepoint]
pub fn floor_raw_tracepoint(_ctx: RawTracePointContext) -> i32 {
    0
}

/// `cgroup/connect4`: allows every connect.
#[cgroup_sock_addr(connect4)]
pub fn floor_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

/// `cgroup/connect6`: allows every connect.
#[cgroup_sock_addr(connect6)]
pub fn floor_connect6(_ctx: SockAddrContext) -> i32 {
    1
}

/// Any BPF LSM hook (attached to the hook named at load time): allows.
#[lsm]
pub fn floor_lsm(_ctx: LsmContext) -> i32 {
    0
}

/// Any kernel function's return (attached to the function named at load time): returns at
/// once.
#[fexit]
pub fn floor_fexit(_ctx: FExitContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: these programs cannot panic.
    loop {}
}

/// GPL-compatible, like the product object.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
