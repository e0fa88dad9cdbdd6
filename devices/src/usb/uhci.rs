//! The PIIX3 USB controller (`piix3-usb-uhci`, PCI 8086:7020): a UHCI 1.1 host controller
//! with two root ports, as QEMU's `pc` machine has it at 00:01.2 with `-usb`.
//!
//! Modelled (UHCI 1.1 design guide): the I/O registers behind BAR4 (§2.1: USBCMD, USBSTS,
//! USBINTR, FRNUM, FLBASEADD, SOFMOD, PORTSC1/2), host controller and global reset, the
//! frame list walker (§3.1-3.4: one frame per [`Uhci::run_frame`] call, queue heads and
//! transfer descriptors fetched from guest memory, depth- or breadth-first as each link
//! says, the queue element pointer advanced as TDs complete, short packets and stalls
//! stopping their queue), interrupt on completion, short packet and error (§2.1.3), on
//! INTx pin D, and the root ports' connect, enable and reset bits (§2.1.7) with the HID
//! devices ([`super::hid`]) plugged into them. Not modelled: isochronous transfers (a TD
//! with IOS set completes as if sent), low-speed devices, global suspend and resume,
//! bandwidth limits (a frame runs every active TD it reaches).
//!
//! Host contract: port I/O on BAR4 goes to [`Uhci::io_read`] / [`Uhci::io_write`]; a
//! timer calls [`Uhci::run_frame`] every millisecond while [`Uhci::running`]; input for
//! a device goes through [`Uhci::device_mut`]. The model drives its INTx line itself.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::hid::{HidDevice, HidKind};
use super::{Packet, Pid, Reply};
use crate::pci::{BarDef, BarKind, ConfigSpace, ConfigSpaceState, Ids, PciFunction};
use crate::{IrqLine, Snapshot, StateError};

pub const VENDOR: u16 = 0x8086;
pub const DEVICE: u16 = 0x7020;
/// The register block: BAR4, 32 bytes of I/O.
pub const IO_BAR: usize = 4;
pub const IO_SIZE: u64 = 0x20;
/// Root ports.
pub const PORTS: usize = 2;
/// The INTx pin: D, as QEMU wires the PIIX3 UHCI.
pub const INTX_PIN: u8 = 4;

/// Register offsets (§2.1).
mod reg {
    pub const USBCMD: u64 = 0x00;
    pub const USBSTS: u64 = 0x02;
    pub const USBINTR: u64 = 0x04;
    pub const FRNUM: u64 = 0x06;
    pub const FLBASEADD: u64 = 0x08;
    pub const SOFMOD: u64 = 0x0c;
    pub const PORTSC1: u64 = 0x10;
}

/// USBCMD bits (§2.1.1).
const CMD_RS: u16 = 1;
const CMD_HCRESET: u16 = 1 << 1;
const CMD_GRESET: u16 = 1 << 2;
/// USBSTS bits (§2.1.2).
const STS_USBINT: u16 = 1;
const STS_ERROR: u16 = 1 << 1;
const STS_RESUME: u16 = 1 << 2;
const STS_HSE: u16 = 1 << 3;
const STS_HCPE: u16 = 1 << 4;
const STS_HALTED: u16 = 1 << 5;
/// USBINTR bits (§2.1.3).
const INTR_TIMEOUT_CRC: u16 = 1;
const INTR_RESUME: u16 = 1 << 1;
const INTR_IOC: u16 = 1 << 2;
const INTR_SHORT: u16 = 1 << 3;
/// PORTSC bits (§2.1.7).
const PORT_CCS: u16 = 1;
const PORT_CSC: u16 = 1 << 1;
const PORT_PED: u16 = 1 << 2;
const PORT_PEDC: u16 = 1 << 3;
const PORT_RD: u16 = 1 << 6;
/// Reserved, reads as 1.
const PORT_ALWAYS: u16 = 1 << 7;
const PORT_PR: u16 = 1 << 9;
const PORT_SUSP: u16 = 1 << 12;
const PORT_WRITABLE: u16 = PORT_PED | PORT_RD | PORT_PR | PORT_SUSP;
const PORT_W1C: u16 = PORT_CSC | PORT_PEDC;

