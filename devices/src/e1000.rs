//! e1000: the Intel 82540EM gigabit NIC that QEMU gives `-net nic` by default (PCI
//! 8086:100e), as a state machine over guest memory.
//!
//! Modelled: the register file behind BAR0 (and its IOADDR/IODATA window in BAR1), the
//! EEPROM read through EERD or bit by bit through EECD's microwire pins (as Linux's e1000
//! driver reads it) (MAC address, QEMU's word layout and checksum), the PHY through
//! MDIC, interrupt causes (ICR/ICS/IMS/IMC) on the INTx line, the receive filter (unicast
//! and multicast promiscuous, broadcast, the receive-address table, the multicast hash
//! table), legacy receive descriptors (frames spread over several buffers when needed), and
//! transmit with legacy descriptors and the context/data descriptor pair with IP and
//! TCP/UDP checksum insertion and TCP segmentation offload (TSE: the packet is cut into
//! MSS-sized segments, each with its IP length and id, TCP sequence number and flags, and
//! checksums fixed up, as QEMU's e1000 does). Not modelled: VLAN filtering, EEPROM writes,
//! interrupt moderation timers
//! (interrupts are raised at once).
//!
//! Contract with the host: MMIO/PIO go to [`E1000::read`] / [`E1000::write`]; a write may
//! return frames to transmit ([`E1000::write`]'s result), which the host sends to the
//! backend; frames from the backend go to [`E1000::receive`]. Both may raise INTx.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::pci::{BarDef, BarKind, ConfigSpace, ConfigSpaceState, Ids, PciFunction};
use crate::{IrqLine, Snapshot, StateError};

pub const VENDOR: u16 = 0x8086;
pub const DEVICE: u16 = 0x100e;
/// BAR0: the registers (128 KiB); BAR1: the I/O window (IOADDR at 0, IODATA at 4).
pub const MMIO_BAR: usize = 0;
pub const IO_BAR: usize = 1;
const MMIO_SIZE: u64 = 0x2_0000;
const IO_SIZE: u64 = 0x40;
/// Largest frame the transmit path assembles; longer ones are dropped.
pub const MAX_TX_FRAME: usize = 0x1_0000;

/// Register offsets (Intel 8254x manual, 13.4).
mod reg {
    pub const CTRL: usize = 0x0000;
    pub const STATUS: usize = 0x0008;
    pub const EECD: usize = 0x0010;
    pub const EERD: usize = 0x0014;
    pub const MDIC: usize = 0x0020;
    pub const ICR: usize = 0x00c0;
    pub const ICS: usize = 0x00c8;
    pub const IMS: usize = 0x00d0;
    pub const IMC: usize = 0x00d8;
    pub const RCTL: usize = 0x0100;
    pub const TCTL: usize = 0x0400;
    pub const LEDCTL: usize = 0x0e00;
    pub const PBA: usize = 0x1000;
    pub const RDBAL: usize = 0x2800;
    pub const RDBAH: usize = 0x2804;
    pub const RDLEN: usize = 0x2808;
    pub const RDH: usize = 0x2810;
    pub const RDT: usize = 0x2818;
    pub const TDBAL: usize = 0x3800;
    pub const TDBAH: usize = 0x3804;
    pub const TDLEN: usize = 0x3808;
    pub const TDH: usize = 0x3810;
    pub const TDT: usize = 0x3818;
    /// Statistics: clear on read.
    pub const STATS: std::ops::Range<usize> = 0x4000..0x4100;
    pub const GPRC: usize = 0x4074;
    pub const GPTC: usize = 0x4080;
    pub const GORCL: usize = 0x4088;
    pub const GOTCL: usize = 0x4090;
    pub const TPR: usize = 0x40d0;
    pub const TPT: usize = 0x40d4;
    pub const MTA: usize = 0x5200;
    pub const RA: usize = 0x5400;
}

const CTRL_SLU: u32 = 1 << 6;
const CTRL_RST: u32 = 1 << 26;
const STATUS_LU: u32 = 1 << 1;
/// EECD: the microwire pins (clock, chip select, data in, data out), the access
/// request and grant, EEPROM present.
const EECD_SK: u32 = 1;
const EECD_CS: u32 = 1 << 1;
const EECD_DI: u32 = 1 << 2;
const EECD_DO: u32 = 1 << 3;
const EECD_FWE: u32 = 3 << 4;
const EECD_REQ: u32 = 1 << 6;
const EECD_GNT: u32 = 1 << 7;
const EECD_PRES: u32 = 1 << 8;
/// The microwire READ opcode (after the start bit: 1, 1, 0).
const MICROWIRE_READ: u32 = 6;
const EERD_START: u32 = 1;
const EERD_DONE: u32 = 1 << 4;
const MDIC_READY: u32 = 1 << 28;
const MDIC_INT: u32 = 1 << 29;
const MDIC_ERROR: u32 = 1 << 30;
const RCTL_EN: u32 = 1 << 1;
const RCTL_UPE: u32 = 1 << 3;
const RCTL_MPE: u32 = 1 << 4;
const RCTL_LPE: u32 = 1 << 5;
const RCTL_BAM: u32 = 1 << 15;
const RCTL_BSEX: u32 = 1 << 25;
const RCTL_SECRC: u32 = 1 << 26;
const TCTL_EN: u32 = 1 << 1;
const RAH_AV: u32 = 1 << 31;

