//! VM assembly: from a validated `VmConfig` to a running set of actors.
//!
//! Order: KVM VM (irqchip, PIT) → guest RAM → buses and devices → vCPUs (CPUID, reset
//! template) → boot (direct kernel or firmware) → vCPU threads (pinned) → supervisor.
//! [`PcMachine`] keeps what a reset needs (device models, how to reload the kernel) and
//! implements the supervisor's `Machine` trait.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actors::bus::lock;

use actors::bus::Bus;
use actors::chardev::{spawn_chardev, Backend, ChardevHandle};
use actors::events::{event_channel, EventTx};
use actors::monitor::handles::{ChipsetHandle, DrivesHandle, MemoryHandle, NetHandle};
use actors::monitor::{self, MonitorBackend, MonitorContext, MonitorSpec, MuxHandle, Protocol};
use actors::runtime::Registry;
use actors::supervisor::{
    BackendKind, DeviceTree, ExitReason, Node, Supervisor, SupervisorConfig, SupervisorHandle,
};
use actors::vcpu::{spawn_vcpu, VcpuBootState, VcpuContext, VcpuHandle};
use anyhow::{anyhow, Context, Result};
use devices::memory::GuestMemoryMmap;

use crate::boot::{self, BootParams, MemEntry};
use crate::config::{BootConfig, CharBackend, MonitorMode, VcpuPin, VmConfig};
use crate::tables::acpi::{AcpiConfig, AcpiTables};
use crate::tables::dsdt::DsdtConfig;
use crate::vm::cpuid;
use crate::vm::firmware::Bios;
use crate::vm::kvm::KvmVm;
use crate::vm::memory::{self, RamLayout};
use crate::vm::regs::VcpuTemplate;
use crate::vm::topology::Topology;

/// Where the kernel comes from, so a reset can load it again.
#[derive(Clone)]
pub enum KernelSource {
    /// Built into the binary (the demo guest).
    Embedded(&'static [u8]),
    File(PathBuf),
}

impl KernelSource {
    /// The kernel image, if it fits in `ram` bytes of guest RAM.
    fn read(&self, ram: u64) -> Result<std::borrow::Cow<'static, [u8]>> {
        match self {
            Self::Embedded(b) => Ok(std::borrow::Cow::Borrowed(b)),
            Self::File(p) => crate::files::read_bounded(p, ram, "guest RAM")
                .map(std::borrow::Cow::Owned)
                .map_err(|e| anyhow!("-kernel {}: {e}", p.display())),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Embedded(_) => "(built-in demo guest)".into(),
            Self::File(p) => p.display().to_string(),
        }
    }
}

/// How the BSP starts.
#[derive(Clone)]
pub enum BootPlan {
    Direct {
        kernel: KernelSource,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Reset into the firmware at the top of 4 GiB.
    Firmware,
}

/// The machine as the supervisor sees it.
pub struct PcMachine {
    mem: GuestMemoryMmap,
    layout: RamLayout,
    templates: Vec<VcpuTemplate>,
    apic_ids: Vec<u32>,
    plan: BootPlan,
    devices: crate::platform::DeviceSet,
    acpi: AcpiTables,
    /// The VM (for its VM-wide state: irqchip, PIT, clock).
    kvm: Arc<KvmVm>,
    /// Where threads it starts register (announcements after a migration).
    registry: Registry,
    /// The kvmclock when the vCPUs were stopped (None while they run): restored when they
    /// run again, so the guest's time does not jump by the pause (QEMU's kvmclock does the
    /// same).
    stopped_clock: std::sync::Mutex<Option<u64>>,
}

/// Where direct boot puts the ACPI RSDP and tables (the BIOS area, below the MP table).
pub const ACPI_RSDP_ADDR: u64 = 0xe_0000;
pub const ACPI_TABLES_ADDR: u64 = 0xe_0040;

/// The ACPI description of this machine.
pub fn acpi_config(cfg: &VmConfig) -> AcpiConfig {
    let topo = Topology::from_smp(&cfg.smp);
    let layout = RamLayout::pc(cfg.memory);
    AcpiConfig {
        dsdt: DsdtConfig {
            cpus: (0..cfg.smp.maxcpus.max(cfg.smp.cpus))
                .map(|i| (i < cfg.smp.cpus, topo.apic_id(i)))
                .collect(),
            serials: crate::platform::COM_PORTS
                .iter()
                .take(cfg.serials.len())
                .map(|(port, irq)| (*port, *irq as u8))
                .collect(),
            pci_window32: (layout.below_4g.max(0x8000_0000) as u32, 0xfebf_ffff),
            pci_window64: None,
            hotplug_slots: crate::platform::hotplug_slots(cfg),
            mem_slots: cfg.memory_slots,
        },
        srat: (cfg.maxmem > cfg.memory).then(|| {
            let region =
                crate::vm::memory::DeviceMemory::pc(cfg.memory, cfg.memory_slots, cfg.maxmem);
            crate::tables::acpi::SratConfig {
                below_4g: layout.below_4g,
                above_4g: layout.above_4g,
                device_memory: (region.base, region.size),
            }
        }),
    }
}

/// The stopped clock's lock (a panic elsewhere leaves the value usable).
fn lock_clock(m: &std::sync::Mutex<Option<u64>>) -> std::sync::MutexGuard<'_, Option<u64>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PcMachine {
    /// Set the guest's kvmclock to `clock` ns (KVM updates every vCPU's pvclock page).
    fn set_clock(&self, clock: u64) -> Result<(), String> {
        self.kvm
            .vm
            .set_clock(&kvm_bindings::kvm_clock_data {
                clock,
                ..Default::default()
            })
            .map_err(|e| format!("KVM_SET_CLOCK: {e}"))
    }

    fn memmap(&self) -> Vec<MemEntry> {
        crate::tables::e820::e820(&self.layout)
    }

    /// Load the guest and produce every vCPU's boot state.
    fn boot_states(&self) -> Result<Vec<VcpuBootState>> {
        match &self.plan {
            BootPlan::Firmware => Ok(self
                .templates
                .iter()
                .enumerate()
                .map(|(i, t)| t.power_on(i == 0))
                .collect()),
            BootPlan::Direct {
                kernel,
                initrd,
                cmdline,
            } => {
                let ram = self.layout.below_4g + self.layout.above_4g;
                let image = kernel.read(ram)?;
                let initrd_bytes = match initrd {
                    Some(p) => Some(
                        crate::files::read_bounded(p, ram, "guest RAM")
                            .map_err(|e| anyhow!("-initrd {}: {e}", p.display()))?,
                    ),
                    None => None,
                };
                let memmap = self.memmap();
                let (rsdp, placed) = self.acpi.place(ACPI_RSDP_ADDR, ACPI_TABLES_ADDR);
                for (addr, bytes) in &placed {
                    boot::write(&self.mem, *addr, bytes, "ACPI tables")
                        .map_err(|e| anyhow!("{e}"))?;
                }
                let params = BootParams {
                    initrd: initrd_bytes.as_deref(),
                    cmdline,
                    memmap: &memmap,
                    rsdp: Some(rsdp),
                    low_ram_end: self.layout.below_4g,
                };
                boot::mptable::write_mptable(&self.mem, &self.apic_ids)
                    .map_err(|e| anyhow!("{e}"))?;
                let bsp = boot::load(&self.mem, &image, &params, &self.templates[0])
                    .map_err(|e| anyhow!("-kernel {}: {e}", kernel.name()))?;
                let mut states = vec![bsp];
                for t in &self.templates[1..] {
                    states.push(t.power_on(false));
                }
                Ok(states)
            }
        }
    }
}

