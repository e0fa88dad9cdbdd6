//! A PCI type-0 configuration space (PCI Local Bus 3.0, chapter 6): identity registers,
//! command/status, BARs with sizing, the expansion ROM BAR, a capability list and the
//! interrupt line/pin, with per-byte write masks so a guest can only change what hardware
//! lets it change.

use serde::{Deserialize, Serialize};

use crate::{Snapshot, StateError};

pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const BAR0: usize = 0x10;
pub const ROM_BAR: usize = 0x30;
pub const CAP_PTR: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

pub const CMD_IO: u16 = 0x1;
pub const CMD_MEM: u16 = 0x2;
pub const CMD_MASTER: u16 = 0x4;
pub const CMD_INTX_DISABLE: u16 = 0x400;
const STATUS_CAP_LIST: u16 = 0x10;
/// Status bits that are write-1-to-clear (parity, aborts, SERR).
const STATUS_W1C: u16 = 0xf900;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BarKind {
    Io,
    Mem32 {
        prefetch: bool,
    },
    /// Uses this slot and the next for the high half.
    Mem64 {
        prefetch: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarDef {
    pub kind: BarKind,
    /// Power of two.
    pub size: u64,
}

/// A decoded, enabled region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub addr: u64,
    pub size: u64,
}

/// The 256-byte configuration space of one function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigSpace {
    #[serde(with = "serde_bytes256")]
    regs: [u8; 256],
    #[serde(with = "serde_bytes256")]
    wmask: [u8; 256],
    #[serde(with = "serde_bytes256")]
    w1c: [u8; 256],
    bars: [Option<BarDef>; 6],
    rom_size: u64,
    next_cap: usize,
}

mod serde_bytes256 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 256], s: S) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 256], D::Error> {
        let v = Vec::<u8>::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("config space must be 256 bytes"))
    }
}

/// Identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// (class, subclass, prog-if).
    pub class: (u8, u8, u8),
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    pub header_type: u8,
}

impl ConfigSpace {
    pub fn new(ids: Ids) -> Self {
        let mut c = Self {
            regs: [0; 256],
            wmask: [0; 256],
            w1c: [0; 256],
            bars: [None; 6],
            rom_size: 0,
            next_cap: 0x40,
        };
        c.set16(0x00, ids.vendor);
        c.set16(0x02, ids.device);
        c.regs[0x08] = ids.revision;
        c.regs[0x09] = ids.class.2;
        c.regs[0x0a] = ids.class.1;
        c.regs[0x0b] = ids.class.0;
        c.regs[0x0e] = ids.header_type;
        c.set16(0x2c, ids.subsystem_vendor);
        c.set16(0x2e, ids.subsystem);
        let cmd = CMD_IO | CMD_MEM | CMD_MASTER | CMD_INTX_DISABLE | 0x0100 /* SERR */ | 0x0040;
        c.wmask[COMMAND] = cmd as u8;
        c.wmask[COMMAND + 1] = (cmd >> 8) as u8;
        c.w1c[STATUS] = STATUS_W1C as u8;
        c.w1c[STATUS + 1] = (STATUS_W1C >> 8) as u8;
        c.wmask[0x0c] = 0xff; // cache line size
        c.wmask[0x0d] = 0xff; // latency timer
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set16(&mut self, off: usize, v: u16) {
        self.regs[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub fn read8(&self, off: usize) -> u8 {
        self.regs.get(off).copied().unwrap_or(0xff)
    }

    pub fn read16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.read8(off), self.read8(off + 1)])
    }

