//! usb: a ring-3 UHCI driver (polled, no interrupts) that enumerates the HID device on
//! root port 1 of the PIIX3 USB controller and prints every report it sends.
//!
//! Command line: `wait=SECONDS` (default 30) how long to poll, `clicks=N` (default 1)
//! left-button clicks to wait for.
//! Output: `usb: uhci at DD.F io=0xPORT`, `usb: port 1 connected`, `usb: device
//! VVVV:PPPP 'PRODUCT' class C protocol P` (from the device and interface descriptors and
//! the product string), `usb: device serial 'SERIAL'`, `usb: device descriptor <hex>`, `usb: configuration <hex>` and
//! `usb: report descriptor <hex>` (every byte, two hex digits each), `usb: ready` once
//! it polls the interrupt endpoint, then per
//! report from a tablet `usb: x=X y=Y buttons=0xB wheel=W` (from a mouse `usb: dx=.. dy=..
//! buttons=.. wheel=..`, from a keyboard `usb: keys MM KK KK ..`), and `usb: click at x=X
//! y=Y` when the left button goes up.
//! Exit: 1 after `clicks` clicks, 2 on timeout, 3 without a controller, 4 without a
//! device on port 1, 5 when a transfer fails (`usb: ... failed: status 0x...`).

#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};

use guestlib::io::{inw, outl, outw};
use guestlib::time::{delay_us, Deadline};
use guestlib::{pci, println, BootInfo};

guestlib::entry!(main);

/// Identity-mapped RAM the controller reads and writes (needs -m 64 or more).
const BASE: u64 = 0x0200_0000;
const FRAME_LIST: u64 = BASE;
const QH: u64 = BASE + 0x1000;
const TDS: u64 = BASE + 0x1100;
const SETUP_BUF: u64 = BASE + 0x1400;
const DATA: u64 = BASE + 0x1500;

// UHCI 1.1 registers and bits.
const USBCMD: u16 = 0;
const USBINTR: u16 = 4;
const FRNUM: u16 = 6;
const FLBASEADD: u16 = 8;
const PORTSC1: u16 = 0x10;
const CMD_RS: u16 = 1;
const CMD_HCRESET: u16 = 2;
const PORT_CCS: u16 = 1;
const PORT_PED: u16 = 4;
const PORT_PR: u16 = 0x200;
const TD_ACTIVE: u32 = 1 << 23;
const TD_ERRORS: u32 = 0x7e << 16;
const TD_CERR3: u32 = 3 << 27;
const LINK_T: u32 = 1;
const LINK_QH: u32 = 2;
const LINK_DEPTH: u32 = 4;
const PID_SETUP: u32 = 0x2d;
const PID_IN: u32 = 0x69;
const PID_OUT: u32 = 0xe1;

fn rd(a: u64) -> u32 {
    // SAFETY: `a` is in the identity-mapped RAM this guest owns (BASE..BASE + 8 KiB).
    unsafe { read_volatile(a as *const u32) }
}

fn wr(a: u64, v: u32) {
    // SAFETY: as in `rd`.
    unsafe { write_volatile(a as *mut u32, v) }
}

fn rd8(a: u64) -> u8 {
    // SAFETY: as in `rd`.
    unsafe { read_volatile(a as *const u8) }
}

fn wr8(a: u64, v: u8) {
    // SAFETY: as in `rd`.
    unsafe { write_volatile(a as *mut u8, v) }
}

/// A TD's token (UHCI 1.1 §3.2.3): PID, device address, endpoint, data toggle, length.
#[derive(Clone, Copy)]
struct Token {
    pid: u32,
    dev: u8,
    ep: u8,
    toggle: u32,
    len: u32,
}

/// Fill TD `i` for `t` on `buf`: link to the next one depth first (or terminate), active.
fn td(i: u64, last: bool, t: Token, buf: u64) -> u64 {
    let Token {
        pid,
        dev,
        ep,
        toggle,
        len,
    } = t;
    let a = TDS + 32 * i;
    let link = if last {
        LINK_T
    } else {
        (TDS + 32 * (i + 1)) as u32 | LINK_DEPTH
    };
    wr(a, link);
    wr(
        a + 8,
        (len.wrapping_sub(1) & 0x7ff) << 21
            | toggle << 19
            | u32::from(ep) << 15
            | u32::from(dev) << 8
            | pid,
    );
    wr(a + 12, buf as u32);
    wr(a + 4, TD_ACTIVE | TD_CERR3);
    a
}

