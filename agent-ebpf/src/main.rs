//! phiguard's kernel programs. One module per hook family; maps in `maps`; how records reach
//! the ring buffer in `emit`; kernel struct reads through BTF offsets in `kernel`; a syscall's
//! arguments at its exit in `syscall`.
//!
//! Rules every program follows: no allocation, loops bounded by constants, a bounds check
//! before every variable index, per-CPU scratch for anything larger than the stack allows,
//! every failed ring-buffer write counted in `LOST`, and every fault counted in `FAULTS`
//! (`error`): an entry point is a few lines that hand a `try_*` function's result to
//! `error::finish`.
#![no_std]
#![no_main]

mod emit;
mod error;
mod identity;
mod kernel;
mod maps;
mod policy;
mod programs;
mod script;
mod syscall;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects programs that can reach it.
    loop {}
}

/// Kernel programs must declare a GPL-compatible license to use GPL-only helpers
/// (`bpf_probe_read_kernel`, `bpf_get_current_task`, …).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
