//! What the device tree shows through the monitor: `info qtree` (each device on its bus,
//! in QEMU's shape) and `query-pci`/`info pci` (each PCI function as it decodes now, from
//! its node's placement).

use devices::pci::{BarKind, PciDeviceInfo};
use serde_json::{json, Value};

use crate::supervisor::{DeviceTree, Node, SYSTEM_BUS};

/// Every PCI function of the tree as it decodes now, in slot order.
fn pci_functions(tree: &DeviceTree) -> Vec<PciDeviceInfo> {
    let mut v: Vec<PciDeviceInfo> = tree
        .iter()
        .filter(|n| n.pci_address().is_some())
        .filter_map(|n| n.placement.as_ref().and_then(|p| p.pci()))
        .collect();
    v.sort_by_key(|d| d.slot);
    v
}

/// `info qtree` text: the tree in QEMU's shape, each PCI function with its BARs where
/// they decode now.
pub fn qtree(tree: &DeviceTree) -> String {
    let pci = pci_functions(tree);
    let mut s = String::new();
    qtree_bus(&mut s, tree, &pci, SYSTEM_BUS, "System", 0);
    s
}

/// `query-pci` return value (a list with one bus).
pub fn query_pci(tree: &DeviceTree) -> Value {
    let devices: Vec<Value> = pci_functions(tree)
        .iter()
        .map(|d| {
            let regions: Vec<Value> = d
                .bars
                .iter()
                .map(|(i, kind, region, size)| {
                    let addr: Value = match region {
                        Some(r) => json!(r.addr),
                        None => json!(-1),
                    };
                    match kind {
                        BarKind::Io => {
                            json!({"bar": i, "size": size, "address": addr, "type": "io"})
                        }
                        BarKind::Mem32 { prefetch } | BarKind::Mem64 { prefetch } => json!({
                            "prefetch": prefetch,
                            "mem_type_64": matches!(kind, BarKind::Mem64 { .. }),
                            "bar": i, "size": size, "address": addr, "type": "memory"
                        }),
                    }
                })
                .chain(d.rom.iter().map(|(region, size)| {
                    let addr: Value = match region {
                        Some(r) => json!(r.addr),
                        None => json!(-1),
                    };
                    json!({"prefetch": false, "mem_type_64": false, "bar": 6,
                           "size": size, "address": addr, "type": "memory"})
                }))
                .collect();
            let mut v = json!({
                "irq_pin": d.irq_pin,
                "bus": 0,
                "qdev_id": d.id,
                "slot": d.slot.0,
                "class_info": {"class": class_code(d), "desc": d.class_name()},
                "id": {"device": d.device, "subsystem-vendor": d.subsystem_vendor,
                       "vendor": d.vendor, "subsystem": d.subsystem},
                "function": d.slot.1,
                "regions": regions,
            });
            if d.irq_pin != 0 {
                v["irq"] = json!(d.irq_line);
            }
            v
        })
        .collect();
    json!([{"bus": 0, "devices": devices}])
}

/// One bus of `info qtree` and everything under it, at `depth` levels of indentation:
/// its devices newest first, as QEMU lists them.
fn qtree_bus(
    s: &mut String,
    tree: &DeviceTree,
    pci: &[PciDeviceInfo],
    bus: &str,
    kind: &str,
    depth: usize,
) {
    let pad = "  ".repeat(depth);
    s.push_str(&format!("{pad}bus: {bus}\n{pad}  type {kind}\n"));
    // CPUs sit on no bus in QEMU: `info qtree` does not show them.
    for n in tree
        .children(bus)
        .filter(|n| n.vcpu().is_none())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        qtree_dev(s, tree, pci, n, depth + 1);
    }
}

fn qtree_dev(s: &mut String, tree: &DeviceTree, pci: &[PciDeviceInfo], n: &Node, depth: usize) {
    let pad = "  ".repeat(depth);
    let id = if n.user_id { n.id.as_str() } else { "" };
    s.push_str(&format!("{pad}dev: {}, id \"{id}\"\n", n.driver));
    for (k, v) in &n.props {
        s.push_str(&format!("{pad}  {k} = {v}\n"));
    }
    if let Some(d) = n
        .pci_address()
        .and_then(|a| pci.iter().find(|d| d.slot == a))
    {
        s.push_str(&format!(
            "{pad}  class {}, addr 00:{:02x}.{:x}, pci id {:04x}:{:04x} (sub {:04x}:{:04x})\n",
            d.class_name(),
            d.slot.0,
            d.slot.1,
            d.vendor,
            d.device,
            d.subsystem_vendor,
            d.subsystem
        ));
        // QEMU shows an unmapped BAR at all-ones.
        let bar = |i: usize, kind: &BarKind, region: &Option<devices::pci::Region>, size: u64| {
            let k = if matches!(kind, BarKind::Io) {
                "i/o"
            } else {
                "mem"
            };
            let a = region.as_ref().map_or(u64::MAX, |r| r.addr);
            format!(
                "{pad}  bar {i}: {k} at 0x{a:x} [0x{:x}]\n",
                a.wrapping_add(size - 1)
            )
        };
        for (i, kind, region, size) in &d.bars {
            s.push_str(&bar(*i, kind, region, *size));
        }
        if let Some((region, size)) = &d.rom {
            s.push_str(&bar(6, &BarKind::Mem32 { prefetch: false }, region, *size));
        }
    }
    for (bus, kind) in &n.buses {
        qtree_bus(s, tree, pci, bus, kind, depth + 1);
    }
    // A virtio PCI proxy carries its virtio device on a bus of its own.
    if let Some(base) = n
        .driver
        .strip_prefix("virtio-")
        .and_then(|d| d.strip_suffix("-pci"))
    {
        let inner = "  ".repeat(depth + 1);
        s.push_str(&format!(
            "{inner}bus: virtio-bus\n{inner}  type virtio-pci-bus\n{inner}  dev: virtio-{base}-device, id \"\"\n"
        ));
    }
}

