//! The machine as a whole: `-m`, `-M/-machine`, `-accel` here; `-smp`, `-cpu`, `-boot` with
//! the firmware/direct-boot choice (`-bios`, `-kernel`, `-initrd`, `-append`) and
//! `-vcpu-pin` in the submodules.
//!
//! Each function takes the option's parsed [`Opts`] (or raw string), applies QEMU 7.2's
//! rules and defaults, and returns the typed piece of [`crate::config::VmConfig`]. All of
//! them fail with the one [`MachineError`].

mod boot;
mod cpu;
mod pin;
mod smp;

use thiserror::Error;

use super::host::{FileError, Host};
use super::options::{parse_bool, parse_size, Opts, OptsError, SizeError};
use crate::config::{Accel, MachineConfig};

pub use boot::{default_boot, parse_boot, resolve_boot, BootFiles, BootOption};
pub use cpu::{cpu_help, parse_cpu};
pub use pin::parse_vcpu_pin;
pub use smp::parse_smp;

/// The most vCPUs QEMU 7.2's `pc` machine allows.
pub const MAX_CPUS: u64 = 255;

/// The machine type `pc` stands for.
pub const DEFAULT_MACHINE: &str = "pc-i440fx-7.2";

/// QEMU 7.2's `pc-i440fx-*` versions, newest first.
const PC_VERSIONS: &[&str] = &[
    "7.2", "7.1", "7.0", "6.2", "6.1", "6.0", "5.2", "5.1", "5.0", "4.2", "4.1", "4.0", "3.1",
    "3.0", "2.9", "2.8", "2.7", "2.6", "2.5", "2.4", "2.3", "2.2", "2.12", "2.11", "2.10", "2.1",
    "2.0", "1.7", "1.6", "1.5", "1.4",
];

/// Machine types QEMU has that troupe refuses by name (prefixes).
const OTHER_MACHINES: &[&str] = &["q35", "pc-q35-", "microvm", "isapc", "x-remote"];

/// The empty machine (no RAM unless `-m`, no vCPUs, no devices): what management tools
/// start troupe as to ask it what it has.
pub const NONE_MACHINE: &str = "none";

/// The `pc-i440fx-*` machine types troupe has, newest first.
pub fn pc_machine_types() -> impl Iterator<Item = String> {
    PC_VERSIONS.iter().map(|v| format!("pc-i440fx-{v}"))
}

