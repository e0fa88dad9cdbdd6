//! NIC backends: where a NIC's frames go on the host — a tap ([`tap`]), a tap added to a
//! host bridge ([`bridge`]), user-mode networking on libslirp ([`slirp`]), or a TCP
//! connection to another VMM ([`socket`]).

pub mod backend;
pub mod bridge;
pub mod slirp;
pub mod socket;
pub mod tap;

/// When `announce-self` sends announcements: `rounds` times, the first at once, the next
/// after `initial_ms`, each later gap `step_ms` longer than the one before, at most
/// `max_ms`; only on the NICs in `interfaces` when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub rounds: u64,
    pub step_ms: u64,
    pub interfaces: Option<Vec<String>>,
}

impl Announce {
    /// After an incoming migration: every NIC, on the schedule of the migration's
    /// `announce-*` parameters.
    pub fn after_migration(p: &crate::migration::Parameters) -> Self {
        Self {
            initial_ms: p.announce_initial,
            max_ms: p.announce_max,
            rounds: p.announce_rounds,
            step_ms: p.announce_step,
            interfaces: None,
        }
    }

    /// The gap before each round after the first, in order.
    pub fn gaps(&self) -> impl Iterator<Item = std::time::Duration> + '_ {
        let mut gap = self.initial_ms.min(self.max_ms);
        (1..self.rounds).map(move |_| {
            let g = gap;
            gap = (gap + self.step_ms).min(self.max_ms);
            std::time::Duration::from_millis(g)
        })
    }
}
