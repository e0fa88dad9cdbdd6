//! The two legacy ways a PC guest resets or gates A20 without the keyboard controller:
//! the PIIX reset control register at 0xCF9 ([`ResetControl`]) and the "fast A20 and
//! init" port 0x92 ([`Port92`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, SharedEvents, Snapshot, StateError, SystemEvent};

/// PIIX3 Reset Control Register (0xCF9): bit 1 selects a hard reset, bit 2 triggers it.
/// QEMU resets the machine on any write with bit 2 set; so do we.
pub struct ResetControl {
    value: u8,
    events: SharedEvents,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetControlState {
    pub value: u8,
}

impl ResetControl {
    pub fn new(events: SharedEvents) -> Self {
        Self { value: 0, events }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.value;
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let v = data[0];
        if v & 0x04 != 0 {
            self.value = 0;
            self.events.post(SystemEvent::ResetRequested);
        } else {
            self.value = v & 0x02;
        }
    }
}

impl Snapshot for ResetControl {
    type State = ResetControlState;
    const KIND: &'static str = "piix-rcr";
    const VERSION: u32 = 1;
    fn save(&self) -> ResetControlState {
        ResetControlState { value: self.value }
    }
    fn restore(&mut self, s: ResetControlState) -> Result<(), StateError> {
        self.value = s.value;
        Ok(())
    }
}

/// System control port A (0x92): bit 0 resets the CPU (on a 0→1 edge), bit 1 gates A20.
pub struct Port92 {
    value: u8,
    events: Arc<dyn crate::SystemEvents>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port92State {
    pub value: u8,
}

impl Port92 {
    pub fn new(events: SharedEvents) -> Self {
        // A20 enabled at power-on on a PC with a modern chipset.
        Self {
            value: 0x02,
            events,
        }
    }

    /// Whether A20 is enabled through this port.
    pub fn a20(&self) -> bool {
        self.value & 0x02 != 0
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.value;
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let v = data[0];
        if v & 0x01 != 0 && self.value & 0x01 == 0 {
            self.events.post(SystemEvent::ResetRequested);
        }
        self.value = v & 0x03;
        if v & 0x01 != 0 {
            // The reset bit reads back as 0 once the reset has been requested.
            self.value &= !0x01;
        }
    }
}

impl Snapshot for Port92 {
    type State = Port92State;
    const KIND: &'static str = "port92";
    const VERSION: u32 = 1;
    fn save(&self) -> Port92State {
        Port92State { value: self.value }
    }
    fn restore(&mut self, s: Port92State) -> Result<(), StateError> {
        self.value = s.value & 0x03;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeEvents;

    #[test]
    fn cf9_resets_on_bit_2() {
        let ev = Arc::new(FakeEvents::default());
        let mut r = ResetControl::new(ev.clone());
        r.write(0, &[0x02]);
        assert!(ev.taken().is_empty());
        let mut b = [0];
        r.read(0, &mut b);
        assert_eq!(b[0], 0x02);
        r.write(0, &[0x06]);
        assert_eq!(ev.taken(), vec![SystemEvent::ResetRequested]);
    }

    #[test]
    fn port92_resets_on_bit_0_and_keeps_a20() {
        let ev = Arc::new(FakeEvents::default());
        let mut p = Port92::new(ev.clone());
        assert!(p.a20());
        p.write(0, &[0x00]);
        assert!(!p.a20());
        p.write(0, &[0x03]);
        assert_eq!(ev.taken(), vec![SystemEvent::ResetRequested]);
    }

    #[test]
    fn a20_gated_off_stays_off_after_restore() {
        let ev = Arc::new(FakeEvents::default());
        let mut p = Port92::new(ev.clone());
        p.write(0, &[0x00]);
        let q = crate::check_roundtrip(&p, Port92::new(ev));
        assert!(!q.a20());
    }

    #[test]
    fn the_hard_reset_selection_survives_restore() {
        let ev = Arc::new(FakeEvents::default());
        let mut r = ResetControl::new(ev.clone());
        r.write(0, &[0x02]);
        let mut q = crate::check_roundtrip(&r, ResetControl::new(ev.clone()));
        let mut b = [0];
        q.read(0, &mut b);
        assert_eq!(b[0], 0x02);
        q.write(0, &[0x06]);
        assert_eq!(ev.taken(), vec![SystemEvent::ResetRequested]);
    }
}
