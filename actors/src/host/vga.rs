//! The VGA host: the std VGA model on its ports, legacy window and BARs, video RAM shared
//! with the guest (the linear framebuffer is a KVM memory slot with dirty logging), and a
//! refresh actor that renders into the console's display surface.
//!
//! Refresh: every [`REFRESH`] the actor checks whether the picture can have changed — the
//! model's generation counter (register and legacy-window writes) or dirty pages in the
//! framebuffer slot (guest writes to the LFB never exit) — and only then renders and sends
//! the rows that differ. A guest write thus reaches VNC clients within one interval.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::vga::render::Mode;
use devices::vga::Vga;

use crate::bus::{lock, BusHandler};
use crate::display::{DisplayWriter, Rect};
use crate::host::mem::HostBuffer;
use crate::runtime::{spawn_supervised, Placement, Registry, Restart};

/// How often the refresh actor looks for changes.
pub const REFRESH: Duration = Duration::from_millis(15);

/// The model and its video memory.
pub struct VgaHost {
    model: Mutex<Vga>,
    vram: HostBuffer,
}

impl VgaHost {
    pub fn new(model: Vga, vram: HostBuffer) -> Arc<Self> {
        Arc::new(Self {
            model: Mutex::new(model),
            vram,
        })
    }

    pub fn vram_host_addr(&self) -> u64 {
        self.vram.host_addr()
    }

    pub fn vram_len(&self) -> usize {
        self.vram.len()
    }

    pub fn model(&self) -> &Mutex<Vga> {
        &self.model
    }

    /// Run `f` with the model and VRAM.
    pub fn with<R>(&self, f: impl FnOnce(&mut Vga, &mut [u8]) -> R) -> R {
        let mut m = lock(&self.model);
        f(&mut m, self.vram.as_mut_slice_shared())
    }

    pub fn reset(&self) {
        lock(&self.model).reset();
    }
}

/// Ports 0x3B0–0x3DF.
pub struct VgaIoPort(pub Arc<VgaHost>);

impl BusHandler for VgaIoPort {
    fn read(&self, base: u64, offset: u64, data: &mut [u8]) {
        let mut m = lock(&self.0.model);
        for (i, b) in data.iter_mut().enumerate() {
            *b = m.io_read((base + offset) as u16 + i as u16);
        }
    }
    fn write(&self, base: u64, offset: u64, data: &[u8]) {
        let mut m = lock(&self.0.model);
        for (i, b) in data.iter().enumerate() {
            m.io_write((base + offset) as u16 + i as u16, *b);
        }
    }
}

/// Bochs VBE ports 0x1CE (index) and 0x1CF (data), 16-bit.
pub struct VbePort(pub Arc<VgaHost>);

impl BusHandler for VbePort {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = lock(&self.0.model).vbe_read(offset.min(1)).to_le_bytes();
        let n = data.len().min(2);
        data[..n].copy_from_slice(&v[..n]);
    }
    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        let mut v = [0u8; 2];
        let n = data.len().min(2);
        v[..n].copy_from_slice(&data[..n]);
        self.0
            .with(|m, vram| m.vbe_write(offset.min(1), u16::from_le_bytes(v), vram));
    }
}

/// The 0xA0000–0xBFFFF window.
pub struct VgaWindow(pub Arc<VgaHost>);

impl BusHandler for VgaWindow {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        self.0.with(|m, vram| {
            for (i, b) in data.iter_mut().enumerate() {
                *b = m.mem_read(offset + i as u64, vram);
            }
        });
    }
    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        self.0.with(|m, vram| {
            for (i, b) in data.iter().enumerate() {
                m.mem_write(offset + i as u64, *b, vram);
            }
        });
    }
}

/// The 4 KiB MMIO BAR.
pub struct VgaMmio(pub Arc<VgaHost>);

impl BusHandler for VgaMmio {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0.model).mmio_read(offset, data);
    }
    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        self.0.with(|m, vram| m.mmio_write(offset, data, vram));
    }
}

/// A read-only PCI expansion ROM.
pub struct RomBar(pub Vec<u8>);

impl BusHandler for RomBar {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.0.get(offset as usize + i).copied().unwrap_or(0xff);
        }
    }
    fn write(&self, _base: u64, _offset: u64, _data: &[u8]) {}
}

/// Start the refresh actor. `lfb_dirty` reports (and clears) whether the guest wrote the
/// framebuffer slot since the last call.
pub fn start_refresh(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    host: Arc<VgaHost>,
    writer: DisplayWriter,
    lfb_dirty: Arc<dyn Fn() -> bool + Send + Sync>,
    flush: Arc<dyn Fn() + Send + Sync>,
) {
    let entry = registry.register("vga", "display", Placement::Runtime, || 0);
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || {
            let host = host.clone();
            let writer = writer.clone();
            let lfb_dirty = lfb_dirty.clone();
            let flush = flush.clone();
            async move {
                let mut last_gen = u64::MAX;
                let mut last_mode = None;
                let mut prev: Vec<u32> = Vec::new();
                let mut frame: Vec<u32> = Vec::new();
                let mut tick = tokio::time::interval(REFRESH);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    // Writes the guest made through the coalesced ring land first.
                    flush();
                    let (gen, mode) = {
                        let m = lock(&host.model);
                        (m.generation(), m.mode())
                    };
                    let dirty = matches!(mode, Mode::Vbe { .. }) && lfb_dirty();
                    if gen == last_gen && !dirty && Some(mode) == last_mode {
                        continue;
                    }
                    last_gen = gen;
                    let mode = host.with(|m, vram| m.render(vram, &mut frame));
                    let (w, h) = mode.size();
                    if Some(mode.size()) != last_mode.map(|m: Mode| m.size()) {
                        let _ = writer.resize(w, h);
                        prev.clear();
                    }
                    last_mode = Some(mode);
                    push_changed_rows(&writer, &prev, &frame, w, h);
                    std::mem::swap(&mut prev, &mut frame);
                }
            }
        },
        |_| {},
    );
}

/// Send the bands of rows that differ from the previous frame.
fn push_changed_rows(writer: &DisplayWriter, prev: &[u32], frame: &[u32], w: u32, h: u32) {
    let w = w as usize;
    let same = |y: usize| {
        prev.len() == frame.len() && prev[y * w..(y + 1) * w] == frame[y * w..(y + 1) * w]
    };
    let mut y = 0usize;
    while y < h as usize {
        if same(y) {
            y += 1;
            continue;
        }
        let start = y;
        while y < h as usize && !same(y) {
            y += 1;
        }
        let rect = Rect {
            x: 0,
            y: start as u32,
            w: w as u32,
            h: (y - start) as u32,
        };
        writer.update(rect, &frame[start * w..y * w], w);
    }
}
