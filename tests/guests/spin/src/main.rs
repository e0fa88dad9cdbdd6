//! spin: a long ring-3 busy loop with progress reports.
//!
//! Command line: `iters=N` (default 1_000_000_000), `progress=N` progress lines (default
//! 10). Output: `spin: start iters=<N>`, `spin: progress <done>/<N>` lines, then
//! `spin: done iters=<N> tsc=<ticks> ms=<ms>`. Exit: 0.

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

fn main(boot: &BootInfo) -> u32 {
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
