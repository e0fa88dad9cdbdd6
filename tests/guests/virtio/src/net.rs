//! `dev=net`: a virtio-net driver (or, with `nic=e1000`, an e1000 one) with just enough
//! IPv4 for the network tests. It always answers ARP requests for its address and ICMP
//! echo requests. In order, it then:
//!
//! 1. takes its address from `ip=` (default 10.9.0.2), or with `dhcp` from a DHCP server
//!    (`vnet: dhcp lease A router R`);
//! 2. resolves `peer=` (default 10.9.0.1; the router with `dhcp`) by ARP and sends it
//!    `count=N` (default 3) echo requests (`vnet: reply from P seq=N rtt_ns=T`);
//! 3. with `tcp=IP:PORT`, connects (through the peer), sends `hello from guest\n` and
//!    prints what comes back until the server closes, or with `line` until the first
//!    newline (`vnet: tcp got 'TEXT'`), or
//!    `vnet: tcp connect failed`;
//! 4. with `tcpsend=IP:PORT mb=N` / `tcprecv=PORT`, a bulk TCP transfer out or in
//!    (see `bulk.rs`); with `ping6` (or `ping6=ADDR`), IPv6 router discovery and echo
//!    requests (see `v6.rs`); with `flood=N` (virtio-net), N minimum-size frames to the peer
//!    (see [`flood`]);
//! 5. with `listen=PORT`, accepts one TCP connection, reads a line, answers
//!    `echo: LINE\n` and closes (`vnet: served 'LINE'`);
//! 6. waits until `answer=N` (default 0) distinct echo requests were answered;
//! 7. with `linkwatch`, watches the link status in the configuration space: prints
//!    `vnet: link down` (and, after a ping that gets no answer, `vnet: no reply while link
//!    down`), then `vnet: link up` and `vnet: reply after link up` once a ping works again.
//!
//! `announce` waits for the device's announce request and acknowledges it (see
//! [`watch_announce`]).
//! With `nic=e1000 eeprom=microwire` the e1000 driver reads its EEPROM bit by bit through
//! EECD (`vnet: e1000 eeprom (microwire) checksum 0xbaba`).
//! `mrg` negotiates MRG_RXBUF and posts 256-byte receive buffers, so that most frames
//! arrive spread over several.
//! `offload` negotiates CSUM, GUEST_CSUM, HOST_TSO4 and GUEST_TSO4 (with MRG_RXBUF) or
//! stops (`vnet: offloads not offered`): `tcpsend` then hands the device TCP segments of
//! up to 16 MSS with a partial checksum for the host to cut and finish, and the guest
//! takes segments the host left whole; the run ends with `vnet: offload: sent N tso
//! segments, received G gso frames, P with partial checksums`.
//! `stall` posts its receive buffers and then never reads them (`vnet: stalled, not
//! reading`) until `wait=` passes.
//! `fault=big|loop` first offers a bad transmit chain (see [`tx_fault`]).
//! With `rxfilter`, it instead sets a receive filter through the control queue and prints
//! the probe frames that pass it (see [`rx_filter`]).
//!
//! Prints `vnet: done, answered N echo requests` and exits 0; 1 on a failed step or after
//! `wait=SECONDS` (default 30) in total.

use guestlib::phys::{copy_to, read_u8};
use guestlib::time::{now_ns, Deadline};
use guestlib::{println, BootInfo};

mod bulk;
mod v6;

use crate::e1000::E1000;
use crate::transport::{Virtio, F_WRITE, RING_BASE, VERSION_1};

const F_CSUM: u64 = 1;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_HOST_TSO4: u64 = 1 << 11;
const OFFLOADS: u64 = F_CSUM | F_GUEST_CSUM | F_HOST_TSO4 | F_GUEST_TSO4;
const F_MRG_RXBUF: u64 = 1 << 15;
/// Receive buffer size with MRG_RXBUF: small, so that frames span several.
const MRG_BUF: u32 = 256;
const F_STATUS: u64 = 1 << 16;
const F_CTRL_VQ: u64 = 1 << 17;
const F_CTRL_RX: u64 = 1 << 18;
const F_GUEST_ANNOUNCE: u64 = 1 << 21;
const F_CTRL_MAC_ADDR: u64 = 1 << 23;
const F_MQ: u64 = 1 << 22;
/// Control commands are built here.
const CTRLB: u64 = RING_BASE + 0x7_0000;
/// The ethertype of the test's probe frames (IEEE local experimental).
const ETH_PROBE: u16 = 0x88b5;
const RXB: u64 = RING_BASE + 0x8_0000;
const TXB: u64 = RING_BASE + 0xc_0000;
const NRX: u16 = 16;
const BUF: u64 = 2048;
const ETH_IP: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const TCP_FIN: u8 = 1;
const TCP_SYN: u8 = 2;
const TCP_PSH: u8 = 8;
const TCP_ACK: u8 = 16;

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut it = s.split('.');
    for b in ip.iter_mut() {
        *b = it.next()?.parse().ok()?;
    }
    Some(ip)
}

fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A received IPv4 packet (what `poll` does not answer itself).
struct Packet {
    src_mac: [u8; 6],
    src: [u8; 4],
    proto: u8,
    /// The start of the IP payload (`len` bytes of it).
    data: [u8; 1500],
    len: usize,
    /// The whole IP payload's length (more than `len` for a segment the host left whole).
    full: usize,
}

/// The device under the stack: virtio-net (with its header length) or an e1000.
// One Port lives for the whole run (no allocator here to box the larger variant).
#[allow(clippy::large_enum_variant)]
enum Port {
    /// `mrg`: MRG_RXBUF negotiated (a frame may span several receive buffers).
    /// `merged` counts frames that came in more than one buffer.
    Virtio {
        v: Virtio,
        hdr: usize,
        mrg: bool,
        merged: u64,
        offload: Option<Offload>,
    },
    E1000(E1000),
}

/// `offload`: counts of what the host and the device handed over unfinished.
#[derive(Default, Clone, Copy)]
struct Offload {
    tso_out: u64,
    gso_in: u64,
    partial_in: u64,
}

