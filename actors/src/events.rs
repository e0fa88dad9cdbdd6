//! Things that happened, posted to the supervisor: device requests (reset, power-off,
//! debug-exit), vCPU faults, actor failures. Past-tense facts, not commands.
//!
//! Posting never blocks (vCPU threads post too); the queue is unbounded because events are
//! rare and the supervisor coalesces repeats.

use devices::{SystemEvent, SystemEvents};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// A device asked the machine to reset, power off or exit.
    System(SystemEvent),
    /// A vCPU hit a triple fault (KVM_EXIT_SHUTDOWN): a PC resets.
    TripleFault { cpu: u32 },
    /// A vCPU stopped on something KVM could not handle (internal error, failed entry).
    /// `report` is the QEMU-style text already printed on stderr.
    VcpuFault { cpu: u32, report: String },
    /// A non-restartable actor failed; the VM must stop.
    ActorFailed(String),
}

/// The posting end, cheap to clone into every device and vCPU.
#[derive(Clone, Debug)]
pub struct EventTx(mpsc::UnboundedSender<VmEvent>);

pub type EventRx = mpsc::UnboundedReceiver<VmEvent>;

pub fn event_channel() -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    (EventTx(tx), rx)
}

impl EventTx {
    pub fn post(&self, ev: VmEvent) {
        // The supervisor being gone means the VM is shutting down: nothing to tell.
        let _ = self.0.send(ev);
    }
}

impl SystemEvents for EventTx {
    fn post(&self, event: SystemEvent) {
        EventTx::post(self, VmEvent::System(event));
    }
}
