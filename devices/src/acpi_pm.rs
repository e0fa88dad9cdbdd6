//! The PIIX4 ACPI power-management I/O block (ACPI 1.0 fixed hardware, PIIX4 datasheet
//! 7.2): PM1a event and control registers, the 24-bit PM timer, and the GPE0 block, with
//! the SCI on IRQ 9. Map the PM block at the base PIIX4's PMBA names (SeaBIOS: 0x600),
//! length 64; GPE0 at 0xAFE0, length 4 (QEMU's PIIX4 places it there).
//!
//! Soft-off: writing SLP_EN with SLP_TYP 0 (QEMU's PIIX4 `_S5` package) posts
//! `PowerOffRequested`. The power button (`system_powerdown`) sets PWRBTN_STS.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, IrqLine, SharedEvents, Snapshot, StateError, SystemEvent};

const TMR_STS: u16 = 1 << 0;
const PWRBTN_STS: u16 = 1 << 8;
const WAK_STS: u16 = 1 << 15;
const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
/// 3.579545 MHz.
const PM_TIMER_HZ: u128 = 3_579_545;

/// Guest-visible registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    pub pm1_sts: u16,
    pub pm1_en: u16,
    pub pm1_cnt: u16,
    pub gpe_sts: u16,
    pub gpe_en: u16,
    pub timer_msb: bool,
}

/// PM1 + PM timer + GPE0, sharing one SCI.
pub struct AcpiPm {
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe_sts: u16,
    gpe_en: u16,
    /// Bit 23 of the timer at the last look (TMR_STS is set when it flips).
    timer_msb: bool,
    sci: Arc<dyn IrqLine>,
    sci_high: bool,
    events: SharedEvents,
    now_ns: Box<dyn Fn() -> u64 + Send>,
}

impl AcpiPm {
    pub fn new(
        sci: Arc<dyn IrqLine>,
        events: SharedEvents,
        now_ns: Box<dyn Fn() -> u64 + Send>,
    ) -> Self {
        let mut p = Self {
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: SCI_EN,
            gpe_sts: 0,
            gpe_en: 0,
            timer_msb: false,
            sci,
            sci_high: false,
            events,
            now_ns,
        };
        p.reset();
        p
    }

    /// Power-on: ACPI mode on (there is no SMI handler to switch into it), nothing pending.
    pub fn reset(&mut self) {
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = SCI_EN;
        self.gpe_sts = 0;
        self.gpe_en = 0;
        self.timer_msb = self.timer() & (1 << 23) != 0;
        self.update_sci();
    }

    fn timer(&self) -> u32 {
        let ticks = u128::from((self.now_ns)()) * PM_TIMER_HZ / 1_000_000_000;
        (ticks & 0xff_ffff) as u32
    }

    fn sample_timer(&mut self) -> u32 {
        let t = self.timer();
        let msb = t & (1 << 23) != 0;
        if msb != self.timer_msb {
            self.timer_msb = msb;
            self.pm1_sts |= TMR_STS;
            self.update_sci();
        }
        t
    }

    /// `system_powerdown`: the guest's ACPI sees the power button pressed.
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= PWRBTN_STS;
        self.update_sci();
    }

    /// A general-purpose event (hotplug) fired.
    pub fn set_gpe(&mut self, bit: u8) {
        self.gpe_sts |= 1 << (bit & 15);
        self.update_sci();
    }

    fn update_sci(&mut self) {
        let level = self.pm1_cnt & SCI_EN != 0
            && (self.pm1_sts & self.pm1_en != 0 || self.gpe_sts & self.gpe_en != 0);
        if level != self.sci_high {
            self.sci_high = level;
            self.sci.set_level(level);
        }
    }

    fn write_cnt(&mut self, v: u16) {
        self.pm1_cnt = (v & !SLP_EN) | SCI_EN;
        if v & SLP_EN != 0 {
            let typ = (v >> 10) & 7;
            if typ == 0 {
                self.events.post(SystemEvent::PowerOffRequested);
            } else {
                tracing::debug!(target: "unimp", "acpi: sleep type {typ} is not supported");
                self.pm1_sts |= WAK_STS;
            }
        }
        self.update_sci();
    }

    fn read_pm(&mut self, offset: u64) -> u32 {
        match offset {
            0 => u32::from(self.pm1_sts) | (u32::from(self.pm1_en) << 16),
            2 => u32::from(self.pm1_en),
            4 => u32::from(self.pm1_cnt),
            8 => self.sample_timer(),
            _ => 0,
        }
    }

    fn write_pm(&mut self, offset: u64, v: u32, len: usize) {
        match offset {
            0 => {
                self.pm1_sts &= !(v as u16);
                if len == 4 {
                    self.pm1_en = (v >> 16) as u16;
                }
            }
            1 => self.pm1_sts &= !((v as u16) << 8),
            2 => self.pm1_en = v as u16,
            4 => self.write_cnt(v as u16),
            5 => self.write_cnt((self.pm1_cnt & 0xff) | ((v as u16) << 8)),
            _ => {}
        }
        self.update_sci();
    }

    /// The GPE0 block as a separate device (offsets 0..4 at 0xAFE0).
    pub fn gpe_read(&mut self, offset: u64, data: &mut [u8]) {
        let v = u32::from(self.gpe_sts) | (u32::from(self.gpe_en) << 16);
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    pub fn gpe_write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset as usize + i {
                0 => self.gpe_sts &= !u16::from(b),
                1 => self.gpe_sts &= !(u16::from(b) << 8),
                2 => self.gpe_en = (self.gpe_en & 0xff00) | u16::from(b),
                3 => self.gpe_en = (self.gpe_en & 0x00ff) | (u16::from(b) << 8),
                _ => {}
            }
        }
        self.update_sci();
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.read_pm(offset & !1).to_le_bytes();
        let shift = (offset & 1) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get(shift + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        self.write_pm(offset, u32::from_le_bytes(v), data.len());
    }
}

