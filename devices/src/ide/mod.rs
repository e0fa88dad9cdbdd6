//! The PIIX3 IDE controller: two legacy channels (primary 0x1F0–0x1F7 + 0x3F6, IRQ 14;
//! secondary 0x170–0x177 + 0x376, IRQ 15), each with a master and a slave, plus the
//! bus-master DMA registers (PCI BAR4, 16 bytes). ATA disks are in [`ata`], the ATAPI
//! CD-ROM in [`atapi`].
//!
//! Host contract: I/O is asynchronous. After every register access, call
//! [`Ide::take_requests`] and hand each `(drive, BlockRequest)` to that drive's block
//! backend; when a request finishes, call [`Ide::complete`] (with the model locked). While
//! a request is outstanding the drive shows BSY. Drive numbers: 0 primary master, 1 primary
//! slave, 2 secondary master, 3 secondary slave (`-hda`..`-hdd`; `-cdrom` is 2).
//!
//! Bus mapping: [`IdeCommandPort`] at 0x1F0/0x170 (length 8), [`IdeControlPort`] at
//! 0x3F6/0x376 (length 1), and the bus-master block through [`Ide::bm_read`]/[`Ide::bm_write`]
//! at BAR4 (offset 0–7 primary, 8–15 secondary).

pub mod ata;
pub mod atapi;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use crate::block::{BlockCompletion, BlockError, BlockInfo, BlockOp, BlockRequest};
use crate::memory::GuestMemoryMmap;
use crate::{Effectful, Effects, Snapshot, StateError};

// Status register.
pub const BSY: u8 = 0x80;
pub const DRDY: u8 = 0x40;
pub const DF: u8 = 0x20;
pub const DSC: u8 = 0x10;
pub const DRQ: u8 = 0x08;
pub const ERR: u8 = 0x01;
// Error register.
pub const ABRT: u8 = 0x04;
// Device control.
const NIEN: u8 = 0x02;
const SRST: u8 = 0x04;
const HOB: u8 = 0x80;
// Bus master.
const BM_START: u8 = 0x01;
const BM_READ_TO_MEMORY: u8 = 0x08;
const BM_ACTIVE: u8 = 0x01;
const BM_ERROR: u8 = 0x02;
const BM_IRQ: u8 = 0x04;

/// What kind of drive sits in a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    pub cdrom: bool,
    /// `serial=` or QEMU's generated `QM0000N`.
    pub serial: String,
    /// None: an empty CD-ROM drive.
    pub medium: Option<BlockInfo>,
}

/// A transfer in progress on a drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Xfer {
    None,
    /// Data for the host to read through the data port; `chunk` bytes per DRQ block.
    PioIn {
        chunk: usize,
    },
    /// Data the host writes; when `buf` is full, `then` runs.
    PioOut {
        chunk: usize,
        then: AfterWrite,
    },
    /// ATAPI: waiting for the 12-byte command packet.
    Packet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum AfterWrite {
    /// Write the buffer at this LBA.
    AtaWrite { lba: u64 },
}

/// Work waiting on a block completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Waiting {
    /// ATA read of `count` sectors; deliver by PIO in `chunk`-byte blocks, or by DMA.
    AtaRead {
        dma: bool,
        chunk: usize,
    },
    AtaWrite {
        dma: bool,
    },
    Flush,
    /// ATAPI READ: deliver by PIO (byte-count limited) or DMA.
    AtapiRead {
        dma: bool,
    },
    /// DMA write (host → device): the data is gathered when the bus master starts.
    DmaOutPending {
        lba: u64,
        len: usize,
    },
}

/// One drive's state.
#[derive(Debug, Clone)]
pub struct Drive {
    pub(crate) cfg: DriveConfig,
    pub(crate) status: u8,
    pub(crate) error: u8,
    pub(crate) buf: Vec<u8>,
    pub(crate) pos: usize,
    pub(crate) xfer: Xfer,
    pub(crate) waiting: Option<(u64, Waiting)>,
    pub(crate) multiple: u8,
    /// ATAPI sense data: (key, asc, ascq).
    pub(crate) sense: (u8, u8, u8),
    /// The monitor moved the tray and the guest has not been told (QEMU's
    /// `cdrom_changed`): 1, the next command that is not allowed during a unit attention
    /// reports NOT READY (medium not present); 2, it reports UNIT ATTENTION (medium may
    /// have changed); 0, nothing to report.
    pub(crate) media_changed: u8,
    /// PREVENT ALLOW MEDIUM REMOVAL: the guest locked the tray.
    pub(crate) locked: bool,
    /// The tray is open (CD-ROMs): no medium is readable, whatever is in it.
    pub(crate) tray_open: bool,
    /// GET EVENT STATUS NOTIFICATION media events not yet reported: a new medium, and an
    /// eject request (the monitor asked to eject a locked tray).
    pub(crate) new_media: bool,
    pub(crate) eject_request: bool,
    /// ATAPI byte count limit for PIO transfers.
    pub(crate) byte_limit: usize,
    /// ATAPI data waiting to be moved by DMA.
    pub(crate) dma_ready: bool,
}

