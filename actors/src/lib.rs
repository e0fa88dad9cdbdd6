//! troupe's actors: how things run and talk.
//!
//! - [`runtime`]: mailboxes, handles, request/reply, supervised spawning, the registry.
//! - [`bus`]: PIO/MMIO address maps that vCPU exits dispatch through.
//! - [`vcpu`]: pinned vCPU threads running `KVM_RUN`.
//! - [`events`]: what devices and vCPUs tell the supervisor.
//! - [`supervisor`]: the VM lifecycle.
//! - [`chardev`]: character backends (stdio, files, sockets, pty).
//! - [`host`]: actors hosting `devices` models (serial, ...).
//! - [`display`]: the console surface, its dirty tracking, screendump, input events.
//! - [`vnc`]: the VNC (RFB) server.

pub mod bus;
pub mod chardev;
pub mod display;
pub mod events;
pub mod irq;
pub mod runtime;
pub mod supervisor;
pub mod vcpu;
pub mod vnc;

pub use vcpu::thread_allowed_cores as allowed_cores;
