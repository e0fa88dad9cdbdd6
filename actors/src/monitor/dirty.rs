//! Guest dirty-rate measurement: QMP `calc-dirty-rate` / `query-dirty-rate`, HMP
//! `calc_dirty_rate [-r] [-b] SECONDS [SAMPLE_PAGES]` / `info dirty_rate`, as QEMU 7.2.
//!
//! Two modes, as QEMU's: `page-sampling` (the default) hashes `sample-pages` pages per GiB
//! of guest RAM, chosen at random, at the start and the end of the period and counts the
//! ones that changed; `dirty-bitmap` turns on KVM's dirty log for guest RAM for the period
//! and counts every page a vCPU or a device wrote (the machine's memory actor does that
//! part: [`super::handles::MemoryHandle::dirty_log`]). `dirty-ring` needs the ring enabled
//! when the VM is created, which troupe does not do: refused with QEMU's message.
//!
//! The measurement runs as a task while the monitor goes on; one at a time per VM. HMP
//! also prints `Dirty pages: N` in bitmap mode (troupe's addition): the rate is whole MB/s,
//! which hides anything under 256 pages a second.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const PAGE: u64 = 4096;
const DEFAULT_SAMPLE_PAGES: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    PageSampling,
    DirtyBitmap,
    DirtyRing,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::PageSampling => "page-sampling",
            Self::DirtyBitmap => "dirty-bitmap",
            Self::DirtyRing => "dirty-ring",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "page-sampling" => Some(Self::PageSampling),
            "dirty-bitmap" => Some(Self::DirtyBitmap),
            "dirty-ring" => Some(Self::DirtyRing),
            _ => None,
        }
    }
}

/// The last (or current) measurement, shared by every monitor session of the VM.
#[derive(Debug, Clone, Default)]
pub struct DirtyRate {
    started: Option<Started>,
    result: Option<Measured>,
}

#[derive(Debug, Clone)]
struct Started {
    /// Seconds of the host's monotonic clock (QEMU prints them labelled "ms").
    at: u64,
    secs: u64,
    sample_pages: u64,
    mode: Mode,
}

#[derive(Debug, Clone, Copy)]
struct Measured {
    rate_mbps: u64,
    /// Pages found written (bitmap mode) or sampled pages that changed.
    pages: u64,
}

pub type SharedDirtyRate = Arc<Mutex<DirtyRate>>;

fn lock(d: &SharedDirtyRate) -> std::sync::MutexGuard<'_, DirtyRate> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

fn monotonic_secs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64
}

/// Why a measurement cannot start (QEMU's messages).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirtyRateError {
    #[error("calc-time is out of range[1, 60].")]
    Period,
    #[error("sample-pages is out of range[128, 16384].")]
    SamplePages,
    #[error("mode dirty-ring is not enabled, use other method instead.")]
    NoRing,
    #[error("the dirty rate is already being measured.")]
    Busy,
    #[error("{0}")]
    Machine(String),
}