/// Ways the machine options can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MachineError {
    /// A malformed option string or value.
    #[error(transparent)]
    Opts(#[from] OptsError),
    /// `-m` size syntax.
    #[error(transparent)]
    Size(#[from] SizeError),
    /// `-m 0`.
    #[error("memory size must be greater than zero")]
    MemoryZero,
    /// `-m` beyond the host's physical address space.
    #[error(
        "{mib} MiB is more memory than this host can address \
         ({bits}-bit physical addresses allow at most {max_mib} MiB)"
    )]
    MemoryTooLarge {
        /// What was asked for, in MiB.
        mib: u64,
        /// Host physical address bits.
        bits: u8,
        /// The most that fits, in MiB.
        max_mib: u64,
    },
    /// `-m ...,slots=N` without `maxmem=`.
    #[error("slots specified but no max-size")]
    SlotsWithoutMaxmem,
    /// `maxmem=` below `size=`.
    #[error(
        "invalid value of maxmem: maximum memory size ({maxmem:#x}) must be at least \
         the initial memory size ({size:#x})"
    )]
    MaxmemBelowSize { maxmem: u64, size: u64 },
    /// `slots=N` (N > 0) with `maxmem=` equal to `size=`: no room to plug anything.
    #[error(
        "invalid value of maxmem: memory slots were specified but maximum memory size \
         ({maxmem:#x}) is equal to the initial memory size ({size:#x})"
    )]
    MaxmemEqualsSize { maxmem: u64, size: u64 },
    /// More DIMM slots than the ACPI memory hotplug block has (QEMU's ACPI_MAX_RAM_SLOTS).
    #[error("unsupported amount of memory slots: {0}")]
    TooManySlots(u64),
    /// `maxmem=` not a whole number of pages (QEMU's wording, typo included).
    #[error("maximum memory size must by aligned to multiple of 4096 bytes")]
    MaxmemAlignment,
    /// A `-smp` value of 0.
    #[error("{0} must be greater than zero")]
    SmpZero(&'static str),
    /// A topology level troupe does not model.
    #[error("{what}={value}: only {what}=1 is supported by troupe")]
    SmpLevel {
        /// `dies` or `clusters`.
        what: &'static str,
        /// The value given.
        value: u64,
    },
    /// The completed topology doesn't multiply out.
    #[error(
        "product of the hierarchy must match maxcpus: sockets ({sockets}) * dies (1) * \
         cores ({cores}) * threads ({threads}) != maxcpus ({maxcpus})"
    )]
    SmpProduct {
        /// Sockets after completion.
        sockets: u64,
        /// Cores after completion.
        cores: u64,
        /// Threads after completion.
        threads: u64,
        /// maxcpus after completion.
        maxcpus: u64,
    },
    /// maxcpus < cpus.
    #[error("maxcpus ({maxcpus}) must be equal to or greater than cpus ({cpus})")]
    SmpMaxBelowCpus {
        /// maxcpus.
        maxcpus: u64,
        /// cpus.
        cpus: u64,
    },
    /// Above the machine's limit.
    #[error("{maxcpus} CPUs are more than the {max} that machine '{machine}' supports")]
    SmpTooMany {
        /// maxcpus after completion.
        maxcpus: u64,
        /// The machine's limit.
        max: u64,
        /// The machine type.
        machine: String,
    },
    /// `-cpu` model.
    #[error("unable to find CPU model '{0}' (see -cpu help)")]
    CpuModel(String),
    /// `-cpu ...,+feat` with an unknown feature.
    #[error("unknown CPU feature '{0}' (see -cpu help)")]
    CpuFeature(String),
    /// `-cpu ...,feat=value` with a non-boolean value.
    #[error("CPU feature '{feature}' expects on or off, not '{value}'")]
    CpuFeatureValue {
        /// The feature.
        feature: String,
        /// What was written.
        value: String,
    },
    /// A CPU property troupe does not implement (hv-*, migratable=, ...).
    #[error("CPU property '{0}' is not supported by troupe")]
    CpuProperty(String),
    /// A CPU property with a value it cannot take.
    #[error("CPU property '{property}' cannot be '{value}': {expected}")]
    CpuPropertyValue {
        /// The property.
        property: String,
        /// What was written.
        value: String,
        /// What it takes.
        expected: &'static str,
    },
    /// A machine type QEMU has but troupe does not emulate.
    #[error("machine type '{0}' is not supported by troupe: it emulates only pc (i440FX + PIIX)")]
    MachineRefused(String),
    /// `-m` with `-machine none`.
    #[error(
        "machine 'none' has no RAM (it is the empty machine management tools probe troupe with)"
    )]
    NoneMachineMemory,
    /// An unknown machine type.
    #[error("unsupported machine type '{0}' (use -machine help to list)")]
    MachineType(String),
    /// A machine property value troupe can't honour.
    #[error("{key}={value} is not supported by troupe (only {key}={supported})")]
    MachineProperty {
        /// The property.
        key: &'static str,
        /// What was written.
        value: String,
        /// The value troupe implements.
        supported: &'static str,
    },
    /// An accelerator other than KVM.
    #[error("accelerator '{0}' is not supported: troupe runs guests with KVM only")]
    Accel(String),
    /// Both `-accel` and `-machine accel=`.
    #[error("the -accel and -machine accel= options are incompatible")]
    AccelConflict,
    /// A `-boot` letter that names no device.
    #[error("invalid boot device '{0}' (a, b: floppy; c: first hard disk; d: CD-ROM; n: network)")]
    BootDevice(char),
    /// A `-boot` letter given twice.
    #[error("boot device '{0}' was given twice")]
    BootTwice(char),
    /// More boot letters than the PC's CMOS holds.
    #[error("too many boot devices for PC: '{0}' names more than 3")]
    BootTooMany(String),
    /// `reboot-timeout` outside -1..=65535.
    #[error("reboot-timeout must be between -1 and 65535, not '{0}'")]
    RebootTimeout(String),
    /// `-vcpu-pin` syntax.
    #[error("invalid pinning '{0}' (expected auto, none or VCPU=CORES,... like 0=2,1=3-4)")]
    PinSyntax(String),
    /// `-vcpu-pin` names a core outside the affinity mask.
    #[error("host CPU {core} is not in this process's allowed CPU set ({allowed})")]
    PinCore {
        /// The core named.
        core: usize,
        /// The allowed set, as a list.
        allowed: String,
    },
    /// `-vcpu-pin` names a vCPU that doesn't exist.
    #[error("vCPU {vcpu} does not exist (-smp gives {cpus} vCPU(s), numbered from 0)")]
    PinVcpu {
        /// The index named.
        vcpu: u64,
        /// `smp.cpus`.
        cpus: u32,
    },
    /// `-vcpu-pin` names a vCPU twice.
    #[error("vCPU {0} is pinned twice")]
    PinTwice(u32),
    /// `-initrd`/`-append` without `-kernel`.
    #[error("only allowed with -kernel")]
    NeedsKernel,
    /// `-bios` with `-kernel`.
    #[error("troupe boots -kernel directly, without firmware; drop -bios or -kernel")]
    BiosWithKernel,
    /// The default firmware is missing.
    #[error("{0} (install the Debian package 'seabios', or give -bios)")]
    DefaultBiosMissing(FileError),
    /// A firmware file with an impossible size.
    #[error("firmware size {0} bytes is not a non-zero multiple of 64 KiB")]
    BiosAlignment(u64),
    /// A firmware file too large to map below 4 GiB.
    #[error("firmware is {0} bytes, more than the 16 MiB troupe maps")]
    BiosTooLarge(u64),
    /// A named file can't be used.
    #[error(transparent)]
    File(#[from] FileError),
}

