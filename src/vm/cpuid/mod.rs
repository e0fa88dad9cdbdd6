//! CPU models and the CPUID table each vCPU gets, built the way QEMU 7.2 builds it under KVM.
//!
//! Data path: `-cpu MODEL,opts` ([`CpuConfig`]) → [`resolve`]: the model's definition
//! (`models.rs`, QEMU's own data) with QEMU's KVM defaults, the host's vendor, the user's
//! flags and properties, feature dependencies, automatic `level`/`xlevel` raising, then
//! the filter against what this host's KVM offers ([`HostCpu`], read once) → a
//! [`ResolvedCpu`] plus the features that were dropped (warned about under `check`, fatal
//! under `enforce`) → [`ResolvedCpu::table`]: every leaf for one vCPU (`leaves.rs`),
//! with the cache and topology leaves derived from `-smp`.
//!
//! [`models`] lists every model with the features this host cannot give (QMP
//! `query-cpu-definitions`); [`help`] is `-cpu help`.

mod cache;
mod features;
mod host;
mod leaves;
mod models;

use kvm_bindings::CpuId;

use self::cache::CacheModel;
use self::features::{Reg, Source, Words, WORDS, WORD_INFO};
pub use self::host::HostCpu;
use self::host::AMD_ALIASES;
use super::topology::Topology;
use crate::config::CpuConfig;

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("unknown or unsupported CPU model '{0}' (see -cpu help)")]
    UnknownModel(String),
    #[error("-cpu {model}: unknown CPU feature '{name}' (see -cpu help)")]
    UnknownFeature { model: String, name: String },
    #[error("-cpu {model}: Host doesn't support requested features: {}", .features.join(", "))]
    Enforce {
        model: String,
        features: Vec<String>,
    },
    #[error("-cpu {model}: property vendor must be 12 ASCII characters, not '{vendor}'")]
    Vendor { model: String, vendor: String },
    #[error("-cpu {model}: {what}={value} is out of range (at most {max})")]
    Range {
        model: String,
        what: &'static str,
        value: u32,
        max: u32,
    },
    #[error("-cpu {model}: model-id has {len} characters, at most 48 fit")]
    ModelId { model: String, len: usize },
    #[error("-cpu {model}: the CPUID table ({count} entries) does not fit KVM's limit")]
    TooManyEntries { model: String, count: usize },
    #[error("reading this host's CPU features from KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A CPU with everything decided: what each vCPU's CPUID table is built from.
#[derive(Debug, Clone)]
pub struct ResolvedCpu {
    /// The model as named on the command line.
    pub name: String,
    pub vendor: [u8; 12],
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub level: u32,
    pub xlevel: u32,
    pub xlevel2: u32,
    pub level_func7: u32,
    pub model_id: String,
    pub features: Words,
    pub(super) cache: CacheModel,
    pub(super) xcr0: u64,
    /// (size, offset, flags) of XSAVE components 2..19.
    pub(super) xsave_layout: Vec<(u32, u32, u32)>,
    pub(super) phys_bits: u32,
    pub(super) pmu: bool,
    /// Host leaf 0xA, for `-cpu host` (its PMU is on).
    pub(super) pmu_leaf: [u32; 4],
    /// The requested features KVM cannot give, `(word, bit)` in QEMU's order, with the
    /// reason QEMU prints.
    pub dropped: Vec<Dropped>,
}

/// A requested feature that was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub name: String,
    /// QEMU's wording: `CPUID.01H:ECX.pni [bit 0]`.
    pub described: String,
    pub reason: DropReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The host's KVM does not offer it.
    Unsupported,
    /// It depends on a feature that is off.
    Dependency,
}

impl Dropped {
    /// The warning QEMU prints for it (without the program-name prefix).
    pub fn warning(&self) -> String {
        match self.reason {
            DropReason::Unsupported => {
                format!("host doesn't support requested feature: {}", self.described)
            }
            DropReason::Dependency => format!(
                "This feature depends on other features that were not requested: {}",
                self.described
            ),
        }
    }
}

