//! The console surface: a width x height array of 32-bit XRGB pixels (`0x00RRGGBB`),
//! rectangles, and the 16x16-tile dirty map that update tracking is built on.

/// Largest surface side accepted (RFB sizes are 16-bit; VBE tops out well below).
pub const MAX_SIDE: u32 = 8192;

/// Side of one dirty-tracking tile, in pixels (QEMU's VNC uses 16 as well).
pub const TILE: u32 = 16;

/// A rectangle in surface coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub const fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Self { x, y, w, h }
    }

    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// The part of `self` inside a `width` x `height` surface.
    pub fn clip(&self, width: u32, height: u32) -> Rect {
        let x = self.x.min(width);
        let y = self.y.min(height);
        let r = self.x.saturating_add(self.w).min(width);
        let b = self.y.saturating_add(self.h).min(height);
        Rect::new(x, y, r - x, b - y)
    }

    /// The intersection of two rectangles (possibly empty).
    pub fn intersect(&self, o: &Rect) -> Rect {
        let x = self.x.max(o.x);
        let y = self.y.max(o.y);
        let r = (self.x + self.w).min(o.x + o.w);
        let b = (self.y + self.h).min(o.y + o.h);
        if r <= x || b <= y {
            Rect::default()
        } else {
            Rect::new(x, y, r - x, b - y)
        }
    }

    /// Number of pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }
}

/// A cursor image: XRGB pixels plus a 1-bit-per-pixel visibility mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub width: u32,
    pub height: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    /// `width * height` XRGB pixels.
    pub pixels: Vec<u32>,
    /// `width * height` visibility flags.
    pub mask: Vec<bool>,
}

/// Keyboard LEDs as the guest set them (RFB LED state bits: scroll 0, num 1, caps 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leds {
    pub scroll_lock: bool,
    pub num_lock: bool,
    pub caps_lock: bool,
}

impl Leds {
    /// The RFB/QEMU LED state byte.
    pub fn bits(&self) -> u8 {
        u8::from(self.scroll_lock)
            | (u8::from(self.num_lock) << 1)
            | (u8::from(self.caps_lock) << 2)
    }
}

/// Pixels of the console, row-major, stride = width.
#[derive(Clone, PartialEq, Eq)]
pub struct Surface {
    width: u32,
    height: u32,
    pixels: Vec<u32>,
}

impl std::fmt::Debug for Surface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Surface({}x{})", self.width, self.height)
    }
}

impl Surface {
    /// A black surface. Sides are clamped to `1..=MAX_SIDE` by the caller's checks.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; width as usize * height as usize],
        }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn rect(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    pub fn pixels_mut(&mut self) -> &mut [u32] {
        &mut self.pixels
    }

    /// One row.
    pub fn row(&self, y: u32) -> &[u32] {
        let w = self.width as usize;
        &self.pixels[y as usize * w..(y as usize + 1) * w]
    }

    /// One row, writable.
    pub fn row_mut(&mut self, y: u32) -> &mut [u32] {
        let w = self.width as usize;
        &mut self.pixels[y as usize * w..(y as usize + 1) * w]
    }

    /// The pixel at (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        self.pixels[y as usize * self.width as usize + x as usize]
    }

    /// Fill a rectangle (clipped) with one colour.
    pub fn fill(&mut self, r: Rect, colour: u32) {
        let r = r.clip(self.width, self.height);
        for y in r.y..r.y + r.h {
            self.row_mut(y)[r.x as usize..(r.x + r.w) as usize].fill(colour);
        }
    }

    /// Copy `r` (clipped) from `src`, whose rows are `stride` pixels apart and whose first
    /// pixel is the rectangle's top-left corner.
    pub fn blit(&mut self, r: Rect, src: &[u32], stride: usize) {
        let c = r.clip(self.width, self.height);
        for dy in 0..c.h {
            let s = (dy + c.y - r.y) as usize * stride + (c.x - r.x) as usize;
            let Some(line) = src.get(s..s + c.w as usize) else {
                return;
            };
            let y = c.y + dy;
            self.row_mut(y)[c.x as usize..(c.x + c.w) as usize].copy_from_slice(line);
        }
    }

    /// Copy the pixels of `r` (already inside both surfaces) from `src`; returns whether
    /// anything differed.
    pub(crate) fn sync_rect_from(&mut self, src: &Surface, r: Rect) -> bool {
        let mut changed = false;
        for y in r.y..r.y + r.h {
            let range = r.x as usize..(r.x + r.w) as usize;
            let s = &src.row(y)[range.clone()];
            let d = &mut self.row_mut(y)[range];
            if s != d {
                d.copy_from_slice(s);
                changed = true;
            }
        }
        changed
    }

    /// The pixels of `r` (clipped) as a packed row-major vector.
    pub fn extract(&self, r: Rect) -> Vec<u32> {
        let r = r.clip(self.width, self.height);
        let mut out = Vec::with_capacity(r.area() as usize);
        for y in r.y..r.y + r.h {
            out.extend_from_slice(&self.row(y)[r.x as usize..(r.x + r.w) as usize]);
        }
        out
    }
}

/// One bit per 16x16 tile of a surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileMap {
    width: u32,
    height: u32,
    cols: u32,
    rows: u32,
    bits: Vec<bool>,
}

impl TileMap {
    /// An empty map for a `width` x `height` surface.
    pub fn new(width: u32, height: u32) -> Self {
        let cols = width.div_ceil(TILE);
        let rows = height.div_ceil(TILE);
        Self {
            width,
            height,
            cols,
            rows,
            bits: vec![false; cols as usize * rows as usize],
        }
    }

