//! demo: the guest `troupe` boots when run without arguments. Starts every vCPU, each
//! counting in ring 3; the BSP draws a VGA text screen (0xB8000, 80x25) with a title, the
//! CMOS RTC clock, per-vCPU counters, keys typed on the PS/2 keyboard and bytes received
//! on COM1, redrawn four times a second and at once when a key is typed. Bytes received on
//! COM1 are echoed back.
//!
//! Command line: `redraw_ms=N` (default 250), `tick_ms=N` (default 0: no ticks).
//! Serial output: `troupe demo guest: <n> vCPU(s), <m> MiB`, then
//! `demo: serial input is echoed; Ctrl-D exits`, `demo: <k>/<n> vCPUs running`; afterwards
//! the echo of each received byte (CR becomes CR LF), `demo: key <c>` for each key typed
//! on the PS/2 keyboard, and `demo: bye` before exiting with code 0 on Ctrl-D (0x04);
//! with `tick_ms=N`, `demo: tick <k>` every N ms (k counts from 1, so a guest that goes
//! on where it stopped, e.g. after a restore, is told from one that started again).
//! The ACPI power button (the FADT's PM1a block) is looked at with every redraw: when
//! pressed, `demo: power button, powering off` and the machine enters S5 (the DSDT's
//! `\_S5` sleep type). Runs until then or until the VMM stops it. VGA writes are harmless without a VGA (they
//! are then RAM or unassigned MMIO) and only changed cells are written.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use guestlib::acpi::CpuList;
use guestlib::boot::MAX_CPUS;
use guestlib::io::{inb, outb};
use guestlib::smp::StartMode;
use guestlib::time::{tsc_hz, Deadline};
use guestlib::{i8042, println, serial, BootInfo};

guestlib::entry!(main);

#[repr(align(64))]
struct Counter(AtomicU64);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Counter = Counter(AtomicU64::new(0));
static COUNTERS: [Counter; MAX_CPUS] = [ZERO; MAX_CPUS];

