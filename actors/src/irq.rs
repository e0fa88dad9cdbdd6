//! Interrupt lines into KVM's in-kernel irqchip.

use std::sync::Arc;

use devices::IrqLine;
use kvm_ioctls::VmFd;

/// A GSI driven with `KVM_IRQ_LINE` (for GSI < 16 this drives both the PIC and IOAPIC
/// pins, as on a PC).
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl KvmIrqLine {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Arc<Self> {
        Arc::new(Self { vm, gsi })
    }
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, high) {
            tracing::warn!(gsi = self.gsi, "KVM_IRQ_LINE failed: {e}");
        }
    }
}
