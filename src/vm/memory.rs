//! Guest RAM: one anonymous mapping per contiguous RAM range (below and above 4 GiB, like
//! QEMU's `pc` machine with its PCI hole), registered with KVM as memory slots.
//!
//! The legacy VGA window 0xA0000–0xBFFFF is left out of the KVM slots (it is MMIO), and so
//! is 0xC0000–0xFFFFF, which `firmware::Shadow` maps per PAM segment; the host memory
//! behind both still exists so device DMA into low RAM needs no special case.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::backing;
use super::kvm::{KvmVm, VmError};
use crate::config::{RamBacking, RamSource};
use devices::memory::GuestMemoryMmap;

/// Start of RAM above 4 GiB.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// Where RAM below 4 GiB must end when it does not all fit (QEMU pc, gigabyte aligned).
pub const LOWMEM_SPLIT: u64 = 0xC000_0000;
/// RAM sizes from this one up are split (QEMU pc: 0xE0000000).
pub const LOWMEM_THRESHOLD: u64 = 0xE000_0000;
/// Legacy VGA memory window, MMIO.
pub const VGA_WINDOW: (u64, u64) = (0xA_0000, 0x2_0000);
/// The most RAM troupe will try to map (the guest physical address space it offers).
pub const MAX_RAM: u64 = 1 << 46;

/// How RAM is split around the PCI hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamLayout {
    pub below_4g: u64,
    pub above_4g: u64,
}

impl RamLayout {
    pub fn pc(ram: u64) -> Self {
        let below = if ram >= LOWMEM_THRESHOLD {
            LOWMEM_SPLIT
        } else {
            ram
        };
        Self {
            below_4g: below,
            above_4g: ram - below,
        }
    }

    /// (guest address, size) of each RAM range.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut v = vec![(0, self.below_4g)];
        if self.above_4g > 0 {
            v.push((HIGH_RAM_START, self.above_4g));
        }
        v
    }

    pub fn total(&self) -> u64 {
        self.below_4g + self.above_4g
    }
}

/// The device-memory region where DIMMs go (`-m ...,slots=N,maxmem=MAX`), placed as QEMU's
/// `pc` places it: from the first GiB boundary after the RAM above 4 GiB, `maxmem - size`
/// bytes plus 1 GiB per slot (each DIMM may need aligning to a 1 GiB page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub base: u64,
    pub size: u64,
    /// What all DIMMs together may hold: `maxmem - size`.
    pub capacity: u64,
}

impl DeviceMemory {
    pub fn pc(ram: u64, slots: u32, maxmem: u64) -> Self {
        const GIB: u64 = 1 << 30;
        let layout = RamLayout::pc(ram);
        let capacity = maxmem.saturating_sub(ram);
        Self {
            base: (HIGH_RAM_START + layout.above_4g).next_multiple_of(GIB),
            size: capacity + GIB * u64::from(slots),
            capacity,
        }
    }

