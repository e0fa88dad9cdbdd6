//! The VGA host: the std VGA model on its ports, legacy window and BARs, video RAM shared
//! with the guest (the linear framebuffer is a KVM memory slot with dirty logging), and a
//! refresh actor that renders into the console's display surface.
//!
//! Refresh: every [`REFRESH`] the actor checks whether the picture can have changed — the
//! model's generation counter (register and legacy-window writes) or dirty pages in the
//! framebuffer slot (guest writes to the LFB never exit) — and only then renders and sends
//! the rows that differ. A guest write thus reaches VNC clients within one interval. An
//! idle text screen costs nothing: see [`start_refresh`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use devices::vga::render::Mode;
use devices::vga::Vga;

use crate::bus::{lock, BusHandler};
use crate::display::{DisplayWriter, Rect};
use crate::host::mem::HostBuffer;
use crate::runtime::{fault_point, spawn_thread, Registry, Restart, ThreadSpec};

/// How often the refresh actor looks for changes.
pub const REFRESH: Duration = Duration::from_millis(15);

/// The model and its video memory.
pub struct VgaHost {
    model: Mutex<Vga>,
    vram: HostBuffer,
    /// Set while the refresh actor sleeps until the guest next writes (see [`Refresher::idle`]).
    idle: AtomicBool,
    /// "A write happened", with the refresh actor waiting on the condvar while idle.
    wake: (Mutex<bool>, Condvar),
}

