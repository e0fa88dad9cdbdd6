//! QEMU's standard VGA (`-vga std`, PCI 1234:1111): the legacy VGA registers and memory
//! window, Bochs VBE (DISPI) and its MMIO BAR, and the renderer ([`render`]).
//!
//! VRAM is owned by the host (it is also mapped into the guest as the linear framebuffer,
//! tracked with KVM dirty logging), so every method that touches it takes the VRAM slice.
//! Layout, as in QEMU: planar and odd/even modes keep plane `p` of address `a` at
//! `a * 4 + p`; chain-4 and VBE modes use the bytes linearly.
//!
//! Bus mapping (offsets are from each range's base):
//! - [`Vga::io_read`]/[`Vga::io_write`]: ports 0x3B0–0x3DF (pass the port number);
//! - [`Vga::vbe_read`]/[`Vga::vbe_write`]: ports 0x1CE (index) and 0x1CF (data);
//! - [`Vga::mem_read`]/[`Vga::mem_write`]: the 0xA0000–0xBFFFF window (offset from 0xA0000);
//! - [`Vga::mmio_read`]/[`Vga::mmio_write`]: the 4 KiB MMIO BAR (VGA ports at 0x400,
//!   DISPI at 0x500, QEMU extended registers at 0x600).

pub mod render;

use serde::{Deserialize, Serialize};

use crate::{Snapshot, StateError};

/// Default video memory: 16 MiB, like QEMU's `vgamem_mb=16`.
pub const VRAM_SIZE: usize = 16 << 20;

pub const VBE_DISPI_ID5: u16 = 0xb0c5;
const VBE_ENABLED: u16 = 0x01;
const VBE_GETCAPS: u16 = 0x02;
const VBE_LFB: u16 = 0x40;
const VBE_NOCLEARMEM: u16 = 0x80;
const VBE_MAX_XRES: u16 = 2560;
const VBE_MAX_YRES: u16 = 1600;

/// DISPI register indexes (all listed for reference; some are only used by number).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
enum Dispi {
    Id = 0,
    Xres,
    Yres,
    Bpp,
    Enable,
    Bank,
    VirtWidth,
    VirtHeight,
    XOffset,
    YOffset,
    VideoMemory64k,
}

/// Every guest-visible VGA register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgaState {
    pub misc: u8,
    pub sr_index: u8,
    pub sr: [u8; 8],
    pub gr_index: u8,
    pub gr: [u8; 16],
    pub ar_index: u8,
    pub ar: Vec<u8>,
    pub ar_flip: bool,
    pub cr_index: u8,
    pub cr: Vec<u8>,
    pub dac_read_index: u8,
    pub dac_write_index: u8,
    pub dac_sub: u8,
    pub dac_state: u8,
    pub dac_mask: u8,
    pub dac: Vec<u8>,
    pub feature: u8,
    pub latch: u32,
    pub vbe_index: u16,
    pub vbe: [u16; 11],
    pub st01_toggle: bool,
}

/// The standard VGA.
pub struct Vga {
    pub(crate) s: VgaState,
    /// Bumped on every change that can alter the picture (registers, legacy-window writes).
    generation: u64,
    vram_size: usize,
}

impl VgaState {
    /// Registers at power-on (and after reset): everything zero but the DAC mask, with
    /// the Bochs VBE id and video memory size readable.
    fn power_on(vram_size: usize) -> Self {
        let mut vbe = [0; 11];
        vbe[Dispi::Id as usize] = VBE_DISPI_ID5;
        vbe[Dispi::VideoMemory64k as usize] = (vram_size >> 16) as u16;
        Self {
            misc: 0,
            sr_index: 0,
            sr: [0; 8],
            gr_index: 0,
            gr: [0; 16],
            ar_index: 0,
            ar: vec![0; 21],
            ar_flip: false,
            cr_index: 0,
            cr: vec![0; 25],
            dac_read_index: 0,
            dac_write_index: 0,
            dac_sub: 0,
            dac_state: 0,
            dac_mask: 0xff,
            dac: vec![0; 768],
            feature: 0,
            latch: 0,
            vbe_index: 0,
            vbe,
            st01_toggle: false,
        }
    }
}

