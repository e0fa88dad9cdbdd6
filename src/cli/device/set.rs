//! Realizing devices in QEMU's creation order: PCI slots, MAC addresses, and every check
//! against what already exists (drives, netdevs, ids, bootindexes, I/O ports).

use super::{DeviceError, DeviceSpec, SpecKind, MAX_QUEUES};
use crate::config::{
    DeviceConfig, DeviceKind, DriveConfig, DriveInterface, Media, NetdevConfig, VgaKind,
};

/// The devices realized so far, with what they hold (slots, MACs, drives, netdevs,
/// bootindexes), so the next one can be checked against them.
#[derive(Debug, Clone)]
pub struct DeviceSet {
    /// Realized devices in creation order.
    pub devices: Vec<DeviceConfig>,
    vga: bool,
    cpus: u32,
}

impl DeviceSet {
    /// An empty machine: `vga` decides whether slot 2 is taken; `cpus` is the default
    /// virtio-blk queue count.
    pub fn new(vga: VgaKind, cpus: u32) -> DeviceSet {
        DeviceSet {
            devices: Vec::new(),
            vga: vga == VgaKind::Std,
            cpus,
        }
    }

    /// Continue from a machine's existing devices (for `device_add`).
    #[cfg_attr(not(test), allow(dead_code))] // used by the hotplug rules
    pub fn with_devices(devices: Vec<DeviceConfig>, vga: VgaKind, cpus: u32) -> DeviceSet {
        DeviceSet {
            devices,
            vga: vga == VgaKind::Std,
            cpus,
        }
    }

    /// Who holds (slot, func), if anyone.
    fn slot_owner(&self, slot: u8, func: u8) -> Option<String> {
        match (slot, func) {
            (0, _) => return Some("the i440FX host bridge".to_string()),
            // Function 2 is the USB controller's place (`-usb`), free until one is there.
            (1, f) if f != 2 => return Some("the PIIX3 chipset".to_string()),
            (2, _) if self.vga => return Some("the VGA card".to_string()),
            _ => {}
        }
        self.devices
            .iter()
            .find(|d| d.addr == Some((slot, func)))
            .map(|d| match &d.id {
                Some(id) => format!("{} (id {id})", d.kind.driver()),
                None => d.kind.driver().to_string(),
            })
    }

    fn place(&self, want: Option<(u8, u8)>) -> Result<(u8, u8), DeviceError> {
        match want {
            Some((slot, func)) => match self.slot_owner(slot, func) {
                Some(by) => Err(DeviceError::AddrTaken { slot, func, by }),
                None => Ok((slot, func)),
            },
            None => (0..32u8)
                .find(|&s| self.slot_owner(s, 0).is_none())
                .map(|s| (s, 0))
                .ok_or(DeviceError::PciFull),
        }
    }

    /// QEMU's `qemu_macaddr_default_if_unset`: the first `52:54:00:12:34:XX` (XX from 0x56)
    /// that no NIC created so far has.
    fn next_mac(&self) -> [u8; 6] {
        let used: Vec<u8> = self
            .devices
            .iter()
            .filter_map(|d| match &d.kind {
                DeviceKind::Nic { mac, .. } if mac[..5] == [0x52, 0x54, 0, 0x12, 0x34] => {
                    Some(mac[5])
                }
                _ => None,
            })
            .collect();
        let last = (0x56..0xff).find(|b| !used.contains(b)).unwrap_or(0xff);
        [0x52, 0x54, 0, 0x12, 0x34, last]
    }

    fn bootindex_used(&self, index: u32) -> bool {
        self.devices.iter().any(|d| match &d.kind {
            DeviceKind::VirtioBlk { bootindex, .. } | DeviceKind::Nic { bootindex, .. } => {
                *bootindex == Some(index)
            }
            _ => false,
        })
    }

    /// A USB device on the controller (`bus=` its bus) at `port` or the first free root
    /// port.
    fn usb_port(
        &self,
        kind: devices::usb::hid::HidKind,
        port: Option<String>,
        bus: Option<&str>,
    ) -> Result<DeviceKind, DeviceError> {
        let uhci = self
            .devices
            .iter()
            .find(|d| d.kind == DeviceKind::Uhci)
            .ok_or(DeviceError::NoUsbBus(kind.driver()))?;
        let bus_name = match &uhci.id {
            Some(id) => format!("{id}.0"),
            None => "usb-bus.0".to_string(),
        };
        if let Some(b) = bus {
            if b != bus_name && b != "usb-bus.0" {
                return Err(DeviceError::Bus(b.to_string()));
            }
        }
        let taken = |p: u8| {
            self.devices
                .iter()
                .any(|d| matches!(d.kind, DeviceKind::UsbHid { port, .. } if port == p))
        };
        let port = match port {
            Some(p) => match p.parse::<u8>() {
                Ok(n @ 1..=2) if !taken(n) => n,
                _ => {
                    return Err(DeviceError::UsbPort {
                        port: p,
                        bus: bus_name,
                    })
                }
            },
            None => (1..=2)
                .find(|p| !taken(*p))
                .ok_or(DeviceError::UsbFull(bus_name))?,
        };
        Ok(DeviceKind::UsbHid { kind, port })
    }

