//! Interrupt lines into KVM's in-kernel irqchip: [`KvmIrqLine`] (one `KVM_IRQ_LINE` ioctl
//! per change, for the ISA devices), and [`LevelIrqfds`], the level-triggered lines PCI
//! INTx is routed to, driven through irqfds with a resample eventfd.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use devices::IrqLine;
use kvm_ioctls::VmFd;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

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

/// GSIs a PCI INTx can be routed to (the ISA IRQs a PIIX3 PIRQ register can name).
const ISA_GSIS: usize = 16;

/// One level-triggered GSI behind an irqfd registered with `KVM_IRQFD_FLAG_RESAMPLE`.
struct LevelIrqfd {
    trigger: EventFd,
    resample: EventFd,
    /// The level the devices want (the OR of their lines, kept by the caller).
    level: AtomicBool,
}

/// Level-triggered GSIs driven through irqfds (Linux `Documentation/virt/kvm/api.rst`,
/// `KVM_IRQFD` with `KVM_IRQFD_FLAG_RESAMPLE`), for PCI INTx:
///
/// - raising a line writes its trigger eventfd: KVM asserts the GSI (for its own IRQ
///   source, ORed with `KVM_IRQ_LINE`'s, so an ISA device on the same pin still works);
/// - lowering it only records the level: KVM keeps the GSI asserted until the guest
///   acknowledges the interrupt (IOAPIC EOI, or the PIC's EOI or poll), then deasserts it
///   and signals the resample eventfd;
/// - the resample thread (`troupe-irq-resample`) then asserts the GSI again if the level
///   is still high (the device's interrupt condition was not cleared), as a level-triggered
///   line would have stayed.
///
/// So neither edge costs an ioctl on the thread that changes the level. A GSI is
/// registered with KVM the first time it is raised; one KVM refuses is driven with
/// `KVM_IRQ_LINE` instead (logged once).
pub struct LevelIrqfds {
    vm: Arc<VmFd>,
    epoll: Epoll,
    lines: [OnceLock<Option<LevelIrqfd>>; ISA_GSIS],
    /// Serializes [`Self::reset`] against registration.
    registering: Mutex<()>,
}

impl LevelIrqfds {
    /// Start the resample thread, restartable: a resample lost to a panic is made good by
    /// asserting again every line that is high when the body starts over.
    pub fn new(registry: &crate::runtime::Registry, vm: Arc<VmFd>) -> std::io::Result<Arc<Self>> {
        let me = Arc::new(Self {
            vm,
            epoll: Epoll::new()?,
            lines: [const { OnceLock::new() }; ISA_GSIS],
            registering: Mutex::new(()),
        });
        let m = me.clone();
        crate::runtime::ThreadSpec::new("irq-resample", "irq", crate::runtime::Restart::Always)
            .spawn(registry, move || m.resample_loop())?;
        Ok(me)
    }

