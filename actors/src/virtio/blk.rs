//! The virtio-blk worker: pops request chains, hands the I/O to the drive's block
//! backend actor, and completes chains as the backend answers (out of order; many
//! requests in flight at once).
//!
//! A driver's reset forgets the requests in flight (see `worker.rs`) and must not park
//! its vCPU on a slow disk, yet no read may land in guest memory after it. So where a
//! read lands depends on how fast the disk has been answering ([`ReadPath`]):
//! - straight into the chain's guest buffers (no copy), while reads take at most
//!   [`ReadPath::FAST`]: the read holds a [`DirectWrite`] until the kernel is done with
//!   guest memory, and a reset waits for it, which is a fast disk's latency (unless the
//!   disk stalls just then);
//! - into a bounce buffer of the worker's ([`Bounce`]), copied into the chain when the
//!   read completes, when the disk has been slow (and for the first reads, until it has
//!   shown it is fast): a read still running in the kernel at a reset then writes only
//!   the bounce buffer, so the reset does not wait for it. The bounce buffers are aligned
//!   for O_DIRECT and reused ([`BouncePool`]), so such a read costs one copy and no
//!   allocation.
//!
//! Writes go straight from guest memory (a write forgotten by a reset may reach the image
//! or not, as on a real disk).

use std::alloc::Layout;
use std::collections::{BTreeSet, HashMap};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use devices::block::{BlockCompletion, BlockOp, BlockRequest, HostBuf};
use devices::virtio::blk::{self, BlkConfig, Immediate, Parsed};
use devices::virtio::chain::Chain;

use super::worker::DirectWrite;
use super::{Ctx, QueueWorker};
use crate::block::{BlockHandle, BlockJob, OwnEngine};

pub struct BlkWorker {
    backend: BlockHandle,
    /// io_uring drives: the worker's own ring (no thread hop to the block actor).
    engine: Option<OwnEngine>,
    cfg: BlkConfig,
    next_id: u64,
    /// Requests at the backend.
    pending: HashMap<u64, Pending>,
    /// Where reads land, by how fast the disk answers.
    path: ReadPath,
    /// Bounce buffers of completed reads, for the next ones.
    bounces: BouncePool,
    done_tx: Sender<BlockCompletion>,
    done_rx: Receiver<BlockCompletion>,
    /// Test-only late completions (see [`late`]).
    late: late::Late,
}

impl BlkWorker {
    pub fn new(backend: BlockHandle, cfg: BlkConfig) -> Self {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Self {
            engine: backend.own_engine(),
            backend,
            cfg,
            next_id: 0,
            pending: HashMap::new(),
            path: ReadPath::default(),
            bounces: BouncePool::default(),
            done_tx,
            done_rx,
            late: late::Late::from_env(),
        }
    }
}

