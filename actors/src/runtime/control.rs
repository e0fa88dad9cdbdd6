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
//!
//! `Save` and `Restore` are answered only by a paused actor (anything else is
//! [`ControlError::NotPaused`]): the state of something still running is not a state. An
//! actor saves its state as one or more [`Section`]s whose ids are its own id or start
//! with it (`virtio-blk0`, `virtio-blk0/queues`), and restores from exactly those: it
//! decodes every one of them before it changes anything, so a refused restore leaves it
//! as it was.

use std::sync::Arc;
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use devices::{Section, Snapshot, StateError};
use vmm_sys_util::eventfd::EventFd;

use super::{reply_channel, ActorError, MessageKind, Reply};

/// Why an actor did not save or restore its state.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// `Save`/`Restore` reached an actor that is running.
    #[error("{actor}: {what} is allowed only while the actor is paused")]
    NotPaused { actor: String, what: &'static str },
    /// The actor could not produce its state.
    #[error("{actor}: saving its state failed")]
    Save {
        actor: String,
        #[source]
        source: StateError,
    },
    /// The state given does not fit the actor (nothing was changed).
    #[error("{actor}: its state was refused")]
    Restore {
        actor: String,
        #[source]
        source: StateError,
    },
    /// The actor did not answer.
    #[error(transparent)]
    Actor(#[from] ActorError),
}

/// Commands of the control protocol.
pub enum Control {
    /// Become quiescent (see the module doc); answered once it is.
    Pause(Reply<()>),
    /// Carry on from exactly where `Pause` left off.
    Resume,
    /// The actor's state as sections (paused only).
    Save(Reply<Result<Vec<Section>, ControlError>>),
    /// Replace the actor's state with sections it saved (paused only; it stays paused).
    Restore(Vec<Section>, Reply<Result<(), ControlError>>),
}

impl MessageKind for Control {
    fn kind(&self) -> &'static str {
        match self {
            Self::Pause(_) => "pause",
            Self::Resume => "resume",
            Self::Save(_) => "save",
            Self::Restore(..) => "restore",
        }
    }
}

/// The section with id `id` among `sections`: exactly one must be there.
pub fn find_section<'a>(sections: &'a [Section], id: &str) -> Result<&'a Section, StateError> {
    let mut it = sections.iter().filter(|s| s.id == id);
    let one = it
        .next()
        .ok_or_else(|| StateError::invalid("state", format!("no section '{id}'")))?;
    if it.next().is_some() {
        return Err(StateError::invalid(
            "state",
            format!("two sections named '{id}'"),
        ));
    }
    Ok(one)
}

/// Refuse sections other than `ids` (a restore must not drop state silently).
pub fn only_sections(sections: &[Section], ids: &[&str]) -> Result<(), StateError> {
    match sections.iter().find(|s| !ids.contains(&s.id.as_str())) {
        Some(s) => Err(StateError::invalid(
            "state",
            format!("section '{}' ({}) does not belong here", s.id, s.kind),
        )),
        None => Ok(()),
    }
}

/// A part of a model-only actor's state: saved and restored under the actor's lock (see
/// [`ControlHandle::models`]).
pub trait StatePart: Send + Sync {
    /// The section id.
    fn id(&self) -> &str;
    fn save(&self) -> Section;
    /// Decode and check `section` without applying it.
    fn check(&self, section: &Section) -> Result<(), StateError>;
    fn restore(&self, section: &Section) -> Result<(), StateError>;
}

/// A model behind its mutex, saved as one section.
pub struct ModelPart<S> {
    id: String,
    model: Arc<Mutex<S>>,
}

impl<S> ModelPart<S> {
    pub fn new(id: &str, model: Arc<Mutex<S>>) -> Self {
        Self {
            id: id.to_string(),
            model,
        }
    }
}

impl<S: Snapshot + Send> StatePart for ModelPart<S> {
    fn id(&self) -> &str {
        &self.id
    }
    fn save(&self) -> Section {
        devices::save_section(&self.id, &*crate::bus::lock(&self.model))
    }
    fn check(&self, section: &Section) -> Result<(), StateError> {
        section.decode::<S::State>(S::KIND, S::VERSION).map(|_| ())
    }
    fn restore(&self, section: &Section) -> Result<(), StateError> {
        devices::restore_section(&mut *crate::bus::lock(&self.model), section)
    }
}

