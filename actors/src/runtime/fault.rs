//! Fault injection for the tests (cargo feature `fault-injection`): the monitor's hidden
//! `inject-panic ID` arms a flag in actor ID's registry entry and wakes it; the actor
//! panics at its next loop turn — a thread at its next [`fault_point`] (each actor loop has
//! one where it wakes), a task at its next poll. Without the feature the points compile to
//! nothing and the command does not exist.

#[cfg(feature = "fault-injection")]
pub use enabled::*;

/// The message an injected panic carries.
pub const INJECTED: &str = "injected fault (inject-panic)";

/// Panic here if a fault was injected into this thread's actor (no-op without the
/// `fault-injection` feature).
#[inline(always)]
pub fn fault_point() {
    #[cfg(feature = "fault-injection")]
    enabled::check_current();
}

/// With fault injection, `TROUPE_INJECT_PANIC=ID[@MS]` in the environment injects a panic
/// into actor ID MS milliseconds (default 500) after the call: the way in for a VM with no
/// monitor. Without the feature this does nothing.
pub fn inject_from_env(rt: &tokio::runtime::Handle, registry: &super::Registry) {
    #[cfg(feature = "fault-injection")]
    enabled::inject_from_env(rt, registry);
    #[cfg(not(feature = "fault-injection"))]
    let _ = (rt, registry);
}

/// The future an actor task runs: with fault injection, one that panics at its next poll
/// once armed; without, the future itself.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn guard<F>(_entry: std::sync::Arc<super::RegistryEntry>, fut: F) -> F {
    fut
}

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use super::INJECTED;
    use crate::runtime::registry::{with_current, Registry, RegistryEntry};

    /// Per-entry injection state.
    #[derive(Default)]
    pub(crate) struct FaultSlot {
        armed: AtomicBool,
        task: Mutex<Option<std::task::Waker>>,
    }

    /// Why a fault could not be injected.
    #[derive(Debug, thiserror::Error)]
    pub enum FaultError {
        #[error("no actor '{0}'")]
        NoSuchActor(String),
    }

    impl Registry {
        /// Make actor `id` panic at its next loop turn, and wake it so the turn comes.
        pub fn inject_panic(&self, id: &str) -> Result<(), FaultError> {
            let e = self
                .get(id)
                .ok_or_else(|| FaultError::NoSuchActor(id.to_string()))?;
            e.fault.armed.store(true, Ordering::SeqCst);
            e.wake();
            let task = e
                .fault
                .task
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(w) = task {
                w.wake();
            }
            Ok(())
        }
    }

    pub(crate) fn inject_from_env(rt: &tokio::runtime::Handle, registry: &Registry) {
        let Ok(spec) = std::env::var("TROUPE_INJECT_PANIC") else {
            return;
        };
        let (id, ms) = match spec.split_once('@') {
            Some((id, ms)) => (id.to_string(), ms.parse().unwrap_or(500)),
            None => (spec, 500),
        };
        let reg = registry.clone();
        crate::runtime::spawn_task(rt, registry, "inject-panic", "test", None, async move {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            if let Err(e) = reg.inject_panic(&id) {
                crate::report!("troupe: TROUPE_INJECT_PANIC: {e}");
            }
        });
    }

    pub(crate) fn check_current() {
        let armed =
            with_current(|e| e.is_some_and(|e| e.fault.armed.swap(false, Ordering::SeqCst)));
        if armed {
            panic!("{INJECTED}");
        }
    }

    /// A task future that panics at its next poll once its actor is armed.
    pub(crate) struct Guarded<F> {
        entry: Arc<RegistryEntry>,
        inner: Pin<Box<F>>,
    }

    pub(crate) fn guard<F: Future>(entry: Arc<RegistryEntry>, fut: F) -> Guarded<F> {
        Guarded {
            entry,
            inner: Box::pin(fut),
        }
    }

    impl<F: Future> Future for Guarded<F> {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.get_mut();
            *this
                .entry
                .fault
                .task
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            if this.entry.fault.armed.swap(false, Ordering::SeqCst) {
                panic!("{INJECTED}");
            }
            this.inner.as_mut().poll(cx)
        }
    }
}
