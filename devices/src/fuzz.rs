//! Fuzz targets for the device models a guest drives directly: the virtqueue descriptor
//! walker (with virtio-blk's request decoding on top), fw_cfg and its DMA interface, PCI
//! configuration space through 0xCF8/0xCFC (and the virtio-pci transport registers), the
//! IDE/ATAPI command set with bus-master DMA, the e1000's descriptor rings, the std VGA
//! (ports, VBE, memory, rendering), and device state sections as a migration stream
//! carries them, restored into their models.
//!
//! Each target is a `fn(&[u8])` in cargo-fuzz's shape. The structured ones read their
//! input as a program with [`Cursor`]: an opcode byte, then its operands; besides
//! register accesses there is always a "poke" that writes guest memory, as a guest would
//! before ringing a doorbell. The tests below run each target for a fixed time with
//! [`troupe_fuzz::fuzz`] (`TROUPE_FUZZ_MS`), starting from seeds that drive the device
//! through its normal path.

use std::sync::Arc;

use troupe_fuzz::Cursor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::block::MemDisk;
use crate::e1000::E1000;
use crate::fw_cfg::{self, FwCfg};
use crate::ide::{self, DriveConfig, Ide};
use crate::memory::GuestMemoryMmap;
use crate::pci::{self, BarDef, BarKind, ConfigSpace, Ids, PciFunction, PciHost, PlainFunction};
use crate::testing::FakeIrq;
use crate::vga::Vga;
use crate::virtio::blk::{self, BlkConfig};
use crate::virtio::chain::walk;
use crate::virtio::pci::{MsixSink, VirtioPci};
use crate::{restore_section, save_section, BusDevice, Section, Snapshot};

/// Guest RAM of every target: small, so random addresses hit it often.
const RAM: u64 = 0x1_0000;

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("64 KiB of RAM")
}

/// An address: mostly inside RAM, sometimes anything.
fn addr(c: &mut Cursor) -> u64 {
    if c.u8() & 0x80 != 0 {
        c.u64()
    } else {
        u64::from(c.u16())
    }
}

/// Opcode 0xff in every program: write up to 32 bytes of guest memory.
fn poke(c: &mut Cursor, mem: &GuestMemoryMmap) {
    let at = u64::from(c.u16());
    let n = usize::from(c.u8() % 33);
    let bytes = c.bytes(n);
    let _ = mem.write_slice(bytes, GuestAddress(at));
}

fn access_len(c: &mut Cursor) -> usize {
    [1, 2, 4, 8][usize::from(c.u8() & 3)]
}

// ---------------------------------------------------------------------------------------
// virtqueue

/// A split virtqueue in guest RAM, walked as a device worker does: the available ring
/// through `virtio-queue`, each chain through [`walk`], then decoded as a virtio-blk
/// request, gathered, scattered and returned on the used ring.
///
/// Input: queue size exponent, flags, ring addresses, next_avail, then RAM contents.
pub fn virtqueue(data: &[u8]) {
    let _ = serve_queue(data);
}

