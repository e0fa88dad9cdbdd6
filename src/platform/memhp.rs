//! Memory hotplug on the host side: the ACPI memory hotplug block at 0x0A00
//! ([`devices::mem_hotplug::MemHotplug`]) on the port bus, GPE0 bit 3 (and with it the SCI)
//! raised when a DIMM arrives or the host asks for one to go, and [`HotMem`], which makes
//! the memory backends `object_add` asks for and maps the DIMMs `device_add pc-dimm`
//! plugs into the device-memory region (`-m ...,slots=N,maxmem=MAX`).
//!
//! Data path: `object_add memory-backend-ram,id=m1,size=...` → the supervisor's hotplug →
//! [`HotMem::plug_backend`] (an mmap as `-object` makes it) → node `/objects/m1`.
//! `device_add pc-dimm,memdev=m1` → [`HotMem::plug_dimm`] (slot and address chosen and
//! checked as QEMU does, a KVM memory slot over the backend's mapping) → the node, which
//! uses `/objects/m1` → [`Memhp::plugged`] (insert flag, GPE) → the guest's `_E03`/`MSCN`
//! → device check → `_CRS` reads the range. `device_del` → [`HotMem::unplug_dimm`] (remove
//! flag, GPE) → the guest's `_EJ0` → the eject flag → [`VmEvent::DimmEjected`] → the
//! supervisor removes the node, whose teardown deletes the KVM slot, then
//! `DEVICE_DELETED`. `object_del` is refused while a DIMM uses the backend.
//!
//! The DIMM's memory is guest RAM to the vCPUs (a KVM slot); device models that DMA
//! (virtio, IDE, fw_cfg) see the guest memory map made at start, so a buffer the guest
//! places in a DIMM is not reachable by them; migration and savevm refuse a VM with a
//! DIMM plugged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actors::bus::{lock, BusHandler};
use actors::events::{EventTx, VmEvent};
use actors::monitor::memdev::{Dimm, Memdev, MemoryDevices, Ospm};
use actors::supervisor::{BackendKind, DeviceTree, Node, Resource, Teardown, SYSTEM_BUS};
use devices::acpi_pm::AcpiPm;
use devices::mem_hotplug::{MemHotplug, MemHotplugError, MemHotplugRequest, MEMHP_GPE_BIT};

use crate::cli::object::{MemoryBackend, ObjectSpec};
use crate::config::{RamBacking, VmConfig};
use crate::vm::kvm::KvmVm;
use crate::vm::memory::DeviceMemory;

/// The DIMMs' alignment (and a backend's size granule): QEMU's for anonymous RAM on x86_64
/// (QEMU_VMALLOC_ALIGN, 2 MiB).
const DIMM_ALIGN: u64 = 2 << 20;

/// The register block with the PM block whose GPE it raises, and the tree id of the DIMM
/// in each slot (for the eject and `_OST` events).
pub struct Memhp {
    pub model: Arc<Mutex<MemHotplug>>,
    pm: Arc<Mutex<AcpiPm>>,
    events: EventTx,
    /// (tree id, whether it is the user's `id=`) by slot.
    ids: Mutex<Vec<Option<(String, bool)>>>,
}

impl Memhp {
    pub fn new(slots: u32, pm: Arc<Mutex<AcpiPm>>, events: EventTx) -> Arc<Self> {
        Arc::new(Self {
            model: Arc::new(Mutex::new(MemHotplug::new(slots))),
            pm,
            events,
            ids: Mutex::new(vec![None; slots as usize]),
        })
    }

    /// A DIMM arrived in `slot`: the insert flag and the GPE.
    fn plugged(&self, slot: u32, addr: u64, size: u64) {
        // The GPE is raised before the guest can see the flag (the model's lock is held),
        // so a guest that polls the flags finds the GPE status set with it.
        let mut model = lock(&self.model);
        model.plugged(slot, addr, size);
        lock(&self.pm).set_gpe(MEMHP_GPE_BIT);
    }
}

impl BusHandler for Memhp {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        lock(&self.model).read(offset, data);
    }

    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        let req = lock(&self.model).write(offset, data);
        let id = |slot: u32| lock(&self.ids).get(slot as usize).cloned().flatten();
        match req {
            Some(MemHotplugRequest::Eject(slot)) => match id(slot) {
                Some((id, _)) => self.events.post(VmEvent::DimmEjected { id }),
                None => tracing::debug!(
                    target: "guest_errors",
                    "the guest ejected memory slot {slot}, which holds no DIMM"
                ),
            },
            Some(MemHotplugRequest::Ost {
                slot,
                event,
                status,
            }) => self.events.post(VmEvent::DimmOst {
                slot,
                device: id(slot).filter(|(_, user)| *user).map(|(id, _)| id),
                event,
                status,
            }),
            None => {}
        }
    }
}