/// Interrupt causes.
pub const ICR_TXDW: u32 = 1;
pub const ICR_TXQE: u32 = 1 << 1;
pub const ICR_LSC: u32 = 1 << 2;
pub const ICR_RXDMT0: u32 = 1 << 4;
pub const ICR_RXO: u32 = 1 << 6;
pub const ICR_RXT0: u32 = 1 << 7;
pub const ICR_MDAC: u32 = 1 << 9;
const ICR_INT_ASSERTED: u32 = 1 << 31;

/// Transmit descriptor command bits.
const TXD_EOP: u8 = 1;
const TXD_IC: u8 = 1 << 2;
const TXD_RS: u8 = 1 << 3;
const TXD_RPS: u8 = 1 << 4;
const TXD_DEXT: u8 = 1 << 5;
/// In an extended data descriptor: TCP segmentation.
const TXD_TSE: u8 = 1 << 2;
/// Context descriptor TUCMD bits: TCP (else UDP), IPv4 (else IPv6), segmentation.
const TUCMD_TCP: u8 = 1;
const TUCMD_IP: u8 = 1 << 1;
const TUCMD_TSE: u8 = 1 << 2;
/// The largest packet a driver may hand over for segmentation: 64 KiB of payload and
/// its headers.
const MAX_TSO: usize = 0x1_0000 + 256;
/// Data descriptor option bits (POPTS).
const POPTS_IXSM: u8 = 1;
const POPTS_TXSM: u8 = 2;

/// The PHY's registers at address 1 (an M88E1011 as QEMU models it), link up.
fn phy_init() -> [u16; 32] {
    let mut p = [0u16; 32];
    p[0] = 0x1140; // BMCR: 1000 Mb/s, full duplex, autonegotiation
    p[1] = 0x796d; // BMSR: link up, autonegotiation complete
    p[2] = 0x0141; // PHY ID
    p[3] = 0x0c20;
    p[4] = 0x0de1; // autonegotiation advertisement
    p[5] = 0x41e1; // link partner ability
    p[6] = 0x0001;
    p[9] = 0x0e00; // 1000BASE-T control
    p[10] = 0x3c00; // 1000BASE-T status
    p[15] = 0x3000;
    p[16] = 0x0360; // PHY specific control
    p[17] = 0xac00; // PHY specific status: 1000 Mb/s, full duplex, link
    p[20] = 0x0d60;
    p
}

/// QEMU's EEPROM image for the 82540EM, with the MAC in words 0..3 and the checksum
/// (all 64 words sum to 0xBABA) in word 63.
fn eeprom(mac: [u8; 6]) -> [u16; 64] {
    let mut e: [u16; 64] = [
        0x0000, 0x0000, 0x0000, 0x0000, 0xffff, 0x0000, 0x0000, 0x0000, //
        0x3000, 0x1000, 0x6403, DEVICE, 0x8086, DEVICE, 0x8086, 0x3040, //
        0x0008, 0x2000, 0x7e14, 0x0048, 0x1000, 0x00d8, 0x0000, 0x2700, //
        0x6cc9, 0x3150, 0x0722, 0x040b, 0x0984, 0x0000, 0xc000, 0x0706, //
        0x1008, 0x0000, 0x0f04, 0x7fff, 0x4d01, 0xffff, 0xffff, 0xffff, //
        0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
        0x0100, 0x4000, 0x121c, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
        0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0x0000,
    ];
    for i in 0..3 {
        e[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    let sum = e[..63].iter().fold(0u16, |a, w| a.wrapping_add(*w));
    e[63] = 0xbaba_u16.wrapping_sub(sum);
    e
}

/// A microwire EEPROM conversation: the pins last written, the bits clocked in (start
/// bit, opcode, 6-bit address), and which bit of the data goes out next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Microwire {
    pins: u32,
    bits_in: u32,
    count_in: u32,
    bit_out: u32,
    reading: bool,
}

impl Microwire {
    /// The driver wrote EECD (QEMU's model: a rising CS starts over, a rising SK clocks
    /// DI in, a falling SK moves to the next bit out).
    fn write(&mut self, v: u32) {
        let old = self.pins;
        self.pins = v & (EECD_SK | EECD_CS | EECD_DI | EECD_FWE | EECD_REQ);
        if v & EECD_CS == 0 {
            return;
        }
        if (v ^ old) & EECD_CS != 0 {
            *self = Microwire {
                pins: self.pins,
                ..Default::default()
            };
        }
        if (v ^ old) & EECD_SK == 0 {
            return;
        }
        if v & EECD_SK == 0 {
            self.bit_out = self.bit_out.wrapping_add(1);
            return;
        }
        self.bits_in = (self.bits_in << 1) | u32::from(v & EECD_DI != 0);
        self.count_in += 1;
        if self.count_in == 9 && !self.reading {
            self.bit_out = ((self.bits_in & 0x3f) << 4).wrapping_sub(1);
            self.reading = (self.bits_in >> 6) & 7 == MICROWIRE_READ;
        }
    }

    /// EECD as the driver reads it: present, granted, the pins, and DO (the data bit, or
    /// high when not reading).
    fn read(&self, eeprom: &[u16; 64]) -> u32 {
        let mut v = EECD_PRES | EECD_GNT | self.pins;
        let word = eeprom[((self.bit_out >> 4) & 0x3f) as usize];
        if !self.reading || (word >> ((self.bit_out & 0xf) ^ 0xf)) & 1 != 0 {
            v |= EECD_DO;
        }
        v
    }
}

/// The transmit context set by a context descriptor (checksum offsets; segmentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TxContext {
    ipcss: usize,
    ipcso: usize,
    ipcse: usize,
    tucss: usize,
    tucso: usize,
    tucse: usize,
    /// TUCMD: TCP (else UDP), IPv4 (else IPv6).
    tcp: bool,
    ipv4: bool,
    /// Segmentation: the header length (copied in front of every segment) and MSS.
    hdrlen: usize,
    mss: usize,
}

