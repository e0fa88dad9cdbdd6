//! The device tree through the monitor: `info qtree` shows each device on its bus with its
//! id in QEMU's shape, the PCI addresses it shows are those `query-pci` reports, `info
//! actors` names the device each device actor runs, and `stop`/`cont` (which walk the
//! tree) still pause and resume the machine.

mod common;

use std::time::Duration;

use common::{free_port, guest, Qmp, TempDir, Vm};

const T: Duration = Duration::from_secs(60);

/// One `dev:` line of `info qtree`: (driver, id, the bus it is on, `addr 00:SS.F` if PCI,
/// `pci id VVVV:DDDD` if PCI).
#[derive(Debug)]
struct Dev {
    driver: String,
    id: String,
    bus: String,
    addr: Option<(u64, u64)>,
    pci_id: Option<(u64, u64)>,
    /// Its `addr = SS.F` property.
    addr_prop: Option<String>,
}

fn parse_qtree(text: &str) -> Vec<Dev> {
    // (indentation, bus name) of the buses enclosing the current line.
    let mut buses: Vec<(usize, String)> = Vec::new();
    let mut devs: Vec<(usize, Dev)> = Vec::new();
    for l in text.lines() {
        let indent = l.len() - l.trim_start().len();
        let t = l.trim_start();
        if let Some(b) = t.strip_prefix("bus: ") {
            buses.retain(|(i, _)| *i < indent);
            buses.push((indent, b.to_string()));
        } else if let Some(d) = t.strip_prefix("dev: ") {
            buses.retain(|(i, _)| *i < indent);
            let (driver, id) = d.split_once(", id ").expect(l);
            devs.push((
                indent,
                Dev {
                    driver: driver.into(),
                    id: id.trim_matches('"').into(),
                    bus: buses.last().map(|(_, b)| b.clone()).unwrap_or_default(),
                    addr: None,
                    pci_id: None,
                    addr_prop: None,
                },
            ));
        } else if let Some(a) = t.strip_prefix("addr = ") {
            let (_, dev) = devs.last_mut().expect(l);
            dev.addr_prop = Some(a.to_string());
        } else if let Some(c) = t.strip_prefix("class ") {
            // class Ethernet controller, addr 00:03.0, pci id 1af4:1000 (sub ...)
            let (_, rest) = c.split_once(", addr 00:").expect(l);
            let (slot, rest) = rest.split_once('.').expect(l);
            let (func, rest) = rest.split_once(", pci id ").expect(l);
            let (vendor, rest) = rest.split_once(':').expect(l);
            let device = &rest[..4];
            let hex = |s: &str| u64::from_str_radix(s, 16).expect(l);
            let (_, dev) = devs.last_mut().expect(l);
            dev.addr = Some((hex(slot), hex(func)));
            dev.pci_id = Some((hex(vendor), hex(device)));
        }
    }
    devs.into_iter().map(|(_, d)| d).collect()
}

fn hmp(q: &mut Qmp, line: &str) -> String {
    let v = q.ask(
        &serde_json::json!({"execute": "human-monitor-command",
                            "arguments": {"command-line": line}})
        .to_string(),
    );
    v["return"]
        .as_str()
        .unwrap_or_else(|| panic!("{line}: {v}"))
        .to_string()
}

