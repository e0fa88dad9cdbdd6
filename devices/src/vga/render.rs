//! Turning VGA state and VRAM into 32-bit XRGB pixels, following QEMU's choices so the
//! same screen looks the same: text modes with the guest's font from plane 2 (9-dot cells
//! duplicate the 8th column for line-drawing characters 0xB0–0xDF), planar 16-colour
//! modes, chain-4 256-colour modes (pixels doubled), and the VBE linear framebuffer.

use super::Vga;

/// QEMU's expansion of a 6-bit DAC component to 8 bits.
pub fn c6_to_8(v: u8) -> u32 {
    let v = u32::from(v & 0x3f);
    let b = v & 1;
    (v << 2) | (b << 1) | b
}

/// What the guest is showing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Columns, rows, cell width, cell height.
    Text {
        cols: u32,
        rows: u32,
        cw: u32,
        ch: u32,
    },
    /// Legacy graphics: shift control (0 planar, 1 CGA, 2 256-colour), output size.
    Graphics { shift: u8, width: u32, height: u32 },
    /// VBE: resolution and bits per pixel.
    Vbe { width: u32, height: u32, bpp: u32 },
    /// Nothing programmed yet (power-on): a blank 640x480.
    Blank,
}

impl Mode {
    pub fn size(&self) -> (u32, u32) {
        match *self {
            Mode::Text { cols, rows, cw, ch } => (cols * cw, rows * ch),
            Mode::Graphics { width, height, .. } => (width, height),
            Mode::Vbe { width, height, .. } => (width, height),
            Mode::Blank => (640, 480),
        }
    }
}

impl Vga {
    /// The 16-colour palette through the attribute controller (QEMU `update_palette16`).
    fn palette16(&self) -> [u32; 16] {
        let s = &self.s;
        let mut p = [0u32; 16];
        for (i, out) in p.iter_mut().enumerate() {
            let mut v = usize::from(s.ar[i]);
            if s.ar[0x10] & 0x80 != 0 {
                v = (usize::from(s.ar[0x14] & 0x0f) << 4) | (v & 0x0f);
            } else {
                v = (usize::from(s.ar[0x14] & 0x0c) << 4) | (v & 0x3f);
            }
            *out = self.dac_rgb(v);
        }
        p
    }

    fn dac_rgb(&self, i: usize) -> u32 {
        let d = &self.s.dac[i * 3..i * 3 + 3];
        (c6_to_8(d[0]) << 16) | (c6_to_8(d[1]) << 8) | c6_to_8(d[2])
    }

    fn palette256(&self) -> Vec<u32> {
        (0..256).map(|i| self.dac_rgb(i)).collect()
    }

    fn start_addr(&self) -> usize {
        usize::from(self.s.cr[0x0d]) | usize::from(self.s.cr[0x0c]) << 8
    }

    fn line_offset(&self) -> usize {
        usize::from(self.s.cr[0x13]) << 3
    }

    fn vertical_display_end(&self) -> u32 {
        let cr = &self.s.cr;
        u32::from(cr[0x12]) | (u32::from(cr[7] & 0x02) << 7) | (u32::from(cr[7] & 0x40) << 3)
    }

    /// The current mode (and so the output size).
    pub fn mode(&self) -> Mode {
        let s = &self.s;
        if self.vbe_enabled() {
            let (w, h, bpp) = (
                u32::from(s.vbe[1]),
                u32::from(s.vbe[2]),
                u32::from(s.vbe[3]),
            );
            if w == 0 || h == 0 {
                return Mode::Blank;
            }
            return Mode::Vbe {
                width: w,
                height: h,
                bpp,
            };
        }
        if s.cr[1] == 0 || self.vertical_display_end() == 0 {
            return Mode::Blank;
        }
        if s.gr[6] & 1 == 0 {
            let cols = u32::from(s.cr[1]) + 1;
            let mut cw = if s.sr[1] & 1 != 0 { 8 } else { 9 };
            if s.sr[1] & 0x08 != 0 {
                cw = 16;
            }
            let ch = u32::from(s.cr[9] & 0x1f) + 1;
            let rows = (self.vertical_display_end() + 1) / ch;
            if rows == 0 {
                return Mode::Blank;
            }
            Mode::Text { cols, rows, cw, ch }
        } else {
            let shift = (s.gr[5] >> 5) & 3;
            let width = (u32::from(s.cr[1]) + 1) * 8;
            let height = self.vertical_display_end() + 1;
            Mode::Graphics {
                shift,
                width,
                height,
            }
        }
    }

