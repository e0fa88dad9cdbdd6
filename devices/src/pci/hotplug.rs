//! The ACPI PCI hotplug register block of QEMU's `pc` machine (`acpi-pcihp` on the PIIX4,
//! for bus 0), at I/O 0xAE00, 0x18 bytes, dword registers:
//!
//! | offset | name | read | write |
//! |---|---|---|---|
//! | 0x00 | PCIU | slots with a device just plugged (cleared by the read) | ignored |
//! | 0x04 | PCID | slots whose device the host asks the guest to eject | ignored |
//! | 0x08 | B0EJ | 0 | eject the slots whose bits are set |
//! | 0x0c | PCRM | slots that may be hot-(un)plugged | ignored |
//! | 0x10 | BNUM | the selected bus | select a bus (only 0 exists) |
//! | 0x14 | PIDX | 0 (no `acpi-index`) | ignored |
//!
//! The guest's AML (`_E01` → `PCNT`) reads PCIU and PCID when GPE0 bit 1 fires and
//! notifies the slot devices (1: device check, 3: eject request); the OSPM's `_EJ0` writes
//! the slot's bit to B0EJ. The model says when the GPE must be raised and which slots the
//! guest ejected; the platform raises the GPE and removes the devices.

use serde::{Deserialize, Serialize};

use crate::{Snapshot, StateError};

/// Where the block sits and how long it is.
pub const PCIHP_BASE: u16 = 0xae00;
pub const PCIHP_LEN: u16 = 0x18;
/// The GPE0 status bit the block raises (QEMU's ACPI_PCI_HOTPLUG_STATUS).
pub const PCIHP_GPE_BIT: u8 = 1;

const UP: u64 = 0x00;
const DOWN: u64 = 0x04;
const EJ: u64 = 0x08;
const RMV: u64 = 0x0c;
const SEL: u64 = 0x10;

/// What a register write asks of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ejected(pub u32);

impl Ejected {
    /// The slots ejected, lowest first.
    pub fn slots(self) -> impl Iterator<Item = u8> {
        (0..32u8).filter(move |s| self.0 & (1 << s) != 0)
    }
}

/// Guest-visible state of the block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciHotplugState {
    pub up: u32,
    pub down: u32,
    pub removable: u32,
    pub select: u32,
}

/// The register block (see the module doc).
#[derive(Debug, Default)]
pub struct PciHotplug {
    up: u32,
    down: u32,
    /// Slots that may be hot-(un)plugged (PCRM).
    removable: u32,
    select: u32,
}

impl PciHotplug {
    /// `removable`: the slots the guest may see come and go (empty slots and hotpluggable
    /// devices).
    pub fn new(removable: u32) -> Self {
        Self {
            removable,
            ..Self::default()
        }
    }

    /// A device arrived in `slot`: the guest learns it at the next GPE (raise it).
    pub fn plugged(&mut self, slot: u8) {
        let bit = 1u32 << (slot & 31);
        self.up |= bit;
        self.down &= !bit;
    }

    /// The host asks the guest to eject `slot` (raise the GPE).
    pub fn unplug_request(&mut self, slot: u8) {
        self.down |= 1u32 << (slot & 31);
    }

    /// Whether an unplug of `slot` waits for the guest.
    pub fn unplug_pending(&self, slot: u8) -> bool {
        self.down & (1u32 << (slot & 31)) != 0
    }

    /// Whether `slot` may be hot-(un)plugged.
    pub fn removable(&self, slot: u8) -> bool {
        self.removable & (1u32 << (slot & 31)) != 0
    }

    /// Power-on: nothing pending. The removable slots are the machine's, not the guest's.
    pub fn reset(&mut self) {
        self.up = 0;
        self.down = 0;
        self.select = 0;
    }