impl actors::supervisor::Machine for PcMachine {
    fn reset(&self) -> Result<Vec<VcpuBootState>, String> {
        self.devices.reset().map_err(|e| format!("{e:#}"))?;
        self.boot_states().map_err(|e| format!("{e:#}"))
    }

    fn power_button(&self) -> bool {
        self.devices.power_button()
    }

    fn announce(&self, a: actors::net::Announce) -> Result<(), String> {
        let nics = self.devices.virtio.nics.clone();
        crate::platform::nic::announce_on_schedule(&self.registry, nics, &a)
            .map_err(|e| e.to_string())
    }

    fn save_vm_state(&self) -> Result<Vec<devices::Section>, String> {
        // A stopped guest's time is the time it stopped at (KVM's clock ran on meanwhile).
        if let Some(clock) = *lock_clock(&self.stopped_clock) {
            self.set_clock(clock)?;
        }
        // KvmStateError's messages carry their cause.
        actors::kvm_state::save_vm_state(&self.kvm.vm).map_err(|e| e.to_string())
    }

    fn restore_vm_state(&self, sections: &[devices::Section]) -> Result<(), String> {
        actors::kvm_state::restore_vm_state(&self.kvm.vm, sections).map_err(|e| e.to_string())?;
        // The restored clock is the guest's time now.
        *lock_clock(&self.stopped_clock) = None;
        Ok(())
    }

    fn clock_stop(&self) {
        let mut stopped = lock_clock(&self.stopped_clock);
        if stopped.is_none() {
            match self.kvm.vm.get_clock() {
                Ok(c) => *stopped = Some(c.clock),
                Err(e) => tracing::warn!("KVM_GET_CLOCK: {e}"),
            }
        }
    }

    fn clock_start(&self) {
        if let Some(clock) = lock_clock(&self.stopped_clock).take() {
            if let Err(e) = self.set_clock(clock) {
                tracing::warn!("{e}");
            }
        }
    }

    fn ram(&self) -> Option<GuestMemoryMmap> {
        Some(self.mem.clone())
    }

    fn log_dirty(&self, on: bool) -> Result<(), String> {
        self.kvm.set_ram_dirty_log(on).map_err(|e| e.to_string())?;
        if on {
            devices::memory::take_dirty(&self.mem);
        }
        Ok(())
    }

    fn take_dirty(&self) -> Result<Vec<(u64, Vec<u64>)>, String> {
        crate::vm::dirty_pages(&self.kvm, &self.mem).map_err(|e| e.to_string())
    }

    fn device_ram(&self) -> Vec<Arc<dyn actors::migration::DeviceRam>> {
        self.devices.vga.iter().map(|v| v.vram()).collect()
    }
}

/// The `-cpu` option as a migration's two sides compare it (`qemu64,+aes,-avx`).
fn cpu_spec(c: &crate::config::CpuConfig) -> String {
    let mut s = c.model.clone();
    for (f, on) in &c.features {
        s.push_str(&format!(",{f}={}", if *on { "on" } else { "off" }));
    }
    for f in &c.plus {
        s.push_str(&format!(",+{f}"));
    }
    for f in &c.minus {
        s.push_str(&format!(",-{f}"));
    }
    s
}

/// A built VM, ready to run.
pub struct Vm {
    pub supervisor: Supervisor,
    pub chardevs: Vec<ChardevHandle>,
    pub handle: SupervisorHandle,
    pub vcpus: Vec<VcpuHandle>,
    pub kvm: Arc<KvmVm>,
    /// Guest RAM (the machine-state tests read it).
    #[allow(dead_code)]
    pub mem: GuestMemoryMmap,
    pub console: Console,
    /// Monitors started (where they listen), for the demo's banner.
    pub monitors: Vec<monitor::StartedMonitor>,
    /// Tap `downscript=`s to run as the VM ends: (script, ifname).
    pub downscripts: Vec<(std::path::PathBuf, String)>,
    /// The NICs and the backends `netdev_add` opened, closed (their down scripts run) as
    /// the VM ends.
    pub hot: Arc<crate::monitor_info::PcNet>,
    /// `-loadvm TAG`: load it before the VM runs (then run unless `-S`).
    pub loadvm: Option<(MonitorContext, String, bool)>,
    /// `-chardev`s no front end uses, open for the VM's life as in QEMU (their input
    /// waits unread).
    pub idle_chardevs: Vec<(
        ChardevHandle,
        tokio::sync::mpsc::Receiver<actors::chardev::FrontendEvent>,
    )>,
}

/// Which host cores each vCPU gets.
pub fn pin_plan(pin: &VcpuPin, cpus: u32) -> Result<Vec<Option<Vec<usize>>>> {
    // `-sandbox resourcecontrol=deny` forbids affinity calls (libvirt pins from outside):
    // the default pinning steps aside, an explicit one cannot be honoured.
    if actors::sandbox::policy().is_some_and(|p| p.enabled && p.deny_resource_control) {
        return match pin {
            VcpuPin::Explicit(_) => Err(anyhow!(
                "-vcpu-pin: pinning is forbidden by -sandbox resourcecontrol=deny"
            )),
            VcpuPin::Auto | VcpuPin::None => Ok(vec![None; cpus as usize]),
        };
    }
    let allowed = actors::allowed_cores().context("sched_getaffinity")?;
    Ok((0..cpus)
        .map(|i| match pin {
            VcpuPin::None => None,
            VcpuPin::Auto => Some(vec![allowed[i as usize % allowed.len()]]),
            VcpuPin::Explicit(map) => map
                .iter()
                .find(|(v, _)| *v == i)
                .map(|(_, cores)| cores.clone()),
        })
        .collect())
}

/// Resolve a command-line character backend into an actors-level one (a `chardev:ID`
/// through its `-chardev`).
fn chardev_backend(cfg: &VmConfig, console: &Console, b: &CharBackend) -> Result<Option<Backend>> {
    Ok(Some(match b {
        CharBackend::None => return Ok(None),
        CharBackend::Vc(v) => Backend::Vc(
            lock(&console.vcs)
                .remove(&v.index)
                .ok_or_else(|| anyhow!("text console {} is used twice", v.index + 1))?,
        ),
        CharBackend::Null => Backend::Null,
        CharBackend::Stdio | CharBackend::MuxStdio => Backend::Stdio { signals: true },
        CharBackend::File(p) => Backend::File(p.clone()),
        CharBackend::Pty => Backend::Pty,
        CharBackend::Tcp {
            addr,
            server,
            wait,
            telnet,
            nodelay,
        } => {
            let sa = addr
                .resolve()
                .with_context(|| format!("cannot resolve {}:{}", addr.host, addr.port))?;
            if *server {
                Backend::TcpServer {
                    addr: sa,
                    wait: *wait,
                    telnet: *telnet,
                    nodelay: *nodelay,
                }
            } else {
                Backend::TcpClient {
                    addr: sa,
                    telnet: *telnet,
                    nodelay: *nodelay,
                }
            }
        }
        CharBackend::Unix { path, server, wait } => {
            if *server {
                Backend::UnixServer {
                    path: path.clone(),
                    wait: *wait,
                }
            } else {
                Backend::UnixClient { path: path.clone() }
            }
        }
        CharBackend::ListenerFd { fd, wait } => Backend::ListenerFd {
            fd: *fd,
            wait: *wait,
        },
        CharBackend::Named(id) => {
            let c = cfg
                .chardevs
                .iter()
                .find(|c| &c.id == id)
                .ok_or_else(|| anyhow!("chardev '{id}' not found"))?;
            if matches!(c.backend, CharBackend::Named(_)) {
                return Err(anyhow!("chardev '{id}' refers to another chardev"));
            }
            return chardev_backend(cfg, console, &c.backend);
        }
    }))
}

