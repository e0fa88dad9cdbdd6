//! Ring 3 → ring 0 requests through the `ud2` gate (see `boot.rs` for why and for the
//! handlers).
//! Each one is an emulated ring-0 excursion on slow hosts: use sparingly.

use crate::boot::{
    REQUEST_MAGIC, SYS_CPUID, SYS_HALT, SYS_NOP, SYS_OUT_LOOP, SYS_RDMSR, SYS_READ_CR, SYS_WRMSR,
    SYS_X87,
};

#[inline(always)]
fn request(nr: u64, a: u64, b: u64, c: u64) -> u64 {
    let ret: u64;
    // SAFETY: the #UD gate preserves every register but rax and touches no memory Rust
    // owns (except what a caller explicitly asks for, e.g. an MSR that points the
    // hypervisor at a buffer); it pushes only on the ring-0 stack.
    unsafe {
        core::arch::asm!(
            "ud2",
            inlateout("rax") (REQUEST_MAGIC << 32) | nr => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            options(nostack),
        )
    };
    ret
}

/// Stops this CPU for good (`cli; hlt` in ring 0).
pub fn halt_forever() -> ! {
    request(SYS_HALT, 0, 0, 0);
    // The gate never returns from SYS_HALT; spin if a broken VMM resumes us anyway.
    loop {
        core::hint::spin_loop();
    }
}

/// Reads MSR `msr`.
pub fn rdmsr(msr: u32) -> u64 {
    request(SYS_RDMSR, msr as u64, 0, 0)
}

/// Writes `value` to MSR `msr`.
pub fn wrmsr(msr: u32, value: u64) {
    request(SYS_WRMSR, msr as u64, value, 0);
}

/// Reads control register CR`n` (0, 2, 3 or 4; anything else gives `u64::MAX`).
pub fn read_cr(n: u32) -> u64 {
    request(SYS_READ_CR, n as u64, 0, 0)
}

/// `count` byte writes of `value` to `port`, executed in ring 0.
pub fn out_loop_ring0(port: u16, value: u8, count: u64) {
    request(SYS_OUT_LOOP, port as u64, count, value as u64);
}

/// A round trip to ring 0 that does nothing.
pub fn nop() {
    request(SYS_NOP, 0, 0, 0);
}

/// Executes x87 instructions in ring 0 (see `SYS_X87`): on hosts whose ring-0 emulator
/// cannot, the VMM reports a KVM emulation failure instead of returning.
pub fn x87_in_ring0() {
    request(SYS_X87, 0, 0, 0);
}

/// CPUID `leaf`/`sub` executed in ring 0: `[eax, ebx, ecx, edx]`. Where ring-3 CPUID does
/// not reach the hypervisor's table (PVM hosts), ring 0's does.
pub fn cpuid_ring0(leaf: u32, sub: u32) -> [u32; 4] {
    let ab = request(SYS_CPUID, leaf as u64, sub as u64, 0);
    let cd = request(SYS_CPUID, leaf as u64, sub as u64, 1);
    [ab as u32, (ab >> 32) as u32, cd as u32, (cd >> 32) as u32]
}