/// Counters the host reads for `info network`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct E1000Stats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames that found no free receive descriptor (or receive off, or link down).
    pub rx_dropped: u64,
    /// Transmits too long to be a frame.
    pub tx_dropped: u64,
}

pub struct E1000 {
    space: ConfigSpace,
    initial: ConfigSpace,
    regs: Vec<u32>,
    phy: [u16; 32],
    eeprom: [u16; 64],
    /// The microwire conversation through EECD.
    wire: Microwire,
    mac: [u8; 6],
    irq: Arc<dyn IrqLine>,
    link_up: bool,
    /// The I/O window's address register.
    ioaddr: u32,
    ctx: TxContext,
    /// The frame being assembled from data descriptors, and its checksum options.
    tx_frame: Vec<u8>,
    tx_popts: u8,
    /// The frame being assembled is to be segmented (a TSE data descriptor).
    tx_tse: bool,
    tx_legacy_css: Option<(usize, usize)>,
    pub stats: E1000Stats,
    id: String,
}

impl E1000 {
    pub fn new(mac: [u8; 6], irq: Arc<dyn IrqLine>) -> Self {
        let mut space = ConfigSpace::new(Ids {
            vendor: VENDOR,
            device: DEVICE,
            revision: 3,
            class: (0x02, 0x00, 0x00),
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            header_type: 0,
        });
        space.add_bar(
            MMIO_BAR,
            BarDef {
                kind: BarKind::Mem32 { prefetch: false },
                size: MMIO_SIZE,
            },
        );
        space.add_bar(
            IO_BAR,
            BarDef {
                kind: BarKind::Io,
                size: IO_SIZE,
            },
        );
        space.set_interrupt_pin(1);
        let mut e = Self {
            initial: space.clone(),
            space,
            regs: vec![0; MMIO_SIZE as usize / 4],
            phy: phy_init(),
            eeprom: eeprom(mac),
            wire: Microwire::default(),
            mac,
            irq,
            link_up: true,
            ioaddr: 0,
            ctx: TxContext::default(),
            tx_frame: Vec::new(),
            tx_popts: 0,
            tx_tse: false,
            tx_legacy_css: None,
            stats: E1000Stats::default(),
            id: String::new(),
        };
        e.reset_regs();
        e
    }

    pub fn set_id(&mut self, id: &str) {
        self.id = id.to_string();
    }