/// Refuse what the command line asked for but this build cannot do yet, naming it.
fn check_supported(cfg: &VmConfig) -> Result<()> {
    use crate::config::DeviceKind;
    use crate::config::{NetdevKind, NicModel};
    let served = |k: &NetdevKind| {
        matches!(
            k,
            NetdevKind::Tap { .. }
                | NetdevKind::User(_)
                | NetdevKind::Bridge { .. }
                | NetdevKind::Socket { .. }
        )
    };
    let is_served = |id: &str| cfg.netdevs.iter().any(|n| n.id == id && served(&n.kind));
    if cfg.loadvm.is_some() && cfg.incoming.is_some() {
        anyhow::bail!(
            "-loadvm and -incoming cannot be used together: the VM's state comes from one of them"
        );
    }
    for n in &cfg.netdevs {
        // An inherited tap fd is checked whether or not a NIC uses the netdev (as QEMU).
        if let NetdevKind::Tap { fd: Some(fd), .. } = &n.kind {
            // SAFETY: F_GETFD only reads the descriptor's flags; any int is safe to ask.
            if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                return Err(anyhow!(
                    "-netdev tap,id={id},fd={fd}: {id}: Can't use file descriptor {fd}: {}",
                    crate::cli::os_error_text(&std::io::Error::last_os_error()),
                    id = n.id
                ));
            }
        }
        if !served(&n.kind) {
            return Err(anyhow!(
                "-netdev {}: only tap, bridge, user and socket networking are available yet (hubport is not)",
                n.id
            ));
        }
    }
    for d in &cfg.devices {
        match &d.kind {
            DeviceKind::IsaDebugExit { .. }
            | DeviceKind::VirtioBlk { .. }
            | DeviceKind::VirtioRng
            | DeviceKind::VirtioBalloon { .. }
            | DeviceKind::VirtioTablet
            | DeviceKind::VirtioSerial
            | DeviceKind::VirtConsole { .. }
            | DeviceKind::Uhci
            | DeviceKind::UsbHid { .. } => {}
            // Without netdev= the NIC runs with no peer, as in QEMU (with its warning).
            DeviceKind::Nic {
                model: NicModel::VirtioNet | NicModel::E1000,
                netdev,
                ..
            } if netdev.as_deref().is_none_or(is_served) => {}
            DeviceKind::Nic { model, .. } => {
                return Err(anyhow!(
                    "-device {model:?}: its netdev is not a tap, bridge or user backend"
                ))
            }
            other => return Err(anyhow!("-device {}: not available yet", other.driver())),
        }
    }
    Ok(())
}

/// The `-cpu` model as this host's KVM can give it. Under `enforce` a requested feature
/// left out is an error (after a warning naming each, as QEMU prints them).
fn resolve_cpu(cfg: &VmConfig, host: &cpuid::HostCpu) -> Result<cpuid::ResolvedCpu> {
    let cpu = cpuid::resolve(&cfg.cpu, host)?;
    if cfg.cpu.props.enforce && !cpu.dropped.is_empty() {
        warn_dropped_features(&cpu);
    }
    cpu.enforce(cfg.cpu.props.enforce)?;
    Ok(cpu)
}

/// Under `check` (QEMU's default) a warning names each requested feature left out. Printed
/// once the machine is built, so a command line refused for another reason still gets one
/// line naming that reason (QEMU would print the warnings first).
fn warn_dropped_features(cpu: &cpuid::ResolvedCpu) {
    for d in &cpu.dropped {
        actors::report!("troupe: warning: {}", d.warning());
    }
}

