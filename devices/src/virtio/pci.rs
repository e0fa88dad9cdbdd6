//! The virtio PCI transport as a state machine, modern (virtio 1.x capabilities) and
//! transitional (the legacy I/O BAR that SeaBIOS and older drivers use), laid out as QEMU
//! lays it out:
//!
//! - BAR0: legacy I/O header (features, queue PFN/size/select/notify, status, ISR, MSI-X
//!   vectors) followed by the device configuration;
//! - BAR1: MSI-X table at 0, PBA at 0x800 (4 KiB, 32-bit memory);
//! - BAR4: modern registers (16 KiB, 64-bit prefetchable memory): common configuration at
//!   0x0000, ISR at 0x1000, device configuration at 0x2000, notifications at 0x3000 (queue
//!   `q` at `0x3000 + 4 * q`).
//!
//! Interrupts: with MSI-X enabled a queue's or the configuration's vector is sent through
//! [`MsixSink`] (or left pending while masked); otherwise the ISR bit is set and INTx pin A
//! raised until the driver reads the ISR.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{features, status, VirtioDeviceModel};
use crate::pci::{BarDef, BarKind, ConfigSpace, ConfigSpaceState, Ids, PciFunction};
use crate::{IrqLine, Section, Snapshot, StateError};

/// "No vector" for MSI-X vector registers.
pub const NO_VECTOR: u16 = 0xffff;
pub const LEGACY_BAR: usize = 0;
pub const MSIX_BAR: usize = 1;
pub const MODERN_BAR: usize = 4;
pub const MODERN_BAR_SIZE: u64 = 0x4000;
pub const MSIX_BAR_SIZE: u64 = 0x1000;
pub const COMMON_CFG: u64 = 0x0000;
pub const ISR_CFG: u64 = 0x1000;
pub const DEVICE_CFG: u64 = 0x2000;
pub const NOTIFY_CFG: u64 = 0x3000;
pub const NOTIFY_MULTIPLIER: u64 = 4;
pub const PBA_OFFSET: u64 = 0x800;
/// Offset of the queue-notify register in the legacy I/O BAR.
pub const LEGACY_NOTIFY: u64 = 0x10;

const VENDOR: u16 = 0x1af4;

/// Where MSI-X messages go: implemented by the host over KVM's GSI routing and irqfds.
pub trait MsixSink: Send + Sync {
    /// The driver (re)programmed `vector`'s message.
    fn route(&self, vector: u16, address: u64, data: u32);
    /// Send `vector`'s message.
    fn fire(&self, vector: u16);
}

/// What the host must do after a register write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// DRIVER_OK was set: start serving the queues ([`VirtioPci::queues`]).
    Activate,
    /// The driver reset the device: stop serving the queues before the write completes.
    Reset,
    /// A queue notify reached the register (its ioeventfd was not installed).
    Notify(u16),
}

/// One queue's configuration as the driver programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub msix_vector: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            msix_vector: NO_VECTOR,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// A virtio device on the PCI transport.
pub struct VirtioPci {
    space: ConfigSpace,
    initial: ConfigSpace,
    msix_cap: usize,
    device: Box<dyn VirtioDeviceModel>,
    id: String,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_sel: u16,
    config_vector: u16,
    queues: Vec<QueueConfig>,
    isr: u8,
    /// (address low, address high, data, vector control) per vector.
    msix_table: Vec<[u32; 4]>,
    msix_pending: Vec<bool>,
    intx: Arc<dyn IrqLine>,
    sink: Arc<dyn MsixSink>,
    legacy_bar_size: u64,
}

fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

fn put(data: &mut [u8], v: u64) {
    let bytes = v.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&bytes[..n]);
}

