//! MC146818 CMOS real-time clock and its 128 bytes of CMOS memory, at ports 0x70 (index,
//! bit 7 = NMI disable) and 0x71 (data), as a PC (and QEMU's `mc146818rtc`) presents them.
//!
//! Time comes from an injected [`RtcClock`]: wall time at start plus monotonic progress, so
//! the guest sees a clock that advances even while nobody touches the device. When the guest
//! sets the time (register B's SET bit), the difference to the host is kept as an offset.
//! Interrupt flags (register C) are computed from the monotonic clock when read, and a host
//! timer can call [`Rtc::tick`] at [`Rtc::next_event_ns`] to raise IRQ 8 on time.

use serde::{Deserialize, Serialize};

use crate::{BusDevice, Effectful, Effects, Snapshot, StateError};

/// Where the RTC gets time from.
pub trait RtcClock: Send {
    /// Seconds since the Unix epoch (UTC or local, as `-rtc base=` chose).
    fn now_unix(&self) -> i64;
    /// A monotonic nanosecond counter.
    fn monotonic_ns(&self) -> u64;
}

/// The host's clocks.
pub struct HostClock {
    /// Added to the host's UTC (for `-rtc base=localtime` or a fixed start date).
    pub offset_secs: i64,
}

impl RtcClock for HostClock {
    fn now_unix(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        now + self.offset_secs
    }

    fn monotonic_ns(&self) -> u64 {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

// Register indexes.
const SEC: usize = 0x00;
const SEC_ALARM: usize = 0x01;
const MIN: usize = 0x02;
const MIN_ALARM: usize = 0x03;
const HOUR: usize = 0x04;
const HOUR_ALARM: usize = 0x05;
const WDAY: usize = 0x06;
const MDAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const CENTURY: usize = 0x32;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;

/// The update cycle takes 244 µs before each second boundary; UIP is set during it.
const UIP_NS: u64 = 244_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// What the machine tells the CMOS memory at power-on (what SeaBIOS reads back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmosConfig {
    /// Guest RAM below 4 GiB, in bytes.
    pub ram_below_4g: u64,
    /// Guest RAM above 4 GiB, in bytes.
    pub ram_above_4g: u64,
    /// vCPUs at start.
    pub cpus: u32,
    /// Boot devices in order as QEMU letters (`a` floppy, `c` disk, `d` CD, `n` network).
    pub boot_order: String,
    /// `-boot once=`: the order for the first boot only; the first reset puts
    /// [`CmosConfig::boot_order`] in its place (QEMU's `restore_boot_order`).
    pub boot_once: Option<String>,
}

impl CmosConfig {
    /// The CMOS bytes a PC BIOS expects (QEMU hw/i386/pc.c `pc_cmos_init`).
    fn bytes(&self) -> Vec<(usize, u8)> {
        let mut v = Vec::new();
        // Base memory: 640 KiB.
        v.push((0x15, 0x80));
        v.push((0x16, 0x02));
        // Extended memory above 1 MiB in KiB, capped at 0xffff (both copies).
        let ext_kib = (self.ram_below_4g.saturating_sub(1 << 20) / 1024).min(0xffff) as u16;
        for base in [0x17, 0x30] {
            v.push((base, ext_kib as u8));
            v.push((base + 1, (ext_kib >> 8) as u8));
        }
        // Memory above 16 MiB in 64 KiB units, capped at 0xffff.
        let above16 = (self.ram_below_4g.saturating_sub(16 << 20) / 65536).min(0xffff) as u16;
        v.push((0x34, above16 as u8));
        v.push((0x35, (above16 >> 8) as u8));
        // Memory above 4 GiB in 64 KiB units (three bytes).
        let high = self.ram_above_4g / 65536;
        v.push((0x5b, high as u8));
        v.push((0x5c, (high >> 8) as u8));
        v.push((0x5d, (high >> 16) as u8));
        v.push((0x5f, self.cpus.saturating_sub(1).min(255) as u8));
        // Equipment byte: FPU present, VGA/EGA display.
        v.push((0x14, 0x06));
        // Boot devices: 0x3d holds the first two, 0x38 the third (plus "no floppy boot
        // signature check" in bit 0, as QEMU sets by default).
        let code = |c: Option<char>| -> u8 {
            match c {
                Some('a') | Some('b') => 1,
                Some('c') => 2,
                Some('d') => 3,
                Some('n') => 4,
                _ => 0,
            }
        };
        let order = self.boot_once.as_deref().unwrap_or(&self.boot_order);
        let mut it = order.chars();
        let (b1, b2, b3) = (code(it.next()), code(it.next()), code(it.next()));
        v.push((0x3d, (b2 << 4) | b1));
        v.push((0x38, (b3 << 4) | 1));
        v
    }
}

/// Guest-visible state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    pub cmos: Vec<u8>,
    pub index: u8,
    /// Guest time minus host time, seconds.
    pub offset_secs: i64,
    pub last_periodic_ns: u64,
    pub last_update_secs: i64,
}

