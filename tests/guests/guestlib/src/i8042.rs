//! i8042 keyboard controller by polling (status port 0x64, data port 0x60), and set-1
//! scancode decoding. Never relies on interrupts.

use crate::io::{inb, outb};

pub const DATA: u16 = 0x60;
pub const STATUS: u16 = 0x64;
pub const STATUS_OBF: u8 = 0x01;
pub const STATUS_IBF: u8 = 0x02;
pub const STATUS_AUX: u8 = 0x20;

/// The status register.
pub fn status() -> u8 {
    inb(STATUS)
}

/// False when nothing answers at 0x64 (reads 0xFF).
pub fn present() -> bool {
    status() != 0xFF
}

/// One byte from the output buffer (keyboard or aux), if any.
pub fn try_read() -> Option<u8> {
    let s = status();
    (s != 0xFF && s & STATUS_OBF != 0).then(|| inb(DATA))
}

/// One keyboard byte, discarding aux (mouse) bytes.
pub fn try_read_kbd() -> Option<u8> {
    loop {
        let s = status();
        if s == 0xFF || s & STATUS_OBF == 0 {
            return None;
        }
        let b = inb(DATA);
        if s & STATUS_AUX == 0 {
            return Some(b);
        }
    }
}

/// Turns on the controller's set-2 → set-1 translation (command byte bit 6), as a PC BIOS
/// leaves it; under direct boot there is no BIOS, so drivers that want set 1 ask for it.
/// Returns false when the controller did not answer.
pub fn enable_translation() -> bool {
    flush();
    if !write_command(0x20) {
        return false;
    }
    let mut cb = None;
    for _ in 0..100_000 {
        if let Some(b) = try_read() {
            cb = Some(b);
            break;
        }
        core::hint::spin_loop();
    }
    let Some(cb) = cb else { return false };
    write_command(0x60) && write_data(cb | 0x40)
}

/// Enables the aux port and the mouse's data reporting (controller command 0xA8, then
/// 0xD4 0xF4 to the mouse); true once the mouse acknowledged (0xFA).
pub fn enable_mouse() -> bool {
    if !write_command(0xA8) || !write_command(0xD4) || !write_data(0xF4) {
        return false;
    }
    for _ in 0..1_000_000 {
        let s = status();
        if s & STATUS_OBF != 0 {
            let b = inb(DATA);
            if s & STATUS_AUX != 0 && b == 0xFA {
                return true;
            }
        }
        core::hint::spin_loop();
    }
    false
}

/// One byte from the output buffer with whether it came from the aux (mouse) port.
pub fn try_read_tagged() -> Option<(u8, bool)> {
    let s = status();
    (s != 0xFF && s & STATUS_OBF != 0).then(|| (inb(DATA), s & STATUS_AUX != 0))
}

/// Drops whatever is waiting.
pub fn flush() {
    for _ in 0..64 {
        if try_read().is_none() {
            break;
        }
    }
}

fn wait_input_empty() -> bool {
    for _ in 0..100_000 {
        if status() & STATUS_IBF == 0 {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Sends a controller command (port 0x64).
pub fn write_command(cmd: u8) -> bool {
    wait_input_empty() && {
        outb(STATUS, cmd);
        true
    }
}

/// Sends a data byte (port 0x60) to the keyboard.
pub fn write_data(b: u8) -> bool {
    wait_input_empty() && {
        outb(DATA, b);
        true
    }
}

/// Set-1 make code → ASCII for letters, digits, space, enter (`\n`) and backspace (0x08);
/// upper case / shifted digits when `shift`.
pub fn set1_to_ascii(code: u8, shift: bool) -> Option<u8> {
    const ROW1: &[u8] = b"1234567890";
    const ROW1_SHIFT: &[u8] = b"!@#$%^&*()";
    const QWERTY: &[u8] = b"qwertyuiop";
    const ASDF: &[u8] = b"asdfghjkl";
    const ZXCV: &[u8] = b"zxcvbnm";
    let c = match code {
        0x02..=0x0B => {
            let i = (code - 0x02) as usize;
            return Some(if shift { ROW1_SHIFT[i] } else { ROW1[i] });
        }
        0x10..=0x19 => QWERTY[(code - 0x10) as usize],
        0x1E..=0x26 => ASDF[(code - 0x1E) as usize],
        0x2C..=0x32 => ZXCV[(code - 0x2C) as usize],
        0x39 => return Some(b' '),
        0x1C => return Some(b'\n'),
        0x0E => return Some(0x08),
        _ => return None,
    };
    Some(if shift { c.to_ascii_uppercase() } else { c })
}
