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
    control_queue, header_len, lock_filter, tun_offloads, SharedRxFilter, F_CSUM, F_GUEST_CSUM,
    F_MQ, F_MRG_RXBUF,
};

use super::{Ctx, QueueWorker};
use crate::net::backend::{Backend, Recv};

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
    /// One backend per queue pair (a multiqueue tap's queues; else one).
    backends: Vec<Backend>,
    /// Queue pairs the driver uses (VQ_PAIRS_SET; 1 until then).
    active: usize,
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
    /// Set (then a wake) by `netdev_del`: the backends go at the next wake, and the NIC
    /// has no peer from then on.
    pub detach: Arc<std::sync::atomic::AtomicBool>,
    /// Receive buffers taken from the ring for a merged frame that did not fit; used first
    /// for the next frame (a ring cannot take a buffer back).
    rx_spare: Vec<std::collections::VecDeque<Chain>>,
}

impl NetWorker {
    /// A worker for `backends`, one per queue pair the device has.
    pub fn new(backends: Vec<Backend>, filter: SharedRxFilter) -> Self {
        Self {
            filter,
            inject: Arc::default(),
            detach: Arc::default(),
            rx_spare: backends.iter().map(|_| Default::default()).collect(),
            active: 1,
            backends,
            link: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            error: Arc::default(),
            buf: vec![0u8; MAX_FRAME + 12],
            stats: Arc::default(),
        }
    }

    /// Frames from every pair's backend to its receive queue.
    fn receive(&mut self, ctx: &mut Ctx) {
        for pair in 0..self.active {
            self.receive_pair(ctx, pair);
        }
    }

