use super::*;
use crate::memory::GuestMemoryMmap;
use crate::testing::FakeIrq;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const TX_RING: u64 = 0x1000;
const RX_RING: u64 = 0x2000;
const RX_BUFS: u64 = 0x10000;
const TX_BUF: u64 = 0x8000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn w(e: &mut E1000, m: &GuestMemoryMmap, off: usize, v: u32) -> Vec<Vec<u8>> {
    e.write(m, off as u64, &v.to_le_bytes())
}

fn r(e: &mut E1000, off: usize) -> u32 {
    let mut b = [0u8; 4];
    e.read(off as u64, &mut b);
    u32::from_le_bytes(b)
}

/// A NIC with 8 receive buffers of 2 KiB posted and an 8-entry transmit ring, enabled.
fn nic() -> (E1000, Arc<FakeIrq>, GuestMemoryMmap) {
    let irq = Arc::new(FakeIrq::default());
    let mut e = E1000::new(MAC, irq.clone());
    let m = mem();
    for i in 0..8u64 {
        m.write_obj(RX_BUFS + 2048 * i, GuestAddress(RX_RING + 16 * i))
            .unwrap();
    }
    w(&mut e, &m, reg::RDBAL, RX_RING as u32);
    w(&mut e, &m, reg::RDLEN, 8 * 16);
    w(&mut e, &m, reg::RDH, 0);
    w(&mut e, &m, reg::RDT, 7);
    w(&mut e, &m, reg::RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);
    w(&mut e, &m, reg::TDBAL, TX_RING as u32);
    w(&mut e, &m, reg::TDLEN, 8 * 16);
    w(&mut e, &m, reg::TCTL, TCTL_EN);
    w(&mut e, &m, reg::IMS, ICR_RXT0 | ICR_TXDW | ICR_LSC);
    (e, irq, m)
}

fn tx_desc(m: &GuestMemoryMmap, i: u64, addr: u64, len: u16, cmd: u8) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..10].copy_from_slice(&len.to_le_bytes());
    d[11] = cmd;
    m.write_slice(&d, GuestAddress(TX_RING + 16 * i)).unwrap();
}

#[test]
fn eeprom_gives_the_mac_and_a_valid_checksum_through_eerd() {
    let (mut e, _, m) = nic();
    let mut words = Vec::new();
    for a in 0..64u32 {
        w(&mut e, &m, reg::EERD, (a << 8) | EERD_START);
        let v = r(&mut e, reg::EERD);
        assert_ne!(v & EERD_DONE, 0);
        words.push((v >> 16) as u16);
    }
    assert_eq!(&words[..3], &[0x5452, 0x1200, 0x5634]);
    let sum = words.iter().fold(0u16, |a, x| a.wrapping_add(*x));
    assert_eq!(sum, 0xbaba);
    // The receive address register holds the MAC too, marked valid.
    assert_eq!(r(&mut e, reg::RA), 0x1200_5452);
    assert_eq!(r(&mut e, reg::RA + 4), 0x8000_5634);
}

#[test]
fn the_phy_answers_at_address_1_only() {
    let (mut e, _, m) = nic();
    w(&mut e, &m, reg::MDIC, (2 << 26) | (1 << 21) | (2 << 16));
    let v = r(&mut e, reg::MDIC);
    assert_eq!(v & 0xffff, 0x0141);
    assert_ne!(v & MDIC_READY, 0);
    w(&mut e, &m, reg::MDIC, (2 << 26) | (3 << 21) | (2 << 16));
    assert_ne!(r(&mut e, reg::MDIC) & MDIC_ERROR, 0);
}

