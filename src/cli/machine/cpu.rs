//! `-cpu MODEL[,+feat|-feat|feat=on|off]`: the CPU model and CPUID feature overrides, with
//! QEMU's feature names and `-cpu help`.

use super::MachineError;
use crate::cli::options::{is_help, parse_bool, split_escaped};
use crate::config::{CpuConfig, CpuModel};

/// CPUID feature names QEMU 7.2 recognises (`-cpu help`), minus the `vmx-*` controls,
/// separated by spaces.
const CPU_FEATURES: &str = "\
    3dnow 3dnowext 3dnowprefetch abm ace2 ace2-en acpi adx aes amd-no-ssb amd-ssbd amd-stibp \
    amx-bf16 amx-int8 amx-tile apic arat arch-capabilities arch-lbr avic avx avx-vnni avx2 \
    avx512-4fmaps avx512-4vnniw avx512-bf16 avx512-fp16 avx512-vp2intersect avx512-vpopcntdq \
    avx512bitalg avx512bw avx512cd avx512dq avx512er avx512f avx512ifma avx512pf avx512vbmi \
    avx512vbmi2 avx512vl avx512vnni bmi1 bmi2 bus-lock-detect cid cldemote clflush \
    clflushopt clwb clzero cmov cmp-legacy core-capability cr8legacy cx16 cx8 dca de \
    decodeassists ds ds-cpl dtes64 erms est extapic f16c flushbyasid fma fma4 fpu fsgsbase \
    fsrm full-width-write fxsr fxsr-opt gfni hle ht hypervisor ia64 ibpb ibrs ibrs-all ibs \
    intel-pt intel-pt-lip invpcid invtsc kvm-asyncpf kvm-asyncpf-int kvm-hint-dedicated \
    kvm-mmu kvm-msi-ext-dest-id kvm-nopiodelay kvm-poll-control kvm-pv-eoi kvm-pv-ipi \
    kvm-pv-sched-yield kvm-pv-tlb-flush kvm-pv-unhalt kvm-steal-time kvmclock \
    kvmclock-stable-bit la57 lahf-lm lbrv lm lwp mca mce md-clear mds-no misalignsse mmx \
    mmxext monitor movbe movdir64b movdiri mpx msr mtrr nodeid-msr npt nrip-save nx osvw pae \
    pat pause-filter pbe pcid pclmulqdq pcommit pdcm pdpe1gb perfctr-core perfctr-nb \
    pfthreshold pge phe phe-en pks pku pmm pmm-en pn pni popcnt pschange-mc-no pse pse36 \
    rdctl-no rdpid rdrand rdseed rdtscp rsba rtm sep serialize sgx sgx-debug sgx-exinfo \
    sgx-kss sgx-mode64 sgx-provisionkey sgx-tokenkey sgx1 sgx2 sgxlc sha-ni skinit \
    skip-l1dfl-vmentry smap smep smx spec-ctrl split-lock-detect ss ssb-no ssbd sse sse2 \
    sse4.1 sse4.2 sse4a ssse3 stibp svm svm-lock svme-addr-chk syscall taa-no tbm tce tm tm2 \
    topoext tsc tsc-adjust tsc-deadline tsc-scale tsx-ctrl tsx-ldtrk umip v-vmsave-vmload \
    vaes vgif virt-ssbd vmcb-clean vme vmx vpclmulqdq waitpkg wbnoinvd wdt x2apic xcrypt \
    xcrypt-en xfd xgetbv1 xop xsave xsavec xsaveerptr xsaveopt xsaves xstore xstore-en xtpr";

/// QEMU's legacy spellings of feature names (after `_` → `-`).
const CPU_FEATURE_ALIASES: &[(&str, &str)] = &[
    ("sse4-1", "sse4.1"),
    ("sse4-2", "sse4.2"),
    ("sse3", "pni"),
    ("pclmuldq", "pclmulqdq"),
    ("xd", "nx"),
    ("ffxsr", "fxsr-opt"),
    ("i64", "lm"),
];

/// `-cpu MODEL[,+feat|-feat|feat=on|off|feat]...`. `Ok(None)` means `help` was asked.
pub fn parse_cpu(arg: &str) -> Result<Option<CpuConfig>, MachineError> {
    let items = split_escaped(arg);
    let model_name = items.first().map(String::as_str).unwrap_or_default();
    if is_help(model_name) {
        return Ok(None);
    }
    let model = match model_name {
        "host" => CpuModel::Host,
        "max" => CpuModel::Max,
        "qemu64" | "qemu64-v1" => CpuModel::Qemu64,
        other => return Err(MachineError::CpuModel(other.to_string())),
    };
    let mut features = Vec::new();
    for item in items.iter().skip(1).filter(|i| !i.is_empty()) {
        let (name, on) = if let Some(f) = item.strip_prefix('+') {
            (f, true)
        } else if let Some(f) = item.strip_prefix('-') {
            (f, false)
        } else if let Some((f, v)) = item.split_once('=') {
            match parse_bool(v) {
                Some(on) => (f, on),
                None if cpu_feature(f).is_some() => {
                    return Err(MachineError::CpuFeatureValue {
                        feature: f.to_string(),
                        value: v.to_string(),
                    })
                }
                None => return Err(MachineError::CpuProperty(f.to_string())),
            }
        } else {
            (item.as_str(), true)
        };
        let Some(canonical) = cpu_feature(name) else {
            return Err(if is_cpu_property(name) {
                MachineError::CpuProperty(name.to_string())
            } else {
                MachineError::CpuFeature(name.to_string())
            });
        };
        features.push((canonical.to_string(), on));
    }
    Ok(Some(CpuConfig { model, features }))
}

