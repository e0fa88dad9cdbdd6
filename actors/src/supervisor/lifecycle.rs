//! Lifecycle state machine and the supervisor actor.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::SystemTime;

use devices::{Section, SystemEvent};
use tokio::sync::broadcast;
use tracing::Instrument;

use super::hotplug::{self, Hotplug, HotplugError, Plug};
use super::tree::DeviceTree;
use crate::events::{EventRx, VmEvent};
use crate::runtime::{reply_channel, ActorError, Addr, Mailbox, MessageKind, Reply};
use crate::vcpu::{VcpuBootState, VcpuHandle};

/// QEMU's run states that troupe reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Prelaunch,
    Running,
    Paused,
    Shutdown,
    InternalError,
    /// Waiting for an incoming migration (`-incoming`).
    InMigrate,
    /// Paused for a migration's switch-over.
    FinishMigrate,
    /// The VM moved away (a completed outgoing migration).
    PostMigrate,
}

impl RunState {
    /// The name QMP `query-status` reports.
    pub fn qmp_name(self) -> &'static str {
        match self {
            Self::Prelaunch => "prelaunch",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Shutdown => "shutdown",
            Self::InternalError => "internal-error",
            Self::InMigrate => "inmigrate",
            Self::FinishMigrate => "finish-migrate",
            Self::PostMigrate => "postmigrate",
        }
    }

    /// The word HMP `info status` prints after `VM status: `.
    pub fn hmp_name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Prelaunch => "paused (prelaunch)",
            Self::Paused => "paused",
            Self::Shutdown => "paused (shutdown)",
            Self::InternalError => "paused (internal-error)",
            Self::InMigrate => "paused (inmigrate)",
            Self::FinishMigrate => "paused (finish-migrate)",
            Self::PostMigrate => "paused (postmigrate)",
        }
    }
}

/// What the rest of the machine must do on the supervisor's behalf.
pub trait Machine: Send + Sync + 'static {
    /// Put devices in their power-on state and reload firmware or kernel; return each
    /// vCPU's boot state, in vCPU index order. Called with every vCPU paused.
    fn reset(&self) -> Result<Vec<VcpuBootState>, String>;
    /// Press the ACPI power button. False when the machine has no way to ask the guest.
    fn power_button(&self) -> bool;
    /// The VM-wide state the hypervisor keeps outside the vCPUs and devices (the in-kernel
    /// irqchip, PIT and clock: `kvm_state::save_vm_state`), as sections. Called with every
    /// vCPU paused. Guest RAM is not part of it (a migration streams RAM on its own).
    fn save_vm_state(&self) -> Result<Vec<Section>, String>;
    /// Load what [`Machine::save_vm_state`] saved; called after the vCPUs are restored and
    /// before they resume (the clock goes last).
    fn restore_vm_state(&self, sections: &[Section]) -> Result<(), String>;
    /// The vCPUs have just been paused: hold the guest's clock still (QEMU's kvmclock
    /// does not count time a VM spends stopped).
    fn clock_stop(&self) {}
    /// The vCPUs are about to run again: restart the guest's clock where it stopped.
    fn clock_start(&self) {}
    /// Guest RAM, for a migration stream (None: this machine cannot migrate).
    fn ram(&self) -> Option<devices::memory::GuestMemoryMmap> {
        None
    }
    /// Start (afresh) or stop recording which guest RAM pages are written, by the vCPUs
    /// and by troupe's own devices.
    fn log_dirty(&self, _on: bool) -> Result<(), String> {
        Err("this machine cannot log guest RAM writes".into())
    }
    /// The pages written since logging started or since the last call.
    fn take_dirty(&self) -> Result<crate::migration::source::DirtyBitmap, String> {
        Err("this machine cannot log guest RAM writes".into())
    }
    /// Device memory outside guest RAM that migrates with it (video memory).
    fn device_ram(&self) -> Vec<Arc<dyn crate::migration::DeviceRam>> {
        Vec::new()
    }
    /// Tell the network where the guest is now (after an incoming migration): QEMU's
    /// self-announcements out of every NIC on schedule `a`.
    fn announce(&self, _a: crate::net::Announce) -> Result<(), String> {
        Ok(())
    }
}

/// Broadcast to monitors (QMP events) as the lifecycle changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmNotification {
    Stop,
    Resume,
    /// `guest`: the guest asked; `reason` as QMP spells it (`guest-reset`,
    /// `host-qmp-system-reset`, ...).
    Reset {
        guest: bool,
        reason: &'static str,
    },
    Shutdown {
        guest: bool,
        reason: &'static str,
    },
    Powerdown,
    /// Free-form events other actors publish through the supervisor (DEVICE_DELETED ...):
    /// (event name, JSON data).
    Other {
        event: String,
        data: String,
    },
}

/// Why `Supervisor::run` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (status 0).
    PoweredOff,
    /// `quit` from a monitor (status 0).
    Quit,
    /// The guest reset with `-no-reboot` (status 0).
    ResetNoReboot,
    /// isa-debug-exit wrote this value (status `(v << 1) | 1`).
    DebugExit(u32),
    /// A vCPU faulted and nothing is attached to inspect it (status 1).
    Fault(String),
    /// A vital actor failed (status 1).
    ActorFailed(String),
    /// Host signal (SIGINT/SIGTERM) (status 0 like QEMU: "terminating on signal").
    Signal(i32),
    /// An incoming migration could not be loaded (status 1).
    IncomingFailed(String),
    /// What the command line asked for at start failed (`-loadvm`; status 1).
    StartFailed(String),
}

impl ExitReason {
    pub fn status(&self) -> i32 {
        match self {
            Self::PoweredOff | Self::Quit | Self::ResetNoReboot | Self::Signal(_) => 0,
            Self::DebugExit(v) => ((v << 1) | 1) as i32,
            Self::Fault(_)
            | Self::ActorFailed(_)
            | Self::IncomingFailed(_)
            | Self::StartFailed(_) => 1,
        }
    }
}

/// Requests to the supervisor.
pub enum SupervisorMsg {
    Status(Reply<RunState>),
    /// `stop`: pause every vCPU.
    Stop(Reply<Result<(), String>>),
    /// `cont`: resume (refused in `internal-error`/`shutdown` unless reset, like QEMU).
    Cont(Reply<Result<(), String>>),
    /// `system_reset` from a host interface.
    Reset(Reply<Result<(), String>>),
    /// `system_powerdown`.
    Powerdown(Reply<Result<(), String>>),
    /// `quit`.
    Quit(Reply<()>),
    /// A host signal asks the process to end.
    Signal(i32),
    /// Subscribe to lifecycle notifications.
    Subscribe(Reply<broadcast::Receiver<(SystemTime, VmNotification)>>),
    /// Publish a notification on behalf of another actor.
    Publish(VmNotification),
    /// The vCPU handles (for `info cpus`, `info registers`, pinning).
    Vcpus(Reply<Vec<VcpuHandle>>),
    /// The device tree as it is now (for `info qtree`, `info actors`).
    Tree(Reply<DeviceTree>),
    /// The whole machine's state but RAM (paused or prelaunch only).
    SaveMachine(Reply<Result<Vec<Section>, String>>),
    /// Replace the whole machine's state but RAM (paused or prelaunch only).
    RestoreMachine(Vec<Section>, Reply<Result<(), String>>),
    /// `migrate URI`: start an outgoing migration (answers once it started); with the
    /// descriptor `fd:NAME` names.
    Migrate(String, Option<OwnedFd>, Reply<Result<(), String>>),
    /// `migrate-incoming URI` after `-incoming defer`.
    MigrateIncoming(String, Reply<Result<(), String>>),
    /// From the migration thread: pause everything and hand over the machine's state.
    SwitchOver(Reply<Result<Vec<Section>, String>>),
    /// From the migration thread: how the outgoing migration ended.
    MigrationEnded(Result<(), crate::migration::source::Failure>),
    /// From the incoming thread: the stream is read; restore these and run.
    IncomingLoaded(Vec<Section>, Reply<Result<(), String>>),
    /// From the incoming thread: the stream could not be read.
    IncomingFailed(String),
    /// Starting as the command line asked failed: end the VM (status 1).
    StartFailed(String),
    /// The migration parameters, capabilities and progress (for the monitor).
    Migration(Reply<crate::migration::SharedMigration>),
    /// `savevm`: the stopped machine's whole state as one stream, and the VM clock (ns).
    VmState(Reply<Result<(Vec<u8>, u64), String>>),
    /// `loadvm`: put back a state [`SupervisorMsg::VmState`] gave (the VM must be stopped).
    LoadVmState(Vec<u8>, Reply<Result<(), String>>),
    /// Add a node to the device tree (`netdev_add`), built by the machine.
    AddNode(Plug, Reply<Result<(), HotplugError>>),
    /// Take a node (by tree id) out of the device tree and tear down what it placed
    /// (`netdev_del`).
    RemoveNode(String, Reply<Result<(), HotplugError>>),
    /// `device_del`: ask the guest to eject a hot-plugged PCI device (it leaves when the
    /// guest does, with `DEVICE_DELETED`).
    UnplugDevice(String, Reply<Result<(), HotplugError>>),
}

