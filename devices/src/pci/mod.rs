//! PCI as state machines: configuration spaces ([`config`]), the configuration
//! mechanism #1 at 0xCF8/0xCFC ([`PciHost`]), and the i440FX/PIIX functions of QEMU's `pc`
//! machine ([`i440fx`], [`piix`]).
//!
//! Host contract: after a guest access through [`PciHost`], call
//! [`PciHost::take_written`] — it names the function whose configuration the guest changed,
//! so the host can re-decode that function's BARs (moving its bus mappings) and re-read
//! chipset registers (PAM, PIRQ routing, the PM base).

pub mod config;
pub mod hotplug;
pub mod i440fx;
pub mod piix;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use config::{BarDef, BarKind, ConfigSpace, ConfigSpaceState, Ids, Region};

use serde::{Deserialize, Serialize};

use crate::{BusDevice, Snapshot, StateError};

/// A PCI function: its configuration space plus device-specific reactions.
pub trait PciFunction: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// A guest configuration write (override to watch device-specific registers).
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// Power-on state.
    fn reset(&mut self);
    /// The `id` string `info pci` shows (the `-device ...,id=`), empty by default.
    fn id(&self) -> String {
        String::new()
    }
}

pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// (device, function) on bus 0.
pub type Slot = (u8, u8);

