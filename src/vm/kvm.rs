//! The KVM VM: `/dev/kvm`, the VM fd, in-kernel irqchip and PIT, and memory slots.

use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

/// KVM's private pages (identity map, then TSS), where QEMU puts them.
pub const IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
pub const TSS_ADDR: u64 = IDENTITY_MAP_ADDR + 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Could not access KVM kernel module: /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM lacks {0}, which troupe needs")]
    MissingCap(&'static str),
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("no free KVM memory slot for {name} at {gpa:#x}")]
    NoSlot { name: String, gpa: u64 },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// The name of the slots holding guest RAM (QEMU's RAM block name).
pub const RAM_SLOT: &str = "pc.ram";

/// One KVM memory slot as troupe mapped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub slot: u32,
    pub gpa: u64,
    pub size: u64,
    pub host: u64,
    pub readonly: bool,
    pub dirty_log: bool,
    pub name: String,
}

/// The VM and what was created with it.
pub struct KvmVm {
    /// The /dev/kvm handle, kept open for the VM's lifetime.
    #[allow(dead_code)]
    pub kvm: Kvm,
    pub vm: Arc<VmFd>,
    slots: Mutex<Vec<Slot>>,
    max_slots: u32,
}

impl KvmVm {
    /// Open KVM and create a PC-style VM: in-kernel PIC/IOAPIC/LAPIC and PIT.
    pub fn create() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::Open)?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm.set_identity_map_address(IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.set_tss_address(TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let max_slots = kvm.get_nr_memslots() as u32;
        Ok(Self {
            kvm,
            vm: Arc::new(vm),
            slots: Mutex::new(Vec::new()),
            max_slots,
        })
    }

    /// Create the vCPU whose local APIC id is `apic_id` (KVM uses the vCPU id for it).
    pub fn create_vcpu(&self, apic_id: u32) -> Result<VcpuFd, VmError> {
        self.vm
            .create_vcpu(u64::from(apic_id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))
    }

    /// Map host memory at `host` (which must stay mapped for the VM's life) into the guest.
    pub fn map_ram(
        &self,
        gpa: u64,
        size: u64,
        host: u64,
        readonly: bool,
        name: &str,
    ) -> Result<u32, VmError> {
        self.map(gpa, size, host, readonly, false, name)
    }

    pub fn map(
        &self,
        gpa: u64,
        size: u64,
        host: u64,
        readonly: bool,
        dirty_log: bool,
        name: &str,
    ) -> Result<u32, VmError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (0..self.max_slots)
            .find(|s| !slots.iter().any(|x| x.slot == *s))
            .ok_or_else(|| VmError::NoSlot {
                name: name.into(),
                gpa,
            })?;
        let mut flags = 0;
        if readonly {
            flags |= KVM_MEM_READONLY;
        }
        if dirty_log {
            flags |= KVM_MEM_LOG_DIRTY_PAGES;
        }
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the caller guarantees `host..host+size` is a live mapping that outlives
        // the slot (guest RAM and ROM buffers live as long as the VM).
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        slots.push(Slot {
            slot,
            gpa,
            size,
            host,
            readonly,
            dirty_log,
            name: name.into(),
        });
        Ok(slot)
    }

    /// Remove a slot (PAM remapping, a BAR moving).
    pub fn unmap(&self, slot: u32) -> Result<(), VmError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pos) = slots.iter().position(|s| s.slot == slot) else {
            return Ok(());
        };
        let s = slots.remove(pos);
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: s.gpa,
            memory_size: 0,
            userspace_addr: s.host,
        };
        // SAFETY: a zero-sized region deletes the slot; no memory is referenced.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (delete)"))
    }

    /// Turn KVM's dirty log on or off for guest RAM (`pc.ram` slots; the VGA
    /// framebuffer keeps its own). Turning it on starts from a clean log.
    pub fn set_ram_dirty_log(&self, on: bool) -> Result<(), VmError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for s in slots.iter_mut().filter(|s| s.name == RAM_SLOT) {
            if s.dirty_log == on {
                continue;
            }
            let region = kvm_userspace_memory_region {
                slot: s.slot,
                flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
                guest_phys_addr: s.gpa,
                memory_size: s.size,
                userspace_addr: s.host,
            };
            // SAFETY: the same live mapping the slot was created with; only the flags
            // change.
            unsafe { self.vm.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (dirty log)"))?;
            s.dirty_log = on;
        }
        Ok(())
    }

    /// What vCPUs wrote to guest RAM since the dirty log was turned on or last read
    /// (reading clears it): per RAM slot, its guest address and a bit per 4 KiB page.
    pub fn ram_dirty_log(&self) -> Result<Vec<(u64, Vec<u64>)>, VmError> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|s| s.name == RAM_SLOT && s.dirty_log)
            .map(|s| {
                let bitmap = self
                    .vm
                    .get_dirty_log(s.slot, s.size as usize)
                    .map_err(kvm_err("KVM_GET_DIRTY_LOG"))?;
                Ok((s.gpa, bitmap))
            })
            .collect()
    }

    pub fn slots(&self) -> Vec<Slot> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
