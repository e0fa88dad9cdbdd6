//! Test-only decoders for every encoding the server sends, written from the RFB spec
//! independently of the encoders, and the tests that every encoding decodes to exactly
//! the pixels Raw gives, for several pixel formats and pictures.

use flate2::{Decompress, FlushDecompress};

use super::super::pixel::PixelFormat;
use super::{enc, Encoder, PixelEncoding};
use crate::display::{Rect, Surface};

/// A cursor over received bytes.
pub struct Rd<'a>(pub &'a [u8]);

impl<'a> Rd<'a> {
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(
            self.0.len() >= n,
            "short data: need {n}, have {}",
            self.0.len()
        );
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    pub fn i32(&mut self) -> i32 {
        self.u32() as i32
    }
}

fn inflate(z: &mut Decompress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4 + 1024);
    let mut consumed = 0;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity());
        }
        let before = z.total_in();
        z.decompress_vec(&data[consumed..], &mut out, FlushDecompress::Sync)
            .expect("inflate");
        consumed += (z.total_in() - before) as usize;
        if consumed >= data.len() && out.len() < out.capacity() {
            return out;
        }
    }
}

/// Client-side decoder state (the zlib streams mirror the server's).
pub struct Decoder {
    pub pf: PixelFormat,
    zlib: Decompress,
    zrle: Decompress,
    tight: [Decompress; 4],
    /// JPEG rectangles seen (lossy; compared with a tolerance).
    pub jpeg_rects: usize,
}

impl Decoder {
    pub fn new(pf: PixelFormat) -> Self {
        let d = || Decompress::new(true);
        Self {
            pf,
            zlib: d(),
            zrle: d(),
            tight: [d(), d(), d(), d()],
            jpeg_rects: 0,
        }
    }

    fn pixel(&self, rd: &mut Rd) -> u32 {
        let b = rd.take(self.pf.bytes_per_pixel());
        self.pf.to_xrgb(self.pf.get_value(b))
    }

    fn put(fb: &mut Surface, x: u32, y: u32, p: u32) {
        let w = fb.width();
        fb.pixels_mut()[(y * w + x) as usize] = p;
    }

    /// Decode one rectangle (header included) into `fb`; returns its encoding.
    pub fn rect(&mut self, rd: &mut Rd, fb: &mut Surface) -> (Rect, i32) {
        let r = Rect::new(
            u32::from(rd.u16()),
            u32::from(rd.u16()),
            u32::from(rd.u16()),
            u32::from(rd.u16()),
        );
        let e = rd.i32();
        match e {
            enc::RAW => {
                for y in r.y..r.y + r.h {
                    for x in r.x..r.x + r.w {
                        let p = self.pixel(rd);
                        Self::put(fb, x, y, p);
                    }
                }
            }
            enc::HEXTILE => self.hextile(rd, fb, r),
            enc::ZLIB => {
                let n = rd.u32() as usize;
                let data = inflate(&mut self.zlib, rd.take(n));
                let mut d = Rd(&data);
                for y in r.y..r.y + r.h {
                    for x in r.x..r.x + r.w {
                        let p = self.pixel(&mut d);
                        Self::put(fb, x, y, p);
                    }
                }
                assert!(d.0.is_empty());
            }
            enc::ZRLE => {
                let n = rd.u32() as usize;
                let data = inflate(&mut self.zrle, rd.take(n));
                let mut d = Rd(&data);
                self.zrle_data(&mut d, fb, r);
                assert!(d.0.is_empty(), "{} ZRLE bytes left", d.0.len());
            }
            enc::TIGHT | enc::TIGHT_PNG => self.tight(rd, fb, r),
            enc::DESKTOP_SIZE => {}
            enc::EXTENDED_DESKTOP_SIZE => {
                let n = rd.u8();
                rd.take(3);
                rd.take(16 * usize::from(n));
            }
            enc::LED_STATE => {
                rd.u8();
            }
            enc::QEMU_EXT_KEY_EVENT | enc::POINTER_TYPE_CHANGE => {}
            enc::CURSOR => {
                let n = (r.w * r.h) as usize * self.pf.bytes_per_pixel()
                    + (r.w as usize).div_ceil(8) * r.h as usize;
                rd.take(n);
            }
            other => panic!("unknown encoding {other}"),
        }
        (r, e)
    }