/// [`virtqueue`]'s work; returns the chains put on the used ring.
fn serve_queue(data: &[u8]) -> usize {
    let mut c = Cursor::new(data);
    let size_sel = c.u8();
    let flags = c.u8();
    let size = if flags & 1 != 0 {
        c.u16()
    } else {
        1 << (size_sel % 9)
    };
    let desc = addr(&mut c);
    let avail = addr(&mut c);
    let used = addr(&mut c);
    let next_avail = c.u16();
    let mem = ram();
    let contents = c.remaining();
    let _ = mem.write_slice(
        &contents[..contents.len().min(RAM as usize)],
        GuestAddress(0),
    );
    let Ok(mut q) = Queue::new(256) else {
        return 0;
    };
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_event_idx(flags & 2 != 0);
    q.set_ready(true);
    q.set_next_avail(next_avail);
    let cfg = BlkConfig {
        capacity: 1 << 20,
        read_only: flags & 4 != 0,
        num_queues: 1,
        queue_size: 256,
        serial: "fuzz".into(),
        discard: flags & 8 != 0,
    };
    let mut buf = [0u8; 512];
    let mut served = 0;
    for _ in 0..64 {
        if !q.ready() {
            break;
        }
        let (table, size) = (q.desc_table(), q.size());
        let head = match q.iter(&mem) {
            Ok(mut it) => it.next().map(|c| c.head_index()),
            Err(_) => break,
        };
        let Some(head) = head else {
            match q.enable_notification(&mem) {
                Ok(true) => continue,
                _ => break,
            }
        };
        let Ok(chain) = walk(&mem, table, size, head) else {
            break;
        };
        let _ = blk::parse(&mem, &chain, &cfg);
        let got = chain.read_at(&mem, u64::from(flags >> 4), &mut buf);
        let put = chain.write_at(&mem, 0, &buf[..got]);
        if q.add_used(&mem, head, put as u32).is_err() {
            break;
        }
        served += 1;
        let _ = q.needs_notification(&mem);
    }
    served
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn virtqueue_seeds() -> Vec<Vec<u8>> {
    // size 8 (2^3), rings at 0x100 / 0x200 / 0x300, one blk read request: header (16
    // bytes, readable) at 0x1000, data (512, writable) at 0x2000, status (1) at 0x3000.
    let mut seeds = Vec::new();
    for (event_idx, indirect) in [(false, false), (true, false), (false, true)] {
        let head = [3u8, if event_idx { 2 } else { 0 }];
        let mut s = head.to_vec();
        for a in [0x100u16, 0x200, 0x300] {
            s.push(0);
            s.extend_from_slice(&a.to_le_bytes());
        }
        s.extend_from_slice(&0u16.to_le_bytes());
        let mut ram = vec![0u8; 0x3010];
        let mut desc = |table: usize, i: usize, a: u64, len: u32, flags: u16, next: u16| {
            let d = table + 16 * i;
            ram[d..d + 8].copy_from_slice(&a.to_le_bytes());
            ram[d + 8..d + 12].copy_from_slice(&len.to_le_bytes());
            ram[d + 12..d + 14].copy_from_slice(&flags.to_le_bytes());
            ram[d + 14..d + 16].copy_from_slice(&next.to_le_bytes());
        };
        let table = if indirect {
            desc(0x100, 0, 0x800, 48, 4, 0);
            0x800
        } else {
            0x100
        };
        desc(table, 0, 0x1000, 16, 1, 1);
        desc(table, 1, 0x2000, 512, 3, 2);
        desc(table, 2, 0x3000, 1, 2, 0);
        // avail: flags 0, idx 1, ring[0] = 0.
        ram[0x200..0x206].copy_from_slice(&[0, 0, 1, 0, 0, 0]);
        // blk header: type IN (0), sector 2.
        ram[0x1000..0x1010].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        s.extend_from_slice(&ram);
        seeds.push(s);
    }
    seeds
}

// ---------------------------------------------------------------------------------------
// fw_cfg

/// fw_cfg as SeaBIOS and Linux use it: the selector and data ports, and DMA requests
/// whose descriptors the program writes into RAM first.
pub fn fw_cfg(data: &[u8]) {
    let mem = ram();
    let mut f = FwCfg::new();
    f.set_memory(mem.clone());
    f.add_item(fw_cfg::RAM_SIZE, (256u64 << 20).to_le_bytes().to_vec());
    f.add_item(fw_cfg::NB_CPUS, 2u16.to_le_bytes().to_vec());
    let _ = f.add_file("etc/e820", vec![0x5a; 40]);
    let _ = f.add_file("bootorder", b"/pci@i0cf8/ide@1,1/drive@0/disk@0\n".to_vec());
    let _ = f.add_writable_file("etc/tpm/log", vec![0; 64]);
    let mut c = Cursor::new(data);
    while !c.is_empty() {
        match c.u8() % 9 {
            0 => f.write(0, &c.u16().to_le_bytes()),
            1 => f.write(0, &[c.u8()]),
            2 => {
                let mut b = vec![0u8; access_len(&mut c)];
                f.read(1, &mut b);
            }
            3 => f.write(4, &addr(&mut c).to_be_bytes()),
            4 => {
                let a = addr(&mut c);
                f.write(4, &((a >> 32) as u32).to_be_bytes());
                f.write(8, &(a as u32).to_be_bytes());
            }
            5 => {
                let (off, n) = (u64::from(c.u8() % 16), access_len(&mut c));
                let mut b = vec![0u8; n];
                f.read(off, &mut b);
            }
            6 => {
                let (off, n) = (u64::from(c.u8() % 16), access_len(&mut c));
                let v = c.u64().to_le_bytes();
                f.write(off, &v[..n]);
            }
            7 => f.reset(),
            _ => poke(&mut c, &mem),
        }
    }
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn fw_cfg_seeds() -> Vec<Vec<u8>> {
    let dma = |control: u32, len: u32, to: u64| {
        // poke the descriptor at 0x100, then the 64-bit DMA write with its address.
        let mut s = vec![8, 0x00, 0x01, 16];
        s.extend_from_slice(&control.to_be_bytes());
        s.extend_from_slice(&len.to_be_bytes());
        s.extend_from_slice(&to.to_be_bytes());
        s.extend_from_slice(&[3, 0, 0x00, 0x01]);
        s
    };
    vec![
        // Signature through the ports, then the file directory.
        [
            vec![0, 0, 0],
            [2, 2].repeat(4),
            vec![0, 0x19, 0],
            [2, 3].repeat(8),
        ]
        .concat(),
        // DMA: select+read the directory, skip, read; select+write the writable file.
        [
            dma((0x19 << 16) | 0x0a, 64, 0x800),
            dma(0x04, 8, 0),
            dma(0x02, 32, 0x900),
            dma((0x22 << 16) | 0x18, 16, 0xa00),
        ]
        .concat(),
        // Split DMA address, high then low.
        [
            vec![8, 0x00, 0x02, 16, 0, 0x20, 0, 0x0a, 0, 0, 0, 64],
            vec![0; 8],
            vec![4, 0, 0, 2],
        ]
        .concat(),
    ]
}

// ---------------------------------------------------------------------------------------
// PCI configuration space

#[derive(Default)]
struct NoMsix;

impl MsixSink for NoMsix {
    fn route(&self, _vector: u16, _address: u64, _data: u32) {}
    fn fire(&self, _vector: u16) {}
}

/// A bus like `-M pc`'s: the chipset functions, an e1000, a virtio-rng transport and a
/// plain function with every BAR kind, a ROM and a capability list.
fn pci_bus() -> (
    PciHost,
    Vec<pci::SharedFunction>,
    Arc<std::sync::Mutex<VirtioPci>>,
) {
    let mut host = PciHost::new();
    let mut plain = ConfigSpace::new(Ids {
        vendor: 0x1234,
        device: 0x1111,
        revision: 2,
        class: (3, 0, 0),
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
        header_type: 0,
    });
    plain.add_bar(
        0,
        BarDef {
            kind: BarKind::Mem64 { prefetch: true },
            size: 1 << 24,
        },
    );
    plain.add_bar(
        2,
        BarDef {
            kind: BarKind::Mem32 { prefetch: false },
            size: 0x1000,
        },
    );
    plain.add_bar(
        3,
        BarDef {
            kind: BarKind::Io,
            size: 0x20,
        },
    );
    plain.add_rom(0x1_0000);
    plain.add_capability(0x05, &[0; 12]);
    plain.add_capability(0x11, &[0; 10]);
    plain.set_interrupt_pin(1);
    let irq = Arc::new(FakeIrq::default());
    let mut nic = E1000::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], irq.clone());
    nic.add_rom(0x4_0000);
    let virtio = Arc::new(std::sync::Mutex::new(VirtioPci::new(
        Box::new(crate::virtio::rng::Rng),
        2,
        irq,
        Arc::new(NoMsix),
    )));
    let fns: Vec<(pci::Slot, pci::SharedFunction)> = vec![
        (
            (0, 0),
            Arc::new(std::sync::Mutex::new(pci::i440fx::I440fx::new())),
        ),
        (
            (1, 0),
            Arc::new(std::sync::Mutex::new(pci::piix::Piix3Isa::new())),
        ),
        (
            (1, 3),
            Arc::new(std::sync::Mutex::new(pci::piix::Piix4Pm::new())),
        ),
        ((2, 0), Arc::new(std::sync::Mutex::new(nic))),
        ((3, 0), virtio.clone()),
        (
            (4, 0),
            Arc::new(std::sync::Mutex::new(PlainFunction::new(plain))),
        ),
    ];
    let mut all = Vec::new();
    for (slot, f) in fns {
        host.add(slot, f.clone());
        all.push(f);
    }
    (host, all, virtio)
}

