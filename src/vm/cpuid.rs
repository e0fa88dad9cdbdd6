//! CPUID for each vCPU: what KVM supports, shaped by `-cpu` and the `-smp` topology.
//!
//! Starts from `KVM_GET_SUPPORTED_CPUID`. `-cpu host`/`max` keep everything KVM offers;
//! `-cpu qemu64` keeps only QEMU's qemu64 feature set (plus the paravirtual bits QEMU
//! enables by default under KVM). Then `+feat`/`-feat` adjust, and the topology leaves
//! (1, 4, 0xB, 0x1F, 0x80000008, 0x8000001E) are written for this vCPU's APIC id.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use super::topology::Topology;
use crate::config::{CpuConfig, CpuModel};

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("-cpu {model}: unknown CPU feature '{name}' (see -cpu help)")]
    UnknownFeature { model: String, name: String },
    #[error("-cpu {model}: CPUID leaf {leaf:#x} does not fit KVM's table")]
    TooManyEntries { model: String, leaf: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A named CPUID feature bit.
struct Feature {
    name: &'static str,
    leaf: u32,
    subleaf: u32,
    reg: Reg,
    bit: u32,
}

macro_rules! feat {
    ($n:expr, $l:expr, $s:expr, $r:ident, $b:expr) => {
        Feature {
            name: $n,
            leaf: $l,
            subleaf: $s,
            reg: Reg::$r,
            bit: $b,
        }
    };
}

/// Feature names as QEMU spells them.
const FEATURES: &[Feature] = &[
    feat!("fpu", 1, 0, Edx, 0),
    feat!("vme", 1, 0, Edx, 1),
    feat!("de", 1, 0, Edx, 2),
    feat!("pse", 1, 0, Edx, 3),
    feat!("tsc", 1, 0, Edx, 4),
    feat!("msr", 1, 0, Edx, 5),
    feat!("pae", 1, 0, Edx, 6),
    feat!("mce", 1, 0, Edx, 7),
    feat!("cx8", 1, 0, Edx, 8),
    feat!("apic", 1, 0, Edx, 9),
    feat!("sep", 1, 0, Edx, 11),
    feat!("mtrr", 1, 0, Edx, 12),
    feat!("pge", 1, 0, Edx, 13),
    feat!("mca", 1, 0, Edx, 14),
    feat!("cmov", 1, 0, Edx, 15),
    feat!("pat", 1, 0, Edx, 16),
    feat!("pse36", 1, 0, Edx, 17),
    feat!("clflush", 1, 0, Edx, 19),
    feat!("mmx", 1, 0, Edx, 23),
    feat!("fxsr", 1, 0, Edx, 24),
    feat!("sse", 1, 0, Edx, 25),
    feat!("sse2", 1, 0, Edx, 26),
    feat!("ss", 1, 0, Edx, 27),
    feat!("ht", 1, 0, Edx, 28),
    feat!("pni", 1, 0, Ecx, 0),
    feat!("sse3", 1, 0, Ecx, 0),
    feat!("pclmulqdq", 1, 0, Ecx, 1),
    feat!("monitor", 1, 0, Ecx, 3),
    feat!("vmx", 1, 0, Ecx, 5),
    feat!("ssse3", 1, 0, Ecx, 9),
    feat!("fma", 1, 0, Ecx, 12),
    feat!("cx16", 1, 0, Ecx, 13),
    feat!("pcid", 1, 0, Ecx, 17),
    feat!("sse4.1", 1, 0, Ecx, 19),
    feat!("sse4_1", 1, 0, Ecx, 19),
    feat!("sse4.2", 1, 0, Ecx, 20),
    feat!("sse4_2", 1, 0, Ecx, 20),
    feat!("x2apic", 1, 0, Ecx, 21),
    feat!("movbe", 1, 0, Ecx, 22),
    feat!("popcnt", 1, 0, Ecx, 23),
    feat!("tsc-deadline", 1, 0, Ecx, 24),
    feat!("aes", 1, 0, Ecx, 25),
    feat!("xsave", 1, 0, Ecx, 26),
    feat!("avx", 1, 0, Ecx, 28),
    feat!("f16c", 1, 0, Ecx, 29),
    feat!("rdrand", 1, 0, Ecx, 30),
    feat!("hypervisor", 1, 0, Ecx, 31),
    feat!("fsgsbase", 7, 0, Ebx, 0),
    feat!("bmi1", 7, 0, Ebx, 3),
    feat!("avx2", 7, 0, Ebx, 5),
    feat!("smep", 7, 0, Ebx, 7),
    feat!("bmi2", 7, 0, Ebx, 8),
    feat!("erms", 7, 0, Ebx, 9),
    feat!("invpcid", 7, 0, Ebx, 10),
    feat!("rdseed", 7, 0, Ebx, 18),
    feat!("adx", 7, 0, Ebx, 19),
    feat!("smap", 7, 0, Ebx, 20),
    feat!("clflushopt", 7, 0, Ebx, 23),
    feat!("clwb", 7, 0, Ebx, 24),
    feat!("sha-ni", 7, 0, Ebx, 29),
    feat!("umip", 7, 0, Ecx, 2),
    feat!("pku", 7, 0, Ecx, 3),
    feat!("vaes", 7, 0, Ecx, 9),
    feat!("vpclmulqdq", 7, 0, Ecx, 10),
    feat!("rdpid", 7, 0, Ecx, 22),
    feat!("syscall", 0x8000_0001, 0, Edx, 11),
    feat!("nx", 0x8000_0001, 0, Edx, 20),
    feat!("xd", 0x8000_0001, 0, Edx, 20),
    feat!("mmxext", 0x8000_0001, 0, Edx, 22),
    feat!("pdpe1gb", 0x8000_0001, 0, Edx, 26),
    feat!("rdtscp", 0x8000_0001, 0, Edx, 27),
    feat!("lm", 0x8000_0001, 0, Edx, 29),
    feat!("lahf_lm", 0x8000_0001, 0, Ecx, 0),
    feat!("lahf-lm", 0x8000_0001, 0, Ecx, 0),
    feat!("cmp_legacy", 0x8000_0001, 0, Ecx, 1),
    feat!("svm", 0x8000_0001, 0, Ecx, 2),
    feat!("abm", 0x8000_0001, 0, Ecx, 5),
    feat!("sse4a", 0x8000_0001, 0, Ecx, 6),
    feat!("misalignsse", 0x8000_0001, 0, Ecx, 7),
    feat!("3dnowprefetch", 0x8000_0001, 0, Ecx, 8),
    feat!("topoext", 0x8000_0001, 0, Ecx, 22),
    feat!("kvmclock", 0x4000_0001, 0, Eax, 0),
    feat!("kvm-nopiodelay", 0x4000_0001, 0, Eax, 1),
    feat!("kvmclock2", 0x4000_0001, 0, Eax, 3),
    feat!("kvm-asyncpf", 0x4000_0001, 0, Eax, 4),
    feat!("kvm-steal-time", 0x4000_0001, 0, Eax, 5),
    feat!("kvm-pv-eoi", 0x4000_0001, 0, Eax, 6),
    feat!("kvm-pv-unhalt", 0x4000_0001, 0, Eax, 7),
    feat!("kvmclock-stable-bit", 0x4000_0001, 0, Eax, 24),
    feat!("arat", 6, 0, Eax, 2),
];

/// qemu64 (QEMU's default model): leaf 1 EDX/ECX, leaf 7 EBX/ECX, 0x80000001 EDX/ECX,
/// and the paravirtual leaf 0x40000001 EAX that QEMU turns on under KVM.
fn qemu64_allowed(leaf: u32, reg: Reg) -> Option<u32> {
    let bits = |names: &[&str]| {
        names.iter().fold(0u32, |acc, n| {
            let f = FEATURES
                .iter()
                .find(|f| f.name == *n && f.leaf == leaf && f.reg == reg);
            acc | f.map_or(0, |f| 1 << f.bit)
        })
    };
    match (leaf, reg) {
        (1, Reg::Edx) => Some(bits(&[
            "fpu", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge",
            "mca", "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "ht",
        ])),
        (1, Reg::Ecx) => Some(bits(&[
            "pni",
            "cx16",
            "x2apic",
            "hypervisor",
            "tsc-deadline",
        ])),
        (7, Reg::Ebx) | (7, Reg::Ecx) | (7, Reg::Edx) => Some(0),
        // On AMD, bits 0-9, 12-17, 23 and 24 mirror leaf 1 EDX (QEMU's AMD aliases).
        (0x8000_0001, Reg::Edx) => Some(bits(&["syscall", "nx", "lm"]) | 0x0183_f3ff),
        (0x8000_0001, Reg::Ecx) => Some(bits(&["lahf_lm", "abm", "sse4a", "cmp_legacy"])),
        _ => None,
    }
}

fn reg_mut(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// Validate `-cpu` feature names before any VM exists.
pub fn check_features(cpu: &CpuConfig) -> Result<(), CpuidError> {
    for (name, _) in &cpu.features {
        if !FEATURES.iter().any(|f| f.name == name) {
            return Err(CpuidError::UnknownFeature {
                model: model_name(cpu.model).into(),
                name: name.clone(),
            });
        }
    }
    Ok(())
}

pub fn model_name(m: CpuModel) -> &'static str {
    match m {
        CpuModel::Host => "host",
        CpuModel::Max => "max",
        CpuModel::Qemu64 => "qemu64",
    }
}

/// The CPUID table for vCPU `index` with APIC id `apic_id`.
pub fn for_vcpu(
    supported: &CpuId,
    cpu: &CpuConfig,
    topo: &Topology,
    index: u32,
) -> Result<CpuId, CpuidError> {
    check_features(cpu)?;
    let apic_id = topo.apic_id(index);
    let pos = topo.position(index);
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let amd = entries
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| e.ebx == u32::from_le_bytes(*b"Auth"));

    if cpu.model == CpuModel::Qemu64 {
        for e in entries.iter_mut() {
            for r in [Reg::Eax, Reg::Ebx, Reg::Ecx, Reg::Edx] {
                if let Some(mask) = qemu64_allowed(e.function, r) {
                    *reg_mut(e, r) &= mask;
                }
            }
        }
    }
    for (name, on) in &cpu.features {
        for f in FEATURES.iter().filter(|f| f.name == name) {
            let supported_bit = supported
                .as_slice()
                .iter()
                .find(|e| e.function == f.leaf && e.index == f.subleaf)
                .is_some_and(|e| {
                    let mut e = *e;
                    *reg_mut(&mut e, f.reg) & (1 << f.bit) != 0
                });
            if *on && !supported_bit {
                eprintln!(
                    "troupe: warning: host doesn't support requested feature: {} ({name})",
                    model_name(cpu.model)
                );
                continue;
            }
            if let Some(e) = entries
                .iter_mut()
                .find(|e| e.function == f.leaf && e.index == f.subleaf)
            {
                let r = reg_mut(e, f.reg);
                if *on {
                    *r |= 1 << f.bit;
                } else {
                    *r &= !(1 << f.bit);
                }
            }
        }
    }

    let per_pkg = topo.per_socket();
    let tbits = topo.thread_bits();
    let cbits = topo.core_bits();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((per_pkg.min(255)) << 16);
                if per_pkg > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
                e.ecx |= 1 << 31; // hypervisor
            }
            4 if !amd => {
                // Cache levels: EAX[31:26] cores per package - 1, [25:14] threads sharing.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { per_pkg } else { topo.threads };
                e.eax = (e.eax & 0x3ff)
                    | ((topo.cores - 1).min(63) << 26)
                    | ((sharing - 1).min(4095) << 14);
            }
            0xb | 0x1f => match e.index {
                0 => {
                    e.eax = tbits;
                    e.ebx = topo.threads;
                    e.ecx = 1 << 8;
                    e.edx = apic_id;
                }
                1 => {
                    e.eax = tbits + cbits;
                    e.ebx = per_pkg;
                    e.ecx = 1 | (2 << 8);
                    e.edx = apic_id;
                }
                n => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = n;
                    e.edx = apic_id;
                }
            },
            0x8000_0001 if amd => {
                if per_pkg > 1 {
                    e.ecx |= 1 << 1; // CmpLegacy
                } else {
                    e.ecx &= !(1 << 1);
                }
            }
            0x8000_0008 if amd => {
                e.ecx = (e.ecx & !0xf0ff) | ((tbits + cbits) << 12) | (per_pkg - 1).min(255);
            }
            0x8000_001e if amd => {
                e.eax = apic_id;
                e.ebx = ((topo.threads - 1) << 8) | (pos.core & 0xff);
                e.ecx = pos.socket & 0xff;
            }
            _ => {}
        }
    }
    // Make sure the 0xB topology leaf exists even where KVM listed only subleaf 0.
    for sub in 0..3u32 {
        let has_b = entries.iter().any(|e| e.function == 0xb);
        if has_b && !entries.iter().any(|e| e.function == 0xb && e.index == sub) {
            let (eax, ebx, ecx) = match sub {
                0 => (tbits, topo.threads, 1 << 8),
                1 => (tbits + cbits, per_pkg, 1 | (2 << 8)),
                n => (0, 0, n),
            };
            entries.push(kvm_cpuid_entry2 {
                function: 0xb,
                index: sub,
                flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax,
                ebx,
                ecx,
                edx: apic_id,
                ..Default::default()
            });
        }
    }
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries {
        model: model_name(cpu.model).into(),
        leaf: 0xb,
    })
}

