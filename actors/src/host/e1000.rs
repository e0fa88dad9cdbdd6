//! The e1000 host: the model (`devices::e1000`) on the PCI bus under its mutex, and a
//! backend thread (`troupe-<name>`) that moves frames both ways.
//!
//! Transmit: the guest writes TDT → vCPU exit → [`E1000Host`]'s BAR handler runs the
//! model's transmit on the vCPU thread, which returns the frames; with the model unlocked,
//! they are posted (`try_send`) to a bounded queue ([`TxQueue`]) and the backend thread is
//! woken by its eventfd. The vCPU never waits on the backend: a full queue drops the frame
//! and counts it (`info network`'s dropped line), as a real NIC does when its FIFO
//! overflows. The backend thread writes the frames to the tap or slirp.
//!
//! Receive: the backend's descriptor (the tap, or slirp's "frames ready" eventfd) wakes the
//! same thread, which hands each frame to the model; the model fills receive descriptors
//! and raises INTx. As with virtio-net, a frame that finds no receive descriptor is
//! dropped and counted, so a guest that stops reading costs no memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use devices::e1000::E1000;
use devices::memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{lock, BusHandler};
use crate::net::backend::{Backend, Recv};
use crate::runtime::{
    find_section, only_sections, ControlHandle, ModelPart, ThreadControl, Transition,
};

/// One e1000 and its backend.
pub struct E1000Host {
    name: String,
    model: Arc<Mutex<E1000>>,
    mem: GuestMemoryMmap,
    backend: Arc<Mutex<Backend>>,
    /// Link up (`set_link`): while down, frames are dropped both ways.
    pub link: Arc<AtomicBool>,
    /// Why the backend stopped working, for `info network`.
    pub error: Arc<Mutex<Option<String>>>,
    /// The backend thread's control mailbox (the only place the e1000 writes guest memory
    /// from outside a vCPU exit).
    control: ControlHandle,
    /// Frames on their way from the vCPU to the backend thread; `None` when there is no
    /// backend (and so no thread): frames are then dropped at once.
    tx: Option<TxQueue>,
    /// The device was removed: the backend thread ends at its next wake-up.
    stopping: AtomicBool,
}

/// Frames the model has transmitted, waiting for the backend thread: a bounded queue the
/// vCPU posts to without ever blocking, and the eventfd that wakes the thread.
pub struct TxQueue {
    frames: Sender<Vec<u8>>,
    pending: Receiver<Vec<u8>>,
    wake: EventFd,
    /// Frames refused because the queue was full.
    overflows: AtomicU64,
}

/// Frames the transmit queue holds: 256 frames (a full-sized ring's worth of
/// one-descriptor frames); past that, the backend is not keeping up and frames drop.
pub const TX_QUEUE_FRAMES: usize = 256;

impl TxQueue {
    pub fn new(capacity: usize) -> std::io::Result<Self> {
        let (frames, pending) = crossbeam_channel::bounded(capacity);
        Ok(Self {
            frames,
            pending,
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            overflows: AtomicU64::new(0),
        })
    }

    /// Queue `frames` without blocking and wake the consumer once; returns how many found
    /// the queue full (they are dropped and counted).
    pub fn post(&self, frames: Vec<Vec<u8>>) -> u64 {
        let mut refused = 0;
        for f in frames {
            match self.frames.try_send(f) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => refused += 1,
            }
        }
        if refused > 0 {
            self.overflows.fetch_add(refused, Ordering::Relaxed);
        }
        let _ = self.wake.write(1);
        refused
    }

    /// The consumer's side: clear the wake-up, then take every frame queued (a frame
    /// posted meanwhile signals again).
    pub fn drain(&self, mut each: impl FnMut(Vec<u8>)) {
        let _ = self.wake.read();
        while let Ok(f) = self.pending.try_recv() {
            each(f);
        }
    }

    /// Frames dropped because the queue was full.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.wake)
    }
}