    /// Render the whole picture into `out` (resized to width * height); returns the mode.
    pub fn render(&self, vram: &[u8], out: &mut Vec<u32>) -> Mode {
        let mode = self.mode();
        let (w, h) = mode.size();
        out.clear();
        out.resize((w * h) as usize, 0);
        match mode {
            Mode::Text { cols, rows, cw, ch } => self.render_text(vram, out, cols, rows, cw, ch),
            Mode::Graphics {
                shift,
                width,
                height,
            } => self.render_graphics(vram, out, shift, width, height),
            Mode::Vbe { width, height, bpp } => self.render_vbe(vram, out, width, height, bpp),
            Mode::Blank => {}
        }
        mode
    }

    fn render_text(&self, vram: &[u8], out: &mut [u32], cols: u32, rows: u32, cw: u32, ch: u32) {
        let s = &self.s;
        let pal = self.palette16();
        let cmap = s.sr[3];
        let font_off = |sel: u8| -> usize { usize::from(sel) * 8192 * 4 + 2 };
        let font_base = [
            font_off(((cmap >> 4) & 1) | ((cmap << 1) & 6)),
            font_off(((cmap >> 5) & 1) | ((cmap >> 1) & 6)),
        ];
        let line_graphics = s.ar[0x10] & 0x04 != 0;
        let start = self.start_addr();
        let cursor_addr =
            (usize::from(s.cr[0x0e]) << 8 | usize::from(s.cr[0x0f])).wrapping_sub(start);
        let cursor_on = s.cr[0x0a] & 0x20 == 0;
        let width = (cols * cw) as usize;
        let line_offset = self.line_offset();
        let byte = |i: usize| vram.get(i).copied().unwrap_or(0);
        for cy in 0..rows as usize {
            let row_src = start * 4 + cy * line_offset;
            for cx in 0..cols as usize {
                let src = row_src + cx * 4;
                let chr = byte(src);
                let attr = byte(src + 1);
                let font = font_base[usize::from((attr >> 3) & 1)] + 32 * 4 * usize::from(chr);
                let fg = pal[usize::from(attr & 0x0f)];
                let bg = pal[usize::from(attr >> 4)];
                let dup9 = cw == 9 && (0xb0..=0xdf).contains(&chr) && line_graphics;
                let x0 = cx * cw as usize;
                for line in 0..ch as usize {
                    let bits = byte(font + line * 4);
                    let y = cy * ch as usize + line;
                    let row = &mut out[y * width + x0..y * width + x0 + cw as usize];
                    draw_glyph_line(row, bits, fg, bg, cw, dup9);
                }
                let is_cursor = cy * (line_offset / 4) + cx == cursor_addr;
                if cursor_on && is_cursor {
                    let first = u32::from(s.cr[0x0a] & 0x1f);
                    let last = u32::from(s.cr[0x0b] & 0x1f).min(ch - 1);
                    if last >= first && first < ch {
                        for line in first..=last {
                            let y = cy * ch as usize + line as usize;
                            let row = &mut out[y * width + x0..y * width + x0 + cw as usize];
                            draw_glyph_line(row, 0xff, fg, bg, cw, true);
                        }
                    }
                }
            }
        }
    }

