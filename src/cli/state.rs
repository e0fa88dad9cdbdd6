//! Collecting the command line: one [`State`] accumulates what each option said, in order,
//! handing each value to the module that owns it; [`State::finish`] (in `finish`) then turns
//! the whole into a [`VmConfig`].

mod finish;

use std::path::PathBuf;

use super::chardev::{self, Legacy};
use super::device::{self, SpecKind};
use super::display::{self, DisplayArg, VgaArg};
use super::drive::{self, BlockNode, DriveSpec};
use super::general;
use super::help;
use super::machine;
use super::netdev::{self, NetArg, NicArg};
use super::object::{self, ObjectSpec};
use super::options::{is_help, Opts};
use super::table::Opt;
use super::{invalid, ChardevError, CliError};
use crate::config::{
    CharBackend, Chardev, CpuConfig, DisplayKind, MonitorConfig, MonitorMode, NetdevConfig,
    VgaKind, VncConfig,
};

/// Repeated options QEMU merges into one: later keys win.
#[derive(Debug, Clone, Default)]
struct Merged {
    at: Vec<String>,
    opts: Opts,
}

impl Merged {
    fn add(&mut self, at: &str, opts: Opts) {
        self.at.push(at.to_string());
        self.opts.merge(opts);
    }

    fn given(&self) -> bool {
        !self.at.is_empty()
    }

    fn at(&self) -> String {
        self.at.join(" ")
    }
}

/// Everything read so far, in the order given.
#[derive(Debug, Default)]
pub(super) struct State {
    memory: Merged,
    smp: Merged,
    machine: Merged,
    boot: Merged,
    name: Merged,
    rtc: Merged,
    accel: Option<String>,
    enable_kvm: bool,
    cpu: Option<CpuConfig>,
    uuid: Option<String>,
    keymap: Option<String>,
    vcpu_pin: Option<(String, String)>,
    bios: Option<(String, PathBuf)>,
    kernel: Option<(String, PathBuf)>,
    initrd: Option<(String, PathBuf)>,
    append: Option<(String, String)>,
    drives: Vec<(String, DriveSpec)>,
    blockdevs: Vec<(String, BlockNode)>,
    snapshot: bool,
    /// `-device`s the machine does not fold into the board, as written (parsed again once
    /// every `-global` is known).
    devices: Vec<(String, Opts)>,
    netdevs: Vec<(String, NetdevConfig)>,
    nics: Vec<(String, NicArg)>,
    nets: Vec<(String, NetArg)>,
    net_given: bool,
    chardevs: Vec<(String, Chardev)>,
    /// Chardevs made for `guestfwd=...-BACKEND`, with the netdev option that made them.
    extra_chardevs: Vec<Chardev>,
    serials: Vec<(String, Legacy)>,
    serial_given: bool,
    /// -monitor/-qmp/-mon given, or a `mon:` serial: no default monitor.
    monitor_given: bool,
    monitors: Vec<(String, MonitorConfig)>,
    nographic: bool,
    display: Option<DisplayKind>,
    vnc: Option<Option<VncConfig>>,
    vga: Option<VgaKind>,
    nodefaults: bool,
    start_paused: bool,
    no_reboot: bool,
    no_shutdown: bool,
    daemonize: bool,
    pidfile: Option<PathBuf>,
    log_file: Option<PathBuf>,
    log_items: Vec<String>,
    incoming: Option<String>,
    pub(super) loadvm: Option<String>,
    dump_acpi: Option<(String, PathBuf)>,
    objects: Vec<(String, ObjectSpec)>,
    /// `-device pc-dimm,...` as option strings (plugged when the machine starts, on the
    /// same path `device_add` takes).
    dimms: Vec<(String, String)>,
    /// `-audiodev` ids.
    audiodevs: Vec<String>,
    /// `-global DRIVER.PROP=VALUE`: (option as written, driver, property, value).
    globals: Vec<(String, String, String, String)>,
    /// `-usbdevice NAME`: (option as written, the device).
    usbdevices: Vec<(String, devices::usb::hid::HidKind)>,
    msg_timestamp: bool,
    /// A `-device VGA` was given.
    vga_device: bool,
    /// Its `id=`.
    vga_id: Option<String>,
    /// `id=` of the `-device isa-serial`s, by COM index.
    serial_ids: Vec<Option<String>>,
    /// A `-device ide-cd|ide-hd` was given: no default CD-ROM.
    ide_device: bool,
    sandbox: actors::sandbox::Policy,
    runas: Option<super::sandbox::RunAs>,
    chroot: Option<PathBuf>,
    /// `-mem-path` (as written, the path).
    mem_path: Option<(String, PathBuf)>,
    mem_prealloc: bool,
    /// `-overcommit mem-lock=on`.
    mem_lock: bool,
}

