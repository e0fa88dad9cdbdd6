//! Bounded mailboxes whose receiving end survives an actor restart.
//!
//! The receiver lives behind an async mutex: a running actor holds the lock for as long as
//! it runs, and a panicking actor drops it while unwinding, so the restarted actor picks up
//! the same mailbox with every queued message still in it. Handles never notice.

use std::sync::Arc;

use tokio::sync::{mpsc, Mutex, OwnedMutexGuard};

use super::ActorError;

/// The sending side of a mailbox: cheap to clone, held inside an actor's handle.
pub struct Addr<M> {
    id: Arc<str>,
    tx: mpsc::Sender<M>,
}

impl<M> Clone for Addr<M> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            tx: self.tx.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Addr<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Addr({})", self.id)
    }
}

impl<M: Send + 'static> Addr<M> {
    /// The id of the actor this address reaches.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Queue a message, waiting for room. Fails only when the actor is gone.
    pub async fn send(&self, msg: M) -> Result<(), ActorError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| ActorError::Gone(self.id.to_string()))
    }

    /// Queue a message if there is room now; never waits (usable from vCPU threads).
    pub fn try_send(&self, msg: M) -> Result<(), ActorError> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ActorError::Busy(self.id.to_string()),
            mpsc::error::TrySendError::Closed(_) => ActorError::Gone(self.id.to_string()),
        })
    }

    /// Queue a message from a thread outside the runtime, waiting for room.
    pub fn blocking_send(&self, msg: M) -> Result<(), ActorError> {
        self.tx
            .blocking_send(msg)
            .map_err(|_| ActorError::Gone(self.id.to_string()))
    }

    /// Messages queued and not yet taken by the actor.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// True once the mailbox has been dropped for good.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The receiving side, shared between successive incarnations of one actor.
pub struct Mailbox<M> {
    rx: Arc<Mutex<mpsc::Receiver<M>>>,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Self {
            rx: self.rx.clone(),
        }
    }
}

/// The mailbox as held by one running incarnation.
pub struct MailboxGuard<M> {
    rx: OwnedMutexGuard<mpsc::Receiver<M>>,
}

impl<M> Mailbox<M> {
    /// Take the mailbox for this incarnation of the actor.
    pub async fn open(&self) -> MailboxGuard<M> {
        MailboxGuard {
            rx: self.rx.clone().lock_owned().await,
        }
    }
}

impl<M> MailboxGuard<M> {
    /// The next message, or None when every handle has been dropped.
    pub async fn recv(&mut self) -> Option<M> {
        self.rx.recv().await
    }

    /// A message if one is queued now.
    pub fn try_recv(&mut self) -> Option<M> {
        self.rx.try_recv().ok()
    }
}

/// A new bounded mailbox for actor `id` with room for `capacity` messages.
pub fn mailbox<M>(id: &str, capacity: usize) -> (Addr<M>, Mailbox<M>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        Addr {
            id: Arc::from(id),
            tx,
        },
        Mailbox {
            rx: Arc::new(Mutex::new(rx)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_survive_a_new_incarnation() {
        let (addr, mb) = mailbox::<u32>("t", 4);
        addr.send(1).await.unwrap();
        addr.send(2).await.unwrap();
        {
            let mut g = mb.open().await;
            assert_eq!(g.recv().await, Some(1));
        }
        let mut g = mb.open().await;
        assert_eq!(g.recv().await, Some(2));
        assert_eq!(addr.depth(), 0);
    }

    #[tokio::test]
    async fn try_send_reports_busy_when_full() {
        let (addr, _mb) = mailbox::<u32>("full", 1);
        addr.try_send(1).unwrap();
        assert_eq!(addr.try_send(2), Err(ActorError::Busy("full".into())));
        assert_eq!(addr.depth(), 1);
    }

    #[tokio::test]
    async fn send_to_dropped_mailbox_is_gone() {
        let (addr, mb) = mailbox::<u32>("dead", 1);
        drop(mb);
        assert_eq!(addr.send(1).await, Err(ActorError::Gone("dead".into())));
    }
}
