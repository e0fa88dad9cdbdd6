//! The device tree the supervisor owns: every device of the machine as a node on a bus,
//! with the resources the platform placed for it, the actors behind it and the control
//! mailbox the supervisor pauses, resumes, saves and restores it through.
//!
//! The shape is QEMU's qdev tree: a device sits on a bus (`main-system-bus`, `pci.0`,
//! `isa.0`, `ide.0`) and may itself provide buses (the i440FX host provides `pci.0`,
//! PIIX3 `isa.0`). `main-system-bus` always exists. Nodes are kept in insertion order,
//! which the machine builder makes the dependency order (a device after what it uses):
//! the supervisor pauses them last first and resumes them first first.
//!
//! Backends (a NIC's netdev, a drive's block image, a chardev, the VNC display) are nodes
//! too, under [`BACKENDS`] with ids of QOM's path shape (`/netdevs/ID`, `/block/ID`,
//! `/chardevs/ID`, `/display/vnc`); a device names the backends it uses
//! ([`Node::uses`]), and each such backend's parent is that device. Adding a node
//! ([`DeviceTree::insert`]) and removing one ([`DeviceTree::remove`], after which the
//! caller runs the node's [`Teardown`]) is how the machine is built and changed.

use crate::runtime::ControlHandle;

/// The root bus every machine has.
pub const SYSTEM_BUS: &str = "main-system-bus";

/// Where backends hang (not a bus: `info qtree` does not show them).
pub const BACKENDS: &str = "/backends";

/// What kind of backend a node is, and the id space its name lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A NIC backend (`-netdev`, `netdev_add`).
    Netdev,
    /// A drive's image (`-drive`).
    Block,
    /// A character device (`-chardev`, `-serial`...).
    Chardev,
    /// Where the screen is shown (the VNC server).
    Display,
    /// A memory backend (`object_add memory-backend-ram,...`) a DIMM maps.
    Memory,
}

impl BackendKind {
    /// The folder of its ids (`/netdevs/n0`).
    pub fn folder(self) -> &'static str {
        match self {
            Self::Netdev => "netdevs",
            Self::Block => "block",
            Self::Chardev => "chardevs",
            Self::Display => "display",
            Self::Memory => "objects",
        }
    }

    /// The tree id of the backend the user calls `name`.
    pub fn id(self, name: &str) -> String {
        format!("/{}/{name}", self.folder())
    }
}

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
    #[error("device '{id}' uses '{backend}', which is not a backend in the tree")]
    UnknownBackend { id: String, backend: String },
    #[error("backend '{backend}' (for '{id}') is already used by '{user}'")]
    BackendInUse {
        id: String,
        backend: String,
        user: String,
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
    /// GSIs routed to its MSI-X vectors (each with an irqfd).
    MsiRoutes(Vec<u32>),
    /// Queue notifications that are ioeventfds (where they sit follows the BARs: see
    /// [`Placement::ioeventfds`]).
    Ioeventfds(u16),
    /// A vCPU: its index (the possible CPU's, as `cpu-index` shows it) and APIC id.
    Vcpu { index: u32, apic_id: u32 },
}

/// Where an ioeventfd listens now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ioeventfd {
    /// Port I/O (true) or MMIO.
    pub pio: bool,
    pub addr: u64,
    /// The value a write must carry to signal it (legacy virtio: the queue index).
    pub datamatch: Option<u64>,
    /// The queue it wakes.
    pub queue: u16,
}

/// What a device decodes as the guest has programmed it, read when asked (BARs move when
/// the firmware or the guest reprograms them, ioeventfds follow).
pub trait Placement: Send + Sync {
    /// Its PCI function as it decodes now: BAR addresses, INTx pin and line, ids.
    fn pci(&self) -> Option<devices::pci::PciDeviceInfo>;
    /// Its ioeventfds where they listen now.
    fn ioeventfds(&self) -> Vec<Ioeventfd>;
}

/// Undoes what adding a node placed (closes a backend, unmaps BARs, frees routes); run
/// once, by whoever took the node out of the tree. Err is the message for the user.
#[derive(Clone)]
pub struct Teardown(std::sync::Arc<std::sync::Mutex<Option<TeardownFn>>>);

/// What a [`Teardown`] runs.
type TeardownFn = Box<dyn FnOnce() -> Result<(), String> + Send + 'static>;

