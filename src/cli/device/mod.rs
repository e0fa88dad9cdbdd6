//! Devices: `-device DRIVER,prop=value,...`, `-device help`, `-device DRIVER,help`, and the
//! machine-created NICs and virtio disks that become devices too.
//!
//! [`parse_device`] reads one `-device` into a [`DeviceSpec`] (the driver's own properties
//! plus `id=`, `bus=`, `addr=`). [`DeviceSet::add`] then realizes specs in QEMU's creation
//! order, which is what makes the result match QEMU: each PCI device gets `addr=` or the
//! first free slot (0 host bridge, 1 PIIX, 2 VGA are taken), each NIC its `mac=` or the next
//! free `52:54:00:12:34:XX`, and every reference is checked (`drive=` must name an unused
//! `if=none` drive, `netdev=` an unused backend, a `virtconsole` needs a virtio-serial bus
//! created before it), as are duplicate ids and bootindexes.

mod drivers;
mod set;

use thiserror::Error;

use super::netdev::{parse_mac, NetdevError};
use super::options::{Opts, OptsError};
use crate::config::NicModel;
use drivers::find_driver;

pub use drivers::{creatable, device_help, device_props_help};
pub use set::DeviceSet;

/// troupe's VGA memory in MiB (`vgamem_mb`; devices' `VRAM_SIZE`).
pub const VGA_MEM_MB: u64 = (devices::vga::VRAM_SIZE >> 20) as u64;

/// The highest `num-queues` virtio-blk accepts (VIRTIO_QUEUE_MAX).
const MAX_QUEUES: u64 = 1024;

