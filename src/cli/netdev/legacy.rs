//! The legacy network options: `-nic` (a backend and its NIC in one option), `-net nic` and
//! `-net BACKEND` paired through their hub (`vlan=`), QEMU's default network, NIC model
//! names and MAC syntax. Backends created by `-nic` are named `__org.qemu.nicN` like QEMU's,
//! those created by `-net` `#netN`: names no user id can collide with.

use std::net::Ipv4Addr;

use super::{parse_backend, NetdevError};
use crate::cli::options::Opts;
use crate::config::{Chardev, NetdevConfig, NetdevKind, NicModel, UserNetConfig};

/// A NIC model name (`virtio` is QEMU's alias for `virtio-net-pci`).
pub fn parse_nic_model(s: &str) -> Result<NicModel, NetdevError> {
    match s {
        "virtio" | "virtio-net-pci" => Ok(NicModel::VirtioNet),
        "e1000" => Ok(NicModel::E1000),
        other => Err(NetdevError::NicModel(other.to_string())),
    }
}

/// `-net nic,model=help`.
pub fn nic_model_help() -> String {
    "Supported NIC models:\ne1000\nvirtio-net-pci\n".to_string()
}

/// `52:54:00:12:34:56` (or with `-`).
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetdevError> {
    let bad = || NetdevError::Mac(s.to_string());
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// A NIC the machine creates (from `-nic`, `-net nic`, or QEMU's default network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineNic {
    /// The card.
    pub model: NicModel,
    /// `mac=`/`macaddr=`.
    pub mac: Option<[u8; 6]>,
    /// The backend it is connected to.
    pub netdev: Option<String>,
    /// `-net nic,addr=` (PCI slot.fn as written).
    pub addr: Option<String>,
}

/// What a `-nic` produced: a backend (None for `-nic none`) and its NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicArg {
    /// `-nic none`.
    None,
    /// A backend and the NIC on it.
    Nic(Box<NetdevConfig>, MachineNic),
}

/// `-nic [TYPE][,id=][,model=][,mac=][,backend options]` (TYPE defaults to `user`). `n` is the
/// number of earlier `-nic` options, for the generated backend id.
pub fn parse_nic(
    mut opts: Opts,
    n: usize,
    extra: &mut Vec<Chardev>,
) -> Result<NicArg, NetdevError> {
    let kind = opts.str("type").unwrap_or_else(|| "user".to_string());
    if kind == "none" {
        opts.finish()?;
        return Ok(NicArg::None);
    }
    let id = opts
        .id("id")?
        .unwrap_or_else(|| format!("__org.qemu.nic{n}"));
    let model = parse_nic_model(&opts.str("model").unwrap_or_else(|| "e1000".to_string()))?;
    let mac = opts.str("mac").map(|m| parse_mac(&m)).transpose()?;
    let backend = parse_backend(&kind, &mut opts, extra)?;
    opts.finish()?;
    Ok(NicArg::Nic(
        Box::new(NetdevConfig {
            id: id.clone(),
            kind: backend,
        }),
        MachineNic {
            model,
            mac,
            netdev: Some(id),
            addr: None,
        },
    ))
}

/// One `-net` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetArg {
    /// `-net none`.
    None,
    /// `-net nic[,model=][,macaddr=][,vlan=N|netdev=ID][,addr=]`.
    Nic {
        /// The NIC (netdev filled in when `netdev=` was given).
        nic: MachineNic,
        /// Its hub.
        vlan: u32,
    },
    /// `-net user|tap|bridge|socket[,vlan=N][,id=|name=],...`.
    Backend {
        /// `id=`/`name=`.
        id: Option<String>,
        /// The backend.
        kind: NetdevKind,
        /// Its hub.
        vlan: u32,
    },
}

/// `-net TYPE,...`.
pub fn parse_net(mut opts: Opts, extra: &mut Vec<Chardev>) -> Result<NetArg, NetdevError> {
    let kind = opts.required("type")?;
    if kind == "none" {
        opts.finish()?;
        return Ok(NetArg::None);
    }
    let vlan = opts.uint("vlan", 0, u64::from(u32::MAX))?;
    let id = opts.id("id")?.or(opts.id("name")?);
    if kind == "nic" {
        let model = parse_nic_model(&opts.str("model").unwrap_or_else(|| "e1000".to_string()))?;
        let mac = opts.str("macaddr").map(|m| parse_mac(&m)).transpose()?;
        let netdev = opts.str("netdev");
        let addr = opts.str("addr");
        opts.finish()?;
        if netdev.is_some() && vlan.is_some() {
            return Err(NetdevError::NetdevAndVlan);
        }
        return Ok(NetArg::Nic {
            nic: MachineNic {
                model,
                mac,
                netdev,
                addr,
            },
            vlan: vlan.unwrap_or(0) as u32,
        });
    }
    let backend = parse_backend(&kind, &mut opts, extra)?;
    opts.finish()?;
    Ok(NetArg::Backend {
        id,
        kind: backend,
        vlan: vlan.unwrap_or(0) as u32,
    })
}