/// What `-m` says: the RAM at start and, for memory hotplug, the DIMM slots and the most
/// memory the guest may reach with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySpec {
    /// `size=`: bytes, a whole number of MiB.
    pub size: u64,
    /// `slots=`: DIMM slots (0: none).
    pub slots: u32,
    /// `maxmem=`: bytes (`size` when not given).
    pub maxmem: u64,
}

/// QEMU's ACPI_MAX_RAM_SLOTS: the memory hotplug block's slot count fits a byte.
pub const MAX_MEMORY_SLOTS: u64 = 256;

/// `-m [size=]SIZE[,slots=N,maxmem=MAX]`: bytes, rounded up to whole MiB like QEMU,
/// checked against the host's physical address space (guest RAM above 3 GiB is mapped
/// from 4 GiB up); `slots`/`maxmem` checked as QEMU checks them.
pub fn parse_memory(mut opts: Opts, host: &Host) -> Result<MemorySpec, MachineError> {
    let size = opts.str("size");
    let slots = match opts.str("slots") {
        None => None,
        Some(v) => Some(parse_slots(&v).ok_or(OptsError::NotNumber {
            key: "slots".into(),
            value: v,
        })?),
    };
    let maxmem = match opts.str("maxmem") {
        None => None,
        Some(v) => Some(parse_size(&v, 1)?),
    };
    opts.finish()?;
    let Some(size) = size else {
        return Err(MachineError::Opts(OptsError::Missing("size".into())));
    };
    const MIB: u64 = 1 << 20;
    let bytes = parse_size(&size, MIB)?;
    let mib = bytes.div_ceil(MIB);
    if mib == 0 {
        return Err(MachineError::MemoryZero);
    }
    // Highest guest-physical address: RAM above 3 GiB is relocated above 4 GiB.
    let max_mib = ((1u64 << host.phys_addr_bits.min(63)) / MIB).saturating_sub(1024);
    if mib > max_mib {
        return Err(MachineError::MemoryTooLarge {
            mib,
            bits: host.phys_addr_bits,
            max_mib,
        });
    }
    let size = mib * MIB;
    // QEMU's order: machine_set_mem's checks, then pc_memory_init's.
    let maxmem = match maxmem {
        None if slots.is_some() => return Err(MachineError::SlotsWithoutMaxmem),
        None => size,
        Some(m) if m < size => return Err(MachineError::MaxmemBelowSize { maxmem: m, size }),
        Some(m) if m == size && slots.is_some_and(|n| n > 0) => {
            return Err(MachineError::MaxmemEqualsSize { maxmem: m, size })
        }
        Some(m) => m,
    };
    let slots = slots.unwrap_or(0);
    if maxmem > size {
        if slots > MAX_MEMORY_SLOTS {
            return Err(MachineError::TooManySlots(slots));
        }
        if maxmem % 4096 != 0 {
            return Err(MachineError::MaxmemAlignment);
        }
        // The device-memory region must fit the host's address space too.
        let region = crate::vm::memory::DeviceMemory::pc(size, slots as u32, maxmem);
        let end_mib = region.end().div_ceil(MIB);
        let limit_mib = (1u64 << host.phys_addr_bits.min(63)) / MIB;
        if end_mib > limit_mib {
            return Err(MachineError::MemoryTooLarge {
                mib: end_mib,
                bits: host.phys_addr_bits,
                max_mib: limit_mib,
            });
        }
    }
    Ok(MemorySpec {
        size,
        slots: slots as u32,
        maxmem,
    })
}

