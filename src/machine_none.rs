//! `-machine none`: the empty machine. A KVM VM with no RAM, no vCPUs and no devices,
//! and the monitors of the command line. Management tools (libvirt) start troupe this way
//! (`-S -no-user-config -nodefaults -nographic -machine none,accel=kvm:tcg -qmp ...`) to
//! ask over QMP what it has before they build a real machine with it.
//!
//! The supervisor runs as for any machine (`query-status`, `cont`, `stop`, `quit` and
//! the signals work); there is simply nothing to run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actors::events::event_channel;
use actors::monitor::commands::CmdError;
use actors::monitor::handles::{
    ChipsetHandle, ChipsetService, DrivesHandle, DrivesService, MemoryHandle, MemoryService,
    NetHandle, NetService,
};
use actors::monitor::{Announce, MediaOp, MediaTarget, MonitorContext};
use actors::runtime::Registry;
use actors::supervisor::{DeviceTree, Machine, Supervisor, SupervisorConfig};
use actors::vcpu::VcpuBootState;
use anyhow::{anyhow, Result};
use devices::memory::GuestMemoryMmap;
use serde_json::{json, Value};

use crate::catalog::PcCatalog;
use crate::config::VmConfig;
use crate::vm::cpuid::HostCpu;

/// The machine the supervisor drives: nothing to reset, power off or save.
struct NoMachine;

impl Machine for NoMachine {
    fn reset(&self) -> Result<Vec<VcpuBootState>, String> {
        Ok(Vec::new())
    }
    fn power_button(&self) -> bool {
        false
    }
    fn save_vm_state(&self) -> Result<Vec<devices::Section>, String> {
        Ok(Vec::new())
    }
    fn restore_vm_state(&self, sections: &[devices::Section]) -> Result<(), String> {
        if sections.is_empty() {
            Ok(())
        } else {
            Err("machine 'none' has no state to restore".into())
        }
    }
}

/// No NIC, no network backend.
struct NoNet;

impl NetService for NoNet {
    fn network(&self, _tree: &DeviceTree) -> String {
        String::new()
    }
    fn announce_self(&self, _schedule: Announce) -> Result<(), String> {
        Ok(())
    }
    fn query_rx_filter(&self, name: Option<&str>) -> Result<Value, String> {
        match name {
            None => Ok(json!([])),
            Some(n) => Err(format!("net client({n}) isn't a NIC")),
        }
    }
    fn usernet(&self) -> String {
        String::new()
    }
    fn set_link(&self, name: &str, _up: bool) -> Result<(), String> {
        Err(format!("Device '{name}' not found"))
    }
    fn hostfwd(&self, _args: &[&str], _add: bool) -> Result<String, String> {
        Err("invalid netdev: machine 'none' has no network".into())
    }
}

/// No drive.
struct NoDrives;

impl DrivesService for NoDrives {
    fn query_block(&self) -> Value {
        json!([])
    }
    fn query_blockstats(&self) -> Value {
        json!([])
    }
    fn query_named_block_nodes(&self) -> Value {
        json!([])
    }
    fn snapshot_disks(&self) -> Vec<(String, actors::block::BlockHandle)> {
        Vec::new()
    }
    fn media(&self, target: &MediaTarget, _op: MediaOp) -> Result<(), CmdError> {
        let name = target
            .device
            .as_deref()
            .or(target.id.as_deref())
            .unwrap_or_default();
        Err(CmdError::DeviceNotFound(format!(
            "Device '{name}' not found"
        )))
    }
}

/// A board with nothing on it but the chardevs of the monitors.
struct NoChipset {
    chardevs: Arc<Mutex<Vec<(String, String)>>>,
}

impl ChipsetService for NoChipset {
    fn pic(&self) -> String {
        String::new()
    }
    fn irq(&self) -> String {
        String::new()
    }
    fn mtree(&self, _flat: bool) -> String {
        "address-space: memory\n  0000000000000000-ffffffffffffffff (prio 0, i/o): system\n\n"
            .into()
    }
    fn roms(&self) -> String {
        String::new()
    }
    fn query_chardev(&self) -> Value {
        let list = self.chardevs.lock().unwrap_or_else(|p| p.into_inner());
        Value::Array(
            list.iter()
                .map(|(label, filename)| {
                    json!({"frontend-open": true, "filename": filename, "label": label})
                })
                .collect(),
        )
    }
}

