//! `ping6`: just enough IPv6 for user-mode networking. From its link-local address
//! (fe80::, then the MAC as an EUI-64) the guest sends a Router Solicitation; the Router
//! Advertisement's prefix makes its global address (`vnet: ipv6 prefix P/L`); it answers
//! Neighbor Solicitations for both addresses; then it sends 3 echo requests to the
//! router's address in that prefix with ::2 at the end (slirp's host, or `ping6=ADDR`)
//! (`vnet: ipv6 reply from A seq=N`).

use guestlib::println;
use guestlib::time::{now_ns, Deadline};

use super::{fold, sum, Nic};

const ETH_IP6: u16 = 0x86dd;
const ICMP6: u8 = 58;

type Addr = [u8; 16];

/// `prefix` (its first 8 bytes) with the MAC's EUI-64 as interface identifier.
fn eui64(prefix: &Addr, mac: [u8; 6]) -> Addr {
    let mut a = *prefix;
    a[8..11].copy_from_slice(&[mac[0] ^ 2, mac[1], mac[2]]);
    a[11..13].copy_from_slice(&[0xff, 0xfe]);
    a[13..16].copy_from_slice(&mac[3..6]);
    a
}

fn parse6(s: &str) -> Option<Addr> {
    let (head, tail) = match s.split_once("::") {
        Some((h, t)) => (h, Some(t)),
        None => (s, None),
    };
    let words = |p: &str| -> Option<([u16; 8], usize)> {
        let mut w = [0u16; 8];
        let mut n = 0;
        for g in p.split(':').filter(|g| !g.is_empty()) {
            *w.get_mut(n)? = u16::from_str_radix(g, 16).ok()?;
            n += 1;
        }
        Some((w, n))
    };
    let (h, hn) = words(head)?;
    let (t, tn) = match tail {
        Some(t) => words(t)?,
        None if hn == 8 => ([0; 8], 0),
        None => return None,
    };
    if hn + tn > 8 {
        return None;
    }
    let mut all = [0u16; 8];
    all[..hn].copy_from_slice(&h[..hn]);
    all[8 - tn..].copy_from_slice(&t[..tn]);
    let mut a = [0u8; 16];
    for (i, w) in all.iter().enumerate() {
        a[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
    }
    Some(a)
}

struct Show(Addr);

impl core::fmt::Display for Show {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for i in 0..8 {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(
                f,
                "{:x}",
                u16::from_be_bytes([self.0[2 * i], self.0[2 * i + 1]])
            )?;
        }
        Ok(())
    }
}

struct V6<'a> {
    nic: &'a mut Nic,
    link_local: Addr,
    global: Option<Addr>,
}

impl V6<'_> {
    /// An ICMPv6 message (checksum filled in here) from `src` to `dst` at `dst_mac`.
    fn icmp(&mut self, dst_mac: [u8; 6], src: Addr, dst: Addr, msg: &mut [u8]) {
        let mut pseudo = [0u8; 40];
        pseudo[..16].copy_from_slice(&src);
        pseudo[16..32].copy_from_slice(&dst);
        pseudo[32..36].copy_from_slice(&(msg.len() as u32).to_be_bytes());
        pseudo[39] = ICMP6;
        msg[2..4].fill(0);
        let c = fold(sum(msg, sum(&pseudo, 0)));
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        let mut p = [0u8; 40 + 1240];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(msg.len() as u16).to_be_bytes());
        p[6] = ICMP6;
        p[7] = 255;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        p[40..40 + msg.len()].copy_from_slice(msg);
        self.nic.send(dst_mac, ETH_IP6, &p[..40 + msg.len()]);
    }

    /// The next ICMPv6 message for us, (source MAC, source, its bytes, length), answering
    /// Neighbor Solicitations on the way.
    fn poll(&mut self, d: &Deadline) -> Option<([u8; 6], Addr, [u8; 1280], usize)> {
        let mut f = [0u8; 1514];
        while !d.expired() {
            let Some(n) = self.nic.port.recv(&mut f, 5) else {
                continue;
            };
            let n = n.min(f.len());
            if n < 14 + 40 + 4 || u16::from_be_bytes([f[12], f[13]]) != ETH_IP6 || f[20] != ICMP6 {
                continue;
            }
            let src_mac: [u8; 6] = f[6..12].try_into().unwrap_or([0; 6]);
            let src: Addr = f[22..38].try_into().unwrap_or([0; 16]);
            let len = usize::from(u16::from_be_bytes([f[18], f[19]])).min(n - 54);
            let mut m = [0u8; 1280];
            let len = len.min(m.len());
            m[..len].copy_from_slice(&f[54..54 + len]);
            if m[0] == 135 && len >= 24 {
                let target: Addr = m[8..24].try_into().unwrap_or([0; 16]);
                if target == self.link_local || Some(target) == self.global {
                    // Neighbor Advertisement: solicited, override, our MAC.
                    let mut na = [0u8; 32];
                    na[0] = 136;
                    na[4] = 0x60;
                    na[8..24].copy_from_slice(&target);
                    na[24] = 2;
                    na[25] = 1;
                    na[26..32].copy_from_slice(&self.nic.mac);
                    self.icmp(src_mac, target, src, &mut na);
                }
                continue;
            }
            return Some((src_mac, src, m, len));
        }
        None
    }
}

