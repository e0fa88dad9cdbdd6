//! KVM's coalesced MMIO ring: writes to registered MMIO zones (the legacy VGA window) are
//! queued by the kernel instead of exiting to userspace, and applied here, in order,
//! before any other exit is handled and before the display is rendered. The VGA BIOS
//! clearing video memory costs one ring entry per write instead of one ~8 µs exit.
//!
//! The ring is one page shared by the whole VM (mapped through any vCPU fd); a mutex
//! serialises the readers (vCPU threads and the VGA refresh actor).

use std::os::fd::RawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};

use crate::bus::Bus;

pub struct CoalescedRing {
    ring: *mut kvm_coalesced_mmio_ring,
    page: usize,
    max: u32,
    lock: Mutex<()>,
    mmio: Arc<Bus>,
}

// SAFETY: the ring page is shared memory written by the kernel and read here only under
// `lock`; the raw pointer stays valid until drop unmaps it.
unsafe impl Send for CoalescedRing {}
// SAFETY: as above; all accesses to the ring go through volatile reads/writes under `lock`.
unsafe impl Sync for CoalescedRing {}

impl CoalescedRing {
    /// Map the VM's ring through a vCPU fd; writes are applied to `mmio`.
    pub fn map(vcpu_fd: RawFd, mmio: Arc<Bus>) -> std::io::Result<Self> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: mapping a page of the vCPU fd at KVM's documented offset; the result is
        // checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu_fd,
                (KVM_COALESCED_MMIO_PAGE_OFFSET as usize * page) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let max = ((page - std::mem::size_of::<kvm_coalesced_mmio_ring>())
            / std::mem::size_of::<kvm_coalesced_mmio>()) as u32;
        Ok(Self {
            ring: p.cast(),
            page,
            max,
            lock: Mutex::new(()),
            mmio,
        })
    }

    fn indices(&self) -> (u32, u32) {
        // SAFETY: `ring` points at the mapped ring header; volatile because the kernel
        // writes `last` concurrently.
        unsafe {
            (
                std::ptr::addr_of!((*self.ring).first).read_volatile(),
                std::ptr::addr_of!((*self.ring).last).read_volatile(),
            )
        }
    }

    /// Apply every queued write, oldest first. Cheap when the ring is empty.
    pub fn drain(&self) {
        let (first, last) = self.indices();
        if first == last {
            return;
        }
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (first, last) = self.indices();
            if first == last || first >= self.max {
                return;
            }
            fence(Ordering::Acquire);
            // SAFETY: `first < max`, so the entry lies inside the mapped page.
            let e = unsafe {
                std::ptr::addr_of!((*self.ring).coalesced_mmio)
                    .cast::<kvm_coalesced_mmio>()
                    .add(first as usize)
                    .read_volatile()
            };
            let len = (e.len as usize).min(e.data.len());
            self.mmio.write(e.phys_addr, &e.data[..len]);
            fence(Ordering::Release);
            // SAFETY: as in `indices`; only this (locked) reader advances `first`.
            unsafe {
                std::ptr::addr_of_mut!((*self.ring).first).write_volatile((first + 1) % self.max)
            };
        }
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `map`, which nothing references any more.
        unsafe { libc::munmap(self.ring.cast(), self.page) };
    }
}
