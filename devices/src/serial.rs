//! 16550A UART (the PC's COM1–COM4), as QEMU's `serial` models it: 16-byte FIFOs, the
//! interrupt identification priorities, loopback, and OUT2 gating the IRQ like a PC's
//! motherboard. Transmit is immediate (no baud-rate timing): bytes go straight to the
//! [`ByteSink`]. Receive is fed by the host with [`Serial::enqueue_input`], which accepts
//! only what fits so the host can hold the rest back (backpressure).
//!
//! Register map (offset from the base port; DLAB = LCR bit 7), per the PC16550D datasheet:
//! 0 RBR/THR (DLL with DLAB), 1 IER (DLM with DLAB), 2 IIR (read) / FCR (write), 3 LCR,
//! 4 MCR, 5 LSR, 6 MSR, 7 SCR.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, Effectful, Effects, Snapshot, StateError};

const FIFO_LEN: usize = 16;

// IER bits.
const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IER_RLS: u8 = 0x04;
const IER_MS: u8 = 0x08;

// IIR values (bits 3..0) and the FIFO-enabled bits 7..6.
const IIR_NONE: u8 = 0x01;
const IIR_RLS: u8 = 0x06;
const IIR_RDA: u8 = 0x04;
const IIR_TIMEOUT: u8 = 0x0c;
const IIR_THRE: u8 = 0x02;
const IIR_MS: u8 = 0x00;
const IIR_FIFO_ENABLED: u8 = 0xc0;

// FCR bits.
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const FCR_CLEAR_TX: u8 = 0x04;

// LCR / MCR / LSR / MSR bits.
const LCR_DLAB: u8 = 0x80;
const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_BI: u8 = 0x10;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const MSR_DCTS: u8 = 0x01;
const MSR_DDSR: u8 = 0x02;
const MSR_TERI: u8 = 0x04;
const MSR_DDCD: u8 = 0x08;
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;

/// The UART's guest-visible registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub ier: u8,
    pub lcr: u8,
    pub mcr: u8,
    pub lsr: u8,
    pub msr: u8,
    pub scr: u8,
    pub fcr: u8,
    pub divisor: u16,
    /// A THRE interrupt is pending (set when THR empties, cleared by reading IIR or
    /// writing THR).
    pub thre_pending: bool,
    /// The receive FIFO contents.
    pub rx: Vec<u8>,
}

/// One 16550A.
pub struct Serial {
    ier: u8,
    lcr: u8,
    mcr: u8,
    lsr: u8,
    msr: u8,
    scr: u8,
    fcr: u8,
    divisor: u16,
    thre_pending: bool,
    /// A receive timeout indication is pending (data sat in the FIFO below the trigger).
    timeout_pending: bool,
    rx: VecDeque<u8>,
    irq_high: bool,
    /// The interrupt level and transmitted bytes for the host to carry out (line 0).
    fx: Effects,
    /// Bytes dropped because the receive FIFO was full (overrun), for statistics.
    overruns: u64,
}