impl VirtioPci {
    /// `msix_vectors` vectors (QEMU gives a disk queues + 1).
    pub fn new(
        device: Box<dyn VirtioDeviceModel>,
        msix_vectors: u16,
        intx: Arc<dyn IrqLine>,
        sink: Arc<dyn MsixSink>,
    ) -> Self {
        let ty = device.device_type();
        // Transitional ids for the types that had legacy ids; modern-only otherwise.
        let legacy_id = match ty {
            super::device_type::NET => Some(0x1000),
            super::device_type::BLOCK => Some(0x1001),
            super::device_type::CONSOLE => Some(0x1003),
            super::device_type::RNG => Some(0x1005),
            super::device_type::BALLOON => Some(0x1002),
            _ => None,
        };
        let (class, subclass) = device.pci_class();
        let mut space = ConfigSpace::new(Ids {
            vendor: VENDOR,
            device: legacy_id.unwrap_or(0x1040 + ty),
            revision: if legacy_id.is_some() { 0 } else { 1 },
            class: (class, subclass, 0),
            subsystem_vendor: VENDOR,
            subsystem: if legacy_id.is_some() { ty } else { 0x1100 },
            header_type: 0,
        });
        let legacy_bar_size = if legacy_id.is_some() {
            (24 + device.config_len() as u64)
                .next_power_of_two()
                .max(32)
        } else {
            0
        };
        if legacy_bar_size > 0 {
            space.add_bar(
                LEGACY_BAR,
                BarDef {
                    kind: BarKind::Io,
                    size: legacy_bar_size,
                },
            );
        }
        space.add_bar(
            MSIX_BAR,
            BarDef {
                kind: BarKind::Mem32 { prefetch: false },
                size: MSIX_BAR_SIZE,
            },
        );
        space.add_bar(
            MODERN_BAR,
            BarDef {
                kind: BarKind::Mem64 { prefetch: true },
                size: MODERN_BAR_SIZE,
            },
        );
        space.set_interrupt_pin(1);
        // MSI-X: table in BAR1 at 0, PBA at 0x800.
        let mut body = Vec::new();
        body.extend_from_slice(&(msix_vectors - 1).to_le_bytes());
        body.extend_from_slice(&(MSIX_BAR as u32).to_le_bytes());
        body.extend_from_slice(&(PBA_OFFSET as u32 | MSIX_BAR as u32).to_le_bytes());
        let msix_cap = space.add_capability(0x11, &body);
        space.set_writable(msix_cap + 3, 0xc0);
        // Vendor capabilities: common, ISR, device, notify.
        for (cfg_type, offset, len) in [
            (1u8, COMMON_CFG, 0x38u32),
            (3, ISR_CFG, 1),
            (4, DEVICE_CFG, device.config_len().max(1) as u32),
            (2, NOTIFY_CFG, 0x1000),
        ] {
            let mut b = vec![
                if cfg_type == 2 { 20 } else { 16 },
                cfg_type,
                MODERN_BAR as u8,
                0,
                0,
                0,
            ];
            b.extend_from_slice(&(offset as u32).to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            if cfg_type == 2 {
                b.extend_from_slice(&(NOTIFY_MULTIPLIER as u32).to_le_bytes());
            }
            space.add_capability(0x09, &b);
        }
        let queues = device
            .queue_sizes()
            .into_iter()
            .map(QueueConfig::new)
            .collect();
        Self {
            initial: space.clone(),
            space,
            msix_cap,
            device,
            id: String::new(),
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_sel: 0,
            config_vector: NO_VECTOR,
            queues,
            isr: 0,
            msix_table: vec![[0, 0, 0, 1]; usize::from(msix_vectors)],
            msix_pending: vec![false; usize::from(msix_vectors)],
            intx,
            sink,
            legacy_bar_size,
        }
    }

    /// Give the function an expansion ROM BAR of `size` bytes (a NIC's boot ROM).
    pub fn add_rom(&mut self, size: u64) {
        self.space.add_rom(size);
        self.initial.add_rom(size);
    }

    pub fn set_id(&mut self, id: &str) {
        self.id = id.to_string();
    }

    /// Size of the legacy I/O BAR (0: modern-only device).
    pub fn legacy_bar_size(&self) -> u64 {
        self.legacy_bar_size
    }

    pub fn device(&self) -> &dyn VirtioDeviceModel {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDeviceModel {
        self.device.as_mut()
    }

    /// Every feature this device offers.
    pub fn device_features(&self) -> u64 {
        self.device.features()
            | features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
    }

    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    fn msix_enabled(&self) -> bool {
        self.space.read16(self.msix_cap + 2) & 0x8000 != 0
    }

    fn msix_function_masked(&self) -> bool {
        self.space.read16(self.msix_cap + 2) & 0x4000 != 0
    }

    fn send(&mut self, vector: u16, isr_bit: u8) {
        if self.msix_enabled() {
            let v = usize::from(vector);
            if v >= self.msix_table.len() {
                return;
            }
            if self.msix_function_masked() || self.msix_table[v][3] & 1 != 0 {
                self.msix_pending[v] = true;
            } else {
                self.sink.fire(vector);
            }
        } else {
            self.isr |= isr_bit;
            self.intx.set_level(true);
        }
    }

    /// The device used buffers of queue `q`: interrupt the driver.
    pub fn signal_queue(&mut self, q: usize) {
        let Some(v) = self.queues.get(q).map(|q| q.msix_vector) else {
            return;
        };
        self.send(v, 1);
    }

    /// The device configuration (or status) changed.
    pub fn signal_config(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.send(self.config_vector, 2);
    }

    /// The device found an error it cannot recover from without a reset (a malformed
    /// ring): set NEEDS_RESET and tell the driver.
    pub fn set_needs_reset(&mut self) {
        if self.status & status::NEEDS_RESET == 0 && self.status & status::DRIVER_OK != 0 {
            self.status |= status::NEEDS_RESET;
            self.signal_config();
        }
    }

    fn reset_device(&mut self) {
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_sel = 0;
        self.config_vector = NO_VECTOR;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        self.isr = 0;
        self.intx.set_level(false);
    }

    fn read_isr(&mut self) -> u8 {
        let v = self.isr;
        self.isr = 0;
        self.intx.set_level(false);
        v
    }

    fn write_status(&mut self, v: u8) -> Option<Action> {
        if v == 0 {
            self.reset_device();
            return Some(Action::Reset);
        }
        let mut v = v;
        if v & status::FEATURES_OK != 0 && self.driver_features & !self.device_features() != 0 {
            // Features the device does not offer: FEATURES_OK does not stick.
            v &= !status::FEATURES_OK;
        }
        let was = self.status;
        self.status = v | (was & status::NEEDS_RESET);
        (v & status::DRIVER_OK != 0 && was & status::DRIVER_OK == 0).then_some(Action::Activate)
    }

    fn queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_sel))
    }

    /// A read of the modern BAR (BAR4).
    pub fn modern_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            COMMON_CFG..ISR_CFG => {
                let q = self.queues.get(usize::from(self.queue_sel)).copied();
                let v: u64 = match offset {
                    0x00 => u64::from(self.device_features_sel),
                    0x04 => match self.device_features_sel {
                        0 => self.device_features() & 0xffff_ffff,
                        1 => self.device_features() >> 32,
                        _ => 0,
                    },
                    0x08 => u64::from(self.driver_features_sel),
                    0x0c => match self.driver_features_sel {
                        0 => self.driver_features & 0xffff_ffff,
                        1 => self.driver_features >> 32,
                        _ => 0,
                    },
                    0x10 => u64::from(self.config_vector),
                    0x12 => self.queues.len() as u64,
                    0x14 => u64::from(self.status),
                    0x15 => u64::from(self.config_generation),
                    0x16 => u64::from(self.queue_sel),
                    0x18 => q.map_or(0, |q| u64::from(q.size)),
                    0x1a => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.msix_vector)),
                    0x1c => q.map_or(0, |q| u64::from(q.ready)),
                    0x1e => u64::from(self.queue_sel),
                    0x20 => q.map_or(0, |q| q.desc),
                    0x24 => q.map_or(0, |q| q.desc >> 32),
                    0x28 => q.map_or(0, |q| q.avail),
                    0x2c => q.map_or(0, |q| q.avail >> 32),
                    0x30 => q.map_or(0, |q| q.used),
                    0x34 => q.map_or(0, |q| q.used >> 32),
                    _ => 0,
                };
                put(data, v);
            }
            ISR_CFG => {
                let v = self.read_isr();
                data[0] = v;
            }
            DEVICE_CFG..NOTIFY_CFG => {
                self.device
                    .config_read((offset - DEVICE_CFG) as usize, data);
            }
            _ => {}
        }
    }

    /// A write to the modern BAR (BAR4).
    pub fn modern_write(&mut self, offset: u64, data: &[u8]) -> Option<Action> {
        let v = le_u32(data);
        let set_low = |x: u64| (x & !0xffff_ffff) | u64::from(v);
        let set_high = |x: u64| (x & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            0x00 => self.device_features_sel = v,
            0x08 => self.driver_features_sel = v,
            0x0c => match self.driver_features_sel {
                0 => self.driver_features = set_low(self.driver_features),
                1 => self.driver_features = set_high(self.driver_features),
                _ => {}
            },
            0x10 => self.config_vector = self.vector_or_none(v as u16),
            0x14 => return self.write_status(v as u8),
            0x16 => self.queue_sel = v as u16,
            0x18 => {
                if let Some(q) = self.queue() {
                    // A power of two no larger than the maximum; others are ignored.
                    let s = v as u16;
                    if s.is_power_of_two() && s <= q.max_size {
                        q.size = s;
                    }
                }
            }
            0x1a => {
                let vec = self.vector_or_none(v as u16);
                if let Some(q) = self.queue() {
                    q.msix_vector = vec;
                }
            }
            0x1c => {
                if let Some(q) = self.queue() {
                    q.ready = v & 1 != 0;
                }
            }
            0x20..=0x37 => {
                let field = (offset - 0x20) / 8;
                let high = (offset - 0x20) % 8 >= 4;
                if let Some(q) = self.queue() {
                    let r = match field {
                        0 => &mut q.desc,
                        1 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    *r = if data.len() == 8 && !high {
                        u64::from_le_bytes(data.try_into().unwrap_or_default())
                    } else if high {
                        set_high(*r)
                    } else {
                        set_low(*r)
                    };
                }
            }
            DEVICE_CFG..NOTIFY_CFG => {
                self.device
                    .config_write((offset - DEVICE_CFG) as usize, data);
            }
            NOTIFY_CFG.. => {
                let q = ((offset - NOTIFY_CFG) / NOTIFY_MULTIPLIER) as u16;
                return Some(Action::Notify(q));
            }
            _ => {}
        }
        None
    }

    fn vector_or_none(&self, v: u16) -> u16 {
        if usize::from(v) < self.msix_table.len() {
            v
        } else {
            NO_VECTOR
        }
    }

    /// Where the device configuration starts in the legacy BAR.
    fn legacy_config_offset(&self) -> u64 {
        if self.msix_enabled() {
            0x18
        } else {
            0x14
        }
    }

    /// A read of the legacy I/O BAR (BAR0).
    pub fn legacy_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let cfg = self.legacy_config_offset();
        if offset >= cfg {
            self.device.config_read((offset - cfg) as usize, data);
            return;
        }
        let q = self.queues.get(usize::from(self.queue_sel)).copied();
        let v: u64 = match offset {
            0x00 => self.device_features() & 0xffff_ffff & !features::VERSION_1,
            0x04 => self.driver_features & 0xffff_ffff,
            0x08 => q.map_or(0, |q| q.desc >> 12),
            0x0c => q.map_or(0, |q| u64::from(q.max_size)),
            0x0e => u64::from(self.queue_sel),
            0x12 => u64::from(self.status),
            0x13 => u64::from(self.read_isr()),
            0x14 => u64::from(self.config_vector),
            0x16 => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.msix_vector)),
            _ => 0,
        };
        put(data, v);
    }

    /// A write to the legacy I/O BAR (BAR0).
    pub fn legacy_write(&mut self, offset: u64, data: &[u8]) -> Option<Action> {
        let cfg = self.legacy_config_offset();
        if offset >= cfg {
            self.device.config_write((offset - cfg) as usize, data);
            return None;
        }
        let v = le_u32(data);
        match offset {
            0x04 => self.driver_features = u64::from(v),
            0x08 => {
                if let Some(q) = self.queue() {
                    // Legacy layout: descriptors, then the available ring, then the used
                    // ring at the next 4 KiB boundary.
                    let size = u64::from(q.max_size);
                    q.size = q.max_size;
                    q.desc = u64::from(v) << 12;
                    q.avail = q.desc + 16 * size;
                    q.used = (q.avail + 6 + 2 * size + 4095) & !4095;
                    q.ready = v != 0;
                }
            }
            0x0e => self.queue_sel = v as u16,
            0x10 => return Some(Action::Notify(v as u16)),
            0x12 => return self.write_status(v as u8),
            0x14 => self.config_vector = self.vector_or_none(v as u16),
            0x16 => {
                let vec = self.vector_or_none(v as u16);
                if let Some(q) = self.queue() {
                    q.msix_vector = vec;
                }
            }
            _ => {}
        }
        None
    }

    /// A read of the MSI-X BAR (BAR1): the table, then the PBA.
    pub fn msix_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= PBA_OFFSET {
            let mut bits = 0u64;
            let base = ((offset - PBA_OFFSET) / 8 * 64) as usize;
            for i in 0..64 {
                if self.msix_pending.get(base + i).copied().unwrap_or(false) {
                    bits |= 1 << i;
                }
            }
            let shift = ((offset - PBA_OFFSET) % 8) * 8;
            put(data, bits >> shift);
            return;
        }
        let (v, word) = ((offset / 16) as usize, ((offset % 16) / 4) as usize);
        if let Some(e) = self.msix_table.get(v) {
            let mut v = u64::from(e[word]);
            if data.len() == 8 && word < 3 {
                v |= u64::from(e[word + 1]) << 32;
            }
            put(data, v);
        }
    }

    /// A write to the MSI-X table.
    pub fn msix_write(&mut self, offset: u64, data: &[u8]) {
        if offset >= PBA_OFFSET {
            return;
        }
        let (v, word) = ((offset / 16) as usize, ((offset % 16) / 4) as usize);
        let Some(e) = self.msix_table.get_mut(v) else {
            return;
        };
        e[word] = le_u32(data);
        if data.len() == 8 && word < 3 {
            e[word + 1] = le_u32(&data[4..]);
        }
        let e = *e;
        self.sink
            .route(v as u16, u64::from(e[0]) | (u64::from(e[1]) << 32), e[2]);
        self.deliver_pending();
    }

    /// Send vectors that were held back while masked.
    fn deliver_pending(&mut self) {
        if !self.msix_enabled() || self.msix_function_masked() {
            return;
        }
        for v in 0..self.msix_table.len() {
            if self.msix_pending[v] && self.msix_table[v][3] & 1 == 0 {
                self.msix_pending[v] = false;
                self.sink.fire(v as u16);
            }
        }
    }
}

