//! Network backends: `-netdev` (and the backend half of `-nic`/`-net`).
//!
//! Owns the backend settings — user-mode slirp (in [`user`]), tap, bridge, socket, hubport —
//! and the one [`NetdevError`]. The legacy NIC options and their pairing with backends live
//! in [`legacy`].

mod legacy;
mod user;
pub use user::parse_hostfwd;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use thiserror::Error;

use super::chardev::{parse_port, split_host_port};
use super::options::{Opts, OptsError};
use crate::config::{Chardev, NetdevConfig, NetdevKind, SocketAddrSpec};

pub use legacy::{
    default_network, nic_model_help, pair_legacy, parse_mac, parse_net, parse_nic, MachineNic,
    NetArg, NicArg,
};

/// QEMU's default tap scripts and bridge helper.
pub const DEFAULT_IFUP: &str = "/etc/qemu-ifup";
/// See [`DEFAULT_IFUP`].
pub const DEFAULT_IFDOWN: &str = "/etc/qemu-ifdown";
/// See [`DEFAULT_IFUP`].
pub const DEFAULT_BRIDGE_HELPER: &str = "/usr/lib/qemu/qemu-bridge-helper";

/// Ways a network option can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetdevError {
    /// A malformed option string or value.
    #[error(transparent)]
    Opts(#[from] OptsError),
    /// A backend type QEMU doesn't have.
    #[error("'{0}' is not a valid netdev type (see -netdev help)")]
    UnknownType(String),
    /// A backend type troupe doesn't implement.
    #[error("netdev type '{0}' is not supported by troupe (user, tap, bridge, socket, hubport)")]
    UnsupportedType(String),
    /// A backend option troupe doesn't implement.
    #[error("{0} is not supported by troupe")]
    Unsupported(&'static str),
    /// Not an IPv4 (or, for the `ipv6-` keys, IPv6) address.
    #[error("parameter '{key}' expects an {} address, not '{value}'", if key.starts_with("ipv6") { "IPv6" } else { "IPv4" })]
    Address {
        /// The key.
        key: &'static str,
        /// What was written.
        value: String,
    },
    /// `net=ADDR/BITS` with a bad prefix.
    #[error("invalid netmask '{0}' (a prefix length in 4-32 or a contiguous dotted mask)")]
    Netmask(String),
    /// `host=` outside `net=`.
    #[error("host address {0} doesn't belong to network {1}")]
    HostOutside(Ipv4Addr, String),
    /// `dns=` outside `net=`.
    #[error("DNS address {0} doesn't belong to network {1}")]
    DnsOutside(Ipv4Addr, String),
    /// `ipv6-host=` or `ipv6-dns=` outside `ipv6-net=`.
    #[error("IPv6 {what} {addr} doesn't belong to network {net}")]
    Ipv6Outside {
        /// "host" or "DNS".
        what: &'static str,
        addr: std::net::Ipv6Addr,
        net: String,
    },
    /// `ipv6-net=` with a bad prefix or length.
    #[error("invalid IPv6 network '{0}' (an IPv6 prefix, optionally /LEN with LEN in 0-126)")]
    Ipv6Net(String),
    /// `dns=` equal to `host=`.
    #[error("DNS address {0} must be different from the host address")]
    DnsIsHost(Ipv4Addr),
    /// `dhcpstart=` outside `net=`.
    #[error("DHCP start address {0} doesn't belong to network {1}")]
    DhcpOutside(Ipv4Addr, String),
    /// `dhcpstart=` equal to host or DNS.
    #[error("DHCP start address {0} must be different from the host and DNS addresses")]
    DhcpIsHostOrDns(Ipv4Addr),
    /// A bad `hostfwd=` rule.
    #[error("invalid host forwarding rule '{rule}' ({why})")]
    HostFwd {
        /// The rule as written.
        rule: String,
        /// QEMU's reason.
        why: &'static str,
    },
    /// Two `hostfwd=` rules for one host socket.
    #[error("host forwarding rule '{0}' uses a host address and port already forwarded")]
    HostFwdTwice(String),
    /// A bad `guestfwd=` rule.
    #[error("invalid guest forwarding rule '{rule}' ({why})")]
    GuestFwd {
        /// The rule as written.
        rule: String,
        /// Why.
        why: String,
    },
    /// tap `fd=` with options that need troupe to create the tap.
    #[error("ifname=, script=, downscript=, vnet_hdr=, helper= and queues= are invalid with fd=")]
    TapFd,
    /// socket with zero or two of listen/connect.
    #[error("exactly one of listen= or connect= is required")]
    SocketMode,
    /// `connect=` with port 0 or no host.
    #[error("connect= needs HOST:PORT with a port other than 0")]
    SocketConnect,
    /// A malformed `[HOST]:PORT`.
    #[error("expected [HOST]:PORT, not '{0}'")]
    HostPort(String),
    /// A NIC model troupe doesn't have.
    #[error("unsupported NIC model '{0}' (troupe has virtio-net-pci and e1000; see -net nic,model=help)")]
    NicModel(String),
    /// A malformed MAC address.
    #[error("invalid MAC address '{0}' (expected six hex bytes like 52:54:00:12:34:56)")]
    Mac(String),
    /// `-net nic,netdev=` together with `vlan=`.
    #[error("netdev= and vlan= are mutually exclusive")]
    NetdevAndVlan,
    /// A legacy hub with more than two ports.
    #[error(
        "hub {vlan} would connect {nics} NIC(s) and {backends} backend(s); troupe connects a NIC \
         to exactly one backend (use -netdev and -device)"
    )]
    Hub {
        /// The hub (vlan) number.
        vlan: u32,
        /// NICs on it.
        nics: usize,
        /// Backends on it.
        backends: usize,
    },
    /// Two netdevs with one id.
    #[error("duplicate netdev id '{0}'")]
    DuplicateId(String),
    /// A chardev spec inside `guestfwd=` that is wrong.
    #[error("guestfwd target: {0}")]
    Chardev(#[from] super::chardev::ChardevError),
}