impl Vga {
    pub fn new(vram_size: usize) -> Self {
        Self {
            s: VgaState::power_on(vram_size),
            generation: 1,
            vram_size,
        }
    }

    pub fn reset(&mut self) {
        self.s = VgaState::power_on(self.vram_size);
        self.generation += 1;
    }

    /// Changes when anything that affects the picture changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn touch(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    pub fn vram_size(&self) -> usize {
        self.vram_size
    }

    /// VBE is on (the linear framebuffer is the picture).
    pub fn vbe_enabled(&self) -> bool {
        self.s.vbe[Dispi::Enable as usize] & VBE_ENABLED != 0
    }

    fn color_base_is_3dx(&self) -> bool {
        self.s.misc & 1 != 0
    }

    /// Put the card in BIOS text mode 3 (80x25, 9x16 cells) with `font` (256 glyphs of
    /// 16 bytes) in plane 2, the EGA palette in the DAC and a blank screen — what the VGA
    /// BIOS leaves behind, for guests booted without firmware.
    pub fn bios_text_mode(&mut self, vram: &mut [u8], font: &[u8]) {
        const SEQ: [u8; 5] = [0x03, 0x00, 0x03, 0x00, 0x02];
        const CRTC: [u8; 25] = [
            0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00,
            0x00, 0x00, 0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
        ];
        const GC: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x00, 0xff];
        const AC: [u8; 21] = [
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d,
            0x3e, 0x3f, 0x0c, 0x00, 0x0f, 0x08, 0x00,
        ];
        self.s.misc = 0x67;
        self.s.sr[..5].copy_from_slice(&SEQ);
        self.s.cr.copy_from_slice(&CRTC);
        self.s.gr[..9].copy_from_slice(&GC);
        self.s.ar.copy_from_slice(&AC);
        self.s.ar_index = 0x20;
        for i in 0..64usize {
            let c = |hi: usize, lo: usize| -> u8 {
                (if i & (1 << hi) != 0 { 0x2a } else { 0 })
                    + (if i & (1 << lo) != 0 { 0x15 } else { 0 })
            };
            self.s.dac[i * 3] = c(2, 5);
            self.s.dac[i * 3 + 1] = c(1, 4);
            self.s.dac[i * 3 + 2] = c(0, 3);
        }
        for (ch, glyph) in font.chunks(16).take(256).enumerate() {
            for (line, b) in glyph.iter().enumerate() {
                if let Some(v) = vram.get_mut((ch * 32 + line) * 4 + 2) {
                    *v = *b;
                }
            }
        }
        for cell in 0..80 * 25 {
            if let Some(v) = vram.get_mut(cell * 4..cell * 4 + 2) {
                v.copy_from_slice(&[b' ', 0x07]);
            }
        }
        self.touch();
    }

    // ---- I/O ports 0x3B0–0x3DF ----

    /// A read of VGA port `port` (0x3B0..=0x3DF).
    pub fn io_read(&mut self, port: u16) -> u8 {
        // Ports 0x3Bx are for monochrome, 0x3Dx for colour: the other set floats.
        let mono_port = (0x3b0..0x3c0).contains(&port);
        let color_port = (0x3d0..0x3e0).contains(&port);
        if (mono_port && self.color_base_is_3dx()) || (color_port && !self.color_base_is_3dx()) {
            return 0xff;
        }
        match port {
            0x3c0 => self.s.ar_index,
            0x3c1 => self
                .s
                .ar
                .get(usize::from(self.s.ar_index & 0x1f))
                .copied()
                .unwrap_or(0),
            0x3c2 => 0x10, // input status 0: switch sense
            0x3c4 => self.s.sr_index,
            0x3c5 => self
                .s
                .sr
                .get(usize::from(self.s.sr_index))
                .copied()
                .unwrap_or(0),
            0x3c6 => self.s.dac_mask,
            0x3c7 => self.s.dac_state,
            0x3c8 => self.s.dac_write_index,
            0x3c9 => {
                let i = usize::from(self.s.dac_read_index) * 3 + usize::from(self.s.dac_sub);
                let v = self.s.dac[i];
                self.s.dac_sub += 1;
                if self.s.dac_sub == 3 {
                    self.s.dac_sub = 0;
                    self.s.dac_read_index = self.s.dac_read_index.wrapping_add(1);
                }
                v
            }
            0x3ca => self.s.feature,
            0x3cc => self.s.misc,
            0x3ce => self.s.gr_index,
            0x3cf => self
                .s
                .gr
                .get(usize::from(self.s.gr_index))
                .copied()
                .unwrap_or(0),
            0x3b4 | 0x3d4 => self.s.cr_index,
            0x3b5 | 0x3d5 => self
                .s
                .cr
                .get(usize::from(self.s.cr_index))
                .copied()
                .unwrap_or(0),
            0x3ba | 0x3da => {
                // Input status 1: toggle the retrace bits so polling loops progress, and
                // reset the attribute controller's flip-flop.
                self.s.ar_flip = false;
                self.s.st01_toggle = !self.s.st01_toggle;
                if self.s.st01_toggle {
                    0x09
                } else {
                    0x00
                }
            }
            _ => 0xff,
        }
    }

    /// A write of `v` to VGA port `port`.
    pub fn io_write(&mut self, port: u16, v: u8) {
        let mono_port = (0x3b0..0x3c0).contains(&port);
        let color_port = (0x3d0..0x3e0).contains(&port);
        if (mono_port && self.color_base_is_3dx()) || (color_port && !self.color_base_is_3dx()) {
            return;
        }
        self.touch();
        match port {
            0x3c0 | 0x3c1 => {
                if !self.s.ar_flip {
                    self.s.ar_index = v & 0x3f;
                } else {
                    let i = usize::from(self.s.ar_index & 0x1f);
                    if i < self.s.ar.len() {
                        self.s.ar[i] = match i {
                            0..=0x0f => v & 0x3f,
                            0x10 => v & !0x10,
                            0x11 => v,
                            0x12 => v & 0x3f,
                            0x13 => v & 0x0f,
                            0x14 => v & 0x0f,
                            _ => v,
                        };
                    }
                }
                self.s.ar_flip = !self.s.ar_flip;
            }
            0x3c2 => self.s.misc = v & !0x10,
            0x3c4 => self.s.sr_index = v & 7,
            0x3c5 => {
                let mask = [0x03, 0x3d, 0x0f, 0x3f, 0x0e, 0, 0, 0xff];
                let i = usize::from(self.s.sr_index & 7);
                self.s.sr[i] = v & mask[i];
            }
            0x3c6 => self.s.dac_mask = v,
            0x3c7 => {
                self.s.dac_read_index = v;
                self.s.dac_sub = 0;
                self.s.dac_state = 3;
            }
            0x3c8 => {
                self.s.dac_write_index = v;
                self.s.dac_sub = 0;
                self.s.dac_state = 0;
            }
            0x3c9 => {
                let i = usize::from(self.s.dac_write_index) * 3 + usize::from(self.s.dac_sub);
                self.s.dac[i] = v & 0x3f;
                self.s.dac_sub += 1;
                if self.s.dac_sub == 3 {
                    self.s.dac_sub = 0;
                    self.s.dac_write_index = self.s.dac_write_index.wrapping_add(1);
                }
            }
            0x3ce => self.s.gr_index = v & 0x0f,
            0x3cf => {
                let mask = [0x0f, 0x0f, 0x0f, 0x1f, 0x03, 0x7b, 0x0f, 0x0f, 0xff];
                let i = usize::from(self.s.gr_index);
                if i < mask.len() {
                    self.s.gr[i] = v & mask[i];
                }
            }
            0x3b4 | 0x3d4 => self.s.cr_index = v,
            0x3b5 | 0x3d5 => {
                let i = usize::from(self.s.cr_index);
                if i >= self.s.cr.len() {
                    return;
                }
                // CR0-7 are write protected when CR11 bit 7 is set (except CR7 bit 4).
                if self.s.cr[0x11] & 0x80 != 0 && i <= 7 {
                    if i == 7 {
                        self.s.cr[7] = (self.s.cr[7] & !0x10) | (v & 0x10);
                    }
                    return;
                }
                self.s.cr[i] = v;
            }
            0x3ba | 0x3da => self.s.feature = v & 0x10,
            _ => {}
        }
    }

    // ---- VBE DISPI ----

    /// Port 0x1CE (offset 0) / 0x1CF (offset 1), 16-bit.
    pub fn vbe_read(&mut self, offset: u64) -> u16 {
        if offset == 0 {
            return self.s.vbe_index;
        }
        self.dispi_read(usize::from(self.s.vbe_index))
    }

    pub fn vbe_write(&mut self, offset: u64, v: u16, vram: &mut [u8]) {
        if offset == 0 {
            self.s.vbe_index = v;
            return;
        }
        self.dispi_write(usize::from(self.s.vbe_index), v, vram);
    }

    fn dispi_read(&self, i: usize) -> u16 {
        if i > Dispi::VideoMemory64k as usize {
            return 0;
        }
        if self.s.vbe[Dispi::Enable as usize] & VBE_GETCAPS != 0 {
            match i {
                1 => return VBE_MAX_XRES,
                2 => return VBE_MAX_YRES,
                3 => return 32,
                _ => {}
            }
        }
        self.s.vbe[i]
    }

    fn dispi_write(&mut self, i: usize, v: u16, vram: &mut [u8]) {
        self.touch();
        match i {
            0 if (0xb0c0..=VBE_DISPI_ID5).contains(&v) => self.s.vbe[0] = v,
            1 if v <= VBE_MAX_XRES && v.is_multiple_of(8) => self.s.vbe[1] = v,
            2 if v <= VBE_MAX_YRES => self.s.vbe[2] = v,
            0..=2 => {}
            3 => {
                let v = if v == 0 { 8 } else { v };
                if matches!(v, 4 | 8 | 15 | 16 | 24 | 32) {
                    self.s.vbe[3] = v;
                }
            }
            4 => {
                let was = self.s.vbe[4] & VBE_ENABLED != 0;
                if v & VBE_ENABLED != 0 && !was {
                    // Mode set: virtual size defaults to the resolution.
                    let xres = self.s.vbe[1].max(8);
                    self.s.vbe[Dispi::VirtWidth as usize] = xres;
                    let line = self.line_bytes();
                    let max_h = self.vram_size.checked_div(line).unwrap_or(0).min(0xffff);
                    self.s.vbe[Dispi::VirtHeight as usize] = max_h as u16;
                    self.s.vbe[Dispi::XOffset as usize] = 0;
                    self.s.vbe[Dispi::YOffset as usize] = 0;
                    if v & VBE_NOCLEARMEM == 0 {
                        let n = (line * usize::from(self.s.vbe[2])).min(vram.len());
                        vram[..n].fill(0);
                    }
                    // QEMU also puts the legacy registers in a graphics mode.
                    self.s.gr[6] = (self.s.gr[6] & !0x0c) | 0x05;
                    self.s.cr[0x17] |= 3;
                    self.s.sr[4] |= 0x08; // chain 4
                }
                self.s.vbe[4] = v;
            }
            5 => self.s.vbe[5] = v,
            6 => {
                let bpp = self.bytes_pp().max(1);
                if usize::from(v) * bpp * usize::from(self.s.vbe[2].max(1)) <= self.vram_size {
                    self.s.vbe[6] = v;
                    let line = usize::from(v) * bpp;
                    if let Some(h) = self.vram_size.checked_div(line) {
                        self.s.vbe[7] = h.min(0xffff) as u16;
                    }
                }
            }
            8 | 9 => self.s.vbe[i] = v,
            _ => {}
        }
    }

    fn bytes_pp(&self) -> usize {
        usize::from(self.s.vbe[3]).div_ceil(8)
    }

    /// Bytes per line of the VBE framebuffer.
    pub fn line_bytes(&self) -> usize {
        let bpp = usize::from(self.s.vbe[3]);
        if bpp == 4 {
            usize::from(self.s.vbe[6]) / 2
        } else {
            usize::from(self.s.vbe[6].max(self.s.vbe[1])) * bpp.div_ceil(8)
        }
    }

    // ---- the 0xA0000–0xBFFFF window ----

    /// Which part of the window maps memory (GC misc bits 2–3): (start, size).
    fn window(&self) -> (u64, u64) {
        match (self.s.gr[6] >> 2) & 3 {
            0 => (0, 0x2_0000),
            1 => (0, 0x1_0000),
            2 => (0x1_0000, 0x8000),
            _ => (0x1_8000, 0x8000),
        }
    }

    /// A read at `offset` in the legacy window.
    pub fn mem_read(&mut self, offset: u64, vram: &[u8]) -> u8 {
        let (start, size) = self.window();
        if offset < start || offset >= start + size {
            return 0xff;
        }
        let mut addr = (offset - start) as usize;
        if self.vbe_enabled() && self.s.vbe[4] & VBE_LFB == 0 {
            // Banked VBE: 64 KiB banks.
            addr += usize::from(self.s.vbe[5]) << 16;
            return vram.get(addr).copied().unwrap_or(0xff);
        }
        if self.s.sr[4] & 0x08 != 0 {
            return vram.get(addr).copied().unwrap_or(0xff);
        }
        if self.s.gr[5] & 0x10 != 0 {
            // Odd/even: the low bit picks plane 0/1 (or 2/3).
            let plane = (self.s.gr[4] & 2) | (addr as u8 & 1);
            return vram
                .get(((addr & !1) << 1) | usize::from(plane))
                .copied()
                .unwrap_or(0xff);
        }
        let base = addr * 4;
        let Some(l) = vram.get(base..base + 4) else {
            return 0xff;
        };
        let latch = u32::from_le_bytes([l[0], l[1], l[2], l[3]]);
        self.s.latch = latch;
        if self.s.gr[5] & 0x08 == 0 {
            // Read mode 0: the plane the read map select names.
            l[usize::from(self.s.gr[4] & 3)]
        } else {
            // Read mode 1: colour compare.
            let cc = self.s.gr[2];
            let dc = self.s.gr[7];
            let mut r = 0u8;
            for bit in 0..8 {
                let mut eq = true;
                for (p, lp) in l.iter().enumerate().take(4) {
                    if dc & (1 << p) != 0 {
                        let pb = (lp >> bit) & 1;
                        if pb != (cc >> p) & 1 {
                            eq = false;
                        }
                    }
                }
                if eq {
                    r |= 1 << bit;
                }
            }
            r
        }
    }

    /// A write of `v` at `offset` in the legacy window.
    pub fn mem_write(&mut self, offset: u64, v: u8, vram: &mut [u8]) {
        let (start, size) = self.window();
        if offset < start || offset >= start + size {
            return;
        }
        self.touch();
        let addr = (offset - start) as usize;
        if self.vbe_enabled() && self.s.vbe[4] & VBE_LFB == 0 {
            let a = addr + (usize::from(self.s.vbe[5]) << 16);
            if let Some(b) = vram.get_mut(a) {
                *b = v;
            }
            return;
        }
        if self.s.sr[4] & 0x08 != 0 {
            // Chain 4: the low two address bits pick the plane; stored linearly.
            if self.s.sr[2] & (1 << (addr & 3)) != 0 {
                if let Some(b) = vram.get_mut(addr) {
                    *b = v;
                }
            }
            return;
        }
        if self.s.gr[5] & 0x10 != 0 {
            let plane = (self.s.gr[4] & 2) | (addr as u8 & 1);
            if self.s.sr[2] & (1 << plane) != 0 {
                if let Some(b) = vram.get_mut(((addr & !1) << 1) | usize::from(plane)) {
                    *b = v;
                }
            }
            return;
        }
        // Planar write modes 0–3 (VGA spec, graphics controller).
        let gr = &self.s.gr;
        let latch = self.s.latch;
        let expand = |b: u8| u32::from(b) * 0x0101_0101;
        let mask4 = |m: u8| -> u32 {
            (0..4).fold(0u32, |a, p| {
                a | if m & (1 << p) != 0 {
                    0xff << (8 * p)
                } else {
                    0
                }
            })
        };
        let mut bit_mask = gr[8];
        let val: u32 = match gr[5] & 3 {
            0 => {
                let rot = gr[3] & 7;
                let vv = v.rotate_right(u32::from(rot));
                let mut val = expand(vv);
                let sr_en = mask4(gr[1]);
                val = (val & !sr_en) | (mask4(gr[0]) & sr_en);
                val
            }
            1 => latch,
            2 => mask4(v & 0x0f),
            _ => {
                let rot = gr[3] & 7;
                let vv = v.rotate_right(u32::from(rot));
                bit_mask &= vv;
                mask4(gr[0])
            }
        };
        let val = if gr[5] & 3 != 1 {
            let val = match (gr[3] >> 3) & 3 {
                0 => val,
                1 => val & latch,
                2 => val | latch,
                _ => val ^ latch,
            };
            let bm = expand(bit_mask);
            (val & bm) | (latch & !bm)
        } else {
            val
        };
        let plane_mask = mask4(self.s.sr[2] & 0x0f);
        let base = addr * 4;
        if let Some(l) = vram.get_mut(base..base + 4) {
            let old = u32::from_le_bytes([l[0], l[1], l[2], l[3]]);
            let new = (old & !plane_mask) | (val & plane_mask);
            l.copy_from_slice(&new.to_le_bytes());
        }
    }

    // ---- the MMIO BAR (QEMU stdvga, 4 KiB) ----

    /// A read from the MMIO BAR at `offset`.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            0x400..=0x41f => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.io_read(0x3c0 + (offset - 0x400) as u16 + i as u16);
                }
            }
            0x500..=0x515 => {
                let v = self
                    .dispi_read(((offset - 0x500) / 2) as usize)
                    .to_le_bytes();
                let n = data.len().min(2);
                data[..n].copy_from_slice(&v[..n]);
            }
            0x600 => data[0] = 8, // size of the extended register block
            _ => {}
        }
    }

    pub fn mmio_write(&mut self, offset: u64, data: &[u8], vram: &mut [u8]) {
        match offset {
            0x400..=0x41f => {
                for (i, b) in data.iter().enumerate() {
                    self.io_write(0x3c0 + (offset - 0x400) as u16 + i as u16, *b);
                }
            }
            0x500..=0x515 if data.len() >= 2 => {
                let v = u16::from_le_bytes([data[0], data[1]]);
                self.dispi_write(((offset - 0x500) / 2) as usize, v, vram);
            }
            _ => {}
        }
    }
}

