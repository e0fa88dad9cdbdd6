//! Doors left open to the network: a monitor or QMP server, a VNC server without a password
//! or an incoming migration listening on an address other hosts can reach. Each is legal
//! (QEMU accepts them silently) but hands whoever connects first the VM, its screen and
//! keyboard, or its whole state; troupe says so once at start, naming the door and the risk.

use std::net::{IpAddr, ToSocketAddrs};

use crate::config::{CharBackend, MonitorMode, SocketAddrSpec, VmConfig};

/// One warning per exposed door, in the order the doors are listed in the config (monitors,
/// then VNC, then the incoming migration). The caller prints each as `troupe: warning: ...`.
pub fn exposure_warnings(cfg: &VmConfig) -> Vec<String> {
    let mut out = Vec::new();
    for m in &cfg.monitors {
        let Some(addr) = listening_tcp(&m.backend, cfg) else {
            continue;
        };
        if let Some(place) = reachable(addr) {
            let (what, how) = match m.mode {
                MonitorMode::Control => ("the QMP monitor", "QMP"),
                MonitorMode::Readline => ("the monitor", "monitor commands"),
            };
            out.push(format!(
                "{what} listens on {place}: anyone who can connect controls the VM through \
                 {how} (its disks, memory and host files it may open); listen on 127.0.0.1 \
                 or a unix socket"
            ));
        }
    }
    if let Some(vnc) = &cfg.vnc {
        // Client certificates (tls-creds with verify-peer=on) authenticate as a password does.
        let certified = vnc.tls.as_ref().is_some_and(|t| t.verify_peer);
        if !vnc.password && !certified {
            let mut ports = vec![vnc.listen.clone()];
            if let Some(ws) = vnc.websocket {
                ports.push(SocketAddrSpec {
                    host: vnc.listen.host.clone(),
                    port: ws,
                });
            }
            for (n, addr) in ports.iter().enumerate() {
                if let Some(place) = reachable(addr) {
                    let door = if n == 0 {
                        "the VNC server"
                    } else {
                        "the VNC websocket"
                    };
                    out.push(format!(
                        "{door} listens on {place} without a password: anyone who can connect \
                         sees the guest's screen and types into it; add password=on (and set \
                         one with 'change vnc password') or listen on 127.0.0.1"
                    ));
                }
            }
        }
    }
    if let Some(addr) = cfg.incoming.as_deref().and_then(incoming_tcp) {
        if let Some(place) = reachable(&addr) {
            out.push(format!(
                "-incoming listens on {place}: the first host to connect sends the whole VM \
                 state (memory, registers, devices), which troupe loads as it comes; listen on \
                 the address the source will connect from, or use a unix socket"
            ));
        }
    }
    out
}

/// The TCP address a monitor's backend listens on, following `chardev:ID`.
fn listening_tcp<'a>(backend: &'a CharBackend, cfg: &'a VmConfig) -> Option<&'a SocketAddrSpec> {
    match backend {
        CharBackend::Tcp {
            addr, server: true, ..
        } => Some(addr),
        CharBackend::Named(id) => {
            let chardev = cfg.chardevs.iter().find(|c| &c.id == id)?;
            match &chardev.backend {
                CharBackend::Named(_) => None,
                b => listening_tcp(b, cfg),
            }
        }
        _ => None,
    }
}

/// `tcp:[HOST]:PORT` of `-incoming`.
fn incoming_tcp(uri: &str) -> Option<SocketAddrSpec> {
    let rest = uri.strip_prefix("tcp:")?;
    let rest = rest.split(',').next().unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(SocketAddrSpec {
        host: host.to_string(),
        port: port.parse().ok()?,
    })
}

/// Where a listener on `addr` can be reached from other hosts, in words (`all addresses,
/// port 5901`, `192.0.2.7:4444`); None for loopback, and for names that do not resolve (the
/// listener itself reports those).
fn reachable(addr: &SocketAddrSpec) -> Option<String> {
    let host = addr.host.as_str();
    if host.is_empty() {
        return Some(format!("all addresses, port {}", addr.port));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return None;
    }
    let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (host, addr.port)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default(),
    };
    let open = ips.iter().find(|ip| !ip.is_loopback())?;
    Some(if open.is_unspecified() {
        format!("all addresses, port {}", addr.port)
    } else if host.parse::<IpAddr>().is_ok() {
        format!("{}", std::net::SocketAddr::new(*open, addr.port))
    } else {
        format!("{host}:{} ({open})", addr.port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &str, port: u16) -> SocketAddrSpec {
        SocketAddrSpec {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn loopback_is_not_reachable_and_everything_else_is() {
        assert_eq!(reachable(&spec("127.0.0.1", 1)), None);
        assert_eq!(reachable(&spec("127.3.4.5", 1)), None);
        assert_eq!(reachable(&spec("::1", 1)), None);
        assert_eq!(reachable(&spec("localhost", 1)), None);
        assert_eq!(
            reachable(&spec("", 4444)).as_deref(),
            Some("all addresses, port 4444")
        );
        assert_eq!(
            reachable(&spec("0.0.0.0", 5900)).as_deref(),
            Some("all addresses, port 5900")
        );
        assert_eq!(
            reachable(&spec("::", 5900)).as_deref(),
            Some("all addresses, port 5900")
        );
        assert_eq!(
            reachable(&spec("192.0.2.7", 4444)).as_deref(),
            Some("192.0.2.7:4444")
        );
    }

    #[test]
    fn incoming_uris() {
        assert_eq!(
            incoming_tcp("tcp:0.0.0.0:4444"),
            Some(spec("0.0.0.0", 4444))
        );
        assert_eq!(incoming_tcp("tcp::4444"), Some(spec("", 4444)));
        assert_eq!(incoming_tcp("tcp:[::1]:4444"), Some(spec("::1", 4444)));
        assert_eq!(incoming_tcp("unix:/tmp/x"), None);
        assert_eq!(incoming_tcp("defer"), None);
    }
}