/// The QEMU backend types troupe refuses by name.
const UNSUPPORTED_TYPES: &[&str] = &[
    "l2tpv3",
    "vde",
    "netmap",
    "vhost-user",
    "vhost-vdpa",
    "stream",
    "dgram",
    "af-xdp",
];

/// Read the backend-specific keys of `kind` (the `type=`) from `opts`. Chardevs created for
/// `guestfwd=...-BACKEND` are appended to `extra`, named `#guestfwdN` after `extra`'s length.
pub fn parse_backend(
    kind: &str,
    opts: &mut Opts,
    extra: &mut Vec<Chardev>,
) -> Result<NetdevKind, NetdevError> {
    match kind {
        "user" => user::parse_user(opts, extra).map(NetdevKind::User),
        "tap" => parse_tap(opts),
        "bridge" => Ok(NetdevKind::Bridge {
            br: opts.str("br").unwrap_or_else(|| "br0".to_string()),
            helper: PathBuf::from(
                opts.str("helper")
                    .unwrap_or_else(|| DEFAULT_BRIDGE_HELPER.to_string()),
            ),
        }),
        "socket" => parse_socket(opts),
        "hubport" => {
            if opts.str("netdev").is_some() {
                return Err(NetdevError::Unsupported("hubport netdev="));
            }
            let hubid = opts.uint("hubid", 0, u64::from(u32::MAX))?;
            let hubid = hubid.ok_or(OptsError::Missing("hubid".into()))?;
            Ok(NetdevKind::Hubport {
                hubid: u32::try_from(hubid).unwrap_or(u32::MAX),
            })
        }
        other if UNSUPPORTED_TYPES.contains(&other) => {
            Err(NetdevError::UnsupportedType(other.to_string()))
        }
        other => Err(NetdevError::UnknownType(other.to_string())),
    }
}