impl Drive {
    fn new(cfg: DriveConfig) -> Self {
        let mut d = Self {
            cfg,
            status: DRDY | DSC,
            error: 0x01,
            buf: Vec::new(),
            pos: 0,
            xfer: Xfer::None,
            waiting: None,
            multiple: 16,
            sense: (0, 0, 0),
            media_changed: 0,
            locked: false,
            tray_open: false,
            new_media: false,
            eject_request: false,
            byte_limit: 0,
            dma_ready: false,
        };
        d.reset();
        d
    }

    fn reset(&mut self) {
        self.status = if self.cfg.cdrom { 0 } else { DRDY | DSC };
        self.error = 0x01;
        self.buf.clear();
        self.pos = 0;
        self.xfer = Xfer::None;
        self.waiting = None;
        self.sense = (0, 0, 0);
        self.dma_ready = false;
        // As QEMU's ide_reset: the tray closes and unlocks (no DEVICE_TRAY_MOVED), and a
        // medium change not yet reported is dropped.
        self.tray_open = false;
        self.locked = false;
        self.media_changed = 0;
    }

    /// What is in the drive (even with the tray open).
    pub fn medium(&self) -> Option<BlockInfo> {
        self.cfg.medium
    }

    /// The guest can read a medium: the tray is closed on a non-empty one.
    pub fn medium_present(&self) -> bool {
        !self.tray_open && self.cfg.medium.is_some_and(|m| m.size > 0)
    }

    pub fn is_cdrom(&self) -> bool {
        self.cfg.cdrom
    }

    pub fn tray_open(&self) -> bool {
        self.tray_open
    }

    /// The guest locked the tray (PREVENT ALLOW MEDIUM REMOVAL).
    pub fn locked(&self) -> bool {
        self.locked
    }
}

/// Why a removable-media operation on drive `n` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("there is no drive {0}")]
    NoDrive(usize),
    #[error("drive {0} is not removable")]
    NotRemovable(usize),
    /// The guest locked the tray: it was asked to open it (an eject request event).
    #[error("drive {0} is locked and force was not specified")]
    Locked(usize),
    #[error("the tray of drive {0} is not open")]
    TrayClosed(usize),
    #[error("drive {0} already holds a medium")]
    MediumPresent(usize),
}

/// The task-file registers of a channel (shared by its two drives), with LBA48's
/// "previous value" copies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskFile {
    pub feature: u8,
    pub nsector: u8,
    pub lba: [u8; 3],
    pub hob_feature: u8,
    pub hob_nsector: u8,
    pub hob_lba: [u8; 3],
    pub device: u8,
}

impl TaskFile {
    pub fn lba28(&self) -> u64 {
        u64::from(self.lba[0])
            | u64::from(self.lba[1]) << 8
            | u64::from(self.lba[2]) << 16
            | u64::from(self.device & 0x0f) << 24
    }

    pub fn lba48(&self) -> u64 {
        u64::from(self.lba[0])
            | u64::from(self.lba[1]) << 8
            | u64::from(self.lba[2]) << 16
            | u64::from(self.hob_lba[0]) << 24
            | u64::from(self.hob_lba[1]) << 32
            | u64::from(self.hob_lba[2]) << 40
    }

    pub fn count28(&self) -> u32 {
        if self.nsector == 0 {
            256
        } else {
            u32::from(self.nsector)
        }
    }

    pub fn count48(&self) -> u32 {
        let c = u32::from(self.nsector) | u32::from(self.hob_nsector) << 8;
        if c == 0 {
            65536
        } else {
            c
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct BusMaster {
    command: u8,
    status: u8,
    prdt: u32,
}

struct Channel {
    drives: [Option<Drive>; 2],
    selected: usize,
    tf: TaskFile,
    devctl: u8,
    irq_pending: bool,
    bm: BusMaster,
}

impl Channel {
    fn drive(&mut self) -> Option<&mut Drive> {
        self.drives[self.selected].as_mut()
    }
}

/// The controller.
pub struct Ide {
    channels: [Channel; 2],
    mem: Option<GuestMemoryMmap>,
    requests: Vec<(usize, BlockRequest)>,
    next_id: u64,
    errors: u64,
    tray_moves: Vec<(usize, bool)>,
    /// The channels' interrupt levels for the host to drive (line = channel).
    fx: Effects,
}

impl Effectful for Ide {
    fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.fx)
    }
}

impl Ide {
    /// `drives[n]` for positions 0..4. Channel `c`'s interrupt (IRQ 14, IRQ 15) is line
    /// `c` of its [`Effects`].
    pub fn new(drives: [Option<DriveConfig>; 4]) -> Self {
        let [a, b, c, d] = drives;
        let ch = |m: Option<DriveConfig>, s: Option<DriveConfig>| Channel {
            drives: [m.map(Drive::new), s.map(Drive::new)],
            selected: 0,
            tf: TaskFile::default(),
            devctl: 0,
            irq_pending: false,
            bm: BusMaster::default(),
        };
        let mut ide = Self {
            channels: [ch(a, b), ch(c, d)],
            fx: Effects::default(),
            mem: None,
            requests: Vec::new(),
            next_id: 1,
            errors: 0,
            tray_moves: Vec::new(),
        };
        ide.reset();
        ide
    }

    /// Guest memory for bus-master DMA.
    pub fn set_memory(&mut self, mem: GuestMemoryMmap) {
        self.mem = Some(mem);
    }

