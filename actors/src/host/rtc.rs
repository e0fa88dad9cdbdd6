//! The RTC host: the MC146818 model on ports 0x70–0x71, and a timer actor that calls
//! `Rtc::tick` when the model's next interrupt is due (periodic, update-ended, alarm), so
//! IRQ 8 arrives on time even when the guest does not poll.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::rtc::Rtc;

use crate::bus::{lock, Locked};
use crate::runtime::{spawn_supervised, Placement, Registry, Restart};

/// How long the timer sleeps when no RTC interrupt is enabled (it re-checks, since the
/// guest may enable one at any time).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Start the RTC's timer actor; returns the bus handler for ports 0x70–0x71.
pub fn start_rtc(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    model: Rtc,
    monotonic_ns: impl Fn() -> u64 + Send + Sync + 'static,
) -> Arc<Locked<Rtc>> {
    let model = Arc::new(Mutex::new(model));
    let entry = registry.register("rtc", "rtc", Placement::Runtime, || 0);
    let m = model.clone();
    let now = Arc::new(monotonic_ns);
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || {
            let m = m.clone();
            let now = now.clone();
            async move {
                loop {
                    let next = lock(&m).next_event_ns();
                    let wait = match next {
                        Some(t) => Duration::from_nanos(t.saturating_sub(now())),
                        None => IDLE_POLL,
                    };
                    tokio::time::sleep(wait.min(IDLE_POLL)).await;
                    lock(&m).tick();
                }
            }
        },
        |_| {},
    );
    Locked::new(model)
}
