//! Tight (encoding 7) and TightPNG (-260), as specified by TightVNC's `rfbproto.h` and
//! the RFB community registry: the rectangle is split into sub-rectangles of at most
//! 128x128; each is a solid Fill, a palette (2 colours: 1 bit per pixel; up to 256: one
//! byte per pixel), or copied full-colour pixels, zlib-compressed on one of four
//! persistent streams; JPEG replaces full-colour data when `lossy=on` and the client sent
//! a JPEG quality level. TightPNG sends Fill or a PNG image for everything (noVNC refuses
//! "basic" compression there).

use std::collections::HashMap;

use super::super::pixel::PixelFormat;
use super::{deflate_sync, enc, put_rect_header, ZStream};
use crate::display::{png, Rect, Surface};

pub const FILL: u8 = 0x80;
pub const JPEG: u8 = 0x90;
pub const PNG: u8 = 0xa0;
pub const EXPLICIT_FILTER: u8 = 0x40;
pub const FILTER_PALETTE: u8 = 1;
/// Data shorter than this is sent as is, without length or compression.
pub const MIN_TO_COMPRESS: usize = 12;
/// Largest sub-rectangle (pixels) and width, as QEMU's Tight encoder (and the spec's
/// limit of 2048 pixels per row for the basic compression).
const MAX_AREA: u32 = 65536;
const MAX_WIDTH: u32 = 2048;

/// Stream ids: 0 full colour, 1 two-colour palette, 2 larger palettes.
const STREAM_COPY: usize = 0;
const STREAM_MONO: usize = 1;
const STREAM_INDEXED: usize = 2;

/// True when TPIXELs are 3 bytes (R, G, B).
pub fn tpixel_is_rgb(pf: &PixelFormat) -> bool {
    pf.bpp == 32 && pf.depth == 24 && pf.red_max == 255 && pf.green_max == 255 && pf.blue_max == 255
}

fn put_tpixel(pf: &PixelFormat, out: &mut Vec<u8>, p: u32) {
    if tpixel_is_rgb(pf) {
        let v = pf.convert(p);
        out.push((v >> pf.red_shift) as u8);
        out.push((v >> pf.green_shift) as u8);
        out.push((v >> pf.blue_shift) as u8);
    } else {
        pf.put(out, p);
    }
}

pub fn put_compact_len(out: &mut Vec<u8>, n: usize) {
    let mut b = (n & 0x7f) as u8;
    if n > 0x7f {
        b |= 0x80;
        out.push(b);
        let mut b = ((n >> 7) & 0x7f) as u8;
        if n > 0x3fff {
            b |= 0x80;
            out.push(b);
            out.push((n >> 14) as u8);
        } else {
            out.push(b);
        }
    } else {
        out.push(b);
    }
}

fn put_data(streams: &mut [ZStream; 4], stream: usize, data: &[u8], out: &mut Vec<u8>) {
    if data.len() < MIN_TO_COMPRESS {
        out.extend_from_slice(data);
        return;
    }
    let mut z = Vec::new();
    deflate_sync(streams[stream].get(), data, &mut z);
    put_compact_len(out, z.len());
    out.extend_from_slice(&z);
}

fn rgb_of(px: &[u32]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(px.len() * 3);
    for p in px {
        rgb.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, *p as u8]);
    }
    rgb
}

/// JPEG quality for the client's level 0..9.
fn jpeg_quality(level: u32) -> u8 {
    const Q: [u8; 10] = [15, 29, 41, 42, 62, 77, 79, 86, 92, 100];
    Q[level.min(9) as usize]
}

