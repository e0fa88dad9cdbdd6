//! The control protocol every device and backend actor answers, so the supervisor can
//! quiesce the whole machine (`stop`), let it go again (`cont`), and (for migration and
//! savevm) collect and replace its state.
//!
//! An actor hands the supervisor a [`ControlHandle`]; the supervisor sends it [`Control`]
//! messages and waits for the replies. How a message reaches the actor is the actor's own
//! business: a thread that sleeps in epoll posts it on a channel and writes its wake
//! eventfd (see [`ThreadControl`]); a device model behind its own lock on the vCPU path
//! answers on the caller's thread. Either way the reply means the thing asked is done:
//! after `Pause` is answered the actor writes no guest memory, raises no interrupt and
//! touches no image until `Resume`; I/O it had in flight has completed and been reported
//! to the guest before the answer.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use vmm_sys_util::eventfd::EventFd;

use super::{reply_channel, ActorError, MessageKind, Reply};

/// Commands of the control protocol.
pub enum Control {
    /// Become quiescent (see the module doc); answered once it is.
    Pause(Reply<()>),
    /// Carry on from exactly where `Pause` left off.
    Resume,
}

impl MessageKind for Control {
    fn kind(&self) -> &'static str {
        match self {
            Self::Pause(_) => "pause",
            Self::Resume => "resume",
        }
    }
}

/// How the supervisor reaches one actor's control mailbox.
#[derive(Clone)]
pub struct ControlHandle {
    id: Arc<str>,
    to: To,
}

#[derive(Clone)]
enum To {
    /// Messages posted to the actor's own mailbox.
    Mailbox(Arc<dyn Fn(Control) -> Result<(), ActorError> + Send + Sync>),
    /// A task that takes its steps through a [`PauseGate`].
    Gate(Arc<PauseGate>),
}

impl std::fmt::Debug for ControlHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlHandle({})", self.id)
    }
}