impl MessageKind for SupervisorMsg {
    fn kind(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Stop(_) => "stop",
            Self::Cont(_) => "cont",
            Self::Reset(_) => "reset",
            Self::Powerdown(_) => "powerdown",
            Self::Quit(_) => "quit",
            Self::Signal(_) => "signal",
            Self::Subscribe(_) => "subscribe",
            Self::Publish(_) => "publish",
            Self::Vcpus(_) => "vcpus",
            Self::Tree(_) => "tree",
            Self::SaveMachine(_) => "save-machine",
            Self::RestoreMachine(..) => "restore-machine",
            Self::Migrate(..) => "migrate",
            Self::MigrateIncoming(..) => "migrate-incoming",
            Self::SwitchOver(_) => "switch-over",
            Self::MigrationEnded(_) => "migration-ended",
            Self::IncomingLoaded(..) => "incoming-loaded",
            Self::IncomingFailed(_) => "incoming-failed",
            Self::StartFailed(_) => "start-failed",
            Self::Migration(_) => "migration",
            Self::VmState(_) => "vm-state",
            Self::LoadVmState(..) => "load-vm-state",
            Self::AddNode(..) => "add-node",
            Self::RemoveNode(..) => "remove-node",
            Self::UnplugDevice(..) => "unplug-device",
        }
    }
}

/// The cloneable handle monitors and other actors use.
#[derive(Clone, Debug)]
pub struct SupervisorHandle {
    addr: Addr<SupervisorMsg>,
    /// The subscribers' channel: another actor's notification goes straight to it, in
    /// the order that actor made it, not behind whatever the supervisor is busy with.
    notify: broadcast::Sender<(SystemTime, VmNotification)>,
}

impl SupervisorHandle {
    /// Ask for something that can itself fail: a supervisor gone and a refusal both come
    /// back as the message to show.
    async fn ask_for<T>(
        &self,
        f: impl FnOnce(Reply<Result<T, String>>) -> SupervisorMsg,
    ) -> Result<T, String> {
        self.ask(f).await.map_err(|e| e.to_string())?
    }
    async fn ask<T>(&self, f: impl FnOnce(Reply<T>) -> SupervisorMsg) -> Result<T, ActorError> {
        let (tx, rx) = reply_channel(self.addr.id());
        self.addr.send(f(tx)).await?;
        rx.recv().await
    }
    pub async fn status(&self) -> Result<RunState, ActorError> {
        self.ask(SupervisorMsg::Status).await
    }
    pub async fn stop(&self) -> Result<Result<(), String>, ActorError> {
        self.ask(SupervisorMsg::Stop).await
    }
    pub async fn cont(&self) -> Result<Result<(), String>, ActorError> {
        self.ask(SupervisorMsg::Cont).await
    }
    pub async fn reset(&self) -> Result<Result<(), String>, ActorError> {
        self.ask(SupervisorMsg::Reset).await
    }
    pub async fn powerdown(&self) -> Result<Result<(), String>, ActorError> {
        self.ask(SupervisorMsg::Powerdown).await
    }
    pub async fn quit(&self) -> Result<(), ActorError> {
        self.ask(SupervisorMsg::Quit).await
    }
    pub async fn subscribe(
        &self,
    ) -> Result<broadcast::Receiver<(SystemTime, VmNotification)>, ActorError> {
        self.ask(SupervisorMsg::Subscribe).await
    }
    pub async fn vcpus(&self) -> Result<Vec<VcpuHandle>, ActorError> {
        self.ask(SupervisorMsg::Vcpus).await
    }
    /// A copy of the device tree.
    pub async fn tree(&self) -> Result<DeviceTree, ActorError> {
        self.ask(SupervisorMsg::Tree).await
    }
    /// The state of every part of the stopped machine but guest RAM: each device actor's
    /// sections (chipset first, then the devices, in the order they were built), each
    /// vCPU's (`vcpu<N>`) and the VM-wide KVM state (`pic`, `ioapic`, `pit`, `kvmclock`),
    /// in the order [`SupervisorHandle::restore_machine`] puts them back. Refused unless
    /// the VM is paused or has not started (`-S`).
    pub async fn save_machine(&self) -> Result<Vec<Section>, String> {
        self.ask_for(SupervisorMsg::SaveMachine).await
    }
    /// Put back a state [`SupervisorHandle::save_machine`] produced on a machine built
    /// from the same configuration (guest RAM is the caller's to restore). Refused unless
    /// the VM is paused or has not started. Every section must belong to this machine,
    /// with the kind and version this build saves, and every part of the machine must
    /// have its sections: otherwise the error names the section and nothing changes. The
    /// devices are restored first, then the vCPUs, then the VM-wide state; should one
    /// refuse its state even so, the state from before the restore is put back. `cont`
    /// then runs the guest from the restored point.
    pub async fn restore_machine(&self, sections: Vec<Section>) -> Result<(), String> {
        self.ask_for(|r| SupervisorMsg::RestoreMachine(sections, r))
            .await
    }
    /// Start migrating the VM to `uri` (QEMU's URI syntax; `fd:NAME` writes to `fd`); Ok
    /// once it has started.
    pub async fn migrate(&self, uri: &str, fd: Option<OwnedFd>) -> Result<(), String> {
        let uri = uri.to_string();
        self.ask_for(|r| SupervisorMsg::Migrate(uri, fd, r)).await
    }
    /// Starting as the command line asked failed (`-loadvm`): the VM ends with `why`.
    pub fn start_failed(&self, why: String) {
        self.post(SupervisorMsg::StartFailed(why));
    }

    /// `migrate-incoming URI` for a VM started with `-incoming defer`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), String> {
        let uri = uri.to_string();
        self.ask_for(|r| SupervisorMsg::MigrateIncoming(uri, r))
            .await
    }
    pub(crate) async fn switch_over(&self) -> Result<Vec<Section>, String> {
        self.ask_for(SupervisorMsg::SwitchOver).await
    }
    pub(crate) async fn incoming_loaded(&self, sections: Vec<Section>) -> Result<(), String> {
        self.ask_for(|r| SupervisorMsg::IncomingLoaded(sections, r))
            .await
    }
    /// The stopped machine's whole state (RAM, device memory, every part's sections) as
    /// one migration stream, with the VM clock in ns (`savevm`).
    pub async fn vm_state(&self) -> Result<(Vec<u8>, u64), String> {
        self.ask_for(SupervisorMsg::VmState).await
    }
    /// Put back what [`SupervisorHandle::vm_state`] gave (`loadvm`); the VM stays stopped.
    pub async fn load_vm_state(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.ask_for(|r| SupervisorMsg::LoadVmState(bytes, r)).await
    }
    /// Migration parameters, capabilities and progress.
    pub async fn migration(&self) -> Result<crate::migration::SharedMigration, ActorError> {
        self.ask(SupervisorMsg::Migration).await
    }
    pub(crate) fn post(&self, msg: SupervisorMsg) {
        let addr = self.addr.clone();
        // A message from a migration thread: the mailbox has room or the VM is ending.
        if let Err(e) = addr.try_send(msg) {
            tracing::warn!("supervisor mailbox: {e}");
        }
    }
    /// Add what `what` asks for to the machine, through its device tree.
    pub async fn add_node(&self, what: Plug) -> Result<(), HotplugError> {
        self.ask(|r| SupervisorMsg::AddNode(what, r))
            .await
            .map_err(|e| HotplugError::Failed(e.to_string()))?
    }
    /// Take node `id` (a tree id: `/netdevs/n0`) out of the machine.
    pub async fn remove_node(&self, id: &str) -> Result<(), HotplugError> {
        let id = id.to_string();
        self.ask(|r| SupervisorMsg::RemoveNode(id, r))
            .await
            .map_err(|e| HotplugError::Failed(e.to_string()))?
    }
    /// `device_del ID`: the guest is asked to eject it.
    pub async fn unplug_device(&self, id: &str) -> Result<(), HotplugError> {
        let id = id.to_string();
        self.ask(|r| SupervisorMsg::UnplugDevice(id, r))
            .await
            .map_err(|e| HotplugError::Failed(e.to_string()))?
    }
    /// Publish a notification on behalf of another actor, in turn with the supervisor's
    /// own (a migration's MIGRATION events follow the command that started it, as
    /// QEMU's do; libvirt's restore fails when `active` comes first).
    pub fn publish(&self, n: VmNotification) {
        let _ = self.addr.try_send(SupervisorMsg::Publish(n));
    }

    /// Publish at once, for notifications whose order matters against a state the caller
    /// shows itself rather than against the supervisor's (a job's JOB_STATUS_CHANGE must be
    /// out before `query-jobs` can show the new status).
    pub fn publish_now(&self, n: VmNotification) {
        let _ = self.notify.send((SystemTime::now(), n));
    }
    pub fn signal(&self, sig: i32) {
        let _ = self.addr.try_send(SupervisorMsg::Signal(sig));
    }
    pub fn depth(&self) -> usize {
        self.addr.depth()
    }
}

