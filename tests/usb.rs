//! USB: the PIIX3 UHCI controller and the HID devices on it, driven by real guest code —
//! SeaBIOS's UHCI driver enumerating a keyboard and a mouse, compared with QEMU's run of
//! the same machine.

mod common;

use std::time::{Duration, Instant};

use common::{TempDir, Vm};

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