/// `slots=`: a number; QEMU reads `-1` as 2^64-1 (and then refuses it as too many).
fn parse_slots(v: &str) -> Option<u64> {
    match v.strip_prefix('-') {
        Some(n) => n.parse::<u64>().ok().map(|n| n.wrapping_neg()),
        None => super::options::parse_uint(v),
    }
}

/// What `-machine` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMachine {
    pub machine: MachineConfig,
    /// `accel=` was given.
    pub accel_given: bool,
    /// `memory-backend=ID`: the `-object memory-backend-ram` that is the guest's RAM.
    pub memory_backend: Option<String>,
    /// `usb=on` (or `-usb`): the board's PIIX3 UHCI controller at 01.2.
    pub usb: bool,
}

/// `-M/-machine [type=]TYPE[,accel=kvm][,kernel-irqchip=on][,usb=on|off]
/// [,dump-guest-core=on|off][,memory-backend=ID][,mem-merge=on|off]`.
pub fn parse_machine(mut opts: Opts) -> Result<ParsedMachine, MachineError> {
    let kind = match opts.str("type") {
        None => DEFAULT_MACHINE.to_string(),
        Some(t) => canonical_machine(&t)?,
    };
    let accel = opts.str("accel");
    if let Some(list) = &accel {
        // `accel=kvm:tcg` means "try kvm first"; troupe only has the first.
        let first = list.split(':').next().unwrap_or_default();
        check_accel(first)?;
    }
    if let Some(v) = opts.str("kernel-irqchip") {
        if parse_bool(&v) != Some(true) {
            return Err(MachineError::MachineProperty {
                key: "kernel-irqchip",
                value: v,
                supported: "on",
            });
        }
    }
    let usb = opts.flag("usb")?.unwrap_or(false);
    let dump_guest_core = opts.flag("dump-guest-core")?.unwrap_or(true);
    let memory_backend = opts.str("memory-backend");
    let merge = opts.flag("mem-merge")?.unwrap_or(true);
    opts.finish()?;
    Ok(ParsedMachine {
        machine: MachineConfig {
            kind,
            accel: Accel::Kvm,
            dump_guest_core,
            ram: crate::config::RamBacking {
                merge,
                ..Default::default()
            },
        },
        accel_given: accel.is_some(),
        memory_backend,
        usb,
    })
}

/// `pc` → the newest version; `pc-i440fx-X.Y` kept; everything else refused.
fn canonical_machine(t: &str) -> Result<String, MachineError> {
    if t == "pc" {
        return Ok(DEFAULT_MACHINE.to_string());
    }
    if t == NONE_MACHINE {
        return Ok(t.to_string());
    }
    if let Some(v) = t.strip_prefix("pc-i440fx-") {
        if PC_VERSIONS.contains(&v) {
            return Ok(t.to_string());
        }
    }
    if OTHER_MACHINES
        .iter()
        .any(|m| t == *m || (m.ends_with('-') && t.starts_with(m)))
    {
        return Err(MachineError::MachineRefused(t.to_string()));
    }
    Err(MachineError::MachineType(t.to_string()))
}

/// Whether the machine type completes `-smp` preferring sockets (6.1 and older) rather than
/// cores (6.2 and newer, QEMU commit "hw/smp: prefer cores over sockets since 6.2").
pub fn prefers_sockets(kind: &str) -> bool {
    let Some(v) = kind.strip_prefix("pc-i440fx-") else {
        return false;
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) < (6, 2)
}

/// `-machine help`.
pub fn machine_help() -> String {
    let mut out = String::from("Supported machines are:\n");
    out.push_str(&format!(
        "{:<20} Standard PC (i440FX + PIIX, 1996) (alias of {DEFAULT_MACHINE})\n",
        "pc"
    ));
    for (i, v) in PC_VERSIONS.iter().enumerate() {
        let name = format!("pc-i440fx-{v}");
        let default = if i == 0 { " (default)" } else { "" };
        out.push_str(&format!(
            "{name:<20} Standard PC (i440FX + PIIX, 1996){default}\n"
        ));
    }
    out.push_str(&format!("{NONE_MACHINE:<20} empty machine\n"));
    out
}

