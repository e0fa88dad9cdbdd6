//! virtio-input as QEMU's `virtio-tablet-pci`: an absolute pointer (ABS_X/ABS_Y in
//! 0..0x7fff), left/right/middle buttons and a wheel, described through the virtio-input
//! configuration space (select/subsel queries) and reported as evdev events on the event
//! queue.

use serde::{Deserialize, Serialize};

use super::VirtioDeviceModel;
use crate::{Snapshot, StateError};

const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;

pub const EV_SYN: u16 = 0;
pub const EV_KEY: u16 = 1;
pub const EV_REL: u16 = 2;
pub const EV_ABS: u16 = 3;
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;
pub const REL_WHEEL: u16 = 8;
pub const ABS_MAX: u32 = 0x7fff;

/// One evdev event as virtio-input carries it (type, code, value; little-endian).
pub fn event(ty: u16, code: u16, value: u32) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[0..2].copy_from_slice(&ty.to_le_bytes());
    e[2..4].copy_from_slice(&code.to_le_bytes());
    e[4..8].copy_from_slice(&value.to_le_bytes());
    e
}

/// The tablet's configuration space.
#[derive(Default)]
pub struct Tablet {
    select: u8,
    subsel: u8,
}

impl Tablet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The answer to the current (select, subsel) query.
    fn payload(&self) -> Vec<u8> {
        let bits = |codes: &[u16]| {
            let mut b = vec![0u8; 128];
            for &c in codes {
                b[usize::from(c / 8)] |= 1 << (c % 8);
            }
            let n = b.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1);
            b.truncate(n);
            b
        };
        match (self.select, self.subsel) {
            (CFG_ID_NAME, _) => b"QEMU Virtio Tablet".to_vec(),
            (CFG_ID_SERIAL, _) => Vec::new(),
            (CFG_ID_DEVIDS, _) => {
                // BUS_VIRTUAL, QEMU's vendor/product/version.
                let mut v = Vec::new();
                for x in [0x06u16, 0x0627, 0x0003, 0x0001] {
                    v.extend_from_slice(&x.to_le_bytes());
                }
                v
            }
            (CFG_EV_BITS, s) if u16::from(s) == EV_KEY => bits(&[BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
            (CFG_EV_BITS, s) if u16::from(s) == EV_REL => bits(&[REL_WHEEL]),
            (CFG_EV_BITS, s) if u16::from(s) == EV_ABS => bits(&[0, 1]),
            (CFG_ABS_INFO, 0 | 1) => {
                let mut v = Vec::new();
                for x in [0u32, ABS_MAX, 0, 0, 0] {
                    v.extend_from_slice(&x.to_le_bytes());
                }
                v
            }
            _ => Vec::new(),
        }
    }
}

/// The tablet's configuration-space query the driver last wrote. Events the actor has
/// not yet put on the event queue (a pointer move between save and the guest's next
/// buffer) are the actor's to carry; the queues themselves are the transport's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TabletState {
    pub select: u8,
    pub subsel: u8,
}

impl Snapshot for Tablet {
    type State = TabletState;
    const KIND: &'static str = "virtio-input";
    const VERSION: u32 = 1;
    fn save(&self) -> TabletState {
        TabletState {
            select: self.select,
            subsel: self.subsel,
        }
    }
    fn restore(&mut self, s: TabletState) -> Result<(), StateError> {
        self.select = s.select;
        self.subsel = s.subsel;
        Ok(())
    }
}

impl VirtioDeviceModel for Tablet {
    fn device_type(&self) -> u16 {
        super::device_type::INPUT
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_sizes(&self) -> Vec<u16> {
        vec![64, 64]
    }
    fn config_len(&self) -> usize {
        136
    }
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        let p = self.payload();
        let mut space = vec![0u8; 136];
        space[0] = self.select;
        space[1] = self.subsel;
        space[2] = p.len() as u8;
        space[8..8 + p.len()].copy_from_slice(&p);
        super::read_bytes(&space, offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            match offset + i {
                0 => self.select = *b,
                1 => self.subsel = *b,
                _ => {}
            }
        }
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x09, 0x80)
    }
}

/// The events for a pointer at (x, y) on a `width` x `height` screen with `buttons`
/// (bit 0 left, 1 middle, 2 right: RFB's mask) after `prev` buttons, and `wheel` notches.
pub fn pointer_events(
    x: u32,
    y: u32,
    width: u32,
    height: u32,
    buttons: u8,
    prev: u8,
    wheel: i32,
) -> Vec<[u8; 8]> {
    let scale =
        |v: u32, size: u32| (u64::from(v) * u64::from(ABS_MAX) / u64::from(size.max(1))) as u32;
    let mut v = vec![
        event(EV_ABS, 0, scale(x, width)),
        event(EV_ABS, 1, scale(y, height)),
    ];
    for (bit, code) in [(1u8, BTN_LEFT), (2, BTN_MIDDLE), (4, BTN_RIGHT)] {
        if (buttons ^ prev) & bit != 0 {
            v.push(event(EV_KEY, code, u32::from(buttons & bit != 0)));
        }
    }
    if wheel != 0 {
        v.push(event(EV_REL, REL_WHEEL, wheel as u32));
    }
    v.push(event(EV_SYN, 0, 0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(t: &mut Tablet, sel: u8, sub: u8) -> Vec<u8> {
        t.config_write(0, &[sel, sub]);
        let mut size = [0u8];
        t.config_read(2, &mut size);
        let mut b = vec![0u8; usize::from(size[0])];
        t.config_read(8, &mut b);
        b
    }

    #[test]
    fn the_configuration_space_describes_a_tablet() {
        let mut t = Tablet::new();
        assert_eq!(query(&mut t, CFG_ID_NAME, 0), b"QEMU Virtio Tablet");
        let abs = query(&mut t, CFG_EV_BITS, EV_ABS as u8);
        assert_eq!(abs, [0b11]);
        let keys = query(&mut t, CFG_EV_BITS, EV_KEY as u8);
        assert_eq!(keys.len(), 0x112 / 8 + 1);
        assert_eq!(keys[0x110 / 8], 0b111);
        let info = query(&mut t, CFG_ABS_INFO, 1);
        assert_eq!(u32::from_le_bytes(info[4..8].try_into().unwrap()), 0x7fff);
        assert!(query(&mut t, 0x7f, 0).is_empty());
    }

    #[test]
    fn a_query_in_progress_answers_the_same_after_restore() {
        let mut t = Tablet::new();
        t.config_write(0, &[CFG_EV_BITS, EV_KEY as u8]);
        let back = crate::check_roundtrip(&t, Tablet::new());
        let read = |t: &Tablet| {
            let mut b = vec![0u8; 136];
            t.config_read(0, &mut b);
            b
        };
        assert_eq!(read(&back), read(&t));
        assert_eq!(read(&back)[2], (BTN_MIDDLE / 8 + 1) as u8);
    }

    #[test]
    fn a_click_at_the_centre_is_abs_then_key_then_syn() {
        let e = pointer_events(400, 300, 800, 600, 1, 0, 0);
        assert_eq!(e[0], event(EV_ABS, 0, 0x3fff));
        assert_eq!(e[1], event(EV_ABS, 1, 0x3fff));
        assert_eq!(e[2], event(EV_KEY, BTN_LEFT, 1));
        assert_eq!(e[3], event(EV_SYN, 0, 0));
        assert_eq!(pointer_events(0, 0, 800, 600, 1, 1, 0).len(), 3);
    }
}