impl QueueWorker for BlkWorker {
    fn process(&mut self, q: usize, ctx: &mut Ctx) {
        let mut used = false;
        while let Some(chain) = ctx.pop(q) {
            match blk::parse(&ctx.mem, &chain, &self.cfg) {
                Err(e) => {
                    ctx.fail(&format!("queue {q}: {e}"));
                    return;
                }
                Ok(Parsed::Immediate(i)) => {
                    let len = match i {
                        Immediate::Id(id) => blk::complete(&ctx.mem, &chain, &id, blk::S_OK),
                        Immediate::Status(s) => blk::complete(&ctx.mem, &chain, &[], s),
                    };
                    ctx.add_used(q, chain.head, len);
                    used = true;
                }
                Ok(Parsed::Backend(op)) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    // The request's completion holds what must outlive the I/O even if a
                    // reset forgets the request: the bounce buffer a read lands in, or the
                    // token a reset waits for while a read lands in guest memory.
                    let mut keep = None;
                    let mut direct = None;
                    let (op, landing) = match op {
                        BlockOp::ReadV { offset, bufs } if self.path.direct() => {
                            direct = Some(ctx.direct.start());
                            let len = HostBuf::total(&bufs);
                            (BlockOp::ReadV { offset, bufs }, Landing::Read(len))
                        }
                        // Into the worker's hands, not the guest's (see the module doc).
                        BlockOp::ReadV { offset, bufs } => {
                            let len = HostBuf::total(&bufs) as usize;
                            let b = Arc::new(self.bounces.take(len));
                            let op = BlockOp::ReadV {
                                offset,
                                bufs: vec![b.host_buf(len)],
                            };
                            keep = Some(b.clone());
                            (op, Landing::Bounce(b, bufs))
                        }
                        op @ BlockOp::WriteV { .. } => (op, Landing::Direct),
                        op => (op, Landing::Answer),
                    };
                    self.pending.insert(
                        id,
                        Pending {
                            q,
                            chain,
                            landing,
                            started: Instant::now(),
                        },
                    );
                    let deliver = self.late.deliver(self.done_tx.clone());
                    // The I/O is over when the backend answers: the buffer is let go
                    // first, so the worker finds its own handle the last one and reuses it,
                    // and so is the read's hold on guest memory.
                    let answer = move |c| {
                        drop(keep);
                        drop::<Option<DirectWrite>>(direct);
                        deliver(c);
                    };
                    match &mut self.engine {
                        // Answers come back on this thread (reap, or at once).
                        Some(e) => e.engine.submit(BlockJob {
                            request: BlockRequest { id, op },
                            done: Box::new(answer),
                        }),
                        None => {
                            let wake = ctx.wake.clone();
                            self.backend.submit(BlockJob {
                                request: BlockRequest { id, op },
                                done: Box::new(move |c| {
                                    answer(c);
                                    let _ = wake.write(1);
                                }),
                            });
                        }
                    }
                }
            }
        }
        if used {
            ctx.notify(q);
        }
        self.complete(ctx);
    }

    fn wake(&mut self, ctx: &mut Ctx) {
        if let Some(e) = &mut self.engine {
            e.engine.reap();
        }
        self.late.release(&self.done_tx);
        self.complete(ctx);
    }

    fn reset(&mut self) {
        // Forgotten, not waited for here: their completions find no chain and are dropped
        // (a bounced read writes only its buffer, which lives on in its completion until
        // the read is over; the reset itself waits for the reads landing in guest memory).
        self.pending.clear();
    }

    fn quiesce(&mut self, ctx: &mut Ctx) {
        // Every request at the backend completes and is reported to the driver now, so
        // nothing is left to write guest memory or the image while the VM is stopped.
        let started = std::time::Instant::now();
        let mut warned = false;
        while !self.pending.is_empty() {
            if let Some(e) = &mut self.engine {
                e.engine.reap();
            }
            self.late.release(&self.done_tx);
            self.complete(ctx);
            if self.pending.is_empty() {
                break;
            }
            if !warned && started.elapsed() > std::time::Duration::from_secs(10) {
                warned = true;
                crate::report!(
                    "troupe: {} requests still in flight after 10 s; waiting for them to stop the VM",
                    self.pending.len()
                );
            }
            match self.engine.as_ref().map(|e| e.engine.completion_fd()) {
                Some(fd) => {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut pfd, 1, 1) };
                }
                None => {
                    if let Ok(c) = self
                        .done_rx
                        .recv_timeout(std::time::Duration::from_millis(1))
                    {
                        // Put it back for complete() to answer in order.
                        let _ = self.done_tx.send(c);
                    }
                }
            }
        }
        // Reads a reset forgot that still land in guest memory (the reset waits for them
        // too; this covers a pause that comes first).
        while !ctx.direct.idle() {
            if let Some(e) = &mut self.engine {
                e.engine.reap();
            }
            self.complete(ctx);
            ctx.direct.wait_idle(std::time::Duration::from_millis(1));
        }
    }

    fn busy(&mut self) -> bool {
        self.engine
            .as_ref()
            .is_some_and(|e| e.engine.small_in_flight())
    }

    fn poll(&mut self, ctx: &mut Ctx) -> bool {
        let ready = self.engine.as_mut().is_some_and(|e| e.engine.ready());
        if ready {
            self.wake(ctx);
        }
        ready
    }

    fn event_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.engine
            .iter()
            .map(|e| e.engine.completion_fd())
            .chain(self.late.fd())
            .collect()
    }
}

