use super::*;
use crate::memory::GuestMemoryMmap;
use crate::testing::FakeIrq;
use crate::usb::hid::Setup;

const FRAME_LIST: u64 = 0x1_0000;
const QH: u32 = 0x2_0000;
const TDS: u32 = 0x3_0000;
const BUFS: u32 = 0x4_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn w16(u: &mut Uhci, off: u64, v: u16) {
    u.io_write(off, &v.to_le_bytes());
}

fn r16(u: &mut Uhci, off: u64) -> u16 {
    let mut b = [0u8; 2];
    u.io_read(off, &mut b);
    u16::from_le_bytes(b)
}

fn r32(m: &GuestMemoryMmap, a: u32) -> u32 {
    m.read_obj(GuestAddress(u64::from(a))).unwrap()
}

fn put32(m: &GuestMemoryMmap, a: u32, v: u32) {
    m.write_obj(v, GuestAddress(u64::from(a))).unwrap();
}

/// A controller with `kind` on port 1, the port reset and enabled the way a driver does
/// it, every frame list entry pointing at one queue head (empty), the schedule running.
fn controller(kind: HidKind) -> (Uhci, Arc<FakeIrq>, GuestMemoryMmap) {
    let irq = Arc::new(FakeIrq::default());
    let mut u = Uhci::new(irq.clone());
    u.attach(Some(1), kind).unwrap();
    let m = mem();
    for i in 0..1024u64 {
        m.write_obj(QH | LINK_QH, GuestAddress(FRAME_LIST + 4 * i))
            .unwrap();
    }
    put32(&m, QH, LINK_TERMINATE);
    put32(&m, QH + 4, LINK_TERMINATE);
    w16(&mut u, reg::PORTSC1, PORT_PR);
    w16(&mut u, reg::PORTSC1, 0);
    w16(&mut u, reg::PORTSC1, PORT_PED);
    u.io_write(reg::FLBASEADD, &(FRAME_LIST as u32).to_le_bytes());
    w16(&mut u, reg::USBCMD, CMD_RS);
    (u, irq, m)
}

/// TD `i` in the TD area: (pid, device address, endpoint, max length, buffer), linked
/// depth first to TD `i + 1` unless it is the last.
fn td(m: &GuestMemoryMmap, i: u32, last: bool, ctrl: u32, token: (Pid, u8, u8, usize)) -> u32 {
    let a = TDS + 32 * i;
    let link = if last {
        LINK_TERMINATE
    } else {
        (TDS + 32 * (i + 1)) | LINK_DEPTH
    };
    let (pid, dev, ep, len) = token;
    let maxlen = (len as u32).wrapping_sub(1) & 0x7ff;
    put32(m, a, link);
    put32(m, a + 4, TD_ACTIVE | TD_CERR | ctrl);
    put32(
        m,
        a + 8,
        (maxlen << 21) | (u32::from(ep) << 15) | (u32::from(dev) << 8) | u32::from(pid.byte()),
    );
    put32(m, a + 12, BUFS + 0x100 * i);
    a
}

/// Queue a control read of `len` bytes (in 8-byte packets) on the QH; returns the TD
/// count.
fn control_read(m: &GuestMemoryMmap, dev: u8, setup: Setup, ioc_last: bool) -> u32 {
    m.write_slice(&setup.bytes(), GuestAddress(u64::from(BUFS)))
        .unwrap();
    td(m, 0, false, 0, (Pid::Setup, dev, 0, 8));
    let packets = usize::from(setup.length).div_ceil(8) as u32;
    for p in 0..packets {
        td(m, 1 + p, false, 0, (Pid::In, dev, 0, 8));
    }
    let n = packets + 2;
    td(
        m,
        n - 1,
        true,
        if ioc_last { TD_IOC } else { 0 },
        (Pid::Out, dev, 0, 0),
    );
    put32(m, QH + 4, TDS);
    n
}

fn get_descriptor(kind: u8, len: u16) -> Setup {
    Setup {
        request_type: 0x80,
        request: 6,
        value: u16::from(kind) << 8,
        index: 0,
        length: len,
    }
}