/// Policy knobs from the command line.
#[derive(Debug, Clone, Default)]
pub struct SupervisorConfig {
    /// `-S`.
    pub start_paused: bool,
    /// `-no-reboot`.
    pub no_reboot: bool,
    /// `-no-shutdown`.
    pub no_shutdown: bool,
    /// A monitor is configured: faults leave the VM inspectable instead of exiting.
    pub monitor_attached: bool,
    /// `-incoming URI` (or `defer`): wait for a migration instead of starting.
    pub incoming: Option<String>,
    /// The `-cpu` model with its options, which a migration's destination must match.
    pub cpu: String,
}

pub struct Supervisor {
    state: RunState,
    cfg: SupervisorConfig,
    vcpus: Vec<VcpuHandle>,
    /// Every device, in the order they were built (a device after what it uses); the
    /// control mailboxes of its nodes are paused after the vCPUs, last first, and
    /// resumed before them, first first; saved and restored in order.
    tree: DeviceTree,
    machine: Arc<dyn Machine>,
    /// Builds what `netdev_add` asks for (None: nothing can be added).
    hotplug: Option<Arc<dyn Hotplug>>,
    events: EventRx,
    mailbox: Mailbox<SupervisorMsg>,
    notify: broadcast::Sender<(SystemTime, VmNotification)>,
    /// Migration parameters, capabilities and progress (shared with the monitor).
    migration: crate::migration::SharedMigration,
    /// Where migration threads register.
    registry: crate::runtime::Registry,
    handle: Option<SupervisorHandle>,
    /// The VM ran when a migration paused it for the switch-over (resume it on failure).
    ran_before_switch: bool,
    /// Run the guest once an incoming migration is loaded (no `-S`, or `cont` since).
    autostart: bool,
    /// A machine waiting for an incoming migration: its own state, saved while it waits.
    waiting_state: Option<Vec<(Part, Section)>>,
    /// When the machine was made (a snapshot's VM clock counts from it).
    started: std::time::Instant,
    /// The hot-plugged vCPUs (also in `vcpus`, after the command line's): index and the
    /// state each resets to.
    hot_vcpus: Vec<(u32, VcpuBootState)>,
}

impl Supervisor {
    pub fn new(
        cfg: SupervisorConfig,
        vcpus: Vec<VcpuHandle>,
        tree: DeviceTree,
        machine: Arc<dyn Machine>,
        events: EventRx,
    ) -> (Self, SupervisorHandle) {
        let (addr, mailbox) = crate::runtime::mailbox("supervisor", 256);
        let (notify, _) = broadcast::channel(256);
        let handle = SupervisorHandle {
            addr,
            notify: notify.clone(),
        };
        (
            Self {
                state: RunState::Prelaunch,
                autostart: !cfg.start_paused,
                waiting_state: None,
                cfg,
                vcpus,
                tree,
                machine,
                hotplug: None,
                events,
                mailbox,
                notify,
                migration: Default::default(),
                registry: Default::default(),
                handle: Some(handle.clone()),
                ran_before_switch: false,
                started: std::time::Instant::now(),
                hot_vcpus: Vec::new(),
            },
            handle,
        )
    }

    /// Register the threads the supervisor starts (migration streams) in `registry`.
    pub fn with_registry(mut self, registry: crate::runtime::Registry) -> Self {
        self.registry = registry;
        self
    }

    /// What builds the nodes `netdev_add` (later `device_add`) asks for.
    pub fn set_hotplug(&mut self, h: Arc<dyn Hotplug>) {
        self.hotplug = Some(h);
    }

    fn publish(&self, n: VmNotification) {
        let _ = self.notify.send((SystemTime::now(), n));
    }

    /// A `MIGRATION` event with `status`, when the `events` capability asks for them.
    fn migration_event(&self, status: crate::migration::Status) {
        if self.migration.caps().events {
            self.publish(VmNotification::Other {
                event: "MIGRATION".into(),
                data: serde_json::json!({ "status": status.name() }).to_string(),
            });
        }
    }

