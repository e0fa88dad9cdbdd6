//! Changing the machine while it runs: one way in ([`add`]) and one way out ([`remove`])
//! for every node of the device tree, the same the machine is built with.
//!
//! Adding: the machine's [`Hotplug`] builds what was asked for (opens the backend, places
//! the device) and returns its node, which the tree then takes; a node the tree refuses is
//! torn down at once. Removing: the tree gives the node up (refused while devices sit on a
//! bus it provides), its actor is quiesced, and its [`Teardown`] undoes what it placed. A
//! backend is torn down with the device using it left in place, as `netdev_del` leaves a
//! NIC with no peer. A PCI device leaves in two steps, as on QEMU's `pc`: `device_del`
//! ([`unplug_request`]) asks the guest to eject its slot (ACPI PCI hotplug), and the
//! guest's eject ([`ejected`]) removes its node, whose teardown unmaps its BARs (taking
//! its ioeventfds), stops its threads and frees its MSI routes; then `DEVICE_DELETED`.
//! A vCPU (`device_add qemu64-x86_64-cpu,...`) comes and goes the same way through ACPI CPU
//! hotplug: its node carries [`Resource::Vcpu`](super::tree::Resource::Vcpu); once it is
//! in the tree the supervisor adopts its [`VcpuHandle`] (runs, pauses, resets it with the
//! others), and the guest's eject ([`cpu_ejected`]) removes it, its teardown ending the
//! thread and parking the vCPU's fd.

use std::sync::Arc;

use super::tree::{DeviceTree, Node, TreeError};
use crate::runtime::Registry;
use crate::vcpu::{VcpuBootState, VcpuHandle};

/// What to add to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plug {
    /// `netdev_add`: a NIC backend, in the `-netdev` syntax.
    Netdev(String),
    /// `device_add`: a device, in the `-device` syntax.
    Device(String),
    /// `blockdev-add`: one block node, its QMP arguments as a JSON object.
    Blockdev(String),
    /// HMP `drive_add`: an `if=none` drive, in the `-drive` syntax.
    Drive(String),
    /// `object_add`: a user-creatable object (a memory backend), in the `-object` syntax.
    Object(String),
}

/// Why a node could not be added or removed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The machine cannot build or close it; the message is for the user.
    #[error("{0}")]
    Failed(String),
    #[error("this machine cannot add or remove {0} while it runs")]
    Unsupported(&'static str),
    #[error("Device '{0}' not found")]
    DeviceNotFound(String),
    #[error("Device '{0}' does not support hotplugging")]
    NotHotpluggable(String),
    #[error("Device {0} is already in the process of unplug")]
    UnplugPending(String),
}

/// The machine's side of hotplug: builds what a [`Plug`] asks for.
pub trait Hotplug: Send + Sync + 'static {
    /// Build it and return its node (with the teardown that closes it), given the tree as
    /// it is now. May block (a tap's script runs); called off the supervisor's thread.
    fn plug(&self, what: &Plug, tree: &DeviceTree) -> Result<Node, String>;
    /// `node` (a PCI device [`plug`](Self::plug) built) is in the tree: tell the guest it
    /// arrived (ACPI PCI hotplug: PCIU and the GPE).
    fn plugged(&self, node: &Node);
    /// Ask the guest to eject PCI slot `slot` (PCID and the GPE); false: an unplug of it
    /// already waits for the guest (nothing done).
    fn unplug_request(&self, slot: u8) -> bool;
    /// The running vCPU a CPU node [`plug`](Self::plug) built stands for, with the state
    /// it resets to; the supervisor adopts it once the node is in the tree.
    fn vcpu(&self, index: u32) -> Option<(VcpuHandle, VcpuBootState)>;
    /// Ask the guest to eject hot-plugged vCPU `index` (the remove flag and the GPE);
    /// Ok(false): an unplug of it already waits for the guest. Err: the message.
    fn unplug_vcpu(&self, index: u32) -> Result<bool, String>;
    /// How many vCPUs the command line made (`/machine/unattached/device[0..N]`; the first
    /// is the boot CPU).
    fn boot_vcpus(&self) -> u32;
    /// Ask the guest to eject the DIMM `id` (ACPI memory hotplug: the remove flag and the
    /// GPE); Ok(false): an unplug of it already waits for the guest. Err: the message.
    fn unplug_dimm(&self, id: &str) -> Result<bool, String> {
        Err(format!(
            "memory device '{id}' cannot be unplugged by this machine"
        ))
    }
}

