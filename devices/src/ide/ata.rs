//! ATA commands for hard disks (ATA/ATAPI-6): IDENTIFY DEVICE, PIO and DMA reads and
//! writes in 28- and 48-bit LBA, READ/WRITE MULTIPLE, flushes, and the housekeeping
//! commands firmware and OSes send.

use super::{ata_string, AfterWrite, Ide, Waiting, Xfer, DRDY, DRQ, DSC};
use crate::block::BlockOp;

const SECTOR: usize = 512;
/// Largest multiple-sector block we advertise.
const MAX_MULTIPLE: u8 = 16;

/// IDENTIFY DEVICE data for a disk of `sectors` 512-byte sectors.
pub fn identify(sectors: u64, serial: &str, multiple: u8, read_only: bool) -> Vec<u8> {
    let mut w = [0u16; 256];
    let cyls = (sectors / (16 * 63)).clamp(1, 16383) as u16;
    w[0] = 0x0040;
    w[1] = cyls;
    w[3] = 16;
    w[6] = 63;
    w[47] = 0x8000 | u16::from(MAX_MULTIPLE);
    w[49] = (1 << 9) | (1 << 8); // LBA, DMA
    w[51] = 0x200;
    w[53] = 0x0007;
    w[54] = cyls;
    w[55] = 16;
    w[56] = 63;
    let chs = u32::from(cyls) * 16 * 63;
    w[57] = chs as u16;
    w[58] = (chs >> 16) as u16;
    w[59] = 0x100 | u16::from(multiple);
    let lba28 = sectors.min(0x0fff_ffff) as u32;
    w[60] = lba28 as u16;
    w[61] = (lba28 >> 16) as u16;
    w[63] = 0x07; // multiword DMA 0-2 supported
    w[64] = 0x03; // PIO 3, 4
    w[65] = 120;
    w[66] = 120;
    w[67] = 120;
    w[68] = 120;
    w[80] = 0xf0; // ATA/ATAPI-4..7
    w[82] = (1 << 14) | (1 << 5); // NOP? | write cache
    w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10); // FLUSH EXT, FLUSH, LBA48
    w[84] = 1 << 14;
    w[85] = (1 << 14) | if read_only { 0 } else { 1 << 5 };
    w[86] = (1 << 13) | (1 << 12) | (1 << 10);
    w[87] = 1 << 14;
    w[88] = 0x3f | (1 << 13); // UDMA 0-5 supported, mode 5 selected
    w[93] = 1 | (1 << 14) | 0x2000;
    for i in 0..4 {
        w[100 + i] = (sectors >> (16 * i)) as u16;
    }
    let mut b: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    b[20..40].copy_from_slice(&ata_string(serial, 20));
    b[46..54].copy_from_slice(&ata_string("2.5+", 8));
    b[54..94].copy_from_slice(&ata_string("QEMU HARDDISK", 40));
    b
}

fn sectors_of(ide: &mut Ide, c: usize) -> u64 {
    ide.drive(c)
        .and_then(|d| d.medium())
        .map_or(0, |m| m.size / SECTOR as u64)
}

/// Check the range and start a read; `lba48` picks the register set.
fn start_read(ide: &mut Ide, c: usize, lba48: bool, dma: bool, chunk_sectors: usize) {
    let (lba, count) = {
        let tf = ide.tf(c);
        if lba48 {
            (tf.lba48(), tf.count48())
        } else {
            (tf.lba28(), tf.count28())
        }
    };
    if lba + u64::from(count) > sectors_of(ide, c) {
        return ide.abort(c);
    }
    let len = count as usize * SECTOR;
    ide.wait_for(
        c,
        BlockOp::Read {
            offset: lba * SECTOR as u64,
            len,
        },
        Waiting::AtaRead {
            dma,
            chunk: chunk_sectors * SECTOR,
        },
    );
}

fn start_write(ide: &mut Ide, c: usize, lba48: bool, dma: bool, chunk_sectors: usize) {
    let (lba, count) = {
        let tf = ide.tf(c);
        if lba48 {
            (tf.lba48(), tf.count48())
        } else {
            (tf.lba28(), tf.count28())
        }
    };
    let ro = ide
        .drive(c)
        .and_then(|d| d.medium())
        .is_none_or(|m| m.read_only);
    if ro || lba + u64::from(count) > sectors_of(ide, c) {
        return ide.abort(c);
    }
    let len = count as usize * SECTOR;
    if dma {
        let Some(d) = ide.drive(c) else { return };
        d.status = DRDY | DSC | DRQ;
        d.waiting = Some((0, Waiting::DmaOutPending { lba, len }));
        if ide.bm_started(c) {
            ide.dma_kick(c);
        }
        return;
    }
    let Some(d) = ide.drive(c) else { return };
    d.buf = vec![0; len];
    d.pos = 0;
    d.xfer = Xfer::PioOut {
        chunk: chunk_sectors * SECTOR,
        then: AfterWrite::AtaWrite { lba },
    };
    // The first block needs no interrupt: DRQ is enough (ATA PIO data-out protocol).
    d.status = DRDY | DSC | DRQ;
}