/// A control transfer on device `dev`: SETUP, `len` bytes IN in 8-byte packets (to DATA),
/// then the status stage. Err(status) names the TD that failed.
fn control(dev: u8, setup: [u8; 8]) -> Result<(), u32> {
    let len = u32::from(u16::from_le_bytes([setup[6], setup[7]]));
    for (i, b) in setup.iter().enumerate() {
        wr8(SETUP_BUF + i as u64, *b);
    }
    td(
        0,
        false,
        Token {
            pid: PID_SETUP,
            dev,
            ep: 0,
            toggle: 0,
            len: 8,
        },
        SETUP_BUF,
    );
    let packets = len.div_ceil(8);
    for p in 0..packets {
        let n = (len - 8 * p).min(8);
        let t = Token {
            pid: PID_IN,
            dev,
            ep: 0,
            toggle: (p + 1) & 1,
            len: n,
        };
        td(1 + u64::from(p), false, t, DATA + 8 * u64::from(p));
    }
    let status_pid = if len > 0 { PID_OUT } else { PID_IN };
    let last = td(
        1 + u64::from(packets),
        true,
        Token {
            pid: status_pid,
            dev,
            ep: 0,
            toggle: 1,
            len: 0,
        },
        DATA,
    );
    wr(QH + 4, TDS as u32);
    // Generous: QEMU's UHCI, busy on a loaded two-core host, once took over 2 s for a TD.
    let deadline = Deadline::after_ms(10_000);
    loop {
        for i in 0..=u64::from(packets) + 1 {
            let c = rd(TDS + 32 * i + 4);
            if c & TD_ACTIVE == 0 && c & TD_ERRORS != 0 {
                wr(QH + 4, LINK_T);
                return Err(c);
            }
        }
        if rd(last + 4) & TD_ACTIVE == 0 {
            return Ok(());
        }
        if deadline.expired() {
            wr(QH + 4, LINK_T);
            return Err(rd(last + 4));
        }
    }
}

fn setup(rt: u8, req: u8, value: u16, index: u16, len: u16) -> [u8; 8] {
    let [v0, v1] = value.to_le_bytes();
    let [i0, i1] = index.to_le_bytes();
    let [l0, l1] = len.to_le_bytes();
    [rt, req, v0, v1, i0, i1, l0, l1]
}

/// `usb: WHAT <hex of the first len bytes of DATA>`.
fn dump(what: &str, len: u64) {
    guestlib::print!("usb: {what} ");
    for i in 0..len {
        guestlib::print!("{:02x}", rd8(DATA + i));
    }
    println!();
}

/// String descriptor `index` (US English) as ASCII: its length, then all of it.
fn string(index: u8) -> Option<([u8; 32], usize)> {
    let desc = |len| control(1, setup(0x80, 6, 0x0300 | u16::from(index), 0x409, len));
    check("string length", desc(2)).ok()?;
    let slen = u16::from(rd8(DATA)).min(64);
    check("string", desc(slen)).ok()?;
    let mut s = [0u8; 32];
    let mut n = 0;
    for i in (2..u64::from(slen)).step_by(2) {
        if n < s.len() {
            s[n] = rd8(DATA + i);
            n += 1;
        }
    }
    Some((s, n))
}

fn check(what: &str, r: Result<(), u32>) -> Result<(), u32> {
    if let Err(s) = r {
        println!("usb: {what} failed: status 0x{s:08x}");
    }
    r
}