impl VgaHost {
    pub fn new(model: Vga, vram: HostBuffer) -> Arc<Self> {
        Arc::new(Self {
            model: Mutex::new(model),
            vram,
            idle: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
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
        self.poke();
    }

    /// The guest (or a reset) changed something: wake the refresh actor if it is idle.
    pub fn poke(&self) {
        if self.idle.load(Ordering::SeqCst) {
            *lock(&self.wake.0) = true;
            self.wake.1.notify_one();
        }
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
        {
            let mut m = lock(&self.0.model);
            for (i, b) in data.iter().enumerate() {
                m.io_write((base + offset) as u16 + i as u16, *b);
            }
        }
        self.0.poke();
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
        self.0.poke();
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
        self.0.poke();
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
        self.0.poke();
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

/// Quiet looks in a row after which the refresh actor goes idle (text and planar modes).
const IDLE_AFTER: u32 = 10;

/// Longest idle sleep: a look now and then even if no write woke the actor.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How the refresh actor reaches the rest of the VM.
pub struct RefreshHooks {
    /// Reports (and clears) whether the guest wrote the framebuffer slot since the last call.
    pub lfb_dirty: Box<dyn Fn() -> bool + Send>,
    /// Drains KVM's coalesced MMIO ring (legacy-window writes not yet applied).
    pub flush: Box<dyn Fn() + Send>,
    /// Turns coalescing of legacy-window writes on or off; returns false when it cannot
    /// (no ring yet), and then the actor does not go idle.
    pub coalesce: Box<dyn Fn(bool) -> bool + Send>,
}

/// Start the refresh actor on its own thread (`troupe-vga`), registered as actor `vga`.
///
/// While the picture changes it looks every [`REFRESH`]. After [`IDLE_AFTER`] quiet looks
/// in a text or planar mode it goes idle: legacy-window writes stop being coalesced (so
/// the next one exits to the vCPU thread, which wakes the actor through [`VgaHost::poke`])
/// and the thread sleeps (looking once every [`IDLE_CHECK`]). An idle screen thus costs a
/// wake-up a second instead of one every interval, and the first write after idling is
/// shown at once. In VBE modes the guest writes the framebuffer without exits,
/// so the actor keeps looking at the dirty log every interval. The actor is restartable:
/// after a panic it starts over with a fresh frame.
pub fn start_refresh(
    registry: &Registry,
    host: Arc<VgaHost>,
    writer: DisplayWriter,
    hooks: RefreshHooks,
) -> std::io::Result<()> {
    let h = host.clone();
    let spec = ThreadSpec::new("vga", "display", Restart::Always).wake(move || {
        *lock(&h.wake.0) = true;
        h.wake.1.notify_one();
    });
    // Each run starts with a fresh frame (so the whole picture is sent again); the host,
    // the display and the hooks are the same.
    let mut restarted = false;
    spawn_thread(registry, spec, move || {
        if restarted {
            // A run that panicked while idle left coalescing off: undo that.
            if host.idle.swap(false, Ordering::SeqCst) {
                (hooks.coalesce)(true);
            }
        }
        restarted = true;
        let mut r = Refresher::default();
        let mut quiet = 0u32;
        loop {
            std::thread::sleep(REFRESH);
            fault_point();
            quiet = if r.look(&host, &writer, &hooks) {
                0
            } else {
                quiet + 1
            };
            if quiet >= IDLE_AFTER && r.can_idle() {
                r.idle(&host, &writer, &hooks);
                quiet = 0;
            }
        }
    })
    .map(|_| ())
}

/// The refresh actor's memory between looks: what was last sent.
#[derive(Default)]
struct Refresher {
    last_gen: Option<u64>,
    last_mode: Option<Mode>,
    prev: Vec<u32>,
    frame: Vec<u32>,
}

impl Refresher {
    /// One look: apply queued writes, then render and send the changed rows if the picture
    /// can have changed. Returns whether it could.
    fn look(&mut self, host: &VgaHost, writer: &DisplayWriter, hooks: &RefreshHooks) -> bool {
        (hooks.flush)();
        let (gen, mode) = {
            let m = lock(&host.model);
            (m.generation(), m.mode())
        };
        let dirty = matches!(mode, Mode::Vbe { .. }) && (hooks.lfb_dirty)();
        if Some(gen) == self.last_gen && !dirty && Some(mode) == self.last_mode {
            return false;
        }
        self.last_gen = Some(gen);
        let mode = host.with(|m, vram| m.render(vram, &mut self.frame));
        let (w, h) = mode.size();
        if Some(mode.size()) != self.last_mode.map(|m: Mode| m.size()) {
            let _ = writer.resize(w, h);
            self.prev.clear();
        }
        self.last_mode = Some(mode);
        push_changed_rows(writer, &self.prev, &self.frame, w, h);
        std::mem::swap(&mut self.prev, &mut self.frame);
        true
    }

    /// Every write in this mode exits (or lands in the coalesced ring) — not so for VBE.
    fn can_idle(&self) -> bool {
        !matches!(self.last_mode, None | Some(Mode::Vbe { .. }))
    }

    /// Sleep until the guest writes, looking at once when it does (and every
    /// [`IDLE_CHECK`] in case a change came some other way); return on the first change.
    fn idle(&mut self, host: &VgaHost, writer: &DisplayWriter, hooks: &RefreshHooks) {
        *lock(&host.wake.0) = false;
        host.idle.store(true, Ordering::SeqCst);
        // From here every write pokes; what the ring already held is applied by the look.
        if (hooks.coalesce)(false) {
            while !self.look(host, writer, hooks) {
                let mut woke = lock(&host.wake.0);
                if !*woke {
                    woke = host
                        .wake
                        .1
                        .wait_timeout(woke, IDLE_CHECK)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                *woke = false;
                drop(woke);
                fault_point();
            }
            (hooks.coalesce)(true);
        }
        host.idle.store(false, Ordering::SeqCst);
    }
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

impl crate::migration::DeviceRam for VgaHost {
    fn name(&self) -> String {
        "vga.vram".into()
    }
    fn len(&self) -> usize {
        self.vram.len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        let src = self.vram.as_slice();
        let end = (offset + buf.len()).min(src.len());
        if offset < end {
            buf[..end - offset].copy_from_slice(&src[offset..end]);
        }
    }
    fn write(&self, offset: usize, data: &[u8]) {
        let dst = self.vram.as_mut_slice_shared();
        let end = (offset + data.len()).min(dst.len());
        if offset < end {
            dst[offset..end].copy_from_slice(&data[..end - offset]);
        }
        self.poke();
    }
}
