//! smp: finds the CPUs in the MADT (or MP table), starts the APs with INIT-SIPI-SIPI and
//! has every CPU check in from ring 3.
//!
//! Command line: `timeout_ms=N` (default 3000), `broadcast` (wake APs with all-but-self
//! IPIs instead of one INIT-SIPI-SIPI per APIC id).
//! Output: `smp: bsp apic_id=<id> expected=<n> source=<madt|mptable|none> mode=<m>`, one
//! `cpu <index> apic_id=<id>` per CPU (the BSP first), then
//! `smp: <n>/<expected> cpus checked in` and `apic ids: <sorted ids>`.
//! Exit: 0 when every expected CPU checked in, 1 on timeout.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use guestlib::acpi::MAX_LISTED_CPUS;
use guestlib::boot::MAX_CPUS;
use guestlib::smp::StartMode;
use guestlib::time::Deadline;
use guestlib::{println, BootInfo};

guestlib::entry!(main);

const SLOTS: usize = MAX_LISTED_CPUS + MAX_CPUS;
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicU32 = AtomicU32::new(0);
/// APIC id + 1 of the CPU with each index, 0 when it has not checked in.
static CHECKED: [AtomicU32; SLOTS] = [EMPTY; SLOTS];
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn check_in(index: usize, apic_id: u32) {
    println!("cpu {index} apic_id={apic_id}");
    if index < SLOTS && CHECKED[index].swap(apic_id + 1, Ordering::AcqRel) == 0 {
        COUNT.fetch_add(1, Ordering::AcqRel);
    }
}

fn ap_main(index: usize, apic_id: u32) {
    check_in(index, apic_id);
}

fn main(boot: &BootInfo) -> u32 {
    let cpus = guestlib::acpi::discover_cpus(boot);
    let bsp = guestlib::cpu::apic_id();
    let expected = cpus.len().min(MAX_CPUS);
    let mode = if boot.arg("broadcast").is_some() {
        StartMode::Broadcast
    } else {
        StartMode::PerCpu
    };
    println!(
        "smp: bsp apic_id={bsp} expected={expected} source={} mode={}",
        cpus.source.name(),
        match mode {
            StartMode::PerCpu => "per-cpu",
            StartMode::Broadcast => "broadcast",
        }
    );
    if cpus.len() > MAX_CPUS {
        println!("smp: {} cpus listed, starting only {MAX_CPUS}", cpus.len());
    }
    check_in(cpus.index_of(bsp).unwrap_or(0), bsp);
    guestlib::smp::start_aps(&cpus, ap_main, mode);

    let deadline = Deadline::after_ms(boot.arg_u64("timeout_ms").unwrap_or(3000));
    while COUNT.load(Ordering::Acquire) < expected && !deadline.expired() {
        core::hint::spin_loop();
    }
    let n = COUNT.load(Ordering::Acquire);
    let mut ids = [0u32; SLOTS];
    let mut len = 0;
    for c in CHECKED.iter() {
        let v = c.load(Ordering::Acquire);
        if v != 0 {
            ids[len] = v - 1;
            len += 1;
        }
    }
    let ids = &mut ids[..len];
    ids.sort_unstable();
    let _g = guestlib::serial::lock();
    println_locked(format_args!("smp: {n}/{expected} cpus checked in\n"));
    println_locked(format_args!("apic ids:"));
    for id in ids.iter() {
        println_locked(format_args!(" {id}"));
    }
    println_locked(format_args!("\n"));
    if n >= expected {
        0
    } else {
        1
    }
}

/// Writes while the caller holds the serial lock.
fn println_locked(args: core::fmt::Arguments) {
    let _ = core::fmt::write(&mut guestlib::serial::Writer, args);
}