impl ControlHandle {
    /// A handle for actor `id` whose messages are delivered by `send` (which must not
    /// block: post and return).
    pub fn new(
        id: &str,
        send: impl Fn(Control) -> Result<(), ActorError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            id: Arc::from(id),
            to: To::Mailbox(Arc::new(send)),
        }
    }

    /// A handle for a task that takes each step through `gate`.
    pub fn gate(id: &str, gate: Arc<PauseGate>) -> Self {
        Self {
            id: Arc::from(id),
            to: To::Gate(gate),
        }
    }

    /// A handle for an actor with nothing running outside the vCPUs' exit path: it is
    /// quiescent whenever the vCPUs are paused, so it answers at once.
    pub fn immediate(id: &str) -> Self {
        Self::new(id, |c| {
            if let Control::Pause(reply) = c {
                reply.send(());
            }
            Ok(())
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Ask the actor to pause and wait until it is quiescent.
    pub async fn pause(&self) -> Result<(), ActorError> {
        match &self.to {
            To::Mailbox(send) => {
                let (tx, rx) = reply_channel(&self.id);
                send(Control::Pause(tx))?;
                rx.recv().await
            }
            To::Gate(g) => {
                g.close().await;
                Ok(())
            }
        }
    }

    /// Let the actor carry on.
    pub fn resume(&self) -> Result<(), ActorError> {
        match &self.to {
            To::Mailbox(send) => send(Control::Resume),
            To::Gate(g) => {
                g.open();
                Ok(())
            }
        }
    }
}

/// For a task on the runtime whose only effect on the guest is a short synchronous step
/// (hand input to a model, raise its line): the task takes every step through the gate,
/// and a pause closes the gate once no step is under way.
pub struct PauseGate {
    open: tokio::sync::watch::Sender<bool>,
    step: tokio::sync::RwLock<()>,
}

impl Default for PauseGate {
    fn default() -> Self {
        Self {
            open: tokio::sync::watch::channel(true).0,
            step: tokio::sync::RwLock::new(()),
        }
    }
}

impl PauseGate {
    /// Wait until the VM runs, then hold off a pause until the returned guard is dropped.
    pub async fn step(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        let mut open = self.open.subscribe();
        loop {
            let _ = open.wait_for(|o| *o).await;
            let guard = self.step.read().await;
            if *self.open.borrow() {
                return guard;
            }
        }
    }

    async fn close(&self) {
        self.open.send_replace(false);
        // Steps under way finish; later ones wait for `open`.
        drop(self.step.write().await);
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// What a thread must do when its state changes (see [`ThreadControl::serve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Finish what is in flight and stop touching the guest.
    Pause,
    /// Pick up again (look at everything that arrived meanwhile).
    Resume,
}

/// The actor's side for a thread that sleeps in epoll: a channel plus an eventfd the
/// thread watches, which every message written wakes.
pub struct ThreadControl {
    rx: Receiver<Control>,
    wake: Arc<EventFd>,
    paused: bool,
}

impl ThreadControl {
    /// The thread's end and the supervisor's handle for actor `id`.
    pub fn new(id: &str) -> std::io::Result<(Self, ControlHandle)> {
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let (tx, rx): (Sender<Control>, Receiver<Control>) = crossbeam_channel::unbounded();
        let w = wake.clone();
        let name = id.to_string();
        let handle = ControlHandle::new(id, move |c| {
            tx.send(c).map_err(|_| ActorError::Gone(name.clone()))?;
            let _ = w.write(1);
            Ok(())
        });
        Ok((
            Self {
                rx,
                wake,
                paused: false,
            },
            handle,
        ))
    }

    /// The descriptor to add to the thread's epoll set.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.wake.as_ref())
    }

    /// Whether the last message taken was `Pause`.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Take the messages waiting (clearing the eventfd first so a message sent meanwhile
    /// wakes the thread again). `step` runs with [`Transition::Pause`] for a `Pause` that
    /// finds the actor running, before the answer, and with [`Transition::Resume`] for a
    /// `Resume` that finds it paused. Returns false when the supervisor side is gone.
    pub fn serve(&mut self, mut step: impl FnMut(Transition)) -> bool {
        let _ = self.wake.read();
        loop {
            match self.rx.try_recv() {
                Ok(Control::Pause(reply)) => {
                    if !self.paused {
                        step(Transition::Pause);
                        self.paused = true;
                    }
                    reply.send(());
                }
                Ok(Control::Resume) => {
                    if self.paused {
                        self.paused = false;
                        step(Transition::Resume);
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_is_answered_after_quiesce_and_resume_runs_once() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let (mut ctl, handle) = ThreadControl::new("dev0").unwrap();
        let quiesced = Arc::new(AtomicUsize::new(0));
        let q = quiesced.clone();
        let t = std::thread::spawn(move || {
            let mut resumed = 0;
            while resumed == 0 {
                // Sleep on the eventfd as an epoll loop would.
                let mut pfd = libc::pollfd {
                    fd: ctl.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, 5000) };
                assert!(ctl.serve(|t| match t {
                    Transition::Pause => {
                        q.fetch_add(1, SeqCst);
                    }
                    Transition::Resume => resumed += 1,
                }));
            }
            ctl.paused()
        });
        handle.pause().await.unwrap();
        assert_eq!(quiesced.load(SeqCst), 1, "answered only once quiescent");
        handle.pause().await.unwrap();
        assert_eq!(quiesced.load(SeqCst), 1, "a second pause finds it paused");
        handle.resume().unwrap();
        assert!(!t.join().unwrap(), "running again after resume");
    }

    #[tokio::test]
    async fn a_gate_pauses_between_steps() {
        let gate = Arc::new(PauseGate::default());
        let handle = ControlHandle::gate("feed", gate.clone());
        let step = gate.step().await;
        let pause = handle.pause();
        tokio::pin!(pause);
        // A step is under way: the pause waits for it.
        assert!(futures::FutureExt::now_or_never(pause.as_mut()).is_none());
        drop(step);
        pause.await.unwrap();
        let next = gate.step();
        tokio::pin!(next);
        assert!(
            futures::FutureExt::now_or_never(next.as_mut()).is_none(),
            "no step while paused"
        );
        handle.resume().unwrap();
        drop(next.await);
    }

    #[tokio::test]
    async fn a_gone_actor_is_an_error_not_a_hang() {
        let (ctl, handle) = ThreadControl::new("gone").unwrap();
        drop(ctl);
        assert_eq!(handle.pause().await, Err(ActorError::Gone("gone".into())));
    }
}
