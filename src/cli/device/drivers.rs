//! The drivers troupe has: the table `-device` parsing looks names up in, and the
//! `-device help` / `-device DRIVER,help` listings made from it.

use super::DeviceError;

/// A driver troupe has, for parsing and for `-device help`.
pub(super) struct Driver {
    pub(super) name: &'static str,
    alias: &'static str,
    category: &'static str,
    pub(super) bus: &'static str,
    desc: &'static str,
    /// (property, type, description) beyond `id`.
    pub(super) props: &'static [(&'static str, &'static str, &'static str)],
    /// Whether the machine can start it yet. The others are parsed (their checks and slots
    /// are QEMU's already) but `-device help` leaves them out and the machine refuses them.
    pub(super) available: bool,
}

const PCI_ADDR: (&str, &str, &str) = (
    "addr",
    "<int32>",
    "Slot and optional function number, example: 06.0 or 06 (default: -1)",
);
const PCI_BUS: (&str, &str, &str) = ("bus", "<str>", "pci.0");
const BOOTINDEX: (&str, &str, &str) = ("bootindex", "<int32>", "");

/// The properties of `ide-cd` and `ide-hd`.
const IDE_PROPS: &[(&str, &str, &str)] = &[
    BOOTINDEX,
    (
        "bus",
        "<str>",
        "ide.0 or ide.1 (the PIIX primary or secondary channel)",
    ),
    (
        "drive",
        "<str>",
        "Node name or ID of a block device to use as a backend",
    ),
    ("unit", "<uint32>", "0 (master) or 1 (slave)"),
];

/// The properties of the USB HID devices.
const USB_PROPS: &[(&str, &str, &str)] = &[
    (
        "bus",
        "<str>",
        "usb-bus.0, or ID.0 of a piix3-usb-uhci,id=ID (default: the controller)",
    ),
    (
        "port",
        "<str>",
        "root port 1 or 2 (default: the first free)",
    ),
];

pub(super) const DRIVERS: &[Driver] = &[
    Driver {
        name: "piix3-usb-uhci",
        alias: "",
        category: "USB devices",
        bus: "PCI",
        desc: "",
        props: &[PCI_ADDR, PCI_BUS],
        available: true,
    },
    Driver {
        name: "e1000",
        alias: "e1000-82540em",
        category: "Network devices",
        bus: "PCI",
        desc: "Intel Gigabit Ethernet",
        props: &[
            PCI_ADDR,
            BOOTINDEX,
            PCI_BUS,
            (
                "mac",
                "<str>",
                "Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56",
            ),
            ("netdev", "<str>", "ID of a netdev to use as a backend"),
            ("romfile", "<str>", ""),
        ],
        available: true,
    },
    Driver {
        name: "virtio-net-pci",
        alias: "virtio-net",
        category: "Network devices",
        bus: "PCI",
        desc: "",
        props: &[
            PCI_ADDR,
            BOOTINDEX,
            PCI_BUS,
            (
                "mac",
                "<str>",
                "Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56",
            ),
            ("netdev", "<str>", "ID of a netdev to use as a backend"),
            ("romfile", "<str>", ""),
        ],
        available: true,
    },
    Driver {
        name: "virtio-blk-pci",
        alias: "virtio-blk",
        category: "Storage devices",
        bus: "PCI",
        desc: "",
        props: &[
            PCI_ADDR,
            BOOTINDEX,
            PCI_BUS,
            (
                "drive",
                "<str>",
                "Node name or ID of a block device to use as a backend",
            ),
            ("num-queues", "<uint16>", "(default: number of vCPUs)"),
            ("serial", "<str>", ""),
        ],
        available: true,
    },
    Driver {
        name: "virtio-keyboard-pci",
        alias: "virtio-keyboard",
        category: "Input devices",
        bus: "PCI",
        desc: "",
        props: &[PCI_ADDR, PCI_BUS],
        available: false,
    },
    Driver {
        name: "virtio-tablet-pci",
        alias: "virtio-tablet",
        category: "Input devices",
        bus: "PCI",
        desc: "",
        props: &[PCI_ADDR, PCI_BUS],
        available: true,
    },
    Driver {
        name: "usb-kbd",
        alias: "",
        category: "Input devices",
        bus: "usb-bus",
        desc: "",
        props: USB_PROPS,
        available: true,
    },
    Driver {
        name: "usb-mouse",
        alias: "",
        category: "Input devices",
        bus: "usb-bus",
        desc: "",
        props: USB_PROPS,
        available: true,
    },
    Driver {
        name: "usb-tablet",
        alias: "",
        category: "Input devices",
        bus: "usb-bus",
        desc: "",
        props: USB_PROPS,
        available: true,
    },
    Driver {
        name: "virtconsole",
        alias: "",
        category: "Input devices",
        bus: "virtio-serial-bus",
        desc: "",
        props: &[
            (
                "bus",
                "<str>",
                "ID.0 of a virtio-serial-pci (default: the first)",
            ),
            ("chardev", "<str>", "ID of a chardev to use as a backend"),
        ],
        available: true,
    },
    Driver {
        name: "virtio-serial-pci",
        alias: "virtio-serial",
        category: "Input devices",
        bus: "PCI",
        desc: "",
        props: &[PCI_ADDR, PCI_BUS],
        available: true,
    },
    Driver {
        name: "ide-cd",
        alias: "",
        category: "Storage devices",
        bus: "IDE",
        desc: "virtual IDE CD-ROM",
        props: IDE_PROPS,
        available: true,
    },
    Driver {
        name: "ide-hd",
        alias: "",
        category: "Storage devices",
        bus: "IDE",
        desc: "virtual IDE disk",
        props: IDE_PROPS,
        available: true,
    },
    Driver {
        name: "isa-serial",
        alias: "",
        category: "Input devices",
        bus: "ISA",
        desc: "",
        props: &[
            ("chardev", "<str>", "ID of a chardev to use as a backend"),
            (
                "index",
                "<uint32>",
                "0-3: COM1..COM4 (default: the next free)",
            ),
        ],
        available: true,
    },
    Driver {
        name: "VGA",
        alias: "",
        category: "Display devices",
        bus: "PCI",
        desc: "",
        props: &[
            PCI_ADDR,
            PCI_BUS,
            (
                "vgamem_mb",
                "<uint32>",
                " (default: 16; troupe has only 16)",
            ),
        ],
        available: true,
    },
    Driver {
        name: "isa-debug-exit",
        alias: "",
        category: "Misc devices",
        bus: "ISA",
        desc: "",
        props: &[
            ("iobase", "<uint32>", " (default: 1281)"),
            ("iosize", "<uint32>", " (default: 2)"),
        ],
        available: true,
    },
    Driver {
        name: "virtio-balloon-pci",
        alias: "virtio-balloon",
        category: "Misc devices",
        bus: "PCI",
        desc: "",
        props: &[
            PCI_ADDR,
            PCI_BUS,
            ("deflate-on-oom", "<bool>", " (default: false)"),
        ],
        available: true,
    },
    Driver {
        name: "virtio-rng-pci",
        alias: "virtio-rng",
        category: "Misc devices",
        bus: "PCI",
        desc: "",
        props: &[PCI_ADDR, PCI_BUS],
        available: true,
    },
];

