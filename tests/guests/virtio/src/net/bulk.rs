//! Bulk TCP for the throughput measurements: `tcpsend=IP:PORT mb=N` sends N MiB to a
//! server (go-back-N within the peer's window, resending from the first unacknowledged
//! byte after 200 ms without progress) and prints `vnet: tcp sent B bytes in T ns`;
//! `tcprecv=PORT` accepts one connection, takes everything in order until the peer's FIN
//! (acknowledging each segment; out-of-order segments are dropped and re-acknowledged) and
//! prints `vnet: tcp received B bytes in T ns`. Time runs from the first data segment to
//! the last acknowledgement (sending) or the FIN (receiving). With `offload` negotiated,
//! the sender hands the device segments of up to [`TSO_MAX`] bytes for the host to cut
//! (TSO) and checksum; without it, the received data is checked against the pattern.

use guestlib::phys::copy_to;
use guestlib::println;
use guestlib::time::{now_ns, Deadline};

use super::{fold, parse_ip, sum, Nic, Port, Tcp, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, TXB};

const MSS: usize = 1460;
/// The largest segment handed to the device with TSO.
const TSO_MAX: usize = 16 * MSS;

/// The sender's payload byte at stream offset `o`.
fn byte(o: usize) -> u8 {
    (o % 251) as u8
}

pub fn send(nic: &mut Nic, mac: [u8; 6], to: &str, mb: u64, d: &Deadline) -> bool {
    let Some((ip, port)) = to.split_once(':') else {
        return false;
    };
    let (Some(remote), Ok(rport)) = (parse_ip(ip), port.parse::<u16>()) else {
        return false;
    };
    let iss: u32 = 0x10_0000;
    let mut c = Tcp {
        mac,
        remote,
        rport,
        lport: 41000 + (now_ns() % 20000) as u16,
        snd_nxt: iss,
        rcv_nxt: 0,
    };
    c.send(nic, TCP_SYN, &[]);
    let t = Deadline::after_ms(3000);
    let mut syn_ack = None;
    while syn_ack.is_none() && !t.expired() {
        if let Some(p) = nic.poll(50) {
            match c.accepts(&p) {
                Some((f, seq, _, w)) if f & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => {
                    c.rcv_nxt = seq.wrapping_add(1);
                    syn_ack = Some(w);
                }
                _ => {}
            }
        }
    }
    let Some(mut win) = syn_ack else {
        println!("vnet: tcp connect failed");
        return false;
    };
    c.send(nic, TCP_ACK, &[]);
    let total = (mb as usize) << 20;
    let tso = matches!(
        nic.port,
        Port::Virtio {
            offload: Some(_),
            ..
        }
    );
    let most = if tso { TSO_MAX } else { MSS };
    let (mut una, mut nxt) = (0usize, 0usize);
    let mut seg = [0u8; MSS];
    let t0 = now_ns();
    let mut progress = t0;
    while una < total {
        if d.expired() {
            println!("vnet: tcp send stalled at {una} of {total} bytes");
            return false;
        }
        // Fill the window.
        while nxt < total && nxt - una + MSS <= usize::from(win).max(MSS) {
            let room = (usize::from(win).max(MSS) - (nxt - una)) / MSS * MSS;
            let n = most.min(room).min(total - nxt);
            c.snd_nxt = iss.wrapping_add(1).wrapping_add(nxt as u32);
            if tso {
                send_tso(nic, &c, nxt, n);
            } else {
                for (i, b) in seg[..n].iter_mut().enumerate() {
                    *b = byte(nxt + i);
                }
                c.send(nic, TCP_ACK | TCP_PSH, &seg[..n]);
            }
            nxt += n;
        }
        // Take acknowledgements.
        let mut got = false;
        while let Some(p) = nic.poll(if got { 0 } else { 1 }) {
            let Some((flags, _, ack, w)) = c.accepts(&p) else {
                continue;
            };
            got = true;
            if flags & TCP_ACK != 0 {
                let acked = ack.wrapping_sub(iss.wrapping_add(1)) as usize;
                if acked > una && acked <= nxt {
                    una = acked;
                    progress = now_ns();
                }
                win = w;
            }
        }
        if now_ns() - progress > 200_000_000 {
            nxt = una;
            progress = now_ns();
        }
    }
    let ns = now_ns() - t0;
    c.snd_nxt = iss.wrapping_add(1).wrapping_add(total as u32);
    c.send(nic, TCP_ACK | TCP_FIN, &[]);
    println!("vnet: tcp sent {total} bytes in {ns} ns");
    // The peer's FIN, acknowledged (best effort: the measurement is done).
    let t = Deadline::after_ms(2000);
    while !t.expired() {
        if let Some((f, seq, _, k)) = c.recv(nic, 100) {
            if f & TCP_FIN != 0 {
                c.rcv_nxt = seq.wrapping_add(k as u32).wrapping_add(1);
                c.send(nic, TCP_ACK, &[]);
                break;
            }
        }
    }
    true
}

