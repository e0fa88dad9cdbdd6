//! vCPU hotplug on the host side: the ACPI CPU hotplug block at 0xAF00
//! ([`devices::cpu_hotplug::CpuHotplug`]) on the port bus, GPE0 bit 2 (and with it the
//! SCI) raised when a CPU arrives or the host asks for one to go, and [`HotCpus`], which
//! builds the vCPU `device_add <model>-x86_64-cpu,socket-id=,core-id=,thread-id=` asks for.
//!
//! Data path: `device_add` → the supervisor's hotplug → [`HotCpus::plug`] (KVM_CREATE_VCPU,
//! or the fd of the same CPU parked at its last unplug; CPUID per `-cpu`; the AP's reset
//! state; its thread through the runtime's helper, pinned per `-vcpu-pin`) → the node in
//! the tree → the supervisor adopts the vCPU → [`Cpuhp::plugged`] (insert flag, GPE) → the
//! guest's `_E02`/`CSCN` → device check → INIT/SIPI. `device_del` →
//! [`Cpuhp::unplug_request`] (remove flag, GPE) → the guest's `_EJ0` → the eject flag
//! written on a vCPU → [`VmEvent::CpuEjected`] → the supervisor removes the node, whose
//! teardown ends the thread and parks the fd, then `DEVICE_DELETED`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use actors::bus::{lock, BusHandler};
use actors::events::{EventTx, VmEvent};
use actors::runtime::Registry;
use actors::supervisor::{DeviceTree, Node, Resource, Teardown, SYSTEM_BUS};
use actors::vcpu::{spawn_vcpu, VcpuBootState, VcpuContext, VcpuHandle};
use devices::acpi_pm::AcpiPm;
use devices::cpu_hotplug::{CpuHotplug, CpuHotplugError, CpuHotplugRequest, CPUHP_GPE_BIT};
use kvm_ioctls::VcpuFd;

use crate::config::VcpuPin;
use crate::vm::cpuid::ResolvedCpu;
use crate::vm::kvm::KvmVm;
use crate::vm::regs::VcpuTemplate;
use crate::vm::topology::Topology;

/// The register block with the PM block whose GPE it raises.
pub struct Cpuhp {
    pub model: Arc<Mutex<CpuHotplug>>,
    pm: Arc<Mutex<AcpiPm>>,
    events: EventTx,
}

impl Cpuhp {
    /// `cpus`: (present, APIC id) of every possible CPU.
    pub fn new(cpus: &[(bool, u32)], pm: Arc<Mutex<AcpiPm>>, events: EventTx) -> Arc<Self> {
        Arc::new(Self {
            model: Arc::new(Mutex::new(CpuHotplug::new(cpus))),
            pm,
            events,
        })
    }

    /// A vCPU arrived as possible CPU `cpu`: the insert flag and the GPE.
    pub fn plugged(&self, cpu: u32) {
        lock(&self.model).plugged(cpu);
        lock(&self.pm).set_gpe(CPUHP_GPE_BIT);
    }

    /// Ask the guest to eject CPU `cpu`: the remove flag and the GPE.
    pub fn unplug_request(&self, cpu: u32) -> Result<(), CpuHotplugError> {
        lock(&self.model).unplug_request(cpu)?;
        lock(&self.pm).set_gpe(CPUHP_GPE_BIT);
        Ok(())
    }

    /// CPU `cpu` is gone (however it left).
    pub fn removed(&self, cpu: u32) {
        lock(&self.model).removed(cpu);
    }
}

impl BusHandler for Cpuhp {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.model).read(offset, data);
    }

    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        let req = lock(&self.model).write(offset, data);
        match req {
            Some(CpuHotplugRequest::Eject(cpu)) => self.events.post(VmEvent::CpuEjected { cpu }),
            Some(CpuHotplugRequest::Ost { cpu, event, status }) => {
                self.events.post(VmEvent::CpuOst { cpu, event, status })
            }
            None => {}
        }
    }
}

/// A vCPU plugged and running.
struct Live {
    handle: VcpuHandle,
    boot: VcpuBootState,
}

/// What hot-plugged vCPUs are built with.
pub struct HotCpus {
    pub cpuhp: Arc<Cpuhp>,
    kvm: Arc<KvmVm>,
    cpu: ResolvedCpu,
    topo: Topology,
    /// Possible CPUs (`maxcpus`) and those the command line made.
    maxcpus: u32,
    boot_cpus: u32,
    /// The QOM type `device_add` takes (`qemu64-x86_64-cpu`).
    pub cpu_type: String,
    pin: VcpuPin,
    registry: Registry,
    /// Set once the vCPUs' context (buses, RAM, events) exists.
    ctx: OnceLock<VcpuContext>,
    live: Mutex<HashMap<u32, Live>>,
    /// The fds of unplugged vCPUs with the reset state each was created with, by index.
    parked: Mutex<HashMap<u32, (VcpuFd, VcpuTemplate)>>,
}

