//! USB HID devices as QEMU presents them: `usb-tablet` (absolute pointer, 0..0x7fff on
//! both axes), `usb-mouse` (relative, boot protocol) and `usb-kbd` (boot keyboard).
//!
//! Each is a full-speed function with the default control pipe (endpoint 0) and one
//! interrupt-IN endpoint (endpoint 1). Endpoint 0 answers the standard requests a host
//! enumerates with (USB 1.1 §9.4) and the HID class requests (HID 1.11 §7.2); endpoint 1
//! returns the current input report when it changed since the last one taken and NAKs
//! otherwise. The descriptors (ids 0627:0001, strings, report layouts) are QEMU's, so a
//! guest driver sees the same device under troupe as under QEMU.

use serde::{Deserialize, Serialize};

use super::{Packet, Pid, Reply};
use crate::i8042::KeyCode;

/// Which HID device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HidKind {
    Tablet,
    Mouse,
    Keyboard,
}

impl HidKind {
    /// The `-device` driver name.
    pub fn driver(self) -> &'static str {
        match self {
            HidKind::Tablet => "usb-tablet",
            HidKind::Mouse => "usb-mouse",
            HidKind::Keyboard => "usb-kbd",
        }
    }

    /// The product string (`info usb`).
    pub fn product(self) -> &'static str {
        match self {
            HidKind::Tablet => "QEMU USB Tablet",
            HidKind::Mouse => "QEMU USB Mouse",
            HidKind::Keyboard => "QEMU USB Keyboard",
        }
    }

    /// The name `info mice` / `query-mice` show for a pointing device.
    pub fn mouse_name(self) -> Option<&'static str> {
        match self {
            HidKind::Tablet => Some("QEMU HID Tablet"),
            HidKind::Mouse => Some("QEMU HID Mouse"),
            HidKind::Keyboard => None,
        }
    }

    /// The HID report descriptor (HID 1.11 §6.2.2), QEMU's layout.
    pub fn report_descriptor(self) -> &'static [u8] {
        match self {
            HidKind::Tablet => TABLET_REPORT,
            HidKind::Mouse => MOUSE_REPORT,
            HidKind::Keyboard => KEYBOARD_REPORT,
        }
    }

    fn product_string(self) -> u8 {
        match self {
            HidKind::Mouse => STR_PRODUCT_MOUSE,
            HidKind::Tablet => STR_PRODUCT_TABLET,
            HidKind::Keyboard => STR_PRODUCT_KEYBOARD,
        }
    }

    fn serial_string(self) -> u8 {
        match self {
            HidKind::Mouse => STR_SERIAL_MOUSE,
            HidKind::Tablet => STR_SERIAL_TABLET,
            HidKind::Keyboard => STR_SERIAL_KEYBOARD,
        }
    }

    fn config_string(self) -> u8 {
        match self {
            HidKind::Mouse => STR_CONFIG_MOUSE,
            HidKind::Tablet => STR_CONFIG_TABLET,
            HidKind::Keyboard => STR_CONFIG_KEYBOARD,
        }
    }

    /// The interrupt endpoint's wMaxPacketSize.
    fn max_packet(self) -> u8 {
        match self {
            HidKind::Mouse => 4,
            HidKind::Tablet | HidKind::Keyboard => 8,
        }
    }
}

/// QEMU's vendor and product ids for its HID devices.
pub const VENDOR: u16 = 0x0627;
pub const PRODUCT: u16 = 0x0001;

// String indexes, as QEMU 7.2's HID devices number them.
const STR_MANUFACTURER: u8 = 1;
const STR_PRODUCT_MOUSE: u8 = 2;
const STR_PRODUCT_TABLET: u8 = 3;
const STR_PRODUCT_KEYBOARD: u8 = 4;
const STR_CONFIG_MOUSE: u8 = 6;
const STR_CONFIG_TABLET: u8 = 7;
const STR_CONFIG_KEYBOARD: u8 = 8;
const STR_SERIAL_MOUSE: u8 = 9;
const STR_SERIAL_TABLET: u8 = 10;
const STR_SERIAL_KEYBOARD: u8 = 11;

fn string(index: u8) -> Option<&'static str> {
    Some(match index {
        STR_MANUFACTURER => "QEMU",
        STR_PRODUCT_MOUSE => "QEMU USB Mouse",
        STR_PRODUCT_TABLET => "QEMU USB Tablet",
        STR_PRODUCT_KEYBOARD => "QEMU USB Keyboard",
        STR_SERIAL_MOUSE => "89126",
        STR_SERIAL_TABLET => "28754",
        STR_SERIAL_KEYBOARD => "68284",
        STR_CONFIG_MOUSE => "HID Mouse",
        STR_CONFIG_TABLET => "HID Tablet",
        STR_CONFIG_KEYBOARD => "HID Keyboard",
        _ => return None,
    })
}

