//! The virtio-net worker: transmit chains go to the backend (a tap, or the slirp thread of
//! user-mode networking) as frames; frames from the backend fill the receive buffers the
//! driver posted. The backend's descriptor (the tap, or slirp's "frames ready" eventfd)
//! is another entry in the worker's epoll, so one thread moves frames both ways. A frame that
//! finds no receive buffer is dropped and counted (the guest is not keeping up), as is a
//! transmit the tap refuses. On a tap with virtio-net headers, headers pass through
//! unchanged both ways, so the checksum and segmentation offloads the driver negotiated
//! are the host kernel's to finish (it also refuses a malformed header: a dropped frame).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devices::virtio::chain::Chain;
use devices::virtio::net::{
    header_len, lock_filter, tun_offloads, SharedRxFilter, F_CSUM, F_GUEST_CSUM, F_MRG_RXBUF,
};

use super::{Ctx, QueueWorker};
use crate::net::backend::{Backend, Recv};

const RX: usize = 0;
const TX: usize = 1;
const CTRL: usize = 2;
/// Largest frame taken from the guest or the tap: a 64 KiB segmentation-offload packet
/// with its Ethernet and virtio-net headers.
const MAX_FRAME: usize = 65_536 + 14 + 12;

/// Counters for `info network`.
#[derive(Debug, Default)]
pub struct NetStats {
    pub rx_frames: AtomicU64,
    pub tx_frames: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub tx_dropped: AtomicU64,
}

pub struct NetWorker {
    backend: Backend,
    /// Link up (`set_link`): while down, frames are dropped both ways.
    pub link: Arc<std::sync::atomic::AtomicBool>,
    /// Why the backend stopped working, for `info network`.
    pub error: Arc<std::sync::Mutex<Option<String>>>,
    buf: Vec<u8>,
    pub stats: Arc<NetStats>,
    /// The receive filter the driver sets through the control queue.
    filter: SharedRxFilter,
    /// Frames the VMM itself sends on this NIC (announcements), sent at the next wake.
    pub inject: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// Receive buffers taken from the ring for a merged frame that did not fit; used first
    /// for the next frame (a ring cannot take a buffer back).
    rx_spare: std::collections::VecDeque<Chain>,
}

impl NetWorker {
    pub fn new(backend: Backend, filter: SharedRxFilter) -> Self {
        Self {
            filter,
            inject: Arc::default(),
            rx_spare: std::collections::VecDeque::new(),
            backend,
            link: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            error: Arc::default(),
            buf: vec![0u8; MAX_FRAME + 12],
            stats: Arc::default(),
        }
    }