#[allow(clippy::too_many_arguments)]
pub fn encode(
    streams: &mut [ZStream; 4],
    _level: u32,
    jpeg: Option<u32>,
    png_mode: bool,
    s: &Surface,
    r: Rect,
    pf: &PixelFormat,
    out: &mut Vec<u8>,
) -> u16 {
    let encoding = if png_mode { enc::TIGHT_PNG } else { enc::TIGHT };
    let mut n = 0u16;
    // Sub-rectangles as wide as allowed (up to MAX_WIDTH) and up to MAX_AREA pixels, as
    // QEMU cuts them: fewer headers and longer runs for zlib than square tiles.
    let max_w = r.w.clamp(1, MAX_WIDTH);
    let max_h = (MAX_AREA / max_w).max(1);
    let mut ty = r.y;
    while ty < r.y + r.h {
        let th = (r.y + r.h - ty).min(max_h);
        let mut tx = r.x;
        while tx < r.x + r.w {
            let tw = (r.x + r.w - tx).min(max_w);
            let tile = Rect::new(tx, ty, tw, th);
            put_rect_header(out, tile, encoding);
            encode_one(streams, jpeg, png_mode, &s.extract(tile), tile, pf, out);
            n += 1;
            tx += tw;
        }
        ty += th;
    }
    n
}

fn encode_one(
    streams: &mut [ZStream; 4],
    jpeg: Option<u32>,
    png_mode: bool,
    px: &[u32],
    r: Rect,
    pf: &PixelFormat,
    out: &mut Vec<u8>,
) {
    let mut palette: Vec<u32> = Vec::new();
    let mut index: HashMap<u32, u8> = HashMap::new();
    for &p in px {
        if let std::collections::hash_map::Entry::Vacant(v) = index.entry(p) {
            if palette.len() == 256 {
                palette.push(p); // marks "too many"
                break;
            }
            v.insert(palette.len() as u8);
            palette.push(p);
        }
    }
    if palette.len() == 1 {
        out.push(FILL);
        put_tpixel(pf, out, palette[0]);
        return;
    }
    if png_mode {
        let data = png::encode_rgb(r.w, r.h, &rgb_of(px), 6);
        out.push(PNG);
        put_compact_len(out, data.len());
        out.extend_from_slice(&data);
        return;
    }
    let many = palette.len() > 256 || palette.len() * 4 > px.len();
    if let (Some(q), true) = (jpeg, many && r.w >= 8 && r.h >= 8) {
        let mut data = Vec::new();
        let e = jpeg_encoder::Encoder::new(&mut data, jpeg_quality(q));
        if e.encode(
            &rgb_of(px),
            r.w as u16,
            r.h as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .is_ok()
        {
            out.push(JPEG);
            put_compact_len(out, data.len());
            out.extend_from_slice(&data);
            return;
        }
    }
    if palette.len() == 2 {
        out.push(EXPLICIT_FILTER | ((STREAM_MONO as u8) << 4));
        out.push(FILTER_PALETTE);
        out.push(1);
        put_tpixel(pf, out, palette[0]);
        put_tpixel(pf, out, palette[1]);
        let mut data = Vec::with_capacity(r.h as usize * (r.w as usize).div_ceil(8));
        for row in px.chunks(r.w as usize) {
            let mut byte = 0u8;
            let mut nbits = 0;
            for p in row {
                byte = (byte << 1) | index[p];
                nbits += 1;
                if nbits == 8 {
                    data.push(byte);
                    byte = 0;
                    nbits = 0;
                }
            }
            if nbits > 0 {
                data.push(byte << (8 - nbits));
            }
        }
        put_data(streams, STREAM_MONO, &data, out);
    } else if !many {
        out.push(EXPLICIT_FILTER | ((STREAM_INDEXED as u8) << 4));
        out.push(FILTER_PALETTE);
        out.push((palette.len() - 1) as u8);
        for &p in &palette {
            put_tpixel(pf, out, p);
        }
        let data: Vec<u8> = px.iter().map(|p| index[p]).collect();
        put_data(streams, STREAM_INDEXED, &data, out);
    } else {
        out.push((STREAM_COPY as u8) << 4);
        let mut data = Vec::with_capacity(px.len() * 3);
        for &p in px {
            put_tpixel(pf, &mut data, p);
        }
        put_data(streams, STREAM_COPY, &data, out);
    }
}
