//! vCPU hotplug through the monitors, as QEMU's `pc` does it: `-smp 1,maxcpus=2` leaves a
//! free CPU slot; `device_add qemu64-x86_64-cpu,socket-id=1,core-id=0,thread-id=0` creates
//! the vCPU and tells the guest through ACPI CPU hotplug (the legacy bitmap at 0xAF00, or
//! the modern interface's insert flag, and GPE0 bit 2); `device_del` raises the remove
//! flag; the guest's eject removes the vCPU and `DEVICE_DELETED` follows. The guest is
//! `tests/guests/cpuhp`, an OSPM stand-in that polls the block from ring 3 and wakes each
//! new CPU with INIT/SIPI; the CPU checks in on the serial line.

mod common;

use std::time::{Duration, Instant};

use common::session::Session;
use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const CPU: &str = "qemu64-x86_64-cpu";

impl Session {
    /// Wait until an event named `name` with `data` has been seen `n` times.
    fn wait_event(&mut self, name: &str, data: &Value, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self
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
                self.events
            );
            self.ok("query-status", json!({}));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `query-cpus-fast` as (cpu-index, thread-id, qom-path, socket-id).
    fn cpus(&mut self) -> Vec<(u64, u64, String, u64)> {
        let r = self.ok("query-cpus-fast", json!({}));
        r.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["cpu-index"].as_u64().unwrap(),
                    c["thread-id"].as_u64().unwrap(),
                    c["qom-path"].as_str().unwrap().to_string(),
                    c["props"]["socket-id"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

/// The first host core this process may run on.
fn a_host_core() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split([',', '-']).next().unwrap().parse().unwrap()
}

fn start(append: &str, extra: &[&str]) -> (Running, Session) {
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let kernel = guest("cpuhp");
    let mut args = guest_args(
        kernel.to_str().unwrap(),
        append,
        &[
            "-qmp",
            &qmp,
            "-smp",
            "1,sockets=2,cores=1,threads=1,maxcpus=2",
            "-cpu",
            "qemu64",
        ],
    );
    args.extend_from_slice(extra);
    let vm = Vm::troupe(&args).spawn();
    // The monitor listens before the guest runs; on a loaded host the start can take
    // longer than a connect's patience.
    vm.expect_stdout("cpuhp: ready", WAIT);
    let s = Session::open(port);
    (vm, s)
}

#[test]
fn a_hotplugged_vcpu_runs_guest_code_and_leaves_when_the_guest_ejects_it() {
    let core = a_host_core();
    let pin = format!("0={core},1={core}");
    // The guest waits for a third CPU: it is still running when the test ends it.
    let (mut vm, mut s) = start("cycles=3 timeout=600", &["-vcpu-pin", &pin]);
    vm.expect_stdout("cpuhp: ready bitmap=0x1", WAIT);
    let pid = vm.pid();

    // One free slot (no qom-path), the boot CPU's; the type follows -cpu.
    assert_eq!(
        s.ok("query-hotpluggable-cpus", json!({})),
        json!([
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 1}, "vcpus-count": 1,
             "type": CPU},
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "vcpus-count": 1,
             "qom-path": "/machine/unattached/device[0]", "type": CPU},
        ])
    );

    let info = s.hmp("info hotpluggable-cpus");
    assert!(
        info.contains(&format!("  type: \"{CPU}\"\r\n  vcpus_count: \"1\"\r\n  CPUInstance Properties:\r\n    socket-id: \"1\""))
            && info.matches("qom_path").count() == 1
            && info.contains("  qom_path: \"/machine/unattached/device[0]\""),
        "{info:?}"
    );

    // Bad requests: refused as QEMU refuses them, nothing reaches the guest.
    let add = |socket: u64, extra: Value| {
        let mut a = json!({"driver": CPU, "socket-id": socket, "core-id": 0, "thread-id": 0});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    for (args, want) in [
        (
            json!({"driver": "host-x86_64-cpu", "socket-id": 1, "core-id": 0, "thread-id": 0}),
            format!("Invalid CPU type, expected cpu type: '{CPU}'"),
        ),
        (
            add(2, json!({})),
            "Invalid CPU socket-id: 2 must be in range 0:1".into(),
        ),
        (
            add(1, json!({"core-id": 1})),
            "Invalid CPU core-id: 1 must be in range 0:0".into(),
        ),
        (
            json!({"driver": CPU, "socket-id": 1, "core-id": 0}),
            "CPU thread-id is not set".into(),
        ),
        (add(0, json!({})), "CPU[0] with APIC ID 0 exists".into()),
        (
            add(1, json!({"node-id": 1})),
            "invalid node-id, must be 0".into(),
        ),
        (
            add(1, json!({"apic-id": 5})),
            "Invalid CPU [socket: 1, die: 0, core: 0, thread: 0] with APIC ID 5, valid index range 0:1"
                .into(),
        ),
    ] {
        assert_eq!(s.error("device_add", args.clone()), want, "{args}");
    }
    assert_eq!(
        s.error("device_del", json!({"id": "/machine/unattached/device[0]"})),
        "Boot CPU is unpluggable"
    );
    assert_eq!(
        s.ask("device_del", json!({"id": "nosuch"}))["error"],
        json!({"class": "DeviceNotFound", "desc": "Device 'nosuch' not found"})
    );
    assert_eq!(s.cpus().len(), 1);

    for cycle in 1..=2usize {
        s.ok("device_add", add(1, json!({"id": "c1"})));
        // The first arrives in the legacy bitmap (then the guest switches to the modern
        // interface); the second as the modern interface's insert event, on the same fd.
        if cycle == 1 {
            vm.expect_stdout("cpuhp: legacy up apic=1 gpe=1", WAIT);
            vm.expect_stdout("cpuhp: found cpu=1 apic=1", WAIT);
        } else {
            vm.expect_stdout("cpuhp: insert cpu=1 apic=1 gpe=1", WAIT);
        }
        vm.expect_nth(WAIT, "cpuhp: cpu apic=1 checked in", cycle);
        vm.expect_nth(WAIT, "cpuhp: online cpu=1\r\n", cycle);
        s.wait_event(
            "ACPI_DEVICE_OST",
            &json!({"info": {"device": "c1", "slot": "1", "slot-type": "CPU", "source": 1, "status": 0}}),
            cycle,
        );
        // Listed with a thread of this process, named and pinned like the others.
        let cpus = s.cpus();
        assert_eq!(cpus.len(), 2, "{cpus:?}");
        let (index, tid, path, socket) = cpus[1].clone();
        assert_eq!(
            (index, path.as_str(), socket),
            (1, "/machine/peripheral/c1", 1)
        );
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_else(|e| panic!("thread {tid} of {pid}: {e}"));
        assert_eq!(comm.trim(), "troupe-vcpu1");
        let info = s.hmp("info cpus");
        assert!(
            info.contains(&format!("  CPU #1: thread_id={tid}")),
            "{info}"
        );
        let actors = s.hmp("info actors");
        let line = actors
            .lines()
            .find(|l| l.starts_with("vcpu1 "))
            .unwrap_or_else(|| panic!("{actors}"));
        assert!(
            line.contains(&format!("thread {tid} (core {core})")),
            "{line}"
        );
        let hp = s.ok("query-hotpluggable-cpus", json!({}));
        assert_eq!(hp[0]["qom-path"], "/machine/peripheral/c1", "{hp}");
        // The slot is taken now, and the id.
        assert_eq!(
            s.error("device_add", add(1, json!({"id": "c2"}))),
            "CPU[1] with APIC ID 1 exists"
        );
        assert_eq!(
            s.error("device_add", add(1, json!({"id": "c1"}))),
            "Duplicate device ID 'c1'"
        );

        s.ok("device_del", json!({"id": "c1"}));
        vm.expect_nth(WAIT, "cpuhp: remove cpu=1 gpe=1", cycle);
        vm.expect_nth(WAIT, "cpuhp: ejected cpu=1 enabled=0", cycle);
        s.wait_event(
            "DEVICE_DELETED",
            &json!({"device": "c1", "path": "/machine/peripheral/c1"}),
            cycle,
        );
        assert_eq!(s.cpus().len(), 1);
        let deadline = Instant::now() + WAIT;
        while std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
            assert!(Instant::now() < deadline, "vCPU thread {tid} still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!s.hmp("info actors").contains("vcpu1 "));
    }
    s.ok("quit", json!({}));
    assert_eq!(code(vm.wait(WAIT)), 0, "{}", vm.stdout.text());
}

#[test]
fn a_vcpu_the_guest_knows_only_from_the_legacy_bitmap_cannot_be_unplugged_or_migrated() {
    // The guest sees the CPU arrive in the legacy bitmap and never switches to the modern
    // interface, which alone can unplug.
    let (mut vm, mut s) = start("timeout=600 stay_legacy", &[]);
    s.ok(
        "device_add",
        json!({"driver": CPU, "socket-id": 1, "core-id": 0, "thread-id": 0}),
    );
    vm.expect_stdout("cpuhp: legacy up apic=1 gpe=1", WAIT);
    let cpus = s.cpus();
    assert_eq!(cpus.len(), 2, "{cpus:?}");
    // The command line's isa-debug-exit is device[0].
    assert_eq!(cpus[1].2, "/machine/peripheral-anon/device[1]");
    assert_eq!(
        s.error(
            "device_del",
            json!({"id": "/machine/peripheral-anon/device[1]"})
        ),
        format!("acpi: device unplug request for not supported device type: {CPU}")
    );
    // A VM with a hot-plugged vCPU is not migrated without it.
    let e = s.error("migrate", json!({"uri": "exec:cat > /dev/null"}));
    assert!(e.contains("hot-plugged vCPU"), "{e}");
    // Unaffected, and a reset keeps the vCPU: the guest starts over and finds it present.
    s.ok("system_reset", json!({}));
    vm.expect_stdout("cpuhp: ready bitmap=0x3", WAIT);
    assert_eq!(s.cpus().len(), 2);
    assert_eq!(s.ok("query-status", json!({}))["status"], "running");
    s.ok("quit", json!({}));
    assert_eq!(code(vm.wait(WAIT)), 0);
}