    fn hextile(&mut self, rd: &mut Rd, fb: &mut Surface, r: Rect) {
        let (mut bg, mut fg) = (0u32, 0u32);
        let mut ty = r.y;
        while ty < r.y + r.h {
            let th = (r.y + r.h - ty).min(16);
            let mut tx = r.x;
            while tx < r.x + r.w {
                let tw = (r.x + r.w - tx).min(16);
                let mask = rd.u8();
                if mask & 1 != 0 {
                    for y in ty..ty + th {
                        for x in tx..tx + tw {
                            let p = self.pixel(rd);
                            Self::put(fb, x, y, p);
                        }
                    }
                } else {
                    if mask & 2 != 0 {
                        bg = self.pixel(rd);
                    }
                    if mask & 4 != 0 {
                        fg = self.pixel(rd);
                    }
                    fb.fill(Rect::new(tx, ty, tw, th), bg);
                    if mask & 8 != 0 {
                        let n = rd.u8();
                        for _ in 0..n {
                            let c = if mask & 16 != 0 { self.pixel(rd) } else { fg };
                            let xy = rd.u8();
                            let wh = rd.u8();
                            let sr = Rect::new(
                                tx + u32::from(xy >> 4),
                                ty + u32::from(xy & 15),
                                u32::from(wh >> 4) + 1,
                                u32::from(wh & 15) + 1,
                            );
                            assert!(sr.x + sr.w <= tx + tw && sr.y + sr.h <= ty + th);
                            fb.fill(sr, c);
                        }
                    }
                }
                tx += tw;
            }
            ty += th;
        }
    }

    fn cpixel(&self, d: &mut Rd) -> u32 {
        match self.pf.cpixel_range() {
            Some(range) => {
                let mut b = [0u8; 4];
                b[range.clone()].copy_from_slice(d.take(3));
                self.pf.to_xrgb(self.pf.get_value(&b))
            }
            None => self.pixel(d),
        }
    }

    fn run_len(d: &mut Rd) -> usize {
        let mut n = 1;
        loop {
            let b = d.u8();
            n += usize::from(b);
            if b != 255 {
                return n;
            }
        }
    }