/// The RTC with its CMOS memory.
pub struct Rtc {
    cmos: [u8; 128],
    index: u8,
    offset_secs: i64,
    clock: Box<dyn RtcClock>,
    irq_high: bool,
    /// IRQ 8's level for the host to drive (line 0).
    fx: Effects,
    /// Monotonic time of the last periodic interrupt boundary accounted for.
    last_periodic_ns: u64,
    /// The guest-clock second at which the last update-ended flag was accounted for.
    last_update_secs: i64,
    config: CmosConfig,
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0x0f)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Rtc {
    /// Its interrupt (IRQ 8) is line 0 of its [`Effects`].
    pub fn new(config: CmosConfig, clock: Box<dyn RtcClock>) -> Self {
        let mut r = Self {
            cmos: [0; 128],
            index: 0,
            offset_secs: 0,
            clock,
            irq_high: false,
            fx: Effects::default(),
            last_periodic_ns: 0,
            last_update_secs: 0,
            config,
        };
        r.power_on();
        r
    }

    /// A machine reset (the guest's or the monitor's `system_reset`): power-on state again,
    /// except that a `-boot once=` order has served its boot and the normal order is back.
    pub fn reset(&mut self) {
        self.config.boot_once = None;
        self.power_on();
    }

    /// Power-on state: register defaults and the machine's CMOS bytes; the time keeps
    /// running (a reset does not stop a battery-backed clock).
    fn power_on(&mut self) {
        let offset = self.offset_secs;
        self.cmos = [0; 128];
        self.cmos[REG_A] = 0x26; // 32.768 kHz divider, 1024 Hz periodic rate
        self.cmos[REG_B] = B_24H;
        self.cmos[REG_D] = D_VRT;
        for (i, v) in self.config.bytes() {
            self.cmos[i] = v;
        }
        self.offset_secs = offset;
        self.last_periodic_ns = self.clock.monotonic_ns();
        self.last_update_secs = self.guest_now();
        self.update_irq();
    }

    fn guest_now(&self) -> i64 {
        self.clock.now_unix() + self.offset_secs
    }

    fn binary(&self) -> bool {
        self.cmos[REG_B] & B_DM_BINARY != 0
    }

    fn enc(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn dec(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            from_bcd(v)
        }
    }

    /// Put the current guest time into the time registers (unless SET freezes them).
    fn refresh_time(&mut self) {
        if self.cmos[REG_B] & B_SET != 0 {
            return;
        }
        let t = self.guest_now();
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (
            (secs / 3600) as u8,
            (secs / 60 % 60) as u8,
            (secs % 60) as u8,
        );
        self.cmos[SEC] = self.enc(ss);
        self.cmos[MIN] = self.enc(mm);
        self.cmos[HOUR] = if self.cmos[REG_B] & B_24H != 0 {
            self.enc(hh)
        } else {
            let pm = hh >= 12;
            let h12 = match hh % 12 {
                0 => 12,
                h => h,
            };
            self.enc(h12) | if pm { 0x80 } else { 0 }
        };
        self.cmos[WDAY] = self.enc(((days + 4).rem_euclid(7) + 1) as u8); // 1970-01-01: Thu
        self.cmos[MDAY] = self.enc(d as u8);
        self.cmos[MONTH] = self.enc(m as u8);
        self.cmos[YEAR] = self.enc(y.rem_euclid(100) as u8);
        self.cmos[CENTURY] = self.enc((y / 100) as u8);
    }

    /// The guest finished setting the time (SET cleared): remember it as an offset.
    fn take_guest_time(&mut self) {
        let hour_reg = self.cmos[HOUR];
        let hour = if self.cmos[REG_B] & B_24H != 0 {
            self.dec(hour_reg)
        } else {
            let h = self.dec(hour_reg & 0x7f) % 12;
            h + if hour_reg & 0x80 != 0 { 12 } else { 0 }
        };
        let year =
            i64::from(self.dec(self.cmos[CENTURY])) * 100 + i64::from(self.dec(self.cmos[YEAR]));
        let month = u32::from(self.dec(self.cmos[MONTH])).clamp(1, 12);
        let mday = u32::from(self.dec(self.cmos[MDAY])).clamp(1, 31);
        let t = days_from_civil(year, month, mday) * 86_400
            + i64::from(hour) * 3600
            + i64::from(self.dec(self.cmos[MIN])) * 60
            + i64::from(self.dec(self.cmos[SEC]));
        self.offset_secs = t - self.clock.now_unix();
        self.last_update_secs = self.guest_now();
    }

    /// Periodic interrupt period from register A's rate bits (None when off).
    fn period_ns(&self) -> Option<u64> {
        let rate = u32::from(self.cmos[REG_A] & 0x0f);
        match rate {
            0 => None,
            // Rates 1 and 2 are the same as 8 and 9 on the 32.768 kHz time base.
            1 | 2 => Some(NS_PER_SEC * (1 << (rate + 6)) as u64 / 32_768),
            r => Some(NS_PER_SEC * (1u64 << (r - 1)) / 32_768),
        }
    }

    /// Account for time that passed: set PF/UF/AF in register C.
    fn catch_up(&mut self, now_ns: u64) {
        if let Some(p) = self.period_ns() {
            if now_ns >= self.last_periodic_ns + p {
                self.cmos[REG_C] |= C_PF;
                self.last_periodic_ns = now_ns - (now_ns - self.last_periodic_ns) % p;
            }
        }
        if self.cmos[REG_B] & B_SET == 0 {
            let now = self.guest_now();
            if now != self.last_update_secs {
                self.cmos[REG_C] |= C_UF;
                self.refresh_time();
                let alarm = |reg: u8, cur: u8| reg & 0xc0 == 0xc0 || reg == cur;
                if alarm(self.cmos[SEC_ALARM], self.cmos[SEC])
                    && alarm(self.cmos[MIN_ALARM], self.cmos[MIN])
                    && alarm(self.cmos[HOUR_ALARM], self.cmos[HOUR])
                {
                    self.cmos[REG_C] |= C_AF;
                }
                self.last_update_secs = now;
            }
        }
        let b = self.cmos[REG_B];
        let c = self.cmos[REG_C];
        if (b & B_PIE != 0 && c & C_PF != 0)
            || (b & B_UIE != 0 && c & C_UF != 0)
            || (b & B_AIE != 0 && c & C_AF != 0)
        {
            self.cmos[REG_C] |= C_IRQF;
        }
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let level = self.cmos[REG_C] & C_IRQF != 0;
        if level != self.irq_high {
            self.irq_high = level;
            self.fx.set_line(0, level);
        }
    }

    /// When the host should next call [`Rtc::tick`] (monotonic ns), if any interrupt is
    /// enabled.
    pub fn next_event_ns(&self) -> Option<u64> {
        let b = self.cmos[REG_B];
        let mut next: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(p) = self.period_ns() {
                next = Some(self.last_periodic_ns + p);
            }
        }
        if b & (B_UIE | B_AIE) != 0 {
            let now = self.clock.monotonic_ns();
            let next_sec = now + (NS_PER_SEC - now % NS_PER_SEC);
            next = Some(next.map_or(next_sec, |n| n.min(next_sec)));
        }
        next
    }

    /// Host timer callback.
    pub fn tick(&mut self) {
        let now = self.clock.monotonic_ns();
        self.catch_up(now);
    }

    fn read_data(&mut self) -> u8 {
        let i = usize::from(self.index & 0x7f);
        let now = self.clock.monotonic_ns();
        match i {
            SEC | MIN | HOUR | WDAY | MDAY | MONTH | YEAR | CENTURY => {
                self.refresh_time();
                self.cmos[i]
            }
            REG_A => {
                let uip =
                    self.cmos[REG_B] & B_SET == 0 && (now % NS_PER_SEC) >= NS_PER_SEC - UIP_NS;
                (self.cmos[REG_A] & !A_UIP) | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                self.catch_up(now);
                let v = self.cmos[REG_C];
                self.cmos[REG_C] = 0;
                self.update_irq();
                v
            }
            _ => self.cmos[i],
        }
    }

    fn write_data(&mut self, v: u8) {
        let i = usize::from(self.index & 0x7f);
        match i {
            REG_A => self.cmos[REG_A] = (self.cmos[REG_A] & A_UIP) | (v & 0x7f),
            REG_B => {
                let was_set = self.cmos[REG_B] & B_SET != 0;
                if v & B_SET != 0 && !was_set {
                    // Freeze the registers at the current time for the guest to edit.
                    self.refresh_time();
                }
                // SET clears UIE (datasheet: "UIE is cleared when SET is set").
                let v = if v & B_SET != 0 { v & !B_UIE } else { v };
                self.cmos[REG_B] = v;
                if was_set && v & B_SET == 0 {
                    self.take_guest_time();
                }
                let now = self.clock.monotonic_ns();
                self.catch_up(now);
            }
            REG_C | REG_D => {} // read-only
            SEC | MIN | HOUR | WDAY | MDAY | MONTH | YEAR | CENTURY => {
                self.cmos[i] = v;
                if self.cmos[REG_B] & B_SET == 0 {
                    // Writing time without SET: take it immediately (what QEMU does).
                    self.take_guest_time();
                }
            }
            _ => self.cmos[i] = v,
        }
    }

    /// The CMOS byte at `index` as the guest would read it (for `info` and tests).
    pub fn cmos_byte(&mut self, index: u8) -> u8 {
        let saved = self.index;
        self.index = index;
        let v = self.read_data();
        self.index = saved;
        v
    }
}

