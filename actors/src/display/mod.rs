//! The display: the guest console's current surface and who is looking at it.
//!
//! Data path: the display producer (the VGA host, or the synthetic [`testpattern`] until
//! it lands) writes pixels through a [`DisplayWriter`] — `resize`, `update` (copy a
//! rectangle in), `draw` (render in place and report damage), `set_cursor`, `set_leds`.
//! Every write marks the touched 16x16 tiles in each subscriber's own dirty map and bumps
//! a generation on a `tokio::sync::watch`, which coalesces: a subscriber that is busy
//! (a slow VNC client) simply finds more tiles marked when it comes back. The producer
//! never waits for a consumer beyond the short surface lock that a consumer holds while
//! copying the tiles it was told about; nothing is queued per frame.
//!
//! Consumers (VNC clients, `screendump`) hold a [`DisplayHandle`]: `subscribe()` gives a
//! [`DisplaySubscriber`] whose `sync` brings a private shadow copy up to date and reports
//! the tiles that really changed (pixels are compared, so a producer that re-renders the
//! whole screen costs the network nothing); `snapshot()` copies the surface;
//! `screendump()` writes PPM (P6) or PNG like QEMU's monitor command.
//!
//! Input goes the other way (VNC → guest devices): see [`input`] and [`keycodes`].

pub mod console;
pub mod curses;
pub mod input;
pub mod keycodes;
pub mod keymap;
pub mod png;
mod surface;
pub mod testpattern;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

pub use surface::{Cursor, Leds, Rect, Surface, TileMap, MAX_SIDE, TILE};

/// Ways a display operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// A surface size of zero or beyond what anything can show.
    #[error("display size {0}x{1} is out of range (1..={MAX_SIDE} per side)")]
    BadSize(u32, u32),
    /// `screendump` could not write its file.
    #[error("screendump: cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What `screendump` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// Binary PPM (`P6`), QEMU's default.
    Ppm,
    /// PNG, 8-bit RGB (`screendump -f png`).
    Png,
}

/// One consumer's view of what changed since it last looked.
struct SubscriberSlot {
    id: u64,
    /// Tiles of `server` that changed since this subscriber last synced.
    changed: TileMap,
}

struct Inner {
    surface: Surface,
    /// The copy of `surface` subscribers read from, as of the last compare: one for all of
    /// them (as QEMU's VNC server surface), so a client costs its tile maps, not a frame.
    /// Subscribers hold it between syncs; a compare that finds changes copies it first if
    /// one still does (at most one extra copy, not one per subscriber).
    server: Arc<Surface>,
    /// Tiles written since the last compare (coarse: the producer's damage).
    dirty: TileMap,
    /// Bumped on every resize.
    size_gen: u64,
    cursor: Option<Arc<Cursor>>,
    cursor_gen: u64,
    leds: Leds,
    subs: Vec<SubscriberSlot>,
    next_id: u64,
}

impl Inner {
    fn damage(&mut self, r: Rect) {
        self.dirty.mark(r);
    }

    /// Compare the damaged tiles with `server`, copy those whose pixels differ and mark
    /// them for every subscriber; after a resize, start `server` over from the surface.
    fn compare(&mut self) {
        let (w, h) = (self.surface.width(), self.surface.height());
        if self.server.width() != w || self.server.height() != h {
            self.server = Arc::new(self.surface.clone());
            self.dirty = TileMap::new(w, h);
            for s in &mut self.subs {
                s.changed = TileMap::new(w, h);
                s.changed.mark_all();
            }
            return;
        }
        if self.dirty.is_empty() {
            return;
        }
        let server = Arc::make_mut(&mut self.server);
        let tiles: Vec<(u32, u32)> = self.dirty.tiles().collect();
        for (tx, ty) in tiles {
            let r = self.dirty.tile_rect(tx, ty);
            if server.sync_rect_from(&self.surface, r) {
                for s in &mut self.subs {
                    s.changed.set(tx, ty, true);
                }
            }
        }
        self.dirty.clear();
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// A generation number; every change sends a new one.
    tx: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.tx.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// Create a display with a black `width` x `height` surface (QEMU starts at 640x480).
pub fn new_display(
    width: u32,
    height: u32,
) -> Result<(DisplayWriter, DisplayHandle), DisplayError> {
    check_size(width, height)?;
    let (tx, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            surface: Surface::new(width, height),
            server: Arc::new(Surface::new(width, height)),
            dirty: TileMap::new(width, height),
            size_gen: 0,
            cursor: None,
            cursor_gen: 0,
            leds: Leds::default(),
            subs: Vec::new(),
            next_id: 0,
        }),
        tx,
    });
    Ok((
        DisplayWriter {
            shared: shared.clone(),
        },
        DisplayHandle { shared },
    ))
}