impl Snapshot for Vga {
    type State = VgaState;
    const KIND: &'static str = "VGA";
    const VERSION: u32 = 1;
    fn save(&self) -> VgaState {
        self.s.clone()
    }
    fn restore(&mut self, s: VgaState) -> Result<(), StateError> {
        if s.ar.len() != 21 || s.cr.len() != 25 || s.dac.len() != 768 {
            return Err(StateError::Invalid {
                kind: Self::KIND,
                reason: "register file sizes".into(),
            });
        }
        self.s = s;
        self.touch();
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// Find the 8x16 font (256 glyphs of 16 bytes, code page 437) in a VGA BIOS image, by the
/// standard glyph for 'A'. The VGA text mode gets it for direct boots, text consoles draw
/// with it.
pub fn font_from_rom(rom: &[u8]) -> Option<Vec<u8>> {
    const A: [u8; 16] = [
        0x00, 0x00, 0x10, 0x38, 0x6c, 0xc6, 0xc6, 0xfe, 0xc6, 0xc6, 0xc6, 0xc6, 0x00, 0x00, 0x00,
        0x00,
    ];
    let at = rom.windows(16).position(|w| w == A)?;
    let base = at.checked_sub(0x41 * 16)?;
    let font = rom.get(base..base + 256 * 16)?;
    // Glyph 0 is blank in every VGA font.
    (font[..16].iter().all(|b| *b == 0)).then(|| font.to_vec())
}