impl Teardown {
    pub fn new(f: impl FnOnce() -> Result<(), String> + Send + 'static) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Some(Box::new(
            f,
        )))))
    }

    /// Run it (the first call only).
    pub fn run(&self) -> Result<(), String> {
        let f = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        f.map_or(Ok(()), |f| f())
    }
}

impl std::fmt::Debug for Teardown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Teardown")
    }
}

impl Node {
    /// The vCPU a CPU node is: (index, APIC id).
    pub fn vcpu(&self) -> Option<(u32, u32)> {
        self.resources.iter().find_map(|r| match r {
            Resource::Vcpu { index, apic_id } => Some((*index, *apic_id)),
            _ => None,
        })
    }
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
    /// A backend's kind (None: a device).
    pub backend: Option<BackendKind>,
    /// The backends (tree ids) a device uses.
    pub uses: Vec<String>,
    /// A backend's parent: the device using it (None: unattached).
    pub parent: Option<String>,
    /// What it decodes now (a PCI function's BARs, its ioeventfds).
    pub placement: Option<std::sync::Arc<dyn Placement>>,
    /// What closes what it placed, once it leaves the tree.
    pub teardown: Option<Teardown>,
    /// A drive's image: how a migration hands it over (block backends only).
    pub image: Option<crate::block::activation::Activation>,
    /// A drive `drive_add` made: it goes with the device that used it (QEMU deletes such
    /// drives with their device), where a `blockdev-add` node stays for `blockdev-del`.
    pub auto_del: bool,
}