impl Port {
    /// Transmit the frame (virtio-net header included) of `len` bytes already at TXB.
    fn send_prepared(&mut self, len: usize) {
        if let Port::Virtio { v, .. } = self {
            v.select(1);
            v.set_desc(0, TXB, len as u32, 0, 0);
            v.offer(0);
            let _ = v.wait_used(2000);
            v.select(0);
        }
    }

    /// Transmit one Ethernet frame.
    fn send(&mut self, frame: &[u8]) {
        match self {
            Port::Virtio { v, hdr, .. } => {
                let h = *hdr;
                let mut b = [0u8; 1600];
                if h == 12 {
                    b[10] = 1; // num_buffers
                }
                b[h..h + frame.len()].copy_from_slice(frame);
                copy_to(TXB, &b[..h + frame.len()]);
                v.select(1);
                v.set_desc(0, TXB, (h + frame.len()) as u32, 0, 0);
                v.offer(0);
                let _ = v.wait_used(2000);
                v.select(0);
            }
            Port::E1000(e) => {
                e.send(frame);
            }
        }
    }

    /// The next received frame into `f` (as much as fits), waiting up to `ms`: its whole
    /// length.
    fn recv(&mut self, f: &mut [u8], ms: u64) -> Option<usize> {
        match self {
            Port::Virtio {
                v,
                hdr,
                mrg,
                merged,
                offload,
            } => {
                let (head, len) = v.wait_used(ms)?;
                let base = RXB + BUF * u64::from(head);
                if let Some(o) = offload {
                    o.partial_in += u64::from(read_u8(base) & 1);
                    o.gso_in += u64::from(read_u8(base + 1) != 0);
                }
                let at = base + *hdr as u64;
                let mut whole = (len as usize).saturating_sub(*hdr);
                let mut n = whole.min(f.len());
                for (i, b) in f[..n].iter_mut().enumerate() {
                    *b = read_u8(at + i as u64);
                }
                v.offer(head);
                // The rest of a merged frame is in the next num_buffers - 1 buffers.
                let more = if *mrg {
                    guestlib::phys::read_u16(base + 10).saturating_sub(1)
                } else {
                    0
                };
                if more > 0 {
                    *merged += 1;
                }
                for _ in 0..more {
                    let (head, len) = v.wait_used(100)?;
                    let at = RXB + BUF * u64::from(head);
                    let k = (len as usize).min(f.len() - n);
                    for (i, b) in f[n..n + k].iter_mut().enumerate() {
                        *b = read_u8(at + i as u64);
                    }
                    n += k;
                    whole += len as usize;
                    v.offer(head);
                }
                Some(whole)
            }
            Port::E1000(e) => e.recv(f, ms),
        }
    }

    fn link_up(&self) -> bool {
        match self {
            Port::Virtio { v, .. } => v.config8(6) & 1 != 0,
            Port::E1000(e) => e.link_up(),
        }
    }
}

struct Nic {
    port: Port,
    mac: [u8; 6],
    ip: [u8; 4],
    /// Distinct echo requests answered (a request sent again, because its reply was slow,
    /// is answered again but counted once: a peer that counts retries would stop answering
    /// before the other side has its replies).
    answered: u64,
    /// The (sender, id, seq) of the requests counted so far, the latest 64.
    seen: [([u8; 4], u16, u16); 64],
    arp_seen: Option<([u8; 4], [u8; 6])>,
}

impl Nic {
    fn send(&mut self, dst: [u8; 6], ty: u16, payload: &[u8]) {
        let mut b = [0u8; 1514];
        b[..6].copy_from_slice(&dst);
        b[6..12].copy_from_slice(&self.mac);
        b[12..14].copy_from_slice(&ty.to_be_bytes());
        b[14..14 + payload.len()].copy_from_slice(payload);
        let n = (14 + payload.len()).max(60);
        self.port.send(&b[..n]);
    }

    fn arp(&mut self, op: u16, dst_mac: [u8; 6], dst_ip: [u8; 4]) {
        let mut a = [0u8; 28];
        a[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
        a[6..8].copy_from_slice(&op.to_be_bytes());
        a[8..14].copy_from_slice(&self.mac);
        a[14..18].copy_from_slice(&self.ip);
        a[18..24].copy_from_slice(&dst_mac);
        a[24..28].copy_from_slice(&dst_ip);
        let eth = if op == 1 { [0xff; 6] } else { dst_mac };
        self.send(eth, ETH_ARP, &a);
    }

    /// An IPv4 packet with `proto` and `payload` (whose checksum the caller filled in).
    fn ip_send(&mut self, mac: [u8; 6], dst: [u8; 4], src: [u8; 4], proto: u8, payload: &[u8]) {
        let mut p = [0u8; 1500];
        let total = 20 + payload.len();
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..total].copy_from_slice(payload);
        self.send(mac, ETH_IP, &p[..total]);
    }

    fn icmp(&mut self, mac: [u8; 6], ip: [u8; 4], ty: u8, id: u16, seq: u16, data: &[u8]) {
        let mut m = [0u8; 1480];
        m[0] = ty;
        m[4..6].copy_from_slice(&id.to_be_bytes());
        m[6..8].copy_from_slice(&seq.to_be_bytes());
        m[8..8 + data.len()].copy_from_slice(data);
        let n = 8 + data.len();
        let c = fold(sum(&m[..n], 0));
        m[2..4].copy_from_slice(&c.to_be_bytes());
        self.ip_send(mac, ip, self.ip, 1, &m[..n]);
    }

    /// UDP or TCP with the pseudo-header checksum at `csum_at` within `seg`.
    fn l4(
        &mut self,
        mac: [u8; 6],
        dst: [u8; 4],
        src: [u8; 4],
        proto: u8,
        seg: &mut [u8],
        csum_at: usize,
    ) {
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&src);
        pseudo[4..8].copy_from_slice(&dst);
        pseudo[9] = proto;
        pseudo[10..12].copy_from_slice(&(seg.len() as u16).to_be_bytes());
        seg[csum_at..csum_at + 2].fill(0);
        let c = fold(sum(seg, sum(&pseudo, 0)));
        seg[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        self.ip_send(mac, dst, src, proto, seg);
    }

