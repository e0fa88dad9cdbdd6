//! iobench: times back-to-back port writes to an unclaimed port from ring 0 (through the
//! request gate, the loop runs in ring 0) and from ring 3, with the TSC.
//!
//! Command line: `port=N` (default 0x270: nothing decodes it on QEMU's pc or microvm),
//! `count=N` (default 100000), `gate=N` round trips to ring 0 to time (default 1000).
//! Output, in order:
//! `iobench: port=0x270 count=<n>`, `iobench: tsc_hz=<hz> source=<src>`,
//! `iobench: tsc_hz_pit=<hz|none>` (a 25 ms cross-check against PIT channel 0),
//! `iobench ring0: start`, `iobench ring0: end`,
//! `iobench ring0: <n> outs <ticks> tsc <ns>.<d> ns/out`,
//! the same three lines for `ring3`, then
//! `iobench gate: <n> calls <ticks> tsc <ns>.<d> ns/call`, `iobench: done`.
//! The `start`/`end` lines are printed immediately around each loop so a host harness can
//! time the loops too. Exit: 0.

#![no_std]
#![no_main]

use guestlib::cpu::rdtsc;
use guestlib::time::ticks_to_ns;
use guestlib::{println, BootInfo};

guestlib::entry!(main);

/// `ticks / count` in nanoseconds as (whole, tenths).
fn per_op(ticks: u64, count: u64) -> (u64, u64) {
    let tenths = ticks_to_ns(ticks) * 10 / count.max(1);
    (tenths / 10, tenths % 10)
}

fn main(boot: &BootInfo) -> u32 {
    let port = boot.arg_u64("port").unwrap_or(0x270) as u16;
    let count = boot.arg_u64("count").unwrap_or(100_000);
    let gate = boot.arg_u64("gate").unwrap_or(1000);
    println!("iobench: port={port:#x} count={count}");
    let hz = guestlib::time::tsc_hz();
    println!(
        "iobench: tsc_hz={hz} source={}",
        guestlib::time::tsc_source().name()
    );
    match guestlib::time::from_pit(25) {
        Some(pit) => println!("iobench: tsc_hz_pit={pit}"),
        None => println!("iobench: tsc_hz_pit=none"),
    }

    println!("iobench ring0: start");
    let t0 = rdtsc();
    guestlib::sys::out_loop_ring0(port, 0, count);
    let ticks = rdtsc() - t0;
    println!("iobench ring0: end");
    let (ns, tenths) = per_op(ticks, count);
    println!("iobench ring0: {count} outs {ticks} tsc {ns}.{tenths} ns/out");

    println!("iobench ring3: start");
    let t0 = rdtsc();
    guestlib::io::out_loop(port, 0, count);
    let ticks = rdtsc() - t0;
    println!("iobench ring3: end");
    let (ns, tenths) = per_op(ticks, count);
    println!("iobench ring3: {count} outs {ticks} tsc {ns}.{tenths} ns/out");

    let t0 = rdtsc();
    for _ in 0..gate {
        guestlib::sys::nop();
    }
    let ticks = rdtsc() - t0;
    let (ns, tenths) = per_op(ticks, gate);
    println!("iobench gate: {gate} calls {ticks} tsc {ns}.{tenths} ns/call");
    println!("iobench: done");
    0
}