// Report descriptor items (HID 1.11 §6.2.2.4-7): each line is one item.
// Mouse: 5 buttons, 3 bits padding, X/Y/wheel as 8-bit signed relative values.
const MOUSE_REPORT: &[u8] = &[
    0x05, 0x01, // usage page: generic desktop
    0x09, 0x02, // usage: mouse
    0xa1, 0x01, // collection: application
    0x09, 0x01, //   usage: pointer
    0xa1, 0x00, //   collection: physical
    0x05, 0x09, //     usage page: buttons
    0x19, 0x01, //     usage minimum 1
    0x29, 0x05, //     usage maximum 5
    0x15, 0x00, //     logical minimum 0
    0x25, 0x01, //     logical maximum 1
    0x95, 0x05, //     report count 5
    0x75, 0x01, //     report size 1
    0x81, 0x02, //     input: data, variable, absolute
    0x95, 0x01, //     report count 1
    0x75, 0x03, //     report size 3
    0x81, 0x01, //     input: constant
    0x05, 0x01, //     usage page: generic desktop
    0x09, 0x30, //     usage: X
    0x09, 0x31, //     usage: Y
    0x09, 0x38, //     usage: wheel
    0x15, 0x81, //     logical minimum -127
    0x25, 0x7f, //     logical maximum 127
    0x75, 0x08, //     report size 8
    0x95, 0x03, //     report count 3
    0x81, 0x06, //     input: data, variable, relative
    0xc0, //   end collection
    0xc0, // end collection
];

// Tablet: 3 buttons, padding, X/Y as 16-bit absolute values 0..0x7fff, a relative wheel.
const TABLET_REPORT: &[u8] = &[
    0x05, 0x01, // usage page: generic desktop
    0x09, 0x02, // usage: mouse
    0xa1, 0x01, // collection: application
    0x09, 0x01, //   usage: pointer
    0xa1, 0x00, //   collection: physical
    0x05, 0x09, //     usage page: buttons
    0x19, 0x01, //     usage minimum 1
    0x29, 0x03, //     usage maximum 3
    0x15, 0x00, //     logical minimum 0
    0x25, 0x01, //     logical maximum 1
    0x95, 0x03, //     report count 3
    0x75, 0x01, //     report size 1
    0x81, 0x02, //     input: data, variable, absolute
    0x95, 0x01, //     report count 1
    0x75, 0x05, //     report size 5
    0x81, 0x01, //     input: constant
    0x05, 0x01, //     usage page: generic desktop
    0x09, 0x30, //     usage: X
    0x09, 0x31, //     usage: Y
    0x15, 0x00, //     logical minimum 0
    0x26, 0xff, 0x7f, // logical maximum 0x7fff
    0x35, 0x00, //     physical minimum 0
    0x46, 0xff, 0x7f, // physical maximum 0x7fff
    0x75, 0x10, //     report size 16
    0x95, 0x02, //     report count 2
    0x81, 0x02, //     input: data, variable, absolute
    0x05, 0x01, //     usage page: generic desktop
    0x09, 0x38, //     usage: wheel
    0x15, 0x81, //     logical minimum -127
    0x25, 0x7f, //     logical maximum 127
    0x35, 0x00, //     physical minimum 0
    0x45, 0x00, //     physical maximum 0
    0x75, 0x08, //     report size 8
    0x95, 0x01, //     report count 1
    0x81, 0x06, //     input: data, variable, relative
    0xc0, //   end collection
    0xc0, // end collection
];

// Keyboard (HID 1.11 appendix B.1 boot layout): modifiers, a reserved byte, five LED
// outputs and padding, six key codes.
const KEYBOARD_REPORT: &[u8] = &[
    0x05, 0x01, // usage page: generic desktop
    0x09, 0x06, // usage: keyboard
    0xa1, 0x01, // collection: application
    0x75, 0x01, //   report size 1
    0x95, 0x08, //   report count 8
    0x05, 0x07, //   usage page: key codes
    0x19, 0xe0, //   usage minimum 224
    0x29, 0xe7, //   usage maximum 231
    0x15, 0x00, //   logical minimum 0
    0x25, 0x01, //   logical maximum 1
    0x81, 0x02, //   input: data, variable, absolute (modifiers)
    0x95, 0x01, //   report count 1
    0x75, 0x08, //   report size 8
    0x81, 0x01, //   input: constant (reserved)
    0x95, 0x05, //   report count 5
    0x75, 0x01, //   report size 1
    0x05, 0x08, //   usage page: LEDs
    0x19, 0x01, //   usage minimum 1
    0x29, 0x05, //   usage maximum 5
    0x91, 0x02, //   output: data, variable, absolute
    0x95, 0x01, //   report count 1
    0x75, 0x03, //   report size 3
    0x91, 0x01, //   output: constant
    0x95, 0x06, //   report count 6
    0x75, 0x08, //   report size 8
    0x15, 0x00, //   logical minimum 0
    0x25, 0xff, //   logical maximum 255
    0x05, 0x07, //   usage page: key codes
    0x19, 0x00, //   usage minimum 0
    0x29, 0xff, //   usage maximum 255
    0x81, 0x00, //   input: data, array
    0xc0, // end collection
];

/// Standard request codes (USB 1.1 §9.4, table 9-4).
mod req {
    pub const GET_STATUS: u8 = 0;
    pub const CLEAR_FEATURE: u8 = 1;
    pub const SET_FEATURE: u8 = 3;
    pub const SET_ADDRESS: u8 = 5;
    pub const GET_DESCRIPTOR: u8 = 6;
    pub const GET_CONFIGURATION: u8 = 8;
    pub const SET_CONFIGURATION: u8 = 9;
    pub const GET_INTERFACE: u8 = 10;
    pub const SET_INTERFACE: u8 = 11;
    // HID class requests (HID 1.11 §7.2).
    pub const GET_REPORT: u8 = 1;
    pub const GET_IDLE: u8 = 2;
    pub const GET_PROTOCOL: u8 = 3;
    pub const SET_REPORT: u8 = 9;
    pub const SET_IDLE: u8 = 10;
    pub const SET_PROTOCOL: u8 = 11;
}

