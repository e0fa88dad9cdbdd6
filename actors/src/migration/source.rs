//! The source side: pre-copy passes over guest RAM while the guest runs, then the
//! switch-over with every actor paused.

use std::io::Read;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::stream::{MachineDesc, StreamError, StreamWriter, MAX_RUN, PAGE};
use super::transport::{FdLookup, Outgoing, Uri};
use super::{is_zero, Migration, Status};
use devices::memory::GuestMemoryMmap;
use devices::Section;

/// Guest RAM pages written since the last call, per RAM region: (guest address of the
/// region, a bit per page).
pub type DirtyBitmap = Vec<(u64, Vec<u64>)>;

/// What the source needs from the rest of troupe.
pub trait SourceMachine {
    fn ram(&self) -> &GuestMemoryMmap;
    /// Device memory outside RAM (video memory), in the machine description's order.
    fn device_ram(&self) -> Vec<std::sync::Arc<dyn super::DeviceRam>> {
        Vec::new()
    }
    /// Start or stop recording guest RAM writes (turning it on starts afresh).
    fn log_dirty(&self, on: bool) -> Result<(), String>;
    /// Pages written since logging started or since the last call.
    fn take_dirty(&self) -> Result<DirtyBitmap, String>;
    /// Pause every vCPU and actor and return the machine's state but RAM.
    fn switch_over(&self) -> Result<Vec<Section>, String>;
    /// Tell the monitors (`MIGRATION`, `MIGRATION_PASS`), if the `events` capability is on.
    fn event(&self, name: &str, data: serde_json::Value);
}

/// How a migration ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `migrate_cancel`.
    Cancelled,
    /// Anything else, with the reason the user sees.
    Failed(String),
    /// It failed after the machine was paused for the switch-over.
    FailedPaused(String),
}

/// Paces pre-copy to `max-bandwidth` (bytes per second; 0 means unlimited).
struct Pacer {
    window: Instant,
    bytes: u64,
}

impl Pacer {
    const WINDOW: Duration = Duration::from_millis(100);

    fn new() -> Self {
        Self {
            window: Instant::now(),
            bytes: 0,
        }
    }

    fn sent(&mut self, n: u64, limit: u64) {
        if limit == 0 {
            return;
        }
        self.bytes += n;
        let allowed = limit as f64 * self.window.elapsed().as_secs_f64();
        if self.bytes as f64 > allowed {
            let wait = (self.bytes as f64 - allowed) / limit as f64;
            std::thread::sleep(Duration::from_secs_f64(wait.min(1.0)));
        }
        if self.window.elapsed() >= Self::WINDOW {
            self.window = Instant::now();
            self.bytes = 0;
        }
    }
}

struct Sender<'a, M: SourceMachine> {
    m: &'a M,
    mig: &'a Migration,
    w: StreamWriter<Box<dyn std::io::Write + Send>>,
    buf: Vec<u8>,
    pacer: Pacer,
    /// Pace to max-bandwidth (pre-copy); the switch-over goes flat out.
    paced: bool,
}

