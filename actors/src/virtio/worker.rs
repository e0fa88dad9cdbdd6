//! The thread that serves one virtio device's queues: it sleeps in epoll on the queues'
//! ioeventfds (a driver's notify wakes it straight from KVM, never through a vCPU exit)
//! and on a wake eventfd for control messages and backend completions.

use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use devices::virtio::chain::{walk, Chain};
use devices::virtio::features::RING_EVENT_IDX;
use devices::virtio::pci::{QueueConfig, VirtioPci};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::runtime::{fault_point, once, spawn_thread, Registry, Restart, ThreadSpec};

/// How long a worker with requests in flight looks for their completion before sleeping.
const POLL_FOR: std::time::Duration = std::time::Duration::from_micros(50);
/// After a poll that found nothing, the number of sleeps before the worker polls again.
const POLL_COOL: u32 = 8;

/// What a device type does with its queues.
pub trait QueueWorker: Send + 'static {
    /// Queue `q` has new buffers (or may have: after activation every queue is tried).
    fn process(&mut self, q: usize, ctx: &mut Ctx);
    /// The wake eventfd fired: collect completions from backends.
    fn wake(&mut self, _ctx: &mut Ctx) {}
    /// The driver set DRIVER_OK with `ctx.features` negotiated: set up the backend for
    /// them (before any queue is processed).
    fn activate(&mut self, _ctx: &Ctx) {}
    /// The driver reset the device: finish or forget requests in flight (none may touch
    /// guest memory after this returns).
    fn reset(&mut self) {}
    /// Requests are in flight on a backend whose completions come within microseconds (an
    /// io_uring on a local disk): the thread looks for them with [`Self::poll`] for a
    /// moment before it sleeps, saving a wake-up per request.
    fn busy(&mut self) -> bool {
        false
    }
    /// Collect completions that are there now, without blocking; true if there were any.
    fn poll(&mut self, _ctx: &mut Ctx) -> bool {
        false
    }
    /// Descriptors the worker thread should also wait on (an io_uring completion
    /// eventfd, a NIC's tap queues); [`Self::wake`] runs when one is readable.
    fn event_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
}

/// Control messages for the worker thread.
pub(crate) enum Ctl {
    Activate {
        queues: Vec<QueueConfig>,
        features: u64,
    },
    Reset(Sender<()>),
}

/// What a [`QueueWorker`] works with: guest memory, the live queues, and the transport
/// (for interrupts and NEEDS_RESET).
pub struct Ctx {
    pub mem: GuestMemoryMmap,
    /// What the driver negotiated (set at activation).
    pub features: u64,
    queues: Vec<Queue>,
    model: Arc<Mutex<VirtioPci>>,
    /// Write to it to make the worker call [`QueueWorker::wake`].
    pub wake: Arc<EventFd>,
    name: String,
    failed: bool,
}

impl Ctx {
    /// Whether the queues are live (activated and not failed).
    pub fn active(&self) -> bool {
        !self.queues.is_empty() && !self.failed
    }

    /// The next chain offered on queue `q`, if any. A malformed ring fails the device.
    pub fn pop(&mut self, q: usize) -> Option<Chain> {
        if !self.active() {
            return None;
        }
        loop {
            let queue = self.queues.get_mut(q)?;
            if !queue.ready() {
                return None;
            }
            let (table, size) = (queue.desc_table(), queue.size());
            let head = match queue.iter(&self.mem) {
                Ok(mut it) => it.next().map(|c| c.head_index()),
                Err(e) => {
                    self.fail(&format!("queue {q}: {e}"));
                    return None;
                }
            };
            if let Some(head) = head {
                return match walk(&self.mem, table, size, head) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.fail(&format!("queue {q}: descriptor chain at head {head}: {e}"));
                        None
                    }
                };
            }
            match self.queues[q].enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    self.fail(&format!("queue {q}: {e}"));
                    return None;
                }
            }
        }
    }

    /// Return a chain to the driver with `len` bytes written.
    pub fn add_used(&mut self, q: usize, head: u16, len: u32) {
        if !self.active() {
            return;
        }
        if let Err(e) = self.queues[q].add_used(&self.mem, head, len) {
            self.fail(&format!("queue {q}: used ring: {e}"));
        }
    }

    /// Interrupt the driver about queue `q` if it asked for it (EVENT_IDX / NO_INTERRUPT).
    pub fn notify(&mut self, q: usize) {
        if !self.active() {
            return;
        }
        match self.queues[q].needs_notification(&self.mem) {
            Ok(true) => lock(&self.model).signal_queue(q),
            Ok(false) => {}
            Err(e) => self.fail(&format!("queue {q}: {e}")),
        }
    }

    /// Change the device's link status (a NIC whose backend went away) and tell the
    /// driver through a configuration-change interrupt.
    pub fn set_link(&mut self, up: bool) {
        let mut m = lock(&self.model);
        if m.device_mut().set_link(up) {
            m.signal_config();
        }
    }

    /// The driver broke the ring: stop serving it, set NEEDS_RESET, log once.
    pub fn fail(&mut self, why: &str) {
        if self.failed {
            return;
        }
        self.failed = true;
        crate::report!("troupe: {}: {why}; device needs reset", self.name);
        lock(&self.model).set_needs_reset();
    }
}

