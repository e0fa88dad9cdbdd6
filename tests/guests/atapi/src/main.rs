//! atapi: drives the CD-ROM on the secondary IDE master through the PACKET protocol (PIO,
//! polled, interrupts off) and reports what it reads and every medium change it is told
//! about, so a test can swap the disc at the monitor and see the guest notice.
//!
//! Loop (every 10 ms): TEST UNIT READY; on CHECK CONDITION, REQUEST SENSE; GET EVENT
//! STATUS NOTIFICATION (media class). After a CHECK CONDITION (and at the start), once the
//! unit is ready again, READ(10) of block 16 (an ISO 9660 primary volume descriptor) and
//! its volume id.
//!
//! Command line: `lock=1` locks the tray (PREVENT ALLOW MEDIUM REMOVAL) after the first
//! volume read; `stop=<volume id>` ends the run when that volume is read; `timeout=SECONDS`
//! (default 60).
//! Output: `atapi: ready` (drive found), `atapi: sense KK/AA/QQ` (hex) each time the
//! condition differs from the last one reported, `atapi: media event <code> status
//! <status>` for each GESN media event (code 1 eject request, 2 new medium; status 0 no
//! medium, 1 tray open, 2 medium present), `atapi: volume <id>` (`atapi: not iso` if block
//! 16 holds no volume descriptor), `atapi: locked`, `atapi: stop`, `atapi: timeout`,
//! `atapi: no cd-rom`, `atapi: stuck <what>` (the drive stayed busy).
//! Exit: 0 after the stop volume, 2 on timeout, 3 without a CD-ROM, 4 stuck.

#![no_std]
#![no_main]

use guestlib::io::{inb, inw, outb, outw};
use guestlib::time::{delay_us, Deadline};
use guestlib::{println, BootInfo};

guestlib::entry!(main);

const BASE: u16 = 0x170;
const CTL: u16 = 0x376;
const BSY: u8 = 0x80;
const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;

/// How a packet command ended.
enum Outcome {
    Ok(usize),
    /// CHECK CONDITION (sense key from the error register).
    Check,
    Stuck,
}

fn wait_not_busy() -> Option<u8> {
    let d = Deadline::after_ms(5000);
    loop {
        let s = inb(BASE + 7);
        if s & BSY == 0 {
            return Some(s);
        }
        if d.expired() {
            return None;
        }
    }
}

/// Send `cdb`; data in goes to `buf`. PIO, byte-count limit = buf size (at least 2).
fn packet(cdb: &[u8; 12], buf: &mut [u8]) -> Outcome {
    outb(BASE + 6, 0xa0);
    if wait_not_busy().is_none() {
        return Outcome::Stuck;
    }
    let limit = buf.len().clamp(2, 0xfffe) as u16;
    outb(BASE + 1, 0);
    outb(BASE + 4, limit as u8);
    outb(BASE + 5, (limit >> 8) as u8);
    outb(BASE + 7, 0xa0);
    let d = Deadline::after_ms(5000);
    loop {
        let s = inb(BASE + 7);
        if s & BSY == 0 && s & DRQ != 0 {
            break;
        }
        if s & BSY == 0 && s & ERR != 0 {
            return Outcome::Check;
        }
        if d.expired() {
            return Outcome::Stuck;
        }
    }
    for pair in cdb.chunks(2) {
        outw(BASE, u16::from_le_bytes([pair[0], pair[1]]));
    }
    let mut got = 0;
    loop {
        let Some(s) = wait_not_busy() else {
            return Outcome::Stuck;
        };
        if s & ERR != 0 {
            return Outcome::Check;
        }
        if s & DRQ == 0 {
            return Outcome::Ok(got);
        }
        let n = usize::from(inb(BASE + 4)) | usize::from(inb(BASE + 5)) << 8;
        for _ in 0..n.div_ceil(2) {
            let w = inw(BASE).to_le_bytes();
            for b in w {
                if got < buf.len() {
                    buf[got] = b;
                }
                got += 1;
            }
        }
    }
}

fn main(boot: &BootInfo) -> u32 {
    let timeout = boot.arg_u64("timeout").unwrap_or(60);
    let lock = boot.arg_u64("lock") == Some(1);
    let stop = boot.arg("stop");
    // Interrupts off at the device too (nIEN): everything is polled.
    outb(CTL, 0x02);
    // DEVICE RESET puts the packet signature in the cylinder registers (firmware may
    // have used the drive since power-on).
    outb(BASE + 6, 0xa0);
    outb(BASE + 7, 0x08);
    delay_us(1000);
    let _ = wait_not_busy();
    if (inb(BASE + 4), inb(BASE + 5)) != (0x14, 0xeb) {
        println!("atapi: no cd-rom");
        return 3;
    }
    println!("atapi: ready");
    let deadline = Deadline::after_ms(timeout.saturating_mul(1000));
    let mut last_sense: Option<[u8; 3]> = None;
    let mut need_read = true;
    let mut locked = false;
    let mut buf = [0u8; 2048];
    loop {
        if deadline.expired() {
            println!("atapi: timeout");
            return 2;
        }
        match packet(&[0; 12], &mut buf[..2]) {
            Outcome::Stuck => {
                println!("atapi: stuck test unit ready");
                return 4;
            }
            Outcome::Check => {
                let mut s = [0u8; 18];
                let mut rs = [0u8; 12];
                rs[0] = 0x03;
                rs[4] = 18;
                if !matches!(packet(&rs, &mut s), Outcome::Ok(_)) {
                    println!("atapi: stuck request sense");
                    return 4;
                }
                let sense = [s[2] & 0x0f, s[12], s[13]];
                if last_sense != Some(sense) {
                    println!(
                        "atapi: sense {:02x}/{:02x}/{:02x}",
                        sense[0], sense[1], sense[2]
                    );
                    last_sense = Some(sense);
                }
                need_read = true;
            }
            Outcome::Ok(_) if need_read => {
                let mut read = [0u8; 12];
                read[0] = 0x28;
                read[5] = 16;
                read[8] = 1;
                match packet(&read, &mut buf) {
                    Outcome::Ok(n) if n >= 2048 => {
                        need_read = false;
                        last_sense = None;
                        if &buf[1..6] == b"CD001" {
                            let id = core::str::from_utf8(&buf[40..72]).unwrap_or("?").trim_end();
                            println!("atapi: volume {id}");
                            if stop == Some(id) {
                                println!("atapi: stop");
                                return 0;
                            }
                        } else {
                            println!("atapi: not iso");
                        }
                        if lock && !locked {
                            let mut prevent = [0u8; 12];
                            prevent[0] = 0x1e;
                            prevent[4] = 1;
                            if matches!(packet(&prevent, &mut buf[..2]), Outcome::Ok(_)) {
                                locked = true;
                                println!("atapi: locked");
                            }
                        }
                    }
                    Outcome::Stuck => {
                        println!("atapi: stuck read");
                        return 4;
                    }
                    // A check condition here is seen by the next TEST UNIT READY.
                    _ => {}
                }
            }
            Outcome::Ok(_) => {}
        }
        let mut gesn = [0u8; 12];
        gesn[0] = 0x4a;
        gesn[1] = 1;
        gesn[4] = 0x10;
        gesn[8] = 8;
        let mut e = [0u8; 8];
        if let Outcome::Ok(n) = packet(&gesn, &mut e) {
            if n >= 6 && e[2] & 0x07 == 4 && e[4] & 0x0f != 0 {
                println!("atapi: media event {} status {}", e[4] & 0x0f, e[5]);
            }
        }
        delay_us(10_000);
    }
}
