//! Supervised spawning of async actors on tokio.
//!
//! `spawn_supervised` runs an actor built by a factory inside a tracing span
//! `actor{id=.., kind=..}`. If the actor panics and is [`Restart::Always`], a fresh
//! incarnation is built and started (its mailbox and queued messages survive, see
//! `mailbox.rs`); a panic in a [`Restart::Never`] actor is reported through `on_fail`, which
//! the supervisor turns into a clean VM stop with the reason.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::fault::guard;
use super::registry::{ActorState, Placement, Registry, RegistryEntry};

/// What to do when an actor panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Restart it (VNC server, monitor, NIC backend, chardev).
    Always,
    /// The VM cannot run without it: report and stop.
    Never,
}

/// How an actor's task ended, as reported to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorExit {
    /// Returned normally.
    Finished,
    /// Panicked and will not be restarted.
    Failed(String),
}

/// Restarts in a row after which even a restartable actor is given up on.
pub(crate) const MAX_RESTARTS: u32 = 100;

/// Spawn an actor under supervision. `factory` builds one incarnation (called again on
/// every restart). `on_exit` is called once when the actor is finally done.
pub fn spawn_supervised<F, Fut>(
    rt: &tokio::runtime::Handle,
    entry: Arc<RegistryEntry>,
    restart: Restart,
    mut factory: F,
    on_exit: impl FnOnce(ActorExit) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt2 = rt.clone();
    rt.spawn(async move {
        loop {
            let span = tracing::info_span!("actor", id = %entry.id, kind = entry.kind());
            entry.set_state(ActorState::Running);
            let fut = crate::sandbox::tagged(entry.kind(), factory());
            let res = rt2
                .spawn(guard(entry.clone(), fut).instrument(span))
                .await;
            match res {
                Ok(()) => {
                    entry.set_state(ActorState::Stopped);
                    on_exit(ActorExit::Finished);
                    return;
                }
                Err(e) => {
                    let reason = panic_reason(e);
                    let n = entry.note_restart();
                    if restart == Restart::Always && n <= MAX_RESTARTS {
                        tracing::warn!(actor = %entry.id, restarts = n, "actor panicked ({reason}); restarting");
                        entry.set_state(ActorState::Restarting);
                        // Back off a little so a crash loop cannot spin a core.
                        tokio::time::sleep(Duration::from_millis(10 * u64::from(n.min(20)))).await;
                        continue;
                    }
                    tracing::error!(actor = %entry.id, "actor failed: {reason}");
                    entry.set_state(ActorState::Failed);
                    on_exit(ActorExit::Failed(format!("{} ({}): {reason}", entry.id, entry.kind())));
                    return;
                }
            }
        }
    })
}

fn panic_reason(e: tokio::task::JoinError) -> String {
    if e.is_cancelled() {
        return "cancelled".into();
    }
    panic_text(e.into_panic().as_ref())
}

/// The message a panic carried.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// Run a task that is not restarted: a connection's session (a VNC client, a monitor
/// session, a WebSocket pump) or a one-shot helper. It is listed as actor `id` of `kind`
/// while it runs and forgotten when it ends. A panic ends only this task (its
/// connection); it is logged, and when the task serves a connection of `parent` (the
/// listener actor the client reconnects to), counted as a restart of the parent.
pub fn spawn_task<Fut>(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    id: &str,
    kind: &'static str,
    parent: Option<&str>,
    fut: Fut,
) -> tokio::task::JoinHandle<()>
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let entry = registry.register(id, kind, Placement::Runtime, || 0);
    entry.set_state(ActorState::Running);
    let span = tracing::info_span!("actor", id = %entry.id, kind);
    let inner = rt.spawn(guard(entry.clone(), crate::sandbox::tagged(kind, fut)).instrument(span));
    let mut watch = Watch {
        inner,
        registry: registry.clone(),
        entry,
    };
    let parent = parent.map(str::to_string);
    rt.spawn(async move {
        let res = (&mut watch.inner).await;
        if let Err(e) = res {
            if e.is_panic() {
                let reason = panic_reason(e);
                crate::report!(
                    "troupe: actor {} ({}) panicked: {reason}; its connection is closed",
                    watch.entry.id,
                    watch.entry.kind()
                );
                if let Some(p) = parent.as_deref().and_then(|p| watch.registry.get(p)) {
                    p.note_restart();
                }
            }
        }
    })
}