/// Which definition a model name selects.
enum Base {
    Host,
    Max,
    Def(&'static models::ModelDef),
}

fn find_model(name: &str) -> Option<Base> {
    match name {
        "host" => return Some(Base::Host),
        "max" => return Some(Base::Max),
        _ => {}
    }
    let target = models::ALIASES
        .iter()
        .find(|a| a.name == name)
        .map_or(name, |a| a.target);
    models::MODELS
        .iter()
        .find(|m| m.name == target)
        .map(Base::Def)
}

/// True if `name` is a model `-cpu` accepts.
pub fn is_model(name: &str) -> bool {
    find_model(name).is_some()
}

/// The canonical name of a feature flag (`sse4_1` → `sse4.1`, `sse3` → `pni`), if QEMU 7.2
/// knows it as a CPUID/MSR feature troupe models.
pub fn canonical_feature(name: &str) -> Option<&'static str> {
    const ALIASES: &[(&str, &str)] = &[
        ("sse4-1", "sse4.1"),
        ("sse4-2", "sse4.2"),
        ("sse3", "pni"),
        ("pclmuldq", "pclmulqdq"),
        ("xd", "nx"),
        ("ffxsr", "fxsr-opt"),
        ("i64", "lm"),
        ("kvm-asyncpf-vmexit", ""),
    ];
    let dashed = name.replace('_', "-");
    let name = ALIASES
        .iter()
        .find(|(alias, _)| *alias == dashed)
        .map_or(dashed.as_str(), |(_, real)| real);
    features::lookup(name).map(|(w, bit)| WORD_INFO[w].names[bit as usize])
}

/// True for a `-cpu help` flag troupe does not model (the `vmx-*` VMX capability controls).
pub fn is_unmodelled_flag(name: &str) -> bool {
    models::HELP_FLAGS
        .split_whitespace()
        .any(|f| f == name && f.starts_with("vmx-"))
}

fn set_bit(words: &mut Words, name: &str, on: bool) -> bool {
    let bits = features::bits_named(name);
    for &(w, bit) in &bits {
        if on {
            words[w] |= 1 << bit;
        } else {
            words[w] &= !(1 << bit);
        }
    }
    !bits.is_empty()
}