    pub fn reset(&mut self) {
        for c in 0..2 {
            let ch = &mut self.channels[c];
            ch.selected = 0;
            ch.tf = TaskFile::default();
            ch.devctl = 0;
            ch.bm = BusMaster::default();
            for d in ch.drives.iter_mut().flatten() {
                d.reset();
            }
            self.set_signatures(c);
            self.lower_irq(c);
        }
    }

    /// Block requests issued since the last call, for the host to submit.
    pub fn take_requests(&mut self) -> Vec<(usize, BlockRequest)> {
        std::mem::take(&mut self.requests)
    }

    pub fn drive_info(&self, n: usize) -> Option<&Drive> {
        self.channels[n / 2].drives[n % 2].as_ref()
    }

    /// Drive `n` if it is a CD-ROM.
    fn cd(&mut self, n: usize) -> Result<&mut Drive, MediaError> {
        match self
            .channels
            .get_mut(n / 2)
            .and_then(|c| c.drives[n % 2].as_mut())
        {
            None => Err(MediaError::NoDrive(n)),
            Some(d) if !d.cfg.cdrom => Err(MediaError::NotRemovable(n)),
            Some(d) => Ok(d),
        }
    }

    /// The monitor moved drive `n`'s tray (QEMU's `change_media_cb`): the guest is told on
    /// its next command (NOT READY, then UNIT ATTENTION once a medium is in and the tray
    /// closed) and by a new-media event, and the channel interrupts.
    fn tray_moved(&mut self, n: usize, open: bool) {
        if let Some(d) = self.channels[n / 2].drives[n % 2].as_mut() {
            let was = d.tray_open;
            d.tray_open = open;
            d.media_changed = 1;
            d.new_media = true;
            d.eject_request = false;
            if was != open {
                self.tray_moves.push((n, open));
            }
        }
        self.raise_irq(n / 2);
    }

    /// Open drive `n`'s tray, as `eject` and `blockdev-open-tray` do. A tray the guest
    /// locked stays shut unless `force`: the guest gets an eject request event and the
    /// call fails with [`MediaError::Locked`]; `force` unlocks it first.
    pub fn open_tray(&mut self, n: usize, force: bool) -> Result<(), MediaError> {
        let d = self.cd(n)?;
        if d.tray_open {
            return Ok(());
        }
        let locked = d.locked;
        if locked {
            d.eject_request = true;
            if force {
                d.locked = false;
            }
            self.raise_irq(n / 2);
        }
        if locked && !force {
            return Err(MediaError::Locked(n));
        }
        self.tray_moved(n, true);
        Ok(())
    }

    /// Close drive `n`'s tray (`blockdev-close-tray`); closing a closed tray does nothing.
    pub fn close_tray(&mut self, n: usize) -> Result<(), MediaError> {
        if !self.cd(n)?.tray_open {
            return Ok(());
        }
        self.tray_moved(n, false);
        Ok(())
    }

    /// Take the medium out of drive `n`, whose tray must be open; what was in it.
    pub fn remove_medium(&mut self, n: usize) -> Result<Option<BlockInfo>, MediaError> {
        let d = self.cd(n)?;
        if !d.tray_open {
            return Err(MediaError::TrayClosed(n));
        }
        Ok(d.cfg.medium.take())
    }

    /// Put `medium` into drive `n`, whose tray must be open and empty.
    pub fn insert_medium(&mut self, n: usize, medium: BlockInfo) -> Result<(), MediaError> {
        let d = self.cd(n)?;
        if !d.tray_open {
            return Err(MediaError::TrayClosed(n));
        }
        if d.cfg.medium.is_some() {
            return Err(MediaError::MediumPresent(n));
        }
        d.cfg.medium = Some(medium);
        Ok(())
    }

    /// Swap drive `n`'s medium as `change` does: open the tray (`force` as for
    /// [`Ide::open_tray`]), take the old medium out, put `medium` in, close the tray.
    pub fn change_medium(
        &mut self,
        n: usize,
        medium: Option<BlockInfo>,
        force: bool,
    ) -> Result<(), MediaError> {
        self.open_tray(n, force)?;
        self.remove_medium(n)?;
        if let Some(m) = medium {
            self.insert_medium(n, m)?;
        }
        self.close_tray(n)
    }

    /// Tray movements since the last call, `(drive, open)` in order (the monitor's or the
    /// guest's own, START STOP UNIT), for `DEVICE_TRAY_MOVED`.
    pub fn take_tray_moves(&mut self) -> Vec<(usize, bool)> {
        std::mem::take(&mut self.tray_moves)
    }

    /// Guest-visible errors so far (bad PRDs, out-of-range requests).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    fn raise_irq(&mut self, c: usize) {
        let ch = &mut self.channels[c];
        ch.bm.status |= BM_IRQ;
        if ch.devctl & NIEN == 0 && !ch.irq_pending {
            ch.irq_pending = true;
            self.fx.set_line(c, true);
        }
    }

    fn lower_irq(&mut self, c: usize) {
        let ch = &mut self.channels[c];
        if ch.irq_pending {
            ch.irq_pending = false;
            self.fx.set_line(c, false);
        }
    }

