//! The virtio-blk worker: pops request chains, hands the I/O to the drive's block
//! backend actor, and completes chains as the backend answers (out of order; many
//! requests in flight at once).
//!
//! Reads come back as data that the worker copies into the chain, never straight into
//! guest memory: a driver's reset forgets the requests in flight without waiting for them
//! (see `worker.rs`), so a read still running in the kernel must not be able to write
//! guest memory the driver has taken back. Writes still go straight from guest memory
//! (a write forgotten by a reset may reach the image or not, as on a real disk).

use std::collections::{BTreeSet, HashMap};

use crossbeam_channel::{Receiver, Sender};
use devices::block::{BlockCompletion, BlockOp, BlockRequest, HostBuf};
use devices::virtio::blk::{self, BlkConfig, Immediate, Parsed};
use devices::virtio::chain::Chain;

use super::{Ctx, QueueWorker};
use crate::block::{BlockHandle, BlockJob, OwnEngine};

pub struct BlkWorker {
    backend: BlockHandle,
    /// io_uring drives: the worker's own ring (no thread hop to the block actor).
    engine: Option<OwnEngine>,
    cfg: BlkConfig,
    next_id: u64,
    /// Requests at the backend: queue, chain, and for requests that move data straight
    /// to or from guest memory the bytes the device writes into the chain (0 for writes).
    pending: HashMap<u64, (usize, Chain, Option<u64>)>,
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
                    let (op, direct) = match op {
                        // Into the worker's hands, not the guest's (see the module doc).
                        BlockOp::ReadV { offset, bufs } => {
                            let len = HostBuf::total(&bufs) as usize;
                            (BlockOp::Read { offset, len }, None)
                        }
                        op @ BlockOp::WriteV { .. } => (op, Some(0)),
                        op => (op, None),
                    };
                    self.pending.insert(id, (q, chain, direct));
                    let deliver = self.late.deliver(self.done_tx.clone());
                    match &mut self.engine {
                        // Answers come back on this thread (reap, or at once).
                        Some(e) => e.engine.submit(BlockJob {
                            request: BlockRequest { id, op },
                            done: deliver,
                        }),
                        None => {
                            let wake = ctx.wake.clone();
                            self.backend.submit(BlockJob {
                                request: BlockRequest { id, op },
                                done: Box::new(move |c| {
                                    deliver(c);
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
        // Forgotten, not waited for: their completions find no chain and are dropped
        // (none writes guest memory itself: reads bring their data back to `complete`).
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
            let Some((q, chain, direct)) = self.pending.remove(&c.id) else {
                continue; // answered after a reset: dropped
            };
            let status = blk::status_of(&c.result);
            let len = match (&c.result, direct) {
                // The data went straight to guest memory.
                (Ok(_), Some(n)) => blk::complete_direct(&ctx.mem, &chain, n, status),
                (Err(_), Some(_)) => blk::complete_direct(&ctx.mem, &chain, 0, status),
                (r, None) => blk::complete(&ctx.mem, &chain, r.as_deref().unwrap_or(&[]), status),
            };
            ctx.add_used(q, chain.head, len);
            touched.insert(q);
        }
        for q in touched {
            ctx.notify(q);
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
