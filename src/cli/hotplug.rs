//! The command-line rules for devices and backends added to a running VM (`device_add`,
//! `netdev_add` from the monitor): same syntax, checked against the VM's current config.
//! `netdev_add` uses them (platform/hotnet.rs), and so does `device_add`
//! (platform/hotpci.rs).

use super::chardev;
use super::device::{self, DeviceError, DeviceSet};
use super::netdev::{self, NetdevError};
use super::options::{is_help, Opts};
use super::{invalid, CliError};
use crate::config::{
    CharBackend, Chardev, DeviceConfig, DeviceKind, DriveConfig, NetdevConfig, NetdevKind, VmConfig,
};

/// What `device_add` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAdd {
    /// Add this device (not yet in the config; the caller pushes it when hotplug succeeds).
    Device(DeviceConfig),
    /// `help` or `DRIVER,help`: print this.
    Help(String),
}

/// Parse a `device_add` (HMP) / `-device` string against a running VM's config, with the
/// same rules as the command line: the next free PCI slot and MAC, unused `drive=`,
/// `netdev=` and `chardev=`, unique id and bootindex. Errors print as
/// `SPEC: reason`. A virtio-blk's `bootindex` is not copied into the drive here.
pub fn parse_device_add(spec: &str, config: &VmConfig) -> Result<DeviceAdd, CliError> {
    let o = Opts::parse(spec, Some("driver")).map_err(|e| invalid(spec, e))?;
    match o.peek("driver") {
        Some(d) if is_help(d) => return Ok(DeviceAdd::Help(device::device_help())),
        Some(d) if o.help_requested() => {
            return device::device_props_help(d)
                .map(DeviceAdd::Help)
                .map_err(|e| invalid(spec, e));
        }
        _ => {}
    }
    let parsed = device::parse_device(o).map_err(|e| invalid(spec, e))?;
    if parsed.kind.is_board_device() {
        let driver = match parsed.kind {
            device::SpecKind::IdeDrive { cdrom: true, .. } => "ide-cd",
            device::SpecKind::IdeDrive { .. } => "ide-hd",
            device::SpecKind::IsaSerial { .. } => "isa-serial",
            device::SpecKind::Uhci => "piix3-usb-uhci",
            device::SpecKind::UsbHid { kind, .. } => kind.driver(),
            _ => "VGA",
        };
        return Err(invalid(spec, DeviceError::NotHotpluggable(driver)));
    }
    let mut set = DeviceSet::with_devices(config.devices.clone(), config.vga, config.smp.cpus);
    let mut drives = config.drives.clone();
    set.add(parsed, &mut drives, &config.netdevs)
        .map_err(|e| invalid(spec, e))?;
    let Some(dev) = set.devices.pop() else {
        return Err(invalid(spec, DeviceError::Unknown(spec.to_string())));
    };
    // A device plugged while the guest runs gets no boot ROM and no boot order.
    if dev.kind.bootindex().is_some() {
        return Err(invalid(spec, DeviceError::NotWhenHot("bootindex=")));
    }
    if let DeviceKind::Nic {
        romfile: Some(rom), ..
    } = &dev.kind
    {
        if !rom.is_empty() {
            return Err(invalid(spec, DeviceError::NotWhenHot("romfile=")));
        }
    }
    if let DeviceKind::VirtConsole { chardev, .. } = &dev.kind {
        let mut uses = chardev_uses(config);
        uses.push(chardev::Use {
            at: spec.to_string(),
            id: chardev.clone(),
        });
        chardev::check_users(&config.chardevs, &uses).map_err(|(_, e)| invalid(spec, e))?;
    }
    Ok(DeviceAdd::Device(dev))
}

