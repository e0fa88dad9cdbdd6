//! Drives on whole command lines: every spelling, IDE indexes, file checks, virtio-blk.

use super::*;

#[test]
fn drives_of_every_spelling() {
    let env = Env::new();
    let disk = TempFile::new(1 << 20);
    let iso = TempFile::new(2048);
    let c = env.run(&[&disk.s(), "-cdrom", &iso.s(), "-hdb", &disk.s()]);
    let ids: Vec<(&str, Option<u32>, Media)> = c
        .drives
        .iter()
        .map(|d| (d.id.as_str(), d.index, d.media))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("ide0-hd0", Some(0), Media::Disk),
            ("ide1-cd0", Some(2), Media::Cdrom),
            ("ide0-hd1", Some(1), Media::Disk)
        ]
    );
    assert!(c.drives[1].readonly);
    // An escaped comma in a file name.
    let dir = std::env::temp_dir().join(format!("troupe-cli-{}-a,b", std::process::id()));
    std::fs::write(&dir, b"x").unwrap();
    let escaped = dir.display().to_string().replace(',', ",,");
    let c = env.run(&[
        "-drive",
        &format!("file={escaped},format=raw,if=none,id=d0"),
    ]);
    assert_eq!(c.drives[0].file.as_deref(), Some(dir.as_path()));
    assert_eq!(c.drives[0].format, Some(ImageFormat::Raw));
    std::fs::remove_file(&dir).unwrap();
    // A disk at index 2 replaces the default CD-ROM.
    let c = env.run(&["-hdc", &disk.s()]);
    assert_eq!(c.drives.len(), 1);
    assert_eq!(c.drives[0].id, "ide1-hd0");
}

#[test]
fn drive_errors_name_the_option() {
    let env = Env::new();
    let disk = TempFile::new(1 << 20);
    let empty = TempFile::new(0);
    assert_eq!(
        env.err(&["-hda", "/nope.img"]),
        "-hda /nope.img: could not open: No such file or directory"
    );
    assert_eq!(
        env.err(&["-cdrom", &empty.s()]),
        format!("-cdrom {}: CD-ROM image is empty (0 bytes)", empty.s())
    );
    assert_eq!(
        env.err(&[&disk.s(), "-hda", &disk.s()]),
        format!(
            "-hda {}: drive with bus=0, unit=0 (index=0) exists",
            disk.s()
        )
    );
    assert_eq!(
        env.err(&["-hdc", &disk.s(), "-cdrom", &disk.s()]),
        format!(
            "-cdrom {}: drive with bus=1, unit=0 (index=2) exists",
            disk.s()
        )
    );
    assert_eq!(
        env.err(&["-drive", "file=/nope,if=none,id=x"]),
        "-drive file=/nope,if=none,id=x: could not open: No such file or directory"
    );
    assert_eq!(
        env.err(&["-drive", "if=ide,media=disk"]),
        "-drive if=ide,media=disk: a disk drive needs file= (only a CD-ROM drive may be empty)"
    );
    // An empty CD-ROM drive is fine.
    let c = env.run(&["-drive", "if=ide,media=cdrom,index=3"]);
    assert!(c
        .drives
        .iter()
        .any(|d| d.id == "ide1-cd1" && d.file.is_none()));
}

#[test]
fn snapshot_marks_drive_family_drives() {
    let env = Env::new();
    let disk = TempFile::new(1 << 20);
    let c = env.run(&[
        "-snapshot",
        "-hda",
        &disk.s(),
        "-blockdev",
        &format!("driver=file,node-name=f,filename={}", disk.s()),
    ]);
    assert!(c.snapshot);
    let hda = c.drives.iter().find(|d| d.id == "ide0-hd0").unwrap();
    let blk = c.drives.iter().find(|d| d.id == "f").unwrap();
    assert!(hda.snapshot && !blk.snapshot);
}

