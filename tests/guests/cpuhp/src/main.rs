//! cpuhp: a guest OSPM's side of ACPI CPU hotplug on QEMU's `pc`, done by polling the
//! PIIX4 CPU hotplug block (0xAF00) from ring 3 instead of taking the GPE.
//!
//! The machine starts in the legacy mode (a present bitmap by APIC id). Unless `modern`
//! is given, the first cycle waits for a new bit there, then switches to the modern
//! interface (a zero written to 0xAF00, what the DSDT's `_INI` does) and checks it
//! answers; `modern` switches at once. Each of `cycles=N` (default 1) cycles then: finds
//! the CPU with an insert event (command 0 at 0xAF05, flags at 0xAF04, selector read back
//! at 0xAF08), reads its APIC id (command 3), clears the event, wakes it with
//! INIT-SIPI-SIPI and waits for it to check in from ring 3, reports `_OST` (device check,
//! success), waits for its remove event, clears it and ejects it (flag bit 3), and checks
//! its enabled flag is gone. GPE0 status bit 2 (0xAFE0) is read and cleared at each event.
//!
//! Command line: `cycles=N`, `timeout=S` (seconds per wait, default 60), `modern`,
//! `stay_legacy` (after the first CPU arrives in the bitmap, wait without switching).
//! Output: `cpuhp: ready bitmap=<hex>`, `cpuhp: legacy up apic=<n> gpe=<0|1>`,
//! `cpuhp: modern`, `cpuhp: found cpu=<index> apic=<n>` (the CPU plugged in legacy mode,
//! which has no insert event in the modern interface: the first cycle uses it), then per
//! cycle `cpuhp: insert cpu=<index> apic=<n> gpe=<0|1>`, the AP's
//! own `cpuhp: cpu apic=<n> checked in`, `cpuhp: online cpu=<index>`,
//! `cpuhp: remove cpu=<index> gpe=<0|1>`, `cpuhp: ejected cpu=<index> enabled=<0|1>`;
//! `cpuhp: done cycles=<N>`.
//! Exit: 0, or 2 when a wait timed out (`cpuhp: timeout waiting for <what>`).

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use guestlib::acpi::CpuList;
use guestlib::io::{inb, inl, inw, outb, outl, outw};
use guestlib::println;
use guestlib::smp::StartMode;
use guestlib::time::{delay_us, Deadline};

guestlib::entry!(main);

const SELECTOR: u16 = 0xaf00;
const FLAGS: u16 = 0xaf04;
const COMMAND: u16 = 0xaf05;
const DATA: u16 = 0xaf08;
const GPE0_STS: u16 = 0xafe0;

const ENABLED: u8 = 1;
const INSERT: u8 = 1 << 1;
const REMOVE: u8 = 1 << 2;
const EJECT: u8 = 1 << 3;

/// APIC id + 1 of the last AP that checked in.
static CHECKED_IN: AtomicU32 = AtomicU32::new(0);

fn ap_main(_index: usize, apic_id: u32) {
    println!("cpuhp: cpu apic={apic_id} checked in");
    CHECKED_IN.store(apic_id + 1, Ordering::Release);
}

/// Poll `f` every 200 µs until it gives Some, or the timeout.
fn wait<T>(timeout_s: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let d = Deadline::after_ms(timeout_s * 1000);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if d.expired() {
            println!("cpuhp: timeout waiting for {what}");
            return None;
        }
        delay_us(200);
    }
}

/// GPE0 status bit 2, cleared.
fn take_gpe() -> u16 {
    let g = (inw(GPE0_STS) >> 2) & 1;
    outw(GPE0_STS, 1 << 2);
    g
}

fn bitmap() -> u32 {
    inl(SELECTOR)
}

/// The selector of a CPU whose flags have `flag` (command 0), if any.
fn next_with(flag: u8) -> Option<u32> {
    outl(SELECTOR, 0);
    outb(COMMAND, 0);
    (inb(FLAGS) & flag != 0).then(|| inl(DATA))
}

fn main(boot: &guestlib::BootInfo) -> u32 {
    let cycles = boot.arg_u64("cycles").unwrap_or(1);
    let timeout = boot.arg_u64("timeout").unwrap_or(60);
    let bsp = guestlib::cpu::apic_id();
    guestlib::time::tsc_hz();
    let before = bitmap();
    println!("cpuhp: ready bitmap={before:#x}");
    let mut legacy_apic = None;
    if boot.arg("modern").is_none() {
        let Some(new) = wait(timeout, "a CPU in the legacy bitmap", || {
            Some(bitmap() & !before).filter(|b| *b != 0)
        }) else {
            return 2;
        };
        let apic = new.trailing_zeros();
        println!("cpuhp: legacy up apic={apic} gpe={}", take_gpe());
        if boot.arg("stay_legacy").is_some() {
            // Never switch: the host sees a guest that only knows the legacy bitmap.
            let _ = wait::<()>(timeout, "nothing (staying in the legacy mode)", || None);
            return 2;
        }
        legacy_apic = Some(apic);
    }
    // To the modern interface; detected as the spec says: selector 0, command 0, then
    // command data 2 reads 0.
    outl(SELECTOR, 0);
    outb(COMMAND, 0);
    if inl(SELECTOR) != 0 {
        println!("cpuhp: no modern interface");
        return 1;
    }
    println!("cpuhp: modern");
    // A CPU plugged in legacy mode is present in the modern interface, with no event:
    // find its selector by its APIC id (command 3).
    let mut pending = None;
    if let Some(apic) = legacy_apic {
        outb(COMMAND, 3);
        for i in 1..256u32 {
            outl(SELECTOR, i);
            if inb(FLAGS) & ENABLED != 0 && inl(DATA) == apic {
                println!("cpuhp: found cpu={i} apic={apic}");
                pending = Some((i, apic));
                break;
            }
        }
        if pending.is_none() {
            println!("cpuhp: APIC id {apic} not in the modern interface");
            return 1;
        }
    }
    for _ in 0..cycles {
        let (cpu, apic) = match pending.take() {
            Some(p) => p,
            None => {
                let Some(cpu) = wait(timeout, "an insert event", || next_with(INSERT)) else {
                    return 2;
                };
                outb(COMMAND, 3);
                let apic = inl(DATA);
                println!("cpuhp: insert cpu={cpu} apic={apic} gpe={}", take_gpe());
                outb(FLAGS, INSERT);
                (cpu, apic)
            }
        };
        CHECKED_IN.store(0, Ordering::Release);
        guestlib::smp::start_aps(&CpuList::of_ids(&[bsp, apic]), ap_main, StartMode::PerCpu);
        if wait(timeout, "the new CPU to check in", || {
            (CHECKED_IN.load(Ordering::Acquire) == apic + 1).then_some(())
        })
        .is_none()
        {
            return 2;
        }
        // _OST: device check (1) handled, success (0).
        outl(SELECTOR, cpu);
        outb(COMMAND, 1);
        outl(DATA, 1);
        outb(COMMAND, 2);
        outl(DATA, 0);
        println!("cpuhp: online cpu={cpu}");
        let Some(gone) = wait(timeout, "a remove event", || next_with(REMOVE)) else {
            return 2;
        };
        println!("cpuhp: remove cpu={gone} gpe={}", take_gpe());
        outb(FLAGS, REMOVE);
        outb(FLAGS, EJECT);
        println!(
            "cpuhp: ejected cpu={gone} enabled={}",
            inb(FLAGS) & ENABLED
        );
    }
    println!("cpuhp: done cycles={cycles}");
    0
}
