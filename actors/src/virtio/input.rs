//! The virtio tablet's worker and its input sink: pointer events from VNC (or the
//! monitor) become evdev events queued for the guest; the worker copies them into the
//! buffers the driver posts on the event queue. The queue of undelivered events is
//! bounded: when the guest does not read them, the oldest are dropped and counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use devices::virtio::input::pointer_events;
use vmm_sys_util::eventfd::EventFd;

use super::{Ctx, QueueWorker};
use crate::bus::lock;
use crate::display::input::{InputEvent, InputSink};

/// Most undelivered events kept.
const MAX_PENDING: usize = 1024;

#[derive(Default)]
struct Pending {
    events: Mutex<VecDeque<[u8; 8]>>,
    dropped: AtomicU64,
}

pub struct TabletWorker {
    pending: Arc<Pending>,
}

/// Where pointer events for the tablet go (cheap to clone).
#[derive(Clone)]
pub struct TabletSink {
    pending: Arc<Pending>,
    wake: Arc<EventFd>,
    buttons: Arc<AtomicU8>,
}

/// A worker and the event queue its sink will feed (make the sink with
/// [`TabletSink::new`] once the host runs, from [`super::VirtioPciHost::waker`]).
pub fn tablet() -> (TabletWorker, PendingHandle) {
    let pending = Arc::new(Pending::default());
    (
        TabletWorker {
            pending: pending.clone(),
        },
        PendingHandle(pending),
    )
}

/// The event queue shared by a worker and its sink.
pub struct PendingHandle(Arc<Pending>);

impl TabletSink {
    pub fn new(pending: &PendingHandle, wake: Arc<EventFd>) -> Self {
        Self {
            pending: pending.0.clone(),
            wake,
            buttons: Arc::new(AtomicU8::new(0)),
        }
    }

    /// Events dropped because the guest was not reading them.
    pub fn dropped(&self) -> u64 {
        self.pending.dropped.load(Ordering::Relaxed)
    }

    /// Queue a pointer position (RFB button mask: 1 left, 2 middle, 4 right, 8/16 wheel).
    pub fn pointer(&self, x: u32, y: u32, width: u32, height: u32, mask: u8) {
        let prev = self.buttons.swap(mask, Ordering::Relaxed);
        let newly = mask & !prev;
        let wheel = if newly & 8 != 0 {
            1
        } else if newly & 16 != 0 {
            -1
        } else {
            0
        };
        let evs = pointer_events(x, y, width, height, mask & 7, prev & 7, wheel);
        {
            let mut q = lock(&self.pending.events);
            for e in evs {
                if q.len() >= MAX_PENDING {
                    q.pop_front();
                    self.pending.dropped.fetch_add(1, Ordering::Relaxed);
                }
                q.push_back(e);
            }
        }
        let _ = self.wake.write(1);
    }
}

impl TabletWorker {
    fn deliver(&mut self, ctx: &mut Ctx) {
        let mut used = false;
        loop {
            if lock(&self.pending.events).is_empty() {
                break;
            }
            let Some(chain) = ctx.pop(0) else { break };
            let Some(e) = lock(&self.pending.events).pop_front() else {
                // Cannot happen (only this thread pops); give the buffer back unused.
                ctx.add_used(0, chain.head, 0);
                break;
            };
            let n = chain.write_at(&ctx.mem, 0, &e);
            ctx.add_used(0, chain.head, n as u32);
            used = true;
        }
        if used {
            ctx.notify(0);
        }
    }
}

impl QueueWorker for TabletWorker {
    fn process(&mut self, q: usize, ctx: &mut Ctx) {
        if q == 1 {
            // Status queue (LEDs): nothing to show on a tablet; return the buffers.
            let mut used = false;
            while let Some(c) = ctx.pop(1) {
                ctx.add_used(1, c.head, 0);
                used = true;
            }
            if used {
                ctx.notify(1);
            }
            return;
        }
        self.deliver(ctx);
    }

    fn wake(&mut self, ctx: &mut Ctx) {
        self.deliver(ctx);
    }
}

/// Keys to the keyboard, the pointer to the tablet: what VNC talks to when a tablet is
/// present.
pub struct KeyboardAndTablet<K: InputSink> {
    pub keyboard: K,
    pub tablet: TabletSink,
}

impl<K: InputSink> InputSink for KeyboardAndTablet<K> {
    fn send(&self, ev: InputEvent) {
        match ev {
            InputEvent::PointerAbs {
                x,
                y,
                width,
                height,
                buttons,
            } => self.tablet.pointer(x, y, width, height, buttons.0),
            other => self.keyboard.send(other),
        }
    }
    fn absolute(&self) -> bool {
        true
    }
}
