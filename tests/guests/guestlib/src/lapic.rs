//! The local APIC from ring 3: xAPIC registers by MMIO (identity-mapped, user bit set), or
//! x2APIC MSRs through the ring-0 gate when firmware switched x2APIC on. Used to send
//! INIT and STARTUP IPIs (Intel SDM vol. 3 §11.6, §9.4.4).

use crate::phys::{mmio_read32, mmio_write32};
use crate::sys::{rdmsr, wrmsr};

const IA32_APIC_BASE: u32 = 0x1B;
pub const REG_ID: u32 = 0x20;
pub const REG_VERSION: u32 = 0x30;
pub const REG_SVR: u32 = 0xF0;
pub const REG_ICR_LOW: u32 = 0x300;
pub const REG_ICR_HIGH: u32 = 0x310;

const ICR_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0x0000_4500; // INIT, level assert
const ICR_STARTUP: u32 = 0x0000_4600; // STARTUP, level assert
const ICR_ALL_BUT_SELF: u32 = 0x000C_0000;

/// This CPU's local APIC.
pub struct Lapic {
    base: u64,
    x2apic: bool,
}

impl Lapic {
    /// Reads IA32_APIC_BASE (one ring-0 excursion) for the base and the mode.
    pub fn new() -> Lapic {
        let msr = rdmsr(IA32_APIC_BASE);
        let base = msr & 0xF_FFFF_F000;
        Lapic {
            base: if base == 0 { 0xFEE0_0000 } else { base },
            x2apic: msr & (1 << 10) != 0,
        }
    }

    /// The xAPIC MMIO base.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Whether x2APIC mode is on.
    pub fn is_x2apic(&self) -> bool {
        self.x2apic
    }

    /// Reads register `reg` (xAPIC offset).
    pub fn read(&self, reg: u32) -> u32 {
        if self.x2apic {
            rdmsr(0x800 + (reg >> 4)) as u32
        } else {
            mmio_read32(self.base + reg as u64)
        }
    }

    /// Writes register `reg` (xAPIC offset).
    pub fn write(&self, reg: u32, v: u32) {
        if self.x2apic {
            wrmsr(0x800 + (reg >> 4), v as u64)
        } else {
            mmio_write32(self.base + reg as u64, v)
        }
    }

    /// This CPU's APIC id.
    pub fn id(&self) -> u32 {
        if self.x2apic {
            self.read(REG_ID)
        } else {
            self.read(REG_ID) >> 24
        }
    }

    /// Software-enables the APIC (SVR bit 8) with spurious vector 0xFF.
    pub fn enable(&self) {
        let svr = self.read(REG_SVR);
        self.write(REG_SVR, svr | 0x1FF);
    }

    fn wait_idle(&self) {
        if self.x2apic {
            return;
        }
        for _ in 0..1_000_000 {
            if self.read(REG_ICR_LOW) & ICR_PENDING == 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Sends an IPI: `low` is ICR bits 0..31, `dest` the destination APIC id.
    pub fn send_ipi(&self, dest: u32, low: u32) {
        self.wait_idle();
        if self.x2apic {
            wrmsr(0x830, ((dest as u64) << 32) | low as u64);
        } else {
            self.write(REG_ICR_HIGH, dest << 24);
            self.write(REG_ICR_LOW, low);
        }
        self.wait_idle();
    }

    /// INIT to one CPU.
    pub fn send_init(&self, dest: u32) {
        self.send_ipi(dest, ICR_INIT);
    }

    /// STARTUP to one CPU; it starts in real mode at `vector << 12`.
    pub fn send_sipi(&self, dest: u32, vector: u8) {
        self.send_ipi(dest, ICR_STARTUP | vector as u32);
    }

    /// INIT to every other CPU.
    pub fn broadcast_init(&self) {
        self.send_ipi(0, ICR_INIT | ICR_ALL_BUT_SELF);
    }

    /// STARTUP to every other CPU.
    pub fn broadcast_sipi(&self, vector: u8) {
        self.send_ipi(0, ICR_STARTUP | ICR_ALL_BUT_SELF | vector as u32);
    }
}

impl Default for Lapic {
    fn default() -> Self {
        Lapic::new()
    }
}