    /// Reset signatures in the task file (ATA 0/0, ATAPI 0x14/0xEB).
    fn set_signatures(&mut self, c: usize) {
        let ch = &mut self.channels[c];
        let cd = ch.drives[ch.selected].as_ref().is_some_and(|d| d.cfg.cdrom);
        ch.tf.nsector = 1;
        ch.tf.lba = if cd { [1, 0x14, 0xeb] } else { [1, 0, 0] };
        ch.tf.device = 0;
    }

    fn issue(&mut self, c: usize, op: BlockOp) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let n = c * 2 + self.channels[c].selected;
        self.requests.push((n, BlockRequest { id, op }));
        id
    }

    /// A block request finished (call with the model locked).
    pub fn complete(&mut self, n: usize, done: BlockCompletion) {
        let c = n / 2;
        let which = n % 2;
        let Some(d) = self.channels[c].drives[which].as_mut() else {
            return;
        };
        let Some((id, w)) = d.waiting.take() else {
            return;
        };
        if id != done.id {
            d.waiting = Some((id, w));
            return;
        }
        // Completions address the drive that issued them even if the guest selected the
        // other one meanwhile.
        let prev = self.channels[c].selected;
        self.channels[c].selected = which;
        match done.result {
            Err(e) => self.fail_io(c, e),
            Ok(data) => match w {
                Waiting::AtaRead { dma, chunk } => ata::read_done(self, c, data, dma, chunk),
                Waiting::AtaWrite { .. } | Waiting::Flush => ata::write_done(self, c),
                Waiting::AtapiRead { dma } => atapi::read_done(self, c, data, dma),
                Waiting::DmaOutPending { .. } => {}
            },
        }
        if self.channels[c].selected == which {
            self.channels[c].selected = prev;
        }
    }

    fn fail_io(&mut self, c: usize, e: BlockError) {
        let cd = self.channels[c].drive().is_some_and(|d| d.cfg.cdrom);
        if cd {
            let sense = match e {
                BlockError::NoMedium => (0x02, 0x3a, 0x00),
                BlockError::OutOfRange => (0x05, 0x21, 0x00),
                _ => (0x03, 0x11, 0x00),
            };
            atapi::check_condition(self, c, sense);
        } else {
            let d = self.channels[c].drive().expect("drive present");
            d.status = DRDY | ERR;
            d.error = if e == BlockError::ReadOnly {
                0x40
            } else {
                ABRT | 0x40
            };
            d.xfer = Xfer::None;
            self.channels[c].bm.status |= BM_ERROR;
            self.channels[c].bm.status &= !BM_ACTIVE;
            self.raise_irq(c);
        }
    }

    /// Abort the current command (ABRT in the error register).
    pub(crate) fn abort(&mut self, c: usize) {
        if let Some(d) = self.channels[c].drive() {
            d.status = DRDY | ERR;
            d.error = ABRT;
            d.xfer = Xfer::None;
            d.buf.clear();
        }
        self.raise_irq(c);
    }

    /// Start a PIO-in transfer of `buf` in `chunk`-byte blocks.
    pub(crate) fn start_pio_in(&mut self, c: usize, buf: Vec<u8>, chunk: usize) {
        if let Some(d) = self.channels[c].drive() {
            d.buf = buf;
            d.pos = 0;
            d.xfer = Xfer::PioIn { chunk };
            d.status = DRDY | DSC | DRQ;
        }
        self.raise_irq(c);
    }

    /// Command complete, no data.
    pub(crate) fn command_ok(&mut self, c: usize) {
        if let Some(d) = self.channels[c].drive() {
            d.status = DRDY | DSC;
            d.error = 0;
            d.xfer = Xfer::None;
        }
        self.raise_irq(c);
    }

    // ---- the command block ----

    fn read_cmd(&mut self, c: usize, reg: u64, data: &mut [u8]) {
        if reg == 0 {
            return self.read_data(c, data);
        }
        let ch = &mut self.channels[c];
        let hob = ch.devctl & HOB != 0;
        let present = ch.drives[ch.selected].is_some();
        let no_drives = ch.drives.iter().all(|d| d.is_none());
        let v = match reg {
            _ if no_drives => 0xff,
            1 => match ch.drives[ch.selected].as_ref() {
                Some(d) if !hob => d.error,
                Some(_) => ch.tf.hob_feature,
                None => 0,
            },
            2 => {
                if hob {
                    ch.tf.hob_nsector
                } else {
                    ch.tf.nsector
                }
            }
            3..=5 => {
                let i = (reg - 3) as usize;
                if hob {
                    ch.tf.hob_lba[i]
                } else {
                    ch.tf.lba[i]
                }
            }
            6 => ch.tf.device | 0xa0,
            7 => {
                let s = ch.drives[ch.selected].as_ref().map_or(0, |d| d.status);
                if present {
                    self.lower_irq(c);
                }
                s
            }
            _ => 0xff,
        };
        data.fill(0);
        data[0] = v;
    }

    fn write_cmd(&mut self, c: usize, reg: u64, data: &[u8]) {
        if reg == 0 {
            return self.write_data(c, data);
        }
        let v = data[0];
        let ch = &mut self.channels[c];
        ch.devctl &= !HOB;
        match reg {
            1 => {
                ch.tf.hob_feature = ch.tf.feature;
                ch.tf.feature = v;
            }
            2 => {
                ch.tf.hob_nsector = ch.tf.nsector;
                ch.tf.nsector = v;
            }
            3..=5 => {
                let i = (reg - 3) as usize;
                ch.tf.hob_lba[i] = ch.tf.lba[i];
                ch.tf.lba[i] = v;
            }
            6 => {
                ch.tf.device = v;
                ch.selected = usize::from(v >> 4 & 1);
            }
            7 => self.command(c, v),
            _ => {}
        }
    }

    fn command(&mut self, c: usize, cmd: u8) {
        let ch = &mut self.channels[c];
        let Some(d) = ch.drives[ch.selected].as_mut() else {
            return; // nobody there: the command goes nowhere
        };
        if d.status & BSY != 0 && cmd != 0x08 {
            return;
        }
        d.error = 0;
        self.lower_irq(c);
        if self.channels[c].drive().is_some_and(|d| d.cfg.cdrom) {
            atapi::command(self, c, cmd);
        } else {
            ata::command(self, c, cmd);
        }
    }

    fn read_data(&mut self, c: usize, data: &mut [u8]) {
        data.fill(0xff);
        let Some(d) = self.channels[c].drive() else {
            return;
        };
        let Xfer::PioIn { chunk } = d.xfer.clone() else {
            return;
        };
        let n = data.len().min(d.buf.len().saturating_sub(d.pos));
        data[..n].copy_from_slice(&d.buf[d.pos..d.pos + n]);
        d.pos += n;
        if d.pos >= d.buf.len() {
            d.xfer = Xfer::None;
            d.buf.clear();
            d.pos = 0;
            let cd = d.cfg.cdrom;
            if cd {
                atapi::data_done(self, c);
            } else {
                d.status = DRDY | DSC;
            }
        } else if d.pos % chunk == 0 {
            // Next DRQ block: another interrupt.
            if d.cfg.cdrom {
                atapi::next_chunk(self, c);
            } else {
                self.raise_irq(c);
            }
        }
    }

    fn write_data(&mut self, c: usize, data: &[u8]) {
        let Some(d) = self.channels[c].drive() else {
            return;
        };
        match d.xfer.clone() {
            Xfer::Packet => {
                d.buf.extend_from_slice(data);
                if d.buf.len() >= 12 {
                    let mut cdb = [0u8; 12];
                    cdb.copy_from_slice(&d.buf[..12]);
                    d.buf.clear();
                    d.xfer = Xfer::None;
                    atapi::packet(self, c, cdb);
                }
            }
            Xfer::PioOut { chunk, then } => {
                let n = data.len().min(d.buf.len().saturating_sub(d.pos));
                d.buf[d.pos..d.pos + n].copy_from_slice(&data[..n]);
                d.pos += n;
                if d.pos >= d.buf.len() {
                    d.xfer = Xfer::None;
                    d.status = BSY | DRDY;
                    match then {
                        AfterWrite::AtaWrite { lba } => {
                            let buf = std::mem::take(&mut d.buf);
                            let id = self.issue(
                                c,
                                BlockOp::Write {
                                    offset: lba * 512,
                                    data: buf,
                                },
                            );
                            if let Some(d) = self.channels[c].drive() {
                                d.waiting = Some((id, Waiting::AtaWrite { dma: false }));
                            }
                        }
                    }
                } else if d.pos % chunk == 0 {
                    self.raise_irq(c);
                }
            }
            _ => {}
        }
    }

    // ---- the control block ----

    fn read_ctl(&mut self, c: usize) -> u8 {
        let ch = &mut self.channels[c];
        if ch.drives.iter().all(|d| d.is_none()) {
            return 0xff;
        }
        ch.drives[ch.selected].as_ref().map_or(0, |d| d.status)
    }

    fn write_ctl(&mut self, c: usize, v: u8) {
        let was = self.channels[c].devctl;
        self.channels[c].devctl = v;
        if v & SRST != 0 && was & SRST == 0 {
            for d in self.channels[c].drives.iter_mut().flatten() {
                d.reset();
                d.status = BSY;
            }
        } else if v & SRST == 0 && was & SRST != 0 {
            let ch = &mut self.channels[c];
            ch.selected = 0;
            for d in ch.drives.iter_mut().flatten() {
                d.status = if d.cfg.cdrom { 0 } else { DRDY | DSC };
                d.error = 0x01;
            }
            self.set_signatures(c);
        }
        if v & NIEN != 0 {
            self.lower_irq(c);
        }
    }

    // ---- bus master ----

    /// Read the bus-master block (BAR4) at `offset` (0..16).
    pub fn bm_read(&mut self, offset: u64, data: &mut [u8]) {
        let c = (offset / 8) as usize % 2;
        let bm = &self.channels[c].bm;
        let drive_caps = self.channels[c]
            .drives
            .iter()
            .enumerate()
            .fold(0u8, |a, (i, d)| a | if d.is_some() { 0x20 << i } else { 0 });
        let regs = [
            bm.command,
            0,
            bm.status | drive_caps,
            0,
            bm.prdt as u8,
            (bm.prdt >> 8) as u8,
            (bm.prdt >> 16) as u8,
            (bm.prdt >> 24) as u8,
        ];
        for (i, b) in data.iter_mut().enumerate() {
            *b = regs.get((offset % 8) as usize + i).copied().unwrap_or(0);
        }
    }

    /// Write the bus-master block.
    pub fn bm_write(&mut self, offset: u64, data: &[u8]) {
        let c = (offset / 8) as usize % 2;
        for (i, &v) in data.iter().enumerate() {
            match (offset % 8) as usize + i {
                0 => {
                    let bm = &mut self.channels[c].bm;
                    let was = bm.command;
                    bm.command = v & (BM_START | BM_READ_TO_MEMORY);
                    if v & BM_START != 0 && was & BM_START == 0 {
                        bm.status |= BM_ACTIVE;
                        self.dma_kick(c);
                    } else if v & BM_START == 0 {
                        self.channels[c].bm.status &= !BM_ACTIVE;
                    }
                }
                2 => {
                    let bm = &mut self.channels[c].bm;
                    // Interrupt and error are write-1-to-clear; drive-capable bits stick.
                    bm.status &= !(v & (BM_IRQ | BM_ERROR));
                }
                r @ 4..=7 => {
                    let bm = &mut self.channels[c].bm;
                    let shift = (r - 4) * 8;
                    bm.prdt = (bm.prdt & !(0xff << shift)) | (u32::from(v) << shift);
                    bm.prdt &= !3;
                }
                _ => {}
            }
        }
    }

    /// The guest started the bus master: move data if a DMA command is waiting for it.
    fn dma_kick(&mut self, c: usize) {
        let Some(d) = self.channels[c].drive() else {
            return;
        };
        if d.dma_ready {
            // Data already in `buf` (read completed before the guest started the engine).
            d.dma_ready = false;
            let data = std::mem::take(&mut d.buf);
            let cd = d.cfg.cdrom;
            self.dma_to_memory(c, &data);
            if cd {
                atapi::dma_done(self, c);
            } else {
                self.dma_finish(c, true);
            }
            return;
        }
        if let Some((id, Waiting::DmaOutPending { lba, len })) = d.waiting.clone() {
            let _ = id;
            match self.dma_from_memory(c, len) {
                Some(buf) => {
                    let id = self.issue(
                        c,
                        BlockOp::Write {
                            offset: lba * 512,
                            data: buf,
                        },
                    );
                    if let Some(d) = self.channels[c].drive() {
                        d.waiting = Some((id, Waiting::AtaWrite { dma: true }));
                    }
                }
                None => {
                    if let Some(d) = self.channels[c].drive() {
                        d.waiting = None;
                    }
                    self.dma_finish(c, false);
                }
            }
        }
    }

    /// Walk the PRD table: (address, length) pieces, at most `total` bytes.
    fn prd_pieces(&mut self, c: usize, total: usize) -> Option<Vec<(u64, usize)>> {
        let mem = self.mem.as_ref()?;
        let mut at = u64::from(self.channels[c].bm.prdt);
        let mut left = total;
        let mut v = Vec::new();
        for _ in 0..8192 {
            let mut e = [0u8; 8];
            if mem.read_slice(&mut e, GuestAddress(at)).is_err() {
                return None;
            }
            let addr = u64::from(u32::from_le_bytes(e[0..4].try_into().ok()?) & !1);
            let mut len = usize::from(u16::from_le_bytes([e[4], e[5]]));
            if len == 0 {
                len = 0x1_0000;
            }
            let n = len.min(left);
            v.push((addr, n));
            left -= n;
            if e[7] & 0x80 != 0 || left == 0 {
                return Some(v);
            }
            at += 8;
        }
        None
    }

    fn guest_error(&mut self, what: &str) {
        self.errors += 1;
        if self.errors <= 10 {
            tracing::warn!(target: "guest_errors", "ide: {what}");
        }
    }

    /// Copy `data` into guest memory along the PRD table.
    pub(crate) fn dma_to_memory(&mut self, c: usize, data: &[u8]) -> bool {
        let Some(pieces) = self.prd_pieces(c, data.len()) else {
            self.guest_error("bad PRD table");
            self.channels[c].bm.status |= BM_ERROR;
            return false;
        };
        let mem = self.mem.clone().expect("prd_pieces checked memory");
        let mut off = 0;
        for (addr, n) in pieces {
            if mem
                .write_slice(&data[off..off + n], GuestAddress(addr))
                .is_err()
            {
                self.guest_error("DMA target outside RAM");
                self.channels[c].bm.status |= BM_ERROR;
                return false;
            }
            off += n;
        }
        true
    }

    fn dma_from_memory(&mut self, c: usize, len: usize) -> Option<Vec<u8>> {
        let Some(pieces) = self.prd_pieces(c, len) else {
            self.guest_error("bad PRD table");
            self.channels[c].bm.status |= BM_ERROR;
            return None;
        };
        let mem = self.mem.clone()?;
        let mut buf = vec![0u8; len];
        let mut off = 0;
        for (addr, n) in pieces {
            if mem
                .read_slice(&mut buf[off..off + n], GuestAddress(addr))
                .is_err()
            {
                self.guest_error("DMA source outside RAM");
                self.channels[c].bm.status |= BM_ERROR;
                return None;
            }
            off += n;
        }
        Some(buf)
    }

    /// End of an ATA DMA command.
    pub(crate) fn dma_finish(&mut self, c: usize, ok: bool) {
        self.channels[c].bm.status &= !BM_ACTIVE;
        if ok {
            self.command_ok(c);
        } else {
            self.abort(c);
        }
    }

    pub(crate) fn bm_started(&self, c: usize) -> bool {
        self.channels[c].bm.status & BM_ACTIVE != 0
    }

    pub(crate) fn tf(&mut self, c: usize) -> &mut TaskFile {
        &mut self.channels[c].tf
    }

    pub(crate) fn drive(&mut self, c: usize) -> Option<&mut Drive> {
        self.channels[c].drive()
    }

    pub(crate) fn wait_for(&mut self, c: usize, op: BlockOp, w: Waiting) {
        let id = self.issue(c, op);
        if let Some(d) = self.channels[c].drive() {
            d.status = BSY | DRDY;
            d.waiting = Some((id, w));
        }
    }
}

