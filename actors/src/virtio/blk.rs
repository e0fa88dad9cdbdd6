//! The virtio-blk worker: pops request chains, hands the I/O to the drive's block
//! backend actor, and completes chains as the backend answers (out of order; many
//! requests in flight at once).

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
                    let direct = match &op {
                        BlockOp::ReadV { bufs, .. } => Some(HostBuf::total(bufs)),
                        BlockOp::WriteV { .. } => Some(0),
                        _ => None,
                    };
                    self.pending.insert(id, (q, chain, direct));
                    let tx = self.done_tx.clone();
                    match &mut self.engine {
                        // Answers come back on this thread (reap, or at once).
                        Some(e) => e.engine.submit(BlockJob {
                            request: BlockRequest { id, op },
                            done: Box::new(move |c| {
                                let _ = tx.send(c);
                            }),
                        }),
                        None => {
                            let wake = ctx.wake.clone();
                            self.backend.submit(BlockJob {
                                request: BlockRequest { id, op },
                                done: Box::new(move |c| {
                                    let _ = tx.send(c);
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
        self.complete(ctx);
    }

    fn reset(&mut self) {
        // Requests in flight may still write guest memory: wait for them (as QEMU drains).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.pending.is_empty() && std::time::Instant::now() < deadline {
            if let Some(e) = &mut self.engine {
                e.engine.reap();
            }
            match self
                .done_rx
                .recv_timeout(std::time::Duration::from_millis(1))
            {
                Ok(c) => {
                    self.pending.remove(&c.id);
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
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