impl State {
    /// A word that is not an option: QEMU takes it as the disk image for IDE index 0.
    pub(super) fn image(&mut self, word: &str) {
        self.drives
            .push((word.to_string(), drive::hd_spec(word, 0)));
    }

    /// Take one option. `Ok(Some(text))` asks for `text` to be printed instead of a run.
    pub(super) fn option(
        &mut self,
        opt: Opt,
        at: &str,
        arg: &str,
    ) -> Result<Option<String>, CliError> {
        // QEMU 7.2 takes a JSON object for -device and -blockdev (libvirt writes them so).
        let json = matches!(
            opt,
            Opt::Device | Opt::Blockdev | Opt::Object | Opt::Audiodev
        ) && arg.trim_start().starts_with('{');
        let opts = |implied: Option<&str>| {
            if json {
                Opts::from_json(arg)
            } else {
                Opts::parse(arg, implied)
            }
            .map_err(|e| invalid(at, e))
        };
        match opt {
            Opt::Help => return Ok(Some(help::help())),
            Opt::Version => return Ok(Some(help::version())),
            // QEMU: `-usb` is `-machine usb=on`; `-usbdevice` turns USB on too.
            Opt::Usb => self.machine.add(at, usb_on()),
            Opt::UsbDevice => {
                use devices::usb::hid::HidKind;
                let kind = match arg {
                    "tablet" => HidKind::Tablet,
                    "mouse" => HidKind::Mouse,
                    "keyboard" => HidKind::Keyboard,
                    other => return Err(invalid(at, device::DeviceError::UsbDevice(other.into()))),
                };
                self.machine.add(at, usb_on());
                self.usbdevices.push((at.to_string(), kind));
            }
            Opt::Machine => {
                let o = opts(Some("type"))?;
                if o.help_requested() {
                    return Ok(Some(machine::machine_help()));
                }
                self.machine.add(at, o);
            }
            Opt::Accel => {
                let o = opts(Some("accel"))?;
                if o.help_requested() {
                    return Ok(Some(machine::accel_help()));
                }
                machine::parse_accel(o).map_err(|e| invalid(at, e))?;
                self.accel = Some(at.to_string());
            }
            Opt::EnableKvm => self.enable_kvm = true,
            Opt::Cpu => match machine::parse_cpu(arg).map_err(|e| invalid(at, e))? {
                None => return Ok(Some(machine::cpu_help())),
                Some(cpu) => self.cpu = Some(cpu),
            },
            Opt::Smp => self.smp.add(at, opts(Some("cpus"))?),
            Opt::Memory => self.memory.add(at, opts(Some("size"))?),
            Opt::Name => self.name.add(at, opts(Some("guest"))?),
            Opt::Rtc => self.rtc.add(at, opts(None)?),
            Opt::Overcommit => {
                if let Some(lock) =
                    general::parse_overcommit(opts(None)?).map_err(|e| invalid(at, e))?
                {
                    self.mem_lock = lock;
                }
            }
            Opt::MemPath => self.mem_path = Some((at.to_string(), PathBuf::from(arg))),
            Opt::MemPrealloc => self.mem_prealloc = true,
            Opt::Boot => self.boot.add(at, opts(Some("order"))?),
            Opt::Uuid => {
                self.uuid = Some(general::parse_uuid(arg).map_err(|e| invalid(at, e))?);
            }
            Opt::Keymap => match display::parse_keymap(arg).map_err(|e| invalid(at, e))? {
                None => return Ok(Some(display::keymap_help())),
                Some(k) => self.keymap = Some(k),
            },
            Opt::Snapshot => self.snapshot = true,
            Opt::Nodefaults => self.nodefaults = true,
            // QEMU: do not read its configuration files. troupe reads none at all.
            Opt::NoUserConfig => {}
            Opt::Drive => {
                let o = opts(None)?;
                if o.help_requested() {
                    return Ok(Some(drive::drive_help()));
                }
                let spec = drive::parse_drive(o).map_err(|e| invalid(at, e))?;
                self.drives.push((at.to_string(), spec));
            }
            Opt::Hd(index) => self
                .drives
                .push((at.to_string(), drive::hd_spec(arg, index))),
            Opt::Cdrom => self.drives.push((at.to_string(), drive::cdrom_spec(arg))),
            Opt::Blockdev => {
                let node = drive::parse_blockdev(opts(None)?).map_err(|e| invalid(at, e))?;
                self.blockdevs.push((at.to_string(), node));
            }
            Opt::Device => {
                let o = opts(Some("driver"))?;
                match o.peek("driver") {
                    Some(d) if is_help(d) => return Ok(Some(device::device_help())),
                    Some(d) if o.help_requested() => {
                        return device::device_props_help(d)
                            .map(Some)
                            .map_err(|e| invalid(at, e));
                    }
                    _ => {}
                }
                if o.peek("driver") == Some("pc-dimm") {
                    self.dimms.push((at.to_string(), option_string(arg)));
                    return Ok(None);
                }
                let spec = device::parse_device(o.clone()).map_err(|e| invalid(at, e))?;
                // The board's own devices written as -device (libvirt writes them so) are
                // folded into the machine, and turn off the matching QEMU default.
                match spec.kind {
                    SpecKind::IsaSerial { chardev, index } => {
                        let next = self.serials.len() as u32;
                        match index {
                            Some(i) if i < next => {
                                return Err(invalid(at, device::DeviceError::SerialIndexTaken(i)))
                            }
                            Some(i) if i > next => {
                                return Err(invalid(at, device::DeviceError::SerialGap(i, next)))
                            }
                            _ => {}
                        }
                        let backend = match chardev {
                            Some(id) => CharBackend::Named(id),
                            None => CharBackend::Null,
                        };
                        self.serials
                            .push((at.to_string(), Legacy::Backend(backend)));
                        self.serial_ids.resize(next as usize, None);
                        self.serial_ids.push(spec.id);
                        self.serial_given = true;
                    }
                    SpecKind::Vga => {
                        if self.vga_device {
                            return Err(invalid(at, display::DisplayError::VgaTwice));
                        }
                        self.vga_device = true;
                        self.vga = Some(VgaKind::Std);
                        self.vga_id = spec.id;
                    }
                    SpecKind::IdeDrive { .. } => {
                        self.ide_device = true;
                        self.devices.push((at.to_string(), o));
                    }
                    _ => self.devices.push((at.to_string(), o)),
                }
            }
            Opt::Vga => match display::parse_vga(arg).map_err(|e| invalid(at, e))? {
                VgaArg::Help => return Ok(Some(display::vga_help())),
                VgaArg::Kind(k) => self.vga = Some(k),
            },
            Opt::Netdev => {
                let o = opts(Some("type"))?;
                if o.help_requested() {
                    return Ok(Some(netdev::netdev_help()));
                }
                let nd = netdev::parse_netdev(o, &mut self.extra_chardevs)
                    .map_err(|e| invalid(at, e))?;
                self.netdevs.push((at.to_string(), nd));
                self.net_given = true;
            }
            Opt::Nic | Opt::Net => {
                let o = opts(Some("type"))?;
                if o.peek("model").is_some_and(is_help) {
                    return Ok(Some(netdev::nic_model_help()));
                }
                if o.help_requested() {
                    return Ok(Some(netdev::netdev_help()));
                }
                if opt == Opt::Nic {
                    let n = self.nics.len();
                    let nic = netdev::parse_nic(o, n, &mut self.extra_chardevs)
                        .map_err(|e| invalid(at, e))?;
                    self.nics.push((at.to_string(), nic));
                } else {
                    let net = netdev::parse_net(o, &mut self.extra_chardevs)
                        .map_err(|e| invalid(at, e))?;
                    self.nets.push((at.to_string(), net));
                }
                self.net_given = true;
            }
            Opt::Chardev => {
                let o = opts(Some("backend"))?;
                if o.help_requested() {
                    return Ok(Some(chardev::chardev_help()));
                }
                let c = chardev::parse_chardev(o).map_err(|e| invalid(at, e))?;
                self.chardevs.push((at.to_string(), c));
            }
            Opt::Serial => {
                if is_help(arg) {
                    return Ok(Some(chardev::chardev_help()));
                }
                let l = chardev::parse_legacy(arg).map_err(|e| invalid(at, e))?;
                if matches!(l, Legacy::Mon(_)) {
                    self.monitor_given = true;
                }
                self.serials.push((at.to_string(), l));
                self.serial_given = true;
            }
            Opt::Monitor | Opt::Qmp | Opt::QmpPretty => {
                if is_help(arg) {
                    return Ok(Some(chardev::chardev_help()));
                }
                self.monitor_given = true;
                let (mode, pretty) = match opt {
                    Opt::Monitor => (MonitorMode::Readline, false),
                    Opt::Qmp => (MonitorMode::Control, false),
                    _ => (MonitorMode::Control, true),
                };
                match chardev::parse_legacy(arg).map_err(|e| invalid(at, e))? {
                    Legacy::None => {}
                    Legacy::Mon(_) => return Err(invalid(at, ChardevError::MonPrefix)),
                    Legacy::Backend(backend) => {
                        self.monitors.push((
                            at.to_string(),
                            MonitorConfig {
                                mode,
                                backend,
                                pretty,
                            },
                        ));
                    }
                }
            }
            Opt::Mon => {
                let m = chardev::parse_mon(opts(Some("chardev"))?).map_err(|e| invalid(at, e))?;
                self.monitors.push((at.to_string(), m));
                self.monitor_given = true;
            }
            Opt::Nographic => self.nographic = true,
            Opt::Curses => self.display = Some(DisplayKind::Curses),
            Opt::Display => match display::parse_display(arg).map_err(|e| invalid(at, e))? {
                DisplayArg::Help => return Ok(Some(display::display_help())),
                DisplayArg::None => self.display = Some(DisplayKind::None),
                DisplayArg::Default => self.display = Some(DisplayKind::Default),
                DisplayArg::Curses => self.display = Some(DisplayKind::Curses),
                DisplayArg::Vnc(v) => {
                    self.display = Some(DisplayKind::Vnc);
                    self.vnc = Some(v);
                }
            },
            Opt::Vnc => {
                let new = display::parse_vnc(arg).map_err(|e| invalid(at, e))?;
                // QEMU starts a server for each -vnc: a second one on the same address
                // cannot bind, and troupe serves only one display.
                if let (Some(Some(old)), Some(new)) = (&self.vnc, &new) {
                    return Err(invalid(
                        at,
                        if old.listen == new.listen {
                            display::DisplayError::VncAddressInUse
                        } else {
                            display::DisplayError::VncSecond(format!(
                                "{}:{}",
                                old.listen.host, old.display
                            ))
                        },
                    ));
                }
                self.vnc = Some(new);
            }
            Opt::Bios => self.bios = Some((at.to_string(), PathBuf::from(arg))),
            Opt::Kernel => self.kernel = Some((at.to_string(), PathBuf::from(arg))),
            Opt::Initrd => self.initrd = Some((at.to_string(), PathBuf::from(arg))),
            Opt::Append => self.append = Some((at.to_string(), arg.to_string())),
            Opt::StartPaused => self.start_paused = true,
            Opt::NoReboot => self.no_reboot = true,
            Opt::NoShutdown => self.no_shutdown = true,
            Opt::Daemonize => self.daemonize = true,
            Opt::Pidfile => self.pidfile = Some(PathBuf::from(arg)),
            Opt::LogFile => self.log_file = Some(PathBuf::from(arg)),
            Opt::LogItems => match general::parse_log_items(arg).map_err(|e| invalid(at, e))? {
                None => return Ok(Some(general::log_help())),
                Some(items) => {
                    for item in items {
                        if !self.log_items.contains(&item) {
                            self.log_items.push(item);
                        }
                    }
                }
            },
            Opt::Incoming => {
                self.incoming = Some(general::parse_incoming(arg).map_err(|e| invalid(at, e))?);
            }
            Opt::Loadvm => self.loadvm = Some(arg.to_string()),
            Opt::VcpuPin => self.vcpu_pin = Some((at.to_string(), arg.to_string())),
            Opt::DumpAcpi => self.dump_acpi = Some((at.to_string(), PathBuf::from(arg))),
            Opt::Object => {
                let o = opts(Some("qom-type"))?;
                if o.help_requested() {
                    return Ok(Some(object::object_help()));
                }
                let spec = object::parse_object(o).map_err(|e| invalid(at, e))?;
                if self.objects.iter().any(|(_, s)| s.id() == spec.id()) {
                    return Err(invalid(
                        at,
                        object::ObjectError::DuplicateId(spec.id().into()),
                    ));
                }
                self.objects.push((at.to_string(), spec));
            }
            Opt::Audiodev => {
                match object::parse_audiodev(opts(Some("driver"))?).map_err(|e| invalid(at, e))? {
                    None => return Ok(Some(object::audiodev_help())),
                    Some(id) => {
                        if self.audiodevs.contains(&id) {
                            return Err(invalid(at, object::ObjectError::DuplicateId(id)));
                        }
                        self.audiodevs.push(id)
                    }
                }
            }
            Opt::Global => {
                let (driver, prop, value) =
                    device::parse_global(arg).map_err(|e| invalid(at, e))?;
                self.globals.push((at.to_string(), driver, prop, value));
            }
            Opt::Msg => {
                self.msg_timestamp = general::parse_msg(opts(None)?).map_err(|e| invalid(at, e))?
            }
            Opt::Sandbox => {
                self.sandbox = super::sandbox::parse_sandbox(arg).map_err(|e| invalid(at, e))?
            }
            Opt::RunAs => {
                self.runas = Some(super::sandbox::parse_runas(arg).map_err(|e| invalid(at, e))?)
            }
            Opt::Chroot => {
                self.chroot = Some(super::sandbox::parse_chroot(arg).map_err(|e| invalid(at, e))?)
            }
            Opt::RunWith => {
                let (chroot, user) =
                    super::sandbox::parse_run_with(arg).map_err(|e| invalid(at, e))?;
                self.chroot = chroot.or(self.chroot.take());
                self.runas = user.or(self.runas.take());
            }
        }
        Ok(None)
    }
}

/// The machine option `-usb` and `-usbdevice` stand for.
fn usb_on() -> Opts {
    Opts::parse("usb=on", None).unwrap_or_default()
}

/// An option argument as the `key=value,...` string (the JSON form `{"driver": ...}` turned
/// into it: strings, numbers and booleans as on/off, commas doubled).
fn option_string(arg: &str) -> String {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(arg) else {
        return arg.to_string();
    };
    let val = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.replace(',', ",,"),
        serde_json::Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
        other => other.to_string(),
    };
    let mut out = m.get("driver").map(val).unwrap_or_default();
    for (k, v) in m.iter().filter(|(k, _)| *k != "driver") {
        out.push_str(&format!(",{k}={}", val(v)));
    }
    out
}
