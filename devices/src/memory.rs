//! Guest memory as every part of troupe sees it: vm-memory's mmap backend with a dirty
//! bitmap per region. Every write troupe itself makes into guest RAM through the
//! `Bytes` interface (virtio rings and buffers, e1000 descriptors and frames, IDE and
//! fw_cfg DMA, boot loaders) marks its pages here; writes a vCPU makes are in KVM's dirty
//! log instead. Together they are what changed (dirty-rate measurement, and migration's
//! pre-copy passes). Code that hands raw host pointers of guest memory to the kernel
//! (io_uring reads straight into guest buffers) marks the pages itself with
//! [`mark_dirty`].

use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Guest memory with a dirty bitmap per region.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
/// One region of it.
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;

pub const PAGE_SIZE: u64 = 4096;

/// Mark `len` bytes at guest address `gpa` as written (for writes made through raw host
/// pointers, which the bitmap cannot see).
pub fn mark_dirty(mem: &GuestMemoryMmap, gpa: u64, len: usize) {
    let mut done = 0usize;
    while done < len {
        let at = vm_memory::GuestAddress(gpa + done as u64);
        let Some(r) = mem.find_region(at) else {
            return;
        };
        let off = (at.0 - r.start_addr().0) as usize;
        let n = (len - done).min(r.len() as usize - off);
        r.bitmap().mark_dirty(off, n);
        done += n;
    }
}

/// Take and clear the pages troupe wrote since the last call: one bitmap (a bit per
/// 4 KiB page, `u64` words) per region, in region order, with the region's guest address.
pub fn take_dirty(mem: &GuestMemoryMmap) -> Vec<(u64, Vec<u64>)> {
    mem.iter()
        .map(|r| {
            let mapping: &vm_memory::MmapRegion<AtomicBitmap> = r;
            (r.start_addr().0, mapping.bitmap().get_and_reset())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn writes_through_bytes_and_marked_raw_writes_are_taken_once() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        take_dirty(&mem);
        mem.write_obj(7u32, GuestAddress(0x2000)).unwrap();
        mark_dirty(&mem, 0x5ffc, 8); // straddles pages 5 and 6
        let d = take_dirty(&mem);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1[0], (1 << 2) | (1 << 5) | (1 << 6));
        assert!(
            take_dirty(&mem)[0].1.iter().all(|w| *w == 0),
            "taking clears"
        );
    }
}