/// The largest data buffer a drive holds: an ATAPI READ of 65536 blocks of 2 KiB.
const MAX_BUF: usize = (1 << 16) * atapi::BLOCK as usize;

/// One drive as the guest left it: status and error registers, the transfer in progress
/// (PIO direction, DRQ block size, the data buffer and how far the guest has read or
/// written it; an ATAPI packet being received), READ/WRITE MULTIPLE's block size, ATAPI
/// sense data, a medium change not yet reported (NOT READY, then UNIT ATTENTION), the tray
/// (open, locked) and its media events, the byte-count limit, and
/// DMA data or a DMA write waiting for the guest to start the bus master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriveState {
    /// A CD-ROM (checked against the rebuilt drive, not restored).
    cdrom: bool,
    status: u8,
    error: u8,
    buf: Vec<u8>,
    pos: usize,
    xfer: Xfer,
    waiting: Option<Waiting>,
    multiple: u8,
    sense: (u8, u8, u8),
    media_changed: u8,
    locked: bool,
    tray_open: bool,
    new_media: bool,
    eject_request: bool,
    byte_limit: usize,
    dma_ready: bool,
}

/// One channel: the task file shared by its drives (with the LBA48 previous values), the
/// selected drive, device control, whether its IRQ is asserted, its bus-master registers
/// (command, status, PRD table address) and its two drive positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelState {
    selected: usize,
    task_file: TaskFile,
    devctl: u8,
    irq_pending: bool,
    bus_master: BusMaster,
    drives: [Option<DriveState>; 2],
}