    fn render_graphics(&self, vram: &[u8], out: &mut [u32], shift: u8, width: u32, height: u32) {
        let s = &self.s;
        let double_scan = u32::from(s.cr[9] >> 7);
        let multi = if shift != 1 {
            ((u32::from(s.cr[9] & 0x1f) + 1) << double_scan) - 1
        } else {
            double_scan
        };
        let start = self.start_addr() * 4;
        let line_offset = self.line_offset();
        let pal16 = self.palette16();
        let pal256 = self.palette256();
        let byte = |i: usize| vram.get(i).copied().unwrap_or(0);
        let w = width as usize;
        let mut src_line = 0usize;
        let mut y = 0usize;
        while y < height as usize {
            let mut addr = start + src_line * line_offset;
            // CGA and Hercules line interleaving (CRTC mode control bits 0 and 1).
            if s.cr[0x17] & 1 == 0 {
                addr = (addr & !0x8000) | ((src_line & 1) << 15);
            }
            if s.cr[0x17] & 2 == 0 {
                addr = (addr & !0x10000) | ((src_line & 2) << 15);
            }
            let row = &mut out[y * w..(y + 1) * w];
            match shift {
                0 => {
                    // Planar 16 colours: 8 pixels per address, one bit per plane.
                    let half = s.sr[1] & 8 != 0;
                    for (x, px) in row.iter_mut().enumerate() {
                        let sx = if half { x / 2 } else { x };
                        let a = addr + (sx / 8) * 4;
                        let bit = 7 - (sx % 8);
                        let mut idx = 0usize;
                        for p in 0..4 {
                            if s.ar[0x12] & (1 << p) != 0 {
                                idx |= usize::from((byte(a + p) >> bit) & 1) << p;
                            }
                        }
                        *px = pal16[idx];
                    }
                }
                1 => {
                    // CGA 4 colours: 2 bits per pixel in planes 0/1 (odd/even).
                    for (x, px) in row.iter_mut().enumerate() {
                        let sx = x / 2;
                        let a = addr + (sx / 8) * 4;
                        let b = if (sx / 4) % 2 == 0 {
                            byte(a)
                        } else {
                            byte(a + 1)
                        };
                        let idx = (b >> (6 - 2 * (sx % 4))) & 3;
                        *px = pal16[usize::from(idx)];
                    }
                }
                _ => {
                    // 256 colours, each pixel shown twice horizontally (QEMU LINE8D2).
                    for (x, px) in row.iter_mut().enumerate() {
                        *px = pal256[usize::from(byte(addr + x / 2))];
                    }
                }
            }
            // Repeat the line for multi-scan.
            let mut copies = multi;
            let src_row: Vec<u32> = out[y * w..(y + 1) * w].to_vec();
            while copies > 0 && y + 1 < height as usize {
                y += 1;
                out[y * w..(y + 1) * w].copy_from_slice(&src_row);
                copies -= 1;
            }
            y += 1;
            src_line += 1;
        }
    }

    fn render_vbe(&self, vram: &[u8], out: &mut [u32], width: u32, height: u32, bpp: u32) {
        let s = &self.s;
        let bytes = bpp.div_ceil(8) as usize;
        let line = self.line_bytes();
        let start = usize::from(s.vbe[9]) * line + usize::from(s.vbe[8]) * bytes;
        let pal = self.palette256();
        let w = width as usize;
        for y in 0..height as usize {
            let base = start + y * line;
            let Some(src) = vram.get(base..base + w * bytes) else {
                break;
            };
            let row = &mut out[y * w..(y + 1) * w];
            match bpp {
                32 => {
                    for (px, c) in row.iter_mut().zip(src.chunks_exact(4)) {
                        *px = u32::from_le_bytes([c[0], c[1], c[2], 0]);
                    }
                }
                24 => {
                    for (px, c) in row.iter_mut().zip(src.chunks_exact(3)) {
                        *px = u32::from_le_bytes([c[0], c[1], c[2], 0]);
                    }
                }
                16 => {
                    for (px, c) in row.iter_mut().zip(src.chunks_exact(2)) {
                        let v = u32::from(u16::from_le_bytes([c[0], c[1]]));
                        let (r, g, b) = ((v >> 11) & 0x1f, (v >> 5) & 0x3f, v & 0x1f);
                        *px = ((r << 3 | r >> 2) << 16)
                            | ((g << 2 | g >> 4) << 8)
                            | (b << 3 | b >> 2);
                    }
                }
                15 => {
                    for (px, c) in row.iter_mut().zip(src.chunks_exact(2)) {
                        let v = u32::from(u16::from_le_bytes([c[0], c[1]]));
                        let (r, g, b) = ((v >> 10) & 0x1f, (v >> 5) & 0x1f, v & 0x1f);
                        *px = ((r << 3 | r >> 2) << 16)
                            | ((g << 3 | g >> 2) << 8)
                            | (b << 3 | b >> 2);
                    }
                }
                _ => {
                    for (px, c) in row.iter_mut().zip(src.iter()) {
                        *px = pal[usize::from(*c)];
                    }
                }
            }
        }
    }