pub(crate) struct WorkerHandle {
    pub tx: Sender<Ctl>,
    pub wake: Arc<EventFd>,
}

impl WorkerHandle {
    pub fn send(&self, c: Ctl) {
        if self.tx.send(c).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    /// Stop serving the queues; returns once the worker has (so no used-ring write can
    /// follow the driver's reset).
    pub fn reset(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Ctl::Reset(tx));
        let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
    }
}

const WAKE_TOKEN: u64 = u64::MAX;
const EXTRA_TOKEN: u64 = u64::MAX - 1;

/// Start the worker thread, actor `<name>` (thread `troupe-<name>`, shortened).
///
/// Not restartable: the worker owns the live queues (their indices into the guest's
/// rings) and requests in flight on the backend; a rebuilt worker could not know which
/// buffers the guest already got back, so a panic stops the VM in internal-error.
pub(crate) fn spawn(
    registry: &Registry,
    name: &str,
    mem: GuestMemoryMmap,
    model: Arc<Mutex<VirtioPci>>,
    notify: Arc<Vec<EventFd>>,
    mut worker: Box<dyn QueueWorker>,
) -> std::io::Result<WorkerHandle> {
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let (tx, rx): (Sender<Ctl>, Receiver<Ctl>) = crossbeam_channel::unbounded();
    let epoll = Epoll::new()?;
    for (i, fd) in notify.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(fd),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    epoll.ctl(
        ControlOperation::Add,
        std::os::fd::AsRawFd::as_raw_fd(wake.as_ref()),
        EpollEvent::new(EventSet::IN, WAKE_TOKEN),
    )?;
    for fd in worker.event_fds() {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, EXTRA_TOKEN),
        )?;
    }
    let mut ctx = Ctx {
        mem,
        features: 0,
        queues: Vec::new(),
        model,
        wake: wake.clone(),
        name: name.to_string(),
        failed: false,
    };
    let waker = wake.clone();
    let spec = ThreadSpec::new(name, "virtio-worker", Restart::Never).wake(move || {
        let _ = waker.write(1);
    });
    spawn_thread(
        registry,
        spec,
        once(move || {
            let mut events = vec![EpollEvent::default(); 64];
            // Sleeps left before polling again after a poll that found nothing (requests
            // that take longer than POLL_FOR, such as 1 MiB reads, are not spun for).
            let mut cool = 0u32;
            loop {
                if ctx.active() && worker.busy() {
                    if cool == 0 {
                        let until = std::time::Instant::now() + POLL_FOR;
                        let mut found = false;
                        while !found && std::time::Instant::now() < until {
                            std::hint::spin_loop();
                            found = worker.poll(&mut ctx);
                        }
                        if !found {
                            cool = POLL_COOL;
                        }
                    } else {
                        cool -= 1;
                    }
                }
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!("{}: epoll: {e}", ctx.name);
                        return;
                    }
                };
                fault_point();
                for ev in &events[..n] {
                    let token = ev.data();
                    if token == WAKE_TOKEN {
                        let _ = ctx.wake.read();
                        loop {
                            match rx.try_recv() {
                                Ok(Ctl::Activate { queues, features }) => {
                                    activate(&mut ctx, &queues, features);
                                    worker.activate(&ctx);
                                    for q in 0..ctx.queues.len() {
                                        worker.process(q, &mut ctx);
                                    }
                                }
                                Ok(Ctl::Reset(done)) => {
                                    worker.reset();
                                    ctx.queues.clear();
                                    ctx.failed = false;
                                    let _ = done.send(());
                                }
                                Err(crossbeam_channel::TryRecvError::Empty) => break,
                                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                            }
                        }
                        worker.wake(&mut ctx);
                    } else if token == EXTRA_TOKEN {
                        worker.wake(&mut ctx);
                    } else if let Some(fd) = notify.get(token as usize) {
                        let _ = fd.read();
                        worker.process(token as usize, &mut ctx);
                    }
                }
            }
        }),
    )?;
    Ok(WorkerHandle { tx, wake })
}

fn activate(ctx: &mut Ctx, cfgs: &[QueueConfig], features: u64) {
    ctx.failed = false;
    ctx.features = features;
    ctx.queues.clear();
    for (i, c) in cfgs.iter().enumerate() {
        let Ok(mut q) = Queue::new(c.max_size) else {
            continue;
        };
        q.set_size(c.size);
        q.set_desc_table_address(Some(c.desc as u32), Some((c.desc >> 32) as u32));
        q.set_avail_ring_address(Some(c.avail as u32), Some((c.avail >> 32) as u32));
        q.set_used_ring_address(Some(c.used as u32), Some((c.used >> 32) as u32));
        q.set_event_idx(features & RING_EVENT_IDX != 0);
        q.set_ready(c.ready);
        let bad = c.ready && !q.is_valid(&ctx.mem);
        ctx.queues.push(q);
        if bad {
            ctx.fail(&format!("queue {i}: rings outside guest RAM or misaligned"));
        }
    }
}
