//! virtio-net: MAC and link status in the configuration space; a receive queue, a
//! transmit queue and a control queue; with MRG_RXBUF a frame may fill several receive
//! buffers (`num_buffers` in its header says how many). Frames carry the virtio-net header
//! (12 bytes with VERSION_1 or MRG_RXBUF, else 10). Checksum and segmentation offloads
//! (CSUM, TSO4/6, ECN, UFO, both ways) are offered when the backend carries them (a tap
//! with virtio-net headers, [`offered_features`]); the header then passes between the
//! driver and the host unchanged; elsewhere it is all zeros. The control queue sets the receive filter ([`RxFilter`]: promiscuous
//! and all/no-multicast/unicast/broadcast modes, the MAC table, the MAC address itself) and
//! acknowledges announcements, with QEMU's semantics: after reset the filter is
//! promiscuous, as drivers without a control queue expect.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::VirtioDeviceModel;
use crate::{Snapshot, StateError};

pub const F_CSUM: u64 = 1;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_GUEST_ECN: u64 = 1 << 9;
pub const F_GUEST_UFO: u64 = 1 << 10;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;
pub const F_HOST_ECN: u64 = 1 << 13;
pub const F_HOST_UFO: u64 = 1 << 14;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_CTRL_RX: u64 = 1 << 18;
pub const F_CTRL_RX_EXTRA: u64 = 1 << 20;
pub const F_GUEST_ANNOUNCE: u64 = 1 << 21;
pub const F_MQ: u64 = 1 << 22;
pub const F_CTRL_MAC_ADDR: u64 = 1 << 23;
pub const STATUS_LINK_UP: u16 = 1;
pub const STATUS_ANNOUNCE: u16 = 2;

/// Control queue classes and commands (virtio 1.x 5.1.6.5).
pub mod ctrl {
    pub const CLASS_RX: u8 = 0;
    pub const RX_PROMISC: u8 = 0;
    pub const RX_ALLMULTI: u8 = 1;
    pub const RX_ALLUNI: u8 = 2;
    pub const RX_NOMULTI: u8 = 3;
    pub const RX_NOUNI: u8 = 4;
    pub const RX_NOBCAST: u8 = 5;
    pub const CLASS_MAC: u8 = 1;
    pub const MAC_TABLE_SET: u8 = 0;
    pub const MAC_ADDR_SET: u8 = 1;
    pub const CLASS_ANNOUNCE: u8 = 3;
    pub const CLASS_MQ: u8 = 4;
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    pub const ANNOUNCE_ACK: u8 = 0;
    pub const OK: u8 = 0;
    pub const ERR: u8 = 1;
}

/// MAC table entries (unicast and multicast together) before a table overflows into
/// "accept all of that kind", as QEMU.
pub const MAC_TABLE_ENTRIES: usize = 64;

/// The receive filter and the addresses the driver set through the control queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFilter {
    /// The address in use (the configured one until the driver sets another).
    pub mac: [u8; 6],
    configured_mac: [u8; 6],
    pub promisc: bool,
    pub allmulti: bool,
    pub alluni: bool,
    pub nomulti: bool,
    pub nouni: bool,
    pub nobcast: bool,
    pub unicast: Vec<[u8; 6]>,
    pub multicast: Vec<[u8; 6]>,
    pub uni_overflow: bool,
    pub multi_overflow: bool,
    /// STATUS_ANNOUNCE is set until the driver acknowledges.
    pub announce: bool,
}

