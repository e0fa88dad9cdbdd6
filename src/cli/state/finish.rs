//! Turning what the command line said into a [`VmConfig`]: QEMU's defaults (the VNC
//! display, COM1 and the monitor on its text consoles or `-nographic`'s multiplexed
//! stdio, the e1000 on user networking, the empty IDE CD-ROM, VGA), the creation-order work (IDE indexes, PCI slots, MAC addresses), every
//! cross-reference, and the file checks.
//!
//! [`State::finish`] runs the stages in dependency order: the machine (it decides how
//! `-smp` is completed), consoles, networks, drives, then devices (which reference drives
//! and networks), then the chardev users (which include devices).

use std::mem::take;

use super::State;
use crate::cli::chardev::{self, Legacy, Use};
use crate::cli::device::{self, DeviceSet, DeviceSpec, SpecKind};
use crate::cli::drive::{self, BlockNode, DriveSpec};
use crate::cli::general;
use crate::cli::host::{self, Host};
use crate::cli::machine::{self, BootFiles, BootOption};
use crate::cli::netdev::{self, MachineNic, NetArg, NicArg};
use crate::cli::object::{ObjectError, ObjectSpec};
use crate::cli::{
    invalid, ChardevError, CliError, ConfigError, FileError, MachineError, NetdevError,
};
use crate::config::{
    BootConfig, BootOrder, CharBackend, Chardev, DeviceConfig, DeviceKind, DisplayKind,
    DriveConfig, DriveInterface, MachineConfig, MonitorConfig, MonitorMode, NetdevConfig,
    NetdevKind, RtcBase, RtcConfig, SmpConfig, VcpuPin, VgaKind, VmConfig,
};

/// Items paired with the option text that produced them, for error messages.
type Located<T> = Vec<(String, T)>;

/// The machine-wide settings.
struct MachinePart {
    machine: MachineConfig,
    memory: u64,
    memory_slots: u32,
    maxmem: u64,
    /// Memory backends that are not the guest's RAM (for `-device pc-dimm`).
    dimm_backends: Located<crate::cli::object::MemoryBackend>,
    smp: SmpConfig,
    boot_order: BootOrder,
    name: (Option<String>, Option<String>, bool),
    rtc: RtcConfig,
    vcpu_pin: VcpuPin,
    boot: BootConfig,
    /// `-machine usb=on`, `-usb`, `-usbdevice`.
    usb: bool,
}

/// Serial ports, monitors and chardevs after QEMU's defaults.
struct Consoles {
    serials: Located<CharBackend>,
    monitors: Located<MonitorConfig>,
    chardevs: Located<Chardev>,
}

/// Backends, and the NICs the machine creates for `-nic`/`-net nic`/the default network.
struct Networks {
    netdevs: Located<NetdevConfig>,
    machine_nics: Located<MachineNic>,
    /// Ids given with `-netdev` (QEMU warns when nothing uses one).
    user_netdevs: Vec<String>,
    warnings: Vec<String>,
}

/// Drives, and the `if=virtio` ones that still need their virtio-blk-pci.
struct Drives {
    drives: Vec<DriveConfig>,
    virtio: Located<String>,
}

