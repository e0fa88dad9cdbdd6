//! USB on whole command lines: `-usb`, `-machine usb=`, `-usbdevice`, `piix3-usb-uhci` and
//! the HID devices on its two root ports, as QEMU places and refuses them.

use super::*;
use ::devices::usb::hid::HidKind;

/// A USB device as the configuration has it: (driver, PCI address, root port).
type UsbDev = (&'static str, Option<(u8, u8)>, Option<u8>);

/// Each USB device, in creation order.
fn usb(c: &VmConfig) -> Vec<UsbDev> {
    c.devices
        .iter()
        .filter_map(|d| match d.kind {
            DeviceKind::Uhci => Some(("piix3-usb-uhci", d.addr, None)),
            DeviceKind::UsbHid { kind, port } => Some((kind.driver(), d.addr, Some(port))),
            _ => None,
        })
        .collect()
}

#[test]
fn usb_on_puts_the_controller_at_01_2_like_qemu() {
    let env = Env::new();
    let uhci = vec![("piix3-usb-uhci", Some((1, 2)), None)];
    assert_eq!(usb(&env.run(&["-usb"])), uhci);
    assert_eq!(usb(&env.run(&["-machine", "usb=on"])), uhci);
    assert_eq!(usb(&env.run(&["-M", "pc,usb=on", "-nodefaults"])), uhci);
    assert!(usb(&env.run(&["-machine", "usb=off"])).is_empty());
    assert!(usb(&env.run(&[])).is_empty());
    // The default NIC still takes slot 3: the controller is a function of the PIIX.
    let c = env.run(&["-usb"]);
    assert!(c.devices.iter().any(|d| d.addr == Some((3, 0))));
    // A -device controller without addr= takes the first free slot, as in QEMU.
    let c = env.run(&["-net", "none", "-device", "piix3-usb-uhci"]);
    assert_eq!(usb(&c), vec![("piix3-usb-uhci", Some((3, 0)), None)]);
}

#[test]
fn usbdevice_turns_usb_on_and_devices_fill_the_ports_in_qemus_order() {
    let env = Env::new();
    // -usbdevice devices come before -device ones.
    let c = env.run(&["-device", "usb-kbd,id=k", "-usbdevice", "tablet"]);
    assert_eq!(
        usb(&c),
        vec![
            ("piix3-usb-uhci", Some((1, 2)), None),
            ("usb-tablet", None, Some(1)),
            ("usb-kbd", None, Some(2)),
        ]
    );
    assert_eq!(c.devices.last().unwrap().id.as_deref(), Some("k"));
    let c = env.run(&["-usb", "-device", "usb-mouse,port=2", "-device", "usb-kbd"]);
    assert_eq!(
        usb(&c)[1..],
        [("usb-mouse", None, Some(2)), ("usb-kbd", None, Some(1))]
    );
    for (name, kind) in [
        ("tablet", HidKind::Tablet),
        ("mouse", HidKind::Mouse),
        ("keyboard", HidKind::Keyboard),
    ] {
        let c = env.run(&["-usbdevice", name]);
        assert!(c
            .devices
            .iter()
            .any(|d| d.kind == DeviceKind::UsbHid { kind, port: 1 }));
    }
}

#[test]
fn libvirts_usb_controller_and_tablet_parse() {
    let env = Env::new();
    let c = env.run(&[
        "-machine",
        "pc-i440fx-7.2,usb=off",
        "-device",
        r#"{"driver":"piix3-usb-uhci","id":"usb","bus":"pci.0","addr":"0x1.0x2"}"#,
        "-device",
        r#"{"driver":"usb-tablet","id":"input0","bus":"usb.0","port":"1"}"#,
    ]);
    assert_eq!(
        usb(&c),
        vec![
            ("piix3-usb-uhci", Some((1, 2)), None),
            ("usb-tablet", None, Some(1))
        ]
    );
    // The controller's bus by its QEMU name works too.
    env.run(&[
        "-device",
        "piix3-usb-uhci",
        "-device",
        "usb-mouse,bus=usb-bus.0",
    ]);
}

#[test]
fn usb_mistakes_are_refused_with_qemus_words() {
    let env = Env::new();
    let e = |args: &[&str]| env.err(args);
    assert_eq!(
        e(&["-device", "usb-tablet"]),
        "-device usb-tablet: No 'usb-bus' bus found for device 'usb-tablet'"
    );
    assert_eq!(
        e(&["-usb", "-device", "usb-tablet,port=3"]),
        "-device usb-tablet,port=3: usb port 3 (bus usb-bus.0) not found (in use?)"
    );
    assert_eq!(
        e(&[
            "-usb",
            "-device",
            "usb-kbd,port=1",
            "-device",
            "usb-mouse,port=1"
        ]),
        "-device usb-mouse,port=1: usb port 1 (bus usb-bus.0) not found (in use?)"
    );
    assert_eq!(
        e(&["-usbdevice", "tablet", "-usbdevice", "mouse", "-usbdevice", "keyboard"]),
        "-usbdevice keyboard: no free usb port on bus usb-bus.0 (troupe's UHCI controller has 2 ports and no hub)"
    );
    assert_eq!(
        e(&["-usbdevice", "braille"]),
        "-usbdevice braille: could not add USB device 'braille' (troupe has tablet, mouse, keyboard)"
    );
    assert_eq!(
        e(&[
            "-device",
            "piix3-usb-uhci,id=u",
            "-device",
            "usb-kbd,bus=v.0"
        ]),
        "-device usb-kbd,bus=v.0: bus 'v.0' not found"
    );
    assert_eq!(
        e(&["-usb", "-device", "piix3-usb-uhci"]),
        "-device piix3-usb-uhci: troupe has one USB controller (piix3-usb-uhci); a second one is not supported"
    );
    assert_eq!(
        e(&["-usb", "-device", "e1000,addr=1.2"]),
        "-device e1000,addr=1.2: PCI slot 0x01 function 2 is not available, in use by piix3-usb-uhci"
    );
    // No USB hotplug yet: refused by name.
    let c = env.run(&["-usb"]);
    for driver in ["usb-tablet", "usb-kbd", "piix3-usb-uhci"] {
        let Err(err) = parse_device_add(driver, &c) else {
            panic!("{driver} was hot-plugged");
        };
        assert_eq!(
            err.to_string(),
            format!("{driver}: device '{driver}' is part of the board and cannot be hot-plugged")
        );
    }
}
