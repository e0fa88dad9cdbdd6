//! The command lines libvirt 9.0 writes (`shared/reference/libvirt-9.0.md`, and what it
//! wrote for troupe itself): every option taken and turned into the machine it describes.

use super::*;

/// libvirt's command line for a domain with an IDE CD-ROM, a qcow2 virtio disk, a user
/// NIC, a pty serial port and VNC (JSON `-object`/`-blockdev`/`-device`, as it writes them
/// for QEMU 7.2).
fn libvirt_args(iso: &str, disk: &str, key: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let mut add = |opt: &str, arg: String| {
        v.push(opt.to_string());
        if !arg.is_empty() {
            v.push(arg);
        }
    };
    add("-name", "guest=tv1,debug-threads=on".into());
    add("-S", String::new());
    add(
        "-object",
        format!(r#"{{"qom-type":"secret","id":"masterKey0","format":"raw","file":"{key}"}}"#),
    );
    add(
        "-machine",
        "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram".into(),
    );
    add("-accel", "kvm".into());
    add("-cpu", "qemu64".into());
    add("-m", "256".into());
    add(
        "-object",
        r#"{"qom-type":"memory-backend-ram","id":"pc.ram","size":268435456}"#.into(),
    );
    add("-overcommit", "mem-lock=off".into());
    add("-smp", "2,sockets=2,cores=1,threads=1".into());
    add("-uuid", "f82ac58c-dd78-4a66-be35-7d8cda609205".into());
    add("-no-user-config", String::new());
    add("-nodefaults", String::new());
    add(
        "-chardev",
        "socket,id=charmonitor,fd=29,server=on,wait=off".into(),
    );
    add("-mon", "chardev=charmonitor,id=monitor,mode=control".into());
    add("-rtc", "base=utc".into());
    add("-no-shutdown", String::new());
    add("-boot", "strict=on".into());
    add(
        "-blockdev",
        format!(
            r#"{{"driver":"file","filename":"{iso}","node-name":"libvirt-2-storage","auto-read-only":true,"discard":"unmap"}}"#
        ),
    );
    add(
        "-blockdev",
        r#"{"node-name":"libvirt-2-format","read-only":true,"driver":"raw","file":"libvirt-2-storage"}"#.into(),
    );
    add(
        "-device",
        r#"{"driver":"ide-cd","bus":"ide.1","unit":0,"drive":"libvirt-2-format","id":"ide0-1-0","bootindex":1}"#.into(),
    );
    add(
        "-blockdev",
        format!(
            r#"{{"driver":"file","filename":"{disk}","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}}"#
        ),
    );
    add(
        "-blockdev",
        r#"{"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null}"#.into(),
    );
    add(
        "-device",
        r#"{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x4","drive":"libvirt-1-format","id":"virtio-disk0"}"#.into(),
    );
    add("-netdev", "user,id=hostnet0".into());
    add(
        "-device",
        r#"{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:27:36:e2","bus":"pci.0","addr":"0x3"}"#.into(),
    );
    add("-chardev", "pty,id=charserial0".into());
    add(
        "-device",
        r#"{"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0}"#.into(),
    );
    add("-audiodev", r#"{"id":"audio1","driver":"none"}"#.into());
    add("-vnc", "127.0.0.1:0,audiodev=audio1".into());
    add(
        "-device",
        r#"{"driver":"VGA","id":"video0","vgamem_mb":16,"bus":"pci.0","addr":"0x2"}"#.into(),
    );
    add("-msg", "timestamp=on".into());
    v
}

#[test]
fn libvirts_command_line_builds_the_domain_it_describes() {
    let env = Env::new();
    let iso = TempFile::new(1 << 20);
    let disk = TempFile::new(1 << 20);
    let key = TempFile::new(32);
    let args = libvirt_args(&iso.s(), &disk.s(), &key.s());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = env.run(&args);
    assert_eq!(c.name.as_deref(), Some("tv1"));
    assert!(c.debug_threads && c.msg_timestamp && c.start_paused && c.no_shutdown);
    assert_eq!(c.memory, 256 << 20);
    assert!(!c.machine.dump_guest_core);
    assert_eq!(c.smp.cpus, 2);
    assert!(c.boot_order.strict);
    // The CD-ROM is the secondary master, first to boot; the disk a virtio-blk at slot 4.
    let cd = c
        .drives
        .iter()
        .find(|d| d.id == "libvirt-2-format")
        .unwrap();
    assert_eq!(
        (cd.interface, cd.index, cd.media, cd.readonly, cd.bootindex),
        (DriveInterface::Ide, Some(2), Media::Cdrom, true, Some(1))
    );
    let hd = c
        .drives
        .iter()
        .find(|d| d.id == "libvirt-1-format")
        .unwrap();
    assert_eq!(
        (hd.interface, hd.format, hd.readonly, hd.discard),
        (DriveInterface::None, Some(ImageFormat::Qcow2), false, true)
    );
    assert_eq!(c.drives.len(), 2, "no default CD-ROM next to libvirt's");
    let blk = c
        .devices
        .iter()
        .find(|d| d.id.as_deref() == Some("virtio-disk0"))
        .unwrap();
    assert_eq!(blk.addr, Some((4, 0)));
    let nic = c
        .devices
        .iter()
        .find(|d| d.id.as_deref() == Some("net0"))
        .unwrap();
    assert_eq!(nic.addr, Some((3, 0)));
    assert_eq!(
        nic_of(nic),
        (
            NicModel::VirtioNet,
            Some("hostnet0"),
            [0x52, 0x54, 0, 0x27, 0x36, 0xe2]
        )
    );
    assert_eq!(c.devices.len(), 2);
    assert_eq!(c.vga, VgaKind::Std);
    assert_eq!(c.serials, vec![CharBackend::Named("charserial0".into())]);
    assert_eq!(c.monitors.len(), 1);
    assert_eq!(c.monitors[0].mode, MonitorMode::Control);
    let mon = c.chardevs.iter().find(|d| d.id == "charmonitor").unwrap();
    assert_eq!(
        mon.backend,
        CharBackend::ListenerFd {
            fd: 29,
            wait: false
        }
    );
    let vnc = c.vnc.unwrap();
    assert_eq!(
        (
            vnc.listen.host.as_str(),
            vnc.display,
            vnc.audiodev.as_deref()
        ),
        ("127.0.0.1", 0, Some("audio1"))
    );
    // SeaBIOS is told to boot the CD-ROM and nothing else.
    let cfg = env.run(&args);
    assert_eq!(
        crate::platform::fw_cfg::bootorder(&cfg).as_deref(),
        Some("/pci@i0cf8/ide@1,1/drive@1/disk@0\nHALT")
    );
}

#[test]
fn libvirt_options_troupe_cannot_honour_are_refused_by_name() {
    let env = Env::new();
    let e = |args: &[&str]| env.err(args);
    assert_eq!(
        e(&["-machine", "pc,memory-backend=ram0"]),
        "-machine pc,memory-backend=ram0: memory backend 'ram0' not found (create it with -object memory-backend-ram,id=ram0,size=...)"
    );
    assert_eq!(
        e(&["-m", "128", "-object", "memory-backend-ram,id=r,size=256M", "-machine", "memory-backend=r"]),
        "-machine memory-backend=r: memory backend 'r' has 268435456 bytes but -m asks for 134217728"
    );
    // Without -m the backend's size is the RAM.
    let c = env.run(&[
        "-object",
        "memory-backend-ram,id=r,size=64M",
        "-machine",
        "memory-backend=r",
    ]);
    assert_eq!(c.memory, 64 << 20);
    assert_eq!(
        e(&["-object", "memory-backend-ram,id=r,size=64M"]),
        "-object memory-backend-ram,id=r,size=64M: memory backend 'r' is not used by -machine memory-backend= or a -device pc-dimm (troupe has no NUMA nodes to take it)"
    );
    assert_eq!(
        e(&["-vnc", ":0,audiodev=a"]),
        "-vnc audiodev=a: audiodev 'a' not found"
    );
    assert_eq!(
        e(&["-audiodev", "pa,id=a"]),
        "-audiodev pa,id=a: audio driver 'pa' is not supported by troupe (it has no sound card; only driver=none)"
    );
    assert_eq!(
        e(&["-msg", "timestamp=on,guest-name=on"]),
        "-msg timestamp=on,guest-name=on: guest-name=on is not supported by troupe"
    );
    assert_eq!(
        e(&["-device", "VGA,vgamem_mb=32"]),
        "-device VGA,vgamem_mb=32: vgamem_mb=32 is not supported by troupe (its VGA has 16 MiB)"
    );
    assert_eq!(
        e(&["-device", "VGA,addr=5"]),
        "-device VGA,addr=5: troupe's VGA sits at PCI slot 2 (addr=0x2)"
    );
    assert_eq!(
        e(&["-global", "kvm-pit.lost_tick_policy=delay"]),
        "-global kvm-pit.lost_tick_policy=delay: -global for driver 'kvm-pit' is not supported by troupe (only -device drivers other than isa-serial, ide-cd, ide-hd)"
    );
    assert_eq!(
        e(&["-global", "virtio-blk-pci.foo=1"]),
        "-global virtio-blk-pci.foo=1: driver 'virtio-blk-pci' has no property 'foo' (see -device virtio-blk-pci,help)"
    );
    assert_eq!(
        e(&["-device", "isa-serial,index=1"]),
        "-device isa-serial,index=1: serial port index 1: index 0 must be created first"
    );
    let img = TempFile::new(1 << 20);
    let ro = format!("driver=file,node-name=f,filename={},read-only=on", img.s());
    assert_eq!(
        e(&["-blockdev", &ro, "-device", "ide-hd,drive=f"]),
        "-device ide-hd,drive=f: drive 'f' is read-only: an IDE hard disk cannot be (use ide-cd or virtio-blk-pci)"
    );
    // A qcow2 with a backing file cannot be opened without it.
    let q = TempFile::new(1 << 16);
    let mut header = vec![0u8; 16];
    header[15] = 0x70;
    std::fs::write(q.path(), &header).unwrap();
    let file = format!(
        r#"{{"driver":"file","filename":"{}","node-name":"s"}}"#,
        q.s()
    );
    let fmt = r#"{"node-name":"q","driver":"qcow2","file":"s","backing":null}"#;
    assert_eq!(
        e(&["-blockdev", &file, "-blockdev", fmt]),
        format!("-blockdev {fmt}: \"backing\": null is not supported by troupe for an image with a backing file ({})", q.s())
    );
    let fmt = r#"{"node-name":"q","driver":"raw","file":"s","backing":null}"#;
    assert!(e(&["-blockdev", &file, "-blockdev", fmt]).ends_with(
        "parameter 'backing': only strings, numbers, booleans and objects are supported"
    ));
}

#[test]
fn globals_reach_every_device_of_their_driver_unless_it_says_otherwise() {
    let env = Env::new();
    let img = TempFile::new(1 << 20);
    let d0 = format!("if=none,id=d0,format=raw,file={}", img.s());
    let d1 = format!("if=none,id=d1,format=raw,file={},readonly=on", img.s());
    let c = env.run(&[
        "-device",
        "virtio-net-pci,id=a",
        "-global",
        "virtio-net-pci.mac=52:54:00:00:00:01",
        "-global",
        "driver=virtio-blk-pci,property=serial,value=SN0",
        "-device",
        "virtio-net,id=b,mac=52:54:00:00:00:02",
        "-drive",
        &d0,
        "-drive",
        &d1,
        "-device",
        "virtio-blk-pci,drive=d0",
        "-device",
        "virtio-blk-pci,drive=d1,serial=OWN",
    ]);
    let nics: Vec<_> = c.devices.iter().filter(|d| d.id.is_some()).collect();
    assert_eq!(nic_of(nics[0]).2, [0x52, 0x54, 0, 0, 0, 1]);
    assert_eq!(nic_of(nics[1]).2, [0x52, 0x54, 0, 0, 0, 2]);
    let serials: Vec<Option<String>> = c
        .devices
        .iter()
        .filter_map(|d| match &d.kind {
            DeviceKind::VirtioBlk { serial, .. } => Some(serial.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(serials, [Some("SN0".to_string()), Some("OWN".to_string())]);
    // The one VGA: only its own value.
    env.run(&["-global", "VGA.vgamem_mb=16"]);
    assert!(env
        .err(&["-global", "VGA.vgamem_mb=8"])
        .ends_with("vgamem_mb=8 is not supported by troupe (its VGA has 16 MiB)"));
}

#[test]
fn board_devices_cannot_be_hotplugged() {
    let env = Env::new();
    let c = env.run(&[]);
    for (spec, driver) in [
        ("isa-serial", "isa-serial"),
        ("VGA", "VGA"),
        ("ide-cd,drive=ide1-cd0", "ide-cd"),
    ] {
        let Err(e) = parse_device_add(spec, &c) else {
            panic!("{spec} was hot-plugged");
        };
        assert_eq!(
            e.to_string(),
            format!("{spec}: device '{driver}' is part of the board and cannot be hot-plugged")
        );
    }
}