impl Serial {
    /// A UART at power-on: 9600 baud (divisor 12), 8N1 left to the guest, modem lines
    /// showing a connected peer (DCD, DSR, CTS) like QEMU.
    /// Its interrupt line and transmitted bytes are [`Effects`] (line 0 and the output).
    pub fn new() -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: MCR_OUT2,
            lsr: LSR_TEMT | LSR_THRE,
            msr: MSR_DCD | MSR_DSR | MSR_CTS,
            scr: 0,
            fcr: 0,
            divisor: 12,
            thre_pending: false,
            timeout_pending: false,
            rx: VecDeque::with_capacity(FIFO_LEN),
            irq_high: false,
            fx: Effects::default(),
            overruns: 0,
        }
    }

    /// Power-on reset (`system_reset`); the backends stay connected.
    pub fn reset(&mut self) {
        self.ier = 0;
        self.lcr = 0;
        self.mcr = MCR_OUT2;
        self.lsr = LSR_TEMT | LSR_THRE;
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS;
        self.scr = 0;
        self.fcr = 0;
        self.divisor = 12;
        self.thre_pending = false;
        self.timeout_pending = false;
        self.rx.clear();
        self.update_irq();
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_LEN
        } else {
            1
        }
    }

    /// How many input bytes the receiver can take now.
    pub fn input_space(&self) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            return 0;
        }
        self.rx_capacity().saturating_sub(self.rx.len())
    }

    /// Bytes dropped on overrun so far.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Feed bytes typed by the user; returns how many were taken (the rest should be
    /// offered again once [`Serial::input_space`] grows).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.input_space());
        if n == 0 {
            return 0;
        }
        self.rx.extend(&bytes[..n]);
        self.lsr |= LSR_DR;
        if self.fifo_enabled() && self.rx.len() < self.rx_trigger() {
            // The FIFO holds data below its trigger level: a character-timeout interrupt
            // reports it (the real chip waits 4 character times; we report at once).
            self.timeout_pending = true;
        }
        self.update_irq();
        n
    }

    /// Receive FIFO trigger level from FCR bits 7..6.
    fn rx_trigger(&self) -> usize {
        match self.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    /// The highest-priority pending interrupt (IIR bits 3..0).
    fn pending(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.lsr & (LSR_OE | LSR_BI) != 0 {
            IIR_RLS
        } else if self.ier & IER_RDA != 0 && self.lsr & LSR_DR != 0 {
            if self.timeout_pending && self.rx.len() < self.rx_trigger() {
                IIR_TIMEOUT
            } else {
                IIR_RDA
            }
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_MS != 0 && self.msr & 0x0f != 0 {
            IIR_MS
        } else {
            IIR_NONE
        }
    }

    fn update_irq(&mut self) {
        // On a PC the UART's interrupt output is gated by OUT2 (MCR bit 3).
        let level = self.pending() != IIR_NONE && self.mcr & MCR_OUT2 != 0;
        if level != self.irq_high {
            self.irq_high = level;
            self.fx.set_line(0, level);
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.mcr & MCR_LOOP != 0 {
            // Loopback: the byte comes back on the receiver (overrun if it is full).
            if self.rx.len() < self.rx_capacity() {
                self.rx.push_back(byte);
            } else {
                self.lsr |= LSR_OE;
                self.overruns += 1;
            }
            self.lsr |= LSR_DR;
        } else {
            self.fx.output.push(byte);
        }
        // The transmitter is instantaneous: THR is empty again at once.
        self.lsr |= LSR_THRE | LSR_TEMT;
        self.thre_pending = true;
    }

    fn read_reg(&mut self, offset: u64) -> u8 {
        match offset {
            0 if self.lcr & LCR_DLAB != 0 => self.divisor as u8,
            0 => {
                let b = self.rx.pop_front().unwrap_or(0);
                if self.rx.is_empty() {
                    self.lsr &= !LSR_DR;
                    self.timeout_pending = false;
                }
                self.update_irq();
                b
            }
            1 if self.lcr & LCR_DLAB != 0 => (self.divisor >> 8) as u8,
            1 => self.ier,
            2 => {
                let id = self.pending();
                // Reading IIR while THRE is the reported source clears it (datasheet
                // table 4, "reading the IIR if source of interrupt").
                if id == IIR_THRE {
                    self.thre_pending = false;
                    self.update_irq();
                }
                let fifo = if self.fifo_enabled() {
                    IIR_FIFO_ENABLED
                } else {
                    0
                };
                id | fifo
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let v = self.lsr;
                // Reading LSR clears the error bits.
                self.lsr &= !(LSR_OE | LSR_BI);
                self.update_irq();
                v
            }
            6 => {
                let v = if self.mcr & MCR_LOOP != 0 {
                    // Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                    let m = self.mcr;
                    (self.msr & 0x0f)
                        | if m & MCR_RTS != 0 { MSR_CTS } else { 0 }
                        | if m & MCR_DTR != 0 { MSR_DSR } else { 0 }
                        | if m & MCR_OUT1 != 0 { MSR_RI } else { 0 }
                        | if m & MCR_OUT2 != 0 { MSR_DCD } else { 0 }
                } else {
                    self.msr
                };
                // Reading MSR clears the delta bits.
                self.msr &= !(MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD);
                self.update_irq();
                v
            }
            7 => self.scr,
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u8) {
        match offset {
            0 if self.lcr & LCR_DLAB != 0 => self.divisor = (self.divisor & 0xff00) | u16::from(v),
            0 => {
                self.thre_pending = false;
                self.transmit(v);
                self.update_irq();
            }
            1 if self.lcr & LCR_DLAB != 0 => {
                self.divisor = (self.divisor & 0x00ff) | (u16::from(v) << 8)
            }
            1 => {
                let was = self.ier;
                self.ier = v & 0x0f;
                // Enabling THRE interrupts while THR is empty raises one at once (what
                // drivers rely on to kick off transmission).
                if was & IER_THRE == 0 && self.ier & IER_THRE != 0 && self.lsr & LSR_THRE != 0 {
                    self.thre_pending = true;
                }
                self.update_irq();
            }
            2 => {
                let enable_changed = (self.fcr ^ v) & FCR_ENABLE != 0;
                if v & FCR_CLEAR_RX != 0 || enable_changed {
                    self.rx.clear();
                    self.lsr &= !LSR_DR;
                    self.timeout_pending = false;
                }
                if v & FCR_CLEAR_TX != 0 || enable_changed {
                    self.lsr |= LSR_THRE | LSR_TEMT;
                }
                // Bits 1 and 2 self-clear; keep enable and the trigger level.
                self.fcr = v & 0xc9;
                self.update_irq();
            }
            3 => self.lcr = v,
            4 => {
                self.mcr = v & 0x1f;
                self.update_irq();
            }
            // LSR and MSR are read-only (writes are factory test modes; ignore).
            5 | 6 => {}
            7 => self.scr = v,
            _ => {}
        }
    }
}

impl Default for Serial {
    fn default() -> Self {
        Self::new()
    }
}

impl Effectful for Serial {
    fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.fx)
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are bytes; wider accesses read consecutive registers.
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_reg(offset + i as u64);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.write_reg(offset + i as u64, *b);
        }
    }
}

