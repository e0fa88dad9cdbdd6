//! A polling virtio PCI driver core for ring 3: finds the device, speaks the modern
//! (capability) or the legacy (I/O BAR) interface, and runs one split queue whose rings
//! live at a fixed physical address. No interrupts: completions are polled.

use core::sync::atomic::{compiler_fence, Ordering};
use guestlib::io::{inb, inl, inw, outb, outl, outw};
use guestlib::pci;
use guestlib::phys::{mmio_read32, mmio_write32, read_u16, read_u32};
use guestlib::time::Deadline;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;
pub const VERSION_1: u64 = 1 << 32;
pub const NEEDS_RESET: u8 = 0x40;

/// Where this driver's queue lives (free RAM above the guest image with -m >= 64M).
pub const RING_BASE: u64 = 0x0300_0000;

fn w8(addr: u64, v: u8) {
    // SAFETY: identity-mapped, user-accessible MMIO or free RAM chosen by this driver.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}
fn r8(addr: u64) -> u8 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}
fn r16(addr: u64) -> u16 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}
fn w16(addr: u64, v: u16) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}
pub fn w32(addr: u64, v: u32) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}
/// A 64-bit register as two 32-bit writes (what the virtio spec asks of drivers).
fn w64_split(addr: u64, v: u64) {
    w32(addr, v as u32);
    w32(addr + 4, (v >> 32) as u32);
}
pub fn w64(addr: u64, v: u64) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}

enum Regs {
    Modern {
        common: u64,
        notify: u64,
        notify_mult: u32,
        isr: u64,
        device: u64,
    },
    Legacy {
        io: u16,
    },
}

/// One queue's ring state.
#[derive(Clone, Copy, Default)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
    notify_addr: u64,
}

pub struct Virtio {
    regs: Regs,
    rings: [Ring; 7],
    /// The queue `set_desc`, `offer`, `kick` and `wait_used` work on.
    cur: usize,
}

fn cfg8(d: u8, f: u8, reg: u8) -> u8 {
    (pci::read32(d, f, reg & !3) >> (8 * (reg & 3))) as u8
}

impl Virtio {
    /// Find `(vendor 0x1af4, one of ids)`; `legacy` picks the I/O BAR interface.
    pub fn find(ids: &[u16], legacy: bool) -> Option<Virtio> {
        let (d, f) = ids.iter().find_map(|&id| pci::find(0x1af4, id))?;
        let cmd = pci::read32(d, f, 0x04);
        pci::write32(d, f, 0x04, cmd | 0x7);
        let regs = if legacy {
            let mut bar = pci::read32(d, f, 0x10) & !3;
            if bar == 0 {
                pci::write32(d, f, 0x10, 0xc000);
                bar = pci::read32(d, f, 0x10) & !3;
            }
            Regs::Legacy { io: bar as u16 }
        } else {
            let base = pci::mem_bar(d, f, 4, 0xe100_0000);
            let (mut common, mut notify, mut isr, mut device, mut mult) = (0, 0, 0, 0, 0);
            let mut cap = cfg8(d, f, 0x34);
            while cap != 0 {
                if cfg8(d, f, cap) == 0x09 && cfg8(d, f, cap + 4) == 4 {
                    let off = u64::from(pci::read32(d, f, cap + 8));
                    match cfg8(d, f, cap + 3) {
                        1 => common = base + off,
                        2 => {
                            notify = base + off;
                            mult = pci::read32(d, f, cap + 16);
                        }
                        3 => isr = base + off,
                        4 => device = base + off,
                        _ => {}
                    }
                }
                cap = cfg8(d, f, cap + 1);
            }
            if common == 0 || notify == 0 {
                return None;
            }
            Regs::Modern {
                common,
                notify,
                notify_mult: mult,
                isr,
                device,
            }
        };
        Some(Virtio {
            regs,
            rings: [Ring::default(); 7],
            cur: 0,
        })
    }

    pub fn is_legacy(&self) -> bool {
        matches!(self.regs, Regs::Legacy { .. })
    }

    pub fn status(&self) -> u8 {
        match self.regs {
            Regs::Modern { common, .. } => r8(common + 0x14),
            Regs::Legacy { io } => inb(io + 0x12),
        }
    }

    fn set_status(&self, v: u8) {
        match self.regs {
            Regs::Modern { common, .. } => w8(common + 0x14, v),
            Regs::Legacy { io } => outb(io + 0x12, v),
        }
    }