impl<M: SourceMachine> Sender<'_, M> {
    fn check(&self) -> Result<(), Failure> {
        if self.mig.cancelled() {
            Err(Failure::Cancelled)
        } else {
            Ok(())
        }
    }

    fn io(&self, e: StreamError) -> Failure {
        if self.mig.cancelled() {
            Failure::Cancelled
        } else {
            Failure::Failed(e.to_string())
        }
    }

    /// Send `count` (≤ [`MAX_RUN`]) pages from `gpa`: runs of data pages as `R` frames,
    /// runs of zero pages as `Z` markers.
    fn send(&mut self, gpa: u64, count: usize) -> Result<(), Failure> {
        let len = count * PAGE;
        self.buf.resize(len, 0);
        self.m
            .ram()
            .read_slice(&mut self.buf[..len], GuestAddress(gpa))
            .map_err(|e| Failure::Failed(format!("reading guest RAM at {gpa:#x}: {e}")))?;
        let before = self.w.written;
        let (mut zeros, mut normal) = (0u64, 0u64);
        let mut i = 0;
        while i < count {
            let zero = is_zero(&self.buf[i * PAGE..(i + 1) * PAGE]);
            let mut j = i + 1;
            while j < count && is_zero(&self.buf[j * PAGE..(j + 1) * PAGE]) == zero {
                j += 1;
            }
            let at = gpa + (i * PAGE) as u64;
            let res = if zero {
                zeros += (j - i) as u64;
                self.w.zeros(at, (j - i) as u32)
            } else {
                normal += (j - i) as u64;
                self.w.pages(at, &self.buf[i * PAGE..j * PAGE])
            };
            res.map_err(|e| self.io(e))?;
            i = j;
        }
        let n = self.w.written - before;
        let paced = self.paced;
        self.mig.with_progress(|p| {
            p.transferred = self.w.written;
            p.duplicate += zeros;
            p.normal += normal;
            p.remaining = p.remaining.saturating_sub(len as u64);
            if paced {
                p.precopy_bytes += n;
            } else {
                p.downtime_bytes += n;
            }
        });
        if self.paced {
            let limit = self.mig.params().max_bandwidth;
            self.pacer.sent(n, limit);
        }
        Ok(())
    }

    /// Device memory block `index`: every page the first time (`shadow` empty), then only
    /// the pages that differ from `shadow`, which is kept equal to what was sent. Device
    /// memory has no dirty log of its own to share (the display refresh reads the video
    /// memory's), so the copy is the record.
    fn block(
        &mut self,
        index: u32,
        b: &dyn super::DeviceRam,
        shadow: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let first = shadow.is_empty();
        if first {
            shadow.resize(b.len(), 0);
        }
        let mut page = vec![0u8; PAGE];
        let pages = b.len() / PAGE;
        let mut i = 0;
        while i < pages {
            self.check()?;
            b.read(i * PAGE, &mut page);
            let old = &mut shadow[i * PAGE..(i + 1) * PAGE];
            if !first && old[..] == page[..] {
                i += 1;
                continue;
            }
            old.copy_from_slice(&page);
            let before = self.w.written;
            let res = if is_zero(&page) {
                self.w.block_zeros(index, (i * PAGE) as u64, 1)
            } else {
                self.w.block_pages(index, (i * PAGE) as u64, &page)
            };
            res.map_err(|e| self.io(e))?;
            let n = self.w.written - before;
            self.mig.with_progress(|p| p.transferred = self.w.written);
            if self.paced {
                let limit = self.mig.params().max_bandwidth;
                self.pacer.sent(n, limit);
            }
            i += 1;
        }
        Ok(())
    }

    /// Every page of guest RAM.
    fn all(&mut self) -> Result<(), Failure> {
        let regions: Vec<(u64, u64)> = self
            .m
            .ram()
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect();
        for (start, size) in regions {
            let pages = (size as usize) / PAGE;
            let mut p = 0;
            while p < pages {
                self.check()?;
                let n = (pages - p).min(MAX_RUN);
                self.send(start + (p * PAGE) as u64, n)?;
                p += n;
            }
        }
        Ok(())
    }

    /// The pages set in `dirty`, in runs of consecutive pages.
    fn dirty(&mut self, dirty: &DirtyBitmap) -> Result<(), Failure> {
        for (start, words) in dirty {
            let bits = words.len() * 64;
            let set = |i: usize| words[i / 64] & (1 << (i % 64)) != 0;
            let mut i = 0;
            while i < bits {
                if words[i / 64] == 0 {
                    i = (i / 64 + 1) * 64;
                    continue;
                }
                if !set(i) {
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while j < bits && j - i < MAX_RUN && set(j) {
                    j += 1;
                }
                self.check()?;
                self.send(start + (i * PAGE) as u64, j - i)?;
                i = j;
            }
        }
        Ok(())
    }
}

fn count(d: &DirtyBitmap) -> u64 {
    d.iter()
        .flat_map(|(_, w)| w.iter())
        .map(|w| u64::from(w.count_ones()))
        .sum()
}

/// Merge `b` into `a` (same regions, same order).
fn merge(a: &mut DirtyBitmap, b: DirtyBitmap) {
    for ((_, wa), (_, wb)) in a.iter_mut().zip(b) {
        for (x, y) in wa.iter_mut().zip(wb) {
            *x |= y;
        }
    }
}

/// Run a migration to `uri` to its end. On success the machine stays paused (the
/// supervisor calls that `postmigrate`); on failure the caller resumes it.
pub fn run<M: SourceMachine>(
    m: &M,
    mig: &Migration,
    uri: &Uri,
    desc: &MachineDesc,
    fds: FdLookup,
) -> Result<(), Failure> {
    let started = Instant::now();
    let total: u64 = m.ram().iter().map(|r| r.len()).sum();
    mig.with_progress(|p| {
        p.total = total;
        p.remaining = total;
    });
    let out = Outgoing::open(uri, fds).map_err(|e| Failure::Failed(connect_error(uri, &e)))?;
    *mig.cutter.lock().unwrap_or_else(|e| e.into_inner()) = Some(out.cutter.clone());
    let Outgoing { writer, answer, .. } = out;
    let w = StreamWriter::start(writer, desc).map_err(|e| Failure::Failed(e.to_string()))?;
    m.log_dirty(true).map_err(Failure::Failed)?;
    let res = precopy_and_switch(m, mig, w, answer, started);
    let _ = m.log_dirty(false);
    res
}

fn connect_error(uri: &Uri, e: &std::io::Error) -> String {
    match uri {
        Uri::Tcp { .. } | Uri::Unix(_) => format!("Failed to connect socket: {e}"),
        _ => format!("{uri}: {e}"),
    }
}