    fn zrle_data(&mut self, d: &mut Rd, fb: &mut Surface, r: Rect) {
        let mut ty = r.y;
        while ty < r.y + r.h {
            let th = (r.y + r.h - ty).min(64);
            let mut tx = r.x;
            while tx < r.x + r.w {
                let tw = (r.x + r.w - tx).min(64);
                let sub = d.u8();
                let mut px = Vec::with_capacity((tw * th) as usize);
                match sub {
                    0 => {
                        for _ in 0..tw * th {
                            px.push(self.cpixel(d));
                        }
                    }
                    1 => {
                        let c = self.cpixel(d);
                        px.resize((tw * th) as usize, c);
                    }
                    2..=16 => {
                        let pal: Vec<u32> = (0..sub).map(|_| self.cpixel(d)).collect();
                        let bits = match sub {
                            2 => 1,
                            3..=4 => 2,
                            _ => 4,
                        };
                        for _ in 0..th {
                            let row = d.take((tw as usize * bits).div_ceil(8));
                            for x in 0..tw as usize {
                                let bit = x * bits;
                                let v = (row[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                                px.push(pal[usize::from(v)]);
                            }
                        }
                    }
                    128 => {
                        while px.len() < (tw * th) as usize {
                            let c = self.cpixel(d);
                            let n = Self::run_len(d);
                            px.extend(std::iter::repeat_n(c, n));
                        }
                    }
                    130..=255 => {
                        let pal: Vec<u32> = (0..sub - 128).map(|_| self.cpixel(d)).collect();
                        while px.len() < (tw * th) as usize {
                            let i = d.u8();
                            let n = if i & 128 != 0 { Self::run_len(d) } else { 1 };
                            px.extend(std::iter::repeat_n(pal[usize::from(i & 127)], n));
                        }
                    }
                    other => panic!("bad ZRLE subencoding {other}"),
                }
                assert_eq!(px.len(), (tw * th) as usize, "ZRLE run overflow");
                fb.blit(Rect::new(tx, ty, tw, th), &px, tw as usize);
                tx += tw;
            }
            ty += th;
        }
    }

    fn tpixel(&self, d: &mut Rd) -> u32 {
        if super::tight::tpixel_is_rgb(&self.pf) {
            let b = d.take(3);
            // TPIXEL bytes are R, G, B; the value is rebuilt with the client's shifts.
            let v = (u32::from(b[0]) << self.pf.red_shift)
                | (u32::from(b[1]) << self.pf.green_shift)
                | (u32::from(b[2]) << self.pf.blue_shift);
            self.pf.to_xrgb(v)
        } else {
            self.pixel(d)
        }
    }

    fn compact_len(rd: &mut Rd) -> usize {
        let mut n = 0usize;
        for i in 0..3 {
            let b = rd.u8();
            if i == 2 {
                n |= usize::from(b) << 14;
                break;
            }
            n |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        n
    }

    fn tight_data(&mut self, rd: &mut Rd, stream: usize, len: usize) -> Vec<u8> {
        if len < 12 {
            return rd.take(len).to_vec();
        }
        let n = Self::compact_len(rd);
        let data = inflate(&mut self.tight[stream], rd.take(n));
        assert_eq!(data.len(), len, "tight data length");
        data
    }

    fn tight(&mut self, rd: &mut Rd, fb: &mut Surface, r: Rect) {
        let ctl = rd.u8();
        for i in 0..4 {
            if ctl & (1 << i) != 0 {
                self.tight[i] = Decompress::new(true);
            }
        }
        let kind = ctl >> 4;
        if kind == 8 {
            let c = self.tpixel(rd);
            fb.fill(r, c);
            return;
        }
        if kind == 9 || kind == 10 {
            let n = Self::compact_len(rd);
            let data = rd.take(n);
            let px: Vec<u32> = if kind == 9 {
                self.jpeg_rects += 1;
                let mut dec = jpeg_decoder::Decoder::new(data);
                let rgb = dec.decode().expect("jpeg");
                rgb.chunks(3)
                    .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]))
                    .collect()
            } else {
                let dec = ::png::Decoder::new(std::io::Cursor::new(data));
                let mut rdr = dec.read_info().expect("png");
                let mut buf = vec![0; rdr.output_buffer_size().unwrap()];
                rdr.next_frame(&mut buf).expect("png frame");
                buf.chunks(3)
                    .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]))
                    .collect()
            };
            assert_eq!(px.len(), r.area() as usize);
            fb.blit(r, &px, r.w as usize);
            return;
        }
        assert!(kind < 8, "bad tight control {ctl:#x}");
        let stream = usize::from(kind & 3);
        let filter = if kind & 4 != 0 { rd.u8() } else { 0 };
        let tpb = if super::tight::tpixel_is_rgb(&self.pf) {
            3
        } else {
            self.pf.bytes_per_pixel()
        };
        let (w, h) = (r.w as usize, r.h as usize);
        let px: Vec<u32> = match filter {
            0 => {
                let data = self.tight_data(rd, stream, w * h * tpb);
                let mut d = Rd(&data);
                (0..w * h).map(|_| self.tpixel(&mut d)).collect()
            }
            1 => {
                let n = usize::from(rd.u8()) + 1;
                let pal: Vec<u32> = (0..n).map(|_| self.tpixel(rd)).collect();
                if n == 2 {
                    let data = self.tight_data(rd, stream, h * w.div_ceil(8));
                    let mut out = Vec::new();
                    for row in data.chunks(w.div_ceil(8)) {
                        for x in 0..w {
                            out.push(pal[usize::from((row[x / 8] >> (7 - x % 8)) & 1)]);
                        }
                    }
                    out
                } else {
                    let data = self.tight_data(rd, stream, w * h);
                    data.iter().map(|i| pal[usize::from(*i)]).collect()
                }
            }
            other => panic!("unsupported tight filter {other}"),
        };
        fb.blit(r, &px, w);
    }
}

