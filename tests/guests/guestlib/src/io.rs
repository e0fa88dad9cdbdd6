//! Port I/O. Works in ring 3: every CPU's TSS carries an all-zero I/O permission bitmap
//! (and RFLAGS.IOPL is 3 where the host honours it).

/// Reads a byte from `port`.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port reads have no memory effects visible to Rust; the TSS I/O bitmap permits them.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes a byte to `port`.
#[inline(always)]
pub fn outb(port: u16, v: u8) {
    // SAFETY: as for `inb`.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a word from `port`.
#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as for `inb`.
    unsafe {
        core::arch::asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes a word to `port`.
#[inline(always)]
pub fn outw(port: u16, v: u16) {
    // SAFETY: as for `inb`.
    unsafe {
        core::arch::asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a dword from `port`.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `inb`.
    unsafe {
        core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes a dword to `port`.
#[inline(always)]
pub fn outl(port: u16, v: u32) {
    // SAFETY: as for `inb`.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}

/// `count` byte writes of `value` to `port`, back to back, from ring 3.
#[inline(never)]
pub fn out_loop(port: u16, value: u8, count: u64) {
    if count == 0 {
        return;
    }
    // SAFETY: only port writes and the two named registers change.
    unsafe {
        core::arch::asm!(
            "2:",
            "out dx, al",
            "dec rcx",
            "jnz 2b",
            in("dx") port,
            in("al") value,
            inout("rcx") count => _,
            options(nomem, nostack),
        )
    };
}
