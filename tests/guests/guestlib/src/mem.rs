//! The C memory functions the compiler may call (`-nodefaultlibs` leaves them undefined).
//! `rep movsb`/`rep stosb` run natively in ring 3.

/// # Safety
/// Standard `memcpy` contract: valid, non-overlapping regions of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller upholds memcpy's contract; rep movsb copies exactly n bytes forward.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        )
    };
    dest
}

/// # Safety
/// Standard `memmove` contract: valid regions of `n` bytes, possibly overlapping.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when dest is below src or the regions are disjoint.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: overlapping with dest above src: copy backwards from the last byte (DF set
    // for the copy only and cleared again, as the ABI requires).
    unsafe {
        core::arch::asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack),
        )
    };
    dest
}

/// # Safety
/// Standard `memset` contract: a valid region of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller upholds memset's contract; rep stosb writes exactly n bytes.
    unsafe {
        core::arch::asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") c as u8,
            options(nostack, preserves_flags),
        )
    };
    dest
}

/// # Safety
/// Standard `memcmp` contract: two valid regions of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and both regions are n bytes long.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// Standard `bcmp` contract: two valid regions of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
