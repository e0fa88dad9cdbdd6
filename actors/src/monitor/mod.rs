//! The monitor: HMP (the `(qemu) ` prompt, over telnet, TCP, unix sockets or stdio) and
//! QMP (JSON), the way QEMU answers them.
//!
//! One command model serves both: [`commands`] holds the typed operations (each returns a
//! JSON value shaped like QEMU's QMP reply); QMP ([`qmp`]) executes them directly and HMP
//! ([`hmp`]) parses a command line, calls the same operations and formats their results
//! as QEMU's HMP prints them. Every connection is its own supervised actor ([`server`]);
//! one client closing or misbehaving affects no other. The machine is reached through
//! actors only: the supervisor (lifecycle, the device tree, `netdev_add`) and the
//! [`handles`] of the machine's sides (network, drives, chipset, memory).

pub mod commands;
pub mod dirty;
pub mod fdpass;
pub mod handles;
pub mod hmp;
pub mod jobs;
pub mod memdev;
mod memdump;
pub mod migrate;
mod mux;
pub mod probe;
pub mod qmp;
mod qom;
pub mod readline;
pub mod server;
pub mod tree_view;

use std::sync::Arc;

use devices::memory::GuestMemoryMmap;

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

pub use crate::net::Announce;

/// Which drive a removable-media command names: QMP's `device` (the drive's id, e.g.
/// `ide1-cd0`) or `id` (the qdev id of its front end), exactly one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaTarget {
    pub device: Option<String>,
    pub id: Option<String>,
}

/// A removable-media operation, as QMP names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaOp {
    /// `eject`: open the tray (`force` past the guest's lock) and take the medium out.
    Eject { force: bool },
    /// `blockdev-open-tray`.
    OpenTray { force: bool },
    /// `blockdev-close-tray`.
    CloseTray,
    /// `blockdev-remove-medium` (the tray must be open).
    RemoveMedium,
    /// `blockdev-insert-medium` of a node made with `blockdev-add`.
    InsertMedium { node: String },
    /// `blockdev-change-medium` / HMP `change`: open `filename` (as `format`, probed if
    /// None) and swap it in.
    Change {
        filename: String,
        format: Option<String>,
        /// `retain`, `read-only` or `read-write` (None: retain).
        read_only_mode: Option<String>,
        force: bool,
    },
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
    /// Guest memory (`xp`, `x`) and the dirty log.
    pub memory: handles::MemoryHandle,
    /// The NICs and network backends.
    pub net: handles::NetHandle,
    /// The drives.
    pub drives: handles::DrivesHandle,
    /// The board: interrupt controllers, memory map, ROMs, chardevs.
    pub chipset: handles::ChipsetHandle,
    /// What the binary has (device and CPU models, machines, options), for probing.
    pub catalog: Arc<dyn Catalog>,
    /// (socket, core, thread) of each vCPU, by index.
    pub topology: Vec<(u32, u32, u32)>,
    /// (socket, core, thread) of every possible CPU (`-smp maxcpus=`), by index.
    pub cpu_slots: Vec<(u32, u32, u32)>,
    /// The QOM type of the vCPUs (`qemu64-x86_64-cpu`), the one `device_add` takes.
    pub cpu_type: String,
    /// Serialises key sequences (`sendkey` holds keys for a while) so two never interleave.
    pub keys: Arc<tokio::sync::Mutex<()>>,
    /// Mouse buttons currently held (`mouse_button`), shared by every session.
    pub buttons: Arc<std::sync::atomic::AtomicU8>,
    /// The VM's dirty-rate measurement (`calc-dirty-rate`), shared by every session.
    pub dirty_rate: dirty::SharedDirtyRate,
    /// Background jobs (`snapshot-save`...), shared by every session.
    pub jobs: jobs::SharedJobs,
    /// The UHCI controller and its devices (`info usb`, `query-mice`), if there is one.
    pub usb: Option<Arc<crate::host::usb::UhciHost>>,
    /// The `virtio-balloon-pci`, if there is one.
    pub balloon: Option<Arc<dyn crate::virtio::balloon::BalloonControl>>,
    /// Descriptors clients passed and named with `getfd`, shared by every session.
    pub fds: Arc<fdpass::NamedFds>,
    /// Memory backends and DIMMs (memory hotplug), if the machine has them.
    pub memory_devices: Option<Arc<dyn memdev::MemoryDevices>>,
}
