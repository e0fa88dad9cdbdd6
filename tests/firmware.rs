//! Booting through SeaBIOS on the PC platform, and the firmware tables troupe gives guests.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{code, TempDir, Vm};

#[test]
fn seabios_prints_its_banner_and_no_bootable_device_on_serial() {
    // `-net none`: QEMU's default network (an e1000 whose iPXE ROM boots next) is not
    // what this test is about.
    let mut r = Vm::troupe(&["-nographic", "-m", "256", "-net", "none"]).spawn();
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
    let tables = [
        "apic.dat", "dsdt.dat", "facp.dat", "facs.dat", "rsdt.dat", "xsdt.dat",
    ];
    let iasl = Command::new("iasl")
        .arg("-d")
        .args(tables)
        .current_dir(&dir.0)
        .output()
        .expect("iasl (Debian package acpica-tools)");
    let text =
        String::from_utf8_lossy(&iasl.stdout).to_string() + &String::from_utf8_lossy(&iasl.stderr);
    assert!(iasl.status.success() && !text.contains("Error"), "{text}");
    let madt = std::fs::read_to_string(dir.path("apic.dsl")).unwrap();
    assert_eq!(
        madt.matches("Subtable Type : 00 [Processor Local APIC]")
            .count(),
        4,
        "{madt}"
    );
    let exec = Command::new("acpiexec")
        // Slot 2 (no VGA with -nodefaults) is hotpluggable: its eject method and the
        // PCI hotplug GPE handler run against acpiexec's simulated ports.
        .args([
            "-b",
            "evaluate \\_S5; evaluate \\_SB.PCI0._PRT; evaluate \\_SB.PCI0.S10._EJ0 1; \
             evaluate \\_GPE._E01",
        ])
        .arg("dsdt.dat")
        .current_dir(&dir.0)
        .output()
        .expect("acpiexec (Debian package acpica-tools)");
    let text =
        String::from_utf8_lossy(&exec.stdout).to_string() + &String::from_utf8_lossy(&exec.stderr);
    assert!(
        !text.contains("Exception") && !text.contains("Error"),
        "{text}"
    );
    assert!(text.contains("Evaluation of \\_S5 returned"), "{text}");
    assert!(text.contains("[Package] Contains 128 Elements"), "{text}");
    assert!(
        text.contains("Evaluating \\_SB.PCI0.S10._EJ0") && text.contains("Evaluating \\_GPE._E01"),
        "{text}"
    );
    assert!(
        !text.contains("not found") && !text.contains("AE_"),
        "{text}"
    );
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

// ---- GRUB from CD-ROM and hard disk, through SeaBIOS ----

/// Test media built once per run: a GRUB rescue ISO (serial console, two entries that
/// print a marker and halt) and a raw hard disk with GRUB in its MBR (its menu in a
/// memdisk, one-second timeout), plus an isolinux ISO.
struct Media {
    _dir: TempDir,
    cd: String,
    hd: String,
    isolinux: String,
}

fn grub_cfg(tag: &str, timeout: u32) -> String {
    format!(
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n\
         set timeout={timeout}\n\
         menuentry \"troupe first entry\" {{\n  echo \"{tag}-MARKER-ONE\"\n  halt\n}}\n\
         menuentry \"troupe second entry\" {{\n  echo \"{tag}-MARKER-TWO\"\n  halt\n}}\n"
    )
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn media() -> &'static Media {
    static M: std::sync::OnceLock<Media> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let dir = TempDir::new("media");
        // GRUB CD: grub-mkrescue (packages grub-pc-bin, xorriso, mtools).
        let cdroot = dir.path("cdroot/boot/grub");
        std::fs::create_dir_all(&cdroot).unwrap();
        std::fs::write(cdroot.join("grub.cfg"), grub_cfg("CD", 30)).unwrap();
        let cd = dir.path("grub.iso");
        sh(Command::new("grub-mkrescue")
            .arg("-o")
            .arg(&cd)
            .arg(dir.path("cdroot")));
        // GRUB hard disk: boot.img in the MBR, core.img (with its config in a memdisk)
        // from sector 1, as grub-install would lay it out.
        let hdroot = dir.path("hdroot/boot/grub");
        std::fs::create_dir_all(&hdroot).unwrap();
        std::fs::write(hdroot.join("grub.cfg"), grub_cfg("HD", 1)).unwrap();
        let tar = dir.path("memdisk.tar");
        sh(Command::new("tar")
            .arg("cf")
            .arg(&tar)
            .arg("-C")
            .arg(dir.path("hdroot"))
            .arg("boot"));
        let core = dir.path("core.img");
        sh(Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-p", "(memdisk)/boot/grub", "-o"])
            .arg(&core)
            .arg("-m")
            .arg(&tar)
            .args([
                "biosdisk", "memdisk", "tar", "normal", "serial", "terminal", "echo", "halt",
            ]));
        let mut disk = vec![0u8; 8 << 20];
        let boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img").expect("grub-pc-bin");
        disk[..440].copy_from_slice(&boot[..440]);
        disk[510] = 0x55;
        disk[511] = 0xaa;
        let core_bytes = std::fs::read(&core).unwrap();
        disk[512..512 + core_bytes.len()].copy_from_slice(&core_bytes);
        let hd = dir.path("disk.img");
        std::fs::write(&hd, disk).unwrap();
        // isolinux (packages isolinux, syslinux-common, xorriso).
        let iso = dir.path("isoroot/isolinux");
        std::fs::create_dir_all(&iso).unwrap();
        for f in [
            "/usr/lib/ISOLINUX/isolinux.bin",
            "/usr/lib/syslinux/modules/bios/ldlinux.c32",
        ] {
            std::fs::copy(f, iso.join(std::path::Path::new(f).file_name().unwrap()))
                .unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        std::fs::write(
            iso.join("isolinux.cfg"),
            "SERIAL 0 115200\nPROMPT 1\nTIMEOUT 100\n",
        )
        .unwrap();
        let isolinux = dir.path("isolinux.iso");
        sh(Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(&isolinux)
            .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
            .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
            .arg(dir.path("isoroot")));
        Media {
            cd: cd.display().to_string(),
            hd: hd.display().to_string(),
            isolinux: isolinux.display().to_string(),
            _dir: dir,
        }
    })
}

