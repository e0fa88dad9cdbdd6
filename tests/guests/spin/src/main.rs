//! spin: a long ring-3 busy loop with progress reports.
//!
//! Command line: `iters=N` (default 1_000_000_000), `progress=N` progress lines (default
//! 10). Output: `spin: start iters=<N>`, `spin: progress <done>/<N>` lines, then
//! `spin: done iters=<N> tsc=<ticks> ms=<ms>`. Exit: 0.
//!
//! With `kvmclock`: instead, turn on kvmclock (MSR_KVM_SYSTEM_TIME_NEW) and print the
//! guest's time from it, `kvmclock: ns=<N>`, every `report_ms=N` (default 100) of that
//! time, until killed (exit 2 without kvmclock).

#![no_std]
#![no_main]

use guestlib::cpu::rdtsc;
use guestlib::{println, BootInfo};

guestlib::entry!(main);

/// `n` iterations of a multiply-add the compiler cannot remove.
#[inline(never)]
fn spin(n: u64, mut acc: u64) -> u64 {
    for _ in 0..n {
        acc = core::hint::black_box(acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    acc
}

/// The pvclock structure KVM keeps up to date (its layout: Linux's
/// `pvclock_vcpu_time_info`).
#[repr(C, align(64))]
struct Pvclock([u32; 16]);
static mut PVCLOCK: Pvclock = Pvclock([0; 16]);

/// The guest's kvmclock time, ns: read consistently (an even version, unchanged across the
/// read).
fn kvmclock_ns(addr: u64) -> u64 {
    use guestlib::phys::{read_u32, read_u64, read_u8};
    loop {
        let v1 = read_u32(addr);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        let tsc_timestamp = read_u64(addr + 8);
        let system_time = read_u64(addr + 16);
        let mul = read_u32(addr + 24);
        let shift = read_u8(addr + 28) as i8;
        let tsc = rdtsc();
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        if v1 % 2 == 1 || read_u32(addr) != v1 {
            continue;
        }
        let mut delta = tsc.wrapping_sub(tsc_timestamp);
        delta = if shift >= 0 {
            delta << shift
        } else {
            delta >> -shift
        };
        return system_time.wrapping_add(((delta as u128 * mul as u128) >> 32) as u64);
    }
}

fn kvmclock(boot: &BootInfo) -> u32 {
    const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4B56_4D01;
    let kvm = guestlib::time::hypervisor().is_some_and(|(sig, max)| {
        &sig == b"KVMKVMKVM\0\0\0"
            && max >= 0x4000_0001
            && guestlib::cpu::cpuid(0x4000_0001, 0).eax & (1 << 3) != 0
    });
    if !kvm {
        println!("kvmclock: not offered");
        return 2;
    }
    let every = boot.arg_u64("report_ms").unwrap_or(100) * 1_000_000;
    let addr = core::ptr::addr_of_mut!(PVCLOCK) as u64;
    guestlib::sys::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, addr | 1);
    while guestlib::phys::read_u32(addr) == 0 {
        core::hint::spin_loop();
    }
    let mut next = kvmclock_ns(addr);
    loop {
        let now = kvmclock_ns(addr);
        if now >= next {
            println!("kvmclock: ns={now}");
            next = now + every;
        }
        core::hint::spin_loop();
    }
}

fn main(boot: &BootInfo) -> u32 {
    if boot.arg("kvmclock").is_some() {
        return kvmclock(boot);
    }
    let iters = boot.arg_u64("iters").unwrap_or(1_000_000_000);
    let progress = boot.arg_u64("progress").unwrap_or(10).max(1);
    guestlib::time::tsc_hz();
    println!("spin: start iters={iters}");
    let t0 = rdtsc();
    let chunk = iters / progress;
    let mut done = 0;
    let mut acc = 0;
    for p in 1..=progress {
        let n = if p == progress { iters - done } else { chunk };
        acc = spin(n, acc);
        done += n;
        println!("spin: progress {done}/{iters}");
    }
    let ticks = rdtsc() - t0;
    core::hint::black_box(acc);
    println!(
        "spin: done iters={iters} tsc={ticks} ms={}",
        guestlib::time::ticks_to_ns(ticks) / 1_000_000
    );
    0
}
