//! The arguments of the system call the current task is in, read back at `sys_exit_*` from
//! the user registers the kernel saved at entry, so an exit program needs no entry program
//! and no map to carry them.
//!
//! x86_64 only: the layout is the kernel's `struct pt_regs` (also in its uapi), arguments in
//! `di, si, dx, r10, r8, r9` and the syscall number in `orig_ax`. Compat (ia32) calls do not
//! fire the `syscalls/*` tracepoints on x86_64, so their register convention never shows here.
//! Needs `bpf_get_current_task_btf` and `bpf_task_pt_regs` (Linux 5.15).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_task_pt_regs},
};

/// The saved user registers of the current task.
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    regs: *const pt_regs,
}

impl SyscallArgs {
    /// The registers of the task running this program. Valid in any program that runs in
    /// process context on a syscall path (syscall tracepoints, LSM hooks under a syscall).
    #[inline(always)]
    pub fn current() -> SyscallArgs {
        // SAFETY: helpers without user input; `bpf_task_pt_regs` takes the trusted task
        // pointer `bpf_get_current_task_btf` returns and gives a pointer the verifier types
        // as `struct pt_regs`.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) };
        SyscallArgs {
            regs: regs as *const pt_regs,
        }
    }

    /// Argument `n` (0-based) as the caller passed it; 0 for `n > 5`.
    #[inline(always)]
    pub fn arg(self, n: usize) -> u64 {
        // SAFETY: `regs` is a verifier-typed `struct pt_regs` pointer: each field load is
        // checked against the kernel's BTF and cannot fault.
        unsafe {
            match n {
                0 => (*self.regs).rdi,
                1 => (*self.regs).rsi,
                2 => (*self.regs).rdx,
                3 => (*self.regs).r10,
                4 => (*self.regs).r8,
                5 => (*self.regs).r9,
                _ => 0,
            }
        }
    }

    /// Argument `n` (0-based) of a 32-bit (`int 0x80`) call: `bx, cx, dx, si, di, bp`,
    /// zero-extended; 0 for `n > 5`.
    #[inline(always)]
    pub fn compat_arg(self, n: usize) -> u64 {
        // SAFETY: as in `arg`.
        unsafe {
            let value = match n {
                0 => (*self.regs).rbx,
                1 => (*self.regs).rcx,
                2 => (*self.regs).rdx,
                3 => (*self.regs).rsi,
                4 => (*self.regs).rdi,
                5 => (*self.regs).rbp,
                _ => 0,
            };
            value & 0xffff_ffff
        }
    }

    /// The system call's number (`orig_ax`), to tell which call an LSM hook runs under.
    #[inline(always)]
    pub fn nr(self) -> u64 {
        // SAFETY: as in `arg`.
        unsafe { (*self.regs).orig_rax }
    }
}
