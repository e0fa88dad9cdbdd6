//! The virtio PCI devices of the command line (`-drive if=virtio`, `-device
//! virtio-blk-pci`, `-device virtio-rng-pci`): each gets a transport model, a worker
//! thread, its BARs on the buses and its MSI-X vectors as irqfds.

use std::sync::Arc;

use actors::block::BlockHandle;
use actors::virtio::blk::BlkWorker;
use actors::virtio::rng::RngWorker;
use actors::virtio::{KvmMsix, MsiRoutes, QueueWorker, VirtioPciHost};
use anyhow::{anyhow, Context, Result};
use devices::memory::GuestMemoryMmap;
use devices::virtio::blk::{Blk, BlkConfig};
use devices::virtio::pci::{VirtioPci, LEGACY_BAR, MODERN_BAR, MSIX_BAR};
use devices::virtio::rng::Rng;
use devices::virtio::VirtioDeviceModel;

use super::pci::{BarTarget, PciPlatform};
use crate::config::{DeviceKind, VmConfig};
use crate::vm::kvm::KvmVm;

/// A virtio-blk device and the drive it serves (for the monitor's block queries).
pub struct VirtioDisk {
    pub drive: String,
    pub qdev: String,
    pub backend: BlockHandle,
}

/// Every virtio device, kept for reset.
#[derive(Default)]
pub struct VirtioDevices {
    pub hosts: Vec<Arc<VirtioPciHost>>,
    pub disks: Vec<VirtioDisk>,
    /// The `virtio-tablet-pci`, if any: where absolute pointer events go.
    pub tablet: Option<actors::virtio::input::TabletSink>,
    /// Every NIC, virtio-net and e1000 (built here for their shared backends and ROMs).
    pub nics: Vec<super::nic::Nic>,
    /// `downscript=` of each tap opened: (script, ifname), run when the VM ends.
    pub downscripts: Vec<(std::path::PathBuf, String)>,
    /// Each PCI device built here, in build order, for the device tree.
    pub placed: Vec<Placed>,
    /// The VM's MSI routing table, when a device here needed it (there must be one:
    /// hotplug uses it; the INTx router is the chipset's own, see
    /// [`super::pci::PciPlatform::intx_router`]).
    pub routes: Option<Arc<MsiRoutes>>,
    /// The `virtio-balloon-pci`, if any (`balloon`, `info balloon`).
    pub balloon: Option<Arc<actors::virtio::balloon::BalloonHandle>>,
}

/// What was built for one `-device`: the device tree's node is made from it.
pub struct Placed {
    /// Its index in `cfg.devices`.
    pub device: usize,
    pub control: actors::runtime::ControlHandle,
    /// Registry ids of the other actors it uses (its block backend).
    pub actors: Vec<String>,
    /// MSI-X vectors (virtio devices).
    pub vectors: Option<u16>,
    /// The GSI routed to each MSI-X vector.
    pub msi_gsis: Vec<u32>,
    /// The virtio transport (for where its ioeventfds listen).
    pub host: Option<Arc<VirtioPciHost>>,
}

/// What is known of a virtio NIC before its host runs.
struct VirtioNicParts {
    name: String,
    netdev: String,
    backend: String,
    slirp: Option<super::nic::SlirpHandle>,
    filter: devices::virtio::net::SharedRxFilter,
    stats: Arc<actors::virtio::net::NetStats>,
    link: Arc<std::sync::atomic::AtomicBool>,
    error: Arc<std::sync::Mutex<Option<String>>>,
    inject: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    detach: Arc<std::sync::atomic::AtomicBool>,
    downscript: Option<(std::path::PathBuf, String)>,
}

impl VirtioDevices {
    pub fn reset(&self) {
        for h in &self.hosts {
            h.reset();
        }
    }
}

/// Where the devices' actors run and are listed.
pub struct Actors<'a> {
    pub rt: &'a tokio::runtime::Handle,
    pub registry: &'a actors::runtime::Registry,
}

/// The chardevs virtio consoles and user-mode `guestfwd=` rules talk to.
pub struct Frontends<'a> {
    /// `virtconsole` ports: (index in `cfg.devices`, chardev, its input).
    pub consoles: Vec<(
        usize,
        actors::chardev::ChardevHandle,
        tokio::sync::mpsc::Receiver<actors::chardev::FrontendEvent>,
    )>,
    pub guestfwds: &'a mut super::nic::GuestFwdChardevs,
}