    /// Room for an option ROM in the configuration space (BAR 6).
    pub fn add_rom(&mut self, size: u64) {
        self.space.add_rom(size);
        self.initial.add_rom(size);
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn r(&self, off: usize) -> u32 {
        self.regs[off / 4]
    }

    fn set(&mut self, off: usize, v: u32) {
        self.regs[off / 4] = v;
    }

    /// Power-on (and CTRL.RST) register values, as QEMU has them.
    fn reset_regs(&mut self) {
        self.regs.fill(0);
        self.set(reg::CTRL, 0x0014_0240 | CTRL_SLU); // SWDPIN0/2, 1000 Mb/s, set link up
        let lu = if self.link_up { STATUS_LU } else { 0 };
        // FD, LU, 1000 Mb/s, ASDV, GIO master enable
        self.set(
            reg::STATUS,
            0x8000_0000 | 0x0008_0000 | 0x0000_0300 | 0x80 | 1 | lu,
        );
        // EEPROM present (in read), flash writes disabled.
        self.wire = Microwire {
            pins: 1 << 4,
            ..Default::default()
        };
        self.set(reg::LEDCTL, 0x0704_8402);
        self.set(reg::PBA, 0x0010_0030);
        let m = self.mac;
        self.set(reg::RA, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        self.set(
            reg::RA + 4,
            u32::from(u16::from_le_bytes([m[4], m[5]])) | RAH_AV,
        );
        self.phy = phy_init();
        if !self.link_up {
            self.phy[1] &= !0x0024;
        }
        self.ctx = TxContext::default();
        self.tx_frame.clear();
        self.tx_popts = 0;
        self.tx_tse = false;
        self.tx_legacy_css = None;
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let pending = self.r(reg::ICR) & self.r(reg::IMS) & !ICR_INT_ASSERTED;
        self.irq.set_level(pending != 0);
    }

    fn raise(&mut self, cause: u32) {
        let icr = self.r(reg::ICR) | cause | ICR_INT_ASSERTED;
        self.set(reg::ICR, icr);
        self.update_irq();
    }

    /// `set_link` from the monitor (or a backend that went away).
    pub fn set_link(&mut self, up: bool) {
        self.link_up = up;
        let s = self.r(reg::STATUS);
        self.set(reg::STATUS, if up { s | STATUS_LU } else { s & !STATUS_LU });
        if up {
            self.phy[1] |= 0x0024;
        } else {
            self.phy[1] &= !0x0024;
        }
        self.raise(ICR_LSC);
    }

    /// A read of BAR0 at `offset`.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let off = offset as usize & !3;
        let v = if off + 4 > MMIO_SIZE as usize {
            0
        } else {
            self.read_reg(off)
        };
        let bytes = v.to_le_bytes();
        let shift = offset as usize & 3;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(shift + i).copied().unwrap_or(0);
        }
    }

    fn read_reg(&mut self, off: usize) -> u32 {
        match off {
            reg::ICR => {
                let v = self.r(reg::ICR);
                self.set(reg::ICR, 0);
                self.update_irq();
                v
            }
            reg::IMC | reg::ICS => 0,
            reg::EECD => self.wire.read(&self.eeprom),
            o if reg::STATS.contains(&o) => {
                let v = self.r(o);
                self.set(o, 0);
                v
            }
            o => self.r(o),
        }
    }

    /// A write to BAR0 at `offset`. Returns the frames the guest transmitted, for the
    /// backend (empty for most registers).
    pub fn write<M: GuestMemory>(&mut self, mem: &M, offset: u64, data: &[u8]) -> Vec<Vec<u8>> {
        let off = offset as usize & !3;
        if off + 4 > MMIO_SIZE as usize || data.is_empty() {
            return Vec::new();
        }
        // Sub-dword writes merge into the register.
        let mut bytes = self.r(off).to_le_bytes();
        let shift = offset as usize & 3;
        for (i, b) in data.iter().enumerate() {
            if let Some(x) = bytes.get_mut(shift + i) {
                *x = *b;
            }
        }
        self.write_reg(mem, off, u32::from_le_bytes(bytes))
    }

    fn write_reg<M: GuestMemory>(&mut self, mem: &M, off: usize, v: u32) -> Vec<Vec<u8>> {
        match off {
            reg::CTRL => {
                if v & CTRL_RST != 0 {
                    self.reset_regs();
                } else {
                    self.set(reg::CTRL, v);
                }
            }
            reg::STATUS | reg::ICR => {}
            reg::EECD => self.wire.write(v),
            reg::EERD => {
                let addr = ((v >> 8) & 0xff) as usize;
                let out = if v & EERD_START == 0 {
                    v
                } else {
                    let word = self.eeprom.get(addr).copied().unwrap_or(0);
                    (u32::from(word) << 16) | EERD_DONE | (v & 0xff00) | EERD_START
                };
                self.set(reg::EERD, out);
            }
            reg::MDIC => {
                let (phy, r, op) = ((v >> 21) & 0x1f, ((v >> 16) & 0x1f) as usize, (v >> 26) & 3);
                let mut out = v & !(MDIC_READY | MDIC_ERROR);
                if phy != 1 {
                    out |= MDIC_ERROR;
                } else if op == 2 {
                    out = (out & !0xffff) | u32::from(self.phy[r]);
                } else if op == 1 && r != 1 && r != 2 && r != 3 {
                    self.phy[r] = v as u16;
                }
                self.set(reg::MDIC, out | MDIC_READY);
                if v & MDIC_INT != 0 {
                    self.raise(ICR_MDAC);
                }
            }
            reg::ICS => self.raise(v),
            reg::IMS => {
                let ims = self.r(reg::IMS) | v;
                self.set(reg::IMS, ims);
                self.update_irq();
            }
            reg::IMC => {
                let ims = self.r(reg::IMS) & !v;
                self.set(reg::IMS, ims);
                self.update_irq();
            }
            reg::RDLEN | reg::TDLEN => self.set(off, v & 0xf_ff80),
            reg::RDH | reg::RDT | reg::TDH => self.set(off, v & 0xffff),
            reg::TDT => {
                self.set(off, v & 0xffff);
                return self.transmit(mem);
            }
            reg::TCTL => {
                self.set(off, v);
                return self.transmit(mem);
            }
            o if reg::STATS.contains(&o) => {}
            o => self.set(o, v),
        }
        Vec::new()
    }