    /// What a migration's destination must match, together
    /// with the guest RAM and device memory a stream carries.
    fn describe(&self) -> Result<Movable, String> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let ram = self
            .machine
            .ram()
            .ok_or("this machine cannot be migrated")?;
        // The destination would come up without them: refuse rather than lose them.
        if let Some((index, _)) = self.hot_vcpus.first() {
            return Err(format!(
                "the VM has a hot-plugged vCPU (cpu-index {index}); saving or migrating a VM \
                 with hot-plugged vCPUs is not supported yet: device_del it first"
            ));
        }
        // A DIMM's memory is not in the stream either.
        if let Some(n) = self.tree.iter().find(|n| n.driver == "pc-dimm") {
            return Err(format!(
                "the VM has a hot-plugged memory device ('{}'); saving or migrating a VM with \
                 plugged DIMMs is not supported yet: device_del it first",
                n.id
            ));
        }
        let blocks = self.machine.device_ram();
        let desc = crate::migration::stream::MachineDesc {
            ram: ram.iter().map(|r| (r.start_addr().0, r.len())).collect(),
            blocks: blocks.iter().map(|b| (b.name(), b.len() as u64)).collect(),
            vcpus: self.vcpus.len() as u32,
            cpu: self.cfg.cpu.clone(),
            devices: self
                .tree
                .iter()
                .filter(|n| n.control.is_some())
                .map(|n| (n.id.clone(), n.driver.clone()))
                .collect(),
        };
        Ok(Movable { desc, ram, blocks })
    }

    /// `savevm`'s VM state: everything of the stopped machine as one stream.
    async fn vm_state(&mut self) -> Result<(Vec<u8>, u64), String> {
        self.stopped_for("save").await?;
        let Movable { desc, ram, blocks } = self.describe()?;
        let sections: Vec<Section> = self.collect().await?.into_iter().map(|(_, s)| s).collect();
        let bytes = crate::migration::source::whole_state(&desc, &ram, blocks, &sections)?;
        Ok((bytes, self.started.elapsed().as_nanos() as u64))
    }

    /// `loadvm`: read a whole-state stream back into the stopped machine.
    async fn load_vm_state(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        self.stopped_for("restore").await?;
        let Movable { desc, ram, blocks } = self.describe()?;
        let loaded = crate::migration::dest::receive(
            crate::migration::transport::Incoming::from_bytes(bytes),
            &ram,
            &blocks,
            &desc,
        )?;
        self.restore_machine(loaded.sections).await
    }

    /// Start an outgoing migration on a thread of its own.
    fn start_migration(&mut self, uri: &str, fd: Option<OwnedFd>) -> Result<(), String> {
        use crate::migration::{source, transport::Uri, Progress, Status};
        if self.migration.progress().status.running() {
            return Err("There's a migration process in progress".into());
        }
        if self.state == RunState::PostMigrate {
            return Err("Can't migrate the vm that was paused due to previous migration".into());
        }
        match self.state {
            RunState::Running | RunState::Paused | RunState::Prelaunch => {}
            RunState::InMigrate => return Err("Guest is waiting for an incoming migration".into()),
            other => return Err(format!("cannot migrate a VM that is {}", other.hmp_name())),
        }
        let uri = Uri::parse(uri).map_err(|e| e.to_string())?;
        let Movable { desc, ram, .. } = self.describe()?;
        let mig = self.migration.clone();
        mig.cancel.store(false, std::sync::atomic::Ordering::SeqCst);
        mig.with_progress(|p| {
            *p = Progress {
                status: Status::Setup,
                started: Some(std::time::Instant::now()),
                ..Progress::default()
            }
        });
        self.migration_event(Status::Setup);
        let handle = self.handle.clone().ok_or("the supervisor has no handle")?;
        let src = SupervisedSource {
            machine: self.machine.clone(),
            ram,
            sup: handle,
            rt: tokio::runtime::Handle::current(),
            mig: mig.clone(),
        };
        crate::runtime::ThreadSpec::new(
            "migration-out",
            "migration",
            crate::runtime::Restart::Never,
        )
        .spawn(
            &self.registry,
            crate::runtime::once(move || {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // The one descriptor `fd:NAME` may take.
                    let fd = std::sync::Mutex::new(fd);
                    let named = |_: &str| fd.lock().ok()?.take();
                    source::run(&src, &src.mig, &uri, &desc, &named)
                }))
                .unwrap_or_else(|p| {
                    Err(source::Failure::Failed(format!(
                        "the migration thread panicked: {}",
                        crate::runtime::panic_text(p.as_ref())
                    )))
                });
                *src.mig.cutter.lock().unwrap_or_else(|e| e.into_inner()) = None;
                src.sup.post(SupervisorMsg::MigrationEnded(res));
            }),
        )
        .map_err(|e| format!("starting the migration thread: {e}"))?;
        Ok(())
    }

    /// The migration thread's switch-over: pause everything, save it.
    async fn switch_over(&mut self) -> Result<Vec<Section>, String> {
        self.ran_before_switch = self.state == RunState::Running;
        if self.ran_before_switch {
            self.pause_all().await;
            self.publish(VmNotification::Stop);
        } else if self.state == RunState::Prelaunch {
            self.pause_all().await;
        }
        self.state = RunState::FinishMigrate;
        let sections = self.collect().await?.into_iter().map(|(_, s)| s).collect();
        // The destination may write the images once it has the whole stream: write them
        // back and let them go first.
        self.inactivate_images().await?;
        Ok(sections)
    }

    /// Hand every drive's image over: written back, locks released. A drive that
    /// refuses leaves every image active again.
    async fn inactivate_images(&self) -> Result<(), String> {
        for img in self.tree.images() {
            if let Err(e) = img.inactivate().await {
                let _ = self.activate_images().await;
                return Err(format!("drive {}: {e}", img.id()));
            }
        }
        Ok(())
    }

    /// Take every drive's image (back): locks taken, metadata reread.
    async fn activate_images(&self) -> Result<(), String> {
        let mut failed = None;
        for img in self.tree.images() {
            if let Err(e) = img.activate().await {
                failed.get_or_insert(e.to_string());
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// The outgoing migration ended: a completed one leaves the VM paused
    /// (`postmigrate`); otherwise it goes on as before.
    async fn migration_ended(&mut self, res: Result<(), crate::migration::source::Failure>) {
        use crate::migration::{source::Failure, Status};
        let status = match &res {
            Ok(()) => Status::Completed,
            Err(Failure::Cancelled) => Status::Cancelled,
            Err(_) => Status::Failed,
        };
        self.migration.with_progress(|p| {
            p.status = status;
            if let Err(Failure::Failed(e) | Failure::FailedPaused(e)) = &res {
                p.error = Some(e.clone());
            }
            if p.total_time_ms.is_none() {
                p.total_time_ms = p.started.map(|t| t.elapsed().as_millis() as u64);
            }
        });
        match res {
            Ok(()) => self.state = RunState::PostMigrate,
            Err(e) => {
                if let Failure::Failed(why) | Failure::FailedPaused(why) = &e {
                    crate::report!("troupe: migration failed: {why}");
                }
                if self.state == RunState::FinishMigrate {
                    // The images were let go at the switch-over: take them back.
                    if let Err(why) = self.activate_images().await {
                        crate::report!(
                            "troupe: migration failed and the disks cannot be taken back: {why}"
                        );
                        self.state = RunState::PostMigrate;
                        self.migration_event(status);
                        return;
                    }
                    if self.ran_before_switch {
                        self.state = RunState::Running;
                        self.publish(VmNotification::Resume);
                        self.resume_all();
                    } else {
                        self.state = RunState::Paused;
                    }
                }
            }
        }
        self.migration_event(status);
    }

    /// Wait for and read an incoming migration on a thread of its own.
    fn start_incoming(&mut self, uri: &str) -> Result<(), String> {
        use crate::migration::{dest, transport, Status};
        let parsed = transport::Uri::parse(uri).map_err(|e| e.to_string())?;
        let listening = transport::Listening::open(&parsed)
            .map_err(|e| format!("cannot listen for the migration on {parsed}: {e}"))?;
        if let Some(addr) = listening.address() {
            crate::report!("troupe: waiting for an incoming migration on {addr}");
        }
        self.migration.set_listening(listening.address());
        let Movable { desc, ram, blocks } = self.describe()?;
        let sup = self.handle.clone().ok_or("the supervisor has no handle")?;
        let rt = tokio::runtime::Handle::current();
        let mig = self.migration.clone();
        mig.with_progress(|p| {
            p.incoming = true;
            p.started = Some(std::time::Instant::now());
        });
        // As QEMU's qemu_start_incoming_migration: a `setup` event (the status itself stays
        // none, so capabilities can still be set) before `migrate-incoming` answers —
        // libvirt's restore checks the job right after the answer and fails on none.
        self.migration_event(Status::Setup);
        crate::runtime::ThreadSpec::new(
            "migration-in",
            "migration",
            crate::runtime::Restart::Never,
        )
        .spawn(
            &self.registry,
            crate::runtime::once(move || {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let inc = listening
                        .accept()
                        .map_err(|e| format!("accepting the migration: {e}"))?;
                    mig.with_progress(|p| p.status = Status::Active);
                    if mig.caps().events {
                        sup.publish(VmNotification::Other {
                            event: "MIGRATION".into(),
                            data: serde_json::json!({"status": "active"}).to_string(),
                        });
                    }
                    let loaded = dest::receive(inc, &ram, &blocks, &desc)?;
                    let mut answer = loaded.answer;
                    let res = rt.block_on(sup.incoming_loaded(loaded.sections));
                    if let Some(a) = answer.as_mut() {
                        let _ = a.write_all(if res.is_ok() { b"Y" } else { b"N" });
                        let _ = a.flush();
                    }
                    res
                }))
                .unwrap_or_else(|p| {
                    Err(format!(
                        "the incoming migration thread panicked: {}",
                        crate::runtime::panic_text(p.as_ref())
                    ))
                });
                if let Err(e) = res {
                    sup.post(SupervisorMsg::IncomingFailed(e));
                }
            }),
        )
        .map_err(|e| format!("starting the incoming migration thread: {e}"))?;
        Ok(())
    }

    /// The incoming stream is read: restore every part and run (or stay paused).
    async fn incoming_loaded(&mut self, sections: Vec<Section>) -> Result<(), String> {
        use crate::migration::Status;
        if self.state != RunState::InMigrate {
            return Err(format!(
                "the VM is {}, not waiting for a migration",
                self.state.hmp_name()
            ));
        }
        self.pause_all().await;
        // The source has let its images go: take them and reread them.
        self.activate_images().await?;
        if let Err(e) = self.restore_machine(sections).await {
            // Let the source take them back.
            let _ = self.inactivate_images().await;
            return Err(e);
        }
        self.migration.with_progress(|p| {
            p.status = Status::Completed;
            p.total_time_ms = p.started.map(|t| t.elapsed().as_millis() as u64);
        });
        self.migration.set_listening(None);
        // As QEMU: the switches learn the guest's new port at once, running or not.
        let announce = crate::net::Announce::after_migration(&self.migration.params());
        if let Err(e) = self.machine.announce(announce) {
            tracing::warn!("announcing the migrated guest: {e}");
        }
        self.state = RunState::Paused;
        if self.autostart {
            self.state = RunState::Running;
            self.publish(VmNotification::Resume);
            self.resume_all();
        }
        self.migration_event(Status::Completed);
        Ok(())
    }

    /// Quiesce the machine: the vCPUs first (no new guest requests), then every device
    /// and backend, users before what they use. Returns once nothing writes guest memory,
    /// raises an interrupt or touches an image.
    async fn pause_all(&mut self) {
        for v in &self.vcpus {
            if let Err(e) = v.pause().await {
                tracing::warn!("pausing vcpu{}: {e}", v.index());
            }
        }
        self.machine.clock_stop();
        for c in self.tree.controls().rev() {
            let mut waited = 0;
            let pause = c.pause();
            tokio::pin!(pause);
            loop {
                match tokio::time::timeout(std::time::Duration::from_secs(5), &mut pause).await {
                    Ok(Ok(())) => break,
                    // A dead actor writes nothing: quiescent.
                    Ok(Err(e)) => {
                        tracing::warn!("pausing {}: {e}", c.id());
                        break;
                    }
                    Err(_) => {
                        waited += 5;
                        crate::report!(
                            "troupe: {} has not paused after {waited} s (I/O in flight); still waiting",
                            c.id()
                        );
                    }
                }
            }
        }
    }

    /// Let the machine go again: devices and backends first, the vCPUs last.
    fn resume_all(&self) {
        for c in self.tree.controls() {
            if let Err(e) = c.resume() {
                tracing::warn!("resuming {}: {e}", c.id());
            }
        }
        self.machine.clock_start();
        for v in &self.vcpus {
            if let Err(e) = v.resume() {
                tracing::warn!("resuming vcpu{}: {e}", v.index());
            }
        }
    }

    async fn stop(&mut self) {
        if self.state == RunState::Running {
            self.pause_all().await;
            self.state = RunState::Paused;
            self.publish(VmNotification::Stop);
        }
    }

    async fn cont(&mut self) -> Result<(), String> {
        match self.state {
            RunState::Running => Ok(()),
            RunState::Paused | RunState::Prelaunch => {
                self.state = RunState::Running;
                self.publish(VmNotification::Resume);
                self.resume_all();
                Ok(())
            }
            // As QEMU: the VM runs as soon as the incoming migration is loaded.
            RunState::InMigrate => {
                self.autostart = true;
                Ok(())
            }
            RunState::FinishMigrate => Err("a migration is switching over".into()),
            RunState::PostMigrate => {
                // As QEMU: running again needs the images back.
                self.activate_images().await?;
                self.state = RunState::Running;
                self.publish(VmNotification::Resume);
                self.resume_all();
                Ok(())
            }
            RunState::InternalError => Err("Resetting the Virtual Machine is required".into()),
            RunState::Shutdown => Err("Resetting the Virtual Machine is required".into()),
        }
    }

    /// Reset the machine; the run state is kept (a paused VM stays paused) except that a
    /// faulted or shut-down VM becomes runnable again.
    async fn reset(&mut self, guest: bool, reason: &'static str) -> Result<(), String> {
        let was_running = self.state == RunState::Running;
        self.pause_all().await;
        let boots = self.machine.reset()?;
        // The command line's vCPUs come first; hot-plugged ones keep their AP state.
        for (i, v) in self.vcpus.iter().enumerate() {
            let b = match boots.get(i) {
                Some(b) => b.clone(),
                None => match self.hot_vcpus.iter().find(|(n, _)| *n == v.index()) {
                    Some((_, b)) => b.clone(),
                    None => continue,
                },
            };
            v.reset(b).await.map_err(|e| e.to_string())?;
        }
        self.publish(VmNotification::Reset { guest, reason });
        // Like QEMU, a reset makes a stopped-for-good VM startable again (with `cont`).
        if matches!(self.state, RunState::InternalError | RunState::Shutdown) {
            self.state = RunState::Paused;
        }
        if was_running {
            self.resume_all();
        }
        Ok(())
    }

    /// Refuse to save or restore a machine that runs (or cannot be trusted to be
    /// quiescent); quiesce the device actors of a VM that has not started yet.
    async fn stopped_for(&mut self, what: &str) -> Result<(), String> {
        match self.state {
            RunState::Paused => Ok(()),
            RunState::Prelaunch | RunState::InMigrate => {
                // Built paused but never told: pausing is idempotent.
                self.pause_all().await;
                Ok(())
            }
            other => Err(format!(
                "cannot {what} the machine while it is {}: stop it first",
                other.hmp_name()
            )),
        }
    }

    /// Every part's sections, tagged with the part, in restore order.
    async fn collect(&self) -> Result<Vec<(Part, Section)>, String> {
        // Every part saves at once (each on its own thread); the answers keep build order.
        let controls = futures::future::join_all(self.tree.controls().map(|c| c.save()));
        let vcpus = futures::future::join_all(self.vcpus.iter().map(|v| v.save()));
        let (controls, vcpus) = tokio::join!(controls, vcpus);
        let mut out = Vec::new();
        for (i, sections) in controls.into_iter().enumerate() {
            let sections = sections.map_err(|e| error_chain(&e))?;
            out.extend(sections.into_iter().map(|s| (Part::Control(i), s)));
        }
        for (i, s) in vcpus.into_iter().enumerate() {
            // VcpuError's messages name the vCPU and carry their cause.
            out.push((Part::Vcpu(i), s.map_err(|e| e.to_string())?));
        }
        let vm = self
            .machine
            .save_vm_state()
            .map_err(|e| format!("VM-wide state: {e}"))?;
        out.extend(vm.into_iter().map(|s| (Part::Vm, s)));
        Ok(out)
    }

    async fn save_machine(&mut self) -> Result<Vec<Section>, String> {
        self.stopped_for("save").await?;
        Ok(self.collect().await?.into_iter().map(|(_, s)| s).collect())
    }

    async fn restore_machine(&mut self, sections: Vec<Section>) -> Result<(), String> {
        self.stopped_for("restore").await?;
        // What this machine saves now: which part owns each id, with what kind and
        // version. It is also what goes back should a part refuse its new state. A
        // machine waiting for a migration saved it while it waited (it has not run
        // since), which keeps that out of the downtime.
        let before = match self.waiting_state.take() {
            Some(b) => b,
            None => self.collect().await?,
        };
        let incoming = group(&match_sections(&before, sections)?, self.parts());
        if let Err(e) = self.apply(&incoming).await {
            let backup = group(&before, self.parts());
            return Err(match self.apply(&backup).await {
                Ok(()) => format!("{e}; the machine's state from before the restore is back"),
                Err(again) => format!(
                    "{e}; putting back the state from before the restore failed too ({again}): \
                     the machine needs a reset"
                ),
            });
        }
        Ok(())
    }

    /// The parts in restore order: devices in build order, vCPUs, the VM-wide state.
    fn parts(&self) -> Vec<Part> {
        (0..self.tree.controls().count())
            .map(Part::Control)
            .chain((0..self.vcpus.len()).map(Part::Vcpu))
            .chain([Part::Vm])
            .collect()
    }

    /// Give each part its sections (`by_part` follows [`Supervisor::parts`]).
    async fn apply(&self, by_part: &[Vec<Section>]) -> Result<(), String> {
        for (part, sections) in self.parts().into_iter().zip(by_part) {
            match part {
                Part::Control(i) => self
                    .tree
                    .controls()
                    .nth(i)
                    .ok_or_else(|| format!("device control {i} is gone"))?
                    .restore(sections.clone())
                    .await
                    .map_err(|e| error_chain(&e))?,
                Part::Vcpu(i) => {
                    let v = &self.vcpus[i];
                    for s in sections {
                        v.restore(s.clone()).await.map_err(|e| e.to_string())?;
                    }
                }
                Part::Vm => self
                    .machine
                    .restore_vm_state(sections)
                    .map_err(|e| format!("VM-wide state: {e}"))?,
            }
        }
        Ok(())
    }

    /// Run until the VM should end; returns why.
    pub async fn run(mut self) -> ExitReason {
        let mailbox = self.mailbox.clone();
        let mut mb = mailbox.open().await;
        if let Some(uri) = self.cfg.incoming.clone() {
            self.state = RunState::InMigrate;
            self.pause_all().await;
            self.waiting_state = self.collect().await.ok();
            if uri != "defer" {
                if let Err(e) = self.start_incoming(&uri) {
                    self.finish().await;
                    return ExitReason::IncomingFailed(e);
                }
            }
        } else if !self.cfg.start_paused {
            self.state = RunState::Running;
            self.resume_all();
        }
        loop {
            tokio::select! {
                ev = self.events.recv() => {
                    let Some(ev) = ev else { continue };
                    if let Some(exit) = self.on_event(ev).await {
                        self.finish().await;
                        return exit;
                    }
                }
                msg = mb.recv() => {
                    let Some(msg) = msg else { continue };
                    let span = tracing::debug_span!("msg", kind = msg.kind());
                    if let Some(exit) = self.on_msg(msg).instrument(span).await {
                        self.finish().await;
                        return exit;
                    }
                }
            }
        }
    }

    async fn finish(&mut self) {
        if self.state == RunState::Running {
            self.pause_all().await;
        }
    }

    async fn on_event(&mut self, ev: VmEvent) -> Option<ExitReason> {
        tracing::debug!(?ev, "event");
        match ev {
            VmEvent::System(SystemEvent::DebugExit(v)) => Some(ExitReason::DebugExit(v)),
            VmEvent::System(SystemEvent::PowerOffRequested) => {
                self.publish(VmNotification::Shutdown {
                    guest: true,
                    reason: "guest-shutdown",
                });
                if self.cfg.no_shutdown {
                    self.pause_all().await;
                    self.state = RunState::Shutdown;
                    self.publish(VmNotification::Stop);
                    None
                } else {
                    Some(ExitReason::PoweredOff)
                }
            }
            VmEvent::System(SystemEvent::ResetRequested) | VmEvent::TripleFault { .. } => {
                if self.cfg.no_reboot {
                    self.publish(VmNotification::Shutdown {
                        guest: true,
                        reason: "guest-reset",
                    });
                    return Some(ExitReason::ResetNoReboot);
                }
                if let Err(e) = self.reset(true, "guest-reset").await {
                    return Some(ExitReason::Fault(format!("reset failed: {e}")));
                }
                None
            }
            VmEvent::VcpuFault { cpu, report } => {
                self.pause_all().await;
                self.state = RunState::InternalError;
                self.publish(VmNotification::Stop);
                if self.cfg.monitor_attached {
                    tracing::error!(
                        "vcpu{cpu} stopped on a KVM failure; VM is in internal-error state"
                    );
                    None
                } else {
                    Some(ExitReason::Fault(report))
                }
            }
            VmEvent::PciEjected { slot } => {
                match hotplug::ejected(&self.registry, &mut self.tree, slot).await {
                    Ok(Some(node)) => {
                        for (event, data) in hotplug::deleted_events(&node) {
                            self.publish(VmNotification::Other { event, data });
                        }
                    }
                    Ok(None) => tracing::debug!(
                        target: "guest_errors",
                        "the guest ejected PCI slot {slot}, which holds no hot-plugged device"
                    ),
                    Err(e) => tracing::warn!("removing the device of PCI slot {slot}: {e}"),
                }
                None
            }
            VmEvent::CpuEjected { cpu } => {
                self.waiting_state = None;
                // Out of the running set first: its thread ends with the teardown. (The
                // command line's vCPUs have no node and stay.)
                if self.hot_vcpus.iter().any(|(n, _)| *n == cpu) {
                    self.vcpus.retain(|v| v.index() != cpu);
                    self.hot_vcpus.retain(|(n, _)| *n != cpu);
                }
                match hotplug::cpu_ejected(&self.registry, &mut self.tree, cpu).await {
                    Ok(Some(node)) => {
                        for (event, data) in hotplug::deleted_events(&node) {
                            self.publish(VmNotification::Other { event, data });
                        }
                    }
                    Ok(None) => tracing::debug!(
                        target: "guest_errors",
                        "the guest ejected CPU {cpu}, which is not a hot-plugged vCPU"
                    ),
                    Err(e) => tracing::warn!("removing vCPU {cpu}: {e}"),
                }
                None
            }
            VmEvent::DimmEjected { id } => {
                match hotplug::dimm_ejected(&self.registry, &mut self.tree, &id).await {
                    Ok(Some(node)) => {
                        for (event, data) in hotplug::deleted_events(&node) {
                            self.publish(VmNotification::Other { event, data });
                        }
                    }
                    Ok(None) => tracing::debug!(
                        target: "guest_errors",
                        "the guest ejected DIMM {id}, which is not a hot-plugged DIMM"
                    ),
                    Err(e) => tracing::warn!("removing DIMM {id}: {e}"),
                }
                None
            }
            VmEvent::DimmOst {
                slot,
                device,
                event,
                status,
            } => {
                let mut info = serde_json::json!({
                    "slot": slot.to_string(), "slot-type": "DIMM",
                    "source": event, "status": status,
                });
                if let Some(d) = device {
                    info["device"] = serde_json::json!(d);
                }
                self.publish(VmNotification::Other {
                    event: "ACPI_DEVICE_OST".into(),
                    data: serde_json::json!({ "info": info }).to_string(),
                });
                None
            }
            VmEvent::CpuOst { cpu, event, status } => {
                let device = self
                    .tree
                    .iter()
                    .find(|n| n.vcpu().is_some_and(|(i, _)| i == cpu))
                    .map(|n| {
                        if n.user_id {
                            n.id.clone()
                        } else {
                            String::new()
                        }
                    });
                let mut info = serde_json::json!({
                    "slot": cpu.to_string(), "slot-type": "CPU",
                    "source": event, "status": status,
                });
                if let Some(d) = device.filter(|d| !d.is_empty()) {
                    info["device"] = serde_json::json!(d);
                }
                self.publish(VmNotification::Other {
                    event: "ACPI_DEVICE_OST".into(),
                    data: serde_json::json!({ "info": info }).to_string(),
                });
                None
            }
            VmEvent::ActorFailed { id, kind, reason } => {
                // As a vCPU fault: everything stops in internal-error, inspectable from a
                // monitor; with none attached the process ends with status 1. A dead
                // vCPU answers a pause at once (its mailbox is gone), so this cannot hang.
                let report = format!("actor {id} ({kind}) failed: {reason}");
                crate::report!("troupe: {report}; the VM is stopped (internal-error)");
                if self.state != RunState::InternalError {
                    self.pause_all().await;
                    self.state = RunState::InternalError;
                    self.publish(VmNotification::Stop);
                }
                if self.cfg.monitor_attached {
                    None
                } else {
                    Some(ExitReason::ActorFailed(report))
                }
            }
        }
    }

    async fn on_msg(&mut self, msg: SupervisorMsg) -> Option<ExitReason> {
        match msg {
            SupervisorMsg::Status(r) => r.send(self.state),
            SupervisorMsg::Stop(r) => {
                self.stop().await;
                r.send(Ok(()));
            }
            SupervisorMsg::Cont(r) => r.send(self.cont().await),
            SupervisorMsg::Reset(r) => {
                let res = self.reset(false, "host-qmp-system-reset").await;
                r.send(res);
            }
            SupervisorMsg::Powerdown(r) => {
                self.publish(VmNotification::Powerdown);
                if self.machine.power_button() {
                    r.send(Ok(()));
                } else {
                    r.send(Err("the machine has no ACPI power button".into()));
                }
            }
            SupervisorMsg::Quit(r) => {
                self.publish(VmNotification::Shutdown {
                    guest: false,
                    reason: "host-qmp-quit",
                });
                r.send(());
                return Some(ExitReason::Quit);
            }
            SupervisorMsg::Signal(sig) => {
                self.publish(VmNotification::Shutdown {
                    guest: false,
                    reason: "host-signal",
                });
                return Some(ExitReason::Signal(sig));
            }
            SupervisorMsg::Subscribe(r) => r.send(self.notify.subscribe()),
            SupervisorMsg::Publish(n) => self.publish(n),
            SupervisorMsg::Vcpus(r) => r.send(self.vcpus.clone()),
            SupervisorMsg::Tree(r) => r.send(self.tree.clone()),
            SupervisorMsg::SaveMachine(r) => {
                let res = self.save_machine().await;
                r.send(res);
            }
            SupervisorMsg::RestoreMachine(sections, r) => {
                let res = self.restore_machine(sections).await;
                r.send(res);
            }
            SupervisorMsg::Migrate(uri, fd, r) => r.send(self.start_migration(&uri, fd)),
            SupervisorMsg::MigrateIncoming(uri, r) => {
                let res = if self.cfg.incoming.is_none() {
                    Err("'-incoming' was not specified on the command line".into())
                } else if self.state != RunState::InMigrate
                    || self.cfg.incoming.as_deref() != Some("defer")
                    || self.migration.progress().incoming
                {
                    Err("The incoming migration has already been started".into())
                } else {
                    self.start_incoming(&uri)
                };
                r.send(res);
            }
            SupervisorMsg::SwitchOver(r) => {
                let res = self.switch_over().await;
                r.send(res);
            }
            SupervisorMsg::MigrationEnded(res) => self.migration_ended(res).await,
            SupervisorMsg::IncomingLoaded(sections, r) => {
                let res = self.incoming_loaded(sections).await;
                r.send(res);
            }
            SupervisorMsg::StartFailed(why) => return Some(ExitReason::StartFailed(why)),
            SupervisorMsg::IncomingFailed(why) => {
                self.migration
                    .with_progress(|p| p.status = crate::migration::Status::Failed);
                self.migration_event(crate::migration::Status::Failed);
                return Some(ExitReason::IncomingFailed(why));
            }
            SupervisorMsg::Migration(r) => r.send(self.migration.clone()),
            SupervisorMsg::VmState(r) => {
                let res = self.vm_state().await;
                r.send(res);
            }
            SupervisorMsg::LoadVmState(bytes, r) => {
                let res = self.load_vm_state(bytes).await;
                r.send(res);
            }
            SupervisorMsg::AddNode(what, r) => {
                // The parts changed: what was saved while waiting no longer lines up.
                self.waiting_state = None;
                let paused = self.state != RunState::Running;
                let h = self.hotplug.as_ref();
                let res = hotplug::add(&self.registry, &mut self.tree, h, what, paused).await;
                r.send(res.map(|vcpu| {
                    if let Some((v, boot)) = vcpu {
                        // A new vCPU waits for INIT/SIPI; it runs when the others do.
                        if !paused {
                            if let Err(e) = v.resume() {
                                tracing::warn!("starting vcpu{}: {e}", v.index());
                            }
                        }
                        self.hot_vcpus.push((v.index(), boot));
                        self.vcpus.push(v);
                    }
                }));
            }
            SupervisorMsg::RemoveNode(id, r) => {
                self.waiting_state = None;
                r.send(
                    hotplug::remove(&self.registry, &mut self.tree, &id)
                        .await
                        .map(|_| ()),
                );
            }
            SupervisorMsg::UnplugDevice(id, r) => {
                r.send(hotplug::unplug_request(
                    &self.tree,
                    self.hotplug.as_ref(),
                    &id,
                ));
            }
        }
        None
    }
}