impl BlkWorker {
    /// Answer the chains whose requests finished.
    fn complete(&mut self, ctx: &mut Ctx) {
        let mut touched = BTreeSet::new();
        while let Ok(c) = self.done_rx.try_recv() {
            let Some(Pending {
                q,
                chain,
                landing,
                started,
            }) = self.pending.remove(&c.id)
            else {
                continue; // answered after a reset: dropped
            };
            let status = blk::status_of(&c.result);
            let len = match (&c.result, landing) {
                // A write's data came straight from guest memory.
                (_, Landing::Direct) => blk::complete_direct(&ctx.mem, &chain, 0, status),
                (r, Landing::Read(n)) => {
                    self.path.answered(started.elapsed());
                    let n = if r.is_ok() {
                        // Marked again now that the data is there (the parse marked
                        // them before; a migration pass may have taken the mark since).
                        for (gpa, len) in chain.ranges(true, 0, n) {
                            devices::memory::mark_dirty(&ctx.mem, gpa, len);
                        }
                        n
                    } else {
                        0
                    };
                    blk::complete_direct(&ctx.mem, &chain, n, status)
                }
                (r, Landing::Bounce(b, bufs)) => {
                    self.path.answered(started.elapsed());
                    // The read is over (its completion is here): the buffer is ours.
                    let n = if r.is_ok() {
                        b.copy_to(&bufs);
                        // Marked again now that the data is there (the parse marked
                        // them before; a migration pass may have taken the mark since).
                        for (gpa, len) in chain.ranges(true, 0, HostBuf::total(&bufs)) {
                            devices::memory::mark_dirty(&ctx.mem, gpa, len);
                        }
                        HostBuf::total(&bufs)
                    } else {
                        0
                    };
                    self.bounces.give(b);
                    blk::complete_direct(&ctx.mem, &chain, n, status)
                }
                (r, Landing::Answer) => {
                    blk::complete(&ctx.mem, &chain, r.as_deref().unwrap_or(&[]), status)
                }
            };
            ctx.add_used(q, chain.head, len);
            touched.insert(q);
        }
        for q in touched {
            ctx.notify(q);
        }
    }
}

/// A request at the backend.
struct Pending {
    q: usize,
    chain: Chain,
    landing: Landing,
    /// When it went to the backend (how fast the disk is, for [`ReadPath`]).
    started: Instant,
}

/// Where reads land: straight in guest memory while the disk answers within
/// [`ReadPath::FAST`], in a bounce buffer otherwise (see the module doc). A drive starts
/// out bounced for its first [`ReadPath::TRIAL`] reads, and a read slower than `FAST`
/// bounces the next [`ReadPath::AFTER_SLOW`] ones.
struct ReadPath {
    /// Reads still to bounce.
    bounce: u32,
}

impl Default for ReadPath {
    fn default() -> Self {
        Self {
            bounce: Self::TRIAL,
        }
    }
}

impl ReadPath {
    /// The longest a read may take and the next ones still land in guest memory: what a
    /// reset may have to wait for.
    const FAST: Duration = Duration::from_millis(50);
    /// Reads bounced at first.
    const TRIAL: u32 = 8;
    /// Reads bounced after a slow one.
    const AFTER_SLOW: u32 = 64;

    /// Whether the next read lands in guest memory.
    fn direct(&self) -> bool {
        self.bounce == 0
    }

    /// A read was answered `took` after it went to the backend.
    fn answered(&mut self, took: Duration) {
        self.bounce = if took > Self::FAST {
            Self::AFTER_SLOW
        } else {
            self.bounce.saturating_sub(1)
        };
    }
}

/// Where a request's data is when it completes.
enum Landing {
    /// Moved straight from guest memory (a write): only the status goes in the chain.
    Direct,
    /// Read straight into the chain's guest buffers, this many bytes.
    Read(u64),
    /// In the bounce buffer, to copy to the chain's guest buffers `.1` (a read: the
    /// buffers the parse found, each inside one RAM region, in order).
    Bounce(Arc<Bounce>, Vec<HostBuf>),
    /// In the backend's answer (the few requests that return data, like GET_ID's).
    Answer,
}

/// A read's landing place: zeroed heap memory aligned for O_DIRECT (4 KiB), owned by the
/// worker and the request's completion callback until the read is over.
struct Bounce {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: plain heap memory; the kernel or a backend thread writes it only while a read
// is in flight, and the worker reads it only after that read's completion (`bytes`).
unsafe impl Send for Bounce {}
// SAFETY: shared only as above: `&Bounce` reads its address and capacity, and its bytes
// only once nothing writes them.
unsafe impl Sync for Bounce {}

impl Bounce {
    /// The size of the buffer for `len` bytes: a power of two, 4 KiB or more, so
    /// buffers are reused by reads of about the same size.
    fn size_for(len: usize) -> usize {
        len.max(4096).next_power_of_two()
    }

    /// [`Bounce::size_for`] `len` bytes.
    fn new(len: usize) -> Self {
        let size = Self::size_for(len);
        let layout = Layout::from_size_align(size, 4096).unwrap_or_else(|_| Layout::new::<u8>());
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self { ptr, layout }
    }

    fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// The first `len` bytes, for the backend to read into.
    fn host_buf(&self, len: usize) -> HostBuf {
        HostBuf {
            addr: self.ptr.as_ptr() as usize,
            len: len.min(self.capacity()),
        }
    }

    /// Copy the buffer's first bytes out to the guest buffers `to`, in order. Call only
    /// once the read into it has completed.
    fn copy_to(&self, to: &[HostBuf]) {
        let mut at = 0;
        for b in to {
            let n = b.len.min(self.capacity() - at);
            // SAFETY: the source is this buffer's initialised memory (zeroed at
            // allocation; `at + n` stays within its capacity) and no read into it is in
            // flight any more (the caller has its completion). The destination is guest
            // RAM the parse checked, mapped for the VM's life, which the guest may change
            // meanwhile as with any DMA; the two never overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), b.addr as *mut u8, n)
            };
            at += n;
        }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Bounce buffers free for the next reads, at most [`BouncePool::KEPT`] bytes of them.
#[derive(Default)]
struct BouncePool {
    free: Vec<Bounce>,
    kept: usize,
}

impl BouncePool {
    /// What the pool keeps; buffers beyond that are freed as they come back.
    const KEPT: usize = 16 << 20;

    /// A free buffer of the size for `len` bytes, or a new one.
    fn take(&mut self, len: usize) -> Bounce {
        let size = Bounce::size_for(len);
        match self.free.iter().position(|b| b.capacity() == size) {
            Some(i) => {
                let b = self.free.swap_remove(i);
                self.kept -= b.capacity();
                b
            }
            None => Bounce::new(len),
        }
    }

    /// Back from a completed read: kept if no one else holds it and there is room.
    fn give(&mut self, b: Arc<Bounce>) {
        if let Ok(b) = Arc::try_unwrap(b) {
            if self.kept + b.capacity() <= Self::KEPT {
                self.kept += b.capacity();
                self.free.push(b);
            }
        }
    }
}

/// With the `fault-injection` feature, `TROUPE_FAULT_BLOCK_LATE_MS=N` in the environment
/// holds every virtio-blk completion for N ms after the backend gave it (a slow disk, seen
/// from the guest): tests reset the device while a request is in flight. Without the
/// feature (release builds) completions go straight to the worker.
mod late {
    #[cfg(not(feature = "fault-injection"))]
    use crossbeam_channel::Sender;
    use devices::block::BlockCompletion;

    /// Where a backend hands a completion.
    pub type Deliver = Box<dyn Fn(BlockCompletion) + Send>;

    #[cfg(not(feature = "fault-injection"))]
    pub struct Late;

    #[cfg(not(feature = "fault-injection"))]
    impl Late {
        pub fn from_env() -> Self {
            Late
        }
        pub fn deliver(&self, tx: Sender<BlockCompletion>) -> Deliver {
            Box::new(move |c| {
                let _ = tx.send(c);
            })
        }
        pub fn release(&self, _tx: &Sender<BlockCompletion>) {}
        pub fn fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
    }

    #[cfg(feature = "fault-injection")]
    pub use enabled::Late;

    #[cfg(feature = "fault-injection")]
    mod enabled {
        use std::os::fd::AsRawFd;
        use std::sync::{Arc, Mutex};
        use std::time::{Duration, Instant};

        use crossbeam_channel::Sender;
        use devices::block::BlockCompletion;
        use vmm_sys_util::timerfd::TimerFd;

        use super::Deliver;

        struct Held {
            queue: Vec<(Instant, BlockCompletion)>,
            timer: TimerFd,
        }

        pub struct Late(Option<(Duration, Arc<Mutex<Held>>)>);

        fn held(h: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
            h.lock().unwrap_or_else(|p| p.into_inner())
        }

        impl Late {
            pub fn from_env() -> Self {
                let ms = std::env::var("TROUPE_FAULT_BLOCK_LATE_MS")
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                match (ms, TimerFd::new()) {
                    (Some(ms), Ok(timer)) => Late(Some((
                        Duration::from_millis(ms),
                        Arc::new(Mutex::new(Held {
                            queue: Vec::new(),
                            timer,
                        })),
                    ))),
                    _ => Late(None),
                }
            }

            /// Straight to `tx`, or held until due (the timer wakes the worker).
            pub fn deliver(&self, tx: Sender<BlockCompletion>) -> Deliver {
                let Some((delay, h)) = &self.0 else {
                    return Box::new(move |c| {
                        let _ = tx.send(c);
                    });
                };
                let (delay, h) = (*delay, h.clone());
                Box::new(move |c| {
                    let mut h = held(&h);
                    h.queue.push((Instant::now() + delay, c));
                    if h.queue.len() == 1 {
                        let _ = h.timer.reset(delay, None);
                    }
                })
            }