#[test]
fn registers_come_up_halted_with_the_device_connected() {
    let irq = Arc::new(FakeIrq::default());
    let mut u = Uhci::new(irq);
    assert_eq!(r16(&mut u, reg::USBSTS), STS_HALTED);
    assert_eq!(r16(&mut u, reg::PORTSC1), 0x0080);
    let mut sof = [0u8];
    u.io_read(reg::SOFMOD, &mut sof);
    assert_eq!(sof[0], 0x40);
    // No third port: bit 7 clear.
    assert_eq!(r16(&mut u, 0x14) & 0x80, 0);
    u.attach(None, HidKind::Keyboard).unwrap();
    assert_eq!(
        r16(&mut u, reg::PORTSC1),
        0x0083,
        "connected, change noticed"
    );
    assert_eq!(
        u.attach(Some(1), HidKind::Mouse),
        Err(UhciError::PortInUse(1))
    );
    assert_eq!(
        u.attach(Some(3), HidKind::Mouse),
        Err(UhciError::NoSuchPort(3))
    );
    assert_eq!(u.attach(None, HidKind::Mouse), Ok(2));
    assert_eq!(u.attach(None, HidKind::Mouse), Err(UhciError::Full));
    // The connect change clears when written with 1; enabling sets PED.
    w16(&mut u, reg::PORTSC1, PORT_CSC | PORT_PED);
    assert_eq!(r16(&mut u, reg::PORTSC1), 0x0085);
    // An empty port cannot be enabled.
    let mut e = Uhci::new(Arc::new(FakeIrq::default()));
    w16(&mut e, reg::PORTSC1 + 2, PORT_PED);
    assert_eq!(r16(&mut e, reg::PORTSC1 + 2) & PORT_PED, 0);
    // Run/stop and HCHalted.
    w16(&mut u, reg::USBCMD, CMD_RS);
    assert_eq!(r16(&mut u, reg::USBSTS) & STS_HALTED, 0);
    assert!(u.running());
    w16(&mut u, reg::USBCMD, 0);
    assert_eq!(r16(&mut u, reg::USBSTS) & STS_HALTED, STS_HALTED);
    // Host controller reset: ports back to connected-with-change, disabled.
    w16(&mut u, reg::USBCMD, CMD_HCRESET);
    assert_eq!(r16(&mut u, reg::USBCMD), 0);
    assert_eq!(r16(&mut u, reg::PORTSC1), 0x0083);
}

#[test]
fn a_control_read_runs_through_its_queue_in_one_frame() {
    let (mut u, irq, m) = controller(HidKind::Tablet);
    w16(&mut u, reg::USBINTR, INTR_IOC);
    let n = control_read(&m, 0, get_descriptor(1, 18), true);
    u.run_frame(&m);
    // Every TD retired without error; the queue is empty.
    for i in 0..n {
        let ctrl = r32(&m, TDS + 32 * i + 4);
        assert_eq!(
            ctrl & (TD_ACTIVE | TD_STALLED | TD_TIMEOUT),
            0,
            "TD {i}: {ctrl:#x}"
        );
    }
    assert_eq!(r32(&m, QH + 4), LINK_TERMINATE);
    // The data stage: 8 + 8 + 2 bytes, ActLen n - 1 (0x7ff for none).
    let actlen = |i: u32| r32(&m, TDS + 32 * i + 4) & TD_ACTLEN;
    assert_eq!(
        [actlen(0), actlen(1), actlen(2), actlen(3), actlen(4)],
        [7, 7, 7, 1, 0x7ff]
    );
    let mut got = Vec::new();
    for p in 0..3u32 {
        let mut b = vec![0u8; 8];
        m.read_slice(&mut b, GuestAddress(u64::from(BUFS + 0x100 * (1 + p))))
            .unwrap();
        got.extend_from_slice(&b);
    }
    let dev = u.device(1).unwrap().device_descriptor();
    assert_eq!(&got[..18], &dev[..]);
    // Interrupt on completion: USBINT and the line, until the driver acknowledges.
    assert_eq!(r16(&mut u, reg::USBSTS) & STS_USBINT, STS_USBINT);
    assert!(irq.is_high());
    w16(&mut u, reg::USBSTS, STS_USBINT);
    assert!(!irq.is_high());
    assert_eq!(r16(&mut u, reg::FRNUM), 1);
}