/// A memory backend `object_add` made: its mapping, unmapped when its node goes.
struct Backend {
    spec: MemoryBackend,
    /// Host address of the mapping (`spec.size` bytes).
    host: usize,
    /// The DIMM that maps it, if any (tree id).
    used_by: Option<String>,
}

/// A plugged DIMM.
struct PluggedDimm {
    id: String,
    user: bool,
    memdev: String,
    addr: u64,
    size: u64,
    kvm_slot: u32,
    hotplugged: bool,
}

/// What `device_add pc-dimm` names.
#[derive(Debug, Default, PartialEq, Eq)]
struct DimmSpec {
    id: Option<String>,
    memdev: Option<String>,
    addr: Option<u64>,
    slot: Option<i64>,
}

impl DimmSpec {
    /// `pc-dimm[,id=ID][,memdev=M][,addr=A][,slot=N][,node=0]`.
    fn parse(spec: &str) -> Result<Self, String> {
        let mut s = Self::default();
        for p in spec.split(',').skip(1).filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let num = || -> Result<u64, String> {
                crate::cli::options::parse_uint(v)
                    .ok_or_else(|| format!("Parameter '{k}' expects uint64"))
            };
            match k {
                "id" => s.id = Some(v.to_string()),
                "memdev" => s.memdev = Some(v.to_string()),
                "addr" => s.addr = Some(num()?),
                "slot" => {
                    s.slot = Some(
                        v.parse::<i64>()
                            .map_err(|_| format!("Parameter '{k}' expects int32"))?,
                    )
                }
                "node" if num()? == 0 => {}
                "node" => {
                    return Err(format!(
                    "'DIMM property node has value {v}' which exceeds the number of numa nodes: 1"
                ))
                }
                _ => return Err(format!("Property 'pc-dimm.{k}' not found")),
            }
        }
        Ok(s)
    }
}

/// Memory backends and DIMMs made at run time.
pub struct HotMem {
    pub memhp: Arc<Memhp>,
    kvm: Arc<KvmVm>,
    region: DeviceMemory,
    slots: u32,
    base_memory: u64,
    /// Backend defaults (`-machine mem-merge=`, `dump-guest-core=`, `-mem-prealloc`).
    defaults: RamBacking,
    dump_default: bool,
    backends: Mutex<BTreeMap<String, Backend>>,
    dimms: Mutex<BTreeMap<u32, PluggedDimm>>,
}

impl HotMem {
    pub fn new(cfg: &VmConfig, memhp: Arc<Memhp>, kvm: Arc<KvmVm>) -> Arc<Self> {
        Arc::new(Self {
            memhp,
            kvm,
            region: DeviceMemory::pc(cfg.memory, cfg.memory_slots, cfg.maxmem),
            slots: cfg.memory_slots,
            base_memory: cfg.memory,
            defaults: cfg.machine.ram.clone(),
            dump_default: cfg.machine.dump_guest_core,
            backends: Mutex::default(),
            dimms: Mutex::default(),
        })
    }

    /// Whether `driver` (`device_add`'s) is a memory device.
    pub fn is_driver(driver: &str) -> bool {
        driver == "pc-dimm"
    }

    /// `object_add memory-backend-*,id=ID,size=...`: map it and return its node, whose
    /// teardown unmaps it.
    pub fn plug_backend(self: &Arc<Self>, spec: &str, tree: &DeviceTree) -> Result<Node, String> {
        let opts =
            crate::cli::options::Opts::parse(spec, Some("qom-type")).map_err(|e| e.to_string())?;
        let b = match crate::cli::object::parse_object(opts).map_err(|e| e.to_string())? {
            ObjectSpec::MemoryBackend(b) => b,
            ObjectSpec::Secret { .. } | ObjectSpec::TlsCreds(_) => {
                return Err("troupe creates only memory backends at run time".into())
            }
        };
        self.plug_backend_spec(b, tree)
    }

