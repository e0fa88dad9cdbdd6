//! virtio-net: MAC and link status in the configuration space, one receive and one
//! transmit queue. Frames carry the virtio-net header (12 bytes with VERSION_1, 10 for a
//! legacy driver); troupe offers no offloads yet, so the header is all zeros both ways.

use super::VirtioDeviceModel;

pub const F_MAC: u64 = 1 << 5;
pub const F_STATUS: u64 = 1 << 16;
pub const STATUS_LINK_UP: u16 = 1;

/// The virtio-net header length for the negotiated features.
pub fn header_len(driver_features: u64) -> usize {
    if driver_features & super::features::VERSION_1 != 0 {
        12
    } else {
        10
    }
}

pub struct Net {
    mac: [u8; 6],
    link_up: bool,
}

impl Net {
    pub fn new(mac: [u8; 6]) -> Self {
        Self { mac, link_up: true }
    }

    pub fn link_up(&self) -> bool {
        self.link_up
    }
}

impl VirtioDeviceModel for Net {
    fn device_type(&self) -> u16 {
        super::device_type::NET
    }
    fn features(&self) -> u64 {
        F_MAC | F_STATUS
    }
    fn queue_sizes(&self) -> Vec<u16> {
        vec![256, 256]
    }
    fn config_len(&self) -> usize {
        // mac, status, max_virtqueue_pairs, mtu.
        12
    }
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        let mut s = [0u8; 12];
        s[..6].copy_from_slice(&self.mac);
        let status = if self.link_up { STATUS_LINK_UP } else { 0 };
        s[6..8].copy_from_slice(&status.to_le_bytes());
        s[8..10].copy_from_slice(&1u16.to_le_bytes());
        s[10..12].copy_from_slice(&1500u16.to_le_bytes());
        super::read_bytes(&s, offset, data);
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x02, 0x00)
    }
    /// The driver sees the new status (the caller signals a configuration change).
    fn set_link(&mut self, up: bool) -> bool {
        self.link_up = up;
        true
    }
}