/// One queue as the driver configured it through the transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueState {
    /// The device's maximum (checked against the rebuilt device, not restored).
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub msix_vector: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// Everything the driver sees of a virtio PCI function: its configuration space (BARs,
/// MSI-X enable and mask), the common configuration (feature selectors, negotiated
/// features, device status, configuration generation, queue select, the configuration
/// vector), each queue's configuration, the ISR, the MSI-X table and PBA, and the device
/// type's own state as a nested section (`device`: `virtio-net`, `virtio-blk`...).
///
/// The transport does not walk the rings, so it does not know where the device stands in
/// them. The actor that serves the queues (`actors::virtio`) must save, next to this
/// section, each queue's next available index and next used index (`virtio_queue::Queue`
/// `next_avail`/`next_used`) and whether event-idx suppression is on, after draining the
/// requests in flight to their backends; on restore it activates the queues from
/// [`VirtioPci::queues`] (when the status has DRIVER_OK) and sets those indices before it
/// serves a notify. MSI-X routes are replayed to the [`MsixSink`] by the restore itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtioPciState {
    pub config: ConfigSpaceState,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u8,
    pub config_generation: u8,
    pub queue_sel: u16,
    pub config_vector: u16,
    pub queues: Vec<QueueState>,
    pub isr: u8,
    /// (address low, address high, data, vector control) per vector.
    pub msix_table: Vec<[u32; 4]>,
    pub msix_pending: Vec<bool>,
    /// The device type's state.
    pub device: Section,
}

