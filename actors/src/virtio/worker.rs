//! The thread that serves one virtio device's queues: it sleeps in epoll on the queues'
//! ioeventfds (a driver's notify wakes it straight from KVM, never through a vCPU exit)
//! and on a wake eventfd for control messages and backend completions.
//!
//! A driver's reset (status 0 written, on a vCPU) must not park that vCPU on the device's
//! I/O, yet no write to guest memory may follow it: a legacy driver reinitializes the
//! device right after its write and would take a late used-ring entry for its own. The
//! worker therefore touches guest memory only while it holds the device's [`ResetGate`]
//! (for one batch of work: a queue's chains, a round of completions). A reset takes the
//! gate, which waits at most for the batch under way, and moves the gate's epoch on; the
//! worker, at its next batch, sees the new epoch and forgets everything of the old one
//! (the queues, the requests in flight: their completions are dropped when they come).
//!
//! The one write the gate cannot hold back is one a backend makes itself: a read the
//! kernel does straight into the chain's buffers. Such a read holds a [`DirectWrite`]
//! from [`Ctx::direct`] until it is over, and a reset waits for those (only those: a
//! worker sends a read straight to guest memory only while its disk answers quickly, see
//! `blk.rs`, so the wait is a fast disk's latency; only a disk that stalls with such reads
//! under way makes a reset wait longer, as QEMU's drain does).
//!
//! The worker also answers its device's `Save`/`Restore` (it owns the live queues): the
//! transport as a `virtio-pci` section under the device's name, and where the device
//! stands in each ring as a [`QUEUES_KIND`] section `<name>/queues`.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use devices::memory::GuestMemoryMmap;
use devices::virtio::chain::{walk, Chain};
use devices::virtio::features::RING_EVENT_IDX;
use devices::virtio::pci::{QueueConfig, VirtioPci};
use devices::{Section, Snapshot, StateError};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::runtime::{
    fault_point, find_section, once, only_sections, spawn_thread, Registry, Restart, ThreadControl,
    ThreadSpec, Transition,
};

/// The kind of the worker's own section.
pub const QUEUES_KIND: &str = "virtio-queues";
/// Bumped whenever [`QueuesState`] changes shape.
pub const QUEUES_VERSION: u32 = 1;

/// Where the device stands in one live queue (virtio 1.2 §2.7: the driver's avail index
/// and the used index are in guest memory; these are the device's own counters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuePosition {
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

/// The worker's state next to the transport's: the live queues' positions (empty while
/// the driver has not set DRIVER_OK) and whether the device stopped serving them
/// (NEEDS_RESET).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuesState {
    pub queues: Vec<QueuePosition>,
    pub failed: bool,
}

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
    /// The driver reset the device: forget requests in flight, without waiting for them
    /// (a reset runs on the vCPU that wrote the status). Nothing of theirs may reach guest
    /// memory afterwards: a request whose backend writes guest memory itself (rather than
    /// returning data for the worker to copy) holds a [`DirectWrite`] until that write is
    /// over, and the reset waits for those.
    fn reset(&mut self) {}
    /// The VM is stopping: complete every request in flight and report it to the driver
    /// (used ring, interrupt) before returning; nothing may reach guest memory afterwards
    /// until the queues are processed again. Workers with no requests outstanding between
    /// calls (their work is done within `process`/`wake`) have nothing to do.
    fn quiesce(&mut self, _ctx: &mut Ctx) {}
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
    /// DRIVER_OK was set during reset epoch `epoch` (an activation from before a later
    /// reset is stale and ignored).
    Activate {
        queues: Vec<QueueConfig>,
        features: u64,
        epoch: u64,
    },
    /// The device was removed: end the thread (answered just before it ends).
    Stop(Sender<()>),
}

/// Serializes the worker's guest-memory writes against driver and platform resets (see
/// the module doc). Lock order: the gate before the transport model, never the other way.
#[derive(Default)]
pub(crate) struct ResetGate {
    lock: Mutex<()>,
    /// Resets so far; changed only with `lock` held.
    epoch: std::sync::atomic::AtomicU64,
    /// Backend writes into guest memory under way (see the module doc).
    direct: Arc<DirectWrites>,
}