/// Descriptor types (USB 1.1 table 9-5; HID 1.11 §7.1).
const DT_DEVICE: u8 = 1;
const DT_CONFIG: u8 = 2;
const DT_STRING: u8 = 3;
const DT_INTERFACE: u8 = 4;
const DT_ENDPOINT: u8 = 5;
const DT_HID: u8 = 0x21;
const DT_REPORT: u8 = 0x22;

/// The 8-byte SETUP packet (USB 1.1 §9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
    pub length: u16,
}

impl Setup {
    pub fn parse(b: &[u8]) -> Option<Setup> {
        let b: &[u8; 8] = b.get(..8)?.try_into().ok()?;
        Some(Setup {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        })
    }

    pub fn bytes(&self) -> [u8; 8] {
        let [v0, v1] = self.value.to_le_bytes();
        let [i0, i1] = self.index.to_le_bytes();
        let [l0, l1] = self.length.to_le_bytes();
        [self.request_type, self.request, v0, v1, i0, i1, l0, l1]
    }

    fn device_to_host(&self) -> bool {
        self.request_type & 0x80 != 0
    }
}

/// Where endpoint 0's control transfer stands (USB 1.1 §8.5.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Control {
    Idle,
    /// Data stage IN: the answer and how much of it the host has taken.
    DataIn {
        data: Vec<u8>,
        taken: usize,
    },
    /// Data stage OUT: the request and the bytes received so far.
    DataOut {
        setup: Setup,
        data: Vec<u8>,
    },
    /// The request is done; the host's zero-length IN ends it.
    StatusIn,
    /// The request was refused: the next data or status transaction stalls.
    Stalled,
}

/// The input state behind the reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct InputState {
    /// HID buttons: bit 0 left, 1 right, 2 middle.
    buttons: u8,
    /// Tablet position, 0..=0x7fff.
    x: u16,
    y: u16,
    /// Relative motion and wheel not yet reported (mouse; wheel for the tablet too).
    dx: i32,
    dy: i32,
    dz: i32,
    /// Keyboard: modifier bits and the usages of the other keys held, in press order.
    modifiers: u8,
    keys: Vec<u8>,
    /// LEDs the host set (SET_REPORT output: bit 0 num lock, 1 caps lock, 2 scroll lock).
    leds: u8,
    /// Something changed since the last report taken.
    changed: bool,
}

/// One HID device: its USB state (address, configuration, control transfer in flight)
/// and its input state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HidDevice {
    kind: HidKind,
    address: u8,
    /// Taken at the end of SET_ADDRESS's status stage (USB 1.1 §9.4.6).
    pending_address: Option<u8>,
    configuration: u8,
    /// 0 boot protocol, 1 report protocol (the default after reset).
    protocol: u8,
    idle: u8,
    control: Control,
    input: InputState,
    /// Where it is plugged in (`0000:00:01.2-1`: the controller's PCI address, the
    /// port), which QEMU appends to the serial number string.
    location: String,
}

impl HidDevice {
    pub fn new(kind: HidKind) -> Self {
        Self {
            kind,
            address: 0,
            pending_address: None,
            configuration: 0,
            protocol: 1,
            idle: 0,
            control: Control::Idle,
            input: InputState::default(),
            location: String::new(),
        }
    }

    pub fn kind(&self) -> HidKind {
        self.kind
    }

    /// Plugged in at `location` (`0000:00:01.2-1`), part of its serial number string.
    pub fn set_location(&mut self, location: &str) {
        self.location = location.to_string();
    }

    /// The address the host gave it (0 until SET_ADDRESS).
    pub fn address(&self) -> u8 {
        self.address
    }

    /// The configuration the host selected (0: unconfigured).
    pub fn configuration(&self) -> u8 {
        self.configuration
    }

    /// Keyboard LEDs the host set (bit 0 num lock, 1 caps lock, 2 scroll lock).
    pub fn leds(&self) -> u8 {
        self.input.leds
    }

    /// A bus reset (port reset): back to the default state at address 0; held input
    /// stays (a key still down is still down).
    pub fn bus_reset(&mut self) {
        self.address = 0;
        self.pending_address = None;
        self.configuration = 0;
        self.protocol = 1;
        self.idle = 0;
        self.control = Control::Idle;
        self.input.dx = 0;
        self.input.dy = 0;
        self.input.dz = 0;
        self.input.changed = false;
    }

    // ---- input ----

    /// Tablet: the pointer is at (`x`, `y`) in 0..=0x7fff, `buttons` held (bit 0 left,
    /// 1 right, 2 middle), the wheel turned `dz` notches (positive: away from the user).
    pub fn pointer_abs(&mut self, x: u16, y: u16, buttons: u8, dz: i32) {
        let s = &mut self.input;
        let (x, y, buttons) = (x.min(0x7fff), y.min(0x7fff), buttons & 7);
        if (s.x, s.y, s.buttons) != (x, y, buttons) || dz != 0 {
            s.x = x;
            s.y = y;
            s.buttons = buttons;
            s.dz = s.dz.saturating_add(dz);
            s.changed = true;
        }
    }

