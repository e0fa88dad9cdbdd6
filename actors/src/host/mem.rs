//! Host memory the guest sees directly (KVM memory slots): firmware images, video RAM.

use std::alloc::{alloc_zeroed, dealloc, Layout};

/// A page-aligned host buffer that lives as long as the VM (KVM slots point into it).
pub struct HostBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value; access is through KVM (guest
// reads) and `as_mut_slice` during set-up.
unsafe impl Send for HostBuffer {}
// SAFETY: as above; no interior mutability is exposed through shared references.
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    pub fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(4096), 4096).expect("page-aligned layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {len} bytes");
        Self { ptr, len }
    }

    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(4096), 4096).expect("layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, layout) };
    }
}

impl HostBuffer {
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the buffer's life. The guest may write
        // it concurrently through KVM (a framebuffer); readers tolerate torn values.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Mutable view for device models that write into guest-visible memory (the VGA's
    /// legacy window). Callers serialize through the owning device's lock.
    #[allow(clippy::mut_from_ref)]
    pub fn as_mut_slice_shared(&self) -> &mut [u8] {
        // SAFETY: as above; the only host writers hold the device lock that owns the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}
