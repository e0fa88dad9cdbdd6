//! Exit dispatch: one `KVM_RUN` exit in, one outcome out. A free function over the buses
//! so it can be tested with fake exits and no KVM.

use kvm_ioctls::VcpuExit;

use crate::bus::Bus;

/// What the vCPU loop should do after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// Handled; run again.
    Continue,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM could not go on (internal error): the caller reads `kvm_run.internal`.
    InternalError,
    /// VM entry failed with this hardware reason.
    FailEntry(u64),
    /// KVM_EXIT_SYSTEM_EVENT of this type (shutdown/reset/crash).
    SystemEvent(u32),
    /// An exit troupe does not expect on x86 (named for the report).
    Unexpected(String),
}

/// Per-vCPU exit counters.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub pio: std::sync::atomic::AtomicU64,
    pub mmio: std::sync::atomic::AtomicU64,
    pub unmapped: std::sync::atomic::AtomicU64,
    pub other: std::sync::atomic::AtomicU64,
}

/// The two address spaces a vCPU exit can target.
pub struct Buses<'a> {
    pub pio: &'a Bus,
    pub mmio: &'a Bus,
}

pub fn handle_exit(exit: VcpuExit<'_>, buses: &Buses<'_>, counters: &ExitCounters) -> ExitOutcome {
    use std::sync::atomic::Ordering::Relaxed;
    match exit {
        VcpuExit::IoIn(port, data) => {
            counters.pio.fetch_add(1, Relaxed);
            if !buses.pio.read(u64::from(port), data) {
                counters.unmapped.fetch_add(1, Relaxed);
            }
            ExitOutcome::Continue
        }
        VcpuExit::IoOut(port, data) => {
            counters.pio.fetch_add(1, Relaxed);
            if !buses.pio.write(u64::from(port), data) {
                counters.unmapped.fetch_add(1, Relaxed);
            }
            ExitOutcome::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            counters.mmio.fetch_add(1, Relaxed);
            if !buses.mmio.read(addr, data) {
                counters.unmapped.fetch_add(1, Relaxed);
            }
            ExitOutcome::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            counters.mmio.fetch_add(1, Relaxed);
            if !buses.mmio.write(addr, data) {
                counters.unmapped.fetch_add(1, Relaxed);
            }
            ExitOutcome::Continue
        }
        // With the in-kernel irqchip HLT is handled by KVM; a stray one just resumes.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr | VcpuExit::IoapicEoi(_) => {
            counters.other.fetch_add(1, Relaxed);
            ExitOutcome::Continue
        }
        VcpuExit::Shutdown => ExitOutcome::TripleFault,
        VcpuExit::InternalError => ExitOutcome::InternalError,
        VcpuExit::FailEntry(reason, _cpu) => ExitOutcome::FailEntry(reason),
        VcpuExit::SystemEvent(kind, _) => ExitOutcome::SystemEvent(kind),
        other => ExitOutcome::Unexpected(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusHandler;
    use std::sync::{Arc, Mutex};

    struct Port(Mutex<Vec<u8>>);
    impl BusHandler for Port {
        fn read(&self, _b: u64, _o: u64, d: &mut [u8]) {
            d.fill(0x5a);
        }
        fn write(&self, _b: u64, _o: u64, d: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(d);
        }
    }

    #[test]
    fn pio_exits_reach_the_device_and_unmapped_reads_float() {
        let pio = Bus::new("pio");
        let mmio = Bus::new("mmio");
        let dev = Arc::new(Port(Mutex::new(vec![])));
        pio.insert(0x3f8, 8, "serial", dev.clone()).unwrap();
        let buses = Buses {
            pio: &pio,
            mmio: &mmio,
        };
        let c = ExitCounters::default();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, b"h"), &buses, &c),
            ExitOutcome::Continue
        );
        let mut d = [0u8; 1];
        handle_exit(VcpuExit::IoIn(0x3fd, &mut d), &buses, &c);
        assert_eq!(d[0], 0x5a);
        let mut d = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xfee0_0000, &mut d), &buses, &c);
        assert_eq!(d, [0xff; 4]);
        assert_eq!(*dev.0.lock().unwrap(), b"h");
        assert_eq!(c.pio.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(c.unmapped.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &buses, &c),
            ExitOutcome::TripleFault
        );
    }
}