fn main(boot: &BootInfo) -> u32 {
    let wait = boot.arg_u64("wait").unwrap_or(30);
    let clicks = boot.arg_u64("clicks").unwrap_or(1);
    let Some((d, f)) = pci::find(0x8086, 0x7020) else {
        println!("usb: no uhci");
        return 3;
    };
    // BAR4: program one under direct boot; enable I/O decoding and bus mastering.
    let mut bar = pci::read32(d, f, 0x20) & !3;
    if bar == 0 {
        pci::write32(d, f, 0x20, 0xc000);
        bar = pci::read32(d, f, 0x20) & !3;
    }
    let cmd = pci::read32(d, f, 0x04);
    pci::write32(d, f, 0x04, cmd | 0x5);
    let io = bar as u16;
    println!("usb: uhci at {d:02x}.{f} io=0x{io:04x}");
    outw(io + USBCMD, CMD_HCRESET);
    let reset = Deadline::after_ms(100);
    while inw(io + USBCMD) & CMD_HCRESET != 0 && !reset.expired() {}
    outw(io + USBINTR, 0);
    for i in 0..1024 {
        wr(FRAME_LIST + 4 * i, QH as u32 | LINK_QH);
    }
    wr(QH, LINK_T);
    wr(QH + 4, LINK_T);
    outl(io + FLBASEADD, FRAME_LIST as u32);
    outw(io + FRNUM, 0);
    outw(io + USBCMD, CMD_RS);
    if inw(io + PORTSC1) & PORT_CCS == 0 {
        println!("usb: no device on port 1");
        return 4;
    }
    outw(io + PORTSC1, PORT_PR);
    delay_us(50_000);
    outw(io + PORTSC1, 0);
    delay_us(1_000);
    outw(io + PORTSC1, PORT_PED);
    delay_us(1_000);
    println!("usb: port 1 connected");

    let desc = |dev, ty: u16, index, len| control(dev, setup(0x80, 6, ty << 8 | index, 0, len));
    if check("device descriptor", desc(0, 1, 0, 18)).is_err()
        || check("set address", control(0, setup(0, 5, 1, 0, 0))).is_err()
    {
        return 5;
    }
    delay_us(2_000);
    if check("device descriptor", desc(1, 1, 0, 18)).is_err() {
        return 5;
    }
    let word = |a: u64| u16::from_le_bytes([rd8(a), rd8(a + 1)]);
    let (vendor, product, iproduct) = (word(DATA + 8), word(DATA + 10), rd8(DATA + 15));
    dump("device descriptor", 18);
    let iserial = rd8(DATA + 16);
    let Some((name, name_len)) = string(iproduct) else {
        return 5;
    };
    let Some((serial, serial_len)) = string(iserial) else {
        return 5;
    };
    let serial = core::str::from_utf8(&serial[..serial_len]).unwrap_or("?");
    println!("usb: device serial '{serial}'");
    if check("configuration", desc(1, 2, 0, 34)).is_err() {
        return 5;
    }
    let (class, protocol) = (rd8(DATA + 9 + 5), rd8(DATA + 9 + 7));
    let report_len = word(DATA + 18 + 7);
    let name = core::str::from_utf8(&name[..name_len]).unwrap_or("?");
    println!("usb: device {vendor:04x}:{product:04x} '{name}' class {class} protocol {protocol}");
    dump("configuration", 34);
    if check(
        "report descriptor",
        control(1, setup(0x81, 6, 0x2200, 0, report_len.min(128))),
    )
    .is_err()
    {
        return 5;
    }
    dump("report descriptor", u64::from(report_len.min(128)));
    if check("set configuration", control(1, setup(0, 9, 1, 0, 0))).is_err()
        || check("set idle", control(1, setup(0x21, 0x0a, 0, 0, 0))).is_err()
    {
        return 5;
    }
    let tablet = name.contains("Tablet");
    let keyboard = name.contains("Keyboard");

    // Poll endpoint 1 through one TD, re-armed after each report.
    let deadline = Deadline::after_ms(wait.saturating_mul(1000));
    let mut toggle = 0;
    let arm = |toggle| {
        let a = td(
            0,
            true,
            Token {
                pid: PID_IN,
                dev: 1,
                ep: 1,
                toggle,
                len: 8,
            },
            DATA,
        );
        wr(QH + 4, a as u32);
        a
    };
    let mut t = arm(toggle);
    println!("usb: ready");
    let (mut held, mut seen) = (false, 0);
    loop {
        let c = rd(t + 4);
        if c & TD_ACTIVE == 0 {
            if c & TD_ERRORS != 0 {
                println!("usb: interrupt in failed: status 0x{c:08x}");
                return 5;
            }
            let b = |i| rd8(DATA + i);
            if tablet {
                let x = u16::from_le_bytes([b(1), b(2)]);
                let y = u16::from_le_bytes([b(3), b(4)]);
                let (buttons, wheel) = (b(0), b(5) as i8);
                println!("usb: x={x} y={y} buttons=0x{buttons:x} wheel={wheel}");
                if buttons & 1 != 0 {
                    held = true;
                } else if held {
                    held = false;
                    seen += 1;
                    println!("usb: click at x={x} y={y}");
                    if seen >= clicks {
                        return 1;
                    }
                }
            } else if keyboard {
                println!(
                    "usb: keys {:02x} {:02x} {:02x} {:02x} {:02x} {:02x} {:02x}",
                    b(0),
                    b(2),
                    b(3),
                    b(4),
                    b(5),
                    b(6),
                    b(7)
                );
            } else {
                println!(
                    "usb: dx={} dy={} buttons=0x{:x} wheel={}",
                    b(1) as i8,
                    b(2) as i8,
                    b(0),
                    b(3) as i8
                );
            }
            toggle ^= 1;
            t = arm(toggle);
        } else if deadline.expired() {
            println!("usb: timeout");
            return 2;
        }
    }
}