    /// Read the ISR (clears it).
    pub fn isr(&self) -> u8 {
        match self.regs {
            Regs::Modern { isr, .. } => r8(isr),
            Regs::Legacy { io } => inb(io + 0x13),
        }
    }

    /// Device configuration, 32 bits at `off`.
    pub fn config32(&self, off: u64) -> u32 {
        match self.regs {
            Regs::Modern { device, .. } => mmio_read32(device + off),
            Regs::Legacy { io } => inl(io + 0x14 + off as u16),
        }
    }

    /// Write 32 bits of device configuration at `off`.
    pub fn set_config32(&self, off: u64, v: u32) {
        match self.regs {
            Regs::Modern { device, .. } => mmio_write32(device + off, v),
            Regs::Legacy { io } => outl(io + 0x14 + off as u16, v),
        }
    }

    /// Device configuration byte at `off` (modern interface).
    pub fn config8(&self, off: u64) -> u8 {
        match self.regs {
            Regs::Modern { device, .. } => r8(device + off),
            Regs::Legacy { io } => inb(io + 0x14 + off as u16),
        }
    }

    pub fn set_config8(&self, off: u64, v: u8) {
        match self.regs {
            Regs::Modern { device, .. } => w8(device + off, v),
            Regs::Legacy { io } => outb(io + 0x14 + off as u16, v),
        }
    }