/// A [`spawn_task`] task as its watcher holds it: aborted with the watcher (a kicked
/// client's reader), and off the registry once over either way.
struct Watch {
    inner: tokio::task::JoinHandle<()>,
    registry: Registry,
    entry: Arc<RegistryEntry>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.inner.abort();
        self.registry.remove_entry(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{mailbox, Placement, Registry};
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn restartable_actor_is_restarted_and_keeps_its_mailbox() {
        let reg = Registry::new();
        let (addr, mb) = mailbox::<u32>("echo", 8);
        let entry = reg.register("echo", "test", Placement::Runtime, || 0);
        let incarnations = Arc::new(AtomicU32::new(0));
        let inc = incarnations.clone();
        let (done_tx, done_rx) = oneshot::channel();
        let mut done_tx = Some(done_tx);
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        spawn_supervised(
            &tokio::runtime::Handle::current(),
            entry.clone(),
            Restart::Always,
            move || {
                let mb = mb.clone();
                let seen = seen_tx.clone();
                inc.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut g = mb.open().await;
                    while let Some(m) = g.recv().await {
                        if m == 0 {
                            panic!("told to crash");
                        }
                        seen.send(m).unwrap();
                    }
                }
            },
            move |exit| {
                if let Some(t) = done_tx.take() {
                    let _ = t.send(exit);
                }
            },
        );
        addr.send(1).await.unwrap();
        addr.send(0).await.unwrap();
        addr.send(2).await.unwrap();
        assert_eq!(seen_rx.recv().await, Some(1));
        assert_eq!(seen_rx.recv().await, Some(2));
        assert_eq!(incarnations.load(Ordering::SeqCst), 2);
        assert_eq!(reg.snapshot()[0].restarts, 1);
        drop(addr);
        assert_eq!(done_rx.await.unwrap(), ActorExit::Finished);
    }

    #[tokio::test]
    async fn a_connection_task_is_listed_while_it_runs_and_its_panic_counts_for_its_parent() {
        let reg = Registry::new();
        let parent = reg.register("srv", "test", Placement::Runtime, || 0);
        let (go_tx, go_rx) = oneshot::channel::<bool>();
        let rt = tokio::runtime::Handle::current();
        let j = spawn_task(&rt, &reg, "srv.client0", "conn", Some("srv"), async move {
            if go_rx.await.unwrap() {
                panic!("client broke it");
            }
        });
        assert!(reg.get("srv.client0").is_some());
        go_tx.send(true).unwrap();
        j.await.unwrap();
        assert!(reg.get("srv.client0").is_none());
        assert_eq!(parent.restarts(), 1);
        // Aborting the handle ends the task and its line too.
        let j = spawn_task(
            &rt,
            &reg,
            "srv.client1",
            "conn",
            Some("srv"),
            std::future::pending(),
        );
        assert!(reg.get("srv.client1").is_some());
        j.abort();
        let _ = j.await;
        assert!(reg.get("srv.client1").is_none());
        assert_eq!(parent.restarts(), 1);
    }

    #[tokio::test]
    async fn non_restartable_panic_is_reported() {
        let reg = Registry::new();
        let entry = reg.register("vital", "test", Placement::Runtime, || 0);
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        spawn_supervised(
            &tokio::runtime::Handle::current(),
            entry,
            Restart::Never,
            || async { panic!("boom") },
            move |e| {
                let _ = tx.take().unwrap().send(e);
            },
        );
        match rx.await.unwrap() {
            ActorExit::Failed(r) => assert!(r.contains("vital") && r.contains("boom"), "{r}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(reg.snapshot()[0].state, ActorState::Failed);
    }
}