// ---- What probing asks of the CPU models (query-cpu-model-expansion and friends) ----

/// Other spellings in [`FEATURES`] of a feature listed under QEMU's canonical name.
fn is_alias(name: &str) -> bool {
    name.contains('_') || matches!(name, "sse3" | "xd")
}

/// The feature names `-cpu` takes, each once, as QEMU spells them.
pub fn feature_names() -> impl Iterator<Item = &'static str> {
    FEATURES.iter().map(|f| f.name).filter(|n| !is_alias(n))
}

/// Whether `entries` has feature `f` set.
fn has(entries: &[kvm_cpuid_entry2], f: &Feature) -> bool {
    entries
        .iter()
        .find(|e| e.function == f.leaf && e.index == f.subleaf)
        .is_some_and(|e| {
            let v = match f.reg {
                Reg::Eax => e.eax,
                Reg::Ebx => e.ebx,
                Reg::Ecx => e.ecx,
                Reg::Edx => e.edx,
            };
            v & (1 << f.bit) != 0
        })
}

/// Each feature (canonical names) and whether a guest with `cpu` sees it on this host:
/// read from the very CPUID table [`for_vcpu`] gives vCPU 0.
pub fn feature_states(
    supported: &CpuId,
    cpu: &CpuConfig,
) -> Result<Vec<(&'static str, bool)>, CpuidError> {
    let topo = Topology::from_smp(&crate::config::SmpConfig {
        cpus: 1,
        sockets: 1,
        cores: 1,
        threads: 1,
        maxcpus: 1,
    });
    let table = for_vcpu(supported, cpu, &topo, 0)?;
    Ok(FEATURES
        .iter()
        .filter(|f| !is_alias(f.name))
        .map(|f| (f.name, has(table.as_slice(), f)))
        .collect())
}

