//! Bulk TCP for the throughput measurements: `tcpsend=IP:PORT mb=N` sends N MiB to a
//! server (go-back-N within the peer's window, resending from the first unacknowledged
//! byte after 200 ms without progress) and prints `vnet: tcp sent B bytes in T ns`;
//! `tcprecv=PORT` accepts one connection, takes everything in order until the peer's FIN
//! (acknowledging each segment; out-of-order segments are dropped and re-acknowledged) and
//! prints `vnet: tcp received B bytes in T ns`. Time runs from the first data segment to
//! the last acknowledgement (sending) or the FIN (receiving).

use guestlib::println;
use guestlib::time::{now_ns, Deadline};

use super::{parse_ip, Nic, Tcp, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN};

const MSS: usize = 1460;

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
            let n = MSS.min(total - nxt);
            for (i, b) in seg[..n].iter_mut().enumerate() {
                *b = byte(nxt + i);
            }
            c.snd_nxt = iss.wrapping_add(1).wrapping_add(nxt as u32);
            c.send(nic, TCP_ACK | TCP_PSH, &seg[..n]);
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