/// `-cpu` as QEMU 7.2 with KVM would realize it on this host.
pub fn resolve(cpu: &CpuConfig, host: &HostCpu) -> Result<ResolvedCpu, CpuidError> {
    let name = cpu.model.clone();
    let base = find_model(&name).ok_or_else(|| CpuidError::UnknownModel(name.clone()))?;
    let unknown = |f: &str| CpuidError::UnknownFeature {
        model: name.clone(),
        name: f.to_string(),
    };
    let mut user: Words = [0; WORDS];
    let mut feats: Words;
    let (mut vendor, mut family, mut model, mut stepping, mut model_id);
    let (min_level, min_xlevel, min_xlevel2);
    let cache;
    let max_features = matches!(base, Base::Host | Base::Max);
    match base {
        Base::Def(d) => {
            feats = features::parse_list(d.features);
            // With KVM, QEMU gives named models the host's vendor.
            vendor = if d.name == "base" {
                [0; 12]
            } else {
                host.vendor
            };
            family = d.family;
            model = d.model;
            stepping = d.stepping;
            model_id = d.model_id.to_string();
            min_level = d.level;
            min_xlevel = d.xlevel;
            min_xlevel2 = 0;
            cache = d.cache;
        }
        Base::Host | Base::Max => {
            feats = [0; WORDS];
            vendor = host.vendor;
            let v = host.version;
            let base_family = (v >> 8) & 0xf;
            family = if base_family == 0xf {
                base_family + ((v >> 20) & 0xff)
            } else {
                base_family
            };
            model = ((v >> 4) & 0xf) | (((v >> 16) & 0xf) << 4);
            stepping = v & 0xf;
            model_id = host.brand.clone();
            min_level = host.reg(0, 0, Reg::Eax);
            min_xlevel = host.reg(0x8000_0000, 0, Reg::Eax);
            min_xlevel2 = host.reg(0xc000_0000, 0, Reg::Eax);
            cache = CacheModel::Legacy;
        }
    }
    // Properties first (`feat=on|off` in order), then `+feat`, then `-feat` (QEMU's order).
    for (f, on) in &cpu.features {
        let mut one: Words = [0; WORDS];
        if !set_bit(&mut one, f, true) {
            return Err(unknown(f));
        }
        set_bit(&mut feats, f, *on);
        for w in 0..WORDS {
            user[w] |= one[w];
        }
    }
    for (list, on) in [(&cpu.plus, true), (&cpu.minus, false)] {
        for f in list {
            let mut one: Words = [0; WORDS];
            if !set_bit(&mut one, f, true) {
                return Err(unknown(f));
            }
            set_bit(&mut feats, f, on);
            for w in 0..WORDS {
                user[w] |= one[w];
            }
        }
    }
    if max_features {
        // Everything KVM offers that QEMU can name and migrate, minus what QEMU never turns
        // on by itself (ht, topoext, KVM hints) and what the user switched.
        let named = features::named_mask();
        for w in 0..WORDS {
            let mut bits = host.supported_word(w) & named[w] & !user[w];
            bits &= match w {
                features::L1_EDX => !(1 << 28),
                features::E1_ECX => !(1 << 22),
                features::KVM_HINTS => 0,
                features::E7_EDX => !(1 << 8), // invtsc is not migratable
                _ => !0,
            };
            feats[w] |= bits;
        }
    }
    let p = &cpu.props;
    if let Some(v) = &p.vendor {
        if v.len() != 12 || !v.is_ascii() {
            return Err(CpuidError::Vendor {
                model: name.clone(),
                vendor: v.clone(),
            });
        }
        vendor.copy_from_slice(v.as_bytes());
    }
    let range = |what: &'static str, value: u32, max: u32| {
        if value > max {
            Err(CpuidError::Range {
                model: name.clone(),
                what,
                value,
                max,
            })
        } else {
            Ok(value)
        }
    };
    if let Some(v) = p.family {
        family = range("family", v, 0xff + 0xf)?;
    }
    if let Some(v) = p.model {
        model = range("model", v, 0xff)?;
    }
    if let Some(v) = p.stepping {
        stepping = range("stepping", v, 0xf)?;
    }
    if let Some(id) = &p.model_id {
        if id.len() > 48 {
            return Err(CpuidError::ModelId {
                model: name.clone(),
                len: id.len(),
            });
        }
        model_id = id.clone();
    }

    let mut dropped = Vec::new();
    // Feature dependencies (QEMU's feature_dependencies, without the VMX ones).
    for (from_w, from_bit, to_w) in [
        (features::L7_0_EDX, 29, features::ARCH_CAP),
        (features::L7_0_EDX, 30, features::CORE_CAP),
        (features::L1_ECX, 15, features::PERF_CAP),
        (features::L7_0_EBX, 25, features::L14_ECX),
    ] {
        if feats[from_w] & (1 << from_bit) == 0 {
            let mut gone = [0; WORDS];
            gone[to_w] = feats[to_w] & user[to_w];
            dropped.extend(describe(&gone, DropReason::Dependency));
            feats[to_w] = 0;
        }
    }

    // Levels: the definition's minimum, raised for the features present (before KVM's
    // filter, as QEMU does).
    let mut level = min_level;
    let mut xlevel = min_xlevel;
    let mut xlevel2 = min_xlevel2;
    let mut level_func7 = 0;
    let raise = |l: &mut u32, v: u32| *l = (*l).max(v);
    for w in [
        features::L1_EDX,
        features::L1_ECX,
        features::L6_EAX,
        features::L7_0_EBX,
        features::L7_0_ECX,
        features::L7_0_EDX,
        features::L7_1_EAX,
        features::E1_EDX,
        features::E1_ECX,
        features::E7_EDX,
        features::E8_EBX,
        features::C1_EDX,
        features::SVM,
        features::XSAVE,
    ] {
        if feats[w] == 0 {
            continue;
        }
        if let Source::Cpuid(leaf, sub, _) = WORD_INFO[w].source {
            match leaf & 0xf000_0000 {
                0 => raise(&mut level, leaf),
                0x8000_0000 => raise(&mut xlevel, leaf),
                _ => raise(&mut xlevel2, leaf),
            }
            if leaf == 7 {
                raise(&mut level_func7, sub);
            }
        }
    }
    if feats[features::L7_0_EBX] & (1 << 25) != 0 {
        raise(&mut level, 0x14);
    }
    if feats[features::E1_ECX] & (1 << 2) != 0 {
        raise(&mut xlevel, 0x8000_000a);
    }
    if feats[features::L7_0_EBX] & (1 << 2) != 0 {
        raise(&mut level, 0x12);
    }
    if let Some(l) = p.level {
        level = l;
    }
    if let Some(l) = p.xlevel {
        xlevel = l;
    }

    // XSAVE components the features need, as far as KVM supports them.
    let mut xcr0 = 0u64;
    let mut xcr0_wanted_by: Vec<(u32, &'static str)> = Vec::new();
    if feats[features::L1_ECX] & (1 << 26) != 0 {
        for (bit, w, fbit, fname) in XSAVE_COMPONENTS {
            if feats[w] & (1 << fbit) != 0 {
                xcr0 |= 1 << bit;
                xcr0_wanted_by.push((bit, fname));
            }
        }
    }

    // KVM's filter.
    for w in 0..WORDS {
        let supported = host.supported_word(w);
        let mut gone = [0; WORDS];
        gone[w] = feats[w] & !supported;
        dropped.extend(describe(&gone, DropReason::Unsupported));
        feats[w] &= supported;
        if w == features::L6_EAX {
            // The XCR0 word comes next in QEMU's order.
            for &(bit, fname) in &xcr0_wanted_by {
                if host.xcr0() & (1 << bit) == 0 {
                    dropped.push(Dropped {
                        name: fname.to_string(),
                        described: format!("CPUID.0DH:EAX [bit {bit}]"),
                        reason: DropReason::Unsupported,
                    });
                }
            }
        }
    }
    xcr0 &= host.xcr0();
    if vendor == *b"AuthenticAMD" {
        let common = feats[features::L1_EDX] & AMD_ALIASES;
        feats[features::E1_EDX] = (feats[features::E1_EDX] & !AMD_ALIASES) | common;
    }
    let lm = feats[features::E1_EDX] & (1 << 29) != 0;
    let phys_bits = if max_features && lm {
        host.phys_bits
    } else if lm {
        40
    } else if feats[features::L1_EDX] & (1 << 17) != 0 {
        36
    } else {
        32
    };
    let xsave_layout = XSAVE_AREAS
        .iter()
        .enumerate()
        .map(|(i, &(size, offset))| {
            let comp = i as u32 + 2;
            let (hsize, hoffset, hflags) = host.xsave_layout.get(i).copied().unwrap_or_default();
            let by_host = size != 0
                && hsize != 0
                && XSAVE_COMPONENTS
                    .iter()
                    .filter(|c| c.0 == comp)
                    .all(|c| host.supported_word(c.1) & (1 << c.2) != 0);
            if by_host {
                (size, hoffset, hflags & 0b110)
            } else {
                (size, offset, 0)
            }
        })
        .collect();
    let resolved = ResolvedCpu {
        name,
        vendor,
        family,
        model,
        stepping,
        level,
        xlevel,
        xlevel2,
        level_func7,
        model_id,
        features: feats,
        cache,
        xcr0,
        xsave_layout,
        phys_bits,
        pmu: max_features,
        pmu_leaf: [
            host.reg(0xa, 0, Reg::Eax),
            host.reg(0xa, 0, Reg::Ebx),
            host.reg(0xa, 0, Reg::Ecx),
            host.reg(0xa, 0, Reg::Edx),
        ],
        dropped,
    };
    Ok(resolved)
}