/// Link pointer bits (§3.1-3.3).
const LINK_TERMINATE: u32 = 1;
const LINK_QH: u32 = 1 << 1;
const LINK_DEPTH: u32 = 1 << 2;
const LINK_ADDR: u32 = !0xf;
/// TD control and status (§3.2.2).
const TD_ACTLEN: u32 = 0x7ff;
const TD_BITSTUFF: u32 = 1 << 17;
const TD_TIMEOUT: u32 = 1 << 18;
const TD_NAK: u32 = 1 << 19;
const TD_BABBLE: u32 = 1 << 20;
const TD_STALLED: u32 = 1 << 22;
const TD_ACTIVE: u32 = 1 << 23;
const TD_IOC: u32 = 1 << 24;
const TD_CERR: u32 = 3 << 27;
const TD_SPD: u32 = 1 << 29;

/// Links one frame follows at most: a schedule that loops without end (or a guest's
/// garbage) cannot hold the timer longer than this.
const MAX_LINKS_PER_FRAME: usize = 512;
/// The largest transfer one TD may ask for (MaxLen is 11 bits, 0x4ff is the spec's limit).
const MAX_TD_LEN: usize = 0x500;

/// Ways a configuration of the controller can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UhciError {
    #[error("usb port {0} not found (the UHCI controller has ports 1 and 2)")]
    NoSuchPort(usize),
    #[error("usb port {0} is in use")]
    PortInUse(usize),
    #[error("no free usb port (the UHCI controller has 2)")]
    Full,
}

/// One root port: its status and control register and the device plugged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub sc: u16,
    pub device: Option<HidDevice>,
}

impl Port {
    /// Power-on: connected (and the change noticed) when a device is plugged in.
    fn power_on(&mut self) {
        self.sc = PORT_ALWAYS;
        if let Some(d) = &mut self.device {
            self.sc |= PORT_CCS | PORT_CSC;
            d.bus_reset();
        }
    }
}

/// The guest-visible registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Regs {
    cmd: u16,
    sts: u16,
    intr: u16,
    frnum: u16,
    flbase: u32,
    sofmod: u8,
}

impl Regs {
    fn power_on() -> Self {
        Self {
            sts: STS_HALTED,
            sofmod: 0x40,
            ..Self::default()
        }
    }
}

/// Why USBINT is set: completion, a short packet, or both (they have separate enables).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Causes {
    ioc: bool,
    short: bool,
}

/// The controller.
pub struct Uhci {
    space: ConfigSpace,
    initial: ConfigSpace,
    regs: Regs,
    causes: Causes,
    ports: [Port; PORTS],
    irq: Arc<dyn IrqLine>,
    level: bool,
    id: String,
    /// The controller's PCI address (`0000:00:01.2`), part of its devices' locations.
    location: String,
    /// Frames run since power-on (for tests and `info usb` diagnostics).
    pub frames: u64,
}

/// What one TD came to.
enum TdOutcome {
    /// Done (ACK); `short`: an IN that moved less than asked, with SPD set.
    Done { short: bool },
    /// Still active (NAK): the queue waits here.
    Waiting,
    /// Not active: the controller does not touch it; a queue waits here for the driver
    /// to activate it (§3.4.2: only a TD completed now advances the queue).
    Inactive,
    /// Stalled or timed out: the queue stops here.
    Failed,
}

impl Uhci {
    pub fn new(irq: Arc<dyn IrqLine>) -> Self {
        let mut space = ConfigSpace::new(Ids {
            vendor: VENDOR,
            device: DEVICE,
            revision: 1,
            class: (0x0c, 0x03, 0x00),
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            header_type: 0,
        });
        space.add_bar(
            IO_BAR,
            BarDef {
                kind: BarKind::Io,
                size: IO_SIZE,
            },
        );
        space.set_interrupt_pin(INTX_PIN);
        // Serial bus release number: USB 1.0 (0x60), and the legacy support register
        // (0xC0: PIRQ enabled) firmware writes to hand the controller to the OS.
        space.set_byte(0x60, 0x10);
        space.set_word(0xc0, 0x2000);
        space.set_writable(0xc0, 0xff);
        space.set_writable(0xc1, 0xff);
        Self {
            initial: space.clone(),
            space,
            regs: Regs::power_on(),
            causes: Causes::default(),
            ports: [
                Port {
                    sc: PORT_ALWAYS,
                    device: None,
                },
                Port {
                    sc: PORT_ALWAYS,
                    device: None,
                },
            ],
            irq,
            level: false,
            id: String::new(),
            location: String::new(),
            frames: 0,
        }
    }

    pub fn set_id(&mut self, id: &str) {
        self.id = id.to_string();
    }

