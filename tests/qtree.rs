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
    // virtio-blk's worker under QEMU's names for anonymous devices; the block engine and
    // the user-mode stacks under their backends' nodes.
    let actors = hmp(&mut q, "info actors");
    for line in [
        "virtio-net0 -> nic0 (virtio-net-pci)",
        "e1000-0 -> /machine/peripheral-anon/device[0] (e1000)",
        "virtio-blk0 -> /machine/peripheral-anon/device[1] (virtio-blk-pci)",
        "blk-d0 -> /block/d0 (raw)",
        "slirp-n0 -> /netdevs/n0 (user)",
        "slirp-n1 -> /netdevs/n1 (user)",
        "serial0 -> /machine/isa-serial[0] (isa-serial)",
    ] {
        assert!(
            actors.lines().any(|l| l.trim() == line),
            "no {line:?} in:\n{actors}"
        );
    }

    // info tree: each backend hangs under the device using it; a PCI device shows where
    // its BARs are now (the addresses query-pci reports), its INTx and MSI routes and,
    // for virtio, where its queue-notify ioeventfds listen.
    let tree = hmp(&mut q, "info tree");
    for line in [
        "/netdevs/n0 (user), backend of nic0",
        "/netdevs/n1 (user), backend of /machine/peripheral-anon/device[0]",
        "/block/d0 (raw), backend of /machine/peripheral-anon/device[1]",
        "nic0 (virtio-net-pci) on pci.0, parent /machine/i440FX-pcihost",
        "  uses /netdevs/n0",
    ] {
        assert!(tree.lines().any(|l| l == line), "no {line:?} in:\n{tree}");
    }
    let nic0 = tree
        .split("\nnic0 (")
        .nth(1)
        .and_then(|t| t.split("\n/").next())
        .unwrap_or_else(|| panic!("no nic0 in:\n{tree}"));
    let f = functions
        .iter()
        .find(|f| f["qdev_id"] == "nic0")
        .expect("nic0 in query-pci");
    for r in f["regions"].as_array().unwrap() {
        let bar = r["bar"].as_u64().unwrap();
        // -1: not mapped (no firmware programmed it).
        let at = match r["address"].as_u64() {
            Some(a) => format!(" at 0x{a:x} "),
            None => " unmapped ".into(),
        };
        let line = nic0
            .lines()
            .find(|l| l.starts_with(&format!("  bar {bar}: ")))
            .unwrap_or_else(|| panic!("no bar {bar} in:\n{nic0}"));
        assert!(line.contains(&at), "bar {bar}{at}is not {line:?}");
    }
    assert!(nic0.contains("  msi routes: gsi "), "{nic0}");
    // Its queue notifications listen where its notify BARs decode, and nowhere while
    // they do not.
    let notify_mapped = nic0
        .lines()
        .any(|l| (l.starts_with("  bar 0: ") || l.starts_with("  bar 4: ")) && l.contains(" at "));
    assert_eq!(nic0.contains("  ioeventfd: "), notify_mapped, "{nic0}");
    assert!(nic0.contains("  intx: pin A line "), "{nic0}");

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

/// The threads of process `pid`: (tid, name).
fn threads(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| {
            let tid = e.ok()?.file_name().to_str()?.to_string();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            Some((tid, comm.trim().to_string()))
        })
        .collect()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `netdev_add` puts a backend in the supervisor's tree and `netdev_del` takes it out and
/// closes it: it shows in `info network`, `info actors` and `info tree` and then no
/// longer; its thread and its descriptors (the forwarded port's listener) go, so the
/// process has no more threads and descriptors than before; `info qtree` (devices only)
/// is the same throughout; and its id can be used again.
#[test]
fn netdev_add_and_netdev_del_add_and_remove_a_backend_node_and_what_it_opened() {
    common::require_kvm();
    let port = free_port();
    let fwd = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let k = guest("demo");
    let vm = Vm::troupe(&[
        "-m",
        "64",
        "-nodefaults",
        "-serial",
        "stdio",
        "-kernel",
        k.to_str().unwrap(),
        "-qmp",
        &qmp,
    ])
    .spawn();
    vm.expect_stdout("demo: 1/1 vCPUs running", T);
    let pid = vm.pid();
    let mut q = Qmp::open(port);
    q.ask(r#"{"execute": "qmp_capabilities"}"#);
    let qtree = hmp(&mut q, "info qtree");
    let (threads0, fds0) = (threads(pid).len(), fds(pid));
    let shown = |q: &mut Qmp| {
        (
            hmp(q, "info network").contains("hn0: index=0,type=user"),
            hmp(q, "info actors").contains("slirp-hn0 -> /netdevs/hn0 (user)"),
            hmp(q, "info tree")
                .lines()
                .any(|l| l == "/netdevs/hn0 (user), backend (unattached)"),
        )
    };
    assert_eq!(shown(&mut q), (false, false, false));

    let add = format!("netdev_add user,id=hn0,hostfwd=tcp:127.0.0.1:{fwd}-:22");
    assert_eq!(hmp(&mut q, &add), "");
    assert_eq!(shown(&mut q), (true, true, true));
    assert!(
        threads(pid).iter().any(|(_, n)| n.ends_with("slirp-hn0")),
        "{:?}",
        threads(pid)
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", fwd)).is_ok());
    assert!(fds(pid) > fds0, "the backend holds descriptors");
    assert_eq!(
        hmp(&mut q, "info qtree"),
        qtree,
        "a backend is not a device"
    );
    // The same id again is refused while it is there.
    assert!(hmp(&mut q, "netdev_add user,id=hn0").contains("duplicate"));

    assert_eq!(hmp(&mut q, "netdev_del hn0"), "");
    assert_eq!(shown(&mut q), (false, false, false));
    assert_eq!(hmp(&mut q, "info qtree"), qtree);
    // Its thread ends and its descriptors close; the process is back where it was (the
    // runtime's idle helper threads end on their own after a few seconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (t, f) = (threads(pid), fds(pid));
        let gone = !t.iter().any(|(_, n)| n.ends_with("slirp-hn0"));
        if gone && t.len() <= threads0 && f <= fds0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "threads {} (was {threads0}): {t:?}; fds {f} (was {fds0})",
            t.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", fwd)).is_err());
    assert!(hmp(&mut q, "netdev_del hn0").contains("Device 'hn0' not found"));
    // The id is free again.
    assert_eq!(hmp(&mut q, "netdev_add user,id=hn0"), "");
    assert!(hmp(&mut q, "info network").contains("hn0: index=0,type=user"));
    drop(vm);
}
