//! The PC platform's devices, wired to buses, interrupt lines, chardevs and the supervisor.

use std::sync::{Arc, Mutex};

use actors::block::{BlockHandle, BlockOptions};
use actors::bus::{lock, Bus, BusHandler, Locked};
use actors::chardev::{ChardevHandle, FrontendEvent};
use actors::events::EventTx;
use actors::host::ide::{IdeBusMasterPort, IdeCommandPort, IdeControlPort, IdeHost};
use actors::host::input::{start_input, I8042Port, InputHandle};
use actors::host::rtc::{start_rtc, RtcPort};
use actors::host::serial::{start_serial, SerialPort};
use actors::irq::KvmIrqLine;
use actors::runtime::{ControlHandle, Registry};
use actors::supervisor::{AnonIds, DeviceTree, Node, Resource};
use anyhow::Result;
use devices::acpi_pm::AcpiPm;
use devices::fw_cfg::FwCfg;
use devices::i8042::I8042;
use devices::reset::{Port92, ResetControl};
use devices::rtc::{CmosConfig, HostClock, Rtc, RtcClock};
use devices::serial::Serial;
use devices::{SystemEvent, SystemEvents};
use tokio::sync::mpsc;

use crate::config::{CacheMode, DeviceKind, DriveInterface, ImageFormat, Media, RtcBase, VmConfig};
use crate::vm::firmware::Bios;
use crate::vm::kvm::KvmVm;
use devices::memory::GuestMemoryMmap;
use pci::{GpePort, PciPlatform};

pub mod fw_cfg;
pub mod hotnet;
pub mod nic;
pub mod pci;
pub mod tree;
pub mod vga;
pub mod virtio;

/// COM1..COM4: (port, IRQ).
pub const COM_PORTS: [(u16, u32); 4] = [(0x3f8, 4), (0x2f8, 3), (0x3e8, 4), (0x2e8, 3)];

struct DebugExit(EventTx);

impl BusHandler for DebugExit {
    fn read(&self, _b: u64, _o: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _b: u64, _o: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        SystemEvents::post(&self.0, SystemEvent::DebugExit(u32::from_le_bytes(v)));
    }
}

/// SeaBIOS's debug console (QEMU `isa-debugcon` at 0x402): what it prints goes to the
/// `debugcon` log target, one line at a time. Present only when that target is enabled at
/// start (`-d debugcon` or `TROUPE_LOG=debugcon=debug`): like QEMU's default machine,
/// which has no debugcon, SeaBIOS otherwise finds nothing there and skips its debug
/// output (thousands of emulated-ring-0 port writes on this host).
#[derive(Default)]
struct DebugCon(Mutex<Vec<u8>>);

