//! MSI routes in KVM's GSI routing table, one table per VM.
//!
//! KVM has one routing table; setting it replaces the default one, so every update writes
//! the PC's default entries (GSI 0..15 to both PICs and the IOAPIC, 16..23 to the IOAPIC)
//! plus one MSI entry per allocated GSI. Each MSI-X vector owns a GSI and an irqfd bound
//! to it: firing the vector is one eventfd write, and the kernel injects the message.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;

/// First GSI handed out for MSI (after the IOAPIC's 24 pins).
const FIRST_MSI_GSI: u32 = 24;

struct Table {
    next: u32,
    /// GSIs given back by removed devices, handed out again first.
    free: std::collections::BTreeSet<u32>,
    msi: BTreeMap<u32, (u64, u32)>,
}

/// The VM's GSI routing table.
pub struct MsiRoutes {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
}

#[derive(Debug, thiserror::Error)]
pub enum MsiError {
    #[error("out of GSIs for MSI")]
    Exhausted,
    #[error("KVM_SET_GSI_ROUTING: {0}")]
    Routing(kvm_ioctls::Error),
    #[error("KVM_IRQFD: {0}")]
    Irqfd(kvm_ioctls::Error),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

impl MsiRoutes {
    pub fn new(vm: Arc<VmFd>) -> Arc<Self> {
        Arc::new(Self {
            vm,
            table: Mutex::new(Table {
                next: FIRST_MSI_GSI,
                free: Default::default(),
                msi: BTreeMap::new(),
            }),
        })
    }

    /// `n` GSIs, each with an irqfd registered on it.
    pub fn allocate(&self, n: usize) -> Result<Vec<(u32, EventFd)>, MsiError> {
        let mut t = lock(&self.table);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let gsi = match t.free.pop_first() {
                Some(g) => g,
                None if t.next < 4096 => {
                    t.next += 1;
                    t.next - 1
                }
                None => {
                    drop(t);
                    self.release(&out);
                    return Err(MsiError::Exhausted);
                }
            };
            let fd = match EventFd::new(libc::EFD_NONBLOCK).map_err(MsiError::EventFd) {
                Ok(fd) => fd,
                Err(e) => {
                    t.free.insert(gsi);
                    drop(t);
                    self.release(&out);
                    return Err(e);
                }
            };
            if let Err(e) = self.vm.register_irqfd(&fd, gsi) {
                t.free.insert(gsi);
                drop(t);
                self.release(&out);
                return Err(MsiError::Irqfd(e));
            }
            out.push((gsi, fd));
        }
        Ok(out)
    }

    /// Give GSIs back (a device was removed): their irqfds are unregistered, their MSI
    /// routes leave the table, and the GSIs may be handed out again.
    pub fn release(&self, vectors: &[(u32, EventFd)]) {
        if vectors.is_empty() {
            return;
        }
        let mut t = lock(&self.table);
        let mut routed = false;
        for (gsi, fd) in vectors {
            if let Err(e) = self.vm.unregister_irqfd(fd, *gsi) {
                tracing::warn!("KVM_IRQFD deassign of GSI {gsi}: {e}");
            }
            routed |= t.msi.remove(gsi).is_some();
            t.free.insert(*gsi);
        }
        if routed {
            if let Err(e) = self.commit(&t) {
                tracing::warn!("releasing MSI routes: {e}");
            }
        }
    }

    /// Point `gsi` at an MSI message (address, data).
    pub fn set(&self, gsi: u32, address: u64, data: u32) -> Result<(), MsiError> {
        let mut t = lock(&self.table);
        if t.msi.get(&gsi) == Some(&(address, data)) {
            return Ok(());
        }
        t.msi.insert(gsi, (address, data));
        self.commit(&t)
    }

    fn commit(&self, t: &Table) -> Result<(), MsiError> {
        let mut entries = Vec::new();
        for i in 0..24u32 {
            if i < 16 {
                let chip = if i < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(irqchip(i, chip, i % 8));
            }
            entries.push(irqchip(i, KVM_IRQCHIP_IOAPIC, i));
        }
        for (&gsi, &(address, data)) in &t.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = address as u32;
            e.u.msi.address_hi = (address >> 32) as u32;
            e.u.msi.data = data;
            entries.push(e);
        }
        let mut routing = KvmIrqRouting::new(entries.len()).map_err(|_| MsiError::Exhausted)?;
        routing.as_mut_slice().copy_from_slice(&entries);
        self.vm.set_gsi_routing(&routing).map_err(MsiError::Routing)
    }
}

/// A device's MSI-X vectors over [`MsiRoutes`]: what the transport model calls.
pub struct KvmMsix {
    routes: Arc<MsiRoutes>,
    vectors: Vec<(u32, EventFd)>,
    name: String,
}

impl KvmMsix {
    pub fn new(routes: Arc<MsiRoutes>, n: usize, name: &str) -> Result<Self, MsiError> {
        let vectors = routes.allocate(n)?;
        Ok(Self {
            routes,
            vectors,
            name: name.to_string(),
        })
    }

    /// The GSI each vector is routed through, by vector.
    pub fn gsis(&self) -> Vec<u32> {
        self.vectors.iter().map(|(gsi, _)| *gsi).collect()
    }
}

impl Drop for KvmMsix {
    /// The device is gone (hot-unplugged): its vectors' GSIs and irqfds go back.
    fn drop(&mut self) {
        let vectors = std::mem::take(&mut self.vectors);
        self.routes.release(&vectors);
    }
}

impl devices::virtio::pci::MsixSink for KvmMsix {
    fn route(&self, vector: u16, address: u64, data: u32) {
        if let Some((gsi, _)) = self.vectors.get(usize::from(vector)) {
            if let Err(e) = self.routes.set(*gsi, address, data) {
                tracing::warn!("{}: MSI-X vector {vector}: {e}", self.name);
            }
        }
    }
    fn fire(&self, vector: u16) {
        if let Some((_, fd)) = self.vectors.get(usize::from(vector)) {
            let _ = fd.write(1);
        }
    }
}