#[test]
fn a_frame_in_two_buffers_is_sent_whole_and_the_descriptors_are_written_back() {
    let (mut e, irq, m) = nic();
    let frame: Vec<u8> = (0..100u8).collect();
    m.write_slice(&frame[..40], GuestAddress(TX_BUF)).unwrap();
    m.write_slice(&frame[40..], GuestAddress(TX_BUF + 0x100))
        .unwrap();
    tx_desc(&m, 0, TX_BUF, 40, 0);
    tx_desc(&m, 1, TX_BUF + 0x100, 60, TXD_EOP | TXD_RS);
    let out = w(&mut e, &m, reg::TDT, 2);
    assert_eq!(out, vec![frame]);
    assert_eq!(r(&mut e, reg::TDH), 2);
    let status: u8 = m.read_obj(GuestAddress(TX_RING + 16 + 12)).unwrap();
    assert_eq!(status & 1, 1, "DD on the RS descriptor");
    assert!(irq.is_high());
    assert_eq!(
        r(&mut e, reg::ICR) & (ICR_TXDW | ICR_TXQE),
        ICR_TXDW | ICR_TXQE
    );
    assert!(!irq.is_high(), "reading ICR clears it");
}

/// A context descriptor for Ethernet + IPv4 + TCP: the IP header at 14..33 with its
/// checksum at 24, TCP from 34 to the end with its checksum at 50.
fn tcp_context() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 14;
    c[1] = 24;
    c[2..4].copy_from_slice(&33u16.to_le_bytes());
    c[4] = 34;
    c[5] = 50;
    c[11] = TXD_DEXT;
    c
}

#[test]
fn checksum_offload_fills_in_ip_and_tcp_checksums() {
    let (mut e, _, m) = nic();
    // Ethernet + IPv4 (20) + TCP (20) + 4 bytes of data; the driver put the pseudo-header
    // sum in the TCP checksum field, as Linux does.
    let mut f = vec![0u8; 14 + 20 + 20 + 4];
    f[12..14].copy_from_slice(&[8, 0]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&44u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 2, 15]);
    f[30..34].copy_from_slice(&[10, 0, 2, 2]);
    f[34 + 12] = 5 << 4;
    f[54..58].copy_from_slice(b"ping");
    m.write_slice(&f, GuestAddress(TX_BUF)).unwrap();
    // Context: IP header 14..33, checksum at 24; TCP from 34 to the end, checksum at 50.
    let c = tcp_context();
    m.write_slice(&c, GuestAddress(TX_RING)).unwrap();
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&TX_BUF.to_le_bytes());
    d[8..10].copy_from_slice(&(f.len() as u16).to_le_bytes());
    d[10] = 1 << 4; // DTYP data
    d[11] = TXD_DEXT | TXD_EOP;
    d[13] = POPTS_IXSM | POPTS_TXSM;
    m.write_slice(&d, GuestAddress(TX_RING + 16)).unwrap();
    let out = w(&mut e, &m, reg::TDT, 2);
    let sent = &out[0];
    let fold = |data: &[u8]| fold16(data, 0);
    assert_eq!(fold(&sent[14..34]), 0xffff, "IP header sums to all ones");
    assert_eq!(
        fold(&sent[34..]),
        0xffff,
        "TCP segment (with its seed) sums to all ones"
    );
}

