//! Which actors exist, what state they are in, and where they run — the data behind the
//! monitor's `info actors`. Owned by the supervisor and shared by `Arc`; each entry's
//! counters are atomics updated by the actor's own wrapper.
//!
//! Every thread of the process is an entry (see `thread.rs`): actor threads, tokio's own
//! worker and blocking-pool threads, the main thread. A thread's entry is also its
//! thread-local "current actor" ([`current`]), which fault injection and the vCPU's
//! pinning use. The registry also carries the way to tell the supervisor that a vital actor
//! failed ([`Registry::set_failure_sink`]).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::events::{EventTx, VmEvent};

/// Where an actor executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A task on the shared tokio runtime.
    Runtime,
    /// Its own OS thread, possibly pinned to host cores.
    Thread { tid: i32, cores: Option<Vec<usize>> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ActorState {
    Starting = 0,
    Running = 1,
    Paused = 2,
    Restarting = 3,
    Stopped = 4,
    Failed = 5,
}

impl ActorState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Running,
            2 => Self::Paused,
            3 => Self::Restarting,
            4 => Self::Stopped,
            _ => Self::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// Wakes an actor out of whatever it sleeps in (its eventfd, a kick), so it reaches its
/// next loop turn.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// One actor's live entry.
pub struct RegistryEntry {
    pub id: String,
    kind: Mutex<&'static str>,
    state: AtomicU8,
    restarts: AtomicU32,
    placement: Mutex<Placement>,
    depth: Box<dyn Fn() -> usize + Send + Sync>,
    wake: Mutex<Option<Waker>>,
    #[cfg(feature = "fault-injection")]
    pub(crate) fault: super::fault::FaultSlot,
}

impl RegistryEntry {
    pub fn kind(&self) -> &'static str {
        *self.kind.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn set_kind(&self, kind: &'static str) {
        *self.kind.lock().unwrap_or_else(|e| e.into_inner()) = kind;
    }
    pub fn set_state(&self, s: ActorState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
    pub fn state(&self) -> ActorState {
        ActorState::from_u8(self.state.load(Ordering::Relaxed))
    }
    pub fn note_restart(&self) -> u32 {
        self.restarts.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }
    pub fn set_placement(&self, p: Placement) {
        *self.placement.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
    pub fn placement(&self) -> Placement {
        self.placement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// The host cores a thread actor is pinned to changed (None: unpinned).
    pub fn set_cores(&self, cores: Option<Vec<usize>>) {
        let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        if let Placement::Thread { cores: c, .. } = &mut *p {
            *c = cores;
        }
    }
    /// How to wake the actor for its next loop turn (used by fault injection).
    pub fn set_waker(&self, w: Option<Waker>) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = w;
    }
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub(crate) fn wake(&self) {
        let w = self.wake.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = w {
            w();
        }
    }
}

/// A point-in-time copy of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorInfo {
    pub id: String,
    pub kind: &'static str,
    pub state: ActorState,
    pub mailbox_depth: usize,
    pub restarts: u32,
    pub placement: Placement,
}

thread_local! {
    /// The registry entry of the actor this OS thread runs, if it has one.
    static CURRENT: RefCell<Option<Arc<RegistryEntry>>> = const { RefCell::new(None) };
}

/// The entry of the actor running on this thread (None on unregistered threads).
pub fn current() -> Option<Arc<RegistryEntry>> {
    CURRENT.with(|c| c.borrow().clone())
}

pub(crate) fn set_current(e: Option<Arc<RegistryEntry>>) {
    CURRENT.with(|c| *c.borrow_mut() = e);
}

/// The calling thread's kernel thread id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// All actors of one VM.
#[derive(Clone, Default)]
pub struct Registry {
    entries: Arc<Mutex<Vec<Arc<RegistryEntry>>>>,
    failures: Arc<OnceLock<EventTx>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an actor; `depth` reports its mailbox depth on demand.
    pub fn register(
        &self,
        id: &str,
        kind: &'static str,
        placement: Placement,
        depth: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Arc<RegistryEntry> {
        let e = Arc::new(RegistryEntry {
            id: id.to_string(),
            kind: Mutex::new(kind),
            state: AtomicU8::new(ActorState::Starting as u8),
            restarts: AtomicU32::new(0),
            placement: Mutex::new(placement),
            depth: Box::new(depth),
            wake: Mutex::new(None),
            #[cfg(feature = "fault-injection")]
            fault: Default::default(),
        });
        self.lock().push(e.clone());
        e
    }

    /// Register the calling thread itself (the main thread, tokio's threads) as a running
    /// actor `id` of `kind`, and make it the thread's current actor.
    pub fn register_current_thread(&self, id: &str, kind: &'static str) -> Arc<RegistryEntry> {
        let e = self.register(
            id,
            kind,
            Placement::Thread {
                tid: gettid(),
                cores: None,
            },
            || 0,
        );
        e.set_state(ActorState::Running);
        set_current(Some(e.clone()));
        e
    }

    /// Forget an actor (after hot-unplug or when a connection actor ends for good).
    pub fn remove(&self, id: &str) {
        self.lock().retain(|e| e.id != id);
    }

    /// Forget this very entry (another with the same id stays).
    pub fn remove_entry(&self, entry: &Arc<RegistryEntry>) {
        self.lock().retain(|e| !Arc::ptr_eq(e, entry));
    }

    pub fn get(&self, id: &str) -> Option<Arc<RegistryEntry>> {
        self.lock().iter().find(|e| e.id == id).cloned()
    }

    /// Where a vital actor's failure is posted (the supervisor's event queue); set once by
    /// the machine builder.
    pub fn set_failure_sink(&self, events: EventTx) {
        let _ = self.failures.set(events);
    }

    /// Tell the supervisor that `entry`, a non-restartable actor, failed with `reason`.
    pub fn report_failure(&self, entry: &RegistryEntry, reason: &str) {
        match self.failures.get() {
            Some(tx) => tx.post(VmEvent::ActorFailed {
                id: entry.id.clone(),
                kind: entry.kind(),
                reason: reason.to_string(),
            }),
            None => {
                tracing::error!(actor = %entry.id, "actor failed before the supervisor ran: {reason}")
            }
        }
    }

    pub fn snapshot(&self) -> Vec<ActorInfo> {
        self.lock()
            .iter()
            .map(|e| ActorInfo {
                id: e.id.clone(),
                kind: e.kind(),
                state: e.state(),
                mailbox_depth: (e.depth)(),
                restarts: e.restarts.load(Ordering::Relaxed),
                placement: e
                    .placement
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<RegistryEntry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Run `f` with this thread's actor entry, without cloning it.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&Arc<RegistryEntry>>) -> R) -> R {
    CURRENT.with(|c| f(c.borrow().as_ref()))
}