/// Build the VM, stage by stage, each stage attaching one kind of thing after what it
/// needs: checks → consoles (display, VNC) → KVM VM → guest RAM → the supervisor's event
/// inbox → chardevs → firmware → the board's devices → input routing → vCPUs (CPUID) →
/// boot plan and ACPI tables → the monitor's view of the machine → boot state → vCPU
/// threads → supervisor → monitors.
pub fn build(
    cfg: &VmConfig,
    kernel_override: Option<KernelSource>,
    rt: &tokio::runtime::Runtime,
    registry: &Registry,
) -> Result<Vm> {
    check_supported(cfg)?;
    let console = start_console(cfg, rt, registry)?;
    let kvm = create_vm()?;
    let host = cpuid::HostCpu::read(&kvm.kvm)?;
    let cpu = resolve_cpu(cfg, &host)?;
    let (layout, mem) = guest_memory(cfg, &kvm)?;
    let pio = Arc::new(Bus::new("pio"));
    let mmio = Arc::new(Bus::new("mmio"));
    let (events, events_rx) = event_inbox(registry);
    let mut chardevs = open_chardevs(cfg, &console, rt, registry)?;
    let bios = load_firmware(cfg, kernel_override.is_some(), &kvm)?;
    let tree = backends(&chardevs, &console)?;
    let netdevs = crate::platform::hotnet::HotNetdevs::new(
        cfg.clone(),
        rt.handle().clone(),
        registry.clone(),
    );
    let hot_block = crate::platform::hotblk::HotBlock::new();
    let coalesced: Arc<std::sync::OnceLock<Arc<actors::coalesced::CoalescedRing>>> = Arc::default();
    let mut devices = crate::platform::DeviceSet::build(crate::platform::PlatformParts {
        cfg,
        kvm: kvm.clone(),
        mem: mem.clone(),
        pio: pio.clone(),
        mmio: mmio.clone(),
        events: events.clone(),
        serials: std::mem::take(&mut chardevs.serials),
        consoles: std::mem::take(&mut chardevs.consoles),
        guestfwds: std::mem::take(&mut chardevs.guestfwds),
        rt: rt.handle().clone(),
        registry: registry.clone(),
        bios,
        display: console.writer.clone(),
        coalesced: coalesced.clone(),
        tree,
        netdevs: netdevs.clone(),
    })?;
    let downscripts = std::mem::take(&mut devices.virtio.downscripts);
    let hot_pci = crate::platform::hotpci::HotPci::new(
        devices.pci.clone(),
        devices.pcihp.clone(),
        kvm.clone(),
        mem.clone(),
        devices.virtio.routes.clone(),
        registry.clone(),
    );
    devices.hot_pci = Some(hot_pci.clone());
    route_input(&console, &devices);
    if let Some(v) = &devices.vga {
        console.consoles.set_graphic_text(v.text());
    }
    let topo = Topology::from_smp(&cfg.smp);
    let (fds, templates) = create_vcpus(cfg, &kvm, &cpu, &topo)?;
    let hot_cpus = crate::platform::cpuhp::HotCpus::new(
        devices.cpuhp.clone(),
        kvm.clone(),
        cpu.clone(),
        topo,
        cfg.smp.maxcpus.max(cfg.smp.cpus),
        cfg.smp.cpus,
        &cfg.cpu.model,
        cfg.vcpu_pin.clone(),
        registry.clone(),
    );
    let hot_mem = crate::platform::memhp::HotMem::new(cfg, devices.memhp.clone(), kvm.clone());
    let plan = boot_plan(cfg, kernel_override);
    let acpi = acpi_tables(cfg, &plan, &devices)?;
    let sides = MachineSides {
        drives: Arc::new(crate::monitor_info::PcDrives {
            ide: devices.ide.clone(),
            drives: cfg.drives.clone(),
            virtio_disks: devices
                .virtio
                .disks
                .iter()
                .map(|d| (d.drive.clone(), d.qdev.clone(), d.backend.clone()))
                .collect(),
            registry: registry.clone(),
            hot: hot_block.clone(),
        }),
        chipset: Arc::new(crate::monitor_info::PcChipset {
            kvm: kvm.clone(),
            pio: pio.clone(),
            mmio: mmio.clone(),
            chardevs: chardevs.labels.clone(),
            bios: match (&cfg.boot, &plan) {
                (BootConfig::Firmware { bios }, BootPlan::Firmware) => Some(bios.clone()),
                _ => None,
            },
            vcpus: cfg.smp.cpus as usize,
        }),
        net: Arc::new(crate::monitor_info::PcNet {
            nics: devices.virtio.nics.clone(),
            hot: netdevs.clone(),
            registry: registry.clone(),
        }),
        memory: Arc::new(crate::monitor_info::PcMemory {
            kvm: kvm.clone(),
            mmio: mmio.clone(),
            mem: mem.clone(),
            coalesced: coalesced.clone(),
        }),
    };
    let has_screen_device = devices.vga.is_some();
    let has_screen = has_screen_device || std::env::var_os("TROUPE_TEST_DISPLAY").is_some();
    let has_input = true;
    let mut machine = PcMachine {
        mem: mem.clone(),
        layout,
        apic_ids: (0..cfg.smp.cpus).map(|i| topo.apic_id(i)).collect(),
        templates,
        plan,
        devices,
        acpi,
        kvm: kvm.clone(),
        registry: registry.clone(),
        stopped_clock: std::sync::Mutex::new(None),
    };
    let states = machine.boot_states()?;
    let ring = if has_screen_device {
        coalesced_ring(&kvm, &fds, &mmio, &coalesced)?
    } else {
        None
    };
    let ctx = VcpuContext {
        pio,
        mmio,
        mem,
        events,
        coalesced: ring,
        debug_threads: cfg.debug_threads,
    };
    hot_cpus.set_context(ctx.clone());
    let vcpus = spawn_vcpus(cfg, &topo, fds, states, ctx, registry)?;
    let guest_mem = machine.mem.clone();
    let mut tree = machine.devices.take_tree();
    hot_mem.cold_plug(cfg, &mut tree)?;
    let balloon = machine.devices.virtio.balloon.clone();
    let usb = machine.devices.usb.as_ref().map(|u| u.host.clone());
    let (mut supervisor, handle) = Supervisor::new(
        supervisor_config(cfg),
        vcpus.clone(),
        tree,
        Arc::new(machine),
        events_rx,
    );
    let cpu_type = hot_cpus.cpu_type.clone();
    supervisor.set_hotplug(Arc::new(crate::platform::hotnet::PcHotplug {
        netdevs,
        block: hot_block,
        registry: registry.clone(),
        pci: hot_pci,
        cpus: hot_cpus,
        mem: hot_mem.clone(),
    }));
    let supervisor = supervisor.with_registry(registry.clone());
    sides
        .drives
        .ide
        .on_tray_moved(sides.drives.tray_listener(handle.clone()));
    for m in chardevs.muxes.values() {
        m.set_supervisor(handle.clone());
    }
    if let Some(b) = &balloon {
        b.on_change(handle.clone());
    }
    let ctx = MonitorContext {
        supervisor: handle.clone(),
        registry: registry.clone(),
        mem: guest_mem,
        name: cfg.name.clone(),
        uuid: cfg.uuid.clone(),
        // `sendkey` goes where VNC keys go: Ctrl+Alt+N switches consoles.
        input: has_input.then(|| console.consoles.sendkey_sink()),
        display: has_screen.then(|| console.display.clone()),
        vnc: console.vnc.clone(),
        log: Some(Arc::new(crate::process::set_log_directives)),
        memory: MemoryHandle::spawn(rt.handle(), registry, sides.memory.clone()),
        net: NetHandle::spawn(rt.handle(), registry, sides.net.clone()),
        drives: DrivesHandle::spawn(rt.handle(), registry, sides.drives.clone()),
        chipset: ChipsetHandle::spawn(rt.handle(), registry, sides.chipset.clone()),
        catalog: Arc::new(crate::catalog::PcCatalog::new(host)),
        balloon: balloon.map(|b| b as Arc<dyn actors::virtio::balloon::BalloonControl>),
        usb,
        topology: (0..cfg.smp.cpus)
            .map(|i| {
                let p = topo.position(i);
                (p.socket, p.core, p.thread)
            })
            .collect(),
        cpu_slots: (0..cfg.smp.maxcpus.max(cfg.smp.cpus))
            .map(|i| {
                let p = topo.position(i);
                (p.socket, p.core, p.thread)
            })
            .collect(),
        cpu_type,
        keys: Arc::default(),
        buttons: Arc::default(),
        dirty_rate: Arc::default(),
        jobs: Arc::default(),
        fds: Arc::default(),
        memory_devices: Some(hot_mem),
    };
    let loadvm = cfg
        .loadvm
        .clone()
        .map(|tag| (ctx.clone(), tag, !cfg.start_paused));
    let monitors = start_monitors(
        cfg,
        &console,
        rt,
        registry,
        ctx,
        &mut chardevs.muxes,
        &chardevs.labels,
    )?;
    if cfg.cpu.props.check && !cfg.cpu.props.enforce {
        warn_dropped_features(&cpu);
    }
    Ok(Vm {
        supervisor,
        chardevs: chardevs.handles,
        handle,
        vcpus,
        kvm,
        mem: sides.memory.mem.clone(),
        console,
        monitors,
        downscripts,
        hot: sides.net,
        idle_chardevs: chardevs.idle,
        loadvm,
    })
}

/// The KVM VM, with its in-kernel irqchip and PIT.
fn create_vm() -> Result<Arc<KvmVm>> {
    Ok(Arc::new(KvmVm::create()?))
}

/// Guest RAM in the PC's layout (below and above the 4 GiB hole), registered with KVM.
fn guest_memory(cfg: &VmConfig, kvm: &KvmVm) -> Result<(RamLayout, GuestMemoryMmap)> {
    let layout = RamLayout::pc(cfg.memory);
    let mem = memory::allocate(&layout, &cfg.machine.ram)?;
    if !cfg.machine.dump_guest_core {
        memory::exclude_from_core_dumps(&mem).context("madvise(MADV_DONTDUMP) on guest RAM")?;
    }
    if cfg.machine.ram.mem_lock {
        crate::vm::backing::lock_all()?;
    }
    memory::register(kvm, &mem)?;
    Ok((layout, mem))
}

/// Where devices, vCPUs and failed actors tell the supervisor what happened: a vital
/// actor that panics (a vCPU, a block engine, a queue worker) reports through the
/// registry.
fn event_inbox(registry: &Registry) -> (EventTx, actors::events::EventRx) {
    let (events, events_rx): (EventTx, _) = event_channel();
    registry.set_failure_sink(events.clone());
    (events, events_rx)
}

