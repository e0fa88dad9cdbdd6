//! PCI on the host side: the configuration port at 0xCF8, the functions of the i440FX/PIIX
//! chipset, BAR mappings that follow what the guest programs, INTx routing through the
//! PIIX3's PIRQ registers, and the chipset registers with machine-wide effects (PAM shadow
//! RAM, the PIIX4 PM base).
//!
//! Data path: vCPU config access → [`PciConfigPort`] (locks the `PciHost` model) → after a
//! write, [`PciPlatform::reconfigure`] re-decodes the function the guest touched and moves
//! its bus mappings; the PAM and PM-base consequences are applied there too.
//!
//! State: the chipset saves as the `pci` actor ([`PciPlatform::control`]): sections
//! `pci/host` (CONFIG_ADDRESS), `pci/i440fx`, `pci/piix3`, `pci/piix3-ide`,
//! `pci/piix4-pm` (configuration spaces: PAM, PIRQ routing, PMBA live there) and
//! `pci/rcr` (0xCF9). The other functions on the bus are saved by the devices that own
//! them. Since those are restored after the chipset, the bus mappings follow the restored
//! configuration spaces when the machine resumes, before any vCPU runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actors::bus::{lock, Bus, BusHandler};
use actors::irq::LevelIrqfds;
use actors::runtime::{Control, ControlHandle, ModelPart, StatePart};
use devices::acpi_pm::AcpiPm;
use devices::pci::i440fx::I440fx;
use devices::pci::piix::{piix3_ide_config, swizzle, Piix3Isa, Piix4Pm};
use devices::pci::{describe, PciDeviceInfo, PciFunction, PciHost, PlainFunction, Region, Slot};
use devices::reset::ResetControl;
use devices::{BusDevice, IrqLine};
use kvm_ioctls::VmFd;

use crate::vm::firmware::{Bios, PamMode, Shadow};
use crate::vm::kvm::KvmVm;

/// Chipset slots, as QEMU's `pc` places them.
pub const I440FX_SLOT: Slot = (0, 0);
pub const PIIX3_SLOT: Slot = (1, 0);
pub const IDE_SLOT: Slot = (1, 1);
pub const PIIX4_PM_SLOT: Slot = (1, 3);

/// What a BAR maps to on the host side.
#[derive(Clone)]
pub enum BarTarget {
    /// A port-I/O handler.
    Io(Arc<dyn BusHandler>),
    /// An MMIO handler.
    Mmio(Arc<dyn BusHandler>),
    /// Host memory mapped straight into the guest (a framebuffer); (host addr, dirty log).
    Ram { host: u64, dirty_log: bool },
    /// An expansion ROM mapped read-only into the guest: firmware copies it without one
    /// exit per read (QEMU maps ROM BARs as ROM too).
    Rom(Arc<actors::host::mem::HostBuffer>),
}

#[derive(Clone)]
struct Binding {
    target: BarTarget,
    name: String,
    mapped: Option<(Region, Option<u32>)>,
}

/// The PCI side of the machine.
pub struct PciPlatform {
    pub host: Arc<Mutex<PciHost>>,
    i440fx: Arc<Mutex<I440fx>>,
    piix3: Arc<Mutex<Piix3Isa>>,
    piix4: Arc<Mutex<Piix4Pm>>,
    ide: Arc<Mutex<PlainFunction>>,
    rcr: Arc<Mutex<ResetControl>>,
    /// A restore changed configuration spaces: re-decode every function at the resume.
    restored: AtomicBool,
    bindings: Mutex<HashMap<(Slot, usize), Binding>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    kvm: Arc<KvmVm>,
    shadow: Mutex<Shadow>,
    bios: Option<Arc<Bios>>,
    pm: Arc<Mutex<AcpiPm>>,
    pm_base: Mutex<Option<u16>>,
    /// Direct boot: the PAM segments are plain RAM whatever the registers say.
    ram_shadow: bool,
    /// The INTx router, made on first use (its irqfds are reset with the machine).
    intx: Mutex<Option<Arc<IntxRouter>>>,
}

