//! The platform's part of the device tree: a node for each device as it is built, with
//! the resources placed for it. [`add_device`] is the one way a device enters the tree,
//! at build time and (later) by hotplug.

use std::sync::Arc;

use actors::runtime::ControlHandle;
use actors::supervisor::{
    BarSpace, DeviceTree, Ioeventfd, Node, Placement, Resource, TreeError, SYSTEM_BUS,
};
use actors::virtio::VirtioPciHost;
use devices::pci::{BarKind, PciDeviceInfo, Slot};

use super::pci::PciPlatform;

/// Where a PCI function decodes now, asked of the PCI platform (and, for a virtio device,
/// where its ioeventfds listen).
pub struct PciPlacement {
    pub pci: Arc<PciPlatform>,
    pub slot: Slot,
    pub virtio: Option<Arc<VirtioPciHost>>,
}

impl Placement for PciPlacement {
    fn pci(&self) -> Option<PciDeviceInfo> {
        self.pci.info_of(self.slot)
    }

    fn ioeventfds(&self) -> Vec<Ioeventfd> {
        self.virtio
            .as_ref()
            .map(|h| h.ioeventfds())
            .unwrap_or_default()
    }
}

/// Put `node` in the tree. A PCI device (one with a [`Resource::PciFunction`]) gets the
/// BARs, ROM and interrupt pin its function on the bus decodes added to its resources,
/// and (unless it has one) a placement that reads where they decode now.
pub fn add_device(
    tree: &mut DeviceTree,
    pci: &Arc<PciPlatform>,
    node: Node,
) -> Result<(), TreeError> {
    tree.insert(placed(pci, node))
}

/// `node` with what its PCI function decodes added (see [`add_device`]).
pub fn placed(pci: &Arc<PciPlatform>, mut node: Node) -> Node {
    if let Some(slot) = node.pci_address() {
        if node.placement.is_none() {
            node.placement = Some(Arc::new(PciPlacement {
                pci: pci.clone(),
                slot,
                virtio: None,
            }));
        }
        if let Some(f) = pci.info().into_iter().find(|f| f.slot == slot) {
            for (index, kind, _, size) in &f.bars {
                node.resources.push(Resource::Bar {
                    index: *index as u8,
                    space: match kind {
                        BarKind::Io => BarSpace::Io,
                        _ => BarSpace::Mmio,
                    },
                    size: *size,
                });
            }
            if let Some((_, size)) = f.rom {
                node.resources.push(Resource::Bar {
                    index: 6,
                    space: BarSpace::Rom,
                    size,
                });
            }
            if f.irq_pin != 0 {
                node.resources.push(Resource::IntxPin(f.irq_pin));
            }
        }
    }
    node
}

/// A device of the board (not from `-device`): QEMU gives it no id; troupe names it
/// `/machine/<type>`, with `[n]` for the n-th of a type that repeats.
pub fn board_id(driver: &str, n: Option<usize>) -> String {
    match n {
        Some(n) => format!("/machine/{driver}[{n}]"),
        None => format!("/machine/{driver}"),
    }
}

/// The node of a PCI function at `slot`.
pub fn pci_node(id: String, driver: &str, slot: (u8, u8)) -> Node {
    Node::new(id, driver, "pci.0").with(Resource::PciFunction {
        slot: slot.0,
        function: slot.1,
    })
}

/// The chipset: the i440FX host (which provides `pci.0`; its control mailbox carries the
/// state of every chipset function), the i440FX and PIIX3 functions (PIIX3 provides
/// `isa.0`), and PIIX4 PM.
pub fn chipset(
    tree: &mut DeviceTree,
    pci: &Arc<PciPlatform>,
    control: ControlHandle,
    pm: ControlHandle,
) -> Result<(), TreeError> {
    add_device(
        tree,
        pci,
        Node::new(
            board_id("i440FX-pcihost", None),
            "i440FX-pcihost",
            SYSTEM_BUS,
        )
        .providing("pci.0", "PCI")
        .with(Resource::IoPorts {
            base: 0xcf8,
            len: 8,
        })
        .control(control),
    )?;
    add_device(
        tree,
        pci,
        pci_node(board_id("i440FX", None), "i440FX", super::pci::I440FX_SLOT),
    )?;
    add_device(
        tree,
        pci,
        pci_node(board_id("PIIX3", None), "PIIX3", super::pci::PIIX3_SLOT)
            .providing("isa.0", "ISA"),
    )?;
    add_device(
        tree,
        pci,
        pci_node(
            board_id("PIIX4_PM", None),
            "PIIX4_PM",
            super::pci::PIIX4_PM_SLOT,
        )
        .with(Resource::IoPorts {
            base: 0xafe0,
            len: 4,
        })
        .with(Resource::Irq(9))
        .control(pm),
    )
}

/// QEMU's `name = 4 (0x4)` form of a number property.
pub fn num(v: u64) -> String {
    format!("{v} (0x{v:x})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_qemu_prints_them() {
        assert_eq!(num(1016), "1016 (0x3f8)");
        assert_eq!(board_id("isa-serial", Some(1)), "/machine/isa-serial[1]");
    }
}