/// Features of `model` this host's KVM cannot give a guest (`unavailable-features`):
/// `host` and `max` are what KVM offers, so never any.
pub fn unavailable_features(supported: &CpuId, model: CpuModel) -> Vec<&'static str> {
    if model != CpuModel::Qemu64 {
        return Vec::new();
    }
    FEATURES
        .iter()
        .filter(|f| !is_alias(f.name))
        .filter(|f| qemu64_allowed(f.leaf, f.reg).is_some_and(|m| m & (1 << f.bit) != 0))
        // Set from the -smp topology, not taken from the host.
        .filter(|f| f.name != "ht")
        .filter(|f| !has(supported.as_slice(), f))
        .map(|f| f.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_supported() -> CpuId {
        let e = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        CpuId::from_entries(&[
            e(0, 0, 0x10, u32::from_le_bytes(*b"Genu"), 0, 0),
            e(1, 0, 0x806f8, 0, 0xffff_ffff, 0xffff_ffff),
            e(7, 0, 0, 0xffff_ffff, 0, 0),
            e(0xb, 0, 0, 0, 0, 0),
            e(0xb, 1, 0, 0, 0, 0),
            e(0x8000_0001, 0, 0, 0, 0xffff_ffff, 0xffff_ffff),
        ])
        .unwrap()
    }

    fn cpu(model: CpuModel, features: &[(&str, bool)]) -> CpuConfig {
        CpuConfig {
            model,
            features: features.iter().map(|(n, b)| (n.to_string(), *b)).collect(),
        }
    }

    fn get(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn topology_leaves_carry_the_apic_id() {
        let t = Topology {
            sockets: 2,
            cores: 2,
            threads: 1,
        };
        let c = for_vcpu(&fake_supported(), &cpu(CpuModel::Host, &[]), &t, 3).unwrap();
        assert_eq!(get(&c, 1, 0).ebx >> 24, 3);
        assert_eq!((get(&c, 1, 0).ebx >> 16) & 0xff, 2);
        assert_eq!(get(&c, 0xb, 0).edx, 3);
        assert_eq!(get(&c, 0xb, 1).eax, 1);
        assert_eq!(get(&c, 0xb, 1).ebx, 2);
    }

    #[test]
    fn qemu64_drops_advanced_features_and_plus_adds_them_back() {
        let t = Topology {
            sockets: 1,
            cores: 1,
            threads: 1,
        };
        let c = for_vcpu(&fake_supported(), &cpu(CpuModel::Qemu64, &[]), &t, 0).unwrap();
        assert_eq!(get(&c, 1, 0).ecx & (1 << 25), 0, "aes is not in qemu64");
        assert_eq!(get(&c, 7, 0).ebx, 0);
        let c = for_vcpu(
            &fake_supported(),
            &cpu(CpuModel::Qemu64, &[("aes", true)]),
            &t,
            0,
        )
        .unwrap();
        assert_ne!(get(&c, 1, 0).ecx & (1 << 25), 0);
        let c = for_vcpu(
            &fake_supported(),
            &cpu(CpuModel::Host, &[("x2apic", false)]),
            &t,
            0,
        )
        .unwrap();
        assert_eq!(get(&c, 1, 0).ecx & (1 << 21), 0);
    }

    #[test]
    fn unknown_feature_is_named() {
        let e = check_features(&cpu(CpuModel::Qemu64, &[("frobnicate", true)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-cpu qemu64: unknown CPU feature 'frobnicate' (see -cpu help)"
        );
    }
}
