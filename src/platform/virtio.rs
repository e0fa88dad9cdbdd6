//! The virtio PCI devices of the command line (`-drive if=virtio`, `-device
//! virtio-blk-pci`, `-device virtio-rng-pci`): each gets a transport model, a worker
//! thread, its BARs on the buses and its MSI-X vectors as irqfds.

use std::sync::Arc;

use actors::block::BlockHandle;
use actors::virtio::blk::BlkWorker;
use actors::virtio::rng::RngWorker;
use actors::virtio::{KvmMsix, MsiRoutes, QueueWorker, VirtioPciHost};
use anyhow::{anyhow, Context, Result};
use devices::virtio::blk::{Blk, BlkConfig};
use devices::virtio::pci::{VirtioPci, LEGACY_BAR, MODERN_BAR, MSIX_BAR};
use devices::virtio::rng::Rng;
use devices::virtio::VirtioDeviceModel;
use vm_memory::GuestMemoryMmap;

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
    pub nics: Vec<VirtioNic>,
    /// `downscript=` of each tap opened: (script, ifname), run when the VM ends.
    pub downscripts: Vec<(std::path::PathBuf, String)>,
}

/// What is known of a NIC before its host runs.
struct VirtioNicParts {
    name: String,
    netdev: String,
    backend: String,
    slirp: Option<(actors::net::slirp::SlirpControl, std::net::Ipv4Addr)>,
    filter: devices::virtio::net::SharedRxFilter,
    stats: Arc<actors::virtio::net::NetStats>,
}

/// A virtio-net NIC and its backend (for `info network` and `set_link`).
#[derive(Clone)]
pub struct VirtioNic {
    /// QEMU's client name: the device id, else `virtio-net-pci.N`.
    pub name: String,
    pub netdev: String,
    /// `type=...,...` as `info network` shows the backend.
    pub backend: String,
    pub link: Arc<std::sync::atomic::AtomicBool>,
    /// Why the backend stopped (a deleted tap), if it did.
    pub error: Arc<std::sync::Mutex<Option<String>>>,
    /// User-mode backends: run-time hostfwd changes, and the first DHCP address (where a
    /// rule with no guest address points).
    pub slirp: Option<(actors::net::slirp::SlirpControl, std::net::Ipv4Addr)>,
    /// The receive filter and MAC the driver set (`query-rx-filter`).
    pub filter: devices::virtio::net::SharedRxFilter,
    /// Frames moved and dropped (`info network` shows drops).
    pub stats: Arc<actors::virtio::net::NetStats>,
    pub host: Arc<VirtioPciHost>,
}

impl VirtioDevices {
    pub fn reset(&self) {
        for h in &self.hosts {
            h.reset();
        }
    }
}

