//! The monitor: HMP (the `(qemu) ` prompt, over telnet, TCP, unix sockets or stdio) and
//! QMP (JSON), the way QEMU answers them.
//!
//! One command model serves both: [`commands`] holds the typed operations (each returns a
//! JSON value shaped like QEMU's QMP reply); QMP ([`qmp`]) executes them directly and HMP
//! ([`hmp`]) parses a command line, calls the same operations and formats their results
//! as QEMU's HMP prints them. Every connection is its own supervised actor ([`server`]);
//! one client closing or misbehaving affects no other.

pub mod commands;
pub mod dirty;
pub mod hmp;
mod memdump;
mod mux;
pub mod probe;
pub mod qmp;
pub mod readline;
pub mod server;

use std::sync::Arc;

use devices::memory::GuestMemoryMmap;
use serde_json::Value;

use crate::display::input::InputSink;
use crate::display::DisplayHandle;
use crate::runtime::Registry;
use crate::supervisor::SupervisorHandle;
use crate::vnc::VncHandle;

pub use mux::{spawn_mux, MuxHandle};
pub use probe::{Catalog, CpuDefinition, QomType};
pub use server::{start, MonitorBackend, MonitorSpec, Protocol, StartedMonitor};

/// QEMU version troupe reports (tools check it), and troupe's own in `package`.
pub const QEMU_VERSION: (u32, u32, u32) = (7, 2, 22);
pub const PACKAGE: &str = concat!("troupe ", env!("CARGO_PKG_VERSION"));

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

/// What the machine knows that the monitor reports (implemented by the binary, which
/// knows the PCI topology, drives and memory map).
pub trait MachineInfo: Send + Sync {
    /// `query-pci` return value (a list with one bus).
    fn query_pci(&self) -> Value;
    /// `query-block` return value.
    fn query_block(&self) -> Value;
    /// `query-blockstats` return value.
    fn query_blockstats(&self) -> Value;
    /// `info mtree [-f]` text.
    fn mtree(&self, flat: bool) -> String;
    /// `query-chardev` return value.
    fn query_chardev(&self) -> Value;
    /// `info network` text.
    fn network(&self) -> String;
    /// `announce-self`: send each NIC's announcement (and ask virtio drivers that can to
    /// announce themselves) on `schedule`; returns at once.
    fn announce_self(&self, schedule: Announce) -> Result<(), String>;
    /// `query-rx-filter [name]`: each NIC's receive filter; Err is QEMU's message.
    fn query_rx_filter(&self, name: Option<&str>) -> Result<Value, String>;
    /// `info usernet` text: each user-mode backend's connections and forwardings.
    fn usernet(&self) -> String;
    /// `set_link NAME on|off` (a NIC or its netdev): Err is the message to show.
    fn set_link(&self, name: &str, up: bool) -> Result<(), String>;
    /// `hostfwd_add [netdev] RULE` / `hostfwd_remove [netdev] RULE`: Ok is the text to
    /// show, Err the error message.
    fn hostfwd(&self, args: &[&str], add: bool) -> Result<String, String>;
    /// `netdev_add SPEC` (the `-netdev` syntax): Err is the message to show.
    fn netdev_add(&self, spec: &str) -> Result<(), String>;
    /// `netdev_del ID`: Err is the message to show.
    fn netdev_del(&self, id: &str) -> Result<(), String>;
    /// `info roms` text.
    fn roms(&self) -> String;
    /// `info qtree` text: `tree` (the supervisor's) in QEMU's shape, with what the
    /// machine knows now of each device (its BARs' current addresses).
    fn qtree(&self, tree: &crate::supervisor::DeviceTree) -> String;
    /// `info pic` text (the in-kernel PICs and IOAPIC).
    fn pic(&self) -> String;
    /// `info irq` text (interrupts raised per line).
    fn irq(&self) -> String;
    /// Read guest-physical memory as the CPU would see it (`xp`, `x`): device windows
    /// such as the VGA's through their models, RAM directly; false when `addr` is neither
    /// (the caller shows all-ones, as QEMU reads unassigned memory).
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Turn KVM's dirty log for guest RAM on (clearing it) or off (`calc-dirty-rate` in
    /// dirty-bitmap mode).
    fn dirty_log(&self, on: bool) -> Result<(), String>;
    /// Guest RAM pages written since the dirty log was turned on or last read.
    fn dirty_pages(&self) -> Result<u64, String>;
}

/// Changes the log filter: `log` passes directives that replace the added ones,
/// `trace-event` one `+target=level` to add.
pub type LogSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Everything a monitor session can reach.
#[derive(Clone)]
pub struct MonitorContext {
    pub supervisor: SupervisorHandle,
    pub registry: Registry,
    pub mem: GuestMemoryMmap,
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// Where `sendkey`, `send-key`, `mouse_move` and `mouse_button` go.
    pub input: Option<Arc<dyn InputSink>>,
    pub display: Option<DisplayHandle>,
    pub vnc: Option<VncHandle>,
    /// Replace the log filter (`log`, `trace-event`).
    pub log: Option<LogSetter>,
    pub info: Arc<dyn MachineInfo>,
    /// What the binary has (device and CPU models, machines, options), for probing.
    pub catalog: Arc<dyn Catalog>,
    /// (socket, core, thread) of each vCPU, by index.
    pub topology: Vec<(u32, u32, u32)>,
    /// Serialises key sequences (`sendkey` holds keys for a while) so two never interleave.
    pub keys: Arc<tokio::sync::Mutex<()>>,
    /// Mouse buttons currently held (`mouse_button`), shared by every session.
    pub buttons: Arc<std::sync::atomic::AtomicU8>,
    /// The VM's dirty-rate measurement (`calc-dirty-rate`), shared by every session.
    pub dirty_rate: dirty::SharedDirtyRate,
}
