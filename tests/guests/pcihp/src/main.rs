//! pcihp: a guest OSPM's side of ACPI PCI hotplug on QEMU's `pc`, done by polling the
//! PIIX4 hotplug registers from ring 3 instead of taking the GPE: for each of `cycles=N`
//! (default 1) devices, it waits for a slot bit in PCIU (0xAE00, cleared by the read),
//! checks GPE0 status bit 1 (0xAFE0) was raised for it and clears it, reads the new
//! function's vendor/device id from configuration space, waits for the slot's bit in PCID
//! (0xAE04: the host asks for the eject), writes it to B0EJ (0xAE08), and waits until the
//! function is gone from configuration space.
//!
//! Command line: `cycles=N`, `timeout=S` (seconds per wait, default 60).
//! Output: `pcihp: ready rmv=<hex>` (PCRM at 0xAE0C), then per device
//! `pcihp: up slot=<n> vendor=<hex4> device=<hex4> gpe=<0|1>`, `pcihp: down slot=<n>`,
//! `pcihp: ejected slot=<n>`, `pcihp: gone slot=<n>`; `pcihp: done cycles=<N>`.
//! Exit: 0, or 2 when a wait timed out (`pcihp: timeout waiting for <what>`).

#![no_std]
#![no_main]

use guestlib::io::{inl, inw, outl, outw};
use guestlib::println;
use guestlib::time::{delay_us, Deadline};

guestlib::entry!(main);

const PCIU: u16 = 0xae00;
const PCID: u16 = 0xae04;
const B0EJ: u16 = 0xae08;
const PCRM: u16 = 0xae0c;
const GPE0_STS: u16 = 0xafe0;

/// Poll `f` every 200 µs until it gives Some, or the timeout.
fn wait<T>(timeout_s: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let d = Deadline::after_ms(timeout_s * 1000);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if d.expired() {
            println!("pcihp: timeout waiting for {what}");
            return None;
        }
        delay_us(200);
    }
}

fn main(boot: &guestlib::BootInfo) -> u32 {
    let cycles = boot.arg_u64("cycles").unwrap_or(1);
    let timeout = boot.arg_u64("timeout").unwrap_or(60);
    // Anything pending from before (none on a fresh machine) is not ours to report.
    let _ = inl(PCIU);
    println!("pcihp: ready rmv={:#x}", inl(PCRM));
    for _ in 0..cycles {
        let Some(up) = wait(timeout, "a device", || Some(inl(PCIU)).filter(|v| *v != 0)) else {
            return 2;
        };
        let slot = up.trailing_zeros() as u8;
        let gpe = (inw(GPE0_STS) >> 1) & 1;
        outw(GPE0_STS, 1 << 1);
        let id = guestlib::pci::read32(slot, 0, 0);
        println!(
            "pcihp: up slot={slot} vendor={:04x} device={:04x} gpe={gpe}",
            id & 0xffff,
            id >> 16
        );
        let bit = 1u32 << slot;
        if wait(timeout, "an eject request", || {
            (inl(PCID) & bit != 0).then_some(())
        })
        .is_none()
        {
            return 2;
        }
        outw(GPE0_STS, 1 << 1);
        println!("pcihp: down slot={slot}");
        outl(B0EJ, bit);
        println!("pcihp: ejected slot={slot}");
        let gone = || (guestlib::pci::read32(slot, 0, 0) == 0xffff_ffff).then_some(());
        if wait(timeout, "the device to go", gone).is_none() {
            return 2;
        }
        println!("pcihp: gone slot={slot}");
    }
    println!("pcihp: done cycles={cycles}");
    0
}
