//! `-vcpu-pin` (troupe's own): which host CPUs each vCPU thread may run on, checked against
//! `-smp` and the process's affinity mask.

use super::MachineError;
use crate::config::VcpuPin;

/// `-vcpu-pin auto|none|VCPU=CORES[,VCPU=CORES...]`, CORES being `N` or `A-B` joined by
/// `+` (`0=2,1=3-4`, `2=0+3`). Checked against `cpus` and the allowed CPU set.
pub fn parse_vcpu_pin(arg: &str, cpus: u32, allowed: &[usize]) -> Result<VcpuPin, MachineError> {
    match arg {
        "auto" => return Ok(VcpuPin::Auto),
        "none" => return Ok(VcpuPin::None),
        _ => {}
    }
    let syntax = || MachineError::PinSyntax(arg.to_string());
    let mut pins: Vec<(u32, Vec<usize>)> = Vec::new();
    for entry in arg.split(',') {
        let (vcpu, cores) = entry.split_once('=').ok_or_else(syntax)?;
        let vcpu: u64 = vcpu.parse().map_err(|_| syntax())?;
        if vcpu >= u64::from(cpus) {
            return Err(MachineError::PinVcpu { vcpu, cpus });
        }
        let vcpu = u32::try_from(vcpu).map_err(|_| syntax())?;
        if pins.iter().any(|(v, _)| *v == vcpu) {
            return Err(MachineError::PinTwice(vcpu));
        }
        let mut set = Vec::new();
        for part in cores.split('+') {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo, hi),
                None => (part, part),
            };
            let lo: usize = lo.parse().map_err(|_| syntax())?;
            let hi: usize = hi.parse().map_err(|_| syntax())?;
            if lo > hi {
                return Err(syntax());
            }
            // Check the range ends before walking it, so `0-99999999999` is cheap.
            for core in [lo, hi]
                .into_iter()
                .chain(lo..=hi.min(lo.saturating_add(4096)))
            {
                if !allowed.contains(&core) {
                    return Err(MachineError::PinCore {
                        core,
                        allowed: allowed
                            .iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                    });
                }
            }
            for core in lo..=hi {
                if !set.contains(&core) {
                    set.push(core);
                }
            }
        }
        set.sort_unstable();
        pins.push((vcpu, set));
    }
    pins.sort_by_key(|(v, _)| *v);
    Ok(VcpuPin::Explicit(pins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(s: &str, cpus: u32) -> Result<VcpuPin, String> {
        parse_vcpu_pin(s, cpus, &[0, 1, 2, 3, 4]).map_err(|e| e.to_string())
    }

    #[test]
    fn vcpu_pin_forms() {
        assert_eq!(pin("auto", 2), Ok(VcpuPin::Auto));
        assert_eq!(pin("none", 2), Ok(VcpuPin::None));
        assert_eq!(
            pin("1=3-4,0=2", 2),
            Ok(VcpuPin::Explicit(vec![(0, vec![2]), (1, vec![3, 4])]))
        );
        assert_eq!(
            pin("0=4+0-1", 1),
            Ok(VcpuPin::Explicit(vec![(0, vec![0, 1, 4])]))
        );
    }

    #[test]
    fn vcpu_pin_errors_name_the_core_or_vcpu() {
        assert_eq!(
            pin("0=7", 2),
            Err("host CPU 7 is not in this process's allowed CPU set (0,1,2,3,4)".into())
        );
        assert_eq!(
            pin("0=3-9", 2),
            Err("host CPU 9 is not in this process's allowed CPU set (0,1,2,3,4)".into())
        );
        assert_eq!(
            pin("0=0-99999999999999", 2),
            Err(
                "host CPU 99999999999999 is not in this process's allowed CPU set (0,1,2,3,4)"
                    .into()
            )
        );
        assert_eq!(
            pin("2=1", 2),
            Err("vCPU 2 does not exist (-smp gives 2 vCPU(s), numbered from 0)".into())
        );
        assert_eq!(pin("0=1,0=2", 2), Err("vCPU 0 is pinned twice".into()));
        let syntax = |s: &str| {
            format!("invalid pinning '{s}' (expected auto, none or VCPU=CORES,... like 0=2,1=3-4)")
        };
        for bad in ["", "x", "0", "0=", "a=1", "0=b", "0=3-1", "0=1-", "-1=0"] {
            assert_eq!(pin(bad, 2), Err(syntax(bad)), "{bad}");
        }
    }
}
