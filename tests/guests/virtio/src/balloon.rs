//! `dev=balloon`: a virtio-balloon driver. It touches every page of its pool (RAM from
//! 56 MiB to the end of the usable region there) so the host has them all resident, then
//! follows the device's `num_pages`: inflating gives pages from the bottom of the pool
//! (queue 0, 256 frame numbers per request), deflating takes them back from the top
//! (queue 1) and writes and checks each one (a page the host dropped comes back on touch).
//! After each change it writes `actual` and prints `vballoon: actual=N pages`. With the
//! statistics feature it posts one report on queue 2 (free and total memory) and posts a
//! fresh one whenever the device returns the buffer. Runs until killed; exit 1 on an error,
//! 2 without a device.
//!
//! Output: `vballoon: features=0x.. pool=N pages touched`, then the `actual=` lines.

use guestlib::time::delay_us;
use guestlib::{println, BootInfo};

use crate::transport::{w32, w64, Virtio, RING_BASE, VERSION_1};

const F_STATS_VQ: u64 = 1 << 1;
const F_DEFLATE_ON_OOM: u64 = 1 << 2;
const POOL: u64 = 56 << 20;
/// Frame number lists (after the three queues' rings).
const PFNS: u64 = RING_BASE + 0x4_0000;
const STATS: u64 = RING_BASE + 0x5_0000;
const BATCH: u64 = 256;
const PAGE: u64 = 4096;
/// Statistics tags (virtio 1.2 §5.5.6.3).
const TAG_MEMFREE: u16 = 4;
const TAG_MEMTOT: u16 = 5;

fn r64(a: u64) -> u64 {
    // SAFETY: identity-mapped guest RAM in this driver's pool.
    unsafe { core::ptr::read_volatile(a as *const u64) }
}

/// Where the usable RAM holding POOL ends.
fn pool_end(boot: &BootInfo) -> u64 {
    boot.memmap()
        .iter()
        .filter(|r| r.kind == 1 && r.base <= POOL && r.base + r.len > POOL)
        .map(|r| (r.base + r.len) & !(PAGE - 1))
        .next()
        .unwrap_or(POOL)
}

/// Post a statistics report on queue 2.
fn post_stats(v: &mut Virtio, free_pages: u64, total: u64) {
    let stats = [(TAG_MEMFREE, free_pages * PAGE), (TAG_MEMTOT, total)];
    for (i, (tag, val)) in stats.iter().enumerate() {
        let a = STATS + 10 * i as u64;
        // SAFETY: the statistics buffer in this driver's free RAM (10-byte packed entries).
        unsafe {
            core::ptr::write_unaligned(a as *mut u16, *tag);
            core::ptr::write_unaligned((a + 2) as *mut u64, *val);
        }
    }
    v.select(2);
    v.set_desc(0, STATS, 10 * stats.len() as u32, 0, 0);
    v.offer(0);
}

/// Send `n` frame numbers (already at PFNS) on queue `q` and wait for them to come back.
fn send(v: &mut Virtio, q: usize, n: u64) -> bool {
    v.select(q);
    v.set_desc(0, PFNS, (4 * n) as u32, 0, 0);
    v.offer(0);
    v.wait_used(5000).is_some()
}

pub fn run(boot: &BootInfo) -> u32 {
    let legacy = boot.arg("legacy").is_some();
    let Some(mut v) = Virtio::find(&[0x1002, 0x1045], legacy) else {
        println!("vballoon: no virtio-balloon");
        return 2;
    };
    let want = if legacy { 0 } else { VERSION_1 } | F_STATS_VQ | F_DEFLATE_ON_OOM;
    let feats = match v.init_queues(want, 128, 3) {
        Ok(f) => f,
        Err(e) => {
            println!("vballoon: init: {e}");
            return 1;
        }
    };
    let end = pool_end(boot);
    let pool = end.saturating_sub(POOL) / PAGE;
    let first = POOL / PAGE;
    for p in 0..pool {
        let a = (first + p) * PAGE;
        w64(a, a);
    }
    println!("vballoon: features={feats:#x} pool={pool} pages touched");
    let total = boot.usable_bytes();
    let mut held = 0u64;
    if feats & F_STATS_VQ != 0 {
        post_stats(&mut v, pool, total);
    }
    loop {
        let target = u64::from(v.config32(0)).min(pool);
        if target != held {
            while held < target {
                let n = BATCH.min(target - held);
                for i in 0..n {
                    w32(PFNS + 4 * i, (first + held + i) as u32);
                }
                if !send(&mut v, 0, n) {
                    println!("vballoon: inflate request not answered");
                    return 1;
                }
                held += n;
            }
            while held > target {
                let n = BATCH.min(held - target);
                for i in 0..n {
                    w32(PFNS + 4 * i, (first + held - 1 - i) as u32);
                }
                if !send(&mut v, 1, n) {
                    println!("vballoon: deflate request not answered");
                    return 1;
                }
                held -= n;
                for i in 0..n {
                    let a = (first + held + i) * PAGE;
                    w64(a, !a);
                    if r64(a) != !a {
                        println!("vballoon: page {a:#x} does not keep what was written");
                        return 1;
                    }
                }
            }
            v.set_config32(4, held as u32);
            println!("vballoon: actual={held} pages");
        }
        if feats & F_STATS_VQ != 0 {
            v.select(2);
            if v.wait_used(0).is_some() {
                post_stats(&mut v, pool - held, total);
            }
        }
        delay_us(10_000);
    }
}
