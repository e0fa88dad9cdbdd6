//! PCI devices added while the VM runs (`device_add`): virtio-net-pci, virtio-blk-pci,
//! virtio-rng-pci and e1000 on a free slot of bus 0, built like the command line's (a
//! transport model, its worker thread, its BARs, ioeventfds and MSI-X irqfds, the same
//! MSI routing table and INTx router), as one device-tree node whose teardown undoes it:
//! the function leaves the bus (its BARs unmapped, which unregisters its ioeventfds), its
//! thread ends with its backend, its MSI-X GSIs and irqfds go back with the model.
//!
//! The spec is checked with the command line's rules against the VM's configuration as
//! it is now ([`super::hotnet::HotNetdevs::config`]), and the slot must be one ACPI PCI
//! hotplug offers ([`super::pcihp`]). Not yet: boot ROMs (`romfile=FILE` and `bootindex=` are
//! refused), virtio-serial, virtio-input and virtio-balloon, and `info network` for
//! hot-plugged NICs.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use actors::host::e1000::E1000Host;
use actors::runtime::Registry;
use actors::supervisor::{BackendKind, DeviceTree, Node, Resource, Teardown};
use actors::virtio::blk::BlkWorker;
use actors::virtio::rng::RngWorker;
use actors::virtio::{KvmMsix, MsiRoutes, QueueWorker, VirtioPciHost};
use devices::memory::GuestMemoryMmap;
use devices::pci::Slot;
use devices::virtio::blk::Blk;
use devices::virtio::pci::{VirtioPci, LEGACY_BAR, MODERN_BAR, MSIX_BAR};
use devices::virtio::rng::Rng;
use devices::virtio::VirtioDeviceModel;

use super::hotblk::SharedBlock;
use super::hotnet::SharedNetdevs;
use super::nic::{Nic, NicKind};
use super::pci::{BarTarget, PciPlatform};
use super::pcihp::Pcihp;
use super::tree;
use crate::cli::hotplug::{parse_device_add, DeviceAdd};
use crate::config::{DeviceConfig, DeviceKind, NicModel};
use crate::vm::kvm::KvmVm;

/// What hot-plugged PCI devices are built with.
pub struct HotPci {
    pub pci: Arc<PciPlatform>,
    pub pcihp: Arc<Pcihp>,
    kvm: Arc<KvmVm>,
    mem: GuestMemoryMmap,
    routes: Arc<MsiRoutes>,
    registry: Registry,
    /// Numbers the worker threads of hot-plugged devices (`virtio-net-hp3`).
    next: AtomicU32,
    /// The virtio transports plugged and not yet removed, by slot (a platform reset stops
    /// their queues, as for the command line's).
    live: std::sync::Mutex<Vec<(u8, Arc<VirtioPciHost>)>>,
}

/// What a device's teardown stops.
enum Running {
    Virtio(Arc<VirtioPciHost>),
    E1000(Arc<E1000Host>),
}

impl Running {
    fn stop(&self) {
        match self {
            Self::Virtio(h) => h.stop(),
            Self::E1000(h) => h.stop(),
        }
    }
}

/// A device's MSI-X vector count and the GSI routed to each.
type Vectors = (u16, Vec<u32>);

/// A device built and on the bus, not yet in the tree.
struct Built {
    running: Running,
    /// The thread's registry id.
    name: String,
    vectors: Option<Vectors>,
    nic: Option<Nic>,
    /// A disk's image (for `query-block`).
    disk: Option<actors::block::BlockHandle>,
}

/// The tree's anonymous id for the next device without `id=`.
fn anon_id(tree: &DeviceTree) -> String {
    (0..)
        .map(|n| format!("/machine/peripheral-anon/device[{n}]"))
        .find(|id| tree.get(id).is_none())
        .unwrap_or_default()
}

