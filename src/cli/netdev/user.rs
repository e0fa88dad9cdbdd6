//! `-netdev user`: slirp's settings with QEMU's 10.0.2.0/24 defaults and address checks
//! (net/slirp.c `net_slirp_init`), and the `hostfwd=`/`guestfwd=` rules.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use super::NetdevError;
use crate::cli::chardev::{parse_legacy, Legacy};
use crate::cli::options::{parse_uint, Opts};
use crate::config::{CharBackend, Chardev, HostFwd, UserIpv6, UserNetConfig};

/// `key=ADDR` parsed as an address of type `A` (IPv4 or IPv6).
fn address<A: std::str::FromStr>(
    opts: &mut Opts,
    key: &'static str,
) -> Result<Option<A>, NetdevError> {
    match opts.str(key) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| NetdevError::Address { key, value: v }),
    }
}

fn ipv4(opts: &mut Opts, key: &'static str) -> Result<Option<Ipv4Addr>, NetdevError> {
    address(opts, key)
}

fn ipv6(opts: &mut Opts, key: &'static str) -> Result<Option<Ipv6Addr>, NetdevError> {
    address(opts, key)
}

/// Whether `a` is in `net`.
fn in_net6(a: Ipv6Addr, (prefix, len): (Ipv6Addr, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(a) & mask == u128::from(prefix) & mask
}

/// `ipv6-net=`, `ipv6-host=`, `ipv6-dns=` (net/slirp.c's defaults and checks; the host and
/// DNS default to the prefix with ::2 and ::3 in its last byte).
fn parse_ipv6(opts: &mut Opts) -> Result<UserIpv6, NetdevError> {
    let net = match opts.str("ipv6-net") {
        None => UserIpv6::default().net,
        Some(v) => {
            let bad = || NetdevError::Ipv6Net(v.clone());
            let (addr, len) = match v.split_once('/') {
                Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad())?),
                None => (v.as_str(), 64),
            };
            let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
            if len > 126 {
                return Err(bad());
            }
            (addr, len)
        }
    };
    let with_last = |b: u8| {
        let mut o = net.0.octets();
        o[15] |= b;
        Ipv6Addr::from(o)
    };
    let net_text = format!("{}/{}", net.0, net.1);
    let check = |what, addr: Ipv6Addr| {
        if in_net6(addr, net) {
            Ok(addr)
        } else {
            Err(NetdevError::Ipv6Outside {
                what,
                addr,
                net: net_text.clone(),
            })
        }
    };
    let host = check("host", ipv6(opts, "ipv6-host")?.unwrap_or(with_last(2)))?;
    let dns = check("DNS", ipv6(opts, "ipv6-dns")?.unwrap_or(with_last(3)))?;
    Ok(UserIpv6 { net, host, dns })
}

/// The classful default mask slirp uses for `net=ADDR` without `/`.
fn classful_prefix(addr: Ipv4Addr) -> u8 {
    let a = u32::from(addr);
    if a & 0x8000_0000 == 0 {
        8
    } else if a & 0xfff0_0000 == 0xac10_0000 {
        12
    } else if a & 0xc000_0000 == 0x8000_0000 || a & 0xffff_0000 == 0xc0a8_0000 {
        16
    } else if a & 0xc000_0000 == 0xc000_0000 {
        24
    } else {
        28
    }
}

pub(super) fn mask_of(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// `net=ADDR[/BITS|/MASK]` → (network, prefix).
fn parse_network(v: &str) -> Result<(Ipv4Addr, u8), NetdevError> {
    let bad_addr = || NetdevError::Address {
        key: "net",
        value: v.to_string(),
    };
    let (addr, prefix) = match v.split_once('/') {
        None => {
            let addr: Ipv4Addr = v.parse().map_err(|_| bad_addr())?;
            (addr, classful_prefix(addr))
        }
        Some((a, m)) => {
            let addr: Ipv4Addr = a.parse().map_err(|_| bad_addr())?;
            let prefix = if let Ok(mask) = m.parse::<Ipv4Addr>() {
                let mask = u32::from(mask);
                let ones = mask.leading_ones();
                if mask != mask_of(ones as u8) || ones < 4 {
                    return Err(NetdevError::Netmask(m.to_string()));
                }
                ones as u8
            } else {
                match m.parse::<u8>() {
                    Ok(p) if (4..=32).contains(&p) => p,
                    _ => return Err(NetdevError::Netmask(m.to_string())),
                }
            };
            (addr, prefix)
        }
    };
    Ok((Ipv4Addr::from(u32::from(addr) & mask_of(prefix)), prefix))
}

fn in_net(a: Ipv4Addr, (net, prefix): (Ipv4Addr, u8)) -> bool {
    u32::from(a) & mask_of(prefix) == u32::from(net)
}

fn net_plus(net: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net) | n)
}

