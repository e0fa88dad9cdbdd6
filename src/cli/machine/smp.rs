//! `-smp`: the vCPU topology, completed and checked like QEMU 7.2's
//! `machine_parse_smp_config`.

use super::{prefers_sockets, MachineError, MAX_CPUS};
use crate::cli::options::Opts;
use crate::config::SmpConfig;

/// `-smp` values as given (None = not given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmpGiven {
    /// `cpus=` (the implied key).
    pub cpus: Option<u64>,
    /// `sockets=`.
    pub sockets: Option<u64>,
    /// `cores=`.
    pub cores: Option<u64>,
    /// `threads=`.
    pub threads: Option<u64>,
    /// `maxcpus=`.
    pub maxcpus: Option<u64>,
}

/// `-smp [cpus=]n[,sockets=][,dies=1][,clusters=1][,cores=][,threads=][,maxcpus=]` for the
/// machine `kind`.
pub fn parse_smp(mut opts: Opts, kind: &str) -> Result<SmpConfig, MachineError> {
    let mut get = |key: &'static str| -> Result<Option<u64>, MachineError> {
        let v = opts.uint(key, 0, u64::MAX)?;
        if v == Some(0) {
            return Err(MachineError::SmpZero(key));
        }
        Ok(v)
    };
    let given = SmpGiven {
        cpus: get("cpus")?,
        sockets: get("sockets")?,
        cores: get("cores")?,
        threads: get("threads")?,
        maxcpus: get("maxcpus")?,
    };
    for what in ["dies", "clusters"] {
        if let Some(value) = get(what)? {
            if value != 1 {
                return Err(MachineError::SmpLevel { what, value });
            }
        }
    }
    opts.finish()?;
    complete_smp(given, prefers_sockets(kind), kind)
}