    pub fn read32(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.read8(off),
            self.read8(off + 1),
            self.read8(off + 2),
            self.read8(off + 3),
        ])
    }

    pub fn command(&self) -> u16 {
        self.read16(COMMAND)
    }

    /// Let the guest write these bits of the byte at `off` (device-specific registers).
    pub fn set_writable(&mut self, off: usize, mask: u8) {
        self.wmask[off] = mask;
    }

    /// Set a register the guest may not write (device-specific read-only values).
    pub fn set_byte(&mut self, off: usize, v: u8) {
        self.regs[off] = v;
    }

    pub fn set_word(&mut self, off: usize, v: u16) {
        self.set16(off, v);
    }

    pub fn set_dword(&mut self, off: usize, v: u32) {
        self.regs[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// INTx pin 1..4 (A..D), 0 for none.
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.regs[INTERRUPT_PIN] = pin;
    }

    pub fn interrupt_pin(&self) -> u8 {
        self.regs[INTERRUPT_PIN]
    }

    pub fn interrupt_line(&self) -> u8 {
        self.regs[INTERRUPT_LINE]
    }

    /// Declare BAR `i` (a 64-bit BAR also takes `i + 1`).
    pub fn add_bar(&mut self, i: usize, def: BarDef) {
        assert!(
            def.size.is_power_of_two(),
            "BAR size must be a power of two"
        );
        let off = BAR0 + i * 4;
        let (low_bits, mask): (u32, u64) = match def.kind {
            BarKind::Io => (0x1, !(def.size - 1) & 0xffff_fffc),
            BarKind::Mem32 { prefetch } => {
                (u32::from(prefetch) << 3, !(def.size - 1) & 0xffff_fff0)
            }
            BarKind::Mem64 { prefetch } => {
                (0x4 | (u32::from(prefetch) << 3), !(def.size - 1) & !0xf)
            }
        };
        self.set_dword(off, low_bits);
        for b in 0..4 {
            self.wmask[off + b] = (mask >> (8 * b)) as u8;
        }
        if let BarKind::Mem64 { .. } = def.kind {
            for b in 0..4 {
                self.wmask[off + 4 + b] = (mask >> (32 + 8 * b)) as u8;
            }
        }
        self.bars[i] = Some(def);
    }

    pub fn bar_def(&self, i: usize) -> Option<BarDef> {
        self.bars.get(i).copied().flatten()
    }

    /// Declare an expansion ROM of `size` bytes (power of two).
    pub fn add_rom(&mut self, size: u64) {
        self.rom_size = size;
        let mask = (!(size - 1) as u32 & 0xffff_f800) | 1;
        for b in 0..4 {
            self.wmask[ROM_BAR + b] = (mask >> (8 * b)) as u8;
        }
    }

    /// Append a capability (`id`, then `body` after the two header bytes); returns its
    /// offset. The body is read-only unless made writable with [`Self::set_writable`].
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> usize {
        let off = self.next_cap;
        assert!(
            off + 2 + body.len() <= 256,
            "capability list overflows config space"
        );
        self.regs[off] = id;
        self.regs[off + 1] = self.regs[CAP_PTR];
        self.regs[off + 2..off + 2 + body.len()].copy_from_slice(body);
        self.regs[CAP_PTR] = off as u8;
        let st = self.read16(STATUS) | STATUS_CAP_LIST;
        self.set16(STATUS, st);
        self.next_cap = (off + 2 + body.len() + 3) & !3;
        off
    }

    /// A guest write of `data` at `off` (any size, any alignment within the space).
    pub fn write(&mut self, off: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let o = off + i;
            if o >= 256 {
                break;
            }
            let m = self.wmask[o];
            let c = self.w1c[o];
            self.regs[o] = (self.regs[o] & !m) | (b & m);
            self.regs[o] &= !(b & c);
        }
    }

    /// A guest read.
    pub fn read(&self, off: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read8(off + i);
        }
    }

    /// Raw address programmed in BAR `i` (whether decoding or not).
    pub fn bar_address(&self, i: usize) -> Option<u64> {
        let def = self.bar_def(i)?;
        let off = BAR0 + i * 4;
        let low = u64::from(self.read32(off));
        Some(match def.kind {
            BarKind::Io => low & !0x3,
            BarKind::Mem32 { .. } => low & !0xf,
            BarKind::Mem64 { .. } => (low & !0xf) | (u64::from(self.read32(off + 4)) << 32),
        })
    }

    /// BAR `i` as it decodes now: None when the command register disables its space, or
    /// when it is unprogrammed (0) or still holds a sizing pattern.
    pub fn decoded_bar(&self, i: usize) -> Option<Region> {
        let def = self.bar_def(i)?;
        let enabled = match def.kind {
            BarKind::Io => self.command() & CMD_IO != 0,
            _ => self.command() & CMD_MEM != 0,
        };
        let addr = self.bar_address(i)?;
        let limit = match def.kind {
            BarKind::Io => 0x1_0000,
            BarKind::Mem32 { .. } => 1 << 32,
            BarKind::Mem64 { .. } => 1 << 52,
        };
        let sizing = addr == (!(def.size - 1)) & (limit - 1) & !0x3;
        // A 64-bit BAR may hold any address: the end is checked without wrapping.
        let fits = addr.checked_add(def.size).is_some_and(|end| end <= limit);
        (enabled && addr != 0 && !sizing && fits).then_some(Region {
            addr,
            size: def.size,
        })
    }

    /// All BARs as they decode now: (index, definition, region).
    pub fn decoded_bars(&self) -> Vec<(usize, BarDef, Option<Region>)> {
        (0..6)
            .filter_map(|i| self.bar_def(i).map(|d| (i, d, self.decoded_bar(i))))
            .collect()
    }

    /// The expansion ROM as it decodes now.
    pub fn decoded_rom(&self) -> Option<Region> {
        if self.rom_size == 0 {
            return None;
        }
        let v = self.read32(ROM_BAR);
        let addr = u64::from(v & 0xffff_f800);
        (v & 1 != 0
            && self.command() & CMD_MEM != 0
            && addr != 0
            && addr != u64::from(!(self.rom_size as u32 - 1) & 0xffff_f800))
        .then_some(Region {
            addr,
            size: self.rom_size,
        })
    }

    pub fn rom_size(&self) -> u64 {
        self.rom_size
    }

    pub fn vendor(&self) -> u16 {
        self.read16(0)
    }
    pub fn device(&self) -> u16 {
        self.read16(2)
    }
    pub fn class(&self) -> (u8, u8, u8) {
        (self.regs[0x0b], self.regs[0x0a], self.regs[0x09])
    }
    pub fn subsystem(&self) -> (u16, u16) {
        (self.read16(0x2c), self.read16(0x2e))
    }
}

