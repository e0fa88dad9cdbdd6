//! The VM-wide state KVM keeps for troupe's PC: the in-kernel PICs and IOAPIC
//! (`KVM_CREATE_IRQCHIP`, the full in-kernel irqchip; troupe refuses `kernel-irqchip=split`),
//! the in-kernel PIT (`KVM_CREATE_PIT2`) and the kvmclock base. Each travels as one
//! `devices::Section`; the local APICs go with their vCPUs (`vcpu::state`).
//!
//! Saving and restoring need a quiescent VM (every vCPU paused, devices drained), which is
//! the supervisor's job. On restore the irqchip comes first and the clock last: like QEMU
//! after a migration, the guest's clock continues from the saved value, so the time the VM
//! spent stopped does not appear to the guest.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use devices::{Section, StateError};

/// Section kinds, each at [`VERSION`].
pub const PIC_KIND: &str = "kvm-pic";
pub const IOAPIC_KIND: &str = "kvm-ioapic";
pub const PIT_KIND: &str = "kvm-pit";
pub const CLOCK_KIND: &str = "kvm-clock";
/// Bumped whenever one of the state types here changes shape.
pub const VERSION: u32 = 1;

/// The section ids, as the supervisor's device tree names these parts of the machine.
pub const PIC_ID: &str = "pic";
pub const IOAPIC_ID: &str = "ioapic";
pub const PIT_ID: &str = "pit";
pub const CLOCK_ID: &str = "kvmclock";

#[derive(Debug, thiserror::Error)]
pub enum KvmStateError {
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the VM state has no '{0}' section")]
    Missing(&'static str),
    #[error("the VM state has two '{0}' sections")]
    Duplicate(&'static str),
    #[error("section '{id}' ({kind}) is not part of the VM-wide KVM state")]
    Unexpected { id: String, kind: String },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmStateError {
    move |source| KvmStateError::Kvm { what, source }
}

/// Both 8259 PICs (`KVM_GET_IRQCHIP` chips 0 and 1).
#[derive(Clone, Serialize, Deserialize)]
pub struct PicState {
    pub master: kvm_irqchip,
    pub slave: kvm_irqchip,
}

/// The IOAPIC (`KVM_GET_IRQCHIP` chip 2): its id, IRR and redirection table.
#[derive(Clone, Serialize, Deserialize)]
pub struct IoapicState {
    pub ioapic: kvm_irqchip,
}

/// The 8254 PIT (`KVM_GET_PIT2`). `count_load_time` is host time and is not restored:
/// `KVM_SET_PIT2` reloads every channel's count as of the restore.
#[derive(Clone, Serialize, Deserialize)]
pub struct PitState {
    pub pit: kvm_pit_state2,
}

/// The kvmclock (`KVM_GET_CLOCK`): nanoseconds of guest time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    pub clock: u64,
    /// `KVM_GET_CLOCK`'s flags, for the record: `KVM_CLOCK_TSC_STABLE` means the value came
    /// from KVM's master clock (a stable host TSC), so every vCPU's kvmclock page agreed
    /// with it. Not passed back: `KVM_SET_CLOCK` with `KVM_CLOCK_REALTIME` would advance
    /// the clock by the time the VM was stopped, which is what restoring must not do.
    pub flags: u32,
}

fn get_chip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, KvmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm_err(what))?;
    Ok(chip)
}

fn set_chip(
    vm: &VmFd,
    chip: &kvm_irqchip,
    chip_id: u32,
    kind: &'static str,
    what: &'static str,
) -> Result<(), KvmStateError> {
    if chip.chip_id != chip_id {
        return Err(StateError::Invalid {
            kind,
            reason: format!("irqchip id {} where {chip_id} belongs", chip.chip_id),
        }
        .into());
    }
    vm.set_irqchip(chip).map_err(kvm_err(what))
}

/// Read the PICs, IOAPIC, PIT and kvmclock as four sections.
pub fn save_vm_state(vm: &VmFd) -> Result<Vec<Section>, KvmStateError> {
    let pic = PicState {
        master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
        slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
    };
    let ioapic = IoapicState {
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
    };
    let pit = PitState {
        pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
    };
    let c = vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
    let clock = ClockState {
        clock: c.clock,
        flags: c.flags,
    };
    Ok(vec![
        Section::new(PIC_ID, PIC_KIND, VERSION, &pic)?,
        Section::new(IOAPIC_ID, IOAPIC_KIND, VERSION, &ioapic)?,
        Section::new(PIT_ID, PIT_KIND, VERSION, &pit)?,
        Section::new(CLOCK_ID, CLOCK_KIND, VERSION, &clock)?,
    ])
}

/// The one section of `kind` among `sections`.
fn find<'a>(sections: &'a [Section], kind: &'static str) -> Result<&'a Section, KvmStateError> {
    let mut it = sections.iter().filter(|s| s.kind == kind);
    let first = it.next().ok_or(KvmStateError::Missing(kind))?;
    if it.next().is_some() {
        return Err(KvmStateError::Duplicate(kind));
    }
    Ok(first)
}

/// Load what [`save_vm_state`] saved: all four sections must be there, and nothing else.
/// Every section is decoded (kind and version checked) before anything is written.
pub fn restore_vm_state(vm: &VmFd, sections: &[Section]) -> Result<(), KvmStateError> {
    const KINDS: [&str; 4] = [PIC_KIND, IOAPIC_KIND, PIT_KIND, CLOCK_KIND];
    if let Some(s) = sections.iter().find(|s| !KINDS.contains(&s.kind.as_str())) {
        return Err(KvmStateError::Unexpected {
            id: s.id.clone(),
            kind: s.kind.clone(),
        });
    }
    let pic: PicState = find(sections, PIC_KIND)?.decode(PIC_KIND, VERSION)?;
    let ioapic: IoapicState = find(sections, IOAPIC_KIND)?.decode(IOAPIC_KIND, VERSION)?;
    let pit: PitState = find(sections, PIT_KIND)?.decode(PIT_KIND, VERSION)?;
    let clock: ClockState = find(sections, CLOCK_KIND)?.decode(CLOCK_KIND, VERSION)?;
    set_chip(
        vm,
        &pic.master,
        KVM_IRQCHIP_PIC_MASTER,
        PIC_KIND,
        "KVM_SET_IRQCHIP (PIC master)",
    )?;
    set_chip(
        vm,
        &pic.slave,
        KVM_IRQCHIP_PIC_SLAVE,
        PIC_KIND,
        "KVM_SET_IRQCHIP (PIC slave)",
    )?;
    set_chip(
        vm,
        &ioapic.ioapic,
        KVM_IRQCHIP_IOAPIC,
        IOAPIC_KIND,
        "KVM_SET_IRQCHIP (IOAPIC)",
    )?;
    vm.set_pit2(&pit.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    vm.set_clock(&kvm_clock_data {
        clock: clock.clock,
        ..Default::default()
    })
    .map_err(kvm_err("KVM_SET_CLOCK"))
}
