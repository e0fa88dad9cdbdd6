//! A polling ring-3 driver for the e1000 (82540EM): reset, MAC from the EEPROM (EERD, or
//! with `microwire` bit by bit through EECD as Linux's e1000 driver reads it, checking the
//! whole EEPROM's checksum), one receive ring of 2 KiB buffers and one transmit ring,
//! legacy descriptors.

use guestlib::phys::{copy_to, mmio_read32, mmio_write32, read_u16, read_u8};
use guestlib::time::Deadline;
use guestlib::{pci, println};

use crate::transport::{w64, RING_BASE};

const CTRL: u64 = 0x0;
const STATUS: u64 = 0x8;
const EECD: u64 = 0x10;
const EERD: u64 = 0x14;
const IMC: u64 = 0xd8;
const RCTL: u64 = 0x100;
const TCTL: u64 = 0x400;
const RDBAL: u64 = 0x2800;
const RDBAH: u64 = 0x2804;
const RDLEN: u64 = 0x2808;
const RDH: u64 = 0x2810;
const RDT: u64 = 0x2818;
const TDBAL: u64 = 0x3800;
const TDBAH: u64 = 0x3804;
const TDLEN: u64 = 0x3808;
const TDH: u64 = 0x3810;
const TDT: u64 = 0x3818;
const RAL: u64 = 0x5400;
const RAH: u64 = 0x5404;

const N: u16 = 16;
const RX_RING: u64 = RING_BASE + 0x2_0000;
const TX_RING: u64 = RING_BASE + 0x2_1000;
const RX_BUF: u64 = RING_BASE + 0x3_0000;
const TX_BUF: u64 = RING_BASE + 0x4_0000;

pub struct E1000 {
    regs: u64,
    rx_next: u16,
    tx_next: u16,
    pub mac: [u8; 6],
    /// Read the EEPROM through EECD (else EERD).
    microwire: bool,
}

impl E1000 {
    fn r(&self, off: u64) -> u32 {
        mmio_read32(self.regs + off)
    }

    fn w(&self, off: u64, v: u32) {
        mmio_write32(self.regs + off, v)
    }

    /// EEPROM word `addr` through EECD's microwire pins: request access, select, clock
    /// out the READ opcode (1, 1, 0) and the 6-bit address, clock 16 data bits in.
    fn eeprom_microwire(&self, addr: u32) -> Option<u16> {
        const SK: u32 = 1;
        const CS: u32 = 1 << 1;
        const DI: u32 = 1 << 2;
        const DO: u32 = 1 << 3;
        const REQ: u32 = 1 << 6;
        const GNT: u32 = 1 << 7;
        let mut e = self.r(EECD) | REQ;
        self.w(EECD, e);
        let d = Deadline::after_ms(100);
        while self.r(EECD) & GNT == 0 {
            if d.expired() {
                return None;
            }
        }
        e = (e & !(DI | SK)) | CS;
        self.w(EECD, e);
        let command = (6 << 6) | (addr & 0x3f);
        for i in (0..9).rev() {
            e = if (command >> i) & 1 != 0 {
                e | DI
            } else {
                e & !DI
            };
            self.w(EECD, e);
            self.w(EECD, e | SK);
            self.w(EECD, e);
        }
        e &= !DI;
        let mut word = 0u16;
        for _ in 0..16 {
            self.w(EECD, e | SK);
            word = (word << 1) | u16::from(self.r(EECD) & DO != 0);
            self.w(EECD, e);
        }
        self.w(EECD, e & !(CS | REQ));
        Some(word)
    }

    fn eeprom(&self, word: u32) -> Option<u16> {
        if self.microwire {
            return self.eeprom_microwire(word);
        }
        self.w(EERD, (word << 8) | 1);
        let d = Deadline::after_ms(100);
        while !d.expired() {
            let v = self.r(EERD);
            if v & 0x10 != 0 {
                return Some((v >> 16) as u16);
            }
        }
        None
    }

