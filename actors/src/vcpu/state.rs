//! A vCPU's saveable state (for savevm and migration): everything KVM holds for one vCPU,
//! read and written on the vCPU's own thread while it is paused.
//!
//! The state travels as a `devices::Section` of kind [`KIND`] under the id `vcpu{N}`. The KVM
//! structures keep KVM's own layout (kvm-bindings' `serde` feature encodes each as its
//! bytes); MSRs are a list of (index, value) pairs and the XSAVE area a list of 32-bit
//! words, because both have a size that depends on the host.
//!
//! Order matters in both directions (KVM API documentation, `KVM_GET_MP_STATE`,
//! `KVM_SET_LAPIC`, `KVM_SET_VCPU_EVENTS`, `KVM_SET_XSAVE`):
//! - saving reads `mp_state` first (reading it makes KVM accept pending INIT/SIPI, which may
//!   change the other registers) and the vCPU events last (the other reads may change them);
//! - restoring writes the general registers first (`KVM_SET_REGS` discards a pending
//!   exception), then the special registers (they carry the APIC base, which decides how
//!   `KVM_SET_LAPIC` reads the APIC page), the XCRs before the XSAVE area (XCR0 says which
//!   components are enabled), then the LAPIC, then the MSRs (the TSC deadline only sticks
//!   once the LAPIC timer is in TSC-deadline mode), and the debug registers, `mp_state` and
//!   the vCPU events last (`KVM_SET_SREGS` may make the BSP runnable; events restore the
//!   pending exception, NMI and interrupt shadow the earlier writes cleared).

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, kvm_xsave2, Msrs, Xsave, KVM_MAX_MSR_ENTRIES,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::VcpuError;

/// The section kind of a vCPU's state.
pub const KIND: &str = "vcpu";
/// Bumped whenever [`VcpuState`] changes shape.
pub const VERSION: u32 = 1;

/// MSRs saved even if `KVM_GET_MSR_INDEX_LIST` leaves them out: what a guest OS programs and
/// expects to find again (time, syscalls, APIC, caching). The MTRRs are in [`MTRR_MSRS`].
pub const REQUIRED_MSRS: [(u32, &str); 20] = [
    (0x10, "IA32_TSC"),
    (0x11, "KVM_WALL_CLOCK"),
    (0x12, "KVM_SYSTEM_TIME"),
    (0x1b, "IA32_APIC_BASE"),
    (0x174, "IA32_SYSENTER_CS"),
    (0x175, "IA32_SYSENTER_ESP"),
    (0x176, "IA32_SYSENTER_EIP"),
    (0x1a0, "IA32_MISC_ENABLE"),
    (0x277, "IA32_PAT"),
    (0x6e0, "IA32_TSC_DEADLINE"),
    (0xc000_0080, "EFER"),
    (0xc000_0081, "STAR"),
    (0xc000_0082, "LSTAR"),
    (0xc000_0083, "CSTAR"),
    (0xc000_0084, "SFMASK"),
    (0xc000_0102, "KERNEL_GS_BASE"),
    (0xc000_0103, "TSC_AUX"),
    (0x4b56_4d00, "KVM_WALL_CLOCK_NEW"),
    (0x4b56_4d01, "KVM_SYSTEM_TIME_NEW"),
    (0x4b56_4d02, "KVM_ASYNC_PF_EN"),
];

/// The MTRRs (KVM's index list has none of them): the eight variable pairs, the fixed
/// ranges and the default type.
pub const MTRR_MSRS: [u32; 28] = [
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c,
    0x20d, 0x20e, 0x20f, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e,
    0x26f, 0x2ff,
];

/// The TSC: the one MSR that moves on its own while the vCPU is paused.
pub const MSR_IA32_TSC: u32 = 0x10;

/// The x87/SSE state as `KVM_GET_FPU` reports it (kvm-bindings gives `kvm_fpu` no serde).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// One MSR's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrValue {
    pub index: u32,
    pub value: u64,
}

