//! Devices, networks and displays on whole command lines: creation order, PCI slots, MACs,
//! references, and the hotplug parsers.

use super::*;

#[test]
fn pci_slots_follow_qemus_creation_order() {
    let env = Env::new();
    let disk = TempFile::new(1 << 20);
    // QEMU: -nic NICs, then -net NICs, then -device, then if=virtio disks.
    let c = env.run(&[
        "-drive",
        &format!("file={},if=virtio", disk.s()),
        "-device",
        "e1000,id=devnic",
        "-net",
        "nic,model=virtio",
        "-net",
        "user",
        "-nic",
        "user,model=e1000",
    ]);
    let summary: Vec<(Option<(u8, u8)>, &str)> = c
        .devices
        .iter()
        .map(|d| {
            let what = match &d.kind {
                DeviceKind::Nic {
                    model: NicModel::E1000,
                    ..
                } => "e1000",
                DeviceKind::Nic {
                    model: NicModel::VirtioNet,
                    ..
                } => "virtio-net",
                DeviceKind::VirtioBlk { .. } => "virtio-blk",
                _ => "other",
            };
            (d.addr, what)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some((3, 0)), "e1000"),
            (Some((4, 0)), "virtio-net"),
            (Some((5, 0)), "e1000"),
            (Some((6, 0)), "virtio-blk")
        ]
    );
    // MACs in the same order as QEMU gave them.
    let macs: Vec<u8> = c.devices.iter().take(3).map(|d| nic_of(d).2[5]).collect();
    assert_eq!(macs, vec![0x56, 0x57, 0x58]);
    assert_eq!(nic_of(&c.devices[0]).1, Some("__org.qemu.nic0"));
    assert_eq!(nic_of(&c.devices[1]).1, Some("#net0"));
    assert_eq!(nic_of(&c.devices[2]).1, None);
    assert_eq!(
        env.err(&["-device", "e1000", "-device", "virtio-rng-pci,addr=3"]),
        "-device virtio-rng-pci,addr=3: PCI slot 0x03 function 0 is not available, in use by e1000"
    );
}

#[test]
fn networks_and_their_checks() {
    let env = Env::new();
    let c = env.run(&[
        "-netdev",
        "user,id=n0,hostfwd=tcp::2222-:22,hostfwd=udp::5353-:53",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
        "-device",
        "e1000",
    ]);
    assert_eq!(c.netdevs.len(), 1);
    assert_eq!(
        nic_of(&c.devices[0]),
        (
            NicModel::VirtioNet,
            Some("n0"),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        )
    );
    assert_eq!(nic_of(&c.devices[1]).2[5], 0x57);
    assert!(c.warnings.is_empty());
    let c = env.run(&["-netdev", "user,id=lonely"]);
    assert_eq!(c.warnings, vec!["netdev lonely has no peer"]);
    assert!(c.devices.is_empty());
    assert_eq!(
        env.err(&["-device", "virtio-net-pci,netdev=zz"]),
        "-device virtio-net-pci,netdev=zz: netdev 'zz' not found"
    );
    assert_eq!(
        env.err(&["-netdev", "user,id=n", "-netdev", "user,id=n"]),
        "-netdev user,id=n: duplicate netdev id 'n'"
    );
    assert_eq!(
        env.err(&["-netdev", "user,id=n,hostfwd=tcp::22"]),
        "-netdev user,id=n,hostfwd=tcp::22: invalid host forwarding rule 'tcp::22' (Bad host port separator)"
    );
    assert_eq!(
        env.err(&["-netdev", "user"]),
        "-netdev user: parameter 'id' is missing"
    );
    let c = env.run(&["-net", "none"]);
    assert!(c.netdevs.is_empty() && c.devices.is_empty());
    let c = env.run(&["-nic", "none"]);
    assert!(c.netdevs.is_empty());
    let c = env.run(&["-net", "nic"]);
    assert_eq!(c.warnings, vec!["hub 0 is not connected to host network"]);
    assert_eq!(
        env.err(&["-net", "nic", "-net", "user", "-net", "nic"]),
        "-net nic: hub 0 would connect 2 NIC(s) and 1 backend(s); troupe connects a NIC to exactly one \
         backend (use -netdev and -device)"
    );
}