impl std::fmt::Debug for dyn Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Placement")
    }
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
            backend: None,
            uses: Vec::new(),
            parent: None,
            placement: None,
            teardown: None,
            image: None,
            auto_del: false,
        }
    }

    /// A backend the user calls `name` (`driver`: its type, `user`, `tap`, `qcow2`...).
    pub fn backend(kind: BackendKind, name: &str, driver: impl Into<String>) -> Self {
        let mut n = Self::new(kind.id(name), driver, BACKENDS);
        n.backend = Some(kind);
        n.user_id = true;
        n
    }

    /// The name the user gave a backend (`n0` for `/netdevs/n0`), or the device's id.
    pub fn name(&self) -> &str {
        match self.backend {
            Some(k) => self
                .id
                .strip_prefix('/')
                .and_then(|r| r.strip_prefix(k.folder()))
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(&self.id),
            None => &self.id,
        }
    }

    /// A device uses the backend with tree id `backend` (which must be in the tree).
    pub fn uses(mut self, backend: impl Into<String>) -> Self {
        self.uses.push(backend.into());
        self
    }

    pub fn placement(mut self, p: std::sync::Arc<dyn Placement>) -> Self {
        self.placement = Some(p);
        self
    }

    /// The image a block backend hands over in a migration.
    pub fn image(mut self, a: crate::block::activation::Activation) -> Self {
        self.image = Some(a);
        self
    }

    pub fn teardown(mut self, t: Teardown) -> Self {
        self.teardown = Some(t);
        self
    }

    /// A drive that is removed with the device that used it ([`Node::auto_del`]).
    pub fn auto_del(mut self) -> Self {
        self.auto_del = true;
        self
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
            || bus == BACKENDS
            || self
                .nodes
                .iter()
                .any(|n| n.buses.iter().any(|(b, _)| b == bus))
    }

    /// Add a node after every node already there. Refused if its id is taken, its bus
    /// does not exist, a bus it provides already does, or a backend it uses is not in the
    /// tree or has a user already; the backends it uses get it as their parent.
    pub fn insert(&mut self, node: Node) -> Result<(), TreeError> {
        if self.get(&node.id).is_some() {
            return Err(TreeError::DuplicateId(node.id));
        }
        if !self.bus_exists(&node.bus) || (node.bus == BACKENDS) != node.backend.is_some() {
            return Err(TreeError::UnknownBus {
                id: node.id,
                bus: node.bus,
            });
        }
        if let Some((b, _)) = node.buses.iter().find(|(b, _)| self.bus_exists(b)) {
            return Err(TreeError::DuplicateBus(b.clone()));
        }
        for b in &node.uses {
            match self.get(b) {
                Some(n) if n.backend.is_some() => {
                    if let Some(user) = &n.parent {
                        return Err(TreeError::BackendInUse {
                            id: node.id.clone(),
                            backend: b.clone(),
                            user: user.clone(),
                        });
                    }
                }
                _ => {
                    return Err(TreeError::UnknownBackend {
                        id: node.id.clone(),
                        backend: b.clone(),
                    })
                }
            }
        }
        for n in self.nodes.iter_mut() {
            if node.uses.contains(&n.id) {
                n.parent = Some(node.id.clone());
            }
        }
        self.nodes.push(node);
        Ok(())
    }

    /// Take a node out; the caller then runs its [`Teardown`]. Refused while a device
    /// sits on a bus it provides. A backend in use leaves its device with no backend
    /// there (as `netdev_del` leaves a NIC with no peer); a device leaves the backends it
    /// used unattached.
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
        let node = self.nodes.remove(i);
        for n in self.nodes.iter_mut() {
            n.uses.retain(|b| *b != node.id);
            if n.parent.as_deref() == Some(id) {
                n.parent = None;
            }
        }
        Ok(node)
    }

    /// A node's parent: for a device, the device providing its bus; for a backend, the
    /// device using it.
    pub fn parent(&self, n: &Node) -> Option<&Node> {
        match &n.parent {
            Some(p) => self.get(p),
            None if n.backend.is_none() => self
                .nodes
                .iter()
                .find(|d| d.buses.iter().any(|(b, _)| *b == n.bus)),
            None => None,
        }
    }

    /// The backends of a kind, in insertion order.
    pub fn backends(&self, kind: BackendKind) -> impl Iterator<Item = &Node> + '_ {
        self.nodes.iter().filter(move |n| n.backend == Some(kind))
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

    /// The drives' images, in dependency order.
    pub fn images(&self) -> impl Iterator<Item = &crate::block::activation::Activation> {
        self.nodes.iter().filter_map(|n| n.image.as_ref())
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
    fn a_backend_gets_its_user_as_parent_and_outlives_it_or_leaves_it() {
        let mut t = pc();
        t.insert(Node::backend(BackendKind::Netdev, "n0", "user"))
            .unwrap();
        assert_eq!(t.get("/netdevs/n0").unwrap().name(), "n0");
        // A device cannot use what is not a backend, nor a backend another device uses.
        assert!(matches!(
            t.insert(Node::new("nic9", "e1000", "pci.0").uses("/machine/PIIX3")),
            Err(TreeError::UnknownBackend { .. })
        ));
        t.insert(Node::new("nic0", "e1000", "pci.0").uses("/netdevs/n0"))
            .unwrap();
        let n0 = t.get("/netdevs/n0").unwrap();
        assert_eq!(t.parent(n0).unwrap().id, "nic0");
        // A device's parent provides its bus.
        assert_eq!(
            t.parent(t.get("nic0").unwrap()).unwrap().id,
            "/machine/i440FX-pcihost"
        );
        assert_eq!(
            t.insert(Node::new("nic1", "e1000", "pci.0").uses("/netdevs/n0")),
            Err(TreeError::BackendInUse {
                id: "nic1".into(),
                backend: "/netdevs/n0".into(),
                user: "nic0".into()
            })
        );
        // Backends are not on a bus: info qtree's walk does not meet them.
        assert!(t.children(SYSTEM_BUS).all(|n| n.backend.is_none()));
        assert!(
            t.insert(Node::new("x", "user", BACKENDS)).is_err(),
            "only backends hang there"
        );
        // The device goes: its backend stays, unattached.
        t.remove("nic0").unwrap();
        assert!(t.get("/netdevs/n0").unwrap().parent.is_none());
        // The backend goes from under its device: the device uses nothing there.
        t.insert(Node::new("nic0", "e1000", "pci.0").uses("/netdevs/n0"))
            .unwrap();
        let gone = t.remove("/netdevs/n0").unwrap();
        assert_eq!(gone.parent.as_deref(), Some("nic0"));
        assert!(t.get("nic0").unwrap().uses.is_empty());
        assert_eq!(t.backends(BackendKind::Netdev).count(), 0);
    }

    #[test]
    fn a_teardown_runs_once() {
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = n.clone();
        let t = Teardown::new(move || {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err("closed".into())
        });
        assert_eq!(t.clone().run(), Err("closed".into()));
        assert_eq!(t.run(), Ok(()));
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn anonymous_devices_are_numbered_as_qemu_does() {
        let mut a = AnonIds::default();
        assert_eq!(a.take(), "/machine/peripheral-anon/device[0]");
        assert_eq!(a.take(), "/machine/peripheral-anon/device[1]");
    }
}