/// `-netdev user,...` with QEMU's defaults and checks (net/slirp.c `net_slirp_init`).
pub(super) fn parse_user(
    opts: &mut Opts,
    extra: &mut Vec<Chardev>,
) -> Result<UserNetConfig, NetdevError> {
    let net = match opts.str("net") {
        Some(v) => parse_network(&v)?,
        None => (Ipv4Addr::new(10, 0, 2, 0), 24),
    };
    let net_text = format!("{}/{}", net.0, net.1);
    let host = ipv4(opts, "host")?.unwrap_or(net_plus(net.0, 2));
    if !in_net(host, net) {
        return Err(NetdevError::HostOutside(host, net_text));
    }
    let dns = ipv4(opts, "dns")?.unwrap_or(net_plus(net.0, 3));
    if !in_net(dns, net) {
        return Err(NetdevError::DnsOutside(dns, net_text));
    }
    if dns == host {
        return Err(NetdevError::DnsIsHost(dns));
    }
    let dhcpstart = ipv4(opts, "dhcpstart")?.unwrap_or(net_plus(net.0, 15));
    if !in_net(dhcpstart, net) {
        return Err(NetdevError::DhcpOutside(dhcpstart, net_text));
    }
    if dhcpstart == host || dhcpstart == dns {
        return Err(NetdevError::DhcpIsHostOrDns(dhcpstart));
    }
    if opts.flag("ipv4")? == Some(false) {
        return Err(NetdevError::Unsupported("ipv4=off"));
    }
    let ipv6 = if opts.flag("ipv6")?.unwrap_or(true) {
        Some(parse_ipv6(opts)?)
    } else {
        // QEMU reads none of the IPv6 options then.
        for key in ["ipv6-net", "ipv6-host", "ipv6-dns"] {
            let _ = opts.str(key);
        }
        None
    };
    let hostname = opts.str("hostname");
    let domainname = opts.str("domainname");
    let restrict = opts.flag("restrict")?.unwrap_or(false);
    let tftp = opts.str("tftp").map(PathBuf::from);
    let bootfile = opts.str("bootfile");
    let mut hostfwd: Vec<HostFwd> = Vec::new();
    for rule in opts.all("hostfwd") {
        let fwd = parse_hostfwd(&rule)?;
        if fwd.host_port != 0
            && hostfwd.iter().any(|h| {
                h.udp == fwd.udp && h.host_port == fwd.host_port && h.host_addr == fwd.host_addr
            })
        {
            return Err(NetdevError::HostFwdTwice(rule));
        }
        hostfwd.push(fwd);
    }
    let mut guestfwd = Vec::new();
    for rule in opts.all("guestfwd") {
        let (addr, port, target) = parse_guestfwd(&rule, net, host, dns)?;
        let id = match target {
            CharBackend::Named(id) => id,
            backend => {
                let id = format!("#guestfwd{}", extra.len());
                extra.push(Chardev {
                    id: id.clone(),
                    backend,
                    mux: false,
                    signal: true,
                    logfile: None,
                });
                id
            }
        };
        guestfwd.push((addr, port, id));
    }
    Ok(UserNetConfig {
        net,
        host,
        dhcpstart,
        dns,
        ipv6,
        hostname,
        domainname,
        restrict,
        tftp,
        bootfile,
        hostfwd,
        guestfwd,
    })
}

