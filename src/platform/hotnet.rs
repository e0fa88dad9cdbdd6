//! Network backends as nodes of the device tree: one node per `-netdev` at start and per
//! `netdev_add`, each holding the backend open until its node is removed (`netdev_del`),
//! when its teardown closes it. Backends added at run time are checked against the VM's
//! configuration with the command line's rules. Until NIC hotplug lands they stay
//! unattached, as a QEMU netdev no NIC uses: a user-mode backend answers on its `hostfwd`
//! ports (`info usernet`, `hostfwd_add` reach it), a tap interface exists on the host, and
//! no frames flow.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actors::net::backend::Backend;
use actors::supervisor::{BackendKind, DeviceTree, Hotplug, Node, Plug, Teardown};

use super::nic::{open_netdev, GuestFwdChardevs, Nic, SlirpHandle};
use crate::config::{NetdevConfig, NetdevKind, VmConfig};

/// One backend `netdev_add` opened.
struct Added {
    id: String,
    slirp: Option<SlirpHandle>,
    /// The tap's down script and interface name, run when it is removed.
    downscript: Option<(PathBuf, String)>,
    /// Holds the tap open and the slirp thread running until `netdev_del`.
    _backend: Backend,
}

/// The backends added at run time, and the configuration they are checked against.
pub struct HotNetdevs {
    config: VmConfig,
    rt: tokio::runtime::Handle,
    registry: actors::runtime::Registry,
    added: Vec<Added>,
}

/// The netdevs of a VM, shared by the tree's teardowns, the hotplug path and the monitor.
pub type SharedNetdevs = Arc<Mutex<HotNetdevs>>;

fn lock(n: &SharedNetdevs) -> std::sync::MutexGuard<'_, HotNetdevs> {
    n.lock().unwrap_or_else(|e| e.into_inner())
}

/// QEMU's type name of a netdev (`user`, `tap`...).
fn netdev_type(nd: &NetdevConfig) -> &'static str {
    match &nd.kind {
        NetdevKind::Tap { .. } => "tap",
        NetdevKind::User(_) => "user",
        NetdevKind::Bridge { .. } => "bridge",
        NetdevKind::Socket { .. } => "socket",
        NetdevKind::Hubport { .. } => "hubport",
    }
}

/// The registry ids of the actors a backend runs (a tap's frames are read by its NIC).
fn backend_actors(nd: &NetdevConfig) -> Vec<String> {
    match &nd.kind {
        NetdevKind::User(_) => vec![format!("slirp-{}", nd.id)],
        NetdevKind::Socket { .. } => vec![format!("sock-{}", nd.id), format!("sockw-{}", nd.id)],
        _ => Vec::new(),
    }
}

/// A netdev's node (`/netdevs/ID`); `desc` is how `info network` shows it while no NIC
/// uses it (None: never opened).
fn netdev_node(nd: &NetdevConfig, desc: Option<String>, teardown: Teardown) -> Node {
    let mut n = Node::backend(BackendKind::Netdev, &nd.id, netdev_type(nd)).teardown(teardown);
    if let Some(d) = desc {
        n = n.prop("desc", d);
    }
    for a in backend_actors(nd) {
        n = n.actor(&a);
    }
    n
}

impl HotNetdevs {
    pub fn new(
        config: VmConfig,
        rt: tokio::runtime::Handle,
        registry: actors::runtime::Registry,
    ) -> SharedNetdevs {
        Arc::new(Mutex::new(Self {
            config,
            rt,
            registry,
            added: Vec::new(),
        }))
    }

    /// `netdev_add SPEC` (the `-netdev` syntax): opens it; Err is the message for the user.
    fn add(&mut self, spec: &str) -> Result<(NetdevConfig, String), String> {
        let (nd, extra) =
            crate::cli::hotplug::parse_netdev_add(spec, &self.config).map_err(|e| e.to_string())?;
        if !extra.is_empty() || matches!(&nd.kind, NetdevKind::User(u) if !u.guestfwd.is_empty()) {
            return Err(format!(
                "netdev '{}': guestfwd= is not available with netdev_add yet",
                nd.id
            ));
        }
        let mut downscripts = Vec::new();
        let (backend, desc, slirp) = open_netdev(
            &nd,
            &mut GuestFwdChardevs::new(),
            &self.rt,
            &self.registry,
            &mut downscripts,
        )
        .map_err(|e| format!("{e:#}"))?;
        self.added.push(Added {
            id: nd.id.clone(),
            slirp,
            downscript: downscripts.pop(),
            _backend: backend,
        });
        self.config.netdevs.push(nd.clone());
        Ok((nd, desc))
    }

    /// Close a backend `netdev_add` opened (the tap goes, its down script runs; slirp's
    /// listeners close) and free its id.
    fn del(&mut self, id: &str) -> Result<(), String> {
        self.forget(id);
        let Some(i) = self.added.iter().position(|a| a.id == id) else {
            return Ok(());
        };
        let added = self.added.remove(i);
        let downscript = added.downscript.clone();
        drop(added);
        if let Some((script, ifname)) = downscript {
            actors::net::tap::run_script(&script, &ifname).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A netdev given at start is gone (`netdev_del`): its id may be used again.
    fn forget(&mut self, id: &str) {
        self.config.netdevs.retain(|nd| nd.id != id);
    }

    /// Close every added backend (the VM is ending): the down scripts to run.
    pub fn close_all(&mut self) -> Vec<(PathBuf, String)> {
        self.added
            .drain(..)
            .filter_map(|a| a.downscript.clone())
            .collect()
    }

    /// The added user-mode backends, by netdev id.
    pub fn slirps(&self) -> impl Iterator<Item = (&str, &SlirpHandle)> {
        self.added
            .iter()
            .filter_map(|a| a.slirp.as_ref().map(|s| (a.id.as_str(), s)))
    }
}

/// The node of each `-netdev`, in command-line order: a NIC's backend (removing it closes
/// the backend and leaves the NIC with no peer, its tap's down script run then and not
/// again at exit), or one no NIC uses (never opened: removing it frees its id).
pub fn start_nodes(cfg: &VmConfig, nics: &[Nic], netdevs: &SharedNetdevs) -> Vec<Node> {
    cfg.netdevs
        .iter()
        .map(|nd| {
            let id = nd.id.clone();
            let shared = netdevs.clone();
            let nic = nics.iter().find(|n| n.netdev == nd.id).cloned();
            let teardown = Teardown::new(move || {
                lock(&shared).forget(&id);
                let Some(n) = nic else { return Ok(()) };
                n.detach();
                match &n.downscript {
                    Some((script, ifname)) => {
                        actors::net::tap::run_script(script, ifname).map_err(|e| e.to_string())
                    }
                    None => Ok(()),
                }
            });
            netdev_node(nd, None, teardown)
        })
        .collect()
}

/// The machine's hotplug: `netdev_add` opens a backend and makes its node.
pub struct PcHotplug {
    pub netdevs: SharedNetdevs,
}

impl Hotplug for PcHotplug {
    fn plug(&self, what: &Plug, _tree: &DeviceTree) -> Result<Node, String> {
        match what {
            Plug::Netdev(spec) => {
                let (nd, desc) = lock(&self.netdevs).add(spec)?;
                let shared = self.netdevs.clone();
                let id = nd.id.clone();
                let teardown = Teardown::new(move || lock(&shared).del(&id));
                Ok(netdev_node(&nd, Some(desc), teardown))
            }
        }
    }
}
