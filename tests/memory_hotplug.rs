//! Memory hotplug through the monitors, as QEMU's `pc` does it: `-m 128M,slots=1,maxmem=1G`
//! leaves a DIMM slot and a device-memory region from 4 GiB; `object-add
//! memory-backend-ram` makes a backend, `device_add pc-dimm,memdev=` maps it into the
//! guest and tells it through ACPI memory hotplug (the block at 0x0A00 and GPE0 bit 3);
//! `device_del` raises the remove flag; the guest's eject removes the DIMM and
//! `DEVICE_DELETED` follows. The guest is `tests/guests/memhp`, an OSPM stand-in that polls
//! the block from ring 3, maps the DIMM and writes and reads back a pattern in every page
//! of it.

mod common;

use std::time::{Duration, Instant};

use common::session::Session;
use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// Wait until an event named `name` with `data` has been seen `n` times.
fn wait_event(s: &mut Session, name: &str, data: &Value, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = s
            .events
            .iter()
            .filter(|e| e["event"] == name && &e["data"] == data)
            .count();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {name} {data} (#{n}); events: {:?}",
            s.events
        );
        s.ok("query-status", json!({}));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn backend(id: &str, size: u64) -> Value {
    json!({"qom-type": "memory-backend-ram", "id": id, "size": size})
}

#[test]
fn a_plugged_dimm_is_real_memory_to_the_guest_and_leaves_when_the_guest_ejects_it() {
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let kernel = guest("memhp");
    let args = guest_args(
        kernel.to_str().unwrap(),
        // The guest waits for a third DIMM: it is still running when the test ends it.
        "cycles=3 slots=1 timeout=600",
        &["-qmp", &qmp, "-m", "128M,slots=1,maxmem=1G"],
    );
    let mut vm = Vm::troupe(&args).spawn();
    vm.expect_stdout("memhp: ready", WAIT);
    let mut s = Session::open(port);

    assert_eq!(
        s.ok("query-memory-size-summary", json!({})),
        json!({"base-memory": 128 * MIB, "plugged-memory": 0})
    );
    assert_eq!(s.ok("query-memory-devices", json!({})), json!([]));

    // Bad requests: refused as QEMU refuses them, the VM runs on.
    s.ok("object-add", backend("small", MIB));
    s.ok("object-add", backend("huge", 1024 * MIB));
    for (args, want) in [
        (
            json!({"driver": "pc-dimm", "id": "d0"}),
            "'memdev' property must be set",
        ),
        (
            json!({"driver": "pc-dimm", "memdev": "nope"}),
            "Device 'nope' not found",
        ),
        (
            json!({"driver": "pc-dimm", "memdev": "small"}),
            "backend memory size must be multiple of 0x200000",
        ),
        (
            json!({"driver": "pc-dimm", "memdev": "huge"}),
            "not enough space, currently 0x0 in use of total space for memory devices 0x38000000",
        ),
        (
            json!({"driver": "pc-dimm", "memdev": "small", "slot": 1}),
            "invalid slot number 1, valid range is [0-0]",
        ),
    ] {
        assert_eq!(s.error("device_add", args.clone()), want, "{args}");
    }
    assert_eq!(
        s.error("object-add", backend("small", 2 * MIB)),
        "attempt to add duplicate property 'small' to object (type 'container')"
    );
    s.ok("object-del", json!({"id": "small"}));
    s.ok("object-del", json!({"id": "huge"}));
    assert_eq!(
        s.error("object-del", json!({"id": "small"})),
        "object 'small' not found"
    );
    assert_eq!(s.ok("query-status", json!({}))["status"], "running");

    // Cycle 1: a DIMM with an id, placed at the region's start.
    s.ok("object-add", backend("m1", 256 * MIB));
    s.ok(
        "device_add",
        json!({"driver": "pc-dimm", "id": "dimm1", "memdev": "m1"}),
    );
    let devices = s.ok("query-memory-devices", json!({}));
    assert_eq!(
        devices,
        json!([{"type": "dimm", "data": {"memdev": "/objects/m1", "hotplugged": true,
            "addr": 4u64 << 30, "hotpluggable": true, "size": 256 * MIB, "slot": 0,
            "node": 0, "id": "dimm1"}}])
    );
    // The guest finds it where query-memory-devices says, and its pages hold what it
    // writes.
    vm.expect_stdout(
        "memhp: insert slot=0 addr=0x100000000 size=0x10000000 gpe=1",
        WAIT,
    );
    vm.expect_stdout("memhp: pattern ok pages=65536", WAIT);
    vm.expect_stdout("memhp: online slot=0", WAIT);
    let ost =
        json!({"device": "dimm1", "slot": "0", "slot-type": "DIMM", "source": 1, "status": 0});
    wait_event(&mut s, "ACPI_DEVICE_OST", &json!({ "info": ost }), 1);
    assert_eq!(s.ok("query-acpi-ospm-status", json!({})), json!([ost]));
    assert_eq!(
        s.ok("query-memory-size-summary", json!({})),
        json!({"base-memory": 128 * MIB, "plugged-memory": 256 * MIB})
    );
    let info = s.hmp("info memory-devices");
    assert_eq!(
        info,
        "Memory device [dimm]: \"dimm1\"\r\n  addr: 0x100000000\r\n  slot: 0\r\n  node: 0\r\n  \
         size: 268435456\r\n  memdev: /objects/m1\r\n  hotplugged: true\r\n  hotpluggable: true\r\n"
    );
    assert!(
        s.hmp("info memdev")
            .starts_with("memory backend: m1\r\n  size:  268435456\r\n  merge: true\r\n"),
        "{}",
        s.hmp("info memdev")
    );
    // In use: the backend stays, another DIMM cannot take it or the slot.
    assert_eq!(
        s.error("object-del", json!({"id": "m1"})),
        "object 'm1' is in use, can not be deleted"
    );
    assert_eq!(
        s.hmp("object_del m1"),
        "Error: object 'm1' is in use, can not be deleted\r\n"
    );
    assert_eq!(
        s.error(
            "device_add",
            json!({"driver": "pc-dimm", "id": "dimm2", "memdev": "m1"})
        ),
        "can't use already busy memdev: m1"
    );
    assert_eq!(s.hmp("object_add memory-backend-ram,id=m2,size=256M"), "");
    assert_eq!(
        s.error(
            "device_add",
            json!({"driver": "pc-dimm", "id": "dimm2", "memdev": "m2"})
        ),
        "no free slots available"
    );
    assert_eq!(
        s.error(
            "device_add",
            json!({"driver": "pc-dimm", "id": "dimm1", "memdev": "m2"})
        ),
        "Duplicate device ID 'dimm1'"
    );
    // Its memory is not carried by a migration: refused, named.
    let e = s.error("migrate", json!({"uri": "exec:cat > /dev/null"}));
    assert!(e.contains("hot-plugged memory device ('dimm1')"), "{e}");
    assert_eq!(s.ok("query-status", json!({}))["status"], "running");

    s.ok("device_del", json!({"id": "dimm1"}));
    vm.expect_stdout("memhp: remove slot=0 gpe=1", WAIT);
    vm.expect_stdout("memhp: ejected slot=0 enabled=0", WAIT);
    wait_event(
        &mut s,
        "DEVICE_DELETED",
        &json!({"device": "dimm1", "path": "/machine/peripheral/dimm1"}),
        1,
    );
    assert_eq!(s.ok("query-memory-devices", json!({})), json!([]));
    s.ok("object-del", json!({"id": "m1"}));

    // Cycle 2: an anonymous DIMM at a chosen address, through HMP, removed by its path.
    assert_eq!(
        s.error(
            "device_add",
            json!({"driver": "pc-dimm", "memdev": "m2", "addr": 0x1_4000_1000u64})
        ),
        "address must be aligned to 0x200000 bytes"
    );
    assert_eq!(s.hmp("device_add pc-dimm,memdev=m2,addr=0x140000000"), "");
    vm.expect_stdout(
        "memhp: insert slot=0 addr=0x140000000 size=0x10000000 gpe=1",
        WAIT,
    );
    vm.expect_nth(WAIT, "memhp: pattern ok pages=65536", 2);
    vm.expect_nth(WAIT, "memhp: online slot=0", 2);
    // The command line's isa-debug-exit is device[0].
    let path = "/machine/peripheral-anon/device[1]";
    let devices = s.ok("query-memory-devices", json!({}));
    assert_eq!(devices[0]["data"]["addr"], 0x1_4000_0000u64, "{devices}");
    assert!(devices[0]["data"].get("id").is_none(), "{devices}");
    s.ok("device_del", json!({"id": path}));
    wait_event(&mut s, "DEVICE_DELETED", &json!({ "path": path }), 1);
    vm.expect_nth(WAIT, "memhp: ejected slot=0 enabled=0", 2);
    assert_eq!(s.ok("query-memory-devices", json!({})), json!([]));
    s.ok("object-del", json!({"id": "m2"}));
    assert_eq!(s.ok("query-memdev", json!({})), json!([]));
    s.ok("quit", json!({}));
    assert_eq!(code(vm.wait(WAIT)), 0, "{}", vm.stdout.text());
}

/// `-object memory-backend-ram` with `-device pc-dimm` (as libvirt writes a `<memory
/// model='dimm'>`): the DIMM is there at power-on, real memory the guest finds enabled in
/// its slot, reported as not hot-plugged; it can still be unplugged, and a DIMM plugged at
/// run time goes to the next slot, after it.
#[test]
fn a_command_line_dimm_is_present_at_power_on_and_can_be_unplugged() {
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let kernel = guest("memhp");
    let args = guest_args(
        kernel.to_str().unwrap(),
        "cycles=2 slots=2 timeout=600",
        &[
            "-qmp",
            &qmp,
            "-m",
            "128M,slots=2,maxmem=1G",
            "-object",
            "memory-backend-ram,id=c1,size=64M",
            "-device",
            r#"{"driver":"pc-dimm","id":"cold","memdev":"c1"}"#,
        ],
    );
    let mut vm = Vm::troupe(&args).spawn();
    vm.expect_stdout(
        "memhp: present slot=0 addr=0x100000000 size=0x4000000",
        WAIT,
    );
    vm.expect_stdout("memhp: pattern ok pages=16384", WAIT);
    let mut s = Session::open(port);
    assert_eq!(
        s.ok("query-memory-devices", json!({})),
        json!([{"type": "dimm", "data": {"memdev": "/objects/c1", "hotplugged": false,
            "addr": 4u64 << 30, "hotpluggable": true, "size": 64 * MIB, "slot": 0,
            "node": 0, "id": "cold"}}])
    );
    assert_eq!(
        s.error("object-del", json!({"id": "c1"})),
        "object 'c1' is in use, can not be deleted"
    );
    s.ok("object-add", backend("m1", 64 * MIB));
    s.ok(
        "device_add",
        json!({"driver": "pc-dimm", "id": "hot", "memdev": "m1"}),
    );
    vm.expect_stdout(
        "memhp: insert slot=1 addr=0x104000000 size=0x4000000 gpe=1",
        WAIT,
    );
    vm.expect_nth(WAIT, "memhp: pattern ok pages=16384", 2);
    s.ok("device_del", json!({"id": "hot"}));
    vm.expect_stdout("memhp: ejected slot=1 enabled=0", WAIT);
    wait_event(
        &mut s,
        "DEVICE_DELETED",
        &json!({"device": "hot", "path": "/machine/peripheral/hot"}),
        1,
    );
    s.ok("quit", json!({}));
    assert_eq!(code(vm.wait(WAIT)), 0, "{}", vm.stdout.text());
}

#[test]
fn memory_hotplug_options_are_checked_as_qemu_checks_them() {
    let kernel = guest("memhp");
    for (m, want) in [
        ("128M,slots=2", "slots specified but no max-size"),
        (
            "256M,slots=2,maxmem=128M",
            "invalid value of maxmem: maximum memory size (0x8000000) must be at least the \
             initial memory size (0x10000000)",
        ),
    ] {
        let args = guest_args(kernel.to_str().unwrap(), "", &["-m", m]);
        let (st, _, err) = Vm::troupe(&args).run(WAIT);
        assert_ne!(code(st), 0);
        assert!(err.contains(want), "-m {m}: {err}");
    }
    // A DIMM on the command line needs the device-memory region, and a backend needs a
    // user.
    for (extra, want) in [
        (
            ["-m", "128M", "-device", "pc-dimm,memdev=c1"],
            "memory devices (e.g. for memory hotplug) are not enabled, please specify the \
             maxmem option",
        ),
        (
            ["-m", "128M,slots=1,maxmem=1G", "-device", "pc-dimm,id=d"],
            "memory backend 'c1' is not used by -machine memory-backend= or a -device pc-dimm",
        ),
    ] {
        let mut x: Vec<&str> = vec!["-object", "memory-backend-ram,id=c1,size=64M"];
        x.extend_from_slice(&extra);
        let args = guest_args(kernel.to_str().unwrap(), "", &x);
        let (st, _, err) = Vm::troupe(&args).run(WAIT);
        assert_ne!(code(st), 0);
        assert!(err.contains(want), "{x:?}: {err}");
    }
}