/// Run something that may block (a tap's script) on a one-shot actor thread, off the
/// runtime's threads.
async fn blocking<T: Send + 'static>(
    registry: &Registry,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, HotplugError> {
    crate::runtime::run_blocking(registry, "hotplug", "hotplug", f)
        .await
        .map_err(|e| HotplugError::Failed(format!("the hotplug worker failed: {e}")))?
        .map_err(HotplugError::Failed)
}

/// Add what `what` asks for to the machine and its node to `tree`; `paused`: the VM is
/// not running, so a node with a control mailbox starts paused. Returns the vCPU the node
/// stands for, for the supervisor to adopt (a CPU node).
pub(super) async fn add(
    registry: &Registry,
    tree: &mut DeviceTree,
    hotplug: Option<&Arc<dyn Hotplug>>,
    what: Plug,
    paused: bool,
) -> Result<Option<(VcpuHandle, VcpuBootState)>, HotplugError> {
    let h = hotplug
        .cloned()
        .ok_or(HotplugError::Unsupported("devices or backends"))?;
    let snapshot = tree.clone();
    let builder = h.clone();
    let node = blocking(registry, move || builder.plug(&what, &snapshot)).await?;
    if let (true, Some(c)) = (paused, &node.control) {
        if let Err(e) = c.pause().await {
            tracing::warn!("pausing {}: {e}", c.id());
        }
    }
    let teardown = node.teardown.clone();
    let announce = node.backend.is_none().then(|| node.clone());
    let vcpu = node.vcpu();
    if let Err(e) = tree.insert(node) {
        if let Some(t) = teardown {
            blocking(registry, move || t.run()).await?;
        }
        return Err(e.into());
    }
    let adopted = vcpu.and_then(|(index, _)| h.vcpu(index));
    if let Some(n) = announce {
        h.plugged(&n);
    }
    Ok(adopted)
}

/// The node `device_del ID` names: its `id=`, or its QOM path
/// (`/machine/peripheral/ID`, `/machine/peripheral-anon/device[N]`).
fn device_node<'a>(tree: &'a DeviceTree, id: &str) -> Option<&'a Node> {
    let id = id.strip_prefix("/machine/peripheral/").unwrap_or(id);
    tree.get(id).filter(|n| n.backend.is_none())
}