/// Everything KVM keeps for one vCPU, as saved by `VcpuHandle::save`.
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    /// The XSAVE area in 32-bit words: `KVM_GET_XSAVE`'s 4 KiB, or the larger
    /// `KVM_GET_XSAVE2` area when `KVM_CAP_XSAVE2` asks for more. None: no XSAVE on the host.
    pub xsave: Option<Vec<u32>>,
    /// Extended control registers (XCR0). None: the host has no `KVM_CAP_XCRS`.
    pub xcrs: Option<kvm_xcrs>,
    /// The MSRs KVM lets us read for this vCPU, in ascending index order.
    pub msrs: Vec<MsrValue>,
    pub lapic: kvm_lapic_state,
    pub debugregs: kvm_debugregs,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
}

impl VcpuState {
    /// The value saved for MSR `index`.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|m| m.index == index).map(|m| m.value)
    }
}

/// What this host's KVM offers for saving vCPUs (the same for every vCPU of the process).
struct HostKvm {
    /// `KVM_GET_MSR_INDEX_LIST` plus [`REQUIRED_MSRS`] and [`MTRR_MSRS`], sorted, unique.
    msrs: Vec<u32>,
    /// Bytes of the XSAVE area (0: no XSAVE).
    xsave_bytes: usize,
    xcrs: bool,
}

fn host() -> Result<&'static HostKvm, kvm_ioctls::Error> {
    static HOST: OnceLock<Result<HostKvm, kvm_ioctls::Error>> = OnceLock::new();
    HOST.get_or_init(|| {
        let kvm = Kvm::new()?;
        let mut msrs: Vec<u32> = kvm.get_msr_index_list()?.as_slice().to_vec();
        msrs.extend(REQUIRED_MSRS.iter().map(|(i, _)| *i));
        msrs.extend(MTRR_MSRS);
        msrs.sort_unstable();
        msrs.dedup();
        let xsave_bytes = if !kvm.check_extension(Cap::Xsave) {
            0
        } else {
            // KVM_CAP_XSAVE2 answers the size of the whole area (at least 4 KiB), or 0 on
            // kernels before 5.17.
            let size = usize::try_from(kvm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
            size.max(std::mem::size_of::<kvm_xsave>())
        };
        Ok(HostKvm {
            msrs,
            xsave_bytes,
            xcrs: kvm.check_extension(Cap::Xcrs),
        })
    })
    .as_ref()
    .map_err(|e| *e)
}

/// The name of an MSR troupe always saves ("" for the others).
fn msr_name(index: u32) -> &'static str {
    if MTRR_MSRS.contains(&index) {
        return "MTRR";
    }
    REQUIRED_MSRS
        .iter()
        .find(|(i, _)| *i == index)
        .map_or("", |(_, n)| n)
}

fn msr_list(cpu: u32, entries: &[kvm_msr_entry]) -> Result<Msrs, VcpuError> {
    Msrs::from_entries(entries).map_err(|_| VcpuError::TooManyMsrs {
        cpu,
        count: entries.len(),
    })
}

/// Read the MSRs `indices` of vCPU `cpu`: the values KVM gave, and the indices it refused.
/// `KVM_GET_MSRS` stops at the first MSR it refuses (one this vCPU's CPUID does not have),
/// so that one is set aside and the read goes on after it.
pub fn read_msrs(
    fd: &VcpuFd,
    cpu: u32,
    indices: &[u32],
) -> Result<(Vec<MsrValue>, Vec<u32>), VcpuError> {
    let mut values = Vec::with_capacity(indices.len());
    let mut refused = Vec::new();
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msr_list(cpu, &entries)?;
        let n = fd.get_msrs(&mut msrs).map_err(|source| VcpuError::Kvm {
            cpu,
            what: "KVM_GET_MSRS",
            source,
        })?;
        values.extend(msrs.as_slice().iter().take(n).map(|e| MsrValue {
            index: e.index,
            value: e.data,
        }));
        match chunk.get(n) {
            Some(&index) => {
                refused.push(index);
                rest = &rest[n + 1..];
            }
            None => rest = &rest[chunk.len()..],
        }
    }
    Ok((values, refused))
}

/// Words of the FAM part of a `kvm_xsave2` holding `bytes` in all.
fn xsave_extra_words(bytes: usize) -> usize {
    bytes.saturating_sub(std::mem::size_of::<kvm_xsave>()) / std::mem::size_of::<u32>()
}

