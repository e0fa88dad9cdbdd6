//! Network backends as nodes of the device tree: one node per `-netdev` at start and per
//! `netdev_add`, each holding the backend open until its node is removed (`netdev_del`),
//! when its teardown closes it. Backends added at run time are checked against the VM's
//! configuration with the command line's rules. Until a NIC `device_add` plugs takes
//! one, it stays unattached, as a QEMU netdev no NIC uses: a user-mode backend answers on
//! its `hostfwd` ports (`info usernet`, `hostfwd_add` reach it), a tap interface exists on
//! the host, and no frames flow. The NIC takes the backend and closes it when it is
//! unplugged; a later NIC on the same netdev opens it again (unlike QEMU, whose netdev
//! outlives its NIC: a user-mode backend's connections and a tap's script run again).

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
    /// Holds the tap open and the slirp thread running until `netdev_del` (None: a NIC
    /// `device_add` plugged took it).
    backend: Option<Backend>,
}

/// The backends added at run time, and the configuration they are checked against.
pub struct HotNetdevs {
    config: VmConfig,
    rt: tokio::runtime::Handle,
    registry: actors::runtime::Registry,
    added: Vec<Added>,
    /// NICs `device_add` plugged, by device id (`netdev_del` of their backend leaves them
    /// with no peer).
    hot_nics: Vec<(String, Nic)>,
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
            hot_nics: Vec::new(),
        }))
    }

    /// The VM's configuration as it is now (with the netdevs and devices added since).
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// A device `device_add` plugged (its netdev, drive and slot are in use now).
    pub fn device_added(&mut self, d: crate::config::DeviceConfig, nic: Option<Nic>) {
        if let (Some(id), Some(nic)) = (&d.id, nic) {
            self.hot_nics.push((id.clone(), nic));
        }
        self.config.devices.push(d);
    }

    /// A device `device_add` plugged is gone (its backend closed with it).
    pub fn device_removed(&mut self, id: &str) {
        self.config.devices.retain(|d| d.id.as_deref() != Some(id));
        self.hot_nics.retain(|(d, _)| d != id);
    }

    /// A drive added at run time (`blockdev-add`, `drive_add`): `device_add` may use it.
    pub fn drive_added(&mut self, d: crate::config::DriveConfig) {
        self.config.drives.push(d);
    }

    /// Drive `id` added at run time is gone (or became another node's file).
    pub fn drive_removed(&mut self, id: &str) {
        self.config.drives.retain(|d| d.id != id);
    }

    /// The NICs plugged at run time.
    pub fn hot_nics(&self) -> impl Iterator<Item = &Nic> {
        self.hot_nics.iter().map(|(_, n)| n)
    }

    /// The backend of netdev `id` for a NIC `device_add` plugs: the one `netdev_add`
    /// opened, else opened now from its configuration (a `-netdev` no NIC used, or one
    /// whose NIC was unplugged, which closed it). Returns the backend, how `info network`
    /// shows it and its user-mode handle.
    pub fn take_backend(
        &mut self,
        id: &str,
    ) -> Result<(Backend, String, Option<SlirpHandle>), String> {
        let nd = self
            .config
            .netdevs
            .iter()
            .find(|n| n.id == id)
            .cloned()
            .ok_or_else(|| format!("Property 'netdev' can't find value '{id}'"))?;
        if matches!(&nd.kind, NetdevKind::User(u) if !u.guestfwd.is_empty()) {
            return Err(format!(
                "netdev '{id}': a NIC with guestfwd= rules cannot be plugged at run time yet"
            ));
        }
        let held = self
            .added
            .iter_mut()
            .find(|a| a.id == id)
            .and_then(|a| a.backend.take().map(|b| (b, a.slirp.clone())));
        if let Some((b, slirp)) = held {
            return Ok((b, netdev_desc(&nd), slirp));
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
        if let Some(a) = self.added.iter_mut().find(|a| a.id == id) {
            a.slirp.clone_from(&slirp);
        }
        Ok((backend, desc, slirp))
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
            backend: Some(backend),
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

    /// A netdev is gone (`netdev_del`): its id may be used again, and a NIC `device_add`
    /// plugged on it is left with no peer.
    fn forget(&mut self, id: &str) {
        self.config.netdevs.retain(|nd| nd.id != id);
        for (_, nic) in &self.hot_nics {
            if nic.netdev == id {
                nic.detach();
            }
        }
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

/// How `info network` describes netdev `nd` (as [`open_netdev`] does).
fn netdev_desc(nd: &NetdevConfig) -> String {
    match &nd.kind {
        NetdevKind::User(u) => format!(
            "type=user,net={},restrict={}",
            u.net.0,
            if u.restrict { "on" } else { "off" }
        ),
        _ => format!("type={}", netdev_type(nd)),
    }
}

/// The machine's hotplug: `netdev_add` opens a backend and makes its node; `device_add`
/// builds a PCI device ([`super::hotpci`]).
pub struct PcHotplug {
    pub netdevs: SharedNetdevs,
    /// Block nodes added at run time (`blockdev-add`, `drive_add`).
    pub block: super::hotblk::SharedBlock,
    /// Where the images those nodes open list their threads.
    pub registry: actors::runtime::Registry,
    pub pci: Arc<super::hotpci::HotPci>,
    pub cpus: Arc<super::cpuhp::HotCpus>,
    /// Memory backends and DIMMs.
    pub mem: Arc<super::memhp::HotMem>,
}

impl Hotplug for PcHotplug {
    fn plugged(&self, node: &Node) {
        if let Some((slot, _)) = node.pci_address() {
            self.pci.pcihp.plugged(slot);
        }
        if let Some((index, _)) = node.vcpu() {
            self.cpus.cpuhp.plugged(index);
        }
        if super::memhp::HotMem::is_driver(&node.driver) {
            self.mem.announce(node);
        }
    }

    fn unplug_dimm(&self, id: &str) -> Result<bool, String> {
        self.mem.unplug_dimm(id)
    }

    fn unplug_request(&self, slot: u8) -> bool {
        self.pci.pcihp.unplug_request(slot)
    }

    fn vcpu(&self, index: u32) -> Option<(actors::vcpu::VcpuHandle, actors::vcpu::VcpuBootState)> {
        self.cpus.vcpu(index)
    }

    fn unplug_vcpu(&self, index: u32) -> Result<bool, String> {
        self.cpus.unplug(index)
    }

    fn boot_vcpus(&self) -> u32 {
        self.cpus.boot_cpus()
    }

    fn plug(&self, what: &Plug, tree: &DeviceTree) -> Result<Node, String> {
        match what {
            Plug::Device(spec) => {
                let first = spec.split(',').next().unwrap_or_default();
                let driver = first.strip_prefix("driver=").unwrap_or(first);
                if super::cpuhp::HotCpus::is_cpu_driver(driver) {
                    return self.cpus.plug(spec, tree);
                }
                if super::memhp::HotMem::is_driver(driver) {
                    return self.mem.plug_dimm(spec, tree);
                }
                self.pci.plug(spec, tree, &self.netdevs, &self.block)
            }
            Plug::Blockdev(json) => {
                super::hotblk::blockdev_add(json, tree, &self.block, &self.netdevs, &self.registry)
                    .map_err(|e| e.to_string())
            }
            Plug::Drive(spec) => {
                super::hotblk::drive_add(spec, &self.block, &self.netdevs, &self.registry)
                    .map_err(|e| e.to_string())
            }
            Plug::Object(spec) => self.mem.plug_backend(spec, tree),
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