/// `-netdev TYPE,id=ID,...`.
pub fn parse_netdev(mut opts: Opts, extra: &mut Vec<Chardev>) -> Result<NetdevConfig, NetdevError> {
    let kind = opts.required("type")?;
    let id = opts.id("id")?.ok_or(OptsError::Missing("id".into()))?;
    let kind = parse_backend(&kind, &mut opts, extra)?;
    opts.finish()?;
    Ok(NetdevConfig { id, kind })
}

/// `-netdev help`.
pub fn netdev_help() -> String {
    "Available netdev backend types:\nuser\ntap\nbridge\nsocket\nhubport\n".to_string()
}

fn parse_tap(opts: &mut Opts) -> Result<NetdevKind, NetdevError> {
    let fd = opts.uint("fd", 0, i32::MAX as u64)?.map(|v| v as i32);
    let ifname = opts.str("ifname");
    let script = opts.str("script");
    let downscript = opts.str("downscript");
    let vnet_hdr = opts.flag("vnet_hdr")?;
    let queues = opts.uint("queues", 1, 1024)?;
    let helper = opts.str("helper");
    if opts.flag("vhost")? == Some(true) {
        return Err(NetdevError::Unsupported("vhost=on"));
    }
    for (key, what) in [
        ("fds", "fds="),
        ("vhostfd", "vhostfd="),
        ("vhostfds", "vhostfds="),
        ("sndbuf", "sndbuf="),
    ] {
        if opts.str(key).is_some() {
            return Err(NetdevError::Unsupported(what));
        }
    }
    if helper.is_some() {
        return Err(NetdevError::Unsupported("tap helper= (use -netdev bridge)"));
    }
    if fd.is_some()
        && (ifname.is_some()
            || script.is_some()
            || downscript.is_some()
            || vnet_hdr.is_some()
            || queues.is_some())
    {
        return Err(NetdevError::TapFd);
    }
    let script_path = |given: Option<String>, default: &str| -> Option<PathBuf> {
        if fd.is_some() {
            return None;
        }
        match given.as_deref() {
            None => Some(PathBuf::from(default)),
            Some("") | Some("no") => None,
            Some(p) => Some(PathBuf::from(p)),
        }
    };
    Ok(NetdevKind::Tap {
        ifname,
        fd,
        script: script_path(script, DEFAULT_IFUP),
        downscript: script_path(downscript, DEFAULT_IFDOWN),
        vnet_hdr,
        queues: queues.map_or(1, |q| q as u32),
    })
}