/// The controller: both channels.
///
/// Block requests the host has not completed are not state that can travel (the request
/// lives in the drive's backend actor): the host completes every outstanding request
/// before saving (the supervisor drains devices before it saves them), and a state that
/// still waits for one is refused on restore, naming the drive. A DMA write waiting for
/// the guest to start the bus master is not a request yet and travels. Which media are in
/// the drives is host configuration: the destination opens the same images (a CD changed
/// by the monitor included), and a drive position that is empty, or holds another kind of
/// drive, is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdeState {
    channels: [ChannelState; 2],
}

impl Drive {
    fn save(&self) -> DriveState {
        DriveState {
            cdrom: self.cfg.cdrom,
            status: self.status,
            error: self.error,
            buf: self.buf.clone(),
            pos: self.pos,
            xfer: self.xfer.clone(),
            waiting: self.waiting.as_ref().map(|(_, w)| w.clone()),
            multiple: self.multiple,
            sense: self.sense,
            media_changed: self.media_changed,
            locked: self.locked,
            tray_open: self.tray_open,
            new_media: self.new_media,
            eject_request: self.eject_request,
            byte_limit: self.byte_limit,
            dma_ready: self.dma_ready,
        }
    }

    /// Why `s` cannot be this drive's state, if it cannot.
    fn check(&self, s: &DriveState) -> Result<(), String> {
        let kind = |cd: bool| if cd { "a CD-ROM" } else { "a disk" };
        if s.cdrom != self.cfg.cdrom {
            return Err(format!(
                "the state is of {} but this drive is {}",
                kind(s.cdrom),
                kind(self.cfg.cdrom)
            ));
        }
        if s.buf.len() > MAX_BUF {
            return Err(format!(
                "buf holds {} bytes (at most {MAX_BUF})",
                s.buf.len()
            ));
        }
        match s.xfer {
            Xfer::PioIn { chunk } | Xfer::PioOut { chunk, .. } => {
                if chunk == 0 || chunk > 0x1_0000 {
                    return Err(format!("xfer chunk {chunk} is not 1..=65536 bytes"));
                }
                if s.pos > s.buf.len() {
                    return Err(format!(
                        "pos {} is past the {}-byte buffer",
                        s.pos,
                        s.buf.len()
                    ));
                }
            }
            Xfer::Packet => {
                if s.buf.len() >= 12 || s.pos > 1 {
                    return Err(format!(
                        "a packet being received holds {} bytes (less than 12) with pos {} \
                         (0 or 1)",
                        s.buf.len(),
                        s.pos
                    ));
                }
            }
            Xfer::None => {
                if s.pos > s.buf.len().max(1) {
                    return Err(format!(
                        "pos {} is past the {}-byte buffer",
                        s.pos,
                        s.buf.len()
                    ));
                }
            }
        }
        match &s.waiting {
            None => {}
            Some(Waiting::DmaOutPending { len, .. }) if (1..=(1 << 16) * 512).contains(len) => {}
            Some(Waiting::DmaOutPending { len, .. }) => {
                return Err(format!("a DMA write of {len} bytes is waiting"));
            }
            Some(w) => {
                return Err(format!(
                    "a block request ({w:?}) was still in flight when it was saved; the \
                     host must complete the drive's requests before saving"
                ))
            }
        }
        if !s.multiple.is_power_of_two() || s.multiple > 16 {
            return Err(format!(
                "multiple {} is not a power of two up to 16",
                s.multiple
            ));
        }
        if s.media_changed > 2 {
            return Err(format!(
                "media_changed {} is not 0, 1 or 2",
                s.media_changed
            ));
        }
        if s.byte_limit > 0xfffe {
            return Err(format!("byte_limit {} is above 0xfffe", s.byte_limit));
        }
        Ok(())
    }

