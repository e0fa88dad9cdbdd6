//! memhp: a guest OSPM's side of ACPI memory hotplug on QEMU's `pc`, done by polling the
//! memory hotplug block (0x0A00) from ring 3 instead of taking the GPE.
//!
//! At start, each enabled slot (a DIMM from the command line: `-device pc-dimm`) is
//! reported and its memory checked as below. Then each of `cycles=N` (default 1) cycles: finds the DIMM slot (of `slots=N`, default 2)
//! with an insert event (selector at 0x0A00, status byte at 0x0A14), reads its address and
//! size (0x0A00..0x0A0F), clears the event, maps the range (identity, 2 MiB pages, in the
//! 4–8 GiB window: the boot page tables map only 0–4 GiB, and are writable from ring 3)
//! and writes then reads back a pattern in every 4 KiB page of it (so the memory is
//! real: an address KVM has no memory for reads back nothing that was written), reports
//! `_OST` (device check, success), waits for the slot's remove event, clears it and
//! ejects it (status bit 3), and checks its enabled bit is gone. GPE0 status bit 3
//! (0xAFE0) is read and cleared at each event.
//!
//! Command line: `cycles=N`, `slots=N`, `timeout=S` (seconds per wait, default 60).
//! Output: `memhp: ready`, `memhp: present slot=<n> addr=<hex> size=<hex>` and its
//! pattern line for each DIMM there at start, then per cycle `memhp: insert slot=<n> addr=<hex> size=<hex>
//! gpe=<0|1>`, `memhp: pattern ok pages=<n>` (or `memhp: pattern bad at <hex>`),
//! `memhp: online slot=<n>`, `memhp: remove slot=<n> gpe=<0|1>`, `memhp: ejected
//! slot=<n> enabled=<0|1>`; `memhp: done cycles=<N>`.
//! Exit: 0; 1 when the pattern did not read back or the DIMM is outside 4–8 GiB; 2 when a
//! wait timed out (`memhp: timeout waiting for <what>`).

#![no_std]
#![no_main]

use guestlib::io::{inb, inl, inw, outb, outl, outw};
use guestlib::println;
use guestlib::time::{delay_us, Deadline};

guestlib::entry!(main);

const SELECTOR: u16 = 0x0a00;
const ADDR_LO: u16 = 0x0a00;
const ADDR_HI: u16 = 0x0a04;
const SIZE_LO: u16 = 0x0a08;
const SIZE_HI: u16 = 0x0a0c;
const OST_EVENT: u16 = 0x0a04;
const OST_STATUS: u16 = 0x0a08;
const STATUS: u16 = 0x0a14;
const GPE0_STS: u16 = 0xafe0;

const ENABLED: u8 = 1;
const INSERT: u8 = 1 << 1;
const REMOVE: u8 = 1 << 2;
const EJECT: u8 = 1 << 3;

const GIB: u64 = 1 << 30;
const PAGE_2M: u64 = 2 << 20;

extern "C" {
    /// The boot page tables' PML4 (guestlib's `boot.rs`): entry 0 points at the PDPT.
    static guestlib_pml4: [u64; 512];
}

/// Page directories for 4..8 GiB, one per GiB (filled when a DIMM needs them).
#[repr(C, align(4096))]
struct HighPds([[u64; 512]; 4]);

static mut HIGH_PDS: HighPds = HighPds([[0; 512]; 4]);

/// Poll `f` every 200 µs until it gives Some, or the timeout.
fn wait<T>(timeout_s: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let d = Deadline::after_ms(timeout_s * 1000);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if d.expired() {
            println!("memhp: timeout waiting for {what}");
            return None;
        }
        delay_us(200);
    }
}

/// GPE0 status bit 3, cleared.
fn take_gpe() -> u16 {
    let g = (inw(GPE0_STS) >> 3) & 1;
    outw(GPE0_STS, 1 << 3);
    g
}

/// The first slot whose status has `flag`, if any.
fn slot_with(slots: u32, flag: u8) -> Option<u32> {
    (0..slots).find(|&s| {
        outl(SELECTOR, s);
        inb(STATUS) & flag != 0
    })
}

fn status(slot: u32) -> u8 {
    outl(SELECTOR, slot);
    inb(STATUS)
}

