//! The device tree the supervisor owns: every device of the machine as a node on a bus,
//! with the resources the platform placed for it, the actors behind it and the control
//! mailbox the supervisor pauses, resumes, saves and restores it through.
//!
//! The shape is QEMU's qdev tree: a device sits on a bus (`main-system-bus`, `pci.0`,
//! `isa.0`, `ide.0`) and may itself provide buses (the i440FX host provides `pci.0`,
//! PIIX3 `isa.0`). `main-system-bus` always exists. Nodes are kept in insertion order,
//! which the machine builder makes the dependency order (a device after what it uses):
//! the supervisor pauses them last first and resumes them first first.

use crate::runtime::ControlHandle;

/// The root bus every machine has.
pub const SYSTEM_BUS: &str = "main-system-bus";

/// Why the tree refused a change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("a device with id '{0}' already exists")]
    DuplicateId(String),
    #[error("bus '{bus}' (for device '{id}') does not exist")]
    UnknownBus { id: String, bus: String },
    #[error("bus '{0}' already exists")]
    DuplicateBus(String),
    #[error("no device with id '{0}'")]
    UnknownId(String),
    #[error("device '{id}' still has devices on its bus '{bus}' (first: '{child}')")]
    HasChildren {
        id: String,
        bus: String,
        child: String,
    },
}

/// Whether a BAR decodes port I/O, memory, or is the expansion ROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarSpace {
    Io,
    Mmio,
    Rom,
}

/// Something the platform placed for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// Its PCI slot and function on the root bus.
    PciFunction { slot: u8, function: u8 },
    /// A BAR the device decodes (the guest's firmware chooses where it goes; the
    /// current address is the PCI platform's to report).
    Bar {
        index: u8,
        space: BarSpace,
        size: u64,
    },
    /// Fixed port I/O: `len` ports from `base`.
    IoPorts { base: u16, len: u16 },
    /// An interrupt line (ISA IRQ = GSI on the PC).
    Irq(u32),
    /// The PCI INTx pin it raises (1 = INTA#).
    IntxPin(u8),
    /// How many MSI-X vectors it has (each an irqfd once the guest programs it).
    MsixVectors(u16),
    /// Fixed guest-physical memory: `len` bytes from `base`.
    Memory { base: u64, len: u64 },
}

/// One device.
#[derive(Debug, Clone)]
pub struct Node {
    /// QEMU's `id=`, or a generated path: `/machine/peripheral-anon/device[N]` for an
    /// anonymous `-device`, `/machine/<type>[N]` for a device the board builds.
    pub id: String,
    /// QEMU's type name (`virtio-net-pci`, `e1000`, `isa-serial`, `i440FX`...).
    pub driver: String,
    /// The bus it sits on.
    pub bus: String,
    /// The buses it provides, with their QEMU type (`pci.0`, `PCI`).
    pub buses: Vec<(String, String)>,
    /// Whether `id` was given by the user (`id=`); QEMU shows only those.
    pub user_id: bool,
    pub resources: Vec<Resource>,
    /// Properties QEMU shows for it in `info qtree` (name, value already formatted).
    pub props: Vec<(String, String)>,
    /// The registry ids of the actors that run it (its worker, its backend).
    pub actors: Vec<String>,
    /// How the supervisor pauses, resumes, saves and restores it; None for a device with
    /// no state of its own (or whose state another node's handle carries).
    pub control: Option<ControlHandle>,
}

impl Node {
    pub fn new(id: impl Into<String>, driver: impl Into<String>, bus: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            driver: driver.into(),
            bus: bus.into(),
            buses: Vec::new(),
            user_id: false,
            resources: Vec::new(),
            props: Vec::new(),
            actors: Vec::new(),
            control: None,
        }
    }

    /// A device the user named with `id=`.
    pub fn user(mut self) -> Self {
        self.user_id = true;
        self
    }

    pub fn providing(mut self, bus: &str, kind: &str) -> Self {
        self.buses.push((bus.into(), kind.into()));
        self
    }

    pub fn with(mut self, r: Resource) -> Self {
        self.resources.push(r);
        self
    }

    pub fn prop(mut self, name: &str, value: impl Into<String>) -> Self {
        self.props.push((name.into(), value.into()));
        self
    }

    pub fn actor(mut self, id: &str) -> Self {
        if !self.actors.iter().any(|a| a == id) {
            self.actors.push(id.into());
        }
        self
    }

    /// Its control mailbox; the actor answering it is one of the node's actors.
    pub fn control(mut self, c: ControlHandle) -> Self {
        let id = c.id().to_string();
        self.control = Some(c);
        self.actor(&id)
    }

    /// Its PCI slot and function, if it is a PCI device.
    pub fn pci_address(&self) -> Option<(u8, u8)> {
        self.resources.iter().find_map(|r| match r {
            Resource::PciFunction { slot, function } => Some((*slot, *function)),
            _ => None,
        })
    }
}

/// Every device of the machine, in dependency order.
#[derive(Debug, Clone, Default)]
pub struct DeviceTree {
    nodes: Vec<Node>,
}

impl DeviceTree {
    pub fn new() -> Self {
        Self::default()
    }

    fn bus_exists(&self, bus: &str) -> bool {
        bus == SYSTEM_BUS
            || self
                .nodes
                .iter()
                .any(|n| n.buses.iter().any(|(b, _)| b == bus))
    }

