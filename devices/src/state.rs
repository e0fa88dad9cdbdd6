//! Versioned, serializable device state for migration and savevm.
//!
//! Every model implements [`Snapshot`] with no default methods, so a forgotten impl is a
//! compile error rather than empty state migrating silently. State holds guest-visible
//! registers only, never host resources.
//!
//! What travels (in a migration stream, a savevm area, or between a `Save` and a `Restore`
//! message) is a [`Section`]: the state of one actor or model under the id it has in the
//! supervisor's device tree, stamped with the model's `KIND` and `VERSION`. Restoring
//! checks both, so a section from another model or another version is a clear error naming
//! the id, never state poured into the wrong shape. The vCPU and the VM-wide KVM state
//! (irqchip, PIT, clock) use the same envelope through [`Section::new`]/[`Section::decode`].

use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{kind}: state version {found} is not supported (this build reads {supported})")]
    Version {
        kind: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("section '{id}' holds {found} state, not {expected}")]
    Kind {
        id: String,
        expected: &'static str,
        found: String,
    },
    #[error("{kind}: invalid state: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

impl StateError {
    /// A state of model `kind` that fails a check (`reason` names the field and value).
    pub fn invalid(kind: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            kind,
            reason: reason.into(),
        }
    }

    /// The same error as found in part `field` of model `kind`'s state (a nested
    /// configuration space, a channel, a drive).
    pub fn within(self, kind: &'static str, field: &str) -> Self {
        let reason = match self {
            Self::Invalid { reason, .. } => reason,
            other => other.to_string(),
        };
        Self::Invalid {
            kind,
            reason: format!("{field}: {reason}"),
        }
    }
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

/// One actor's or model's saved state, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// The device-tree id it was saved under (`serial0`, `vcpu1`, `/machine/peripheral/nic0`).
    pub id: String,
    /// The model's [`Snapshot::KIND`].
    pub kind: String,
    /// The model's [`Snapshot::VERSION`] when it was saved.
    pub version: u32,
    /// The state itself.
    pub state: serde_json::Value,
}

impl Section {
    /// Wrap a state value saved by model `kind` at `version`.
    pub fn new<T: Serialize>(
        id: &str,
        kind: &'static str,
        version: u32,
        state: &T,
    ) -> Result<Self, StateError> {
        let state = serde_json::to_value(state).map_err(|e| StateError::Invalid {
            kind,
            reason: format!("cannot encode: {e}"),
        })?;
        Ok(Self {
            id: id.to_string(),
            kind: kind.to_string(),
            version,
            state,
        })
    }

    /// The state inside, if it was saved by model `kind` at `version`.
    pub fn decode<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        version: u32,
    ) -> Result<T, StateError> {
        if self.kind != kind {
            return Err(StateError::Kind {
                id: self.id.clone(),
                expected: kind,
                found: self.kind.clone(),
            });
        }
        if self.version != version {
            return Err(StateError::Version {
                kind,
                found: self.version,
                supported: version,
            });
        }
        serde_json::from_value(self.state.clone()).map_err(|e| StateError::Invalid {
            kind,
            reason: format!("section '{}': {e}", self.id),
        })
    }
}

/// Save a model into a section under `id`.
pub fn save_section<S: Snapshot>(id: &str, model: &S) -> Section {
    // A derived Serialize of plain registers into a JSON value cannot fail (no maps with
    // non-string keys are allowed in State types; the round-trip tests would catch one).
    Section::new(id, S::KIND, S::VERSION, &model.save()).unwrap_or_else(|e| {
        panic!("{}: state does not encode as a section: {e}", S::KIND);
    })
}

/// Restore a model from a section, checking its kind and version.
pub fn restore_section<S: Snapshot>(model: &mut S, section: &Section) -> Result<(), StateError> {
    model.restore(section.decode(S::KIND, S::VERSION)?)
}

/// The shared round-trip check every model's test uses: `original` (driven into an
/// interesting state by the test) is saved, the section goes through its byte encoding,
/// is restored into `fresh` (a model as built at power-on), and `fresh` must then save
/// exactly what `original` did. Returns the restored model for further checks through its
/// registers. A section from a newer version or another model must be refused.
pub fn check_roundtrip<S: Snapshot>(original: &S, mut fresh: S) -> S {
    let section = save_section("dev0", original);
    let bytes = serde_json::to_vec(&section).expect("a section encodes");
    let back: Section = serde_json::from_slice(&bytes).expect("a section decodes");
    assert_eq!(back, section, "{}: the section changed in transit", S::KIND);
    restore_section(&mut fresh, &back)
        .unwrap_or_else(|e| panic!("{}: restoring its own section failed: {e}", S::KIND));
    let again = save_section("dev0", &fresh);
    assert_eq!(
        again.state,
        section.state,
        "{}: restored model saves different state",
        S::KIND
    );
    let mut newer = back.clone();
    newer.version = S::VERSION + 1;
    assert!(
        matches!(
            restore_section(&mut fresh, &newer),
            Err(StateError::Version { .. })
        ),
        "{}: a section from version {} was not refused",
        S::KIND,
        S::VERSION + 1
    );
    let mut other = back;
    other.kind = format!("not-{}", S::KIND);
    assert!(
        matches!(
            restore_section(&mut fresh, &other),
            Err(StateError::Kind { .. })
        ),
        "{}: a section of another kind was not refused",
        S::KIND
    );
    fresh
}
