//! The std VGA on the PC platform: PCI 00:02.0 (1234:1111) with its 16 MiB framebuffer BAR
//! (guest RAM with KVM dirty logging), 4 KiB MMIO BAR and the VGA BIOS as its expansion
//! ROM; the legacy ports and window; and the refresh actor feeding the console.

use std::path::Path;
use std::sync::Arc;

use actors::bus::lock;
use actors::bus::Bus;
use actors::display::DisplayWriter;
use actors::host::mem::HostBuffer;
use actors::host::vga::{
    start_refresh, RefreshHooks, RomBar, VbePort, VgaHost, VgaIoPort, VgaMmio, VgaWindow,
};
use actors::runtime::{ControlHandle, Registry, StatePart};
use anyhow::{anyhow, Context, Result};
use devices::pci::{BarDef, BarKind, ConfigSpace, Ids, PlainFunction};
use devices::vga::{Vga, VRAM_SIZE};
use devices::{Section, Snapshot, StateError};

use super::pci::{BarTarget, PciPlatform};
use crate::vm::kvm::KvmVm;

pub const VGA_SLOT: (u8, u8) = (2, 0);
pub const VGA_BIOS: &str = "/usr/share/seabios/vgabios-stdvga.bin";
/// The legacy VGA memory window, 0xA0000–0xBFFFF: base and size.
pub const LEGACY_WINDOW: (u64, u32) = (0xa_0000, 0x2_0000);

pub struct VgaParts<'a> {
    pub pci: &'a Arc<PciPlatform>,
    pub pio: &'a Arc<Bus>,
    pub mmio: &'a Arc<Bus>,
    pub kvm: &'a Arc<KvmVm>,
    pub registry: &'a Registry,
    pub display: DisplayWriter,
    /// No firmware will run the VGA BIOS: troupe sets text mode 3 itself.
    pub direct_boot: bool,
    /// KVM's coalesced MMIO ring carrying VGA window writes (once the vCPUs exist).
    pub coalesced: Arc<std::sync::OnceLock<Arc<actors::coalesced::CoalescedRing>>>,
}

/// The VGA as the machine keeps it (for reset, save and restore).
pub struct Display {
    host: Arc<VgaHost>,
    /// Its state: sections `vga` (the registers) and `vga/pci` (its configuration
    /// space). The video memory is not in them: like RAM, it travels as memory.
    pub control: ControlHandle,
    font: Option<Vec<u8>>,
    direct_boot: bool,
}

impl Display {
    /// The video memory, which migrates like RAM.
    pub fn vram(&self) -> Arc<dyn actors::migration::DeviceRam> {
        self.host.clone()
    }

    /// The screen as text, for text displays (`-display curses`).
    pub fn text(&self) -> actors::display::console::TextSource {
        let host = self.host.clone();
        Arc::new(move || host.with(|m, vram| m.text_grid(vram)))
    }

    pub fn reset(&self) {
        self.host.reset();
        if self.direct_boot {
            if let Some(font) = &self.font {
                self.host.with(|m, vram| m.bios_text_mode(vram, font));
            }
        }
    }
}

/// The VGA's registers as the `vga` section (the model lives in its host without an
/// `Arc` of its own).
struct VgaPart(Arc<VgaHost>);

impl StatePart for VgaPart {
    fn id(&self) -> &str {
        "vga"
    }
    fn save(&self) -> Section {
        devices::save_section("vga", &*lock(self.0.model()))
    }
    fn check(&self, section: &Section) -> Result<(), StateError> {
        section
            .decode::<<Vga as Snapshot>::State>(Vga::KIND, Vga::VERSION)
            .map(|_| ())
    }
    fn restore(&self, section: &Section) -> Result<(), StateError> {
        devices::restore_section(&mut *lock(self.0.model()), section)?;
        self.0.poke();
        Ok(())
    }
}

fn config_space(rom_size: u64) -> ConfigSpace {
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
            size: VRAM_SIZE as u64,
        },
    );
    c.add_bar(
        2,
        BarDef {
            kind: BarKind::Mem32 { prefetch: false },
            size: 0x1000,
        },
    );
    if rom_size > 0 {
        c.add_rom(rom_size);
    }
    c
}

