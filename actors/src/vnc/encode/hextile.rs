//! Hextile (RFB 3.8 §7.7.4): 16x16 tiles, each raw or a background plus subrectangles.

use super::super::pixel::PixelFormat;
use crate::display::{Rect, Surface};

pub const RAW: u8 = 1;
pub const BACKGROUND: u8 = 2;
pub const FOREGROUND: u8 = 4;
pub const ANY_SUBRECTS: u8 = 8;
pub const SUBRECTS_COLOURED: u8 = 16;

/// A subrectangle: colour, x, y, w, h.
type Subrect = (u32, u8, u8, u8, u8);

/// Subrectangles covering every non-background pixel of a tile: (colour, x, y, w, h).
fn subrects(px: &[u32], w: usize, h: usize, bg: u32, limit: usize) -> Option<Vec<Subrect>> {
    let mut covered = [false; 256];
    let mut out = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let c = px[y * w + x];
            if c == bg || covered[y * w + x] {
                continue;
            }
            let mut rw = 1;
            while x + rw < w && px[y * w + x + rw] == c && !covered[y * w + x + rw] {
                rw += 1;
            }
            let mut rh = 1;
            'grow: while y + rh < h {
                for i in 0..rw {
                    let j = (y + rh) * w + x + i;
                    if px[j] != c || covered[j] {
                        break 'grow;
                    }
                }
                rh += 1;
            }
            for yy in y..y + rh {
                for xx in x..x + rw {
                    covered[yy * w + xx] = true;
                }
            }
            out.push((c, x as u8, y as u8, rw as u8, rh as u8));
            if out.len() > limit {
                return None;
            }
        }
    }
    Some(out)
}

pub fn encode(s: &Surface, r: Rect, pf: &PixelFormat, out: &mut Vec<u8>) {
    let bpp = pf.bytes_per_pixel();
    // Background of the previous tile, if the client knows it (never after a raw tile).
    let mut last_bg: Option<u32> = None;
    let mut ty = r.y;
    while ty < r.y + r.h {
        let th = (r.y + r.h - ty).min(16);
        let mut tx = r.x;
        while tx < r.x + r.w {
            let tw = (r.x + r.w - tx).min(16);
            let tile = Rect::new(tx, ty, tw, th);
            let px = s.extract(tile);
            let (w, h) = (tw as usize, th as usize);
            // Most frequent colour becomes the background.
            let mut counts: Vec<(u32, u32)> = Vec::new();
            for &p in &px {
                match counts.iter_mut().find(|(c, _)| *c == p) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((p, 1)),
                }
            }
            let bg = counts
                .iter()
                .max_by_key(|(_, n)| *n)
                .map(|(c, _)| *c)
                .unwrap_or(0);
            let raw_size = 1 + w * h * bpp;
            let limit = 255;
            let rects = if counts.len() == 1 {
                Some(Vec::new())
            } else {
                subrects(&px, w, h, bg, limit)
            };
            let mono = counts.len() == 2;
            let bg_bytes = if last_bg == Some(bg) { 0 } else { bpp };
            let size = rects.as_ref().map(|rs| {
                if rs.is_empty() {
                    1 + bg_bytes
                } else if mono {
                    1 + bg_bytes + bpp + 1 + 2 * rs.len()
                } else {
                    1 + bg_bytes + 1 + (bpp + 2) * rs.len()
                }
            });
            match (rects, size) {
                (Some(rs), Some(size)) if size < raw_size => {
                    let mut mask = 0u8;
                    if last_bg != Some(bg) {
                        mask |= BACKGROUND;
                    }
                    if !rs.is_empty() {
                        mask |= ANY_SUBRECTS;
                        mask |= if mono { FOREGROUND } else { SUBRECTS_COLOURED };
                    }
                    out.push(mask);
                    if mask & BACKGROUND != 0 {
                        pf.put(out, bg);
                    }
                    if !rs.is_empty() {
                        if mono {
                            pf.put(out, rs[0].0);
                        }
                        out.push(rs.len() as u8);
                        for (c, x, y, w, h) in rs {
                            if !mono {
                                pf.put(out, c);
                            }
                            out.push((x << 4) | y);
                            out.push(((w - 1) << 4) | (h - 1));
                        }
                    }
                    last_bg = Some(bg);
                }
                _ => {
                    out.push(RAW);
                    for p in px {
                        pf.put(out, p);
                    }
                    last_bg = None;
                }
            }
            tx += tw;
        }
        ty += th;
    }
}