    fn restore(&mut self, s: DriveState) {
        self.status = s.status;
        self.error = s.error;
        self.buf = s.buf;
        self.pos = s.pos;
        self.xfer = s.xfer;
        self.waiting = s.waiting.map(|w| (0, w));
        self.multiple = s.multiple;
        self.sense = s.sense;
        self.media_changed = s.media_changed;
        self.locked = s.locked;
        self.tray_open = s.tray_open;
        self.new_media = s.new_media;
        self.eject_request = s.eject_request;
        self.byte_limit = s.byte_limit;
        self.dma_ready = s.dma_ready;
    }
}

impl Snapshot for Ide {
    type State = IdeState;
    const KIND: &'static str = "ide";
    /// 2: the tray (open, pending media-change report, media events) travels.
    const VERSION: u32 = 2;

    fn save(&self) -> IdeState {
        let channel = |ch: &Channel| ChannelState {
            selected: ch.selected,
            task_file: ch.tf.clone(),
            devctl: ch.devctl,
            irq_pending: ch.irq_pending,
            bus_master: ch.bm.clone(),
            drives: [0, 1].map(|i| ch.drives[i].as_ref().map(Drive::save)),
        };
        IdeState {
            channels: [channel(&self.channels[0]), channel(&self.channels[1])],
        }
    }