/// Configuration mechanism #1 as a guest drives it, with the host's reaction to each
/// write (re-decoding the written function's BARs and ROM), plus the virtio-pci
/// transport's register blocks (common/ISR/device/notify, legacy I/O, MSI-X table).
pub fn pci_config(data: &[u8]) {
    let (mut host, fns, virtio) = pci_bus();
    let mut c = Cursor::new(data);
    while !c.is_empty() {
        match c.u8() % 10 {
            0 => {
                // CONFIG_ADDRESS: enable, device 0..7, function 0..7, register.
                let (dev, func, reg) = (c.u8() % 8, c.u8() % 8, c.u8());
                let en = if c.u8() & 0x80 == 0 {
                    0x8000_0000u32
                } else {
                    0
                };
                let a = en | (u32::from(dev) << 11) | (u32::from(func) << 8) | u32::from(reg);
                host.write(0, &a.to_le_bytes());
            }
            1 => host.write(0, &c.u32().to_le_bytes()),
            2 => {
                let (off, n) = (
                    4 + u64::from(c.u8() % 4),
                    [1, 2, 4][usize::from(c.u8() % 3)],
                );
                let mut b = vec![0u8; n];
                host.read(off, &mut b);
            }
            3 | 4 => {
                let (off, n) = (
                    4 + u64::from(c.u8() % 4),
                    [1, 2, 4][usize::from(c.u8() % 3)],
                );
                let v = c.u32().to_le_bytes();
                host.write(off, &v[..n]);
            }
            5 => {
                let (off, n) = (u64::from(c.u8() % 8), access_len(&mut c));
                let mut b = vec![0u8; n];
                host.read(off, &mut b);
                let v = c.u64().to_le_bytes();
                host.write(off, &v[..n]);
            }
            6 => {
                let mut v = virtio.lock().unwrap_or_else(|p| p.into_inner());
                let (off, n) = (u64::from(c.u16() % 0x4000), access_len(&mut c));
                let val = c.u64().to_le_bytes();
                if c.u8() & 1 == 0 {
                    let _ = v.modern_write(off, &val[..n]);
                } else {
                    let mut b = vec![0u8; n];
                    v.modern_read(off, &mut b);
                }
            }
            7 => {
                let mut v = virtio.lock().unwrap_or_else(|p| p.into_inner());
                let (off, n) = (u64::from(c.u8() % 64), access_len(&mut c));
                let val = c.u64().to_le_bytes();
                if c.u8() & 1 == 0 {
                    let _ = v.legacy_write(off, &val[..n]);
                } else {
                    let mut b = vec![0u8; n];
                    v.legacy_read(off, &mut b);
                }
            }
            8 => {
                let mut v = virtio.lock().unwrap_or_else(|p| p.into_inner());
                let (off, n) = (u64::from(c.u16() % 0x1000), access_len(&mut c));
                let val = c.u64().to_le_bytes();
                if c.u8() & 1 == 0 {
                    v.msix_write(off, &val[..n]);
                } else {
                    let mut b = vec![0u8; n];
                    v.msix_read(off, &mut b);
                }
            }
            _ => {
                let i = usize::from(c.u8()) % fns.len();
                fns[i].lock().unwrap_or_else(|p| p.into_inner()).reset();
            }
        }
        if host.take_written().is_some() {
            for f in &fns {
                let f = f.lock().unwrap_or_else(|p| p.into_inner());
                let _ = f.config().decoded_bars();
                let _ = f.config().decoded_rom();
                let _ = f.config().command();
            }
        }
    }
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn pci_config_seeds() -> Vec<Vec<u8>> {
    let mut s = Vec::new();
    // For each function: size every BAR and the ROM as firmware does (write ~0, read
    // back), then place it and enable decoding; walk the capability list.
    for dev in [2u8, 3, 4] {
        for reg in [0x10u8, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30] {
            s.extend_from_slice(&[0, dev, 0, reg, 0, 3, 0, 2, 0xff, 0xff, 0xff, 0xff]);
            s.extend_from_slice(&[2, 0, 2]);
            s.extend_from_slice(&[3, 0, 2, 0x00, 0x10, 0x00, 0xe0]);
        }
        s.extend_from_slice(&[0, dev, 0, 0x04, 0, 3, 0, 1, 0x07, 0x00, 0, 0]);
        s.extend_from_slice(&[0, dev, 0, 0x34, 0, 2, 0, 0, 2, 0, 0]);
    }
    // virtio: reset, acknowledge, driver, features, queue 0 set up, DRIVER_OK.
    let mut v = Vec::new();
    for (off, n, val) in [
        (0x14u16, 0u8, 0u64),
        (0x14, 0, 1),
        (0x14, 0, 3),
        (0x16, 1, 0),
        (0x18, 1, 0x1000),
        (0x1c, 0, 1),
        (0x14, 0, 0xf),
    ] {
        v.push(6);
        v.extend_from_slice(&off.to_le_bytes());
        v.push(n);
        v.extend_from_slice(&val.to_le_bytes());
        v.push(0);
    }
    // MSI-X table entry 0 and the chipset's PAM/PIRQ registers.
    v.extend_from_slice(&[8, 0, 0, 2, 0, 0, 0xe0, 0xfe, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&[0, 0, 0, 0x59, 0, 3, 0, 0, 0x33, 0, 0, 0]);
    v.extend_from_slice(&[0, 1, 0, 0x60, 0, 3, 0, 2, 0x0b, 0x0a, 0x0b, 0x0a]);
    vec![s, v]
}

// ---------------------------------------------------------------------------------------
// IDE / ATAPI

/// Both IDE channels (a 32 KiB disk, a 16-block CD-ROM) through their command, control
/// and bus-master registers, with block requests served as the host serves them and
/// tray/medium changes from the monitor in between.
pub fn ide(data: &[u8]) {
    let _ = run_ide(data);
}

/// [`ide`]'s work; returns the block requests that completed without error.
fn run_ide(data: &[u8]) -> usize {
    let mem = ram();
    let hd = MemDisk::new(vec![0x11; 64 * 512]);
    let cd = MemDisk::new(vec![0x22; 16 * 2048]);
    let mut disks = [Some(hd), None, Some(cd), None];
    let drive = |cdrom, d: &Option<MemDisk>| DriveConfig {
        cdrom,
        serial: "QM00001".into(),
        medium: d.as_ref().map(MemDisk::info),
    };
    let mut ide = Ide::new([
        Some(drive(false, &disks[0])),
        None,
        Some(drive(true, &disks[2])),
        None,
    ]);
    ide.set_memory(mem.clone());
    let mut ok = 0;
    let mut c = Cursor::new(data);
    while !c.is_empty() {
        let op = c.u8();
        let ch = usize::from(op >> 7);
        match (op & 0x7f) % 12 {
            0 => ide::cmd_write(&mut ide, ch, u64::from(c.u8() % 8), &[c.u8()]),
            1 => ide::cmd_write(&mut ide, ch, 0, &c.u16().to_le_bytes()),
            2 => ide::cmd_write(&mut ide, ch, 0, &c.u32().to_le_bytes()),
            3 => {
                let mut b = [0u8; 1];
                ide::cmd_read(&mut ide, ch, u64::from(c.u8() % 8), &mut b);
            }
            4 => {
                // A burst of data-port reads (a sector's worth, or less).
                let n = usize::from(c.u8()) + 1;
                let mut b = [0u8; 2];
                for _ in 0..n {
                    ide::cmd_read(&mut ide, ch, 0, &mut b);
                }
            }
            5 => ide::ctl_write(&mut ide, ch, &[c.u8()]),
            6 => {
                let mut b = [0u8; 1];
                ide::ctl_read(&mut ide, ch, &mut b);
            }
            7 => {
                let (off, n) = (u64::from(c.u8() % 16), [1, 2, 4][usize::from(c.u8() % 3)]);
                let v = c.u32().to_le_bytes();
                ide.bm_write(off, &v[..n]);
            }
            8 => {
                let (off, n) = (u64::from(c.u8() % 16), [1, 2, 4][usize::from(c.u8() % 3)]);
                let mut b = vec![0u8; n];
                ide.bm_read(off, &mut b);
            }
            9 => {
                let n = usize::from(c.u8() % 4);
                let _ = match c.u8() % 5 {
                    0 => ide.open_tray(n, c.u8() & 1 != 0),
                    1 => ide.close_tray(n),
                    2 => ide.remove_medium(n).map(|_| ()),
                    3 => ide.insert_medium(
                        n,
                        crate::block::BlockInfo {
                            size: u64::from(c.u16()) * 512,
                            read_only: true,
                        },
                    ),
                    _ => {
                        ide.reset();
                        Ok(())
                    }
                };
                let _ = ide.take_tray_moves();
            }
            10 => poke(&mut c, &mem),
            _ => {}
        }
        for (n, r) in ide.take_requests() {
            let done = match disks.get_mut(n).and_then(Option::as_mut) {
                Some(d) => d.serve(r),
                None => crate::block::BlockCompletion {
                    id: r.id,
                    result: Err(crate::block::BlockError::NoMedium),
                },
            };
            ok += usize::from(done.result.is_ok());
            ide.complete(n, done);
        }
    }
    ok
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn ide_seeds() -> Vec<Vec<u8>> {
    let out8 = |ch: u8, reg: u8, v: u8| vec![ch << 7, reg, v];
    let mut ata = Vec::new();
    // IDENTIFY, read it; READ SECTORS 2 at LBA 1; read them; WRITE SECTORS 1, data.
    for (r, v) in [(6, 0xe0), (7, 0xec)] {
        ata.extend(out8(0, r, v));
    }
    ata.extend_from_slice(&[4, 255, 3, 7]);
    for (r, v) in [(2, 2), (3, 1), (4, 0), (5, 0), (6, 0xe0), (7, 0x20)] {
        ata.extend(out8(0, r, v));
    }
    ata.extend_from_slice(&[4, 255, 4, 255]);
    for (r, v) in [(2, 1), (3, 4), (6, 0xe0), (7, 0x30)] {
        ata.extend(out8(0, r, v));
    }
    for _ in 0..256 {
        ata.extend_from_slice(&[1, 0x34, 0x12]);
    }
    // Bus-master READ DMA: PRD at 0x100 -> 1024 bytes at 0x1000, end of table.
    let mut dma = vec![10, 0x00, 0x01, 8, 0x00, 0x10, 0, 0, 0x00, 0x04, 0, 0x80];
    dma.extend_from_slice(&[7, 4, 2, 0x00, 0x01, 0, 0]);
    for (r, v) in [(2, 2), (3, 0), (6, 0xe0), (7, 0xc8)] {
        dma.extend(out8(0, r, v));
    }
    dma.extend_from_slice(&[7, 0, 0, 0x09, 0, 0, 0, 8, 2, 0]);
    // ATAPI on the secondary master: IDENTIFY PACKET, then PACKET with READ(10) of block
    // 1, TEST UNIT READY, READ CAPACITY, INQUIRY, eject (START STOP UNIT).
    let mut atapi = Vec::new();
    atapi.extend(out8(1, 6, 0xa0));
    atapi.extend(out8(1, 7, 0xa1));
    atapi.extend_from_slice(&[0x84, 255]);
    for cdb in [
        [0x28u8, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0],
        [0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0],
        [0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0],
        [0x1b, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
    ] {
        for (r, v) in [(1, 0), (4, 0x00), (5, 0x08), (7, 0xa0)] {
            atapi.extend(out8(1, r, v));
        }
        for w in cdb.chunks(2) {
            atapi.extend_from_slice(&[0x81, w[0], w[1]]);
        }
        atapi.extend_from_slice(&[0x84, 255, 0x84, 255, 0x84, 255, 0x84, 255]);
    }
    vec![ata, dma, atapi]
}

// ---------------------------------------------------------------------------------------
// e1000

/// The e1000 as its driver runs it: registers through MMIO and the IOADDR/IODATA window,
/// transmit descriptors the program places in RAM (legacy, context and data
/// descriptors), frames arriving from the network into the receive ring, PCI config.
pub fn e1000(data: &[u8]) {
    let _ = run_e1000(data);
}

/// [`e1000`]'s work; returns (frames sent, frames received).
fn run_e1000(data: &[u8]) -> (usize, usize) {
    let mem = ram();
    let mut e = E1000::new(
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        Arc::new(FakeIrq::default()),
    );
    let (mut sent, mut received) = (0, 0);
    let mut c = Cursor::new(data);
    while !c.is_empty() {
        match c.u8() % 8 {
            0 | 1 => {
                // Mostly the registers that exist.
                let off = u64::from(c.u16() & 0xfffc) | u64::from(c.u8() & 0x10) << 12;
                sent += e.write(&mem, off, &c.u32().to_le_bytes()).len();
            }
            2 => {
                let mut b = [0u8; 4];
                e.read(u64::from(c.u16() & 0xfffc), &mut b);
            }
            3 => {
                let (off, n) = (u64::from(c.u32() % 0x2_0000), access_len(&mut c));
                let v = c.u64().to_le_bytes();
                sent += e.write(&mem, off, &v[..n]).len();
            }
            4 => {
                let off = u64::from(c.u8() % 8);
                let v = c.u32().to_le_bytes();
                sent += e.io_write(&mem, off, &v).len();
                let mut b = [0u8; 4];
                e.io_read(off, &mut b);
            }
            5 => {
                let n = usize::from(c.u16() % 2048);
                let frame = c.bytes(n);
                received += usize::from(e.receive(&mem, frame));
            }
            6 => {
                let off = usize::from(c.u8());
                let v = c.u32().to_le_bytes();
                let n = [1, 2, 4][usize::from(c.u8() % 3)];
                if off + n <= 256 {
                    e.config_write(off, &v[..n]);
                }
            }
            _ => poke(&mut c, &mem),
        }
    }
    (sent, received)
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn e1000_seeds() -> Vec<Vec<u8>> {
    let w = |off: usize, v: u32| {
        let mut s = vec![0u8];
        s.extend_from_slice(&(off as u16).to_le_bytes());
        s.push(0);
        s.extend_from_slice(&v.to_le_bytes());
        s
    };
    let poke = |at: u16, bytes: &[u8]| {
        let mut s = vec![7u8];
        s.extend_from_slice(&at.to_le_bytes());
        s.push(bytes.len() as u8);
        s.extend_from_slice(bytes);
        s
    };
    let desc = |a: u64, len: u16, cmd: u8, dtyp_dext: u8| {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&a.to_le_bytes());
        d[8..10].copy_from_slice(&len.to_le_bytes());
        d[10] = 0;
        d[11] = cmd;
        d[12] = dtyp_dext;
        d
    };
    let mut s = Vec::new();
    // Receive ring at 0x1000 (8 buffers at 0x4000.. of 2 KiB; ring lengths count in
    // 128-byte units), transmit ring at 0x2000.
    for i in 0..8u64 {
        s.extend(poke(
            0x1000 + 16 * i as u16,
            &(0x4000 + 2048 * i).to_le_bytes(),
        ));
    }
    // RDBAL, RDLEN, RDH, RDT, RCTL (EN|BAM|SECRC), TDBAL, TDLEN, TCTL (EN), IMS.
    for (r, v) in [
        (0x2800, 0x1000),
        (0x2808, 8 * 16),
        (0x2810, 0),
        (0x2818, 7),
        (0x0100, 0x8002 | 0x0400_0000),
        (0x3800, 0x2000),
        (0x3808, 8 * 16),
        (0x0400, 2),
        (0x00d0, 0x9f),
    ] {
        s.extend(w(r, v));
    }
    // A frame arrives.
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 0x08, 0x06]);
    frame.resize(64, 0x42);
    s.push(5);
    s.extend_from_slice(&(frame.len() as u16).to_le_bytes());
    s.extend_from_slice(&frame);
    // Transmit: a legacy descriptor (EOP|IFCS|RS), then a TSO context + data descriptor.
    let mut tx = s.clone();
    tx.extend(poke(0x3000, &frame[..32]));
    tx.extend(poke(0x2000, &desc(0x3000, 60, 0x0b, 0)));
    tx.extend(w(0x3818, 1));
    let mut ctx = [0u8; 16];
    ctx[0] = 14;
    ctx[1] = 14 + 9;
    ctx[2] = 14 + 10;
    ctx[4] = 34;
    ctx[5] = 34 + 16;
    ctx[8..10].copy_from_slice(&40u16.to_le_bytes());
    ctx[11] = 0x20 | 0x08 | 0x04 | 0x02 | 0x01; // DEXT | RS | TCP | IP | TSE
    ctx[14] = 40;
    ctx[12..14].copy_from_slice(&536u16.to_le_bytes());
    tx.extend(poke(0x2010, &ctx));
    tx.extend(poke(0x2020, &desc(0x3000, 600, 0x2d | 0x04, 0x10)));
    tx.extend(w(0x3818, 3));
    vec![s, tx]
}

// ---------------------------------------------------------------------------------------
// VGA

/// The std VGA as a guest programs it: the legacy ports, the Bochs VBE registers (by port
/// and through the MMIO BAR), the legacy memory window and the linear framebuffer, with
/// the screen rendered every 64 accesses and at the end, as the display refresh does.
pub fn vga(data: &[u8]) {
    let mut v = Vga::new(1 << 20);
    let mut vram = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    let mut c = Cursor::new(data);
    let mut n = 0u32;
    while !c.is_empty() {
        match c.u8() % 9 {
            0 | 1 => v.io_write(0x3b0 + u16::from(c.u8() % 0x30), c.u8()),
            2 => {
                let _ = v.io_read(0x3b0 + u16::from(c.u8() % 0x30));
            }
            3 => v.vbe_write(u64::from(c.u8() & 1), c.u16(), &mut vram),
            4 => {
                let _ = v.vbe_read(u64::from(c.u8() & 1));
            }
            5 => v.mem_write(u64::from(c.u32() % 0x2_0000), c.u8(), &mut vram),
            6 => {
                let _ = v.mem_read(u64::from(c.u32() % 0x2_0000), &vram);
            }
            7 => {
                let (off, n) = (
                    u64::from(c.u16() % 0x700),
                    [1, 2, 4][usize::from(c.u8() % 3)],
                );
                let val = c.u32().to_le_bytes();
                if c.u8() & 1 == 0 {
                    v.mmio_write(off, &val[..n], &mut vram);
                } else {
                    let mut b = vec![0u8; n];
                    v.mmio_read(off, &mut b);
                }
            }
            _ => {
                let at = c.u32() as usize % vram.len();
                let b = c.bytes(16);
                let end = (at + b.len()).min(vram.len());
                vram[at..end].copy_from_slice(&b[..end - at]);
            }
        }
        n += 1;
        if n.is_multiple_of(64) {
            let _ = v.render(&vram, &mut out);
            let _ = v.text_cursor();
        }
    }
    let _ = v.render(&vram, &mut out);
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn vga_seeds() -> Vec<Vec<u8>> {
    let vbe = |index: u16, value: u16| {
        let mut s = vec![3, 0];
        s.extend_from_slice(&index.to_le_bytes());
        s.extend_from_slice(&[3, 1]);
        s.extend_from_slice(&value.to_le_bytes());
        s
    };
    let io = |port: u16, val: u8| vec![0, (port - 0x3b0) as u8, val];
    // VBE 640x480x32 with the LFB, then 800x600x8 and a virtual width; then text mode.
    let mut gfx = Vec::new();
    for (i, v) in [(4u16, 0u16), (1, 640), (2, 480), (3, 32), (4, 0x41)] {
        gfx.extend(vbe(i, v));
    }
    for _ in 0..8 {
        gfx.extend_from_slice(&[8, 0, 0x10, 0, 0]);
        gfx.extend((0..16u8).map(|i| i.wrapping_mul(17)));
    }
    for (i, v) in [
        (4u16, 0u16),
        (1, 800),
        (2, 600),
        (3, 8),
        (6, 1024),
        (9, 7),
        (4, 0x41),
    ] {
        gfx.extend(vbe(i, v));
    }
    let mut text = Vec::new();
    // Sequencer, CRTC and attribute registers of mode 3, a DAC entry, text in plane 0.
    for (port, val) in [
        (0x3c2, 0x67),
        (0x3c4, 0x01),
        (0x3c5, 0x00),
        (0x3c4, 0x04),
        (0x3c5, 0x02),
        (0x3d4, 0x01),
        (0x3d5, 0x4f),
        (0x3d4, 0x0c),
        (0x3d5, 0x00),
        (0x3d4, 0x13),
        (0x3d5, 0x28),
        (0x3d4, 0x0a),
        (0x3d5, 0x0d),
        (0x3c0, 0x10),
        (0x3c0, 0x0c),
        (0x3c0, 0x20),
        (0x3c8, 0x01),
        (0x3c9, 0x3f),
        (0x3c9, 0x00),
        (0x3c9, 0x00),
    ] {
        text.extend(io(port, val));
    }
    for (i, ch) in b"troupe".iter().enumerate() {
        text.extend_from_slice(&[5]);
        text.extend_from_slice(&(0x1_8000u32 + 2 * i as u32).to_le_bytes());
        text.push(*ch);
    }
    vec![gfx, text]
}

// ---------------------------------------------------------------------------------------
// Device state from a migration stream

struct FixedClock;

impl crate::rtc::RtcClock for FixedClock {
    fn now_unix(&self) -> i64 {
        1_700_000_000
    }
    fn monotonic_ns(&self) -> u64 {
        1_000_000_000
    }
}

/// The models whose state a migration stream carries, each as the machine builds it.
struct Models {
    ide: Ide,
    vga: Vga,
    serial: crate::serial::Serial,
    i8042: crate::i8042::I8042,
    rtc: crate::rtc::Rtc,
    fw_cfg: FwCfg,
    e1000: E1000,
    acpi: crate::acpi_pm::AcpiPm,
    host: PciHost,
    virtio: Arc<std::sync::Mutex<VirtioPci>>,
}

fn models(mem: &GuestMemoryMmap) -> Models {
    let irq = || -> Arc<FakeIrq> { Arc::new(FakeIrq::default()) };
    let events = Arc::new(crate::testing::FakeEvents::default());
    let drive = |cdrom, size| DriveConfig {
        cdrom,
        serial: "QM00001".into(),
        medium: Some(crate::block::BlockInfo {
            size,
            read_only: cdrom,
        }),
    };
    let mut ide = Ide::new([
        Some(drive(false, 64 * 512)),
        None,
        Some(drive(true, 16 * 2048)),
        None,
    ]);
    ide.set_memory(mem.clone());
    let mut fw_cfg = FwCfg::new();
    fw_cfg.set_memory(mem.clone());
    let _ = fw_cfg.add_file(
        "bootorder",
        b"/pci@i0cf8/ide@1,1/drive@0/disk@0
"
        .to_vec(),
    );
    let _ = fw_cfg.add_writable_file("etc/tpm/log", vec![0; 64]);
    let (host, _, virtio) = pci_bus();
    Models {
        ide,
        vga: Vga::new(1 << 20),
        serial: crate::serial::Serial::new(),
        i8042: crate::i8042::I8042::new(irq(), irq(), events.clone()),
        rtc: crate::rtc::Rtc::new(
            crate::rtc::CmosConfig {
                ram_below_4g: 64 << 20,
                cpus: 1,
                boot_order: "cd".into(),
                ..Default::default()
            },
            Box::new(FixedClock),
        ),
        fw_cfg,
        e1000: E1000::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], irq()),
        acpi: crate::acpi_pm::AcpiPm::new(irq(), events, Box::new(|| 1_000_000)),
        host,
        virtio,
    }
}

/// A device-state section from a migration stream (or a `loadvm`), restored into the
/// model of its kind as the supervisor does, then driven through that model's registers
/// so that state the model accepted but cannot work with shows.
pub fn device_state(data: &[u8]) {
    let _ = restore_and_drive(data);
}

/// [`device_state`]'s work; true when the model took the state.
fn restore_and_drive(data: &[u8]) -> bool {
    let Ok(section) = serde_json::from_slice::<Section>(data) else {
        return false;
    };
    let mut restored = true;
    let mem = ram();
    let mut m = models(&mem);
    let mut b1 = [0u8; 1];
    let mut b4 = [0u8; 4];
    match section.kind.as_str() {
        k if k == Ide::KIND && restore_section(&mut m.ide, &section).is_ok() => {
            for ch in 0..2 {
                for reg in 0..8 {
                    ide::cmd_read(&mut m.ide, ch, reg, &mut b1);
                }
                for _ in 0..600 {
                    ide::cmd_read(&mut m.ide, ch, 0, &mut b4[..2]);
                    ide::cmd_write(&mut m.ide, ch, 0, &[0x55, 0xaa]);
                }
                ide::ctl_read(&mut m.ide, ch, &mut b1);
            }
            for off in 0..16 {
                m.ide.bm_read(off, &mut b1);
            }
            m.ide.bm_write(0, &[1]);
            m.ide.bm_write(8, &[1]);
            let _ = m.ide.take_requests();
        }
        k if k == Vga::KIND && restore_section(&mut m.vga, &section).is_ok() => {
            let mut vram = vec![0u8; 1 << 20];
            let mut out = Vec::new();
            let _ = m.vga.render(&vram, &mut out);
            for port in 0x3b0..0x3e0 {
                let _ = m.vga.io_read(port);
            }
            for i in 0..16 {
                let _ = m.vga.vbe_read(1);
                m.vga.vbe_write(0, i, &mut vram);
            }
            m.vga.mem_write(0x1_8000, 0x41, &mut vram);
            let _ = m.vga.mem_read(0x1_8000, &vram);
            let _ = m.vga.render(&vram, &mut out);
        }
        k if k == <crate::serial::Serial as Snapshot>::KIND
            && restore_section(&mut m.serial, &section).is_ok() =>
        {
            let _ = m.serial.enqueue_input(b"abc");
            for reg in 0..8 {
                m.serial.read(reg, &mut b1);
            }
            m.serial.write(0, b"x");
        }
        k if k == <crate::i8042::I8042 as Snapshot>::KIND
            && restore_section(&mut m.i8042, &section).is_ok() =>
        {
            m.i8042.mouse_event(3, -2, 1, 1);
            for _ in 0..20 {
                m.i8042.read(4, &mut b1);
                m.i8042.read(0, &mut b1);
            }
            m.i8042.write(4, &[0x20]);
            m.i8042.write(0, &[0xf4]);
        }
        k if k == <crate::rtc::Rtc as Snapshot>::KIND
            && restore_section(&mut m.rtc, &section).is_ok() =>
        {
            for i in 0..128u8 {
                m.rtc.write(0, &[i]);
                m.rtc.read(1, &mut b1);
            }
        }
        k if k == FwCfg::KIND && restore_section(&mut m.fw_cfg, &section).is_ok() => {
            for _ in 0..64 {
                m.fw_cfg.read(1, &mut b1);
            }
            let _ = mem.write_slice(
                &[0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 8, 0],
                GuestAddress(0x100),
            );
            m.fw_cfg.write(4, &0x100u64.to_be_bytes());
        }
        k if k == E1000::KIND && restore_section(&mut m.e1000, &section).is_ok() => {
            for off in (0..0x6000).step_by(4) {
                m.e1000.read(off, &mut b4);
            }
            let _ = m.e1000.receive(&mem, &[0xff; 60]);
            let _ = m.e1000.write(&mem, 0x3818, &1u32.to_le_bytes());
        }
        k if k == crate::acpi_pm::AcpiPm::KIND
            && restore_section(&mut m.acpi, &section).is_ok() =>
        {
            for off in 0..8 {
                m.acpi.read(off, &mut b1);
            }
            m.acpi.press_power_button();
        }
        k if k == PciHost::KIND && restore_section(&mut m.host, &section).is_ok() => {
            m.host.read(4, &mut b4);
        }
        k if k == VirtioPci::KIND => {
            let mut v = m.virtio.lock().unwrap_or_else(|p| p.into_inner());
            restored = restore_section(&mut *v, &section).is_ok();
            if restored {
                for off in (0..0x4000).step_by(4) {
                    v.modern_read(off, &mut b4);
                }
                for off in (0..0x1000).step_by(4) {
                    v.msix_read(off, &mut b4);
                }
                let _ = v.queues().to_vec();
                v.signal_queue(0);
                v.signal_config();
            }
        }
        _ => restored = false,
    }
    restored
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn device_state_seeds() -> Vec<Vec<u8>> {
    let mem = ram();
    let mut m = models(&mem);
    // Some state that is not power-on: a PIO read half done, a VBE mode, bytes queued.
    ide::cmd_write(&mut m.ide, 0, 6, &[0xe0]);
    ide::cmd_write(&mut m.ide, 0, 7, &[0xec]);
    let mut b = [0u8; 2];
    for _ in 0..10 {
        ide::cmd_read(&mut m.ide, 0, 0, &mut b);
    }
    let mut vram = vec![0u8; 1 << 20];
    for (i, v) in [(1u16, 640u16), (2, 480), (3, 16), (4, 0x41)] {
        m.vga.vbe_write(0, i, &mut vram);
        m.vga.vbe_write(1, v, &mut vram);
    }
    let _ = m.serial.enqueue_input(b"hello");
    m.i8042.mouse_event(1, 1, 0, 0);
    let v = m.virtio.lock().unwrap_or_else(|p| p.into_inner());
    let sections = [
        save_section("ide", &m.ide),
        save_section("vga", &m.vga),
        save_section("serial0", &m.serial),
        save_section("i8042", &m.i8042),
        save_section("rtc", &m.rtc),
        save_section("fw_cfg", &m.fw_cfg),
        save_section("nic0", &m.e1000),
        save_section("pm", &m.acpi),
        save_section("pci", &m.host),
        save_section("rng0", &*v),
    ];
    sections
        .iter()
        .filter_map(|s| serde_json::to_vec(s).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_fuzz::{fuzz, Target};

    /// The seeds reach the deep paths the fuzzing should start from: chains served
    /// (directly and through an indirect table), disk and CD reads and writes completed,
    /// frames received and sent, every model's saved state restored.
    #[test]
    fn the_seeds_reach_the_data_paths() {
        for s in virtqueue_seeds() {
            assert_eq!(serve_queue(&s), 1);
        }
        let done: Vec<usize> = ide_seeds().iter().map(|s| run_ide(s)).collect();
        assert!(done.iter().all(|&n| n >= 1), "{done:?}");
        let e: Vec<(usize, usize)> = e1000_seeds().iter().map(|s| run_e1000(s)).collect();
        assert_eq!(e[0], (0, 1));
        assert!(e[1].0 >= 1 && e[1].1 == 1, "{e:?}");
        for s in device_state_seeds() {
            assert!(restore_and_drive(&s), "{}", String::from_utf8_lossy(&s));
        }
    }

    #[test]
    fn fuzz_virtqueue() {
        fuzz(Target {
            name: "virtqueue",
            run: virtqueue,
            seeds: virtqueue_seeds(),
            dict: vec![vec![1, 0], vec![2, 0], vec![3, 0], vec![4, 0], vec![7, 0]],
            max_len: 0x4000,
            threads: vec![],
        });
    }

    #[test]
    fn fuzz_fw_cfg_dma() {
        fuzz(Target {
            name: "fw_cfg",
            run: fw_cfg,
            seeds: fw_cfg_seeds(),
            dict: vec![vec![0, 0x19, 0], vec![0, 0x20, 0], vec![0, 0x22, 0]],
            max_len: 4096,
            threads: vec![],
        });
    }

    #[test]
    fn fuzz_pci_config() {
        fuzz(Target {
            name: "pci_config",
            run: pci_config,
            seeds: pci_config_seeds(),
            dict: vec![
                vec![0xff; 4],
                vec![0x10],
                vec![0x30],
                vec![0x34],
                vec![0x04],
            ],
            max_len: 4096,
            threads: vec![],
        });
    }

    #[test]
    fn fuzz_ide_atapi() {
        fuzz(Target {
            name: "ide_atapi",
            run: ide,
            seeds: ide_seeds(),
            dict: [
                0xec, 0xa1, 0xa0, 0x20, 0x24, 0x30, 0x34, 0xc8, 0xca, 0x25, 0x29, 0xe7,
            ]
            .iter()
            .map(|&c| vec![0, 7, c])
            .collect(),
            max_len: 8192,
            threads: vec![],
        });
    }

    #[test]
    fn fuzz_vga() {
        fuzz(Target {
            name: "vga",
            run: vga,
            seeds: vga_seeds(),
            dict: vec![
                vec![3, 0, 4, 0, 3, 1],
                vec![0x41, 0],
                vec![0x20, 0x03],
                vec![0x40, 0x1f],
            ],
            max_len: 4096,
            threads: vec![],
        });
    }

    #[test]
    fn fuzz_device_state_sections() {
        fuzz(Target {
            name: "device_state",
            run: device_state,
            seeds: device_state_seeds(),
            dict: [
                "0",
                "1",
                "255",
                "65535",
                "4294967295",
                "-1",
                "null",
                "[]",
                "true",
                "\"\"",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
            max_len: 1 << 16,
            threads: vec![],
        });
    }

    #[test]
    fn fuzz_e1000_rings() {
        fuzz(Target {
            name: "e1000",
            run: e1000,
            seeds: e1000_seeds(),
            dict: vec![
                vec![0x18, 0x38],
                vec![0x10, 0x38],
                vec![0x18, 0x28],
                vec![0x08, 0x38],
            ],
            max_len: 8192,
            threads: vec![],
        });
    }
}