const GRUB_T: Duration = Duration::from_secs(240);

#[test]
fn grub_from_cd_first_with_order_dc_and_serial_input_picks_the_second_entry() {
    let m = media();
    // The media are shared by tests running in parallel: each VM writes to its own
    // temporary overlay (two writers of one image are refused, as by QEMU).
    let hd = format!("file={},format=raw,if=ide,index=0,snapshot=on", m.hd);
    let mut r = Vm::troupe(&[
        "-nographic",
        "-m",
        "256",
        "-drive",
        &hd,
        "-cdrom",
        &m.cd,
        "-boot",
        "order=dc",
    ])
    .spawn();
    r.expect_stdout("troupe second entry", GRUB_T);
    // The menu is up: VT100 Down, then Enter, on the serial line.
    std::thread::sleep(Duration::from_millis(500));
    r.send(b"\x1b[B");
    std::thread::sleep(Duration::from_millis(500));
    r.send(b"\r");
    let out = r.expect_stdout("CD-MARKER-TWO", Duration::from_secs(60));
    assert!(
        !out.contains("HD-MARKER"),
        "the CD was not booted first: {out}"
    );
    // GRUB's `halt` powers off through ACPI: troupe exits 0.
    assert_eq!(code(r.wait(Duration::from_secs(60))), 0);
}

#[test]
fn grub_from_a_positional_hard_disk_first_with_order_cd() {
    let m = media();
    let (st, out, err) = Vm::troupe(&[
        "-nographic",
        "-m",
        "256",
        "-cdrom",
        &m.cd,
        "-boot",
        "order=cd",
        "-snapshot",
        &m.hd,
    ])
    .run(GRUB_T);
    assert!(out.contains("HD-MARKER-ONE"), "{out}\n{err}");
    assert!(!out.contains("CD-MARKER"), "{out}");
    assert_eq!(code(st), 0, "{err}");
}

#[test]
fn isolinux_prints_its_banner_then_the_emulation_failure_is_reported() {
    let m = media();
    // No monitor attached (-nographic would add one on stdio): the fault ends troupe.
    let (st, out, err) = Vm::troupe(&[
        "-nographic",
        "-monitor",
        "none",
        "-m",
        "256",
        "-cdrom",
        &m.isolinux,
        "-boot",
        "d",
    ])
    .run(Duration::from_secs(120));
    assert!(out.contains("ISOLINUX 6."), "{out}\n{err}");
    assert!(err.contains("KVM internal error. Suberror: 1"), "{err}");
    assert_ne!(code(st), 0);
}

// ---- -boot once= ----

/// The serial output after the `n`th SeaBIOS banner (1-based), once it says where it boots
/// from: "DVD/CD" or "Hard Disk".
fn nth_boot_device(r: &common::Running, n: usize, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let out = r.stdout.text();
        let said = out
            .split("SeaBIOS (version")
            .nth(n)
            .and_then(|boot| boot.split_once("Booting from "))
            .and_then(|(_, rest)| rest.split_once("..."));
        if let Some((dev, _)) = said {
            return dev.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: boot {n} did not say where it boots from within {timeout:?}:\n{out}\nstderr:\n{}",
            r.line,
            r.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `-boot once=d` on a machine with a GRUB CD and a GRUB disk (QEMU's default order "cad"
/// after the first boot): the CD boots first, and every boot after a `system_reset` is the
/// disk's. `vm` builds the command line for troupe or QEMU.
fn boot_once_sequence(vm: fn(&[&str]) -> Vm) {
    let m = media();
    let hd = format!("file={},format=raw,if=ide,index=0,snapshot=on", m.hd);
    let port = common::free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let r = vm(&[
        "-nographic",
        "-m",
        "256",
        "-net",
        "none",
        "-drive",
        &hd,
        "-cdrom",
        &m.cd,
        "-boot",
        "once=d",
        "-qmp",
        &qmp,
    ])
    .spawn();
    // Seconds alone; generous for a host busy with the GRUB tests running beside it.
    let t = Duration::from_secs(120);
    assert_eq!(nth_boot_device(&r, 1, t), "DVD/CD", "{}", r.line);
    let mut q = common::Qmp::open(port);
    assert_eq!(
        q.ask(r#"{"execute": "qmp_capabilities"}"#)["return"],
        serde_json::json!({})
    );
    for n in 2..=3 {
        assert_eq!(
            q.ask(r#"{"execute": "system_reset"}"#)["return"],
            serde_json::json!({}),
            "{}",
            r.line
        );
        assert_eq!(nth_boot_device(&r, n, t), "Hard Disk", "{}", r.line);
    }
}

#[test]
fn boot_once_boots_the_cd_first_and_the_disk_after_each_system_reset() {
    boot_once_sequence(|a| Vm::troupe(a));
}

#[test]
fn qemu_boots_once_d_the_same_way() {
    boot_once_sequence(|a| Vm::qemu(a));
}