fn bump(index: usize) {
    if let Some(c) = COUNTERS.get(index) {
        // Each CPU owns its counter: a plain load/store is enough.
        c.0.store(
            c.0.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }
}

fn ap_main(index: usize, _apic_id: u32) {
    loop {
        bump(index);
    }
}

const COLS: usize = 80;
const ROWS: usize = 25;
const VGA: u64 = 0xB8000;
const ATTR_TEXT: u8 = 0x07;
const ATTR_TITLE: u8 = 0x1F;
const ATTR_LABEL: u8 = 0x0B;
const ATTR_FOOTER: u8 = 0x70;

/// A text screen drawn in memory, then copied to VGA cell by cell where it changed.
struct Screen {
    cells: [u16; COLS * ROWS],
    shown: [u16; COLS * ROWS],
}

impl Screen {
    fn new() -> Screen {
        // `shown` starts impossible so the first frame writes every cell.
        Screen {
            cells: [0x0720; COLS * ROWS],
            shown: [0xFFFF; COLS * ROWS],
        }
    }

    fn clear(&mut self) {
        self.cells = [0x0720; COLS * ROWS];
    }

    fn fill_row(&mut self, row: usize, attr: u8) {
        for c in 0..COLS {
            self.cells[row * COLS + c] = ((attr as u16) << 8) | b' ' as u16;
        }
    }

    fn put(&mut self, row: usize, col: usize, attr: u8, text: &[u8]) {
        for (i, &b) in text.iter().enumerate() {
            if col + i < COLS && row < ROWS {
                self.cells[row * COLS + col + i] = ((attr as u16) << 8) | b as u16;
            }
        }
    }

    fn putf(&mut self, row: usize, col: usize, attr: u8, args: core::fmt::Arguments) {
        let mut line = Line::new();
        let _ = core::fmt::write(&mut line, args);
        self.put(row, col, attr, line.as_bytes());
    }

    fn flush(&mut self) {
        for i in 0..COLS * ROWS {
            if self.cells[i] != self.shown[i] {
                guestlib::phys::write_u16(VGA + 2 * i as u64, self.cells[i]);
                self.shown[i] = self.cells[i];
            }
        }
    }
}

/// A fixed-size formatting buffer for one screen line.
struct Line {
    buf: [u8; COLS],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [b' '; COLS],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, b: u8) {
        if self.len == COLS {
            self.buf.copy_within(1.., 0);
            self.len -= 1;
        }
        self.buf[self.len] = b;
        self.len += 1;
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len < COLS {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

fn cmos(reg: u8) -> u8 {
    outb(0x70, reg);
    inb(0x71)
}

fn bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0xF)
}

/// (hours, minutes, seconds) from the CMOS RTC, or None without one.
fn rtc_time() -> Option<(u8, u8, u8)> {
    let status_b = cmos(0x0B);
    if status_b == 0xFF {
        return None;
    }
    for _ in 0..10_000 {
        if cmos(0x0A) & 0x80 == 0 {
            break;
        }
    }
    let (mut s, mut m, raw_h) = (cmos(0x00), cmos(0x02), cmos(0x04));
    let pm = raw_h & 0x80 != 0;
    let mut h = raw_h & 0x7F;
    if status_b & 0x04 == 0 {
        s = bcd(s);
        m = bcd(m);
        h = bcd(h);
    }
    if status_b & 0x02 == 0 {
        h %= 12;
        if pm {
            h += 12;
        }
    }
    Some((h, m, s))
}

/// Set-1 keyboard decoding state.
struct Keyboard {
    shift: bool,
    extended: bool,
    line: Line,
    total: u64,
}

impl Keyboard {
    fn feed(&mut self, code: u8) {
        if code == 0xE0 {
            self.extended = true;
            return;
        }
        let extended = core::mem::replace(&mut self.extended, false);
        match code {
            0x2A | 0x36 => self.shift = true,
            0xAA | 0xB6 => self.shift = false,
            _ if extended || code & 0x80 != 0 => {}
            _ => {
                if let Some(c) = i8042::set1_to_ascii(code, self.shift) {
                    self.total += 1;
                    match c {
                        b'\n' => {
                            self.line = Line::new();
                            println!("demo: key enter");
                        }
                        0x08 => {
                            self.line.len = self.line.len.saturating_sub(1);
                            println!("demo: key backspace");
                        }
                        b' ' => {
                            self.line.push(c);
                            println!("demo: key space");
                        }
                        _ => {
                            self.line.push(c);
                            println!("demo: key {}", c as char);
                        }
                    }
                }
            }
        }
    }
}

fn echo(b: u8) {
    let _g = serial::lock();
    match b {
        b'\r' | b'\n' => serial::write_bytes(b"\r\n"),
        0x7F | 0x08 => serial::write_bytes(b"\x08 \x08"),
        _ => serial::write_byte(b),
    }
}

struct Info {
    vcpus: usize,
    ram_mib: u64,
    protocol: &'static str,
}

fn draw(
    screen: &mut Screen,
    info: &Info,
    cpus: &CpuList,
    kbd: &Keyboard,
    serial_line: &Line,
    uptime_s: u64,
) {
    screen.clear();
    screen.fill_row(0, ATTR_TITLE);
    screen.put(0, 2, ATTR_TITLE, b"troupe demo guest");
    screen.putf(
        0,
        44,
        ATTR_TITLE,
        format_args!(
            "{} vCPU(s), {} MiB, {}",
            info.vcpus, info.ram_mib, info.protocol
        ),
    );
    screen.put(2, 2, ATTR_LABEL, b"clock");
    match rtc_time() {
        Some((h, m, s)) => screen.putf(
            2,
            12,
            ATTR_TEXT,
            format_args!("{h:02}:{m:02}:{s:02} (CMOS RTC)"),
        ),
        None => screen.put(2, 12, ATTR_TEXT, b"no CMOS RTC"),
    }
    screen.put(3, 2, ATTR_LABEL, b"uptime");
    screen.putf(3, 12, ATTR_TEXT, format_args!("{uptime_s} s"));
    screen.put(5, 2, ATTR_LABEL, b"vCPU  APIC id  ring-3 loop iterations");
    for (i, &id) in cpus.ids().iter().enumerate().take(info.vcpus.min(14)) {
        let n = COUNTERS[i].0.load(Ordering::Relaxed);
        screen.putf(
            6 + i,
            2,
            ATTR_TEXT,
            format_args!("{i:>4}  {id:>7}  {n:>20}"),
        );
    }
    if info.vcpus > 14 {
        screen.putf(
            20,
            2,
            ATTR_TEXT,
            format_args!("... and {} more", info.vcpus - 14),
        );
    }
    screen.put(21, 2, ATTR_LABEL, b"keys");
    screen.putf(21, 12, ATTR_TEXT, format_args!("{} typed", kbd.total));
    screen.put(22, 2, ATTR_TEXT, b">");
    screen.put(
        22,
        4,
        ATTR_TEXT,
        &kbd.line.as_bytes()[..kbd.line.len.min(COLS - 5)],
    );
    screen.put(23, 2, ATTR_LABEL, b"serial");
    let s = serial_line.as_bytes();
    let tail = &s[s.len().saturating_sub(COLS - 13)..];
    screen.put(23, 12, ATTR_TEXT, tail);
    screen.fill_row(24, ATTR_FOOTER);
    screen.put(
        24,
        2,
        ATTR_FOOTER,
        b"Type here or on the serial console. Ctrl-D on serial exits.",
    );
    screen.flush();
}

fn main(boot: &BootInfo) -> u32 {
    let cpus = guestlib::acpi::discover_cpus(boot);
    let info = Info {
        vcpus: cpus.len().min(MAX_CPUS),
        ram_mib: boot.ram_mib(),
        protocol: boot.protocol().name(),
    };
    println!(
        "troupe demo guest: {} vCPU(s), {} MiB",
        info.vcpus, info.ram_mib
    );
    println!("demo: serial input is echoed; Ctrl-D exits");
    let bsp_index = cpus.index_of(guestlib::cpu::apic_id()).unwrap_or(0);
    let aps = guestlib::smp::start_aps(&cpus, ap_main, StartMode::PerCpu);
    let wait = Deadline::after_ms(1000);
    while guestlib::smp::aps_alive() < aps && !wait.expired() {
        core::hint::spin_loop();
    }
    // The keyboard is set up (and its stale bytes flushed) before the "running" line, which
    // tells whoever waits for it that keys typed from now on reach the guest.
    let has_kbd = i8042::present();
    if has_kbd {
        i8042::enable_translation();
        i8042::flush();
    }
    println!(
        "demo: {}/{} vCPUs running",
        guestlib::smp::aps_alive() + 1,
        info.vcpus
    );

    // Hide the VGA cursor (CRTC register 0x0A bit 5).
    outb(0x3D4, 0x0A);
    outb(0x3D5, 0x20);
    let mut screen = Screen::new();
    let mut kbd = Keyboard {
        shift: false,
        extended: false,
        line: Line::new(),
        total: 0,
    };
    let mut serial_line = Line::new();
    let redraw_ticks = boot.arg_u64("redraw_ms").unwrap_or(250).max(10) * tsc_hz() / 1000;
    let tick_ticks = boot.arg_u64("tick_ms").unwrap_or(0) * tsc_hz() / 1000;
    let pm = guestlib::acpi::PmBlock::find(boot);
    match pm {
        Some(pm) => println!(
            "demo: ACPI power button at PM1a 0x{:x}, S5 type {}",
            pm.pm1a_evt, pm.s5_slp_typ
        ),
        None => println!("demo: no ACPI power button"),
    }
    let start = guestlib::cpu::rdtsc();
    let mut next = start;
    let mut next_tick = start + tick_ticks;
    let mut ticks = 0u64;
    loop {
        bump(bsp_index);
        if let Some(b) = serial::try_read_byte() {
            if b == 0x04 {
                println!("\ndemo: bye");
                return 0;
            }
            echo(b);
            match b {
                0x20..=0x7E => serial_line.push(b),
                b'\r' | b'\n' => serial_line.push(b' '),
                _ => {}
            }
        }
        if has_kbd {
            if let Some(code) = i8042::try_read_kbd() {
                let typed = kbd.total;
                kbd.feed(code);
                if kbd.total != typed {
                    // Show a typed key at once, not at the next redraw.
                    next = 0;
                }
            }
        }
        let now = guestlib::cpu::rdtsc();
        if tick_ticks != 0 && now >= next_tick {
            ticks += 1;
            println!("demo: tick {ticks}");
            next_tick = now + tick_ticks;
        }
        if now >= next {
            let uptime_s = (now - start) / tsc_hz();
            draw(&mut screen, &info, &cpus, &kbd, &serial_line, uptime_s);
            next = now + redraw_ticks;
            if let Some(pm) = pm.filter(|pm| pm.take_power_button()) {
                println!("demo: power button, powering off");
                pm.power_off();
            }
        }
    }
}