impl RxFilter {
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            configured_mac: mac,
            promisc: true,
            allmulti: false,
            alluni: false,
            nomulti: false,
            nouni: false,
            nobcast: false,
            unicast: Vec::new(),
            multicast: Vec::new(),
            uni_overflow: false,
            multi_overflow: false,
            announce: false,
        }
    }

    /// Device reset: back to the promiscuous compatibility mode and the configured MAC.
    pub fn reset(&mut self) {
        *self = Self::new(self.configured_mac);
    }

    /// Whether a frame for destination `dst` reaches the driver.
    pub fn accepts(&self, dst: &[u8; 6]) -> bool {
        if self.promisc {
            return true;
        }
        if dst[0] & 1 != 0 {
            if *dst == [0xff; 6] {
                return !self.nobcast;
            }
            if self.nomulti {
                return false;
            }
            self.allmulti || self.multi_overflow || self.multicast.contains(dst)
        } else {
            if self.nouni {
                return false;
            }
            self.alluni || self.uni_overflow || *dst == self.mac || self.unicast.contains(dst)
        }
    }

    /// One control-queue command: `data` is what follows the class and command bytes.
    /// Returns the ack byte ([`ctrl::OK`] or [`ctrl::ERR`]).
    pub fn command(&mut self, class: u8, cmd: u8, data: &[u8]) -> u8 {
        let ok = match class {
            ctrl::CLASS_RX => match data {
                [on] => {
                    let on = *on != 0;
                    match cmd {
                        ctrl::RX_PROMISC => self.promisc = on,
                        ctrl::RX_ALLMULTI => self.allmulti = on,
                        ctrl::RX_ALLUNI => self.alluni = on,
                        ctrl::RX_NOMULTI => self.nomulti = on,
                        ctrl::RX_NOUNI => self.nouni = on,
                        ctrl::RX_NOBCAST => self.nobcast = on,
                        _ => return ctrl::ERR,
                    }
                    true
                }
                _ => false,
            },
            ctrl::CLASS_MAC => match cmd {
                ctrl::MAC_ADDR_SET => match <[u8; 6]>::try_from(data) {
                    Ok(mac) => {
                        self.mac = mac;
                        true
                    }
                    Err(_) => false,
                },
                ctrl::MAC_TABLE_SET => self.set_table(data),
                _ => false,
            },
            ctrl::CLASS_ANNOUNCE if cmd == ctrl::ANNOUNCE_ACK && data.is_empty() => {
                self.announce = false;
                true
            }
            _ => false,
        };
        if ok {
            ctrl::OK
        } else {
            ctrl::ERR
        }
    }

    /// MAC_TABLE_SET: `le32 n` and n unicast addresses, then the same for multicast; the
    /// whole command must be exactly that long. A table past the limit overflows.
    fn set_table(&mut self, data: &[u8]) -> bool {
        fn table(data: &[u8]) -> Option<(Vec<[u8; 6]>, &[u8])> {
            let n = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
            let end = n.checked_mul(6)?.checked_add(4)?;
            let macs = data.get(4..end)?;
            Some((
                macs.chunks_exact(6)
                    .map(|c| c.try_into().unwrap_or_default())
                    .collect(),
                &data[end..],
            ))
        }
        let Some((uni, rest)) = table(data) else {
            return false;
        };
        let Some((multi, rest)) = table(rest) else {
            return false;
        };
        if !rest.is_empty() {
            return false;
        }
        self.uni_overflow = uni.len() > MAC_TABLE_ENTRIES;
        self.unicast = if self.uni_overflow { Vec::new() } else { uni };
        self.multi_overflow = self.unicast.len() + multi.len() > MAC_TABLE_ENTRIES;
        self.multicast = if self.multi_overflow {
            Vec::new()
        } else {
            multi
        };
        true
    }
}

/// The frame QEMU sends to announce a NIC (after migration, or on `announce-self`): a
/// broadcast RARP "reverse request" naming the NIC's MAC, padded to 60 bytes.
pub fn announce_frame(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 3]);
    f[22..28].copy_from_slice(&mac);
    f[32..38].copy_from_slice(&mac);
    f
}

/// The filter shared by the device model (configuration space), the NIC's worker (the
/// receive path and the control queue) and the monitor (`query-rx-filter`).
pub type SharedRxFilter = Arc<Mutex<RxFilter>>;

pub fn lock_filter(f: &SharedRxFilter) -> MutexGuard<'_, RxFilter> {
    f.lock().unwrap_or_else(|p| p.into_inner())
}