    /// Mouse: relative motion (screen convention, +dy is down), wheel, buttons held.
    pub fn pointer_rel(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        let s = &mut self.input;
        let buttons = buttons & 7;
        if dx != 0 || dy != 0 || dz != 0 || s.buttons != buttons {
            s.dx = s.dx.saturating_add(dx);
            s.dy = s.dy.saturating_add(dy);
            s.dz = s.dz.saturating_add(dz);
            s.buttons = buttons;
            s.changed = true;
        }
    }

    /// Keyboard: `key` went down or up. Keys with no HID usage are ignored.
    pub fn key(&mut self, key: KeyCode, down: bool) {
        let Some(usage) = hid_usage(key.number()) else {
            return;
        };
        let s = &mut self.input;
        if (0xe0..=0xe7).contains(&usage) {
            let bit = 1 << (usage - 0xe0);
            let m = if down {
                s.modifiers | bit
            } else {
                s.modifiers & !bit
            };
            s.changed |= m != s.modifiers;
            s.modifiers = m;
            return;
        }
        let held = s.keys.iter().position(|k| *k == usage);
        match (down, held) {
            // Bounded: the report has room for six, more is a rollover error.
            (true, None) if s.keys.len() < 16 => {
                s.keys.push(usage);
                s.changed = true;
            }
            (false, Some(i)) => {
                s.keys.remove(i);
                s.changed = true;
            }
            _ => {}
        }
    }

    /// The current input report (HID 1.11 appendix B for the boot layouts), taking the
    /// relative motion it reports.
    fn take_report(&mut self) -> Vec<u8> {
        let s = &mut self.input;
        let clamp = |v: &mut i32| -> u8 {
            let r = (*v).clamp(-127, 127);
            *v -= r;
            r as i8 as u8
        };
        let r = match self.kind {
            HidKind::Mouse => {
                vec![
                    s.buttons,
                    clamp(&mut s.dx),
                    clamp(&mut s.dy),
                    clamp(&mut s.dz),
                ]
            }
            HidKind::Tablet => {
                let [x0, x1] = s.x.to_le_bytes();
                let [y0, y1] = s.y.to_le_bytes();
                vec![s.buttons, x0, x1, y0, y1, clamp(&mut s.dz)]
            }
            HidKind::Keyboard => {
                let mut r = vec![s.modifiers, 0, 0, 0, 0, 0, 0, 0];
                if s.keys.len() > 6 {
                    // Phantom state: too many keys (HID 1.11 appendix C).
                    r[2..].fill(0x01);
                } else {
                    r[2..2 + s.keys.len()].copy_from_slice(&s.keys);
                }
                r
            }
        };
        s.changed = s.dx != 0 || s.dy != 0 || s.dz != 0;
        r
    }

    // ---- descriptors ----

    /// The device descriptor (USB 1.1 §9.6.1).
    pub fn device_descriptor(&self) -> Vec<u8> {
        let [v0, v1] = VENDOR.to_le_bytes();
        let [p0, p1] = PRODUCT.to_le_bytes();
        vec![
            18,
            DT_DEVICE,
            0x00,
            0x02, // bcdUSB 2.0, as QEMU's HID devices say
            0,
            0,
            0,
            8, // bMaxPacketSize0
            v0,
            v1,
            p0,
            p1,
            0,
            0, // bcdDevice
            STR_MANUFACTURER,
            self.kind.product_string(),
            self.kind.serial_string(),
            1, // bNumConfigurations
        ]
    }

    /// The HID class descriptor (HID 1.11 §6.2.1).
    fn hid_descriptor(&self) -> [u8; 9] {
        // bcdHID: 1.11 for the keyboard; the others say 0.01, as QEMU's do.
        let bcd = match self.kind {
            HidKind::Keyboard => [0x11, 0x01],
            _ => [0x01, 0x00],
        };
        let [l0, l1] = (self.kind.report_descriptor().len() as u16).to_le_bytes();
        [9, DT_HID, bcd[0], bcd[1], 0, 1, DT_REPORT, l0, l1]
    }

    /// The configuration descriptor with its interface, HID and endpoint descriptors
    /// (USB 1.1 §9.6.2-4).
    pub fn config_descriptor(&self) -> Vec<u8> {
        // Boot interface subclass and protocol: the tablet is no boot device.
        let (subclass, protocol) = match self.kind {
            HidKind::Mouse => (1, 2),
            HidKind::Tablet => (0, 0),
            HidKind::Keyboard => (1, 1),
        };
        let mut d = vec![
            9,
            DT_CONFIG,
            0,
            0, // wTotalLength, below
            1, // bNumInterfaces
            1, // bConfigurationValue
            self.kind.config_string(),
            0xa0, // bus powered, remote wakeup
            50,   // 100 mA
        ];
        d.extend_from_slice(&[9, DT_INTERFACE, 0, 0, 1, 3, subclass, protocol, 0]);
        d.extend_from_slice(&self.hid_descriptor());
        d.extend_from_slice(&[7, DT_ENDPOINT, 0x81, 3, self.kind.max_packet(), 0, 0x0a]);
        let [t0, t1] = (d.len() as u16).to_le_bytes();
        d[2] = t0;
        d[3] = t1;
        d
    }