impl Snapshot for Serial {
    type State = SerialState;
    const KIND: &'static str = "serial";
    const VERSION: u32 = 1;

    fn save(&self) -> SerialState {
        SerialState {
            ier: self.ier,
            lcr: self.lcr,
            mcr: self.mcr,
            lsr: self.lsr,
            msr: self.msr,
            scr: self.scr,
            fcr: self.fcr,
            divisor: self.divisor,
            thre_pending: self.thre_pending,
            rx: self.rx.iter().copied().collect(),
        }
    }

    fn restore(&mut self, s: SerialState) -> Result<(), StateError> {
        if s.rx.len() > FIFO_LEN {
            return Err(StateError::Invalid {
                kind: Self::KIND,
                reason: format!("receive FIFO holds {} bytes (max {FIFO_LEN})", s.rx.len()),
            });
        }
        self.ier = s.ier;
        self.lcr = s.lcr;
        self.mcr = s.mcr;
        self.lsr = s.lsr;
        self.msr = s.msr;
        self.scr = s.scr;
        self.fcr = s.fcr;
        self.divisor = s.divisor;
        self.thre_pending = s.thre_pending;
        self.rx = s.rx.into_iter().collect();
        self.update_irq();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeIrq, FakeSink};
    use std::sync::Arc;

    /// The model and the line and sink its host would carry its effects out on.
    struct Uart {
        s: Serial,
        irq: Arc<FakeIrq>,
        sink: FakeSink,
    }

    impl Uart {
        fn settle<R>(&mut self, r: R) -> R {
            let fx = self.s.take_effects();
            fx.apply(&[&*self.irq], Some(&mut self.sink));
            r
        }
    }

    fn with(s: Serial) -> (Uart, Arc<FakeIrq>, FakeSink) {
        let irq = Arc::new(FakeIrq::default());
        let sink = FakeSink::default();
        let mut u = Uart {
            s,
            irq: irq.clone(),
            sink: sink.clone(),
        };
        u.settle(());
        (u, irq, sink)
    }

    fn uart() -> (Uart, Arc<FakeIrq>, FakeSink) {
        with(Serial::new())
    }

    fn rd(u: &mut Uart, off: u64) -> u8 {
        let mut b = [0];
        u.s.read(off, &mut b);
        u.settle(b[0])
    }

    fn wr(u: &mut Uart, off: u64, v: u8) {
        u.s.write(off, &[v]);
        u.settle(())
    }

    fn enq(u: &mut Uart, bytes: &[u8]) -> usize {
        let n = u.s.enqueue_input(bytes);
        u.settle(n)
    }