/// `[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT` (net/slirp.c `slirp_hostfwd`).
pub fn parse_hostfwd(rule: &str) -> Result<HostFwd, NetdevError> {
    let fail = |why| NetdevError::HostFwd {
        rule: rule.to_string(),
        why,
    };
    let (proto, rest) = rule
        .split_once(':')
        .ok_or_else(|| fail("No : separators"))?;
    let udp = match proto {
        "" | "tcp" => false,
        "udp" => true,
        _ => return Err(fail("Bad protocol name")),
    };
    let (haddr, rest) = rest
        .split_once(':')
        .ok_or_else(|| fail("Missing : separator"))?;
    let host_addr = if haddr.is_empty() {
        Ipv4Addr::UNSPECIFIED
    } else {
        haddr.parse().map_err(|_| fail("Bad host address"))?
    };
    let (hport, rest) = rest
        .split_once('-')
        .ok_or_else(|| fail("Bad host port separator"))?;
    let host_port = parse_uint(hport)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| fail("Bad host port"))?;
    let (gaddr, gport) = rest
        .split_once(':')
        .ok_or_else(|| fail("Missing guest address"))?;
    let guest_addr = if gaddr.is_empty() {
        Ipv4Addr::UNSPECIFIED
    } else {
        gaddr.parse().map_err(|_| fail("Bad guest address"))?
    };
    let guest_port = parse_uint(gport)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| fail("Bad guest port"))?;
    Ok(HostFwd {
        udp,
        host_addr,
        host_port,
        guest_addr,
        guest_port,
    })
}