impl HotPci {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pci: Arc<PciPlatform>,
        pcihp: Arc<Pcihp>,
        kvm: Arc<KvmVm>,
        mem: GuestMemoryMmap,
        routes: Option<Arc<MsiRoutes>>,
        registry: Registry,
    ) -> Arc<Self> {
        let routes = routes.unwrap_or_else(|| MsiRoutes::new(kvm.vm.clone()));
        Arc::new(Self {
            pci,
            pcihp,
            kvm,
            mem,
            routes,
            registry,
            next: AtomicU32::new(0),
            live: Default::default(),
        })
    }

    /// Platform reset: the plugged virtio devices stop serving their queues (their PCI
    /// functions are reset with the bus).
    pub fn reset(&self) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (_, h) in live {
            h.reset();
        }
    }

    fn set_live(&self, slot: u8, host: Option<Arc<VirtioPciHost>>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|(s, _)| *s != slot);
        if let Some(h) = host {
            live.push((slot, h));
        }
    }

    /// `device_add SPEC`: check it, build the device on its slot and return its node
    /// (whose teardown removes it again). Err is the message for the user.
    pub fn plug(
        self: &Arc<Self>,
        spec: &str,
        tree: &DeviceTree,
        netdevs: &SharedNetdevs,
        block: &SharedBlock,
    ) -> Result<Node, String> {
        let config = lock(netdevs).config().clone();
        let d = match parse_device_add(spec, &config).map_err(|e| e.to_string())? {
            DeviceAdd::Device(d) => d,
            DeviceAdd::Help(h) => return Err(h.trim_end().to_string()),
        };
        let driver = d.kind.driver();
        let Some(slot) = d.addr else {
            return Err(format!("Device '{driver}' cannot be plugged at run time"));
        };
        if slot.1 != 0 || !self.pcihp.removable(slot.0) {
            return Err(format!(
                "Bus 'pci.0' does not support hotplugging a device at {:02x}.{:x}",
                slot.0, slot.1
            ));
        }
        if self.pci.occupied(slot) {
            return Err(format!(
                "PCI: slot {} function {} not available for {driver}, in use",
                slot.0, slot.1
            ));
        }
        let (id, user) = match &d.id {
            Some(id) => (id.clone(), true),
            None => (anon_id(tree), false),
        };
        if tree.get(&id).is_some() {
            return Err(format!("Duplicate device ID '{id}'"));
        }
        let netdev = match &d.kind {
            DeviceKind::Nic { netdev, .. } => netdev.clone(),
            _ => None,
        };
        if let Some(n) = &netdev {
            if let Some(user) = tree
                .get(&BackendKind::Netdev.id(n))
                .and_then(|b| b.parent.clone())
            {
                return Err(format!(
                    "Property '{driver}.netdev' can't take value '{n}', it's in use by '{user}'"
                ));
            }
        }
        // INTx A of the slot (dropped to low when the device goes, as a removed device
        // no longer drives it).
        let router = self
            .pci
            .intx_router(&self.registry, self.kvm.vm.clone())
            .map_err(|e| format!("PCI INTx irqfds: {e}"))?;
        let irq = self.pci.intx(&router, slot.0, 1);
        let drive = match &d.kind {
            DeviceKind::VirtioBlk { drive, .. } => Some(drive.clone()),
            _ => None,
        };
        if let Some(dr) = &drive {
            if let Some(user) = tree
                .get(&BackendKind::Block.id(dr))
                .and_then(|b| b.parent.clone())
            {
                return Err(format!(
                    "Drive '{dr}' is already in use by another device ('{user}')"
                ));
            }
        }
        let built = self.build(&d, &id, slot, (netdevs, block), &config, &irq)?;
        let mut node = tree::pci_node(id.clone(), driver, slot)
            .prop("addr", format!("{:02x}.{:x}", slot.0, slot.1))
            .actor(&built.name);
        if user {
            node = node.user();
        }
        if let Some(n) = &netdev {
            if tree.get(&BackendKind::Netdev.id(n)).is_some() {
                node = node.uses(BackendKind::Netdev.id(n));
            }
            node = node.prop("netdev", format!("\"{n}\""));
        }
        if let Some(dr) = &drive {
            if tree.get(&BackendKind::Block.id(dr)).is_some() {
                node = node.uses(BackendKind::Block.id(dr));
            }
            node = node.prop("drive", format!("\"{dr}\""));
        }
        let qdev = format!(
            "{}/virtio-backend",
            actors::supervisor::hotplug::qom_path(&node)
        );
        if let (Some(dr), Some(b)) = (&drive, &built.disk) {
            lock_block(block).disk_added(dr, &qdev, b.clone());
        }
        if let Some((v, gsis)) = &built.vectors {
            node = node
                .with(Resource::MsixVectors(*v))
                .with(Resource::MsiRoutes(gsis.clone()))
                .prop("vectors", tree::num(u64::from(*v)));
        }
        let virtio = match &built.running {
            Running::Virtio(h) => {
                node = node
                    .with(Resource::Ioeventfds(h.queues() as u16))
                    .control(h.control());
                self.set_live(slot.0, Some(h.clone()));
                Some(h.clone())
            }
            Running::E1000(h) => {
                node = node.control(h.control());
                None
            }
        };
        node = node.placement(Arc::new(tree::PciPlacement {
            pci: self.pci.clone(),
            slot,
            virtio,
        }));
        // BARs, ROM and INTx pin as the bus decodes them, as for the command line's.
        node = tree::placed(&self.pci, node);
        let me = self.clone();
        let shared = netdevs.clone();
        let blocks = block.clone();
        let running = built.running;
        let dev_id = id.clone();
        node = node.teardown(Teardown::new(move || {
            me.set_live(slot.0, None);
            me.pci.remove_function(slot);
            running.stop();
            irq.set_level(false);
            lock(&shared).device_removed(&dev_id);
            lock_block(&blocks).disk_removed(&qdev);
            Ok(())
        }));
        let mut d = d;
        d.id = Some(id);
        lock(netdevs).device_added(d, built.nic);
        Ok(node)
    }

    fn name(&self, kind: &str) -> String {
        format!("{kind}-hp{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn build(
        &self,
        d: &DeviceConfig,
        id: &str,
        slot: Slot,
        (netdevs, block): (&SharedNetdevs, &SharedBlock),
        config: &crate::config::VmConfig,
        irq: &Arc<dyn devices::IrqLine>,
    ) -> Result<Built, String> {
        match &d.kind {
            DeviceKind::VirtioRng => {
                let name = self.name("virtio-rng");
                self.virtio(
                    id,
                    (slot, irq),
                    &name,
                    Box::new(Rng),
                    2,
                    Box::new(RngWorker),
                )
                .map(|(h, v)| Built {
                    running: Running::Virtio(h),
                    name,
                    vectors: Some(v),
                    nic: None,
                    disk: None,
                })
            }
            DeviceKind::VirtioBlk {
                drive,
                num_queues,
                serial,
                ..
            } => {
                let dc = config
                    .drives
                    .iter()
                    .find(|x| &x.id == drive)
                    .ok_or_else(|| {
                        format!("Property 'virtio-blk-pci.drive' can't find value '{drive}'")
                    })?;
                let path = dc
                    .file
                    .clone()
                    .ok_or_else(|| format!("drive '{drive}' has no medium"))?;
                // A node added at run time is open already; a command-line drive no
                // device used opens now.
                let held = lock_block(block).handle(drive);
                let backend = match held {
                    Some(b) => b,
                    None => {
                        actors::block::open(&self.registry, drive, super::drive_options(dc, path))
                            .map_err(|e| format!("drive '{drive}': {e}"))?
                    }
                };
                let disk = Some(backend.clone());
                let bcfg = super::virtio::blk_config(&backend, *num_queues, serial.as_deref(), dc);
                let name = self.name("virtio-blk");
                let worker = BlkWorker::new(backend, bcfg.clone());
                self.virtio(
                    id,
                    (slot, irq),
                    &name,
                    Box::new(Blk::new(bcfg)),
                    num_queues + 1,
                    Box::new(worker),
                )
                .map(|(h, v)| Built {
                    running: Running::Virtio(h),
                    name,
                    vectors: Some(v),
                    nic: None,
                    disk,
                })
            }
            DeviceKind::Nic {
                model,
                netdev,
                mac,
                queues,
                ..
            } => {
                let (backend, desc, slirp) = match netdev {
                    Some(n) => lock(netdevs).take_backend(n)?,
                    None => (actors::net::backend::Backend::Gone, String::new(), None),
                };
                match model {
                    NicModel::VirtioNet => {
                        let filter: devices::virtio::net::SharedRxFilter = Arc::new(
                            std::sync::Mutex::new(devices::virtio::net::RxFilter::new(*mac)),
                        );
                        let offloads = devices::virtio::net::offered_features(backend.offloads());
                        let mut backends = backend.split_queues();
                        let tap_queues = backends.len() as u16;
                        if !queues.mq {
                            backends.truncate(1);
                        }
                        let pairs = backends.len() as u16;
                        let vectors = queues.vectors.unwrap_or(2 * tap_queues + 2);
                        let worker = actors::virtio::net::NetWorker::new(backends, filter.clone());
                        let (stats, link, error, inject, detach) = (
                            worker.stats.clone(),
                            worker.link.clone(),
                            worker.error.clone(),
                            worker.inject.clone(),
                            worker.detach.clone(),
                        );
                        let name = self.name("virtio-net");
                        let model = devices::virtio::net::Net::new(filter.clone(), offloads, pairs);
                        let (h, v) = self.virtio(
                            id,
                            (slot, irq),
                            &name,
                            Box::new(model),
                            vectors,
                            Box::new(worker),
                        )?;
                        let nic = Nic {
                            name: id.to_string(),
                            model: "virtio-net-pci",
                            netdev: netdev.clone().unwrap_or_default(),
                            backend: desc,
                            link,
                            error,
                            slirp,
                            kind: NicKind::Virtio {
                                host: h.clone(),
                                filter,
                                stats,
                                inject,
                                detach,
                            },
                            downscript: None,
                            detached: Arc::default(),
                        };
                        Ok(Built {
                            running: Running::Virtio(h),
                            name,
                            vectors: Some(v),
                            nic: Some(nic),
                            disk: None,
                        })
                    }
                    NicModel::E1000 => {
                        let name = self.name("e1000");
                        let mut model = devices::e1000::E1000::new(*mac, irq.clone());
                        model.set_id(id);
                        let host = E1000Host::start(
                            &self.registry,
                            &name,
                            model,
                            self.mem.clone(),
                            backend,
                        )
                        .map_err(|e| format!("{name}: starting its receive thread: {e}"))?;
                        self.pci.add_function(slot, host.function());
                        let [mmio, io] = host.bars();
                        self.pci.bind_bar(
                            slot,
                            devices::e1000::MMIO_BAR,
                            &format!("{name}-mmio"),
                            BarTarget::Mmio(mmio),
                        );
                        self.pci.bind_bar(
                            slot,
                            devices::e1000::IO_BAR,
                            &format!("{name}-io"),
                            BarTarget::Io(io),
                        );
                        let nic = Nic {
                            name: id.to_string(),
                            model: "e1000",
                            netdev: netdev.clone().unwrap_or_default(),
                            backend: desc,
                            link: host.link.clone(),
                            error: host.error.clone(),
                            slirp,
                            kind: NicKind::E1000(host.clone()),
                            downscript: None,
                            detached: Arc::default(),
                        };
                        Ok(Built {
                            running: Running::E1000(host),
                            name,
                            vectors: None,
                            nic: Some(nic),
                            disk: None,
                        })
                    }
                }
            }
            other => Err(format!(
                "Device '{}' cannot be plugged at run time by troupe yet",
                other.driver()
            )),
        }
    }

    /// A virtio transport for `model` on `slot` (with INTx line `irq`) with `vectors`
    /// MSI-X vectors and its worker thread `name`; its BARs are bound (mapped once the
    /// guest programs them).
    fn virtio(
        &self,
        id: &str,
        (slot, irq): (Slot, &Arc<dyn devices::IrqLine>),
        name: &str,
        model: Box<dyn VirtioDeviceModel>,
        vectors: u16,
        worker: Box<dyn QueueWorker>,
    ) -> Result<(Arc<VirtioPciHost>, Vectors), String> {
        let msix = KvmMsix::new(self.routes.clone(), usize::from(vectors), name)
            .map_err(|e| format!("{name}: MSI-X: {e}"))?;
        let gsis = msix.gsis();
        let mut model = VirtioPci::new(model, vectors, irq.clone(), Arc::new(msix));
        model.set_id(id);
        let legacy = model.legacy_bar_size() > 0;
        let host = VirtioPciHost::start(
            &self.registry,
            name,
            model,
            self.kvm.vm.clone(),
            self.mem.clone(),
            worker,
        )
        .map_err(|e| format!("{name}: starting its worker: {e}"))?;
        self.pci.add_function(slot, host.function());
        let [lbar, mbar, modern] = host.bars();
        if legacy {
            self.pci
                .bind_bar(slot, LEGACY_BAR, name, BarTarget::Io(lbar));
        }
        self.pci.bind_bar(
            slot,
            MSIX_BAR,
            &format!("{name}-msix"),
            BarTarget::Mmio(mbar),
        );
        self.pci.bind_bar(
            slot,
            MODERN_BAR,
            &format!("{name}-modern"),
            BarTarget::Mmio(modern),
        );
        Ok((host, (vectors, gsis)))
    }
}

fn lock(n: &SharedNetdevs) -> std::sync::MutexGuard<'_, super::hotnet::HotNetdevs> {
    n.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_block(b: &SharedBlock) -> std::sync::MutexGuard<'_, super::hotblk::HotBlock> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}
