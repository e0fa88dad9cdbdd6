//! virtio-rng (entropy device): one queue of device-writable buffers the device fills
//! with random bytes. No features, no configuration space.

use serde::{Deserialize, Serialize};

use super::VirtioDeviceModel;
use crate::{Snapshot, StateError};

pub struct Rng;

/// virtio-rng has no state of its own: no configuration space, no features. Its queue is
/// saved by the transport ([`super::pci::VirtioPciState`]) and the ring indices by the
/// actor; the section exists so that a transport restores only into a virtio-rng.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {}

impl Snapshot for Rng {
    type State = RngState;
    const KIND: &'static str = "virtio-rng";
    const VERSION: u32 = 1;
    fn save(&self) -> RngState {
        RngState {}
    }
    fn restore(&mut self, _s: RngState) -> Result<(), StateError> {
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::console::Console;
    use crate::virtio::DeviceState;

    #[test]
    fn an_rng_section_restores_into_an_rng_only() {
        crate::check_roundtrip(&Rng, Rng);
        let section = Rng.save_device();
        let err = Console.restore_device(&section).unwrap_err();
        assert!(matches!(err, StateError::Kind { .. }), "{err}");
    }
}