    /// BAR1: IOADDR at 0 selects a register, IODATA at 4 reads or writes it.
    pub fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.ioaddr,
            4 => self.read_reg(self.ioaddr as usize & 0x1_fffc),
            _ => 0,
        };
        let b = v.to_le_bytes();
        for (i, x) in data.iter_mut().enumerate() {
            *x = b.get(i).copied().unwrap_or(0);
        }
    }

    pub fn io_write<M: GuestMemory>(&mut self, mem: &M, offset: u64, data: &[u8]) -> Vec<Vec<u8>> {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        match offset {
            0 => self.ioaddr = v,
            4 => return self.write_reg(mem, self.ioaddr as usize & 0x1_fffc, v),
            _ => {}
        }
        Vec::new()
    }

    fn ring_len(&self, len_reg: usize) -> u32 {
        self.r(len_reg) / 16
    }

    fn ring_base(&self, lo: usize, hi: usize) -> u64 {
        (u64::from(self.r(hi)) << 32) | u64::from(self.r(lo) & !0xf)
    }

    /// Serve transmit descriptors from TDH up to TDT.
    fn transmit<M: GuestMemory>(&mut self, mem: &M) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.r(reg::TCTL) & TCTL_EN == 0 {
            return out;
        }
        let n = self.ring_len(reg::TDLEN);
        let base = self.ring_base(reg::TDBAL, reg::TDBAH);
        if n == 0 {
            return out;
        }
        let mut cause = 0;
        let start = self.r(reg::TDH);
        let mut served = 0;
        while self.r(reg::TDH) != self.r(reg::TDT) && served < n {
            let head = self.r(reg::TDH);
            if head >= n {
                // A head past the ring: the guest programmed nonsense; stop here.
                break;
            }
            let at = GuestAddress(base + 16 * u64::from(head));
            let mut d = [0u8; 16];
            if mem.read_slice(&mut d, at).is_err() {
                break;
            }
            self.tx_descriptor(mem, &d, &mut out);
            if d[11] & (TXD_RS | TXD_RPS) != 0 {
                // Descriptor done: DD in the status byte.
                let _ = mem.write_slice(&[d[12] | 1], at.unchecked_add(12));
                cause |= ICR_TXDW;
            }
            self.set(reg::TDH, (head + 1) % n);
            served += 1;
            if self.r(reg::TDH) == start {
                break;
            }
        }
        if served > 0 {
            self.raise(cause | ICR_TXQE);
        }
        out
    }

    /// One transmit descriptor: a context descriptor updates the offload context; data and
    /// legacy descriptors add their buffer; the last one (EOP) adds the frame to `out` (or,
    /// with segmentation, its segments).
    fn tx_descriptor<M: GuestMemory>(&mut self, mem: &M, d: &[u8; 16], out: &mut Vec<Vec<u8>>) {
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
        let cmd = d[11];
        let extended = cmd & TXD_DEXT != 0;
        let dtyp = (d[10] >> 4) & 0xf;
        if extended && dtyp == 0 {
            self.ctx = TxContext {
                ipcss: usize::from(d[0]),
                ipcso: usize::from(d[1]),
                ipcse: usize::from(u16::from_le_bytes([d[2], d[3]])),
                tucss: usize::from(d[4]),
                tucso: usize::from(d[5]),
                tucse: usize::from(u16::from_le_bytes([d[6], d[7]])),
                tcp: d[11] & TUCMD_TCP != 0,
                ipv4: d[11] & TUCMD_IP != 0,
                hdrlen: if d[11] & TUCMD_TSE != 0 {
                    usize::from(d[13])
                } else {
                    0
                },
                mss: usize::from(u16::from_le_bytes([d[14], d[15]])),
            };
            return;
        }
        let len = if extended {
            (u32::from_le_bytes([d[8], d[9], d[10], 0]) & 0xf_ffff) as usize
        } else {
            usize::from(u16::from_le_bytes([d[8], d[9]]))
        };
        if extended {
            self.tx_popts |= d[13];
            self.tx_tse |= cmd & TXD_TSE != 0 && self.ctx.hdrlen > 0;
        } else if cmd & TXD_IC != 0 {
            self.tx_legacy_css = Some((usize::from(d[13]), usize::from(d[10])));
        }
        let limit = if self.tx_tse { MAX_TSO } else { MAX_TX_FRAME };
        if self.tx_frame.len() + len <= limit {
            let at = self.tx_frame.len();
            self.tx_frame.resize(at + len, 0);
            if mem
                .read_slice(&mut self.tx_frame[at..], GuestAddress(addr))
                .is_err()
            {
                self.tx_frame.truncate(at);
            }
        } else {
            // Too long to be a frame: keep the state, drop it at EOP.
            self.tx_frame.resize(limit + 1, 0);
        }
        if cmd & TXD_EOP == 0 {
            return;
        }
        let mut frame = std::mem::take(&mut self.tx_frame);
        let (popts, legacy) = (self.tx_popts, self.tx_legacy_css.take());
        let tse = std::mem::take(&mut self.tx_tse);
        self.tx_popts = 0;
        if frame.len() > limit || frame.len() < 14 {
            self.stats.tx_dropped += 1;
            return;
        }
        if tse {
            for seg in segment(&frame, &self.ctx, popts) {
                self.count_tx(seg.len());
                out.push(seg);
            }
            return;
        }
        if extended {
            let c = self.ctx;
            if popts & POPTS_IXSM != 0 {
                put_checksum(&mut frame, c.ipcss, c.ipcse, c.ipcso, false);
            }
            if popts & POPTS_TXSM != 0 {
                put_checksum(&mut frame, c.tucss, c.tucse, c.tucso, true);
            }
        } else if let Some((css, cso)) = legacy {
            put_checksum(&mut frame, css, 0, cso, false);
        }
        self.count_tx(frame.len());
        out.push(frame);
    }

    /// Count one frame sent (the statistics registers and `info network`).
    fn count_tx(&mut self, len: usize) {
        self.stats.tx_frames += 1;
        let g = self.r(reg::GPTC).wrapping_add(1);
        self.set(reg::GPTC, g);
        let t = self.r(reg::TPT).wrapping_add(1);
        self.set(reg::TPT, t);
        let o = self.r(reg::GOTCL).wrapping_add(len as u32);
        self.set(reg::GOTCL, o);
    }

    /// Receive buffer size from RCTL.BSIZE/BSEX.
    fn rx_buf_size(&self) -> usize {
        let rctl = self.r(reg::RCTL);
        let base = match (rctl >> 16) & 3 {
            0 => 2048,
            1 => 1024,
            2 => 512,
            _ => 256,
        };
        if rctl & RCTL_BSEX != 0 && base != 2048 {
            base * 16
        } else {
            base
        }
    }

    /// QEMU's e1000 receive filter.
    fn accepts(&self, f: &[u8]) -> bool {
        let rctl = self.r(reg::RCTL);
        let multicast = f[0] & 1 != 0;
        if rctl & RCTL_UPE != 0 {
            return true;
        }
        if multicast && rctl & RCTL_MPE != 0 {
            return true;
        }
        if f[..6] == [0xff; 6] && rctl & RCTL_BAM != 0 {
            return true;
        }
        for i in 0..16 {
            let (lo, hi) = (self.r(reg::RA + 8 * i), self.r(reg::RA + 8 * i + 4));
            if hi & RAH_AV == 0 {
                continue;
            }
            let mut ra = [0u8; 6];
            ra[..4].copy_from_slice(&lo.to_le_bytes());
            ra[4..].copy_from_slice(&hi.to_le_bytes()[..2]);
            if f[..6] == ra {
                return true;
            }
        }
        if !multicast {
            return false;
        }
        let shift = [4, 3, 2, 0][((rctl >> 12) & 3) as usize];
        let h = ((usize::from(f[5]) << 8 | usize::from(f[4])) >> shift) & 0xfff;
        self.r(reg::MTA + 4 * (h >> 5)) & (1 << (h & 31)) != 0
    }

    /// A frame from the backend. Returns false when it was dropped for want of receive
    /// descriptors (or receive is off, or the link is down); frames the filter rejects
    /// count as delivered.
    pub fn receive<M: GuestMemory>(&mut self, mem: &M, frame: &[u8]) -> bool {
        let rctl = self.r(reg::RCTL);
        if !self.link_up || rctl & RCTL_EN == 0 {
            self.stats.rx_dropped += 1;
            return false;
        }
        let mut f = frame.to_vec();
        if f.len() < 60 {
            f.resize(60, 0);
        }
        if f.len() > 1522 && rctl & RCTL_LPE == 0 {
            return true;
        }
        if !self.accepts(&f) {
            return true;
        }
        // With CRC stripping off, the length includes a (zero) frame check sequence.
        if rctl & RCTL_SECRC == 0 {
            f.extend_from_slice(&[0; 4]);
        }
        let n = self.ring_len(reg::RDLEN);
        let base = self.ring_base(reg::RDBAL, reg::RDBAH);
        let size = self.rx_buf_size();
        let (head, tail) = (self.r(reg::RDH), self.r(reg::RDT));
        let free = if n == 0 || head >= n || tail >= n {
            0
        } else {
            (tail + n - head) % n
        };
        if (free as usize) * size < f.len() {
            self.stats.rx_dropped += 1;
            self.raise(ICR_RXO);
            return false;
        }
        let mut head = head;
        for (i, chunk) in f.chunks(size).enumerate() {
            let at = GuestAddress(base + 16 * u64::from(head));
            let mut d = [0u8; 16];
            if mem.read_slice(&mut d, at).is_err() {
                break;
            }
            let buf = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
            let _ = mem.write_slice(chunk, GuestAddress(buf));
            let last = (i + 1) * size >= f.len();
            d[8..10].copy_from_slice(&(chunk.len() as u16).to_le_bytes());
            d[10..12].fill(0);
            d[12] = if last { 0x3 } else { 0x1 }; // DD, EOP on the last
            d[13] = 0;
            let _ = mem.write_slice(&d[8..16], at.unchecked_add(8));
            head = (head + 1) % n;
        }
        self.set(reg::RDH, head);
        self.stats.rx_frames += 1;
        let g = self.r(reg::GPRC).wrapping_add(1);
        self.set(reg::GPRC, g);
        let t = self.r(reg::TPR).wrapping_add(1);
        self.set(reg::TPR, t);
        let o = self.r(reg::GORCL).wrapping_add(f.len() as u32);
        self.set(reg::GORCL, o);
        let mut cause = ICR_RXT0;
        // Fewer free descriptors than RCTL.RDMTS says (1/2, 1/4 or 1/8 of the ring).
        let left = (self.r(reg::RDT) + n - head) % n;
        if left <= n >> (1 + ((rctl >> 8) & 3)) {
            cause |= ICR_RXDMT0;
        }
        self.raise(cause);
        true
    }
}

