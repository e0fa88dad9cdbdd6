//! The virtio-blk worker: pops request chains, hands the I/O to the drive's block
//! backend actor, and completes chains as the backend answers (out of order; many
//! requests in flight at once).

use std::collections::{BTreeSet, HashMap};

use crossbeam_channel::{Receiver, Sender};
use devices::block::{BlockCompletion, BlockRequest};
use devices::virtio::blk::{self, BlkConfig, Immediate, Parsed};
use devices::virtio::chain::Chain;

use super::{Ctx, QueueWorker};
use crate::block::{BlockHandle, BlockJob};

pub struct BlkWorker {
    backend: BlockHandle,
    cfg: BlkConfig,
    next_id: u64,
    pending: HashMap<u64, (usize, Chain)>,
    done_tx: Sender<BlockCompletion>,
    done_rx: Receiver<BlockCompletion>,
}

impl BlkWorker {
    pub fn new(backend: BlockHandle, cfg: BlkConfig) -> Self {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Self {
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
                    self.pending.insert(id, (q, chain));
                    let tx = self.done_tx.clone();
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
        if used {
            ctx.notify(q);
        }
    }

    fn wake(&mut self, ctx: &mut Ctx) {
        let mut touched = BTreeSet::new();
        while let Ok(c) = self.done_rx.try_recv() {
            let Some((q, chain)) = self.pending.remove(&c.id) else {
                continue; // answered after a reset: dropped
            };
            let status = blk::status_of(&c.result);
            let data = c.result.as_deref().unwrap_or(&[]);
            let len = blk::complete(&ctx.mem, &chain, data, status);
            ctx.add_used(q, chain.head, len);
            touched.insert(q);
        }
        for q in touched {
            ctx.notify(q);
        }
    }

    fn reset(&mut self) {
        self.pending.clear();
    }
}