    fn restore(&mut self, s: IdeState) -> Result<(), StateError> {
        for (c, (mine, saved)) in self.channels.iter().zip(&s.channels).enumerate() {
            let at = |what: String| StateError::invalid(Self::KIND, what);
            if saved.selected > 1 {
                return Err(at(format!("channels[{c}].selected is {}", saved.selected)));
            }
            for (i, (d, sd)) in mine.drives.iter().zip(&saved.drives).enumerate() {
                let n = c * 2 + i;
                match (d, sd) {
                    (Some(d), Some(sd)) => d
                        .check(sd)
                        .map_err(|e| at(format!("channels[{c}].drives[{i}] (drive {n}): {e}")))?,
                    (None, None) => {}
                    (None, Some(_)) => {
                        return Err(at(format!(
                            "channels[{c}].drives[{i}]: the state has drive {n} but this \
                             controller has none there"
                        )))
                    }
                    (Some(_), None) => {
                        return Err(at(format!(
                            "channels[{c}].drives[{i}]: this controller has drive {n} but \
                             the state has none there"
                        )))
                    }
                }
            }
        }
        for (ch, saved) in self.channels.iter_mut().zip(s.channels) {
            ch.selected = saved.selected;
            ch.tf = saved.task_file;
            ch.devctl = saved.devctl;
            ch.bm = saved.bus_master;
            for (d, sd) in ch.drives.iter_mut().zip(saved.drives) {
                if let (Some(d), Some(sd)) = (d, sd) {
                    d.restore(sd);
                }
            }
            ch.irq_pending = saved.irq_pending;
        }
        for c in 0..2 {
            self.fx.set_line(c, self.channels[c].irq_pending);
        }
        self.requests.clear();
        Ok(())
    }
}

/// The command block of one channel, as a bus device (0x1F0/0x170, length 8).
pub fn cmd_read(ide: &mut Ide, channel: usize, offset: u64, data: &mut [u8]) {
    ide.read_cmd(channel, offset, data);
}

pub fn cmd_write(ide: &mut Ide, channel: usize, offset: u64, data: &[u8]) {
    ide.write_cmd(channel, offset, data);
}

/// The control block (0x3F6/0x376): alternate status / device control.
pub fn ctl_read(ide: &mut Ide, channel: usize, data: &mut [u8]) {
    data.fill(0);
    data[0] = ide.read_ctl(channel);
}

pub fn ctl_write(ide: &mut Ide, channel: usize, data: &[u8]) {
    ide.write_ctl(channel, data[0]);
}

/// Pad a string to `len` bytes and swap each byte pair, as ATA IDENTIFY strings are.
pub(crate) fn ata_string(s: &str, len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = s.bytes().chain(std::iter::repeat(b' ')).take(len).collect();
    for pair in b.chunks_mut(2) {
        pair.swap(0, 1);
    }
    b
}

#[cfg(test)]
mod tests;
