//! The ATAPI CD-ROM (MMC-3 subset): IDENTIFY PACKET DEVICE, the PACKET protocol with PIO
//! (byte-count limited) or DMA data, and the SCSI/MMC commands SeaBIOS, GRUB, syslinux and
//! Linux send: TEST UNIT READY, REQUEST SENSE, INQUIRY, READ CAPACITY, READ(10/12),
//! READ CD, READ TOC, MODE SENSE, GET CONFIGURATION, GET EVENT STATUS NOTIFICATION,
//! READ DISC INFORMATION, MECHANISM STATUS and the no-data housekeeping commands.

use super::{ata_string, Ide, Waiting, Xfer, ABRT, DRDY, DRQ, DSC, ERR};
use crate::block::BlockOp;

pub const BLOCK: u64 = 2048;
/// Media larger than a CD report the DVD-ROM profile.
const CD_MAX: u64 = 800 << 20;

// Sense keys and the (asc, ascq) we use.
const NOT_READY: (u8, u8, u8) = (0x02, 0x3a, 0x00);
const INVALID_OPCODE: (u8, u8, u8) = (0x05, 0x20, 0x00);
const INVALID_FIELD: (u8, u8, u8) = (0x05, 0x24, 0x00);
const LBA_OUT_OF_RANGE: (u8, u8, u8) = (0x05, 0x21, 0x00);
const MEDIUM_CHANGED: (u8, u8, u8) = (0x06, 0x28, 0x00);
const UNIT_ATTENTION: u8 = 0x06;
/// START STOP UNIT asked to eject a locked tray (MMC: MEDIUM REMOVAL PREVENTED; QEMU
/// reports it with ascq 0).
const REMOVAL_PREVENTED: u8 = 0x53;

// Interrupt reason (in the sector count register).
const IR_COD: u8 = 0x01;
const IR_IO: u8 = 0x02;

/// IDENTIFY PACKET DEVICE data.
pub fn identify(serial: &str) -> Vec<u8> {
    let mut w = [0u16; 256];
    w[0] = (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5);
    w[48] = 1;
    w[49] = (1 << 9) | (1 << 8);
    w[53] = 7;
    w[62] = 7;
    w[63] = 7;
    w[64] = 3;
    w[65] = 0xb4;
    w[66] = 0xb4;
    w[67] = 0x12c;
    w[68] = 0xb4;
    w[71] = 30;
    w[72] = 30;
    w[80] = 0x1e;
    w[82] = 1 << 4;
    w[88] = 0x3f | (1 << 13);
    let mut b: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    b[20..40].copy_from_slice(&ata_string(serial, 20));
    b[46..54].copy_from_slice(&ata_string("2.5+", 8));
    b[54..94].copy_from_slice(&ata_string("QEMU DVD-ROM", 40));
    b
}

pub(super) fn command(ide: &mut Ide, c: usize, cmd: u8) {
    match cmd {
        0xa1 => {
            let serial = ide
                .drive(c)
                .map(|d| d.cfg.serial.clone())
                .unwrap_or_default();
            ide.start_pio_in(c, identify(&serial), 512);
        }
        0xa0 => {
            let tf = ide.tf(c);
            let limit = usize::from(tf.lba[1]) | usize::from(tf.lba[2]) << 8;
            let dma = tf.feature & 1 != 0;
            tf.nsector = IR_COD;
            let Some(d) = ide.drive(c) else { return };
            d.byte_limit = if limit == 0 { 0xfffe } else { limit & !1 };
            d.dma_ready = dma; // remembered for the data phase; reset below
            d.buf.clear();
            d.xfer = Xfer::Packet;
            d.status = DRDY | DSC | DRQ;
            d.dma_ready = false;
            d.pos = usize::from(dma); // pos doubles as the "DMA requested" flag until data
        }
        0x08 => {
            // DEVICE RESET.
            if let Some(d) = ide.drive(c) {
                d.reset();
            }
            ide.set_signatures(c);
        }
        // IDENTIFY DEVICE on an ATAPI device aborts with the signature in place, which is
        // how hosts find CD-ROMs.
        0xec => {
            ide.set_signatures(c);
            ide.abort(c);
        }
        0xef | 0x00 | 0xe0..=0xe3 | 0xe5 => ide.command_ok(c),
        0x90 => {
            ide.set_signatures(c);
            if let Some(d) = ide.drive(c) {
                d.error = 0x01;
                d.status = 0;
            }
            ide.raise_irq(c);
        }
        _ => {
            ide.set_signatures(c);
            ide.abort(c);
        }
    }
}

