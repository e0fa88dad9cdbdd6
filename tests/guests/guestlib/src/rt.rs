//! The ring-3 runtime: where the BSP and the APs arrive after `iretq`, the guest's `main`
//! and `ap_main` hooks, exit through isa-debug-exit, and the panic handler.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::bootinfo::BootInfo;

extern "Rust" {
    /// Defined by the guest with [`crate::entry!`].
    fn guestlib_main(boot: &BootInfo) -> u32;
}

/// The function APs run once they are in ring 3 (set by [`crate::smp::start_aps`]).
static AP_MAIN: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn set_ap_main(f: fn(usize, u32)) {
    AP_MAIN.store(f as usize, Ordering::Release);
}

static RING3_TSC: AtomicU64 = AtomicU64::new(0);

/// TSC ticks the BSP spent from the 32-bit entry to its first ring-3 instruction (the
/// ring-0 set-up, emulated on PVM hosts).
pub fn entry_to_ring3_ticks() -> u64 {
    RING3_TSC
        .load(Ordering::Relaxed)
        .wrapping_sub(crate::boot::entry_tsc())
}

/// First ring-3 code on the BSP.
#[no_mangle]
extern "C" fn guestlib_bsp_start() -> ! {
    RING3_TSC.store(crate::cpu::rdtsc(), Ordering::Relaxed);
    crate::serial::init();
    let boot = BootInfo::from_loader();
    // SAFETY: `guestlib_main` is defined by the guest crate through `entry!`, with exactly
    // this signature.
    let code = unsafe { guestlib_main(&boot) };
    crate::exit(code)
}

/// First ring-3 code on an AP; `slot` is the stack/TSS slot it took.
#[no_mangle]
extern "C" fn guestlib_ap_start(slot: u64) -> ! {
    let apic_id = crate::cpu::apic_id();
    let index = crate::smp::register_ap(apic_id, slot as usize);
    let f = AP_MAIN.load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: AP_MAIN only ever holds a `fn(usize, u32)` stored by `set_ap_main`.
        let f: fn(usize, u32) = unsafe { core::mem::transmute::<usize, fn(usize, u32)>(f) };
        f(index, apic_id);
    }
    crate::sys::halt_forever()
}

// Keep the entry points referenced only from assembly alive through LTO.
#[used]
static KEEP: [extern "C" fn() -> !; 1] = [guestlib_bsp_start];
#[used]
static KEEP_AP: [extern "C" fn(u64) -> !; 1] = [guestlib_ap_start];

/// Leaves the VM through isa-debug-exit (port 0xf4): QEMU exits with `(code << 1) | 1`.
/// If nothing listens there, says so on COM1 and halts this CPU.
pub fn exit(code: u32) -> ! {
    crate::io::outl(crate::ISA_DEBUG_EXIT_PORT, code);
    crate::println!("guest: isa-debug-exit at 0xf4 did not stop the VM (code {code})");
    crate::sys::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::serial::force_unlock();
    crate::println!("guest panic: {info}");
    exit(crate::EXIT_PANIC)
}