/// `device_del ID`: ask the guest to eject the PCI device's slot; the device leaves when
/// it does ([`ejected`]).
pub(super) fn unplug_request(
    tree: &DeviceTree,
    hotplug: Option<&Arc<dyn Hotplug>>,
    id: &str,
) -> Result<(), HotplugError> {
    let h = hotplug.ok_or(HotplugError::Unsupported("devices"))?;
    let Some(node) = device_node(tree, id) else {
        // The command line's CPUs have QOM paths but no node.
        let boot = id
            .strip_prefix("/machine/unattached/device[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n < h.boot_vcpus());
        return Err(match boot {
            Some(0) => HotplugError::Failed("Boot CPU is unpluggable".into()),
            Some(n) => HotplugError::Failed(format!(
                "CPU {n} was created by -smp; troupe cannot unplug the command line's CPUs yet"
            )),
            None => HotplugError::DeviceNotFound(id.into()),
        });
    };
    if let ("pc-dimm", Some(_)) = (node.driver.as_str(), &node.teardown) {
        return match h.unplug_dimm(&node.id) {
            Ok(true) => Ok(()),
            Ok(false) => Err(HotplugError::UnplugPending(node.id.clone())),
            Err(e) => Err(HotplugError::Failed(e)),
        };
    }
    if let (Some((index, _)), Some(_)) = (node.vcpu(), &node.teardown) {
        return match h.unplug_vcpu(index) {
            Ok(true) => Ok(()),
            Ok(false) => Err(HotplugError::UnplugPending(node.id.clone())),
            Err(e) => Err(HotplugError::Failed(e)),
        };
    }
    // Only what hotplug built can go (it has a teardown); the chipset, the VGA and the
    // command line's devices stay.
    let slot = match (node.pci_address(), &node.teardown) {
        (Some((slot, 0)), Some(_)) => slot,
        _ => return Err(HotplugError::NotHotpluggable(node.driver.clone())),
    };
    if h.unplug_request(slot) {
        Ok(())
    } else {
        Err(HotplugError::UnplugPending(node.id.clone()))
    }
}

/// The guest ejected possible CPU `cpu`: the hot-plugged vCPU there leaves the tree and
/// its teardown ends its thread. Returns the removed node (None: no hot-plugged vCPU).
pub(super) async fn cpu_ejected(
    registry: &Registry,
    tree: &mut DeviceTree,
    cpu: u32,
) -> Result<Option<Node>, HotplugError> {
    let Some(id) = tree
        .iter()
        .find(|n| n.vcpu().is_some_and(|(i, _)| i == cpu) && n.teardown.is_some())
        .map(|n| n.id.clone())
    else {
        return Ok(None);
    };
    remove(registry, tree, &id).await.map(Some)
}

/// The guest ejected the DIMM `id` (ACPI memory hotplug's eject flag): its node leaves the
/// tree and its teardown unmaps it. None: no hot-plugged DIMM has that id.
pub(super) async fn dimm_ejected(
    registry: &Registry,
    tree: &mut DeviceTree,
    id: &str,
) -> Result<Option<Node>, HotplugError> {
    if !tree
        .get(id)
        .is_some_and(|n| n.driver == "pc-dimm" && n.teardown.is_some())
    {
        return Ok(None);
    }
    remove(registry, tree, id).await.map(Some)
}

/// The QOM path of device node `n`, as `DEVICE_DELETED` names it.
pub fn qom_path(n: &Node) -> String {
    if n.user_id {
        format!("/machine/peripheral/{}", n.id)
    } else {
        n.id.clone()
    }
}

/// The guest ejected PCI slot `slot`: the hot-plugged device there leaves the tree and its
/// teardown runs, then the `drive_add` drives it used ([`Node::auto_del`]) go too. Returns
/// the removed node (None: nothing removable was there).
pub(super) async fn ejected(
    registry: &Registry,
    tree: &mut DeviceTree,
    slot: u8,
) -> Result<Option<Node>, HotplugError> {
    let Some(id) = tree
        .children("pci.0")
        .find(|n| n.pci_address() == Some((slot, 0)) && n.teardown.is_some())
        .map(|n| n.id.clone())
    else {
        return Ok(None);
    };
    let gone = remove(registry, tree, &id).await?;
    for b in &gone.uses {
        if tree
            .get(b)
            .is_some_and(|n| n.auto_del && n.parent.is_none())
        {
            remove(registry, tree, b).await?;
        }
    }
    Ok(Some(gone))
}

/// The `DEVICE_DELETED` events for removed device `n`, as QEMU sends them: a virtio
/// device's `virtio-backend` child first (path only), then the device (with `device`
/// when it has an `id=`). (event name, JSON data).
pub fn deleted_events(n: &Node) -> Vec<(String, String)> {
    let path = qom_path(n);
    let mut out = Vec::new();
    if n.driver.starts_with("virtio-") {
        out.push((
            "DEVICE_DELETED".to_string(),
            serde_json::json!({ "path": format!("{path}/virtio-backend") }).to_string(),
        ));
    }
    let data = if n.user_id {
        serde_json::json!({ "device": n.id, "path": path })
    } else {
        serde_json::json!({ "path": path })
    };
    out.push(("DEVICE_DELETED".to_string(), data.to_string()));
    out
}

/// Take node `id` out of `tree` and undo what it placed.
pub(super) async fn remove(
    registry: &Registry,
    tree: &mut DeviceTree,
    id: &str,
) -> Result<Node, HotplugError> {
    let node = tree.remove(id)?;
    if let Some(c) = &node.control {
        if let Err(e) = c.pause().await {
            tracing::warn!("pausing {} before removing it: {e}", c.id());
        }
    }
    if let Some(t) = node.teardown.clone() {
        blocking(registry, move || t.run()).await?;
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::tree::{BackendKind, Teardown};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Opens a "netdev" per spec (its id), counting what is open.
    struct Fake(Arc<AtomicUsize>);

    impl Hotplug for Fake {
        fn plug(&self, what: &Plug, _tree: &DeviceTree) -> Result<Node, String> {
            let (Plug::Netdev(id)
            | Plug::Device(id)
            | Plug::Blockdev(id)
            | Plug::Drive(id)
            | Plug::Object(id)) = what;
            if id == "bad" {
                return Err("cannot open bad".into());
            }
            self.0.fetch_add(1, Ordering::SeqCst);
            let open = self.0.clone();
            Ok(
                Node::backend(BackendKind::Netdev, id, "user").teardown(Teardown::new(move || {
                    open.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })),
            )
        }
        fn plugged(&self, _node: &Node) {}
        fn unplug_request(&self, _slot: u8) -> bool {
            true
        }
        fn vcpu(&self, _index: u32) -> Option<(VcpuHandle, VcpuBootState)> {
            None
        }
        fn unplug_vcpu(&self, _index: u32) -> Result<bool, String> {
            Err("no CPUs".into())
        }
        fn boot_vcpus(&self) -> u32 {
            1
        }
    }

    #[tokio::test]
    async fn an_added_node_is_in_the_tree_until_removed_and_its_teardown_closes_it() {
        let open = Arc::new(AtomicUsize::new(0));
        let h: Arc<dyn Hotplug> = Arc::new(Fake(open.clone()));
        let mut t = DeviceTree::new();
        let r = Registry::new();
        add(&r, &mut t, Some(&h), Plug::Netdev("n0".into()), false)
            .await
            .map(|v| v.is_some())
            .unwrap();
        assert!(t.get("/netdevs/n0").is_some());
        assert_eq!(open.load(Ordering::SeqCst), 1);
        // A duplicate is built, refused by the tree and closed again.
        let e = add(&r, &mut t, Some(&h), Plug::Netdev("n0".into()), false)
            .await
            .map(|v| v.is_some());
        assert_eq!(
            e,
            Err(HotplugError::Tree(TreeError::DuplicateId(
                "/netdevs/n0".into()
            )))
        );
        assert_eq!(open.load(Ordering::SeqCst), 1);
        let e = add(&r, &mut t, Some(&h), Plug::Netdev("bad".into()), false)
            .await
            .map(|v| v.is_some());
        assert_eq!(e, Err(HotplugError::Failed("cannot open bad".into())));
        remove(&r, &mut t, "/netdevs/n0").await.unwrap();
        assert_eq!(open.load(Ordering::SeqCst), 0);
        assert!(t.is_empty());
        assert_eq!(
            remove(&r, &mut t, "/netdevs/n0").await.unwrap_err(),
            HotplugError::Tree(TreeError::UnknownId("/netdevs/n0".into()))
        );
        assert_eq!(
            add(&r, &mut t, None, Plug::Netdev("n1".into()), false)
                .await
                .map(|v| v.is_some()),
            Err(HotplugError::Unsupported("devices or backends"))
        );
    }

    /// Builds PCI devices on the slot in the spec, remembering the slots it was asked to
    /// announce and eject.
    #[derive(Default)]
    struct Pci {
        plugged: std::sync::Mutex<Vec<u8>>,
        pending: std::sync::Mutex<Vec<u8>>,
        torn_down: Arc<AtomicUsize>,
    }

    impl Hotplug for Pci {
        fn plug(&self, what: &Plug, _tree: &DeviceTree) -> Result<Node, String> {
            let Plug::Device(spec) = what else {
                return Err("devices only".into());
            };
            let (id, slot) = spec.split_once('@').unwrap();
            let gone = self.torn_down.clone();
            Ok(Node::new(id, "virtio-net-pci", "pci.0")
                .user()
                .with(crate::supervisor::Resource::PciFunction {
                    slot: slot.parse().unwrap(),
                    function: 0,
                })
                .teardown(Teardown::new(move || {
                    gone.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })))
        }
        fn plugged(&self, node: &Node) {
            self.plugged
                .lock()
                .unwrap()
                .push(node.pci_address().unwrap().0);
        }
        fn unplug_request(&self, slot: u8) -> bool {
            let mut p = self.pending.lock().unwrap();
            if p.contains(&slot) {
                return false;
            }
            p.push(slot);
            true
        }
        fn vcpu(&self, _index: u32) -> Option<(VcpuHandle, VcpuBootState)> {
            None
        }
        fn unplug_vcpu(&self, _index: u32) -> Result<bool, String> {
            Err("no CPUs".into())
        }
        fn boot_vcpus(&self) -> u32 {
            2
        }
    }

    #[tokio::test]
    async fn a_pci_device_is_announced_then_leaves_when_the_guest_ejects_its_slot() {
        let pci = Arc::new(Pci::default());
        let h: Arc<dyn Hotplug> = pci.clone();
        let r = Registry::new();
        let mut t = DeviceTree::new();
        t.insert(
            Node::new("host", "i440FX-pcihost", crate::supervisor::SYSTEM_BUS)
                .providing("pci.0", "PCI"),
        )
        .unwrap();
        t.insert(
            Node::new("/machine/unattached/device[3]", "VGA", "pci.0").with(
                crate::supervisor::Resource::PciFunction {
                    slot: 2,
                    function: 0,
                },
            ),
        )
        .unwrap();
        add(&r, &mut t, Some(&h), Plug::Device("nic1@5".into()), false)
            .await
            .map(|v| v.is_some())
            .unwrap();
        assert_eq!(*pci.plugged.lock().unwrap(), [5]);
        // Unknown, not hot-plugged, then asked twice.
        assert_eq!(
            unplug_request(&t, Some(&h), "ghost"),
            Err(HotplugError::DeviceNotFound("ghost".into()))
        );
        assert_eq!(
            unplug_request(&t, Some(&h), "/machine/unattached/device[3]"),
            Err(HotplugError::NotHotpluggable("VGA".into()))
        );
        // The boot CPU has a QOM path but no node.
        assert_eq!(
            unplug_request(&t, Some(&h), "/machine/unattached/device[0]"),
            Err(HotplugError::Failed("Boot CPU is unpluggable".into()))
        );
        assert_eq!(
            unplug_request(&t, Some(&h), "/machine/unattached/device[1]"),
            Err(HotplugError::Failed(
                "CPU 1 was created by -smp; troupe cannot unplug the command line's CPUs yet"
                    .into()
            ))
        );
        unplug_request(&t, Some(&h), "/machine/peripheral/nic1").unwrap();
        assert_eq!(
            unplug_request(&t, Some(&h), "nic1"),
            Err(HotplugError::UnplugPending("nic1".into()))
        );
        // Asking does not remove it; the guest's eject of another slot does nothing.
        assert!(t.get("nic1").is_some());
        assert!(ejected(&r, &mut t, 7).await.unwrap().is_none());
        let gone = ejected(&r, &mut t, 5).await.unwrap().unwrap();
        assert!(t.get("nic1").is_none());
        assert_eq!(pci.torn_down.load(Ordering::SeqCst), 1);
        assert_eq!(
            deleted_events(&gone),
            [
                (
                    "DEVICE_DELETED".to_string(),
                    r#"{"path":"/machine/peripheral/nic1/virtio-backend"}"#.to_string()
                ),
                (
                    "DEVICE_DELETED".to_string(),
                    r#"{"device":"nic1","path":"/machine/peripheral/nic1"}"#.to_string()
                )
            ]
        );
        // The VGA's slot is not the guest's to eject.
        assert!(ejected(&r, &mut t, 2).await.unwrap().is_none());
        assert!(t.get("/machine/unattached/device[3]").is_some());
    }

    #[tokio::test]
    async fn a_drive_add_drive_goes_with_its_device_and_a_blockdev_node_stays() {
        let r = Registry::new();
        let mut t = DeviceTree::new();
        t.insert(
            Node::new("host", "i440FX-pcihost", crate::supervisor::SYSTEM_BUS)
                .providing("pci.0", "PCI"),
        )
        .unwrap();
        let closed = Arc::new(AtomicUsize::new(0));
        let counting = |n: Node| {
            let c = closed.clone();
            n.teardown(Teardown::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }))
        };
        t.insert(counting(
            Node::backend(BackendKind::Block, "d1", "qcow2").auto_del(),
        ))
        .unwrap();
        t.insert(counting(Node::backend(BackendKind::Block, "q1", "qcow2")))
            .unwrap();
        for (id, drive, slot) in [("vd1", "d1", 4), ("vd2", "q1", 5)] {
            t.insert(counting(
                Node::new(id, "virtio-blk-pci", "pci.0")
                    .user()
                    .uses(BackendKind::Block.id(drive))
                    .with(crate::supervisor::Resource::PciFunction { slot, function: 0 }),
            ))
            .unwrap();
        }
        assert_eq!(t.get("/block/d1").unwrap().parent.as_deref(), Some("vd1"));
        // The guest ejects both: the drive_add drive is closed with its device; the
        // blockdev-add node is left, unused, for blockdev-del.
        ejected(&r, &mut t, 4).await.unwrap().unwrap();
        assert!(t.get("/block/d1").is_none());
        assert_eq!(closed.load(Ordering::SeqCst), 2);
        ejected(&r, &mut t, 5).await.unwrap().unwrap();
        let q1 = t.get("/block/q1").unwrap();
        assert_eq!(q1.parent, None);
        assert_eq!(closed.load(Ordering::SeqCst), 3);
    }
}