impl E1000Host {
    /// Put `model` in service with `backend`, starting the backend thread (actor `name`).
    ///
    /// The backend thread is not restartable: it works on the model's receive ring under
    /// the device's lock, and a panic there may leave descriptors half written that no
    /// rebuilt thread could account for; it stops the VM in internal-error.
    pub fn start(
        registry: &crate::runtime::Registry,
        name: &str,
        model: E1000,
        mem: GuestMemoryMmap,
        backend: Backend,
    ) -> std::io::Result<Arc<Self>> {
        let fd = backend.fd();
        let model = Arc::new(Mutex::new(model));
        let (thread_control, control) = match fd {
            Some(_) => {
                let (t, c) = ThreadControl::new(name)?;
                (Some(t), c)
            }
            // No backend to receive from: nothing but vCPU exits reaches the model, which
            // saves and restores under its lock.
            None => (
                None,
                ControlHandle::models(
                    name,
                    vec![Box::new(ModelPart::new(name, model.clone()))],
                    || {},
                ),
            ),
        };
        let host = Arc::new(Self {
            name: name.to_string(),
            model,
            mem,
            backend: Arc::new(Mutex::new(backend)),
            link: Arc::new(AtomicBool::new(true)),
            error: Arc::default(),
            control,
            tx: match fd {
                Some(_) => Some(TxQueue::new(TX_QUEUE_FRAMES)?),
                None => None,
            },
            stopping: AtomicBool::new(false),
        });
        // With no backend to receive from, nothing but vCPU exits reaches the model: no
        // thread.
        if let (Some(fd), Some(mut thread_control)) = (fd, thread_control) {
            let epoll = Epoll::new()?;
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, BACKEND_TOKEN),
            )?;
            epoll.ctl(
                ControlOperation::Add,
                thread_control.fd(),
                EpollEvent::new(EventSet::IN, CONTROL_TOKEN),
            )?;
            if let Some(tx) = &host.tx {
                epoll.ctl(
                    ControlOperation::Add,
                    tx.fd(),
                    EpollEvent::new(EventSet::IN, TX_TOKEN),
                )?;
            }
            let h = host.clone();
            crate::runtime::spawn_thread(
                registry,
                crate::runtime::ThreadSpec::new(name, "e1000-rx", crate::runtime::Restart::Never),
                move || h.receive_loop(&epoll, &mut thread_control),
            )?;
        }
        Ok(host)
    }

    /// The receive side's control mailbox (pause/resume with the VM).
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    pub fn model(&self) -> &Arc<Mutex<E1000>> {
        &self.model
    }

    /// The PCI function to put on the bus.
    pub fn function(&self) -> Arc<Mutex<dyn devices::pci::PciFunction>> {
        self.model.clone()
    }

    /// Handlers for BAR0 (registers) and BAR1 (the I/O window).
    pub fn bars(self: &Arc<Self>) -> [Arc<dyn BusHandler>; 2] {
        [Arc::new(Mmio(self.clone())), Arc::new(Io(self.clone()))]
    }

    /// `set_link`: the guest sees STATUS.LU change (and an LSC interrupt).
    pub fn set_link(&self, up: bool) {
        self.link.store(up, Ordering::Relaxed);
        lock(&self.model).set_link(up);
    }

    /// Dropped frames (receive, transmit) for `info network`: the model's, and transmits
    /// that found the queue to the backend full.
    pub fn dropped(&self) -> (u64, u64) {
        let s = lock(&self.model).stats;
        let overflows = self.tx.as_ref().map_or(0, TxQueue::overflows);
        (s.rx_dropped, s.tx_dropped + overflows)
    }

    /// The backend goes (`netdev_del`): from now on the NIC has no peer and frames are
    /// dropped. Closing it also takes its descriptor out of the receive thread's epoll.
    pub fn detach_backend(&self) {
        *lock(&self.backend) = Backend::Gone;
    }

    /// Send frames to the backend (the guest's, or the VMM's own announcements): posted to
    /// the backend thread without waiting (called on a vCPU thread, with the model
    /// unlocked). With the link down or no backend they are dropped and counted.
    pub fn send(&self, frames: Vec<Vec<u8>>) {
        if frames.is_empty() {
            return;
        }
        match &self.tx {
            Some(tx) if self.link.load(Ordering::Relaxed) => {
                // Overflows are counted by the queue itself.
                tx.post(frames);
            }
            _ => lock(&self.model).stats.tx_dropped += frames.len() as u64,
        }
    }

    /// The device was removed from the machine (its BARs already unmapped): the backend
    /// thread ends and the backend closes with it.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        *lock(&self.backend) = Backend::Gone;
        if let Some(tx) = &self.tx {
            let _ = tx.wake.write(1);
        }
    }

    /// The backend thread: write the queued frames to the backend.
    fn transmit(&self) {
        let Some(tx) = &self.tx else {
            return;
        };
        let up = self.link.load(Ordering::Relaxed);
        let mut refused = 0;
        let mut b = lock(&self.backend);
        let mut sent = false;
        tx.drain(|f| {
            sent = true;
            if !up || !b.send(&f) {
                refused += 1;
            }
        });
        if sent {
            b.settle();
        }
        drop(b);
        if refused > 0 {
            lock(&self.model).stats.tx_dropped += refused;
        }
    }

    /// Restore the model from its section (the receive thread, paused).
    fn restore(&self, sections: &[devices::Section]) -> Result<(), devices::StateError> {
        only_sections(sections, &[self.name.as_str()])?;
        devices::restore_section(&mut *lock(&self.model), find_section(sections, &self.name)?)
    }

    fn receive_loop(&self, epoll: &Epoll, control: &mut ThreadControl) {
        let mut events = vec![EpollEvent::default(); 4];
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("{}: epoll: {e}", self.name);
                    return;
                }
            };
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            // Frames the guest transmitted go out even while paused (they were sent before
            // the pause, like frames already in a NIC's FIFO); the queue must be emptied
            // anyway, its eventfd being level-triggered.
            if events[..n].iter().any(|e| e.data() == TX_TOKEN) {
                self.transmit();
            }
            if events[..n].iter().any(|e| e.data() == CONTROL_TOKEN) {
                // Paused, the backend's descriptor leaves the (level-triggered) set:
                // frames wait in the backend, as on a stopped QEMU.
                let alive = control.serve(|t| {
                    let op = match t {
                        Transition::Pause => {
                            // Drain: what the vCPUs posted before they paused goes out.
                            self.transmit();
                            ControlOperation::Delete
                        }
                        Transition::Resume => ControlOperation::Add,
                        Transition::Save(out) => {
                            out.push(devices::save_section(&self.name, &*lock(&self.model)));
                            return Ok(());
                        }
                        Transition::Restore(sections) => return self.restore(sections),
                    };
                    if let Some(fd) = lock(&self.backend).fd() {
                        let _ = epoll.ctl(op, fd, EpollEvent::new(EventSet::IN, BACKEND_TOKEN));
                    }
                    Ok(())
                });
                if !alive {
                    return;
                }
            }
            if control.paused() {
                continue;
            }
            crate::runtime::fault_point();
            let mut b = lock(&self.backend);
            b.ack();
            loop {
                match b.recv(&mut buf) {
                    Recv::Frame(n) => {
                        let mut m = lock(&self.model);
                        if self.link.load(Ordering::Relaxed) {
                            m.receive(&self.mem, &buf[..n]);
                        } else {
                            m.stats.rx_dropped += 1;
                        }
                    }
                    Recv::Empty => break,
                    Recv::Failed(why) => {
                        crate::report!("troupe: {why}");
                        *lock(&self.error) = Some(why);
                        self.set_link(false);
                        // The descriptor is closed: nothing more will wake this thread.
                        return;
                    }
                }
            }
        }
    }
}

