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
use actors::supervisor::{AnonIds, BackendKind, DeviceTree, Node, Resource};
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

pub mod cpuhp;
pub mod fw_cfg;
pub mod hotblk;
pub mod hotnet;
pub mod hotpci;
pub mod memhp;
pub mod nic;
pub mod pci;
pub mod pcihp;
pub mod tree;
pub mod usb;
pub mod vga;
pub mod virtio;

/// Bitmap of the bus-0 slots that may be hot-(un)plugged: all but the chipset's and the
/// std VGA's (QEMU's VGA is not hotpluggable).
pub fn hotplug_slots(cfg: &VmConfig) -> u32 {
    let mut fixed = crate::tables::dsdt::FIXED_SLOTS;
    if cfg.vga == crate::config::VgaKind::Std {
        fixed |= 1 << vga::VGA_SLOT.0;
    }
    !fixed
}

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
    /// The tree so far: the backends opened before the devices (chardevs, display).
    pub tree: DeviceTree,
    /// The netdevs, for their nodes' teardowns.
    pub netdevs: hotnet::SharedNetdevs,
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
    /// ACPI PCI hotplug (0xAE00).
    pub pcihp: Arc<pcihp::Pcihp>,
    /// ACPI CPU hotplug (0xAF00).
    pub cpuhp: Arc<cpuhp::Cpuhp>,
    /// ACPI memory hotplug (0x0A00; on the bus with `-m ...,slots=N`, N > 0).
    pub memhp: Arc<memhp::Memhp>,
    /// The devices `device_add` plugged (set once the machine is built).
    pub hot_pci: Option<Arc<hotpci::HotPci>>,
    /// The USB controller and its devices, if the machine has USB.
    pub usb: Option<usb::Usb>,
}

/// What every stage of [`DeviceSet::build`] reads: the configuration, the VM, the buses
/// and where actors run; and the tree the stages add their nodes to, in build order.
struct Board<'a> {
    cfg: &'a VmConfig,
    kvm: Arc<KvmVm>,
    mem: GuestMemoryMmap,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    events: EventTx,
    /// The same events as the device models post them.
    shared: devices::SharedEvents,
    rt: tokio::runtime::Handle,
    registry: Registry,
    netdevs: hotnet::SharedNetdevs,
    tree: DeviceTree,
}

/// The chipset's parts the other stages use.
struct Chipset {
    pm: Arc<Mutex<AcpiPm>>,
    pci: Arc<PciPlatform>,
    pcihp: Arc<pcihp::Pcihp>,
    cpuhp: Arc<cpuhp::Cpuhp>,
    memhp: Arc<memhp::Memhp>,
}