/// Ones'-complement sum of `data` folded to 16 bits (0xffff: a valid checksum inside).
fn fold16(data: &[u8], seed: u32) -> u16 {
    let mut s: u32 = seed
        + data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum::<u32>();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn segmentation_offload_cuts_a_tcp_packet_into_mss_sized_frames() {
    let (mut e, _, m) = nic();
    // One 3000-byte TCP payload behind Ethernet + IPv4 + TCP headers, as Linux hands a
    // TSO packet over: IP checksum 0, the TCP checksum seeded with the pseudo-header sum
    // without the length; PSH and FIN set.
    let (src, dst) = ([10, 0, 2, 15], [10, 0, 2, 2]);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut f = vec![0u8; 54];
    f[12..14].copy_from_slice(&[8, 0]);
    f[14] = 0x45;
    f[18..20].copy_from_slice(&0x100u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f[38..42].copy_from_slice(&1000u32.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = 0x18 | 0x01; // ACK PSH FIN
    let pseudo = fold16(&[&src[..], &dst[..], &[0, 6]].concat(), 0);
    f[50..52].copy_from_slice(&pseudo.to_be_bytes());
    f.extend_from_slice(&payload);
    m.write_slice(&f, GuestAddress(TX_BUF)).unwrap();
    // Context: IP 14..33 (checksum at 24), TCP from 34 (checksum at 50); TCP, IPv4, TSE;
    // header 54 bytes, MSS 1000, payload length 3000.
    let mut c = tcp_context();
    c[8..11].copy_from_slice(&3000u32.to_le_bytes()[..3]);
    c[11] |= 0x07;
    c[13] = 54;
    c[14..16].copy_from_slice(&1000u16.to_le_bytes());
    m.write_slice(&c, GuestAddress(TX_RING)).unwrap();
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&TX_BUF.to_le_bytes());
    d[8..11].copy_from_slice(&(f.len() as u32).to_le_bytes()[..3]);
    d[10] |= 1 << 4; // DTYP data
    d[11] = TXD_DEXT | TXD_EOP | 0x04; // TSE
    d[13] = POPTS_IXSM | POPTS_TXSM;
    m.write_slice(&d, GuestAddress(TX_RING + 16)).unwrap();
    let out = w(&mut e, &m, reg::TDT, 2);
    assert_eq!(out.len(), 3);
    let mut joined = Vec::new();
    for (i, seg) in out.iter().enumerate() {
        assert_eq!(seg.len(), 54 + 1000);
        assert_eq!(
            u16::from_be_bytes([seg[16], seg[17]]),
            1040,
            "IP total length"
        );
        assert_eq!(
            u16::from_be_bytes([seg[18], seg[19]]),
            0x100 + i as u16,
            "IP id"
        );
        assert_eq!(fold16(&seg[14..34], 0), 0xffff, "IP checksum");
        let seq = u32::from_be_bytes(seg[38..42].try_into().unwrap());
        assert_eq!(seq, 1000 + 1000 * i as u32);
        let flags = if i == 2 { 0x19 } else { 0x10 };
        assert_eq!(seg[47], flags, "PSH and FIN on the last segment only");
        let tcp_len = ((seg.len() - 34) as u16).to_be_bytes();
        let seed = u32::from(fold16(
            &[&src[..], &dst[..], &[0, 6], &tcp_len[..]].concat(),
            0,
        ));
        assert_eq!(
            fold16(&seg[34..], seed),
            0xffff,
            "TCP checksum of segment {i}"
        );
        joined.extend_from_slice(&seg[54..]);
    }
    assert_eq!(joined, payload);
    assert_eq!(e.stats.tx_frames, 3);
}

#[test]
fn received_frames_fill_descriptors_and_raise_rxt0() {
    let (mut e, irq, m) = nic();
    let mut f = vec![0u8; 3000];
    f[..6].copy_from_slice(&MAC);
    f[100] = 0xab;
    w(
        &mut e,
        &m,
        reg::RCTL,
        RCTL_EN | RCTL_BAM | RCTL_SECRC | RCTL_LPE,
    );
    assert!(e.receive(&m, &f));
    // 3000 bytes in 2 KiB buffers: two descriptors, EOP on the second.
    let d0: [u8; 16] = m.read_obj(GuestAddress(RX_RING)).unwrap();
    let d1: [u8; 16] = m.read_obj(GuestAddress(RX_RING + 16)).unwrap();
    assert_eq!(u16::from_le_bytes([d0[8], d0[9]]), 2048);
    assert_eq!(d0[12], 1);
    assert_eq!(u16::from_le_bytes([d1[8], d1[9]]), 952);
    assert_eq!(d1[12], 3);
    assert_eq!(m.read_obj::<u8>(GuestAddress(RX_BUFS + 100)).unwrap(), 0xab);
    assert_eq!(r(&mut e, reg::RDH), 2);
    assert!(irq.is_high());
    assert_ne!(r(&mut e, reg::ICR) & ICR_RXT0, 0);
}

#[test]
fn the_filter_takes_own_broadcast_and_hashed_multicast_and_drops_the_rest() {
    let (mut e, _, m) = nic();
    let frame = |dst: [u8; 6]| {
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(&dst);
        f
    };
    let rdh = |e: &mut E1000| r(e, reg::RDH);
    assert!(e.receive(&m, &frame([2, 0, 0, 0, 0, 9])));
    assert_eq!(rdh(&mut e), 0, "another unicast address: filtered");
    assert!(e.receive(&m, &frame(MAC)));
    assert!(e.receive(&m, &frame([0xff; 6])));
    assert_eq!(rdh(&mut e), 2);
    let mc = [0x01, 0, 0x5e, 0, 0, 0xfb];
    assert!(e.receive(&m, &frame(mc)));
    assert_eq!(rdh(&mut e), 2, "multicast without its hash bit: filtered");
    // MO=0: hash = bits 47:36 of the address.
    let h = ((usize::from(mc[5]) << 8 | usize::from(mc[4])) >> 4) & 0xfff;
    w(&mut e, &m, reg::MTA + 4 * (h >> 5), 1 << (h & 31));
    assert!(e.receive(&m, &frame(mc)));
    assert_eq!(rdh(&mut e), 3);
    w(&mut e, &m, reg::RCTL, RCTL_EN | RCTL_UPE | RCTL_SECRC);
    assert!(e.receive(&m, &frame([2, 0, 0, 0, 0, 9])));
    assert_eq!(rdh(&mut e), 4, "unicast promiscuous");
}

#[test]
fn with_no_free_descriptor_a_frame_is_dropped_counted_and_rxo_raised() {
    let (mut e, _, m) = nic();
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(&MAC);
    for _ in 0..7 {
        assert!(e.receive(&m, &f));
    }
    assert!(!e.receive(&m, &f));
    assert_eq!(e.stats.rx_dropped, 1);
    assert_eq!(e.stats.rx_frames, 7);
    assert_ne!(r(&mut e, reg::ICR) & ICR_RXO, 0);
}

#[test]
fn an_oversized_transmit_is_dropped_and_a_bogus_ring_does_not_spin() {
    let (mut e, _, m) = nic();
    // 2 x 40 000 bytes with one EOP: more than a frame can be.
    tx_desc(&m, 0, TX_BUF, 40_000, 0);
    tx_desc(&m, 1, TX_BUF, 40_000, TXD_EOP);
    assert!(w(&mut e, &m, reg::TDT, 2).is_empty());
    assert_eq!(e.stats.tx_dropped, 1);
    // TDT past the ring: the device stops at the ring's end instead of looping.
    assert!(w(&mut e, &m, reg::TDT, 1000).is_empty());
}

#[test]
fn link_down_clears_status_lu_and_raises_lsc() {
    let (mut e, irq, _) = nic();
    e.set_link(false);
    assert_eq!(r(&mut e, reg::STATUS) & STATUS_LU, 0);
    assert!(irq.is_high());
    assert_ne!(r(&mut e, reg::ICR) & ICR_LSC, 0);
    e.set_link(true);
    assert_ne!(r(&mut e, reg::STATUS) & STATUS_LU, 0);
}

#[test]
fn ctrl_rst_restores_power_on_registers() {
    let (mut e, _, m) = nic();
    w(&mut e, &m, reg::CTRL, CTRL_RST);
    assert_eq!(r(&mut e, reg::RCTL), 0);
    assert_eq!(r(&mut e, reg::IMS), 0);
    assert_ne!(r(&mut e, reg::STATUS) & STATUS_LU, 0);
}

/// Guest memory as it arrives at the destination: a copy of the source's.
fn copy_of(m: &GuestMemoryMmap) -> GuestMemoryMmap {
    let c = mem();
    let mut buf = vec![0u8; 0x10_0000];
    m.read_slice(&mut buf, GuestAddress(0)).unwrap();
    c.write_slice(&buf, GuestAddress(0)).unwrap();
    c
}

/// Drive EECD's microwire pins: chip select, then clock in `bits` (MSB first).
fn eeprom_command(e: &mut E1000, m: &GuestMemoryMmap, bits: u32, count: u32) {
    w(e, m, reg::EECD, EECD_CS);
    for i in (0..count).rev() {
        let di = if bits >> i & 1 != 0 { EECD_DI } else { 0 };
        w(e, m, reg::EECD, EECD_CS | di);
        w(e, m, reg::EECD, EECD_CS | di | EECD_SK);
    }
}

/// Clock `n` data bits out of the EEPROM (MSB first).
fn eeprom_bits(e: &mut E1000, m: &GuestMemoryMmap, n: u32) -> u16 {
    let mut v = 0u16;
    for _ in 0..n {
        w(e, m, reg::EECD, EECD_CS);
        v = v << 1 | u16::from(r(e, reg::EECD) & EECD_DO != 0);
        w(e, m, reg::EECD, EECD_CS | EECD_SK);
    }
    v
}

fn frame_to(dst: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = vec![tag; 64];
    f[..6].copy_from_slice(&dst);
    f
}

#[test]
fn e1000_resumes_its_rings_after_restore() {
    let (mut e, _, m) = nic();
    // A frame received (RDH moves, RXT0 pending and asserted), a multicast hash bit set, a
    // PHY register written, the I/O window pointed at RDH.
    assert!(e.receive(&m, &frame_to(MAC, 1)));
    w(&mut e, &m, reg::MTA + 8, 0x10);
    w(
        &mut e,
        &m,
        reg::MDIC,
        (1 << 26) | (1 << 21) | (4 << 16) | 0x01e1,
    );
    e.io_write(&m, 0, &(reg::RDH as u32).to_le_bytes());
    // The first 40 bytes of a frame handed over without EOP: the model holds them.
    let frame: Vec<u8> = (0..100u8).collect();
    m.write_slice(&frame, GuestAddress(TX_BUF)).unwrap();
    tx_desc(&m, 0, TX_BUF, 40, 0);
    assert!(w(&mut e, &m, reg::TDT, 1).is_empty());
    // An EEPROM read of word 1 half done: READ opcode and address clocked in, 8 bits out.
    eeprom_command(&mut e, &m, (MICROWIRE_READ << 6) | 1, 9);
    let high = eeprom_bits(&mut e, &m, 8);

    let irq2 = Arc::new(FakeIrq::default());
    let m2 = copy_of(&m);
    let mut back = crate::check_roundtrip(&e, E1000::new(MAC, irq2.clone()));
    assert!(
        irq2.is_high(),
        "the pending receive interrupt is asserted again"
    );
    for off in [
        reg::CTRL,
        reg::STATUS,
        reg::RCTL,
        reg::TCTL,
        reg::IMS,
        reg::RDBAL,
        reg::RDLEN,
        reg::RDH,
        reg::RDT,
        reg::TDBAL,
        reg::TDLEN,
        reg::TDH,
        reg::TDT,
        reg::MTA + 8,
        reg::RA,
        reg::RA + 4,
        reg::MDIC,
        reg::EECD,
    ] {
        assert_eq!(r(&mut back, off), r(&mut e, off), "register {off:#x}");
    }
    let io = |e: &mut E1000| {
        let mut b = [0u8; 4];
        e.io_read(4, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(io(&mut back), 1, "the I/O window still reads RDH");
    // The EEPROM read finishes where it stopped.
    let low = eeprom_bits(&mut back, &m2, 8);
    assert_eq!(high << 8 | low, 0x1200, "word 1: MAC bytes 2 and 3");
    assert_eq!(eeprom_bits(&mut e, &m, 8), low);
    // The next guest actions have the same effect on both: the frame's EOP descriptor
    // sends the whole frame, the next received frame lands in descriptor 1.
    for (nic, mem) in [(&mut e, &m), (&mut back, &m2)] {
        tx_desc(mem, 1, TX_BUF + 40, 60, TXD_EOP | TXD_RS);
        assert_eq!(w(nic, mem, reg::TDT, 2), vec![frame.clone()]);
        assert!(nic.receive(mem, &frame_to([0xff; 6], 2)));
        assert_eq!(r(nic, reg::RDH), 2);
    }
    let desc = |m: &GuestMemoryMmap| m.read_obj::<[u8; 16]>(GuestAddress(RX_RING + 16)).unwrap();
    assert_eq!(desc(&m2), desc(&m));
    assert_eq!(r(&mut back, reg::ICR), r(&mut e, reg::ICR));
    w(&mut back, &m2, reg::MDIC, (2 << 26) | (1 << 21) | (4 << 16));
    assert_eq!(
        r(&mut back, reg::MDIC) & 0xffff,
        0x01e1,
        "the PHY write kept"
    );
}

#[test]
fn hand_edited_e1000_sections_are_refused_naming_the_field() {
    let (e, _, _) = nic();
    let section = crate::save_section("nic0", &e);
    let fresh = || E1000::new(MAC, Arc::new(FakeIrq::default()));
    let refused = |edit: &dyn Fn(&mut crate::Section)| {
        let mut s = section.clone();
        edit(&mut s);
        let mut target = fresh();
        let before = target.save();
        let err = crate::restore_section(&mut target, &s).unwrap_err();
        assert_eq!(target.save(), before, "a refused section changed the model");
        err
    };
    let e = refused(&|s| s.kind = "e1000e".into());
    assert!(matches!(e, crate::StateError::Kind { .. }), "{e}");
    let e = refused(&|s| s.version = 2);
    assert!(
        matches!(e, crate::StateError::Version { found: 2, .. }),
        "{e}"
    );
    let e = refused(&|s| {
        let regs = s.state["regs"].as_array_mut().unwrap();
        regs.push(serde_json::json!([reg::RDH, 0x1_0000]));
    });
    assert!(
        e.to_string()
            .contains("RDH 0x10000 has bits outside 0xffff"),
        "{e}"
    );
    let e = refused(&|s| {
        let regs = s.state["regs"].as_array_mut().unwrap();
        regs.push(serde_json::json!([0x2_0000, 1]));
    });
    assert!(e.to_string().contains("register offset 0x20000"), "{e}");
    let e = refused(&|s| s.state["tx_frame"] = serde_json::json!(vec![0u8; MAX_TX_FRAME + 2]));
    assert!(e.to_string().contains("tx_frame holds 65538 bytes"), "{e}");
    let e = refused(&|s| s.state["tx_context"]["hdrlen"] = 300.into());
    assert!(e.to_string().contains("tx_context.hdrlen 300"), "{e}");
    let mut other = E1000::new([2, 0, 0, 0, 0, 1], Arc::new(FakeIrq::default()));
    let e = crate::restore_section(&mut other, &section).unwrap_err();
    assert!(e.to_string().contains("mac is"), "{e}");
}

#[test]
fn a_segmentation_context_pointing_past_the_packet_sends_without_underflow() {
    let (mut e, _, m) = nic();
    // IPv4 header "at" byte 200 of a 30-byte packet: nonsense from the guest, which must
    // not bring the device model down.
    let mut c = tcp_context();
    c[0] = 200;
    c[11] |= 0x07;
    c[13] = 20;
    c[14..16].copy_from_slice(&10u16.to_le_bytes());
    m.write_slice(&c, GuestAddress(TX_RING)).unwrap();
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&TX_BUF.to_le_bytes());
    d[8..10].copy_from_slice(&30u16.to_le_bytes());
    d[10] = 1 << 4;
    d[11] = TXD_DEXT | TXD_EOP | 0x04;
    m.write_slice(&d, GuestAddress(TX_RING + 16)).unwrap();
    let out = w(&mut e, &m, reg::TDT, 2);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 30);
}
