//! Time from the TSC: its frequency (from CPUID leaves, kvmclock, or calibrated against
//! PIT channel 0), deadlines and busy-wait delays. Calibrate on the BSP before starting
//! APs ([`crate::smp::start_aps`] does).

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::cpu::{cpuid, rdtsc};
use crate::io::{inb, outb};

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// Hypervisor timing leaf 0x40000010 (EAX = TSC kHz).
    HypervisorLeaf,
    /// CPUID 0x15 (crystal clock × ratio).
    Cpuid15,
    /// kvmclock's pvclock scale (`tsc_to_system_mul`, `tsc_shift`).
    KvmClock,
    /// CPUID 0x16 base frequency.
    Cpuid16,
    /// Measured against the i8254 PIT (1.193182 MHz).
    Pit,
    /// Nothing worked; a guess of 2 GHz.
    Guess,
}

impl TscSource {
    pub fn name(self) -> &'static str {
        match self {
            TscSource::HypervisorLeaf => "cpuid-40000010",
            TscSource::Cpuid15 => "cpuid-15",
            TscSource::KvmClock => "kvmclock",
            TscSource::Cpuid16 => "cpuid-16",
            TscSource::Pit => "pit",
            TscSource::Guess => "guess",
        }
    }

    fn from_u8(v: u8) -> TscSource {
        match v {
            1 => TscSource::HypervisorLeaf,
            2 => TscSource::Cpuid15,
            3 => TscSource::KvmClock,
            4 => TscSource::Cpuid16,
            5 => TscSource::Pit,
            _ => TscSource::Guess,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            TscSource::HypervisorLeaf => 1,
            TscSource::Cpuid15 => 2,
            TscSource::KvmClock => 3,
            TscSource::Cpuid16 => 4,
            TscSource::Pit => 5,
            TscSource::Guess => 6,
        }
    }
}

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_SOURCE: AtomicU8 = AtomicU8::new(0);
static CALIBRATING: AtomicBool = AtomicBool::new(false);

/// TSC ticks per second (determined on first use; later callers wait for the first).
pub fn tsc_hz() -> u64 {
    let hz = TSC_HZ.load(Ordering::Acquire);
    if hz != 0 {
        return hz;
    }
    if CALIBRATING.swap(true, Ordering::AcqRel) {
        loop {
            let hz = TSC_HZ.load(Ordering::Acquire);
            if hz != 0 {
                return hz;
            }
            core::hint::spin_loop();
        }
    }
    let (hz, src) = calibrate();
    TSC_SOURCE.store(src.to_u8(), Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Release);
    hz
}

/// How [`tsc_hz`] was determined.
pub fn tsc_source() -> TscSource {
    tsc_hz();
    TscSource::from_u8(TSC_SOURCE.load(Ordering::Relaxed))
}

/// Determines the TSC frequency, trying the cheap exact sources first.
pub fn calibrate() -> (u64, TscSource) {
    if let Some(hz) = from_hypervisor_leaf() {
        return (hz, TscSource::HypervisorLeaf);
    }
    if let Some(hz) = from_cpuid15() {
        return (hz, TscSource::Cpuid15);
    }
    if let Some(hz) = from_kvmclock() {
        return (hz, TscSource::KvmClock);
    }
    if let Some(hz) = from_cpuid16() {
        return (hz, TscSource::Cpuid16);
    }
    if let Some(hz) = from_pit(25) {
        return (hz, TscSource::Pit);
    }
    (2_000_000_000, TscSource::Guess)
}

/// The hypervisor's signature (CPUID 0x40000000 EBX ECX EDX) and max leaf, if any.
pub fn hypervisor() -> Option<([u8; 12], u32)> {
    if !crate::cpu::has_hypervisor() {
        return None;
    }
    let r = cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&r.edx.to_le_bytes());
    Some((sig, r.eax))
}

fn from_hypervisor_leaf() -> Option<u64> {
    let (_, max) = hypervisor()?;
    if max < 0x4000_0010 {
        return None;
    }
    let khz = cpuid(0x4000_0010, 0).eax as u64;
    (khz != 0).then_some(khz * 1000)
}