    /// The surface size this map covers.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Mark every tile that `r` touches.
    pub fn mark(&mut self, r: Rect) {
        let r = r.clip(self.width, self.height);
        if r.is_empty() {
            return;
        }
        for ty in r.y / TILE..(r.y + r.h).div_ceil(TILE) {
            for tx in r.x / TILE..(r.x + r.w).div_ceil(TILE) {
                self.bits[(ty * self.cols + tx) as usize] = true;
            }
        }
    }

    pub fn mark_all(&mut self) {
        self.bits.fill(true);
    }

    pub fn clear(&mut self) {
        self.bits.fill(false);
    }

    pub fn is_empty(&self) -> bool {
        !self.bits.iter().any(|b| *b)
    }

    /// Tiles marked, as (column, row).
    pub fn tiles(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.bits
            .iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| (i as u32 % self.cols, i as u32 / self.cols))
    }

    pub fn get(&self, tx: u32, ty: u32) -> bool {
        self.bits[(ty * self.cols + tx) as usize]
    }

    pub fn set(&mut self, tx: u32, ty: u32, v: bool) {
        self.bits[(ty * self.cols + tx) as usize] = v;
    }

    /// The pixel rectangle of tile (tx, ty), clipped to the surface.
    pub fn tile_rect(&self, tx: u32, ty: u32) -> Rect {
        Rect::new(tx * TILE, ty * TILE, TILE, TILE).clip(self.width, self.height)
    }

    /// Add every tile of `other` (same size) to `self`.
    pub fn merge(&mut self, other: &TileMap) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= *b;
        }
    }

    /// Take the marked tiles inside `area` out of the map and return them as few
    /// rectangles: runs of tiles in a tile row, grown downwards while the run below is
    /// identical.
    pub fn take_rects(&mut self, area: Rect) -> Vec<Rect> {
        let area = area.clip(self.width, self.height);
        if area.is_empty() {
            return Vec::new();
        }
        let (tx0, ty0) = (area.x / TILE, area.y / TILE);
        let (tx1, ty1) = (
            (area.x + area.w).div_ceil(TILE),
            (area.y + area.h).div_ceil(TILE),
        );
        // Runs per tile row, then merged vertically with the row above.
        let mut out: Vec<Rect> = Vec::new();
        let mut open: Vec<(u32, u32, usize)> = Vec::new(); // (tx start, tx end, index in out)
        for ty in ty0..ty1 {
            let mut runs = Vec::new();
            let mut tx = tx0;
            while tx < tx1 {
                if self.get(tx, ty) {
                    let start = tx;
                    while tx < tx1 && self.get(tx, ty) {
                        self.set(tx, ty, false);
                        tx += 1;
                    }
                    runs.push((start, tx));
                } else {
                    tx += 1;
                }
            }
            let mut next_open = Vec::new();
            for (s, e) in runs {
                let px = Rect::new(s * TILE, ty * TILE, (e - s) * TILE, TILE);
                if let Some(&(_, _, i)) = open.iter().find(|(os, oe, _)| *os == s && *oe == e) {
                    out[i].h += TILE;
                    next_open.push((s, e, i));
                } else {
                    out.push(px);
                    next_open.push((s, e, out.len() - 1));
                }
            }
            open = next_open;
        }
        out.into_iter()
            .map(|r| r.clip(self.width, self.height).intersect(&area))
            .filter(|r| !r.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rect_clip_and_intersect() {
        assert_eq!(
            Rect::new(10, 10, 100, 100).clip(50, 60),
            Rect::new(10, 10, 40, 50)
        );
        assert!(Rect::new(100, 0, 5, 5).clip(50, 50).is_empty());
        assert_eq!(
            Rect::new(0, 0, 10, 10).intersect(&Rect::new(5, 5, 10, 10)),
            Rect::new(5, 5, 5, 5)
        );
        assert!(Rect::new(0, 0, 5, 5)
            .intersect(&Rect::new(5, 5, 1, 1))
            .is_empty());
    }

    #[test]
    fn tilemap_merges_runs_into_rectangles() {
        let mut m = TileMap::new(100, 70);
        m.mark(Rect::new(0, 0, 40, 40)); // tiles 0..3 x 0..3
        m.mark(Rect::new(97, 65, 1, 1)); // last tile (col 6, row 4)
        let rects = m.take_rects(Rect::new(0, 0, 100, 70));
        assert_eq!(
            rects,
            vec![Rect::new(0, 0, 48, 48), Rect::new(96, 64, 4, 6)]
        );
        assert!(m.is_empty());
    }

    #[test]
    fn take_rects_leaves_tiles_outside_the_area() {
        let mut m = TileMap::new(64, 64);
        m.mark_all();
        let r = m.take_rects(Rect::new(0, 0, 32, 64));
        assert_eq!(r, vec![Rect::new(0, 0, 32, 64)]);
        assert_eq!(m.tiles().count(), 8);
    }

    #[test]
    fn blit_clips_and_sync_reports_change() {
        let mut s = Surface::new(8, 8);
        let src = vec![7u32; 16];
        s.blit(Rect::new(6, 6, 4, 4), &src, 4);
        assert_eq!(s.pixel(7, 7), 7);
        assert_eq!(s.pixel(5, 5), 0);
        let mut t = Surface::new(8, 8);
        assert!(t.sync_rect_from(&s, Rect::new(0, 0, 8, 8)));
        assert!(!t.sync_rect_from(&s, Rect::new(0, 0, 8, 8)));
        assert_eq!(t, s);
    }
}