    /// The controller's PCI address as QEMU writes it (`0000:00:01.2`): the devices
    /// plugged in after this carry it (and their port) in their serial number string.
    pub fn set_location(&mut self, pci: &str) {
        self.location = pci.to_string();
    }

    /// Plug a device into `port` (1-based), or the first free port.
    pub fn attach(&mut self, port: Option<usize>, kind: HidKind) -> Result<usize, UhciError> {
        let n = match port {
            Some(p) if p == 0 || p > PORTS => return Err(UhciError::NoSuchPort(p)),
            Some(p) if self.ports[p - 1].device.is_some() => return Err(UhciError::PortInUse(p)),
            Some(p) => p,
            None => {
                self.ports
                    .iter()
                    .position(|p| p.device.is_none())
                    .ok_or(UhciError::Full)?
                    + 1
            }
        };
        let mut dev = HidDevice::new(kind);
        if !self.location.is_empty() {
            dev.set_location(&format!("{}-{n}", self.location));
        }
        let p = &mut self.ports[n - 1];
        p.device = Some(dev);
        p.sc |= PORT_CCS | PORT_CSC;
        Ok(n)
    }

    /// The device on `port` (1-based).
    pub fn device(&self, port: usize) -> Option<&HidDevice> {
        self.ports.get(port.wrapping_sub(1))?.device.as_ref()
    }

    pub fn device_mut(&mut self, port: usize) -> Option<&mut HidDevice> {
        self.ports.get_mut(port.wrapping_sub(1))?.device.as_mut()
    }

    /// PORTSC of `port` (1-based).
    pub fn port_status(&self, port: usize) -> u16 {
        self.ports.get(port.wrapping_sub(1)).map_or(0, |p| p.sc)
    }

    /// The schedule runs (USBCMD.RS): the host's timer calls [`Self::run_frame`].
    pub fn running(&self) -> bool {
        self.regs.cmd & CMD_RS != 0
    }

    // ---- registers ----

    fn read_word(&self, off: u64) -> u16 {
        match off {
            reg::USBCMD => self.regs.cmd,
            reg::USBSTS => self.regs.sts,
            reg::USBINTR => self.regs.intr,
            reg::FRNUM => self.regs.frnum,
            reg::FLBASEADD => self.regs.flbase as u16,
            0x0a => (self.regs.flbase >> 16) as u16,
            reg::SOFMOD => u16::from(self.regs.sofmod),
            0x10 | 0x12 => self.ports[((off - reg::PORTSC1) / 2) as usize].sc,
            // Past the last port: bit 7 clear tells a driver counting ports to stop.
            _ => 0xff7f,
        }
    }

