//! The virtio console's worker: what the guest puts on the transmit queue goes to the
//! chardev; what the chardev receives waits (bounded) until the guest posts receive
//! buffers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use vmm_sys_util::eventfd::EventFd;

use super::{Ctx, QueueWorker};
use crate::bus::lock;
use crate::chardev::FrontendEvent;

/// Input bytes kept while the guest is not reading (older ones are dropped beyond it).
const MAX_INPUT: usize = 64 * 1024;
const RX: usize = 0;
const TX: usize = 1;

pub struct ConsoleWorker {
    sink: Box<dyn devices::ByteSink>,
    input: Arc<Mutex<VecDeque<u8>>>,
}

/// The worker, and the input queue for [`feed_input`].
pub fn console(sink: Box<dyn devices::ByteSink>) -> (ConsoleWorker, Arc<Mutex<VecDeque<u8>>>) {
    let input = Arc::new(Mutex::new(VecDeque::new()));
    (
        ConsoleWorker {
            sink,
            input: input.clone(),
        },
        input,
    )
}

/// Move chardev input into the console's queue and wake its worker (a task on the I/O
/// runtime, one per console, actor `<name>.feed`).
pub fn feed_input(
    rt: &tokio::runtime::Handle,
    registry: &crate::runtime::Registry,
    name: &str,
    mut rx: mpsc::Receiver<FrontendEvent>,
    input: Arc<Mutex<VecDeque<u8>>>,
    wake: Arc<EventFd>,
) {
    let id = format!("{name}.feed");
    crate::runtime::spawn_task(rt, registry, &id, "console-feed", None, async move {
        while let Some(ev) = rx.recv().await {
            if let FrontendEvent::Input(bytes) = ev {
                {
                    let mut q = lock(&input);
                    q.extend(bytes);
                    let over = q.len().saturating_sub(MAX_INPUT);
                    q.drain(..over);
                }
                let _ = wake.write(1);
            }
        }
    });
}

impl ConsoleWorker {
    fn deliver(&mut self, ctx: &mut Ctx) {
        let mut used = false;
        while !lock(&self.input).is_empty() {
            let Some(chain) = ctx.pop(RX) else { break };
            let room = chain.writable_len().min(4096) as usize;
            let bytes: Vec<u8> = {
                let mut q = lock(&self.input);
                let n = room.min(q.len());
                q.drain(..n).collect()
            };
            let n = chain.write_at(&ctx.mem, 0, &bytes);
            ctx.add_used(RX, chain.head, n as u32);
            used = true;
        }
        if used {
            ctx.notify(RX);
        }
    }
}

impl QueueWorker for ConsoleWorker {
    fn process(&mut self, q: usize, ctx: &mut Ctx) {
        if q != TX {
            self.deliver(ctx);
            return;
        }
        let mut used = false;
        while let Some(chain) = ctx.pop(TX) {
            let n = chain.readable_len().min(1 << 20) as usize;
            let mut buf = vec![0u8; n];
            let got = chain.read_at(&ctx.mem, 0, &mut buf);
            self.sink.write_bytes(&buf[..got]);
            ctx.add_used(TX, chain.head, 0);
            used = true;
        }
        if used {
            ctx.notify(TX);
        }
    }

    fn wake(&mut self, ctx: &mut Ctx) {
        self.deliver(ctx);
    }
}