    fn bus0(&self) -> bool {
        self.select == 0
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset & !3 {
            UP if self.bus0() => std::mem::take(&mut self.up),
            DOWN if self.bus0() => self.down,
            RMV if self.bus0() => self.removable,
            SEL => self.select,
            _ => 0,
        };
        let b = v.to_le_bytes();
        let at = (offset & 3) as usize;
        for (i, d) in data.iter_mut().enumerate() {
            *d = b.get(at + i).copied().unwrap_or(0);
        }
    }

    /// A register write; the slots the guest ejected (their devices must go).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Ejected {
        let mut b = [0u8; 4];
        let at = (offset & 3) as usize;
        for (i, d) in data.iter().enumerate() {
            if let Some(x) = b.get_mut(at + i) {
                *x = *d;
            }
        }
        let v = u32::from_le_bytes(b);
        match offset & !3 {
            EJ if self.bus0() => {
                // Only slots that may go: the chipset and the VGA stay whatever is written.
                let slots = v & self.removable;
                self.down &= !slots;
                Ejected(slots)
            }
            SEL => {
                self.select = v;
                Ejected::default()
            }
            _ => Ejected::default(),
        }
    }
}

impl Snapshot for PciHotplug {
    type State = PciHotplugState;
    const KIND: &'static str = "acpi-pcihp";
    const VERSION: u32 = 1;
    fn save(&self) -> PciHotplugState {
        PciHotplugState {
            up: self.up,
            down: self.down,
            removable: self.removable,
            select: self.select,
        }
    }
    fn restore(&mut self, s: PciHotplugState) -> Result<(), StateError> {
        self.up = s.up;
        self.down = s.down;
        self.removable = s.removable;
        self.select = s.select;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r32(h: &mut PciHotplug, off: u64) -> u32 {
        let mut b = [0u8; 4];
        h.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn a_plugged_slot_shows_in_up_once_and_an_unplug_request_in_down_until_ejected() {
        let mut h = PciHotplug::new(!0b111);
        assert_eq!(r32(&mut h, RMV), !0b111);
        h.plugged(5);
        assert_eq!(r32(&mut h, UP), 1 << 5);
        assert_eq!(r32(&mut h, UP), 0, "UP clears when read");
        h.unplug_request(5);
        assert!(h.unplug_pending(5));
        assert_eq!(r32(&mut h, DOWN), 1 << 5);
        assert_eq!(r32(&mut h, DOWN), 1 << 5, "DOWN stays until the eject");
        assert_eq!(h.write(EJ, &(1u32 << 5).to_le_bytes()), Ejected(1 << 5));
        assert_eq!(r32(&mut h, DOWN), 0);
        assert_eq!(Ejected(1 << 5 | 1 << 9).slots().collect::<Vec<_>>(), [5, 9]);
    }

    #[test]
    fn fixed_slots_cannot_be_ejected_and_other_buses_read_zero() {
        let mut h = PciHotplug::new(!0b111);
        assert_eq!(h.write(EJ, &0b110u32.to_le_bytes()), Ejected(0));
        h.plugged(4);
        h.write(SEL, &1u32.to_le_bytes());
        assert_eq!(r32(&mut h, SEL), 1);
        assert_eq!(r32(&mut h, UP), 0);
        assert_eq!(h.write(EJ, &(1u32 << 4).to_le_bytes()), Ejected(0));
        h.write(SEL, &0u32.to_le_bytes());
        assert_eq!(r32(&mut h, UP), 1 << 4);
        // Byte accesses see the right lanes.
        h.unplug_request(9);
        let mut b = [0u8; 1];
        h.read(DOWN + 1, &mut b);
        assert_eq!(b[0], 1 << 1);
    }

    #[test]
    fn state_round_trips() {
        let mut h = PciHotplug::new(0xfff8);
        h.plugged(3);
        h.unplug_request(4);
        let mut g = PciHotplug::new(0);
        g.restore(h.save()).unwrap();
        assert_eq!(g.save(), h.save());
    }
}