    /// A guest read of BAR4.
    pub fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            if at >= IO_SIZE {
                *b = 0xff;
                continue;
            }
            let w = self.read_word(at & !1);
            *b = (w >> (8 * (at & 1))) as u8;
        }
    }

    /// A guest write to BAR4.
    pub fn io_write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (reg::FLBASEADD, 4) => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.regs.flbase = v & !0xfff;
            }
            (reg::SOFMOD, 1) => self.regs.sofmod = data[0] & 0x7f,
            (off, 2) if off % 2 == 0 => {
                self.write_word(off, u16::from_le_bytes([data[0], data[1]]))
            }
            (off, 1) => {
                // A byte of a word register: the other byte unchanged, except in the
                // write-1-to-clear registers, where it writes zeroes (clears nothing).
                let word = off & !1;
                let w1c = word == reg::USBSTS || (0x10..0x14).contains(&word);
                let cur = if w1c { 0 } else { self.read_word(word) };
                let shift = 8 * (off & 1);
                let v = (cur & !(0xff << shift)) | (u16::from(data[0]) << shift);
                let v = if w1c && word != reg::USBSTS {
                    // PORTSC's read/write bits keep their value.
                    v | (self.read_word(word) & PORT_WRITABLE & !(0xff << shift))
                } else {
                    v
                };
                self.write_word(word, v);
            }
            (off, 4) if off % 4 == 0 => {
                self.write_word(off, u16::from_le_bytes([data[0], data[1]]));
                self.write_word(off + 2, u16::from_le_bytes([data[2], data[3]]));
            }
            (off, n) => {
                tracing::debug!(target: "guest_errors", "uhci: {n}-byte write at {off:#x} ignored")
            }
        }
    }

    fn write_word(&mut self, off: u64, v: u16) {
        match off {
            reg::USBCMD => self.write_cmd(v),
            reg::USBSTS => {
                // Write 1 to clear; HCHalted is read-only.
                let clear = v & (STS_USBINT | STS_ERROR | STS_RESUME | STS_HSE | STS_HCPE);
                self.regs.sts &= !clear;
                if clear & STS_USBINT != 0 {
                    self.causes = Causes::default();
                }
                self.update_irq();
            }
            reg::USBINTR => {
                self.regs.intr = v & 0xf;
                self.update_irq();
            }
            // Writable only while halted (§2.1.4).
            reg::FRNUM if self.regs.sts & STS_HALTED != 0 => self.regs.frnum = v & 0x7ff,
            reg::FLBASEADD => {
                self.regs.flbase = (self.regs.flbase & 0xffff_0000) | u32::from(v & !0xfff);
            }
            0x0a => self.regs.flbase = (self.regs.flbase & 0xffff) | (u32::from(v) << 16),
            reg::SOFMOD => self.regs.sofmod = (v & 0x7f) as u8,
            0x10 | 0x12 => self.write_port(((off - reg::PORTSC1) / 2) as usize, v),
            _ => {}
        }
    }

    fn write_cmd(&mut self, v: u16) {
        if v & CMD_GRESET != 0 {
            // Global reset: the bus is reset, every device with it (§2.1.1); the bit
            // stays as written until software clears it.
            self.reset_registers();
            self.regs.cmd = v & !CMD_RS;
            return;
        }
        if v & CMD_HCRESET != 0 {
            // Host controller reset: registers and ports to their defaults; the bit
            // clears itself when done (at once here).
            self.reset_registers();
            return;
        }
        self.regs.cmd = v;
        if v & CMD_RS != 0 {
            self.regs.sts &= !STS_HALTED;
        } else {
            self.regs.sts |= STS_HALTED;
        }
    }

    fn reset_registers(&mut self) {
        self.regs = Regs::power_on();
        self.causes = Causes::default();
        for p in &mut self.ports {
            p.power_on();
        }
        self.update_irq();
    }

    fn write_port(&mut self, n: usize, v: u16) {
        let p = &mut self.ports[n];
        let old = p.sc;
        if v & PORT_PR != 0 && old & PORT_PR == 0 {
            // Port reset (§2.1.7 bit 9): the device sees a bus reset.
            if let Some(d) = &mut p.device {
                d.bus_reset();
            }
        }
        let mut sc = (old & !PORT_WRITABLE) | (v & PORT_WRITABLE);
        if sc & PORT_CCS == 0 {
            // Only a port with a device can be enabled.
            sc &= !PORT_PED;
        }
        sc &= !(v & PORT_W1C);
        p.sc = sc | PORT_ALWAYS;
    }

    fn update_irq(&mut self) {
        let r = &self.regs;
        let usbint = r.sts & STS_USBINT != 0
            && ((self.causes.ioc && r.intr & INTR_IOC != 0)
                || (self.causes.short && r.intr & INTR_SHORT != 0));
        let level = usbint
            || (r.sts & STS_ERROR != 0 && r.intr & INTR_TIMEOUT_CRC != 0)
            || (r.sts & STS_RESUME != 0 && r.intr & INTR_RESUME != 0)
            || r.sts & (STS_HSE | STS_HCPE) != 0;
        if level != self.level {
            self.level = level;
            self.irq.set_level(level);
        }
    }

    // ---- the schedule ----

    /// Run one frame (§3.4): the frame list entry FRNUM selects, then the next frame
    /// number. Does nothing while halted.
    pub fn run_frame<M: GuestMemory>(&mut self, mem: &M) {
        if !self.running() {
            return;
        }
        self.frames += 1;
        let entry = self.regs.flbase as u64 + 4 * u64::from(self.regs.frnum & 0x3ff);
        match read32(mem, entry) {
            Some(link) => self.walk(mem, link),
            None => self.host_system_error(entry),
        }
        self.regs.frnum = (self.regs.frnum + 1) & 0x7ff;
        self.update_irq();
    }

    /// Memory the controller cannot reach: Host System Error, and the controller halts
    /// (§2.1.2 bit 3).
    fn host_system_error(&mut self, addr: u64) {
        tracing::warn!(target: "guest_errors", "uhci: schedule at {addr:#x} is outside guest memory");
        self.regs.sts |= STS_HSE | STS_HALTED;
        self.regs.cmd &= !CMD_RS;
    }

    fn walk<M: GuestMemory>(&mut self, mem: &M, mut link: u32) {
        // Queue heads seen this frame: a schedule that links back to one (Linux's
        // bandwidth reclamation loop) ends the frame there.
        let mut seen_qhs: Vec<u32> = Vec::new();
        let mut budget = MAX_LINKS_PER_FRAME;
        while link & LINK_TERMINATE == 0 && budget > 0 && self.running() {
            budget -= 1;
            let addr = link & LINK_ADDR;
            if link & LINK_QH == 0 {
                // A TD straight in the frame list (isochronous style): run it whatever
                // comes of it, then follow its link.
                let Some(next) = read32(mem, u64::from(addr)) else {
                    return self.host_system_error(u64::from(addr));
                };
                self.run_td(mem, addr);
                link = next;
                continue;
            }
            if seen_qhs.contains(&addr) {
                return;
            }
            seen_qhs.push(addr);
            let (Some(head), Some(mut element)) = (
                read32(mem, u64::from(addr)),
                read32(mem, u64::from(addr) + 4),
            ) else {
                return self.host_system_error(u64::from(addr));
            };
            // The queue: its TDs in order, as long as they complete and say depth first.
            while element & (LINK_TERMINATE | LINK_QH) == 0 && budget > 0 {
                budget -= 1;
                let td = element & LINK_ADDR;
                let Some(td_link) = read32(mem, u64::from(td)) else {
                    return self.host_system_error(u64::from(td));
                };
                match self.run_td(mem, td) {
                    TdOutcome::Done { short: false } => {
                        element = td_link;
                        let _ = mem.write_obj(element, GuestAddress(u64::from(addr) + 4));
                        if td_link & LINK_DEPTH == 0 {
                            break;
                        }
                    }
                    // A short packet leaves the element on its TD for the driver (§3.2.2,
                    // SPD); a NAK or a failure leaves the queue waiting at it.
                    TdOutcome::Done { short: true }
                    | TdOutcome::Waiting
                    | TdOutcome::Inactive
                    | TdOutcome::Failed => break,
                }
            }
            link = head;
        }
    }

    /// Execute the TD at `addr` if active; write its status back.
    fn run_td<M: GuestMemory>(&mut self, mem: &M, addr: u32) -> TdOutcome {
        let a = u64::from(addr);
        let (Some(ctrl), Some(token), Some(buffer)) =
            (read32(mem, a + 4), read32(mem, a + 8), read32(mem, a + 12))
        else {
            self.host_system_error(a);
            return TdOutcome::Failed;
        };
        if ctrl & TD_ACTIVE == 0 {
            return TdOutcome::Inactive;
        }
        let max_len = ((token >> 21) + 1) as usize & 0x7ff;
        let dev_addr = ((token >> 8) & 0x7f) as u8;
        let endpoint = ((token >> 15) & 0xf) as u8;
        let Some(pid) = Pid::from_byte(token as u8) else {
            // A PID the controller does not know: Host Controller Process Error (§2.1.2).
            tracing::warn!(target: "guest_errors", "uhci: TD {addr:#x} has PID {:#x}", token as u8);
            self.regs.sts |= STS_HCPE | STS_HALTED;
            self.regs.cmd &= !CMD_RS;
            return TdOutcome::Failed;
        };
        if max_len > MAX_TD_LEN {
            return self.finish_td(mem, a, ctrl, Err(TD_BABBLE));
        }
        let mut buf = vec![0u8; max_len];
        if pid != Pid::In
            && max_len > 0
            && mem
                .read_slice(&mut buf, GuestAddress(u64::from(buffer)))
                .is_err()
        {
            self.host_system_error(u64::from(buffer));
            return TdOutcome::Failed;
        }
        // The device at that address on an enabled port; none answers: a time-out.
        let dev = self
            .ports
            .iter_mut()
            .filter(|p| p.sc & PORT_PED != 0)
            .filter_map(|p| p.device.as_mut())
            .find(|d| d.address() == dev_addr);
        let reply = match dev {
            Some(d) => d.handle(Packet {
                pid,
                endpoint,
                data: &mut buf,
            }),
            None => return self.finish_td(mem, a, ctrl, Err(TD_TIMEOUT)),
        };
        match reply {
            Reply::Ack(n) => {
                if pid == Pid::In
                    && n > 0
                    && mem
                        .write_slice(&buf[..n], GuestAddress(u64::from(buffer)))
                        .is_err()
                {
                    self.host_system_error(u64::from(buffer));
                    return TdOutcome::Failed;
                }
                let short = pid == Pid::In && n < max_len && ctrl & TD_SPD != 0;
                if short {
                    self.note_short();
                }
                self.finish_td(mem, a, ctrl, Ok(n)).and_short(short)
            }
            Reply::Nak => {
                let _ = mem.write_obj(ctrl | TD_NAK, GuestAddress(a + 4));
                TdOutcome::Waiting
            }
            Reply::Stall => self.finish_td(mem, a, ctrl, Err(TD_STALLED)),
        }
    }

    /// Retire a TD: `Ok(n)` bytes moved, or `Err(status bit)`.
    fn finish_td<M: GuestMemory>(
        &mut self,
        mem: &M,
        a: u64,
        ctrl: u32,
        result: Result<usize, u32>,
    ) -> TdOutcome {
        let mut c = ctrl
            & !(TD_ACTIVE | TD_ACTLEN | TD_NAK | TD_STALLED | TD_TIMEOUT | TD_BABBLE | TD_BITSTUFF);
        let outcome = match result {
            Ok(n) => {
                // ActLen is n - 1 (0x7ff for none).
                c |= (n as u32).wrapping_sub(1) & TD_ACTLEN;
                if ctrl & TD_IOC != 0 {
                    self.regs.sts |= STS_USBINT;
                    self.causes.ioc = true;
                }
                TdOutcome::Done { short: false }
            }
            Err(bit) => {
                // The error counter runs out at once (the device will not change its mind).
                c = (c & !TD_CERR) | bit | TD_ACTLEN;
                self.regs.sts |= STS_ERROR;
                if ctrl & TD_IOC != 0 {
                    self.regs.sts |= STS_USBINT;
                    self.causes.ioc = true;
                }
                TdOutcome::Failed
            }
        };
        let _ = mem.write_obj(c, GuestAddress(a + 4));
        outcome
    }
}