fn lock(f: &SharedFunction) -> std::sync::MutexGuard<'_, dyn PciFunction + 'static> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// The PCI host: CONFIG_ADDRESS / CONFIG_DATA and the functions on bus 0.
///
/// Map it at 0xCF8 with length 8. CONFIG_ADDRESS takes only 32-bit accesses; a byte access
/// at 0xCF9 is the PIIX reset control register, forwarded to `rcr` when one is attached.
pub struct PciHost {
    address: u32,
    functions: BTreeMap<Slot, SharedFunction>,
    written: Option<Slot>,
    rcr: Option<Box<dyn BusDevice>>,
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHost {
    pub fn new() -> Self {
        Self {
            address: 0,
            functions: BTreeMap::new(),
            written: None,
            rcr: None,
        }
    }

    /// Attach the device that owns byte accesses to 0xCF9 (PIIX reset control).
    pub fn set_reset_control(&mut self, rcr: Box<dyn BusDevice>) {
        self.rcr = Some(rcr);
    }

    pub fn add(&mut self, slot: Slot, f: SharedFunction) {
        self.functions.insert(slot, f);
    }

    pub fn remove(&mut self, slot: Slot) -> Option<SharedFunction> {
        self.functions.remove(&slot)
    }

    pub fn get(&self, slot: Slot) -> Option<&SharedFunction> {
        self.functions.get(&slot)
    }

    pub fn functions(&self) -> impl Iterator<Item = (&Slot, &SharedFunction)> {
        self.functions.iter()
    }

    /// The first free device number from `from` (for hotplug and default placement).
    pub fn free_device(&self, from: u8) -> Option<u8> {
        (from..32).find(|d| !self.functions.keys().any(|(dd, _)| dd == d))
    }

    /// Which function the guest's last configuration write changed (cleared on read).
    pub fn take_written(&mut self) -> Option<Slot> {
        self.written.take()
    }

    pub fn reset(&mut self) {
        self.address = 0;
        for f in self.functions.values() {
            lock(f).reset();
        }
    }

    /// The function and register CONFIG_ADDRESS selects, if enabled and on bus 0.
    fn target(&self, port_offset: u64) -> Option<(Slot, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let dev = ((a >> 11) & 0x1f) as u8;
        let func = ((a >> 8) & 0x7) as u8;
        let reg = (a & 0xfc) as usize + (port_offset - 4) as usize;
        Some(((dev, func), reg))
    }
}

impl BusDevice for PciHost {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            1 if data.len() == 1 => match &mut self.rcr {
                Some(r) => r.read(0, data),
                None => data.fill(0xff),
            },
            4..=7 => {
                let Some((slot, reg)) = self.target(offset) else {
                    data.fill(0xff);
                    return;
                };
                match self.functions.get(&slot) {
                    Some(f) if reg + data.len() <= 256 => lock(f).config_read(reg, data),
                    _ => data.fill(0xff),
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes(data.try_into().unwrap_or_default())
            }
            1 if data.len() == 1 => {
                if let Some(r) = &mut self.rcr {
                    r.write(0, data);
                }
            }
            4..=7 => {
                let Some((slot, reg)) = self.target(offset) else {
                    return;
                };
                if let Some(f) = self.functions.get(&slot) {
                    if reg + data.len() <= 256 {
                        lock(f).config_write(reg, data);
                        self.written = Some(slot);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The host's own state: CONFIG_ADDRESS, which a guest may have written and not yet
/// used (an interrupted read-modify-write of a configuration register).
///
/// The functions on the bus are not in it: each is saved by the model that owns it (a
/// virtio transport, the e1000, the chipset functions), and the reset control register at
/// 0xCF9 is saved as its own [`crate::reset::ResetControl`] section. Restore into a host
/// rebuilt with the same functions in the same slots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciHostState {
    pub config_address: u32,
}

impl Snapshot for PciHost {
    type State = PciHostState;
    const KIND: &'static str = "pci-host";
    const VERSION: u32 = 1;

    fn save(&self) -> PciHostState {
        PciHostState {
            config_address: self.address,
        }
    }

    fn restore(&mut self, s: PciHostState) -> Result<(), StateError> {
        self.address = s.config_address;
        self.written = None;
        Ok(())
    }
}

/// The state of a function whose only guest-visible state is its configuration space
/// (the i440FX host bridge, the PIIX3 ISA bridge, the PIIX4 PM function, a
/// [`PlainFunction`]): chipset registers such as PAM, PIRQ routing and PMBA live there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionState {
    pub config: ConfigSpaceState,
}

/// `Snapshot` for a function whose state is its configuration space in field `space`.
macro_rules! config_space_snapshot {
    ($ty:ty, $kind:literal) => {
        impl $crate::Snapshot for $ty {
            type State = $crate::pci::FunctionState;
            const KIND: &'static str = $kind;
            const VERSION: u32 = 1;

            fn save(&self) -> $crate::pci::FunctionState {
                $crate::pci::FunctionState {
                    config: $crate::Snapshot::save(&self.space),
                }
            }

            fn restore(&mut self, s: $crate::pci::FunctionState) -> Result<(), $crate::StateError> {
                $crate::Snapshot::restore(&mut self.space, s.config)
                    .map_err(|e| e.within(Self::KIND, "config"))
            }
        }
    };
}
pub(crate) use config_space_snapshot;

config_space_snapshot!(PlainFunction, "pci-function");

/// What `info pci` / `query-pci` show for one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDeviceInfo {
    pub slot: Slot,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    pub class: (u8, u8, u8),
    pub revision: u8,
    pub irq_line: u8,
    /// 0 none, 1..4 = A..D.
    pub irq_pin: u8,
    pub bars: Vec<(usize, BarKind, Option<Region>, u64)>,
    pub rom: Option<(Option<Region>, u64)>,
    pub id: String,
}

impl PciDeviceInfo {
    /// QEMU's class description for `info pci`.
    pub fn class_name(&self) -> &'static str {
        match (self.class.0, self.class.1) {
            (0x01, 0x01) => "IDE controller",
            (0x01, 0x00) => "SCSI controller",
            (0x01, _) => "Storage controller",
            (0x02, 0x00) => "Ethernet controller",
            (0x03, 0x00) => "VGA controller",
            (0x03, _) => "Display controller",
            (0x06, 0x00) => "Host bridge",
            (0x06, 0x01) => "ISA bridge",
            (0x06, _) => "Bridge",
            (0x07, 0x80) => "Communication controller",
            (0x07, _) => "Serial controller",
            (0x09, _) => "Input controller",
            (0x0c, 0x03) => "USB controller",
            (0x00, 0xff) | (0xff, _) => "Class ffff",
            (0x05, _) => "RAM controller",
            (0x08, _) => "System peripheral",
            (0x10, _) => "Encryption controller",
            _ => "Unclassified device",
        }
    }
}

/// Collect `info pci` data for a function.
pub fn describe(slot: Slot, f: &SharedFunction) -> PciDeviceInfo {
    let g = lock(f);
    let c = g.config();
    let (sv, sd) = c.subsystem();
    PciDeviceInfo {
        slot,
        vendor: c.vendor(),
        device: c.device(),
        subsystem_vendor: sv,
        subsystem: sd,
        class: c.class(),
        revision: c.read8(0x08),
        irq_line: c.interrupt_line(),
        irq_pin: c.interrupt_pin(),
        bars: c
            .decoded_bars()
            .into_iter()
            .map(|(i, d, r)| (i, d.kind, r, d.size))
            .collect(),
        rom: (c.rom_size() > 0).then(|| (c.decoded_rom(), c.rom_size())),
        id: g.id(),
    }
}

/// A function with no behaviour beyond its configuration space.
pub struct PlainFunction {
    pub space: ConfigSpace,
    initial: ConfigSpace,
    pub id: String,
}

impl PlainFunction {
    pub fn new(space: ConfigSpace) -> Self {
        Self {
            initial: space.clone(),
            space,
            id: String::new(),
        }
    }
}

impl PciFunction for PlainFunction {
    fn config(&self) -> &ConfigSpace {
        &self.space
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.space
    }
    fn reset(&mut self) {
        self.space = self.initial.clone();
    }
    fn id(&self) -> String {
        self.id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_with_vga() -> PciHost {
        let mut h = PciHost::new();
        h.add(
            (2, 0),
            Arc::new(Mutex::new(PlainFunction::new(vga_space()))),
        );
        h
    }

    fn vga_space() -> ConfigSpace {
        let mut cs = ConfigSpace::new(Ids {
            vendor: 0x1234,
            device: 0x1111,
            revision: 2,
            class: (3, 0, 0),
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            header_type: 0,
        });
        cs.add_bar(
            0,
            BarDef {
                kind: BarKind::Mem32 { prefetch: true },
                size: 16 << 20,
            },
        );
        cs
    }

    fn addr(h: &mut PciHost, dev: u32, reg: u32) {
        h.write(0, &(0x8000_0000 | (dev << 11) | reg).to_le_bytes());
    }

    #[test]
    fn config_mechanism_one_reads_ids_and_absent_functions_float() {
        let mut h = host_with_vga();
        addr(&mut h, 2, 0);
        let mut d = [0u8; 4];
        h.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1111_1234);
        let mut w = [0u8; 2];
        h.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1111);
        addr(&mut h, 5, 0);
        h.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        h.write(0, &0u32.to_le_bytes());
        addr(&mut h, 2, 0);
        h.write(0, &0x0000_1000u32.to_le_bytes()); // enable bit clear
        h.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn a_write_names_the_function_and_moves_its_bar() {
        let mut h = host_with_vga();
        addr(&mut h, 2, 0x10);
        h.write(4, &0xfd00_0000u32.to_le_bytes());
        assert_eq!(h.take_written(), Some((2, 0)));
        assert_eq!(h.take_written(), None);
        addr(&mut h, 2, 0x04);
        h.write(4, &[0x02]);
        let info = describe((2, 0), h.get((2, 0)).unwrap());
        assert_eq!(
            info.bars[0].2,
            Some(Region {
                addr: 0xfd00_0000,
                size: 16 << 20
            })
        );
        assert_eq!(info.class_name(), "VGA controller");
    }