/// The virtio-net header length for the negotiated features (with `num_buffers` when
/// VERSION_1 or MRG_RXBUF).
pub fn header_len(driver_features: u64) -> usize {
    if driver_features & (super::features::VERSION_1 | F_MRG_RXBUF) != 0 {
        12
    } else {
        10
    }
}

/// Offloads as the Linux tun driver names them (TUNSETOFFLOAD bits): what a backend can
/// carry, and what the host may hand a reader unfinished.
pub mod tun {
    pub const CSUM: u32 = 0x01;
    pub const TSO4: u32 = 0x02;
    pub const TSO6: u32 = 0x04;
    pub const TSO_ECN: u32 = 0x08;
    pub const UFO: u32 = 0x10;
}

/// Each tun offload bit with the features it allows, driver to host and host to driver.
const OFFLOADS: [(u32, u64, u64); 5] = [
    (tun::CSUM, F_CSUM, F_GUEST_CSUM),
    (tun::TSO4, F_HOST_TSO4, F_GUEST_TSO4),
    (tun::TSO6, F_HOST_TSO6, F_GUEST_TSO6),
    (tun::TSO_ECN, F_HOST_ECN, F_GUEST_ECN),
    (tun::UFO, F_HOST_UFO, F_GUEST_UFO),
];

/// The offload features to offer on a backend that carries `tun_bits` (none without
/// checksum offload, which all the others build on).
pub fn offered_features(tun_bits: u32) -> u64 {
    if tun_bits & tun::CSUM == 0 {
        return 0;
    }
    OFFLOADS
        .iter()
        .filter(|(bit, ..)| tun_bits & bit != 0)
        .fold(0, |f, (_, host, guest)| f | host | guest)
}

/// What the host may send the driver unfinished, from what it negotiated (TUNSETOFFLOAD
/// bits; nothing without GUEST_CSUM).
pub fn tun_offloads(driver_features: u64) -> u32 {
    if driver_features & F_GUEST_CSUM == 0 {
        return 0;
    }
    OFFLOADS
        .iter()
        .filter(|(_, _, guest)| driver_features & guest != 0)
        .fold(0, |b, (bit, ..)| b | bit)
}

pub struct Net {
    filter: SharedRxFilter,
    link_up: bool,
    /// Offload features offered ([`offered_features`] of the backend).
    offloads: u64,
    /// Queue pairs (more than one: MQ is offered).
    pairs: u16,
}

/// The receive queue of pair `i` is `2i`, its transmit queue `2i + 1`; the control queue
/// comes after the last pair with MQ negotiated, else it is queue 2.
pub fn control_queue(driver_features: u64, pairs: u16) -> usize {
    if driver_features & F_MQ != 0 {
        2 * usize::from(pairs)
    } else {
        2
    }
}

impl Net {
    pub fn new(filter: SharedRxFilter, offloads: u64, pairs: u16) -> Self {
        Self {
            filter,
            link_up: true,
            offloads,
            pairs: pairs.max(1),
        }
    }

    pub fn link_up(&self) -> bool {
        self.link_up
    }
}

/// What the driver of a virtio-net sees and set: the link status and announce bit in
/// the configuration space, and the receive filter it programmed through the control
/// queue (modes, MAC tables, the MAC address in use).
///
/// `configured_mac` (the `mac=` of the command line, what a device reset returns to) and
/// the number of queue pairs are not restored but must match the rebuilt NIC. Frames are
/// not here: the NIC's actor finishes or drops the frames it holds before it is saved, and
/// saves the queues' ring indices next to the transport's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    pub link_up: bool,
    pub pairs: u16,
    pub configured_mac: [u8; 6],
    /// The address in use.
    pub mac: [u8; 6],
    pub promisc: bool,
    pub allmulti: bool,
    pub alluni: bool,
    pub nomulti: bool,
    pub nouni: bool,
    pub nobcast: bool,
    pub unicast: Vec<[u8; 6]>,
    pub multicast: Vec<[u8; 6]>,
    pub uni_overflow: bool,
    pub multi_overflow: bool,
    /// STATUS_ANNOUNCE shows until the driver acknowledges it.
    pub announce: bool,
}