/// What `device_add` of a CPU names.
#[derive(Debug, Default, PartialEq, Eq)]
struct CpuSpec {
    driver: String,
    id: Option<String>,
    socket: Option<u32>,
    core: Option<u32>,
    thread: Option<u32>,
    node: Option<u32>,
    apic_id: Option<u32>,
}

impl CpuSpec {
    /// `DRIVER,socket-id=S,core-id=C,thread-id=T[,id=ID][,node-id=0][,apic-id=A]`.
    fn parse(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(',');
        let first = parts.next().unwrap_or_default();
        let mut s = Self {
            driver: first.strip_prefix("driver=").unwrap_or(first).to_string(),
            ..Self::default()
        };
        for p in parts.filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let num = || -> Result<u32, String> {
                parse_u32(v).ok_or_else(|| format!("Parameter '{k}' expects uint32"))
            };
            match k {
                "id" => s.id = Some(v.to_string()),
                "socket-id" => s.socket = Some(num()?),
                "core-id" => s.core = Some(num()?),
                "thread-id" => s.thread = Some(num()?),
                "node-id" => s.node = Some(num()?),
                "apic-id" => s.apic_id = Some(num()?),
                "die-id" if num()? == 0 => {}
                "die-id" => return Err(format!("Invalid CPU die-id: {v} must be in range 0:0")),
                _ => return Err(format!("Property '{}.{k}' not found", s.driver)),
            }
        }
        Ok(s)
    }
}

