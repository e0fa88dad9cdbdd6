//! Framebuffer encodings (RFB 3.8 §7.7): the rectangle payloads a client can ask for.
//!
//! [`Encoder`] owns one client's compression state (the persistent zlib streams of Zlib,
//! ZRLE and Tight, whose dictionaries carry over from one update to the next, so one
//! encoder per connection) and turns a rectangle of the client's shadow surface into
//! bytes: the rectangle header(s) plus payload. Every encoding decodes to exactly the
//! pixels Raw would give (except Tight JPEG, which only `lossy=on` allows); the unit tests
//! in `decode.rs` check that for every encoding and several pixel formats.

mod hextile;
mod tight;
mod zrle;

#[cfg(test)]
pub(crate) mod decode;

use flate2::{Compress, Compression, FlushCompress};

use super::pixel::PixelFormat;
use crate::display::{Rect, Surface};

/// Encoding numbers (RFB 3.8 §7.7 and the community registry).
pub mod enc {
    pub const RAW: i32 = 0;
    pub const COPY_RECT: i32 = 1;
    pub const HEXTILE: i32 = 5;
    pub const ZLIB: i32 = 6;
    pub const TIGHT: i32 = 7;
    pub const ZRLE: i32 = 16;
    pub const TIGHT_PNG: i32 = -260;
    pub const DESKTOP_SIZE: i32 = -223;
    pub const CURSOR: i32 = -239;
    pub const POINTER_TYPE_CHANGE: i32 = -257;
    pub const QEMU_EXT_KEY_EVENT: i32 = -258;
    pub const QEMU_AUDIO: i32 = -259;
    pub const LED_STATE: i32 = -261;
    pub const EXTENDED_DESKTOP_SIZE: i32 = -308;
    pub const LAST_RECT: i32 = -224;
    /// -32..=-23: Tight JPEG quality 0..9.
    pub const JPEG_QUALITY_0: i32 = -32;
    /// -256..=-247: compression level 0..9.
    pub const COMPRESS_LEVEL_0: i32 = -256;
}

/// Which payload encoding to use for pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelEncoding {
    Raw,
    Hextile,
    Zlib,
    Zrle,
    Tight,
    TightPng,
}

impl PixelEncoding {
    /// From an encoding number, for those troupe can send.
    pub fn from_number(n: i32) -> Option<Self> {
        Some(match n {
            enc::RAW => Self::Raw,
            enc::HEXTILE => Self::Hextile,
            enc::ZLIB => Self::Zlib,
            enc::ZRLE => Self::Zrle,
            enc::TIGHT => Self::Tight,
            enc::TIGHT_PNG => Self::TightPng,
            _ => return None,
        })
    }

    pub fn number(self) -> i32 {
        match self {
            Self::Raw => enc::RAW,
            Self::Hextile => enc::HEXTILE,
            Self::Zlib => enc::ZLIB,
            Self::Zrle => enc::ZRLE,
            Self::Tight => enc::TIGHT,
            Self::TightPng => enc::TIGHT_PNG,
        }
    }
}

/// Append a rectangle header.
pub fn put_rect_header(out: &mut Vec<u8>, r: Rect, encoding: i32) {
    out.extend_from_slice(&(r.x as u16).to_be_bytes());
    out.extend_from_slice(&(r.y as u16).to_be_bytes());
    out.extend_from_slice(&(r.w as u16).to_be_bytes());
    out.extend_from_slice(&(r.h as u16).to_be_bytes());
    out.extend_from_slice(&encoding.to_be_bytes());
}

/// Deflate `input` into `out` and end with a sync flush, so the client can decode
/// everything sent so far while the stream goes on.
pub(crate) fn deflate_sync(z: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    let mut consumed = 0usize;
    out.reserve(input.len() / 2 + 64);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let before = z.total_in();
        if z.compress_vec(&input[consumed..], out, FlushCompress::Sync)
            .is_err()
        {
            // Cannot happen with valid state; the client will see a short stream.
            return;
        }
        consumed += (z.total_in() - before) as usize;
        if consumed >= input.len() && out.len() < out.capacity() {
            return;
        }
    }
}

/// A persistent zlib stream, made the first time an update needs it: a deflate stream holds
/// about 256 KiB, and a client uses at most the ones of its encoding (QEMU makes them lazily
/// too), so a Raw or Hextile client carries none.
#[derive(Default)]
pub struct ZStream(Option<Compress>);

impl ZStream {
    /// The stream, created at level 6 on first use (the level never changes midway: the
    /// client's inflater shares its dictionary).
    pub fn get(&mut self) -> &mut Compress {
        self.0
            .get_or_insert_with(|| Compress::new(Compression::new(6), true))
    }
}

/// One client's encoder state.
pub struct Encoder {
    zlib: ZStream,
    zrle: ZStream,
    tight: [ZStream; 4],
    /// Compression level 0-9 (CompressLevel pseudo-encoding), default 6.
    pub level: u32,
    /// JPEG quality level 0-9 if the client sent one (Tight JPEG needs it).
    pub jpeg_quality: Option<u32>,
    /// `lossy=on`: JPEG allowed.
    pub lossy: bool,
}

impl Encoder {
    pub fn new(lossy: bool) -> Self {
        Self {
            zlib: ZStream::default(),
            zrle: ZStream::default(),
            tight: Default::default(),
            level: 6,
            jpeg_quality: None,
            lossy,
        }
    }

    /// Encode `r` of `s` with `encoding`, appending rectangles to `out`; returns how many
    /// rectangles were written.
    pub fn encode(
        &mut self,
        encoding: PixelEncoding,
        s: &Surface,
        r: Rect,
        pf: &PixelFormat,
        out: &mut Vec<u8>,
    ) -> u16 {
        if r.is_empty() {
            return 0;
        }
        match encoding {
            PixelEncoding::Raw => {
                put_rect_header(out, r, enc::RAW);
                put_raw(s, r, pf, out);
                1
            }
            PixelEncoding::Hextile => {
                put_rect_header(out, r, enc::HEXTILE);
                hextile::encode(s, r, pf, out);
                1
            }
            PixelEncoding::Zlib => {
                put_rect_header(out, r, enc::ZLIB);
                let mut raw = Vec::with_capacity(r.area() as usize * pf.bytes_per_pixel());
                put_raw(s, r, pf, &mut raw);
                let mut z = Vec::new();
                deflate_sync(self.zlib.get(), &raw, &mut z);
                out.extend_from_slice(&(z.len() as u32).to_be_bytes());
                out.extend_from_slice(&z);
                1
            }
            PixelEncoding::Zrle => {
                put_rect_header(out, r, enc::ZRLE);
                let raw = zrle::encode(s, r, pf);
                let mut z = Vec::new();
                deflate_sync(self.zrle.get(), &raw, &mut z);
                out.extend_from_slice(&(z.len() as u32).to_be_bytes());
                out.extend_from_slice(&z);
                1
            }
            PixelEncoding::Tight | PixelEncoding::TightPng => {
                let png = encoding == PixelEncoding::TightPng;
                let jpeg = if self.lossy { self.jpeg_quality } else { None };
                tight::encode(&mut self.tight, self.level, jpeg, png, s, r, pf, out)
            }
        }
    }
}

/// Raw pixels of `r` in the client's format.
pub fn put_raw(s: &Surface, r: Rect, pf: &PixelFormat, out: &mut Vec<u8>) {
    out.reserve(r.area() as usize * pf.bytes_per_pixel());
    for y in r.y..r.y + r.h {
        for &p in &s.row(y)[r.x as usize..(r.x + r.w) as usize] {
            pf.put(out, p);
        }
    }
}