    /// Cursor position (column, row) in text mode, if visible.
    pub fn text_cursor(&self) -> Option<(u32, u32)> {
        let Mode::Text { cols, .. } = self.mode() else {
            return None;
        };
        if self.s.cr[0x0a] & 0x20 != 0 {
            return None;
        }
        let pos = (usize::from(self.s.cr[0x0e]) << 8 | usize::from(self.s.cr[0x0f]))
            .wrapping_sub(self.start_addr());
        let per_row = (self.line_offset() / 4).max(1);
        let (cx, cy) = ((pos % per_row) as u32, (pos / per_row) as u32);
        (cx < cols).then_some((cx, cy))
    }
}

/// One glyph row: 8 font bits MSB first, then (for 9-dot cells) the 9th column.
fn draw_glyph_line(row: &mut [u32], bits: u8, fg: u32, bg: u32, cw: u32, dup9: bool) {
    match cw {
        16 => {
            for i in 0..8 {
                let c = if bits & (0x80 >> i) != 0 { fg } else { bg };
                row[2 * i] = c;
                row[2 * i + 1] = c;
            }
        }
        _ => {
            for (i, px) in row.iter_mut().take(8).enumerate() {
                *px = if bits & (0x80 >> i) != 0 { fg } else { bg };
            }
            if cw == 9 {
                row[8] = if dup9 && bits & 1 != 0 { fg } else { bg };
            }
        }
    }
}

/// A VGA colour index (bit 0 blue, 1 green, 2 red, 3 bright) in ANSI order (bit 0 red, 2 blue).
fn vga_to_ansi(i: u8) -> u8 {
    ((i & 1) << 2) | (i & 0x0a) | ((i >> 2) & 1)
}

impl Vga {
    /// What a text display shows (QEMU's `vga_update_text`): the characters and attributes
    /// of a text mode; for a graphics mode, "W x H Graphic mode" on a 60x3 screen.
    pub fn text_grid(&self, vram: &[u8]) -> crate::textgrid::TextGrid {
        use crate::textgrid::{TextCell, TextGrid};
        let mode = self.mode();
        let Mode::Text { cols, rows, .. } = mode else {
            if mode == Mode::Blank {
                return TextGrid::blank(80, 25);
            }
            let (w, h) = mode.size();
            return TextGrid::message(60, 3, &format!("{w} x {h} Graphic mode"), 12);
        };
        let (cols, rows) = (cols as usize, rows as usize);
        let start = self.start_addr();
        let line_offset = self.line_offset();
        let byte = |i: usize| vram.get(i).copied().unwrap_or(0);
        let mut cells = Vec::with_capacity(cols * rows);
        for cy in 0..rows {
            for cx in 0..cols {
                let src = start * 4 + cy * line_offset + cx * 4;
                let attr = byte(src + 1);
                cells.push(TextCell {
                    ch: byte(src),
                    fg: vga_to_ansi(attr & 0x0f),
                    bg: vga_to_ansi(attr >> 4),
                });
            }
        }
        let cursor = self
            .text_cursor()
            .map(|(x, y)| (x as usize, y as usize))
            .filter(|&(_, y)| y < rows);
        TextGrid {
            cols,
            rows,
            cells,
            cursor,
        }
    }
}