const BACKEND_TOKEN: u64 = 0;
const CONTROL_TOKEN: u64 = 1;
const TX_TOKEN: u64 = 2;

struct Mmio(Arc<E1000Host>);
struct Io(Arc<E1000Host>);

impl BusHandler for Mmio {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0.model).read(offset, data);
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        // The model returns its frames; they are posted once its lock is dropped.
        let frames = lock(&self.0.model).write(&self.0.mem, offset, data);
        self.0.send(frames);
    }
}

impl BusHandler for Io {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0.model).io_read(offset, data);
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        let frames = lock(&self.0.model).io_write(&self.0.mem, offset, data);
        self.0.send(frames);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: usize) -> Vec<u8> {
        vec![i as u8; 60]
    }

    #[test]
    fn a_full_transmit_queue_drops_and_counts_instead_of_blocking() {
        let q = TxQueue::new(4).unwrap();
        // No consumer at all: posting returns at once, the surplus counted.
        assert_eq!(q.post((0..3).map(frame).collect()), 0);
        assert_eq!(q.post((3..7).map(frame).collect()), 3);
        assert_eq!(q.overflows(), 3);
        // The consumer was woken and gets the frames that fit, in order.
        assert_eq!(q.wake.read().unwrap(), 2);
        q.wake.write(1).unwrap();
        let mut got = Vec::new();
        q.drain(|f| got.push(f[0]));
        assert_eq!(got, vec![0, 1, 2, 3]);
        // Drained, the wake-up is cleared (the level-triggered epoll stays quiet) and
        // the queue takes frames again.
        assert!(q.wake.read().is_err());
        assert_eq!(q.post(vec![frame(9)]), 0);
        assert_eq!(q.overflows(), 3);
    }
}