fn parse_u32(v: &str) -> Option<u32> {
    match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// The tree's anonymous id for the next device without `id=`.
fn anon_id(tree: &DeviceTree) -> String {
    (0..)
        .map(|n| format!("/machine/peripheral-anon/device[{n}]"))
        .find(|id| tree.get(id).is_none())
        .unwrap_or_default()
}

impl HotCpus {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cpuhp: Arc<Cpuhp>,
        kvm: Arc<KvmVm>,
        cpu: ResolvedCpu,
        topo: Topology,
        maxcpus: u32,
        boot_cpus: u32,
        model: &str,
        pin: VcpuPin,
        registry: Registry,
    ) -> Arc<Self> {
        Arc::new(Self {
            cpuhp,
            kvm,
            cpu,
            topo,
            maxcpus,
            boot_cpus,
            cpu_type: format!("{model}-x86_64-cpu"),
            pin,
            registry,
            ctx: OnceLock::new(),
            live: Mutex::default(),
            parked: Mutex::default(),
        })
    }

    /// What every vCPU thread runs with (set once, when the machine's vCPUs start).
    pub fn set_context(&self, ctx: VcpuContext) {
        let _ = self.ctx.set(ctx);
    }

    pub fn boot_cpus(&self) -> u32 {
        self.boot_cpus
    }

    /// Whether `driver` is a CPU type (of any model).
    pub fn is_cpu_driver(driver: &str) -> bool {
        driver.ends_with("-x86_64-cpu")
    }

    /// The index (possible CPU) and APIC id `s` names, checked as QEMU checks them.
    fn slot(&self, s: &CpuSpec) -> Result<(u32, u32), String> {
        let t = &self.topo;
        if s.node.is_some_and(|n| n != 0) {
            return Err("invalid node-id, must be 0".into());
        }
        let (tbits, cbits) = (t.thread_bits(), t.core_bits());
        let from_apic = |a: u32| {
            (
                a >> (tbits + cbits),
                (a >> tbits) & ((1 << cbits) - 1),
                a & ((1 << tbits) - 1),
            )
        };
        // Only apic-id=: the position follows from it.
        let (socket, core, thread) = match (s.apic_id, s.socket, s.core, s.thread) {
            (Some(a), None, None, None) => from_apic(a),
            _ => (
                s.socket.ok_or("CPU socket-id is not set")?,
                s.core.ok_or("CPU core-id is not set")?,
                s.thread.ok_or("CPU thread-id is not set")?,
            ),
        };
        for (what, v, n) in [
            ("socket-id", socket, t.sockets),
            ("core-id", core, t.cores),
            ("thread-id", thread, t.threads),
        ] {
            if v >= n {
                return Err(format!(
                    "Invalid CPU {what}: {v} must be in range 0:{}",
                    n - 1
                ));
            }
        }
        let index = socket * t.per_socket() + core * t.threads + thread;
        let apic = t.apic_id(index);
        if index >= self.maxcpus {
            return Err(format!(
                "CPU [socket: {socket}, core: {core}, thread: {thread}] is beyond maxcpus={}",
                self.maxcpus
            ));
        }
        if let Some(a) = s.apic_id.filter(|&a| a != apic) {
            return Err(format!(
                "Invalid CPU [socket: {socket}, die: 0, core: {core}, thread: {thread}] with \
                 APIC ID {a}, valid index range 0:{}",
                self.maxcpus - 1
            ));
        }
        Ok((index, apic))
    }

    /// `device_add <model>-x86_64-cpu,...`: check it, create and start the vCPU (paused,
    /// waiting for INIT/SIPI) and return its node, whose teardown ends it and parks its
    /// fd. Err is the message for the user.
    pub fn plug(self: &Arc<Self>, spec: &str, tree: &DeviceTree) -> Result<Node, String> {
        let s = CpuSpec::parse(spec)?;
        if s.driver != self.cpu_type {
            return Err(format!(
                "Invalid CPU type, expected cpu type: '{}'",
                self.cpu_type
            ));
        }
        let (id, user) = match &s.id {
            Some(id) => (id.clone(), true),
            None => (anon_id(tree), false),
        };
        if tree.get(&id).is_some() {
            return Err(format!("Duplicate device ID '{id}'"));
        }
        let (index, apic) = self.slot(&s)?;
        if index < self.boot_cpus || lock(&self.live).contains_key(&index) {
            return Err(format!("CPU[{index}] with APIC ID {apic} exists"));
        }
        let ctx = self
            .ctx
            .get()
            .cloned()
            .ok_or("the machine's vCPUs are not running yet")?;
        let (fd, template) = self.vcpu_fd(index, apic)?;
        let boot = template.power_on(false);
        let cores = crate::machine::pin_plan(&self.pin, index + 1)
            .map_err(|e| format!("{e:#}"))?
            .pop()
            .flatten();
        let handle = spawn_vcpu(fd, index, apic, cores, boot.clone(), ctx, &self.registry)
            .map_err(|e| e.to_string())?;
        lock(&self.live).insert(
            index,
            Live {
                handle: handle.clone(),
                boot,
            },
        );
        let p = self.topo.position(index);
        let mut node = Node::new(id, self.cpu_type.clone(), SYSTEM_BUS)
            .with(Resource::Vcpu {
                index,
                apic_id: apic,
            })
            .prop("socket-id", p.socket.to_string())
            .prop("core-id", p.core.to_string())
            .prop("thread-id", p.thread.to_string())
            .actor(&format!("vcpu{index}"));
        if user {
            node = node.user();
        }
        let me = self.clone();
        Ok(node.teardown(Teardown::new(move || {
            me.unplugged(index, template);
            Ok(())
        })))
    }

    /// The vCPU fd for possible CPU `index`: the one parked at its last unplug, or a new
    /// one with CPUID per `-cpu`; with the reset state it was created with.
    fn vcpu_fd(&self, index: u32, apic: u32) -> Result<(VcpuFd, VcpuTemplate), String> {
        if let Some(p) = lock(&self.parked).remove(&index) {
            return Ok(p);
        }
        let fd = self.kvm.create_vcpu(apic).map_err(|e| e.to_string())?;
        let table = self
            .cpu
            .table(&self.topo, index, fd.get_tsc_khz().ok())
            .map_err(|e| e.to_string())?;
        fd.set_cpuid2(&table)
            .map_err(|e| format!("vCPU {index}: KVM_SET_CPUID2 failed: {e}"))?;
        let template = VcpuTemplate::capture(&fd).map_err(|e| e.to_string())?;
        Ok((fd, template))
    }

    /// The node of vCPU `index` left the tree: its thread ends, its fd is parked.
    fn unplugged(&self, index: u32, template: VcpuTemplate) {
        let live = lock(&self.live).remove(&index);
        if let Some(l) = live {
            if let Some(fd) = l.handle.stop_and_park() {
                lock(&self.parked).insert(index, (fd, template));
            }
        }
        self.cpuhp.removed(index);
    }

    /// The running vCPU `index` and its reset state.
    pub fn vcpu(&self, index: u32) -> Option<(VcpuHandle, VcpuBootState)> {
        lock(&self.live)
            .get(&index)
            .map(|l| (l.handle.clone(), l.boot.clone()))
    }

    /// `device_del` of hot-plugged vCPU `index`. Ok(false): already asked.
    pub fn unplug(&self, index: u32) -> Result<bool, String> {
        match self.cpuhp.unplug_request(index) {
            Ok(()) => Ok(true),
            Err(CpuHotplugError::Pending(_)) => Ok(false),
            Err(CpuHotplugError::Legacy) => Err(format!(
                "acpi: device unplug request for not supported device type: {}",
                self.cpu_type
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_spec_names_its_position_and_unknown_properties_are_refused() {
        assert_eq!(
            CpuSpec::parse("qemu64-x86_64-cpu,socket-id=1,core-id=0,thread-id=0,id=c1"),
            Ok(CpuSpec {
                driver: "qemu64-x86_64-cpu".into(),
                id: Some("c1".into()),
                socket: Some(1),
                core: Some(0),
                thread: Some(0),
                ..CpuSpec::default()
            })
        );
        assert_eq!(
            CpuSpec::parse("driver=host-x86_64-cpu,apic-id=0x3").map(|s| (s.driver, s.apic_id)),
            Ok(("host-x86_64-cpu".into(), Some(3)))
        );
        assert_eq!(
            CpuSpec::parse("qemu64-x86_64-cpu,socket-id=x"),
            Err("Parameter 'socket-id' expects uint32".into())
        );
        assert_eq!(
            CpuSpec::parse("qemu64-x86_64-cpu,bogus=1"),
            Err("Property 'qemu64-x86_64-cpu.bogus' not found".into())
        );
    }
}
