//! Request/reply: a request message carries a [`Reply`] the actor answers exactly once.
//!
//! A caller that went away before the answer is not an error for the actor: `send` on a
//! dropped receiver is silently ignored.

use tokio::sync::oneshot;

use super::ActorError;

/// The answering half carried inside a request message.
#[derive(Debug)]
pub struct Reply<T>(oneshot::Sender<T>);

/// The waiting half kept by the caller.
#[derive(Debug)]
pub struct ReplyReceiver<T> {
    rx: oneshot::Receiver<T>,
    actor: String,
}

impl<T> Reply<T> {
    /// Answer the request. Works from any thread, sync or async.
    pub fn send(self, value: T) {
        let _ = self.0.send(value);
    }
}

impl<T> ReplyReceiver<T> {
    /// Wait for the answer; `Gone` if the actor dropped the request unanswered.
    pub async fn recv(self) -> Result<T, ActorError> {
        self.rx.await.map_err(|_| ActorError::Gone(self.actor))
    }

    /// Wait from a plain thread (never from a vCPU thread or inside the runtime).
    pub fn blocking_recv(self) -> Result<T, ActorError> {
        self.rx
            .blocking_recv()
            .map_err(|_| ActorError::Gone(self.actor))
    }
}

/// A reply pair for a request to `actor`.
pub fn reply_channel<T>(actor: &str) -> (Reply<T>, ReplyReceiver<T>) {
    let (tx, rx) = oneshot::channel();
    (
        Reply(tx),
        ReplyReceiver {
            rx,
            actor: actor.to_string(),
        },
    )
}