    /// Map memory backend `b` and return its node, whose teardown unmaps it.
    fn plug_backend_spec(
        self: &Arc<Self>,
        b: MemoryBackend,
        tree: &DeviceTree,
    ) -> Result<Node, String> {
        let node_id = BackendKind::Memory.id(&b.id);
        if tree.get(&node_id).is_some() || lock(&self.backends).contains_key(&b.id) {
            return Err(format!(
                "attempt to add duplicate property '{}' to object (type 'container')",
                b.id
            ));
        }
        let backing = RamBacking {
            source: b.source.clone(),
            share: b.share,
            prealloc: b.prealloc.unwrap_or(self.defaults.prealloc),
            merge: b.merge.unwrap_or(self.defaults.merge),
            mem_lock: self.defaults.mem_lock,
        };
        let host = map_backend(&backing, b.size, b.dump.unwrap_or(self.dump_default))
            .map_err(|e| format!("memory backend '{}': {e}", b.id))?;
        let id = b.id.clone();
        let driver = match &b.source {
            crate::config::RamSource::Anonymous => "memory-backend-ram",
            crate::config::RamSource::File(_) => "memory-backend-file",
            crate::config::RamSource::Memfd { .. } => "memory-backend-memfd",
        };
        let size = b.size;
        lock(&self.backends).insert(
            id.clone(),
            Backend {
                spec: b,
                host,
                used_by: None,
            },
        );
        let me = self.clone();
        Ok(Node::backend(BackendKind::Memory, &id, driver)
            .prop("size", size.to_string())
            .teardown(Teardown::new(move || {
                let mut backends = lock(&me.backends);
                // object_del checks first; a DIMM plugged since keeps the mapping alive
                // (KVM maps it), whatever the tree says.
                if let Some(user) = backends.get(&id).and_then(|b| b.used_by.clone()) {
                    return Err(format!(
                        "object '{id}' is in use by '{user}', can not be deleted"
                    ));
                }
                if let Some(b) = backends.remove(&id) {
                    // SAFETY: the mapping made by `map_backend`, `size` bytes, which no
                    // KVM slot maps (no DIMM uses it).
                    unsafe { libc::munmap(b.host as *mut libc::c_void, b.spec.size as usize) };
                }
                Ok(())
            })))
    }

    /// `device_add pc-dimm,...`: check it as QEMU does, map the backend into the guest and
    /// return the DIMM's node (announced to the guest by [`HotMem::announce`]).
    pub fn plug_dimm(self: &Arc<Self>, spec: &str, tree: &DeviceTree) -> Result<Node, String> {
        self.plug_dimm_as(spec, tree, true)
    }

    /// [`HotMem::plug_dimm`]; `hotplugged` false: from the command line, present at
    /// power-on with no insert event.
    fn plug_dimm_as(
        self: &Arc<Self>,
        spec: &str,
        tree: &DeviceTree,
        hotplugged: bool,
    ) -> Result<Node, String> {
        let s = DimmSpec::parse(spec)?;
        let (id, user) = match &s.id {
            Some(id) => (id.clone(), true),
            None => (anon_id(tree), false),
        };
        if tree.get(&id).is_some() {
            return Err(format!("Duplicate device ID '{id}'"));
        }
        let memdev = s.memdev.ok_or("'memdev' property must be set")?;
        let mut backends = lock(&self.backends);
        let b = backends
            .get_mut(&memdev)
            .ok_or_else(|| format!("Device '{memdev}' not found"))?;
        if b.used_by.is_some() {
            return Err(format!("can't use already busy memdev: {memdev}"));
        }
        let mut dimms = lock(&self.dimms);
        // QEMU's order: the slot, then the size and the address.
        if self.region.capacity == 0 {
            return Err(
                "memory devices (e.g. for memory hotplug) are not enabled, please \
                        specify the maxmem option"
                    .into(),
            );
        }
        let slot = match s.slot {
            Some(n) if n < 0 || n >= i64::from(self.slots) => {
                return Err(format!(
                    "invalid slot number {n}, valid range is [0-{}]",
                    i64::from(self.slots) - 1
                ))
            }
            Some(n) if dimms.contains_key(&(n as u32)) => return Err(format!("slot {n} is busy")),
            Some(n) => n as u32,
            None => (0..self.slots)
                .find(|n| !dimms.contains_key(n))
                .ok_or("no free slots available")?,
        };
        let size = b.spec.size;
        if size % DIMM_ALIGN != 0 {
            return Err(format!(
                "backend memory size must be multiple of {DIMM_ALIGN:#x}"
            ));
        }
        let used: u64 = dimms.values().map(|d| d.size).sum();
        if used + size > self.region.capacity {
            return Err(format!(
                "not enough space, currently {used:#x} in use of total space for memory \
                 devices {:#x}",
                self.region.capacity
            ));
        }
        let addr = self.address(s.addr, size, &dimms)?;
        let kvm_slot = self
            .kvm
            .map_ram(addr, size, b.host as u64, false, &format!("dimm-{id}"))
            .map_err(|e| e.to_string())?;
        b.used_by = Some(id.clone());
        dimms.insert(
            slot,
            PluggedDimm {
                id: id.clone(),
                user,
                memdev: memdev.clone(),
                addr,
                size,
                kvm_slot,
                hotplugged,
            },
        );
        lock(&self.memhp.ids)[slot as usize] = Some((id.clone(), user));
        if !hotplugged {
            lock(&self.memhp.model).present(slot, addr, size);
        }
        let mut node = Node::new(id, "pc-dimm", SYSTEM_BUS)
            .with(Resource::Memory {
                base: addr,
                len: size,
            })
            .uses(BackendKind::Memory.id(&memdev))
            .prop("addr", format!("{addr:#x}"))
            .prop("slot", slot.to_string())
            .prop("node", "0")
            .prop("memdev", format!("\"/objects/{memdev}\""));
        if user {
            node = node.user();
        }
        let me = self.clone();
        Ok(node.teardown(Teardown::new(move || me.unplugged(slot))))
    }