/// Start measuring for `secs` seconds; returns at once (the work runs as a task).
pub async fn start(
    ctx: &super::MonitorContext,
    secs: u64,
    sample_pages: Option<u64>,
    mode: Mode,
) -> Result<(), DirtyRateError> {
    if !(1..=60).contains(&secs) {
        return Err(DirtyRateError::Period);
    }
    if mode == Mode::PageSampling && sample_pages.is_some_and(|n| !(128..=16384).contains(&n)) {
        return Err(DirtyRateError::SamplePages);
    }
    if mode == Mode::DirtyRing {
        return Err(DirtyRateError::NoRing);
    }
    let started = || {
        Some(Started {
            at: monotonic_secs(),
            secs,
            sample_pages: sample_pages.unwrap_or(DEFAULT_SAMPLE_PAGES),
            mode,
        })
    };
    let previous = {
        let mut s = lock(&ctx.dirty_rate);
        if s.started.is_some() && s.result.is_none() {
            return Err(DirtyRateError::Busy);
        }
        // Claimed (a second start is busy) before the dirty log is asked for.
        let previous = (s.started.take(), s.result.take());
        s.started = started();
        previous
    };
    if mode == Mode::DirtyBitmap {
        if let Err(e) = ctx.memory.dirty_log(true).await {
            let mut s = lock(&ctx.dirty_rate);
            (s.started, s.result) = previous;
            return Err(DirtyRateError::Machine(e));
        }
        // The measurement starts with the log.
        lock(&ctx.dirty_rate).started = started();
    }
    let state = ctx.dirty_rate.clone();
    let memory = ctx.memory.clone();
    let mem = ctx.mem.clone();
    let period = Duration::from_secs(secs);
    let samples = sample_pages.unwrap_or(DEFAULT_SAMPLE_PAGES);
    let rt = tokio::runtime::Handle::current();
    crate::runtime::spawn_task(
        &rt,
        &ctx.registry,
        "dirty-rate",
        "dirty-rate",
        None,
        async move {
            let result = match mode {
                Mode::DirtyBitmap => {
                    tokio::time::sleep(period).await;
                    let pages = memory.dirty_pages().await;
                    let _ = memory.dirty_log(false).await;
                    pages.unwrap_or_else(|e| {
                        tracing::warn!("dirty rate: {e}");
                        0
                    })
                }
                _ => {
                    let picked = pick_pages(&mem, samples);
                    let before = hash_pages(&mem, &picked);
                    tokio::time::sleep(period).await;
                    let after = hash_pages(&mem, &picked);
                    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count() as u64;
                    // Scale the sampled share up to all of guest RAM.
                    let total: u64 = mem.iter().map(|r| r.len() / PAGE).sum();
                    changed
                        .saturating_mul(total)
                        .checked_div(picked.len() as u64)
                        .unwrap_or(0)
                }
            };
            let rate_mbps = result * PAGE / (1 << 20) / period.as_secs().max(1);
            let mut s = lock(&state);
            if let Some(st) = &mut s.started {
                if st.mode == Mode::DirtyBitmap {
                    st.sample_pages = 0;
                }
            }
            s.result = Some(Measured {
                rate_mbps,
                pages: result,
            });
        },
    );
    Ok(())
}

/// `sample_pages` per GiB of each RAM region, at pseudo-random page offsets.
fn pick_pages(mem: &devices::memory::GuestMemoryMmap, per_gib: u64) -> Vec<u64> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let mut seed = now.map_or(1, |d| d.as_nanos() as u64) | 1;
    let mut next = || {
        // xorshift64*: spread, not secrecy.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = Vec::new();
    for r in mem.iter() {
        let pages = r.len() / PAGE;
        let n = (per_gib * r.len()).div_ceil(1 << 30).min(pages);
        for _ in 0..n {
            out.push(r.start_addr().0 + (next() % pages) * PAGE);
        }
    }
    out
}

fn hash_pages(mem: &devices::memory::GuestMemoryMmap, pages: &[u64]) -> Vec<u32> {
    let mut buf = vec![0u8; PAGE as usize];
    pages
        .iter()
        .map(|&gpa| {
            if mem.read_slice(&mut buf, GuestAddress(gpa)).is_err() {
                return 0;
            }
            crc32fast::hash(&buf)
        })
        .collect()
}

/// `query-dirty-rate`.
pub fn query(state: &SharedDirtyRate) -> Value {
    let s = lock(state);
    let Some(st) = &s.started else {
        return json!({"status": "unstarted", "sample-pages": DEFAULT_SAMPLE_PAGES,
                      "mode": "page-sampling", "start-time": 0, "calc-time": 0});
    };
    let mut v = json!({
        "status": if s.result.is_some() { "measured" } else { "measuring" },
        "sample-pages": st.sample_pages,
        "mode": st.mode.name(),
        "start-time": st.at,
        "calc-time": st.secs,
    });
    if let Some(m) = s.result {
        v["dirty-rate"] = json!(m.rate_mbps);
    }
    v
}

/// `info dirty_rate`.
pub fn hmp_text(state: &SharedDirtyRate) -> String {
    let q = query(state);
    let n = |k: &str| q[k].as_u64().unwrap_or(0);
    let mut out = format!(
        "Status: {}\nStart Time: {} (ms)\nSample Pages: {} (per GB)\nPeriod: {} (sec)\nMode: {}\nDirty rate: ",
        q["status"].as_str().unwrap_or_default(),
        n("start-time"),
        n("sample-pages"),
        n("calc-time"),
        q["mode"].as_str().unwrap_or_default(),
    );
    match q.get("dirty-rate") {
        Some(r) => out.push_str(&format!("{} (MB/s)\n", r.as_u64().unwrap_or(0))),
        None => out.push_str("(not ready)\n"),
    }
    let s = lock(state);
    if let (Some(st), Some(m)) = (&s.started, s.result) {
        if st.mode == Mode::DirtyBitmap {
            out.push_str(&format!("Dirty pages: {}\n", m.pages));
        }
    }
    out
}