    #[test]
    fn byte_at_cf9_goes_to_reset_control() {
        struct Rcr(std::sync::Arc<std::sync::atomic::AtomicU8>);
        impl BusDevice for Rcr {
            fn read(&mut self, _o: u64, d: &mut [u8]) {
                d[0] = self.0.load(std::sync::atomic::Ordering::SeqCst);
            }
            fn write(&mut self, _o: u64, d: &[u8]) {
                self.0.store(d[0], std::sync::atomic::Ordering::SeqCst);
            }
        }
        let v = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let mut h = host_with_vga();
        h.set_reset_control(Box::new(Rcr(v.clone())));
        h.write(1, &[0x06]);
        assert_eq!(v.load(std::sync::atomic::Ordering::SeqCst), 6);
        addr(&mut h, 2, 0);
        let mut d = [0u8; 4];
        h.read(0, &mut d);
        assert_eq!(
            u32::from_le_bytes(d),
            0x8000_1000,
            "CONFIG_ADDRESS kept its value"
        );
    }

    #[test]
    fn a_selected_register_is_still_selected_after_restore() {
        let mut h = host_with_vga();
        addr(&mut h, 2, 0x10);
        let mut back = crate::check_roundtrip(&h, host_with_vga());
        // The guest's next access to CONFIG_DATA lands in the BAR it selected.
        back.write(4, &0xfd00_0000u32.to_le_bytes());
        assert_eq!(back.take_written(), Some((2, 0)));
        let mut d = [0u8; 4];
        back.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xfd00_0008);
    }

    #[test]
    fn a_plain_function_keeps_the_bar_and_command_the_guest_set() {
        let mut f = PlainFunction::new(vga_space());
        f.config_write(0x10, &0xfd00_0000u32.to_le_bytes());
        f.config_write(0x04, &[0x02, 0]);
        let back = crate::check_roundtrip(&f, PlainFunction::new(vga_space()));
        let before = describe((2, 0), &(Arc::new(Mutex::new(f)) as SharedFunction));
        let after = describe((2, 0), &(Arc::new(Mutex::new(back)) as SharedFunction));
        assert_eq!(after, before);
        assert_eq!(
            after.bars[0].2,
            Some(Region {
                addr: 0xfd00_0000,
                size: 16 << 20
            })
        );
    }

    #[test]
    fn random_traffic_never_panics() {
        let mut h = host_with_vga();
        let mut x: u64 = 7;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % 8;
            let len = [1usize, 2, 4][(x >> 8) as usize % 3];
            let mut buf = [0u8; 4];
            if x & 1 == 0 {
                h.write(off, &(x as u32).to_le_bytes()[..len]);
            } else {
                h.read(off, &mut buf[..len]);
            }
        }
    }
}