/// QEMU x86 CPU properties that are not CPUID flags (refused as properties, not as
/// unknown features).
fn is_cpu_property(name: &str) -> bool {
    const PROPS: &[&str] = &[
        "check",
        "enforce",
        "kvm",
        "pmu",
        "vendor",
        "model-id",
        "family",
        "model",
        "stepping",
        "level",
        "xlevel",
        "min-level",
        "min-xlevel",
        "phys-bits",
        "host-phys-bits",
        "tsc-freq",
        "migratable",
        "l3-cache",
        "hv-passthrough",
        "host-cache-info",
    ];
    PROPS.contains(&name) || name.starts_with("hv-") || name.starts_with("hv_")
}

/// The canonical spelling of a CPUID feature, if QEMU knows it.
pub fn cpu_feature(name: &str) -> Option<&'static str> {
    let dashed = name.replace('_', "-");
    let name = CPU_FEATURE_ALIASES
        .iter()
        .find(|(alias, _)| *alias == dashed)
        .map_or(dashed.as_str(), |(_, real)| real);
    CPU_FEATURES.split_whitespace().find(|f| *f == name)
}

/// `-cpu help`.
pub fn cpu_help() -> String {
    let mut out = String::from("Available CPUs:\n");
    out.push_str(
        "x86 host                  processor with all features KVM supports on this host\n",
    );
    out.push_str("x86 max                   Enables all features supported by KVM on this host\n");
    out.push_str("x86 qemu64                QEMU Virtual CPU version 2.5+ (default)\n");
    out.push_str("\nRecognized CPUID flags:\n");
    let mut line = String::from(" ");
    for f in CPU_FEATURES.split_whitespace() {
        if line.len() + f.len() + 1 > 76 {
            out.push_str(&line);
            out.push('\n');
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(f);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(s: &str) -> Result<CpuConfig, String> {
        parse_cpu(s).map(|c| c.unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn cpu_models_and_feature_syntaxes() {
        assert_eq!(cpu("host").unwrap().model, CpuModel::Host);
        assert_eq!(cpu("max").unwrap().model, CpuModel::Max);
        let c = cpu("qemu64,+aes,-x2apic,avx=on,sse4_1=off,lahf_lm,sse3").unwrap();
        assert_eq!(c.model, CpuModel::Qemu64);
        assert_eq!(
            c.features,
            vec![
                ("aes".to_string(), true),
                ("x2apic".to_string(), false),
                ("avx".to_string(), true),
                ("sse4.1".to_string(), false),
                ("lahf-lm".to_string(), true),
                ("pni".to_string(), true),
            ]
        );
        assert_eq!(parse_cpu("help"), Ok(None));
        assert_eq!(parse_cpu("?"), Ok(None));
    }

    #[test]
    fn cpu_errors_name_the_model_or_feature() {
        assert_eq!(
            cpu("Skylake-Client"),
            Err(
                "unknown or unsupported CPU model 'Skylake-Client' (troupe has host, max, qemu64)"
                    .into()
            )
        );
        assert_eq!(
            cpu("qemu64,+foo"),
            Err("unknown CPU feature 'foo' (see -cpu help)".into())
        );
        assert_eq!(
            cpu("qemu64,aes=maybe"),
            Err("CPU feature 'aes' expects on or off, not 'maybe'".into())
        );
        assert_eq!(
            cpu("host,vendor=GenuineIntel"),
            Err("CPU property 'vendor' is not supported by troupe (only feature flags are)".into())
        );
        assert_eq!(
            cpu("host,hv-relaxed"),
            Err(
                "CPU property 'hv-relaxed' is not supported by troupe (only feature flags are)"
                    .into()
            )
        );
        assert_eq!(
            cpu("host,enforce"),
            Err(
                "CPU property 'enforce' is not supported by troupe (only feature flags are)".into()
            )
        );
        assert_eq!(
            cpu(""),
            Err("unknown or unsupported CPU model '' (troupe has host, max, qemu64)".into())
        );
    }

    #[test]
    fn cpu_help_lists_models_and_flags() {
        let h = cpu_help();
        assert!(h.contains("x86 qemu64"));
        assert!(h.contains("x86 host"));
        assert!(h.contains(" aes "));
        assert!(h.lines().all(|l| l.len() <= 80));
    }
}