#[test]
fn guestfwd_chardevs_are_created_and_checked() {
    let env = Env::new();
    let c = env.run(&[
        "-chardev",
        "socket,id=c0,path=/tmp/g.sock",
        "-netdev",
        "user,id=n,guestfwd=tcp:10.0.2.100:80-chardev:c0,guestfwd=tcp::81-tcp:127.0.0.1:8080",
        "-device",
        "e1000,netdev=n",
    ]);
    let ids: Vec<&str> = c.chardevs.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, vec!["c0", "#guestfwd0"]);
    assert_eq!(
        env.err(&["-netdev", "user,id=n,guestfwd=tcp:10.0.2.100:80-chardev:zz"]),
        "-netdev user,id=n,guestfwd=tcp:10.0.2.100:80-chardev:zz: chardev 'zz' not found"
    );
}

#[test]
fn virtconsole_on_virtio_serial() {
    let env = Env::new();
    let c = env.run(&[
        "-chardev",
        "pty,id=con0",
        "-device",
        "virtio-serial-pci,id=vs0",
        "-device",
        "virtconsole,chardev=con0,bus=vs0.0",
    ]);
    assert_eq!(
        c.devices.last().unwrap().kind,
        DeviceKind::VirtConsole {
            chardev: "con0".into(),
            controller: 1
        }
    );
    assert_eq!(
        env.err(&["-chardev", "null,id=x", "-device", "virtconsole,chardev=x", "-device", "virtio-serial-pci"]),
        "-device virtconsole,chardev=x: no virtio-serial bus for virtconsole (add -device virtio-serial-pci before it)"
    );
    assert_eq!(
        env.err(&[
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtconsole,chardev=nope"
        ]),
        "-device virtconsole,chardev=nope: chardev 'nope' not found"
    );
}