/// XSAVE state components and the feature that enables each: (component, word, bit, name).
const XSAVE_COMPONENTS: [(u32, usize, u32, &str); 9] = [
    (0, features::L1_EDX, 0, "fpu"),
    (1, features::L1_EDX, 25, "sse"),
    (2, features::L1_ECX, 28, "avx"),
    (3, features::L7_0_EBX, 14, "mpx"),
    (4, features::L7_0_EBX, 14, "mpx"),
    (5, features::L7_0_EBX, 16, "avx512f"),
    (6, features::L7_0_EBX, 16, "avx512f"),
    (7, features::L7_0_EBX, 16, "avx512f"),
    (9, features::L7_0_ECX, 3, "pku"),
];

/// Standard (size, offset) of XSAVE components 2..19 (0 = not modelled).
const XSAVE_AREAS: [(u32, u32); 17] = [
    (0x100, 0x240),
    (0x40, 0x3c0),
    (0x40, 0x400),
    (0x40, 0x440),
    (0x200, 0x480),
    (0x400, 0x680),
    (0, 0),
    (8, 0xa80),
    (0, 0),
    (0, 0),
    (0, 0),
    (0, 0),
    (0, 0),
    (0, 0),
    (0, 0),
    (0, 0),
    (0, 0),
];

fn describe(words: &Words, reason: DropReason) -> Vec<Dropped> {
    features::named_bits(words)
        .into_iter()
        .map(|(w, bit, name)| Dropped {
            name: name.to_string(),
            described: format!("{}.{name} [bit {bit}]", WORD_INFO[w].description()),
            reason,
        })
        .collect()
}

impl ResolvedCpu {
    /// Under `enforce`, any requested feature left out is an error naming them all.
    pub fn enforce(&self, enforce: bool) -> Result<(), CpuidError> {
        if enforce && !self.dropped.is_empty() {
            return Err(CpuidError::Enforce {
                model: self.name.clone(),
                features: self.dropped.iter().map(|d| d.described.clone()).collect(),
            });
        }
        Ok(())
    }

