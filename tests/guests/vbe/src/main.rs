//! vbe: switches the std VGA to a Bochs VBE mode (default 1024x768x32) and draws a test
//! picture into the linear framebuffer from ring 3: four quadrants (red, green, blue,
//! white) and a yellow diagonal. Prints `vbe: drawn WxHxBPP at 0x<lfb>` on COM1, then waits
//! `hold=SECONDS` (default 30) and exits 0. Without a std VGA: `vbe: no std VGA`, exit 3.
//!
//! Command line: `mode=WxH` (32 bpp), `wait=SECONDS` before switching, `hold=SECONDS`.

#![no_std]
#![no_main]

use guestlib::io::{inw, outw};
use guestlib::time::Deadline;
use guestlib::{pci, println, BootInfo};

guestlib::entry!(main);

fn dispi(index: u16, value: u16) {
    outw(0x1ce, index);
    outw(0x1cf, value);
}

fn dispi_read(index: u16) -> u16 {
    outw(0x1ce, index);
    inw(0x1cf)
}

/// The colour of pixel (x, y) in the test picture.
pub fn pattern(x: u32, y: u32, w: u32, h: u32) -> u32 {
    if x * h / w == y {
        return 0x00ff_ff00;
    }
    match (x < w / 2, y < h / 2) {
        (true, true) => 0x00ff_0000,
        (false, true) => 0x0000_ff00,
        (true, false) => 0x0000_00ff,
        (false, false) => 0x00ff_ffff,
    }
}

fn main(boot: &BootInfo) -> u32 {
    let (w, h) = boot
        .arg("mode")
        .and_then(|m| {
            let (a, b) = m.split_once('x')?;
            Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
        })
        .unwrap_or((1024, 768));
    let Some((dev, func)) = pci::find(0x1234, 0x1111) else {
        println!("vbe: no std VGA");
        return 3;
    };
    dispi(0, 0xb0c5);
    if dispi_read(0) != 0xb0c5 {
        println!("vbe: no Bochs VBE interface");
        return 3;
    }
    let lfb = pci::mem_bar(dev, func, 0, 0xe000_0000);
    // `wait=SECONDS`: stay in text mode first (lets a viewer connect before the switch).
    let wait = boot.arg_u64("wait").unwrap_or(0);
    if wait > 0 {
        println!("vbe: waiting {wait} s in text mode");
        let d = Deadline::after_ms(wait * 1000);
        while !d.expired() {
            core::hint::spin_loop();
        }
    }
    dispi(4, 0); // disable
    dispi(1, w as u16);
    dispi(2, h as u16);
    dispi(3, 32);
    dispi(4, 0x41); // enable | LFB
    for y in 0..h {
        for x in 0..w {
            let addr = lfb + u64::from((y * w + x) * 4);
            guestlib::phys::mmio_write32(addr, pattern(x, y, w, h));
        }
    }
    println!("vbe: drawn {w}x{h}x32 at {lfb:#x}");
    let hold = boot.arg_u64("hold").unwrap_or(30);
    let d = Deadline::after_ms(hold * 1000);
    while !d.expired() {
        core::hint::spin_loop();
    }
    0
}