impl DeviceSet {
    /// The board, stage by stage, each device added to the tree as it is built (a device
    /// after what it uses): chipset → ISA devices (port 0x92, UARTs, RTC, i8042) → fw_cfg
    /// → IDE → VGA → the `-device`s → isa-debug-exit → every PCI function's power-on state.
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
            tree,
            netdevs,
        } = p;
        let direct_boot = bios.is_none();
        let shared: devices::SharedEvents = Arc::new(events.clone());
        let mut b = Board {
            cfg,
            kvm,
            mem,
            pio,
            mmio,
            events,
            shared,
            rt,
            registry,
            netdevs,
            tree,
        };
        let chipset = b.chipset(bios)?;
        b.legacy_ports()?;
        b.port92(&chipset)?;
        let serials = b.serials(&chipset, serials)?;
        let rtc = b.rtc(&chipset)?;
        let (input, i8042) = b.i8042(&chipset)?;
        let fw_cfg = b.fw_cfg(&chipset)?;
        let ide = b.ide(&chipset)?;
        let vga = b.vga(&chipset, display, direct_boot, coalesced)?;
        let names = b.device_ids();
        let virtio = b.pci_devices(&chipset, &names, consoles, &mut guestfwds)?;
        let usb = b.usb(&chipset, &names)?;
        b.debug_exits(&chipset, &names)?;
        chipset.pci.reset()?;
        Ok(Self {
            tree: b.tree,
            serials,
            rtc,
            i8042,
            pm: chipset.pm,
            pci: chipset.pci,
            fw_cfg,
            input,
            ide,
            vga,
            virtio,
            pcihp: chipset.pcihp,
            cpuhp: chipset.cpuhp,
            memhp: chipset.memhp,
            hot_pci: None,
            usb,
        })
    }

    /// Power-on state for every device (`system_reset`, guest reset).
    pub fn reset(&self) -> Result<()> {
        for s in &self.serials {
            s.reset();
        }
        self.rtc.model.run(devices::rtc::Rtc::reset);
        lock(self.i8042.model()).reset();
        lock(&self.pm).reset();
        self.pcihp.reset();
        lock(&self.fw_cfg).reset();
        self.ide.reset();
        self.virtio.reset();
        if let Some(h) = &self.hot_pci {
            h.reset();
        }
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

impl Board<'_> {
    /// Put `node` in the tree, with what the PCI bus decodes for it.
    fn add(&mut self, c: &Chipset, node: Node) -> Result<()> {
        tree::add_device(&mut self.tree, &c.pci, node)?;
        Ok(())
    }

    /// Put a backend's node in the tree (before the device that uses it).
    fn add_backend(&mut self, node: Node) -> Result<()> {
        self.tree.insert(node)?;
        Ok(())
    }

    /// `node` uses the backend `kind`/`name` if the tree has it.
    fn using(&self, node: Node, kind: BackendKind, name: &str) -> Node {
        let id = kind.id(name);
        if self.tree.get(&id).is_some() {
            node.uses(id)
        } else {
            node
        }
    }

    /// An interrupt line of the in-kernel irqchip.
    fn irq(&self, gsi: u32) -> Arc<dyn devices::IrqLine> {
        KvmIrqLine::new(self.kvm.vm.clone(), gsi)
    }

    /// The i440FX host bridge and PIIX3/PIIX4: ACPI PM (the block moves with PMBA; GPE0 is
    /// fixed at 0xafe0), the configuration ports, 0xCF9 (the PIIX reset control register).
    fn chipset(&mut self, bios: Option<Arc<Bios>>) -> Result<Chipset> {
        let pm = Arc::new(Mutex::new(AcpiPm::new(
            self.irq(9),
            self.shared.clone(),
            Box::new(|| HostClock { offset_secs: 0 }.monotonic_ns()),
        )));
        self.pio
            .insert(0xafe0, 4, "acpi-gpe0", Arc::new(GpePort(pm.clone())))?;
        let pci = PciPlatform::new(
            self.kvm.clone(),
            self.pio.clone(),
            self.mmio.clone(),
            crate::vm::memory::low_ram_host(&self.mem),
            bios,
            pm.clone(),
            ResetControl::new(self.shared.clone()),
        );
        self.pio.insert(0xcf8, 8, "pci-conf", pci.config_port())?;
        let pcihp = pcihp::Pcihp::new(hotplug_slots(self.cfg), pm.clone(), self.events.clone());
        self.pio.insert(
            u64::from(devices::pci::hotplug::PCIHP_BASE),
            u64::from(devices::pci::hotplug::PCIHP_LEN),
            "acpi-pcihp",
            pcihp.clone(),
        )?;
        // ACPI CPU hotplug: every possible CPU, as the DSDT numbers them.
        let cpus = crate::machine::acpi_config(self.cfg).dsdt.cpus;
        let cpuhp = cpuhp::Cpuhp::new(&cpus, pm.clone(), self.events.clone());
        self.pio.insert(
            u64::from(devices::cpu_hotplug::CPUHP_BASE),
            u64::from(devices::cpu_hotplug::CPUHP_LEN),
            "acpi-cpuhp",
            cpuhp.clone(),
        )?;
        // ACPI memory hotplug: one slot per `slots=`, decoded only when there are any.
        let memhp = memhp::Memhp::new(self.cfg.memory_slots, pm.clone(), self.events.clone());
        let mut parts = vec![
            pci::part("acpi-pm", &pm),
            pci::part("acpi-pcihp", &pcihp.model),
            pci::part("acpi-cpuhp", &cpuhp.model),
        ];
        if self.cfg.memory_slots > 0 {
            self.pio.insert(
                u64::from(devices::mem_hotplug::MEMHP_BASE),
                u64::from(devices::mem_hotplug::MEMHP_LEN),
                "acpi-memhp",
                memhp.clone(),
            )?;
            parts.push(pci::part("acpi-memhp", &memhp.model));
        }
        tree::chipset(
            &mut self.tree,
            &pci,
            pci.control(),
            ControlHandle::models("acpi-pm", parts, || {}),
        )?;
        Ok(Chipset {
            pm,
            pci,
            pcihp,
            cpuhp,
            memhp,
        })
    }

    /// Port 0x80 (POST codes, ignored) and, when its log target is on, SeaBIOS's debug
    /// console at 0x402.
    fn legacy_ports(&mut self) -> Result<()> {
        self.pio.insert(0x80, 1, "ioport80", Arc::new(Sink80))?;
        if tracing::enabled!(target: "debugcon", tracing::Level::DEBUG) {
            self.pio
                .insert(0x402, 1, "debugcon", Arc::new(DebugCon::default()))?;
        }
        Ok(())
    }

    /// Port 0x92 (fast A20 and reset).
    fn port92(&mut self, c: &Chipset) -> Result<()> {
        let port92 = Arc::new(Mutex::new(Port92::new(self.shared.clone())));
        self.pio
            .insert(0x92, 1, "port92", Locked::new(port92.clone()))?;
        self.add(
            c,
            Node::new(tree::board_id("port92", None), "port92", "isa.0")
                .with(Resource::IoPorts { base: 0x92, len: 1 })
                .control(ControlHandle::models(
                    "port92",
                    vec![pci::part("port92", &port92)],
                    || {},
                )),
        )
    }

    /// The 16550 UARTs (COM1..COM4), each on its chardev.
    fn serials(
        &mut self,
        c: &Chipset,
        chardevs: Vec<(ChardevHandle, mpsc::Receiver<FrontendEvent>)>,
    ) -> Result<Vec<Arc<SerialPort>>> {
        let mut ports = Vec::new();
        for (i, (ch, input)) in chardevs.into_iter().enumerate().take(4) {
            let (port, irq) = COM_PORTS[i];
            let id = format!("serial{i}");
            let model = (Serial::new(), self.irq(irq), ch.sink());
            let s = start_serial(&self.rt, &self.registry, &id, model, input);
            self.pio.insert(u64::from(port), 8, &id, s.clone())?;
            // Input from the chardev waits while the VM is stopped. A restore sets the
            // model's line; it is driven at the resume.
            let uart = s.clone();
            let control =
                ControlHandle::models(&id, vec![pci::part(&id, s.model())], move || uart.flush())
                    .with_gate(s.gate());
            // A `-device isa-serial,id=ID` is `/machine/peripheral/ID`.
            let user_id = self.cfg.serial_ids.get(i).cloned().flatten();
            let node = match user_id {
                Some(u) => Node::new(u, "isa-serial", "isa.0").user(),
                None => Node::new(tree::board_id("isa-serial", Some(i)), "isa-serial", "isa.0"),
            };
            let node = self.using(node, BackendKind::Chardev, &id);
            self.add(
                c,
                node.with(Resource::IoPorts { base: port, len: 8 })
                    .with(Resource::Irq(irq))
                    .prop("index", tree::num(i as u64))
                    .prop("iobase", tree::num(u64::from(port)))
                    .prop("irq", tree::num(u64::from(irq)))
                    .control(control),
            )?;
            ports.push(s);
        }
        Ok(ports)
    }

    /// The CMOS RTC (with the RAM size, CPU count and boot order SeaBIOS reads from it).
    fn rtc(&mut self, c: &Chipset) -> Result<Arc<RtcPort>> {
        let cfg = self.cfg;
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
            &self.rt,
            &self.registry,
            Rtc::new(cmos, Box::new(clock)),
            self.irq(8),
            || HostClock { offset_secs: 0 }.monotonic_ns(),
        );
        self.pio.insert(0x70, 2, "rtc", rtc.clone())?;
        self.add(
            c,
            Node::new(tree::board_id("mc146818rtc", None), "mc146818rtc", "isa.0")
                .with(Resource::IoPorts { base: 0x70, len: 2 })
                .with(Resource::Irq(8))
                .prop("base_year", tree::num(0))
                .prop("iobase", tree::num(0x70))
                .prop("irq", tree::num(8))
                .control(rtc.control.clone()),
        )?;
        Ok(rtc)
    }

    /// The i8042 PS/2 keyboard and mouse controller; its handle is where guest input goes.
    fn i8042(&mut self, c: &Chipset) -> Result<(InputHandle, Arc<I8042Port>)> {
        let (input, i8042) = start_input(
            &self.rt,
            &self.registry,
            I8042::new(self.irq(1), self.irq(12), self.shared.clone()),
        );
        self.pio.insert(0x60, 5, "i8042", i8042.clone())?;
        self.add(
            c,
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
        Ok((input, i8042))
    }

    /// fw_cfg at 0x510 (with DMA into guest RAM).
    fn fw_cfg(&mut self, c: &Chipset) -> Result<Arc<Mutex<FwCfg>>> {
        let layout = crate::vm::memory::RamLayout::pc(self.cfg.memory);
        let mut fw = fw_cfg::build(self.cfg, &layout);
        fw.set_memory(self.mem.clone());
        let fw_cfg = Arc::new(Mutex::new(fw));
        self.pio
            .insert(0x510, 12, "fwcfg", Locked::new(fw_cfg.clone()))?;
        self.add(
            c,
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
        Ok(fw_cfg)
    }

    /// The PIIX3 IDE controller: its legacy ports, its bus-master BAR, its drives.
    fn ide(&mut self, c: &Chipset) -> Result<Arc<IdeHost>> {
        let ide = build_ide(self.cfg, &self.kvm, &self.mem, &self.registry)?;
        for (n, (cmd, ctl)) in [(0x1f0u64, 0x3f6u64), (0x170, 0x376)]
            .into_iter()
            .enumerate()
        {
            self.pio.insert(
                cmd,
                8,
                &format!("ide{n}"),
                Arc::new(IdeCommandPort(ide.clone(), n)),
            )?;
            self.pio.insert(
                ctl,
                1,
                &format!("ide{n}-ctl"),
                Arc::new(IdeControlPort(ide.clone(), n)),
            )?;
        }
        c.pci.bind_bar(
            pci::IDE_SLOT,
            4,
            "piix-bmdma",
            pci::BarTarget::Io(Arc::new(IdeBusMasterPort(ide.clone()))),
        );
        let mut node = tree::pci_node(
            tree::board_id("piix3-ide", None),
            "piix3-ide",
            pci::IDE_SLOT,
        )
        .providing("ide.0", "IDE")
        .providing("ide.1", "IDE");
        for d in &self.cfg.drives {
            let Some(b) = d
                .index
                .filter(|_| d.interface == DriveInterface::Ide)
                .and_then(|i| ide.backend(i as usize))
            else {
                continue;
            };
            self.add_backend(block_node(&d.id, &b))?;
            node = node.uses(BackendKind::Block.id(&d.id));
        }
        for (cmd, ctl, irq) in [(0x1f0, 0x3f6, 14), (0x170, 0x376, 15)] {
            node = node
                .with(Resource::IoPorts { base: cmd, len: 8 })
                .with(Resource::IoPorts { base: ctl, len: 1 })
                .with(Resource::Irq(irq));
        }
        self.add(c, node.control(ide.control()))?;
        Ok(ide)
    }

    /// The std VGA, unless `-vga none`.
    fn vga(
        &mut self,
        c: &Chipset,
        display: actors::display::DisplayWriter,
        direct_boot: bool,
        coalesced: Arc<std::sync::OnceLock<Arc<actors::coalesced::CoalescedRing>>>,
    ) -> Result<Option<vga::Display>> {
        if self.cfg.vga != crate::config::VgaKind::Std {
            return Ok(None);
        }
        let v = vga::build(&vga::VgaParts {
            pci: &c.pci,
            pio: &self.pio,
            mmio: &self.mmio,
            kvm: &self.kvm,
            registry: &self.registry,
            display,
            direct_boot,
            coalesced,
        })?;
        self.add(
            c,
            vga_node(self.cfg.vga_id.clone())
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
        Ok(Some(v))
    }

    /// Each `-device`'s tree id: its `id=` (true: the user's), or QEMU's name for an
    /// anonymous device.
    fn device_ids(&self) -> Vec<(String, bool)> {
        let mut anon = AnonIds::default();
        self.cfg
            .devices
            .iter()
            .map(|d| match &d.id {
                Some(id) => (id.clone(), true),
                None => (anon.take(), false),
            })
            .collect()
    }

    /// The PCI `-device`s (virtio devices and NICs), in command-line order.
    fn pci_devices(
        &mut self,
        c: &Chipset,
        names: &[(String, bool)],
        consoles: Vec<(usize, ChardevHandle, mpsc::Receiver<FrontendEvent>)>,
        guestfwds: &mut nic::GuestFwdChardevs,
    ) -> Result<virtio::VirtioDevices> {
        let cfg = self.cfg;
        let registry = &self.registry;
        let virtio = virtio::build(
            cfg,
            &self.kvm,
            &self.mem,
            &c.pci,
            virtio::Frontends {
                consoles,
                guestfwds,
            },
            virtio::Actors {
                rt: &self.rt,
                registry,
            },
            &mut |id| {
                let d = cfg
                    .drives
                    .iter()
                    .find(|d| d.id == id)
                    .ok_or_else(|| anyhow::anyhow!("drive '{id}' not found"))?;
                open_drive(registry, d, cfg.incoming.is_some())
            },
        )?;
        for n in hotnet::start_nodes(cfg, &virtio.nics, &self.netdevs) {
            self.add_backend(n)?;
        }
        for disk in &virtio.disks {
            self.add_backend(block_node(&disk.drive, &disk.backend))?;
        }
        for p in &virtio.placed {
            let d = &cfg.devices[p.device];
            let Some(slot) = d.addr else { continue };
            let (id, user) = names[p.device].clone();
            let mut node = tree::pci_node(id, d.kind.driver(), slot)
                .prop("addr", format!("{:02x}.{:x}", slot.0, slot.1));
            match &d.kind {
                DeviceKind::Nic {
                    netdev: Some(n), ..
                } => node = self.using(node, BackendKind::Netdev, n),
                DeviceKind::VirtioBlk { drive, .. } => {
                    node = self.using(node, BackendKind::Block, drive)
                }
                _ => {}
            }
            if !p.msi_gsis.is_empty() {
                node = node.with(Resource::MsiRoutes(p.msi_gsis.clone()));
            }
            if let Some(h) = &p.host {
                node = node
                    .with(Resource::Ioeventfds(h.queues() as u16))
                    .placement(Arc::new(tree::PciPlacement {
                        pci: c.pci.clone(),
                        slot,
                        virtio: Some(h.clone()),
                    }));
            }
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
            self.add(c, node.control(p.control.clone()))?;
        }
        Ok(virtio)
    }

    /// The USB controller and the devices on it, if the configuration has one.
    fn usb(&mut self, c: &Chipset, names: &[(String, bool)]) -> Result<Option<usb::Usb>> {
        let built = usb::build(usb::UsbParts {
            cfg: self.cfg,
            names,
            pci: &c.pci,
            kvm: &self.kvm,
            mem: &self.mem,
            rt: &self.rt,
            registry: &self.registry,
        })?;
        let Some((usb, nodes)) = built else {
            return Ok(None);
        };
        for n in nodes {
            self.add(c, n)?;
        }
        Ok(Some(usb))
    }

    /// Each `-device isa-debug-exit`: a guest write there ends the VM with a status.
    fn debug_exits(&mut self, c: &Chipset, names: &[(String, bool)]) -> Result<()> {
        for (i, d) in self.cfg.devices.iter().enumerate() {
            let DeviceKind::IsaDebugExit { iobase, iosize } = d.kind else {
                continue;
            };
            self.pio.insert(
                u64::from(iobase),
                u64::from(iosize),
                "isa-debug-exit",
                Arc::new(DebugExit(self.events.clone())),
            )?;
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
            self.add(c, node)?;
        }
        Ok(())
    }
}

/// The node of drive `id`'s image (`/block/ID`), run by its block engine.
fn block_node(id: &str, b: &BlockHandle) -> Node {
    Node::backend(BackendKind::Block, id, b.format.name())
        .prop("file", format!("\"{}\"", b.path.display()))
        .actor(&format!("blk-{id}"))
        .image(b.activation())
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
            Some(_) => Some(open_drive(registry, d, cfg.incoming.is_some())?),
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
    let mut ide = Ide::new(drives);
    ide.set_memory(mem.clone());
    let irqs: [Arc<dyn devices::IrqLine>; 2] = [
        KvmIrqLine::new(kvm.vm.clone(), 14),
        KvmIrqLine::new(kvm.vm.clone(), 15),
    ];
    Ok(IdeHost::new(ide, irqs, backends))
}

/// Open a drive's image and start its block backend actor.
/// Open drive `d`'s image; for a VM waiting for an incoming migration (`incoming`),
/// inactive: the source still writes it, the supervisor activates it once the migration
/// is in.
fn open_drive(
    registry: &Registry,
    d: &crate::config::DriveConfig,
    incoming: bool,
) -> Result<BlockHandle> {
    let path = d
        .file
        .clone()
        .ok_or_else(|| anyhow::anyhow!("-drive {}: no medium", d.id))?;
    let opts = drive_options(d, path);
    let opened = if incoming {
        actors::block::open_inactive(registry, &d.id, opts)
    } else {
        actors::block::open(registry, &d.id, opts)
    };
    opened.map_err(|e| anyhow::anyhow!("-drive {}: {e}", d.id))
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

/// The VGA's node: `/machine/peripheral/ID` for a `-device VGA,id=ID`, else the board's;
/// with its memory size as QEMU shows it (`vgamem_mb`).
fn vga_node(user_id: Option<String>) -> Node {
    let vgamem_mb = (devices::vga::VRAM_SIZE >> 20) as u64;
    let node = match user_id {
        Some(id) => tree::pci_node(id, "VGA", vga::VGA_SLOT).user(),
        None => tree::pci_node(tree::board_id("VGA", None), "VGA", vga::VGA_SLOT),
    };
    node.prop("vgamem_mb", tree::num(vgamem_mb))
}