#[test]
fn interrupt_in_naks_until_the_tablet_moves_then_completes_with_the_report() {
    let (mut u, irq, m) = controller(HidKind::Tablet);
    w16(&mut u, reg::USBINTR, INTR_IOC);
    // SET_ADDRESS 2 and SET_CONFIGURATION 1 as control writes.
    for (req, value, dev) in [(5u8, 2u16, 0u8), (9, 1, 2)] {
        let s = Setup {
            request_type: 0,
            request: req,
            value,
            index: 0,
            length: 0,
        };
        m.write_slice(&s.bytes(), GuestAddress(u64::from(BUFS)))
            .unwrap();
        td(&m, 0, false, 0, (Pid::Setup, dev, 0, 8));
        td(&m, 1, true, 0, (Pid::In, dev, 0, 0));
        put32(&m, QH + 4, TDS);
        u.run_frame(&m);
        assert_eq!(r32(&m, QH + 4), LINK_TERMINATE);
    }
    assert_eq!(u.device(1).unwrap().address(), 2);
    // Nothing yet: NAK, the TD stays active and the queue waits on it.
    td(&m, 0, true, TD_IOC, (Pid::In, 2, 1, 8));
    put32(&m, QH + 4, TDS);
    for _ in 0..3 {
        u.run_frame(&m);
    }
    let ctrl = r32(&m, TDS + 4);
    assert_eq!(ctrl & (TD_ACTIVE | TD_NAK), TD_ACTIVE | TD_NAK);
    assert_eq!(r32(&m, QH + 4), TDS);
    assert!(!irq.is_high());
    u.device_mut(1).unwrap().pointer_abs(0x1000, 0x7fff, 4, 0);
    u.run_frame(&m);
    let ctrl = r32(&m, TDS + 4);
    assert_eq!(ctrl & TD_ACTIVE, 0);
    assert_eq!(ctrl & TD_ACTLEN, 5);
    let mut b = [0u8; 6];
    m.read_slice(&mut b, GuestAddress(u64::from(BUFS))).unwrap();
    assert_eq!(b, [4, 0x00, 0x10, 0xff, 0x7f, 0]);
    assert!(irq.is_high());
}

#[test]
fn no_device_at_the_address_is_a_timeout_and_stops_the_queue() {
    let (mut u, irq, m) = controller(HidKind::Mouse);
    w16(&mut u, reg::USBINTR, INTR_TIMEOUT_CRC);
    control_read(&m, 9, get_descriptor(1, 8), false);
    u.run_frame(&m);
    let ctrl = r32(&m, TDS + 4);
    assert_eq!(ctrl & (TD_ACTIVE | TD_TIMEOUT), TD_TIMEOUT);
    assert_eq!(
        r32(&m, TDS + 32 + 4) & TD_ACTIVE,
        TD_ACTIVE,
        "the rest wait"
    );
    assert_eq!(r32(&m, QH + 4), TDS, "the queue stays at the failed TD");
    assert_eq!(r16(&mut u, reg::USBSTS) & STS_ERROR, STS_ERROR);
    assert!(irq.is_high());
}

#[test]
fn a_disabled_port_answers_nothing() {
    let (mut u, _irq, m) = controller(HidKind::Keyboard);
    w16(&mut u, reg::PORTSC1, 0);
    control_read(&m, 0, get_descriptor(1, 8), false);
    u.run_frame(&m);
    assert_eq!(r32(&m, TDS + 4) & TD_TIMEOUT, TD_TIMEOUT);
}

#[test]
fn a_stalled_request_marks_its_td() {
    let (mut u, _irq, m) = controller(HidKind::Keyboard);
    control_read(&m, 0, get_descriptor(7, 8), false);
    u.run_frame(&m);
    assert_eq!(r32(&m, TDS + 4) & TD_ACTIVE, 0, "SETUP is always taken");
    let data = r32(&m, TDS + 32 + 4);
    assert_eq!(data & (TD_ACTIVE | TD_STALLED), TD_STALLED);
}

#[test]
fn a_short_packet_with_spd_leaves_the_queue_on_its_td() {
    let (mut u, _irq, m) = controller(HidKind::Tablet);
    w16(&mut u, reg::USBINTR, INTR_SHORT);
    // Ask for 16 bytes of the 18-byte device descriptor in one 64-byte IN.
    let s = get_descriptor(1, 16);
    m.write_slice(&s.bytes(), GuestAddress(u64::from(BUFS)))
        .unwrap();
    td(&m, 0, false, 0, (Pid::Setup, 0, 0, 8));
    td(&m, 1, false, TD_SPD, (Pid::In, 0, 0, 64));
    td(&m, 2, true, 0, (Pid::Out, 0, 0, 0));
    put32(&m, QH + 4, TDS);
    u.run_frame(&m);
    assert_eq!(r32(&m, TDS + 32 + 4) & (TD_ACTIVE | TD_ACTLEN), 15);
    assert_eq!(r32(&m, QH + 4), TDS + 32 | LINK_DEPTH);
    assert_eq!(r32(&m, TDS + 64 + 4) & TD_ACTIVE, TD_ACTIVE);
    assert_eq!(r16(&mut u, reg::USBSTS) & STS_USBINT, STS_USBINT);
}

