//! USB: the PIIX3 UHCI controller and the HID devices on it, driven by real guest code —
//! SeaBIOS's UHCI driver enumerating a keyboard and a mouse, and the `usb` test guest's
//! ring-3 UHCI driver reading descriptors and tablet reports — compared with QEMU's runs
//! of the same machines, and the VNC pointer reaching the tablet.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{free_display, free_port, guest, Qmp, TempDir, Vm};

/// The USB lines of a SeaBIOS debug log ("UHCI init on dev ...", "USB keyboard
/// initialized"...), from where the message starts, sorted (SeaBIOS sets up its ports
/// in threads, so their lines come in either order).
fn usb_lines(log: &str) -> Vec<String> {
    let mut v: Vec<String> = log
        .lines()
        .filter_map(|l| {
            let at = ["UHCI", "USB"].iter().filter_map(|k| l.find(k)).min()?;
            Some(l[at..].trim_end().to_string())
        })
        .collect();
    v.sort();
    v
}

const SEEN: [&str; 2] = ["USB keyboard initialized", "USB mouse initialized"];

/// SeaBIOS (the firmware troupe boots by default) has a UHCI driver and sets up USB
/// keyboards and mice as boot devices. Its debug console log shows the controller found
/// at QEMU's place (00:01.2) and both devices initialised, the same lines as under QEMU.
#[test]
fn seabios_enumerates_a_usb_keyboard_and_mouse_as_under_qemu() {
    let machine = [
        "-m",
        "256",
        "-net",
        "none",
        "-usb",
        "-device",
        "usb-kbd,port=1",
        "-device",
        "usb-mouse,port=2",
    ];
    let mut args = vec!["-nographic"];
    args.extend(machine);
    let mut troupe = Vm::troupe(&args)
        .env("TROUPE_LOG", "debugcon=debug")
        .spawn();
    for line in SEEN {
        troupe
            .stderr
            .wait_for(line, Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{}: {e}", troupe.line));
    }
    troupe.kill();
    let ours = usb_lines(&troupe.stderr.text());

    let dir = TempDir::new("usb-seabios");
    let log = dir.path("debugcon.log");
    let chardev = format!("file,id=d,path={}", log.display());
    let mut args = vec![
        "-display",
        "none",
        "-serial",
        "none",
        "-monitor",
        "none",
        "-chardev",
        &chardev,
        "-device",
        "isa-debugcon,iobase=0x402,chardev=d",
    ];
    args.extend(machine);
    let mut qemu = Vm::qemu(&args).spawn();
    let deadline = Instant::now() + Duration::from_secs(90);
    let theirs = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if SEEN.iter().all(|l| text.contains(l)) {
            break usb_lines(&text);
        }
        assert!(
            Instant::now() < deadline,
            "QEMU's SeaBIOS did not set up both devices:\n{text}\nstderr:\n{}",
            qemu.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    qemu.kill();
    assert!(
        theirs
            .iter()
            .any(|l| l.starts_with("UHCI init on dev 00:01.2")),
        "{theirs:?}"
    );
    assert_eq!(ours, theirs);
}

/// The lines the `usb` guest prints about the device on port 1 (ids, product,
/// descriptors in hex), under troupe or QEMU (`vm`).
fn descriptors_seen(vm: fn(&[&str]) -> Vm, device: &str) -> Vec<String> {
    let k = guest("usb");
    let mut r = vm(&[
        "-m",
        "128",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-net",
        "none",
        "-usb",
        "-device",
        device,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "wait=0",
    ])
    .spawn();
    let out = r.expect_stdout("usb: ready", Duration::from_secs(60));
    r.kill();
    out.lines()
        .filter(|l| {
            l.starts_with("usb: device")
                || l.contains("descriptor ")
                || l.starts_with("usb: configuration")
        })
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// A guest's own UHCI driver enumerates each HID device and reads the same ids, product
/// and serial number strings, device, configuration and report descriptors from troupe as
/// from QEMU.
#[test]
fn a_guest_driver_reads_qemus_descriptors_from_each_hid_device() {
    for device in ["usb-tablet", "usb-kbd", "usb-mouse"] {
        let ours = descriptors_seen(|a| Vm::troupe(a), device);
        assert_eq!(ours.len(), 5, "{device}: {ours:?}");
        let theirs = descriptors_seen(|a| Vm::qemu(a), device);
        assert_eq!(ours, theirs, "{device}");
    }
}

/// A minimal RFB client: no security, shared session, pointer events.
struct Rfb(TcpStream);

impl Rfb {
    fn connect(port: u16) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("VNC port {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Self(s);
        assert_eq!(c.read(12), b"RFB 003.008\n");
        c.0.write_all(b"RFB 003.008\n").unwrap();
        assert_eq!(c.read(2), [1, 1], "one security type: None");
        c.0.write_all(&[1]).unwrap();
        assert_eq!(c.read(4), [0, 0, 0, 0]);
        c.0.write_all(&[1]).unwrap();
        let init = c.read(24);
        let n = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
        c.read(n);
        c
    }

    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.0.read_exact(&mut b).expect("read from the VNC server");
        b
    }

    /// PointerEvent (RFB 7.5.5): button mask, position.
    fn pointer(&mut self, buttons: u8, x: u16, y: u16) {
        let [x0, x1] = x.to_be_bytes();
        let [y0, y1] = y.to_be_bytes();
        self.0.write_all(&[5, buttons, x0, x1, y0, y1]).unwrap();
    }
}

/// With `-usb -device usb-tablet` the VNC pointer is absolute and goes to the tablet: a
/// position reaches the guest's UHCI driver as the tablet's X/Y scaled to 0..0x7fff
/// (`x * 0x7fff / width`, as QEMU scales), a click as button 1 down and up. QMP
/// `query-mice` lists the tablet as absolute and current, `info usb` lists the device.
#[test]
fn the_vnc_pointer_reaches_the_usb_tablet_as_absolute_coordinates() {
    let d = free_display();
    let vnc = format!("127.0.0.1:{d}");
    let qmp_port = free_port();
    let qmp = format!("tcp:127.0.0.1:{qmp_port},server,nowait");
    let k = guest("usb");
    let mut vm = Vm::troupe(&[
        "-nodefaults",
        "-vga",
        "std",
        "-serial",
        "stdio",
        "-vnc",
        &vnc,
        "-qmp",
        &qmp,
        "-usb",
        "-device",
        "usb-tablet,id=tab0",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "clicks=1 wait=60",
    ])
    .spawn();
    vm.expect_stdout(
        "usb: device 0627:0001 'QEMU USB Tablet' class 3 protocol 0",
        Duration::from_secs(30),
    );
    vm.expect_stdout("usb: ready", Duration::from_secs(30));
    let mut q = Qmp::open(qmp_port);
    q.ask(r#"{"execute":"qmp_capabilities"}"#);
    let mice = q.ask(r#"{"execute":"query-mice"}"#);
    assert_eq!(
        mice["return"],
        serde_json::json!([
            {"name": "QEMU HID Tablet", "index": 3, "current": true, "absolute": true},
            {"name": "QEMU PS/2 Mouse", "index": 2, "current": false, "absolute": false},
        ])
    );
    let usb =
        q.ask(r#"{"execute":"human-monitor-command","arguments":{"command-line":"info usb"}}"#);
    assert_eq!(
        usb["return"].as_str().unwrap().replace("\r\n", "\n"),
        "  Device 0.1, Port 1, Speed 12 Mb/s, Product QEMU USB Tablet, ID: tab0\n"
    );
    let mut c = Rfb::connect(5900 + d);
    // The text-mode screen is 720x400.
    c.pointer(0, 360, 200);
    vm.expect_stdout(
        "usb: x=16383 y=16383 buttons=0x0 wheel=0",
        Duration::from_secs(10),
    );
    c.pointer(0, 719, 0);
    vm.expect_stdout("usb: x=32721 y=0 buttons=0x0", Duration::from_secs(10));
    // Wheel up (RFB button 4) is one notch.
    c.pointer(8, 719, 0);
    c.pointer(0, 719, 0);
    vm.expect_stdout(
        "usb: x=32721 y=0 buttons=0x0 wheel=1",
        Duration::from_secs(10),
    );
    c.pointer(1, 180, 100);
    vm.expect_stdout("usb: x=8191 y=8191 buttons=0x1", Duration::from_secs(10));
    c.pointer(0, 180, 100);
    vm.expect_stdout("usb: click at x=8191 y=8191", Duration::from_secs(10));
    assert_eq!(
        common::code(vm.wait(Duration::from_secs(10))),
        3,
        "the guest saw its click (exit 1: status 3)"
    );
}
