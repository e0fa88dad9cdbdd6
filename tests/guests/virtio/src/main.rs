//! virtio: a ring-3 driver for virtio-blk and virtio-rng over the PCI transport, with
//! checks. Polls (no interrupts); modern interface by default, `legacy` for the I/O BAR.
//!
//! Command line (`hotplug`: first wait for a device to be hot-plugged, printing
//! `virtio: hotplugged slot=N`, exit 2 if none comes within 60 s):
//! - `dev=blk` (default) with `op=`:
//!   - `check` (default): capacity, GET_ID, write a pattern over `sectors=N` (default
//!     2048) with `seed=N`, flush, read back, write-zeroes, discard (if offered), an
//!     out-of-range read (IOERR expected). Prints `vblk: all checks passed`, exit 0.
//!   - `write`: write the pattern, flush, print `vblk: wrote N sectors, flushed`; with
//!     `hold` spin forever (the test kills the VMM), else exit 0.
//!   - `verify`: read and check the pattern: `vblk: verified N sectors`, exit 0.
//!   - `stream`: write round and round `sectors=N` sectors (default 64) one at a time,
//!     each carrying the number of the write, and read the run back after every round:
//!     each sector must hold the last number written to it (a lost write shows an older
//!     one; a request carried out twice, late, shows an older one too). Prints `vblk:
//!     streaming` then `vblk: round N ok` every 100 rounds; with `rtc`, the RTC's periodic
//!     interrupt is on (1024 Hz, register C read after every request so IRQ 8 keeps rising;
//!     interrupts stay masked in the CPU). Runs until killed; exit 1 on a mismatch.
//!   - `readonly`: a write must fail (`vblk: write status=1`), a read must work.
//!   - `bench`: sequential 1 MiB writes then reads over `mib=N` MiB (default 64),
//!     `passes=N` times over (default 1), then
//!     random 4 KiB reads for `secs=N` seconds (default 3) at queue depth 1 and 32:
//!     `vblk-bench: seqwrite X MB/s`, `seqread X MB/s`, `randread qd1 N IOPS`,
//!     `randread qd32 N IOPS`.
//!   - `mq` (with `num-queues=2`): negotiates MQ, checks `num_queues`, writes the pattern
//!     through queue 1 and reads it back through queue 0, then the other way round.
//!   - `reset`: offers a read of 8 sectors (into a buffer filled with 0xEE, status byte
//!     0xFF), waits `wait_ms=N` (50) for the device to take it, then resets the device
//!     (status 0, read back once) while the read is in flight (the test makes the disk
//!     slow): `vblk: reset took N us` (the vCPU's time in the write and the read-back),
//!     then watches the used index, the status byte and the buffer for `watch_ms=N`
//!     (2000): `vblk: no guest write after reset` or `vblk: late write after reset: …`
//!     (exit 1). Then initializes the device again and reads sector 0: `vblk: works after
//!     reset`. Exit 3 if the read completed before the reset (nothing was in flight).
//!   - `evidx`: negotiates EVENT_IDX and checks interrupt suppression through
//!     `used_event` and the device's `avail_event` (INTx: run without MSI-X).
//! - `fault=loop|oob|direction|badidx`: offer a malformed chain, expect NEEDS_RESET, reset,
//!   prove the device works again (`vblk: recovered after reset`).
//! - `dev=rng`: read 64 bytes of entropy: `vrng: got 64 bytes, N distinct`. With
//!   `count=N`, N requests one after the other on the same queue (0: forever), each
//!   printing `vrng: request <i> got <len> bytes` (i from 1): a sequence driven by the
//!   device, for save/restore tests.
//! - `dev=rng intx=N`: N requests, each taken through the device's INTx line as seen at the
//!   8259 PIC (the IRQ its PIIX3 PIRQ route names, level-triggered in the ELCR, every PIC
//!   input masked; the IRR is read with OCW3, IF stays 0). For each request: the IRQ is
//!   not pending before it (the line is low); it becomes pending after the offer; a
//!   specific EOI while the device's ISR is still set leaves it pending (a level line
//!   still asserted is delivered again); reading the ISR then an EOI makes it not pending.
//!   Prints `vintx: irq=<irq> pin=<pin> line=<config 0x3c>`, then `vintx: <N> interrupts,
//!   each held across an EOI and gone after the ISR read`, or what went wrong (exit 1).
//! - `dev=console`: a virtio console: sends `hello from virtconsole` on it, prints
//!   `vcon: sent greeting`, waits (`wait=SECONDS`, default 30) for a line of input on it,
//!   prints `vcon: got 'LINE'` and sends back `echo: LINE`; exit 0.
//! - `dev=balloon`: a virtio-balloon driver (see `balloon.rs`): gives the device the
//!   pages it asks for and takes them back, printing `vballoon: actual=N pages`.
//! - `dev=net`: a virtio-net driver that answers ARP and ping and pings `peer=` (see
//!   `net.rs`).
//! - `dev=input`: a virtio tablet: prints its name, `vinput: ready`, then one line per
//!   report (`vinput: x=X y=Y buttons=B`, on each EV_SYN) and `vinput: click at x=X y=Y`
//!   when the left button is released; exits 0 after `clicks=N` clicks (default 1), 1
//!   after `wait=SECONDS` (default 60) without them.
//!
//! Pattern: byte `i` of sector `s` is `(s * 7 + i + seed) % 251`.
//! Exit codes: 0 success, 1 a check failed, 2 no device.