impl Snapshot for VirtioPci {
    type State = VirtioPciState;
    const KIND: &'static str = "virtio-pci";
    const VERSION: u32 = 1;

    fn save(&self) -> VirtioPciState {
        VirtioPciState {
            config: self.space.save(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            queue_sel: self.queue_sel,
            config_vector: self.config_vector,
            queues: self
                .queues
                .iter()
                .map(|q| QueueState {
                    max_size: q.max_size,
                    size: q.size,
                    ready: q.ready,
                    msix_vector: q.msix_vector,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                })
                .collect(),
            isr: self.isr,
            msix_table: self.msix_table.clone(),
            msix_pending: self.msix_pending.clone(),
            device: self.device.save_device(),
        }
    }

    fn restore(&mut self, s: VirtioPciState) -> Result<(), StateError> {
        let invalid = |r: String| StateError::invalid(Self::KIND, r);
        let vectors = self.msix_table.len();
        if s.msix_table.len() != vectors || s.msix_pending.len() != vectors {
            return Err(invalid(format!(
                "msix_table has {} entries and msix_pending {} but this function has {vectors} \
                 MSI-X vectors",
                s.msix_table.len(),
                s.msix_pending.len()
            )));
        }
        let vector_ok = |v: u16| v == NO_VECTOR || usize::from(v) < vectors;
        if !vector_ok(s.config_vector) {
            return Err(invalid(format!(
                "config_vector {} is past the {vectors} MSI-X vectors",
                s.config_vector
            )));
        }
        if s.queues.len() != self.queues.len() {
            return Err(invalid(format!(
                "queues has {} entries but this device has {} queues",
                s.queues.len(),
                self.queues.len()
            )));
        }
        for (i, (q, mine)) in s.queues.iter().zip(&self.queues).enumerate() {
            if q.max_size != mine.max_size {
                return Err(invalid(format!(
                    "queues[{i}].max_size is {} but this device's queue {i} holds {}",
                    q.max_size, mine.max_size
                )));
            }
            if !q.size.is_power_of_two() || q.size > q.max_size {
                return Err(invalid(format!(
                    "queues[{i}].size {} is not a power of two up to {}",
                    q.size, q.max_size
                )));
            }
            if !vector_ok(q.msix_vector) {
                return Err(invalid(format!(
                    "queues[{i}].msix_vector {} is past the {vectors} MSI-X vectors",
                    q.msix_vector
                )));
            }
        }
        if s.status & status::FEATURES_OK != 0 && s.driver_features & !self.device_features() != 0 {
            return Err(invalid(format!(
                "driver_features {:#x} were accepted but this device offers only {:#x}",
                s.driver_features,
                self.device_features()
            )));
        }
        if s.isr & !3 != 0 {
            return Err(invalid(format!(
                "isr {:#x} has bits other than 0 and 1",
                s.isr
            )));
        }
        let mut space = self.space.clone();
        space
            .restore(s.config)
            .map_err(|e| e.within(Self::KIND, "config"))?;
        self.device.restore_device(&s.device)?;
        self.space = space;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.queue_sel = s.queue_sel;
        self.config_vector = s.config_vector;
        for (mine, q) in self.queues.iter_mut().zip(s.queues) {
            *mine = QueueConfig {
                max_size: q.max_size,
                size: q.size,
                ready: q.ready,
                msix_vector: q.msix_vector,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
            };
        }
        self.isr = s.isr;
        self.msix_table = s.msix_table;
        self.msix_pending = s.msix_pending;
        // The host's routes and the INTx line follow the restored registers.
        for (v, e) in self.msix_table.iter().enumerate() {
            self.sink
                .route(v as u16, u64::from(e[0]) | (u64::from(e[1]) << 32), e[2]);
        }
        self.intx.set_level(!self.msix_enabled() && self.isr != 0);
        Ok(())
    }
}

impl PciFunction for VirtioPci {
    fn config(&self) -> &ConfigSpace {
        &self.space
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.space
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.space.write(offset, data);
        if (offset..offset + data.len()).contains(&(self.msix_cap + 3)) {
            if self.msix_enabled() {
                // INTx is not used while MSI-X is on.
                self.intx.set_level(false);
            }
            self.deliver_pending();
        }
    }
    fn reset(&mut self) {
        self.space = self.initial.clone();
        self.reset_device();
        for (e, p) in self.msix_table.iter_mut().zip(&mut self.msix_pending) {
            *e = [0, 0, 0, 1];
            *p = false;
        }
    }
    fn id(&self) -> String {
        self.id.clone()
    }
}

#[cfg(test)]
mod tests;