#[test]
fn virtio_blk_needs_an_unused_if_none_drive() {
    let env = Env::new();
    let disk = TempFile::new(1 << 20);
    let d = format!(
        "file={},if=none,id=d0,format=qcow2,cache=none,aio=native",
        disk.s()
    );
    let c = env.run(&[
        "-smp",
        "2",
        "-drive",
        &d,
        "-device",
        "virtio-blk-pci,drive=d0,bootindex=1",
    ]);
    let blk = c
        .devices
        .iter()
        .find(|x| matches!(x.kind, DeviceKind::VirtioBlk { .. }))
        .unwrap();
    assert_eq!(
        blk.kind,
        DeviceKind::VirtioBlk {
            drive: "d0".into(),
            num_queues: 2,
            serial: None,
            bootindex: Some(1)
        }
    );
    let d0: &DriveConfig = c.drives.iter().find(|x| x.id == "d0").unwrap();
    assert_eq!((d0.bootindex, d0.cache), (Some(1), CacheMode::None));
    assert_eq!(
        env.err(&["-device", "virtio-blk-pci,drive=zz"]),
        "-device virtio-blk-pci,drive=zz: drive 'zz' not found"
    );
    assert_eq!(
        env.err(&["-hda", &disk.s(), "-device", "virtio-blk-pci,drive=ide0-hd0"]),
        "-device virtio-blk-pci,drive=ide0-hd0: drive 'ide0-hd0' is attached by if=ide; use if=none to attach it with -device"
    );
    assert_eq!(
        env.err(&[
            "-drive",
            &d,
            "-device",
            "virtio-blk-pci,drive=d0",
            "-device",
            "virtio-blk-pci,drive=d0"
        ]),
        "-device virtio-blk-pci,drive=d0: drive 'd0' is already in use by another device"
    );
    // A -blockdev node serves too.
    let c = env.run(&[
        "-blockdev",
        &format!(
            "driver=qcow2,node-name=disk0,file.driver=file,file.filename={}",
            disk.s()
        ),
        "-device",
        "virtio-blk-pci,drive=disk0",
    ]);
    assert!(c
        .devices
        .iter()
        .any(|x| matches!(&x.kind, DeviceKind::VirtioBlk { drive, .. } if drive == "disk0")));
}

#[test]
fn json_device_and_blockdev_arguments_mean_what_their_option_strings_mean() {
    let env = Env::new();
    let disk = TempFile::new(1 << 20);
    let strings = env.run(&[
        "-blockdev",
        &format!("driver=file,node-name=f0,filename={}", disk.s()),
        "-blockdev",
        "driver=raw,node-name=disk0,file=f0,read-only=on",
        "-device",
        "virtio-blk-pci,drive=disk0,id=vd0,bootindex=1",
    ]);
    let json = env.run(&[
        "-blockdev",
        &format!(
            r#"{{"driver": "file", "node-name": "f0", "filename": "{}"}}"#,
            disk.s()
        ),
        "-blockdev",
        r#"{"node-name": "disk0", "driver": "raw", "file": "f0", "read-only": true}"#,
        "-device",
        r#"{"driver": "virtio-blk-pci", "drive": "disk0", "id": "vd0", "bootindex": 1}"#,
    ]);
    assert_eq!(json.drives, strings.drives);
    assert_eq!(json.devices, strings.devices);
    // Nested objects are the dotted keys.
    let nested = env.run(&[
        "-blockdev",
        &format!(
            r#"{{"driver": "raw", "node-name": "disk0", "file": {{"driver": "file", "filename": "{}"}}}}"#,
            disk.s()
        ),
        "-device",
        r#"{"driver": "virtio-blk-pci", "drive": "disk0"}"#,
    ]);
    assert!(nested.drives.iter().any(|d| d.id == "disk0"));
    assert_eq!(
        env.err(&["-device", r#"{"driver": "virtio-rng-pci", "x": [1]}"#]),
        r#"-device {"driver": "virtio-rng-pci", "x": [1]}: parameter 'x': only strings, numbers, booleans and objects are supported"#
    );
    assert!(env
        .err(&["-device", r#"{"driver": "#])
        .starts_with(r#"-device {"driver": : invalid JSON object: "#));
}

#[test]
fn drive_add_takes_if_none_drives_with_the_drive_rules() {
    use crate::cli::hotplug::{parse_drive_add, DriveAddError};
    let disk = TempFile::new(1 << 20);
    let d = parse_drive_add(
        &format!("file={},if=none,id=d1,format=qcow2,cache=none", disk.s()),
        &[],
    )
    .unwrap();
    assert_eq!(
        (d.id.as_str(), d.interface, d.format, d.cache),
        (
            "d1",
            DriveInterface::None,
            Some(ImageFormat::Qcow2),
            CacheMode::None
        )
    );
    // No id: the next free noneN.
    let taken = ["none0".to_string()];
    let d = parse_drive_add(&format!("file={},if=none", disk.s()), &taken).unwrap();
    assert_eq!(d.id, "none1");
    assert_eq!(
        parse_drive_add(&format!("file={},if=none,id=none0", disk.s()), &taken),
        Err(DriveAddError::Duplicate("none0".into()))
    );
    // QEMU's interface numbers: the PC hot-adds if=none only.
    assert_eq!(
        parse_drive_add(&format!("file={},if=virtio", disk.s()), &[]),
        Err(DriveAddError::Interface(7))
    );
    assert_eq!(
        parse_drive_add(&format!("file={}", disk.s()), &[]),
        Err(DriveAddError::Interface(1))
    );
    assert_eq!(
        parse_drive_add("file=/nonexistent/x.img,if=none", &[])
            .unwrap_err()
            .to_string(),
        "could not open: No such file or directory"
    );
    assert!(parse_drive_add("if=none,id=e,colour=red", &[])
        .unwrap_err()
        .to_string()
        .contains("colour"));
}