impl BusHandler for DebugCon {
    fn read(&self, _b: u64, _o: u64, data: &mut [u8]) {
        // QEMU's debugcon reads back its "readback" value 0xe9.
        data.fill(0xe9);
    }
    fn write(&self, _b: u64, _o: u64, data: &[u8]) {
        let mut line = lock(&self.0);
        for &b in data {
            if b == b'\n' || line.len() >= 256 {
                tracing::debug!(target: "debugcon", "{}", String::from_utf8_lossy(&line));
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
}

struct Sink80;
impl BusHandler for Sink80 {
    fn read(&self, _b: u64, _o: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _b: u64, _o: u64, _d: &[u8]) {}
}

/// What the platform is built from.
pub struct PlatformParts<'a> {
    pub cfg: &'a VmConfig,
    pub kvm: Arc<KvmVm>,
    pub mem: GuestMemoryMmap,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub events: EventTx,
    pub serials: Vec<(ChardevHandle, mpsc::Receiver<FrontendEvent>)>,
    /// `virtconsole` ports: (index in `cfg.devices`, chardev, its input).
    pub consoles: Vec<(usize, ChardevHandle, mpsc::Receiver<FrontendEvent>)>,
    /// Chardevs named by `guestfwd=` rules, with their input, by id.
    pub guestfwds: nic::GuestFwdChardevs,
    pub rt: tokio::runtime::Handle,
    pub registry: Registry,
    /// The firmware image (None: direct boot, shadow RAM always on).
    pub bios: Option<Arc<Bios>>,
    /// Where the VGA renders (the console's display surface).
    pub display: actors::display::DisplayWriter,
    /// Applies writes queued in KVM's coalesced MMIO ring (set once the vCPUs exist);
    /// the VGA refresh calls it before rendering.
    pub coalesced: Arc<std::sync::OnceLock<Arc<actors::coalesced::CoalescedRing>>>,
}

/// Every platform device, kept for reset and power-button requests.
pub struct DeviceSet {
    /// Every device as a node, with its control mailbox, in dependency order; handed to
    /// the supervisor with [`DeviceSet::take_tree`].
    tree: DeviceTree,
    serials: Vec<Arc<SerialPort>>,
    rtc: Arc<RtcPort>,
    i8042: Arc<I8042Port>,
    pm: Arc<Mutex<AcpiPm>>,
    /// PCI: the chipset, BAR mappings, INTx routing, PAM.
    pub pci: Arc<PciPlatform>,
    /// Firmware configuration (SeaBIOS reads it; table builders add files).
    pub fw_cfg: Arc<Mutex<FwCfg>>,
    /// Where keyboard and mouse input for the guest goes (VNC, `sendkey`).
    pub input: InputHandle,
    /// The IDE controller and its drives.
    pub ide: Arc<IdeHost>,
    /// The std VGA, unless `-vga none`.
    pub vga: Option<vga::Display>,
    /// virtio-blk and virtio-rng devices.
    pub virtio: virtio::VirtioDevices,
}

impl DeviceSet {
    pub fn build(p: PlatformParts<'_>) -> Result<Self> {
        let PlatformParts {
            cfg,
            kvm,
            mem,
            pio,
            mmio,
            events,
            serials,
            consoles,
            mut guestfwds,
            rt,
            registry,
            bios,
            display,
            coalesced,
        } = p;
        let direct_boot = bios.is_none();
        let (rt, registry) = (&rt, &registry);
        let mut ports = Vec::new();
        for (i, (ch, input)) in serials.into_iter().enumerate().take(4) {
            let (port, irq) = COM_PORTS[i];
            let model = Serial::new(KvmIrqLine::new(kvm.vm.clone(), irq), ch.sink());
            let host = start_serial(rt, registry, &format!("serial{i}"), model, input);
            pio.insert(u64::from(port), 8, &format!("serial{i}"), host.clone())?;
            ports.push(host);
        }
        pio.insert(0x80, 1, "ioport80", Arc::new(Sink80))?;
        if tracing::enabled!(target: "debugcon", tracing::Level::DEBUG) {
            pio.insert(0x402, 1, "debugcon", Arc::new(DebugCon::default()))?;
        }

        let layout = crate::vm::memory::RamLayout::pc(cfg.memory);
        let cmos = CmosConfig {
            ram_below_4g: layout.below_4g,
            ram_above_4g: layout.above_4g,
            cpus: cfg.smp.cpus,
            boot_order: cfg.boot_order.order.clone(),
            boot_once: cfg.boot_order.once.clone(),
        };
        let clock = HostClock {
            offset_secs: rtc_offset(&cfg.rtc.base),
        };
        let rtc = start_rtc(
            rt,
            registry,
            Rtc::new(cmos, Box::new(clock), KvmIrqLine::new(kvm.vm.clone(), 8)),
            || HostClock { offset_secs: 0 }.monotonic_ns(),
        );
        pio.insert(0x70, 2, "rtc", rtc.clone())?;
        let shared: devices::SharedEvents = Arc::new(events.clone());
        let port92 = Arc::new(Mutex::new(Port92::new(shared.clone())));
        pio.insert(0x92, 1, "port92", Locked::new(port92.clone()))?;
        let (input, i8042) = start_input(
            rt,
            registry,
            I8042::new(
                KvmIrqLine::new(kvm.vm.clone(), 1),
                KvmIrqLine::new(kvm.vm.clone(), 12),
                shared.clone(),
            ),
        );
        pio.insert(0x60, 5, "i8042", i8042.clone())?;

        // ACPI PM (PIIX4): the block moves with PMBA; GPE0 is fixed at 0xafe0.
        let pm = Arc::new(Mutex::new(AcpiPm::new(
            KvmIrqLine::new(kvm.vm.clone(), 9),
            shared.clone(),
            Box::new(|| HostClock { offset_secs: 0 }.monotonic_ns()),
        )));
        pio.insert(0xafe0, 4, "acpi-gpe0", Arc::new(GpePort(pm.clone())))?;

        // PCI: i440FX + PIIX; 0xCF9 (byte) is the PIIX reset control register.
        let pci = PciPlatform::new(
            kvm.clone(),
            pio.clone(),
            mmio.clone(),
            crate::vm::memory::low_ram_host(&mem),
            bios,
            pm.clone(),
            ResetControl::new(shared.clone()),
        );
        pio.insert(0xcf8, 8, "pci-conf", pci.config_port())?;

        let mut fw = fw_cfg::build(cfg, &layout);
        fw.set_memory(mem.clone());
        let fw_cfg = Arc::new(Mutex::new(fw));
        pio.insert(0x510, 12, "fwcfg", Locked::new(fw_cfg.clone()))?;

        let ide = build_ide(cfg, &kvm, &mem, registry)?;
        for (c, (cmd, ctl)) in [(0x1f0u64, 0x3f6u64), (0x170, 0x376)]
            .into_iter()
            .enumerate()
        {
            pio.insert(
                cmd,
                8,
                &format!("ide{c}"),
                Arc::new(IdeCommandPort(ide.clone(), c)),
            )?;
            pio.insert(
                ctl,
                1,
                &format!("ide{c}-ctl"),
                Arc::new(IdeControlPort(ide.clone(), c)),
            )?;
        }
        pci.bind_bar(
            pci::IDE_SLOT,
            4,
            "piix-bmdma",
            pci::BarTarget::Io(Arc::new(IdeBusMasterPort(ide.clone()))),
        );

        let vga = match cfg.vga {
            crate::config::VgaKind::Std => Some(vga::build(&vga::VgaParts {
                pci: &pci,
                pio: &pio,
                mmio: &mmio,
                kvm: &kvm,
                registry,
                display,
                direct_boot,
                coalesced: coalesced.clone(),
            })?),
            crate::config::VgaKind::None => None,
        };

        let virtio = virtio::build(
            cfg,
            &kvm,
            &mem,
            &pci,
            virtio::Frontends {
                consoles,
                guestfwds: &mut guestfwds,
            },
            virtio::Actors { rt, registry },
            &mut |id| {
                let d = cfg
                    .drives
                    .iter()
                    .find(|d| d.id == id)
                    .ok_or_else(|| anyhow::anyhow!("drive '{id}' not found"))?;
                open_drive(registry, d)
            },
        )?;

        for d in &cfg.devices {
            if let DeviceKind::IsaDebugExit { iobase, iosize } = d.kind {
                pio.insert(
                    u64::from(iobase),
                    u64::from(iosize),
                    "isa-debug-exit",
                    Arc::new(DebugExit(events.clone())),
                )?;
            }
        }
        pci.reset()?;
        let mut tree = DeviceTree::new();
        tree::chipset(
            &mut tree,
            &pci,
            pci.control(),
            ControlHandle::models("acpi-pm", vec![pci::part("acpi-pm", &pm)], || {}),
        )?;
        // The ISA devices, in the order their control mailboxes are paused back to front.
        tree::add_device(
            &mut tree,
            &pci,
            Node::new(tree::board_id("port92", None), "port92", "isa.0")
                .with(Resource::IoPorts { base: 0x92, len: 1 })
                .control(ControlHandle::models(
                    "port92",
                    vec![pci::part("port92", &port92)],
                    || {},
                )),
        )?;
        for (i, s) in ports.iter().enumerate() {
            let id = format!("serial{i}");
            let (port, irq) = COM_PORTS[i];
            // Input from the chardev waits while the VM is stopped.
            let control = ControlHandle::models(&id, vec![pci::part(&id, s.model())], || {})
                .with_gate(s.gate());
            tree::add_device(
                &mut tree,
                &pci,
                Node::new(tree::board_id("isa-serial", Some(i)), "isa-serial", "isa.0")
                    .with(Resource::IoPorts { base: port, len: 8 })
                    .with(Resource::Irq(irq))
                    .prop("index", tree::num(i as u64))
                    .prop("iobase", tree::num(u64::from(port)))
                    .prop("irq", tree::num(u64::from(irq)))
                    .control(control),
            )?;
        }
        tree::add_device(
            &mut tree,
            &pci,
            Node::new(tree::board_id("mc146818rtc", None), "mc146818rtc", "isa.0")
                .with(Resource::IoPorts { base: 0x70, len: 2 })
                .with(Resource::Irq(8))
                .prop("base_year", tree::num(0))
                .prop("iobase", tree::num(0x70))
                .prop("irq", tree::num(8))
                .control(rtc.control.clone()),
        )?;
        tree::add_device(
            &mut tree,
            &pci,
            Node::new(tree::board_id("i8042", None), "i8042", "isa.0")
                .with(Resource::IoPorts { base: 0x60, len: 5 })
                .with(Resource::Irq(1))
                .with(Resource::Irq(12))
                .prop("kbd-irq", tree::num(1))
                .prop("mouse-irq", tree::num(12))
                .control(
                    ControlHandle::models("i8042", vec![pci::part("i8042", i8042.model())], || {})
                        .with_gate(i8042.gate()),
                ),
        )?;
        tree::add_device(
            &mut tree,
            &pci,
            Node::new(
                tree::board_id("fw_cfg_io", None),
                "fw_cfg_io",
                actors::supervisor::SYSTEM_BUS,
            )
            .with(Resource::IoPorts {
                base: 0x510,
                len: 12,
            })
            .control(ControlHandle::models(
                "fw_cfg",
                vec![pci::part("fw_cfg", &fw_cfg)],
                || {},
            )),
        )?;
        let mut ide_node = tree::pci_node(
            tree::board_id("piix3-ide", None),
            "piix3-ide",
            pci::IDE_SLOT,
        )
        .providing("ide.0", "IDE")
        .providing("ide.1", "IDE");
        for (cmd, ctl, irq) in [(0x1f0, 0x3f6, 14), (0x170, 0x376, 15)] {
            ide_node = ide_node
                .with(Resource::IoPorts { base: cmd, len: 8 })
                .with(Resource::IoPorts { base: ctl, len: 1 })
                .with(Resource::Irq(irq));
        }
        tree::add_device(&mut tree, &pci, ide_node.control(ide.control()))?;
        if let Some(v) = &vga {
            tree::add_device(
                &mut tree,
                &pci,
                tree::pci_node(tree::board_id("VGA", None), "VGA", vga::VGA_SLOT)
                    .with(Resource::IoPorts {
                        base: 0x3b0,
                        len: 0x30,
                    })
                    .with(Resource::IoPorts {
                        base: 0x1ce,
                        len: 2,
                    })
                    .with(Resource::Memory {
                        base: vga::LEGACY_WINDOW.0,
                        len: u64::from(vga::LEGACY_WINDOW.1),
                    })
                    .control(v.control.clone()),
            )?;
        }
        // The -device's, each under its id= or QEMU's name for an anonymous device.
        let mut anon = AnonIds::default();
        let names: Vec<(String, bool)> = cfg
            .devices
            .iter()
            .map(|d| match &d.id {
                Some(id) => (id.clone(), true),
                None => (anon.take(), false),
            })
            .collect();
        for p in &virtio.placed {
            let d = &cfg.devices[p.device];
            let Some(slot) = d.addr else { continue };
            let (id, user) = names[p.device].clone();
            let mut node = tree::pci_node(id, d.kind.driver(), slot)
                .prop("addr", format!("{:02x}.{:x}", slot.0, slot.1));
            if user {
                node = node.user();
            }
            if let Some(v) = p.vectors {
                node = node
                    .with(Resource::MsixVectors(v))
                    .prop("vectors", tree::num(u64::from(v)));
            }
            if let DeviceKind::Nic {
                netdev: Some(n), ..
            } = &d.kind
            {
                node = node.prop("netdev", format!("\"{n}\""));
            }
            if let DeviceKind::VirtioBlk { drive, .. } = &d.kind {
                node = node.prop("drive", format!("\"{drive}\""));
            }
            for a in &p.actors {
                node = node.actor(a);
            }
            tree::add_device(&mut tree, &pci, node.control(p.control.clone()))?;
        }
        for (i, d) in cfg.devices.iter().enumerate() {
            if let DeviceKind::IsaDebugExit { iobase, iosize } = d.kind {
                let (id, user) = names[i].clone();
                let mut node = Node::new(id, "isa-debug-exit", "isa.0")
                    .with(Resource::IoPorts {
                        base: iobase,
                        len: iosize,
                    })
                    .prop("iobase", tree::num(u64::from(iobase)))
                    .prop("iosize", tree::num(u64::from(iosize)));
                if user {
                    node = node.user();
                }
                tree::add_device(&mut tree, &pci, node)?;
            }
        }
        Ok(Self {
            tree,
            serials: ports,
            rtc,
            i8042,
            pm,
            pci,
            fw_cfg,
            input,
            ide,
            vga,
            virtio,
        })
    }

    /// Power-on state for every device (`system_reset`, guest reset).
    pub fn reset(&self) -> Result<()> {
        for s in &self.serials {
            lock(s.model()).reset();
        }
        lock(&self.rtc.model).reset();
        lock(self.i8042.model()).reset();
        lock(&self.pm).reset();
        lock(&self.fw_cfg).reset();
        lock(self.ide.model()).reset();
        self.virtio.reset();
        if let Some(v) = &self.vga {
            v.reset();
        }
        self.pci.reset()?;
        Ok(())
    }

    /// The device tree, for the supervisor to own. Its control mailboxes, in order, are
    /// every device actor the supervisor pauses, resumes, saves and restores with the VM:
    /// the chipset (PCI host, bridges, PAM, PIRQ routing, PM base) first, then ACPI PM,
    /// the ISA devices (port 0x92, the UARTs, the RTC's timer, i8042), fw_cfg, IDE, the
    /// VGA, then the PCI devices' workers in command-line order. Each saves its sections
    /// under its own id: `pci/...`, `acpi-pm`, `port92`, `serial<N>`, `rtc`, `i8042`,
    /// `fw_cfg`, `ide`, `vga` and `vga/pci`, and each virtio device's or NIC's name
    /// (`virtio-blk0` and `virtio-blk0/queues`, `e1000-0`...). Guest RAM and the VGA's
    /// video memory are not in any section: they travel as memory.
    pub fn take_tree(&mut self) -> DeviceTree {
        std::mem::take(&mut self.tree)
    }

    /// `system_powerdown`: press the ACPI power button.
    pub fn power_button(&self) -> bool {
        lock(&self.pm).press_power_button();
        true
    }
}

/// `-rtc base=`: seconds to add to the host's UTC clock.
fn rtc_offset(base: &RtcBase) -> i64 {
    match base {
        RtcBase::Utc => 0,
        RtcBase::LocalTime => {
            let now = HostClock { offset_secs: 0 }.now_unix() as libc::time_t;
            // SAFETY: tm is plain data filled by localtime_r from a valid time_t.
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are valid for the call.
            unsafe { libc::localtime_r(&now, &mut tm) };
            tm.tm_gmtoff
        }
        RtcBase::Fixed(start) => start - HostClock { offset_secs: 0 }.now_unix(),
    }
}

/// The PIIX3 IDE controller with the `if=ide` drives (index 0..3 = hda..hdd).
fn build_ide(
    cfg: &VmConfig,
    kvm: &KvmVm,
    mem: &GuestMemoryMmap,
    registry: &Registry,
) -> Result<Arc<IdeHost>> {
    use devices::ide::{DriveConfig, Ide};
    let mut drives: [Option<DriveConfig>; 4] = Default::default();
    let mut backends: [Option<BlockHandle>; 4] = Default::default();
    for d in cfg
        .drives
        .iter()
        .filter(|d| d.interface == DriveInterface::Ide)
    {
        let Some(n) = d.index.map(|i| i as usize).filter(|i| *i < 4) else {
            continue;
        };
        let cdrom = d.media == Media::Cdrom;
        let backend = match &d.file {
            None => None,
            Some(_) => Some(open_drive(registry, d)?),
        };
        drives[n] = Some(DriveConfig {
            cdrom,
            serial: d
                .serial
                .clone()
                .unwrap_or_else(|| format!("QM{:05}", n + 1)),
            medium: backend.as_ref().map(|b| b.info),
        });
        backends[n] = backend;
    }
    let mut ide = Ide::new(
        drives,
        (
            KvmIrqLine::new(kvm.vm.clone(), 14),
            KvmIrqLine::new(kvm.vm.clone(), 15),
        ),
    );
    ide.set_memory(mem.clone());
    Ok(IdeHost::new(ide, backends))
}

/// Open a drive's image and start its block backend actor.
fn open_drive(registry: &Registry, d: &crate::config::DriveConfig) -> Result<BlockHandle> {
    let path = d
        .file
        .clone()
        .ok_or_else(|| anyhow::anyhow!("-drive {}: no medium", d.id))?;
    actors::block::open(registry, &d.id, drive_options(d, path))
        .map_err(|e| anyhow::anyhow!("-drive {}: {e}", d.id))
}

/// How drive `d`'s image at `path` is opened (the options given at start; a CD-ROM
/// read-only, raw unless told).
pub(crate) fn drive_options(
    d: &crate::config::DriveConfig,
    path: std::path::PathBuf,
) -> BlockOptions {
    let cdrom = d.media == Media::Cdrom;
    BlockOptions {
        path,
        read_only: d.readonly || cdrom,
        format: match d.format {
            Some(ImageFormat::Raw) => Some(actors::block::Format::Raw),
            Some(ImageFormat::Qcow2) => Some(actors::block::Format::Qcow2),
            None if cdrom => Some(actors::block::Format::Raw),
            None => None,
        },
        ignore_flush: d.cache == CacheMode::Unsafe,
        write_through: matches!(d.cache, CacheMode::Writethrough | CacheMode::DirectSync),
        direct: matches!(d.cache, CacheMode::None | CacheMode::DirectSync),
        snapshot: d.snapshot,
        aio: match d.aio {
            crate::config::AioMode::Threads => actors::block::Aio::Threads,
            crate::config::AioMode::IoUring | crate::config::AioMode::Native => {
                actors::block::Aio::IoUring
            }
        },
    }
}
