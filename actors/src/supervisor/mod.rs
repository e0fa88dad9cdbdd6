//! The supervisor: owns the VM lifecycle and turns events into decisions.
//!
//! States follow QEMU's run states: `prelaunch` (created with `-S`), `running`, `paused`,
//! `shutdown`, `internal-error`. Commands arrive as [`SupervisorMsg`]s from the monitor;
//! facts arrive as [`VmEvent`]s from devices, vCPUs and failed actors. Every transition is
//! broadcast as a [`VmNotification`] (what QMP turns into `STOP`, `RESUME`, `RESET`,
//! `SHUTDOWN`, `POWERDOWN` events) *before* the command that caused it is answered.
//!
//! `run` returns how the process should exit: QEMU's status codes (0 on power-off or
//! `quit`, `(v << 1) | 1` for isa-debug-exit, 1 on a fatal fault).

pub mod hotplug;
mod lifecycle;
pub mod tree;

pub use hotplug::{Hotplug, HotplugError, Plug};
pub use lifecycle::{
    error_chain, ExitReason, Machine, RunState, Supervisor, SupervisorConfig, SupervisorHandle,
    SupervisorMsg, VmNotification,
};
pub use tree::{
    AnonIds, BackendKind, BarSpace, DeviceTree, Ioeventfd, Node, Placement, Resource, Teardown,
    TreeError, BACKENDS, SYSTEM_BUS,
};
