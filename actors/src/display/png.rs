//! A minimal PNG writer (8-bit RGB, no interlace, filter 0 "None" or 1 "Sub" per row)
//! for `screendump -f png` and the VNC TightPNG encoding. PNG spec (ISO/IEC 15948)
//! §5 chunk layout, §11.2 IHDR, §9 filters.

use std::io::Write;

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Encode `rgb` (`width * height * 3` bytes) as a PNG file; `level` is the zlib level 0-9.
pub fn encode_rgb(width: u32, height: u32, rgb: &[u8], level: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgb.len() / 4 + 64);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // depth 8, colour type 2 (RGB)
    chunk(&mut out, b"IHDR", &ihdr);
    let stride = width as usize * 3;
    let mut raw = Vec::with_capacity((stride + 1) * height as usize);
    for row in rgb.chunks(stride.max(1)).take(height as usize) {
        // Filter "Sub" (1): each byte minus the byte one pixel to the left.
        raw.push(1);
        for (i, b) in row.iter().enumerate() {
            let left = if i >= 3 { row[i - 3] } else { 0 };
            raw.push(b.wrapping_sub(left));
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level.min(9)));
    // Writing to a Vec cannot fail.
    let _ = z.write_all(&raw);
    let idat = z.finish().unwrap_or_default();
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}
