//! What this host's KVM can give a guest, read once: `KVM_GET_SUPPORTED_CPUID` with the
//! adjustments QEMU makes to it, the feature MSRs, and the host CPU's identification (for
//! `-cpu host`).

use kvm_bindings::{kvm_cpuid_entry2, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use super::features::{self, Reg, Source, WORD_INFO};
use super::CpuidError;

/// What this host's KVM can give a guest: `KVM_GET_SUPPORTED_CPUID`, the feature MSRs,
/// and the host CPU's own identification (for `-cpu host`).
#[derive(Debug, Clone)]
pub struct HostCpu {
    pub(super) supported: Vec<kvm_cpuid_entry2>,
    pub(super) msr_features: Vec<(u32, u64)>,
    pub(super) tsc_deadline: bool,
    /// The host CPU's vendor, leaf 1 EAX, brand string and physical address bits.
    pub(super) vendor: [u8; 12],
    pub(super) version: u32,
    pub(super) brand: String,
    pub(super) phys_bits: u32,
    /// XSAVE component offsets as the host CPU reports them (leaf 0xD subleaf n EBX/ECX).
    pub(super) xsave_layout: Vec<(u32, u32, u32)>,
}

/// Feature MSRs QEMU 7.2 models (ARCH_CAPABILITIES, CORE_CAPABILITY, PERF_CAPABILITIES).
const FEATURE_MSRS: [u32; 3] = [0x10a, 0xcf, 0x345];

impl HostCpu {
    /// Read once from `/dev/kvm` (for answers outside a VM, e.g. QMP
    /// `query-cpu-definitions` through [`models`]).
    #[allow(dead_code)] // used by the QMP side
    pub fn probe() -> Result<Self, CpuidError> {
        let kvm = Kvm::new().map_err(|source| CpuidError::Kvm {
            what: "/dev/kvm",
            source,
        })?;
        Self::read(&kvm)
    }

    /// Read from an open KVM handle.
    pub fn read(kvm: &Kvm) -> Result<Self, CpuidError> {
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| CpuidError::Kvm {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let mut msr_features = Vec::new();
        if let Ok(list) = kvm.get_msr_feature_index_list() {
            for &msr in FEATURE_MSRS.iter() {
                if !list.as_slice().contains(&msr) {
                    continue;
                }
                let entry = kvm_bindings::kvm_msr_entry {
                    index: msr,
                    ..Default::default()
                };
                if let Ok(mut msrs) = Msrs::from_entries(&[entry]) {
                    if kvm.get_msrs(&mut msrs) == Ok(1) {
                        msr_features.push((msr, msrs.as_slice()[0].data));
                    }
                }
            }
        }
        let host = |leaf: u32, sub: u32| {
            let r = core::arch::x86_64::__cpuid_count(leaf, sub);
            [r.eax, r.ebx, r.ecx, r.edx]
        };
        let l0 = host(0, 0);
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&l0[1].to_le_bytes());
        vendor[4..8].copy_from_slice(&l0[3].to_le_bytes());
        vendor[8..12].copy_from_slice(&l0[2].to_le_bytes());
        let max_ext = host(0x8000_0000, 0)[0];
        let mut brand = Vec::new();
        if max_ext >= 0x8000_0004 {
            for leaf in 0x8000_0002..=0x8000_0004 {
                for r in host(leaf, 0) {
                    brand.extend_from_slice(&r.to_le_bytes());
                }
            }
        }
        let end = brand.iter().position(|&b| b == 0).unwrap_or(brand.len());
        let phys_bits = if max_ext >= 0x8000_0008 {
            host(0x8000_0008, 0)[0] & 0xff
        } else {
            36
        };
        let xsave_layout = (2..19)
            .map(|i| {
                let r = host(0xd, i);
                (r[0], r[1], r[2])
            })
            .collect();
        Ok(Self {
            supported: supported.as_slice().to_vec(),
            msr_features,
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
            vendor,
            version: host(1, 0)[0],
            brand: String::from_utf8_lossy(&brand[..end]).into_owned(),
            phys_bits,
            xsave_layout,
        })
    }

    fn entry(&self, leaf: u32, sub: u32) -> Option<&kvm_cpuid_entry2> {
        self.supported
            .iter()
            .find(|e| e.function == leaf && e.index == sub)
            .or_else(|| {
                // Leaves without subleaves are listed with index 0.
                self.supported.iter().find(|e| {
                    e.function == leaf
                        && e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0
                })
            })
    }

    pub(super) fn reg(&self, leaf: u32, sub: u32, reg: Reg) -> u32 {
        self.entry(leaf, sub).map_or(0, |e| match reg {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        })
    }

    /// What KVM offers for one feature word, with the adjustments QEMU makes to KVM's
    /// answer (target/i386/kvm/kvm.c `kvm_arch_get_supported_cpuid`), for a VM with the
    /// in-kernel irqchip.
    pub(super) fn supported_word(&self, w: usize) -> u32 {
        match WORD_INFO[w].source {
            Source::Msr(msr) => self
                .msr_features
                .iter()
                .find(|(m, _)| *m == msr)
                .map_or(0, |(_, v)| *v as u32),
            Source::Cpuid(leaf, sub, reg) => {
                let mut v = self.reg(leaf, sub, reg);
                match (leaf, reg) {
                    // MTRR, PAT, MCE, MCA: old kernels misreport them.
                    (1, Reg::Edx) => v |= (1 << 12) | (1 << 16) | (1 << 7) | (1 << 14),
                    (1, Reg::Ecx) => {
                        v |= 1 << 31;
                        if self.tsc_deadline {
                            v |= 1 << 24;
                        }
                    }
                    (6, Reg::Eax) => v |= 1 << 2,
                    // Linux 4.17-4.20 report ARCH_CAPABILITIES on AMD hosts: trust it only
                    // with the MSR.
                    (7, Reg::Edx)
                        if sub == 0 && !self.msr_features.iter().any(|(m, _)| *m == 0x10a) =>
                    {
                        v &= !(1 << 29);
                    }
                    (0x8000_0001, Reg::Ecx) => v |= 1 << 22,
                    (0x4000_0001, Reg::Edx) => v |= 1, // KVM_HINTS_REALTIME
                    (0x8000_0001, Reg::Edx) => {
                        v |= self.supported_word(features::L1_EDX) & AMD_ALIASES;
                    }
                    _ => {}
                }
                v
            }
        }
    }

    /// XCR0 components KVM supports (leaf 0xD subleaf 0 EDX:EAX).
    pub(super) fn xcr0(&self) -> u64 {
        u64::from(self.reg(0xd, 0, Reg::Eax)) | (u64::from(self.reg(0xd, 0, Reg::Edx)) << 32)
    }
}

/// Leaf 1 EDX bits AMD repeats in 0x80000001 EDX.
pub(super) const AMD_ALIASES: u32 = 0x0183_f3ff;