pub(super) fn find_driver(name: &str) -> Option<&'static Driver> {
    DRIVERS
        .iter()
        .find(|d| d.name == name || (!d.alias.is_empty() && d.alias == name))
}

/// The drivers a machine can start, in listing order.
/// A property: (name, `<type>`, description).
pub type Prop = (&'static str, &'static str, &'static str);

/// The drivers `-device` can create: (name, bus, properties beyond `id`).
pub fn creatable() -> impl Iterator<Item = (&'static str, &'static str, &'static [Prop])> {
    available().map(|d| (d.name, d.bus, d.props))
}

fn available() -> impl Iterator<Item = &'static Driver> {
    DRIVERS.iter().filter(|d| d.available)
}

/// `-device help`: the drivers troupe can start, grouped like QEMU's listing.
pub fn device_help() -> String {
    let mut out = String::new();
    let mut categories: Vec<&str> = Vec::new();
    for d in available() {
        if !categories.contains(&d.category) {
            categories.push(d.category);
        }
    }
    for (i, cat) in categories.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{cat}:\n"));
        for d in available().filter(|d| d.category == *cat) {
            out.push_str(&format!("name \"{}\", bus {}", d.name, d.bus));
            if !d.alias.is_empty() {
                out.push_str(&format!(", alias \"{}\"", d.alias));
            }
            if !d.desc.is_empty() {
                out.push_str(&format!(", desc \"{}\"", d.desc));
            }
            out.push('\n');
        }
    }
    out
}

/// `-device DRIVER,help`: the properties troupe accepts for `driver`.
pub fn device_props_help(driver: &str) -> Result<String, DeviceError> {
    let d = find_driver(driver).ok_or_else(|| DeviceError::Unknown(driver.to_string()))?;
    if !d.available {
        return Err(DeviceError::NotAvailable(d.name));
    }
    let mut out = format!("{} options:\n", d.name);
    let mut props: Vec<_> = d.props.to_vec();
    props.push(("id", "<str>", ""));
    props.sort_by_key(|p| p.0);
    for (name, ty, desc) in props {
        let head = format!("  {name}={ty}");
        if desc.is_empty() {
            out.push_str(&format!("{head}\n"));
        } else {
            out.push_str(&format!("{head:<24} - {}\n", desc.trim_start()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_drivers_and_properties() {
        let h = device_help();
        assert!(h.contains("Network devices:\nname \"e1000\", bus PCI, alias \"e1000-82540em\", desc \"Intel Gigabit Ethernet\"\n"));
        assert!(h.contains("name \"virtio-net-pci\", bus PCI, alias \"virtio-net\"\n"));
        for d in DRIVERS {
            let listed = h.contains(&format!("name \"{}\"", d.name));
            assert_eq!(listed, d.available, "{}", d.name);
        }
        assert!(h.contains("name \"virtio-balloon-pci\", bus PCI, alias \"virtio-balloon\"\n"));
        let p = device_props_help("isa-debug-exit").unwrap();
        assert_eq!(p, "isa-debug-exit options:\n  id=<str>\n  iobase=<uint32>        - (default: 1281)\n  iosize=<uint32>        - (default: 2)\n");
        let p = device_props_help("e1000").unwrap();
        assert!(p.contains("  netdev=<str>           - ID of a netdev to use as a backend\n"));
        assert!(device_props_help("virtio-net")
            .unwrap()
            .starts_with("virtio-net-pci options:"));
        assert!(device_props_help("virtio-balloon")
            .unwrap()
            .contains("  deflate-on-oom=<bool>  - (default: false)\n"));
        assert_eq!(
            device_props_help("nope").unwrap_err().to_string(),
            "device 'nope' is unknown or not supported by troupe (see -device help)"
        );
    }
}