fn from_cpuid15() -> Option<u64> {
    if crate::cpu::max_basic_leaf() < 0x15 {
        return None;
    }
    let r = cpuid(0x15, 0);
    if r.eax == 0 || r.ebx == 0 || r.ecx == 0 {
        return None;
    }
    Some(r.ecx as u64 * r.ebx as u64 / r.eax as u64)
}

fn from_cpuid16() -> Option<u64> {
    if crate::cpu::max_basic_leaf() < 0x16 {
        return None;
    }
    let mhz = (cpuid(0x16, 0).eax & 0xFFFF) as u64;
    (mhz != 0).then_some(mhz * 1_000_000)
}

/// kvmclock (KVM_FEATURE_CLOCKSOURCE2): point MSR_KVM_SYSTEM_TIME_NEW at a pvclock
/// structure, read the scale, switch it off again.
fn from_kvmclock() -> Option<u64> {
    const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4B56_4D01;
    #[repr(C, align(64))]
    struct Pvclock([u32; 16]);
    static mut PVCLOCK: Pvclock = Pvclock([0; 16]);

    let (sig, max) = hypervisor()?;
    if &sig != b"KVMKVMKVM\0\0\0" || max < 0x4000_0001 {
        return None;
    }
    if cpuid(0x4000_0001, 0).eax & (1 << 3) == 0 {
        return None;
    }
    let addr = core::ptr::addr_of_mut!(PVCLOCK) as u64;
    crate::sys::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, addr | 1);
    let mut result = None;
    for _ in 0..1000 {
        let version = crate::phys::read_u32(addr);
        let mul = crate::phys::read_u32(addr + 24);
        let shift = crate::phys::read_u8(addr + 28) as i8;
        if version != 0 && version.is_multiple_of(2) && mul != 0 {
            // ns = ((ticks << shift) * mul) >> 32, so hz = 1e9 * 2^32 / (mul * 2^shift).
            let num: u128 = 1_000_000_000u128 << 32;
            let hz = if shift >= 0 {
                num / ((mul as u128) << shift)
            } else {
                (num << (-shift as u32)) / mul as u128
            };
            result = Some(hz as u64);
            break;
        }
        core::hint::spin_loop();
    }
    crate::sys::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);
    result
}

const PIT_HZ: u64 = 1_193_182;

fn pit_count() -> u16 {
    outb(0x43, 0x00); // latch channel 0
    let lo = inb(0x40);
    let hi = inb(0x40);
    u16::from_le_bytes([lo, hi])
}

/// Counts PIT channel 0 ticks (mode 0, reload 0xFFFF) for `ms` milliseconds against the
/// TSC. Reprograms channel 0 (its IRQ stays unseen: interrupts are off). None when the
/// count does not move over 200 consecutive reads (each read is three port accesses, tens
/// of microseconds, so a real PIT always moves): no PIT.
pub fn from_pit(ms: u64) -> Option<u64> {
    outb(0x43, 0x30); // channel 0, lobyte/hibyte, mode 0, binary
    outb(0x40, 0xFF);
    outb(0x40, 0xFF);
    let target = PIT_HZ * ms / 1000;
    let mut last = pit_count();
    let t0 = rdtsc();
    let mut ticks = 0u64;
    let mut stuck = 0u32;
    while ticks < target {
        let c = pit_count();
        let d = last.wrapping_sub(c) as u64;
        if d == 0 {
            stuck += 1;
            if stuck > 200 {
                return None;
            }
        } else {
            stuck = 0;
        }
        ticks += d;
        last = c;
    }
    let t1 = rdtsc();
    Some(((t1 - t0) as u128 * PIT_HZ as u128 / ticks as u128) as u64)
}

/// Converts TSC ticks to nanoseconds.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000_000 / tsc_hz() as u128) as u64
}

/// Nanoseconds since an arbitrary origin (the TSC's).
pub fn now_ns() -> u64 {
    ticks_to_ns(rdtsc())
}

/// A point in TSC time.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Deadline {
        Deadline::after_us(ms.saturating_mul(1000))
    }

    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Deadline {
        let ticks = (us as u128 * tsc_hz() as u128 / 1_000_000) as u64;
        Deadline(rdtsc().saturating_add(ticks))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        rdtsc() >= self.0
    }
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    let d = Deadline::after_us(us);
    while !d.expired() {
        core::hint::spin_loop();
    }
}
