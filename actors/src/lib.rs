//! troupe's actors: how things run and talk.
//!
//! - [`runtime`]: mailboxes, handles, request/reply, supervised spawning, the registry.
//! - [`bus`]: PIO/MMIO address maps that vCPU exits dispatch through.
//! - [`vcpu`]: pinned vCPU threads running `KVM_RUN`, and their saveable state.
//! - [`kvm_state`]: the VM-wide KVM state (PICs, IOAPIC, PIT, kvmclock) as sections.
//! - [`events`]: what devices and vCPUs tell the supervisor.
//! - [`supervisor`]: the VM lifecycle.
//! - [`chardev`]: character backends (stdio, files, sockets, pty).
//! - [`host`]: actors hosting `devices` models (serial, ...).
//! - [`display`]: the console surface, its dirty tracking, screendump, input events.
//! - [`vnc`]: the VNC (RFB) server.

pub mod block;
pub mod bus;
pub mod chardev;
pub mod coalesced;
pub mod display;
pub mod events;
pub mod host;
pub mod irq;
pub mod kvm_state;
pub mod migration;
pub mod monitor;
pub mod net;
pub mod runtime;
pub mod sandbox;
pub mod supervisor;
pub mod vcpu;
pub mod virtio;
pub mod vnc;

pub use vcpu::thread_allowed_cores as allowed_cores;

/// Print a line for the user on stderr. Never panics: stderr may be a closed pipe, and a
/// failed diagnostic must not take an actor (or the VM) down with it.
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
