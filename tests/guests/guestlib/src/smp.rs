//! Starting the APs: copy the trampoline to 0x8000, prepare a TSS and stacks per slot,
//! then INIT-SIPI-SIPI to each APIC id from the CPU list (Intel SDM vol. 3 §9.4.4.1).
//! Each AP reaches ring 3 in [`crate::rt`], looks up its index by APIC id and runs the
//! function given to [`start_aps`].

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use crate::acpi::{CpuList, MAX_LISTED_CPUS};
use crate::boot::{MAX_CPUS, TRAMPOLINE_ADDR};
use crate::lapic::Lapic;
use crate::time::delay_us;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU32 = AtomicU32::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const NO: AtomicBool = AtomicBool::new(false);
static IDS: [AtomicU32; MAX_LISTED_CPUS] = [ZERO; MAX_LISTED_CPUS];
static NUM_IDS: AtomicUsize = AtomicUsize::new(0);
static ALIVE: [AtomicBool; MAX_LISTED_CPUS] = [NO; MAX_LISTED_CPUS];
static ALIVE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// How to wake the APs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// INIT, SIPI, SIPI to each listed APIC id.
    PerCpu,
    /// INIT, SIPI, SIPI to all-excluding-self.
    Broadcast,
}

/// Called on each AP in ring 3: records it as alive, returns its index in the list (or
/// `len + slot` for a CPU the list does not name).
pub(crate) fn register_ap(apic_id: u32, slot: usize) -> usize {
    let n = NUM_IDS.load(Ordering::Acquire);
    let index = (0..n)
        .find(|&i| IDS[i].load(Ordering::Relaxed) == apic_id)
        .unwrap_or(n + slot);
    if index < MAX_LISTED_CPUS && !ALIVE[index].swap(true, Ordering::AcqRel) {
        ALIVE_COUNT.fetch_add(1, Ordering::AcqRel);
    }
    index
}

/// APs that have reached ring 3 so far.
pub fn aps_alive() -> usize {
    ALIVE_COUNT.load(Ordering::Acquire)
}

/// Starts every CPU of `cpus` but the caller (at most `boot::MAX_CPUS` in all); each
/// runs `ap_main(index, apic_id)` in ring 3 and halts when it returns. Returns the number
/// of APs signalled. Calibrates the TSC first so APs never do.
pub fn start_aps(cpus: &CpuList, ap_main: fn(usize, u32), mode: StartMode) -> usize {
    crate::time::tsc_hz();
    let bsp = crate::cpu::apic_id();
    let n = cpus.len().min(MAX_LISTED_CPUS);
    for (i, &id) in cpus.ids().iter().enumerate().take(n) {
        IDS[i].store(id, Ordering::Relaxed);
    }
    NUM_IDS.store(n, Ordering::Release);
    crate::rt::set_ap_main(ap_main);

    let aps: usize = cpus
        .ids()
        .iter()
        .filter(|&&id| id != bsp)
        .count()
        .min(MAX_CPUS - 1);
    if aps == 0 {
        return 0;
    }
    crate::phys::copy_to(TRAMPOLINE_ADDR as u64, crate::boot::trampoline());
    crate::boot::prepare_ap_slots(MAX_CPUS);
    let lapic = Lapic::new();
    lapic.enable();
    let vector = (TRAMPOLINE_ADDR >> 12) as u8;
    let targets = || {
        cpus.ids()
            .iter()
            .copied()
            .filter(move |&id| id != bsp)
            .take(aps)
    };
    match mode {
        StartMode::Broadcast => {
            lapic.broadcast_init();
            delay_us(10_000);
            lapic.broadcast_sipi(vector);
            delay_us(200);
            lapic.broadcast_sipi(vector);
        }
        StartMode::PerCpu => {
            for id in targets() {
                lapic.send_init(id);
            }
            delay_us(10_000);
            for id in targets() {
                lapic.send_sipi(id, vector);
            }
            delay_us(200);
            for id in targets() {
                let alive = cpus
                    .index_of(id)
                    .is_some_and(|i| ALIVE[i].load(Ordering::Acquire));
                if !alive {
                    lapic.send_sipi(id, vector);
                }
            }
        }
    }
    aps
}
