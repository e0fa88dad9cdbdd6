//! ZRLE (RFB 3.8 §7.7.6): 64x64 tiles, each raw, solid, packed palette, plain RLE or
//! palette RLE, whichever is smallest; pixels as CPIXELs; the whole zlib-compressed.

use std::collections::HashMap;

use super::super::pixel::PixelFormat;
use crate::display::{Rect, Surface};

fn put_run_length(out: &mut Vec<u8>, len: usize) {
    let mut n = len - 1;
    while n >= 255 {
        out.push(255);
        n -= 255;
    }
    out.push(n as u8);
}

fn run_length_bytes(len: usize) -> usize {
    (len - 1) / 255 + 1
}

/// Uncompressed ZRLE data for `r`.
pub fn encode(s: &Surface, r: Rect, pf: &PixelFormat) -> Vec<u8> {
    let cp = pf.cpixel_range();
    let cpb = cp.as_ref().map_or(pf.bytes_per_pixel(), |r| r.len());
    let mut out = Vec::new();
    let mut ty = r.y;
    while ty < r.y + r.h {
        let th = (r.y + r.h - ty).min(64);
        let mut tx = r.x;
        while tx < r.x + r.w {
            let tw = (r.x + r.w - tx).min(64);
            let px = s.extract(Rect::new(tx, ty, tw, th));
            // The client sees converted pixels: two surface colours may become one.
            let px: Vec<u32> = px.iter().map(|p| pf.convert(*p)).collect();
            encode_tile(&px, tw as usize, th as usize, pf, &cp, cpb, &mut out);
            tx += tw;
        }
        ty += th;
    }
    out
}

/// Put a converted pixel value as a CPIXEL.
fn put_value_c(pf: &PixelFormat, cp: &Option<std::ops::Range<usize>>, out: &mut Vec<u8>, v: u32) {
    match cp {
        Some(range) => {
            let mut b = Vec::with_capacity(4);
            pf.put_value(&mut b, v);
            out.extend_from_slice(&b[range.clone()]);
        }
        None => pf.put_value(out, v),
    }
}

fn encode_tile(
    px: &[u32],
    w: usize,
    h: usize,
    pf: &PixelFormat,
    cp: &Option<std::ops::Range<usize>>,
    cpb: usize,
    out: &mut Vec<u8>,
) {
    let mut palette: Vec<u32> = Vec::new();
    let mut index: HashMap<u32, u8> = HashMap::new();
    let mut run_bytes = 0usize;
    let mut prun_bytes = 0usize;
    let mut i = 0;
    while i < px.len() {
        let c = px[i];
        let mut j = i + 1;
        while j < px.len() && px[j] == c {
            j += 1;
        }
        let len = j - i;
        run_bytes += cpb + run_length_bytes(len);
        prun_bytes += if len == 1 {
            1
        } else {
            1 + run_length_bytes(len)
        };
        if palette.len() <= 127 && !index.contains_key(&c) {
            index.insert(c, palette.len() as u8);
            palette.push(c);
        }
        i = j;
    }
    if palette.len() == 1 {
        out.push(1);
        put_value_c(pf, cp, out, palette[0]);
        return;
    }
    let raw = w * h * cpb;
    let plain_rle = run_bytes;
    let n = palette.len();
    let pal_rle = if n <= 127 {
        n * cpb + prun_bytes
    } else {
        usize::MAX
    };
    let bits = match n {
        2 => 1,
        3..=4 => 2,
        5..=16 => 4,
        _ => 0,
    };
    let packed = if bits > 0 {
        n * cpb + h * (w * bits).div_ceil(8)
    } else {
        usize::MAX
    };
    let best = raw.min(plain_rle).min(pal_rle).min(packed);
    if best == raw {
        out.push(0);
        for &p in px {
            put_value_c(pf, cp, out, p);
        }
    } else if best == packed {
        out.push(n as u8);
        for &p in &palette {
            put_value_c(pf, cp, out, p);
        }
        for row in px.chunks(w) {
            let mut byte = 0u8;
            let mut nbits = 0;
            for p in row {
                byte = (byte << bits) | index[p];
                nbits += bits;
                if nbits == 8 {
                    out.push(byte);
                    byte = 0;
                    nbits = 0;
                }
            }
            if nbits > 0 {
                out.push(byte << (8 - nbits));
            }
        }
    } else if best == pal_rle {
        out.push(128 + n as u8);
        for &p in &palette {
            put_value_c(pf, cp, out, p);
        }
        let mut i = 0;
        while i < px.len() {
            let c = px[i];
            let mut j = i + 1;
            while j < px.len() && px[j] == c {
                j += 1;
            }
            let len = j - i;
            if len == 1 {
                out.push(index[&c]);
            } else {
                out.push(index[&c] | 128);
                put_run_length(out, len);
            }
            i = j;
        }
    } else {
        out.push(128);
        let mut i = 0;
        while i < px.len() {
            let c = px[i];
            let mut j = i + 1;
            while j < px.len() && px[j] == c {
                j += 1;
            }
            put_value_c(pf, cp, out, c);
            put_run_length(out, j - i);
            i = j;
        }
    }
}