/// No RAM.
struct NoMemory;

impl MemoryService for NoMemory {
    fn read_phys(&self, _addr: u64, _buf: &mut [u8]) -> bool {
        false
    }
    fn dirty_log(&self, _on: bool) -> Result<(), String> {
        Ok(())
    }
    fn dirty_pages(&self) -> Result<u64, String> {
        Ok(0)
    }
}

/// Refuse what the empty machine has nowhere to put.
fn check(cfg: &VmConfig) -> Result<()> {
    let refuse = |what: &str| {
        Err(anyhow!(
            "{what}: machine 'none' has no buses or devices (it is for probing; use -machine pc)"
        ))
    };
    if !cfg.devices.is_empty() {
        return refuse("-device");
    }
    if !cfg.drives.is_empty() {
        return refuse("-drive/-blockdev");
    }
    if !cfg.netdevs.is_empty() {
        return refuse("-netdev");
    }
    if !cfg.serials.is_empty() {
        return refuse("-serial");
    }
    if cfg.vga != crate::config::VgaKind::None {
        return refuse("-vga");
    }
    if cfg.incoming.is_some() {
        return refuse("-incoming");
    }
    if cfg.loadvm.is_some() {
        return refuse("-loadvm");
    }
    Ok(())
}

/// Build the empty machine, say it is ready, run it until `quit` or a signal; returns the
/// exit status.
pub fn run(
    cfg: &VmConfig,
    rt: &tokio::runtime::Runtime,
    registry: &Registry,
    ready: impl FnOnce(),
) -> Result<i32> {
    check(cfg)?;
    // The accelerator is initialised as for any machine: a VM that has nothing in it.
    let kvm =
        kvm_ioctls::Kvm::new().map_err(|e| anyhow!("Could not access KVM kernel module: {e}"))?;
    let _vm = kvm
        .create_vm()
        .map_err(|e| anyhow!("KVM_CREATE_VM failed: {e}"))?;
    let host = HostCpu::read(&kvm)?;
    let console = crate::machine::start_console(cfg, rt, registry)?;
    let mut muxes = crate::machine::start_muxes(cfg, &console, rt, registry)?;
    let (_events, events_rx) = event_channel();
    let (supervisor, handle) = Supervisor::new(
        SupervisorConfig {
            start_paused: cfg.start_paused,
            no_reboot: cfg.no_reboot,
            no_shutdown: cfg.no_shutdown,
            monitor_attached: !cfg.monitors.is_empty(),
            incoming: None,
            cpu: String::new(),
        },
        Vec::new(),
        DeviceTree::new(),
        Arc::new(NoMachine),
        events_rx,
    );
    let supervisor = supervisor.with_registry(registry.clone());
    for m in muxes.values() {
        m.set_supervisor(handle.clone());
    }
    let labels: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let ctx = MonitorContext {
        supervisor: handle.clone(),
        registry: registry.clone(),
        mem: GuestMemoryMmap::default(),
        name: cfg.name.clone(),
        uuid: cfg.uuid.clone(),
        input: None,
        display: None,
        vnc: console.vnc.clone(),
        log: Some(Arc::new(crate::process::set_log_directives)),
        memory: MemoryHandle::spawn(rt.handle(), registry, Arc::new(NoMemory)),
        net: NetHandle::spawn(rt.handle(), registry, Arc::new(NoNet)),
        drives: DrivesHandle::spawn(rt.handle(), registry, Arc::new(NoDrives)),
        chipset: ChipsetHandle::spawn(
            rt.handle(),
            registry,
            Arc::new(NoChipset {
                chardevs: labels.clone(),
            }),
        ),
        catalog: Arc::new(PcCatalog::new(host)),
        balloon: None,
        usb: None,
        topology: Vec::new(),
        cpu_slots: Vec::new(),
        cpu_type: String::new(),
        keys: Arc::default(),
        buttons: Arc::default(),
        dirty_rate: Arc::default(),
        jobs: Arc::default(),
        fds: Arc::default(),
        memory_devices: None,
    };
    let _monitors =
        crate::machine::start_monitors(cfg, &console, rt, registry, ctx, &mut muxes, &labels)?;
    let _muxes: HashMap<_, _> = muxes;
    ready();
    let reason = rt.block_on(supervisor.run());
    if let Some(vnc) = &console.vnc {
        vnc.shutdown();
    }
    Ok(reason.status())
}
