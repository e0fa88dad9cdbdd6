//! RFB pixel formats (RFB 3.8 §7.4): the server's native format and conversion of XRGB
//! surface pixels into whatever true-colour format a client asked for.

use super::VncError;

/// A PIXEL_FORMAT structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bpp: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub true_colour: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// What QEMU announces in ServerInit: 32 bpp, depth 24, little-endian, true colour,
    /// 255 per channel, shifts R16 G8 B0 — the surface's own layout.
    pub const SERVER: PixelFormat = PixelFormat {
        bpp: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// The 16-byte wire form.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bpp;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = u8::from(self.true_colour);
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Parse and check a client's SetPixelFormat, as QEMU's `set_pixel_format`: a
    /// colour-map format becomes QEMU's 256-colour palette (8 bpp, 3-3-2 bits at shifts 0,
    /// 3, 6; the session then sends [`Self::colour_map`]); a channel whose max is 0 is
    /// always 0. Sizes other than 8/16/32 bpp, and channels that do not fit, are refused.
    pub fn from_bytes(b: &[u8; 16]) -> Result<Self, VncError> {
        let mut pf = PixelFormat {
            bpp: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        if !pf.true_colour {
            pf = PixelFormat {
                bpp: 8,
                depth: 8,
                red_max: 7,
                green_max: 7,
                blue_max: 3,
                red_shift: 0,
                green_shift: 3,
                blue_shift: 6,
                ..pf
            };
        }
        if !matches!(pf.bpp, 8 | 16 | 32) {
            return Err(VncError::PixelFormat(format!("{} bits per pixel", pf.bpp)));
        }
        for (max, shift) in [
            (pf.red_max, pf.red_shift),
            (pf.green_max, pf.green_shift),
            (pf.blue_max, pf.blue_shift),
        ] {
            let bits = 16 - max.leading_zeros();
            if max != 0 && u32::from(shift) + bits > u32::from(pf.bpp) {
                return Err(VncError::PixelFormat(format!(
                    "channel max {max} at shift {shift} does not fit {} bits",
                    pf.bpp
                )));
            }
        }
        Ok(pf)
    }

    /// For a colour-map format: the SetColourMapEntries message (RFB 3.8 §7.6.2) giving
    /// each of the 256 pixel values the colour its channel bits stand for, as QEMU's
    /// `send_color_map` computes it (16-bit intensities, the channel's bits at the top).
    pub fn colour_map(&self) -> Option<Vec<u8>> {
        if self.true_colour {
            return None;
        }
        let mut m = vec![1, 0, 0, 0, 1, 0];
        let level = |i: u32, shift: u8, max: u16| -> u16 {
            let bits = max.count_ones();
            let v = (i >> shift) & u32::from(max);
            (v << (16 - bits)) as u16
        };
        for i in 0..256u32 {
            for (shift, max) in [
                (self.red_shift, self.red_max),
                (self.green_shift, self.green_max),
                (self.blue_shift, self.blue_max),
            ] {
                m.extend_from_slice(&level(i, shift, max).to_be_bytes());
            }
        }
        Some(m)
    }

    /// Bytes per pixel on the wire.
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bpp / 8)
    }

    fn scale(v: u32, max: u16) -> u32 {
        let max = u32::from(max);
        if max == 255 {
            v
        } else if (max + 1).is_power_of_two() {
            // Keep the top bits, like QEMU's conversion.
            v >> (8 - (max + 1).trailing_zeros().min(8))
        } else {
            (v * max + 127) / 255
        }
    }

    /// An XRGB pixel as this format's pixel value.
    pub fn convert(&self, p: u32) -> u32 {
        if *self == Self::SERVER {
            return p & 0xffffff;
        }
        let r = Self::scale((p >> 16) & 0xff, self.red_max);
        let g = Self::scale((p >> 8) & 0xff, self.green_max);
        let b = Self::scale(p & 0xff, self.blue_max);
        (r << self.red_shift) | (g << self.green_shift) | (b << self.blue_shift)
    }

    /// Append a pixel value in wire byte order.
    pub fn put_value(&self, out: &mut Vec<u8>, v: u32) {
        match (self.bpp, self.big_endian) {
            (8, _) => out.push(v as u8),
            (16, false) => out.extend_from_slice(&(v as u16).to_le_bytes()),
            (16, true) => out.extend_from_slice(&(v as u16).to_be_bytes()),
            (_, false) => out.extend_from_slice(&v.to_le_bytes()),
            (_, true) => out.extend_from_slice(&v.to_be_bytes()),
        }
    }

    /// Append an XRGB pixel converted to this format.
    pub fn put(&self, out: &mut Vec<u8>, p: u32) {
        self.put_value(out, self.convert(p));
    }

    /// Back from a pixel value to XRGB (used by tests' decoders and for CPIXEL checks);
    /// exact for 8-bit channels.
    pub fn to_xrgb(&self, v: u32) -> u32 {
        let ch = |shift: u8, max: u16| -> u32 {
            let c = (v >> shift) & u32::from(max);
            if max == 255 {
                c
            } else {
                c * 255 / u32::from(max)
            }
        };
        (ch(self.red_shift, self.red_max) << 16)
            | (ch(self.green_shift, self.green_max) << 8)
            | ch(self.blue_shift, self.blue_max)
    }

    /// Read one pixel value in wire byte order.
    pub fn get_value(&self, b: &[u8]) -> u32 {
        match (self.bpp, self.big_endian) {
            (8, _) => u32::from(b[0]),
            (16, false) => u32::from(u16::from_le_bytes([b[0], b[1]])),
            (16, true) => u32::from(u16::from_be_bytes([b[0], b[1]])),
            (_, false) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            (_, true) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    /// True for the "8 bits per channel in 32 bpp" formats where ZRLE's CPIXEL and
    /// Tight's TPIXEL shrink to 3 bytes.
    pub fn is_888(&self) -> bool {
        self.bpp == 32
            && self.depth <= 24
            && self.red_max == 255
            && self.green_max == 255
            && self.blue_max == 255
    }

    /// For ZRLE's CPIXEL: which 3 of the 4 wire bytes carry the colour, if the colour
    /// bits all fit in the low 3 or the high 3 bytes of the value (RFB 3.8 §7.7.6).
    pub fn cpixel_range(&self) -> Option<std::ops::Range<usize>> {
        if self.bpp != 32 || self.depth > 24 {
            return None;
        }
        let mask = (u32::from(self.red_max) << self.red_shift)
            | (u32::from(self.green_max) << self.green_shift)
            | (u32::from(self.blue_max) << self.blue_shift);
        let fits_low = mask & 0xff00_0000 == 0;
        let fits_high = mask & 0xff == 0;
        match (fits_low, fits_high, self.big_endian) {
            (true, _, false) => Some(0..3),
            (true, _, true) => Some(1..4),
            (false, true, false) => Some(1..4),
            (false, true, true) => Some(0..3),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_format_round_trips() {
        let b = PixelFormat::SERVER.to_bytes();
        assert_eq!(b[..4], [32, 24, 0, 1]);
        assert_eq!(PixelFormat::from_bytes(&b).unwrap(), PixelFormat::SERVER);
    }

    #[test]
    fn sixteen_bit_565() {
        let pf = PixelFormat {
            bpp: 16,
            depth: 16,
            big_endian: false,
            true_colour: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
        };
        assert_eq!(pf.convert(0xffffff), 0xffff);
        assert_eq!(pf.convert(0xff0000), 0xf800);
        assert_eq!(pf.convert(0x00ff00), 0x07e0);
        let mut out = Vec::new();
        pf.put(&mut out, 0xff0000);
        assert_eq!(out, [0x00, 0xf8]);
    }

    #[test]
    fn a_colour_map_format_gets_qemus_palette_and_zero_maxima_give_zero() {
        let mut b = PixelFormat::SERVER.to_bytes();
        b[3] = 0;
        let pf = PixelFormat::from_bytes(&b).unwrap();
        assert_eq!(
            (pf.bpp, pf.red_max, pf.green_max, pf.blue_max),
            (8, 7, 7, 3)
        );
        // Pure red is index 7 (red in bits 0-2), white 255.
        assert_eq!(pf.convert(0xff0000), 7);
        assert_eq!(pf.convert(0xffffff), 255);
        let map = pf.colour_map().unwrap();
        assert_eq!(map.len(), 6 + 256 * 6);
        assert_eq!(map[..6], [1, 0, 0, 0, 1, 0]);
        // Entry 7: red 7 << 13, no green, no blue; entry 255: every channel at its top.
        assert_eq!(map[6 + 7 * 6..6 + 8 * 6], [0xe0, 0, 0, 0, 0, 0]);
        assert_eq!(map[6 + 255 * 6..], [0xe0, 0, 0xe0, 0, 0xc0, 0]);
        assert_eq!(PixelFormat::SERVER.colour_map(), None);

        let mut b = PixelFormat::SERVER.to_bytes();
        b[4..10].fill(0);
        let pf = PixelFormat::from_bytes(&b).unwrap();
        assert_eq!(pf.convert(0xffffff), 0);
    }

    #[test]
    fn bad_formats_are_refused() {
        let mut b = PixelFormat::SERVER.to_bytes();
        b[0] = 24;
        assert!(PixelFormat::from_bytes(&b).is_err());
        let mut b = PixelFormat::SERVER.to_bytes();
        b[10] = 30;
        assert!(PixelFormat::from_bytes(&b).is_err());
    }

    #[test]
    fn cpixel_bytes() {
        assert_eq!(PixelFormat::SERVER.cpixel_range(), Some(0..3));
        let be = PixelFormat {
            big_endian: true,
            ..PixelFormat::SERVER
        };
        assert_eq!(be.cpixel_range(), Some(1..4));
        let high = PixelFormat {
            red_shift: 24,
            green_shift: 16,
            blue_shift: 8,
            ..PixelFormat::SERVER
        };
        assert_eq!(high.cpixel_range(), Some(1..4));
    }
}