/// What pairing `-net` options gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacyNet {
    /// Backends, named `#netN` unless given an id.
    pub netdevs: Vec<NetdevConfig>,
    /// NICs in order, connected to their hub's backend.
    pub nics: Vec<MachineNic>,
    /// QEMU's warnings (a hub without NICs, a hub without a backend).
    pub warnings: Vec<String>,
}

/// Connect each `-net nic` to the one backend on its hub. `args` are (position, arg);
/// errors carry the position of the option that broke the rule.
pub fn pair_legacy(args: &[(usize, NetArg)]) -> Result<LegacyNet, (usize, NetdevError)> {
    let mut out = LegacyNet::default();
    let mut hubs: Vec<u32> = Vec::new();
    for (_, a) in args {
        let vlan = match a {
            NetArg::Nic { nic, vlan } if nic.netdev.is_none() => *vlan,
            NetArg::Backend { vlan, .. } => *vlan,
            _ => continue,
        };
        if !hubs.contains(&vlan) {
            hubs.push(vlan);
        }
    }
    // Name the backends first, in order.
    let mut backend_ids: Vec<(u32, String)> = Vec::new();
    for (n, (_, a)) in args
        .iter()
        .filter(|(_, a)| matches!(a, NetArg::Backend { .. }))
        .enumerate()
    {
        if let NetArg::Backend { id, kind, vlan } = a {
            let id = id.clone().unwrap_or_else(|| format!("#net{n}"));
            backend_ids.push((*vlan, id.clone()));
            out.netdevs.push(NetdevConfig {
                id,
                kind: kind.clone(),
            });
        }
    }
    for hub in hubs {
        let nics: Vec<usize> = args
            .iter()
            .filter(|(_, a)| matches!(a, NetArg::Nic { nic, vlan } if nic.netdev.is_none() && *vlan == hub))
            .map(|(pos, _)| *pos)
            .collect();
        let backends: Vec<usize> = args
            .iter()
            .filter(|(_, a)| matches!(a, NetArg::Backend { vlan, .. } if *vlan == hub))
            .map(|(pos, _)| *pos)
            .collect();
        if nics.len() > 1 || backends.len() > 1 {
            let pos = *nics.iter().chain(&backends).max().unwrap_or(&0);
            return Err((
                pos,
                NetdevError::Hub {
                    vlan: hub,
                    nics: nics.len(),
                    backends: backends.len(),
                },
            ));
        }
        if backends.is_empty() {
            out.warnings
                .push(format!("hub {hub} is not connected to host network"));
        }
        if nics.is_empty() {
            out.warnings.push(format!("hub {hub} with no nics"));
        }
    }
    for (_, a) in args {
        if let NetArg::Nic { nic, vlan } = a {
            let mut nic = nic.clone();
            if nic.netdev.is_none() {
                nic.netdev = backend_ids
                    .iter()
                    .find(|(v, _)| v == vlan)
                    .map(|(_, id)| id.clone());
            }
            out.nics.push(nic);
        }
    }
    Ok(out)
}

