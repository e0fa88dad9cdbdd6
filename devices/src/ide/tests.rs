use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::block::MemDisk;
use crate::memory::GuestMemoryMmap;
use crate::testing::FakeIrq;

struct Rig {
    ide: Ide,
    disks: Vec<Option<MemDisk>>,
    irq14: Arc<FakeIrq>,
    irq15: Arc<FakeIrq>,
}

fn image(n: usize, unit: usize) -> Vec<u8> {
    (0..n * unit)
        .map(|i| (i / unit) as u8 ^ (i as u8))
        .collect()
}

fn rig() -> Rig {
    let hd = MemDisk::new(image(64, 512));
    let cd = MemDisk::new(image(16, 2048));
    let irq14 = Arc::new(FakeIrq::default());
    let irq15 = Arc::new(FakeIrq::default());
    let mut ide = Ide::new([
        Some(DriveConfig {
            cdrom: false,
            serial: "QM00001".into(),
            medium: Some(hd.info()),
        }),
        None,
        Some(DriveConfig {
            cdrom: true,
            serial: "QM00003".into(),
            medium: Some(cd.info()),
        }),
        None,
    ]);
    ide.set_memory(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
    Rig {
        ide,
        disks: vec![Some(hd), None, Some(cd), None],
        irq14,
        irq15,
    }
}

impl Rig {
    /// Drive the fake lines as the host would, then read IRQ 14 (channel 0) or 15.
    fn irq_high(&mut self, c: usize) -> bool {
        let fx = self.ide.take_effects();
        fx.apply(&[&*self.irq14, &*self.irq15], None);
        [&self.irq14, &self.irq15][c].is_high()
    }
    /// Serve outstanding block requests like the host does.
    fn pump(&mut self) {
        for (n, r) in self.ide.take_requests() {
            let done = self.disks[n].as_mut().unwrap().serve(r);
            self.ide.complete(n, done);
        }
    }
    fn out8(&mut self, c: usize, reg: u64, v: u8) {
        cmd_write(&mut self.ide, c, reg, &[v]);
        self.pump();
    }
    fn in8(&mut self, c: usize, reg: u64) -> u8 {
        let mut b = [0];
        cmd_read(&mut self.ide, c, reg, &mut b);
        b[0]
    }
    fn in16(&mut self, c: usize) -> u16 {
        let mut b = [0; 2];
        cmd_read(&mut self.ide, c, 0, &mut b);
        u16::from_le_bytes(b)
    }
    fn read_bytes(&mut self, c: usize, n: usize) -> Vec<u8> {
        (0..n / 2)
            .flat_map(|_| self.in16(c).to_le_bytes())
            .collect()
    }
}

#[test]
fn identify_reports_model_capacity_and_lba48() {
    let mut r = rig();
    r.out8(0, 6, 0xa0);
    r.out8(0, 7, 0xec);
    assert!(r.irq_high(0));
    assert_eq!(r.in8(0, 7) & (DRQ | ERR), DRQ);
    let id = r.read_bytes(0, 512);
    let w = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
    assert_eq!(u32::from(w(60)) | u32::from(w(61)) << 16, 64);
    assert_ne!(w(83) & (1 << 10), 0);
    let model: Vec<u8> = id[54..94].chunks(2).flat_map(|p| [p[1], p[0]]).collect();
    assert!(String::from_utf8_lossy(&model).starts_with("QEMU HARDDISK"));
    assert_eq!(r.in8(0, 7) & DRQ, 0);
}

#[test]
fn pio_read_and_multi_sector_write_round_trip() {
    let mut r = rig();
    let want = r.disks[0].as_ref().unwrap().data[512 * 3..512 * 5].to_vec();
    r.out8(0, 2, 2);
    r.out8(0, 3, 3);
    r.out8(0, 4, 0);
    r.out8(0, 5, 0);
    r.out8(0, 6, 0xe0);
    r.out8(0, 7, 0x20);
    let got = r.read_bytes(0, 1024);
    assert_eq!(got, want);
    // Write two sectors at LBA 10.
    r.out8(0, 2, 2);
    r.out8(0, 3, 10);
    r.out8(0, 7, 0x30);
    assert_ne!(r.in8(0, 7) & DRQ, 0);
    for i in 0..512u16 {
        cmd_write(&mut r.ide, 0, 0, &i.to_le_bytes());
    }
    r.pump();
    assert_eq!(r.in8(0, 7) & (BSY | DRQ | ERR), 0);
    let d = &r.disks[0].as_ref().unwrap().data;
    assert_eq!(&d[5120..5122], &[0, 0]);
    assert_eq!(&d[5120 + 1022..5120 + 1024], &511u16.to_le_bytes());
}

#[test]
fn dma_read_through_a_prd_table() {
    let mut r = rig();
    let mem = r.ide.mem.clone().unwrap();
    // PRD at 0x1000: 1024 bytes to 0x8000, end of table.
    let mut prd = 0x8000u32.to_le_bytes().to_vec();
    prd.extend_from_slice(&1024u16.to_le_bytes());
    prd.extend_from_slice(&0x8000u16.to_le_bytes());
    mem.write_slice(&prd, GuestAddress(0x1000)).unwrap();
    r.ide.bm_write(4, &0x1000u32.to_le_bytes());
    r.out8(0, 2, 2);
    r.out8(0, 3, 1);
    r.out8(0, 6, 0xe0);
    r.out8(0, 7, 0xc8);
    r.ide.bm_write(0, &[BM_START | BM_READ_TO_MEMORY]);
    r.pump();
    let mut st = [0];
    r.ide.bm_read(2, &mut st);
    assert_ne!(st[0] & BM_IRQ, 0);
    assert_eq!(st[0] & BM_ACTIVE, 0);
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
    assert_eq!(got, r.disks[0].as_ref().unwrap().data[512..1536]);
}

#[test]
fn bad_prd_table_sets_the_error_bit() {
    let mut r = rig();
    r.ide.bm_write(4, &0xfff0_0000u32.to_le_bytes());
    r.out8(0, 2, 1);
    r.out8(0, 6, 0xe0);
    r.out8(0, 7, 0xc8);
    r.ide.bm_write(0, &[BM_START | BM_READ_TO_MEMORY]);
    r.pump();
    let mut st = [0];
    r.ide.bm_read(2, &mut st);
    assert_ne!(st[0] & BM_ERROR, 0);
    assert!(r.ide.errors() > 0);
}

fn packet(r: &mut Rig, cdb: [u8; 12], limit: u16) {
    r.out8(1, 6, 0xa0);
    r.out8(1, 1, 0);
    r.out8(1, 4, limit as u8);
    r.out8(1, 5, (limit >> 8) as u8);
    r.out8(1, 7, 0xa0);
    for pair in cdb.chunks(2) {
        cmd_write(&mut r.ide, 1, 0, pair);
    }
    r.pump();
}

#[test]
fn atapi_signature_inquiry_capacity_and_read10() {
    let mut r = rig();
    r.out8(1, 6, 0xa0);
    r.out8(1, 7, 0xec);
    assert_eq!((r.in8(1, 4), r.in8(1, 5)), (0x14, 0xeb));
    assert_ne!(r.in8(1, 7) & ERR, 0);
    packet(&mut r, [0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    assert!(r.irq_high(1));
    let inq = r.read_bytes(1, 36);
    assert_eq!(inq[0], 5);
    assert_eq!(&inq[16..28], b"QEMU DVD-ROM");
    assert_eq!(r.in8(1, 2), 3, "command complete: IO|CoD");
    packet(&mut r, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    let cap = r.read_bytes(1, 8);
    assert_eq!(cap, [0, 0, 0, 15, 0, 0, 8, 0]);
    // READ(10) of 2 blocks from LBA 3 with a 2048-byte limit: two chunks.
    packet(&mut r, [0x28, 0, 0, 0, 0, 3, 0, 0, 2, 0, 0, 0], 2048);
    assert_eq!((r.in8(1, 4), r.in8(1, 5)), (0, 8));
    let mut got = r.read_bytes(1, 2048);
    got.extend(r.read_bytes(1, 2048));
    assert_eq!(got, r.disks[2].as_ref().unwrap().data[3 * 2048..5 * 2048]);
    assert_eq!(r.in8(1, 7) & (DRQ | ERR), 0);
}

#[test]
fn read_toc_and_sense_after_errors() {
    let mut r = rig();
    packet(&mut r, [0x43, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0], 0xfffe);
    let toc = r.read_bytes(1, 20);
    assert_eq!(&toc[..4], &[0, 18, 1, 1]);
    assert_eq!(toc[14], 0xaa);
    assert_eq!(&toc[16..20], &16u32.to_be_bytes());
    packet(&mut r, [0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    assert_ne!(r.in8(1, 7) & ERR, 0);
    packet(&mut r, [0x03, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    let s = r.read_bytes(1, 18);
    assert_eq!((s[2], s[12]), (0x05, 0x20));
}

/// TEST UNIT READY: Ok, or the sense (key, asc) REQUEST SENSE then reads.
fn tur(r: &mut Rig) -> Result<(), (u8, u8)> {
    packet(r, [0; 12], 0xfffe);
    if r.in8(1, 7) & ERR == 0 {
        return Ok(());
    }
    Err(sense(r))
}

fn sense(r: &mut Rig) -> (u8, u8) {
    packet(r, [0x03, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    let s = r.read_bytes(1, 18);
    (s[2], s[12])
}

/// GET EVENT STATUS NOTIFICATION (polled, media class): (event code, media status).
fn media_event(r: &mut Rig) -> (u8, u8) {
    packet(r, [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0], 0xfffe);
    let e = r.read_bytes(1, 8);
    assert_eq!(&e[..4], &[0, 6, 4, 0x10], "media class header");
    (e[4], e[5])
}

fn cd_info(r: &Rig) -> BlockInfo {
    r.disks[2].as_ref().unwrap().info()
}

const NOT_READY: (u8, u8) = (0x02, 0x3a);
const CHANGED: (u8, u8) = (0x06, 0x28);

#[test]
fn a_changed_medium_reads_as_gone_then_as_changed_once_with_one_new_media_event() {
    let mut r = rig();
    assert_eq!(tur(&mut r), Ok(()));
    let info = cd_info(&r);
    r.ide.change_medium(2, Some(info), false).unwrap();
    assert_eq!(r.ide.take_tray_moves(), [(2, true), (2, false)]);
    assert_eq!(media_event(&mut r), (2, 2), "new medium, present");
    assert_eq!(media_event(&mut r), (0, 2), "reported once");
    assert_eq!(tur(&mut r), Err(NOT_READY));
    packet(&mut r, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    assert_ne!(r.in8(1, 7) & ERR, 0, "the unit attention comes next");
    // It stands, with the unit-attention key in the error register, until the sense is
    // read; INQUIRY still runs meanwhile.
    assert_eq!(r.in8(1, 1) >> 4, 0x06);
    packet(&mut r, [0x00; 12], 0xfffe);
    assert_eq!(r.in8(1, 1) >> 4, 0x06);
    packet(&mut r, [0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    assert_eq!(&r.read_bytes(1, 36)[16..28], b"QEMU DVD-ROM");
    assert_eq!(sense(&mut r), CHANGED);
    assert_eq!(tur(&mut r), Ok(()));
    assert_eq!(tur(&mut r), Ok(()));
    assert!(r.ide.take_tray_moves().is_empty());
}

#[test]
fn an_open_tray_is_not_ready_and_its_medium_can_be_swapped() {
    let mut r = rig();
    r.ide.open_tray(2, false).unwrap();
    assert!(r.ide.drive_info(2).unwrap().tray_open());
    assert_eq!(
        media_event(&mut r),
        (0, 1),
        "tray open, no event while open"
    );
    assert_eq!(tur(&mut r), Err(NOT_READY));
    packet(&mut r, [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 0xfffe);
    assert_eq!(sense(&mut r), NOT_READY, "READ(10) with the tray open");
    assert_eq!(r.ide.remove_medium(2), Ok(Some(cd_info(&r))));
    r.ide.close_tray(2).unwrap();
    assert_eq!(media_event(&mut r), (2, 0), "closed on nothing");
    assert_eq!(tur(&mut r), Err(NOT_READY));
    assert_eq!(tur(&mut r), Err(NOT_READY), "still empty");
    // A bigger medium: READ CAPACITY shows it after the change is reported.
    let big = BlockInfo {
        size: 32 * 2048,
        read_only: true,
    };
    r.ide.open_tray(2, false).unwrap();
    r.ide.insert_medium(2, big).unwrap();
    r.ide.close_tray(2).unwrap();
    assert_eq!(
        r.ide.take_tray_moves(),
        [(2, true), (2, false), (2, true), (2, false)]
    );
    assert_eq!(tur(&mut r), Err(NOT_READY));
    assert_eq!(tur(&mut r), Err(CHANGED));
    packet(&mut r, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    assert_eq!(r.read_bytes(1, 8), [0, 0, 0, 31, 0, 0, 8, 0]);
}

#[test]
fn a_locked_tray_stays_shut_unless_forced_and_the_guest_sees_an_eject_request() {
    let mut r = rig();
    packet(&mut r, [0x1e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    assert!(r.ide.drive_info(2).unwrap().locked());
    r.in8(1, 7); // reading the status acknowledges the interrupt
    assert!(!r.irq_high(1));
    assert_eq!(r.ide.open_tray(2, false), Err(MediaError::Locked(2)));
    assert!(r.irq_high(1), "the request interrupts");
    assert!(!r.ide.drive_info(2).unwrap().tray_open());
    assert!(r.ide.take_tray_moves().is_empty());
    assert_eq!(
        media_event(&mut r),
        (1, 2),
        "eject requested, medium present"
    );
    assert_eq!(tur(&mut r), Ok(()), "still readable");
    assert_eq!(
        r.ide.change_medium(2, None, false),
        Err(MediaError::Locked(2))
    );
    // The guest unlocks and opens the tray itself (START STOP UNIT, LoEj).
    packet(&mut r, [0x1e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    packet(&mut r, [0x1b, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    assert_eq!(r.in8(1, 7) & ERR, 0);
    assert_eq!(r.ide.take_tray_moves(), [(2, true)]);
    packet(&mut r, [0x1b, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    assert_eq!(r.ide.take_tray_moves(), [(2, false)]);
    assert_eq!(
        tur(&mut r),
        Ok(()),
        "the guest's own tray moves are no media change"
    );
    // Locked again: the guest cannot eject, the forced monitor can.
    packet(&mut r, [0x1e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    packet(&mut r, [0x1b, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    assert_eq!(sense(&mut r), (0x02, 0x53), "medium removal prevented");
    r.ide.open_tray(2, true).unwrap();
    let d = r.ide.drive_info(2).unwrap();
    assert!(d.tray_open() && !d.locked());
    assert_eq!(r.ide.take_tray_moves(), [(2, true)]);
}

#[test]
fn a_reset_closes_and_unlocks_the_tray_as_qemu_does() {
    let mut r = rig();
    packet(&mut r, [0x1e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    r.ide.open_tray(2, true).unwrap();
    r.ide.take_tray_moves();
    r.ide.reset();
    let d = r.ide.drive_info(2).unwrap();
    assert!(!d.tray_open() && !d.locked());
    assert!(r.ide.take_tray_moves().is_empty());
    assert_eq!(tur(&mut r), Ok(()), "the disc is back in reach");
    // DEVICE RESET too, from the guest.
    packet(&mut r, [0x1e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 0xfffe);
    r.out8(1, 6, 0xa0);
    r.out8(1, 7, 0x08);
    assert!(!r.ide.drive_info(2).unwrap().locked());
}

#[test]
fn media_operations_refuse_disks_missing_drives_and_wrong_tray_states() {
    let mut r = rig();
    assert_eq!(r.ide.open_tray(0, true), Err(MediaError::NotRemovable(0)));
    assert_eq!(r.ide.close_tray(0), Err(MediaError::NotRemovable(0)));
    assert_eq!(r.ide.open_tray(1, false), Err(MediaError::NoDrive(1)));
    assert_eq!(r.ide.open_tray(7, false), Err(MediaError::NoDrive(7)));
    assert_eq!(r.ide.remove_medium(2), Err(MediaError::TrayClosed(2)));
    let info = cd_info(&r);
    assert_eq!(r.ide.insert_medium(2, info), Err(MediaError::TrayClosed(2)));
    r.ide.open_tray(2, false).unwrap();
    assert_eq!(
        r.ide.insert_medium(2, info),
        Err(MediaError::MediumPresent(2))
    );
    // Opening an open tray and closing a closed one move nothing.
    r.ide.open_tray(2, false).unwrap();
    r.ide.close_tray(2).unwrap();
    r.ide.close_tray(2).unwrap();
    assert_eq!(r.ide.take_tray_moves(), [(2, true), (2, false)]);
}

#[test]
fn software_reset_restores_signatures() {
    let mut r = rig();
    ctl_write(&mut r.ide, 1, &[SRST]);
    ctl_write(&mut r.ide, 1, &[0]);
    assert_eq!((r.in8(1, 4), r.in8(1, 5)), (0x14, 0xeb));
    ctl_write(&mut r.ide, 0, &[SRST]);
    ctl_write(&mut r.ide, 0, &[0]);
    assert_eq!((r.in8(0, 4), r.in8(0, 5)), (0, 0));
    assert_eq!(r.in8(0, 7) & DRDY, DRDY);
}

#[test]
fn random_register_traffic_never_panics() {
    let mut r = rig();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let c = (x & 1) as usize;
        let reg = (x >> 1) % 8;
        let v = (x >> 8) as u8;
        match (x >> 16) % 6 {
            0 | 1 => r.out8(c, reg, v),
            2 => {
                r.in8(c, reg);
            }
            3 => ctl_write(&mut r.ide, c, &[v & 0x06]),
            4 => r.ide.bm_write((x >> 20) % 16, &[v]),
            _ => {
                let mut b = [0u8; 2];
                cmd_read(&mut r.ide, c, 0, &mut b);
            }
        }
        r.pump();
    }
}

/// A rig whose controller is `saved` restored into a fresh one (same disks, same IRQ
/// lines, same guest memory contents as the source), as a destination would build it.
fn restored(saved: &Rig) -> Rig {
    let mut r = rig();
    let fresh = std::mem::replace(&mut r.ide, rig().ide);
    r.ide = crate::check_roundtrip(&saved.ide, fresh);
    r.disks = saved.disks.clone();
    let (from, to) = (saved.ide.mem.clone().unwrap(), r.ide.mem.clone().unwrap());
    let mut all = vec![0u8; 0x10_0000];
    from.read_slice(&mut all, GuestAddress(0)).unwrap();
    to.write_slice(&all, GuestAddress(0)).unwrap();
    r
}

#[test]
fn ide_resumes_a_pio_read_mid_sector_and_a_pending_unit_attention_after_restore() {
    let mut r = rig();
    let want = r.disks[0].as_ref().unwrap().data[512 * 3..512 * 5].to_vec();
    // READ SECTORS of 2 at LBA 3, and the guest has read 300 bytes of the first one.
    r.out8(0, 2, 2);
    r.out8(0, 3, 3);
    r.out8(0, 6, 0xe0);
    r.out8(0, 7, 0x20);
    let head = r.read_bytes(0, 300);
    // The CD-ROM's medium changed; the bus master of the secondary channel is programmed.
    let info = cd_info(&r);
    r.ide.change_medium(2, Some(info), false).unwrap();
    r.ide.bm_write(8 + 4, &0x2000u32.to_le_bytes());
    r.ide.bm_write(8, &[BM_READ_TO_MEMORY]);

    let mut back = restored(&r);
    assert_eq!(back.irq_high(0), r.irq_high(0));
    assert!(back.irq_high(0), "the DRQ interrupt is still asserted");
    let bm = |r: &mut Rig| {
        let mut b = [0u8; 16];
        r.ide.bm_read(0, &mut b);
        b
    };
    assert_eq!(bm(&mut back), bm(&mut r));
    for reg in 1..=7 {
        assert_eq!(back.in8(0, reg), r.in8(0, reg), "primary register {reg}");
    }
    // The read goes on where it stopped, on both.
    let tail = back.read_bytes(0, 1024 - 300);
    assert_eq!(r.read_bytes(0, 1024 - 300), tail);
    assert_eq!([head, tail].concat(), want);
    assert_eq!(back.in8(0, 7) & (DRQ | BSY | ERR), 0);
    // The CD-ROM reports the medium change (gone, then changed), then nothing, on both.
    for rig in [&mut r, &mut back] {
        assert_eq!(media_event(rig), (2, 2));
        assert_eq!(tur(rig), Err(NOT_READY));
        assert_eq!(tur(rig), Err(CHANGED));
        assert_eq!(tur(rig), Ok(()));
    }
}

#[test]
fn a_dma_write_waiting_for_the_bus_master_completes_after_restore() {
    let mut r = rig();
    let mem = r.ide.mem.clone().unwrap();
    let mut prd = 0x8000u32.to_le_bytes().to_vec();
    prd.extend_from_slice(&512u16.to_le_bytes());
    prd.extend_from_slice(&0x8000u16.to_le_bytes());
    mem.write_slice(&prd, GuestAddress(0x1000)).unwrap();
    mem.write_slice(&[0x5a; 512], GuestAddress(0x8000)).unwrap();
    r.ide.bm_write(4, &0x1000u32.to_le_bytes());
    // WRITE DMA of one sector at LBA 7; the guest has not started the engine yet.
    r.out8(0, 2, 1);
    r.out8(0, 3, 7);
    r.out8(0, 6, 0xe0);
    r.out8(0, 7, 0xca);
    let mut back = restored(&r);
    back.ide.bm_write(0, &[BM_START]);
    back.pump();
    assert_eq!(back.in8(0, 7) & (BSY | DRQ | ERR), 0);
    assert_eq!(
        &back.disks[0].as_ref().unwrap().data[7 * 512..8 * 512],
        &[0x5a; 512][..]
    );
}

#[test]
fn an_ide_state_with_a_request_in_flight_or_a_wild_position_is_refused() {
    let mut r = rig();
    r.out8(0, 2, 1);
    r.out8(0, 6, 0xe0);
    cmd_write(&mut r.ide, 0, 7, &[0x20]); // READ SECTORS, not yet served by the host
    let section = crate::save_section("ide0", &r.ide);
    let e = crate::restore_section(&mut rig().ide, &section)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("drive 0") && e.contains("block request (AtaRead"),
        "{e}"
    );
    r.pump();
    let mut section = crate::save_section("ide0", &r.ide);
    section.state["channels"][0]["drives"][0]["pos"] = 513.into();
    let e = crate::restore_section(&mut rig().ide, &section)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pos 513 is past the 512-byte buffer"), "{e}");
    // A controller whose secondary master is a disk, not a CD-ROM.
    let section = crate::save_section("ide0", &r.ide);
    let mut other = Ide::new([
        Some(DriveConfig {
            cdrom: false,
            serial: "QM00001".into(),
            medium: None,
        }),
        None,
        Some(DriveConfig {
            cdrom: false,
            serial: "QM00003".into(),
            medium: None,
        }),
        None,
    ]);
    let e = crate::restore_section(&mut other, &section)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("drive 2") && e.contains("state is of a CD-ROM but this drive is a disk"),
        "{e}"
    );
}