/// Ways a device can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceError {
    /// A malformed option string or value.
    #[error(transparent)]
    Opts(#[from] OptsError),
    /// A driver name troupe doesn't know.
    #[error("device '{0}' is unknown or not supported by troupe (see -device help)")]
    Unknown(String),
    /// A driver troupe parses but cannot start yet.
    #[error("device '{0}' is not available yet")]
    NotAvailable(&'static str),
    /// `mac=`.
    #[error(transparent)]
    Mac(#[from] NetdevError),
    /// `bus=` naming no bus.
    #[error("bus '{0}' not found")]
    Bus(String),
    /// `addr=` that isn't one.
    #[error("invalid PCI address '{0}' (expected SLOT[.FN] in hex: slot 0-1f, function 0-7)")]
    Addr(String),
    /// `addr=` already taken.
    #[error("PCI slot {slot:#04x} function {func} is not available, in use by {by}")]
    AddrTaken {
        /// Slot.
        slot: u8,
        /// Function.
        func: u8,
        /// Who has it.
        by: String,
    },
    /// All 32 slots are used.
    #[error("no free PCI slot left on bus pci.0")]
    PciFull,
    /// `drive=` naming nothing.
    #[error("drive '{0}' not found")]
    DriveNotFound(String),
    /// `drive=` naming a drive its `if=` already attaches.
    #[error("drive '{0}' is attached by if={1}; use if=none to attach it with -device")]
    DriveAttached(String, &'static str),
    /// `drive=` naming a drive another device uses.
    #[error("drive '{0}' is already in use by another device")]
    DriveInUse(String),
    /// `netdev=` naming nothing.
    #[error("netdev '{0}' not found")]
    NetdevNotFound(String),
    /// `netdev=` naming a backend another NIC uses.
    #[error("netdev '{0}' is already in use by another NIC")]
    NetdevInUse(String),
    /// A virtconsole without a controller.
    #[error("no virtio-serial bus for virtconsole (add -device virtio-serial-pci before it)")]
    NoSerialBus,
    /// Two devices with one bootindex.
    #[error("bootindex {0} is already used by another device")]
    BootindexTwice(u32),
    /// `unit=` on an IDE device without `bus=`.
    #[error("unit= needs bus=ide.0 or bus=ide.1")]
    UnitWithoutBus,
    /// `vgamem_mb=` other than troupe's.
    #[error("vgamem_mb={0} is not supported by troupe (its VGA has 16 MiB)")]
    VgaMem(u64),
    /// `VGA` elsewhere than slot 2.
    #[error("troupe's VGA sits at PCI slot 2 (addr=0x2)")]
    VgaSlot,
    /// An IDE `drive=` that is not an `if=none` drive.
    #[error("IDE drive index {0} is already in use")]
    IdeIndexTaken(u32),
    /// No free IDE index.
    #[error("no free IDE unit: the PIIX controller has 4 (ide.0 and ide.1, units 0 and 1)")]
    IdeFull,
    /// `ide-hd` on a read-only drive.
    #[error("drive '{0}' is read-only: an IDE hard disk cannot be (use ide-cd or virtio-blk-pci)")]
    IdeReadonly(String),
    /// A second COM port at one index, or past COM4.
    #[error("serial port index {0} is already in use")]
    SerialIndexTaken(u32),
    /// `-global` that is not `DRIVER.PROP=VALUE`.
    #[error("invalid format (expected DRIVER.PROP=VALUE)")]
    GlobalSyntax(String),
    /// `-global` for a driver it cannot reach.
    #[error("-global for driver '{0}' is not supported by troupe (only -device drivers other than isa-serial, ide-cd, ide-hd)")]
    GlobalDriver(String),
    /// `-global` naming a property the driver lacks.
    #[error("driver '{driver}' has no property '{prop}' (see -device {driver},help)")]
    GlobalProperty {
        /// The driver.
        driver: String,
        /// The property.
        prop: String,
    },
    /// An `isa-serial` index past the next free COM port.
    #[error("serial port index {0}: index {1} must be created first")]
    SerialGap(u32, u32),
    /// An option a device added at run time cannot honour.
    #[error("{0} is not supported by troupe for a device added at run time")]
    NotWhenHot(&'static str),
    /// A board device given to `device_add`.
    #[error("device '{0}' is part of the board and cannot be hot-plugged")]
    NotHotpluggable(&'static str),
    /// Two devices with one id.
    #[error("duplicate device id '{0}'")]
    DuplicateId(String),
    /// isa-debug-exit beyond port 0xffff.
    #[error("iobase {iobase:#x} + iosize {iosize:#x} goes past the last I/O port 0xffff")]
    IoRange {
        /// iobase.
        iobase: u64,
        /// iosize.
        iosize: u64,
    },
    /// A USB device with no controller to plug into.
    #[error("No 'usb-bus' bus found for device '{0}'")]
    NoUsbBus(&'static str),
    /// `port=` naming no free root port.
    #[error("usb port {port} (bus {bus}) not found (in use?)")]
    UsbPort {
        /// As written.
        port: String,
        /// The controller's bus.
        bus: String,
    },
    /// Both root ports are taken.
    #[error("no free usb port on bus {0} (troupe's UHCI controller has 2 ports and no hub)")]
    UsbFull(String),
    /// A second USB controller.
    #[error("troupe has one USB controller (piix3-usb-uhci); a second one is not supported")]
    SecondUhci,
    /// `-usbdevice` naming a device troupe lacks.
    #[error("could not add USB device '{0}' (troupe has tablet, mouse, keyboard)")]
    UsbDevice(String),
    /// Two isa-debug-exit devices on the same ports.
    #[error("I/O ports {first:#x}-{last:#x} overlap another isa-debug-exit")]
    IoOverlap {
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
}

/// One `-device` as written, before slots, MACs and references are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// `id=`.
    pub id: Option<String>,
    /// `bus=`.
    pub bus: Option<String>,
    /// `addr=` (PCI devices only).
    pub addr: Option<(u8, u8)>,
    /// The driver and its properties.
    pub kind: SpecKind,
}

/// Driver-specific properties as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecKind {
    /// `isa-debug-exit`.
    IsaDebugExit {
        /// `iobase=`.
        iobase: u16,
        /// `iosize=`.
        iosize: u16,
    },
    /// `virtio-blk-pci`.
    VirtioBlk {
        /// `drive=`.
        drive: String,
        /// `num-queues=`.
        num_queues: Option<u16>,
        /// `serial=`.
        serial: Option<String>,
        /// `bootindex=`.
        bootindex: Option<u32>,
    },
    /// `virtio-net-pci`, `e1000`.
    Nic {
        /// Which.
        model: NicModel,
        /// `netdev=`.
        netdev: Option<String>,
        /// `mac=`.
        mac: Option<[u8; 6]>,
        /// `romfile=`.
        romfile: Option<String>,
        /// `bootindex=`.
        bootindex: Option<u32>,
        /// `mq=`, `vectors=` (virtio-net-pci).
        queues: crate::config::NicQueues,
    },
    /// `virtio-rng-pci`.
    VirtioRng,
    /// `virtio-serial-pci`.
    VirtioSerial,
    /// `virtconsole`.
    VirtConsole {
        /// `chardev=`.
        chardev: String,
    },
    /// `virtio-balloon-pci[,deflate-on-oom=on|off]`.
    VirtioBalloon {
        /// `deflate-on-oom=`.
        deflate_on_oom: bool,
    },
    /// `virtio-tablet-pci`.
    VirtioTablet,
    /// `virtio-keyboard-pci`.
    VirtioKeyboard,
    /// `ide-cd`, `ide-hd`: an `if=none` drive put on the PIIX IDE controller (the drive
    /// becomes an IDE drive; no device of its own).
    IdeDrive {
        /// `drive=`.
        drive: String,
        /// IDE index: 2 × channel (`bus=ide.N`) + `unit=`; None for the first free.
        index: Option<u32>,
        /// `ide-cd`.
        cdrom: bool,
        /// `bootindex=`.
        bootindex: Option<u32>,
    },
    /// `isa-serial`: a COM port (the machine's serial ports, like `-serial`).
    IsaSerial {
        /// `chardev=`.
        chardev: Option<String>,
        /// `index=` (0 = COM1).
        index: Option<u32>,
    },
    /// `VGA`: the machine's std VGA (like `-vga std`), always at slot 2.
    Vga,
    /// `piix3-usb-uhci`.
    Uhci,
    /// `usb-tablet`, `usb-mouse`, `usb-kbd`.
    UsbHid {
        /// Which.
        kind: devices::usb::hid::HidKind,
        /// `port=` as written.
        port: Option<String>,
    },
}

impl SpecKind {
    /// Devices the board itself has (IDE drives, COM ports, the VGA) and USB (no USB
    /// hotplug in troupe yet): the command line folds them into the machine;
    /// `device_add` cannot add them.
    pub fn is_board_device(&self) -> bool {
        matches!(
            self,
            Self::IdeDrive { .. }
                | Self::IsaSerial { .. }
                | Self::Vga
                | Self::Uhci
                | Self::UsbHid { .. }
        )
    }
}

/// The canonical name of a driver written by name or alias (`virtio-net` →
/// `virtio-net-pci`).
pub fn canonical_driver(name: &str) -> Option<&'static str> {
    find_driver(name).map(|d| d.name)
}

/// `-global DRIVER.PROP=VALUE` or `-global driver=D,property=P,value=V`: (driver, property,
/// value), checked against the driver's properties. Globals apply to the `-device`s of
/// that driver (see `State`); board devices the machine also creates from other options
/// (`isa-serial`, `ide-cd`, `ide-hd`) and drivers `-device` lacks are refused.
pub fn parse_global(arg: &str) -> Result<(String, String, String), DeviceError> {
    let (driver, prop, value) = if arg.starts_with("driver=") {
        let mut o = Opts::parse(arg, None)?;
        let d = o.required("driver")?;
        let p = o.required("property")?;
        let v = o.required("value")?;
        o.finish()?;
        (d, p, v)
    } else {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| DeviceError::GlobalSyntax(arg.to_string()))?;
        let (d, p) = name
            .split_once('.')
            .filter(|(d, p)| !d.is_empty() && !p.is_empty())
            .ok_or_else(|| DeviceError::GlobalSyntax(arg.to_string()))?;
        (d.to_string(), p.to_string(), value.to_string())
    };
    let d = find_driver(&driver)
        .filter(|d| d.available)
        .ok_or_else(|| DeviceError::GlobalDriver(driver.clone()))?;
    if matches!(d.name, "isa-serial" | "ide-cd" | "ide-hd") {
        return Err(DeviceError::GlobalDriver(driver));
    }
    if matches!(prop.as_str(), "id" | "bus" | "addr") || !d.props.iter().any(|p| p.0 == prop) {
        return Err(DeviceError::GlobalProperty { driver, prop });
    }
    // The value is checked the way -device checks it.
    if d.name == "VGA" {
        let mut o = Opts::default();
        o.prepend("driver", "VGA");
        o.prepend(&prop, &value);
        parse_device(o)?;
    }
    Ok((d.name.to_string(), prop, value))
}

/// A PCI `addr=`: `SLOT[.FN]` in hex (QEMU also takes a `0x` prefix).
pub fn parse_pci_addr(s: &str) -> Result<(u8, u8), DeviceError> {
    let bad = || DeviceError::Addr(s.to_string());
    let (slot, func) = s.split_once('.').unwrap_or((s, "0"));
    let hex = |v: &str| -> Option<u64> {
        let v = v.strip_prefix("0x").unwrap_or(v);
        if v.is_empty() || v.len() > 4 || !v.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(v, 16).ok()
    };
    let slot = hex(slot).filter(|&v| v < 32).ok_or_else(bad)?;
    let func = hex(func).filter(|&v| v < 8).ok_or_else(bad)?;
    Ok((slot as u8, func as u8))
}

fn bootindex(opts: &mut Opts) -> Result<Option<u32>, OptsError> {
    Ok(opts
        .uint("bootindex", 0, i32::MAX as u64)?
        .map(|v| v as u32))
}

/// `-device DRIVER[,id=][,bus=][,addr=][,prop=value...]`. `help` must be handled by the
/// caller first (see [`device_help`], [`device_props_help`]).
pub fn parse_device(mut opts: Opts) -> Result<DeviceSpec, DeviceError> {
    let driver = opts.required("driver")?;
    let d = find_driver(&driver).ok_or_else(|| DeviceError::Unknown(driver.clone()))?;
    let id = opts.id("id")?;
    let bus = opts.str("bus");
    let pci = d.bus == "PCI";
    let addr = if pci {
        opts.str("addr").map(|a| parse_pci_addr(&a)).transpose()?
    } else {
        None
    };
    if let Some(b) = &bus {
        let ok = match d.bus {
            "PCI" => b == "pci.0",
            "ISA" => b == "isa.0",
            _ => true, // virtio-serial bus names are resolved when realizing
        };
        if !ok {
            return Err(DeviceError::Bus(b.clone()));
        }
    }
    let kind = match d.name {
        "isa-debug-exit" => {
            let iobase = opts.uint("iobase", 0, 0xffff)?.unwrap_or(0x501);
            let iosize = opts.uint("iosize", 1, 0xffff)?.unwrap_or(2);
            if iobase + iosize > 0x10000 {
                return Err(DeviceError::IoRange { iobase, iosize });
            }
            SpecKind::IsaDebugExit {
                iobase: iobase as u16,
                iosize: iosize as u16,
            }
        }
        "virtio-blk-pci" => SpecKind::VirtioBlk {
            drive: opts.required("drive")?,
            num_queues: opts.uint("num-queues", 1, MAX_QUEUES)?.map(|v| v as u16),
            serial: opts.str("serial"),
            bootindex: bootindex(&mut opts)?,
        },
        "e1000" | "virtio-net-pci" => SpecKind::Nic {
            model: if d.name == "e1000" {
                NicModel::E1000
            } else {
                NicModel::VirtioNet
            },
            netdev: opts.str("netdev"),
            mac: opts.str("mac").map(|m| parse_mac(&m)).transpose()?,
            romfile: opts.str("romfile"),
            bootindex: bootindex(&mut opts)?,
            queues: if d.name == "e1000" {
                crate::config::NicQueues::default()
            } else {
                crate::config::NicQueues {
                    mq: opts.flag("mq")?.unwrap_or(false),
                    vectors: opts.uint("vectors", 1, 2048)?.map(|v| v as u16),
                }
            },
        },
        "virtconsole" => SpecKind::VirtConsole {
            chardev: opts.required("chardev")?,
        },
        "virtio-rng-pci" => SpecKind::VirtioRng,
        "virtio-serial-pci" => SpecKind::VirtioSerial,
        "virtio-balloon-pci" => SpecKind::VirtioBalloon {
            deflate_on_oom: opts.flag("deflate-on-oom")?.unwrap_or(false),
        },
        "virtio-tablet-pci" => SpecKind::VirtioTablet,
        "virtio-keyboard-pci" => SpecKind::VirtioKeyboard,
        "piix3-usb-uhci" => SpecKind::Uhci,
        "usb-tablet" | "usb-mouse" | "usb-kbd" => SpecKind::UsbHid {
            kind: match d.name {
                "usb-tablet" => devices::usb::hid::HidKind::Tablet,
                "usb-mouse" => devices::usb::hid::HidKind::Mouse,
                _ => devices::usb::hid::HidKind::Keyboard,
            },
            port: opts.str("port"),
        },
        "ide-cd" | "ide-hd" => {
            let channel = match bus.as_deref() {
                None => None,
                Some("ide.0") => Some(0),
                Some("ide.1") => Some(1),
                Some(other) => return Err(DeviceError::Bus(other.to_string())),
            };
            let unit = opts.uint("unit", 0, 1)?.map(|u| u as u32);
            let index = match (channel, unit) {
                (None, Some(_)) => return Err(DeviceError::UnitWithoutBus),
                (None, None) => None,
                (Some(c), u) => Some(2 * c + u.unwrap_or(0)),
            };
            SpecKind::IdeDrive {
                drive: opts.required("drive")?,
                index,
                cdrom: d.name == "ide-cd",
                bootindex: bootindex(&mut opts)?,
            }
        }
        "isa-serial" => SpecKind::IsaSerial {
            chardev: opts.str("chardev"),
            index: opts.uint("index", 0, 3)?.map(|i| i as u32),
        },
        "VGA" => {
            if let Some(mb) = opts.uint("vgamem_mb", 0, u64::from(u32::MAX))? {
                if mb != VGA_MEM_MB {
                    return Err(DeviceError::VgaMem(mb));
                }
            }
            if addr.is_some_and(|a| a != (2, 0)) {
                return Err(DeviceError::VgaSlot);
            }
            SpecKind::Vga
        }
        other => return Err(DeviceError::Unknown(other.to_string())),
    };
    opts.finish()?;
    Ok(DeviceSpec {
        id,
        bus,
        addr,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<DeviceSpec, String> {
        parse_device(Opts::parse(s, Some("driver")).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn isa_debug_exit_takes_hex_or_decimal() {
        assert_eq!(
            spec("isa-debug-exit").unwrap().kind,
            SpecKind::IsaDebugExit {
                iobase: 0x501,
                iosize: 2
            }
        );
        assert_eq!(
            spec("isa-debug-exit,iobase=0xf4,iosize=0x04").unwrap().kind,
            SpecKind::IsaDebugExit {
                iobase: 0xf4,
                iosize: 4
            }
        );
        assert_eq!(
            spec("isa-debug-exit,iobase=244,iosize=1").unwrap().kind,
            SpecKind::IsaDebugExit {
                iobase: 244,
                iosize: 1
            }
        );
        assert_eq!(
            spec("isa-debug-exit,iobase=0xffff,iosize=2"),
            Err("iobase 0xffff + iosize 0x2 goes past the last I/O port 0xffff".into())
        );
        assert_eq!(
            spec("isa-debug-exit,iobase=0x10000"),
            Err("parameter 'iobase' must be between 0 and 65535, not 65536".into())
        );
        assert_eq!(
            spec("isa-debug-exit,iosize=0"),
            Err("parameter 'iosize' must be between 1 and 65535, not 0".into())
        );
        assert_eq!(
            spec("isa-debug-exit,iobase=zz"),
            Err("parameter 'iobase' expects a number, not 'zz'".into())
        );
        assert!(spec("isa-debug-exit,addr=3")
            .unwrap_err()
            .starts_with("parameter 'addr' is not supported"));
        assert!(spec("isa-debug-exit,bus=isa.0").is_ok());
    }

    #[test]
    fn pci_devices_take_id_bus_addr() {
        let s = spec("virtio-rng-pci,id=rng0,bus=pci.0,addr=05.0").unwrap();
        assert_eq!(
            (s.id.as_deref(), s.addr, s.kind),
            (Some("rng0"), Some((5, 0)), SpecKind::VirtioRng)
        );
        assert_eq!(
            spec("virtio-rng-pci,addr=0x1f.7").unwrap().addr,
            Some((0x1f, 7))
        );
        assert_eq!(spec("virtio-rng-pci,addr=a").unwrap().addr, Some((0xa, 0)));
        assert_eq!(
            spec("virtio-rng-pci,addr=20"),
            Err(
                "invalid PCI address '20' (expected SLOT[.FN] in hex: slot 0-1f, function 0-7)"
                    .into()
            )
        );
        assert_eq!(
            spec("virtio-rng-pci,addr=3.8"),
            Err(
                "invalid PCI address '3.8' (expected SLOT[.FN] in hex: slot 0-1f, function 0-7)"
                    .into()
            )
        );
        assert_eq!(
            spec("virtio-rng-pci,bus=pcie.0"),
            Err("bus 'pcie.0' not found".into())
        );
        assert!(spec("virtio-rng-pci,id=9x")
            .unwrap_err()
            .starts_with("invalid id '9x'"));
        for d in [
            "virtio-serial-pci",
            "virtio-balloon-pci",
            "virtio-tablet-pci",
            "virtio-keyboard-pci",
            "virtio-rng",
        ] {
            assert!(spec(d).is_ok(), "{d}");
        }
    }

    #[test]
    fn nic_and_blk_properties() {
        assert_eq!(
            spec("virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:cc,romfile=,bootindex=2")
                .unwrap()
                .kind,
            SpecKind::Nic {
                model: NicModel::VirtioNet,
                netdev: Some("n0".into()),
                mac: Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]),
                romfile: Some("".into()),
                bootindex: Some(2),
                queues: Default::default(),
            }
        );
        match spec("virtio-net-pci,netdev=n0,mq=on,vectors=10")
            .unwrap()
            .kind
        {
            SpecKind::Nic { queues, .. } => assert_eq!(
                queues,
                crate::config::NicQueues {
                    mq: true,
                    vectors: Some(10)
                }
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            spec("e1000,netdev=n0,mq=on").is_err(),
            "mq= is virtio-net's"
        );
        assert_eq!(
            spec("virtio-blk-pci,drive=d0,num-queues=4,serial=abc,bootindex=1")
                .unwrap()
                .kind,
            SpecKind::VirtioBlk {
                drive: "d0".into(),
                num_queues: Some(4),
                serial: Some("abc".into()),
                bootindex: Some(1)
            }
        );
        assert_eq!(
            spec("virtio-blk-pci"),
            Err("parameter 'drive' is missing".into())
        );
        assert_eq!(
            spec("virtio-blk-pci,drive=d,num-queues=0"),
            Err("parameter 'num-queues' must be between 1 and 1024, not 0".into())
        );
        assert_eq!(
            spec("e1000,mac=zz"),
            Err("invalid MAC address 'zz' (expected six hex bytes like 52:54:00:12:34:56)".into())
        );
        assert_eq!(
            spec("e1000,bootindex=-1"),
            Err("parameter 'bootindex' expects a number, not '-1'".into())
        );
        assert_eq!(
            spec("virtconsole"),
            Err("parameter 'chardev' is missing".into())
        );
        assert!(spec("e1000,foo=1").unwrap_err().starts_with("parameter 'foo' is not supported (accepted: driver, id, bus, addr, netdev, mac, romfile, bootindex)"));
    }

    #[test]
    fn unknown_drivers_are_refused() {
        assert_eq!(
            spec("scsi-hd,drive=x"),
            Err("device 'scsi-hd' is unknown or not supported by troupe (see -device help)".into())
        );
        assert_eq!(
            spec("foo"),
            Err("device 'foo' is unknown or not supported by troupe (see -device help)".into())
        );
        assert_eq!(
            spec("bus=pci.0"),
            Err("parameter 'driver' is missing".into())
        );
    }
}