/// Every chardev the command line opens, grouped by what uses it.
struct Chardevs {
    /// Chardevs shared by a serial port and a monitor, by id.
    muxes: HashMap<String, MuxHandle>,
    /// Each serial port's chardev and its input, in port order.
    serials: Vec<(
        ChardevHandle,
        tokio::sync::mpsc::Receiver<actors::chardev::FrontendEvent>,
    )>,
    /// `virtconsole` ports: (index in `cfg.devices`, chardev, its input).
    consoles: Vec<(
        usize,
        ChardevHandle,
        tokio::sync::mpsc::Receiver<actors::chardev::FrontendEvent>,
    )>,
    /// `guestfwd=` targets of user-mode netdevs, by chardev id.
    guestfwds: crate::platform::nic::GuestFwdChardevs,
    /// `-chardev`s no front end uses (open for the VM's life, as in QEMU).
    idle: Vec<(
        ChardevHandle,
        tokio::sync::mpsc::Receiver<actors::chardev::FrontendEvent>,
    )>,
    /// Every chardev the VM flushes as it ends (serial ports, virtconsoles).
    handles: Vec<ChardevHandle>,
    /// (label, filename) of each, for `query-chardev`.
    labels: Arc<Mutex<Vec<(String, String)>>>,
    /// (label, actor id) of each, for its node in the device tree.
    actors: Vec<(String, String)>,
}

/// Open the chardevs: the muxes, each serial port's, each virtconsole's, the `guestfwd=`
/// targets, then those nothing uses (QEMU opens every `-chardev` at start: a path that
/// cannot be created or a port that cannot be bound is an error now, not when something
/// first uses it).
fn open_chardevs(
    cfg: &VmConfig,
    console: &Console,
    rt: &tokio::runtime::Runtime,
    registry: &Registry,
) -> Result<Chardevs> {
    let mut serials = Vec::new();
    let mut serial_handles = Vec::new();
    let chardev_labels: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let node_actors: Mutex<Vec<(String, String)>> = Mutex::default();
    let mut muxes = start_muxes(cfg, console, rt, registry)?;
    for (i, b) in cfg.serials.iter().enumerate() {
        if let Some((key, _)) = mux_key(cfg, b) {
            let Some(m) = muxes.get_mut(&key) else {
                continue;
            };
            let rx = m.serial_rx.take().ok_or_else(|| {
                anyhow!("-serial #{i}: chardev '{key}' already has a serial port")
            })?;
            serial_handles.push(m.chardev.clone());
            lock(&chardev_labels).push((format!("serial{i}"), m.chardev.label.clone()));
            lock(&node_actors).push((format!("serial{i}"), m.chardev.id.clone()));
            serials.push((m.chardev.clone(), rx));
            continue;
        }
        let Some(backend) = chardev_backend(cfg, console, b)? else {
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let h = rt
            .block_on(spawn_chardev(
                rt.handle(),
                registry,
                &format!("serial{i}.chardev"),
                backend,
                tx,
            ))
            .with_context(|| format!("-serial #{i}"))?;
        // A `-chardev` keeps its id as its label in `query-chardev` (where libvirt reads a
        // pty's path); `-serial BACKEND` makes `serial{i}`. The device tree names it
        // `serial{i}` either way.
        let label = match b {
            CharBackend::Named(id) => id.clone(),
            _ => format!("serial{i}"),
        };
        lock(&chardev_labels).push((label, h.label.clone()));
        lock(&node_actors).push((format!("serial{i}"), h.id.clone()));
        serial_handles.push(h.clone());
        serials.push((h, rx));
    }
    // A named chardev for a front end (actor `name`), listed for `info chardev`; None when
    // the id names no backend to open.
    let front_end = |chardev: &str, name: &str| -> Result<Option<(ChardevHandle, _)>> {
        let Some(backend) =
            chardev_backend(cfg, console, &CharBackend::Named(chardev.to_string()))?
        else {
            return Ok(None);
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let h = rt.block_on(spawn_chardev(rt.handle(), registry, name, backend, tx))?;
        lock(&chardev_labels).push((chardev.to_string(), h.label.clone()));
        lock(&node_actors).push((chardev.to_string(), h.id.clone()));
        Ok(Some((h, rx)))
    };
    // virtconsole ports: each gets its chardev (by device index).
    let mut consoles = Vec::new();
    for (i, d) in cfg.devices.iter().enumerate() {
        let crate::config::DeviceKind::VirtConsole { chardev, .. } = &d.kind else {
            continue;
        };
        let name = format!("virtconsole{}.chardev", consoles.len());
        let Some((h, rx)) = front_end(chardev, &name)
            .with_context(|| format!("virtconsole: chardev '{chardev}'"))?
        else {
            continue;
        };
        serial_handles.push(h.clone());
        consoles.push((i, h, rx));
    }
    // guestfwd= targets of user-mode netdevs: each chardev with its input, by id.
    let mut guestfwds = std::collections::HashMap::new();
    for nd in &cfg.netdevs {
        let crate::config::NetdevKind::User(u) = &nd.kind else {
            continue;
        };
        for (_, _, chardev) in &u.guestfwd {
            if guestfwds.contains_key(chardev) {
                continue;
            }
            let name = format!("guestfwd.{chardev}");
            if let Some(fe) = front_end(chardev, &name)
                .with_context(|| format!("-netdev {}: guestfwd chardev '{chardev}'", nd.id))?
            {
                guestfwds.insert(chardev.clone(), fe);
            }
        }
    }
    let mut idle = Vec::new();
    for c in unused_chardevs(cfg) {
        if let Some(fe) = front_end(&c.id, &c.id).with_context(|| format!("-chardev {}", c.id))? {
            idle.push(fe);
        }
    }
    let mut actors: Vec<(String, String)> = Vec::new();
    for (label, h) in std::mem::take(&mut *lock(&node_actors)) {
        actors.push((label, h));
    }
    Ok(Chardevs {
        muxes,
        serials,
        consoles,
        guestfwds,
        idle,
        handles: serial_handles,
        labels: chardev_labels,
        actors,
    })
}

/// The device tree's first nodes: the backends opened before any device, each chardev
/// (`/chardevs/LABEL`) and the VNC server (`/display/vnc`).
fn backends(chardevs: &Chardevs, console: &Console) -> Result<DeviceTree> {
    let mut tree = DeviceTree::new();
    let labels = lock(&chardevs.labels).clone();
    for (label, actor) in &chardevs.actors {
        if tree.get(&BackendKind::Chardev.id(label)).is_some() {
            continue;
        }
        let filename = labels
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, f)| f.as_str())
            .or_else(|| {
                // A serial port on a named -chardev is listed under the chardev's id.
                chardevs
                    .handles
                    .iter()
                    .find(|h| h.id == *actor)
                    .map(|h| h.label.as_str())
            })
            .unwrap_or_default();
        let driver = filename.split(':').next().unwrap_or_default();
        tree.insert(
            Node::backend(BackendKind::Chardev, label, driver)
                .prop("filename", format!("\"{filename}\""))
                .actor(actor),
        )?;
    }
    if console.vnc.is_some() {
        tree.insert(Node::backend(BackendKind::Display, "vnc", "vnc").actor("vnc"))?;
    }
    Ok(tree)
}

