//! Network backends added and removed while the VM runs (`netdev_add`, `netdev_del`),
//! checked against the VM's configuration with the command line's rules. Until NIC
//! hotplug lands they stay unattached, as a QEMU netdev no NIC uses: a user-mode backend
//! answers on its `hostfwd` ports (`info usernet`, `hostfwd_add` reach it), a tap
//! interface exists on the host, and no frames flow.

use std::path::PathBuf;

use actors::net::backend::Backend;

use super::nic::{open_netdev, GuestFwdChardevs, SlirpHandle};
use crate::config::{NetdevKind, VmConfig};

/// One backend `netdev_add` opened.
struct Added {
    id: String,
    /// How `info network` describes it.
    desc: String,
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

impl HotNetdevs {
    pub fn new(
        config: VmConfig,
        rt: tokio::runtime::Handle,
        registry: actors::runtime::Registry,
    ) -> Self {
        Self {
            config,
            rt,
            registry,
            added: Vec::new(),
        }
    }

    /// `netdev_add SPEC` (the `-netdev` syntax); Err is the message for the user.
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
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
            desc,
            slirp,
            downscript: downscripts.pop(),
            _backend: backend,
        });
        self.config.netdevs.push(nd);
        Ok(())
    }

    /// `netdev_del ID`: close a backend `netdev_add` opened (the tap goes, its down script
    /// runs; slirp's listeners close).
    pub fn del(&mut self, id: &str) -> Result<(), String> {
        let Some(i) = self.added.iter().position(|a| a.id == id) else {
            // One given at start that no NIC uses was never opened: only its id goes.
            return if self.forget(id) {
                Ok(())
            } else {
                Err(format!("Device '{id}' not found"))
            };
        };
        let added = self.added.remove(i);
        self.config.netdevs.retain(|n| n.id != id);
        let downscript = added.downscript.clone();
        drop(added);
        if let Some((script, ifname)) = downscript {
            actors::net::tap::run_script(&script, &ifname).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A netdev given at start is gone (`netdev_del`): its id may be used again. False if
    /// there was none.
    pub fn forget(&mut self, id: &str) -> bool {
        let n = self.config.netdevs.len();
        self.config.netdevs.retain(|nd| nd.id != id);
        self.config.netdevs.len() != n
    }

    /// Close every added backend (the VM is ending): the down scripts to run.
    pub fn close_all(&mut self) -> Vec<(PathBuf, String)> {
        self.added
            .drain(..)
            .filter_map(|a| a.downscript.clone())
            .collect()
    }

    /// `info network` lines for the added backends (QEMU lists a netdev no NIC uses on
    /// its own line).
    pub fn network(&self) -> String {
        self.added
            .iter()
            .map(|a| format!("{}: index=0,{}\n", a.id, a.desc))
            .collect()
    }

    /// The added user-mode backends, by netdev id.
    pub fn slirps(&self) -> impl Iterator<Item = (&str, &SlirpHandle)> {
        self.added
            .iter()
            .filter_map(|a| a.slirp.as_ref().map(|s| (a.id.as_str(), s)))
    }
}