    /// The first address past the region.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// fw_cfg `etc/reserved-memory-end`: the region's end rounded up to a GiB (firmware
    /// puts 64-bit PCI BARs above it).
    pub fn reserved_end(&self) -> u64 {
        self.end().next_multiple_of(1 << 30)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("-m {size}M: cannot allocate guest RAM: {source}")]
    Allocate {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("-m {size}M: RAM size too large (troupe maps at most {max} GiB)", max = MAX_RAM >> 30)]
    TooLarge { size: u64 },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Backing(#[from] backing::BackingError),
}

/// Allocate guest RAM for `layout`, backed as `backing` says (anonymous memory, a file or
/// a memfd), preallocated and marked for KSM as it asks.
pub fn allocate(layout: &RamLayout, backing: &RamBacking) -> Result<GuestMemoryMmap, MemoryError> {
    let size_mib = layout.total() >> 20;
    if layout.total() > MAX_RAM {
        return Err(MemoryError::TooLarge { size: size_mib });
    }
    let ranges = layout.ranges();
    let sizes: Vec<u64> = ranges.iter().map(|r| r.1).collect();
    let mapped = backing::map(backing, &sizes, map_aligned)?;
    let mut regions = Vec::new();
    for ((addr, size), m) in ranges.into_iter().zip(mapped) {
        let builder = vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(
            size as usize,
            // A dirty bitmap sized to the region (the builder's default is empty, and would
            // record nothing).
            <vm_memory::bitmap::AtomicBitmap as vm_memory::bitmap::NewBitmap>::with_len(
                size as usize,
            ),
        )
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(m.flags)
        .with_hugetlbfs(m.hugetlb);
        let builder = match m.file {
            Some(f) => builder.with_file_offset(f),
            None => builder,
        };
        // SAFETY: `m.host` is a fresh mapping of `size` bytes that lives for the rest of the
        // process (guest RAM is never unmapped).
        let region = unsafe { builder.with_raw_mmap_pointer(m.host) }
            .build()
            .map_err(|e| MemoryError::Allocate {
                size: size_mib,
                source: vm_memory::mmap::FromRangesError::MmapRegion(e),
            })?;
        let r = devices::memory::GuestRegionMmap::new(region, GuestAddress(addr)).ok_or(
            MemoryError::Allocate {
                size: size_mib,
                source: vm_memory::mmap::FromRangesError::InvalidGuestRegion,
            },
        )?;
        regions.push(r);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Allocate {
        size: size_mib,
        source: vm_memory::mmap::FromRangesError::Collection(e),
    })?;
    for region in mem.iter() {
        let (host, len) = (region.as_ptr(), region.len() as usize);
        if backing.source == RamSource::Anonymous && !backing.share {
            // Transparent huge pages for guest RAM, as QEMU asks for them: fewer TLB misses
            // in the guest, and O_DIRECT block I/O into guest memory pins 2 MiB pages, not
            // 4 KiB.
            // SAFETY: the range is exactly one mapping owned by `mem`; MADV_HUGEPAGE
            // changes only how the kernel backs it.
            let r = unsafe { libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE) };
            if r != 0 {
                tracing::debug!(
                    "madvise(MADV_HUGEPAGE): {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        if backing.merge {
            backing::mark_mergeable(host, len);
        }
        if backing.prealloc {
            backing::prealloc(host, len)?;
        }
    }
    Ok(mem)
}

/// `-machine dump-guest-core=off`: leave guest RAM out of the host's core dumps of this
/// process (`MADV_DONTDUMP`, as QEMU does).
pub fn exclude_from_core_dumps(mem: &GuestMemoryMmap) -> std::io::Result<()> {
    for region in mem.iter() {
        // SAFETY: the range is exactly one mapping owned by `mem`; MADV_DONTDUMP changes
        // only what a core dump of the process contains.
        let r = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_DONTDUMP,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An anonymous mapping (`flags`) of `size` bytes starting on a 2 MiB boundary, so that
/// transparent huge pages can back all of it (QEMU aligns guest RAM the same way).
pub(crate) fn map_aligned(size: usize, flags: i32) -> std::io::Result<*mut u8> {
    const ALIGN: usize = 2 << 20;
    let total = size + ALIGN;
    // SAFETY: a new anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = p as usize;
    let aligned = start.next_multiple_of(ALIGN);
    // SAFETY: both ranges lie inside the mapping just made and outside [aligned, +size).
    unsafe {
        if aligned > start {
            libc::munmap(p, aligned - start);
        }
        let end = aligned + size;
        if start + total > end {
            libc::munmap(end as *mut libc::c_void, start + total - end);
        }
    }
    Ok(aligned as *mut u8)
}

/// Register RAM with KVM, leaving out the VGA window and the PAM segments
/// (0xA0000–0xFFFFF).
pub fn register(vm: &KvmVm, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    let hole = (VGA_WINDOW.0, super::firmware::SHADOW_END);
    for region in mem.iter() {
        let start = region.start_addr().0;
        let len = region.len();
        let host = region.as_ptr() as u64;
        if start <= hole.0 && start + len >= hole.1 {
            vm.map_ram(start, hole.0 - start, host, false, super::kvm::RAM_SLOT)?;
            if start + len > hole.1 {
                vm.map_ram(
                    hole.1,
                    start + len - hole.1,
                    host + (hole.1 - start),
                    false,
                    super::kvm::RAM_SLOT,
                )?;
            }
        } else {
            vm.map_ram(start, len, host, false, super::kvm::RAM_SLOT)?;
        }
    }
    Ok(())
}

/// Host address of guest RAM at guest address 0.
pub fn low_ram_host(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().0 == 0)
        .map_or(0, |r| r.as_ptr() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_stays_below_4g() {
        let l = RamLayout::pc(128 << 20);
        assert_eq!(l.ranges(), vec![(0, 128 << 20)]);
    }

    #[test]
    fn big_ram_splits_at_3g() {
        let l = RamLayout::pc(8 << 30);
        assert_eq!(l.ranges(), vec![(0, 3 << 30), (1 << 32, 5 << 30)]);
        let l = RamLayout::pc(0xDFF0_0000);
        assert_eq!(l.above_4g, 0);
    }
}
