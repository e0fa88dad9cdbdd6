//! guestlib: boot code and ring-3 helpers shared by troupe's freestanding test guests.
//!
//! One image boots three ways: as a PVH ELF (QEMU `-M microvm -kernel`, troupe's direct
//! boot), as multiboot 1 via the a.out-kludge header (QEMU `-M pc -kernel`, through
//! SeaBIOS), and any loader that enters `guestlib_entry32` in 32-bit protected mode with
//! either protocol's registers. Ring 0 (emulated, slow on nested hosts) only builds the
//! IDT, loads a TSS and enters ring 3 (`boot.rs`); everything else runs in ring 3 at native
//! speed with all of 0..4 GiB identity-mapped and user-accessible and every I/O port
//! allowed, so port I/O and MMIO (LAPIC, VGA) work directly. Ring 0 is reached on purpose
//! only through the `ud2` request gate (`sys.rs`).
//!
//! CPU exceptions print `guest exception <vector> at rip=<hex> err=<hex>` (and a detail
//! line) on COM1 and exit with [`EXIT_EXCEPTION_BASE`] + vector; a panic prints
//! `guest panic: <message>` and exits with [`EXIT_PANIC`].
//!
//! Guests report on COM1 and exit through isa-debug-exit (port 0xf4; QEMU exits with
//! status `(code << 1) | 1`). A guest crate provides `fn main(&BootInfo) -> u32` and
//! registers it with [`entry!`].

#![no_std]

pub mod acpi;
pub mod args;
pub mod boot;
pub mod bootinfo;
pub mod cpu;
pub mod i8042;
pub mod io;
pub mod lapic;
pub mod mem;
pub mod mptable;
pub mod pci;
pub mod phys;
pub mod rt;
pub mod serial;
pub mod smp;
pub mod sys;
pub mod time;

pub use bootinfo::{BootInfo, MemRegion, Protocol};
pub use rt::exit;

/// isa-debug-exit's port (QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const ISA_DEBUG_EXIT_PORT: u16 = 0xF4;
/// Exit code after a Rust panic (QEMU status 191).
pub const EXIT_PANIC: u32 = 0x5F;
/// Exit code after CPU exception `v` is `EXIT_EXCEPTION_BASE + v` (QEMU status 193 + 2v).
pub const EXIT_EXCEPTION_BASE: u32 = 0x60;

/// Registers the guest's `main`: `guestlib::entry!(main);` with
/// `fn main(boot: &guestlib::BootInfo) -> u32` (the isa-debug-exit code).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub fn guestlib_main(boot: &$crate::BootInfo) -> u32 {
            let f: fn(&$crate::BootInfo) -> u32 = $main;
            f(boot)
        }
    };
}

/// The linker script every guest is linked with (`.cargo/config.toml` names it). Included
/// here so that editing it rebuilds guestlib and relinks the guests.
pub const LINKER_SCRIPT: &str = include_str!("../link.ld");
