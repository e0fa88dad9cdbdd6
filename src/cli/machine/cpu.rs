//! `-cpu MODEL[,+feat|-feat|feat=on|off|prop=value]`: the CPU model, its feature flags and
//! properties, with QEMU's names; `-cpu help`. The models and flags themselves live in
//! `vm::cpuid`.

use super::MachineError;
use crate::cli::options::{is_help, parse_bool, split_escaped};
use crate::config::CpuConfig;
use crate::vm::cpuid;

/// `-cpu MODEL[,...]`. `Ok(None)` means `help` was asked.
pub fn parse_cpu(arg: &str) -> Result<Option<CpuConfig>, MachineError> {
    let items = split_escaped(arg);
    let model_name = items.first().map(String::as_str).unwrap_or_default();
    if is_help(model_name) {
        return Ok(None);
    }
    if !cpuid::is_model(model_name) {
        return Err(MachineError::CpuModel(model_name.to_string()));
    }
    let mut cpu = CpuConfig::model(model_name);
    for item in items.iter().skip(1).filter(|i| !i.is_empty()) {
        if let Some(f) = item.strip_prefix('+') {
            cpu.plus.push(feature(f)?.to_string());
        } else if let Some(f) = item.strip_prefix('-') {
            cpu.minus.push(feature(f)?.to_string());
        } else {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item.as_str(), None),
            };
            property(&mut cpu, key, value)?;
        }
    }
    Ok(Some(cpu))
}

fn feature(name: &str) -> Result<&'static str, MachineError> {
    if let Some(f) = cpuid::canonical_feature(name) {
        return Ok(f);
    }
    if cpuid::is_unmodelled_flag(name) {
        return Err(MachineError::CpuProperty(name.to_string()));
    }
    Err(if is_cpu_property(name) {
        MachineError::CpuProperty(name.to_string())
    } else {
        MachineError::CpuFeature(name.to_string())
    })
}

fn number(key: &str, value: &str) -> Result<u32, MachineError> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|_| MachineError::CpuPropertyValue {
        property: key.to_string(),
        value: value.to_string(),
        expected: "a number",
    })
}

/// `key=value` (or a bare `key`, meaning `key=on`).
fn property(cpu: &mut CpuConfig, key: &str, value: Option<&str>) -> Result<(), MachineError> {
    let need = |expected: &'static str| -> Result<&str, MachineError> {
        value.ok_or_else(|| MachineError::CpuPropertyValue {
            property: key.to_string(),
            value: String::new(),
            expected,
        })
    };
    let flag = || -> Result<bool, MachineError> {
        match value {
            None => Ok(true),
            Some(v) => parse_bool(v).ok_or_else(|| MachineError::CpuPropertyValue {
                property: key.to_string(),
                value: v.to_string(),
                expected: "on or off",
            }),
        }
    };
    let p = &mut cpu.props;
    match key {
        "model-id" => p.model_id = Some(need("a string")?.to_string()),
        "vendor" => p.vendor = Some(need("a 12-character vendor id")?.to_string()),
        "family" => p.family = Some(number(key, need("a number")?)?),
        "model" => p.model = Some(number(key, need("a number")?)?),
        "stepping" => p.stepping = Some(number(key, need("a number")?)?),
        "level" => p.level = Some(number(key, need("a number")?)?),
        "xlevel" => p.xlevel = Some(number(key, need("a number")?)?),
        "check" => p.check = flag()?,
        "enforce" => p.enforce = flag()?,
        _ => {
            let name = feature(key)?;
            let on = match value {
                None => true,
                Some(v) => parse_bool(v).ok_or_else(|| MachineError::CpuFeatureValue {
                    feature: key.to_string(),
                    value: v.to_string(),
                })?,
            };
            cpu.features.push((name.to_string(), on));
        }
    }
    Ok(())
}