impl TdOutcome {
    fn and_short(self, short: bool) -> Self {
        match self {
            TdOutcome::Done { .. } => TdOutcome::Done { short },
            other => other,
        }
    }
}

fn read32<M: GuestMemory>(mem: &M, addr: u64) -> Option<u32> {
    mem.read_obj::<u32>(GuestAddress(addr)).ok()
}

impl Uhci {
    /// A short packet retires its TD and raises USBINT with its own enable (§2.1.3).
    fn note_short(&mut self) {
        self.regs.sts |= STS_USBINT;
        self.causes.short = true;
    }
}

impl PciFunction for Uhci {
    fn config(&self) -> &ConfigSpace {
        &self.space
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.space
    }
    fn reset(&mut self) {
        self.space = self.initial.clone();
        self.reset_registers();
    }
    fn id(&self) -> String {
        self.id.clone()
    }
}

/// The controller's saved state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UhciState {
    pub config: ConfigSpaceState,
    regs: Regs,
    causes: Causes,
    ports: Vec<Port>,
    level: bool,
}

impl Snapshot for Uhci {
    type State = UhciState;
    const KIND: &'static str = "piix3-usb-uhci";
    const VERSION: u32 = 1;

    fn save(&self) -> UhciState {
        UhciState {
            config: self.space.save(),
            regs: self.regs,
            causes: self.causes,
            ports: self.ports.to_vec(),
            level: self.level,
        }
    }

    fn restore(&mut self, s: UhciState) -> Result<(), StateError> {
        if s.ports.len() != PORTS {
            return Err(StateError::invalid(
                Self::KIND,
                format!("{} ports (the controller has {PORTS})", s.ports.len()),
            ));
        }
        for (i, (mine, theirs)) in self.ports.iter().zip(&s.ports).enumerate() {
            let kinds = (
                mine.device.as_ref().map(HidDevice::kind),
                theirs.device.as_ref().map(HidDevice::kind),
            );
            if kinds.0 != kinds.1 {
                return Err(StateError::invalid(
                    Self::KIND,
                    format!(
                        "port {} holds {:?}, the state {:?}",
                        i + 1,
                        kinds.0,
                        kinds.1
                    ),
                ));
            }
        }
        self.space
            .restore(s.config)
            .map_err(|e| e.within(Self::KIND, "config"))?;
        self.regs = s.regs;
        self.causes = s.causes;
        for (p, q) in self.ports.iter_mut().zip(s.ports) {
            *p = q;
        }
        self.level = s.level;
        self.irq.set_level(self.level);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