/// Report CHECK CONDITION with this sense.
pub(super) fn check_condition(ide: &mut Ide, c: usize, sense: (u8, u8, u8)) {
    if let Some(d) = ide.drive(c) {
        d.sense = sense;
        d.status = DRDY | ERR;
        d.error = (sense.0 << 4) | ABRT;
        d.xfer = Xfer::None;
        d.buf.clear();
    }
    ide.tf(c).nsector = IR_IO | IR_COD;
    ide.raise_irq(c);
}

/// CHECK CONDITION for the unit attention already in the sense data (QEMU's
/// `ide_atapi_cmd_check_status`): the sense stays until REQUEST SENSE reads it.
fn check_status(ide: &mut Ide, c: usize) {
    if let Some(d) = ide.drive(c) {
        d.status = DRDY | ERR;
        d.error = (UNIT_ATTENTION << 4) | ABRT;
        d.xfer = Xfer::None;
        d.buf.clear();
    }
    ide.tf(c).nsector = IR_IO | IR_COD;
    ide.raise_irq(c);
}

fn ok(ide: &mut Ide, c: usize) {
    if let Some(d) = ide.drive(c) {
        // A unit attention outlives the commands allowed past it (INQUIRY ...) until
        // REQUEST SENSE reads it.
        if d.sense.0 != UNIT_ATTENTION {
            d.sense = (0, 0, 0);
        }
        d.status = DRDY | DSC;
        d.error = 0;
        d.xfer = Xfer::None;
    }
    ide.tf(c).nsector = IR_IO | IR_COD;
    ide.raise_irq(c);
}

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn msf(lba: u64) -> [u8; 4] {
    let l = lba + 150;
    [0, (l / 75 / 60) as u8, (l / 75 % 60) as u8, (l % 75) as u8]
}

/// Send `data` (truncated to `alloc`) to the host.
fn data_in(ide: &mut Ide, c: usize, mut data: Vec<u8>, alloc: usize, dma: bool) {
    data.truncate(alloc);
    if data.is_empty() {
        return ok(ide, c);
    }
    if dma {
        let Some(d) = ide.drive(c) else { return };
        d.status = DRDY | DSC | DRQ;
        if ide.bm_started(c) {
            let okd = ide.dma_to_memory(c, &data);
            if okd {
                dma_done(ide, c);
            } else {
                check_condition(ide, c, INVALID_FIELD);
            }
        } else if let Some(d) = ide.drive(c) {
            d.buf = data;
            d.dma_ready = true;
        }
        return;
    }
    let limit = ide.drive(c).map_or(0xfffe, |d| d.byte_limit.max(2));
    if let Some(d) = ide.drive(c) {
        d.buf = data;
        d.pos = 0;
        d.xfer = Xfer::PioIn { chunk: limit };
    }
    next_chunk(ide, c);
}

/// Announce the next PIO chunk (byte count in the cylinder registers, IO=1 CoD=0).
pub(super) fn next_chunk(ide: &mut Ide, c: usize) {
    let Some(d) = ide.drive(c) else { return };
    let Xfer::PioIn { chunk } = d.xfer else {
        return;
    };
    let n = chunk.min(d.buf.len() - d.pos);
    d.status = DRDY | DSC | DRQ;
    let tf = ide.tf(c);
    tf.lba[1] = n as u8;
    tf.lba[2] = (n >> 8) as u8;
    tf.nsector = IR_IO;
    ide.raise_irq(c);
}