    /// Find the first e1000, reset it and bring both rings up.
    pub fn open(microwire: bool) -> Option<E1000> {
        let (d, f) = pci::find(0x8086, 0x100e)?;
        let regs = pci::mem_bar(d, f, 0, 0xe200_0000);
        let cmd = pci::read32(d, f, 0x04);
        pci::write32(d, f, 0x04, cmd | 0x6); // memory, bus master
        let mut e = E1000 {
            regs,
            rx_next: 0,
            tx_next: 0,
            mac: [0; 6],
            microwire,
        };
        e.w(CTRL, 1 << 26);
        let t = Deadline::after_ms(100);
        while e.r(CTRL) & (1 << 26) != 0 && !t.expired() {}
        e.w(IMC, 0xffff_ffff);
        for i in 0..3 {
            let w = e.eeprom(i)?.to_le_bytes();
            e.mac[2 * i as usize..2 * i as usize + 2].copy_from_slice(&w);
        }
        if microwire {
            // The 64 words sum to 0xbaba, as the driver checks.
            let mut sum = 0u16;
            for i in 0..64 {
                sum = sum.wrapping_add(e.eeprom(i)?);
            }
            println!("vnet: e1000 eeprom (microwire) checksum {sum:#06x}");
        }
        let m = e.mac;
        let (ral, rah) = (e.r(RAL), e.r(RAH));
        if ral != u32::from_le_bytes([m[0], m[1], m[2], m[3]])
            || rah != (1 << 31) | u32::from(u16::from_le_bytes([m[4], m[5]]))
        {
            println!("e1000: RAL/RAH {ral:#x}/{rah:#x} do not hold the EEPROM's MAC");
            return None;
        }
        for i in 0..u64::from(N) {
            w64(RX_RING + 16 * i, RX_BUF + 2048 * i);
            w64(RX_RING + 16 * i + 8, 0);
            w64(TX_RING + 16 * i, 0);
            w64(TX_RING + 16 * i + 8, 0);
        }
        e.w(RDBAL, RX_RING as u32);
        e.w(RDBAH, 0);
        e.w(RDLEN, 16 * u32::from(N));
        e.w(RDH, 0);
        e.w(RDT, u32::from(N) - 1);
        // Enable, accept broadcast, strip the CRC, 2 KiB buffers.
        e.w(RCTL, (1 << 1) | (1 << 15) | (1 << 26));
        e.w(TDBAL, TX_RING as u32);
        e.w(TDBAH, 0);
        e.w(TDLEN, 16 * u32::from(N));
        e.w(TDH, 0);
        e.w(TDT, 0);
        e.w(TCTL, (1 << 1) | (1 << 3) | (0x10 << 4) | (0x40 << 12));
        Some(e)
    }

    pub fn link_up(&self) -> bool {
        self.r(STATUS) & 2 != 0
    }

    /// Transmit one frame and wait for its descriptor to be done.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        let i = u64::from(self.tx_next);
        copy_to(TX_BUF + 2048 * i, frame);
        let d = TX_RING + 16 * i;
        w64(d, TX_BUF + 2048 * i);
        // length, cso 0, cmd EOP | IFCS | RS, status 0
        w64(d + 8, frame.len() as u64 | (0x0b << 24));
        self.tx_next = (self.tx_next + 1) % N;
        self.w(TDT, u32::from(self.tx_next));
        let t = Deadline::after_ms(2000);
        while read_u8(d + 12) & 1 == 0 {
            if t.expired() {
                println!("e1000: transmit descriptor {i} never done");
                return false;
            }
        }
        true
    }

    /// The next received frame copied into `buf` (its length), waiting up to `ms`.
    pub fn recv(&mut self, buf: &mut [u8], ms: u64) -> Option<usize> {
        let t = Deadline::after_ms(ms);
        let i = u64::from(self.rx_next);
        let d = RX_RING + 16 * i;
        while read_u8(d + 12) & 1 == 0 {
            if t.expired() {
                return None;
            }
            core::hint::spin_loop();
        }
        let len = usize::from(read_u16(d + 8)).min(buf.len());
        for (k, b) in buf[..len].iter_mut().enumerate() {
            *b = read_u8(RX_BUF + 2048 * i + k as u64);
        }
        w64(d + 8, 0);
        self.w(RDT, u32::from(self.rx_next));
        self.rx_next = (self.rx_next + 1) % N;
        Some(len)
    }
}
