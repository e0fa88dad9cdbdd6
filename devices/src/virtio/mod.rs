//! Virtio devices as state machines: the PCI transport ([`pci`]), descriptor chains walked
//! with every check a hostile driver calls for ([`chain`]), and the device types
//! ([`blk`], [`rng`]).
//!
//! Split of work: the transport model owns every guest-visible register (common
//! configuration, ISR, legacy I/O header, MSI-X table and PBA, device configuration) and
//! says what the host must do about a register write ([`pci::Action`]: activate the queues,
//! reset, a queue notify that bypassed its ioeventfd). The queues themselves are served by
//! the device's actor in `actors::virtio`, which uses the `virtio-queue` crate for the
//! available and used rings and [`chain::walk`] for the descriptors.

pub mod balloon;
pub mod blk;
pub mod chain;
pub mod console;
pub mod input;
pub mod net;
pub mod pci;
pub mod rng;

/// Device status bits (virtio 1.x 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// Transport feature bits every device offers.
pub mod features {
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device type numbers (virtio 1.x 5).
pub mod device_type {
    pub const NET: u16 = 1;
    pub const BLOCK: u16 = 2;
    pub const CONSOLE: u16 = 3;
    pub const RNG: u16 = 4;
    pub const BALLOON: u16 = 5;
    pub const INPUT: u16 = 18;
}

use crate::{restore_section, save_section, Section, Snapshot, StateError};

/// The object-safe face of a device type's [`Snapshot`], so that the transport can save
/// and restore the device it holds as a `Box<dyn VirtioDeviceModel>`. Implemented for
/// every `Snapshot`; being a supertrait of [`VirtioDeviceModel`], it makes a device type
/// without a `Snapshot` a compile error.
pub trait DeviceState {
    /// The device's state as a section (id `device`, its own kind and version).
    fn save_device(&self) -> Section;
    /// Restore from a section saved by [`Self::save_device`] (kind and version checked).
    fn restore_device(&mut self, section: &Section) -> Result<(), StateError>;
}

impl<T: Snapshot> DeviceState for T {
    fn save_device(&self) -> Section {
        save_section("device", self)
    }
    fn restore_device(&mut self, section: &Section) -> Result<(), StateError> {
        restore_section(self, section)
    }
}

/// What a device type tells the transport: its identity, features, queues and
/// configuration space. Queue work is done by the device's actor, not here.
pub trait VirtioDeviceModel: Send + DeviceState {
    fn device_type(&self) -> u16;
    /// Device-specific feature bits (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX).
    fn features(&self) -> u64;
    /// Maximum size of each queue (the length is the number of queues).
    fn queue_sizes(&self) -> Vec<u16>;
    /// Bytes of device configuration space.
    fn config_len(&self) -> usize;
    fn config_read(&self, offset: usize, data: &mut [u8]);
    /// A driver write to the configuration space (most fields are read-only).
    fn config_write(&mut self, _offset: usize, _data: &[u8]) {}
    /// (PCI class, subclass) as QEMU gives this device type.
    fn pci_class(&self) -> (u8, u8);
    /// `set_link` on a NIC: change the link status the driver reads; false when the
    /// device has no link.
    fn set_link(&mut self, _up: bool) -> bool {
        false
    }
}

/// Copy `data.len()` bytes of `bytes` at `offset` into `data`, zeros past the end.
pub fn read_bytes(bytes: &[u8], offset: usize, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(offset + i).copied().unwrap_or(0);
    }
}