/// Reads and writes one vCPU's state.
pub(super) struct StateIo<'a> {
    pub fd: &'a VcpuFd,
    pub cpu: u32,
}

impl StateIo<'_> {
    fn kvm_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let cpu = self.cpu;
        move |source| VcpuError::Kvm { cpu, what, source }
    }

    fn host(&self) -> Result<&'static HostKvm, VcpuError> {
        host().map_err(self.kvm_err("opening /dev/kvm for its MSR list"))
    }

    /// Read the whole state (the vCPU must be paused: its thread is the caller).
    pub fn save(&self) -> Result<VcpuState, VcpuError> {
        let host = self.host()?;
        let mp_state = self
            .fd
            .get_mp_state()
            .map_err(self.kvm_err("KVM_GET_MP_STATE"))?;
        let regs = self.fd.get_regs().map_err(self.kvm_err("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(self.kvm_err("KVM_GET_SREGS"))?;
        let fpu = FpuState::from(&self.fd.get_fpu().map_err(self.kvm_err("KVM_GET_FPU"))?);
        let xsave = self.save_xsave(host)?;
        let xcrs = if host.xcrs {
            Some(self.fd.get_xcrs().map_err(self.kvm_err("KVM_GET_XCRS"))?)
        } else {
            None
        };
        let debugregs = self
            .fd
            .get_debug_regs()
            .map_err(self.kvm_err("KVM_GET_DEBUGREGS"))?;
        let lapic = self.fd.get_lapic().map_err(self.kvm_err("KVM_GET_LAPIC"))?;
        let msrs = self.save_msrs(host)?;
        let events = self
            .fd
            .get_vcpu_events()
            .map_err(self.kvm_err("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            msrs,
            lapic,
            debugregs,
            mp_state,
            events,
        })
    }

    fn save_xsave(&self, host: &HostKvm) -> Result<Option<Vec<u32>>, VcpuError> {
        if host.xsave_bytes == 0 {
            return Ok(None);
        }
        let extra = xsave_extra_words(host.xsave_bytes);
        if extra == 0 {
            let x = self.fd.get_xsave().map_err(self.kvm_err("KVM_GET_XSAVE"))?;
            return Ok(Some(x.region.to_vec()));
        }
        let mut x = Xsave::new(extra).map_err(|_| VcpuError::XsaveSize {
            cpu: self.cpu,
            bytes: host.xsave_bytes,
            host: host.xsave_bytes,
        })?;
        // SAFETY: `x` holds `extra` words after the 4 KiB region, which with the region is
        // the size KVM_CAP_XSAVE2 asked for; troupe enables no XSTATE feature later.
        unsafe { self.fd.get_xsave2(&mut x) }.map_err(self.kvm_err("KVM_GET_XSAVE2"))?;
        let f: &kvm_xsave2 = x.as_fam_struct_ref();
        let mut words = f.xsave.region.to_vec();
        words.extend_from_slice(x.as_slice());
        Ok(Some(words))
    }

    /// Read every MSR KVM lists as saveable, plus [`REQUIRED_MSRS`] and [`MTRR_MSRS`]; the
    /// ones KVM refuses for this vCPU are left out with a log line saying so.
    fn save_msrs(&self, host: &HostKvm) -> Result<Vec<MsrValue>, VcpuError> {
        let (values, refused) = read_msrs(self.fd, self.cpu, &host.msrs)?;
        for &index in &refused {
            let name = msr_name(index);
            if !name.is_empty() {
                tracing::warn!(
                    cpu = self.cpu,
                    "MSR {index:#x} ({name}) not saved: KVM_GET_MSRS refuses it for this vCPU \
                     (its CPUID lacks the feature)"
                );
            }
        }
        if !refused.is_empty() {
            let list: Vec<String> = refused.iter().map(|i| format!("{i:#x}")).collect();
            tracing::debug!(
                cpu = self.cpu,
                "MSRs not saved, KVM_GET_MSRS refuses them for this vCPU's CPUID: {}",
                list.join(" ")
            );
        }
        Ok(values)
    }

    /// Write a saved state back (the vCPU must be paused), in the order the module doc gives.
    /// On an error the vCPU holds part of the new state: it must be restored again or reset
    /// before it runs.
    pub fn restore(&self, s: &VcpuState) -> Result<(), VcpuError> {
        let host = self.host()?;
        self.fd
            .set_regs(&s.regs)
            .map_err(self.kvm_err("KVM_SET_REGS"))?;
        self.fd
            .set_sregs(&s.sregs)
            .map_err(self.kvm_err("KVM_SET_SREGS"))?;
        match (&s.xcrs, host.xcrs) {
            (Some(x), true) => self.fd.set_xcrs(x).map_err(self.kvm_err("KVM_SET_XCRS"))?,
            (Some(_), false) => {
                return Err(VcpuError::Unsupported {
                    cpu: self.cpu,
                    what: "XCRs",
                })
            }
            (None, _) => {}
        }
        self.fd
            .set_fpu(&kvm_fpu::from(&s.fpu))
            .map_err(self.kvm_err("KVM_SET_FPU"))?;
        if let Some(words) = &s.xsave {
            self.restore_xsave(host, words)?;
        }
        self.fd
            .set_lapic(&s.lapic)
            .map_err(self.kvm_err("KVM_SET_LAPIC"))?;
        self.restore_msrs(&s.msrs)?;
        self.fd
            .set_debug_regs(&s.debugregs)
            .map_err(self.kvm_err("KVM_SET_DEBUGREGS"))?;
        self.fd
            .set_mp_state(s.mp_state)
            .map_err(self.kvm_err("KVM_SET_MP_STATE"))?;
        let mut events = s.events;
        // KVM_GET_VCPU_EVENTS always fills the pending NMI and the SIPI vector but only
        // KVM_SET_VCPU_EVENTS with these flags writes them back.
        events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
        self.fd
            .set_vcpu_events(&events)
            .map_err(self.kvm_err("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    fn restore_xsave(&self, host: &HostKvm, words: &[u32]) -> Result<(), VcpuError> {
        let bytes = std::mem::size_of_val(words);
        let region_words = std::mem::size_of::<kvm_xsave>() / std::mem::size_of::<u32>();
        if host.xsave_bytes == 0 || bytes > host.xsave_bytes || words.len() < region_words {
            return Err(VcpuError::XsaveSize {
                cpu: self.cpu,
                bytes,
                host: host.xsave_bytes,
            });
        }
        let extra = xsave_extra_words(host.xsave_bytes);
        if extra == 0 {
            let mut x = kvm_xsave::default();
            x.region.copy_from_slice(&words[..region_words]);
            // SAFETY: the host's XSAVE area is 4 KiB (no KVM_CAP_XSAVE2 beyond it), exactly
            // the size of `x`.
            return unsafe { self.fd.set_xsave(&x) }.map_err(self.kvm_err("KVM_SET_XSAVE"));
        }
        let mut x = Xsave::new(extra).map_err(|_| VcpuError::XsaveSize {
            cpu: self.cpu,
            bytes,
            host: host.xsave_bytes,
        })?;
        // SAFETY: only the fixed region is written through the struct; the FAM length is
        // left as Xsave::new set it.
        unsafe { x.as_mut_fam_struct() }
            .xsave
            .region
            .copy_from_slice(&words[..region_words]);
        let tail = &words[region_words..];
        x.as_mut_slice()[..tail.len()].copy_from_slice(tail);
        // SAFETY: `x` is as large as KVM_CAP_XSAVE2 asked for (checked above that the saved
        // area fits in it).
        unsafe { self.fd.set_xsave2(&x) }.map_err(self.kvm_err("KVM_SET_XSAVE"))
    }

    fn restore_msrs(&self, msrs: &[MsrValue]) -> Result<(), VcpuError> {
        for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|m| kvm_msr_entry {
                    index: m.index,
                    data: m.value,
                    ..Default::default()
                })
                .collect();
            let list = msr_list(self.cpu, &entries)?;
            let n = self
                .fd
                .set_msrs(&list)
                .map_err(self.kvm_err("KVM_SET_MSRS"))?;
            // KVM_SET_MSRS stops at the first MSR it refuses.
            if let Some(m) = chunk.get(n) {
                return Err(VcpuError::MsrRefused {
                    cpu: self.cpu,
                    index: m.index,
                    value: m.value,
                });
            }
        }
        Ok(())
    }
}