/// `tcp:[SERVER]:PORT-TARGET` where TARGET is `chardev:ID` or a chardev spec
/// (`tcp:HOST:PORT`, `unix:PATH`, ...). `cmd:` is refused.
fn parse_guestfwd(
    rule: &str,
    net: (Ipv4Addr, u8),
    host: Ipv4Addr,
    dns: Ipv4Addr,
) -> Result<(Ipv4Addr, u16, CharBackend), NetdevError> {
    let fail = |why: &str| NetdevError::GuestFwd {
        rule: rule.to_string(),
        why: why.to_string(),
    };
    let (proto, rest) = rule
        .split_once(':')
        .ok_or_else(|| fail("expected tcp:[SERVER]:PORT-TARGET"))?;
    if !proto.is_empty() && proto != "tcp" {
        return Err(fail("only tcp is supported"));
    }
    let (server, rest) = rest
        .split_once(':')
        .ok_or_else(|| fail("expected tcp:[SERVER]:PORT-TARGET"))?;
    let (port, target) = rest
        .split_once('-')
        .ok_or_else(|| fail("expected tcp:[SERVER]:PORT-TARGET"))?;
    let port = parse_uint(port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| fail("bad port"))?;
    let addr = if server.is_empty() {
        // libslirp's default: the network's .4 address.
        Ipv4Addr::from(u32::from(net.0) | (0x0204 & !mask_of(net.1)))
    } else {
        server.parse().map_err(|_| fail("bad server address"))?
    };
    if !in_net(addr, net) || addr == host || addr == dns {
        return Err(fail(
            "the address must be in the network and not the host or DNS address",
        ));
    }
    if target.starts_with("cmd:") {
        return Err(NetdevError::Unsupported("guestfwd=...-cmd:"));
    }
    match parse_legacy(target)? {
        Legacy::Backend(b) if b != CharBackend::Stdio => Ok((addr, port, b)),
        _ => Err(fail(
            "the target must be chardev:ID or a socket, file, pty or null device",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_netdev;
    use super::*;
    use crate::config::{NetdevConfig, NetdevKind};

    fn netdev(s: &str) -> Result<NetdevConfig, String> {
        let mut extra = Vec::new();
        parse_netdev(Opts::parse(s, Some("type")).unwrap(), &mut extra).map_err(|e| e.to_string())
    }

    fn user(s: &str) -> Result<UserNetConfig, String> {
        match netdev(&format!("user,id=n{s}"))?.kind {
            NetdevKind::User(u) => Ok(u),
            other => panic!("not user: {other:?}"),
        }
    }

    #[test]
    fn user_defaults_match_qemu() {
        let u = user("").unwrap();
        assert_eq!(u.net, (Ipv4Addr::new(10, 0, 2, 0), 24));
        assert_eq!(u.host, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(u.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(u.dhcpstart, Ipv4Addr::new(10, 0, 2, 15));
        assert!(!u.restrict);
        assert_eq!(
            u.ipv6,
            Some(UserIpv6 {
                net: ("fec0::".parse().unwrap(), 64),
                host: "fec0::2".parse().unwrap(),
                dns: "fec0::3".parse().unwrap(),
            })
        );
        assert!(u.hostfwd.is_empty() && u.guestfwd.is_empty());
    }

    #[test]
    fn user_options_are_read() {
        let u = user(
            ",net=192.168.76.0/24,host=192.168.76.1,dns=192.168.76.53,dhcpstart=192.168.76.100,\
             ipv6=off,hostname=vm,domainname=example.org,restrict=on,tftp=/srv/tftp,bootfile=pxelinux.0,\
             hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53",
        )
        .unwrap();
        assert_eq!(u.net, (Ipv4Addr::new(192, 168, 76, 0), 24));
        assert_eq!(u.host, Ipv4Addr::new(192, 168, 76, 1));
        assert_eq!(u.dns, Ipv4Addr::new(192, 168, 76, 53));
        assert_eq!(u.dhcpstart, Ipv4Addr::new(192, 168, 76, 100));
        assert!(u.ipv6.is_none() && u.restrict);
        assert_eq!(u.hostname.as_deref(), Some("vm"));
        assert_eq!(u.domainname.as_deref(), Some("example.org"));
        assert_eq!(u.tftp, Some(PathBuf::from("/srv/tftp")));
        assert_eq!(u.bootfile.as_deref(), Some("pxelinux.0"));
        assert_eq!(
            u.hostfwd,
            vec![
                HostFwd {
                    udp: false,
                    host_addr: Ipv4Addr::UNSPECIFIED,
                    host_port: 2222,
                    guest_addr: Ipv4Addr::UNSPECIFIED,
                    guest_port: 22
                },
                HostFwd {
                    udp: true,
                    host_addr: Ipv4Addr::LOCALHOST,
                    host_port: 5353,
                    guest_addr: Ipv4Addr::new(10, 0, 2, 15),
                    guest_port: 53
                },
            ]
        );
    }

    #[test]
    fn net_masks_follow_slirp() {
        assert_eq!(
            user(",net=10.0.3.0/16").unwrap().net,
            (Ipv4Addr::new(10, 0, 0, 0), 16)
        );
        assert_eq!(
            user(",net=10.0.3.0/255.255.255.0").unwrap().net,
            (Ipv4Addr::new(10, 0, 3, 0), 24)
        );
        // No mask: classful (class A → /8), defaults derived from the network.
        let u = user(",net=10.0.3.0").unwrap();
        assert_eq!(u.net, (Ipv4Addr::new(10, 0, 0, 0), 8));
        assert_eq!(u.host, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            user(",net=192.168.5.0").unwrap().net,
            (Ipv4Addr::new(192, 168, 0, 0), 16)
        );
        assert_eq!(
            user(",net=172.20.0.0").unwrap().net,
            (Ipv4Addr::new(172, 16, 0, 0), 12)
        );
        assert_eq!(
            user(",net=10.0.3.0/33"),
            Err(
                "invalid netmask '33' (a prefix length in 4-32 or a contiguous dotted mask)".into()
            )
        );
        assert_eq!(
            user(",net=10.0.3.0/255.0.255.0"),
            Err("invalid netmask '255.0.255.0' (a prefix length in 4-32 or a contiguous dotted mask)".into())
        );
        assert_eq!(
            user(",net=10.0.3"),
            Err("parameter 'net' expects an IPv4 address, not '10.0.3'".into())
        );
    }

    #[test]
    fn user_address_checks_match_slirp() {
        assert_eq!(
            user(",host=10.0.3.2"),
            Err("host address 10.0.3.2 doesn't belong to network 10.0.2.0/24".into())
        );
        assert_eq!(
            user(",dns=1.1.1.1"),
            Err("DNS address 1.1.1.1 doesn't belong to network 10.0.2.0/24".into())
        );
        assert_eq!(
            user(",dns=10.0.2.2"),
            Err("DNS address 10.0.2.2 must be different from the host address".into())
        );
        assert_eq!(
            user(",dhcpstart=1.2.3.4"),
            Err("DHCP start address 1.2.3.4 doesn't belong to network 10.0.2.0/24".into())
        );
        assert_eq!(
            user(",dhcpstart=10.0.2.3"),
            Err(
                "DHCP start address 10.0.2.3 must be different from the host and DNS addresses"
                    .into()
            )
        );
        assert_eq!(
            user(",host=x"),
            Err("parameter 'host' expects an IPv4 address, not 'x'".into())
        );
        assert!(user(",dns=10.0.2.1").is_ok());
        assert_eq!(
            user(",ipv4=off"),
            Err("ipv4=off is not supported by troupe".into())
        );
        let u = user(",ipv6-net=fd00:1::/48").unwrap().ipv6.unwrap();
        assert_eq!(u.net, ("fd00:1::".parse().unwrap(), 48));
        assert_eq!(u.host, "fd00:1::2".parse::<std::net::Ipv6Addr>().unwrap());
        assert_eq!(
            user(",ipv6-net=fd00::/127"),
            Err("invalid IPv6 network 'fd00::/127' (an IPv6 prefix, optionally /LEN with LEN in 0-126)".into())
        );
        assert_eq!(
            user(",ipv6-host=fd00::2"),
            Err("IPv6 host fd00::2 doesn't belong to network fec0::/64".into())
        );
        assert_eq!(
            user(",ipv6-dns=x"),
            Err("parameter 'ipv6-dns' expects an IPv6 address, not 'x'".into())
        );
        assert!(user(",ipv6=off,ipv6-net=x").is_ok());
        assert!(user(",smb=/srv")
            .unwrap_err()
            .starts_with("parameter 'smb' is not supported"));
    }

    #[test]
    fn hostfwd_rules_are_validated_like_qemu() {
        let f = |r: &str| parse_hostfwd(r).map_err(|e| e.to_string());
        assert!(!f("::2222-:22").unwrap().udp);
        assert_eq!(f("tcp::0-:22").unwrap().host_port, 0);
        let why = |r: &str, w: &str| Err(format!("invalid host forwarding rule '{r}' ({w})"));
        assert_eq!(f("tcp"), why("tcp", "No : separators"));
        assert_eq!(f("foo:1-:2"), why("foo:1-:2", "Bad protocol name"));
        assert_eq!(f("tcp:1"), why("tcp:1", "Missing : separator"));
        assert_eq!(
            f("tcp:1.2.3.999:1-:2"),
            why("tcp:1.2.3.999:1-:2", "Bad host address")
        );
        assert_eq!(f("tcp::22"), why("tcp::22", "Bad host port separator"));
        assert_eq!(f("tcp::70000-:22"), why("tcp::70000-:22", "Bad host port"));
        assert_eq!(f("tcp::x-:22"), why("tcp::x-:22", "Bad host port"));
        assert_eq!(f("tcp::1-22"), why("tcp::1-22", "Missing guest address"));
        assert_eq!(
            f("tcp::1-a.b:22"),
            why("tcp::1-a.b:22", "Bad guest address")
        );
        assert_eq!(f("tcp::1-:0"), why("tcp::1-:0", "Bad guest port"));
        assert_eq!(f("tcp::1-:65536"), why("tcp::1-:65536", "Bad guest port"));
        assert_eq!(
            user(",hostfwd=tcp::2222-:22,hostfwd=tcp::2222-:23"),
            Err("host forwarding rule 'tcp::2222-:23' uses a host address and port already forwarded".into())
        );
        // Same port, different protocol: fine.
        assert!(user(",hostfwd=tcp::2222-:22,hostfwd=udp::2222-:22").is_ok());
    }

    #[test]
    fn guestfwd_targets_chardevs() {
        let mut extra = Vec::new();
        let n = parse_netdev(
            Opts::parse(
                "user,id=n,guestfwd=tcp:10.0.2.100:1234-chardev:c0,guestfwd=tcp::80-tcp:127.0.0.1:8080",
                Some("type"),
            )
            .unwrap(),
            &mut extra,
        )
        .unwrap();
        let NetdevKind::User(u) = n.kind else {
            panic!()
        };
        assert_eq!(
            u.guestfwd,
            vec![
                (Ipv4Addr::new(10, 0, 2, 100), 1234, "c0".to_string()),
                (Ipv4Addr::new(10, 0, 2, 4), 80, "#guestfwd0".to_string()),
            ]
        );
        assert_eq!(extra.len(), 1);
        assert_eq!(extra[0].id, "#guestfwd0");
        assert!(matches!(
            extra[0].backend,
            CharBackend::Tcp { server: false, .. }
        ));
        assert_eq!(
            user(",guestfwd=tcp:10.0.2.2:80-chardev:c"),
            Err("invalid guest forwarding rule 'tcp:10.0.2.2:80-chardev:c' (the address must be in the \
                 network and not the host or DNS address)"
                .into())
        );
        assert_eq!(
            user(",guestfwd=tcp:10.0.2.100:80-cmd:nc x 1"),
            Err("guestfwd=...-cmd: is not supported by troupe".into())
        );
        assert_eq!(
            user(",guestfwd=udp:10.0.2.100:80-chardev:c"),
            Err("invalid guest forwarding rule 'udp:10.0.2.100:80-chardev:c' (only tcp is supported)".into())
        );
        assert_eq!(
            user(",guestfwd=tcp:10.0.2.100:80-foo"),
            Err("guestfwd target: 'foo' is not a valid char driver (see -chardev help)".into())
        );
    }
}