/// One TCP segment of `n` payload bytes (stream offset `at`, `c.snd_nxt` its sequence
/// number) written straight to the transmit buffer behind a virtio-net header asking the
/// host to finish the checksum (NEEDS_CSUM, the pseudo-header sum in place) and, past one
/// MSS, to cut it into MSS-sized segments (GSO TCPV4).
fn send_tso(nic: &mut Nic, c: &Tcp, at: usize, n: usize) {
    const VNET: usize = 12;
    let mut h = [0u8; VNET + 14 + 20 + 20];
    h[0] = 1; // NEEDS_CSUM
    h[1] = u8::from(n > MSS); // GSO_TCPV4
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&(MSS as u16).to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    let (eth, rest) = h[VNET..].split_at_mut(14);
    eth[..6].copy_from_slice(&c.mac);
    eth[6..12].copy_from_slice(&nic.mac);
    eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let (ip, tcp) = rest.split_at_mut(20);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((40 + n) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&nic.ip);
    ip[16..20].copy_from_slice(&c.remote);
    let ipsum = fold(sum(ip, 0));
    ip[10..12].copy_from_slice(&ipsum.to_be_bytes());
    tcp[0..2].copy_from_slice(&c.lport.to_be_bytes());
    tcp[2..4].copy_from_slice(&c.rport.to_be_bytes());
    tcp[4..8].copy_from_slice(&c.snd_nxt.to_be_bytes());
    tcp[8..12].copy_from_slice(&c.rcv_nxt.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_ACK | TCP_PSH;
    tcp[14..16].copy_from_slice(&((super::NRX - 1) * 1460).to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&nic.ip);
    pseudo[4..8].copy_from_slice(&c.remote);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&((20 + n) as u16).to_be_bytes());
    // The pseudo-header sum, not complemented: the host adds the rest.
    let partial = !fold(sum(&pseudo, 0));
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    copy_to(TXB, &h);
    let mut chunk = [0u8; MSS];
    for off in (0..n).step_by(MSS) {
        let k = MSS.min(n - off);
        for (i, b) in chunk[..k].iter_mut().enumerate() {
            *b = byte(at + off + i);
        }
        copy_to(TXB + (h.len() + off) as u64, &chunk[..k]);
    }
    nic.port.send_prepared(h.len() + n);
    if let Port::Virtio {
        offload: Some(o), ..
    } = &mut nic.port
    {
        o.tso_out += u64::from(n > MSS);
    }
}

pub fn receive(nic: &mut Nic, lport: u16, d: &Deadline) -> bool {
    let Some(mut c) = Tcp::accept(nic, lport, d) else {
        println!("vnet: nobody connected");
        return false;
    };
    let (mut bytes, mut t0) = (0u64, None);
    while !d.expired() {
        let Some((f, seq, _, k)) = c.recv(nic, 100) else {
            continue;
        };
        if seq == c.rcv_nxt && k > 0 {
            t0.get_or_insert_with(now_ns);
            bytes += k as u64;
            c.rcv_nxt = c.rcv_nxt.wrapping_add(k as u32);
        }
        if f & TCP_FIN != 0 && seq.wrapping_add(k as u32) == c.rcv_nxt {
            let ns = now_ns() - t0.unwrap_or_else(now_ns);
            c.rcv_nxt = c.rcv_nxt.wrapping_add(1);
            c.send(nic, TCP_ACK | TCP_FIN, &[]);
            println!("vnet: tcp received {bytes} bytes in {ns} ns");
            return true;
        }
        c.send(nic, TCP_ACK, &[]);
    }
    println!("vnet: tcp receive timed out after {bytes} bytes");
    false
}
