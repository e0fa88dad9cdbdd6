//! Interrupt lines into KVM's in-kernel irqchip.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use devices::IrqLine;
use kvm_ioctls::VmFd;

/// A GSI driven with `KVM_IRQ_LINE` (for GSI < 16 this drives both the PIC and IOAPIC
/// pins, as on a PC).
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
    level: AtomicBool,
}

/// IOAPIC pins whose raises are counted for `info irq`.
pub const COUNTED_PINS: usize = 24;

/// Interrupts raised (rising edges) per GSI by troupe's devices, for `info irq`. Lines
/// the kernel drives itself (the in-kernel PIT) are not seen here, as in QEMU.
pub static IRQ_COUNTS: [AtomicU64; COUNTED_PINS] = [const { AtomicU64::new(0) }; COUNTED_PINS];

impl KvmIrqLine {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Arc<Self> {
        Arc::new(Self {
            vm,
            gsi,
            level: AtomicBool::new(false),
        })
    }
}

/// `info irq` text, QEMU's format.
pub fn irq_stats_text() -> String {
    let mut s = String::from("IRQ statistics for kvm-ioapic:\n");
    for (i, c) in IRQ_COUNTS.iter().enumerate() {
        let n = c.load(Ordering::Relaxed);
        if n > 0 {
            s.push_str(&format!("{i:2}: {n}\n"));
        }
    }
    s
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        if high && !self.level.swap(true, Ordering::Relaxed) {
            if let Some(c) = IRQ_COUNTS.get(self.gsi as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        } else if !high {
            self.level.store(false, Ordering::Relaxed);
        }
        if let Err(e) = self.vm.set_irq_line(self.gsi, high) {
            tracing::warn!(gsi = self.gsi, "KVM_IRQ_LINE failed: {e}");
        }
    }
}
