//! The IDE host: the PIIX3 IDE model on its legacy ports and bus-master BAR, wired to one
//! block backend per drive. After every guest access the host takes the model's block
//! requests and submits them; completions run on the backend thread, lock the model,
//! finish the command (moving data, raising IRQ 14/15) and submit whatever comes next.
//!
//! Control: paused, the controller answers once no block request is outstanding (the
//! vCPUs are paused first, so none starts; those in flight complete and reach the guest),
//! and saves and restores as the `ide` section under its lock.

use std::sync::{Arc, Mutex};

use devices::ide::{cmd_read, cmd_write, ctl_read, ctl_write, Ide};

use crate::block::{BlockHandle, BlockJob};
use crate::bus::{lock, BusHandler};
use crate::runtime::{reply_channel, Control, ControlHandle, ModelPart, Reply};

/// Block requests submitted and not yet completed, and the pauses waiting for none.
#[derive(Default)]
struct Drain {
    in_flight: usize,
    waiters: Vec<Reply<()>>,
}

/// The controller and its drives' backends.
pub struct IdeHost {
    model: Arc<Mutex<Ide>>,
    backends: [Option<BlockHandle>; 4],
    drain: Mutex<Drain>,
}

impl IdeHost {
    pub fn new(model: Ide, backends: [Option<BlockHandle>; 4]) -> Arc<Self> {
        Arc::new(Self {
            model: Arc::new(Mutex::new(model)),
            backends,
            drain: Mutex::default(),
        })
    }

    /// The controller's control mailbox (see the module doc). Call once.
    pub fn control(self: &Arc<Self>) -> ControlHandle {
        let inner = ControlHandle::models(
            "ide",
            vec![Box::new(ModelPart::new("ide", self.model.clone()))],
            || {},
        );
        let me = self.clone();
        ControlHandle::new("ide", move |c| match c {
            Control::Pause(reply) => {
                // The inner handle answers at once; this one once drained.
                let (tx, _rx) = reply_channel("ide");
                inner.send(Control::Pause(tx))?;
                let mut d = lock(&me.drain);
                if d.in_flight == 0 {
                    reply.send(());
                } else {
                    d.waiters.push(reply);
                }
                Ok(())
            }
            other => inner.send(other),
        })
    }

    pub fn model(&self) -> &Arc<Mutex<Ide>> {
        &self.model
    }

    pub fn backend(&self, n: usize) -> Option<&BlockHandle> {
        self.backends.get(n).and_then(|b| b.as_ref())
    }

    /// Submit what the model asked for (call after releasing the model's lock).
    fn pump(self: &Arc<Self>, requests: Vec<(usize, devices::block::BlockRequest)>) {
        for (n, request) in requests {
            let Some(b) = self.backends[n].as_ref() else {
                // No backend (empty drive): fail the request right away.
                let mut m = lock(&self.model);
                m.complete(
                    n,
                    devices::block::BlockCompletion {
                        id: request.id,
                        result: Err(devices::block::BlockError::NoMedium),
                    },
                );
                let more = m.take_requests();
                drop(m);
                self.pump(more);
                continue;
            };
            let me = self.clone();
            lock(&self.drain).in_flight += 1;
            b.submit(BlockJob {
                request,
                done: Box::new(move |c| {
                    let more = {
                        let mut m = lock(&me.model);
                        m.complete(n, c);
                        m.take_requests()
                    };
                    me.pump(more);
                    let mut d = lock(&me.drain);
                    d.in_flight -= 1;
                    if d.in_flight == 0 {
                        for w in d.waiters.drain(..) {
                            w.send(());
                        }
                    }
                }),
            });
        }
    }

    fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut Ide) -> R) -> R {
        let (r, reqs) = {
            let mut m = lock(&self.model);
            let r = f(&mut m);
            (r, m.take_requests())
        };
        self.pump(reqs);
        r
    }
}

/// A channel's command block (0x1F0/0x170, length 8).
pub struct IdeCommandPort(pub Arc<IdeHost>, pub usize);

impl BusHandler for IdeCommandPort {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        self.0.with(|m| cmd_read(m, self.1, offset, data));
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        self.0.with(|m| cmd_write(m, self.1, offset, data));
    }
}

/// A channel's control block (0x3F6/0x376, length 1).
pub struct IdeControlPort(pub Arc<IdeHost>, pub usize);

impl BusHandler for IdeControlPort {
    fn read(&self, _b: u64, _offset: u64, data: &mut [u8]) {
        self.0.with(|m| ctl_read(m, self.1, data));
    }
    fn write(&self, _b: u64, _offset: u64, data: &[u8]) {
        self.0.with(|m| ctl_write(m, self.1, data));
    }
}

/// The bus-master block (PCI BAR4, 16 bytes).
pub struct IdeBusMasterPort(pub Arc<IdeHost>);

impl BusHandler for IdeBusMasterPort {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        self.0.with(|m| m.bm_read(offset, data));
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        self.0.with(|m| m.bm_write(offset, data));
    }
}
