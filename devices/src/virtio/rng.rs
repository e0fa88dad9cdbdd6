//! virtio-rng (entropy device): one queue of device-writable buffers the device fills
//! with random bytes. No features, no configuration space.

use super::VirtioDeviceModel;

pub struct Rng;

impl VirtioDeviceModel for Rng {
    fn device_type(&self) -> u16 {
        super::device_type::RNG
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_sizes(&self) -> Vec<u16> {
        vec![256]
    }
    fn config_len(&self) -> usize {
        0
    }
    fn config_read(&self, _offset: usize, data: &mut [u8]) {
        data.fill(0);
    }
    fn pci_class(&self) -> (u8, u8) {
        (0xff, 0x00)
    }
}
