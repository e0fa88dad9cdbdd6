//! ACPI memory hotplug as QEMU's `pc` machine presents it at I/O 0x0A00 (QEMU's
//! docs/specs/acpi_mem_hotplug.rst): one 24-byte block, a slot selector, and the selected
//! DIMM slot's registers.
//!
//! Reads: address low/high (dwords at 0x0, 0x4), size low/high (0x8, 0xC), proximity
//! domain (0x10), status (byte at 0x14: bit 0 enabled, 1 insert event, 2 remove event).
//! Writes: slot selector (dword at 0x0), `_OST` event (0x4) and status (0x8; the status
//! write completes the report), control (byte at 0x14: bit 1 clears the insert event,
//! bit 2 the remove event, bit 3 ejects). A selector past the last slot reads 0 and
//! makes every other write be ignored.
//!
//! The guest learns about events through GPE0 bit 3 ([`MEMHP_GPE_BIT`]), whose handler
//! (`\_GPE._E03` → `\_SB.MHPC.MSCN`) scans the slots and notifies the `MPxx` devices. The
//! model says what the guest asked (an eject, an `_OST` report); the platform raises the
//! GPE and removes the DIMM.

use serde::{Deserialize, Serialize};

use crate::{Snapshot, StateError};

/// Where the block sits and how many ports it decodes.
pub const MEMHP_BASE: u16 = 0x0a00;
pub const MEMHP_LEN: u16 = 0x18;
/// The GPE0 status bit the block raises (QEMU's ACPI_MEMORY_HOTPLUG_STATUS).
pub const MEMHP_GPE_BIT: u8 = 3;

const ADDR_LO: u64 = 0x0;
const ADDR_HI: u64 = 0x4;
const SIZE_LO: u64 = 0x8;
const SIZE_HI: u64 = 0xc;
const PROXIMITY: u64 = 0x10;
const STATUS: u64 = 0x14;
const SELECTOR: u64 = 0x0;
const OST_EVENT: u64 = 0x4;
const OST_STATUS: u64 = 0x8;

const FLAG_ENABLED: u8 = 1 << 0;
const FLAG_INSERT: u8 = 1 << 1;
const FLAG_REMOVE: u8 = 1 << 2;
const FLAG_EJECT: u8 = 1 << 3;

/// What a register write asks of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemHotplugRequest {
    /// The guest ejected the DIMM in this slot: it is no longer enabled; it must go.
    Eject(u32),
    /// The guest's `_OST` for slot `slot`: (event, status), as QEMU's `ACPI_DEVICE_OST`.
    Ost { slot: u32, event: u32, status: u32 },
}

/// Why the host cannot ask for a DIMM to go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemHotplugError {
    #[error("memory slot {0} holds no DIMM")]
    Empty(u32),
    #[error("the DIMM in memory slot {0} is already being unplugged")]
    Pending(u32),
    #[error("memory slot {0} does not exist")]
    NoSuchSlot(u32),
}

/// One DIMM slot as the block shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimmSlot {
    pub addr: u64,
    pub size: u64,
    pub proximity: u32,
    pub enabled: bool,
    pub inserting: bool,
    pub removing: bool,
    pub ost_event: u32,
    pub ost_status: u32,
}

/// Guest-visible state of the block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemHotplugState {
    pub selector: u32,
    pub slots: Vec<DimmSlot>,
}

/// The register block (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemHotplug {
    selector: u32,
    slots: Vec<DimmSlot>,
}

impl MemHotplug {
    /// `slots` DIMM slots (`-m ...,slots=N`), all empty.
    pub fn new(slots: u32) -> Self {
        Self {
            selector: 0,
            slots: vec![DimmSlot::default(); slots as usize],
        }
    }

    /// Slot `n` as the guest sees it.
    pub fn slot(&self, n: u32) -> Option<&DimmSlot> {
        self.slots.get(n as usize)
    }

    /// Every slot, in order.
    pub fn slots(&self) -> &[DimmSlot] {
        &self.slots
    }

    /// A DIMM of `size` bytes at `addr` arrived in slot `n`: enabled, with an insert event
    /// (raise the GPE).
    pub fn plugged(&mut self, n: u32, addr: u64, size: u64) {
        if let Some(s) = self.slots.get_mut(n as usize) {
            s.addr = addr;
            s.size = size;
            s.enabled = true;
            s.inserting = true;
            s.removing = false;
        }
    }