impl Snapshot for AcpiPm {
    type State = AcpiPmState;
    const KIND: &'static str = "piix4-pm";
    const VERSION: u32 = 1;
    fn save(&self) -> AcpiPmState {
        AcpiPmState {
            pm1_sts: self.pm1_sts,
            pm1_en: self.pm1_en,
            pm1_cnt: self.pm1_cnt,
            gpe_sts: self.gpe_sts,
            gpe_en: self.gpe_en,
            timer_msb: self.timer_msb,
        }
    }
    fn restore(&mut self, s: AcpiPmState) -> Result<(), StateError> {
        self.pm1_sts = s.pm1_sts;
        self.pm1_en = s.pm1_en;
        self.pm1_cnt = s.pm1_cnt;
        self.gpe_sts = s.gpe_sts;
        self.gpe_en = s.gpe_en;
        self.timer_msb = s.timer_msb;
        self.update_sci();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeEvents, FakeIrq};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn pm() -> (AcpiPm, Arc<FakeIrq>, Arc<FakeEvents>, Arc<AtomicU64>) {
        let sci = Arc::new(FakeIrq::default());
        let ev = Arc::new(FakeEvents::default());
        let now = Arc::new(AtomicU64::new(0));
        let n = now.clone();
        let p = AcpiPm::new(
            sci.clone(),
            ev.clone(),
            Box::new(move || n.load(Ordering::SeqCst)),
        );
        (p, sci, ev, now)
    }

    fn r16(p: &mut AcpiPm, off: u64) -> u16 {
        let mut b = [0u8; 2];
        p.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn s5_powers_off() {
        let (mut p, _sci, ev, _) = pm();
        assert_eq!(r16(&mut p, 4) & SCI_EN, SCI_EN, "ACPI mode from power-on");
        p.write(4, &(SLP_EN | (5 << 10)).to_le_bytes());
        assert!(ev.taken().is_empty(), "only S5 (SLP_TYP 0) powers off");
        p.write(4, &SLP_EN.to_le_bytes());
        assert_eq!(ev.taken(), vec![SystemEvent::PowerOffRequested]);
    }

    #[test]
    fn power_button_raises_sci_only_when_enabled_and_clears_on_write_one() {
        let (mut p, sci, _ev, _) = pm();
        p.press_power_button();
        assert!(!sci.is_high());
        assert_ne!(r16(&mut p, 0) & PWRBTN_STS, 0);
        p.write(2, &PWRBTN_STS.to_le_bytes());
        assert!(sci.is_high());
        p.write(0, &PWRBTN_STS.to_le_bytes());
        assert!(!sci.is_high());
        assert_eq!(r16(&mut p, 0) & PWRBTN_STS, 0);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz() {
        let (mut p, _sci, _ev, now) = pm();
        let mut b = [0u8; 4];
        now.store(1_000_000_000, Ordering::SeqCst);
        p.read(8, &mut b);
        assert_eq!(u32::from_le_bytes(b), (3_579_545 & 0xff_ffff) as u32);
        now.store(3_000_000_000, Ordering::SeqCst);
        p.read(8, &mut b);
        assert_eq!(
            u32::from_le_bytes(b),
            ((3 * 3_579_545u64) & 0xff_ffff) as u32
        );
        assert_ne!(r16(&mut p, 0) & TMR_STS, 0, "bit 23 flipped");
    }

    #[test]
    fn gpe_raises_sci_when_enabled() {
        let (mut p, sci, _ev, _) = pm();
        p.gpe_write(2, &[0x02]);
        p.set_gpe(1);
        assert!(sci.is_high());
        p.gpe_write(0, &[0x02]);
        assert!(!sci.is_high());
    }

    #[test]
    fn an_enabled_event_pending_at_save_still_holds_sci_after_restore() {
        let (mut p, _sci, _ev, _) = pm();
        p.write(2, &PWRBTN_STS.to_le_bytes());
        p.press_power_button();
        p.gpe_write(2, &[0x02]);
        let (fresh, sci2, _, _) = pm();
        let mut q = crate::check_roundtrip(&p, fresh);
        assert!(sci2.is_high());
        assert_eq!(r16(&mut q, 0), r16(&mut p, 0));
        q.write(0, &PWRBTN_STS.to_le_bytes());
        assert!(!sci2.is_high());
    }
}