fn check_size(w: u32, h: u32) -> Result<(), DisplayError> {
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(DisplayError::BadSize(w, h));
    }
    Ok(())
}

/// Rectangles a [`DisplayWriter::draw`] closure reports as changed.
#[derive(Debug, Default)]
pub struct Damage {
    rects: Vec<Rect>,
    all: bool,
}

impl Damage {
    /// `r` changed.
    pub fn add(&mut self, r: Rect) {
        if !self.all {
            self.rects.push(r);
        }
    }

    /// Everything may have changed.
    pub fn all(&mut self) {
        self.all = true;
        self.rects.clear();
    }
}

/// The producer side (the VGA host renders through this). Never blocks on consumers
/// beyond a short lock; every method is cheap to call at frame rate.
#[derive(Clone)]
pub struct DisplayWriter {
    shared: Arc<Shared>,
}

impl DisplayWriter {
    /// The guest changed mode: a new black surface of this size. Consumers see a resize
    /// (VNC sends DesktopSize right away).
    pub fn resize(&self, width: u32, height: u32) -> Result<(), DisplayError> {
        check_size(width, height)?;
        {
            let mut g = self.shared.lock();
            if g.surface.width() == width && g.surface.height() == height {
                g.surface.fill(Rect::new(0, 0, width, height), 0);
                g.damage(Rect::new(0, 0, width, height));
            } else {
                g.surface = Surface::new(width, height);
                g.size_gen += 1;
                // Blank at the new size: every tile to compare (the copy may have this size
                // from before).
                g.dirty = TileMap::new(width, height);
                g.dirty.mark_all();
            }
        }
        self.shared.notify();
        Ok(())
    }

    /// Copy pixels into `r`: `src` holds the rectangle's rows `stride` pixels apart.
    /// Parts outside the surface are ignored.
    pub fn update(&self, r: Rect, src: &[u32], stride: usize) {
        {
            let mut g = self.shared.lock();
            g.surface.blit(r, src, stride);
            g.damage(r);
        }
        self.shared.notify();
    }

    /// Render in place: `f` gets the surface and reports what it changed.
    pub fn draw<R>(&self, f: impl FnOnce(&mut Surface, &mut Damage) -> R) -> R {
        let mut damage = Damage::default();
        let out = {
            let mut g = self.shared.lock();
            let out = f(&mut g.surface, &mut damage);
            if damage.all {
                let r = g.surface.rect();
                g.damage(r);
            } else {
                for r in &damage.rects {
                    g.damage(*r);
                }
            }
            out
        };
        if damage.all || !damage.rects.is_empty() {
            self.shared.notify();
        }
        out
    }

    /// The whole surface may have changed (after a palette change, say).
    pub fn invalidate(&self) {
        self.draw(|_, d| d.all());
    }

    /// A new hardware cursor shape (None: no cursor image; the guest draws its own).
    pub fn set_cursor(&self, cursor: Option<Cursor>) {
        {
            let mut g = self.shared.lock();
            g.cursor = cursor.map(Arc::new);
            g.cursor_gen += 1;
        }
        self.shared.notify();
    }

    /// The guest's keyboard LEDs (from the i8042 host).
    pub fn set_leds(&self, leds: Leds) {
        {
            let mut g = self.shared.lock();
            if g.leds == leds {
                return;
            }
            g.leds = leds;
        }
        self.shared.notify();
    }

    /// Current size.
    pub fn size(&self) -> (u32, u32) {
        let g = self.shared.lock();
        (g.surface.width(), g.surface.height())
    }
}

/// The consumer side: cheap to clone.
#[derive(Clone)]
pub struct DisplayHandle {
    shared: Arc<Shared>,
}

impl DisplayHandle {
    /// Current size.
    pub fn size(&self) -> (u32, u32) {
        let g = self.shared.lock();
        (g.surface.width(), g.surface.height())
    }

    /// A copy of the surface as it is now.
    pub fn snapshot(&self) -> Surface {
        self.shared.lock().surface.clone()
    }

    /// The keyboard LEDs as the guest last set them.
    pub fn leds(&self) -> Leds {
        self.shared.lock().leds
    }

