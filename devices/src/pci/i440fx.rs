//! The i440FX host bridge (PCI 00:00.0, 8086:1237): identity, the PAM registers that
//! route 0xC0000–0xFFFFF between ROM/PCI and shadow RAM (datasheet 3.2.18), and SMRAM
//! (no SMM in troupe: closed and locked).

use super::{ConfigSpace, Ids, PciFunction};

const PAM0: usize = 0x59;
const SMRAM: usize = 0x72;

pub struct I440fx {
    space: ConfigSpace,
    initial: ConfigSpace,
}

impl Default for I440fx {
    fn default() -> Self {
        Self::new()
    }
}

impl I440fx {
    pub fn new() -> Self {
        let mut space = ConfigSpace::new(Ids {
            vendor: 0x8086,
            device: 0x1237,
            revision: 0x02,
            class: (0x06, 0x00, 0x00),
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            header_type: 0,
        });
        space.set_writable(PAM0, 0x30);
        for r in PAM0 + 1..=PAM0 + 6 {
            space.set_writable(r, 0x33);
        }
        space.set_byte(SMRAM, 0x02);
        Self {
            initial: space.clone(),
            space,
        }
    }

    /// The read/write-enable bits (bit 0 RE, bit 1 WE) of the 13 PAM segments: index 0 is
    /// 0xF0000–0xFFFFF, index k (1..=12) is 0xC0000 + (k-1) * 16 KiB.
    pub fn pam(&self) -> [u8; 13] {
        let mut p = [0u8; 13];
        p[0] = (self.space.read8(PAM0) >> 4) & 3;
        for (k, pk) in p.iter_mut().enumerate().skip(1) {
            let reg = self.space.read8(PAM0 + 1 + (k - 1) / 2);
            *pk = if (k - 1) % 2 == 0 {
                reg & 3
            } else {
                (reg >> 4) & 3
            };
        }
        p
    }
}

impl PciFunction for I440fx {
    fn config(&self) -> &ConfigSpace {
        &self.space
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.space
    }
    fn reset(&mut self) {
        self.space = self.initial.clone();
    }
}

// The PAM and SMRAM registers live in the configuration space.
super::config_space_snapshot!(I440fx, "i440fx");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_ram_settings_survive_restore() {
        let mut h = I440fx::new();
        h.config_write(PAM0, &[0x30]); // F0000 read/write (SeaBIOS shadowing itself)
        h.config_write(PAM0 + 3, &[0x11]); // C8000 and CC000 read-only
        let mut back = crate::check_roundtrip(&h, I440fx::new());
        assert_eq!(back.pam(), h.pam());
        assert_eq!((back.pam()[0], back.pam()[5], back.pam()[6]), (3, 1, 1));
        // The reserved bits are still masked after restore.
        back.config_write(PAM0, &[0x0f]);
        assert_eq!(back.config().read8(PAM0), 0x00);
    }

    #[test]
    fn pam_registers_map_to_segments() {
        let mut h = I440fx::new();
        assert_eq!(h.pam(), [0; 13]);
        h.config_write(PAM0, &[0x31]); // low nibble reserved
        assert_eq!(h.config().read8(PAM0), 0x30);
        h.config_write(PAM0 + 1, &[0x13]); // C0000 rw, C4000 ro
        let p = h.pam();
        assert_eq!(p[0], 3);
        assert_eq!(p[1], 3);
        assert_eq!(p[2], 1);
        h.config_write(SMRAM, &[0x4a]);
        assert_eq!(h.config().read8(SMRAM), 0x02);
        h.reset();
        assert_eq!(h.pam(), [0; 13]);
    }
}
