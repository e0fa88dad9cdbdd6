//! virtio-console as QEMU's `virtio-serial-pci` with one `virtconsole`: a single console
//! port on receiveq0/transmitq0 (no MULTIPORT), bytes to and from a chardev.

use serde::{Deserialize, Serialize};

use super::VirtioDeviceModel;
use crate::{Snapshot, StateError};

/// The controller with its console port.
#[derive(Default)]
pub struct Console;

/// The console has no state of its own: without MULTIPORT there are no control messages
/// (no port open/close state), and its configuration space is fixed. Its queues are saved
/// by the transport and the ring indices by the actor, which must also carry bytes it
/// took from the transmit queue but has not yet written to the chardev.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleState {}

impl Snapshot for Console {
    type State = ConsoleState;
    const KIND: &'static str = "virtio-serial";
    const VERSION: u32 = 1;
    fn save(&self) -> ConsoleState {
        ConsoleState {}
    }
    fn restore(&mut self, _s: ConsoleState) -> Result<(), StateError> {
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_console_still_reports_one_port() {
        let back = crate::check_roundtrip(&Console, Console);
        let mut ports = [0u8; 4];
        back.config_read(4, &mut ports);
        assert_eq!(u32::from_le_bytes(ports), 1);
    }
}