    /// Reset, negotiate `want` (intersected with what the device offers), set up queue 0
    /// with at most `max` entries, DRIVER_OK. Returns the negotiated features.
    pub fn init(&mut self, want: u64, max: u16) -> Result<u64, &'static str> {
        self.init_queues(want, max, 1)
    }

    /// As [`Self::init`], with queues `0..queues` (at most 3), each 64 KiB apart from
    /// RING_BASE; queue 0 is selected afterwards.
    pub fn init_queues(&mut self, want: u64, max: u16, queues: usize) -> Result<u64, &'static str> {
        self.set_status(0);
        self.set_status(1);
        self.set_status(3);
        let feats = match self.regs {
            Regs::Modern { common, .. } => {
                mmio_write32(common, 0);
                let lo = mmio_read32(common + 4);
                mmio_write32(common, 1);
                let hi = mmio_read32(common + 4);
                let f = ((u64::from(hi) << 32) | u64::from(lo)) & want;
                mmio_write32(common + 8, 0);
                mmio_write32(common + 0xc, f as u32);
                mmio_write32(common + 8, 1);
                mmio_write32(common + 0xc, (f >> 32) as u32);
                self.set_status(3 | 8);
                if self.status() & 8 == 0 {
                    return Err("FEATURES_OK not accepted");
                }
                f
            }
            Regs::Legacy { io } => {
                let f = u64::from(inl(io)) & want;
                outl(io + 4, f as u32);
                f
            }
        };
        for qi in 0..queues {
            self.cur = qi;
            self.setup_queue(qi as u16, RING_BASE + 0x1_0000 * qi as u64, max);
        }
        self.select(0);
        self.set_status(self.status() | 4);
        Ok(feats)
    }

    /// Make queue `qi` the one `set_desc`, `offer`, `kick` and `wait_used` work on.
    pub fn select(&mut self, qi: usize) {
        self.cur = qi;
    }

    fn ring(&self) -> &Ring {
        &self.rings[self.cur]
    }

    fn ring_mut(&mut self) -> &mut Ring {
        &mut self.rings[self.cur]
    }

    /// Entries in the selected queue.
    pub fn size(&self) -> u16 {
        self.ring().size
    }

    fn setup_queue(&mut self, qi: u16, base: u64, max: u16) {
        match self.regs {
            Regs::Modern {
                common,
                notify,
                notify_mult,
                ..
            } => {
                w16(common + 0x16, qi);
                let size = r16(common + 0x18).min(max);
                w16(common + 0x18, size);
                let r = layout(base, size);
                w64_split(common + 0x20, r.desc);
                w64_split(common + 0x28, r.avail);
                w64_split(common + 0x30, r.used);
                let off = r16(common + 0x1e);
                *self.ring_mut() = Ring {
                    notify_addr: notify + u64::from(off) * u64::from(notify_mult),
                    ..r
                };
                w16(common + 0x1c, 1);
            }
            Regs::Legacy { io } => {
                outw(io + 0x0e, qi);
                let r = layout(base, inw(io + 0x0c));
                outl(io + 0x08, (base >> 12) as u32);
                *self.ring_mut() = Ring {
                    notify_addr: u64::from(qi),
                    ..r
                };
            }
        }
    }

    /// Address just past the rings (free for buffers up to RING_BASE + 1 MiB).
    pub fn ring_end(&self) -> u64 {
        let r = self.ring();
        (r.used + 6 + 8 * u64::from(r.size) + 4095) & !4095
    }

    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.ring().desc + 16 * u64::from(i);
        w64(d, addr);
        w32(d + 8, len);
        w16(d + 12, flags);
        w16(d + 14, next);
    }

    /// Offer the chain starting at `head` and notify the device.
    pub fn offer(&mut self, head: u16) {
        self.offer_quietly(head);
        self.kick();
    }

    /// Offer the chain starting at `head` without notifying (batch, then [`Self::kick`]).
    pub fn offer_quietly(&mut self, head: u16) {
        let r = self.ring_mut();
        w16(r.avail + 4 + 2 * u64::from(r.avail_idx % r.size), head);
        compiler_fence(Ordering::SeqCst);
        r.avail_idx = r.avail_idx.wrapping_add(1);
        w16(r.avail + 2, r.avail_idx);
        compiler_fence(Ordering::SeqCst);
    }

    pub fn kick(&self) {
        match self.regs {
            Regs::Modern { .. } => w16(self.ring().notify_addr, self.cur as u16),
            Regs::Legacy { io } => outw(io + 0x10, self.ring().notify_addr as u16),
        }
    }

    /// EVENT_IDX: ask for an interrupt only once the used index passes `idx` (the
    /// `used_event` word after the available ring).
    pub fn set_used_event(&self, idx: u16) {
        let r = self.ring();
        w16(r.avail + 4 + 2 * u64::from(r.size), idx);
        compiler_fence(Ordering::SeqCst);
    }

    /// EVENT_IDX: the available index after which the device wants a notification (the
    /// `avail_event` word after the used ring).
    pub fn avail_event(&self) -> u16 {
        let r = self.ring();
        compiler_fence(Ordering::SeqCst);
        read_u16(r.used + 4 + 8 * u64::from(r.size))
    }

    /// Write 0 to the status register (a device reset) and read it back once, as Linux's
    /// legacy driver does to flush the write; returns what the read gave.
    pub fn reset(&self) -> u8 {
        self.set_status(0);
        self.status()
    }

    /// The used ring's index of the selected queue, as the device last wrote it.
    pub fn used_idx(&self) -> u16 {
        compiler_fence(Ordering::SeqCst);
        read_u16(self.ring().used + 2)
    }

    /// Used elements consumed so far on the selected queue.
    pub fn used_seen(&self) -> u16 {
        self.ring().used_seen
    }

    /// Chains offered so far on the selected queue.
    pub fn avail_idx(&self) -> u16 {
        self.ring().avail_idx
    }

    /// Wait for the next used element: (head, len), or None after `ms` milliseconds.
    pub fn wait_used(&mut self, ms: u64) -> Option<(u16, u32)> {
        let d = Deadline::after_ms(ms);
        let r = self.ring_mut();
        loop {
            compiler_fence(Ordering::SeqCst);
            if read_u16(r.used + 2) != r.used_seen {
                let e = r.used + 4 + 8 * u64::from(r.used_seen % r.size);
                r.used_seen = r.used_seen.wrapping_add(1);
                return Some((read_u32(e) as u16, read_u32(e + 4)));
            }
            if d.expired() {
                return None;
            }
            core::hint::spin_loop();
        }
    }
}

/// A zeroed split ring of `size` entries at `base`: descriptors, then the available ring,
/// then the used ring on the next 4 KiB boundary (the legacy layout, used for both).
fn layout(base: u64, size: u16) -> Ring {
    let n = u64::from(size);
    let avail = base + 16 * n;
    let used = (avail + 6 + 2 * n + 4095) & !4095;
    let mut a = base;
    while a < used + 6 + 8 * n {
        w64(a, 0);
        a += 8;
    }
    Ring {
        size,
        desc: base,
        avail,
        used,
        ..Ring::default()
    }
}