            /// Hand the completions that are due to `tx`; re-arm for the next.
            pub fn release(&self, tx: &Sender<BlockCompletion>) {
                let Some((_, h)) = &self.0 else {
                    return;
                };
                let mut h = held(h);
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) =
                    h.queue.drain(..).partition(|(at, _)| *at <= now);
                h.queue = later;
                for (_, c) in due {
                    let _ = tx.send(c);
                }
                // Disarmed (so the level-triggered epoll rests) unless more are held.
                let next = h.queue.iter().map(|(at, _)| *at).min();
                let _ = match next {
                    Some(at) => h
                        .timer
                        .reset((at - now).max(Duration::from_millis(1)), None),
                    None => h.timer.clear(),
                };
            }

            pub fn fd(&self) -> Option<std::os::fd::RawFd> {
                self.0.as_ref().map(|(_, h)| held(h).timer.as_raw_fd())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounce_buffer_is_aligned_for_o_direct_and_copied_out_in_order() {
        let b = Bounce::new(3000);
        assert_eq!(b.capacity(), 4096);
        let hb = b.host_buf(3000);
        assert_eq!((hb.addr % 4096, hb.len), (0, 3000));
        // A backend's read lands in it.
        // SAFETY: test-only: nothing else uses the buffer.
        unsafe { std::ptr::copy_nonoverlapping(b"abcdefg".as_ptr(), hb.addr as *mut u8, 7) };
        let (mut x, mut y) = ([0u8; 3], [0u8; 4]);
        b.copy_to(&[
            HostBuf {
                addr: x.as_mut_ptr() as usize,
                len: 3,
            },
            HostBuf {
                addr: y.as_mut_ptr() as usize,
                len: 4,
            },
        ]);
        assert_eq!((&x, &y), (b"abc", b"defg"));
    }

    #[test]
    fn the_pool_reuses_a_returned_buffer_unless_a_completion_still_holds_it() {
        let mut pool = BouncePool::default();
        let a = Arc::new(pool.take(1 << 20));
        let held = a.clone(); // a completion callback not yet run
        pool.give(a);
        assert_eq!(pool.kept, 0, "a buffer the completion holds is not reused");
        drop(held);
        let a = Arc::new(pool.take(1 << 20));
        let addr = a.host_buf(1).addr;
        pool.give(a);
        assert_eq!(pool.kept, 1 << 20);
        // A buffer of the read's size is taken: a 4 KiB read leaves the 1 MiB one.
        let small = pool.take(4096);
        assert_eq!(small.capacity(), 4096);
        assert_eq!(pool.kept, 1 << 20);
        let b = pool.take(1000 << 10);
        assert_eq!(b.host_buf(1).addr, addr, "the returned buffer is reused");
        assert_eq!(pool.kept, 0);
    }

    #[test]
    fn reads_land_in_guest_memory_only_while_the_disk_answers_fast() {
        let mut p = ReadPath::default();
        // A new drive's first reads are bounced until it has shown it is fast.
        for _ in 0..ReadPath::TRIAL {
            assert!(!p.direct());
            p.answered(Duration::from_micros(300));
        }
        assert!(p.direct());
        p.answered(ReadPath::FAST);
        assert!(p.direct(), "FAST itself is fast enough");
        // One slow read: the next ones bounce, so a reset does not wait for such a disk.
        p.answered(ReadPath::FAST + Duration::from_millis(1));
        for _ in 0..ReadPath::AFTER_SLOW {
            assert!(!p.direct());
            p.answered(Duration::from_millis(1));
        }
        assert!(p.direct());
        // Slow again while bouncing: the count starts over.
        p.answered(Duration::from_secs(2));
        for _ in 0..ReadPath::AFTER_SLOW - 1 {
            p.answered(Duration::from_millis(1));
        }
        p.answered(Duration::from_secs(2));
        assert!(!p.direct());
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit() {
        let mut pool = BouncePool::default();
        let bufs: Vec<_> = (0..BouncePool::KEPT / (1 << 20) + 4)
            .map(|_| Arc::new(pool.take(1 << 20)))
            .collect();
        for b in bufs {
            pool.give(b);
        }
        assert_eq!(pool.kept, BouncePool::KEPT);
        assert_eq!(pool.free.len(), BouncePool::KEPT >> 20);
    }
}
