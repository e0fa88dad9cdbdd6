//! The actor runtime: mailboxes, handles, request/reply, and supervised spawning.
//!
//! An actor is a struct that owns its state and a [`Mailbox`] of one typed message enum.
//! Others talk to it through a cloneable handle wrapping an [`Addr`]; a request that needs
//! an answer carries a [`Reply`]. Async actors run on tokio and are spawned through
//! [`spawn_supervised`], which restarts restartable actors when they panic and reports the
//! others to the supervisor; connection tasks through [`spawn_task`]; OS threads through
//! [`spawn_thread`] — nothing else starts a thread or a task. Every actor appears in the
//! [`Registry`] (what `info actors` prints: kind, state, mailbox depth, restarts, host
//! core, thread id).

mod control;
pub mod fault;
mod mailbox;
mod registry;
mod reply;
mod spawn;
mod thread;

pub use control::{
    find_section, only_sections, Control, ControlError, ControlHandle, ModelPart, PauseGate,
    StatePart, ThreadControl, Transition,
};
pub use fault::fault_point;
pub use mailbox::{mailbox, Addr, Mailbox};
pub use registry::{current, gettid, ActorInfo, ActorState, Placement, Registry, RegistryEntry};
pub use reply::{reply_channel, Reply, ReplyReceiver};
pub(crate) use spawn::panic_text;
pub use spawn::{spawn_supervised, spawn_task, ActorExit, Restart};
pub use thread::{
    kernel_thread_kind, once, process_threads, run_blocking, spawn_thread, thread_name, ThreadSpec,
};

/// Why talking to an actor failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActorError {
    /// The actor has stopped (or its mailbox was dropped) and will not answer.
    #[error("actor {0} is gone")]
    Gone(String),
    /// The actor's mailbox is full and the sender chose not to wait.
    #[error("actor {0} is busy (mailbox full)")]
    Busy(String),
}

/// A message enum names its variants for tracing spans and statistics.
pub trait MessageKind {
    fn kind(&self) -> &'static str;
}