/// Parse a `netdev_add` / `-netdev` string against a running VM's config (unique id).
/// Returns the backend and any chardevs its `guestfwd=` rules need created.
pub fn parse_netdev_add(
    spec: &str,
    config: &VmConfig,
) -> Result<(NetdevConfig, Vec<Chardev>), CliError> {
    let o = Opts::parse(spec, Some("type")).map_err(|e| invalid(spec, e))?;
    let mut extra = Vec::new();
    let nd = netdev::parse_netdev(o, &mut extra).map_err(|e| invalid(spec, e))?;
    if config.netdevs.iter().any(|n| n.id == nd.id) {
        return Err(invalid(spec, NetdevError::DuplicateId(nd.id)));
    }
    // Rename the guestfwd chardevs past the ones the VM already has.
    let mut renames: Vec<(String, String)> = Vec::new();
    let mut n = 0;
    for c in &mut extra {
        while config
            .chardevs
            .iter()
            .any(|o| o.id == format!("#guestfwd{n}"))
        {
            n += 1;
        }
        let new_id = format!("#guestfwd{n}");
        n += 1;
        renames.push((std::mem::replace(&mut c.id, new_id.clone()), new_id));
    }
    let mut nd = nd;
    let mut uses = chardev_uses(config);
    if let NetdevKind::User(u) = &mut nd.kind {
        for (_, _, id) in &mut u.guestfwd {
            if let Some((_, new)) = renames.iter().find(|(old, _)| old == id) {
                id.clone_from(new);
            }
            uses.push(chardev::Use {
                at: spec.to_string(),
                id: id.clone(),
            });
        }
    }
    let mut chardevs = config.chardevs.clone();
    chardevs.extend(extra.iter().cloned());
    chardev::check_users(&chardevs, &uses).map_err(|(_, e)| invalid(spec, e))?;
    Ok((nd, extra))
}

/// Every chardev use in a running VM's config.
fn chardev_uses(config: &VmConfig) -> Vec<chardev::Use> {
    let mut ids: Vec<String> = Vec::new();
    let mut named = |b: &CharBackend| {
        if let CharBackend::Named(id) = b {
            ids.push(id.clone());
        }
    };
    config.serials.iter().for_each(&mut named);
    config.monitors.iter().for_each(|m| named(&m.backend));
    for d in &config.devices {
        if let DeviceKind::VirtConsole { chardev, .. } = &d.kind {
            ids.push(chardev.clone());
        }
    }
    for nd in &config.netdevs {
        if let NetdevKind::User(u) = &nd.kind {
            ids.extend(u.guestfwd.iter().map(|(_, _, id)| id.clone()));
        }
    }
    ids.into_iter()
        .map(|id| chardev::Use {
            at: String::new(),
            id,
        })
        .collect()
}

pub use super::drive::{resolve_blockdevs, BlockNode, DriveError, NodeKind, NodeRef};

/// `blockdev-add`'s arguments (a JSON object, as `-blockdev` takes them): one block node,
/// parsed by the command line's `-blockdev` parser.
pub fn parse_blockdev_add(json: &str) -> Result<BlockNode, DriveError> {
    let opts = Opts::from_json(json)?;
    super::drive::parse_blockdev(opts)
}

/// `drive_add`'s options (the `-drive` syntax): an `if=none` drive, parsed and its image
/// checked as the command line does; `taken` are the drive ids and node names in use.
/// Only `if=none` can be added (QEMU's PC cannot hot-add IDE or `if=virtio` drives).
pub fn parse_drive_add(spec: &str, taken: &[String]) -> Result<DriveConfig, DriveAddError> {
    let opts = Opts::parse(spec, None).map_err(DriveError::from)?;
    let d = super::drive::parse_drive(opts)?;
    if d.interface != crate::config::DriveInterface::None {
        // QEMU's BlockInterfaceType numbers: IF_IDE 1, IF_VIRTIO 7.
        let n = match d.interface {
            crate::config::DriveInterface::Ide => 1,
            _ => 7,
        };
        return Err(DriveAddError::Interface(n));
    }
    // The next free `noneN` for a drive without id=, as QEMU numbers them.
    let mut d = d;
    if d.id.is_none() {
        let free = (0..)
            .map(|n| format!("none{n}"))
            .find(|id| !taken.contains(id))
            .unwrap_or_default();
        d.id = Some(free);
    }
    if let Some(id) = d.id.as_ref().filter(|id| taken.contains(id)) {
        return Err(DriveAddError::Duplicate(id.clone()));
    }
    let mut drives = super::drive::assign(std::slice::from_ref(&d), false).map_err(|(_, e)| e)?;
    Ok(drives.remove(0))
}

/// The `file=` of `drive_add`'s options (for messages about it).
pub fn drive_add_file(spec: &str) -> std::path::PathBuf {
    Opts::parse(spec, None)
        .ok()
        .and_then(|o| o.peek("file").map(std::path::PathBuf::from))
        .unwrap_or_default()
}

/// Why `drive_add` refused its options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriveAddError {
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// Not `if=none` (QEMU's interface number).
    #[error("Can't hot-add drive to type {0}")]
    Interface(u32),
    #[error("Duplicate ID '{0}' for drive")]
    Duplicate(String),
}