    /// Wait up to `ms` for a packet; answers ARP and pings on the way.
    fn poll(&mut self, ms: u64) -> Option<Packet> {
        let d = Deadline::after_ms(ms);
        loop {
            let mut f = [0u8; 1514];
            let Some(n) = self.port.recv(&mut f, ms.min(5)) else {
                if d.expired() {
                    return None;
                }
                continue;
            };
            if n < 34 {
                continue;
            }
            let (n, whole) = (n.min(f.len()), n);
            let ty = u16::from_be_bytes([f[12], f[13]]);
            let src_mac: [u8; 6] = f[6..12].try_into().unwrap_or([0; 6]);
            if ty == ETH_ARP && n >= 42 {
                let sender: [u8; 4] = f[28..32].try_into().unwrap_or([0; 4]);
                self.arp_seen = Some((sender, src_mac));
                if u16::from_be_bytes([f[20], f[21]]) == 1 && f[38..42] == self.ip {
                    self.arp(2, src_mac, sender);
                }
                continue;
            }
            if ty != ETH_IP {
                continue;
            }
            let ihl = usize::from(f[14] & 0xf) * 4;
            let ip_len = usize::from(u16::from_be_bytes([f[16], f[17]])).min(whole - 14);
            let total = ip_len.min(n - 14);
            if total < ihl {
                continue;
            }
            let dst: [u8; 4] = f[30..34].try_into().unwrap_or([0; 4]);
            let mut p = Packet {
                src_mac,
                src: f[26..30].try_into().unwrap_or([0; 4]),
                proto: f[23],
                data: [0; 1500],
                len: total - ihl,
                full: ip_len - ihl,
            };
            p.data[..p.len].copy_from_slice(&f[14 + ihl..14 + total]);
            if p.proto == 1 && dst == self.ip && p.len >= 8 && p.data[0] == 8 {
                let (id, seq) = (
                    u16::from_be_bytes([p.data[4], p.data[5]]),
                    u16::from_be_bytes([p.data[6], p.data[7]]),
                );
                let body: [u8; 1400] = {
                    let mut b = [0u8; 1400];
                    let k = (p.len - 8).min(1400);
                    b[..k].copy_from_slice(&p.data[8..8 + k]);
                    b
                };
                let k = (p.len - 8).min(1400);
                self.icmp(src_mac, p.src, 0, id, seq, &body[..k]);
                let key = (p.src, id, seq);
                let n = self.answered as usize;
                if !self.seen[..n.min(64)].contains(&key) {
                    self.seen[n % 64] = key;
                    self.answered += 1;
                }
                continue;
            }
            return Some(p);
        }
    }

    fn resolve(&mut self, ip: [u8; 4], d: &Deadline) -> Option<[u8; 6]> {
        loop {
            if let Some((i, m)) = self.arp_seen {
                if i == ip {
                    return Some(m);
                }
            }
            if d.expired() {
                return None;
            }
            self.arp(1, [0; 6], ip);
            let _ = self.poll(200);
        }
    }
}

fn dhcp(nic: &mut Nic, d: &Deadline) -> Option<([u8; 4], [u8; 4])> {
    let xid = 0x7472_6f75u32;
    let msg = |nic: &mut Nic, ty: u8, req: Option<([u8; 4], [u8; 4])>| {
        let mut u = [0u8; 8 + 300];
        u[0..2].copy_from_slice(&68u16.to_be_bytes());
        u[2..4].copy_from_slice(&67u16.to_be_bytes());
        u[4..6].copy_from_slice(&(308u16).to_be_bytes());
        let b = &mut u[8..];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[10] = 0x80; // broadcast reply
        b[28..34].copy_from_slice(&nic.mac);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        let mut o = 240;
        b[o..o + 3].copy_from_slice(&[53, 1, ty]);
        o += 3;
        if let Some((ip, server)) = req {
            b[o..o + 6].copy_from_slice(&[50, 4, ip[0], ip[1], ip[2], ip[3]]);
            b[o + 6..o + 12].copy_from_slice(&[54, 4, server[0], server[1], server[2], server[3]]);
            o += 12;
        }
        b[o] = 255;
        nic.l4([0xff; 6], [255; 4], [0; 4], 17, &mut u, 6);
    };
    let parse = |p: &Packet, want: u8| -> Option<([u8; 4], [u8; 4], [u8; 4])> {
        if p.proto != 17 || p.len < 8 + 240 || p.data[2..4] != 68u16.to_be_bytes() {
            return None;
        }
        let b = &p.data[8..p.len];
        if b[4..8] != xid.to_be_bytes() {
            return None;
        }
        let yi: [u8; 4] = b[16..20].try_into().ok()?;
        let (mut ty, mut server, mut router) = (0, [0; 4], [0; 4]);
        let mut o = 240;
        while o + 1 < b.len() && b[o] != 255 {
            if b[o] == 0 {
                o += 1;
                continue;
            }
            let (code, len) = (b[o], usize::from(b[o + 1]));
            let v = b.get(o + 2..o + 2 + len)?;
            match code {
                53 => ty = v[0],
                54 if len == 4 => server.copy_from_slice(v),
                3 if len >= 4 => router.copy_from_slice(&v[..4]),
                _ => {}
            }
            o += 2 + len;
        }
        (ty == want).then_some((yi, server, router))
    };
    let mut offer = None;
    while offer.is_none() {
        if d.expired() {
            return None;
        }
        msg(nic, 1, None);
        let t = Deadline::after_ms(500);
        while !t.expired() {
            if let Some(p) = nic.poll(100) {
                if let Some(o) = parse(&p, 2) {
                    offer = Some(o);
                    break;
                }
            }
        }
    }
    let (ip, server, _) = offer?;
    loop {
        if d.expired() {
            return None;
        }
        msg(nic, 3, Some((ip, server)));
        let t = Deadline::after_ms(500);
        while !t.expired() {
            if let Some(p) = nic.poll(100) {
                if let Some((yi, _, router)) = parse(&p, 5) {
                    return Some((yi, router));
                }
            }
        }
    }
}