/// `-accel [accel=]kvm[,kernel-irqchip=on]`.
pub fn parse_accel(mut opts: Opts) -> Result<(), MachineError> {
    let accel = opts.required("accel")?;
    check_accel(&accel)?;
    if let Some(v) = opts.str("kernel-irqchip") {
        if parse_bool(&v) != Some(true) {
            return Err(MachineError::MachineProperty {
                key: "kernel-irqchip",
                value: v,
                supported: "on",
            });
        }
    }
    opts.finish()?;
    Ok(())
}

fn check_accel(name: &str) -> Result<(), MachineError> {
    if name == "kvm" {
        Ok(())
    } else {
        Err(MachineError::Accel(name.to_string()))
    }
}

/// `-accel help`.
pub fn accel_help() -> String {
    "Accelerators supported in troupe:\nkvm\n".to_string()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::host::testing::host;
    use super::*;

    fn opts(s: &str, implied: &str) -> Opts {
        Opts::parse(s, Some(implied)).unwrap()
    }

    fn mem(s: &str) -> Result<u64, String> {
        let h = host(Path::new("/x"));
        parse_memory(opts(s, "size"), &h)
            .map(|m| m.size)
            .map_err(|e| e.to_string())
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn memory_sizes_default_to_mib_and_take_suffixes() {
        assert_eq!(mem("512"), Ok(512 * MIB));
        assert_eq!(mem("512M"), Ok(512 * MIB));
        assert_eq!(mem("2G"), Ok(2048 * MIB));
        assert_eq!(mem("size=1G"), Ok(1024 * MIB));
        assert_eq!(mem("1.5G"), Ok(1536 * MIB));
        assert_eq!(mem("512G"), Ok(512 << 30));
    }

    #[test]
    fn memory_is_rounded_up_to_whole_mib() {
        assert_eq!(mem("512K"), Ok(MIB));
        assert_eq!(mem("1025K"), Ok(2 * MIB));
        assert_eq!(mem("1B"), Ok(MIB));
    }

    #[test]
    fn memory_errors_say_why() {
        assert_eq!(
            mem("0"),
            Err("memory size must be greater than zero".into())
        );
        assert_eq!(
            mem("0G"),
            Err("memory size must be greater than zero".into())
        );
        assert_eq!(
            mem("abc"),
            Err(
                "invalid size 'abc' (a number with an optional suffix B, K, M, G, T, P or E)"
                    .into()
            )
        );
        // 40-bit host: 1 TiB of address space, minus the 1 GiB PCI hole.
        assert_eq!(
            mem("99999999G"),
            Err(
                "102399998976 MiB is more memory than this host can address \
                 (40-bit physical addresses allow at most 1047552 MiB)"
                    .into()
            )
        );
        assert_eq!(mem("1023G"), Ok(1023 << 30));
        assert!(mem("1024G").is_err());
        assert_eq!(
            mem("99999999999E"),
            Err("size '99999999999E' is too large".into())
        );
        assert_eq!(
            mem("1G,foo=2"),
            Err("parameter 'foo' is not supported (accepted: size, slots, maxmem)".into())
        );
    }

    fn memhp(s: &str) -> Result<(u64, u32, u64), String> {
        let h = host(Path::new("/x"));
        parse_memory(opts(s, "size"), &h)
            .map(|m| (m.size, m.slots, m.maxmem))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn slots_and_maxmem_are_checked_as_qemu_checks_them() {
        assert_eq!(memhp("1G"), Ok((1 << 30, 0, 1 << 30)));
        assert_eq!(memhp("1G,slots=2,maxmem=4G"), Ok((1 << 30, 2, 4 << 30)));
        // maxmem without slots: a device-memory region with no slot to fill it.
        assert_eq!(memhp("1G,maxmem=2G"), Ok((1 << 30, 0, 2 << 30)));
        assert_eq!(memhp("1G,slots=0,maxmem=1G"), Ok((1 << 30, 0, 1 << 30)));
        for (arg, err) in [
            ("1G,slots=2", "slots specified but no max-size"),
            (
                "1G,slots=2,maxmem=512M",
                "invalid value of maxmem: maximum memory size (0x20000000) must be at least \
                 the initial memory size (0x40000000)",
            ),
            (
                "1G,slots=2,maxmem=1G",
                "invalid value of maxmem: memory slots were specified but maximum memory \
                 size (0x40000000) is equal to the initial memory size (0x40000000)",
            ),
            (
                "1G,slots=257,maxmem=2G",
                "unsupported amount of memory slots: 257",
            ),
            (
                "1G,slots=-1,maxmem=2G",
                "unsupported amount of memory slots: 18446744073709551615",
            ),
            (
                "1G,slots=2,maxmem=4294967297B",
                "maximum memory size must by aligned to multiple of 4096 bytes",
            ),
            (
                "1G,slots=x,maxmem=2G",
                "parameter 'slots' expects a number, not 'x'",
            ),
        ] {
            assert_eq!(memhp(arg), Err(err.to_string()), "{arg}");
        }
        // The device-memory region must fit the host's 40-bit address space.
        assert!(memhp("1G,slots=2,maxmem=1020G").is_err());
        assert!(memhp("1G,slots=2,maxmem=900G").is_ok());
    }

    fn machine(s: &str) -> Result<(String, bool), String> {
        parse_machine(opts(s, "type"))
            .map(|p| (p.machine.kind, p.accel_given))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn machine_types_resolve_like_qemu() {
        assert_eq!(machine("pc"), Ok(("pc-i440fx-7.2".into(), false)));
        assert_eq!(
            machine("pc-i440fx-6.1"),
            Ok(("pc-i440fx-6.1".into(), false))
        );
        assert_eq!(machine("pc,accel=kvm"), Ok(("pc-i440fx-7.2".into(), true)));
        assert_eq!(machine("accel=kvm:tcg"), Ok(("pc-i440fx-7.2".into(), true)));
        assert_eq!(
            machine("type=pc,kernel-irqchip=on,usb=off"),
            Ok(("pc-i440fx-7.2".into(), false))
        );
    }

    #[test]
    fn machine_errors_are_clear() {
        assert_eq!(
            machine("q35"),
            Err("machine type 'q35' is not supported by troupe: it emulates only pc (i440FX + PIIX)".into())
        );
        assert_eq!(
            machine("pc-q35-7.2"),
            Err("machine type 'pc-q35-7.2' is not supported by troupe: it emulates only pc (i440FX + PIIX)".into())
        );
        assert_eq!(
            machine("microvm"),
            Err("machine type 'microvm' is not supported by troupe: it emulates only pc (i440FX + PIIX)".into())
        );
        assert_eq!(
            machine("foo"),
            Err("unsupported machine type 'foo' (use -machine help to list)".into())
        );
        assert_eq!(
            machine("pc-i440fx-9.9"),
            Err("unsupported machine type 'pc-i440fx-9.9' (use -machine help to list)".into())
        );
        assert_eq!(
            machine("pc,accel=tcg"),
            Err("accelerator 'tcg' is not supported: troupe runs guests with KVM only".into())
        );
        assert_eq!(
            machine("pc,kernel-irqchip=split"),
            Err("kernel-irqchip=split is not supported by troupe (only kernel-irqchip=on)".into())
        );
        assert!(machine("pc,usb=maybe").unwrap_err().contains("usb"));
        let usb = |s: &str| parse_machine(opts(s, "type")).unwrap().usb;
        assert!(usb("pc,usb=on"));
        assert!(!usb("pc,usb=off"));
        assert!(!usb("pc"));
        assert!(machine("pc,foo=bar")
            .unwrap_err()
            .starts_with("parameter 'foo' is not supported"));
    }

    #[test]
    fn machine_help_lists_pc_versions() {
        let h = machine_help();
        assert!(h.contains("pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)"));
        assert!(h.contains("pc-i440fx-1.4"));
        assert!(!h.contains("q35"));
    }

    #[test]
    fn accel_accepts_only_kvm() {
        assert_eq!(parse_accel(opts("kvm", "accel")), Ok(()));
        assert_eq!(parse_accel(opts("kvm,kernel-irqchip=on", "accel")), Ok(()));
        assert_eq!(
            parse_accel(opts("tcg", "accel")).unwrap_err().to_string(),
            "accelerator 'tcg' is not supported: troupe runs guests with KVM only"
        );
        assert_eq!(
            parse_accel(opts("thread=single", "accel"))
                .unwrap_err()
                .to_string(),
            "parameter 'accel' is missing"
        );
    }
}