#![no_std]
#![no_main]

mod balloon;
mod e1000;
mod net;
mod transport;

use guestlib::phys::read_u8;
use guestlib::{println, BootInfo};
use transport::{w32, w64, Virtio, F_INDIRECT, F_NEXT, F_WRITE, NEEDS_RESET, RING_BASE, VERSION_1};

guestlib::entry!(main);

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
const F_MQ: u64 = 1 << 12;
const F_RING_INDIRECT: u64 = 1 << 28;
const F_RING_EVENT_IDX: u64 = 1 << 29;
/// Data buffers: 1 MiB above the rings.
const DATA: u64 = RING_BASE + 0x10_0000;
const CHUNK: u64 = 128;

pub fn pattern(sector: u64, i: u64, seed: u64) -> u8 {
    ((sector * 7 + i + seed) % 251) as u8
}

struct Blk {
    v: Virtio,
    hdr: u64,
}

impl Blk {
    /// One request: header, optional data buffer, status. Returns (status, used len).
    fn request(
        &mut self,
        ty: u32,
        sector: u64,
        len: u32,
        device_writes: bool,
    ) -> Option<(u8, u32)> {
        let (hdr, status) = (self.hdr, self.hdr + 16);
        w32(hdr, ty);
        w32(hdr + 4, 0);
        w64(hdr + 8, sector);
        // SAFETY: the status byte is free RAM owned by this driver.
        unsafe { core::ptr::write_volatile(status as *mut u8, 0xff) };
        if len > 0 {
            self.v.set_desc(0, hdr, 16, F_NEXT, 1);
            let f = if device_writes {
                F_NEXT | F_WRITE
            } else {
                F_NEXT
            };
            self.v.set_desc(1, DATA, len, f, 2);
            self.v.set_desc(2, status, 1, F_WRITE, 0);
        } else {
            self.v.set_desc(0, hdr, 16, F_NEXT, 2);
            self.v.set_desc(2, status, 1, F_WRITE, 0);
        }
        self.v.offer(0);
        let (_, used) = self.v.wait_used(10_000)?;
        Some((read_u8(status), used))
    }

    fn fill(&self, sector: u64, n: u64, seed: u64) {
        for s in 0..n {
            for i in 0..512 {
                // SAFETY: DATA.. is free RAM owned by this driver.
                unsafe {
                    core::ptr::write_volatile(
                        (DATA + s * 512 + i) as *mut u8,
                        pattern(sector + s, i, seed),
                    )
                };
            }
        }
    }

    fn check(&self, sector: u64, n: u64, seed: u64) -> Result<(), u64> {
        for s in 0..n {
            for i in 0..512 {
                if read_u8(DATA + s * 512 + i) != pattern(sector + s, i, seed) {
                    return Err(sector + s);
                }
            }
        }
        Ok(())
    }

    fn write_pattern(&mut self, sectors: u64, seed: u64) -> bool {
        let mut s = 0;
        while s < sectors {
            let n = CHUNK.min(sectors - s);
            self.fill(s, n, seed);
            match self.request(T_OUT, s, (n * 512) as u32, false) {
                Some((0, _)) => {}
                r => {
                    println!("vblk: write at sector {s} failed: {r:?}");
                    return false;
                }
            }
            s += n;
        }
        match self.request(T_FLUSH, 0, 0, false) {
            Some((0, _)) => true,
            r => {
                println!("vblk: flush failed: {r:?}");
                false
            }
        }
    }

    fn verify_pattern(&mut self, sectors: u64, seed: u64) -> bool {
        let mut s = 0;
        while s < sectors {
            let n = CHUNK.min(sectors - s);
            match self.request(T_IN, s, (n * 512) as u32, true) {
                Some((0, used)) if u64::from(used) == n * 512 + 1 => {}
                r => {
                    println!("vblk: read at sector {s} failed: {r:?}");
                    return false;
                }
            }
            if let Err(bad) = self.check(s, n, seed) {
                println!("vblk: mismatch at sector {bad}");
                return false;
            }
            s += n;
        }
        true
    }

    fn zeros(&mut self, sector: u64, n: u64) -> bool {
        if !matches!(
            self.request(T_IN, sector, (n * 512) as u32, true),
            Some((0, _))
        ) {
            return false;
        }
        (0..n * 512).all(|i| read_u8(DATA + i) == 0)
    }

    /// One discard/write-zeroes segment.
    fn segment(&mut self, ty: u32, sector: u64, n: u32) -> Option<(u8, u32)> {
        w64(DATA, sector);
        w32(DATA + 8, n);
        w32(DATA + 12, 0);
        let (hdr, status) = (self.hdr, self.hdr + 16);
        w32(hdr, ty);
        w64(hdr + 8, 0);
        self.v.set_desc(0, hdr, 16, F_NEXT, 1);
        self.v.set_desc(1, DATA, 16, F_NEXT, 2);
        self.v.set_desc(2, status, 1, F_WRITE, 0);
        self.v.offer(0);
        self.v.wait_used(10_000)?;
        Some((read_u8(status), 1))
    }
}