impl PciPlatform {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kvm: Arc<KvmVm>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        ram_host: u64,
        bios: Option<Arc<Bios>>,
        pm: Arc<Mutex<AcpiPm>>,
        rcr: ResetControl,
    ) -> Arc<Self> {
        let i440fx = Arc::new(Mutex::new(I440fx::new()));
        let piix3 = Arc::new(Mutex::new(Piix3Isa::new()));
        let piix4 = Arc::new(Mutex::new(Piix4Pm::new()));
        let ide = Arc::new(Mutex::new(PlainFunction::new(piix3_ide_config())));
        let rcr = Arc::new(Mutex::new(rcr));
        let mut host = PciHost::new();
        host.set_reset_control(Box::new(SharedRcr(rcr.clone())));
        host.add(I440FX_SLOT, i440fx.clone());
        host.add(PIIX3_SLOT, piix3.clone());
        host.add(IDE_SLOT, ide.clone());
        host.add(PIIX4_PM_SLOT, piix4.clone());
        let ram_shadow = bios.is_none();
        Arc::new(Self {
            host: Arc::new(Mutex::new(host)),
            i440fx,
            piix3,
            piix4,
            ide,
            rcr,
            restored: AtomicBool::new(false),
            bindings: Mutex::new(HashMap::new()),
            pio,
            mmio,
            kvm,
            shadow: Mutex::new(Shadow::new(ram_host)),
            bios,
            pm,
            pm_base: Mutex::new(None),
            ram_shadow,
            intx: Mutex::new(None),
        })
    }

    /// Put a function on the bus (at start or by hotplug).
    pub fn add_function(&self, slot: Slot, f: Arc<Mutex<dyn PciFunction>>) {
        lock(&self.host).add(slot, f);
    }

    /// Take the function at `slot` off the bus (hot-unplug): every BAR of it is unmapped
    /// (a handler learns it, so ioeventfds follow) and its bindings forgotten. Returns
    /// the function (None: the slot was empty).
    pub fn remove_function(&self, slot: Slot) -> Option<Arc<Mutex<dyn PciFunction>>> {
        let f = lock(&self.host).remove(slot);
        let gone: Vec<Binding> = {
            let mut b = lock(&self.bindings);
            let keys: Vec<(Slot, usize)> = b.keys().filter(|(s, _)| *s == slot).copied().collect();
            keys.into_iter().filter_map(|k| b.remove(&k)).collect()
        };
        for b in gone {
            let Some((old, slot_id)) = b.mapped else {
                continue;
            };
            match &b.target {
                BarTarget::Io(h) => {
                    let _ = self.pio.remove(old.addr);
                    h.mapped(None);
                }
                BarTarget::Mmio(h) => {
                    let _ = self.mmio.remove(old.addr);
                    h.mapped(None);
                }
                BarTarget::Ram { .. } | BarTarget::Rom(_) => {
                    if let Some(s) = slot_id {
                        let _ = self.kvm.unmap(s);
                    }
                }
            }
        }
        f
    }

    /// Whether a function sits at `slot`.
    pub fn occupied(&self, slot: Slot) -> bool {
        lock(&self.host).get(slot).is_some()
    }

    /// Say what BAR `bar` of `slot` maps to; it is mapped whenever the guest enables it.
    pub fn bind_bar(&self, slot: Slot, bar: usize, name: &str, target: BarTarget) {
        lock(&self.bindings).insert(
            (slot, bar),
            Binding {
                target,
                name: name.to_string(),
                mapped: None,
            },
        );
        self.reconfigure(slot);
    }

    /// The KVM memory slot and region a RAM-backed BAR is mapped at now.
    pub fn ram_bar_slot(&self, slot: Slot, bar: usize) -> Option<(u32, Region)> {
        let b = lock(&self.bindings);
        let (region, id) = b.get(&(slot, bar))?.mapped?;
        Some((id?, region))
    }

    /// The handler for the configuration ports (map at 0xCF8, length 8).
    pub fn config_port(self: &Arc<Self>) -> Arc<PciConfigPort> {
        Arc::new(PciConfigPort(self.clone()))
    }

    /// Power-on: every function resets, mappings follow.
    pub fn reset(&self) -> anyhow::Result<()> {
        lock(&self.host).reset();
        if self.ram_shadow {
            // Direct boot has no firmware: route PCI interrupts as SeaBIOS would (and as
            // the DSDT's _PRT says).
            lock(&self.piix3).config_write(0x60, &crate::tables::dsdt::PIRQ_IRQS);
            // ... and place the ACPI PM block where the FADT says (SeaBIOS writes PMBA
            // and sets PMREGMISC's enable bit), so the guest's power button and soft-off
            // work without firmware.
            let base = u32::from(crate::tables::acpi::PM_BASE) | 1;
            let mut piix4 = lock(&self.piix4);
            piix4.config_write(0x40, &base.to_le_bytes());
            piix4.config_write(0x80, &[1]);
        }
        let slots: Vec<Slot> = lock(&self.host).functions().map(|(s, _)| *s).collect();
        for s in slots {
            self.reconfigure(s);
        }
        self.apply_pam()?;
        // The functions' lines are low now; KVM drops what it still held for them.
        if let Some(r) = lock(&self.intx).as_ref() {
            r.lines.reset();
        }
        Ok(())
    }

    /// The chipset's control mailbox (see the module doc): answered under each function's
    /// lock; the resume after a restore re-decodes every function on the bus.
    pub fn control(self: &Arc<Self>) -> ControlHandle {
        let parts: Vec<Box<dyn StatePart>> = vec![
            part("pci/host", &self.host),
            part("pci/i440fx", &self.i440fx),
            part("pci/piix3", &self.piix3),
            part("pci/piix3-ide", &self.ide),
            part("pci/piix4-pm", &self.piix4),
            part("pci/rcr", &self.rcr),
        ];
        let me = self.clone();
        let inner = ControlHandle::models("pci", parts, move || {
            me.restored.store(true, Ordering::SeqCst)
        });
        let me = self.clone();
        ControlHandle::new("pci", move |c| {
            let resume = matches!(c, Control::Resume);
            inner.send(c)?;
            if resume && me.restored.swap(false, Ordering::SeqCst) {
                me.remap_all();
            }
            Ok(())
        })
    }

    /// Make every mapping follow the configuration spaces (after they were restored).
    fn remap_all(&self) {
        let slots: Vec<Slot> = lock(&self.host).functions().map(|(s, _)| *s).collect();
        for s in slots {
            self.reconfigure(s);
        }
        // Reconfiguring the i440FX applies PAM only when it is on the bus; be sure.
        if let Err(e) = self.apply_pam() {
            tracing::error!("PAM remap after a restore failed: {e}");
        }
        self.remap_pm();
    }

    /// Re-decode `slot` after the guest changed its configuration.
    pub fn reconfigure(&self, slot: Slot) {
        let Some(f) = lock(&self.host).get(slot).cloned() else {
            return;
        };
        let decoded: Vec<(usize, Option<Region>)> = {
            let g = f.lock().unwrap_or_else(|e| e.into_inner());
            let c = g.config();
            let mut v: Vec<(usize, Option<Region>)> = c
                .decoded_bars()
                .into_iter()
                .map(|(i, _, r)| (i, r))
                .collect();
            // The expansion ROM BAR is "bar" 6 for bindings.
            if c.rom_size() > 0 {
                v.push((6, c.decoded_rom()));
            }
            v
        };
        let mut bindings = lock(&self.bindings);
        for (bar, region) in decoded {
            let Some(b) = bindings.get_mut(&(slot, bar)) else {
                continue;
            };
            if b.mapped.map(|(r, _)| r) == region {
                continue;
            }
            if let Some((old, slot_id)) = b.mapped.take() {
                match &b.target {
                    BarTarget::Io(h) => {
                        let _ = self.pio.remove(old.addr);
                        h.mapped(None);
                    }
                    BarTarget::Mmio(h) => {
                        let _ = self.mmio.remove(old.addr);
                        h.mapped(None);
                    }
                    BarTarget::Ram { .. } | BarTarget::Rom(_) => {
                        if let Some(s) = slot_id {
                            let _ = self.kvm.unmap(s);
                        }
                    }
                }
            }
            if let Some(r) = region {
                let res = match &b.target {
                    BarTarget::Io(h) => self
                        .pio
                        .insert(r.addr, r.size, &b.name, h.clone())
                        .map(|_| {
                            h.mapped(Some(r.addr));
                            None
                        })
                        .map_err(|e| e.to_string()),
                    BarTarget::Mmio(h) => self
                        .mmio
                        .insert(r.addr, r.size, &b.name, h.clone())
                        .map(|_| {
                            h.mapped(Some(r.addr));
                            None
                        })
                        .map_err(|e| e.to_string()),
                    BarTarget::Ram { host, dirty_log } => self
                        .kvm
                        .map(r.addr, r.size, *host, false, *dirty_log, &b.name)
                        .map(Some)
                        .map_err(|e| e.to_string()),
                    BarTarget::Rom(buf) => self
                        .kvm
                        .map(
                            r.addr,
                            r.size.min(buf.len() as u64),
                            buf.host_addr(),
                            true,
                            false,
                            &b.name,
                        )
                        .map(Some)
                        .map_err(|e| e.to_string()),
                };
                match res {
                    Ok(slot_id) => b.mapped = Some((r, slot_id)),
                    Err(e) => {
                        tracing::warn!(target: "guest_errors", "PCI {slot:?} BAR{bar} at {:#x}: {e}", r.addr)
                    }
                }
            }
        }
        drop(bindings);
        if slot == I440FX_SLOT {
            if let Err(e) = self.apply_pam() {
                tracing::error!("PAM remap failed: {e}");
            }
        }
        if slot == PIIX4_PM_SLOT {
            self.remap_pm();
        }
    }

    /// Map the PAM segments as the i440FX's registers say.
    fn apply_pam(&self) -> Result<(), crate::vm::firmware::FirmwareError> {
        let modes = if self.ram_shadow {
            [PamMode::ReadWrite; 13]
        } else {
            lock(&self.i440fx).pam().map(PamMode::from_bits)
        };
        lock(&self.shadow).apply(&self.kvm, self.bios.as_deref(), modes)
    }

    /// Move the ACPI PM block to where PMBA/PMREGMISC say.
    fn remap_pm(&self) {
        let want = lock(&self.piix4).pm_base();
        let mut cur = lock(&self.pm_base);
        if *cur == want {
            return;
        }
        if let Some(old) = cur.take() {
            let _ = self.pio.remove(u64::from(old));
        }
        if let Some(base) = want {
            let h = Arc::new(PmPort(self.pm.clone()));
            match self.pio.insert(u64::from(base), 64, "acpi-pm", h) {
                Ok(()) => *cur = Some(base),
                Err(e) => tracing::warn!(target: "guest_errors", "PM base {base:#x}: {e}"),
            }
        }
    }

    /// An interrupt line for INTx pin `pin` (1..4) of device `dev` (for the PCI devices
    /// with interrupt pins that come with virtio and the NICs).
    pub fn intx(self: &Arc<Self>, router: &Arc<IntxRouter>, dev: u8, pin: u8) -> Arc<dyn IrqLine> {
        Arc::new(PciIntx {
            router: router.clone(),
            dev,
            pin,
            asserted_on: Mutex::new(None),
        })
    }

    /// The router for INTx lines through this chipset's PIRQ registers, onto irqfds
    /// ([`LevelIrqfds`], whose resample thread registers in `registry`): one per chipset,
    /// made on the first call (command-line and hot-plugged devices share its counts).
    pub fn intx_router(
        &self,
        registry: &actors::runtime::Registry,
        vm: Arc<VmFd>,
    ) -> std::io::Result<Arc<IntxRouter>> {
        let mut slot = lock(&self.intx);
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(IntxRouter {
            piix3: self.piix3.clone(),
            lines: LevelIrqfds::new(registry, vm)?,
            counts: Mutex::new([0; 16]),
        });
        *slot = Some(r.clone());
        Ok(r)
    }

    /// `info pci` data of the function at `slot`.
    pub fn info_of(&self, slot: Slot) -> Option<PciDeviceInfo> {
        lock(&self.host)
            .functions()
            .find(|(s, _)| **s == slot)
            .map(|(s, f)| describe(*s, f))
    }

    /// `info pci` data, in slot order.
    pub fn info(&self) -> Vec<PciDeviceInfo> {
        lock(&self.host)
            .functions()
            .map(|(s, f)| describe(*s, f))
            .collect()
    }
}

