//! COM1 (16550 at 0x3F8): byte output polling LSR.THRE before each byte, input polling
//! LSR.DR, and the `print!`/`println!` macros (one spin lock so lines from several CPUs do
//! not interleave).

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::io::{inb, outb};

/// COM1's I/O base.
pub const COM1: u16 = 0x3F8;
const THR: u16 = COM1;
const IER: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2;
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;

static LOCK: AtomicBool = AtomicBool::new(false);

/// 115200 8N1, FIFOs on, no UART interrupts.
pub fn init() {
    outb(IER, 0x00);
    outb(LCR, 0x80);
    outb(THR, 0x01);
    outb(IER, 0x00);
    outb(LCR, 0x03);
    outb(FCR, 0x07);
    outb(MCR, 0x03);
}

/// Writes one byte once the transmitter holding register is empty. A missing UART reads
/// 0xFF, so this never hangs.
pub fn write_byte(b: u8) {
    while inb(LSR) & LSR_THRE == 0 {
        core::hint::spin_loop();
    }
    outb(THR, b);
}

/// Writes `bytes`, turning `\n` into `\r\n`.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            write_byte(b'\r');
        }
        write_byte(b);
    }
}

/// A received byte, if one is waiting (LSR.DR). Returns `None` when no UART is present
/// (LSR reads 0xFF).
pub fn try_read_byte() -> Option<u8> {
    let lsr = inb(LSR);
    if lsr != 0xFF && lsr & LSR_DR != 0 {
        Some(inb(THR))
    } else {
        None
    }
}

/// Writer for `core::fmt` (not locked: use the macros, which lock).
pub struct Writer;

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Holds the output lock while alive.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        LOCK.store(false, Ordering::Release);
    }
}

/// Takes the output lock.
pub fn lock() -> Guard {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    Guard(())
}

/// Drops the output lock whoever holds it (exception and panic paths, which must print).
pub fn force_unlock() {
    LOCK.store(false, Ordering::Release);
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _g = lock();
    let _ = fmt::write(&mut Writer, args);
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints a line to COM1 (`\r\n` line ends).
#[macro_export]
macro_rules! println {
    () => { $crate::serial::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
