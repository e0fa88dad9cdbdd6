//! Booting through SeaBIOS on the PC platform, and the firmware tables troupe gives guests.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{code, TempDir, Vm};

#[test]
fn seabios_prints_its_banner_and_no_bootable_device_on_serial() {
    let mut r = Vm::troupe(&["-nographic", "-m", "256"]).spawn();
    let out = r.expect_stdout("No bootable device", Duration::from_secs(60));
    assert!(out.contains("SeaBIOS (version"), "{out}");
    r.kill();
}

#[test]
fn acpi_tables_decompile_and_the_dsdt_runs() {
    let dir = TempDir::new("acpi");
    let k = common::guest("hello");
    let (st, out, err) = Vm::troupe(&[
        "-nodefaults",
        "-serial",
        "stdio",
        "-smp",
        "4,sockets=2,cores=2,threads=1",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-dump-acpi",
        dir.0.to_str().unwrap(),
        "-kernel",
        k.to_str().unwrap(),
    ])
    .run(Duration::from_secs(60));
    assert_eq!(code(st), 1, "{out}{err}");
    let tables = ["apic.dat", "dsdt.dat", "facp.dat", "facs.dat", "rsdt.dat", "xsdt.dat"];
    let iasl = Command::new("iasl")
        .arg("-d")
        .args(tables)
        .current_dir(&dir.0)
        .output()
        .expect("iasl (Debian package acpica-tools)");
    let text = String::from_utf8_lossy(&iasl.stdout).to_string()
        + &String::from_utf8_lossy(&iasl.stderr);
    assert!(iasl.status.success() && !text.contains("Error"), "{text}");
    let madt = std::fs::read_to_string(dir.path("apic.dsl")).unwrap();
    assert_eq!(madt.matches("Subtable Type : 00 [Processor Local APIC]").count(), 4, "{madt}");
    let exec = Command::new("acpiexec")
        .args(["-b", "evaluate \\_S5; evaluate \\_SB.PCI0._PRT"])
        .arg("dsdt.dat")
        .current_dir(&dir.0)
        .output()
        .expect("acpiexec (Debian package acpica-tools)");
    let text = String::from_utf8_lossy(&exec.stdout).to_string()
        + &String::from_utf8_lossy(&exec.stderr);
    assert!(!text.contains("Exception") && !text.contains("Error"), "{text}");
    assert!(text.contains("Evaluation of \\_S5 returned"), "{text}");
    assert!(text.contains("[Package] Contains 128 Elements"), "{text}");
}

/// Bad input: status 1 and exactly one line naming the problem.
fn refused(args: &[&str], needle: &str) {
    let (st, out, err) = Vm::troupe(args).run(Duration::from_secs(20));
    assert_eq!(code(st), 1, "{args:?}: {out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got:\n{err}");
    assert!(lines[0].contains(needle), "{args:?}: {err}");
}

#[test]
fn bad_firmware_and_media_are_refused_clearly() {
    let dir = TempDir::new("badfw");
    let small = dir.path("bios.bin");
    std::fs::write(&small, vec![0u8; 1000]).unwrap();
    refused(&["-bios", small.to_str().unwrap()], "bios.bin");
    let empty = dir.path("empty.iso");
    std::fs::write(&empty, b"").unwrap();
    refused(&["-cdrom", empty.to_str().unwrap()], "empty.iso");
    refused(&["-cdrom", "/nonexistent.iso"], "/nonexistent.iso");
    refused(&["-hda", "/nonexistent.img"], "/nonexistent.img");
    refused(&["-boot", "order=cxz"], "x");
}