/// QEMU 7.2's `machine_parse_smp_config`: fill in what is missing, then check.
pub fn complete_smp(
    g: SmpGiven,
    prefer_sockets: bool,
    machine: &str,
) -> Result<SmpConfig, MachineError> {
    let (mut sockets, mut cores, mut threads) = (g.sockets, g.cores, g.threads);
    let mut maxcpus = g.maxcpus;
    let div = |a: u64, b: u64| a.checked_div(b).unwrap_or(0);
    if g.cpus.is_none() && g.maxcpus.is_none() {
        sockets.get_or_insert(1);
        cores.get_or_insert(1);
        threads.get_or_insert(1);
    } else {
        let max = *maxcpus.get_or_insert(g.cpus.unwrap_or(1));
        if prefer_sockets {
            if sockets.is_none() {
                let c = *cores.get_or_insert(1);
                let t = *threads.get_or_insert(1);
                sockets = Some(div(max, c.saturating_mul(t)));
            } else if cores.is_none() {
                let t = *threads.get_or_insert(1);
                cores = Some(div(max, sockets.unwrap_or(1).saturating_mul(t)));
            }
        } else if cores.is_none() {
            let s = *sockets.get_or_insert(1);
            let t = *threads.get_or_insert(1);
            cores = Some(div(max, s.saturating_mul(t)));
        } else if sockets.is_none() {
            let t = *threads.get_or_insert(1);
            sockets = Some(div(max, cores.unwrap_or(1).saturating_mul(t)));
        }
        if threads.is_none() {
            let sc = sockets.unwrap_or(1).saturating_mul(cores.unwrap_or(1));
            threads = Some(div(max, sc));
        }
    }
    let (sockets, cores, threads) = (
        sockets.unwrap_or(1),
        cores.unwrap_or(1),
        threads.unwrap_or(1),
    );
    let product = sockets.saturating_mul(cores).saturating_mul(threads);
    let maxcpus = maxcpus.unwrap_or(product);
    let cpus = g.cpus.unwrap_or(maxcpus);
    if product != maxcpus {
        return Err(MachineError::SmpProduct {
            sockets,
            cores,
            threads,
            maxcpus,
        });
    }
    if maxcpus < cpus {
        return Err(MachineError::SmpMaxBelowCpus { maxcpus, cpus });
    }
    if maxcpus > MAX_CPUS {
        return Err(MachineError::SmpTooMany {
            maxcpus,
            max: MAX_CPUS,
            machine: machine.to_string(),
        });
    }
    // All values are now <= 255.
    let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(SmpConfig {
        cpus: narrow(cpus),
        sockets: narrow(sockets),
        cores: narrow(cores),
        threads: narrow(threads),
        maxcpus: narrow(maxcpus),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str, implied: &str) -> Opts {
        Opts::parse(s, Some(implied)).unwrap()
    }

    fn smp(s: &str) -> Result<(u32, u32, u32, u32, u32), String> {
        smp_on(s, "pc-i440fx-7.2")
    }

    fn smp_on(s: &str, machine: &str) -> Result<(u32, u32, u32, u32, u32), String> {
        parse_smp(opts(s, "cpus"), machine)
            .map(|c| (c.cpus, c.sockets, c.cores, c.threads, c.maxcpus))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn smp_completion_prefers_cores_on_recent_machines() {
        // (cpus, sockets, cores, threads, maxcpus)
        assert_eq!(smp("1"), Ok((1, 1, 1, 1, 1)));
        assert_eq!(smp("4"), Ok((4, 1, 4, 1, 4)));
        assert_eq!(smp("cpus=4"), Ok((4, 1, 4, 1, 4)));
        assert_eq!(smp("4,sockets=2"), Ok((4, 2, 2, 1, 4)));
        assert_eq!(smp("4,cores=2"), Ok((4, 2, 2, 1, 4)));
        assert_eq!(smp("4,sockets=1,cores=2"), Ok((4, 1, 2, 2, 4)));
        assert_eq!(smp("4,sockets=1,cores=2,threads=2"), Ok((4, 1, 2, 2, 4)));
        assert_eq!(smp("2,maxcpus=8"), Ok((2, 1, 8, 1, 8)));
        assert_eq!(smp("maxcpus=4"), Ok((4, 1, 4, 1, 4)));
        assert_eq!(smp("sockets=2,cores=2"), Ok((4, 2, 2, 1, 4)));
        assert_eq!(smp("threads=2"), Ok((2, 1, 1, 2, 2)));
        assert_eq!(smp("4,dies=1,clusters=1"), Ok((4, 1, 4, 1, 4)));
        assert_eq!(smp("0x4"), Ok((4, 1, 4, 1, 4)));
    }

    #[test]
    fn smp_completion_prefers_sockets_on_old_machines() {
        assert!(prefers_sockets("pc-i440fx-6.1"));
        assert!(prefers_sockets("pc-i440fx-2.12"));
        assert!(!prefers_sockets("pc-i440fx-6.2"));
        assert!(!prefers_sockets("pc-i440fx-7.2"));
        assert_eq!(smp_on("4", "pc-i440fx-6.1"), Ok((4, 4, 1, 1, 4)));
        assert_eq!(smp_on("4,cores=2", "pc-i440fx-6.1"), Ok((4, 2, 2, 1, 4)));
        assert_eq!(smp_on("4,sockets=2", "pc-i440fx-6.1"), Ok((4, 2, 2, 1, 4)));
        assert_eq!(
            smp_on("8,maxcpus=4", "pc-i440fx-6.1"),
            Err("maxcpus (4) must be equal to or greater than cpus (8)".into())
        );
    }

    #[test]
    fn smp_errors_match_qemu_rules() {
        assert_eq!(smp("0"), Err("cpus must be greater than zero".into()));
        assert_eq!(
            smp("4,sockets=0"),
            Err("sockets must be greater than zero".into())
        );
        assert_eq!(
            smp("4,cores=0"),
            Err("cores must be greater than zero".into())
        );
        assert_eq!(
            smp("4,threads=0"),
            Err("threads must be greater than zero".into())
        );
        assert_eq!(
            smp("4,maxcpus=0"),
            Err("maxcpus must be greater than zero".into())
        );
        assert_eq!(
            smp("8,maxcpus=4"),
            Err("maxcpus (4) must be equal to or greater than cpus (8)".into())
        );
        assert_eq!(
            smp("4,sockets=3"),
            Err(
                "product of the hierarchy must match maxcpus: sockets (3) * dies (1) * \
                 cores (1) * threads (1) != maxcpus (4)"
                    .into()
            )
        );
        assert_eq!(
            smp("2,cores=4"),
            Err(
                "product of the hierarchy must match maxcpus: sockets (0) * dies (1) * \
                 cores (4) * threads (1) != maxcpus (2)"
                    .into()
            )
        );
        assert_eq!(
            smp("cpus=2,sockets=2,cores=2,threads=2"),
            Err(
                "product of the hierarchy must match maxcpus: sockets (2) * dies (1) * \
                 cores (2) * threads (2) != maxcpus (2)"
                    .into()
            )
        );
        assert_eq!(
            smp("300"),
            Err("300 CPUs are more than the 255 that machine 'pc-i440fx-7.2' supports".into())
        );
        assert_eq!(smp("255"), Ok((255, 1, 255, 1, 255)));
        assert_eq!(
            smp("2,maxcpus=256"),
            Err("256 CPUs are more than the 255 that machine 'pc-i440fx-7.2' supports".into())
        );
        assert_eq!(
            smp("4,dies=2"),
            Err("dies=2: only dies=1 is supported by troupe".into())
        );
        assert_eq!(
            smp("x"),
            Err("parameter 'cpus' expects a number, not 'x'".into())
        );
        assert!(smp("4,foo=1")
            .unwrap_err()
            .starts_with("parameter 'foo' is not supported"));
        // Enormous values neither overflow nor panic.
        assert!(smp("18446744073709551615,sockets=18446744073709551615,cores=2").is_err());
        assert!(smp("sockets=4294967296,cores=4294967296,threads=4294967296").is_err());
    }
}
