//! Removable media through the real doors: a test guest (`atapi`) polls the CD-ROM on the
//! secondary IDE master and prints what it reads; the disc is swapped, ejected and refused
//! at the HMP and QMP monitors, and the guest must see what a guest sees under QEMU (the
//! medium gone, then a unit attention, then the new volume).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// An ISO 9660 image of one small file with volume id `volume` (xorriso).
fn iso(dir: &TempDir, volume: &str) -> PathBuf {
    let src = dir.path(volume);
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("README.TXT"), volume).unwrap();
    let out = dir.path(&format!("{volume}.iso"));
    let r = Command::new("xorriso")
        .args(["-as", "mkisofs", "-V", volume, "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("xorriso (package xorriso) makes the test ISOs");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out
}

/// QMP with the events kept: `ask` returns the reply and stores events on the way.
struct Qmp {
    q: common::Qmp,
    events: Vec<Value>,
}

impl Qmp {
    fn open(port: u16) -> Self {
        let mut q = common::Qmp::open(port);
        assert_eq!(
            q.ask(r#"{"execute":"qmp_capabilities"}"#),
            json!({"return": {}})
        );
        Self {
            q,
            events: Vec::new(),
        }
    }

    fn ask(&mut self, cmd: Value) -> Value {
        self.q.send(format!("{cmd}\r\n").as_bytes());
        loop {
            let v: Value = serde_json::from_str(&self.q.line()).unwrap();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    /// The `DEVICE_TRAY_MOVED` data seen so far, waiting until there are `n` of them.
    fn tray_moves(&mut self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + T;
        loop {
            let moves: Vec<Value> = self
                .events
                .iter()
                .filter(|e| e["event"] == "DEVICE_TRAY_MOVED")
                .map(|e| e["data"].clone())
                .collect();
            if moves.len() >= n || Instant::now() > deadline {
                return moves;
            }
            // Events come on their own; a cheap command reads them in.
            self.ask(json!({"execute": "query-status"}));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn error_of(v: &Value) -> (&str, &str) {
    (
        v["error"]["class"].as_str().unwrap_or("no error"),
        v["error"]["desc"].as_str().unwrap_or(""),
    )
}

/// The `atapi` guest with `append`, the CD-ROM holding `cd`, a disk on the primary master,
/// HMP and QMP monitors on free ports.
fn atapi_vm(dir: &TempDir, cd: &Path, append: &str) -> (Running, u16, u16) {
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (hmp, qmp) = (free_port(), free_port());
    let k = guest("atapi");
    let mon = format!("tcp:127.0.0.1:{hmp},server,nowait");
    let qmon = format!("tcp:127.0.0.1:{qmp},server,nowait");
    let hda = format!("file={},format=raw,if=ide,index=0", disk.display());
    let vm = Vm::troupe(&[
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-monitor",
        &mon,
        "-qmp",
        &qmon,
        "-drive",
        &hda,
        "-cdrom",
        cd.to_str().unwrap(),
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        append,
    ])
    .spawn();
    (vm, hmp, qmp)
}

/// Whether process `pid` has `file` open.
fn has_open(pid: u32, file: &Path) -> bool {
    let want = std::fs::canonicalize(file).unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|p| p == want)
}

/// The guest's serial output (lines end in CR LF) once it contains `needle` (lines
/// ending in LF), with LF line ends.
fn serial_wait(vm: &Running, needle: &str) -> String {
    let deadline = Instant::now() + T;
    loop {
        let text = vm.stdout.text().replace("\r\n", "\n");
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{}: no {needle:?} on the serial within {T:?}:\n{text}\nstderr:\n{}",
            vm.line,
            vm.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {T:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The text after `start` in `s`.
fn after<'a>(s: &'a str, start: &str) -> &'a str {
    s.find(start).map_or("", |i| &s[i + start.len()..])
}

/// The guest's report of a disc change, after the line `from`: the medium reads as gone,
/// then changed (a unit attention), then the new volume `volume`; the new-medium event
/// comes once, anywhere in between (the guest polls TEST UNIT READY and GET EVENT STATUS
/// NOTIFICATION in turn, and the change may land between the two).
fn assert_change_seen(serial: &str, from: &str, volume: &str) {
    let news: Vec<&str> = after(serial, from).lines().collect();
    let event = "atapi: media event 2 status 2";
    assert_eq!(
        news.iter().filter(|l| **l == event).count(),
        1,
        "one new-medium event: {serial}"
    );
    let rest: Vec<&str> = news.into_iter().filter(|l| *l != event).collect();
    let want = format!("atapi: volume {volume}");
    assert_eq!(
        rest,
        [
            "atapi: sense 02/3a/00",
            "atapi: sense 06/28/00",
            want.as_str()
        ],
        "{serial}"
    );
}

#[test]
fn a_cd_changed_at_the_monitor_is_read_by_the_guest_and_the_old_image_is_closed() {
    let dir = TempDir::new("media-change");
    let (alpha, bravo) = (iso(&dir, "ALPHA_VOL"), iso(&dir, "BRAVO_VOL"));
    let (vm, hmp, qmp) = atapi_vm(&dir, &alpha, "timeout=600");
    serial_wait(&vm, "atapi: volume ALPHA_VOL");
    let mut q = Qmp::open(qmp);
    let mut h = Hmp::open(hmp);
    assert!(has_open(vm.pid(), &alpha));

    // Bad requests change nothing.
    let missing = dir.path("missing.iso");
    let change = |device: &str, file: &Path| {
        json!({"execute": "blockdev-change-medium",
               "arguments": {"device": device, "filename": file.to_str().unwrap()}})
    };
    assert_eq!(
        error_of(&q.ask(change("ide1-cd0", &missing))),
        (
            "GenericError",
            format!(
                "Could not open '{}': No such file or directory",
                missing.display()
            )
            .as_str()
        )
    );
    assert_eq!(
        error_of(&q.ask(change("nope", &bravo))),
        ("DeviceNotFound", "Device 'nope' not found")
    );
    assert_eq!(
        error_of(&q.ask(change("ide0-hd0", &bravo))),
        ("GenericError", "Device 'ide0-hd0' is not removable")
    );
    assert_eq!(
        error_of(&q.ask(json!({"execute": "blockdev-change-medium",
            "arguments": {"filename": bravo.to_str().unwrap()}}))),
        ("GenericError", "Need exactly one of 'device' and 'id'")
    );
    assert_eq!(
        error_of(&q.ask(json!({"execute": "blockdev-change-medium",
            "arguments": {"device": "ide1-cd0", "filename": bravo.to_str().unwrap(),
                          "format": "qcow2"}}))),
        ("GenericError", "Image is not in qcow2 format")
    );
    assert!(q.tray_moves(0).is_empty());
    let info = h.text("info block ide1-cd0");
    assert!(
        info.starts_with(&format!(
            "ide1-cd0 (#block102): {} (raw, read-only)\n",
            alpha.display()
        )) && info.contains("    Removable device: not locked, tray closed\n"),
        "{info}"
    );

    // The swap: the tray opens and closes, the guest sees the medium go, then a unit
    // attention, then the new volume.
    assert_eq!(q.ask(change("ide1-cd0", &bravo)), json!({"return": {}}));
    let serial = serial_wait(&vm, "atapi: volume BRAVO_VOL\n");
    assert_change_seen(&serial, "atapi: volume ALPHA_VOL\n", "BRAVO_VOL");
    let qdev = "/machine/unattached/device[25]";
    assert_eq!(
        q.tray_moves(2),
        [
            json!({"device": "ide1-cd0", "tray-open": true, "id": qdev}),
            json!({"device": "ide1-cd0", "tray-open": false, "id": qdev}),
        ]
    );
    let block = q.ask(json!({"execute": "query-block"}));
    let cd = &block["return"][1];
    assert_eq!(cd["device"], "ide1-cd0");
    assert_eq!(cd["tray_open"], false);
    assert_eq!(cd["inserted"]["file"], bravo.to_str().unwrap());
    // The old image is closed once its backend has drained; the new one is open.
    wait_until("alpha.iso closed", || !has_open(vm.pid(), &alpha));
    assert!(has_open(vm.pid(), &bravo));

    // Eject: the tray opens, the guest is told the medium is gone, the file is closed.
    assert_eq!(
        q.ask(json!({"execute": "eject", "arguments": {"device": "ide1-cd0"}})),
        json!({"return": {}})
    );
    serial_wait(&vm, "atapi: volume BRAVO_VOL\natapi: sense 02/3a/00\n");
    assert_eq!(q.tray_moves(3)[2]["tray-open"], true);
    let info = h.text("info block ide1-cd0");
    assert_eq!(
        info,
        format!(
            "ide1-cd0: [not inserted]\n    Attached to:      {qdev}\n    Removable device: not locked, tray open\n"
        )
    );
    wait_until("bravo.iso closed", || !has_open(vm.pid(), &bravo));
    // The tray moves alone too.
    let tray = |cmd: &str| json!({"execute": cmd, "arguments": {"device": "ide1-cd0"}});
    assert_eq!(q.ask(tray("blockdev-close-tray")), json!({"return": {}}));
    assert_eq!(q.tray_moves(4)[3]["tray-open"], false);
    // Closed on nothing: a new-medium event with no medium, still not ready.
    serial_wait(
        &vm,
        "atapi: sense 02/3a/00\natapi: media event 2 status 0\n",
    );
    assert_eq!(
        error_of(&q.ask(json!({"execute": "blockdev-remove-medium",
                               "arguments": {"id": "ide1-cd0"}}))),
        ("DeviceNotFound", "Device 'ide1-cd0' not found"),
        "QMP's id is a qdev id; troupe's IDE drives have none"
    );
    assert_eq!(
        h.text("info status"),
        "VM status: running\n",
        "the guest runs on"
    );
    // Back to the first disc, through HMP this time.
    assert_eq!(h.text(&format!("change ide1-cd0 {}", alpha.display())), "");
    let serial = serial_wait(&vm, "atapi: sense 06/28/00\natapi: volume ALPHA_VOL\n");
    let news = after(&serial, "atapi: media event 2 status 0\n");
    assert_eq!(
        news, "atapi: media event 2 status 2\natapi: sense 06/28/00\natapi: volume ALPHA_VOL\n",
        "the medium already read as gone: {serial}"
    );
    assert_eq!(q.tray_moves(6).len(), 6);
    assert_eq!(h.text("quit"), "");
}

#[test]
fn a_tray_the_guest_locked_opens_only_with_force_and_bad_input_leaves_the_vm_running() {
    let dir = TempDir::new("media-lock");
    let (alpha, bravo) = (iso(&dir, "ALPHA_VOL"), iso(&dir, "BRAVO_VOL"));
    let (mut vm, hmp, _qmp) = atapi_vm(&dir, &alpha, "lock=1 stop=BRAVO_VOL timeout=600");
    serial_wait(&vm, "atapi: locked");
    let mut h = Hmp::open(hmp);
    assert!(h
        .text("info block ide1-cd0")
        .contains("    Removable device: locked, tray closed\n"));

    assert_eq!(
        h.text("eject ide1-cd0"),
        "Error: Device 'ide1-cd0' is locked and force was not specified, wait for tray to open and try again\n"
    );
    // The guest is asked to let go; the disc stays in, readable.
    serial_wait(&vm, "atapi: media event 1 status 2\n");
    let info = h.text("info block ide1-cd0");
    assert!(
        info.contains(&format!("{} (raw, read-only)", alpha.display()))
            && info.contains("locked, tray closed"),
        "{info}"
    );
    assert_eq!(
        h.text(&format!("change ide1-cd0 {}", bravo.display())),
        "Error: Device 'ide1-cd0' is locked and force was not specified, wait for tray to open and try again\n"
    );
    // Bad input, each refused with QEMU's message.
    let missing = dir.path("missing.iso");
    for (cmd, want) in [
        (
            "eject nope".to_string(),
            "Error: Device 'nope' not found\n".to_string(),
        ),
        (
            "eject ide0-hd0".into(),
            "Error: Device 'ide0-hd0' is not removable\n".into(),
        ),
        (
            format!("change ide0-hd0 {}", bravo.display()),
            "Error: Device 'ide0-hd0' is not removable\n".into(),
        ),
        (
            format!("change ide1-cd0 -f {}", missing.display()),
            format!(
                "Error: Could not open '{}': No such file or directory\n",
                missing.display()
            ),
        ),
        (
            format!("change ide1-cd0 {} bogus", bravo.display()),
            "Error: Unknown driver 'bogus'\n".into(),
        ),
        (
            "eject -f".into(),
            "eject: block device name expected\nTry \"help eject\" for more information\n".into(),
        ),
    ] {
        assert_eq!(h.text(&cmd), want, "{cmd}");
    }
    assert_eq!(h.text("info status"), "VM status: running\n");
    assert!(
        !vm.stdout.text().contains("atapi: sense"),
        "{}",
        vm.stdout.text()
    );

    // Forced: the tray opens, unlocked, and the guest sees the medium gone.
    assert_eq!(h.text("eject -f ide1-cd0"), "");
    serial_wait(&vm, "atapi: sense 02/3a/00\n");
    assert!(h
        .text("info block ide1-cd0")
        .starts_with("ide1-cd0: [not inserted]\n"));
    assert!(h
        .text("info block ide1-cd0")
        .contains("Removable device: not locked, tray open\n"));
    // A new disc goes in; the guest reads it and ends.
    assert_eq!(h.text(&format!("change ide1-cd0 {}", bravo.display())), "");
    serial_wait(&vm, "atapi: volume BRAVO_VOL\natapi: stop\n");
    assert_eq!(code(vm.wait(T)), 1, "debug-exit 0");
}
