//! The virtio-balloon worker and its control from the monitor.
//!
//! Inflate (queue 0): every page frame the driver gives is dropped from the host
//! (`MADV_DONTNEED`, and a punched hole for shared file-backed RAM), so troupe's resident
//! memory falls; the guest gets a zero page back when it touches the page again, which is
//! all deflate (queue 1) needs. Statistics (queue 2): the driver's report is read and kept,
//! and its buffer held as the protocol wants (§5.5.6.3).
//!
//! [`BalloonControl`] is what `balloon`/`info balloon`/`query-balloon` use: it sets the
//! target (in bytes of guest RAM left to the guest, QEMU's unit) and reads `actual`.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::memory::GuestMemoryMmap;
use devices::virtio::balloon::{BalloonShared, PAGE_SHIFT};
use devices::virtio::pci::VirtioPci;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{Ctx, QueueWorker};
use crate::bus::lock;

const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;
const PAGE: u64 = 1 << PAGE_SHIFT;

/// One statistic the driver reported: (tag, value), virtio 1.2 §5.5.6.3.
pub type Stat = (u16, u64);

/// The worker: drops inflated pages, keeps the statistics.
pub struct BalloonWorker {
    stats: Arc<Mutex<Vec<Stat>>>,
    /// The statistics buffer the driver left with the device.
    held: Option<u16>,
}

impl BalloonWorker {
    /// The worker, and where the driver's latest statistics can be read.
    pub fn new() -> (Self, Arc<Mutex<Vec<Stat>>>) {
        let stats = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                stats: stats.clone(),
                held: None,
            },
            stats,
        )
    }
}

impl QueueWorker for BalloonWorker {
    fn process(&mut self, q: usize, ctx: &mut Ctx) {
        let mut used = false;
        while let Some(chain) = ctx.pop(q) {
            match q {
                INFLATE => {
                    let mut pfns = vec![0u8; chain.readable_len().min(1 << 20) as usize];
                    let n = chain.read_at(&ctx.mem, 0, &mut pfns);
                    let frames = pfns[..n - n % 4]
                        .chunks_exact(4)
                        .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
                    discard_runs(&ctx.mem, frames);
                }
                DEFLATE => {
                    // The pages come back on the guest's next touch.
                }
                STATS => {
                    let mut buf = vec![0u8; chain.readable_len().min(4096) as usize];
                    let n = chain.read_at(&ctx.mem, 0, &mut buf);
                    let report: Vec<Stat> = buf[..n - n % 10]
                        .chunks_exact(10)
                        .map(|c| {
                            let mut v = [0u8; 8];
                            v.copy_from_slice(&c[2..10]);
                            (u16::from_le_bytes([c[0], c[1]]), u64::from_le_bytes(v))
                        })
                        .collect();
                    if let Ok(mut s) = self.stats.lock() {
                        *s = report;
                    }
                    // Held until the device wants a new report; a second buffer replaces
                    // the first, which goes back.
                    if let Some(old) = self.held.replace(chain.head) {
                        ctx.add_used(q, old, 0);
                        used = true;
                    }
                    continue;
                }
                _ => {}
            }
            ctx.add_used(q, chain.head, 0);
            used = true;
        }
        if used {
            ctx.notify(q);
        }
    }

    fn reset(&mut self) {
        self.held = None;
    }
}

/// Drop the host pages behind each guest page frame, one call per contiguous run.
fn discard_runs(mem: &GuestMemoryMmap, frames: impl Iterator<Item = u64>) {
    let mut run: Option<(u64, u64)> = None;
    for f in frames {
        let addr = f << PAGE_SHIFT;
        run = match run {
            Some((start, len)) if start + len == addr => Some((start, len + PAGE)),
            Some((start, len)) => {
                discard(mem, start, len);
                Some((addr, PAGE))
            }
            None => Some((addr, PAGE)),
        };
    }
    if let Some((start, len)) = run {
        discard(mem, start, len);
    }
}

/// Give `[addr, addr + len)` of guest RAM back to the host. Frames outside RAM and RAM on
/// huge pages (a 4 KiB piece of a huge page cannot be given back) are left alone.
fn discard(mem: &GuestMemoryMmap, addr: u64, len: u64) {
    let Some(region) = mem.find_region(GuestAddress(addr)) else {
        tracing::debug!("balloon: frame at {addr:#x} is not RAM");
        return;
    };
    let offset = addr - region.start_addr().0;
    let len = len.min(region.len() - offset);
    if region.is_hugetlbfs() == Some(true) {
        return;
    }
    // SAFETY: the range lies inside one guest RAM mapping; dropping its pages only makes
    // the guest read zeros (or the backing file) there, which the driver gave up.
    let host = unsafe { region.as_ptr().add(offset as usize) };
    // SAFETY: as above.
    unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
    if let Some(file) = region.file_offset() {
        if region.flags() & libc::MAP_SHARED != 0 {
            // SAFETY: punches a hole in troupe's own RAM file, in the range the mapping
            // covers.
            unsafe {
                libc::fallocate(
                    file.file().as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    (file.start() + offset) as libc::off_t,
                    len as libc::off_t,
                )
            };
        }
    }
}

/// What the monitor holds: the target, `actual`, the statistics.
pub trait BalloonControl: Send + Sync {
    /// `balloon VALUE`: leave the guest `bytes` of RAM (at most all of it).
    fn set_target(&self, bytes: u64);
    /// Guest RAM not in the balloon, bytes (`query-balloon`'s `actual`).
    fn actual(&self) -> u64;
    /// The driver's latest statistics.
    fn stats(&self) -> Vec<Stat>;
}

/// The balloon as the monitor sees it.
pub struct BalloonHandle {
    pub shared: Arc<BalloonShared>,
    pub model: Arc<Mutex<VirtioPci>>,
    pub stats: Arc<Mutex<Vec<Stat>>>,
    /// Guest RAM, bytes.
    pub ram: u64,
}

impl BalloonHandle {
    /// Send `BALLOON_CHANGE` (QEMU's data: `actual`, bytes) through `supervisor` whenever
    /// the driver changes `actual`.
    pub fn on_change(&self, supervisor: crate::supervisor::SupervisorHandle) {
        let ram = self.ram;
        self.shared.set_listener(Box::new(move |pages| {
            let actual = ram.saturating_sub(u64::from(pages) << PAGE_SHIFT);
            supervisor.publish(crate::supervisor::VmNotification::Other {
                event: "BALLOON_CHANGE".into(),
                data: serde_json::json!({ "actual": actual }).to_string(),
            });
        }));
    }
}

impl BalloonControl for BalloonHandle {
    fn set_target(&self, bytes: u64) {
        let pages = (self.ram - bytes.min(self.ram)) >> PAGE_SHIFT;
        self.shared
            .set_num_pages(u32::try_from(pages).unwrap_or(u32::MAX));
        lock(&self.model).signal_config();
    }
    fn actual(&self) -> u64 {
        self.ram
            .saturating_sub(u64::from(self.shared.actual()) << PAGE_SHIFT)
    }
    fn stats(&self) -> Vec<Stat> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
