//! Reads and writes of physical memory. Everything below 4 GiB is identity-mapped and
//! user-accessible, so a physical address is a pointer; volatile accesses keep the compiler
//! from caching loader tables or MMIO.

/// Reads a byte at physical address `addr` (< 4 GiB).
pub fn read_u8(addr: u64) -> u8 {
    // SAFETY: 0..4 GiB is identity-mapped and readable from ring 3; a read of RAM or an
    // MMIO hole has no effect Rust can observe.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Reads a little-endian u16 (unaligned allowed).
pub fn read_u16(addr: u64) -> u16 {
    u16::from_le_bytes([read_u8(addr), read_u8(addr + 1)])
}

/// Reads a little-endian u32 (unaligned allowed).
pub fn read_u32(addr: u64) -> u32 {
    if addr.is_multiple_of(4) {
        // SAFETY: as for `read_u8`, and the address is aligned.
        return unsafe { core::ptr::read_volatile(addr as *const u32) };
    }
    u32::from_le_bytes([
        read_u8(addr),
        read_u8(addr + 1),
        read_u8(addr + 2),
        read_u8(addr + 3),
    ])
}

/// Reads a little-endian u64 (unaligned allowed).
pub fn read_u64(addr: u64) -> u64 {
    read_u32(addr) as u64 | ((read_u32(addr + 4) as u64) << 32)
}

/// Aligned 32-bit MMIO read.
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: identity-mapped, user-accessible; the caller names a device register.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Aligned 32-bit MMIO write.
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: identity-mapped, user-accessible; the caller names a device register.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Writes a u16 at physical address `addr` (VGA text cells).
pub fn write_u16(addr: u64, v: u16) {
    // SAFETY: identity-mapped, user-accessible; the caller names memory nothing in Rust
    // owns (device memory or free low RAM).
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}

/// Copies `bytes` to physical address `addr`, which must be RAM nothing in Rust owns.
pub fn copy_to(addr: u64, bytes: &[u8]) {
    // SAFETY: the caller picks free RAM (e.g. the AP trampoline page); identity-mapped.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) }
}