impl Snapshot for Net {
    type State = NetState;
    const KIND: &'static str = "virtio-net";
    const VERSION: u32 = 1;

    fn save(&self) -> NetState {
        let f = lock_filter(&self.filter);
        NetState {
            link_up: self.link_up,
            pairs: self.pairs,
            configured_mac: f.configured_mac,
            mac: f.mac,
            promisc: f.promisc,
            allmulti: f.allmulti,
            alluni: f.alluni,
            nomulti: f.nomulti,
            nouni: f.nouni,
            nobcast: f.nobcast,
            unicast: f.unicast.clone(),
            multicast: f.multicast.clone(),
            uni_overflow: f.uni_overflow,
            multi_overflow: f.multi_overflow,
            announce: f.announce,
        }
    }

    fn restore(&mut self, s: NetState) -> Result<(), StateError> {
        let invalid = |r: String| StateError::invalid(Self::KIND, r);
        if s.pairs != self.pairs {
            return Err(invalid(format!(
                "pairs is {} in the state but this NIC has {} queue pairs",
                s.pairs, self.pairs
            )));
        }
        let mut f = lock_filter(&self.filter);
        if s.configured_mac != f.configured_mac {
            return Err(invalid(format!(
                "configured_mac is {} in the state but this NIC was built with {}",
                mac_string(&s.configured_mac),
                mac_string(&f.configured_mac)
            )));
        }
        let entries = s.unicast.len() + s.multicast.len();
        if entries > MAC_TABLE_ENTRIES {
            return Err(invalid(format!(
                "unicast and multicast hold {entries} MAC table entries (at most                  {MAC_TABLE_ENTRIES})"
            )));
        }
        *f = RxFilter {
            mac: s.mac,
            configured_mac: s.configured_mac,
            promisc: s.promisc,
            allmulti: s.allmulti,
            alluni: s.alluni,
            nomulti: s.nomulti,
            nouni: s.nouni,
            nobcast: s.nobcast,
            unicast: s.unicast,
            multicast: s.multicast,
            uni_overflow: s.uni_overflow,
            multi_overflow: s.multi_overflow,
            announce: s.announce,
        };
        drop(f);
        self.link_up = s.link_up;
        Ok(())
    }
}

fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl VirtioDeviceModel for Net {
    fn device_type(&self) -> u16 {
        super::device_type::NET
    }
    fn features(&self) -> u64 {
        self.offloads
            | F_MAC
            | F_MRG_RXBUF
            | F_STATUS
            | F_CTRL_VQ
            | F_CTRL_RX
            | F_CTRL_RX_EXTRA
            | F_GUEST_ANNOUNCE
            | F_CTRL_MAC_ADDR
            | if self.pairs > 1 { F_MQ } else { 0 }
    }
    fn queue_sizes(&self) -> Vec<u16> {
        // receive and transmit of each pair, control
        let mut q = vec![256; 2 * usize::from(self.pairs)];
        q.push(64);
        q
    }
    fn config_len(&self) -> usize {
        // mac, status, max_virtqueue_pairs, mtu.
        12
    }
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        let mut s = [0u8; 12];
        let f = lock_filter(&self.filter);
        s[..6].copy_from_slice(&f.mac);
        let mut status = if self.link_up { STATUS_LINK_UP } else { 0 };
        if f.announce {
            status |= STATUS_ANNOUNCE;
        }
        s[6..8].copy_from_slice(&status.to_le_bytes());
        s[8..10].copy_from_slice(&self.pairs.to_le_bytes());
        s[10..12].copy_from_slice(&1500u16.to_le_bytes());
        super::read_bytes(&s, offset, data);
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x02, 0x00)
    }
    /// The driver sees the new status (the caller signals a configuration change).
    fn set_link(&mut self, up: bool) -> bool {
        self.link_up = up;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x99];
    const MCAST: [u8; 6] = [0x01, 0, 0x5e, 0, 0, 1];

    fn table(uni: &[[u8; 6]], multi: &[[u8; 6]]) -> Vec<u8> {
        let mut d = Vec::new();
        for t in [uni, multi] {
            d.extend_from_slice(&(t.len() as u32).to_le_bytes());
            for m in t {
                d.extend_from_slice(m);
            }
        }
        d
    }

    #[test]
    fn offloads_follow_what_the_backend_carries_and_the_driver_takes() {
        assert_eq!(offered_features(tun::TSO4), 0, "no TSO without checksums");
        let f = offered_features(tun::CSUM | tun::TSO4 | tun::UFO);
        assert_eq!(
            f,
            F_CSUM | F_GUEST_CSUM | F_HOST_TSO4 | F_GUEST_TSO4 | F_HOST_UFO | F_GUEST_UFO
        );
        // The host sends segments unfinished only to a driver that takes checksums so.
        assert_eq!(tun_offloads(F_GUEST_TSO4 | F_CSUM | F_HOST_TSO4), 0);
        assert_eq!(
            tun_offloads(F_GUEST_CSUM | F_GUEST_TSO4 | F_HOST_TSO6),
            tun::CSUM | tun::TSO4
        );
    }

    #[test]
    fn after_reset_everything_passes_then_the_driver_narrows_it() {
        let mut f = RxFilter::new(MAC);
        assert!(f.accepts(&OTHER) && f.accepts(&MCAST));
        assert_eq!(f.command(ctrl::CLASS_RX, ctrl::RX_PROMISC, &[0]), ctrl::OK);
        assert!(f.accepts(&MAC) && f.accepts(&[0xff; 6]));
        assert!(!f.accepts(&OTHER) && !f.accepts(&MCAST));
        let t = table(&[OTHER], &[MCAST]);
        assert_eq!(
            f.command(ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, &t),
            ctrl::OK
        );
        assert!(f.accepts(&OTHER) && f.accepts(&MCAST));
        assert_eq!(f.command(ctrl::CLASS_RX, ctrl::RX_NOBCAST, &[1]), ctrl::OK);
        assert!(!f.accepts(&[0xff; 6]));
        assert_eq!(f.command(ctrl::CLASS_RX, ctrl::RX_NOUNI, &[1]), ctrl::OK);
        assert!(!f.accepts(&MAC));
        f.reset();
        assert_eq!(f, RxFilter::new(MAC));
    }

    #[test]
    fn mac_addr_set_changes_the_address_until_reset() {
        let mut f = RxFilter::new(MAC);
        assert_eq!(
            f.command(ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, &OTHER),
            ctrl::OK
        );
        f.promisc = false;
        assert!(f.accepts(&OTHER) && !f.accepts(&MAC));
        f.reset();
        assert_eq!(f.mac, MAC);
    }

    #[test]
    fn malformed_commands_are_refused_and_change_nothing() {
        let mut f = RxFilter::new(MAC);
        let before = f.clone();
        let mut long = table(&[OTHER], &[]);
        long.push(0);
        for (class, cmd, data) in [
            (ctrl::CLASS_RX, ctrl::RX_PROMISC, &[][..]),
            (ctrl::CLASS_RX, ctrl::RX_PROMISC, &[0, 0][..]),
            (ctrl::CLASS_RX, 9, &[0][..]),
            (ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, &[1, 2, 3][..]),
            (
                ctrl::CLASS_MAC,
                ctrl::MAC_TABLE_SET,
                &[0xff, 0xff, 0xff, 0xff][..],
            ),
            (ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, &long[..]),
            (7, 0, &[][..]),
        ] {
            assert_eq!(
                f.command(class, cmd, data),
                ctrl::ERR,
                "{class} {cmd} {data:?}"
            );
        }
        assert_eq!(f, before);
    }

    #[test]
    fn a_table_past_the_limit_overflows_into_accept_all() {
        let mut f = RxFilter::new(MAC);
        f.promisc = false;
        let many: Vec<[u8; 6]> = (0..65u8).map(|i| [0x52, 0, 0, 0, 1, i]).collect();
        let t = table(&many, &[MCAST]);
        assert_eq!(
            f.command(ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, &t),
            ctrl::OK
        );
        assert!(f.uni_overflow && f.unicast.is_empty());
        assert!(f.accepts(&[0x52, 0, 0, 0, 9, 9]));
        assert!(!f.multi_overflow && f.accepts(&MCAST));
    }

    #[test]
    fn the_receive_filter_mac_and_link_survive_restore() {
        let shared: SharedRxFilter = Arc::new(Mutex::new(RxFilter::new(MAC)));
        let mut n = Net::new(shared.clone(), 0, 1);
        {
            let mut f = lock_filter(&shared);
            assert_eq!(f.command(ctrl::CLASS_RX, ctrl::RX_PROMISC, &[0]), ctrl::OK);
            let t = table(&[[0x52, 0x54, 0, 0, 0, 7]], &[MCAST]);
            assert_eq!(
                f.command(ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, &t),
                ctrl::OK
            );
            assert_eq!(
                f.command(ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, &OTHER),
                ctrl::OK
            );
            f.announce = true;
        }
        n.set_link(false);
        let fresh_filter: SharedRxFilter = Arc::new(Mutex::new(RxFilter::new(MAC)));
        let back = crate::check_roundtrip(&n, Net::new(fresh_filter.clone(), 0, 1));
        let space = |n: &Net| {
            let mut b = [0u8; 12];
            n.config_read(0, &mut b);
            b
        };
        // The driver reads the same MAC and status (link down, announce pending) ...
        assert_eq!(space(&back), space(&n));
        assert_eq!(&space(&back)[..6], &OTHER);
        // ... and the same frames pass the restored filter (the one the actor shares).
        let restored = lock_filter(&fresh_filter).clone();
        for dst in [
            MAC,
            OTHER,
            MCAST,
            [0x52, 0x54, 0, 0, 0, 7],
            [0x01, 0, 0x5e, 0, 0, 9],
        ] {
            assert_eq!(
                restored.accepts(&dst),
                lock_filter(&shared).accepts(&dst),
                "{dst:?}"
            );
        }
        assert!(!restored.accepts(&MAC) && restored.accepts(&OTHER));
        // A device reset still goes back to the configured address.
        let mut reset = restored;
        reset.reset();
        assert_eq!(reset.mac, MAC);
    }

    #[test]
    fn a_nic_built_with_another_mac_or_too_many_table_entries_is_refused() {
        let n = Net::new(Arc::new(Mutex::new(RxFilter::new(MAC))), 0, 1);
        let mut other = Net::new(Arc::new(Mutex::new(RxFilter::new(OTHER))), 0, 1);
        let err = other.restore(n.save()).unwrap_err().to_string();
        assert!(err.contains("configured_mac is 52:54:00:12:34:56"), "{err}");
        let mut s = n.save();
        s.unicast = vec![OTHER; MAC_TABLE_ENTRIES + 1];
        let mut fresh = Net::new(Arc::new(Mutex::new(RxFilter::new(MAC))), 0, 1);
        let err = fresh.restore(s).unwrap_err().to_string();
        assert!(err.contains("65 MAC table entries"), "{err}");
    }

    #[test]
    fn the_announce_bit_shows_in_status_until_acknowledged() {
        let shared: SharedRxFilter = Arc::new(Mutex::new(RxFilter::new(MAC)));
        let n = Net::new(shared.clone(), 0, 1);
        let status = |n: &Net| {
            let mut b = [0u8; 2];
            n.config_read(6, &mut b);
            u16::from_le_bytes(b)
        };
        assert_eq!(status(&n), STATUS_LINK_UP);
        lock_filter(&shared).announce = true;
        assert_eq!(status(&n), STATUS_LINK_UP | STATUS_ANNOUNCE);
        let ack = lock_filter(&shared).command(ctrl::CLASS_ANNOUNCE, ctrl::ANNOUNCE_ACK, &[]);
        assert_eq!(ack, ctrl::OK);
        assert_eq!(status(&n), STATUS_LINK_UP);
    }
}
