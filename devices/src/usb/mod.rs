//! USB: the PIIX3 UHCI host controller ([`uhci`]) and the HID devices on its root ports
//! ([`hid`]: `usb-tablet`, `usb-mouse`, `usb-kbd`).
//!
//! Data path: the guest builds a frame list of queue heads and transfer descriptors in its
//! RAM; the controller's host calls [`uhci::Uhci::run_frame`] once a millisecond, which
//! walks that frame's schedule and hands each active TD to the device addressed by its
//! token as a [`Packet`]; the device answers with a [`Reply`]; the controller writes the
//! outcome back into the TD and raises INTx when the guest asked for it. Input (VNC, the
//! monitor) reaches a HID device through its host as pointer or key events; the device's
//! next interrupt-IN poll returns the report, or NAK when nothing changed.

pub mod hid;
pub mod uhci;

/// Token packet identifiers (USB 1.1 §8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    Setup,
    In,
    Out,
}

impl Pid {
    /// The PID byte as a UHCI TD token carries it.
    pub fn from_byte(b: u8) -> Option<Pid> {
        match b {
            0x2d => Some(Pid::Setup),
            0x69 => Some(Pid::In),
            0xe1 => Some(Pid::Out),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Pid::Setup => 0x2d,
            Pid::In => 0x69,
            Pid::Out => 0xe1,
        }
    }
}

/// One transaction from the host to a device's endpoint.
#[derive(Debug)]
pub struct Packet<'a> {
    pub pid: Pid,
    pub endpoint: u8,
    /// SETUP/OUT: the bytes sent. IN: room for the answer (its length is the TD's
    /// maximum length); the device fills the front.
    pub data: &'a mut [u8],
}

/// How a device answered a transaction (USB 1.1 §8.4.4 handshakes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// ACK: `n` bytes moved (for IN, the first `n` bytes of the buffer).
    Ack(usize),
    /// Not ready: the host retries later (an interrupt endpoint with nothing new).
    Nak,
    /// The request or endpoint is not supported.
    Stall,
}