/// Writes into guest memory a backend makes on the worker's behalf (a read the kernel does
/// straight into a chain's buffers), counted so that a reset can wait for them to end.
#[derive(Default)]
pub struct DirectWrites {
    under_way: Mutex<usize>,
    ended: Condvar,
}

/// One [`DirectWrites`] entry: dropped when the backend is done with guest memory (its
/// completion callback drops it, or the backend drops the callback unrun).
pub struct DirectWrite(Arc<DirectWrites>);

impl DirectWrites {
    /// A write starts: hold the token until it is over. Call it within a batch of work
    /// (under the reset gate), so a reset that follows sees it.
    pub fn start(self: &Arc<Self>) -> DirectWrite {
        *lock(&self.under_way) += 1;
        DirectWrite(self.clone())
    }

    /// No write under way.
    pub fn idle(&self) -> bool {
        *lock(&self.under_way) == 0
    }

    /// Wait until no write is under way or `limit` has passed; true if none is.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        let mut n = lock(&self.under_way);
        while *n > 0 {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            n = match self.ended.wait_timeout(n, until - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

impl Drop for DirectWrite {
    fn drop(&mut self) {
        let mut n = lock(&self.0.under_way);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.ended.notify_all();
        }
    }
}

impl ResetGate {
    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }
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
    /// Where a request whose backend writes guest memory itself takes its
    /// [`DirectWrite`].
    pub direct: Arc<DirectWrites>,
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
    tx: Sender<Ctl>,
    pub wake: Arc<EventFd>,
    gate: Arc<ResetGate>,
}

impl WorkerHandle {
    pub fn send(&self, c: Ctl) {
        if self.tx.send(c).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    /// The driver set DRIVER_OK: serve `queues`.
    pub fn activate(&self, queues: Vec<QueueConfig>, features: u64) {
        let epoch = self.gate.epoch();
        self.send(Ctl::Activate {
            queues,
            features,
            epoch,
        });
    }

    /// End the worker thread (its device was removed); returns once it has dropped its
    /// queues and backend, or after 5 s.
    pub fn stop(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Ctl::Stop(tx));
        let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
    }

    /// Stop serving the queues. Returns once the worker is between two batches of work
    /// (microseconds: it never waits for I/O while it holds the gate) and no backend write
    /// into guest memory it started is under way (a fast disk's read, see the module
    /// doc), so nothing more reaches guest memory for them; the worker forgets them and
    /// what is in flight at its next turn. Must not be called with the transport model's
    /// lock held.
    pub fn reset(&self) {
        {
            let _g = lock(&self.gate.lock);
            self.gate
                .epoch
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        let _ = self.wake.write(1);
        // The worker reaps them (it is awake: a paused worker has none under way).
        if !self.gate.direct.wait_idle(Duration::from_secs(1)) {
            tracing::warn!("virtio reset: waiting for reads still writing guest memory");
            while !self.gate.direct.wait_idle(Duration::from_secs(10)) {}
        }
    }
}

/// Enter the gate for one batch of work: a reset made since the last batch is carried out
/// first (the worker forgets its requests, the queues stop).
fn enter<'a>(
    gate: &'a ResetGate,
    seen: &mut u64,
    worker: &mut dyn QueueWorker,
    ctx: &mut Ctx,
) -> std::sync::MutexGuard<'a, ()> {
    let g = lock(&gate.lock);
    let now = gate.epoch();
    if now != *seen {
        *seen = now;
        worker.reset();
        ctx.queues.clear();
        ctx.failed = false;
    }
    g
}

const WAKE_TOKEN: u64 = u64::MAX;
const EXTRA_TOKEN: u64 = u64::MAX - 1;
const CONTROL_TOKEN: u64 = u64::MAX - 2;