/// The 0xCF8–0xCFF handler.
pub struct PciConfigPort(Arc<PciPlatform>);

impl BusHandler for PciConfigPort {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0.host).read(offset, data);
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        let written = {
            let mut h = lock(&self.0.host);
            h.write(offset, data);
            h.take_written()
        };
        if let Some(slot) = written {
            self.0.reconfigure(slot);
        }
    }
}

/// A model behind its lock as one section of an actor's state.
pub fn part<S: devices::Snapshot + Send + 'static>(
    id: &str,
    m: &Arc<Mutex<S>>,
) -> Box<dyn StatePart> {
    Box::new(ModelPart::new(id, m.clone()))
}

/// 0xCF9 as the host forwards it, shared with the chipset's state.
struct SharedRcr(Arc<Mutex<ResetControl>>);

impl BusDevice for SharedRcr {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).write(offset, data);
    }
}

struct PmPort(Arc<Mutex<AcpiPm>>);

impl BusHandler for PmPort {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0).read(offset, data);
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        lock(&self.0).write(offset, data);
    }
}

/// GPE0 at 0xAFE0.
pub struct GpePort(pub Arc<Mutex<AcpiPm>>);

impl BusHandler for GpePort {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0).gpe_read(offset, data);
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        lock(&self.0).gpe_write(offset, data);
    }
}