pub fn ping6(nic: &mut Nic, to: Option<&str>, count: u16, d: &Deadline) -> bool {
    let mut ll = [0u8; 16];
    ll[..2].copy_from_slice(&[0xfe, 0x80]);
    let link_local = eui64(&ll, nic.mac);
    let mut v = V6 {
        nic,
        link_local,
        global: None,
    };
    // Router Solicitation to all routers, with our link-layer address.
    let mut router = None;
    for _ in 0..10 {
        let mut rs = [0u8; 16];
        rs[0] = 133;
        rs[8] = 1;
        rs[9] = 1;
        rs[10..16].copy_from_slice(&v.nic.mac);
        let all_routers = parse6("ff02::2").unwrap_or([0; 16]);
        v.icmp([0x33, 0x33, 0, 0, 0, 2], link_local, all_routers, &mut rs);
        let t = Deadline::after_ms(500);
        while let Some((mac, _, m, len)) = v.poll(&t) {
            if m[0] != 134 || len < 16 {
                continue;
            }
            // Options: the prefix information.
            let mut at = 16;
            while at + 8 <= len {
                let olen = usize::from(m[at + 1]) * 8;
                if olen == 0 || at + olen > len {
                    break;
                }
                if m[at] == 3 && olen == 32 {
                    let plen = m[at + 2];
                    let prefix: Addr = m[at + 16..at + 32].try_into().unwrap_or([0; 16]);
                    router = Some((mac, prefix, plen));
                }
                at += olen;
            }
            if router.is_some() {
                break;
            }
        }
        if router.is_some() || d.expired() {
            break;
        }
    }
    let Some((rmac, prefix, plen)) = router else {
        println!("vnet: ipv6: no router advertisement");
        return false;
    };
    println!("vnet: ipv6 prefix {}/{plen}", Show(prefix));
    let global = eui64(&prefix, v.nic.mac);
    v.global = Some(global);
    let target = match to {
        Some(t) => match parse6(t) {
            Some(a) => a,
            None => {
                println!("vnet: ipv6: bad address '{t}'");
                return false;
            }
        },
        None => {
            let mut a = prefix;
            a[15] = 2;
            a
        }
    };
    for seq in 1..=count {
        let mut ok = false;
        for _ in 0..10 {
            let t0 = now_ns();
            let mut echo = [0u8; 8 + 16];
            echo[0] = 128;
            echo[4..6].copy_from_slice(&0x7472u16.to_be_bytes());
            echo[6..8].copy_from_slice(&seq.to_be_bytes());
            echo[8..].copy_from_slice(b"troupe ping six!");
            v.icmp(rmac, global, target, &mut echo);
            let t = Deadline::after_ms(300);
            while let Some((_, src, m, len)) = v.poll(&t) {
                if m[0] == 129 && len >= 8 && src == target && m[6..8] == seq.to_be_bytes() {
                    println!(
                        "vnet: ipv6 reply from {} seq={seq} rtt_ns={}",
                        Show(src),
                        now_ns() - t0
                    );
                    ok = true;
                    break;
                }
            }
            if ok {
                break;
            }
        }
        if !ok {
            println!("vnet: ipv6: no reply for seq={seq}");
            return false;
        }
    }
    true
}