pub fn build(p: &VgaParts<'_>) -> Result<Display> {
    let rom = match std::fs::read(Path::new(VGA_BIOS)) {
        Ok(r) => Some(r),
        Err(e) if p.direct_boot => {
            tracing::warn!("{VGA_BIOS}: {e}: the VGA shows nothing until the guest sets a mode");
            None
        }
        Err(e) => {
            return Err(anyhow!(
                "-vga std: cannot read the VGA BIOS {VGA_BIOS}: {e} (it is in the Debian package `seabios`)"
            ))
        }
    };
    let font = rom.as_deref().and_then(devices::vga::font_from_rom);
    let host = VgaHost::new(Vga::new(VRAM_SIZE), HostBuffer::new(VRAM_SIZE));
    let rom_size = rom
        .as_ref()
        .map_or(0, |r| (r.len() as u64).next_power_of_two().max(0x800));
    let function = Arc::new(std::sync::Mutex::new(PlainFunction::new(config_space(
        rom_size,
    ))));
    p.pci.add_function(VGA_SLOT, function.clone());
    let control = ControlHandle::models(
        "vga",
        vec![
            Box::new(VgaPart(host.clone())),
            super::pci::part("vga/pci", &function),
        ],
        || {},
    );
    p.pci.bind_bar(
        VGA_SLOT,
        0,
        "vga.vram",
        BarTarget::Ram {
            host: host.vram_host_addr(),
            dirty_log: true,
        },
    );
    p.pci.bind_bar(
        VGA_SLOT,
        2,
        "vga.mmio",
        BarTarget::Mmio(Arc::new(VgaMmio(host.clone()))),
    );
    if let Some(r) = rom {
        // A read-only memory slot when the ROM BAR is page-sized (it is: the VGA BIOS is
        // tens of KiB), else an MMIO handler.
        let target = if rom_size >= 0x1000 {
            let mut buf = HostBuffer::new(rom_size as usize);
            buf.as_mut_slice().fill(0xff);
            buf.as_mut_slice()[..r.len()].copy_from_slice(&r);
            BarTarget::Rom(Arc::new(buf))
        } else {
            BarTarget::Mmio(Arc::new(RomBar(r)))
        };
        p.pci.bind_bar(VGA_SLOT, 6, "vga.rom", target);
    }
    p.pio
        .insert(0x3b0, 0x30, "vga", Arc::new(VgaIoPort(host.clone())))?;
    p.pio
        .insert(0x1ce, 2, "vbe", Arc::new(VbePort(host.clone())))?;
    p.mmio.insert(
        LEGACY_WINDOW.0,
        u64::from(LEGACY_WINDOW.1),
        "vga-lowmem",
        Arc::new(VgaWindow(host.clone())),
    )?;

    let pci = p.pci.clone();
    let vm = p.kvm.vm.clone();
    let ring = p.coalesced.clone();
    let flush = move || {
        if let Some(r) = ring.get() {
            r.drain();
        }
    };
    let lfb_dirty = move || {
        let Some((slot, region)) = pci.ram_bar_slot(VGA_SLOT, 0) else {
            return false;
        };
        vm.get_dirty_log(slot, region.size as usize)
            .map(|bits| bits.iter().any(|w| *w != 0))
            .unwrap_or(true)
    };
    let vm = p.kvm.vm.clone();
    let ring = p.coalesced.clone();
    let coalesce = move |on: bool| {
        // The ring (and the zone machine.rs registers with it) exists once the vCPUs do.
        if ring.get().is_none() {
            return false;
        }
        let zone = kvm_ioctls::IoEventAddress::Mmio(LEGACY_WINDOW.0);
        let r = if on {
            vm.register_coalesced_mmio(zone, LEGACY_WINDOW.1)
        } else {
            vm.unregister_coalesced_mmio(zone, LEGACY_WINDOW.1)
        };
        r.map_err(|e| tracing::warn!("VGA window coalescing on={on}: {e}"))
            .is_ok()
    };
    // TEST HARNESS ONLY: with TROUPE_TEST_DISPLAY the console shows a synthetic pattern
    // instead of the VGA (see machine.rs).
    if std::env::var_os("TROUPE_TEST_DISPLAY").is_none() {
        start_refresh(
            p.registry,
            host.clone(),
            p.display.clone(),
            RefreshHooks {
                lfb_dirty: Box::new(lfb_dirty),
                flush: Box::new(flush),
                coalesce: Box::new(coalesce),
            },
        )
        .context("starting the VGA refresh thread")?;
    }
    let d = Display {
        host,
        control,
        font,
        direct_boot: p.direct_boot,
    };
    d.reset();
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_vga_bios_has_a_font() {
        let rom = std::fs::read(VGA_BIOS).expect("seabios installed");
        let f = devices::vga::font_from_rom(&rom).expect("8x16 font");
        assert_eq!(&f[0x42 * 16..0x42 * 16 + 4], &[0, 0, 0xfc, 0x66]);
    }
}