fn spin_forever() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

fn rng(legacy: bool) -> u32 {
    let Some(mut v) = Virtio::find(&[0x1005, 0x1044], legacy) else {
        println!("vrng: no virtio-rng");
        return 2;
    };
    if let Err(e) = v.init(VERSION_1, 64) {
        println!("vrng: init: {e}");
        return 1;
    }
    let buf = v.ring_end();
    v.set_desc(0, buf, 64, F_WRITE, 0);
    v.offer(0);
    let Some((_, len)) = v.wait_used(5000) else {
        println!("vrng: timeout");
        return 1;
    };
    let mut seen = [false; 256];
    for i in 0..u64::from(len) {
        seen[read_u8(buf + i) as usize] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    println!("vrng: got {len} bytes, {distinct} distinct");
    u32::from(!(len == 64 && distinct > 16))
}

/// `count` requests of 64 bytes (0: forever), one at a time, each reported.
fn rng_count(legacy: bool, count: u64) -> u32 {
    let Some(mut v) = Virtio::find(&[0x1005, 0x1044], legacy) else {
        println!("vrng: no virtio-rng");
        return 2;
    };
    if let Err(e) = v.init(VERSION_1, 64) {
        println!("vrng: init: {e}");
        return 1;
    }
    let buf = v.ring_end();
    let mut i = 0u64;
    while count == 0 || i < count {
        i += 1;
        // Each request on its own descriptor (of 8, in turn), so a device that lost its
        // place in the rings answers with the wrong one.
        let d = (i % 8) as u16;
        v.set_desc(d, buf + 64 * u64::from(d), 64, F_WRITE, 0);
        v.offer(d);
        let Some((head, len)) = v.wait_used(5000) else {
            println!("vrng: request {i} timed out");
            return 1;
        };
        if head != d || len != 64 {
            println!("vrng: request {i} on descriptor {d} came back as {head} with {len} bytes");
            return 1;
        }
        println!("vrng: request {i} got {len} bytes");
    }
    0
}

/// The 8259 pair, as a driver without interrupts (IF = 0) uses it to see one IRQ line.
mod pic {
    use guestlib::io::{inb, outb};

    /// ICW1–4 (vectors 0x20/0x28, cascade on IRQ 2), every input masked, and `irq`
    /// level-triggered in the ELCR (0x4d0/0x4d1), as firmware sets PCI IRQs.
    pub fn init(irq: u8) {
        for (cmd, data, base, cascade) in
            [(0x20u16, 0x21u16, 0x20u8, 0x04u8), (0xa0, 0xa1, 0x28, 0x02)]
        {
            outb(cmd, 0x11);
            outb(data, base);
            outb(data, cascade);
            outb(data, 0x01);
            outb(data, 0xff);
        }
        let elcr = 0x4d0 + u16::from(irq / 8);
        outb(elcr, inb(elcr) | 1 << (irq % 8));
    }

    /// Whether `irq` is pending in its PIC's IRR (OCW3 read IRR; no acknowledge).
    pub fn pending(irq: u8) -> bool {
        let port = if irq >= 8 { 0xa0 } else { 0x20 };
        outb(port, 0x0a);
        inb(port) & (1 << (irq % 8)) != 0
    }

    /// Specific EOI for `irq` (and for the cascade on the master).
    pub fn eoi(irq: u8) {
        if irq >= 8 {
            outb(0xa0, 0x60 | (irq - 8));
            outb(0x20, 0x62);
        } else {
            outb(0x20, 0x60 | irq);
        }
    }
}

/// `dev=rng intx=N` (see the module doc).
fn rng_intx(legacy: bool, n: u64) -> u32 {
    use guestlib::pci;
    use guestlib::time::{delay_us, Deadline};
    let ids = [0x1005u16, 0x1044];
    let (Some((d, f)), Some(mut v)) = (
        ids.iter().find_map(|&id| pci::find(0x1af4, id)),
        Virtio::find(&ids, legacy),
    ) else {
        println!("vintx: no virtio-rng");
        return 2;
    };
    let r3c = pci::read32(d, f, 0x3c);
    let (line, pin) = (r3c as u8, (r3c >> 8) as u8);
    if pin == 0 {
        println!("vintx: no interrupt pin");
        return 1;
    }
    // The PIIX3 (00:01.0) PIRQ route registers 0x60–0x63; PIRQ = (device + pin - 1) % 4.
    let pirq = (u32::from(d) + u32::from(pin) - 1) % 4;
    let route = (pci::read32(1, 0, 0x60) >> (8 * pirq)) as u8;
    let irq = if route & 0x80 == 0 {
        route & 0x0f
    } else {
        line
    };
    println!("vintx: irq={irq} pin={pin} line={line}");
    if irq == 0 || irq > 15 {
        println!("vintx: no IRQ routed");
        return 1;
    }
    pic::init(irq);
    if let Err(e) = v.init(VERSION_1, 64) {
        println!("vintx: init: {e}");
        return 1;
    }
    let wait = |want: bool| {
        let dl = Deadline::after_ms(2000);
        while pic::pending(irq) != want {
            if dl.expired() {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    };
    let buf = v.ring_end();
    for i in 1..=n {
        // A moment for a stray assertion (a resample that raised a low line) to show.
        delay_us(200);
        if pic::pending(irq) {
            println!("vintx: irq {irq} pending before request {i} (line not deasserted)");
            return 1;
        }
        let desc = (i % 8) as u16;
        v.set_desc(desc, buf + 64 * u64::from(desc), 64, F_WRITE, 0);
        v.offer(desc);
        if !wait(true) {
            println!("vintx: request {i}: no interrupt (lost)");
            return 1;
        }
        if v.wait_used(2000).is_none() {
            println!("vintx: request {i}: interrupt but no used buffer");
            return 1;
        }
        // EOI with the device's condition still set: the line must be asserted again.
        pic::eoi(irq);
        if !wait(true) {
            println!("vintx: request {i}: EOI while the ISR was set dropped the interrupt");
            return 1;
        }
        let isr = v.isr();
        if isr & 1 == 0 {
            println!("vintx: request {i}: ISR {isr:#x} without the queue bit");
            return 1;
        }
        pic::eoi(irq);
        if !wait(false) {
            println!("vintx: request {i}: still pending after the ISR read and EOI (storm)");
            return 1;
        }
    }
    println!("vintx: {n} interrupts, each held across an EOI and gone after the ISR read");
    0
}

fn input(boot: &BootInfo) -> u32 {
    let Some(mut v) = Virtio::find(&[0x1052], false) else {
        println!("vinput: no virtio-input");
        return 2;
    };
    if let Err(e) = v.init(VERSION_1, 64) {
        println!("vinput: init: {e}");
        return 1;
    }
    v.set_config8(0, 1); // ID_NAME
    v.set_config8(1, 0);
    let n = usize::from(v.config8(2)).min(64);
    let mut name = [0u8; 64];
    for (i, c) in name[..n].iter_mut().enumerate() {
        *c = v.config8(8 + i as u64);
    }
    println!(
        "vinput: name '{}'",
        core::str::from_utf8(&name[..n]).unwrap_or("?")
    );
    let buf = v.ring_end();
    let slots = v.size().min(32);
    for i in 0..slots {
        v.set_desc(i, buf + 8 * u64::from(i), 8, F_WRITE, 0);
        v.offer_quietly(i);
    }
    v.kick();
    println!("vinput: ready");
    let want = boot.arg_u64("clicks").unwrap_or(1);
    let d = guestlib::time::Deadline::after_ms(boot.arg_u64("wait").unwrap_or(60) * 1000);
    let (mut x, mut y, mut buttons, mut clicks) = (0u32, 0u32, 0u32, 0u64);
    while clicks < want {
        let Some((head, _)) = v.wait_used(100) else {
            if d.expired() {
                println!("vinput: timeout after {clicks} clicks");
                return 1;
            }
            continue;
        };
        let e = buf + 8 * u64::from(head);
        let (ty, code) = (guestlib::phys::read_u16(e), guestlib::phys::read_u16(e + 2));
        let value = guestlib::phys::read_u32(e + 4);
        v.offer(head);
        match (ty, code) {
            (3, 0) => x = value,
            (3, 1) => y = value,
            (1, 0x110..=0x112) => {
                let bit = 1 << (code - 0x110);
                if value != 0 {
                    buttons |= bit;
                } else {
                    if bit == 1 && buttons & 1 != 0 {
                        clicks += 1;
                        println!("vinput: click at x={x} y={y}");
                    }
                    buttons &= !bit;
                }
            }
            (0, _) => println!("vinput: x={x} y={y} buttons={buttons:#x}"),
            _ => {}
        }
    }
    0
}

/// Send `bytes` on the console's transmit queue (queue 1) and wait until it is used.
fn console_send(v: &mut Virtio, bytes: &[u8]) -> bool {
    let buf = RING_BASE + 0xa_0000;
    guestlib::phys::copy_to(buf, bytes);
    v.select(1);
    v.set_desc(0, buf, bytes.len() as u32, 0, 0);
    v.offer(0);
    let ok = v.wait_used(5000).is_some();
    v.select(0);
    ok
}

fn console(boot: &BootInfo) -> u32 {
    let Some(mut v) = Virtio::find(&[0x1003, 0x1043], boot.arg("legacy").is_some()) else {
        println!("vcon: no virtio console");
        return 2;
    };
    if let Err(e) = v.init_queues(VERSION_1, 64, 2) {
        println!("vcon: init: {e}");
        return 1;
    }
    let rx = RING_BASE + 0x8_0000;
    for i in 0..8u16 {
        v.set_desc(i, rx + 256 * u64::from(i), 256, F_WRITE, 0);
        v.offer_quietly(i);
    }
    v.kick();
    if !console_send(&mut v, b"hello from virtconsole\n") {
        println!("vcon: transmit timed out");
        return 1;
    }
    println!("vcon: sent greeting");
    let d = guestlib::time::Deadline::after_ms(boot.arg_u64("wait").unwrap_or(30) * 1000);
    let mut line = [0u8; 128];
    let mut n = 0;
    loop {
        let Some((head, len)) = v.wait_used(100) else {
            if d.expired() {
                println!("vcon: no input");
                return 1;
            }
            continue;
        };
        let at = rx + 256 * u64::from(head);
        for i in 0..u64::from(len) {
            let c = read_u8(at + i);
            if c == b'\n' || c == b'\r' {
                if n == 0 {
                    continue;
                }
                let text = core::str::from_utf8(&line[..n]).unwrap_or("?");
                println!("vcon: got '{text}'");
                let mut out = [0u8; 160];
                out[..6].copy_from_slice(b"echo: ");
                out[6..6 + n].copy_from_slice(&line[..n]);
                out[6 + n] = b'\n';
                return u32::from(!console_send(&mut v, &out[..7 + n]));
            }
            if n < line.len() {
                line[n] = c;
                n += 1;
            }
        }
        v.offer(head);
    }
}

/// `hotplug`: wait (up to 60 s) for ACPI PCI hotplug to report a device arriving (a slot
/// bit in PCIU at 0xAE00, as `pcihp` does) before looking for the device.
fn wait_for_hotplug() -> bool {
    let d = guestlib::time::Deadline::after_ms(60_000);
    loop {
        let up = guestlib::io::inl(0xae00);
        if up != 0 {
            println!("virtio: hotplugged slot={}", up.trailing_zeros());
            return true;
        }
        if d.expired() {
            println!("virtio: no device was hotplugged");
            return false;
        }
        guestlib::time::delay_us(500);
    }
}

fn main(boot: &BootInfo) -> u32 {
    if boot.arg("hotplug").is_some() && !wait_for_hotplug() {
        return 2;
    }
    if boot.arg("dev") == Some("input") {
        return input(boot);
    }
    if boot.arg("dev") == Some("console") {
        return console(boot);
    }
    if boot.arg("dev") == Some("net") {
        return net::run(boot);
    }
    if boot.arg("dev") == Some("balloon") {
        return balloon::run(boot);
    }
    let legacy = boot.arg("legacy").is_some();
    if boot.arg("dev") == Some("rng") {
        if let Some(n) = boot.arg_u64("intx") {
            return rng_intx(legacy, n);
        }
        return match boot.arg_u64("count") {
            Some(n) => rng_count(legacy, n),
            None => rng(legacy),
        };
    }
    let Some(v) = Virtio::find(&[0x1001, 0x1042], legacy) else {
        println!("vblk: no virtio-blk");
        return 2;
    };
    let hdr = RING_BASE + 0xf_0000;
    let mut b = Blk { v, hdr };
    let mut want =
        VERSION_1 | F_FLUSH | F_DISCARD | F_WRITE_ZEROES | F_BLK_SIZE | F_RO | F_RING_INDIRECT;
    let queues = match boot.arg("op") {
        Some("mq") => {
            want |= F_MQ;
            2
        }
        Some("evidx") => {
            want |= F_RING_EVENT_IDX;
            1
        }
        _ => 1,
    };
    let feats = match b.v.init_queues(want, 128, queues) {
        Ok(f) => f,
        Err(e) => {
            println!("vblk: init: {e}");
            return 1;
        }
    };
    let capacity = u64::from(b.v.config32(0)) | (u64::from(b.v.config32(4)) << 32);
    println!(
        "vblk: capacity {capacity} sectors, features {feats:#x}, {} interface",
        if b.v.is_legacy() { "legacy" } else { "modern" }
    );
    let sectors = boot.arg_u64("sectors").unwrap_or(2048).min(capacity);
    let seed = boot.arg_u64("seed").unwrap_or(0);

    if let Some(kind) = boot.arg("fault") {
        return fault(&mut b, kind, want);
    }
    match boot.arg("op").unwrap_or("check") {
        "write" => {
            if !b.write_pattern(sectors, seed) {
                return 1;
            }
            println!("vblk: wrote {sectors} sectors, flushed");
            if boot.arg("hold").is_some() {
                spin_forever();
            }
            0
        }
        "verify" => {
            if !b.verify_pattern(sectors, seed) {
                return 1;
            }
            println!("vblk: verified {sectors} sectors");
            0
        }
        "bench" => bench(&mut b, capacity, boot),
        "stream" => stream(
            &mut b,
            boot.arg_u64("sectors").unwrap_or(64).min(capacity),
            boot.arg("rtc").is_some(),
        ),
        "mq" => multiqueue(&mut b, feats, sectors, seed),
        "evidx" => event_idx(&mut b, feats),
        "reset" => reset_in_flight(
            &mut b,
            want,
            boot.arg_u64("wait_ms").unwrap_or(50),
            boot.arg_u64("watch_ms").unwrap_or(2000),
        ),
        "readonly" => {
            b.fill(0, 1, seed);
            let w = b.request(T_OUT, 0, 512, false);
            println!("vblk: write status={}", w.map_or(255, |r| r.0));
            let r = b.request(T_IN, 0, 512, true);
            println!("vblk: read status={}", r.map_or(255, |r| r.0));
            u32::from(
                !(feats & F_RO != 0 && w.map(|r| r.0) == Some(1) && r.map(|r| r.0) == Some(0)),
            )
        }
        _ => check(&mut b, feats, capacity, sectors, seed),
    }
}

/// `op=reset` (see the module doc).
fn reset_in_flight(b: &mut Blk, want: u64, wait_ms: u64, watch_ms: u64) -> u32 {
    const LEN: u64 = 8 * 512;
    const MARK: u8 = 0xee;
    let (hdr, status) = (b.hdr, b.hdr + 16);
    let poison = |at: u64, v: u8| {
        // SAFETY: free RAM owned by this driver.
        unsafe { core::ptr::write_volatile(at as *mut u8, v) }
    };
    for i in 0..LEN {
        poison(DATA + i, MARK);
    }
    poison(status, 0xff);
    w32(hdr, T_IN);
    w32(hdr + 4, 0);
    w64(hdr + 8, 0);
    b.v.set_desc(0, hdr, 16, F_NEXT, 1);
    b.v.set_desc(1, DATA, LEN as u32, F_NEXT | F_WRITE, 2);
    b.v.set_desc(2, status, 1, F_WRITE, 0);
    let before = b.v.used_idx();
    b.v.offer(0);
    guestlib::time::delay_us(wait_ms * 1000);
    if b.v.used_idx() != before {
        println!("vblk: the read completed before the reset");
        return 3;
    }
    let t0 = guestlib::time::now_ns();
    let read_back = b.v.reset();
    let took = guestlib::time::now_ns() - t0;
    println!(
        "vblk: reset took {} us (status read back {read_back:#x})",
        took / 1000
    );
    let changed = || -> Option<&'static str> {
        if b.v.used_idx() != before {
            return Some("used index");
        }
        if read_u8(status) != 0xff {
            return Some("status byte");
        }
        if (0..LEN).any(|i| read_u8(DATA + i) != MARK) {
            return Some("data buffer");
        }
        None
    };
    let d = guestlib::time::Deadline::after_ms(watch_ms);
    while !d.expired() {
        if let Some(what) = changed() {
            println!("vblk: late write after reset: {what}");
            return 1;
        }
        core::hint::spin_loop();
    }
    println!("vblk: no guest write after reset");
    if let Err(e) = b.v.init(want, 128) {
        println!("vblk: init after reset: {e}");
        return 1;
    }
    match b.request(T_IN, 0, 512, true) {
        Some((0, 513)) => {
            println!("vblk: works after reset");
            0
        }
        r => {
            println!("vblk: read after reset: {r:?}");
            1
        }
    }
}

/// Where `stream` keeps the number last written to each sector.
const STREAM_SEQ: u64 = RING_BASE + 0x30_0000;

fn rtc_reg(reg: u8) -> u8 {
    guestlib::io::outb(0x70, reg);
    guestlib::io::inb(0x71)
}

fn stream(b: &mut Blk, sectors: u64, rtc: bool) -> u32 {
    let sectors = sectors.clamp(1, 4096);
    if rtc {
        // Rate 6: 1024 Hz; PIE in register B.
        guestlib::io::outb(0x70, 0x0a);
        guestlib::io::outb(0x71, 0x26);
        let bv = rtc_reg(0x0b);
        guestlib::io::outb(0x70, 0x0b);
        guestlib::io::outb(0x71, bv | 0x40);
    }
    for s in 0..sectors {
        w64(STREAM_SEQ + 8 * s, 0);
    }
    println!("vblk: streaming");
    let mut seq = 0u64;
    let mut round = 0u64;
    loop {
        for s in 0..sectors {
            seq += 1;
            w64(DATA, seq);
            for i in 8..512 {
                // SAFETY: DATA.. is free RAM owned by this driver.
                unsafe { core::ptr::write_volatile((DATA + i) as *mut u8, pattern(seq, i, 0)) };
            }
            match b.request(T_OUT, s, 512, false) {
                Some((0, _)) => w64(STREAM_SEQ + 8 * s, seq),
                r => {
                    println!("vblk: write {seq} to sector {s} failed: {r:?}");
                    return 1;
                }
            }
            if rtc {
                rtc_reg(0x0c);
            }
        }
        let mut s = 0;
        while s < sectors {
            let n = CHUNK.min(sectors - s);
            if !matches!(b.request(T_IN, s, (n * 512) as u32, true), Some((0, _))) {
                println!("vblk: read at sector {s} failed");
                return 1;
            }
            for k in 0..n {
                let at = DATA + k * 512;
                let want = guestlib::phys::read_u64(STREAM_SEQ + 8 * (s + k));
                let got = guestlib::phys::read_u64(at);
                if got != want || (8..512).any(|i| read_u8(at + i) != pattern(got, i, 0)) {
                    println!("vblk: sector {} holds write {got}, expected {want}", s + k);
                    return 1;
                }
            }
            s += n;
        }
        round += 1;
        if round.is_multiple_of(100) {
            println!("vblk: round {round} ok");
        }
    }
}

/// MQ: the device reports two queues; a pattern written through queue 1 reads back
/// through queue 0 and the other way round.
fn multiqueue(b: &mut Blk, feats: u64, sectors: u64, seed: u64) -> u32 {
    let n = b.v.config32(32) >> 16; // num_queues, after writeback and a reserved byte
    println!("vblk: mq negotiated={} num_queues={n}", feats & F_MQ != 0);
    if feats & F_MQ == 0 || n != 2 {
        return 1;
    }
    for (w, r, seed) in [(1, 0, seed), (0, 1, seed + 1)] {
        b.v.select(w);
        if !b.write_pattern(sectors, seed) {
            return 1;
        }
        b.v.select(r);
        if !b.verify_pattern(sectors, seed) {
            return 1;
        }
        println!("vblk: wrote on queue {w}, read back on queue {r}");
    }
    0
}

/// Wait up to 200 ms for ISR bit 0 (the queue interrupt); reading ISR clears it.
fn queue_interrupt(v: &Virtio) -> bool {
    let d = guestlib::time::Deadline::after_ms(200);
    while !d.expired() {
        if v.isr() & 1 != 0 {
            return true;
        }
    }
    false
}

/// EVENT_IDX (INTx, so ISR shows each interrupt): a completion before `used_event` raises
/// none, the one that passes it raises one, and the device publishes in `avail_event`
/// that it wants a kick for the next chain offered.
fn event_idx(b: &mut Blk, feats: u64) -> u32 {
    if feats & F_RING_EVENT_IDX == 0 {
        println!("vblk: EVENT_IDX not offered");
        return 1;
    }
    // A first completion: QEMU always interrupts for the first one after a reset.
    if b.request(T_IN, 0, 512, true).map(|r| r.0) != Some(0) {
        return 1;
    }
    queue_interrupt(&b.v);
    // Far ahead: no interrupt for this completion.
    b.v.set_used_event(b.v.used_seen().wrapping_add(100));
    if b.request(T_IN, 0, 512, true).map(|r| r.0) != Some(0) {
        return 1;
    }
    let quiet = !queue_interrupt(&b.v);
    // The next completion makes the used index pass used_event: one interrupt.
    b.v.set_used_event(b.v.used_seen());
    if b.request(T_IN, 0, 512, true).map(|r| r.0) != Some(0) {
        return 1;
    }
    let raised = queue_interrupt(&b.v);
    let (avail_event, avail) = (b.v.avail_event(), b.v.avail_idx());
    println!(
        "vblk: evidx suppressed={quiet} raised={raised} avail_event={avail_event} avail={avail}"
    );
    u32::from(!(quiet && raised && avail_event == avail))
}

fn check(b: &mut Blk, feats: u64, capacity: u64, sectors: u64, seed: u64) -> u32 {
    match b.request(T_GET_ID, 0, 20, true) {
        Some((0, _)) => {
            let mut id = [0u8; 20];
            for (i, c) in id.iter_mut().enumerate() {
                *c = read_u8(DATA + i as u64);
            }
            let n = id.iter().position(|c| *c == 0).unwrap_or(20);
            println!(
                "vblk: id '{}'",
                core::str::from_utf8(&id[..n]).unwrap_or("?")
            );
        }
        r => {
            println!("vblk: GET_ID failed: {r:?}");
            return 1;
        }
    }
    if !b.write_pattern(sectors, seed) || !b.verify_pattern(sectors, seed) {
        return 1;
    }
    println!("vblk: wrote, flushed and read back {sectors} sectors");
    // Without MSI-X the completion raised INTx and set ISR bit 0 (reading clears it).
    let isr = b.v.isr();
    println!("vblk: isr={isr:#x} then {:#x}", b.v.isr());
    if isr & 1 == 0 {
        return 1;
    }
    // One read through an indirect descriptor table.
    if feats & F_RING_INDIRECT != 0 && sectors >= 8 {
        let table = RING_BASE + 0xe_0000;
        let (hdr, status) = (b.hdr, b.hdr + 16);
        w32(hdr, T_IN);
        w64(hdr + 8, 0);
        let put = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let d = table + 16 * i;
            w64(d, addr);
            w32(d + 8, len);
            w32(d + 12, u32::from(flags) | (u32::from(next) << 16));
        };
        put(0, hdr, 16, F_NEXT, 1);
        put(1, DATA, 4096, F_NEXT | F_WRITE, 2);
        put(2, status, 1, F_WRITE, 0);
        b.v.set_desc(0, table, 48, F_INDIRECT, 0);
        b.v.offer(0);
        let ok = matches!(b.v.wait_used(10_000), Some((0, 4097))) && read_u8(status) == 0;
        if !ok || b.check(0, 8, seed).is_err() {
            println!("vblk: indirect read failed");
            return 1;
        }
        println!("vblk: indirect read ok");
    }
    if feats & F_WRITE_ZEROES != 0 && sectors >= 16 {
        let r = b.segment(T_WRITE_ZEROES, 8, 8);
        if r.map(|r| r.0) != Some(0) || !b.zeros(8, 8) {
            println!("vblk: write-zeroes failed: {r:?}");
            return 1;
        }
        println!("vblk: write-zeroes ok");
    }
    if feats & F_DISCARD != 0 && sectors >= 8 {
        let r = b.segment(T_DISCARD, 0, 8);
        if r.map(|r| r.0) != Some(0) {
            println!("vblk: discard failed: {r:?}");
            return 1;
        }
        println!("vblk: discard ok");
    }
    let r = b.request(T_IN, capacity, 512, true);
    println!("vblk: out-of-range read status={}", r.map_or(255, |r| r.0));
    if r.map(|r| r.0) != Some(1) {
        return 1;
    }
    // Restore the pattern over what write-zeroes and discard changed.
    if !b.write_pattern(16.min(sectors), seed) {
        return 1;
    }
    println!("vblk: all checks passed");
    0
}

fn fault(b: &mut Blk, kind: &str, want: u64) -> u32 {
    let (hdr, status) = (b.hdr, b.hdr + 16);
    w32(hdr, T_IN);
    w64(hdr + 8, 0);
    match kind {
        "loop" => {
            b.v.set_desc(0, hdr, 16, F_NEXT, 1);
            b.v.set_desc(1, DATA, 512, F_NEXT, 0);
        }
        "oob" => {
            b.v.set_desc(0, hdr, 16, F_NEXT, 1);
            b.v.set_desc(1, 0x7_0000_0000, 512, F_NEXT | F_WRITE, 2);
            b.v.set_desc(2, status, 1, F_WRITE, 0);
        }
        "direction" => {
            b.v.set_desc(0, status, 1, F_NEXT | F_WRITE, 1);
            b.v.set_desc(1, hdr, 16, 0, 0);
        }
        _ => {
            // A head index past the queue.
            let size = b.v.size();
            b.v.set_desc(0, hdr, 16, F_NEXT, size + 5);
        }
    }
    b.v.offer(0);
    let d = guestlib::time::Deadline::after_ms(3000);
    while b.v.status() & NEEDS_RESET == 0 {
        if d.expired() {
            println!("vblk: no NEEDS_RESET after a malformed chain ({kind})");
            return 1;
        }
        core::hint::spin_loop();
    }
    println!("vblk: device needs reset (status={:#x})", b.v.status());
    if b.v.init(want, 128).is_err() {
        return 1;
    }
    b.fill(0, 1, 0);
    if !matches!(b.request(T_IN, 0, 512, true), Some((0, 513))) {
        println!("vblk: no I/O after reset");
        return 1;
    }
    println!("vblk: recovered after reset");
    0
}

/// Throughput and IOPS, measured in the guest with the TSC.
fn bench(b: &mut Blk, capacity: u64, boot: &BootInfo) -> u32 {
    use guestlib::time::now_ns;
    let mib = boot.arg_u64("mib").unwrap_or(64).min(capacity / 2048);
    let secs = boot.arg_u64("secs").unwrap_or(3);
    let passes = boot.arg_u64("passes").unwrap_or(1).max(1);
    for (name, ty, dev_writes) in [("seqwrite", T_OUT, false), ("seqread", T_IN, true)] {
        let t0 = now_ns();
        for m in 0..mib * passes {
            let m = m % mib;
            if !matches!(b.request(ty, m * 2048, 1 << 20, dev_writes), Some((0, _))) {
                println!("vblk-bench: {name} failed at MiB {m}");
                return 1;
            }
        }
        if ty == T_OUT && !matches!(b.request(T_FLUSH, 0, 0, false), Some((0, _))) {
            return 1;
        }
        let ns = (now_ns() - t0).max(1);
        let mbps = mib * passes * (1 << 20) * 1000 / ns; // bytes per µs = MB/s
        println!("vblk-bench: {name} {mbps} MB/s");
    }
    // Random 4 KiB reads within the written area.
    let span = (mib * 256).max(1);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % span) * 8
    };
    for qd in [1u16, 32] {
        let slots = qd.min(b.v.size() / 3);
        let hdr0 = b.hdr;
        let submit = |b: &mut Blk, k: u16, sector: u64| {
            let hdr = hdr0 + 32 * u64::from(k);
            w32(hdr, T_IN);
            w32(hdr + 4, 0);
            w64(hdr + 8, sector);
            let d = 3 * k;
            b.v.set_desc(d, hdr, 16, F_NEXT, d + 1);
            b.v.set_desc(
                d + 1,
                DATA + 4096 * u64::from(k),
                4096,
                F_NEXT | F_WRITE,
                d + 2,
            );
            b.v.set_desc(d + 2, hdr + 16, 1, F_WRITE, 0);
            b.v.offer_quietly(d);
        };
        for k in 0..slots {
            submit(b, k, rnd());
        }
        b.v.kick();
        let t0 = now_ns();
        let end = t0 + secs * 1_000_000_000;
        let mut done = 0u64;
        loop {
            let Some((head, _)) = b.v.wait_used(5000) else {
                println!("vblk-bench: randread qd{qd} timed out");
                return 1;
            };
            done += 1;
            let now = now_ns();
            if now < end {
                submit(b, head / 3, rnd());
                b.v.kick();
            } else {
                // Drain what is still in flight.
                for _ in 1..slots {
                    if b.v.wait_used(5000).is_none() {
                        return 1;
                    }
                }
                let iops = done * 1_000_000_000 / (now - t0).max(1);
                println!("vblk-bench: randread qd{qd} {iops} IOPS");
                break;
            }
        }
    }
    0
}
