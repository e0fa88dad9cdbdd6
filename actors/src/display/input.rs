//! Input events from the console's users (VNC clients, the monitor's `sendkey`) to the
//! guest's input devices (the i8042 keyboard/mouse host, an absolute tablet).
//!
//! The sender builds typed [`InputEvent`]s and hands them to an [`InputSink`]; the device
//! host implements the sink. `InputSink::send` is called from async tasks and must not
//! block: post to a mailbox with `try_send` (dropping when full, like a real keyboard
//! whose buffer overflows) or update state under a short lock.

use std::sync::{Arc, Mutex};

use super::keycodes::KeyCode;

/// Mouse buttons held, as a bit set (RFB pointer mask layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Buttons(pub u8);

impl Buttons {
    pub const LEFT: u8 = 1;
    pub const MIDDLE: u8 = 2;
    pub const RIGHT: u8 = 4;
    /// Wheel up (RFB button 4): press+release is one notch.
    pub const WHEEL_UP: u8 = 8;
    /// Wheel down (RFB button 5).
    pub const WHEEL_DOWN: u8 = 16;

    pub fn left(self) -> bool {
        self.0 & Self::LEFT != 0
    }
    pub fn middle(self) -> bool {
        self.0 & Self::MIDDLE != 0
    }
    pub fn right(self) -> bool {
        self.0 & Self::RIGHT != 0
    }
}

/// One input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEvent {
    /// A key went down or up.
    Key { key: KeyCode, down: bool },
    /// A key known only by QEMU key number (an Extended Key Event or `sendkey 0x..` for a
    /// key not in [`KeyCode`]).
    RawKey { number: u16, down: bool },
    /// Absolute pointer position on a `width` x `height` screen (for a tablet), with the
    /// buttons held. Scale with `x * 0x7fff / (width - 1)` for a 0..0x7fff device.
    PointerAbs {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        buttons: Buttons,
    },
    /// Relative motion (for a PS/2 mouse), with the buttons held. `dz` is wheel notches
    /// (negative = up, as the PS/2 IntelliMouse reports it).
    PointerRel {
        dx: i32,
        dy: i32,
        dz: i32,
        buttons: Buttons,
    },
}

/// Where input events go. Implemented by the input device host(s).
pub trait InputSink: Send + Sync {
    /// Deliver one event. Must not block.
    fn send(&self, ev: InputEvent);

    /// True when an absolute pointing device (tablet) is present: VNC then sends
    /// `PointerAbs`; otherwise `PointerRel` deltas computed from successive positions.
    fn absolute(&self) -> bool {
        false
    }

    /// A key typed with the character it stands for on the client's keyboard (a VNC
    /// keysym), when known. Text consoles take the character, whatever the `-k` layout
    /// (as QEMU's do); everything else takes the key.
    fn key_typing(&self, key: Option<KeyCode>, down: bool, ch: Option<char>) {
        let _ = ch;
        if let Some(key) = key {
            self.send(InputEvent::Key { key, down });
        }
    }
}

/// The character an X11 keysym types: Latin-1 keysyms are their code, `0x01000000 + U`
/// is Unicode U; function and modifier keysyms type none.
pub fn keysym_char(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        0x0100_0100..=0x0110_ffff => char::from_u32(keysym - 0x0100_0000),
        _ => None,
    }
}

/// A sink that drops everything (no input devices).
pub struct NullSink;

impl InputSink for NullSink {
    fn send(&self, ev: InputEvent) {
        tracing::trace!(?ev, "input event dropped: no input device");
    }
}

/// A sink that records events (tests; the test-pattern display echoes them).
#[derive(Default, Clone)]
pub struct RecordingSink {
    events: Arc<Mutex<Vec<InputEvent>>>,
    absolute: bool,
}

impl RecordingSink {
    pub fn new(absolute: bool) -> Self {
        Self {
            events: Arc::default(),
            absolute,
        }
    }

    /// Take the events recorded so far.
    pub fn take(&self) -> Vec<InputEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl InputSink for RecordingSink {
    fn send(&self, ev: InputEvent) {
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a test that never reads must not grow without end.
        if g.len() < 100_000 {
            g.push(ev);
        }
    }

    fn absolute(&self) -> bool {
        self.absolute
    }
}

/// A sink that forwards to whichever sink is plugged in (the i8042/tablet host registers
/// itself when it starts), so the VNC server can start first. Events before then are
/// dropped.
#[derive(Clone, Default)]
pub struct InputRouter {
    target: Arc<std::sync::RwLock<Option<Arc<dyn InputSink>>>>,
}

impl InputRouter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Send events to `sink` from now on.
    pub fn set_target(&self, sink: Arc<dyn InputSink>) {
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Where events go now (None: dropped).
    pub fn current_target(&self) -> Option<Arc<dyn InputSink>> {
        self.current()
    }

    fn current(&self) -> Option<Arc<dyn InputSink>> {
        self.target
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl InputSink for InputRouter {
    fn send(&self, ev: InputEvent) {
        match self.current() {
            Some(s) => s.send(ev),
            None => tracing::trace!(?ev, "input event dropped: no input device yet"),
        }
    }

    fn absolute(&self) -> bool {
        self.current().is_some_and(|s| s.absolute())
    }
}
