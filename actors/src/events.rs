//! Things that happened, posted to the supervisor: device requests (reset, power-off,
//! debug-exit), vCPU faults, actor failures. Past-tense facts, not commands.
//!
//! Posting never blocks (vCPU threads post too); the queue is unbounded because events are
//! rare and the supervisor coalesces repeats.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use devices::{SystemEvent, SystemEvents};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// A device asked the machine to reset, power off or exit.
    System(SystemEvent),
    /// A vCPU hit a triple fault (KVM_EXIT_SHUTDOWN): a PC resets.
    TripleFault { cpu: u32 },
    /// A vCPU stopped on something KVM could not handle (internal error, failed entry).
    /// `report` is the QEMU-style text already printed on stderr.
    VcpuFault { cpu: u32, report: String },
    /// The guest ejected the device in PCI slot `slot` of bus 0 (ACPI PCI hotplug's
    /// B0EJ): it leaves the machine.
    PciEjected { slot: u8 },
    /// The guest ejected possible CPU `cpu` (ACPI CPU hotplug's eject flag): its vCPU
    /// leaves the machine.
    CpuEjected { cpu: u32 },
    /// The guest's `_OST` for possible CPU `cpu` (QEMU's `ACPI_DEVICE_OST`).
    CpuOst { cpu: u32, event: u32, status: u32 },
    /// The guest ejected the DIMM with id `id` (ACPI memory hotplug's eject flag): it
    /// leaves the machine.
    DimmEjected { id: String },
    /// The guest's `_OST` for DIMM slot `slot`, holding the DIMM `device` (its `id=`, if
    /// it has one) (QEMU's `ACPI_DEVICE_OST`).
    DimmOst {
        slot: u32,
        device: Option<String>,
        event: u32,
        status: u32,
    },
    /// A non-restartable actor (vCPU, block engine, virtio queue worker, e1000 thread)
    /// panicked with `reason`; the VM must stop.
    ActorFailed {
        id: String,
        kind: &'static str,
        reason: String,
    },
}

/// The posting end, cheap to clone into every device and vCPU.
#[derive(Clone, Debug)]
pub struct EventTx(mpsc::UnboundedSender<VmEvent>, Arc<AtomicBool>);

pub type EventRx = mpsc::UnboundedReceiver<VmEvent>;

pub fn event_channel() -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    (EventTx(tx, Arc::new(AtomicBool::new(false))), rx)
}

impl EventTx {
    pub fn post(&self, ev: VmEvent) {
        // A guest asking to end or reset the VM (debug-exit, power-off, 0xCF9, the
        // keyboard controller's pulse, ACPI's reset register) must not run another
        // instruction, as in QEMU (the requesting CPU stops at once): the vCPU that posted
        // this checks `ending()` before re-entering, and waits for the supervisor's pause
        // and reset. Left running, firmware goes on to its next way of rebooting (SeaBIOS
        // tries the keyboard controller, then 0xCF9, then an `int3` with an empty IDT,
        // which a nested KVM that emulates ring 0 fails on: an internal error, not a
        // reset).
        if matches!(
            ev,
            VmEvent::System(SystemEvent::DebugExit(_))
                | VmEvent::System(SystemEvent::PowerOffRequested)
                | VmEvent::System(SystemEvent::ResetRequested)
        ) {
            self.1.store(true, Ordering::SeqCst);
        }
        // The supervisor being gone means the VM is shutting down: nothing to tell.
        let _ = self.0.send(ev);
    }

    /// The guest asked for the VM to end or reset; vCPUs stop entering the guest until
    /// the reset (which clears it).
    pub fn ending(&self) -> bool {
        self.1.load(Ordering::SeqCst)
    }

    /// The machine is starting over (a reset, or `-no-shutdown` keeping it around).
    pub fn clear_ending(&self) {
        self.1.store(false, Ordering::SeqCst);
    }
}

impl SystemEvents for EventTx {
    fn post(&self, event: SystemEvent) {
        EventTx::post(self, VmEvent::System(event));
    }
}