/// One TCP connection (no retransmission: the peers here are local and lossless).
struct Tcp {
    mac: [u8; 6],
    remote: [u8; 4],
    rport: u16,
    lport: u16,
    snd_nxt: u32,
    rcv_nxt: u32,
}

impl Tcp {
    fn send(&mut self, nic: &mut Nic, flags: u8, data: &[u8]) {
        let mut s = [0u8; 1480];
        s[0..2].copy_from_slice(&self.lport.to_be_bytes());
        s[2..4].copy_from_slice(&self.rport.to_be_bytes());
        s[4..8].copy_from_slice(&self.snd_nxt.to_be_bytes());
        s[8..12].copy_from_slice(&self.rcv_nxt.to_be_bytes());
        s[13] = flags;
        // As much as the receive ring holds, in full-size segments: a SYN says MSS 1460
        // (without it the peer would send 536-byte segments, more than the ring has slots).
        s[14..16].copy_from_slice(&((NRX - 1) * 1460).to_be_bytes());
        let hl = if flags & TCP_SYN != 0 {
            s[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
            24
        } else {
            20
        };
        s[12] = ((hl / 4) as u8) << 4;
        s[hl..hl + data.len()].copy_from_slice(data);
        let n = hl + data.len();
        let ip = nic.ip;
        nic.l4(self.mac, self.remote, ip, 6, &mut s[..n], 16);
        self.snd_nxt = self
            .snd_nxt
            .wrapping_add(data.len() as u32 + u32::from(flags & (TCP_SYN | TCP_FIN) != 0));
    }

    /// (flags, seq, ack, window) of `p` if it belongs to this connection.
    fn accepts(&self, p: &Packet) -> Option<(u8, u32, u32, u16)> {
        if p.proto != 6 || p.src != self.remote || p.len < 20 {
            return None;
        }
        let sp = u16::from_be_bytes([p.data[0], p.data[1]]);
        let dp = u16::from_be_bytes([p.data[2], p.data[3]]);
        if dp != self.lport || (self.rport != 0 && sp != self.rport) {
            return None;
        }
        let word = |i: usize| u32::from_be_bytes(p.data[i..i + 4].try_into().unwrap_or([0; 4]));
        let win = u16::from_be_bytes([p.data[14], p.data[15]]);
        Some((p.data[13], word(4), word(8), win))
    }

    /// The next segment of this connection: (flags, seq, the payload's start, the
    /// payload's length).
    fn recv(&self, nic: &mut Nic, ms: u64) -> Option<(u8, u32, [u8; 1460], usize)> {
        let d = Deadline::after_ms(ms);
        while !d.expired() {
            let Some(p) = nic.poll(50.min(ms)) else {
                continue;
            };
            let Some((flags, seq, _, _)) = self.accepts(&p) else {
                continue;
            };
            let off = usize::from(p.data[12] >> 4) * 4;
            let mut body = [0u8; 1460];
            let k = p.len.saturating_sub(off).min(1460);
            body[..k].copy_from_slice(&p.data[off..off + k]);
            return Some((flags, seq, body, p.full.saturating_sub(off)));
        }
        None
    }

    /// Wait for a SYN to `lport` from anyone and answer it: the connection, half open.
    fn accept(nic: &mut Nic, lport: u16, d: &Deadline) -> Option<Tcp> {
        let mut c = Tcp {
            mac: [0; 6],
            remote: [0; 4],
            rport: 0,
            lport,
            snd_nxt: 0x2000,
            rcv_nxt: 0,
        };
        loop {
            if d.expired() {
                return None;
            }
            let Some(p) = nic.poll(100) else { continue };
            if p.proto == 6
                && p.len >= 20
                && u16::from_be_bytes([p.data[2], p.data[3]]) == lport
                && p.data[13] & TCP_SYN != 0
            {
                c.mac = p.src_mac;
                c.remote = p.src;
                c.rport = u16::from_be_bytes([p.data[0], p.data[1]]);
                c.rcv_nxt =
                    u32::from_be_bytes(p.data[4..8].try_into().unwrap_or([0; 4])).wrapping_add(1);
                break;
            }
        }
        c.send(nic, TCP_SYN | TCP_ACK, &[]);
        Some(c)
    }
}

/// `line`: stop at the first full line instead of waiting for the server to close.
fn tcp_client(nic: &mut Nic, mac: [u8; 6], to: &str, line: bool, d: &Deadline) -> bool {
    let Some((ip, port)) = to.split_once(':') else {
        return false;
    };
    let (Some(remote), Ok(rport)) = (parse_ip(ip), port.parse::<u16>()) else {
        return false;
    };
    let mut c = Tcp {
        mac,
        remote,
        rport,
        lport: 40000 + (now_ns() % 20000) as u16,
        snd_nxt: 0x1000,
        rcv_nxt: 0,
    };
    c.send(nic, TCP_SYN, &[]);
    match c.recv(nic, 3000) {
        Some((f, seq, _, _)) if f & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => {
            c.rcv_nxt = seq.wrapping_add(1);
        }
        _ => {
            println!("vnet: tcp connect failed");
            return false;
        }
    }
    c.send(nic, TCP_ACK | TCP_PSH, b"hello from guest\n");
    let mut got = [0u8; 512];
    let mut n = 0;
    while !d.expired() {
        let Some((f, seq, body, k)) = c.recv(nic, 1000) else {
            continue;
        };
        if seq == c.rcv_nxt && k > 0 {
            let k2 = k.min(got.len() - n);
            got[n..n + k2].copy_from_slice(&body[..k2]);
            n += k2;
            c.rcv_nxt = c.rcv_nxt.wrapping_add(k as u32);
            c.send(nic, TCP_ACK, &[]);
            if line && got[..n].contains(&b'\n') {
                let text = core::str::from_utf8(&got[..n]).unwrap_or("?");
                println!("vnet: tcp got '{}'", text.trim_end());
                c.send(nic, TCP_ACK | TCP_FIN, &[]);
                return true;
            }
        }
        if f & TCP_FIN != 0 {
            c.rcv_nxt = c.rcv_nxt.wrapping_add(1);
            c.send(nic, TCP_ACK | TCP_FIN, &[]);
            let text = core::str::from_utf8(&got[..n]).unwrap_or("?");
            println!("vnet: tcp got '{}'", text.trim_end());
            return true;
        }
    }
    false
}

fn tcp_server(nic: &mut Nic, lport: u16, d: &Deadline) -> bool {
    let Some(mut c) = Tcp::accept(nic, lport, d) else {
        return false;
    };
    let mut line = [0u8; 256];
    let mut n = 0;
    while !d.expired() {
        let Some((_, seq, body, k)) = c.recv(nic, 1000) else {
            continue;
        };
        if seq != c.rcv_nxt || k == 0 {
            continue;
        }
        let k2 = k.min(line.len() - n);
        line[n..n + k2].copy_from_slice(&body[..k2]);
        n += k2;
        c.rcv_nxt = c.rcv_nxt.wrapping_add(k as u32);
        if line[..n].contains(&b'\n') {
            let text = core::str::from_utf8(&line[..n]).unwrap_or("?").trim_end();
            let mut out = [0u8; 300];
            out[..6].copy_from_slice(b"echo: ");
            out[6..6 + text.len()].copy_from_slice(text.as_bytes());
            out[6 + text.len()] = b'\n';
            c.send(nic, TCP_ACK | TCP_PSH, &out[..7 + text.len()]);
            c.send(nic, TCP_ACK | TCP_FIN, &[]);
            println!("vnet: served '{text}'");
            // Take the peer's FIN and acknowledge it.
            if let Some((f, _, _, _)) = c.recv(nic, 2000) {
                if f & TCP_FIN != 0 {
                    c.rcv_nxt = c.rcv_nxt.wrapping_add(1);
                    c.send(nic, TCP_ACK, &[]);
                }
            }
            return true;
        }
    }
    false
}

/// The virtio-net device set up for the stack (or the exit code when the run ends here:
/// no device, a failed step, or the `rxfilter` check done).
fn open_virtio(boot: &BootInfo, d: &Deadline) -> Result<(Port, [u8; 6]), u32> {
    let Some(mut v) = Virtio::find(&[0x1000, 0x1041], boot.arg("legacy").is_some()) else {
        println!("vnet: no virtio-net");
        return Err(2);
    };
    if boot.arg("mq").is_some() {
        return Err(multiqueue(&mut v, boot, d));
    }
    let rxfilter = boot.arg("rxfilter").is_some();
    let announce = boot.arg("announce").is_some();
    let offload = boot.arg("offload").is_some();
    let mrg = if boot.arg("mrg").is_some() {
        F_MRG_RXBUF
    } else if offload {
        // Segments the host leaves whole span several buffers.
        F_MRG_RXBUF | OFFLOADS
    } else {
        0
    };
    let (want, queues) = if rxfilter {
        (
            VERSION_1 | F_MAC | F_STATUS | F_CTRL_VQ | F_CTRL_RX | F_CTRL_MAC_ADDR,
            3,
        )
    } else if announce {
        (
            VERSION_1 | F_MAC | F_STATUS | F_CTRL_VQ | F_GUEST_ANNOUNCE,
            3,
        )
    } else {
        (VERSION_1 | F_MAC | F_STATUS, 2)
    };
    let feats = match v.init_queues(want | mrg, 64, queues) {
        Ok(f) => f,
        Err(e) => {
            println!("vnet: init: {e}");
            return Err(1);
        }
    };
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = v.config8(i as u64);
    }
    let link = v.config8(6) & 1 != 0;
    print_mac("vnet: mac", mac, link);
    let hdr = if feats & (VERSION_1 | F_MRG_RXBUF) != 0 {
        12
    } else {
        10
    };
    let mrg = feats & F_MRG_RXBUF != 0;
    if boot.arg("mrg").is_some() && !mrg {
        println!("vnet: MRG_RXBUF not offered");
        return Err(1);
    }
    if offload && feats & (OFFLOADS | F_MRG_RXBUF) != OFFLOADS | F_MRG_RXBUF {
        println!("vnet: offloads not offered ({feats:#x})");
        return Err(1);
    }
    post_rx(
        &mut v,
        if offload {
            BUF as u32
        } else if mrg {
            MRG_BUF
        } else {
            BUF as u32
        },
    );
    if let Some(kind) = boot.arg("fault") {
        if !tx_fault(&mut v, kind, hdr, want, queues) {
            return Err(1);
        }
    }
    if rxfilter {
        return Err(rx_filter(&mut v, hdr, feats, d));
    }
    if announce {
        return Err(watch_announce(&mut v, feats, d));
    }
    Ok((
        Port::Virtio {
            v,
            hdr,
            mrg,
            merged: 0,
            offload: offload.then(Offload::default),
        },
        mac,
    ))
}