/// Level-triggered PCI interrupts shared on ISA IRQs: a line is high while any device
/// routed to it asserts. The lines are irqfds ([`LevelIrqfds`]): a device raising INTx
/// on a vCPU or its worker thread writes an eventfd, no ioctl.
pub struct IntxRouter {
    piix3: Arc<Mutex<Piix3Isa>>,
    lines: Arc<LevelIrqfds>,
    counts: Mutex<[u32; 16]>,
}

impl IntxRouter {
    fn assert(&self, irq: u8) {
        let mut c = lock(&self.counts);
        c[usize::from(irq)] += 1;
        if c[usize::from(irq)] == 1 {
            self.lines.set_level(u32::from(irq), true);
        }
    }

    fn deassert(&self, irq: u8) {
        let mut c = lock(&self.counts);
        let n = &mut c[usize::from(irq)];
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.lines.set_level(u32::from(irq), false);
        }
    }
}

struct PciIntx {
    router: Arc<IntxRouter>,
    dev: u8,
    pin: u8,
    /// The IRQ this line is asserted on (routing can change while it is).
    asserted_on: Mutex<Option<u8>>,
}

impl IrqLine for PciIntx {
    fn set_level(&self, high: bool) {
        let mut on = lock(&self.asserted_on);
        if high {
            if on.is_some() {
                return;
            }
            let route = lock(&self.router.piix3).pirq_route(swizzle(self.dev, self.pin));
            match route {
                Some(irq) => {
                    self.router.assert(irq);
                    *on = Some(irq);
                }
                None => {
                    tracing::debug!(target: "guest_errors", "INTx of device {} not routed", self.dev)
                }
            }
        } else if let Some(irq) = on.take() {
            self.router.deassert(irq);
        }
    }
}