#[test]
fn a_schedule_that_loops_ends_the_frame() {
    let (mut u, _irq, m) = controller(HidKind::Tablet);
    // The QH links back to itself horizontally; a second QH loops through a TD chain
    // that links back to its own start.
    put32(&m, QH, QH | LINK_QH);
    put32(&m, QH + 4, TDS);
    td(&m, 0, false, 0, (Pid::In, 0, 1, 8));
    put32(&m, TDS, TDS | LINK_DEPTH);
    u.run_frame(&m);
    u.run_frame(&m);
    assert_eq!(r16(&mut u, reg::FRNUM), 2);
    // Garbage: a frame list outside memory halts the controller with a host error.
    u.io_write(reg::FLBASEADD, &0xfff0_0000u32.to_le_bytes());
    u.run_frame(&m);
    assert!(!u.running());
    assert_eq!(
        r16(&mut u, reg::USBSTS) & (STS_HSE | STS_HALTED),
        STS_HSE | STS_HALTED
    );
}

#[test]
fn port_reset_gives_the_device_address_zero() {
    let (mut u, _irq, m) = controller(HidKind::Keyboard);
    let s = Setup {
        request_type: 0,
        request: 5,
        value: 7,
        index: 0,
        length: 0,
    };
    m.write_slice(&s.bytes(), GuestAddress(u64::from(BUFS)))
        .unwrap();
    td(&m, 0, false, 0, (Pid::Setup, 0, 0, 8));
    td(&m, 1, true, 0, (Pid::In, 0, 0, 0));
    put32(&m, QH + 4, TDS);
    u.run_frame(&m);
    assert_eq!(u.device(1).unwrap().address(), 7);
    w16(&mut u, reg::PORTSC1, PORT_PR | PORT_PED);
    assert_eq!(u.device(1).unwrap().address(), 0);
}

#[test]
fn state_round_trips() {
    let (mut u, _irq, m) = controller(HidKind::Tablet);
    w16(&mut u, reg::USBINTR, INTR_IOC);
    control_read(&m, 0, get_descriptor(2, 9), true);
    u.run_frame(&m);
    let mut fresh = Uhci::new(Arc::new(FakeIrq::default()));
    fresh.attach(Some(1), HidKind::Tablet).unwrap();
    let mut back = crate::check_roundtrip(&u, fresh);
    assert_eq!(r16(&mut back, reg::FRNUM), 1);
    assert_eq!(back.port_status(1), u.port_status(1));
    // A controller with other devices refuses the state.
    let mut other = Uhci::new(Arc::new(FakeIrq::default()));
    other.attach(Some(1), HidKind::Mouse).unwrap();
    assert!(crate::restore_section(&mut other, &crate::save_section("usb", &u)).is_err());
}

#[test]
fn random_register_and_schedule_traffic_never_panics() {
    let (mut u, _irq, m) = controller(HidKind::Keyboard);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..20_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % 0x24;
        let len = [1usize, 2, 4][(x >> 8) as usize % 3];
        let v = (x >> 16) as u32;
        if x & 1 == 0 {
            u.io_write(off, &v.to_le_bytes()[..len]);
        } else {
            let mut b = [0u8; 4];
            u.io_read(off, &mut b[..len]);
        }
        // Scribble on the schedule too.
        put32(&m, TDS + 4 * (i % 64), (x >> 32) as u32);
        put32(&m, QH + 4, TDS | ((x >> 40) as u32 & 7));
        w16(&mut u, reg::USBCMD, CMD_RS);
        u.io_write(reg::FLBASEADD, &(FRAME_LIST as u32).to_le_bytes());
        u.run_frame(&m);
    }
}

#[test]
fn an_inactive_td_holds_its_queue_until_the_driver_activates_it() {
    // SeaBIOS points the queue at zeroed TDs first and fills them in after: the queue
    // must still point at the first when it becomes active.
    let (mut u, _irq, m) = controller(HidKind::Keyboard);
    for i in 0..4u32 {
        for w in 0..4 {
            put32(&m, TDS + 32 * i + 4 * w, 0);
        }
    }
    put32(&m, QH + 4, TDS);
    u.run_frame(&m);
    assert_eq!(r32(&m, QH + 4), TDS);
    let n = control_read(&m, 0, get_descriptor(1, 8), false);
    u.run_frame(&m);
    assert_eq!(r32(&m, TDS + 32 * (n - 1) + 4) & TD_ACTIVE, 0);
    assert_eq!(r32(&m, QH + 4), LINK_TERMINATE);
}