    /// Add a device after every device already there. Refused if its id is taken, its
    /// bus does not exist, or a bus it provides already does.
    pub fn insert(&mut self, node: Node) -> Result<(), TreeError> {
        if self.get(&node.id).is_some() {
            return Err(TreeError::DuplicateId(node.id));
        }
        if !self.bus_exists(&node.bus) {
            return Err(TreeError::UnknownBus {
                id: node.id,
                bus: node.bus,
            });
        }
        if let Some((b, _)) = node.buses.iter().find(|(b, _)| self.bus_exists(b)) {
            return Err(TreeError::DuplicateBus(b.clone()));
        }
        self.nodes.push(node);
        Ok(())
    }

    /// Take a device out. Refused while a device sits on a bus it provides.
    pub fn remove(&mut self, id: &str) -> Result<Node, TreeError> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| TreeError::UnknownId(id.into()))?;
        for (bus, _) in &self.nodes[i].buses {
            if let Some(child) = self.children(bus).next() {
                return Err(TreeError::HasChildren {
                    id: id.into(),
                    bus: bus.clone(),
                    child: child.id.clone(),
                });
            }
        }
        Ok(self.nodes.remove(i))
    }

    pub fn get(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The devices on `bus`, in insertion order.
    pub fn children<'a>(&'a self, bus: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.bus == bus)
    }

    /// Every device in dependency (insertion) order; `.rev()` for users before what they
    /// use.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Node> {
        self.nodes.iter()
    }

    /// The control mailboxes in dependency order.
    pub fn controls(&self) -> impl DoubleEndedIterator<Item = &ControlHandle> {
        self.nodes.iter().filter_map(|n| n.control.as_ref())
    }

    /// The node an actor (by registry id) belongs to.
    pub fn node_of_actor(&self, actor: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.actors.iter().any(|a| a == actor))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Hands out QEMU's names for anonymous devices: `/machine/peripheral-anon/device[N]`
/// for each `-device` without `id=`, N counting from 0 in command-line order.
#[derive(Debug, Default)]
pub struct AnonIds {
    next: usize,
}

impl AnonIds {
    pub fn take(&mut self) -> String {
        let id = format!("/machine/peripheral-anon/device[{}]", self.next);
        self.next += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc() -> DeviceTree {
        let mut t = DeviceTree::new();
        t.insert(
            Node::new("/machine/i440FX-pcihost", "i440FX-pcihost", SYSTEM_BUS)
                .providing("pci.0", "PCI"),
        )
        .unwrap();
        t.insert(
            Node::new("/machine/PIIX3", "PIIX3", "pci.0")
                .with(Resource::PciFunction {
                    slot: 1,
                    function: 0,
                })
                .providing("isa.0", "ISA"),
        )
        .unwrap();
        t
    }

    #[test]
    fn a_device_goes_on_an_existing_bus_under_a_free_id() {
        let mut t = pc();
        t.insert(Node::new("nic0", "virtio-net-pci", "pci.0").user())
            .unwrap();
        assert_eq!(
            t.insert(Node::new("nic0", "e1000", "pci.0")),
            Err(TreeError::DuplicateId("nic0".into()))
        );
        let e = t
            .insert(Node::new("ide-hd0", "ide-hd", "ide.0"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "bus 'ide.0' (for device 'ide-hd0') does not exist"
        );
        assert_eq!(
            t.insert(Node::new("x", "pci-bridge", "pci.0").providing("isa.0", "ISA")),
            Err(TreeError::DuplicateBus("isa.0".into()))
        );
        let kids: Vec<&str> = t.children("pci.0").map(|n| n.id.as_str()).collect();
        assert_eq!(kids, ["/machine/PIIX3", "nic0"]);
        assert_eq!(t.get("/machine/PIIX3").unwrap().pci_address(), Some((1, 0)));
    }

    #[test]
    fn a_device_with_devices_on_its_bus_cannot_be_removed() {
        let mut t = pc();
        t.insert(Node::new("com1", "isa-serial", "isa.0")).unwrap();
        let e = t.remove("/machine/PIIX3").unwrap_err();
        assert_eq!(
            e,
            TreeError::HasChildren {
                id: "/machine/PIIX3".into(),
                bus: "isa.0".into(),
                child: "com1".into()
            }
        );
        assert_eq!(t.remove("com1").unwrap().driver, "isa-serial");
        assert_eq!(
            t.remove("com1").unwrap_err(),
            TreeError::UnknownId("com1".into())
        );
        t.remove("/machine/PIIX3").unwrap();
        // Its bus went with it.
        assert!(matches!(
            t.insert(Node::new("com1", "isa-serial", "isa.0")),
            Err(TreeError::UnknownBus { .. })
        ));
    }

    #[test]
    fn nodes_iterate_in_insertion_order_and_back_and_controls_follow() {
        let mut t = pc();
        let ctl = |id: &str| ControlHandle::new(id, |_| Ok(()));
        t.insert(Node::new("blk", "virtio-blk-pci", "pci.0").control(ctl("virtio-blk0")))
            .unwrap();
        t.insert(Node::new("nic", "virtio-net-pci", "pci.0").control(ctl("virtio-net0")))
            .unwrap();
        let ids: Vec<&str> = t.iter().rev().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            ["nic", "blk", "/machine/PIIX3", "/machine/i440FX-pcihost"]
        );
        let c: Vec<&str> = t.controls().map(|c| c.id()).collect();
        assert_eq!(c, ["virtio-blk0", "virtio-net0"]);
        assert_eq!(t.node_of_actor("virtio-net0").unwrap().id, "nic");
        assert!(t.node_of_actor("serial0").is_none());
    }

    #[test]
    fn anonymous_devices_are_numbered_as_qemu_does() {
        let mut a = AnonIds::default();
        assert_eq!(a.take(), "/machine/peripheral-anon/device[0]");
        assert_eq!(a.take(), "/machine/peripheral-anon/device[1]");
    }
}