pub fn build(
    cfg: &VmConfig,
    kvm: &KvmVm,
    mem: &GuestMemoryMmap,
    pci: &Arc<PciPlatform>,
    frontends: Frontends<'_>,
    run: Actors<'_>,
    open: &mut dyn FnMut(&str) -> Result<BlockHandle>,
) -> Result<VirtioDevices> {
    let Frontends {
        consoles,
        guestfwds,
    } = frontends;
    let Actors { rt, registry } = run;
    let mut consoles: Vec<_> = consoles.into_iter().map(Some).collect();
    let mut out = VirtioDevices::default();
    let needs = cfg.devices.iter().any(|d| {
        matches!(
            d.kind,
            DeviceKind::VirtioBlk { .. }
                | DeviceKind::VirtioRng
                | DeviceKind::VirtioBalloon { .. }
                | DeviceKind::VirtioTablet
                | DeviceKind::VirtioSerial
                | DeviceKind::Nic { .. }
        )
    });
    if !needs {
        return Ok(out);
    }
    let routes = MsiRoutes::new(kvm.vm.clone());
    let intx = pci
        .intx_router(registry, kvm.vm.clone())
        .context("PCI INTx irqfds")?;
    out.routes = Some(routes.clone());
    let (mut nblk, mut nrng, mut nnet) = (0, 0, 0);
    let mut tablet_queue = None;
    let mut balloon_parts = None;
    let mut console_input = None;
    let mut nic_info: Option<VirtioNicParts> = None;
    let mut ne1000 = 0;
    let mut nic_rom: Option<Vec<u8>> = None;
    for (index, d) in cfg.devices.iter().enumerate() {
        let Some(slot) = d.addr else { continue };
        if let DeviceKind::Nic {
            model: crate::config::NicModel::E1000,
            netdev,
            mac,
            romfile,
            ..
        } = &d.kind
        {
            let nic = super::nic::build_e1000(
                super::nic::E1000Parts {
                    cfg,
                    id: d.id.as_deref(),
                    index: ne1000,
                    netdev: netdev.as_deref(),
                    mac: *mac,
                    romfile: romfile.as_deref(),
                    slot,
                    mem,
                    pci,
                    intx: &intx,
                    guestfwds,
                    rt,
                    registry,
                },
                &mut out.downscripts,
            )?;
            ne1000 += 1;
            if let super::nic::NicKind::E1000(h) = &nic.kind {
                out.placed.push(Placed {
                    device: index,
                    control: h.control(),
                    actors: Vec::new(),
                    vectors: None,
                    msi_gsis: Vec::new(),
                    host: None,
                });
            }
            out.nics.push(nic);
            continue;
        }
        let backend_actors = Vec::new();
        let (name, model, vectors, worker): (
            String,
            Box<dyn VirtioDeviceModel>,
            u16,
            Box<dyn QueueWorker>,
        ) = match &d.kind {
            DeviceKind::VirtioBlk {
                drive,
                num_queues,
                serial,
                ..
            } => {
                let dc = cfg
                    .drives
                    .iter()
                    .find(|x| &x.id == drive)
                    .ok_or_else(|| anyhow!("virtio-blk-pci: drive '{drive}' not found"))?;
                let backend = open(drive)?;
                let bcfg = blk_config(&backend, *num_queues, serial.as_deref(), dc);
                let name = format!("virtio-blk{nblk}");
                nblk += 1;
                out.disks.push(VirtioDisk {
                    drive: drive.clone(),
                    // The block backend hangs off the virtio-blk's inner device, as
                    // QEMU's: what `query-block`/`query-blockstats` name as `qdev` and
                    // libvirt looks a virtio disk's statistics up by.
                    qdev: match &d.id {
                        Some(id) => format!("/machine/peripheral/{id}/virtio-backend"),
                        None => {
                            format!("/machine/peripheral-anon/device[{}]/virtio-backend", slot.0)
                        }
                    },
                    backend: backend.clone(),
                });
                let worker = BlkWorker::new(backend, bcfg.clone());
                (
                    name,
                    Box::new(Blk::new(bcfg)),
                    num_queues + 1,
                    Box::new(worker),
                )
            }
            DeviceKind::VirtioRng => {
                let name = format!("virtio-rng{nrng}");
                nrng += 1;
                (name, Box::new(Rng), 2, Box::new(RngWorker))
            }
            DeviceKind::VirtioBalloon { deflate_on_oom } => {
                if balloon_parts.is_some() || out.balloon.is_some() {
                    return Err(anyhow!("only one virtio-balloon-pci is supported"));
                }
                let shared = devices::virtio::balloon::BalloonShared::new();
                let (worker, stats) = actors::virtio::balloon::BalloonWorker::new();
                balloon_parts = Some((shared.clone(), stats));
                (
                    "virtio-balloon0".to_string(),
                    Box::new(devices::virtio::balloon::Balloon::new(
                        shared,
                        *deflate_on_oom,
                    )),
                    // QEMU's virtio-balloon-pci: no MSI-X vectors of its own beyond
                    // the queues' and the configuration's.
                    4,
                    Box::new(worker),
                )
            }
            DeviceKind::VirtioSerial => {
                // Its console port, if a virtconsole names this controller.
                let mut ports = consoles.iter_mut().filter(|c| {
                    c.as_ref().is_some_and(|(i, _, _)| {
                        matches!(cfg.devices[*i].kind, DeviceKind::VirtConsole { controller, .. } if controller == index)
                    })
                });
                let port = ports.next().and_then(|c| c.take());
                if ports.next().is_some() {
                    return Err(anyhow!(
                        "virtio-serial-pci: troupe supports one virtconsole per controller"
                    ));
                }
                let sink: Box<dyn devices::ByteSink> = match &port {
                    Some((_, h, _)) => h.sink(),
                    None => Box::new(Discard),
                };
                let (worker, input) = actors::virtio::console::console(sink);
                console_input = port.map(|(_, _, rx)| (rx, input));
                (
                    format!("virtio-serial{index}"),
                    Box::new(devices::virtio::console::Console),
                    2,
                    Box::new(worker),
                )
            }
            DeviceKind::Nic {
                model: crate::config::NicModel::VirtioNet,
                netdev,
                mac,
                romfile,
                queues,
                ..
            } => {
                let before = out.downscripts.len();
                let (backend, desc, slirp) = super::nic::open_backend(
                    super::nic::BackendParts {
                        cfg,
                        id: netdev.as_deref(),
                        model: "virtio-net-pci",
                        guestfwds,
                        rt,
                        registry,
                    },
                    &mut out.downscripts,
                )?;
                nic_rom = super::nic::load_rom(romfile.as_deref(), VIRTIO_NET_ROM)?;
                let filter: devices::virtio::net::SharedRxFilter = Arc::new(std::sync::Mutex::new(
                    devices::virtio::net::RxFilter::new(*mac),
                ));
                let offloads = devices::virtio::net::offered_features(backend.offloads());
                // A multiqueue tap's queues, one per pair with mq=on (QEMU: one pair
                // without it, whatever the tap has).
                let mut backends = backend.split_queues();
                let tap_queues = backends.len() as u16;
                if !queues.mq {
                    backends.truncate(1);
                }
                let pairs = backends.len() as u16;
                let vectors = queues.vectors.unwrap_or(2 * tap_queues + 2);
                let worker = actors::virtio::net::NetWorker::new(backends, filter.clone());
                let client =
                    d.id.clone()
                        .unwrap_or_else(|| format!("virtio-net-pci.{nnet}"));
                if netdev.is_none() {
                    actors::report!("troupe: warning: nic {client} has no peer");
                }
                nic_info = Some(VirtioNicParts {
                    name: client,
                    netdev: netdev.clone().unwrap_or_default(),
                    backend: desc,
                    slirp,
                    filter: filter.clone(),
                    stats: worker.stats.clone(),
                    link: worker.link.clone(),
                    error: worker.error.clone(),
                    inject: worker.inject.clone(),
                    detach: worker.detach.clone(),
                    downscript: out.downscripts.get(before).cloned(),
                });
                let name = format!("virtio-net{nnet}");
                nnet += 1;
                (
                    name,
                    Box::new(devices::virtio::net::Net::new(filter, offloads, pairs)),
                    // QEMU's count: a vector per queue of each pair, config, control.
                    vectors,
                    Box::new(worker),
                )
            }
            DeviceKind::VirtioTablet => {
                if tablet_queue.is_some() || out.tablet.is_some() {
                    return Err(anyhow!("only one virtio-tablet-pci is supported"));
                }
                let (worker, pending) = actors::virtio::input::tablet();
                tablet_queue = Some(pending);
                (
                    "virtio-tablet0".to_string(),
                    Box::new(devices::virtio::input::Tablet::new()),
                    2,
                    Box::new(worker),
                )
            }
            _ => continue,
        };
        let msix = KvmMsix::new(routes.clone(), usize::from(vectors), &name)?;
        let msi_gsis = msix.gsis();
        let mut model = VirtioPci::new(model, vectors, pci.intx(&intx, slot.0, 1), Arc::new(msix));
        if let Some(id) = &d.id {
            model.set_id(id);
        }
        let legacy = model.legacy_bar_size() > 0;
        let rom = nic_rom.take().map(|r| {
            let c = devices::pci::PciFunction::config(&model);
            let (size, buf) = super::nic::rom_image(r, c.vendor(), c.device());
            model.add_rom(size);
            buf
        });
        let host =
            VirtioPciHost::start(registry, &name, model, kvm.vm.clone(), mem.clone(), worker)
                .with_context(|| format!("{name}: starting its worker"))?;
        pci.add_function(slot, host.function());
        let [lbar, mbar, modern] = host.bars();
        if legacy {
            pci.bind_bar(slot, LEGACY_BAR, &name, BarTarget::Io(lbar));
        }
        pci.bind_bar(
            slot,
            MSIX_BAR,
            &format!("{name}-msix"),
            BarTarget::Mmio(mbar),
        );
        pci.bind_bar(
            slot,
            MODERN_BAR,
            &format!("{name}-modern"),
            BarTarget::Mmio(modern),
        );
        if let Some(buf) = rom {
            pci.bind_bar(slot, 6, &format!("{name}.rom"), BarTarget::Rom(buf));
        }
        if let (DeviceKind::VirtioSerial, Some((rx, input))) = (&d.kind, console_input.take()) {
            actors::virtio::console::feed_input(rt, registry, &name, rx, input, host.waker());
        }
        if let Some(p) = nic_info.take() {
            out.nics.push(super::nic::Nic {
                name: p.name,
                model: "virtio-net-pci",
                netdev: p.netdev,
                backend: p.backend,
                link: p.link,
                error: p.error,
                slirp: p.slirp,
                kind: super::nic::NicKind::Virtio {
                    host: host.clone(),
                    filter: p.filter,
                    stats: p.stats,
                    inject: p.inject,
                    detach: p.detach,
                },
                downscript: p.downscript,
                detached: Arc::default(),
            });
        }
        out.placed.push(Placed {
            device: index,
            control: host.control(),
            actors: backend_actors,
            vectors: Some(vectors),
            msi_gsis,
            host: Some(host.clone()),
        });
        if let Some((shared, stats)) = balloon_parts.take() {
            out.balloon = Some(Arc::new(actors::virtio::balloon::BalloonHandle {
                shared,
                model: host.model().clone(),
                stats,
                ram: cfg.memory,
            }));
        }
        if let (DeviceKind::VirtioTablet, Some(p)) = (&d.kind, tablet_queue.take()) {
            out.tablet = Some(actors::virtio::input::TabletSink::new(&p, host.waker()));
        }
        out.hosts.push(host);
    }
    Ok(out)
}

/// Where a console controller without a port sends its (absent) output.
struct Discard;

impl devices::ByteSink for Discard {
    fn write_bytes(&mut self, _data: &[u8]) {}
}

const VIRTIO_NET_ROM: &str = "efi-virtio.rom";

/// A virtio-blk's configuration: the image's size and access, `num-queues`, the device's
/// `serial=` (else the drive's) and the drive's `discard=`.
pub(super) fn blk_config(
    backend: &BlockHandle,
    num_queues: u16,
    serial: Option<&str>,
    dc: &crate::config::DriveConfig,
) -> BlkConfig {
    BlkConfig {
        capacity: backend.info.size,
        read_only: backend.info.read_only,
        num_queues,
        queue_size: 256,
        serial: serial
            .map(str::to_string)
            .or_else(|| dc.serial.clone())
            .unwrap_or_default(),
        discard: dc.discard,
    }
}