impl Effectful for Rtc {
    fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.fx)
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for b in data.iter_mut() {
            *b = match offset {
                // The index register is write-only; reads float.
                0 => 0xff,
                _ => self.read_data(),
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for &v in data {
            match offset {
                0 => self.index = v,
                _ => self.write_data(v),
            }
        }
    }
}

impl Snapshot for Rtc {
    type State = RtcState;
    const KIND: &'static str = "mc146818rtc";
    const VERSION: u32 = 1;

    fn save(&self) -> RtcState {
        RtcState {
            cmos: self.cmos.to_vec(),
            index: self.index,
            offset_secs: self.offset_secs,
            last_periodic_ns: self.last_periodic_ns,
            last_update_secs: self.last_update_secs,
        }
    }

    fn restore(&mut self, s: RtcState) -> Result<(), StateError> {
        let cmos: [u8; 128] = s
            .cmos
            .try_into()
            .map_err(|v: Vec<u8>| StateError::Invalid {
                kind: Self::KIND,
                reason: format!("CMOS is {} bytes, not 128", v.len()),
            })?;
        self.cmos = cmos;
        self.index = s.index;
        self.offset_secs = s.offset_secs;
        self.last_periodic_ns = s.last_periodic_ns;
        self.last_update_secs = s.last_update_secs;
        self.update_irq();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeIrq;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct FakeClock {
        unix: Arc<AtomicI64>,
        mono: Arc<AtomicU64>,
    }

    impl RtcClock for FakeClock {
        fn now_unix(&self) -> i64 {
            self.unix.load(Ordering::SeqCst)
        }
        fn monotonic_ns(&self) -> u64 {
            self.mono.load(Ordering::SeqCst)
        }
    }

    fn rtc(cfg: CmosConfig) -> (Rtc, FakeClock, Arc<FakeIrq>) {
        let clock = FakeClock::default();
        // 2026-11-25 03:04:05 UTC, a Wednesday.
        clock.unix.store(1_795_575_845, Ordering::SeqCst);
        let irq = Arc::new(FakeIrq::default());
        (Rtc::new(cfg, Box::new(clock.clone())), clock, irq)
    }

    /// Drive `irq` as a host would after a call.
    fn settle(r: &mut Rtc, irq: &FakeIrq) {
        r.take_effects().apply(&[irq], None);
    }

    fn get(r: &mut Rtc, i: u8) -> u8 {
        r.write(0, &[i]);
        let mut b = [0];
        r.read(1, &mut b);
        b[0]
    }

    fn set(r: &mut Rtc, i: u8, v: u8) {
        r.write(0, &[i]);
        r.write(1, &[v]);
    }

    #[test]
    fn date_conversion_round_trips() {
        for days in [-1, 0, 59, 365 * 30 + 7, 20_417, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }

    #[test]
    fn reads_the_time_in_bcd_then_binary() {
        let (mut r, _c, _irq) = rtc(CmosConfig::default());
        assert_eq!(get(&mut r, 0x04), 0x03);
        assert_eq!(get(&mut r, 0x02), 0x04);
        assert_eq!(get(&mut r, 0x00), 0x05);
        assert_eq!(get(&mut r, 0x07), 0x25);
        assert_eq!(get(&mut r, 0x08), 0x11);
        assert_eq!(get(&mut r, 0x09), 0x26);
        assert_eq!(get(&mut r, 0x32), 0x20);
        assert_eq!(get(&mut r, 0x06), 4, "Wednesday is day 4 (Sunday = 1)");
        set(&mut r, 0x0b, B_24H | B_DM_BINARY);
        assert_eq!(get(&mut r, 0x09), 26);
        assert_eq!(get(&mut r, 0x07), 25);
    }

    #[test]
    fn twelve_hour_mode_sets_the_pm_bit() {
        let (mut r, c, _irq) = rtc(CmosConfig::default());
        c.unix.fetch_add(12 * 3600, Ordering::SeqCst); // 15:04
        set(&mut r, 0x0b, 0);
        assert_eq!(get(&mut r, 0x04), 0x80 | 0x03);
    }

    #[test]
    fn guest_set_time_is_kept_as_an_offset() {
        let (mut r, c, _irq) = rtc(CmosConfig::default());
        set(&mut r, 0x0b, B_24H | B_SET);
        set(&mut r, 0x09, 0x99);
        set(&mut r, 0x32, 0x19);
        set(&mut r, 0x0b, B_24H);
        assert_eq!(get(&mut r, 0x09), 0x99);
        c.unix.fetch_add(1, Ordering::SeqCst);
        assert_eq!(get(&mut r, 0x32), 0x19, "the offset survives time passing");
    }

    #[test]
    fn periodic_and_update_interrupts_raise_irq8_until_c_is_read() {
        let (mut r, c, irq) = rtc(CmosConfig::default());
        set(&mut r, 0x0b, B_24H | B_PIE);
        let p = r.period_ns().unwrap();
        assert_eq!(p, 976_562, "rate 6 is 1024 Hz");
        assert_eq!(r.next_event_ns(), Some(p));
        c.mono.store(p + 10, Ordering::SeqCst);
        r.tick();
        settle(&mut r, &irq);
        assert!(irq.is_high());
        let flags = get(&mut r, 0x0c);
        assert_eq!(flags & (C_IRQF | C_PF), C_IRQF | C_PF);
        settle(&mut r, &irq);
        assert!(!irq.is_high());
        set(&mut r, 0x0b, B_24H | B_UIE);
        c.unix.fetch_add(1, Ordering::SeqCst);
        r.tick();
        assert_eq!(get(&mut r, 0x0c) & (C_IRQF | C_UF), C_IRQF | C_UF);
    }

    #[test]
    fn uip_is_set_just_before_the_second_changes() {
        let (mut r, c, _irq) = rtc(CmosConfig::default());
        c.mono.store(NS_PER_SEC - 100_000, Ordering::SeqCst);
        assert_ne!(get(&mut r, 0x0a) & A_UIP, 0);
        c.mono.store(NS_PER_SEC + 100_000, Ordering::SeqCst);
        assert_eq!(get(&mut r, 0x0a) & A_UIP, 0);
    }

    #[test]
    fn cmos_memory_describes_the_machine() {
        let (mut r, _c, _irq) = rtc(CmosConfig {
            ram_below_4g: 3 << 30,
            ram_above_4g: 5 << 30,
            cpus: 4,
            boot_order: "dc".into(),
            boot_once: None,
        });
        assert_eq!(
            u16::from(get(&mut r, 0x15)) | u16::from(get(&mut r, 0x16)) << 8,
            640
        );
        assert_eq!(
            u16::from(get(&mut r, 0x17)) | u16::from(get(&mut r, 0x18)) << 8,
            0xffff
        );
        let above16 = u32::from(get(&mut r, 0x34)) | u32::from(get(&mut r, 0x35)) << 8;
        assert_eq!(above16, ((3u32 << 30) - (16 << 20)) / 65536);
        let high = u32::from(get(&mut r, 0x5b))
            | u32::from(get(&mut r, 0x5c)) << 8
            | u32::from(get(&mut r, 0x5d)) << 16;
        assert_eq!(u64::from(high) * 65536, 5 << 30);
        assert_eq!(get(&mut r, 0x5f), 3);
        assert_eq!(get(&mut r, 0x3d), 0x23, "CD first, then disk");
        assert_eq!(get(&mut r, 0x0d), D_VRT);
    }

    #[test]
    fn boot_once_serves_the_first_boot_and_a_reset_restores_the_order() {
        // -boot order=c,once=dn: CD then network first; after any reset, the disk.
        let (mut r, _c, _irq) = rtc(CmosConfig {
            boot_order: "c".into(),
            boot_once: Some("dn".into()),
            ..CmosConfig::default()
        });
        assert_eq!(get(&mut r, 0x3d), 0x43, "CD, then network");
        assert_eq!(get(&mut r, 0x38), 0x01, "no third device; floppy check off");
        r.reset();
        assert_eq!(get(&mut r, 0x3d), 0x02, "disk only");
        r.reset();
        assert_eq!(get(&mut r, 0x3d), 0x02, "still the normal order");
        // QEMU's default order "cad": disk, floppy, CD.
        let (mut r, _c, _irq) = rtc(CmosConfig {
            boot_order: "cad".into(),
            boot_once: Some("d".into()),
            ..CmosConfig::default()
        });
        assert_eq!(get(&mut r, 0x3d), 0x03);
        r.reset();
        assert_eq!(get(&mut r, 0x3d), 0x12);
        assert_eq!(get(&mut r, 0x38), 0x31);
    }

    #[test]
    fn state_round_trips() {
        let (mut r, _c, _irq) = rtc(CmosConfig::default());
        set(&mut r, 0x40, 0xaa);
        let (fresh, _c2, _irq2) = rtc(CmosConfig::default());
        let mut t = crate::check_roundtrip(&r, fresh);
        assert_eq!(get(&mut t, 0x40), 0xaa);
    }
}