fn parse_socket(opts: &mut Opts) -> Result<NetdevKind, NetdevError> {
    for (key, what) in [
        ("mcast", "socket mcast="),
        ("udp", "socket udp="),
        ("fd", "socket fd="),
        ("localaddr", "socket localaddr="),
    ] {
        if opts.str(key).is_some() {
            return Err(NetdevError::Unsupported(what));
        }
    }
    let addr = |v: &str| -> Result<SocketAddrSpec, NetdevError> {
        let (host, port) =
            split_host_port(v).ok_or_else(|| NetdevError::HostPort(v.to_string()))?;
        let port = parse_port(port).map_err(|_| NetdevError::HostPort(v.to_string()))?;
        Ok(SocketAddrSpec { host, port })
    };
    let listen = opts.str("listen").map(|v| addr(&v)).transpose()?;
    let connect = opts.str("connect").map(|v| addr(&v)).transpose()?;
    if listen.is_some() == connect.is_some() {
        return Err(NetdevError::SocketMode);
    }
    if connect
        .as_ref()
        .is_some_and(|c| c.port == 0 || c.host.is_empty())
    {
        return Err(NetdevError::SocketConnect);
    }
    Ok(NetdevKind::Socket { listen, connect })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netdev(s: &str) -> Result<NetdevConfig, String> {
        let mut extra = Vec::new();
        parse_netdev(Opts::parse(s, Some("type")).unwrap(), &mut extra).map_err(|e| e.to_string())
    }

    #[test]
    fn tap_bridge_socket_hubport() {
        assert_eq!(
            netdev("tap,id=t0,ifname=tap0,script=no,downscript=no,vnet_hdr=on,queues=2")
                .unwrap()
                .kind,
            NetdevKind::Tap {
                ifname: Some("tap0".into()),
                fd: None,
                script: None,
                downscript: None,
                vnet_hdr: Some(true),
                queues: 2
            }
        );
        assert_eq!(
            netdev("tap,id=t0").unwrap().kind,
            NetdevKind::Tap {
                ifname: None,
                fd: None,
                script: Some(DEFAULT_IFUP.into()),
                downscript: Some(DEFAULT_IFDOWN.into()),
                vnet_hdr: None,
                queues: 1
            }
        );
        assert_eq!(
            netdev("tap,id=t0,fd=5").unwrap().kind,
            NetdevKind::Tap {
                ifname: None,
                fd: Some(5),
                script: None,
                downscript: None,
                vnet_hdr: None,
                queues: 1
            }
        );
        assert_eq!(
            netdev("tap,id=t,fd=3,ifname=x"),
            Err("ifname=, script=, downscript=, vnet_hdr=, helper= and queues= are invalid with fd=".into())
        );
        assert_eq!(
            netdev("tap,id=t,vhost=on"),
            Err("vhost=on is not supported by troupe".into())
        );
        assert_eq!(
            netdev("bridge,id=b").unwrap().kind,
            NetdevKind::Bridge {
                br: "br0".into(),
                helper: DEFAULT_BRIDGE_HELPER.into()
            }
        );
        assert_eq!(
            netdev("bridge,id=b,br=virbr0,helper=/usr/local/helper")
                .unwrap()
                .kind,
            NetdevKind::Bridge {
                br: "virbr0".into(),
                helper: "/usr/local/helper".into()
            }
        );
        assert_eq!(
            netdev("socket,id=s,listen=:1234").unwrap().kind,
            NetdevKind::Socket {
                listen: Some(SocketAddrSpec {
                    host: "".into(),
                    port: 1234
                }),
                connect: None
            }
        );
        assert_eq!(
            netdev("socket,id=s,connect=127.0.0.1:1234").unwrap().kind,
            NetdevKind::Socket {
                listen: None,
                connect: Some(SocketAddrSpec {
                    host: "127.0.0.1".into(),
                    port: 1234
                })
            }
        );
        assert_eq!(
            netdev("socket,id=s"),
            Err("exactly one of listen= or connect= is required".into())
        );
        assert_eq!(
            netdev("socket,id=s,listen=:1,connect=h:2"),
            Err("exactly one of listen= or connect= is required".into())
        );
        assert_eq!(
            netdev("socket,id=s,connect=:1"),
            Err("connect= needs HOST:PORT with a port other than 0".into())
        );
        assert_eq!(
            netdev("socket,id=s,listen=1234"),
            Err("expected [HOST]:PORT, not '1234'".into())
        );
        assert_eq!(
            netdev("socket,id=s,mcast=230.0.0.1:1234"),
            Err("socket mcast= is not supported by troupe".into())
        );
        assert_eq!(
            netdev("hubport,id=h,hubid=1").unwrap().kind,
            NetdevKind::Hubport { hubid: 1 }
        );
        assert_eq!(
            netdev("hubport,id=h"),
            Err("parameter 'hubid' is missing".into())
        );
    }

    #[test]
    fn netdev_errors() {
        assert_eq!(netdev("user"), Err("parameter 'id' is missing".into()));
        assert_eq!(
            netdev("foo,id=x"),
            Err("'foo' is not a valid netdev type (see -netdev help)".into())
        );
        assert_eq!(
            netdev("vhost-user,id=x"),
            Err("netdev type 'vhost-user' is not supported by troupe (user, tap, bridge, socket, hubport)".into())
        );
        assert!(netdev("user,id=n,bogus=1")
            .unwrap_err()
            .starts_with("parameter 'bogus' is not supported"));
        assert!(netdev("user,id=#n")
            .unwrap_err()
            .starts_with("invalid id '#n'"));
    }
}