    #[test]
    fn transmit_goes_to_the_sink_and_thr_stays_empty() {
        let (mut s, _irq, sink) = uart();
        for b in b"hi\n" {
            assert_ne!(rd(&mut s, 5) & LSR_THRE, 0);
            wr(&mut s, 0, *b);
        }
        assert_eq!(sink.contents(), b"hi\n");
    }

    #[test]
    fn divisor_latch_is_behind_dlab() {
        let (mut s, _irq, sink) = uart();
        wr(&mut s, 3, 0x83);
        wr(&mut s, 0, 0x01);
        wr(&mut s, 1, 0x00);
        wr(&mut s, 3, 0x03);
        assert!(sink.contents().is_empty(), "DLL writes are not data");
        wr(&mut s, 3, 0x83);
        assert_eq!(rd(&mut s, 0), 1);
        assert_eq!(rd(&mut s, 1), 0);
    }

    #[test]
    fn receive_raises_rda_and_reading_drains() {
        let (mut s, irq, _sink) = uart();
        wr(&mut s, 1, IER_RDA);
        assert!(!irq.is_high());
        assert_eq!(enq(&mut s, b"ab"), 1, "no FIFO: one byte at a time");
        assert!(irq.is_high());
        assert_eq!(rd(&mut s, 2) & 0x0f, IIR_RDA);
        assert_eq!(rd(&mut s, 0), b'a');
        assert!(!irq.is_high());
        assert_eq!(rd(&mut s, 5) & LSR_DR, 0);
    }

    #[test]
    fn fifo_takes_sixteen_and_reports_timeout_below_trigger() {
        let (mut s, irq, _sink) = uart();
        wr(&mut s, 2, 0xc7); // enable, clear, trigger 14
        wr(&mut s, 1, IER_RDA);
        assert_eq!(enq(&mut s, &[b'x'; 20]), 16);
        assert_eq!(s.s.input_space(), 0);
        assert_eq!(rd(&mut s, 2), IIR_RDA | IIR_FIFO_ENABLED);
        for _ in 0..16 {
            rd(&mut s, 0);
        }
        assert!(!irq.is_high());
        enq(&mut s, b"q");
        assert_eq!(rd(&mut s, 2), IIR_TIMEOUT | IIR_FIFO_ENABLED);
    }

    #[test]
    fn thre_interrupt_on_enable_and_cleared_by_iir_read() {
        let (mut s, irq, _sink) = uart();
        wr(&mut s, 1, IER_THRE);
        assert!(irq.is_high());
        assert_eq!(rd(&mut s, 2) & 0x0f, IIR_THRE);
        assert!(!irq.is_high());
        assert_eq!(rd(&mut s, 2) & 0x0f, IIR_NONE);
        wr(&mut s, 0, b'z');
        assert!(irq.is_high(), "THR empties again after a write");
    }

    #[test]
    fn out2_gates_the_interrupt_like_a_pc() {
        let (mut s, irq, _sink) = uart();
        wr(&mut s, 4, 0);
        wr(&mut s, 1, IER_THRE);
        assert!(!irq.is_high());
        wr(&mut s, 4, MCR_OUT2);
        assert!(irq.is_high());
    }

    #[test]
    fn loopback_returns_bytes_and_modem_lines() {
        let (mut s, _irq, sink) = uart();
        wr(&mut s, 4, MCR_LOOP | MCR_RTS | MCR_DTR);
        wr(&mut s, 0, 0x5a);
        assert!(sink.contents().is_empty());
        assert_eq!(rd(&mut s, 5) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut s, 0), 0x5a);
        assert_eq!(rd(&mut s, 6) & (MSR_CTS | MSR_DSR), MSR_CTS | MSR_DSR);
        assert_eq!(s.s.input_space(), 0, "no host input while looped back");
    }

    #[test]
    fn state_round_trips() {
        let (mut s, _irq, _sink) = uart();
        wr(&mut s, 2, 0x01);
        wr(&mut s, 3, 0x03);
        wr(&mut s, 7, 0x42);
        enq(&mut s, b"abc");
        let (mut t, _irq2, _sink2) = with(crate::check_roundtrip(&s.s, Serial::new()));
        assert_eq!(rd(&mut t, 0), b'a');
        assert_eq!(rd(&mut s, 0), b'a');
        let mut bad = s.s.save();
        bad.rx = vec![0; 17];
        assert!(t.s.restore(bad).is_err());
    }
}
