//! The RTC host: the MC146818 model on ports 0x70–0x71, and a timer actor that calls
//! `Rtc::tick` when the model's next interrupt is due (periodic, update-ended, alarm), so
//! IRQ 8 arrives on time even when the guest does not poll. The timer actor also answers
//! the model's `Save`/`Restore` (section `rtc`), so no tick runs in the middle of one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::rtc::Rtc;
use devices::BusDevice;

use tokio::sync::Notify;

use crate::bus::{lock, BusHandler};
use crate::host::effects::{Hosted, Outlets};
use crate::runtime::{
    find_section, only_sections, spawn_supervised, Control, ControlError, ControlHandle, Placement,
    Registry, Restart,
};

/// The actor's id, and its section's.
const ID: &str = "rtc";

fn not_paused(what: &'static str) -> ControlError {
    ControlError::NotPaused {
        actor: ID.into(),
        what,
    }
}

/// Restore the model from its section (the timer actor, paused: no tick runs meanwhile).
fn restore(model: &Mutex<Rtc>, sections: &[devices::Section]) -> Result<(), devices::StateError> {
    only_sections(sections, &[ID])?;
    devices::restore_section(&mut *lock(model), find_section(sections, ID)?)
}

/// Ports 0x70–0x71: the model behind its mutex; a write wakes the timer actor, since it
/// may enable an interrupt (or change when the next one is due).
pub struct RtcPort {
    /// The model and IRQ 8, driven once the model is unlocked.
    pub model: Arc<Hosted<Rtc>>,
    wake: Arc<Notify>,
    /// The timer actor's control mailbox: paused, it raises no interrupt.
    pub control: ControlHandle,
}

impl BusHandler for RtcPort {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        self.model.run(|m| m.read(offset, data));
    }
    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        self.model.run(|m| m.write(offset, data));
        self.wake.notify_one();
    }
}

/// Start the RTC's timer actor; returns the bus handler for ports 0x70–0x71. With no
/// interrupt enabled the actor sleeps until the guest writes a register.
pub fn start_rtc(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    model: Rtc,
    irq: Arc<dyn devices::IrqLine>,
    monotonic_ns: impl Fn() -> u64 + Send + Sync + 'static,
) -> Arc<RtcPort> {
    let outlets = Outlets {
        lines: vec![irq],
        out: None,
    };
    let model = Arc::new(Hosted::new(model, outlets));
    let wake = Arc::new(Notify::new());
    let (addr, mailbox) = crate::runtime::mailbox::<Control>(ID, 8);
    let depth = addr.clone();
    let control = ControlHandle::new(ID, move |c| addr.try_send(c));
    let entry = registry.register(ID, "rtc", Placement::Runtime, move || depth.depth());
    let m = model.clone();
    let w = wake.clone();
    let now = Arc::new(monotonic_ns);
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || {
            let m = m.clone();
            let w = w.clone();
            let now = now.clone();
            let mailbox = mailbox.clone();
            async move {
                let mut mb = mailbox.open().await;
                let mut paused = false;
                loop {
                    let next = if paused {
                        None
                    } else {
                        lock(m.model()).next_event_ns()
                    };
                    let wait = async {
                        match next {
                            Some(t) => {
                                let wait = Duration::from_nanos(t.saturating_sub(now()));
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = w.notified() => {}
                                }
                            }
                            // Paused, a register write (a reset) must not start a tick.
                            None if paused => std::future::pending().await,
                            None => w.notified().await,
                        }
                    };
                    tokio::select! {
                        _ = wait => {}
                        msg = mb.recv() => {
                            match msg {
                                // Ticks run to completion inside this task, so none
                                // is half done here.
                                Some(Control::Pause(reply)) => {
                                    paused = true;
                                    reply.send(());
                                }
                                Some(Control::Resume) => {
                                    paused = false;
                                    // IRQ 8 as a restore left it.
                                    m.flush();
                                }
                                Some(Control::Save(reply)) => reply.send(if paused {
                                    Ok(vec![devices::save_section(ID, &*lock(m.model()))])
                                } else {
                                    Err(not_paused("save"))
                                }),
                                Some(Control::Restore(sections, reply)) => reply.send(if paused {
                                    restore(m.model(), &sections).map_err(|source| {
                                        ControlError::Restore { actor: ID.into(), source }
                                    })
                                } else {
                                    Err(not_paused("restore"))
                                }),
                                None => return,
                            }
                            continue;
                        }
                    }
                    m.run(Rtc::tick);
                }
            }
        },
        |_| {},
    );
    Arc::new(RtcPort {
        model,
        wake,
        control,
    })
}