/// Identity-map [addr, addr+size) with 2 MiB user pages; false if it is outside 4–8 GiB.
/// The PDPT entries for 4..8 GiB were not present, so no TLB entry needs flushing.
fn map_high(addr: u64, size: u64) -> bool {
    if addr < 4 * GIB || addr + size > 8 * GIB {
        return false;
    }
    // SAFETY: the PML4 is identity-mapped and readable; entry 0 holds the PDPT's address.
    let pdpt = unsafe { core::ptr::read_volatile(&raw const guestlib_pml4[0]) } & !0xfff;
    // SAFETY: only this (single-threaded) guest touches HIGH_PDS; its address is its
    // physical address (identity map).
    let pds = unsafe { &mut *(&raw mut HIGH_PDS) };
    let mut at = addr & !(PAGE_2M - 1);
    while at < addr + size {
        let g = (at / GIB) as usize;
        let pd = &mut pds.0[g - 4];
        pd[((at % GIB) / PAGE_2M) as usize] = at | 0x87;
        let entry = (pd.as_ptr() as u64) | 0x7;
        // SAFETY: the PDPT is identity-mapped and writable from ring 3 (guestlib maps its
        // own tables with the user bit); entry g was not present or already this PD.
        unsafe { core::ptr::write_volatile((pdpt + 8 * g as u64) as *mut u64, entry) };
        at += PAGE_2M;
    }
    true
}

/// Write a pattern word in every 4 KiB page, then read them all back: the first address
/// that does not hold its word, or the page count.
fn pattern(addr: u64, size: u64) -> Result<u64, u64> {
    let word = |a: u64| a ^ 0x6d65_6d68_705f_7061;
    let mut a = addr;
    while a < addr + size {
        // SAFETY: mapped by `map_high`, RAM of the plugged DIMM.
        unsafe { core::ptr::write_volatile(a as *mut u64, word(a)) };
        a += 4096;
    }
    let last = addr + size - 8;
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(last as *mut u64, word(last)) };
    let mut a = addr;
    while a < addr + size {
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(a as *const u64) } != word(a) {
            return Err(a);
        }
        a += 4096;
    }
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(last as *const u64) } != word(last) {
        return Err(last);
    }
    Ok(size / 4096)
}

/// The address and size of the DIMM in `slot`.
fn range(slot: u32) -> (u64, u64) {
    outl(SELECTOR, slot);
    let addr = u64::from(inl(ADDR_LO)) | (u64::from(inl(ADDR_HI)) << 32);
    let size = u64::from(inl(SIZE_LO)) | (u64::from(inl(SIZE_HI)) << 32);
    (addr, size)
}

/// Map the DIMM and check its pages hold what is written, reporting the result.
fn check(addr: u64, size: u64) -> bool {
    if !map_high(addr, size) {
        println!("memhp: DIMM outside 4-8 GiB");
        return false;
    }
    match pattern(addr, size) {
        Ok(pages) => {
            println!("memhp: pattern ok pages={pages}");
            true
        }
        Err(at) => {
            println!("memhp: pattern bad at {at:#x}");
            false
        }
    }
}

fn main(boot: &guestlib::BootInfo) -> u32 {
    let cycles = boot.arg_u64("cycles").unwrap_or(1);
    let slots = boot.arg_u64("slots").unwrap_or(2) as u32;
    let timeout = boot.arg_u64("timeout").unwrap_or(60);
    guestlib::time::tsc_hz();
    println!("memhp: ready");
    for slot in (0..slots).filter(|&s| status(s) & ENABLED != 0) {
        let (addr, size) = range(slot);
        println!("memhp: present slot={slot} addr={addr:#x} size={size:#x}");
        if !check(addr, size) {
            return 1;
        }
    }
    for _ in 0..cycles {
        let Some(slot) = wait(timeout, "an insert event", || slot_with(slots, INSERT)) else {
            return 2;
        };
        let (addr, size) = range(slot);
        println!(
            "memhp: insert slot={slot} addr={addr:#x} size={size:#x} gpe={}",
            take_gpe()
        );
        outl(SELECTOR, slot);
        outb(STATUS, INSERT);
        if !check(addr, size) {
            return 1;
        }
        // _OST: device check (1) handled, success (0).
        outl(SELECTOR, slot);
        outl(OST_EVENT, 1);
        outl(OST_STATUS, 0);
        println!("memhp: online slot={slot}");
        if wait(timeout, "a remove event", || {
            (status(slot) & REMOVE != 0).then_some(())
        })
        .is_none()
        {
            return 2;
        }
        println!("memhp: remove slot={slot} gpe={}", take_gpe());
        outl(SELECTOR, slot);
        outb(STATUS, REMOVE);
        outb(STATUS, EJECT);
        println!(
            "memhp: ejected slot={slot} enabled={}",
            status(slot) & ENABLED
        );
    }
    println!("memhp: done cycles={cycles}");
    0
}