    /// Start following changes. The first `sync` reports the whole surface.
    pub fn subscribe(&self) -> DisplaySubscriber {
        let rx = self.shared.tx.subscribe();
        let mut g = self.shared.lock();
        let id = g.next_id;
        g.next_id += 1;
        let (w, h) = (g.server.width(), g.server.height());
        let mut changed = TileMap::new(w, h);
        changed.mark_all();
        g.subs.push(SubscriberSlot { id, changed });
        DisplaySubscriber {
            shared: self.shared.clone(),
            rx,
            id,
            size_gen: u64::MAX,
            cursor_gen: u64::MAX,
            leds: None,
        }
    }

    /// Write the screen to `path` like QEMU's `screendump`.
    pub fn screendump(&self, path: &Path, format: DumpFormat) -> Result<(), DisplayError> {
        let s = self.snapshot();
        let bytes = encode_screendump(&s, format);
        std::fs::write(path, bytes).map_err(|source| DisplayError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

/// The bytes `screendump` writes for a surface.
pub fn encode_screendump(s: &Surface, format: DumpFormat) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(s.pixels().len() * 3);
    for p in s.pixels() {
        rgb.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, *p as u8]);
    }
    match format {
        DumpFormat::Ppm => {
            let mut out = format!("P6\n{} {}\n255\n", s.width(), s.height()).into_bytes();
            out.extend_from_slice(&rgb);
            out
        }
        DumpFormat::Png => png::encode_rgb(s.width(), s.height(), &rgb, 6),
    }
}

/// What changed for one subscriber since its last `sync`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// The surface size changed (the shadow was reallocated and fully copied).
    pub resized: bool,
    /// The cursor changed: the new one (None: no cursor image).
    pub cursor: Option<Option<Arc<Cursor>>>,
    /// The LEDs changed (or this is the first sync).
    pub leds: Option<Leds>,
}

/// One consumer following the display.
pub struct DisplaySubscriber {
    shared: Arc<Shared>,
    rx: watch::Receiver<u64>,
    id: u64,
    size_gen: u64,
    cursor_gen: u64,
    leds: Option<Leds>,
}

impl DisplaySubscriber {
    /// Wait until something changed since the last `sync` (returns at once if it has).
    pub async fn changed(&mut self) {
        // The sender lives in `shared`, which this subscriber keeps alive.
        let _ = self.rx.changed().await;
    }

    /// Point `shadow` at the up-to-date copy of the surface (shared by every subscriber)
    /// and mark in `changed` the tiles whose pixels differ from what this subscriber last
    /// saw (on a resize: all of them, and `changed` is resized too).
    pub fn sync(&mut self, shadow: &mut Arc<Surface>, changed: &mut TileMap) -> SyncReport {
        self.rx.borrow_and_update();
        let mut report = SyncReport::default();
        let mut g = self.shared.lock();
        // The subscriber's old copy goes first, so the compare need not copy the surface
        // for it (one tiny placeholder instead).
        let seen = (shadow.width(), shadow.height());
        *shadow = Arc::new(Surface::new(1, 1));
        g.compare();
        let Inner {
            server,
            size_gen,
            cursor,
            cursor_gen,
            leds,
            subs,
            ..
        } = &mut *g;
        let Some(slot) = subs.iter_mut().find(|s| s.id == self.id) else {
            return report;
        };
        let (w, h) = (server.width(), server.height());
        if self.size_gen != *size_gen || seen != (w, h) {
            self.size_gen = *size_gen;
            *changed = TileMap::new(w, h);
            changed.mark_all();
            slot.changed = TileMap::new(w, h);
            report.resized = true;
        } else {
            if changed.size() != (w, h) {
                *changed = TileMap::new(w, h);
            }
            changed.merge(&slot.changed);
            slot.changed.clear();
        }
        *shadow = server.clone();
        if self.cursor_gen != *cursor_gen {
            self.cursor_gen = *cursor_gen;
            report.cursor = Some(cursor.clone());
        }
        if self.leds != Some(*leds) {
            self.leds = Some(*leds);
            report.leds = Some(*leds);
        }
        report
    }
}