    fn receive_pair(&mut self, ctx: &mut Ctx, pair: usize) {
        let rx = 2 * pair;
        let hdr = header_len(ctx.features);
        let mut used = false;
        self.backends[pair].ack();
        loop {
            let len = match self.backends[pair].recv_with_header(&mut self.buf, hdr) {
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
                used |= self.receive_merged(ctx, pair, len);
                continue;
            }
            if hdr == 12 {
                self.buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            }
            let Some(chain) = ctx.pop(rx) else {
                self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if (chain.writable_len() as usize) < len {
                self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
                ctx.add_used(rx, chain.head, 0);
                used = true;
                continue;
            }
            let w = chain.write_at(&ctx.mem, 0, &self.buf[..len]);
            ctx.add_used(rx, chain.head, w as u32);
            self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
            used = true;
        }
        if used {
            ctx.notify(rx);
        }
    }

    /// MRG_RXBUF: spread the `len` bytes in `buf` (header first) over as many receive
    /// buffers as it takes, with their count in the header. A frame that does not fit in
    /// what the driver posted is dropped; the buffers taken wait for the next frame.
    /// Returns whether buffers were used.
    fn receive_merged(&mut self, ctx: &mut Ctx, pair: usize, len: usize) -> bool {
        let rx = 2 * pair;
        let mut room = 0usize;
        let mut chains = Vec::new();
        while room < len {
            let Some(c) = self.rx_spare[pair].pop_front().or_else(|| ctx.pop(rx)) else {
                break;
            };
            room += c.writable_len() as usize;
            chains.push(c);
        }
        if room < len {
            self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
            self.rx_spare[pair].extend(chains);
            return false;
        }
        self.buf[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        let mut off = 0;
        for c in chains {
            let take = (c.writable_len() as usize).min(len - off);
            let w = c.write_at(&ctx.mem, 0, &self.buf[off..off + take]);
            ctx.add_used(rx, c.head, w as u32);
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

    /// The transmit queue of `pair` to its backend.
    fn transmit(&mut self, ctx: &mut Ctx, pair: usize) {
        let tx = 2 * pair + 1;
        let hdr = header_len(ctx.features) as u64;
        let mut used = false;
        while let Some(chain) = ctx.pop(tx) {
            let total = chain.readable_len();
            let up = self.link.load(Ordering::Relaxed);
            // Link down, empty or oversized: dropped, the chain is still returned.
            let got = if up && total > hdr && total - hdr <= MAX_FRAME as u64 {
                chain.read_at(&ctx.mem, 0, &mut self.buf[..total as usize])
            } else {
                0
            };
            // The frame is copied: the driver has its buffer back while the backend works.
            ctx.add_used(tx, chain.head, 0);
            used = true;
            if ctx.features & F_CSUM == 0 {
                // Nothing to finish: whatever the driver left in its header.
                self.buf[..10].fill(0);
            }
            let sent = got > hdr as usize
                && self.backends[pair].send_with_header(&self.buf[..got], hdr as usize);
            self.count_tx(sent);
        }
        if used {
            ctx.notify(tx);
        }
    }

    /// Use `n` queue pairs: the others' tap queues are detached (the kernel steers nothing
    /// to them). False if `n` is not a count the device has.
    fn set_pairs(&mut self, n: usize) -> bool {
        if n == 0 || n > self.backends.len() {
            return false;
        }
        self.active = n;
        // Only a multiqueue tap has queues to attach and detach.
        if self.backends.len() > 1 {
            for (i, b) in self.backends.iter().enumerate() {
                b.set_queue_enabled(i < n);
            }
        }
        true
    }

    /// Control queue: `class, command, data...` readable, one ack byte writable.
    fn control(&mut self, ctx: &mut Ctx, ctrl: usize) {
        use devices::virtio::net::ctrl;
        let mut used = false;
        while let Some(chain) = ctx.pop(ctrl) {
            let n = chain.readable_len().min(4096) as usize;
            let mut cmd = vec![0u8; n];
            let got = chain.read_at(&ctx.mem, 0, &mut cmd);
            let mq = ctx.features & F_MQ != 0;
            let ack = match &cmd[..got] {
                [ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, lo, hi] if mq => {
                    if self.set_pairs(usize::from(u16::from_le_bytes([*lo, *hi]))) {
                        ctrl::OK
                    } else {
                        ctrl::ERR
                    }
                }
                [class, c, data @ ..] if chain.writable_len() >= 1 => {
                    lock_filter(&self.filter).command(*class, *c, data)
                }
                _ => ctrl::ERR,
            };
            let w = chain.write_at(&ctx.mem, 0, &[ack]);
            ctx.add_used(ctrl, chain.head, w as u32);
            used = true;
        }
        if used {
            ctx.notify(ctrl);
        }
    }
}

impl QueueWorker for NetWorker {
    fn process(&mut self, q: usize, ctx: &mut Ctx) {
        let pairs = self.backends.len() as u16;
        let ctrl = control_queue(ctx.features, pairs);
        if q == ctrl {
            self.control(ctx, ctrl);
        } else if q % 2 == 1 && q / 2 < self.active {
            let pair = q / 2;
            self.transmit(ctx, pair);
            // What a user-mode backend answered at once (slirp runs on this thread) goes
            // to the guest now; a tap's answers wake the thread through its descriptor.
            if self.backends[pair].settle() {
                self.receive_pair(ctx, pair);
            }
        } else if q.is_multiple_of(2) && q / 2 < self.active {
            self.receive_pair(ctx, q / 2);
        }
    }

    fn activate(&mut self, ctx: &Ctx) {
        let (hdr, bits) = (header_len(ctx.features), tun_offloads(ctx.features));
        for b in &mut self.backends {
            if !b.set_vnet(hdr, bits) {
                crate::report!("troupe: virtio-net: the tap refused offloads {bits:#x}");
            }
        }
        // Until the driver asks for more (VQ_PAIRS_SET), one pair.
        self.set_pairs(1);
    }

    fn reset(&mut self) {
        lock_filter(&self.filter).reset();
        // Buffers of the old ring are no longer the driver's to give.
        self.rx_spare.iter_mut().for_each(|s| s.clear());
        self.set_pairs(1);
    }

    fn wake(&mut self, ctx: &mut Ctx) {
        if self.detach.swap(false, Ordering::Relaxed) {
            // Dropping them closes the taps (and their epoll entries), ends a slirp
            // instance or a socket connection.
            self.backends.iter_mut().for_each(|b| *b = Backend::Gone);
        }
        let frames = std::mem::take(&mut *self.inject.lock().unwrap_or_else(|p| p.into_inner()));
        for f in frames {
            let sent = self.link.load(Ordering::Relaxed) && self.backends[0].send(&f);
            self.count_tx(sent);
        }
        self.backends[0].settle();
        self.receive(ctx);
    }

    fn event_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.backends.iter().filter_map(Backend::fd).collect()
    }
}
