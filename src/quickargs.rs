//! TEMPORARY argument handling until the QEMU-syntax parser lands in `cli`.

use std::path::PathBuf;

use crate::config::*;

pub fn parse(args: &[String]) -> Result<VmConfig, String> {
    let mut cfg = VmConfig {
        name: None,
        uuid: None,
        memory: 128 << 20,
        smp: SmpConfig {
            cpus: 1,
            sockets: 1,
            cores: 1,
            threads: 1,
            maxcpus: 1,
        },
        cpu: CpuConfig {
            model: CpuModel::Qemu64,
            features: vec![],
        },
        machine: MachineConfig {
            kind: "pc".into(),
            accel: Accel::Kvm,
        },
        boot: BootConfig::Firmware {
            bios: "/usr/share/seabios/bios-256k.bin".into(),
        },
        boot_order: BootOrder {
            order: "cad".into(),
            once: None,
            menu: false,
            splash_time_ms: None,
            strict: false,
            reboot_timeout_ms: -1,
        },
        vcpu_pin: VcpuPin::Auto,
        serials: vec![CharBackend::Stdio],
        chardevs: vec![],
        monitors: vec![],
        vnc: None,
        display: DisplayKind::None,
        nographic: false,
        vga: VgaKind::Std,
        keymap: "en-us".into(),
        drives: vec![],
        snapshot: false,
        netdevs: vec![],
        devices: vec![],
        start_paused: false,
        no_reboot: false,
        no_shutdown: false,
        daemonize: false,
        pidfile: None,
        log_file: None,
        log_items: vec![],
        incoming: None,
        dump_acpi: None,
        rtc: RtcConfig { base: RtcBase::Utc },
    };
    let mut kernel = None;
    let mut cmdline = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or(format!("{a}: requires an argument"))
        };
        match a.as_str() {
            "-kernel" => kernel = Some(PathBuf::from(val()?)),
            "-append" => cmdline = val()?,
            "-m" => cfg.memory = val()?.parse::<u64>().map_err(|e| e.to_string())? << 20,
            "-smp" => {
                let n: u32 = val()?
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?;
                cfg.smp = SmpConfig {
                    cpus: n,
                    sockets: 1,
                    cores: n,
                    threads: 1,
                    maxcpus: n,
                };
            }
            "-S" => cfg.start_paused = true,
            "-debugexit" => cfg.devices.push(DeviceConfig {
                id: None,
                addr: None,
                kind: DeviceKind::IsaDebugExit {
                    iobase: 0xf4,
                    iosize: 4,
                },
            }),
            other => return Err(format!("{other}: invalid option")),
        }
    }
    if let Some(k) = kernel {
        cfg.boot = BootConfig::Direct {
            kernel: k,
            initrd: None,
            cmdline,
        };
    }
    Ok(cfg)
}
