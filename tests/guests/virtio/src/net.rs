//! `dev=net`: a virtio-net driver with just enough IPv4 to be pinged and to ping: it
//! answers ARP requests for its address and ICMP echo requests, resolves `peer=` by ARP
//! and sends it `count=N` (default 3) echo requests.
//!
//! Prints `vnet: mac XX:..`, `vnet: reply from PEER seq=N` for each answer, and exits 0
//! once every request was answered and `answer=N` (default 0) echo requests from others
//! were answered (`vnet: answered N echo requests`); 1 after `wait=SECONDS` (default 30).

use guestlib::phys::{copy_to, read_u8};
use guestlib::{println, BootInfo};

use crate::transport::{Virtio, F_WRITE, RING_BASE, VERSION_1};

const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const RXB: u64 = RING_BASE + 0x8_0000;
const TXB: u64 = RING_BASE + 0xc_0000;
const NRX: u16 = 16;
const BUF: u64 = 2048;

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut it = s.split('.');
    for b in ip.iter_mut() {
        *b = it.next()?.parse().ok()?;
    }
    Some(ip)
}

fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

struct Nic {
    v: Virtio,
    hdr: usize,
    mac: [u8; 6],
    ip: [u8; 4],
}

impl Nic {
    fn send(&mut self, frame: &[u8]) {
        let mut b = [0u8; 1600];
        let n = self.hdr + frame.len();
        b[self.hdr..n].copy_from_slice(frame);
        if self.hdr == 12 {
            b[10] = 1;
        }
        copy_to(TXB, &b[..n]);
        self.v.select(1);
        self.v.set_desc(0, TXB, n as u32, 0, 0);
        self.v.offer(0);
        let _ = self.v.wait_used(2000);
        self.v.select(0);
    }

    fn eth(&self, dst: [u8; 6], ty: u16, payload: &[u8], out: &mut [u8]) -> usize {
        out[..6].copy_from_slice(&dst);
        out[6..12].copy_from_slice(&self.mac);
        out[12..14].copy_from_slice(&ty.to_be_bytes());
        out[14..14 + payload.len()].copy_from_slice(payload);
        (14 + payload.len()).max(60)
    }

    fn arp(&mut self, op: u16, dst_mac: [u8; 6], dst_ip: [u8; 4]) {
        let mut a = [0u8; 28];
        a[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 0]);
        a[6..8].copy_from_slice(&op.to_be_bytes());
        a[8..14].copy_from_slice(&self.mac);
        a[14..18].copy_from_slice(&self.ip);
        a[18..24].copy_from_slice(&if op == 1 { [0; 6] } else { dst_mac });
        a[24..28].copy_from_slice(&dst_ip);
        let mut f = [0u8; 64];
        let eth_dst = if op == 1 { [0xff; 6] } else { dst_mac };
        let n = self.eth(eth_dst, 0x0806, &a, &mut f);
        self.send(&f[..n]);
    }

    /// An IPv4 ICMP packet (type, code 0, id, seq, data) to (mac, ip).
    fn icmp(&mut self, mac: [u8; 6], ip: [u8; 4], ty: u8, id: u16, seq: u16, data: &[u8]) {
        let mut p = [0u8; 1500];
        let ilen = 8 + data.len();
        let total = 20 + ilen;
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 1;
        p[12..16].copy_from_slice(&self.ip);
        p[16..20].copy_from_slice(&ip);
        let c = csum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20] = ty;
        p[24..26].copy_from_slice(&id.to_be_bytes());
        p[26..28].copy_from_slice(&seq.to_be_bytes());
        p[28..28 + data.len()].copy_from_slice(data);
        let c = csum(&p[20..20 + ilen]);
        p[22..24].copy_from_slice(&c.to_be_bytes());
        let mut f = [0u8; 1600];
        let n = self.eth(mac, 0x0800, &p[..total], &mut f);
        self.send(&f[..n]);
    }
}