impl State {
    /// Apply defaults, realize devices in QEMU's order, check every reference and file.
    pub(in crate::cli) fn finish(mut self, host: &Host) -> Result<VmConfig, CliError> {
        let mut m = self.machine_part(host)?;
        // Every memory backend that is not the RAM is some `-device pc-dimm`'s.
        let dimms = take(&mut self.dimms);
        for (at, b) in &m.dimm_backends {
            let named = dimms.iter().any(|(_, d)| {
                d.split(',')
                    .any(|kv| kv.strip_prefix("memdev=") == Some(b.id.as_str()))
            });
            if !named {
                return Err(invalid(at, ObjectError::BackendUnused(b.id.clone())));
            }
        }
        // The empty machine has no default devices (nor buses to put them on).
        if m.machine.kind == machine::NONE_MACHINE {
            self.nodefaults = true;
        }
        let consoles = self.consoles()?;
        let mut net = self.networks()?;
        let Drives { mut drives, virtio } = self.assign_drives()?;
        let vga = self.vga.unwrap_or(if self.nodefaults {
            VgaKind::None
        } else {
            VgaKind::Std
        });
        let netdevs: Vec<NetdevConfig> = net.netdevs.iter().map(|(_, n)| n.clone()).collect();
        let usb = m.usb && m.machine.kind != machine::NONE_MACHINE;
        let devices = self.realize_devices(
            usb,
            take(&mut net.machine_nics),
            virtio,
            DeviceSet::new(vga, m.smp.cpus),
            &mut drives,
            &netdevs,
        )?;
        check_chardev_users(&consoles, &net.netdevs, &devices)?;
        let devices: Vec<DeviceConfig> = devices.into_iter().map(|(_, d)| d).collect();
        // The board devices' ids share the devices' namespace.
        let mut board_ids: Vec<&String> = self.vga_id.iter().collect();
        board_ids.extend(self.serial_ids.iter().flatten());
        for (n, id) in board_ids.iter().enumerate() {
            let twice =
                devices.iter().any(|d| d.id.as_ref() == Some(*id)) || board_ids[..n].contains(id);
            if twice {
                let at = format!("-device id={id}");
                return Err(invalid(
                    &at,
                    device::DeviceError::DuplicateId((*id).clone()),
                ));
            }
        }
        let mut warnings = net.warnings;
        warnings.extend(unused_netdev_warnings(
            &net.user_netdevs,
            &netdevs,
            &devices,
        ));

        let display = if self.nographic {
            DisplayKind::None
        } else {
            self.display.unwrap_or(DisplayKind::Default)
        };
        let dump_acpi = match take(&mut self.dump_acpi) {
            None => None,
            Some((at, dir)) => match std::fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() => Some(dir),
                Ok(_) => return Err(invalid(&at, ConfigError::NotADirectory)),
                Err(e) => return Err(invalid(&at, FileError::Open(host::os_error_text(&e)))),
            },
        };
        if let Some(Some(v)) = &mut self.vnc {
            if let Some(id) = &v.tls_creds {
                let found = self.objects.iter().find_map(|(_, o)| match o {
                    ObjectSpec::TlsCreds(t) if &t.id == id => Some(t.clone()),
                    _ => None,
                });
                match found {
                    Some(t) => v.tls = Some(t),
                    None => {
                        let at = format!("-vnc tls-creds={id}");
                        return Err(invalid(&at, ObjectError::TlsCredsNotFound(id.clone())));
                    }
                }
            }
            if let Some(a) = &v.audiodev {
                if !self.audiodevs.contains(a) {
                    let at = format!("-vnc audiodev={a}");
                    return Err(invalid(&at, ObjectError::AudiodevNotFound(a.clone())));
                }
            }
        }
        let (name, process_name, debug_threads) = m.name;
        let mut cfg = VmConfig {
            name,
            process_name,
            debug_threads,
            uuid: self.uuid,
            memory: m.memory,
            memory_slots: m.memory_slots,
            maxmem: m.maxmem,
            dimm_backends: take(&mut m.dimm_backends)
                .into_iter()
                .map(|(_, b)| b)
                .collect(),
            dimms: dimms.into_iter().map(|(_, d)| d).collect(),
            smp: m.smp,
            cpu: self.cpu.unwrap_or_default(),
            machine: m.machine,
            boot: m.boot,
            boot_order: m.boot_order,
            vcpu_pin: m.vcpu_pin,
            serials: consoles.serials.into_iter().map(|(_, b)| b).collect(),
            chardevs: consoles.chardevs.into_iter().map(|(_, c)| c).collect(),
            monitors: consoles.monitors.into_iter().map(|(_, m)| m).collect(),
            vnc: match self.vnc {
                Some(v) => v,
                // QEMU without a GUI: VNC on localhost:0,to=99 unless a display was named.
                None if !self.nographic
                    && matches!(self.display, None | Some(DisplayKind::Default)) =>
                {
                    Some(crate::cli::display::default_vnc())
                }
                None => None,
            },
            display,
            nographic: self.nographic,
            vga,
            keymap: self.keymap.unwrap_or_else(|| "en-us".to_string()),
            drives,
            snapshot: self.snapshot,
            netdevs,
            devices,
            start_paused: self.start_paused,
            no_reboot: self.no_reboot,
            no_shutdown: self.no_shutdown,
            daemonize: self.daemonize,
            pidfile: self.pidfile,
            log_file: self.log_file,
            log_items: self.log_items,
            incoming: self.incoming,
            loadvm: self.loadvm,
            dump_acpi,
            sandbox: self.sandbox,
            runas: self.runas,
            chroot: self.chroot,
            rtc: m.rtc,
            msg_timestamp: self.msg_timestamp,
            vga_id: self.vga_id,
            serial_ids: self.serial_ids,
            warnings,
        };
        let exposed = crate::cli::exposure::exposure_warnings(&cfg);
        cfg.warnings.extend(exposed);
        Ok(cfg)
    }

    /// `-machine`/`-accel`, `-m`, `-smp`, `-boot`, `-name`, `-rtc`, `-vcpu-pin` and the
    /// boot files, with their defaults.
    fn machine_part(&mut self, host: &Host) -> Result<MachinePart, CliError> {
        let merged = take(&mut self.machine);
        let at = merged.at();
        let machine::ParsedMachine {
            machine,
            accel_given: machine_accel,
            memory_backend,
            usb,
        } = machine::parse_machine(merged.opts).map_err(|e| invalid(&at, e))?;
        if let Some(accel_at) = &self.accel {
            if machine_accel || self.enable_kvm {
                return Err(invalid(accel_at, MachineError::AccelConflict));
            }
        }
        let memory_given = self.memory.given();
        let spec = match take(&mut self.memory) {
            m if m.given() && machine.kind == machine::NONE_MACHINE => {
                return Err(invalid(&m.at(), MachineError::NoneMachineMemory));
            }
            m if m.given() => {
                let at = m.at();
                machine::parse_memory(m.opts, host).map_err(|e| invalid(&at, e))?
            }
            _ => machine::MemorySpec {
                size: 128 << 20,
                slots: 0,
                maxmem: 128 << 20,
            },
        };
        let mut memory = spec.size;
        // `memory-backend=ID`: the guest RAM is that memory backend (QEMU takes its size
        // when -m is absent, and refuses a mismatch). Every backend must be used.
        let mut machine = machine;
        let ram = &mut machine.ram;
        ram.prealloc = self.mem_prealloc;
        ram.mem_lock = self.mem_lock;
        let mut found = false;
        let mut dimm_backends = Vec::new();
        for (obj_at, obj) in &self.objects {
            let ObjectSpec::MemoryBackend(b) = obj else {
                continue;
            };
            if memory_backend.as_deref() != Some(b.id.as_str()) {
                dimm_backends.push((obj_at.clone(), b.clone()));
                continue;
            }
            if memory_given && b.size != memory {
                return Err(invalid(
                    &at,
                    ObjectError::BackendMismatch {
                        id: b.id.clone(),
                        backend: b.size,
                        memory,
                    },
                ));
            }
            memory = b.size;
            found = true;
            ram.source = b.source.clone();
            ram.share = b.share;
            ram.prealloc = b.prealloc.unwrap_or(ram.prealloc);
            ram.merge = b.merge.unwrap_or(ram.merge);
            machine.dump_guest_core = b.dump.unwrap_or(machine.dump_guest_core);
        }
        if let Some(id) = &memory_backend {
            if !found {
                return Err(invalid(&at, ObjectError::BackendNotFound(id.clone())));
            }
        }
        if let Some((path_at, path)) = take(&mut self.mem_path) {
            if memory_backend.is_some() {
                return Err(invalid(&path_at, ObjectError::MemPathWithBackend));
            }
            machine.ram.source = crate::config::RamSource::File(path);
        }
        let smp = match take(&mut self.smp) {
            m if m.given() => {
                let at = m.at();
                machine::parse_smp(m.opts, &machine.kind).map_err(|e| invalid(&at, e))?
            }
            _ => SmpConfig {
                cpus: 1,
                sockets: 1,
                cores: 1,
                threads: 1,
                maxcpus: 1,
            },
        };
        let boot_order = match take(&mut self.boot) {
            m if m.given() => {
                let at = m.at();
                machine::parse_boot(m.opts).map_err(|e| invalid(&at, e))?
            }
            _ => machine::default_boot(),
        };
        let name = match take(&mut self.name) {
            m if m.given() => {
                let at = m.at();
                general::parse_name(m.opts).map_err(|e| invalid(&at, e))?
            }
            _ => (None, None, false),
        };
        let rtc = match take(&mut self.rtc) {
            m if m.given() => {
                let at = m.at();
                general::parse_rtc(m.opts).map_err(|e| invalid(&at, e))?
            }
            _ => RtcConfig { base: RtcBase::Utc },
        };
        let vcpu_pin = match &self.vcpu_pin {
            None => VcpuPin::Auto,
            Some((at, arg)) => {
                machine::parse_vcpu_pin(arg, smp.maxcpus.max(smp.cpus), &host.allowed_cpus)
                    .map_err(|e| invalid(at, e))?
            }
        };
        let boot = self.boot_config(host)?;
        Ok(MachinePart {
            machine,
            memory,
            memory_slots: spec.slots,
            maxmem: spec.maxmem.max(memory),
            dimm_backends,
            smp,
            boot_order,
            name,
            rtc,
            vcpu_pin,
            boot,
            usb,
        })
    }

    /// Firmware or direct boot; errors name the boot option at fault.
    fn boot_config(&self, host: &Host) -> Result<BootConfig, CliError> {
        let path = |o: &Option<(String, std::path::PathBuf)>| o.as_ref().map(|(_, p)| p.clone());
        let files = BootFiles {
            bios: path(&self.bios),
            kernel: path(&self.kernel),
            initrd: path(&self.initrd),
            append: self.append.as_ref().map(|(_, a)| a.clone()),
        };
        machine::resolve_boot(&files, host).map_err(|(which, e)| {
            let at = |o: Option<&String>, written: &str| o.cloned().unwrap_or(written.to_string());
            let at = match which {
                // The default firmware was not named by the user: say which file it is.
                BootOption::Bios => at(
                    self.bios.as_ref().map(|(at, _)| at),
                    &format!("firmware {}", host.default_bios.display()),
                ),
                BootOption::Kernel => at(self.kernel.as_ref().map(|(at, _)| at), "-kernel"),
                BootOption::Initrd => at(self.initrd.as_ref().map(|(at, _)| at), "-initrd"),
                BootOption::Append => at(self.append.as_ref().map(|(at, _)| at), "-append"),
            };
            invalid(&at, e)
        })
    }

    /// Chardevs, serial ports (with `mon:` and QEMU's defaults) and monitors, and the rule
    /// that stdio has one user.
    fn consoles(&mut self) -> Result<Consoles, CliError> {
        let mut chardevs: Located<Chardev> = Vec::new();
        for (at, c) in take(&mut self.chardevs) {
            if chardevs.iter().any(|(_, o)| o.id == c.id) {
                return Err(invalid(&at, ChardevError::DuplicateId(c.id)));
            }
            chardevs.push((at, c));
        }
        let mut serials: Located<CharBackend> = Vec::new();
        let mut monitors = take(&mut self.monitors);
        for (at, l) in take(&mut self.serials) {
            let backend = match l {
                Legacy::None => continue,
                Legacy::Backend(b) => b,
                Legacy::Mon(CharBackend::Stdio) => {
                    monitors.push((at.clone(), readline(CharBackend::MuxStdio)));
                    CharBackend::MuxStdio
                }
                Legacy::Mon(b) => {
                    // QEMU's label for the mux chardev behind `-serial mon:...`.
                    let id = format!("serial{}", serials.len());
                    if chardevs.iter().any(|(_, c)| c.id == id) {
                        return Err(invalid(&at, ChardevError::DuplicateId(id)));
                    }
                    let mux = Chardev {
                        id: id.clone(),
                        backend: b,
                        mux: true,
                        signal: true,
                        logfile: None,
                    };
                    chardevs.push((at.clone(), mux));
                    monitors.push((at.clone(), readline(CharBackend::Named(id.clone()))));
                    CharBackend::Named(id)
                }
            };
            if serials.len() == 4 {
                return Err(invalid(&at, ConfigError::TooManySerials));
            }
            serials.push((at, backend));
        }
        self.default_consoles(&mut serials, &mut monitors)?;
        number_text_consoles(&mut chardevs, &mut monitors, &mut serials);
        for c in take(&mut self.extra_chardevs) {
            chardevs.push(("-netdev guestfwd=".into(), c));
        }

        let mut stdio_users: Located<CharBackend> = serials.clone();
        stdio_users.extend(
            monitors
                .iter()
                .filter(|(_, m)| m.backend != CharBackend::MuxStdio)
                .map(|(at, m)| (at.clone(), m.backend.clone())),
        );
        stdio_users.extend(
            chardevs
                .iter()
                .map(|(at, c)| (at.clone(), c.backend.clone())),
        );
        chardev::check_stdio(&stdio_users, self.daemonize).map_err(|(at, e)| invalid(&at, e))?;
        if self.display == Some(DisplayKind::Curses) && !self.nographic {
            if self.daemonize {
                return Err(invalid("-display curses", ConfigError::CursesDaemonize));
            }
            let on_stdio =
                |b: &CharBackend| matches!(b, CharBackend::Stdio | CharBackend::MuxStdio);
            if let Some((at, _)) = stdio_users.iter().find(|(_, b)| on_stdio(b)) {
                return Err(invalid(at, ConfigError::CursesStdio));
            }
            if let Some((at, _)) = monitors.iter().find(|(_, m)| on_stdio(&m.backend)) {
                return Err(invalid(at, ConfigError::CursesStdio));
            }
        }
        Ok(Consoles {
            serials,
            monitors,
            chardevs,
        })
    }

    /// QEMU's default serial port and monitor (vl.c `qemu_create_default_devices`).
    fn default_consoles(
        &self,
        serials: &mut Located<CharBackend>,
        monitors: &mut Located<MonitorConfig>,
    ) -> Result<(), CliError> {
        let default_serial = !self.serial_given && !self.nodefaults;
        let default_monitor = !self.monitor_given && !self.nodefaults;
        let here = || "-nographic".to_string();
        if self.nographic {
            if self.daemonize && (default_serial || default_monitor) {
                return Err(invalid("-nographic", ConfigError::NographicDaemonize));
            }
            if default_serial && default_monitor {
                serials.push((here(), CharBackend::MuxStdio));
                monitors.push((here(), readline(CharBackend::MuxStdio)));
            } else if default_serial {
                serials.push((here(), CharBackend::Stdio));
            } else if default_monitor {
                monitors.push((here(), readline(CharBackend::Stdio)));
            }
        } else {
            // Without -nographic QEMU puts them on text consoles of its display
            // (`vc:80Cx24C`), the monitor first: Ctrl+Alt+2 and Ctrl+Alt+3 on the VNC
            // display. So does `-display none`, where nobody can look at them.
            if default_monitor {
                monitors.push(("(default monitor)".into(), readline(chardev::default_vc())));
            }
            if default_serial {
                serials.push(("(default serial port)".into(), chardev::default_vc()));
            }
        }
        Ok(())
    }

    /// `-netdev`, `-nic`, `-net` (paired through their hubs) and QEMU's default network.
    fn networks(&mut self) -> Result<Networks, CliError> {
        let mut net = Networks {
            netdevs: Vec::new(),
            machine_nics: Vec::new(),
            user_netdevs: self.netdevs.iter().map(|(_, n)| n.id.clone()).collect(),
            warnings: Vec::new(),
        };
        for (at, nd) in take(&mut self.netdevs) {
            push_netdev(&mut net.netdevs, &at, nd)?;
        }
        for (at, nic) in take(&mut self.nics) {
            if let NicArg::Nic(nd, m) = nic {
                push_netdev(&mut net.netdevs, &at, *nd)?;
                net.machine_nics.push((at, m));
            }
        }
        let nets = take(&mut self.nets);
        let positions: Vec<(usize, NetArg)> = nets
            .iter()
            .enumerate()
            .map(|(i, (_, a))| (i, a.clone()))
            .collect();
        let legacy = netdev::pair_legacy(&positions).map_err(|(i, e)| invalid(&nets[i].0, e))?;
        let ats_of = |backend: bool| {
            nets.iter()
                .filter(move |(_, a)| matches!(a, NetArg::Backend { .. }) == backend)
                .filter(|(_, a)| !matches!(a, NetArg::None))
                .map(|(at, _)| at.clone())
        };
        for (nd, at) in legacy.netdevs.into_iter().zip(ats_of(true)) {
            push_netdev(&mut net.netdevs, &at, nd)?;
        }
        net.machine_nics.extend(ats_of(false).zip(legacy.nics));
        net.warnings.extend(legacy.warnings);
        if !self.net_given && !self.nodefaults {
            let (nd, nic) = netdev::default_network();
            push_netdev(&mut net.netdevs, "(default network)", nd)?;
            net.machine_nics.push(("(default network)".into(), nic));
        }
        Ok(net)
    }

    /// `-drive`-family drives in order, QEMU's default CD-ROM, then `-blockdev` drives.
    fn assign_drives(&mut self) -> Result<Drives, CliError> {
        let located = take(&mut self.drives);
        let specs: Vec<DriveSpec> = located.iter().map(|(_, s)| s.clone()).collect();
        let mut drives =
            drive::assign(&specs, self.snapshot).map_err(|(i, e)| invalid(&located[i].0, e))?;
        let virtio = drives
            .iter()
            .zip(&located)
            .filter(|(d, _)| d.interface == DriveInterface::Virtio)
            .map(|(d, (at, _))| (at.clone(), d.id.clone()))
            .collect();
        let cd_slot_free = !drives
            .iter()
            .any(|d| d.interface == DriveInterface::Ide && d.index == Some(2));
        if !self.nodefaults && cd_slot_free && !self.ide_device {
            drives.push(drive::default_cdrom());
        }
        let taken: Vec<String> = drives.iter().map(|d| d.id.clone()).collect();
        let blockdevs = take(&mut self.blockdevs);
        let nodes: Vec<BlockNode> = blockdevs.iter().map(|(_, n)| n.clone()).collect();
        let block_drives = drive::resolve_blockdevs(&nodes, &taken)
            .map_err(|(i, e)| invalid(&blockdevs[i].0, e))?;
        drives.extend(block_drives);
        Ok(Drives { drives, virtio })
    }

    /// Realize devices in QEMU's creation order: machine NICs, the board's USB controller
    /// (`usb`), the `-usbdevice`s, `-device`s, then the virtio-blk-pci of each
    /// `if=virtio` drive.
    fn realize_devices(
        &mut self,
        usb: bool,
        machine_nics: Located<MachineNic>,
        virtio: Located<String>,
        mut set: DeviceSet,
        drives: &mut [DriveConfig],
        netdevs: &[NetdevConfig],
    ) -> Result<Located<DeviceConfig>, CliError> {
        let mut ats: Vec<String> = Vec::new();
        for (at, nic) in machine_nics {
            let addr = match &nic.addr {
                Some(a) => Some(device::parse_pci_addr(a).map_err(|e| invalid(&at, e))?),
                None => None,
            };
            let spec = DeviceSpec {
                id: None,
                bus: None,
                addr,
                kind: SpecKind::Nic {
                    model: nic.model,
                    netdev: nic.netdev,
                    mac: nic.mac,
                    romfile: None,
                    bootindex: None,
                    queues: Default::default(),
                },
            };
            set.add(spec, drives, netdevs)
                .map_err(|e| invalid(&at, e))?;
            ats.push(at);
        }
        if usb {
            let spec = DeviceSpec {
                id: None,
                bus: None,
                addr: Some((1, 2)),
                kind: SpecKind::Uhci,
            };
            set.add(spec, drives, netdevs)
                .map_err(|e| invalid("-machine usb=on", e))?;
            ats.push("-machine usb=on".into());
        }
        for (at, kind) in take(&mut self.usbdevices) {
            let spec = DeviceSpec {
                id: None,
                bus: None,
                addr: None,
                kind: SpecKind::UsbHid { kind, port: None },
            };
            set.add(spec, drives, netdevs)
                .map_err(|e| invalid(&at, e))?;
            ats.push(at);
        }
        for (at, mut opts) in take(&mut self.devices) {
            let driver = device::canonical_driver(opts.peek("driver").unwrap_or_default());
            for (_, d, prop, value) in &self.globals {
                if Some(d.as_str()) == driver {
                    opts.prepend(prop, value);
                }
            }
            let spec = device::parse_device(opts).map_err(|e| invalid(&at, e))?;
            let before = set.devices.len();
            set.add(spec, drives, netdevs)
                .map_err(|e| invalid(&at, e))?;
            // `ide-cd`/`ide-hd` attach their drive to the board and add no device.
            if set.devices.len() > before {
                ats.push(at);
            }
        }
        for (at, id) in virtio {
            set.add_virtio_drive(&id, drives)
                .map_err(|e| invalid(&at, e))?;
            ats.push(at);
        }
        Ok(ats.into_iter().zip(set.devices).collect())
    }
}