/// The machine's sides the monitor's actors serve (see `monitor_info`).
struct MachineSides {
    drives: Arc<crate::monitor_info::PcDrives>,
    chipset: Arc<crate::monitor_info::PcChipset>,
    net: Arc<crate::monitor_info::PcNet>,
    memory: Arc<crate::monitor_info::PcMemory>,
}

/// The firmware image mapped at the top of 4 GiB (None: direct boot).
fn load_firmware(cfg: &VmConfig, kernel_override: bool, kvm: &KvmVm) -> Result<Option<Arc<Bios>>> {
    match &cfg.boot {
        BootConfig::Firmware { bios } if !kernel_override => {
            let b = Arc::new(Bios::load(bios)?);
            b.map(kvm)?;
            Ok(Some(b))
        }
        _ => Ok(None),
    }
}

/// Keyboard and mouse input from VNC clients go to the i8042 (unless the test pattern
/// stand-in took the console's input); with a tablet the pointer is absolute and keys
/// still go to the i8042.
fn route_input(console: &Console, devices: &crate::platform::DeviceSet) {
    if std::env::var_os("TROUPE_TEST_DISPLAY").is_some() {
        return;
    }
    match &devices.virtio.tablet {
        Some(t) => console
            .input
            .set_target(Arc::new(actors::virtio::input::KeyboardAndTablet {
                keyboard: devices.input.clone(),
                tablet: t.clone(),
            })),
        None => console.input.set_target(Arc::new(devices.input.clone())),
    }
    // USB devices take what they handle: a USB keyboard the keys, a USB tablet or mouse
    // the pointer (absolute for a tablet); the rest goes where it went.
    if let Some(usb) = &devices.usb {
        if usb.keyboard.is_some() || usb.pointer.is_some() {
            let others = console.input.current_target();
            let fallback = || -> Arc<dyn actors::display::input::InputSink> {
                others
                    .clone()
                    .unwrap_or_else(|| Arc::new(actors::display::input::NullSink))
            };
            console
                .input
                .set_target(Arc::new(actors::host::usb::SplitInput {
                    keys: usb.keyboard.clone().unwrap_or_else(fallback),
                    pointer: usb.pointer.clone().unwrap_or_else(fallback),
                }));
        }
    }
}

/// The vCPUs (KVM derives each local APIC id from the vCPU id: the topology's APIC id is
/// used), each with its CPUID table, and the register template each resets to.
fn create_vcpus(
    cfg: &VmConfig,
    kvm: &KvmVm,
    cpu: &cpuid::ResolvedCpu,
    topo: &Topology,
) -> Result<(Vec<kvm_ioctls::VcpuFd>, Vec<VcpuTemplate>)> {
    let mut fds = Vec::new();
    let mut templates = Vec::new();
    for i in 0..cfg.smp.cpus {
        let fd = kvm.create_vcpu(topo.apic_id(i))?;
        let table = cpu.table(topo, i, fd.get_tsc_khz().ok())?;
        fd.set_cpuid2(&table)
            .map_err(|e| anyhow!("vCPU {i}: KVM_SET_CPUID2 failed: {e}"))?;
        templates.push(VcpuTemplate::capture(&fd)?);
        fds.push(fd);
    }
    Ok((fds, templates))
}

/// How the BSP starts: the kernel given to `build` (the demo), `-kernel`, or firmware.
fn boot_plan(cfg: &VmConfig, kernel_override: Option<KernelSource>) -> BootPlan {
    match (&cfg.boot, kernel_override) {
        (_, Some(k)) => BootPlan::Direct {
            kernel: k,
            initrd: None,
            cmdline: String::new(),
        },
        (
            BootConfig::Direct {
                kernel,
                initrd,
                cmdline,
            },
            None,
        ) => BootPlan::Direct {
            kernel: KernelSource::File(kernel.clone()),
            initrd: initrd.clone(),
            cmdline: cmdline.clone(),
        },
        (BootConfig::Firmware { .. }, None) => BootPlan::Firmware,
    }
}

/// The ACPI tables (dumped with `-dump-acpi`; handed to the firmware through fw_cfg,
/// or placed in guest RAM by a direct boot).
fn acpi_tables(
    cfg: &VmConfig,
    plan: &BootPlan,
    devices: &crate::platform::DeviceSet,
) -> Result<AcpiTables> {
    let acpi = AcpiTables::build(&acpi_config(cfg));
    if let Some(dir) = &cfg.dump_acpi {
        acpi.dump(dir, ACPI_RSDP_ADDR, ACPI_TABLES_ADDR)
            .with_context(|| format!("-dump-acpi {}", dir.display()))?;
    }
    if matches!(plan, BootPlan::Firmware) {
        let mut fw = lock(&devices.fw_cfg);
        for (name, data) in acpi.fw_cfg_files() {
            fw.add_file(&name, data)
                .map_err(|e| anyhow!("fw_cfg: {e}"))?;
        }
    }
    Ok(acpi)
}

/// Writes to the legacy VGA window go through KVM's coalesced MMIO ring instead of
/// exiting one by one (as QEMU does); reads and every other exit apply them first. None
/// when KVM has no ring.
fn coalesced_ring(
    kvm: &KvmVm,
    fds: &[kvm_ioctls::VcpuFd],
    mmio: &Arc<Bus>,
    slot: &std::sync::OnceLock<Arc<actors::coalesced::CoalescedRing>>,
) -> Result<Option<Arc<actors::coalesced::CoalescedRing>>> {
    if !kvm.vm.check_extension(kvm_ioctls::Cap::CoalescedMmio) {
        return Ok(None);
    }
    let r = actors::coalesced::CoalescedRing::map(
        std::os::fd::AsRawFd::as_raw_fd(&fds[0]),
        mmio.clone(),
    )
    .context("mapping KVM's coalesced MMIO ring")?;
    kvm.vm
        .register_coalesced_mmio(
            kvm_ioctls::IoEventAddress::Mmio(crate::platform::vga::LEGACY_WINDOW.0),
            crate::platform::vga::LEGACY_WINDOW.1,
        )
        .map_err(|e| anyhow!("KVM_REGISTER_COALESCED_MMIO: {e}"))?;
    let r = Arc::new(r);
    let _ = slot.set(r.clone());
    Ok(Some(r))
}

/// One thread per vCPU, pinned as `-vcpu-pin` says, each starting from its boot state.
fn spawn_vcpus(
    cfg: &VmConfig,
    topo: &Topology,
    fds: Vec<kvm_ioctls::VcpuFd>,
    states: Vec<VcpuBootState>,
    ctx: VcpuContext,
    registry: &Registry,
) -> Result<Vec<VcpuHandle>> {
    let pins = pin_plan(&cfg.vcpu_pin, cfg.smp.cpus)?;
    let mut vcpus = Vec::new();
    for (i, ((fd, state), cores)) in fds.into_iter().zip(states).zip(pins).enumerate() {
        let i = i as u32;
        vcpus.push(spawn_vcpu(
            fd,
            i,
            topo.apic_id(i),
            cores,
            state,
            ctx.clone(),
            registry,
        )?);
    }
    Ok(vcpus)
}