    /// Where a DIMM of `size` bytes goes: `addr=` checked, or the lowest free aligned
    /// address of the region (QEMU's first fit).
    fn address(
        &self,
        want: Option<u64>,
        size: u64,
        dimms: &BTreeMap<u32, PluggedDimm>,
    ) -> Result<u64, String> {
        let (lo, hi) = (self.region.base, self.region.end());
        let mut taken: Vec<(u64, u64, &str)> = dimms
            .values()
            .map(|d| (d.addr, d.addr + d.size, d.id.as_str()))
            .collect();
        taken.sort();
        if let Some(a) = want {
            if a % DIMM_ALIGN != 0 {
                return Err(format!("address must be aligned to {DIMM_ALIGN:#x} bytes"));
            }
            if a < lo || a.checked_add(size).is_none_or(|e| e > hi) {
                return Err(format!(
                    "can't add memory device [{a:#x}:{size:#x}], usable range for memory \
                     devices [{lo:#x}:{:#x}]",
                    hi - lo
                ));
            }
            if let Some((_, _, other)) = taken.iter().find(|(s, e, _)| a < *e && *s < a + size) {
                return Err(format!(
                    "address range conflicts with memory device id='{other}'"
                ));
            }
            return Ok(a);
        }
        let mut at = lo;
        for (s, e, _) in &taken {
            if at + size <= *s {
                break;
            }
            at = at.max(e.next_multiple_of(DIMM_ALIGN));
        }
        if at + size > hi {
            return Err(
                "could not find position in guest address space for memory device - \
                        memory fragmented due to alignments"
                    .into(),
            );
        }
        Ok(at)
    }

    /// The node of the DIMM in `slot` left the tree: its KVM slot goes, its backend is
    /// free again, the slot is empty.
    fn unplugged(&self, slot: u32) -> Result<(), String> {
        let d = lock(&self.dimms).remove(&slot);
        lock(&self.memhp.ids)[slot as usize] = None;
        lock(&self.memhp.model).removed(slot);
        let Some(d) = d else { return Ok(()) };
        if let Some(b) = lock(&self.backends).get_mut(&d.memdev) {
            b.used_by = None;
        }
        self.kvm.unmap(d.kvm_slot).map_err(|e| e.to_string())
    }

    /// The command line's memory backends and DIMMs (`-object memory-backend-*`,
    /// `-device pc-dimm`), made and put in `tree` at start, on `device_add`'s path.
    pub fn cold_plug(
        self: &Arc<Self>,
        cfg: &VmConfig,
        tree: &mut DeviceTree,
    ) -> anyhow::Result<()> {
        for b in &cfg.dimm_backends {
            let node = self
                .plug_backend_spec(b.clone(), tree)
                .map_err(|e| anyhow::anyhow!("-object {}: {e}", b.id))?;
            tree.insert(node)?;
        }
        for d in &cfg.dimms {
            let node = self
                .plug_dimm_as(d, tree, false)
                .map_err(|e| anyhow::anyhow!("-device {d}: {e}"))?;
            tree.insert(node)?;
        }
        Ok(())
    }