/// How the supervisor reaches one actor's control mailbox.
#[derive(Clone)]
pub struct ControlHandle {
    id: Arc<str>,
    send: Arc<dyn Fn(Control) -> Result<(), ActorError> + Send + Sync>,
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
            send: Arc::new(send),
        }
    }

    /// A handle for an actor with nothing running outside the vCPUs' exit path and no
    /// state of its own: it is quiescent whenever the vCPUs are paused, so it answers at
    /// once, and saves no section.
    pub fn immediate(id: &str) -> Self {
        Self::models(id, Vec::new(), || {})
    }

    /// A handle for an actor made of device models that run only on the vCPUs' exit path
    /// under their own locks (a UART, the i8042, fw_cfg): it is quiescent whenever the
    /// vCPUs are paused, and answers on the caller's thread, saving and restoring `parts`
    /// in order under each model's lock. A restore checks every section before it applies
    /// any, then runs `restored` (to re-apply what follows from the registers).
    pub fn models(
        id: &str,
        parts: Vec<Box<dyn StatePart>>,
        restored: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        let paused = std::sync::atomic::AtomicBool::new(false);
        let name = id.to_string();
        Self::new(id, move |c| {
            use std::sync::atomic::Ordering::SeqCst;
            let not_paused = |what| ControlError::NotPaused {
                actor: name.clone(),
                what,
            };
            match c {
                Control::Pause(reply) => {
                    paused.store(true, SeqCst);
                    reply.send(());
                }
                Control::Resume => paused.store(false, SeqCst),
                Control::Save(reply) => reply.send(if paused.load(SeqCst) {
                    Ok(parts.iter().map(|p| p.save()).collect())
                } else {
                    Err(not_paused("save"))
                }),
                Control::Restore(sections, reply) => {
                    if !paused.load(SeqCst) {
                        reply.send(Err(not_paused("restore")));
                        return Ok(());
                    }
                    let apply = || -> Result<(), StateError> {
                        let ids: Vec<&str> = parts.iter().map(|p| p.id()).collect();
                        only_sections(&sections, &ids)?;
                        let found = parts
                            .iter()
                            .map(|p| {
                                let s = find_section(&sections, p.id())?;
                                p.check(s)?;
                                Ok(s)
                            })
                            .collect::<Result<Vec<_>, StateError>>()?;
                        for (p, s) in parts.iter().zip(found) {
                            p.restore(s)?;
                        }
                        restored();
                        Ok(())
                    };
                    reply.send(apply().map_err(|source| ControlError::Restore {
                        actor: name.clone(),
                        source,
                    }));
                }
            }
            Ok(())
        })
    }

    /// This handle, with `gate` closed before the actor pauses and opened after it
    /// resumes (for an actor whose feeder task takes its steps through the gate).
    pub fn with_gate(self, gate: Arc<PauseGate>) -> Self {
        let inner = self.clone();
        Self::new(&self.id, move |c| match c {
            Control::Pause(reply) => {
                gate.close();
                inner.send(Control::Pause(reply))
            }
            Control::Resume => {
                let r = inner.send(Control::Resume);
                gate.open();
                r
            }
            other => inner.send(other),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Deliver `c` (for a handle that wraps another, adding what it does around it).
    pub fn send(&self, c: Control) -> Result<(), ActorError> {
        (self.send)(c)
    }

    /// Ask the actor to pause and wait until it is quiescent.
    pub async fn pause(&self) -> Result<(), ActorError> {
        let (tx, rx) = reply_channel(&self.id);
        (self.send)(Control::Pause(tx))?;
        rx.recv().await
    }

    /// Let the actor carry on.
    pub fn resume(&self) -> Result<(), ActorError> {
        (self.send)(Control::Resume)
    }

    /// The actor's state (it must be paused).
    pub async fn save(&self) -> Result<Vec<Section>, ControlError> {
        let (tx, rx) = reply_channel(&self.id);
        (self.send)(Control::Save(tx))?;
        rx.recv().await?
    }

    /// Replace the actor's state with `sections` (it must be paused).
    pub async fn restore(&self, sections: Vec<Section>) -> Result<(), ControlError> {
        let (tx, rx) = reply_channel(&self.id);
        (self.send)(Control::Restore(sections, tx))?;
        rx.recv().await?
    }
}

/// For a task on the runtime whose only effect on the guest is a short synchronous step
/// (hand input to a model, raise its line): the task takes every step through the gate,
/// and closing it waits for a step under way (microseconds: no step awaits) and holds
/// back the next until it opens again.
pub struct PauseGate {
    open: tokio::sync::watch::Sender<bool>,
    step: std::sync::RwLock<()>,
}

impl Default for PauseGate {
    fn default() -> Self {
        Self {
            open: tokio::sync::watch::channel(true).0,
            step: std::sync::RwLock::new(()),
        }
    }
}

/// A step under way: the gate cannot close until it is dropped. Never held across an
/// `.await`.
pub type Step<'a> = std::sync::RwLockReadGuard<'a, ()>;

impl PauseGate {
    /// Wait until the gate is open (the VM runs).
    pub async fn opened(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|o| *o).await;
    }

    /// Start a step if the gate is open (call after [`Self::opened`]; None: it closed
    /// meanwhile, wait again).
    pub fn try_step(&self) -> Option<Step<'_>> {
        let guard = self.step.read().unwrap_or_else(|e| e.into_inner());
        (*self.open.borrow()).then_some(guard)
    }

    fn close(&self) {
        self.open.send_replace(false);
        // A step under way finishes; later ones find the gate closed.
        drop(self.step.write().unwrap_or_else(|e| e.into_inner()));
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// What a thread must do (see [`ThreadControl::serve`]).
#[derive(Debug, PartialEq)]
pub enum Transition<'a> {
    /// Finish what is in flight and stop touching the guest.
    Pause,
    /// Pick up again (look at everything that arrived meanwhile).
    Resume,
    /// Paused: push the thread's state sections.
    Save(&'a mut Vec<Section>),
    /// Paused: replace the thread's state with these sections, checking all of them
    /// before changing anything.
    Restore(&'a [Section]),
}

/// The actor's side for a thread that sleeps in epoll: a channel plus an eventfd the
/// thread watches, which every message written wakes.
pub struct ThreadControl {
    id: String,
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
                id: id.to_string(),
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
    /// `Resume` that finds it paused (what it returns then is ignored); while paused, with
    /// [`Transition::Save`] and [`Transition::Restore`], whose result is the answer.
    /// Returns false when the supervisor side is gone.
    pub fn serve(&mut self, mut step: impl FnMut(Transition) -> Result<(), StateError>) -> bool {
        let _ = self.wake.read();
        loop {
            match self.rx.try_recv() {
                Ok(Control::Pause(reply)) => {
                    if !self.paused {
                        let _ = step(Transition::Pause);
                        self.paused = true;
                    }
                    reply.send(());
                }
                Ok(Control::Resume) => {
                    if self.paused {
                        self.paused = false;
                        let _ = step(Transition::Resume);
                    }
                }
                Ok(Control::Save(reply)) => {
                    let mut out = Vec::new();
                    reply.send(if !self.paused {
                        Err(self.not_paused("save"))
                    } else {
                        step(Transition::Save(&mut out))
                            .map(|()| out)
                            .map_err(|source| ControlError::Save {
                                actor: self.id.clone(),
                                source,
                            })
                    });
                }
                Ok(Control::Restore(sections, reply)) => {
                    reply.send(if !self.paused {
                        Err(self.not_paused("restore"))
                    } else {
                        step(Transition::Restore(&sections)).map_err(|source| {
                            ControlError::Restore {
                                actor: self.id.clone(),
                                source,
                            }
                        })
                    });
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn not_paused(&self, what: &'static str) -> ControlError {
        ControlError::NotPaused {
            actor: self.id.clone(),
            what,
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
                assert!(ctl.serve(|t| {
                    match t {
                        Transition::Pause => {
                            q.fetch_add(1, SeqCst);
                        }
                        Transition::Resume => resumed += 1,
                        _ => {}
                    }
                    Ok(())
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
    async fn a_gate_closes_with_the_pause_and_opens_with_the_resume() {
        let gate = Arc::new(PauseGate::default());
        let handle = ControlHandle::immediate("feed").with_gate(gate.clone());
        assert!(gate.try_step().is_some(), "open while running");
        handle.pause().await.unwrap();
        assert!(gate.try_step().is_none(), "no step while paused");
        let opened = gate.opened();
        tokio::pin!(opened);
        assert!(futures::FutureExt::now_or_never(opened.as_mut()).is_none());
        handle.resume().unwrap();
        opened.await;
        assert!(gate.try_step().is_some());
    }

    #[tokio::test]
    async fn a_gone_actor_is_an_error_not_a_hang() {
        let (ctl, handle) = ThreadControl::new("gone").unwrap();
        drop(ctl);
        assert_eq!(handle.pause().await, Err(ActorError::Gone("gone".into())));
    }

    #[tokio::test]
    async fn a_running_thread_refuses_save_and_restore_and_a_paused_one_answers() {
        let (mut ctl, handle) = ThreadControl::new("dev0").unwrap();
        let t = std::thread::spawn(move || {
            let mut state = 7u32;
            let mut pfd = libc::pollfd {
                fd: ctl.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, 5000) };
                let alive = ctl.serve(|t| {
                    match t {
                        Transition::Save(out) => {
                            out.push(Section::new("dev0", "n", 1, &state).unwrap())
                        }
                        Transition::Restore(s) => {
                            state = find_section(s, "dev0")?.decode("n", 1)?;
                        }
                        _ => {}
                    }
                    Ok(())
                });
                if !alive {
                    return state;
                }
            }
        });
        let e = handle.save().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "dev0: save is allowed only while the actor is paused"
        );
        handle.pause().await.unwrap();
        let saved = handle.save().await.unwrap();
        assert_eq!(saved[0].state, serde_json::json!(7));
        let mut other = saved.clone();
        other[0].state = serde_json::json!(9);
        handle.restore(other).await.unwrap();
        let mut wrong = saved.clone();
        wrong[0].id = "dev1".into();
        let e = handle.restore(wrong).await.unwrap_err();
        assert!(matches!(e, ControlError::Restore { .. }), "{e}");
        handle.resume().unwrap();
        let e = handle.restore(saved).await.unwrap_err();
        assert!(matches!(e, ControlError::NotPaused { .. }), "{e}");
        drop(handle);
        assert_eq!(t.join().unwrap(), 9);
    }

    #[tokio::test]
    async fn a_model_actor_checks_every_section_before_it_restores_any() {
        #[derive(Default)]
        struct Reg(u8);
        impl Snapshot for Reg {
            type State = u8;
            const KIND: &'static str = "reg";
            const VERSION: u32 = 1;
            fn save(&self) -> u8 {
                self.0
            }
            fn restore(&mut self, s: u8) -> Result<(), StateError> {
                self.0 = s;
                Ok(())
            }
        }
        let a = Arc::new(Mutex::new(Reg(1)));
        let b = Arc::new(Mutex::new(Reg(2)));
        let h = ControlHandle::models(
            "chip",
            vec![
                Box::new(ModelPart::new("chip/a", a.clone())),
                Box::new(ModelPart::new("chip/b", b.clone())),
            ],
            || {},
        );
        assert!(matches!(
            h.save().await,
            Err(ControlError::NotPaused { .. })
        ));
        h.pause().await.unwrap();
        let saved = h.save().await.unwrap();
        a.lock().unwrap().0 = 5;
        b.lock().unwrap().0 = 6;
        // chip/b from another version: chip/a is not touched either.
        let mut bad = saved.clone();
        bad[1].version = 2;
        let e = h.restore(bad).await.unwrap_err();
        assert_eq!(
            crate::supervisor::error_chain(&e),
            "chip: its state was refused: reg: state version 2 is not supported (this build reads 1)"
        );
        assert_eq!((a.lock().unwrap().0, b.lock().unwrap().0), (5, 6));
        h.restore(saved).await.unwrap();
        assert_eq!((a.lock().unwrap().0, b.lock().unwrap().0), (1, 2));
    }
}