    /// Realize one device against the drives and netdevs that exist. Sets the drive's
    /// `bootindex` for a virtio-blk with one.
    pub fn add(
        &mut self,
        spec: DeviceSpec,
        drives: &mut [DriveConfig],
        netdevs: &[NetdevConfig],
    ) -> Result<(), DeviceError> {
        self.add_inner(spec, drives, netdevs, false)
    }

    /// The virtio-blk-pci QEMU creates for a `-drive if=virtio`.
    pub fn add_virtio_drive(
        &mut self,
        drive: &str,
        drives: &mut [DriveConfig],
    ) -> Result<(), DeviceError> {
        let spec = DeviceSpec {
            id: None,
            bus: None,
            addr: None,
            kind: SpecKind::VirtioBlk {
                drive: drive.to_string(),
                num_queues: None,
                serial: None,
                bootindex: None,
            },
        };
        self.add_inner(spec, drives, &[], true)
    }

    fn add_inner(
        &mut self,
        spec: DeviceSpec,
        drives: &mut [DriveConfig],
        netdevs: &[NetdevConfig],
        implicit_drive: bool,
    ) -> Result<(), DeviceError> {
        if let Some(id) = &spec.id {
            if self.devices.iter().any(|d| d.id.as_deref() == Some(id)) {
                return Err(DeviceError::DuplicateId(id.clone()));
            }
        }
        let on_pci = !matches!(
            spec.kind,
            SpecKind::IsaDebugExit { .. } | SpecKind::VirtConsole { .. } | SpecKind::UsbHid { .. }
        );
        let check_bootindex = |set: &DeviceSet, b: Option<u32>| match b {
            Some(i) if set.bootindex_used(i) => Err(DeviceError::BootindexTwice(i)),
            _ => Ok(()),
        };
        let kind = match spec.kind {
            SpecKind::IdeDrive {
                drive,
                index,
                cdrom,
                bootindex,
            } => {
                // A bootindex is checked against devices and IDE drives alike.
                let ide_boot = |i: u32| {
                    drives
                        .iter()
                        .any(|d| d.interface == DriveInterface::Ide && d.bootindex == Some(i))
                };
                if let Some(i) = bootindex {
                    if self.bootindex_used(i) || ide_boot(i) {
                        return Err(DeviceError::BootindexTwice(i));
                    }
                }
                let taken = |i: u32| {
                    drives
                        .iter()
                        .any(|d| d.interface == DriveInterface::Ide && d.index == Some(i))
                };
                let index = match index {
                    Some(i) if taken(i) => return Err(DeviceError::IdeIndexTaken(i)),
                    Some(i) => i,
                    None => (0..4).find(|i| !taken(*i)).ok_or(DeviceError::IdeFull)?,
                };
                let Some(d) = drives.iter_mut().find(|d| d.id == drive) else {
                    return Err(DeviceError::DriveNotFound(drive));
                };
                match d.interface {
                    DriveInterface::None => {}
                    DriveInterface::Ide => return Err(DeviceError::DriveAttached(drive, "ide")),
                    DriveInterface::Virtio => {
                        return Err(DeviceError::DriveAttached(drive, "virtio"))
                    }
                }
                if !cdrom && d.readonly {
                    return Err(DeviceError::IdeReadonly(drive));
                }
                d.interface = DriveInterface::Ide;
                d.index = Some(index);
                d.media = if cdrom { Media::Cdrom } else { Media::Disk };
                d.bootindex = bootindex;
                d.device_id = spec.id;
                // The drive is the board's now; no device of its own.
                return Ok(());
            }
            SpecKind::IsaSerial { .. } => return Err(DeviceError::NotHotpluggable("isa-serial")),
            SpecKind::Vga => return Err(DeviceError::NotHotpluggable("VGA")),
            SpecKind::IsaDebugExit { iobase, iosize } => {
                let last = iobase.saturating_add(iosize.saturating_sub(1));
                let overlaps = self.devices.iter().any(|d| match d.kind {
                    DeviceKind::IsaDebugExit {
                        iobase: b,
                        iosize: s,
                    } => iobase <= b.saturating_add(s.saturating_sub(1)) && b <= last,
                    _ => false,
                });
                if overlaps {
                    return Err(DeviceError::IoOverlap {
                        first: iobase,
                        last,
                    });
                }
                DeviceKind::IsaDebugExit { iobase, iosize }
            }
            SpecKind::VirtioBlk {
                drive,
                num_queues,
                serial,
                bootindex,
            } => {
                check_bootindex(self, bootindex)?;
                let Some(d) = drives.iter_mut().find(|d| d.id == drive) else {
                    return Err(DeviceError::DriveNotFound(drive));
                };
                match (d.interface, implicit_drive) {
                    (DriveInterface::None, false) | (DriveInterface::Virtio, true) => {}
                    (DriveInterface::Ide, _) => {
                        return Err(DeviceError::DriveAttached(drive, "ide"))
                    }
                    (DriveInterface::Virtio, false) => {
                        return Err(DeviceError::DriveAttached(drive, "virtio"))
                    }
                    (DriveInterface::None, true) => {
                        return Err(DeviceError::DriveAttached(drive, "none"))
                    }
                }
                let in_use = self.devices.iter().any(
                    |x| matches!(&x.kind, DeviceKind::VirtioBlk { drive: dd, .. } if *dd == drive),
                );
                if in_use {
                    return Err(DeviceError::DriveInUse(drive));
                }
                if bootindex.is_some() {
                    d.bootindex = bootindex;
                }
                DeviceKind::VirtioBlk {
                    serial: serial.or_else(|| d.serial.clone()),
                    drive,
                    num_queues: num_queues.unwrap_or_else(|| {
                        u16::try_from(self.cpus.clamp(1, MAX_QUEUES as u32)).unwrap_or(1)
                    }),
                    bootindex,
                }
            }
            SpecKind::Nic {
                model,
                netdev,
                mac,
                romfile,
                bootindex,
                queues,
            } => {
                check_bootindex(self, bootindex)?;
                if let Some(n) = &netdev {
                    if !netdevs.iter().any(|nd| nd.id == *n) {
                        return Err(DeviceError::NetdevNotFound(n.clone()));
                    }
                    let in_use = self.devices.iter().any(
                        |x| matches!(&x.kind, DeviceKind::Nic { netdev: Some(o), .. } if o == n),
                    );
                    if in_use {
                        return Err(DeviceError::NetdevInUse(n.clone()));
                    }
                }
                DeviceKind::Nic {
                    model,
                    netdev,
                    mac: mac.unwrap_or_else(|| self.next_mac()),
                    romfile,
                    bootindex,
                    queues,
                }
            }
            SpecKind::VirtConsole { chardev } => {
                let controller = match &spec.bus {
                    Some(bus) => {
                        let owner = bus.strip_suffix(".0").unwrap_or("");
                        self.devices
                            .iter()
                            .position(|d| {
                                d.kind == DeviceKind::VirtioSerial && d.id.as_deref() == Some(owner)
                            })
                            .ok_or_else(|| DeviceError::Bus(bus.clone()))?
                    }
                    None => self
                        .devices
                        .iter()
                        .position(|d| d.kind == DeviceKind::VirtioSerial)
                        .ok_or(DeviceError::NoSerialBus)?,
                };
                DeviceKind::VirtConsole {
                    chardev,
                    controller,
                }
            }
            SpecKind::VirtioRng => DeviceKind::VirtioRng,
            SpecKind::VirtioSerial => DeviceKind::VirtioSerial,
            SpecKind::VirtioBalloon { deflate_on_oom } => {
                DeviceKind::VirtioBalloon { deflate_on_oom }
            }
            SpecKind::VirtioTablet => DeviceKind::VirtioTablet,
            SpecKind::VirtioKeyboard => DeviceKind::VirtioKeyboard,
            SpecKind::Uhci => {
                if self.devices.iter().any(|d| d.kind == DeviceKind::Uhci) {
                    return Err(DeviceError::SecondUhci);
                }
                DeviceKind::Uhci
            }
            SpecKind::UsbHid { kind, port } => self.usb_port(kind, port, spec.bus.as_deref())?,
        };
        let addr = if on_pci {
            Some(self.place(spec.addr)?)
        } else {
            None
        };
        self.devices.push(DeviceConfig {
            id: spec.id,
            kind,
            addr,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_device;
    use super::*;
    use crate::cli::options::Opts;
    use crate::config::{AioMode, CacheMode, Media, NetdevKind};

    fn drive(id: &str, interface: DriveInterface) -> DriveConfig {
        DriveConfig {
            id: id.into(),
            file: Some("/x".into()),
            interface,
            media: Media::Disk,
            format: None,
            index: Some(0),
            cache: CacheMode::Writeback,
            aio: AioMode::Threads,
            readonly: false,
            snapshot: false,
            discard: false,
            serial: Some("DRIVE-SN".into()),
            bootindex: None,
            node_names: None,
            device_id: None,
        }
    }

    fn netdev(id: &str) -> NetdevConfig {
        NetdevConfig {
            id: id.into(),
            kind: NetdevKind::Hubport { hubid: 0 },
        }
    }

    fn add(
        set: &mut DeviceSet,
        s: &str,
        drives: &mut [DriveConfig],
        netdevs: &[NetdevConfig],
    ) -> Result<(), String> {
        let sp = parse_device(Opts::parse(s, Some("driver")).unwrap()).unwrap();
        set.add(sp, drives, netdevs).map_err(|e| e.to_string())
    }

    #[test]
    fn slots_are_given_out_like_qemu() {
        let mut set = DeviceSet::new(VgaKind::Std, 2);
        let nd = [netdev("a"), netdev("b")];
        add(&mut set, "e1000,netdev=a", &mut [], &nd).unwrap();
        add(&mut set, "virtio-rng-pci", &mut [], &nd).unwrap();
        add(&mut set, "isa-debug-exit", &mut [], &nd).unwrap();
        assert_eq!(set.devices[0].addr, Some((3, 0)));
        assert_eq!(set.devices[1].addr, Some((4, 0)));
        assert_eq!(set.devices[2].addr, None);
        assert_eq!(
            add(&mut set, "virtio-balloon-pci,addr=3", &mut [], &nd),
            Err("PCI slot 0x03 function 0 is not available, in use by e1000".into())
        );
        assert_eq!(
            add(&mut set, "virtio-balloon-pci,addr=2", &mut [], &nd),
            Err("PCI slot 0x02 function 0 is not available, in use by the VGA card".into())
        );
        assert_eq!(
            add(&mut set, "virtio-balloon-pci,addr=1.0", &mut [], &nd),
            Err("PCI slot 0x01 function 0 is not available, in use by the PIIX3 chipset".into())
        );
        add(&mut set, "virtio-balloon-pci,addr=6", &mut [], &nd).unwrap();
        add(&mut set, "virtio-tablet-pci", &mut [], &nd).unwrap();
        assert_eq!(set.devices[4].addr, Some((5, 0)));
        // Without VGA, slot 2 is the first free one.
        let mut set = DeviceSet::new(VgaKind::None, 1);
        add(&mut set, "virtio-rng-pci,id=r", &mut [], &[]).unwrap();
        assert_eq!(set.devices[0].addr, Some((2, 0)));
        assert_eq!(
            add(&mut set, "virtio-rng-pci,addr=2", &mut [], &[]),
            Err(
                "PCI slot 0x02 function 0 is not available, in use by virtio-rng-pci (id r)".into()
            )
        );
        // Fill the bus.
        for _ in 3..32 {
            add(&mut set, "virtio-rng-pci", &mut [], &[]).unwrap();
        }
        assert_eq!(
            add(&mut set, "virtio-rng-pci", &mut [], &[]),
            Err("no free PCI slot left on bus pci.0".into())
        );
    }

    #[test]
    fn macs_are_generated_like_qemu() {
        let mut set = DeviceSet::new(VgaKind::Std, 1);
        let nd = [netdev("a"), netdev("b"), netdev("c"), netdev("d")];
        add(&mut set, "e1000", &mut [], &nd).unwrap();
        add(&mut set, "e1000,mac=52:54:00:12:34:57", &mut [], &nd).unwrap();
        add(&mut set, "virtio-net-pci", &mut [], &nd).unwrap();
        add(
            &mut set,
            "virtio-net-pci,mac=02:00:00:00:00:01",
            &mut [],
            &nd,
        )
        .unwrap();
        add(&mut set, "e1000", &mut [], &nd).unwrap();
        let macs: Vec<u8> = set
            .devices
            .iter()
            .map(|d| match d.kind {
                DeviceKind::Nic { mac, .. } => mac[5],
                _ => 0,
            })
            .collect();
        assert_eq!(macs, vec![0x56, 0x57, 0x58, 0x01, 0x59]);
    }

    #[test]
    fn references_are_checked() {
        let mut drives = vec![
            drive("d0", DriveInterface::None),
            drive("ide", DriveInterface::Ide),
            drive("v0", DriveInterface::Virtio),
        ];
        let nd = [netdev("n0")];
        let mut set = DeviceSet::new(VgaKind::Std, 4);
        add(
            &mut set,
            "virtio-blk-pci,drive=d0,bootindex=1",
            &mut drives,
            &nd,
        )
        .unwrap();
        assert_eq!(drives[0].bootindex, Some(1));
        match &set.devices[0].kind {
            DeviceKind::VirtioBlk {
                num_queues, serial, ..
            } => {
                assert_eq!(*num_queues, 4);
                assert_eq!(serial.as_deref(), Some("DRIVE-SN"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            add(&mut set, "virtio-blk-pci,drive=d0", &mut drives, &nd),
            Err("drive 'd0' is already in use by another device".into())
        );
        assert_eq!(
            add(&mut set, "virtio-blk-pci,drive=zz", &mut drives, &nd),
            Err("drive 'zz' not found".into())
        );
        assert_eq!(
            add(&mut set, "virtio-blk-pci,drive=ide", &mut drives, &nd),
            Err("drive 'ide' is attached by if=ide; use if=none to attach it with -device".into())
        );
        assert_eq!(
            add(&mut set, "virtio-blk-pci,drive=v0", &mut drives, &nd),
            Err(
                "drive 'v0' is attached by if=virtio; use if=none to attach it with -device".into()
            )
        );
        set.add_virtio_drive("v0", &mut drives).unwrap();
        add(&mut set, "e1000,netdev=n0,id=nic0", &mut drives, &nd).unwrap();
        assert_eq!(
            add(&mut set, "e1000,netdev=n0", &mut drives, &nd),
            Err("netdev 'n0' is already in use by another NIC".into())
        );
        assert_eq!(
            add(&mut set, "e1000,netdev=zz", &mut drives, &nd),
            Err("netdev 'zz' not found".into())
        );
        assert_eq!(
            add(&mut set, "e1000,id=nic0", &mut drives, &nd),
            Err("duplicate device id 'nic0'".into())
        );
        assert_eq!(
            add(&mut set, "e1000,bootindex=1", &mut drives, &nd),
            Err("bootindex 1 is already used by another device".into())
        );
    }

    #[test]
    fn virtconsole_needs_a_controller_created_before_it() {
        let mut set = DeviceSet::new(VgaKind::Std, 1);
        assert_eq!(
            add(&mut set, "virtconsole,chardev=c", &mut [], &[]),
            Err(
                "no virtio-serial bus for virtconsole (add -device virtio-serial-pci before it)"
                    .into()
            )
        );
        add(&mut set, "virtio-serial-pci", &mut [], &[]).unwrap();
        add(&mut set, "virtio-serial-pci,id=vs1", &mut [], &[]).unwrap();
        add(&mut set, "virtconsole,chardev=c", &mut [], &[]).unwrap();
        add(&mut set, "virtconsole,chardev=d,bus=vs1.0", &mut [], &[]).unwrap();
        assert_eq!(
            set.devices[2].kind,
            DeviceKind::VirtConsole {
                chardev: "c".into(),
                controller: 0
            }
        );
        assert_eq!(
            set.devices[3].kind,
            DeviceKind::VirtConsole {
                chardev: "d".into(),
                controller: 1
            }
        );
        assert_eq!(set.devices[3].addr, None);
        assert_eq!(
            add(&mut set, "virtconsole,chardev=e,bus=zz.0", &mut [], &[]),
            Err("bus 'zz.0' not found".into())
        );
    }

    #[test]
    fn debug_exit_ports_must_not_overlap() {
        let mut set = DeviceSet::new(VgaKind::Std, 1);
        add(
            &mut set,
            "isa-debug-exit,iobase=0xf4,iosize=4",
            &mut [],
            &[],
        )
        .unwrap();
        assert_eq!(
            add(
                &mut set,
                "isa-debug-exit,iobase=0xf6,iosize=1",
                &mut [],
                &[]
            ),
            Err("I/O ports 0xf6-0xf6 overlap another isa-debug-exit".into())
        );
        add(
            &mut set,
            "isa-debug-exit,iobase=0xf8,iosize=1",
            &mut [],
            &[],
        )
        .unwrap();
    }
}
