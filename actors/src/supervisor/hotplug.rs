//! Changing the machine while it runs: one way in ([`add`]) and one way out ([`remove`])
//! for every node of the device tree, the same the machine is built with.
//!
//! Adding: the machine's [`Hotplug`] builds what was asked for (opens the backend, places
//! the device) and returns its node, which the tree then takes; a node the tree refuses is
//! torn down at once. Removing: the tree gives the node up (refused while devices sit on a
//! bus it provides), its actor is quiesced, and its [`Teardown`] undoes what it placed. A
//! backend is torn down with the device using it left in place, as `netdev_del` leaves a
//! NIC with no peer; a PCI device (later: `device_del`) would unmap its BARs, remove its
//! ioeventfds and free its MSI routes in its teardown the same way.

use std::sync::Arc;

use super::tree::{DeviceTree, Node, TreeError};
use crate::runtime::Registry;

/// What to add to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plug {
    /// `netdev_add`: a NIC backend, in the `-netdev` syntax.
    Netdev(String),
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
}

/// The machine's side of hotplug: builds what a [`Plug`] asks for.
pub trait Hotplug: Send + Sync + 'static {
    /// Build it and return its node (with the teardown that closes it), given the tree as
    /// it is now. May block (a tap's script runs); called off the supervisor's thread.
    fn plug(&self, what: &Plug, tree: &DeviceTree) -> Result<Node, String>;
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
/// not running, so a node with a control mailbox starts paused.
pub(super) async fn add(
    registry: &Registry,
    tree: &mut DeviceTree,
    hotplug: Option<&Arc<dyn Hotplug>>,
    what: Plug,
    paused: bool,
) -> Result<(), HotplugError> {
    let h = hotplug
        .cloned()
        .ok_or(HotplugError::Unsupported("devices or backends"))?;
    let snapshot = tree.clone();
    let node = blocking(registry, move || h.plug(&what, &snapshot)).await?;
    if let (true, Some(c)) = (paused, &node.control) {
        if let Err(e) = c.pause().await {
            tracing::warn!("pausing {}: {e}", c.id());
        }
    }
    let teardown = node.teardown.clone();
    if let Err(e) = tree.insert(node) {
        if let Some(t) = teardown {
            blocking(registry, move || t.run()).await?;
        }
        return Err(e.into());
    }
    Ok(())
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
            let Plug::Netdev(id) = what;
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
    }

    #[tokio::test]
    async fn an_added_node_is_in_the_tree_until_removed_and_its_teardown_closes_it() {
        let open = Arc::new(AtomicUsize::new(0));
        let h: Arc<dyn Hotplug> = Arc::new(Fake(open.clone()));
        let mut t = DeviceTree::new();
        let r = Registry::new();
        add(&r, &mut t, Some(&h), Plug::Netdev("n0".into()), false)
            .await
            .unwrap();
        assert!(t.get("/netdevs/n0").is_some());
        assert_eq!(open.load(Ordering::SeqCst), 1);
        // A duplicate is built, refused by the tree and closed again.
        let e = add(&r, &mut t, Some(&h), Plug::Netdev("n0".into()), false).await;
        assert_eq!(
            e,
            Err(HotplugError::Tree(TreeError::DuplicateId(
                "/netdevs/n0".into()
            )))
        );
        assert_eq!(open.load(Ordering::SeqCst), 1);
        let e = add(&r, &mut t, Some(&h), Plug::Netdev("bad".into()), false).await;
        assert_eq!(e, Err(HotplugError::Failed("cannot open bad".into())));
        remove(&r, &mut t, "/netdevs/n0").await.unwrap();
        assert_eq!(open.load(Ordering::SeqCst), 0);
        assert!(t.is_empty());
        assert_eq!(
            remove(&r, &mut t, "/netdevs/n0").await.unwrap_err(),
            HotplugError::Tree(TreeError::UnknownId("/netdevs/n0".into()))
        );
        assert_eq!(
            add(&r, &mut t, None, Plug::Netdev("n1".into()), false).await,
            Err(HotplugError::Unsupported("devices or backends"))
        );
    }
}