/// The part of the machine a section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// A device actor, by its place among the tree's control mailboxes.
    Control(usize),
    /// A vCPU, by index.
    Vcpu(usize),
    /// The VM-wide KVM state.
    Vm,
}

/// `sections` grouped by part, in `parts` order.
fn group(tagged: &[(Part, Section)], parts: Vec<Part>) -> Vec<Vec<Section>> {
    parts
        .into_iter()
        .map(|p| {
            tagged
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, s)| s.clone())
                .collect()
        })
        .collect()
}

/// Route `incoming` to the parts that saved the same ids in `current`, refusing (by name)
/// a section this machine does not have, one of another kind or version, one given twice,
/// and a part of the machine left without its section.
fn match_sections(
    current: &[(Part, Section)],
    incoming: Vec<Section>,
) -> Result<Vec<(Part, Section)>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut tagged = Vec::with_capacity(incoming.len());
    for s in incoming {
        if !seen.insert(s.id.clone()) {
            return Err(format!("the saved state has two sections '{}'", s.id));
        }
        let Some((part, mine)) = current.iter().find(|(_, c)| c.id == s.id) else {
            return Err(format!(
                "section '{}' ({} state) does not belong to this machine: it has no '{}'",
                s.id, s.kind, s.id
            ));
        };
        if mine.kind != s.kind {
            return Err(format!(
                "section '{}' holds {} state, but this machine's '{}' is {}",
                s.id, s.kind, s.id, mine.kind
            ));
        }
        if mine.version != s.version {
            return Err(format!(
                "section '{}': {} state version {} is not supported (this build reads {})",
                s.id, s.kind, s.version, mine.version
            ));
        }
        tagged.push((*part, s));
    }
    if let Some((_, missing)) = current.iter().find(|(_, c)| !seen.contains(&c.id)) {
        return Err(format!(
            "the saved state has no section '{}' ({} state): this machine has one",
            missing.id, missing.kind
        ));
    }
    Ok(tagged)
}