/// The supervisor's policy from the command line.
fn supervisor_config(cfg: &VmConfig) -> SupervisorConfig {
    SupervisorConfig {
        // `-loadvm`: the snapshot is loaded before anything runs.
        start_paused: cfg.start_paused || cfg.loadvm.is_some(),
        no_reboot: cfg.no_reboot,
        no_shutdown: cfg.no_shutdown,
        monitor_attached: !cfg.monitors.is_empty(),
        incoming: cfg.incoming.clone(),
        cpu: cpu_spec(&cfg.cpu),
    }
}

/// The `-chardev`s nothing refers to: no serial port, monitor, virtconsole or `guestfwd=`.
fn unused_chardevs(cfg: &VmConfig) -> Vec<&crate::config::Chardev> {
    let mut used: Vec<&str> = Vec::new();
    for b in cfg
        .serials
        .iter()
        .chain(cfg.monitors.iter().map(|m| &m.backend))
    {
        if let CharBackend::Named(id) = b {
            used.push(id);
        }
    }
    for d in &cfg.devices {
        if let crate::config::DeviceKind::VirtConsole { chardev, .. } = &d.kind {
            used.push(chardev);
        }
    }
    for n in &cfg.netdevs {
        if let crate::config::NetdevKind::User(u) = &n.kind {
            used.extend(u.guestfwd.iter().map(|(_, _, c)| c.as_str()));
        }
    }
    cfg.chardevs
        .iter()
        .filter(|c| !used.contains(&c.id.as_str()))
        .collect()
}

/// The mux a backend refers to, if any: (key, the backend the mux opens).
fn mux_key(cfg: &VmConfig, b: &CharBackend) -> Option<(String, CharBackend)> {
    match b {
        CharBackend::MuxStdio => Some(("stdio".into(), CharBackend::Stdio)),
        CharBackend::Named(id) => cfg
            .chardevs
            .iter()
            .find(|c| &c.id == id && c.mux)
            .map(|c| (c.id.clone(), c.backend.clone())),
        _ => None,
    }
}

/// Open every chardev shared by a serial port and a monitor (`-nographic`, `mon:`,
/// `mux=on`).
pub(crate) fn start_muxes(
    cfg: &VmConfig,
    console: &Console,
    rt: &tokio::runtime::Runtime,
    registry: &Registry,
) -> Result<HashMap<String, MuxHandle>> {
    let mut muxes = HashMap::new();
    let users = cfg
        .serials
        .iter()
        .chain(cfg.monitors.iter().map(|m| &m.backend));
    for b in users {
        let Some((key, backend)) = mux_key(cfg, b) else {
            continue;
        };
        if muxes.contains_key(&key) {
            continue;
        }
        let Some(be) = chardev_backend(cfg, console, &backend)? else {
            continue;
        };
        let h = rt
            .block_on(monitor::spawn_mux(rt.handle(), registry, &key, be))
            .with_context(|| format!("chardev '{key}'"))?;
        muxes.insert(key, h);
    }
    Ok(muxes)
}

/// Start every `-monitor`, `-qmp` and `-mon`.
pub(crate) fn start_monitors(
    cfg: &VmConfig,
    console: &Console,
    rt: &tokio::runtime::Runtime,
    registry: &Registry,
    ctx: MonitorContext,
    muxes: &mut HashMap<String, MuxHandle>,
    labels: &Mutex<Vec<(String, String)>>,
) -> Result<Vec<monitor::StartedMonitor>> {
    let mut started = Vec::new();
    for (n, m) in cfg.monitors.iter().enumerate() {
        let id = match &m.backend {
            CharBackend::Named(id) => id.clone(),
            _ => format!("compat_monitor{n}"),
        };
        let what = || match m.mode {
            MonitorMode::Readline => format!("-monitor ({id})"),
            MonitorMode::Control => format!("-qmp ({id})"),
        };
        let backend = if let Some((key, _)) = mux_key(cfg, &m.backend) {
            let mon = muxes
                .get_mut(&key)
                .and_then(|h| h.monitor.take())
                .ok_or_else(|| anyhow!("{}: chardev '{key}' already has a monitor", what()))?;
            MonitorBackend::Mux(mon)
        } else {
            let resolved = match &m.backend {
                CharBackend::Named(cid) => cfg
                    .chardevs
                    .iter()
                    .find(|c| &c.id == cid)
                    .map(|c| c.backend.clone())
                    .ok_or_else(|| anyhow!("{}: chardev '{cid}' not found", what()))?,
                b => b.clone(),
            };
            match resolved {
                CharBackend::Tcp {
                    addr,
                    server: true,
                    wait,
                    telnet,
                    ..
                } => MonitorBackend::Tcp {
                    addr: addr
                        .resolve()
                        .with_context(|| format!("{}: cannot resolve {}", what(), addr.host))?,
                    telnet,
                    wait,
                },
                CharBackend::Unix {
                    path,
                    server: true,
                    wait,
                } => MonitorBackend::Unix { path, wait },
                CharBackend::ListenerFd { fd, wait } => MonitorBackend::ListenerFd { fd, wait },
                other => match chardev_backend(cfg, console, &other)? {
                    Some(b) => MonitorBackend::Chardev(b),
                    None => continue,
                },
            }
        };
        let protocol = match m.mode {
            MonitorMode::Readline => Protocol::Hmp,
            MonitorMode::Control => Protocol::Qmp,
        };
        let s = rt
            .block_on(monitor::start(
                rt.handle(),
                registry,
                ctx.clone(),
                MonitorSpec {
                    id: id.clone(),
                    protocol,
                    pretty: m.pretty,
                    backend,
                },
            ))
            .with_context(what)?;
        lock(labels).push((id, s.filename.clone()));
        started.push(s);
    }
    Ok(started)
}

async fn futures_flush(chardevs: &[ChardevHandle]) {
    for c in chardevs {
        c.flush().await;
    }
}

/// Run a built VM to the end; returns the process exit status.
pub fn run(vm: Vm, rt: &tokio::runtime::Runtime, registry: &Registry) -> i32 {
    let Vm {
        supervisor,
        handle,
        vcpus,
        chardevs,
        console,
        // Held until the vCPU threads are joined.
        kvm: _kvm,
        mut downscripts,
        hot,
        // Open until the VM ends.
        idle_chardevs: _idle_chardevs,
        loadvm,
        ..
    } = vm;
    let sig_handle = handle.clone();
    let signals = async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        let sig = tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        actors::report!("troupe: terminating on signal {sig}");
        sig_handle.signal(sig);
    };
    actors::runtime::spawn_task(rt.handle(), registry, "signals", "signals", None, signals);
    // Test builds only (feature `fault-injection`): TROUPE_INJECT_PANIC=ID[@MS].
    actors::runtime::fault::inject_from_env(rt.handle(), registry);
    if let Some((ctx, tag, run)) = loadvm {
        let sup = handle.clone();
        let load = async move {
            let disks = ctx.drives.snapshot_disks().await;
            match actors::monitor::migrate::load_vm(&ctx, &disks, &tag).await {
                Ok(()) if run => {
                    let _ = sup.cont().await;
                }
                Ok(()) => {}
                Err(e) => sup.start_failed(e),
            }
        };
        actors::runtime::spawn_task(rt.handle(), registry, "loadvm", "loadvm", None, load);
    }
    let reason = rt.block_on(supervisor.run());
    if std::env::var_os("TROUPE_DUMP_REGS").is_some() {
        for v in &vcpus {
            if let Ok(r) = rt.block_on(v.registers()) {
                let c = v.counters();
                actors::report!(
                    "CPU#{} pio={} mmio={} unmapped={}\n{}",
                    v.index(),
                    c.pio.load(std::sync::atomic::Ordering::Relaxed),
                    c.mmio.load(std::sync::atomic::Ordering::Relaxed),
                    c.unmapped.load(std::sync::atomic::Ordering::Relaxed),
                    r.dump(false)
                );
            }
        }
    }
    for v in &vcpus {
        v.stop_and_join();
    }
    if let Some(vnc) = &console.vnc {
        vnc.shutdown();
    }
    // Everything the guest wrote before it ended reaches its terminal, file or socket.
    rt.block_on(async {
        let all = futures_flush(&chardevs);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), all).await;
    });
    // As QEMU: each tap's down script gets the interface name as the VM ends (those
    // netdev_add opened too; not those netdev_del already closed).
    downscripts.retain(|d| {
        !hot.nics.iter().any(|n| {
            n.detached.load(std::sync::atomic::Ordering::Relaxed)
                && n.downscript.as_ref() == Some(d)
        })
    });
    downscripts.extend(
        hot.hot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close_all(),
    );
    for (script, ifname) in &downscripts {
        if let Err(e) = actors::net::tap::run_script(script, ifname) {
            actors::report!("troupe: {e}");
        }
    }
    if let ExitReason::ActorFailed(r) = &reason {
        actors::report!("troupe: stopping the VM: {r}");
    }
    if let ExitReason::StartFailed(r) = &reason {
        actors::report!("troupe: {r}");
    }
    if let ExitReason::IncomingFailed(r) = &reason {
        actors::report!("troupe: load of migration failed: {r}");
    }
    if let ExitReason::Fault(_) = &reason {
        actors::report!("troupe: the VM stopped on a KVM failure (see above)");
    }
    reason.status()
}