/// Add (or take out) the descriptors that bring the guest's work and the backends' data:
/// the queues' notify eventfds and the worker's extra descriptors. A paused worker is out
/// of them, so what arrives meanwhile waits in the eventfds and the backends (the epoll
/// set is level-triggered: left in, they would wake it in a loop).
fn listen(epoll: &Epoll, notify: &[EventFd], extra: &[std::os::fd::RawFd], on: bool) {
    let op = || {
        if on {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        }
    };
    let queues = notify
        .iter()
        .enumerate()
        .map(|(i, fd)| (std::os::fd::AsRawFd::as_raw_fd(fd), i as u64));
    let extra = extra.iter().map(|&fd| (fd, EXTRA_TOKEN));
    for (fd, token) in queues.chain(extra) {
        // A backend closed by netdev_del is already out of the set: nothing to undo.
        let _ = epoll.ctl(op(), fd, EpollEvent::new(EventSet::IN, token));
    }
}

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
    mut control: ThreadControl,
) -> std::io::Result<WorkerHandle> {
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let (tx, rx): (Sender<Ctl>, Receiver<Ctl>) = crossbeam_channel::unbounded();
    let epoll = Epoll::new()?;
    listen(&epoll, &notify, &worker.event_fds(), true);
    epoll.ctl(
        ControlOperation::Add,
        std::os::fd::AsRawFd::as_raw_fd(wake.as_ref()),
        EpollEvent::new(EventSet::IN, WAKE_TOKEN),
    )?;
    epoll.ctl(
        ControlOperation::Add,
        control.fd(),
        EpollEvent::new(EventSet::IN, CONTROL_TOKEN),
    )?;
    let mut ctx = Ctx {
        mem,
        features: 0,
        queues: Vec::new(),
        model,
        wake: wake.clone(),
        name: name.to_string(),
        failed: false,
        direct: Arc::default(),
    };
    let gate = Arc::new(ResetGate {
        direct: ctx.direct.clone(),
        ..ResetGate::default()
    });
    let waker = wake.clone();
    let spec = ThreadSpec::new(name, "virtio-worker", Restart::Never).wake(move || {
        let _ = waker.write(1);
    });
    let g = gate.clone();
    spawn_thread(
        registry,
        spec,
        once(move || {
            let gate = g;
            let mut events = vec![EpollEvent::default(); 64];
            // The reset epoch the worker's queues and requests belong to.
            let mut seen = gate.epoch();
            // Sleeps left before polling again after a poll that found nothing (requests
            // that take longer than POLL_FOR, such as 1 MiB reads, are not spun for).
            let mut cool = 0u32;
            loop {
                if ctx.active() && !control.paused() && worker.busy() {
                    if cool == 0 {
                        let _g = enter(&gate, &mut seen, worker.as_mut(), &mut ctx);
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
                    // One batch: everything this event brings is done under the gate.
                    let _g = enter(&gate, &mut seen, worker.as_mut(), &mut ctx);
                    if token == CONTROL_TOKEN {
                        let alive = control.serve(|t| {
                            match t {
                                Transition::Pause => {
                                    worker.quiesce(&mut ctx);
                                    listen(&epoll, &notify, &worker.event_fds(), false);
                                }
                                Transition::Resume => {
                                    listen(&epoll, &notify, &worker.event_fds(), true);
                                    // Whatever the driver offered or a backend brought
                                    // while paused.
                                    for q in 0..ctx.queues.len() {
                                        worker.process(q, &mut ctx);
                                    }
                                    worker.wake(&mut ctx);
                                }
                                Transition::Save(out) => out.extend(save(&ctx)),
                                Transition::Restore(sections) => {
                                    restore(&mut ctx, worker.as_mut(), sections)?
                                }
                            }
                            Ok(())
                        });
                        if !alive {
                            return;
                        }
                    } else if token == WAKE_TOKEN {
                        let _ = ctx.wake.read();
                        loop {
                            match rx.try_recv() {
                                Ok(Ctl::Activate {
                                    queues,
                                    features,
                                    epoch,
                                }) => {
                                    if epoch != seen {
                                        // The driver reset the device since.
                                        continue;
                                    }
                                    activate(&mut ctx, &queues, features);
                                    worker.activate(&ctx);
                                    for q in 0..ctx.queues.len() {
                                        worker.process(q, &mut ctx);
                                    }
                                }
                                Ok(Ctl::Stop(done)) => {
                                    worker.reset();
                                    ctx.queues.clear();
                                    // Reads still landing in guest memory end first
                                    // (their completions find no request and are
                                    // dropped).
                                    while !ctx.direct.idle() {
                                        worker.wake(&mut ctx);
                                        ctx.direct.wait_idle(Duration::from_millis(1));
                                    }
                                    // The worker (and the backend it owns) goes with the
                                    // thread, before the answer.
                                    drop(worker);
                                    let _ = done.send(());
                                    return;
                                }
                                Err(crossbeam_channel::TryRecvError::Empty) => break,
                                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                            }
                        }
                        // Paused: backend data waits for the resume's wake.
                        if !control.paused() {
                            worker.wake(&mut ctx);
                        }
                    } else if control.paused() {
                        // Taken out of the set at the pause; a stale event from the same
                        // wait.
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
    Ok(WorkerHandle { tx, wake, gate })
}

/// The id of the worker's own section for device `name`.
pub fn queues_section_id(name: &str) -> String {
    format!("{name}/queues")
}

/// The transport's section and the worker's (the worker is paused: nothing in flight).
fn save(ctx: &Ctx) -> [Section; 2] {
    let transport = devices::save_section(&ctx.name, &*lock(&ctx.model));
    let state = QueuesState {
        queues: ctx
            .queues
            .iter()
            .map(|q| QueuePosition {
                next_avail: q.next_avail(),
                next_used: q.next_used(),
                event_idx: q.event_idx_enabled(),
            })
            .collect(),
        failed: ctx.failed,
    };
    let own = Section::new(
        &queues_section_id(&ctx.name),
        QUEUES_KIND,
        QUEUES_VERSION,
        &state,
    )
    .unwrap_or_else(|e| panic!("{QUEUES_KIND}: state does not encode as a section: {e}"));
    [transport, own]
}

/// Put back what [`save`] saved: the transport's registers, then (when the driver had set
/// DRIVER_OK) the live queues as the transport describes them, at the saved positions
/// (`VirtioPciState`'s contract). Both sections are decoded and checked against each
/// other before anything changes.
fn restore(
    ctx: &mut Ctx,
    worker: &mut dyn QueueWorker,
    sections: &[Section],
) -> Result<(), StateError> {
    use devices::virtio::pci::VirtioPciState;
    use devices::virtio::status::{DRIVER_OK, NEEDS_RESET};
    let qid = queues_section_id(&ctx.name);
    only_sections(sections, &[ctx.name.as_str(), qid.as_str()])?;
    let transport: VirtioPciState =
        find_section(sections, &ctx.name)?.decode(VirtioPci::KIND, VirtioPci::VERSION)?;
    let own: QueuesState = find_section(sections, &qid)?.decode(QUEUES_KIND, QUEUES_VERSION)?;
    let live = transport.status & DRIVER_OK != 0;
    let expect = if live { transport.queues.len() } else { 0 };
    if own.queues.len() != expect {
        return Err(StateError::invalid(
            QUEUES_KIND,
            format!(
                "section '{qid}' has {} queue positions but the transport (status {:#x}) has {expect} live queues",
                own.queues.len(),
                transport.status
            ),
        ));
    }
    let (queues, features) = {
        let mut m = lock(&ctx.model);
        m.restore(transport)?;
        (m.queues().to_vec(), m.driver_features())
    };
    worker.reset();
    ctx.queues.clear();
    ctx.failed = false;
    ctx.features = 0;
    if live {
        activate(ctx, &queues, features);
        for (q, pos) in ctx.queues.iter_mut().zip(&own.queues) {
            q.set_next_avail(pos.next_avail);
            q.set_next_used(pos.next_used);
            q.set_event_idx(pos.event_idx);
        }
        worker.activate(ctx);
    }
    // A device that had failed stays failed (its NEEDS_RESET is in the restored status).
    if own.failed || lock(&ctx.model).status() & NEEDS_RESET != 0 {
        ctx.failed = true;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_waits_for_the_backend_writes_under_way_and_only_for_them() {
        let w = Arc::new(DirectWrites::default());
        assert!(w.idle() && w.wait_idle(Duration::ZERO), "none started");
        let (a, b) = (w.start(), w.start());
        assert!(!w.idle());
        assert!(!w.wait_idle(Duration::from_millis(10)), "two under way");
        drop(a);
        assert!(!w.wait_idle(Duration::from_millis(10)), "one under way");
        // The last one ends on another thread (a block thread's completion) while the
        // reset waits.
        let t0 = Instant::now();
        let ender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(b);
        });
        assert!(w.wait_idle(Duration::from_secs(30)), "woken when it ended");
        assert!(t0.elapsed() >= Duration::from_millis(50));
        ender.join().unwrap();
        assert!(w.idle());
    }
}