/// The guest-visible side of a configuration space: its 256 bytes as the guest reads
/// them (BARs as programmed, command/status, interrupt line, capability registers such as
/// MSI-X message control, chipset registers).
///
/// What the guest cannot change (identity, BAR types and sizes, the capability chain, the
/// write masks) is not restored but checked: it comes from the model as rebuilt on the
/// destination, and a state whose read-only bits differ from it was saved by another
/// function and is refused, naming the first byte that differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSpaceState {
    /// The 256 bytes of the space, in order.
    pub regs: Vec<u8>,
}

impl Snapshot for ConfigSpace {
    type State = ConfigSpaceState;
    const KIND: &'static str = "pci-config";
    const VERSION: u32 = 1;

    fn save(&self) -> ConfigSpaceState {
        ConfigSpaceState {
            regs: self.regs.to_vec(),
        }
    }

    fn restore(&mut self, s: ConfigSpaceState) -> Result<(), StateError> {
        let regs: [u8; 256] = s.regs.as_slice().try_into().map_err(|_| {
            StateError::invalid(
                Self::KIND,
                format!("regs holds {} bytes, not 256", s.regs.len()),
            )
        })?;
        // Bits the guest can change: writable or write-1-to-clear.
        let guest = |o: usize| self.wmask[o] | self.w1c[o];
        if let Some(o) = (0..256).find(|&o| (regs[o] ^ self.regs[o]) & !guest(o) != 0) {
            return Err(StateError::invalid(
                Self::KIND,
                format!(
                    "read-only byte {o:#04x} is {:#04x} in the state but {:#04x} in this \
                     function (saved by another device?)",
                    regs[o], self.regs[o]
                ),
            ));
        }
        for (o, r) in regs.iter().enumerate() {
            let m = guest(o);
            self.regs[o] = (self.regs[o] & !m) | (r & m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the pci_config fuzz target: a 64-bit BAR programmed at the top of the
    /// address space wrapped `addr + size` past zero and decoded there.
    #[test]
    fn a_64_bit_bar_at_the_top_of_the_address_space_does_not_decode() {
        let mut c = space();
        c.write(COMMAND, &CMD_MEM.to_le_bytes());
        c.write(BAR0 + 8, &0xffff_c000u32.to_le_bytes());
        c.write(BAR0 + 12, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.bar_address(2), Some(0xffff_ffff_ffff_c000));
        assert_eq!(c.decoded_bar(2), None);
        // Below the 52-bit limit it decodes.
        c.write(BAR0 + 12, &0x0000_0010u32.to_le_bytes());
        assert_eq!(
            c.decoded_bar(2),
            Some(Region {
                addr: 0x10_ffff_c000,
                size: 0x4000
            })
        );
    }

    fn space() -> ConfigSpace {
        let mut c = ConfigSpace::new(Ids {
            vendor: 0x1234,
            device: 0x1111,
            revision: 2,
            class: (0x03, 0x00, 0x00),
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            header_type: 0,
        });
        c.add_bar(
            0,
            BarDef {
                kind: BarKind::Mem32 { prefetch: true },
                size: 16 << 20,
            },
        );
        c.add_bar(
            1,
            BarDef {
                kind: BarKind::Io,
                size: 0x40,
            },
        );
        c.add_bar(
            2,
            BarDef {
                kind: BarKind::Mem64 { prefetch: false },
                size: 0x4000,
            },
        );
        c
    }

    #[test]
    fn ids_are_read_only() {
        let mut c = space();
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(c.read32(0), 0x1111_1234);
        assert_eq!(c.class(), (3, 0, 0));
    }

    #[test]
    fn bar_sizing_reads_back_the_mask() {
        let mut c = space();
        c.write(BAR0, &[0xff; 4]);
        assert_eq!(c.read32(BAR0), 0xff00_0008);
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read32(BAR0 + 4), 0xffff_ffc1);
        c.write(BAR0 + 8, &[0xff; 4]);
        c.write(BAR0 + 12, &[0xff; 4]);
        assert_eq!(c.read32(BAR0 + 8), 0xffff_c004);
        assert_eq!(c.read32(BAR0 + 12), 0xffff_ffff);
        c.write(COMMAND, &[0x03, 0]);
        assert_eq!(c.decoded_bar(0), None, "a sizing pattern does not decode");
    }

    #[test]
    fn command_register_gates_decoding() {
        let mut c = space();
        c.write(BAR0, &0xfd00_0000u32.to_le_bytes());
        c.write(BAR0 + 4, &0xc000u32.to_le_bytes());
        assert_eq!(c.decoded_bar(0), None);
        c.write(COMMAND, &[CMD_MEM as u8, 0]);
        assert_eq!(
            c.decoded_bar(0),
            Some(Region {
                addr: 0xfd00_0000,
                size: 16 << 20
            })
        );
        assert_eq!(c.decoded_bar(1), None);
        c.write(COMMAND, &[(CMD_MEM | CMD_IO) as u8, 0]);
        assert_eq!(
            c.decoded_bar(1),
            Some(Region {
                addr: 0xc000,
                size: 0x40
            })
        );
        c.write(BAR0 + 8, &0xfebf_0000u32.to_le_bytes());
        c.write(BAR0 + 12, &1u32.to_le_bytes());
        assert_eq!(
            c.decoded_bar(2),
            Some(Region {
                addr: 0x1_febf_0000,
                size: 0x4000
            })
        );
    }

    #[test]
    fn capabilities_chain_and_status_w1c() {
        let mut c = space();
        let a = c.add_capability(0x11, &[0; 10]);
        let b = c.add_capability(0x09, &[1, 2]);
        assert_eq!(c.read8(CAP_PTR) as usize, b);
        assert_eq!(c.read8(b + 1) as usize, a);
        assert_eq!(c.read8(a + 1), 0);
        assert_ne!(c.read16(STATUS) & STATUS_CAP_LIST, 0);
        c.set_word(STATUS, 0x2010);
        c.write(STATUS, &[0x00, 0x20]);
        assert_eq!(c.read16(STATUS), 0x0010);
    }

    #[test]
    fn a_restored_space_decodes_the_bars_the_guest_programmed() {
        let mut c = space();
        c.write(BAR0, &0xfd00_0000u32.to_le_bytes());
        c.write(BAR0 + 4, &0xc000u32.to_le_bytes());
        c.write(BAR0 + 8, &0xfebf_0000u32.to_le_bytes());
        c.write(BAR0 + 12, &1u32.to_le_bytes());
        c.write(COMMAND, &[(CMD_MEM | CMD_IO) as u8, 0]);
        c.write(INTERRUPT_LINE, &[11]);
        let mut back = crate::check_roundtrip(&c, space());
        assert_eq!(back.decoded_bars(), c.decoded_bars());
        assert_eq!(back.interrupt_line(), 11);
        // The write masks came with the rebuilt model: identity stays read-only.
        back.write(0, &[0, 0, 0, 0]);
        assert_eq!(back.read32(0), 0x1111_1234);
    }

    #[test]
    fn a_space_saved_by_another_function_is_refused() {
        let mut other = space();
        other.set_word(2, 0x1112);
        let err = space().restore(other.save()).unwrap_err().to_string();
        assert!(err.contains("read-only byte 0x02"), "{err}");
        let short = ConfigSpaceState { regs: vec![0; 64] };
        let err = space().restore(short).unwrap_err().to_string();
        assert!(err.contains("64 bytes"), "{err}");
    }

    #[test]
    fn rom_bar_sizing_and_enable() {
        let mut c = space();
        c.add_rom(0x1_0000);
        c.write(ROM_BAR, &[0xff; 4]);
        assert_eq!(c.read32(ROM_BAR), 0xffff_0001);
        c.write(ROM_BAR, &0xfeb0_0001u32.to_le_bytes());
        c.write(COMMAND, &[CMD_MEM as u8, 0]);
        assert_eq!(
            c.decoded_rom(),
            Some(Region {
                addr: 0xfeb0_0000,
                size: 0x1_0000
            })
        );
    }
}