    fn receive(&mut self, ctx: &mut Ctx) {
        let hdr = header_len(ctx.features);
        let mut used = false;
        self.backend.ack();
        loop {
            let len = match self.backend.recv_with_header(&mut self.buf, hdr) {
                Recv::Frame(n) => n,
                Recv::Empty => break,
                Recv::Failed(why) => {
                    crate::report!("troupe: {why}");
                    *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    self.link.store(false, Ordering::Relaxed);
                    ctx.set_link(false);
                    break;
                }
            };
            if !self.link.load(Ordering::Relaxed) {
                self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Frames the driver's receive filter turns away are not counted as drops.
            let accepted = match <[u8; 6]>::try_from(self.buf.get(hdr..hdr + 6).unwrap_or(&[])) {
                Ok(dst) => len >= hdr + 14 && lock_filter(&self.filter).accepts(&dst),
                Err(_) => false,
            };
            if !accepted {
                continue;
            }
            if ctx.features & F_GUEST_CSUM == 0 {
                // A driver without offloads gets a zero header (the tap may still say
                // "checksum verified").
                self.buf[..10].fill(0);
            }
            if ctx.features & F_MRG_RXBUF != 0 {
                used |= self.receive_merged(ctx, len);
                continue;
            }
            if hdr == 12 {
                self.buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            }
            let Some(chain) = ctx.pop(RX) else {
                self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if (chain.writable_len() as usize) < len {
                self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
                ctx.add_used(RX, chain.head, 0);
                used = true;
                continue;
            }
            let w = chain.write_at(&ctx.mem, 0, &self.buf[..len]);
            ctx.add_used(RX, chain.head, w as u32);
            self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
            used = true;
        }
        if used {
            ctx.notify(RX);
        }
    }

    /// MRG_RXBUF: spread the `len` bytes in `buf` (header first) over as many receive
    /// buffers as it takes, with their count in the header. A frame that does not fit in
    /// what the driver posted is dropped; the buffers taken wait for the next frame.
    /// Returns whether buffers were used.
    fn receive_merged(&mut self, ctx: &mut Ctx, len: usize) -> bool {
        let mut room = 0usize;
        let mut chains = Vec::new();
        while room < len {
            let Some(c) = self.rx_spare.pop_front().or_else(|| ctx.pop(RX)) else {
                break;
            };
            room += c.writable_len() as usize;
            chains.push(c);
        }
        if room < len {
            self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
            self.rx_spare.extend(chains);
            return false;
        }
        self.buf[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        let mut off = 0;
        for c in chains {
            let take = (c.writable_len() as usize).min(len - off);
            let w = c.write_at(&ctx.mem, 0, &self.buf[off..off + take]);
            ctx.add_used(RX, c.head, w as u32);
            off += take;
        }
        self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Count one frame sent to the backend, or dropped.
    fn count_tx(&self, sent: bool) {
        let counter = if sent {
            &self.stats.tx_frames
        } else {
            &self.stats.tx_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn transmit(&mut self, ctx: &mut Ctx) {
        let hdr = header_len(ctx.features) as u64;
        let mut used = false;
        while let Some(chain) = ctx.pop(TX) {
            let total = chain.readable_len();
            let up = self.link.load(Ordering::Relaxed);
            // Link down, empty or oversized: dropped, the chain is still returned.
            let got = if up && total > hdr && total - hdr <= MAX_FRAME as u64 {
                chain.read_at(&ctx.mem, 0, &mut self.buf[..total as usize])
            } else {
                0
            };
            // The frame is copied: the driver has its buffer back while the backend works.
            ctx.add_used(TX, chain.head, 0);
            used = true;
            if ctx.features & F_CSUM == 0 {
                // Nothing to finish: whatever the driver left in its header.
                self.buf[..10].fill(0);
            }
            let sent = got > hdr as usize
                && self
                    .backend
                    .send_with_header(&self.buf[..got], hdr as usize);
            self.count_tx(sent);
        }
        if used {
            ctx.notify(TX);
        }
    }

    /// Control queue: `class, command, data...` readable, one ack byte writable.
    fn control(&mut self, ctx: &mut Ctx) {
        let mut used = false;
        while let Some(chain) = ctx.pop(CTRL) {
            let n = chain.readable_len().min(4096) as usize;
            let mut cmd = vec![0u8; n];
            let got = chain.read_at(&ctx.mem, 0, &mut cmd);
            let ack = match &cmd[..got] {
                [class, c, data @ ..] if chain.writable_len() >= 1 => {
                    lock_filter(&self.filter).command(*class, *c, data)
                }
                _ => devices::virtio::net::ctrl::ERR,
            };
            let w = chain.write_at(&ctx.mem, 0, &[ack]);
            ctx.add_used(CTRL, chain.head, w as u32);
            used = true;
        }
        if used {
            ctx.notify(CTRL);
        }
    }
}

impl QueueWorker for NetWorker {
    fn process(&mut self, q: usize, ctx: &mut Ctx) {
        match q {
            TX => {
                self.transmit(ctx);
                self.backend.settle();
                // What the backend answered at once (user mode: slirp runs on this thread)
                // goes to the guest now.
                self.receive(ctx);
            }
            CTRL => self.control(ctx),
            _ => self.receive(ctx),
        }
    }

    fn activate(&mut self, ctx: &Ctx) {
        let (hdr, bits) = (header_len(ctx.features), tun_offloads(ctx.features));
        if !self.backend.set_vnet(hdr, bits) {
            crate::report!("troupe: virtio-net: the tap refused offloads {bits:#x}");
        }
    }

    fn reset(&mut self) {
        lock_filter(&self.filter).reset();
        // Buffers of the old ring are no longer the driver's to give.
        self.rx_spare.clear();
    }

    fn wake(&mut self, ctx: &mut Ctx) {
        let frames = std::mem::take(&mut *self.inject.lock().unwrap_or_else(|p| p.into_inner()));
        for f in frames {
            let sent = self.link.load(Ordering::Relaxed) && self.backend.send(&f);
            self.count_tx(sent);
        }
        self.backend.settle();
        self.receive(ctx);
    }

    fn event_fd(&self) -> Option<std::os::fd::RawFd> {
        self.backend.fd()
    }
}