fn print_mac(what: &str, m: [u8; 6], link: bool) {
    println!(
        "{what} {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} link {}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        if link { "up" } else { "down" }
    );
}

pub fn run(boot: &BootInfo) -> u32 {
    let d = Deadline::after_ms(boot.arg_u64("wait").unwrap_or(30) * 1000);
    let opened = if boot.arg("nic") == Some("e1000") {
        match E1000::open(boot.arg("eeprom") == Some("microwire")) {
            Some(e) => {
                print_mac("vnet: e1000 mac", e.mac, e.link_up());
                let mac = e.mac;
                Ok((Port::E1000(e), mac))
            }
            None => {
                println!("vnet: no e1000");
                Err(2)
            }
        }
    } else {
        open_virtio(boot, &d)
    };
    let (port, mac) = match opened {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut nic = Nic {
        port,
        mac,
        ip: boot.arg("ip").and_then(parse_ip).unwrap_or([10, 9, 0, 2]),
        answered: 0,
        seen: [([0; 4], 0, 0); 64],
        arp_seen: None,
    };
    if boot.arg("stall").is_some() {
        // A guest that stops taking frames: the device must drop and count, not queue.
        println!("vnet: stalled, not reading");
        while !d.expired() {
            core::hint::spin_loop();
        }
        return 0;
    }
    let mut peer = boot.arg("peer").and_then(parse_ip).unwrap_or([10, 9, 0, 1]);
    if boot.arg("dhcp").is_some() {
        let Some((ip, router)) = dhcp(&mut nic, &d) else {
            println!("vnet: no dhcp lease");
            return 1;
        };
        nic.ip = ip;
        if boot.arg("peer").is_none() {
            peer = router;
        }
        println!(
            "vnet: dhcp lease {}.{}.{}.{} router {}.{}.{}.{}",
            ip[0], ip[1], ip[2], ip[3], router[0], router[1], router[2], router[3]
        );
    }
    let Some(peer_mac) = nic.resolve(peer, &d) else {
        println!("vnet: peer does not answer ARP");
        return 1;
    };
    let count = boot.arg_u64("count").unwrap_or(3) as u16;
    for seq in 1..=count {
        let mut ok = false;
        let mut t0 = 0;
        for _ in 0..10 {
            t0 = now_ns();
            nic.icmp(peer_mac, peer, 8, 0x7472, seq, b"troupe ping");
            if let Some(p) = nic.poll(300) {
                if p.proto == 1
                    && p.src == peer
                    && p.data[0] == 0
                    && p.data[6..8] == seq.to_be_bytes()
                {
                    ok = true;
                    break;
                }
            }
        }
        if !ok {
            println!("vnet: no reply for seq={seq}");
            return 1;
        }
        println!(
            "vnet: reply from {}.{}.{}.{} seq={seq} rtt_ns={}",
            peer[0],
            peer[1],
            peer[2],
            peer[3],
            now_ns() - t0
        );
    }
    if boot.arg("ping6").is_some() {
        let to = boot.arg("ping6").filter(|a| !a.is_empty());
        if !v6::ping6(&mut nic, to, 3, &d) {
            return 1;
        }
    }
    if let Some(n) = boot.arg_u64("flood") {
        if !flood(&mut nic, peer_mac, n) {
            return 1;
        }
    }
    if let Some(to) = boot.arg("tcp") {
        if !tcp_client(&mut nic, peer_mac, to, boot.arg("line").is_some(), &d) {
            return 1;
        }
    }
    if let Some(to) = boot.arg("tcpsend") {
        if !bulk::send(&mut nic, peer_mac, to, boot.arg_u64("mb").unwrap_or(16), &d) {
            return 1;
        }
    }
    if let Some(port) = boot.arg_u64("tcprecv") {
        println!("vnet: receiving on {port}");
        if !bulk::receive(&mut nic, port as u16, &d) {
            return 1;
        }
    }
    if let Some(port) = boot.arg_u64("listen") {
        println!("vnet: listening on {port}");
        if !tcp_server(&mut nic, port as u16, &d) {
            println!("vnet: nobody connected");
            return 1;
        }
    }
    let answer = boot.arg_u64("answer").unwrap_or(0);
    while nic.answered < answer {
        if d.expired() {
            println!("vnet: timeout, answered {} echo requests", nic.answered);
            return 1;
        }
        let _ = nic.poll(100);
    }
    if boot.arg("linkwatch").is_some() && !linkwatch(&mut nic, peer, peer_mac, &d) {
        return 1;
    }
    if let Port::Virtio {
        mrg: true,
        merged,
        offload,
        ..
    } = nic.port
    {
        println!("vnet: {merged} frames arrived in several buffers");
        if let Some(o) = offload {
            println!(
                "vnet: offload: sent {} tso segments, received {} gso frames, {} with partial checksums",
                o.tso_out, o.gso_in, o.partial_in
            );
        }
    }
    println!("vnet: done, answered {} echo requests", nic.answered);
    0
}

/// `flood=N`: N minimum-size frames (60 bytes, ethertype 0x88b5, to the peer) handed to the
/// device FLOOD_BATCH at a time with one notification, as a driver with a full queue does
/// (`vnet: flood sent N frames in T ns`, from the first notification to the last frame
/// returned). Every descriptor points at the same frame.
fn flood(nic: &mut Nic, peer: [u8; 6], n: u64) -> bool {
    const FLOOD_BATCH: u16 = 32;
    let (mac, Port::Virtio { v, hdr, .. }) = (nic.mac, &mut nic.port) else {
        println!("vnet: flood needs virtio-net");
        return false;
    };
    let mut f = [0u8; 12 + 60];
    let h = *hdr;
    if h == 12 {
        f[10] = 1;
    }
    f[h..h + 6].copy_from_slice(&peer);
    f[h + 6..h + 12].copy_from_slice(&mac);
    f[h + 12..h + 14].copy_from_slice(&ETH_PROBE.to_be_bytes());
    f[h + 14..h + 20].copy_from_slice(b"flood!");
    copy_to(TXB, &f[..h + 60]);
    v.select(1);
    for i in 0..FLOOD_BATCH {
        v.set_desc(i, TXB, (h + 60) as u32, 0, 0);
    }
    let t0 = now_ns();
    let mut sent = 0;
    while sent < n {
        let batch = (n - sent).min(u64::from(FLOOD_BATCH)) as u16;
        for i in 0..batch {
            v.offer_quietly(i);
        }
        v.kick();
        for _ in 0..batch {
            if v.wait_used(2000).is_none() {
                println!("vnet: flood stalled after {sent} frames");
                v.select(0);
                return false;
            }
        }
        sent += u64::from(batch);
    }
    let ns = now_ns() - t0;
    v.select(0);
    println!("vnet: flood sent {n} frames in {ns} ns");
    true
}

/// `mq`: negotiate MQ, read the number of queue pairs from the configuration space
/// (`vnet: mq pairs N`), turn them all on with VQ_PAIRS_SET and serve every pair: each
/// receive queue counts the IPv4 UDP datagrams for `ip=` it gets, and the first on each
/// pair is answered from that pair's transmit queue with `mq pair I` to port 7000 of the
/// sender. Ends when every pair has had one (`vnet: mq rx [A, B, ...]`, exit 0), or at
/// `wait=` (exit 1).
fn multiqueue(v: &mut Virtio, boot: &BootInfo, d: &Deadline) -> u32 {
    let pairs = u16::from_le_bytes([v.config8(8), v.config8(9)]).clamp(1, 3) as usize;
    let want = VERSION_1 | F_MAC | F_STATUS | F_CTRL_VQ | F_MQ;
    let feats = match v.init_queues(want, 64, 2 * pairs + 1) {
        Ok(f) => f,
        Err(e) => {
            println!("vnet: init: {e}");
            return 1;
        }
    };
    if feats & F_MQ == 0 {
        println!("vnet: MQ not offered");
        return 1;
    }
    println!("vnet: mq pairs {pairs}");
    if control_at(v, 2 * pairs, 4, 0, &(pairs as u16).to_le_bytes()) != Some(0) {
        println!("vnet: VQ_PAIRS_SET refused");
        return 1;
    }
    let ip = boot.arg("ip").and_then(parse_ip).unwrap_or([10, 9, 0, 2]);
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = v.config8(i as u64);
    }
    let buf = |pair: usize, i: u16| RXB + BUF * (pair as u64 * u64::from(NRX) + u64::from(i));
    for pair in 0..pairs {
        v.select(2 * pair);
        for i in 0..NRX {
            v.set_desc(i, buf(pair, i), BUF as u32, F_WRITE, 0);
            v.offer_quietly(i);
        }
        v.kick();
    }
    let mut got = [0u64; 3];
    let mut answered = [false; 3];
    while !d.expired() {
        for pair in 0..pairs {
            v.select(2 * pair);
            let Some((head, len)) = v.wait_used(0) else {
                continue;
            };
            let at = buf(pair, head) + 12;
            let mut f = [0u8; 64];
            for (i, b) in f
                .iter_mut()
                .enumerate()
                .take((len as usize).saturating_sub(12))
            {
                *b = read_u8(at + i as u64);
            }
            v.offer(head);
            let udp_to_us = f[12..14] == ETH_IP.to_be_bytes() && f[23] == 17 && f[30..34] == ip;
            if !udp_to_us {
                continue;
            }
            got[pair] += 1;
            if !answered[pair] {
                answered[pair] = true;
                // The answer: the sender's addresses swapped, UDP checksum 0 (none).
                let mut r = [0u8; 12 + 42 + 9];
                let e = &mut r[12..];
                e[..6].copy_from_slice(&f[6..12]);
                e[6..12].copy_from_slice(&mac);
                e[12..14].copy_from_slice(&ETH_IP.to_be_bytes());
                e[14] = 0x45;
                e[16..18].copy_from_slice(&(20u16 + 8 + 9).to_be_bytes());
                e[22] = 64;
                e[23] = 17;
                e[26..30].copy_from_slice(&ip);
                e[30..34].copy_from_slice(&f[26..30]);
                let c = fold(sum(&e[14..34], 0));
                e[24..26].copy_from_slice(&c.to_be_bytes());
                e[34..36].copy_from_slice(&f[36..38]);
                e[36..38].copy_from_slice(&7000u16.to_be_bytes());
                e[38..40].copy_from_slice(&(8u16 + 9).to_be_bytes());
                e[42..50].copy_from_slice(b"mq pair ");
                e[50] = b'0' + pair as u8;
                let tx = TXB + 0x1000 * pair as u64;
                copy_to(tx, &r);
                v.select(2 * pair + 1);
                v.set_desc(0, tx, r.len() as u32, 0, 0);
                v.offer(0);
                let _ = v.wait_used(2000);
            }
        }
        if answered[..pairs].iter().all(|a| *a) {
            println!("vnet: mq rx {:?}", &got[..pairs]);
            return 0;
        }
    }
    println!("vnet: mq: not every pair received (rx {:?})", &got[..pairs]);
    1
}