/// Decode a whole FramebufferUpdate message (type byte included) into `fb`, resizing it
/// on DesktopSize; returns the rectangles' encodings.
pub fn decode_update(dec: &mut Decoder, msg: &[u8], fb: &mut Surface) -> Vec<i32> {
    let mut rd = Rd(msg);
    assert_eq!(rd.u8(), 0, "not a FramebufferUpdate");
    rd.u8();
    let n = rd.u16();
    let mut encs = Vec::new();
    for _ in 0..n {
        let save = rd.0;
        let mut peek = Rd(save);
        peek.take(4);
        let (w, h) = (u32::from(peek.u16()), u32::from(peek.u16()));
        let e = peek.i32();
        if e == enc::DESKTOP_SIZE || e == enc::EXTENDED_DESKTOP_SIZE {
            *fb = Surface::new(w, h);
        }
        let (_, e) = dec.rect(&mut rd, fb);
        encs.push(e);
    }
    assert!(
        rd.0.is_empty(),
        "{} bytes after the last rectangle",
        rd.0.len()
    );
    encs
}

/// The pixels a client with format `pf` should see for `s`.
pub fn expected(s: &Surface, pf: &PixelFormat) -> Surface {
    let mut e = s.clone();
    for p in e.pixels_mut() {
        *p = pf.to_xrgb(pf.convert(*p));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::testpattern;

    fn formats() -> Vec<PixelFormat> {
        vec![
            PixelFormat::SERVER,
            PixelFormat {
                big_endian: true,
                ..PixelFormat::SERVER
            },
            // BGR0, as some clients ask.
            PixelFormat {
                red_shift: 0,
                blue_shift: 16,
                ..PixelFormat::SERVER
            },
            // 32 bpp with colours in the high bytes.
            PixelFormat {
                red_shift: 24,
                green_shift: 16,
                blue_shift: 8,
                depth: 24,
                ..PixelFormat::SERVER
            },
            PixelFormat {
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
            },
            PixelFormat {
                bpp: 16,
                depth: 15,
                big_endian: true,
                true_colour: true,
                red_max: 31,
                green_max: 31,
                blue_max: 31,
                red_shift: 10,
                green_shift: 5,
                blue_shift: 0,
            },
            // BGR233.
            PixelFormat {
                bpp: 8,
                depth: 8,
                big_endian: false,
                true_colour: true,
                red_max: 7,
                green_max: 7,
                blue_max: 3,
                red_shift: 0,
                green_shift: 3,
                blue_shift: 6,
            },
        ]
    }

    fn pictures() -> Vec<Surface> {
        let mut out = Vec::new();
        let (w, h) = crate::display::new_display(720, 400).unwrap();
        testpattern::TestPattern::new(w.clone()).redraw();
        out.push(h.snapshot());
        w.resize(37, 23).unwrap();
        testpattern::TestPattern::new(w).redraw();
        out.push(h.snapshot());
        // Text-like: two colours in fine detail.
        let mut t = Surface::new(130, 70);
        for (i, p) in t.pixels_mut().iter_mut().enumerate() {
            *p = if (i * 7 + i / 130) % 5 < 2 {
                0xaaaaaa
            } else {
                0x0000aa
            };
        }
        out.push(t);
        // A few colours in blocks (palettes of 3..16), and a solid one.
        let mut b = Surface::new(200, 100);
        for y in 0..100u32 {
            for x in 0..200u32 {
                b.pixels_mut()[(y * 200 + x) as usize] = [
                    0x123456, 0xff0000, 0x00ff00, 0x0000ff, 0xffffff, 0x808080, 0x101010,
                ][((x / 9 + y / 13) % 7) as usize];
            }
        }
        out.push(b);
        out.push(Surface::new(64, 64));
        out
    }

    fn round_trip(encoding: PixelEncoding, pf: &PixelFormat, s: &Surface, rect: Rect) {
        let mut e = Encoder::new(false);
        let mut d = Decoder::new(*pf);
        // Twice, so the persistent zlib streams are exercised across updates.
        for _ in 0..2 {
            let mut msg = vec![0u8, 0, 0, 0];
            let n = e.encode(encoding, s, rect, pf, &mut msg);
            msg[2..4].copy_from_slice(&n.to_be_bytes());
            let mut fb = Surface::new(s.width(), s.height());
            decode_update(&mut d, &msg, &mut fb);
            let want = expected(s, pf);
            for y in rect.y..rect.y + rect.h {
                for x in rect.x..rect.x + rect.w {
                    assert_eq!(
                        fb.pixel(x, y),
                        want.pixel(x, y),
                        "{encoding:?} {pf:?} at ({x},{y}) of {}x{}",
                        s.width(),
                        s.height()
                    );
                }
            }
        }
    }

    #[test]
    fn every_encoding_decodes_to_the_same_pixels_as_raw() {
        for encoding in [
            PixelEncoding::Raw,
            PixelEncoding::Hextile,
            PixelEncoding::Zlib,
            PixelEncoding::Zrle,
            PixelEncoding::Tight,
        ] {
            for pf in formats() {
                for s in pictures() {
                    round_trip(encoding, &pf, &s, s.rect());
                    // An odd sub-rectangle too.
                    let r = Rect::new(3, 5, s.width() / 2 + 1, s.height() / 2 + 3)
                        .clip(s.width(), s.height());
                    round_trip(encoding, &pf, &s, r);
                }
            }
        }
    }

    #[test]
    fn tight_png_is_lossless_for_rgb_clients() {
        for s in pictures() {
            round_trip(PixelEncoding::TightPng, &PixelFormat::SERVER, &s, s.rect());
        }
    }

    #[test]
    fn tight_jpeg_only_when_lossy_and_close_to_the_picture() {
        let s = &pictures()[0];
        let pf = PixelFormat::SERVER;
        let mut e = Encoder::new(true);
        e.jpeg_quality = Some(9);
        let mut d = Decoder::new(pf);
        let mut msg = vec![0u8, 0, 0, 0];
        let n = e.encode(PixelEncoding::Tight, s, s.rect(), &pf, &mut msg);
        msg[2..4].copy_from_slice(&n.to_be_bytes());
        let mut fb = Surface::new(s.width(), s.height());
        decode_update(&mut d, &msg, &mut fb);
        assert!(d.jpeg_rects > 0, "noise area should go out as JPEG");
        let err: u64 = fb
            .pixels()
            .iter()
            .zip(s.pixels())
            .map(|(a, b)| {
                (0..3)
                    .map(|i| {
                        (((a >> (8 * i)) & 0xff) as i64 - ((b >> (8 * i)) & 0xff) as i64)
                            .unsigned_abs()
                    })
                    .sum::<u64>()
            })
            .sum();
        let mean = err as f64 / (s.pixels().len() * 3) as f64;
        assert!(mean < 8.0, "mean channel error {mean}");
        // Without lossy=on the same request never produces JPEG.
        let mut e = Encoder::new(false);
        e.jpeg_quality = Some(9);
        let mut d = Decoder::new(pf);
        let mut msg = vec![0u8, 0, 0, 0];
        let n = e.encode(PixelEncoding::Tight, s, s.rect(), &pf, &mut msg);
        msg[2..4].copy_from_slice(&n.to_be_bytes());
        decode_update(&mut d, &msg, &mut fb);
        assert_eq!(d.jpeg_rects, 0);
    }

    #[test]
    fn compressed_encodings_are_smaller_than_raw_on_text() {
        let s = &pictures()[2];
        let pf = PixelFormat::SERVER;
        let raw = s.area_bytes();
        for encoding in [
            PixelEncoding::Hextile,
            PixelEncoding::Zlib,
            PixelEncoding::Zrle,
            PixelEncoding::Tight,
        ] {
            let mut out = Vec::new();
            Encoder::new(false).encode(encoding, s, s.rect(), &pf, &mut out);
            assert!(out.len() < raw, "{encoding:?}: {} >= {raw}", out.len());
        }
    }

    trait AreaBytes {
        fn area_bytes(&self) -> usize;
    }
    impl AreaBytes for Surface {
        fn area_bytes(&self) -> usize {
            self.pixels().len() * 4
        }
    }
}