/// The host read the last byte.
pub(super) fn data_done(ide: &mut Ide, c: usize) {
    ok(ide, c);
}

/// DMA moved the data.
pub(super) fn dma_done(ide: &mut Ide, c: usize) {
    ide.dma_finish_atapi(c);
}

impl Ide {
    fn dma_finish_atapi(&mut self, c: usize) {
        self.channels[c].bm.status &= !super::BM_ACTIVE;
        ok(self, c);
    }
}

/// A READ finished.
pub(super) fn read_done(ide: &mut Ide, c: usize, data: Vec<u8>, dma: bool) {
    let n = data.len();
    data_in(ide, c, data, n, dma);
}

/// Execute a command packet.
pub(super) fn packet(ide: &mut Ide, c: usize, cdb: [u8; 12]) {
    let dma = ide.drive(c).is_some_and(|d| d.pos == 1);
    let op = cdb[0];
    // REQUEST SENSE, INQUIRY, GET CONFIGURATION and GET EVENT STATUS NOTIFICATION run
    // whatever the drive has to report; every other command first gets what is pending.
    let allow_ua = matches!(op, 0x03 | 0x12 | 0x4a | 0x46);
    let pending = {
        let Some(d) = ide.drive(c) else { return };
        d.pos = 0;
        if allow_ua {
            None
        } else if d.sense.0 == UNIT_ATTENTION {
            // A unit attention stands until the host reads the sense.
            Some(None)
        } else if d.media_changed != 0 && !d.tray_open && d.cfg.medium.is_some() {
            // A medium the monitor changed shows as gone, then as changed (for hosts that
            // do not ask GET EVENT STATUS NOTIFICATION), as QEMU reports it.
            if d.media_changed == 1 {
                d.media_changed = 2;
                Some(Some(NOT_READY))
            } else {
                d.media_changed = 0;
                Some(Some(MEDIUM_CHANGED))
            }
        } else {
            None
        }
    };
    match pending {
        Some(None) => return check_status(ide, c),
        Some(Some(sense)) => return check_condition(ide, c, sense),
        None => {}
    }
    let Some(d) = ide.drive(c) else { return };
    let medium = d.medium_present().then(|| d.medium()).flatten();
    let (tray_open, inserted) = (d.tray_open, d.medium().is_some());
    let blocks = medium.map_or(0, |m| m.size / BLOCK);
    let need_medium = |ide: &mut Ide| -> bool {
        if medium.is_none() {
            check_condition(ide, c, NOT_READY);
            false
        } else {
            true
        }
    };
    match op {
        0x00 => {
            if need_medium(ide) {
                ok(ide, c)
            }
        }
        0x03 => {
            let sense = ide.drive(c).map_or((0, 0, 0), |d| d.sense);
            let mut s = vec![0u8; 18];
            s[0] = 0x70;
            s[2] = sense.0;
            s[7] = 10;
            s[12] = sense.1;
            s[13] = sense.2;
            if let Some(d) = ide.drive(c) {
                d.sense = (0, 0, 0);
            }
            data_in(ide, c, s, usize::from(cdb[4]), dma);
        }
        0x12 => {
            let mut q = vec![0u8; 36];
            q[0] = 0x05;
            q[1] = 0x80;
            q[3] = 0x21;
            q[4] = 31;
            q[8..16].copy_from_slice(b"QEMU    ");
            q[16..32].copy_from_slice(b"QEMU DVD-ROM    ");
            q[32..36].copy_from_slice(b"2.5+");
            data_in(ide, c, q, usize::from(cdb[4]), dma);
        }
        0x25 => {
            if need_medium(ide) {
                let mut d = ((blocks.max(1) - 1) as u32).to_be_bytes().to_vec();
                d.extend_from_slice(&(BLOCK as u32).to_be_bytes());
                data_in(ide, c, d, 8, dma);
            }
        }
        0x28 | 0xa8 | 0xbe => {
            if !need_medium(ide) {
                return;
            }
            let lba = be32(&cdb[2..6]);
            let count = match op {
                0x28 => be16(&cdb[7..9]) as u64,
                0xa8 => be32(&cdb[6..10]),
                _ => (u64::from(cdb[6]) << 16) | (u64::from(cdb[7]) << 8) | u64::from(cdb[8]),
            };
            if op == 0xbe && cdb[9] & 0xf8 != 0x10 {
                // READ CD asking for more than user data (headers, subchannels).
                return check_condition(ide, c, INVALID_FIELD);
            }
            if count == 0 {
                return ok(ide, c);
            }
            if lba + count > blocks || count > 1 << 16 {
                return check_condition(ide, c, LBA_OUT_OF_RANGE);
            }
            ide.wait_for(
                c,
                BlockOp::Read {
                    offset: lba * BLOCK,
                    len: (count * BLOCK) as usize,
                },
                Waiting::AtapiRead { dma },
            );
        }
        0x43 => {
            if !need_medium(ide) {
                return;
            }
            let msf_bit = cdb[1] & 2 != 0;
            let format = if cdb[2] & 0x0f != 0 {
                cdb[2] & 0x0f
            } else {
                cdb[9] >> 6
            };
            let alloc = be16(&cdb[7..9]);
            let addr = |lba: u64| {
                if msf_bit {
                    msf(lba)
                } else {
                    (lba as u32).to_be_bytes()
                }
            };
            let toc = match format {
                0 => {
                    let mut t = vec![0, 0, 1, 1];
                    t.extend_from_slice(&[0, 0x14, 1, 0]);
                    t.extend_from_slice(&addr(0));
                    t.extend_from_slice(&[0, 0x16, 0xaa, 0]);
                    t.extend_from_slice(&addr(blocks));
                    t
                }
                1 => {
                    let mut t = vec![0, 0, 1, 1, 0, 0x14, 1, 0];
                    t.extend_from_slice(&addr(0));
                    t
                }
                _ => return check_condition(ide, c, INVALID_FIELD),
            };
            let mut t = toc;
            let len = (t.len() - 2) as u16;
            t[0..2].copy_from_slice(&len.to_be_bytes());
            data_in(ide, c, t, alloc, dma);
        }
        0x1a | 0x5a => {
            let page = cdb[2] & 0x3f;
            let (alloc, hdr_len) = if op == 0x1a {
                (usize::from(cdb[4]), 4)
            } else {
                (be16(&cdb[7..9]), 8)
            };
            let mut pages = Vec::new();
            if page == 0x01 || page == 0x3f {
                pages.extend_from_slice(&[0x01, 0x06, 0, 5, 0, 0, 0, 0]);
            }
            if page == 0x2a || page == 0x3f {
                let mut p = vec![0x2a, 0x14, 0x3b, 0, 0x71, 0x60, 0x29, 0];
                p.extend_from_slice(&706u16.to_be_bytes());
                p.extend_from_slice(&[0x01, 0x00, 0x08, 0x00]);
                p.extend_from_slice(&706u16.to_be_bytes());
                p.extend_from_slice(&[0; 6]);
                pages.extend_from_slice(&p);
            }
            if pages.is_empty() {
                return check_condition(ide, c, INVALID_FIELD);
            }
            let mut d = vec![0u8; hdr_len];
            d[if op == 0x1a { 1 } else { 2 }] = if medium.is_some() { 0x01 } else { 0x70 };
            d.extend_from_slice(&pages);
            let total = d.len();
            if op == 0x1a {
                d[0] = (total - 1) as u8;
            } else {
                d[0..2].copy_from_slice(&((total - 2) as u16).to_be_bytes());
            }
            data_in(ide, c, d, alloc, dma);
        }
        0x46 => {
            let alloc = be16(&cdb[7..9]);
            let profile: u16 = match medium {
                None => 0,
                Some(m) if m.size > CD_MAX => 0x0010,
                Some(_) => 0x0008,
            };
            let mut d = vec![0u8; 8];
            d[6..8].copy_from_slice(&profile.to_be_bytes());
            d.extend_from_slice(&[0, 0, 0x03, 8]);
            d.extend_from_slice(&0x0010u16.to_be_bytes());
            d.extend_from_slice(&[u8::from(profile == 0x0010), 0]);
            d.extend_from_slice(&0x0008u16.to_be_bytes());
            d.extend_from_slice(&[u8::from(profile == 0x0008), 0]);
            let len = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&len.to_be_bytes());
            data_in(ide, c, d, alloc, dma);
        }
        0x4a => {
            // Polled mode only; the media class is the one event class there is.
            if cdb[1] & 1 == 0 {
                return check_condition(ide, c, INVALID_FIELD);
            }
            let alloc = be16(&cdb[7..9]);
            const MEDIA_CLASS: u8 = 4;
            let mut d = vec![0, 2, 0x80, 1 << MEDIA_CLASS];
            if cdb[4] & (1 << MEDIA_CLASS) != 0 {
                let Some(dr) = ide.drive(c) else { return };
                // Media status: 1 tray open, 2 medium present. Event: 2 new medium,
                // 1 eject requested; neither is reported while the tray is open.
                let status = if tray_open {
                    1
                } else if inserted {
                    2
                } else {
                    0
                };
                let mut event = 0;
                if !tray_open {
                    if dr.new_media {
                        dr.new_media = false;
                        event = 2;
                    } else if dr.eject_request {
                        dr.eject_request = false;
                        event = 1;
                    }
                }
                d = vec![0, 6, MEDIA_CLASS, 1 << MEDIA_CLASS, event, status, 0, 0];
            }
            data_in(ide, c, d, alloc, dma);
        }
        0x51 => {
            if !need_medium(ide) {
                return;
            }
            let alloc = be16(&cdb[7..9]);
            let mut d = vec![0u8; 34];
            d[0..2].copy_from_slice(&32u16.to_be_bytes());
            d[2] = 0x0e;
            d[3] = 1;
            d[4] = 1;
            d[5] = 1;
            d[6] = 1;
            d[7] = 0x20;
            data_in(ide, c, d, alloc, dma);
        }
        0xbd => {
            let alloc = be16(&cdb[8..10]);
            data_in(ide, c, vec![0, 0, 0, 0, 0, 0, 0, 0], alloc, dma);
        }
        0x1e => {
            if let Some(d) = ide.drive(c) {
                d.locked = cdb[4] & 1 != 0;
            }
            ok(ide, c);
        }
        0x1b => start_stop_unit(ide, c, cdb[4]),
        0x2b => {
            if need_medium(ide) {
                ok(ide, c)
            }
        }
        0xbb | 0xa7 => ok(ide, c),
        _ => {
            tracing::debug!(target: "unimp", "atapi: command {op:#x} not supported");
            check_condition(ide, c, INVALID_OPCODE);
        }
    }
}

/// START STOP UNIT (MMC-3 6.40): with LoEj, start = 0 opens the tray and start = 1 closes
/// it; a locked tray does not open (NOT READY with a medium, ILLEGAL REQUEST without).
/// Power conditions only succeed.
fn start_stop_unit(ide: &mut Ide, c: usize, b4: u8) {
    let (start, loej) = (b4 & 1 != 0, b4 & 2 != 0);
    if b4 & 0xf0 != 0 || !loej {
        return ok(ide, c);
    }
    let n = c * 2 + ide.channels[c].selected;
    let Some(d) = ide.drive(c) else { return };
    if !start && !d.tray_open && d.locked {
        let key = if d.medium().is_some() { 0x02 } else { 0x05 };
        return check_condition(ide, c, (key, REMOVAL_PREVENTED, 0));
    }
    let open = !start;
    if d.tray_open != open {
        d.tray_open = open;
        ide.tray_moves.push((n, open));
    }
    ok(ide, c)
}