/// Offer the receive buffers, of `len` bytes, on queue 0.
fn post_rx(v: &mut Virtio, len: u32) {
    for i in 0..NRX {
        v.set_desc(i, RXB + BUF * u64::from(i), len, F_WRITE, 0);
        v.offer_quietly(i);
    }
    v.kick();
}

/// `fault=big`: transmit a 70 000-byte frame (more than any frame can be); the device must
/// return the chain and go on working (`vnet: oversized frame returned`).
/// `fault=loop`: offer a transmit chain whose descriptors loop; the device must set
/// NEEDS_RESET, and work again after a reset (`vnet: recovered after reset`).
fn tx_fault(v: &mut Virtio, kind: &str, hdr: usize, want: u64, queues: usize) -> bool {
    use crate::transport::{F_NEXT, NEEDS_RESET};
    v.select(1);
    let big = TXB + 0x1000;
    match kind {
        "big" => {
            copy_to(TXB, &[0u8; 12][..hdr]);
            let mut frame = [0u8; 64];
            frame[..6].copy_from_slice(&[0xff; 6]);
            frame[12..14].copy_from_slice(&ETH_PROBE.to_be_bytes());
            copy_to(big, &frame);
            v.set_desc(0, TXB, hdr as u32, F_NEXT, 1);
            v.set_desc(1, big, 70_000, 0, 0);
            v.offer(0);
            let ok = v.wait_used(2000).is_some();
            v.select(0);
            println!(
                "vnet: oversized frame {}",
                if ok { "returned" } else { "never returned" }
            );
            ok
        }
        _ => {
            v.set_desc(0, TXB, hdr as u32, F_NEXT, 1);
            v.set_desc(1, big, 64, F_NEXT, 0);
            v.offer(0);
            let d = Deadline::after_ms(3000);
            while v.status() & NEEDS_RESET == 0 {
                if d.expired() {
                    println!("vnet: no NEEDS_RESET after a looping chain");
                    return false;
                }
                core::hint::spin_loop();
            }
            println!("vnet: device needs reset (status={:#x})", v.status());
            if v.init_queues(want, 64, queues).is_err() {
                return false;
            }
            post_rx(v, BUF as u32);
            println!("vnet: recovered after reset");
            true
        }
    }
}

