//! PCI hotplug through the monitors, as QEMU's `pc` does it: `device_add` puts a device on
//! a free slot and tells the guest through ACPI PCI hotplug (PCIU + GPE0 bit 1);
//! `device_del` asks the guest to eject it (PCID + GPE); the guest's write to B0EJ removes
//! it, and `DEVICE_DELETED` follows. The guest is `tests/guests/pcihp`, an OSPM stand-in
//! that polls the hotplug registers from ring 3.

mod common;

use std::time::{Duration, Instant};

use common::session::Session;
use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

impl Session {
    /// Wait for events named `name` until `done` is true of those seen (reading events
    /// as they come; the socket's 10 s read timeout is renewed while waiting).
    fn wait_events(&mut self, name: &str, done: impl Fn(&[&Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen: Vec<&Value> = self.events.iter().filter(|e| e["event"] == name).collect();
            if done(&seen) {
                return seen.into_iter().cloned().collect();
            }
            assert!(
                Instant::now() < deadline,
                "no {name} events as expected; events: {:?}",
                self.events
            );
            // query-status is cheap and brings in what arrived meanwhile.
            self.ok("query-status", json!({}));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Slot of the device with qdev id `id` on bus 0 (None: not listed).
    fn slot_of(&mut self, id: &str) -> Option<u64> {
        let r = self.ok("query-pci", json!({}));
        r[0]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["qdev_id"] == id)
            .map(|d| d["slot"].as_u64().unwrap())
    }
}

fn start(cycles: u32, extra: &[&str]) -> (Running, Session) {
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let kernel = guest("pcihp");
    let append = format!("cycles={cycles} timeout=600");
    let mut args = guest_args(kernel.to_str().unwrap(), &append, &["-qmp", &qmp]);
    args.extend_from_slice(extra);
    let vm = Vm::troupe(&args).spawn();
    // The monitor listens before the guest runs; on a loaded host the start can take
    // longer than a connect's patience.
    vm.expect_stdout("pcihp: ready", WAIT);
    let s = Session::open(port);
    (vm, s)
}

/// One device in and out (the `n`th, from 0), checked from the guest's side and the
/// monitor's.
fn cycle(vm: &Running, s: &mut Session, id: &str, add: Value, ids: (&str, &str)) {
    let times = |line: &str| vm.stdout.text().matches(line).count();
    let last = |prefix: &str| {
        let out = vm.stdout.text();
        let l = out.lines().rfind(|l| l.starts_with(prefix));
        l.map(|l| l.trim_end().to_string()).unwrap_or_default()
    };
    let ups = times("pcihp: up ");
    s.ok("device_add", add);
    let slot = s.slot_of(id).expect("query-pci lists the new device");
    let (vendor, device) = ids;
    // Whole lines: the guest may be in the middle of printing one.
    vm.expect_nth(WAIT, "pcihp: up ", ups + 1);
    vm.expect_nth(WAIT, "gpe=1\r\n", ups + 1);
    assert_eq!(
        last("pcihp: up "),
        format!("pcihp: up slot={slot} vendor={vendor} device={device} gpe=1")
    );
    let path = format!("/machine/peripheral/{id}");
    let want = json!({"device": id, "path": path});
    let before = s.events.iter().filter(|e| e["data"] == want).count();
    // The guest prints nothing between the up line and the device_del's effects.
    let gone = format!("pcihp: gone slot={slot}\r\n");
    let gones = times(&gone);
    s.ok("device_del", json!({"id": id}));
    s.wait_events("DEVICE_DELETED", |e| {
        e.iter().filter(|e| e["data"] == want).count() > before
    });
    vm.expect_nth(WAIT, &gone, gones + 1);
    assert_eq!(s.slot_of(id), None, "query-pci still lists {id}");
}

#[test]
fn a_guest_sees_hotplugged_devices_arrive_and_ejects_them_after_device_del() {
    // The guest waits for a fourth device: it is still running when the test ends it.
    let (mut vm, mut s) = start(
        4,
        &[
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-rng-pci,id=cold0",
        ],
    );
    // A netdev added at run time, and one from the command line.
    s.ok("netdev_add", json!({"type": "user", "id": "n1"}));
    cycle(
        &vm,
        &mut s,
        "nic1",
        json!({"driver": "virtio-net-pci", "netdev": "n1", "id": "nic1", "bus": "pci.0", "addr": "0x9"}),
        ("1af4", "1000"),
    );
    assert_eq!(
        s.events
            .iter()
            .filter(|e| e["event"] == "DEVICE_DELETED")
            .map(|e| e["data"].clone())
            .collect::<Vec<_>>(),
        [
            json!({"path": "/machine/peripheral/nic1/virtio-backend"}),
            json!({"device": "nic1", "path": "/machine/peripheral/nic1"})
        ],
        "QEMU's events for a virtio device"
    );
    cycle(
        &vm,
        &mut s,
        "e1",
        json!({"driver": "e1000", "netdev": "n0", "id": "e1"}),
        ("8086", "100e"),
    );
    cycle(
        &vm,
        &mut s,
        "rng1",
        json!({"driver": "virtio-rng-pci", "id": "rng1"}),
        ("1af4", "1005"),
    );
    quit(&mut vm, &mut s);
}

/// End the VM from the monitor (the guest still waits for a device).
fn quit(vm: &mut Running, s: &mut Session) {
    s.ok("quit", json!({}));
    assert_eq!(code(vm.wait(WAIT)), 0, "quit exits with 0");
}

#[test]
fn bad_hotplug_requests_get_clear_errors_and_leave_the_vm_running() {
    let (mut vm, mut s) = start(
        2,
        &[
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,id=cold0",
        ],
    );
    let e = s.error(
        "device_add",
        json!({"driver": "virtio-rng-pci", "id": "cold0"}),
    );
    assert!(
        e.contains("cold0") && e.to_lowercase().contains("duplicate"),
        "{e}"
    );
    let e = s.error("device_add", json!({"driver": "no-such-device"}));
    assert!(e.contains("no-such-device"), "{e}");
    let e = s.error(
        "device_add",
        json!({"driver": "virtio-rng-pci", "colour": "red"}),
    );
    assert!(e.contains("colour"), "{e}");
    let e = s.error("device_add", json!({"driver": "e1000", "netdev": "n0"}));
    assert!(e.contains("n0") && e.contains("in use"), "{e}");
    let e = s.error("device_add", json!({"driver": "e1000", "netdev": "nope"}));
    assert!(e.contains("nope"), "{e}");
    // No boot ROM or boot order for a device plugged at run time: refused, not ignored.
    let e = s.error("device_add", json!({"driver": "e1000", "bootindex": 3}));
    assert!(
        e.contains("bootindex= is not supported by troupe for a device added at run time"),
        "{e}"
    );
    let e = s.error(
        "device_add",
        json!({"driver": "e1000", "romfile": "efi-e1000.rom"}),
    );
    assert!(e.contains("romfile= is not supported"), "{e}");
    // -nodefaults: no VGA, so the command line's first device is in slot 2.
    let e = s.error(
        "device_add",
        json!({"driver": "virtio-rng-pci", "addr": "0x2"}),
    );
    assert!(e.contains("0x02") && e.contains("not available"), "{e}");
    let r = s.ask("device_del", json!({"id": "ghost"}));
    assert_eq!(
        r["error"],
        json!({"class": "DeviceNotFound", "desc": "Device 'ghost' not found"})
    );
    let e = s.error("device_del", json!({"id": "cold0"}));
    assert!(e.contains("does not support hotplugging"), "{e}");
    // Nothing reached the guest, and the bus is as it was.
    assert!(
        !vm.stdout.text().contains("pcihp: up"),
        "{}",
        vm.stdout.text()
    );
    assert_eq!(s.slot_of("cold0"), Some(2));
    let hmp = |s: &mut Session, line: &str| {
        s.ok("human-monitor-command", json!({"command-line": line}))
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        hmp(&mut s, "device_del ghost"),
        "Error: Device 'ghost' not found\r\n"
    );
    let out = hmp(&mut s, "device_add virtio-rng-pci,colour=red");
    assert!(
        out.starts_with("Error: ") && out.contains("colour"),
        "{out}"
    );
    // HMP's device_add: the first free slot, 3.
    assert_eq!(
        hmp(&mut s, "device_add virtio-rng-pci,id=hmp0,bus=pci.0"),
        ""
    );
    assert_eq!(s.slot_of("hmp0"), Some(3));
    // Fill every other free slot: the next one is refused, the VM unaffected.
    for i in 4..32 {
        s.ok(
            "device_add",
            json!({"driver": "virtio-rng-pci", "id": format!("r{i}")}),
        );
    }
    let e = s.error("device_add", json!({"driver": "virtio-rng-pci"}));
    assert!(e.to_lowercase().contains("slot"), "{e}");
    // A second device_del while the first waits for the guest.
    assert_eq!(hmp(&mut s, "device_del hmp0"), "");
    let e = s.error("device_del", json!({"id": "hmp0"}));
    assert!(e.contains("already in the process of unplug"), "{e}");
    // The guest saw the devices arrive (the first in slot order reported), ejected it.
    vm.expect_stdout("pcihp: up slot=3 vendor=1af4 device=1005 gpe=1", WAIT);
    vm.expect_stdout("pcihp: gone slot=3", WAIT);
    s.wait_events("DEVICE_DELETED", |e| {
        e.iter()
            .any(|e| e["data"] == json!({"device": "hmp0", "path": "/machine/peripheral/hmp0"}))
    });
    assert_eq!(s.slot_of("hmp0"), None);
    assert_eq!(s.slot_of("r31"), Some(31));
    quit(&mut vm, &mut s);
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The names of the process's threads, sorted (for a failure's message).
fn thread_names(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    v.sort();
    v
}

/// Wait (up to `WAIT`) for `f` to give `want`; what it gave last.
fn settle(want: usize, f: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = f();
        if v == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn add_remove_cycles_of_virtio_net_and_blk_leave_fds_threads_and_rss_where_they_were() {
    const CYCLES: usize = 100;
    let dir = TempDir::new("hotplug");
    let img = dir.path("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("if=none,id=d1,format=raw,file={}", img.display());
    let (mut vm, mut s) = start(
        2 * CYCLES as u32 + 3,
        &["-netdev", "user,id=n1", "-drive", &drive],
    );
    let pid = vm.pid();
    let nic = json!({"driver": "virtio-net-pci", "netdev": "n1", "id": "nic"});
    let blk = json!({"driver": "virtio-blk-pci", "drive": "d1", "id": "blk"});
    // One cycle of each first: what is made once per VM (the MSI routing table) is made
    // then.
    cycle(&vm, &mut s, "nic", nic.clone(), ("1af4", "1000"));
    cycle(&vm, &mut s, "blk", blk.clone(), ("1af4", "1001"));
    let (fd0, names0, rss0) = (fds(pid), thread_names(pid), rss_kib(pid));
    for _ in 0..CYCLES {
        cycle(&vm, &mut s, "nic", nic.clone(), ("1af4", "1000"));
        cycle(&vm, &mut s, "blk", blk.clone(), ("1af4", "1001"));
    }
    // The runtime's I/O pool (`troupe-io`) grows and shrinks by itself: no more of them
    // than before, and every other thread as before.
    let own = |names: &[String]| -> (Vec<String>, usize) {
        let io = names.iter().filter(|n| *n == "troupe-io").count();
        (
            names
                .iter()
                .filter(|n| *n != "troupe-io")
                .cloned()
                .collect(),
            io,
        )
    };
    let (base, io0) = own(&names0);
    let ok = || {
        let (now, io) = own(&thread_names(pid));
        usize::from(now == base && io <= io0)
    };
    assert_eq!(
        settle(1, ok),
        1,
        "threads after {CYCLES} cycles: {:?}, before: {names0:?}",
        thread_names(pid)
    );
    let rss = rss_kib(pid);
    assert!(
        rss <= rss0 + 2048,
        "RSS grew from {rss0} KiB to {rss} KiB over {CYCLES} cycles"
    );
    assert_eq!(settle(fd0, || fds(pid)), fd0, "fds after {CYCLES} cycles");
    quit(&mut vm, &mut s);
}

/// The `virtio` guest waiting for a device to be hot-plugged, with `extra` options.
fn virtio_guest(append: &str, extra: &[&str]) -> (Running, Session) {
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let kernel = guest("virtio");
    let mut args = guest_args(kernel.to_str().unwrap(), append, &["-qmp", &qmp]);
    args.extend_from_slice(extra);
    let vm = Vm::troupe(&args).spawn();
    // The guest prints nothing until a device comes: wait for the monitor to listen (a
    // loaded host may take longer to start than a connect's patience).
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "QMP never listened: {}",
            vm.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = Session::open(port);
    (vm, s)
}

#[test]
fn a_guest_reads_entropy_from_a_hotplugged_virtio_rng() {
    let (mut vm, mut s) = virtio_guest("dev=rng hotplug", &[]);
    s.ok(
        "device_add",
        json!({"driver": "virtio-rng-pci", "id": "rng0"}),
    );
    let slot = s.slot_of("rng0").unwrap();
    vm.expect_stdout(&format!("virtio: hotplugged slot={slot}"), WAIT);
    vm.expect_stdout("vrng: got 64 bytes", WAIT);
    assert_eq!(code(vm.wait(WAIT)), 1, "{}", vm.stdout.text());
}

#[test]
fn a_guest_writes_and_reads_back_a_hotplugged_virtio_blk_disk() {
    let dir = TempDir::new("hotplug-blk");
    let img = dir.path("disk.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let drive = format!("if=none,id=d1,format=raw,file={}", img.display());
    let (mut vm, mut s) = virtio_guest("op=check sectors=256 hotplug", &["-drive", &drive]);
    s.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "drive": "d1", "id": "disk1"}),
    );
    let slot = s.slot_of("disk1").unwrap();
    vm.expect_stdout(&format!("virtio: hotplugged slot={slot}"), WAIT);
    vm.expect_stdout("vblk: all checks passed", WAIT);
    assert_eq!(code(vm.wait(WAIT)), 1, "{}", vm.stdout.text());
}

/// A qcow2 image made by `qemu-img` from a raw one holding the virtio guest's pattern over
/// `sectors` sectors with `seed` (byte `i` of sector `s` is `(s * 7 + i + seed) % 251`),
/// then zeros up to 4 MiB.
fn qcow2_with_pattern(dir: &TempDir, sectors: u64, seed: u64) -> std::path::PathBuf {
    let raw = dir.path("pattern.raw");
    let mut data: Vec<u8> = (0..sectors * 512)
        .map(|o| (((o / 512) * 7 + o % 512 + seed) % 251) as u8)
        .collect();
    data.resize(4 << 20, 0);
    std::fs::write(&raw, data).unwrap();
    let img = dir.path("disk.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(out.status.success(), "qemu-img: {out:?}");
    img
}

/// The node names `query-named-block-nodes` lists, with their drivers.
fn named_nodes(s: &mut Session) -> Vec<(String, String)> {
    let r = s.ok("query-named-block-nodes", json!({}));
    r.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node-name"].as_str().unwrap().to_string(),
                n["drv"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_guest_reads_a_qcow2_disk_added_with_blockdev_add_and_device_add() {
    let dir = TempDir::new("hotplug-blockdev");
    let img = qcow2_with_pattern(&dir, 256, 5);
    let (mut vm, mut s) = virtio_guest("op=verify sectors=256 seed=5 hotplug", &[]);
    let file = img.display().to_string();
    // A file node, then a qcow2 node over it, as libvirt adds them.
    s.ok(
        "blockdev-add",
        json!({"driver": "file", "node-name": "f1", "filename": file, "auto-read-only": true, "discard": "unmap"}),
    );
    assert_eq!(named_nodes(&mut s), [("f1".into(), "file".into())]);
    s.ok(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "q1", "file": "f1", "read-only": false}),
    );
    assert_eq!(
        named_nodes(&mut s),
        [("q1".into(), "qcow2".into()), ("f1".into(), "file".into())]
    );
    // Bad nodes: refused with QEMU's messages, nothing added.
    let e = s.error(
        "blockdev-add",
        json!({"driver": "file", "node-name": "q1", "filename": file}),
    );
    assert_eq!(e, "Duplicate nodes with node-name='q1'");
    let missing = dir.path("missing.qcow2").display().to_string();
    let e = s.error(
        "blockdev-add",
        json!({"driver": "file", "node-name": "m", "filename": missing}),
    );
    assert_eq!(
        e,
        format!("Could not open '{missing}': No such file or directory")
    );
    let e = s.error(
        "blockdev-add",
        json!({"driver": "vvfat", "node-name": "v", "filename": file}),
    );
    assert!(e.contains("'vvfat'"), "{e}");
    let e = s.error(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "q2", "file": "nowhere"}),
    );
    assert_eq!(e, "Cannot find device='nowhere' nor node-name='nowhere'");
    let e = s.error("blockdev-del", json!({"node-name": "f1"}));
    assert_eq!(e, "Block device f1 is in use");
    let e = s.error("blockdev-del", json!({"node-name": "nowhere"}));
    assert_eq!(e, "Failed to find node with node-name='nowhere'");
    assert_eq!(named_nodes(&mut s).len(), 2);
    // The disk: the guest reads the image's content through the qcow2 node.
    s.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "drive": "q1", "id": "disk1"}),
    );
    let blocks = s.ok("query-block", json!({}));
    let disk = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["qdev"] == "/machine/peripheral/disk1/virtio-backend")
        .unwrap_or_else(|| panic!("query-block lists the new disk: {blocks}"));
    assert_eq!(disk["inserted"]["node-name"], "q1");
    assert_eq!(disk["inserted"]["drv"], "qcow2");
    let e = s.error(
        "device_add",
        json!({"driver": "virtio-blk-pci", "drive": "q1", "id": "disk2"}),
    );
    assert!(e.contains("'q1'") && e.contains("in use"), "{e}");
    let e = s.error("blockdev-del", json!({"node-name": "q1"}));
    assert_eq!(e, "Node q1 is in use");
    let slot = s.slot_of("disk1").unwrap();
    vm.expect_stdout(&format!("virtio: hotplugged slot={slot}"), WAIT);
    vm.expect_stdout("vblk: verified 256 sectors", WAIT);
    assert_eq!(code(vm.wait(WAIT)), 1, "{}", vm.stdout.text());
}