    /// The irqfd of `gsi`, registered now if this is its first use; None if KVM refused it
    /// (or `gsi` is not an ISA IRQ).
    fn line(&self, gsi: u32) -> Option<&LevelIrqfd> {
        let slot = self.lines.get(gsi as usize)?;
        slot.get_or_init(|| {
            let _g = crate::bus::lock(&self.registering);
            let made = (|| -> std::io::Result<LevelIrqfd> {
                let trigger = EventFd::new(libc::EFD_NONBLOCK)?;
                let resample = EventFd::new(libc::EFD_NONBLOCK)?;
                self.vm
                    .register_irqfd_with_resample(&trigger, &resample, gsi)?;
                self.epoll.ctl(
                    ControlOperation::Add,
                    resample.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, u64::from(gsi)),
                )?;
                Ok(LevelIrqfd {
                    trigger,
                    resample,
                    level: AtomicBool::new(false),
                })
            })();
            match made {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(gsi, "resample irqfd refused ({e}): using KVM_IRQ_LINE");
                    None
                }
            }
        })
        .as_ref()
    }

    /// Set the level of `gsi` (the OR of the devices sharing it).
    pub fn set_level(&self, gsi: u32, high: bool) {
        match self.line(gsi) {
            Some(l) => {
                l.level.store(high, Ordering::SeqCst);
                if high {
                    let _ = l.trigger.write(1);
                }
            }
            None => {
                if let Err(e) = self.vm.set_irq_line(gsi, high) {
                    tracing::warn!(gsi, "KVM_IRQ_LINE failed: {e}");
                }
            }
        }
    }

    /// Machine reset: KVM deasserts every registered GSI (a line the guest never
    /// acknowledged would otherwise stay asserted into the next boot) and the lines that
    /// are high are asserted again. Deassigning an irqfd deasserts its GSI and returns once
    /// KVM has finished with it; it is then assigned again with the same eventfds.
    pub fn reset(&self) {
        let _g = crate::bus::lock(&self.registering);
        for (gsi, slot) in self.lines.iter().enumerate() {
            let Some(Some(l)) = slot.get() else { continue };
            let gsi = gsi as u32;
            if let Err(e) = self.vm.unregister_irqfd(&l.trigger, gsi) {
                tracing::warn!(gsi, "deassigning the INTx irqfd: {e}");
                continue;
            }
            if let Err(e) = self
                .vm
                .register_irqfd_with_resample(&l.trigger, &l.resample, gsi)
            {
                tracing::error!(gsi, "INTx irqfd lost at reset: {e}");
                continue;
            }
            if l.level.load(Ordering::SeqCst) {
                let _ = l.trigger.write(1);
            }
        }
    }

    /// The guest acknowledged `l`'s interrupt and KVM deasserted it: assert it again if
    /// the devices still hold it high.
    fn resampled(l: &LevelIrqfd) {
        let _ = l.resample.read();
        if l.level.load(Ordering::SeqCst) {
            let _ = l.trigger.write(1);
        }
    }

    fn resample_loop(&self) {
        for l in self
            .lines
            .iter()
            .filter_map(|s| s.get().and_then(Option::as_ref))
        {
            Self::resampled(l);
        }
        let mut events = vec![EpollEvent::default(); ISA_GSIS];
        loop {
            match self.epoll.wait(-1, &mut events) {
                Ok(n) => {
                    crate::runtime::fault_point();
                    for ev in &events[..n] {
                        let l = self.lines.get(ev.data() as usize).and_then(|s| s.get());
                        if let Some(Some(l)) = l {
                            Self::resampled(l);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!("irq resample: epoll: {e}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_irqchip, KVM_IRQCHIP_IOAPIC};
    use std::time::{Duration, Instant};

    fn ioapic_irr(vm: &VmFd) -> u32 {
        let mut chip = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).expect("KVM_GET_IRQCHIP");
        // SAFETY: chip_id IOAPIC selects the `ioapic` member of the union.
        unsafe { chip.chip.ioapic.irr }
    }

    fn wait_irr(vm: &VmFd, bit: u32, set: bool) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if (ioapic_irr(vm) & (1 << bit) != 0) == set {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_intx_raise_is_an_irqfd_write_and_a_machine_reset_deasserts_it() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm is required");
        let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        let registry = crate::runtime::Registry::new();
        let lines = LevelIrqfds::new(&registry, vm.clone()).expect("resample thread");
        assert_eq!(ioapic_irr(&vm) & (1 << 10), 0);
        lines.set_level(10, true);
        assert!(lines.line(10).is_some(), "KVM took the resample irqfd");
        assert!(wait_irr(&vm, 10, true), "GSI 10 asserted through the irqfd");
        // Lowered without an acknowledgement: KVM keeps it until the guest's EOI (the
        // guest test in tests/ checks that path); a machine reset drops it.
        lines.set_level(10, false);
        lines.reset();
        assert!(wait_irr(&vm, 10, false), "GSI 10 deasserted by the reset");
        // Still registered: a raise after the reset asserts it again.
        lines.set_level(10, true);
        assert!(wait_irr(&vm, 10, true), "GSI 10 asserted after the reset");
        // Not an ISA IRQ: KVM_IRQ_LINE.
        lines.set_level(20, true);
        assert!(wait_irr(&vm, 20, true));
        lines.set_level(20, false);
        assert!(wait_irr(&vm, 20, false));
    }
}