pub(super) fn command(ide: &mut Ide, c: usize, cmd: u8) {
    let multiple = ide.drive(c).map_or(1, |d| usize::from(d.multiple.max(1)));
    match cmd {
        0xec => {
            let (sectors, serial, mult, ro) = {
                let d = ide.drive(c).expect("drive present");
                let m = d.medium();
                (
                    m.map_or(0, |m| m.size / 512),
                    d.cfg.serial.clone(),
                    d.multiple,
                    m.is_some_and(|m| m.read_only),
                )
            };
            ide.start_pio_in(c, identify(sectors, &serial, mult, ro), SECTOR);
        }
        0x20 | 0x21 => start_read(ide, c, false, false, 1),
        0x24 => start_read(ide, c, true, false, 1),
        0xc4 => start_read(ide, c, false, false, multiple),
        0x29 => start_read(ide, c, true, false, multiple),
        0xc8 | 0xc9 => start_read(ide, c, false, true, 1),
        0x25 => start_read(ide, c, true, true, 1),
        0x30 | 0x31 => start_write(ide, c, false, false, 1),
        0x34 => start_write(ide, c, true, false, 1),
        0xc5 => start_write(ide, c, false, false, multiple),
        0x39 => start_write(ide, c, true, false, multiple),
        0xca | 0xcb => start_write(ide, c, false, true, 1),
        0x35 => start_write(ide, c, true, true, 1),
        0xc6 => {
            let n = ide.tf(c).nsector;
            if n == 0 || n > MAX_MULTIPLE || !n.is_power_of_two() {
                return ide.abort(c);
            }
            if let Some(d) = ide.drive(c) {
                d.multiple = n;
            }
            ide.command_ok(c);
        }
        0xe7 | 0xea => ide.wait_for(c, BlockOp::Flush, Waiting::Flush),
        // READ VERIFY: checks the range, moves no data.
        0x40..=0x42 => {
            let lba48 = cmd == 0x42;
            let (lba, count) = {
                let tf = ide.tf(c);
                if lba48 {
                    (tf.lba48(), tf.count48())
                } else {
                    (tf.lba28(), tf.count28())
                }
            };
            if lba + u64::from(count) > sectors_of(ide, c) {
                ide.abort(c)
            } else {
                ide.command_ok(c)
            }
        }
        // SET FEATURES, INITIALIZE DEVICE PARAMETERS, RECALIBRATE, SEEK, IDLE/STANDBY,
        // SLEEP, NOP-like housekeeping: accepted.
        0xef | 0x91 | 0x10..=0x1f | 0x70..=0x7f | 0xe0..=0xe3 | 0xe6 | 0x94..=0x99 => {
            ide.command_ok(c)
        }
        // CHECK POWER MODE: active.
        0xe5 => {
            ide.tf(c).nsector = 0xff;
            ide.command_ok(c);
        }
        // EXECUTE DEVICE DIAGNOSTIC.
        0x90 => {
            ide.set_signatures(c);
            if let Some(d) = ide.drive(c) {
                d.error = 0x01;
                d.status = DRDY | DSC;
            }
            ide.raise_irq(c);
        }
        // IDENTIFY PACKET DEVICE / PACKET / DEVICE RESET on a disk: abort (how a host
        // tells a disk from a CD-ROM).
        _ => {
            tracing::debug!(target: "unimp", "ide: ATA command {cmd:#x} not supported");
            ide.abort(c);
        }
    }
}

/// A read finished: hand the data to the guest by PIO or DMA.
pub(super) fn read_done(ide: &mut Ide, c: usize, data: Vec<u8>, dma: bool, chunk: usize) {
    if dma {
        let started = ide.bm_started(c);
        let Some(d) = ide.drive(c) else { return };
        if !started {
            // The guest issued READ DMA before starting the engine: park the data.
            d.buf = data;
            d.dma_ready = true;
            d.status = DRDY | DSC | DRQ;
            return;
        }
        let ok = ide.dma_to_memory(c, &data);
        ide.dma_finish(c, ok);
    } else {
        ide.start_pio_in(c, data, chunk);
    }
}

/// A write or flush finished.
pub(super) fn write_done(ide: &mut Ide, c: usize) {
    let dma = ide.bm_started(c);
    if dma {
        ide.dma_finish(c, true);
    } else {
        ide.command_ok(c);
    }
}