    /// A DIMM of `size` bytes at `addr` is in slot `n` from power-on (`-device pc-dimm`):
    /// enabled, with no event.
    pub fn present(&mut self, n: u32, addr: u64, size: u64) {
        self.plugged(n, addr, size);
        if let Some(s) = self.slots.get_mut(n as usize) {
            s.inserting = false;
        }
    }

    /// Ask the guest to eject the DIMM in slot `n` (raise the GPE on Ok).
    pub fn unplug_request(&mut self, n: u32) -> Result<(), MemHotplugError> {
        let s = self
            .slots
            .get_mut(n as usize)
            .ok_or(MemHotplugError::NoSuchSlot(n))?;
        if !s.enabled {
            return Err(MemHotplugError::Empty(n));
        }
        if s.removing {
            return Err(MemHotplugError::Pending(n));
        }
        s.removing = true;
        Ok(())
    }

    /// The DIMM of slot `n` is gone (however it left): the slot is empty.
    pub fn removed(&mut self, n: u32) {
        if let Some(s) = self.slots.get_mut(n as usize) {
            let (ost_event, ost_status) = (s.ost_event, s.ost_status);
            *s = DimmSlot {
                ost_event,
                ost_status,
                ..DimmSlot::default()
            };
        }
    }

    /// The selected slot's register at `reg` as a little-endian dword.
    fn reg(&self, reg: u64) -> u32 {
        let Some(s) = self.slots.get(self.selector as usize) else {
            return 0;
        };
        match reg {
            ADDR_LO => s.addr as u32,
            ADDR_HI => (s.addr >> 32) as u32,
            SIZE_LO => s.size as u32,
            SIZE_HI => (s.size >> 32) as u32,
            PROXIMITY => s.proximity,
            STATUS => {
                let mut f = 0;
                if s.enabled {
                    f |= FLAG_ENABLED;
                }
                if s.inserting {
                    f |= FLAG_INSERT;
                }
                if s.removing {
                    f |= FLAG_REMOVE;
                }
                u32::from(f)
            }
            _ => 0,
        }
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *d = match at {
                // The status is a byte; 0x15..0x17 are reserved.
                STATUS => self.reg(STATUS) as u8,
                0..STATUS => self.reg(at & !3).to_le_bytes()[(at & 3) as usize],
                _ => 0,
            };
        }
    }

    /// A register write; what the guest asked of the platform, if anything.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<MemHotplugRequest> {
        let mut b = [0u8; 4];
        for (i, d) in data.iter().take(4).enumerate() {
            b[i] = *d;
        }
        let v = u32::from_le_bytes(b);
        if offset == SELECTOR {
            self.selector = v;
            return None;
        }
        let n = self.selector;
        let s = self.slots.get_mut(n as usize)?;
        match offset {
            OST_EVENT => {
                s.ost_event = v;
                None
            }
            OST_STATUS => {
                s.ost_status = v;
                Some(MemHotplugRequest::Ost {
                    slot: n,
                    event: s.ost_event,
                    status: v,
                })
            }
            STATUS => {
                let f = b[0];
                if f & FLAG_INSERT != 0 {
                    s.inserting = false;
                }
                if f & FLAG_REMOVE != 0 {
                    s.removing = false;
                }
                if f & FLAG_EJECT != 0 && s.enabled {
                    s.enabled = false;
                    s.inserting = false;
                    s.removing = false;
                    return Some(MemHotplugRequest::Eject(n));
                }
                None
            }
            _ => None,
        }
    }
}