#[test]
fn device_errors_and_ids() {
    let env = Env::new();
    assert_eq!(
        env.err(&["-device", "scsi-hd"]),
        "-device scsi-hd: device 'scsi-hd' is unknown or not supported by troupe (see -device help)"
    );
    assert_eq!(
        env.err(&[
            "-device",
            "virtio-rng-pci,id=r",
            "-device",
            "virtio-rng-pci,id=r"
        ]),
        "-device virtio-rng-pci,id=r: duplicate device id 'r'"
    );
    let c = env.run(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    assert!(c.devices.iter().any(|d| d.kind
        == DeviceKind::IsaDebugExit {
            iobase: 0xf4,
            iosize: 4
        }
        && d.addr.is_none()));
    assert_eq!(
        env.err(&[
            "-device",
            "e1000,bootindex=2",
            "-device",
            "virtio-net-pci,bootindex=2"
        ]),
        "-device virtio-net-pci,bootindex=2: bootindex 2 is already used by another device"
    );
}

#[test]
fn display_vnc_vga_keymap() {
    let env = Env::new();
    let c = env.run(&[
        "-vnc",
        ":1,password=on,share=force-shared",
        "-k",
        "de",
        "-vga",
        "none",
    ]);
    let v = c.vnc.unwrap();
    assert_eq!(
        (v.listen.port, v.password, v.share),
        (5901, true, VncShare::ForceShared)
    );
    assert_eq!(
        (c.display, c.keymap.as_str(), c.vga),
        (DisplayKind::Default, "de", VgaKind::None)
    );
    let c = env.run(&["-display", "vnc=127.0.0.1:2"]);
    assert_eq!(c.display, DisplayKind::Vnc);
    assert_eq!(
        c.vnc.unwrap().listen,
        SocketAddrSpec {
            host: "127.0.0.1".into(),
            port: 5902
        }
    );
    let c = env.run(&["-display", "none", "-vnc", ":0"]);
    assert_eq!(c.display, DisplayKind::None);
    assert!(c.vnc.is_some());
    assert!(env.run(&["-vnc", ":1", "-vnc", "none"]).vnc.is_none());
    assert!(env.run(&["-vnc", "none", "-vnc", ":1"]).vnc.is_some());
    // QEMU starts a server for each -vnc: the second cannot bind the same address.
    assert_eq!(
        env.err(&["-vnc", "127.0.0.1:5", "-vnc", "127.0.0.1:5"]),
        "-vnc 127.0.0.1:5: Failed to find an available port: Address already in use"
    );
    assert_eq!(
        env.err(&["-vnc", "127.0.0.1:5", "-vnc", ":6"]),
        "-vnc :6: troupe serves one VNC display, and '127.0.0.1:5' is already given"
    );
    assert_eq!(
        env.err(&["-display", "gtk"]),
        "-display gtk: display 'gtk' is not available in troupe: it has no GUI (use -vnc or -display none)"
    );
    assert_eq!(
        env.err(&["-vga", "cirrus"]),
        "-vga cirrus: VGA type 'cirrus' is not supported by troupe (std, none)"
    );
    assert_eq!(
        env.err(&["-k", "xx"]),
        "-k xx: unknown keyboard layout 'xx' (see -k help)"
    );
}

fn base_config(env: &Env) -> VmConfig {
    let disk = TempFile::new(1 << 20);
    let c = env.run(&[
        "-drive",
        &format!("file={},if=none,id=spare", disk.s()),
        "-netdev",
        "user,id=n1",
        "-netdev",
        "user,id=n2",
        "-device",
        "e1000,netdev=n1",
        "-chardev",
        "null,id=c1",
        "-device",
        "virtio-serial-pci",
    ]);
    drop(disk);
    c
}

#[test]
fn device_add_uses_the_same_rules_as_the_command_line() {
    let env = Env::new();
    let c = base_config(&env);
    let DeviceAdd::Device(d) = parse_device_add("virtio-net-pci,netdev=n2,id=hot0", &c).unwrap()
    else {
        panic!()
    };
    // e1000 at 3 (MAC :56), virtio-serial at 4: the next slot is 5, the next MAC :57.
    assert_eq!(d.addr, Some((5, 0)));
    assert_eq!(
        nic_of(&d),
        (
            NicModel::VirtioNet,
            Some("n2"),
            [0x52, 0x54, 0, 0x12, 0x34, 0x57]
        )
    );
    let DeviceAdd::Device(d) = parse_device_add("virtio-blk-pci,drive=spare", &c).unwrap() else {
        panic!()
    };
    assert!(matches!(d.kind, DeviceKind::VirtioBlk { .. }));
    assert!(parse_device_add("virtconsole,chardev=c1", &c).is_ok());
    assert_eq!(
        parse_device_add("virtio-net-pci,netdev=n1", &c)
            .unwrap_err()
            .to_string(),
        "virtio-net-pci,netdev=n1: netdev 'n1' is already in use by another NIC"
    );
    assert_eq!(
        parse_device_add("virtconsole,chardev=zz", &c)
            .unwrap_err()
            .to_string(),
        "virtconsole,chardev=zz: chardev 'zz' not found"
    );
    assert!(matches!(parse_device_add("help", &c), Ok(DeviceAdd::Help(h)) if h.contains("e1000")));
    assert!(
        matches!(parse_device_add("e1000,help", &c), Ok(DeviceAdd::Help(h)) if h.starts_with("e1000 options"))
    );
}

#[test]
fn netdev_add_checks_ids_and_names_guestfwd_chardevs() {
    let env = Env::new();
    let c = env.run(&[
        "-netdev",
        "user,id=n1,guestfwd=tcp:10.0.2.100:1-tcp:127.0.0.1:2",
        "-device",
        "e1000,netdev=n1",
    ]);
    assert_eq!(
        parse_netdev_add("user,id=n1", &c).unwrap_err().to_string(),
        "user,id=n1: duplicate netdev id 'n1'"
    );
    let (nd, extra) =
        parse_netdev_add("user,id=n2,guestfwd=tcp:10.0.2.100:1-tcp:127.0.0.1:3", &c).unwrap();
    assert_eq!(extra[0].id, "#guestfwd1");
    let NetdevKind::User(u) = nd.kind else {
        panic!()
    };
    assert_eq!(u.guestfwd[0].2, "#guestfwd1");
    // Two new chardevs keep distinct names, each rule pointing at its own.
    let (nd, extra) = parse_netdev_add(
        "user,id=n3,guestfwd=tcp:10.0.2.100:1-tcp:127.0.0.1:3,guestfwd=tcp:10.0.2.101:1-null",
        &c,
    )
    .unwrap();
    let ids: Vec<&str> = extra.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, vec!["#guestfwd1", "#guestfwd2"]);
    let NetdevKind::User(u) = nd.kind else {
        panic!()
    };
    let used: Vec<&str> = u.guestfwd.iter().map(|g| g.2.as_str()).collect();
    assert_eq!(used, vec!["#guestfwd1", "#guestfwd2"]);
    assert_eq!(
        parse_netdev_add("user,id=n4,guestfwd=tcp:10.0.2.100:1-chardev:zz", &c)
            .unwrap_err()
            .to_string(),
        "user,id=n4,guestfwd=tcp:10.0.2.100:1-chardev:zz: chardev 'zz' not found"
    );
}