/// Store the Internet checksum of `frame[start..end]` (to the end when `end` is 0) at
/// `at`, big-endian. `transport`: a zero result is sent as 0xffff (UDP's rule).
fn be16(f: &[u8], at: usize) -> u16 {
    f.get(at..at + 2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    if let Some(b) = f.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

/// Segmentation: cut `pkt` (a header of `c.hdrlen` bytes, then the payload) into
/// segments of at most `c.mss` payload bytes. Each gets the header with its IP length
/// (and, for IPv4, an id one more than the last), its TCP sequence number advanced (FIN and
/// PSH only on the last) or its UDP length, and the checksums `popts` asks for; the
/// driver's TCP/UDP seed is the pseudo-header sum without the length, which is added here.
fn segment(pkt: &[u8], c: &TxContext, popts: u8) -> Vec<Vec<u8>> {
    let h = c.hdrlen.min(pkt.len());
    let mss = c.mss.max(1);
    let payload = &pkt[h..];
    let count = payload.len().div_ceil(mss).max(1);
    (0..count)
        .map(|i| {
            let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
            let mut f = Vec::with_capacity(h + chunk.len());
            f.extend_from_slice(&pkt[..h]);
            f.extend_from_slice(chunk);
            let len = f.len();
            if c.ipv4 {
                put16(&mut f, c.ipcss + 2, len.saturating_sub(c.ipcss) as u16);
                let id = be16(&f, c.ipcss + 4).wrapping_add(i as u16);
                put16(&mut f, c.ipcss + 4, id);
            } else {
                put16(&mut f, c.ipcss + 4, len.saturating_sub(c.ipcss + 40) as u16);
            }
            let l4 = len.saturating_sub(c.tucss);
            if c.tcp {
                if let Some(seq) = f.get_mut(c.tucss + 4..c.tucss + 8) {
                    let s = u32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]])
                        .wrapping_add((i * mss) as u32);
                    seq.copy_from_slice(&s.to_be_bytes());
                }
                if i + 1 < count {
                    if let Some(flags) = f.get_mut(c.tucss + 13) {
                        *flags &= !0x09;
                    }
                }
            } else {
                put16(&mut f, c.tucss + 4, l4 as u16);
            }
            if popts & POPTS_TXSM != 0 {
                let mut seed = u32::from(be16(&f, c.tucso)) + l4 as u32;
                seed = (seed & 0xffff) + (seed >> 16);
                put16(&mut f, c.tucso, seed as u16);
                put_checksum(&mut f, c.tucss, 0, c.tucso, true);
            }
            if popts & POPTS_IXSM != 0 && c.ipv4 {
                put16(&mut f, c.ipcso, 0);
                put_checksum(&mut f, c.ipcss, c.ipcse, c.ipcso, false);
            }
            f
        })
        .collect()
}