pub fn build(
    cfg: &VmConfig,
    kvm: &KvmVm,
    mem: &GuestMemoryMmap,
    pci: &Arc<PciPlatform>,
    consoles: Vec<(
        usize,
        actors::chardev::ChardevHandle,
        tokio::sync::mpsc::Receiver<actors::chardev::FrontendEvent>,
    )>,
    rt: &tokio::runtime::Handle,
    open: &mut dyn FnMut(&str) -> Result<BlockHandle>,
) -> Result<VirtioDevices> {
    let mut consoles: Vec<_> = consoles.into_iter().map(Some).collect();
    let mut out = VirtioDevices::default();
    let needs = cfg.devices.iter().any(|d| {
        matches!(
            d.kind,
            DeviceKind::VirtioBlk { .. }
                | DeviceKind::VirtioRng
                | DeviceKind::VirtioTablet
                | DeviceKind::VirtioSerial
                | DeviceKind::Nic { .. }
        )
    });
    if !needs {
        return Ok(out);
    }
    let routes = MsiRoutes::new(kvm.vm.clone());
    let intx = pci.intx_router(kvm.vm.clone());
    let (mut nblk, mut nrng, mut nnet) = (0, 0, 0);
    let mut tablet_queue = None;
    let mut console_input = None;
    type NicFlags = (
        Arc<std::sync::atomic::AtomicBool>,
        Arc<std::sync::Mutex<Option<String>>>,
    );
    let mut nic_info: Option<(VirtioNicParts, NicFlags)> = None;
    let mut slirp_ctl = None;
    let mut nic_rom: Option<Vec<u8>> = None;
    for (index, d) in cfg.devices.iter().enumerate() {
        let Some(slot) = d.addr else { continue };
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
                let bcfg = BlkConfig {
                    capacity: backend.info.size,
                    read_only: backend.info.read_only,
                    num_queues: *num_queues,
                    queue_size: 256,
                    serial: serial
                        .clone()
                        .or_else(|| dc.serial.clone())
                        .unwrap_or_default(),
                    discard: dc.discard,
                };
                let name = format!("virtio-blk{nblk}");
                nblk += 1;
                out.disks.push(VirtioDisk {
                    drive: drive.clone(),
                    qdev: d.id.clone().unwrap_or_else(|| {
                        format!("/machine/peripheral-anon/device[{}]/virtio-backend", slot.0)
                    }),
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
                netdev: Some(id),
                mac,
                romfile,
                ..
            } => {
                let nd = cfg
                    .netdevs
                    .iter()
                    .find(|n| &n.id == id)
                    .ok_or_else(|| anyhow!("virtio-net-pci: netdev '{id}' not found"))?;
                let backend = match &nd.kind {
                    crate::config::NetdevKind::Tap {
                        ifname,
                        fd,
                        script,
                        downscript,
                        ..
                    } => {
                        let tap = match fd {
                            Some(fd) => actors::net::tap::from_fd(*fd),
                            None => actors::net::tap::open(ifname.as_deref()),
                        }
                        .map_err(|e| anyhow!("-netdev {id}: {e}"))?;
                        if let (Some(script), None) = (script, fd) {
                            actors::net::tap::run_script(script, &tap.name)
                                .map_err(|e| anyhow!("-netdev {id}: {e}"))?;
                        }
                        if let (Some(down), None) = (downscript, fd) {
                            out.downscripts.push((down.clone(), tap.name.clone()));
                        }
                        actors::virtio::net::Backend::Tap(tap)
                    }
                    crate::config::NetdevKind::User(u) => {
                        if !u.guestfwd.is_empty() {
                            return Err(anyhow!("-netdev {id}: guestfwd is not available yet"));
                        }
                        let opts = actors::net::slirp::SlirpOptions {
                            net: u.net.0,
                            prefix: u.net.1,
                            host: u.host,
                            dhcpstart: u.dhcpstart,
                            dns: u.dns,
                            restrict: u.restrict,
                            hostname: u.hostname.clone(),
                            domainname: u.domainname.clone(),
                            tftp: u.tftp.as_ref().map(|p| p.display().to_string()),
                            bootfile: u.bootfile.clone(),
                            hostfwd: u
                                .hostfwd
                                .iter()
                                .map(|f| {
                                    let guest = if f.guest_addr.is_unspecified() {
                                        u.dhcpstart
                                    } else {
                                        f.guest_addr
                                    };
                                    (f.udp, f.host_addr, f.host_port, guest, f.guest_port)
                                })
                                .collect(),
                        };
                        let port = actors::net::slirp::start(id, opts)
                            .map_err(|e| anyhow!("-netdev {id}: {e}"))?;
                        slirp_ctl = Some((port.control.clone(), u.dhcpstart));
                        actors::virtio::net::Backend::User(port)
                    }
                    crate::config::NetdevKind::Bridge { br, .. } => {
                        let tap = actors::net::bridge::open(br)
                            .map_err(|e| anyhow!("-netdev {id}: {e}"))?;
                        actors::virtio::net::Backend::Tap(tap)
                    }
                    _ => {
                        return Err(anyhow!(
                            "-netdev {id}: only tap, bridge and user are available yet"
                        ))
                    }
                };
                let desc = match &nd.kind {
                    crate::config::NetdevKind::Tap {
                        ifname,
                        script,
                        downscript,
                        ..
                    } => format!(
                        "type=tap,ifname={},script={},downscript={}",
                        ifname.as_deref().unwrap_or(""),
                        script
                            .as_ref()
                            .map_or("no".into(), |p| p.display().to_string()),
                        downscript
                            .as_ref()
                            .map_or("no".into(), |p| p.display().to_string()),
                    ),
                    crate::config::NetdevKind::Bridge { br, .. } => {
                        format!("type=tap,helper=bridge,br={br}")
                    }
                    crate::config::NetdevKind::User(u) => format!(
                        "type=user,net={},restrict={}",
                        u.net.0,
                        if u.restrict { "on" } else { "off" }
                    ),
                    _ => String::new(),
                };
                nic_rom = load_rom(romfile.as_deref())?;
                let filter: devices::virtio::net::SharedRxFilter = Arc::new(std::sync::Mutex::new(
                    devices::virtio::net::RxFilter::new(*mac),
                ));
                let worker = actors::virtio::net::NetWorker::new(backend, filter.clone());
                let client =
                    d.id.clone()
                        .unwrap_or_else(|| format!("virtio-net-pci.{nnet}"));
                nic_info = Some((
                    VirtioNicParts {
                        name: client,
                        netdev: id.clone(),
                        backend: desc,
                        slirp: slirp_ctl.take(),
                        filter: filter.clone(),
                        stats: worker.stats.clone(),
                    },
                    (worker.link.clone(), worker.error.clone()),
                ));
                let name = format!("virtio-net{nnet}");
                nnet += 1;
                (
                    name,
                    Box::new(devices::virtio::net::Net::new(filter)),
                    // QEMU's count: a vector per queue of the pair, config, control.
                    4,
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
        let mut model = VirtioPci::new(model, vectors, pci.intx(&intx, slot.0, 1), Arc::new(msix));
        if let Some(id) = &d.id {
            model.set_id(id);
        }
        let legacy = model.legacy_bar_size() > 0;
        let rom = nic_rom.take().map(|mut r| {
            let c = devices::pci::PciFunction::config(&model);
            patch_rom_ids(&mut r, c.vendor(), c.device());
            let size = (r.len() as u64).next_power_of_two().max(0x1000);
            model.add_rom(size);
            let mut buf = actors::host::mem::HostBuffer::new(size as usize);
            buf.as_mut_slice().fill(0xff);
            buf.as_mut_slice()[..r.len()].copy_from_slice(&r);
            Arc::new(buf)
        });
        let host = VirtioPciHost::start(&name, model, kvm.vm.clone(), mem.clone(), worker)
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
            actors::virtio::console::feed_input(rt, rx, input, host.waker());
        }
        if let Some((p, (link, error))) = nic_info.take() {
            out.nics.push(VirtioNic {
                name: p.name,
                netdev: p.netdev,
                backend: p.backend,
                link,
                error,
                slirp: p.slirp,
                filter: p.filter,
                stats: p.stats,
                host: host.clone(),
            });
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

/// Where QEMU's NIC boot ROMs live on Debian (package ipxe-qemu), and QEMU's data dir.
const ROM_DIRS: [&str; 2] = ["/usr/lib/ipxe/qemu", "/usr/share/qemu"];
const VIRTIO_NET_ROM: &str = "efi-virtio.rom";

/// A NIC's boot ROM: QEMU's default (`romfile` not given; skipped with a warning when it
/// is not installed), none (`romfile=`), or the named file (a bare name is looked up where
/// QEMU looks).
fn load_rom(romfile: Option<&str>) -> Result<Option<Vec<u8>>> {
    let (name, explicit) = match romfile {
        Some("") => return Ok(None),
        Some(n) => (n, true),
        None => (VIRTIO_NET_ROM, false),
    };
    let candidates: Vec<std::path::PathBuf> = if name.contains('/') {
        vec![name.into()]
    } else {
        ROM_DIRS
            .iter()
            .map(|d| std::path::Path::new(d).join(name))
            .collect()
    };
    for c in &candidates {
        if let Ok(b) = std::fs::read(c) {
            return Ok(Some(b));
        }
    }
    if explicit {
        return Err(anyhow!("failed to find romfile \"{name}\""));
    }
    actors::report!(
        "troupe: warning: NIC boot ROM {name} not found (install ipxe-qemu); no network boot"
    );
    Ok(None)
}

/// Make a boot ROM's PCI data structure name this device (as QEMU does): firmware runs a
/// ROM only when its ids match, and one iPXE image serves several device ids. The header's
/// checksum byte (offset 6) absorbs the change.
fn patch_rom_ids(rom: &mut [u8], vendor: u16, device: u16) {
    if rom.len() < 0x1a || rom[0] != 0x55 || rom[1] != 0xaa {
        return;
    }
    let p = usize::from(u16::from_le_bytes([rom[0x18], rom[0x19]]));
    if p + 8 > rom.len() || &rom[p..p + 4] != b"PCIR" {
        return;
    }
    let mut delta: u8 = 0;
    for (at, v) in [(p + 4, vendor), (p + 6, device)] {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            delta = delta.wrapping_add(b).wrapping_sub(rom[at + i]);
            rom[at + i] = b;
        }
    }
    rom[6] = rom[6].wrapping_sub(delta);
}
