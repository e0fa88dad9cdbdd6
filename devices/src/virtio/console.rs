//! virtio-console as QEMU's `virtio-serial-pci` with one `virtconsole`: a single console
//! port on receiveq0/transmitq0 (no MULTIPORT), bytes to and from a chardev.

use super::VirtioDeviceModel;

/// The controller with its console port.
#[derive(Default)]
pub struct Console;

impl VirtioDeviceModel for Console {
    fn device_type(&self) -> u16 {
        super::device_type::CONSOLE
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_sizes(&self) -> Vec<u16> {
        vec![128, 128]
    }
    fn config_len(&self) -> usize {
        // cols, rows, max_nr_ports, emerg_wr.
        12
    }
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        let mut space = [0u8; 12];
        space[4..8].copy_from_slice(&1u32.to_le_bytes());
        super::read_bytes(&space, offset, data);
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x07, 0x80)
    }
}