    /// A DIMM node [`HotMem::plug_dimm`] built is in the tree: tell the guest.
    pub fn announce(&self, node: &Node) {
        let dimms = lock(&self.dimms);
        if let Some((slot, d)) = dimms.iter().find(|(_, d)| d.id == node.id && d.hotplugged) {
            self.memhp.plugged(*slot, d.addr, d.size);
        }
    }

    /// `device_del` of DIMM `id`: the remove flag and the GPE. Ok(false): already asked.
    pub fn unplug_dimm(&self, id: &str) -> Result<bool, String> {
        let slot = lock(&self.dimms)
            .iter()
            .find(|(_, d)| d.id == id)
            .map(|(s, _)| *s)
            .ok_or_else(|| format!("Device '{id}' not found"))?;
        let mut model = lock(&self.memhp.model);
        match model.unplug_request(slot) {
            Ok(()) => {
                // Raised before the model's lock is released, as in `Memhp::plugged`.
                lock(&self.memhp.pm).set_gpe(MEMHP_GPE_BIT);
                Ok(true)
            }
            Err(MemHotplugError::Pending(_)) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl MemoryDevices for HotMem {
    fn memdevs(&self) -> Vec<Memdev> {
        lock(&self.backends)
            .values()
            .map(|b| Memdev {
                id: b.spec.id.clone(),
                size: b.spec.size,
                merge: b.spec.merge.unwrap_or(self.defaults.merge),
                dump: b.spec.dump.unwrap_or(self.dump_default),
                prealloc: b.spec.prealloc.unwrap_or(self.defaults.prealloc),
                share: b.spec.share,
            })
            .collect()
    }

    fn dimms(&self) -> Vec<Dimm> {
        lock(&self.dimms)
            .iter()
            .map(|(slot, d)| Dimm {
                id: d.user.then(|| d.id.clone()),
                addr: d.addr,
                size: d.size,
                slot: *slot,
                memdev: d.memdev.clone(),
                hotplugged: d.hotplugged,
            })
            .collect()
    }

    fn ospm(&self) -> Vec<Ospm> {
        let ids = lock(&self.memhp.ids).clone();
        lock(&self.memhp.model)
            .slots()
            .iter()
            .enumerate()
            .map(|(i, s)| Ospm {
                slot: i as u32,
                device: ids
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|(_, user)| *user)
                    .map(|(id, _)| id),
                source: s.ost_event,
                status: s.ost_status,
            })
            .collect()
    }

    fn base_memory(&self) -> u64 {
        self.base_memory
    }
}

/// The tree's anonymous id for the next device without `id=`.
fn anon_id(tree: &DeviceTree) -> String {
    (0..)
        .map(|n| format!("/machine/peripheral-anon/device[{n}]"))
        .find(|id| tree.get(id).is_none())
        .unwrap_or_default()
}

/// Map a backend of `size` bytes as `-object` would (anonymous, file or memfd; KSM,
/// preallocation, core dumps as asked). Returns its host address.
fn map_backend(backing: &RamBacking, size: u64, dump: bool) -> Result<usize, String> {
    let mapped = crate::vm::backing::map(backing, &[size], crate::vm::memory::map_aligned)
        .map_err(|e| e.to_string())?;
    let m = mapped.into_iter().next().ok_or("no mapping was made")?;
    // The file stays open through the mapping; the descriptor can go.
    drop(m.file);
    let (host, len) = (m.host, size as usize);
    if backing.merge {
        crate::vm::backing::mark_mergeable(host, len);
    }
    if !dump {
        // SAFETY: the range is exactly the mapping just made; MADV_DONTDUMP changes only
        // what a core dump of the process contains.
        unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTDUMP) };
    }
    if backing.prealloc {
        if let Err(e) = crate::vm::backing::prealloc(host, len) {
            // SAFETY: the mapping just made, not yet used by anything.
            unsafe { libc::munmap(host.cast(), len) };
            return Err(e.to_string());
        }
    }
    Ok(host as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dimm_spec_names_its_backend_and_unknown_properties_are_refused() {
        assert_eq!(
            DimmSpec::parse("pc-dimm,id=d1,memdev=m1,addr=0x140000000,slot=1"),
            Ok(DimmSpec {
                id: Some("d1".into()),
                memdev: Some("m1".into()),
                addr: Some(0x1_4000_0000),
                slot: Some(1),
            })
        );
        assert_eq!(
            DimmSpec::parse("pc-dimm,bogus=1"),
            Err("Property 'pc-dimm.bogus' not found".into())
        );
        assert_eq!(
            DimmSpec::parse("pc-dimm,addr=x"),
            Err("Parameter 'addr' expects uint64".into())
        );
    }
}