/// QEMU x86 CPU properties troupe does not implement (refused as properties, not as
/// unknown features).
fn is_cpu_property(name: &str) -> bool {
    const PROPS: &[&str] = &[
        "kvm",
        "pmu",
        "min-level",
        "min-xlevel",
        "phys-bits",
        "host-phys-bits",
        "tsc-freq",
        "tsc-frequency",
        "migratable",
        "l3-cache",
        "legacy-cache",
        "hv-passthrough",
        "host-cache-info",
    ];
    PROPS.contains(&name) || name.starts_with("hv-") || name.starts_with("hv_")
}

/// `-cpu help`.
pub fn cpu_help() -> String {
    cpuid::help()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(s: &str) -> Result<CpuConfig, String> {
        parse_cpu(s).map(|c| c.unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn cpu_models_and_feature_syntaxes() {
        assert_eq!(cpu("host").unwrap().model, "host");
        assert_eq!(cpu("Haswell-noTSX").unwrap().model, "Haswell-noTSX");
        assert_eq!(cpu("EPYC-Rome-v2").unwrap().model, "EPYC-Rome-v2");
        let c = cpu("qemu64,+aes,-x2apic,avx=on,sse4_1=off,lahf_lm,sse3").unwrap();
        assert_eq!(c.model, "qemu64");
        assert_eq!(
            c.features,
            vec![
                ("avx".to_string(), true),
                ("sse4.1".to_string(), false),
                ("lahf-lm".to_string(), true),
                ("pni".to_string(), true),
            ]
        );
        assert_eq!(c.plus, vec!["aes".to_string()]);
        assert_eq!(c.minus, vec!["x2apic".to_string()]);
        assert_eq!(parse_cpu("help"), Ok(None));
        assert_eq!(parse_cpu("?"), Ok(None));
    }

    #[test]
    fn cpu_properties() {
        let c = cpu("qemu64,model-id=My CPU,vendor=GenuineIntel,family=6,model=0x3c,stepping=2,level=7,xlevel=0x80000008,enforce,check=off").unwrap();
        let p = &c.props;
        assert_eq!(p.model_id.as_deref(), Some("My CPU"));
        assert_eq!(p.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(
            (p.family, p.model, p.stepping),
            (Some(6), Some(60), Some(2))
        );
        assert_eq!((p.level, p.xlevel), (Some(7), Some(0x8000_0008)));
        assert!(p.enforce && !p.check);
        assert!(
            cpu("qemu64").unwrap().props.check,
            "check is QEMU's default"
        );
    }

    #[test]
    fn cpu_errors_name_the_model_or_feature() {
        assert_eq!(
            cpu("Skylake-Clinet"),
            Err("unable to find CPU model 'Skylake-Clinet' (see -cpu help)".into())
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
            cpu("qemu64,family=six"),
            Err("CPU property 'family' cannot be 'six': a number".into())
        );
        assert_eq!(
            cpu("host,hv-relaxed"),
            Err("CPU property 'hv-relaxed' is not supported by troupe".into())
        );
        assert_eq!(
            cpu("host,+vmx-ept"),
            Err("CPU property 'vmx-ept' is not supported by troupe".into())
        );
        assert_eq!(
            cpu(""),
            Err("unable to find CPU model '' (see -cpu help)".into())
        );
    }

    #[test]
    fn cpu_help_lists_models_and_flags() {
        let h = cpu_help();
        assert!(h.contains("\nx86 qemu64                (alias configured by machine type)\n"));
        assert!(h.contains("\nx86 Haswell-noTSX         (alias of Haswell-v2)\n"));
        assert!(h.contains("\nx86 EPYC-Milan-v1         AMD EPYC-Milan Processor\n"));
        assert!(h.contains(" aes "));
        let flags = h.split("Recognized CPUID flags:\n").nth(1).unwrap();
        assert!(flags.lines().all(|l| l.len() <= 75));
        let kvmclock = flags.split_whitespace().filter(|f| *f == "kvmclock");
        assert_eq!(kvmclock.count(), 2, "QEMU lists it twice");
    }
}