#[test]
fn device_del_frees_a_blockdev_node_and_takes_its_drive_add_drive_along() {
    let dir = TempDir::new("hotplug-drive-add");
    let img = qcow2_with_pattern(&dir, 8, 0);
    let file = img.display().to_string();
    // Two disks come and go; the guest waits for a third.
    let (mut vm, mut s) = start(3, &[]);
    let node = json!({"driver": "qcow2", "node-name": "q1",
                      "file": {"driver": "file", "filename": file}});
    s.ok("blockdev-add", node.clone());
    s.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "drive": "q1", "id": "vd1"}),
    );
    vm.expect_nth(WAIT, "pcihp: up ", 1);
    assert_eq!(
        s.error("blockdev-del", json!({"node-name": "q1"})),
        "Node q1 is in use"
    );
    s.ok("device_del", json!({"id": "vd1"}));
    let want = json!({"device": "vd1", "path": "/machine/peripheral/vd1"});
    s.wait_events("DEVICE_DELETED", |e| e.iter().any(|e| e["data"] == want));
    // The node stays until blockdev-del, and then its image is free again.
    assert_eq!(named_nodes(&mut s)[0], ("q1".into(), "qcow2".into()));
    s.ok("blockdev-del", json!({"node-name": "q1"}));
    assert_eq!(named_nodes(&mut s), []);
    s.ok("blockdev-add", node);
    s.ok("blockdev-del", json!({"node-name": "q1"}));

    // HMP drive_add: the PCI address is QEMU's placeholder; bad input first.
    assert_eq!(
        s.hmp(&format!("drive_add {file},if=none,id=d1")),
        "drive_add: string expected\r\nTry \"help drive_add\" for more information\r\n"
    );
    assert_eq!(
        s.hmp(&format!("drive_add 0 file={file},if=virtio,id=d1")),
        "Can't hot-add drive to type 7\r\n"
    );
    let missing = dir.path("missing.img").display().to_string();
    assert_eq!(
        s.hmp(&format!("drive_add 0 file={missing},if=none,id=d1")),
        format!("Could not open '{missing}': No such file or directory\r\n")
    );
    let add = format!("drive_add 0 file={file},if=none,id=d1,format=qcow2");
    assert_eq!(s.hmp(&add), "OK\r\n");
    assert_eq!(s.hmp(&add), "Duplicate ID 'd1' for drive\r\n");
    let info = s.hmp("info block");
    assert!(
        info.starts_with(&format!("d1 (#block600): {file} (qcow2)\r\n")),
        "{info}"
    );
    // A drive_add drive is not a blockdev-add node.
    assert_eq!(
        s.error("blockdev-del", json!({"node-name": "d1"})),
        "Failed to find node with node-name='d1'"
    );
    s.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "drive": "d1", "id": "vd2"}),
    );
    vm.expect_nth(WAIT, "pcihp: up ", 2);
    let e = s.error(
        "device_add",
        json!({"driver": "virtio-blk-pci", "drive": "d1", "id": "vd3"}),
    );
    assert!(e.contains("'d1'") && e.contains("in use"), "{e}");
    s.ok("device_del", json!({"id": "vd2"}));
    let want = json!({"device": "vd2", "path": "/machine/peripheral/vd2"});
    s.wait_events("DEVICE_DELETED", |e| e.iter().any(|e| e["data"] == want));
    // The drive went with its device, as in QEMU: its id and image are free.
    assert_eq!(s.hmp("drive_del d1"), "Device 'd1' not found\r\n");
    assert_eq!(s.ok("query-block", json!({})), json!([]));
    assert_eq!(s.hmp(&add), "OK\r\n");
    assert_eq!(s.hmp("drive_del d1"), "");
    assert_eq!(s.hmp("info block"), "");
    // The VM ran through all of it.
    assert_eq!(s.ok("query-status", json!({}))["status"], "running");
    quit(&mut vm, &mut s);
}