#[test]
fn info_qtree_shows_each_device_on_its_bus_at_the_address_query_pci_reports() {
    common::require_kvm();
    let dir = TempDir::new("qtree");
    let img = dir.path("d0.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("if=none,id=d0,file={},format=raw", img.display());
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let k = guest("demo");
    let vm = Vm::troupe(&[
        "-m",
        "128",
        "-smp",
        "2",
        "-nodefaults",
        "-serial",
        "stdio",
        "-kernel",
        k.to_str().unwrap(),
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0,id=nic0",
        "-netdev",
        "user,id=n1",
        "-device",
        "e1000,netdev=n1",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0",
        "-qmp",
        &qmp,
    ])
    .spawn();
    vm.expect_stdout("demo: 2/2 vCPUs running", T);
    let mut q = Qmp::open(port);
    q.ask(r#"{"execute": "qmp_capabilities"}"#);

    let text = hmp(&mut q, "info qtree");
    let devs = parse_qtree(&text);
    let find = |driver: &str| -> &Dev {
        let mut it = devs.iter().filter(|d| d.driver == driver);
        let d = it.next().unwrap_or_else(|| panic!("no {driver}:\n{text}"));
        assert!(it.next().is_none(), "two {driver}:\n{text}");
        d
    };
    let on = |driver: &str, bus: &str, id: &str| {
        let d = find(driver);
        assert_eq!(
            (d.bus.as_str(), d.id.as_str()),
            (bus, id),
            "{driver}:\n{text}"
        );
    };
    on("i440FX-pcihost", "main-system-bus", "");
    on("PIIX3", "pci.0", "");
    on("piix3-ide", "pci.0", "");
    on("virtio-net-pci", "pci.0", "nic0");
    // An anonymous device shows an empty id, as in QEMU.
    on("e1000", "pci.0", "");
    on("virtio-blk-pci", "pci.0", "");
    on("virtio-blk-device", "virtio-bus", "");
    on("isa-serial", "isa.0", "");
    on("mc146818rtc", "isa.0", "");
    on("i8042", "isa.0", "");
    // A -device shows its addr property, as QEMU does, where the function really is.
    for driver in ["virtio-net-pci", "e1000", "virtio-blk-pci"] {
        let d = find(driver);
        let (slot, func) = d.addr.unwrap_or_else(|| panic!("{driver} has no address"));
        assert_eq!(
            d.addr_prop.as_deref(),
            Some(format!("{slot:02x}.{func:x}").as_str()),
            "{driver}:\n{text}"
        );
    }

    // Every function query-pci reports is in the tree at the same address, with the same
    // ids; and the tree shows no PCI function query-pci does not.
    let pci = q.ask(r#"{"execute": "query-pci"}"#);
    let functions = pci["return"][0]["devices"]
        .as_array()
        .expect("query-pci")
        .clone();
    let in_tree: Vec<&Dev> = devs.iter().filter(|d| d.addr.is_some()).collect();
    assert_eq!(functions.len(), in_tree.len(), "{pci}\n{text}");
    for f in &functions {
        let at = (f["slot"].as_u64().unwrap(), f["function"].as_u64().unwrap());
        let d = in_tree
            .iter()
            .find(|d| d.addr == Some(at))
            .unwrap_or_else(|| panic!("{f} is not in the tree:\n{text}"));
        let ids = (
            f["id"]["vendor"].as_u64().unwrap(),
            f["id"]["device"].as_u64().unwrap(),
        );
        assert_eq!(d.pci_id, Some(ids), "{f} vs {d:?}");
        assert_eq!(f["qdev_id"].as_str().unwrap(), d.id, "{f} vs {d:?}");
    }

    // info actors names the node of each device actor: the e1000's receive thread and the
    // virtio-blk's worker and block backend under QEMU's names for anonymous devices.
    let actors = hmp(&mut q, "info actors");
    for line in [
        "virtio-net0 -> nic0 (virtio-net-pci)",
        "e1000-0 -> /machine/peripheral-anon/device[0] (e1000)",
        "virtio-blk0 -> /machine/peripheral-anon/device[1] (virtio-blk-pci)",
        "blk-d0 -> /machine/peripheral-anon/device[1] (virtio-blk-pci)",
        "serial0 -> /machine/isa-serial[0] (isa-serial)",
    ] {
        assert!(
            actors.lines().any(|l| l.trim() == line),
            "no {line:?} in:\n{actors}"
        );
    }

    // stop and cont walk the tree and still work.
    let status = |q: &mut Qmp| {
        q.ask(r#"{"execute": "query-status"}"#)["return"]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(q.ask(r#"{"execute": "stop"}"#)["return"].is_object());
    assert_eq!(status(&mut q), "paused");
    assert!(q.ask(r#"{"execute": "cont"}"#)["return"].is_object());
    assert_eq!(status(&mut q), "running");
    drop(vm);
}