impl Drop for DisplaySubscriber {
    fn drop(&mut self) {
        self.shared.lock().subs.retain(|s| s.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_sees_only_real_changes() {
        let (w, h) = new_display(64, 48).unwrap();
        let mut sub = h.subscribe();
        let mut shadow = Arc::new(Surface::new(1, 1));
        let mut changed = TileMap::new(1, 1);
        let r = sub.sync(&mut shadow, &mut changed);
        assert!(r.resized);
        assert_eq!(r.leds, Some(Leds::default()));
        assert_eq!(changed.tiles().count(), 4 * 3);
        changed.clear();
        // A write of identical pixels is not a change.
        w.update(Rect::new(0, 0, 16, 16), &[0; 256], 16);
        let r = sub.sync(&mut shadow, &mut changed);
        assert_eq!(r, SyncReport::default());
        assert!(changed.is_empty());
        w.update(Rect::new(20, 20, 1, 1), &[0xff0000], 1);
        sub.sync(&mut shadow, &mut changed);
        assert_eq!(changed.tiles().collect::<Vec<_>>(), vec![(1, 1)]);
        assert_eq!(shadow.pixel(20, 20), 0xff0000);
    }

    #[test]
    fn subscribers_share_one_copy_and_each_sees_every_change() {
        let (w, h) = new_display(64, 48).unwrap();
        let (mut a, mut b) = (h.subscribe(), h.subscribe());
        let (mut sa, mut sb) = (Arc::new(Surface::new(1, 1)), Arc::new(Surface::new(1, 1)));
        let (mut ca, mut cb) = (TileMap::new(1, 1), TileMap::new(1, 1));
        a.sync(&mut sa, &mut ca);
        b.sync(&mut sb, &mut cb);
        assert!(Arc::ptr_eq(&sa, &sb), "one copy for both subscribers");
        ca.clear();
        cb.clear();
        w.update(Rect::new(40, 30, 1, 1), &[0x00ff00], 1);
        // A syncs first (and compares); B, later, still learns of the tile.
        a.sync(&mut sa, &mut ca);
        w.update(Rect::new(0, 0, 1, 1), &[0x0000ff], 1);
        b.sync(&mut sb, &mut cb);
        assert_eq!(ca.tiles().collect::<Vec<_>>(), vec![(2, 1)]);
        assert_eq!(cb.tiles().collect::<Vec<_>>(), vec![(0, 0), (2, 1)]);
        assert_eq!(sb.pixel(40, 30), 0x00ff00);
        assert_eq!(sb.pixel(0, 0), 0x0000ff);
        // A resize there and back again blanks the screen: both see every tile anew.
        w.resize(32, 32).unwrap();
        w.resize(64, 48).unwrap();
        let r = a.sync(&mut sa, &mut ca);
        assert!(r.resized);
        assert_eq!(sa.pixel(40, 30), 0);
    }

    #[test]
    fn resize_is_reported_and_shadow_follows() {
        let (w, h) = new_display(64, 48).unwrap();
        let mut sub = h.subscribe();
        let mut shadow = Arc::new(Surface::new(1, 1));
        let mut changed = TileMap::new(1, 1);
        sub.sync(&mut shadow, &mut changed);
        w.resize(100, 50).unwrap();
        let r = sub.sync(&mut shadow, &mut changed);
        assert!(r.resized);
        assert_eq!((shadow.width(), shadow.height()), (100, 50));
        assert!(w.resize(0, 10).is_err());
        assert!(w.resize(MAX_SIDE + 1, 10).is_err());
    }

    #[tokio::test]
    async fn changes_coalesce_and_wake_the_subscriber() {
        let (w, h) = new_display(32, 32).unwrap();
        let mut sub = h.subscribe();
        let mut shadow = Arc::new(Surface::new(1, 1));
        let mut changed = TileMap::new(1, 1);
        sub.sync(&mut shadow, &mut changed);
        for i in 0..1000u32 {
            w.update(Rect::new(i % 32, 0, 1, 1), &[i + 1], 1);
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), sub.changed())
            .await
            .unwrap();
        changed.clear();
        sub.sync(&mut shadow, &mut changed);
        assert_eq!(changed.tiles().count(), 2);
        assert_eq!(shadow.pixel(31, 0), 992);
        assert_eq!(shadow.pixel(7, 0), 1000);
    }

    #[test]
    fn screendump_ppm_header_and_pixels() {
        let (w, h) = new_display(2, 1).unwrap();
        w.update(Rect::new(0, 0, 2, 1), &[0x112233, 0xa0b0c0], 2);
        let bytes = encode_screendump(&h.snapshot(), DumpFormat::Ppm);
        assert_eq!(bytes, b"P6\n2 1\n255\n\x11\x22\x33\xa0\xb0\xc0");
    }

    #[test]
    fn screendump_png_decodes() {
        let (w, h) = new_display(3, 2).unwrap();
        w.update(
            Rect::new(0, 0, 3, 2),
            &[1, 0x00ff00, 3, 0xffffff, 5, 0x123456],
            3,
        );
        let bytes = encode_screendump(&h.snapshot(), DumpFormat::Png);
        let dec = ::png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..6], &[0, 0, 1, 0, 0xff, 0]);
        assert_eq!(&buf[15..18], &[0x12, 0x34, 0x56]);
    }
}