fn precopy_and_switch<M: SourceMachine>(
    m: &M,
    mig: &Migration,
    w: StreamWriter<Box<dyn std::io::Write + Send>>,
    answer: Option<Box<dyn Read + Send>>,
    started: Instant,
) -> Result<(), Failure> {
    let mut s = Sender {
        m,
        mig,
        w,
        buf: Vec::with_capacity(MAX_RUN * PAGE),
        pacer: Pacer::new(),
        paced: true,
    };
    mig.with_progress(|p| {
        p.status = Status::Active;
        p.setup_time_ms = started.elapsed().as_millis() as u64;
    });
    m.event("MIGRATION", serde_json::json!({"status": "active"}));
    // Pass 1: everything.
    let mut pass_start = Instant::now();
    let mut pass_bytes = s.w.written;
    s.all()?;
    let blocks = m.device_ram();
    let mut shadows: Vec<Vec<u8>> = vec![Vec::new(); blocks.len()];
    for (i, b) in blocks.iter().enumerate() {
        s.block(i as u32, b.as_ref(), &mut shadows[i])?;
    }
    let mut carried: DirtyBitmap;
    loop {
        s.check()?;
        let dirty = m.take_dirty().map_err(Failure::Failed)?;
        let pages = count(&dirty);
        let secs = pass_start.elapsed().as_secs_f64().max(1e-3);
        let bytes = s.w.written - pass_bytes;
        let bandwidth = (bytes as f64 / secs).max(1.0); // bytes per second
        let expected_ms = (pages * PAGE as u64) as f64 / bandwidth * 1000.0;
        let passes = mig.with_progress(|p| {
            p.passes += 1;
            p.remaining = pages * PAGE as u64;
            p.dirty_pages_rate = (pages as f64 / secs) as u64;
            p.mbps = bandwidth * 8.0 / 1e6;
            p.pages_per_second = ((p.normal + p.duplicate) as f64
                / started.elapsed().as_secs_f64().max(1e-3))
                as u64;
            p.expected_downtime_ms = expected_ms as u64;
            p.passes
        });
        m.event("MIGRATION_PASS", serde_json::json!({"pass": passes}));
        if expected_ms <= mig.params().downtime_limit as f64 {
            carried = dirty;
            break;
        }
        pass_start = Instant::now();
        pass_bytes = s.w.written;
        s.dirty(&dirty)?;
    }
    // Switch-over: everything paused, flat out.
    s.check()?;
    mig.with_progress(|p| p.status = Status::Device);
    m.event("MIGRATION", serde_json::json!({"status": "device"}));
    let paused_at = Instant::now();
    let sections = m.switch_over().map_err(Failure::Failed)?;
    let paused = |e: Failure| match e {
        Failure::Failed(msg) => Failure::FailedPaused(msg),
        other => other,
    };
    s.paced = false;
    let last = m.take_dirty().map_err(|e| paused(Failure::Failed(e)))?;
    merge(&mut carried, last);
    mig.with_progress(|p| p.remaining = count(&carried) * PAGE as u64);
    s.dirty(&carried).map_err(paused)?;
    for (i, b) in blocks.iter().enumerate() {
        s.block(i as u32, b.as_ref(), &mut shadows[i])
            .map_err(paused)?;
    }
    for sec in &sections {
        s.w.section(sec).map_err(|e| paused(s.io(e)))?;
    }
    s.w.finish().map_err(|e| paused(s.io(e)))?;
    mig.with_progress(|p| p.transferred = s.w.written);
    if let Some(mut a) = answer {
        let mut b = [0u8; 1];
        match a.read(&mut b) {
            Ok(1) if b[0] == b'Y' => {}
            Ok(1) => {
                return Err(paused(Failure::Failed(
                    "the destination could not load the machine's state".into(),
                )))
            }
            Ok(_) => {
                return Err(paused(Failure::Failed(
                    "the destination closed the connection before taking over".into(),
                )))
            }
            Err(e) => {
                return Err(paused(Failure::Failed(format!(
                    "no answer from the destination: {e}"
                ))))
            }
        }
    }
    // One-way transports: the bytes must all be out (and an exec command done).
    drop(s.w);
    let downtime = paused_at.elapsed().as_millis() as u64;
    mig.with_progress(|p| {
        p.downtime_ms = Some(downtime);
        p.remaining = 0;
        p.total_time_ms = Some(started.elapsed().as_millis() as u64);
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        p.mbps = p.transferred as f64 * 8.0 / 1e6 / secs;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_maps_merge_and_count() {
        let mut a = vec![(0u64, vec![0b101u64, 0]), (1 << 32, vec![1])];
        merge(&mut a, vec![(0, vec![0b010, 1 << 63]), (1 << 32, vec![0])]);
        assert_eq!(a[0].1, vec![0b111, 1 << 63]);
        assert_eq!(count(&a), 5);
    }
}