/// Add a backend, refusing a second one with the same id.
fn push_netdev(
    netdevs: &mut Located<NetdevConfig>,
    at: &str,
    nd: NetdevConfig,
) -> Result<(), CliError> {
    if netdevs.iter().any(|(_, o)| o.id == nd.id) {
        return Err(invalid(at, NetdevError::DuplicateId(nd.id)));
    }
    netdevs.push((at.to_string(), nd));
    Ok(())
}

/// Every `chardev:ID`/`chardev=ID` names an existing chardev, each used once unless mux.
fn check_chardev_users(
    consoles: &Consoles,
    netdevs: &Located<NetdevConfig>,
    devices: &Located<DeviceConfig>,
) -> Result<(), CliError> {
    let named = |at: &str, b: &CharBackend| match b {
        CharBackend::Named(id) => Some(Use {
            at: at.to_string(),
            id: id.clone(),
        }),
        _ => None,
    };
    let mut uses: Vec<Use> = Vec::new();
    uses.extend(consoles.serials.iter().filter_map(|(at, b)| named(at, b)));
    uses.extend(
        consoles
            .monitors
            .iter()
            .filter_map(|(at, m)| named(at, &m.backend)),
    );
    for (at, nd) in netdevs {
        if let NetdevKind::User(u) = &nd.kind {
            uses.extend(u.guestfwd.iter().map(|(_, _, id)| Use {
                at: at.clone(),
                id: id.clone(),
            }));
        }
    }
    for (at, d) in devices {
        if let DeviceKind::VirtConsole { chardev, .. } = &d.kind {
            uses.push(Use {
                at: at.clone(),
                id: chardev.clone(),
            });
        }
    }
    let chardevs: Vec<Chardev> = consoles.chardevs.iter().map(|(_, c)| c.clone()).collect();
    chardev::check_users(&chardevs, &uses).map_err(|(at, e)| invalid(&at, e))
}