    /// The CPUID table of the vCPU at `index` in `topo`. `tsc_khz` is the vCPU's TSC
    /// frequency (KVM_GET_TSC_KHZ): with `invtsc`, QEMU reports it in leaf 0x40000010.
    pub fn table(
        &self,
        topo: &Topology,
        index: u32,
        tsc_khz: Option<u32>,
    ) -> Result<CpuId, CpuidError> {
        let entries = leaves::table(self, topo, index, tsc_khz);
        CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries {
            model: self.name.clone(),
            count: entries.len(),
        })
    }
}

/// One model for QMP `query-cpu-definitions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `Haswell-v2`, `Haswell-noTSX`, `qemu64`, `host`.
    pub name: String,
    /// For an alias, the versioned model it stands for (`Haswell-v2`).
    pub alias_of: Option<String>,
    /// QOM type name (`Haswell-v2-x86_64-cpu`).
    pub typename: String,
    /// The features of this model this host's KVM cannot give, as QEMU lists them.
    pub unavailable_features: Vec<String>,
    /// `static` (only `base` is).
    pub is_static: bool,
    pub migration_safe: bool,
    pub deprecated: bool,
}

/// Every model `-cpu` accepts, in QEMU 7.2's `query-cpu-definitions` order, with what
/// this host lacks for each (what QMP `query-cpu-definitions` answers).
pub fn models(host: &HostCpu) -> Vec<ModelInfo> {
    let mut out = Vec::new();
    let unavailable = |name: &str| {
        resolve(&CpuConfig::model(name), host)
            .map(|r| r.dropped.into_iter().map(|d| d.name).collect())
            .unwrap_or_default()
    };
    for name in ["max", "host", "base"] {
        out.push(ModelInfo {
            name: name.to_string(),
            alias_of: None,
            typename: format!("{name}-x86_64-cpu"),
            unavailable_features: Vec::new(),
            is_static: name == "base",
            migration_safe: name == "base",
            deprecated: false,
        });
    }
    for name in models::HELP_ORDER.iter().rev() {
        if matches!(*name, "max" | "host" | "base") {
            continue;
        }
        let alias_of = models::ALIASES
            .iter()
            .find(|a| a.name == *name)
            .map(|a| a.target.to_string());
        out.push(ModelInfo {
            name: name.to_string(),
            alias_of,
            typename: format!("{name}-x86_64-cpu"),
            unavailable_features: unavailable(name),
            is_static: false,
            migration_safe: true,
            deprecated: false,
        });
    }
    out
}

/// Every feature flag troupe models, each once by its canonical name, in QEMU's order:
/// the boolean properties of a CPU type (`qom-list-properties`, `query-cpu-model-expansion`).
pub fn feature_names() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (_, _, name) in features::named_bits(&features::named_mask()) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

impl ResolvedCpu {
    /// Each of [`feature_names`] and whether this CPU has it: read from the feature words
    /// its CPUID table is built from.
    pub fn feature_states(&self) -> Vec<(&'static str, bool)> {
        feature_names()
            .into_iter()
            .map(|name| {
                let on = features::bits_named(name)
                    .iter()
                    .any(|&(w, bit)| self.features[w] & (1 << bit) != 0);
                (name, on)
            })
            .collect()
    }
}

/// `-cpu help`, as QEMU 7.2 prints it.
pub fn help() -> String {
    let mut out = String::from("Available CPUs:\n");
    for name in models::HELP_ORDER {
        let description = match *name {
            "host" => models::HOST_DESCRIPTION,
            "max" => models::MAX_DESCRIPTION,
            _ => models::ALIASES
                .iter()
                .find(|a| a.name == *name)
                .map(|a| a.description)
                .or_else(|| {
                    models::MODELS
                        .iter()
                        .find(|m| m.name == *name)
                        .map(|m| m.description)
                })
                .unwrap_or(""),
        };
        out.push_str(&format!("x86 {name:<20}  {description}\n"));
    }
    out.push_str("\nRecognized CPUID flags:\n");
    let mut line = String::from(" ");
    for f in models::HELP_FLAGS.split_whitespace() {
        if line.len() + 1 + f.len() > 75 {
            out.push_str(&line);
            out.push('\n');
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(f);
    }
    out.push_str(&line);
    // QEMU ends the list with an empty line.
    out.push_str("\n\n");
    out
}

#[cfg(test)]
mod tests;
