//! Which actors exist, what state they are in, and where they run — the data behind the
//! monitor's `info actors`. Owned by the supervisor and shared by `Arc`; each entry's
//! counters are atomics updated by the actor's own wrapper.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

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

/// One actor's live entry.
pub struct RegistryEntry {
    pub id: String,
    pub kind: &'static str,
    state: AtomicU8,
    restarts: AtomicU32,
    placement: Mutex<Placement>,
    depth: Box<dyn Fn() -> usize + Send + Sync>,
}

impl RegistryEntry {
    pub fn set_state(&self, s: ActorState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
    pub fn state(&self) -> ActorState {
        ActorState::from_u8(self.state.load(Ordering::Relaxed))
    }
    pub fn note_restart(&self) -> u32 {
        self.restarts.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub fn set_placement(&self, p: Placement) {
        *self.placement.lock().unwrap_or_else(|e| e.into_inner()) = p;
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

/// All actors of one VM.
#[derive(Clone, Default)]
pub struct Registry {
    entries: Arc<Mutex<Vec<Arc<RegistryEntry>>>>,
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
            kind,
            state: AtomicU8::new(ActorState::Starting as u8),
            restarts: AtomicU32::new(0),
            placement: Mutex::new(placement),
            depth: Box::new(depth),
        });
        self.lock().push(e.clone());
        e
    }

    /// Forget an actor (after hot-unplug or when a connection actor ends for good).
    pub fn remove(&self, id: &str) {
        self.lock().retain(|e| e.id != id);
    }

    pub fn get(&self, id: &str) -> Option<Arc<RegistryEntry>> {
        self.lock().iter().find(|e| e.id == id).cloned()
    }

    pub fn snapshot(&self) -> Vec<ActorInfo> {
        self.lock()
            .iter()
            .map(|e| ActorInfo {
                id: e.id.clone(),
                kind: e.kind,
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