/// QEMU's "netdev X has no peer" for `-netdev` backends no NIC uses (hubports excepted:
/// the hub is their peer).
fn unused_netdev_warnings(
    user_netdevs: &[String],
    netdevs: &[NetdevConfig],
    devices: &[DeviceConfig],
) -> Vec<String> {
    user_netdevs
        .iter()
        .filter(|id| {
            let hubport = netdevs
                .iter()
                .any(|n| n.id == **id && matches!(n.kind, NetdevKind::Hubport { .. }));
            let used = devices
                .iter()
                .any(|d| matches!(&d.kind, DeviceKind::Nic { netdev: Some(n), .. } if n == *id));
            !used && !hubport
        })
        .map(|id| format!("netdev {id} has no peer"))
        .collect()
}

/// Give each text console its place, in QEMU's creation order: chardevs (`-chardev`,
/// and the ones behind `mon:`), then monitors, then serial ports. Ctrl+Alt+2 is the first
/// (Ctrl+Alt+1 the guest's screen).
fn number_text_consoles(
    chardevs: &mut Located<Chardev>,
    monitors: &mut Located<MonitorConfig>,
    serials: &mut Located<CharBackend>,
) {
    let backends = chardevs
        .iter_mut()
        .map(|(_, c)| &mut c.backend)
        .chain(monitors.iter_mut().map(|(_, m)| &mut m.backend))
        .chain(serials.iter_mut().map(|(_, b)| b));
    let vcs = backends.filter_map(|b| match b {
        CharBackend::Vc(v) => Some(v),
        _ => None,
    });
    for (i, v) in vcs.enumerate() {
        v.index = i;
    }
}

fn readline(backend: CharBackend) -> MonitorConfig {
    MonitorConfig {
        mode: MonitorMode::Readline,
        backend,
        pretty: false,
    }
}