/// One control-queue command; returns the device's ack byte (0 OK, 1 error).
fn control(v: &mut Virtio, class: u8, cmd: u8, data: &[u8]) -> Option<u8> {
    control_at(v, 2, class, cmd, data)
}

/// A control command on control queue `q`: the device's ack byte.
fn control_at(v: &mut Virtio, q: usize, class: u8, cmd: u8, data: &[u8]) -> Option<u8> {
    let mut b = [0u8; 64];
    b[0] = class;
    b[1] = cmd;
    b[2..2 + data.len()].copy_from_slice(data);
    copy_to(CTRLB, &b[..2 + data.len()]);
    let ack = CTRLB + 0x100;
    copy_to(ack, &[0xff]);
    v.select(q);
    v.set_desc(0, CTRLB, 2 + data.len() as u32, crate::transport::F_NEXT, 1);
    v.set_desc(1, ack, 1, F_WRITE, 0);
    v.offer(0);
    let done = v.wait_used(2000);
    v.select(0);
    done.map(|_| read_u8(ack))
}

/// `rxfilter`: through the control queue, leave promiscuous mode, put 02:00:00:00:00:aa
/// in the unicast MAC table, change the NIC's own address to 52:54:00:ab:cd:ef, and try a
/// command the device does not know (`vnet: rx filter acks A B C D`). Then print the
/// payload of every probe frame (ethertype 0x88b5) that arrives (`vnet: probe 'TEXT'`)
/// until one says `end`.
fn rx_filter(v: &mut Virtio, hdr: usize, feats: u64, d: &Deadline) -> u32 {
    let need = F_CTRL_VQ | F_CTRL_RX | F_CTRL_MAC_ADDR;
    if feats & need != need {
        println!("vnet: control queue features not offered ({feats:#x})");
        return 1;
    }
    let promisc_off = control(v, 0, 0, &[0]);
    let mut table = [0u8; 4 + 6 + 4];
    table[..4].copy_from_slice(&1u32.to_le_bytes());
    table[4..10].copy_from_slice(&[2, 0, 0, 0, 0, 0xaa]);
    let table_set = control(v, 1, 0, &table);
    let addr_set = control(v, 1, 1, &[0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
    let unknown = control(v, 0, 9, &[1]);
    let ack = |a: Option<u8>| a.map_or(255, u32::from);
    println!(
        "vnet: rx filter acks {} {} {} {}",
        ack(promisc_off),
        ack(table_set),
        ack(addr_set),
        ack(unknown)
    );
    let mut m = [0u8; 6];
    for (i, b) in m.iter_mut().enumerate() {
        *b = v.config8(i as u64);
    }
    println!(
        "vnet: mac now {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    while !d.expired() {
        let Some((head, len)) = v.wait_used(50) else {
            continue;
        };
        let at = RXB + BUF * u64::from(head) + hdr as u64;
        let n = (len as usize).saturating_sub(hdr).min(80);
        let mut f = [0u8; 80];
        for (i, b) in f[..n].iter_mut().enumerate() {
            *b = read_u8(at + i as u64);
        }
        v.offer(head);
        if n < 14 || u16::from_be_bytes([f[12], f[13]]) != ETH_PROBE {
            continue;
        }
        let text = &f[14..n];
        let text = &text[..text.iter().position(|c| *c == 0).unwrap_or(text.len())];
        let text = core::str::from_utf8(text).unwrap_or("?");
        println!("vnet: probe '{text}'");
        if text == "end" {
            return 0;
        }
    }
    println!("vnet: no end probe");
    1
}

/// `announce`: with GUEST_ANNOUNCE, wait for the device to set the ANNOUNCE status bit
/// (`vnet: announce requested`), acknowledge it on the control queue and see the bit
/// clear (`vnet: announce acknowledged`).
fn watch_announce(v: &mut Virtio, feats: u64, d: &Deadline) -> u32 {
    if feats & (F_CTRL_VQ | F_GUEST_ANNOUNCE) != F_CTRL_VQ | F_GUEST_ANNOUNCE {
        println!("vnet: GUEST_ANNOUNCE not offered");
        return 1;
    }
    println!("vnet: waiting for an announce request");
    while v.config8(6) & 2 == 0 {
        if d.expired() {
            println!("vnet: no announce request");
            return 1;
        }
        core::hint::spin_loop();
    }
    println!("vnet: announce requested");
    let ack = control(v, 3, 0, &[]);
    if ack != Some(0) || v.config8(6) & 2 != 0 {
        println!("vnet: announce ack {ack:?}, status {:#x}", v.config8(6));
        return 1;
    }
    println!("vnet: announce acknowledged");
    // Stay up a moment: the later rounds go out while the VM runs.
    let t = Deadline::after_ms(1500);
    while !t.expired() {
        core::hint::spin_loop();
    }
    0
}

fn ping_once(nic: &mut Nic, mac: [u8; 6], peer: [u8; 4], seq: u16, ms: u64) -> bool {
    nic.icmp(mac, peer, 8, 0x7472, seq, b"troupe ping");
    let d = Deadline::after_ms(ms);
    while !d.expired() {
        if let Some(p) = nic.poll(50) {
            if p.proto == 1 && p.src == peer && p.data[0] == 0 && p.data[6..8] == seq.to_be_bytes()
            {
                return true;
            }
        }
    }
    false
}

fn linkwatch(nic: &mut Nic, peer: [u8; 4], mac: [u8; 6], d: &Deadline) -> bool {
    println!("vnet: watching the link");
    while nic.port.link_up() {
        if d.expired() {
            return false;
        }
        let _ = nic.poll(20);
    }
    println!("vnet: link down");
    if ping_once(nic, mac, peer, 100, 1000) {
        println!("vnet: a reply came while the link was down");
        return false;
    }
    println!("vnet: no reply while link down");
    while !nic.port.link_up() {
        if d.expired() {
            return false;
        }
        let _ = nic.poll(20);
    }
    println!("vnet: link up");
    for seq in 101..111 {
        if ping_once(nic, mac, peer, seq, 500) {
            println!("vnet: reply after link up");
            return true;
        }
    }
    false
}