    /// String descriptor `index` (0: the language list, US English). The serial number
    /// is QEMU's: the device's number, then where it is plugged in.
    pub fn string_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        if index == 0 {
            return Some(vec![4, DT_STRING, 0x09, 0x04]);
        }
        let mut s = string(index)?.to_string();
        if index == self.kind.serial_string() && !self.location.is_empty() {
            s = format!("{s}-{}", self.location);
        }
        let mut d = vec![0, DT_STRING];
        for u in s.encode_utf16() {
            d.extend_from_slice(&u.to_le_bytes());
        }
        d[0] = d.len() as u8;
        Some(d)
    }

    // ---- transactions ----

    /// One transaction addressed to this device.
    pub fn handle(&mut self, p: Packet<'_>) -> Reply {
        match (p.endpoint, p.pid) {
            (0, Pid::Setup) => {
                let Some(setup) = Setup::parse(p.data) else {
                    self.control = Control::Stalled;
                    return Reply::Stall;
                };
                self.setup(setup);
                Reply::Ack(8)
            }
            (0, Pid::In) => self.control_in(p.data),
            (0, Pid::Out) => self.control_out(p.data),
            (1, Pid::In) => {
                if self.configuration == 0 || !self.input.changed {
                    return Reply::Nak;
                }
                let r = self.take_report();
                let n = r.len().min(p.data.len());
                p.data[..n].copy_from_slice(&r[..n]);
                Reply::Ack(n)
            }
            _ => Reply::Stall,
        }
    }

    fn setup(&mut self, s: Setup) {
        self.pending_address = None;
        self.control = if s.device_to_host() {
            match self.answer(&s) {
                Some(mut data) => {
                    data.truncate(usize::from(s.length));
                    Control::DataIn { data, taken: 0 }
                }
                None => Control::Stalled,
            }
        } else if s.length == 0 {
            if self.execute(&s, &[]) {
                Control::StatusIn
            } else {
                Control::Stalled
            }
        } else {
            Control::DataOut {
                setup: s,
                data: Vec::new(),
            }
        };
    }

    fn control_in(&mut self, buf: &mut [u8]) -> Reply {
        match &mut self.control {
            Control::DataIn { data, taken } => {
                let n = (data.len() - *taken).min(buf.len());
                buf[..n].copy_from_slice(&data[*taken..*taken + n]);
                *taken += n;
                Reply::Ack(n)
            }
            Control::StatusIn => {
                if let Some(a) = self.pending_address.take() {
                    self.address = a;
                }
                self.control = Control::Idle;
                Reply::Ack(0)
            }
            Control::Idle | Control::DataOut { .. } | Control::Stalled => Reply::Stall,
        }
    }

    fn control_out(&mut self, buf: &[u8]) -> Reply {
        match &mut self.control {
            // The status stage of a read (or the host giving up early).
            Control::DataIn { .. } => {
                self.control = Control::Idle;
                Reply::Ack(0)
            }
            Control::DataOut { setup, data } => {
                data.extend_from_slice(buf);
                let n = buf.len();
                if data.len() >= usize::from(setup.length) {
                    let (s, d) = (*setup, std::mem::take(data));
                    self.control = if self.execute(&s, &d) {
                        Control::StatusIn
                    } else {
                        Control::Stalled
                    };
                }
                Reply::Ack(n)
            }
            Control::Idle | Control::StatusIn | Control::Stalled => Reply::Stall,
        }
    }

    /// A device-to-host request's answer (before truncation to wLength); None stalls.
    fn answer(&self, s: &Setup) -> Option<Vec<u8>> {
        let [index, kind] = s.value.to_le_bytes();
        match (s.request_type, s.request) {
            (0x80, req::GET_DESCRIPTOR) => match kind {
                DT_DEVICE => Some(self.device_descriptor()),
                DT_CONFIG if index == 0 => Some(self.config_descriptor()),
                DT_STRING => self.string_descriptor(index),
                _ => None,
            },
            (0x81, req::GET_DESCRIPTOR) => match kind {
                DT_REPORT => Some(self.kind.report_descriptor().to_vec()),
                DT_HID => Some(self.hid_descriptor().to_vec()),
                _ => None,
            },
            (0x80, req::GET_STATUS) => Some(vec![0, 0]),
            (0x81 | 0x82, req::GET_STATUS) => Some(vec![0, 0]),
            (0x80, req::GET_CONFIGURATION) => Some(vec![self.configuration]),
            (0x81, req::GET_INTERFACE) => Some(vec![0]),
            (0xa1, req::GET_REPORT) => Some(self.clone().take_report()),
            (0xa1, req::GET_IDLE) => Some(vec![self.idle]),
            (0xa1, req::GET_PROTOCOL) => Some(vec![self.protocol]),
            _ => None,
        }
    }

    /// A host-to-device request with its data; false stalls.
    fn execute(&mut self, s: &Setup, data: &[u8]) -> bool {
        match (s.request_type, s.request) {
            (0x00, req::SET_ADDRESS) if s.value <= 127 => {
                self.pending_address = Some(s.value as u8);
                true
            }
            (0x00, req::SET_CONFIGURATION) if s.value <= 1 => {
                self.configuration = s.value as u8;
                true
            }
            (0x00..=0x02, req::CLEAR_FEATURE | req::SET_FEATURE) => true,
            (0x01, req::SET_INTERFACE) => s.value == 0,
            (0x21, req::SET_IDLE) => {
                self.idle = (s.value >> 8) as u8;
                true
            }
            (0x21, req::SET_PROTOCOL) if s.value <= 1 => {
                self.protocol = s.value as u8;
                true
            }
            (0x21, req::SET_REPORT) => {
                if self.kind == HidKind::Keyboard {
                    if let Some(&l) = data.first() {
                        self.input.leds = l;
                    }
                }
                true
            }
            _ => false,
        }
    }
}