fn class_code(d: &PciDeviceInfo) -> u32 {
    (u32::from(d.class.0) << 8) | u32::from(d.class.1)
}

/// `info tree` text (troupe's own): every node of the tree in build order, devices and
/// backends, with its parent, what the platform placed for it (and where its BARs and
/// ioeventfds are now), the backends it uses and the actors that run it.
pub fn tree_text(tree: &DeviceTree) -> String {
    use crate::supervisor::Resource;
    let mut s = String::new();
    for n in tree.iter() {
        s.push_str(&format!("{} ({})", n.id, n.driver));
        match (n.backend, tree.parent(n)) {
            (Some(_), Some(p)) => s.push_str(&format!(", backend of {}", p.id)),
            (Some(_), None) => s.push_str(", backend (unattached)"),
            (None, Some(p)) => s.push_str(&format!(" on {}, parent {}", n.bus, p.id)),
            (None, None) => s.push_str(&format!(" on {}", n.bus)),
        }
        s.push('\n');
        for (b, _) in &n.buses {
            s.push_str(&format!("  provides {b}\n"));
        }
        for r in &n.resources {
            let line = match r {
                Resource::PciFunction { slot, function } => {
                    format!("pci 00:{slot:02x}.{function:x}")
                }
                Resource::Bar { .. } => continue,
                Resource::IoPorts { base, len } => format!("io 0x{base:x}+{len}"),
                Resource::Irq(i) => format!("irq {i}"),
                Resource::IntxPin(_) => continue,
                Resource::MsixVectors(v) => format!("msix vectors {v}"),
                Resource::Memory { base, len } => format!("memory 0x{base:x}+0x{len:x}"),
                Resource::MsiRoutes(gsis) => format!(
                    "msi routes: gsi {}",
                    gsis.iter()
                        .map(|g| g.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                Resource::Ioeventfds(q) => format!("ioeventfds for {q} queues"),
                Resource::Vcpu { index, apic_id } => format!("vcpu {index}, apic id {apic_id}"),
            };
            s.push_str(&format!("  {line}\n"));
        }
        if let Some(p) = &n.placement {
            if let Some(d) = p.pci() {
                for (i, kind, region, size) in &d.bars {
                    let k = if matches!(kind, BarKind::Io) {
                        "io"
                    } else {
                        "mem"
                    };
                    match region {
                        Some(r) => s.push_str(&format!(
                            "  bar {i}: {k} at 0x{:x} size 0x{size:x}\n",
                            r.addr
                        )),
                        None => s.push_str(&format!("  bar {i}: {k} unmapped size 0x{size:x}\n")),
                    }
                }
                if let Some((region, size)) = &d.rom {
                    match region {
                        Some(r) => {
                            s.push_str(&format!("  bar 6: rom at 0x{:x} size 0x{size:x}\n", r.addr))
                        }
                        None => s.push_str(&format!("  bar 6: rom unmapped size 0x{size:x}\n")),
                    }
                }
                if d.irq_pin != 0 {
                    s.push_str(&format!(
                        "  intx: pin {} line {}\n",
                        (b'A' + d.irq_pin - 1) as char,
                        d.irq_line
                    ));
                }
            }
            for e in p.ioeventfds() {
                let space = if e.pio { "io" } else { "mmio" };
                let data = e
                    .datamatch
                    .map(|v| format!(" data {v}"))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "  ioeventfd: {space} 0x{:x}{data} -> queue {}\n",
                    e.addr, e.queue
                ));
            }
        }
        for u in &n.uses {
            s.push_str(&format!("  uses {u}\n"));
        }
        if !n.actors.is_empty() {
            s.push_str(&format!("  actors: {}\n", n.actors.join(" ")));
        }
    }
    s
}