/// An error and its causes, one after the other (`a: b: c`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What a migration or snapshot stream carries of this machine: its description (which
/// the other side must match), guest RAM and device memory.
struct Movable {
    desc: crate::migration::stream::MachineDesc,
    ram: devices::memory::GuestMemoryMmap,
    blocks: Vec<Arc<dyn crate::migration::DeviceRam>>,
}

/// What the migration thread reaches through the supervisor.
struct SupervisedSource {
    machine: Arc<dyn Machine>,
    ram: devices::memory::GuestMemoryMmap,
    sup: SupervisorHandle,
    rt: tokio::runtime::Handle,
    mig: crate::migration::SharedMigration,
}

impl crate::migration::source::SourceMachine for SupervisedSource {
    fn ram(&self) -> &devices::memory::GuestMemoryMmap {
        &self.ram
    }
    fn device_ram(&self) -> Vec<Arc<dyn crate::migration::DeviceRam>> {
        self.machine.device_ram()
    }
    fn log_dirty(&self, on: bool) -> Result<(), String> {
        self.machine.log_dirty(on)
    }
    fn take_dirty(&self) -> Result<crate::migration::source::DirtyBitmap, String> {
        self.machine.take_dirty()
    }
    fn switch_over(&self) -> Result<Vec<Section>, String> {
        self.rt.block_on(self.sup.switch_over())
    }
    fn event(&self, name: &str, data: serde_json::Value) {
        if self.mig.caps().events {
            self.sup.publish(VmNotification::Other {
                event: name.into(),
                data: data.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::event_channel;
    use crate::runtime::ControlHandle;
    use crate::supervisor::tree::{Node, SYSTEM_BUS};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A tree of one device per control handle, in order, named after it.
    fn tree_of(controls: Vec<ControlHandle>) -> DeviceTree {
        let mut t = DeviceTree::new();
        for c in controls {
            let id = c.id().to_string();
            t.insert(Node::new(&id, "test-device", SYSTEM_BUS).control(c))
                .unwrap();
        }
        t
    }

    struct FakeMachine {
        resets: AtomicUsize,
        button: bool,
        pit: std::sync::Mutex<u32>,
    }

    impl Machine for FakeMachine {
        fn reset(&self) -> Result<Vec<VcpuBootState>, String> {
            self.resets.fetch_add(1, Ordering::SeqCst);
            Ok(vec![])
        }
        fn power_button(&self) -> bool {
            self.button
        }
        fn save_vm_state(&self) -> Result<Vec<Section>, String> {
            Ok(vec![Section::new(
                "pit",
                "fake-pit",
                1,
                &*self.pit.lock().unwrap(),
            )
            .unwrap()])
        }
        fn restore_vm_state(&self, sections: &[Section]) -> Result<(), String> {
            let v: u32 = sections[0]
                .decode("fake-pit", 1)
                .map_err(|e| e.to_string())?;
            *self.pit.lock().unwrap() = v;
            Ok(())
        }
    }

    fn start(
        cfg: SupervisorConfig,
    ) -> (
        SupervisorHandle,
        crate::events::EventTx,
        Arc<FakeMachine>,
        tokio::task::JoinHandle<ExitReason>,
    ) {
        let (tx, rx) = event_channel();
        let m = Arc::new(FakeMachine {
            resets: AtomicUsize::new(0),
            button: true,
            pit: Default::default(),
        });
        let (sup, h) = Supervisor::new(cfg, vec![], DeviceTree::new(), m.clone(), rx);
        let j = tokio::spawn(sup.run());
        (h, tx, m, j)
    }

    #[tokio::test]
    async fn stop_and_cont_change_state_and_notify_before_answering() {
        let (h, _tx, _m, _j) = start(SupervisorConfig::default());
        let mut sub = h.subscribe().await.unwrap();
        assert_eq!(h.status().await.unwrap(), RunState::Running);
        h.stop().await.unwrap().unwrap();
        // The STOP notification is already queued when the answer arrives.
        assert_eq!(sub.try_recv().unwrap().1, VmNotification::Stop);
        assert_eq!(h.status().await.unwrap(), RunState::Paused);
        h.cont().await.unwrap().unwrap();
        assert_eq!(sub.try_recv().unwrap().1, VmNotification::Resume);
        assert_eq!(h.status().await.unwrap(), RunState::Running);
    }

    #[tokio::test]
    async fn stop_pauses_every_device_actor_and_cont_resumes_them_in_order() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let control = |id: &'static str| {
            let log = log.clone();
            ControlHandle::new(id, move |c| {
                let what = match c {
                    crate::runtime::Control::Pause(r) => {
                        r.send(());
                        "pause"
                    }
                    crate::runtime::Control::Resume => "resume",
                    _ => "other",
                };
                log.lock().unwrap().push(format!("{what} {id}"));
                Ok(())
            })
        };
        let (_tx, rx) = event_channel();
        let m = Arc::new(FakeMachine {
            resets: AtomicUsize::new(0),
            button: true,
            pit: Default::default(),
        });
        let controls = tree_of(vec![control("backend"), control("nic")]);
        let (sup, h) = Supervisor::new(SupervisorConfig::default(), vec![], controls, m, rx);
        tokio::spawn(sup.run());
        // Starting the VM resumes devices before vCPUs.
        assert_eq!(h.status().await.unwrap(), RunState::Running);
        assert_eq!(*log.lock().unwrap(), ["resume backend", "resume nic"]);
        log.lock().unwrap().clear();
        h.stop().await.unwrap().unwrap();
        // Users pause before what they use; the stop is answered only once both have.
        assert_eq!(*log.lock().unwrap(), ["pause nic", "pause backend"]);
        log.lock().unwrap().clear();
        h.cont().await.unwrap().unwrap();
        assert_eq!(*log.lock().unwrap(), ["resume backend", "resume nic"]);
    }

    #[tokio::test]
    async fn start_paused_is_prelaunch_until_cont() {
        let (h, _tx, _m, _j) = start(SupervisorConfig {
            start_paused: true,
            ..Default::default()
        });
        assert_eq!(h.status().await.unwrap(), RunState::Prelaunch);
        h.cont().await.unwrap().unwrap();
        assert_eq!(h.status().await.unwrap(), RunState::Running);
    }

    #[tokio::test]
    async fn guest_reset_resets_the_machine_unless_no_reboot() {
        let (h, tx, m, _j) = start(SupervisorConfig::default());
        let mut sub = h.subscribe().await.unwrap();
        tx.post(VmEvent::System(SystemEvent::ResetRequested));
        assert_eq!(
            sub.recv().await.unwrap().1,
            VmNotification::Reset {
                guest: true,
                reason: "guest-reset"
            }
        );
        assert_eq!(m.resets.load(Ordering::SeqCst), 1);

        let (_h, tx, _m, j) = start(SupervisorConfig {
            no_reboot: true,
            ..Default::default()
        });
        tx.post(VmEvent::TripleFault { cpu: 0 });
        assert_eq!(j.await.unwrap(), ExitReason::ResetNoReboot);
    }

    #[tokio::test]
    async fn power_off_exits_or_stops_with_no_shutdown() {
        let (_h, tx, _m, j) = start(SupervisorConfig::default());
        tx.post(VmEvent::System(SystemEvent::PowerOffRequested));
        assert_eq!(j.await.unwrap(), ExitReason::PoweredOff);

        let (h, tx, _m, _j) = start(SupervisorConfig {
            no_shutdown: true,
            ..Default::default()
        });
        tx.post(VmEvent::System(SystemEvent::PowerOffRequested));
        while h.status().await.unwrap() != RunState::Shutdown {
            tokio::task::yield_now().await;
        }
        assert!(
            h.cont().await.unwrap().is_err(),
            "cont needs a reset after shutdown"
        );
        h.reset().await.unwrap().unwrap();
        assert_eq!(h.status().await.unwrap(), RunState::Paused);
    }

    #[tokio::test]
    async fn fault_exits_without_monitor_and_waits_with_one() {
        let (_h, tx, _m, j) = start(SupervisorConfig::default());
        tx.post(VmEvent::VcpuFault {
            cpu: 0,
            report: "boom".into(),
        });
        assert_eq!(j.await.unwrap(), ExitReason::Fault("boom".into()));
        assert_eq!(ExitReason::Fault(String::new()).status(), 1);

        let (h, tx, _m, _j) = start(SupervisorConfig {
            monitor_attached: true,
            ..Default::default()
        });
        tx.post(VmEvent::VcpuFault {
            cpu: 0,
            report: "boom".into(),
        });
        while h.status().await.unwrap() != RunState::InternalError {
            tokio::task::yield_now().await;
        }
        h.quit().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_vital_actor_stops_in_internal_error_or_exits_without_monitor() {
        let failed = || VmEvent::ActorFailed {
            id: "blk-d0".into(),
            kind: "block",
            reason: "boom".into(),
        };
        let (_h, tx, _m, j) = start(SupervisorConfig::default());
        tx.post(failed());
        let r = j.await.unwrap();
        assert_eq!(
            r,
            ExitReason::ActorFailed("actor blk-d0 (block) failed: boom".into())
        );
        assert_eq!(r.status(), 1);

        let (h, tx, _m, _j) = start(SupervisorConfig {
            monitor_attached: true,
            ..Default::default()
        });
        let mut sub = h.subscribe().await.unwrap();
        tx.post(failed());
        assert_eq!(sub.recv().await.unwrap().1, VmNotification::Stop);
        assert_eq!(h.status().await.unwrap(), RunState::InternalError);
        assert!(h.cont().await.unwrap().is_err());
        h.quit().await.unwrap();
    }

    #[tokio::test]
    async fn debug_exit_status_is_qemus() {
        let (_h, tx, _m, j) = start(SupervisorConfig::default());
        tx.post(VmEvent::System(SystemEvent::DebugExit(5)));
        let r = j.await.unwrap();
        assert_eq!(r, ExitReason::DebugExit(5));
        assert_eq!(r.status(), 11);
    }

    /// A register file with a rule: `limit` bounds `value`, like a model checking a
    /// restored state.
    #[derive(Default)]
    struct Counter {
        value: u32,
        limit: u32,
    }

    impl devices::Snapshot for Counter {
        type State = (u32, u32);
        const KIND: &'static str = "counter";
        const VERSION: u32 = 2;
        fn save(&self) -> (u32, u32) {
            (self.value, self.limit)
        }
        fn restore(&mut self, (value, limit): (u32, u32)) -> Result<(), devices::StateError> {
            if value > limit {
                return Err(devices::StateError::invalid(
                    "counter",
                    format!("value {value} is past limit {limit}"),
                ));
            }
            *self = Self { value, limit };
            Ok(())
        }
    }

    type Model = Arc<std::sync::Mutex<Counter>>;

    /// A supervisor over two model-only device actors ("chipset", "uart"), started paused.
    fn machine_of_two() -> (SupervisorHandle, Model, Model, Arc<FakeMachine>) {
        let (_tx, rx) = event_channel();
        let m = Arc::new(FakeMachine {
            resets: AtomicUsize::new(0),
            button: true,
            pit: Default::default(),
        });
        let a: Model = Arc::new(std::sync::Mutex::new(Counter {
            value: 1,
            limit: 10,
        }));
        let b: Model = Arc::new(std::sync::Mutex::new(Counter {
            value: 2,
            limit: 10,
        }));
        let part = |id: &str, c: &Model| -> Box<dyn crate::runtime::StatePart> {
            Box::new(crate::runtime::ModelPart::new(id, c.clone()))
        };
        let controls = tree_of(vec![
            ControlHandle::models("chipset", vec![part("chipset", &a)], || {}),
            ControlHandle::models("uart", vec![part("uart", &b)], || {}),
        ]);
        let cfg = SupervisorConfig {
            start_paused: true,
            ..Default::default()
        };
        let (sup, h) = Supervisor::new(cfg, vec![], controls, m.clone(), rx);
        tokio::spawn(sup.run());
        (h, a, b, m)
    }

    fn set(c: &Model, value: u32) {
        c.lock().unwrap().value = value;
    }

    fn get(c: &Model) -> u32 {
        c.lock().unwrap().value
    }

    #[tokio::test]
    async fn a_saved_machine_comes_back_whole_and_only_while_stopped() {
        let (h, a, b, m) = machine_of_two();
        *m.pit.lock().unwrap() = 7;
        let saved = h.save_machine().await.unwrap();
        let ids: Vec<&str> = saved.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["chipset", "uart", "pit"],
            "devices in build order, then VM-wide"
        );
        h.cont().await.unwrap().unwrap();
        let e = h.save_machine().await.unwrap_err();
        assert!(e.contains("while it is running"), "{e}");
        let e = h.restore_machine(saved.clone()).await.unwrap_err();
        assert!(e.contains("while it is running"), "{e}");
        set(&a, 5);
        set(&b, 6);
        *m.pit.lock().unwrap() = 9;
        h.stop().await.unwrap().unwrap();
        h.restore_machine(saved).await.unwrap();
        assert_eq!((get(&a), get(&b), *m.pit.lock().unwrap()), (1, 2, 7));
    }

    #[tokio::test]
    async fn a_foreign_missing_or_other_version_section_is_refused_by_name_and_changes_nothing() {
        let (h, a, b, _m) = machine_of_two();
        let saved = h.save_machine().await.unwrap();
        set(&a, 3);
        set(&b, 4);
        let refused = |e: String, what: &str| {
            assert!(e.contains(what), "{e:?} does not say {what:?}");
            assert_eq!((get(&a), get(&b)), (3, 4), "{what}: the machine changed");
        };
        let mut extra = saved.clone();
        let mut nic = extra[1].clone();
        nic.id = "nic0".into();
        extra.push(nic);
        refused(
            h.restore_machine(extra).await.unwrap_err(),
            "section 'nic0' (counter state) does not belong to this machine",
        );
        let missing: Vec<Section> = saved.iter().filter(|s| s.id != "uart").cloned().collect();
        refused(
            h.restore_machine(missing).await.unwrap_err(),
            "the saved state has no section 'uart'",
        );
        let mut newer = saved.clone();
        newer[1].version = 3;
        refused(
            h.restore_machine(newer).await.unwrap_err(),
            "section 'uart': counter state version 3 is not supported (this build reads 2)",
        );
        let mut other = saved.clone();
        other[0].kind = "i8042".into();
        refused(
            h.restore_machine(other).await.unwrap_err(),
            "section 'chipset' holds i8042 state, but this machine's 'chipset' is counter",
        );
    }

    #[tokio::test]
    async fn a_device_refusing_its_state_puts_the_others_back() {
        let (h, a, b, _m) = machine_of_two();
        let mut saved = h.save_machine().await.unwrap();
        set(&a, 3);
        set(&b, 4);
        // The chipset takes its state; the UART's breaks its own rule.
        saved[1].state = serde_json::json!([11, 10]);
        let e = h.restore_machine(saved).await.unwrap_err();
        assert!(
            e.contains(
                "uart: its state was refused: counter: invalid state: value 11 is past limit 10"
            ),
            "{e}"
        );
        assert!(e.contains("from before the restore is back"), "{e}");
        assert_eq!((get(&a), get(&b)), (3, 4));
    }
}