impl Snapshot for MemHotplug {
    type State = MemHotplugState;
    const KIND: &'static str = "acpi-memhp";
    const VERSION: u32 = 1;
    fn save(&self) -> MemHotplugState {
        MemHotplugState {
            selector: self.selector,
            slots: self.slots.clone(),
        }
    }
    fn restore(&mut self, s: MemHotplugState) -> Result<(), StateError> {
        if s.slots.len() != self.slots.len() {
            return Err(StateError::Invalid {
                kind: Self::KIND,
                reason: format!(
                    "{} memory slots saved, this machine has {}",
                    s.slots.len(),
                    self.slots.len()
                ),
            });
        }
        self.selector = s.selector;
        self.slots = s.slots;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r8(h: &mut MemHotplug, off: u64) -> u8 {
        let mut b = [0u8; 1];
        h.read(off, &mut b);
        b[0]
    }

    fn r32(h: &mut MemHotplug, off: u64) -> u32 {
        let mut b = [0u8; 4];
        h.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w8(h: &mut MemHotplug, off: u64, v: u8) -> Option<MemHotplugRequest> {
        h.write(off, &[v])
    }

    fn w32(h: &mut MemHotplug, off: u64, v: u32) -> Option<MemHotplugRequest> {
        h.write(off, &v.to_le_bytes())
    }

    #[test]
    fn a_plugged_dimm_shows_its_range_and_insert_event_in_its_slot() {
        let mut h = MemHotplug::new(2);
        w32(&mut h, SELECTOR, 1);
        assert_eq!(r8(&mut h, STATUS), 0, "empty");
        h.plugged(1, 0x1_4000_0000, 0x1000_0000);
        assert_eq!(r32(&mut h, ADDR_LO), 0x4000_0000);
        assert_eq!(r32(&mut h, ADDR_HI), 1);
        assert_eq!(r32(&mut h, SIZE_LO), 0x1000_0000);
        assert_eq!(r32(&mut h, SIZE_HI), 0);
        assert_eq!(r32(&mut h, PROXIMITY), 0);
        assert_eq!(r8(&mut h, STATUS), FLAG_ENABLED | FLAG_INSERT);
        // Byte reads of a dword register.
        assert_eq!(r8(&mut h, ADDR_HI), 1);
        assert_eq!(r8(&mut h, SIZE_LO + 3), 0x10);
        assert_eq!(w8(&mut h, STATUS, FLAG_INSERT), None);
        assert_eq!(r8(&mut h, STATUS), FLAG_ENABLED);
        // Slot 0 is still empty.
        w32(&mut h, SELECTOR, 0);
        assert_eq!(r32(&mut h, ADDR_LO), 0);
        assert_eq!(r8(&mut h, STATUS), 0);
    }

    #[test]
    fn an_unplug_request_shows_as_remove_and_the_eject_reports_the_slot_once() {
        let mut h = MemHotplug::new(2);
        assert_eq!(h.unplug_request(0), Err(MemHotplugError::Empty(0)));
        assert_eq!(h.unplug_request(2), Err(MemHotplugError::NoSuchSlot(2)));
        h.plugged(0, 0x1_0000_0000, 0x800_0000);
        h.unplug_request(0).unwrap();
        assert_eq!(h.unplug_request(0), Err(MemHotplugError::Pending(0)));
        w32(&mut h, SELECTOR, 0);
        assert_eq!(r8(&mut h, STATUS), FLAG_ENABLED | FLAG_INSERT | FLAG_REMOVE);
        w8(&mut h, STATUS, FLAG_REMOVE | FLAG_INSERT);
        assert_eq!(r8(&mut h, STATUS), FLAG_ENABLED);
        assert_eq!(
            w8(&mut h, STATUS, FLAG_EJECT),
            Some(MemHotplugRequest::Eject(0))
        );
        assert_eq!(r8(&mut h, STATUS), 0);
        assert_eq!(w8(&mut h, STATUS, FLAG_EJECT), None, "already gone");
        h.removed(0);
        assert_eq!(r32(&mut h, SIZE_LO), 0);
    }

    #[test]
    fn ost_reports_event_and_status_and_a_bad_selector_reads_zero_and_ignores_writes() {
        let mut h = MemHotplug::new(1);
        h.plugged(0, 0x1_0000_0000, 0x800_0000);
        w32(&mut h, SELECTOR, 0);
        assert_eq!(w32(&mut h, OST_EVENT, 1), None);
        assert_eq!(
            w32(&mut h, OST_STATUS, 0),
            Some(MemHotplugRequest::Ost {
                slot: 0,
                event: 1,
                status: 0
            })
        );
        w32(&mut h, SELECTOR, 5);
        assert_eq!(r32(&mut h, ADDR_HI), 0);
        assert_eq!(r8(&mut h, STATUS), 0);
        assert_eq!(w8(&mut h, STATUS, FLAG_EJECT), None);
        assert_eq!(w32(&mut h, OST_STATUS, 1), None);
        w32(&mut h, SELECTOR, 0);
        assert_eq!(r8(&mut h, STATUS), FLAG_ENABLED | FLAG_INSERT);
    }

    #[test]
    fn state_round_trips_and_a_different_slot_count_is_refused() {
        let mut h = MemHotplug::new(2);
        h.plugged(1, 0x1_0000_0000, 0x800_0000);
        let back = crate::check_roundtrip(&h, MemHotplug::new(2));
        assert_eq!(back, h);
        assert!(MemHotplug::new(3).restore(h.save()).is_err());
    }
}