/// The HID usage (HID Usage Tables 1.12 §10) of a key by QEMU key number (its set-1 make
/// code, the 0xE0 prefix folded into bit 7, as [`KeyCode::number`] gives it).
pub fn hid_usage(number: u16) -> Option<u8> {
    // Unprefixed make codes 0x00..=0x58 (0: none).
    const PLAIN: [u8; 0x59] = [
        0x00, 0x29, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, // -, esc, 1..6
        0x24, 0x25, 0x26, 0x27, 0x2d, 0x2e, 0x2a, 0x2b, // 7, 8, 9, 0, -, =, bksp, tab
        0x14, 0x1a, 0x08, 0x15, 0x17, 0x1c, 0x18, 0x0c, // q w e r t y u i
        0x12, 0x13, 0x2f, 0x30, 0x28, 0xe0, 0x04, 0x16, // o p [ ] enter lctrl a s
        0x07, 0x09, 0x0a, 0x0b, 0x0d, 0x0e, 0x0f, 0x33, // d f g h j k l ;
        0x34, 0x35, 0xe1, 0x31, 0x1d, 0x1b, 0x06, 0x19, // ' ` lshift \ z x c v
        0x05, 0x11, 0x10, 0x36, 0x37, 0x38, 0xe5, 0x55, // b n m , . / rshift kp*
        0xe2, 0x2c, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, // lalt space caps f1..f5
        0x3f, 0x40, 0x41, 0x42, 0x43, 0x53, 0x47, 0x5f, // f6..f10 numlock scroll kp7
        0x60, 0x61, 0x56, 0x5c, 0x5d, 0x5e, 0x57, 0x59, // kp8 kp9 kp- kp4 kp5 kp6 kp+ kp1
        0x5a, 0x5b, 0x62, 0x63, 0x00, 0x00, 0x64, 0x44, // kp2 kp3 kp0 kp. - - 102nd f11
        0x45, // f12
    ];
    let usage = if number & 0x80 == 0 {
        PLAIN.get(usize::from(number)).copied().unwrap_or(0)
    } else {
        match number & 0x7f {
            0x1c => 0x58, // keypad enter
            0x1d => 0xe4, // right ctrl
            0x35 => 0x54, // keypad /
            0x37 => 0x46, // print screen
            0x38 => 0xe6, // right alt
            0x46 => 0x48, // pause
            0x47 => 0x4a, // home
            0x48 => 0x52, // up
            0x49 => 0x4b, // page up
            0x4b => 0x50, // left
            0x4d => 0x4f, // right
            0x4f => 0x4d, // end
            0x50 => 0x51, // down
            0x51 => 0x4e, // page down
            0x52 => 0x49, // insert
            0x53 => 0x4c, // delete
            0x5b => 0xe3, // left GUI
            0x5c => 0xe7, // right GUI
            0x5d => 0x65, // menu
            _ => 0,
        }
    };
    (usage != 0).then_some(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn setup(d: &mut HidDevice, rt: u8, r: u8, value: u16, index: u16, length: u16) -> Reply {
        let mut b = Setup {
            request_type: rt,
            request: r,
            value,
            index,
            length,
        }
        .bytes();
        d.handle(Packet {
            pid: Pid::Setup,
            endpoint: 0,
            data: &mut b,
        })
    }

    fn input(d: &mut HidDevice, ep: u8, max: usize) -> (Reply, Vec<u8>) {
        let mut b = vec![0u8; max];
        let r = d.handle(Packet {
            pid: Pid::In,
            endpoint: ep,
            data: &mut b,
        });
        if let Reply::Ack(n) = r {
            b.truncate(n);
        }
        (r, b)
    }

    fn output(d: &mut HidDevice, data: &[u8]) -> Reply {
        let mut b = data.to_vec();
        d.handle(Packet {
            pid: Pid::Out,
            endpoint: 0,
            data: &mut b,
        })
    }

    /// A control read as a host does it: SETUP, IN packets of 8 until short, OUT status.
    fn control_read(
        d: &mut HidDevice,
        rt: u8,
        r: u8,
        value: u16,
        index: u16,
        len: u16,
    ) -> Option<Vec<u8>> {
        assert_eq!(setup(d, rt, r, value, index, len), Reply::Ack(8));
        let mut got = Vec::new();
        loop {
            match input(d, 0, 8) {
                (Reply::Ack(n), b) => {
                    got.extend_from_slice(&b);
                    if n < 8 {
                        break;
                    }
                }
                (Reply::Stall, _) => return None,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(output(d, &[]), Reply::Ack(0));
        Some(got)
    }

    fn control_write(d: &mut HidDevice, rt: u8, r: u8, value: u16, data: &[u8]) -> Reply {
        assert_eq!(setup(d, rt, r, value, 0, data.len() as u16), Reply::Ack(8));
        if !data.is_empty() {
            assert_eq!(output(d, data), Reply::Ack(data.len()));
        }
        input(d, 0, 8).0
    }

    fn configured(kind: HidKind) -> HidDevice {
        let mut d = HidDevice::new(kind);
        assert_eq!(
            control_write(&mut d, 0, req::SET_ADDRESS, 3, &[]),
            Reply::Ack(0)
        );
        assert_eq!(
            control_write(&mut d, 0, req::SET_CONFIGURATION, 1, &[]),
            Reply::Ack(0)
        );
        // Nothing happened yet: nothing to report (QEMU's devices NAK too).
        assert_eq!(input(&mut d, 1, 8).0, Reply::Nak);
        d
    }

    #[test]
    fn descriptors_are_qemus() {
        let d = HidDevice::new(HidKind::Tablet);
        // As QEMU 7.2's usb-tablet answers (read by the usb test guest under QEMU).
        assert_eq!(
            hex(&d.device_descriptor()),
            "120100020000000827060100000001030a01"
        );
        assert_eq!(
            hex(&d.config_descriptor()),
            "09022200010107a032090400000103000000092101000001224a000705810308000a"
        );
        assert_eq!(
            hex(HidKind::Tablet.report_descriptor()),
            "05010902a1010901a10005091901290315002501950375018102950175058101050109300931150026ff7f350046ff7f751095028102050109381581257f35004500750895018106c0c0"
        );
        let k = HidDevice::new(HidKind::Keyboard);
        assert_eq!(
            hex(&k.device_descriptor()),
            "120100020000000827060100000001040b01"
        );
        assert_eq!(
            hex(&k.config_descriptor()),
            "09022200010108a032090400000103010100092111010001223f000705810308000a"
        );
        assert_eq!(
            hex(HidKind::Keyboard.report_descriptor()),
            "05010906a10175019508050719e029e715002501810295017508810195057501050819012905910295017503910195067508150025ff0507190029ff8100c0"
        );
        let m = HidDevice::new(HidKind::Mouse);
        assert_eq!(
            hex(&m.device_descriptor()),
            "120100020000000827060100000001020901"
        );
        assert_eq!(
            hex(&m.config_descriptor()),
            "09022200010106a0320904000001030102000921010000012234000705810304000a"
        );
        assert_eq!(
            hex(HidKind::Mouse.report_descriptor()),
            "05010902a1010901a1000509190129051500250195057501810295017503810105010930093109381581257f750895038106c0c0"
        );
        assert_eq!(HidKind::Tablet.report_descriptor().len(), 74);
        assert_eq!(HidKind::Mouse.report_descriptor().len(), 52);
        assert_eq!(HidKind::Keyboard.report_descriptor().len(), 63);
    }

    #[test]
    fn enumeration_reads_descriptors_in_pieces_and_takes_the_address_after_status() {
        let mut d = HidDevice::new(HidKind::Keyboard);
        // A host first reads 8 bytes of the device descriptor to learn bMaxPacketSize0.
        let first = control_read(&mut d, 0x80, req::GET_DESCRIPTOR, 0x0100, 0, 8).unwrap();
        assert_eq!(first, [18, 1, 0, 2, 0, 0, 0, 8]);
        // SET_ADDRESS: the device answers at 0 until the status stage is over.
        assert_eq!(setup(&mut d, 0, req::SET_ADDRESS, 5, 0, 0), Reply::Ack(8));
        assert_eq!(d.address(), 0);
        assert_eq!(input(&mut d, 0, 8).0, Reply::Ack(0));
        assert_eq!(d.address(), 5);
        let full = control_read(&mut d, 0x80, req::GET_DESCRIPTOR, 0x0100, 0, 18).unwrap();
        assert_eq!(full, d.device_descriptor());
        // The configuration in 8-byte packets, then the whole of it.
        let head = control_read(&mut d, 0x80, req::GET_DESCRIPTOR, 0x0200, 0, 9).unwrap();
        assert_eq!(head[2], 34);
        let all = control_read(&mut d, 0x80, req::GET_DESCRIPTOR, 0x0200, 0, 255).unwrap();
        assert_eq!(all, d.config_descriptor());
        let product = control_read(&mut d, 0x80, req::GET_DESCRIPTOR, 0x0304, 0x409, 255).unwrap();
        let text: Vec<u16> = product[2..]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&text).unwrap(), "QEMU USB Keyboard");
        d.set_location("0000:00:01.2-1");
        let serial = control_read(&mut d, 0x80, req::GET_DESCRIPTOR, 0x030b, 0x409, 255).unwrap();
        let text: Vec<u16> = serial[2..]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&text).unwrap(), "68284-0000:00:01.2-1");
        assert_eq!(product[0] as usize, product.len());
        let report = control_read(&mut d, 0x81, req::GET_DESCRIPTOR, 0x2200, 0, 255).unwrap();
        assert_eq!(report, KEYBOARD_REPORT);
        // Unknown descriptors and requests stall.
        assert_eq!(
            control_read(&mut d, 0x80, req::GET_DESCRIPTOR, 0x0700, 0, 8),
            None
        );
        assert_eq!(control_write(&mut d, 0x40, 0x99, 0, &[]), Reply::Stall);
        // The pipe works again after a stall.
        assert_eq!(
            control_read(&mut d, 0x80, req::GET_CONFIGURATION, 0, 0, 1).unwrap(),
            [0]
        );
        assert_eq!(
            control_write(&mut d, 0, req::SET_CONFIGURATION, 1, &[]),
            Reply::Ack(0)
        );
        assert_eq!(d.configuration(), 1);
    }

    #[test]
    fn hid_class_requests() {
        let mut d = configured(HidKind::Keyboard);
        assert_eq!(
            control_write(&mut d, 0x21, req::SET_IDLE, 0x0000, &[]),
            Reply::Ack(0)
        );
        assert_eq!(
            control_write(&mut d, 0x21, req::SET_PROTOCOL, 0, &[]),
            Reply::Ack(0)
        );
        assert_eq!(
            control_read(&mut d, 0xa1, req::GET_PROTOCOL, 0, 0, 1).unwrap(),
            [0]
        );
        // SET_REPORT with the LED byte.
        assert_eq!(
            control_write(&mut d, 0x21, req::SET_REPORT, 0x0200, &[0x02]),
            Reply::Ack(0)
        );
        assert_eq!(d.leds(), 2);
        d.key(KeyCode::A, true);
        assert_eq!(
            control_read(&mut d, 0xa1, req::GET_REPORT, 0x0100, 0, 8).unwrap(),
            [0, 0, 0x04, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn interrupt_in_naks_until_something_changes() {
        let mut d = configured(HidKind::Tablet);
        assert_eq!(input(&mut d, 1, 8).0, Reply::Nak);
        d.pointer_abs(0x4000, 0x1234, 1, 0);
        assert_eq!(
            input(&mut d, 1, 8),
            (Reply::Ack(6), vec![1, 0x00, 0x40, 0x34, 0x12, 0])
        );
        assert_eq!(input(&mut d, 1, 8).0, Reply::Nak);
        // The same position again is no news.
        d.pointer_abs(0x4000, 0x1234, 1, 0);
        assert_eq!(input(&mut d, 1, 8).0, Reply::Nak);
        d.pointer_abs(0x4000, 0x1234, 0, -1);
        assert_eq!(
            input(&mut d, 1, 8),
            (Reply::Ack(6), vec![0, 0x00, 0x40, 0x34, 0x12, 0xff])
        );
        // Out of range is clamped to the descriptor's logical maximum.
        d.pointer_abs(0xffff, 0, 0, 0);
        assert_eq!(input(&mut d, 1, 8).1[1..3], [0xff, 0x7f]);
    }

    #[test]
    fn an_unconfigured_device_reports_nothing() {
        let mut d = HidDevice::new(HidKind::Mouse);
        d.pointer_rel(5, 5, 0, 0);
        assert_eq!(input(&mut d, 1, 4).0, Reply::Nak);
        assert_eq!(input(&mut d, 2, 4).0, Reply::Stall);
    }

    #[test]
    fn mouse_motion_is_split_into_reports_of_at_most_127() {
        let mut d = configured(HidKind::Mouse);
        d.pointer_rel(200, -3, 0, 2);
        assert_eq!(input(&mut d, 1, 4), (Reply::Ack(4), vec![2, 127, 0xfd, 0]));
        assert_eq!(input(&mut d, 1, 4), (Reply::Ack(4), vec![2, 73, 0, 0]));
        assert_eq!(input(&mut d, 1, 4).0, Reply::Nak);
    }

    #[test]
    fn keyboard_reports_modifiers_and_keys_in_press_order() {
        let mut d = configured(HidKind::Keyboard);
        d.key(KeyCode::from_name("shift").unwrap(), true);
        d.key(KeyCode::A, true);
        d.key(KeyCode::from_name("down").unwrap(), true);
        assert_eq!(input(&mut d, 1, 8).1, [0x02, 0, 0x04, 0x51, 0, 0, 0, 0]);
        d.key(KeyCode::A, false);
        assert_eq!(input(&mut d, 1, 8).1, [0x02, 0, 0x51, 0, 0, 0, 0, 0]);
        // A release of a key not held is no news.
        d.key(KeyCode::A, false);
        d.key(KeyCode::from_name("down").unwrap(), false);
        d.key(KeyCode::from_name("shift").unwrap(), false);
        assert_eq!(input(&mut d, 1, 8).1, [0; 8]);
        assert_eq!(input(&mut d, 1, 8).0, Reply::Nak);
    }

    #[test]
    fn usages_of_common_keys() {
        let u = |n: &str| hid_usage(KeyCode::from_name(n).unwrap().number());
        assert_eq!(u("a"), Some(0x04));
        assert_eq!(u("z"), Some(0x1d));
        assert_eq!(u("1"), Some(0x1e));
        assert_eq!(u("0"), Some(0x27));
        assert_eq!(u("ret"), Some(0x28));
        assert_eq!(u("esc"), Some(0x29));
        assert_eq!(u("f1"), Some(0x3a));
        assert_eq!(u("f12"), Some(0x45));
        assert_eq!(u("ctrl_r"), Some(0xe4));
        assert_eq!(u("up"), Some(0x52));
        assert_eq!(u("delete"), Some(0x4c));
        assert_eq!(u("kp_enter"), Some(0x58));
    }

    #[test]
    fn a_bus_reset_forgets_address_and_configuration() {
        let mut d = configured(HidKind::Tablet);
        assert_eq!(d.address(), 3);
        d.bus_reset();
        assert_eq!((d.address(), d.configuration()), (0, 0));
    }
}
