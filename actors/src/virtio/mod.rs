//! Virtio device hosts: a transport model (`devices::virtio::pci::VirtioPci`) on the PCI
//! bus, its BARs on the PIO/MMIO buses, its queue notifications as ioeventfds that wake the
//! device's worker thread directly, its MSI-X vectors as irqfds ([`msi`]).
//!
//! Data path: driver writes the notify register → KVM signals the queue's ioeventfd (no
//! exit to troupe) → the worker pops chains and serves them (a block backend for
//! virtio-blk, getrandom for virtio-rng) → used ring → irqfd → the guest's interrupt.
//! Register accesses (setup, ISR, configuration) take the exit path under the model's
//! mutex, like every other device.

pub mod balloon;
pub mod blk;
pub mod console;
pub mod input;
pub mod msi;
pub mod net;
pub mod rng;
mod worker;

use std::sync::{Arc, Mutex};

use devices::memory::GuestMemoryMmap;
use devices::pci::PciFunction;
use devices::virtio::pci::{Action, VirtioPci, LEGACY_NOTIFY, NOTIFY_CFG, NOTIFY_MULTIPLIER};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{lock, BusHandler};
use crate::runtime::{ControlHandle, ThreadControl};
pub use msi::{KvmMsix, MsiRoutes};
pub use worker::{Ctx, QueueWorker};

#[derive(Default)]
struct Installed {
    modern: Option<u64>,
    legacy: Option<u64>,
}

/// One virtio PCI device: the transport model, its worker and its notify eventfds.
pub struct VirtioPciHost {
    name: String,
    model: Arc<Mutex<VirtioPci>>,
    notify: Arc<Vec<EventFd>>,
    vm: Arc<VmFd>,
    worker: worker::WorkerHandle,
    control: ControlHandle,
    installed: Mutex<Installed>,
}