fn put_checksum(frame: &mut [u8], start: usize, end: usize, at: usize, transport: bool) {
    let end = if end == 0 || end >= frame.len() {
        frame.len()
    } else {
        end + 1
    };
    if start >= end || at + 2 > frame.len() {
        return;
    }
    let mut sum: u32 = 0;
    for c in frame[start..end].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut c = !(sum as u16);
    if transport && c == 0 {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Everything the driver sees of an e1000 and everything it set: the PCI configuration
/// space; the register file (ring bases, lengths, heads and tails, interrupt cause and
/// mask, receive control and filter tables, statistics, every other register as written)
/// as (offset, value) pairs of the registers that are not zero; the PHY registers; the
/// microwire EEPROM conversation in progress; the I/O window's address; the transmit
/// offload context and the frame being assembled from data descriptors not yet ended by
/// EOP (with its options).
///
/// `mac` is the NIC's configured address (the EEPROM image is built from it) and must
/// match the rebuilt NIC; the EEPROM itself is not saved (the guest cannot write it).
/// Frames in flight are outside the model: a transmitted frame has left it, a received
/// one is either in guest memory or not yet taken from the backend. The host's `info
/// network` counters ([`E1000Stats`]) are not guest state and start again at zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct E1000State {
    config: ConfigSpaceState,
    mac: [u8; 6],
    regs: Vec<(u32, u32)>,
    phy: [u16; 32],
    eecd: Microwire,
    link_up: bool,
    ioaddr: u32,
    tx_context: TxContext,
    tx_frame: Vec<u8>,
    tx_popts: u8,
    tx_tse: bool,
    tx_legacy_css: Option<(usize, usize)>,
}

impl Snapshot for E1000 {
    type State = E1000State;
    const KIND: &'static str = "e1000";
    const VERSION: u32 = 1;

    fn save(&self) -> E1000State {
        E1000State {
            config: self.space.save(),
            mac: self.mac,
            regs: self
                .regs
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != 0)
                .map(|(i, v)| (4 * i as u32, *v))
                .collect(),
            phy: self.phy,
            eecd: self.wire,
            link_up: self.link_up,
            ioaddr: self.ioaddr,
            tx_context: self.ctx,
            tx_frame: self.tx_frame.clone(),
            tx_popts: self.tx_popts,
            tx_tse: self.tx_tse,
            tx_legacy_css: self.tx_legacy_css,
        }
    }

    fn restore(&mut self, s: E1000State) -> Result<(), StateError> {
        let invalid = |r: String| StateError::invalid(Self::KIND, r);
        if s.mac != self.mac {
            return Err(invalid(format!(
                "mac is {:02x?} in the state but this NIC was built with {:02x?}",
                s.mac, self.mac
            )));
        }
        let mut regs = vec![0u32; self.regs.len()];
        for &(off, v) in &s.regs {
            let o = off as usize;
            if !o.is_multiple_of(4) || o + 4 > MMIO_SIZE as usize {
                return Err(invalid(format!(
                    "register offset {off:#x} is not a register (aligned, below {MMIO_SIZE:#x})"
                )));
            }
            regs[o / 4] = v;
        }
        // What the register interface masks, checked; a head or tail past the end of its
        // ring is not refused: a guest can program one, and the model then serves nothing
        // from that ring.
        for (name, off, mask) in [
            ("RDLEN", reg::RDLEN, 0xf_ff80),
            ("TDLEN", reg::TDLEN, 0xf_ff80),
            ("RDH", reg::RDH, 0xffff),
            ("RDT", reg::RDT, 0xffff),
            ("TDH", reg::TDH, 0xffff),
            ("TDT", reg::TDT, 0xffff),
        ] {
            let v = regs[off / 4];
            if v & !mask != 0 {
                return Err(invalid(format!("{name} {v:#x} has bits outside {mask:#x}")));
            }
        }
        let limit = if s.tx_tse { MAX_TSO } else { MAX_TX_FRAME } + 1;
        if s.tx_frame.len() > limit {
            return Err(invalid(format!(
                "tx_frame holds {} bytes (at most {limit})",
                s.tx_frame.len()
            )));
        }
        let c = &s.tx_context;
        for (name, v, max) in [
            ("ipcss", c.ipcss, 0xff),
            ("ipcso", c.ipcso, 0xff),
            ("ipcse", c.ipcse, 0xffff),
            ("tucss", c.tucss, 0xff),
            ("tucso", c.tucso, 0xff),
            ("tucse", c.tucse, 0xffff),
            ("hdrlen", c.hdrlen, 0xff),
            ("mss", c.mss, 0xffff),
        ] {
            if v > max {
                return Err(invalid(format!("tx_context.{name} {v} is above {max}")));
            }
        }
        if let Some((css, cso)) = s.tx_legacy_css {
            if css > 0xff || cso > 0xff {
                return Err(invalid(format!(
                    "tx_legacy_css ({css}, {cso}) is not a pair of byte offsets"
                )));
            }
        }
        let mut space = self.space.clone();
        space
            .restore(s.config)
            .map_err(|e| e.within(Self::KIND, "config"))?;
        self.space = space;
        self.regs = regs;
        self.phy = s.phy;
        self.wire = s.eecd;
        self.link_up = s.link_up;
        self.ioaddr = s.ioaddr;
        self.ctx = s.tx_context;
        self.tx_frame = s.tx_frame;
        self.tx_popts = s.tx_popts;
        self.tx_tse = s.tx_tse;
        self.tx_legacy_css = s.tx_legacy_css;
        self.update_irq();
        Ok(())
    }
}

impl PciFunction for E1000 {
    fn config(&self) -> &ConfigSpace {
        &self.space
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.space
    }
    fn reset(&mut self) {
        self.space = self.initial.clone();
        self.reset_regs();
        self.stats = E1000Stats::default();
    }
    fn id(&self) -> String {
        self.id.clone()
    }
}

#[cfg(test)]
mod tests;