// ---- Console: the display surface, input routing and the VNC server (issue #5) ----

/// The consoles: the guest's screen (the surface the VGA model renders into, `writer`;
/// what `screendump` reads, `display`; where its input goes, `input`: the i8042/tablet host
/// plugs itself in with `set_target`), the text consoles (`vcs`: each `vc` chardev's end,
/// by index, taken when its chardev opens), which one is shown (`consoles`, also where VNC
/// keys and `sendkey` go) and the VNC server (`vnc`, for `info vnc` and passwords).
#[allow(dead_code)] // display/writer/input are for the monitor and the VGA/i8042 hosts
pub struct Console {
    pub display: actors::display::DisplayHandle,
    pub writer: actors::display::DisplayWriter,
    pub input: actors::display::input::InputRouter,
    pub consoles: actors::display::console::ConsoleSet,
    pub vcs: Mutex<HashMap<usize, actors::display::console::VcPort>>,
    pub vnc: Option<actors::vnc::VncHandle>,
}

/// Every text console of the command line: (index, name, spec), in console order.
fn text_consoles(cfg: &VmConfig) -> Vec<(usize, String, crate::config::VcSpec)> {
    let mut out = Vec::new();
    for c in &cfg.chardevs {
        if let CharBackend::Vc(v) = &c.backend {
            out.push((v.index, c.id.clone(), *v));
        }
    }
    for (n, m) in cfg.monitors.iter().enumerate() {
        if let CharBackend::Vc(v) = &m.backend {
            out.push((v.index, format!("compat_monitor{n}"), *v));
        }
    }
    for (i, b) in cfg.serials.iter().enumerate() {
        if let CharBackend::Vc(v) = b {
            out.push((v.index, format!("serial{i}"), *v));
        }
    }
    out.sort_by_key(|(i, _, _)| *i);
    out
}

/// The 8x16 font text consoles draw with: the VGA BIOS's.
fn console_font() -> Result<Arc<Vec<u8>>> {
    let path = crate::platform::vga::VGA_BIOS;
    let rom = std::fs::read(path).with_context(|| {
        format!("text consoles (vc) draw with the VGA BIOS font: cannot read {path} (it is in the Debian package `seabios`)")
    })?;
    let font = devices::vga::font_from_rom(&rom)
        .ok_or_else(|| anyhow!("text consoles (vc): no 8x16 font found in {path}"))?;
    Ok(Arc::new(font))
}

pub(crate) fn start_console(
    cfg: &VmConfig,
    rt: &tokio::runtime::Runtime,
    registry: &Registry,
) -> Result<Console> {
    use actors::display::console::{spawn_text_console, ConsoleSet};
    use actors::vnc::{SharePolicy, VncOptions};
    // QEMU's console starts at 640x480 until the guest sets a mode.
    let (writer, display) = actors::display::new_display(640, 480)?;
    let input = actors::display::input::InputRouter::new();
    let (consoles, shown) = ConsoleSet::start(rt.handle(), registry)?;
    // TEST HARNESS ONLY: TROUPE_TEST_DISPLAY=static|animated shows a synthetic pattern
    // that echoes input on screen and stderr, standing in for the VGA model.
    let test_display = std::env::var_os("TROUPE_TEST_DISPLAY");
    if let Some(mode) = &test_display {
        let sink = actors::display::testpattern::spawn(
            rt.handle(),
            registry,
            writer.clone(),
            mode == "animated",
        );
        input.set_target(sink);
    }
    consoles.set_guest_input(Arc::new(input.clone()));
    // Ctrl+Alt+1 is the guest's screen, when it has one.
    if cfg.vga != crate::config::VgaKind::None || test_display.is_some() {
        consoles.add_graphic(display.clone());
    }
    let mut vcs = HashMap::new();
    let texts = text_consoles(cfg);
    if !texts.is_empty() {
        let font = console_font()?;
        for (index, name, v) in texts {
            let port = spawn_text_console(
                rt.handle(),
                registry,
                &consoles,
                &name,
                v.cols as usize,
                v.rows as usize,
                font.clone(),
            )?;
            vcs.insert(index, port);
        }
    }
    let vnc = match &cfg.vnc {
        None => None,
        Some(v) => {
            let mut o = VncOptions::new(&v.listen.host, v.display);
            o.to = v.to;
            o.websocket = v.websocket;
            o.password = v.password;
            if let Some(t) = &v.tls {
                o.tls = Some(
                    actors::vnc::tls::server_config(&t.dir, t.verify_peer)
                        .with_context(|| format!("-object tls-creds-x509,id={}", t.id))?,
                );
            }
            o.lossy = v.lossy;
            o.share = match v.share {
                crate::config::VncShare::AllowExclusive => SharePolicy::AllowExclusive,
                crate::config::VncShare::ForceShared => SharePolicy::ForceShared,
                crate::config::VncShare::Ignore => SharePolicy::Ignore,
            };
            // QEMU names the desktop "QEMU" or "QEMU (NAME)" with -name.
            o.name = match &cfg.name {
                Some(n) => format!("QEMU ({n})"),
                None => "QEMU".into(),
            };
            o.keymap = cfg.keymap.clone();
            let h = actors::vnc::start(
                rt.handle(),
                registry,
                o,
                shown.clone(),
                Arc::new(consoles.clone()),
            )
            .with_context(|| format!("-vnc {}:{}", v.listen.host, v.display))?;
            Some(h)
        }
    };
    if cfg.display == crate::config::DisplayKind::Curses {
        actors::display::curses::start(registry, consoles.clone())?;
    }
    Ok(Console {
        display,
        writer,
        input,
        consoles,
        vcs: Mutex::new(vcs),
        vnc,
    })
}