impl VirtioPciHost {
    /// Start the worker thread (`troupe-<name>`) for `model`.
    pub fn start(
        registry: &crate::runtime::Registry,
        name: &str,
        model: VirtioPci,
        vm: Arc<VmFd>,
        mem: GuestMemoryMmap,
        worker: Box<dyn QueueWorker>,
    ) -> std::io::Result<Arc<Self>> {
        let nq = model.queues().len();
        let notify: Vec<EventFd> = (0..nq)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<_, _>>()?;
        let notify = Arc::new(notify);
        let model = Arc::new(Mutex::new(model));
        let (thread_control, control) = ThreadControl::new(name)?;
        let handle = worker::spawn(
            registry,
            name,
            mem,
            model.clone(),
            notify.clone(),
            worker,
            thread_control,
        )?;
        Ok(Arc::new(Self {
            name: name.to_string(),
            model,
            notify,
            vm,
            worker: handle,
            control,
            installed: Mutex::new(Installed::default()),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's control mailbox (pause/resume with the VM).
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    /// The PCI function to put on the bus.
    pub fn function(&self) -> Arc<Mutex<dyn PciFunction>> {
        self.model.clone()
    }

    /// Writing to it makes the worker call its `wake` (for sources of device events).
    pub fn waker(&self) -> Arc<EventFd> {
        self.worker.wake.clone()
    }

    pub fn model(&self) -> &Arc<Mutex<VirtioPci>> {
        &self.model
    }

    /// Handlers for BAR0 (legacy I/O), BAR1 (MSI-X) and BAR4 (modern).
    pub fn bars(self: &Arc<Self>) -> [Arc<dyn BusHandler>; 3] {
        [
            Arc::new(LegacyBar(self.clone())),
            Arc::new(MsixBar(self.clone())),
            Arc::new(ModernBar(self.clone())),
        ]
    }

    /// Platform reset: stop serving the queues (the PCI reset of the model follows). Must
    /// not be called with the model's lock held (see [`worker::ResetGate`]).
    pub fn reset(&self) {
        self.worker.reset();
    }

    /// The device was removed from the machine (its BARs already unmapped, so its
    /// ioeventfds are unregistered): the worker thread ends, dropping its backend. The
    /// MSI-X vectors go back when the last reference to the model is dropped.
    pub fn stop(&self) {
        self.worker.stop();
    }

    fn act(&self, a: Option<Action>) {
        match a {
            None => {}
            Some(Action::Activate) => {
                let (queues, features) = {
                    let m = lock(&self.model);
                    (m.queues().to_vec(), m.driver_features())
                };
                self.worker.activate(queues, features);
            }
            // On the vCPU that wrote status 0: returns once the worker can no longer write
            // guest memory for the old queues, without waiting for I/O in flight.
            Some(Action::Reset) => self.worker.reset(),
            Some(Action::Notify(q)) => {
                if let Some(fd) = self.notify.get(usize::from(q)) {
                    let _ = fd.write(1);
                }
            }
        }
    }

    fn ioevent(&self, addr: IoEventAddress, q: usize, legacy: bool, add: bool) {
        let fd = &self.notify[q];
        let r = match (legacy, add) {
            (true, true) => self.vm.register_ioevent(fd, &addr, q as u16),
            (true, false) => self.vm.unregister_ioevent(fd, &addr, q as u16),
            (false, true) => self.vm.register_ioevent(fd, &addr, NoDatamatch),
            (false, false) => self.vm.unregister_ioevent(fd, &addr, NoDatamatch),
        };
        if let Err(e) = r {
            tracing::warn!("{}: ioeventfd for queue {q}: {e}", self.name);
        }
    }

    /// Where its queue-notify ioeventfds listen now (they follow the BARs).
    pub fn ioeventfds(&self) -> Vec<crate::supervisor::Ioeventfd> {
        let inst = lock(&self.installed);
        let mut out = Vec::new();
        for q in 0..self.notify.len() as u16 {
            if let Some(b) = inst.legacy {
                out.push(crate::supervisor::Ioeventfd {
                    pio: true,
                    addr: b + LEGACY_NOTIFY,
                    datamatch: Some(u64::from(q)),
                    queue: q,
                });
            }
            if let Some(b) = inst.modern {
                out.push(crate::supervisor::Ioeventfd {
                    pio: false,
                    addr: b + NOTIFY_CFG + NOTIFY_MULTIPLIER * u64::from(q),
                    datamatch: None,
                    queue: q,
                });
            }
        }
        out
    }

    /// How many queue-notify ioeventfds it has (one per queue, at each BAR that decodes).
    pub fn queues(&self) -> usize {
        self.notify.len()
    }

    fn moved(&self, legacy: bool, base: Option<u64>) {
        let mut inst = lock(&self.installed);
        let slot = if legacy {
            &mut inst.legacy
        } else {
            &mut inst.modern
        };
        let addr = |b: u64, q: usize| {
            if legacy {
                IoEventAddress::Pio(b + LEGACY_NOTIFY)
            } else {
                IoEventAddress::Mmio(b + NOTIFY_CFG + NOTIFY_MULTIPLIER * q as u64)
            }
        };
        if let Some(old) = slot.take() {
            for q in 0..self.notify.len() {
                self.ioevent(addr(old, q), q, legacy, false);
            }
        }
        if let Some(new) = base {
            for q in 0..self.notify.len() {
                self.ioevent(addr(new, q), q, legacy, true);
            }
            *slot = Some(new);
        }
    }
}

struct LegacyBar(Arc<VirtioPciHost>);
struct MsixBar(Arc<VirtioPciHost>);
struct ModernBar(Arc<VirtioPciHost>);

impl BusHandler for LegacyBar {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0.model).legacy_read(offset, data);
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        let a = lock(&self.0.model).legacy_write(offset, data);
        self.0.act(a);
    }
    fn mapped(&self, base: Option<u64>) {
        self.0.moved(true, base);
    }
}

impl BusHandler for MsixBar {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0.model).msix_read(offset, data);
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        lock(&self.0.model).msix_write(offset, data);
    }
}

impl BusHandler for ModernBar {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0.model).modern_read(offset, data);
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        let a = lock(&self.0.model).modern_write(offset, data);
        self.0.act(a);
    }
    fn mapped(&self, base: Option<u64>) {
        self.0.moved(false, base);
    }
}
