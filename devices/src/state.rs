//! Versioned, serializable device state for migration and savevm.
//!
//! Every model implements [`Snapshot`] with no default methods, so a forgotten impl is a
//! compile error rather than empty state migrating silently. State holds guest-visible
//! registers only, never host resources.

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{kind}: state version {found} is not supported (this build reads {supported})")]
    Version {
        kind: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("{kind}: invalid state: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

pub trait Snapshot {
    type State: Serialize + DeserializeOwned;
    /// Stable name of the model in a migration stream (`"serial"`, `"i8042"`).
    const KIND: &'static str;
    /// Bumped whenever `State` changes shape.
    const VERSION: u32;
    fn save(&self) -> Self::State;
    fn restore(&mut self, state: Self::State) -> Result<(), StateError>;
}
