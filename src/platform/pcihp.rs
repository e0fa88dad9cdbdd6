//! ACPI PCI hotplug on the host side: the register block at 0xAE00
//! ([`devices::pci::hotplug::PciHotplug`]) on the port bus, GPE0 bit 1 (and with it the
//! SCI) raised when a device arrives or the host asks for one to go, and the guest's
//! eject posted to the supervisor, which removes the device.
//!
//! Data path: `device_add` → the supervisor's hotplug → [`Pcihp::plugged`] (PCIU, GPE) →
//! the guest's `_E01`/`PCNT` → device check. `device_del` → [`Pcihp::unplug_request`]
//! (PCID, GPE) → the guest's `_EJ0` → B0EJ write on a vCPU → [`VmEvent::PciEjected`] →
//! the supervisor tears the device down and sends `DEVICE_DELETED`.

use std::sync::{Arc, Mutex};

use actors::bus::{lock, BusHandler};
use actors::events::{EventTx, VmEvent};
use devices::acpi_pm::AcpiPm;
use devices::pci::hotplug::{PciHotplug, PCIHP_GPE_BIT};

/// The register block with the PM block whose GPE it raises.
pub struct Pcihp {
    pub model: Arc<Mutex<PciHotplug>>,
    pm: Arc<Mutex<AcpiPm>>,
    events: EventTx,
}

impl Pcihp {
    pub fn new(removable: u32, pm: Arc<Mutex<AcpiPm>>, events: EventTx) -> Arc<Self> {
        Arc::new(Self {
            model: Arc::new(Mutex::new(PciHotplug::new(removable))),
            pm,
            events,
        })
    }

    /// A device arrived in `slot`: PCIU and the GPE.
    pub fn plugged(&self, slot: u8) {
        lock(&self.model).plugged(slot);
        lock(&self.pm).set_gpe(PCIHP_GPE_BIT);
    }

    /// Ask the guest to eject `slot`: PCID and the GPE. False: one is pending already.
    pub fn unplug_request(&self, slot: u8) -> bool {
        {
            let mut m = lock(&self.model);
            if m.unplug_pending(slot) {
                return false;
            }
            m.unplug_request(slot);
        }
        lock(&self.pm).set_gpe(PCIHP_GPE_BIT);
        true
    }

    /// Whether `slot` may be hot-(un)plugged.
    pub fn removable(&self, slot: u8) -> bool {
        lock(&self.model).removable(slot)
    }

    /// Power-on: nothing pending.
    pub fn reset(&self) {
        lock(&self.model).reset();
    }
}

impl BusHandler for Pcihp {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.model).read(offset, data);
    }

    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        let ejected = lock(&self.model).write(offset, data);
        for slot in ejected.slots() {
            self.events.post(VmEvent::PciEjected { slot });
        }
    }
}