pub fn run(boot: &BootInfo) -> u32 {
    let Some(mut v) = Virtio::find(&[0x1000, 0x1041], boot.arg("legacy").is_some()) else {
        println!("vnet: no virtio-net");
        return 2;
    };
    let feats = match v.init_queues(VERSION_1 | F_MAC | F_STATUS, 64, 2) {
        Ok(f) => f,
        Err(e) => {
            println!("vnet: init: {e}");
            return 1;
        }
    };
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = v.config8(i as u64);
    }
    let link = u16::from(v.config8(6)) | (u16::from(v.config8(7)) << 8);
    println!(
        "vnet: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} link {}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        if link & 1 != 0 { "up" } else { "down" }
    );
    let ip = boot.arg("ip").and_then(parse_ip).unwrap_or([10, 9, 0, 2]);
    let peer = boot.arg("peer").and_then(parse_ip).unwrap_or([10, 9, 0, 1]);
    let count = boot.arg_u64("count").unwrap_or(3) as u16;
    let answer = boot.arg_u64("answer").unwrap_or(0);
    let hdr = if feats & VERSION_1 != 0 { 12 } else { 10 };
    for i in 0..NRX {
        v.set_desc(i, RXB + BUF * u64::from(i), BUF as u32, F_WRITE, 0);
        v.offer_quietly(i);
    }
    v.kick();
    let mut nic = Nic { v, hdr, mac, ip };
    let d = guestlib::time::Deadline::after_ms(boot.arg_u64("wait").unwrap_or(30) * 1000);
    let mut peer_mac: Option<[u8; 6]> = None;
    let (mut next_seq, mut replies, mut answered) = (1u16, 0u16, 0u64);
    let mut last_tx = 0u64;
    loop {
        if replies >= count && answered >= answer {
            println!("vnet: answered {answered} echo requests");
            return 0;
        }
        if d.expired() {
            println!("vnet: timeout ({replies}/{count} replies, {answered} answered)");
            return 1;
        }
        // Every 200 ms: ARP for the peer until known, then the next echo request.
        let now = guestlib::time::now_ns();
        if now - last_tx > 200_000_000 {
            last_tx = now;
            match peer_mac {
                None => nic.arp(1, [0; 6], peer),
                Some(m) if next_seq <= count && next_seq == replies + 1 => {
                    nic.icmp(m, peer, 8, 0x7472, next_seq, b"troupe ping");
                    next_seq += 1;
                }
                Some(m) if next_seq == replies + 1 => {
                    let _ = m;
                }
                Some(m) => {
                    // Lost: ask again for the same sequence number.
                    nic.icmp(m, peer, 8, 0x7472, next_seq - 1, b"troupe ping");
                }
            }
        }
        let Some((head, len)) = nic.v.wait_used(20) else {
            continue;
        };
        let at = RXB + BUF * u64::from(head) + hdr as u64;
        let n = (len as usize).saturating_sub(hdr).min(1514);
        let mut f = [0u8; 1514];
        for (i, b) in f[..n].iter_mut().enumerate() {
            *b = read_u8(at + i as u64);
        }
        nic.v.offer(head);
        if n < 42 {
            continue;
        }
        let ty = u16::from_be_bytes([f[12], f[13]]);
        let src_mac: [u8; 6] = f[6..12].try_into().unwrap_or([0; 6]);
        if ty == 0x0806 && f[38..42] == ip {
            let op = u16::from_be_bytes([f[20], f[21]]);
            let sender_ip: [u8; 4] = f[28..32].try_into().unwrap_or([0; 4]);
            if op == 1 {
                nic.arp(2, src_mac, sender_ip);
            }
            if sender_ip == peer {
                peer_mac = Some(src_mac);
            }
        } else if ty == 0x0800 && f[23] == 1 && f[30..34] == ip {
            let ihl = usize::from(f[14] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([f[16], f[17]])).min(n - 14);
            let icmp = &f[14 + ihl..14 + total];
            let src_ip: [u8; 4] = f[26..30].try_into().unwrap_or([0; 4]);
            if icmp.len() < 8 {
                continue;
            }
            let id = u16::from_be_bytes([icmp[4], icmp[5]]);
            let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
            match icmp[0] {
                8 => {
                    let data: [u8; 1400] = {
                        let mut d = [0u8; 1400];
                        let k = (icmp.len() - 8).min(1400);
                        d[..k].copy_from_slice(&icmp[8..8 + k]);
                        d
                    };
                    let k = (icmp.len() - 8).min(1400);
                    nic.icmp(src_mac, src_ip, 0, id, seq, &data[..k]);
                    answered += 1;
                }
                0 if src_ip == peer && id == 0x7472 && seq == replies + 1 => {
                    replies += 1;
                    println!(
                        "vnet: reply from {}.{}.{}.{} seq={seq}",
                        peer[0], peer[1], peer[2], peer[3]
                    );
                }
                _ => {}
            }
        }
    }
}