/// QEMU's default network (`-net nic -net user`): an e1000 on a user backend.
pub fn default_network() -> (NetdevConfig, MachineNic) {
    let user = UserNetConfig {
        net: (Ipv4Addr::new(10, 0, 2, 0), 24),
        host: Ipv4Addr::new(10, 0, 2, 2),
        dhcpstart: Ipv4Addr::new(10, 0, 2, 15),
        dns: Ipv4Addr::new(10, 0, 2, 3),
        ipv6: Some(Default::default()),
        hostname: None,
        domainname: None,
        restrict: false,
        tftp: None,
        bootfile: None,
        hostfwd: Vec::new(),
        guestfwd: Vec::new(),
    };
    let id = "#net0".to_string();
    (
        NetdevConfig {
            id: id.clone(),
            kind: NetdevKind::User(user),
        },
        MachineNic {
            model: NicModel::E1000,
            mac: None,
            netdev: Some(id),
            addr: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::user::parse_user;
    use super::*;

    #[test]
    fn macs_and_models() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            parse_mac("52-54-00-AB-cd-ef"),
            Ok([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:567",
            "52:54::12:34:56",
            "52:54:00:12:34:+5",
        ] {
            assert_eq!(
                parse_mac(bad).unwrap_err().to_string(),
                format!(
                    "invalid MAC address '{bad}' (expected six hex bytes like 52:54:00:12:34:56)"
                )
            );
        }
        assert_eq!(parse_nic_model("virtio"), Ok(NicModel::VirtioNet));
        assert_eq!(parse_nic_model("virtio-net-pci"), Ok(NicModel::VirtioNet));
        assert_eq!(parse_nic_model("e1000"), Ok(NicModel::E1000));
        assert_eq!(
            parse_nic_model("rtl8139").unwrap_err().to_string(),
            "unsupported NIC model 'rtl8139' (troupe has virtio-net-pci and e1000; see -net nic,model=help)"
        );
        assert_eq!(
            nic_model_help(),
            "Supported NIC models:\ne1000\nvirtio-net-pci\n"
        );
    }

    fn nic(s: &str, n: usize) -> Result<NicArg, String> {
        parse_nic(Opts::parse(s, Some("type")).unwrap(), n, &mut Vec::new())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn nic_option_creates_backend_and_nic() {
        let NicArg::Nic(nd, m) = nic(
            "user,model=virtio-net-pci,mac=52:54:00:aa:bb:cc,hostfwd=tcp::2222-:22",
            0,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(nd.id, "__org.qemu.nic0");
        assert!(matches!(&nd.kind, NetdevKind::User(u) if u.hostfwd.len() == 1));
        assert_eq!(
            m,
            MachineNic {
                model: NicModel::VirtioNet,
                mac: Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]),
                netdev: Some("__org.qemu.nic0".into()),
                addr: None
            }
        );
        // No type: user; id= names the backend.
        let NicArg::Nic(nd, m) = nic("model=e1000,id=foo", 3).unwrap() else {
            panic!()
        };
        assert_eq!((nd.id.as_str(), m.model), ("foo", NicModel::E1000));
        assert!(matches!(nd.kind, NetdevKind::User(_)));
        assert_eq!(nic("none", 0), Ok(NicArg::None));
        assert!(nic("tap,model=e1000,script=no,downscript=no", 1).is_ok());
        assert!(nic("user,model=rtl8139", 0)
            .unwrap_err()
            .starts_with("unsupported NIC model 'rtl8139'"));
    }

    fn net(s: &str) -> NetArg {
        parse_net(Opts::parse(s, Some("type")).unwrap(), &mut Vec::new()).unwrap()
    }

    #[test]
    fn legacy_net_pairs_nics_with_the_backend_on_their_hub() {
        let args = vec![
            (0, net("nic,model=virtio,macaddr=52:54:00:00:00:01")),
            (1, net("user,hostfwd=tcp::2222-:22")),
            (2, net("nic,vlan=1")),
            (3, net("tap,vlan=1,ifname=tap0,script=no,downscript=no")),
        ];
        let p = pair_legacy(&args).unwrap();
        assert_eq!(
            p.netdevs.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            vec!["#net0", "#net1"]
        );
        assert_eq!(p.nics[0].netdev.as_deref(), Some("#net0"));
        assert_eq!(p.nics[0].model, NicModel::VirtioNet);
        assert_eq!(p.nics[1].netdev.as_deref(), Some("#net1"));
        assert_eq!(p.nics[1].model, NicModel::E1000);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn legacy_net_warnings_and_refusals() {
        let p = pair_legacy(&[(0, net("nic"))]).unwrap();
        assert_eq!(p.nics[0].netdev, None);
        assert_eq!(p.warnings, vec!["hub 0 is not connected to host network"]);
        let p = pair_legacy(&[(0, net("user"))]).unwrap();
        assert_eq!(p.warnings, vec!["hub 0 with no nics"]);
        assert_eq!(
            pair_legacy(&[(0, net("nic")), (1, net("user")), (2, net("nic"))]).map(|_| ()).map_err(|(p, e)| (p, e.to_string())),
            Err((2, "hub 0 would connect 2 NIC(s) and 1 backend(s); troupe connects a NIC to exactly one backend \
                     (use -netdev and -device)".into()))
        );
        // netdev= bypasses the hub.
        let p = pair_legacy(&[(0, net("nic,netdev=n0"))]).unwrap();
        assert_eq!(p.nics[0].netdev.as_deref(), Some("n0"));
        assert!(p.warnings.is_empty());
        assert_eq!(
            parse_net(
                Opts::parse("nic,netdev=x,vlan=0", Some("type")).unwrap(),
                &mut Vec::new()
            )
            .unwrap_err()
            .to_string(),
            "netdev= and vlan= are mutually exclusive"
        );
        assert_eq!(net("none"), NetArg::None);
        assert_eq!(
            parse_net(Opts::parse("nic,model=foo", Some("type")).unwrap(), &mut Vec::new()).unwrap_err().to_string(),
            "unsupported NIC model 'foo' (troupe has virtio-net-pci and e1000; see -net nic,model=help)"
        );
    }

    #[test]
    fn default_network_is_e1000_on_user() {
        let (nd, nic) = default_network();
        let mut explicit = Vec::new();
        let parsed = parse_user(&mut Opts::default(), &mut explicit).unwrap();
        assert_eq!(nd.kind, NetdevKind::User(parsed));
        assert_eq!(nd.id, "#net0");
        assert!(matches!(nd.kind, NetdevKind::User(_)));
        assert_eq!(nic.model, NicModel::E1000);
        assert_eq!(nic.netdev.as_deref(), Some("#net0"));
    }
}
