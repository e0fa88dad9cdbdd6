//! The PIIX3/PIIX4 functions QEMU's `pc` puts at 00:01: the ISA bridge with PCI interrupt
//! routing (01.0), the IDE controller's configuration space (01.1), and the PIIX4 power
//! management function whose PMBA places the ACPI PM block (01.3).

use super::{BarDef, BarKind, ConfigSpace, Ids, PciFunction};

const PIRQRC: usize = 0x60;
const PMBA: usize = 0x40;
const PMREGMISC: usize = 0x80;
const SMBBA: usize = 0x90;
const SMBHSTCFG: usize = 0xd2;

fn ids(device: u16, revision: u8, class: (u8, u8, u8), header_type: u8) -> Ids {
    Ids {
        vendor: 0x8086,
        device,
        revision,
        class,
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
        header_type,
    }
}

/// PIIX3 PCI-to-ISA bridge (8086:7000).
pub struct Piix3Isa {
    space: ConfigSpace,
    initial: ConfigSpace,
}

impl Default for Piix3Isa {
    fn default() -> Self {
        Self::new()
    }
}

impl Piix3Isa {
    pub fn new() -> Self {
        // Multi-function device: header type bit 7.
        let mut space = ConfigSpace::new(ids(0x7000, 0, (0x06, 0x01, 0x00), 0x80));
        for r in PIRQRC..PIRQRC + 4 {
            space.set_writable(r, 0x8f);
            space.set_byte(r, 0x80);
        }
        Self {
            initial: space.clone(),
            space,
        }
    }

    /// The ISA IRQ PCI interrupt line `pirq` (0..3 = PIRQA..D) is routed to, if enabled.
    pub fn pirq_route(&self, pirq: u8) -> Option<u8> {
        let v = self.space.read8(PIRQRC + usize::from(pirq & 3));
        (v & 0x80 == 0 && (v & 0x0f) >= 3).then_some(v & 0x0f)
    }
}

impl PciFunction for Piix3Isa {
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

/// Which PIRQ line device `dev`'s pin (1..4 = INTA..INTD) drives on the i440FX: the
/// usual rotation `(dev + pin - 1) mod 4`.
pub fn swizzle(dev: u8, pin: u8) -> u8 {
    (dev + pin.saturating_sub(1)) & 3
}

/// The PIIX3 IDE function's configuration space (8086:7010; the I/O behaviour lives in
/// the IDE model). BAR4 is the 16-byte bus-master block.
pub fn piix3_ide_config() -> ConfigSpace {
    let mut space = ConfigSpace::new(ids(0x7010, 0, (0x01, 0x01, 0x80), 0));
    space.add_bar(
        4,
        BarDef {
            kind: BarKind::Io,
            size: 16,
        },
    );
    space
}

/// PIIX4 power management function (8086:7113).
pub struct Piix4Pm {
    space: ConfigSpace,
    initial: ConfigSpace,
}

impl Default for Piix4Pm {
    fn default() -> Self {
        Self::new()
    }
}

impl Piix4Pm {
    pub fn new() -> Self {
        let mut space = ConfigSpace::new(ids(0x7113, 0x03, (0x06, 0x80, 0x00), 0));
        space.set_interrupt_pin(1);
        space.set_byte(super::config::INTERRUPT_LINE, 9);
        // PMBA: bits 15:6 writable, bit 0 reads 1 (I/O space).
        space.set_dword(PMBA, 1);
        space.set_writable(PMBA, 0xc0);
        space.set_writable(PMBA + 1, 0xff);
        space.set_writable(PMREGMISC, 0x01);
        space.set_dword(SMBBA, 1);
        space.set_writable(SMBBA, 0xf0);
        space.set_writable(SMBBA + 1, 0xff);
        space.set_writable(SMBHSTCFG, 0x0f);
        // DEVACTB (0x58) APMC_EN already set: tells SeaBIOS that SMM set-up is done, so it
        // never triggers an SMI (troupe has no SMM) — what QEMU does with smm=off.
        space.set_byte(0x5b, 0x02);
        Self {
            initial: space.clone(),
            space,
        }
    }

    /// Where the ACPI PM block decodes, when enabled (PMREGMISC bit 0).
    pub fn pm_base(&self) -> Option<u16> {
        let base = (self.space.read32(PMBA) & 0xffc0) as u16;
        (self.space.read8(PMREGMISC) & 1 != 0 && base != 0).then_some(base)
    }
}

impl PciFunction for Piix4Pm {
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

// PIRQ routing and the PM/SMBus bases live in the configuration spaces.
super::config_space_snapshot!(Piix3Isa, "piix3");
super::config_space_snapshot!(Piix4Pm, "piix4-pm-pci");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_interrupt_routing_survives_restore() {
        let mut isa = Piix3Isa::new();
        isa.config_write(PIRQRC, &[10, 11, 0x8b, 5]);
        let back = crate::check_roundtrip(&isa, Piix3Isa::new());
        let routes = |f: &Piix3Isa| (0..4).map(|p| f.pirq_route(p)).collect::<Vec<_>>();
        assert_eq!(routes(&back), routes(&isa));
        assert_eq!(routes(&back), [Some(10), Some(11), None, Some(5)]);
    }

    #[test]
    fn the_acpi_pm_block_stays_where_the_guest_put_it() {
        let mut pm = Piix4Pm::new();
        pm.config_write(PMBA, &0x601u32.to_le_bytes());
        pm.config_write(PMREGMISC, &[1]);
        let mut back = crate::check_roundtrip(&pm, Piix4Pm::new());
        assert_eq!(back.pm_base(), Some(0x600));
        back.config_write(PMREGMISC, &[0]);
        assert_eq!(back.pm_base(), None);
    }

    #[test]
    fn a_host_bridge_section_does_not_restore_into_the_isa_bridge() {
        let section = crate::save_section("00:01.0", &Piix4Pm::new());
        let err = crate::restore_section(&mut Piix3Isa::new(), &section).unwrap_err();
        assert!(matches!(err, crate::StateError::Kind { .. }), "{err}");
        // Even relabelled, the identity bytes give it away.
        let mut relabelled = section;
        relabelled.kind = "piix3".into();
        let err = crate::restore_section(&mut Piix3Isa::new(), &relabelled)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("piix3") && err.contains("config: read-only byte 0x02"),
            "{err}"
        );
    }

    #[test]
    fn pirq_routing_follows_the_registers() {
        let mut isa = Piix3Isa::new();
        assert_eq!(isa.pirq_route(0), None);
        isa.config_write(PIRQRC, &[10, 10, 11, 0x8b]);
        assert_eq!(isa.pirq_route(0), Some(10));
        assert_eq!(isa.pirq_route(2), Some(11));
        assert_eq!(isa.pirq_route(3), None);
        assert_eq!(swizzle(3, 1), 3);
        assert_eq!(swizzle(1, 2), 2);
    }

    #[test]
    fn pm_base_needs_pmregmisc() {
        let mut pm = Piix4Pm::new();
        pm.config_write(PMBA, &0x601u32.to_le_bytes());
        assert_eq!(pm.pm_base(), None);
        pm.config_write(PMREGMISC, &[1]);
        assert_eq!(pm.pm_base(), Some(0x600));
        assert_eq!(pm.config().read32(PMBA), 0x601);
        assert_eq!(pm.config().interrupt_line(), 9);
    }
}
